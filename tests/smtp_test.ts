/**
 * Tests of the SMTP test server in tests/support/smtp.ts, driven by
 * nodemailer as a real client over 127.0.0.1. They read the TLS fixtures and
 * write nothing. The assertions on nodemailer's errors (code, responseCode,
 * command, timeoutType) double as a record of how each failure surfaces.
 */

import assert from "node:assert/strict";
import nodemailer, {
  type NodemailerError,
  type SMTPPoolOptions,
  type SMTPTransportOptions,
} from "nodemailer";
import { SmtpSink, unusedPort, withSink } from "./support/smtp.ts";

const TLS = new URL("./fixtures/tls/", import.meta.url);
const CA = await Deno.readTextFile(new URL("ca.pem", TLS));
const OTHER_CA = await Deno.readTextFile(new URL("other-ca.pem", TLS));
const AUTH = { user: "deprovision", pass: "s3cret-Passw0rd" };

// The pool's options too: one test runs a pooled transport.
type TransportOptions = Partial<SMTPTransportOptions & SMTPPoolOptions>;

function transportFor(sink: SmtpSink, extra: TransportOptions = {}) {
  return nodemailer.createTransport({
    host: sink.host,
    port: sink.port,
    // Without a name nodemailer asks os.hostname(), which needs --allow-sys.
    name: "localhost",
    tls: { ca: CA },
    connectionTimeout: 2_000,
    greetingTimeout: 2_000,
    socketTimeout: 2_000,
    ...extra,
  } as SMTPTransportOptions);
}

function message(extra: Record<string, unknown> = {}) {
  return {
    from: "b2access@example.org",
    to: "admin@example.org",
    subject: "Deprovisioned users",
    text: "See the attachment.",
    ...extra,
  };
}

async function sendError(
  send: Promise<unknown>,
): Promise<NodemailerError> {
  try {
    await send;
  } catch (err) {
    return err as NodemailerError;
  }
  throw new Error("Expected the send to fail, but it succeeded");
}

async function eventually(
  condition: () => boolean,
  what: string,
  timeoutMs = 3_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

Deno.test("delivers a STARTTLS + AUTH message with its attachment bytes intact", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    const users = new TextEncoder().encode(
      JSON.stringify([{ id: 1, name: "Zoë Ünal", email: "z@example.org" }]),
    );
    const binary = Uint8Array.from({ length: 1024 }, (_, i) => (i * 7) % 256);

    const info = await transportFor(sink, { requireTLS: true, auth: AUTH })
      .sendMail(message({
        attachments: [
          { filename: "users.json", content: users },
          { filename: "blob.bin", content: binary },
        ],
      }));

    assert.deepEqual(info.accepted, ["admin@example.org"]);
    const [mail] = await sink.waitForMails(1);
    assert.ok(mail);
    assert.equal(mail.secure, true);
    assert.equal(mail.authUser, AUTH.user);
    assert.deepEqual(mail.envelope, {
      from: "b2access@example.org",
      to: ["admin@example.org"],
    });
    const [json, blob] = mail.parsed.attachments;
    assert.equal(json?.filename, "users.json");
    assert.deepEqual(new Uint8Array(json?.content ?? []), users);
    assert.deepEqual(new Uint8Array(blob?.content ?? []), binary);
    // nodemailer's sendMail() drops the connection after the 250, no QUIT.
    assert.deepEqual(sink.sessions[0]?.commands, [
      "EHLO",
      "STARTTLS",
      "EHLO",
      "AUTH PLAIN",
      "MAIL FROM",
      "RCPT TO",
      "DATA",
    ]);
  });
});

Deno.test("accepts a message over implicit TLS", async () => {
  await withSink({ mode: "implicit", auth: AUTH }, async (sink) => {
    await transportFor(sink, { secure: true, auth: AUTH }).sendMail(message());

    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.secure, true);
    assert.equal(sink.sessions[0]?.commands.includes("STARTTLS"), false);
  });
});

Deno.test("accepts a message in plain mode, which offers no STARTTLS", async () => {
  await withSink({ mode: "plain" }, async (sink) => {
    await transportFor(sink).sendMail(message());

    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.secure, false);
    assert.equal(mail?.authUser, null);
  });
});

Deno.test("a client requiring TLS fails with ETLS against plain mode", async () => {
  await withSink({ mode: "plain" }, async (sink) => {
    const err = await sendError(
      transportFor(sink, { requireTLS: true }).sendMail(message()),
    );

    // Plain mode disables STARTTLS, so nodemailer tries it and gets a 500.
    assert.equal(err.code, "ETLS");
    assert.equal(err.responseCode, 500);
    assert.equal(err.command, "STARTTLS");
    assert.equal(sink.mails.length, 0);
  });
});

Deno.test("refuses AUTH before STARTTLS with 538", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    const err = await sendError(
      transportFor(sink, { ignoreTLS: true, auth: AUTH }).sendMail(message()),
    );

    assert.equal(err.code, "EAUTH");
    assert.equal(err.responseCode, 538);
    assert.equal(err.command, "AUTH PLAIN");
    assert.equal(sink.mails.length, 0);
  });
});

Deno.test("allows AUTH before STARTTLS when requireTlsForAuth is false", async () => {
  await withSink({ auth: AUTH, requireTlsForAuth: false }, async (sink) => {
    await transportFor(sink, { ignoreTLS: true, auth: AUTH })
      .sendMail(message());

    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.secure, false);
    assert.equal(mail?.authUser, AUTH.user);
  });
});

Deno.test("answers a wrong password with 535, surfacing as EAUTH", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    const wrong = { user: AUTH.user, pass: "not-the-password" };
    const err = await sendError(
      transportFor(sink, { auth: wrong }).sendMail(message()),
    );

    assert.equal(err.code, "EAUTH");
    assert.equal(err.responseCode, 535);
    assert.equal(err.command, "AUTH PLAIN");
    assert.equal(sink.mails.length, 0);
  });
});

Deno.test("refuses MAIL FROM with 530 from a client that does not log in", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    const err = await sendError(transportFor(sink).sendMail(message()));

    assert.equal(err.code, "EENVELOPE");
    assert.equal(err.responseCode, 530);
    assert.equal(err.command, "MAIL FROM");
  });
});

Deno.test("nodemailer skips AUTH the server does not offer unless forceAuth is set", async () => {
  await withSink({}, async (sink) => {
    await transportFor(sink, { auth: AUTH }).sendMail(message());
    assert.equal(sink.mails[0]?.authUser, null);

    const err = await sendError(
      transportFor(sink, { auth: AUTH, forceAuth: true }).sendMail(message()),
    );
    assert.equal(err.code, "EAUTH");
    assert.equal(err.responseCode, 500);
    assert.equal(sink.mails.length, 1);
  });
});

Deno.test("never records credentials or the message body in sessions", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    for (const authMethod of ["PLAIN", "LOGIN"]) {
      await transportFor(sink, { auth: AUTH, authMethod })
        .sendMail(message({ text: "BODY-MARKER" }));
    }

    const recorded = JSON.stringify(sink.sessions);
    assert.deepEqual(
      sink.sessions.map((s) => s.commands.find((c) => c.startsWith("AUTH"))),
      ["AUTH PLAIN", "AUTH LOGIN"],
    );
    for (const secret of [AUTH.pass, btoa(AUTH.pass), "BODY-MARKER"]) {
      assert.equal(recorded.includes(secret), false, secret);
    }
  });
});

Deno.test("rejects a listed recipient with 550 while delivering to the others", async () => {
  await withSink({ rejectRecipients: ["gone@example.org"] }, async (sink) => {
    const info = await transportFor(sink).sendMail(
      message({ to: ["admin@example.org", "gone@example.org"] }),
    );

    assert.deepEqual(info.accepted, ["admin@example.org"]);
    assert.deepEqual(info.rejected, ["gone@example.org"]);
    const [rejection] = info.rejectedErrors ?? [];
    assert.equal(rejection?.code, "EENVELOPE");
    assert.equal(rejection?.responseCode, 550);
    assert.equal(rejection?.command, "RCPT TO");
    const [mail] = await sink.waitForMails(1);
    assert.deepEqual(mail?.envelope.to, ["admin@example.org"]);
  });
});

Deno.test("fails with EENVELOPE 550 when every recipient is rejected", async () => {
  await withSink({ rejectRecipients: ["gone@example.org"] }, async (sink) => {
    const err = await sendError(
      transportFor(sink).sendMail(message({ to: "gone@example.org" })),
    );

    assert.equal(err.code, "EENVELOPE");
    assert.equal(err.responseCode, 550);
    assert.equal(err.command, "RCPT TO");
    assert.deepEqual(err.rejected, ["gone@example.org"]);
  });
});

Deno.test("defers a listed recipient with 450", async () => {
  await withSink({ tempFailRecipients: ["busy@example.org"] }, async (sink) => {
    const err = await sendError(
      transportFor(sink).sendMail(message({ to: "busy@example.org" })),
    );

    assert.equal(err.code, "EENVELOPE");
    assert.equal(err.responseCode, 450);
    assert.equal(sink.mails.length, 0);
  });
});

Deno.test("defers the first message with 451 at the final dot, then accepts", async () => {
  await withSink({ tempFailData: 1 }, async (sink) => {
    const transport = transportFor(sink);

    const err = await sendError(transport.sendMail(message()));
    assert.equal(err.code, "EMESSAGE");
    assert.equal(err.responseCode, 451);
    assert.equal(err.command, "DATA");
    assert.equal(sink.mails.length, 0);

    await transport.sendMail(message());
    assert.equal(sink.mails.length, 1);
  });
});

Deno.test("greets with 421 when the service is unavailable", async () => {
  await withSink({ tempFailConnect: true }, async (sink) => {
    const err = await sendError(transportFor(sink).sendMail(message()));

    assert.equal(err.code, "EPROTOCOL");
    assert.equal(err.responseCode, 421);
    assert.equal(err.command, "CONN");
    assert.equal(sink.mails.length, 0);
  });
});

Deno.test("closes a connection with 421 at the MAIL FROM after maxMessages", async () => {
  await withSink({ maxMessages: 1 }, async (sink) => {
    const transport = transportFor(sink, { pool: true, maxConnections: 1 });
    try {
      await transport.sendMail(message());
      // The pool reuses the connection, gets the 421 and, as nodemailer's
      // pool does, retries the message on a fresh connection.
      await transport.sendMail(message());
    } finally {
      transport.close();
    }

    assert.equal(sink.mails.length, 2);
    assert.equal(sink.sessions.length, 2);
    assert.deepEqual(
      sink.sessions[0]?.commands.filter((c) => c === "MAIL FROM"),
      ["MAIL FROM", "MAIL FROM"],
    );
  });
});

Deno.test("a server that never greets trips nodemailer's greetingTimeout", async () => {
  await withSink({ noGreeting: true }, async (sink) => {
    // socketTimeout runs during the wait too: the shorter of the two wins.
    const started = Date.now();
    const err = await sendError(
      transportFor(sink, { greetingTimeout: 300 }).sendMail(message()),
    );

    assert.equal(err.code, "ETIMEDOUT");
    assert.equal(err.timeoutType, "GREETING_TIMEOUT");
    assert.ok(Date.now() - started < 2_000);
  });
});

Deno.test("a server that never answers the final dot trips nodemailer's socketTimeout", async () => {
  await withSink({ hangAtDot: true }, async (sink) => {
    const err = await sendError(
      transportFor(sink, { socketTimeout: 500 }).sendMail(message()),
    );

    assert.equal(err.code, "ETIMEDOUT");
    assert.equal(err.timeoutType, "SOCKET_TIMEOUT");
    assert.equal(sink.mails.length, 0);
  });
});

Deno.test("close() ends a session hung at the final dot", async () => {
  const sink = await SmtpSink.start({ hangAtDot: true });
  const send = sendError(
    transportFor(sink, { socketTimeout: 10_000 }).sendMail(message()),
  );
  await eventually(
    () => sink.sessions[0]?.commands.includes("DATA") ?? false,
    "the client to send DATA",
  );

  const started = Date.now();
  await sink.close();
  const err = await send;

  assert.ok(Date.now() - started < 2_000);
  assert.equal(err.code, "EMESSAGE");
  assert.equal(err.responseCode, 421);
  assert.equal(err.command, "DATA");
});

Deno.test("close() ends a connection still waiting for its greeting", async () => {
  const sink = await SmtpSink.start({ noGreeting: true, mode: "implicit" });
  const send = sendError(
    transportFor(sink, { secure: true, greetingTimeout: 10_000 })
      .sendMail(message()),
  );
  await eventually(() => sink.sessions.length > 0, "a connection");

  const started = Date.now();
  await sink.close();
  const err = await send;

  assert.ok(Date.now() - started < 2_000);
  // Released at close(), the pending greeting becomes a 421.
  assert.equal(err.code, "EPROTOCOL");
  assert.equal(err.responseCode, 421);
});

Deno.test("decodes non-ASCII subjects and display names", async () => {
  await withSink({}, async (sink) => {
    await transportFor(sink).sendMail(message({
      from: { name: "B2ACCESS Déprovisionnement", address: "b2@example.org" },
      to: { name: "Jürgen Åström", address: "admin@example.org" },
      subject: "Benutzer gelöscht — 3 Konten ✓",
    }));

    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.parsed.subject, "Benutzer gelöscht — 3 Konten ✓");
    assert.equal(
      mail?.parsed.from?.value[0]?.name,
      "B2ACCESS Déprovisionnement",
    );
    const to = mail?.parsed.to;
    assert.ok(to && !Array.isArray(to));
    assert.equal(to.value[0]?.name, "Jürgen Åström");
  });
});

Deno.test("a connection to an unused port fails with ESOCKET and ECONNREFUSED", async () => {
  const port = await unusedPort();
  const transport = nodemailer.createTransport({
    host: "127.0.0.1",
    port,
    name: "localhost",
    connectionTimeout: 2_000,
  });

  const err = await sendError(transport.sendMail(message()));

  assert.equal(err.code, "ESOCKET");
  assert.equal(err.originalCode, "ECONNREFUSED");
  assert.equal(err.command, "CONN");
});

Deno.test("a certificate from another CA fails STARTTLS with ESOCKET", async () => {
  await withSink({}, async (sink) => {
    const err = await sendError(
      transportFor(sink, { tls: { ca: OTHER_CA } }).sendMail(message()),
    );

    // Even without requireTLS: an offered STARTTLS that fails is fatal.
    assert.equal(err.code, "ESOCKET");
    assert.equal(err.originalCode, "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
    assert.equal(err.command, "CONN");
    assert.equal(sink.mails.length, 0);
  });
});

Deno.test("a certificate from another CA fails implicit TLS with ESOCKET", async () => {
  await withSink({ mode: "implicit" }, async (sink) => {
    const err = await sendError(
      transportFor(sink, { secure: true, tls: { ca: OTHER_CA } })
        .sendMail(message()),
    );

    assert.equal(err.code, "ESOCKET");
    assert.equal(err.originalCode, "UNABLE_TO_VERIFY_LEAF_SIGNATURE");
  });
});

Deno.test("nodemailer accepts the self-signed fixture when it is given as the CA", async () => {
  const cert = {
    cert: await Deno.readTextFile(new URL("selfsigned.pem", TLS)),
    key: await Deno.readTextFile(new URL("selfsigned.key", TLS)),
  };
  await withSink({ mode: "implicit", cert }, async (sink) => {
    // node:tls takes a CA:TRUE leaf; Deno.createHttpClient does not.
    await transportFor(sink, { secure: true, tls: { ca: cert.cert } })
      .sendMail(message());

    assert.equal(sink.mails[0]?.secure, true);
  });
});

Deno.test("waitForMails() rejects once its timeout passes", async () => {
  await withSink({}, async (sink) => {
    await assert.rejects(sink.waitForMails(1, 50), /Timed out after 50 ms/);
  });
});

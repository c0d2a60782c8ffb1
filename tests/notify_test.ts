/**
 * Tests of src/notify.ts against a real SMTP server on 127.0.0.1
 * (tests/support/smtp.ts), configured through parseConfig() as an operator
 * would. They read the TLS fixtures and write nothing to disk.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { type EmailConfig, parseConfig } from "../src/config.ts";
import {
  MailError,
  type ReportedAccount,
  sendReport,
  usersJson,
  verifySmtp,
} from "../src/notify.ts";
import { unusedPort, withSink } from "./support/smtp.ts";

const TLS = new URL("./fixtures/tls/", import.meta.url);
const CA_PATH = fileURLToPath(new URL("ca.pem", TLS));
const OTHER_CA_PATH = fileURLToPath(new URL("other-ca.pem", TLS));
const CONFIG_MODULE = new URL("../src/config.ts", import.meta.url).href;
const NOTIFY_MODULE = new URL("../src/notify.ts", import.meta.url).href;
const AUTH = { user: "mailer", pass: "smtp-Pa55word-XYZ" };
const RECIPIENTS = [
  "admin@sp1.example.org",
  "admin@sp2.example.org",
  "admin@sp3.example.org",
];
const ACCOUNTS: ReportedAccount[] = [
  { persistentId: "pid-1", emails: ["zoë@example.org"] },
  { persistentId: "pid-2", emails: [] },
];

/**
 * The email section of a config for a server on 127.0.0.1:`port`; `lines`
 * are added under `notifications.email`. The timeout is 5 s unless `lines`
 * set one.
 */
function emailConfig(port: number, lines: string[] = []): EmailConfig {
  return parseConfig(configText(port, lines), "/tmp/x/config.yml", {
    env: () => undefined,
  }).config.email;
}

function configText(port: number, lines: string[] = []): string {
  return [
    "api:",
    '  base_url: "https://unity.example.org"',
    '  user: "admin"',
    '  password: "api-secret"',
    "notifications:",
    "  email:",
    '    host: "127.0.0.1"',
    `    port: ${port}`,
    '    from: "B2ACCESS Notifications <noreply@b2access.example.org>"',
    "    to:",
    '      - "SP1 Operator <admin@sp1.example.org>"',
    '      - "SP2 Operator <admin@sp2.example.org>"',
    '      - "SP3 Operator <admin@sp3.example.org>"',
    '    subject: "Deprovisioned B2ACCESS accounts"',
    ...(lines.some((line) => line.startsWith("timeout:"))
      ? []
      : ["    timeout: 5"]),
    ...lines.map((line) => `    ${line}`),
  ].join("\n") + "\n";
}

const STARTTLS_AUTH = [
  "use_tls: true",
  `user: "${AUTH.user}"`,
  `password: "${AUTH.pass}"`,
  `cert_verify: "${CA_PATH}"`,
];

async function mailError(attempt: Promise<unknown>): Promise<MailError> {
  try {
    await attempt;
  } catch (error) {
    assert.ok(error instanceof MailError, String(error));
    return error;
  }
  assert.fail("expected a MailError, but the mail went through");
}

function assertNoPassword(error: MailError): void {
  for (const text of [error.message, String(error.stack)]) {
    assert.equal(text.includes(AUTH.pass), false, text);
    assert.equal(text.includes(btoa(AUTH.pass)), false, text);
  }
}

Deno.test("usersJson() matches Python's json.dumps(sort_keys, indent=4) byte for byte", () => {
  // python3 -c 'import json; print(repr(json.dumps([{"email": ["zoë@example.org"],
  //   "id": "u1"}, {"email": None, "id": "u2"}], sort_keys=True, indent=4,
  //   separators=(",", ": "))))'
  const python =
    '[\n    {\n        "email": [\n            "zo\\u00eb@example.org"\n        ],\n        "id": "u1"\n    },\n    {\n        "email": null,\n        "id": "u2"\n    }\n]';

  const json = usersJson([
    { persistentId: "u1", emails: ["zoë@example.org"] },
    { persistentId: "u2", emails: [] },
  ]);

  assert.equal(json, python);
});

Deno.test("usersJson() of no accounts is Python's []", () => {
  assert.equal(usersJson([]), "[]");
});

Deno.test("usersJson() escapes quotes, controls, DEL, U+2028 and astral characters as Python does", () => {
  // The same python3 command on
  // [{"email": ["Ångström@example.org", "a\"b\\c\x7f\u2028\t/\U0001F600"],
  //   "id": "ü-1"}].
  const python =
    '[\n    {\n        "email": [\n            "\\u00c5ngstr\\u00f6m@example.org",\n            "a\\"b\\\\c\\u007f\\u2028\\t/\\ud83d\\ude00"\n        ],\n        "id": "\\u00fc-1"\n    }\n]';

  const json = usersJson([{
    persistentId: "ü-1",
    emails: ["Ångström@example.org", 'a"b\\c\x7f\u2028\t/\u{1F600}'],
  }]);

  assert.equal(json, python);
});

Deno.test("usersJson() leaves out accounts without a persistent id", () => {
  const json = usersJson([
    { persistentId: null, emails: ["nameless@example.org"] },
    { persistentId: "pid-2", emails: ["b@example.org", "c@example.org"] },
    { persistentId: null, emails: [] },
  ]);

  assert.deepEqual(JSON.parse(json), [
    { email: ["b@example.org", "c@example.org"], id: "pid-2" },
  ]);
  assert.equal(json.includes("nameless"), false);
  assert.equal(usersJson([{ persistentId: null, emails: [] }]), "[]");
});

Deno.test("sendReport() sends one mail over STARTTLS with AUTH and users.json attached", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    const email = emailConfig(sink.port, STARTTLS_AUTH);

    const outcome = await sendReport(email, ACCOUNTS);

    assert.deepEqual(outcome, { accepted: RECIPIENTS, rejected: [] });
    const [mail, ...more] = await sink.waitForMails(1);
    assert.ok(mail);
    assert.deepEqual(more, []);
    assert.equal(sink.mails.length, 1);
    assert.equal(mail.secure, true);
    assert.equal(mail.authUser, AUTH.user);
    assert.deepEqual(mail.envelope, {
      from: "noreply@b2access.example.org",
      to: RECIPIENTS,
    });
    assert.deepEqual(mail.parsed.from?.value, [{
      address: "noreply@b2access.example.org",
      name: "B2ACCESS Notifications",
    }]);
    const to = Array.isArray(mail.parsed.to)
      ? mail.parsed.to
      : [mail.parsed.to];
    assert.deepEqual(to.flatMap((a) => a?.value.map((v) => v.address)), [
      ...RECIPIENTS,
    ]);
    assert.equal(mail.parsed.subject, "Deprovisioned B2ACCESS accounts");
    assert.equal(mail.parsed.text?.trimEnd(), email.introText);

    const [attachment, ...others] = mail.parsed.attachments;
    assert.deepEqual(others, []);
    assert.equal(attachment?.filename, "users.json");
    assert.equal(attachment?.contentType, "application/json");
    assert.deepEqual(
      new Uint8Array(attachment?.content ?? []),
      new TextEncoder().encode(usersJson(ACCOUNTS)),
    );
    const commands = sink.sessions[0]?.commands ?? [];
    assert.ok(
      commands.indexOf("STARTTLS") <
        commands.findIndex((c) => c.startsWith("AUTH")),
      commands.join(" "),
    );
  });
});

Deno.test("sendReport() keeps a non-ASCII subject, display names and body intact", async () => {
  await withSink({}, async (sink) => {
    const email = emailConfig(sink.port, [
      "use_tls: true",
      `cert_verify: "${CA_PATH}"`,
    ]);
    const named = {
      ...email,
      from: "Zoë Ångström <z@example.org>",
      to: ["Jürgen Øster <j@example.org>"],
      subject: "Gelöschte Konten — Übersicht ✓",
      introText: "Grüße aus Jülich.\n\nÀ bientôt.",
    };

    await sendReport(named, ACCOUNTS);

    const [mail] = await sink.waitForMails(1);
    assert.ok(mail);
    assert.equal(mail.parsed.subject, "Gelöschte Konten — Übersicht ✓");
    assert.deepEqual(mail.parsed.from?.value, [{
      address: "z@example.org",
      name: "Zoë Ångström",
    }]);
    const to = Array.isArray(mail.parsed.to)
      ? mail.parsed.to[0]
      : mail.parsed.to;
    assert.deepEqual(to?.value, [{
      address: "j@example.org",
      name: "Jürgen Øster",
    }]);
    assert.equal(
      mail.parsed.text?.trimEnd(),
      "Grüße aus Jülich.\n\nÀ bientôt.",
    );
  });
});

Deno.test("sendReport() reads non-ASCII names from a config file", async () => {
  await withSink({ mode: "plain" }, async (sink) => {
    const fromFile = parseConfig(
      [
        "api:",
        '  base_url: "https://unity.example.org"',
        '  user: "admin"',
        '  password: "api-secret"',
        "notifications:",
        "  email:",
        '    host: "127.0.0.1"',
        `    port: ${sink.port}`,
        '    from: "Zoë Ångström <z@example.org>"',
        '    to: ["Zoë Ångström <z@example.org>"]',
        '    subject: "Konten gelöscht"',
      ].join("\n"),
      "/tmp/x/config.yml",
      { env: () => undefined },
    ).config.email;

    await sendReport(fromFile, ACCOUNTS);

    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.parsed.from?.value[0]?.name, "Zoë Ångström");
    assert.equal(mail?.parsed.subject, "Konten gelöscht");
  });
});

Deno.test("sendReport() sends over implicit TLS", async () => {
  await withSink({ mode: "implicit", auth: AUTH }, async (sink) => {
    const email = emailConfig(sink.port, [
      "implicit_tls: true",
      `user: "${AUTH.user}"`,
      `password: "${AUTH.pass}"`,
      `cert_verify: "${CA_PATH}"`,
    ]);
    assert.equal(email.security, "implicit");

    await sendReport(email, ACCOUNTS);

    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.secure, true);
    assert.equal(mail?.authUser, AUTH.user);
    assert.equal(sink.sessions[0]?.commands.includes("STARTTLS"), false);
  });
});

Deno.test("sendReport() sends in plain text without AUTH when nothing asks for TLS or credentials", async () => {
  await withSink({ mode: "plain" }, async (sink) => {
    const email = emailConfig(sink.port);
    assert.equal(email.security, "none");

    const outcome = await sendReport(email, ACCOUNTS);

    assert.deepEqual(outcome.accepted, RECIPIENTS);
    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.secure, false);
    assert.equal(mail?.authUser, null);
    const commands = sink.sessions.flatMap((s) => s.commands);
    assert.equal(commands.some((c) => c.startsWith("AUTH")), false);
  });
});

Deno.test("sendReport() does not start TLS unless configured, even when offered", async () => {
  await withSink({}, async (sink) => {
    await sendReport(emailConfig(sink.port), ACCOUNTS);

    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.secure, false);
    assert.equal(sink.sessions[0]?.commands.includes("STARTTLS"), false);
  });
});

Deno.test("sendReport() with use_tls refuses a server that offers no STARTTLS", async () => {
  await withSink({ mode: "plain" }, async (sink) => {
    const email = emailConfig(sink.port, [
      "use_tls: true",
      `cert_verify: "${CA_PATH}"`,
    ]);

    await mailError(sendReport(email, ACCOUNTS));

    assert.equal(sink.mails.length, 0);
    const commands = sink.sessions.flatMap((s) => s.commands);
    assert.equal(commands.includes("MAIL FROM"), false);
  });
});

Deno.test("sendReport() with credentials fails rather than send without AUTH", async () => {
  // The server offers no AUTH at all.
  await withSink({}, async (sink) => {
    const email = emailConfig(sink.port, STARTTLS_AUTH);

    const error = await mailError(sendReport(email, ACCOUNTS));

    assert.equal(error.code, "EAUTH");
    assert.equal(sink.mails.length, 0);
    assertNoPassword(error);
  });
});

Deno.test("sendReport() fails with MailError when the server's certificate is from another CA", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    const email = emailConfig(sink.port, [
      "use_tls: true",
      `user: "${AUTH.user}"`,
      `password: "${AUTH.pass}"`,
      `cert_verify: "${OTHER_CA_PATH}"`,
    ]);

    const error = await mailError(sendReport(email, ACCOUNTS));

    assert.equal(sink.mails.length, 0);
    assert.ok(error.message.includes(OTHER_CA_PATH), error.message);
    assert.equal(sink.sessions.some((s) => s.authUser !== null), false);
    assertNoPassword(error);
  });
});

Deno.test("sendReport() with cert_verify: False accepts a certificate from any CA", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    const email = emailConfig(sink.port, [
      "use_tls: true",
      `user: "${AUTH.user}"`,
      `password: "${AUTH.pass}"`,
      "cert_verify: False",
    ]);

    await sendReport(email, ACCOUNTS);

    const [mail] = await sink.waitForMails(1);
    assert.equal(mail?.secure, true);
  });
});

Deno.test("sendReport() resolves with a recipient refused with 550 in rejected", async () => {
  const refused = "admin@sp2.example.org";
  await withSink({ rejectRecipients: [refused] }, async (sink) => {
    const email = emailConfig(sink.port);

    const outcome = await sendReport(email, ACCOUNTS);

    assert.deepEqual(outcome.accepted, [
      "admin@sp1.example.org",
      "admin@sp3.example.org",
    ]);
    assert.equal(outcome.rejected.length, 1);
    assert.equal(outcome.rejected[0]?.address, refused);
    assert.match(outcome.rejected[0]?.response ?? "", /^550\b/);
    const [mail] = await sink.waitForMails(1);
    assert.deepEqual(mail?.envelope.to, [
      "admin@sp1.example.org",
      "admin@sp3.example.org",
    ]);
  });
});

Deno.test("sendReport() lists a recipient deferred with 450 in rejected, with the server's answer", async () => {
  const busy = "admin@sp3.example.org";
  await withSink({ tempFailRecipients: [busy] }, async (sink) => {
    const outcome = await sendReport(emailConfig(sink.port), ACCOUNTS);

    assert.deepEqual(outcome.rejected.map((r) => r.address), [busy]);
    assert.match(outcome.rejected[0]?.response ?? "", /^450\b/);
    assert.equal(outcome.accepted.length, 2);
  });
});

Deno.test("sendReport() fails with MailError when every recipient is refused", async () => {
  await withSink({ rejectRecipients: RECIPIENTS }, async (sink) => {
    const error = await mailError(sendReport(emailConfig(sink.port), ACCOUNTS));

    assert.equal(error.code, "EENVELOPE");
    assert.equal(error.responseCode, 550);
    assert.equal(sink.mails.length, 0);
  });
});

Deno.test("sendReport() fails with MailError when nothing listens", async () => {
  const port = await unusedPort();

  const error = await mailError(sendReport(emailConfig(port), ACCOUNTS));

  // Under Deno a refused connection surfaces as ESOCKET, under Node as
  // ECONNECTION; both get the same hint.
  assert.ok(["ECONNECTION", "ESOCKET"].includes(error.code ?? ""), error.code);
  assert.ok(error.message.includes(`127.0.0.1:${port}`), error.message);
  assert.match(error.message, /host\/port/);
});

Deno.test("sendReport() fails with MailError on a 451 at the end of DATA", async () => {
  await withSink({ tempFailData: true, auth: AUTH }, async (sink) => {
    const email = emailConfig(sink.port, STARTTLS_AUTH);

    const error = await mailError(sendReport(email, ACCOUNTS));

    assert.equal(error.code, "EMESSAGE");
    assert.equal(error.responseCode, 451);
    assert.match(error.message, /451/);
    assert.equal(sink.mails.length, 0);
    assertNoPassword(error);
  });
});

Deno.test("sendReport() fails with MailError on a 421 greeting", async () => {
  await withSink({ tempFailConnect: true }, async (sink) => {
    const error = await mailError(sendReport(emailConfig(sink.port), ACCOUNTS));

    assert.equal(error.responseCode, 421);
  });
});

Deno.test("sendReport() gives up within the configured timeout when the server never greets", async () => {
  await withSink({ noGreeting: true }, async (sink) => {
    const email = emailConfig(sink.port, ["timeout: 0.5"]);
    assert.equal(email.timeoutMs, 500);

    const started = Date.now();
    const error = await mailError(sendReport(email, ACCOUNTS));
    const elapsed = Date.now() - started;

    assert.ok(elapsed >= 400 && elapsed < 2_500, `took ${elapsed} ms`);
    assert.equal(error.code, "ETIMEDOUT");
    assert.match(error.message, /500 ms/);
  });
});

Deno.test("sendReport() gives up within the configured timeout when the final dot is never answered", async () => {
  await withSink({ hangAtDot: true }, async (sink) => {
    const email = emailConfig(sink.port, ["timeout: 0.5"]);

    const started = Date.now();
    const error = await mailError(sendReport(email, ACCOUNTS));
    const elapsed = Date.now() - started;

    assert.ok(elapsed < 2_500, `took ${elapsed} ms`);
    assert.equal(error.code, "ETIMEDOUT");
    assert.equal(sink.mails.length, 0);
    assert.ok(sink.sessions[0]?.commands.includes("DATA"));
  });
});

Deno.test("verifySmtp() connects, starts TLS and logs in without sending a mail", async () => {
  await withSink({ auth: AUTH }, async (sink) => {
    await verifySmtp(emailConfig(sink.port, STARTTLS_AUTH));

    assert.equal(sink.mails.length, 0);
    const [session] = sink.sessions;
    assert.equal(session?.authUser, AUTH.user);
    assert.equal(session?.secure, true);
    assert.equal(session?.commands.includes("MAIL FROM"), false);
    assert.equal(session?.commands.includes("DATA"), false);
  });
});

Deno.test("verifySmtp() fails with EAUTH on a wrong password, without the password in the message", async () => {
  await withSink(
    { auth: { user: AUTH.user, pass: "the-right-one" } },
    async (sink) => {
      const error = await mailError(
        verifySmtp(emailConfig(sink.port, STARTTLS_AUTH)),
      );

      assert.equal(error.code, "EAUTH");
      assert.equal(error.responseCode, 535);
      assert.match(
        error.message,
        /check notifications\.email\.user and password/,
      );
      assertNoPassword(error);
      assert.equal(sink.mails.length, 0);
    },
  );
});

Deno.test("verifySmtp() fails with MailError when nothing listens", async () => {
  const port = await unusedPort();

  const error = await mailError(verifySmtp(emailConfig(port)));

  assert.ok(["ECONNECTION", "ESOCKET"].includes(error.code ?? ""), error.code);
  assert.match(error.message, /check notifications\.email\.host\/port/);
});

Deno.test("sendReport() works under the permissions of `deno task start`", async () => {
  const deno = JSON.parse(
    await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
  );
  const flags = String(deno.tasks.start).split(/\s+/)
    .filter((arg) => arg === "--no-prompt" || arg.startsWith("--allow-"));
  assert.ok(flags.includes("--no-prompt"), flags.join(" "));
  const dir = await Deno.makeTempDir({ prefix: "notify_test_" });
  const script = join(dir, "send.ts");
  await Deno.writeTextFile(
    script,
    `import { parseConfig } from ${JSON.stringify(CONFIG_MODULE)};
import { sendReport } from ${JSON.stringify(NOTIFY_MODULE)};
const { config } = parseConfig(Deno.args[0]!, "/tmp/x/config.yml", {
  env: () => undefined,
});
const outcome = await sendReport(config.email, [
  { persistentId: "pid-1", emails: [] },
]);
console.log(JSON.stringify(outcome));
`,
  );
  try {
    await withSink({ auth: AUTH }, async (sink) => {
      const text = configText(sink.port, STARTTLS_AUTH);
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--config",
          fileURLToPath(new URL("../deno.json", import.meta.url)),
          "--frozen",
          ...flags,
          script,
          text,
        ],
        stdout: "piped",
        stderr: "piped",
        signal: AbortSignal.timeout(60_000),
      });

      const { code, stdout, stderr } = await child.output();

      const err = new TextDecoder().decode(stderr);
      assert.equal(code, 0, err);
      assert.deepEqual(JSON.parse(new TextDecoder().decode(stdout)), {
        accepted: RECIPIENTS,
        rejected: [],
      });
      assert.equal(sink.mails[0]?.authUser, AUTH.user);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a refused connection to localhost says why, not just ESOCKET", async () => {
  const port = await unusedPort();
  const email = { ...emailConfig(port), host: "localhost" };

  const error = await mailError(sendReport(email, ACCOUNTS));

  assert.ok(error.message.includes(`localhost:${port}`), error.message);
  assert.match(error.message, /ECONNREFUSED/);
});

/**
 * A real SMTP server on 127.0.0.1 for tests, built on smtp-server. It reads
 * the TLS fixtures in tests/fixtures/tls and keeps every accepted message in
 * memory, raw and parsed by mailparser; it writes nothing to disk. Options
 * make it misbehave the way real servers do: refuse recipients, defer
 * messages, refuse the connection, never greet, or never answer the final
 * dot.
 *
 * @example
 * ```ts
 * const sink = await SmtpSink.start({ auth: { user: "u", pass: "p" } });
 * try {
 *   // ... send a message to sink.host:sink.port ...
 *   const [mail] = await sink.waitForMails(1);
 * } finally {
 *   await sink.close();
 * }
 * ```
 */

import { Buffer } from "node:buffer";
import type { AddressInfo, Socket } from "node:net";
import { type ParsedMail, simpleParser } from "mailparser";
import {
  SMTPServer,
  type SMTPServerAddress,
  type SMTPServerAuthentication,
  type SMTPServerAuthenticationResponse,
  type SMTPServerDataStream,
  type SMTPServerOptions,
  type SMTPServerSession,
} from "smtp-server";

/** One message the server answered with 250 at the end of DATA. */
export interface ReceivedMail {
  /** The envelope: only the recipients the server accepted. */
  envelope: { from: string; to: string[] };
  /** The message bytes as received, after SMTP dot-unstuffing. */
  raw: Uint8Array;
  parsed: ParsedMail;
  /** The user name of a successful AUTH, or null without one. */
  authUser: string | null;
  /** Whether the session was TLS when DATA came. */
  secure: boolean;
}

/** How the server behaves; every option is off unless set. */
export interface SmtpOptions {
  /**
   * "starttls" (default): STARTTLS offered but not required. "implicit": TLS
   * from the first byte, port-465 style. "plain": no TLS at all.
   */
  mode?: "plain" | "starttls" | "implicit";
  /** PEM text; default tests/fixtures/tls/server.pem and server.key. */
  cert?: { cert: string; key: string };
  /** When set, AUTH PLAIN or LOGIN is required; wrong credentials get 535. */
  auth?: { user: string; pass: string };
  /** Refuse AUTH before STARTTLS (538). Default true; moot unless starttls. */
  requireTlsForAuth?: boolean;
  /** Addresses answered with 550 at RCPT TO (case-insensitive). */
  rejectRecipients?: string[];
  /** Addresses answered with 450 at RCPT TO (case-insensitive). */
  tempFailRecipients?: string[];
  /**
   * Answer 451 at the end of DATA: always with true, or for the first N
   * messages of the server's life with a number, accepting later ones.
   */
  tempFailData?: boolean | number;
  /** Greet every connection with 421 (service not available) and close it. */
  tempFailConnect?: boolean;
  /** Accept TCP (and in implicit mode the TLS handshake), never greet. */
  noGreeting?: boolean;
  /** Read the whole of DATA, never answer the final dot. */
  hangAtDot?: boolean;
  /**
   * Messages accepted per connection; the next MAIL FROM on that connection
   * gets 421 and the connection is closed.
   */
  maxMessages?: number;
}

/** What one connection did; commands carry no credentials and no body. */
export interface SmtpSession {
  authUser: string | null;
  secure: boolean;
  /** Like "EHLO", "STARTTLS", "AUTH PLAIN", "MAIL FROM", "RCPT TO", "DATA". */
  commands: string[];
}

type Callback = (err?: Error | null) => void;

const FIXTURES = new URL("../fixtures/tls/", import.meta.url);
const DEFAULT_WAIT_MS = 5_000;
// How long close() lets sessions end by themselves before cutting them off.
const CLOSE_GRACE_MS = 200;
const CLOSE_FORCE_MS = 1_000;

/** An SMTP server on 127.0.0.1 that keeps what it receives for assertions. */
export class SmtpSink {
  readonly host = "127.0.0.1" as const;
  readonly mails: ReceivedMail[] = [];
  readonly sessions: SmtpSession[] = [];
  /** Errors smtp-server reported, such as a failed TLS handshake. */
  readonly errors: Error[] = [];

  #server!: SMTPServer;
  #options: SmtpOptions;
  #byId = new Map<string, SmtpSession>();
  #messagesById = new Map<string, number>();
  #sockets = new Set<Socket>();
  #hung = new Set<Callback>();
  #waiters = new Set<() => void>();
  #dataCount = 0;
  #closing: Promise<void> | null = null;
  #port = 0;

  private constructor(options: SmtpOptions) {
    this.#options = options;
  }

  /** The port the server listens on, chosen by the system. */
  get port(): number {
    return this.#port;
  }

  /**
   * Starts a server on a free port of 127.0.0.1.
   *
   * @throws {Error} When the certificate cannot be read or the port bound.
   */
  static async start(options: SmtpOptions = {}): Promise<SmtpSink> {
    const sink = new SmtpSink(options);
    sink.#server = new SMTPServer(await sink.#serverOptions());
    sink.#server.on("error", (err: Error) => sink.errors.push(err));
    sink.#server.server.on("connection", (socket: Socket) => {
      sink.#sockets.add(socket);
      socket.once("close", () => sink.#sockets.delete(socket));
    });

    await new Promise<void>((resolve, reject) => {
      sink.#server.server.once("error", reject);
      sink.#server.listen(0, "127.0.0.1", () => {
        sink.#server.server.off("error", reject);
        resolve();
      });
    });
    sink.#port = (sink.#server.server.address() as AddressInfo).port;
    return sink;
  }

  /**
   * Resolves with the first n mails once that many have arrived.
   *
   * @throws {Error} When fewer than n arrive within timeoutMs.
   */
  waitForMails(
    n: number,
    timeoutMs = DEFAULT_WAIT_MS,
  ): Promise<ReceivedMail[]> {
    if (this.mails.length >= n) return Promise.resolve(this.mails.slice(0, n));
    return new Promise((resolve, reject) => {
      const check = () => {
        if (this.mails.length < n) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(this.mails.slice(0, n));
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(
          new Error(
            `Timed out after ${timeoutMs} ms waiting for ${n} mail(s): ` +
              `${this.mails.length} arrived`,
          ),
        );
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }

  /**
   * Stops listening and ends every session, hung ones included. Sessions get
   * a 421 first; any still open after a second are destroyed. Safe to call
   * twice.
   */
  close(): Promise<void> {
    this.#closing ??= this.#shutDown();
    return this.#closing;
  }

  async #shutDown(): Promise<void> {
    for (const release of this.#hung) {
      release(smtpError(421, "Server shutting down"));
    }
    this.#hung.clear();

    // smtp-server's own close callback fires after its grace period even
    // while sockets are open; the net server's "close" waits for all of them.
    const listener = this.#server.server;
    const closed = new Promise<void>((resolve) =>
      listener.once("close", resolve)
    );
    this.#server.close();

    if (!await settlesWithin(closed, CLOSE_FORCE_MS)) {
      for (const socket of this.#sockets) socket.destroy();
    }
    if (!await settlesWithin(closed, CLOSE_FORCE_MS)) {
      throw new Error(
        `Cannot close the SMTP test server on port ${this.port}: ` +
          `${this.#sockets.size} socket(s) still open after destroying them`,
      );
    }
  }

  async #serverOptions(): Promise<SMTPServerOptions> {
    const opts = this.#options;
    const mode = opts.mode ?? "starttls";
    const tls = mode === "plain" ? {} : (opts.cert ?? await defaultCert());
    const disabled = [
      ...(mode === "starttls" ? [] : ["STARTTLS"]),
      ...(opts.auth ? [] : ["AUTH"]),
    ];

    return {
      ...tls,
      name: "localhost",
      secure: mode === "implicit",
      hideSTARTTLS: mode !== "starttls",
      disabledCommands: disabled,
      authOptional: !opts.auth,
      authMethods: ["PLAIN", "LOGIN"],
      allowInsecureAuth: !(opts.requireTlsForAuth ?? true),
      disableReverseLookup: true,
      closeTimeout: CLOSE_GRACE_MS,
      logger: { debug: (...args: unknown[]) => this.#onLog(args) },
      onConnect: (session, callback) => this.#onConnect(session, callback),
      onSecure: (_socket, session, callback) => {
        this.#session(session).secure = true;
        callback();
      },
      onAuth: (auth, session, callback) =>
        this.#onAuth(auth, session, callback),
      onMailFrom: (_address, session, callback) =>
        this.#onMailFrom(session, callback),
      onRcptTo: (address, _session, callback) =>
        this.#onRcptTo(address, callback),
      onData: (stream, session, callback) =>
        this.#onData(stream, session, callback),
      onClose: (session) => {
        this.#session(session).secure = session.secure;
      },
    };
  }

  #session(session: { id: string }): SmtpSession {
    let record = this.#byId.get(session.id);
    if (!record) {
      record = { authUser: null, secure: false, commands: [] };
      this.#byId.set(session.id, record);
      this.sessions.push(record);
    }
    return record;
  }

  // smtp-server has no per-command hook; its debug log line for each command
  // is the one place that sees them all, with AUTH arguments already redacted.
  // smtp_test.ts pins the command list, so a change of log format shows.
  #onLog(args: unknown[]): void {
    const [entry, , line] = args as [
      { tnx?: string; cid?: string; command?: string },
      unknown,
      unknown,
    ];
    if (entry?.tnx !== "command" || !entry.cid) return;

    const command = commandName(String(line ?? ""));
    if (command) this.#session({ id: entry.cid }).commands.push(command);
  }

  #onConnect(session: SMTPServerSession, callback: Callback): void {
    const record = this.#session(session);
    record.secure = session.secure;
    if (this.#options.tempFailConnect) {
      return callback(smtpError(421, "Service not available, try later"));
    }
    if (this.#options.noGreeting) return this.#hang(callback);
    callback();
  }

  #onAuth(
    auth: SMTPServerAuthentication,
    session: SMTPServerSession,
    callback: (
      err: Error | null | undefined,
      response?: SMTPServerAuthenticationResponse,
    ) => void,
  ): void {
    const expected = this.#options.auth;
    if (
      !expected || auth.username !== expected.user ||
      auth.password !== expected.pass
    ) {
      return callback(smtpError(535, "Authentication credentials invalid"));
    }

    this.#session(session).authUser = expected.user;
    callback(null, { user: expected.user });
  }

  #onMailFrom(session: SMTPServerSession, callback: Callback): void {
    const limit = this.#options.maxMessages;
    const sent = this.#messagesById.get(session.id) ?? 0;
    if (limit !== undefined && sent >= limit) {
      return callback(smtpError(421, "Too many messages on this connection"));
    }
    callback();
  }

  #onRcptTo(address: SMTPServerAddress, callback: Callback): void {
    const to = address.address.toLowerCase();
    const listed = (list?: string[]) =>
      (list ?? []).some((entry) => entry.toLowerCase() === to);

    if (listed(this.#options.rejectRecipients)) {
      return callback(smtpError(550, `Mailbox unavailable: ${to}`));
    }
    if (listed(this.#options.tempFailRecipients)) {
      return callback(smtpError(450, `Mailbox busy, try later: ${to}`));
    }
    callback();
  }

  async #onData(
    stream: SMTPServerDataStream,
    session: SMTPServerSession,
    callback: Callback,
  ): Promise<void> {
    const envelope = {
      from: session.envelope.mailFrom ? session.envelope.mailFrom.address : "",
      to: session.envelope.rcptTo.map((rcpt) => rcpt.address),
    };
    const secure = session.secure;
    const record = this.#session(session);
    let raw: Buffer;
    try {
      raw = await readAll(stream);
    } catch (err) {
      // The client left mid-message; nobody reads this answer.
      return callback(err as Error);
    }

    if (this.#options.hangAtDot) return this.#hang(callback);
    const tempFail = this.#options.tempFailData ?? false;
    this.#dataCount++;
    if (
      tempFail === true ||
      (typeof tempFail === "number" && this.#dataCount <= tempFail)
    ) {
      return callback(smtpError(451, "Local error in processing, try later"));
    }

    try {
      const parsed = await simpleParser(raw);
      this.#messagesById.set(
        session.id,
        (this.#messagesById.get(session.id) ?? 0) + 1,
      );
      this.mails.push({
        envelope,
        raw: new Uint8Array(raw),
        parsed,
        authUser: record.authUser,
        secure,
      });
      for (const waiter of [...this.#waiters]) waiter();
      callback();
    } catch (err) {
      callback(smtpError(554, `Cannot parse message: ${String(err)}`));
    }
  }

  // Keeps a handler's callback unanswered until close() releases it.
  #hang(callback: Callback): void {
    if (this.#closing) return callback(smtpError(421, "Server shutting down"));
    this.#hung.add(callback);
  }
}

/**
 * Returns a port on 127.0.0.1 that nothing listens on: it binds an ephemeral
 * port, reads it and closes the listener. Another process could take the port
 * in between; on a test machine that is rare enough to ignore.
 */
export function unusedPort(): Promise<number> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return Promise.resolve(port);
}

async function defaultCert(): Promise<{ cert: string; key: string }> {
  return {
    cert: await Deno.readTextFile(new URL("server.pem", FIXTURES)),
    key: await Deno.readTextFile(new URL("server.key", FIXTURES)),
  };
}

async function settlesWithin(
  promise: Promise<void>,
  ms: number,
): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<boolean>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function smtpError(responseCode: number, message: string): Error {
  return Object.assign(new Error(message), { responseCode });
}

// Reduces a command line to its verb, so no argument can reach the record.
function commandName(line: string): string | null {
  const [verb = "", argument = ""] = line.trim().split(/\s+/);
  const name = verb.toUpperCase();
  if (name === "MAIL") return "MAIL FROM";
  if (name === "RCPT") return "RCPT TO";
  if (name === "AUTH") {
    return /^[A-Z0-9-]{1,20}$/i.test(argument)
      ? `AUTH ${argument.toUpperCase()}`
      : "AUTH";
  }
  return /^[A-Z]{1,12}$/.test(name) ? name : null;
}

async function readAll(stream: SMTPServerDataStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Runs `body` with a fresh SMTP server and always closes it. */
export async function withSink(
  options: SmtpOptions,
  body: (sink: SmtpSink) => Promise<void>,
): Promise<void> {
  const sink = await SmtpSink.start(options);
  try {
    await body(sink);
  } finally {
    await sink.close();
  }
}

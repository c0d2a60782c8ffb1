/**
 * The notification: reads the journal's finished, unreported accounts and
 * mails them as `users.json` to the service providers over SMTP (STARTTLS
 * or implicit TLS, AUTH when configured). Never logs the body.
 */

import nodemailer from "nodemailer";
import type { EmailConfig } from "./config.ts";
import { tlsSettings } from "./tls.ts";

/** What the service providers learn about one account. */
export interface ReportedAccount {
  readonly persistentId: string | null;
  readonly emails: readonly string[];
}

/** The SMTP server took the message, for some or all recipients. */
export interface MailOutcome {
  readonly accepted: readonly string[];
  readonly rejected: readonly {
    readonly address: string;
    readonly response: string;
  }[];
}

/** Nothing was delivered: no recipient accepted the message. */
export class MailError extends Error {
  constructor(
    message: string,
    /** nodemailer's code: ECONNECTION, ETIMEDOUT, EAUTH, EENVELOPE, EMESSAGE... */
    readonly code: string | undefined,
    readonly responseCode: number | undefined,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "MailError";
  }
}

/**
 * The attachment, byte for byte as the Python tool wrote it:
 * `json.dumps(..., sort_keys=True, indent=4, separators=(",", ": "))`,
 * which also escapes every non-ASCII character.
 */
export function usersJson(accounts: readonly ReportedAccount[]): string {
  const list = accounts
    .filter((a) => a.persistentId !== null)
    .map((a) => ({
      email: a.emails.length > 0 ? [...a.emails] : null,
      id: a.persistentId,
    }));
  return JSON.stringify(list, null, 4).replace(
    /[\u007f-\uffff]/g,
    (c) => "\\u" + c.charCodeAt(0).toString(16).padStart(4, "0"),
  );
}

/**
 * Sends one message with `users.json` to every configured recipient.
 *
 * @throws {MailError} when no recipient accepted it (unreachable, TLS, AUTH,
 * a temporary failure, or every recipient refused).
 */
export async function sendReport(
  email: EmailConfig,
  accounts: readonly ReportedAccount[],
  deadline?: AbortSignal,
): Promise<MailOutcome> {
  const transport = createTransport(email);
  try {
    const sending = transport.sendMail({
      from: email.from,
      to: [...email.to],
      subject: email.subject,
      text: email.introText,
      attachments: [{
        filename: "users.json",
        content: usersJson(accounts),
        contentType: "application/json",
      }],
    });
    const info = await (deadline ? raceDeadline(sending, deadline) : sending);
    return {
      accepted: info.accepted.map(String),
      rejected: info.rejected.map((address) => ({
        address: String(address),
        response: rejectionOf(info, String(address)),
      })),
    };
  } catch (error) {
    throw mailError(email, error);
  } finally {
    transport.close();
  }
}

/**
 * Connects, upgrades to TLS and authenticates as configured, sending nothing.
 *
 * @throws {MailError} naming the phase that failed.
 */
export async function verifySmtp(email: EmailConfig): Promise<void> {
  const transport = createTransport(email);
  try {
    await transport.verify();
  } catch (error) {
    throw mailError(email, error, "reach the SMTP server");
  } finally {
    transport.close();
  }
}

/** nodemailer takes no AbortSignal: stop waiting when the run's deadline passes. */
function raceDeadline<T>(work: Promise<T>, deadline: AbortSignal): Promise<T> {
  const expired = () =>
    Object.assign(new Error("the run deadline (run_timeout) passed"), {
      code: "EDEADLINE",
    });
  if (deadline.aborted) return Promise.reject(expired());
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(expired());
    deadline.addEventListener("abort", onAbort, { once: true });
    work.then(resolve, reject).finally(() =>
      deadline.removeEventListener("abort", onAbort)
    );
  });
}

function createTransport(email: EmailConfig) {
  const tls = tlsSettings(email.trust);
  const auth = email.user !== null && email.password !== null
    ? { user: email.user, pass: email.password }
    : undefined;
  return nodemailer.createTransport({
    host: email.host,
    port: email.port,
    secure: email.security === "implicit",
    requireTLS: email.security === "starttls",
    ignoreTLS: email.security === "none",
    auth,
    // Without it nodemailer sends unauthenticated when AUTH is not offered.
    forceAuth: auth !== undefined,
    tls: { ca: tls.ca, rejectUnauthorized: tls.rejectUnauthorized },
    connectionTimeout: email.timeoutMs,
    greetingTimeout: email.timeoutMs,
    socketTimeout: email.timeoutMs,
    dnsTimeout: email.timeoutMs,
    logger: false,
    debug: false,
  });
}

function rejectionOf(
  info: { rejectedErrors?: unknown[] },
  address: string,
): string {
  const match = (info.rejectedErrors ?? []).find((e) =>
    (e as { recipient?: string }).recipient === address
  ) as
    | { response?: string }
    | undefined;
  return match?.response ?? "refused";
}

function mailError(
  email: EmailConfig,
  error: unknown,
  doing = "send the notification",
): MailError {
  const { code, responseCode, response, message, originalCode, errors } =
    error as {
      code?: string;
      responseCode?: number;
      response?: string;
      message?: string;
      originalCode?: string;
      errors?: { message?: string }[];
    };
  const server = `${email.host}:${email.port}`;
  // "localhost" tries ::1 and 127.0.0.1: the reasons are in `errors`.
  const said = response || message ||
    errors?.map((e) => e.message).filter(Boolean).join("; ") || originalCode ||
    "connection failed";
  const hint = code === "EAUTH"
    ? " (check notifications.email.user and password)"
    : code === "ETIMEDOUT"
    ? ` (no answer within ${email.timeoutMs} ms: notifications.email.timeout)`
    : (code === "ECONNECTION" || code === "ESOCKET") &&
        email.security !== "none"
    ? ` (check notifications.email.host/port and TLS settings; trusted: ${
      tlsSettings(email.trust).source
    })`
    : code === "ECONNECTION" || code === "ESOCKET"
    ? " (check notifications.email.host/port)"
    : "";
  return new MailError(
    `Cannot ${doing} via ${server}: ${code ?? "error"}: ${said}${hint}`,
    code,
    responseCode,
    {
      cause: error,
    },
  );
}

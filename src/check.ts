/**
 * The `check` command: verifies, without changing anything or sending mail,
 * that Unity and the SMTP server work with the configured trust and
 * credentials. Reads a `Config`; yields one result per check.
 */

import type { Config } from "./config.ts";
import { ApiError, UnityHttp } from "./http.ts";
import type { Logger } from "./log.ts";
import { MailError, verifySmtp } from "./notify.ts";
import { UnityReader } from "./unity.ts";
import { Journal, JournalError } from "./journal.ts";
import { StateDirError, tryLock } from "./lock.ts";
import { plural } from "./report.ts";

export interface CheckResult {
  readonly area: "state" | "unity" | "smtp";
  readonly name: string;
  readonly ok: boolean;
  readonly detail: string;
}

/** Runs every check in order; Unity checks stop at the first failure (no repeated failed logins). */
export async function* runChecks(
  config: Config,
  log: Logger,
): AsyncGenerator<CheckResult> {
  yield await checkState(config);
  yield* checkUnity(config, log);
  yield await checkSmtp(config);
}

/** The state directory can be written, the journal read, the lock taken. */
async function checkState(config: Config): Promise<CheckResult> {
  const name = `state directory ${config.stateDir}`;
  try {
    const lock = await tryLock(config.stateDir);
    if (!lock) {
      return {
        area: "state",
        name,
        ok: false,
        detail: "another run holds the lock right now",
      };
    }
    lock.release();
    const journal = await Journal.open(config.stateDir);
    const due = journal.entries.length;
    return ok(
      "state",
      name,
      `writable; journal holds ${plural(due, "account")} from earlier runs`,
    );
  } catch (error) {
    if (!(error instanceof StateDirError || error instanceof JournalError)) {
      throw error;
    }
    return { area: "state", name, ok: false, detail: error.message };
  }
}

async function* checkUnity(
  config: Config,
  log: Logger,
): AsyncGenerator<CheckResult> {
  const http = new UnityHttp({
    api: { ...config.api, retries: 0 },
    log,
    allowMutations: false,
  });
  const reader = new UnityReader(http);
  const group = config.userGroup;
  try {
    const members = await reader.members(group);
    const trusted = config.api.baseUrl.startsWith("https:")
      ? "certificate trusted, "
      : "";
    yield ok(
      "unity",
      `Unity reachable, ${trusted}credentials accepted`,
      config.api.baseUrl,
    );
    yield ok(
      "unity",
      `group ${group} exists`,
      plural(members.length, "member"),
    );
    const first = members[0];
    if (first === undefined) return;
    const entity = await reader.entity(first);
    const groups = await reader.groups(first);
    const attributes = await reader.directAttributes(first, "/");
    yield ok(
      "unity",
      "members and their attributes can be read",
      `entity ${entity.id}: ${plural(groups.length, "group")}, ${
        plural(attributes.length, "direct attribute")
      } in /`,
    );
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    yield { area: "unity", name: "Unity", ok: false, detail: error.message };
  } finally {
    await http.close();
  }
}

async function checkSmtp(config: Config): Promise<CheckResult> {
  const { email } = config;
  const steps = [
    "connected",
    email.security === "starttls"
      ? "STARTTLS"
      : email.security === "implicit"
      ? "TLS"
      : "no TLS (as configured)",
    email.user ? `AUTH as ${email.user}` : "no AUTH (as configured)",
  ].join(", ");
  try {
    await verifySmtp(email);
    return ok(
      "smtp",
      `SMTP ${email.host}:${email.port}`,
      `${steps}; no mail sent`,
    );
  } catch (error) {
    if (!(error instanceof MailError)) throw error;
    return {
      area: "smtp",
      name: `SMTP ${email.host}:${email.port}`,
      ok: false,
      detail: error.message,
    };
  }
}

function ok(
  area: CheckResult["area"],
  name: string,
  detail: string,
): CheckResult {
  return { area, name, ok: true, detail };
}

/**
 * The job, step by step: lock, journal, plan (read-only), brake, record the
 * plan, apply, notify. Reads a `Config`; returns a `RunReport` whose exit
 * code main.ts uses, or throws the error that stopped the run before any
 * change.
 */

import { join } from "node:path";
import { applyPending, removalTime } from "./apply.ts";
import { Audit } from "./audit.ts";
import type { Config } from "./config.ts";
import { UnityHttp } from "./http.ts";
import { Journal, type JournalEntry } from "./journal.ts";
import { inspectStateDir, LOCK_FILE, lockHolder, tryLock } from "./lock.ts";
import type { Logger } from "./log.ts";
import { MailError, sendReport } from "./notify.ts";
import { makePlan, type Plan } from "./plan.ts";
import { UnityAdmin, UnityReader } from "./unity.ts";

/** Exit codes: the README's table is the contract. */
export const EXIT = {
  ok: 0,
  internal: 1,
  usage: 2,
  api: 3,
  brake: 4,
  locked: 5,
  partial: 6,
  mail: 7,
} as const;

/** More accounts qualify than one run may deprovision. */
export class BrakeError extends Error {
  constructor(
    readonly count: number,
    readonly limit: number,
    readonly plan: Plan,
    readonly dryRun: boolean,
    /** The journal's accounts, for a dry run's table. */
    readonly journal: readonly JournalEntry[],
  ) {
    const check = dryRun
      ? "Check the accounts listed above"
      : "Check the group and the accounts (--dry-run lists them)";
    super(
      `Stopped before any change: ${count} accounts qualify for deprovisioning, more than the limit of ${limit} ` +
        `(max_accounts_per_run, or --max-accounts). ${check}; if this is right, run once with --max-accounts ${count}`,
    );
    this.name = "BrakeError";
  }
}

/** Another run holds the lock. */
export class LockedError extends Error {
  constructor(readonly file: string, readonly pid?: number) {
    const holder = pid ? ` (pid ${pid})` : "";
    super(
      `Another run${holder} is in progress: it holds the lock on "${file}"; nothing was done. Try again when it has finished`,
    );
    this.name = "LockedError";
  }
}

export interface RunOptions {
  config: Config;
  dryRun: boolean;
  maxAccounts: number;
  log: Logger;
  onProgress?: (done: number, total: number) => void;
  now?: () => number;
}

export interface MailReport {
  readonly result: "accepted" | "partly-refused" | "failed" | "not-needed";
  readonly accounts: number;
  /** The accounts the mail carried (delivered or not). */
  readonly entityIds: readonly number[];
  readonly accepted: readonly string[];
  readonly rejected: readonly {
    readonly address: string;
    readonly response: string;
  }[];
  readonly error?: string;
}

/** What a run did, for the summary, `--report` and the exit code. */
export interface RunReport {
  readonly runId: string;
  readonly dryRun: boolean;
  readonly exitCode: number;
  readonly plan: Plan;
  /**
   * Every journal account this run worked on or mailed, with its steps'
   * outcomes, as they stood before the mail (a delivered mail clears them
   * from the journal); for a dry run, the journal as it is.
   */
  readonly accounts: readonly JournalEntry[];
  readonly failed: readonly {
    readonly entityId: number;
    readonly error: string;
  }[];
  readonly mail: MailReport;
  readonly requests: number;
}

/**
 * Runs the whole job once.
 *
 * @throws {LockedError} when another run holds the lock.
 * @throws {BrakeError} when too many accounts qualify.
 * @throws {ApiError|PlanError} when Unity cannot be read; nothing changed.
 * @throws {JournalError} when the journal cannot be trusted.
 */
export async function runJob(options: RunOptions): Promise<RunReport> {
  if (options.dryRun) return await dryRun(options);
  const { config, log } = options;
  const lock = await tryLock(config.stateDir);
  if (!lock) {
    throw new LockedError(
      join(config.stateDir, LOCK_FILE),
      await lockHolder(config.stateDir),
    );
  }
  const runId = crypto.randomUUID();
  const deadline = AbortSignal.timeout(config.runTimeoutMs);
  const http = new UnityHttp({
    api: config.api,
    log,
    allowMutations: true,
    signal: deadline,
  });
  let audit: Audit | undefined;
  try {
    const journal = await Journal.open(config.stateDir);
    audit = await Audit.open(config.stateDir, runId);
    const resumed = journal.entries.length;
    if (resumed > 0) {
      log.info("resuming accounts from the journal", {
        accounts: resumed,
        journal: journal.file,
      });
    }

    const plan = await makePlan(
      new UnityReader(http),
      planOptions(options, journal),
    );
    brake(plan, options.maxAccounts, false, journal);

    await journal.add(captured(plan, config.retentionDays, runId, options.now));
    const applied = await applyPending(new UnityAdmin(http), journal, audit, {
      retentionDays: config.retentionDays,
      concurrency: config.api.maxConcurrency,
      log,
      now: options.now,
    });

    const accounts = structuredClone(journal.entries);
    const mail = await notify(config, journal, audit, log, deadline);
    const failed = [...plan.unreadable, ...applied.failed];
    return {
      runId,
      dryRun: false,
      exitCode: exitCodeOf(failed.length, mail),
      plan,
      accounts,
      failed,
      mail,
      requests: http.requestCount,
    };
  } finally {
    audit?.close();
    await http.close();
    lock.release();
  }
}

/** The plan alone, with a client that refuses anything but GET. */
async function dryRun(options: RunOptions): Promise<RunReport> {
  const { config, log } = options;
  await inspectStateDir(config.stateDir);
  const journal = await Journal.peek(config.stateDir);
  const http = new UnityHttp({
    api: config.api,
    log,
    allowMutations: false,
    signal: AbortSignal.timeout(config.runTimeoutMs),
  });
  try {
    const plan = await makePlan(
      new UnityReader(http),
      planOptions(options, journal),
    );
    brake(plan, options.maxAccounts, true, journal);
    return {
      runId: "dry-run",
      dryRun: true,
      exitCode: plan.unreadable.length > 0 ? EXIT.partial : EXIT.ok,
      plan,
      accounts: journal.entries,
      failed: plan.unreadable,
      mail: NO_MAIL,
      requests: http.requestCount,
    };
  } finally {
    await http.close();
  }
}

/** The plan's accounts as journal entries: what was captured, no step done. */
function captured(
  plan: Plan,
  retentionDays: number,
  runId: string,
  now = Date.now,
): JournalEntry[] {
  const when = removalTime(retentionDays, now());
  const capturedAt = new Date().toISOString();
  return plan.accounts.map((account) => ({
    ...account,
    removals: account.removals.map((r) => ({ ...r })),
    when,
    scheduled: false,
    capturedAt,
    runId,
  }));
}

function planOptions(options: RunOptions, journal: Journal) {
  const { config, log, onProgress } = options;
  return {
    group: config.userGroup,
    whitelist: config.attrWhitelist,
    concurrency: config.api.maxConcurrency,
    bulk: config.api.bulkMembers,
    maxUnreadableShare: config.maxUnreadableShare,
    inJournal: (id: number) => journal.has(id),
    log,
    onProgress,
  };
}

function brake(
  plan: Plan,
  limit: number,
  dryRun: boolean,
  journal: Journal,
): void {
  if (plan.accounts.length > limit) {
    const count = plan.accounts.length;
    throw new BrakeError(count, limit, plan, dryRun, journal.entries);
  }
}

const NO_MAIL: MailReport = {
  result: "not-needed",
  accounts: 0,
  entityIds: [],
  accepted: [],
  rejected: [],
};

/** Mails every finished, unreported account once; forgets them once accepted. */
async function notify(
  config: Config,
  journal: Journal,
  audit: Audit,
  log: Logger,
  deadline: AbortSignal,
): Promise<MailReport> {
  const due = journal.unreported().sort((a, b) => a.entityId - b.entityId);
  if (due.length === 0) {
    return NO_MAIL;
  }
  for (const entry of due.filter((e) => e.persistentId === null)) {
    log.warn("account has no persistent id; it cannot be named in users.json", {
      entityId: entry.entityId,
    });
  }

  const report = await deliver(config, due, journal, log, deadline);
  audit.record({
    event: "mail",
    result: report.result,
    accounts: report.accounts,
    entityIds: [...report.entityIds],
    accepted: [...report.accepted],
    rejected: report.rejected.map((r) => r.address),
    error: report.error,
  });
  return report;
}

/** Sends the mail; clears the accounts from the journal once it was accepted. */
async function deliver(
  config: Config,
  due: readonly JournalEntry[],
  journal: Journal,
  log: Logger,
  deadline: AbortSignal,
): Promise<MailReport & { result: "accepted" | "partly-refused" | "failed" }> {
  const entityIds = due.map((e) => e.entityId);
  const accounts = due.length;
  try {
    const outcome = await sendReport(config.email, due, deadline);
    await journal.remove(entityIds);
    for (const refusal of outcome.rejected) {
      log.error("recipient refused the notification", {
        recipient: refusal.address,
        response: refusal.response,
      });
    }
    log.info("notification sent", {
      accounts,
      recipients: outcome.accepted.length,
    });
    const result = outcome.rejected.length > 0 ? "partly-refused" : "accepted";
    return { result, accounts, entityIds, ...outcome };
  } catch (error) {
    if (!(error instanceof MailError)) throw error;
    log.error(
      "notification not delivered; its accounts stay in the journal for the next run",
      { accounts, error: error.message },
    );
    return {
      result: "failed",
      accounts,
      entityIds,
      accepted: [],
      rejected: [],
      error: error.message,
    };
  }
}

function exitCodeOf(failures: number, mail: MailReport): number {
  if (mail.result === "failed") return EXIT.mail;
  if (failures > 0 || mail.result === "partly-refused") return EXIT.partial;
  return EXIT.ok;
}

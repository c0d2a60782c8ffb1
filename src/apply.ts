/**
 * The apply phase: takes the journal's unfinished accounts and runs their
 * steps in order (strip attributes, schedule removal), marking each step
 * done in the journal and the audit trail. A failure stops only that
 * account; it stays in the journal for the next run.
 */

import type { Audit } from "./audit.ts";
import { ApiError } from "./http.ts";
import type { Journal, JournalEntry } from "./journal.ts";
import type { Logger } from "./log.ts";
import { forEachLimit } from "./pool.ts";
import { isUnknownEntity, type UnityAdmin } from "./unity.ts";

const DAY_MS = 86_400_000;
/** A `when` closer than this is recomputed: Unity runs a past schedule at once. */
const MIN_LEAD_MS = 60 * 60_000;

export interface ApplyOptions {
  retentionDays: number;
  concurrency: number;
  log: Logger;
  now?: () => number;
}

export interface ApplyResult {
  readonly completed: readonly number[];
  readonly failed: readonly {
    readonly entityId: number;
    readonly error: string;
  }[];
}

/** When a removal planned now should happen: now + retention, in whole ms. */
export function removalTime(retentionDays: number, now: number): number {
  return Math.round(now + retentionDays * DAY_MS);
}

/** What every step works with. */
interface Context {
  readonly admin: UnityAdmin;
  readonly journal: Journal;
  readonly audit: Audit;
  readonly options: ApplyOptions;
}

/** Runs the unfinished steps of every pending account in the journal. */
export async function applyPending(
  admin: UnityAdmin,
  journal: Journal,
  audit: Audit,
  options: ApplyOptions,
): Promise<ApplyResult> {
  const context = { admin, journal, audit, options };
  const completed: number[] = [];
  const failed: { entityId: number; error: string }[] = [];
  const pending = journal.pending().sort((a, b) => a.entityId - b.entityId);

  await forEachLimit(pending, options.concurrency, async (entry) => {
    try {
      await applyAccount(context, entry);
      delete entry.lastError;
      completed.push(entry.entityId);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      entry.lastError = error.message;
      failed.push({ entityId: entry.entityId, error: error.message });
      audit.record({
        event: "step-failed",
        entityId: entry.entityId,
        persistentId: entry.persistentId,
        step: error.method + " " + error.path,
        status: error.status ?? null,
        error: error.message,
      });
      options.log.error("account not finished; it will be retried next run", {
        entityId: entry.entityId,
        error: error.message,
      });
    }
  });
  await journal.save();

  completed.sort((a, b) => a - b);
  failed.sort((a, b) => a.entityId - b.entityId);
  return { completed, failed };
}

async function applyAccount(
  context: Context,
  entry: JournalEntry,
): Promise<void> {
  const { journal, audit, options } = context;
  try {
    await stripAttributes(context, entry);
    await scheduleRemoval(context, entry);
  } catch (error) {
    if (!isUnknownEntity(error)) throw error;
    // Removed by someone else meanwhile: nothing left to strip, still to report.
    journal.mark({ entityId: entry.entityId, gone: true });
    audit.record({
      event: "entity-gone",
      entityId: entry.entityId,
      persistentId: entry.persistentId,
    });
    options.log.warn("entity no longer exists in Unity; it is still reported", {
      entityId: entry.entityId,
    });
  }
}

async function stripAttributes(
  context: Context,
  entry: JournalEntry,
): Promise<void> {
  const { admin, journal, audit, options: { log } } = context;
  for (const [index, removal] of entry.removals.entries()) {
    if (removal.outcome) continue;
    const outcome = await admin.removeAttribute(
      entry.entityId,
      removal.group,
      removal.name,
    );
    journal.mark({ entityId: entry.entityId, removal: index, outcome });
    audit.record({
      event: "attribute-removed",
      entityId: entry.entityId,
      persistentId: entry.persistentId,
      group: removal.group,
      attribute: removal.name,
      outcome,
      status: outcome === "removed" ? 204 : 400,
    });
    const fields = {
      entityId: entry.entityId,
      attribute: removal.name,
      group: removal.group,
      outcome,
    };
    // Unity refuses to remove its immutable system attributes on every
    // account: expected, and nothing to act on, so not a warning.
    log.info(
      outcome === "immutable"
        ? "system attribute cannot be removed; skipped"
        : outcome === "absent"
        ? "attribute already gone"
        : "removed attribute",
      fields,
    );
  }
}

async function scheduleRemoval(
  context: Context,
  entry: JournalEntry,
): Promise<void> {
  const { admin, journal, audit, options } = context;
  if (entry.scheduled) return;
  const now = options.now?.() ?? Date.now();
  if (entry.when < now + MIN_LEAD_MS) {
    // Captured long ago: a stale `when` would make Unity remove it at once.
    const when = removalTime(options.retentionDays, now);
    journal.mark({ entityId: entry.entityId, when });
  }
  await admin.scheduleRemoval(entry.entityId, entry.when, now);
  journal.mark({ entityId: entry.entityId, scheduled: true });
  audit.record({
    event: "removal-scheduled",
    entityId: entry.entityId,
    persistentId: entry.persistentId,
    when: entry.when,
    status: 204,
  });
  options.log.info("scheduled removal", {
    entityId: entry.entityId,
    operation: "REMOVE",
    when: new Date(entry.when).toISOString(),
    outcome: "scheduled",
  });
}

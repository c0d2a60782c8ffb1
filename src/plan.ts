/**
 * The plan phase: reads Unity (GET only) and decides which accounts to
 * deprovision and what to remove from each. It changes nothing, so a dry run
 * is this phase alone.
 */

import { ApiError } from "./http.ts";
import type { Logger } from "./log.ts";
import { forEachLimit } from "./pool.ts";
import { emailsOf, type Entity, type UnityReader } from "./unity.ts";

/** An account selected for deprovisioning, with what was captured. */
export interface PlannedAccount {
  readonly entityId: number;
  readonly persistentId: string | null;
  readonly emails: readonly string[];
  /** Direct attributes not on the whitelist, in every group they are set. */
  readonly removals: readonly {
    readonly group: string;
    readonly name: string;
  }[];
}

export interface Plan {
  readonly group: string;
  /** Members of the group looked at. */
  readonly scanned: number;
  /** Sorted by entity id, whatever order answers came in. */
  readonly accounts: readonly PlannedAccount[];
  /** Members or accounts that could not be read. */
  readonly unreadable: readonly {
    readonly entityId: number;
    readonly error: string;
  }[];
  /** Disabled members already scheduled for removal. */
  readonly alreadyScheduled: number;
  /** Members left alone because the journal already holds them. */
  readonly inJournal: number;
  /** Whether the one-request member listing was used. */
  readonly bulk: boolean;
}

/** Too much of Unity could not be read to trust the plan. */
export class PlanError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "PlanError";
  }
}

export interface PlanOptions {
  group: string;
  whitelist: readonly string[];
  concurrency: number;
  bulk: boolean;
  maxUnreadableShare: number;
  /** Entities the journal already holds: never captured twice. */
  inJournal: (entityId: number) => boolean;
  log: Logger;
  onProgress?: (done: number, total: number) => void;
}

/** The rule, as the Python tool had it: disabled and not yet scheduled for removal. */
export function qualifies(entity: Entity): boolean {
  return entity.state === "disabled" && entity.scheduledOperation !== "REMOVE";
}

/**
 * Reads the group and the qualifying accounts' attributes.
 *
 * @throws {ApiError} when the group cannot be listed.
 * @throws {PlanError} when more than the allowed share of members cannot be read.
 */
export async function makePlan(
  reader: UnityReader,
  options: PlanOptions,
): Promise<Plan> {
  const unreadable: { entityId: number; error: string }[] = [];
  const listing = await listEntities(reader, options, unreadable);
  const disabled = listing.entities.filter((e) => e.state === "disabled");
  const fresh = listing.entities.filter((e) =>
    qualifies(e) && !options.inJournal(e.id)
  );

  const accounts: PlannedAccount[] = [];
  await forEachLimit(fresh, options.concurrency, async (entity) => {
    try {
      accounts.push(await capture(reader, entity, options.whitelist));
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      unreadable.push({ entityId: entity.id, error: error.message });
    }
  });

  checkUnreadable(unreadable, listing.scanned, options);
  accounts.sort((a, b) => a.entityId - b.entityId);
  unreadable.sort((a, b) => a.entityId - b.entityId);
  return {
    group: options.group,
    scanned: listing.scanned,
    accounts,
    unreadable,
    alreadyScheduled:
      disabled.filter((e) => e.scheduledOperation === "REMOVE").length,
    inJournal:
      disabled.filter((e) => qualifies(e) && options.inJournal(e.id)).length,
    bulk: listing.bulk,
  };
}

async function listEntities(
  reader: UnityReader,
  options: PlanOptions,
  unreadable: { entityId: number; error: string }[],
): Promise<{ entities: Entity[]; scanned: number; bulk: boolean }> {
  if (options.bulk) {
    // Keep only what can qualify: memory follows the selection, not the group.
    const listing = await reader.membersWithEntities(
      options.group,
      (entity) => entity.state === "disabled",
    );
    if (listing) {
      options.onProgress?.(listing.scanned, listing.scanned);
      return { ...listing, bulk: true };
    }
    options.log.info(
      "Unity has no group-members endpoint (before 2.6.1): reading members one by one",
      { group: options.group },
    );
  }

  const ids = await reader.members(options.group);
  const entities: Entity[] = [];
  let done = 0;
  await forEachLimit(ids, options.concurrency, async (id) => {
    try {
      const entity = await reader.entity(id);
      // Keep only what can qualify: memory follows the selection, not the group.
      if (entity.state === "disabled") entities.push(entity);
    } catch (error) {
      if (!(error instanceof ApiError)) throw error;
      unreadable.push({ entityId: id, error: error.message });
      options.log.warn("cannot read entity; skipped this run", {
        entityId: id,
        error: error.message,
      });
    }
    options.onProgress?.(++done, ids.length);
  });
  return { entities, scanned: ids.length, bulk: false };
}

/** Reads every group's direct attributes: the e-mails to report and what to strip. */
async function capture(
  reader: UnityReader,
  entity: Entity,
  whitelist: readonly string[],
): Promise<PlannedAccount> {
  // The bulk listing does not create a persistent id; GET /entity does.
  const persistentId = entity.persistentId ??
    (await reader.entity(entity.id)).persistentId;
  const groups = await reader.groups(entity.id);
  const perGroup = await Promise.all(
    groups.map((group) => reader.directAttributes(entity.id, group)),
  );
  const attributes = perGroup.flat();
  return {
    entityId: entity.id,
    persistentId,
    emails: emailsOf(attributes),
    removals: attributes
      .filter((a) => a.direct && !whitelist.includes(a.name))
      .map((a) => ({ group: a.group, name: a.name })),
  };
}

function checkUnreadable(
  unreadable: readonly { entityId: number; error: string }[],
  scanned: number,
  options: PlanOptions,
): void {
  if (unreadable.length === 0) return;
  const share = unreadable.length / Math.max(1, scanned);
  const first = unreadable[0]!;
  if (share > options.maxUnreadableShare) {
    throw new PlanError(
      `Cannot trust this run: ${unreadable.length} of ${scanned} members of ${options.group} could not be read ` +
        `(more than max_unreadable_share ${options.maxUnreadableShare}). ` +
        `First failure: entity ${first.entityId}: ${first.error}`,
    );
  }
}

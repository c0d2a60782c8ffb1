/**
 * The invariants every fault scenario must end with, checked against the
 * Unity simulator's live state, the mails the SMTP test servers accepted and
 * the journal on disk. It reads a `Baseline` taken from the simulator before
 * the first run; it writes nothing.
 *
 * @example
 * ```ts
 * const baseline = baselineOf(sim);
 * // ... runs, kills, faults ...
 * await assertInvariants({ sim, mails: sink.mails, stateDir, baseline });
 * ```
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import type { ReceivedMail } from "./smtp.ts";
import type { SimAttribute, SimEntity, UnitySim } from "./unity_sim.ts";

const DAY_MS = 86_400_000;

/**
 * Attributes Unity refuses to remove (SchemaConsistencyException): they stay
 * on a deprovisioned account whatever the whitelist says.
 */
const IMMUTABLE = new Set([
  "sys:LastAuthentication",
  "sys:CredentialRequirements",
  "sys:Preferences",
  "sys:AttributeClasses",
  "sys:userMFAOptIn",
]);

/** What Unity held before the first run, and which accounts qualified. */
export interface Baseline {
  /** Every entity as it was, keyed by id. */
  readonly before: Map<number, SimEntity>;
  /** Disabled entities without a scheduled REMOVE: the job's targets. */
  readonly selected: Set<number>;
}

/** One entry of a delivered users.json. */
export interface ReportedUser {
  id: string;
  email: string[] | null;
}

/** Takes the baseline: a deep copy of the simulator and the accounts that qualify. */
export function baselineOf(sim: UnitySim): Baseline {
  const before = new Map(sim.snapshot().map((e) => [e.id, e]));
  const selected = new Set(
    [...before.values()].filter(qualifies).map((e) => e.id),
  );
  return { before, selected };
}

/**
 * Adds entities seeded after the baseline was taken (they were not there
 * before, so they count from now on).
 */
export function extendBaseline(
  baseline: Baseline,
  sim: UnitySim,
  ids: readonly number[],
): void {
  for (const id of ids) {
    const entity = sim.entity(id);
    assert.ok(entity, `entity ${id} should exist to extend the baseline`);
    baseline.before.set(id, structuredClone(entity));
    if (qualifies(entity)) baseline.selected.add(id);
  }
}

/** The rule the job applies: disabled and no REMOVE scheduled yet. */
export function qualifies(entity: SimEntity): boolean {
  return entity.state === "disabled" && entity.scheduledOperation !== "REMOVE";
}

/** The users.json attachment of a mail, parsed. */
export function usersOf(mail: ReceivedMail): ReportedUser[] {
  const attachment = mail.parsed.attachments.find((a) =>
    a.filename === "users.json"
  );
  assert.ok(attachment, "every notification should carry users.json");
  const users = JSON.parse(new TextDecoder().decode(attachment.content));
  assert.ok(Array.isArray(users), "users.json should be a list");
  return users as ReportedUser[];
}

/** The plain addresses in an entity's `email` attributes, in any encoding. */
export function emailsOf(attributes: readonly SimAttribute[]): string[] {
  const found = new Set<string>();
  for (const attribute of attributes) {
    if (attribute.name !== "email") continue;
    for (const value of attribute.values) {
      const address = addressOf(value);
      if (address) found.add(address);
    }
  }
  return [...found].sort();
}

/** The journal's accounts; [] when the file does not exist. */
export async function journalAccounts(
  stateDir: string,
): Promise<Record<string, unknown>[]> {
  let text;
  try {
    text = await Deno.readTextFile(join(stateDir, "journal.json"));
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return [];
    throw error;
  }
  const accounts = JSON.parse(text).accounts;
  assert.ok(Array.isArray(accounts), "journal.json should hold accounts");
  return accounts;
}

export interface InvariantInput {
  sim: UnitySim;
  /** Every mail every SMTP server of the scenario accepted. */
  mails: readonly ReceivedMail[];
  stateDir: string;
  baseline: Baseline;
  whitelist?: readonly string[];
  retentionDays?: number;
  /** Selected accounts the run left alone on purpose (e.g. unreadable): unchanged, unreported, not journaled. */
  untouched?: readonly number[];
  /** Selected accounts not finished yet: still in the journal and unreported. */
  pending?: readonly number[];
}

/**
 * Asserts the end state of a scenario: every selected account stripped and
 * scheduled for removal in the future, nothing removed, every selected
 * account in exactly one delivered mail with the addresses it had before,
 * every other entity unchanged, and an empty journal. `untouched` and
 * `pending` name the accounts a scenario expects to be left for later.
 */
export async function assertInvariants(input: InvariantInput): Promise<void> {
  const { sim, baseline } = input;
  const untouched = new Set(input.untouched ?? []);
  const pending = new Set(input.pending ?? []);
  const except = new Set([...untouched, ...pending]);

  assert.deepEqual(
    sim.removedEntities,
    [],
    "no entity may ever be removed (a REMOVE must be scheduled in the future)",
  );
  for (const [id, before] of baseline.before) {
    if (pending.has(id)) {
      assert.ok(sim.entity(id), `pending entity ${id} must still exist`);
    } else if (baseline.selected.has(id) && !untouched.has(id)) {
      assertDeprovisioned(sim, before, input);
    } else {
      assert.deepEqual(
        sim.entity(id),
        before,
        `entity ${id} was not selected and must not change`,
      );
    }
  }
  assert.deepEqual(
    sim.snapshot().map((e) => e.id).filter((id) => !baseline.before.has(id)),
    [],
    "no entity may be created",
  );

  assertMails(input, except);
  const journaled = (await journalAccounts(input.stateDir))
    .map((a) => a.entityId as number).sort((a, b) => a - b);
  assert.deepEqual(
    journaled,
    [...pending].sort((a, b) => a - b),
    "the journal must hold exactly the unfinished accounts (none once every account was reported)",
  );
}

function assertDeprovisioned(
  sim: UnitySim,
  before: SimEntity,
  input: InvariantInput,
): void {
  const id = before.id;
  const live = sim.entity(id);
  assert.ok(live, `selected entity ${id} must still exist`);
  const whitelist = input.whitelist ?? [];
  const kept = before.attributes.filter((a) =>
    a.direct === false || whitelist.includes(a.name) || IMMUTABLE.has(a.name)
  );
  assert.deepEqual(
    live.attributes,
    kept,
    `entity ${id}: every direct, non-whitelisted, removable attribute must be gone, the rest kept`,
  );

  assert.equal(live.scheduledOperation, "REMOVE", `entity ${id}: operation`);
  const retention = (input.retentionDays ?? 365) * DAY_MS;
  assert.ok(
    live.scheduledTime !== null &&
      live.scheduledTime > sim.now() + retention - DAY_MS &&
      live.scheduledTime <= sim.now() + retention,
    `entity ${id}: removal must be scheduled about retention_period ahead, got ${live.scheduledTime}`,
  );
  const unchanged = {
    ...before,
    attributes: kept,
    scheduledOperation: "REMOVE",
    scheduledTime: live.scheduledTime,
    persistentId: before.persistentId ?? live.persistentId,
  };
  assert.deepEqual(live, unchanged, `entity ${id}: nothing else may change`);
}

function assertMails(input: InvariantInput, except: Set<number>): void {
  const { sim, baseline } = input;
  const expected = new Map<string, { id: number; emails: string[] }>();
  for (const id of baseline.selected) {
    if (except.has(id)) continue;
    const before = baseline.before.get(id)!;
    const pid = before.persistentId ?? sim.entity(id)?.persistentId;
    assert.ok(pid, `entity ${id} should have a persistent id by now`);
    expected.set(pid, { id, emails: emailsOf(before.attributes) });
  }

  const seen = new Map<string, number>();
  for (const [i, mail] of input.mails.entries()) {
    for (const user of usersOf(mail)) {
      const account = expected.get(user.id);
      assert.ok(
        account,
        `mail ${i} reports ${user.id}, which is not a finished selected account`,
      );
      seen.set(user.id, (seen.get(user.id) ?? 0) + 1);
      assert.deepEqual(
        [...(user.email ?? [])].sort(),
        account.emails,
        `mail ${i}: entity ${account.id} must be reported with the addresses it had before`,
      );
    }
  }
  for (const [pid, account] of expected) {
    assert.equal(
      seen.get(pid) ?? 0,
      1,
      `entity ${account.id} (${pid}) must appear in exactly one delivered mail`,
    );
  }
}

function addressOf(value: unknown): string | undefined {
  if (typeof value === "string") {
    if (!value.trim().startsWith("{")) return value.trim() || undefined;
    return addressOf(JSON.parse(value));
  }
  if (typeof value === "object" && value !== null) {
    const inner = (value as { value?: unknown }).value;
    return typeof inner === "string" ? inner.trim() : undefined;
  }
  return undefined;
}

/**
 * Correctness under concurrency, not speed: the tool runs as a process (the
 * `start` task's permissions) against a simulator with random latency, so
 * answers come back in a different order every time. Whatever the
 * concurrency and the order, a run must leave Unity in the same state, mail
 * the same users.json and write the same audit trail; it must never have
 * more requests in flight than api.max_concurrency, never send the same
 * request twice, and fall back from the bulk listing when Unity lacks it.
 * The benchmark (tests/bench.ts) measures the speed.
 */

import assert from "node:assert/strict";
import { seedDemo } from "./support/population.ts";
import {
  expectedUsersJson,
  type Scenario,
  startScenario,
} from "./support/scenario.ts";
import type {
  SimEntity,
  SimRequest,
  UnityProfile,
} from "./support/unity_sim.ts";

const DAY_MS = 86_400_000;
const RETENTION_DAYS = 365;
const USERS = 240;
/** One simulator clock for every run, so the seeded people are the same. */
const SIM_NOW = Date.now();

/** What one run left behind, with what differs between runs by design taken out. */
interface Outcome {
  code: number;
  stderr: string;
  /** Unity afterwards; created persistent ids and removal times replaced. */
  unity: unknown[];
  /** The mailed users.json, created persistent ids replaced. */
  usersJson: string;
  /** The untouched users.json, for comparison with the expected one. */
  rawUsersJson: string;
  expectedUsersJson: string;
  /** audit.log lines without time and run id, sorted. */
  audit: string[];
  requests: SimRequest[];
  maxInFlight: number;
}

interface RunOptions {
  concurrency: number;
  profile?: UnityProfile;
  bulk?: boolean;
  /** Called before the run, e.g. to queue a fault. */
  prepare?: (scenario: Scenario) => void;
}

async function runOnce(options: RunOptions): Promise<Outcome> {
  const scenario = await startScenario({
    profile: options.profile ?? "4.x",
    tls: "none",
    // Random latency: answers arrive in a different order on every run.
    sim: { latencyMs: 0, jitterMs: 6, now: () => SIM_NOW },
    config: {
      api: {
        max_concurrency: options.concurrency,
        ...(options.bulk === undefined ? {} : { bulk_members: options.bulk }),
      },
      retention_period: RETENTION_DAYS,
      max_accounts_per_run: USERS,
    },
  });
  try {
    const { disabledUnscheduled } = seedDemo(scenario.sim, {
      users: USERS,
      seed: 7,
    });
    const before = scenario.sim.snapshot();
    options.prepare?.(scenario);
    const startedAt = Date.now();
    const result = await scenario.run();
    const window = {
      from: startedAt + RETENTION_DAYS * DAY_MS,
      to: Date.now() + RETENTION_DAYS * DAY_MS,
    };
    const created = createdIds(before, scenario.sim.snapshot());
    const mail = scenario.smtp?.mails[0];
    const attachment = mail?.parsed.attachments.find((a) =>
      a.filename === "users.json"
    );
    const rawUsersJson = attachment?.content.toString("utf8") ?? "";
    return {
      code: result.code,
      stderr: result.stderr,
      unity: normalizedUnity(before, scenario.sim.snapshot(), created, window),
      usersJson: replaceAll(rawUsersJson, created),
      rawUsersJson,
      expectedUsersJson: expectedUsersJson(
        before,
        (id) => scenario.sim.entity(id),
        disabledUnscheduled,
      ),
      audit: await normalizedAudit(scenario.stateDir, created, window),
      requests: [...scenario.sim.requests],
      maxInFlight: scenario.sim.maxInFlight,
    };
  } finally {
    await scenario.close();
  }
}

/** Persistent ids the simulator made up during the run (GET /entity creates one). */
function createdIds(
  before: readonly SimEntity[],
  after: readonly SimEntity[],
): Map<string, string> {
  const created = new Map<string, string>();
  for (const entity of after) {
    const old = before.find((e) => e.id === entity.id);
    if (old?.persistentId === null && entity.persistentId !== null) {
      created.set(entity.persistentId, `<created for entity ${entity.id}>`);
    }
  }
  return created;
}

function replaceAll(text: string, created: Map<string, string>): string {
  let out = text;
  for (const [id, name] of created) out = out.replaceAll(id, name);
  return out;
}

/** Removal times depend on the clock: checked against the run's window, then named. */
function normalizedUnity(
  before: readonly SimEntity[],
  after: readonly SimEntity[],
  created: Map<string, string>,
  window: { from: number; to: number },
): unknown[] {
  return after.map((entity) => {
    const old = before.find((e) => e.id === entity.id);
    const changed = entity.scheduledTime !== old?.scheduledTime;
    if (changed) {
      assert.ok(
        entity.scheduledTime !== null &&
          entity.scheduledTime >= window.from &&
          entity.scheduledTime <= window.to,
        `entity ${entity.id}: removal at ${entity.scheduledTime} is not retention_period after the run`,
      );
    }
    return {
      ...entity,
      persistentId: created.get(entity.persistentId ?? "") ??
        entity.persistentId,
      scheduledTime: changed
        ? "<now + retention_period>"
        : entity.scheduledTime,
    };
  });
}

async function normalizedAudit(
  stateDir: string,
  created: Map<string, string>,
  window: { from: number; to: number },
): Promise<string[]> {
  const text = await Deno.readTextFile(`${stateDir}/audit.log`);
  return text.split("\n").filter(Boolean).map((line) => {
    const { time: _time, run: _run, ...event } = JSON.parse(line);
    if (typeof event.when === "number") {
      assert.ok(event.when >= window.from && event.when <= window.to);
      event.when = "<now + retention_period>";
    }
    return replaceAll(JSON.stringify(event), created);
  }).sort();
}

function requestKey(request: SimRequest): string {
  const query = Object.entries(request.query)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, value]) => `${key}=${value}`)
    .join("&");
  return `${request.method} ${request.path}?${query}`;
}

function assertNoRepeats(requests: readonly SimRequest[]): void {
  const seen = new Set<string>();
  const repeated = requests.map(requestKey).filter((key) =>
    seen.has(key) || !seen.add(key)
  );
  assert.deepEqual(repeated, [], "requests sent twice");
}

/**
 * With `perMember`, persistent ids the simulator made up are left out of the
 * comparison of Unity's state: reading members one by one with GET /entity
 * gives every member without one a persistent id (Unity does that), the bulk
 * listing does not.
 */
function assertSameOutcome(
  actual: Outcome,
  expected: Outcome,
  perMember = false,
): void {
  const unity = (outcome: Outcome) =>
    perMember ? outcome.unity.map(withoutCreatedId) : outcome.unity;
  assert.deepEqual(unity(actual), unity(expected), "Unity afterwards");
  assert.equal(actual.usersJson, expected.usersJson, "users.json");
  assert.deepEqual(actual.audit, expected.audit, "audit trail");
}

function withoutCreatedId(entity: unknown): unknown {
  const { persistentId } = entity as { persistentId: string | null };
  return persistentId?.startsWith("<created")
    ? { ...entity as object, persistentId: null }
    : entity;
}

function bulkRequests(requests: readonly SimRequest[]): SimRequest[] {
  return requests.filter((r) => r.path.includes("/group-members/"));
}

Deno.test("runs at max_concurrency 1, 4 and 16 under random latency leave the same Unity, users.json and audit trail", async () => {
  const outcomes = new Map<number, Outcome>();
  for (const concurrency of [1, 4, 16]) {
    const outcome = await runOnce({ concurrency });
    assert.equal(outcome.code, 0, outcome.stderr);
    assert.ok(
      outcome.maxInFlight <= concurrency,
      `${outcome.maxInFlight} requests in flight at max_concurrency ${concurrency}`,
    );
    if (concurrency > 1) assert.ok(outcome.maxInFlight > 1, "ran concurrently");
    assertNoRepeats(outcome.requests);
    assert.equal(outcome.rawUsersJson, outcome.expectedUsersJson);
    assert.equal(bulkRequests(outcome.requests).length, 1);
    outcomes.set(concurrency, outcome);
  }
  const sequential = outcomes.get(1)!;
  assert.ok(sequential.audit.length > 0, "the run changed something");
  assertSameOutcome(outcomes.get(4)!, sequential);
  assertSameOutcome(outcomes.get(16)!, sequential);
});

Deno.test("without /group-members (Unity 2.x answers 404) members are read one by one, with the same outcome", async () => {
  const bulk = await runOnce({ concurrency: 4 });
  const old = await runOnce({ concurrency: 4, profile: "2.x" });
  assert.equal(old.code, 0, old.stderr);
  const listing = bulkRequests(old.requests);
  assert.deepEqual(listing.map((r) => r.status), [404]);
  const entityReads = old.requests.filter((r) =>
    /^\/rest-admin\/v1\/entity\/\d+$/.test(r.path)
  );
  assert.equal(entityReads.length, USERS + 1, "one GET /entity per member");
  assert.ok(old.maxInFlight <= 4);
  assertNoRepeats(old.requests);
  assertSameOutcome(old, bulk, true);
});

Deno.test("bulk_members: False never asks for /group-members and gives the same outcome", async () => {
  const bulk = await runOnce({ concurrency: 4 });
  const perMember = await runOnce({ concurrency: 4, bulk: false });
  assert.equal(perMember.code, 0, perMember.stderr);
  assert.deepEqual(bulkRequests(perMember.requests), []);
  assert.ok(perMember.maxInFlight <= 4);
  assertNoRepeats(perMember.requests);
  assertSameOutcome(perMember, bulk, true);
});

Deno.test("a bulk listing that breaks off mid-body is read again from the start, with the same outcome", async () => {
  const clean = await runOnce({ concurrency: 4 });
  const broken = await runOnce({
    concurrency: 4,
    prepare: (scenario) =>
      scenario.sim.fault({
        method: "GET",
        path: /^\/group-members\//,
        resetConnection: true,
      }),
  });
  assert.equal(broken.code, 0, broken.stderr);
  assert.equal(bulkRequests(broken.requests).length, 2);
  assertSameOutcome(broken, clean);
});

Deno.test("a bulk listing cut off inside the array stops the run before any change", async () => {
  const member = JSON.stringify({
    group: "/",
    entity: { entityInformation: { entityId: 2, state: "valid" } },
    attributes: [],
  });
  const outcome = await runOnce({
    concurrency: 4,
    prepare: (scenario) =>
      scenario.sim.fault({
        method: "GET",
        path: /^\/group-members\//,
        body: `[${member},${member.slice(0, 20)}`,
        times: Infinity,
      }),
  });
  assert.equal(outcome.code, 3, outcome.stderr);
  assert.match(outcome.stderr, /GET \/group-members\/%2F/);
  assert.match(outcome.stderr, /cut short after 1 complete element/);
  assert.match(outcome.stderr, /Nothing was changed/);
  assert.deepEqual(
    outcome.requests.filter((r) => r.method !== "GET"),
    [],
  );
});

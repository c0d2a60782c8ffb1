/**
 * The deprovisioning job end to end: main.ts runs as a process (with the
 * `start` task's permissions) against the Unity simulator and a real SMTP
 * server, and the tests assert on what Unity holds afterwards, the requests
 * it saw, the mail that arrived, the exit code and the output. Unity is
 * served over HTTPS unless a test says otherwise, as in production.
 */

import assert from "node:assert/strict";
import { seedDemo } from "./support/population.ts";
import {
  AUTHORIZATION,
  type CliResult,
  exists,
  expectedUsersJson,
  FROM_NAME,
  RECIPIENTS,
  type Scenario,
  SECRETS,
  TLS_DIR,
  withScenario,
} from "./support/scenario.ts";
import { unusedPort } from "./support/smtp.ts";
import type {
  SimAttribute,
  SimEntity,
  UnityProfile,
  UnitySim,
} from "./support/unity_sim.ts";

const DAY = 86_400_000;
const MINUTE = 60_000;
const API = "/rest-admin/v1";
const PROFILES: UnityProfile[] = ["1.x", "2.x", "3.12", "4.x"];
/** Attribute types whose instances Unity refuses to remove (UNITY_API.md). */
const IMMUTABLE =
  /^sys:(LastAuthentication|CredentialRequirements|Preferences|Credential:)/;

// ---- the population -----------------------------------------------------------

/** The people every test starts from, sorted by what the job must do. */
interface People {
  /** Disabled without a scheduled REMOVE: to be deprovisioned. */
  targets: number[];
  /** Everyone else: to be left exactly as they are. */
  others: number[];
  /** Members of /eudat (directly or through a subgroup). */
  eudat: number[];
}

function attr(
  name: string,
  group: string,
  values: unknown[],
  extra: Partial<SimAttribute> = {},
): SimAttribute {
  return { name, group, values, ...extra };
}

function emailDoc(address: string): string {
  return JSON.stringify({
    value: address,
    confirmationData: {
      confirmed: true,
      confirmationDate: 1_700_000_000_000,
      sentRequestAmount: 1,
    },
    tags: [],
  });
}

const SYSTEM = [
  attr("sys:LastAuthentication", "/", ["2024-03-01T10:00:00Z"]),
  attr("sys:CredentialRequirements", "/", ["sys:all"]),
];

/**
 * A dozen people covering the cases: both e-mail encodings (plain, JSON in a
 * string, an object), a missing persistent id, no e-mail, attributes in
 * nested groups, an attribute without values, statement-made (direct:
 * false) and immutable system attributes, and every state and schedule.
 */
function seedPeople(sim: UnitySim): People {
  const later = sim.now() + 40 * DAY;
  const add = (spec: Partial<SimEntity>) => sim.addEntity(spec);
  const targets = [
    add({
      state: "disabled",
      groups: ["/eudat/b2drop"],
      attributes: [
        attr("name", "/", ["Ann Example"]),
        attr("email", "/", ["ann@example.org"]),
        attr("cn", "/", ["Ann Example"]),
        ...SYSTEM,
        attr("sys:AuthorizationRole", "/", ["Regular User"], {
          direct: false,
          syntax: "enumeration",
        }),
        attr("name", "/eudat", ["Ann Example"], { direct: false }),
        attr("cn", "/eudat", ["Ann E."]),
        attr("quota", "/eudat/b2drop", [10_737_418_240], {
          syntax: "integer",
        }),
      ],
    }),
    add({
      state: "disabled",
      groups: ["/projects/x"],
      attributes: [
        attr("email", "/", [emailDoc("bob@example.org"), "bob@home.example"], {
          syntax: "verifiableEmail",
        }),
        attr("affiliation", "/", ["member@uni.example", "staff@uni.example"]),
        attr("o", "/", []),
        attr("sys:AuthorizationRole", "/", ["Regular User"], {
          syntax: "enumeration",
        }),
        ...SYSTEM,
        attr("projectRole", "/projects/x", ["member"], {
          syntax: "enumeration",
        }),
      ],
    }),
    add({
      state: "disabled",
      persistentId: null,
      attributes: [
        attr("name", "/", ["Jürgen Müller"]),
        attr("email", "/", [{
          value: "jürgen@müller.example",
          confirmationData: {
            confirmed: false,
            confirmationDate: 0,
            sentRequestAmount: 0,
          },
          tags: [],
        }], { syntax: "verifiableEmail" }),
        ...SYSTEM,
      ],
    }),
    add({
      state: "disabled",
      attributes: [attr("name", "/", ["Nomail Person"]), ...SYSTEM],
    }),
    add({
      state: "disabled",
      scheduledOperation: "DISABLE",
      scheduledTime: later,
      attributes: [attr("email", "/", ["dora@example.org"]), ...SYSTEM],
    }),
    add({
      state: "disabled",
      groups: ["/eudat"],
      attributes: [
        attr("email", "/", [emailDoc("eve@example.org")], {
          syntax: "verifiableEmail",
        }),
        attr("cn", "/eudat", ["Eve"]),
        ...SYSTEM,
      ],
    }),
  ];
  const person = (address: string) => [
    attr("email", "/", [address]),
    attr("name", "/", [address.split("@")[0]]),
    ...SYSTEM,
  ];
  const others = [
    add({
      state: "disabled",
      scheduledOperation: "REMOVE",
      scheduledTime: later,
      attributes: person("gone-soon@example.org"),
    }),
    add({ state: "valid", attributes: person("val@example.org") }),
    add({
      state: "authenticationDisabled",
      attributes: person("auth@example.org"),
    }),
    add({
      state: "onlyLoginPermitted",
      removalByUserTime: later,
      attributes: person("olp@example.org"),
    }),
    add({
      state: "valid",
      scheduledOperation: "DISABLE",
      scheduledTime: later,
      attributes: person("later@example.org"),
    }),
    add({
      state: "valid",
      groups: ["/eudat/b2share"],
      attributes: person("val2@example.org"),
    }),
    add({
      state: "disabled",
      groups: ["/eudat"],
      scheduledOperation: "REMOVE",
      scheduledTime: later,
      attributes: person("gone-too@example.org"),
    }),
  ];
  const eudat = sim.snapshot().filter((e) => e.groups.includes("/eudat"))
    .map((e) => e.id);
  return { targets, others: [1, ...others], eudat };
}

// ---- assertions ---------------------------------------------------------------

interface Expectation {
  targets: number[];
  whitelist?: string[];
  retentionDays?: number;
  /** Epoch ms around the run, for `when`. */
  started: number;
  finished: number;
}

/** Every target is stripped (but for what must stay) and scheduled for REMOVE. */
function assertDeprovisioned(
  sim: UnitySim,
  before: readonly SimEntity[],
  expect: Expectation,
): void {
  const whitelist = expect.whitelist ?? [];
  const retention = (expect.retentionDays ?? 365) * DAY;
  for (const id of expect.targets) {
    const was = before.find((e) => e.id === id)!;
    const now = sim.entity(id);
    assert.ok(now, `entity ${id} still exists`);
    const kept = was.attributes.filter((a) =>
      a.direct === false || IMMUTABLE.test(a.name) || whitelist.includes(a.name)
    );
    assert.deepEqual(now.attributes, kept, `attributes left on entity ${id}`);
    assert.equal(now.state, "disabled");
    assert.equal(now.scheduledOperation, "REMOVE", `entity ${id} scheduled`);
    const when = now.scheduledTime!;
    assert.ok(Number.isSafeInteger(when), `when ${when} is whole ms`);
    assert.ok(
      when >= expect.started + retention - MINUTE &&
        when <= expect.finished + retention + MINUTE,
      `entity ${id}: when ${new Date(when).toISOString()} is not now + ${
        retention / DAY
      } days`,
    );
  }
}

function assertUnchanged(
  sim: UnitySim,
  before: readonly SimEntity[],
  ids: readonly number[],
): void {
  for (const id of ids) {
    assert.deepEqual(
      sim.entity(id),
      before.find((e) => e.id === id),
      `entity ${id} is unchanged`,
    );
  }
}

/** Each target got exactly one PUT with operation=REMOVE and an integer `when`; nothing else was changed. */
function assertChangeRequests(sim: UnitySim, targets: readonly number[]) {
  const changes = sim.requests.filter((r) => r.method !== "GET");
  const touched = new Set(
    changes.map((r) => Number(r.path.split("/")[4])),
  );
  assert.deepEqual(
    [...touched].sort((a, b) => a - b),
    [...targets].sort((
      a,
      b,
    ) => a - b),
  );
  for (const id of targets) {
    const puts = changes.filter((r) =>
      r.method === "PUT" && r.path === `${API}/entity/${id}/admin-schedule`
    );
    assert.equal(puts.length, 1, `one schedule request for entity ${id}`);
    assert.equal(puts[0]!.query.operation, "REMOVE");
    assert.match(puts[0]!.query.when ?? "", /^\d+$/);
    assert.equal(Number(puts[0]!.query.when), sim.entity(id)!.scheduledTime);
  }
}

/** Exactly one mail, as configured, with `users.json` equal byte for byte to `expected`. */
function assertOneMail(s: Scenario, expected: string): void {
  const mails = s.smtp!.mails;
  assert.equal(mails.length, 1, "exactly one mail");
  const mail = mails[0]!;
  assert.equal(mail.envelope.from, "noreply@b2access.example.org");
  assert.deepEqual([...mail.envelope.to].sort(), [...RECIPIENTS].sort());
  assert.equal(mail.parsed.subject, "Deprovisioned B2ACCESS accounts");
  assert.deepEqual(mail.parsed.from?.value.map((a) => [a.name, a.address]), [
    [FROM_NAME, "noreply@b2access.example.org"],
  ]);
  assert.equal(mail.parsed.text?.trim(), SECRETS.introText);
  assert.equal(mail.parsed.attachments.length, 1);
  const [attachment] = mail.parsed.attachments;
  assert.equal(attachment!.filename, "users.json");
  assert.equal(attachment!.contentType, "application/json");
  assert.equal(attachment!.content.toString("utf8"), expected);
  assert.deepEqual(
    new Uint8Array(attachment!.content),
    new TextEncoder().encode(expected),
  );
}

function usersJsonOf(s: Scenario, index: number): string {
  const attachment = s.smtp!.mails[index]?.parsed.attachments[0];
  assert.ok(attachment, `mail ${index} has an attachment`);
  return attachment.content.toString("utf8");
}

function onlyGets(sim: UnitySim): void {
  const changes = sim.requests.filter((r) => r.method !== "GET");
  assert.deepEqual(changes.map((r) => `${r.method} ${r.path}`), []);
}

function ok(result: CliResult): void {
  assert.equal(
    result.code,
    0,
    `exit ${result.code}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`,
  );
}

async function timedRun(
  s: Scenario,
  ...args: string[]
): Promise<CliResult & { started: number; finished: number }> {
  const started = Date.now();
  const result = await s.run(...args);
  return { ...result, started, finished: Date.now() };
}

// ---- the job on each Unity version -------------------------------------------

for (const profile of PROFILES) {
  Deno.test(`on Unity ${profile} a run deprovisions exactly the disabled members without a scheduled removal`, async () => {
    // Old Unity over plain HTTP/1.1, newer over HTTPS (HTTP/2): both paths.
    const tls = profile === "1.x" || profile === "2.x" ? "none" : "ca";
    await withScenario({ profile, tls }, async (s) => {
      const people = seedPeople(s.sim);
      const demo = seedDemo(s.sim, { users: 40, seed: 11 });
      const targets = [...people.targets, ...demo.disabledUnscheduled];
      const others = s.sim.snapshot().map((e) => e.id).filter((id) =>
        !targets.includes(id)
      );
      const before = s.sim.snapshot();

      const result = await timedRun(s);

      ok(result);
      // Silent on success at the default level: cron mails any output.
      assert.equal(result.stdout, "");
      assert.equal(result.stderr, "");
      assertDeprovisioned(s.sim, before, { targets, ...result });
      assertUnchanged(s.sim, before, others);
      assertChangeRequests(s.sim, targets);
      assert.deepEqual(s.sim.removedEntities, []);
      assertOneMail(
        s,
        expectedUsersJson(before, (id) => s.sim.entity(id), targets),
      );
    });
  });
}

Deno.test("users.json escapes non-ASCII addresses as the Python tool did", async () => {
  await withScenario({ profile: "3.12" }, async (s) => {
    seedPeople(s.sim);
    ok(await s.run());
    const json = usersJsonOf(s, 0);
    assert.match(json, /"j\\u00fcrgen@m\\u00fcller\.example"/);
    assert.match(json, /^\[\n {4}\{\n {8}"email": \[\n {12}"ann@example\.org"/);
    assert.ok([...json].every((c) => c.charCodeAt(0) < 0x7f), json);
  });
});

// ---- what the config selects -------------------------------------------------

Deno.test("attr_whitelist keeps the listed attributes on deprovisioned accounts", async () => {
  await withScenario({
    profile: "2.x",
    config: { attr_whitelist: ["email", "cn"] },
  }, async (s) => {
    const { targets, others } = seedPeople(s.sim);
    const before = s.sim.snapshot();

    const result = await timedRun(s);

    ok(result);
    assertDeprovisioned(s.sim, before, {
      targets,
      whitelist: ["email", "cn"],
      ...result,
    });
    assertUnchanged(s.sim, before, others);
    const ann = s.sim.entity(targets[0]!)!;
    assert.deepEqual(
      ann.attributes.filter((a) => a.direct !== false).map((a) =>
        `${a.name}@${a.group}`
      ),
      [
        "email@/",
        "cn@/",
        "sys:LastAuthentication@/",
        "sys:CredentialRequirements@/",
        "cn@/eudat",
      ],
    );
    assertOneMail(
      s,
      expectedUsersJson(before, (id) => s.sim.entity(id), targets),
    );
  });
});

for (
  const [group, profile] of [["/eudat", "4.x"], ["eudat", "1.x"]] as const
) {
  Deno.test(`user_group "${group}" limits the selection to that group's members (Unity ${profile})`, async () => {
    await withScenario(
      { profile, config: { user_group: group } },
      async (s) => {
        const people = seedPeople(s.sim);
        const targets = people.targets.filter((id) =>
          people.eudat.includes(id)
        );
        assert.equal(targets.length, 2, "the population has two such members");
        const untouched = s.sim.snapshot().map((e) => e.id).filter((id) =>
          !targets.includes(id)
        );
        const before = s.sim.snapshot();

        const result = await timedRun(s);

        ok(result);
        assertDeprovisioned(s.sim, before, { targets, ...result });
        assertUnchanged(s.sim, before, untouched);
        assertChangeRequests(s.sim, targets);
        assertOneMail(
          s,
          expectedUsersJson(before, (id) => s.sim.entity(id), targets),
        );
        const listing = s.sim.requests.find((r) => r.path.endsWith("%2Feudat"));
        assert.ok(listing, "the group was listed as %2Feudat");
      },
    );
  });
}

Deno.test("retention_period 30 schedules removal 30 days from now", async () => {
  await withScenario({ config: { retention_period: 30 } }, async (s) => {
    const { targets } = seedPeople(s.sim);
    const before = s.sim.snapshot();
    const result = await timedRun(s);
    ok(result);
    assertDeprovisioned(s.sim, before, {
      targets,
      retentionDays: 30,
      ...result,
    });
  });
});

// ---- how members are listed ----------------------------------------------------

function listingRequests(sim: UnitySim) {
  const gets = sim.requests.filter((r) => r.method === "GET");
  return {
    bulk: gets.filter((r) => r.path === `${API}/group-members/%2F`),
    group: gets.filter((r) => r.path === `${API}/group/%2F`),
    entities: new Set(
      gets.map((r) => /^\/rest-admin\/v1\/entity\/(\d+)$/.exec(r.path)?.[1])
        .filter((id) => id !== undefined).map(Number),
    ),
  };
}

for (const profile of PROFILES) {
  const bulk = profile === "3.12" || profile === "4.x";
  Deno.test(
    `on Unity ${profile} members are listed ${
      bulk ? "with one GET /group-members" : "one by one"
    }`,
    async () => {
      await withScenario({ profile }, async (s) => {
        const { targets, others } = seedPeople(s.sim);
        ok(await s.run());
        const seen = listingRequests(s.sim);
        if (bulk) {
          assert.equal(seen.bulk.length, 1);
          assert.equal(seen.bulk[0]!.status, 200);
          assert.equal(seen.group.length, 0);
          // Only the target without a persistent id is read on its own.
          assert.deepEqual([...seen.entities], [targets[2]]);
        } else {
          // Tried once, 404 (Unity before 2.6.1), then the per-member path.
          assert.equal(seen.bulk.length, 1);
          assert.equal(seen.bulk[0]!.status, 404);
          assert.equal(seen.group.length, 1);
          for (const id of [...targets, ...others]) {
            assert.ok(seen.entities.has(id), `GET /entity/${id}`);
          }
        }
      });
    },
  );
}

Deno.test("api.bulk_members False reads members one by one even where Unity has /group-members", async () => {
  await withScenario(
    { profile: "4.x", config: { api: { bulk_members: false } } },
    async (s) => {
      const { targets, others } = seedPeople(s.sim);
      const before = s.sim.snapshot();
      const result = await timedRun(s);
      ok(result);
      const seen = listingRequests(s.sim);
      assert.equal(seen.bulk.length, 0);
      assert.equal(seen.group.length, 1);
      for (const id of [...targets, ...others]) {
        assert.ok(seen.entities.has(id), `GET /entity/${id}`);
      }
      assertDeprovisioned(s.sim, before, { targets, ...result });
    },
  );
});

// ---- dry run -----------------------------------------------------------------

async function assertDryRun(s: Scenario, result: CliResult, people: People) {
  ok(result);
  onlyGets(s.sim);
  assert.equal(s.smtp!.mails.length, 0);
  assert.equal(s.smtp!.sessions.length, 0, "no SMTP connection at all");
  assert.equal(await exists(`${s.stateDir}/journal.json`), false);
  assert.match(result.stdout, /^Dry run: nothing was changed\./);
  assert.match(result.stdout, /ENTITY\s+PERSISTENT ID\s+E-MAIL/);
  const rows = result.stdout.split("\n");
  const emails = ["ann@example.org", "bob@example.org, bob@home.example"];
  for (const [i, id] of people.targets.entries()) {
    const row = rows.find((line) => line.startsWith(`${id} `));
    assert.ok(row, `a row for entity ${id}:\n${result.stdout}`);
    if (emails[i]) assert.ok(row.includes(emails[i]), row);
    assert.ok(row.includes(s.sim.entity(id)!.persistentId!), row);
  }
  for (const id of people.others) {
    assert.ok(!rows.some((line) => line.startsWith(`${id} `)), `no row ${id}`);
  }
}

Deno.test("--dry-run only reads Unity, sends nothing, writes no journal and prints the plan", async () => {
  await withScenario({}, async (s) => {
    const people = seedPeople(s.sim);
    const before = s.sim.snapshot();
    const result = await s.run("--dry-run");
    await assertDryRun(s, result, people);
    // Reading an entity without a persistent id makes Unity create one.
    const created = people.targets[2]!;
    assertUnchanged(
      s.sim,
      before,
      before.map((e) => e.id).filter((id) => id !== created),
    );
  });
});

Deno.test("dry_run: True in the config only reads Unity and sends nothing", async () => {
  await withScenario(
    { profile: "2.x", appendYaml: "dry_run: True" },
    async (s) => {
      const people = seedPeople(s.sim);
      const result = await s.run();
      await assertDryRun(s, result, people);
    },
  );
});

// ---- quiet nights and repeated runs -----------------------------------------

Deno.test("with no account qualifying nothing is mailed and nothing is printed", async () => {
  await withScenario({}, async (s) => {
    const people = seedPeople(s.sim);
    for (const id of people.targets) s.sim.entity(id)!.state = "valid";
    const before = s.sim.snapshot();

    const result = await s.run();

    ok(result);
    assert.equal(result.stdout, "");
    assert.equal(result.stderr, "");
    onlyGets(s.sim);
    assert.equal(s.smtp!.sessions.length, 0);
    assertUnchanged(s.sim, before, before.map((e) => e.id));
  });
});

Deno.test("a second run after a successful one changes nothing and sends no mail", async () => {
  await withScenario({ profile: "2.x" }, async (s) => {
    seedPeople(s.sim);
    ok(await s.run());
    assert.equal(s.smtp!.mails.length, 1);
    const after = s.sim.snapshot();
    s.sim.resetRequestLog();

    const again = await s.run();

    ok(again);
    assert.equal(again.stdout, "");
    assert.equal(again.stderr, "");
    onlyGets(s.sim);
    assert.deepEqual(s.sim.snapshot(), after);
    assert.equal(s.smtp!.mails.length, 1);
  });
});

// ---- failures of the notification ---------------------------------------------

Deno.test("a recipient refused with 550 does not stop the mail to the others; exit 6 names the address", async () => {
  const refused = RECIPIENTS[1];
  await withScenario(
    { smtp: { rejectRecipients: [refused] } },
    async (s) => {
      const { targets } = seedPeople(s.sim);
      const before = s.sim.snapshot();

      const result = await s.run();

      assert.equal(result.code, 6, result.stderr);
      assert.match(result.stderr, /refused/);
      assert.ok(result.stderr.includes(refused), result.stderr);
      assert.match(result.stderr, /550/);
      const [mail] = s.smtp!.mails;
      assert.deepEqual(mail?.envelope.to, [RECIPIENTS[0], RECIPIENTS[2]]);
      assert.equal(
        usersJsonOf(s, 0),
        expectedUsersJson(before, (id) => s.sim.entity(id), targets),
      );
    },
  );
});

Deno.test("with SMTP unreachable the run exits 7 and the next run mails those accounts once", async () => {
  await withScenario({ smtp: false }, async (s) => {
    const { targets } = seedPeople(s.sim);
    const before = s.sim.snapshot();

    const down = await timedRun(s);

    assert.equal(down.code, 7, down.stderr);
    assert.match(
      down.stderr,
      /Cannot send the notification via 127\.0\.0\.1:\d+/,
    );
    assert.match(down.stderr, /notifications\.email\.host\/port/);
    assertDeprovisioned(s.sim, before, { targets, ...down });
    assert.equal(await exists(`${s.stateDir}/journal.json`), true);

    const sink = await s.replaceSmtp();
    const up = await s.run();

    ok(up);
    assert.equal(sink.mails.length, 1);
    assertOneMail(
      s,
      expectedUsersJson(before, (id) => s.sim.entity(id), targets),
    );
    ok(await s.run());
    assert.equal(sink.mails.length, 1, "no second mail");
  });
});

// ---- failures in Unity ----------------------------------------------------------

Deno.test("a 403 on scheduling one account leaves the others done and mailed; the next run finishes and mails it", async () => {
  await withScenario({}, async (s) => {
    const { targets } = seedPeople(s.sim);
    const failing = targets[1]!;
    const rest = targets.filter((id) => id !== failing);
    s.sim.fault({
      method: "PUT",
      path: new RegExp(`^/entity/${failing}/admin-schedule$`),
      status: 403,
    });
    const before = s.sim.snapshot();

    const first = await timedRun(s);

    assert.equal(first.code, 6, first.stderr);
    assert.match(first.stderr, new RegExp(`entityId=${failing}`));
    assertDeprovisioned(s.sim, before, { targets: rest, ...first });
    assert.equal(s.sim.entity(failing)!.scheduledOperation, null);
    assert.equal(s.smtp!.mails.length, 1);
    assert.equal(
      usersJsonOf(s, 0),
      expectedUsersJson(before, (id) => s.sim.entity(id), rest),
    );

    const second = await timedRun(s);

    ok(second);
    assertDeprovisioned(s.sim, before, { targets: [failing], ...second });
    assert.equal(s.smtp!.mails.length, 2);
    assert.equal(
      usersJsonOf(s, 1),
      expectedUsersJson(before, (id) => s.sim.entity(id), [failing]),
    );
    assert.deepEqual(s.sim.removedEntities, []);
  });
});

Deno.test("with Unity unreachable the run exits 3 and says what to check", async () => {
  const port = await unusedPort();
  await withScenario({
    config: { api: { base_url: `https://127.0.0.1:${port}`, retries: 1 } },
  }, async (s) => {
    const result = await s.run();
    assert.equal(result.code, 3, result.stderr);
    assert.ok(result.stderr.includes(`127.0.0.1:${port}`), result.stderr);
    assert.match(result.stderr, /check api\.base_url/);
    assert.match(result.stderr, /Nothing was changed/);
    assert.equal(s.smtp!.sessions.length, 0);
    assert.equal(s.sim.requests.length, 0);
  });
});

Deno.test("a wrong Unity password exits 3 after exactly one request", async () => {
  await withScenario(
    { config: { api: { password: "not-the-password" } } },
    async (s) => {
      seedPeople(s.sim);
      const result = await s.run();
      assert.equal(result.code, 3, result.stderr);
      assert.equal(s.sim.requests.length, 1);
      assert.equal(s.sim.requests[0]!.status, 403);
      assert.match(result.stderr, /403/);
      assert.match(
        result.stderr,
        /check api\.user, the password \(api\.password, api\.password_file or B2ACCESS_API_PASSWORD\)/,
      );
      assert.equal(s.smtp!.sessions.length, 0);
    },
  );
});

Deno.test("a group that does not exist exits 3 without changing anything", async () => {
  for (const profile of ["2.x", "4.x"] as const) {
    await withScenario(
      { profile, config: { user_group: "/no/such/group" } },
      async (s) => {
        const people = seedPeople(s.sim);
        const before = s.sim.snapshot();
        const result = await s.run();
        assert.equal(result.code, 3, `${profile}: ${result.stderr}`);
        assert.match(
          result.stderr,
          /group \[\/no\/such\/group\] does not exist/,
        );
        onlyGets(s.sim);
        assertUnchanged(s.sim, before, [...people.targets, ...people.others]);
        assert.equal(s.smtp!.sessions.length, 0);
      },
    );
  }
});

// ---- HTTP/1.1 -------------------------------------------------------------------

/**
 * A TLS front for the simulator that speaks only HTTP/1.1 (ALPN), as a
 * Jetty or Apache in front of Unity may: Deno.serve itself offers HTTP/2.
 */
function http1TlsProxy(targetPort: number) {
  const listener = Deno.listenTls({
    hostname: "127.0.0.1",
    port: 0,
    cert: Deno.readTextFileSync(`${TLS_DIR}server.pem`),
    key: Deno.readTextFileSync(`${TLS_DIR}server.key`),
    alpnProtocols: ["http/1.1"],
  });
  const conns: Deno.Conn[] = [];
  const pumps: Promise<unknown>[] = [];
  const accepting = (async () => {
    for await (const conn of listener) {
      const upstream = await Deno.connect({
        hostname: "127.0.0.1",
        port: targetPort,
      });
      conns.push(conn, upstream);
      pumps.push(
        conn.readable.pipeTo(upstream.writable).catch(() => {}),
        upstream.readable.pipeTo(conn.writable).catch(() => {}),
      );
    }
  })().catch(() => {});
  return {
    url: `https://127.0.0.1:${listener.addr.port}`,
    async close() {
      listener.close();
      for (const conn of conns) {
        try {
          conn.close();
        } catch {
          // Already closed by the other side.
        }
      }
      await accepting;
      await Promise.allSettled(pumps);
    },
  };
}

// undici loads its HTTP/1 parser on the first HTTP/1.1 connection and reads
// JEST_WORKER_ID then: the start task's --allow-env must grant it, or no
// request reaches such a Unity (HTTP/2 over HTTPS does not need it).
Deno.test(
  "a run reaches a Unity that speaks HTTP/1.1, over plain HTTP or HTTPS",
  async () => {
    await withScenario(
      { tls: "none", config: { api: { retries: 0 } } },
      async (s) => {
        const { targets } = seedPeople(s.sim);
        const before = s.sim.snapshot();
        const plain = await timedRun(s);
        ok(plain);
        assertDeprovisioned(s.sim, before, { targets, ...plain });
        assert.equal(s.smtp!.mails.length, 1);
      },
    );
    await withScenario(
      { tls: "none", config: { api: { retries: 0 } } },
      async (s) => {
        const proxy = http1TlsProxy(Number(new URL(s.sim.url).port));
        try {
          await s.writeConfig({
            api: { base_url: proxy.url, cert_verify: `${TLS_DIR}ca.pem` },
          });
          const { targets } = seedPeople(s.sim);
          const before = s.sim.snapshot();
          const overTls = await timedRun(s);
          ok(overTls);
          assertDeprovisioned(s.sim, before, { targets, ...overTls });
          assert.equal(s.smtp!.mails.length, 1);
        } finally {
          await proxy.close();
        }
      },
    );
  },
);

// ---- HTTPS ---------------------------------------------------------------------

Deno.test("over HTTPS, cert_verify naming the CA bundle works", async () => {
  await withScenario({ tls: "ca" }, async (s) => {
    assert.match(s.sim.url, /^https:/);
    const { targets } = seedPeople(s.sim);
    const before = s.sim.snapshot();
    const result = await timedRun(s);
    ok(result);
    assertDeprovisioned(s.sim, before, { targets, ...result });
    assert.equal(s.smtp!.mails.length, 1);
  });
});

Deno.test("over HTTPS, a self-signed certificate works when cert_verify names that certificate", async () => {
  await withScenario({ tls: "selfsigned" }, async (s) => {
    const api = s.config.api as { cert_verify?: unknown };
    assert.equal(api.cert_verify, `${TLS_DIR}selfsigned.pem`);
    const { targets } = seedPeople(s.sim);
    const before = s.sim.snapshot();
    const result = await timedRun(s);
    ok(result);
    assertDeprovisioned(s.sim, before, { targets, ...result });
    assert.equal(s.smtp!.mails.length, 1);
  });
});

function systemBundle(): string {
  for (
    const path of [
      "/etc/ssl/certs/ca-certificates.crt",
      "/etc/pki/tls/certs/ca-bundle.crt",
      "/etc/ssl/cert.pem",
    ]
  ) {
    try {
      Deno.statSync(path);
      return path;
    } catch {
      // Not on this host.
    }
  }
  return "built-in roots";
}

Deno.test("over HTTPS, cert_verify True does not trust the test CA: exit 3 naming the trust source", async () => {
  await withScenario(
    { tls: "ca", config: { api: { cert_verify: true } } },
    async (s) => {
      seedPeople(s.sim);
      const result = await s.run();
      assert.equal(result.code, 3, result.stderr);
      assert.match(result.stderr, /TLS with 127\.0\.0\.1:\d+ failed/);
      assert.ok(
        result.stderr.includes(`trusted: ${systemBundle()}`),
        result.stderr,
      );
      assert.match(result.stderr, /api\.cert_verify/);

      const other = `${TLS_DIR}other-ca.pem`;
      const viaEnv = await s.runCli(["--config", s.configPath], {
        env: { SSL_CERT_FILE: other },
      });
      assert.equal(viaEnv.code, 3, viaEnv.stderr);
      assert.ok(viaEnv.stderr.includes(`trusted: ${other}`), viaEnv.stderr);
      onlyGets(s.sim);
      assert.equal(s.smtp!.sessions.length, 0);
    },
  );
});

Deno.test("over HTTPS, cert_verify False works and warns on stderr", async () => {
  await withScenario({
    tls: "selfsigned",
    config: { api: { cert_verify: false } },
  }, async (s) => {
    const { targets } = seedPeople(s.sim);
    const before = s.sim.snapshot();
    const result = await timedRun(s);
    ok(result);
    assert.match(
      result.stderr,
      /^WARNING api\.cert_verify is false: Unity's certificate is NOT verified/m,
    );
    assertDeprovisioned(s.sim, before, { targets, ...result });
    assert.equal(s.smtp!.mails.length, 1);
  });
});

// ---- secrets ---------------------------------------------------------------------

const NEVER_SHOWN = [
  ["the Unity password", SECRETS.unityPassword],
  ["the SMTP password", SECRETS.smtpPassword],
  ["the Authorization header", AUTHORIZATION],
  ["the mail body", SECRETS.introText],
] as const;

function assertNoSecrets(where: string, text: string): void {
  for (const [what, secret] of NEVER_SHOWN) {
    assert.ok(!text.includes(secret), `${what} appears in ${where}`);
  }
}

Deno.test("no password, Authorization header or mail body appears in any output, audit log or report", async () => {
  await withScenario(
    { smtp: { rejectRecipients: [RECIPIENTS[2]] } },
    async (s) => {
      const { targets } = seedPeople(s.sim);
      s.sim.fault({
        method: "PUT",
        path: new RegExp(`^/entity/${targets[0]}/admin-schedule$`),
        status: 403,
      });
      s.sim.fault({
        method: "GET",
        path: /^\/entity\/\d+\/groups$/,
        status: 503,
      });
      const report = `${s.dir}/report.json`;
      const outputs: [string, CliResult][] = [];

      outputs.push([
        "a DEBUG run",
        await s.run("--log-level", "DEBUG", "--report", report),
      ]);
      assert.equal(outputs[0]![1].code, 6, outputs[0]![1].stderr);
      assert.match(outputs[0]![1].stderr, /^DEBUG /m);
      const firstReport = await Deno.readTextFile(report);
      outputs.push([
        "a DEBUG run in JSON",
        await s.run(
          "--log-level",
          "DEBUG",
          "--log-format",
          "json",
          "--report",
          report,
        ),
      ]);
      assert.match(outputs[1]![1].stderr, /"level":"DEBUG"/);
      outputs.push([
        "check at DEBUG",
        await s.run("check", "--log-level", "DEBUG"),
      ]);
      await s.writeConfig({ api: { password: "wrong-password" } });
      outputs.push([
        "a refused login at DEBUG",
        await s.run("--log-level", "DEBUG", "--log-format", "json"),
      ]);
      assert.equal(outputs[3]![1].code, 3);

      for (const [what, result] of outputs) {
        assertNoSecrets(`stderr of ${what}`, result.stderr);
        assertNoSecrets(`stdout of ${what}`, result.stdout);
        if (what === "check at DEBUG") {
          // check prints the configuration with its passwords masked.
          assert.match(result.stdout, /password: "\*{8}"/);
        }
      }
      assertNoSecrets("the first --report file", firstReport);
      assertNoSecrets(
        "the second --report file",
        await Deno.readTextFile(report),
      );
      const audit = await Deno.readTextFile(`${s.stateDir}/audit.log`);
      assert.match(audit, /"event":"removal-scheduled"/);
      assertNoSecrets("the audit log", audit);
      assertNoSecrets(
        "the journal",
        await Deno.readTextFile(`${s.stateDir}/journal.json`),
      );
    },
  );
});

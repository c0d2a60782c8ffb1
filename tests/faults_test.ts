/**
 * Fault-injection tests of the whole command line (issue 3): the CLI runs as
 * a subprocess against the Unity simulator and a real SMTP server on
 * 127.0.0.1, with faults injected into both, and is killed with SIGKILL
 * between steps. Each test writes a config and a state directory into its
 * own temporary directory and removes it afterwards. After every scenario
 * the invariants of tests/support/invariants.ts must hold.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import meta from "../deno.json" with { type: "json" };
import {
  assertInvariants,
  type Baseline,
  baselineOf,
  extendBaseline,
  journalAccounts,
} from "./support/invariants.ts";
import { type SmtpOptions, SmtpSink, unusedPort } from "./support/smtp.ts";
import type { SimAttribute, SimRequest } from "./support/unity_sim.ts";
import { UnitySim } from "./support/unity_sim.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const MAIN = join(ROOT, "main.ts");
/** The permission flags of the `start` task: the product's real permissions. */
const START_FLAGS = meta.tasks.start.split(/\s+/).filter((word) =>
  word.startsWith("--")
);
const TLS_DIR = join(ROOT, "tests", "fixtures", "tls");
const TLS = {
  cert: await Deno.readTextFile(join(TLS_DIR, "server.pem")),
  key: await Deno.readTextFile(join(TLS_DIR, "server.key")),
};
const API_PASSWORD = "the!admin pass"; // the simulator's default
const SMTP_USER = "deprovision";
const SMTP_PASSWORD = "smtp-Secret-42";
const WHITELIST = ["affiliation"];
/** Requests that change an account: DELETE of an attribute, PUT of a schedule. */
const MUTATING = /^\/entity\/\d+\/(attribute\/[^/]+|admin-schedule)$/;
/** Deno's startup and module loading, on top of what a run itself may take. */
const STARTUP_SLACK_MS = 4_000;
/** No subprocess may live longer than this, whatever it does. */
const HARD_LIMIT_MS = 40_000;
/** The largest backoff before retry n is 250 * 2^n ms (src/http.ts). */
const BACKOFF_MAX_MS = (retries: number) =>
  Array.from({ length: retries }, (_, i) => 250 * 2 ** (i + 1))
    .reduce((a, b) => a + b, 0);

// ---- the world: simulator, SMTP servers, config, state -----------------------

interface ConfigOptions {
  smtpPort?: number;
  apiTimeout?: number;
  retries?: number;
  runTimeout?: number;
  smtpTimeout?: number;
  maxAccounts?: number;
  bulk?: boolean;
  maxUnreadableShare?: number;
  concurrency?: number;
  password?: string;
}

interface CliResult {
  code: number;
  signal: string | null;
  stdout: string;
  stderr: string;
  ms: number;
}

interface RunningCli {
  readonly result: Promise<CliResult>;
  exited: boolean;
  kill(): void;
}

/** One scenario's simulator, SMTP servers and temporary directory. */
class World {
  readonly sinks: SmtpSink[] = [];
  smtp!: SmtpSink;
  baseline!: Baseline;
  config = "";

  private constructor(readonly sim: UnitySim, readonly dir: string) {}

  get stateDir(): string {
    return join(this.dir, "state");
  }

  /** Starts a simulator seeded by `seed`, a working SMTP server and a config. */
  static async start(
    seed: (sim: UnitySim) => void,
    config: ConfigOptions = {},
    plainHttp = false,
  ): Promise<World> {
    // HTTPS, as B2ACCESS serves it (plain HTTP has its own test below).
    const sim = await UnitySim.start({
      profile: "4.x",
      ...(plainHttp ? {} : { tls: TLS }),
    });
    const dir = await Deno.makeTempDir({ prefix: "b2access-faults-" });
    const world = new World(sim, dir);
    seed(sim);
    world.baseline = baselineOf(sim);
    await world.useSmtp();
    world.config = await world.writeConfig(config);
    return world;
  }

  /** Starts another SMTP server; the next config written points at it. */
  async useSmtp(options: SmtpOptions = {}): Promise<SmtpSink> {
    const sink = await SmtpSink.start({
      mode: "plain",
      auth: { user: SMTP_USER, pass: SMTP_PASSWORD },
      requireTlsForAuth: false,
      ...options,
    });
    this.sinks.push(sink);
    this.smtp = sink;
    return sink;
  }

  /** Every mail any SMTP server of this world accepted. */
  get mails() {
    return this.sinks.flatMap((sink) => sink.mails);
  }

  /** Writes a config (chmod 600) sharing this world's state directory. */
  async writeConfig(
    options: ConfigOptions = {},
    name = "config.yml",
  ): Promise<string> {
    const o = options;
    const file = join(this.dir, name);
    const text = `api:
  base_url: "${this.sim.url}"
  user: "admin"
  password: "${o.password ?? API_PASSWORD}"
  cert_verify: "${join(TLS_DIR, "ca.pem")}"
  timeout: ${o.apiTimeout ?? 1}
  retries: ${o.retries ?? 2}
  max_concurrency: ${o.concurrency ?? 1}
  bulk_members: ${o.bulk === false ? "False" : "True"}
attr_whitelist: [${WHITELIST.map((a) => `"${a}"`).join(", ")}]
retention_period: 365
notifications:
  email:
    host: "127.0.0.1"
    port: ${o.smtpPort ?? this.smtp.port}
    use_tls: False
    user: "${SMTP_USER}"
    password: "${SMTP_PASSWORD}"
    allow_insecure_auth: True
    timeout: ${o.smtpTimeout ?? 1}
    from: "B2ACCESS Notifications <noreply@b2access.example.org>"
    to:
      - "SP1 Operator <ops@sp1.example.org>"
      - "SP2 Operator <ops@sp2.example.org>"
log_level: "INFO"
state_dir: "${this.stateDir}"
max_accounts_per_run: ${o.maxAccounts ?? 100}
max_unreadable_share: ${o.maxUnreadableShare ?? 0.05}
run_timeout: ${o.runTimeout ?? 20}
`;
    await Deno.writeTextFile(file, text, { mode: 0o600 });
    await Deno.chmod(file, 0o600);
    return file;
  }

  /** Starts the CLI with the current config. */
  start(args: string[] = [], config = this.config): RunningCli {
    return spawnCli(config, args);
  }

  /** Runs the CLI to its end and checks what every run must respect. */
  async run(args: string[] = [], config = this.config): Promise<CliResult> {
    const result = await this.start(args, config).result;
    assertCleanOutput(result);
    return result;
  }

  /** Asserts the scenario's end state. */
  async assertInvariants(
    extra: { untouched?: number[]; pending?: number[] } = {},
  ): Promise<void> {
    await assertInvariants({
      sim: this.sim,
      mails: this.mails,
      stateDir: this.stateDir,
      baseline: this.baseline,
      whitelist: WHITELIST,
      retentionDays: 365,
      ...extra,
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.sinks.map((sink) => sink.close()));
    await this.sim.close();
    await Deno.remove(this.dir, { recursive: true });
  }
}

/** Runs `body` in a fresh world and always tears the world down. */
async function inWorld(
  seed: (sim: UnitySim) => void,
  body: (world: World) => Promise<void>,
  config: ConfigOptions = {},
): Promise<void> {
  const world = await World.start(seed, config);
  try {
    await body(world);
  } finally {
    await world.close();
  }
}

function childEnv(): Record<string, string> {
  const env = Deno.env.toObject();
  for (const key of Object.keys(env)) {
    if (key.startsWith("B2ACCESS_")) delete env[key];
  }
  return { ...env, NO_COLOR: "1" };
}

function spawnCli(config: string, args: string[]): RunningCli {
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...START_FLAGS, MAIN, "--config", config, ...args],
    cwd: ROOT,
    clearEnv: true,
    env: childEnv(),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let timedOut = false;
  const kill = () => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already exited.
    }
  };
  const guard = setTimeout(() => {
    timedOut = true;
    kill();
  }, HARD_LIMIT_MS);
  const running: RunningCli = {
    exited: false,
    kill,
    result: child.output().then((out) => {
      clearTimeout(guard);
      running.exited = true;
      const decoder = new TextDecoder();
      const result = {
        code: out.code,
        signal: out.signal,
        stdout: decoder.decode(out.stdout),
        stderr: decoder.decode(out.stderr),
        ms: performance.now() - started,
      };
      if (timedOut) {
        throw new Error(
          `The CLI hung: killed after ${HARD_LIMIT_MS} ms\n${result.stderr}`,
        );
      }
      return result;
    }),
  };
  return running;
}

/** What every finished run must respect: no secret, no crash trace. */
function assertCleanOutput(result: CliResult): void {
  const output = result.stdout + result.stderr;
  for (const secret of [API_PASSWORD, SMTP_PASSWORD]) {
    assert.ok(!output.includes(secret), `a password leaked:\n${output}`);
  }
  if (result.code !== 1) {
    assert.doesNotMatch(
      result.stderr,
      /^\s+at .+:\d+:\d+\)?$/m,
      "no stack trace outside internal errors",
    );
  }
}

function assertExit(result: CliResult, code: number): void {
  assert.equal(
    result.code,
    code,
    `expected exit ${code}, got ${result.code}\n--- stdout\n${result.stdout}\n--- stderr\n${result.stderr}`,
  );
}

/** Polls `condition` every `pollMs`; throws after `timeoutMs`. */
async function until(
  condition: () => boolean,
  what: string,
  timeoutMs = 10_000,
  pollMs = 10,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Timed out waiting: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, pollMs));
  }
}

function mutations(requests: readonly SimRequest[]): SimRequest[] {
  return requests.filter((r) =>
    r.method !== "GET" && MUTATING.test(relativePath(r.path))
  );
}

function relativePath(path: string): string {
  return decodeURIComponent(path.replace(/^\/rest-admin\/v1/, ""));
}

function entityPath(id: number, tail = ""): RegExp {
  return new RegExp(`^/entity/${id}${tail}$`);
}

// ---- populations -------------------------------------------------------------

interface Small {
  /** Disabled, to be deprovisioned. */
  ann: number;
  bob: number;
  cleo: number;
  /** Left alone: valid, already scheduled, authenticationDisabled. */
  dora: number;
  eve: number;
  finn: number;
}

/**
 * Three disabled accounts with 2-4 removable attributes across two groups
 * (one with an immutable system attribute, one with a whitelisted and a
 * statement attribute), and three accounts the job must leave alone.
 */
function seedSmall(sim: UnitySim): Small {
  const now = sim.now();
  const ann = sim.addEntity({
    state: "disabled",
    groups: ["/eudat"],
    attributes: [
      {
        name: "email",
        group: "/",
        values: ["ann.quokka@example.org"],
        syntax: "verifiableEmail",
      },
      { name: "name", group: "/", values: ["Ann Quokka"] },
      { name: "cn", group: "/eudat", values: ["Ann Q. Quokka-Cn"] },
    ],
  });
  const bob = sim.addEntity({
    state: "disabled",
    groups: ["/eudat"],
    attributes: [
      {
        name: "email",
        group: "/",
        values: ["bob.wombat@example.org", "bob.w@home.example"],
      },
      { name: "affiliation", group: "/", values: ["member@wombat.example"] },
      { name: "quota", group: "/eudat", values: ["bob-quota-77"] },
      {
        name: "name",
        group: "/eudat",
        values: ["Bob Wombat by statement"],
        direct: false,
      },
    ],
  });
  const cleo = sim.addEntity({
    state: "disabled",
    groups: ["/projects"],
    attributes: [
      {
        name: "email",
        group: "/",
        values: [{
          value: "cleo.numbat@example.org",
          confirmationData: { confirmed: true },
          tags: [],
        }],
        syntax: "verifiableEmail",
      },
      { name: "name", group: "/", values: ["Cléo Numbat"] },
      { name: "sys:CredentialRequirements", group: "/", values: ["sys:all"] },
      { name: "projectRole", group: "/projects", values: ["numbat-lead"] },
    ],
  });
  const dora = sim.addEntity({
    state: "valid",
    attributes: [
      { name: "email", group: "/", values: ["dora.valid@example.org"] },
      { name: "name", group: "/", values: ["Dora Valid"] },
    ],
  });
  const eve = sim.addEntity({
    state: "disabled",
    scheduledOperation: "REMOVE",
    scheduledTime: now + 30 * 86_400_000,
    attributes: [
      { name: "email", group: "/", values: ["eve.scheduled@example.org"] },
    ],
  });
  const finn = sim.addEntity({
    state: "authenticationDisabled",
    attributes: [
      { name: "email", group: "/", values: ["finn.authoff@example.org"] },
    ],
  });
  return { ann, bob, cleo, dora, eve, finn };
}

/** `count` disabled accounts with an address and a name each. */
function seedDisabled(sim: UnitySim, count: number, tag: string): number[] {
  return Array.from({ length: count }, (_, i) =>
    sim.addEntity({
      state: "disabled",
      groups: ["/eudat"],
      attributes: [
        { name: "email", group: "/", values: [`${tag}${i}@example.org`] },
        { name: "cn", group: "/eudat", values: [`${tag} number ${i}`] },
      ],
    }));
}

/** Ids of the small population's accounts, found by the addresses seeded. */
function small(world: World): Small {
  const byMail = (address: string) =>
    [...world.baseline.before.values()].find((e) =>
      e.attributes.some((a) => JSON.stringify(a.values).includes(address))
    )!.id;
  return {
    ann: byMail("ann.quokka@"),
    bob: byMail("bob.wombat@"),
    cleo: byMail("cleo.numbat@"),
    dora: byMail("dora.valid@"),
    eve: byMail("eve.scheduled@"),
    finn: byMail("finn.authoff@"),
  };
}

// ---- 1. killed between steps -------------------------------------------------

/**
 * Starts a run whose k-th change hangs, waits until it is sent, and kills
 * the process: changes 1..k-1 are done, the k-th never reached Unity.
 */
async function killAtMutation(world: World, k: number): Promise<void> {
  if (k > 1) world.sim.fault({ path: MUTATING, times: k - 1 }); // pass through
  world.sim.fault({ path: MUTATING, hang: true });
  const running = world.start();
  await until(
    () => mutations(world.sim.requests).length >= k || running.exited,
    `change ${k} to be sent`,
  );
  assert.ok(!running.exited, "the run must still be waiting on change k");
  running.kill();
  const killed = await running.result;
  assert.equal(killed.signal, "SIGKILL");
  world.sim.clearFaults();

  const answered = mutations(world.sim.requests).filter((r) => r.status !== 0);
  assert.equal(answered.length, k - 1, "changes answered before the kill");
}

/**
 * Starts a run whose mail can never be accepted and kills it as soon as
 * Unity has answered k changes: wherever the process got to by then (the
 * answer not yet journaled, the next change, the mail) is a kill point.
 */
async function killAfterAnswered(world: World, k: number): Promise<void> {
  await world.useSmtp({ hangAtDot: true });
  const config = await world.writeConfig({ smtpTimeout: 10 }, "hang.yml");
  const running = world.start([], config);
  await until(
    () =>
      mutations(world.sim.requests).filter((r) => r.status !== 0).length >= k,
    `change ${k} to be answered`,
    10_000,
    1,
  );
  running.kill();
  assert.equal((await running.result).signal, "SIGKILL");
  await world.useSmtp();
  world.config = await world.writeConfig();
}

Deno.test("a run killed before or after any one change resumes to the same end state", async (t) => {
  let total = 0;
  await inWorld(seedSmall, async (world) => {
    assertExit(await world.run(), 0);
    total = mutations(world.sim.requests).length;
    await world.assertInvariants();
  });
  // 9 attribute removals (one refused as immutable) and 3 schedules.
  assert.equal(total, 12, "changes in a clean run of the small population");

  for (let k = 1; k <= total; k++) {
    await t.step(`killed while change ${k} of ${total} hangs`, async () => {
      await inWorld(seedSmall, async (world) => {
        await killAtMutation(world, k);
        if (k === 1) {
          // The journal is written before the first change, with everything captured.
          const journal = await journalAccounts(world.stateDir);
          assert.equal(journal.length, 3);
          assert.ok(journal.every((a) => a.scheduled === false));
          assert.deepEqual(
            new Map(world.sim.snapshot().map((e) => [e.id, e])),
            world.baseline.before,
            "nothing changed before the kill",
          );
        }
        assertExit(await world.run(), 0);
        assert.equal(world.mails.length, 1, "one mail after the resume");
        await world.assertInvariants();
      });
    });
  }

  for (let k = 1; k <= total; k++) {
    await t.step(
      `killed once change ${k} of ${total} was answered`,
      async () => {
        await inWorld(seedSmall, async (world) => {
          await killAfterAnswered(world, k);
          assertExit(await world.run(), 0);
          assert.equal(world.mails.length, 1, "one mail after the resume");
          await world.assertInvariants();
        });
      },
    );
  }
});

Deno.test("a run killed after the last change but before the mail was accepted reports every account once", async () => {
  await inWorld(seedSmall, async (world) => {
    const hung = await world.useSmtp({ hangAtDot: true });
    const config = await world.writeConfig({ smtpTimeout: 10 }, "hang.yml");
    const running = world.start([], config);
    await until(
      () => hung.sessions.some((s) => s.commands.includes("DATA")),
      "the mail's DATA",
    );
    await new Promise((resolve) => setTimeout(resolve, 100));
    running.kill();
    assert.equal((await running.result).signal, "SIGKILL");

    const { ann, bob, cleo } = small(world);
    for (const id of [ann, bob, cleo]) {
      assert.equal(world.sim.entity(id)?.scheduledOperation, "REMOVE");
    }
    const journal = await journalAccounts(world.stateDir);
    assert.deepEqual(journal.map((a) => a.scheduled), [true, true, true]);

    await world.useSmtp();
    const before = world.sim.requests.length;
    assertExit(await world.run([], await world.writeConfig()), 0);
    assert.deepEqual(
      mutations(world.sim.requests.slice(before)),
      [],
      "nothing left to change",
    );
    assert.equal(world.mails.length, 1);
    await world.assertInvariants();
  });
});

// ---- 2. SMTP down, then up ---------------------------------------------------

Deno.test("with SMTP down the accounts stay journaled; once it is up each is in exactly one mail", async () => {
  await inWorld(seedSmall, async (world) => {
    const { ann, bob, cleo } = small(world);
    const deadPort = await unusedPort();

    const down = await world.run(
      [],
      await world.writeConfig({ smtpPort: deadPort }),
    );
    assertExit(down, 7);
    assert.match(down.stderr, /notification not delivered/);
    for (const id of [ann, bob, cleo]) {
      assert.equal(world.sim.entity(id)?.scheduledOperation, "REMOVE");
    }
    assert.equal((await journalAccounts(world.stateDir)).length, 3);
    const afterFirst = world.sim.requests.length;

    for (
      const [what, options] of [
        ["421 at the greeting", { tempFailConnect: true }],
        ["no greeting", { noGreeting: true }],
        ["451 at DATA", { tempFailData: true }],
      ] as const
    ) {
      await world.useSmtp(options);
      const result = await world.run([], await world.writeConfig());
      assertExit(result, 7);
      assert.equal(
        (await journalAccounts(world.stateDir)).length,
        3,
        `journal kept after ${what}`,
      );
      assert.ok(result.ms < 1_000 + STARTUP_SLACK_MS, `${what} timed out`);
    }
    assert.equal(world.mails.length, 0);
    assert.deepEqual(
      mutations(world.sim.requests.slice(afterFirst)),
      [],
      "finished accounts are not changed again",
    );

    await world.useSmtp();
    assertExit(await world.run([], await world.writeConfig()), 0);
    assert.equal(world.mails.length, 1, "exactly one mail with all three");
    await world.assertInvariants();

    const fresh = seedDisabled(world.sim, 2, "late-comer");
    extendBaseline(world.baseline, world.sim, fresh);
    assertExit(
      await world.run([], await world.writeConfig({ smtpPort: deadPort })),
      7,
    );
    await world.assertInvariants({ pending: fresh });
    assertExit(await world.run([], await world.writeConfig()), 0);
    assert.equal(world.mails.length, 2);
    await world.assertInvariants();
  });
});

Deno.test("a recipient refused with 550 does not stop the mail to the others: exit 6, journal cleared", async () => {
  await inWorld(seedSmall, async (world) => {
    await world.useSmtp({ rejectRecipients: ["ops@sp2.example.org"] });
    const result = await world.run([], await world.writeConfig());
    assertExit(result, 6);
    assert.match(result.stderr, /ops@sp2\.example\.org/);
    assert.deepEqual(world.smtp.mails[0]?.envelope.to, ["ops@sp1.example.org"]);
    await world.assertInvariants();
  });
});

// ---- 3. 5xx bursts -------------------------------------------------------------

Deno.test("503 bursts on listing, removal and scheduling are retried and the run succeeds", async () => {
  await inWorld(seedSmall, async (world) => {
    world.sim.fault({
      method: "GET",
      path: /^\/group-members\//,
      status: 503,
      times: 2,
    });
    world.sim.fault({ method: "DELETE", status: 503, times: 2 });
    world.sim.fault({ method: "PUT", status: 503, times: 2 });
    const result = await world.run();
    assertExit(result, 0);
    assert.equal(
      world.sim.requests.filter((r) => r.status === 503).length,
      6,
      "every 503 was answered and retried",
    );
    await world.assertInvariants();
  });
});

Deno.test("a 500 forever on one account's schedule fails only that account (exit 6); the next run finishes it", async () => {
  await inWorld(seedSmall, async (world) => {
    const { bob } = small(world);
    world.sim.fault({
      method: "PUT",
      path: entityPath(bob, "/admin-schedule"),
      status: 500,
      times: Infinity,
    });
    const result = await world.run();
    assertExit(result, 6);
    assert.equal(
      world.sim.requests.filter((r) =>
        r.method === "PUT" &&
        entityPath(bob, "/admin-schedule").test(relativePath(r.path))
      ).length,
      3,
      "tried once and retried api.retries (2) times",
    );
    assert.equal(world.sim.entity(bob)?.scheduledOperation, null);
    assert.equal(world.mails.length, 1);
    await world.assertInvariants({ pending: [bob] });

    world.sim.clearFaults();
    assertExit(await world.run(), 0);
    assert.equal(world.mails.length, 2);
    await world.assertInvariants();
  });
});

// ---- 4. hung requests ------------------------------------------------------------

/** The longest a run may take when every attempt of one request hangs. */
function hungBound(apiTimeoutS: number, retries: number): number {
  return apiTimeoutS * 1_000 * (retries + 1) + BACKOFF_MAX_MS(retries) +
    STARTUP_SLACK_MS;
}

Deno.test("a hung group listing ends the run by itself with exit 3 and nothing changed", async () => {
  await inWorld(seedSmall, async (world) => {
    world.sim.fault({
      method: "GET",
      path: /^\/group-members\//,
      hang: true,
      times: Infinity,
    });
    const result = await world.run();
    assertExit(result, 3);
    assert.ok(result.ms < hungBound(1, 2), `took ${result.ms} ms`);
    assert.match(result.stderr, /GET \/group-members\/%2F/);
    assert.match(result.stderr, /did not answer within 1000 ms/);
    assert.deepEqual(mutations(world.sim.requests), []);
    await world.assertInvariants({ untouched: [...world.baseline.selected] });
  });
});

Deno.test("a hung read of one selected account skips it (exit 6) when the unreadable share allows", async () => {
  await inWorld(seedSmall, async (world) => {
    const { cleo } = small(world);
    world.sim.fault({
      method: "GET",
      path: entityPath(cleo, "/groups"),
      hang: true,
      times: Infinity,
    });
    const result = await world.run(
      [],
      await world.writeConfig({ maxUnreadableShare: 0.5 }),
    );
    assertExit(result, 6);
    assert.ok(result.ms < hungBound(1, 2), `took ${result.ms} ms`);
    assert.match(
      result.stderr + result.stdout,
      new RegExp(`/entity/${cleo}/groups`),
    );
    await world.assertInvariants({ untouched: [cleo] });

    world.sim.clearFaults();
    assertExit(await world.run(), 0);
    await world.assertInvariants();
  });
});

Deno.test("a hung schedule request fails only that account (exit 6) in bounded time", async () => {
  await inWorld(seedSmall, async (world) => {
    const { ann } = small(world);
    world.sim.fault({
      method: "PUT",
      path: entityPath(ann, "/admin-schedule"),
      hang: true,
      times: Infinity,
    });
    const result = await world.run();
    assertExit(result, 6);
    assert.ok(result.ms < hungBound(1, 2), `took ${result.ms} ms`);
    await world.assertInvariants({ pending: [ann] });

    world.sim.clearFaults();
    assertExit(await world.run(), 0);
    await world.assertInvariants();
  });
});

Deno.test("run_timeout stops a run whose requests hang, before api.timeout would", async () => {
  await inWorld(seedSmall, async (world) => {
    world.sim.fault({
      method: "GET",
      path: /^\/group-members\//,
      hang: true,
      times: Infinity,
    });
    const config = await world.writeConfig({
      apiTimeout: 10,
      retries: 3,
      runTimeout: 1,
    });
    const result = await world.run([], config);
    assertExit(result, 3);
    assert.match(result.stderr, /run_timeout/);
    assert.ok(result.ms < 1_000 + STARTUP_SLACK_MS, `took ${result.ms} ms`);
    await world.assertInvariants({ untouched: [...world.baseline.selected] });
  });
});

Deno.test("run_timeout also bounds a mail server that never answers the final dot", async () => {
  await inWorld(seedSmall, async (world) => {
    await world.useSmtp({ hangAtDot: true });
    const config = await world.writeConfig({ runTimeout: 2, smtpTimeout: 15 });
    const result = await world.run([], config);
    assertExit(result, 7);
    assert.ok(result.ms < 2_000 + STARTUP_SLACK_MS, `took ${result.ms} ms`);
    assert.match(result.stderr, /run deadline \(run_timeout\) passed/);
    await world.assertInvariants({ pending: [...world.baseline.selected] });
  });
});

Deno.test({
  name:
    "a mail stopped by run_timeout does not blame notifications.email.timeout",
  fn: async () => {
    await inWorld(seedSmall, async (world) => {
      await world.useSmtp({ hangAtDot: true });
      const config = await world.writeConfig({
        runTimeout: 2,
        smtpTimeout: 15,
      });
      const result = await world.run([], config);
      assertExit(result, 7);
      assert.match(result.stderr, /run_timeout/);
      assert.doesNotMatch(result.stderr, /notifications\.email\.timeout/);
    });
  },
});

// ---- 5. answers that are not what Unity sends ------------------------------------

interface BadListing {
  name: string;
  bulk: boolean;
  status?: number;
  body: string;
  contentType?: string;
  /** What the error must say, besides naming the request. */
  says: RegExp;
}

const PROXY_PAGE =
  "<!DOCTYPE html><html><head><title>Welcome</title></head><body>Login</body></html>";

const BAD_LISTINGS: BadListing[] = [
  {
    name: "a proxy's HTML page with 200 for the bulk listing",
    bulk: true,
    body: PROXY_PAGE,
    contentType: "text/html",
    says: /text\/html that is not JSON/,
  },
  {
    name: "a proxy's HTML page with 200 for the member listing",
    bulk: false,
    body: PROXY_PAGE,
    contentType: "text/html",
    says: /text\/html that is not JSON/,
  },
  {
    name: "a proxy's 502 HTML page",
    bulk: false,
    status: 502,
    body: "<html><body><h1>502 Bad Gateway</h1></body></html>",
    contentType: "text/html",
    says: /502 \(body starts "<html>/,
  },
  {
    name: "truncated JSON",
    bulk: false,
    body: '{"subGroups":[],"members":[{"group":"/","entityId":2,"creat',
    says: /not JSON/,
  },
  {
    name: "a 200 with an empty body",
    bulk: false,
    body: "",
    says: /empty body/,
  },
  {
    name: "members that are strings",
    bulk: false,
    body: '{"subGroups":[],"members":["2","3"]}',
    says: /members\[0\] should be an entity id/,
  },
];

Deno.test("a listing that is not Unity's JSON stops the run with exit 3, naming the request, nothing changed", async (t) => {
  for (const bad of BAD_LISTINGS) {
    await t.step(bad.name, async () => {
      await inWorld(seedSmall, async (world) => {
        const path = bad.bulk ? /^\/group-members\/\/$/ : /^\/group\/\/$/;
        world.sim.fault({
          method: "GET",
          path,
          status: bad.status ?? 200,
          body: bad.body,
          contentType: bad.contentType ?? "application/json",
          times: Infinity,
        });
        const config = await world.writeConfig({ bulk: bad.bulk });
        const result = await world.run([], config);
        assertExit(result, 3);
        const request = bad.bulk ? "GET /group-members/%2F" : "GET /group/%2F";
        assert.ok(result.stderr.includes(request), result.stderr);
        assert.match(result.stderr, bad.says);
        assert.match(result.stderr, /Nothing was changed/);
        assert.doesNotMatch(result.stdout + result.stderr, /\b0 members\b/);
        assert.deepEqual(mutations(world.sim.requests), []);
        assert.equal(world.mails.length, 0);
        await world.assertInvariants({
          untouched: [...world.baseline.selected],
        });
      });
    });
  }
});

// ---- 6. two runs at once -------------------------------------------------------

Deno.test("a second run while one holds the lock exits 5 at once, touching nothing; kill -9 leaves no stale lock", async () => {
  await inWorld(seedSmall, async (world) => {
    world.sim.fault({ path: MUTATING, hang: true, times: Infinity });
    const slow = await world.writeConfig(
      { apiTimeout: 30, runTimeout: 60 },
      "slow.yml",
    );
    const first = world.start([], slow);
    await until(
      () => mutations(world.sim.requests).length === 1,
      "the first change",
    );

    const requests = world.sim.requests.length;
    const journal = await Deno.readTextFile(
      join(world.stateDir, "journal.json"),
    );
    const audit = await Deno.readTextFile(join(world.stateDir, "audit.log"));
    const lock = await Deno.readTextFile(join(world.stateDir, "lock"));
    const second = await world.run();
    assertExit(second, 5);
    assert.ok(second.ms < STARTUP_SLACK_MS, `took ${second.ms} ms`);
    assert.match(second.stderr, /Another run \(pid \d+\) is in progress/);
    assert.equal(world.sim.requests.length, requests, "no request to Unity");
    assert.equal(
      await Deno.readTextFile(join(world.stateDir, "journal.json")),
      journal,
    );
    assert.equal(
      await Deno.readTextFile(join(world.stateDir, "audit.log")),
      audit,
    );
    assert.equal(await Deno.readTextFile(join(world.stateDir, "lock")), lock);
    assert.equal(world.mails.length, 0);

    first.kill();
    assert.equal((await first.result).signal, "SIGKILL");
    const file = await Deno.open(join(world.stateDir, "lock"), {
      read: true,
      write: true,
    });
    try {
      assert.ok(
        await file.tryLock(true),
        "the OS released the dead run's lock",
      );
      await file.unlock();
    } finally {
      file.close();
    }

    world.sim.clearFaults();
    assertExit(await world.run(), 0);
    await world.assertInvariants();
  });
});

// ---- 7. the brake --------------------------------------------------------------

Deno.test("more qualifying accounts than max_accounts_per_run stop the run (exit 4); --max-accounts lifts it", async () => {
  await inWorld((sim) => void seedDisabled(sim, 5, "braked"), async (world) => {
    const config = await world.writeConfig({ maxAccounts: 3 });
    const dry = await world.run(["--dry-run"], config);
    assertExit(dry, 4);

    const stopped = await world.run([], config);
    assertExit(stopped, 4);
    assert.match(stopped.stderr, /5 accounts qualify/);
    assert.match(stopped.stderr, /--max-accounts 5/);
    assert.deepEqual(mutations(world.sim.requests), []);
    assert.deepEqual(await journalAccounts(world.stateDir), []);
    await world.assertInvariants({ untouched: [...world.baseline.selected] });

    assertExit(await world.run(["--max-accounts", "5"], config), 0);
    assert.equal(world.mails.length, 1);
    await world.assertInvariants();
  });
});

// ---- 8. unreadable entities ------------------------------------------------------

/** 50 members, every fifth disabled. */
function seedFifty(sim: UnitySim): void {
  for (let i = 0; i < 50; i++) {
    const attributes: SimAttribute[] = [
      { name: "email", group: "/", values: [`member${i}@example.org`] },
      { name: "name", group: "/", values: [`Member Number ${i}`] },
    ];
    sim.addEntity({ state: i % 5 === 0 ? "disabled" : "valid", attributes });
  }
}

for (const status of [400, 500]) {
  Deno.test(`one of 50 entities answering ${status} is skipped and reported (exit 6); the others are done`, async () => {
    await inWorld(seedFifty, async (world) => {
      const [target] = [...world.baseline.selected];
      assert.ok(target !== undefined);
      world.sim.fault({
        method: "GET",
        path: entityPath(target),
        status,
        times: Infinity,
      });
      const report = join(world.dir, "report.json");
      const config = await world.writeConfig({ bulk: false });
      const result = await world.run(["--report", report], config);
      assertExit(result, 6);
      assert.match(
        result.stderr,
        new RegExp(`entityId=${target}|"entityId":${target}|entity ${target}`),
      );
      const json = JSON.parse(await Deno.readTextFile(report));
      assert.deepEqual(
        json.unreadable.map((u: { entityId: number }) => u.entityId),
        [target],
      );
      assert.deepEqual(
        json.failed.map((u: { entityId: number }) => u.entityId),
        [target],
      );
      await world.assertInvariants({ untouched: [target] });

      world.sim.clearFaults();
      assertExit(await world.run([], config), 0);
      await world.assertInvariants();
    });
  });
}

Deno.test("more unreadable entities than max_unreadable_share stop the run (exit 3) with nothing changed", async () => {
  await inWorld(seedFifty, async (world) => {
    // 4 of 51 members (the admin included) is more than 5%.
    world.sim.fault({
      method: "GET",
      path: /^\/entity\/(3|4|5|6)$/,
      status: 400,
      times: Infinity,
    });
    const result = await world.run(
      [],
      await world.writeConfig({ bulk: false }),
    );
    assertExit(result, 3);
    assert.match(result.stderr, /4 of 51 members/);
    assert.deepEqual(mutations(world.sim.requests), []);
    assert.deepEqual(await journalAccounts(world.stateDir), []);
    await world.assertInvariants({ untouched: [...world.baseline.selected] });
  });
});

// ---- 9. authentication failures ----------------------------------------------------

Deno.test("a wrong password (403) is never retried: exactly one request reaches Unity", async () => {
  await inWorld(seedSmall, async (world) => {
    const config = await world.writeConfig({ password: "not the password" });
    const result = await world.run([], config);
    assertExit(result, 3);
    assert.equal(world.sim.requests.length, 1);
    assert.equal(world.sim.requests[0]?.status, 403);
    assert.ok(!result.stderr.includes("not the password"));
    await world.assertInvariants({ untouched: [...world.baseline.selected] });
  });
});

Deno.test("a 403 on one account's schedule is not retried and does not stop the others (exit 6)", async () => {
  await inWorld(seedSmall, async (world) => {
    const { cleo } = small(world);
    const schedule = entityPath(cleo, "/admin-schedule");
    world.sim.fault({
      method: "PUT",
      path: schedule,
      status: 403,
      times: Infinity,
    });
    assertExit(await world.run(), 6);
    assert.equal(
      world.sim.requests.filter((r) => schedule.test(relativePath(r.path)))
        .length,
      1,
    );
    await world.assertInvariants({ pending: [cleo] });

    world.sim.clearFaults();
    assertExit(await world.run(), 0);
    await world.assertInvariants();
  });
});

// ---- 10. the audit trail -----------------------------------------------------------

Deno.test("the audit trail of a killed and resumed run names every change and never a value or a password", async () => {
  await inWorld(seedSmall, async (world) => {
    await killAtMutation(world, 5);
    assertExit(await world.run(), 0);
    await world.assertInvariants();

    const text = await Deno.readTextFile(join(world.stateDir, "audit.log"));
    const lines = text.trimEnd().split("\n").map((line) => JSON.parse(line));
    for (const line of lines) {
      assert.ok(!Number.isNaN(Date.parse(line.time)), "time");
      assert.equal(typeof line.run, "string");
    }
    assert.equal(new Set(lines.map((l) => l.run)).size, 2, "two runs");

    for (const id of world.baseline.selected) {
      const before = world.baseline.before.get(id)!;
      const own = lines.filter((l) => l.entityId === id);
      assert.ok(own.every((l) => l.persistentId === before.persistentId));
      const removed = new Set(
        own.filter((l) => l.event === "attribute-removed")
          .map((l) => `${l.attribute}@${l.group}`),
      );
      for (const a of before.attributes) {
        if (a.direct === false || WHITELIST.includes(a.name)) continue;
        assert.ok(removed.has(`${a.name}@${a.group}`), `${id}: ${a.name}`);
      }
      const scheduled = own.filter((l) => l.event === "removal-scheduled");
      assert.equal(scheduled.length, 1, `entity ${id} scheduled once`);
      assert.equal(scheduled[0].when, world.sim.entity(id)?.scheduledTime);
      assert.equal(scheduled[0].status, 204);
    }
    const mail = lines.filter((l) => l.event === "mail");
    assert.deepEqual(mail.map((l) => l.result), ["accepted"]);
    assert.deepEqual(
      [...mail[0].entityIds].sort(),
      [...world.baseline.selected].sort(),
    );

    const secrets = [API_PASSWORD, SMTP_PASSWORD];
    const values = [...world.baseline.before.values()].flatMap((e) =>
      e.attributes.flatMap((a) =>
        a.values.map((v) =>
          typeof v === "object" ? (v as { value: string }).value : String(v)
        )
      )
    );
    for (const secret of [...secrets, ...values]) {
      assert.ok(!text.includes(secret), `audit.log holds "${secret}"`);
    }
  });
});

// ---- plain HTTP --------------------------------------------------------------------

Deno.test({
  name: "an http:// base_url works under the start task's permissions",
  fn: async () => {
    const world = await World.start(seedSmall, {}, true);
    try {
      const result = await world.run();
      assertExit(result, 0);
      await world.assertInvariants();
    } finally {
      await world.close();
    }
  },
});

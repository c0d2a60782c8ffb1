/**
 * The command line's contract, tested by running main.ts as a process with
 * the `start` task's permissions: help and version, flags and their errors,
 * where the config is looked up, bad configs, log format, --report, the
 * check command, the safety brake and the run lock.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";
import meta from "../deno.json" with { type: "json" };
import { assertInvariants, baselineOf } from "./support/invariants.ts";
import {
  type CliResult,
  exists,
  expectedUsersJson,
  FROM,
  RECIPIENTS,
  runCli,
  type Scenario,
  SECRETS,
  startScenario,
  TLS_DIR,
  waitFor,
  withScenario,
} from "./support/scenario.ts";
import { unusedPort } from "./support/smtp.ts";
import type { UnitySim } from "./support/unity_sim.ts";

const DAY = 86_400_000;
const API = "/rest-admin/v1";

/** Adds `n` disabled, unscheduled people with an e-mail each, and one valid person. */
function seedDisabled(sim: UnitySim, n: number): number[] {
  const ids: number[] = [];
  for (let i = 0; i < n; i++) {
    ids.push(sim.addEntity({
      state: "disabled",
      groups: ["/eudat"],
      attributes: [
        { name: "email", group: "/", values: [`user${i}@example.org`] },
        { name: "name", group: "/", values: [`User ${i}`] },
        { name: "cn", group: "/eudat", values: [`User ${i}`] },
        { name: "sys:CredentialRequirements", group: "/", values: ["sys:all"] },
      ],
    }));
  }
  sim.addEntity({
    state: "valid",
    attributes: [{ name: "email", group: "/", values: ["valid@example.org"] }],
  });
  return ids;
}

function assertExit(result: CliResult, code: number): void {
  assert.equal(
    result.code,
    code,
    `exit ${result.code}, expected ${code}\nstdout:\n${result.stdout}\nstderr:\n${result.stderr}`,
  );
}

function nonGets(sim: UnitySim): string[] {
  return sim.requests.filter((r) => r.method !== "GET").map((r) =>
    `${r.method} ${r.path}`
  );
}

function isScheduled(sim: UnitySim, id: number): boolean {
  return sim.entity(id)?.scheduledOperation === "REMOVE";
}

// ---- help, version, flags ----------------------------------------------------

Deno.test("--help lists every flag, both commands and every exit code", async () => {
  await withScenario({}, async (s) => {
    const result = await s.runCli(["--help"]);
    assertExit(result, 0);
    assert.equal(result.stderr, "");
    const help = result.stdout;
    for (
      const flag of [
        "-c, --config PATH",
        "-n, --dry-run",
        "--max-accounts N",
        "--log-level LEVEL",
        "--log-format FORMAT",
        "--report FILE",
        "-h, --help",
        "-V, --version",
      ]
    ) {
      assert.ok(help.includes(flag), `--help lists ${flag}`);
    }
    assert.match(help, /b2access-deprovision \[run\]/);
    assert.match(help, /b2access-deprovision check/);
    assert.match(help, /B2ACCESS_DEPROVISION_CONFIG, then \.\/config\.yml/);
    for (let code = 0; code <= 7; code++) {
      assert.match(help, new RegExp(`^ +${code} +\\S`, "m"), `exit ${code}`);
    }
    const short = await s.runCli(["-h"]);
    assertExit(short, 0);
    assert.equal(short.stdout, help);
  });
});

Deno.test("--version prints the version from deno.json", async () => {
  for (const flag of ["--version", "-V"]) {
    const result = await runCli([flag]);
    assertExit(result, 0);
    assert.equal(result.stdout, `b2access-deprovision ${meta.version}\n`);
    assert.equal(result.stderr, "");
  }
});

Deno.test("an unknown flag or command exits 2 naming it, before reading any config", async () => {
  await withScenario({}, async (s) => {
    for (
      const [args, named] of [
        [["--frobnicate"], "--frobnicate"],
        [["frob"], '"frob"'],
        [["run", "extra"], '"extra"'],
      ] as const
    ) {
      const result = await s.runCli(["--config", s.configPath, ...args]);
      assertExit(result, 2);
      assert.ok(result.stderr.includes(named), result.stderr);
      assert.match(result.stderr, /--help/);
      assert.equal(result.stdout, "");
    }
    assert.equal(s.sim.requests.length, 0);
  });
});

Deno.test("a malformed flag value exits 2 naming the flag and the value", async () => {
  await withScenario({}, async (s) => {
    for (
      const [flag, value] of [
        ["--max-accounts", "x"],
        ["--max-accounts", "1.5"],
        ["--log-level", "LOUD"],
        ["--log-format", "xml"],
      ] as const
    ) {
      const result = await s.run(flag, value);
      assertExit(result, 2);
      assert.ok(result.stderr.includes(flag), result.stderr);
      assert.ok(result.stderr.includes(`"${value}"`), result.stderr);
    }
    assert.equal(s.sim.requests.length, 0);
  });
});

// ---- where the config is looked up ---------------------------------------------

/** The config file a run says it loaded (INFO line). */
function loadedFile(result: CliResult): string | undefined {
  return /configuration loaded file=(\S+)/.exec(result.stderr)?.[1];
}

Deno.test("--config wins over B2ACCESS_DEPROVISION_CONFIG, which wins over ./config.yml", async () => {
  await withScenario({}, async (s) => {
    const text = await Deno.readTextFile(s.configPath);
    const fromEnv = `${s.dir}/env/deprovision.yml`;
    const fromFlag = `${s.dir}/flag/deprovision.yml`;
    for (const file of [fromEnv, fromFlag]) {
      await Deno.mkdir(file.slice(0, file.lastIndexOf("/")));
      await Deno.writeTextFile(file, text, { mode: 0o600 });
    }
    const args = ["--dry-run", "--log-level", "INFO"];
    const env = { B2ACCESS_DEPROVISION_CONFIG: fromEnv };

    const flagged = await s.runCli(["--config", fromFlag, ...args], { env });
    const viaEnv = await s.runCli(args, { env });
    const local = await s.runCli(args);
    const relative = await s.runCli([
      "--config",
      "flag/deprovision.yml",
      ...args,
    ], {
      env,
    });

    for (const result of [flagged, viaEnv, local, relative]) {
      assertExit(result, 0);
    }
    assert.equal(loadedFile(flagged), fromFlag);
    assert.equal(loadedFile(viaEnv), fromEnv);
    assert.equal(loadedFile(local), s.configPath);
    assert.equal(loadedFile(relative), fromFlag, "made absolute");
  });
});

Deno.test("a missing config exits 2 naming its absolute path and --config", async () => {
  await withScenario({}, async (s) => {
    const empty = `${s.dir}/empty`;
    await Deno.mkdir(empty);
    const local = await s.runCli([], { cwd: empty });
    assertExit(local, 2);
    assert.ok(local.stderr.includes(`"${empty}/config.yml"`), local.stderr);
    assert.match(local.stderr, /file not found/);
    assert.match(
      local.stderr,
      /--config, else B2ACCESS_DEPROVISION_CONFIG, else \.\/config\.yml/,
    );

    const named = await s.runCli(["--config", "nowhere.yml"], { cwd: empty });
    assertExit(named, 2);
    assert.ok(named.stderr.includes(`"${empty}/nowhere.yml"`), named.stderr);
    assert.equal(s.sim.requests.length, 0);
  });
});

// ---- bad configs -----------------------------------------------------------------

/** A minimal valid config for `s`, one key per line, so line numbers are known. */
function configText(s: Scenario, lines: { drop?: string } = {}): string {
  const text = [
    "api:",
    `  base_url: "${s.sim.url}"`,
    `  user: "${SECRETS.unityUser}"`,
    `  password: "${SECRETS.unityPassword}"`,
    `  cert_verify: "${TLS_DIR}ca.pem"`,
    "notifications:",
    "  email:",
    `    host: "127.0.0.1"`,
    `    port: ${s.smtp!.port}`,
    `    from: "noreply@b2access.example.org"`,
    `    to: ["${RECIPIENTS[0]}"]`,
    `state_dir: "state"`,
  ];
  return text.filter((line) => !lines.drop || !line.includes(lines.drop))
    .join("\n") + "\n";
}

async function runWithConfig(s: Scenario, text: string): Promise<CliResult> {
  const file = `${s.dir}/bad.yml`;
  await Deno.writeTextFile(file, text, { mode: 0o600 });
  return await s.runCli(["--config", file]);
}

/** Exit 2 naming the file, nothing sent anywhere; returns the listed problems. */
function assertConfigRejected(s: Scenario, result: CliResult): string[] {
  assertExit(result, 2);
  assert.ok(
    result.stderr.startsWith(`Cannot use config "${s.dir}/bad.yml": `),
    result.stderr,
  );
  assert.equal(s.sim.requests.length, 0, "no request to Unity");
  assert.equal(s.smtp!.sessions.length, 0, "no SMTP connection");
  return result.stderr.split("\n").filter((line) => line.startsWith("  - "));
}

Deno.test("the minimal config used by the bad-config tests is itself valid", async () => {
  await withScenario({}, async (s) => {
    s.sim.addEntity({ state: "valid" });
    const result = await runWithConfig(s, configText(s));
    assertExit(result, 0);
  });
});

Deno.test("an unknown key exits 2 with its line number and the likely intended key", async () => {
  await withScenario({}, async (s) => {
    const result = await runWithConfig(
      s,
      configText(s) + "retention_periode: 30\n",
    );
    assert.deepEqual(assertConfigRejected(s, result), [
      '  - retention_periode (line 13): unknown key (did you mean "retention_period"?)',
    ]);
  });
});

Deno.test("a value of the wrong type exits 2 naming the key, its line and the value", async () => {
  await withScenario({}, async (s) => {
    const result = await runWithConfig(
      s,
      configText(s).replace(/port: \d+/, 'port: "twenty-five"'),
    );
    assert.deepEqual(assertConfigRejected(s, result), [
      '  - notifications.email.port (line 9): expected a number, got string "twenty-five"',
    ]);
  });
});

Deno.test(
  "a duplicate key exits 2 naming the key and its line",
  {},
  async () => {
    await withScenario({}, async (s) => {
      const result = await runWithConfig(
        s,
        configText(s) + 'user_group: "/a"\nuser_group: "/b"\n',
      );
      const problems = assertConfigRejected(s, result);
      assert.equal(problems.length, 1, result.stderr);
      assert.match(problems[0]!, /user_group/);
      assert.match(problems[0]!, /line 14/);
    });
  },
);

Deno.test("a duplicate key exits 2 with its line before any network call", async () => {
  await withScenario({}, async (s) => {
    const result = await runWithConfig(
      s,
      configText(s) + 'user_group: "/a"\nuser_group: "/b"\n',
    );
    const problems = assertConfigRejected(s, result);
    assert.equal(problems.length, 1, result.stderr);
    assert.match(
      problems[0]!,
      /duplicate key.*\(line 14\): Map keys must be unique/,
    );
  });
});

Deno.test("a YAML syntax error exits 2 with a line number", async () => {
  await withScenario({}, async (s) => {
    const result = await runWithConfig(
      s,
      configText(s).replace(
        `to: ["${RECIPIENTS[0]}"]`,
        `to: ["${RECIPIENTS[0]}"`,
      ),
    );
    const problems = assertConfigRejected(s, result);
    assert.ok(problems.length >= 1, result.stderr);
    assert.match(problems[0]!, /^ {2}- \(syntax\) \(line \d+\): \S/);
  });
});

Deno.test("a missing required key exits 2 naming its path", async () => {
  await withScenario({}, async (s) => {
    const result = await runWithConfig(s, configText(s, { drop: "from:" }));
    assert.deepEqual(assertConfigRejected(s, result), [
      "  - notifications.email.from (line 7): missing: this key is required",
    ]);
  });
});

Deno.test("every problem in a config is listed at once", async () => {
  await withScenario({}, async (s) => {
    const text = configText(s, { drop: "user:" }) +
      'retention_period: "a year"\nlog_levle: DEBUG\ndry_run: maybe\n';
    const result = await runWithConfig(s, text);
    const problems = assertConfigRejected(s, result);
    assert.match(result.stderr, /: 4 problem\(s\)\n/);
    for (
      const expected of [
        /^ {2}- api\.user \(line 1\): missing/,
        /^ {2}- retention_period \(line 12\): expected a number/,
        /^ {2}- log_levle \(line 13\): unknown key \(did you mean "log_level"\?\)/,
        /^ {2}- dry_run \(line 14\): expected true or false/,
      ]
    ) {
      assert.ok(
        problems.some((line) => expected.test(line)),
        `${expected} in\n${result.stderr}`,
      );
    }
  });
});

// ---- log format and report ---------------------------------------------------

function assertJsonLines(stderr: string): Record<string, unknown>[] {
  const lines = stderr.split("\n").filter((line) => line !== "");
  assert.ok(lines.length > 0, "some log lines");
  return lines.map((line) => {
    const entry = JSON.parse(line) as Record<string, unknown>;
    assert.equal(typeof entry.time, "string", line);
    assert.ok(!Number.isNaN(Date.parse(entry.time as string)), line);
    assert.ok(
      ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"].includes(
        entry.level as string,
      ),
      line,
    );
    assert.equal(typeof entry.message, "string", line);
    return entry;
  });
}

Deno.test("--log-format json writes every stderr line as a JSON object with time, level and message", async () => {
  await withScenario({}, async (s) => {
    const [first, failing] = seedDisabled(s.sim, 3);
    s.sim.fault({
      method: "PUT",
      path: new RegExp(`^/entity/${failing}/admin-schedule$`),
      status: 403,
    });
    const result = await s.run("--log-format", "json", "--log-level", "DEBUG");
    assertExit(result, 6);
    const entries = assertJsonLines(result.stderr);
    const levels = new Set(entries.map((e) => e.level));
    for (const level of ["DEBUG", "INFO", "ERROR"]) {
      assert.ok(levels.has(level));
    }
    assert.ok(
      entries.some((e) =>
        e.message === "scheduled removal" && e.entityId === first
      ),
      "fields are JSON fields",
    );

    const broken = `${s.dir}/broken.yml`;
    await Deno.writeTextFile(broken, "api: [\n", { mode: 0o600 });
    const configError = await s.runCli([
      "--config",
      broken,
      "--log-format",
      "json",
    ]);
    assertExit(configError, 2);
    const [entry] = assertJsonLines(configError.stderr);
    assert.match(entry!.message as string, /^Cannot use config/);
  });
});

Deno.test("--report FILE writes the accounts selected, the failures and the mail outcome as JSON", async () => {
  await withScenario({}, async (s) => {
    const ids = seedDisabled(s.sim, 3);
    const before = s.sim.snapshot();
    const report = `${s.dir}/report.json`;

    const result = await s.run("--report", report);

    assertExit(result, 0);
    const doc = JSON.parse(await Deno.readTextFile(report));
    assert.equal(doc.exitCode, 0);
    assert.equal(doc.dryRun, false);
    assert.equal(doc.group, "/");
    assert.deepEqual(doc.failed, []);
    assert.deepEqual(
      doc.selected.map((a: { entityId: number }) => a.entityId),
      ids,
    );
    for (const [i, account] of doc.selected.entries()) {
      assert.equal(account.persistentId, s.sim.entity(ids[i]!)!.persistentId);
      assert.deepEqual(account.emails, [`user${i}@example.org`]);
      assert.deepEqual(account.removals, [
        { group: "/", name: "email" },
        { group: "/", name: "name" },
        { group: "/", name: "sys:CredentialRequirements" },
        { group: "/eudat", name: "cn" },
      ]);
    }
    assert.equal(doc.mail.result, "accepted");
    assert.equal(doc.mail.accounts, 3);
    assert.deepEqual([...doc.mail.accepted].sort(), [...RECIPIENTS].sort());
    assert.equal(
      s.smtp!.mails[0]!.parsed.attachments[0]!.content.toString("utf8"),
      expectedUsersJson(before, (id) => s.sim.entity(id), ids),
    );

    const dry = await s.run("--dry-run", "--report", report);
    assertExit(dry, 0);
    assert.equal(JSON.parse(await Deno.readTextFile(report)).dryRun, true);
  });
});

Deno.test(
  "--report FILE records, per account, each step's outcome and the removal time",
  {},
  async () => {
    await withScenario({}, async (s) => {
      const ids = seedDisabled(s.sim, 2);
      const report = `${s.dir}/report.json`;
      assertExit(await s.run("--report", report), 0);
      const text = await Deno.readTextFile(report);
      const doc = JSON.parse(text);
      for (const id of ids) {
        const when = s.sim.entity(id)!.scheduledTime!;
        assert.ok(text.includes(String(when)), `the when of ${id} in ${text}`);
        const accounts = [...doc.selected, ...doc.accounts].filter((
          a: { entityId: number },
        ) => a.entityId === id);
        assert.ok(
          accounts.some((a: { removals: { outcome?: string }[] }) =>
            a.removals.every((r) => r.outcome !== undefined)
          ),
          `outcomes of ${id} in ${text}`,
        );
      }
    });
  },
);

// ---- check ---------------------------------------------------------------------

Deno.test("check prints the config with passwords masked, checks Unity and SMTP, and changes nothing", async () => {
  await withScenario({}, async (s) => {
    seedDisabled(s.sim, 2);
    const before = s.sim.snapshot();

    const result = await s.run("check");

    assertExit(result, 0);
    const out = result.stdout;
    assert.ok(
      out.startsWith(`Configuration ${s.configPath} is valid. In effect:\n`),
      out,
    );
    assert.equal(out.match(/^ +password: "\*{8}"$/gm)?.length, 2);
    assert.ok(!out.includes(SECRETS.unityPassword));
    assert.ok(!out.includes(SECRETS.smtpPassword));
    const okLines = out.split("\n").filter((line) => line.startsWith("ok  "));
    assert.ok(
      okLines.some((line) =>
        /Unity reachable.*credentials accepted/.test(line)
      ),
      out,
    );
    assert.ok(okLines.some((line) => /group \/ exists: 4 members/.test(line)));
    assert.ok(
      okLines.some((line) =>
        line.startsWith(`ok    SMTP 127.0.0.1:${s.smtp!.port}: `) &&
        /STARTTLS, AUTH as deprov-mailer; no mail sent/.test(line)
      ),
      out,
    );
    assert.doesNotMatch(out, /^FAIL/m);
    assert.match(out, /All checks passed\.\n$/);
    assert.deepEqual(nonGets(s.sim), []);
    assert.deepEqual(s.sim.snapshot(), before);
    assert.equal(s.smtp!.mails.length, 0);
    const commands = s.smtp!.sessions.flatMap((session) => session.commands);
    assert.ok(commands.includes("STARTTLS"), commands.join(" "));
    assert.ok(commands.some((c) => c.startsWith("AUTH")), commands.join(" "));
    assert.ok(!commands.includes("DATA"), commands.join(" "));
    assert.equal(await exists(`${s.stateDir}/journal.json`), false);
  });
});

Deno.test("check with a wrong SMTP password exits 7 and says what failed", async () => {
  await withScenario({
    config: { notifications: { email: { password: "wrong-smtp-password" } } },
  }, async (s) => {
    const result = await s.run("check");
    assertExit(result, 7);
    assert.match(result.stdout, /^ok {4}Unity reachable/m);
    const fail = result.stdout.split("\n").find((line) =>
      line.startsWith("FAIL")
    );
    assert.ok(fail, result.stdout);
    assert.match(fail, /SMTP 127\.0\.0\.1:\d+: .*EAUTH/);
    assert.match(fail, /535/);
    assert.match(fail, /check notifications\.email\.user and password/);
    assert.match(result.stdout, /Some checks failed/);
    assert.equal(s.smtp!.mails.length, 0);
  });
});

Deno.test("check with Unity unreachable exits 3 and says what to check", async () => {
  const port = await unusedPort();
  await withScenario({
    config: { api: { base_url: `https://127.0.0.1:${port}` } },
  }, async (s) => {
    const result = await s.run("check");
    assertExit(result, 3);
    assert.match(
      result.stdout,
      new RegExp(
        `^FAIL {2}Unity: .*cannot reach 127\\.0\\.0\\.1:${port}.*check api\\.base_url`,
        "m",
      ),
    );
    assert.match(result.stdout, /^ok {4}SMTP/m, "the SMTP check still runs");
    assert.equal(s.smtp!.mails.length, 0);
  });
});

// ---- the safety brake -------------------------------------------------------------

Deno.test("more qualifying accounts than max_accounts_per_run stop the run before any change (exit 4)", async () => {
  await withScenario({ config: { max_accounts_per_run: 3 } }, async (s) => {
    seedDisabled(s.sim, 5);
    const before = s.sim.snapshot();

    const result = await s.run();

    assertExit(result, 4);
    assert.match(result.stderr, /5 accounts qualify/);
    assert.match(result.stderr, /limit of 3 \(max_accounts_per_run/);
    assert.match(result.stderr, /--max-accounts 5/);
    assert.deepEqual(nonGets(s.sim), []);
    assert.deepEqual(s.sim.snapshot(), before);
    assert.equal(s.smtp!.sessions.length, 0);
    assert.equal(await exists(`${s.stateDir}/journal.json`), false);
  });
});

Deno.test("--max-accounts N lifts the brake for one run", async () => {
  await withScenario({ config: { max_accounts_per_run: 3 } }, async (s) => {
    const ids = seedDisabled(s.sim, 5);
    const before = s.sim.snapshot();

    const lifted = await s.run("--max-accounts", "5");

    assertExit(lifted, 0);
    for (const id of ids) assert.ok(isScheduled(s.sim, id), `${id} scheduled`);
    assert.equal(s.smtp!.mails.length, 1);
    assert.equal(
      s.smtp!.mails[0]!.parsed.attachments[0]!.content.toString("utf8"),
      expectedUsersJson(before, (id) => s.sim.entity(id), ids),
    );

    const tooFew = await startScenario({ config: { max_accounts_per_run: 3 } });
    try {
      seedDisabled(tooFew.sim, 5);
      assertExit(await tooFew.run("--max-accounts", "4"), 4);
      assert.deepEqual(nonGets(tooFew.sim), []);
    } finally {
      await tooFew.close();
    }
  });
});

Deno.test("a dry run reports the brake too (exit 4) and lists the accounts", async () => {
  await withScenario({ config: { max_accounts_per_run: 3 } }, async (s) => {
    const ids = seedDisabled(s.sim, 5);
    const result = await s.run("--dry-run");
    assertExit(result, 4);
    assert.match(result.stderr, /5 accounts qualify/);
    for (const id of ids) {
      assert.match(result.stdout, new RegExp(`^${id} `, "m"));
    }
    assert.deepEqual(nonGets(s.sim), []);
    assert.equal(s.smtp!.sessions.length, 0);
  });
});

Deno.test(
  "a dry run stopped by the brake shows the configured retention period",
  {},
  async () => {
    await withScenario({ config: { max_accounts_per_run: 3 } }, async (s) => {
      seedDisabled(s.sim, 5);
      const started = Date.now();
      const result = await s.run("--dry-run");
      assertExit(result, 4);
      assert.match(result.stdout, /\(retention_period 365 days\)/);
      const when = /scheduled for about (\S+) /.exec(result.stdout)?.[1];
      assert.ok(when, result.stdout);
      assert.ok(Math.abs(Date.parse(when) - (started + 365 * DAY)) < DAY);
    });
  },
);

// ---- the lock --------------------------------------------------------------------

Deno.test("while one run holds the lock a second exits 5 at once; after the first is killed a third succeeds", async () => {
  await withScenario({ config: { api: { max_concurrency: 1 } } }, async (s) => {
    const ids = seedDisabled(s.sim, 3);
    const before = s.sim.snapshot();
    s.sim.fault({ method: "DELETE", hang: true });

    const first = s.spawnCli(["--config", s.configPath]);
    try {
      await waitFor(
        "the first run's first DELETE",
        () => s.sim.requests.some((r) => r.method === "DELETE"),
      );
      const held = s.sim.snapshot();
      const requests = s.sim.requests.length;

      const second = await s.run();

      assertExit(second, 5);
      assert.ok(second.ms < 5_000, `exited after ${second.ms} ms`);
      assert.match(second.stderr, /Another run \(pid \d+\) is in progress/);
      assert.ok(second.stderr.includes(`${s.stateDir}/lock`), second.stderr);
      assert.equal(s.sim.requests.length, requests, "no request from run 2");
      assert.deepEqual(s.sim.snapshot(), held);
      assert.equal(s.smtp!.sessions.length, 0);
    } finally {
      first.child.kill("SIGKILL");
    }
    const killed = await first.result;
    assert.notEqual(killed.code, 0);

    const third = await s.run();

    assertExit(third, 0);
    for (const id of ids) assert.ok(isScheduled(s.sim, id), `${id} scheduled`);
    assert.equal(s.smtp!.mails.length, 1);
    assert.equal(
      s.smtp!.mails[0]!.parsed.attachments[0]!.content.toString("utf8"),
      expectedUsersJson(before, (id) => s.sim.entity(id), ids),
    );
    const deletes = s.sim.requests.filter((r) =>
      r.method === "DELETE" && r.path.startsWith(`${API}/entity/`)
    );
    assert.ok(deletes.length >= 12, "every attribute removal was sent");
  });
});

// ---- signals, state directory, output edge cases -----------------------------

/**
 * Starts a real run that hangs on its first DELETE, stops it with `signal`
 * once Unity has seen that DELETE, and returns what it left behind.
 */
async function stopMidRun(
  s: Scenario,
  signal: Deno.Signal,
  report: string,
): Promise<CliResult> {
  s.sim.fault({ method: "DELETE", hang: true });
  const run = s.spawnCli(["--config", s.configPath, "--report", report]);
  try {
    await waitFor(
      "the run's first DELETE",
      () => s.sim.requests.some((r) => r.method === "DELETE"),
    );
    run.child.kill(signal);
    return await run.result;
  } finally {
    // Whatever happened above, leave no process behind.
    try {
      run.child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
    await run.result.catch(() => undefined);
  }
}

for (const [signal, code] of [["SIGTERM", 143], ["SIGINT", 130]] as const) {
  Deno.test(`${signal} during a run exits ${code}, leaves the exit code in --report, and the next run finishes the job`, async () => {
    await withScenario(
      { config: { api: { max_concurrency: 1 } } },
      async (s) => {
        seedDisabled(s.sim, 3);
        const baseline = baselineOf(s.sim);
        const report = `${s.dir}/report.json`;

        const stopped = await stopMidRun(s, signal, report);

        assertExit(stopped, code);
        assert.match(
          stopped.stderr,
          new RegExp(`Stopped by ${signal}\\b.*next run resumes`),
        );
        const doc = JSON.parse(await Deno.readTextFile(report));
        assert.equal(doc.exitCode, code);
        assert.match(doc.error, new RegExp(signal));
        assert.equal(s.smtp!.mails.length, 0, "no mail from the stopped run");

        s.sim.clearFaults();
        const resumed = await s.run();

        assertExit(resumed, 0);
        await assertInvariants({
          sim: s.sim,
          mails: s.smtp!.mails,
          stateDir: s.stateDir,
          baseline,
        });
        assert.equal(s.smtp!.mails.length, 1);
      },
    );
  });
}

Deno.test("--report in a directory that does not exist exits 2 before any change, naming the path and --report", async () => {
  await withScenario({}, async (s) => {
    seedDisabled(s.sim, 2);
    const before = s.sim.snapshot();
    const missing = `${s.dir}/no-such-dir`;
    const report = `${missing}/r.json`;

    const result = await s.run("--report", report);

    assertExit(result, 2);
    assert.ok(result.stderr.includes(`"${report}"`), result.stderr);
    assert.match(result.stderr, /--report/);
    assert.deepEqual(nonGets(s.sim), []);
    assert.deepEqual(s.sim.snapshot(), before);
    assert.equal(s.smtp!.sessions.length, 0);
    assert.equal(await exists(missing), false);
    assert.equal(await exists(`${s.stateDir}/journal.json`), false);
  });
});

Deno.test("a leading -- (as deno task start -- ... passes it) is ignored before flags and commands", async () => {
  await withScenario({}, async (s) => {
    const version = await s.runCli(["--", "--version"]);
    assertExit(version, 0);
    assert.equal(version.stdout, `b2access-deprovision ${meta.version}\n`);

    const check = await s.runCli(["--", "check", "--config", s.configPath]);
    assertExit(check, 0);
    assert.ok(
      check.stdout.startsWith(`Configuration ${s.configPath} is valid.`),
      check.stdout,
    );
    assert.match(check.stdout, /All checks passed\.\n$/);
    assert.equal(s.smtp!.mails.length, 0);

    const task = await new Deno.Command(Deno.execPath(), {
      args: ["task", "start", "--", "--version"],
      cwd: fileURLToPath(new URL("..", import.meta.url)),
      env: { DENO_NO_UPDATE_CHECK: "1", NO_COLOR: "1" },
      stdin: "null",
    }).output();
    assert.equal(task.code, 0, new TextDecoder().decode(task.stderr));
    assert.equal(
      new TextDecoder().decode(task.stdout),
      `b2access-deprovision ${meta.version}\n`,
    );
  });
});

Deno.test("an unknown option exits 2 naming it, without Node's advice about positionals and --", async () => {
  for (const option of ["--bogus", "-x"]) {
    const result = await runCli([option]);
    assertExit(result, 2);
    assert.ok(
      result.stderr.includes(`Unknown option '${option}'`),
      result.stderr,
    );
    assert.doesNotMatch(result.stderr, /positional|after '--'|To specify/);
    assert.match(result.stderr, /Run with --help for usage\./);
    assert.equal(result.stdout, "");
  }
});

Deno.test("check with state_dir naming a regular file exits 2 and says it is not a directory", async () => {
  await withScenario({}, async (s) => {
    const file = `${s.dir}/not-a-dir`;
    await Deno.writeTextFile(file, "a file\n");
    await s.writeConfig({ state_dir: file });

    const result = await s.run("check");

    assertExit(result, 2);
    const fail = result.stdout.split("\n").find((l) => l.startsWith("FAIL"));
    assert.ok(fail, result.stdout);
    assert.ok(fail.includes(`state directory ${file}`), fail);
    assert.match(fail, /not a directory/);
    assert.match(result.stdout, /Some checks failed/);
    assert.equal(await Deno.readTextFile(file), "a file\n");
    assert.deepEqual(nonGets(s.sim), []);
  });
});

Deno.test("check while a run holds the lock reports a FAIL line about the lock", async () => {
  await withScenario({ config: { api: { max_concurrency: 1 } } }, async (s) => {
    seedDisabled(s.sim, 2);
    s.sim.fault({ method: "DELETE", hang: true });
    const holder = s.spawnCli(["--config", s.configPath]);
    try {
      await waitFor(
        "the run's first DELETE",
        () => s.sim.requests.some((r) => r.method === "DELETE"),
      );

      const result = await s.run("check");

      assertExit(result, 2);
      const fail = result.stdout.split("\n").find((l) => l.startsWith("FAIL"));
      assert.ok(fail, result.stdout);
      assert.ok(fail.includes(`state directory ${s.stateDir}`), fail);
      assert.match(fail, /another run holds the lock/);
      assert.match(result.stdout, /^ok {4}Unity reachable/m);
    } finally {
      holder.child.kill("SIGKILL");
      await holder.result;
    }
  });
});

Deno.test("a run or dry run whose state_dir is a regular file or has no parent exits 2 naming it, before any request", async () => {
  await withScenario({}, async (s) => {
    seedDisabled(s.sim, 2);
    const before = s.sim.snapshot();
    const file = `${s.dir}/not-a-dir`;
    await Deno.writeTextFile(file, "a file\n");
    const orphan = `${s.dir}/missing-parent/state`;

    const cases = [
      [file, /not a directory/, []],
      [orphan, /No such file or directory/, []],
      [file, /not a directory/, ["--dry-run"]],
      [orphan, /parent directory does not exist/, ["--dry-run"]],
    ] as const;
    for (const [dir, why, flags] of cases) {
      await s.writeConfig({ state_dir: dir });

      const result = await s.run(...flags);

      assertExit(result, 2);
      assert.ok(
        result.stderr.includes(`Cannot use state directory "${dir}"`),
        result.stderr,
      );
      assert.match(result.stderr, why);
      assert.match(result.stderr, /set state_dir/);
    }
    assert.equal(s.sim.requests.length, 0, "no request to Unity");
    assert.deepEqual(s.sim.snapshot(), before);
    assert.equal(s.smtp!.sessions.length, 0);
    assert.equal(await Deno.readTextFile(file), "a file\n");
    assert.equal(await exists(`${s.dir}/missing-parent`), false);
  });
});

Deno.test("a dry run with one unreadable member exits 6, like the real run, and still prints the plan", async () => {
  await withScenario({
    config: {
      api: { bulk_members: false, retries: 0 },
      max_unreadable_share: 0.5,
    },
  }, async (s) => {
    const [first, unreadable, last] = seedDisabled(s.sim, 3);
    s.sim.fault({
      method: "GET",
      path: new RegExp(`^/entity/${unreadable}$`),
      status: 500,
      times: Infinity,
    });
    const before = s.sim.snapshot();

    const dry = await s.run("--dry-run");

    assertExit(dry, 6);
    assert.match(dry.stdout, /^Dry run: nothing was changed\./);
    assert.match(
      dry.stdout,
      /2 to deprovision, 0 already scheduled.*1 unreadable/,
    );
    for (const id of [first, last]) {
      assert.match(dry.stdout, new RegExp(`^${id} `, "m"));
    }
    assert.doesNotMatch(dry.stdout, new RegExp(`^${unreadable} `, "m"));
    assert.match(
      dry.stdout,
      new RegExp(`^Unreadable: entity ${unreadable}: `, "m"),
    );
    assert.ok(
      s.sim.requests.every((r) => !r.path.includes("/group-members")),
      "members listed one by one",
    );
    assert.deepEqual(nonGets(s.sim), []);
    assert.deepEqual(s.sim.snapshot(), before);
    assert.equal(s.smtp!.sessions.length, 0);

    const real = await s.run();

    assertExit(real, 6);
    assert.ok(isScheduled(s.sim, first!) && isScheduled(s.sim, last!));
    assert.deepEqual(
      s.sim.entity(unreadable!),
      before.find((e) => e.id === unreadable),
    );
  });
});

Deno.test("the summary line at --log-level INFO counts accounts and recipients with correct plurals", async () => {
  await withScenario({
    config: { notifications: { email: { to: [RECIPIENTS[0]] } } },
  }, async (s) => {
    seedDisabled(s.sim, 1);

    const one = await s.run("--log-level", "INFO");

    assertExit(one, 0);
    assert.match(
      one.stdout,
      /; notification of 1 account accepted for 1 recipient; /,
    );
    assert.match(one.stdout, /, 0 failures; /);
    assert.doesNotMatch(one.stdout, /\b1 (accounts|recipients|failures)\b/);

    seedDisabled(s.sim, 2);
    await s.writeConfig({ notifications: { email: { to: [...RECIPIENTS] } } });

    const two = await s.run("--log-level", "INFO");

    assertExit(two, 0);
    assert.match(
      two.stdout,
      /; notification of 2 accounts accepted for 3 recipients; /,
    );
  });
});

Deno.test("a reader that closes stdout early does not turn a successful run into an internal error", async () => {
  await withScenario({}, async (s) => {
    seedDisabled(s.sim, 3);
    const closed = { closeStdout: true };

    const dry = await s.runCli(["--config", s.configPath, "--dry-run"], closed);

    assertExit(dry, 0);
    assert.doesNotMatch(dry.stderr, /Internal error|BrokenPipe/i);
    assert.deepEqual(nonGets(s.sim), []);

    const real = await s.runCli([
      "--config",
      s.configPath,
      "--log-level",
      "INFO",
    ], closed);

    assertExit(real, 0);
    assert.doesNotMatch(real.stderr, /Internal error|BrokenPipe/i);
    assert.equal(s.smtp!.mails.length, 1, "the job still finished");
  });
});

Deno.test("check prints the effective config as YAML under the file's own keys, secrets masked, intro_text as a length", async () => {
  await withScenario({}, async (s) => {
    const result = await s.run("check");

    assertExit(result, 0);
    const out = result.stdout;
    const start = out.indexOf("In effect:\n\n") + "In effect:\n\n".length;
    const end = out.search(/^(ok {2}|FAIL)/m);
    assert.ok(start > 0 && end > start, out);
    const yamlText = out.slice(start, end);
    const doc = parseYaml(yamlText) as Record<string, Record<string, unknown>>;

    assert.match(yamlText, /^ {2}base_url: /m);
    assert.match(yamlText, /^retention_period: 365$/m);
    assert.match(yamlText, /^user_group: \/$/m);
    assert.equal(yamlText.match(/^ +password: "\*{8}"$/gm)?.length, 2);
    assert.equal(doc.api!.base_url, s.sim.url);
    assert.equal(doc.api!.user, SECRETS.unityUser);
    assert.equal(doc.api!.password, "********");
    assert.equal(doc.retention_period, 365);
    assert.equal(doc.user_group, "/");
    const email = (doc.notifications!.email ?? {}) as Record<string, unknown>;
    assert.equal(email.password, "********");
    assert.equal(email.from, FROM);
    assert.deepEqual(email.to, [...RECIPIENTS]);
    assert.equal(
      email.intro_text,
      `(${SECRETS.introText.length} characters)`,
    );
    assert.ok(!out.includes(SECRETS.introText), "no mail body");
    assert.ok(!out.includes(SECRETS.unityPassword));
    assert.ok(!out.includes(SECRETS.smtpPassword));
    for (const key of keysOf(doc)) {
      assert.match(key, /^[a-z_]+(\.[a-z_]+)*$/, "snake_case like the file");
    }
  });
});

/** Every key path in a parsed YAML document, dotted. */
function keysOf(value: unknown, prefix = ""): string[] {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return [];
  }
  return Object.entries(value).flatMap(([key, inner]) => [
    `${prefix}${key}`,
    ...keysOf(inner, `${prefix}${key}.`),
  ]);
}

Deno.test("a run killed with SIGKILL leaves a --report that says it was still running", async () => {
  await withScenario({ config: { api: { max_concurrency: 1 } } }, async (s) => {
    seedDisabled(s.sim, 2);
    const report = `${s.dir}/report.json`;

    const killed = await stopMidRun(s, "SIGKILL", report);

    assert.notEqual(killed.code, 0);
    assert.deepEqual(JSON.parse(await Deno.readTextFile(report)), {
      exitCode: null,
      status: "running",
    });
  });
});

Deno.test("a run stopped by the brake lists the refused accounts in --report", async () => {
  await withScenario({ config: { max_accounts_per_run: 2 } }, async (s) => {
    const ids = seedDisabled(s.sim, 3);
    const report = `${s.dir}/report.json`;

    assertExit(await s.run("--report", report), 4);

    const doc = JSON.parse(await Deno.readTextFile(report));
    assert.equal(doc.exitCode, 4);
    assert.equal(doc.limit, 2);
    assert.deepEqual(
      doc.selected.map((a: { entityId: number }) => a.entityId),
      [...ids].sort((a, b) => a - b),
    );
    assert.deepEqual(nonGets(s.sim), []);
  });
});

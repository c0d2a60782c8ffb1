/**
 * `deno task bench`: how fast and how lean a run is at identity-provider
 * scale. Starts the Unity simulator (4.x) seeded with a benchmark population
 * and a local SMTP server, writes a config into a temporary directory, and
 * runs the REAL tool as a separate process (`deno run` with the permission
 * flags of the `start` task) once per mode, each against a freshly seeded
 * simulator. Prints a plain table and the ratios the targets of issue 5 are
 * about; it asserts nothing. Writes only into its temporary directory.
 *
 * Usage: deno task bench [options]
 *   --members N         benchmark population (default 20000)
 *   --latency MS        simulated latency of every request (default 5)
 *   --concurrency C     api.max_concurrency of the default and per-member
 *                       modes (default: the tool's default)
 *   --modes LIST        any of default,per-member,sequential (default: all)
 *   --force-sequential  run the sequential mode above 20000 members too
 *   --tls               serve HTTPS with the test CA instead of HTTP
 *   --v8-flags LIST     also pass --v8-flags=LIST to the tool, e.g.
 *                       --optimize-for-size, to compare against the start task
 *   --timeout S         kill a run of the tool after S seconds (default 1800)
 */

import { parseArgs } from "node:util";
import process from "node:process";
import { DEFAULTS } from "../src/config.ts";
import { seedBench } from "./support/population.ts";
import { MAIN, startFlags, TLS_DIR } from "./support/scenario.ts";
import { SmtpSink } from "./support/smtp.ts";
import { UnitySim } from "./support/unity_sim.ts";

/** Above this many members the sequential mode is skipped unless forced. */
const SEQUENTIAL_MAX_MEMBERS = 20_000;
const POLL_MS = 5;

const TARGETS = {
  speedup: 20,
  perMemberSlack: 2,
  rssMb: 150,
  rssAtMembers: 100_000,
  startupMs: 300,
} as const;

type ModeName = "default" | "per-member" | "sequential";

interface Mode {
  name: ModeName;
  concurrency: number;
  bulk: boolean;
}

interface Measured {
  mode: Mode;
  wallMs: number;
  /** First request sent to last answer received, as the simulator saw them. */
  unityMs: number;
  requests: number;
  peakRssKb: number;
  /** User + system CPU seconds of the tool process, and of this process (the simulator). */
  toolCpuS: number;
  simCpuS: number;
  spawnToFirstMs: number;
  configToFirstMs: number | undefined;
  exitCode: number;
  maxInFlight: number;
  problems: string[];
}

interface Options {
  members: number;
  latencyMs: number;
  concurrency: number;
  modes: ModeName[];
  forceSequential: boolean;
  tls: boolean;
  v8Flags: string | undefined;
  timeoutMs: number;
}

function say(text = ""): void {
  Deno.stdout.writeSync(new TextEncoder().encode(text + "\n"));
}

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      members: { type: "string", default: "20000" },
      latency: { type: "string", default: "5" },
      concurrency: { type: "string" },
      modes: { type: "string", default: "default,per-member,sequential" },
      "force-sequential": { type: "boolean", default: false },
      tls: { type: "boolean", default: false },
      "v8-flags": { type: "string" },
      timeout: { type: "string", default: "1800" },
    },
  });
  const modes = values.modes.split(",").map((m) => m.trim());
  for (const mode of modes) {
    if (!["default", "per-member", "sequential"].includes(mode)) {
      throw new Error(
        `Unknown mode "${mode}": use default, per-member or sequential`,
      );
    }
  }
  return {
    members: whole("--members", values.members),
    latencyMs: whole("--latency", values.latency),
    concurrency: values.concurrency === undefined
      ? DEFAULTS.maxConcurrency
      : whole("--concurrency", values.concurrency),
    modes: modes as ModeName[],
    forceSequential: values["force-sequential"],
    tls: values.tls,
    v8Flags: values["v8-flags"],
    timeoutMs: whole("--timeout", values.timeout) * 1000,
  };
}

function whole(flag: string, value: string): number {
  if (!/^\d+$/.test(value)) {
    throw new Error(`${flag} takes a whole number, got "${value}"`);
  }
  return Number(value);
}

function modesToRun(options: Options): Mode[] {
  const all: Record<ModeName, Mode> = {
    default: { name: "default", concurrency: options.concurrency, bulk: true },
    "per-member": {
      name: "per-member",
      concurrency: options.concurrency,
      bulk: false,
    },
    sequential: { name: "sequential", concurrency: 1, bulk: false },
  };
  return options.modes.map((name) => all[name]);
}

async function testCertificate(): Promise<{ cert: string; key: string }> {
  return {
    cert: await Deno.readTextFile(`${TLS_DIR}server.pem`),
    key: await Deno.readTextFile(`${TLS_DIR}server.key`),
  };
}

async function writeConfig(
  dir: string,
  sim: UnitySim,
  smtp: SmtpSink,
  mode: Mode,
  members: number,
): Promise<string> {
  const file = `${dir}/config.yml`;
  await Deno.writeTextFile(
    file,
    `api:
  base_url: "${sim.url}"
  user: "admin"
  password: "the!admin pass"
  cert_verify: "${TLS_DIR}ca.pem"
  max_concurrency: ${mode.concurrency}
  bulk_members: ${mode.bulk ? "True" : "False"}
attr_whitelist: []
retention_period: 365
notifications:
  email:
    host: "127.0.0.1"
    port: ${smtp.port}
    use_tls: False
    from: "B2ACCESS Notifications <noreply@b2access.example.org>"
    to:
      - "SP Operator <admin@sp.example.org>"
state_dir: "state"
max_accounts_per_run: ${members}
`,
    { mode: 0o600 },
  );
  return file;
}

/** Runs the tool once against a freshly seeded simulator. */
async function measure(mode: Mode, options: Options): Promise<Measured> {
  const simOrigin = performance.now();
  const sim = await UnitySim.start({
    profile: "4.x",
    latencyMs: options.latencyMs,
    ...(options.tls ? { tls: await testCertificate() } : {}),
  });
  const smtp = await SmtpSink.start({ mode: "plain" });
  const dir = await Deno.makeTempDir({ prefix: "b2access-bench-" });
  try {
    const { disabledUnscheduled } = seedBench(sim, {
      members: options.members,
      disabledShare: 0.02,
      attributesPerEntity: 8,
      groupsPerEntity: 2,
    });
    const config = await writeConfig(dir, sim, smtp, mode, options.members);
    const cpuBefore = process.cpuUsage();
    const run = await runTool(config, options);
    const simCpu = process.cpuUsage(cpuBefore);

    const first = sim.requests[0];
    const firstAt = first ? simOrigin + first.at : undefined;
    const problems = [...run.problems];
    if (run.code !== 0) problems.push(`exit code ${run.code}`);
    if (smtp.mails.length !== 1) {
      problems.push(`${smtp.mails.length} mails instead of 1`);
    }
    const unscheduled = disabledUnscheduled.filter((id) =>
      sim.entity(id)?.scheduledOperation !== "REMOVE"
    );
    if (unscheduled.length > 0) {
      problems.push(`${unscheduled.length} disabled accounts not scheduled`);
    }
    const lastEnd = Math.max(...sim.requests.map((r) => r.at + r.durationMs));
    return {
      mode,
      wallMs: run.exitedAt - run.spawnedAt,
      unityMs: first ? lastEnd - first.at : 0,
      requests: sim.requests.length,
      peakRssKb: run.peakRssKb,
      toolCpuS: run.cpuS,
      simCpuS: (simCpu.user + simCpu.system) / 1e6,
      spawnToFirstMs: firstAt === undefined ? NaN : firstAt - run.spawnedAt,
      configToFirstMs: firstAt === undefined || run.configLoadedAt === undefined
        ? undefined
        : firstAt - run.configLoadedAt,
      exitCode: run.code,
      maxInFlight: sim.maxInFlight,
      problems,
    };
  } finally {
    await smtp.close();
    await sim.close();
    await Deno.remove(dir, { recursive: true });
  }
}

interface ToolRun {
  code: number;
  spawnedAt: number;
  exitedAt: number;
  peakRssKb: number;
  cpuS: number;
  /** From the tool's own "configuration loaded" log line, on this clock. */
  configLoadedAt: number | undefined;
  problems: string[];
}

async function runTool(config: string, options: Options): Promise<ToolRun> {
  const { timeoutMs, v8Flags } = options;
  const command = new Deno.Command("deno", {
    args: [
      "run",
      ...startFlags(),
      ...(v8Flags ? [`--v8-flags=${v8Flags}`] : []),
      MAIN,
      "--config",
      config,
      "--log-level",
      "INFO",
      "--log-format",
      "json",
    ],
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  });
  const spawnedAt = performance.now();
  const child = command.spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
  let running = true;
  const status = child.status.finally(() => running = false);
  const [log, { peakRssKb, cpuS }, { code }] = await Promise.all([
    readLog(child.stderr),
    watchProcess(child.pid, () => running),
    status,
  ]);
  const exitedAt = performance.now();
  clearTimeout(timer);
  const problems = log.errors.slice(0, 3);
  if (exitedAt - spawnedAt >= timeoutMs) {
    problems.push(`killed after --timeout ${timeoutMs / 1000} s`);
  }
  return {
    code,
    spawnedAt,
    exitedAt,
    peakRssKb,
    cpuS,
    configLoadedAt: log.configLoadedAt,
    problems,
  };
}

/** Picks the config-load time and any errors out of the JSON log lines. */
async function readLog(
  stream: ReadableStream<Uint8Array>,
): Promise<{ configLoadedAt: number | undefined; errors: string[] }> {
  let configLoadedAt: number | undefined;
  const errors: string[] = [];
  let rest = "";
  const take = (line: string) => {
    let entry: { time?: string; level?: string; message?: string };
    try {
      entry = JSON.parse(line);
    } catch {
      errors.push(line.slice(0, 200));
      return;
    }
    if (entry.message === "configuration loaded" && entry.time) {
      configLoadedAt = Date.parse(entry.time) - performance.timeOrigin;
    }
    if (entry.level === "ERROR" || entry.level === "CRITICAL") {
      errors.push(`${entry.message}`.slice(0, 200));
    }
  };
  for await (const text of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (rest + text).split("\n");
    rest = lines.pop() ?? "";
    lines.filter(Boolean).forEach(take);
  }
  if (rest) take(rest);
  return { configLoadedAt, errors };
}

/**
 * Polls the process's status while it runs: the kernel's high-water mark of
 * its resident set (kB) and the CPU time it has used (s). Reading another
 * process's /proc entry is why the bench task needs --allow-all.
 */
async function watchProcess(
  pid: number,
  running: () => boolean,
): Promise<{ peakRssKb: number; cpuS: number }> {
  let peakRssKb = 0;
  let cpuS = 0;
  while (running()) {
    try {
      const status = await Deno.readTextFile(`/proc/${pid}/status`);
      const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
      const hwm = /^VmHWM:\s+(\d+) kB/m.exec(status)?.[1];
      const rss = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
      peakRssKb = Math.max(peakRssKb, Number(hwm ?? 0), Number(rss ?? 0));
      // utime and stime, fields 14 and 15, in clock ticks of 1/100 s.
      const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      cpuS = (Number(fields[11]) + Number(fields[12])) / 100;
    } catch {
      break; // The process has gone.
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
  return { peakRssKb, cpuS };
}

function table(results: readonly Measured[]): string {
  const header = [
    "mode",
    "conc",
    "bulk",
    "wall s",
    "Unity s",
    "requests",
    "req/s",
    "peak RSS MB",
    "tool CPU s",
    "sim CPU s",
    "spawn->1st req ms",
    "config->1st req ms",
    "max in flight",
    "check",
  ];
  const rows = results.map((r) => [
    r.mode.name,
    String(r.mode.concurrency),
    r.mode.bulk ? "yes" : "no",
    (r.wallMs / 1000).toFixed(2),
    (r.unityMs / 1000).toFixed(2),
    String(r.requests),
    (r.requests / (r.wallMs / 1000)).toFixed(0),
    (r.peakRssKb / 1024).toFixed(1),
    r.toolCpuS.toFixed(1),
    r.simCpuS.toFixed(1),
    r.spawnToFirstMs.toFixed(0),
    r.configToFirstMs?.toFixed(0) ?? "?",
    String(r.maxInFlight),
    r.problems.length === 0 ? "ok" : r.problems.join("; "),
  ]);
  const widths = header.map((h, i) =>
    Math.max(h.length, ...rows.map((row) => row[i]!.length))
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => i === cells.length - 1 ? c : c.padEnd(widths[i]!))
      .join("  ");
  return [
    line(header),
    line(widths.map((w) => "-".repeat(w))),
    ...rows.map(
      line,
    ),
  ].join("\n");
}

function verdict(met: boolean): string {
  return met ? "met" : "MISSED";
}

function ratios(results: readonly Measured[], options: Options): string[] {
  const lines: string[] = [];
  const byName = (name: ModeName) => results.find((r) => r.mode.name === name);
  const fast = byName("default");
  const perMember = byName("per-member");
  const sequential = byName("sequential");

  if (fast && sequential) {
    const speedup = sequential.wallMs / fast.wallMs;
    const applies = options.members === 20_000 && options.latencyMs === 5;
    lines.push(
      `default vs sequential: ${
        speedup.toFixed(1)
      }x faster (target >= ${TARGETS.speedup}x at N=20000, L=5 ms: ${
        applies ? verdict(speedup >= TARGETS.speedup) : "not this N/L"
      })`,
    );
  }
  if (perMember) {
    const boundMs = perMember.requests * options.latencyMs /
      perMember.mode.concurrency;
    const ratio = perMember.wallMs / boundMs;
    lines.push(
      `per-member vs requests x L / concurrency = ${perMember.requests} x ${options.latencyMs} ms / ${perMember.mode.concurrency} = ${
        (boundMs / 1000).toFixed(2)
      } s: ${ratio.toFixed(2)}x (target <= ${TARGETS.perMemberSlack}x: ${
        verdict(ratio <= TARGETS.perMemberSlack)
      })`,
    );
  }
  const peak = Math.max(...results.map((r) => r.peakRssKb)) / 1024;
  lines.push(
    `peak RSS, highest of all modes: ${
      peak.toFixed(1)
    } MB (target < ${TARGETS.rssMb} MB at N=${TARGETS.rssAtMembers}: ${
      options.members >= TARGETS.rssAtMembers
        ? verdict(peak < TARGETS.rssMb)
        : "not this N"
    })`,
  );
  const startups = results.map((r) => r.configToFirstMs)
    .filter((ms): ms is number => ms !== undefined);
  if (startups.length > 0) {
    const worst = Math.max(...startups);
    lines.push(
      `start-up, config load -> first request, worst of all modes: ${
        worst.toFixed(0)
      } ms (target < ${TARGETS.startupMs} ms: ${
        verdict(worst < TARGETS.startupMs)
      })`,
    );
  }
  return lines;
}

async function main(): Promise<number> {
  const options = parseOptions(Deno.args);
  let modes = modesToRun(options);
  const skipSequential = options.members > SEQUENTIAL_MAX_MEMBERS &&
    !options.forceSequential && modes.some((m) => m.name === "sequential");
  if (skipSequential) modes = modes.filter((m) => m.name !== "sequential");

  say(
    `b2access-deprovision benchmark: ${options.members} members (2% disabled, 8 attributes over 2 groups), ` +
      `latency ${options.latencyMs} ms per request, Unity 4.x simulator over ${
        options.tls ? "HTTPS" : "HTTP"
      }, ${navigator.hardwareConcurrency} CPUs, Deno ${Deno.version.deno}`,
  );
  say(
    `The tool runs as \`deno task start\` would run it${
      options.v8Flags ? `, plus --v8-flags=${options.v8Flags}` : ""
    }.`,
  );
  if (skipSequential) {
    say(
      `The sequential mode is skipped above ${SEQUENTIAL_MAX_MEMBERS} members: it is slow by design ` +
        `(about members x latency); --force-sequential runs it.`,
    );
  }
  const results: Measured[] = [];
  for (const mode of modes) {
    say(`running ${mode.name} ...`);
    results.push(await measure(mode, options));
  }
  say("");
  say(table(results));
  say("");
  for (const line of ratios(results, options)) say(line);
  say(
    "\nwall: spawn of `deno run` to exit; Unity: first request to last answer; start-up: the tool's `configuration loaded` log line to the first request the simulator saw.",
  );
  return results.every((r) => r.problems.length === 0) ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());

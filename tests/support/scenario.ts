/**
 * End-to-end scenarios for the CLI tests: starts a simulated Unity and an
 * SMTP server on 127.0.0.1, writes a config file (mode 0600) into a fresh
 * temporary directory with the state directory inside it, and runs main.ts
 * as a subprocess with exactly the permission flags of deno.json's `start`
 * task. It writes only into that temporary directory, removed by `close()`.
 *
 * @example
 * ```ts
 * const s = await startScenario({ profile: "2.x" });
 * try {
 *   s.sim.addEntity({ state: "disabled" });
 *   const { code } = await s.run("--dry-run");
 * } finally {
 *   await s.close();
 * }
 * ```
 */

import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import meta from "../../deno.json" with { type: "json" };
import { type SmtpOptions, SmtpSink, unusedPort } from "./smtp.ts";
import {
  type SimEntity,
  type SimOptions,
  type UnityProfile,
  UnitySim,
} from "./unity_sim.ts";

export const MAIN = fileURLToPath(new URL("../../main.ts", import.meta.url));
export const TLS_DIR = fileURLToPath(
  new URL("../fixtures/tls/", import.meta.url),
);

/** Secrets no output may show; each is distinctive enough to search for. */
export const SECRETS = {
  unityUser: "deprov-admin",
  unityPassword: "Unity-pw!7f3c9a",
  smtpUser: "deprov-mailer",
  smtpPassword: "Smtp-pw#41d2be",
  introText:
    "Mail-body-marker 5e81: these B2ACCESS accounts were deprovisioned",
} as const;

/** The value of the Authorization header the tool sends to Unity. */
export const AUTHORIZATION = btoa(
  `${SECRETS.unityUser}:${SECRETS.unityPassword}`,
);

export const FROM_NAME = "B2ACCESS Notifications";
export const FROM = `${FROM_NAME} <noreply@b2access.example.org>`;
export const RECIPIENTS = [
  "sp1@sp1.example.org",
  "sp2@sp2.example.org",
  "sp3@sp3.example.org",
] as const;

/** What a finished run of the command line left behind. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Wall time of the process, in ms. */
  ms: number;
}

export interface CliOptions {
  /** Added to a minimal environment (PATH, HOME and Deno's cache). */
  env?: Record<string, string>;
  /** Working directory; default the scenario's temporary directory. */
  cwd?: string;
  /** The process is killed (SIGKILL) after this long; default 30 s. */
  timeoutMs?: number;
  /**
   * Close the reading end of stdout at once, as `| head -c0` would; the
   * result's stdout is then "".
   */
  closeStdout?: boolean;
}

/** A running command line, for tests that act while it works. */
export interface CliProcess {
  readonly child: Deno.ChildProcess;
  /** Resolves when the process has exited, whatever the exit code. */
  readonly result: Promise<CliResult>;
}

/** A nested config object; `undefined` removes a key. */
export type ConfigValues = { [key: string]: unknown };

export interface ScenarioOptions {
  /** Default "4.x". */
  profile?: UnityProfile;
  /**
   * How Unity is served: HTTPS with the test CA's server certificate
   * (default; cert_verify names ca.pem), HTTPS with a self-signed one
   * (cert_verify names it), or plain HTTP.
   */
  tls?: "ca" | "selfsigned" | "none";
  /** More simulator options (latency, bulk members...). */
  sim?: Omit<SimOptions, "profile" | "tls" | "user" | "password">;
  /** The SMTP server's behaviour; false: no server (the port is unused). */
  smtp?: SmtpOptions | false;
  /** Deep-merged into the generated config. */
  config?: ConfigValues;
  /** YAML text appended to the generated config, e.g. "dry_run: True". */
  appendYaml?: string;
}

/** A simulator, an SMTP server, a config and a way to run the tool. */
export interface Scenario {
  readonly sim: UnitySim;
  /** The current SMTP server; undefined when started with `smtp: false`. */
  readonly smtp: SmtpSink | undefined;
  readonly dir: string;
  readonly configPath: string;
  readonly stateDir: string;
  /** The config as last written. */
  readonly config: ConfigValues;
  /** Rewrites the config file with `values` deep-merged into the current one. */
  writeConfig(values: ConfigValues, appendYaml?: string): Promise<void>;
  /** Replaces the SMTP server with a new one on a new port, and points the config at it. */
  replaceSmtp(options?: SmtpOptions): Promise<SmtpSink>;
  /** Runs main.ts with `args` exactly. */
  runCli(args: string[], options?: CliOptions): Promise<CliResult>;
  /** Runs main.ts with `--config <this config>` and `args`. */
  run(...args: string[]): Promise<CliResult>;
  /** Starts main.ts without waiting for it. */
  spawnCli(args: string[], options?: CliOptions): CliProcess;
  close(): Promise<void>;
}

/** The permission flags of the `start` task: what the release binary gets. */
export function startFlags(): string[] {
  const words = meta.tasks.start.trim().split(/\s+/);
  const end = words.indexOf("main.ts");
  if (words[0] !== "deno" || words[1] !== "run" || end < 0) {
    throw new Error(
      `Cannot read the start task in deno.json: expected "deno run <flags> main.ts", got "${meta.tasks.start}"`,
    );
  }
  const flags = words.slice(2, end);
  const stray = flags.find((flag) => !flag.startsWith("--"));
  if (stray) {
    throw new Error(`Cannot read the start task: "${stray}" is not a flag`);
  }
  return flags;
}

const FLAGS = startFlags();

/** Environment variables the subprocess inherits: enough for Deno to find its cache. */
const INHERITED = [
  "PATH",
  "HOME",
  "DENO_DIR",
  "XDG_CACHE_HOME",
  "TMPDIR",
  "LANG",
];

/**
 * Starts main.ts as `deno run <start flags> main.ts ...args`, with a minimal
 * environment: nothing of this test process leaks in but what Deno needs.
 */
export function spawnCli(args: string[], options: CliOptions = {}): CliProcess {
  const env: Record<string, string> = { DENO_NO_UPDATE_CHECK: "1" };
  for (const name of INHERITED) {
    const value = Deno.env.get(name);
    if (value !== undefined) env[name] = value;
  }
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", ...FLAGS, MAIN, ...args],
    cwd: options.cwd,
    env: { ...env, ...options.env },
    clearEnv: true,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timeoutMs = options.timeoutMs ?? 30_000;
  const timer = setTimeout(() => {
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }, timeoutMs);
  const output = options.closeStdout
    ? outputWithStdoutClosed(child)
    : child.output();
  const result = output.then((out) => {
    clearTimeout(timer);
    const ms = performance.now() - started;
    if (out.signal === "SIGKILL" && ms >= timeoutMs) {
      throw new Error(
        `main.ts ${args.join(" ")} did not finish within ${timeoutMs} ms`,
      );
    }
    return {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
      ms,
    };
  });
  return { child, result };
}

/** Closes the child's stdout pipe unread, then collects stderr and status. */
async function outputWithStdoutClosed(
  child: Deno.ChildProcess,
): Promise<Deno.CommandOutput> {
  await child.stdout.cancel();
  const [stderr, status] = await Promise.all([
    new Response(child.stderr).bytes(),
    child.status,
  ]);
  return { ...status, stdout: new Uint8Array(), stderr };
}

/** Runs main.ts to the end; see `spawnCli`. */
export function runCli(
  args: string[],
  options: CliOptions = {},
): Promise<CliResult> {
  return spawnCli(args, options).result;
}

/**
 * Starts a simulator and an SMTP server (STARTTLS with the test CA, AUTH
 * required) and writes a config for both into a new temporary directory.
 */
export async function startScenario(
  options: ScenarioOptions = {},
): Promise<Scenario> {
  const tls = options.tls ?? "ca";
  const sim = await UnitySim.start({
    ...options.sim,
    profile: options.profile ?? "4.x",
    user: SECRETS.unityUser,
    password: SECRETS.unityPassword,
    ...(tls === "none" ? {} : { tls: await serverCert(tls) }),
  });
  let smtp: SmtpSink | undefined;
  const retired: SmtpSink[] = [];
  const dir = await Deno.makeTempDir({ prefix: "b2access-e2e-" });
  try {
    smtp = options.smtp === false
      ? undefined
      : await SmtpSink.start(smtpOptions(options.smtp));
    const configPath = `${dir}/config.yml`;
    let config = merge(
      baseConfig(sim, smtp?.port ?? await unusedPort(), tls),
      options.config ?? {},
    );
    let appended = options.appendYaml ?? "";
    const write = async () => {
      const text = stringify(config) + (appended ? `${appended}\n` : "");
      await Deno.writeTextFile(configPath, text, { mode: 0o600 });
      await Deno.chmod(configPath, 0o600);
    };
    await write();

    const scenario: Scenario = {
      sim,
      get smtp() {
        return smtp;
      },
      dir,
      configPath,
      stateDir: `${dir}/state`,
      get config() {
        return config;
      },
      async writeConfig(values, appendYaml) {
        config = merge(config, values);
        if (appendYaml !== undefined) appended = appendYaml;
        await write();
      },
      async replaceSmtp(smtpOpts) {
        if (smtp) retired.push(smtp);
        smtp = await SmtpSink.start(smtpOptions(smtpOpts));
        await scenario.writeConfig({
          notifications: { email: { port: smtp.port } },
        });
        return smtp;
      },
      runCli: (args, opts = {}) => runCli(args, { cwd: dir, ...opts }),
      run: (...args) => runCli(["--config", configPath, ...args], { cwd: dir }),
      spawnCli: (args, opts = {}) => spawnCli(args, { cwd: dir, ...opts }),
      async close() {
        for (const sink of [...retired, smtp]) await sink?.close();
        await sim.close();
        await Deno.remove(dir, { recursive: true });
      },
    };
    return scenario;
  } catch (error) {
    await smtp?.close();
    await sim.close();
    await Deno.remove(dir, { recursive: true });
    throw error;
  }
}

/** Runs `body` in a fresh scenario and always closes it. */
export async function withScenario(
  options: ScenarioOptions,
  body: (s: Scenario) => Promise<void>,
): Promise<void> {
  const s = await startScenario(options);
  try {
    await body(s);
  } finally {
    await s.close();
  }
}

function smtpOptions(options: SmtpOptions = {}): SmtpOptions {
  return {
    mode: "starttls",
    auth: { user: SECRETS.smtpUser, pass: SECRETS.smtpPassword },
    ...options,
  };
}

async function serverCert(
  kind: "ca" | "selfsigned",
): Promise<{ cert: string; key: string }> {
  const name = kind === "ca" ? "server" : "selfsigned";
  return {
    cert: await Deno.readTextFile(`${TLS_DIR}${name}.pem`),
    key: await Deno.readTextFile(`${TLS_DIR}${name}.key`),
  };
}

function baseConfig(
  sim: UnitySim,
  smtpPort: number,
  tls: "ca" | "selfsigned" | "none",
): ConfigValues {
  return {
    api: {
      base_url: sim.url,
      user: SECRETS.unityUser,
      password: SECRETS.unityPassword,
      ...(tls === "none" ? {} : { cert_verify: `${TLS_DIR}${tls}.pem` }),
      // Bounded, so a broken run cannot stall the suite.
      timeout: 10,
    },
    attr_whitelist: [],
    retention_period: 365,
    notifications: {
      email: {
        host: "127.0.0.1",
        port: smtpPort,
        use_tls: true,
        user: SECRETS.smtpUser,
        password: SECRETS.smtpPassword,
        cert_verify: `${TLS_DIR}ca.pem`,
        timeout: 10,
        from: FROM,
        to: [...RECIPIENTS],
        subject: "Deprovisioned B2ACCESS accounts",
        intro_text: SECRETS.introText,
      },
    },
    state_dir: "state",
  };
}

/** `over` deep-merged into a copy of `base`; an undefined value removes the key. */
export function merge(base: ConfigValues, over: ConfigValues): ConfigValues {
  const out: ConfigValues = { ...base };
  for (const [key, value] of Object.entries(over)) {
    if (value === undefined) delete out[key];
    else if (isObject(value) && isObject(out[key])) {
      out[key] = merge(out[key] as ConfigValues, value);
    } else out[key] = value;
  }
  return out;
}

function isObject(value: unknown): value is ConfigValues {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The users.json the original tool would mail for `ids`, written here from
 * the simulator's entities (not from the tool's code): the persistent id
 * (taken after the run, since reading an entity may create it) and the plain
 * addresses of its `email` attributes before the run, keys sorted, 4-space
 * indent, non-ASCII escaped as Python's json.dumps does.
 */
export function expectedUsersJson(
  before: readonly SimEntity[],
  after: (id: number) => SimEntity | undefined,
  ids: readonly number[],
): string {
  const list = [...ids].sort((a, b) => a - b).map((id) => {
    const entity = before.find((e) => e.id === id);
    if (!entity) throw new Error(`No entity ${id} before the run`);
    const persistentId = entity.persistentId ?? after(id)?.persistentId;
    const emails: string[] = [];
    for (const attribute of entity.attributes) {
      if (attribute.name !== "email") continue;
      for (const value of attribute.values) {
        const address = plainAddress(value);
        if (!emails.includes(address)) emails.push(address);
      }
    }
    return { email: emails.length > 0 ? emails : null, id: persistentId };
  });
  return JSON.stringify(list, null, 4).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`,
  );
}

function plainAddress(value: unknown): string {
  if (typeof value === "string" && value.startsWith("{")) {
    return String((JSON.parse(value) as { value: unknown }).value);
  }
  if (typeof value === "object" && value !== null) {
    return String((value as { value: unknown }).value);
  }
  return String(value);
}

/**
 * Resolves once `predicate` holds, polling every 10 ms.
 *
 * @throws {Error} naming `what` when it does not hold within `timeoutMs`.
 */
export async function waitFor(
  what: string,
  predicate: () => boolean,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) {
      throw new Error(`Timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Whether `path` exists. */
export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

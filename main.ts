/**
 * b2access-deprovision: the command line. Reads argv and the environment,
 * runs a command, and maps its outcome to an exit code. The only module
 * that exits the process.
 */

import { parseArgs } from "node:util";
import { stringify as stringifyYaml } from "yaml";
import { resolve } from "node:path";
import meta from "./deno.json" with { type: "json" };
import { runChecks } from "./src/check.ts";
import {
  type Config,
  ConfigError,
  loadConfig,
  redactedConfig,
} from "./src/config.ts";
import { ApiError } from "./src/http.ts";
import { JournalError } from "./src/journal.ts";
import { StateDirError } from "./src/lock.ts";
import {
  createLogger,
  type Level,
  type LogFormat,
  type Logger,
  parseLevel,
  stderrWantsColor,
} from "./src/log.ts";
import { PlanError } from "./src/plan.ts";
import { planTable, reportJson, summaryLine } from "./src/report.ts";
import { BrakeError, EXIT, LockedError, runJob } from "./src/run.ts";

export const CONFIG_ENV = "B2ACCESS_DEPROVISION_CONFIG";

const HELP =
  `b2access-deprovision ${meta.version}: deprovision disabled B2ACCESS (Unity IdM) accounts

Usage:
  b2access-deprovision [run] [options]   strip, schedule removal, notify (default)
  b2access-deprovision check [options]   verify config, Unity and SMTP; change nothing

Options:
  -c, --config PATH        configuration file; default: $${CONFIG_ENV}, then ./config.yml
  -n, --dry-run            read Unity and print the plan; change nothing, send nothing
      --max-accounts N     lift max_accounts_per_run to N for this run
      --log-level LEVEL    DEBUG, INFO, WARNING, ERROR or CRITICAL (overrides log_level)
      --log-format FORMAT  text or json (one JSON object per line)
      --report FILE        write a JSON report of the run to FILE
  -h, --help               show this help
  -V, --version            show the version

Exit codes:
  0  done, or nothing to do
  1  unexpected internal error (a bug: please report it)
  2  usage, configuration, state directory or journal error
  3  Unity could not be read (unreachable, TLS, credentials, group); nothing changed
  4  safety brake: more accounts qualify than max_accounts_per_run; nothing changed
  5  another run holds the lock; nothing done
  6  some accounts, members or recipients failed; the rest was done
  7  the notification could not be delivered; it is retried next run
  130, 143  stopped by SIGINT or SIGTERM; the next run resumes
`;

interface Flags {
  command: "run" | "check";
  config?: string;
  dryRun: boolean;
  maxAccounts?: number;
  logLevel?: Level;
  logFormat?: LogFormat;
  report?: string;
}

class UsageError extends Error {}

/** The --report file cannot be written: there is nowhere to report that. */
class ReportPathError extends UsageError {}

/** Runs the command line and returns the exit code. */
export async function cli(args: string[]): Promise<number> {
  let flags: Flags | "help" | "version";
  try {
    flags = parseFlags(args);
  } catch (error) {
    // Node's advice about "--" and positionals does not apply here.
    const message = (error as Error).message.split(". To specify")[0];
    writeErr(`${message}\nRun with --help for usage.`);
    return EXIT.usage;
  }
  if (flags === "help") return write(HELP), EXIT.ok;
  if (flags === "version") {
    return write(`b2access-deprovision ${meta.version}`), EXIT.ok;
  }

  let log = createLogger({
    level: flags.logLevel ?? "WARNING",
    format: flags.logFormat,
    color: stderrWantsColor(),
  });
  try {
    const path = configPath(flags);
    const { config, warnings } = await loadConfig(path);
    log = createLogger({
      level: flags.logLevel ?? config.logLevel,
      format: flags.logFormat ?? config.logFormat,
      color: stderrWantsColor(),
    });
    log.info("configuration loaded", { file: config.file });
    for (const warning of warnings) log.warn(warning);
    warnInsecure(config, log);
    if (flags.command === "check") return await check(config, log);
    return await whileHandlingSignals(
      log,
      flags,
      () => run(config, flags, log),
    );
  } catch (error) {
    const code = failure(error, log);
    if (flags.report && !(error instanceof ReportPathError)) {
      await writeFailureReport(flags.report, code, error, log);
    }
    return code;
  }
}

async function run(config: Config, flags: Flags, log: Logger): Promise<number> {
  const dryRun = flags.dryRun || config.dryRun;
  if (flags.report) await checkWritable(flags.report);
  let report;
  try {
    report = await runJob({
      config,
      dryRun,
      maxAccounts: flags.maxAccounts ?? config.maxAccountsPerRun,
      log,
      onProgress: progressReporter(log),
    });
  } catch (error) {
    if (error instanceof BrakeError && error.dryRun) {
      write(planTable(error.plan, error.journal, config.retentionDays));
    }
    throw error;
  }
  if (dryRun) {
    write(planTable(report.plan, report.accounts, config.retentionDays));
  } else if (log.enabled("INFO") || report.exitCode !== EXIT.ok) {
    write(summaryLine(report));
  }
  if (flags.report) {
    await Deno.writeTextFile(flags.report, reportJson(report) + "\n");
  }
  return report.exitCode;
}

const CHECK_EXIT = { state: EXIT.usage, unity: EXIT.api, smtp: EXIT.mail };

async function check(config: Config, log: Logger): Promise<number> {
  const effective = stringifyYaml(redactedConfig(config));
  write(`Configuration ${config.file} is valid. In effect:\n\n${effective}`);
  let code: number = EXIT.ok;
  for await (const result of runChecks(config, log)) {
    write(`${result.ok ? "ok  " : "FAIL"}  ${result.name}: ${result.detail}`);
    if (!result.ok && code === EXIT.ok) {
      code = CHECK_EXIT[result.area];
    }
  }
  write(
    code === EXIT.ok
      ? "\nAll checks passed."
      : "\nSome checks failed: fix what is named above and run check again.",
  );
  return code;
}

function failure(error: unknown, log: Logger): number {
  if (
    error instanceof ConfigError || error instanceof JournalError ||
    error instanceof StateDirError
  ) {
    if (log.format === "json") log.error(error.message);
    else writeErr(error.message);
    return EXIT.usage;
  }
  if (error instanceof UsageError) {
    log.error(error.message);
    return EXIT.usage;
  }
  if (error instanceof BrakeError) {
    log.error(error.message);
    return EXIT.brake;
  }
  if (error instanceof LockedError) {
    log.error(error.message);
    return EXIT.locked;
  }
  if (error instanceof ApiError || error instanceof PlanError) {
    log.error(`${error.message.replace(/\.$/, "")}. Nothing was changed.`);
    return EXIT.api;
  }
  log.error(
    `Internal error: ${
      (error as Error)?.message ?? error
    }. This is a bug; please report it with this output`,
    {
      stack: (error as Error)?.stack,
    },
  );
  return EXIT.internal;
}

const SIGNALS = { SIGINT: 2, SIGTERM: 15 } as const;

/**
 * Ctrl-C or systemd's SIGTERM: every journal write is atomic, so stopping
 * at once is as safe as being killed; say so, leave the report, and exit.
 */
async function whileHandlingSignals(
  log: Logger,
  flags: Flags,
  work: () => Promise<number>,
): Promise<number> {
  const handlers = Object.entries(SIGNALS).map(([name, number]) => {
    const handler = () => {
      const code = 128 + number;
      const message =
        `Stopped by ${name}: finished steps are in the journal and the next run resumes`;
      log.error(message);
      if (flags.report) {
        Deno.writeTextFileSync(
          flags.report,
          JSON.stringify({ exitCode: code, error: message }, null, 2) + "\n",
        );
      }
      Deno.exit(code);
    };
    Deno.addSignalListener(name as Deno.Signal, handler);
    return [name as Deno.Signal, handler] as const;
  });
  try {
    return await work();
  } finally {
    for (const [name, handler] of handlers) {
      Deno.removeSignalListener(name, handler);
    }
  }
}

/**
 * Fails before any change if the report could not be written at the end,
 * and leaves a valid report saying the run is under way (what a SIGKILL
 * leaves behind).
 */
async function checkWritable(file: string): Promise<void> {
  try {
    // Until the run ends, the report says so: never an empty file.
    await Deno.writeTextFile(
      file,
      JSON.stringify({ exitCode: null, status: "running" }) + "\n",
    );
  } catch (error) {
    throw new ReportPathError(
      `Cannot write report "${file}": ${
        (error as Error).message
      } (fix --report)`,
    );
  }
}

/** A run that stopped early still leaves a report for monitoring. */
async function writeFailureReport(
  file: string,
  exitCode: number,
  error: unknown,
  log: Logger,
): Promise<void> {
  const message = error instanceof Error ? error.message : String(error);
  // The brake knows what it refused: monitoring should see it too.
  const brake = error instanceof BrakeError
    ? { limit: error.limit, selected: error.plan.accounts }
    : {};
  try {
    await Deno.writeTextFile(
      file,
      JSON.stringify({ exitCode, error: message, ...brake }, null, 2) + "\n",
    );
  } catch (writeError) {
    log.error(
      `Cannot write report "${file}": ${(writeError as Error).message}`,
    );
  }
}

function parseFlags(args: string[]): Flags | "help" | "version" {
  const { values, positionals } = parseArgs({
    // `deno task start -- --help` passes its `--` through.
    args: args[0] === "--" ? args.slice(1) : args,
    allowPositionals: true,
    strict: true,
    options: {
      config: { type: "string", short: "c" },
      "dry-run": { type: "boolean", short: "n" },
      "max-accounts": { type: "string" },
      "log-level": { type: "string" },
      "log-format": { type: "string" },
      report: { type: "string" },
      help: { type: "boolean", short: "h" },
      version: { type: "boolean", short: "V" },
    },
  });
  if (values.help) return "help";
  if (values.version) return "version";
  const [command = "run", ...extra] = positionals;
  if (command !== "run" && command !== "check") {
    throw new UsageError(`Unknown command "${command}": use run or check`);
  }
  if (extra.length > 0) {
    throw new UsageError(`Unexpected argument "${extra[0]}"`);
  }
  return {
    command,
    config: values.config,
    dryRun: values["dry-run"] ?? false,
    maxAccounts: parseCount(values["max-accounts"]),
    logLevel: parseLevelFlag(values["log-level"]),
    logFormat: parseFormat(values["log-format"]),
    report: values.report,
  };
}

function parseCount(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) {
    throw new UsageError(`--max-accounts takes a whole number, got "${value}"`);
  }
  return Number(value);
}

function parseLevelFlag(value: string | undefined): Level | undefined {
  if (value === undefined) return undefined;
  const level = parseLevel(value);
  if (!level) {
    throw new UsageError(
      `--log-level takes DEBUG, INFO, WARNING, ERROR or CRITICAL, got "${value}"`,
    );
  }
  return level;
}

function parseFormat(value: string | undefined): LogFormat | undefined {
  if (value === undefined || value === "text" || value === "json") return value;
  throw new UsageError(`--log-format takes text or json, got "${value}"`);
}

/** --config, then the environment, then ./config.yml, as an absolute path. */
function configPath(flags: Flags): string {
  return resolve(flags.config ?? Deno.env.get(CONFIG_ENV) ?? "config.yml");
}

function warnInsecure(config: Config, log: Logger): void {
  if (config.api.trust.kind === "insecure") {
    log.warn(
      "api.cert_verify is false: Unity's certificate is NOT verified; anyone on the path can read the admin password",
    );
  }
  if (
    config.email.trust.kind === "insecure" && config.email.security !== "none"
  ) {
    log.warn(
      "notifications.email.cert_verify is false: the SMTP server's certificate is NOT verified",
    );
  }
}

/** A progress line on a terminal only; cron and pipes get nothing. */
function progressReporter(
  log: Logger,
): ((done: number, total: number) => void) | undefined {
  if (!Deno.stderr.isTerminal() || log.format === "json") return undefined;
  let last = 0;
  return (done, total) => {
    const now = Date.now();
    if (done < total && now - last < 100) return;
    last = now;
    Deno.stderr.writeSync(
      new TextEncoder().encode(
        `\rreading members: ${done}/${total}${done === total ? "\n" : ""}`,
      ),
    );
  };
}

function write(text: string): void {
  writeTo(Deno.stdout, text);
}

function writeErr(text: string): void {
  writeTo(Deno.stderr, text);
}

function writeTo(stream: { writeSync(p: Uint8Array): number }, text: string) {
  const bytes = new TextEncoder().encode(
    text.endsWith("\n") ? text : text + "\n",
  );
  try {
    for (let done = 0; done < bytes.length;) {
      done += stream.writeSync(bytes.subarray(done));
    }
  } catch (error) {
    // A reader that went away (`| head`) is not our failure.
    if (!(error instanceof Deno.errors.BrokenPipe)) throw error;
  }
}

if (import.meta.main) Deno.exit(await cli(Deno.args));

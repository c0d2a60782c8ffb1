/**
 * The one logger: reads a level, a format and whether stderr is a colour
 * terminal; writes one line per event to stderr (or to a sink given by a
 * test). Library code logs only through a `Logger` handed to it.
 *
 * Fields whose name looks like a secret are masked here, as a last line of
 * defence: callers never pass passwords, but a mistake must not leak one.
 */

export const LEVELS = [
  "DEBUG",
  "INFO",
  "WARNING",
  "ERROR",
  "CRITICAL",
] as const;
export type Level = typeof LEVELS[number];
export type LogFormat = "text" | "json";
export type Fields = Record<string, unknown>;

/** Where log lines go; the default writes to stderr. */
export type Sink = (line: string) => void;

/** A leveled logger with structured fields. */
export interface Logger {
  readonly level: Level;
  readonly format: LogFormat;
  debug(message: string, fields?: Fields): void;
  info(message: string, fields?: Fields): void;
  warn(message: string, fields?: Fields): void;
  error(message: string, fields?: Fields): void;
  enabled(level: Level): boolean;
}

export interface LoggerOptions {
  level: Level;
  format?: LogFormat;
  color?: boolean;
  sink?: Sink;
}

const SECRET_FIELD = /password|^pass$|secret|authorization|credential|token/i;
const COLORS: Record<Level, string> = {
  DEBUG: "\x1b[2m",
  INFO: "\x1b[36m",
  WARNING: "\x1b[33m",
  ERROR: "\x1b[31m",
  CRITICAL: "\x1b[1;31m",
};
const encoder = new TextEncoder();

/** Writes a line to stderr synchronously, so nothing is lost on exit. */
export function stderrSink(line: string): void {
  Deno.stderr.writeSync(encoder.encode(line + "\n"));
}

/** Whether stderr should get colour: a terminal, and `NO_COLOR` unset. */
export function stderrWantsColor(): boolean {
  return Deno.stderr.isTerminal() && !Deno.env.get("NO_COLOR");
}

/** Parses a level name as the Python tool accepted it (any case, WARN too). */
export function parseLevel(value: string): Level | undefined {
  const upper = value.trim().toUpperCase();
  if (upper === "WARN") return "WARNING";
  if (upper === "FATAL") return "CRITICAL";
  return LEVELS.find((level) => level === upper);
}

/** Creates a logger that drops lines below `level`. */
export function createLogger(options: LoggerOptions): Logger {
  const threshold = LEVELS.indexOf(options.level);
  const sink = options.sink ?? stderrSink;
  const format = options.format ?? "text";
  const color = options.color ?? false;
  const enabled = (level: Level) => LEVELS.indexOf(level) >= threshold;

  const emit = (level: Level, message: string, fields: Fields = {}) => {
    if (!enabled(level)) return;
    const safe = maskSecrets(fields);
    sink(
      format === "json"
        ? formatJson(level, message, safe)
        : formatText(level, message, safe, color),
    );
  };

  return {
    level: options.level,
    format,
    enabled,
    debug: (message, fields) => emit("DEBUG", message, fields),
    info: (message, fields) => emit("INFO", message, fields),
    warn: (message, fields) => emit("WARNING", message, fields),
    error: (message, fields) => emit("ERROR", message, fields),
  };
}

/** A logger that records lines in memory; for tests and quiet callers. */
export function memoryLogger(level: Level = "DEBUG"): Logger & {
  lines: string[];
} {
  const lines: string[] = [];
  const logger = createLogger({ level, sink: (line) => lines.push(line) });
  return Object.assign(logger, { lines });
}

function maskSecrets(fields: Fields): Fields {
  const out: Fields = {};
  for (const [key, value] of Object.entries(fields)) {
    if (SECRET_FIELD.test(key) && value != null) out[key] = "********";
    else if (isPlainObject(value)) out[key] = maskSecrets(value);
    else out[key] = value;
  }
  return out;
}

function isPlainObject(value: unknown): value is Fields {
  return typeof value === "object" && value !== null &&
    Object.getPrototypeOf(value) === Object.prototype;
}

function formatText(
  level: Level,
  message: string,
  fields: Fields,
  color: boolean,
): string {
  const tag = color ? `${COLORS[level]}${level}\x1b[0m` : level;
  const extra = Object.entries(fields)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => `${key}=${formatValue(value)}`)
    .join(" ");
  return extra ? `${tag} ${message} ${extra}` : `${tag} ${message}`;
}

function formatValue(value: unknown): string {
  if (typeof value === "string") {
    return /^[\w.:/@%+-]+$/.test(value) ? value : JSON.stringify(value);
  }
  return JSON.stringify(value) ?? String(value);
}

function formatJson(level: Level, message: string, fields: Fields): string {
  return JSON.stringify({
    time: new Date().toISOString(),
    level,
    message,
    ...fields,
  });
}

/**
 * Reads the YAML configuration written for the Python tool (PyYAML, YAML
 * 1.1), plus this tool's optional keys, and validates it once into a typed,
 * frozen `Config`. Every problem is collected with its key path and line and
 * reported together, before any network call.
 */

import { isMap, isScalar, LineCounter, parseDocument } from "yaml";
import type { Document, Node as YamlNode, Tags } from "yaml";
import { dirname, resolve } from "node:path";
import { type Level, type LogFormat, parseLevel } from "./log.ts";

/** How a TLS peer is verified. */
export type Trust =
  | { readonly kind: "default" }
  | { readonly kind: "insecure" }
  | { readonly kind: "ca"; readonly path: string; readonly pem: string };

export interface ApiConfig {
  readonly baseUrl: string;
  readonly path: string;
  readonly version: string;
  readonly user: string;
  readonly password: string;
  readonly trust: Trust;
  readonly timeoutMs: number;
  readonly maxConcurrency: number;
  readonly bulkMembers: boolean;
  readonly retries: number;
}

/** `starttls` is the original `use_tls: True`; `implicit` is port-465 TLS. */
export type SmtpSecurity = "none" | "starttls" | "implicit";

export interface EmailConfig {
  readonly host: string;
  readonly port: number;
  readonly security: SmtpSecurity;
  readonly user: string | null;
  readonly password: string | null;
  readonly from: string;
  readonly to: readonly string[];
  readonly subject: string;
  readonly introText: string;
  readonly trust: Trust;
  readonly allowInsecureAuth: boolean;
  readonly timeoutMs: number;
}

export interface Config {
  /** Absolute path of the file this was read from. */
  readonly file: string;
  readonly api: ApiConfig;
  readonly attrWhitelist: readonly string[];
  readonly retentionDays: number;
  readonly email: EmailConfig;
  readonly userGroup: string;
  readonly logLevel: Level;
  readonly logFormat: LogFormat;
  readonly dryRun: boolean;
  readonly stateDir: string;
  readonly maxAccountsPerRun: number;
  readonly maxUnreadableShare: number;
  readonly runTimeoutMs: number;
}

/** One thing wrong with the configuration. */
export interface Problem {
  readonly key: string;
  readonly line?: number;
  readonly message: string;
}

/** The configuration cannot be used; `problems` lists every reason. */
export class ConfigError extends Error {
  readonly file: string;
  readonly problems: readonly Problem[];

  constructor(file: string, problems: readonly Problem[], cause?: unknown) {
    const lines = problems.map((p) =>
      `  - ${p.key}${p.line ? ` (line ${p.line})` : ""}: ${p.message}`
    );
    super(
      `Cannot use config "${file}": ${problems.length} problem(s)\n` +
        lines.join("\n"),
      { cause },
    );
    this.name = "ConfigError";
    this.file = file;
    this.problems = problems;
  }
}

/** The original tool's defaults, kept so an old config means the same. */
export const DEFAULTS = {
  apiPath: "rest-admin",
  apiVersion: "v1",
  retentionDays: 365,
  smtpHost: "localhost",
  smtpPort: 25,
  subject: "Deprovisioned B2ACCESS accounts",
  introText: "See attachment for details of deprovisioned B2ACCESS accounts." +
    "\n\nNote: This is an automated email, please don't reply.",
  userGroup: "/",
  logLevel: "WARNING" as Level,
  apiTimeoutSeconds: 30,
  smtpTimeoutSeconds: 30,
  maxConcurrency: 8,
  retries: 3,
  maxAccountsPerRun: 100,
  maxUnreadableShare: 0.05,
  runTimeoutSeconds: 3600,
} as const;

/** Environment variables that override a password from the file. */
export const PASSWORD_ENV = {
  api: "B2ACCESS_API_PASSWORD",
  smtp: "B2ACCESS_SMTP_PASSWORD",
} as const;

/** Timers cannot wait longer than 2^31 - 1 ms; a week is plenty. */
const MAX_SECONDS = 7 * 86_400;

type Shape = { readonly [key: string]: Shape | null };

/** Every key the file may hold; `null` marks a leaf. */
const KNOWN_KEYS: Shape = {
  api: {
    base_url: null,
    path: null,
    version: null,
    user: null,
    password: null,
    password_file: null,
    cert_verify: null,
    timeout: null,
    max_concurrency: null,
    bulk_members: null,
    retries: null,
  },
  attr_whitelist: null,
  retention_period: null,
  notifications: {
    email: {
      host: null,
      port: null,
      use_tls: null,
      implicit_tls: null,
      user: null,
      password: null,
      password_file: null,
      from: null,
      to: null,
      subject: null,
      intro_text: null,
      cert_verify: null,
      allow_insecure_auth: null,
      timeout: null,
    },
  },
  user_group: null,
  log_level: null,
  log_format: null,
  dry_run: null,
  state_dir: null,
  max_accounts_per_run: null,
  max_unreadable_share: null,
  run_timeout: null,
};

export interface LoadOptions {
  /** Reads environment variables; defaults to `Deno.env.get`. */
  env?: (name: string) => string | undefined;
}

export interface Loaded {
  readonly config: Config;
  /** Things the operator should fix that do not stop the run. */
  readonly warnings: readonly string[];
}

/**
 * Reads and validates the configuration file at `path`.
 *
 * @throws {ConfigError} when the file cannot be read or holds any problem.
 */
export async function loadConfig(
  path: string,
  options: LoadOptions = {},
): Promise<Loaded> {
  const file = resolve(path);
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (error) {
    const reason = error instanceof Deno.errors.NotFound
      ? "file not found (the path comes from --config, else B2ACCESS_DEPROVISION_CONFIG, else ./config.yml)"
      : `cannot read it: ${(error as Error).message}`;
    throw new ConfigError(file, [{ key: "(file)", message: reason }], error);
  }
  const loaded = parseConfig(text, file, options);
  return {
    ...loaded,
    warnings: [...loaded.warnings, ...permissionWarnings(file, text)],
  };
}

/**
 * Validates configuration text as if read from `file` (used for relative
 * paths and messages).
 *
 * @throws {ConfigError} listing every problem found.
 */
export function parseConfig(
  text: string,
  file: string,
  options: LoadOptions = {},
): Loaded {
  const lineCounter = new LineCounter();
  // PyYAML reads YAML 1.1: True/False/yes/no are booleans there.
  const doc = parseDocument(text, {
    version: "1.1",
    customTags: pyyamlBooleans,
    lineCounter,
    prettyErrors: false,
    uniqueKeys: true,
  });
  const syntax = doc.errors.map((e): Problem => ({
    key: e.code === "DUPLICATE_KEY"
      ? `(duplicate key ${JSON.stringify(keyAt(text, e.pos[0]))})`
      : "(syntax)",
    line: lineCounter.linePos(e.pos[0]).line,
    message: e.message.split("\n")[0] ?? e.message,
  }));
  // A duplicate key still leaves a usable document: report the rest too.
  if (doc.errors.some((e) => e.code !== "DUPLICATE_KEY")) {
    throw new ConfigError(file, syntax);
  }

  const reader = new Reader(doc, lineCounter, file, options.env ?? envGet);
  const config = reader.read();
  const problems = [...syntax, ...reader.problems];
  if (problems.length > 0) throw new ConfigError(file, problems);
  return { config: deepFreeze(config), warnings: reader.warnings };
}

/** The key written at `offset` (yaml's error points at its first character). */
function keyAt(text: string, offset: number): string {
  const key = /^\s*(?:"([^"]*)"|'([^']*)'|([^:#\n]+?))\s*:/.exec(
    text.slice(offset),
  );
  return key?.[1] ?? key?.[2] ?? key?.[3] ?? text.slice(offset).split("\n")[0]!;
}

function envGet(name: string): string | undefined {
  return Deno.env.get(name);
}

/** Reads typed values out of the document, recording every problem. */
class Reader {
  readonly problems: Problem[] = [];
  readonly warnings: string[] = [];
  readonly #data: unknown;

  constructor(
    readonly doc: Document,
    readonly lines: LineCounter,
    readonly file: string,
    readonly env: (name: string) => string | undefined,
  ) {
    this.#data = doc.toJS();
  }

  read(): Config {
    if (!isPlainObject(this.#data)) {
      this.problem(
        [],
        "the file must be a YAML mapping of keys (see config.yml.example)",
      );
      return undefined as unknown as Config;
    }
    this.checkUnknownKeys(this.#data, KNOWN_KEYS, []);
    this.required(["api"]);
    this.required(["notifications", "email"]);
    const dir = dirname(this.file);
    const stateDir = this.str(["state_dir"]);
    return {
      file: this.file,
      api: this.api(),
      attrWhitelist: this.strList(["attr_whitelist"]) ?? [],
      retentionDays: this.num(["retention_period"], { min: 1, max: 36500 }) ??
        DEFAULTS.retentionDays,
      email: this.email(),
      userGroup: normalizeGroup(this.str(["user_group"]) ?? DEFAULTS.userGroup),
      logLevel: this.level(),
      logFormat: this.oneOf(["log_format"], ["text", "json"] as const) ??
        "text",
      dryRun: this.bool(["dry_run"]) ?? false,
      stateDir: stateDir === undefined ? dir : resolve(dir, stateDir),
      maxAccountsPerRun: this.int(["max_accounts_per_run"], { min: 0 }) ??
        DEFAULTS.maxAccountsPerRun,
      maxUnreadableShare:
        this.num(["max_unreadable_share"], { min: 0, max: 1 }) ??
          DEFAULTS.maxUnreadableShare,
      runTimeoutMs: seconds(
        this.num(["run_timeout"], { min: 1, max: MAX_SECONDS }) ??
          DEFAULTS.runTimeoutSeconds,
      ),
    };
  }

  api(): ApiConfig {
    const at = (key: string) => ["api", key];
    const baseUrl = this.url(at("base_url"));
    const user = this.str(at("user"), { required: true }) ?? "";
    const password = this.password("api", PASSWORD_ENV.api, true) ?? "";
    if (!isPrintableAscii(user)) {
      this.problem(at("user"), NOT_ASCII);
    }
    return {
      baseUrl: baseUrl ?? "",
      path: trimSlashes(this.str(at("path")) ?? DEFAULTS.apiPath),
      version: trimSlashes(this.str(at("version")) ?? DEFAULTS.apiVersion),
      user,
      password,
      trust: this.trust(at("cert_verify")),
      timeoutMs: seconds(
        this.num(at("timeout"), { min: 0.1, max: MAX_SECONDS }) ??
          DEFAULTS.apiTimeoutSeconds,
      ),
      maxConcurrency: this.int(at("max_concurrency"), { min: 1, max: 256 }) ??
        DEFAULTS.maxConcurrency,
      bulkMembers: this.bool(at("bulk_members")) ?? true,
      retries: this.int(at("retries"), { min: 0, max: 10 }) ?? DEFAULTS.retries,
    };
  }

  email(): EmailConfig {
    const at = (key: string) => ["notifications", "email", key];
    const useTls = this.bool(at("use_tls")) ?? false;
    const implicitTls = this.bool(at("implicit_tls")) ?? false;
    if (useTls && implicitTls) {
      this.problem(
        at("implicit_tls"),
        "use_tls (STARTTLS) and implicit_tls exclude each other: set only one to true",
      );
    }
    const user = this.str(at("user")) ?? null;
    const password =
      this.password("notifications.email", PASSWORD_ENV.smtp, false) ?? null;
    if ((user === null) !== (password === null)) {
      this.problem(
        at(user === null ? "user" : "password"),
        "SMTP authentication needs both user and password (or neither)",
      );
    }
    const allowInsecureAuth = this.bool(at("allow_insecure_auth")) ?? false;
    if (user !== null && !useTls && !implicitTls && !allowInsecureAuth) {
      this.problem(
        at("user"),
        "credentials would cross the network in clear text: set use_tls: true (STARTTLS) or implicit_tls: true, or allow_insecure_auth: true for a relay on this host",
      );
    }
    return {
      host: this.str(at("host")) ?? DEFAULTS.smtpHost,
      port: this.int(at("port"), { min: 1, max: 65535 }) ??
        (implicitTls ? 465 : DEFAULTS.smtpPort),
      security: implicitTls ? "implicit" : useTls ? "starttls" : "none",
      user,
      password,
      from: this.str(at("from"), { required: true }) ?? "",
      to: this.recipients(at("to")),
      subject: this.str(at("subject")) ?? DEFAULTS.subject,
      introText: this.str(at("intro_text")) ?? DEFAULTS.introText,
      trust: this.trust(at("cert_verify")),
      allowInsecureAuth,
      timeoutMs: seconds(
        this.num(at("timeout"), { min: 0.1, max: MAX_SECONDS }) ??
          DEFAULTS.smtpTimeoutSeconds,
      ),
    };
  }

  /** A password: the environment wins, then `password_file`, then `password`. */
  password(
    section: string,
    envName: string,
    required: boolean,
  ): string | undefined {
    const base = section.split(".");
    const inline = this.str([...base, "password"]);
    const fileKey = [...base, "password_file"];
    const fromFile = this.str(fileKey);
    if (inline !== undefined && fromFile !== undefined) {
      this.problem(fileKey, "set either password or password_file, not both");
    }
    const fromEnv = this.env(envName);
    const [key, secret] = fromEnv
      ? [[`$${envName}`], fromEnv]
      : fromFile !== undefined
      ? [fileKey, this.readSecretFile(fileKey, fromFile)]
      : [[...base, "password"], inline];
    if (secret === undefined && fromFile === undefined && required) {
      this.problem(
        key,
        `missing: set password, password_file or the environment variable ${envName}`,
      );
    }
    // Unity decodes Basic credentials as US-ASCII: anything else never matches.
    if (section === "api" && secret && !isPrintableAscii(secret)) {
      this.problem(key, NOT_ASCII);
    }
    return secret;
  }

  readSecretFile(key: string[], path: string): string | undefined {
    const full = resolve(dirname(this.file), path);
    let secret;
    try {
      secret = Deno.readTextFileSync(full).replace(/[\r\n]+$/, "");
    } catch (error) {
      this.problem(key, `cannot read "${full}": ${(error as Error).message}`);
      return undefined;
    }
    if (secret === "") this.problem(key, `"${full}" is empty`);
    return secret || undefined;
  }

  trust(key: string[]): Trust {
    const value = this.get(key);
    if (value === undefined || value === true) return { kind: "default" };
    if (value === false) return { kind: "insecure" };
    if (typeof value !== "string" || value === "") {
      this.problem(
        key,
        `expected true, false or the path of a CA bundle, got ${show(value)}`,
      );
      return { kind: "default" };
    }
    const path = resolve(dirname(this.file), value);
    try {
      const pem = Deno.readTextFileSync(path);
      if (!pem.includes("-----BEGIN CERTIFICATE-----")) {
        this.problem(
          key,
          `"${path}" holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)`,
        );
      }
      return { kind: "ca", path, pem };
    } catch (error) {
      this.problem(
        key,
        `cannot read CA bundle "${path}": ${(error as Error).message}`,
      );
      return { kind: "default" };
    }
  }

  url(key: string[]): string | undefined {
    const value = this.str(key, { required: true });
    if (value === undefined) return undefined;
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      this.problem(
        key,
        `${
          show(value)
        } is not a URL (expected e.g. https://unity.example.org:8443)`,
      );
      return undefined;
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") {
      this.problem(key, `${show(value)} must start with https:// (or http://)`);
    }
    if (url.search || url.hash || url.username || url.password) {
      this.problem(
        key,
        `${show(value)} must not carry a query, fragment or credentials`,
      );
    }
    return value.replace(/\/+$/, "");
  }

  recipients(key: string[]): string[] {
    const value = this.get(key);
    if (typeof value === "string" && value !== "") return [value];
    const list = this.strList(key);
    if (list === undefined || list.length === 0) {
      this.problem(key, "missing: list at least one recipient address");
      return [];
    }
    return list;
  }

  level(): Level {
    const value = this.str(["log_level"]);
    if (value === undefined) return DEFAULTS.logLevel;
    const level = parseLevel(value);
    if (level === undefined) {
      this.problem(
        ["log_level"],
        `${show(value)} is not one of CRITICAL, ERROR, WARNING, INFO, DEBUG`,
      );
    }
    return level ?? DEFAULTS.logLevel;
  }

  oneOf<T extends string>(key: string[], choices: readonly T[]): T | undefined {
    const value = this.str(key);
    if (value === undefined) return undefined;
    if (!choices.includes(value as T)) {
      this.problem(key, `${show(value)} is not one of ${choices.join(", ")}`);
      return undefined;
    }
    return value as T;
  }

  /** A string; an empty one reads as absent, as the Python tool's `or`. */
  str(key: string[], opts: { required?: boolean } = {}): string | undefined {
    const value = this.get(key);
    if (value === undefined || value === "") {
      if (opts.required) this.problem(key, "missing: this key is required");
      return undefined;
    }
    if (typeof value === "number" && key.at(-1) === "password") {
      return String(value);
    }
    if (typeof value !== "string") {
      this.problem(key, `expected a string, got ${show(value)}`);
      return undefined;
    }
    return value;
  }

  strList(key: string[]): string[] | undefined {
    const value = this.get(key);
    if (value === undefined) return undefined;
    if (!Array.isArray(value) || !value.every((v) => typeof v === "string")) {
      this.problem(key, `expected a list of strings, got ${show(value)}`);
      return undefined;
    }
    return value;
  }

  bool(key: string[]): boolean | undefined {
    const value = this.get(key);
    if (value === undefined || typeof value === "boolean") return value;
    this.problem(key, `expected true or false, got ${show(value)}`);
    return undefined;
  }

  num(
    key: string[],
    range: { min?: number; max?: number } = {},
  ): number | undefined {
    const value = this.get(key);
    if (value === undefined) return undefined;
    if (typeof value !== "number" || !Number.isFinite(value)) {
      this.problem(key, `expected a number, got ${show(value)}`);
      return undefined;
    }
    if (
      (range.min !== undefined && value < range.min) ||
      (range.max !== undefined && value > range.max)
    ) {
      this.problem(
        key,
        `${value} is out of range (${range.min ?? "-∞"} to ${
          range.max ?? "∞"
        })`,
      );
      return undefined;
    }
    return value;
  }

  int(
    key: string[],
    range: { min?: number; max?: number } = {},
  ): number | undefined {
    const value = this.num(key, range);
    if (value !== undefined && !Number.isInteger(value)) {
      this.problem(key, `expected a whole number, got ${value}`);
      return undefined;
    }
    return value;
  }

  required(key: string[]): void {
    const value = this.get(key);
    if (value === undefined) {
      this.problem(key, "missing: this section is required");
    } else if (!isPlainObject(value)) {
      this.problem(key, `expected a mapping of keys, got ${show(value)}`);
    }
  }

  /** The value at `key`; YAML null (an empty value) reads as absent. */
  get(key: string[]): unknown {
    let node: unknown = this.#data;
    for (const part of key) {
      if (!isPlainObject(node)) return undefined;
      node = node[part];
    }
    // An empty value means the default, as the Python tool's `or` had it.
    return node === null || node === "" ? undefined : node;
  }

  checkUnknownKeys(
    data: Record<string, unknown>,
    shape: Shape,
    at: string[],
  ): void {
    for (const [key, value] of Object.entries(data)) {
      if (!(key in shape)) {
        const hint = closest(key, Object.keys(shape));
        this.problem(
          [...at, key],
          `unknown key${hint ? ` (did you mean "${hint}"?)` : ""}`,
        );
        continue;
      }
      const sub = shape[key];
      if (sub && isPlainObject(value)) {
        this.checkUnknownKeys(value, sub, [...at, key]);
      }
    }
  }

  problem(key: string[], message: string): void {
    this.problems.push({
      key: key.join(".") || "(document)",
      line: this.lineOf(key),
      message,
    });
  }

  lineOf(key: string[]): number | undefined {
    for (let depth = key.length; depth > 0; depth--) {
      const offset = keyOffset(this.doc, key.slice(0, depth));
      if (offset !== undefined) return this.lines.linePos(offset).line;
    }
    return undefined;
  }
}

/** Where `key` is written in the document (its key, not its value). */
function keyOffset(doc: Document, key: string[]): number | undefined {
  const parent = key.length === 1
    ? doc.contents
    : doc.getIn(key.slice(0, -1), true);
  if (!isMap(parent)) return undefined;
  const pair = parent.items.find((p) =>
    isScalar(p.key) && String(p.key.value) === key.at(-1)
  );
  return (pair?.key as YamlNode | undefined)?.range?.[0];
}

/** Unity group paths start with "/"; the Python tool took "testGroup" too. */
export function normalizeGroup(group: string): string {
  const trimmed = group.trim().replace(/\/+$/, "");
  return trimmed.startsWith("/") ? trimmed || "/" : `/${trimmed}`;
}

/**
 * PyYAML's YAML 1.1 booleans: yes/no, true/false, on/off in three casings.
 * The yaml package's 1.1 schema also takes y/n, which PyYAML reads as strings.
 */
const PY_TRUE = ["yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"];
const PY_BOOL = {
  tag: "tag:yaml.org,2002:bool",
  default: true,
  test:
    /^(?:[Yy]es|YES|[Nn]o|NO|[Tt]rue|TRUE|[Ff]alse|FALSE|[Oo]n|ON|[Oo]ff|OFF)$/,
  resolve: (source: string) => PY_TRUE.includes(source),
};

function pyyamlBooleans(tags: Tags): Tags {
  return [
    ...tags.filter((t) => typeof t === "string" || t.tag !== PY_BOOL.tag),
    PY_BOOL,
  ];
}

function permissionWarnings(file: string, text: string): string[] {
  const holdsPassword = /^[ \t]*password[ \t]*:[ \t]*[^\s#]/m;
  try {
    const mode = Deno.statSync(file).mode;
    if (mode !== null && (mode & 0o004) !== 0 && holdsPassword.test(text)) {
      return [
        `config "${file}" holds a password and is readable by every user: run chmod 600 on it, or move the password to a password_file`,
      ];
    }
  } catch {
    // Just read; a race here only loses a warning.
  }
  return [];
}

function trimSlashes(value: string): string {
  return value.replace(/^\/+|\/+$/g, "");
}

function seconds(value: number): number {
  return Math.round(value * 1000);
}

const NOT_ASCII =
  "has characters other than printable US-ASCII: Unity reads credentials as US-ASCII, so it can never match (change it in Unity)";

function isPrintableAscii(text: string): boolean {
  return /^[\x20-\x7e]*$/.test(text);
}

function show(value: unknown): string {
  if (value === null || value === undefined) return "nothing";
  if (typeof value === "number" && !Number.isFinite(value)) {
    return `the number ${value}`;
  }
  if (Array.isArray(value)) return "a list";
  if (typeof value === "object") return "a mapping";
  return `${typeof value} ${JSON.stringify(value)}`;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** The known key nearest to a typo, if it is near enough to be the intent. */
function closest(key: string, known: string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const candidate of known) {
    const d = editDistance(key, candidate);
    if (d < bestDistance) [best, bestDistance] = [candidate, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      current[j] = Math.min(
        previous[j]! + 1,
        current[j - 1]! + 1,
        previous[j - 1]! + cost,
      );
    }
    previous = current;
  }
  return previous[b.length]!;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === "object" && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const inner of Object.values(value)) deepFreeze(inner);
  }
  return value;
}

/**
 * The effective configuration under the file's own key names, defaults
 * filled in, safe to print: passwords masked, the mail body only measured.
 */
export function redactedConfig(config: Config): Record<string, unknown> {
  const mask = (secret: string | null) => (secret ? "********" : null);
  const trust = (t: Trust) => t.kind === "ca" ? t.path : t.kind !== "insecure";
  const { api, email } = config;
  return {
    api: {
      base_url: api.baseUrl,
      path: api.path,
      version: api.version,
      user: api.user,
      password: mask(api.password),
      cert_verify: trust(api.trust),
      timeout: api.timeoutMs / 1000,
      max_concurrency: api.maxConcurrency,
      bulk_members: api.bulkMembers,
      retries: api.retries,
    },
    attr_whitelist: config.attrWhitelist,
    retention_period: config.retentionDays,
    notifications: {
      email: {
        host: email.host,
        port: email.port,
        use_tls: email.security === "starttls",
        implicit_tls: email.security === "implicit",
        user: email.user,
        password: mask(email.password),
        allow_insecure_auth: email.allowInsecureAuth,
        cert_verify: trust(email.trust),
        timeout: email.timeoutMs / 1000,
        from: email.from,
        to: email.to,
        subject: email.subject,
        intro_text: `(${email.introText.length} characters)`,
      },
    },
    user_group: config.userGroup,
    log_level: config.logLevel,
    log_format: config.logFormat,
    dry_run: config.dryRun,
    state_dir: config.stateDir,
    max_accounts_per_run: config.maxAccountsPerRun,
    max_unreadable_share: config.maxUnreadableShare,
    run_timeout: config.runTimeoutMs / 1000,
  };
}

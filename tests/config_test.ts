/**
 * Tests of src/config.ts: reading the Python tool's YAML (PyYAML, YAML 1.1)
 * into a frozen `Config`, reporting every problem at once. Most tests parse
 * text in memory; the file tests write configs, password files and CA files
 * into temporary directories and remove them afterwards. No test reads the
 * process environment: each passes its own `env`.
 */

import assert from "node:assert/strict";
import { join, relative as relativePath } from "node:path";
import {
  type Config,
  ConfigError,
  DEFAULTS,
  loadConfig,
  normalizeGroup,
  parseConfig,
  type Problem,
  redactedConfig,
} from "../src/config.ts";

const FILE = "/tmp/x/config.yml";
const CA_PEM = new URL("./fixtures/tls/ca.pem", import.meta.url);
const REPO_EXAMPLE = new URL("../config.yml.example", import.meta.url);

// The original tool's config.yml.example, key for key and value for value,
// including the trailing space after `email:`.
const ORIGINAL_EXAMPLE = `# Unity REST admin API
api:
  base_url: "https://b2access.eudat.eu:8443"
  path: "rest-admin"
  version: "v1"
  user: "unity_user"
  password: "unity_password"
  cert_verify: True

# Attributes kept on a deprovisioned account
attr_whitelist: []

# Days until the account is removed for good
retention_period: 365

notifications:
  email: 
    host: "smtp.example.eu"
    port: 587
    use_tls: True
    user: "smtp_user"
    password: "smtp_password"
    from: "B2ACCESS Notifications <noreply@b2access.eudat.eu>"
    to:
      - "SP1 Operator <admin@sp1.eudat.eu>"
      - "SP2 Operator <admin@sp2.eudat.eu>"
      - "SP3 Operator <admin@sp3.eudat.eu>"
    subject: "Deprovisioned B2ACCESS accounts"
    intro_text: "See attachment for details of deprovisioned B2ACCESS accounts.\\n\\nNote: This is an automated email, please don't reply."

# Optional group to check
#user_group: "testGroup"

log_level: "WARNING"

dry_run: False
`;

// The fewest keys a valid config needs; line numbers matter to some tests:
// api 1, base_url 2, user 3, password 4, notifications 5, email 6, from 7,
// to 8.
const MINIMAL = `api:
  base_url: "https://unity.example.org:8443"
  user: "admin"
  password: "api-secret"
notifications:
  email:
    from: "noreply@example.org"
    to:
      - "ops@example.org"
`;

type Env = Record<string, string>;

function parse(text: string, env: Env = {}, file = FILE): Config {
  return parseConfig(text, file, { env: (name) => env[name] }).config;
}

function problemsOf(text: string, env: Env = {}, file = FILE): Problem[] {
  try {
    parse(text, env, file);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return [...error.problems];
  }
  assert.fail("expected a ConfigError, but the config was accepted");
}

function problemAt(problems: Problem[], key: string): Problem {
  const found = problems.find((p) => p.key === key);
  assert.ok(
    found,
    `no problem at ${key}; got ${JSON.stringify(problems, null, 2)}`,
  );
  return found;
}

// MINIMAL with lines added under `notifications.email:`.
function withEmail(lines: string, env: Env = {}): Config {
  return parse(MINIMAL + indent(lines, 4), env);
}

function emailProblems(lines: string, env: Env = {}): Problem[] {
  return problemsOf(MINIMAL + indent(lines, 4), env);
}

function indent(lines: string, by: number): string {
  return lines.split("\n").filter((l) => l !== "").map((l) =>
    " ".repeat(by) + l + "\n"
  ).join("");
}

async function withTempDir(body: (dir: string) => Promise<void> | void) {
  const dir = await Deno.makeTempDir({ prefix: "config_test_" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("parseConfig() reads the original tool's example config with the same meaning", () => {
  const { config, warnings } = parseConfig(ORIGINAL_EXAMPLE, FILE, {
    env: () => undefined,
  });

  assert.deepEqual(warnings, []);
  assert.deepEqual(config, {
    file: FILE,
    api: {
      baseUrl: "https://b2access.eudat.eu:8443",
      path: "rest-admin",
      version: "v1",
      user: "unity_user",
      password: "unity_password",
      trust: { kind: "default" },
      timeoutMs: 30_000,
      maxConcurrency: 8,
      bulkMembers: true,
      retries: 3,
    },
    attrWhitelist: [],
    retentionDays: 365,
    email: {
      host: "smtp.example.eu",
      port: 587,
      security: "starttls",
      user: "smtp_user",
      password: "smtp_password",
      from: "B2ACCESS Notifications <noreply@b2access.eudat.eu>",
      to: [
        "SP1 Operator <admin@sp1.eudat.eu>",
        "SP2 Operator <admin@sp2.eudat.eu>",
        "SP3 Operator <admin@sp3.eudat.eu>",
      ],
      subject: "Deprovisioned B2ACCESS accounts",
      introText:
        "See attachment for details of deprovisioned B2ACCESS accounts.\n\n" +
        "Note: This is an automated email, please don't reply.",
      trust: { kind: "default" },
      allowInsecureAuth: false,
      timeoutMs: 30_000,
    },
    userGroup: "/",
    logLevel: "WARNING",
    logFormat: "text",
    dryRun: false,
    stateDir: "/tmp/x",
    maxAccountsPerRun: 100,
    maxUnreadableShare: 0.05,
    runTimeoutMs: 3_600_000,
  });
});

Deno.test("parseConfig() reads the repository's config.yml.example as the original example", async () => {
  const text = await Deno.readTextFile(REPO_EXAMPLE);

  assert.deepEqual(parse(text), parse(ORIGINAL_EXAMPLE));
});

Deno.test("parseConfig() fills every optional key with the original tool's default", () => {
  const config = parse(MINIMAL);

  assert.equal(config.api.path, "rest-admin");
  assert.equal(config.api.version, "v1");
  assert.deepEqual(config.api.trust, { kind: "default" });
  assert.deepEqual(config.attrWhitelist, []);
  assert.equal(config.retentionDays, 365);
  assert.equal(config.email.host, "localhost");
  assert.equal(config.email.port, 25);
  assert.equal(config.email.security, "none");
  assert.equal(config.email.user, null);
  assert.equal(config.email.password, null);
  assert.equal(config.email.subject, "Deprovisioned B2ACCESS accounts");
  assert.equal(config.email.introText, DEFAULTS.introText);
  assert.match(config.email.introText, /^See attachment .*\n\nNote: /s);
  assert.equal(config.userGroup, "/");
  assert.equal(config.logLevel, "WARNING");
  assert.equal(config.dryRun, false);
  assert.equal(config.stateDir, "/tmp/x");
});

Deno.test("parseConfig() reads a key with an empty value as its default", () => {
  const config = parse(`api:
  base_url: "https://unity.example.org"
  path:
  version:
  user: "admin"
  password: "p"
  cert_verify:
attr_whitelist:
retention_period:
notifications:
  email:
    host:
    port:
    use_tls:
    subject: ""
    intro_text:
    from: "noreply@example.org"
    to: ["ops@example.org"]
user_group:
log_level:
dry_run:
`);

  assert.deepEqual(
    config,
    parse(`api:
  base_url: "https://unity.example.org"
  user: "admin"
  password: "p"
notifications:
  email:
    from: "noreply@example.org"
    to: ["ops@example.org"]
`),
  );
});

Deno.test("parseConfig() keeps an explicit false or 0 instead of the default", () => {
  const config = parse(`api:
  base_url: "https://unity.example.org"
  user: "admin"
  password: "p"
  cert_verify: False
  bulk_members: False
  retries: 0
notifications:
  email:
    cert_verify: False
    from: "noreply@example.org"
    to: ["ops@example.org"]
dry_run: False
max_accounts_per_run: 0
max_unreadable_share: 0
`);

  // The Python tool's `cert_verify or True` turned False into True.
  assert.deepEqual(config.api.trust, { kind: "insecure" });
  assert.deepEqual(config.email.trust, { kind: "insecure" });
  assert.equal(config.api.bulkMembers, false);
  assert.equal(config.api.retries, 0);
  assert.equal(config.dryRun, false);
  assert.equal(config.maxAccountsPerRun, 0);
  assert.equal(config.maxUnreadableShare, 0);
});

Deno.test("parseConfig() reads PyYAML booleans True/False/yes/no/on/off", () => {
  const read = (word: string) => parse(MINIMAL + `dry_run: ${word}\n`).dryRun;

  for (const word of ["True", "true", "TRUE", "yes", "Yes", "on", "ON"]) {
    assert.equal(read(word), true, word);
  }
  for (const word of ["False", "false", "FALSE", "no", "No", "off", "Off"]) {
    assert.equal(read(word), false, word);
  }
  assert.equal(withEmail("use_tls: yes").email.security, "starttls");
  assert.equal(withEmail("use_tls: off").email.security, "none");
});

Deno.test({
  name: "parseConfig() reads y and n as strings, as PyYAML does",
  fn: () => {
    const problems = problemsOf(MINIMAL + "dry_run: n\n");
    assert.match(problemAt(problems, "dry_run").message, /got string "n"/);

    assert.equal(parse(MINIMAL + "user_group: y\n").userGroup, "/y");
  },
});

Deno.test("parseConfig() reports every problem at once with its key path and line", () => {
  const problems = problemsOf(`api:
  base_url: "https://unity.example.org:8443"
  password: "p"
  max_concurrency: 0
notifications:
  email:
    port: "587"
    subjet: "Deprovisioned"
    from: "noreply@example.org"
    to: ["ops@example.org"]
retention_periods: 30
retention_period: 0
max_unreadable_share: 1.5
log_level: LOUD
dry_run: "no"
`);

  const summary = problems.map((p) => [p.key, p.line]).sort();
  assert.deepEqual(summary, [
    ["api.max_concurrency", 4],
    ["api.user", 1],
    ["dry_run", 15],
    ["log_level", 14],
    ["max_unreadable_share", 13],
    ["notifications.email.port", 7],
    ["notifications.email.subjet", 8],
    ["retention_period", 12],
    ["retention_periods", 11],
  ]);
  assert.match(
    problemAt(problems, "retention_periods").message,
    /unknown key \(did you mean "retention_period"\?\)/,
  );
  assert.match(
    problemAt(problems, "notifications.email.subjet").message,
    /did you mean "subject"/,
  );
  assert.match(problemAt(problems, "api.user").message, /missing/);
  assert.match(
    problemAt(problems, "notifications.email.port").message,
    /expected a number, got string "587"/,
  );
  assert.match(
    problemAt(problems, "dry_run").message,
    /expected true or false, got string "no"/,
  );
  assert.match(problemAt(problems, "log_level").message, /LOUD/);
  assert.match(
    problemAt(problems, "retention_period").message,
    /0 is out of range/,
  );
  assert.match(
    problemAt(problems, "max_unreadable_share").message,
    /1\.5 is out of range \(0 to 1\)/,
  );
  assert.match(
    problemAt(problems, "api.max_concurrency").message,
    /0 is out of range \(1 to 256\)/,
  );
});

Deno.test("parseConfig() gives no hint for an unknown key unlike any known one", () => {
  const problems = problemsOf(MINIMAL + "favourite_colour: blue\n");

  assert.deepEqual(problems, [
    { key: "favourite_colour", line: 10, message: "unknown key" },
  ]);
});

Deno.test("ConfigError's message lists each problem with its key and line", () => {
  try {
    parse(MINIMAL + "retention_period: -1\nlog_format: xml\n");
    assert.fail("expected a ConfigError");
  } catch (error) {
    assert.ok(error instanceof ConfigError);
    assert.equal(error.file, FILE);
    assert.match(error.message, /^Cannot use config "\/tmp\/x\/config.yml"/);
    assert.match(error.message, /2 problem\(s\)/);
    assert.match(error.message, /retention_period \(line 10\): -1 is out/);
    assert.match(error.message, /log_format \(line 11\): .*xml.*text, json/);
  }
});

Deno.test("parseConfig() reports every missing required key", () => {
  const problems = problemsOf("api:\n  version: v1\n");

  assert.deepEqual(problems.map((p) => p.key).sort(), [
    "api.base_url",
    "api.password",
    "api.user",
    "notifications.email",
    "notifications.email.from",
    "notifications.email.to",
  ]);
  assert.equal(problemAt(problems, "api.user").line, 1);
  assert.match(
    problemAt(problems, "api.password").message,
    /B2ACCESS_API_PASSWORD/,
  );
});

Deno.test("parseConfig() reports an empty recipient list as missing", () => {
  const problems = problemsOf(MINIMAL.replace(
    '    to:\n      - "ops@example.org"\n',
    "    to: []\n",
  ));

  assert.equal(problems.length, 1);
  assert.equal(problems[0]?.key, "notifications.email.to");
  assert.equal(problems[0]?.line, 8);
  assert.match(problems[0]?.message ?? "", /at least one recipient/);
});

Deno.test("parseConfig() takes a single recipient written as a string", () => {
  const config = parse(MINIMAL.replace(
    '    to:\n      - "ops@example.org"\n',
    '    to: "Ops <ops@example.org>"\n',
  ));

  assert.deepEqual(config.email.to, ["Ops <ops@example.org>"]);
});

Deno.test("parseConfig() reports wrong types with what it got", () => {
  const problems = problemsOf(`api: "https://unity.example.org"
attr_whitelist: [mail, 7]
notifications:
  email: [a, b]
user_group: 42
`);

  assert.match(problemAt(problems, "api").message, /expected a mapping/);
  assert.match(
    problemAt(problems, "attr_whitelist").message,
    /expected a list of strings, got a list/,
  );
  assert.equal(problemAt(problems, "attr_whitelist").line, 2);
  assert.match(
    problemAt(problems, "notifications.email").message,
    /expected a mapping of keys, got a list/,
  );
  assert.match(
    problemAt(problems, "user_group").message,
    /expected a string, got number 42/,
  );
});

Deno.test("parseConfig() reports a base_url that is not an http(s) URL", () => {
  const at = (url: string) =>
    problemAt(
      problemsOf(MINIMAL.replace("https://unity.example.org:8443", url)),
      "api.base_url",
    );

  assert.match(at("unity.example.org").message, /is not a URL/);
  assert.match(at("ftp://unity.example.org").message, /https:\/\//);
  assert.match(at("https://u:p@unity.example.org").message, /credentials/);
  assert.equal(at("https://unity.example.org/?x=1").line, 2);
});

Deno.test("parseConfig() reports a duplicate key with its line", () => {
  const problems = problemsOf(MINIMAL + "dry_run: true\ndry_run: false\n");

  assert.equal(problems.length, 1);
  assert.equal(problems[0]?.line, 11);
  assert.match(problems[0]?.message ?? "", /unique/);
});

Deno.test("parseConfig() reports a YAML syntax error with its line", () => {
  const tab = problemsOf("api:\n\tuser: admin\n");
  assert.deepEqual(tab.map((p) => [p.key, p.line]), [["(syntax)", 2]]);
  assert.match(tab[0]?.message ?? "", /[Tt]ab/);

  const nested = problemsOf(MINIMAL + "log_level: a: b\n");
  assert.equal(nested[0]?.key, "(syntax)");
  assert.equal(nested[0]?.line, 10);
});

Deno.test("parseConfig() rejects a document that is not a mapping", () => {
  for (const text of ["", "# only a comment\n", "- a\n- b\n", "just text\n"]) {
    const problems = problemsOf(text);
    assert.equal(problems.length, 1, JSON.stringify(text));
    assert.equal(problems[0]?.key, "(document)");
    assert.match(problems[0]?.message ?? "", /YAML mapping/);
  }
});

Deno.test("parseConfig() turns user_group into a Unity group path", () => {
  const group = (value: string) =>
    parse(MINIMAL + `user_group: "${value}"\n`).userGroup;

  assert.equal(group("testGroup"), "/testGroup");
  assert.equal(group("/a/b/"), "/a/b");
  assert.equal(group("/"), "/");
  assert.equal(normalizeGroup("a/b"), "/a/b");
  assert.equal(normalizeGroup(" /x// "), "/x");
  assert.equal(normalizeGroup("//"), "/");
});

Deno.test("parseConfig() trims slashes around api.path and api.version and after base_url", () => {
  const config = parse(MINIMAL.replace(":8443", ":8443//"));
  assert.equal(config.api.baseUrl, "https://unity.example.org:8443");

  const paths = parse(MINIMAL.replace(
    '  user: "admin"\n',
    '  user: "admin"\n  path: "/rest-admin/"\n  version: "/v1/"\n',
  ));
  assert.equal(paths.api.path, "rest-admin");
  assert.equal(paths.api.version, "v1");
});

Deno.test("parseConfig() reads log_level in any case and WARN", () => {
  const level = (value: string) =>
    parse(MINIMAL + `log_level: "${value}"\n`).logLevel;

  assert.equal(level("debug"), "DEBUG");
  assert.equal(level("Info"), "INFO");
  assert.equal(level("WARN"), "WARNING");
  assert.equal(level("critical"), "CRITICAL");
});

Deno.test("parseConfig() prefers B2ACCESS_API_PASSWORD over the file's password", () => {
  const config = parse(MINIMAL, { B2ACCESS_API_PASSWORD: "from-env" });

  assert.equal(config.api.password, "from-env");
});

Deno.test("parseConfig() ignores an empty B2ACCESS_API_PASSWORD", () => {
  const config = parse(MINIMAL, { B2ACCESS_API_PASSWORD: "" });

  assert.equal(config.api.password, "api-secret");
});

Deno.test("parseConfig() takes the API password from the environment alone", () => {
  const text = MINIMAL.replace('  password: "api-secret"\n', "");

  assert.equal(
    parse(text, { B2ACCESS_API_PASSWORD: "from-env" }).api.password,
    "from-env",
  );
  assert.match(
    problemAt(problemsOf(text), "api.password").message,
    /missing: set password, password_file or .*B2ACCESS_API_PASSWORD/,
  );
});

Deno.test("parseConfig() refuses Unity credentials that are not US-ASCII", () => {
  const password = problemAt(
    problemsOf(MINIMAL.replace('"api-secret"', '"pässwort"')),
    "api.password",
  );
  assert.equal(password.line, 4);
  assert.match(password.message, /US-ASCII/);

  const user = problemsOf(MINIMAL.replace('"admin"', '"admïn"'));
  assert.deepEqual(user.map((p) => [p.key, p.line]), [["api.user", 3]]);

  const fromEnv = problemsOf(MINIMAL, { B2ACCESS_API_PASSWORD: "naïve" });
  assert.deepEqual(fromEnv.map((p) => p.key), ["$B2ACCESS_API_PASSWORD"]);
  assert.equal(fromEnv.some((p) => p.message.includes("naïve")), false);
});

Deno.test("parseConfig() names password_file when the file's password is bad or empty", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/empty`, "\n");
    await Deno.writeTextFile(`${dir}/crlf`, "s3cret\r\n\r\n");
    await Deno.writeTextFile(`${dir}/umlaut`, "pässwort\n");
    const withFile = (name: string) =>
      MINIMAL.replace(
        'password: "api-secret"',
        `password_file: "${dir}/${name}"`,
      );

    const empty = problemsOf(withFile("empty"));
    assert.deepEqual(empty.map((p) => p.key), ["api.password_file"]);
    assert.match(empty[0]!.message, /is empty/);
    assert.equal(parse(withFile("crlf")).api.password, "s3cret");
    const umlaut = problemsOf(withFile("umlaut"));
    assert.deepEqual(umlaut.map((p) => p.key), ["api.password_file"]);
    assert.match(umlaut[0]!.message, /US-ASCII/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseConfig() refuses timeouts and retention beyond what a timer can hold", () => {
  for (
    const line of [
      "retention_period: 99999999999999999999",
      "run_timeout: 1000000000000",
    ]
  ) {
    const key = line.split(":")[0]!;
    assert.match(
      problemAt(problemsOf(MINIMAL + line + "\n"), key).message,
      /out of range/,
    );
  }
});

Deno.test("parseConfig() accepts a non-ASCII SMTP password", () => {
  const config = withEmail(
    'use_tls: true\nuser: "mailer"\npassword: "pässwort"',
  );

  assert.equal(config.email.password, "pässwort");
});

Deno.test("parseConfig() reads a numeric password as its digits", () => {
  const config = parse(MINIMAL.replace('"api-secret"', "12345"));

  assert.equal(config.api.password, "12345");
});

Deno.test("parseConfig() reads password_file relative to the config, trimming the newline", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "secrets"));
    await Deno.writeTextFile(join(dir, "secrets", "unity"), "file-secret\n");
    await Deno.writeTextFile(join(dir, "secrets", "smtp"), "smtp-secret\r\n");
    const text = MINIMAL.replace(
      '  password: "api-secret"\n',
      '  password_file: "secrets/unity"\n',
    ) + indent(
      'use_tls: true\nuser: "mailer"\npassword_file: "secrets/smtp"',
      4,
    );

    const config = parse(text, {}, join(dir, "config.yml"));

    assert.equal(config.api.password, "file-secret");
    assert.equal(config.email.password, "smtp-secret");
  });
});

Deno.test("parseConfig() prefers B2ACCESS_API_PASSWORD over password_file", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "unity"), "file-secret\n");
    const text = MINIMAL.replace(
      '  password: "api-secret"\n',
      '  password_file: "unity"\n',
    );

    const config = parse(
      text,
      { B2ACCESS_API_PASSWORD: "from-env" },
      join(dir, "config.yml"),
    );

    assert.equal(config.api.password, "from-env");
  });
});

Deno.test("parseConfig() prefers B2ACCESS_SMTP_PASSWORD over the SMTP password", () => {
  const config = withEmail(
    'use_tls: true\nuser: "mailer"\npassword: "in-file"',
    { B2ACCESS_SMTP_PASSWORD: "smtp-from-env" },
  );

  assert.equal(config.email.password, "smtp-from-env");
});

Deno.test("parseConfig() rejects both password and password_file", () => {
  const problems = problemsOf(MINIMAL.replace(
    '  password: "api-secret"\n',
    '  password: "api-secret"\n  password_file: "/nonexistent/unity"\n',
  ));

  const problem = problemAt(problems, "api.password_file");
  assert.equal(problem.line, 5);
  assert.match(problem.message, /either password or password_file, not both/);
});

Deno.test("parseConfig() names an unreadable password_file in the problem", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "a-directory"));
    const file = join(dir, "config.yml");
    const at = (path: string) =>
      problemAt(
        problemsOf(
          MINIMAL.replace(
            '  password: "api-secret"\n',
            `  password_file: "${path}"\n`,
          ),
          {},
          file,
        ),
        "api.password_file",
      );

    const missing = at("missing.password");
    assert.equal(missing.line, 4);
    assert.ok(
      missing.message.includes(`"${join(dir, "missing.password")}"`),
      missing.message,
    );
    assert.ok(at("a-directory").message.includes(join(dir, "a-directory")));
  });
});

Deno.test("parseConfig() reads a cert_verify path relative to the config's directory", async () => {
  await withTempDir(async (dir) => {
    await Deno.mkdir(join(dir, "certs"));
    const pem = await Deno.readTextFile(CA_PEM);
    await Deno.writeTextFile(join(dir, "certs", "ca.pem"), pem);
    const text = MINIMAL.replace(
      '  user: "admin"\n',
      '  user: "admin"\n  cert_verify: "certs/ca.pem"\n',
    ) + indent('cert_verify: "./certs/ca.pem"', 4);

    const config = parse(text, {}, join(dir, "config.yml"));

    const expected = { kind: "ca", path: join(dir, "certs", "ca.pem"), pem };
    assert.deepEqual(config.api.trust, expected);
    assert.deepEqual(config.email.trust, expected);
  });
});

Deno.test("parseConfig() names a missing cert_verify file in the problem", async () => {
  await withTempDir((dir) => {
    const problems = problemsOf(
      MINIMAL + indent('cert_verify: "no-such-ca.pem"', 4),
      {},
      join(dir, "config.yml"),
    );

    const problem = problemAt(problems, "notifications.email.cert_verify");
    assert.equal(problem.line, 10);
    assert.ok(
      problem.message.includes(join(dir, "no-such-ca.pem")),
      problem.message,
    );
  });
});

Deno.test("parseConfig() rejects a cert_verify file without a PEM certificate", async () => {
  await withTempDir(async (dir) => {
    const key = await Deno.readTextFile(
      new URL("./fixtures/tls/ca.key", import.meta.url),
    );
    await Deno.writeTextFile(join(dir, "key.pem"), key);
    const problems = problemsOf(
      MINIMAL.replace(
        '  user: "admin"\n',
        '  user: "admin"\n  cert_verify: "key.pem"\n',
      ),
      {},
      join(dir, "config.yml"),
    );

    const problem = problemAt(problems, "api.cert_verify");
    assert.match(problem.message, /holds no PEM certificate/);
    assert.ok(problem.message.includes(join(dir, "key.pem")));
  });
});

Deno.test("parseConfig() rejects a cert_verify that is neither boolean nor path", () => {
  const problems = problemsOf(MINIMAL + indent("cert_verify: 1", 4));

  assert.match(
    problemAt(problems, "notifications.email.cert_verify").message,
    /expected true, false or the path of a CA bundle, got number 1/,
  );
});

Deno.test("parseConfig() requires an SMTP password with an SMTP user, and the reverse", () => {
  const noPassword = emailProblems('use_tls: true\nuser: "mailer"');
  assert.deepEqual(noPassword.map((p) => p.key), [
    "notifications.email.password",
  ]);
  assert.match(noPassword[0]?.message ?? "", /both user and password/);

  const noUser = emailProblems('use_tls: true\npassword: "x"');
  assert.deepEqual(noUser.map((p) => p.key), ["notifications.email.user"]);
});

Deno.test("parseConfig() refuses SMTP credentials without TLS unless allow_insecure_auth", () => {
  const creds = 'user: "mailer"\npassword: "smtp-secret"';

  const problems = emailProblems(creds);
  assert.equal(problems.length, 1);
  assert.equal(problems[0]?.key, "notifications.email.user");
  assert.match(problems[0]?.message ?? "", /clear text/);

  const allowed = withEmail(creds + "\nallow_insecure_auth: true");
  assert.equal(allowed.email.security, "none");
  assert.equal(allowed.email.allowInsecureAuth, true);
  assert.equal(withEmail(creds + "\nuse_tls: true").email.user, "mailer");
  assert.equal(withEmail(creds + "\nimplicit_tls: true").email.user, "mailer");
});

Deno.test("parseConfig() refuses use_tls and implicit_tls together", () => {
  const problems = emailProblems("use_tls: true\nimplicit_tls: true");

  assert.equal(problems.length, 1);
  assert.equal(problems[0]?.key, "notifications.email.implicit_tls");
  assert.equal(problems[0]?.line, 11);
  assert.match(problems[0]?.message ?? "", /exclude each other/);
});

Deno.test("parseConfig() defaults the port to 465 with implicit_tls", () => {
  const implicit = withEmail("implicit_tls: true").email;
  assert.equal(implicit.security, "implicit");
  assert.equal(implicit.port, 465);

  assert.equal(withEmail("implicit_tls: true\nport: 2465").email.port, 2465);
  assert.equal(withEmail("use_tls: true").email.port, 25);
});

Deno.test("parseConfig() reads timeouts in seconds as milliseconds", () => {
  const config = parse(
    MINIMAL.replace('  user: "admin"\n', '  user: "admin"\n  timeout: 2.5\n') +
      indent("timeout: 0.5", 4) + "run_timeout: 60\n",
  );

  assert.equal(config.api.timeoutMs, 2_500);
  assert.equal(config.email.timeoutMs, 500);
  assert.equal(config.runTimeoutMs, 60_000);
});

Deno.test("parseConfig() resolves state_dir relative to the config's directory", () => {
  assert.equal(parse(MINIMAL + "state_dir: state\n").stateDir, "/tmp/x/state");
  assert.equal(
    parse(MINIMAL + "state_dir: /var/lib/b2\n").stateDir,
    "/var/lib/b2",
  );
});

Deno.test("loadConfig() on a missing file says how to pass one", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "missing.yml");
    try {
      await loadConfig(path);
      assert.fail("expected a ConfigError");
    } catch (error) {
      assert.ok(error instanceof ConfigError, String(error));
      assert.equal(error.file, path);
      assert.equal(error.problems[0]?.key, "(file)");
      assert.match(error.message, /not found/);
      assert.match(error.message, /--config/);
      assert.ok(error.cause instanceof Deno.errors.NotFound);
    }
  });
});

Deno.test("loadConfig() warns about a world-readable file holding a password", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "config.yml");
    await Deno.writeTextFile(path, MINIMAL);

    await Deno.chmod(path, 0o644);
    const open = await loadConfig(path, { env: () => undefined });
    assert.equal(open.warnings.length, 1);
    assert.match(open.warnings[0] ?? "", /readable by every user/);
    assert.ok(open.warnings[0]?.includes(path));
    assert.equal(open.config.file, path);

    await Deno.chmod(path, 0o600);
    const closed = await loadConfig(path, { env: () => undefined });
    assert.deepEqual(closed.warnings, []);
  });
});

Deno.test("loadConfig() does not warn about a world-readable file without a password", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "config.yml");
    await Deno.writeTextFile(join(dir, "unity"), "file-secret\n");
    await Deno.writeTextFile(
      path,
      MINIMAL.replace('  password: "api-secret"\n', "  password_file: unity\n"),
    );
    await Deno.chmod(path, 0o644);

    const loaded = await loadConfig(path, { env: () => undefined });

    assert.deepEqual(loaded.warnings, []);
    assert.equal(loaded.config.api.password, "file-secret");
  });
});

Deno.test({
  name: "loadConfig() does not warn about an empty password key",
  fn: async () => {
    await withTempDir(async (dir) => {
      const path = join(dir, "config.yml");
      await Deno.writeTextFile(
        path,
        MINIMAL.replace('  password: "api-secret"\n', "  password:\n") +
          indent("user:\npassword:", 4),
      );
      await Deno.chmod(path, 0o644);
      const env: Env = { B2ACCESS_API_PASSWORD: "from-env" };

      const loaded = await loadConfig(path, { env: (name) => env[name] });

      assert.equal(loaded.config.api.password, "from-env");
      assert.equal(loaded.config.email.password, null);
      assert.deepEqual(loaded.warnings, []);
    });
  },
});

Deno.test("loadConfig() resolves a relative path to an absolute file", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, "config.yml"), MINIMAL);
    await Deno.chmod(join(dir, "config.yml"), 0o600);
    const relative = relativePath(Deno.cwd(), join(dir, "config.yml"));

    const { config } = await loadConfig(relative, { env: () => undefined });

    assert.equal(config.file, join(dir, "config.yml"));
    assert.equal(config.stateDir, dir);
  });
});

Deno.test("parseConfig() returns a deeply frozen config", () => {
  const config = parse(ORIGINAL_EXAMPLE);

  const unfrozen: string[] = [];
  const visit = (value: unknown, path: string) => {
    if (typeof value !== "object" || value === null) return;
    if (!Object.isFrozen(value)) unfrozen.push(path);
    for (const [key, inner] of Object.entries(value)) {
      visit(inner, `${path}.${key}`);
    }
  };
  visit(config, "config");
  assert.deepEqual(unfrozen, []);

  assert.throws(() => {
    (config as { dryRun: boolean }).dryRun = true;
  }, TypeError);
  assert.throws(() => {
    (config.email.to as string[]).push("evil@example.org");
  }, TypeError);
  assert.throws(() => {
    (config.api.trust as { kind: string }).kind = "insecure";
  }, TypeError);
});

Deno.test("redactedConfig() never contains a password or the CA certificate", async () => {
  await withTempDir(async (dir) => {
    const pem = await Deno.readTextFile(CA_PEM);
    await Deno.writeTextFile(join(dir, "ca.pem"), pem);
    const config = parse(
      ORIGINAL_EXAMPLE.replace("cert_verify: True", 'cert_verify: "ca.pem"'),
      { B2ACCESS_SMTP_PASSWORD: "smtp-env-S3CRET" },
      join(dir, "config.yml"),
    );
    assert.equal(config.email.password, "smtp-env-S3CRET");

    const redacted = redactedConfig(config);
    const text = JSON.stringify(redacted);

    for (const secret of ["unity_password", "smtp-env-S3CRET", "BEGIN CERT"]) {
      assert.equal(text.includes(secret), false, secret);
    }
    const api = redacted.api as Record<string, unknown>;
    const email =
      (redacted.notifications as Record<string, Record<string, unknown>>)
        .email!;
    assert.equal(api.password, "********");
    assert.equal(email.password, "********");
    assert.equal(api.cert_verify, join(dir, "ca.pem"));
    assert.equal(email.cert_verify, true);
    assert.equal(api.user, "unity_user");
    assert.equal(
      email.intro_text,
      `(${config.email.introText.length} characters)`,
    );
  });
});

Deno.test("redactedConfig() shows an absent SMTP password as null", () => {
  const redacted = redactedConfig(parse(MINIMAL));

  const notifications = redacted.notifications as Record<
    string,
    Record<string, unknown>
  >;
  assert.equal(notifications.email!.password, null);
});

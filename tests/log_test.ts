/**
 * Tests of src/log.ts: levels, the text and JSON line formats, masking of
 * secret-looking fields and colour. Every logger writes to an in-memory
 * sink; nothing reaches stderr.
 */

import assert from "node:assert/strict";
import {
  createLogger,
  type Level,
  LEVELS,
  type LoggerOptions,
  memoryLogger,
  parseLevel,
} from "../src/log.ts";

const ESC = "\x1b[";
// An ANSI colour sequence, such as ESC[33m or ESC[0m.
const SGR = new RegExp(String.raw`\x1b\[[0-9;]*m`, "g");

function capture(options: Omit<LoggerOptions, "sink">) {
  const lines: string[] = [];
  const log = createLogger({ ...options, sink: (line) => lines.push(line) });
  return { log, lines };
}

function logEveryLevel(options: Omit<LoggerOptions, "sink">): string[] {
  const { log, lines } = capture(options);
  log.debug("d");
  log.info("i");
  log.warn("w");
  log.error("e");
  return lines;
}

Deno.test("createLogger() drops lines below its level", () => {
  assert.deepEqual(logEveryLevel({ level: "WARNING" }), [
    "WARNING w",
    "ERROR e",
  ]);
  assert.deepEqual(logEveryLevel({ level: "DEBUG" }), [
    "DEBUG d",
    "INFO i",
    "WARNING w",
    "ERROR e",
  ]);
  assert.deepEqual(logEveryLevel({ level: "ERROR" }), ["ERROR e"]);
  assert.deepEqual(logEveryLevel({ level: "CRITICAL" }), []);
});

Deno.test("enabled() tells whether a level would be written", () => {
  const { log } = capture({ level: "INFO" });

  const enabled = LEVELS.filter((level) => log.enabled(level));

  assert.deepEqual(enabled, ["INFO", "WARNING", "ERROR", "CRITICAL"]);
  assert.equal(log.level, "INFO");
});

Deno.test("a logger tells its format, text unless json is asked for", () => {
  assert.equal(capture({ level: "INFO" }).log.format, "text");
  assert.equal(capture({ level: "INFO", format: "json" }).log.format, "json");
});

Deno.test("the text format writes level, message and key=value fields on one line", () => {
  const { log, lines } = capture({ level: "INFO" });

  log.info("removed attribute", {
    entityId: 42,
    group: "/eudat/sp1",
    attribute: "email",
    reason: "not on the whitelist",
    ok: true,
    ids: [1, 2],
    skipped: undefined,
  });

  assert.deepEqual(lines, [
    'INFO removed attribute entityId=42 group=/eudat/sp1 attribute=email reason="not on the whitelist" ok=true ids=[1,2]',
  ]);
});

Deno.test("the text format quotes a field value that holds a newline", () => {
  const { log, lines } = capture({ level: "INFO" });

  log.warn("cannot read entity", { error: "line one\nline two" });

  assert.deepEqual(lines, [
    'WARNING cannot read entity error="line one\\nline two"',
  ]);
});

Deno.test("the json format writes one JSON object per line with time, level, message and fields", () => {
  const { log, lines } = capture({ level: "DEBUG", format: "json" });

  log.error("notification not delivered", { accounts: 3, error: "451" });

  assert.equal(lines.length, 1);
  assert.equal(lines[0]?.includes("\n"), false);
  const record = JSON.parse(lines[0] ?? "");
  assert.equal(new Date(record.time).toISOString(), record.time);
  assert.deepEqual({ ...record, time: "T" }, {
    time: "T",
    level: "ERROR",
    message: "notification not delivered",
    accounts: 3,
    error: "451",
  });
});

Deno.test("the json format drops lines below its level too", () => {
  const lines = logEveryLevel({ level: "ERROR", format: "json" });

  assert.deepEqual(lines.map((line) => JSON.parse(line).level), ["ERROR"]);
});

Deno.test("fields named like a password or authorization are masked in both formats", () => {
  const fields = {
    password: "hunter2",
    smtpPassword: "hunter3",
    Authorization: "Basic dXNlcjpodW50ZXI0",
    authorization: "Bearer hunter5",
    clientSecret: "hunter6",
    token: "hunter7",
    user: "admin",
  };
  const text = capture({ level: "INFO" });
  const json = capture({ level: "INFO", format: "json" });

  text.log.info("request", fields);
  json.log.info("request", fields);

  for (const line of [...text.lines, ...json.lines]) {
    for (const secret of ["hunter", "dXNlcjpodW50ZXI0"]) {
      assert.equal(line.includes(secret), false, line);
    }
  }
  assert.equal(
    text.lines[0],
    'INFO request password="********" smtpPassword="********" ' +
      'Authorization="********" authorization="********" ' +
      'clientSecret="********" token="********" user=admin',
  );
  const record = JSON.parse(json.lines[0] ?? "");
  assert.equal(record.password, "********");
  assert.equal(record.Authorization, "********");
  assert.equal(record.user, "admin");
});

Deno.test("an absent password field is shown as absent, not masked", () => {
  const { log, lines } = capture({ level: "INFO", format: "json" });

  log.info("smtp settings", { password: null });

  assert.equal(JSON.parse(lines[0] ?? "").password, null);
});

Deno.test("masking leaves the caller's fields unchanged", () => {
  const { log } = capture({ level: "INFO" });
  const fields = { password: "hunter2" };

  log.info("x", fields);

  assert.deepEqual(fields, { password: "hunter2" });
});

Deno.test("the text format colours the level only when color is true", () => {
  const plain = logEveryLevel({ level: "DEBUG" });
  const colored = logEveryLevel({ level: "DEBUG", color: true });

  assert.equal(plain.some((line) => line.includes(ESC)), false);
  assert.equal(colored.length, 4);
  for (const line of colored) assert.ok(line.startsWith(ESC), line);
  assert.deepEqual(
    colored.map((line) => line.replace(SGR, "")),
    plain,
  );
  assert.equal(colored[2], "\x1b[33mWARNING\x1b[0m w");
});

Deno.test("the json format never writes colour codes", () => {
  const lines = logEveryLevel({ level: "DEBUG", format: "json", color: true });

  assert.equal(lines.length, 4);
  assert.equal(lines.some((line) => line.includes(ESC)), false);
});

Deno.test("parseLevel() accepts any case, WARN and FATAL", () => {
  const cases: [string, Level | undefined][] = [
    ["DEBUG", "DEBUG"],
    ["debug", "DEBUG"],
    ["Info", "INFO"],
    ["warning", "WARNING"],
    ["WARN", "WARNING"],
    ["warn", "WARNING"],
    ["error", "ERROR"],
    ["Critical", "CRITICAL"],
    ["fatal", "CRITICAL"],
    [" INFO ", "INFO"],
    ["LOUD", undefined],
    ["", undefined],
    ["10", undefined],
  ];

  for (const [input, expected] of cases) {
    assert.equal(parseLevel(input), expected, JSON.stringify(input));
  }
});

Deno.test("memoryLogger() keeps its lines in memory and defaults to DEBUG", () => {
  const log = memoryLogger();

  log.debug("first", { n: 1 });
  log.warn("second");

  assert.equal(log.level, "DEBUG");
  assert.deepEqual(log.lines, ["DEBUG first n=1", "WARNING second"]);
  const quiet = memoryLogger("ERROR");
  quiet.warn("dropped");
  assert.deepEqual(quiet.lines, []);
});

/**
 * Tests of the state directory's three files: the journal (src/journal.ts),
 * the run lock (src/lock.ts) and the audit trail (src/audit.ts). Each test
 * works in its own temporary directory and removes it; the lock tests start
 * one `deno eval` child that holds the lock and kill it.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  isApplied,
  Journal,
  JOURNAL_FILE,
  type JournalEntry,
  JournalError,
} from "../src/journal.ts";
import { LOCK_FILE, StateDirError, tryLock } from "../src/lock.ts";
import { Audit, AUDIT_FILE } from "../src/audit.ts";

const LOCK_MODULE = new URL("../src/lock.ts", import.meta.url).href;

function entry(
  entityId: number,
  extra: Partial<JournalEntry> = {},
): JournalEntry {
  return {
    entityId,
    persistentId: `pid-${entityId}`,
    emails: [`user${entityId}@example.org`],
    removals: [
      { group: "/", name: "email" },
      { group: "/eudat", name: "name" },
    ],
    when: Date.UTC(2027, 0, 1),
    scheduled: false,
    capturedAt: "2026-01-01T00:00:00.000Z",
    runId: "run-1",
    ...extra,
  };
}

/** An entry with every step done. */
function applied(entityId: number): JournalEntry {
  return entry(entityId, {
    scheduled: true,
    removals: [{ group: "/", name: "email", outcome: "removed" }],
  });
}

async function withTempDir(body: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "journal_test_" });
  try {
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function names(dir: string): Promise<string[]> {
  const found: string[] = [];
  for await (const item of Deno.readDir(dir)) found.push(item.name);
  return found.sort();
}

async function openError(stateDir: string): Promise<JournalError> {
  try {
    await Journal.open(stateDir);
  } catch (error) {
    assert.ok(error instanceof JournalError, String(error));
    return error;
  }
  assert.fail("expected Journal.open() to throw a JournalError");
}

Deno.test("Journal.add() is durable: a fresh Journal.open() sees the same entries", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    const entries = [entry(7), applied(8), entry(9, { persistentId: null })];

    await journal.add(entries);

    const reopened = await Journal.open(dir);
    assert.deepEqual(reopened.entries, entries);
    assert.equal(reopened.has(8), true);
    assert.equal(reopened.has(10), false);
    assert.equal(reopened.file, join(dir, JOURNAL_FILE));
  });
});

Deno.test("Journal writes valid JSON and leaves no temporary file behind", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(1)]);
    await journal.add([entry(2)]);

    const data = JSON.parse(await Deno.readTextFile(journal.file));
    assert.equal(data.format, "b2access-deprovision-journal");
    assert.equal(data.version, 1);
    assert.deepEqual(data.accounts.map((a: JournalEntry) => a.entityId), [
      1,
      2,
    ]);
    assert.deepEqual(await names(dir), [JOURNAL_FILE]);
  });
});

Deno.test("Journal.open() creates a private state directory and the file is private", async () => {
  await withTempDir(async (dir) => {
    const stateDir = join(dir, "state", "nested");

    const journal = await Journal.open(stateDir);
    await journal.add([entry(1)]);

    assert.equal((await Deno.stat(stateDir)).mode! & 0o777, 0o700);
    assert.equal((await Deno.stat(journal.file)).mode! & 0o777, 0o600);
  });
});

Deno.test("Journal.open() on a new directory starts empty and writes nothing", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);

    assert.deepEqual(journal.entries, []);
    assert.deepEqual(await names(dir), []);
  });
});

const CORRUPT: [string, string, RegExp][] = [
  ["bad JSON", '{"format": "b2access-deprovision-journal", ', /not valid JSON/],
  [
    "another format",
    '{"format": "other", "version": 1, "accounts": []}',
    /not a version 1/,
  ],
  [
    "a later version",
    '{"format": "b2access-deprovision-journal", "version": 2, "accounts": []}',
    /not a version 1/,
  ],
  [
    "accounts that are not a list",
    '{"format": "b2access-deprovision-journal", "version": 1, "accounts": {}}',
    /not a version 1/,
  ],
  ["an empty file", "", /not valid JSON/],
];

for (const [what, text, reason] of CORRUPT) {
  Deno.test(`Journal.open() refuses ${what}, naming the file and keeping it`, async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, JOURNAL_FILE);
      await Deno.writeTextFile(file, text);

      const error = await openError(dir);

      assert.equal(error.file, file);
      assert.ok(error.message.includes(`"${file}"`), error.message);
      assert.match(error.message, reason);
      assert.match(error.message, /move it aside/);
      assert.equal(await Deno.readTextFile(file), text);
    });
  });
}

const BAD_ENTRIES: [string, unknown, RegExp][] = [
  ["an entityId that is a string", { entityId: "7" }, /entityId/],
  ["a persistentId that is a number", { persistentId: 5 }, /persistentId/],
  ["emails that are not strings", { emails: [1] }, /emails/],
  ["a removal without a name", { removals: [{ group: "/" }] }, /removals/],
  ["a when that is a date string", { when: "2027-01-01" }, /when/],
  ["a scheduled that is a string", { scheduled: "yes" }, /scheduled/],
];

for (const [what, change, reason] of BAD_ENTRIES) {
  Deno.test(`Journal.open() refuses an entry with ${what}`, async () => {
    await withTempDir(async (dir) => {
      const file = join(dir, JOURNAL_FILE);
      const text = JSON.stringify({
        format: "b2access-deprovision-journal",
        version: 1,
        accounts: [entry(1), { ...entry(2), ...(change as object) }],
      });
      await Deno.writeTextFile(file, text);

      const error = await openError(dir);

      assert.match(error.message, /accounts\[1\]/);
      assert.match(error.message, reason);
      assert.equal(await Deno.readTextFile(file), text);
    });
  });
}

Deno.test("Journal.open() refuses an entry that is not an object", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(
      join(dir, JOURNAL_FILE),
      '{"format": "b2access-deprovision-journal", "version": 1, "accounts": [null]}',
    );

    const error = await openError(dir);

    assert.match(error.message, /accounts\[0\]: not an object/);
  });
});

Deno.test("Journal.peek() refuses a corrupt journal too", async () => {
  await withTempDir(async (dir) => {
    await Deno.writeTextFile(join(dir, JOURNAL_FILE), "not json");

    await assert.rejects(Journal.peek(dir), JournalError);
  });
});

Deno.test("Journal.peek() on a missing directory creates nothing", async () => {
  await withTempDir(async (dir) => {
    const stateDir = join(dir, "not-yet");

    const journal = await Journal.peek(stateDir);

    assert.deepEqual(journal.entries, []);
    assert.deepEqual(await names(dir), []);
  });
});

Deno.test("Journal.peek() reads what Journal.add() wrote", async () => {
  await withTempDir(async (dir) => {
    await (await Journal.open(dir)).add([entry(1), applied(2)]);

    const journal = await Journal.peek(dir);

    assert.deepEqual(journal.entries.map((e) => e.entityId), [1, 2]);
  });
});

Deno.test("isApplied() is true once scheduled with every removal done, or gone", () => {
  assert.equal(isApplied(entry(1)), false);
  assert.equal(isApplied(entry(1, { scheduled: true })), false);
  assert.equal(isApplied(applied(1)), true);
  assert.equal(isApplied(entry(1, { scheduled: true, removals: [] })), true);
  assert.equal(isApplied(entry(1, { gone: true })), true);
  assert.equal(
    isApplied(entry(1, {
      scheduled: false,
      removals: [{ group: "/", name: "email", outcome: "absent" }],
    })),
    false,
  );
});

Deno.test("pending() and unreported() split the entries by isApplied()", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([
      entry(1),
      applied(2),
      entry(3, { gone: true }),
      entry(4, { scheduled: true }),
    ]);

    assert.deepEqual(journal.pending().map((e) => e.entityId), [1, 4]);
    assert.deepEqual(journal.unreported().map((e) => e.entityId), [2, 3]);
  });
});

Deno.test("Journal.remove() forgets entries, durably", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(1), entry(2), entry(3)]);

    await journal.remove([1, 3, 99]);

    assert.deepEqual(journal.entries.map((e) => e.entityId), [2]);
    const reopened = await Journal.open(dir);
    assert.deepEqual(reopened.entries.map((e) => e.entityId), [2]);
  });
});

Deno.test("Journal.add() replaces an entry with the same entityId", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(1)]);

    await journal.add([entry(1, { lastError: "timeout" })]);

    const [only, ...rest] = (await Journal.open(dir)).entries;
    assert.deepEqual(rest, []);
    assert.equal(only?.lastError, "timeout");
  });
});

Deno.test("Journal.save() persists a change made to an entry in place", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(1)]);

    const [first] = journal.entries;
    assert.ok(first);
    first.scheduled = true;
    first.removals.forEach((r) => (r.outcome = "removed"));
    await journal.save();

    assert.deepEqual((await Journal.open(dir)).unreported(), [first]);
  });
});

Deno.test("concurrent save() calls all resolve and the file holds every change", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(0)]);

    const calls: Promise<void>[] = [];
    for (let id = 1; id <= 20; id++) calls.push(journal.add([entry(id)]));
    calls.push(journal.remove([0, 5]));
    const [tenth] = journal.entries.filter((e) => e.entityId === 10);
    assert.ok(tenth);
    tenth.scheduled = true;
    calls.push(journal.save());
    await Promise.all(calls);

    const reopened = await Journal.open(dir);
    const ids = reopened.entries.map((e) => e.entityId).sort((a, b) => a - b);
    assert.deepEqual(
      ids,
      Array.from({ length: 20 }, (_, i) => i + 1).filter((id) => id !== 5),
    );
    assert.equal(
      reopened.entries.find((e) => e.entityId === 10)?.scheduled,
      true,
    );
    assert.deepEqual(await names(dir), [JOURNAL_FILE]);
  });
});

Deno.test("a failed journal write throws JournalError and the next save() retries it", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(1)]);
    // A directory where the temporary file goes makes the write fail.
    await Deno.mkdir(join(dir, `${JOURNAL_FILE}.tmp`));

    await assert.rejects(journal.add([entry(2)]), (error) => {
      assert.ok(error instanceof JournalError);
      assert.match(error.message, /cannot write it/);
      return true;
    });
    assert.deepEqual(
      (await Journal.peek(dir)).entries.map((e) => e.entityId),
      [1],
    );

    await Deno.remove(join(dir, `${JOURNAL_FILE}.tmp`));
    await journal.save();
    assert.deepEqual(
      (await Journal.open(dir)).entries.map((e) => e.entityId),
      [1, 2],
    );
  });
});

Deno.test("tryLock() refuses a second lock on the same directory in the same process", async () => {
  await withTempDir(async (dir) => {
    const first = await tryLock(dir);
    assert.ok(first);
    try {
      assert.equal(first.file, join(dir, LOCK_FILE));
      assert.equal(await tryLock(dir), undefined);
    } finally {
      first.release();
    }

    const again = await tryLock(dir);
    assert.ok(again, "the lock is free again after release()");
    again.release();
  });
});

Deno.test("tryLock() names a state directory it cannot create", async () => {
  await withTempDir(async (dir) => {
    const file = join(dir, "a-file");
    await Deno.writeTextFile(file, "");
    const stateDir = join(file, "state");

    await assert.rejects(tryLock(stateDir), (error) => {
      assert.ok(error instanceof StateDirError, String(error));
      assert.equal(error.dir, stateDir);
      assert.ok(error.message.includes(`"${stateDir}"`), error.message);
      assert.match(error.message, /set state_dir/);
      assert.ok(error.cause instanceof Error);
      return true;
    });
  });
});

Deno.test("tryLock() writes the holder's pid into the lock file", async () => {
  await withTempDir(async (dir) => {
    const lock = await tryLock(join(dir, "state"));
    assert.ok(lock);
    try {
      assert.equal(await Deno.readTextFile(lock.file), `${Deno.pid}\n`);
      assert.equal((await Deno.stat(lock.file)).mode! & 0o777, 0o600);
    } finally {
      lock.release();
    }
  });
});

/**
 * Starts `deno eval` holding the lock on `dir` until its stdin closes or it
 * is killed; resolves once the child says it holds the lock.
 */
async function lockHolder(dir: string) {
  const code = `
    import { tryLock } from ${JSON.stringify(LOCK_MODULE)};
    const lock = await tryLock(${JSON.stringify(dir)});
    console.log(lock ? "locked" : "busy");
    await Deno.stdin.read(new Uint8Array(1));
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", code],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream())
    .getReader();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error("the child did not report within 20 s")),
      20_000,
    );
  });
  try {
    const { value } = await Promise.race([reader.read(), timeout]);
    assert.equal(value?.trim(), "locked");
  } catch (error) {
    child.kill("SIGKILL");
    await child.status;
    throw error;
  } finally {
    clearTimeout(timer);
    reader.releaseLock();
  }
  return child;
}

Deno.test("tryLock() refuses a lock held by another process and takes it once that process is killed", async () => {
  await withTempDir(async (dir) => {
    const child = await lockHolder(dir);
    try {
      assert.equal(await tryLock(dir), undefined);
      assert.equal(
        await Deno.readTextFile(join(dir, LOCK_FILE)),
        `${child.pid}\n`,
        "a refused tryLock() leaves the holder's pid alone",
      );
    } finally {
      child.kill("SIGKILL");
      const status = await child.status;
      assert.equal(status.signal, "SIGKILL");
      await child.stdin.close().catch(() => undefined);
      await child.stdout.cancel().catch(() => undefined);
    }

    const lock = await tryLock(dir);
    assert.ok(lock, "the OS released the killed holder's lock");
    lock.release();
  });
});

Deno.test("Audit appends one JSON line per event with time and run id", async () => {
  await withTempDir(async (dir) => {
    const audit = await Audit.open(dir, "run-A");
    audit.record({
      event: "attribute-removed",
      entityId: 7,
      persistentId: "pid-7",
      group: "/eudat",
      attribute: "email",
      outcome: "removed",
      status: 204,
    });
    audit.record({
      event: "removal-scheduled",
      entityId: 7,
      persistentId: "pid-7",
      when: Date.UTC(2027, 0, 1),
      status: 204,
    });
    audit.close();

    const text = await Deno.readTextFile(join(dir, AUDIT_FILE));
    assert.ok(text.endsWith("\n"));
    const [removed, scheduled, ...rest] = text.trimEnd().split("\n").map((
      line,
    ) => JSON.parse(line));
    assert.deepEqual(rest, []);
    assert.deepEqual(Object.keys(removed), [
      "time",
      "run",
      "event",
      "entityId",
      "persistentId",
      "group",
      "attribute",
      "outcome",
      "status",
    ]);
    assert.equal(removed.run, "run-A");
    assert.equal(removed.attribute, "email");
    assert.equal(new Date(removed.time).toISOString(), removed.time);
    assert.deepEqual(
      { ...scheduled, time: undefined },
      {
        time: undefined,
        run: "run-A",
        event: "removal-scheduled",
        entityId: 7,
        persistentId: "pid-7",
        when: Date.UTC(2027, 0, 1),
        status: 204,
      },
    );
  });
});

Deno.test("Audit keeps earlier lines when a later run opens it", async () => {
  await withTempDir(async (dir) => {
    for (const run of ["run-1", "run-2"]) {
      const audit = await Audit.open(dir, run);
      audit.record({ event: "entity-gone", entityId: 1, persistentId: null });
      audit.close();
    }

    const file = join(dir, AUDIT_FILE);
    const lines = (await Deno.readTextFile(file)).trimEnd().split("\n");
    assert.deepEqual(lines.map((l) => JSON.parse(l).run), ["run-1", "run-2"]);
    assert.equal((await Deno.stat(file)).mode! & 0o777, 0o600);
  });
});

Deno.test("Audit records a mail outcome with addresses but no message body", async () => {
  await withTempDir(async (dir) => {
    const audit = await Audit.open(dir, "run-M");
    audit.record({
      event: "mail",
      result: "partly-refused",
      accounts: 2,
      entityIds: [1, 2],
      accepted: ["a@example.org"],
      rejected: ["gone@example.org"],
    });
    audit.close();

    const line = JSON.parse(await Deno.readTextFile(join(dir, AUDIT_FILE)));
    assert.deepEqual(Object.keys(line).sort(), [
      "accepted",
      "accounts",
      "entityIds",
      "event",
      "rejected",
      "result",
      "run",
      "time",
    ]);
  });
});

Deno.test("a step marked but never saved is still done when the journal is opened again", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(1), entry(2)]);

    journal.mark({ entityId: 1, removal: 0, outcome: "removed" });
    journal.mark({ entityId: 1, removal: 1, outcome: "immutable" });
    journal.mark({ entityId: 1, when: Date.UTC(2028, 0, 1) });
    journal.mark({ entityId: 1, scheduled: true });
    journal.mark({ entityId: 2, gone: true });

    const reopened = await Journal.open(dir);
    const [first, second] = reopened.entries;
    assert.deepEqual(first!.removals.map((r) => r.outcome), [
      "removed",
      "immutable",
    ]);
    assert.equal(first!.when, Date.UTC(2028, 0, 1));
    assert.equal(first!.scheduled, true);
    assert.equal(second!.gone, true);
    assert.deepEqual(reopened.pending(), []);
  });
});

Deno.test("save() folds the marked steps into journal.json and removes journal.steps", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(1)]);
    journal.mark({ entityId: 1, scheduled: true });
    assert.ok((await Deno.stat(journal.stepsFile)).isFile);

    await journal.save();

    await assert.rejects(Deno.stat(journal.stepsFile), Deno.errors.NotFound);
    const data = JSON.parse(await Deno.readTextFile(journal.file));
    assert.equal(data.accounts[0].scheduled, true);
  });
});

Deno.test("a torn last line of journal.steps is ignored; a bad line before it stops the run", async () => {
  await withTempDir(async (dir) => {
    const journal = await Journal.open(dir);
    await journal.add([entry(1)]);
    journal.mark({ entityId: 1, removal: 0, outcome: "removed" });
    await Deno.writeTextFile(journal.stepsFile, '{"entityId":1,"sched', {
      append: true,
    });

    const reopened = await Journal.open(dir);
    assert.equal(reopened.entries[0]!.removals[0]!.outcome, "removed");
    assert.equal(reopened.entries[0]!.scheduled, false);

    await Deno.writeTextFile(
      journal.stepsFile,
      'not json\n{"entityId":1,"scheduled":true}\n',
    );
    await assert.rejects(Journal.open(dir), JournalError);
    assert.match(await Deno.readTextFile(journal.stepsFile), /^not json/);
  });
});

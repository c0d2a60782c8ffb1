/**
 * The journal: reads and writes `journal.json` and `journal.steps` in the
 * state directory. `journal.json` holds, per account, what was captured
 * BEFORE any change (persistent id, e-mail addresses) and which steps were
 * done, written atomically and durably. Each step done since is appended to
 * `journal.steps` as one JSON line, so a killed run resumes exactly where it
 * stopped, and no notification is lost.
 */

import { dirname, join } from "node:path";
import type { RemovalOutcome } from "./unity.ts";

export const JOURNAL_FILE = "journal.json";
export const STEPS_FILE = "journal.steps";
const FORMAT = "b2access-deprovision-journal";
const OUTCOMES: readonly (string | undefined)[] = [
  "removed",
  "absent",
  "immutable",
];

/** One attribute to remove; `outcome` is set once the step is done. */
export interface Removal {
  readonly group: string;
  readonly name: string;
  outcome?: RemovalOutcome;
}

/** An account being deprovisioned, from capture until its mail is accepted. */
export interface JournalEntry {
  readonly entityId: number;
  readonly persistentId: string | null;
  readonly emails: readonly string[];
  readonly removals: Removal[];
  /** When Unity is asked to remove the entity (epoch ms). */
  when: number;
  scheduled: boolean;
  /** The entity vanished from Unity while being processed. */
  gone?: boolean;
  readonly capturedAt: string;
  readonly runId: string;
  lastError?: string;
}

/** The journal exists but cannot be trusted; nothing is reset silently. */
export class JournalError extends Error {
  constructor(readonly file: string, reason: string, options?: ErrorOptions) {
    super(
      `Cannot use journal "${file}": ${reason}. It may hold accounts whose notification is still due: ` +
        `repair it, or move it aside and report its accounts by hand, then run again`,
      options,
    );
    this.name = "JournalError";
  }
}

/** One step done on an account, as appended to `journal.steps`. */
export type StepMark =
  | {
    readonly entityId: number;
    readonly removal: number;
    readonly outcome: RemovalOutcome;
  }
  /** A new removal time, chosen before it is sent. */
  | { readonly entityId: number; readonly when: number }
  | { readonly entityId: number; readonly scheduled: true }
  | { readonly entityId: number; readonly gone: true };

/** True once every step of the account is done (its mail may be due). */
export function isApplied(entry: JournalEntry): boolean {
  return entry.gone === true ||
    (entry.scheduled && entry.removals.every((r) => r.outcome !== undefined));
}

/** Durable per-account progress in `{stateDir}/journal.json`. */
export class Journal {
  readonly file: string;
  readonly stepsFile: string;
  readonly #entries: Map<number, JournalEntry>;
  #saving: Promise<void> = Promise.resolve();
  #dirty = false;

  private constructor(stateDir: string, entries: JournalEntry[]) {
    this.file = join(stateDir, JOURNAL_FILE);
    this.stepsFile = join(stateDir, STEPS_FILE);
    this.#entries = new Map(entries.map((e) => [e.entityId, e]));
  }

  /** Reads `journal.json`, then replays the steps appended since. */
  static async #read(stateDir: string): Promise<Journal> {
    const file = join(stateDir, JOURNAL_FILE);
    let journal: Journal;
    try {
      journal = new Journal(
        stateDir,
        decode(file, await Deno.readTextFile(file)),
      );
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) {
        throw asJournalError(file, error);
      }
      journal = new Journal(stateDir, []);
    }
    await journal.#replaySteps();
    return journal;
  }

  async #replaySteps(): Promise<void> {
    let text;
    try {
      text = await Deno.readTextFile(this.stepsFile);
    } catch (error) {
      if (error instanceof Deno.errors.NotFound) return;
      throw asJournalError(this.stepsFile, error);
    }
    const lines = text.split("\n");
    lines.forEach((line, i) => {
      if (line.trim() === "") return;
      let mark: StepMark;
      try {
        mark = JSON.parse(line);
      } catch (error) {
        // Only the last line can be torn (power lost mid-append).
        if (i >= lines.length - 2) return;
        throw new JournalError(this.stepsFile, `line ${i + 1} is not JSON`, {
          cause: error,
        });
      }
      this.#apply(mark);
    });
  }

  /**
   * Opens the journal in `stateDir`, creating the directory if needed.
   *
   * @throws {JournalError} when the file exists but is unreadable or corrupt.
   */
  static async open(stateDir: string): Promise<Journal> {
    await Deno.mkdir(stateDir, { recursive: true, mode: 0o700 });
    return await Journal.#read(stateDir);
  }

  /** Reads the journal without creating anything; for dry runs. */
  static peek(stateDir: string): Promise<Journal> {
    return Journal.#read(stateDir);
  }

  get entries(): JournalEntry[] {
    return [...this.#entries.values()];
  }

  has(entityId: number): boolean {
    return this.#entries.has(entityId);
  }

  /** Accounts with steps still to do. */
  pending(): JournalEntry[] {
    return this.entries.filter((e) => !isApplied(e));
  }

  /** Accounts whose steps are done and whose mail has not been accepted. */
  unreported(): JournalEntry[] {
    return this.entries.filter(isApplied);
  }

  /** Records captured accounts durably; call BEFORE changing them. */
  async add(entries: readonly JournalEntry[]): Promise<void> {
    for (const entry of entries) this.#entries.set(entry.entityId, entry);
    await this.save();
  }

  /** Forgets accounts whose notification was accepted. */
  async remove(entityIds: readonly number[]): Promise<void> {
    for (const id of entityIds) this.#entries.delete(id);
    await this.save();
  }

  /**
   * Records one step done: applies it and appends it to `journal.steps`.
   * Appending is cheap where rewriting `journal.json` for every step would
   * dominate a large run. The line survives the process being killed; only
   * a power loss can lose it, and then the next run repeats a step that is
   * idempotent (an attribute already gone counts as removed, the same
   * `when` is sent again).
   *
   * @throws {JournalError} when the line cannot be written.
   */
  mark(step: StepMark): void {
    this.#apply(step);
    try {
      Deno.writeTextFileSync(this.stepsFile, JSON.stringify(step) + "\n", {
        append: true,
        mode: 0o600,
      });
    } catch (error) {
      throw asJournalError(this.stepsFile, error);
    }
  }

  #apply(step: StepMark): void {
    const entry = this.#entries.get(step.entityId);
    if (!entry) return; // reported and forgotten since
    if ("removal" in step) {
      const removal = entry.removals[step.removal];
      if (removal) removal.outcome = step.outcome;
    } else if ("when" in step) entry.when = step.when;
    else if ("scheduled" in step) entry.scheduled = true;
    else if ("gone" in step) entry.gone = true;
  }

  /**
   * Writes the current state durably to `journal.json`, then empties
   * `journal.steps`. Call it when no step is being marked. Concurrent calls
   * coalesce: each resolves once a write that includes its changes is on
   * disk.
   */
  save(): Promise<void> {
    this.#dirty = true;
    const next = this.#saving
      .catch(() => undefined) // that caller was told; this write retries
      .then(() => this.#dirty ? this.#write() : undefined);
    this.#saving = next;
    return next;
  }

  async #write(): Promise<void> {
    this.#dirty = false;
    const body = JSON.stringify(
      { format: FORMAT, version: 1, accounts: this.entries },
      null,
      2,
    ) + "\n";
    try {
      await writeDurably(this.file, body);
      // Replaying a step already in journal.json again would be harmless.
      await Deno.remove(this.stepsFile).catch((error) => {
        if (!(error instanceof Deno.errors.NotFound)) throw error;
      });
    } catch (error) {
      this.#dirty = true;
      throw new JournalError(
        this.file,
        `cannot write it (${(error as Error).message})`,
        { cause: error },
      );
    }
  }
}

/** Writes a temporary file, fsyncs it, renames it over `file`, fsyncs the directory. */
export async function writeDurably(file: string, text: string): Promise<void> {
  const temp = `${file}.tmp`;
  const handle = await Deno.open(temp, {
    write: true,
    create: true,
    truncate: true,
    mode: 0o600,
  });
  try {
    await handle.write(new TextEncoder().encode(text));
    await handle.sync();
  } finally {
    handle.close();
  }
  await Deno.rename(temp, file);
  await syncDirectory(dirname(file));
}

async function syncDirectory(dir: string): Promise<void> {
  try {
    const handle = await Deno.open(dir, { read: true });
    try {
      await handle.sync();
    } finally {
      handle.close();
    }
  } catch {
    // Some platforms cannot fsync a directory; the rename is still atomic.
  }
}

function asJournalError(file: string, error: unknown): JournalError {
  if (error instanceof JournalError) return error;
  return new JournalError(
    file,
    `cannot read or write it (${(error as Error).message})`,
    {
      cause: error,
    },
  );
}

function decode(file: string, text: string): JournalEntry[] {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new JournalError(
      file,
      `not valid JSON (${(error as Error).message})`,
      { cause: error },
    );
  }
  const root = data as {
    format?: unknown;
    version?: unknown;
    accounts?: unknown;
  };
  if (
    root?.format !== FORMAT || root.version !== 1 ||
    !Array.isArray(root.accounts)
  ) {
    throw new JournalError(file, `not a version 1 ${FORMAT} file`);
  }
  root.accounts.forEach((entry, i) => {
    const problem = entryProblem(entry);
    if (problem) throw new JournalError(file, `accounts[${i}]: ${problem}`);
  });
  return root.accounts as JournalEntry[];
}

function entryProblem(entry: Partial<JournalEntry> | null): string | undefined {
  if (typeof entry !== "object" || entry === null) return "not an object";
  if (!Number.isSafeInteger(entry.entityId)) {
    return "entityId is not a whole number";
  }
  if (entry.persistentId !== null && typeof entry.persistentId !== "string") {
    return "persistentId is not a string";
  }
  if (
    !Array.isArray(entry.emails) ||
    !entry.emails.every((e) => typeof e === "string")
  ) return "emails is not a list of strings";
  if (
    !Array.isArray(entry.removals) ||
    !entry.removals.every((r) =>
      typeof r?.group === "string" && typeof r?.name === "string" &&
      (r.outcome === undefined || OUTCOMES.includes(r.outcome))
    )
  ) {
    return "removals is not a list of {group, name, outcome?}";
  }
  if (!Number.isSafeInteger(entry.when)) return "when is not a time in ms";
  if (typeof entry.scheduled !== "boolean") {
    return "scheduled is not true or false";
  }
  return undefined;
}

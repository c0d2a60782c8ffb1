/**
 * The run lock: an OS file lock on `{stateDir}/lock`, so two runs never
 * work at once. The OS releases it when the holder exits or is killed, so
 * there is never a stale lock to clean up.
 */

import { dirname, join } from "node:path";

export const LOCK_FILE = "lock";

/** A held lock; `release` is also done by the OS at exit. */
export interface RunLock {
  readonly file: string;
  release(): void;
}

/** The state directory cannot be created or written. */
export class StateDirError extends Error {
  constructor(readonly dir: string, options: { cause: Error }) {
    super(
      `Cannot use state directory "${dir}": ${options.cause.message} (set state_dir to a directory this user can write)`,
      options,
    );
    this.name = "StateDirError";
  }
}

/**
 * Creates the state directory, but not its parents: a missing parent is more
 * likely a typo in state_dir than a wish.
 */
async function ensureDirectory(dir: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { mode: 0o700 });
  } catch (error) {
    if (!(error instanceof Deno.errors.AlreadyExists)) throw error;
    if (!(await Deno.stat(dir)).isDirectory) {
      throw new Error("it is not a directory");
    }
  }
}

/**
 * Checks, creating nothing, that the state directory could be used: it is a
 * directory, or it is missing but its parent exists. For dry runs.
 *
 * @throws {StateDirError} naming what is wrong.
 */
export async function inspectStateDir(dir: string): Promise<void> {
  const problem = await stat(dir).then(
    (info) => info.isDirectory ? undefined : "it is not a directory",
    async () =>
      (await stat(dirname(dir)).catch(() => undefined))?.isDirectory
        ? undefined
        : "its parent directory does not exist",
  );
  if (problem) throw new StateDirError(dir, { cause: new Error(problem) });
}

function stat(path: string): Promise<Deno.FileInfo> {
  return Deno.stat(path);
}

/** The pid written by the run holding the lock, if it can be read. */
export async function lockHolder(
  stateDir: string,
): Promise<number | undefined> {
  try {
    const pid = Number.parseInt(
      await Deno.readTextFile(join(stateDir, LOCK_FILE)),
      10,
    );
    return Number.isSafeInteger(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Takes the lock without waiting. Returns undefined when another run holds
 * it.
 *
 * @throws {StateDirError} when the directory cannot be created or written.
 */
export async function tryLock(stateDir: string): Promise<RunLock | undefined> {
  const file = join(stateDir, LOCK_FILE);
  let handle: Deno.FsFile;
  try {
    await ensureDirectory(stateDir);
    handle = await Deno.open(file, {
      read: true,
      write: true,
      create: true,
      mode: 0o600,
    });
  } catch (error) {
    throw new StateDirError(stateDir, { cause: error as Error });
  }
  if (!(await handle.tryLock(true))) {
    handle.close();
    return undefined;
  }
  // The pid is for a curious operator only; the lock is the OS lock.
  await handle.truncate(0);
  await handle.write(new TextEncoder().encode(`${Deno.pid}\n`));
  return {
    file,
    release() {
      handle.close();
    },
  };
}

/**
 * The audit trail: appends one JSON line per change and per mail outcome to
 * `{stateDir}/audit.log`. It records ids, attribute names, times and
 * statuses; never attribute values, never passwords.
 */

import { join } from "node:path";

export const AUDIT_FILE = "audit.log";

export type AuditEvent =
  | {
    event: "attribute-removed";
    entityId: number;
    persistentId: string | null;
    group: string;
    attribute: string;
    outcome: "removed" | "absent" | "immutable";
    status: number;
  }
  | {
    event: "removal-scheduled";
    entityId: number;
    persistentId: string | null;
    when: number;
    status: number;
  }
  | {
    event: "step-failed";
    entityId: number;
    persistentId: string | null;
    step: string;
    status: number | null;
    error: string;
  }
  | {
    event: "entity-gone";
    entityId: number;
    persistentId: string | null;
  }
  | {
    event: "mail";
    result: "accepted" | "partly-refused" | "failed";
    accounts: number;
    entityIds: number[];
    accepted: string[];
    rejected: string[];
    error?: string;
  };

/** Appends audit lines for one run. */
export class Audit {
  readonly file: string;
  readonly #handle: Deno.FsFile;
  readonly #runId: string;
  readonly #encoder = new TextEncoder();

  private constructor(file: string, handle: Deno.FsFile, runId: string) {
    this.file = file;
    this.#handle = handle;
    this.#runId = runId;
  }

  static async open(stateDir: string, runId: string): Promise<Audit> {
    const file = join(stateDir, AUDIT_FILE);
    const handle = await Deno.open(file, {
      append: true,
      create: true,
      mode: 0o600,
    });
    return new Audit(file, handle, runId);
  }

  /** Appends one line; O_APPEND keeps concurrent lines whole. */
  record(event: AuditEvent): void {
    const line = JSON.stringify({
      time: new Date().toISOString(),
      run: this.#runId,
      ...event,
    });
    this.#handle.writeSync(this.#encoder.encode(line + "\n"));
  }

  close(): void {
    this.#handle.close();
  }
}

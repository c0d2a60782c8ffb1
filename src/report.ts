/**
 * Turns a `RunReport` into what people and programs read: the dry-run plan
 * as a table, the one-line run summary, and the `--report` JSON document.
 * Pure functions; main.ts decides where they go.
 */

import { isApplied, type JournalEntry } from "./journal.ts";
import type { Plan } from "./plan.ts";
import type { RunReport } from "./run.ts";
import { isImmutableSystemAttribute } from "./unity.ts";

/** The dry-run plan: one row per account, then what else would happen. */
export function planTable(
  plan: Plan,
  journal: readonly JournalEntry[],
  retentionDays: number,
  now = Date.now(),
): string {
  const lines = [
    `Dry run: nothing was changed. Group ${plan.group}: ${plan.scanned} members read, ` +
    `${plan.accounts.length} to deprovision, ${plan.alreadyScheduled} already scheduled for removal, ` +
    `${plan.unreadable.length} unreadable.`,
  ];
  if (plan.accounts.length > 0) {
    const rows = plan.accounts.map((a) => [
      String(a.entityId),
      a.persistentId ?? "(none)",
      a.emails.join(", ") || "-",
      a.removals.map(attributeLabel).join(", ") || "-",
    ]);
    lines.push(
      "",
      ...table(
        ["ENTITY", "PERSISTENT ID", "E-MAIL", "ATTRIBUTES TO REMOVE"],
        rows,
      ),
    );
    const when = new Date(now + retentionDays * 86_400_000).toISOString();
    lines.push(
      "",
      `Removal would be scheduled for about ${when} (retention_period ${retentionDays} days).`,
    );
    if (
      plan.accounts.some((a) =>
        a.removals.some((r) => isImmutableSystemAttribute(r.name))
      )
    ) {
      lines.push(
        "* a system attribute Unity refuses to remove: asked for, and left in place.",
      );
    }
  }
  const pending = journal.filter((e) => !isApplied(e)).length;
  const unreported = journal.length - pending;
  if (pending > 0) {
    lines.push(
      `The journal holds ${pending} unfinished account(s) that a real run would resume.`,
    );
  }
  if (unreported > 0) {
    lines.push(
      `The journal holds ${unreported} account(s) whose notification is still due.`,
    );
  }
  for (const u of plan.unreadable) {
    lines.push(`Unreadable: entity ${u.entityId}: ${u.error}`);
  }
  return lines.join("\n");
}

/** One line for the end of a run. */
export function summaryLine(report: RunReport): string {
  const { plan, mail } = report;
  const mailText = mail.result === "not-needed"
    ? "no notification needed"
    : mail.result === "failed"
    ? `notification NOT delivered (${mail.accounts} accounts kept for the next run)`
    : `notification of ${plural(mail.accounts, "account")} accepted for ${
      plural(mail.accepted.length, "recipient")
    }` +
      (mail.rejected.length > 0 ? `, refused for ${mail.rejected.length}` : "");
  return `Run ${report.runId}: ${
    plural(plan.scanned, "member")
  } of ${plan.group} read, ${plan.accounts.length} newly selected, ` +
    `${plural(report.failed.length, "failure")}; ${mailText}; ${
      plural(report.requests, "Unity request")
    }.`;
}

/** The `--report` document: machine-readable, no secrets, no mail body. */
export function reportJson(report: RunReport): string {
  return JSON.stringify(
    {
      runId: report.runId,
      dryRun: report.dryRun,
      exitCode: report.exitCode,
      group: report.plan.group,
      scanned: report.plan.scanned,
      bulkListing: report.plan.bulk,
      alreadyScheduled: report.plan.alreadyScheduled,
      selected: report.plan.accounts,
      unreadable: report.plan.unreadable,
      accounts: report.accounts.map((e) => ({
        ...e,
        applied: isApplied(e),
        mailed: report.mail.entityIds.includes(e.entityId),
      })),
      failed: report.failed,
      mail: report.mail,
      requests: report.requests,
    },
    null,
    2,
  );
}

function attributeLabel(removal: { group: string; name: string }): string {
  const mark = isImmutableSystemAttribute(removal.name) ? "*" : "";
  const where = removal.group === "/" ? "" : `@${removal.group}`;
  return `${removal.name}${where}${mark}`;
}

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => r[i]!.length))
  );
  const line = (cells: string[]) =>
    cells.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd();
  return [line(header), ...rows.map(line)];
}

/** "1 account", "2 accounts". */
export function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

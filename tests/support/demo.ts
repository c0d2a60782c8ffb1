/**
 * `deno task demo`: the whole job on an embedded simulated Unity (HTTPS) and
 * a local SMTP server (STARTTLS + AUTH), no set-up needed. Writes a config
 * and state into a temporary directory, runs the real command line in this
 * process, and prints what it did and the mail that arrived.
 */

import { fileURLToPath } from "node:url";
import { cli } from "../../main.ts";
import { seedDemo } from "./population.ts";
import { SmtpSink } from "./smtp.ts";
import { type SimEntity, UnitySim } from "./unity_sim.ts";

const TLS_DIR = fileURLToPath(new URL("../fixtures/tls/", import.meta.url));
const SMTP_USER = "b2access";
const SMTP_PASSWORD = "demo-smtp-secret";

function say(text = ""): void {
  Deno.stdout.writeSync(new TextEncoder().encode(text + "\n"));
}

function heading(text: string): void {
  say(`\n=== ${text} ${"=".repeat(Math.max(0, 70 - text.length))}`);
}

async function main(): Promise<void> {
  const tls = {
    cert: await Deno.readTextFile(`${TLS_DIR}server.pem`),
    key: await Deno.readTextFile(`${TLS_DIR}server.key`),
  };
  const sim = await UnitySim.start({ profile: "4.x", tls });
  const population = seedDemo(sim, { users: 300, seed: 2026 });
  const smtp = await SmtpSink.start({
    mode: "starttls",
    cert: tls,
    auth: { user: SMTP_USER, pass: SMTP_PASSWORD },
  });
  const dir = await Deno.makeTempDir({ prefix: "b2access-demo-" });
  try {
    const config = await writeConfig(dir, sim.url, smtp.port);
    const before = sim.snapshot();
    heading("B2ACCESS deprovisioning demo");
    say(
      `Simulated Unity ${sim.profile} at ${sim.url} (HTTPS, test CA): ${before.length} entities,`,
    );
    say(
      `  ${population.disabledUnscheduled.length} disabled and not yet scheduled for removal,`,
    );
    say(
      `  ${population.alreadyScheduled.length} disabled and already scheduled (left alone).`,
    );
    say(
      `Local SMTP server at 127.0.0.1:${smtp.port} (STARTTLS, AUTH as ${SMTP_USER}).`,
    );
    say(`Config: ${config}`);

    heading("1. Dry run: b2access-deprovision --dry-run");
    const dryCode = await cli(["--config", config, "--dry-run"]);
    say(
      `exit code ${dryCode}; Unity requests so far: ${sim.requests.length}, all GET: ${
        sim.requests.every((r) => r.method === "GET")
      }`,
    );

    heading("2. The real run: b2access-deprovision --log-level INFO");
    const runCode = await cli(["--config", config, "--log-level", "INFO"]);
    say(`exit code ${runCode}`);

    heading("3. The mail that arrived");
    await smtp.waitForMails(1, 5000);
    printMail(smtp);

    heading("4. Unity afterwards");
    printOutcome(before, sim, population.disabledUnscheduled);

    heading("5. A second run, as cron would start it (default log level)");
    const again = await cli(["--config", config]);
    say(
      `exit code ${again}; no output means nothing to do. Mails received in all: ${smtp.mails.length}`,
    );
  } finally {
    await smtp.close();
    await sim.close();
    await Deno.remove(dir, { recursive: true });
  }
}

async function writeConfig(
  dir: string,
  unityUrl: string,
  smtpPort: number,
): Promise<string> {
  const file = `${dir}/config.yml`;
  const text = `api:
  base_url: "${unityUrl}"
  user: "admin"
  password: "the!admin pass"
  cert_verify: "${TLS_DIR}ca.pem"
attr_whitelist: []
retention_period: 365
notifications:
  email:
    host: "127.0.0.1"
    port: ${smtpPort}
    use_tls: True
    user: "${SMTP_USER}"
    password: "${SMTP_PASSWORD}"
    cert_verify: "${TLS_DIR}ca.pem"
    from: "B2ACCESS Notifications <noreply@b2access.example.org>"
    to:
      - "SP1 Operator <admin@sp1.example.org>"
      - "Zoë Ångström <zoe@sp2.example.org>"
    subject: "Deprovisioned B2ACCESS accounts"
log_level: "WARNING"
dry_run: False
state_dir: "state"
`;
  await Deno.writeTextFile(file, text, { mode: 0o600 });
  return file;
}

function printMail(smtp: SmtpSink): void {
  const mail = smtp.mails[0];
  if (!mail) return say("No mail arrived.");
  const { parsed } = mail;
  say(
    `SMTP envelope: from ${mail.envelope.from} to ${
      mail.envelope.to.join(", ")
    }; TLS: ${mail.secure}; AUTH: ${mail.authUser}`,
  );
  say(`From: ${parsed.from?.text}`);
  say(`To: ${[parsed.to ?? []].flat().map((a) => a.text).join(", ")}`);
  say(`Subject: ${parsed.subject}`);
  say(`\n${parsed.text?.trimEnd()}\n`);
  for (const attachment of parsed.attachments) {
    say(
      `Attachment ${attachment.filename} (${attachment.contentType}, ${attachment.size} bytes):`,
    );
    say(attachment.content.toString("utf8"));
  }
}

function printOutcome(
  before: SimEntity[],
  sim: UnitySim,
  targets: number[],
): void {
  const after = new Map(sim.snapshot().map((e) => [e.id, e]));
  const scheduled = targets.filter((id) =>
    after.get(id)?.scheduledOperation === "REMOVE"
  );
  const kept = targets.flatMap((id) =>
    after.get(id)?.attributes.filter((a) => a.direct !== false) ?? []
  );
  const untouched = before.filter((e) => !targets.includes(e.id))
    .filter((e) => JSON.stringify(e) === JSON.stringify(after.get(e.id)))
    .length;
  say(
    `${scheduled.length} of ${targets.length} targeted accounts are scheduled for REMOVE in 365 days.`,
  );
  say(
    `Direct attributes left on them: ${
      kept.map((a) => a.name).sort().filter((n, i, all) => all.indexOf(n) === i)
        .join(", ") || "none"
    } (Unity refuses to remove these system attributes).`,
  );
  say(
    `Entities removed immediately: ${
      sim.removedEntities.filter((r) => r.immediate).length
    }.`,
  );
  say(
    `Other entities unchanged: ${untouched} of ${
      before.length - targets.length
    }.`,
  );
}

if (import.meta.main) await main();

/**
 * The release artifact works with exactly the permissions it ships with.
 * Builds the single-file bundle and runs it with `deno run --no-prompt` and
 * the permission flags of the `compile` task, from a working directory
 * outside the repository, end to end against the simulator and an SMTP
 * server. With B2ACCESS_BINARY set (CI does so when DENORT_BIN is
 * available), the compiled binary itself is run the same way.
 */

import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { seedDemo } from "./support/population.ts";
import { SmtpSink } from "./support/smtp.ts";
import { UnitySim } from "./support/unity_sim.ts";

const ROOT = fileURLToPath(new URL("../", import.meta.url));
const TLS = `${ROOT}tests/fixtures/tls/`;

/** The runtime flags the compiled binary gets, read from deno.json. */
async function releaseFlags(): Promise<string[]> {
  const meta = JSON.parse(await Deno.readTextFile(`${ROOT}deno.json`));
  const words: string[] = meta.tasks.compile.split(/\s+/);
  const flags = words.slice(
    words.indexOf("compile") + 1,
    words.indexOf("main.ts"),
  );
  const output = flags.indexOf("--output");
  if (output >= 0) flags.splice(output, 2);
  assert.ok(flags.every((f) => f.startsWith("--")), flags.join(" "));
  return flags;
}

async function buildBundle(dir: string): Promise<string> {
  const output = `${dir}/b2access-deprovision.js`;
  const { code, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--platform",
      "deno",
      "--output",
      output,
      `${ROOT}main.ts`,
    ],
    cwd: ROOT,
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  return output;
}

/** How to start the artifact: the compiled binary, or the bundle under deno run. */
async function artifact(
  dir: string,
): Promise<(args: string[]) => Deno.Command> {
  const binary = Deno.env.get("B2ACCESS_BINARY");
  const clean = {
    cwd: dir,
    clearEnv: true,
    env: { PATH: "/usr/bin:/bin" },
    stdout: "piped",
    stderr: "piped",
  } as const;
  if (binary) return (args) => new Deno.Command(binary, { args, ...clean });
  const bundle = await buildBundle(dir);
  const flags = await releaseFlags();
  return (args) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", ...flags, bundle, ...args],
      ...clean,
    });
}

Deno.test("the release artifact runs the whole job with only its baked-in permissions", async () => {
  const dir = await Deno.makeTempDir({ prefix: "b2access-release-" });
  const tls = {
    cert: await Deno.readTextFile(`${TLS}server.pem`),
    key: await Deno.readTextFile(`${TLS}server.key`),
  };
  const sim = await UnitySim.start({ profile: "4.x", tls });
  const population = seedDemo(sim, { users: 40, seed: 11 });
  const smtp = await SmtpSink.start({
    mode: "starttls",
    cert: tls,
    auth: { user: "mailer", pass: "mail-secret" },
  });
  try {
    await Deno.writeTextFile(
      `${dir}/ca.pem`,
      await Deno.readTextFile(`${TLS}ca.pem`),
    );
    await Deno.writeTextFile(
      `${dir}/config.yml`,
      `api:
  base_url: "${sim.url}"
  user: "admin"
  password: "the!admin pass"
  cert_verify: "ca.pem"
notifications:
  email:
    host: "127.0.0.1"
    port: ${smtp.port}
    use_tls: True
    user: "mailer"
    password: "mail-secret"
    cert_verify: "ca.pem"
    from: "noreply@example.org"
    to: ["sp@example.org"]
`,
      { mode: 0o600 },
    );
    const command = await artifact(dir);

    const version = await command(["--version"]).output();
    assert.equal(version.code, 0);

    const run = await command(["--log-level", "INFO"]).output();
    const stderr = new TextDecoder().decode(run.stderr);
    assert.equal(run.code, 0, stderr);
    assert.doesNotMatch(stderr, /NotCapable|Requires .* access/);
    assert.equal(smtp.mails.length, 1);
    const users = JSON.parse(
      smtp.mails[0]!.parsed.attachments[0]!.content.toString(),
    );
    assert.equal(users.length, population.disabledUnscheduled.length);
    for (const id of population.disabledUnscheduled) {
      assert.equal(sim.entity(id)?.scheduledOperation, "REMOVE");
    }
    // The journal, audit trail and lock went to the config's directory.
    const files = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.ok(
      files.includes("audit.log") && files.includes("journal.json") &&
        files.includes("lock"),
      files.join(),
    );

    const check = await command(["check"]).output();
    assert.equal(
      check.code,
      0,
      new TextDecoder().decode(check.stdout) +
        new TextDecoder().decode(check.stderr),
    );
  } finally {
    await smtp.close();
    await sim.close();
    await Deno.remove(dir, { recursive: true });
  }
});

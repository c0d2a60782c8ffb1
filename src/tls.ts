/**
 * Turns a configured `Trust` into TLS options for node:tls-based clients
 * (undici for Unity, nodemailer for SMTP), and names the trust source so an
 * error can say which one rejected a certificate.
 */

import type { Trust } from "./config.ts";

/** Options understood by node:tls `connect`, plus where they came from. */
export interface TlsSettings {
  readonly ca?: string[];
  readonly rejectUnauthorized: boolean;
  /** For messages: "built-in roots + /etc/ssl/certs/ca-certificates.crt". */
  readonly source: string;
}

/** Where Debian, RHEL and Alpine hosts keep their system CA bundle. */
const SYSTEM_BUNDLES = [
  "/etc/ssl/certs/ca-certificates.crt",
  "/etc/pki/tls/certs/ca-bundle.crt",
  "/etc/ssl/cert.pem",
];

/**
 * Resolves trust: `default` is the system store (`SSL_CERT_FILE` first, then
 * the usual bundle paths) or, on a host without one, the built-in roots;
 * `ca` adds one bundle to that; `insecure` verifies nothing.
 */
export function tlsSettings(
  trust: Trust,
  env: (name: string) => string | undefined = (name) => Deno.env.get(name),
): TlsSettings {
  if (trust.kind === "insecure") {
    return { rejectUnauthorized: false, source: "none (cert_verify: false)" };
  }
  // node:tls replaces its built-in roots with `ca`, and reading them needs
  // full --allow-sys; a system bundle holds the same public roots anyway.
  const system = systemBundle(env);
  const ca = system ? [system.pem] : [];
  const sources = [system ? system.path : "built-in roots"];
  if (trust.kind === "ca") {
    ca.push(trust.pem);
    sources.push(trust.path);
  }
  return {
    ca: ca.length > 0 ? ca : undefined,
    rejectUnauthorized: true,
    source: sources.join(" + "),
  };
}
function systemBundle(
  env: (name: string) => string | undefined,
): { path: string; pem: string } | undefined {
  const fromEnv = env("SSL_CERT_FILE");
  for (const path of fromEnv ? [fromEnv, ...SYSTEM_BUNDLES] : SYSTEM_BUNDLES) {
    try {
      return { path, pem: Deno.readTextFileSync(path) };
    } catch {
      // Not on this host; try the next usual place.
    }
  }
  return undefined;
}

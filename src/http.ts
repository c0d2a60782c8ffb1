/**
 * The one HTTP client for Unity: reads the API settings; sends requests over
 * `fetch` (undici's, for per-client TLS trust and keep-alive) with Basic
 * auth, a timeout, bounded concurrency and retries of transient failures,
 * and turns every failure into an `ApiError` naming the request.
 */

import { Agent, fetch as undiciFetch } from "undici";
import type { ApiConfig } from "./config.ts";
import type { Logger } from "./log.ts";
import { Semaphore } from "./pool.ts";
import { tlsSettings } from "./tls.ts";

export const USER_AGENT = "b2access-deprovision/1.0.0";

export type Method = "GET" | "PUT" | "DELETE";

/** Why a request failed, for callers that must tell cases apart. */
export type ApiErrorKind =
  | "network" // connection refused, reset, DNS
  | "timeout" // no answer within api.timeout, or the run deadline passed
  | "tls" // certificate not trusted, wrong name, handshake failed
  | "auth" // 403 (Unity has no 401), or 400 for a missing header
  | "status" // any other non-2xx answer
  | "shape"; // a 2xx answer that is not the JSON expected

/** A failed Unity request: what was asked, what came back, what to do. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly kind: ApiErrorKind,
    readonly method: string,
    readonly path: string,
    readonly status?: number,
    /** Unity's exception class from the error body, e.g. `UnknownIdentityException`. */
    readonly unityError?: string,
    /** Unity's own message from the error body. */
    readonly unityMessage?: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = "ApiError";
  }
}

export interface HttpOptions {
  api: ApiConfig;
  log: Logger;
  /** Only GET is sent when false: the plan phase and dry runs use this. */
  allowMutations: boolean;
  /** Aborts everything when the run's deadline passes. */
  signal?: AbortSignal;
  /** Milliseconds to wait before retry `attempt` (1-based); for tests. */
  backoff?: (attempt: number) => number;
}

type Query = Record<string, string | number | boolean | undefined>;

/** Sends requests to `{base_url}/{path}/{version}` with the configured policy. */
export class UnityHttp {
  readonly #options: HttpOptions;
  readonly #agent: Agent;
  readonly #limit: Semaphore;
  readonly #auth: string;
  readonly #root: string;
  readonly #trustSource: string;
  #requests = 0;

  constructor(options: HttpOptions) {
    const { api } = options;
    const tls = tlsSettings(api.trust);
    this.#options = options;
    this.#trustSource = tls.source;
    this.#limit = new Semaphore(api.maxConcurrency);
    this.#auth = "Basic " + btoa(utf8Binary(`${api.user}:${api.password}`));
    this.#root = [api.baseUrl, api.path, api.version].filter(Boolean).join("/");
    this.#agent = new Agent({
      connections: api.maxConcurrency,
      headersTimeout: api.timeoutMs,
      bodyTimeout: api.timeoutMs,
      connect: {
        timeout: api.timeoutMs,
        ca: tls.ca,
        rejectUnauthorized: tls.rejectUnauthorized,
      },
    });
  }

  /** Requests sent so far, retries included. */
  get requestCount(): number {
    return this.#requests;
  }

  get allowsMutations(): boolean {
    return this.#options.allowMutations;
  }

  /**
   * Sends one request and returns the parsed JSON body (undefined for 204).
   *
   * @throws {ApiError} for any failure once retries are spent.
   */
  async request(
    method: Method,
    path: string,
    query: Query = {},
  ): Promise<unknown> {
    if (method !== "GET" && !this.#options.allowMutations) {
      // A bug, not an operational failure: nothing may reach Unity.
      throw new Error(
        `Refusing ${method} ${path}: this Unity client is read-only (plan phase or dry run)`,
      );
    }
    const url = this.#url(path, query);
    const retries = this.#options.api.retries;
    for (let attempt = 0;; attempt++) {
      try {
        return await this.#limit.run(() => this.#send(method, path, url));
      } catch (error) {
        if (
          !(error instanceof ApiError) || !isTransient(error) ||
          attempt >= retries
        ) throw error;
        const wait = this.#backoff(attempt + 1);
        this.#options.log.info("retrying Unity request", {
          method,
          path,
          attempt: attempt + 1,
          waitMs: wait,
          reason: error.message,
        });
        await sleep(wait, this.#options.signal);
      }
    }
  }

  /** Closes idle keep-alive connections. */
  async close(): Promise<void> {
    await this.#agent.close();
  }

  async #send(method: Method, path: string, url: string): Promise<unknown> {
    this.#requests++;
    const { timeoutMs } = this.#options.api;
    const signals = [AbortSignal.timeout(timeoutMs)];
    if (this.#options.signal) signals.push(this.#options.signal);
    let response;
    let text;
    try {
      response = await undiciFetch(url, {
        method,
        dispatcher: this.#agent,
        signal: AbortSignal.any(signals),
        headers: {
          authorization: this.#auth,
          accept: "application/json",
          "user-agent": USER_AGENT,
        },
      });
      text = await response.text();
    } catch (error) {
      // A missing permission is a packaging bug, not a network failure.
      if (hasCause(error, Deno.errors.NotCapable)) throw error;
      throw this.#transportError(method, path, error);
    }
    this.#options.log.debug("unity response", {
      method,
      path,
      status: response.status,
    });
    if (response.ok) {
      return parseBody(
        method,
        path,
        response.status,
        text,
        response.headers.get("content-type"),
      );
    }
    throw statusError(method, path, response.status, text);
  }

  #url(path: string, query: Query): string {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined) params.set(key, String(value));
    }
    const search = params.size > 0 ? `?${params}` : "";
    return `${this.#root}${path}${search}`;
  }

  #backoff(attempt: number): number {
    if (this.#options.backoff) return this.#options.backoff(attempt);
    // Capped exponential backoff with full jitter.
    const cap = Math.min(8000, 250 * 2 ** attempt);
    return Math.round(cap / 2 + Math.random() * cap / 2);
  }

  #transportError(method: string, path: string, error: unknown): ApiError {
    const host = new URL(this.#options.api.baseUrl).host;
    const signal = this.#options.signal;
    if (signal?.aborted) {
      return new ApiError(
        `Cannot ${method} ${path}: the run deadline (run_timeout) passed`,
        "timeout",
        method,
        path,
        undefined,
        undefined,
        undefined,
        { cause: error },
      );
    }
    const detail = describeCause(error);
    if (isTimeout(error)) {
      return new ApiError(
        `Cannot ${method} ${path}: ${host} did not answer within ${this.#options.api.timeoutMs} ms (api.timeout)`,
        "timeout",
        method,
        path,
        undefined,
        undefined,
        undefined,
        { cause: error },
      );
    }
    if (/cert|tls|ssl|handshake|issuer|self.signed/i.test(detail)) {
      return new ApiError(
        `Cannot ${method} ${path}: TLS with ${host} failed (${detail}); trusted: ${this.#trustSource} (set api.cert_verify to the CA bundle that signed Unity's certificate)`,
        "tls",
        method,
        path,
        undefined,
        undefined,
        undefined,
        { cause: error },
      );
    }
    return new ApiError(
      `Cannot ${method} ${path}: cannot reach ${host} (${detail}); check api.base_url and the network`,
      "network",
      method,
      path,
      undefined,
      undefined,
      undefined,
      { cause: error },
    );
  }
}

/** 5xx, 429, network errors and timeouts may pass; nothing else is retried. */
function isTransient(error: ApiError): boolean {
  if (error.kind === "network" || error.kind === "timeout") {
    return !error.message.includes("run deadline");
  }
  return error.kind === "status" &&
    (error.status === 429 || (error.status ?? 0) >= 500);
}

function parseBody(
  method: string,
  path: string,
  status: number,
  text: string,
  type: string | null,
): unknown {
  if (status === 204 || (method !== "GET" && text === "")) return undefined;
  if (text.trim() === "") {
    throw new ApiError(
      `Cannot ${method} ${path}: Unity answered ${status} with an empty body where JSON was expected`,
      "shape",
      method,
      path,
      status,
    );
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ApiError(
      `Cannot ${method} ${path}: Unity answered ${status} with ${
        type ?? "no content type"
      } that is not JSON (starts ${
        JSON.stringify(text.slice(0, 60))
      }); is a proxy in the way?`,
      "shape",
      method,
      path,
      status,
      undefined,
      undefined,
      { cause: error },
    );
  }
}

function statusError(
  method: string,
  path: string,
  status: number,
  text: string,
): ApiError {
  let body: { message?: unknown; error?: unknown } = {};
  try {
    body = JSON.parse(text) ?? {};
  } catch {
    // Unity's 404 for an unconvertible parameter, and some 500s, have no body.
  }
  const unityError = typeof body.error === "string" ? body.error : undefined;
  const unityMessage = typeof body.message === "string"
    ? body.message
    : undefined;
  const said = unityError || unityMessage
    ? `${unityError ?? "error"}: ${unityMessage ?? ""}`.trim()
    : text.trim()
    ? `body starts ${JSON.stringify(text.slice(0, 60))}`
    : "no body";
  const auth = status === 403 ||
    (status === 400 && /authenticat|credential/i.test(said));
  const hint = auth && method !== "GET"
    ? " (the API user may lack the identityModify right, or its credentials changed; not retried)"
    : auth
    ? " (check api.user and api.password and that the user has the admin role; not retried: Unity locks an address out after repeated failures)"
    : status === 404 && path.includes("%2F")
    ? " (a reverse proxy may refuse %2F in URLs: allow encoded slashes, e.g. AllowEncodedSlashes NoDecode in Apache)"
    : "";
  return new ApiError(
    `Cannot ${method} ${path}: Unity answered ${status} (${said})${hint}`,
    auth ? "auth" : "status",
    method,
    path,
    status,
    unityError,
    unityMessage,
  );
}

function hasCause(
  error: unknown,
  type: abstract new (...args: never[]) => Error,
): boolean {
  for (let e = error, depth = 0; e && depth < 5; depth++) {
    if (e instanceof type) return true;
    e = (e as { cause?: unknown }).cause;
  }
  return false;
}

function isTimeout(error: unknown): boolean {
  const text = describeCause(error);
  return /timeout|timed out|aborted/i.test(text) ||
    (error instanceof DOMException && error.name === "TimeoutError");
}

/** The innermost useful message of a fetch failure ("fetch failed" says nothing). */
function describeCause(error: unknown): string {
  const parts: string[] = [];
  for (
    let e = error, depth = 0;
    e && depth < 5;
    e = (e as { cause?: unknown }).cause, depth++
  ) {
    const { code, message, name } = e as {
      code?: string;
      message?: string;
      name?: string;
    };
    if (code) parts.push(code);
    if (message && message !== "fetch failed") parts.push(message);
    else if (name === "TimeoutError") parts.push("timeout");
  }
  return [...new Set(parts)].join(": ") || String(error);
}

function utf8Binary(text: string): string {
  return String.fromCharCode(...new TextEncoder().encode(text));
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal?.addEventListener("abort", done, { once: true });
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
  });
}

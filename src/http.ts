/**
 * The one HTTP client for Unity: reads the API settings; sends requests with
 * undici (per-client TLS trust, keep-alive) with Basic auth, a timeout,
 * bounded concurrency and retries of transient failures, and turns every
 * failure into an `ApiError` naming the request. A large JSON list can be
 * read as it streams in.
 *
 * Why undici's `request()` and not a `fetch()`: under Deno, neither Deno's
 * fetch (no per-client "insecure" switch; rejects a self-signed CA:TRUE
 * certificate given as a CA) nor undici's fetch (a body read in progress
 * ignores its AbortSignal, so a server that stalls or drops mid-body hangs
 * the run) can keep this tool's promises; `request()` can, with a third
 * less CPU per request.
 */

import { Agent, request as undiciRequest } from "undici";
import type { ApiConfig } from "./config.ts";
import type { Logger } from "./log.ts";
import { jsonArrayElements, JsonStreamError } from "./json_stream.ts";
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
export interface ApiErrorFacts {
  readonly kind: ApiErrorKind;
  readonly method: string;
  readonly path: string;
  readonly status?: number;
  /** Unity's exception class from the error body, e.g. `UnknownIdentityException`. */
  readonly unityError?: string;
  /** Unity's own message from the error body. */
  readonly unityMessage?: string;
}

/** A failed Unity request: what was asked, what came back, what to do. */
export class ApiError extends Error implements ApiErrorFacts {
  readonly kind: ApiErrorKind;
  readonly method: string;
  readonly path: string;
  readonly status?: number;
  readonly unityError?: string;
  readonly unityMessage?: string;

  constructor(message: string, facts: ApiErrorFacts, options?: ErrorOptions) {
    super(message, options);
    this.name = "ApiError";
    this.kind = facts.kind;
    this.method = facts.method;
    this.path = facts.path;
    this.status = facts.status;
    this.unityError = facts.unityError;
    this.unityMessage = facts.unityMessage;
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

/** What the client reads of Unity's answer. */
interface Answer {
  readonly status: number;
  readonly ok: boolean;
  readonly contentType: string | null;
  readonly body: AsyncIterable<Uint8Array>;
  text(): Promise<string>;
}

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
    return await this.#retrying(
      method,
      path,
      () => this.#send(method, path, url),
    );
  }

  /**
   * Sends a GET whose answer is a JSON array and passes each element to
   * `pick` as the body streams in, keeping what it returns (undefined drops
   * the element), so a large answer is never held whole. A retry starts
   * over. Here api.timeout bounds the wait for the answer and every pause
   * in its body, not the whole transfer.
   *
   * @throws {ApiError} for any failure once retries are spent, and whatever
   * `pick` throws, unchanged.
   */
  async pickElements<T>(
    path: string,
    pick: (element: unknown, index: number) => T | undefined,
  ): Promise<{ count: number; kept: T[] }> {
    const url = this.#url(path, {});
    return await this.#retrying(
      "GET",
      path,
      () => this.#stream(path, url, pick),
    );
  }

  /** Closes idle keep-alive connections. */
  async close(): Promise<void> {
    await this.#agent.close();
  }

  async #retrying<T>(
    method: Method,
    path: string,
    send: () => Promise<T>,
  ): Promise<T> {
    const retries = this.#options.api.retries;
    for (let attempt = 0;; attempt++) {
      try {
        return await this.#limit.run(send);
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

  async #send(method: Method, path: string, url: string): Promise<unknown> {
    this.#requests++;
    const deadline = this.#deadline();
    try {
      const response = await this.#okResponse(method, path, url, deadline);
      let text;
      try {
        text = await response.text();
      } catch (error) {
        throw this.#failure(method, path, error);
      }
      return parseBody(
        method,
        path,
        response.status,
        text,
        response.contentType,
      );
    } finally {
      deadline.clear();
    }
  }

  async #stream<T>(
    path: string,
    url: string,
    pick: (element: unknown, index: number) => T | undefined,
  ): Promise<{ count: number; kept: T[] }> {
    this.#requests++;
    const deadline = this.#deadline();
    try {
      const response = await this.#okResponse("GET", path, url, deadline);
      return await this.#readElements(path, response, deadline, pick);
    } finally {
      deadline.clear();
    }
  }

  /** The answer once its head says 2xx; any other answer is read and thrown. */
  async #okResponse(
    method: Method,
    path: string,
    url: string,
    deadline: Deadline,
  ): Promise<Answer> {
    let response;
    let text;
    try {
      response = await this.#open(method, url, deadline.signal);
      this.#options.log.debug("unity response", {
        method,
        path,
        status: response.status,
      });
      if (response.ok) return response;
      text = await response.text();
    } catch (error) {
      throw this.#failure(method, path, error);
    }
    throw statusError(method, path, response.status, text);
  }

  async #readElements<T>(
    path: string,
    response: Answer,
    deadline: Deadline,
    pick: (element: unknown, index: number) => T | undefined,
  ): Promise<{ count: number; kept: T[] }> {
    const elements = jsonArrayElements(
      restartingOnChunks(response.body, deadline),
    );
    const kept: T[] = [];
    try {
      for (let count = 0;; count++) {
        const next = await this.#nextElement(path, response, elements);
        if (next.done) return { count, kept };
        const picked = pick(next.value, count);
        if (picked !== undefined) kept.push(picked);
      }
    } finally {
      // Stops reading when `pick` threw: the rest of the body is dropped.
      await elements.return();
    }
  }

  async #nextElement(
    path: string,
    response: Answer,
    elements: AsyncGenerator<unknown, void, undefined>,
  ): Promise<IteratorResult<unknown, void>> {
    try {
      return await elements.next();
    } catch (error) {
      if (!(error instanceof JsonStreamError)) {
        throw this.#failure("GET", path, error);
      }
      const type = response.contentType ?? "no content type";
      throw new ApiError(
        `Cannot GET ${path}: Unity answered ${response.status} with ${type} that is not JSON, or not the list expected (${error.message}); a proxy may be in the way`,
        { kind: "shape", method: "GET", path, status: response.status },
        { cause: error },
      );
    }
  }

  /** Sends the request; the answer's body is still to be read. */
  async #open(
    method: Method,
    url: string,
    signal: AbortSignal,
  ): Promise<Answer> {
    const { statusCode, headers, body } = await undiciRequest(url, {
      method,
      dispatcher: this.#agent,
      signal,
      headers: {
        authorization: this.#auth,
        accept: "application/json",
        "user-agent": USER_AGENT,
      },
    });
    const type = headers["content-type"];
    return {
      status: statusCode,
      ok: statusCode >= 200 && statusCode < 300,
      contentType: (Array.isArray(type) ? type[0] : type) ?? null,
      body,
      text: () => body.text(),
    };
  }

  #deadline(): Deadline {
    return new Deadline(this.#options.api.timeoutMs, this.#options.signal);
  }

  #failure(method: Method, path: string, error: unknown): unknown {
    // A missing permission is a packaging bug, not a network failure.
    if (hasCause(error, Deno.errors.NotCapable)) return error;
    return this.#transportError(method, path, error);
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
        { kind: "timeout", method, path },
        { cause: error },
      );
    }
    const detail = describeCause(error);
    if (isTimeout(error)) {
      return new ApiError(
        `Cannot ${method} ${path}: ${host} did not answer within ${this.#options.api.timeoutMs} ms (api.timeout)`,
        { kind: "timeout", method, path },
        { cause: error },
      );
    }
    if (/cert|tls|ssl|handshake|issuer|self.signed/i.test(detail)) {
      return new ApiError(
        `Cannot ${method} ${path}: TLS with ${host} failed (${detail}); trusted: ${this.#trustSource} (set api.cert_verify to the CA bundle that signed Unity's certificate)`,
        { kind: "tls", method, path },
        { cause: error },
      );
    }
    return new ApiError(
      `Cannot ${method} ${path}: cannot reach ${host} (${detail}); check api.base_url and the network`,
      { kind: "network", method, path },
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
      { kind: "shape", method, path, status },
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
      }); a proxy may be in the way`,
      { kind: "shape", method, path, status },
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
    ? " (check api.user, the password (api.password, api.password_file or B2ACCESS_API_PASSWORD) and that the user has the admin role; not retried: Unity locks an address out after repeated failures)"
    : status === 404 && path.includes("%2F")
    ? " (a reverse proxy may refuse %2F in URLs: allow encoded slashes, e.g. AllowEncodedSlashes NoDecode in Apache)"
    : "";
  return new ApiError(
    `Cannot ${method} ${path}: Unity answered ${status} (${said})${hint}`,
    {
      kind: auth ? "auth" : "status",
      method,
      path,
      status,
      unityError,
      unityMessage,
    },
  );
}

/** The error and its causes, innermost last (a bounded walk). */
function* causeChain(error: unknown): Generator<unknown> {
  for (let e = error, depth = 0; e && depth < 5; depth++) {
    yield e;
    e = (e as { cause?: unknown }).cause;
  }
}

function hasCause(
  error: unknown,
  type: abstract new (...args: never[]) => Error,
): boolean {
  return [...causeChain(error)].some((e) => e instanceof type);
}

function isTimeout(error: unknown): boolean {
  const text = describeCause(error);
  return /timeout|timed out|aborted/i.test(text) ||
    (error instanceof DOMException && error.name === "TimeoutError");
}

/** The innermost useful message of a fetch failure ("fetch failed" says nothing). */
function describeCause(error: unknown): string {
  const parts: string[] = [];
  for (const e of causeChain(error)) {
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

/**
 * One request's abort signal: it fires when `ms` pass without a `restart()`,
 * or when the run's signal fires. Its one timer is cleared when the request
 * ends. AbortSignal.timeout() and AbortSignal.any() would leave a timer and a
 * listener on the run's signal behind for every request: tens of thousands
 * of those halved the request rate and grew memory.
 */
class Deadline {
  readonly #controller = new AbortController();
  readonly #ms: number;
  readonly #run: AbortSignal | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #onRunAbort = () => this.#controller.abort(this.#run?.reason);

  constructor(ms: number, run: AbortSignal | undefined) {
    this.#ms = ms;
    this.#run = run;
    if (run?.aborted) this.#onRunAbort();
    else run?.addEventListener("abort", this.#onRunAbort, { once: true });
    this.restart();
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  restart(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#controller.abort(
        new DOMException(`no answer within ${this.#ms} ms`, "TimeoutError"),
      );
    }, this.#ms);
  }

  clear(): void {
    clearTimeout(this.#timer);
    this.#run?.removeEventListener("abort", this.#onRunAbort);
  }
}

/** Passes the body on, restarting the deadline as each chunk arrives. */
async function* restartingOnChunks(
  body: AsyncIterable<Uint8Array>,
  deadline: Deadline,
): AsyncGenerator<Uint8Array, void, undefined> {
  for await (const chunk of body) {
    deadline.restart();
    yield chunk;
  }
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

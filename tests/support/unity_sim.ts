/**
 * An in-process imitation of Unity IdM's REST admin API v1, for tests, the
 * demo and the benchmark. It reads the groups and entities seeded through its
 * methods and serves them on 127.0.0.1 (HTTP or HTTPS) in the JSON shapes of
 * one Unity version; it writes every change a client makes into its live
 * state, and records every request it receives.
 *
 * Shapes, status codes and error texts follow Unity's public source
 * (rest-admin `RESTAdmin.java` and `BulkQueryHandler.java`, the JSON mappers
 * of 3.12+, the `types` classes of 1.9 and 2.x, and the engine and storage
 * code behind them). Where the source was not conclusive the choice is
 * marked "Assumed" below.
 *
 * Limitations: only the operations the deprovisioning job uses are served;
 * any other path answers 404 and another method on a served path 405, both
 * with an empty body. Scheduled operations do not run by themselves as time
 * passes; call `runDueOperations()`. `resetConnection` and a hang released by
 * `close()` cannot drop the connection before the response head
 * (`Deno.serve` gives no socket): the head goes out with status 200 and the
 * body breaks off.
 */

/** The Unity versions whose JSON the simulator can speak. */
export type UnityProfile = "1.x" | "2.x" | "3.12" | "4.x";

/** Unity's entity states. */
export type EntityState =
  | "valid"
  | "authenticationDisabled"
  | "disabled"
  | "onlyLoginPermitted";

/** One attribute of an entity in one group. */
export interface SimAttribute {
  name: string;
  group: string;
  /**
   * Native values. For syntax "verifiableEmail" a plain address, an object
   * `{value, confirmationData, tags}` or that object as a JSON string.
   */
  values: unknown[];
  /** False: it comes from a group attribute statement. Default true. */
  direct?: boolean;
  /** Unity's value syntax id. Default "string". */
  syntax?: string;
}

/** An entity as the simulator keeps it; `UnitySim.entity()` gives the live one. */
export interface SimEntity {
  id: number;
  state: EntityState;
  /** Null: none yet; `GET /entity/{id}` creates one (a random UUID). */
  persistentId: string | null;
  /** userName, email, identifier... */
  otherIdentities: { typeId: string; value: string }[];
  /** Always includes "/"; every ancestor of a group is included. */
  groups: string[];
  attributes: SimAttribute[];
  scheduledOperation: "REMOVE" | "DISABLE" | null;
  /** Epoch ms. */
  scheduledTime: number | null;
  /** Epoch ms. */
  removalByUserTime: number | null;
}

/** One request as the simulator received it. */
export interface SimRequest {
  method: string;
  /** The whole path as received (base path included), still percent-encoded. */
  path: string;
  /** The first value of each query parameter. */
  query: Record<string, string>;
  /** 0 while in flight, and for a hang or reset that sent no status of its own. */
  status: number;
  /** Ms since the simulator started. */
  at: number;
  durationMs: number;
}

/**
 * A misbehaviour to inject; the first queued fault that matches wins. Faults
 * act before authentication, like a proxy in front of Unity.
 */
export interface Fault {
  /** Default: any method. */
  method?: string;
  /**
   * Matched against the decoded path after the base path, e.g.
   * `/^\/entity\/\d+\/admin-schedule$/` (the root group reads `/group//`).
   */
  path?: RegExp;
  /** How many matching requests it hits. Default 1; Infinity allowed. */
  times?: number;
  /** Answer with this status; the body is Unity's JSON error unless `body` is given. */
  status?: number;
  /** E.g. a proxy's HTML page or truncated JSON. */
  body?: string;
  /** Default "application/json". */
  contentType?: string;
  /** Never answer, until `close()`. */
  hang?: boolean;
  /** Answer normally (or with `status`) after this delay. */
  delayMs?: number;
  /** Break the connection instead of answering (best effort, see the file head). */
  resetConnection?: boolean;
}

/** How to start the simulator. */
export interface SimOptions {
  /** Default "4.x". */
  profile?: UnityProfile;
  /** Default "admin". */
  user?: string;
  /** Default "the!admin pass". */
  password?: string;
  /** PEM; when given, serve HTTPS. */
  tls?: { cert: string; key: string };
  /** Delay before every request is handled. */
  latencyMs?: number;
  /** Extra delay, uniform in [0, jitterMs]. */
  jitterMs?: number;
  /**
   * Serve `GET /group-members/{g}` (Unity 2.6.1+). Default: true for 3.12
   * and 4.x; otherwise the path answers 404 with an empty body.
   */
  bulkMembers?: boolean;
  /** Default "/rest-admin/v1". */
  basePath?: string;
  /** Seed for UUIDs and jitter. */
  seed?: number;
  /** Clock in epoch ms. Default `Date.now`. */
  now?: () => number;
}

const DEFAULT_USER = "admin";
const DEFAULT_PASSWORD = "the!admin pass";
const ADMIN_ID = 1;
const MEMBERS_PER_CHUNK = 500;

/** Attribute types whose instances Unity refuses to change (INSTANCES_IMMUTABLE_FLAG). */
const IMMUTABLE_ATTRIBUTES = new Set([
  "sys:LastAuthentication",
  "sys:CredentialRequirements",
  "sys:Preferences",
  "sys:AttributeClasses",
  "sys:userMFAOptIn",
]);

const STANDARD_ATTRIBUTE_TYPES = [
  "name",
  "cn",
  "email",
  "o",
  "affiliation",
  "sys:AuthorizationRole",
  ...IMMUTABLE_ATTRIBUTES,
];

const IDENTITY_TYPES = new Set([
  "persistent",
  "userName",
  "email",
  "identifier",
  "x500Name",
  "targetedPersistent",
  "transient",
  "fidoUserHandle",
]);

/** A failure Unity reports as `{"message", "error"}`. */
class UnityFailure extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
  ) {
    super(message);
  }
}

/** A failure with an empty body (JAX-RS routing and parameter conversion). */
class EmptyFailure extends Error {
  constructor(readonly status: number, readonly allow?: string) {
    super(`HTTP ${status}`);
  }
}

interface Pending {
  timer: ReturnType<typeof setTimeout>;
  resolve: () => void;
}

interface QueuedFault {
  fault: Fault;
  remaining: number;
}

/**
 * A Unity REST admin API v1 on 127.0.0.1, for one test or one demo run.
 *
 * @example
 * ```ts
 * const sim = await UnitySim.start({ profile: "2.x" });
 * const id = sim.addEntity({ state: "disabled" });
 * // point the tool at sim.url with user "admin", password "the!admin pass"
 * await sim.close();
 * ```
 */
export class UnitySim {
  /** Base URL for the tool, without the API path. */
  readonly url: string;
  readonly profile: UnityProfile;
  /** Every request, in arrival order (live). */
  readonly requests: SimRequest[] = [];
  /**
   * Entities removed through the API; `at` is the simulator clock (epoch
   * ms); `immediate`: a schedule whose `when` was not in the future.
   */
  readonly removedEntities: { id: number; at: number; immediate: boolean }[] =
    [];

  #server!: Deno.HttpServer<Deno.NetAddr>;
  readonly #basePath: string;
  readonly #user: string;
  readonly #password: string;
  readonly #latencyMs: number;
  readonly #jitterMs: number;
  readonly #bulkMembers: boolean;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #startedAt = performance.now();

  readonly #entities = new Map<number, SimEntity>();
  readonly #createdAt = new Map<number, number>();
  readonly #groups = new Set<string>(["/"]);
  readonly #attributeTypes = new Set<string>(STANDARD_ATTRIBUTE_TYPES);
  readonly #byPersistentId = new Map<string, number>();
  #nextId = ADMIN_ID;

  #faults: QueuedFault[] = [];
  #inFlight = 0;
  #maxInFlight = 0;
  #closing = false;
  readonly #waits = new Set<Pending>();
  readonly #hung = new Set<() => void>();

  private constructor(opts: SimOptions, url: string) {
    this.url = url;
    this.profile = opts.profile ?? "4.x";
    this.#basePath = (opts.basePath ?? "/rest-admin/v1").replace(/\/+$/, "");
    this.#user = opts.user ?? DEFAULT_USER;
    this.#password = opts.password ?? DEFAULT_PASSWORD;
    this.#latencyMs = opts.latencyMs ?? 0;
    this.#jitterMs = opts.jitterMs ?? 0;
    this.#bulkMembers = opts.bulkMembers ?? hasMappers(this.profile);
    this.#now = opts.now ?? Date.now;
    this.#random = mulberry32(opts.seed ?? 0x5eed);
    this.#addAdmin();
  }

  /** Starts serving on a free port of 127.0.0.1. */
  static start(opts: SimOptions = {}): Promise<UnitySim> {
    // The handler needs the simulator, the simulator needs the port.
    const holder: { sim?: UnitySim } = {};
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      ...(opts.tls ? { cert: opts.tls.cert, key: opts.tls.key } : {}),
      onListen() {},
      onError: () => new Response(null, { status: 500 }),
    }, (req) => holder.sim!.#handle(req));
    const scheme = opts.tls ? "https" : "http";
    const sim = new UnitySim(
      opts,
      `${scheme}://127.0.0.1:${server.addr.port}`,
    );
    sim.#server = server;
    holder.sim = sim;
    return Promise.resolve(sim);
  }

  /** Highest number of requests in flight at once since start or the last `resetRequestLog()`. */
  get maxInFlight(): number {
    return this.#maxInFlight;
  }

  /** The simulator clock (epoch ms): what "in the future" is measured against. */
  now(): number {
    return this.#now();
  }

  /** Creates a group and any missing ancestors. */
  addGroup(path: string): void {
    for (const group of withAncestors(checkGroupPath(path))) {
      this.#groups.add(group);
    }
  }

  /**
   * Adds an entity and returns its id (from 2; 1 is the admin). Missing
   * fields get defaults: state "valid", a fresh persistent id (pass `null`
   * for none), member of "/" only. Groups named by `groups` or by an
   * attribute are created, with their ancestors.
   *
   * @throws {Error} if `id` is given and taken, or a group path is malformed.
   */
  addEntity(spec: Partial<SimEntity> & { state?: EntityState }): number {
    const id = spec.id ?? this.#nextId;
    if (this.#entities.has(id)) {
      throw new Error(`Cannot add entity ${id}: the id is taken`);
    }
    const attributes = (spec.attributes ?? []).map((a) => ({
      ...a,
      values: [...a.values],
    }));
    const entity: SimEntity = {
      id,
      state: spec.state ?? "valid",
      persistentId: spec.persistentId === undefined
        ? this.#uuid()
        : spec.persistentId,
      otherIdentities: (spec.otherIdentities ?? []).map((i) => ({ ...i })),
      groups: this.#memberships(spec.groups ?? [], attributes),
      attributes,
      scheduledOperation: spec.scheduledOperation ?? null,
      scheduledTime: spec.scheduledTime ?? null,
      removalByUserTime: spec.removalByUserTime ?? null,
    };
    for (const attribute of attributes) {
      this.#attributeTypes.add(attribute.name);
    }
    this.#store(entity);
    return id;
  }

  /** The LIVE entity (with the client's changes); undefined once removed. */
  entity(id: number): SimEntity | undefined {
    return this.#entities.get(id);
  }

  /** A deep copy of every entity, sorted by id. */
  snapshot(): SimEntity[] {
    return [...this.#entities.values()]
      .sort((a, b) => a.id - b.id)
      .map((e) => structuredClone(e));
  }

  /** Queues a fault; the first queued fault that matches a request wins. */
  fault(f: Fault): void {
    this.#faults.push({ fault: f, remaining: f.times ?? 1 });
  }

  /** Drops every queued fault. */
  clearFaults(): void {
    this.#faults = [];
  }

  /** Empties the request log and restarts the in-flight maximum from now. */
  resetRequestLog(): void {
    this.requests.length = 0;
    this.#maxInFlight = this.#inFlight;
  }

  /**
   * Runs every scheduled operation that is due by the simulator clock, as
   * Unity's background updater does, and returns how many ran.
   */
  runDueOperations(): number {
    const now = this.#now();
    let ran = 0;
    for (const entity of [...this.#entities.values()]) {
      if (entity.scheduledTime !== null && entity.scheduledTime <= now) {
        this.#perform(entity, entity.scheduledOperation ?? "REMOVE", false);
        ran++;
      } else if (
        entity.removalByUserTime !== null && entity.removalByUserTime <= now
      ) {
        this.#perform(entity, "REMOVE", false);
        ran++;
      }
    }
    return ran;
  }

  /** Releases hung and delayed requests, then stops serving. */
  async close(): Promise<void> {
    if (!this.#closing) {
      this.#closing = true;
      for (const wait of this.#waits) {
        clearTimeout(wait.timer);
        wait.resolve();
      }
      this.#waits.clear();
      for (const release of [...this.#hung]) release();
    }
    await this.#server.shutdown();
  }

  // ---- seeding -----------------------------------------------------------

  #addAdmin(): void {
    this.addEntity({
      otherIdentities: [{ typeId: "userName", value: this.#user }],
      attributes: [
        { name: "name", group: "/", values: ["Default Administrator"] },
        {
          name: "sys:AuthorizationRole",
          group: "/",
          values: ["System Manager"],
          syntax: "enumeration",
        },
        {
          name: "sys:CredentialRequirements",
          group: "/",
          values: ["sys:all"],
        },
      ],
    });
  }

  #memberships(groups: string[], attributes: SimAttribute[]): string[] {
    const all = new Set<string>(["/"]);
    for (const group of [...groups, ...attributes.map((a) => a.group)]) {
      for (const g of withAncestors(checkGroupPath(group))) all.add(g);
    }
    for (const group of all) this.#groups.add(group);
    return [...all].sort();
  }

  #store(entity: SimEntity): void {
    this.#entities.set(entity.id, entity);
    this.#createdAt.set(entity.id, this.#now() - 86_400_000);
    if (entity.persistentId) {
      this.#byPersistentId.set(entity.persistentId, entity.id);
    }
    this.#nextId = Math.max(this.#nextId, entity.id + 1);
  }

  #uuid(): string {
    const bytes = new Uint8Array(16);
    for (let i = 0; i < 16; i++) bytes[i] = Math.floor(this.#random() * 256);
    bytes[6] = (bytes[6]! & 0x0f) | 0x40;
    bytes[8] = (bytes[8]! & 0x3f) | 0x80;
    const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(
      "",
    );
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${
      hex.slice(16, 20)
    }-${hex.slice(20)}`;
  }

  // ---- the request pipeline ------------------------------------------------

  async #handle(req: Request): Promise<Response> {
    const url = new URL(req.url);
    const record: SimRequest = {
      method: req.method,
      path: url.pathname,
      query: firstValues(url.searchParams),
      status: 0,
      at: performance.now() - this.#startedAt,
      durationMs: 0,
    };
    this.requests.push(record);
    this.#inFlight++;
    this.#maxInFlight = Math.max(this.#maxInFlight, this.#inFlight);
    try {
      const response = await this.#respond(req, url);
      if (!brokenResponses.has(response)) record.status = response.status;
      return response;
    } catch {
      record.status = 500;
      return new Response(null, { status: 500 });
    } finally {
      this.#inFlight--;
      record.durationMs = performance.now() - this.#startedAt - record.at;
    }
  }

  async #respond(req: Request, url: URL): Promise<Response> {
    await this.#sleep(this.#latencyMs + this.#random() * this.#jitterMs);

    const relative = url.pathname.startsWith(this.#basePath + "/")
      ? url.pathname.slice(this.#basePath.length)
      : undefined;
    const decoded = safeDecode(relative ?? url.pathname);
    const fault = this.#takeFault(req.method, decoded);
    if (fault) {
      const faulted = await this.#applyFault(fault);
      if (faulted) return faulted;
    }

    try {
      this.#authenticate(req.headers.get("authorization"));
      if (relative === undefined) throw new EmptyFailure(404);
      return this.#route(req.method, relative, url.searchParams);
    } catch (error) {
      return failureResponse(error);
    }
  }

  #takeFault(method: string, decodedPath: string): Fault | undefined {
    const index = this.#faults.findIndex(({ fault }) =>
      (fault.method === undefined ||
        fault.method.toUpperCase() === method) &&
      (fault.path === undefined || regexMatches(fault.path, decodedPath))
    );
    const queued = this.#faults[index];
    if (!queued) return undefined;
    queued.remaining--;
    if (queued.remaining <= 0) this.#faults.splice(index, 1);
    return queued.fault;
  }

  /** Returns the faulty response, or undefined to carry on normally. */
  async #applyFault(fault: Fault): Promise<Response | undefined> {
    if (fault.hang) {
      await this.#hang();
      return brokenResponse();
    }
    if (fault.delayMs) await this.#sleep(fault.delayMs);
    if (fault.resetConnection) return brokenResponse();
    if (fault.status === undefined && fault.body === undefined) {
      return undefined;
    }
    const status = fault.status ?? 200;
    const body = fault.body ?? JSON.stringify({
      message: `Simulated failure (HTTP ${status})`,
      error: errorClassFor(status),
    });
    return new Response(body, {
      status,
      headers: { "content-type": fault.contentType ?? "application/json" },
    });
  }

  #sleep(ms: number): Promise<void> {
    if (ms <= 0 || this.#closing) return Promise.resolve();
    return new Promise((resolve) => {
      const pending: Pending = {
        resolve,
        timer: setTimeout(() => {
          this.#waits.delete(pending);
          resolve();
        }, ms),
      };
      this.#waits.add(pending);
    });
  }

  /**
   * Waits for `close()`; a client that gives up does not end the wait
   * (Deno.serve warns when a handler reads `request.signal`).
   */
  #hang(): Promise<void> {
    if (this.#closing) return Promise.resolve();
    return new Promise((resolve) => {
      const release = () => {
        this.#hung.delete(release);
        resolve();
      };
      this.#hung.add(release);
    });
  }

  /**
   * HTTP Basic, decoded as US-ASCII like Unity's HttpBasicParser: a byte
   * over 0x7F becomes U+FFFD, so a non-ASCII password never matches.
   * Assumed: the 400 and 403 bodies (Unity answers through a CXF fault).
   */
  #authenticate(header: string | null): void {
    const credentials = parseBasic(header);
    if (!credentials) {
      throw new UnityFailure(
        hasMappers(this.profile) ? 400 : 403,
        "AuthenticationException",
        "Authentication failed: no HTTP Basic credentials",
      );
    }
    if (
      credentials.user !== this.#user ||
      credentials.password !== this.#password
    ) {
      throw new UnityFailure(
        403,
        "AuthorizationException",
        "Authentication failed",
      );
    }
  }

  // ---- routing -----------------------------------------------------------

  #route(method: string, relative: string, query: URLSearchParams): Response {
    const raw = relative.split("/").slice(1);
    if (raw.some((segment) => segment === "")) throw new EmptyFailure(404);
    const segments = raw.map(decodeSegment);
    const [head, param, tail] = segments;
    const only = (allowed: string[]) => allow(method, allowed);

    if (head === "group" && param !== undefined) {
      if (segments.length === 2) {
        only(["GET"]);
        return this.#groupContents(param);
      }
      if (
        segments.length === 3 && tail === "meta" && hasMappers(this.profile)
      ) {
        only(["GET"]);
        return this.#groupMeta(param);
      }
    }
    if (
      head === "group-members" && param !== undefined &&
      segments.length === 2 && this.#bulkMembers
    ) {
      only(["GET"]);
      return this.#groupMembers(param);
    }
    if (head === "entity" && param !== undefined) {
      return this.#entityRoute(method, segments.slice(1), query);
    }
    throw new EmptyFailure(404);
  }

  #entityRoute(
    method: string,
    segments: string[],
    query: URLSearchParams,
  ): Response {
    const [idParam, operation, attributeName] = segments as [
      string,
      string?,
      string?,
    ];
    const idType = query.get("identityType");
    const only = (allowed: string[]) => allow(method, allowed);
    if (segments.length === 1) {
      only(["GET"]);
      return this.#getEntity(idParam, idType);
    }
    if (segments.length === 2 && operation === "groups") {
      only(["GET"]);
      return json(this.#resolve(idParam, idType).groups);
    }
    if (segments.length === 2 && operation === "attributes") {
      only(["GET"]);
      return this.#getAttributes(idParam, idType, query);
    }
    if (segments.length === 3 && operation === "attribute") {
      only(["DELETE"]);
      return this.#removeAttribute(idParam, idType, attributeName!, query);
    }
    if (segments.length === 2 && operation === "admin-schedule") {
      only(this.profile === "4.x" ? ["PUT", "DELETE"] : ["PUT"]);
      return method === "PUT"
        ? this.#scheduleOperation(idParam, idType, query)
        : this.#clearSchedule(idParam, idType);
    }
    if (segments.length === 2 && operation === "removal-schedule") {
      only(["PUT"]);
      return this.#scheduleRemovalByUser(idParam, idType, query);
    }
    throw new EmptyFailure(404);
  }

  // ---- groups --------------------------------------------------------------

  /**
   * Unity 2.0+ prefixes a group path that lacks the leading "/" (so
   * `/group/eudat` is "/eudat"); 1.x takes the segment as it is.
   */
  #groupParam(segment: string): string {
    if (this.profile === "1.x" || segment.startsWith("/")) return segment;
    return "/" + segment;
  }

  #requireGroup(group: string): void {
    if (this.#groups.has(group)) return;
    if (this.profile === "1.x") {
      throw new UnityFailure(
        400,
        "IllegalGroupValueException",
        `Group ${group} is not known`,
      );
    }
    throw new UnityFailure(
      400,
      "EntityNotFoundException",
      `group [${group}] does not exist`,
    );
  }

  #groupContents(segment: string): Response {
    const group = this.#groupParam(segment);
    this.#requireGroup(group);
    const subGroups = [...this.#groups].filter((g) =>
      g !== group && parentOf(g) === group
    ).sort();
    const members = this.#memberIds(group).map((id) =>
      this.#membershipJson(group, id)
    );
    return json({ subGroups, members });
  }

  #membershipJson(group: string, entityId: number): unknown {
    const creationTs = this.#createdAt.get(entityId) ?? 0;
    if (this.profile === "1.x") return entityId;
    if (this.profile === "2.x") return { creationTs, group, entityId };
    return { group, entityId, creationTs };
  }

  #groupMeta(segment: string): Response {
    const group = this.#groupParam(segment);
    this.#requireGroup(group);
    const name = group === "/" ? "/" : group.slice(group.lastIndexOf("/") + 1);
    return json({
      path: group,
      displayedName: { DefaultValue: name, Map: {} },
      i18nDescription: { DefaultValue: null, Map: {} },
      attributeStatements: [],
      attributesClasses: [],
      delegationConfiguration: { enabled: false },
      publicGroup: false,
    });
  }

  /**
   * Like Unity's bulk query: the entity as stored (a missing persistent id is
   * NOT created: the bulk path reads identities straight from the database)
   * and its effective attributes in the group. Streamed in chunks.
   */
  #groupMembers(segment: string): Response {
    const group = this.#groupParam(segment);
    this.#requireGroup(group);
    const ids = this.#memberIds(group);
    const encoder = new TextEncoder();
    let next = 0;
    let separator = "";
    const body = new ReadableStream<Uint8Array>({
      pull: (controller) => {
        let chunk = next === 0 ? "[" : "";
        const end = Math.min(next + MEMBERS_PER_CHUNK, ids.length);
        for (; next < end; next++) {
          const entity = this.#entities.get(ids[next]!);
          if (!entity) continue;
          chunk += separator + JSON.stringify(this.#memberJson(entity, group));
          separator = ",";
        }
        if (next >= ids.length) chunk += "]";
        controller.enqueue(encoder.encode(chunk));
        if (next >= ids.length) controller.close();
      },
    });
    return new Response(body, {
      headers: { "content-type": "application/json" },
    });
  }

  #memberJson(entity: SimEntity, group: string): unknown {
    return {
      group,
      entity: this.#entityJson(entity),
      attributes: entity.attributes
        .filter((a) => a.group === group)
        .map((a) => this.#attributeJson(a, entity.id)),
    };
  }

  #memberIds(group: string): number[] {
    const ids: number[] = [];
    for (const entity of this.#entities.values()) {
      if (entity.groups.includes(group)) ids.push(entity.id);
    }
    return ids.sort((a, b) => a - b);
  }

  // ---- entities --------------------------------------------------------------

  /**
   * Unity's getEP(): a 36-character value is a persistent id, anything else
   * must parse as a Java long, unless `identityType` names the type.
   */
  #resolve(param: string, idType: string | null): SimEntity {
    if (idType !== null) return this.#resolveIdentity(idType, param);
    if (param.length === 36) return this.#resolveIdentity("persistent", param);
    if (!/^[+-]?\d{1,19}$/.test(param)) {
      // Unity's own text, missing space ("oridentity") included.
      throw new UnityFailure(
        400,
        "WrongArgumentException",
        "When addressing identity either it must be a persistent ID or " +
          "internal entityId (integer number) oridentity type must be " +
          "provided. The provided identifier is neither entityId nor " +
          "persistentId and type was not given: " + param,
      );
    }
    const id = Number(param);
    const entity = this.#entities.get(id);
    if (entity) return entity;
    if (this.profile === "1.x") {
      // 1.9's text, stray parenthesis included.
      throw new UnityFailure(
        400,
        "IllegalIdentityValueException",
        `The entity id is invalid): ${id}`,
      );
    }
    throw new UnityFailure(
      400,
      "UnknownIdentityException",
      `Entity ${id} is unknown`,
    );
  }

  #resolveIdentity(typeId: string, value: string): SimEntity {
    if (!IDENTITY_TYPES.has(typeId)) {
      throw new UnityFailure(
        400,
        "IllegalTypeException",
        `Identity type ${typeId} is not known`,
      );
    }
    const found = typeId === "persistent"
      ? this.#findByPersistentId(value)
      : [...this.#entities.values()].find((e) =>
        e.otherIdentities.some((i) =>
          i.typeId === typeId &&
          comparable(typeId, i.value) === comparable(typeId, value)
        )
      );
    if (found) return found;
    if (this.profile === "1.x") {
      throw new UnityFailure(
        400,
        "IllegalIdentityValueException",
        `The entity id is invalid: [${typeId}] ${value}`,
      );
    }
    throw new UnityFailure(
      400,
      "UnknownIdentityException",
      `Entity [${typeId}] ${value} is unknown`,
    );
  }

  #findByPersistentId(value: string): SimEntity | undefined {
    const indexed = this.#entities.get(this.#byPersistentId.get(value) ?? -1);
    if (indexed?.persistentId === value) return indexed;
    // The live objects may have been edited: fall back to a scan.
    return [...this.#entities.values()].find((e) => e.persistentId === value);
  }

  #getEntity(param: string, idType: string | null): Response {
    const entity = this.#resolve(param, idType);
    if (entity.persistentId === null) {
      entity.persistentId = this.#uuid();
      this.#byPersistentId.set(entity.persistentId, entity.id);
    }
    return json(this.#entityJson(entity));
  }

  #entityJson(entity: SimEntity): unknown {
    const identities = [
      ...entity.otherIdentities,
      ...(entity.persistentId
        ? [{ typeId: "persistent", value: entity.persistentId }]
        : []),
    ].map((i) => this.#identityJson(entity.id, i.typeId, i.value));
    const credentialInfo = this.#credentialInfoJson(entity.id);
    if (this.profile === "1.x") {
      // 1.9: Jackson on Entity: the id sits at the top, not in entityInformation.
      return {
        id: entity.id,
        entityInformation: {
          state: entity.state,
          scheduledOperationTime: entity.scheduledTime,
          scheduledOperation: entity.scheduledOperation,
          removalByUserTime: entity.removalByUserTime,
        },
        identities,
        credentialInfo,
      };
    }
    return {
      entityInformation: this.#entityInformationJson(entity),
      identities,
      credentialInfo,
    };
  }

  /** From 2.0 the schedule keys are capitalized and left out when unset. */
  #entityInformationJson(entity: SimEntity): Record<string, unknown> {
    const schedule: Record<string, unknown> = {};
    if (entity.scheduledTime !== null) {
      schedule.ScheduledOperationTime = entity.scheduledTime;
    }
    if (entity.scheduledOperation !== null) {
      schedule.ScheduledOperation = entity.scheduledOperation;
    }
    if (entity.removalByUserTime !== null) {
      schedule.RemovalByUserTime = entity.removalByUserTime;
    }
    if (this.profile === "2.x") {
      return { state: entity.state, ...schedule, entityId: entity.id };
    }
    return { entityId: entity.id, state: entity.state, ...schedule };
  }

  #identityJson(entityId: number, typeId: string, value: string): unknown {
    const ts = this.#createdAt.get(entityId) ?? 0;
    const confirmation = {
      confirmed: false,
      confirmationDate: 0,
      sentRequestAmount: 0,
    };
    const comparableValue = comparable(typeId, value);
    if (this.profile === "1.x") {
      return {
        typeId,
        value,
        target: null,
        realm: null,
        translationProfile: null,
        remoteIdp: null,
        confirmationInfo: {
          ...confirmation,
          serializedConfiguration: JSON.stringify(confirmation),
        },
        metadata: null,
        entityId,
        creationTs: ts,
        updateTs: ts,
        comparableValue,
      };
    }
    if (this.profile === "2.x") {
      return {
        value,
        typeId,
        confirmationInfo: confirmation,
        comparableValue,
        creationTs: ts,
        updateTs: ts,
        entityId,
      };
    }
    return {
      entityId,
      creationTs: ts,
      updateTs: ts,
      comparableValue,
      confirmationInfo: confirmation,
      typeId,
      value,
    };
  }

  #credentialInfoJson(entityId: number): unknown {
    const extraInformation = JSON.stringify({
      lastChange: this.#createdAt.get(entityId) ?? 0,
    });
    if (this.profile === "1.x") {
      return {
        credentialRequirementId: "Password requirement",
        credentialsState: {
          "Password credential": { state: "correct", extraInformation },
        },
      };
    }
    return {
      credentialRequirementId: "sys:all",
      credentialsState: {
        "sys:password": {
          state: "correct",
          stateDetail: null,
          extraInformation,
        },
      },
    };
  }

  // ---- attributes ------------------------------------------------------------

  #getAttributes(
    param: string,
    idType: string | null,
    query: URLSearchParams,
  ): Response {
    const group = query.get("group") ?? "/";
    // JAX-RS Boolean: anything but "true" (any case) is false.
    const effectiveParam = query.get("effective");
    const effective = effectiveParam === null ||
      effectiveParam.toLowerCase() === "true";
    const entity = this.#resolve(param, idType);
    if (!entity.groups.includes(group)) {
      throw new UnityFailure(
        400,
        "IllegalGroupValueException",
        "The entity is not a member of the group " +
          (hasMappers(this.profile) ? `[${group}]` : group),
      );
    }
    const attributes = entity.attributes.filter((a) =>
      a.group === group && (effective || a.direct !== false)
    );
    return json(attributes.map((a) => this.#attributeJson(a, entity.id)));
  }

  #attributeJson(attribute: SimAttribute, entityId: number): unknown {
    const ts = this.#createdAt.get(entityId) ?? 0;
    const syntax = attribute.syntax ?? "string";
    const direct = attribute.direct !== false;
    const base = { name: attribute.name, groupPath: attribute.group };
    if (this.profile === "1.x") {
      return {
        values: attribute.values.map((v) => nativeValue(v, syntax, ts)),
        ...base,
        visibility: "full",
        direct,
        syntax,
      };
    }
    const values = attribute.values.map((v) => stringValue(v, syntax, ts));
    if (this.profile === "2.x") {
      return {
        values,
        creationTs: ts,
        updateTs: ts,
        direct,
        ...base,
        valueSyntax: syntax,
      };
    }
    return {
      direct,
      creationTs: ts,
      updateTs: ts,
      name: attribute.name,
      valueSyntax: syntax,
      groupPath: attribute.group,
      ...(values.length > 0 ? { values } : {}),
    };
  }

  /** Unity checks, in order: the entity, the attribute type, immutability, the direct attribute. */
  #removeAttribute(
    param: string,
    idType: string | null,
    name: string,
    query: URLSearchParams,
  ): Response {
    const group = query.get("group") ?? "/";
    const entity = this.#resolve(param, idType);
    if (
      !this.#attributeTypes.has(name) && !name.startsWith("sys:Credential:")
    ) {
      throw new UnityFailure(
        400,
        "EntityNotFoundException",
        `attribute type [${name}] does not exist`,
      );
    }
    if (IMMUTABLE_ATTRIBUTES.has(name) || name.startsWith("sys:Credential:")) {
      throw new UnityFailure(
        400,
        "SchemaConsistencyException",
        `The attribute with name ${name} can not be manually modified`,
      );
    }
    const index = entity.attributes.findIndex((a) =>
      a.name === name && a.group === group && a.direct !== false
    );
    if (index < 0) {
      throw this.profile === "1.x"
        ? new UnityFailure(
          400,
          "IllegalAttributeValueException",
          "The attribute does not exist",
        )
        : new UnityFailure(
          400,
          "IllegalArgumentException",
          `attribute [${name}] does not exist`,
        );
    }
    entity.attributes.splice(index, 1);
    return noContent();
  }

  // ---- schedules -------------------------------------------------------------

  /**
   * `when` is a JAX-RS `long`: missing reads as 0, unconvertible answers 404
   * with an empty body. The operation is checked before the entity.
   */
  #scheduleOperation(
    param: string,
    idType: string | null,
    query: URLSearchParams,
  ): Response {
    const when = longParam(query.get("when"));
    const operation = query.get("operation");
    if (operation !== "REMOVE" && operation !== "DISABLE") {
      throw new UnityFailure(
        400,
        "WrongArgumentException",
        `Given operation '${operation}' is unknown, valid are: [REMOVE, DISABLE]`,
      );
    }
    const entity = this.#resolve(param, idType);
    if (when <= this.#now()) {
      this.#perform(entity, operation, true);
    } else {
      entity.scheduledOperation = operation;
      entity.scheduledTime = when;
    }
    return noContent();
  }

  /** 4.3.3+: clears the schedule and lifts a removal the user may still stop. */
  #clearSchedule(param: string, idType: string | null): Response {
    const entity = this.#resolve(param, idType);
    if (entity.state === "onlyLoginPermitted") {
      entity.state = "valid";
      entity.removalByUserTime = null;
    }
    entity.scheduledOperation = null;
    entity.scheduledTime = null;
    return noContent();
  }

  /** Like the admin schedule, a `when` not in the future removes the entity at once. */
  #scheduleRemovalByUser(
    param: string,
    idType: string | null,
    query: URLSearchParams,
  ): Response {
    const when = longParam(query.get("when"));
    const entity = this.#resolve(param, idType);
    if (when <= this.#now()) {
      this.#perform(entity, "REMOVE", true);
    } else {
      entity.removalByUserTime = when;
      entity.state = "onlyLoginPermitted";
    }
    return noContent();
  }

  #perform(
    entity: SimEntity,
    operation: "REMOVE" | "DISABLE",
    immediate: boolean,
  ): void {
    if (operation === "DISABLE") {
      entity.state = "disabled";
      entity.scheduledOperation = null;
      entity.scheduledTime = null;
      entity.removalByUserTime = null;
      return;
    }
    this.#entities.delete(entity.id);
    this.#createdAt.delete(entity.id);
    if (entity.persistentId) this.#byPersistentId.delete(entity.persistentId);
    this.removedEntities.push({ id: entity.id, at: this.#now(), immediate });
  }
}

// ---- helpers ---------------------------------------------------------------

/** Responses whose body breaks off on purpose (no status of their own). */
const brokenResponses = new WeakSet<Response>();

function brokenResponse(): Response {
  const response = new Response(
    new ReadableStream({
      pull(controller) {
        controller.error(new DOMException("connection reset", "AbortError"));
      },
    }),
  );
  brokenResponses.add(response);
  return response;
}

function failureResponse(error: unknown): Response {
  if (error instanceof UnityFailure) {
    return new Response(
      JSON.stringify({ message: error.message, error: error.error }),
      {
        status: error.status,
        headers: { "content-type": "application/json" },
      },
    );
  }
  if (error instanceof EmptyFailure) {
    return new Response(null, {
      status: error.status,
      headers: error.allow ? { allow: error.allow } : {},
    });
  }
  // Unity's NPE and InternalException mappers answer 500 without a body.
  return new Response(null, { status: 500 });
}

/** JAX-RS: a served path with another method is 405 with an Allow header. */
function allow(method: string, allowed: string[]): void {
  if (!allowed.includes(method)) {
    throw new EmptyFailure(405, allowed.join(", "));
  }
}

function json(body: unknown): Response {
  return new Response(JSON.stringify(body), {
    headers: { "content-type": "application/json" },
  });
}

function noContent(): Response {
  return new Response(null, { status: 204 });
}

function errorClassFor(status: number): string {
  if (status === 403) return "AuthorizationException";
  if (status === 400) return "WrongArgumentException";
  if (status >= 500) return "InternalException";
  return "EngineException";
}

function hasMappers(profile: UnityProfile): boolean {
  return profile === "3.12" || profile === "4.x";
}

/** Java's Long.valueOf for a JAX-RS `long` query parameter. */
function longParam(value: string | null): number {
  if (value === null || value === "") return 0;
  if (!/^[+-]?\d{1,19}$/.test(value)) throw new EmptyFailure(404);
  const parsed = BigInt(value);
  if (parsed > 9223372036854775807n || parsed < -9223372036854775808n) {
    throw new EmptyFailure(404);
  }
  return Number(parsed);
}

function parseBasic(
  header: string | null,
): { user: string; password: string | null } | undefined {
  if (!header?.startsWith("Basic ")) return undefined;
  let bytes: string;
  try {
    bytes = atob(header.slice(6).trim());
  } catch {
    return undefined;
  }
  const decoded = [...bytes].map((c) => c.charCodeAt(0) > 0x7f ? "\ufffd" : c)
    .join("");
  if (decoded === "") return undefined;
  const colon = decoded.indexOf(":");
  if (colon < 0) return { user: decoded, password: null };
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function decodeSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new EmptyFailure(400);
  }
}

function safeDecode(path: string): string {
  try {
    return decodeURIComponent(path);
  } catch {
    return path;
  }
}

function regexMatches(pattern: RegExp, text: string): boolean {
  pattern.lastIndex = 0;
  return pattern.test(text);
}

function firstValues(params: URLSearchParams): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [key, value] of params) {
    if (!(key in result)) result[key] = value;
  }
  return result;
}

function checkGroupPath(path: string): string {
  if (
    path !== "/" &&
    (!path.startsWith("/") || path.endsWith("/") || path.includes("//"))
  ) {
    throw new Error(
      `Cannot use group "${path}": a group path starts with "/" and has no empty segment`,
    );
  }
  return path;
}

function parentOf(group: string): string | undefined {
  if (group === "/") return undefined;
  const cut = group.lastIndexOf("/");
  return cut === 0 ? "/" : group.slice(0, cut);
}

function withAncestors(group: string): string[] {
  const all: string[] = [];
  for (let g: string | undefined = group; g !== undefined; g = parentOf(g)) {
    all.push(g);
  }
  return all;
}

function comparable(typeId: string, value: string): string {
  return typeId === "email" ? value.toLowerCase() : value;
}

interface EmailDocument {
  value: string;
  confirmationData: {
    confirmed: boolean;
    confirmationDate: number;
    sentRequestAmount: number;
  };
  tags: string[];
}

/** A verifiableEmail value in whichever form the seeder gave it. */
function emailDocument(value: unknown, ts: number): EmailDocument {
  let source: unknown = value;
  if (typeof value === "string" && value.trimStart().startsWith("{")) {
    try {
      source = JSON.parse(value);
    } catch {
      source = value;
    }
  }
  if (typeof source !== "object" || source === null) {
    return {
      value: String(source),
      confirmationData: {
        confirmed: true,
        confirmationDate: ts,
        sentRequestAmount: 0,
      },
      tags: [],
    };
  }
  const record = source as Record<string, unknown>;
  let confirmation = record.confirmationData;
  if (typeof confirmation === "string") confirmation = JSON.parse(confirmation);
  const c = (confirmation ?? {}) as Record<string, unknown>;
  return {
    value: String(record.value ?? ""),
    confirmationData: {
      confirmed: c.confirmed === true,
      confirmationDate: typeof c.confirmationDate === "number"
        ? c.confirmationDate
        : 0,
      sentRequestAmount: typeof c.sentRequestAmount === "number"
        ? c.sentRequestAmount
        : 0,
    },
    tags: Array.isArray(record.tags) ? record.tags.map(String) : [],
  };
}

/** From 2.0 every value is a string; a verifiableEmail is a JSON document in it. */
function stringValue(value: unknown, syntax: string, ts: number): string {
  if (syntax === "verifiableEmail") {
    if (typeof value === "string" && value.trimStart().startsWith("{")) {
      return value;
    }
    return JSON.stringify(emailDocument(value, ts));
  }
  if (typeof value === "string") return value;
  if (typeof value === "object" && value !== null) return JSON.stringify(value);
  return String(value);
}

/**
 * 1.x serializeSimple(): native JSON; a verifiableEmail is an object whose
 * confirmationData is itself a JSON string.
 */
function nativeValue(value: unknown, syntax: string, ts: number): unknown {
  if (syntax !== "verifiableEmail") return value;
  const doc = emailDocument(value, ts);
  return {
    value: doc.value,
    confirmationData: JSON.stringify(doc.confirmationData),
    tags: doc.tags,
  };
}

/** A small seeded PRNG (mulberry32), uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Unity's REST admin API v1 as typed operations: reads JSON in the shapes of
 * Unity 1.x to 4.x and returns one normalized shape; `UnityReader` only
 * reads, `UnityAdmin` adds the two changes the job makes.
 */

import { ApiError, type UnityHttp } from "./http.ts";

/** An entity as the job needs it, whatever the Unity version. */
export interface Entity {
  readonly id: number;
  readonly state: string;
  readonly scheduledOperation: string | null;
  readonly scheduledTime: number | null;
  /** The persistent identity: the id shared with service providers. */
  readonly persistentId: string | null;
}

export interface Attribute {
  readonly name: string;
  readonly group: string;
  /** False when it comes from a group attribute statement. */
  readonly direct: boolean;
  readonly values: readonly unknown[];
}

/** What removing an attribute did: gone now, already gone, or refused as a system attribute. */
export type RemovalOutcome = "removed" | "absent" | "immutable";

/** Encodes a group path as ONE path segment: "/" becomes "%2F". */
export function groupSegment(group: string): string {
  return encodeURIComponent(group);
}

/** Reads from Unity; it has no method that changes anything. */
export class UnityReader {
  constructor(protected readonly http: UnityHttp) {}

  /** Entity ids of the members of `group` (numbers in 1.x, objects from 2.0). */
  async members(group: string): Promise<number[]> {
    const path = `/group/${groupSegment(group)}`;
    const body = await this.http.request("GET", path);
    const members = field(body, "members", "GET", path);
    if (!Array.isArray(members)) {
      throw shapeError("GET", path, "members", "a list", members);
    }
    return members.map((member, i) => {
      const id = typeof member === "object" && member !== null
        ? (member as { entityId?: unknown }).entityId
        : member;
      if (!isEntityId(id)) {
        throw shapeError(
          "GET",
          path,
          `members[${i}]`,
          "an entity id or an object with entityId",
          member,
        );
      }
      return id;
    });
  }

  /**
   * Members of `group` with their entity data in one request (Unity 2.6.1+),
   * decoded one by one as the answer streams in. Only the entities `keep`
   * accepts are held; the others, and every member's attributes, are
   * dropped at once, so memory follows the selection, not the group.
   * Returns undefined where the server has no such endpoint.
   */
  async membersWithEntities(
    group: string,
    keep: (entity: Entity) => boolean = () => true,
  ): Promise<{ scanned: number; entities: Entity[] } | undefined> {
    const path = `/group-members/${groupSegment(group)}`;
    try {
      const { count, kept } = await this.http.pickElements(
        path,
        (member, i) => {
          const entity = decodeEntity(
            field(member, "entity", "GET", path, `[${i}]`),
            "GET",
            path,
            `[${i}].entity`,
          );
          return keep(entity) ? entity : undefined;
        },
      );
      return { scanned: count, entities: kept };
    } catch (error) {
      // Older Unity answers 404 (unknown path); some proxies answer 400.
      if (
        error instanceof ApiError &&
        (error.status === 404 || (error.status === 400 && !error.unityError))
      ) {
        return undefined;
      }
      throw error;
    }
  }

  /** One entity; Unity creates a persistent identity as a side effect if it has none. */
  async entity(id: number): Promise<Entity> {
    const path = `/entity/${id}`;
    return decodeEntity(await this.http.request("GET", path), "GET", path);
  }

  /** Paths of every group the entity belongs to. */
  async groups(id: number): Promise<string[]> {
    const path = `/entity/${id}/groups`;
    const body = await this.http.request("GET", path);
    if (!Array.isArray(body) || !body.every((g) => typeof g === "string")) {
      throw shapeError("GET", path, "(body)", "a list of group paths", body);
    }
    return body;
  }

  /** Attributes set directly on the entity in exactly `group`. */
  async directAttributes(id: number, group: string): Promise<Attribute[]> {
    const path = `/entity/${id}/attributes`;
    // `group` is not normalized by Unity: it must be the full path.
    const body = await this.http.request("GET", path, {
      group,
      effective: false,
    });
    if (!Array.isArray(body)) {
      throw shapeError("GET", path, "(body)", "a list", body);
    }
    return body.map((raw, i) => decodeAttribute(raw, group, path, i));
  }
}

/** Reads and changes Unity; only built when changes are allowed. */
export class UnityAdmin extends UnityReader {
  constructor(http: UnityHttp) {
    if (!http.allowsMutations) {
      throw new Error(
        "UnityAdmin needs a client that allows changes (not in a dry run)",
      );
    }
    super(http);
  }

  /**
   * Removes a DIRECT attribute in exactly `group`.
   *
   * @throws {ApiError} for anything but "removed", "already gone" or
   * "immutable system attribute".
   */
  async removeAttribute(
    id: number,
    group: string,
    name: string,
  ): Promise<RemovalOutcome> {
    const path = `/entity/${id}/attribute/${encodeURIComponent(name)}`;
    try {
      await this.http.request("DELETE", path, { group });
      return "removed";
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 400) throw error;
      if (error.unityError === "SchemaConsistencyException") return "immutable";
      if (
        !isUnknownEntity(error) &&
        /does not exist|not defined|no such attribute/i.test(
          error.unityMessage ?? "",
        )
      ) return "absent";
      throw error;
    }
  }

  /**
   * Schedules removal of the entity at `when` (epoch ms). Unity runs a
   * schedule that is not in the future AT ONCE, so such a `when` is refused.
   */
  async scheduleRemoval(
    id: number,
    when: number,
    now = Date.now(),
  ): Promise<void> {
    if (!Number.isSafeInteger(when) || when <= now) {
      throw new Error(
        `Refusing to schedule removal of entity ${id} at ${when}: not a future time in ms (Unity would remove it immediately)`,
      );
    }
    await this.http.request("PUT", `/entity/${id}/admin-schedule`, {
      operation: "REMOVE",
      when,
    });
  }
}

/**
 * System attributes Unity refuses to remove (SchemaConsistencyException).
 * The job still asks, and records the refusal; a plan marks them.
 */
export function isImmutableSystemAttribute(name: string): boolean {
  return /^sys:(?:LastAuthentication|CredentialRequirements|Credential:.+|Preferences|AttributeClasses|userMFAOptIn)$/
    .test(name);
}

/** True when Unity says the entity does not exist (any more). */
export function isUnknownEntity(error: unknown): boolean {
  return error instanceof ApiError && error.status === 400 &&
    error.unityError === "UnknownIdentityException";
}

/** Plain e-mail addresses from `email` attributes, whichever encoding. */
export function emailsOf(attributes: readonly Attribute[]): string[] {
  const found = new Set<string>();
  for (const attribute of attributes) {
    if (attribute.name !== "email") continue;
    for (const value of attribute.values) {
      const address = plainAddress(value);
      if (address) found.add(address);
    }
  }
  return [...found];
}

/** verifiableEmail values are JSON in a string from 2.0, objects in 1.x. */
function plainAddress(value: unknown): string | undefined {
  if (typeof value === "string") {
    if (!value.trimStart().startsWith("{")) return value.trim() || undefined;
    try {
      return plainAddress(JSON.parse(value));
    } catch {
      return value.trim();
    }
  }
  if (typeof value === "object" && value !== null) {
    const inner = (value as { value?: unknown }).value;
    return typeof inner === "string" ? inner.trim() || undefined : undefined;
  }
  return undefined;
}

function decodeEntity(
  body: unknown,
  method: string,
  path: string,
  at = "",
): Entity {
  const info = field(body, "entityInformation", method, path, at);
  // 1.x has the id beside entityInformation, 2.0+ inside it.
  const id = (info as Record<string, unknown>).entityId ??
    (body as Record<string, unknown>).id;
  if (!isEntityId(id)) {
    throw shapeError(
      method,
      path,
      `${at}.entityInformation.entityId`,
      "a number",
      id,
    );
  }
  const state = field(info, "state", method, path, `${at}.entityInformation`);
  if (typeof state !== "string") {
    throw shapeError(
      method,
      path,
      `${at}.entityInformation.state`,
      "a string",
      state,
    );
  }
  const record = info as Record<string, unknown>;
  // Capitalized and absent when unset from 2.0; lowercase and null in 1.x.
  const operation = record.ScheduledOperation ?? record.scheduledOperation ??
    null;
  const time = record.ScheduledOperationTime ?? record.scheduledOperationTime ??
    null;
  return {
    id,
    state,
    scheduledOperation: typeof operation === "string" ? operation : null,
    scheduledTime: typeof time === "number" ? time : null,
    persistentId: persistentIdOf((body as Record<string, unknown>).identities),
  };
}

function persistentIdOf(identities: unknown): string | null {
  if (!Array.isArray(identities)) return null;
  const persistent = identities.find((i) =>
    i?.typeId === "persistent" && typeof i.value === "string"
  );
  return persistent?.value ?? null;
}

function decodeAttribute(
  raw: unknown,
  group: string,
  path: string,
  i: number,
): Attribute {
  const name = field(raw, "name", "GET", path, `[${i}]`);
  if (typeof name !== "string") {
    throw shapeError("GET", path, `[${i}].name`, "a string", name);
  }
  const record = raw as Record<string, unknown>;
  // From 3.12 empty fields are omitted: no `values` key means no values.
  const values = record.values ?? [];
  if (!Array.isArray(values)) {
    throw shapeError("GET", path, `[${i}].values`, "a list", values);
  }
  return {
    name,
    group: typeof record.groupPath === "string" ? record.groupPath : group,
    direct: record.direct !== false,
    values,
  };
}

function field(
  body: unknown,
  key: string,
  method: string,
  path: string,
  at = "",
): unknown {
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    throw shapeError(method, path, at || "(body)", "an object", body);
  }
  const value = (body as Record<string, unknown>)[key];
  if (value === undefined) {
    throw shapeError(
      method,
      path,
      `${at}.${key}`.replace(/^\./, ""),
      "present",
      undefined,
    );
  }
  return value;
}

function isEntityId(value: unknown): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= 0;
}

function shapeError(
  method: string,
  path: string,
  at: string,
  expected: string,
  got: unknown,
): ApiError {
  const shown = got === undefined
    ? "nothing"
    : JSON.stringify(got)?.slice(0, 60) ?? String(got);
  return new ApiError(
    `Cannot ${method} ${path}: unexpected answer from Unity: ${at} should be ${expected}, got ${shown} (is api.base_url/path/version pointing at Unity's rest-admin API?)`,
    { kind: "shape", method, path },
  );
}

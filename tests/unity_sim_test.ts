/**
 * Tests of the Unity simulator itself, with plain `fetch` against it: the
 * shapes per Unity version, group encoding, authentication, the two changes
 * the job makes, faults, concurrency, HTTPS and the seeders.
 */

import assert from "node:assert/strict";
import {
  type Fault,
  type SimOptions,
  type UnityProfile,
  UnitySim,
} from "./support/unity_sim.ts";
import { seedBench, seedDemo } from "./support/population.ts";

const API = "/rest-admin/v1";
const AUTH = "Basic " + btoa("admin:the!admin pass");

interface Reply {
  status: number;
  headers: Headers;
  text: string;
  // deno-lint-ignore no-explicit-any
  json: any;
}

async function call(
  sim: UnitySim,
  method: string,
  path: string,
  init: { authorization?: string | null; client?: Deno.HttpClient } = {},
): Promise<Reply> {
  const headers = new Headers();
  const authorization = init.authorization === undefined
    ? AUTH
    : init.authorization;
  if (authorization !== null) headers.set("authorization", authorization);
  const response = await fetch(sim.url + API + path, {
    method,
    headers,
    ...(init.client ? { client: init.client } : {}),
  });
  const text = await response.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, text, json };
}

async function withSim(
  opts: SimOptions,
  body: (sim: UnitySim) => Promise<void> | void,
): Promise<void> {
  const sim = await UnitySim.start(opts);
  try {
    await body(sim);
  } finally {
    await sim.close();
  }
}

function eachProfile(
  body: (profile: UnityProfile) => Promise<void>,
): Promise<void[]> {
  const profiles: UnityProfile[] = ["1.x", "2.x", "3.12", "4.x"];
  return Promise.all(profiles.map(body));
}

function assertUnityError(reply: Reply, status: number, error: string): void {
  assert.equal(reply.status, status, reply.text);
  assert.equal(reply.headers.get("content-type"), "application/json");
  assert.equal(reply.json?.error, error, reply.text);
  assert.equal(typeof reply.json?.message, "string");
}

function assertEmpty(reply: Reply, status: number): void {
  assert.equal(reply.status, status, reply.text);
  assert.equal(reply.text, "");
}

// ---- shapes per version ------------------------------------------------------

Deno.test("group members are plain numbers in 1.x and objects from 2.x", async () => {
  await eachProfile((profile) =>
    withSim({ profile }, async (sim) => {
      const id = sim.addEntity({ groups: ["/eudat"] });

      const reply = await call(sim, "GET", "/group/%2Feudat");

      assert.equal(reply.status, 200);
      assert.equal(reply.headers.get("content-type"), "application/json");
      assert.deepEqual(reply.json.subGroups, []);
      if (profile === "1.x") {
        assert.deepEqual(reply.json.members, [id]);
      } else {
        assert.equal(reply.json.members.length, 1);
        const member = reply.json.members[0];
        assert.equal(member.group, "/eudat");
        assert.equal(member.entityId, id);
        assert.equal(typeof member.creationTs, "number");
      }
    })
  );
});

Deno.test("the root group lists the admin, direct subgroups and every member", async () => {
  await withSim({}, async (sim) => {
    const a = sim.addEntity({});
    const b = sim.addEntity({ groups: ["/eudat/b2share"] });

    const reply = await call(sim, "GET", "/group/%2F");

    assert.deepEqual(reply.json.subGroups, ["/eudat"]);
    assert.deepEqual(
      reply.json.members.map((m: { entityId: number }) => m.entityId),
      [1, a, b],
    );
  });
});

Deno.test("schedule keys are lowercase with nulls in 1.x and capitalized, absent when unset, from 2.x", async () => {
  await eachProfile((profile) =>
    withSim({ profile }, async (sim) => {
      const plain = sim.addEntity({ state: "disabled" });
      const scheduled = sim.addEntity({
        state: "disabled",
        scheduledOperation: "REMOVE",
        scheduledTime: 1767225600000,
      });

      const a = (await call(sim, "GET", `/entity/${plain}`)).json;
      const b = (await call(sim, "GET", `/entity/${scheduled}`)).json;

      if (profile === "1.x") {
        assert.equal(a.id, plain);
        assert.deepEqual(a.entityInformation, {
          state: "disabled",
          scheduledOperationTime: null,
          scheduledOperation: null,
          removalByUserTime: null,
        });
        assert.equal(b.entityInformation.scheduledOperation, "REMOVE");
        assert.equal(b.entityInformation.scheduledOperationTime, 1767225600000);
      } else {
        assert.deepEqual(a.entityInformation, {
          entityId: plain,
          state: "disabled",
        });
        assert.equal(b.entityInformation.ScheduledOperation, "REMOVE");
        assert.equal(b.entityInformation.ScheduledOperationTime, 1767225600000);
        assert.equal("RemovalByUserTime" in b.entityInformation, false);
        assert.equal("scheduledOperation" in b.entityInformation, false);
      }
      assert.equal(typeof a.credentialInfo.credentialRequirementId, "string");
    })
  );
});

Deno.test("identities carry type, value, comparable value and confirmation info", async () => {
  await withSim({ profile: "2.x" }, async (sim) => {
    const id = sim.addEntity({
      otherIdentities: [{ typeId: "email", value: "Ann@Example.org" }],
    });

    const identities = (await call(sim, "GET", `/entity/${id}`)).json
      .identities;

    assert.deepEqual(
      identities.map((i: { typeId: string }) => i.typeId),
      ["email", "persistent"],
    );
    assert.equal(identities[0].value, "Ann@Example.org");
    assert.equal(identities[0].comparableValue, "ann@example.org");
    assert.equal(identities[0].entityId, id);
    assert.deepEqual(identities[0].confirmationInfo, {
      confirmed: false,
      confirmationDate: 0,
      sentRequestAmount: 0,
    });
  });
});

Deno.test("attribute values are strings from 2.x and native JSON in 1.x", async () => {
  await eachProfile((profile) =>
    withSim({ profile }, async (sim) => {
      const id = sim.addEntity({
        attributes: [
          { name: "quota", group: "/", values: [42], syntax: "integer" },
        ],
      });

      const [attribute] = (await call(sim, "GET", `/entity/${id}/attributes`))
        .json;

      assert.equal(attribute.name, "quota");
      assert.equal(attribute.groupPath, "/");
      assert.equal(attribute.direct, true);
      if (profile === "1.x") {
        assert.deepEqual(attribute.values, [42]);
        assert.equal(attribute.visibility, "full");
        assert.equal(attribute.syntax, "integer");
      } else {
        assert.deepEqual(attribute.values, ["42"]);
        assert.equal(attribute.valueSyntax, "integer");
        assert.equal("visibility" in attribute, false);
        assert.equal(typeof attribute.creationTs, "number");
      }
    })
  );
});

Deno.test("an attribute without values has no values key from 3.12 and an empty list before", async () => {
  await eachProfile((profile) =>
    withSim({ profile }, async (sim) => {
      const id = sim.addEntity({
        attributes: [{ name: "cn", group: "/", values: [] }],
      });

      const [attribute] = (await call(sim, "GET", `/entity/${id}/attributes`))
        .json;

      if (profile === "3.12" || profile === "4.x") {
        assert.equal("values" in attribute, false);
        assert.equal("translationProfile" in attribute, false);
      } else {
        assert.deepEqual(attribute.values, []);
      }
    })
  );
});

Deno.test("verifiableEmail is a JSON document in a string from 2.x and an object in 1.x; plain emails stay plain", async () => {
  await eachProfile((profile) =>
    withSim({ profile }, async (sim) => {
      const id = sim.addEntity({
        attributes: [
          {
            name: "email",
            group: "/",
            values: ["ann@example.org"],
            syntax: "verifiableEmail",
          },
          { name: "email", group: "/eudat", values: ["ann@plain.example"] },
        ],
      });

      const [verifiable] =
        (await call(sim, "GET", `/entity/${id}/attributes`)).json;
      const [plain] = (await call(
        sim,
        "GET",
        `/entity/${id}/attributes?group=/eudat`,
      )).json;

      const value = verifiable.values[0];
      if (profile === "1.x") {
        assert.equal(value.value, "ann@example.org");
        assert.equal(JSON.parse(value.confirmationData).confirmed, true);
      } else {
        assert.equal(typeof value, "string");
        const document = JSON.parse(value);
        assert.equal(document.value, "ann@example.org");
        assert.equal(document.confirmationData.confirmed, true);
        assert.deepEqual(document.tags, []);
      }
      assert.deepEqual(plain.values, ["ann@plain.example"]);
    })
  );
});

// ---- group encoding ------------------------------------------------------------

Deno.test("a group path travels as one %2F-encoded segment", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({ groups: ["/eudat/b2share"] });

    const reply = await call(sim, "GET", "/group/%2Feudat%2Fb2share");

    assert.equal(reply.status, 200);
    assert.deepEqual(reply.json.members[0].entityId, id);
  });
});

Deno.test("a raw slash in the group part does not resolve to the nested group", async () => {
  await withSim({}, async (sim) => {
    sim.addEntity({ groups: ["/eudat/b2share"] });

    assertEmpty(await call(sim, "GET", "/group/eudat/b2share"), 404);
    const meta = await call(sim, "GET", "/group/eudat/meta");
    assert.equal(meta.status, 200);
    assert.equal(meta.json.path, "/eudat");
    assert.equal("members" in meta.json, false);
  });
});

Deno.test("a double-encoded %252F names a group that does not exist", async () => {
  await withSim({}, async (sim) => {
    const reply = await call(sim, "GET", "/group/%252F");

    assertUnityError(reply, 400, "EntityNotFoundException");
    assert.match(reply.json.message, /does not exist/);
  });
});

Deno.test("an unknown group is 400 EntityNotFoundException from 2.x", async () => {
  await withSim({ profile: "2.x" }, async (sim) => {
    const reply = await call(sim, "GET", "/group/%2Fnope");

    assertUnityError(reply, 400, "EntityNotFoundException");
    assert.equal(reply.json.message, "group [/nope] does not exist");
  });
});

Deno.test("an unrouted path answers 404 with an empty body", async () => {
  await withSim({}, async (sim) => {
    assertEmpty(await call(sim, "GET", "/nothing/here"), 404);
    const outside = await fetch(sim.url + "/other/v1/group/%2F", {
      headers: { authorization: AUTH },
    });
    assert.equal(outside.status, 404);
    assert.equal(await outside.text(), "");
  });
});

// ---- authentication ---------------------------------------------------------------

Deno.test("a wrong password is 403 without WWW-Authenticate", async () => {
  await withSim({}, async (sim) => {
    const reply = await call(sim, "GET", "/group/%2F", {
      authorization: "Basic " + btoa("admin:wrong"),
    });

    assertUnityError(reply, 403, "AuthorizationException");
    assert.equal(reply.headers.get("www-authenticate"), null);
  });
});

Deno.test("a missing Authorization header is 400 from 3.12 and 403 before", async () => {
  await eachProfile((profile) =>
    withSim({ profile }, async (sim) => {
      const reply = await call(sim, "GET", "/group/%2F", {
        authorization: null,
      });

      const modern = profile === "3.12" || profile === "4.x";
      assert.equal(reply.status, modern ? 400 : 403);
      assert.equal(reply.headers.get("www-authenticate"), null);
    })
  );
});

Deno.test("credentials are decoded as US-ASCII, so a non-ASCII password never matches", async () => {
  await withSim({ password: "pässword" }, async (sim) => {
    const utf8 = String.fromCharCode(
      ...new TextEncoder().encode("admin:pässword"),
    );

    const reply = await call(sim, "GET", "/group/%2F", {
      authorization: "Basic " + btoa(utf8),
    });

    assert.equal(reply.status, 403);
  });
});

// ---- entities ---------------------------------------------------------------------

Deno.test("GET /entity creates a missing persistent id; /group-members does not", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({ persistentId: null });

    const members = (await call(sim, "GET", "/group-members/%2F")).json;
    const listed = members.find((
      m: { entity: { entityInformation: { entityId: number } } },
    ) => m.entity.entityInformation.entityId === id);
    assert.equal(
      listed.entity.identities.some((i: { typeId: string }) =>
        i.typeId === "persistent"
      ),
      false,
    );
    assert.equal(sim.entity(id)?.persistentId, null);

    const entity = (await call(sim, "GET", `/entity/${id}`)).json;
    const created = sim.entity(id)?.persistentId;
    assert.match(created ?? "", /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-/);
    assert.equal(
      entity.identities.find((i: { typeId: string }) =>
        i.typeId === "persistent"
      ).value,
      created,
    );
  });
});

Deno.test("group-members gives each member's entity and its attributes in that group", async () => {
  await withSim({ profile: "3.12" }, async (sim) => {
    const id = sim.addEntity({
      groups: ["/eudat"],
      attributes: [
        { name: "cn", group: "/eudat", values: ["Ann"] },
        { name: "name", group: "/eudat", values: ["Ann"], direct: false },
        { name: "cn", group: "/", values: ["Root Ann"] },
      ],
    });

    const reply = await call(sim, "GET", "/group-members/%2Feudat");

    assert.equal(reply.status, 200);
    assert.equal(reply.json.length, 1);
    const [member] = reply.json;
    assert.equal(member.group, "/eudat");
    assert.equal(member.entity.entityInformation.entityId, id);
    assert.deepEqual(
      member.attributes.map((a: { name: string; direct: boolean }) => [
        a.name,
        a.direct,
      ]),
      [["cn", true], ["name", false]],
    );
  });
});

Deno.test("group-members answers 404 with an empty body where Unity lacks it (1.x, 2.x)", async () => {
  await withSim({ profile: "2.x" }, async (sim) => {
    assertEmpty(await call(sim, "GET", "/group-members/%2F"), 404);
  });
  await withSim({ profile: "2.x", bulkMembers: true }, async (sim) => {
    assert.equal((await call(sim, "GET", "/group-members/%2F")).status, 200);
  });
});

Deno.test("an unknown entity is 400 UnknownIdentityException; a non-numeric id is 400 WrongArgumentException", async () => {
  await withSim({}, async (sim) => {
    const unknown = await call(sim, "GET", "/entity/999");
    assertUnityError(unknown, 400, "UnknownIdentityException");
    assert.equal(unknown.json.message, "Entity 999 is unknown");

    assertUnityError(
      await call(sim, "GET", "/entity/ann"),
      400,
      "WrongArgumentException",
    );
  });
});

Deno.test("an entity can be addressed by its persistent id or by identityType", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({
      otherIdentities: [{ typeId: "userName", value: "ann" }],
    });
    const persistentId = sim.entity(id)!.persistentId!;

    const byPersistent = await call(sim, "GET", `/entity/${persistentId}`);
    const byName = await call(
      sim,
      "GET",
      "/entity/ann/groups?identityType=userName",
    );

    assert.equal(byPersistent.json.entityInformation.entityId, id);
    assert.deepEqual(byName.json, ["/"]);
  });
});

Deno.test("entity groups list every group with its ancestors", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({ groups: ["/projects/x/admins"] });

    const reply = await call(sim, "GET", `/entity/${id}/groups`);

    assert.deepEqual(reply.json, [
      "/",
      "/projects",
      "/projects/x",
      "/projects/x/admins",
    ]);
  });
});

// ---- attributes -------------------------------------------------------------------

Deno.test("attributes default to the root group and effective ones; effective=false gives only direct ones", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({
      groups: ["/eudat"],
      attributes: [
        { name: "cn", group: "/", values: ["Ann"] },
        { name: "name", group: "/", values: ["Ann"], direct: false },
        { name: "cn", group: "/eudat", values: ["Ann E."] },
      ],
    });
    const names = (reply: Reply) =>
      reply.json.map((a: { name: string }) => a.name);

    assert.deepEqual(
      names(await call(sim, "GET", `/entity/${id}/attributes`)),
      ["cn", "name"],
    );
    assert.deepEqual(
      names(
        await call(sim, "GET", `/entity/${id}/attributes?effective=false`),
      ),
      ["cn"],
    );
    assert.deepEqual(
      names(await call(sim, "GET", `/entity/${id}/attributes?group=/eudat`)),
      ["cn"],
    );
  });
});

Deno.test("the attributes group must be a full path the entity belongs to", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({ groups: ["/eudat"] });
    sim.addGroup("/projects");

    for (const group of ["eudat", "/projects", "/nope"]) {
      assertUnityError(
        await call(sim, "GET", `/entity/${id}/attributes?group=${group}`),
        400,
        "IllegalGroupValueException",
      );
    }
  });
});

Deno.test("DELETE attribute removes the direct attribute in exactly that group", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({
      groups: ["/eudat"],
      attributes: [
        { name: "cn", group: "/", values: ["Ann"] },
        { name: "cn", group: "/eudat", values: ["Ann E."] },
      ],
    });

    const reply = await call(
      sim,
      "DELETE",
      `/entity/${id}/attribute/cn?group=%2Feudat`,
    );

    assertEmpty(reply, 204);
    assert.deepEqual(sim.entity(id)?.attributes, [
      { name: "cn", group: "/", values: ["Ann"] },
    ]);
  });
});

Deno.test("DELETE attribute is 400 for an attribute not set directly in that group", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({
      attributes: [
        { name: "name", group: "/", values: ["Ann"], direct: false },
        { name: "cn", group: "/", values: ["Ann"] },
      ],
    });

    const statement = await call(
      sim,
      "DELETE",
      `/entity/${id}/attribute/name?group=/`,
    );
    const twice = [
      await call(sim, "DELETE", `/entity/${id}/attribute/cn`),
      await call(sim, "DELETE", `/entity/${id}/attribute/cn`),
    ];

    assertUnityError(statement, 400, "IllegalArgumentException");
    assert.equal(statement.json.message, "attribute [name] does not exist");
    assert.equal(twice[0]!.status, 204);
    assertUnityError(twice[1]!, 400, "IllegalArgumentException");
  });
});

Deno.test("DELETE attribute refuses immutable sys: attributes but removes sys:AuthorizationRole", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({
      attributes: [
        {
          name: "sys:LastAuthentication",
          group: "/",
          values: ["2024-01-01T10:00:00"],
        },
        { name: "sys:CredentialRequirements", group: "/", values: ["sys:all"] },
        { name: "sys:AuthorizationRole", group: "/", values: ["Regular User"] },
      ],
    });

    for (
      const name of [
        "sys:LastAuthentication",
        "sys:CredentialRequirements",
        "sys:Credential:sys:password",
        "sys:Preferences",
      ]
    ) {
      const reply = await call(
        sim,
        "DELETE",
        `/entity/${id}/attribute/${encodeURIComponent(name)}?group=%2F`,
      );
      assertUnityError(reply, 400, "SchemaConsistencyException");
    }
    const role = await call(
      sim,
      "DELETE",
      `/entity/${id}/attribute/sys%3AAuthorizationRole?group=%2F`,
    );

    assertEmpty(role, 204);
    assert.deepEqual(
      sim.entity(id)?.attributes.map((a) => a.name),
      ["sys:LastAuthentication", "sys:CredentialRequirements"],
    );
  });
});

// ---- schedules --------------------------------------------------------------------

Deno.test("a future admin-schedule sets the operation and replaces an older one", async () => {
  const now = 1_700_000_000_000;
  await withSim({ now: () => now }, async (sim) => {
    const id = sim.addEntity({
      state: "disabled",
      scheduledOperation: "DISABLE",
      scheduledTime: now + 5,
    });

    const reply = await call(
      sim,
      "PUT",
      `/entity/${id}/admin-schedule?operation=REMOVE&when=${now + 1000}`,
    );

    assertEmpty(reply, 204);
    assert.equal(sim.entity(id)?.scheduledOperation, "REMOVE");
    assert.equal(sim.entity(id)?.scheduledTime, now + 1000);
    assert.deepEqual(sim.removedEntities, []);
  });
});

Deno.test("an admin-schedule REMOVE with a past or missing when removes the entity at once", async () => {
  const now = 1_700_000_000_000;
  await withSim({ now: () => now }, async (sim) => {
    const past = sim.addEntity({ state: "disabled" });
    const missing = sim.addEntity({ state: "disabled" });
    const exactlyNow = sim.addEntity({ state: "disabled" });

    for (
      const path of [
        `/entity/${past}/admin-schedule?operation=REMOVE&when=${now - 1}`,
        `/entity/${missing}/admin-schedule?operation=REMOVE`,
        `/entity/${exactlyNow}/admin-schedule?operation=REMOVE&when=${now}`,
      ]
    ) {
      assertEmpty(await call(sim, "PUT", path), 204);
    }

    assert.deepEqual(sim.removedEntities, [
      { id: past, at: now, immediate: true },
      { id: missing, at: now, immediate: true },
      { id: exactlyNow, at: now, immediate: true },
    ]);
    assert.equal(sim.entity(past), undefined);
    assertUnityError(
      await call(sim, "GET", `/entity/${past}`),
      400,
      "UnknownIdentityException",
    );
    const root = await call(sim, "GET", "/group/%2F");
    assert.deepEqual(
      root.json.members.map((m: { entityId: number }) => m.entityId),
      [1],
    );
  });
});

Deno.test("an admin-schedule DISABLE in the past disables at once and clears the schedule", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({
      scheduledOperation: "REMOVE",
      scheduledTime: Date.now() + 100_000,
    });

    await call(
      sim,
      "PUT",
      `/entity/${id}/admin-schedule?operation=DISABLE&when=1`,
    );

    assert.equal(sim.entity(id)?.state, "disabled");
    assert.equal(sim.entity(id)?.scheduledOperation, null);
    assert.equal(sim.entity(id)?.scheduledTime, null);
  });
});

Deno.test("when=2024-01-01 answers 404 with an empty body; an unknown operation is 400", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({ state: "disabled" });

    assertEmpty(
      await call(
        sim,
        "PUT",
        `/entity/${id}/admin-schedule?operation=REMOVE&when=2024-01-01`,
      ),
      404,
    );
    assertUnityError(
      await call(
        sim,
        "PUT",
        `/entity/${id}/admin-schedule?operation=remove&when=${
          Date.now() + 9e6
        }`,
      ),
      400,
      "WrongArgumentException",
    );
    assert.deepEqual(
      sim.snapshot().find((e) => e.id === id)?.scheduledOperation,
      null,
    );
  });
});

Deno.test("DELETE admin-schedule clears the schedule in 4.x and is not allowed before", async () => {
  await withSim({ profile: "4.x" }, async (sim) => {
    const id = sim.addEntity({
      state: "onlyLoginPermitted",
      removalByUserTime: Date.now() + 10_000,
      scheduledOperation: "REMOVE",
      scheduledTime: Date.now() + 10_000,
    });

    assertEmpty(await call(sim, "DELETE", `/entity/${id}/admin-schedule`), 204);

    const entity = sim.entity(id)!;
    assert.equal(entity.scheduledOperation, null);
    assert.equal(entity.scheduledTime, null);
    assert.equal(entity.state, "valid");
    assert.equal(entity.removalByUserTime, null);
  });
  await withSim({ profile: "3.12" }, async (sim) => {
    const id = sim.addEntity({});
    const reply = await call(sim, "DELETE", `/entity/${id}/admin-schedule`);
    assertEmpty(reply, 405);
    assert.equal(reply.headers.get("allow"), "PUT");
  });
});

Deno.test("removal-schedule lets the user only log in until when", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({});
    const when = Date.now() + 86_400_000;

    assertEmpty(
      await call(sim, "PUT", `/entity/${id}/removal-schedule?when=${when}`),
      204,
    );

    const info = (await call(sim, "GET", `/entity/${id}`)).json
      .entityInformation;
    assert.equal(info.state, "onlyLoginPermitted");
    assert.equal(info.RemovalByUserTime, when);
  });
});

Deno.test("runDueOperations performs schedules that have come due", async () => {
  let now = 1_000;
  await withSim({ now: () => now }, (sim) => {
    const remove = sim.addEntity({
      scheduledOperation: "REMOVE",
      scheduledTime: 2_000,
    });
    const disable = sim.addEntity({
      scheduledOperation: "DISABLE",
      scheduledTime: 2_000,
    });

    assert.equal(sim.runDueOperations(), 0);
    now = 2_000;
    assert.equal(sim.runDueOperations(), 2);

    assert.deepEqual(sim.removedEntities, [
      { id: remove, at: 2_000, immediate: false },
    ]);
    assert.equal(sim.entity(disable)?.state, "disabled");
  });
});

// ---- faults, concurrency, logging ---------------------------------------------------

Deno.test("a fault answers with its status and Unity's error body for `times` requests", async () => {
  await withSim({}, async (sim) => {
    sim.fault({ method: "GET", path: /^\/group\//, status: 500, times: 2 });

    const replies = [
      await call(sim, "GET", "/group/%2F"),
      await call(sim, "GET", "/group/%2F"),
      await call(sim, "GET", "/group/%2F"),
    ];

    assertUnityError(replies[0]!, 500, "InternalException");
    assert.equal(replies[1]!.status, 500);
    assert.equal(replies[2]!.status, 200);
  });
});

Deno.test("a fault can serve a proxy's HTML page or truncated JSON with status 200", async () => {
  await withSim({}, async (sim) => {
    sim.fault({
      body: "<html>Bad gateway</html>",
      contentType: "text/html",
      status: 200,
    });
    sim.fault({ body: '{"subGroups":["/eu', status: 200 });

    const html = await call(sim, "GET", "/group/%2F");
    const truncated = await call(sim, "GET", "/group/%2F");

    assert.equal(html.status, 200);
    assert.equal(html.headers.get("content-type"), "text/html");
    assert.equal(html.text, "<html>Bad gateway</html>");
    assert.equal(truncated.text, '{"subGroups":["/eu');
    assert.equal(truncated.json, undefined);
  });
});

Deno.test("the first matching fault wins and clearFaults drops the rest", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({});
    const faults: Fault[] = [
      { method: "PUT", status: 502 },
      { path: /^\/entity\/\d+$/, status: 503, times: Infinity },
    ];
    faults.forEach((f) => sim.fault(f));

    assert.equal((await call(sim, "GET", `/entity/${id}`)).status, 503);
    assert.equal((await call(sim, "GET", `/entity/${id}`)).status, 503);
    sim.clearFaults();
    assert.equal((await call(sim, "GET", `/entity/${id}`)).status, 200);
  });
});

Deno.test("a hung request stays unanswered until close() releases it", async () => {
  const sim = await UnitySim.start();
  sim.fault({ hang: true });
  const pending = fetch(sim.url + API + "/group/%2F", {
    headers: { authorization: AUTH },
  }).then((r) => r.text());
  const settled = pending.then(() => "answered", () => "failed");

  for (let i = 0; i < 50 && sim.requests.length === 0; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const early = await Promise.race([
    settled,
    new Promise((resolve) => setTimeout(() => resolve("hanging"), 100)),
  ]);
  await sim.close();

  assert.equal(early, "hanging");
  assert.equal(await settled, "failed");
  assert.equal(sim.requests[0]?.status, 0);
});

Deno.test("a reset connection breaks the response off", async () => {
  await withSim({}, async (sim) => {
    sim.fault({ resetConnection: true });

    await assert.rejects(call(sim, "GET", "/group/%2F"));
    assert.equal((await call(sim, "GET", "/group/%2F")).status, 200);
  });
});

Deno.test("a delayed fault answers normally after the delay", async () => {
  await withSim({}, async (sim) => {
    sim.fault({ delayMs: 80 });
    const started = performance.now();

    const reply = await call(sim, "GET", "/group/%2F");

    assert.equal(reply.status, 200);
    assert.ok(performance.now() - started >= 75);
  });
});

Deno.test("maxInFlight counts requests served at the same time", async () => {
  await withSim({ latencyMs: 60, jitterMs: 10, seed: 3 }, async (sim) => {
    await Promise.all(
      Array.from({ length: 5 }, () => call(sim, "GET", "/group/%2F")),
    );
    assert.equal(sim.maxInFlight, 5);

    sim.resetRequestLog();
    await call(sim, "GET", "/group/%2F");
    await call(sim, "GET", "/group/%2F");

    assert.equal(sim.maxInFlight, 1);
    assert.equal(sim.requests.length, 2);
  });
});

Deno.test("the request log keeps every request, faulted ones too, with the raw path", async () => {
  await withSim({}, async (sim) => {
    sim.fault({ status: 503 });

    await call(sim, "GET", "/group/%2Feudat");
    await call(sim, "GET", "/entity/1/attributes?group=%2F&effective=false");

    assert.deepEqual(
      sim.requests.map((r) => [r.method, r.path, r.query, r.status]),
      [
        ["GET", `${API}/group/%2Feudat`, {}, 503],
        ["GET", `${API}/entity/1/attributes`, {
          group: "/",
          effective: "false",
        }, 200],
      ],
    );
    assert.ok(sim.requests.every((r) => r.durationMs >= 0 && r.at >= 0));
  });
});

// ---- HTTPS --------------------------------------------------------------------------

const TLS_DIR = new URL("./fixtures/tls/", import.meta.url);

function readFixture(name: string): string | undefined {
  try {
    return Deno.readTextFileSync(new URL(name, TLS_DIR));
  } catch {
    return undefined;
  }
}

const tls = {
  ca: readFixture("ca.pem"),
  cert: readFixture("server.pem"),
  key: readFixture("server.key"),
};

Deno.test({
  name: "serves HTTPS with a certificate the client trusts through its CA",
  ignore: !tls.ca || !tls.cert || !tls.key,
  async fn() {
    const client = Deno.createHttpClient({ caCerts: [tls.ca!] });
    try {
      await withSim(
        { tls: { cert: tls.cert!, key: tls.key! } },
        async (sim) => {
          assert.match(sim.url, /^https:\/\/127\.0\.0\.1:\d+$/);

          const reply = await call(sim, "GET", "/group/%2F", { client });

          assert.equal(reply.status, 200);
          await assert.rejects(
            fetch(sim.url + API + "/group/%2F").then((r) => r.text()),
          );
        },
      );
    } finally {
      client.close();
    }
  },
});

// ---- state and seeders ------------------------------------------------------------

Deno.test("snapshot() is a deep copy while entity() is live", async () => {
  await withSim({}, async (sim) => {
    const id = sim.addEntity({
      attributes: [{ name: "cn", group: "/", values: ["Ann"] }],
    });
    const before = sim.snapshot();

    await call(sim, "DELETE", `/entity/${id}/attribute/cn`);

    assert.equal(before.find((e) => e.id === id)?.attributes.length, 1);
    assert.equal(sim.entity(id)?.attributes.length, 0);
    assert.deepEqual(before.map((e) => e.id), [1, id]);
  });
});

Deno.test("seedDemo is deterministic and has the promised mix of states", async () => {
  const opts: SimOptions = { seed: 9, now: () => 1_750_000_000_000 };
  const a = await UnitySim.start(opts);
  const b = await UnitySim.start(opts);
  try {
    const demo = seedDemo(a, { seed: 11 });
    seedDemo(b, { seed: 11 });

    assert.deepEqual(a.snapshot(), b.snapshot());
    const all = a.snapshot().filter((e) => e.id !== 1);
    assert.equal(all.length, 300);
    assert.equal(demo.disabledUnscheduled.length, 15);
    assert.ok(demo.alreadyScheduled.length > 0);
    assert.equal(
      demo.disabledUnscheduled.length + demo.alreadyScheduled.length +
        demo.others.length,
      300,
    );
    for (const id of demo.disabledUnscheduled) {
      assert.equal(a.entity(id)?.state, "disabled");
      assert.equal(a.entity(id)?.scheduledOperation, null);
    }
    for (const id of demo.alreadyScheduled) {
      assert.equal(a.entity(id)?.scheduledOperation, "REMOVE");
    }
    const states = new Set(all.map((e) => e.state));
    assert.deepEqual(
      [...states].sort(),
      ["authenticationDisabled", "disabled", "onlyLoginPermitted", "valid"],
    );
    assert.ok(all.some((e) => e.persistentId === null));
    assert.ok(all.some((e) => e.groups.includes("/eudat/b2drop")));
    assert.ok(
      all.some((e) => e.attributes.some((a) => a.direct === false)),
    );
    assert.ok(JSON.stringify(all).includes("Ångström"));
  } finally {
    await a.close();
    await b.close();
  }
});

Deno.test("seedDemo's people read back through the API in every profile", async () => {
  await eachProfile((profile) =>
    withSim({ profile }, async (sim) => {
      const demo = seedDemo(sim, { users: 40 });

      const root = await call(sim, "GET", "/group/%2F");
      const first = demo.disabledUnscheduled[0]!;
      const attributes = await call(sim, "GET", `/entity/${first}/attributes`);

      assert.equal(root.json.members.length, 41);
      assert.equal(attributes.status, 200);
      assert.ok(
        attributes.json.some((a: { name: string }) => a.name === "email"),
      );
    })
  );
});

Deno.test("seedBench adds the requested members with the disabled share", async () => {
  await withSim({}, (sim) => {
    const { disabledUnscheduled } = seedBench(sim, {
      members: 1000,
      attributesPerEntity: 8,
    });

    assert.equal(disabledUnscheduled.length, 20);
    const sample = sim.entity(disabledUnscheduled[0]!)!;
    assert.equal(sample.state, "disabled");
    assert.equal(sample.attributes.length, 8);
    assert.equal(sample.groups.length, 4);
  });
});

Deno.test("serves 100,000 members with 8 attributes each in one bulk response", async () => {
  await withSim({}, async (sim) => {
    seedBench(sim, { members: 100_000 });
    const started = performance.now();

    const contents = await call(sim, "GET", "/group/%2F");
    const bulk = await call(sim, "GET", "/group-members/%2F");

    assert.equal(contents.json.members.length, 100_001);
    assert.equal(bulk.json.length, 100_001);
    assert.equal(bulk.json[1].attributes.length, 7);
    assert.ok(performance.now() - started < 15_000);
  });
});

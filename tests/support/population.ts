/**
 * Seeds a `UnitySim` with people: a realistic demo population (nested
 * groups, non-ASCII names, both e-mail encodings, system attributes, mixed
 * states and schedules) and a large, uniform benchmark population. It reads
 * nothing; it writes only into the simulator it is given. The same seed
 * gives the same people; schedule and login times follow the simulator
 * clock.
 */

import { mulberry32, type SimAttribute, type UnitySim } from "./unity_sim.ts";

/** The demo population, sorted into what the job should do with it. */
export interface DemoPopulation {
  sim: UnitySim;
  /** Disabled and without a scheduled operation: the job's targets. */
  disabledUnscheduled: number[];
  /** Disabled with a REMOVE already scheduled: to be left alone. */
  alreadyScheduled: number[];
  /** Everyone else the seeder added (the admin, id 1, is not listed). */
  others: number[];
}

const DAY = 86_400_000;

const DEMO_GROUPS = [
  "/eudat/b2share",
  "/eudat/b2drop",
  "/eudat/b2safe",
  "/projects/x/admins",
  "/projects/clarin",
];

const FIRST_NAMES = [
  "Zoë",
  "Jürgen",
  "Ann",
  "François",
  "Małgorzata",
  "Søren",
  "José",
  "Ólafur",
  "Aikaterini",
  "Łukasz",
  "Nguyễn",
  "Ingrid",
  "Pieter",
  "Chiara",
  "Mehmet",
  "Siobhán",
  "Ana",
  "Tomáš",
  "Émilie",
  "Karl",
];

const LAST_NAMES = [
  "Ångström",
  "Müller",
  "Lefèvre",
  "Wójcik",
  "Nørgaard",
  "Núñez",
  "Jónsson",
  "Papadopoulou",
  "Żółkiewski",
  "Van An",
  "Bergström",
  "de Vries",
  "Rossi",
  "Yılmaz",
  "Ní Bhriain",
  "Kovač",
  "Dvořák",
  "Dubois",
  "Smith",
  "O'Connor",
];

const AFFILIATIONS = [
  "member@uni-hamburg.example",
  "staff@csc.example",
  "student@uva.example",
  "faculty@cnrs.example",
  "affiliate@cineca.example",
];

/**
 * Adds `users` people (default 300) in /, /eudat/..., /projects/...: about
 * 5% disabled without a schedule (two of them without a persistent id yet),
 * 2% disabled with a REMOVE scheduled, and some authenticationDisabled,
 * onlyLoginPermitted or scheduled for DISABLE; the rest valid.
 *
 * @example
 * ```ts
 * const sim = await UnitySim.start({ profile: "3.12" });
 * const demo = seedDemo(sim, { users: 50, seed: 7 });
 * ```
 */
export function seedDemo(
  sim: UnitySim,
  opts: { users?: number; seed?: number } = {},
): DemoPopulation {
  const users = opts.users ?? 300;
  const random = mulberry32(opts.seed ?? 2024);
  for (const group of DEMO_GROUPS) sim.addGroup(group);

  const roles = assignRoles(users, random);
  const population: DemoPopulation = {
    sim,
    disabledUnscheduled: [],
    alreadyScheduled: [],
    others: [],
  };
  for (let i = 0; i < users; i++) {
    const role = roles[i]!;
    const id = sim.addEntity(demoPerson(sim, i, role, random));
    if (role === "disabled" || role === "disabledNoPid") {
      population.disabledUnscheduled.push(id);
    } else if (role === "scheduledRemove") {
      population.alreadyScheduled.push(id);
    } else {
      population.others.push(id);
    }
  }
  return population;
}

type Role =
  | "valid"
  | "noPid"
  | "disabled"
  | "disabledNoPid"
  | "scheduledRemove"
  | "authenticationDisabled"
  | "onlyLoginPermitted"
  | "scheduledDisable";

/** Exact shares, placed at seeded random positions. */
function assignRoles(users: number, random: () => number): Role[] {
  const disabled = Math.max(1, Math.round(users * 0.05));
  const counts: [Role, number][] = [
    ["disabledNoPid", Math.min(2, disabled)],
    ["disabled", Math.max(0, disabled - 2)],
    ["scheduledRemove", Math.max(1, Math.round(users * 0.02))],
    ["authenticationDisabled", Math.round(users * 0.03)],
    ["onlyLoginPermitted", Math.round(users * 0.02)],
    ["scheduledDisable", Math.round(users * 0.01)],
    ["noPid", Math.round(users * 0.01)],
  ];
  const roles: Role[] = [];
  for (const [role, count] of counts) {
    for (let i = 0; i < count; i++) roles.push(role);
  }
  while (roles.length < users) roles.push("valid");
  roles.length = users;
  return shuffle(roles, random);
}

function demoPerson(
  sim: UnitySim,
  index: number,
  role: Role,
  random: () => number,
): Parameters<UnitySim["addEntity"]>[0] {
  const first = pick(FIRST_NAMES, random);
  const last = pick(LAST_NAMES, random);
  const fullName = `${first} ${last}`;
  const login = `${ascii(first)}.${ascii(last)}${index}`;
  const address = `${login}@example.org`;
  const groups = pickGroups(random);
  const now = sim.now();

  return {
    ...demoState(role, now, random),
    ...(role === "noPid" || role === "disabledNoPid"
      ? { persistentId: null }
      : {}),
    otherIdentities: [
      { typeId: "userName", value: login },
      ...(random() < 0.5 ? [{ typeId: "email", value: address }] : []),
      ...(random() < 0.3
        ? [{ typeId: "identifier", value: `${login}@idp.example.org` }]
        : []),
    ],
    groups,
    attributes: demoAttributes(fullName, address, groups, now, random),
  };
}

function demoState(
  role: Role,
  now: number,
  random: () => number,
): Parameters<UnitySim["addEntity"]>[0] {
  const later = now + Math.round((10 + random() * 50) * DAY);
  switch (role) {
    case "disabled":
    case "disabledNoPid":
      return { state: "disabled" };
    case "scheduledRemove":
      return {
        state: "disabled",
        scheduledOperation: "REMOVE",
        scheduledTime: later,
      };
    case "scheduledDisable":
      return {
        state: "valid",
        scheduledOperation: "DISABLE",
        scheduledTime: later,
      };
    case "onlyLoginPermitted":
      return { state: "onlyLoginPermitted", removalByUserTime: later };
    case "authenticationDisabled":
      return { state: "authenticationDisabled" };
    default:
      return { state: "valid" };
  }
}

/** Leaf groups for one person; the simulator adds "/" and the ancestors. */
function pickGroups(random: () => number): string[] {
  const groups: string[] = [];
  if (random() < 0.7) groups.push(random() < 0.6 ? "/eudat/b2share" : "/eudat");
  if (random() < 0.4) groups.push("/eudat/b2drop");
  if (random() < 0.1) groups.push("/eudat/b2safe");
  if (random() < 0.2) {
    groups.push(random() < 0.3 ? "/projects/x/admins" : "/projects/x");
  }
  if (random() < 0.1) groups.push("/projects/clarin");
  return groups;
}

function demoAttributes(
  fullName: string,
  address: string,
  groups: string[],
  now: number,
  random: () => number,
): SimAttribute[] {
  const attributes: SimAttribute[] = [
    { name: "name", group: "/", values: [fullName] },
    emailAttribute(address, random),
    { name: "cn", group: "/", values: [fullName] },
    {
      name: "affiliation",
      group: "/",
      values: random() < 0.2
        ? [pick(AFFILIATIONS, random), pick(AFFILIATIONS, random)]
        : [pick(AFFILIATIONS, random)],
    },
    {
      name: "sys:LastAuthentication",
      group: "/",
      values: [isoSeconds(now - Math.round(random() * 400 * DAY))],
    },
    { name: "sys:CredentialRequirements", group: "/", values: ["sys:all"] },
    roleAttribute(random),
  ];
  return [...attributes, ...subgroupAttributes(fullName, groups, random)];
}

/** Both encodings occur in real deployments. */
function emailAttribute(address: string, random: () => number): SimAttribute {
  const draw = random();
  if (draw < 0.45) {
    return {
      name: "email",
      group: "/",
      values: [address],
      syntax: "verifiableEmail",
    };
  }
  if (draw < 0.6) {
    return {
      name: "email",
      group: "/",
      values: [{
        value: address,
        confirmationData: {
          confirmed: false,
          confirmationDate: 0,
          sentRequestAmount: 1,
        },
        tags: [],
      }, address.replace("@example.org", "@home.example")],
      syntax: "verifiableEmail",
    };
  }
  return { name: "email", group: "/", values: [address] };
}

/** Direct for some; for the rest it comes from the root group's statement. */
function roleAttribute(random: () => number): SimAttribute {
  const direct = random() < 0.3;
  return {
    name: "sys:AuthorizationRole",
    group: "/",
    values: ["Regular User"],
    syntax: "enumeration",
    ...(direct ? {} : { direct: false }),
  };
}

function subgroupAttributes(
  fullName: string,
  groups: string[],
  random: () => number,
): SimAttribute[] {
  const attributes: SimAttribute[] = [];
  const inGroup = (prefix: string) => groups.some((g) => g.startsWith(prefix));
  if (inGroup("/eudat")) {
    // /eudat copies the name down with a statement (eattr['name']).
    attributes.push({
      name: "name",
      group: "/eudat",
      values: [fullName],
      direct: false,
    });
    if (random() < 0.5) {
      attributes.push({ name: "cn", group: "/eudat", values: [fullName] });
    }
  }
  if (inGroup("/eudat/b2drop")) {
    attributes.push({
      name: "quota",
      group: "/eudat/b2drop",
      values: [10 * 1024 ** 3],
      syntax: "integer",
    });
  }
  if (inGroup("/projects/x")) {
    attributes.push({
      name: "projectRole",
      group: "/projects/x",
      values: [inGroup("/projects/x/admins") ? "manager" : "member"],
      syntax: "enumeration",
    });
  }
  return attributes;
}

/**
 * Adds `members` uniform people for the benchmark: each in "/", "/projects"
 * and `groupsPerEntity` (default 2) of 50 groups "/projects/pNN", with
 * `attributesPerEntity` (default 8) attributes, and a `disabledShare`
 * (default 0.02) of them disabled without a schedule.
 *
 * @example
 * ```ts
 * const sim = await UnitySim.start();
 * const { disabledUnscheduled } = seedBench(sim, { members: 100_000 });
 * ```
 */
export function seedBench(
  sim: UnitySim,
  opts: {
    members: number;
    disabledShare?: number;
    attributesPerEntity?: number;
    groupsPerEntity?: number;
    seed?: number;
  },
): { disabledUnscheduled: number[] } {
  const random = mulberry32(opts.seed ?? 4242);
  const projects = Array.from(
    { length: 50 },
    (_, i) => `/projects/p${String(i).padStart(2, "0")}`,
  );
  for (const group of projects) sim.addGroup(group);
  const disabled = new Set(
    shuffle(Array.from({ length: opts.members }, (_, i) => i), random)
      .slice(0, Math.round(opts.members * (opts.disabledShare ?? 0.02))),
  );
  const lastLogin = isoSeconds(sim.now() - 30 * DAY);

  const disabledUnscheduled: number[] = [];
  for (let i = 0; i < opts.members; i++) {
    const groups = pickDistinct(projects, opts.groupsPerEntity ?? 2, random);
    const id = sim.addEntity({
      state: disabled.has(i) ? "disabled" : "valid",
      otherIdentities: [{ typeId: "userName", value: `user${i}` }],
      groups,
      attributes: benchAttributes(
        i,
        groups[0] ?? "/",
        opts.attributesPerEntity ?? 8,
        lastLogin,
      ),
    });
    if (disabled.has(i)) disabledUnscheduled.push(id);
  }
  return { disabledUnscheduled };
}

function benchAttributes(
  index: number,
  firstGroup: string,
  count: number,
  lastLogin: string,
): SimAttribute[] {
  const name = `User ${index}`;
  const all: SimAttribute[] = [
    { name: "name", group: "/", values: [name] },
    {
      name: "email",
      group: "/",
      values: [`user${index}@example.org`],
      syntax: "verifiableEmail",
    },
    { name: "cn", group: "/", values: [name] },
    { name: "affiliation", group: "/", values: ["member@example.org"] },
    { name: "sys:LastAuthentication", group: "/", values: [lastLogin] },
    { name: "sys:CredentialRequirements", group: "/", values: ["sys:all"] },
    {
      name: "sys:AuthorizationRole",
      group: "/",
      values: ["Regular User"],
      syntax: "enumeration",
    },
  ];
  for (let extra = 0; all.length < count; extra++) {
    all.push({
      name: `projectAttr${extra}`,
      group: firstGroup,
      values: [`value ${index}/${extra}`],
    });
  }
  return all.slice(0, count);
}

function pick<T>(items: readonly T[], random: () => number): T {
  return items[Math.floor(random() * items.length)]!;
}

function pickDistinct(
  items: readonly string[],
  count: number,
  random: () => number,
): string[] {
  const chosen = new Set<string>();
  const wanted = Math.min(count, items.length);
  for (let tries = 0; chosen.size < wanted && tries < 10 * wanted; tries++) {
    chosen.add(pick(items, random));
  }
  return [...chosen];
}

function shuffle<T>(items: T[], random: () => number): T[] {
  for (let i = items.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [items[i], items[j]] = [items[j]!, items[i]!];
  }
  return items;
}

/** A login-safe form of a name: "Żółkiewski" becomes "zolkiewski". */
function ascii(name: string): string {
  return name
    .replaceAll("ł", "l").replaceAll("Ł", "L")
    .replaceAll("ø", "o").replaceAll("Ø", "O")
    .replaceAll("ı", "i").replaceAll("ß", "ss")
    .normalize("NFD")
    .replace(/[^A-Za-z]/g, "")
    .toLowerCase();
}

/** sys:LastAuthentication's format: "2017-04-03T22:18:34". */
function isoSeconds(epochMs: number): string {
  return new Date(epochMs).toISOString().slice(0, 19);
}

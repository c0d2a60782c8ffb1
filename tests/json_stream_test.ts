/**
 * Tests of the streaming JSON array reader: chunk boundaries anywhere,
 * strings that look like structure, nesting, and clear errors for anything
 * that is not one whole JSON array.
 */

import assert from "node:assert/strict";
import { jsonArrayElements, JsonStreamError } from "../src/json_stream.ts";

const encoder = new TextEncoder();

async function* chunked(
  bytes: Uint8Array,
  cuts: readonly number[],
): AsyncGenerator<Uint8Array> {
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    yield bytes.slice(start, cut);
    start = cut;
  }
}

async function collect(
  chunks: AsyncIterable<Uint8Array>,
): Promise<unknown[]> {
  const elements: unknown[] = [];
  for await (const element of jsonArrayElements(chunks)) {
    elements.push(element);
  }
  return elements;
}

function read(text: string, cuts: readonly number[] = []): Promise<unknown[]> {
  return collect(chunked(encoder.encode(text), cuts));
}

async function readError(text: string): Promise<JsonStreamError> {
  try {
    await read(text);
  } catch (error) {
    assert.ok(error instanceof JsonStreamError, String(error));
    return error;
  }
  assert.fail(`no error for ${JSON.stringify(text)}`);
}

/** Strings full of what a naive splitter would take for structure. */
const TRICKY = [
  {
    group: "/",
    entity: { entityInformation: { entityId: 2, state: "valid" } },
  },
  'a "quoted" [bracket], {brace}: and \\ backslash \\"',
  "ends with a backslash \\",
  '\\\\\\"',
  [[1, [2, [3, []]]], {}, { "k]": "v}", "[": [",", "]"] }],
  "Zoë Ångström 😀 \u0000 \u2028",
  -1.5e-7,
  true,
  false,
  null,
  "",
  [],
  {},
];

Deno.test("yields every element whatever chunk boundary splits the body", async () => {
  const text = JSON.stringify(TRICKY);
  const bytes = encoder.encode(text);
  for (let cut = 0; cut <= bytes.length; cut++) {
    assert.deepEqual(
      await collect(chunked(bytes, [cut])),
      TRICKY,
      `split at byte ${cut}`,
    );
  }
});

Deno.test("reads a body that arrives one byte at a time", async () => {
  const text = JSON.stringify(TRICKY, null, 2);
  const bytes = encoder.encode(text);
  const cuts = Array.from({ length: bytes.length - 1 }, (_, i) => i + 1);
  assert.deepEqual(await collect(chunked(bytes, cuts)), TRICKY);
});

Deno.test("splits inside a multi-byte character and inside an escape", async () => {
  const text = JSON.stringify(["Łukasz 😀", 'say \\"hi\\"']);
  const bytes = encoder.encode(text);
  const emoji = bytes.indexOf(0xf0);
  assert.deepEqual(
    await collect(chunked(bytes, [emoji + 1, emoji + 2, emoji + 3])),
    ["Łukasz 😀", 'say \\"hi\\"'],
  );
});

Deno.test("accepts an empty array and whitespace around and between elements", async () => {
  assert.deepEqual(await read("[]"), []);
  assert.deepEqual(await read(" \r\n\t[ \n ] \n"), []);
  assert.deepEqual(await read('[ 1 ,\n"a" , [ ] ]'), [1, "a", []]);
});

Deno.test("gives each element as JSON.parse would, in order", async () => {
  const members = Array.from({ length: 50 }, (_, i) => ({
    group: "/",
    entity: { entityInformation: { entityId: i + 2, state: "disabled" } },
    attributes: [{ name: "cn", values: [`User ${i}`] }],
  }));
  const text = JSON.stringify(members);
  assert.deepEqual(await read(text, [7, 300, 301, 2000]), JSON.parse(text));
});

Deno.test("reports an array cut short at any byte as truncated", async () => {
  const text = JSON.stringify(TRICKY);
  for (let end = 1; end < text.length; end++) {
    const error = await readError(text.slice(0, end));
    assert.match(error.message, /cut short|not valid JSON/, `cut at ${end}`);
  }
  const error = await readError('[{"a":1},{"b":');
  assert.match(
    error.message,
    /^Cannot read the JSON array: the array is cut short after 1 complete element \(at byte 14\)$/,
  );
  assert.equal(error.offset, 14);
});

Deno.test("says what it found when the body is not an array", async () => {
  assert.match(
    (await readError('{"members": []}')).message,
    /expected a JSON array, found "\{" \(at byte 0\)/,
  );
  assert.match(
    (await readError("<html><body>Bad Gateway</body></html>")).message,
    /expected a JSON array, found "<"/,
  );
  assert.match((await readError("")).message, /the body is empty/);
  assert.match((await readError(" \n")).message, /the body is blank/);
  assert.match(
    (await readError("[1] [2]")).message,
    /unexpected "\[" after the end of the array \(at byte 4\)/,
  );
});

Deno.test("rejects malformed elements and separators", async () => {
  assert.match((await readError("[1,]")).message, /expected a value before ]/);
  assert.match((await readError("[,1]")).message, /expected a value before ,/);
  assert.match((await readError("[1,,2]")).message, /expected a value/);
  assert.match((await readError("[1 2]")).message, /element 0 is not valid/);
  assert.match((await readError("[{]}")).message, /unexpected "}"/);
  assert.match((await readError('[{"a" 1}]')).message, /element 0 is not/);
  assert.match((await readError("[[1}, 2]")).message, /element 0 is not/);
  assert.match((await readError("[tru]")).message, /starts "tru"/);
});

Deno.test("stops reading the source when the reader stops early", async () => {
  let closed = false;
  let pulled = 0;
  async function* source(): AsyncGenerator<Uint8Array> {
    try {
      for (let i = 0;; i++) {
        pulled++;
        yield encoder.encode(i === 0 ? "[1" : ",1");
      }
    } finally {
      closed = true;
    }
  }
  for await (const element of jsonArrayElements(source())) {
    assert.equal(element, 1);
    break;
  }
  assert.ok(closed, "the source was closed");
  assert.ok(pulled <= 3, `pulled ${pulled} chunks`);
});

/**
 * Reads a JSON array from a stream of bytes and yields its elements one at a
 * time, each parsed with `JSON.parse`, so an answer of hundreds of megabytes
 * is never held whole: only the element being read is in memory. Writes
 * nothing.
 */

/** The bytes are not one well-formed JSON array. */
export class JsonStreamError extends SyntaxError {
  constructor(
    message: string,
    /** Bytes read before the problem was found. */
    readonly offset: number,
  ) {
    super(message);
    this.name = "JsonStreamError";
  }
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;

type Phase = "before" | "inside" | "after";

/**
 * Yields the elements of the JSON array that `chunks` spell out, in order.
 * Chunk boundaries may fall anywhere, even inside a multi-byte character.
 *
 * @throws {JsonStreamError} when the bytes are not one JSON array: another
 * value, a malformed element, or an array cut short.
 * @example
 * ```ts
 * for await (const member of jsonArrayElements(response.body!)) {
 *   console.log(member);
 * }
 * ```
 */
export async function* jsonArrayElements(
  chunks: AsyncIterable<Uint8Array>,
): AsyncGenerator<unknown, void, undefined> {
  const scanner = new ArrayScanner();
  for await (const chunk of chunks) {
    yield* scanner.push(chunk);
  }
  scanner.end();
}

/**
 * Splits the array into elements by tracking nesting and strings, byte by
 * byte: every byte that matters ( `"` `\` `,` brackets) is ASCII, and no
 * byte of a multi-byte UTF-8 character is. `JSON.parse` then checks each
 * element, so a sequence accepted here is valid JSON.
 */
class ArrayScanner {
  #phase: Phase = "before";
  /** Nesting inside the array: 0 between elements. */
  #depth = 0;
  #inString = false;
  #escaped = false;
  /** Pieces of the element being read; it may span chunks. */
  #pieces: Uint8Array[] = [];
  #hasContent = false;
  #count = 0;
  #offset = 0;
  readonly #decoder = new TextDecoder();

  *push(chunk: Uint8Array): Generator<unknown, void, undefined> {
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const byte = chunk[i]!;
      if (this.#phase !== "inside") {
        this.#outside(byte, this.#offset + i);
        start = i + 1;
        continue;
      }
      if (this.#inString) {
        const end = this.#stringEnd(chunk, i);
        this.#inString = end < 0;
        i = end < 0 ? chunk.length : end;
        continue;
      }
      if (this.#depth === 0 && (byte === COMMA || byte === CLOSE_ARRAY)) {
        this.#pieces.push(chunk.subarray(start, i));
        start = i + 1;
        const element = this.#element(this.#offset + i, byte === CLOSE_ARRAY);
        if (element.present) yield element.value;
        if (byte === CLOSE_ARRAY) this.#phase = "after";
        continue;
      }
      if (!isWhitespace(byte)) this.#hasContent = true;
      if (byte === QUOTE) this.#inString = true;
      else if (byte === OPEN_ARRAY || byte === OPEN_OBJECT) this.#depth++;
      else if (byte === CLOSE_ARRAY || byte === CLOSE_OBJECT) {
        if (this.#depth === 0) {
          throw this.#error(`unexpected "}"`, this.#offset + i);
        }
        this.#depth--;
      }
    }
    if (this.#phase === "inside" && start < chunk.length) {
      // A copy: the stream may reuse the chunk's buffer for the next one
      // (and a Node Buffer's slice() would only be a view).
      this.#pieces.push(new Uint8Array(chunk.subarray(start)));
    }
    this.#offset += chunk.length;
  }

  /**
   * Where the string that continues at `from` closes in `chunk`, or -1 when
   * it runs past the chunk. Jumps from quote to quote: a quote is escaped
   * when an odd run of backslashes precedes it.
   */
  #stringEnd(chunk: Uint8Array, from: number): number {
    if (this.#escaped) {
      this.#escaped = false;
      from++;
    }
    for (let quote = chunk.indexOf(QUOTE, from); quote >= 0;) {
      if (backslashesBefore(chunk, quote, from) % 2 === 0) return quote;
      quote = chunk.indexOf(QUOTE, quote + 1);
    }
    this.#escaped = backslashesBefore(chunk, chunk.length, from) % 2 === 1;
    return -1;
  }

  /** Checks that the array was closed. */
  end(): void {
    if (this.#phase === "after") return;
    if (this.#phase === "before") {
      throw this.#error(
        this.#offset === 0 ? "the body is empty" : "the body is blank",
        this.#offset,
      );
    }
    throw this.#error(
      `the array is cut short after ${this.#count} complete element${
        this.#count === 1 ? "" : "s"
      }`,
      this.#offset,
    );
  }

  /** Before "[" and after "]": only whitespace may surround the array. */
  #outside(byte: number, at: number): void {
    if (isWhitespace(byte)) return;
    if (this.#phase === "before" && byte === OPEN_ARRAY) {
      this.#phase = "inside";
      return;
    }
    throw this.#error(
      this.#phase === "before"
        ? `expected a JSON array, found ${describe(byte)}`
        : `unexpected ${describe(byte)} after the end of the array`,
      at,
    );
  }

  /** Parses the element that just ended; "[]" has none to parse. */
  #element(
    at: number,
    closing: boolean,
  ): { present: false } | { present: true; value: unknown } {
    const pieces = this.#pieces;
    const hasContent = this.#hasContent;
    this.#pieces = [];
    this.#hasContent = false;
    if (!hasContent) {
      if (closing && this.#count === 0) return { present: false };
      throw this.#error(`expected a value before ${closing ? "]" : ","}`, at);
    }
    const text = this.#decoder.decode(join(pieces));
    try {
      const value = JSON.parse(text);
      this.#count++;
      return { present: true, value };
    } catch (error) {
      throw this.#error(
        `element ${this.#count} is not valid JSON (${
          (error as Error).message
        }; it starts ${JSON.stringify(text.trim().slice(0, 40))})`,
        at,
      );
    }
  }

  #error(reason: string, at: number): JsonStreamError {
    return new JsonStreamError(
      `Cannot read the JSON array: ${reason} (at byte ${at})`,
      at,
    );
  }
}

/** The run of backslashes that ends just before `at`, not looking before `from`. */
function backslashesBefore(
  chunk: Uint8Array,
  at: number,
  from: number,
): number {
  let count = 0;
  while (at - count - 1 >= from && chunk[at - count - 1] === BACKSLASH) {
    count++;
  }
  return count;
}

function isWhitespace(byte: number): boolean {
  return byte === 0x20 || byte === 0x0a || byte === 0x0d || byte === 0x09;
}

function describe(byte: number): string {
  return byte >= 0x20 && byte < 0x7f
    ? JSON.stringify(String.fromCharCode(byte))
    : `byte 0x${byte.toString(16).padStart(2, "0")}`;
}

function join(pieces: readonly Uint8Array[]): Uint8Array {
  if (pieces.length === 1) return pieces[0]!;
  let length = 0;
  for (const piece of pieces) length += piece.length;
  const whole = new Uint8Array(length);
  let at = 0;
  for (const piece of pieces) {
    whole.set(piece, at);
    at += piece.length;
  }
  return whole;
}

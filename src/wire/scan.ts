/**
 * A bounds check of MessagePack bytes from the network, run before msgpackr builds any object.
 *
 * msgpackr is fast and renames `__proto__` keys, but it also decodes its own extensions (records,
 * structured-clone references, Error, RegExp, Set, typed arrays, bundled strings) whatever the
 * options, recurses once per nesting level, and trusts lengths until it reads past the end.
 * Walking the tokens first, without recursion or allocation, makes the decoder safe by construction:
 * every length fits in the bytes that follow, nesting is capped, and the only extensions are the two
 * our encoder writes (timestamp -1 for Date, msgpackr's fixext 0 for `undefined`). It skips string
 * and bin payloads by length, so a relay envelope costs a handful of steps whatever it carries.
 */

/** Deepest nesting of arrays and maps accepted from the network. */
export const MAX_DEPTH = 64;

export class WireFormatError extends Error {
  override name = 'WireFormatError';
}

// The check is synchronous and never re-entered, so one stack serves every call at the default depth.
const STACK = new Float64Array(MAX_DEPTH);
const TIMESTAMP = 0xff; // extension type -1
const UNDEFINED = 0x00;

/** Throws WireFormatError unless `b` is a sequence of complete MessagePack values we accept. */
export function checkMessagePack(b: Uint8Array, maxDepth = MAX_DEPTH): void {
  const end = b.length;
  let pos = 0;
  // Items still to read in each open array or map; the top level (-1) reads until the bytes end.
  const stack = maxDepth === MAX_DEPTH ? STACK : new Float64Array(maxDepth);
  let depth = 0;
  let left = -1;
  for (;;) {
    if (left === 0) {
      left = stack[--depth]!;
      continue;
    }
    if (pos >= end) {
      if (depth === 0) return;
      throw new WireFormatError(`truncated MessagePack: ${left} more items expected at offset ${pos}`);
    }
    const t = b[pos++]!;
    if (left > 0) left--;
    let items = 0;
    let skip = 0;
    if (t <= 0x7f || t >= 0xe0) {
      // fixint
    } else if (t <= 0x8f) items = (t & 0x0f) * 2;
    else if (t <= 0x9f) items = t & 0x0f;
    else if (t <= 0xbf) skip = t & 0x1f;
    else {
      switch (t) {
        case 0xc0:
        case 0xc2:
        case 0xc3:
          break;
        case 0xcc:
        case 0xd0:
          skip = 1;
          break;
        case 0xcd:
        case 0xd1:
          skip = 2;
          break;
        case 0xca:
        case 0xce:
        case 0xd2:
          skip = 4;
          break;
        case 0xcb:
        case 0xcf:
        case 0xd3:
          skip = 8;
          break;
        case 0xc4:
        case 0xd9:
          if (end - pos < 1) throw truncated(1, pos, end);
          skip = b[pos++]!;
          break;
        case 0xc5:
        case 0xda:
          if (end - pos < 2) throw truncated(2, pos, end);
          skip = (b[pos]! << 8) | b[pos + 1]!;
          pos += 2;
          break;
        case 0xc6:
        case 0xdb:
          if (end - pos < 4) throw truncated(4, pos, end);
          skip = u32(b, pos);
          pos += 4;
          break;
        case 0xdc:
          if (end - pos < 2) throw truncated(2, pos, end);
          items = (b[pos]! << 8) | b[pos + 1]!;
          pos += 2;
          break;
        case 0xdd:
          if (end - pos < 4) throw truncated(4, pos, end);
          items = u32(b, pos);
          pos += 4;
          break;
        case 0xde:
          if (end - pos < 2) throw truncated(2, pos, end);
          items = ((b[pos]! << 8) | b[pos + 1]!) * 2;
          pos += 2;
          break;
        case 0xdf:
          if (end - pos < 4) throw truncated(4, pos, end);
          items = u32(b, pos) * 2;
          pos += 4;
          break;
        case 0xd4: // fixext 1: msgpackr's undefined, or its invalid Date
          if (end - pos < 2) throw truncated(2, pos, end);
          if (b[pos] !== UNDEFINED && b[pos] !== TIMESTAMP) throw badExtension(b[pos]!, 'fixext 1');
          skip = 2;
          break;
        case 0xd6: // fixext 4 and 8: timestamp 32 and 64
        case 0xd7:
          if (end - pos < 1) throw truncated(1, pos, end);
          if (b[pos] !== TIMESTAMP) throw badExtension(b[pos]!, t === 0xd6 ? 'fixext 4' : 'fixext 8');
          skip = 1 + (t === 0xd6 ? 4 : 8);
          break;
        case 0xc7: // ext 8: only timestamp 96
          if (end - pos < 2) throw truncated(2, pos, end);
          if (b[pos + 1] !== TIMESTAMP || b[pos] !== 12) throw badExtension(b[pos + 1]!, `ext 8 of ${b[pos]!}`);
          skip = 2 + 12;
          break;
        case 0xd5:
        case 0xd8:
        case 0xc8:
        case 0xc9: {
          const at = pos + (t === 0xd5 || t === 0xd8 ? 0 : t === 0xc8 ? 2 : 4);
          if (at >= end) throw truncated(at - pos + 1, pos, end);
          throw badExtension(b[at]!, t === 0xd5 ? 'fixext 2' : t === 0xd8 ? 'fixext 16' : t === 0xc8 ? 'ext 16' : 'ext 32');
        }
        default: // 0xc1 is never used
          throw new WireFormatError(`invalid MessagePack byte 0x${t.toString(16)} at offset ${pos - 1}`);
      }
    }
    if (skip > end - pos) throw truncated(skip, pos, end);
    pos += skip;
    if (items > 0) {
      // Every item takes at least one byte: a count the bytes cannot hold is refused before msgpackr allocates for it.
      if (items > end - pos) throw new WireFormatError(`MessagePack container of ${items} items at offset ${pos} is longer than the ${end - pos} bytes left`);
      if (depth >= maxDepth) throw new WireFormatError(`MessagePack nested deeper than ${maxDepth} levels`);
      stack[depth++] = left;
      left = items;
    }
  }
}

function truncated(k: number, pos: number, end: number): WireFormatError {
  return new WireFormatError(`truncated MessagePack: ${k} bytes needed at offset ${pos}, ${end - pos} left`);
}

function u32(b: Uint8Array, pos: number): number {
  return ((b[pos]! << 24) | (b[pos + 1]! << 16) | (b[pos + 2]! << 8) | b[pos + 3]!) >>> 0;
}

/**
 * The one rule for extensions, said in every refusal: what is accepted is the two forms our encoder
 * writes, type -1 (timestamp 32, 64 and 96, and msgpackr's fixext 1 for an invalid Date) and type 0
 * in fixext 1 (msgpackr's `undefined`). The rule comes first so that it survives a close reason's
 * 123 bytes after "invalid MessagePack: ".
 */
export const EXTENSION_RULE = 'extensions accepted: -1 in fixext 1/4/8 or ext 8 of 12 bytes, 0 in fixext 1';

function badExtension(type: number, form: string): WireFormatError {
  const signed = type > 127 ? type - 256 : type;
  return new WireFormatError(`${EXTENSION_RULE}; got type ${signed} in ${form}`);
}

import { checkMessagePack, WireFormatError } from './scan.js';

/**
 * Reading a MessagePack-RPC envelope without decoding what it carries. The relay's MessagePack-RPC
 * port and the node's `--forward` need the message type, the msgid, the method and where params or
 * result start; the params and the result themselves pass through as the bytes they came in.
 *
 * Only the plain encodings that real peers write are read here (a positive integer in one of its
 * unsigned forms, a str of ASCII). Anything else returns {@link OTHER}, and the caller decodes that one
 * element with msgpackr to decide exactly as a full decode would have.
 */

/** Returned by the readers for an element in a form they do not read; the position does not move. */
export const OTHER = -1;

export class EnvelopeReader {
  private b: Buffer = EMPTY;
  /** Next byte to read. */
  pos = 0;

  /** Starts reading one framed value (framer.ts) from its first byte. */
  reset(bytes: Buffer): this {
    this.b = bytes;
    this.pos = 0;
    return this;
  }

  /** The element at `pos` as its own bytes, and `pos` moved past it. */
  element(): Buffer {
    const start = this.pos;
    this.pos = skipValue(this.b, start);
    return this.b.subarray(start, this.pos);
  }

  /** What follows `pos`: the last element of a framed array, without walking it. */
  rest(): Buffer {
    return this.b.subarray(this.pos);
  }

  /** The length of an array header at `pos`, moving past the header; OTHER for any other type. */
  arrayLength(): number {
    const b = this.b;
    const t = b[this.pos];
    if (t === undefined) return OTHER;
    if (t >= 0x90 && t <= 0x9f) {
      this.pos += 1;
      return t & 0x0f;
    }
    if (t === 0xdc && this.pos + 3 <= b.length) {
      this.pos += 3;
      return (b[this.pos - 2]! << 8) | b[this.pos - 1]!;
    }
    if (t === 0xdd && this.pos + 5 <= b.length) {
      this.pos += 5;
      return u32(b, this.pos - 4);
    }
    return OTHER;
  }

  /** True for an array header at `pos` (without moving). */
  atArray(): boolean {
    const t = this.b[this.pos];
    return t !== undefined && ((t >= 0x90 && t <= 0x9f) || t === 0xdc || t === 0xdd);
  }

  /** True for nil at `pos`, moving past it. */
  nil(): boolean {
    if (this.b[this.pos] !== 0xc0) return false;
    this.pos++;
    return true;
  }

  /** A non-negative integer below 2³² written as fixint, uint8, uint16 or uint32; OTHER otherwise. */
  uint(): number {
    const b = this.b;
    const at = this.pos;
    const t = b[at];
    if (t === undefined) return OTHER;
    if (t <= 0x7f) {
      this.pos = at + 1;
      return t;
    }
    if (t === 0xcc && at + 2 <= b.length) {
      this.pos = at + 2;
      return b[at + 1]!;
    }
    if (t === 0xcd && at + 3 <= b.length) {
      this.pos = at + 3;
      return (b[at + 1]! << 8) | b[at + 2]!;
    }
    if (t === 0xce && at + 5 <= b.length) {
      this.pos = at + 5;
      return u32(b, at + 1);
    }
    return OTHER;
  }

  /** A str of ASCII characters (what method names are); undefined for anything else, `pos` unmoved. */
  ascii(): string | undefined {
    const b = this.b;
    const at = this.pos;
    const t = b[at];
    let start: number;
    let length: number;
    if (t === undefined) return undefined;
    if (t >= 0xa0 && t <= 0xbf) {
      start = at + 1;
      length = t & 0x1f;
    } else if (t === 0xd9 && at + 2 <= b.length) {
      start = at + 2;
      length = b[at + 1]!;
    } else if (t === 0xda && at + 3 <= b.length) {
      start = at + 3;
      length = (b[at + 1]! << 8) | b[at + 2]!;
    } else return undefined;
    const end = start + length;
    if (end > b.length) return undefined;
    for (let i = start; i < end; i++) if (b[i]! > 0x7f) return undefined;
    this.pos = end;
    return b.toString('latin1', start, end);
  }
}

/**
 * The offset just past the MessagePack value that starts at `pos`. Walks headers only, with one
 * counter instead of a stack (nesting is bounded by whoever framed or checked the bytes); string,
 * bin and ext payloads are skipped by their length. Throws WireFormatError when the bytes end first
 * or hold the byte 0xc1.
 */
export function skipValue(b: Uint8Array, pos: number): number {
  const end = b.length;
  let left = 1;
  while (left > 0) {
    if (pos >= end) throw new WireFormatError(`truncated MessagePack: ${left} more values expected at offset ${pos}`);
    const t = b[pos++]!;
    left--;
    if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) continue;
    if (t <= 0x8f) {
      left += (t & 0x0f) * 2;
      continue;
    }
    if (t <= 0x9f) {
      left += t & 0x0f;
      continue;
    }
    if (t <= 0xbf) {
      pos += t & 0x1f;
      continue;
    }
    let n: number; // bytes of a length field
    switch (t) {
      case 0xcc:
      case 0xd0:
        pos += 1;
        continue;
      case 0xcd:
      case 0xd1:
        pos += 2;
        continue;
      case 0xca:
      case 0xce:
      case 0xd2:
        pos += 4;
        continue;
      case 0xcb:
      case 0xcf:
      case 0xd3:
        pos += 8;
        continue;
      case 0xd4:
        pos += 2;
        continue; // fixext: type byte plus 1, 2, 4, 8, 16 bytes
      case 0xd5:
        pos += 3;
        continue;
      case 0xd6:
        pos += 5;
        continue;
      case 0xd7:
        pos += 9;
        continue;
      case 0xd8:
        pos += 17;
        continue;
      case 0xc4:
      case 0xd9:
      case 0xc7:
        n = 1;
        break;
      case 0xc5:
      case 0xda:
      case 0xc8:
      case 0xdc:
      case 0xde:
        n = 2;
        break;
      default: // 0xc6, 0xdb, 0xc9, 0xdd, 0xdf, and 0xc1
        if (t === 0xc1) throw new WireFormatError(`invalid MessagePack byte 0xc1 at offset ${pos - 1}`);
        n = 4;
    }
    if (pos + n > end) throw new WireFormatError(`truncated MessagePack: ${n} bytes needed at offset ${pos}, ${end - pos} left`);
    const l = n === 1 ? b[pos]! : n === 2 ? (b[pos]! << 8) | b[pos + 1]! : u32(b, pos);
    pos += n;
    if (t === 0xdc || t === 0xdd) left += l;
    else if (t === 0xde || t === 0xdf) left += 2 * l;
    else pos += l + (t === 0xc7 || t === 0xc8 || t === 0xc9 ? 1 : 0); // ext: a type byte before the data
  }
  if (pos > end) throw new WireFormatError(`truncated MessagePack: the value needs ${pos} bytes, ${end} given`);
  return pos;
}

/**
 * Throws WireFormatError unless `b` is exactly one MessagePack value that the decoders accept
 * (scan.ts: no foreign extension, bounded nesting, lengths that fit): the check a value passed on
 * as bytes gets instead of a decode.
 */
export function checkOneValue(b: Uint8Array): void {
  checkMessagePack(b);
  if (skipValue(b, 0) !== b.length) throw new WireFormatError('more than one MessagePack value where one was expected');
}

/** Bytes of the shortest MessagePack form of the unsigned integer `n` (below 2^32), as envelopes are written. */
export const uintSize = (n: number): number => (n < 0x80 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 5);

/** Writes `n` at `at` in the form {@link uintSize} counts; returns the position after it. */
export function writeUint(b: Buffer, at: number, n: number): number {
  if (n < 0x80) {
    b[at] = n;
    return at + 1;
  }
  if (n < 0x100) {
    b[at] = 0xcc;
    b[at + 1] = n;
    return at + 2;
  }
  if (n < 0x10000) {
    b[at] = 0xcd;
    return b.writeUInt16BE(n, at + 1);
  }
  b[at] = 0xce;
  return b.writeUInt32BE(n, at + 1);
}

const EMPTY = Buffer.alloc(0);

function u32(b: Uint8Array, pos: number): number {
  return ((b[pos]! << 24) | (b[pos + 1]! << 16) | (b[pos + 2]! << 8) | b[pos + 3]!) >>> 0;
}

import { ErrorCode, TunnelError } from '../errors.js';

/** Deepest nesting of arrays and maps accepted; deeper input would only exhaust the decoder's stack. */
export const MAX_DEPTH = 256;

/**
 * Splits a byte stream (TCP, Unix socket) into whole MessagePack values without decoding them.
 *
 * A stream has no message boundaries, so a value may arrive in many pieces. Re-decoding the buffered
 * bytes on every piece would cost O(n²) for a large value; instead this scanner reads only headers
 * and lengths, keeps its place between pieces, and hands out each value's bytes once complete, for
 * one real decode. Declared lengths are checked on arrival, so a header announcing 4 GiB is refused
 * before any of it is buffered.
 */
export class MessagePackFramer {
  private buf: Buffer = Buffer.alloc(0);
  private start = 0; // first byte of the value being scanned
  private end = 0; // bytes held
  private scan = 0; // next header to read; may point past `end` while a payload is still arriving
  private readonly open: number[] = []; // items still due in each open array or map
  private complete = false; // a whole value ends at `scan`

  /** @param maxValue largest value accepted, bytes; a bigger one is a TOO_LARGE error. */
  constructor(private readonly maxValue: number) {}

  /** Bytes held that belong to no complete value yet. */
  get buffered(): number {
    return this.end - this.start;
  }

  /**
   * Adds bytes and returns the complete values now available, each as its own slice. Throws a
   * TunnelError (TOO_LARGE or PROTOCOL_ERROR) when the stream cannot be valid; the stream is then
   * unusable and the connection should close.
   */
  push(chunk: Uint8Array): Buffer[] {
    this.append(chunk);
    const out: Buffer[] = [];
    for (;;) {
      if (this.complete) {
        if (this.scan > this.end) break; // the last payload is still arriving
        out.push(Buffer.from(this.buf.subarray(this.start, this.scan)));
        this.start = this.scan;
        this.complete = false;
      }
      if (this.scan >= this.end) break;
      const size = this.header(this.scan);
      if (size === undefined) break; // the header itself is split; wait for its remaining bytes
      this.scan += size.bytes;
      if (this.scan - this.start > this.maxValue) this.tooLarge(this.scan - this.start);
      if (size.items === 0) {
        this.complete = this.itemDone();
        continue;
      }
      if (this.open.length === MAX_DEPTH) {
        throw new TunnelError(ErrorCode.PROTOCOL_ERROR, `MessagePack value is nested deeper than ${MAX_DEPTH} levels`);
      }
      // Every item takes at least one byte: a count beyond the size limit can never be satisfied.
      if (this.scan - this.start + size.items > this.maxValue) this.tooLarge(this.scan - this.start + size.items);
      this.open.push(size.items);
    }
    if (this.start === this.end) this.start = this.end = this.scan = 0;
    return out;
  }

  /** Marks one item finished; true when that finished a whole top-level value. */
  private itemDone(): boolean {
    const open = this.open;
    while (open.length > 0) {
      const last = open.length - 1;
      if (--open[last]! > 0) return false;
      open.pop();
    }
    return true;
  }

  private tooLarge(bytes: number): never {
    throw new TunnelError(ErrorCode.TOO_LARGE, `MessagePack value of at least ${bytes} bytes exceeds the limit of ${this.maxValue} bytes`);
  }

  private append(chunk: Uint8Array): void {
    const held = this.end - this.start;
    if (this.end + chunk.length > this.buf.length) {
      const need = held + chunk.length;
      // Grow geometrically so that a value arriving in many pieces is copied O(n) times in total.
      const next = need > this.buf.length ? Buffer.allocUnsafe(Math.max(need, this.buf.length * 2, 4096)) : this.buf;
      this.buf.copy(next, 0, this.start, this.end);
      this.buf = next;
      this.scan -= this.start;
      this.end = held;
      this.start = 0;
    }
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  /**
   * Size of the value whose header starts at `at`: header plus payload bytes, and the number of items
   * that follow (arrays and maps). Undefined when the header is not complete yet.
   */
  private header(at: number): { bytes: number; items: number } | undefined {
    const b = this.buf;
    const avail = this.end - at;
    const len = (n: number): number | undefined => {
      if (avail < 1 + n) return undefined;
      if (n === 1) return b[at + 1]!;
      if (n === 2) return b.readUInt16BE(at + 1);
      return b.readUInt32BE(at + 1);
    };
    const t = b[at]!;
    if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) return { bytes: 1, items: 0 };
    if (t <= 0x8f) return { bytes: 1, items: 2 * (t & 0x0f) };
    if (t <= 0x9f) return { bytes: 1, items: t & 0x0f };
    if (t <= 0xbf) return { bytes: 1 + (t & 0x1f), items: 0 };
    const payload = (n: number, extra = 0) => {
      const l = len(n);
      return l === undefined || avail < 1 + n + extra ? undefined : { bytes: 1 + n + extra + l, items: 0 };
    };
    const container = (n: number, perItem: number) => {
      const l = len(n);
      return l === undefined ? undefined : { bytes: 1 + n, items: l * perItem };
    };
    switch (t) {
      case 0xc4: case 0xd9: return payload(1); // bin8, str8
      case 0xc5: case 0xda: return payload(2); // bin16, str16
      case 0xc6: case 0xdb: return payload(4); // bin32, str32
      case 0xc7: return payload(1, 1); // ext8: length, type
      case 0xc8: return payload(2, 1);
      case 0xc9: return payload(4, 1);
      case 0xcc: case 0xd0: return { bytes: 2, items: 0 };
      case 0xcd: case 0xd1: return { bytes: 3, items: 0 };
      case 0xca: case 0xce: case 0xd2: return { bytes: 5, items: 0 };
      case 0xcb: case 0xcf: case 0xd3: return { bytes: 9, items: 0 };
      case 0xd4: return { bytes: 3, items: 0 }; // fixext 1, 2, 4, 8, 16: type byte plus data
      case 0xd5: return { bytes: 4, items: 0 };
      case 0xd6: return { bytes: 6, items: 0 };
      case 0xd7: return { bytes: 10, items: 0 };
      case 0xd8: return { bytes: 18, items: 0 };
      case 0xdc: return container(2, 1);
      case 0xdd: return container(4, 1);
      case 0xde: return container(2, 2);
      case 0xdf: return container(4, 2);
      default: // 0xc1 is the one byte MessagePack never uses
        throw new TunnelError(ErrorCode.PROTOCOL_ERROR, `invalid MessagePack: byte 0x${t.toString(16)} at offset ${at - this.start} of a value`);
    }
  }
}

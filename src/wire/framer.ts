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
  private size = 0; // of the last header read, with its payload
  private items = 0; // following the last header read

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
      if (!this.header(this.scan)) break; // the header itself is split; wait for its remaining bytes
      this.scan += this.size;
      if (this.scan - this.start > this.maxValue) this.tooLarge(this.scan - this.start);
      if (this.items === 0) {
        this.complete = this.itemDone();
        continue;
      }
      if (this.open.length === MAX_DEPTH) {
        throw new TunnelError(ErrorCode.PROTOCOL_ERROR, `MessagePack value is nested deeper than ${MAX_DEPTH} levels`);
      }
      // Every item takes at least one byte: a count beyond the size limit can never be satisfied.
      if (this.scan - this.start + this.items > this.maxValue) this.tooLarge(this.scan - this.start + this.items);
      this.open.push(this.items);
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
   * Reads the header at `at` into `size` (header plus payload bytes) and `items` (what follows, for
   * arrays and maps). False when the header is not complete yet. Fields instead of a returned object:
   * this runs for every value in the stream.
   */
  private header(at: number): boolean {
    const b = this.buf;
    const avail = this.end - at;
    const t = b[at]!;
    this.items = 0;
    if (t <= 0x7f || t >= 0xe0 || t === 0xc0 || t === 0xc2 || t === 0xc3) {
      this.size = 1;
      return true;
    }
    if (t <= 0x9f) {
      this.size = 1;
      this.items = t <= 0x8f ? 2 * (t & 0x0f) : t & 0x0f;
      return true;
    }
    if (t <= 0xbf) {
      this.size = 1 + (t & 0x1f);
      return true;
    }
    switch (t) {
      case 0xc4:
      case 0xd9:
        return this.sized(at, avail, 1, 0, 0); // bin8, str8
      case 0xc5:
      case 0xda:
        return this.sized(at, avail, 2, 0, 0); // bin16, str16
      case 0xc6:
      case 0xdb:
        return this.sized(at, avail, 4, 0, 0); // bin32, str32
      case 0xc7:
        return this.sized(at, avail, 1, 1, 0); // ext8: length, then a type byte
      case 0xc8:
        return this.sized(at, avail, 2, 1, 0);
      case 0xc9:
        return this.sized(at, avail, 4, 1, 0);
      case 0xdc:
        return this.sized(at, avail, 2, 0, 1); // array16
      case 0xdd:
        return this.sized(at, avail, 4, 0, 1);
      case 0xde:
        return this.sized(at, avail, 2, 0, 2); // map16: two items per entry
      case 0xdf:
        return this.sized(at, avail, 4, 0, 2);
      case 0xcc:
      case 0xd0:
        this.size = 2;
        return true;
      case 0xcd:
      case 0xd1:
        this.size = 3;
        return true;
      case 0xca:
      case 0xce:
      case 0xd2:
        this.size = 5;
        return true;
      case 0xcb:
      case 0xcf:
      case 0xd3:
        this.size = 9;
        return true;
      case 0xd4:
        this.size = 3;
        return true; // fixext 1, 2, 4, 8, 16: a type byte plus data
      case 0xd5:
        this.size = 4;
        return true;
      case 0xd6:
        this.size = 6;
        return true;
      case 0xd7:
        this.size = 10;
        return true;
      case 0xd8:
        this.size = 18;
        return true;
      default: // 0xc1 is the one byte MessagePack never uses
        throw new TunnelError(ErrorCode.PROTOCOL_ERROR, `invalid MessagePack: byte 0x${t.toString(16)} at offset ${at - this.start} of a value`);
    }
  }

  /**
   * A header with an `n`-byte length: payload bytes for str, bin and ext (`extra` more for ext's type
   * byte), or a count of entries for arrays and maps (`perItem` items each).
   */
  private sized(at: number, avail: number, n: 1 | 2 | 4, extra: number, perItem: number): boolean {
    if (avail < 1 + n) return false;
    const b = this.buf;
    const l = n === 1 ? b[at + 1]! : n === 2 ? b.readUInt16BE(at + 1) : b.readUInt32BE(at + 1);
    if (perItem > 0) {
      this.size = 1 + n;
      this.items = l * perItem;
    } else {
      this.size = 1 + n + extra + l;
    }
    return true;
  }
}

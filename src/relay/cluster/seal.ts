import { createCipheriv, createDecipheriv, createHmac, createSecretKey, hkdfSync, randomBytes, type KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';

/**
 * What relays put on NATS is sealed with the cluster key: encrypted and authenticated (AES-256-GCM),
 * bound to the subject it was published on, numbered and timed so that a copy sent again is refused.
 * NATS carries the bytes; only a holder of the key can read them or make new ones (docs/CLUSTER.md,
 * "Security").
 *
 * A sealed message: `version (1) | sender salt (16) | sequence (8, big-endian) | time ms (8) |
 * ciphertext | tag (16)`. Each relay process draws a random salt and derives its own key from the
 * cluster key and that salt (HKDF-SHA256), so that the sequence number can be the GCM nonce: unique
 * per key by construction, never drawn at random across relays that share one secret.
 */

const VERSION = 1;
const SALT = 16;
const HEADER = 1 + SALT + 8 + 8;
const TAG = 16;
/** A message older than this, or this far in the future, is refused (relay clocks may differ this much). */
export const MAX_AGE = 60_000;
/** Sequence numbers below the highest seen that are still accepted once (messages reordered on the way). */
const WINDOW = 1_024;
/** Senders remembered; only key holders make senders, so this bounds relay processes, not attackers. */
const SENDERS = 1_024;
/** Shortest cluster key accepted, characters of the file. */
export const MIN_KEY = 32;

export type SealFailure = 'malformed' | 'forged' | 'replayed' | 'stale';

export class SealError extends Error {
  override name = 'SealError';
  constructor(
    readonly reason: SealFailure,
    message: string,
  ) {
    super(message);
  }
}

/**
 * Reads a cluster key file. Returns the secret and, when the file can be read by others than its
 * owner, a warning to log.
 */
export function readClusterKey(path: string): { key: Buffer; warning?: string } {
  let text: Buffer;
  try {
    text = readFileSync(path);
  } catch (err) {
    throw new TypeError(`cannot read the cluster key ${path}: ${(err as Error).message}`);
  }
  const key = Buffer.from(text.toString('utf8').trim(), 'utf8');
  if (key.length < MIN_KEY) {
    throw new TypeError(`the cluster key ${path} has ${key.length} characters; it needs at least ${MIN_KEY} (make one: openssl rand -hex 32 > ${path})`);
  }
  const mode = statSync(path).mode & 0o077;
  return mode !== 0
    ? { key, warning: `the cluster key ${path} can be read by other users (mode ${(statSync(path).mode & 0o777).toString(8)}); chmod 600 it` }
    : { key };
}

/** How cluster messages are wrapped for NATS: {@link ClusterSeal} with a key, {@link OpenSeal} without. */
export interface Seal {
  /** Messages are encrypted and authenticated. */
  readonly secure: boolean;
  /** The subject token of a relay process: its id, never in clear on NATS. */
  token(relayId: string): string;
  /** Wraps a message for `subject`. */
  seal(subject: string, plain: Uint8Array): Uint8Array;
  /** Unwraps a message that arrived on `subject`; throws {@link SealError}. */
  open(subject: string, data: Uint8Array): Uint8Array;
  /** The message was sealed by this process (our own presence, heard back): skipped unopened. */
  own(data: Uint8Array): boolean;
}

interface Sender {
  key: KeyObject;
  /** The first sequence heard from it: anything older was sent before we listened, and is refused. */
  floor: bigint;
  highest: bigint;
  /** Bit i: sequence `highest - i` was seen. */
  seen: Uint32Array;
}

export class ClusterSeal implements Seal {
  readonly secure = true;
  private readonly master: Buffer;
  private readonly tokenKey: Buffer;
  private readonly info: Buffer;
  private readonly salt = randomBytes(SALT);
  private readonly key: KeyObject;
  private seq = 0n;
  private readonly senders = new Map<string, Sender>();
  private readonly header = Buffer.alloc(HEADER);
  private readonly nonce = Buffer.alloc(12);

  /** `prefix` (the cluster's name) is mixed in: one key used by two clusters gives two sets of keys. */
  constructor(
    secret: Uint8Array,
    prefix: string,
    private readonly now: () => number = Date.now,
  ) {
    this.master = Buffer.from(secret);
    this.info = Buffer.from(`tunnel-rpc cluster ${prefix}`);
    this.tokenKey = Buffer.from(hkdfSync('sha256', this.master, Buffer.alloc(0), Buffer.from(`tunnel-rpc subjects ${prefix}`), 32));
    this.key = this.derive(this.salt);
    this.header[0] = VERSION;
    this.salt.copy(this.header, 1);
  }

  token(relayId: string): string {
    return createHmac('sha256', this.tokenKey).update(relayId).digest('hex').slice(0, 24);
  }

  seal(subject: string, plain: Uint8Array): Uint8Array {
    const seq = ++this.seq;
    this.header.writeBigUInt64BE(seq, 1 + SALT);
    this.header.writeBigUInt64BE(BigInt(this.now()), 1 + SALT + 8);
    this.nonce.writeBigUInt64BE(seq, 4);
    const cipher = createCipheriv('aes-256-gcm', this.key, this.nonce);
    cipher.setAAD(Buffer.concat([this.header, Buffer.from(subject)]));
    const out = Buffer.allocUnsafe(HEADER + plain.length + TAG);
    this.header.copy(out, 0);
    let at = HEADER + cipher.update(plain).copy(out, HEADER);
    at += cipher.final().copy(out, at);
    cipher.getAuthTag().copy(out, at);
    return out;
  }

  own(data: Uint8Array): boolean {
    return data.length >= HEADER && Buffer.from(data.buffer, data.byteOffset + 1, SALT).equals(this.salt);
  }

  open(subject: string, data: Uint8Array): Uint8Array {
    if (data.length < HEADER + TAG) throw new SealError('malformed', `a sealed cluster message has at least ${HEADER + TAG} bytes, not ${data.length}`);
    const buf = Buffer.from(data.buffer, data.byteOffset, data.length);
    if (buf[0] !== VERSION) throw new SealError('malformed', `unknown seal version ${buf[0]} (a relay without --cluster-key, or of another version?)`);
    const saltHex = buf.toString('hex', 1, 1 + SALT);
    const seq = buf.readBigUInt64BE(1 + SALT);
    const time = Number(buf.readBigUInt64BE(1 + SALT + 8));
    let sender = this.senders.get(saltHex);
    const key = sender?.key ?? this.derive(buf.subarray(1, 1 + SALT));
    this.nonce.writeBigUInt64BE(seq, 4);
    const decipher = createDecipheriv('aes-256-gcm', key, this.nonce);
    decipher.setAAD(Buffer.concat([buf.subarray(0, HEADER), Buffer.from(subject)]));
    decipher.setAuthTag(buf.subarray(buf.length - TAG));
    let plain: Buffer;
    try {
      plain = Buffer.concat([decipher.update(buf.subarray(HEADER, buf.length - TAG)), decipher.final()]);
    } catch {
      throw new SealError('forged', 'a cluster message failed authentication (not sealed with this cluster key, altered, or sent to another subject)');
    }
    const age = this.now() - time;
    if (age > MAX_AGE || age < -MAX_AGE) {
      throw new SealError(
        'stale',
        `a cluster message is ${Math.round(age / 1000)} s off this relay's clock (at most ${MAX_AGE / 1000} s): replayed, or the relays' clocks differ (check NTP)`,
      );
    }
    if (!sender) {
      sender = { key, floor: seq, highest: 0n, seen: new Uint32Array(WINDOW / 32) };
      if (this.senders.size >= SENDERS) this.senders.delete(this.senders.keys().next().value!);
      this.senders.set(saltHex, sender);
    }
    if (!accept(sender, seq)) throw new SealError('replayed', 'a cluster message was received twice (replayed, or duplicated on the way)');
    return plain;
  }

  private derive(salt: Uint8Array): KeyObject {
    return createSecretKey(Buffer.from(hkdfSync('sha256', this.master, salt, this.info, 32)));
  }
}

/** Marks `seq` seen for its sender; false when it was seen already or is older than the window. */
function accept(s: Sender, seq: bigint): boolean {
  if (seq < s.floor) return false;
  if (seq > s.highest) {
    const shift = seq - s.highest;
    if (shift >= BigInt(WINDOW)) s.seen.fill(0);
    else shiftBy(s.seen, Number(shift));
    s.highest = seq;
    s.seen[0]! |= 1;
    return true;
  }
  const back = Number(s.highest - seq);
  if (back >= WINDOW) return false;
  const word = back >>> 5;
  const bit = 1 << (back & 31);
  if ((s.seen[word]! & bit) !== 0) return false;
  s.seen[word]! |= bit;
  return true;
}

/** The window moves `n` sequence numbers on (0 < n < WINDOW): every bit `n` places older. */
function shiftBy(seen: Uint32Array, n: number): void {
  const words = n >>> 5;
  const bits = n & 31;
  for (let w = seen.length - 1; w >= 0; w--) {
    const hi = w - words >= 0 ? seen[w - words]! : 0;
    const lo = w - words - 1 >= 0 ? seen[w - words - 1]! : 0;
    seen[w] = bits === 0 ? hi : ((hi << bits) | (lo >>> (32 - bits))) >>> 0;
  }
}

/** No key (`--cluster-insecure`): messages in clear, subjects carry relay ids as they are. */
export class OpenSeal implements Seal {
  readonly secure = false;
  token(relayId: string): string {
    return relayId;
  }
  seal(_subject: string, plain: Uint8Array): Uint8Array {
    return plain;
  }
  open(_subject: string, data: Uint8Array): Uint8Array {
    return data;
  }
  own(): boolean {
    return false;
  }
}

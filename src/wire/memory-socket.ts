import { EventEmitter } from 'node:events';
import type { SocketLike } from './socket.js';

/**
 * A WebSocket whose peer is in the same process: {@link MemorySocket.pair} makes two, connected to
 * each other. Each has the part of ws's `WebSocket` that a Connection uses ({@link SocketLike}) and
 * behaves as ws does where a Connection can tell: what is sent arrives in order and later, never
 * during `send`; a message waits, counted in the sender's `bufferedAmount`, until the receiver reads
 * it, and the send callback runs then; pings are answered with pongs by the receiver; a close is a
 * handshake whose frame waits behind the messages sent before it; `terminate` drops what is not
 * written yet and the peer sees the connection end (1006) once it reads that far.
 *
 * There is no kernel buffer between the two: a byte is written when the peer reads it. Everything
 * is delivered on microtasks, one frame per microtask, so nothing depends on timers, and tests
 * with fake timers see the same order every run.
 *
 * For tests there are controls a real socket does not have: {@link stopReading} (a peer process
 * that does not read its socket) and {@link read} (one that reads slowly), {@link cutSilently} (a
 * half-open connection); text frames and bytes that are not MessagePack go through the ordinary `send`.
 *
 * Not modelled: the handshake (a pair is open from the start), extensions, fragmentation, ws's own
 * 30 s close timeout, and the kernel's buffers (bufferedAmount counts every unread byte).
 */
export class MemorySocket extends EventEmitter implements SocketLike {
  readonly CONNECTING = 0 as const;
  readonly OPEN = 1 as const;
  readonly CLOSING = 2 as const;
  readonly CLOSED = 3 as const;
  /** Messages are always delivered as Buffers, what a Connection asks for. */
  binaryType: 'nodebuffer' | 'arraybuffer' | 'fragments' = 'nodebuffer';

  private state: 0 | 1 | 2 | 3 = 1;
  private readonly inbound: Lane;
  private readonly outbound: Lane;
  private readonly link: { cut: boolean };
  private readonly maxPayload: number;
  private paused = false;
  private stopped = false;
  /** Message bytes that may still be read while stopped (see read). */
  private allowance = 0;
  private deliveryScheduled = false;
  private closeSent = false;
  private closeReceived: { code: number; reason: Buffer } | undefined;
  /** Stopped parsing what the peer sends (after a message over maxPayload), as ws does. */
  private discarding = false;
  private closeEmitted = false;

  /** Two sockets connected to each other. `maxPayload`: as ws's, bigger messages close 1009 (0: none). */
  static pair(options: MemorySocketOptions = {}): [MemorySocket, MemorySocket] {
    const ab = new Lane();
    const ba = new Lane();
    const link = { cut: false };
    const a = new MemorySocket(ba, ab, link, options);
    const b = new MemorySocket(ab, ba, link, options);
    ab.reader = b;
    ba.reader = a;
    return [a, b];
  }

  private constructor(inbound: Lane, outbound: Lane, link: { cut: boolean }, options: MemorySocketOptions) {
    super();
    this.inbound = inbound;
    this.outbound = outbound;
    this.link = link;
    this.maxPayload = options.maxPayload ?? 0;
  }

  get readyState(): 0 | 1 | 2 | 3 {
    return this.state;
  }

  /** Bytes of messages sent and not yet read by the peer. */
  get bufferedAmount(): number {
    return this.outbound.bytes;
  }

  get isPaused(): boolean {
    return this.paused;
  }

  /** Messages sent and not yet read by the peer. */
  get framesInFlight(): number {
    let n = 0;
    for (const f of this.outbound.frames) if (f.type === 'message') n++;
    return n;
  }

  /** A string is a text message unless `binary` says otherwise, anything else binary, as in ws. */
  send(data: Buffer | Uint8Array | string, options?: { binary?: boolean } | ((err?: Error) => void), cb?: (err?: Error) => void): void {
    if (typeof options === 'function') {
      cb = options;
      options = undefined;
    }
    const binary = options?.binary ?? typeof data !== 'string';
    if (this.state !== this.OPEN) {
      if (cb) {
        const err = new Error(`WebSocket is not open: readyState ${this.state}`);
        queueMicrotask(() => cb(err));
      }
      return;
    }
    // The receiver gets bytes of its own, as from a real socket.
    const bytes = Buffer.from(data);
    this.outbound.frames.push({ type: 'message', data: bytes, binary, cb });
    this.outbound.bytes += bytes.length;
    this.outbound.reader.schedule();
  }

  ping(data?: Buffer | string): void {
    this.control('ping', data);
  }

  pong(data?: Buffer | string): void {
    this.control('pong', data);
  }

  /** Starts the close handshake; ws's checks of the code and the reason's length are kept. */
  close(code?: number, reason: string | Buffer = ''): void {
    if (this.state === this.CLOSED) return;
    if (code !== undefined && !validCloseCode(code)) throw new TypeError('First argument must be a valid error code number');
    const bytes = Buffer.from(reason);
    if (bytes.length > 123) throw new RangeError('The message must not be greater than 123 bytes');
    if (this.state === this.CLOSING) return;
    this.state = this.CLOSING;
    this.closeSent = true;
    this.outbound.frames.push({ type: 'close', code: code ?? 1005, reason: bytes });
    this.outbound.reader.schedule();
    if (this.closeReceived) queueMicrotask(() => this.finish());
  }

  /** Drops the connection at once: what the peer has not read is lost, and it sees the end after what it read. */
  terminate(): void {
    if (this.state === this.CLOSED) return;
    this.state = this.CLOSING;
    this.outbound.dropAll(new Error('the socket was terminated before this was written'));
    this.outbound.frames.push({ type: 'end' });
    this.outbound.reader.schedule();
    queueMicrotask(() => this.finish());
  }

  pause(): void {
    if (this.state === this.CLOSED) return;
    this.paused = true;
  }

  resume(): void {
    if (this.state === this.CLOSED) return;
    this.paused = false;
    this.schedule();
  }

  /** Test control: this side's process stops reading its socket; what the peer sends waits, and counts in its bufferedAmount. */
  stopReading(): void {
    this.stopped = true;
  }

  /** Test control: reads again what waited. */
  startReading(): void {
    this.stopped = false;
    this.allowance = 0;
    this.schedule();
  }

  /**
   * Test control: while stopped, reads the messages waiting, oldest first, up to `bytes` of them
   * (a message that passes the count is read whole), and the pings and pongs among them: a slow reader.
   */
  read(bytes: number): void {
    this.allowance += bytes;
    this.schedule();
  }

  /**
   * Test control: the connection goes half-open, both ways. Neither side hears from the other again,
   * no close either; what they send waits unwritten. Only `terminate` or `close` ends each side.
   */
  cutSilently(): void {
    this.link.cut = true;
  }

  private control(type: 'ping' | 'pong', data: Buffer | string | undefined): void {
    if (this.state !== this.OPEN) return;
    this.outbound.frames.push({ type, data: data === undefined ? Buffer.alloc(0) : Buffer.from(data) });
    this.outbound.reader.schedule();
  }

  /**
   * Delivery of what the peer sent; called by the lane's writer and whenever reading may go on.
   * @internal
   */
  schedule(): void {
    if (this.deliveryScheduled || !this.reading()) return;
    this.deliveryScheduled = true;
    queueMicrotask(this.deliverOne);
  }

  private reading(): boolean {
    return !this.paused && (!this.stopped || this.allowance > 0) && !this.link.cut && this.state !== this.CLOSED && this.inbound.frames.length > 0;
  }

  private readonly deliverOne = (): void => {
    this.deliveryScheduled = false;
    if (!this.reading()) return;
    const f = this.inbound.frames.shift()!;
    switch (f.type) {
      case 'message':
        if (this.stopped) this.allowance = Math.max(0, this.allowance - f.data.length);
        this.inbound.bytes -= f.data.length;
        f.cb?.();
        if (this.discarding || this.closeReceived) break;
        if (this.maxPayload > 0 && f.data.length > this.maxPayload) {
          // ws stops parsing, closes 1009 without a reason and reports the error.
          this.discarding = true;
          this.close(1009);
          const err = new RangeError('Max payload size exceeded') as RangeError & { code: string };
          err.code = 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';
          this.emit('error', err);
          break;
        }
        this.emit('message', f.data, f.binary);
        break;
      case 'ping':
        if (this.discarding || this.closeReceived) break;
        this.emit('ping', f.data);
        this.pong(f.data);
        break;
      case 'pong':
        if (this.discarding || this.closeReceived) break;
        this.emit('pong', f.data);
        break;
      case 'close':
        // A socket that stopped parsing does not see the peer's close frame, only the end after it.
        if (this.discarding) {
          this.finish();
          break;
        }
        if (this.closeReceived) break;
        this.closeReceived = { code: f.code, reason: f.reason };
        if (this.closeSent) this.finish();
        // ws answers with the same code and reason (none for 1005).
        else if (f.code === 1005) this.close();
        else this.close(f.code, f.reason);
        break;
      case 'end':
        this.finish();
        break;
    }
    this.schedule();
  };

  private finish(): void {
    if (this.closeEmitted) return;
    this.closeEmitted = true;
    this.state = this.CLOSED;
    this.paused = false;
    // What the peer sent and this side never read will not be written; on a half-open connection
    // the peer does not know, and its bytes stay stuck.
    if (!this.link.cut) this.inbound.dropAll(new Error('the peer closed before this was read'));
    const code = this.closeReceived?.code ?? 1006;
    this.emit('close', code, this.closeReceived?.reason ?? Buffer.alloc(0));
  }
}

export interface MemorySocketOptions {
  /** Largest message a socket reads; a bigger one closes 1009, as ws's `maxPayload` (default 0: no limit). */
  maxPayload?: number;
}

type Frame =
  | { type: 'message'; data: Buffer; binary: boolean; cb: ((err?: Error) => void) | undefined }
  | { type: 'ping' | 'pong'; data: Buffer }
  | { type: 'close'; code: number; reason: Buffer }
  | { type: 'end' };

/** One direction of a pair: what one side sent and the other has not read yet. */
class Lane {
  frames: Frame[] = [];
  /** Bytes of the messages in `frames`: the writer's bufferedAmount. */
  bytes = 0;
  reader!: MemorySocket;

  /** Forgets every frame; a message's callback hears `err`, as ws's do when the socket goes. */
  dropAll(err: Error): void {
    const frames = this.frames;
    this.frames = [];
    this.bytes = 0;
    for (const f of frames) {
      if (f.type === 'message' && f.cb) {
        const cb = f.cb;
        queueMicrotask(() => cb(err));
      }
    }
  }
}

/** Codes a close frame may carry (RFC 6455 7.4, as ws checks them). */
function validCloseCode(code: number): boolean {
  return (code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999);
}

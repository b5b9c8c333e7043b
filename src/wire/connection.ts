import type { RawData } from 'ws';
import type { Logger } from '../util/logger.js';
import { encode, decodeAll } from './codec.js';
import { chunk, chunkAck, chunkAckV1, DEFAULT_MAX_FRAME, Kind, parse, PROTOCOL_VERSION, response, ShapeError, type Message } from './messages.js';
import { CHUNK_SIZE, CONNECTION_WINDOW, STREAM_WINDOW } from './streams.js';
import { CloseCode, closeReason } from './close-codes.js';

/**
 * Largest batch of coalesced messages, bytes. Small batches let the next hop start on the first
 * calls of a burst while this one still encodes the rest: on the benchmark, 8 KiB gave ~20 % more
 * relayed calls/s than 256 KiB with 256 calls in flight.
 */
export const COALESCE_LIMIT = 8 * 1024;

/**
 * Chunks handed to the socket and not yet reported written. Messages queued meanwhile go out before
 * the next chunk, so a small call waits behind at most this many chunks in our own buffers.
 */
const CHUNKS_IN_SOCKET = 2;

/**
 * The part of a WebSocket that a {@link Connection} touches. ws's `WebSocket` has it as it is, and
 * so does `MemorySocket` (memory-socket.ts), whose peer is in the same process: tests hold a
 * connection in the hand with it, and an in-process peer needs no network.
 */
export interface SocketLike {
  binaryType: 'nodebuffer' | 'arraybuffer' | 'fragments';
  readonly readyState: 0 | 1 | 2 | 3;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  /** Bytes handed to `send` and not yet written out (the peer is not reading them). */
  readonly bufferedAmount: number;
  /** `cb` runs once the data is written out, or with an error if it never will be. */
  send(data: Buffer, options: { binary: boolean }, cb?: (err?: Error) => void): void;
  ping(): void;
  close(code: number, reason: string): void;
  terminate(): void;
  /** Stop and start emitting what the peer sends: its bytes wait, and its `bufferedAmount` grows. */
  pause(): void;
  resume(): void;
  on(event: 'message', listener: (data: RawData, isBinary: boolean) => void): this;
  on(event: 'pong', listener: () => void): this;
  on(event: 'close', listener: (code: number, reason: Buffer) => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  once(event: 'pong', listener: () => void): this;
  off(event: 'pong', listener: () => void): this;
}

export interface ConnectionHandlers {
  message(msg: Message): void;
  close(code: number, reason: string): void;
}

export interface ConnectionOptions {
  log: Logger;
  /** A peer silent for this long (no message, no pong) is dropped. 0 disables heartbeats. */
  heartbeatTimeout: number;
  /** Largest WebSocket message to send: the peer closes with 1009 over its own limit (default 16 MiB + 64 KiB). */
  maxFrame?: number;
  /**
   * Acknowledge chunks as they arrive (default true). The relay turns this off and acknowledges a
   * chunk once it has passed it on, so that a slow receiver slows the sender down instead of
   * filling the relay's memory.
   */
  autoAck?: boolean;
  /**
   * Bytes queued for the peer and not yet written to its socket (its backlog) before it counts as
   * not reading, 0 for no limit (default). Above it, with {@link pauseWhenBacklogged}, the
   * connection stops reading from the peer; a peer that stays above it for `slowConsumerTimeout`, or
   * reaches twice it, is cut with 4008.
   */
  maxBacklog?: number;
  /** ms a backlog may stay above `maxBacklog` (default 10 000). */
  slowConsumerTimeout?: number;
  /** Largest first message (the hello), bytes; bigger closes with 1009. Default: no separate limit. */
  maxFirstMessage?: number;
  /**
   * The first value must be a hello (the relay): a malformed request there closes with 1002 like any
   * other malformed value, instead of being answered BAD_REQUEST before the hello, and a first chunk
   * acknowledgement goes to the handler (which refuses it) instead of being taken as one.
   */
  helloFirst?: boolean;
  /** Called once when the peer is cut as a slow consumer, before the close handler. */
  onSlowConsumer?(backlog: number): void;
  /** Called on each write while the backlog is above `maxBacklog` (the relay's memory budget looks again). */
  onPressure?(): void;
}

/** One chunk waiting for its stream's window: `onSent` runs once it is handed to the socket, or dropped. */
interface Queued {
  final: boolean;
  bytes: Uint8Array;
  onSent: (() => void) | undefined;
}

/** A stream this side sends: chunks waiting for credit, and bytes sent that the peer has not acknowledged. */
interface OutStream {
  id: number;
  unacked: number;
  queue: Queued[];
  head: number;
  /** The final chunk was sent, or the stream was dropped: no more chunks will come. */
  done: boolean;
}

/**
 * One WebSocket speaking our protocol, for every role. It owns what each role would otherwise
 * repeat: coalescing writes, decoding (bad input answered, never thrown), heartbeats, per-stream
 * flow control of chunks, and the accounting of what waits to be written to the peer.
 *
 * Writes queued in the same event-loop turn leave as one WebSocket message: a relay forwarding many
 * small calls sends one frame per turn instead of one per call.
 */
export class Connection {
  readonly ws: SocketLike;
  private readonly log: Logger;
  private readonly maxFrame: number;
  private handlers: ConnectionHandlers;
  private queue: Buffer[] = [];
  private queuedBytes = 0;
  private flushScheduled = false;
  private lastSeen = Date.now();
  private heartbeat: NodeJS.Timeout | undefined;
  private badMessagesLogged = false;
  private terminateTimer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly autoAck: boolean;
  /**
   * The protocol version the peer speaks, once its hello (or our welcome) says so. Version 1 peers
   * acknowledge chunks per connection (`[10, bytes]`) and are acknowledged the same way.
   */
  peerVersion = PROTOCOL_VERSION;
  /**
   * Stop reading from this peer while its backlog is above `maxBacklog`, and read again below an
   * eighth of it. The relay sets it on caller connections: a caller that does not read its answers
   * can then not pile more work on the relay. Not on connections between relay and node, where both
   * sides pausing at once could stall each other; those are only cut.
   */
  pauseWhenBacklogged = false;
  private readonly maxBacklog: number;
  private readonly slowConsumerTimeout: number;
  private readonly onSlowConsumer: ((backlog: number) => void) | undefined;
  private readonly onPressure: (() => void) | undefined;
  private maxFirstMessage: number;
  /** No value was handled yet and the first must be a hello (ConnectionOptions.helloFirst). */
  private awaitingHello: boolean;
  private overSince = 0;
  private overTimer: NodeJS.Timeout | undefined;
  private paused = false;

  /** Streams we send, by id, kept until the peer has acknowledged all their bytes. */
  private readonly out = new Map<number, OutStream>();
  /** Streams with chunks waiting, served round-robin. */
  private active: OutStream[] = [];
  private cursor = 0;
  /** Chunk bytes sent on every stream and not yet acknowledged. */
  private unacked = 0;
  /**
   * Chunk bytes queued in `out` streams on behalf of another peer (a relay passing chunks on), not
   * yet handed to the socket: held for this peer, so part of its backlog. Chunks of a body this side
   * made itself are not: that body is in memory whatever the peer does, and bounded by the message limit.
   */
  private heldBytes = 0;
  private chunksInSocket = 0;

  /** Chunk bytes received per stream and not yet acknowledged by us; the peer may not exceed the windows. */
  private readonly received = new Map<number, number>();
  private receivedTotal = 0;

  constructor(ws: SocketLike, handlers: ConnectionHandlers, options: ConnectionOptions) {
    this.ws = ws;
    this.handlers = handlers;
    this.log = options.log;
    this.maxFrame = options.maxFrame ?? DEFAULT_MAX_FRAME;
    this.autoAck = options.autoAck ?? true;
    this.maxBacklog = options.maxBacklog ?? 0;
    this.slowConsumerTimeout = options.slowConsumerTimeout ?? 10_000;
    this.onSlowConsumer = options.onSlowConsumer;
    this.onPressure = options.onPressure;
    this.maxFirstMessage = options.maxFirstMessage ?? 0;
    this.awaitingHello = options.helloFirst ?? false;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('pong', () => {
      this.lastSeen = Date.now();
    });
    ws.on('close', (code, reason) => this.onClose(code, reason.toString()));
    ws.on('error', (err) => this.log.debug({ err: err.message }, 'websocket error'));
    if (options.heartbeatTimeout > 0) this.startHeartbeat(options.heartbeatTimeout);
  }

  get isOpen(): boolean {
    return !this.closed && this.ws.readyState === this.ws.OPEN;
  }

  /** Bytes handed to this connection and not yet written to the kernel: the peer is not reading them. */
  get socketBacklog(): number {
    return this.queuedBytes + this.ws.bufferedAmount;
  }

  /** Every byte held for the peer: the socket backlog, and chunks passed on for it that wait for its window. */
  get backlog(): number {
    return this.socketBacklog + this.heldBytes;
  }

  setHandlers(handlers: ConnectionHandlers): void {
    this.handlers = handlers;
  }

  /** Queues one message; it leaves with everything else queued in this turn. */
  send(message: unknown[]): void {
    if (!this.isOpen) return;
    const bytes = encode(message);
    // Coalescing is for small messages; a batch never grows past the limit, so that two large
    // payloads never become one message bigger than the peer's maximum.
    if (this.queuedBytes > 0 && this.queuedBytes + bytes.length > COALESCE_LIMIT) this.flush();
    this.queue.push(bytes);
    this.queuedBytes += bytes.length;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      process.nextTick(this.scheduledFlush);
    }
  }

  /**
   * Sends `head` now and `body` after it in chunks of stream `id`. Chunks leave as the stream's and
   * the connection's windows allow, and messages sent meanwhile go out between them.
   */
  sendStream(head: unknown[], id: number, body: Uint8Array | Uint8Array[]): void {
    if (!this.isOpen) return;
    this.send(head);
    const stream = this.stream(id);
    const pieces = Array.isArray(body) ? body : [body];
    let total = 0;
    for (const p of pieces) total += p.length;
    let sent = 0;
    let parts: Uint8Array[] = [];
    let size = 0;
    const cut = () => {
      sent += size;
      this.enqueue(stream, sent === total, parts.length === 1 ? parts[0]! : Buffer.concat(parts, size), undefined);
      parts = [];
      size = 0;
    };
    for (const piece of pieces) {
      for (let offset = 0; offset < piece.length;) {
        const take = Math.min(CHUNK_SIZE - size, piece.length - offset);
        parts.push(piece.subarray(offset, offset + take));
        size += take;
        offset += take;
        if (size === CHUNK_SIZE) cut();
      }
    }
    if (size > 0 || total === 0) cut();
    this.pump();
  }

  /**
   * Queues one chunk of stream `id` (a relay passing on a chunk it received); `onSent` runs once it
   * is handed to the socket, or at once if this connection is closed, or when the stream is
   * dropped, so that the sender's window always moves on.
   */
  sendChunk(id: number, final: boolean, bytes: Uint8Array, onSent?: () => void): void {
    if (!this.isOpen) {
      onSent?.();
      return;
    }
    this.enqueue(this.stream(id), final, bytes, onSent);
    this.pump();
  }

  /**
   * Stops sending stream `id`: chunks still queued are dropped (their `onSent` run). Bytes already
   * sent stay counted until the peer acknowledges them, as it must.
   */
  dropStream(id: number): void {
    const s = this.out.get(id);
    if (!s) return;
    const dropped = s.queue.slice(s.head);
    if (dropped.length > 0) this.active.splice(this.active.indexOf(s), 1);
    s.queue = [];
    s.head = 0;
    s.done = true;
    for (const q of dropped) if (q.onSent) this.heldBytes -= q.bytes.length;
    this.retire(s);
    for (const q of dropped) q.onSent?.();
  }

  /**
   * Tells the peer that `bytes` of its stream `id` were consumed (see ConnectionOptions.autoAck).
   * Acknowledging 0 bytes sends nothing.
   */
  acknowledge(id: number, bytes: number): void {
    const held = this.received.get(id);
    if (held !== undefined) {
      const left = held - bytes;
      if (left > 0) this.received.set(id, left);
      else this.received.delete(id);
      this.receivedTotal -= Math.min(bytes, held);
    }
    if (bytes === 0 || !this.isOpen) return;
    this.send(this.peerVersion >= 2 ? chunkAck(id, bytes) : chunkAckV1(bytes));
  }

  /**
   * Asks the peer whether it is still there: a WebSocket ping, true when its pong arrives within
   * `timeout` ms. A half-open connection (the peer vanished without closing) answers false.
   */
  probe(timeout: number): Promise<boolean> {
    if (!this.isOpen) return Promise.resolve(false);
    return new Promise((resolve) => {
      const onPong = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.ws.off('pong', onPong);
        resolve(false);
      }, timeout);
      this.ws.once('pong', onPong);
      this.ws.ping();
    });
  }

  /** Sends what is queued, then closes with a code and a reason the peer can log. */
  close(code: number = CloseCode.NORMAL, reason = ''): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.stopHeartbeat();
    clearTimeout(this.overTimer);
    if (this.ws.readyState === this.ws.OPEN || this.ws.readyState === this.ws.CONNECTING) {
      this.ws.close(code, closeReason(reason));
      // A peer that never answers the close handshake must not hold the socket open.
      this.terminateTimer = setTimeout(() => this.ws.terminate(), 5_000);
      this.terminateTimer.unref();
    }
  }

  /** Drops the socket without a close handshake (dead peer). */
  terminate(): void {
    this.closed = true;
    this.stopHeartbeat();
    clearTimeout(this.overTimer);
    this.ws.terminate();
  }

  private stream(id: number): OutStream {
    let s = this.out.get(id);
    if (!s) {
      s = { id, unacked: 0, queue: [], head: 0, done: false };
      this.out.set(id, s);
    }
    // An id used again while the peer still owes acknowledgements of its last stream: one record.
    s.done = false;
    return s;
  }

  private enqueue(s: OutStream, final: boolean, bytes: Uint8Array, onSent: (() => void) | undefined): void {
    if (s.head === s.queue.length) this.active.push(s);
    s.queue.push({ final, bytes, onSent });
    if (onSent) {
      this.heldBytes += bytes.length;
      this.checkBacklog();
    }
  }

  /** Forgets a stream once it has nothing queued, will send nothing more, and the peer owes nothing. */
  private retire(s: OutStream): void {
    if (s.done && s.unacked === 0 && s.head === s.queue.length && this.out.get(s.id) === s) this.out.delete(s.id);
  }

  /** Hands the next chunks to the socket, round-robin over the streams with credit. */
  private readonly pump = (): void => {
    while (this.chunksInSocket < CHUNKS_IN_SOCKET && this.active.length > 0 && this.ws.readyState === this.ws.OPEN) {
      const s = this.nextReady();
      if (!s) break;
      // What was queued before this chunk leaves before it.
      this.flush();
      const q = s.queue[s.head]!;
      s.queue[s.head++] = undefined as unknown as Queued;
      if (s.head === s.queue.length) {
        s.queue = [];
        s.head = 0;
        this.active.splice(this.active.indexOf(s), 1);
      }
      if (q.onSent) this.heldBytes -= q.bytes.length;
      s.unacked += q.bytes.length;
      this.unacked += q.bytes.length;
      if (q.final) s.done = true;
      this.chunksInSocket++;
      this.ws.send(encode(chunk(s.id, q.final, q.bytes)), { binary: true }, this.chunkWritten);
      q.onSent?.();
      this.retire(s);
    }
    this.checkBacklog();
  };

  /** The next stream in turn whose first queued chunk fits in its window and the connection's. */
  private nextReady(): OutStream | undefined {
    const n = this.active.length;
    for (let i = 0; i < n; i++) {
      const at = (this.cursor + i) % n;
      const s = this.active[at]!;
      const size = s.queue[s.head]!.bytes.length;
      // A stream with nothing outstanding may always send one chunk, so that no chunk size can stall it.
      if (s.unacked > 0 && s.unacked + size > STREAM_WINDOW) continue;
      if (this.unacked > 0 && this.unacked + size > CONNECTION_WINDOW) return undefined;
      this.cursor = at + 1;
      return s;
    }
    return undefined;
  }

  private readonly chunkWritten = (err?: Error | null): void => {
    this.chunksInSocket--;
    this.takenWhilePaused(err);
    this.pump();
  };

  /**
   * While we do not read the peer (pauseWhenBacklogged) its pongs wait unread behind our pause, so
   * that it takes what we write is its sign of life: the heartbeat must not drop it for our silence.
   */
  private takenWhilePaused(err: Error | null | undefined): void {
    if (this.paused && !err) this.lastSeen = Date.now();
  }

  /** The peer acknowledged chunk bytes; more than it was sent is a protocol error. */
  private onAck(id: number | undefined, bytes: number): void {
    if (bytes === 0) return;
    if (id === undefined) return this.onConnectionAck(bytes);
    const s = this.out.get(id);
    if (!s) return; // a stream we no longer track; nothing was owed
    if (bytes > s.unacked) {
      this.protocolError(`acknowledgement of ${bytes} bytes of stream ${id}, which has ${s.unacked} bytes unacknowledged`);
      return;
    }
    s.unacked -= bytes;
    this.unacked -= bytes;
    this.retire(s);
    this.pump();
  }

  /** A version 1 acknowledgement counts for the whole connection: oldest streams first. */
  private onConnectionAck(bytes: number): void {
    if (bytes > this.unacked) {
      this.protocolError(`acknowledgement of ${bytes} bytes, but only ${this.unacked} bytes of chunks are unacknowledged`);
      return;
    }
    this.unacked -= bytes;
    let left = bytes;
    for (const s of this.out.values()) {
      const take = Math.min(left, s.unacked);
      s.unacked -= take;
      left -= take;
      this.retire(s);
      if (left === 0) break;
    }
    this.pump();
  }

  /** A chunk arrived: it must fit in the peer's windows, which bound what we hold for it. */
  private onChunkIn(id: number, bytes: number): boolean {
    if (bytes > CHUNK_SIZE) {
      this.protocolError(`chunk of ${bytes} bytes; chunks are at most ${CHUNK_SIZE}`);
      return false;
    }
    const held = (this.received.get(id) ?? 0) + bytes;
    if (this.peerVersion >= 2 && held > STREAM_WINDOW) {
      this.protocolError(`stream ${id} sent ${held} bytes without acknowledgement; the stream window is ${STREAM_WINDOW}`);
      return false;
    }
    if (this.receivedTotal + bytes > CONNECTION_WINDOW) {
      this.protocolError(`${this.receivedTotal + bytes} chunk bytes sent without acknowledgement; the connection window is ${CONNECTION_WINDOW}`);
      return false;
    }
    if (bytes > 0) this.received.set(id, held);
    this.receivedTotal += bytes;
    return true;
  }

  private protocolError(reason: string): void {
    this.log.warn({ reason }, 'closing connection after a flow-control error');
    this.close(CloseCode.PROTOCOL_ERROR, `protocol error: ${reason}`);
  }

  private readonly scheduledFlush = (): void => {
    this.flushScheduled = false;
    this.flush();
  };

  private readonly flush = (): void => {
    if (this.queue.length === 0) return;
    const queue = this.queue;
    const total = this.queuedBytes;
    this.queue = [];
    this.queuedBytes = 0;
    if (this.ws.readyState !== this.ws.OPEN) return;
    if (total <= this.maxFrame) {
      this.write(queue.length === 1 ? queue[0]! : Buffer.concat(queue, total));
    } else {
      // Coalescing must not build a message bigger than the peer accepts: split between values.
      let batch: Buffer[] = [];
      let bytes = 0;
      for (const b of queue) {
        if (bytes > 0 && bytes + b.length > this.maxFrame) {
          this.write(Buffer.concat(batch, bytes));
          batch = [];
          bytes = 0;
        }
        batch.push(b);
        bytes += b.length;
      }
      this.write(Buffer.concat(batch, bytes));
    }
    this.checkBacklog();
  };

  private write(data: Buffer): void {
    if (this.maxBacklog === 0) this.ws.send(data, { binary: true });
    else this.ws.send(data, { binary: true }, this.written);
  }

  private readonly written = (err?: Error | null): void => {
    this.takenWhilePaused(err);
    if (this.paused || this.overSince !== 0) this.checkBacklog();
  };

  /**
   * What waits in the socket for the peer is charged to it: over `maxBacklog` we stop reading it
   * (callers), and a peer that stays over it is cut, at once when it reaches twice that. Chunks that
   * wait for the peer's window are not: a peer that acknowledges slowly but within the windows obeys
   * the protocol, and those bytes are bounded by the windows of whoever sent them (the relay
   * acknowledges a chunk only once it has passed it on) and by the relay's memory budget. Cheap
   * enough to run on every write.
   */
  private checkBacklog(): void {
    if (this.maxBacklog === 0 || this.closed) return;
    const backlog = this.socketBacklog;
    if (backlog >= 2 * this.maxBacklog) return this.cutSlowConsumer(backlog);
    if (backlog > this.maxBacklog) {
      this.onPressure?.();
      if (this.closed) return;
      if (this.overSince === 0) {
        this.overSince = Date.now();
        this.armOverTimer();
        if (this.pauseWhenBacklogged && !this.paused) {
          this.paused = true;
          this.ws.pause();
          this.log.warn({ backlogBytes: backlog, limit: this.maxBacklog }, 'peer is not reading its messages; not reading from it until it does');
        }
      } else if (Date.now() - this.overSince >= this.slowConsumerTimeout) {
        this.cutSlowConsumer(backlog);
      }
      return;
    }
    if (this.overSince !== 0) {
      this.overSince = 0;
      clearTimeout(this.overTimer);
    }
    if (this.paused && backlog <= this.maxBacklog / 8) {
      this.paused = false;
      this.ws.resume();
    }
  }

  private armOverTimer(): void {
    this.overTimer = setTimeout(() => this.onOverTimer(), this.slowConsumerTimeout + 10);
    this.overTimer.unref();
  }

  /**
   * The backlog's time is up. A timer that runs far later than it was due means this process was
   * frozen (a long GC pause, a stopped VM): the socket's reports of what the peer read meanwhile are
   * still waiting behind this timer, so the peer is given a fresh period instead of being cut for our
   * own stop (as the heartbeat does, startHeartbeat).
   */
  private onOverTimer(): void {
    if (this.closed || this.overSince === 0) return;
    const late = Date.now() - this.overSince - (this.slowConsumerTimeout + 10);
    if (late > Math.max(1_000, this.slowConsumerTimeout / 2)) {
      this.overSince = Date.now();
      this.armOverTimer();
      return;
    }
    this.checkBacklog();
  }

  /**
   * Cuts the peer to free what is held for it (the relay over its memory budget, memory.ts): closed
   * 4008 like a slow consumer, with `reason`.
   */
  shed(reason: string): void {
    if (this.closed) return;
    this.cutSlowConsumer(this.backlog, `slow consumer: ${reason}`);
  }

  /** Cuts a peer that does not read: what is queued for it is dropped with the connection. */
  private cutSlowConsumer(
    backlog: number,
    reason = `slow consumer: ${backlog} bytes waited to be written to this connection (limit ${this.maxBacklog}); read your messages`,
  ): void {
    // The code is logged because the peer may never see it: the frame waits behind what it does not read.
    this.log.warn({ code: CloseCode.SLOW_CONSUMER, backlogBytes: backlog, limit: this.maxBacklog, reason }, 'slow consumer: closing connection');
    this.onSlowConsumer?.(backlog);
    this.queue = [];
    this.queuedBytes = 0;
    this.close(CloseCode.SLOW_CONSUMER, reason);
    // The close frame waits behind the backlog the peer does not read: do not hold it for long.
    clearTimeout(this.terminateTimer);
    this.terminateTimer = setTimeout(() => this.ws.terminate(), 1_000);
    this.terminateTimer.unref();
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    this.lastSeen = Date.now();
    if (this.closed) return;
    if (!isBinary) {
      this.close(CloseCode.UNSUPPORTED_DATA, 'text frames are not accepted: send binary MessagePack');
      return;
    }
    if (this.maxFirstMessage > 0) {
      const size = (data as Buffer).length;
      const limit = this.maxFirstMessage;
      this.maxFirstMessage = 0;
      if (size > limit) {
        this.log.warn({ bytes: size, limit }, 'closing connection after an oversized hello');
        this.close(CloseCode.TOO_LARGE, `the hello is ${size} bytes; at most ${limit}`);
        return;
      }
    }
    let values: unknown[];
    try {
      values = decodeAll(data as Buffer);
    } catch (err) {
      const reason = `invalid MessagePack: ${(err as Error).message}`;
      this.log.warn({ reason }, 'closing connection after undecodable message');
      this.close(CloseCode.INVALID_DATA, reason);
      return;
    }
    for (const value of values) {
      if (this.closed) return;
      const first = this.awaitingHello;
      this.awaitingHello = false;
      let msg: Message;
      try {
        msg = parse(value);
      } catch (err) {
        this.onBadMessage(err as ShapeError, first);
        continue;
      }
      // Where a hello must come first, even an acknowledgement goes to the handler, which refuses it.
      if (msg.kind === Kind.CHUNK_ACK && !first) {
        this.onAck(msg.id, msg.bytes);
        continue;
      }
      if (msg.kind === Kind.CHUNK) {
        if (!this.onChunkIn(msg.id, msg.bytes.length)) return;
        if (this.autoAck) this.acknowledge(msg.id, msg.bytes.length);
      }
      try {
        this.handlers.message(msg);
      } catch (err) {
        // A bug in a role's handler must not take the process down with it.
        this.log.error({ err }, 'message handler failed');
      }
    }
  }

  /**
   * A wrongly shaped request is answered with BAD_REQUEST; anything else without an id closes, and so
   * does a wrongly shaped request where a hello must come first.
   */
  private onBadMessage(err: ShapeError, beforeHello = false): void {
    if (!this.badMessagesLogged) {
      this.badMessagesLogged = true;
      this.log.warn({ reason: err.message }, 'bad message from peer');
    }
    if (!beforeHello && err instanceof ShapeError && err.id !== undefined) {
      this.send(response(err.id, err.toWire(), null));
      return;
    }
    this.close(CloseCode.PROTOCOL_ERROR, `protocol error: ${err.message}`);
  }

  private onClose(code: number, reason: string): void {
    this.closed = true;
    // Under a flood of bad connections a pending timer would keep each closed socket alive for seconds.
    clearTimeout(this.terminateTimer);
    clearTimeout(this.overTimer);
    this.stopHeartbeat();
    this.queue = [];
    this.queuedBytes = 0;
    // Chunks that will never be written still release whoever waits to acknowledge them upstream.
    const dropped: Queued[] = [];
    for (const s of this.active) dropped.push(...s.queue.slice(s.head));
    this.active = [];
    this.out.clear();
    this.heldBytes = 0;
    this.received.clear();
    this.receivedTotal = 0;
    for (const q of dropped) q.onSent?.();
    this.handlers.close(code, reason);
  }

  private startHeartbeat(timeout: number): void {
    const interval = Math.max(Math.floor(timeout / 3), 10);
    let lastTick = Date.now();
    this.heartbeat = setInterval(() => {
      const now = Date.now();
      const frozen = now - lastTick > 2 * interval;
      lastTick = now;
      if (frozen) {
        // This process was the one frozen (a long GC pause, a stopped VM): what the peer sent meanwhile
        // is still unread in the socket. Give it a fresh timeout instead of dropping it unheard.
        this.lastSeen = Math.max(this.lastSeen, now - interval);
      } else if (now - this.lastSeen > timeout) {
        this.log.warn({ timeoutMs: timeout }, 'peer missed heartbeats; dropping connection');
        this.ws.terminate();
        return;
      }
      if (this.ws.readyState === this.ws.OPEN) this.ws.ping();
    }, interval);
    this.heartbeat.unref();
  }

  private stopHeartbeat(): void {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = undefined;
  }
}

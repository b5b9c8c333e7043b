import type { WebSocket, RawData } from 'ws';
import type { Logger } from '../util/logger.js';
import { encode, decodeAll } from './codec.js';
import { chunk, chunkAck, DEFAULT_MAX_FRAME, Kind, parse, response, ShapeError, type Message } from './messages.js';
import { ACK_EVERY, CHUNK_SIZE, CHUNK_WINDOW } from './streams.js';
import { CloseCode, closeReason } from './close-codes.js';

/**
 * Largest batch of coalesced messages, bytes. Small batches let the next hop start on the first
 * calls of a burst while this one still encodes the rest: on the benchmark, 8 KiB gave ~20 % more
 * relayed calls/s than 256 KiB with 256 calls in flight.
 */
export const COALESCE_LIMIT = 8 * 1024;

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
}

const BACKLOG_HIGH = 8 * 1024 * 1024;
const BACKLOG_LOW = 1024 * 1024;

/**
 * One WebSocket speaking our protocol, for every role. It owns the three things each role would
 * otherwise repeat: coalescing writes, decoding (with bad input answered, never thrown), heartbeats.
 *
 * Writes queued in the same event-loop turn leave as one WebSocket message: a relay forwarding many
 * small calls sends one frame per turn instead of one per call.
 */
export class Connection {
  readonly ws: WebSocket;
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
  /** Chunks waiting to be written: [id, final, bytes, called once written (or dropped)]. */
  private bulk: Array<[number, boolean, Uint8Array, (() => void) | undefined]> = [];
  private readonly autoAck: boolean;
  /**
   * Stop reading from this peer while more than 8 MiB of our messages to it wait to be written, and
   * read again below 1 MiB. The relay sets it on caller connections: a caller that does not read its
   * answers can then not pile more work on the relay. Not on connections between relay and node,
   * where both sides pausing at once could stall each other.
   */
  pauseWhenBacklogged = false;
  private bulkHead = 0;
  /** Chunk bytes sent and not yet acknowledged by the peer (flow control, see CHUNK_WINDOW). */
  private unacked = 0;
  /** Chunk bytes received since our last acknowledgement. */
  private toAck = 0;

  constructor(ws: WebSocket, handlers: ConnectionHandlers, options: ConnectionOptions) {
    this.ws = ws;
    this.handlers = handlers;
    this.log = options.log;
    this.maxFrame = options.maxFrame ?? DEFAULT_MAX_FRAME;
    this.autoAck = options.autoAck ?? true;
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

  /** Bytes queued here or in the socket but not yet written to the kernel. */
  get bufferedAmount(): number {
    return this.queuedBytes + this.ws.bufferedAmount;
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
   * Sends `head` now and `body` after it in chunks of id `id`. Chunks leave a few at a time, as the
   * socket takes them, so that messages sent meanwhile go out between them.
   */
  sendStream(head: unknown[], id: number, body: Uint8Array | Uint8Array[]): void {
    if (!this.isOpen) return;
    this.send(head);
    const pieces = Array.isArray(body) ? body : [body];
    let total = 0;
    for (const p of pieces) total += p.length;
    let sent = 0;
    let parts: Uint8Array[] = [];
    let size = 0;
    const cut = () => {
      sent += size;
      this.bulk.push([id, sent === total, parts.length === 1 ? parts[0]! : Buffer.concat(parts, size), undefined]);
      parts = [];
      size = 0;
    };
    for (const piece of pieces) {
      for (let offset = 0; offset < piece.length; ) {
        const take = Math.min(CHUNK_SIZE - size, piece.length - offset);
        parts.push(piece.subarray(offset, offset + take));
        size += take;
        offset += take;
        if (size === CHUNK_SIZE) cut();
      }
    }
    if (size > 0) cut();
    this.pump();
  }

  /**
   * Queues one chunk (a relay passing on a chunk it received); `onSent` runs once it is written, or
   * at once if this connection is closed, so that the sender's window always moves on.
   */
  sendChunk(id: number, final: boolean, bytes: Uint8Array, onSent?: () => void): void {
    if (!this.isOpen) {
      onSent?.();
      return;
    }
    this.bulk.push([id, final, bytes, onSent]);
    this.pump();
  }

  /** Tells the peer that `bytes` of its chunks were consumed (see ConnectionOptions.autoAck). */
  acknowledge(bytes: number, final: boolean): void {
    this.toAck += bytes;
    if (this.toAck >= ACK_EVERY || (final && this.toAck > 0)) {
      this.send(chunkAck(this.toAck));
      this.toAck = 0;
    }
  }

  private readonly pump = (): void => {
    while (this.unacked < CHUNK_WINDOW && this.bulkHead < this.bulk.length && this.ws.readyState === this.ws.OPEN) {
      // What was queued before this chunk leaves before it.
      this.flush();
      const [id, final, bytes, onSent] = this.bulk[this.bulkHead]!;
      this.bulk[this.bulkHead++] = undefined as unknown as (typeof this.bulk)[number];
      this.unacked += bytes.length;
      this.ws.send(encode(chunk(id, final, bytes)), { binary: true });
      onSent?.();
    }
    if (this.bulkHead === this.bulk.length) {
      this.bulk = [];
      this.bulkHead = 0;
    }
  };

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
      return;
    }
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
  };

  private write(data: Buffer): void {
    if (!this.pauseWhenBacklogged) {
      this.ws.send(data, { binary: true });
      return;
    }
    this.ws.send(data, { binary: true }, this.written);
    if (!this.ws.isPaused && this.ws.bufferedAmount > BACKLOG_HIGH) {
      this.log.warn({ bufferedBytes: this.ws.bufferedAmount }, 'peer is not reading its messages; not reading from it until it does');
      this.ws.pause();
    }
  }

  private readonly written = (): void => {
    if (this.ws.isPaused && this.ws.bufferedAmount < BACKLOG_LOW && !this.closed) this.ws.resume();
  };

  /** Sends what is queued, then closes with a code and a reason the peer can log. */
  close(code: number = CloseCode.NORMAL, reason = ''): void {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    this.stopHeartbeat();
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
    this.ws.terminate();
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    this.lastSeen = Date.now();
    if (this.closed) return;
    if (!isBinary) {
      this.close(CloseCode.UNSUPPORTED_DATA, 'text frames are not accepted: send binary MessagePack');
      return;
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
      let msg: Message;
      try {
        msg = parse(value);
      } catch (err) {
        this.onBadMessage(err as ShapeError);
        continue;
      }
      if (msg.kind === Kind.CHUNK_ACK) {
        this.unacked = Math.max(0, this.unacked - msg.bytes);
        this.pump();
        continue;
      }
      if (msg.kind === Kind.CHUNK && this.autoAck) this.acknowledge(msg.bytes.length, msg.final);
      try {
        this.handlers.message(msg);
      } catch (err) {
        // A bug in a role's handler must not take the process down with it.
        this.log.error({ err }, 'message handler failed');
      }
    }
  }

  /** A wrongly shaped request is answered with BAD_REQUEST; anything else without an id closes. */
  private onBadMessage(err: ShapeError): void {
    if (!this.badMessagesLogged) {
      this.badMessagesLogged = true;
      this.log.warn({ reason: err.message }, 'bad message from peer');
    }
    if (err instanceof ShapeError && err.id !== undefined) {
      this.send(response(err.id, err.toWire(), null));
      return;
    }
    this.close(CloseCode.PROTOCOL_ERROR, `protocol error: ${err.message}`);
  }

  private onClose(code: number, reason: string): void {
    this.closed = true;
    // Under a flood of bad connections a pending timer would keep each closed socket alive for seconds.
    clearTimeout(this.terminateTimer);
    this.stopHeartbeat();
    this.queue = [];
    this.queuedBytes = 0;
    // Chunks that will never be written still release whoever waits to acknowledge them upstream.
    const dropped = this.bulk.slice(this.bulkHead);
    this.bulk = [];
    this.bulkHead = 0;
    for (const entry of dropped) entry[3]?.();
    this.handlers.close(code, reason);
  }

  private startHeartbeat(timeout: number): void {
    const interval = Math.max(Math.floor(timeout / 3), 10);
    this.heartbeat = setInterval(() => {
      if (Date.now() - this.lastSeen > timeout) {
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

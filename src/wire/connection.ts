import type { RawData } from 'ws';
import type { SocketLike } from './socket.js';
import type { Logger } from '../util/logger.js';
import { encode, decodeAll } from './codec.js';
import { chunk, chunkAck, chunkAckV1, DEFAULT_MAX_FRAME, Kind, parse, PROTOCOL_VERSION, response, ShapeError, type Message } from './messages.js';
import { CloseCode, closeReason } from './close-codes.js';
import { BacklogGuard } from './backlog-guard.js';
import { IncomingWindows, OutgoingStreams } from './flow-control.js';
import { Heartbeat, probe } from './heartbeat.js';
import { COALESCE_LIMIT, Coalescer, inMessagesOf } from './turn-writer.js';

export { COALESCE_LIMIT } from './turn-writer.js';

/**
 * Chunks handed to the socket and not yet reported written. Messages queued meanwhile go out before
 * the next chunk, so a small call waits behind at most this many chunks in our own buffers.
 */
const CHUNKS_IN_SOCKET = 2;

export type { SocketLike } from './socket.js';

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
  /** Messages queued in this turn; they leave as one WebSocket message. */
  private readonly writer: Coalescer<Buffer>;
  private readonly heartbeat: Heartbeat | undefined;
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
  private readonly guard: BacklogGuard;
  private readonly onSlowConsumer: ((backlog: number) => void) | undefined;
  private maxFirstMessage: number;
  /** No value was handled yet and the first must be a hello (ConnectionOptions.helloFirst). */
  private awaitingHello: boolean;

  /** Streams we send, with their windows. */
  private readonly out = new OutgoingStreams();
  private chunksInSocket = 0;
  /** What the peer's streams sent and we have not acknowledged yet. */
  private readonly received = new IncomingWindows();

  constructor(ws: SocketLike, handlers: ConnectionHandlers, options: ConnectionOptions) {
    this.ws = ws;
    this.handlers = handlers;
    this.log = options.log;
    this.maxFrame = options.maxFrame ?? DEFAULT_MAX_FRAME;
    this.autoAck = options.autoAck ?? true;
    this.maxBacklog = options.maxBacklog ?? 0;
    this.onSlowConsumer = options.onSlowConsumer;
    this.maxFirstMessage = options.maxFirstMessage ?? 0;
    this.awaitingHello = options.helloFirst ?? false;
    this.writer = new Coalescer<Buffer>((batch, bytes) => this.writeBatch(batch, bytes), process.nextTick, COALESCE_LIMIT);
    const onPressure = options.onPressure;
    this.guard = new BacklogGuard({
      maxBacklog: this.maxBacklog,
      timeout: options.slowConsumerTimeout ?? 10_000,
      recheck: () => this.checkBacklog(),
      pressure: onPressure && (() => onPressure()),
      pause: (backlog) => {
        if (!this.pauseWhenBacklogged) return false;
        this.ws.pause();
        this.log.warn({ backlogBytes: backlog, limit: this.maxBacklog }, 'peer is not reading its messages; not reading from it until it does');
        return true;
      },
      resume: () => this.ws.resume(),
    });
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('pong', () => this.heartbeat?.seen());
    ws.on('close', (code, reason) => this.onClose(code, reason.toString()));
    ws.on('error', (err) => this.log.debug({ err: err.message }, 'websocket error'));
    const timeout = options.heartbeatTimeout;
    this.heartbeat =
      timeout > 0
        ? new Heartbeat(ws, timeout, () => {
            this.log.warn({ timeoutMs: timeout }, 'peer missed heartbeats; dropping connection');
            this.ws.terminate();
          })
        : undefined;
  }

  get isOpen(): boolean {
    return !this.closed && this.ws.readyState === this.ws.OPEN;
  }

  /** Bytes handed to this connection and not yet written to the kernel: the peer is not reading them. */
  get socketBacklog(): number {
    return this.writer.queued + this.ws.bufferedAmount;
  }

  /** Every byte held for the peer: the socket backlog, and chunks passed on for it that wait for its window. */
  get backlog(): number {
    return this.socketBacklog + this.out.held;
  }

  setHandlers(handlers: ConnectionHandlers): void {
    this.handlers = handlers;
  }

  /** Queues one message; it leaves with everything else queued in this turn. */
  send(message: unknown[]): void {
    // Coalescing is for small messages; a batch never grows past the limit, so that two large
    // payloads never become one message bigger than the peer's maximum.
    if (this.isOpen) this.writer.push(encode(message));
  }

  /** Sends one message already encoded (call-envelope.ts writes the two of every call by hand). */
  sendEncoded(bytes: Buffer): void {
    if (this.isOpen) this.writer.push(bytes);
  }

  /**
   * Sends `head` now and `body` after it in chunks of stream `id`. Chunks leave as the stream's and
   * the connection's windows allow, and messages sent meanwhile go out between them.
   */
  sendStream(head: unknown[], id: number, body: Uint8Array | Uint8Array[]): void {
    if (!this.isOpen) return;
    this.send(head);
    this.out.enqueueBody(id, body);
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
    this.out.enqueue(this.out.open(id), final, bytes, onSent);
    if (onSent) this.checkBacklog();
    this.pump();
  }

  /**
   * Stops sending stream `id`: chunks still queued are dropped (their `onSent` run). Bytes already
   * sent stay counted until the peer acknowledges them, as it must.
   */
  dropStream(id: number): void {
    for (const q of this.out.drop(id)) q.onSent?.();
  }

  /**
   * Tells the peer that `bytes` of its stream `id` were consumed (see ConnectionOptions.autoAck).
   * Acknowledging 0 bytes sends nothing.
   */
  acknowledge(id: number, bytes: number): void {
    this.received.release(id, bytes);
    if (bytes === 0 || !this.isOpen) return;
    this.send(this.peerVersion >= 2 ? chunkAck(id, bytes) : chunkAckV1(bytes));
  }

  /**
   * Asks the peer whether it is still there: a WebSocket ping, true when its pong arrives within
   * `timeout` ms. A half-open connection (the peer vanished without closing) answers false.
   */
  probe(timeout: number): Promise<boolean> {
    if (!this.isOpen) return Promise.resolve(false);
    return probe(this.ws, timeout);
  }

  /** Sends what is queued, then closes with a code and a reason the peer can log. */
  close(code: number = CloseCode.NORMAL, reason = ''): void {
    if (this.closed) return;
    this.writer.flush();
    this.stopTimers();
    if (this.ws.readyState === this.ws.OPEN || this.ws.readyState === this.ws.CONNECTING) {
      this.ws.close(code, closeReason(reason));
      // A peer that never answers the close handshake must not hold the socket open.
      this.terminateTimer = setTimeout(() => this.ws.terminate(), 5_000);
      this.terminateTimer.unref();
    }
  }

  /** Drops the socket without a close handshake (dead peer). */
  terminate(): void {
    this.stopTimers();
    this.ws.terminate();
  }

  private stopTimers(): void {
    this.closed = true;
    this.heartbeat?.stop();
    this.guard.stop();
  }

  /** Hands the next chunks to the socket, round-robin over the streams with credit. */
  private readonly pump = (): void => {
    while (this.chunksInSocket < CHUNKS_IN_SOCKET && this.out.waiting && this.ws.readyState === this.ws.OPEN) {
      const s = this.out.next();
      if (!s) break;
      // What was queued before this chunk leaves before it.
      this.writer.flush();
      const q = this.out.take(s);
      this.chunksInSocket++;
      this.ws.send(encode(chunk(s.id, q.final, q.bytes)), { binary: true }, this.chunkWritten);
      q.onSent?.();
    }
    this.checkBacklog();
  };

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
    if (this.guard.isPaused && !err) this.heartbeat?.seen();
  }

  /** The peer acknowledged chunk bytes; more than it was sent is a protocol error. */
  private onAck(id: number | undefined, bytes: number): void {
    const error = this.out.ack(id, bytes);
    if (error) this.protocolError(error);
    else if (bytes > 0) this.pump();
  }

  /** A chunk arrived: it must fit in the peer's windows, which bound what we hold for it. */
  private onChunkIn(id: number, bytes: number): boolean {
    const error = this.received.admit(id, bytes, this.peerVersion >= 2);
    if (error) this.protocolError(error);
    return error === undefined;
  }

  private protocolError(reason: string): void {
    this.log.warn({ reason }, 'closing connection after a flow-control error');
    this.close(CloseCode.PROTOCOL_ERROR, `protocol error: ${reason}`);
  }

  /** One batch of coalesced messages as one WebSocket message, or a few where it would pass the peer's limit. */
  private writeBatch(queue: Buffer[], total: number): void {
    if (this.ws.readyState !== this.ws.OPEN) return;
    inMessagesOf(queue, total, this.maxFrame, this.write);
    this.checkBacklog();
  }

  private readonly write = (data: Buffer): void => {
    if (this.maxBacklog === 0) this.ws.send(data, { binary: true });
    else this.ws.send(data, { binary: true }, this.written);
  };

  private readonly written = (err?: Error | null): void => {
    this.takenWhilePaused(err);
    if (this.guard.engaged) this.checkBacklog();
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
    if (this.guard.check(backlog)) this.cutSlowConsumer(backlog);
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
    this.writer.drop();
    this.close(CloseCode.SLOW_CONSUMER, reason);
    // The close frame waits behind the backlog the peer does not read: do not hold it for long.
    clearTimeout(this.terminateTimer);
    this.terminateTimer = setTimeout(() => this.ws.terminate(), 1_000);
    this.terminateTimer.unref();
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    this.heartbeat?.seen();
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
    this.guard.stop();
    this.heartbeat?.stop();
    this.writer.drop();
    // Chunks that will never be written still release whoever waits to acknowledge them upstream.
    const dropped = this.out.clear();
    this.received.clear();
    for (const q of dropped) q.onSent?.();
    this.handlers.close(code, reason);
  }
}

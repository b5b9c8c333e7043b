import { ErrorCode, TunnelError } from '../errors.js';
import { decodeParams, join, piecesLength, resultPieces, type Pieces } from '../rpc/body.js';
import { Cancellation } from '../rpc/cancellation.js';
import type { CallContext } from '../rpc/context.js';
import type { DeadlineWheel, Expiring } from '../rpc/deadlines.js';
import { invoke, type ServiceRegistry } from '../rpc/registry.js';
import type { Session } from '../rpc/session.js';
import type { Logger } from '../util/logger.js';
import { methodProblem } from '../wire/bounds.js';
import type { Connection } from '../wire/connection.js';
import { Kind, response, responseStream, type Message } from '../wire/messages.js';
import type { WireBroadcastEntry } from '../wire/presence.js';
import { Reassembly, ReassemblyBudget, STREAM_THRESHOLD } from '../wire/streams.js';
import type { ForwardedService } from './forward.js';
import type { SessionTable } from './sessions.js';
import { encodeResult } from '../wire/call-envelope.js';

type Request = Extract<Message, { kind: 0 }>;

/** What every dispatcher of one node shares: the services, the deadline wheel, the limits. */
export interface DispatchHost {
  readonly name: string;
  readonly log: Logger;
  readonly services: ServiceRegistry;
  readonly forwarded: ReadonlyMap<string, ForwardedService>;
  readonly deadlines: DeadlineWheel<RunningCall>;
  readonly defaultTimeout: number;
  /** Largest params accepted, bytes. */
  readonly maxMessage: number;
  /** Bytes of incomplete streamed params one caller session may hold on this node. */
  readonly maxReassembly: number;
  /** Bytes of answers waiting for the socket above which answers wait unencoded and new requests are refused. */
  readonly maxBacklog: number;
  /** Handlers running at once on one connection; more requests are refused OVERLOADED. */
  readonly maxInFlight: number;
  /** A handler finished (the node counts what still runs, for drain). */
  callFinished(): void;
  /** Handlers finished since the node started, on every connection. */
  served: number;
}

/** One handler running on the node, on behalf of one request of one connection. */
export class RunningCall extends Cancellation implements Expiring {
  deadlineSlot = 0;
  /** The error answer was already sent (a direct caller's cancel or deadline). */
  answered = false;

  constructor(
    readonly dispatcher: Dispatcher,
    readonly id: number,
    readonly method: string,
    readonly session: Session,
    readonly timeout: number,
  ) {
    super();
  }
}

/** The handler's view of a running call; `signal` is made on first use (see Cancellation). */
class HandlerContext implements CallContext {
  constructor(
    private readonly call: RunningCall,
    readonly caller: CallContext['caller'],
    readonly node: string,
    readonly deadline: number,
    readonly log: Logger,
  ) {}

  get session(): Session {
    return this.call.session;
  }

  get method(): string {
    return this.call.method;
  }

  get signal(): AbortSignal {
    return this.call.signal;
  }
}

/**
 * The calls of one connection a node serves (its tunnel to a relay, or one direct caller): requests
 * and their streamed params, cancels, closed sessions, and the answers. Request ids are the
 * connection's own, so each connection has its dispatcher and no id is shared between them.
 */
export class Dispatcher {
  readonly running = new Map<number, RunningCall>();
  private readonly uploads: Reassembly<{ head: Request; session: string }>;
  private readonly budget: ReassemblyBudget;
  private readonly sessionBudgets = new Map<string, ReassemblyBudget>();
  /** Largest result the peer said it accepts (the relay's welcome), bytes. */
  peerMaxMessage = Infinity;
  /**
   * Answers held back while the socket's backlog is above `maxBacklog`: the handler's result, not
   * yet encoded for the wire, so that a burst of large answers costs references, not copies.
   */
  private readonly waiting: Array<{ call: RunningCall; pieces: Pieces; length: number }> = [];
  private waitTimer: NodeJS.Timeout | undefined;
  /** Bytes of the answers held back, in all and per caller session. */
  private waitingBytes = 0;
  private readonly waitingBySession = new Map<string, number>();

  constructor(
    private readonly host: DispatchHost,
    readonly conn: Connection,
    readonly sessions: SessionTable,
    /**
     * Answer cancels and deadlines ourselves (a direct caller, who has no relay to do it); through a
     * relay the relay answers the caller and the node stays silent.
     */
    private readonly answersCancels: boolean,
    /** Fills in what the relay would have said about the caller (a direct connection). */
    private readonly localMeta?: (meta: Record<string, unknown>) => Record<string, unknown>,
  ) {
    // Several caller sessions share one tunnel: each has its own budget, all of them this one.
    this.budget = new ReassemblyBudget(8 * host.maxReassembly, 'this node connection');
    this.uploads = new Reassembly(host.maxMessage, this.budget);
  }

  get size(): number {
    return this.running.size;
  }

  onMessage(m: Message): void {
    switch (m.kind) {
      case Kind.REQUEST:
        return this.receiveRequest(this.localMeta ? { ...m, meta: this.localMeta(m.meta) } : m);
      case Kind.CHUNK:
        return this.receiveChunk(m);
      case Kind.CANCEL:
        return this.cancel(m.id);
      case Kind.SESSION_CLOSED:
        return this.closeSession(m.session);
      default:
        this.host.log.debug({ kind: m.kind }, 'ignoring message not meant for a node');
    }
  }

  /** The caller cancelled request `id`: abort its handler, drop its upload, stop its result stream. */
  cancel(id: number): void {
    const upload = this.uploads.drop(id);
    this.conn.dropStream(id);
    const call = this.running.get(id);
    if (call) {
      this.host.log.debug({ method: call.method, session: call.session.id }, 'call cancelled');
      this.abortCall(call, new TunnelError(ErrorCode.CANCELLED, `${call.method} was cancelled by the caller`));
    } else if (upload && this.answersCancels) {
      this.conn.send(response(id, new TunnelError(ErrorCode.CANCELLED, `${upload.head.method} was cancelled by the caller`).toWire(), null));
    }
  }

  /** The deadline passed (the node's copy of it). */
  expire(call: RunningCall): void {
    this.abortCall(call, new TunnelError(ErrorCode.TIMEOUT, `${call.method} did not finish within ${call.timeout} ms (its deadline)`));
  }

  private abortCall(call: RunningCall, reason: TunnelError): void {
    call.abort(reason);
    if (!this.answersCancels || call.answered) return;
    call.answered = true;
    this.conn.send(response(call.id, reason.toWire(), null));
  }

  /** The caller disconnected: its handlers are aborted, its uploads and state dropped. */
  closeSession(session: string): void {
    const aborted = this.forgetSession(session);
    if (this.sessions.close(session)) this.host.log.debug({ session, abortedCalls: aborted }, 'session closed');
  }

  /**
   * Drops the uploads of a session that ended and returns how many of its handlers run here; the
   * session table aborts them. A node with several tunnels calls this on each (the session is shared).
   */
  forgetSession(session: string): number {
    let running = 0;
    for (const call of this.running.values()) if (call.session.id === session) running++;
    this.uploads.dropWhere((u) => u.session === session);
    this.sessionBudgets.delete(session);
    return running;
  }

  /** Cancels uploads that stopped moving; the caller is told why. */
  expireIdleUploads(idleMs: number, now = Date.now()): void {
    for (const { id, owner } of this.uploads.expireIdle(idleMs, now)) {
      this.conn.send(
        response(
          id,
          new TunnelError(ErrorCode.TIMEOUT, `the streamed params of ${owner.head.method} stopped arriving for ${idleMs} ms; the call was dropped`).toWire(),
          null,
        ),
      );
    }
  }

  /** Aborts and forgets every call of this connection (it closed, or the node stops). */
  drop(reason: TunnelError): void {
    this.waiting.length = 0;
    this.waitingBytes = 0;
    this.waitingBySession.clear();
    clearTimeout(this.waitTimer);
    this.uploads.clear();
    this.sessionBudgets.clear();
    for (const call of this.running.values()) {
      this.host.deadlines.remove(call);
      call.abort(reason);
    }
    const had = this.running.size;
    this.running.clear();
    if (had > 0) this.host.callFinished();
  }

  /** A request whose params arrive in chunks waits in `uploads` until the last one. */
  private receiveRequest(m: Request): void {
    // A second request under an id that is running, or whose params are still arriving, is refused;
    // the first goes on untouched (its upload is not replaced).
    if (this.running.has(m.id) || this.uploads.has(m.id)) {
      const message = `request id ${m.id} is already ${this.running.has(m.id) ? 'running' : 'receiving its params'}`;
      this.conn.send(response(m.id, new TunnelError(ErrorCode.BAD_REQUEST, message).toWire(), null));
      return;
    }
    if (m.stream === 0) return this.run(m);
    const session = sessionOf(m);
    try {
      this.uploads.start(m.id, m.stream, { head: m, session }, this.sessionBudget(session));
    } catch (err) {
      this.conn.send(response(m.id, TunnelError.from(err).toWire(), null));
    }
  }

  private sessionBudget(session: string): ReassemblyBudget {
    let b = this.sessionBudgets.get(session);
    if (!b) {
      b = new ReassemblyBudget(this.host.maxReassembly, 'this caller session', this.budget);
      this.sessionBudgets.set(session, b);
    }
    return b;
  }

  private receiveChunk(m: Extract<Message, { kind: 8 }>): void {
    let whole;
    try {
      whole = this.uploads.add(m.id, m.bytes, m.final);
    } catch (err) {
      this.conn.send(response(m.id, TunnelError.from(err).toWire(), null));
      return;
    }
    if (whole) this.run({ ...whole.owner.head, params: whole.body, stream: 0 });
  }

  private run(m: Request): void {
    const { id, method, meta } = m;
    const dot = method.lastIndexOf('.');
    // Both kinds of service end in encoded bytes: a forwarded one passes the params and result through.
    let work: (ctx: CallContext) => Promise<Uint8Array | Pieces>;
    try {
      // The relay's rule, applied again here: what reaches the node may come from a relay that does
      // not check it, or straight from a direct caller (--direct-listen).
      const badName = methodProblem(method);
      if (badName !== undefined) throw new TunnelError(ErrorCode.BAD_REQUEST, badName);
      const forwarded = this.host.forwarded.get(method.slice(0, dot));
      if (forwarded) {
        work = (ctx) => forwarded.call(method, m.params, ctx);
      } else {
        const entry = this.host.services.lookup(method.slice(0, dot), method.slice(dot + 1));
        const args = decodeParams(m.params);
        work = async (ctx) => encodeReturned(method, await invoke(entry, args, ctx));
      }
    } catch (err) {
      this.conn.send(response(id, TunnelError.from(err).toWire(), null));
      return;
    }
    // A direct caller's broadcast (`tunnel-call --all` at a node's direct port) has this node as its
    // only node: the answer is a list of one entry, as a relay would send.
    if (this.localMeta && meta.broadcast === true) work = asBroadcastEntry(work, this.host.name);
    if (this.running.has(id)) {
      this.conn.send(response(id, new TunnelError(ErrorCode.BAD_REQUEST, `request id ${id} is already running`).toWire(), null));
      return;
    }
    const busy = this.busy(sessionOf(m));
    if (busy !== undefined) {
      this.conn.send(response(id, new TunnelError(ErrorCode.OVERLOADED, busy).toWire(), null));
      return;
    }
    const timeout = typeof meta.timeout === 'number' && meta.timeout > 0 ? meta.timeout : this.host.defaultTimeout;
    const session = this.sessions.get(sessionOf(m));
    const call = new RunningCall(this, id, method, session, timeout);
    this.running.set(id, call);
    this.host.deadlines.add(call, timeout);
    session.track(call);
    const caller = {
      address: typeof meta.address === 'string' ? meta.address : 'unknown',
      identity: typeof meta.identity === 'string' ? meta.identity : null,
    };
    const ctx = new HandlerContext(call, caller, this.host.name, Date.now() + timeout, this.host.log);
    work(ctx).then(
      (result) => this.finish(call, undefined, result),
      (err) => this.finish(call, err, undefined),
    );
  }

  private finish(call: RunningCall, err: unknown, result: Uint8Array | Pieces | undefined): void {
    this.host.deadlines.remove(call);
    call.session.untrack(call);
    const mine = this.running.get(call.id) === call;
    if (mine) this.running.delete(call.id);
    this.answer(call, err, result);
    if (mine) {
      this.host.served++;
      this.host.callFinished();
    }
  }

  private answer(call: RunningCall, err: unknown, result: Uint8Array | Pieces | undefined): void {
    // Cancelled, timed out, or the connection is gone: nobody is waiting for this answer.
    if (call.aborted || !this.conn.isOpen) return;
    if (err !== undefined) {
      const error = TunnelError.from(err);
      if (!(err instanceof TunnelError)) {
        // A TunnelError is an answer the handler chose; anything else is a bug or a failure of the
        // service, so the node's operator sees it with its stack. The caller gets the message only.
        this.host.log.warn({ method: call.method, err: err instanceof Error ? err : String(err) }, 'handler threw');
      }
      this.conn.send(response(call.id, error.toWire(), null));
      return;
    }
    const pieces = Array.isArray(result) ? result : [result!];
    const length = piecesLength(pieces);
    if (length > this.peerMaxMessage) {
      this.host.log.warn({ method: call.method, bytes: length, limit: this.peerMaxMessage }, 'result too large for the relay');
      const message = `the result of ${call.method} is ${length} bytes; the relay passes at most ${this.peerMaxMessage}`;
      this.conn.send(response(call.id, new TunnelError(ErrorCode.TOO_LARGE, message).toWire(), null));
      return;
    }
    if (this.waiting.length > 0 || this.conn.socketBacklog > this.host.maxBacklog) {
      this.waiting.push({ call, pieces, length });
      this.waitingBytes += length;
      this.waitingBySession.set(call.session.id, (this.waitingBySession.get(call.session.id) ?? 0) + length);
      this.waitTimer ??= setTimeout(this.sendWaiting, WAIT_POLL);
      return;
    }
    this.send(call, pieces, length);
  }

  private send(call: RunningCall, pieces: Pieces, length: number): void {
    if (length > STREAM_THRESHOLD) this.conn.sendStream(responseStream(call.id, length), call.id, pieces);
    else this.conn.sendEncoded(encodeResult(call.id, join(pieces)));
  }

  /** Sends held answers while the socket has room; those of calls cancelled meanwhile are dropped. */
  private readonly sendWaiting = (): void => {
    this.waitTimer = undefined;
    while (this.waiting.length > 0 && this.conn.socketBacklog <= this.host.maxBacklog) {
      const { call, pieces, length } = this.waiting.shift()!;
      this.waitingBytes -= length;
      const left = (this.waitingBySession.get(call.session.id) ?? 0) - length;
      if (left > 0) this.waitingBySession.set(call.session.id, left);
      else this.waitingBySession.delete(call.session.id);
      if (!call.aborted && this.conn.isOpen) this.send(call, pieces, length);
    }
    if (this.waiting.length > 0 && this.conn.isOpen) this.waitTimer = setTimeout(this.sendWaiting, WAIT_POLL);
    else {
      this.waiting.length = 0;
      this.waitingBytes = 0;
      this.waitingBySession.clear();
    }
  };

  /**
   * Why a new request of `session` is refused now (OVERLOADED), or undefined when it may run. A
   * session whose own answers wait beyond `maxBacklog` gets no more work done until they leave; other
   * sessions go on (their answers wait in line), until the held answers of all of them reach
   * {@link HELD_FACTOR} times `maxBacklog`.
   */
  private busy(session: string): string | undefined {
    if (this.running.size >= this.host.maxInFlight) {
      return `node ${this.host.name} already runs ${this.running.size} calls on this connection (its --max-in-flight); try again shortly`;
    }
    const mine = this.waitingBySession.get(session) ?? 0;
    if (mine > this.host.maxBacklog || this.waitingBytes > HELD_FACTOR * this.host.maxBacklog) {
      return `node ${this.host.name} has more answers waiting to be sent than its --max-backlog of ${this.host.maxBacklog} bytes allows (the relay or the network is slow); try again shortly`;
    }
    return undefined;
  }
}

/** How often held answers look for room in the socket, ms. */
const WAIT_POLL = 5;
/** Answers held back for all sessions together, in units of `maxBacklog`, before every new request is refused. */
const HELD_FACTOR = 16;

function asBroadcastEntry(work: (ctx: CallContext) => Promise<Uint8Array | Pieces>, node: string): (ctx: CallContext) => Promise<Pieces> {
  return async (ctx) => {
    const started = performance.now();
    let entry: WireBroadcastEntry;
    try {
      const result = await work(ctx);
      entry = { node, ms: Math.round(performance.now() - started), error: null, result: join(Array.isArray(result) ? result : [result]) };
    } catch (err) {
      entry = { node, ms: Math.round(performance.now() - started), error: TunnelError.from(err).toWire(), result: null };
    }
    return resultPieces([entry]);
  };
}

function sessionOf(m: Request): string {
  return typeof m.meta.session === 'string' ? m.meta.session : `anonymous-${m.id}`;
}

function encodeReturned(method: string, value: unknown): Pieces {
  try {
    return resultPieces(value);
  } catch (e) {
    throw new TunnelError(ErrorCode.APP_ERROR, `${method} returned a value that cannot be encoded: ${(e as Error).message}`);
  }
}

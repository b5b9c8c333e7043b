import type { Socket } from 'node:net';
import { ErrorCode, TunnelError, type WireError } from '../../errors.js';
import { peerIp } from '../../util/address.js';
import type { Logger } from '../../util/logger.js';
import { decode } from '../../wire/codec.js';
import { MessagePackFramer } from '../../wire/framer.js';
import { errorResponse, MsgpackRpcReader, responseWithResult, valueResponse, type CallEnvelope, type EnvelopeFault } from '../../wire/msgpack-rpc-envelope.js';
import { checkOneValue } from '../../wire/skip.js';
import { TurnWriter } from '../../wire/turn-writer.js';
import { BacklogGuard } from '../../wire/backlog-guard.js';
import { Kind, MAX_ID } from '../../wire/messages.js';
import type { CallerLink } from '../caller-link.js';
import type { MsgpackRpcPortSettings } from '../options.js';
import type { MsgpackRpcHost } from './hub.js';

/**
 * Checks a token given with `Relay.Auth(token)` and returns the caller's identity, or null to refuse.
 * With one, every connection must call `Relay.Auth` before anything else.
 */
export type CallerAuthenticator = (token: string, address: string) => string | null;

/** The method a caller uses to present a relay-level token on this port. */
export const AUTH_METHOD = 'Relay.Auth';

/** What one connection is bound by: the port's settings (options.ts) and its authenticator. @internal */
export type RpcConnectionSettings = Pick<
  MsgpackRpcPortSettings,
  'maxMessage' | 'idleTimeout' | 'firstRequestTimeout' | 'maxBacklog' | 'slowConsumerTimeout'
> & {
  authenticate?: CallerAuthenticator | undefined;
};

/** A closing connection that does not hang up its side is destroyed after this long, ms. */
const LINGER = 1_000;

interface Pending {
  /** The caller's msgid, echoed in the answer; undefined for a notification, which gets none. */
  msgid: number | undefined;
}

/**
 * One caller connection on the port: reads the envelope of each request, feeds its caller session,
 * writes answers. Params go to the node and results come back as the bytes they came in: they are
 * a MessagePack array and value already, exactly what the native protocol carries in its bins
 * (wire/msgpack-rpc-envelope.ts). The port (msgpack-rpc.ts) admits the socket and calls
 * {@link onClose} when it closes. @internal
 */
export class RpcConnection {
  private readonly framer: MessagePackFramer;
  private readonly reader = new MsgpackRpcReader();
  /** The caller session, opened by the first call or by `Relay.Auth`. */
  private link: CallerLink | undefined;
  /** The session was opened by `Relay.Auth` with a token that proved an identity. */
  private authenticated = false;
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private closed = false;
  /** Answers of this event-loop turn, not yet handed to the socket. */
  private readonly out: TurnWriter;
  /** The slow-consumer rule: not read while its backlog is high, cut if it stays so. */
  private readonly guard: BacklogGuard;
  /** One answer bigger than `maxBacklog` on its own raises the hard cut by what it is over. */
  private allowance = 0;
  private received = false;
  private lastActive = Date.now();
  private idleTimer: NodeJS.Timeout;

  constructor(
    private readonly socket: Socket,
    private readonly address: string,
    private readonly relay: MsgpackRpcHost,
    private readonly opts: RpcConnectionSettings,
    private readonly log: Logger,
  ) {
    this.framer = new MessagePackFramer(opts.maxMessage);
    this.out = new TurnWriter(socket, () => !this.closed, setImmediate);
    this.guard = new BacklogGuard({
      maxBacklog: opts.maxBacklog,
      timeout: opts.slowConsumerTimeout,
      recheck: () => this.checkBacklog(),
      pause: (backlog) => {
        socket.pause();
        this.log.debug(
          { session: this.link?.session, backlogBytes: backlog, limit: opts.maxBacklog },
          'msgpack-rpc caller is not reading its answers; not reading from it until it does',
        );
        return true;
      },
      resume: () => socket.resume(),
    });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'msgpack-rpc socket error'));
    socket.on('drain', () => this.checkBacklog());
    this.idleTimer = setTimeout(this.onIdleTimer, opts.firstRequestTimeout);
    this.log.debug('msgpack-rpc caller connected');
  }

  private open(identity: string | null): CallerLink {
    return this.relay.sessions.open(
      {
        respond: (id, error, result) => this.respond(id, error, result),
        reassembled: () => this.reassembled(),
        // Too many failed Logins, a revoked token: MessagePack-RPC has no close reason, so a reply already sent says it.
        close: (_code, reason) => this.end(reason),
      },
      this.address,
      identity,
      this.log,
      undefined,
      'msgpack-rpc',
    );
  }

  onClose(): void {
    this.closed = true;
    this.release();
    this.log.debug({ session: this.link?.session }, 'msgpack-rpc caller disconnected');
  }

  /** Ends the session at once (its calls are cancelled on the nodes) and drops what was queued. */
  private release(): void {
    clearTimeout(this.idleTimer);
    this.guard.stop();
    this.pending.clear();
    this.out.drop();
    if (this.link) this.relay.sessions.close(this.link);
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.received = true;
    this.lastActive = Date.now();
    let frames: Buffer[];
    try {
      frames = this.framer.push(chunk);
    } catch (err) {
      return this.fail(TunnelError.from(err).message); // nothing past a bad header can be read
    }
    for (const frame of frames) {
      if (this.closed) return;
      let envelope: CallEnvelope | EnvelopeFault;
      try {
        envelope = this.reader.readCall(frame);
      } catch (err) {
        return this.fail(`invalid MessagePack: ${(err as Error).message}`);
      }
      if ('fatal' in envelope) return this.fail(envelope.fatal);
      if ('refused' in envelope) this.replyError(envelope.msgid, ErrorCode.BAD_REQUEST, envelope.refused);
      else this.onCall(envelope);
    }
  }

  /**
   * First a connection must send something within `firstRequestTimeout`; then it is closed once it
   * has had no call in flight and sent nothing for `idleTimeout`. One timer, moved on lazily, so
   * that a busy connection costs nothing per message.
   */
  private readonly onIdleTimer = (): void => {
    if (this.closed) return;
    if (!this.received) {
      this.log.info({ firstRequestTimeoutMs: this.opts.firstRequestTimeout }, 'closing msgpack-rpc connection that sent nothing');
      return this.end(`no request within ${this.opts.firstRequestTimeout} ms of connecting`);
    }
    const left = this.pending.size > 0 ? this.opts.idleTimeout : this.lastActive + this.opts.idleTimeout - Date.now();
    if (left > 0) {
      this.idleTimer = setTimeout(this.onIdleTimer, left);
      return;
    }
    this.log.info({ session: this.link?.session, idleTimeoutMs: this.opts.idleTimeout }, 'closing idle msgpack-rpc connection');
    this.end(`idle for ${this.opts.idleTimeout} ms`);
  };

  /** A request or a notification: answered here, or routed to a node with the params bytes as they are. */
  private onCall({ msgid, method, params }: CallEnvelope): void {
    if (method === AUTH_METHOD) return this.auth(msgid, decode(params) as unknown[]);
    const link = this.session();
    if (typeof link === 'string') return this.replyError(msgid, ErrorCode.UNAUTHORIZED, link);
    // `node/Service.Method` names the node, as --node does for tunnel-call.
    const slash = method.indexOf('/');
    const meta: Record<string, unknown> = {};
    if (slash >= 0) meta.node = method.slice(0, slash);
    const name = slash >= 0 ? method.slice(slash + 1) : method;
    const id = this.allocate();
    this.pending.set(id, { msgid });
    link.onMessage({ kind: Kind.REQUEST, id, method: name, params, meta, stream: 0 });
  }

  /** Callers need a token while a custom authenticator is set, or while the relay requires one: asked now, not at start. */
  private get tokenRequired(): boolean {
    return this.opts.authenticate !== undefined || this.relay.sessions.callersNeedAuth;
  }

  /** The session a call goes to, opened anonymously while that is allowed; or why the call is refused. */
  private session(): CallerLink | string {
    if (this.link && (this.authenticated || !this.tokenRequired)) return this.link;
    if (this.link) return `this relay now requires a caller token: reconnect and call ${AUTH_METHOD}(token) first`;
    if (this.tokenRequired) return `this relay requires a caller token: call ${AUTH_METHOD}(token) first on this connection`;
    this.link = this.open(null);
    return this.link;
  }

  /**
   * `Relay.Auth(token)`. A refused token ends the connection after its answer, as NATS does: a
   * guesser pays a new connection per try, and every wrong token counts against its address on
   * every door (auth-failures.ts); a backed-off address is refused unchecked.
   */
  private auth(msgid: number | undefined, params: unknown[]): void {
    if (this.authenticated) return this.replyError(msgid, ErrorCode.BAD_REQUEST, 'this connection is already authenticated');
    const token = typeof params[0] === 'string' && params.length === 1 ? params[0] : undefined;
    const backedOff = token === undefined ? undefined : this.relay.authFailures.refusal(this.ip, 'msgpack-rpc');
    if (backedOff) {
      this.replyError(msgid, ErrorCode.UNAUTHORIZED, backedOff.message);
      return this.end(backedOff.message);
    }
    const identity = this.check(token);
    if (identity === undefined) {
      const reason = `${AUTH_METHOD} takes one string, a caller token the relay accepts; this one was refused`;
      this.replyError(msgid, ErrorCode.UNAUTHORIZED, reason);
      return this.end(reason);
    }
    if (this.link) {
      // Anonymous calls already made use of this session: it cannot take an identity afterwards.
      if (identity !== null)
        return this.replyError(msgid, ErrorCode.BAD_REQUEST, `this connection already calls without a token; reconnect and call ${AUTH_METHOD} first`);
      return this.replyValue(msgid, true);
    }
    this.link = this.open(identity);
    // Any token is accepted while the relay requires none; that session stays anonymous, and stops once a reload requires tokens.
    this.authenticated = identity !== null;
    this.replyValue(msgid, true);
  }

  /** The identity a token proves (null: anonymous, on a relay that requires no token), or undefined when refused; a wrong token is counted. */
  private check(token: string | undefined): string | null | undefined {
    const custom = this.opts.authenticate;
    if (!custom) {
      try {
        return this.relay.sessions.admit(token, this.address, 'msgpack-rpc').identity;
      } catch {
        return undefined;
      }
    }
    if (token === undefined) return undefined;
    const identity = custom(token, this.address);
    if (identity !== null) return identity;
    if (this.relay.authFailures.failed(this.ip, 'msgpack-rpc', 'caller token refused by the port authenticator', this.address)) {
      this.log.warn({ reason: 'caller token refused by the port authenticator' }, 'refused caller token');
      this.relay.doorEvents.refused(undefined, { door: 'msgpack-rpc', address: this.address }, 'caller token refused');
    }
    return undefined;
  }

  private get ip(): string {
    return peerIp(this.socket);
  }

  /** A connection-local id for the caller session; msgids may repeat or be any size, these may not. */
  private allocate(): number {
    do this.nextId = this.nextId >= MAX_ID ? 1 : this.nextId + 1;
    while (this.pending.has(this.nextId));
    return this.nextId;
  }

  private respond(id: number, error: WireError | null, result: Uint8Array | null): void {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (this.pending.size === 0) this.lastActive = Date.now();
    if (p.msgid === undefined) {
      if (error) this.log.debug({ code: error.code, err: error.message }, 'notification failed');
      return;
    }
    if (error) return this.replyError(p.msgid, error.code, error.message);
    if (result === null) return this.replyValue(p.msgid, null);
    try {
      checkOneValue(result); // a node's bytes go into the caller's stream as they are, so they must be one valid value
    } catch (err) {
      return this.replyError(p.msgid, ErrorCode.PROTOCOL_ERROR, `the node answered with a result that is not valid MessagePack: ${(err as Error).message}`);
    }
    this.write(...responseWithResult(p.msgid, result));
  }

  private replyValue(msgid: number | undefined, value: unknown): void {
    if (msgid !== undefined) this.write(valueResponse(msgid, value));
  }

  /** Go's codec decodes the error into a string, so every error is one: "CODE: message". */
  private replyError(msgid: number | undefined, code: string, message: string): void {
    if (msgid === undefined) {
      this.log.debug({ code, err: message }, 'notification refused');
      return;
    }
    this.write(errorResponse(msgid, code, message));
  }

  /**
   * Bytes held for the caller: queued and not yet written to its socket, and results the relay is
   * reassembling for it (this door cannot pass chunks on), which it will have to write.
   */
  private get backlog(): number {
    return this.out.queued + this.socket.writableLength + (this.link?.budget.used ?? 0);
  }

  /**
   * A result grew in reassembly: charged as a write would be. The hard cut leaves room for one
   * result of the largest size on its way, so that a caller that reads is never cut for asking one.
   */
  private reassembled(): void {
    if (this.closed) return;
    this.relay.memory.poke();
    const max = this.opts.maxBacklog;
    const backlog = this.backlog;
    const allowance = Math.max(this.allowance, this.relay.limits.maxMessage - max);
    this.judge(backlog, allowance, true);
  }

  /**
   * Answers leaving in the same event-loop turn go out in one write. Every answer is charged to the
   * backlog at once: answers to calls already in flight keep coming after reading stops, and only
   * the cut bounds them.
   */
  private write(bytes: Uint8Array, more?: Uint8Array): void {
    if (this.closed) return;
    const max = this.opts.maxBacklog;
    const before = this.backlog;
    const size = bytes.length + (more?.length ?? 0);
    if (before <= max) this.allowance = Math.max(0, size - max);
    this.out.push(bytes, more);
    const after = before + size;
    if (after > max) this.relay.memory.poke();
    if (this.closed) return;
    this.judge(after, this.allowance);
  }

  /** On drain, and when the guard's time is up: back under the limit stops the clock; under an eighth of it, reading resumes. */
  private checkBacklog(): void {
    if (!this.closed) this.judge(this.backlog, this.allowance);
  }

  /** The slow-consumer rule (wire/backlog-guard.ts); a cut is worded only when it happens (this runs on every write). */
  private judge(backlog: number, allowance: number, reassembling = false): void {
    const cause = this.guard.check(backlog, allowance);
    if (!cause) return;
    const max = this.opts.maxBacklog;
    const reason =
      cause.kind !== 'twice'
        ? `backlog above ${max} bytes for ${this.opts.slowConsumerTimeout} ms`
        : `backlog reached twice the limit of ${max} bytes${reassembling ? ', with results reassembled for it' : ''}`;
    this.cut(backlog, reason);
  }

  /** What the relay holds for this caller, for its memory budget. */
  get held(): number {
    return this.closed ? 0 : this.backlog;
  }

  /** Cut to get the relay back under its memory budget. */
  shed(reason: string): void {
    if (!this.closed) this.cut(this.backlog, reason);
  }

  /** A slow consumer: everything queued for it is dropped with the socket, its calls are cancelled on the nodes. */
  private cut(backlog: number, reason: string): void {
    this.log.warn({ session: this.link?.session, backlogBytes: backlog, limit: this.opts.maxBacklog, reason }, 'slow consumer: closing connection');
    this.relay.doorEvents.slowConsumer({ door: 'msgpack-rpc', address: this.address, session: this.link?.session }, reason);
    this.closed = true;
    this.release();
    this.socket.destroy();
  }

  /** The stream cannot be read any further: say why in the log, send what is queued, close. */
  private fail(reason: string): void {
    if (this.closed) return;
    this.log.warn({ session: this.link?.session, reason }, 'closing msgpack-rpc connection after bad input');
    this.end(reason);
  }

  /** Sends what is queued, ends the session now, and closes the socket within {@link LINGER} ms. */
  private end(reason: string): void {
    if (this.closed) return;
    this.log.debug({ session: this.link?.session, reason }, 'closing msgpack-rpc connection');
    this.out.flush();
    this.closed = true;
    this.release();
    this.socket.end();
    // A peer that keeps its side open, or does not read what is left, must not hold the socket.
    setTimeout(() => this.socket.destroy(), LINGER).unref();
  }
}

import { connect, type Socket } from 'node:net';
import { ErrorCode, TunnelError } from '../errors.js';
import type { CallContext } from '../rpc/context.js';
import { dialAddress } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { MessagePackFramer } from '../wire/framer.js';
import { ANY_METHOD, MAX_ID } from '../wire/messages.js';
import { encodeMethod, errorText, MsgpackRpcReader, NOTIFICATION, requestWithParams, type Fatal, type ResponseEnvelope } from '../wire/msgpack-rpc-envelope.js';
import { checkOneValue } from '../wire/skip.js';
import { TurnWriter } from '../wire/turn-writer.js';
import { resolveForwardOptions, type ForwardArgs, type ForwardSettings } from './options.js';

export type { ForwardArgs } from './options.js';

/** Where a forwarded service's local MessagePack-RPC server listens. */
export type ForwardTarget = { host: string; port: number } | { path: string };

export interface ForwardOptions {
  /** Connections to the local server; calls are spread over them (default 2). */
  connections?: number;
  /** How long to wait for the local server to accept a connection, ms (default 5 000). */
  connectTimeout?: number;
  /** Largest answer accepted from the local server, bytes (default 16 MiB + 64 KiB). */
  maxMessage?: number;
  /**
   * `one` (default): a call with more than one argument is refused with BAD_REQUEST, because Go's
   * net/rpc decodes exactly one (a struct) and would silently answer a zero value. `any` passes every
   * argument on, for MessagePack-RPC servers that take positional parameters.
   */
  args?: ForwardArgs;
  log?: Logger;
}

const SERVICE_NAME = /^[A-Za-z_][\w.-]*$/;

/**
 * Parses a `--forward` value: `Name=host:port`, `Name=:port` or `Name=PORT` (127.0.0.1), or
 * `Name=unix:/path`. Throws an Error naming the flag and the mistake.
 */
export function parseForward(text: string): { name: string; target: ForwardTarget } {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new Error(`--forward takes Name=host:port or Name=unix:/path, got "${text}"`);
  const name = text.slice(0, eq);
  const where = text.slice(eq + 1);
  if (!SERVICE_NAME.test(name)) throw new Error(`--forward "${text}": service name "${name}" must start with a letter and hold only letters, digits, _ . -`);
  if (where.startsWith('unix:')) {
    const path = where.slice(5);
    if (path === '') throw new Error(`--forward "${text}": give the socket path after unix:`);
    return { name, target: { path } };
  }
  return { name, target: dialAddress(where, '--forward', '127.0.0.1', text) };
}

export function describeTarget(target: ForwardTarget): string {
  return 'path' in target ? `unix:${target.path}` : `${target.host.includes(':') ? `[${target.host}]` : target.host}:${target.port}`;
}

/**
 * A service the node does not implement but passes to an existing local MessagePack-RPC server
 * (Go net/rpc with ugorji's MsgpackSpecRpc codec, or any msgpack-rpc program) unchanged: the caller's
 * params go out as they came, the server's result comes back, its error string becomes APP_ERROR.
 * Its methods are not known in advance, so it is announced with the method `*`.
 *
 * Calls are spread over a small pool of connections, each opened when first needed and opened again
 * after the server closes it (a restart). While the server is down, calls fail at once with a message
 * that says so; nothing waits for it to come back.
 */
export class ForwardedService {
  readonly methods = [ANY_METHOD];
  private readonly opts: ForwardSettings & ForwardOptions;
  private readonly log: Logger;
  private readonly pool: (Upstream | undefined)[];
  private cursor = 0;
  private reachable = true;
  private closed = false;
  /** Method names as MessagePack str, encoded once: every request repeats one of a few. */
  private readonly names = new Map<string, Buffer>();

  constructor(
    readonly name: string,
    readonly target: ForwardTarget,
    options: ForwardOptions = {},
  ) {
    this.opts = resolveForwardOptions(options);
    this.log = (options.log ?? silentLogger).child({ service: name, forward: describeTarget(target) });
    this.pool = new Array<Upstream | undefined>(this.opts.connections).fill(undefined);
  }

  /**
   * Calls `method` (`Service.Method`, sent as it is) on the local server with `params` (a MessagePack
   * array); resolves to the encoded result.
   */
  call(method: string, params: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(new TunnelError(ErrorCode.GOING_AWAY, `forwarded service ${this.name} is shutting down`));
    let count: number;
    try {
      // Checked here, because a bad value sent on would break a connection that other callers share.
      count = checkParams(params);
    } catch (err) {
      return Promise.reject(err);
    }
    if (count > 1 && this.opts.args === 'one') {
      return Promise.reject(
        new TunnelError(
          ErrorCode.BAD_REQUEST,
          `forwarded service ${this.name} follows Go's net/rpc: it takes exactly one argument (a struct as a JSON object, e.g. '{"A":2,"B":3}'); got ${count}` +
            ' (a server that takes several: tunnel-node --forward-args any)',
        ),
      );
    }
    const upstream = this.pick();
    if (upstream.isConnected) return upstream.call(this.encodedName(method), params, ctx);
    return upstream.ready(ctx.signal).then(() => {
      ctx.signal.throwIfAborted();
      return upstream.call(this.encodedName(method), params, ctx);
    });
  }

  private encodedName(method: string): Buffer {
    let name = this.names.get(method);
    if (name === undefined) {
      // Method names come from callers: keep the cache from growing without bound.
      if (this.names.size >= 1024) this.names.clear();
      name = encodeMethod(method);
      this.names.set(method, name);
    }
    return name;
  }

  /** Closes every connection to the local server; calls in flight fail. */
  close(): void {
    this.closed = true;
    for (const u of this.pool) u?.destroy(new TunnelError(ErrorCode.GOING_AWAY, `forwarded service ${this.name} is shutting down`));
  }

  /** The next connection in turn, opening it if it is not open. */
  private pick(): Upstream {
    const i = this.cursor;
    this.cursor = (i + 1) % this.pool.length;
    const current = this.pool[i];
    if (current && !current.closed) return current;
    const u = new Upstream(this, this.target, this.opts);
    this.pool[i] = u;
    return u;
  }

  /** Logs the server coming and going once per change, not once per call. */
  onReachable(up: boolean, detail: Record<string, unknown>): void {
    if (up === this.reachable) return;
    this.reachable = up;
    if (up) this.log.info(detail, 'forward target reachable');
    else this.log.warn(detail, 'forward target unreachable');
  }
}

/**
 * A call sent and not yet answered. Its caller's AbortSignal is only looked at once the call has
 * waited a whole {@link SWEEP_INTERVAL}: most calls are answered long before, and then never make
 * one (an AbortController and its listener cost more than the rest of the call's forwarding).
 */
interface Waiting {
  resolve(bytes: Uint8Array): void;
  reject(err: unknown): void;
  ctx: CallContext;
  /** The sweep count when the call was sent. */
  sent: number;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/**
 * One connection to the local server: MessagePack-RPC requests out, responses matched by msgid.
 * Neither params nor results are decoded: a request is the params bytes behind a header with our
 * msgid, and a response's result element is handed on as the bytes the server wrote.
 */
class Upstream {
  closed = false;
  isConnected = false;
  private readonly socket: Socket;
  private readonly framer: MessagePackFramer;
  private readonly reader = new MsgpackRpcReader();
  private readonly pending = new Map<number, Waiting>();
  private readonly connected: Promise<void>;
  private nextId = 0;
  /** Requests of this event-loop turn, written together on the next tick. */
  private readonly out: TurnWriter;
  private sweeps = 0;
  private sweepTimer: NodeJS.Timeout | undefined;
  private wasConnected = false;
  private error: TunnelError | undefined;

  constructor(
    private readonly service: ForwardedService,
    target: ForwardTarget,
    opts: ForwardSettings,
  ) {
    this.framer = new MessagePackFramer(opts.maxMessage);
    this.socket = 'path' in target ? connect(target.path) : connect(target.port, target.host);
    this.socket.setNoDelay(true);
    this.out = new TurnWriter(this.socket, () => !this.closed, process.nextTick);
    const where = describeTarget(target);
    this.connected = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.destroy(
          new TunnelError(
            ErrorCode.APP_ERROR,
            `forwarded service ${service.name}: the local server at ${where} did not accept a connection within ${opts.connectTimeout} ms`,
          ),
        );
      }, opts.connectTimeout);
      this.socket.once('connect', () => {
        clearTimeout(timer);
        this.wasConnected = true;
        this.isConnected = true;
        service.onReachable(true, {});
        resolve();
      });
      this.socket.once('close', () => {
        clearTimeout(timer);
        reject(this.error);
      });
    });
    this.connected.catch(() => undefined);
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (err: NodeJS.ErrnoException) => {
      const failing = !this.wasConnected && !this.error;
      this.error ??= failing
        ? new TunnelError(
            ErrorCode.APP_ERROR,
            `forwarded service ${service.name}: cannot reach the local server at ${where} (${err.code ?? err.message}); is it running?`,
          )
        : new TunnelError(
            ErrorCode.APP_ERROR,
            `forwarded service ${service.name}: the connection to the local server at ${where} was lost (${err.code ?? err.message}) while the call was in flight; it may or may not have run`,
          );
      if (failing) service.onReachable(false, { err: err.code ?? err.message });
    });
    this.socket.on('close', () => this.onClose(where));
  }

  /** Resolves once connected; rejects with the reason the connection could not be made. */
  ready(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(signal.reason);
    return this.connected;
  }

  /** Sends `[0, msgid, method, params]` (`name` is the method as a MessagePack str) and waits for its answer. */
  call(name: Buffer, params: Uint8Array, ctx: CallContext): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(this.error);
    const id = this.allocate();
    this.send(id, name, params);
    return new Promise<Uint8Array>((resolve, reject) => {
      // The server may still answer after the caller gave up; that answer is dropped by msgid.
      this.pending.set(id, { resolve, reject, ctx, sent: this.sweeps, signal: undefined, onAbort: undefined });
      this.sweepTimer ??= setTimeout(this.sweep, SWEEP_INTERVAL).unref();
    });
  }

  destroy(reason: TunnelError): void {
    this.error ??= reason;
    this.socket.destroy();
  }

  private allocate(): number {
    do this.nextId = this.nextId >= MAX_ID ? 1 : this.nextId + 1;
    while (this.pending.has(this.nextId));
    return this.nextId;
  }

  /** Queues one request: small params are copied behind the header, large ones written after it as they are. */
  private send(id: number, name: Buffer, params: Uint8Array): void {
    this.out.push(...requestWithParams(id, name, params));
  }

  /** Calls that have waited a whole interval start listening for their caller giving up. */
  private readonly sweep = (): void => {
    this.sweepTimer = undefined;
    this.sweeps++;
    for (const [id, w] of this.pending) {
      if (w.signal !== undefined || this.sweeps - w.sent < 2) continue;
      const signal = w.ctx.signal;
      if (signal.aborted) {
        this.pending.delete(id);
        w.reject(signal.reason);
        continue;
      }
      w.signal = signal;
      w.onAbort = () => {
        this.pending.delete(id);
        w.reject(signal.reason);
      };
      signal.addEventListener('abort', w.onAbort, { once: true });
    }
    if (this.pending.size > 0) this.sweepTimer = setTimeout(this.sweep, SWEEP_INTERVAL).unref();
  };

  private onData(chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = this.framer.push(chunk);
    } catch (err) {
      return this.destroy(this.invalid(TunnelError.from(err).message));
    }
    for (const frame of frames) {
      let envelope: ResponseEnvelope | typeof NOTIFICATION | Fatal;
      try {
        envelope = this.reader.readResponse(frame);
      } catch (err) {
        return this.destroy(this.invalid((err as Error).message));
      }
      if (envelope === NOTIFICATION) continue; // nothing here subscribes to the server's notifications
      if ('fatal' in envelope) return this.destroy(this.invalid(envelope.fatal));
      this.settle(envelope);
    }
  }

  private settle({ msgid: id, error, result }: ResponseEnvelope): void {
    const w = this.pending.get(id);
    if (!w) return; // its caller gave up
    this.pending.delete(id);
    if (w.onAbort) w.signal!.removeEventListener('abort', w.onAbort);
    if (error !== null && error !== undefined) {
      w.reject(new TunnelError(ErrorCode.APP_ERROR, errorText(error)));
      return;
    }
    w.resolve(result);
  }

  private invalid(what: string): TunnelError {
    return new TunnelError(
      ErrorCode.APP_ERROR,
      `forwarded service ${this.service.name}: the local server sent ${what}, so its connection was closed; the call may or may not have run`,
    );
  }

  private onClose(where: string): void {
    this.closed = true;
    this.isConnected = false;
    clearTimeout(this.sweepTimer);
    const error =
      this.error ??
      new TunnelError(
        ErrorCode.APP_ERROR,
        `forwarded service ${this.service.name}: the local server at ${where} closed the connection while the call was in flight; it may or may not have run`,
      );
    this.error = error;
    if (this.pending.size > 0) this.service.onReachable(false, { err: 'connection closed', failedCalls: this.pending.size });
    for (const w of this.pending.values()) {
      if (w.onAbort) w.signal!.removeEventListener('abort', w.onAbort);
      w.reject(error);
    }
    this.pending.clear();
  }
}

/** How often calls still waiting are looked at, ms; one that has waited a whole interval then listens for its cancellation. */
const SWEEP_INTERVAL = 100;

/** What decodeParams checked, without building the values: one valid MessagePack array. Returns its length. */
function checkParams(params: Uint8Array): number {
  try {
    checkOneValue(params);
  } catch (err) {
    throw new TunnelError(ErrorCode.BAD_REQUEST, `params are not valid MessagePack: ${(err as Error).message}`);
  }
  const t = params[0]!;
  if (t >= 0x90 && t <= 0x9f) return t & 0x0f;
  if (t === 0xdc) return (params[1]! << 8) | params[2]!;
  if (t === 0xdd) return ((params[1]! << 24) | (params[2]! << 16) | (params[3]! << 8) | params[4]!) >>> 0;
  throw new TunnelError(ErrorCode.BAD_REQUEST, 'params must be a MessagePack array');
}

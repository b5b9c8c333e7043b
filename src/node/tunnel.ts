import type { TunnelState } from './tunnel-state.js';
import { ErrorCode, TunnelError } from '../errors.js';
import type { Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { Connection } from '../wire/connection.js';
import type { LookupAddress } from 'node:dns';
import type { LookupFunction } from 'node:net';
import { RelayDial, resolveAll, type LoadedTls } from '../wire/dial.js';
import { goaway, hello, Kind, type Hello, type Message, type Welcome } from '../wire/messages.js';
import { Backoff } from '../util/backoff.js';
import { Dispatcher, type DispatchHost } from './dispatcher.js';
import { RelayRotation } from './relay-rotation.js';
import type { SessionTable } from './sessions.js';

/** How a tunnel dials and keeps its relay: the node's options, the same for every tunnel. */
export interface TunnelOptions {
  readonly token: string | undefined;
  readonly tls: LoadedTls;
  /** Largest message accepted from the relay, bytes. */
  readonly maxMessage: number;
  readonly heartbeatTimeout: number;
  readonly reconnectBase: number;
  readonly reconnectCap: number;
  readonly reconnectReset: number;
  /** Resolves the relay's host name to every address (the system resolver when undefined). */
  readonly lookup: LookupFunction | undefined;
}

/** What a tunnel needs from the node that owns it, and what it tells the node. */
export interface TunnelHost {
  /** Services, deadline wheel and limits; each tunnel adds its own `callFinished` and log. */
  readonly dispatch: DispatchHost;
  /** One table for every tunnel: a caller's session id is unique across the relays of a cluster. */
  readonly sessions: SessionTable;
  /** The node's hello, the same on every tunnel (one name, one instance): relays see one process. */
  hello(): Hello;
  /**
   * The relay accepted this tunnel; returns what the relay calls itself (its welcome's `url`), when
   * it says, and the other relays of its cluster it listed (for the log).
   */
  welcomed(tunnel: RelayTunnel, welcome: Welcome): { self: string | undefined; relays: string[] };
  /** The relays of the cluster this tunnel may move to when its relay stays unreachable. */
  candidates(tunnel: RelayTunnel): readonly string[];
  /** This tunnel closed (or never opened); its calls are already aborted. It reconnects by itself. */
  lost(tunnel: RelayTunnel, code: number, reason: string): void;
  /** A relay said a caller disconnected: the session ends on every tunnel. */
  sessionClosed(session: string): void;
}

/**
 * The node's connection to one relay, kept forever: dial, hello, welcome, the relay's GOAWAY, and
 * reconnects with its own jittered backoff, one timer at a time. The calls that arrive on it run on
 * its {@link Dispatcher}; when it drops, only those calls are aborted.
 *
 * A relay's host name may have several addresses: one round of dials tries each in turn at once
 * (the one that last worked last), and only a round that fails backs off. When the relay stays
 * unreachable the tunnel may move to another relay of the cluster ({@link RelayRotation}).
 */
export class RelayTunnel {
  /** Which relay this tunnel dials: the configured one or a relay of the cluster. */
  readonly rotation: RelayRotation;
  private log: Logger;
  private readonly backoff: Backoff;
  private dispatch: DispatchHost;
  /** The addresses of the current relay's name left to try in this round, and the one that last worked. */
  private round: LookupAddress[] = [];
  private lastAddress: string | undefined;
  /** The address of the connection being dialled or open, for logs. */
  private address: string | undefined;
  /** Bumped by every dial: a resolution that ends after a newer dial (or a close) is dropped. */
  private dialSeq = 0;
  private conn: Connection | undefined;
  private link: Dispatcher | undefined;
  private welcomed = false;
  private changedAt: Date | undefined;
  private services: string[] = [];
  /** The relay of the current connection sent GOAWAY: leave once its running calls are answered. */
  private relayGoingAway = false;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private healthyTimer: NodeJS.Timeout | undefined;
  /** The node is stopping: no reconnect, no leaving on our own. */
  private closing = false;
  /** A ws:// dial hung up and the port was asked whether it speaks TLS (once per tunnel). */
  private probedTls = false;
  private whenClosed: (() => void) | undefined;

  constructor(
    readonly url: string,
    private readonly host: TunnelHost,
    private readonly opts: TunnelOptions,
  ) {
    this.rotation = new RelayRotation(url, () => host.candidates(this));
    this.backoff = new Backoff(opts.reconnectBase, opts.reconnectCap);
    this.log = host.dispatch.log.child({ relay: url });
    this.dispatch = this.dispatchWith(this.log);
  }

  /** What the calls of a connection use: its log names the relay dialled. */
  private dispatchWith(log: Logger): DispatchHost {
    return {
      ...this.host.dispatch,
      log,
      callFinished: () => {
        this.host.dispatch.callFinished();
        this.leaveIfRelayGoingAway();
      },
    };
  }

  /** The relay dialled now: {@link url}, or the relay of the cluster the tunnel moved to. */
  get current(): string {
    return this.rotation.current;
  }

  /** True while the relay has accepted this tunnel. */
  get connected(): boolean {
    return this.welcomed && this.conn?.isOpen === true;
  }

  /** The calls of the current connection, if there is one. */
  get dispatcher(): Dispatcher | undefined {
    return this.link;
  }

  get running(): number {
    return this.link?.size ?? 0;
  }

  get state(): TunnelState {
    return { url: this.url, current: this.current, connected: this.connected, since: this.changedAt, running: this.running };
  }

  start(): void {
    this.dial();
  }

  /**
   * The node is stopping: asks the relay to route no new calls here and stops reconnecting. Returns
   * whether the relay was told (the tunnel was open).
   */
  goaway(reason: string): boolean {
    this.stopReconnecting();
    if (!this.conn?.isOpen) return false;
    this.conn.send(goaway(reason));
    return true;
  }

  /** Closes the tunnel for good; resolves once the relay has seen the close (at most 2 s). */
  async close(reason: string): Promise<void> {
    this.stopReconnecting();
    const conn = this.conn;
    if (!conn) return;
    if (!conn.isOpen) {
      conn.terminate();
      return;
    }
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, 2_000);
      this.whenClosed = () => {
        clearTimeout(timer);
        resolve();
      };
      conn.close(CloseCode.GOING_AWAY, reason);
    });
  }

  private stopReconnecting(): void {
    this.closing = true;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
    clearTimeout(this.healthyTimer);
  }

  /** The next address of this round, or a new round: the relay's name resolved again. */
  private dial(): void {
    this.reconnectTimer = undefined;
    if (this.closing) return;
    const seq = ++this.dialSeq;
    const next = this.round.shift();
    if (next) return this.open(next);
    const url = this.current;
    resolveAll(new URL(url).hostname.replace(/^\[(.*)\]$/, '$1'), this.opts.lookup).then(
      (addresses) => {
        if (this.closing || seq !== this.dialSeq || url !== this.current) return;
        // The address that worked last goes last: it is the likeliest to be the one that just failed.
        const i = addresses.findIndex((a) => a.address === this.lastAddress);
        this.round = i < 0 ? addresses : [...addresses.slice(i + 1), ...addresses.slice(0, i + 1)];
        this.open(this.round.shift()!);
      },
      (err: Error) => {
        if (this.closing || seq !== this.dialSeq) return;
        this.log.warn({ err: err.message }, 'could not resolve the relay host name');
        this.host.lost(this, CloseCode.ABNORMAL, err.message);
        this.roundFailed();
      },
    );
  }

  private open(address: LookupAddress): void {
    this.address = address.address;
    const dial = new RelayDial(this.current, {
      maxMessage: this.opts.maxMessage,
      handshakeTimeout: 10_000,
      token: this.opts.token,
      tls: this.opts.tls,
      address,
    });
    const conn: Connection = new Connection(
      dial.ws,
      {
        message: (m) => this.onMessage(conn, m),
        close: (code, reason) => {
          const end = dial.ended(code, reason);
          if (end.mayBeTls && !this.probedTls) {
            // Once per tunnel: the answer does not change while the node retries the same address.
            this.probedTls = true;
            void dial.probeTls().then((hint) => {
              if (hint) this.log.error({ relay: dial.url }, `${hint} (--relay ${dial.url.replace(/^ws:/, 'wss:')})`);
            });
          }
          this.onClose(conn, end.code, end.reason);
        },
      },
      { log: this.log, heartbeatTimeout: this.opts.heartbeatTimeout, maxFrame: this.opts.maxMessage },
    );
    this.conn = conn;
    this.link = new Dispatcher(this.dispatch, conn, this.host.sessions, false);
    this.welcomed = false;
    this.relayGoingAway = false;
    dial.ws.on('open', () => {
      const h = this.host.hello();
      this.services = Object.keys(h.services ?? {});
      conn.send(hello(h));
    });
  }

  private onMessage(conn: Connection, m: Message): void {
    if (conn !== this.conn) return;
    switch (m.kind) {
      case Kind.WELCOME:
        // One welcome per connection: a second one changes nothing (docs/PROTOCOL.md, "Messages").
        if (this.welcomed) return;
        this.welcomed = true;
        this.changedAt = new Date();
        if (typeof m.welcome.version === 'number') conn.peerVersion = m.welcome.version;
        this.link!.peerMaxMessage = typeof m.welcome.maxMessage === 'number' ? m.welcome.maxMessage : Infinity;
        this.lastAddress = this.address;
        this.round = [];
        {
          const { self, relays } = this.host.welcomed(this, m.welcome);
          this.rotation.connected(self);
          this.log.info({ services: this.services, address: this.address, ...(relays.length > 0 ? { cluster: relays } : {}) }, 'connected to relay');
        }
        clearTimeout(this.healthyTimer);
        this.healthyTimer = setTimeout(() => this.backoff.reset(), this.opts.reconnectReset);
        this.healthyTimer.unref();
        return;
      case Kind.GOAWAY:
        this.log.warn({ reason: m.reason, running: this.running }, 'relay is going away');
        this.relayGoingAway = true;
        this.leaveIfRelayGoingAway();
        return;
      case Kind.SESSION_CLOSED:
        this.host.sessionClosed(m.session);
        return;
      default:
        this.link!.onMessage(m);
    }
  }

  private onClose(conn: Connection, code: number, reason: string): void {
    if (conn !== this.conn) return;
    const wasConnected = this.welcomed;
    const link = this.link!;
    this.conn = undefined;
    this.link = undefined;
    this.welcomed = false;
    this.relayGoingAway = false;
    this.changedAt = new Date();
    clearTimeout(this.healthyTimer);
    // The relay has already failed these calls with NODE_LOST; nobody waits for their answers.
    link.drop(new TunnelError(ErrorCode.NODE_LOST, 'connection to the relay was lost'));
    if (wasConnected) this.log.warn({ code, reason, address: this.address }, 'disconnected from relay');
    else if (!this.closing) this.log.warn({ code, reason, address: this.address }, 'could not connect to relay');
    if (code === CloseCode.UNAUTHORIZED || code === CloseCode.NAME_CONFLICT) {
      const why = code === CloseCode.UNAUTHORIZED ? 'relay refused our credentials' : 'relay refused our name';
      this.log.error({ reason }, `${why}; retrying at the longest backoff`);
      this.backoff.exhaust();
      // The relay answered: its other addresses are the same relay and would say the same.
      this.round = [];
    }
    this.whenClosed?.();
    this.whenClosed = undefined;
    this.host.lost(this, code, reason);
    if (wasConnected) {
      this.rotation.disconnected();
      this.round = [];
      this.scheduleReconnect();
    } else if (this.round.length > 0 && !this.closing) {
      // Another address of the same name: at once, still one timer at a time.
      this.reconnectTimer = setTimeout(() => this.dial(), 0);
    } else {
      this.roundFailed();
    }
  }

  /** Every address of the relay failed: maybe move to another relay of the cluster, then back off. */
  private roundFailed(): void {
    if (this.closing) return;
    const from = this.current;
    const to = this.rotation.failed();
    if (to !== undefined) {
      this.round = [];
      this.lastAddress = undefined;
      this.log.info({ from, to }, 'relay stays unreachable; moving to another relay of the cluster');
      this.log = this.host.dispatch.log.child({ relay: to });
      this.dispatch = this.dispatchWith(this.log);
    }
    this.scheduleReconnect();
  }

  /** One timer at a time: a second close or error while a reconnect is pending does nothing. */
  private scheduleReconnect(): void {
    if (this.closing || this.reconnectTimer) return;
    const { delay, ceiling, attempt } = this.backoff.next();
    this.log.info({ attempt, delayMs: delay, ceilingMs: ceiling }, 'reconnecting');
    this.reconnectTimer = setTimeout(() => this.dial(), delay);
  }

  /**
   * The relay sent GOAWAY: it routes us no new calls and waits for the running ones. Once they are
   * answered, close and reconnect with backoff, reaching another relay behind the same address or
   * this one after its restart. The node's other tunnels are not affected.
   */
  private leaveIfRelayGoingAway(): void {
    const conn = this.conn;
    if (!this.relayGoingAway || !conn || this.running > 0 || this.closing) return;
    this.relayGoingAway = false;
    // Let the answers queued in this turn leave first: close() flushes the write queue.
    conn.close(CloseCode.GOING_AWAY, 'relay is going away; reconnecting');
  }
}

import type { TunnelState } from './tunnel-state.js';
import { ErrorCode, TunnelError } from '../errors.js';
import type { Logger } from '../util/logger.js';
import { CloseCode } from '../wire/close-codes.js';
import { Connection } from '../wire/connection.js';
import { dial, type LoadedTls, type Refusal } from '../wire/dial.js';
import { goaway, hello, Kind, type Hello, type Message } from '../wire/messages.js';
import { Backoff } from './backoff.js';
import { Dispatcher, type DispatchHost } from './dispatcher.js';
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
}

/** What a tunnel needs from the node that owns it, and what it tells the node. */
export interface TunnelHost {
  /** Services, deadline wheel and limits; each tunnel adds its own `callFinished` and log. */
  readonly dispatch: DispatchHost;
  /** One table for every tunnel: a caller's session id is unique across the relays of a cluster. */
  readonly sessions: SessionTable;
  /** The node's hello, the same on every tunnel (one name, one instance): relays see one process. */
  hello(): Hello;
  /** The relay accepted this tunnel. */
  welcomed(tunnel: RelayTunnel): void;
  /** This tunnel closed (or never opened); its calls are already aborted. It reconnects by itself. */
  lost(tunnel: RelayTunnel, code: number, reason: string): void;
  /** A relay said a caller disconnected: the session ends on every tunnel. */
  sessionClosed(session: string): void;
}

/**
 * The node's connection to one relay, kept forever: dial, hello, welcome, the relay's GOAWAY, and
 * reconnects with its own jittered backoff, one timer at a time. The calls that arrive on it run on
 * its {@link Dispatcher}; when it drops, only those calls are aborted.
 */
export class RelayTunnel {
  private readonly log: Logger;
  private readonly backoff: Backoff;
  private readonly dispatch: DispatchHost;
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
  private whenClosed: (() => void) | undefined;

  constructor(
    readonly url: string,
    private readonly host: TunnelHost,
    private readonly opts: TunnelOptions,
  ) {
    this.log = host.dispatch.log.child({ relay: url });
    this.backoff = new Backoff(opts.reconnectBase, opts.reconnectCap);
    this.dispatch = {
      ...host.dispatch,
      log: this.log,
      callFinished: () => {
        host.dispatch.callFinished();
        this.leaveIfRelayGoingAway();
      },
    };
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
    return { url: this.url, connected: this.connected, since: this.changedAt, running: this.running };
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

  private dial(): void {
    this.reconnectTimer = undefined;
    if (this.closing) return;
    const headers: Record<string, string> = {};
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    let refused: Refusal | undefined;
    const ws = dial(this.url, {
      maxMessage: this.opts.maxMessage,
      handshakeTimeout: 10_000,
      headers,
      tls: this.opts.tls,
      onRefused: (r) => {
        refused = r;
      },
    });
    let lastError = '';
    ws.on('error', (err) => {
      lastError = err.message;
    });
    const conn: Connection = new Connection(
      ws,
      {
        message: (m) => this.onMessage(conn, m),
        close: (code, reason) => {
          if (refused) {
            // An HTTP 401/403 at the upgrade is the same refusal as a 4003 close after the hello.
            const denied = refused.status === 401 || refused.status === 403;
            this.onClose(conn, denied ? CloseCode.UNAUTHORIZED : code, `HTTP ${refused.status}: ${refused.reason}`);
          } else {
            this.onClose(conn, code, reason || lastError);
          }
        },
      },
      { log: this.log, heartbeatTimeout: this.opts.heartbeatTimeout, maxFrame: this.opts.maxMessage },
    );
    this.conn = conn;
    this.link = new Dispatcher(this.dispatch, conn, this.host.sessions, false);
    this.welcomed = false;
    this.relayGoingAway = false;
    ws.on('open', () => {
      const h = this.host.hello();
      this.services = Object.keys(h.services ?? {});
      conn.send(hello(h));
    });
  }

  private onMessage(conn: Connection, m: Message): void {
    if (conn !== this.conn) return;
    switch (m.kind) {
      case Kind.WELCOME:
        this.welcomed = true;
        this.changedAt = new Date();
        if (typeof m.welcome.version === 'number') conn.peerVersion = m.welcome.version;
        this.link!.peerMaxMessage = typeof m.welcome.maxMessage === 'number' ? m.welcome.maxMessage : Infinity;
        this.log.info({ services: this.services }, 'connected to relay');
        clearTimeout(this.healthyTimer);
        this.healthyTimer = setTimeout(() => this.backoff.reset(), this.opts.reconnectReset);
        this.healthyTimer.unref();
        this.host.welcomed(this);
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
    if (wasConnected) this.log.warn({ code, reason }, 'disconnected from relay');
    else if (!this.closing) this.log.warn({ code, reason }, 'could not connect to relay');
    if (code === CloseCode.UNAUTHORIZED || code === CloseCode.NAME_CONFLICT) {
      const why = code === CloseCode.UNAUTHORIZED ? 'relay refused our credentials' : 'relay refused our name';
      this.log.error({ reason }, `${why}; retrying at the longest backoff`);
      this.backoff.exhaust();
    }
    this.whenClosed?.();
    this.whenClosed = undefined;
    this.host.lost(this, code, reason);
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

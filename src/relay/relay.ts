import { hostname } from 'node:os';
import { EventEmitter, once } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { advertiseUrl, defaultAdvertiseUrl, listenOn, peerIp, urlHost } from '../util/address.js';
import { silentLogger, type Logger } from '../util/logger.js';
import { goaway } from '../wire/messages.js';
import type { NodeInfo } from '../wire/presence.js';
import { Authenticator, type Credential } from './auth.js';
import type { BrowserPolicy } from '../util/browser-policy.js';
import type { CallerLink } from './caller-link.js';
import type { CallerOutput, GatewaySession } from './contracts.js';
import { NodeDirectory } from './directory.js';
import { httpHandler, refuseRequest } from './doors/http.js';
import { doorEvents } from './doors/door-events.js';
import type { CallerAdmission, DoorEvents, SessionDoor } from './doors/hub.js';
import { ConnectionGate } from './doors/gate.js';
import { WebSocketDoor } from './doors/websocket.js';
import { AuthFailures, type AuthDoor } from './auth-failures.js';
import { checkLimits, frameLimit, LIMIT_DEFAULTS, type Limits } from './limits.js';
import { MemoryBudget } from './memory.js';
import { createListener } from './listener.js';
import { RelayMetrics } from './metrics.js';
import type { NodeRegistry } from './node-registry.js';
import type { Cluster } from './cluster/cluster.js';
import type { ClusterState } from './cluster/options.js';
import { NodeRoster } from './nodes.js';
import { resolveRelayOptions, type RelayOptions, type RelaySettings } from './options.js';
import { selectorNamed } from './selectors.js';
import { RelayEvents } from './events.js';
import { Dashboard } from './dashboard/routes.js';
import type { CallerConnection } from './dashboard/host.js';
import type { DrainMarks } from './drain-marks.js';
import { Operator } from './operator.js';
import { CallerSessions, type Revocation } from './sessions.js';
import { CallStats } from './call-stats.js';

export type { NodeInfo } from '../wire/presence.js';
export type { RelayOptions } from './options.js';
export type { AuditRecord, AuditKind, AuditDoor } from './events.js';
export type { CallerAdmission } from './doors/hub.js';
export type { Revocation } from './sessions.js';

export const RELAY_VERSION = 'tunnel-relay/0.1.0';

/** One HTTP gateway request's session; {@link close} sends SESSION_CLOSED to the nodes it used. @internal */
export type { GatewaySession } from './contracts.js';

/**
 * The relay: one port where nodes attach and callers call. It routes each call to a node, keeps the
 * mapping between caller ids and tunnel ids, enforces deadlines, and never runs user code.
 * Events: `listening`, `node` (joined), `node-left`, `idle` (no call in flight while draining),
 * `revoked` ({@link Revocation}: a reload closed a connection).
 */
export class Relay extends EventEmitter {
  /** @internal */
  readonly directory = new NodeDirectory();
  /** @internal */
  readonly metrics: RelayMetrics;
  /** Who may register nodes and call; `auth.reload()` rereads the tokens file and closes what it no longer admits. */
  readonly auth: Authenticator;
  /** @internal */
  readonly log: Logger;
  /** Every limit in force: the options merged with their defaults (limits.ts). */
  readonly limits: Readonly<Limits>;
  /** The nodes here and through a cluster, and presence (nodes.ts). */
  private readonly roster: NodeRoster;
  private advertisedUrl: string | undefined;
  /** What happens on the relay, as `audit` events: joins, leaves, refusals, cuts, revocations, operator actions; the last 500 are kept. */
  readonly events = new RelayEvents();
  /** Drain, undrain, disconnect one node or caller (operator.ts). */
  private readonly operator: Operator;
  /** @internal The live dashboard, served when there is an admin listener or a dashboard token. */
  readonly dashboard: Dashboard | undefined;
  /** The address and claimed node name of each WebSocket, for the audit events of refusals. */
  private readonly opts: RelaySettings & RelayOptions;
  private readonly http: Server;
  private readonly admin: Server | undefined;
  private readonly secure: boolean;
  /** @internal Wrong credentials per address, on every door; a backed-off address's credentials are refused unchecked. */
  readonly authFailures: AuthFailures;
  /** What the relay holds for all its peers together, against `maxMemory`. @internal */
  readonly memory: MemoryBudget;
  private readonly streamTimer: NodeJS.Timeout;
  private readonly websocket: WebSocketDoor;
  private drainPromise: Promise<void> | undefined;
  /** @internal The doors' view of the caller sessions (doors/hub.ts). */
  readonly sessions: CallerSessions;
  /** @internal */
  readonly doorEvents: DoorEvents;
  /** @internal */
  readonly gate: ConnectionGate;
  private readonly stats: CallStats;
  constructor(options: RelayOptions = {}) {
    super();
    this.opts = resolveRelayOptions(options);
    this.directory.selector = selectorNamed(this.opts.selector);
    this.limits = Object.freeze(pickLimits(this.opts));
    checkLimits(this.limits);
    this.log = options.log ?? silentLogger;
    this.doorEvents = doorEvents(
      { connectionRejected: (reason) => this.metrics.connectionRejected(reason), slowConsumer: (transport) => this.metrics.slowConsumer(transport) },
      this.events,
    );
    this.gate = new ConnectionGate({ limits: this.opts, log: this.log, doorEvents: this.doorEvents, events: this.events });
    this.auth = new Authenticator({ ...this.opts, nodeCertificates: this.opts.tlsCa !== undefined }, this.log);
    this.directory.permissions = this.auth.permissions;
    this.auth.on('reload', () => this.recheck());
    // Each door's own cut counts the metric and writes the audit record of a holder it sheds.
    this.memory = new MemoryBudget(this.opts.maxMemory, this.log);
    this.stats = new CallStats({
      routed: (local) => this.metrics.routed(local),
      callEnded: (method, code, seconds, known) => {
        this.metrics.callEnded(method, code, seconds, known);
        this.dashboard?.callEnded(method, code, seconds, known);
      },
      events: this.events,
      directory: this.directory,
      draining: () => this.draining,
      idle: () => this.emit('idle'),
    });
    this.metrics = new RelayMetrics({
      callsInFlight: () => this.stats.inFlight,
      nodesConnected: () => this.directory.size,
      callerConnections: () => ({ websocket: this.sessions.connectionCount, http: this.sessions.gatewayCount }),
      bytes: () => this.stats.bytes(),
      draining: () => this.draining,
      cluster: () =>
        this.cluster ? { connected: this.cluster.connected, peers: this.cluster.peerNames.length, unreachable: this.cluster.unreachable.length } : undefined,
    });
    this.authFailures = new AuthFailures(this.gate.addresses, this);
    const separateAdmin = this.opts.adminListen !== undefined;
    const { dashboardToken, adminToken } = this.opts;
    this.dashboard = separateAdmin || dashboardToken !== undefined ? new Dashboard(this, { version: RELAY_VERSION, dashboardToken, adminToken }) : undefined;
    const publicDashboard = dashboardToken !== undefined ? 'public' : undefined;
    const handle = httpHandler(this, { gateway: true, admin: !separateAdmin, fallback: 'upgrade', dashboard: publicDashboard });
    const listener = createListener(this.opts, this.opts.helloTimeout, (req, res) => this.onHttp(req, res, handle, this.http));
    this.http = listener.server;
    this.secure = listener.secure;
    const adminHandle = httpHandler(this, { gateway: false, admin: true, fallback: 'not-found', dashboard: 'admin' });
    this.admin = separateAdmin ? createServer((req, res) => this.onHttp(req, res, adminHandle, this.admin!)) : undefined;
    this.roster = new NodeRoster({
      settings: this.opts,
      log: this.log,
      directory: this.directory,
      metrics: this.metrics,
      events: this.events,
      relayVersion: RELAY_VERSION,
      reject: (conn, code, reason, metric) => this.websocket.reject(conn, code, reason, metric),
      joined: (link) => this.operator.joined(link),
      advertised: () => this.advertised,
      emit: (event, name) => this.emit(event, name),
    });
    this.sessions = new CallerSessions({
      limits: this.opts,
      log: this.log,
      auth: this.auth,
      authFailures: this.authFailures,
      addresses: this.gate.addresses,
      memory: this.memory,
      directory: this.directory,
      presence: this.roster.presence,
      observer: this.stats.observer,
      events: this.events,
      revoked: (r) => this.audit(r),
    });
    this.operator = new Operator({ log: this.log, registry: this.registry, directory: this.directory, sessions: this.sessions });
    this.websocket = new WebSocketDoor({
      limits: this.opts,
      log: this.log,
      gate: this.gate,
      auth: this.auth,
      authFailures: this.authFailures,
      registry: this.registry,
      sessions: this.sessions,
      doorEvents: this.doorEvents,
      memory: this.memory,
      server: this.http,
      relayVersion: RELAY_VERSION,
      draining: () => this.draining,
    });
    this.http.on(listener.socketEvent, (socket: Socket) => this.onSocket(socket));
    this.http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.websocket.upgrade(req, socket, head));
    this.http.on('clientError', (_err, socket) => socket.destroy());
    this.gate.start();
    this.streamTimer = setInterval(() => this.sessions.expireIdleStreams(), Math.max(100, Math.min(this.opts.streamIdleTimeout / 2, 5_000)));
    this.streamTimer.unref();
    this.admin?.on('clientError', (_err, socket) => socket.destroy());
  }

  /** The nodes whose tunnels end here. @internal */
  get registry(): NodeRegistry {
    return this.roster.registry;
  }

  /** Membership of a cluster over NATS, when `cluster` is given. @internal */
  get cluster(): Cluster | undefined {
    return this.roster.cluster;
  }

  /** This relay's name (presence, cluster). */
  get relayName(): string {
    return this.roster.relayName;
  }

  /** @internal Which Origin and Host headers are accepted (browser-policy.ts). */
  get browsers(): BrowserPolicy {
    return this.gate.browsers;
  }

  /** True from the start of {@link drain}: no new connections or calls are accepted. */
  get draining(): boolean {
    return this.drainPromise !== undefined;
  }

  /** Largest HTTP gateway body, bytes: the largest params plus room for the JSON around them. @internal */
  get maxBody(): number {
    return frameLimit(this.opts.maxMessage);
  }

  /**
   * Checks a caller's token (HTTP gateway `Authorization: Bearer`, msgpack-rpc `Relay.Auth`) and
   * returns its identity (null when anonymous), or throws a TunnelError with code UNAUTHORIZED.
   * With no caller authentication configured every caller is allowed.
   * @internal
   */
  authenticateCaller(token: string | undefined, address: string, door: AuthDoor = 'msgpack-rpc'): string | null {
    return this.admitCaller(token, address, door).identity;
  }

  /**
   * As {@link authenticateCaller}, and also what admitted the caller: give it to
   * {@link openCallerSession} so that a reload that revokes the token closes the session.
   */
  admitCaller(token: string | undefined, address: string, door: AuthDoor = 'http'): CallerAdmission {
    return this.sessions.admit(token, address, door);
  }

  /**
   * Counts a connection of another door (the MessagePack-RPC port) from `ip` against the limits the
   * relay's own sockets count against, so that every door shares `maxConnectionsPerAddress` and
   * `maxConnections`. Call `release` once the connection closes; a refused one is not counted.
   */
  admitSocket(ip: string): { release: () => void } | { refused: string } {
    return this.gate.admitSocket(ip);
  }

  /**
   * Opens the session of one HTTP gateway request; its answers go to `transport`. A reload that no
   * longer admits `identity` (or `credential`) answers its call UNAUTHORIZED and ends the session.
   * @internal
   */
  openGatewaySession(address: string, identity: string | null, transport: CallerOutput, credential?: Credential): GatewaySession {
    return this.sessions.openGateway(address, identity, transport, credential);
  }

  /**
   * Whether /readyz should answer 200, and if not, why. In a cluster, `cluster` says whether NATS is
   * connected (`connected`) or not (`degraded`: the relay serves its own nodes and callers only), or
   * whether a relay it knew stopped answering (`split`, named in `unreachable`), and which relays it
   * hears from; a degraded or split cluster does not make the relay unready.
   */
  readiness(): { ready: boolean; reasons: string[]; cluster?: { state: ClusterState; relays: string[]; unreachable: string[]; urls: string[] } } {
    const reasons: string[] = [];
    if (!this.http.listening) reasons.push('not listening');
    if (this.draining) reasons.push('draining before shutdown');
    for (const name of this.opts.requireNode ?? []) {
      const node = this.directory.get(name);
      if (!node || node.draining) reasons.push(`required node ${name} is not connected`);
    }
    for (const service of this.opts.requireService ?? []) {
      if (![...this.directory.all()].some((n) => !n.draining && n.services.has(service))) {
        reasons.push(`no node serves required service ${service}`);
      }
    }
    const out: ReturnType<Relay['readiness']> = { ready: reasons.length === 0, reasons };
    if (this.cluster) {
      // `urls`: the other relays' --advertise URLs, what a node's welcome lists now.
      out.cluster = { state: this.cluster.state, relays: this.cluster.peerNames, unreachable: this.cluster.unreachable, urls: this.cluster.peerUrls() };
    }
    return out;
  }

  /** Calls routed to a node and not answered yet. */
  get inFlight(): number {
    return this.stats.inFlight;
  }

  /** Starts listening (and the admin listener, if any); resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<{ host: string; port: number; url: string }> {
    await listenOn(this.http, this.opts.listen);
    if (this.admin) {
      await listenOn(this.admin, this.opts.adminListen!);
      this.log.info(this.adminAddress, 'admin listening');
    }
    const address = this.address!;
    this.advertisedUrl =
      this.opts.advertise !== undefined
        ? advertiseUrl(this.opts.advertise, 'Relay option advertise')
        : defaultAdvertiseUrl(this.opts.listen, address.port, this.secure, hostname());
    if (this.cluster && this.advertised === undefined) {
      this.log.warn({ host: hostname() }, 'the host name is not a valid host in a URL: nodes are not told how to reach this relay; set --advertise');
    }
    this.auth.watch();
    this.cluster?.start();
    this.log.info(
      {
        ...address,
        tls: this.secure,
        auth: this.auth.describe(),
        relay: this.relayName,
        cluster: this.opts.cluster?.name ?? (this.cluster ? 'tunnel' : undefined),
        advertise: this.advertised,
      },
      'relay listening',
    );
    this.emit('listening', address);
    return address;
  }

  /** The URL nodes dial to reach this relay (`advertise`, else derived once listening); undefined before {@link listen}. */
  get advertised(): string | undefined {
    return this.advertisedUrl;
  }

  /** The admin listener's address, when `adminListen` is set and it listens. */
  get adminAddress(): { host: string; port: number; url: string } | undefined {
    const a = this.admin?.address() as AddressInfo | null | undefined;
    if (!a) return undefined;
    return { host: a.address, port: a.port, url: `http://${urlHost(a.address)}:${a.port}/` };
  }

  get address(): { host: string; port: number; url: string } | undefined {
    const a = this.http.address() as AddressInfo | null;
    if (!a) return undefined;
    return { host: a.address, port: a.port, url: `${this.secure ? 'wss' : 'ws'}://${urlHost(a.address)}:${a.port}/` };
  }

  /** What every attached node serves (the presence list). */
  nodes(): NodeInfo[] {
    return this.roster.presence.list();
  }

  get callerCount(): number {
    return this.sessions.connectionCount;
  }

  /** Every caller connection now: WebSocket and msgpack-rpc sessions, HTTP gateway requests being answered. @internal */
  callerConnections(): CallerConnection[] {
    return this.sessions.describe();
  }

  /** @internal Node names an operator drained here ({@link drainNode}): kept out of rotation across reconnects. */
  get drainMarks(): DrainMarks {
    return this.operator.marks;
  }

  /**
   * Drains one node attached here, as a Kubernetes cordon does: it stays connected, finishes its calls
   * in flight and takes no new ones, and its name stays drained on this relay across reconnects until
   * {@link undrainNode}. Throws NO_NODE for a node that is not attached to this relay, OVERLOADED when
   * 1 000 names are drained already (drain-marks.ts).
   */
  drainNode(name: string, reason: string): void {
    this.operator.drainNode(name, reason);
  }

  /** Puts a drained node name back in rotation. Throws NO_NODE for a name that is not drained here. */
  undrainNode(name: string, reason: string): void {
    this.operator.undrainNode(name, reason);
  }

  /** Closes the connection of a node attached here (1008, `reason`); its calls in flight fail NODE_LOST. Throws NO_NODE. */
  disconnectNode(name: string, reason: string): void {
    this.operator.disconnectNode(name, reason);
  }

  /**
   * Closes one caller connection (1008, `reason`; an HTTP request is answered CANCELLED): its calls
   * are cancelled on the nodes. Throws CONNECTION_CLOSED for a session that is not open.
   */
  disconnectCaller(session: string, reason: string): void {
    this.operator.disconnectCaller(session, reason);
  }

  /**
   * Drains, then closes: refuses new connections (503) and new calls (GOING_AWAY), sends GOAWAY to
   * every node and caller, waits up to `timeout` ms for the calls in flight, then closes everything.
   * Calls still running at the deadline fail as their connections close.
   */
  drain(timeout = this.opts.drainTimeout, reason = 'relay is shutting down'): Promise<void> {
    this.drainPromise ??= this.runDrain(timeout, reason);
    return this.drainPromise;
  }

  private async runDrain(timeout: number, reason: string): Promise<void> {
    this.log.info({ inFlight: this.stats.inFlight, drainTimeoutMs: timeout, reason }, 'draining: refusing new connections and calls');
    const message = goaway(reason);
    for (const link of this.registry.all()) link.conn.send(message);
    this.sessions.goAway(reason);
    if (this.stats.inFlight > 0) {
      const idle = await once(this, 'idle', { signal: AbortSignal.timeout(timeout) }).then(
        () => true,
        () => false,
      );
      if (idle) this.log.info('drained: no call in flight');
      else this.log.warn({ inFlight: this.stats.inFlight, drainTimeoutMs: timeout }, 'drain timeout: closing with calls in flight');
    }
    await this.close();
  }

  /** Closes every connection and the listening sockets at once; see {@link drain} for a graceful stop. */
  async close(): Promise<void> {
    // Answers completed in this turn wait in their Connection's queue, flushed on setImmediate:
    // let them leave before the close frames.
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.gate.close();
    clearInterval(this.streamTimer);
    this.dashboard?.close();
    this.auth.close();
    await this.cluster?.stop();
    this.websocket.close();
    this.sessions.deadlines.clear();
    const servers = this.admin ? [this.http, this.admin] : [this.http];
    await Promise.all(
      servers.map((server) => {
        const closed = new Promise<void>((resolve) => server.close(() => resolve()));
        server.closeIdleConnections();
        // HTTP clients keeping a request open must not hold the shutdown forever.
        setTimeout(() => server.closeAllConnections(), 2_000).unref();
        return closed;
      }),
    );
  }

  private onHttp(req: IncomingMessage, res: ServerResponse, handle: (req: IncomingMessage, res: ServerResponse) => void, server: Server): void {
    if (this.gate.engage(req.socket).overLimit) {
      this.metrics.connectionRejected('too_many_connections');
      res.writeHead(429, { 'content-type': 'text/plain' }).end(`too many connections from ${peerIp(req.socket)}\n`);
      return;
    }
    const refused = this.gate.refusedBrowser(req, server, server === this.admin ? 'admin' : 'http');
    if (refused !== undefined) return refuseRequest(res, refused);
    handle(req, res);
  }

  /** Every socket counts against its address, its bytes are counted, and it must reach an accepted hello in time. */
  private onSocket(socket: Socket): void {
    if (this.gate.connected(socket)) this.stats.track(socket);
  }

  /**
   * Starts a caller session, which is one caller connection, on any transport: the WebSocket here,
   * the MessagePack-RPC port (msgpack-rpc-port.ts). Requests go to `link.onMessage`; answers come out
   * through `out`. End it with {@link closeCallerSession} when the connection closes.
   *
   * Every reload of the tokens file checks the session again: with the `credential` of
   * {@link admitCaller}, its token must still give `identity`; without, a token of `identity` must
   * still exist (for null: callers must still need no token). When not, the relay calls
   * `out.close(4003, reason)` (or answers the calls in flight UNAUTHORIZED, for an output without
   * `close`), closes the session, which cancels its calls on the nodes, and emits `revoked`. `log`
   * should carry the peer's address (`peer`): the audit lines of refused calls are written to it.
   * @internal
   */
  openCallerSession(out: CallerOutput, address: string, identity: string | null, log: Logger, credential?: Credential, door?: SessionDoor): CallerLink {
    return this.sessions.open(out, address, identity, log, credential, door);
  }

  /** Ends a caller session: its calls are dropped and every node that saw it forgets it. @internal */
  closeCallerSession(link: CallerLink): void {
    this.sessions.close(link);
  }

  /** After a reload: every connection its token or the permissions no longer admit is closed (4003). */
  private recheck(): void {
    this.directory.permissions = this.auth.permissions;
    for (const link of [...this.registry.all()]) {
      const credential = this.registry.credentialOf(link);
      const reason = credential && this.auth.recheckNode(link.name, credential, link.services.keys());
      if (reason) {
        this.audit({ role: 'node', name: link.name, address: link.address, reason });
        this.registry.revoke(link, reason);
      }
    }
    this.sessions.recheck();
  }

  /** One audit line per revoked connection, in the words of the refusals. */
  private audit(r: Revocation): void {
    const who = r.role === 'node' ? { node: r.name } : { identity: r.name };
    this.log.warn({ role: r.role, ...who, peer: r.address, reason: r.reason }, 'revoked connection');
    this.metrics.connectionRejected('revoked');
    this.events.audit({ kind: 'revoked', address: r.address, reason: r.reason, ...(r.role === 'node' ? { node: r.name ?? undefined } : { identity: r.name }) });
    this.emit('revoked', r);
  }
}

function pickLimits(o: Limits): Limits {
  const out = {} as Limits;
  for (const key of Object.keys(LIMIT_DEFAULTS) as (keyof Limits)[]) out[key] = o[key];
  return out;
}

import { hostname } from 'node:os';
import { EventEmitter, once } from 'node:events';
import { silentLogger, type Logger } from '../util/logger.js';
import type { BrowserPolicy } from '../util/browser-policy.js';
import type { NodeInfo } from '../wire/presence.js';
import { Authenticator } from './auth.js';
import type { AuthFailures } from './auth-failures.js';
import { CallStats } from './call-stats.js';
import type { Cluster } from './cluster/cluster.js';
import type { ClusterState } from './cluster/options.js';
import type { CallerConnection } from './dashboard/host.js';
import { Dashboard } from './dashboard/routes.js';
import { NodeDirectory } from './directory.js';
import { ConnectionGate } from './doors/gate.js';
import type { DoorEvents } from './doors/hub.js';
import { Ports } from './doors/ports.js';
import type { DrainMarks } from './drain-marks.js';
import { RelayEvents } from './events.js';
import { checkLimits, frameLimit, pickLimits, type Limits } from './limits.js';
import { MemoryBudget } from './memory.js';
import { RelayMetrics } from './metrics.js';
import type { NodeRegistry } from './node-registry.js';
import { NodeRoster } from './nodes.js';
import { Operator } from './operator.js';
import { resolveRelayOptions, type RelayOptions, type RelaySettings } from './options.js';
import { selectorNamed } from './selectors.js';
import { CallerSessions, revocationAudit } from './sessions.js';

export const RELAY_VERSION = 'tunnel-relay/0.1.0';

/**
 * The relay: one port where nodes attach and callers call. It routes each call to a node, keeps the
 * mapping between caller ids and tunnel ids, enforces deadlines, and never runs user code.
 * Events: `listening`, `node` (joined), `node-left`, `idle` (no call in flight while draining),
 * `revoked` ({@link Revocation}: a reload closed a connection).
 *
 * This class is the composition root: it resolves the options, builds the parts (docs/ARCHITECTURE.md,
 * "The relay's parts") and hands its public members on to them.
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
  /** What happens on the relay, as `audit` events: joins, leaves, refusals, cuts, revocations, operator actions; the last 500 are kept. */
  readonly events = new RelayEvents();
  /** @internal The live dashboard, served when there is an admin listener or a dashboard token. */
  readonly dashboard: Dashboard | undefined;
  /** What the relay holds for all its peers together, against `maxMemory`. @internal */
  readonly memory: MemoryBudget;
  /** @internal Connection limits, the hello deadline, Origin and Host, wrong credentials (doors/gate.ts). */
  readonly gate: ConnectionGate;
  /** @internal Every caller session, on every door (sessions.ts). */
  readonly sessions: CallerSessions;
  private readonly opts: RelaySettings & RelayOptions;
  private readonly stats: CallStats;
  private readonly roster: NodeRoster;
  private readonly operator: Operator;
  private readonly ports: Ports;

  constructor(options: RelayOptions = {}) {
    super();
    this.opts = resolveRelayOptions(options);
    this.directory.selector = selectorNamed(this.opts.selector);
    this.limits = Object.freeze(pickLimits(this.opts));
    checkLimits(this.limits);
    this.log = options.log ?? silentLogger;
    // Built first, over parts built below: the gauges read them at each scrape.
    this.metrics = new RelayMetrics({
      callsInFlight: () => this.stats.inFlight,
      nodesConnected: () => this.directory.size,
      callerConnections: () => ({ websocket: this.sessions.connectionCount, http: this.sessions.gatewayCount }),
      bytes: () => this.stats.bytes(),
      draining: () => this.draining,
      cluster: this.opts.cluster ? () => this.cluster?.gauges() : undefined,
    });
    this.gate = new ConnectionGate({ limits: this.opts, log: this.log, metrics: this.metrics, events: this.events });
    this.auth = new Authenticator({ ...this.opts, nodeCertificates: this.opts.tlsCa !== undefined }, this.log);
    this.directory.permissions = this.auth.permissions;
    const revoked = revocationAudit(this.log, this.metrics, this.events, (event, r) => this.emit(event, r));
    this.auth.on('reload', () => {
      // Nodes first, then callers: every connection its token or the permissions no longer admit is closed (4003).
      this.directory.permissions = this.auth.permissions;
      this.roster.recheck(this.auth, revoked);
      this.sessions.recheck();
    });
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
    const { dashboardToken, adminToken, adminListen } = this.opts;
    this.dashboard =
      adminListen !== undefined || dashboardToken !== undefined ? new Dashboard(this, { version: RELAY_VERSION, dashboardToken, adminToken }) : undefined;
    this.roster = new NodeRoster({
      settings: this.opts,
      log: this.log,
      directory: this.directory,
      metrics: this.metrics,
      events: this.events,
      relayVersion: RELAY_VERSION,
      reject: (conn, code, reason, metric) => this.ports.reject(conn, code, reason, metric),
      joined: (link) => this.operator.joined(link),
      advertised: () => this.advertised,
      emit: (event, name) => this.emit(event, name),
    });
    // What the parts below are built from; each takes the members it names.
    const parts = {
      limits: this.opts,
      log: this.log,
      auth: this.auth,
      gate: this.gate,
      authFailures: this.authFailures,
      addresses: this.gate.addresses,
      doorEvents: this.doorEvents,
      memory: this.memory,
      directory: this.directory,
      events: this.events,
      presence: this.roster.presence,
      registry: this.registry,
      observer: this.stats.observer,
      revoked,
    };
    this.sessions = new CallerSessions(parts);
    const idle = (signal: AbortSignal) => once(this, 'idle', { signal });
    this.operator = new Operator({ ...parts, sessions: this.sessions, inFlight: () => this.stats.inFlight, idle, close: () => this.close() });
    const websocket = { ...parts, sessions: this.sessions, relayVersion: RELAY_VERSION, draining: () => this.draining };
    const track = (socket: Parameters<CallStats['track']>[0]) => this.stats.track(socket);
    this.ports = new Ports({ settings: this.opts, gate: this.gate, doorEvents: this.doorEvents, host: this, track, websocket });
    this.gate.start();
    this.sessions.start();
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

  /** @internal Wrong credentials per address, on every door; a backed-off address's credentials are refused unchecked. */
  get authFailures(): AuthFailures {
    return this.gate.authFailures;
  }

  /** @internal Every door's refusals and slow consumers, as metrics and audit records. */
  get doorEvents(): DoorEvents {
    return this.gate.doorEvents;
  }

  /** @internal Node names an operator drained here ({@link drainNode}): kept out of rotation across reconnects. */
  get drainMarks(): DrainMarks {
    return this.operator.marks;
  }

  /** True from the start of {@link drain}: no new connections or calls are accepted. */
  get draining(): boolean {
    return this.operator.draining;
  }

  /** Largest HTTP gateway body, bytes: the largest params plus room for the JSON around them. @internal */
  get maxBody(): number {
    return frameLimit(this.opts.maxMessage);
  }

  /** Calls routed to a node and not answered yet. */
  get inFlight(): number {
    return this.stats.inFlight;
  }

  get callerCount(): number {
    return this.sessions.connectionCount;
  }

  /** The URL nodes dial to reach this relay (`advertise`, else derived once listening); undefined before {@link listen}. */
  get advertised(): string | undefined {
    return this.ports.advertised;
  }

  get address(): { host: string; port: number; url: string } | undefined {
    return this.ports.address;
  }

  /** The admin listener's address, when `adminListen` is set and it listens. */
  get adminAddress(): { host: string; port: number; url: string } | undefined {
    return this.ports.adminAddress;
  }

  /** What every attached node serves (the presence list). */
  nodes(): NodeInfo[] {
    return this.roster.presence.list();
  }

  /** Every caller connection now: WebSocket and msgpack-rpc sessions, HTTP gateway requests being answered. @internal */
  callerConnections(): CallerConnection[] {
    return this.sessions.describe();
  }

  /**
   * Whether /readyz should answer 200, and if not, why. In a cluster, `cluster` says whether NATS is
   * connected (`connected`) or not (`degraded`: the relay serves its own nodes and callers only), or
   * whether a relay it knew stopped answering (`split`, named in `unreachable`), and which relays it
   * hears from; a degraded or split cluster does not make the relay unready.
   */
  readiness(): { ready: boolean; reasons: string[]; cluster?: { state: ClusterState; relays: string[]; unreachable: string[]; urls: string[] } } {
    const reasons = this.ports.listening ? [] : ['not listening'];
    if (this.draining) reasons.push('draining before shutdown');
    return this.roster.readiness(reasons, this.opts.requireNode, this.opts.requireService);
  }

  /** Starts listening (and the admin listener, if any); resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<{ host: string; port: number; url: string }> {
    const address = await this.ports.listen(this.log);
    if (this.cluster && this.advertised === undefined) {
      this.log.warn({ host: hostname() }, 'the host name is not a valid host in a URL: nodes are not told how to reach this relay; set --advertise');
    }
    this.auth.watch();
    this.cluster?.start();
    const cluster = this.opts.cluster?.name ?? (this.cluster ? 'tunnel' : undefined);
    this.log.info(
      { ...address, tls: this.ports.secure, auth: this.auth.describe(), relay: this.relayName, cluster, advertise: this.advertised },
      'relay listening',
    );
    this.emit('listening', address);
    return address;
  }

  /** Drains one node attached here, kept drained across reconnects until {@link undrainNode} (operator.ts). Throws NO_NODE, OVERLOADED. */
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

  /** Closes one caller connection (1008; an HTTP request is answered CANCELLED). Throws CONNECTION_CLOSED for a session not open. */
  disconnectCaller(session: string, reason: string): void {
    this.operator.disconnectCaller(session, reason);
  }

  /**
   * Drains, then closes: refuses new connections (503) and new calls (GOING_AWAY), sends GOAWAY to
   * every node and caller, waits up to `timeout` ms for the calls in flight, then closes everything.
   * Calls still running at the deadline fail as their connections close.
   */
  drain(timeout = this.opts.drainTimeout, reason = 'relay is shutting down'): Promise<void> {
    return this.operator.drain(timeout, reason);
  }

  /** Closes every connection and the listening sockets at once; see {@link drain} for a graceful stop. */
  async close(): Promise<void> {
    // Answers completed in this turn wait in their Connection's queue, flushed on setImmediate:
    // let them leave before the close frames.
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.gate.close();
    this.dashboard?.close();
    this.auth.close();
    await this.cluster?.stop();
    this.sessions.stop();
    await this.ports.close();
  }
}

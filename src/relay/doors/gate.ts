import type { IncomingMessage, Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { isLoopbackHost, peerAddress, peerIp } from '../../util/address.js';
import { BrowserPolicy, type BrowserOptions } from '../../util/browser-policy.js';
import type { Logger } from '../../util/logger.js';
import { sameOrigin } from '../dashboard/actions.js';
import { isDashboardUrl } from '../dashboard/routes.js';
import type { RelayEvents } from '../events.js';
import { AddressTable, RefusalLog, type Limits } from '../limits.js';
import { AuthFailures, type AuthFailuresHost } from '../auth-failures.js';
import { doorEvents, type DoorMetrics } from './door-events.js';
import type { DoorEvents, SocketAdmission } from './hub.js';

/** What a {@link ConnectionGate} is built from. */
export interface GateParts {
  readonly limits: Readonly<Limits> & BrowserOptions;
  readonly log: Logger;
  /** Read at each use: the metrics may be built after the gate. */
  readonly metrics: DoorMetrics & AuthFailuresHost['metrics'];
  readonly events: Pick<RelayEvents, 'audit'>;
}

/**
 * The relay's one gate for connections, whichever door they come by: per-address and total
 * connection limits (one {@link AddressTable}, shared with the MessagePack-RPC port through
 * {@link admitSocket}), the shared deadline of a handshake and its hello, nodes counted apart once
 * authenticated, and the Origin and Host policy (browser-policy.ts).
 */
export class ConnectionGate implements SocketAdmission {
  /** Connections, logins and wrong credentials per address. */
  readonly addresses: AddressTable;
  /** Which Origin and Host headers are accepted. */
  readonly browsers: BrowserPolicy;
  /** Wrong credentials per address, on every door; a backed-off address's credentials are refused unchecked. */
  readonly authFailures: AuthFailures;
  /** Every door's refusals and slow consumers, as metrics and audit records. */
  readonly doorEvents: DoorEvents;
  private readonly refusals: RefusalLog;
  /** Per listening server: bound to a loopback address, where only loopback Host names pass. */
  private readonly loopbackListeners = new WeakMap<Server, boolean>();
  /** Sockets past the per-address limit, refused at their upgrade request. */
  private readonly overLimit = new WeakSet<object>();
  /** Sockets of authenticated nodes: counted apart from the per-address limit (AddressTable.promote). */
  private readonly promoted = new WeakSet<object>();
  /** When each socket connected: the handshake and the hello share one deadline. */
  private readonly connectedAt = new WeakMap<object, number>();
  /** Sockets that sent a request or an upgrade: from there HTTP timeouts or the WebSocket's hello timer take over. */
  private readonly engaged = new WeakSet<object>();
  private pruneTimer: NodeJS.Timeout | undefined;

  constructor(private readonly parts: GateParts) {
    this.addresses = new AddressTable(parts.limits);
    this.browsers = new BrowserPolicy(parts.limits);
    this.refusals = new RefusalLog(parts.log, 'too many connections on the relay; closing the extra ones');
    this.doorEvents = doorEvents(parts.metrics, parts.events);
    this.authFailures = new AuthFailures(this.addresses, parts);
  }

  /** Starts forgetting addresses that went quiet; once the relay is built. */
  start(): void {
    this.pruneTimer ??= setInterval(() => this.addresses.prune(), Math.min(this.parts.limits.loginFailureWindow, 60_000));
    this.pruneTimer.unref();
  }

  /**
   * A socket of the main port connected: it counts against its address, and it must reach an
   * accepted hello (or send a request) in time. False when it was destroyed: the relay is full.
   */
  connected(socket: Socket): boolean {
    const { limits, log } = this.parts;
    if (this.addresses.total >= limits.maxConnections) {
      // Over the relay's total nothing more is spent on a socket, not even an HTTP answer.
      this.doorEvents.refused('too_many_connections');
      this.refusals.refused({ ip: peerIp(socket), limit: limits.maxConnections });
      socket.destroy();
      return false;
    }
    const ip = peerIp(socket);
    this.connectedAt.set(socket, Date.now());
    if (!this.addresses.open(ip)) {
      this.overLimit.add(socket);
      if (this.addresses.connections(ip) === limits.maxConnectionsPerAddress + 1) {
        log.warn({ ip, limit: limits.maxConnectionsPerAddress }, 'too many connections from one address; refusing the extra ones');
      }
    }
    socket.once('close', () => this.addresses.close(ip, this.promoted.has(socket)));
    const timer = setTimeout(() => {
      if (!this.engaged.has(socket)) socket.destroy();
    }, limits.helloTimeout);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
    return true;
  }

  /** The socket sent a request or an upgrade; past the per-address limit it is to be refused (429). */
  engage(socket: object): { overLimit: boolean } {
    this.engaged.add(socket);
    return { overLimit: this.overLimit.has(socket) };
  }

  /** What is left of the socket's hello deadline, ms. */
  helloLeft(socket: object): number {
    return Math.max(0, (this.connectedAt.get(socket) ?? Date.now()) + this.parts.limits.helloTimeout - Date.now());
  }

  /**
   * An authenticated node's socket moves from its address's connection count to its node count;
   * false when the address has `maxNodesPerAddress` nodes already.
   */
  promote(socket: Socket): boolean {
    if (this.promoted.has(socket)) return true;
    if (!this.addresses.promote(peerIp(socket))) return false;
    this.promoted.add(socket);
    return true;
  }

  admitSocket(ip: string): { release: () => void } | { refused: string } {
    const { limits } = this.parts;
    const full = this.addresses.admit(ip);
    if (full === 'total') return { refused: `the relay has ${limits.maxConnections} connections, its limit` };
    if (full === 'address') return { refused: `too many connections from ${ip} (limit ${limits.maxConnectionsPerAddress})` };
    let open = true;
    return {
      release: () => {
        if (!open) return;
        open = false;
        this.addresses.close(ip);
      },
    };
  }

  /** Checks Origin and Host (browser-policy.ts); a refusal is counted and logged once, as an audit line. */
  refusedBrowser(req: IncomingMessage, server: Server, door: 'websocket' | 'http' | 'admin'): string | undefined {
    let loopback = this.loopbackListeners.get(server);
    if (loopback === undefined) {
      const bound = server.address() as AddressInfo | null;
      loopback = bound !== null && isLoopbackHost(bound.address);
      if (bound !== null) this.loopbackListeners.set(server, loopback);
    }
    // The dashboard's page calls its own relay: its same-origin requests pass, the Host check still applies.
    const headers = door !== 'websocket' && isDashboardUrl(req.url) && sameOrigin(req) ? { ...req.headers, origin: undefined } : req.headers;
    const refusal = this.browsers.check(headers, loopback);
    if (refusal === undefined) return undefined;
    this.doorEvents.refused(refusal.metric);
    this.parts.log.warn({ peer: peerAddress(req.socket), door, reason: refusal.reason }, 'refused request');
    this.parts.events.audit({ kind: 'refused-request', door, address: peerAddress(req.socket), reason: refusal.reason });
    return refusal.reason;
  }

  close(): void {
    clearInterval(this.pruneTimer);
  }
}

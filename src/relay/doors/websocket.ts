import type { IncomingMessage, Server } from 'node:http';
import type { Socket } from 'node:net';
import { WebSocketServer, type WebSocket } from 'ws';
import { peerAddress, peerIp } from '../../util/address.js';
import type { Logger } from '../../util/logger.js';
import { labelsProblem, NAME_LIMITS, nodeNameProblem, servicesProblem } from '../../wire/bounds.js';
import { CloseCode } from '../../wire/close-codes.js';
import { Connection } from '../../wire/connection.js';
import { encodeResult } from '../../wire/call-envelope.js';
import { goaway, Kind, notify, response, responseStream, SUPPORTED_VERSIONS, welcome, type Hello, type Message } from '../../wire/messages.js';
import { RELAY_SERVICE } from '../../wire/presence.js';
import { peerCertificate, type Authenticator, type Credential } from '../auth.js';
import { retryAfter, type AuthFailures } from '../auth-failures.js';
import type { CallerLink } from '../caller-link.js';
import { frameLimit, type Limits } from '../limits.js';
import { refuseUpgrade } from '../listener.js';
import type { MemoryBudget } from '../memory.js';
import type { NodeRegistry } from '../node-registry.js';
import { ipOfAddress } from '../sessions.js';
import type { ConnectionGate } from './gate.js';
import type { DoorEvents, SessionHub } from './hub.js';

/** What the WebSocket door is built from. */
export interface WebSocketDoorParts {
  readonly limits: Readonly<Limits> & { readonly heartbeatTimeout: number };
  readonly log: Logger;
  readonly gate: ConnectionGate;
  readonly auth: Pick<Authenticator, 'checkUpgrade' | 'node' | 'caller' | 'nodesNeedAuth' | 'serveRefusal'>;
  readonly authFailures: Pick<AuthFailures, 'refusal' | 'failed'>;
  readonly registry: Pick<NodeRegistry, 'claim'>;
  readonly sessions: SessionHub;
  readonly doorEvents: DoorEvents;
  readonly memory: Pick<MemoryBudget, 'add' | 'poke'>;
  /** The main port's server: a loopback listener accepts loopback Host names only. */
  readonly server: Server;
  readonly relayVersion: string;
  /** The relay is draining: upgrades are refused (503). */
  draining(): boolean;
}

/**
 * The relay's WebSocket door: refuses at the upgrade what it can (draining, extra connections,
 * Origin and Host, wrong tokens and certificates), reads the hello within its deadline, and
 * attaches a node (node-registry.ts `claim`) or a caller (a session of the {@link SessionHub}).
 */
export class WebSocketDoor {
  private readonly wss: WebSocketServer;
  /** The address and claimed node name of each WebSocket, for the audit events of refusals. */
  private readonly peers = new WeakMap<Connection, { address: string; node?: string; caller?: CallerLink }>();

  constructor(private readonly parts: WebSocketDoorParts) {
    this.wss = new WebSocketServer({ noServer: true, maxPayload: frameLimit(parts.limits.maxMessage), perMessageDeflate: false });
  }

  /** Closes every WebSocket (1001), and terminates those that do not close within a second. */
  close(): void {
    for (const ws of this.wss.clients) ws.close(CloseCode.GOING_AWAY, 'relay is shutting down');
    for (const ws of this.wss.clients) setTimeout(() => ws.terminate(), 1_000).unref();
    this.wss.close();
  }

  reject(conn: Connection, code: number, reason: string, metric: string, audit = true): void {
    const peer = this.peers.get(conn);
    this.parts.doorEvents.refused(metric, audit ? { door: 'websocket', address: peer?.address, node: peer?.node } : undefined, reason);
    conn.close(code, reason);
  }

  /** Refuses what can be refused before the WebSocket exists: draining, extra connections, wrong tokens and certificates. */
  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const { overLimit } = this.parts.gate.engage(socket);
    const peer = peerAddress(socket);
    if (this.parts.draining()) {
      this.parts.doorEvents.refused('draining');
      refuseUpgrade(socket, 503, 'relay is going away: it takes no new connections; connect to another relay');
      return;
    }
    if (overLimit) {
      this.parts.doorEvents.refused('too_many_connections');
      refuseUpgrade(socket, 429, `too many connections from ${peerIp(socket)} (limit ${this.parts.limits.maxConnectionsPerAddress})`);
      return;
    }
    const refused = this.parts.gate.refusedBrowser(req, this.parts.server, 'websocket');
    if (refused !== undefined) {
      refuseUpgrade(socket, 403, refused);
      return;
    }
    const token = bearerToken(req);
    const ip = peerIp(socket);
    const backedOff = token === undefined ? undefined : this.parts.authFailures.refusal(ip, 'websocket');
    if (backedOff) {
      this.parts.doorEvents.refused('auth_backoff');
      refuseUpgrade(socket, 401, backedOff.message, retryAfter(backedOff));
      return;
    }
    const refusal = this.parts.auth.checkUpgrade(token, peerCertificate(socket));
    if (refusal !== undefined) {
      const { reason } = refusal;
      // A guessed token is logged once per burst from its address (auth-failures.ts).
      const report = !refusal.wrongToken || this.parts.authFailures.failed(ip, 'websocket', reason, peer);
      if (report) this.parts.log.warn({ peer, reason }, 'refused connection at upgrade');
      this.parts.doorEvents.refused('unauthorized', report ? { door: 'websocket', address: peer } : undefined, reason);
      refuseUpgrade(socket, 401, reason);
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => this.accept(ws, req));
  }

  private accept(ws: WebSocket, req: IncomingMessage): void {
    const address = peerAddress(req.socket);
    const log = this.parts.log.child({ peer: address });
    const helloTimeout = this.parts.gate.helloLeft(req.socket);
    let settled = false;
    const conn: Connection = new Connection(
      ws,
      {
        message: (m) => {
          settled = true;
          clearTimeout(timer);
          this.onHello(conn, m, address, req, log);
        },
        close: () => {
          settled = true;
          clearTimeout(timer);
        },
      },
      // Chunks are acknowledged once passed on (caller-link.ts, node-link.ts): backpressure end to end.
      {
        log,
        heartbeatTimeout: this.parts.limits.heartbeatTimeout,
        maxFrame: frameLimit(this.parts.limits.maxMessage),
        autoAck: false,
        maxBacklog: this.parts.limits.maxBacklog,
        slowConsumerTimeout: this.parts.limits.slowConsumerTimeout,
        maxFirstMessage: NAME_LIMITS.hello,
        helloFirst: true,
        onPressure: () => this.parts.memory.poke(),
        onSlowConsumer: (backlog) => {
          this.parts.doorEvents.slowConsumer(
            { door: 'websocket', address, node: this.peers.get(conn)?.node },
            `${backlog} bytes waited to be written to it (limit ${this.parts.limits.maxBacklog})`,
          );
        },
      },
    );
    this.peers.set(conn, { address });
    const release = this.parts.memory.add({
      // A connection already closing frees what it holds by itself within a second: not a candidate.
      held: () => (conn.isOpen ? conn.backlog + (this.peers.get(conn)?.caller?.budget.used ?? 0) : 0),
      shed: (reason) => conn.shed(reason),
      who: { door: 'websocket', address },
    });
    ws.once('close', release);
    const timer = setTimeout(() => {
      if (settled) return;
      log.info({ helloTimeoutMs: this.parts.limits.helloTimeout }, 'closing connection that sent no hello');
      this.reject(conn, CloseCode.HELLO_TIMEOUT, `no hello within ${this.parts.limits.helloTimeout} ms of connecting`, 'hello_timeout');
    }, helloTimeout);
  }

  private onHello(conn: Connection, m: Message, address: string, req: IncomingMessage, log: Logger): void {
    if (m.kind !== Kind.HELLO) {
      this.reject(conn, CloseCode.PROTOCOL_ERROR, 'the first message must be a hello [4, {version, role}]', 'protocol_error');
      return;
    }
    const h = m.hello;
    if (!SUPPORTED_VERSIONS.includes(h.version)) {
      this.reject(conn, CloseCode.VERSION, `protocol version ${h.version} is not supported; this relay speaks ${SUPPORTED_VERSIONS.join(' and ')}`, 'version');
      return;
    }
    conn.peerVersion = h.version;
    const peer = this.peers.get(conn);
    if (peer && h.role === 'node' && typeof h.name === 'string') peer.node = h.name.slice(0, NAME_LIMITS.name);
    const token = h.token ?? bearerToken(req);
    const ip = ipOfAddress(address);
    const backedOff = token === undefined ? undefined : this.parts.authFailures.refusal(ip, 'websocket');
    if (backedOff) return this.reject(conn, CloseCode.UNAUTHORIZED, backedOff.message, 'auth_backoff', false);
    if (h.role === 'node') {
      const verdict = this.parts.auth.node(h.name ?? '', token, peerCertificate(req.socket));
      if (!verdict.ok) return this.refuse(conn, log, 'node', verdict.reason, h.name, 'unauthorized', this.reportable(verdict, ip, address));
      if (this.parts.auth.nodesNeedAuth) {
        if (!this.parts.gate.promote(req.socket)) {
          const reason = `${peerIp(req.socket)} already has ${this.parts.limits.maxNodesPerAddress} nodes connected (--max-nodes-per-address)`;
          log.warn({ node: h.name, reason }, 'refused hello');
          return this.reject(conn, CloseCode.TOO_MANY_NODES, reason, 'too_many_nodes');
        }
      }
      this.attachNode(conn, h, address, log, verdict.credential);
    } else {
      const verdict = this.parts.auth.caller(token);
      if (!verdict.ok) return this.refuse(conn, log, 'caller', verdict.reason, undefined, 'unauthorized', this.reportable(verdict, ip, address));
      this.attachCaller(conn, verdict.identity, address, log, verdict.credential);
    }
  }

  /** Counts a guessed token of a hello; false when it is not the first of its address's burst, which is not logged. */
  private reportable(verdict: { reason: string; wrongToken?: boolean }, ip: string, address: string): boolean {
    return !verdict.wrongToken || this.parts.authFailures.failed(ip, 'websocket', verdict.reason, address);
  }

  /** One audit line per refused hello (`"msg":"refused hello"`, the peer is in `log`), then 4003; a guess only at the start of a burst. */
  private refuse(conn: Connection, log: Logger, role: string, reason: string, name?: string, metric = 'unauthorized', report = true): void {
    if (report) log.warn({ role, node: name, reason }, 'refused hello');
    this.reject(conn, CloseCode.UNAUTHORIZED, reason, metric, report);
  }

  private attachNode(conn: Connection, h: Hello, address: string, log: Logger, credential: Credential): void {
    const name = h.name ?? '';
    const badName = nodeNameProblem(name);
    if (badName !== undefined) {
      this.reject(conn, CloseCode.POLICY, badName, 'bad_node_name');
      return;
    }
    if (h.instance !== undefined && (h.instance.length === 0 || h.instance.length > NAME_LIMITS.instance)) {
      this.reject(conn, CloseCode.POLICY, `hello.instance must be 1-${NAME_LIMITS.instance} characters; this one has ${h.instance.length}`, 'bad_hello');
      return;
    }
    const services = h.services ?? {};
    if (Object.keys(services).length === 0) {
      this.reject(conn, CloseCode.POLICY, 'a node must announce at least one service', 'no_services');
      return;
    }
    const badHello = servicesProblem(services) ?? labelsProblem(h.labels ?? {}, 'hello.labels');
    if (badHello !== undefined) {
      log.warn({ node: name, reason: badHello }, 'refused node hello');
      this.reject(conn, CloseCode.POLICY, badHello, 'bad_hello');
      return;
    }
    if (Object.hasOwn(services, RELAY_SERVICE)) {
      conn.close(CloseCode.POLICY, `service name ${RELAY_SERVICE} is reserved for the relay's own presence service; rename it`);
      return;
    }
    const forbidden = this.parts.auth.serveRefusal(name, Object.keys(services), credential);
    if (forbidden !== undefined) return this.refuse(conn, log, 'node', forbidden, name, 'forbidden_service');
    this.parts.registry.claim(conn, h, address, log, credential);
  }

  private attachCaller(conn: Connection, identity: string | null, address: string, log: Logger, credential: Credential): void {
    conn.pauseWhenBacklogged = true;
    const link: CallerLink = this.parts.sessions.open(
      {
        respond: (id, error, result) =>
          error === null && result !== null ? conn.sendEncoded(encodeResult(id, result)) : conn.send(response(id, error, result)),
        goaway: (reason) => conn.send(goaway(reason)),
        notify: (method, params) => conn.send(notify(method, params)),
        streamStart: (id, length) => conn.send(responseStream(id, length)),
        streamChunk: (id, final, bytes, onSent) => conn.sendChunk(id, final, bytes, onSent),
        dropStream: (id) => conn.dropStream(id),
        acknowledge: (id, bytes) => conn.acknowledge(id, bytes),
        close: (code, reason) => conn.close(code, reason),
      },
      address,
      identity,
      log,
      credential,
      'websocket',
    );
    const peer = this.peers.get(conn);
    if (peer) peer.caller = link;
    conn.setHandlers({
      message: (msg) => link.onMessage(msg),
      close: (code, reason) => {
        this.parts.sessions.close(link);
        log.debug({ session: link.session, code, reason }, 'caller disconnected');
      },
    });
    conn.send(welcome({ version: conn.peerVersion, relay: this.parts.relayVersion, session: link.session, maxMessage: this.parts.limits.maxMessage }));
    log.debug({ session: link.session, identity }, 'caller connected');
  }
}

function bearerToken(req: IncomingMessage): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return m ? m[1] : undefined;
}

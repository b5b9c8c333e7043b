import { hostname } from 'node:os';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { advertiseUrl, defaultAdvertiseUrl, listenOn, peerIp, urlHost } from '../../util/address.js';
import { createListener, type TlsOptions } from '../listener.js';
import type { ConnectionGate } from './gate.js';
import type { DoorEvents } from './hub.js';
import { httpHandler, refuseRequest, type HttpHost } from './http.js';
import { WebSocketDoor, type WebSocketDoorParts } from './websocket.js';

/** What {@link Ports} is built from. */
export interface PortsParts {
  readonly settings: TlsOptions & {
    listen: string;
    helloTimeout: number;
    adminListen?: string | undefined;
    advertise?: string | undefined;
    dashboardToken?: string | undefined;
  };
  readonly gate: ConnectionGate;
  readonly doorEvents: DoorEvents;
  /** What the HTTP endpoints read (doors/http.ts). */
  readonly host: HttpHost;
  /** Counts the bytes of each socket of the main port. */
  track(socket: Socket): void;
  /** Everything the WebSocket door needs but the main port's server. */
  readonly websocket: Omit<WebSocketDoorParts, 'server'>;
}

type Address = { host: string; port: number; url: string };

/**
 * The relay's listening sockets: the main port (WebSocket upgrades, the HTTP gateway, /healthz and
 * /readyz, and /metrics, /nodes and the dashboard unless there is an admin port) and the admin
 * port. Every socket of the main port passes the gate first.
 */
export class Ports {
  private readonly http: Server;
  private readonly admin: Server | undefined;
  /** The main port serves TLS (wss://). */
  readonly secure: boolean;
  private readonly websocket: WebSocketDoor;
  private advertisedUrl: string | undefined;

  constructor(private readonly parts: PortsParts) {
    const { settings, gate, host } = parts;
    const separateAdmin = settings.adminListen !== undefined;
    const publicDashboard = settings.dashboardToken !== undefined ? 'public' : undefined;
    const handle = httpHandler(host, { gateway: true, admin: !separateAdmin, fallback: 'upgrade', dashboard: publicDashboard });
    const listener = createListener(settings, settings.helloTimeout, (req, res) => this.onHttp(req, res, handle, this.http));
    this.http = listener.server;
    this.secure = listener.secure;
    const adminHandle = httpHandler(host, { gateway: false, admin: true, fallback: 'not-found', dashboard: 'admin' });
    this.admin = separateAdmin ? createServer((req, res) => this.onHttp(req, res, adminHandle, this.admin!)) : undefined;
    this.websocket = new WebSocketDoor({ ...parts.websocket, server: this.http });
    // Every socket counts against its address, its bytes are counted, and it must reach an accepted hello in time.
    this.http.on(listener.socketEvent, (socket: Socket) => {
      if (gate.connected(socket)) parts.track(socket);
    });
    this.http.on('upgrade', (req: IncomingMessage, socket: Socket, head: Buffer) => this.websocket.upgrade(req, socket, head));
    this.http.on('clientError', (_err, socket) => socket.destroy());
    this.admin?.on('clientError', (_err, socket) => socket.destroy());
  }

  /** The WebSocket door's refusal of a node connection (node-registry.ts closes with it). */
  get reject(): WebSocketDoor['reject'] {
    return (conn, code, reason, metric, audit) => this.websocket.reject(conn, code, reason, metric, audit);
  }

  get listening(): boolean {
    return this.http.listening;
  }

  /** Listens on the main port, then the admin port; the advertised URL is known from here. */
  async listen(log: { info(fields: object, msg: string): void }): Promise<Address> {
    const { settings } = this.parts;
    await listenOn(this.http, settings.listen);
    if (this.admin) {
      await listenOn(this.admin, settings.adminListen!);
      log.info(this.adminAddress!, 'admin listening');
    }
    const address = this.address!;
    this.advertisedUrl =
      settings.advertise !== undefined
        ? advertiseUrl(settings.advertise, 'Relay option advertise')
        : defaultAdvertiseUrl(settings.listen, address.port, this.secure, hostname());
    return address;
  }

  /** The URL nodes dial to reach this relay (`advertise`, else derived once listening). */
  get advertised(): string | undefined {
    return this.advertisedUrl;
  }

  get address(): Address | undefined {
    const a = this.http.address() as AddressInfo | null;
    if (!a) return undefined;
    return { host: a.address, port: a.port, url: `${this.secure ? 'wss' : 'ws'}://${urlHost(a.address)}:${a.port}/` };
  }

  get adminAddress(): Address | undefined {
    const a = this.admin?.address() as AddressInfo | null | undefined;
    if (!a) return undefined;
    return { host: a.address, port: a.port, url: `http://${urlHost(a.address)}:${a.port}/` };
  }

  /** Closes every WebSocket (1001), then both listeners; HTTP requests still open are cut after 2 s. */
  async close(): Promise<void> {
    this.websocket.close();
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
    if (this.parts.gate.engage(req.socket).overLimit) {
      this.parts.doorEvents.refused('too_many_connections');
      res.writeHead(429, { 'content-type': 'text/plain' }).end(`too many connections from ${peerIp(req.socket)}\n`);
      return;
    }
    const refused = this.parts.gate.refusedBrowser(req, server, server === this.admin ? 'admin' : 'http');
    if (refused !== undefined) return refuseRequest(res, refused);
    handle(req, res);
  }
}

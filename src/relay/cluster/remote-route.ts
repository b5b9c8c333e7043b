import type { NodeMeta } from '../../wire/messages.js';
import { methodsIn, servesMethod, serviceTable } from '../service-table.js';
import type { NodeRoute, RoutedCall } from '../contracts.js';
import type { RemoteNodeInfo } from './messages.js';

/** What a remote route needs from the cluster: sending a call and what follows it to the node's relay. */
export interface RouteTransport {
  /** The other relay is reachable now (NATS connected, its heartbeats arriving). */
  reachable(relayId: string): boolean;
  open(route: RemoteRoute, call: RoutedCall, params: Uint8Array, meta: NodeMeta, stream: number): void;
  chunk(route: RemoteRoute, call: RoutedCall, final: boolean, bytes: Uint8Array, onSent: () => void): void;
  abandon(route: RemoteRoute, call: RoutedCall, tellNode: boolean): void;
  closeSession(route: RemoteRoute, session: string): void;
}

/**
 * A node whose tunnel ends on another relay of the cluster: the route to it through that relay, over
 * NATS. The node's fields are what that relay announced (and checked again here).
 */
export class RemoteRoute implements NodeRoute {
  readonly local = false;
  readonly relays: readonly string[];
  readonly services: Map<string, Set<string>>;
  readonly connectedAt: Date;
  /** Calls sent through this route and not answered. */
  inFlight = 0;
  served = 0;
  private info: RemoteNodeInfo;

  constructor(
    readonly relayId: string,
    readonly relayName: string,
    info: RemoteNodeInfo,
    private readonly transport: RouteTransport,
  ) {
    this.info = info;
    this.relays = [relayName];
    this.services = serviceTable(info.services);
    this.connectedAt = new Date(info.connectedAt);
  }

  get name(): string {
    return this.info.name;
  }
  get instance(): string | undefined {
    return this.info.instance ?? undefined;
  }
  get labels(): Readonly<Record<string, string>> {
    return this.info.labels;
  }
  get address(): string {
    return this.info.address;
  }
  get draining(): boolean {
    return this.info.draining;
  }
  get available(): boolean {
    return !this.info.draining && this.transport.reachable(this.relayId);
  }

  /** The same node, announced again (its draining flag changed). Services and labels of a node do not change without a new connection. */
  update(info: RemoteNodeInfo): void {
    this.info = info;
  }

  hasMethod(service: string, method: string): boolean {
    return servesMethod(this.services, service, method);
  }

  methods(service: string): string[] {
    return methodsIn(this.services, service);
  }

  forward(call: RoutedCall, params: Uint8Array, meta: NodeMeta, stream = 0): void {
    call.path = this;
    this.transport.open(this, call, params, meta, stream);
  }

  forwardChunk(call: RoutedCall, final: boolean, bytes: Uint8Array, onSent: () => void): void {
    this.transport.chunk(this, call, final, bytes, onSent);
  }

  abandon(call: RoutedCall, tellNode: boolean): void {
    this.transport.abandon(this, call, tellNode);
  }

  closeSession(session: string): void {
    this.transport.closeSession(this, session);
  }
}

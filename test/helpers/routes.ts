import type { NodeRoute, RoutedCall } from '../../src/relay/contracts.js';
import { methodsIn, servesMethod, serviceTable } from '../../src/relay/service-table.js';
import type { NodeMeta } from '../../src/wire/messages.js';

/**
 * A route to a node held in the hand: a second implementation of the route contract (contracts.ts),
 * beside the node link and the remote route, for tests of the directory and the selectors. It
 * records what is sent through it; `inFlight`, `draining` and `up` are set by the test.
 */
export class FakeRoute implements NodeRoute {
  readonly services: Map<string, Set<string>>;
  readonly connectedAt = new Date(0);
  instance: string | undefined = undefined;
  address = '10.0.0.9:1';
  relays: readonly string[] = ['relay-1'];
  draining = false;
  /** The route's transport is open (false: as a closing socket). */
  up = true;
  inFlight = 0;
  served = 0;
  readonly forwarded: Array<{ call: RoutedCall; meta: NodeMeta }> = [];
  readonly closedSessions: string[] = [];
  readonly abandoned: Array<{ call: RoutedCall; tellNode: boolean }> = [];

  constructor(
    readonly name: string,
    services: Record<string, readonly string[]>,
    readonly labels: Record<string, string> = {},
    readonly local = true,
  ) {
    this.services = serviceTable(services);
  }

  get available(): boolean {
    return this.up && !this.draining;
  }

  hasMethod(service: string, method: string): boolean {
    return servesMethod(this.services, service, method);
  }

  methods(service: string): string[] {
    return methodsIn(this.services, service);
  }

  forward(call: RoutedCall, _params: Uint8Array, meta: NodeMeta): void {
    call.path = this;
    this.forwarded.push({ call, meta });
  }

  forwardChunk(_call: RoutedCall, _final: boolean, _bytes: Uint8Array, onSent: () => void): void {
    onSent();
  }

  abandon(call: RoutedCall, tellNode: boolean): void {
    this.abandoned.push({ call, tellNode });
  }

  closeSession(session: string): void {
    this.closedSessions.push(session);
  }
}

import type { WireError } from '../errors.js';
import type { Message, NodeMeta } from '../wire/messages.js';

/**
 * The contracts between the relay's parts, in one file so that no implementation has to import
 * another to name them: a route to a node, a call in transit, where a caller's answers go, and who
 * watches calls begin and end.
 */

/**
 * One way to reach one node. A node's WebSocket link on this relay is one (node-link.ts); another
 * relay of the cluster that holds the node's tunnel is another (cluster/remote-route.ts); the
 * directory's entry for a node, which picks among the node's routes, is a third (directory.ts).
 * Routing, selectors, broadcast and presence use only this.
 */
export interface NodeRoute {
  readonly name: string;
  /** The node process's random id from its hello; undefined for peers that send none. */
  readonly instance: string | undefined;
  /** Service → its methods (`*`: any method). */
  readonly services: ReadonlyMap<string, ReadonlySet<string>>;
  readonly labels: Readonly<Record<string, string>>;
  /** Where the node's connection came from, as its relay saw it. */
  readonly address: string;
  readonly connectedAt: Date;
  /** Names of the relays holding the node's tunnels, sorted. */
  readonly relays: readonly string[];
  /** The node's tunnel ends on this relay. */
  readonly local: boolean;
  /** The node said GOAWAY (or was replaced): it takes no new calls. */
  readonly draining: boolean;
  /** May take a new call now. */
  readonly available: boolean;
  /** Calls this relay sent through this route that are not answered yet. */
  readonly inFlight: number;
  /** Calls answered through this route. */
  readonly served: number;
  hasMethod(service: string, method: string): boolean;
  /** The methods of `service`, sorted. */
  methods(service: string): string[];
  /**
   * Sends a call. Large params go in chunks; with `stream` > 0 the caller is still sending them and
   * {@link forwardChunk} passes each on. Sets `call.path` to the route that carries it.
   */
  forward(call: RoutedCall, params: Uint8Array, meta: NodeMeta, stream?: number): void;
  /** Passes on a chunk of a call's params; `onSent` once it is handed on (or dropped). */
  forwardChunk(call: RoutedCall, final: boolean, bytes: Uint8Array, onSent: () => void): void;
  /** Forgets a call (answered elsewhere, expired, or its caller left), telling the node to stop it when `tellNode`. */
  abandon(call: RoutedCall, tellNode: boolean): void;
  /** The caller of `session` is gone: the node drops the session and its running handlers. */
  closeSession(session: string): void;
}

/** One call in transit through the relay, as routes see it (relayed-call.ts). */
export interface RoutedCall {
  readonly caller: CallSink;
  /** The caller's id for it (a broadcast's sub-call: its index). */
  readonly callerId: number;
  readonly method: string;
  /** ms the caller waits, from when the call was routed. */
  readonly timeout: number;
  /** The node the directory chose. */
  readonly node: NodeRoute;
  /** The route that carries the call, set by its `forward`. */
  path: NodeRoute | undefined;
  /** The call's id on its route (a tunnel id on a node link). */
  tunnelId: number;
  /** Bytes of params the caller has still to send (streamed requests). */
  uploadLeft: number;
  /** The route streams this call's params itself (a whole body it cut into chunks). */
  uploading: boolean;
  /** The node answers with a stream, which the relay may be passing on. */
  streaming: boolean;
  /** performance.now() when routed. */
  readonly started: number;
  /** Forgets the call on its route, telling the node to stop it when `tellNode`. */
  abandon(tellNode: boolean): void;
}

/** Where a forwarded call's outcome goes: the caller's link, or a broadcast collecting answers. */
export interface CallSink {
  complete(call: RoutedCall, error: WireError | null, result: Uint8Array | null): void;
  /** The node answers with a result of `length` bytes, in chunks that follow. */
  streamStart(call: RoutedCall, length: number): void;
  /**
   * One chunk of that result; after the final one the call is over. `done` acknowledges the chunk to
   * the node: call it once the chunk is passed on or no longer needed.
   */
  streamChunk(call: RoutedCall, final: boolean, bytes: Uint8Array, done: () => void): void;
}

/**
 * Where a caller's answers go: a WebSocket connection, one HTTP gateway request, or a connection on
 * the MessagePack-RPC port.
 */
export interface CallerOutput {
  respond(id: number, error: WireError | null, result: Uint8Array | null): void;
  /** Tells the caller the relay is draining, where its transport can say so. */
  goaway?(reason: string): void;
  /** Sends a notification (presence events), where the transport can carry one. */
  notify?(method: string, params: Uint8Array): void;
  /**
   * Passes on a large result as the node streams it: a head, then chunks. A transport without these
   * gets the result whole through `respond` once every chunk has arrived.
   */
  streamStart?(id: number, length: number): void;
  streamChunk?(id: number, final: boolean, bytes: Uint8Array, onSent: () => void): void;
  /** Stops passing on a result stream that ended early (cancelled, expired, node lost). */
  dropStream?(id: number): void;
  /**
   * A transport without `streamChunk`: the relay took one more chunk of a result it reassembles for
   * this caller (now in the link's `budget`). Those bytes are held for the caller as surely as its
   * backlog, and the door counts them toward its slow-consumer cut.
   */
  reassembled?(): void;
  /** Acknowledges the caller's own chunks of stream `id` once the relay has passed them on (flow control). */
  acknowledge?(id: number, bytes: number): void;
  /** Ends the caller's connection, where it has one (too many failed Logins, revoked token). */
  close?(code: number, reason: string): void;
}

/** The limits a caller link enforces. */
export interface CallerLimits {
  defaultTimeout: number;
  maxTimeout: number;
  /** Largest params or result, bytes; also the largest streamed body the relay will reassemble. */
  maxMessage: number;
  maxCallerInFlight: number;
  maxNodeInFlight: number;
  /** Bytes of incomplete bodies the relay reassembles for one caller connection. */
  maxReassembly: number;
  /** The relay's memory budget over every connection: while pressed, new calls are refused OVERLOADED. */
  readonly memory?: { readonly pressed: boolean; describe(): string } | undefined;
}

/** A call or a broadcast, as an observer sees it. */
export interface ObservedCall {
  readonly method: string;
  readonly started: number;
  /** The route that carried it: `local` or `remote` (undefined for a broadcast). */
  readonly path?: NodeRoute | undefined;
}

/** Sees every call begin and end, for metrics and for the relay's drain (a broadcast counts as one call). */
export interface CallObserver {
  /** A call was routed to a node (or a broadcast to its nodes). */
  started(call: ObservedCall): void;
  /**
   * A call ended with `code` (`OK` on success). `call` is undefined when the request was refused
   * before it reached a node; then `method` is what the caller asked for.
   */
  ended(method: string, code: string, call: ObservedCall | undefined): void;
  /** A request was refused by a rule (FORBIDDEN) before it reached a node: the audit trail's `refused call`. */
  refused?(who: { readonly session: string; readonly address: string; readonly identity: string | null }, method: string, reason: string): void;
}

/** One HTTP gateway request's session; `close` sends SESSION_CLOSED to the nodes it used. */
export interface GatewaySession {
  /** Takes the request (`link.onMessage`). */
  readonly link: { onMessage(m: Message): void };
  close(): void;
}

/** Where a finished broadcast goes: the caller link that asked for it. */
export interface BroadcastOwner {
  complete(call: { readonly callerId: number; readonly method: string }, error: WireError | null, result: Uint8Array | null): void;
}

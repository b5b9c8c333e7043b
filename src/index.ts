/**
 * tunnel-rpc: reverse RPC for services behind NAT. The public API, by role:
 *
 * - **Relay**: {@link Relay} (several form a cluster over NATS with its `cluster` option);
 *   {@link MsgpackRpcPort} lets MessagePack-RPC programs (Go's net/rpc) call nodes through it.
 * - **Node**: {@link TunnelNode} serves a {@link ServiceRegistry}; {@link ForwardedService} (made
 *   from a `--forward` value with {@link parseForward}) passes a service to an existing local
 *   MessagePack-RPC server; {@link DirectListener} lets callers on the node's own network skip the
 *   relay.
 * - **Caller**: {@link connect} gives a {@link Client}; `client.service<typeof Svc>(name)` a typed
 *   {@link ServiceStub}.
 * - **Writing services**: {@link defineService}, {@link withContext} (a handler that needs its
 *   {@link CallContext}), {@link passwordLogin}, {@link Session}.
 * - **Errors**: {@link TunnelError} with a {@link TunnelErrorCode}; {@link isTunnelError} narrows it.
 *
 * Anything not exported here (relay routing, wire format, the example services) is internal and may
 * change without notice.
 */

// Relay
export { Relay } from './relay/relay.js';
export type { RelayOptions } from './relay/options.js';
export type { NodeInfo } from './wire/presence.js';
export type { CallerAdmission, Revocation } from './relay/doors/hub.js';
export type { AuditRecord, AuditKind, AuditDoor } from './relay/events.js';
export type { Permissions } from './relay/permissions.js';
export type { ClusterOptions } from './relay/cluster/options.js';
export { MsgpackRpcPort, type MsgpackRpcPortOptions, type CallerAuthenticator } from './relay/msgpack-rpc-port.js';

// Node
export { TunnelNode, type NodeOptions } from './node/node.js';
export type { TunnelState } from './node/tunnel-state.js';
export { ForwardedService, parseForward, type ForwardArgs, type ForwardOptions, type ForwardTarget } from './node/forward.js';
export { DirectListener, type DirectListenerOptions } from './node/direct.js';

// Caller
export { connect, Client, type ClientOptions, type BroadcastResult, type PresenceWatch } from './client/client.js';
export type { CallOptions, BroadcastOptions, Selector } from './client/options.js';
export type { ServiceStub, BroadcastStub, StubMethod, BroadcastMethod, StubArgs, StubResult, MethodName, ReservedName, UntypedService } from './client/stub.js';
export type { Wire, WireArgs, WireTop } from './rpc/wire-value.js';
export type { PresenceEvent } from './wire/presence.js';

// Writing services
export { ServiceRegistry, defineService, type ServiceOptions, type ServiceImpl } from './rpc/registry.js';
export { withContext, type CallContext, type CallerInfo, type ContextHandler } from './rpc/context.js';
export { Session } from './rpc/session.js';
export { passwordLogin, parseCredentials, secretsEqual, type LoginArgs, type PasswordCheck, type PasswordLoginOptions } from './rpc/login.js';

// Errors
export { TunnelError, ErrorCode, NoNodeReason, isTunnelError, type TunnelErrorCode, type WireError } from './errors.js';
export { OptionError } from './util/options.js';

// Logging and protocol
export { createLogger, type Logger, type LogLevel } from './util/logger.js';
export { tuneGarbageCollection } from './util/gc.js';
export { PROTOCOL_VERSION } from './wire/messages.js';

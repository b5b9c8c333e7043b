/** Public entry of the library: relay, node and caller, and the pieces services are written with. */
export { Relay, type RelayOptions, type NodeInfo } from './relay/relay.js';
export { TunnelNode, type NodeOptions } from './node/node.js';
export { connect, Client, type ClientOptions, type BroadcastResult, type PresenceWatch } from './client/client.js';
export type { CallOptions, BroadcastOptions, Selector } from './client/options.js';
export type { ServiceStub, BroadcastStub, StubMethod, BroadcastMethod, StubArgs, StubResult, MethodName, ReservedName, UntypedService } from './client/stub.js';
export type { PresenceEvent } from './wire/presence.js';
export { ServiceRegistry, defineService, type ServiceOptions, type ServiceImpl } from './rpc/registry.js';
export { withContext, type CallContext, type CallerInfo, type ContextHandler } from './rpc/context.js';
export { Session } from './rpc/session.js';
export { passwordLogin, parseCredentials, secretsEqual, type LoginArgs, type PasswordCheck, type PasswordLoginOptions } from './rpc/login.js';
export { TunnelError, ErrorCode, isTunnelError, type TunnelErrorCode, type WireError } from './errors.js';
export { registerExamples } from './services/index.js';
export { createLogger, type Logger, type LogLevel } from './util/logger.js';
export { PROTOCOL_VERSION } from './wire/messages.js';

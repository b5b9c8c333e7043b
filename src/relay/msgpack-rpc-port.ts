/** The MessagePack-RPC port moved to doors/msgpack-rpc.ts; this path stays for its importers. */
export * from './doors/msgpack-rpc.js';

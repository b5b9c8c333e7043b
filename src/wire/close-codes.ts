/** WebSocket close codes we send; 4xxx are ours (docs/PROTOCOL.md, "Closing"). */
export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  /** Reported, never sent: the connection ended without a close frame, or never opened. */
  ABNORMAL: 1006,
  INVALID_DATA: 1007,
  POLICY: 1008,
  TOO_LARGE: 1009,
  INTERNAL: 1011,
  /** Another connection registered the same node name. */
  REPLACED: 4000,
  /** No pong or message within the heartbeat timeout. */
  HEARTBEAT_TIMEOUT: 4001,
  /** The hello did not arrive in time. */
  HELLO_TIMEOUT: 4002,
  /** Token or certificate refused. */
  UNAUTHORIZED: 4003,
  /** The peer speaks a protocol version we do not. */
  VERSION: 4004,
  /** Too many failed Login attempts on this connection. */
  LOGIN_LIMIT: 4005,
  /** A node name held by another live node process (a different instance id). */
  NAME_CONFLICT: 4006,
  /** More bytes waited for this peer than the relay holds for one connection (it does not read). */
  SLOW_CONSUMER: 4008,
  /** The node's address already has as many authenticated nodes as the relay takes from one address. */
  TOO_MANY_NODES: 4009,
} as const;

/** WebSocket close reasons are limited to 123 bytes of UTF-8. */
export function closeReason(reason: string): string {
  const bytes = Buffer.from(reason);
  if (bytes.length <= 123) return reason;
  return (
    bytes
      .subarray(0, 120)
      .toString('utf8')
      .replace(/\uFFFD+$/, '') + '...'
  );
}

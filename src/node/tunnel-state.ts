/** One of a node's tunnels, as `node.tunnels` describes it. */
export interface TunnelState {
  /** The relay's WebSocket URL. */
  url: string;
  /** The relay has welcomed this tunnel and it is open. */
  connected: boolean;
  /** When the tunnel entered its current state (welcomed, or lost); undefined before its first dial ended. */
  since: Date | undefined;
  /** Handlers running for calls that came through this tunnel. */
  running: number;
}

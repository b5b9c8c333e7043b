/** One of a node's tunnels, as `node.tunnels` describes it. */
export interface TunnelState {
  /** The configured relay's WebSocket URL (`--relay`, the `relay` option). */
  url: string;
  /** The relay dialled now: `url`, or another relay of the cluster the tunnel moved to (`followCluster`). */
  current: string;
  /** The relay has welcomed this tunnel and it is open. */
  connected: boolean;
  /** When the tunnel entered its current state (welcomed, or lost); undefined before its first dial ended. */
  since: Date | undefined;
  /** Handlers running for calls that came through this tunnel. */
  running: number;
}

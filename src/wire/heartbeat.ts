/** The part of a WebSocket that heartbeats touch (connection.ts `SocketLike` has it). */
export interface PingSocket {
  readonly readyState: 0 | 1 | 2 | 3;
  readonly OPEN: 1;
  ping(): void;
  once(event: 'pong', listener: () => void): unknown;
  off(event: 'pong', listener: () => void): unknown;
}

/**
 * Pings the peer every third of `timeout`, and calls `dead` once it has been silent (no message, no
 * pong: whoever hears from it calls {@link seen}) for longer than `timeout` ms.
 */
export class Heartbeat {
  private lastSeen = Date.now();
  private timer: NodeJS.Timeout | undefined;

  constructor(ws: PingSocket, timeout: number, dead: () => void) {
    const interval = Math.max(Math.floor(timeout / 3), 10);
    let lastTick = Date.now();
    this.timer = setInterval(() => {
      const now = Date.now();
      const frozen = now - lastTick > 2 * interval;
      lastTick = now;
      if (frozen) {
        // This process was the one frozen (a long GC pause, a stopped VM): what the peer sent meanwhile
        // is still unread in the socket. Give it a fresh timeout instead of dropping it unheard.
        this.lastSeen = Math.max(this.lastSeen, now - interval);
      } else if (now - this.lastSeen > timeout) {
        dead();
        return;
      }
      if (ws.readyState === ws.OPEN) ws.ping();
    }, interval);
    this.timer.unref();
  }

  /** The peer showed it is there. */
  seen(): void {
    this.lastSeen = Date.now();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/**
 * Asks the peer whether it is still there: a WebSocket ping, true when its pong arrives within
 * `timeout` ms. A half-open connection (the peer vanished without closing) answers false.
 */
export function probe(ws: PingSocket, timeout: number): Promise<boolean> {
  return new Promise((resolve) => {
    const onPong = () => {
      clearTimeout(timer);
      resolve(true);
    };
    const timer = setTimeout(() => {
      ws.off('pong', onPong);
      resolve(false);
    }, timeout);
    ws.once('pong', onPong);
    ws.ping();
  });
}

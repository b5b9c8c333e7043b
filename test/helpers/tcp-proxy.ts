import { once } from 'node:events';
import { connect, createServer, type Server, type Socket } from 'node:net';

/**
 * A TCP proxy on 127.0.0.1 that a test controls: everything it accepts is piped to `target`. `cut()`
 * closes every proxied connection and refuses new ones (accepted, then closed at once, so the port
 * stays ours) until `restore()`: a network partition between whatever talks through it.
 */
export class TcpProxy {
  /** Connections piped through since the start (a route reconnecting shows here). */
  accepted = 0;
  /**
   * When bytes last came in from an accepted connection (`Date.now()`), handed on to `target` in the
   * same turn: whatever `target` last heard from its peers through the proxy, it heard at or after this.
   */
  lastFromClient = 0;
  private cutNow = false;
  private readonly pairs = new Set<[Socket, Socket]>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
    readonly target: number,
  ) {
    proxies.add(this);
  }

  /** Listens on `port` (or a free one) and forwards to 127.0.0.1:`target`. */
  static async start(target: number, port = 0): Promise<TcpProxy> {
    const held: Socket[] = [];
    let accept = (down: Socket): void => {
      held.push(down);
    };
    const server = createServer((down) => accept(down));
    server.listen(port, '127.0.0.1');
    await once(server, 'listening');
    const proxy = new TcpProxy(server, (server.address() as { port: number }).port, target);
    accept = (down) => proxy.accept(down);
    for (const down of held) proxy.accept(down);
    return proxy;
  }

  private accept(down: Socket): void {
    if (this.cutNow) {
      down.destroy();
      return;
    }
    this.accepted++;
    const up = connect(this.target, '127.0.0.1');
    const pair: [Socket, Socket] = [down, up];
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    for (const s of pair) s.on('error', end).on('close', end);
    down.on('data', () => {
      this.lastFromClient = Date.now();
    });
    down.pipe(up);
    up.pipe(down);
  }

  /** Closes every connection through the proxy and refuses new ones. */
  cut(): void {
    this.cutNow = true;
    for (const [down, up] of [...this.pairs]) {
      down.destroy();
      up.destroy();
    }
    this.pairs.clear();
  }

  /** Accepts and forwards connections again. */
  restore(): void {
    this.cutNow = false;
  }

  /** Connections open through the proxy now. */
  get open(): number {
    return this.pairs.size;
  }

  async close(): Promise<void> {
    this.cut();
    proxies.delete(this);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

const proxies = new Set<TcpProxy>();

/** Closes every proxy a test started. */
export async function stopAllProxies(): Promise<void> {
  await Promise.all([...proxies].map((p) => p.close()));
}

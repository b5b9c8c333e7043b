import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';

/** Where Debian's nats-server is (CI installs the package; tests start the server themselves). */
export const NATS_SERVER = ['/usr/bin/nats-server', '/usr/sbin/nats-server', '/usr/local/bin/nats-server'].find((p) => existsSync(p));

/** A free TCP port on 127.0.0.1 (bound, then released). */
export async function freePort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** A nats-server on 127.0.0.1 that a test started; `url` is what relays are given. */
export class NatsServer {
  readonly child: ChildProcess;
  readonly url: string;
  stderr = '';

  private constructor(
    readonly port: number,
    readonly routePort: number | undefined,
    args: string[],
  ) {
    if (!NATS_SERVER) throw new Error('nats-server is not installed (Debian package nats-server; .ci/run installs it)');
    this.url = `nats://127.0.0.1:${port}`;
    this.child = spawn(NATS_SERVER, ['-a', '127.0.0.1', '-p', String(port), ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
    });
    servers.add(this);
    void once(this.child, 'exit').then(() => servers.delete(this));
  }

  /**
   * Starts a server (on `port`, or a free one) and waits until it accepts clients. With `cluster`,
   * it also listens for routes on `routePort` and solicits the routes given.
   */
  static async start(options: { port?: number; cluster?: { name: string; routePort: number; routes: number[] }; args?: string[] } = {}): Promise<NatsServer> {
    const port = options.port ?? (await freePort());
    const args = [...(options.args ?? [])];
    if (options.cluster) {
      args.push('--cluster_name', options.cluster.name, '--cluster', `nats://127.0.0.1:${options.cluster.routePort}`);
      if (options.cluster.routes.length > 0) args.push('--routes', options.cluster.routes.map((p) => `nats://127.0.0.1:${p}`).join(','));
    }
    const server = new NatsServer(port, options.cluster?.routePort, args);
    await server.waitFor(/Server is ready/, 10_000);
    return server;
  }

  /** Waits for a line of the server's log, bounded. */
  async waitFor(pattern: RegExp, timeout = 10_000): Promise<void> {
    const deadline = Date.now() + timeout;
    while (!pattern.test(this.stderr)) {
      if (this.child.exitCode !== null) throw new Error(`nats-server exited: ${this.stderr.slice(-1000)}`);
      if (Date.now() > deadline) throw new Error(`nats-server did not log ${pattern} within ${timeout} ms: ${this.stderr.slice(-1000)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, 50);
        this.child.stderr!.once('data', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  async stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = once(this.child, 'exit');
    this.child.kill(signal);
    await exited;
  }
}

const servers = new Set<NatsServer>();

/** Stops every nats-server a test started. */
export async function stopAllNats(): Promise<void> {
  await Promise.all([...servers].map((s) => s.stop()));
}

import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Where Debian's nats-server is (CI installs the package; tests start the server themselves). */
export const NATS_SERVER = ['/usr/bin/nats-server', '/usr/sbin/nats-server', '/usr/local/bin/nats-server'].find((p) => existsSync(p));

/**
 * A free TCP port on 127.0.0.1 (bound, then released); with `everyInterface`, free on every
 * interface, for a test that makes a server listen on all of them at that port.
 */
export async function freePort(o: { everyInterface?: boolean } = {}): Promise<number> {
  const server = createServer();
  if (o.everyInterface) server.listen(0);
  else server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The NATS account of the relays in tests: loopback NATS asks for credentials, as in production. */
export const NATS_USER = 'tunnel-relay';
export const NATS_PASSWORD = `test-${randomBytes(12).toString('hex')}`;

let keyFile: string | undefined;

/** The cluster key every relay of this test process shares: a file of mode 600 made once. */
export function clusterKeyFile(): string {
  if (!keyFile) {
    keyFile = join(mkdtempSync(join(tmpdir(), 'tunnel-cluster-')), 'cluster.key');
    writeFileSync(keyFile, `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  }
  return keyFile;
}

/** The flags a relay needs to join the test cluster on `servers`: the NATS account and the cluster key. */
export function clusterArgs(servers: string | string[]): string[] {
  const list = Array.isArray(servers) ? servers : [servers];
  return ['--cluster', list.join(','), '--cluster-user', NATS_USER, '--cluster-password', NATS_PASSWORD, '--cluster-key', clusterKeyFile()];
}

export interface NatsServerOptions {
  port?: number;
  cluster?: { name: string; routePort: number; routes: number[] };
  args?: string[];
  open?: boolean;
  /** The text of a configuration file (`-c`), written to a temporary file: what flags cannot say (`cluster { advertise }`). */
  config?: string;
}

/** A nats-server on 127.0.0.1 that a test started; `url` is what relays are given. */
export class NatsServer {
  readonly child: ChildProcess;
  readonly url: string;
  stderr = '';
  /** What this server was started with (its port included): {@link restart} starts the same again. */
  options: NatsServerOptions = {};

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
   * it also listens for routes on `routePort` and solicits the routes given. Clients log in as
   * {@link NATS_USER} unless `open` (or a configuration file in `args` says otherwise).
   */
  static async start(options: NatsServerOptions = {}): Promise<NatsServer> {
    const port = options.port ?? (await freePort());
    const args = [...(options.args ?? [])];
    if (options.config !== undefined) {
      const file = join(mkdtempSync(join(tmpdir(), 'nats-conf-')), 'nats.conf');
      writeFileSync(file, `${options.config}\n`);
      args.push('-c', file);
      // A configuration file of the test's own still gets the relays' account, unless it is open.
      if (!options.open) args.push('--user', NATS_USER, '--pass', NATS_PASSWORD);
    } else if (!options.open && !args.includes('-c')) args.push('--user', NATS_USER, '--pass', NATS_PASSWORD);
    if (options.cluster) {
      args.push('--cluster_name', options.cluster.name, '--cluster', `nats://127.0.0.1:${options.cluster.routePort}`);
      if (options.cluster.routes.length > 0) args.push('--routes', options.cluster.routes.map((p) => `nats://127.0.0.1:${p}`).join(','));
    }
    const server = new NatsServer(port, options.cluster?.routePort, args);
    server.options = { ...options, port };
    await server.waitFor(/Server is ready/, 10_000);
    return server;
  }

  /** Starts a new server like this one, on the same port (after this one stopped): a NATS restart. */
  restart(): Promise<NatsServer> {
    return NatsServer.start(this.options);
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

/**
 * The `cluster {}` block of a server whose routes all go where the test says: it listens for routes
 * on `listen`, tells the other servers to reach it at `advertise` (a proxy in front of `listen`, so
 * gossip never hands out the real port) and solicits `routes` (proxies too).
 */
export function clusterConfig(c: { name: string; listen: number; advertise: number; routes: number[] }): string {
  return [
    'cluster {',
    `  name: ${c.name}`,
    `  listen: 127.0.0.1:${c.listen}`,
    `  advertise: 127.0.0.1:${c.advertise}`,
    '  no_advertise: true',
    `  routes: [${c.routes.map((p) => `nats-route://127.0.0.1:${p}`).join(', ')}]`,
    '}',
  ].join('\n');
}

/** Stops every nats-server a test started. */
export async function stopAllNats(): Promise<void> {
  await Promise.all([...servers].map((s) => s.stop()));
}

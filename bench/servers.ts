/**
 * Third-party servers the benchmark compares against, each started on 127.0.0.1 only and thrown
 * away afterwards: `nats-server` (Debian package nats-server) and an `ssh -R` remote forward through
 * a throwaway `sshd` (openssh-server) with keys generated for the run. Each start returns a string
 * saying why the row is skipped when the program is missing or does not come up.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

export interface Started {
  /** `127.0.0.1:port` where the callers connect. */
  addr: string;
  stop(): void;
}

/** A port free on 127.0.0.1 right now, for servers that cannot report the one they picked. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Spawns a program and resolves once a line of its output matches, bounded by `ms`. */
function startUntil(file: string, args: string[], ready: RegExp, ms = 15_000): Promise<ChildProcess> {
  const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let seen = '';
  return new Promise((resolve, reject) => {
    const fail = (why: string) => {
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(new Error(`${file} ${why}: ${seen.trim().slice(-500)}`));
    };
    const timer = setTimeout(() => fail(`did not print ${ready} within ${ms} ms`), ms);
    const onData = (d: Buffer) => {
      seen += d.toString();
      if (ready.test(seen)) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        child.stderr!.off('data', onData);
        child.stdout!.resume();
        child.stderr!.resume();
        resolve(child);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('error', (err) => fail(err.message));
    child.once('exit', (code) => fail(`exited (${code})`));
  });
}

const installed = (file: string, versionArg: string) => !spawnSync(file, [versionArg], { stdio: 'ignore' }).error;

/**
 * `nats-server -a 127.0.0.1 -p PORT`, with no config file (so /etc/nats-server.conf is not read),
 * no monitoring port, no JetStream.
 */
export async function startNatsServer(): Promise<Started | string> {
  if (!installed('nats-server', '--version')) return 'NATS rows skipped: nats-server not found (apt-get install nats-server)';
  const port = await freePort();
  try {
    const child = await startUntil('nats-server', ['-a', '127.0.0.1', '-p', String(port)], /Server is ready/);
    return { addr: `127.0.0.1:${port}`, stop: () => child.kill('SIGKILL') };
  } catch (err) {
    return `NATS rows skipped: ${(err as Error).message}`;
  }
}

const SSHD = '/usr/sbin/sshd';

/**
 * `ssh -N -R 127.0.0.1:P:target` through a throwaway sshd on 127.0.0.1: host and client keys
 * generated into a temporary folder, a config of our own (`-f`, so /etc/ssh/sshd_config is not
 * read) that admits only the current user with that key and only remote forwarding. Callers
 * connect to `addr`; sshd carries each connection to the ssh client, which opens it to `target`,
 * as a user reaching a server behind NAT with ssh would.
 */
export async function startSshForward(target: string): Promise<Started | string> {
  if (!existsSync(SSHD)) return `ssh -R rows skipped: ${SSHD} not found (apt-get install openssh-server)`;
  if (!installed('ssh', '-V') || !installed('ssh-keygen', '-?')) return 'ssh -R rows skipped: ssh or ssh-keygen not found (apt-get install openssh-client)';
  // As root, sshd separates privileges and needs this folder, which its service unit would create.
  if (process.getuid?.() === 0 && !existsSync('/run/sshd')) mkdirSync('/run/sshd', { mode: 0o755 });
  const dir = mkdtempSync(join(tmpdir(), 'tunnel-bench-ssh-'));
  const children: ChildProcess[] = [];
  const stop = () => {
    for (const c of children) c.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    for (const key of ['host_key', 'client_key']) {
      const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'tunnel-rpc bench', '-f', join(dir, key)], { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`ssh-keygen failed: ${r.stderr}`);
    }
    copyFileSync(join(dir, 'client_key.pub'), join(dir, 'authorized_keys'));
    chmodSync(join(dir, 'authorized_keys'), 0o600);
    const port = await freePort();
    const user = userInfo().username;
    const config = [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${join(dir, 'host_key')}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      `AllowUsers ${user}`,
      'PermitRootLogin prohibit-password',
      'PubkeyAuthentication yes',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      'AllowTcpForwarding remote',
      'GatewayPorts no',
      'X11Forwarding no',
      'AllowAgentForwarding no',
      'PermitTTY no',
      'PrintMotd no',
      'LogLevel INFO',
    ];
    writeFileSync(join(dir, 'sshd_config'), `${config.join('\n')}\n`);
    children.push(await startUntil(SSHD, ['-D', '-e', '-f', join(dir, 'sshd_config')], /Server listening on 127\.0\.0\.1 port/));
    const remote = await freePort();
    const ssh = await startUntil(
      'ssh',
      [
        '-F',
        '/dev/null',
        '-N',
        '-v',
        '-R',
        `127.0.0.1:${remote}:${target}`,
        '-o',
        'StrictHostKeyChecking=no',
        '-o',
        'UserKnownHostsFile=/dev/null',
        '-o',
        'BatchMode=yes',
        '-o',
        'ExitOnForwardFailure=yes',
        '-o',
        'IdentitiesOnly=yes',
        '-i',
        join(dir, 'client_key'),
        '-p',
        String(port),
        `${user}@127.0.0.1`,
      ],
      /remote forward success/,
    );
    children.push(ssh);
    return { addr: `127.0.0.1:${remote}`, stop };
  } catch (err) {
    stop();
    return `ssh -R rows skipped: ${(err as Error).message}`;
  }
}

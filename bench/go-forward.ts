/**
 * Calls per second of a Go net/rpc client (ugorji MsgpackSpecRpc) calling a Go net/rpc server
 * directly, next to the same client going through the relay's MessagePack-RPC port and a node that
 * forwards to the same server (`tunnel-node --forward`). Needs Debian's golang-go and
 * golang-github-ugorji-go-codec-dev.
 *
 *   npm run build && node dist/bench/go-forward.js [--calls 50000] [--concurrency 64]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const { values } = parseArgs({ options: { calls: { type: 'string', default: '50000' }, concurrency: { type: 'string', default: '64' } } });
const calls = Number(values.calls);
const concurrency = Number(values.concurrency);
const children: ChildProcess[] = [];

/** Starts a program and resolves with the first stdout/stderr line matching `pattern`, bounded by 30 s. */
function start(command: string, args: string[], pattern: RegExp): Promise<RegExpExecArray> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let seen = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${command} did not print ${pattern} within 30 s:\n${seen.slice(-2000)}`)), 30_000);
    const onData = (d: Buffer) => {
      seen += d.toString();
      const m = pattern.exec(seen);
      if (m) {
        clearTimeout(timer);
        resolve(m);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`${command} exited (${code}):\n${seen.slice(-2000)}`)));
  });
}

async function run(command: string, args: string[]): Promise<string> {
  const child = spawn(command, args, {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'inherit'],
    env: { ...process.env, GO111MODULE: 'off', GOPATH: '/usr/share/gocode' },
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`${command} ${args.join(' ')} exited ${code}`);
  return out;
}

async function bench(client: string, addr: string): Promise<{ perSecond: number; failed: number }> {
  const spec = 'Arith.Multiply {"X":6,"Y":7}';
  await run(client, ['-addr', addr, 'bench', '-n', '2000', '-c', String(concurrency), spec]); // warm-up
  return JSON.parse(await run(client, ['-addr', addr, 'bench', '-n', String(calls), '-c', String(concurrency), spec])) as { perSecond: number; failed: number };
}

const dir = mkdtempSync(join(tmpdir(), 'tunnel-bench-go-'));
try {
  for (const name of ['server', 'client']) await run('go', ['build', '-o', join(dir, name), `./test/go/${name}`]);
  const server = (await start(join(dir, 'server'), ['-listen', '127.0.0.1:0'], /listening (\S+)\n/))[1]!;
  const relayArgs = [join(ROOT, 'bin/tunnel-relay.js'), '--listen', '127.0.0.1:0', '--msgpack-rpc-listen', '127.0.0.1:0', '--log-level', 'info'];
  const relay = spawn(process.execPath, relayArgs, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(relay);
  const ports: Record<string, number> = {};
  await new Promise<void>((resolve, reject) => {
    let seen = '';
    relay.stderr.on('data', (d: Buffer) => {
      seen += d.toString();
      for (const line of seen.split('\n')) {
        if (line.includes('"relay listening"')) ports.ws = (JSON.parse(line) as { port: number }).port;
        if (line.includes('"msgpack-rpc port listening"')) ports.rpc = (JSON.parse(line) as { port: number }).port;
      }
      if (ports.ws && ports.rpc) resolve();
    });
    relay.once('exit', (code) => reject(new Error(`relay exited (${code}): ${seen}`)));
  });
  await start(process.execPath, [join(ROOT, 'bin/tunnel-node.js'), '--relay', `127.0.0.1:${ports.ws}`, '--forward', `Arith=${server}`], /connected to relay/);

  const direct = await bench(join(dir, 'client'), server);
  const relayed = await bench(join(dir, 'client'), `127.0.0.1:${ports.rpc}`);
  const row = (name: string, r: { perSecond: number; failed: number }) =>
    `${name.padEnd(44)} ${Math.round(r.perSecond).toString().padStart(8)} calls/s  (${r.failed} failed)`;
  process.stdout.write(`Go client, Arith.Multiply, ${calls} calls, ${concurrency} in flight, one connection\n`);
  process.stdout.write(`${row('direct to the Go server', direct)}\n`);
  process.stdout.write(`${row('relay msgpack-rpc port -> node --forward', relayed)}\n`);
} finally {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}

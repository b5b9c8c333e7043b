import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tcpConnect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, killAll, Proc, START_TIMEOUT, startRelay, type LogLine } from './helpers/processes.js';
import { waitUntil } from './helpers/wait.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The environment without TUNNEL_* and npm_* variables (the suite itself may run under npm). */
function plainEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('TUNNEL_') && !k.startsWith('npm_')) env[k] = v;
  return env;
}

/** Collects the JSON log lines a child writes to stderr. */
function logsOf(child: ChildProcess): { logs: LogLine[]; text: () => string } {
  const logs: LogLine[] = [];
  let all = '';
  let partial = '';
  child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
    all += chunk;
    partial += chunk;
    const lines = partial.split('\n');
    partial = lines.pop()!;
    for (const line of lines) if (line.startsWith('{')) logs.push(JSON.parse(line) as LogLine);
  });
  return { logs, text: () => all };
}

/** True once `pid` has exited (gone, or a zombie nobody has reaped yet). */
function exited(pid: number): boolean {
  const stat = `/proc/${pid}/stat`;
  if (existsSync(stat)) return / Z /.test(readFileSync(stat, 'utf8'));
  try {
    process.kill(pid, 0);
    return false;
  } catch {
    return true;
  }
}

function portRefuses(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

const strays: number[] = [];
afterAll(async () => {
  for (const pid of strays) if (!exited(pid)) process.kill(pid, 'SIGKILL');
  await killAll();
});

describe('stopping the commands', () => {
  it('npm exec tunnel-relay (what npx runs) stops cleanly when npm gets SIGTERM', async () => {
    // npm starts `sh -c tunnel-relay`; SIGTERM ends npm and the shell, never the relay.
    // --ignore-scripts: in the checkout, `npm exec` first runs the package's `prepare` (tsc → dist/),
    // which rewrites dist/ under the other test files that are starting commands from it.
    const npm = spawn('npm', ['exec', '--offline', '--ignore-scripts', '--', 'tunnel-relay', '--listen', '127.0.0.1:0'], {
      cwd: ROOT,
      env: plainEnv(),
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const out = logsOf(npm);
    await waitUntil(
      () => out.logs.some((l) => l.msg === 'relay listening'),
      60_000,
      () => `relay listening\n${out.text()}`,
    );
    const listening = out.logs.find((l) => l.msg === 'relay listening')!;
    const pid = listening.pid as number;
    strays.push(pid);
    expect(pid).not.toBe(npm.pid);

    npm.kill('SIGTERM');
    await waitUntil(
      () => exited(pid),
      10_000,
      () => `the relay to exit\n${out.text()}`,
    );
    expect(out.logs.find((l) => l.msg === 'shutting down')).toMatchObject({ signal: 'parent exited' });
    expect(out.logs.some((l) => l.msg === 'relay stopped')).toBe(true);
    expect(await portRefuses(listening.port as number)).toBe(true);
  });

  it('a relay started from a shell that exits keeps running: only npm parents are watched', async () => {
    const sh = spawn('sh', ['-c', `"${process.execPath}" "${BIN.relay}" --listen 127.0.0.1:0 & echo $!`], {
      env: plainEnv(),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const out = logsOf(sh);
    let stdout = '';
    sh.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    await waitUntil(
      () => out.logs.some((l) => l.msg === 'relay listening'),
      10_000,
      () => `relay listening\n${out.text()}`,
    );
    const pid = Number(stdout.trim());
    strays.push(pid);
    await waitUntil(() => sh.exitCode !== null, 10_000, 'the shell to exit');
    // Nothing to wait for here: the relay must go on, so look again after three of the parent
    // checks' intervals (500 ms) would have passed. A window for something that must not happen,
    // not a synchronisation: then an HTTP answer shows the relay's event loop ran past it (an overdue
    // check runs before the request is read), however late a busy machine scheduled it.
    const relayPort = out.logs.find((l) => l.msg === 'relay listening')!.port as number;
    await new Promise((r) => setTimeout(r, 1_500));
    expect((await fetch(`http://127.0.0.1:${relayPort}/healthz`)).status).toBe(200);
    expect(exited(pid)).toBe(false);
    expect(await portRefuses(relayPort)).toBe(false);
    expect(out.logs.some((l) => l.msg === 'shutting down')).toBe(false);
    process.kill(pid, 'SIGTERM');
    await waitUntil(() => exited(pid), 10_000, 'the relay to exit');
  });

  it('SIGHUP drains a node as SIGTERM does; the relay rereads its tokens instead', async () => {
    const relay = await startRelay();
    const node = new Proc(BIN.node, ['--relay', relay.addr, '--name', 'hup-1']);
    await node.waitForMsg('connected to relay', START_TIMEOUT);
    node.kill('SIGHUP');
    expect((await node.exited).code).toBe(0);
    expect(node.logs.find((l) => l.msg === 'shutting down')).toMatchObject({ signal: 'SIGHUP' });

    const dir = mkdtempSync(join(tmpdir(), 'tunnel-signals-'));
    try {
      const tokens = join(dir, 'tokens');
      writeFileSync(tokens, 'node hup-2 0123456789abcdef0123\n');
      const guarded = await startRelay(['--tokens', tokens]);
      guarded.proc.kill('SIGHUP');
      expect(await guarded.proc.waitForMsg('tokens reloaded')).toMatchObject({ file: tokens, entries: 1 });
      expect(guarded.proc.child.exitCode).toBeNull();
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The checkout's root, found upward from here (this file also runs compiled, from dist/, for bench/). */
function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return `${dir}/`;
}
const ROOT = findRoot();
export const BIN = {
  relay: `${ROOT}bin/tunnel-relay.js`,
  node: `${ROOT}bin/tunnel-node.js`,
  call: `${ROOT}bin/tunnel-call.js`,
} as const;

export type LogLine = Record<string, unknown> & { msg?: string; level?: number };

/** A CLI running as a child process, with its JSON log lines (stderr) collected as they arrive. */
export class Proc {
  readonly child: ChildProcess;
  readonly logs: LogLine[] = [];
  stdout = '';
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: Array<() => void> = [];

  constructor(file: string, args: string[], env: Record<string, string | undefined> = {}) {
    this.child = spawn(process.execPath, [file, ...args], {
      env: { ...cleanEnv(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let partial = '';
    this.child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk;
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        if (!line.startsWith('{')) continue;
        try {
          this.logs.push(JSON.parse(line) as LogLine);
        } catch {
          /* not a log line */
        }
      }
      this.wake();
    });
    this.child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stdout += chunk;
      this.wake();
    });
    this.exited = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.wake();
        resolve({ code, signal });
      });
      // A process that could not be started (EAGAIN on a crowded machine) ends here, saying why,
      // instead of rejecting a promise nobody awaits yet.
      this.child.on('error', (err) => {
        if (this.child.pid !== undefined) return;
        this.stderr += `could not start ${file}: ${err.message}\n`;
        this.wake();
        resolve({ code: this.child.exitCode, signal: null });
      });
    });
    running.add(this);
    void this.exited.then(() => running.delete(this));
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Waits for a log line matching `pred`, failing after `timeout` ms with what was seen. */
  async waitForLog(pred: (l: LogLine) => boolean, timeout = 10_000, what = 'log line', from = 0): Promise<LogLine> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const found = this.logs.slice(from).find(pred);
      if (found) return found;
      if (this.child.exitCode !== null || this.child.signalCode !== null) {
        throw new Error(`process exited (${this.child.exitCode ?? this.child.signalCode}) before ${what}; stderr:\n${this.stderr.slice(-2000)}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeout} ms waiting for ${what}; stderr:\n${this.stderr.slice(-2000)}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  waitForMsg(msg: string, timeout = 10_000, from = 0): Promise<LogLine> {
    return this.waitForLog((l) => l.msg === msg, timeout, `"${msg}"`, from);
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}

const running = new Set<Proc>();

/** Kills every child still running (call from afterAll / afterEach). */
export async function killAll(): Promise<void> {
  const all = [...running];
  for (const p of all) p.kill('SIGKILL');
  await Promise.all(all.map((p) => p.exited));
}

/** The environment without TUNNEL_* variables from the developer's shell. */
function cleanEnv(): Record<string, string | undefined> {
  const env: Record<string, string | undefined> = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('TUNNEL_')) env[k] = v;
  return env;
}

export interface RunningRelay {
  proc: Proc;
  port: number;
  /** `127.0.0.1:port`, what nodes and callers are given. */
  addr: string;
}

/**
 * How long a CLI may take to start: loading Node and the modules takes a second on an idle laptop and
 * many more on a busy 2-core runner with other tests starting theirs.
 */
export const START_TIMEOUT = 30_000;

/** Starts `tunnel-relay` on 127.0.0.1 (port 0 unless given) and waits until it listens. */
export async function startRelay(args: string[] = [], port = 0, env: Record<string, string> = {}): Promise<RunningRelay> {
  const proc = new Proc(BIN.relay, ['--listen', `127.0.0.1:${port}`, '--log-level', 'debug', ...args], env);
  const line = await proc.waitForMsg('relay listening', START_TIMEOUT);
  const p = line.port as number;
  return { proc, port: p, addr: `127.0.0.1:${p}` };
}

/** Starts `tunnel-node` against a relay and waits until the relay has welcomed it. */
export async function startNode(relayAddr: string, args: string[] = [], env: Record<string, string> = {}): Promise<Proc> {
  const proc = new Proc(BIN.node, ['--relay', relayAddr, '--log-level', 'debug', ...args], env);
  await proc.waitForMsg('connected to relay', START_TIMEOUT);
  return proc;
}

export interface CallResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `tunnel-call` to completion (bounded by `timeout` ms). */
export async function runCall(relayAddr: string, args: string[], env: Record<string, string> = {}, timeout = 20_000): Promise<CallResult> {
  const proc = new Proc(BIN.call, ['--relay', relayAddr, ...args], env);
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeout);
  const { code } = await proc.exited;
  clearTimeout(timer);
  return { code, stdout: proc.stdout, stderr: proc.stderr };
}

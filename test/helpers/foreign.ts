import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Foreign programs for interop tests: the Go net/rpc server and client in test/go (built here with
 * Debian's golang-go and golang-github-ugorji-go-codec-dev, GOPATH mode), and the Python client in
 * test/python (Debian's python3-msgpack).
 */
const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const GOPATH = '/usr/share/gocode';
const CODEC = `${GOPATH}/src/github.com/ugorji/go/codec`;

/** Debian's python3 first: python3-msgpack is installed for it, not for a python3 earlier on PATH. */
export const PYTHON = existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';

export const CI = process.env.CI === 'true';

/** Why the Go tests cannot run here, or undefined when they can. Under CI=true they must run. */
export function goMissing(): string | undefined {
  const go = spawnSync('go', ['version'], { encoding: 'utf8' });
  if (go.error || go.status !== 0) return 'go is not installed';
  if (!existsSync(CODEC)) return `the ugorji codec is not in ${CODEC}`;
  return undefined;
}

export function pythonMsgpackMissing(): string | undefined {
  const py = spawnSync(PYTHON, ['-c', 'import msgpack'], { encoding: 'utf8' });
  return py.error || py.status !== 0 ? `${PYTHON} cannot import msgpack` : undefined;
}

/** Prints once why a group of tests is skipped, with the command that fixes it. */
export function skipNote(what: string, reason: string, install: string): void {
  process.stderr.write(`\nSKIPPING ${what}: ${reason}. Install with: apt-get install ${install}\n\n`);
}

export const GO_PACKAGES = 'golang-go golang-github-ugorji-go-codec-dev';

export interface GoPrograms {
  server: string;
  client: string;
  dir: string;
  cleanup(): void;
}

/** Builds test/go/server and test/go/client into a temporary directory. */
export async function buildGo(): Promise<GoPrograms> {
  const dir = mkdtempSync(join(tmpdir(), 'tunnel-go-'));
  const env: Record<string, string | undefined> = { ...process.env, GO111MODULE: 'off', GOPATH, GOFLAGS: '' };
  if (!process.env.HOME && !process.env.GOCACHE) env.GOCACHE = join(dir, 'cache');
  for (const name of ['server', 'client']) {
    const child = spawn('go', ['build', '-o', join(dir, name), `./test/go/${name}`], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
    const [code] = (await once(child, 'exit')) as [number | null];
    if (code !== 0) throw new Error(`go build ./test/go/${name} failed (exit ${code}):\n${output}`);
  }
  return { server: join(dir, 'server'), client: join(dir, 'client'), dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

const children = new Set<ChildProcess>();

/** The Go server running as a child process. */
export class GoServer {
  readonly child: ChildProcess;
  readonly address: Promise<string>;
  readonly exited: Promise<unknown>;

  constructor(binary: string, listen: string) {
    this.child = spawn(binary, ['-listen', listen], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(this.child);
    this.exited = once(this.child, 'exit').finally(() => children.delete(this.child));
    let out = '';
    let err = '';
    this.child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    this.address = new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`Go server printed no "listening" line within 10 s; stderr: ${err}`)), 10_000);
      this.child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /^listening (\S+)$/m.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]!);
        }
      });
      this.child.once('exit', (code) => {
        clearTimeout(timer);
        reject(new Error(`Go server exited (${code}) before listening; stderr: ${err}`));
      });
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
  }
}

/** Runs a foreign program to completion, bounded by `timeout` ms; returns its stdout lines as JSON. */
export async function runJsonLines(command: string, args: string[], timeout = 30_000): Promise<{ code: number | null; lines: unknown[]; stderr: string }> {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeout);
  const [code] = (await once(child, 'exit')) as [number | null];
  clearTimeout(timer);
  children.delete(child);
  const lines = out
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => {
      try {
        return JSON.parse(l) as unknown;
      } catch {
        throw new Error(`${command} printed a line that is not JSON: ${l}\nstderr: ${stderr}`);
      }
    });
  return { code, lines, stderr };
}

/** Kills every foreign child still running. */
export async function killForeign(): Promise<void> {
  const all = [...children];
  for (const c of all) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await Promise.all(all.map((c) => (c.exitCode === null && c.signalCode === null ? once(c, 'exit') : undefined)));
}

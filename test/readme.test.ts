import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CI, goMissing, GO_PACKAGES, skipNote } from './helpers/foreign.js';
import { BIN, killAll, runCall, startNode, startRelay, type LogLine } from './helpers/processes.js';

/**
 * The README's examples, run as a user would copy them, so that they cannot drift from the code:
 * each fenced block preceded by `<!-- test: NAME -->` is taken from README.md and run here against
 * real relays and nodes (.ci/consumer-check.sh also type-checks `library` and `service-definition`
 * from the packed tarball). Transcripts (`$ command` lines, then the output) run in `sh` with the
 * three commands on PATH; a relay's `:9090` becomes the port it really got.
 */
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(join(ROOT, 'README.md'), 'utf8');

interface Block {
  lang: string;
  text: string;
}

/** Every marked block of the README, by name. */
function markedBlocks(markdown: string): Map<string, Block> {
  const lines = markdown.split('\n');
  const blocks = new Map<string, Block>();
  for (let i = 0; i < lines.length; i++) {
    const marker = /^<!-- test: ([\w-]+) -->$/.exec(lines[i]!);
    if (!marker) continue;
    const fence = /^```(\w*)$/.exec(lines[i + 1] ?? '');
    if (!fence) throw new Error(`README.md line ${i + 1}: <!-- test: ${marker[1]} --> is not followed by a fenced block`);
    const end = lines.indexOf('```', i + 2);
    if (end < 0) throw new Error(`README.md line ${i + 2}: unterminated block ${marker[1]}`);
    if (blocks.has(marker[1]!)) throw new Error(`README.md: two blocks are marked ${marker[1]}`);
    blocks.set(marker[1]!, { lang: fence[1]!, text: lines.slice(i + 2, end).join('\n') });
  }
  return blocks;
}

const blocks = markedBlocks(README);
function block(name: string): string {
  const b = blocks.get(name);
  if (!b) throw new Error(`README.md has no block marked <!-- test: ${name} -->`);
  return b.text;
}

/** Scratch space inside the checkout, so that `import … from 'tunnel-rpc'` resolves to this package by its own name. */
const work = mkdtempSync(join(ROOT, 'dist', 'readme-'));
/** `tunnel-relay`, `tunnel-node`, `tunnel-call` as a user has them after `npm link`. */
const bin = mkdtempSync(join(tmpdir(), 'tunnel-readme-bin-'));
for (const [name, file] of [
  ['tunnel-relay', BIN.relay],
  ['tunnel-node', BIN.node],
  ['tunnel-call', BIN.call],
] as const) {
  writeFileSync(join(bin, name), `#!/bin/sh\nexec "${process.execPath}" "${file}" "$@"\n`);
  chmodSync(join(bin, name), 0o755);
}
writeFileSync(join(bin, '.curlrc'), '--silent\n--show-error\n');

function shellEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('TUNNEL_') && !k.startsWith('npm_')) env[k] = v;
  env.PATH = `${bin}:${env.PATH ?? '/usr/bin:/bin'}`;
  // On a terminal curl prints no progress meter; into a pipe it does, unless told to be silent.
  env.CURL_HOME = bin;
  return env;
}

const curlMissing = spawnSync('curl', ['--version']).status !== 0;

/** A long-running command of a transcript (a relay or a node), with its JSON log lines. */
class Background {
  readonly logs: LogLine[] = [];
  stderr = '';
  constructor(readonly child: ChildProcess) {
    let partial = '';
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk;
      partial += chunk;
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const l of lines) if (l.startsWith('{')) this.logs.push(JSON.parse(l) as LogLine);
    });
  }

  async waitFor(msg: string, timeout = 15_000): Promise<LogLine> {
    const deadline = Date.now() + timeout;
    for (;;) {
      const line = this.logs.find((l) => l.msg === msg);
      if (line) return line;
      if (this.child.exitCode !== null) throw new Error(`exited before "${msg}":\n${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`no "${msg}" within ${timeout} ms:\n${this.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const background: Background[] = [];
afterAll(async () => {
  for (const b of background) if (b.child.exitCode === null) b.child.kill('SIGTERM');
  await Promise.all(background.map((b) => (b.child.exitCode === null ? once(b.child, 'exit') : undefined)));
  await killAll();
  rmSync(work, { recursive: true, force: true });
  rmSync(bin, { recursive: true, force: true });
});

/** Runs one command line in sh to completion (bounded); stdout and stderr together, as a terminal shows them. */
async function runLine(line: string, cwd: string): Promise<string> {
  if (line.startsWith('curl ') && curlMissing) return curlFromNode(line);
  const child = spawn('sh', ['-c', line], { cwd, env: shellEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  await once(child, 'exit');
  clearTimeout(timer);
  return out;
}

/** The same request as a README curl line (`curl -d BODY URL`), for a machine without curl. */
async function curlFromNode(line: string): Promise<string> {
  const m = /^curl -d '([^']*)' '?([^' ]+)'?$/.exec(line);
  if (!m) throw new Error(`curl is not installed and this line is not "curl -d BODY URL": ${line}`);
  const res = await fetch(m[2]!.replace('//localhost:', '//127.0.0.1:'), { method: 'POST', body: m[1] });
  return `${await res.text()}\n`;
}

/**
 * Runs a transcript: `$ command` lines, each followed by the output it must print exactly. A
 * `tunnel-relay` or `tunnel-node` line keeps running (until it says it is up); `:9090` in later lines
 * becomes the port of the relay, started here first when the transcript starts none.
 */
async function runTranscript(text: string, cwd: string, relayPort?: number): Promise<void> {
  let port = relayPort;
  const steps: Array<{ command: string; output: string[] }> = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('$ ')) steps.push({ command: line.slice(2), output: [] });
    else if (line.trim() === '' || line.startsWith('#')) continue;
    else if (steps.length > 0) steps.at(-1)!.output.push(line);
    else throw new Error(`transcript output before any command: ${line}`);
  }
  for (const { command, output } of steps) {
    if (/^tunnel-relay /.test(command)) {
      const line = command.replace(/(--listen \S+:)9090\b/, '$10');
      const relay = new Background(spawn('sh', ['-c', `exec ${line}`], { cwd, env: shellEnv(), stdio: ['ignore', 'ignore', 'pipe'] }));
      background.push(relay);
      port = (await relay.waitFor('relay listening')).port as number;
      continue;
    }
    if (port === undefined) throw new Error(`no relay for: ${command}`);
    const line = command.replace(/:9090\b/g, `:${port}`);
    if (/^tunnel-node /.test(line)) {
      const node = new Background(spawn('sh', ['-c', `exec ${line}`], { cwd, env: shellEnv(), stdio: ['ignore', 'ignore', 'pipe'] }));
      background.push(node);
      await node.waitFor('connected to relay');
      continue;
    }
    const printed = await runLine(line, cwd);
    expect({ command, printed }).toEqual({ command, printed: output.map((l) => `${l}\n`).join('') });
  }
}

describe('README.md examples', () => {
  it('every marked block has its test here', () => {
    expect([...blocks.keys()].sort()).toEqual(
      [
        'demo-output',
        'first-tunnel',
        'gateway-curl',
        'go-client',
        'go-server',
        'library',
        'library-output',
        'service-definition',
        'services-module',
        'services-run',
      ].sort(),
    );
  });

  it('npm run demo prints what the README shows (the port aside), 6 last', async () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'dist/src/cli/demo.js')], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status).toBe(0);
    const port = (s: string) => s.replace(/127\.0\.0\.1:\d+/g, '127.0.0.1:PORT');
    expect(port(r.stdout)).toBe(port(`${block('demo-output')}\n`));
    expect(r.stdout.trimEnd().split('\n').at(-1)).toBe('6');
  });

  it('the first tunnel in three terminals', async () => {
    await runTranscript(block('first-tunnel'), work);
  });

  it('the library example compiles (strict) and prints what the README says, then exits', async () => {
    const dir = join(work, 'library');
    mkdirSync(dir);
    writeFileSync(join(dir, 'library.ts'), block('library'));
    writeFileSync(join(dir, 'service-definition.ts'), block('service-definition'));
    const compilerOptions = { target: 'es2022', module: 'nodenext', moduleResolution: 'nodenext', types: ['node'], strict: true, rootDir: '.', outDir: 'out' };
    writeFileSync(join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions, include: ['*.ts'] }));
    const tsc = spawnSync(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', dir], { encoding: 'utf8', timeout: 60_000 });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    const run = spawnSync(process.execPath, [join(dir, 'out/library.js')], { encoding: 'utf8', timeout: 30_000 });
    expect(run.stderr).toBe('');
    expect(run.status).toBe(0);
    expect(run.stdout).toBe(`${block('library-output')}\n`);
  });

  it('the --services module, served by tunnel-node and called with tunnel-call', async () => {
    const dir = join(work, 'services');
    mkdirSync(dir);
    writeFileSync(join(dir, 'my-services.js'), block('services-module'));
    const relay = await startRelay();
    await runTranscript(block('services-run'), dir, relay.port);
  });

  it.skipIf(curlMissing && !CI)('the curl lines of the HTTP gateway', async () => {
    if (curlMissing) throw new Error('CI=true but curl is not installed');
    const relay = await startRelay();
    await startNode(relay.addr, ['--name', 'office-1']);
    await runTranscript(block('gateway-curl'), work, relay.port);
  });

  it('tunnel-call --help names only methods the example services have', async () => {
    const help = spawnSync(process.execPath, [BIN.call, '--help'], { encoding: 'utf8' }).stdout;
    const methods = [...help.matchAll(/\b([A-Z]\w*\.[A-Z]\w*)\b/g)].map((m) => m[1]!);
    expect(methods.length).toBeGreaterThan(3);
    const known = [
      'Arith.Multiply',
      'Arith.Divide',
      'Hello.Login',
      'Hello.Hello',
      'Hello.WhoAmI',
      'Hello.Logout',
      'KV.Get',
      'KV.Set',
      'KV.Keys',
      'KV.Watch',
      'Server.Ping',
    ];
    // "<Service>.Login" in the text of --login-method is a pattern, not a method.
    for (const m of methods) expect({ method: m, known: known.includes(m) || m === 'Service.Method' }).toEqual({ method: m, known: true });
  });
});

const goReason = goMissing();
if (goReason && !CI) skipNote('the README Go example', goReason, GO_PACKAGES);

describe.skipIf(goReason !== undefined && !CI)('README.md Go example', () => {
  let dir: string;
  beforeAll(() => {
    if (goReason) throw new Error(`CI=true but ${goReason}; .ci/run installs ${GO_PACKAGES}`);
    dir = join(work, 'go');
    mkdirSync(dir);
  });

  it('builds as the README says (GOPATH mode) and runs through relay and node: 42, then the error', async () => {
    // The README's fixed addresses become free ones.
    const probe = createServer().listen(0, '127.0.0.1');
    await once(probe, 'listening');
    const serverPort = (probe.address() as AddressInfo).port;
    await new Promise((r) => probe.close(r));
    const relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0']);
    const rpcPort = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
    writeFileSync(join(dir, 'server.go'), block('go-server').replaceAll('127.0.0.1:8080', `127.0.0.1:${serverPort}`));
    writeFileSync(join(dir, 'client.go'), block('go-client').replaceAll('relay.example:9091', `127.0.0.1:${rpcPort}`));
    const env: Record<string, string | undefined> = { ...process.env, GO111MODULE: 'off', GOPATH: '/usr/share/gocode', GOFLAGS: '' };
    if (!process.env.HOME && !process.env.GOCACHE) env.GOCACHE = join(dir, 'cache');
    for (const [out, src] of [
      ['arith-server', 'server.go'],
      ['arith-client', 'client.go'],
    ]) {
      const build = spawnSync('go', ['build', '-o', out, src], { cwd: dir, env, encoding: 'utf8', timeout: 300_000 });
      expect({ src, output: build.stdout + build.stderr, status: build.status }).toEqual({ src, output: '', status: 0 });
    }
    const server = new Background(spawn(join(dir, 'arith-server'), [], { stdio: ['ignore', 'ignore', 'pipe'] }));
    background.push(server);
    // The server prints nothing when it is up: wait (bounded) until it accepts connections.
    const deadline = Date.now() + 10_000;
    while (
      !(await new Promise<boolean>((resolve) =>
        tcpConnect(serverPort, '127.0.0.1')
          .once('connect', function (this: import('node:net').Socket) {
            this.destroy();
            resolve(true);
          })
          .once('error', () => resolve(false)),
      ))
    ) {
      if (Date.now() > deadline) throw new Error(`the README Go server did not listen on ${serverPort} (exit ${server.child.exitCode}): ${server.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    await startNode(relay.addr, ['--forward', `Arith=127.0.0.1:${serverPort}`]);
    const client = spawnSync(join(dir, 'arith-client'), [], { encoding: 'utf8', timeout: 30_000 });
    expect(client.stdout).toBe('42\nAPP_ERROR: divide by zero\n');
    expect((await runCall(relay.addr, ['Arith.Multiply', '{"X":6,"Y":7}'])).stdout).toBe('42\n');
    const positional = await runCall(relay.addr, ['Arith.Multiply', '6', '7']);
    expect(positional.stderr).toMatch(/^BAD_REQUEST: forwarded service Arith follows Go's net\/rpc: it takes exactly one argument/);
  }, 300_000);
});

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CI, goMissing, GO_PACKAGES, skipNote } from './helpers/foreign.js';
import { freePort, NATS_SERVER } from './helpers/nats.js';
import { BIN, killAll, runCall, startNode, startRelay, type LogLine } from './helpers/processes.js';

/**
 * The examples of the README and of the guides in docs/, run as a user would copy them, so that they
 * cannot drift from the code: each fenced block preceded by `<!-- test: NAME -->` is taken from
 * README.md or docs/*.md and run here against real relays and nodes (.ci/consumer-check.sh also
 * type-checks `library` and `service-definition` from the packed tarball). Transcripts (`$ command`
 * lines, then the output) run in `sh` with the three commands on PATH; the ports they are written
 * with become free ones.
 */
const ROOT = fileURLToPath(new URL('..', import.meta.url));
/** The documents whose marked blocks are run: the README and every guide. */
const DOCS = [
  'README.md',
  ...readdirSync(join(ROOT, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .sort()
    .map((f) => `docs/${f}`),
];

interface Block {
  file: string;
  lang: string;
  text: string;
}

/** Every marked block of one document, added to `blocks` by name. */
function markedBlocks(file: string, markdown: string, blocks: Map<string, Block>): void {
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const marker = /^<!-- test: ([\w-]+) -->$/.exec(lines[i]!);
    if (!marker) continue;
    const fence = /^```(\w*)$/.exec(lines[i + 1] ?? '');
    if (!fence) throw new Error(`${file} line ${i + 1}: <!-- test: ${marker[1]} --> is not followed by a fenced block`);
    const end = lines.indexOf('```', i + 2);
    if (end < 0) throw new Error(`${file} line ${i + 2}: unterminated block ${marker[1]}`);
    const seen = blocks.get(marker[1]!);
    if (seen) throw new Error(`${file} and ${seen.file}: two blocks are marked ${marker[1]}`);
    blocks.set(marker[1]!, { file, lang: fence[1]!, text: lines.slice(i + 2, end).join('\n') });
  }
}

const blocks = new Map<string, Block>();
for (const file of DOCS) markedBlocks(file, readFileSync(join(ROOT, file), 'utf8'), blocks);
function block(name: string): string {
  const b = blocks.get(name);
  if (!b) throw new Error(`no document has a block marked <!-- test: ${name} --> (looked in ${DOCS.join(', ')})`);
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
async function runLine(line: string, cwd: string, env: Record<string, string> = {}): Promise<string> {
  if (line.startsWith('curl ') && curlMissing) return curlFromNode(line);
  const child = spawn('sh', ['-c', line], { cwd, env: { ...shellEnv(), ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
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

/** Resolves once `port` on 127.0.0.1 accepts a TCP connection, or fails after `timeout` ms. */
async function acceptsConnections(port: number, timeout: number): Promise<void> {
  const deadline = Date.now() + timeout;
  while (
    !(await new Promise<boolean>((resolve) =>
      tcpConnect(port, '127.0.0.1')
        .once('connect', function (this: import('node:net').Socket) {
          this.destroy();
          resolve(true);
        })
        .once('error', () => resolve(false)),
    ))
  ) {
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeout} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** What a transcript has set up so far: the shell variables it exported, the ports it was given. */
interface Session {
  env: Record<string, string>;
  /** A port written in the docs (9090, 4222, 8080) → the free port it really got here. */
  ports: Map<number, number>;
}

/** `:PORT` (and `-p PORT`) of every port the session knows, written → real. */
function withRealPorts(line: string, session: Session): string {
  let out = line;
  for (const [written, real] of session.ports) out = out.replace(new RegExp(`(:|-p )${written}\\b`, 'g'), `$1${real}`);
  return out;
}

/** Runs `export A=… B=…` in sh and keeps what it exported for the lines after it. */
async function runExport(line: string, cwd: string, session: Session): Promise<void> {
  const names = [...line.matchAll(/(?:^export |\s)(\w+)=/g)].map((m) => m[1]!);
  const script = `${line} && printf '%s\\0' ${names.map((n) => `"$${n}"`).join(' ')}`;
  const r = spawnSync('sh', ['-c', script], { cwd, env: { ...shellEnv(), ...session.env }, encoding: 'utf8', timeout: 30_000 });
  if (r.status !== 0) throw new Error(`${line}: exit ${r.status}: ${r.stderr}`);
  const values = r.stdout.split('\0');
  names.forEach((n, i) => (session.env[n] = values[i]!));
}

/**
 * Runs a transcript: `$ command` lines, each followed by the output it must print exactly. Lines run
 * in `sh` one by one in `cwd`, with what earlier `export` lines set. `tunnel-relay`, `tunnel-node`
 * and `nats-server` lines keep running (until they say they are up), as does a line ending in `&`
 * (`ready` says when it is up); every port they are written with becomes a free one here (the
 * relay's as it reports it), in that line and every later one. A transcript that starts no relay
 * uses `relayPort` for `:9090`.
 */
async function runTranscript(
  text: string,
  cwd: string,
  o: {
    relayPort?: number;
    ports?: Map<number, number>;
    ready?: Record<string, () => Promise<void>>;
    onSession?: (s: Session) => void;
  } = {},
): Promise<Session> {
  const session: Session = { env: {}, ports: new Map(o.ports) };
  if (o.relayPort !== undefined) session.ports.set(9090, o.relayPort);
  o.onSession?.(session);
  const steps: Array<{ command: string; output: string[] }> = [];
  for (const line of text.split('\n')) {
    if (line.startsWith('$ ')) steps.push({ command: line.slice(2), output: [] });
    else if (line.trim() === '' || line.startsWith('#')) continue;
    else if (steps.length > 0) steps.at(-1)!.output.push(line);
    else throw new Error(`transcript output before any command: ${line}`);
  }
  const spawnBackground = (line: string) => {
    // `VAR=value command`: sh's exec takes no assignments, env does.
    const exec = /^\w+=/.test(line) ? 'exec env' : 'exec';
    const b = new Background(spawn('sh', ['-c', `${exec} ${line}`], { cwd, env: { ...shellEnv(), ...session.env }, stdio: ['ignore', 'ignore', 'pipe'] }));
    background.push(b);
    return b;
  };
  for (const { command, output } of steps) {
    // The program a line runs, after any `VAR=value` assignments before it.
    const program = /^(?:\w+=\S*\s+)*(\S+)/.exec(command)?.[1] ?? '';
    if (program === 'export') {
      await runExport(command, cwd, session);
      continue;
    }
    if (program === 'tunnel-relay') {
      // Each address it is told to listen on becomes port 0; the ports it reports replace the written ones.
      // (A port the test chose in advance, because a program was built with it, stays as chosen.)
      const written = new Map<string, number>();
      const line = command.replace(/(--(listen|msgpack-rpc-listen|admin-listen) \S*:)(\d+)\b/g, (_m, head: string, flag: string, port: string) => {
        written.set(flag, Number(port));
        return `${head}${session.ports.get(Number(port)) ?? 0}`;
      });
      const relay = spawnBackground(withRealPorts(line, session));
      const learn = async (flag: string, msg: string) => {
        const port = (await relay.waitFor(msg)).port as number;
        if (session.ports.has(written.get(flag) ?? 9090) && session.ports.get(written.get(flag) ?? 9090) !== port)
          throw new Error(`${msg} on ${port}, not the port chosen`);
        session.ports.set(written.get(flag) ?? 9090, port);
      };
      await learn('listen', 'relay listening');
      if (written.has('msgpack-rpc-listen')) await learn('msgpack-rpc-listen', 'msgpack-rpc port listening');
      if (written.has('admin-listen')) await learn('admin-listen', 'admin listening');
      continue;
    }
    if (program === 'nats-server') {
      const written = Number(/-p (\d+)/.exec(command)?.[1] ?? 4222);
      if (!session.ports.has(written)) session.ports.set(written, await freePort());
      const nats = spawnBackground(withRealPorts(command, session));
      const deadline = Date.now() + 15_000;
      while (!nats.stderr.includes('Server is ready')) {
        if (nats.child.exitCode !== null || Date.now() > deadline) throw new Error(`nats-server did not start: ${nats.stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      continue;
    }
    const line = withRealPorts(command, session);
    if (program === 'tunnel-node') {
      await spawnBackground(line).waitFor('connected to relay');
      await o.ready?.[command]?.();
      continue;
    }
    if (line.endsWith(' &')) {
      const b = spawnBackground(line.slice(0, -2));
      const ready = o.ready?.[command.slice(0, -2)];
      if (!ready) throw new Error(`the transcript runs "${command}" in the background but the test does not say when it is up`);
      await Promise.race([ready(), once(b.child, 'exit').then(() => Promise.reject(new Error(`${command} exited: ${b.stderr}`)))]);
      continue;
    }
    const printed = await runLine(line, cwd, session.env);
    const expected = output.map((l) => `${withRealPorts(l, session)}\n`).join('');
    // `…` in a line of output stands for text that differs from machine to machine (a path).
    const pattern = new RegExp(
      `^${expected
        .split('…')
        .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
        .join('[^\\n]*')}$`,
    );
    expect({ command, printed: pattern.test(printed) ? expected : printed }).toEqual({ command, printed: expected });
  }
  return session;
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
        'tls-recipe',
        'cluster-recipe',
        'go-build',
        'go-run',
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
    await runTranscript(block('services-run'), dir, { relayPort: relay.port });
  });

  it('the TLS recipe of docs/SECURITY.md: certificates, generated tokens, wss:// on loopback', async () => {
    // `npm run certs` in a folder of its own, so that the checkout's certs/out is left alone.
    const dir = join(work, 'tls');
    mkdirSync(dir);
    const script = join(ROOT, 'certs/make-certs.mjs');
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ private: true, scripts: { certs: `node ${JSON.stringify(script)} --out certs/out` } }));
    await runTranscript(block('tls-recipe'), dir);
  }, 120_000);

  it.skipIf(!NATS_SERVER && !CI)(
    'the first block of docs/CLUSTER.md: nats-server, two relays, a dual-homed node',
    async () => {
      if (!NATS_SERVER) throw new Error('CI=true but nats-server is not installed');
      const dir = join(work, 'cluster');
      mkdirSync(dir);
      // A person types the call after the node is up; here the node must first be known at eu-1 too
      // (presence crosses NATS), so the test waits for that, bounded, as the person's typing does.
      let session: Session | undefined;
      const known = async () => {
        const deadline = Date.now() + 15_000;
        for (;;) {
          const r = await runCall(`127.0.0.1:${session!.ports.get(9090)}`, ['--list', '--json']);
          if (r.stdout.includes('"office-1"')) return;
          if (Date.now() > deadline) throw new Error(`office-1 never appeared at eu-1: ${r.stdout}${r.stderr}`);
          await new Promise((res) => setTimeout(res, 100));
        }
      };
      await runTranscript(block('cluster-recipe'), dir, {
        ready: { 'tunnel-node --relay 127.0.0.1:9091 --name office-1': known },
        onSession: (s) => (session = s),
      });
    },
    120_000,
  );

  it.skipIf(curlMissing && !CI)('the curl lines of the HTTP gateway', async () => {
    if (curlMissing) throw new Error('CI=true but curl is not installed');
    const relay = await startRelay();
    await startNode(relay.addr, ['--name', 'office-1']);
    await runTranscript(block('gateway-curl'), work, { relayPort: relay.port });
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

/** GitHub's anchor of a heading: lower case, punctuation dropped, spaces as dashes, `-1` … for repeats. */
function anchors(markdown: string): Set<string> {
  const found = new Set<string>();
  const seen = new Map<string, number>();
  let fence = false;
  for (const line of markdown.split('\n')) {
    if (line.startsWith('```')) fence = !fence;
    const h = fence ? null : /^#{1,6} (.*)$/.exec(line);
    if (!h) continue;
    const slug = h[1]!
      .trim()
      .toLowerCase()
      .replace(/[^\p{L}\p{N}_\- ]/gu, '')
      .replaceAll(' ', '-');
    const n = seen.get(slug) ?? 0;
    seen.set(slug, n + 1);
    found.add(n === 0 ? slug : `${slug}-${n}`);
  }
  return found;
}

describe('links between the documents', () => {
  it('every relative link of the README and the guides names a file that exists, and a heading it has', () => {
    const broken: string[] = [];
    let checked = 0;
    for (const file of [...DOCS, 'certs/README.md']) {
      const text = readFileSync(join(ROOT, file), 'utf8').replace(/^```[\s\S]*?^```$/gm, '');
      for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1]!;
        if (/^[a-z]+:/.test(target)) continue;
        checked++;
        const [path, anchor] = target.split('#') as [string, string | undefined];
        const resolved = path === '' ? file : join(dirname(file), path);
        let body: string;
        try {
          body = readFileSync(join(ROOT, resolved), 'utf8');
        } catch {
          if (!existsSync(join(ROOT, resolved))) broken.push(`${file}: ${target} (no file ${resolved})`);
          continue;
        }
        if (anchor && resolved.endsWith('.md') && !anchors(body).has(anchor)) broken.push(`${file}: ${target} (${resolved} has no heading #${anchor})`);
      }
    }
    expect(checked).toBeGreaterThan(50);
    expect(broken).toEqual([]);
  });

  it('every file of the checkout a document names in code (src/…, test/…, docs/…) exists', () => {
    const missing: string[] = [];
    let named = 0;
    for (const file of DOCS) {
      const text = readFileSync(join(ROOT, file), 'utf8');
      for (const m of text.matchAll(/(?<![\w./-])((?:src|test|bench|docs|certs|\.ci)\/[\w./-]*\w)/g)) {
        const path = m[1]!;
        // Patterns, and what the scripts write (certs/out/, bench/results/), are not files of the checkout.
        if (/[*{]/.test(path) || /^(certs\/out|bench\/results)(\/|$)/.test(path)) continue;
        named++;
        if (!existsSync(join(ROOT, path))) missing.push(`${file}: ${path}`);
      }
    }
    expect(named).toBeGreaterThan(50);
    expect(missing).toEqual([]);
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

  it('builds as docs/INTEROP.md says (GOPATH mode) and runs through relay and node: 42, then the error', async () => {
    // The programs are built with their ports in them, so the free ports are chosen first.
    const ports = new Map([
      [8080, await freePort()],
      [9091, await freePort()],
    ]);
    writeFileSync(join(dir, 'server.go'), block('go-server').replaceAll('127.0.0.1:8080', `127.0.0.1:${ports.get(8080)}`));
    writeFileSync(join(dir, 'client.go'), block('go-client').replaceAll('127.0.0.1:9091', `127.0.0.1:${ports.get(9091)}`));
    if (!process.env.HOME && !process.env.GOCACHE) process.env.GOCACHE = join(dir, 'cache');
    const session = await runTranscript(`${block('go-build')}\n${block('go-run')}`, dir, {
      ports,
      // The server prints nothing when it is up: wait (bounded) until it accepts connections.
      ready: { './arith-server': () => acceptsConnections(ports.get(8080)!, 10_000) },
    });
    const relayPort = session.ports.get(9090)!;
    const positional = await runCall(`127.0.0.1:${relayPort}`, ['Arith.Multiply', '6', '7']);
    expect(positional.stderr).toMatch(/^BAD_REQUEST: forwarded service Arith follows Go's net\/rpc: it takes exactly one argument/);
  }, 300_000);
});

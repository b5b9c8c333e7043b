import { appendFileSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { certDir, makeCerts } from './helpers/certs.js';
import { BIN, killAll, Proc, runCall, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { freePort } from './helpers/nats.js';
import { RawPeer } from './helpers/raw.js';

const SERVICES = ['--services', 'test/fixtures/security-services.js'];
const NODE_TOKEN = 'node-token-0123456789abcdef';
const CALLER_TOKEN = 'caller-token-0123456789abcdef';
// Fast retries so that two refusals arrive quickly; the longest backoff is then 300 ms.
const FAST = ['--reconnect-base', '100ms', '--reconnect-cap', '300ms'];

/** Starts a node that is expected to be refused; waits for two refusals logged as errors, each followed by a wait at the longest backoff. */
async function expectRefusedNode(args: string[], reason: RegExp): Promise<Proc> {
  const node = new Proc(BIN.node, ['--log-level', 'debug', ...SERVICES, ...FAST, ...args]);
  const isRefusal = (l: Record<string, unknown>) => l.msg === 'relay refused our credentials; retrying at the longest backoff';
  const first = await node.waitForLog(isRefusal, 10_000, 'first refusal');
  expect(String(first.reason)).toMatch(reason);
  expect(first.level).toBe(50);
  const second = await node.waitForLog(isRefusal, 10_000, 'second refusal', node.logs.indexOf(first) + 1);
  for (const refusal of [first, second]) {
    const wait = await node.waitForLog((l) => l.msg === 'reconnecting', 10_000, 'the wait after a refusal', node.logs.indexOf(refusal) + 1);
    expect(wait.ceilingMs).toBe(300);
  }
  expect(node.logs.some((l) => l.msg === 'connected to relay')).toBe(false);
  // Still running: a refused node retries at the longest backoff (a token added to the relay's
  // tokens file later admits it), it does not exit.
  expect(node.child.exitCode).toBe(null);
  node.kill();
  return node;
}

describe('node and caller tokens', () => {
  let relay: RunningRelay;
  beforeAll(async () => {
    // Refused nodes retry every 300 ms, each a wrong token from 127.0.0.1; this file is not about the
    // per-address guessing limit (10 a minute), which would back off the later tests' callers.
    relay = await startRelay(['--max-auth-failures-per-address', '100000'], 0, { TUNNEL_NODE_TOKEN: NODE_TOKEN, TUNNEL_CALLER_TOKEN: CALLER_TOKEN });
    await startNode(relay.addr, [...SERVICES, '--name', 'office-1'], { TUNNEL_TOKEN: NODE_TOKEN });
  });
  afterAll(killAll);

  it('says which authentication it runs with and does not warn', () => {
    const listening = relay.proc.logs.find((l) => l.msg === 'relay listening')!;
    expect(listening.auth).toEqual({ nodes: 'token', callers: 'token', tokenFileEntries: 0 });
    expect(relay.proc.logs.some((l) => /anyone who reaches this port/.test(String(l.msg)))).toBe(false);
  });

  it('refuses a wrong node token at the upgrade; the node logs it and retries at the longest backoff', async () => {
    const node = await expectRefusedNode(['--relay', relay.addr, '--name', 'intruder', '--token', 'wrong-token-0123456789'], /^HTTP 401: token refused/);
    expect(node.stderr).not.toContain('wrong-token-0123456789');
    await relay.proc.waitForLog((l) => l.msg === 'refused connection at upgrade');
  });

  it('refuses a node without a token with a clear reason', async () => {
    await expectRefusedNode(['--relay', relay.addr, '--name', 'intruder'], /requires a node token/);
  });

  it('refuses a caller without a token or with a wrong one, and accepts the right one', async () => {
    const none = await runCall(relay.addr, ['Sec.Who']);
    expect(none.code).toBe(4);
    expect(none.stderr).toContain('UNAUTHORIZED: cannot connect to relay');
    expect(none.stderr).toContain('requires a caller token');
    const wrong = await runCall(relay.addr, ['--token', 'wrong-token-0123456789', 'Sec.Who']);
    expect(wrong.code).toBe(4);
    expect(wrong.stderr).toMatch(/UNAUTHORIZED: .*HTTP 401: token refused/);
    const ok = await runCall(relay.addr, ['Sec.Who'], { TUNNEL_TOKEN: CALLER_TOKEN });
    expect(ok.stdout).toBe('caller\n');
  });

  it('does not let a caller token register a node', async () => {
    await expectRefusedNode(['--relay', relay.addr, '--name', 'office-2', '--token', CALLER_TOKEN], /node token refused for node name office-2/);
  });

  it('takes the token from the hello when the peer cannot set a header', async () => {
    const peer = new RawPeer(`ws://${relay.addr}/`);
    await peer.open();
    peer.send([4, { version: 1, role: 'caller', token: CALLER_TOKEN }]);
    await peer.until(() => peer.received.some((m) => Array.isArray(m) && m[0] === 5), 5_000, 'welcome');
    peer.close();
    const bad = new RawPeer(`ws://${relay.addr}/`);
    await bad.open();
    bad.send([4, { version: 1, role: 'caller', token: 'nope-nope-nope-nope-nope' }]);
    expect(await bad.waitClosed()).toEqual({ code: 4003, reason: 'caller token refused' });
  });

  it('never writes a token to its logs', () => {
    expect(relay.proc.stderr).not.toContain(NODE_TOKEN);
    expect(relay.proc.stderr).not.toContain(CALLER_TOKEN);
    expect(relay.proc.stderr).not.toContain('wrong-token-0123456789');
  });
});

describe('tokens file', () => {
  const dir = certDir();
  const file = dir.file('tokens.txt');
  let relay: RunningRelay;
  beforeAll(async () => {
    writeFileSync(file, `# kind name token\nnode office-1 office1-token-0123456789\ncaller alice alice-token-0123456789\n`);
    relay = await startRelay(['--tokens', file, '--max-auth-failures-per-address', '100000']);
    await startNode(relay.addr, [...SERVICES, '--name', 'office-1', '--token', 'office1-token-0123456789']);
  });
  afterAll(async () => {
    await killAll();
    dir.remove();
  });

  it('gives handlers the identity named in the file', async () => {
    const r = await runCall(relay.addr, ['--token', 'alice-token-0123456789', 'Sec.Who']);
    expect(r.stdout).toBe('alice\n');
  });

  it('lets a node token register only its own name', async () => {
    await expectRefusedNode(['--relay', relay.addr, '--name', 'office-2', '--token', 'office1-token-0123456789'], /node token refused for node name office-2/);
  });

  it('reloads when the file changes and on SIGHUP', async () => {
    const before = relay.proc.logs.length;
    appendFileSync(file, 'caller bob bob-token-0123456789\n');
    await relay.proc.waitForMsg('tokens reloaded', 10_000, before);
    const r = await runCall(relay.addr, ['--token', 'bob-token-0123456789', 'Sec.Who']);
    expect(r.stdout).toBe('bob\n');
    const mark = relay.proc.logs.length;
    relay.proc.kill('SIGHUP');
    const line = await relay.proc.waitForMsg('tokens reloaded', 10_000, mark);
    expect(line.entries).toBe(3);
  });

  it('keeps the previous tokens when the file becomes invalid', async () => {
    const mark = relay.proc.logs.length;
    appendFileSync(file, 'caller carol short\n');
    const err = await relay.proc.waitForMsg('tokens file not reloaded; the previous tokens stay in force', 10_000, mark);
    expect(String(err.err)).toMatch(/line 5 is 5 characters; use at least 16/);
    const r = await runCall(relay.addr, ['--token', 'alice-token-0123456789', 'Sec.Who']);
    expect(r.stdout).toBe('alice\n');
  });
});

describe('a relay with no authentication', () => {
  afterAll(killAll);
  it('still runs on loopback but warns that anyone can register nodes', async () => {
    const relay = await startRelay();
    const warn = await relay.proc.waitForLog((l) => /anyone who reaches this port can register nodes/.test(String(l.msg)));
    expect(warn.level).toBe(40);
  });
});

describe('TLS and node client certificates', () => {
  const certs = certDir();
  const rogue = certDir();
  let relay: RunningRelay;
  let url: string;
  const ca = certs.file('ca.crt');
  const nodeCert = (name: string, dir = certs) => ['--cert', dir.file(`node-${name}.crt`), '--key', dir.file(`node-${name}.key`)];

  beforeAll(async () => {
    makeCerts(certs.dir, ['--node', 'office-1', '--node', 'other']);
    makeCerts(certs.dir, ['--node', 'old', '--expired', '--no-relay']);
    makeCerts(rogue.dir, ['--node', 'office-1', '--no-relay', '--ca-name', 'rogue CA']);
    relay = await startRelay(['--tls-cert', certs.file('relay.crt'), '--tls-key', certs.file('relay.key'), '--tls-ca', ca]);
    url = `wss://127.0.0.1:${relay.port}/`;
    await startNode(url, [...SERVICES, '--name', 'office-1', '--ca', ca, ...nodeCert('office-1')]);
  });
  afterAll(async () => {
    await killAll();
    certs.remove();
    rogue.remove();
  });

  it('serves wss:// and callers trust the private CA with --ca', async () => {
    const line = relay.proc.logs.find((l) => l.msg === 'relay listening')!;
    expect(line.tls).toBe(true);
    expect(line.auth).toMatchObject({ nodes: 'certificate', callers: 'open' });
    const r = await runCall(url, ['--ca', ca, 'Sec.Echo', '"over tls"']);
    expect(r.stdout).toBe('over tls\n');
  });

  it('fails a caller that does not trust the CA, and --insecure connects with a loud warning', async () => {
    const r = await runCall(url, ['Sec.Echo', '1']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/self[- ]signed certificate|unable to verify/i);
    const insecure = await runCall(url, ['--insecure', 'Sec.Echo', '1']);
    expect(insecure.stdout).toBe('1\n');
    expect(insecure.stderr).toContain('INSECURE: the relay certificate is NOT verified');
  });

  it('refuses an expired node certificate', async () => {
    await expectRefusedNode(['--relay', url, '--name', 'old', '--ca', ca, ...nodeCert('old')], /HTTP 401: client certificate refused: CERT_HAS_EXPIRED/);
  });

  it('refuses a node certificate from another CA', async () => {
    await expectRefusedNode(
      ['--relay', url, '--name', 'office-1', '--ca', ca, ...nodeCert('office-1', rogue)],
      /HTTP 401: client certificate refused: UNABLE_TO_VERIFY_LEAF_SIGNATURE/,
    );
  });

  it('refuses a node whose certificate names another node', async () => {
    await expectRefusedNode(['--relay', url, '--name', 'office-1', '--ca', ca, ...nodeCert('other')], /the client certificate is for other, not node office-1/);
  });

  it('refuses a node without a certificate', async () => {
    await expectRefusedNode(['--relay', url, '--name', 'office-1', '--ca', ca], /requires a node client certificate/);
  });

  it('kept the rightful office-1 through all of that', async () => {
    const r = await runCall(url, ['--ca', ca, '--node', 'office-1', 'Sec.Echo', '2']);
    expect(r.stdout).toBe('2\n');
  });
});

describe('tunnel-call exit codes: retry later (3) or stop, the token is wrong (4)', () => {
  // This relay keeps the guessing limit, low: the back-off is what is tested.
  let relay: RunningRelay;
  beforeAll(async () => {
    // Two wrong tokens from one address within a minute back it off for a minute.
    relay = await startRelay(['--max-auth-failures-per-address', '2', '--auth-backoff', '60s'], 0, { TUNNEL_CALLER_TOKEN: CALLER_TOKEN });
  });
  afterAll(killAll);

  it('exits 3 when no relay listens', async () => {
    const port = await freePort();
    const r = await runCall(`127.0.0.1:${port}`, ['Sec.Who'], {}, 30_000);
    expect(r.stderr).toMatch(/^CONNECTION_CLOSED: cannot connect to relay/);
    expect(r.code).toBe(3);
  });

  it('exits 4 for a wrong token, and 3 once the relay backs off the address (every token refused unchecked: retry later)', async () => {
    const outcomes: Array<{ code: number | null; stderr: string }> = [];
    // The refusals that count: 2 wrong tokens; a third attempt, even with the right token, is refused unchecked.
    for (const token of ['wrong-token-0123456789', 'wrong-token-9876543210', CALLER_TOKEN]) {
      const { code, stderr } = await runCall(relay.addr, ['Sec.Who'], { TUNNEL_TOKEN: token });
      outcomes.push({ code, stderr });
    }
    expect(outcomes[0]).toMatchObject({ code: 4, stderr: expect.stringMatching(/^UNAUTHORIZED: .*HTTP 401: token refused/) });
    expect(outcomes[1]).toMatchObject({ code: 4 });
    expect(outcomes[2]!.stderr).toMatch(/^UNAUTHORIZED: .*too many failed authentications from 127\.0\.0\.1; retry in \d+ s/);
    expect(outcomes[2]!.code).toBe(3);
  });
});

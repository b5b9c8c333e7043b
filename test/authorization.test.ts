import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/client/client.js';
import { isTunnelError } from '../src/errors.js';
import { Relay, ServiceRegistry, TunnelNode } from '../src/index.js';
import { registerExamples } from '../src/services/index.js';
import type { Revocation } from '../src/relay/doors/hub.js';
import { silentLogger } from '../src/util/logger.js';
import type { NodeInfo, PresenceEvent } from '../src/wire/presence.js';
import { certDir } from './helpers/certs.js';
import { gatewayCall } from './helpers/http.js';
import { BIN, killAll, Proc, runCall, startNode, startRelay, type LogLine, type RunningRelay } from './helpers/processes.js';
import { RawPeer, req } from './helpers/raw.js';
import { waitUntil } from './helpers/wait.js';

const FLEET = 'test/fixtures/fleet-services.js';
const LAB = 'test/fixtures/lab-services.js';
const SQUATTER = 'test/fixtures/squatter-services.js';
// Fast retries, so that a refused node comes back (and is refused again) while the test runs.
const FAST = ['--reconnect-base', '100ms', '--reconnect-cap', '300ms'];

const TOKEN = {
  office1: 'office1-token-0123456789',
  office2: 'office2-token-0123456789',
  office3: 'office3-token-0123456789',
  lab1: 'lab1-token-0123456789abc',
  lab2: 'lab2-token-0123456789abc',
  rogue: 'rogue-token-0123456789ab',
  billing: 'billing-token-0123456789',
  ops: 'ops-token-0123456789abcd',
  temp: 'temp-token-0123456789abc',
};

function tokensFile(overrides: { lab1?: boolean; temp?: boolean; office2?: string; billing?: string } = {}): string {
  return [
    '# kind name token rules',
    `node   office-1 ${TOKEN.office1} serve=Arith,Hello,KV,Server`,
    `node   office-2 ${TOKEN.office2}${overrides.office2 ?? ''}`,
    `node   office-3 ${TOKEN.office3}`,
    overrides.lab1 === false ? '' : `node   lab-1    ${TOKEN.lab1}`,
    `node   lab-2    ${TOKEN.lab2}`,
    `node   rogue-1  ${TOKEN.rogue}`,
    `caller billing  ${TOKEN.billing} ${overrides.billing ?? 'call=office-*/Fleet.*,office-*/Lab.*,*/KV.Get'}`,
    `caller ops      ${TOKEN.ops}`,
    overrides.temp === false ? '' : `caller temp     ${TOKEN.temp}`,
    '',
  ].join('\n');
}

const names = (nodes: NodeInfo[]) => nodes.map((n) => n.name);

/** The sorted "node (services)" entries of a message that lists the nodes online after `prefix`. */
function online(message: string, prefix: string): string[] {
  expect(message.startsWith(prefix), message).toBe(true);
  return message
    .slice(prefix.length)
    .split(/, (?=[\w.-]+ \()/)
    .sort();
}

/** Runs `tunnel-call --list --json` as `token` and returns the nodes it printed. */
async function listAs(relay: RunningRelay, token: string): Promise<NodeInfo[]> {
  const r = await runCall(relay.addr, ['--list', '--json'], { TUNNEL_TOKEN: token });
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { nodes: NodeInfo[] }).nodes;
}

describe('serve= and call= from the tokens file', () => {
  const dir = certDir();
  const file = dir.file('tokens.txt');
  let relay: RunningRelay;
  const nodes = new Map<string, Proc>();
  const clients: Client[] = [];
  const client = async (token: string) => {
    const c = await connect(relay.addr, { token });
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    writeFileSync(file, tokensFile());
    // Refused nodes here retry every 300 ms from 127.0.0.1, as every process of this test does: the
    // per-address back-off on wrong credentials (test/guessing.test.ts) would soon refuse the
    // test's own callers, so it is set out of reach; this file is about serve= and call=.
    relay = await startRelay(['--tokens', file, '--max-auth-failures-per-address', '100000']);
    const start = async (name: string, token: string, args: string[]) =>
      nodes.set(name, await startNode(relay.addr, ['--name', name, ...FAST, ...args], { TUNNEL_TOKEN: token }));
    await Promise.all([
      start('office-1', TOKEN.office1, []),
      start('office-2', TOKEN.office2, ['--services', FLEET]),
      start('lab-1', TOKEN.lab1, ['--services', LAB, '--label', 'site=lab']),
    ]);
  });
  afterAll(async () => {
    await Promise.all(clients.map((c) => c.close()));
    await killAll();
    dir.remove();
  });

  it('refuses a node announcing a service reserved to another; every Hello.Login goes to the owner', async () => {
    const rogue = new Proc(BIN.node, ['--relay', relay.addr, '--name', 'rogue-1', '--services', SQUATTER, '--log-level', 'debug', ...FAST], {
      TUNNEL_TOKEN: TOKEN.rogue,
    });
    const refused = await rogue.waitForMsg('relay refused our credentials; retrying at the longest backoff');
    expect(refused.reason).toBe('node rogue-1 may not serve Hello: it is reserved to nodes whose tokens list it (serve= in the tokens file)');
    const audit = await relay.proc.waitForLog((l) => l.msg === 'refused hello' && l.node === 'rogue-1');
    expect(audit).toMatchObject({ level: 40, role: 'node', peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/), reason: refused.reason });

    // The squatter keeps knocking (every 300 ms at most) while the calls are made.
    const ops = await client(TOKEN.ops);
    const users = await Promise.all(Array.from({ length: 4 }, () => ops.call('Hello.Login', 'alice', 'secret', { affinity: false })));
    expect(users).toEqual(['alice', 'alice', 'alice', 'alice']);
    await rogue.waitForLog(() => rogue.logs.filter((l) => l.msg === 'relay refused our credentials; retrying at the longest backoff').length >= 2);
    expect(rogue.logs.some((l) => l.msg === 'connected to relay' || l.msg === 'squatter got a Login call')).toBe(false);
    expect(names(await ops.nodes())).toEqual(['lab-1', 'office-1', 'office-2']);
    rogue.kill();
  });

  it('answers FORBIDDEN for what call= does not allow, with an audit line, and lets through what it allows', async () => {
    const denied = await runCall(relay.addr, ['Hello.Login', 'alice', 'secret'], { TUNNEL_TOKEN: TOKEN.billing });
    expect(denied.code).toBe(5); // FORBIDDEN has its own exit code: not a call that failed, a token that may not
    expect(denied.stderr).toContain('FORBIDDEN: caller billing may not call Hello.Login on any node it can see (call= in the tokens file)');
    const audit = await relay.proc.waitForLog((l) => l.msg === 'refused call' && l.method === 'Hello.Login');
    expect(audit).toMatchObject({ level: 40, identity: 'billing', peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/) });
    expect(JSON.stringify(audit)).not.toContain('secret');

    const billing = await client(TOKEN.billing);
    expect(await billing.call('KV.Get', 'missing')).toBeNull();
    const kvSet = await billing.call('KV.Set', 'k', 'v').catch((err: unknown) => err);
    expect(isTunnelError(kvSet, 'FORBIDDEN')).toBe(true);
  });

  it('routes a limited caller only to nodes it may call, and broadcasts only to them', async () => {
    const billing = await client(TOKEN.billing);
    const ops = await client(TOKEN.ops);
    const served = await Promise.all(Array.from({ length: 20 }, () => billing.call<string>('Fleet.Where', { affinity: false })));
    expect(new Set(served)).toEqual(new Set(['office-2']));
    const spread = await Promise.all(Array.from({ length: 20 }, () => ops.call<string>('Fleet.Where', { affinity: false })));
    expect(new Set(spread)).toEqual(new Set(['office-2', 'lab-1']));

    expect((await billing.broadcast('Fleet.Where', [])).map((r) => r.node)).toEqual(['office-2']);
    expect((await ops.broadcast('Fleet.Where', [])).map((r) => r.node)).toEqual(['lab-1', 'office-2']);
    const cli = await runCall(relay.addr, ['--all', 'Fleet.Where'], { TUNNEL_TOKEN: TOKEN.billing });
    expect(cli.code).toBe(0);
    expect(cli.stdout).not.toContain('lab-1');
  });

  it('shows a limited caller only its nodes in --list, with only what it may call', async () => {
    const seen = await listAs(relay, TOKEN.billing);
    expect(names(seen)).toEqual(['office-1', 'office-2']);
    expect(seen.find((n) => n.name === 'office-1')!.services).toEqual({ KV: ['Get'] });
    expect(names(await listAs(relay, TOKEN.ops))).toEqual(['lab-1', 'office-1', 'office-2']);
  });

  it('never names a hidden node in NO_SERVICE, NO_NODE or NO_METHOD', async () => {
    const billing = await client(TOKEN.billing);
    const error = (p: Promise<unknown>) =>
      p.then(
        () => expect.fail('the call succeeded'),
        (err: unknown) => err as Error & { code: string; data?: unknown },
      );
    // Lab is served only by lab-1, which billing may not call: for billing, Lab does not exist.
    const lab = await error(billing.call('Lab.Where'));
    expect(lab.code).toBe('NO_SERVICE');
    expect(online(lab.message, 'no node serves service Lab; nodes online: ')).toEqual(['office-1 (KV)', 'office-2 (Fleet)']);
    const named = await error(billing.call('Fleet.Where', { node: 'lab-1' }));
    expect(named.code).toBe('NO_NODE');
    expect(named.data).toEqual({ reason: 'node-not-found' });
    expect(online(named.message, 'no node named lab-1 is connected; nodes online: ')).toEqual(['office-1 (KV)', 'office-2 (Fleet)']);
    const where = await error(billing.call('Fleet.Where', { where: { site: 'lab' } }));
    expect(where.code).toBe('NO_NODE');
    expect(where.data).toEqual({ reason: 'no-match' });
    expect(where.message).not.toContain('lab-1');
    const method = await error(billing.call('Fleet.Nope'));
    expect(method.code).toBe('NO_METHOD');
    expect(method.message).toMatch(/^service Fleet has no method Nope; methods on office-2: /);
    const forbidden = await error(billing.call('Arith.Multiply', 2, 3, { node: 'office-1' }));
    expect(forbidden.code).toBe('FORBIDDEN');
    expect(forbidden.message).toBe('caller billing may not call Arith.Multiply on any node it can see (call= in the tokens file)');
    // What ops sees, for contrast: the same where names lab-1.
    const ops = await client(TOKEN.ops);
    expect(await ops.call('Fleet.Where', { where: { site: 'lab' } })).toBe('lab-1');
  });

  it('answers 403 FORBIDDEN on the HTTP gateway', async () => {
    const r = await gatewayCall(relay.port, 'Hello.Login', ['alice', 'secret'], '', { authorization: `Bearer ${TOKEN.billing}` });
    expect(r.status).toBe(403);
    expect(r.json).toMatchObject({ error: { code: 'FORBIDDEN', message: expect.stringContaining('caller billing may not call Hello.Login') } });
    const ok = await gatewayCall(relay.port, 'KV.Get', ['missing'], '', { authorization: `Bearer ${TOKEN.billing}` });
    expect(ok).toMatchObject({ status: 200, json: { result: null } });
  });

  it('sends a limited watcher only the joins and leaves of nodes it may call', async () => {
    const billing = await client(TOKEN.billing);
    const ops = await client(TOKEN.ops);
    const billingEvents: PresenceEvent[] = [];
    const opsEvents: PresenceEvent[] = [];
    const watch = await billing.watchPresence((e) => billingEvents.push(e));
    await ops.watchPresence((e) => opsEvents.push(e));
    expect(names(watch.nodes)).toEqual(['office-1', 'office-2']);
    // lab-2 joins first, office-3 second: once billing has office-3's join, it would have had lab-2's.
    nodes.set('lab-2', await startNode(relay.addr, ['--name', 'lab-2', '--services', FLEET], { TUNNEL_TOKEN: TOKEN.lab2 }));
    nodes.set('office-3', await startNode(relay.addr, ['--name', 'office-3', '--services', FLEET], { TUNNEL_TOKEN: TOKEN.office3 }));
    await waitUntil(() => billingEvents.some((e) => e.node.name === 'office-3') && opsEvents.some((e) => e.node.name === 'office-3'), 10_000, 'office-3 joins');
    expect(billingEvents.map((e) => `${e.event} ${e.node.name}`)).toEqual(['join office-3']);
    expect(opsEvents.map((e) => `${e.event} ${e.node.name}`)).toEqual(['join lab-2', 'join office-3']);
    nodes.get('lab-2')!.kill();
    nodes.get('office-3')!.kill();
    await waitUntil(() => billingEvents.some((e) => e.event === 'leave') && opsEvents.filter((e) => e.event === 'leave').length === 2, 10_000, 'leaves');
    // A node stopped with SIGTERM drains first: watchers see it as an update (draining) before it leaves.
    expect(billingEvents.filter((e) => e.event !== 'update').map((e) => `${e.event} ${e.node.name}`)).toEqual(['join office-3', 'leave office-3']);
    const drainingFirst = billingEvents.map((e) => (e.event === 'update' ? `update ${e.node.name} draining=${e.node.draining}` : `${e.event} ${e.node.name}`));
    expect(drainingFirst).toEqual(['join office-3', 'update office-3 draining=true', 'leave office-3']);
  });

  it('revokes at reload: removed tokens and services no longer allowed close their connections (4003) at once', async () => {
    const billing = await client(TOKEN.billing);
    expect(isTunnelError(await billing.call('Arith.Multiply', 2, 3).catch((e: unknown) => e), 'FORBIDDEN')).toBe(true);
    const office3 = await startNode(relay.addr, ['--name', 'office-3', '--services', FLEET], { TUNNEL_TOKEN: TOKEN.office3 });
    const started = (n: number) =>
      office3.waitForLog(() => office3.logs.filter((l) => l.msg === 'fleet work started').length >= n, 10_000, `${n} calls started`);
    // temp has a call in flight over its WebSocket and another over the gateway; ops has one on lab-1.
    const temp = new RawPeer(`ws://${relay.addr}/`, { authorization: `Bearer ${TOKEN.temp}` });
    await temp.open();
    temp.send([4, { version: 1, role: 'caller' }]);
    await temp.until(() => temp.received.some((m) => Array.isArray(m) && m[0] === 5), 5_000, 'welcome');
    temp.send(req(1, 'Fleet.Work', [60_000], { node: 'office-3', timeout: 60_000 }));
    await started(1);
    const gateway = gatewayCall(relay.port, 'Fleet.Work', [60_000], '?node=office-3&timeout=60s', { authorization: `Bearer ${TOKEN.temp}` });
    await started(2);
    const ops = await client(TOKEN.ops);
    const onLab = ops.call('Fleet.Work', 60_000, { node: 'lab-1', timeout: 60_000 }).catch((err: unknown) => err);
    await nodes.get('lab-1')!.waitForMsg('fleet work started');

    const mark = relay.proc.logs.length;
    // lab-1 and temp lose their lines; office-2 may now serve only Lab (it serves Fleet); billing may also call Arith.
    writeFileSync(file, tokensFile({ lab1: false, temp: false, office2: ' serve=Lab', billing: 'call=office-*/Fleet.*,*/KV.Get,*/Arith.*' }));
    const reloaded = await relay.proc.waitForMsg('tokens reloaded', 10_000, mark);
    const revoked = (match: (l: LogLine) => boolean) => relay.proc.waitForLog((l) => l.msg === 'revoked connection' && match(l), 5_000, 'revocation', mark);
    const lab1 = await revoked((l) => l.node === 'lab-1');
    const office2 = await revoked((l) => l.node === 'office-2');
    const tempLine = await revoked((l) => l.identity === 'temp');
    for (const line of [lab1, office2, tempLine]) {
      expect(line.level).toBe(40);
      expect(line.peer).toMatch(/^127\.0\.0\.1:\d+$/);
      expect((line.time as number) - (reloaded.time as number)).toBeLessThan(1_000);
    }
    expect(lab1.reason).toBe('node token refused for node name lab-1 (its token was revoked)');
    expect(office2.reason).toBe('node office-2 may not serve Fleet: its serve= in the tokens file does not list it');
    expect(await temp.waitClosed(5_000)).toEqual({ code: 4003, reason: 'caller token refused (its token was revoked)' });
    const answer = await gateway;
    expect(answer.status).toBe(401);
    expect(answer.json).toMatchObject({ error: { code: 'UNAUTHORIZED', message: 'caller token refused (its token was revoked)' } });
    // Both of temp's sessions are closed on the node, which aborts their running calls.
    await office3.waitForLog(() => office3.logs.filter((l) => l.msg === 'session closed' && l.abortedCalls === 1).length === 2, 5_000, 'two sessions closed');
    expect(isTunnelError(await onLab, 'NODE_LOST')).toBe(true);
    expect(names(await listAs(relay, TOKEN.ops))).toEqual(['office-1', 'office-3']);
    await nodes.get('lab-1')!.waitForMsg('relay refused our credentials; retrying at the longest backoff');

    // billing stayed connected and its next call follows the new rules.
    expect(await billing.call('Arith.Multiply', 2, 3)).toBe(6);
    expect(relay.proc.logs.slice(mark).some((l) => l.msg === 'revoked connection' && l.identity === 'billing')).toBe(false);
    expect(relay.proc.stderr).not.toContain(TOKEN.temp);
  });
});

describe('the permissions option of Relay', () => {
  const dir = certDir();
  const file = dir.file('tokens.txt');
  const T = { owner: 'owner-token-0123456789', other: 'other-token-0123456789', spare: 'spare-token-0123456789', billing: 'lib-billing-token-012345' };
  let relay: Relay;
  let url: string;
  const nodes: TunnelNode[] = [];
  const node = (name: string, token: string, services: ServiceRegistry) => {
    const n = new TunnelNode({ relay: url, name, token, services, reconnectCap: 60_000 });
    nodes.push(n);
    n.start();
    return n;
  };

  beforeAll(async () => {
    // The file names who is who; the option says what they may do.
    writeFileSync(file, `node owner ${T.owner}\nnode other ${T.other}\nnode spare ${T.spare}\ncaller lib-billing ${T.billing}\n`);
    relay = new Relay({
      listen: '127.0.0.1:0',
      tokens: file,
      permissions: { nodes: { owner: { serve: ['Arith', 'Hello', 'KV', 'Server'] } }, callers: { 'lib-billing': { call: ['owner/Arith.Multiply'] } } },
    });
    ({ url } = await relay.listen());
  });
  afterAll(async () => {
    await Promise.all(nodes.map((n) => n.stop(1_000)));
    await relay.close();
    dir.remove();
  });

  it('refuses bad permissions in the constructor', () => {
    expect(() => new Relay({ permissions: { callers: { x: { call: ['a/b/C.D'] } } } })).toThrow(/call= pattern "a\/b\/C.D" has more than one \//);
  });

  it('keeps reserved services to their owner and limits a caller to its patterns', async () => {
    await node('owner', T.owner, registerExamples(new ServiceRegistry())).waitConnected();
    await node('spare', T.spare, new ServiceRegistry().register('Spare', { Where: () => 'spare' })).waitConnected();
    const other = node('other', T.other, new ServiceRegistry().register('Arith', { Multiply: () => -1 }));
    const [code, reason] = (await once(other, 'disconnected')) as [number, string];
    expect(code).toBe(4003);
    expect(reason).toBe('node other may not serve Arith: it is reserved to nodes whose tokens list it (serve= in the tokens file)');

    const billing = await connect(url, { token: T.billing });
    expect(await billing.call('Arith.Multiply', 2, 3)).toBe(6);
    expect(isTunnelError(await billing.call('Arith.Divide', 6, 3).catch((e: unknown) => e), 'FORBIDDEN')).toBe(true);
    expect(isTunnelError(await billing.call('Spare.Where').catch((e: unknown) => e), 'FORBIDDEN')).toBe(true);
    const seen = await billing.nodes();
    expect(seen.map((n) => [n.name, n.services])).toEqual([['owner', { Arith: ['Multiply'] }]]);
    await billing.close();
  });

  it('closes a caller whose token a reload removed, and says so with a revoked event', async () => {
    const billing = await connect(url, { token: T.billing });
    const closed = once(billing, 'close');
    // Sessions of other doors (the msgpack-rpc port) opened with and without the credential.
    const closes: Array<[number, string]> = [];
    const output = { respond: () => undefined, close: (code: number, reason: string) => closes.push([code, reason]) };
    const admission = relay.sessions.admit(T.billing, '127.0.0.1:1', 'msgpack-rpc');
    relay.sessions.open(output, '127.0.0.1:1', admission.identity, silentLogger, admission.credential);
    relay.sessions.open(output, '127.0.0.1:2', 'lib-billing', silentLogger);
    const revoked: Revocation[] = [];
    relay.on('revoked', (r: Revocation) => revoked.push(r));
    writeFileSync(file, `node owner ${T.owner}\nnode other ${T.other}\nnode spare ${T.spare}\n`);
    relay.auth.reload();
    expect(revoked.map((r) => [r.role, r.name, r.address.startsWith('127.0.0.1:')])).toEqual([
      ['caller', 'lib-billing', true],
      ['caller', 'lib-billing', true],
      ['caller', 'lib-billing', true],
    ]);
    expect(closes).toEqual([
      [4003, 'caller token refused (its token was revoked)'],
      [4003, 'caller lib-billing has no token any more (its token was revoked)'],
    ]);
    const [code, reason] = (await closed) as [number, string];
    expect([code, reason]).toEqual([4003, 'caller token refused (its token was revoked)']);
  });
});

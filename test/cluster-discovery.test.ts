import { afterEach, describe, expect, it } from 'vitest';
import type { LookupFunction } from 'node:net';
import { pino } from 'pino';
import { connect, ServiceRegistry, TunnelNode } from '../src/index.js';
import { FOLLOW_AFTER_FAILURES, LearnedRelays, RelayRotation } from '../src/node/relay-rotation.js';
import { advertiseUrl, defaultAdvertiseUrl } from '../src/util/address.js';
import { silentLogger, type Logger } from '../src/util/logger.js';
import { clusterArgs, freePort, NatsServer, stopAllNats } from './helpers/nats.js';
import { killAll, startNode, startRelay, type LogLine, type RunningRelay } from './helpers/processes.js';

/** Issue 18, part 6: a node finds the cluster. Every wait is bounded; nothing sleeps a fixed time. */

async function clusterRelay(nats: string, name: string, extra: string[] = [], port = 0): Promise<RunningRelay> {
  const relay = await startRelay([...clusterArgs(nats), '--relay-name', name, ...extra], port);
  await relay.proc.waitForMsg('connected to the cluster', 10_000);
  return relay;
}

/** Polls `relay`'s /readyz (bounded) until it lists `url` among the URLs it tells nodes. */
async function advertises(relay: RunningRelay, url: string, timeout = 10_000): Promise<void> {
  const deadline = Date.now() + timeout;
  for (;;) {
    const body = (await (await fetch(`http://${relay.addr}/readyz`)).json()) as { cluster?: { urls?: string[] } };
    if (body.cluster?.urls?.includes(url)) return;
    if (Date.now() > deadline) throw new Error(`relay does not list ${url} within ${timeout} ms: ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Two relays of one cluster: A advertises its default URL, B an explicit --advertise. */
async function twoRelays(): Promise<{ a: RunningRelay; b: RunningRelay; urlA: string; urlB: string }> {
  const nats = await NatsServer.start();
  const bPort = await freePort();
  const urlB = `ws://127.0.0.1:${bPort}/`;
  const [a, b] = await Promise.all([clusterRelay(nats.url, 'relay-a'), clusterRelay(nats.url, 'relay-b', ['--advertise', `ws://127.0.0.1:${bPort}`], bPort)]);
  const urlA = `ws://127.0.0.1:${a.port}/`;
  expect(a.proc.logs.find((l) => l.msg === 'relay listening')?.advertise).toBe(urlA);
  expect(b.proc.logs.find((l) => l.msg === 'relay listening')?.advertise).toBe(urlB);
  await Promise.all([advertises(a, urlB), advertises(b, urlA)]);
  return { a, b, urlA, urlB };
}

const FAST = ['--reconnect-base', '100ms', '--reconnect-cap', '500ms'];

describe('a node finds the cluster', () => {
  afterEach(async () => {
    await killAll();
    await stopAllNats();
  });

  it('learns the other relay from its welcome and moves there when its relay dies', async () => {
    const { a, b, urlA, urlB } = await twoRelays();
    const node = await startNode(a.addr, ['--name', 'mover', ...FAST]);
    const welcome = await node.waitForMsg('connected to relay');
    expect(welcome.relay).toBe(urlA);
    expect(welcome.cluster).toEqual([urlB]);
    const from = node.logs.length;
    a.proc.kill('SIGKILL');
    const moved = await node.waitForLog((l) => l.msg === 'relay stays unreachable; moving to another relay of the cluster', 20_000, 'the move', from);
    expect(moved).toMatchObject({ from: urlA, to: urlB });
    // Three failed rounds of dials to A came first.
    const failures = node.logs.slice(from).filter((l: LogLine) => l.msg === 'could not connect to relay' && l.relay === urlA);
    expect(failures.length).toBeGreaterThanOrEqual(FOLLOW_AFTER_FAILURES);
    await node.waitForLog((l) => l.msg === 'connected to relay' && l.relay === urlB, 20_000, 'connected to B', from);
    const caller = await connect(b.addr);
    try {
      expect(await caller.call('Arith.Multiply', 6, 7)).toBe(42);
    } finally {
      await caller.close();
    }
  }, 60_000);

  it('with --no-follow-cluster stays on its relay', async () => {
    const { a, urlA } = await twoRelays();
    const node = await startNode(a.addr, ['--name', 'stayer', '--no-follow-cluster', ...FAST]);
    const from = node.logs.length;
    a.proc.kill('SIGKILL');
    // Past the point where a following node moves: every dial still goes to A.
    await node.waitForLog(
      () => node.logs.slice(from).filter((l) => l.msg === 'could not connect to relay').length > FOLLOW_AFTER_FAILURES + 1,
      20_000,
      'more failed dials than a follower makes before it moves',
      from,
    );
    const after = node.logs.slice(from);
    expect(after.some((l) => l.msg === 'relay stays unreachable; moving to another relay of the cluster')).toBe(false);
    expect(after.filter((l) => l.msg === 'could not connect to relay').every((l) => l.relay === urlA)).toBe(true);
  }, 60_000);

  it('tries every address of a name: a made-up name on 127.0.0.1 and 127.0.0.2, one relay on each', async () => {
    const first = await startRelay(['--allow-host', 'relays.test']);
    const port = first.port;
    // The same port on another loopback address: the second address of the name.
    const second = { ...(await startRelay(['--listen', `127.0.0.2:${port}`, '--allow-host', 'relays.test'], port)), addr: `127.0.0.2:${port}` };
    const names: string[] = [];
    const lookup: LookupFunction = (hostname, options, callback) => {
      names.push(hostname);
      const all = [
        { address: '127.0.0.1', family: 4 },
        { address: '127.0.0.2', family: 4 },
      ];
      if (hostname !== 'relays.test') callback(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' }), '', 0);
      else if (options.all) callback(null, all);
      else callback(null, all[0]!.address, 4);
    };
    const registry = new ServiceRegistry().register('Arith', { Multiply: (x: number, y: number) => x * y });
    const node = new TunnelNode({ relay: `relays.test:${port}`, name: 'dns-node', services: registry, lookup, reconnectBase: 100, reconnectCap: 500 });
    try {
      node.start();
      await node.waitConnected(10_000);
      expect(names).toContain('relays.test');
      expect(node.tunnels[0]!.current).toBe(`ws://relays.test:${port}/`);
      const held = await Promise.race([first.proc.waitForMsg('node connected').then(() => first), second.proc.waitForMsg('node connected').then(() => second)]);
      const other = held === first ? second : first;
      held.proc.kill('SIGKILL');
      // The relay's Host check (loopback listener, --allow-host) passed: the node sent the name.
      await other.proc.waitForMsg('node connected', 15_000);
      const caller = await connect(other.addr);
      try {
        expect(await caller.call('Arith.Multiply', 6, 7)).toBe(42);
      } finally {
        await caller.close();
      }
    } finally {
      await node.stop(0);
    }
  }, 60_000);
});

describe('which relays a tunnel may move to (unit)', () => {
  function capture(): { log: Logger; lines: LogLine[] } {
    const lines: LogLine[] = [];
    return { log: pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) }), lines };
  }

  it('a wss:// node never follows a ws:// URL; unparseable URLs are ignored with one debug line each', () => {
    const { log, lines } = capture();
    const learned = new LearnedRelays(log, true);
    const rotation = new RelayRotation('wss://a.example/', () => learned.candidates(rotation, [rotation]));
    learned.welcome(rotation, {
      url: 'wss://a.example:443',
      relays: ['ws://b.example:9090', 'wss://c.example:9443', '9090', 'http://d.example', 'wss://127.1:9090', 'x'.repeat(300), 42, 'wss://c.example:9443/'],
    });
    expect(learned.candidates(rotation, [rotation])).toEqual(['wss://c.example:9443/']);
    const ignored = lines.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('ignoring a relay'));
    expect(ignored).toHaveLength(5);
    expect(ignored.every((l) => l.level === 20)).toBe(true);
    // A ws:// node may go to either.
    const plain = new RelayRotation('ws://a.example:9090/', () => []);
    expect(learned.candidates(plain, [plain])).toEqual(['ws://b.example:9090/', 'wss://c.example:9443/']);
  });

  it('moves after 3 failed rounds, round robin over the configured relay and the learned ones', () => {
    let now = 0;
    const learned = new LearnedRelays(silentLogger, true);
    const rotation: RelayRotation = new RelayRotation(
      'ws://a.test:1/',
      () => learned.candidates(rotation, [rotation]),
      () => now,
    );
    learned.welcome(rotation, { relays: ['ws://b.test:1', 'ws://c.test:1'] });
    rotation.connected(undefined);
    rotation.disconnected();
    const seen: Array<string | undefined> = [];
    for (let i = 0; i < 9; i++) seen.push(rotation.failed());
    expect(seen).toEqual([undefined, undefined, 'ws://b.test:1/', undefined, undefined, 'ws://c.test:1/', undefined, undefined, 'ws://a.test:1/']);
    // Or after 10 s without a connection, at the first failed round.
    now += 10_000;
    expect(rotation.failed()).toBe('ws://b.test:1/');
    // A welcome that lists no relays leaves what was learned.
    learned.welcome(rotation, { relays: [] });
    expect(learned.candidates(rotation, [rotation])).toEqual(['ws://b.test:1/', 'ws://c.test:1/']);
  });

  it('off (followCluster false): nothing is learned, the tunnel stays', () => {
    const learned = new LearnedRelays(silentLogger, false);
    const rotation: RelayRotation = new RelayRotation('ws://a.test:1/', () => learned.candidates(rotation, [rotation]));
    learned.welcome(rotation, { relays: ['ws://b.test:1'] });
    for (let i = 0; i < 10; i++) expect(rotation.failed()).toBeUndefined();
    expect(rotation.current).toBe('ws://a.test:1/');
  });

  it('a dual-homed tunnel moves only to a relay no other tunnel of the node holds', () => {
    const learned = new LearnedRelays(silentLogger, true);
    const all: RelayRotation[] = [];
    const one: RelayRotation = new RelayRotation('ws://localhost:1/', () => learned.candidates(one, all));
    const two: RelayRotation = new RelayRotation('ws://b.test:1/', () => learned.candidates(two, all));
    all.push(one, two);
    // Tunnel one's relay calls itself ws://127.0.0.1:1; tunnel two's relay lists it and c.
    one.connected(learned.welcome(one, { url: 'ws://127.0.0.1:1', relays: ['ws://b.test:1', 'ws://c.test:1'] }).self);
    two.connected(learned.welcome(two, { url: 'ws://b.test:1', relays: ['ws://127.0.0.1:1', 'ws://c.test:1'] }).self);
    expect(learned.candidates(two, all)).toEqual(['ws://c.test:1/']);
    expect(learned.candidates(one, all)).toEqual(['ws://c.test:1/']);
  });

  it('followCluster and lookup are checked like every node option', () => {
    const services = new ServiceRegistry().register('Arith', { Multiply: (x: number, y: number) => x * y });
    expect(() => new TunnelNode({ relay: ':9', services, followCluster: 'no' as unknown as boolean })).toThrow(/followCluster must be true or false/);
    expect(() => new TunnelNode({ relay: ':9', services, lookup: 'dns' as unknown as LookupFunction })).toThrow(/lookup must be a function/);
  });

  it('the advertised URL: ws:// or wss:// only, the default from --listen or the host name', () => {
    expect(advertiseUrl('wss://relay.example:443', 'advertise')).toBe('wss://relay.example/');
    expect(() => advertiseUrl('9090', '--advertise')).toThrow(/--advertise "9090": give the URL nodes dial/);
    expect(() => advertiseUrl('relay.example:9090', '--advertise')).toThrow(/ws:\/\/host:port or wss:\/\/host:port/);
    expect(() => advertiseUrl('ws://127.1:9090', '--advertise')).toThrow(/a bare number is a port/);
    expect(defaultAdvertiseUrl('127.0.0.1:9090', 9090, false, 'box')).toBe('ws://127.0.0.1:9090/');
    expect(defaultAdvertiseUrl('[::1]:0', 4000, true, 'box')).toBe('wss://[::1]:4000/');
    expect(defaultAdvertiseUrl(':9090', 9090, true, 'Relay-1')).toBe('wss://relay-1:9090/');
    expect(defaultAdvertiseUrl('0.0.0.0:9090', 9090, false, 'bad name!')).toBeUndefined();
  });
});

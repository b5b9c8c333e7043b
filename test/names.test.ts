import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ClusterMessageError, pack, unpack } from '../src/relay/cluster/messages.js';
import { controlProblem, CONTROL_RULE, labelsProblem, methodProblem, nodeNameProblem } from '../src/wire/bounds.js';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { http } from './helpers/http.js';
import { killAll, Proc, BIN, runCall, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { RawPeer, req } from './helpers/raw.js';

/** One name, one live node (issue 11, item 5). */

const FAST_RETRY = ['--reconnect-base', '100ms', '--reconnect-cap', '500ms'];

async function rawNode(addr: string, name: string, instance: string): Promise<RawPeer> {
  const peer = new RawPeer(`ws://${addr}/`);
  await peer.open();
  peer.send([4, { version: 2, role: 'node', name, instance, services: { Twin: ['Who'] } }]);
  await peer.until(() => peer.received.some((m) => Array.isArray(m) && m[0] === 5) || peer.closed !== undefined, 5_000, 'welcome or close');
  return peer;
}

describe('one name, one live node', () => {
  afterEach(killAll);

  it("refuses a second process under a live node's name, without ever taking turns, and lets it in once the holder is gone", async () => {
    const relay = await startRelay();
    const first = await startNode(relay.addr, ['--name', 'office-1']);
    const second = new Proc(BIN.node, ['--relay', relay.addr, '--name', 'office-1', '--log-level', 'debug', ...FAST_RETRY]);
    const refused = await second.waitForMsg('relay refused our name; retrying at the longest backoff', 10_000);
    expect(refused.reason).toMatch(
      /^name office-1 is held by a live node from 127\.0\.0\.1:\d+ since \d{4}-\d\d-\d\dT[\d:.]+Z; give each node its own --name$/,
    );
    // It keeps trying, and is refused each time: the relay never lets the two take turns.
    const conflicts = () => relay.proc.logs.filter((l) => l.msg === 'refused hello' && String(l.reason).startsWith('name office-1 is held')).length;
    await relay.proc.waitForLog(() => conflicts() >= 3, 15_000, 'three refused claims');
    expect(relay.proc.logs.filter((l) => l.msg === 'node name reconnected; replacing the previous connection')).toHaveLength(0);
    expect(first.logs.filter((l) => l.msg === 'disconnected from relay')).toHaveLength(0);
    expect((await runCall(relay.addr, ['--node', 'office-1', 'Arith.Multiply', '6', '7'])).stdout).toBe('42\n');
    // Counted as they were logged: at least the three seen, however many more came meanwhile.
    const seen = conflicts();
    const metrics = await (await fetch(`http://${relay.addr}/metrics`)).text();
    const counted = /^tunnel_relay_rejected_connections_total\{reason="name_conflict"\} (\d+)$/m.exec(metrics);
    expect(counted, 'the name_conflict counter').not.toBeNull();
    expect(Number(counted![1])).toBeGreaterThanOrEqual(Math.max(seen, 3));

    // The holder dies: the claimer takes the name on its next attempt, without a replacement.
    first.kill('SIGKILL');
    await second.waitForMsg('connected to relay', 15_000);
    expect((await runCall(relay.addr, ['--node', 'office-1', 'Arith.Multiply', '2', '3'])).stdout).toBe('6\n');
    expect(relay.proc.logs.filter((l) => l.msg === 'node name reconnected; replacing the previous connection')).toHaveLength(0);
  });

  it('lets the same process (same instance id) replace its old connection at once', async () => {
    const relay = await startRelay();
    const old = await rawNode(relay.addr, 'twin', 'instance-a');
    expect(old.closed).toBeUndefined();
    // At once: the old connection answers pings, so had the relay probed it (as it does for another
    // instance, next test) the newcomer would be refused 4006; it is welcomed on its first hello.
    const again = await rawNode(relay.addr, 'twin', 'instance-a');
    expect(again.closed).toBeUndefined();
    expect(again.received.some((m) => Array.isArray(m) && m[0] === 5)).toBe(true);
    expect((await old.waitClosed()).code).toBe(4000);
    const line = await relay.proc.waitForMsg('node name reconnected; replacing the previous connection');
    expect(line.sameProcess).toBe(true);
  });

  it('refuses another instance while the holder answers pings, and replaces a holder that does not', async () => {
    const relay = await startRelay();
    const holder = await rawNode(relay.addr, 'twin', 'instance-a');
    const other = await rawNode(relay.addr, 'twin', 'instance-b');
    expect(await other.waitClosed()).toMatchObject({ code: 4006, reason: expect.stringMatching(/^name twin is held by a live node from/) });
    // The holder stops reading (no pong): a half-open connection.
    holder.ws.pause();
    const third = await rawNode(relay.addr, 'twin', 'instance-c');
    expect(third.closed).toBeUndefined();
    await relay.proc.waitForMsg('node name held by a connection that does not answer; replacing it');
    holder.close();
  });

  it('exits 2 at start on an invalid --name instead of retrying forever', async () => {
    const p = new Proc(BIN.node, ['--relay', '127.0.0.1:1', '--name=bad!name']);
    const { code } = await p.exited;
    expect(code).toBe(2);
    expect(p.stderr).toMatch(/node name "bad!name" must be 1-128 characters/);
  });
});

/** Control characters in names (issue 19, item 3): refused on every door, never passed on. */

/** NUL, a C0 control, DEL and a C1 control (NEL), each inside a method name. */
const HOSTILE = ['Fwd.Safe\u0000Danger', 'Fwd.Safe\nDanger', 'Fwd.Safe\u007fDanger', 'Fwd.Safe\u0085Danger'];
const RULE = new RegExp(`^${CONTROL_RULE.replace(/[()]/g, '\\$&')}: .* has U\\+[0-9A-F]{4} at position \\d+$`);

describe('the control-character rule of bounds.ts', () => {
  it('refuses C0, DEL and C1 and takes everything else, in every kind of name', () => {
    for (const code of [0x00, 0x01, 0x0a, 0x1b, 0x1f, 0x7f, 0x80, 0x85, 0x9f]) {
      expect(controlProblem(`a${String.fromCharCode(code)}b`, 'name')).toMatch(RULE);
    }
    for (const ok of ['plain', 'tab-less', 'é ü ß', '\u00a0nbsp', '日本', '😀']) expect(controlProblem(ok, 'name')).toBeUndefined();
    expect(methodProblem('Fwd.Safe\u0000Danger')).toBe(`${CONTROL_RULE}: method "Fwd.Safe\\u0000Danger" has U+0000 at position 8`);
    expect(nodeNameProblem('office\u00851')).toMatch(RULE);
    expect(labelsProblem({ 're\u0007gion': 'eu' }, 'hello.labels')).toBe(`${CONTROL_RULE}: hello.labels: label key "re\\u0007gion" has U+0007 at position 2`);
    expect(labelsProblem({ region: 'eu\u001b[31m' }, 'metadata where')).toMatch(RULE);
  });

  it('refuses cluster messages from NATS that carry one', () => {
    const refused = (value: unknown[]) => {
      try {
        unpack(pack(value));
      } catch (err) {
        return err instanceof ClusterMessageError ? err.message : `not a ClusterMessageError: ${String(err)}`;
      }
      return 'accepted';
    };
    expect(refused([0, 1, 'office-1', 'Fwd.Safe\u0000Danger', null, {}])).toMatch(RULE);
    expect(refused([0, 1, 'office\u00001', 'Fwd.Safe', null, {}])).toMatch(RULE);
    expect(refused([6, 'session\u0000x', 'office-1'])).toContain(CONTROL_RULE);
    expect(refused([11, 'office\u007f1'])).toContain(CONTROL_RULE);
    const stamp = { name: 'relay-a', id: 'abc', started: 1, seq: 1 };
    expect(refused([20, stamp, 'leave', 'office\n1'])).toContain(CONTROL_RULE);
    expect(refused([20, { ...stamp, name: 'relay\u0000a' }, 'leave', 'office-1'])).toContain(CONTROL_RULE);
    const node = {
      name: 'office-1',
      instance: null,
      services: { Fwd: ['*'] },
      labels: { region: 'e\u0000u' },
      address: '127.0.0.1:1',
      connectedAt: 1,
      draining: false,
    };
    expect(refused([20, stamp, 'join', node])).toMatch(/labels/);
    expect(refused([0, 1, 'office-1', 'Fwd.Safe', null, {}])).toBe('accepted');
  });
});

describe('control characters in names on every door', () => {
  let server: Server;
  let relay: RunningRelay;
  let rpcPort: number;
  let direct: string;
  /** Every method name the forwarded server was asked for. */
  const reached: string[] = [];
  const sockets = new Set<Socket>();

  beforeAll(async () => {
    server = createServer((socket) => {
      sockets.add(socket);
      const framer = new MessagePackFramer(1 << 20);
      socket.on('data', (d: Buffer) => {
        for (const frame of framer.push(d)) {
          const [, id, method] = decode(frame) as [number, number, string];
          reached.push(method);
          socket.write(encode([1, id, null, method]));
        }
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const fwd = (server.address() as AddressInfo).port;
    relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0']);
    rpcPort = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
    const node = await startNode(relay.addr, [
      '--name',
      'office-1',
      '--forward',
      `Fwd=127.0.0.1:${fwd}`,
      '--forward-args',
      'any',
      '--direct-listen',
      '127.0.0.1:0',
    ]);
    direct = `127.0.0.1:${(await node.waitForMsg('direct listener ready')).port as number}`;
  });
  afterAll(async () => {
    await killAll();
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => server.close(resolve));
  });

  async function caller(url: string): Promise<RawPeer> {
    const peer = new RawPeer(url);
    await peer.open();
    peer.send([4, { version: 2, role: 'caller' }]);
    await peer.until(() => peer.received.some((m) => Array.isArray(m) && m[0] === 5), 5_000, 'welcome');
    return peer;
  }

  /** The error of response `id` on `peer`. */
  async function errorOf(peer: RawPeer, id: number): Promise<{ code: string; message: string }> {
    return (await peer.response(id))[2] as { code: string; message: string };
  }

  it('reaches the forwarded server with a clean name, so the path works', async () => {
    const peer = await caller(`ws://${relay.addr}/`);
    peer.send(req(1, 'Fwd.Safe', []));
    expect((await peer.response(1))[2]).toBeNull();
    peer.close();
    expect(reached).toContain('Fwd.Safe');
  });

  it('answers BAD_REQUEST naming the rule on a WebSocket call, a broadcast, a node name and a where', async () => {
    const peer = await caller(`ws://${relay.addr}/`);
    let id = 10;
    for (const method of HOSTILE) {
      peer.send(req(++id, method, []));
      expect(await errorOf(peer, id)).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(RULE) });
      peer.send(req(++id, method, [], { broadcast: true }));
      expect(await errorOf(peer, id)).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(RULE) });
    }
    peer.send(req(++id, 'Fwd.Safe', [], { node: 'office\u00001' }));
    expect(await errorOf(peer, id)).toMatchObject({ code: 'BAD_REQUEST', message: `${CONTROL_RULE}: metadata node "office\\u00001" has U+0000 at position 6` });
    peer.send(req(++id, 'Fwd.Safe', [], { where: { region: 'eu\u0000' } }));
    expect(await errorOf(peer, id)).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(RULE) });
    peer.close();
  });

  it('answers BAD_REQUEST on the HTTP gateway, whether the path or ?node= carries it', async () => {
    for (const method of HOSTILE) {
      const r = await http(`http://${relay.addr}/call/${encodeURIComponent(method)}`, { method: 'POST', body: '[]' });
      expect(r.status).toBe(400);
      expect(r.json).toMatchObject({ error: { code: 'BAD_REQUEST', message: expect.stringMatching(RULE) } });
    }
    const r = await http(`http://${relay.addr}/call/Fwd.Safe?node=office%0A1`, { method: 'POST', body: '[]' });
    expect(r.json).toMatchObject({ error: { code: 'BAD_REQUEST', message: expect.stringMatching(RULE) } });
  });

  it('answers BAD_REQUEST on the MessagePack-RPC port, also in a node/ prefix', async () => {
    const socket = connect(rpcPort, '127.0.0.1');
    const framer = new MessagePackFramer(1 << 20);
    const replies: unknown[][] = [];
    const requests = [...HOSTILE, 'office\u00001/Fwd.Safe'].map((m, i) => [0, i + 1, m, []]);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out with ${JSON.stringify(replies)}`)), 5_000);
      socket.on('data', (d: Buffer) => {
        for (const f of framer.push(d)) replies.push(decode(f) as unknown[]);
        if (replies.length === requests.length) {
          clearTimeout(timer);
          resolve();
        }
      });
      socket.write(Buffer.concat(requests.map((r) => encode(r))));
    });
    socket.destroy();
    for (const r of replies) expect(String(r[2])).toMatch(/^BAD_REQUEST: names may not contain control characters \(C0, DEL or C1\): /);
  });

  it('refuses a node hello whose labels carry one', async () => {
    const peer = new RawPeer(`ws://${relay.addr}/`);
    await peer.open();
    peer.send([4, { version: 2, role: 'node', name: 'labelled-1', services: { Twin: ['Who'] }, labels: { region: 'eu\u0000west' } }]);
    expect(await peer.waitClosed()).toMatchObject({
      code: 1008,
      reason: expect.stringMatching(/^names may not contain control characters \(C0, DEL or C1\): hello\.labels: label region "eu\\u0000west"/),
    });
  });

  it('refuses it on the node too, for a caller that reaches the node without the relay', async () => {
    const peer = await caller(`ws://${direct}/`);
    let id = 100;
    for (const method of HOSTILE) {
      peer.send(req(++id, method, []));
      expect(await errorOf(peer, id)).toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(RULE) });
    }
    peer.close();
  });

  it('never let one reach the forwarded server', () => {
    // eslint-disable-next-line no-control-regex
    expect(reached.filter((m) => /[\u0000-\u001f\u007f-\u009f]/.test(m))).toEqual([]);
  });
});

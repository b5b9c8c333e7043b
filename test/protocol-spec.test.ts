import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { connect } from '../src/index.js';
import { decode, decodeAll, encode } from '../src/wire/codec.js';
import { EXTENSION_RULE, WireFormatError } from '../src/wire/scan.js';
import { killAll, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';
import { RawPeer, req } from './helpers/raw.js';
import { Wakeups } from './helpers/wait.js';

/**
 * docs/PROTOCOL.md, pinned (issue 19, item E): what the relay, a node and the client do with input a
 * peer written from the document alone may send. Every case asserts the close code and reason, or
 * that a message was ignored: the connection stays open and answers the next call.
 */

const SLOW = 'test/fixtures/slow-services.js';
type Msg = unknown[];
const isMsg = (m: unknown, kind: number, id?: number): m is Msg => Array.isArray(m) && m[0] === kind && (id === undefined || m[1] === id);

/** A caller written by hand, welcomed. */
async function rawCaller(relay: RunningRelay): Promise<RawPeer> {
  const peer = new RawPeer(`ws://${relay.addr}/`);
  await peer.open();
  peer.send([4, { version: 2, role: 'caller' }]);
  await peer.until(() => peer.received.some((m) => isMsg(m, 5)), 5_000, 'welcome');
  return peer;
}

/** A node written by hand, welcomed; it answers nothing unless the test does. */
async function rawNode(relay: RunningRelay, name: string, services: Record<string, string[]>): Promise<RawPeer> {
  const peer = new RawPeer(`ws://${relay.addr}/`);
  await peer.open();
  peer.send([4, { version: 2, role: 'node', name, services }]);
  await peer.until(() => peer.received.some((m) => isMsg(m, 5)), 5_000, 'welcome');
  return peer;
}

/** A peer that sends `value` as its first message; resolves with how the relay closed it. */
async function firstMessage(relay: RunningRelay, value: unknown): Promise<{ peer: RawPeer; closed: { code: number; reason: string } }> {
  const peer = new RawPeer(`ws://${relay.addr}/`);
  await peer.open();
  if (value instanceof Uint8Array) peer.sendBytes(value);
  else if (typeof value === 'string') peer.ws.send(value);
  else peer.send(value);
  return { peer, closed: await peer.waitClosed() };
}

/** The relay's side of one connection from a real node, in a relay written by hand. */
class RelaySide {
  readonly received: unknown[] = [];
  closed: { code: number; reason: string } | undefined;
  private readonly wakeups = new Wakeups();

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      this.received.push(...decodeAll(data));
      this.wakeups.wake();
    });
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.wakeups.wake();
    });
  }

  send(value: unknown): void {
    this.ws.send(encode(value));
  }

  /** Several values in one WebSocket message. */
  sendTogether(values: unknown[]): void {
    this.ws.send(Buffer.concat(values.map((v) => encode(v))));
  }

  until(pred: () => boolean, what: string, timeout = 5_000): Promise<void> {
    return this.wakeups.until(pred, timeout, what, () => `received ${JSON.stringify(this.received.slice(-3))}, closed ${JSON.stringify(this.closed)}`);
  }

  async response(id: number): Promise<Msg> {
    const find = () => this.received.find((m) => isMsg(m, 1, id)) as Msg | undefined;
    await this.until(() => find() !== undefined || this.closed !== undefined, `response ${id}`);
    const r = find();
    if (!r) throw new Error(`closed before response ${id}: ${JSON.stringify(this.closed)}`);
    return r;
  }
}

/** A relay written by hand: welcomes every hello once, and lets the test speak for it. */
class HandRelay {
  readonly sides: RelaySide[] = [];
  private readonly wakeups = new Wakeups();

  private constructor(readonly wss: WebSocketServer) {
    wss.on('connection', (ws) => {
      const side = new RelaySide(ws);
      ws.once('message', (data: Buffer) => {
        const [kind, h] = decode(data) as [number, Record<string, unknown>];
        if (kind === 4) side.send([5, { version: 2, relay: 'hand-relay', name: h.name, session: 'hand-1', maxMessage: 16 * 1024 * 1024 }]);
        this.sides.push(side);
        this.wakeups.wake();
      });
    });
  }

  static async start(): Promise<HandRelay> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    await once(wss, 'listening');
    return new HandRelay(wss);
  }

  get addr(): string {
    return `127.0.0.1:${(this.wss.address() as AddressInfo).port}`;
  }

  /** The `n`th connection that said hello. */
  async side(n = 0): Promise<RelaySide> {
    await this.wakeups.until(
      () => this.sides.length > n,
      10_000,
      `connection ${n}`,
      () => `${this.sides.length} connections`,
    );
    return this.sides[n]!;
  }

  close(): void {
    for (const ws of this.wss.clients) ws.terminate();
    this.wss.close();
  }
}

/** What the relay puts in a request's metadata for a node. */
const META = { session: 'hand-1', address: '127.0.0.1:1', identity: null, timeout: 10_000 };

describe('the relay, against peers written from docs/PROTOCOL.md', () => {
  let relay: RunningRelay;
  let node: Proc;

  beforeAll(async () => {
    relay = await startRelay();
    node = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
  });
  afterAll(killAll);

  describe('hello and the first message', () => {
    const long = (n: number) => 'x'.repeat(n);
    const many = (n: number, f: (i: number) => [string, unknown]) => Object.fromEntries(Array.from({ length: n }, (_, i) => f(i)));
    const nodeHello = (extra: Record<string, unknown>) => [4, { version: 2, role: 'node', name: 'n-1', services: { A: ['b'] }, ...extra }];
    // field, problem, hello, close code, reason
    const cases: Array<[string, unknown, number, RegExp]> = [
      ['message: one element', [4], 1002, /^protocol error: a message is an array \[kind, \.\.\.\], got array\(1\)$/],
      ['message: not a map', [4, 'hi'], 1002, /^protocol error: hello is \[4, \{version, role, \.\.\.\}\]$/],
      ['message: three elements', [4, { version: 2, role: 'caller' }, 1], 1002, /^protocol error: hello is \[4/],
      ['version: a string', [4, { version: '2', role: 'caller' }], 1002, /^protocol error: hello\.version must be a number$/],
      ['version: unsupported', [4, { version: 3, role: 'caller' }], 4004, /^protocol version 3 is not supported; this relay speaks 1 and 2$/],
      ['role: unknown', [4, { version: 2, role: 'admin' }], 1002, /^protocol error: hello\.role must be "node" or "caller"$/],
      ['name: a number', nodeHello({ name: 5 }), 1002, /^protocol error: hello\.name must be a string$/],
      ['name: nil', nodeHello({ name: null }), 1002, /^protocol error: hello\.name must be a string$/],
      ['name: of a caller, a number', [4, { version: 2, role: 'caller', name: 5 }], 1002, /^protocol error: hello\.name must be a string$/],
      ['token: a number', [4, { version: 2, role: 'caller', token: 5 }], 1002, /^protocol error: hello\.token must be a string$/],
      ['instance: a number', nodeHello({ instance: 5 }), 1002, /^protocol error: hello\.instance must be a string$/],
      ['services: an array', nodeHello({ services: ['A'] }), 1002, /^protocol error: hello\.services must map service names to arrays of method names$/],
      ['services: methods not an array', nodeHello({ services: { A: 'b' } }), 1002, /^protocol error: hello\.services must map/],
      ['services: a method not a string', nodeHello({ services: { A: [1] } }), 1002, /^protocol error: hello\.services must map/],
      ['services: of a caller, not a map', [4, { version: 2, role: 'caller', services: 5 }], 1002, /^protocol error: hello\.services must map/],
      ['labels: a value not a string', nodeHello({ labels: { a: 1 } }), 1002, /^protocol error: hello\.labels must map strings to strings$/],
      [
        'name: missing',
        [4, { version: 2, role: 'node', services: { A: ['b'] } }],
        1008,
        /^node name "" must be 1-128 characters: letters, digits, _ \. - \(starting with a letter or digit\)$/,
      ],
      ['name: a space', nodeHello({ name: 'bad name' }), 1008, /^node name "bad name" must be 1-128 characters/],
      ['name: 129 characters', nodeHello({ name: long(129) }), 1008, /^node name "x{40}\.\.\." must be 1-128 characters/],
      [
        'name: a control character',
        nodeHello({ name: 'a\u0000b' }),
        1008,
        /^names may not contain control characters \(C0, DEL or C1\): node name "a\\u0000b" has U\+0000 at position 1$/,
      ],
      ['instance: empty', nodeHello({ instance: '' }), 1008, /^hello\.instance must be 1-64 characters; this one has 0$/],
      ['instance: 65 characters', nodeHello({ instance: long(65) }), 1008, /^hello\.instance must be 1-64 characters; this one has 65$/],
      ['services: missing', [4, { version: 2, role: 'node', name: 'n-1' }], 1008, /^a node must announce at least one service$/],
      ['services: empty', nodeHello({ services: {} }), 1008, /^a node must announce at least one service$/],
      [
        'services: 257',
        nodeHello({ services: many(257, (i) => [`S${i}`, ['m']]) }),
        1008,
        /^a node may announce at most 256 services; this one announced 257$/,
      ],
      [
        'services: a bad name',
        nodeHello({ services: { '9a': ['m'] } }),
        1008,
        /^service name "9a" must be 1-128 characters: a letter or _ first, then letters, digits, _ \. -$/,
      ],
      [
        'services: 1025 methods',
        nodeHello({ services: { A: Array.from({ length: 1025 }, (_, i) => `m${i}`) } }),
        1008,
        /^service A announces 1025 methods; at most 1024$/,
      ],
      [
        'services: a bad method name',
        nodeHello({ services: { A: ['a-b'] } }),
        1008,
        /^method name "a-b" of service A must be an identifier of at most 128 characters$/,
      ],
      [
        'services: Relay',
        nodeHello({ services: { Relay: ['List'] } }),
        1008,
        /^service name Relay is reserved for the relay's own presence service; rename it$/,
      ],
      ['labels: 65', nodeHello({ labels: many(65, (i) => [`k${i}`, 'v']) }), 1008, /^hello\.labels has 65 labels; at most 64$/],
      ['labels: an empty key', nodeHello({ labels: { '': 'v' } }), 1008, /^hello\.labels: label keys are 1-64 characters$/],
      ['labels: a value of 257 characters', nodeHello({ labels: { k: long(257) } }), 1008, /^hello\.labels: label k is 257 characters; at most 256$/],
      ['hello: over 64 KiB', nodeHello({ labels: { k: long(70_000) } }), 1009, /^the hello is \d+ bytes; at most 65536$/],
    ];

    it.each(cases)('%s: closed as the table in PROTOCOL.md says', async (_what, hello, code, reason) => {
      const { peer, closed } = await firstMessage(relay, hello);
      expect(closed.code).toBe(code);
      expect(closed.reason).toMatch(reason);
      expect(peer.received.filter((m) => isMsg(m, 5))).toEqual([]);
    });

    it('ignores what a caller hello does not use, and takes a service with no methods', async () => {
      const caller = new RawPeer(`ws://${relay.addr}/`);
      await caller.open();
      caller.send([4, { version: 2, role: 'caller', instance: '', services: { A: ['b'] }, labels: { a: 'b' }, extra: [1] }]);
      await caller.until(() => caller.received.some((m) => isMsg(m, 5)), 5_000, 'welcome');
      const empty = await rawNode(relay, 'empty-1', { Empty: [] });
      caller.send(req(1, 'Empty.Anything', [], { node: 'empty-1' }));
      const [, , error] = await caller.response(1);
      expect(error).toMatchObject({ code: 'NO_METHOD' });
      empty.close();
      caller.close();
    });

    it('closes 1002 for a first message that is not a hello, even a malformed request or an acknowledgement, and answers none', async () => {
      for (const first of [req(1, 'Slow.Echo', ['x']), [10, 1, 0], [10, 0], [8, 1, true, new Uint8Array(1)], [3, 1]]) {
        const { closed } = await firstMessage(relay, first);
        expect(closed).toEqual({ code: 1002, reason: 'the first message must be a hello [4, {version, role}]' });
      }
      const malformed = await firstMessage(relay, [0, 1, 'Slow.Echo', 'not bin']);
      expect(malformed.closed).toEqual({ code: 1002, reason: 'protocol error: request params must be bin (MessagePack-encoded array), got string' });
      expect(malformed.peer.received).toEqual([]);
      const unknown = await firstMessage(relay, [11, 1]);
      expect(unknown.closed).toEqual({ code: 1002, reason: 'protocol error: unknown message kind 11' });
    });

    it('closes 1003 for a text frame, first or later', async () => {
      const { closed } = await firstMessage(relay, '[4, {"version": 2, "role": "caller"}]');
      expect(closed).toEqual({ code: 1003, reason: 'text frames are not accepted: send binary MessagePack' });
      const caller = await rawCaller(relay);
      caller.ws.send('hello');
      expect(await caller.waitClosed()).toEqual({ code: 1003, reason: 'text frames are not accepted: send binary MessagePack' });
    });

    it('closes 1007 for a refused extension, naming every extension it accepts', async () => {
      // fixext 1 of type 5 inside a hello.
      const { closed } = await firstMessage(relay, Uint8Array.from([0x92, 0x04, 0xd4, 0x05, 0x00]));
      expect(closed.code).toBe(1007);
      expect(closed.reason).toBe(`invalid MessagePack: ${EXTENSION_RULE}; got type 5 in fixext 1`);
    });
  });

  describe('messages a role does not expect', () => {
    it('closes 1002 for an undefined kind from a welcomed caller or node', async () => {
      for (const kind of [11, -1, 255]) {
        const caller = await rawCaller(relay);
        caller.send([kind, 1]);
        expect(await caller.waitClosed()).toEqual({ code: 1002, reason: `protocol error: unknown message kind ${kind}` });
      }
      const n = await rawNode(relay, 'kinds-1', { K: ['m'] });
      n.send([12, 'x']);
      expect(await n.waitClosed()).toEqual({ code: 1002, reason: 'protocol error: unknown message kind 12' });
      // A kind the relay would ignore is still checked against its shape first.
      const caller = await rawCaller(relay);
      caller.send([1, 1, 'not an error', null]);
      expect(await caller.waitClosed()).toEqual({ code: 1002, reason: 'protocol error: response error must be nil or {code, message, data?}' });
    });

    it('ignores, from a caller, every defined kind but requests, chunks, cancels and acknowledgements, a second hello included', async () => {
      const caller = await rawCaller(relay);
      caller.send([1, 5, null, encode(1)]);
      caller.send([2, 'Relay.presence', encode([])]);
      caller.send([4, { version: 2, role: 'node', name: 'sneaky-1', services: { Sneak: ['y'] } }]);
      caller.send([5, { version: 2, relay: 'me' }]);
      caller.send([6, 'some-session']);
      caller.send([7, 'going']);
      caller.send([9, 5, 10]);
      caller.send(req(1, 'Slow.Echo', ['still here']));
      expect(await caller.response(1)).toEqual([1, 1, null, encode('still here')]);
      expect(caller.received.map((m) => (m as Msg)[0])).toEqual([5, 1]);
      // The second hello did not make it a node.
      caller.send(req(2, 'Relay.List', []));
      const list = decode((await caller.response(2))[3] as Uint8Array) as Array<{ name: string }>;
      expect(list.map((n) => n.name)).not.toContain('sneaky-1');
      caller.close();
    });

    it('answers a request from a node BAD_REQUEST and ignores its other kinds, a second hello included', async () => {
      const n = await rawNode(relay, 'odd-1', { Odd: ['Ping'] });
      let next = 0;
      n.ws.on('message', () => {
        for (; next < n.received.length; next++) {
          const m = n.received[next];
          if (isMsg(m, 0) && m[2] === 'Odd.Ping') n.send([1, m[1], null, encode('pong')]);
        }
      });
      n.send([0, 3, 'Slow.Echo', encode(['x'])]);
      expect(await n.response(3)).toEqual([1, 3, { code: 'BAD_REQUEST', message: 'nodes serve calls; they cannot make them on this connection' }, null]);
      n.send([2, 'X.y', encode([])]);
      n.send([3, 1]);
      n.send([4, { version: 2, role: 'node', name: 'odd-1', services: { Other: ['Thing'] } }]);
      n.send([5, { version: 2, relay: 'me' }]);
      n.send([6, 'some-session']);
      const caller = await rawCaller(relay);
      caller.send(req(1, 'Odd.Ping', []));
      expect(await caller.response(1)).toEqual([1, 1, null, encode('pong')]);
      caller.send(req(2, 'Relay.List', []));
      const list = decode((await caller.response(2))[3] as Uint8Array) as Array<{ name: string; services: object }>;
      expect(list.find((x) => x.name === 'odd-1')?.services).toEqual({ Odd: ['Ping'] });
      expect(n.closed).toBeUndefined();
      n.close();
      caller.close();
    });
  });

  describe('request ids', () => {
    it('answers a duplicate id BAD_REQUEST and lets the original call run to its own answer', async () => {
      const caller = await rawCaller(relay);
      const from = node.logs.length;
      caller.send(req(1, 'Slow.Sleep', [1_500]));
      await node.waitForLog((l) => l.msg === 'test handler started' && l.ms === 1_500, 5_000, 'handler start', from);
      caller.send(req(1, 'Slow.Echo', ['dup']));
      expect(await caller.response(1)).toEqual([1, 1, { code: 'BAD_REQUEST', message: 'request id 1 is already in flight on this connection' }, null]);
      await caller.until(() => caller.received.filter((m) => isMsg(m, 1, 1)).length === 2, 10_000, 'the original answer');
      expect(caller.received.filter((m) => isMsg(m, 1, 1))[1]).toEqual([1, 1, null, encode(1_500)]);
      caller.close();
    });
  });

  describe('the node map', () => {
    it('lists services and methods sorted in Relay.List and /nodes, whatever the hello order', async () => {
      const n = await rawNode(relay, 'order-1', { Zeta: ['b', 'a'], Alpha: ['y', 'x'], Mid: ['m'] });
      const caller = await rawCaller(relay);
      caller.send(req(1, 'Relay.List', []));
      const list = decode((await caller.response(1))[3] as Uint8Array) as Array<{ name: string; services: Record<string, string[]> }>;
      const mine = list.find((x) => x.name === 'order-1')!;
      expect(Object.keys(mine.services)).toEqual(['Alpha', 'Mid', 'Zeta']);
      expect(mine.services).toEqual({ Alpha: ['x', 'y'], Mid: ['m'], Zeta: ['a', 'b'] });
      const text = await (await fetch(`http://${relay.addr}/nodes`)).text();
      const json = (JSON.parse(text) as Array<{ name: string; services: Record<string, string[]> }>).find((x) => x.name === 'order-1')!;
      expect(Object.keys(json.services)).toEqual(['Alpha', 'Mid', 'Zeta']);
      expect(json.services.Zeta).toEqual(['a', 'b']);
      n.close();
      caller.close();
    });
  });

  describe('chunks', () => {
    it('takes chunks coalesced with other messages in one WebSocket message, both ways', async () => {
      const caller = await rawCaller(relay);
      const params = encode(['coalesced']);
      caller.sendBytes(
        Buffer.concat([
          encode([0, 1, 'Slow.Echo', null, { stream: params.length }]),
          encode([8, 1, false, params.subarray(0, 4)]),
          encode([8, 1, true, params.subarray(4)]),
          encode(req(2, 'Slow.Echo', ['after'])),
        ]),
      );
      expect(await caller.response(1)).toEqual([1, 1, null, encode('coalesced')]);
      expect(await caller.response(2)).toEqual([1, 2, null, encode('after')]);
      // A node's result stream in one message, head and chunks together.
      const n = await rawNode(relay, 'together-1', { Together: ['Get'] });
      const result = encode('all in one');
      let answered = false;
      n.ws.on('message', () => {
        const head = n.received.find((m) => isMsg(m, 0)) as Msg | undefined;
        if (!head || answered) return;
        answered = true;
        const t = head[1] as number;
        n.sendBytes(Buffer.concat([encode([9, t, result.length]), encode([8, t, false, result.subarray(0, 3)]), encode([8, t, true, result.subarray(3)])]));
      });
      const client = await connect(relay.addr);
      expect(await client.call('Together.Get', [])).toBe('all in one');
      await client.close();
      n.close();
      caller.close();
    });

    it('acknowledges chunks for ids not in flight, from a caller and from a node', async () => {
      const caller = await rawCaller(relay);
      caller.send([8, 77, false, new Uint8Array(100)]);
      caller.send([8, 78, true, new Uint8Array(5)]);
      await caller.until(() => caller.received.some((m) => isMsg(m, 10, 78)), 5_000, 'acknowledgements');
      expect(caller.received.filter((m) => isMsg(m, 10))).toEqual([
        [10, 77, 100],
        [10, 78, 5],
      ]);
      const n = await rawNode(relay, 'stray-1', { Stray: ['m'] });
      n.send([8, 55, true, new Uint8Array(50)]);
      await n.until(() => n.received.some((m) => isMsg(m, 10, 55)), 5_000, 'acknowledgement');
      expect(n.received.find((m) => isMsg(m, 10, 55))).toEqual([10, 55, 50]);
      caller.send(req(1, 'Slow.Echo', ['open']));
      expect(await caller.response(1)).toEqual([1, 1, null, encode('open')]);
      expect(n.closed).toBeUndefined();
      // A streamed call to Relay is answered at once, its params missing; its chunks come for an id no longer in flight.
      caller.send([0, 2, 'Relay.List', null, { stream: 10 }]);
      caller.send([8, 2, true, new Uint8Array(10)]);
      await caller.until(() => caller.received.some((m) => isMsg(m, 10, 2)), 5_000, 'acknowledgement');
      expect((await caller.response(2))[2]).toEqual({ code: 'BAD_REQUEST', message: expect.stringMatching(/^params are not valid MessagePack: /) });
      expect(caller.received.find((m) => isMsg(m, 10, 2))).toEqual([10, 2, 10]);
      n.close();
      caller.close();
    });

    it('fails params whose chunks do not add up BAD_REQUEST and cancels the node call, passing the bad chunk on to no one', async () => {
      const n = await rawNode(relay, 'blob-1', { Blob: ['Put'] });
      const caller = await rawCaller(relay);
      for (const [id, last] of [
        [1, 10],
        [2, 70],
      ] as const) {
        caller.send([0, id, 'Blob.Put', null, { stream: 100 }]);
        caller.send([8, id, false, new Uint8Array(40)]);
        caller.send([8, id, true, new Uint8Array(last)]);
        expect(await caller.response(id)).toEqual([
          1,
          id,
          { code: 'BAD_REQUEST', message: 'the chunks of Blob.Put do not add up to the announced stream length' },
          null,
        ]);
      }
      await n.until(() => n.received.filter((m) => isMsg(m, 3)).length === 2, 5_000, 'two cancels');
      const heads = n.received.filter((m) => isMsg(m, 0)) as Msg[];
      const tunnelIds = heads.map((h) => h[1]);
      expect(n.received.filter((m) => isMsg(m, 3)).map((m) => (m as Msg)[1])).toEqual(tunnelIds);
      // Only each first chunk of 40 bytes reached the node; the bad final ones did not.
      expect(n.received.filter((m) => isMsg(m, 8)).map((m) => [(m as Msg)[2], ((m as Msg)[3] as Uint8Array).length])).toEqual([
        [false, 40],
        [false, 40],
      ]);
      n.close();
      caller.close();
    });

    it('passes a short result stream on to a WebSocket caller, which checks it; a broadcast, which it reassembles, fails it', async () => {
      const n = await rawNode(relay, 'short-1', { Short: ['Get'] });
      let answered = 0;
      n.ws.on('message', () => {
        const heads = n.received.filter((m) => isMsg(m, 0)) as Msg[];
        for (const head of heads.slice(answered)) {
          n.send([9, head[1], 100]);
          n.send([8, head[1], true, new Uint8Array(10)]);
        }
        answered = heads.length;
      });
      const caller = await rawCaller(relay);
      caller.send(req(1, 'Short.Get', []));
      await caller.until(() => caller.received.some((m) => isMsg(m, 8, 1)), 5_000, 'the chunk');
      expect(caller.received.filter((m) => isMsg(m, 9, 1) || isMsg(m, 8, 1))).toEqual([
        [9, 1, 100],
        [8, 1, true, Buffer.alloc(10)],
      ]);
      const client = await connect(relay.addr);
      await expect(client.call('Short.Get', [])).rejects.toMatchObject({
        code: 'BAD_REQUEST',
        message: expect.stringMatching(/^chunks of call \d+ add up to 10 bytes, announced 100$/),
      });
      await client.close();
      caller.send(req(2, 'Short.Get', [], { broadcast: true }));
      const entries = decode((await caller.response(2))[3] as Uint8Array) as Array<{ node: string; error: unknown }>;
      expect(entries).toEqual([
        {
          node: 'short-1',
          ms: expect.any(Number),
          error: { code: 'BAD_REQUEST', message: 'chunks of call 0 add up to 10 bytes, announced 100' },
          result: null,
        },
      ]);
      n.close();
      caller.close();
    });
  });
});

describe('a node, against a relay written from docs/PROTOCOL.md', () => {
  let hand: HandRelay;
  let node: Proc;
  let relaySide: RelaySide;

  beforeAll(async () => {
    hand = await HandRelay.start();
    node = await startNode(hand.addr, ['--name', 'n-1', '--services', SLOW, '--reconnect-base', '50ms', '--reconnect-cap', '200ms']);
    relaySide = await hand.side(0);
  });
  afterAll(async () => {
    await killAll();
    hand.close();
  });

  it('ignores every kind a relay does not send it, a second welcome included', async () => {
    relaySide.send([1, 9, null, encode(1)]);
    relaySide.send([2, 'Relay.presence', encode([])]);
    relaySide.send([4, { version: 2, role: 'caller' }]);
    // Were it taken, this welcome's maxMessage would make the next answer TOO_LARGE.
    relaySide.send([5, { version: 2, relay: 'second', name: 'n-1', maxMessage: 4 }]);
    relaySide.send([9, 9, 10]);
    relaySide.send([0, 1, 'Slow.Echo', encode(['longer than four bytes']), META]);
    expect(await relaySide.response(1)).toEqual([1, 1, null, encode('longer than four bytes')]);
    expect(node.logs.filter((l) => l.msg === 'connected to relay')).toHaveLength(1);
  });

  it('at its own copy of the deadline aborts the handler and sends nothing: the relay answers', async () => {
    const from = node.logs.length;
    relaySide.send([0, 2, 'Slow.Sleep', encode([60_000]), { ...META, timeout: 200 }]);
    await node.waitForLog((l) => l.msg === 'test handler aborted' && l.reason === 'TIMEOUT', 5_000, 'the handler aborted at the deadline', from);
    relaySide.send([0, 3, 'Slow.Echo', encode(['next']), META]);
    expect(await relaySide.response(3)).toEqual([1, 3, null, encode('next')]);
    expect(relaySide.received.filter((m) => Array.isArray(m) && m[1] === 2)).toEqual([]);
  });

  it('answers a duplicate id BAD_REQUEST and keeps the original, running or still receiving its params', async () => {
    const from = node.logs.length;
    relaySide.send([0, 4, 'Slow.Sleep', encode([1_000]), META]);
    await node.waitForLog((l) => l.msg === 'test handler started' && l.ms === 1_000, 5_000, 'handler start', from);
    relaySide.send([0, 4, 'Slow.Echo', encode(['dup']), META]);
    expect(await relaySide.response(4)).toEqual([1, 4, { code: 'BAD_REQUEST', message: 'request id 4 is already running' }, null]);
    await relaySide.until(() => relaySide.received.filter((m) => isMsg(m, 1, 4)).length === 2, 'the original answer', 10_000);
    expect(relaySide.received.filter((m) => isMsg(m, 1, 4))[1]).toEqual([1, 4, null, encode(1_000)]);

    const params = encode(['the original upload']);
    relaySide.send([0, 5, 'Slow.Echo', null, { ...META, stream: params.length }]);
    relaySide.send([8, 5, false, params.subarray(0, 5)]);
    relaySide.send([0, 5, 'Slow.Echo', null, { ...META, stream: 3 }]);
    expect(await relaySide.response(5)).toEqual([1, 5, { code: 'BAD_REQUEST', message: 'request id 5 is already receiving its params' }, null]);
    relaySide.send([8, 5, true, params.subarray(5)]);
    await relaySide.until(() => relaySide.received.filter((m) => isMsg(m, 1, 5)).length === 2, 'the original answer');
    expect(relaySide.received.filter((m) => isMsg(m, 1, 5))[1]).toEqual([1, 5, null, encode('the original upload')]);
  });

  it('takes a head and its chunks coalesced in one WebSocket message', async () => {
    const params = encode(['in one message']);
    relaySide.sendTogether([
      [0, 6, 'Slow.Echo', null, { ...META, stream: params.length }],
      [8, 6, false, params.subarray(0, 2)],
      [8, 6, true, params.subarray(2)],
    ]);
    expect(await relaySide.response(6)).toEqual([1, 6, null, encode('in one message')]);
  });

  it('acknowledges chunks for ids not in flight', async () => {
    relaySide.send([8, 99, false, new Uint8Array(10)]);
    relaySide.send([8, 98, true, new Uint8Array(3)]);
    await relaySide.until(() => relaySide.received.some((m) => isMsg(m, 10, 98)), 'acknowledgements');
    expect(relaySide.received.filter((m) => isMsg(m, 10, 99) || isMsg(m, 10, 98))).toEqual([
      [10, 99, 10],
      [10, 98, 3],
    ]);
  });

  it('fails params whose chunks do not add up BAD_REQUEST, the connection open', async () => {
    relaySide.send([0, 7, 'Slow.Echo', null, { ...META, stream: 100 }]);
    relaySide.send([8, 7, true, new Uint8Array(10)]);
    expect(await relaySide.response(7)).toEqual([1, 7, { code: 'BAD_REQUEST', message: 'chunks of call 7 add up to 10 bytes, announced 100' }, null]);
    relaySide.send([0, 8, 'Slow.Echo', null, { ...META, stream: 5 }]);
    relaySide.send([8, 8, false, new Uint8Array(10)]);
    expect(await relaySide.response(8)).toEqual([1, 8, { code: 'BAD_REQUEST', message: 'chunks of call 8 add up to 10 bytes, announced 5' }, null]);
    relaySide.send([0, 9, 'Slow.Echo', encode(['open']), META]);
    expect(await relaySide.response(9)).toEqual([1, 9, null, encode('open')]);
  });

  it('closes 1002 for an undefined kind, and 1003 for a text frame', async () => {
    relaySide.send([11, 1]);
    await relaySide.until(() => relaySide.closed !== undefined, 'close');
    expect(relaySide.closed).toEqual({ code: 1002, reason: 'protocol error: unknown message kind 11' });
    const again = await hand.side(1);
    again.ws.send('text');
    await again.until(() => again.closed !== undefined, 'close');
    expect(again.closed).toEqual({ code: 1003, reason: 'text frames are not accepted: send binary MessagePack' });
  });
});

describe('the client and a direct port, against peers written from docs/PROTOCOL.md', () => {
  afterEach(killAll);

  it('the client ignores every kind a relay does not send a caller, a second welcome included', async () => {
    const hand = await HandRelay.start();
    try {
      const calling = connect(hand.addr);
      const side = await hand.side(0);
      const client = await calling;
      side.send([0, 1, 'X.y', encode([])]);
      side.send([3, 1]);
      side.send([4, { version: 2, role: 'caller' }]);
      side.send([5, { version: 2, relay: 'second', session: 'other' }]);
      side.send([6, 'hand-1']);
      let answered = false;
      side.ws.on('message', () => {
        const r = side.received.find((m) => isMsg(m, 0) && m[2] === 'Slow.Echo') as Msg | undefined;
        if (r && !answered) {
          answered = true;
          side.send([1, r[1], null, encode('answered')]);
        }
      });
      expect(await client.call('Slow.Echo', ['q'])).toBe('answered');
      expect(client.session).toBe('hand-1');
      // It sent nothing in answer to any of them: its hello, then its call.
      expect(side.received.map((m) => (m as Msg)[0])).toEqual([4, 0]);
      await client.close();
    } finally {
      hand.close();
    }
  });

  it('a direct port answers only the first hello and lists its services and methods sorted', async () => {
    const relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'direct-1', '--services', SLOW, '--direct-listen', '127.0.0.1:0']);
    const port = (await node.waitForMsg('direct listener ready')).port as number;
    const peer = new RawPeer(`ws://127.0.0.1:${port}/`);
    await peer.open();
    peer.send([4, { version: 2, role: 'caller' }]);
    peer.send([4, { version: 1, role: 'caller' }]);
    peer.send(req(1, 'Relay.List', []));
    const [self] = decode((await peer.response(1))[3] as Uint8Array) as Array<{ services: Record<string, string[]> }>;
    expect(peer.received.filter((m) => isMsg(m, 5))).toHaveLength(1);
    expect(self!.services).toEqual({ Slow: ['Echo', 'Hold', 'Sleep', 'Where'] });
    expect(self!.services.Slow).toEqual([...self!.services.Slow!].sort());
    peer.close();
  });
});

describe('extension types (unit)', () => {
  const refused: Array<[string, number[], string]> = [
    ['fixext 1 of type 5', [0xd4, 0x05, 0x00], 'type 5 in fixext 1'],
    ['fixext 1 of type -2', [0xd4, 0xfe, 0x00], 'type -2 in fixext 1'],
    ['fixext 2 of type -1', [0xd5, 0xff, 0x00, 0x00], 'type -1 in fixext 2'],
    ['fixext 4 of type 0', [0xd6, 0x00, 0, 0, 0, 0], 'type 0 in fixext 4'],
    ['fixext 8 of type 1', [0xd7, 0x01, 0, 0, 0, 0, 0, 0, 0, 0], 'type 1 in fixext 8'],
    ['fixext 16 of type 0', [0xd8, 0x00, ...new Array(16).fill(0)], 'type 0 in fixext 16'],
    ['ext 8 of type -1 and 5 bytes', [0xc7, 0x05, 0xff, 0, 0, 0, 0, 0], 'type -1 in ext 8 of 5'],
    ['ext 8 of type 0 and 12 bytes', [0xc7, 0x0c, 0x00, ...new Array(12).fill(0)], 'type 0 in ext 8 of 12'],
    ['ext 16 of type 3', [0xc8, 0x00, 0x01, 0x03, 0x00], 'type 3 in ext 16'],
    ['ext 32 of type 0x72 (msgpackr records)', [0xc9, 0, 0, 0, 1, 0x72, 0x00], 'type 114 in ext 32'],
  ];

  it.each(refused)('refuses %s, stating the whole rule', (_what, bytes, got) => {
    let caught: unknown;
    try {
      decode(Uint8Array.from(bytes));
    } catch (err) {
      caught = err;
    }
    expect(caught).toBeInstanceOf(WireFormatError);
    expect((caught as Error).message).toBe(`extensions accepted: -1 in fixext 1/4/8 or ext 8 of 12 bytes, 0 in fixext 1; got ${got}`);
  });

  it('accepts exactly those: timestamps 32, 64 and 96, an invalid Date, and undefined', () => {
    const when = [new Date(0), new Date(1_700_000_000_123), new Date(-1), new Date(2 ** 40)];
    expect(decode(encode(when))).toEqual(when);
    expect(decode(Uint8Array.from([0xd6, 0xff, 0, 0, 0, 1]))).toEqual(new Date(1_000));
    expect(decode(Uint8Array.from([0xd4, 0x00, 0x00]))).toBeUndefined();
    expect(Number.isNaN((decode(encode(new Date(Number.NaN))) as Date).getTime())).toBe(true);
    // The rule fits a close reason (123 bytes) after "invalid MessagePack: ".
    expect(Buffer.byteLength(`invalid MessagePack: ${EXTENSION_RULE}`)).toBeLessThanOrEqual(123);
  });
});

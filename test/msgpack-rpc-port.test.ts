import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { buildGo, CI, GO_PACKAGES, goMissing, PYTHON, pythonMsgpackMissing, runJsonLines, skipNote, killForeign, type GoPrograms } from './helpers/foreign.js';
import { killAll, startNode, startRelay, type RunningRelay } from './helpers/processes.js';

const SLOW = fileURLToPath(new URL('./fixtures/slow-services.js', import.meta.url));
const PIPELINE = fileURLToPath(new URL('./python/pipeline_client.py', import.meta.url));

let relay: RunningRelay;
let rpcPort: number;

beforeAll(async () => {
  relay = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0']);
  rpcPort = (await relay.proc.waitForMsg('msgpack-rpc port listening')).port as number;
  await startNode(relay.addr, ['--name', 'office-1']);
  await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
});
afterAll(async () => {
  await killForeign();
  await killAll();
});

/** A raw connection to the port that collects decoded replies until it has `want` or the relay closes it. */
async function exchange(chunks: Buffer[], want: number, timeout = 5_000): Promise<{ replies: unknown[]; closed: boolean; socket: Socket }> {
  const socket = connect(rpcPort, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const framer = new MessagePackFramer(1 << 20);
  const replies: unknown[] = [];
  const done = new Promise<boolean>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`timed out after ${timeout} ms with ${replies.length} of ${want} replies: ${JSON.stringify(replies)}`)),
      timeout,
    );
    socket.on('data', (d: Buffer) => {
      for (const f of framer.push(d)) replies.push(decode(f));
      if (replies.length >= want) {
        clearTimeout(timer);
        resolve(false);
      }
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
    socket.on('error', () => undefined);
  });
  for (const chunk of chunks) {
    await new Promise<void>((resolve) => socket.write(chunk, () => resolve()));
    await new Promise((r) => setImmediate(r));
  }
  const closed = await done;
  return { replies, closed, socket };
}

const req = (msgid: number, method: string, params: unknown[]) => encode([0, msgid, method, params]);

describe('the MessagePack-RPC port with a raw socket', () => {
  it('answers a request split into single bytes, echoing the msgid', async () => {
    const bytes = req(0xffffffff, 'Arith.Multiply', [6, 7]);
    const { replies, socket } = await exchange(
      [...bytes].map((b) => Buffer.from([b])),
      1,
    );
    socket.destroy();
    expect(replies).toEqual([[1, 0xffffffff, null, 42]]);
  });

  it('echoes msgids of every width, however the caller encoded them, and passes params and results as they are', async () => {
    const asFloat = Buffer.concat([Buffer.from([0x94, 0x00, 0xcb]), Buffer.from(new Float64Array([300]).buffer).reverse(), encode('Slow.Echo'), encode([3])]);
    const value = { text: 'héllo', list: [1, -2, 3.25, null, true], big: 2 ** 40, bytes: Buffer.from([1, 2, 3]) };
    const { replies, socket } = await exchange(
      [req(0, 'Slow.Echo', [0]), req(200, 'Slow.Echo', [200]), req(65_535, 'Slow.Echo', [value]), req(65_536, 'Arith.Multiply', [2, 3]), asFloat],
      5,
    );
    socket.destroy();
    expect(new Map(replies.map((r) => [(r as unknown[])[1], r]))).toEqual(
      new Map([
        [0, [1, 0, null, 0]],
        [200, [1, 200, null, 200]],
        [65_535, [1, 65_535, null, value]],
        [65_536, [1, 65_536, null, 6]],
        [300, [1, 300, null, 3]],
      ]),
    );
  });

  it('replies BAD_REQUEST to requests of the wrong length or shape and keeps the connection', async () => {
    const { replies, closed, socket } = await exchange(
      [
        encode([0, 5, 'Server.Ping']),
        encode([0, 6, 'Server.Ping', [], 'extra']),
        encode([0, 7, 'Arith.Multiply', 5]),
        encode([0, 8, '', []]),
        encode([0, 9, 'NoDot', []]),
        req(10, 'Server.Ping', []),
      ],
      6,
    );
    socket.destroy();
    expect(closed).toBe(false);
    expect(replies).toEqual([
      [1, 5, 'BAD_REQUEST: a request is [0, msgid, method, params]; this one has 3 elements', null],
      [1, 6, 'BAD_REQUEST: a request is [0, msgid, method, params]; this one has 5 elements', null],
      [1, 7, 'BAD_REQUEST: params must be an array', null],
      [1, 8, 'BAD_REQUEST: method must be a non-empty string', null],
      [1, 9, 'BAD_REQUEST: method "NoDot" must be Service.Method', null],
      [1, 10, null, 'pong'],
    ]);
  });

  it.each([
    ['a 3-element response where a request is due', encode([1, 7, null]), 'takes no responses'],
    ['a huge declared length', Buffer.from([0x94, 0x00, 0x01, 0xdb, 0xff, 0xff, 0xff, 0xff]), 'exceeds the limit'],
    ['an array declaring 4 billion items', Buffer.from([0xdd, 0xff, 0xff, 0xff, 0xff]), 'exceeds the limit'],
    ['the byte MessagePack never uses', Buffer.from([0xc1]), 'invalid MessagePack'],
    ['a value that is not an array', encode('hello'), 'each message must be'],
    ['a msgid that is not an integer', encode([0, 'x', 'Server.Ping', []]), 'msgid must be an integer'],
    ['deep nesting', Buffer.alloc(100_000, 0x91), 'nested deeper'],
    ['an unknown message type', encode([9, 1, 2, 3]), 'unknown message type 9'],
  ])('closes the connection on %s and keeps serving others', async (_what, bytes, reason) => {
    const from = relay.proc.logs.length;
    const { closed, replies } = await exchange([bytes], Infinity);
    expect(closed).toBe(true);
    expect(replies).toEqual([]);
    const line = await relay.proc.waitForMsg('closing msgpack-rpc connection after bad input', 5_000, from);
    expect(line.reason).toContain(reason);
    const ok = await exchange([req(1, 'Server.Ping', [])], 1);
    ok.socket.destroy();
    expect(ok.replies).toEqual([[1, 1, null, 'pong']]);
  });

  it('survives a truncated value followed by the caller hanging up', async () => {
    const from = relay.proc.logs.length;
    const socket = connect(rpcPort, '127.0.0.1');
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    await new Promise<void>((resolve) => socket.write(req(3, 'Slow.Echo', ['x'.repeat(1000)]).subarray(0, 500), () => resolve()));
    socket.destroy();
    await relay.proc.waitForMsg('msgpack-rpc caller disconnected', 5_000, from);
    const ok = await exchange([req(4, 'Slow.Echo', ['y'])], 1);
    ok.socket.destroy();
    expect(ok.replies).toEqual([[1, 4, null, 'y']]);
    expect(relay.proc.child.exitCode).toBe(null);
  });

  it('runs notifications without answering them', async () => {
    const { replies, socket } = await exchange([encode([2, 'KV.Set', ['note', 'seen']]), req(11, 'KV.Get', ['note'])], 1);
    socket.destroy();
    expect(replies).toEqual([[1, 11, null, 'seen']]);
  });

  it('accepts Relay.Auth with any token when the relay requires none', async () => {
    const { replies, socket } = await exchange([req(12, 'Relay.Auth', ['anything']), req(13, 'Server.Ping', [])], 2);
    socket.destroy();
    expect(replies).toEqual([
      [1, 12, null, true],
      [1, 13, null, 'pong'],
    ]);
  });

  it('closes a connection after 5 failed Logins, as on the WebSocket side', async () => {
    const tries = Array.from({ length: 6 }, (_, i) => req(30 + i, 'Hello.Login', ['alice:wrong']));
    const { replies, closed, socket } = await exchange(tries, 6);
    socket.destroy();
    expect(closed).toBe(true);
    expect(replies).toHaveLength(5);
    for (const r of replies as unknown[][]) expect(r[2]).toBe('LOGIN_FAILED: username or password incorrect');
  });

  it('routes node/Service.Method to that node and names the nodes online otherwise', async () => {
    const { replies, socket } = await exchange([req(14, 'slow-1/Slow.Where', []), req(15, 'nowhere/Slow.Where', [])], 2);
    socket.destroy();
    // Replies come in the order they are ready: the refusal is immediate, the call goes to a node.
    const [found, refused] = (replies as unknown[][]).sort((a, b) => (a[1] as number) - (b[1] as number));
    expect(found).toEqual([1, 14, null, 'slow-1']);
    expect(refused![2]).toMatch(/^NO_NODE: no node named nowhere is connected; nodes online: .*office-1.*slow-1/);
  });
});

describe('the MessagePack-RPC port of a relay that requires caller tokens', () => {
  it('takes calls only after Relay.Auth with an accepted token', async () => {
    const secured = await startRelay(['--msgpack-rpc-listen', '127.0.0.1:0', '--caller-token', 'caller-token-0123456789']);
    const port = (await secured.proc.waitForMsg('msgpack-rpc port listening')).port as number;
    await startNode(secured.addr, ['--name', 'office-2']);
    const saved = rpcPort;
    rpcPort = port;
    try {
      const before = await exchange([req(40, 'Server.Ping', [])], 1);
      before.socket.destroy();
      expect((before.replies[0] as unknown[])[2]).toMatch(/^UNAUTHORIZED/);
      const wrong = await exchange([req(41, 'Relay.Auth', ['not-the-token-at-all'])], 1);
      wrong.socket.destroy();
      expect((wrong.replies[0] as unknown[])[2]).toMatch(/^UNAUTHORIZED/);
      const right = await exchange([req(42, 'Relay.Auth', ['caller-token-0123456789']), req(43, 'Server.Ping', [])], 2);
      right.socket.destroy();
      expect(right.replies).toEqual([
        [1, 42, null, true],
        [1, 43, null, 'pong'],
      ]);
    } finally {
      rpcPort = saved;
    }
  });
});

const goReason = goMissing();
if (goReason && !CI) skipNote('Go client tests on the MessagePack-RPC port', goReason, GO_PACKAGES);

describe.skipIf(goReason !== undefined && !CI)('a Go net/rpc client on the MessagePack-RPC port', () => {
  let go: GoPrograms;
  beforeAll(async () => {
    if (goReason) throw new Error(`CI=true but ${goReason}; .ci/run installs ${GO_PACKAGES}`);
    go = await buildGo();
  }, 300_000);
  afterAll(() => go?.cleanup());

  const call = (...specs: string[]) => runJsonLines(go.client, ['-addr', `127.0.0.1:${rpcPort}`, 'call', ...specs]);

  it('calls TypeScript services with a Go struct argument, Ping, and gets error strings', async () => {
    const r = await call('Arith.Multiply {"X":6,"Y":7}', 'Server.Ping null', 'Server.Ping {}', 'Arith.Divide {"X":1,"Y":0}', 'Nope.Thing null');
    expect(r.stderr).toBe('');
    expect(r.lines).toEqual([
      { result: 42 },
      { result: 'pong' },
      { result: 'pong' },
      { error: 'APP_ERROR: divide by zero' },
      { error: expect.stringMatching(/^NO_SERVICE: no node serves service Nope; nodes online: /) },
    ]);
  });

  it('keeps a Login to its own connection', async () => {
    const r = await call('1 Hello.Login "alice:secret"', '2 Hello.Hello "bob"', '1 Hello.Hello "bob"', '2 Hello.WhoAmI null', '1 Hello.WhoAmI null');
    expect(r.lines).toEqual([
      { result: 'alice' },
      { error: 'NOT_LOGGED_IN: Hello.Hello needs a login: call Hello.Login first on this connection' },
      { result: expect.stringMatching(/^Hello bob, from 127\.0\.0\.1:\d+$/) },
      { error: 'NOT_LOGGED_IN: Hello.WhoAmI needs a login: call Hello.Login first on this connection' },
      { result: 'alice' },
    ]);
  });

  it('reaches a named node with the node/ prefix', async () => {
    const r = await call('slow-1/Slow.Where null', 'office-1/Arith.Multiply {"X":2,"Y":3}');
    expect(r.lines).toEqual([{ result: 'slow-1' }, { result: 6 }]);
  });
});

const pyReason = pythonMsgpackMissing();
if (pyReason && !CI) skipNote('the Python msgpack client test', pyReason, 'python3-msgpack');

describe.skipIf(pyReason !== undefined && !CI)('a Python msgpack client on the MessagePack-RPC port', () => {
  it('pipelines requests and matches replies that come back out of order', async () => {
    if (pyReason) throw new Error(`CI=true but ${pyReason}; .ci/run installs python3-msgpack`);
    const messages = [
      [1, 'Slow.Sleep', [300]],
      ['KV.Set', ['py', [1, 'two']]],
      [0, 'Arith.Multiply', [{ X: 3, Y: 5 }]],
      [0xffffffff, 'KV.Get', ['py']],
      [7, 'Hello.WhoAmI', []],
      [8, 'Slow.Echo', [{ nested: { list: [1.5, null, true] } }]],
    ];
    const r = await runJsonLines(PYTHON, [PIPELINE, `127.0.0.1:${rpcPort}`, JSON.stringify(messages)]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const byId = new Map((r.lines as Array<{ msgid: number }>).map((l) => [l.msgid, l]));
    expect(byId.get(0)).toEqual({ type: 1, msgid: 0, error: null, result: 15 });
    expect(byId.get(0xffffffff)).toEqual({ type: 1, msgid: 0xffffffff, error: null, result: [1, 'two'] });
    expect(byId.get(7)).toEqual({ type: 1, msgid: 7, error: expect.stringMatching(/^NOT_LOGGED_IN: /), result: null });
    expect(byId.get(8)).toEqual({ type: 1, msgid: 8, error: null, result: { nested: { list: [1.5, null, true] } } });
    expect(byId.get(1)).toEqual({ type: 1, msgid: 1, error: null, result: 300 });
    // The slow call was sent first and answered last: replies are matched by msgid, not by order.
    expect(r.lines).toHaveLength(5);
    expect((r.lines.at(-1) as { msgid: number }).msgid).toBe(1);
  });
});

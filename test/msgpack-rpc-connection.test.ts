import { createServer, connect, type Server, type Socket } from 'node:net';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import type { CallerLink } from '../src/relay/caller-link.js';
import type { CallerOutput } from '../src/relay/contracts.js';
import type { MsgpackRpcHost } from '../src/relay/doors/hub.js';
import { RpcConnection, type RpcConnectionSettings } from '../src/relay/doors/msgpack-rpc-connection.js';
import { AUTH_METHOD, MsgpackRpcPort } from '../src/relay/doors/msgpack-rpc.js';
import type { Limits } from '../src/relay/limits.js';
import { peerAddress } from '../src/util/address.js';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { Kind, type Message } from '../src/wire/messages.js';
import { Wakeups } from './helpers/wait.js';

/**
 * One connection of the MessagePack-RPC port held in the hand: the real class over a real socket
 * pair on 127.0.0.1, with the relay behind it replaced by a hub that records what it is handed.
 */

const MiB = 1024 * 1024;
const BOUND = 2_000;

interface LogLine {
  msg: string;
  reason?: string;
}

type Request = Extract<Message, { kind: typeof Kind.REQUEST }>;

/** The relay as the port sees it (hub.ts), recording sessions, requests and refusals. */
class FakeRelay {
  needAuth = false;
  readonly opened: { identity: string | null; out: CallerOutput }[] = [];
  readonly requests: Request[] = [];
  readonly closedSessions: string[] = [];
  readonly failedTokens: string[] = [];
  /** What the gate answers each connection: admitted, or refused with this reason. */
  refuseSockets: string | undefined;
  admitted = 0;
  released = 0;
  memoryEntries = 0;
  readonly refusals: (string | undefined)[] = [];
  readonly wakeups = new Wakeups();

  readonly host: MsgpackRpcHost;

  constructor() {
    const needAuth = (): boolean => this.needAuth;
    this.host = {
      limits: { maxMessage: 16 * MiB, helloTimeout: 10_000, maxBacklog: 8 * MiB, slowConsumerTimeout: 30_000 } as Readonly<Limits>,
      memory: {
        add: () => {
          this.memoryEntries++;
          return () => {
            this.memoryEntries--;
            this.wakeups.wake();
          };
        },
        poke: () => undefined,
      },
      doorEvents: { refused: (metric) => this.refusals.push(metric), slowConsumer: () => undefined },
      gate: {
        admitSocket: () => {
          if (this.refuseSockets !== undefined) return { refused: this.refuseSockets };
          this.admitted++;
          return {
            release: () => {
              this.released++;
              this.wakeups.wake();
            },
          };
        },
      },
      authFailures: {
        refusal: () => undefined,
        failed: (ip: string) => {
          this.failedTokens.push(ip);
          return true;
        },
      },
      sessions: {
        get callersNeedAuth() {
          return needAuth();
        },
        admit: () => ({ identity: null, credential: undefined as never }),
        open: (out, _address, identity) => {
          const session = `s${this.opened.length + 1}`;
          this.opened.push({ identity, out });
          this.wakeups.wake();
          const link = {
            session,
            budget: { used: 0 },
            onMessage: (m: Message) => {
              if (m.kind === Kind.REQUEST) this.requests.push(m);
              this.wakeups.wake();
            },
          };
          return link as unknown as CallerLink;
        },
        close: (link) => {
          this.closedSessions.push(link.session);
          this.wakeups.wake();
        },
      },
    };
  }

  until(pred: () => boolean, what: string): Promise<void> {
    return this.wakeups.until(
      pred,
      BOUND,
      what,
      () => `${this.requests.length} requests, sessions ${this.opened.length} open / ${this.closedSessions.length} closed`,
    );
  }
}

let relay = new FakeRelay();

/** A raw MessagePack-RPC client: the bytes and the decoded replies it got, and whether the port hung up. */
class Caller {
  readonly bytes: Buffer[] = [];
  readonly replies: unknown[][] = [];
  closed = false;
  private readonly framer = new MessagePackFramer(64 * MiB);
  private readonly wakeups = new Wakeups();

  constructor(readonly socket: Socket) {
    socket.on('data', (d: Buffer) => {
      for (const f of this.framer.push(d)) {
        this.bytes.push(f);
        this.replies.push(decode(f) as unknown[]);
      }
      this.wakeups.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wakeups.wake();
    });
    socket.on('error', () => undefined);
  }

  send(...messages: Buffer[]): void {
    this.socket.write(Buffer.concat(messages));
  }

  until(pred: () => boolean, what: string): Promise<void> {
    return this.wakeups.until(pred, BOUND, what, () => `replies ${JSON.stringify(this.replies).slice(0, 300)}, closed ${this.closed}`);
  }
}

const servers: Server[] = [];
const sockets: Socket[] = [];

afterEach(async () => {
  relay = new FakeRelay();
  for (const s of sockets.splice(0)) s.destroy();
  await Promise.all(servers.splice(0).map((s) => new Promise((resolve) => s.close(resolve))));
});

/** A connection of the port over a fresh loopback socket pair, and the log lines it wrote. */
async function pair(options: Partial<RpcConnectionSettings> = {}): Promise<{ caller: Caller; lines: LogLine[] }> {
  const lines: LogLine[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => lines.push(JSON.parse(line) as LogLine) });
  const opts: RpcConnectionSettings = {
    maxMessage: 16 * MiB,
    idleTimeout: 60_000,
    firstRequestTimeout: 60_000,
    maxBacklog: 8 * MiB,
    slowConsumerTimeout: 60_000,
    ...options,
  };
  const server = createServer((socket) => {
    sockets.push(socket);
    const conn = new RpcConnection(socket, peerAddress(socket), relay.host, opts, log);
    socket.on('close', () => conn.onClose());
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  const socket = connect(port, '127.0.0.1');
  sockets.push(socket);
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  return { caller: new Caller(socket), lines };
}

const request = (msgid: number, method: string, params: unknown[]) => encode([0, msgid, method, params]);

/** The output of the session the nth call of this test opened. */
const out = (n = 0): CallerOutput => relay.opened[n]!.out;

describe('RpcConnection', () => {
  it('hands the session the params bytes as sent, names the node of node/Service.Method, and answers under the caller’s msgid', async () => {
    const { caller } = await pair();
    const params = encode([{ A: 2, B: 3 }]);
    caller.send(Buffer.concat([Buffer.from([0x94, 0x00, 0xce, 0x00, 0x01, 0x11, 0x70]), encode('office-1/Arith.Multiply'), params]));
    await relay.until(() => relay.requests.length === 1, 'the request');
    const r = relay.requests[0]!;
    expect([r.method, r.meta, r.stream]).toEqual(['Arith.Multiply', { node: 'office-1' }, 0]);
    expect(Buffer.from(r.params).equals(params)).toBe(true);
    expect(relay.opened.map((o) => o.identity)).toEqual([null]);

    out().respond(r.id, null, encode(6));
    await caller.until(() => caller.replies.length === 1, 'the answer');
    expect(caller.bytes[0]!.equals(encode([1, 70_000, null, 6]))).toBe(true);
  });

  it('keeps calls apart that reuse one msgid, each answered in the order the node answers', async () => {
    const { caller } = await pair();
    caller.send(request(5, 'Echo.Say', ['a']), request(5, 'Echo.Say', ['b']));
    await relay.until(() => relay.requests.length === 2, 'both requests');
    const [a, b] = relay.requests;
    expect(a!.id).not.toBe(b!.id);
    out().respond(b!.id, null, encode('b'));
    out().respond(a!.id, null, encode('a'));
    out().respond(a!.id, null, encode('again')); // answered already: dropped
    await caller.until(() => caller.replies.length === 2, 'two answers');
    expect(caller.replies).toEqual([
      [1, 5, null, 'b'],
      [1, 5, null, 'a'],
    ]);
  });

  it('writes errors as "CODE: message", and a node result that is not valid MessagePack as PROTOCOL_ERROR', async () => {
    const { caller } = await pair();
    caller.send(request(1, 'Arith.Divide', [1, 0]), request(2, 'Bad.Result', []), request(3, 'Nil.Result', []));
    await relay.until(() => relay.requests.length === 3, 'three requests');
    const [one, two, three] = relay.requests;
    out().respond(one!.id, { code: 'APP_ERROR', message: 'divide by zero' }, null);
    out().respond(two!.id, null, Buffer.from([0xc1]));
    out().respond(three!.id, null, null);
    await caller.until(() => caller.replies.length === 3, 'three answers');
    expect(caller.replies).toEqual([
      [1, 1, 'APP_ERROR: divide by zero', null],
      [1, 2, 'PROTOCOL_ERROR: the node answered with a result that is not valid MessagePack: invalid MessagePack byte 0xc1 at offset 0', null],
      [1, 3, null, null],
    ]);
    expect(caller.closed).toBe(false);
  });

  it('passes a notification on and writes nothing for it, answered or refused', async () => {
    const { caller } = await pair();
    caller.send(encode([2, 'Log.Write', ['hi']]), encode([2, 'Log.Write', 'not an array']), request(9, 'Server.Ping', []));
    await relay.until(() => relay.requests.length === 2, 'the notification and the request');
    const [note, ping] = relay.requests;
    expect(note!.method).toBe('Log.Write');
    out().respond(note!.id, { code: 'APP_ERROR', message: 'ignored' }, null);
    out().respond(ping!.id, null, encode('pong'));
    await caller.until(() => caller.replies.length >= 1, 'the answer');
    expect(caller.replies).toEqual([[1, 9, null, 'pong']]);
  });

  it('answers a request of the wrong shape with BAD_REQUEST and keeps serving the connection', async () => {
    const { caller } = await pair();
    caller.send(encode([0, 5, 'Server.Ping']), encode([0, 6, '', []]), request(7, 'Server.Ping', []));
    await relay.until(() => relay.requests.length === 1, 'the good request');
    out().respond(relay.requests[0]!.id, null, encode('pong'));
    await caller.until(() => caller.replies.length === 3, 'three answers');
    expect(caller.replies).toEqual([
      [1, 5, 'BAD_REQUEST: a request is [0, msgid, method, params]; this one has 3 elements', null],
      [1, 6, 'BAD_REQUEST: method must be a non-empty string', null],
      [1, 7, null, 'pong'],
    ]);
    expect(caller.closed).toBe(false);
  });

  it.each([
    [
      'a response',
      encode([1, 7, null, 1]),
      'this port serves requests and sends no requests of its own, so it takes no responses [1, ...]; send [0, msgid, method, params]',
    ],
    ['an oversized msgid', encode([0, 2 ** 32, 'Server.Ping', []]), 'request msgid must be an integer 0..4294967295'],
    ['the byte 0xc1 (the framer refuses it)', Buffer.from([0x94, 0x00, 0x01, 0xc1, 0x90]), 'invalid MessagePack: byte 0xc1 at offset 3 of a value'],
    [
      'an extension in the params (the reader refuses it)',
      Buffer.from([0x94, 0x00, 0x01, 0xa3, 0x41, 0x2e, 0x42, 0x91, 0xd4, 0x05, 0x00]),
      'invalid MessagePack: extensions accepted: -1 in fixext 1/4/8 or ext 8 of 12 bytes, 0 in fixext 1; got type 5 in fixext 1',
    ],
  ])('ends the connection on %s, after what was already answered, and ends its session', async (_what, bad, reason) => {
    const { caller, lines } = await pair();
    caller.send(encode([0, 1, 'Server.Ping']), request(2, 'Server.Ping', []));
    await caller.until(() => caller.replies.length === 1, 'the first answer');
    // In one write: the framer refuses a whole chunk that holds a byte no value may start with.
    caller.send(bad, request(3, 'Server.Ping', []));
    await caller.until(() => caller.closed, 'the port to hang up');
    expect(caller.replies).toEqual([[1, 1, 'BAD_REQUEST: a request is [0, msgid, method, params]; this one has 3 elements', null]]);
    expect(relay.requests.map((r) => r.method)).toEqual(['Server.Ping']); // nothing after the bad message is read
    expect(new Set(relay.closedSessions)).toEqual(new Set(['s1'])); // once on the end, again on the socket's close: the hub takes both
    expect(lines.find((l) => l.msg === 'closing msgpack-rpc connection after bad input')?.reason).toBe(reason);
  });

  it('asks for Relay.Auth while a custom authenticator is set, opens the session with the identity it proves, and hangs up on a wrong token', async () => {
    const authenticate = (token: string) => (token === 'good' ? 'alice' : null);
    const { caller } = await pair({ authenticate });
    caller.send(request(1, 'Server.Ping', []), request(2, 'Relay.Auth', ['good']), request(3, 'Relay.Auth', ['good']), request(4, 'Server.Ping', []));
    await relay.until(() => relay.requests.length === 1, 'the call after Relay.Auth');
    await caller.until(() => caller.replies.length === 3, 'three answers');
    expect(caller.replies).toEqual([
      [1, 1, 'UNAUTHORIZED: this relay requires a caller token: call Relay.Auth(token) first on this connection', null],
      [1, 2, null, true],
      [1, 3, 'BAD_REQUEST: this connection is already authenticated', null],
    ]);
    expect(relay.opened.map((o) => o.identity)).toEqual(['alice']);

    const wrong = await pair({ authenticate });
    wrong.caller.send(request(1, 'Relay.Auth', ['bad']), request(2, 'Server.Ping', []));
    await wrong.caller.until(() => wrong.caller.closed, 'the port to hang up');
    expect(wrong.caller.replies).toEqual([[1, 1, 'UNAUTHORIZED: Relay.Auth takes one string, a caller token the relay accepts; this one was refused', null]]);
    expect(relay.failedTokens).toEqual(['127.0.0.1']);
    expect(relay.opened).toHaveLength(1);
  });

  it('refuses the calls of an anonymous session once the relay requires tokens, and asks it to reconnect', async () => {
    const { caller } = await pair();
    caller.send(request(1, 'Server.Ping', []));
    await relay.until(() => relay.requests.length === 1, 'the anonymous call');
    relay.needAuth = true;
    caller.send(request(2, 'Server.Ping', []));
    await caller.until(() => caller.replies.length === 1, 'the refusal');
    expect(caller.replies).toEqual([[1, 2, 'UNAUTHORIZED: this relay now requires a caller token: reconnect and call Relay.Auth(token) first', null]]);
    expect(relay.requests).toHaveLength(1);
  });
});

describe('MsgpackRpcPort', () => {
  const ports: MsgpackRpcPort[] = [];
  afterEach(async () => {
    await Promise.all(ports.splice(0).map((p) => p.close()));
  });

  async function open(): Promise<{ port: MsgpackRpcPort; dial: () => Promise<Caller> }> {
    const port = new MsgpackRpcPort(relay.host, { listen: '127.0.0.1:0' });
    ports.push(port);
    const { port: n } = await port.listen();
    const dial = async () => {
      const socket = connect(n, '127.0.0.1');
      sockets.push(socket);
      const caller = new Caller(socket);
      await new Promise<void>((resolve) => socket.once('connect', resolve).once('close', resolve));
      return caller;
    };
    return { port, dial };
  }

  it('serves each admitted connection as one session, and gives back its admission and memory entry when it closes', async () => {
    const { dial } = await open();
    const caller = await dial();
    caller.send(request(1, 'Server.Ping', []), request(2, AUTH_METHOD, [7]));
    await relay.until(() => relay.requests.length === 1, 'the request');
    out().respond(relay.requests[0]!.id, null, encode('pong'));
    await caller.until(() => caller.replies.length === 2, 'two answers');
    // Relay.Auth is answered at once by the port (the fake hub admits any token, as a relay that requires none); the call by the node.
    expect(caller.replies).toEqual([
      [1, 2, null, true],
      [1, 1, null, 'pong'],
    ]);
    expect([relay.admitted, relay.memoryEntries]).toEqual([1, 1]);
    caller.socket.destroy();
    await relay.until(() => relay.released === 1 && relay.memoryEntries === 0, 'the release');
    expect(new Set(relay.closedSessions)).toEqual(new Set(['s1']));
  });

  it('closes a connection the gate refuses at once, counted as too_many_connections, with no session', async () => {
    relay.refuseSockets = 'too many connections from 127.0.0.1';
    const { dial } = await open();
    const caller = await dial();
    await caller.until(() => caller.closed, 'the port to hang up');
    expect(relay.refusals).toEqual(['too_many_connections']);
    expect([relay.admitted, relay.opened.length, relay.memoryEntries]).toEqual([0, 0, 0]);
  });

  it('closes its caller connections when it closes', async () => {
    const { port, dial } = await open();
    const callers = [await dial(), await dial()];
    await relay.until(() => relay.admitted === 2, 'two connections');
    await port.close();
    await Promise.all(callers.map((c) => c.until(() => c.closed, 'the port to hang up')));
    await relay.until(() => relay.released === 2, 'both releases');
  });
});

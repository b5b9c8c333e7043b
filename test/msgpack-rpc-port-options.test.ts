import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TunnelNode } from '../src/node/node.js';
import { MsgpackRpcPort } from '../src/relay/msgpack-rpc-port.js';
import { Relay } from '../src/relay/relay.js';
import { ServiceRegistry } from '../src/rpc/registry.js';
import { registerExamples } from '../src/services/index.js';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { certDir, makeCerts } from './helpers/certs.js';
import { CI } from './helpers/foreign.js';

/** Library-level options of the port: the Relay.Auth hook and TLS, with a relay and node in this process. */
let relay: Relay;
let node: TunnelNode;
const ports: MsgpackRpcPort[] = [];

beforeAll(async () => {
  relay = new Relay({ listen: '127.0.0.1:0' });
  const { url } = await relay.listen();
  node = new TunnelNode({ relay: url, name: 'lib-1', services: registerExamples(new ServiceRegistry()) }).start();
  await node.waitConnected();
});
afterAll(async () => {
  for (const p of ports) await p.close();
  await node.stop(0);
  await relay.close();
});

async function openPort(options: ConstructorParameters<typeof MsgpackRpcPort>[1]): Promise<number> {
  const port = new MsgpackRpcPort(relay, { listen: '127.0.0.1:0', ...options });
  ports.push(port);
  return (await port.listen()).port;
}

/** Sends requests on `socket` and collects `want` decoded replies, bounded by 5 s. */
async function ask(socket: Socket, requests: unknown[][], want: number): Promise<unknown[]> {
  const framer = new MessagePackFramer(1 << 20);
  const replies: unknown[] = [];
  const done = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out with ${JSON.stringify(replies)}`)), 5_000);
    socket.on('data', (d: Buffer) => {
      for (const f of framer.push(d)) replies.push(decode(f));
      if (replies.length >= want) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  socket.write(Buffer.concat(requests.map((r) => encode(r))));
  await done;
  return replies.sort((a, b) => (a as number[])[1]! - (b as number[])[1]!);
}

describe('Relay.Auth with a caller authenticator', () => {
  it('refuses calls until a good token, then serves them; a bad token closes the connection', async () => {
    const port = await openPort({ authenticate: (token) => (token === 'good' ? 'team-a' : null) });
    const socket = tcpConnect(port, '127.0.0.1');
    const replies = await ask(
      socket,
      [
        [0, 1, 'Server.Ping', []],
        [0, 3, 'Relay.Auth', ['good']],
        [0, 4, 'Server.Ping', []],
        [0, 5, 'Relay.Auth', ['good']],
      ],
      4,
    );
    socket.destroy();
    expect(replies).toEqual([
      [1, 1, 'UNAUTHORIZED: this relay requires a caller token: call Relay.Auth(token) first on this connection', null],
      [1, 3, null, true],
      [1, 4, null, 'pong'],
      [1, 5, 'BAD_REQUEST: this connection is already authenticated', null],
    ]);
    const guess = tcpConnect(port, '127.0.0.1');
    const closed = new Promise<void>((resolve) => guess.once('close', () => resolve()));
    const refused = await ask(
      guess,
      [
        [0, 2, 'Relay.Auth', ['bad']],
        [0, 3, 'Relay.Auth', ['good']],
      ],
      1,
    );
    await closed;
    expect(refused).toEqual([[1, 2, 'UNAUTHORIZED: Relay.Auth takes one string, a caller token the relay accepts; this one was refused', null]]);
  });
});

const opensslMissing = spawnSync('openssl', ['version']).status !== 0;
describe.skipIf(opensslMissing && !CI)('the port over TLS', () => {
  let tls: { key: Buffer; cert: Buffer };
  let ca: Buffer;
  beforeAll(() => {
    const certs = certDir();
    makeCerts(certs.dir, []);
    tls = { key: readFileSync(certs.file('relay.key')), cert: readFileSync(certs.file('relay.crt')) };
    ca = readFileSync(certs.file('ca.crt'));
    certs.remove();
  });

  it('serves MessagePack-RPC inside TLS', async () => {
    const port = await openPort({ tls });
    const socket = tlsConnect({ host: '127.0.0.1', port, ca, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => socket.once('secureConnect', resolve).once('error', reject));
    const replies = await ask(socket, [[0, 9, 'Arith.Multiply', [{ X: 4, Y: 5 }]]], 1);
    socket.destroy();
    expect(replies).toEqual([[1, 9, null, 20]]);
  });
});

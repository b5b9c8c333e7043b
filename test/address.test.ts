import { afterAll, describe, expect, it } from 'vitest';
import { connect } from '../src/client/client.js';
import { DirectListener } from '../src/node/direct.js';
import { parseForward } from '../src/node/forward.js';
import { TunnelNode } from '../src/node/node.js';
import { MsgpackRpcPort } from '../src/relay/msgpack-rpc-port.js';
import { Relay } from '../src/relay/relay.js';
import { ServiceRegistry } from '../src/rpc/registry.js';
import { registerExamples } from '../src/services/index.js';
import { dialAddress, hostName, listenAddress, relayUrl } from '../src/util/address.js';
import { silentLogger } from '../src/util/logger.js';
import { freePort } from './helpers/nats.js';
import { BIN, killAll, Proc, runCall, START_TIMEOUT, startNode } from './helpers/processes.js';

/** Hosts that the C resolver or WHATWG URL would read as an IPv4 address other than what is written. */
const NUMERIC_HOSTS = ['9090', '127.1', '0x7f.1', '0x7f000001', '2130706433', '010.0.0.1', '256.0.0.1', '1.2.3', '1.2.3.4.5', 'foo.123', '127.0.0.01'];

describe('listen addresses', () => {
  it.each([
    ['127.0.0.1:0', { host: '127.0.0.1', port: 0 }],
    [':9094', { host: '', port: 9094 }],
    ['9094', { host: '', port: 9094 }],
    ['0', { host: '', port: 0 }],
    ['[::1]:80', { host: '::1', port: 80 }],
    ['[::]:9090', { host: '::', port: 9090 }],
    ['localhost:8080', { host: 'localhost', port: 8080 }],
    ['relay.example.com:65535', { host: 'relay.example.com', port: 65535 }],
    ['0.0.0.0:1', { host: '0.0.0.0', port: 1 }],
    ['  :9090 ', { host: '', port: 9090 }],
  ])('accepts %j', (text, want) => {
    expect(listenAddress(text, '--listen')).toEqual(want);
  });

  it.each<[string, RegExp]>([
    ...NUMERIC_HOSTS.map((h): [string, RegExp] => [`${h}:9090`, /neither a name nor an IPv4 address a\.b\.c\.d/]),
    ['relay.example', /give a port/],
    ['', /is empty/],
    [':65536', /port must be a number 0\.\.65535/],
    [':-1', /port must be/],
    ['host:abc', /port must be/],
    ['host:', /port must be/],
    ['123456', /port must be/],
    ['::1:80', /IPv6 addresses in brackets/],
    ['[nope]:80', /not an IPv6 address/],
    ['[::1]', /give a port/],
    ['ws://127.0.0.1:9090', /not a URL/],
    ['a b:1', /not a host name/],
    ['-bad.example:1', /not a host name/],
    ['a..b:1', /not a host name/],
    ['h%31:1', /not a host name/],
  ])('refuses %j, naming the flag', (text, why) => {
    let message = '';
    try {
      listenAddress(text, '--listen');
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message.startsWith(text.trim() === '' ? '--listen is empty' : `--listen ${JSON.stringify(text)}: `)).toBe(true);
    expect(message).toMatch(why);
  });
});

describe('dial addresses and relay URLs', () => {
  it.each([
    ['9090', 'ws://localhost:9090/'],
    [':9091', 'ws://localhost:9091/'],
    ['localhost:9090', 'ws://localhost:9090/'],
    ['127.0.0.1:9090', 'ws://127.0.0.1:9090/'],
    ['[::1]:9090', 'ws://[::1]:9090/'],
    ['ws://127.0.0.1:9090', 'ws://127.0.0.1:9090/'],
    ['wss://relay.example:443/tunnel', 'wss://relay.example/tunnel'],
    ['WS://Relay.Example:1/x?y=1', 'ws://relay.example:1/x?y=1'],
    ['wss://relay.example', 'wss://relay.example/'],
    ['ws://[::1]:80/', 'ws://[::1]/'],
  ])('turns %j into %s', (text, url) => {
    expect(relayUrl(text, '--relay')).toBe(url);
  });

  it.each([
    ['9090:9090', /host "9090" is neither a name nor an IPv4 address/],
    ['ws://9090:9090/', /host "9090" is neither/],
    ['ws://127.1:9090', /host "127\.1" is neither/],
    ['ws://0x7f.1/', /host "0x7f\.1" is neither/],
    ['wss://010.0.0.1/', /neither/],
    ['ws://%31%32%37.1/', /neither/],
    ['ws://%72elay.example/', /not a host name/],
    ['ws://a\tb.example/', /not a host name/],
    ['ws://user:pw@relay.example:1/', /no user or password/],
    ['ws://:9090/', /give the relay host/],
    ['ws://relay.example:0/', /port must be a number 1\.\.65535/],
    ['ws://relay.example:99999/', /port must be/],
    ['ws://relay.example/#frag', /#fragment/],
    ['ws://relay.example/a\\b', /without \\/],
    ['http://relay.example:9090', /unsupported scheme http:\/\//],
    ['tcp://relay.example:9090', /unsupported scheme/],
    ['relay.example', /give a port/],
    [':0', /port must be a number 1\.\.65535/],
    ['0', /port must be a number 1\.\.65535/],
  ])('refuses %j, naming the flag', (text, why) => {
    expect(() => relayUrl(text, '--relay')).toThrow(why);
    expect(() => relayUrl(text, '--relay')).toThrow(`--relay ${JSON.stringify(text)}: `);
  });

  it('puts a bare port or :port on the given local host', () => {
    expect(dialAddress('8080', '--forward', '127.0.0.1')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(dialAddress(':8080', '--forward', '127.0.0.1')).toEqual({ host: '127.0.0.1', port: 8080 });
    expect(dialAddress('db.internal:5432', '--forward', '127.0.0.1')).toEqual({ host: 'db.internal', port: 5432 });
  });

  it('checks --forward targets with the same rules', () => {
    expect(parseForward('KV=9092')).toEqual({ name: 'KV', target: { host: '127.0.0.1', port: 9092 } });
    expect(parseForward('KV=[::1]:9092')).toEqual({ name: 'KV', target: { host: '::1', port: 9092 } });
    expect(parseForward('KV=unix:/run/kv.sock')).toEqual({ name: 'KV', target: { path: '/run/kv.sock' } });
    expect(() => parseForward('KV=9090:9090')).toThrow(/^--forward "KV=9090:9090": host "9090" is neither/);
    expect(() => parseForward('KV=127.1:80')).toThrow(/^--forward "KV=127.1:80": /);
    expect(() => parseForward('KV=:0')).toThrow(/^--forward "KV=:0": port must be a number 1\.\.65535/);
    expect(() => parseForward('KV=localhost')).toThrow(/give a port/);
  });

  it('checks host names without a port', () => {
    expect(hostName('Tunnel.Example.', '--allow-host')).toBe('tunnel.example');
    expect(hostName('[::1]', '--allow-host')).toBe('::1');
    expect(hostName('10.0.0.5', '--allow-host')).toBe('10.0.0.5');
    expect(() => hostName('tunnel.example:80', '--allow-host')).toThrow(/^--allow-host "tunnel.example:80": give the host name alone/);
    expect(() => hostName('127.1', '--allow-host')).toThrow(/neither a name nor an IPv4/);
  });
});

describe('library options', () => {
  const services = () => registerExamples(new ServiceRegistry());

  it('Relay and MsgpackRpcPort throw at construction, naming the option', () => {
    expect(() => new Relay({ listen: '127.1:0' })).toThrow(/^Relay option listen "127\.1:0": /);
    expect(() => new Relay({ listen: '127.0.0.1:0', adminListen: '9100:9100' })).toThrow(/^Relay option adminListen "9100:9100": /);
    const relay = new Relay({ listen: '127.0.0.1:0' });
    expect(() => new MsgpackRpcPort(relay, { listen: 'localhost' })).toThrow(/^MsgpackRpcPort option listen "localhost": give a port/);
  });

  it('TunnelNode throws on a bad relay address or name instead of retrying forever', () => {
    expect(() => new TunnelNode({ relay: '9090:9090', name: 'n1', services: services() })).toThrow(/^TunnelNode option relay "9090:9090": /);
    expect(() => new TunnelNode({ relay: '9090', name: 'bad name', services: services() })).toThrow(/^TunnelNode option name: node name "bad name" must be/);
    expect(() => new TunnelNode({ relay: '9090', name: '', services: services() })).toThrow(/TunnelNode option name/);
    expect(new TunnelNode({ relay: '9090', name: 'n1', services: services() }).url).toBe('ws://localhost:9090/');
  });

  it('connect() and DirectListener.listen reject before any socket is opened', async () => {
    await expect(connect('9090:9090')).rejects.toThrow(/^connect\(\) relay "9090:9090": /);
    const node = new TunnelNode({ relay: '9090', name: 'n1', services: services() });
    const direct = new DirectListener(node, silentLogger, { maxMessage: 1024, heartbeatTimeout: 1_000 });
    await expect(direct.listen('127.1:0')).rejects.toThrow(/^DirectListener.listen address "127\.1:0": /);
  });
});

/** Runs a CLI that should stop by itself, bounded in time. */
async function run(bin: string, args: string[], env: Record<string, string> = {}): Promise<Proc & { code: number | null }> {
  const proc = new Proc(bin, ['--log-level', 'debug', ...args], env);
  const timer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
  const { code } = await proc.exited;
  clearTimeout(timer);
  return Object.assign(proc, { code });
}

describe('address flags of the CLIs', () => {
  afterAll(killAll);

  it('--listen PORT binds that port on this host, and --relay PORT reaches it', async () => {
    const port = await freePort({ everyInterface: true });
    const relay = new Proc(BIN.relay, ['--listen', String(port), '--log-level', 'debug']);
    const listening = await relay.waitForMsg('relay listening', START_TIMEOUT);
    expect(listening.port).toBe(port);
    expect(['::', '0.0.0.0']).toContain(listening.host);
    await startNode(String(port), ['--name', 'office-1']);
    const r = await runCall(String(port), ['Arith.Multiply', '2', '3']);
    expect(r.stdout).toBe('6\n');
    const colon = await runCall(`:${port}`, ['Arith.Multiply', '3', '4']);
    expect(colon.stdout).toBe('12\n');
    relay.kill();
    await relay.exited;
  });

  const BINS = { 'tunnel-call': BIN.call, 'tunnel-node': BIN.node, 'tunnel-relay': BIN.relay } as const;
  it.each([
    { cmd: 'tunnel-call', args: ['--relay', '9090:9090', 'Arith.Multiply', '2', '3'], message: '--relay "9090:9090": host "9090" is neither' },
    { cmd: 'tunnel-call', args: ['--relay', 'ws://9090:9090/', 'Arith.Multiply', '2', '3'], message: '--relay "ws://9090:9090/": host "9090"' },
    { cmd: 'tunnel-node', args: ['--relay', '9090:9090'], message: '--relay "9090:9090": ' },
    { cmd: 'tunnel-node', args: ['--relay', '127.0.0.1:1', '--name', 'two words'], message: '--name: node name "two words" must be' },
    { cmd: 'tunnel-node', args: ['--relay', '127.0.0.1:1', '--direct-listen', '127.1:0'], message: '--direct-listen "127.1:0": ' },
    { cmd: 'tunnel-node', args: ['--relay', '127.0.0.1:1', '--forward', 'KV=9090:9090'], message: '--forward "KV=9090:9090": ' },
    { cmd: 'tunnel-relay', args: ['--listen', '127.1:0'], message: '--listen "127.1:0": host "127.1" is neither' },
    { cmd: 'tunnel-relay', args: ['--listen', '127.0.0.1:0', '--admin-listen', 'localhost'], message: '--admin-listen "localhost": give a port' },
    { cmd: 'tunnel-relay', args: ['--listen', '127.0.0.1:0', '--msgpack-rpc-listen', '0x7f.1:0'], message: '--msgpack-rpc-listen "0x7f.1:0": ' },
  ] as const)('$cmd exits 2 with $message, before starting', async ({ cmd, args, message }) => {
    const p = await run(BINS[cmd], [...args]);
    expect(p.code).toBe(2);
    expect(p.stderr).toContain(message);
    expect(p.stderr).toContain('--help for usage');
    // Nothing started: no log line at all, so no connect and no listen.
    expect(p.logs).toEqual([]);
  });

  it('checks an address from the environment under its flag name', async () => {
    const p = await run(BIN.call, ['Arith.Multiply', '2', '3'], { TUNNEL_RELAY: '9090:9090' });
    expect(p.code).toBe(2);
    // The message names the flag and where the value came from.
    expect(p.stderr).toContain('--relay (from TUNNEL_RELAY) "9090:9090": ');
  });
});

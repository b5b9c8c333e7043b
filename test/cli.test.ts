import { once } from 'node:events';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fileURLToPath } from 'node:url';
import { connect } from '../src/client/client.js';
import { isTunnelError } from '../src/errors.js';
import { BIN, killAll, Proc, runCall, startNode, startRelay, type RunningRelay } from './helpers/processes.js';
import { waitUntil } from './helpers/wait.js';

describe('the three CLIs end to end', () => {
  let relay: RunningRelay;

  beforeAll(async () => {
    relay = await startRelay();
    await startNode(relay.addr, ['--name', 'office-1']);
  });
  afterAll(killAll);

  it('multiplies through the tunnel', async () => {
    const r = await runCall(relay.addr, ['Arith.Multiply', '2', '3']);
    expect(r.stdout).toBe('6\n');
    expect(r.code).toBe(0);
  });

  it('prints machine output with --json', async () => {
    const r = await runCall(relay.addr, ['--json', 'Arith.Multiply', '2', '3']);
    expect(JSON.parse(r.stdout)).toEqual({ result: 6 });
  });

  it('reports divide by zero as an application error', async () => {
    const r = await runCall(relay.addr, ['Arith.Divide', '1', '0']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('APP_ERROR: divide by zero');
  });

  it('names what is online for an unknown service', async () => {
    const r = await runCall(relay.addr, ['Nope.Thing']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/NO_SERVICE: no node serves service Nope; nodes online: office-1 \(Arith, Hello, KV, Server\)/);
  });

  it('lists the methods for an unknown method', async () => {
    const r = await runCall(relay.addr, ['Arith.Power', '2', '3']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/NO_METHOD: .*Arith.*Power.*Divide, Multiply/);
  });

  it('logs in and greets on the same connection, and refuses without Login', async () => {
    const ok = await runCall(relay.addr, ['--login', 'alice:secret', 'Hello.Hello', 'bob']);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/^Hello bob, from 127\.0\.0\.1:\d+\n$/);
    const no = await runCall(relay.addr, ['Hello.Hello', 'bob']);
    expect(no.code).toBe(1);
    expect(no.stderr).toContain('NOT_LOGGED_IN');
    const wrong = await runCall(relay.addr, ['--login', 'alice:nope', 'Hello.Hello', 'bob']);
    expect(wrong.code).toBe(4); // wrong credentials: stop, as for a refused token
    expect(wrong.stderr).toContain('LOGIN_FAILED: username or password incorrect');
  });

  it('exits 3 (retry later) once the relay refuses Logins from this address for a while, 4 before', async () => {
    const strict = await startRelay(['--max-login-failures-per-address', '2']);
    await startNode(strict.addr, ['--name', 'strict-1']);
    const codes: number[] = [];
    let last = '';
    for (let i = 0; i < 3; i++) {
      const r = await runCall(strict.addr, ['--login', 'alice:nope', 'Hello.WhoAmI']);
      codes.push(r.code!);
      last = r.stderr;
    }
    expect(codes).toEqual([4, 4, 3]);
    expect(last).toMatch(/^LOGIN_FAILED: too many failed Login attempts from 127\.0\.0\.1; try again in \d+ s/);
  });

  it('takes the relay from TUNNEL_RELAY and fails clearly when it is unreachable', async () => {
    const r = await runCall('127.0.0.1:1', ['Server.Ping']);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/CONNECTION_CLOSED: cannot connect to relay .*ECONNREFUSED/);
  });

  it('KV.Watch sees a Set made by another caller', async () => {
    const watch = runCall(relay.addr, ['--json', 'KV.Watch', 'config', '40000'], {}, 50_000);
    // The watcher is registered before the Set: the relay has forwarded the Watch to the node (its
    // call in flight there), and a Set forwarded after it reaches the node after it.
    const observer = await connect(relay.addr);
    let ended = false;
    void watch.then(() => (ended = true));
    await waitUntil(
      async () => ended || (await observer.nodes()).some((n) => n.name === 'office-1' && n.inFlight >= 1),
      30_000,
      'the Watch in flight on office-1',
    );
    await observer.close();
    const set = await runCall(relay.addr, ['KV.Set', 'config', '{"v":2}']);
    expect(set.stdout).toBe('true\n');
    const watched = await watch;
    expect(watched.code).toBe(0);
    expect(JSON.parse(watched.stdout)).toEqual({ result: { key: 'config', value: { v: 2 } } });
  });

  it('exits 2 with a clear message on bad usage', async () => {
    const r = await runCall(relay.addr, ['NotAMethod']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('"NotAMethod" is not Service.Method');
  });
});

describe('a user services module', () => {
  afterAll(killAll);

  it('serves it with its requireLogin declaration', async () => {
    const relay = await startRelay();
    await startNode(relay.addr, ['--name', 'greeter-1', '--services', 'test/fixtures/greeter-services.js']);
    const ok = await runCall(relay.addr, ['--login', 'alice:secret', 'Greeter.Greet', 'bob']);
    expect(ok.stdout).toBe('hi bob, I am alice\n');
    const no = await runCall(relay.addr, ['Greeter.Greet', 'bob']);
    expect(no.stderr).toContain('NOT_LOGGED_IN');
    const examples = await runCall(relay.addr, ['Arith.Multiply', '2', '3']);
    expect(examples.stderr).toMatch(/NO_SERVICE.*greeter-1 \(Greeter\)/);
  });

  it('fails at start with a clear message when the module cannot be loaded', async () => {
    const relay = await startRelay();
    const r = await runCall(relay.addr, ['Server.Ping']);
    expect(r.code).toBe(1);
    const node = new Proc(BIN.node, ['--relay', relay.addr, '--services', 'test/fixtures/missing.js']);
    const exit = await node.exited;
    expect(exit.code).toBe(2);
    expect(node.stderr).toMatch(/cannot load services module test\/fixtures\/missing.js/);
  });
});

describe('direct callers', () => {
  afterAll(killAll);

  it('serves a caller straight from the node with --direct-listen, as its own session', async () => {
    const relay = await startRelay();
    const node = await startNode(relay.addr, ['--name', 'office-1', '--direct-listen', '127.0.0.1:0']);
    const ready = await node.waitForMsg('direct listener ready');
    const direct = `127.0.0.1:${ready.port as number}`;
    expect((await runCall(direct, ['Arith.Multiply', '2', '3'])).stdout).toBe('6\n');
    const hello = await runCall(direct, ['--login', 'alice:secret', 'Hello.Hello', 'bob']);
    expect(hello.stdout).toMatch(/^Hello bob, from 127\.0\.0\.1:\d+\n$/);
    expect((await runCall(direct, ['Hello.Hello', 'bob'])).stderr).toContain('NOT_LOGGED_IN');
    // The relay path still works beside it.
    expect((await runCall(relay.addr, ['Arith.Multiply', '4', '5'])).stdout).toBe('20\n');
  });

  it('answers --list with the node itself and --all with that one node; other Relay methods clearly', async () => {
    // No relay at all: the node serves its direct port while it keeps trying to reach one.
    const solo = new Proc(BIN.node, [
      '--relay',
      '127.0.0.1:1',
      '--name',
      'solo-1',
      '--label',
      'site=lab',
      '--direct-listen',
      '127.0.0.1:0',
      '--log-level',
      'debug',
    ]);
    const port = (await solo.waitForMsg('direct listener ready')).port as number;
    const direct = `127.0.0.1:${port}`;

    const list = await runCall(direct, ['--list', '--json']);
    expect(list.code).toBe(0);
    expect(JSON.parse(list.stdout)).toEqual({
      nodes: [
        expect.objectContaining({
          name: 'solo-1',
          labels: { site: 'lab' },
          address: direct,
          draining: false,
          services: expect.objectContaining({ Arith: ['Divide', 'Multiply'] }),
        }),
      ],
    });
    expect((await runCall(direct, ['--list'])).stdout).toMatch(/^NODE +STATE +LABELS +ADDRESS .*\nsolo-1 +online +site=lab +127\.0\.0\.1:\d+ /);
    expect(JSON.parse((await runCall(direct, ['--list', '--json', '--where', 'site=office'])).stdout)).toEqual({ nodes: [] });

    const all = await runCall(direct, ['--all', '--json', 'Arith.Multiply', '2', '3']);
    expect(all.code).toBe(0);
    expect(JSON.parse(all.stdout)).toEqual({ results: [{ node: 'solo-1', ok: true, result: 6, ms: expect.any(Number) }] });
    const failed = await runCall(direct, ['--all', 'Arith.Divide', '1', '0']);
    expect(failed.code).toBe(1);
    expect(failed.stdout).toMatch(/^NODE +STATUS +RESULT +MS\nsolo-1 +APP_ERROR +divide by zero +\d+\n0 ok, 1 failed\n$/);
    expect((await runCall(direct, ['--login', 'alice:secret', '--all', 'Hello.WhoAmI'])).stdout).toMatch(/^NODE .*\nsolo-1 +ok +alice /);

    const watch = await runCall(direct, ['Relay.Watch']);
    expect(watch.code).toBe(1);
    expect(watch.stderr).toBe(
      "BAD_REQUEST: Relay.Watch: this is node solo-1's direct port (tunnel-node --direct-listen), not a relay; of the Relay service it answers only Relay.List\n",
    );
  });
});

describe('--timeout covers connecting', () => {
  it('gives up on a relay that accepts TCP and never answers within --timeout, exit 3', async () => {
    const sockets = new Set<Socket>();
    let connectedAt = 0;
    const silent = createServer((s) => {
      connectedAt ||= Date.now();
      sockets.add(s);
    });
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
    const addr = `127.0.0.1:${(silent.address() as AddressInfo).port}`;
    try {
      const started = Date.now();
      const r = await runCall(addr, ['--timeout', '3s', 'Arith.Multiply', '2', '3']);
      const took = Date.now() - started;
      const sinceConnect = Date.now() - connectedAt;
      expect(r.code).toBe(3);
      expect(r.stderr).toBe(
        `TIMEOUT: cannot connect to relay ws://${addr}/: no WebSocket handshake within 3000 ms (something accepts connections there but does not answer as a relay: a firewall, another program, or a TLS port dialled with ws://?)\n`,
      );
      expect(took).toBeGreaterThanOrEqual(3_000);
      // Gave up at its --timeout: counted from its connection (the process started before it, and a
      // busy machine may take seconds to start it), with room for its exit to reach us.
      expect(connectedAt).toBeGreaterThan(0);
      expect(sinceConnect).toBeLessThan(3_000 + 3_000);

      // The library: connectTimeout follows a shorter timeout, not its 10 s default.
      const t0 = Date.now();
      const err = await connect(addr, { timeout: 1_000 }).catch((e: unknown) => e);
      expect(isTunnelError(err, 'TIMEOUT')).toBe(true);
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1_000);
      expect(Date.now() - t0).toBeLessThan(5_000);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });
});

describe('npm run demo', () => {
  it('starts a relay and a node on loopback, prints 6 and exits 0', async () => {
    const demo = new Proc(fileURLToPath(new URL('../dist/src/cli/demo.js', import.meta.url)), []);
    const { code } = await demo.exited;
    expect(code).toBe(0);
    expect(demo.stdout.trim().split('\n').pop()).toBe('6');
  });
});

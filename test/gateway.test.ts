import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gatewayCall, http } from './helpers/http.js';
import { killAll, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';

const SLOW = fileURLToPath(new URL('./fixtures/slow-services.js', import.meta.url));

describe('HTTP gateway', () => {
  let relay: RunningRelay;
  let office: Proc;
  let slow: Proc;

  beforeAll(async () => {
    relay = await startRelay(['--max-message', '1KiB']);
    office = await startNode(relay.addr, ['--name', 'office-1']);
    slow = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
  });
  afterAll(killAll);

  it('calls a method with a JSON array body', async () => {
    const r = await gatewayCall(relay.port, 'Arith.Multiply', [2, 3]);
    expect(r).toMatchObject({ status: 200, json: { result: 6 } });
  });

  it('takes an empty body as no arguments, and ?node= to pick the node', async () => {
    const r = await http(`http://127.0.0.1:${relay.port}/call/Slow.Where?node=slow-1`, { method: 'POST' });
    expect(r).toMatchObject({ status: 200, json: { result: 'slow-1' } });
    const none = await gatewayCall(relay.port, 'Slow.Where', [], '?node=nope');
    expect(none.status).toBe(404);
    expect(none.json).toMatchObject({ error: { code: 'NO_NODE', message: expect.stringContaining('no node named nope'), data: { reason: 'node-not-found' } } });
  });

  it('maps errors to HTTP statuses', async () => {
    const cases: Array<[string, unknown[] | string, string, number, string]> = [
      ['Nope.Thing', [], '', 404, 'NO_SERVICE'],
      ['Arith.Power', [2, 3], '', 404, 'NO_METHOD'],
      ['Arith.Divide', [1, 0], '', 500, 'APP_ERROR'],
      ['Arith.Multiply', '[2,', '', 400, 'BAD_REQUEST'],
      ['Arith.Multiply', '{"a":1}', '', 400, 'BAD_REQUEST'],
      ['Arith.Multiply', [2, 3], '?timeout=soon', 400, 'BAD_REQUEST'],
      ['NoDot', [], '', 400, 'BAD_REQUEST'],
      ['Hello.Hello', ['bob'], '', 401, 'NOT_LOGGED_IN'],
      ['Hello.Login', ['alice:wrong'], '', 403, 'LOGIN_FAILED'],
      ['Slow.Sleep', [5_000], '?timeout=300ms', 504, 'TIMEOUT'],
      ['Slow.Echo', JSON.stringify(['x'.repeat(70 * 1024)]), '', 413, 'TOO_LARGE'],
    ];
    for (const [method, body, query, status, code] of cases) {
      const r = await gatewayCall(relay.port, method, body, query);
      expect({ method, status: r.status, code: (r.json as { error?: { code: string } }).error?.code }).toEqual({ method, status, code });
      expect((r.json as { error: { message: string } }).error.message.length).toBeGreaterThan(10);
    }
  });

  it('answers 405 to a GET and 426 to a plain page request', async () => {
    const get = await http(`http://127.0.0.1:${relay.port}/call/Arith.Multiply`);
    expect(get.status).toBe(405);
    const page = await http(`http://127.0.0.1:${relay.port}/`);
    expect(page.status).toBe(426);
    expect(page.body).toContain('POST a JSON array');
  });

  it('accepts a Bearer caller token and refuses a malformed Authorization header', async () => {
    const ok = await gatewayCall(relay.port, 'Arith.Multiply', [4, 5], '', { authorization: 'Bearer abc123' });
    expect(ok).toMatchObject({ status: 200, json: { result: 20 } });
    const bad = await gatewayCall(relay.port, 'Arith.Multiply', [4, 5], '', { authorization: 'Basic YTpi' });
    expect(bad.status).toBe(401);
    expect(bad.json).toMatchObject({ error: { code: 'UNAUTHORIZED' } });
  });

  it('makes each request its own session: a Login does not carry over, and the session is closed on the node', async () => {
    const from = office.logs.length;
    const login = await gatewayCall(relay.port, 'Hello.Login', ['alice:secret']);
    expect(login.status).toBe(200);
    const closed = await office.waitForMsg('session closed', 10_000, from);
    expect(closed.session).toMatch(/-h[0-9a-z]+$/);
    const hello = await gatewayCall(relay.port, 'Hello.Hello', ['bob']);
    expect(hello.status).toBe(401);
    expect(hello.json).toMatchObject({ error: { code: 'NOT_LOGGED_IN' } });
  });

  it('aborts the handler when the HTTP client goes away', async () => {
    const from = slow.logs.length;
    const controller = new AbortController();
    const call = fetch(`http://127.0.0.1:${relay.port}/call/Slow.Sleep`, { method: 'POST', body: '[60000]', signal: controller.signal });
    const started = await slow.waitForLog(
      (l) => l.msg === 'test handler started' && l.method === 'Slow.Sleep' && l.ms === 60_000,
      10_000,
      'the call started',
      from,
    );
    controller.abort();
    await expect(call).rejects.toThrow();
    // This call's own end: an earlier test's call that timed out may log its abort meanwhile.
    const aborted = await slow.waitForLog((l) => l.msg === 'test handler aborted' && l.session === started.session, 10_000, 'the call aborted', from);
    expect(aborted.reason).toBe('CANCELLED');
  });

  it('answers 502 NODE_LOST when the node dies during the call', async () => {
    const victim = await startNode(relay.addr, ['--name', 'victim', '--services', SLOW]);
    const call = gatewayCall(relay.port, 'Slow.Sleep', [60_000], '?node=victim');
    await victim.waitForMsg('test handler started');
    victim.kill('SIGKILL');
    const r = await call;
    expect(r.status).toBe(502);
    expect(r.json).toMatchObject({ error: { code: 'NODE_LOST' } });
  });
});

describe('/healthz and /readyz', () => {
  afterAll(killAll);

  it('/readyz is 503 until the required node and service are there, and again after the node leaves', async () => {
    const relay = await startRelay(['--require-node', 'office-1', '--require-service', 'KV']);
    const url = `http://127.0.0.1:${relay.port}`;
    expect((await http(`${url}/healthz`)).status).toBe(200);
    const before = await http(`${url}/readyz`);
    expect(before.status).toBe(503);
    expect(before.json).toEqual({ ready: false, reasons: ['required node office-1 is not connected', 'no node serves required service KV'] });

    const node = await startNode(relay.addr, ['--name', 'office-1']);
    await relay.proc.waitForMsg('node connected');
    expect(await http(`${url}/readyz`)).toMatchObject({ status: 200, json: { ready: true, reasons: [] } });

    const from = relay.proc.logs.length;
    node.kill('SIGTERM');
    await relay.proc.waitForMsg('node disconnected', 10_000, from);
    const after = await http(`${url}/readyz`);
    expect(after.status).toBe(503);
    expect((after.json as { reasons: string[] }).reasons).toContain('required node office-1 is not connected');
  });

  it('serves /metrics and /nodes on the admin listener only, when one is set', async () => {
    const relay = await startRelay(['--admin-listen', '127.0.0.1:0']);
    const admin = (await relay.proc.waitForMsg('admin listening')).port as number;
    expect(admin).not.toBe(relay.port);
    await startNode(relay.addr, ['--name', 'office-1']);
    const nodes = await http(`http://127.0.0.1:${admin}/nodes`);
    expect(nodes.status).toBe(200);
    expect((nodes.json as Array<{ name: string; services: Record<string, string[]> }>)[0]).toMatchObject({
      name: 'office-1',
      services: { Arith: ['Divide', 'Multiply'] },
    });
    expect((await http(`http://127.0.0.1:${admin}/metrics`)).status).toBe(200);
    expect((await http(`http://127.0.0.1:${admin}/readyz`)).status).toBe(200);
    expect((await http(`http://127.0.0.1:${relay.port}/metrics`)).status).toBe(404);
    expect((await http(`http://127.0.0.1:${relay.port}/nodes`)).status).toBe(404);
    expect((await http(`http://127.0.0.1:${admin}/call/Arith.Multiply`, { method: 'POST', body: '[2,3]' })).status).toBe(404);
    expect(await gatewayCall(relay.port, 'Arith.Multiply', [2, 3])).toMatchObject({ status: 200, json: { result: 6 } });
  });
});

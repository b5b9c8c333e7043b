import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encode } from '../src/wire/codec.js';
import { gatewayCall, metric, scrape } from './helpers/http.js';
import { killAll, runCall, startNode, startRelay, type Proc, type RunningRelay } from './helpers/processes.js';

const SLOW = fileURLToPath(new URL('./fixtures/slow-services.js', import.meta.url));

describe('/metrics', () => {
  let relay: RunningRelay;
  let office: Proc;

  beforeAll(async () => {
    relay = await startRelay();
    office = await startNode(relay.addr, ['--name', 'office-1']);
  });
  afterAll(killAll);

  it('counts known calls by service, method and outcome', async () => {
    for (let i = 0; i < 3; i++) expect((await gatewayCall(relay.port, 'Arith.Multiply', [i, 2])).status).toBe(200);
    expect((await runCall(relay.addr, ['Arith.Multiply', '2', '3'])).code).toBe(0);
    expect((await gatewayCall(relay.port, 'Arith.Divide', [1, 0])).status).toBe(500);
    expect((await runCall(relay.addr, ['Arith.Divide', '1', '0'])).code).toBe(1);
    expect((await gatewayCall(relay.port, 'Nope.Thing', [])).status).toBe(404);

    const m = await scrape(relay.port);
    expect(metric(m, 'tunnel_relay_calls_total', { service: 'Arith', method: 'Multiply', code: 'OK' })).toBe(4);
    expect(metric(m, 'tunnel_relay_calls_total', { service: 'Arith', method: 'Divide', code: 'APP_ERROR' })).toBe(2);
    // A name no node serves is not a label: callers could otherwise create series at will.
    expect(metric(m, 'tunnel_relay_calls_total', { service: '(unknown)', method: '(unknown)', code: 'NO_SERVICE' })).toBe(1);
    expect(m.some((s) => s.labels.service === 'Nope')).toBe(false);
    expect(metric(m, 'tunnel_relay_call_duration_seconds_count', { service: 'Arith', method: 'Multiply' })).toBe(4);
    expect(metric(m, 'tunnel_relay_call_duration_seconds_bucket', { service: 'Arith', method: 'Multiply', le: '+Inf' })).toBe(4);
    expect(metric(m, 'tunnel_relay_calls_in_flight')).toBe(0);
    expect(metric(m, 'tunnel_relay_nodes_connected')).toBe(1);
    expect(metric(m, 'tunnel_relay_caller_connections', { transport: 'websocket' })).toBe(0);
    expect(metric(m, 'tunnel_relay_draining')).toBe(0);
    expect(metric(m, 'tunnel_relay_received_bytes_total')).toBeGreaterThan(100);
    expect(metric(m, 'tunnel_relay_sent_bytes_total')).toBeGreaterThan(100);
    expect(metric(m, 'process_resident_memory_bytes')).toBeGreaterThan(0);
  });

  it('counts rejected connections by reason and node reconnects by name', async () => {
    const ws = new WebSocket(`ws://${relay.addr}/`);
    await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
    const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
    ws.send(encode([0, 1, 'Arith.Multiply', encode([2, 3])]));
    expect(await closed).toBe(1002);

    const from = relay.proc.logs.length;
    office.kill();
    await relay.proc.waitForMsg('node disconnected', 10_000, from);
    office = await startNode(relay.addr, ['--name', 'office-1']);
    const m = await scrape(relay.port);
    expect(metric(m, 'tunnel_relay_rejected_connections_total', { reason: 'protocol_error' })).toBe(1);
    expect(metric(m, 'tunnel_relay_node_reconnects_total', { node: 'office-1' })).toBe(1);
    expect(metric(m, 'tunnel_relay_nodes_connected')).toBe(1);
  });

  it('reports a call in flight and a connected caller while they last', async () => {
    const slow = await startNode(relay.addr, ['--name', 'slow-1', '--services', SLOW]);
    const call = runCall(relay.addr, ['Slow.Sleep', '1000']);
    await slow.waitForMsg('test handler started');
    const m = await scrape(relay.port);
    expect(metric(m, 'tunnel_relay_calls_in_flight')).toBe(1);
    expect(metric(m, 'tunnel_relay_caller_connections', { transport: 'websocket' })).toBe(1);
    expect(metric(m, 'tunnel_relay_nodes_connected')).toBe(2);
    expect(await call).toMatchObject({ code: 0, stdout: '1000\n' });
    const after = await scrape(relay.port);
    expect(metric(after, 'tunnel_relay_calls_in_flight')).toBe(0);
    expect(metric(after, 'tunnel_relay_calls_total', { service: 'Slow', method: 'Sleep', code: 'OK' })).toBe(1);
    expect(metric(after, 'tunnel_relay_call_duration_seconds_bucket', { service: 'Slow', method: 'Sleep', le: '0.5' })).toBe(0);
    expect(metric(after, 'tunnel_relay_call_duration_seconds_bucket', { service: 'Slow', method: 'Sleep', le: '2.5' })).toBe(1);
  });
});

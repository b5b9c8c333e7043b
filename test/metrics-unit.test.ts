import { describe, expect, it } from 'vitest';
import { MAX_LABEL_LENGTH, OTHER, RelayMetrics, UNKNOWN, type RelayGauges } from '../src/relay/metrics.js';

/**
 * The relay's Prometheus registry held in the hand: each method of RelayMetrics is called and the
 * series are read back from the text exposition, as /metrics serves it.
 */

/** Gauges the test moves by hand. */
function gauges() {
  const state = {
    inFlight: 0,
    nodes: 0,
    callers: { websocket: 0, http: 0 },
    bytes: { received: 0, sent: 0 },
    draining: false,
    cluster: undefined as { connected: boolean; peers: number; unreachable: number } | undefined,
  };
  const g: RelayGauges = {
    callsInFlight: () => state.inFlight,
    nodesConnected: () => state.nodes,
    callerConnections: () => state.callers,
    bytes: () => state.bytes,
    draining: () => state.draining,
    cluster: () => state.cluster,
  };
  return { state, g };
}

/** The value of one sample of `name` with exactly `labels`, or undefined when the series is absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const got = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    const want = Object.entries(labels);
    if (want.length === Object.keys(got).length && want.every(([k, v]) => got[k] === v)) return Number(m[3]);
  }
  return undefined;
}

/** Every label set of `name` in the text. */
function series(text: string, name: string): Array<Record<string, string>> {
  const out: Array<Record<string, string>> = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)\{(.*)\} \S+$/.exec(line);
    if (m?.[1] === name) out.push(Object.fromEntries([...m[2]!.matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1]!, x[2]!])));
  }
  return out;
}

const calls = 'tunnel_relay_calls_total';
const duration = 'tunnel_relay_call_duration_seconds';

describe('RelayMetrics: calls', () => {
  it('counts a call by service, method and code, and times it', async () => {
    const m = new RelayMetrics(gauges().g);
    m.callEnded('Arith.Multiply', 'OK', 0.003, true);
    m.callEnded('Arith.Multiply', 'OK', 0.2, true);
    m.callEnded('Arith.Multiply', 'TIMEOUT', 5, true);
    const text = await m.render();
    expect(sample(text, calls, { service: 'Arith', method: 'Multiply', code: 'OK' })).toBe(2);
    expect(sample(text, calls, { service: 'Arith', method: 'Multiply', code: 'TIMEOUT' })).toBe(1);
    expect(sample(text, `${duration}_count`, { service: 'Arith', method: 'Multiply' })).toBe(3);
    expect(sample(text, `${duration}_sum`, { service: 'Arith', method: 'Multiply' })).toBeCloseTo(5.203, 6);
    expect(sample(text, `${duration}_bucket`, { service: 'Arith', method: 'Multiply', le: '0.005' })).toBe(1);
    expect(sample(text, `${duration}_bucket`, { service: 'Arith', method: 'Multiply', le: '0.25' })).toBe(2);
    expect(sample(text, `${duration}_bucket`, { service: 'Arith', method: 'Multiply', le: '+Inf' })).toBe(3);
  });

  it('a call without a duration is counted and not timed', async () => {
    const m = new RelayMetrics(gauges().g);
    m.callEnded('Kv.Get', 'NO_NODE', undefined, true);
    const text = await m.render();
    expect(sample(text, calls, { service: 'Kv', method: 'Get', code: 'NO_NODE' })).toBe(1);
    expect(sample(text, `${duration}_count`, { service: 'Kv', method: 'Get' })).toBeUndefined();
  });

  it('defers the update to the check phase; render() counts what is pending', async () => {
    const m = new RelayMetrics(gauges().g);
    m.callEnded('A.b', 'OK', 0.001, true);
    // Read without render(): nothing recorded yet in this turn.
    const counter = m.registry.getSingleMetric(calls)!;
    expect((await counter.get()).values).toHaveLength(0);
    await new Promise<void>((resolve) => setImmediate(resolve));
    const values = (await counter.get()).values;
    expect(values).toEqual([expect.objectContaining({ labels: { service: 'A', method: 'b', code: 'OK' }, value: 1 })]);
    // Nothing counted twice by a render after the deferred update.
    expect(sample(await m.render(), calls, { service: 'A', method: 'b', code: 'OK' })).toBe(1);
  });

  it('a request refused before its method was known counts under (unknown), whatever name it carried', async () => {
    const m = new RelayMetrics(gauges().g);
    m.callEnded('Whatever.TheCallerSent', 'NO_SERVICE', undefined, false);
    const text = await m.render();
    expect(sample(text, calls, { service: UNKNOWN, method: UNKNOWN, code: 'NO_SERVICE' })).toBe(1);
    expect(text).not.toContain('TheCallerSent');
  });

  it('cuts long names to 64 characters, marked with ~', async () => {
    const m = new RelayMetrics(gauges().g);
    const longMethod = 'M'.repeat(100);
    m.callEnded(`Svc.${longMethod}`, 'OK', 0.001, true);
    const text = await m.render();
    const cut = `${'M'.repeat(MAX_LABEL_LENGTH - 1)}~`;
    expect(sample(text, calls, { service: 'Svc', method: cut, code: 'OK' })).toBe(1);
    expect(text).not.toContain(longMethod);
  });

  it("custom error codes take at most 50 labels; the project's own codes are never capped", async () => {
    const m = new RelayMetrics(gauges().g);
    for (let i = 0; i < 60; i++) m.callEnded('S.m', `CUSTOM_${i}`, undefined, true);
    m.callEnded('S.m', 'OVERLOADED', undefined, true);
    const text = await m.render();
    const codes = series(text, calls).map((l) => l.code);
    expect(codes.filter((c) => c.startsWith('CUSTOM_'))).toHaveLength(50);
    expect(sample(text, calls, { service: 'S', method: 'm', code: OTHER })).toBe(10);
    expect(sample(text, calls, { service: 'S', method: 'm', code: 'OVERLOADED' })).toBe(1);
  });

  it('methods take at most 200 labels on the counter and 50 histograms; the rest share (other)', async () => {
    const m = new RelayMetrics(gauges().g);
    for (let i = 0; i < 210; i++) m.callEnded(`Svc.m${i}`, 'OK', 0.01, true);
    const text = await m.render();
    const methods = series(text, calls).map((l) => l.method);
    expect(methods.filter((x) => x !== OTHER)).toHaveLength(200);
    expect(sample(text, calls, { service: OTHER, method: OTHER, code: 'OK' })).toBe(10);
    const timed = new Set(series(text, `${duration}_count`).map((l) => l.method));
    expect(timed.size).toBe(51);
    expect(sample(text, `${duration}_count`, { service: OTHER, method: OTHER })).toBe(160);
    expect(sample(text, `${duration}_count`, { service: 'Svc', method: 'm0' })).toBe(1);
  });

  it('pairs of method and code beyond 2000 share one series', async () => {
    const m = new RelayMetrics(gauges().g);
    const codes = ['OK', 'NO_SERVICE', 'NO_METHOD', 'NO_NODE', 'NODE_LOST', 'TIMEOUT', 'CANCELLED', 'BAD_REQUEST', 'TOO_LARGE', 'OVERLOADED', 'APP_ERROR'];
    for (let i = 0; i < 200; i++) for (const code of codes) m.callEnded(`S.m${i}`, code, undefined, true);
    const text = await m.render();
    const all = series(text, calls);
    expect(all).toHaveLength(2001);
    expect(sample(text, calls, { service: OTHER, method: OTHER, code: OTHER })).toBe(200 * codes.length - 2000);
  });

  it('counts every call exactly once however many distinct names arrive in one flush or many (past the 4096 remembered pairs)', async () => {
    const m = new RelayMetrics(gauges().g);
    // 6,000 names a caller made up, refused before they were known, in one flush; then the first
    // 300 again, known, over three flushes; and one real method between them all.
    for (let i = 0; i < 6_000; i++) {
      m.callEnded(`Junk.n${i}`, 'NO_SERVICE', undefined, false);
      if (i % 1_000 === 0) m.callEnded('Arith.Multiply', 'OK', 0.001, true);
    }
    let text = await m.render();
    expect(sample(text, calls, { service: UNKNOWN, method: UNKNOWN, code: 'NO_SERVICE' })).toBe(6_000);
    expect(sample(text, calls, { service: 'Arith', method: 'Multiply', code: 'OK' })).toBe(6);
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 300; i++) m.callEnded(`Junk.n${i}`, 'OK', 0.002, true);
      m.callEnded('Arith.Multiply', 'OK', 0.001, true);
      text = await m.render();
    }
    expect(sample(text, calls, { service: 'Arith', method: 'Multiply', code: 'OK' })).toBe(9);
    expect(sample(text, calls, { service: 'Junk', method: 'n0', code: 'OK' })).toBe(3);
    // 200 method labels in all, Arith.Multiply among them: 199 of the junk names keep theirs.
    expect(sample(text, calls, { service: OTHER, method: OTHER, code: 'OK' })).toBe(3 * (300 - 199));
    expect(sample(text, `${duration}_count`, { service: 'Arith', method: 'Multiply' })).toBe(9);
  });

  it('two relays in one process keep separate counts', async () => {
    const a = new RelayMetrics(gauges().g);
    const b = new RelayMetrics(gauges().g);
    a.callEnded('X.y', 'OK', undefined, true);
    expect(sample(await a.render(), calls, { service: 'X', method: 'y', code: 'OK' })).toBe(1);
    expect(sample(await b.render(), calls, { service: 'X', method: 'y', code: 'OK' })).toBeUndefined();
  });
});

describe('RelayMetrics: counters and gauges', () => {
  it('counts reconnects by node, refusals by reason, routes, auth and slow consumers', async () => {
    const m = new RelayMetrics(gauges().g);
    m.nodeReconnected('office-1');
    m.nodeReconnected('office-1');
    m.connectionRejected('hello-timeout');
    m.routed(true);
    m.routed(true);
    m.routed(false);
    m.clusterRejected('forged');
    m.authFailed('websocket');
    m.authRefused('http');
    m.slowConsumer('msgpack-rpc');
    const text = await m.render();
    expect(sample(text, 'tunnel_relay_node_reconnects_total', { node: 'office-1' })).toBe(2);
    expect(sample(text, 'tunnel_relay_rejected_connections_total', { reason: 'hello-timeout' })).toBe(1);
    expect(sample(text, 'tunnel_relay_routed_calls_total', { route: 'local' })).toBe(2);
    expect(sample(text, 'tunnel_relay_routed_calls_total', { route: 'remote' })).toBe(1);
    expect(sample(text, 'tunnel_relay_cluster_rejected_messages_total', { reason: 'forged' })).toBe(1);
    expect(sample(text, 'tunnel_relay_auth_failures_total', { door: 'websocket' })).toBe(1);
    expect(sample(text, 'tunnel_relay_auth_backoff_refusals_total', { door: 'http' })).toBe(1);
    expect(sample(text, 'tunnel_relay_slow_consumers_total', { transport: 'msgpack-rpc' })).toBe(1);
  });

  it('node names on the reconnect counter are capped at 200 and cut to 64 characters', async () => {
    const m = new RelayMetrics(gauges().g);
    for (let i = 0; i < 205; i++) m.nodeReconnected(`n${i}`);
    m.nodeReconnected('x'.repeat(100));
    const text = await m.render();
    expect(series(text, 'tunnel_relay_node_reconnects_total')).toHaveLength(201);
    expect(sample(text, 'tunnel_relay_node_reconnects_total', { node: OTHER })).toBe(6);
  });

  it('observes presence lag, ignoring a negative one (clock skew)', async () => {
    const m = new RelayMetrics(gauges().g);
    m.presenceLag(0.02);
    m.presenceLag(-1);
    const text = await m.render();
    expect(sample(text, 'tunnel_relay_presence_lag_seconds_count')).toBe(1);
    expect(sample(text, 'tunnel_relay_presence_lag_seconds_sum')).toBeCloseTo(0.02, 9);
  });

  it('reads the gauges at scrape time', async () => {
    const { state, g } = gauges();
    const m = new RelayMetrics(g);
    let text = await m.render();
    expect(sample(text, 'tunnel_relay_calls_in_flight')).toBe(0);
    expect(sample(text, 'tunnel_relay_draining')).toBe(0);
    state.inFlight = 7;
    state.nodes = 3;
    state.callers = { websocket: 4, http: 2 };
    state.draining = true;
    text = await m.render();
    expect(sample(text, 'tunnel_relay_calls_in_flight')).toBe(7);
    expect(sample(text, 'tunnel_relay_nodes_connected')).toBe(3);
    expect(sample(text, 'tunnel_relay_caller_connections', { transport: 'websocket' })).toBe(4);
    expect(sample(text, 'tunnel_relay_caller_connections', { transport: 'http' })).toBe(2);
    expect(sample(text, 'tunnel_relay_draining')).toBe(1);
  });

  it('the cluster gauges are absent without a cluster', async () => {
    const { g } = gauges();
    const text = await new RelayMetrics({ ...g, cluster: undefined }).render();
    expect(text).toContain('tunnel_relay_calls_in_flight');
    expect(text).not.toMatch(/^tunnel_relay_cluster_(connected|peers|unreachable_peers)\b/m);
  });

  it('the cluster gauges follow the cluster at each scrape', async () => {
    const { state, g } = gauges();
    const m = new RelayMetrics(g);
    state.cluster = { connected: true, peers: 2, unreachable: 1 };
    const text = await m.render();
    expect(sample(text, 'tunnel_relay_cluster_connected')).toBe(1);
    expect(sample(text, 'tunnel_relay_cluster_peers')).toBe(2);
    expect(sample(text, 'tunnel_relay_cluster_unreachable_peers')).toBe(1);
    state.cluster = { connected: false, peers: 0, unreachable: 0 };
    expect(sample(await m.render(), 'tunnel_relay_cluster_connected')).toBe(0);
  });

  it('the byte counters report what the sockets added since the last scrape', async () => {
    const { state, g } = gauges();
    const m = new RelayMetrics(g);
    state.bytes = { received: 100, sent: 40 };
    let text = await m.render();
    expect(sample(text, 'tunnel_relay_received_bytes_total')).toBe(100);
    expect(sample(text, 'tunnel_relay_sent_bytes_total')).toBe(40);
    state.bytes = { received: 250, sent: 40 };
    text = await m.render();
    expect(sample(text, 'tunnel_relay_received_bytes_total')).toBe(250);
    expect(sample(text, 'tunnel_relay_sent_bytes_total')).toBe(40);
  });

  it('includes the process metrics and names its content type', async () => {
    const m = new RelayMetrics(gauges().g);
    const text = await m.render();
    expect(sample(text, 'process_cpu_user_seconds_total')).toBeGreaterThanOrEqual(0);
    expect(m.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
  });
});

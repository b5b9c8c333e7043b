import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type Client } from '../src/client/client.js';
import { formatNodes, toJson } from '../src/cli/fleet-output.js';
import { TunnelNode } from '../src/node/node.js';
import { Relay } from '../src/relay/relay.js';
import { ServiceRegistry } from '../src/rpc/registry.js';
import { killAll, runCall } from './helpers/processes.js';

/**
 * tunnel-call's stdout is a pipe here, as in `tunnel-call … | wc -c`: Node writes pipes
 * asynchronously, and output written just before exiting used to be cut at 64 KiB.
 */
const MIB = 1024 * 1024;
const WIDE_NODES = 18;

/** A service of `count` methods with 120-character names: a node's hello stays under its 64 KiB bound. */
function wideService(count: number): Record<string, () => number> {
  const impl: Record<string, () => number> = {};
  for (let i = 0; i < count; i++) impl[`M${String(i).padStart(4, '0')}${'m'.repeat(115)}`] = () => i;
  return impl;
}

let relay: Relay;
let addr: string;
let client: Client;
const nodes: TunnelNode[] = [];

beforeAll(async () => {
  relay = new Relay({ listen: '127.0.0.1:0' });
  const { port } = await relay.listen();
  addr = `127.0.0.1:${port}`;
  const big = new ServiceRegistry().register('Big', {
    Text: (n: number) => 'x'.repeat(n),
    Json: (n: number) => ({ data: 'y'.repeat(n), n }),
  });
  nodes.push(new TunnelNode({ relay: addr, name: 'big-1', services: big }));
  // Enough nodes with long method names that --list prints more than 1 MiB.
  for (let i = 0; i < WIDE_NODES; i++) {
    nodes.push(new TunnelNode({ relay: addr, name: `wide-${String(i).padStart(2, '0')}`, services: new ServiceRegistry().register('Wide', wideService(500)) }));
  }
  await Promise.all(nodes.map((n) => n.start().waitConnected()));
  client = await connect(addr);
}, 60_000);

afterAll(async () => {
  await client?.close();
  await Promise.all(nodes.map((n) => n.stop(0)));
  await relay?.close();
  await killAll();
});

describe('tunnel-call writes all of a large output to a pipe before exiting', () => {
  it('a 1 MiB result, plain', async () => {
    const r = await runCall(addr, ['Big.Text', String(MIB)]);
    expect(r.code).toBe(0);
    expect(r.stdout.length).toBe(MIB + 1);
    expect(r.stdout).toBe(`${'x'.repeat(MIB)}\n`);
  });

  it('a 1 MiB result, --json', async () => {
    const r = await runCall(addr, ['--json', 'Big.Json', String(MIB)]);
    expect(r.code).toBe(0);
    const want = `${JSON.stringify({ result: { data: 'y'.repeat(MIB), n: MIB } })}\n`;
    expect(r.stdout.length).toBe(want.length);
    expect(r.stdout).toBe(want);
  });

  it('--list of more than 1 MiB, plain and --json', async () => {
    const listed = await client.nodes();
    const wantJson = `${toJson({ nodes: listed })}\n`;
    const wantText = `${formatNodes(listed)}\n`;
    expect(wantText.length).toBeGreaterThan(MIB);

    const json = await runCall(addr, ['--list', '--json']);
    expect(json.code).toBe(0);
    expect(json.stdout.length).toBe(wantJson.length);
    expect(json.stdout).toBe(wantJson);

    const text = await runCall(addr, ['--list']);
    expect(text.code).toBe(0);
    // "connected since … (3s ago)" may tick between the two listings; everything else is the same.
    // The padding after it goes too: "(9s ago) " in one listing is "(10s ago)" in the other, and so
    // does the header's, since the column is as wide as its widest value.
    const ago = (s: string) => s.replace(/\(\d+[smhd] ago\) */g, '(ago) ').replace(/CONNECTED SINCE +/, 'CONNECTED SINCE ');
    expect(ago(text.stdout).length).toBe(ago(wantText).length);
    expect(ago(text.stdout)).toBe(ago(wantText));
  });
});

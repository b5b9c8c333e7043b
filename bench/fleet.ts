/**
 * Connects `count` idle nodes to a relay from this one process (each its own WebSocket, as separate
 * machines would), reports when all are connected, and waits to be killed.
 */
import { TunnelNode } from '../src/node/node.js';
import { ServiceRegistry } from '../src/rpc/registry.js';
import { registerExamples } from '../src/services/index.js';

const [relay = '', countText = '2000', prefix = 'idle-'] = process.argv.slice(2);
const count = Number(countText);
const services = registerExamples(new ServiceRegistry());
const nodes: TunnelNode[] = [];
for (let i = 0; i < count; i++) {
  const node = new TunnelNode({ relay, name: `${prefix}${i}`, services });
  nodes.push(node.start());
  // Connect in batches so that the relay's accept queue is not the thing being measured.
  if (i % 100 === 99) await Promise.all(nodes.slice(-100).map((n) => n.waitConnected(60_000)));
}
await Promise.all(nodes.map((n) => n.waitConnected(60_000)));
process.stdout.write(`${JSON.stringify({ connected: nodes.length })}\n`);

import { connect } from '../client/client.js';
import { TunnelNode } from '../node/node.js';
import { Relay } from '../relay/relay.js';
import { ServiceRegistry } from '../rpc/registry.js';
import { registerExamples } from '../services/index.js';

/**
 * Quick start: a relay and a node on loopback in this process, one call through the tunnel.
 * The same steps as `tunnel-relay`, `tunnel-node` and `tunnel-call Arith.Multiply 2 3`: three lines
 * say what happens, the last one is the answer, 6.
 */
const relay = new Relay({ listen: '127.0.0.1:0' });
const { url } = await relay.listen();
console.log(`1. relay listening on ${url}`);

const node = new TunnelNode({ relay: url, name: 'demo-node', services: registerExamples(new ServiceRegistry()) });
node.start();
await node.waitConnected(5_000);
console.log(`2. node ${node.name} dialled out to the relay; it serves Arith, Hello, KV, Server`);

const client = await connect(url);
console.log('3. a caller asks the relay for Arith.Multiply 2 3; the node answers:');
const product = await client.call<number>('Arith.Multiply', 2, 3);
console.log(product);

await client.close();
await node.stop();
await relay.close();
process.exit(product === 6 ? 0 : 1);

/**
 * The NATS side of the native-call comparison: answers requests on `bench.rpc` whose payload is
 * MessagePack `[method, params]` (`Arith.Multiply [2, 3]` from bench/load.ts) with the MessagePack
 * result, decoding and encoding as a node does. Prints `ready` once subscribed; runs until killed.
 *
 *   node dist/bench/nats-responder.js 127.0.0.1:4222
 */
import { connect } from '@nats-io/transport-node';
import { decode, encode } from '../src/wire/codec.js';

const SUBJECT = 'bench.rpc';

const server = process.argv[2] ?? '127.0.0.1:4222';
const nc = await connect({ servers: server });
nc.subscribe(SUBJECT, {
  callback: (err, msg) => {
    if (err) return;
    const [method, params] = decode(msg.data) as [string, number[]];
    msg.respond(encode(method === 'Arith.Multiply' ? params[0]! * params[1]! : null));
  },
});
await nc.flush();
process.stdout.write('ready\n');

import { MsgpackRpcPort } from '../relay/msgpack-rpc-port.js';
import { Relay } from '../relay/relay.js';
import { parseDuration, parseSize } from '../util/units.js';
import { command, parse, logger, onShutdown, usageError } from './common.js';

const argv = await parse(
  command('tunnel-relay', '$0 [options]\n\nRuns the public relay: nodes dial in and register their services; callers call Service.Method through it.')
  .option('listen', { type: 'string', default: ':9090', describe: 'Address to listen on, [host]:port (empty host = every interface; port 0 = any free port)' })
  .option('heartbeat-timeout', { type: 'string', default: '30s', describe: 'Drop a node or caller that sends nothing (not even a pong) for this long' })
  .option('hello-timeout', { type: 'string', default: '5s', describe: 'Close connections that do not say hello within this time' })
  .option('default-timeout', { type: 'string', default: '30s', describe: 'Deadline of calls whose caller sets none' })
  .option('max-timeout', { type: 'string', default: '5m', describe: 'Longest deadline a caller may ask for (longer ones are capped)' })
  .option('max-message', { type: 'string', default: '16MiB', describe: 'Largest WebSocket message accepted (params or result plus envelope); bigger closes with 1009' })
  .option('msgpack-rpc-listen', { type: 'string', describe: 'Also open a MessagePack-RPC port here, [host]:port, for existing msgpack-rpc clients such as Go net/rpc with ugorji\'s MsgpackSpecRpc (off unless given; see docs/PROTOCOL.md)' })
  .example('$0 --listen :9090', 'listen on every interface, port 9090')
  .example('$0 --listen :9090 --msgpack-rpc-listen :9091', 'WebSocket callers and nodes on 9090, MessagePack-RPC callers on 9091')
  .example('$0 --listen 127.0.0.1:0', 'loopback only, any free port (printed in the "relay listening" log line)')
  .epilog('Every flag can also be set as an environment variable: TUNNEL_LISTEN, TUNNEL_HEARTBEAT_TIMEOUT, ...')
  ,
);

const log = logger('tunnel-relay', argv.logLevel);
let relay: Relay;
let rpcPort: MsgpackRpcPort | undefined;
try {
  const maxMessage = parseSize(argv.maxMessage, 'max-message') + 64 * 1024;
  relay = new Relay({
    listen: argv.listen,
    log,
    heartbeatTimeout: parseDuration(argv.heartbeatTimeout, 'heartbeat-timeout'),
    helloTimeout: parseDuration(argv.helloTimeout, 'hello-timeout'),
    defaultTimeout: parseDuration(argv.defaultTimeout, 'default-timeout'),
    maxTimeout: parseDuration(argv.maxTimeout, 'max-timeout'),
    maxMessage,
  });
  if (argv.msgpackRpcListen !== undefined) rpcPort = new MsgpackRpcPort(relay, { listen: argv.msgpackRpcListen, log, maxMessage });
} catch (err) {
  usageError('tunnel-relay', (err as Error).message);
}
try {
  await relay.listen();
} catch (err) {
  log.fatal({ listen: argv.listen, err: (err as Error).message }, 'cannot listen');
  process.exit(1);
}
try {
  await rpcPort?.listen();
} catch (err) {
  log.fatal({ listen: argv.msgpackRpcListen, err: (err as Error).message }, 'cannot listen for msgpack-rpc');
  process.exit(1);
}
log.warn('no node or caller authentication is configured: anyone who reaches this port can register nodes and call them');
onShutdown(log, async () => {
  await rpcPort?.close();
  await relay.close();
});

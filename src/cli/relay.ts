import { MsgpackRpcPort } from '../relay/msgpack-rpc-port.js';
import { Relay } from '../relay/relay.js';
import { SELECTORS, type SelectorName } from '../relay/selectors.js';
import { parseDuration, parseSize } from '../util/units.js';
import { command, parse, logger, onShutdown, PRECEDENCE, usageError } from './common.js';

const argv = await parse(
  command('tunnel-relay', '$0 [options]\n\nRuns the public relay: nodes dial in and register their services; callers call Service.Method through it.')
  .option('listen', { type: 'string', default: ':9090', describe: 'Address to listen on, [host]:port (empty host = every interface; port 0 = any free port)' })
  .option('heartbeat-timeout', { type: 'string', default: '30s', describe: 'Drop a node or caller that sends nothing (not even a pong) for this long' })
  .option('hello-timeout', { type: 'string', default: '5s', describe: 'Close connections that do not say hello within this time' })
  .option('default-timeout', { type: 'string', default: '30s', describe: 'Deadline of calls whose caller sets none' })
  .option('max-timeout', { type: 'string', default: '5m', describe: 'Longest deadline a caller may ask for (longer ones are capped)' })
  .option('selector', { type: 'string', choices: SELECTORS, default: 'round-robin', describe: 'How a call that names no node picks one of the nodes serving its service: round-robin, random, or least-pending (fewest calls in flight); callers may override per call' })
  .option('max-message', { type: 'string', default: '16MiB', describe: 'Largest WebSocket message or HTTP gateway body accepted (params or result plus envelope); bigger closes with 1009 or answers 413' })
  .option('admin-listen', { type: 'string', describe: 'Serve /metrics, /nodes, /healthz and /readyz on this separate [host]:port (e.g. 127.0.0.1:9100) and no longer /metrics and /nodes on --listen; recommended, so that metrics and the node list are not public' })
  .option('require-node', { type: 'string', array: true, nargs: 1, describe: '/readyz answers 503 until a node with this name is connected (repeatable)' })
  .option('require-service', { type: 'string', array: true, nargs: 1, describe: '/readyz answers 503 until a node serves this service (repeatable)' })
  .option('drain-timeout', { type: 'string', default: '30s', describe: 'On SIGINT/SIGTERM, how long calls in flight may take to finish before the relay closes (a second signal exits at once)' })
  .option('msgpack-rpc-listen', { type: 'string', describe: 'Also open a MessagePack-RPC port here, [host]:port, for existing msgpack-rpc clients such as Go net/rpc with ugorji\'s MsgpackSpecRpc (off unless given; see docs/PROTOCOL.md)' })
  .example('$0 --listen :9090', 'listen on every interface, port 9090')
  .example('$0 --listen :9090 --msgpack-rpc-listen :9091', 'WebSocket callers and nodes on 9090, MessagePack-RPC callers on 9091')
  .example('$0 --listen 127.0.0.1:0', 'loopback only, any free port (printed in the "relay listening" log line)')
  .example('$0 --listen :9090 --admin-listen 127.0.0.1:9100', 'metrics and node list on a loopback-only admin port')
  .example('$0 --config /etc/tunnel/relay.yaml', 'flags from a file (see docs/deploy/relay.yaml)')
  .epilog(
    'HTTP on the --listen port: POST /call/Service.Method with a JSON array body, GET /healthz, /readyz, /metrics, /nodes.\n' +
      `Every flag can also be set as an environment variable (TUNNEL_LISTEN, TUNNEL_HEARTBEAT_TIMEOUT, ...) or in a --config file. ${PRECEDENCE}`,
  )
  ,
);

const log = logger('tunnel-relay', argv.logLevel);
let relay: Relay;
let rpcPort: MsgpackRpcPort | undefined;
try {
  const maxMessage = parseSize(argv.maxMessage, 'max-message') + 64 * 1024;
  const options = {
    listen: argv.listen,
    heartbeatTimeout: parseDuration(argv.heartbeatTimeout, 'heartbeat-timeout'),
    helloTimeout: parseDuration(argv.helloTimeout, 'hello-timeout'),
    defaultTimeout: parseDuration(argv.defaultTimeout, 'default-timeout'),
    maxTimeout: parseDuration(argv.maxTimeout, 'max-timeout'),
    maxMessage,
    selector: argv.selector as SelectorName,
    adminListen: argv.adminListen,
    requireNode: argv.requireNode ?? [],
    requireService: argv.requireService ?? [],
    drainTimeout: parseDuration(argv.drainTimeout, 'drain-timeout'),
    msgpackRpcListen: argv.msgpackRpcListen,
  };
  // The settings in force after flags, environment and config file are merged: what an operator checks first.
  log.info(options, 'relay starting');
  relay = new Relay({ ...options, log });
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
  // Calls that arrived on the msgpack-rpc port drain with the rest; its listener closes after.
  await relay.drain();
  await rpcPort?.close();
  log.info('relay stopped');
});

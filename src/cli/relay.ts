import { Relay } from '../relay/relay.js';
import { SELECTORS, type SelectorName } from '../relay/selectors.js';
import { parseDuration, parseSize } from '../util/units.js';
import { command, parse, logger, onShutdown, usageError } from './common.js';

const argv = await parse(
  command('tunnel-relay', '$0 [options]\n\nRuns the public relay: nodes dial in and register their services; callers call Service.Method through it.')
  .option('listen', { type: 'string', default: ':9090', describe: 'Address to listen on, [host]:port (empty host = every interface; port 0 = any free port)' })
  .option('heartbeat-timeout', { type: 'string', default: '30s', describe: 'Drop a node or caller that sends nothing (not even a pong) for this long' })
  .option('hello-timeout', { type: 'string', default: '5s', describe: 'Close connections that do not say hello within this time' })
  .option('default-timeout', { type: 'string', default: '30s', describe: 'Deadline of calls whose caller sets none' })
  .option('max-timeout', { type: 'string', default: '5m', describe: 'Longest deadline a caller may ask for (longer ones are capped)' })
  .option('selector', { type: 'string', choices: SELECTORS, default: 'round-robin', describe: 'How a call that names no node picks one of the nodes serving its service: round-robin, random, or least-pending (fewest calls in flight); callers may override per call' })
  .option('max-message', { type: 'string', default: '16MiB', describe: 'Largest WebSocket message accepted (params or result plus envelope); bigger closes with 1009' })
  .example('$0 --listen :9090', 'listen on every interface, port 9090')
  .example('$0 --listen 127.0.0.1:0', 'loopback only, any free port (printed in the "relay listening" log line)')
  .epilog('Every flag can also be set as an environment variable: TUNNEL_LISTEN, TUNNEL_HEARTBEAT_TIMEOUT, ...')
  ,
);

const log = logger('tunnel-relay', argv.logLevel);
let relay: Relay;
try {
  relay = new Relay({
    listen: argv.listen,
    log,
    heartbeatTimeout: parseDuration(argv.heartbeatTimeout, 'heartbeat-timeout'),
    helloTimeout: parseDuration(argv.helloTimeout, 'hello-timeout'),
    defaultTimeout: parseDuration(argv.defaultTimeout, 'default-timeout'),
    maxTimeout: parseDuration(argv.maxTimeout, 'max-timeout'),
    maxMessage: parseSize(argv.maxMessage, 'max-message') + 64 * 1024,
    selector: argv.selector as SelectorName,
  });
} catch (err) {
  usageError('tunnel-relay', (err as Error).message);
}
try {
  await relay.listen();
} catch (err) {
  log.fatal({ listen: argv.listen, err: (err as Error).message }, 'cannot listen');
  process.exit(1);
}
log.warn('no node or caller authentication is configured: anyone who reaches this port can register nodes and call them');
onShutdown(log, () => relay.close());

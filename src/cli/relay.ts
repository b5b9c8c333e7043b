import { Relay } from '../relay/relay.js';
import { LIMIT_DEFAULTS } from '../relay/limits.js';
import { parseDuration, parseSize } from '../util/units.js';
import { command, parse, logger, onShutdown, usageError } from './common.js';

const D = LIMIT_DEFAULTS;
const argv = await parse(
  command('tunnel-relay', '$0 [options]\n\nRuns the public relay: nodes dial in and register their services; callers call Service.Method through it.')
  .option('listen', { type: 'string', default: ':9090', describe: 'Address to listen on, [host]:port (empty host = every interface; port 0 = any free port)' })
  .option('heartbeat-timeout', { type: 'string', default: '30s', describe: 'Drop a node or caller that sends nothing (not even a pong) for this long' })
  .option('hello-timeout', { type: 'string', default: `${D.helloTimeout}ms`, describe: 'Time from connecting to an accepted hello (TLS handshake, upgrade and hello together); slower sockets are closed' })
  .option('default-timeout', { type: 'string', default: '30s', describe: 'Deadline of calls whose caller sets none' })
  .option('max-timeout', { type: 'string', default: '5m', describe: 'Longest deadline a caller may ask for (longer ones are capped)' })
  .option('max-message', { type: 'string', default: '16MiB', describe: 'Largest params or result: bigger ones are answered TOO_LARGE; a WebSocket message bigger than this plus 64 KiB closes with 1009' })
  .option('tls-cert', { type: 'string', describe: 'PEM certificate (full chain) of the relay; with --tls-key the relay serves wss://' })
  .option('tls-key', { type: 'string', describe: 'PEM private key of --tls-cert' })
  .option('tls-ca', { type: 'string', describe: 'PEM CA for node client certificates: nodes must present one whose CN (or DNS SAN) is their name' })
  .option('node-token', { type: 'string', describe: 'Token every node must present (any name). Prefer TUNNEL_NODE_TOKEN: command lines are visible to other users' })
  .option('caller-token', { type: 'string', describe: 'Token every caller must present (identity "caller"). Prefer TUNNEL_CALLER_TOKEN' })
  .option('tokens', { type: 'string', describe: 'File of "node NAME TOKEN" and "caller NAME TOKEN" lines (# comments); reloaded when it changes and on SIGHUP' })
  .option('max-caller-in-flight', { type: 'number', default: D.maxCallerInFlight, describe: 'Calls in flight per caller connection; more are answered OVERLOADED at once' })
  .option('max-node-in-flight', { type: 'number', default: D.maxNodeInFlight, describe: 'Calls in flight per node; more are answered OVERLOADED at once' })
  .option('max-login-failures', { type: 'number', default: D.maxLoginFailures, describe: 'Failed Logins (LOGIN_FAILED answers) after which a caller connection is closed (4005)' })
  .option('max-login-failures-per-address', { type: 'number', default: D.maxLoginFailuresPerAddress, describe: 'Failed Logins from one IP address per --login-failure-window; then its Logins are refused' })
  .option('login-failure-window', { type: 'string', default: `${D.loginFailureWindow / 60_000}m`, describe: 'Window of --max-login-failures-per-address' })
  .option('max-connections-per-address', { type: 'number', default: D.maxConnectionsPerAddress, describe: 'Open connections from one IP address; more are refused with HTTP 429' })
  .example('$0 --listen :9090', 'listen on every interface, port 9090')
  .example('$0 --listen 127.0.0.1:0', 'loopback only, any free port (printed in the "relay listening" log line)')
  .example('$0 --tls-cert relay.crt --tls-key relay.key --tls-ca ca.crt --tokens tokens.txt', 'on the internet: TLS, node certificates, tokens (docs/security.md)')
  .epilog('Every flag can also be set as an environment variable: TUNNEL_LISTEN, TUNNEL_NODE_TOKEN, TUNNEL_TOKENS, ...')
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
    maxMessage: parseSize(argv.maxMessage, 'max-message'),
    tlsCert: argv.tlsCert,
    tlsKey: argv.tlsKey,
    tlsCa: argv.tlsCa,
    nodeToken: argv.nodeToken,
    callerToken: argv.callerToken,
    tokens: argv.tokens,
    maxCallerInFlight: argv.maxCallerInFlight,
    maxNodeInFlight: argv.maxNodeInFlight,
    maxLoginFailures: argv.maxLoginFailures,
    maxLoginFailuresPerAddress: argv.maxLoginFailuresPerAddress,
    loginFailureWindow: parseDuration(argv.loginFailureWindow, 'login-failure-window'),
    maxConnectionsPerAddress: argv.maxConnectionsPerAddress,
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
if (!relay.auth.nodesNeedAuth) {
  log.warn('no node authentication is configured (--node-token, --tokens or --tls-ca): anyone who reaches this port can register nodes');
}
if (!relay.auth.callersNeedAuth) log.warn('callers are not authenticated (--caller-token or caller lines in --tokens): anyone who reaches this port can call');
process.on('SIGHUP', () => relay.auth.reload());
onShutdown(log, () => relay.close());

import { hostname } from 'node:os';
import { readFileSync } from 'node:fs';
import { MsgpackRpcPort } from '../relay/msgpack-rpc-port.js';
import { Relay } from '../relay/relay.js';
import { checkClusterOptions, clusterServer, type ClusterOptions } from '../relay/cluster/options.js';
import { SELECTORS, type SelectorName } from '../relay/selectors.js';
import { LIMIT_DEFAULTS } from '../relay/limits.js';
import { BrowserPolicy } from '../util/browser-policy.js';
import { advertiseUrl, listenAddress } from '../util/address.js';
import { tuneGarbageCollection } from '../util/gc.js';
import { command, durationFlag, explainStartError, fatal, flagLabel, logger, onShutdown, parse, PRECEDENCE, sizeFlag, usageError } from './common.js';

const D = LIMIT_DEFAULTS;
const argv = await parse(
  command('tunnel-relay', '$0 [options]\n\nRuns the public relay: nodes dial in and register their services; callers call Service.Method through it.')
    .option('listen', {
      type: 'string',
      default: ':9090',
      describe: 'Address to listen on: host:port, [v6]:port, :port or PORT (the last two on every interface; port 0 = any free port)',
    })
    .option('heartbeat-timeout', { type: 'string', default: '30s', describe: 'Drop a node or caller that sends nothing (not even a pong) for this long' })
    .option('hello-timeout', {
      type: 'string',
      default: `${D.helloTimeout}ms`,
      describe: 'Time from connecting to an accepted hello (TLS handshake, upgrade and hello together); slower sockets are closed',
    })
    .option('default-timeout', { type: 'string', default: '30s', describe: 'Deadline of calls whose caller sets none' })
    .option('max-timeout', { type: 'string', default: '5m', describe: 'Longest deadline a caller may ask for (longer ones are capped)' })
    .option('selector', {
      type: 'string',
      choices: SELECTORS,
      default: 'round-robin',
      describe:
        'How a call that names no node picks one of the nodes serving its service: round-robin, random, or least-pending (fewest calls in flight); callers may override per call',
    })
    .option('max-message', {
      type: 'string',
      default: '16MiB',
      describe: 'Largest params or result: bigger ones are answered TOO_LARGE; a WebSocket message bigger than this plus 64 KiB closes with 1009',
    })
    .option('admin-listen', {
      type: 'string',
      describe:
        'Serve /metrics, /nodes, /healthz, /readyz and the live /dashboard on this separate address, same forms as --listen (e.g. 127.0.0.1:9100) and no longer /metrics and /nodes on --listen; recommended, so that metrics and the node list are not public',
    })
    .option('dashboard-token', {
      type: 'string',
      describe:
        'Serve the live /dashboard on --listen too, to whoever presents this token (the page asks for it, or open /dashboard?token=...); without it the dashboard is on --admin-listen only. Prefer TUNNEL_DASHBOARD_TOKEN',
    })
    .option('admin-token', {
      type: 'string',
      describe:
        "Enable the dashboard's actions (drain, undrain or disconnect a node, disconnect a caller) for whoever enters this token in the page; without it they are disabled. Prefer TUNNEL_ADMIN_TOKEN",
    })
    .option('require-node', { type: 'string', array: true, nargs: 1, describe: '/readyz answers 503 until a node with this name is connected (repeatable)' })
    .option('require-service', { type: 'string', array: true, nargs: 1, describe: '/readyz answers 503 until a node serves this service (repeatable)' })
    .option('drain-timeout', {
      type: 'string',
      default: '30s',
      describe: 'On SIGINT/SIGTERM, how long calls in flight may take to finish before the relay closes (a second signal exits at once)',
    })
    .option('msgpack-rpc-listen', {
      type: 'string',
      describe:
        "Also open a MessagePack-RPC port at this address (same forms as --listen) for existing msgpack-rpc clients such as Go net/rpc with ugorji's MsgpackSpecRpc (off unless given; see docs/PROTOCOL.md)",
    })
    .option('allow-origin', {
      type: 'string',
      array: true,
      nargs: 1,
      describe:
        'Web pages from this origin (scheme://host[:port]) may open WebSockets and call the gateway, with CORS; * allows any (repeatable). Requests with another Origin header get 403; clients that send none (tunnel-call, curl, Go, Python) are not affected',
    })
    .option('allow-host', {
      type: 'string',
      array: true,
      nargs: 1,
      describe:
        'Accept this Host header name (repeatable). On a loopback --listen only localhost, 127.x.x.x and [::1] are accepted otherwise (DNS rebinding); elsewhere Host is checked only when this is given',
    })
    .option('tls-cert', { type: 'string', describe: 'PEM certificate (full chain) of the relay; with --tls-key the relay serves wss://' })
    .option('tls-key', { type: 'string', describe: 'PEM private key of --tls-cert' })
    .option('tls-ca', { type: 'string', describe: 'PEM CA for node client certificates: nodes must present one whose CN (or DNS SAN) is their name' })
    .option('node-token', {
      type: 'string',
      describe: 'Token every node must present (any name). Prefer TUNNEL_NODE_TOKEN: command lines are visible to other users',
    })
    .option('caller-token', { type: 'string', describe: 'Token every caller must present (identity "caller"). Prefer TUNNEL_CALLER_TOKEN' })
    .option('tokens', {
      type: 'string',
      describe:
        'File of "node NAME TOKEN [serve=Service,...]" and "caller NAME TOKEN [call=[node/]Service[.Method],...]" lines (# comments): serve= reserves those services to the nodes that list them, call= limits a caller to matching methods (* globs); reloaded when it changes and on SIGHUP, closing connections it no longer admits',
    })
    .option('max-caller-in-flight', {
      type: 'number',
      default: D.maxCallerInFlight,
      describe: 'Calls in flight per caller connection; more are answered OVERLOADED at once',
    })
    .option('max-node-in-flight', { type: 'number', default: D.maxNodeInFlight, describe: 'Calls in flight per node; more are answered OVERLOADED at once' })
    .option('max-login-failures', {
      type: 'number',
      default: D.maxLoginFailures,
      describe: 'Failed Logins (LOGIN_FAILED answers) after which a caller connection is closed (4005)',
    })
    .option('max-login-failures-per-address', {
      type: 'number',
      default: D.maxLoginFailuresPerAddress,
      describe: 'Failed Logins from one IP address per --login-failure-window; then its Logins are refused',
    })
    .option('login-failure-window', { type: 'string', default: `${D.loginFailureWindow / 60_000}m`, describe: 'Window of --max-login-failures-per-address' })
    .option('max-auth-failures-per-address', {
      type: 'number',
      default: D.maxAuthFailuresPerAddress,
      describe:
        'Wrong credentials (node and caller tokens, Relay.Auth, dashboard and admin tokens) from one IP address per --auth-failure-window, every door together; then that address is backed off',
    })
    .option('auth-failure-window', {
      type: 'string',
      default: `${D.authFailureWindow / 1000}s`,
      describe: 'Window of --max-auth-failures-per-address; an address that stays clean this long after a back-off is forgiven',
    })
    .option('auth-backoff', {
      type: 'string',
      default: `${D.authBackoff / 1000}s`,
      describe:
        'First back-off: credentials from a backed-off address are refused unchecked, even right ones; each wrong one after it ends doubles it (up to --max-auth-backoff)',
    })
    .option('max-auth-backoff', { type: 'string', default: `${D.maxAuthBackoff / 60_000}m`, describe: 'Longest back-off of --auth-backoff' })
    .option('max-connections-per-address', {
      type: 'number',
      default: D.maxConnectionsPerAddress,
      describe: 'Open connections from one IP address, every port together; more are refused with HTTP 429 (on the msgpack-rpc port: closed at once)',
    })
    .option('max-nodes-per-address', {
      type: 'number',
      default: D.maxNodesPerAddress,
      describe:
        'Authenticated nodes from one IP address (a fleet behind one NAT); they do not count against --max-connections-per-address. More are refused (4009)',
    })
    .option('max-memory', {
      type: 'string',
      defaultDescription: 'a quarter of the machine (or container) memory',
      describe:
        'Bytes the relay holds for all peers together (backlogs, chunks waiting for windows, reassembled bodies): near it new calls get OVERLOADED, over it the largest holders are cut (4008)',
    })
    .option('max-connections', {
      type: 'number',
      default: D.maxConnections,
      describe: 'Open connections on every port together; more are closed at once. Keep it below the file-descriptor limit (ulimit -n)',
    })
    .option('max-backlog', {
      type: 'string',
      default: '8MiB',
      describe: 'Bytes waiting to be written to one peer; above it the relay stops reading from that caller until it is under an eighth',
    })
    .option('slow-consumer-timeout', {
      type: 'string',
      default: `${D.slowConsumerTimeout / 1000}s`,
      describe: 'A caller whose backlog stays above --max-backlog this long, or reaches twice it, is cut as a slow consumer (WebSocket close 4008)',
    })
    .option('cluster', {
      type: 'string',
      array: true,
      nargs: 1,
      describe:
        'Join a cluster of relays over NATS: nats://host:port (repeatable, or comma-separated). Absent: a standalone relay, nothing to install (see docs/CLUSTER.md)',
    })
    .option('cluster-name', { type: 'string', default: 'tunnel', describe: 'NATS subject prefix of the cluster: relays with the same name form one cluster' })
    .option('relay-name', {
      type: 'string',
      default: hostname(),
      defaultDescription: 'the host name',
      describe: "This relay's name in the cluster and in presence (the RELAYS column of --list)",
    })
    .option('advertise', {
      type: 'string',
      describe:
        'URL nodes dial to reach this relay, ws://host:port or wss://host:port: the other relays of the cluster list it in their welcome, so that their nodes can move here when their relay stays unreachable (default: --listen when it names a host, else the host name, with the bound port; wss:// with TLS)',
    })
    .option('cluster-user', { type: 'string', describe: 'NATS user (with --cluster-password)' })
    .option('cluster-password', { type: 'string', describe: 'NATS password. Prefer TUNNEL_CLUSTER_PASSWORD' })
    .option('cluster-token', { type: 'string', describe: 'NATS token. Prefer TUNNEL_CLUSTER_TOKEN' })
    .option('cluster-creds', { type: 'string', describe: 'NATS credentials file (JWT and nkey seed)' })
    .option('cluster-ca', { type: 'string', describe: "PEM CA of the NATS servers' certificates (TLS)" })
    .option('cluster-key', {
      type: 'string',
      describe:
        'File with the cluster key, the same on every relay (make one: openssl rand -hex 32 > cluster.key): every message between relays is encrypted and authenticated with it. Required with --cluster',
    })
    .option('cluster-insecure', {
      type: 'boolean',
      describe: 'Join without --cluster-key, or over a NATS with no credentials and no TLS: anyone on NATS can then speak for a relay (a lab only)',
    })
    .option('msgpack-rpc-idle-timeout', {
      type: 'string',
      default: '5m',
      describe: 'Close a msgpack-rpc connection with no call in flight that has sent nothing for this long',
    })
    .option('max-reassembly', {
      type: 'string',
      default: '32MiB',
      describe:
        'Bytes of incomplete streamed bodies the relay holds for one caller connection (broadcast params, gateway and msgpack-rpc results, broadcast results); a call past it is answered OVERLOADED',
    })
    .option('stream-idle-timeout', {
      type: 'string',
      default: `${D.streamIdleTimeout / 1000}s`,
      describe: 'A streamed body that receives no chunk for this long is cancelled (TIMEOUT)',
    })
    .group(['listen', 'msgpack-rpc-listen', 'msgpack-rpc-idle-timeout', 'allow-origin', 'allow-host', 'hello-timeout', 'heartbeat-timeout'], 'Listening:')
    .group(['default-timeout', 'max-timeout', 'selector', 'max-message', 'drain-timeout'], 'Calls:')
    .group(
      [
        'tls-cert',
        'tls-key',
        'tls-ca',
        'node-token',
        'caller-token',
        'tokens',
        'max-login-failures',
        'max-login-failures-per-address',
        'login-failure-window',
        'max-auth-failures-per-address',
        'auth-failure-window',
        'auth-backoff',
        'max-auth-backoff',
      ],
      'Authentication and TLS:',
    )
    .group(
      [
        'max-caller-in-flight',
        'max-node-in-flight',
        'max-connections-per-address',
        'max-nodes-per-address',
        'max-memory',
        'max-connections',
        'max-backlog',
        'slow-consumer-timeout',
        'max-reassembly',
        'stream-idle-timeout',
      ],
      'Limits:',
    )
    .group(
      [
        'cluster',
        'cluster-name',
        'relay-name',
        'advertise',
        'cluster-user',
        'cluster-password',
        'cluster-token',
        'cluster-creds',
        'cluster-ca',
        'cluster-key',
        'cluster-insecure',
      ],
      'Cluster:',
    )
    .group(['admin-listen', 'dashboard-token', 'admin-token', 'require-node', 'require-service'], 'Monitoring and dashboard:')
    .group(['config', 'log-level', 'help', 'version'], 'Configuration and logging:')
    .example('$0 --listen :9090', 'listen on every interface, port 9090')
    .example('$0 --listen :9090 --msgpack-rpc-listen :9091', 'WebSocket callers and nodes on 9090, MessagePack-RPC callers on 9091')
    .example('$0 --listen 9090', 'the same: a bare number is a port on this host, never an IPv4 address')
    .example('$0 --listen 127.0.0.1:9090 --allow-origin https://app.example', 'loopback only; pages from https://app.example may call (CORS)')
    .example('$0 --listen 127.0.0.1:0', 'loopback only, any free port (printed in the "relay listening" log line)')
    .example(
      '$0 --listen :9090 --admin-listen 127.0.0.1:9100',
      'metrics, node list and the dashboard (http://127.0.0.1:9100/dashboard) on a loopback-only admin port',
    )
    .example(
      '$0 --tls-cert relay.crt --tls-key relay.key --tls-ca ca.crt --tokens tokens.txt',
      'on the internet: TLS, node certificates, tokens (see README, "Running a relay on the internet")',
    )
    .example(
      '$0 --tokens tokens.txt',
      'tokens.txt: "node office-1 TOKEN serve=Arith,Hello" and "caller billing TOKEN call=office-*/Arith.*,*/KV.Get" (README, "Permissions")',
    )
    .example('$0 --config /etc/tunnel/relay.yaml', 'flags from a file (see docs/deploy/relay.yaml)')
    .epilog(
      'HTTP on the --listen port: POST /call/Service.Method with a JSON array body, GET /healthz, /readyz, /metrics, /nodes (/dashboard: on --admin-listen, or here with --dashboard-token).\n' +
        `Every flag can also be set as an environment variable (TUNNEL_LISTEN, TUNNEL_NODE_TOKEN, TUNNEL_TOKENS, ...) or in a --config file. ${PRECEDENCE}`,
    ),
);

const log = logger('tunnel-relay', argv.logLevel);

/** `--cluster` and its companions; each server address checked, named by its flag. */
function clusterOptions(): { cluster?: ClusterOptions } {
  const servers = (argv.cluster ?? [])
    .flatMap((v) => String(v).split(','))
    .map((v) => v.trim())
    .filter((v) => v !== '');
  const companions = ['clusterUser', 'clusterPassword', 'clusterToken', 'clusterCreds', 'clusterCa', 'clusterKey', 'clusterInsecure'] as const;
  if (servers.length === 0) {
    const stray = companions.find((k) => argv[k] !== undefined);
    if (stray) throw new Error(`--${stray.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} needs --cluster`);
    return {};
  }
  const cluster: ClusterOptions = { servers: servers.map((v) => clusterServer(v)), name: argv.clusterName };
  if (argv.clusterUser !== undefined) cluster.user = argv.clusterUser;
  if (argv.clusterPassword !== undefined) cluster.password = argv.clusterPassword;
  if (argv.clusterToken !== undefined) cluster.token = argv.clusterToken;
  if (argv.clusterCreds !== undefined) cluster.creds = argv.clusterCreds;
  if (argv.clusterCa !== undefined) cluster.ca = argv.clusterCa;
  if (argv.clusterKey !== undefined) cluster.key = argv.clusterKey;
  if (argv.clusterInsecure === true) cluster.insecure = true;
  checkClusterOptions(cluster);
  return { cluster };
}
let relay: Relay;
let rpcPort: MsgpackRpcPort | undefined;
let settings: Record<string, unknown>;
try {
  // Everything is checked before anything starts; a message names the flag as written, where it
  // came from (command line, TUNNEL_* variable or config file) and its text.
  listenAddress(argv.listen, flagLabel('listen'));
  if (argv.adminListen !== undefined) listenAddress(argv.adminListen, flagLabel('admin-listen'));
  if (argv.msgpackRpcListen !== undefined) listenAddress(argv.msgpackRpcListen, flagLabel('msgpack-rpc-listen'));
  if (argv.advertise !== undefined) advertiseUrl(argv.advertise, flagLabel('advertise'));
  const browsers = { allowOrigin: argv.allowOrigin ?? [], allowHost: argv.allowHost ?? [] };
  new BrowserPolicy(browsers, { allowOrigin: flagLabel('allow-origin'), allowHost: flagLabel('allow-host') });
  const maxMessage = sizeFlag(argv, 'max-message');
  const options = {
    listen: argv.listen,
    heartbeatTimeout: durationFlag(argv, 'heartbeat-timeout'),
    helloTimeout: durationFlag(argv, 'hello-timeout'),
    defaultTimeout: durationFlag(argv, 'default-timeout'),
    maxTimeout: durationFlag(argv, 'max-timeout'),
    maxMessage,
    selector: argv.selector as SelectorName,
    adminListen: argv.adminListen,
    dashboardToken: argv.dashboardToken,
    adminToken: argv.adminToken,
    requireNode: argv.requireNode ?? [],
    requireService: argv.requireService ?? [],
    ...browsers,
    drainTimeout: durationFlag(argv, 'drain-timeout'),
    msgpackRpcListen: argv.msgpackRpcListen,
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
    loginFailureWindow: durationFlag(argv, 'login-failure-window'),
    maxAuthFailuresPerAddress: argv.maxAuthFailuresPerAddress,
    authFailureWindow: durationFlag(argv, 'auth-failure-window'),
    authBackoff: durationFlag(argv, 'auth-backoff'),
    maxAuthBackoff: durationFlag(argv, 'max-auth-backoff'),
    maxConnectionsPerAddress: argv.maxConnectionsPerAddress,
    maxNodesPerAddress: argv.maxNodesPerAddress,
    ...(argv.maxMemory !== undefined ? { maxMemory: sizeFlag(argv, 'max-memory') } : {}),
    maxReassembly: sizeFlag(argv, 'max-reassembly'),
    streamIdleTimeout: durationFlag(argv, 'stream-idle-timeout'),
    maxConnections: argv.maxConnections,
    maxBacklog: sizeFlag(argv, 'max-backlog'),
    slowConsumerTimeout: durationFlag(argv, 'slow-consumer-timeout'),
    relayName: argv.relayName,
    advertise: argv.advertise,
    ...clusterOptions(),
  };
  const msgpackRpcIdleTimeout = durationFlag(argv, 'msgpack-rpc-idle-timeout');
  relay = new Relay({ ...options, log });
  if (argv.msgpackRpcListen !== undefined) {
    // The same certificate as the WebSocket port; caller tokens, connection limits and backlog come
    // from the relay itself, asked at each use, so a reload of the tokens file applies here too.
    rpcPort = new MsgpackRpcPort(relay, {
      listen: argv.msgpackRpcListen,
      log,
      // A msgpack-rpc value is params plus its envelope.
      maxMessage: maxMessage + 64 * 1024,
      idleTimeout: msgpackRpcIdleTimeout,
      ...(argv.tlsCert && argv.tlsKey ? { tls: { cert: readFileSync(argv.tlsCert), key: readFileSync(argv.tlsKey) } } : {}),
    });
  }
  settings = { ...options, msgpackRpcIdleTimeout };
} catch (err) {
  usageError('tunnel-relay', explainStartError(err, argv, { idleTimeout: 'msgpack-rpc-idle-timeout' }));
}
// The settings in force after flags, environment and config file are merged: what an operator
// checks first when the relay does not do what they meant. At info, "relay listening" says it started.
log.debug(settings, 'relay starting');
// Large payloads churn buffers much faster than objects: see util/gc.ts.
tuneGarbageCollection();
// Signals are handled from here on: one that arrives while the ports open must not kill the relay
// the way an unhandled SIGHUP or SIGTERM would.
process.on('SIGHUP', () => relay.auth.reload());
onShutdown(
  log,
  async () => {
    // Calls that arrived on the msgpack-rpc port drain with the rest; its listener closes after.
    await relay.drain();
    await rpcPort?.close();
    log.info('relay stopped');
  },
  // SIGHUP rereads the tokens file.
  ['SIGINT', 'SIGTERM'],
);
try {
  await relay.listen();
} catch (err) {
  await fatal(log, 'tunnel-relay', { listen: argv.listen, err: (err as Error).message }, 'cannot listen');
}
try {
  await rpcPort?.listen();
} catch (err) {
  await fatal(log, 'tunnel-relay', { msgpackRpcListen: argv.msgpackRpcListen, err: (err as Error).message }, 'cannot listen for msgpack-rpc');
}
if (!relay.auth.nodesNeedAuth) {
  log.warn('no node authentication is configured (--node-token, --tokens or --tls-ca): anyone who reaches this port can register nodes');
}
if (!relay.auth.callersNeedAuth) log.warn('callers are not authenticated (--caller-token or caller lines in --tokens): anyone who reaches this port can call');
if (argv.adminToken !== undefined && relay.dashboard === undefined) {
  log.warn('--admin-token is set but no dashboard is served: add --admin-listen (or --dashboard-token)');
}

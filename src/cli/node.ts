import { hostname } from 'node:os';
import { ForwardedService, parseForward } from '../node/forward.js';
import type { ForwardArgs } from '../node/options.js';
import { relayUrls, TunnelNode } from '../node/node.js';
import { parseCredentials } from '../rpc/login.js';
import { ServiceRegistry } from '../rpc/registry.js';
import { DEMO_USERS, registerExamples } from '../services/index.js';
import {
  command,
  durationFlag,
  explainStartError,
  fatal,
  flagLabel,
  keyValues,
  logger,
  onShutdown,
  parse,
  PRECEDENCE,
  sizeFlag,
  usageError,
} from './common.js';
import { loadServices } from './load-services.js';
import { DirectListener } from '../node/direct.js';
import { DEFAULT_MAX_FRAME } from '../wire/messages.js';
import { nodeNameProblem } from '../wire/bounds.js';
import { listenAddress } from '../util/address.js';
import { tuneGarbageCollection } from '../util/gc.js';

const argv = await parse(
  command('tunnel-node', '$0 --relay host:port [options]\n\nDials out to a relay and serves RPC through it, reconnecting forever with backoff.')
    .option('relay', {
      type: 'string',
      array: true,
      nargs: 1,
      default: ['localhost:9090'],
      defaultDescription: 'localhost:9090',
      describe:
        'Relay to dial: host:port, [v6]:port, :port or PORT (localhost), ws://host:port or wss://host:port. Repeatable, or several separated by commas (TUNNEL_RELAY=a:9090,b:9090): the node holds a tunnel to each relay at once (dual-homed, for the relays of one cluster). A host name with several addresses: each is tried in turn before backing off',
    })
    .option('name', {
      type: 'string',
      default: hostname(),
      defaultDescription: 'the host name',
      describe: 'Name to register under; callers can target it with --node. 1-128 letters, digits, _ . - (a letter or digit first)',
    })
    .option('services', {
      type: 'string',
      describe:
        'ES module whose default export is a map of services or a function (registry) => void; without it and without --forward the built-in examples (Arith, Hello, KV, Server) are served',
    })
    .option('forward', {
      type: 'string',
      array: true,
      nargs: 1,
      describe:
        "Serve Name by passing its calls to an existing local MessagePack-RPC server (Go net/rpc with ugorji's MsgpackSpecRpc, ...): Name=host:port, Name=PORT (127.0.0.1) or Name=unix:/path (repeatable). Its methods are not known in advance: it is announced as Name.*",
    })
    .option('forward-connections', { type: 'number', default: 2, describe: 'Connections to each --forward server; calls are spread over them' })
    .option('forward-args', {
      type: 'string',
      choices: ['one', 'any'],
      default: 'one',
      describe:
        "Arguments a --forward call may carry: one (Go's net/rpc takes exactly one, a struct; more are refused with BAD_REQUEST) or any (servers that take positional parameters)",
    })
    .option('users', { type: 'string', describe: 'Accounts for the example Hello.Login, "user:password,user2:password2" (default alice:secret)' })
    .option('label', { type: 'string', array: true, nargs: 1, describe: 'Label key=value announced to the relay (repeatable)' })
    .option('token', { type: 'string', describe: 'Node token, when the relay requires one (prefer TUNNEL_TOKEN: command lines are visible to other users)' })
    .option('ca', { type: 'string', describe: 'PEM CA certificate to trust for a wss:// relay (a private CA); the system CAs otherwise' })
    .option('insecure', {
      type: 'boolean',
      default: false,
      describe: 'Do not verify the relay certificate (tests only: anyone on the path can impersonate the relay)',
    })
    .option('cert', { type: 'string', describe: 'PEM client certificate, when the relay requires node certificates (its CN is the node name)' })
    .option('key', { type: 'string', describe: 'PEM private key of --cert' })
    .option('heartbeat-timeout', { type: 'string', default: '30s', describe: 'Reconnect when the relay is silent (no pong) this long' })
    .option('reconnect-base', {
      type: 'string',
      default: '500ms',
      describe: 'First reconnect ceiling; each failure doubles it (full jitter: the wait is random below it)',
    })
    .option('reconnect-cap', { type: 'string', default: '30s', describe: 'Largest reconnect ceiling' })
    .option('follow-cluster', {
      type: 'boolean',
      default: true,
      describe:
        'When the relay stays unreachable (3 failed rounds of dials in a row, or 10 s since the last connection), move to another relay of its cluster, as its welcome listed them, and back in turn; never from wss:// to ws://. --no-follow-cluster keeps each tunnel on its --relay',
    })
    .option('direct-listen', {
      type: 'string',
      describe: 'Also serve callers directly at this address (host:port, :port or PORT), without the relay (e.g. 127.0.0.1:9191 for callers on this host)',
    })
    .option('max-backlog', {
      type: 'string',
      default: '32MiB',
      describe: 'Bytes of answers waiting to be written to one relay; above it further answers wait (unencoded) and new requests are answered OVERLOADED',
    })
    .option('max-in-flight', { type: 'number', default: 4096, describe: 'Handlers running at once on one tunnel; more requests are answered OVERLOADED' })
    .option('max-reassembly', {
      type: 'string',
      default: '32MiB',
      describe:
        'Bytes of incomplete streamed params one caller session may hold on this node (a tunnel holds at most 8 times this); a call past it is answered OVERLOADED',
    })
    .option('stream-idle-timeout', { type: 'string', default: '30s', describe: 'Streamed params that receive no chunk for this long are dropped (TIMEOUT)' })
    .option('drain-timeout', {
      type: 'string',
      default: '10s',
      describe: 'On SIGINT/SIGTERM, how long running calls may take to finish (the relay sends no new ones meanwhile; a second signal exits at once)',
    })
    .group(['relay', 'name', 'label', 'follow-cluster', 'heartbeat-timeout', 'reconnect-base', 'reconnect-cap'], 'Relay:')
    .group(['services', 'forward', 'forward-connections', 'forward-args', 'users', 'direct-listen'], 'Services:')
    .group(['token', 'ca', 'insecure', 'cert', 'key'], 'Authentication and TLS:')
    .group(['max-backlog', 'max-in-flight', 'max-reassembly', 'stream-idle-timeout', 'drain-timeout'], 'Limits:')
    .group(['config', 'log-level', 'help', 'version'], 'Configuration and logging:')
    .example('$0 --relay relay.example:9090 --name office-1', 'serve the example services as office-1')
    .example('$0 --relay 9090', 'a bare number is a port on this host: localhost:9090')
    .example('$0 --relay wss://eu-1.example --relay wss://us-1.example', 'dual-homed: one node with a tunnel to each relay of a cluster')
    .example('$0 --relay wss://relay.example', 'one name, several addresses (DNS): each is tried in turn; the other relays of its cluster too')
    .example('$0 --relay :9090 --services ./my-services.js', 'serve your own services')
    .example('$0 --config /etc/tunnel/node.yaml', 'flags from a file (see docs/deploy/node.yaml)')
    .example('$0 --relay :9090 --forward Arith=127.0.0.1:8080 --forward KV=unix:/run/kv.sock', 'put existing msgpack-rpc servers behind the tunnel')
    .epilog(
      `Every flag can also be set as an environment variable (TUNNEL_RELAY, TUNNEL_NAME, TUNNEL_TOKEN, TUNNEL_USERS, ...) or in a --config file. ${PRECEDENCE}`,
    ),
);

const log = logger('tunnel-node', argv.logLevel);
let node: TunnelNode;
let direct: DirectListener | undefined;
let demoUsers = false;
try {
  // Everything is checked before anything starts; a message names the flag as written, where it
  // came from (command line, TUNNEL_* variable or config file) and its text.
  const relays = relayUrls(
    argv.relay.flatMap((r) =>
      String(r)
        .split(',')
        .map((part) => part.trim()),
    ),
    flagLabel('relay'),
  );
  const nameProblem = nodeNameProblem(argv.name);
  if (nameProblem !== undefined) throw new Error(`${flagLabel('name')}: ${nameProblem}`);
  if (argv.directListen !== undefined) listenAddress(argv.directListen, flagLabel('direct-listen'));
  const heartbeatTimeout = durationFlag(argv, 'heartbeat-timeout');
  const registry = new ServiceRegistry();
  const forward = (argv.forward ?? []).map((text) => {
    const { name, target } = parseForward(text);
    return new ForwardedService(name, target, { connections: argv.forwardConnections, args: argv.forwardArgs as ForwardArgs, log });
  });
  if (argv.services) {
    await loadServices(argv.services, registry, log);
  } else if (forward.length === 0) {
    let users: Record<string, string> = DEMO_USERS;
    if (argv.users) {
      users = {};
      for (const entry of argv.users.split(',')) {
        const { user, password } = parseCredentials(entry.trim());
        users[user] = password;
      }
    } else {
      demoUsers = true;
    }
    registerExamples(registry, users);
  }
  node = new TunnelNode({
    relay: relays,
    name: argv.name,
    labels: keyValues(argv.label, 'label'),
    token: argv.token,
    ca: argv.ca,
    insecure: argv.insecure,
    cert: argv.cert,
    key: argv.key,
    services: registry,
    forward,
    log,
    heartbeatTimeout,
    reconnectBase: durationFlag(argv, 'reconnect-base'),
    reconnectCap: durationFlag(argv, 'reconnect-cap'),
    followCluster: argv.followCluster,
    drainTimeout: durationFlag(argv, 'drain-timeout'),
    maxReassembly: sizeFlag(argv, 'max-reassembly'),
    maxBacklog: sizeFlag(argv, 'max-backlog'),
    maxInFlight: argv.maxInFlight,
    streamIdleTimeout: durationFlag(argv, 'stream-idle-timeout'),
  });
  if (argv.directListen !== undefined) direct = new DirectListener(node, log, { maxMessage: DEFAULT_MAX_FRAME, heartbeatTimeout });
} catch (err) {
  usageError('tunnel-node', explainStartError(err, argv, { connections: 'forward-connections' }));
}
if (demoUsers) log.warn('Hello.Login accepts the demo account alice:secret; set --users or TUNNEL_USERS for real accounts');
log.debug({ relay: node.url, relays: node.urls, node: node.name, labels: argv.label ?? [], directListen: argv.directListen }, 'node starting');
// Signals are handled before anything starts, so that none arrives unhandled.
onShutdown(log, async () => {
  await direct?.close();
  await node.stop();
});
// Large payloads churn buffers much faster than objects: see util/gc.ts.
tuneGarbageCollection();
node.start();
if (direct) {
  try {
    await direct.listen(argv.directListen!);
  } catch (err) {
    await fatal(log, 'tunnel-node', { directListen: argv.directListen, err: (err as Error).message }, 'cannot listen for direct callers');
  }
}

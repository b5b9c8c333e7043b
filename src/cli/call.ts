import { connect, type Client } from '../client/client.js';
import type { CallOptions, Selector } from '../client/options.js';
import { ErrorCode, TunnelError } from '../errors.js';
import { SELECTORS } from '../relay/selectors.js';
import { relayUrl } from '../util/address.js';
import { command, durationFlag, exitAfter, flagLabel, keyValues, logger, onParentExit, parse, PRECEDENCE, usageError } from './common.js';
import { RelayMethod } from '../wire/presence.js';
import { broadcastJson, formatBroadcast, formatNodes, toJson } from './fleet-output.js';

/**
 * Exit codes, documented in --help and docs. A script tells "retry later" (3) from "stop: the
 * relay refused my credentials" (4) and "my token may not call this" (5).
 */
const EXIT = { OK: 0, CALL_FAILED: 1, USAGE: 2, UNREACHABLE: 3, UNAUTHORIZED: 4, FORBIDDEN: 5, INTERRUPTED: 130 } as const;

/**
 * The exit code for a failed connect or call. A relay that backs off our address after too many
 * wrong tokens refuses every token unchecked, right or wrong, with "retry in N s": that is "retry
 * later", not "your token is wrong" (docs/PROTOCOL.md, "Guessing").
 */
function exitCodeOf(err: unknown, otherwise: number): number {
  if (!(err instanceof TunnelError)) return otherwise;
  if (err.code === ErrorCode.CANCELLED) return EXIT.INTERRUPTED;
  if (err.code === ErrorCode.UNAUTHORIZED) return /too many failed authentications from /.test(err.message) ? EXIT.UNREACHABLE : EXIT.UNAUTHORIZED;
  if (err.code === ErrorCode.FORBIDDEN) return EXIT.FORBIDDEN;
  // A wrong user or password (--login, or a Login method called directly): as with a wrong token, retrying will not help.
  // (Logins refused for a while after too many failures from this address: that is retry later.)
  if (err.code === ErrorCode.LOGIN_FAILED) return /; try again in \d+ s/.test(err.message) ? EXIT.UNREACHABLE : EXIT.UNAUTHORIZED;
  return otherwise;
}

const argv = await parse(
  command(
    'tunnel-call',
    '$0 [options] Service.Method [ARGS...]\n$0 --list\n\nCalls a method on a node through the relay and prints the result. Each ARG is parsed as JSON when it parses (2, true, "x", [1,2], {"a":1}), else taken as a string.',
  )
    .positional('method', { type: 'string', describe: 'Service.Method to call' })
    .option('relay', {
      type: 'string',
      default: 'localhost:9090',
      describe: 'Relay address: host:port, [v6]:port, :port or PORT (localhost), ws://host:port or wss://host:port',
    })
    .option('timeout', {
      type: 'string',
      default: '30s',
      describe: 'How long the whole command may take: connecting, --login and the call, retries included (500ms, 30s, 2m)',
    })
    .option('login', {
      type: 'string',
      describe: 'Log in first on the same connection with "user:password" (calls <Service>.Login; with --all, on every node)',
    })
    .option('login-method', { type: 'string', describe: 'Method used by --login (default: <Service>.Login of the called method)' })
    .option('node', { type: 'string', describe: 'Only this node may serve the call' })
    .option('where', {
      type: 'string',
      array: true,
      nargs: 1,
      describe: 'Only nodes with this label may serve the call, key=value (repeatable: all must match)',
    })
    .option('selector', { type: 'string', choices: SELECTORS, describe: "How the relay picks among the matching nodes (default: the relay's --selector)" })
    .option('retry', {
      type: 'number',
      default: 0,
      describe:
        'Send a call that failed with NODE_LOST again to another node, up to N times, with backoff. NODE_LOST means the node may have run it: only for idempotent calls',
    })
    .option('all', {
      type: 'boolean',
      default: false,
      describe:
        'Broadcast: call every node serving the method (that matches --where) in parallel; prints a table of node, status, result, ms; exits 1 if any node failed',
    })
    .option('list', {
      type: 'boolean',
      default: false,
      describe:
        'Print the nodes attached to the relay (matching --where): name, state, labels, address, connected since, calls in flight and served, services and methods',
    })
    .option('token', { type: 'string', describe: 'Caller token, when the relay requires one (prefer TUNNEL_TOKEN: command lines are visible to other users)' })
    .option('ca', { type: 'string', describe: 'PEM CA certificate to trust for a wss:// relay (a private CA); the system CAs otherwise' })
    .option('insecure', {
      type: 'boolean',
      default: false,
      describe: 'Do not verify the relay certificate (tests only: anyone on the path can impersonate the relay)',
    })
    .option('json', {
      type: 'boolean',
      default: false,
      describe:
        'Print JSON on stdout, one line unless --pretty: {"result": ...} or {"error": {code, message}}; with --all {"results": [...]}; with --list {"nodes": [...]}',
    })
    .option('pretty', {
      type: 'boolean',
      defaultDescription: 'on a terminal',
      describe:
        'Print results (and --json documents) as indented JSON; on by default when stdout is a terminal, --no-pretty for one line. Strings are printed as they are',
    })
    .option('log-level', {
      type: 'string',
      default: 'warn',
      describe: 'Least severe log level written to stderr; debug shows the relay, the session, and each call with its milliseconds',
    })
    .group(['relay', 'timeout', 'retry'], 'Relay:')
    .group(['node', 'where', 'selector', 'all', 'list'], 'Choosing nodes:')
    .group(['token', 'ca', 'insecure', 'login', 'login-method'], 'Authentication and TLS:')
    .group(['json', 'pretty'], 'Output:')
    .group(['config', 'log-level', 'help', 'version'], 'Configuration and logging:')
    .demandCommand(0)
    .check((a) => {
      if (a.list) {
        if (a._.length > 0) throw new Error('--list takes no method');
        if (a.all || a.node !== undefined) throw new Error('--list cannot be combined with --all or --node; use --where to filter');
        return true;
      }
      if (a._.length === 0) throw new Error('give the method to call, e.g. tunnel-call Arith.Multiply 2 3 (or --list to see the nodes)');
      if (a.all && a.node !== undefined) throw new Error('--all calls every matching node; drop --node (or use --where)');
      if (a.all && a.retry !== 0) throw new Error("--all reports each node's failure instead of retrying; drop --retry");
      if (a.all && a.selector !== undefined) throw new Error('--all calls every matching node; --selector does not apply');
      if (!Number.isInteger(a.retry) || a.retry < 0) throw new Error(`--retry takes a whole number of retries, got ${a.retry}`);
      return true;
    })
    .example('$0 Arith.Multiply 2 3', 'prints 6')
    .example('$0 --login alice:secret Hello.Hello bob', 'logs in, then calls Hello.Hello on the same connection (and node)')
    .example('$0 --relay relay.example:9090 KV.Set config \'{"v":2}\'', 'JSON arguments')
    .example('$0 --node office-1 Arith.Multiply 2 3', 'only node office-1 may answer')
    .example('$0 --where region=eu --selector least-pending Arith.Multiply 2 3', 'the least busy node labelled region=eu')
    .example('$0 --all KV.Set config v2', 'every node serving KV.Set; one row per node')
    .example('$0 --list', 'every node, its labels and services')
    .epilog(
      'Exit codes: 0 ok; 1 the call failed (CODE: message on stderr), or with --all any node failed; 2 bad usage; 3 relay unreachable, or it backs off this address (retry later); ' +
        '4 the relay refused the token or certificate (UNAUTHORIZED: fix --token, do not retry); 5 the token may not call this method (FORBIDDEN); 130 interrupted.\n' +
        `TUNNEL_RELAY, TUNNEL_TOKEN, TUNNEL_TIMEOUT, ... set the flags from the environment; --config reads them from a file. ${PRECEDENCE}\n` +
        'Put -- before arguments that start with a dash: tunnel-call Arith.Multiply -- -2 3',
    ),
);

const log = logger('tunnel-call', argv.logLevel);
let timeout: number;
let where: Record<string, string> | undefined;
try {
  relayUrl(argv.relay, flagLabel('relay'));
  timeout = durationFlag(argv, 'timeout');
  if (timeout === 0) throw new Error(`${flagLabel('timeout')}: must be more than 0; got ${JSON.stringify(argv.timeout)}`);
  if (argv.where !== undefined) where = keyValues(argv.where, 'where');
} catch (err) {
  usageError('tunnel-call', (err as Error).message);
}
const [method = '', ...rawArgs] = argv._.map(String);
if (!argv.list && !/^[^.\s]+(\.[^.\s]+)+$/.test(method)) usageError('tunnel-call', `"${method}" is not Service.Method`);
const args = rawArgs.map(parseArg);

function parseArg(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** --pretty, or by default when a person reads stdout on a terminal. */
const pretty = argv.pretty ?? process.stdout.isTTY === true;

/** A value as JSON: one line, or indented with --pretty. */
function json(value: unknown): string {
  return toJson(value, pretty ? 2 : undefined);
}

function print(value: unknown): string {
  return typeof value === 'string' ? value : json(value);
}

function fail(err: unknown, exitCode: number): Promise<never> {
  let e = err instanceof TunnelError ? err : TunnelError.from(err);
  // The call was given what was left of --timeout after connecting; the deadline that passed is --timeout's.
  const named = /within (\d+) ms/.exec(e.message);
  if (e.code === ErrorCode.TIMEOUT && timeout !== undefined && named && Number(named[1]) !== timeout) {
    e = new TunnelError(e.code, e.message.replace(/within \d+ ms/, `within ${timeout} ms (--timeout)`), { data: e.data });
  }
  // data (NO_NODE's reason, a handler's own) is for programs: in --json only.
  if (argv.json) return exitAfter(exitCode, { stdout: `${json({ error: e.toWire() })}\n` });
  return exitAfter(exitCode, { stderr: `${e.code}: ${e.message}\n` });
}

// --timeout bounds the whole command: connecting, --login and the call.
const started = performance.now();
const left = () => Math.max(1, Math.round(timeout - (performance.now() - started)));

log.debug({ relay: relayUrl(argv.relay, '--relay'), timeoutMs: timeout }, 'connecting');
const client: Client = await connect(argv.relay, { timeout, connectTimeout: timeout, token: argv.token, ca: argv.ca, insecure: argv.insecure, log }).catch(
  (err: unknown) => fail(err, exitCodeOf(err, EXIT.UNREACHABLE)),
);
// A node's direct port (tunnel-node --direct-listen) serves every call itself; through a relay the
// node is known only when --node names it (the relay does not say which node answered).
const direct = /^tunnel-node\/(.+)$/.exec(client.server)?.[1];
const servedBy = direct ?? argv.node;

const controller = new AbortController();
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(signal, () => {
    controller.abort();
    setTimeout(() => process.exit(EXIT.INTERRUPTED), 200).unref();
  });
}
onParentExit(log, () => controller.abort());

client.on('retry', (r: { method: string; attempt: number; delay: number; error: TunnelError }) => {
  log.warn({ method: r.method, attempt: r.attempt, delayMs: r.delay, reason: r.error.message }, 'retrying after NODE_LOST');
});

/** Runs one request and logs what the caller knows of it at debug: method, milliseconds, node. */
async function timed<T>(what: string, run: () => Promise<T>, detail: (result: T) => Record<string, unknown> = () => ({})): Promise<T> {
  const t0 = performance.now();
  try {
    const result = await run();
    log.debug({ method: what, ms: Math.round(performance.now() - t0), ...(servedBy ? { node: servedBy } : {}), ...detail(result) }, 'call answered');
    return result;
  } catch (err) {
    const code = err instanceof TunnelError ? err.code : undefined;
    log.debug({ method: what, ms: Math.round(performance.now() - t0), ...(servedBy ? { node: servedBy } : {}), code }, 'call failed');
    throw err;
  }
}

try {
  if (argv.list) {
    const nodes = await timed(
      RelayMethod.LIST,
      () => client.nodes({ timeout: left(), ...(where ? { where } : {}) }),
      (n) => ({ nodes: n.length }),
    );
    await client.close();
    await exitAfter(EXIT.OK, { stdout: argv.json ? `${json({ nodes })}\n` : `${formatNodes(nodes)}\n` });
  }
  const options: CallOptions = { signal: controller.signal };
  if (argv.node !== undefined) options.node = argv.node;
  if (where) options.where = where;
  if (argv.selector !== undefined) options.selector = argv.selector as Selector;
  if (argv.retry > 0) options.retry = argv.retry;
  const loginMethod = argv.loginMethod ?? `${method.slice(0, method.lastIndexOf('.'))}.Login`;
  if (argv.all) {
    const bopts = () => ({ timeout: left(), signal: controller.signal, ...(where ? { where } : {}) });
    // Logging in on every node first; a node where it fails answers the call with NOT_LOGGED_IN.
    if (argv.login) await timed(loginMethod, () => client.broadcast(loginMethod, [argv.login], bopts()));
    const results = await timed(
      method,
      () => client.broadcast(method, args, bopts()),
      (r) => ({ nodes: r.map((e) => `${e.node}:${e.ok ? 'ok' : e.error.code}:${e.ms}ms`) }),
    );
    await client.close();
    await exitAfter(results.every((r) => r.ok) ? EXIT.OK : EXIT.CALL_FAILED, {
      stdout: argv.json ? `${json({ results: broadcastJson(results) })}\n` : `${formatBroadcast(results)}\n`,
    });
  }
  if (argv.login) await timed(loginMethod, () => client.request(loginMethod, [argv.login], { ...options, timeout: left() }));
  const result = await timed(method, () => client.request(method, args, { ...options, timeout: left() }));
  await client.close();
  await exitAfter(EXIT.OK, { stdout: argv.json ? `${json({ result })}\n` : `${print(result)}\n` });
} catch (err) {
  await fail(err, exitCodeOf(err, EXIT.CALL_FAILED));
}

import { connect, type Client } from '../client/client.js';
import { ErrorCode, TunnelError } from '../errors.js';
import { parseDuration } from '../util/units.js';
import { command, parse, logger, usageError } from './common.js';

/** Exit codes, documented in --help. */
const EXIT = { OK: 0, CALL_FAILED: 1, USAGE: 2, UNREACHABLE: 3, INTERRUPTED: 130 } as const;

const argv = await parse(
  command(
  'tunnel-call',
  '$0 [options] Service.Method [ARGS...]\n\nCalls a method on a node through the relay and prints the result. Each ARG is parsed as JSON when it parses (2, true, "x", [1,2], {"a":1}), else taken as a string.',
)
  .positional('method', { type: 'string', describe: 'Service.Method to call' })
  .option('relay', { type: 'string', default: 'localhost:9090', describe: 'Relay address: host:port, :port, ws://host:port or wss://host:port' })
  .option('timeout', { type: 'string', default: '30s', describe: 'How long to wait for the answer (500ms, 30s, 2m)' })
  .option('login', { type: 'string', describe: 'Log in first on the same connection with "user:password" (calls <Service>.Login)' })
  .option('login-method', { type: 'string', describe: 'Method used by --login (default: <Service>.Login of the called method)' })
  .option('node', { type: 'string', describe: 'Only this node may serve the call' })
  .option('token', { type: 'string', describe: 'Caller token, when the relay requires one (prefer TUNNEL_TOKEN: command lines are visible to other users)' })
  .option('ca', { type: 'string', describe: 'PEM CA certificate to trust for a wss:// relay (a private CA); the system CAs otherwise' })
  .option('insecure', { type: 'boolean', default: false, describe: 'Do not verify the relay certificate (tests only: anyone on the path can impersonate the relay)' })
  .option('json', { type: 'boolean', default: false, describe: 'Print {"result": ...} or {"error": {code, message}} as one JSON line on stdout' })
  .option('log-level', { type: 'string', default: 'warn', describe: 'Least severe log level written to stderr' })
  .demandCommand(1, 'give the method to call, e.g. tunnel-call Arith.Multiply 2 3')
  .example('$0 Arith.Multiply 2 3', 'prints 6')
  .example('$0 --login alice:secret Hello.Hello bob', 'logs in, then calls Hello.Hello on the same connection')
  .example('$0 --relay relay.example:9090 KV.Set config \'{"v":2}\'', 'JSON arguments')
  .epilog(
    'Exit codes: 0 ok; 1 the call failed (CODE: message on stderr); 2 bad usage; 3 relay unreachable; 130 interrupted.\n' +
      'TUNNEL_RELAY, TUNNEL_TOKEN, TUNNEL_TIMEOUT, ... set the flags from the environment. ' +
      'Put -- before arguments that start with a dash: tunnel-call Arith.Multiply -- -2 3',
  )
  ,
);

const log = logger('tunnel-call', argv.logLevel);
const [method, ...rawArgs] = argv._.map(String) as [string, ...string[]];
if (!/^[^.\s]+(\.[^.\s]+)+$/.test(method)) usageError('tunnel-call', `"${method}" is not Service.Method`);
let timeout: number;
try {
  timeout = parseDuration(argv.timeout, 'timeout');
} catch (err) {
  usageError('tunnel-call', (err as Error).message);
}
const args = rawArgs.map(parseArg);

function parseArg(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

function print(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v));
}

function fail(err: unknown, exitCode: number): never {
  const e = err instanceof TunnelError ? err : TunnelError.from(err);
  if (argv.json) process.stdout.write(`${JSON.stringify({ error: { code: e.code, message: e.message } })}\n`);
  else process.stderr.write(`${e.code}: ${e.message}\n`);
  process.exit(exitCode);
}

let client: Client;
try {
  client = await connect(argv.relay, { timeout, token: argv.token, ca: argv.ca, insecure: argv.insecure, log });
} catch (err) {
  fail(err, EXIT.UNREACHABLE);
}

const controller = new AbortController();
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    controller.abort();
    setTimeout(() => process.exit(EXIT.INTERRUPTED), 200).unref();
  });
}

try {
  if (argv.login) {
    const loginMethod = argv.loginMethod ?? `${method.slice(0, method.lastIndexOf('.'))}.Login`;
    await client.request(loginMethod, [argv.login], { timeout, signal: controller.signal, ...(argv.node ? { node: argv.node } : {}) });
  }
  const result = await client.request(method, args, { timeout, signal: controller.signal, ...(argv.node ? { node: argv.node } : {}) });
  process.stdout.write(argv.json ? `${JSON.stringify({ result }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}\n` : `${print(result)}\n`);
  await client.close();
  process.exit(EXIT.OK);
} catch (err) {
  const code = err instanceof TunnelError && err.code === ErrorCode.CANCELLED ? EXIT.INTERRUPTED : EXIT.CALL_FAILED;
  fail(err, code);
}

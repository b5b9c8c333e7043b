import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, killAll, Proc, startNode, startRelay } from './helpers/processes.js';
import { gatewayCall } from './helpers/http.js';

const dir = mkdtempSync(join(tmpdir(), 'tunnel-config-test-'));
function file(name: string, text: string): string {
  const path = join(dir, name);
  writeFileSync(path, text);
  return path;
}

describe('configuration from flags, environment and file', () => {
  afterAll(async () => {
    await killAll();
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes each setting from the flag, else the environment, else the file, else the default', async () => {
    const config = file('relay.yaml', ['hello-timeout: 4s', 'heartbeatTimeout: 7s', 'default-timeout: 8s', 'require-service:', '  - Arith', ''].join('\n'));
    const relay = await startRelay(['--config', config, '--default-timeout', '12s'], 0, {
      TUNNEL_HEARTBEAT_TIMEOUT: '9s',
      TUNNEL_DEFAULT_TIMEOUT: '11s',
    });
    const settings = relay.proc.logs.find((l) => l.msg === 'relay starting')!;
    expect(settings).toMatchObject({
      helloTimeout: 4_000, // file beats default (5s)
      heartbeatTimeout: 9_000, // env beats file
      defaultTimeout: 12_000, // flag beats env and file
      maxTimeout: 300_000, // default
      requireService: ['Arith'],
    });
  });

  it('reads JSON files and TUNNEL_CONFIG, and a node takes its labels as a map', async () => {
    const relayConfig = file('relay.json', JSON.stringify({ 'max-timeout': '1m', drainTimeout: 5000 }));
    const relay = await startRelay([], 0, { TUNNEL_CONFIG: relayConfig });
    expect(relay.proc.logs.find((l) => l.msg === 'relay starting')).toMatchObject({ maxTimeout: 60_000, drainTimeout: 5_000 });
    const nodeConfig = file('node.yaml', 'name: from-file\nlabel:\n  site: lab\n  rack: "4"\n');
    await startNode(relay.addr, ['--config', nodeConfig]);
    const joined = await relay.proc.waitForMsg('node connected');
    expect(joined).toMatchObject({ node: 'from-file', labels: { site: 'lab', rack: '4' } });
    expect(await gatewayCall(relay.port, 'Arith.Multiply', [2, 3], '?node=from-file')).toMatchObject({ status: 200, json: { result: 6 } });
  });

  it('loads the example files of docs/deploy (flags override their addresses)', async () => {
    const deploy = fileURLToPath(new URL('../docs/deploy/', import.meta.url));
    const relay = await startRelay(['--config', `${deploy}relay.yaml`, '--admin-listen', '127.0.0.1:0']);
    expect(relay.proc.logs.find((l) => l.msg === 'relay starting')).toMatchObject({ drainTimeout: 30_000, requireService: ['Arith'] });
    await startNode(relay.addr, ['--config', `${deploy}node.yaml`]);
    expect(await relay.proc.waitForMsg('node connected')).toMatchObject({ node: 'office-1', labels: { site: 'office', rack: '4' } });
  });

  it('fails at start naming an unknown key, a bad value, or a broken file', async () => {
    const cases: Array<[string, string, RegExp]> = [
      [
        'typo.yaml',
        'listen: 127.0.0.1:0\nlisten-adress: 127.0.0.1:0\n',
        /config file .*typo\.yaml: unknown key "listen-adress"; known keys: admin-listen, .*listen/,
      ],
      ['nested.yaml', 'listen:\n  host: 127.0.0.1\n', /key "listen" must be a string or a number/],
      ['broken.json', '{"listen": ', /config file .*broken\.json is not valid JSON/],
      [
        'duration.yaml',
        'drain-timeout: soon\n',
        /--drain-timeout \(from config file .*duration\.yaml\): must be a duration such as 500ms, 30s or 5m; got "soon"/,
      ],
    ];
    for (const [name, text, message] of cases) {
      const proc = new Proc(BIN.relay, ['--listen', '127.0.0.1:0', '--config', file(name, text)]);
      const { code } = await proc.exited;
      expect({ name, code }).toEqual({ name, code: 2 });
      expect(proc.stderr).toMatch(message);
      expect(proc.logs.some((l) => l.msg === 'relay listening')).toBe(false);
    }
  });

  it('names the flag, its source and its text for a bad value, before anything is logged', async () => {
    const camel = file('camel.yaml', 'maxTimeout: soon\n');
    const count = file('count.yaml', 'max-connections: lots\n');
    const cases: Array<[string, string[], Record<string, string>, string]> = [
      [
        BIN.relay,
        [],
        { TUNNEL_MAX_TIMEOUT: 'abc' },
        'tunnel-relay: --max-timeout (from TUNNEL_MAX_TIMEOUT): must be a duration such as 500ms, 30s or 5m; got "abc"',
      ],
      [BIN.relay, ['--max-timeout=0s'], {}, 'tunnel-relay: --max-timeout: must be a positive number of milliseconds; got "0s"'],
      [BIN.relay, ['--config', camel], {}, `tunnel-relay: maxTimeout (from config file ${camel}): must be a duration such as 500ms, 30s or 5m; got "soon"`],
      [BIN.relay, ['--config', count], {}, `tunnel-relay: --max-connections (from config file ${count}): must be a whole number, 1 or more; got "lots"`],
      [BIN.relay, ['--max-backlog', '8 apples'], {}, 'tunnel-relay: --max-backlog: must be a size such as 16MiB, 512KiB or a number of bytes; got "8 apples"'],
      [BIN.relay, ['--default-timeout', '10m'], {}, 'tunnel-relay: --default-timeout 10m must not exceed --max-timeout 5m (default)'],
      [
        BIN.relay,
        [],
        { TUNNEL_MAX_CALLER_IN_FLIGHT: '-3' },
        'tunnel-relay: --max-caller-in-flight (from TUNNEL_MAX_CALLER_IN_FLIGHT): must be a whole number, 1 or more; got "-3"',
      ],
      [
        BIN.node,
        ['--reconnect-base', '1m'],
        { TUNNEL_RECONNECT_CAP: '2s' },
        'tunnel-node: --reconnect-base 1m must not exceed --reconnect-cap 2s (from TUNNEL_RECONNECT_CAP)',
      ],
      [
        BIN.node,
        [],
        { TUNNEL_HEARTBEAT_TIMEOUT: '1y' },
        'tunnel-node: --heartbeat-timeout (from TUNNEL_HEARTBEAT_TIMEOUT): must be a duration such as 500ms, 30s or 5m; got "1y"',
      ],
      [
        BIN.node,
        ['--forward', 'Arith=127.0.0.1:1', '--forward-connections', '0'],
        {},
        'tunnel-node: --forward-connections: must be a whole number, 1 or more; got "0"',
      ],
      [
        BIN.call,
        ['Arith.Multiply', '2', '3'],
        { TUNNEL_TIMEOUT: 'abc' },
        'tunnel-call: --timeout (from TUNNEL_TIMEOUT): must be a duration such as 500ms, 30s or 5m; got "abc"',
      ],
    ];
    for (const [bin, args, env, message] of cases) {
      // --log-level debug: even the debug lines come only after the checks.
      const proc = new Proc(bin, ['--log-level', 'debug', ...args], env);
      const { code } = await proc.exited;
      expect({ message, code }).toEqual({ message, code: 2 });
      expect(proc.stderr.split('\n')[0]).toBe(message);
      expect(proc.logs).toEqual([]);
    }
  });
});

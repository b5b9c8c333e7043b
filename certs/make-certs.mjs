#!/usr/bin/env node
// Makes a development CA, a relay (server) certificate and node (client) certificates with the
// `openssl` command. Node's crypto can parse certificates but not sign them, hence openssl.
// Usage: node certs/make-certs.mjs [--out DIR] [--san NAME]... [--node NAME]... [--days N] [--expired]
import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const HELP = `make-certs: a development CA, a relay certificate and node client certificates.

  --out DIR      where to write (default certs/out); an existing ca.crt/ca.key there is reused
  --san NAME     extra name or IP address for the relay certificate (repeatable);
                 localhost, 127.0.0.1 and ::1 are always included
  --node NAME    make node-NAME.crt/.key whose CN is NAME (repeatable)
  --days N       validity in days (default 825)
  --expired      make the node certificates already expired (for tests)
  --no-relay     do not (re)make the relay certificate
  --ca-name CN   common name of a new CA (default "tunnel development CA")

Private keys (*.key) are written with mode 0600 and are never to be committed.`;

const { values } = parseArgs({
  options: {
    out: { type: 'string', default: join(dirname(fileURLToPath(import.meta.url)), 'out') },
    san: { type: 'string', multiple: true, default: [] },
    node: { type: 'string', multiple: true, default: [] },
    days: { type: 'string', default: '825' },
    expired: { type: 'boolean', default: false },
    'no-relay': { type: 'boolean', default: false },
    'ca-name': { type: 'string', default: 'tunnel development CA' },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
if (values.help) {
  console.log(HELP);
  process.exit(0);
}
const days = Number(values.days);
if (!Number.isInteger(days) || days < 1) fail(`--days must be a positive whole number, got "${values.days}"`);
const NODE_NAME = /^[A-Za-z0-9][\w.-]{0,127}$/;
for (const name of values.node) if (!NODE_NAME.test(name)) fail(`node name "${name}" must be 1-128 letters, digits, _ . - (starting with a letter or digit)`);

const out = resolve(values.out);
mkdirSync(out, { recursive: true });
const work = mkdtempSync(join(tmpdir(), 'make-certs-'));
const file = (name) => join(out, name);

function fail(message) {
  process.stderr.write(`make-certs: ${message}\n`);
  process.exit(2);
}

function openssl(args) {
  try {
    execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    if (err.code === 'ENOENT') fail('the openssl command is not installed (apt-get install openssl)');
    fail(`openssl ${args[0]} failed: ${err.stderr?.toString().trim() || err.message}`);
  }
}

const KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

/** A key and a certificate signed by the CA, with the given subject and extensions. */
function issue(base, subject, extensions, validDays) {
  const ext = join(work, `${base}.ext`);
  writeFileSync(ext, `[v3]\n${extensions.join('\n')}\n`);
  openssl(['req', '-new', ...KEY, '-keyout', file(`${base}.key`), '-out', join(work, `${base}.csr`), '-subj', subject]);
  openssl([
    'x509',
    '-req',
    '-in',
    join(work, `${base}.csr`),
    '-CA',
    file('ca.crt'),
    '-CAkey',
    file('ca.key'),
    '-CAcreateserial',
    '-CAserial',
    join(work, 'ca.srl'),
    '-days',
    String(validDays),
    '-sha256',
    '-extfile',
    ext,
    '-extensions',
    'v3',
    '-out',
    file(`${base}.crt`),
  ]);
  chmodSync(file(`${base}.key`), 0o600);
  console.log(`wrote ${file(`${base}.crt`)} and ${base}.key`);
}

try {
  if (!existsSync(file('ca.crt')) || !existsSync(file('ca.key'))) {
    openssl([
      'req',
      '-x509',
      ...KEY,
      '-keyout',
      file('ca.key'),
      '-out',
      file('ca.crt'),
      '-subj',
      `/CN=${values['ca-name']}`,
      '-days',
      String(days),
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    chmodSync(file('ca.key'), 0o600);
    console.log(`wrote ${file('ca.crt')} and ca.key`);
  }
  if (!values['no-relay']) {
    const names = ['localhost', '127.0.0.1', '::1', ...values.san];
    const san = [...new Set(names)].map((n) => (isIP(n) ? `IP:${n}` : `DNS:${n}`)).join(',');
    issue('relay', '/CN=tunnel relay', [`subjectAltName=${san}`, 'extendedKeyUsage=serverAuth', 'keyUsage=critical,digitalSignature'], days);
  }
  for (const name of values.node) {
    issue(`node-${name}`, `/CN=${name}`, ['extendedKeyUsage=clientAuth', 'keyUsage=critical,digitalSignature'], values.expired ? -1 : days);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}

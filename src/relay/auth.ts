import { createHash, timingSafeEqual } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync, watch, type FSWatcher } from 'node:fs';
import { basename, dirname } from 'node:path';
import type { TLSSocket } from 'node:tls';
import type { Logger } from '../util/logger.js';
import { NODE_NAME } from '../wire/bounds.js';
import { checkServiceName, parseCallPattern, PermissionTable, type Permissions } from './permissions.js';

/** Shortest token accepted: shorter ones can be guessed (make one with `openssl rand -hex 32`). */
export const MIN_TOKEN_LENGTH = 16;

export interface AuthOptions {
  /** One token every node must present (any node name). */
  nodeToken?: string;
  /** One token every caller must present; its identity is `caller`. */
  callerToken?: string;
  /**
   * File of `node NAME TOKEN [serve=Service,...]` and `caller NAME TOKEN [call=[node/]Service[.Method],...]`
   * lines; reloaded on change and by {@link Authenticator.reload}.
   */
  tokens?: string;
  /**
   * What each node may serve and each caller may call, merged with the `serve=` and `call=` rules of
   * the tokens file (see {@link Permissions}).
   */
  permissions?: Permissions;
  /** Nodes must present a client certificate (the relay was given `tlsCa`). */
  nodeCertificates?: boolean;
}

/** What the TLS layer proved about the peer, when the relay serves TLS. */
export interface PeerCertificate {
  /** A client certificate was presented. */
  presented: boolean;
  /** It chains to the relay's `tlsCa` and is in its validity period. */
  authorized: boolean;
  /** Why it is not authorized (CERT_HAS_EXPIRED, UNABLE_TO_VERIFY_LEAF_SIGNATURE, ...). */
  error: string | null;
  /** The names it carries: CN and DNS subject alternative names. */
  names: string[];
}

/**
 * What admitted a connection, kept to check it again at each reload: the SHA-256 digest of its token
 * (never the token) and the facts of its client certificate. Opaque outside this file.
 */
export interface Credential {
  readonly digest: Buffer | undefined;
  readonly certificate: PeerCertificate | undefined;
}

/** Whether a peer may go on; a refusal says why, and whether a token was presented and matched nothing (a guess, counted per address). */
export type Verdict = { ok: true; identity: string | null; credential: Credential } | { ok: false; reason: string; wrongToken?: boolean };

export interface TokenEntry {
  kind: 'node' | 'caller';
  name: string;
  digest: Buffer;
  /** `serve=` of a node line. */
  serve?: string[];
  /** `call=` of a caller line. */
  call?: string[];
}

const digest = (token: string): Buffer => createHash('sha256').update(token).digest();

/** The client certificate facts of a TLS socket (undefined for plain TCP). */
export function peerCertificate(socket: unknown): PeerCertificate | undefined {
  const tls = socket as Partial<TLSSocket>;
  if (typeof tls.getPeerCertificate !== 'function') return undefined;
  const cert = tls.getPeerCertificate();
  const presented = cert !== null && Object.keys(cert).length > 0;
  const names: string[] = [];
  if (presented) {
    const cn = cert.subject?.CN;
    for (const n of ([] as string[]).concat(cn ?? [])) names.push(n);
    for (const part of (cert.subjectaltname ?? '').split(',')) {
      const m = /^\s*DNS:(.+)$/.exec(part);
      if (m) names.push(m[1]!.trim());
    }
  }
  const error = tls.authorizationError;
  return {
    presented,
    authorized: presented && tls.authorized === true,
    error: error === undefined || error === null ? null : String(error),
    names,
  };
}

/**
 * Relay-level authentication: who may register a node name and who may call, decided before any RPC,
 * and the permissions of the tokens file. Tokens are compared as SHA-256 digests with timingSafeEqual,
 * against every entry, so that neither a token's content nor which entry it matched shows in the timing.
 * Emits `reload` after the tokens file was reread successfully.
 */
export class Authenticator extends EventEmitter {
  private entries: TokenEntry[] = [];
  private table: PermissionTable;
  private readonly nodeDigest: Buffer | undefined;
  private readonly callerDigest: Buffer | undefined;
  private watcher: FSWatcher | undefined;
  private reloadTimer: NodeJS.Timeout | undefined;
  /** Once callers have needed a token they keep needing one: a reload never opens the relay by accident. */
  private callersNeedToken: boolean;

  constructor(
    private readonly opts: AuthOptions,
    private readonly log: Logger,
  ) {
    super();
    for (const [flag, token] of [
      ['nodeToken', opts.nodeToken],
      ['callerToken', opts.callerToken],
    ] as const) {
      if (token !== undefined) checkToken(token, flag);
    }
    this.nodeDigest = opts.nodeToken === undefined ? undefined : digest(opts.nodeToken);
    this.callerDigest = opts.callerToken === undefined ? undefined : digest(opts.callerToken);
    if (opts.tokens !== undefined) this.entries = parseTokens(readTokens(opts.tokens), opts.tokens);
    this.table = buildTable(opts.permissions, this.entries);
    this.callersNeedToken = this.callerDigest !== undefined || this.entries.some((e) => e.kind === 'caller');
  }

  /** Nodes must prove who they are (token and/or certificate). */
  get nodesNeedAuth(): boolean {
    return this.nodeTokensRequired || this.opts.nodeCertificates === true;
  }

  get callersNeedAuth(): boolean {
    return this.callersNeedToken;
  }

  /** The permissions in force: the `permissions` option and the tokens file as last loaded. */
  get permissions(): PermissionTable {
    return this.table;
  }

  private get nodeTokensRequired(): boolean {
    return this.nodeDigest !== undefined || this.opts.tokens !== undefined;
  }

  /** Counts for logs: never the tokens themselves. */
  describe(): { nodes: string; callers: string; tokenFileEntries: number } {
    const nodes = [this.nodeTokensRequired ? 'token' : '', this.opts.nodeCertificates ? 'certificate' : ''].filter(Boolean).join('+') || 'open';
    return { nodes, callers: this.callersNeedToken ? 'token' : 'open', tokenFileEntries: this.entries.length };
  }

  /**
   * At the HTTP upgrade, before the WebSocket exists. The role is not known yet, so only what is
   * wrong for every role is refused: a bearer token that matches nothing, a client certificate that
   * does not verify. A missing token may still come in the hello.
   */
  checkUpgrade(token: string | undefined, cert: PeerCertificate | undefined): { reason: string; wrongToken: boolean } | undefined {
    if (cert?.presented && !cert.authorized) return { reason: `client certificate refused: ${cert.error ?? 'not trusted'}`, wrongToken: false };
    if (token === undefined || (!this.nodesNeedAuth && !this.callersNeedToken)) return undefined;
    if (this.match(token).length === 0) return { reason: 'token refused: it matches no node or caller token', wrongToken: true };
    return undefined;
  }

  /** A node's hello: may it register `name`? */
  node(name: string, token: string | undefined, cert: PeerCertificate | undefined): Verdict {
    return this.nodeVerdict(name, token === undefined ? undefined : digest(token), cert);
  }

  private nodeVerdict(name: string, d: Buffer | undefined, cert: PeerCertificate | undefined): Verdict {
    if (this.opts.nodeCertificates) {
      if (!cert?.presented) return { ok: false, reason: 'this relay requires a node client certificate (--cert/--key)' };
      if (!cert.authorized) return { ok: false, reason: `node client certificate refused: ${cert.error ?? 'not trusted'}` };
      if (!cert.names.includes(name)) {
        return { ok: false, reason: `the client certificate is for ${cert.names.join(', ') || 'no name'}, not node ${name}` };
      }
    }
    if (this.nodeTokensRequired) {
      if (d === undefined) return { ok: false, reason: 'this relay requires a node token (--token or TUNNEL_TOKEN)' };
      const shared = this.nodeDigest !== undefined && timingSafeEqual(d, this.nodeDigest);
      const named = this.matchDigest(d).some((e) => e.kind === 'node' && e.name === name);
      if (!shared && !named) return { ok: false, reason: `node token refused for node name ${name}`, wrongToken: true };
    }
    return { ok: true, identity: name, credential: { digest: d, certificate: cert } };
  }

  /** A caller's hello: its identity (the token's name), or why it is refused. */
  caller(token: string | undefined): Verdict {
    return this.callerVerdict(token === undefined ? undefined : digest(token));
  }

  private callerVerdict(d: Buffer | undefined): Verdict {
    const credential = { digest: d, certificate: undefined };
    if (d === undefined) {
      return this.callersNeedToken
        ? { ok: false, reason: 'this relay requires a caller token (--token or TUNNEL_TOKEN)' }
        : { ok: true, identity: null, credential };
    }
    const shared = this.callerDigest !== undefined && timingSafeEqual(d, this.callerDigest);
    const entry = this.matchDigest(d).find((e) => e.kind === 'caller');
    if (entry) return { ok: true, identity: entry.name, credential };
    if (shared) return { ok: true, identity: 'caller', credential };
    return this.callersNeedToken
      ? { ok: false, reason: 'caller token refused', wrongToken: true }
      : { ok: true, identity: null, credential: { digest: undefined, certificate: undefined } };
  }

  /**
   * After a reload: why the node `name`, admitted with `credential` and announcing `services`, is no
   * longer admitted, or undefined when it still is.
   */
  recheckNode(name: string, credential: Credential, services: Iterable<string>): string | undefined {
    const verdict = this.nodeVerdict(name, credential.digest, credential.certificate);
    if (!verdict.ok) return `${verdict.reason} (its token was revoked)`;
    return this.serveRefusal(name, services, credential);
  }

  /** Why node `name`, admitted with `credential`, may not announce one of `services`, or undefined. */
  serveRefusal(name: string, services: Iterable<string>, credential: Credential): string | undefined {
    return this.table.serveRefusal(name, services, this.provesName(name, credential));
  }

  /**
   * Whether `credential` proves the node name, so that the name's `serve=` applies: its own token
   * line, a verified certificate carrying the name, or a relay that checks no node at all. The shared
   * node token lets its holder take any name, so it proves none.
   */
  private provesName(name: string, credential: Credential): boolean {
    if (!this.nodesNeedAuth) return true;
    const cert = credential.certificate;
    if (this.opts.nodeCertificates && cert?.authorized && cert.names.includes(name)) return true;
    const d = credential.digest;
    return d !== undefined && this.matchDigest(d).some((e) => e.kind === 'node' && e.name === name);
  }

  /**
   * After a reload: why a caller session of `identity` is no longer admitted, or undefined. With the
   * `credential` that admitted it, its token must still give the same identity; without one (a
   * session opened with an identity only), a token of that identity must still exist.
   */
  recheckCaller(identity: string | null, credential: Credential | undefined): string | undefined {
    if (credential !== undefined) {
      const verdict = this.callerVerdict(credential.digest);
      if (!verdict.ok) return credential.digest === undefined ? verdict.reason : `${verdict.reason} (its token was revoked)`;
      if (verdict.identity !== identity)
        return `the caller token now belongs to ${verdict.identity ?? 'nobody'}, not ${identity ?? 'an anonymous caller'}; connect again`;
      return undefined;
    }
    if (identity === null) return this.callersNeedToken ? 'this relay now requires a caller token (--token or TUNNEL_TOKEN)' : undefined;
    if (identity === 'caller' && this.callerDigest !== undefined) return undefined;
    if (this.entries.some((e) => e.kind === 'caller' && e.name === identity)) return undefined;
    return `caller ${identity} has no token any more (its token was revoked)`;
  }

  /** Rereads the tokens file; on an error the previous table stays in force. */
  reload(): void {
    const file = this.opts.tokens;
    if (file === undefined) return;
    let entries: TokenEntry[];
    let table: PermissionTable;
    try {
      entries = parseTokens(readTokens(file), file);
      table = buildTable(this.opts.permissions, entries);
    } catch (err) {
      this.log.error({ file, err: (err as Error).message }, 'tokens file not reloaded; the previous tokens stay in force');
      return;
    }
    this.entries = entries;
    this.table = table;
    if (this.entries.some((e) => e.kind === 'caller')) this.callersNeedToken = true;
    this.log.info({ file, entries: this.entries.length }, 'tokens reloaded');
    this.emit('reload');
  }

  /** Reloads the tokens file whenever it changes (editors that replace the file included). */
  watch(): void {
    const file = this.opts.tokens;
    if (file === undefined || this.watcher) return;
    const name = basename(file);
    this.watcher = watch(dirname(file), (_event, changed) => {
      if (changed !== null && changed !== name) return;
      clearTimeout(this.reloadTimer);
      // Editors write in several steps; reload once they are done.
      this.reloadTimer = setTimeout(() => this.reload(), 100);
    });
    this.watcher.on('error', (err) => this.log.warn({ file, err: err.message }, 'cannot watch the tokens file; reload with SIGHUP'));
    this.watcher.unref();
  }

  close(): void {
    clearTimeout(this.reloadTimer);
    this.watcher?.close();
    this.watcher = undefined;
  }

  private match(token: string): TokenEntry[] {
    const d = digest(token);
    const out = this.matchDigest(d);
    if (this.nodeDigest && timingSafeEqual(d, this.nodeDigest)) out.push({ kind: 'node', name: '*', digest: d });
    if (this.callerDigest && timingSafeEqual(d, this.callerDigest)) out.push({ kind: 'caller', name: 'caller', digest: d });
    return out;
  }

  /** Every entry is compared, whatever matched first. */
  private matchDigest(d: Buffer): TokenEntry[] {
    const out: TokenEntry[] = [];
    for (const e of this.entries) if (timingSafeEqual(d, e.digest)) out.push(e);
    return out;
  }
}

function checkToken(token: string, what: string): void {
  if (token.length < MIN_TOKEN_LENGTH) {
    throw new Error(`${what} is ${token.length} characters; use at least ${MIN_TOKEN_LENGTH} (e.g. openssl rand -hex 32)`);
  }
  if (/\s/.test(token)) throw new Error(`${what} must not contain white space`);
}

function readTokens(file: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new Error(`cannot read tokens file ${file}: ${(err as Error).message}`, { cause: err });
  }
}

const LINE_FORMS = '"node NAME TOKEN [serve=Service,...]" or "caller NAME TOKEN [call=[node/]Service[.Method],...]"';

/**
 * The tokens file: one `KIND NAME TOKEN [RULES]` per line, KIND `node` or `caller`, `#` starts a
 * comment. A node line lets that token register that node name; `serve=A,B` limits it to those
 * services and reserves them to the nodes that list them. A caller line gives callers with that token
 * the identity NAME (what handlers see as `ctx.caller.identity`); `call=` limits what it may call.
 */
export function parseTokens(text: string, file = 'tokens file'): TokenEntry[] {
  const out: TokenEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.replace(/#.*/, '').trim();
    if (line === '') continue;
    const where = `${file} line ${i + 1}`;
    const parts = line.split(/\s+/);
    if (parts.length < 3 || parts.length > 4 || (parts[0] !== 'node' && parts[0] !== 'caller')) {
      throw new Error(`${where}: want ${LINE_FORMS}`);
    }
    const [kind, name, token, rules] = parts as ['node' | 'caller', string, string, string | undefined];
    checkToken(token, `the token on ${where}`);
    const entry: TokenEntry = { kind, name, digest: digest(token) };
    if (rules !== undefined) {
      const want = kind === 'node' ? 'serve=' : 'call=';
      if (!rules.startsWith(want)) throw new Error(`${where}: a ${kind} line takes ${want}..., not "${rules.slice(0, 20)}"; want ${LINE_FORMS}`);
      const list = rules.slice(want.length).split(',');
      if (list.some((item) => item === '')) throw new Error(`${where}: ${want} needs a comma-separated list without empty items`);
      if (kind === 'node' && !NODE_NAME.test(name))
        throw new Error(`${where}: "${name.slice(0, 40)}" is not a node name: letters, digits, _ . - (starting with a letter or digit)`);
      try {
        if (kind === 'node') for (const service of list) checkServiceName(service);
        else for (const pattern of list) parseCallPattern(pattern);
      } catch (err) {
        throw new Error(`${where}: ${(err as Error).message}`, { cause: err });
      }
      if (kind === 'node') entry.serve = list;
      else entry.call = list;
    }
    out.push(entry);
  }
  return out;
}

/** The permissions of the `permissions` option and of the tokens file's lines, merged. */
function buildTable(option: Permissions | undefined, entries: readonly TokenEntry[]): PermissionTable {
  const fromFile: Required<Permissions> = { nodes: {}, callers: {} };
  for (const e of entries) {
    if (e.serve) (fromFile.nodes[e.name] ??= { serve: [] }).serve!.push(...e.serve);
    if (e.call) (fromFile.callers[e.name] ??= { call: [] }).call!.push(...e.call);
  }
  return new PermissionTable(option ?? {}, fromFile);
}

import { dialAddress } from '../../util/address.js';

/** How a relay joins a cluster over NATS (`tunnel-relay --cluster ...`). */
export interface ClusterOptions {
  /** NATS servers, `nats://host:port` or `tls://host:port` (also `host:port`). */
  servers: string[];
  /** Subject prefix of the cluster (default `tunnel`): relays with the same name form one cluster. */
  name?: string;
  /** NATS user and password. */
  user?: string;
  password?: string;
  /** NATS token. */
  token?: string;
  /** A NATS credentials file (JWT and nkey seed), for decentralized auth. */
  creds?: string;
  /** PEM CA that signs the NATS servers' certificates (TLS). */
  ca?: string;
  /**
   * A file holding the cluster key: the same secret on every relay of the cluster (at least 32
   * characters, e.g. `openssl rand -hex 32`). Every message between relays is encrypted and
   * authenticated with it, so that NATS users who are not relays can neither read nor forge them.
   * Required unless `insecure`.
   */
  key?: string;
  /**
   * Run without a cluster key, or over a NATS that asks for no credentials and has no TLS: anyone who
   * can publish on the prefix can then speak for a relay. For a lab, never for the open internet.
   */
  insecure?: boolean;
}

/** How the cluster stands: NATS down (`degraded`), a known relay unreachable (`split`), or whole. */
export type ClusterState = 'connected' | 'degraded' | 'split';

const CLUSTER_NAME = /^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,3}$/;

/** Checks cluster options: every address strict, one way to authenticate. Throws a TypeError naming the option. */
export function checkClusterOptions(o: ClusterOptions): void {
  if (!Array.isArray(o.servers) || o.servers.length === 0) throw new TypeError('cluster option servers must list at least one NATS server (nats://host:port)');
  for (const url of o.servers) clusterServer(url);
  if (o.name !== undefined && !CLUSTER_NAME.test(o.name)) {
    throw new TypeError(`cluster option name "${o.name}" must be letters, digits, _ and -, up to four dot-separated parts (it is the NATS subject prefix)`);
  }
  const ways = [o.creds !== undefined, o.token !== undefined, o.user !== undefined].filter(Boolean).length;
  if (ways > 1) throw new TypeError('cluster options creds, token and user are three ways to authenticate to NATS; give one');
  if (o.user !== undefined && o.password === undefined) throw new TypeError('cluster option user needs password');
  if (o.password !== undefined && o.user === undefined) throw new TypeError('cluster option password needs user');
  if (o.insecure === true) return;
  if (o.key === undefined) {
    throw new TypeError(
      'a cluster needs a cluster key (--cluster-key FILE, the same secret on every relay; make one with `openssl rand -hex 32 > cluster.key`): ' +
        'without it anyone who may publish on NATS can speak for a relay and read every call. --cluster-insecure runs without (a lab only)',
    );
  }
  const tls = o.ca !== undefined || o.servers.some((s) => /^tls:\/\//i.test(s.trim()));
  if (ways === 0 && !tls) {
    throw new TypeError(
      'the cluster NATS is open: give the relays a NATS account (--cluster-user and TUNNEL_CLUSTER_PASSWORD, --cluster-token or --cluster-creds) ' +
        'or TLS (tls:// and --cluster-ca), as docs/CLUSTER.md shows; --cluster-insecure joins an open NATS anyway (a lab only)',
    );
  }
}

/** `nats://host:port` from what a user typed; the host is checked as every address is (no bare numbers). */
export function clusterServer(text: string): string {
  const m = /^(nats|tls):\/\/(.*)$/i.exec(text.trim());
  const scheme = m ? m[1]!.toLowerCase() : 'nats';
  const rest = (m ? m[2]! : text.trim()).replace(/\/$/, '');
  const { host, port } = dialAddress(rest, `cluster server "${text}"`, 'localhost');
  return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

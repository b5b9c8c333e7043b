import type { Server } from 'node:net';

/**
 * Turns what a user types for a relay into a WebSocket URL: `host:port`, `:port` (localhost),
 * `host` (port 9090), or a full `ws://` / `wss://` URL.
 */
export const DEFAULT_PORT = 9090;

export function relayUrl(input: string): string {
  const text = input.trim();
  if (text === '') throw new Error('relay address is empty; give host:port, :port or ws://host:port');
  if (/^wss?:\/\//i.test(text)) {
    const url = new URL(text);
    return url.toString();
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    throw new Error(`relay address "${input}" has an unsupported scheme; use ws:// or wss://`);
  }
  const { host, port } = splitHostPort(text, 'localhost');
  const h = host.includes(':') ? `[${host}]` : host;
  return `ws://${h}:${port}/`;
}

/** Parses `[host]:port`, `host:port`, `:port` or `host`; IPv6 hosts in brackets. */
export function splitHostPort(text: string, defaultHost: string): { host: string; port: number } {
  let host: string;
  let portText: string | undefined;
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (v6) {
    host = v6[1]!;
    portText = v6[2];
  } else {
    const i = text.lastIndexOf(':');
    if (i >= 0 && text.indexOf(':') !== i) throw new Error(`"${text}": put IPv6 addresses in brackets, e.g. [::1]:9090`);
    host = i >= 0 ? text.slice(0, i) : text;
    portText = i >= 0 ? text.slice(i + 1) : undefined;
  }
  if (host === '') host = defaultHost;
  let port = DEFAULT_PORT;
  if (portText !== undefined) {
    if (!/^\d+$/.test(portText) || Number(portText) > 65535) throw new Error(`"${text}": port must be a number 0..65535`);
    port = Number(portText);
  }
  return { host, port };
}

/** Listens on `[host]:port` (empty host: every interface); rejects with the listen error. */
export function listenOn(server: Server, listen: string): Promise<void> {
  const { host, port } = splitHostPort(listen, '');
  return new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host === '' ? undefined : host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** A bound address as it goes in a URL: wildcard addresses become localhost, IPv6 gets brackets. */
export function urlHost(address: string): string {
  const host = address === '::' || address === '0.0.0.0' ? 'localhost' : address;
  return host.includes(':') ? `[${host}]` : host;
}

/** The IP of a connected peer, IPv4-mapped IPv6 addresses written as plain IPv4. */
export function peerIp(socket: { remoteAddress?: string | undefined }): string {
  const remote = socket.remoteAddress ?? 'unknown';
  return remote.startsWith('::ffff:') ? remote.slice(7) : remote;
}

/** `ip:port` of a connected peer, as logs and `ctx.caller.address` show it. */
export function peerAddress(socket: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${peerIp(socket)}:${socket.remotePort ?? 0}`;
}

import type { BroadcastResult } from '../client/client.js';
import type { NodeInfo } from '../wire/presence.js';

/** JSON that also holds BigInt (64-bit integers that do not fit a double). */
export function toJson(value: unknown, indent?: number): string {
  return JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), indent);
}

/** A value as one short cell: strings as they are, anything else as JSON, cut at `max` characters. */
function cell(value: unknown, max = 60): string {
  const text = (typeof value === 'string' ? value : (toJson(value) ?? 'null')).replace(/\s+/g, ' ');
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** Columns padded to their widest cell, two spaces apart. */
function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  return [line(header), ...rows.map(line)].join('\n');
}

function since(iso: string, now: number): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  const ago = s < 60 ? `${s}s` : s < 3600 ? `${Math.floor(s / 60)}m` : s < 86_400 ? `${Math.floor(s / 3600)}h` : `${Math.floor(s / 86_400)}d`;
  return `${iso.replace(/\.\d+Z$/, 'Z')} (${ago} ago)`;
}

/** The presence list for people: one row per node, then its services and methods indented below. */
export function formatNodes(nodes: NodeInfo[], now = Date.now()): string {
  if (nodes.length === 0) return 'no nodes connected';
  const rows = nodes.map((n) => [
    n.name,
    n.draining ? 'draining' : 'online',
    Object.entries(n.labels)
      .map(([k, v]) => `${k}=${v}`)
      .join(',') || '-',
    n.address,
    (n.relays ?? []).join(',') || '-',
    since(n.connectedAt, now),
    String(n.inFlight),
    String(n.served),
  ]);
  const head = table(['NODE', 'STATE', 'LABELS', 'ADDRESS', 'RELAYS', 'CONNECTED SINCE', 'IN FLIGHT', 'SERVED'], rows).split('\n');
  const out = [head[0]!];
  nodes.forEach((n, i) => {
    out.push(head[i + 1]!);
    for (const [service, methods] of Object.entries(n.services)) out.push(`    ${service}: ${methods.join(', ')}`);
  });
  return out.join('\n');
}

/** A broadcast's outcome for people: node, ok or error code, result or message, milliseconds. */
export function formatBroadcast(results: BroadcastResult[]): string {
  const rows = results.map((r) => (r.ok ? [r.node, 'ok', cell(r.result), String(r.ms)] : [r.node, r.error.code, cell(r.error.message, 100), String(r.ms)]));
  const failed = results.filter((r) => !r.ok).length;
  const summary = `${results.length - failed} ok, ${failed} failed`;
  return `${table(['NODE', 'STATUS', 'RESULT', 'MS'], rows)}\n${summary}`;
}

/** A broadcast's outcome for machines: `{node, ok, result | error: {code, message}, ms}` per node. */
export function broadcastJson(results: BroadcastResult[]): unknown[] {
  return results.map((r) =>
    r.ok
      ? { node: r.node, ok: true, result: r.result, ms: r.ms }
      : { node: r.node, ok: false, error: { code: r.error.code, message: r.error.message }, ms: r.ms },
  );
}

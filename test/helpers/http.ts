/** HTTP helpers for tests: every request goes to 127.0.0.1 and is bounded in time. */

export interface HttpAnswer {
  status: number;
  body: string;
  json: unknown;
}

export async function http(url: string, init: RequestInit = {}, timeout = 10_000): Promise<HttpAnswer> {
  const res = await fetch(url, { signal: AbortSignal.timeout(timeout), ...init });
  const body = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    json = undefined;
  }
  return { status: res.status, body, json };
}

/** `POST /call/<method>` with `args` as the JSON body (a string body is sent as is). */
export function gatewayCall(port: number, method: string, args: unknown[] | string, query = '', headers: Record<string, string> = {}): Promise<HttpAnswer> {
  return http(`http://127.0.0.1:${port}/call/${method}${query}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof args === 'string' ? args : JSON.stringify(args),
  });
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text exposition format (comments skipped, label values unescaped). */
export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$/.exec(line);
    if (!m) throw new Error(`not a metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, (_s, c: string) => (c === 'n' ? '\n' : c));
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

/** The value of the one sample named `name` whose labels include `labels` (0 when there is none). */
export function metric(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (found.length > 1) throw new Error(`${found.length} samples of ${name} match ${JSON.stringify(labels)}`);
  return found[0]?.value ?? 0;
}

export async function scrape(port: number): Promise<Sample[]> {
  const r = await http(`http://127.0.0.1:${port}/metrics`);
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}: ${r.body}`);
  return parseMetrics(r.body);
}

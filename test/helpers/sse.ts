import { request } from 'node:http';

/** One server-sent event as received. */
export interface SseEvent {
  event: string;
  data: unknown;
}

/** A server-sent events stream read as it arrives, with a bounded wait for the event a test needs. */
export interface SseStream {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly events: SseEvent[];
  /** Waits for an event matching `pred` (among those already received too), failing after `timeout` ms. */
  waitFor(pred: (e: SseEvent) => boolean, timeout?: number, what?: string): Promise<SseEvent>;
  close(): void;
}

/**
 * Opens `url` (GET, on 127.0.0.1) and parses the body as server-sent events. Like the dashboard's
 * page, it acknowledges each frame it read (`POST /dashboard/events/ack`, with the same headers) once
 * the snapshot named its stream; `ack: false` reads without acknowledging.
 */
export function openSse(url: string, headers: Record<string, string> = {}, timeout = 10_000, ack = true): Promise<SseStream> {
  return new Promise((resolve, reject) => {
    const req = request(url, { headers: { accept: 'text/event-stream', ...headers } });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`no answer from ${url} within ${timeout} ms`));
    }, timeout);
    req.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    req.once('response', (res) => {
      clearTimeout(timer);
      const events: SseEvent[] = [];
      let waiters: Array<() => void> = [];
      let ended = false;
      let buffer = '';
      let streamId: string | undefined;
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = 'message';
          let data = '';
          let id: string | undefined;
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trimStart();
            else if (line.startsWith('id:')) id = line.slice(3).trim();
          }
          let parsed: unknown = data;
          try {
            parsed = JSON.parse(data);
          } catch {
            /* not JSON: kept as text */
          }
          events.push({ event, data: parsed });
          const named = (parsed as { stream?: { id?: string } } | null)?.stream?.id;
          if (event === 'snapshot' && typeof named === 'string') streamId = named;
          if (ack && streamId !== undefined && id !== undefined) {
            const to = new URL(`/dashboard/events/ack?stream=${encodeURIComponent(streamId)}&seq=${id}`, url);
            const r = request(to, { method: 'POST', headers });
            r.on('response', (answer) => answer.resume()).on('error', () => undefined);
            r.end();
          }
        }
        const w = waiters;
        waiters = [];
        for (const f of w) f();
      });
      res.once('close', () => {
        ended = true;
        for (const f of waiters) f();
      });
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        events,
        async waitFor(pred, wait = 10_000, what = 'event') {
          const deadline = Date.now() + wait;
          for (;;) {
            const found = events.find(pred);
            if (found) return found;
            const left = deadline - Date.now();
            if (ended) throw new Error(`stream ended before ${what}; got ${events.map((e) => e.event).join(', ')}`);
            if (left <= 0) throw new Error(`timed out after ${wait} ms waiting for ${what}`);
            await new Promise<void>((r) => {
              const t = setTimeout(r, left);
              waiters.push(() => {
                clearTimeout(t);
                r();
              });
            });
          }
        },
        close() {
          req.destroy();
        },
      });
    });
    req.end();
  });
}

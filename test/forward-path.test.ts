import { getEventListeners, once } from 'node:events';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isTunnelError } from '../src/errors.js';
import { ForwardedService } from '../src/node/forward.js';
import type { CallContext } from '../src/rpc/context.js';
import { decode, encode } from '../src/wire/codec.js';
import { MessagePackFramer } from '../src/wire/framer.js';
import { waitUntil } from './helpers/wait.js';

/**
 * A MessagePack-RPC server on 127.0.0.1 that answers with bytes written by hand, so that the test
 * can see that the node passes them on untouched. `Hold.*` requests are answered only when told.
 */
class HandServer {
  readonly server: Server;
  readonly requests: unknown[][] = [];
  readonly held: Array<() => void> = [];
  reads = 0;
  private sockets = new Set<Socket>();

  constructor() {
    this.server = createServer((socket) => {
      this.sockets.add(socket);
      const framer = new MessagePackFramer(64 << 20);
      socket.on('data', (chunk: Buffer) => {
        this.reads++;
        for (const frame of framer.push(chunk)) {
          const [, msgid, method, params] = decode(frame) as [number, number, string, unknown[]];
          this.requests.push([msgid, method, params]);
          const answer = (error: Buffer, result: Buffer) => socket.write(Buffer.concat([Buffer.from([0x94, 0x01]), encode(msgid), error, result]));
          if (method === 'Hand.Raw') answer(encode(null), Buffer.from(params[0] as Uint8Array));
          else if (method === 'Hand.Fail') answer(encode('no such thing'), encode(null));
          else if (method === 'Hand.Echo') answer(encode(null), encode(params[0]));
          else if (method === 'Hand.Notify')
            socket.write(Buffer.concat([encode([2, 'Hand.Event', [1]]), Buffer.from([0x94, 0x01]), encode(msgid), encode(null), encode('after')]));
          else this.held.push(() => answer(encode(null), encode('late')));
        }
      });
      socket.on('close', () => this.sockets.delete(socket));
    });
  }

  async listen(): Promise<number> {
    this.server.listen(0, '127.0.0.1');
    await once(this.server, 'listening');
    return (this.server.address() as AddressInfo).port;
  }

  close(): void {
    for (const s of this.sockets) s.destroy();
    this.server.close();
  }
}

function context(signal = new AbortController().signal): CallContext {
  return { signal } as CallContext;
}

let hand: HandServer;
let service: ForwardedService;

beforeAll(async () => {
  hand = new HandServer();
  const port = await hand.listen();
  service = new ForwardedService('Hand', { host: '127.0.0.1', port }, { connections: 1 });
});
afterAll(() => {
  service.close();
  hand.close();
});

describe('the --forward call path', () => {
  it('hands on the result element exactly as the server wrote it', async () => {
    // A map with integer keys and a uint64: a decode and encode would have changed both.
    const raw = Buffer.from([0x82, 0x01, 0xa1, 0x61, 0xcf, 0, 0, 0, 0, 0, 0, 0, 2, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0]);
    const result = await service.call('Hand.Raw', encode([raw]), context());
    expect(Buffer.from(result)).toEqual(raw);
  });

  it('sends the params bytes as the caller encoded them, small and large', async () => {
    for (const value of [{ nested: [1, 'x', null] }, Buffer.alloc(200_000, 3)]) {
      const params = encode([value]);
      const result = await service.call('Hand.Echo', params, context());
      expect(decode(result)).toEqual(value);
    }
  });

  it('refuses params that are not one MessagePack array before they reach the shared connection', async () => {
    for (const [params, message] of [
      [encode({ a: 1 }), 'params must be a MessagePack array'],
      [Buffer.concat([encode([1]), encode([2])]), 'params are not valid MessagePack'],
      [Buffer.from([0x92, 0x01]), 'params are not valid MessagePack'],
    ] as const) {
      const err = await service.call('Hand.Echo', params, context()).catch((e: unknown) => e);
      expect(isTunnelError(err) && err.code).toBe('BAD_REQUEST');
      expect((err as Error).message).toContain(message);
    }
    expect(await service.call('Hand.Echo', encode(['still fine']), context()).then(decode)).toBe('still fine');
  });

  it('turns the server error string into APP_ERROR and skips its notifications', async () => {
    const err = await service.call('Hand.Fail', encode([]), context()).catch((e: unknown) => e);
    expect(isTunnelError(err) && err.code).toBe('APP_ERROR');
    expect((err as Error).message).toBe('no such thing');
    expect(decode(await service.call('Hand.Notify', encode([]), context()))).toBe('after');
  });

  it('writes the requests of one turn together', async () => {
    const before = hand.reads;
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => service.call('Hand.Echo', encode([i]), context())));
    expect(results.map((r) => decode(r))).toEqual(Array.from({ length: 200 }, (_, i) => i));
    // One write of 200 requests may arrive in a few reads, never in one per request.
    expect(hand.reads - before).toBeLessThan(20);
  });

  it('lets a call go once its caller gives up, and drops the late answer', async () => {
    const controller = new AbortController();
    const call = service.call('Hold.On', encode([]), context(controller.signal));
    const outcome = call.then(
      () => 'answered',
      (err: unknown) => (err as Error).message,
    );
    // Once swept, the call listens to its signal (nothing else does).
    await waitUntil(() => getEventListeners(controller.signal, 'abort').length > 0, 10_000, 'the call to be swept', 10);
    controller.abort(new Error('caller went away'));
    // Let go at once, by the listener: before anything that waits for the event loop, a sweep included.
    const first = await Promise.race([outcome, new Promise((resolve) => setImmediate(() => resolve('still waiting')))]);
    expect(first).toBe('caller went away');
    hand.held.shift()!();
    expect(decode(await service.call('Hand.Echo', encode(['next']), context()))).toBe('next');
  });

  it('lets a call go whose caller gave up before it was swept, within two sweeps', async () => {
    const controller = new AbortController();
    const call = service.call('Hold.Later', encode([]), context(controller.signal));
    controller.abort(new Error('gone at once'));
    const t0 = Date.now();
    await expect(call).rejects.toThrow('gone at once');
    expect(Date.now() - t0).toBeLessThan(1_000);
    hand.held.shift()!();
  });
});

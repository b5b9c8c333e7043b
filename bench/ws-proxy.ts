/**
 * A do-nothing WebSocket proxy: each connection gets its own connection to the ws echo server on
 * the port given as the first argument, and every message is passed on as it is, both ways. It is
 * the floor for a relayed path on the same machine (one more process, two more socket hops, no
 * protocol at all): `npm run bench` shows the relay next to it. Prints its port on stdout.
 */
import { WebSocket, WebSocketServer, type RawData } from 'ws';

const target = Number(process.argv[2]);
if (!Number.isInteger(target) || target <= 0 || target > 65535) throw new Error(`usage: ws-proxy <echo port>, got ${process.argv[2]}`);
const limits = { maxPayload: 64 * 1024 * 1024, perMessageDeflate: false };
const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, ...limits });
wss.on('connection', (down) => {
  const up = new WebSocket(`ws://127.0.0.1:${target}/`, limits);
  const early: RawData[] = [];
  up.on('open', () => {
    for (const m of early) up.send(m);
    early.length = 0;
  });
  down.on('message', (data) => (up.readyState === up.OPEN ? up.send(data) : early.push(data)));
  up.on('message', (data) => down.send(data));
  down.on('close', () => up.close());
  up.on('close', () => down.close());
  // Either side failing (the echo server gone, a caller reset) ends this pair, not the proxy.
  down.on('error', () => up.terminate());
  up.on('error', () => down.terminate());
});
wss.on('listening', () => process.stdout.write(`${(wss.address() as { port: number }).port}\n`));

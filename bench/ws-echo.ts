/** A bare `ws` echo server: the baseline for large payloads. Prints its port on stdout. */
import { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 64 * 1024 * 1024, perMessageDeflate: false });
wss.on('connection', (ws) => ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
wss.on('listening', () => process.stdout.write(`${(wss.address() as { port: number }).port}\n`));

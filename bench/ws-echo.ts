/** A bare `ws` echo server: the baseline for large payloads. Prints its port on stdout. */
import { WebSocketServer } from 'ws';

const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 64 * 1024 * 1024, perMessageDeflate: false });
// A load generator that exits mid-echo resets its connection: that ends the connection, not this server.
wss.on('connection', (ws) => ws.on('error', () => ws.terminate()).on('message', (data, isBinary) => ws.send(data, { binary: isBinary })));
wss.on('listening', () => process.stdout.write(`${(wss.address() as { port: number }).port}\n`));

// Drives Switchboard's /socket.io/ endpoint with the official socket.io-client. Reads a JSON
// scenario from stdin: {url, token, badToken, conversationId}. Prints one JSON object with what
// each check observed; tests/it/socketio.rs asserts on it.
'use strict';
const { io } = require('socket.io-client');

function connect(url, opts) {
  return new Promise((resolve, reject) => {
    const socket = io(url, { reconnection: false, timeout: 10000, ...opts });
    socket.once('connect', () => resolve(socket));
    socket.once('connect_error', (err) => { socket.close(); reject(err); });
  });
}

function emitAck(socket, event, payload) {
  return socket.timeout(10000).emitWithAck(event, payload);
}

function nextEvent(socket, name) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name}`)), 10000);
    socket.once(name, (payload) => { clearTimeout(timer); resolve(payload); });
  });
}

async function main() {
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const s = JSON.parse(input);
  const out = {};

  const ws = await connect(s.url, { transports: ['websocket'], auth: { token: s.token } });
  out.websocketTransport = ws.io.engine.transport.name;
  const incoming = nextEvent(ws, 'message:new');
  out.sendAck = await emitAck(ws, 'message:send', { conversationId: s.conversationId, content: 'from socket.io', clientMessageId: 'sio-1' });
  out.badPayloadAck = await emitAck(ws, 'message:send', { conversationId: { nope: 1 } });
  out.binaryAck = await emitAck(ws, 'ping', { blob: Buffer.from([1, 2, 3]) });
  process.stdout.write(JSON.stringify({ stage: 'sent' }) + '\n');
  out.incoming = await incoming;

  const polling = await connect(s.url, { transports: ['polling'], query: { token: s.token } });
  out.pollingTransport = polling.io.engine.transport.name;
  out.pollingAck = await emitAck(polling, 'ping', {});
  polling.close();

  const upgraded = await connect(s.url, { auth: { token: s.token } });
  await new Promise((resolve) => {
    if (upgraded.io.engine.transport.name === 'websocket') return resolve();
    upgraded.io.engine.once('upgrade', () => resolve());
    setTimeout(resolve, 5000);
  });
  out.upgradedTransport = upgraded.io.engine.transport.name;
  out.upgradedAck = await emitAck(upgraded, 'ping', {});
  upgraded.close();

  try {
    await connect(s.url, { transports: ['websocket'], auth: { token: s.badToken } });
    out.badToken = 'connected';
  } catch (err) {
    out.badToken = err.message;
  }
  ws.close();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => { process.stdout.write(JSON.stringify({ error: String(err && err.stack || err) }) + '\n'); process.exit(1); });

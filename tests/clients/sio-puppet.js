// A scriptable socket.io-client: reads one JSON command per line on stdin and prints one JSON
// line per thing that happens, so Rust tests can play an app's exact flow with the real client.
//
// Commands:
//   {"op":"connect","name":N,"url":U,"opts":{...socket.io-client options...},"ackEvents":true}
//   {"op":"emit","name":N,"event":E,"args":[...],"ack":true|false,"tag":T}
//   {"op":"close","name":N}
//   {"op":"drop","name":N}          closes the client's transport (engine) without a DISCONNECT
//   {"op":"reconnect","name":N,"url":U?}  connects the same socket again (a kept session is
//                                   named), to another server when `url` is given
//   {"op":"forge","name":N,"pid":P} replaces the private session id the client will name
//   {"op":"exit"}
// Output lines:
//   {"name":N,"type":"connect","transport":"websocket|polling","id":ID,"recovered":bool}
//   {"name":N,"type":"connect_error","message":M,"data":D}
//   {"name":N,"type":"disconnect","reason":R}
//   {"name":N,"type":"upgrade","transport":T}
//   {"name":N,"type":"event","event":E,"args":[...],"askedAck":bool,"offset":O,"argc":K}
//     (when the server offers connection state recovery, the offset socket.io-client records
//     is the last argument the app receives: it is reported as `offset` and left out of
//     `args`; `argc` counts every argument the app's handler got, the offset included)
//   {"name":N,"type":"ack","tag":T,"args":[...]}
//   {"type":"error","message":M}
"use strict";

const { io } = require("socket.io-client");
const readline = require("readline");

const sockets = new Map();

function out(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

function encodeArg(a) {
  // Binary arguments are reported as {"$binary": "<base64>"}.
  if (Buffer.isBuffer(a) || a instanceof ArrayBuffer || ArrayBuffer.isView(a)) {
    return { $binary: Buffer.from(a).toString("base64") };
  }
  if (Array.isArray(a)) return a.map(encodeArg);
  if (a && typeof a === "object") {
    const o = {};
    for (const [k, v] of Object.entries(a)) o[k] = encodeArg(v);
    return o;
  }
  return a;
}

function decodeArg(a) {
  if (a && typeof a === "object" && !Array.isArray(a) && typeof a.$binary === "string") {
    return Buffer.from(a.$binary, "base64");
  }
  if (Array.isArray(a)) return a.map(decodeArg);
  if (a && typeof a === "object") {
    const o = {};
    for (const [k, v] of Object.entries(a)) o[k] = decodeArg(v);
    return o;
  }
  return a;
}

function connect(cmd) {
  const name = cmd.name;
  const opts = Object.assign({ reconnection: false, forceNew: true }, cmd.opts || {});
  const socket = io(cmd.url, opts);
  sockets.set(name, socket);
  socket.on("connect", () => {
    out({
      name,
      type: "connect",
      transport: socket.io.engine.transport.name,
      id: socket.id,
      recovered: Boolean(socket.recovered),
    });
    socket.io.engine.on("upgrade", (t) => out({ name, type: "upgrade", transport: t.name }));
  });
  socket.on("connect_error", (err) => {
    out({ name, type: "connect_error", message: err.message, data: err.data === undefined ? null : err.data });
  });
  socket.on("disconnect", (reason) => out({ name, type: "disconnect", reason }));
  socket.onAny((event, ...args) => {
    let askedAck = false;
    const argc = args.length;
    if (args.length && typeof args[args.length - 1] === "function") {
      const ack = args.pop();
      askedAck = true;
      if (cmd.ackEvents !== false) ack({ received: true });
    }
    let offset = null;
    if (socket._pid && args.length && typeof args[args.length - 1] === "string") {
      offset = args.pop();
    }
    out({ name, type: "event", event, args: args.map(encodeArg), askedAck, offset, argc });
  });
}

function emit(cmd) {
  const socket = sockets.get(cmd.name);
  if (!socket) return out({ type: "error", message: `no socket ${cmd.name}` });
  const args = (cmd.args || []).map(decodeArg);
  if (cmd.ack) {
    socket.timeout(cmd.timeoutMs || 20000).emit(cmd.event, ...args, (err, ...reply) => {
      if (err) out({ name: cmd.name, type: "ack", tag: cmd.tag, timeout: true, args: [] });
      else out({ name: cmd.name, type: "ack", tag: cmd.tag, args: reply.map(encodeArg) });
    });
  } else {
    socket.emit(cmd.event, ...args);
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    return out({ type: "error", message: `bad command: ${e.message}` });
  }
  switch (cmd.op) {
    case "connect":
      return connect(cmd);
    case "emit":
      return emit(cmd);
    case "close": {
      const s = sockets.get(cmd.name);
      if (s) s.close();
      return;
    }
    case "drop": {
      const s = sockets.get(cmd.name);
      if (s) s.io.engine.close();
      return;
    }
    case "reconnect": {
      const s = sockets.get(cmd.name);
      if (!s) return;
      if (cmd.url) s.io.uri = cmd.url;
      s.connect();
      return;
    }
    case "forge": {
      const s = sockets.get(cmd.name);
      if (s) s._pid = cmd.pid;
      return;
    }
    case "exit":
      for (const s of sockets.values()) s.close();
      return process.exit(0);
    default:
      return out({ type: "error", message: `unknown op ${cmd.op}` });
  }
});
rl.on("close", () => {
  for (const s of sockets.values()) s.close();
  process.exit(0);
});

// The peer to beat: a chat hub on µWebSockets.js (the uWebSockets.js build
// published on npm as @trufflesuite/uws-js-unofficial), with the protocol
// shape of bench/hubs/tokio-hub: `login` joins a room and is acknowledged,
// `message` is numbered per room and sent to the room's other members —
// through µWS's own pub/sub (a topic per room, one publish per message,
// which µWS fans out in C++), the way its documentation recommends.
//
// Usage: node hub.js [ADDR]   (default 127.0.0.1:9600; port 0 picks a free one)
"use strict";
const uWS = require("@trufflesuite/uws-js-unofficial");

const addr = process.argv[2] || "127.0.0.1:9600";
const at = addr.lastIndexOf(":");
const host = addr.slice(0, at), port = Number(addr.slice(at + 1));
const seqs = new Map(); // rid -> seq
const decoder = new TextDecoder();

uWS.App().ws("/*", {
  compression: uWS.DISABLED,
  maxPayloadLength: 64 * 1024,
  // Generous, so that no burst is skipped (µWS skips a subscriber whose
  // backpressure is over this) and loss stays loadgen's to count.
  maxBackpressure: 64 * 1024 * 1024,
  idleTimeout: 0,
  open: (ws) => { ws.session = null; },
  message: (ws, data) => {
    let req;
    try { req = JSON.parse(decoder.decode(data)); } catch (e) { return; }
    if (req.cmd === "login") {
      const s = { uid: String(req.uid || ""), name: String(req.name || ""), rid: String(req.rid || "") };
      ws.session = s;
      ws.subscribe(s.rid);
      ws.send(JSON.stringify({ cmd: "login", uid: s.uid, name: s.name, rid: s.rid }), false);
    } else if (req.cmd === "message" && ws.session) {
      const s = ws.session;
      const seq = (seqs.get(s.rid) || 0) + 1;
      seqs.set(s.rid, seq);
      // Field order as cchat documents it (loadgen's scanner relies on it).
      const out = `{"cmd":"message","uid":${JSON.stringify(s.uid)},"name":${JSON.stringify(s.name)},"type":"text",` +
        `"rid":${JSON.stringify(s.rid)},"msg":${JSON.stringify(String(req.msg || ""))},"seq":${seq},"epoch":1,"ts":${Date.now()}}`;
      ws.publish(s.rid, out, false); // every subscriber but this one
    }
  },
}).listen(host, port, (sock) => {
  if (!sock) { console.error(`uws-hub: cannot listen on ${addr}`); process.exit(1); }
  // The same start-up line as cchat's, which bench/scenarios/lib.sh waits for.
  console.log(`listening on ${host}:${uWS.us_socket_local_port(sock)}`);
});

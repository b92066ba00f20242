// W8: receive N small WebSocket text messages with `ws` from npm (installed
// under bench/node_modules by the harness). Args: URL [N].
'use strict';
const WebSocket = require('ws');
const url = process.argv[2];
const n = Number(process.argv[3] || 200000);
const t0 = performance.now();
let count = 0;
const ws = new WebSocket(`${url}/?n=${n}`, { perMessageDeflate: false });
ws.on('message', () => { count++; });
ws.on('close', () => {
  const dt = (performance.now() - t0) / 1000;
  if (count !== n) throw new Error(`got ${count} of ${n} messages`);
  console.log(`RESULT msg_per_s=${(n / dt).toFixed(1)} n=${n} wall_s=${dt.toFixed(4)}`);
});
ws.on('error', (e) => { throw e; });

// W5: 20,000 JSON-RPC calls, 64 in flight, against the harness's local nginx
// (Node built-ins only): http.request through http.Agent({keepAlive: true,
// maxSockets: 64}) from 64 workers each sending one call at a time; every
// request is JSON-encoded and every response JSON-decoded and checked.
// Args: URL [N [K]]. Prints requests per second.
'use strict';
const http = require('http');
const url = process.argv[2];
if (!url) throw new Error('usage: node w5.js URL [N [K]]');
const n = Number(process.argv[3] || 20000);
const k = Number(process.argv[4] || 64);
const agent = new http.Agent({ keepAlive: true, maxSockets: k });
let next = 0;
let done = 0;

function call(id) {
  const body = JSON.stringify({ jsonrpc: '2.0', id, method: 'status' });
  return new Promise((resolve, reject) => {
    const req = http.request(url, {
      method: 'POST', agent,
      headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) },
    }, (res) => {
      let data = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { data += c; });
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
        const r = JSON.parse(data);
        if (r.result !== 'ok') return reject(new Error(`bad response ${data}`));
        resolve(r.result);
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

(async () => {
  const t0 = performance.now();
  async function worker() {
    while (next < n) {
      next++;
      await call(next);
      done++;
    }
  }
  await Promise.all(Array.from({ length: k }, worker));
  const dt = (performance.now() - t0) / 1000;
  agent.destroy();
  if (done !== n) throw new Error(`only ${done} of ${n} calls done`);
  console.log(`RESULT req_per_s=${(n / dt).toFixed(1)} n=${n} wall_s=${dt.toFixed(4)}`);
})();

// W7: 20,000 unary gRPC calls, 64 in flight, to etcd's KV/Range (serializable,
// one small key) with @grpc/grpc-js and @grpc/proto-loader (from npm, installed
// by the harness under bench/.npm). Args: TARGET PROTO [N [K]]. Prints calls
// per second.
'use strict';
const path = require('path');
module.paths.push(path.join(__dirname, '.npm', 'node_modules'));
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [target, proto] = process.argv.slice(2, 4);
if (!proto) throw new Error('usage: node w7.js TARGET PROTO [N [K]]');
const n = Number(process.argv[4] || 20000);
const k = Number(process.argv[5] || 64);
const def = grpc.loadPackageDefinition(loader.loadSync(proto, { longs: String, defaults: true }));
const client = new def.etcdserverpb.KV(target, grpc.credentials.createInsecure());

function range() {
  return new Promise((resolve, reject) => {
    client.Range({ key: Buffer.from('w7'), serializable: true }, (err, r) => (err ? reject(err) : resolve(r)));
  });
}

(async () => {
  let next = 0;
  let bad = 0;
  async function worker() {
    while (next < n) {
      next++;
      const r = await range();
      if (r.kvs[0].value.toString() !== 'value') bad++;
    }
  }
  const t0 = performance.now();
  await Promise.all(Array.from({ length: k }, worker));
  const dt = (performance.now() - t0) / 1000;
  client.close();
  if (bad) throw new Error(`${bad} calls returned a wrong value`);
  console.log(`RESULT calls_per_s=${(n / dt).toFixed(1)} n=${n} wall_s=${dt.toFixed(4)}`);
})();

// W3: 1,000 runs of /bin/true, at most 32 at a time, all exit codes collected
// (Node built-ins only): child_process.spawn with piped stdio, as atom.exec
// captures output, 32 in flight. Prints processes per second.
'use strict';
const { spawn } = require('child_process');
const n = Number(process.argv[2] || 1000);
const k = Number(process.argv[3] || 32);

function runOne() {
  return new Promise((resolve, reject) => {
    const p = spawn('/bin/true');
    p.stdout.resume();
    p.stderr.resume();
    p.on('error', reject);
    p.on('close', (code) => resolve(code));
  });
}

(async () => {
  const codes = new Array(n);
  let next = 0;
  const t0 = performance.now();
  async function worker() {
    while (next < n) {
      const i = next++;
      codes[i] = await runOne();
    }
  }
  await Promise.all(Array.from({ length: Math.min(k, n) }, worker));
  const dt = (performance.now() - t0) / 1000;
  const bad = codes.filter((c) => c !== 0).length;
  if (bad) throw new Error(`${bad} runs failed`);
  console.log(`RESULT procs_per_s=${(n / dt).toFixed(1)} n=${n} wall_s=${dt.toFixed(4)}`);
})();

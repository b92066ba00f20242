// W4: 16 children that each sleep a given delay, print `ready` and keep running
// (Node built-ins only). Waits for all the ready lines, then stops all 16
// (SIGTERM, reap) concurrently. Args: the delays in seconds.
// Prints the total time minus the longest delay ("overhead").
'use strict';
const { spawn } = require('child_process');
const delays = process.argv.slice(2);
if (delays.length === 0) throw new Error('usage: node w4.js DELAY...');

function start(d) {
  return new Promise((resolve, reject) => {
    const p = spawn('sh', ['-c', `sleep ${d}; echo ready; exec sleep 30`],
      { stdio: ['ignore', 'pipe', 'inherit'] });
    let buf = '';
    let ready = false;
    p.exitPromise = new Promise((res) => p.on('exit', res));
    p.on('error', reject);
    p.stdout.setEncoding('utf8');
    p.stdout.on('data', (chunk) => {
      buf += chunk;
      let nl;
      while (!ready && (nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line.includes('ready')) { ready = true; resolve(p); }
      }
    });
    p.stdout.on('end', () => { if (!ready) reject(new Error('output ended before ready')); });
  });
}

function stop(p) {
  p.kill('SIGTERM');
  return p.exitPromise;
}

(async () => {
  const t0 = performance.now();
  const procs = await Promise.all(delays.map(start));
  await Promise.all(procs.map(stop));
  const dt = performance.now() - t0;
  const longest = Math.max(...delays.map(Number)) * 1000;
  console.log(`RESULT overhead_ms=${(dt - longest).toFixed(3)} longest_ms=${longest.toFixed(0)}`);
})();

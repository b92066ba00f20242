// W1: 10,000 tasks each sleeping 10 ms, gathered (Node built-ins only).
// Prints the wall time of Promise.all minus the 10 ms sleep; the harness reads peak RSS.
'use strict';
const n = Number(process.argv[2] || 10000);
(async () => {
  const t0 = performance.now();
  const ps = [];
  for (let i = 0; i < n; i++) ps.push(new Promise((resolve) => setTimeout(resolve, 10)));
  await Promise.all(ps);
  const dt = performance.now() - t0;
  console.log(`RESULT overhead_ms=${(dt - 10).toFixed(3)} n=${n}`);
})();

// W2: 10,000 tasks sleeping 60 s plus one failing after 50 ms (Node built-ins only).
// Promise.all rejects on the first failure but cancels nothing, so the structured
// equivalent is hand-rolled: every sleeping task registers a cancel function
// (clearTimeout of its timer, then reject); on the first rejection all are
// cancelled and we wait until every promise has settled. Prints the time from
// the failure until then. (`node w2.js N abort` uses one AbortController shared
// by timers/promises sleeps instead; that is 2-3x slower with 10,000 listeners.)
'use strict';
const { setTimeout: sleepP } = require('timers/promises');
const { setMaxListeners } = require('events');
const n = Number(process.argv[2] || 10000);
const useAbort = process.argv[3] === 'abort';
let tFail = null;
(async () => {
  const cancels = [];
  const ac = new AbortController();
  setMaxListeners(n + 10, ac.signal);
  const sleep = useAbort
    ? (ms) => sleepP(ms, undefined, { signal: ac.signal })
    : (ms) => new Promise((resolve, reject) => {
      const h = setTimeout(resolve, ms);
      cancels.push(() => { clearTimeout(h); reject(new Error('cancelled')); });
    });
  const ps = [];
  for (let i = 0; i < n; i++) ps.push(sleep(60000));
  ps.push((async () => {
    await sleepP(50);
    tFail = performance.now();
    throw new Error('boom');
  })());
  try {
    await Promise.all(ps);
    throw new Error('Promise.all did not reject');
  } catch (e) {
    if (e.message !== 'boom') throw e;
    if (useAbort) ac.abort(); else for (const c of cancels) c();
    await Promise.allSettled(ps);
  }
  const t1 = performance.now();
  console.log(`RESULT cancel_ms=${(t1 - tFail).toFixed(3)} n=${n}`);
})();

-- W1: 10,000 tasks each sleeping 10 ms, gathered. Prints the wall time of the
-- gather minus the 10 ms sleep ("overhead"); the harness reads peak RSS.
local n = tonumber(atom.args[1]) or 10000
-- atom's modules load on first use; bind what is timed first, as the Python
-- and Node versions import theirs before their clocks start.
local gather, sleep = atom.gather, atom.sleep
local fns = {}
for i = 1, n do fns[i] = function() sleep(0.01) end end
local t0 = atom.now()
gather(fns)
local dt = atom.now() - t0
print(string.format("RESULT overhead_ms=%.3f n=%d", dt * 1000 - 10, n))

-- W2: 10,000 tasks sleeping 60 s plus one failing after 50 ms, gathered.
-- Prints the time from the failure until atom.gather has raised, i.e. until
-- every sibling has been cancelled and has unwound.
local n = tonumber(atom.args[1]) or 10000
local t_fail
local fns = {}
for i = 1, n do fns[i] = function() atom.sleep(60) end end
fns[n + 1] = function()
  atom.sleep(0.05)
  t_fail = atom.now()
  error("boom")
end
local ok, err = pcall(atom.gather, fns)
local t1 = atom.now()
if ok or not t_fail then error("gather did not raise: " .. tostring(err)) end
print(string.format("RESULT cancel_ms=%.3f n=%d", (t1 - t_fail) * 1000, n))

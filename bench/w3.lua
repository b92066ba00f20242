-- W3: 1,000 runs of /bin/true, at most 32 at a time, all exit codes collected.
-- Prints processes per second.
local n = tonumber(atom.args[1]) or 1000
local k = tonumber(atom.args[2]) or 32
local list = {}
for i = 1, n do list[i] = i end
-- atom's modules load on first use; bind what is timed first, as the Python
-- and Node versions import theirs before their clocks start.
local map, exec = atom.map, atom.exec
local t0 = atom.now()
local codes = map(list, function() return exec{"/bin/true"}.code end, {concurrency = k})
local dt = atom.now() - t0
for i = 1, n do
  if codes[i] ~= 0 then error("run " .. i .. " exited with " .. tostring(codes[i])) end
end
print(string.format("RESULT procs_per_s=%.1f n=%d wall_s=%.4f", n / dt, n, dt))

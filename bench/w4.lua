-- W4: 16 children that each sleep a given delay, print `ready` and keep running.
-- Waits for all the ready lines, then stops all 16 (SIGTERM, reap) concurrently.
-- Args: the delays in seconds (the harness generates them from a fixed seed).
-- Prints the total time minus the longest delay ("overhead").
local delays = {}
for i, a in ipairs(atom.args) do delays[i] = assert(tonumber(a), "delay " .. i) end
assert(#delays > 0, "usage: atomlua run w4.lua -- DELAY...")
local longest = math.max(table.unpack(delays))
-- atom's modules load on first use; bind what is timed first, as the Python
-- and Node versions import theirs before their clocks start.
local spawn, gather = atom.spawn, atom.gather
local procs, starts, stops = {}, {}, {}
for i, d in ipairs(delays) do
  starts[i] = function()
    local cmd = string.format("sleep %s; echo ready; exec sleep 30", d)
    procs[i] = spawn{"sh", "-c", cmd, name = "w4-" .. i}
    procs[i]:expect("ready")
  end
  stops[i] = function() procs[i]:stop() end
end
local t0 = atom.now()
gather(starts)
gather(stops)
local dt = atom.now() - t0
print(string.format("RESULT overhead_ms=%.3f longest_ms=%.0f", (dt - longest) * 1000, longest * 1000))

-- W5: 20,000 JSON-RPC calls, 64 in flight, against the harness's local nginx.
-- Args: URL [N [K]]. Prints requests per second; the harness adds client CPU
-- per request from the process's rusage.
local url = assert(atom.args[1], "usage: atomlua run w5.lua -- URL [N [K]]")
local n = tonumber(atom.args[2]) or 20000
local k = tonumber(atom.args[3]) or 64
local list = {}
for i = 1, n do list[i] = i end
-- atom's modules load on first use; bind what is timed first, as the Python
-- and Node versions import theirs before their clocks start.
local map, rpc = atom.map, atom.rpc
local t0 = atom.now()
local r = map(list, function() return rpc(url, "status") end, {concurrency = k})
local dt = atom.now() - t0
for i = 1, n do
  if r[i] ~= "ok" then error("call " .. i .. " returned " .. tostring(r[i])) end
end
print(string.format("RESULT req_per_s=%.1f n=%d wall_s=%.4f", n / dt, n, dt))

-- W8: receive N small WebSocket text messages pushed as fast as possible by
-- bench/w8_server.py. Args: URL [N]. Prints messages per second.
local url, n = atom.args[1], tonumber(atom.args[2] or 200000)
local t0 = atom.now()
local ws <close> = atom.ws.connect(url .. "/?n=" .. n)
local count = 0
for _ in ws:messages() do count = count + 1 end
local dt = atom.now() - t0
assert(count == n, ("got %d of %d messages"):format(count, n))
print(("RESULT msg_per_s=%.1f n=%d wall_s=%.4f"):format(n / dt, n, dt))

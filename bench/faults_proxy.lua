-- Benchmark: atom.proxy at zero delay against a direct connection, to
-- spec/fixtures/server.py's TCP port: the added round-trip latency (1-byte
-- echo, N round trips) and the throughput of one connection (M bytes sent
-- by the server, read by this scenario). Prints RESULT lines.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local N = tonumber(atom.args[1]) or 5000
local BYTES = tonumber(atom.args[2]) or 200 * 1024 * 1024
local srv = atom.spawn{ "python3", here .. "/../spec/fixtures/server.py" }
local _, tcp = srv:expect("PORT %d+ TCP (%d+)", 10)
tcp = tonumber(tcp)
local px = atom.proxy{ upstream = "127.0.0.1:" .. tcp }

local function rtt(port)
  local s <close> = atom.tcp.connect("127.0.0.1", port, 5)
  s:write("ECHO\n")
  for _ = 1, 200 do s:write("x"); s:read(1) end -- warm up
  local times = {}
  for i = 1, N do
    local t0 = atom.now()
    s:write("x")
    s:read(1)
    times[i] = atom.now() - t0
  end
  table.sort(times)
  return times[N // 2] * 1e6
end

local function throughput(port)
  local s <close> = atom.tcp.connect("127.0.0.1", port, 5)
  s:write(("SEND %d CLOSE\n"):format(BYTES))
  local t0, got = atom.now(), 0
  while got < BYTES do
    local chunk = s:read(math.min(1024 * 1024, BYTES - got), 60)
    got = got + #chunk
  end
  return BYTES / (atom.now() - t0) / 1e6
end

-- Interleave direct and proxied runs so load from elsewhere hits both.
local d1, p1 = rtt(tcp), rtt(px.port)
local d2, p2 = rtt(tcp), rtt(px.port)
local direct, proxied = math.min(d1, d2), math.min(p1, p2)
print(("RESULT rtt_us direct=%.1f proxied=%.1f added=%.1f"):format(direct, proxied, proxied - direct))
local td1, tp1 = throughput(tcp), throughput(px.port)
local td2, tp2 = throughput(tcp), throughput(px.port)
local td, tp = math.max(td1, td2), math.max(tp1, tp2)
print(("RESULT throughput_MBps direct=%.0f proxied=%.0f ratio=%.2f"):format(td, tp, tp / td))
srv:stop()

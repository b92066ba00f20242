-- An HTTP node behind atom.proxy: 100 ms of delay makes every round trip
-- slower by at least that much, a blackhole turns calls into timeouts, and
-- a reset into `http` errors with cause `reset`. No isolation, no root:
-- this is what still works in a CI container that refuses namespaces.
-- Run it: atomlua run scenarios/proxy_latency.lua

local port = atom.free_port()
local node <close> = atom.spawn{ "python3", "-m", "http.server", "--bind", "127.0.0.1", port,
  name = "web", output = "null", critical = true }
atom.wait_port("127.0.0.1", port, 10)

local px <close> = atom.proxy{ upstream = "127.0.0.1:" .. port }
local url = ("http://%s:%d/"):format(px.host, px.port)

-- The median and the fastest of n round trips through the proxy.
local function round_trip(n)
  local times = {}
  for i = 1, n do
    local t0 = atom.now()
    atom.assert_eq(atom.http.get(url, 5).status, 200)
    times[i] = atom.now() - t0
  end
  table.sort(times)
  return times[(n + 1) // 2], times[1]
end

local base

atom.test("plain forwarding", function()
  base = round_trip(10)
  assert(px.stats.connections >= 10)
end)

atom.test("100 ms of delay on the way up slows every round trip by at least 100 ms", function()
  px:set{ delay = 0.1, direction = "up" }
  local slow, fastest = round_trip(5)
  -- Each round trip carries the whole delay; the medians differ by about
  -- that much (the server's own time varies a little between the two).
  assert(fastest >= 0.1, ("a round trip took %.3fs only"):format(fastest))
  assert(slow - base >= 0.09, ("round trip grew by %.3fs only"):format(slow - base))
  px:clear()
end)

atom.test("a blackhole turns calls into timeouts", function()
  px:set{ blackhole = true }
  local ok, e = pcall(atom.http.get, url, 0.5)
  assert(not ok and atom.is_error(e, "timeout"), tostring(e))
  px:clear()
  atom.assert_eq(atom.http.get(url, 5).status, 200)
end)

atom.test("a reset turns calls into http errors with cause reset", function()
  px:set{ reset = true }
  local ok, e = pcall(atom.http.get, url, 5)
  assert(not ok and atom.is_error(e, "http") and e.cause == "reset", tostring(e))
  px:clear()
  atom.assert_eq(atom.http.get(url, 5).status, 200)
end)

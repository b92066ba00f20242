-- atom.proxy (SPEC §11) in module mode, against the TCP port of
-- spec/fixtures/server.py: each toxic measured (delay, jitter, rate,
-- blackhole, reset, direction), settings switched on live connections,
-- close with connections open, stats, ownership and usage errors.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"

local py
local run = atom.run

setup(function() py = netfix.python() end)
teardown(function() if py then py.stop() end end)

local function proxy()
  return atom.proxy{ upstream = "127.0.0.1:" .. py.tcp }
end

-- A stream through px to the fixture's echo.
local function echo(px)
  local s = atom.tcp.connect(px.host, px.port, 5)
  s:write("ECHO\n")
  return s
end

-- Round trips of one byte on s: a list of seconds.
local function round_trips(s, n)
  local out = {}
  for i = 1, n do
    local t0 = atom.now()
    s:write("x")
    assert.equal("x", s:read(1, 5))
    out[i] = atom.now() - t0
  end
  return out
end

local function mean(t)
  local sum = 0
  for _, v in ipairs(t) do sum = sum + v end
  return sum / #t
end

local function min(t) return math.min(table.unpack(t)) end
local function max(t) return math.max(table.unpack(t)) end

local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert(not ok, "expected an error")
  return e
end

describe("atom.proxy", function()
  it("forwards both ways and counts connections and bytes", function()
    run(function()
      local px <close> = proxy()
      assert.equal("127.0.0.1", px.host)
      assert.is_true(px.port > 0)
      local s = echo(px)
      s:write("hello")
      assert.equal("hello", s:read(5, 5))
      local st = px.stats
      assert.equal(1, st.connections)
      assert.equal(1, st.open)
      assert.equal(10, st.bytes_up) -- "ECHO\n" and "hello"
      assert.equal(5, st.bytes_down)
      s:close()
      atom.wait_until(function() return px.stats.open == 0 end, 5)
      assert.equal(1, px.stats.connections)
      assert.matches("^proxy 127.0.0.1:%d+ %-> 127.0.0.1:%d+$", tostring(px))
    end)
  end)

  it("delays each chunk by the setting, +10% / -0, over 100 round trips #timing", function()
    run(function()
      local px <close> = proxy()
      local s <close> = echo(px)
      local base = mean(round_trips(s, 20))
      px:set{ delay = 0.05, direction = "up" }
      local rts = round_trips(s, 100)
      assert.is_true(min(rts) >= 0.05, "a round trip took less than the delay: " .. min(rts))
      local added = mean(rts) - base
      assert.is_true(added >= 0.05 and added <= 0.055, ("added %.4fs on average"):format(added))
      -- both ways: the delay counts twice per round trip
      px:set{ direction = "both" }
      rts = round_trips(s, 10)
      assert.is_true(min(rts) >= 0.1, "both ways: " .. min(rts))
    end)
  end)

  it("adds a uniform jitter around the delay #timing", function()
    run(function()
      local px <close> = proxy()
      local s <close> = echo(px)
      px:set{ delay = 0.05, jitter = 0.04, direction = "down" }
      local rts = round_trips(s, 40)
      assert.is_true(min(rts) >= 0.01, "below delay - jitter: " .. min(rts))
      assert.is_true(max(rts) - min(rts) > 0.03, "no spread: " .. (max(rts) - min(rts)))
    end)
  end)

  it("limits the rate to within 10% of the setting #timing", function()
    run(function()
      local px <close> = proxy()
      px:set{ rate = 200000, direction = "down" }
      local s <close> = atom.tcp.connect(px.host, px.port, 5)
      s:write("SEND 400000 CLOSE\n")
      local t0 = atom.now()
      local got = s:read(400000, 20)
      local rate = #got / (atom.now() - t0)
      assert.is_true(rate >= 180000 and rate <= 220000, ("rate %.0f B/s"):format(rate))
      assert.equal(400000, px.stats.bytes_down)
    end)
  end)

  it("switches settings on a live connection", function()
    run(function()
      local px <close> = proxy()
      local s <close> = echo(px)
      assert.is_true(max(round_trips(s, 5)) < 0.1)
      px:set{ delay = 0.1 }
      assert.is_true(min(round_trips(s, 3)) >= 0.2)
      px:clear()
      assert.is_true(max(round_trips(s, 5)) < 0.1)
    end)
  end)

  it("blackholes: bytes vanish, reads time out, clear restores the connection", function()
    run(function()
      local px <close> = proxy()
      local s <close> = echo(px)
      round_trips(s, 1)
      px:set{ blackhole = true }
      s:write("lost")
      local e = err_of(s.read, s, 4, 0.5)
      assert.is_true(atom.is_error(e, "timeout"), tostring(e))
      px:clear()
      assert.is_true(#round_trips(s, 3) == 3)
      -- a blackhole on new connections too: connect works, nothing comes back
      px:set{ blackhole = true, direction = "down" }
      local s2 <close> = echo(px)
      s2:write("y")
      assert.is_true(atom.is_error(err_of(s2.read, s2, 1, 0.5), "timeout"))
    end)
  end)

  it("resets open connections and every new one", function()
    run(function()
      local px <close> = proxy()
      local s <close> = echo(px)
      round_trips(s, 1)
      -- down: the client side gets the RST (up would reset the fixture's side)
      px:set{ reset = true, direction = "down" }
      local e = err_of(s.read, s, 1, 5)
      assert.is_true(atom.is_error(e, "io") and e.cause == "reset", tostring(e))
      local s2 <close> = atom.tcp.connect(px.host, px.port, 5)
      s2:write("ECHO\n")
      e = err_of(s2.read, s2, 1, 5)
      assert.is_true(atom.is_error(e, "io") and e.cause == "reset", tostring(e))
      px:clear()
      local s3 <close> = echo(px)
      assert.equal(1, #round_trips(s3, 1))
    end)
  end)

  it("closes with connections open: they end and the port is free", function()
    run(function()
      local px = proxy()
      local s <close> = echo(px)
      round_trips(s, 1)
      px:close()
      px:close() -- idempotent
      local ok, v = pcall(s.read, s, 1, 5)
      assert.is_true((ok and v == nil) or (atom.is_error(v, "io")), tostring(v))
      local e = err_of(atom.tcp.connect, px.host, px.port, 2)
      assert.equal("refused", e.cause)
      e = err_of(px.set, px, { delay = 1 })
      assert.equal("closed", e.cause)
      assert.equal(0, px.stats.open)
    end)
  end)

  it("is closed when the task that made it ends", function()
    local port
    run(function()
      atom.gather(function()
        local px = proxy()
        port = px.port
        local s = echo(px)
        round_trips(s, 1)
      end)
      local e = err_of(atom.tcp.connect, "127.0.0.1", port, 2)
      assert.equal("refused", e.cause)
    end)
    local stats = atom._stats()
    assert.equal(0, stats.handles or 0)
  end)

  it("a refused upstream resets the client", function()
    run(function()
      local free = atom.free_port()
      local px <close> = atom.proxy{ upstream = "127.0.0.1:" .. free }
      local s <close> = atom.tcp.connect(px.host, px.port, 5)
      local ok, e = pcall(s.read, s, 1, 5)
      assert.is_true((ok and e == nil) or atom.is_error(e, "io"), tostring(e))
    end)
  end)

  it("listens where asked", function()
    run(function()
      local port = atom.free_port()
      local px <close> = atom.proxy{ upstream = "localhost:" .. py.tcp, listen = port }
      assert.equal(port, px.port)
      local s <close> = echo(px)
      assert.equal(1, #round_trips(s, 1))
      local port2 = atom.free_port()
      local px2 <close> = atom.proxy{ upstream = "127.0.0.1:" .. py.tcp, listen = "127.0.0.1:" .. port2 }
      assert.equal(port2, px2.port)
      local e = err_of(atom.proxy, { upstream = "127.0.0.1:" .. py.tcp, listen = port })
      assert.is_true(atom.is_error(e, "io"), tostring(e))
    end)
  end)

  it("raises usage for bad arguments", function()
    run(function()
      for _, bad in ipairs({
        { nil, "table expected" },
        { {}, "upstream" },
        { { upstream = "nohostport" }, "host:port" },
        { { upstream = "example.com:80" }, "IP address" },
        { { upstream = "127.0.0.1:1", foo = 1 }, "unknown field 'foo'" },
        { { upstream = "127.0.0.1:1", listen = {} }, "listen" },
      }) do
        local e = err_of(atom.proxy, bad[1])
        assert.equal("usage", e.kind)
        assert.matches(bad[2], e.message, 1, true)
      end
      local px <close> = proxy()
      for _, bad in ipairs({
        { { delay = -1 }, "non-negative" },
        { { delay = "1" }, "must be a number" },
        { { direction = "sideways" }, "direction" },
        { { bogus = true }, "unknown field 'bogus'" },
        { { rate = 0 / 0 }, "non-negative" },
      }) do
        local e = err_of(px.set, px, bad[1])
        assert.equal("usage", e.kind)
        assert.matches(bad[2], e.message, 1, true)
      end
    end)
  end)

  it("raises usage for hosts and rules outside an isolated run", function()
    run(function()
      assert.is_false(atom.isolated)
      local e = err_of(atom.net.host)
      assert.equal("usage", e.kind)
      assert.matches("--isolate", e.message, 1, true)
      e = err_of(atom.net.drop, { from = "10.77.0.2", to = "10.77.0.3" })
      assert.matches("--isolate", e.message, 1, true)
      e = err_of(atom.net.heal)
      assert.matches("--isolate", e.message, 1, true)
    end)
  end)
end)

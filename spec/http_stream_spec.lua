-- atom.http.stream (SPEC §10 "Streamed HTTP") against
-- spec/fixtures/stream_server.py: chunked lines, Server-Sent Events, closing
-- mid-stream, a large body read slowly, cancellation.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"

local srv
local run = atom.run

local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return err
end

local function rss_kib()
  local f = io.open("/proc/self/status")
  local s = f:read("a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

setup(function() srv = netfix.stream_server() end)
teardown(function() if srv then srv.stop() end end)

describe("atom.http.stream", function()
  it("returns at the headers and iterates chunked lines", function()
    run(function()
      local r <close> = atom.http.stream{ url = srv.url .. "/lines" }
      assert.equal(200, r.status)
      assert.equal("text/plain", r.headers["content-type"])
      local lines = {}
      for l in r:lines(5) do lines[#lines + 1] = l end
      assert.same({ "one", "two", "three", "", "last" }, lines)
      assert.is_nil(r:read())
    end)
  end)

  it("parses Server-Sent Events: names, multi-line data, ids", function()
    run(function()
      local r <close> = atom.http.stream{ url = srv.url .. "/sse" }
      local evs = {}
      for ev in r:sse(5) do evs[#evs + 1] = ev end
      assert.same({
        { event = "message", data = "first" },
        { event = "update", data = "line one\nline two", id = "7" },
        { event = "message", data = "no space", id = "7" },
        { event = "empty-data", data = "", id = "" },
      }, evs)
    end)
  end)

  it("sends a body and reads it back", function()
    run(function()
      local r <close> = atom.http.stream{ method = "POST", url = srv.url .. "/echo_lines", body = "a\nb\n" }
      local got = {}
      for l in r:lines() do got[#got + 1] = l end
      assert.same({ "a", "b" }, got)
    end)
  end)

  it("close mid-stream: the server sees the disconnect within 100 ms", function()
    run(function()
      local r = atom.http.stream{ url = srv.url .. "/forever?id=s1" }
      assert.equal("tick", r:lines()())
      r:close()
      r:close()
      local st = atom.http.get(srv.url .. "/closed?id=s1"):json()
      assert.is_true(st.closed)
      assert.is_true(st.after < 0.1, "seen after " .. tostring(st.after))
      assert.equal("closed", err_of(r.read, r).cause)
    end)
  end)

  it("reads 100 MB slowly with bounded memory (the transfer pauses)", function()
    run(function()
      local before = rss_kib()
      local n = 100 * 1000 * 1000
      local r <close> = atom.http.stream{ url = srv.url .. "/bytes?n=" .. n }
      atom.sleep(1)
      local buffered, paused = r._h:info()
      assert.is_true(paused)
      assert.is_true(buffered <= 16 * 1024 * 1024, "buffered " .. buffered)
      local total, reads = 0, 0
      while true do
        local c = r:read(30)
        if not c then break end
        if total == 0 then assert.equal(string.char(0, 1, 2), c:sub(1, 3)) end
        total = total + #c
        reads = reads + 1
        if reads % 20 == 0 then atom.sleep(0.01) end
      end
      assert.equal(n, total)
      -- (ASan's quarantine keeps freed memory: the bound is checked without it)
      if os.getenv("ATOMLUA_SANITIZE") then return end
      local grown = (rss_kib() - before) / 1024
      assert.is_true(grown < 80, ("RSS grew by %.1f MiB"):format(grown))
    end)
  end)

  it("cancelling a task blocked in resp:read unwinds and closes the stream", function()
    run(function()
      local t = atom.go(function()
        local r = atom.http.stream{ url = srv.url .. "/forever?id=s2" }
        r:read()
        r:read()
        while true do r:read() end
      end)
      atom.sleep(0.2)
      t:cancel()
      assert.equal("cancelled", err_of(t.join, t).kind)
      local st = atom.http.get(srv.url .. "/closed?id=s2"):json()
      assert.is_true(st.closed)
      assert.is_true(st.after < 0.5)
    end)
  end)

  it("transport failures raise http with a cause; bad fields raise usage", function()
    run(function()
      local err = err_of(atom.http.stream, { url = "http://127.0.0.1:" .. atom.free_port() .. "/" })
      assert.equal("http", err.kind)
      assert.equal("refused", err.cause)
      assert.equal("usage", err_of(atom.http.stream, { url = srv.url, bogus = 1 }).kind)
      assert.equal("usage", err_of(atom.http.stream, "x").kind)
    end)
  end)
end)

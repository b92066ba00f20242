-- atom.ws (SPEC §10 "WebSocket") against spec/fixtures/ws_server.py, a
-- server on Debian's python3-websockets, plain and with TLS.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"

local srv, tls_srv, cert_dir
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

local function stats()
  return atom.json.decode(atom.http.get((srv.url .. "/stats"):gsub("^ws", "http")).body)
end

setup(function()
  srv = netfix.ws()
  cert_dir = netfix.tmpdir()
  local ok = os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
    .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1")
    :format(cert_dir, cert_dir))
  assert(ok, "openssl could not make a certificate")
  tls_srv = netfix.ws("--tls " .. cert_dir .. "/cert.pem " .. cert_dir .. "/key.pem")
end)
teardown(function()
  if srv then srv.stop() end
  if tls_srv then tls_srv.stop() end
  if cert_dir then os.execute("rm -rf " .. cert_dir) end
end)

describe("atom.ws", function()
  it("echoes text and binary messages", function()
    run(function()
      local ws <close> = atom.ws.connect(srv.url .. "/echo")
      ws:send("hello")
      assert.same({ "hello", "text" }, { ws:recv() })
      ws:send("\0\1\2\255", "binary")
      assert.same({ "\0\1\2\255", "binary" }, { ws:recv(5) })
      ws:send(("é"):rep(70000))
      assert.equal(("é"):rep(70000), ws:recv())
      local err = err_of(ws.send, ws, "\255")
      assert.equal("usage", err.kind)
      assert.matches("UTF%-8", err.message)
      assert.matches("^atom.ws %(ws://", tostring(ws))
    end)
  end)

  it("receives 10,000 pushed messages in order with a slow reader, memory bounded", function()
    run(function()
      local before = rss_kib()
      local ws <close> = atom.ws.connect(srv.url .. "/push?n=10000&size=10000")
      atom.sleep(1) -- the reader lags: the queue fills, then the socket is not read
      local _, _, _, _, _, _, queued = ws._c:info()
      assert.is_true(queued <= 1001, "queued " .. queued)
      local i = 0
      for m in ws:messages(10) do
        i = i + 1
        assert.equal(tostring(i), m:match("^(%d+) "))
        assert.equal(10000, #m)
        if i % 1000 == 0 then atom.sleep(0.05) end
      end
      assert.equal(10000, i)
      assert.equal(1000, ws.close_code)
      assert.equal("done", ws.close_reason)
      assert.is_nil(ws:recv()) -- nil again
      -- (ASan's quarantine keeps freed memory: the bound is checked without it)
      if os.getenv("ATOMLUA_SANITIZE") then return end
      local grown = (rss_kib() - before) / 1024
      -- 100 MB went through; the bounds are 16 MiB queued plus buffers
      assert.is_true(grown < 60, ("RSS grew by %.1f MiB"):format(grown))
    end)
  end)

  it("reassembles fragmented messages", function()
    run(function()
      local ws <close> = atom.ws.connect(srv.url .. "/fragments")
      assert.same({ "hello world", "text" }, { ws:recv(5) })
      assert.same({ "\0\1\2", "binary" }, { ws:recv(5) })
    end)
  end)

  it("takes a 15 MiB message and fails a 17 MiB one with too_large", function()
    run(function()
      local n = 15 * 1024 * 1024
      local ws <close> = atom.ws.connect(srv.url .. "/big?n=" .. n)
      local m, kind = ws:recv(30)
      assert.equal("binary", kind)
      assert.equal(n, #m)
      assert.equal(string.char(250), m:sub(251, 251))
      local ws2 <close> = atom.ws.connect(srv.url .. "/big?n=" .. 17 * 1024 * 1024)
      local err = err_of(ws2.recv, ws2, 30)
      assert.equal("io", err.kind)
      assert.equal("too_large", err.cause)
      assert.equal("too_large", err_of(ws2.recv, ws2).cause) -- sticky
    end)
  end)

  it("a smaller max_message applies", function()
    run(function()
      local ws <close> = atom.ws.connect(srv.url .. "/big?n=2000", { max_message = 1000 })
      assert.equal("too_large", err_of(ws.recv, ws, 10).cause)
    end)
  end)

  it("answers the server's pings", function()
    run(function()
      local ws <close> = atom.ws.connect(srv.url .. "/ping")
      assert.equal("pong seen", ws:recv(10))
    end)
  end)

  it("reports a server close with code and reason, then nil", function()
    run(function()
      local ws <close> = atom.ws.connect(srv.url .. "/close4001")
      assert.is_nil(ws:recv(10))
      assert.equal(4001, ws.close_code)
      assert.equal("bye now", ws.close_reason)
      assert.is_nil(ws:recv())
      local err = err_of(ws.send, ws, "late")
      assert.equal("io", err.kind)
    end)
  end)

  it("raises io reset on an abrupt reset", function()
    run(function()
      local ws <close> = atom.ws.connect(srv.url .. "/reset")
      local err = err_of(ws.recv, ws, 10)
      assert.equal("io", err.kind)
      assert.equal("reset", err.cause)
      assert.matches("ws_spec.lua:%d+: ", tostring(err))
    end)
  end)

  it("raises http with the status when the handshake is refused", function()
    run(function()
      local err = err_of(atom.ws.connect, srv.url .. "/refuse")
      assert.equal("http", err.kind)
      assert.equal(401, err.status)
      assert.matches("no token", err.message)
      assert.matches("ws_spec.lua:%d+: ", tostring(err))
    end)
  end)

  it("raises io refused, and usage for bad URLs", function()
    run(function()
      local port = atom.free_port()
      local err = err_of(atom.ws.connect, "ws://127.0.0.1:" .. port .. "/")
      assert.equal("io", err.kind)
      assert.equal("refused", err.cause)
      assert.equal("usage", err_of(atom.ws.connect, "http://x/").kind)
      assert.equal("usage", err_of(atom.ws.connect, srv.url, { bogus = 1 }).kind)
    end)
  end)

  it("speaks wss:// with a CA given, and refuses an unknown CA", function()
    run(function()
      local url = "wss://localhost:" .. tls_srv.port .. "/echo"
      local ws <close> = atom.ws.connect(url, { tls = { ca = cert_dir .. "/cert.pem" } })
      ws:send("over tls")
      assert.equal("over tls", ws:recv(5))
      ws:send(("x"):rep(300000))
      assert.equal(300000, #ws:recv(5))
      local err = err_of(atom.ws.connect, url)
      assert.equal("io", err.kind)
      assert.equal("tls", err.cause)
      local ws2 <close> = atom.ws.connect(url, { tls = { insecure = true } })
      ws2:send("ok")
      assert.equal("ok", ws2:recv(5))
    end)
  end)

  it("close sends a close frame and the server sees it", function()
    run(function()
      local ws = atom.ws.connect(srv.url .. "/hold?id=c1")
      atom.wait_until(function() return stats().open.c1 end, 5)
      ws:close(4000, "later")
      ws:close() -- idempotent
      atom.wait_until(function() return stats().open.c1 == false end, 5)
      assert.equal("closed", err_of(ws.recv, ws).cause)
    end)
  end)

  it("cancelling a task blocked in ws:recv unwinds and closes its connection", function()
    run(function()
      local t = atom.go(function()
        local ws = atom.ws.connect(srv.url .. "/hold?id=c2")
        ws:recv()
      end)
      atom.wait_until(function() return stats().open.c2 end, 5)
      t:cancel()
      local ok, err = pcall(t.join, t)
      assert.is_false(ok)
      assert.equal("cancelled", err.kind)
      atom.wait_until(function() return stats().open.c2 == false end, 5)
    end)
  end)

  it("a timed-out recv loses nothing", function()
    run(function()
      local ws <close> = atom.ws.connect(srv.url .. "/echo")
      assert.equal("timeout", err_of(ws.recv, ws, 0.05).kind)
      ws:send("after")
      assert.equal("after", ws:recv(5))
    end)
  end)
end)

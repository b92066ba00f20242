-- atom.grpc (SPEC §9): unary and streaming calls against
-- spec/fixtures/grpc_server.py (python3-grpcio) on 127.0.0.1, h2c and TLS.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local PROTO = here .. "/fixtures/grpc/test.proto"
local run = atom.run
local fix, T, TLS, cert_dir

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Start the fixture; returns {port =, tls =, pid =, stop =}.
local function start_fixture(args)
  local f = assert(io.popen("exec /usr/bin/python3 " .. q(here .. "/fixtures/grpc_server.py") .. " " .. (args or ""), "r"))
  local line = f:read("l")
  assert(line, "grpc_server.py did not start")
  local port, tls, pid = line:match("PORT (%d+) TLS (%d+) PID (%d+)")
  assert(pid, "grpc_server.py said: " .. line)
  return { port = tonumber(port), tls = tonumber(tls), pid = pid,
           stop = function() os.execute("kill " .. pid .. " 2>/dev/null"); f:close() end }
end

local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return err
end

local function stats() return atom.grpc.call(T, "atomtest.Test/GetStats", {}) end

setup(function()
  cert_dir = netfix.tmpdir()
  assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
    .. "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout %s -out %s >/dev/null 2>&1")
    :format(q(cert_dir .. "/key.pem"), q(cert_dir .. "/cert.pem"))))
  fix = start_fixture(("--tls %s %s"):format(q(cert_dir .. "/cert.pem"), q(cert_dir .. "/key.pem")))
  T = "127.0.0.1:" .. fix.port
  TLS = "https://localhost:" .. fix.tls
  run(function() atom.grpc.load(PROTO) end)
end)

teardown(function()
  if fix then fix.stop() end
  if cert_dir then os.execute("rm -rf " .. q(cert_dir)) end
end)

describe("atom.grpc.call", function()
  it("round-trips every scalar type and its edges", function()
    run(function()
      local req = { d = 0 / 0, f = -2.5, i32 = -2147483648, i64 = math.mininteger, u32 = 4294967295,
        u64 = -1, s32 = -1, s64 = math.maxinteger, fx32 = 4294967295, fx64 = -1, sf32 = 2147483647,
        sf64 = math.mininteger, b = true, s = "héllo ✓ 𝄞", by = "", color = 1, maybe = 0 }
      local r = atom.grpc.call(T, "atomtest.Test/Echo", req)
      for k, v in pairs(req) do
        if k == "d" then assert.is_true(r.d ~= r.d)
        elseif k == "color" then assert.equal("RED", r.color)
        else assert.equal(v, r[k], k) end
      end
      r = atom.grpc.call("http://127.0.0.1:" .. fix.port, "atomtest.Test/Echo", { by = "\0\1\255" })
      assert.equal("\0\1\255", r.by)
      assert.equal(0, r.i64)
      assert.equal("", r.s)
      assert.equal("COLOR_UNSPECIFIED", r.color)
      assert.is_nil(r.maybe)
    end)
  end)

  it("round-trips repeated, map, oneof, nested and enum fields", function()
    run(function()
      local r = atom.grpc.call(T, "atomtest.Test/EchoAll", { ints = { 3, 2, 1 }, counts = { a = 1, b = 2 },
        by_id = { [math.maxinteger] = { name = "big", nums = { 1 } } }, inner = { name = "i" },
        colors = { "GREEN", 42 }, at = { seconds = 1, nanos = 2 } })
      assert.same({ 3, 2, 1 }, r.ints)
      assert.same({ a = 1, b = 2 }, r.counts)
      assert.same({ name = "big", nums = { 1 } }, r.by_id[math.maxinteger])
      assert.same({ name = "i", nums = {} }, r.inner)
      assert.is_nil(r.text)
      assert.same({ "GREEN", 42 }, r.colors)
      assert.same({ seconds = 1, nanos = 2 }, r.at)
      assert.same({}, r.strs)
      assert.is_nil(r.nested)
    end)
  end)

  it("carries a 10 MB message each way", function()
    run(function()
      local data = ("0123456789abcdef"):rep(10 * 1024 * 1024 // 16)
      local r = atom.grpc.call(T, "atomtest.Test/Big", { data = data })
      assert.equal(#data, r.size)
      assert.is_true(r.data == data)
      r = atom.grpc.call(T, "atomtest.Test/Big", { size = 10 * 1024 * 1024 })
      assert.equal(10 * 1024 * 1024, #r.data)
      local e = err_of(atom.grpc.call, T, "atomtest.Test/Big", { size = 2 * 1024 * 1024 }, { max_message = 1024 * 1024 })
      assert.equal("grpc", e.kind)
      assert.equal("RESOURCE_EXHAUSTED", e.status)
      assert.equal("too_large", e.cause)
    end)
  end)

  it("raises grpc with code, status and the percent-decoded message (trailers-only)", function()
    run(function()
      local e = err_of(atom.grpc.call, T, "atomtest.Test/Fail", { code = 5, message = "key 'ü' not found: 100%" })
      assert.equal("grpc", e.kind)
      assert.equal(5, e.code)
      assert.equal("NOT_FOUND", e.status)
      assert.equal("key 'ü' not found: 100%", e.message)
      assert.equal("atomtest.Test/Fail", e.method)
      assert.equal("127.0.0.1:" .. fix.port, e.target)
      assert.matches("^spec/grpc_spec.lua:%d+: grpc NOT_FOUND from atomtest.Test/Fail at 127.0.0.1:%d+: key 'ü' not found: 100%%$", tostring(e))
      -- status in the trailers after headers
      e = err_of(atom.grpc.call, T, "atomtest.Test/Fail", { code = 9, message = "late", after_headers = true })
      assert.equal("FAILED_PRECONDITION", e.status)
      assert.equal("late", e.message)
    end)
  end)

  it("maps every status code to its name", function()
    run(function()
      local names = { "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
        "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED" }
      for code, name in ipairs(names) do
        local e = err_of(atom.grpc.call, T, "atomtest.Test/Fail", { code = code, message = name })
        assert.equal(code, e.code)
        assert.equal(name, e.status)
        assert.equal(code, atom.grpc.codes[name])
      end
    end)
  end)

  it("sends and returns metadata, -bin keys as raw bytes", function()
    run(function()
      local r, md = atom.grpc.call(T, "atomtest.Test/Metadata", {},
        { metadata = { ["x-token"] = "abc", ["X-Num"] = 7, ["blob-bin"] = "\0\1\254\255" } })
      assert.equal("abc", r.pairs["x-token"])
      assert.equal("7", r.pairs["x-num"])
      assert.equal("hex:0001feff", r.pairs["blob-bin"])
      assert.equal("1", md.headers["x-init"])
      assert.equal("\0\1\254\255", md.headers["init-bin"])
      assert.equal("2", md.trailers["x-trail"])
      assert.equal("\255\0", md.trailers["trail-bin"])
      assert.equal("0", md.trailers["grpc-status"])
    end)
  end)

  it("raises timeout on the local deadline and the server sees the call end", function()
    run(function()
      atom.grpc.call(T, "atomtest.Test/ResetStats", {})
      local t0 = atom.now()
      local e = err_of(atom.grpc.call, T, "atomtest.Test/Hang", {}, 0.3)
      -- grpc-timeout went along: the server's DEADLINE_EXCEEDED may come first
      if e.kind == "grpc" then
        assert.equal("DEADLINE_EXCEEDED", e.status)
      else
        assert.equal("timeout", e.kind)
        assert.matches("grpc atomtest.Test/Hang timed out after 0.3s", e.message, 1, true)
      end
      assert.is_true(atom.now() - t0 < 2)
      atom.wait_until(function() return stats().cancelled == 1 end, { timeout = 5, interval = 0.02 })
      -- a local deadline alone (the server's is far)
      local s = atom.grpc.stream(T, "atomtest.Test/Hang")
      s:send({})
      s:close_send()
      e = err_of(s.recv, s, 0.2)
      assert.equal("timeout", e.kind)
      s:cancel()
    end)
  end)

  it("resets a cancelled task's call: the server sees it within 100 ms", function()
    local uv = require "luv"
    run(function()
      atom.grpc.call(T, "atomtest.Test/ResetStats", {})
      local cancel_at
      local t = atom.go(function() atom.grpc.call(T, "atomtest.Test/Hang", {}) end)
      atom.sleep(0.2)
      local s, us = uv.gettimeofday()
      cancel_at = s + us / 1e6
      t:cancel()
      pcall(t.join, t)
      atom.sleep(0.3) -- no traffic that could carry a queued reset
      local st
      atom.wait_until(function() st = stats(); return st.cancelled == 1 end, { timeout = 5, interval = 0.01 })
      local delay = st.last_cancel - cancel_at
      assert.is_true(delay < 0.1, ("the server saw the cancel after %.3fs"):format(delay))
    end)
  end)

  it("resets a cancelled call at once while other calls share the connection", function()
    local uv = require "luv"
    run(function()
      atom.grpc.call(T, "atomtest.Test/ResetStats", {})
      local other = atom.grpc.stream(T, "atomtest.Test/Bidi") -- stays open, idle
      other:send({ n = 1 })
      assert.equal(1, other:recv(5).n)
      local t = atom.go(function() atom.grpc.call(T, "atomtest.Test/Hang", {}) end)
      atom.sleep(0.2)
      local s, us = uv.gettimeofday()
      local cancel_at = s + us / 1e6
      t:cancel()
      pcall(t.join, t)
      atom.sleep(0.3) -- no other traffic meanwhile
      local st = stats()
      assert.equal(1, st.cancelled)
      assert.is_true(st.last_cancel - cancel_at < 0.1, ("seen after %.3fs"):format(st.last_cancel - cancel_at))
      assert.equal(1, st.connections) -- the shared connection stayed
      other:send({ n = 2 })
      assert.equal(2, other:recv(5).n)
      other:cancel()
    end)
  end)

  it("makes 1,000 concurrent calls from 64 tasks over one connection", function()
    run(function()
      atom.grpc.call(T, "atomtest.Test/ResetStats", {})
      local total = 0
      local per = {}
      for i = 1, 64 do per[i] = i end
      atom.map(per, function(i)
        for j = 1, (i <= 40 and 16 or 15) do
          local n = i * 1000 + j
          local r = atom.grpc.call(T, "atomtest.Test/Echo", { i64 = n, s = tostring(n) })
          assert(r.i64 == n and r.s == tostring(n))
          total = total + 1
        end
      end, { concurrency = 64 })
      assert.equal(1000, total)
      local st = stats()
      assert.equal(1000, st.calls)
      assert.equal(1, st.connections)
    end)
  end)

  it("raises UNIMPLEMENTED for a method the server lacks", function()
    run(function()
      local e = err_of(atom.grpc.call, T, "atomtest.Missing/Nothing", {})
      assert.equal("grpc", e.kind)
      assert.equal("UNIMPLEMENTED", e.status)
    end)
  end)

  it("raises UNAVAILABLE with cause refused when nothing listens", function()
    run(function()
      local port = atom.free_port()
      local e = err_of(atom.grpc.call, "127.0.0.1:" .. port, "atomtest.Test/Echo", {})
      assert.equal("grpc", e.kind)
      assert.equal("UNAVAILABLE", e.status)
      assert.equal("refused", e.cause)
    end)
  end)

  it("speaks TLS with a self-signed CA", function()
    run(function()
      local r = atom.grpc.call(TLS, "atomtest.Test/Echo", { s = "secure" }, { tls = { ca = cert_dir .. "/cert.pem" } })
      assert.equal("secure", r.s)
      r = atom.grpc.call(TLS, "atomtest.Test/Echo", { s = "insecure" }, { tls = { insecure = true } })
      assert.equal("insecure", r.s)
      local e = err_of(atom.grpc.call, TLS, "atomtest.Test/Echo", {})
      assert.equal("UNAVAILABLE", e.status)
      assert.equal("tls", e.cause)
    end)
  end)
end)

describe("atom.grpc.stream", function()
  it("receives 10,000 server-streamed messages in order", function()
    run(function()
      local s = atom.grpc.stream(T, "atomtest.Test/ServerStream")
      s:send({ count = 10000, size = 10 })
      s:close_send()
      local n = 0
      for m in s:messages(10) do
        n = n + 1
        assert(m.n == n, "out of order")
      end
      assert.equal(10000, n)
      assert.is_nil(s:recv())
      assert.equal("0", s.trailers["grpc-status"])
      assert.equal("application/grpc", s.headers["content-type"])
    end)
  end)

  it("streams from the client", function()
    run(function()
      local s = atom.grpc.stream(T, "atomtest.Test/ClientStream")
      for i = 1, 500 do s:send({ n = i, payload = ("p"):rep(100) }) end
      s:close_send()
      local r = s:recv(10)
      assert.equal(500, r.count)
      assert.equal(500 * 501 // 2, r.total)
      assert.is_nil(s:recv())
    end)
  end)

  it("echoes on a bidirectional stream, one message at a time", function()
    run(function()
      local s <close> = atom.grpc.stream(T, "atomtest.Test/Bidi")
      for i = 1, 50 do
        s:send({ n = i, payload = "m" .. i })
        local r = s:recv(5)
        assert.equal(i, r.n)
        assert.equal("m" .. i, r.payload)
      end
      s:close_send()
      assert.is_nil(s:recv(5))
    end)
  end)

  it("raises the status of a failed stream; unary methods work too", function()
    run(function()
      local s = atom.grpc.stream(T, "atomtest.Test/Fail")
      s:send({ code = 7, message = "nope" })
      s:close_send()
      local e = err_of(s.recv, s)
      assert.equal("PERMISSION_DENIED", e.status, tostring(e) .. " cause " .. tostring(e.cause))
      assert.equal("nope", e.message)
    end)
  end)

  it("s:cancel resets the stream and the server sees it", function()
    run(function()
      atom.grpc.call(T, "atomtest.Test/ResetStats", {})
      local s = atom.grpc.stream(T, "atomtest.Test/HangStream")
      s:send({})
      s:close_send()
      assert.equal("first", s:recv(5).payload)
      s:cancel()
      atom.wait_until(function() return stats().cancelled == 1 end, { timeout = 5, interval = 0.02 })
      local e = err_of(s.recv, s)
      assert.equal("closed", e.cause)
      s:cancel() -- idempotent
    end)
  end)

  it("is reset when the task that opened it ends", function()
    run(function()
      atom.grpc.call(T, "atomtest.Test/ResetStats", {})
      atom.go(function()
        local s = atom.grpc.stream(T, "atomtest.Test/HangStream")
        s:send({})
        s:close_send()
        s:recv(5)
      end):join()
      atom.wait_until(function() return stats().cancelled == 1 end, { timeout = 5, interval = 0.02 })
    end)
  end)

  it("bounds the wait of recv", function()
    run(function()
      local s = atom.grpc.stream(T, "atomtest.Test/Bidi")
      local e = err_of(s.recv, s, 0.1)
      assert.equal("timeout", e.kind)
      s:cancel()
    end)
  end)
end)

describe("atom.grpc.reflect", function()
  it("loads the services a server lists (in a fresh state)", function()
    local f = netfix.child(([[
      local ok, err = pcall(atom.run, function()
        local services = atom.grpc.reflect(%q)
        table.sort(services)
        io.write(table.concat(services, ","), " ")
        local r = atom.grpc.call(%q, "atomtest.Test/EchoAll", { inner = { name = "r" }, at = { seconds = 4 } })
        io.write(r.inner.name, r.at.seconds)
      end)
    ]]):format(T, T))
    local out = f:read("a")
    f:close()
    assert.equal("atomtest.Test r4", out)
  end)

  it("falls back to v1alpha", function()
    local alpha = start_fixture("--alpha-only")
    local target = "127.0.0.1:" .. alpha.port
    local f = netfix.child(([[
      atom.run(function()
        io.write(table.concat(atom.grpc.reflect(%q), ","), " ")
        io.write(atom.grpc.call(%q, "atomtest.Test/Echo", { i32 = 9 }).i32)
      end)
    ]]):format(target, target))
    local out = f:read("a")
    f:close()
    alpha.stop()
    assert.equal("atomtest.Test 9", out)
  end)
end)

describe("atom.grpc usage errors", function()
  it("names an unknown field with its path, and a wrong type", function()
    run(function()
      local e = err_of(atom.grpc.call, T, "atomtest.Test/EchoAll", { inner = { nmae = "x" } })
      assert.equal("usage", e.kind)
      assert.matches("unknown field 'nmae' in atomtest.All.inner", e.message, 1, true)
      assert.matches("^spec/grpc_spec.lua:%d+:", tostring(e))
      e = err_of(atom.grpc.call, T, "atomtest.Test/Echo", { i32 = "one" })
      assert.equal("usage", e.kind)
      assert.matches("field 'i32' expects int32, got string", e.message, 1, true)
    end)
  end)

  it("names an unknown method", function()
    run(function()
      local e = err_of(atom.grpc.call, T, "atomtest.Test/Nope", {})
      assert.equal("usage", e.kind)
      assert.matches("unknown method atomtest.Test/Nope", e.message, 1, true)
    end)
  end)

  it("raises spawn naming protobuf-compiler when protoc is missing", function()
    local uv = require "luv"
    local path = os.getenv("PATH")
    run(function()
      uv.os_setenv("PATH", "/nonexistent")
      local ok, e = pcall(atom.grpc.load, PROTO)
      uv.os_setenv("PATH", path)
      assert.is_false(ok)
      assert.equal("spawn", e.kind)
      assert.matches("protobuf-compiler", e.message, 1, true)
    end)
  end)

  it("quotes protoc's first error for a malformed .proto", function()
    local dir = netfix.tmpdir()
    local fh = assert(io.open(dir .. "/bad.proto", "w"))
    fh:write('syntax = "proto3";\nmessage M { int32 x = 1 }\n')
    fh:close()
    run(function()
      local e = err_of(atom.grpc.load, dir .. "/bad.proto")
      assert.equal("usage", e.kind)
      assert.matches("bad.proto:2:25: Expected \";\".", e.message, 1, true)
    end)
    os.execute("rm -rf " .. q(dir))
  end)

  it("checks targets and options", function()
    run(function()
      assert.equal("usage", err_of(atom.grpc.call, "nohost", "atomtest.Test/Echo", {}).kind)
      assert.equal("usage", err_of(atom.grpc.call, T, "atomtest.Test/Echo", {}, { tiemout = 1 }).kind)
      assert.equal("usage", err_of(atom.grpc.call, T, "atomtest.Test/Echo", "x").kind)
      assert.equal("usage", err_of(atom.grpc.stream, T, "atomtest.Test/Echo", { tls = true }).kind)
    end)
  end)
end)

describe("grpc events", function()
  it("emits one event per call with target, method, status and duration", function()
    local events = require "atom.events"
    local seen = {}
    events.subscribe(function(ev) if ev.type == "grpc" then seen[#seen + 1] = ev end end)
    run(function()
      atom.grpc.call(T, "atomtest.Test/Echo", {})
      pcall(atom.grpc.call, T, "atomtest.Test/Fail", { code = 5 })
    end)
    events.unsubscribe_all()
    assert.equal(2, #seen)
    assert.equal("OK", seen[1].status)
    assert.equal("atomtest.Test/Echo", seen[1].method)
    assert.equal("127.0.0.1:" .. fix.port, seen[1].target)
    assert.is_true(seen[1].duration >= 0)
    assert.equal("NOT_FOUND", seen[2].status)
    assert.equal("grpc", seen[2].error.kind)
  end)
end)

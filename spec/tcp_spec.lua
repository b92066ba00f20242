-- atom.tcp.connect streams and atom.wait_port (SPEC §5 "TCP") against the
-- line-protocol TCP port of spec/fixtures/server.py, started here.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"
local cli = require "support.cli"

local py
local H = "127.0.0.1"

-- Local on purpose: errors name the script frame that called atom, and
-- these specs check that it is the spec file's own line.
local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return err
end

local run = atom.run

local pattern = netfix.pattern

-- A stream to the fixture, with its first command line sent.
local function open(cmd)
  local s = atom.tcp.connect(H, py.tcp)
  s:write(cmd .. "\n")
  return s
end

setup(function() py = netfix.python() end)
teardown(function() if py then py.stop() end end)

describe("atom.tcp streams", function()
  it("write, read exactly n bytes and read lines", function()
    run(function()
      local s <close> = open("ECHO")
      s:write("hello world\r\nnext\n")
      assert.equal("hello", s:read(5))
      assert.equal(" world", s:read_line())
      assert.equal("next", s:read_line())
      s:write(12345)
      assert.equal("12345", s:read(5))
      assert.equal("", s:read(0))
      assert.matches("^atom.stream %(127.0.0.1:%d+%)$", tostring(s))
    end)
  end)

  it("reads across chunks and returns nil at a clean EOF", function()
    run(function()
      local s <close> = open("SEND 300000 CLOSE")
      assert.is_true(s:read(300000) == pattern(300000))
      assert.is_nil(s:read(1))
      assert.is_nil(s:read_line())
    end)
  end)

  it("raises io eof with the partial bytes when EOF cuts a read short", function()
    run(function()
      local s <close> = open("SEND 10 CLOSE")
      local err = err_of(s.read, s, 20)
      assert.equal("io", err.kind)
      assert.equal("eof", err.cause)
      assert.equal(pattern(10), err.partial)
      assert.is_nil(s:read(1))
    end)
  end)

  it("gives the last line without a newline, then nil", function()
    run(function()
      local s <close> = open("LINES")
      assert.equal("one", s:read_line())
      assert.equal("two", s:read_line())
      assert.equal("", s:read_line())
      assert.equal("last", s:read_line())
      assert.is_nil(s:read_line())
    end)
  end)

  it("raises io reset when the peer resets", function()
    run(function()
      local s <close> = open("SEND 10 RESET")
      local err = err_of(s.read, s, 100)
      assert.equal("io", err.kind)
      assert.equal("reset", err.cause)
    end)
  end)

  it("writes 10 MB, returning once the kernel took it", function()
    run(function()
      local n = 10 * 1024 * 1024
      local s <close> = open("SINK " .. n)
      s:write(pattern(n))
      assert.equal("got " .. n, s:read_line(10))
    end)
  end)

  it("loses no bytes when a read times out", function()
    run(function()
      local s <close> = open("ECHO")
      local err = err_of(s.read, s, 5, 0.1)
      assert.equal("timeout", err.kind)
      assert.matches("^read from 127.0.0.1:%d+ timed out after 0.1s$", err.message)
      s:write("abc")
      err = err_of(s.read, s, 5, { timeout = 0.1 })
      assert.equal("timeout", err.kind)
      s:write("de\n")
      assert.equal("abcde", s:read(5))
      assert.equal("", s:read_line())
    end)
  end)

  it("allows one reader at a time", function()
    run(function()
      local s <close> = open("SILENT")
      local t = atom.go(function() return s:read(1) end)
      atom.sleep(0.05)
      local err = err_of(s.read_line, s)
      assert.equal("usage", err.kind)
      t:cancel()
      assert.equal("cancelled", err_of(t.join, t).kind)
      -- The stream outlives the cancelled read.
      assert.equal("timeout", err_of(s.read, s, 1, 0.05).kind)
    end)
  end)

  it("raises io closed after close, and wakes a reader blocked in it", function()
    run(function()
      local s = open("SILENT")
      local t = atom.go(function() return select(2, pcall(s.read, s, 1)) end)
      atom.sleep(0.05)
      s:close()
      s:close() -- idempotent
      local err = t:join()
      assert.equal("io", err.kind)
      assert.equal("closed", err.cause)
      assert.equal("closed", err_of(s.read, s, 1).cause)
      assert.equal("closed", err_of(s.write, s, "x").cause)
      assert.equal("atom.stream (closed)", tostring(s))
      do local s2 <close> = open("ECHO") end -- <close> closes it
    end)
  end)
end)

describe("read_line's longest line", function()
  it("raises io too_large after 1 MiB without a newline, keeping memory bounded", function()
    run(function()
      -- 8 MiB come, then nothing: without a limit this read would wait it out.
      local s <close> = open("FLOOD " .. (8 << 20))
      local err = err_of(s.read_line, s, 5)
      assert.equal("io", err.kind)
      assert.equal("too_large", err.cause)
      assert.matches("line longer than 1048576 bytes", err.message, 1, true)
      -- The bytes stay buffered: read can still take them.
      assert.equal(("x"):rep(10), s:read(10))
    end)
  end)

  it("takes max_line from read_line's options or the connect options", function()
    run(function()
      local s <close> = open("ECHO")
      s:write(("a"):rep(10) .. "\r\n" .. ("b"):rep(11) .. "\n")
      assert.equal(("a"):rep(10), s:read_line({ max_line = 10 }))
      local err = err_of(s.read_line, s, { max_line = 10, timeout = 10 })
      assert.equal("too_large", err.cause)
      assert.equal(("b"):rep(11), s:read_line()) -- the default limit takes it
      local s2 <close> = atom.tcp.connect(H, py.tcp, { max_line = 4 })
      s2:write("ECHO\n12345")
      assert.equal("too_large", err_of(s2.read_line, s2, 10).cause)
      s2:write("\n1234\n")
      assert.equal("12345", s2:read(5))
      assert.equal("", s2:read_line())
      assert.equal("1234", s2:read_line())
      assert.matches("bad argument #1 to 'read_line' (field 'max_line' must be a positive integer)",
        err_of(s.read_line, s, { max_line = 0 }).message, 1, true)
      assert.matches("bad argument #3 to 'connect' (field 'max_line' must be a positive integer)",
        err_of(atom.tcp.connect, H, py.tcp, { max_line = 1.5 }).message, 1, true)
    end)
  end)

  it("applies to a last line that ends at EOF", function()
    run(function()
      local s <close> = open("SEND 300 CLOSE")
      assert.equal(pattern(10), s:read_line()) -- the pattern's byte 10 is "\n"
      local err = err_of(s.read_line, s, { max_line = 100 })
      assert.equal("too_large", err.cause)
    end)
  end)
end)

describe("atom.tcp.connect errors", function()
  it("raises io refused and io dns", function()
    run(function()
      local port = atom.free_port()
      local err = err_of(atom.tcp.connect, H, port)
      assert.equal("io", err.kind)
      assert.equal("refused", err.cause)
      assert.matches("connect 127.0.0.1:" .. port, err.message, 1, true)
      assert.equal("main", err.task)
      err = err_of(atom.tcp.connect, "no-such-host.invalid", 80)
      assert.equal("io", err.kind)
      assert.equal("dns", err.cause)
    end)
  end)

  it("raises io when the connect fails at once (broadcast, multicast), not SIGSEGV", function()
    run(function()
      for _, host in ipairs({ "255.255.255.255", "224.0.0.1" }) do
        local err = err_of(atom.tcp.connect, host, 80, 5)
        assert.equal("io", err.kind)
        assert.equal("refused", err.cause)
        assert.matches("^connect " .. host:gsub("%.", "%%.") .. ":80: ", err.message)
      end
      -- wait_port keeps trying such an address until its timeout.
      assert.equal("timeout", err_of(atom.wait_port, "255.255.255.255", 80, 0.1).kind)
    end)
  end)

  it("reports running out of descriptors as cause resources (ulimit -n 64, 200 connects)", function()
    local path = cli.scenario(([[
atom.test("emfile", function()
  local ts, causes = {}, {}
  for i = 1, 200 do
    ts[i] = atom.go(function()
      local ok, s = pcall(atom.tcp.connect, "127.0.0.1", %d, 10)
      if ok then return s end
      assert(s.kind == "io", tostring(s))
      return s.cause
    end)
  end
  local streams = {}
  for i = 1, 200 do
    local r = ts[i]:join()
    if type(r) == "string" then causes[r] = (causes[r] or 0) + 1 else streams[#streams + 1] = r end
  end
  for _, s in ipairs(streams) do s:close() end
  print("connected " .. #streams .. " resources " .. (causes.resources or 0) ..
    " refused " .. (causes.refused or 0))
end)
]]):format(py.tcp))
    local pf = io.popen(("ulimit -n 64 && %s run %s 2>&1; echo rc=$?"):format(cli.q(cli.bin),
      cli.q(path)))
    local out = pf:read("a")
    pf:close()
    os.remove(path)
    assert.matches("rc=0", out, 1, true)
    local connected, resources, refused = out:match("connected (%d+) resources (%d+) refused (%d+)")
    assert(connected, out)
    assert.is_true(tonumber(connected) > 0)
    assert.is_true(tonumber(resources) > 0)
    assert.equal("0", refused)
  end)

  it("tries every address of a name", function()
    run(function()
      -- localhost may resolve to ::1 first; the fixture listens on 127.0.0.1 only.
      local s <close> = atom.tcp.connect("localhost", py.tcp)
      s:write("ECHO\nx")
      assert.equal("x", s:read(1))
    end)
  end)

  it("raises timeout when the connect hangs", function()
    run(function()
      local err = err_of(atom.tcp.connect, H, py.backlog, 0.3)
      assert.equal("timeout", err.kind)
      assert.equal("connect 127.0.0.1:" .. py.backlog .. " timed out after 0.3s", err.message)
    end)
  end)

  it("raises usage for bad arguments", function()
    run(function()
      assert.matches("bad argument #1 to 'connect'", err_of(atom.tcp.connect, 1, 2).message, 1, true)
      assert.matches("bad argument #2 to 'connect'", err_of(atom.tcp.connect, H, "x").message, 1, true)
      assert.matches("bad argument #2 to 'connect'", err_of(atom.tcp.connect, H, 70000).message, 1, true)
      local s <close> = open("ECHO")
      assert.matches("bad argument #1 to 'read'", err_of(s.read, s, -1).message, 1, true)
      assert.matches("bad argument #1 to 'read'", err_of(s.read, s, "x").message, 1, true)
      assert.matches("bad argument #1 to 'write' (string expected, got table)", err_of(s.write, s, {}).message, 1, true)
      assert.matches("bad argument #2 to 'read' (number or table expected, got string)",
        err_of(s.read, s, 1, "x").message, 1, true)
      assert.matches("bad argument #1 to 'read_line'", err_of(s.read_line, s, -1).message, 1, true)
    end)
  end)
end)

describe("atom.wait_port", function()
  it("returns once a server listens", function()
    local port = run(function() return atom.free_port() end)
    local f = assert(io.popen(("echo $$; sleep 0.3; exec python3 -c 'import socket,time; s=socket.socket(); "
      .. "s.bind((\"127.0.0.1\", %d)); s.listen(); time.sleep(10)'"):format(port)))
    local pid = f:read("l")
    local ok, err = pcall(run, function()
      local t0 = atom.now()
      atom.wait_port(H, port, 10)
      assert.is_true(atom.now() - t0 >= 0.25)
    end)
    os.execute("kill " .. pid .. " 2>/dev/null")
    f:close()
    assert(ok, tostring(err))
  end)

  it("raises timeout naming host and port", function()
    run(function()
      local port = atom.free_port()
      local err = err_of(atom.wait_port, H, port, { timeout = 0.2, interval = 0.01 })
      assert.equal("timeout", err.kind)
      assert.equal("wait_port 127.0.0.1:" .. port .. " timed out after 0.2s", err.message)
    end)
  end)
end)

-- Processes (SPEC §4) in module mode: atom.spawn, the process object,
-- atom.exec and atom.sh, with real processes only (sh, sleep, cat, yes and
-- spec/fixtures/proc/). Each run ends with nothing left: no task, handle,
-- ref or unreaped child (support.atom_loader).
local support = require "support.atom_loader"
local atom = support.atom
-- spec/host_proc_spec.lua runs this file again with spawn, exec and sh
-- going through a host's agent (support/host_backend.lua).
local on_host = ATOMLUA_PROC_ON_HOST
if on_host then atom = require("support.host_backend").wrap(atom) end

-- Nothing may be left after a run: no task, handle, ref or unreaped child.
local function assert_clean()
  local s = atom._stats()
  assert.are.same({ tasks = 0, handles = 0, refs = 0, children = 0 },
    { tasks = s.tasks, handles = s.handles, refs = s.refs, children = s.children })
end

local function run(fn, ...)
  local res = table.pack(atom.run(fn, ...))
  assert_clean()
  return table.unpack(res, 1, res.n)
end

local FIX = "spec/fixtures/proc/"

local function kind(e) return type(e) == "table" and e.kind or nil end
local function msg(e) return type(e) == "table" and tostring(e.message) or tostring(e) end

-- A process counts as alive while /proc shows it and it is not a zombie.
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return s:match("^%d+ %b() (%a)") ~= "Z"
end

-- Our open fds, as sorted "fd -> target" lines: readlink on every possible
-- fd (no directory listing, no subprocess of our own).
local function list_fds()
  local uv = require "luv"
  local out = {}
  for fd = 0, 1023 do
    local target = uv.fs_readlink("/proc/self/fd/" .. fd)
    if target then out[#out + 1] = fd .. " -> " .. target end
  end
  table.sort(out)
  return table.concat(out, "\n")
end

local function tag() return tostring(math.random(10000000, 99999999)) end

-- Live processes started from family.sh with this tag, found in /proc
-- (no pgrep: it hangs under the sanitizers' LD_PRELOAD).
local function tagged(t)
  local found = {}
  local ls = io.popen("ls /proc")
  for name in ls:lines() do
    local f = name:match("^%d+$") and io.open("/proc/" .. name .. "/cmdline")
    if f then
      local cmd = f:read("a")
      f:close()
      if cmd:find("^sleep%z100[01]%." .. t) and alive(tonumber(name)) then found[#found + 1] = name end
    end
  end
  ls:close()
  return found
end

describe("atom.spawn and expect", function()
  it("finds a line printed before expect was called", function()
    run(function()
      local p = atom.spawn { "sh", "-c", "echo ready; exec sleep 5" }
      atom.wait_until(function() return p:output() ~= "" end, 5)
      assert.are.equal("ready", p:expect("ready", 1))
      p:stop()
    end)
  end)

  it("returns the captures and moves the cursor past the match", function()
    run(function()
      local p = atom.spawn { "sh", "-c", "echo 'port 4242'; echo a; echo b" }
      local line, port = p:expect("port (%d+)")
      assert.are.equal("port 4242", line)
      assert.are.equal("4242", port)
      assert.are.equal("a", p:expect("^[ab]$"))
      assert.are.equal("b", p:expect("^[ab]$"))
      assert.are.equal(0, p:wait())
    end)
  end)

  it("lets concurrent expects scan from where the cursor was", function()
    run(function()
      -- the lines come after both expects started (a host's spawn waits for
      -- the agent's reply, by which time they could be buffered already)
      local p = atom.spawn { "sh", "-c", "sleep 0.3; echo one; echo two; exec sleep 5" }
      local a, b = atom.gather(function() return p:expect("two") end, function() return p:expect("one") end)
      assert.are.same({ "two", "one" }, { a, b })
      -- the cursor is past "two" now
      local ok, e = pcall(p.expect, p, "one", 0.1)
      assert.is_false(ok)
      assert.are.equal("timeout", kind(e))
      p:stop()
    end)
  end)

  it("matches plain text with plain = true", function()
    run(function()
      local p = atom.spawn { "sh", "-c", "echo 'a.b (c)'" }
      assert.are.equal("a.b (c)", p:expect("b (c", { plain = true }))
      p:wait()
    end)
  end)

  it("lines() iterates without moving the cursor and ends with the output", function()
    run(function()
      local p = atom.spawn { "sh", "-c", "echo 1; echo 2; echo 3 >&2" }
      local got = {}
      for l in p:lines() do got[#got + 1] = l end
      table.sort(got)
      assert.are.same({ "1", "2", "3" }, got)
      assert.are.equal("1", p:expect("1"))
    end)
  end)

  it("fails with a process error when the output ends first", function()
    run(function()
      local p = atom.spawn { "sh", "-c", "echo one; echo two; exit 1", name = "n1" }
      local ok, e = pcall(p.expect, p, "never")
      assert.is_false(ok)
      assert.are.equal("process", kind(e))
      local m = msg(e)
      assert.truthy(m:find('expect n1 "never"', 1, true))
      assert.truthy(m:find("code 1", 1, true))
      assert.truthy(m:find("| one\n  | two", 1, true))
    end)
  end)

  it("times out naming the process and pattern and quoting the output", function()
    run(function()
      local p = atom.spawn { "sh", "-c", "echo only; exec sleep 5", name = "slow" }
      local t0 = atom.now()
      local ok, e = pcall(p.expect, p, "never", 0.2)
      assert.is_false(ok)
      assert.are.equal("timeout", kind(e))
      assert.truthy(atom.now() - t0 >= 0.2)
      local m = msg(e)
      assert.truthy(m:find('expect slow "never" timed out after 0.2s', 1, true))
      assert.truthy(m:find("| only", 1, true))
      p:stop()
    end)
  end)

  it("rejects a bad pattern as a usage error", function()
    run(function()
      local p = atom.spawn { "true" }
      local _, e = pcall(p.expect, p, "(")
      assert.are.equal("usage", kind(e))
      assert.truthy(msg(e):find("bad argument #1 to 'expect'", 1, true))
      p:wait()
    end)
  end)

  it("splits lines by the rules: CR LF, 64 KiB pieces, last line, bytes", function()
    run(function()
      local p = atom.spawn { "sh", "-c",
        "printf 'a\\r\\nb\\n\\377\\001z\\n'; head -c 70000 /dev/zero | tr '\\0' x; echo; printf last" }
      local got = {}
      for l in p:lines() do got[#got + 1] = l end
      assert.are.same({ "a", "b", "\255\1z", ("x"):rep(65536), ("x"):rep(70000 - 65536), "last" }, got)
    end)
  end)

  it("keeps about 1 MiB of lines and says how many were skipped", function()
    run(function()
      local p = atom.spawn { "seq", "1", "300000" }
      p:wait()
      local _, e = pcall(p.expect, p, "never", 1)
      assert.are.equal("process", kind(e))
      assert.truthy(msg(e):find("lines were skipped", 1, true))
      assert.truthy(msg(e):find("| 300000", 1, true))
      local out = p:output()
      assert.are.equal(1024 * 1024, #out)
      assert.truthy(out:sub(-7) == "300000\n")
    end)
  end)
end)

describe("process control", function()
  it("stops a process that ignores SIGTERM after its grace", function()
    run(function()
      local p = atom.spawn { FIX .. "ignore_term.sh" }
      p:expect("ready")
      local t0 = atom.now()
      local code, sig = p:stop(0.3)
      assert.is_nil(code)
      assert.are.equal("KILL", sig)
      assert.truthy(atom.now() - t0 >= 0.3)
      assert.are.same({ nil, "KILL" }, { p:stop() }) -- idempotent
      assert.is_false(p:is_running())
      assert.is_false(p:kill())
    end)
  end)

  it("stops a paused process with SIGTERM", function()
    run(function()
      local p = atom.spawn { "sleep", "10" }
      p:pause()
      local t0 = atom.now()
      assert.are.same({ nil, "TERM" }, { p:stop(5) })
      assert.truthy(atom.now() - t0 < 2)
    end)
  end)

  it("signals the whole group: grandchildren die with p:stop", function()
    run(function()
      local p = atom.spawn { FIX .. "family.sh", tag() }
      local _, gc = p:expect("grandchild (%d+)")
      assert.is_true(alive(tonumber(gc)))
      p:stop()
      atom.wait_until(function() return not alive(tonumber(gc)) end, 2)
    end)
  end)

  it("keeps the group running after the leader exits, until p:stop", function()
    run(function()
      local p = atom.spawn { "sh", "-c", "sleep 100 & echo $!" }
      local _, gc = p:expect("(%d+)")
      assert.are.same({ 0, nil }, { p:wait() })
      assert.is_true(alive(tonumber(gc)))
      assert.are.same({ 0, nil }, { p:stop() })
      atom.wait_until(function() return not alive(tonumber(gc)) end, 2)
    end)
  end)

  it("kill sends a signal and wait reports it", function()
    run(function()
      local p = atom.spawn { "sleep", "10" }
      assert.is_true(p:kill("SIGUSR1"))
      assert.are.same({ nil, "USR1" }, { p:wait() })
      local q = atom.spawn { "sleep", "10" }
      assert.is_true(q:kill(9))
      assert.are.same({ nil, "KILL" }, { q:wait(5) })
      local _, e = pcall(q.kill, q, "NOPE")
      assert.are.equal("usage", kind(e))
    end)
  end)

  it("wait times out without killing", function()
    run(function()
      local p = atom.spawn { "sleep", "10" }
      local _, e = pcall(p.wait, p, 0.1)
      assert.are.equal("timeout", kind(e))
      assert.is_true(p:is_running())
      p:stop()
    end)
  end)

  it("writes to stdin", function()
    run(function()
      local p = atom.spawn { "cat", stdin = "pipe" }
      p:write("hello\n")
      assert.are.equal("hello", p:expect("hel"))
      p:write(("x"):rep(300000) .. "\n") -- more than the pipe holds
      p:close_stdin()
      assert.are.same({ 0, nil }, { p:wait() })
      local _, e = pcall(p.write, p, "late")
      assert.are.equal("io", kind(e))
      assert.are.equal("abc", atom.exec({ "cat", stdin = "abc" }).stdout)
    end)
  end)

  it("a <close> process is stopped when its scope ends", function()
    local pid
    run(function()
      do
        local p <close> = atom.spawn { "sleep", "10" }
        pid = p.pid
      end
      assert.is_false(alive(pid))
    end)
  end)
end)

describe("critical processes", function()
  it("fail their owner quickly with the last lines", function()
    local uv = require "luv"
    local t0 = uv.hrtime()
    local ok, e = pcall(atom.run, function()
      atom.spawn { "sh", "-c", "echo bye; sleep 0.1; exit 1", critical = true, name = "n1" }
      atom.sleep(10)
    end)
    assert.is_false(ok)
    assert.are.equal("process", kind(e))
    assert.truthy(msg(e):find("process n1 %(pid %d+[%w %-]*%) exited unexpectedly: code 1"))
    if atom.on_host then assert.truthy(msg(e):find("on host local-agent", 1, true)) end
    assert.truthy(msg(e):find("| bye", 1, true))
    assert.truthy((uv.hrtime() - t0) / 1e9 < 1, "the owner failed at once, not after its sleep")
    assert_clean()
  end)

  it("fail the test that owns them, not the scenario", function()
    local passed
    local _, e = pcall(atom.run, function()
      passed = atom.test("crit", function()
        atom.spawn { "sh", "-c", "exit 0", critical = true }
        atom.sleep(10)
      end)
    end)
    assert.is_false(passed)
    assert.are.equal("assert", kind(e)) -- atom.run: "1 test(s) failed"
    assert_clean()
  end)

  it("reach a task of the owner waiting in expect", function()
    local _, e = pcall(atom.run, function()
      local p = atom.spawn { "sh", "-c", "sleep 0.1; exit 2", critical = true }
      p:expect("never", 5)
    end)
    assert.are.equal("process", kind(e))
    assert.truthy(msg(e):find("exited unexpectedly: code 2", 1, true))
  end)

  it("do not fail after kill, stop or wait", function()
    run(function()
      local a = atom.spawn { "sleep", "10", critical = true }
      a:kill()
      a:wait()
      local b = atom.spawn { "sh", "-c", "exit 3", critical = true }
      assert.are.equal(3, b:wait())
      local c = atom.spawn { "sleep", "10", critical = true }
      c:stop()
      assert.is_false(c.critical)
      atom.sleep(0.1)
    end)
  end)
end)

describe("ownership", function()
  it("a process started in a gather branch keeps running", function()
    run(function()
      local p = atom.gather(function() return atom.spawn { "sleep", "10" } end)
      atom.sleep(0.05)
      assert.is_true(p:is_running())
      p:stop()
    end)
  end)

  it("a test's processes are gone after the test", function()
    local pid, gc
    run(function()
      atom.test("owner", function()
        local p = atom.spawn { FIX .. "family.sh", tag() }
        pid = p.pid
        gc = tonumber(select(2, p:expect("grandchild (%d+)")))
      end)
      assert.is_false(alive(pid))
      atom.wait_until(function() return not alive(gc) end, 2)
    end)
  end)

  it("stops an owner's processes concurrently, each with its grace", function()
    local took
    run(function()
      atom.test("ten", function()
        for _ = 1, 10 do atom.spawn({ FIX .. "ignore_term.sh", grace = 1 }):expect("ready") end
        atom.defer(function() end)
        took = atom.now()
      end)
      took = atom.now() - took
    end)
    assert.truthy(took >= 1 and took < 3, "took " .. took)
  end)
end)

describe("atom.exec and atom.sh", function()
  it("returns code, streams and duration", function()
    run(function()
      local r = atom.exec { "sh", "-c", "echo out; echo err >&2; exit 3", check = false }
      assert.are.equal(3, r.code)
      assert.is_nil(r.signal)
      assert.are.equal("out\n", r.stdout)
      assert.are.equal("err\n", r.stderr)
      assert.is_number(r.duration)
      assert.are.equal("hi", atom.sh("echo hi"))
      local out, res = atom.sh("echo x; exit 4", { check = false })
      assert.are.equal("x", out)
      assert.are.equal(4, res.code)
    end)
  end)

  it("raises a process error quoting stderr on failure", function()
    run(function()
      local _, e = pcall(atom.sh, "echo oops >&2; exit 2")
      assert.are.equal("process", kind(e))
      assert.truthy(msg(e):find("code 2", 1, true))
      assert.truthy(msg(e):find("| oops", 1, true))
      assert.are.equal(2, e.result.code)
    end)
  end)

  it("kills the group on timeout", function()
    run(function()
      local t = tag()
      local t0 = atom.now()
      local task = atom.go(function() return pcall(atom.exec, { FIX .. "family.sh", t, timeout = 0.5 }) end)
      atom.wait_until(function() return #tagged(t) == 2 end, 2)
      local ok, e = task:join()
      assert.is_false(ok)
      assert.are.equal("timeout", kind(e))
      assert.truthy(msg(e):find("timed out after 0.5s", 1, true))
      assert.truthy(atom.now() - t0 < 2)
      atom.wait_until(function() return #tagged(t) == 0 end, 2)
    end)
  end)

  it("applies env, env_clear, cwd and PATH rules", function()
    run(function()
      assert.are.equal("x-", atom.sh("echo $FOO-$HOME", { env = { FOO = "x", HOME = false } }))
      assert.are.equal("A=1", atom.exec({ "env", env_clear = true, env = { A = 1 } }).stdout:gsub("\n$", ""))
      assert.are.equal("/tmp", atom.exec({ "pwd", cwd = "/tmp" }).stdout:gsub("\n$", ""))
      -- relative paths with / are resolved against atomlua's cwd, not cwd
      assert.are.equal("/tmp\na 1\n", atom.exec({ FIX .. "echo_args.sh", "a", 1, cwd = "/tmp" }).stdout)
    end)
  end)

  it("children start with default signal dispositions and an empty mask", function()
    run(function()
      local st = atom.sh("grep -E '^Sig(Ign|Blk)' /proc/self/status")
      assert.are.equal("SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000", st)
    end)
  end)
end)

describe("spawn errors", function()
  it("raise usage for a bad spec", function()
    run(function()
      local cases = {
        { "x", "bad argument #1 to 'spawn' (table expected, got string)" },
        { {}, "argv is empty" },
        { { "sh", cwd = 1 }, "field 'cwd' must be a string" },
        { { "sh", bogus = true }, "unknown field 'bogus'" },
        { { "sh", {} }, "argv[2] must be a string or number" },
        { { "sh", output = "file" }, "field 'output'" },
      }
      for _, c in ipairs(cases) do
        local _, e = pcall(atom.spawn, c[1])
        assert.are.equal("usage", kind(e))
        assert.truthy(msg(e):find(c[2], 1, true), msg(e))
      end
      local _, e = pcall(atom.exec, { "sh", critical = true })
      assert.are.equal("usage", kind(e))
    end)
  end)

  it("raise spawn naming a missing or non-executable program", function()
    run(function()
      local _, e = pcall(atom.spawn, { "no-such-program-xyz" })
      assert.are.equal("spawn", kind(e))
      assert.truthy(msg(e):find("no-such-program-xyz", 1, true))
      _, e = pcall(atom.spawn, { "spec/fixtures/proc/family.sh/nope" })
      assert.are.equal("spawn", kind(e))
      _, e = pcall(atom.spawn, { "/etc/passwd" })
      assert.are.equal("spawn", kind(e))
      assert.truthy(msg(e):find("/etc/passwd", 1, true))
      _, e = pcall(atom.spawn, { "sh", cwd = "/no/such/dir" })
      assert.are.equal("spawn", kind(e))
      assert.truthy(msg(e):find("/no/such/dir", 1, true))
    end)
  end)
end)

describe("resources", function()
  it("1,000 sequential spawns leave no fd, handle, ref or child behind", function()
    run(function() atom.exec { "true" } end) -- the reaper, /dev/null and epoll fds are made once
    local before = list_fds()
    run(function()
      for _ = 1, 500 do atom.exec { "true" } end
      for _ = 1, 500 do atom.spawn({ "true" }):wait() end
    end)
    collectgarbage()
    assert.are.equal(before, list_fds())
  end)

  local peak_test = os.getenv("ATOMLUA_SANITIZE") and pending or it -- ASan keeps freed memory
  peak_test("peak memory with 200 MB of output stays within 16 MiB of a silent run", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local script = [[
      package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
      local atom = require "atom"
      local size
      atom.run(function()
        local p = atom.spawn { "sh", "-c", arg[1], name = "big" }
        p:wait()
        p:stop() -- the log is complete once the process is over
        local f = assert(io.open(p._log))
        size = f:seek("end")
        f:close()
      end)
      for l in io.lines("/proc/self/status") do
        local kb = l:match("^VmHWM:%s*(%d+)")
        if kb then print(kb, size) end
      end
    ]]
    local f = io.open(dir .. "/m.lua", "w")
    f:write(script)
    f:close()
    local function peak(cmd)
      local p = io.popen(("LD_PRELOAD=\"$ATOMLUA_SAN_PRELOAD\" lua5.4 %s/m.lua %q"):format(dir, cmd))
      local kb, size = p:read("a"):match("(%d+)%s+(%d+)")
      p:close()
      return tonumber(kb), tonumber(size)
    end
    local silent = peak("sleep 0.5")
    local loud, size = peak("yes | head -c 200000000")
    os.execute("rm -rf " .. dir)
    assert.truthy(loud - silent < 16 * 1024, ("peak grew by %d KiB"):format(loud - silent))
    assert.are.equal(200000000, size)
  end)
end)

-- Processes end to end (SPEC §1, §4): the atomlua binary ($ATOMLUA_BIN,
-- default build/atomlua) runs scenarios from spec/fixtures/proc/; we check
-- the exit status, the output, the log files, and that no process a run
-- started — nor a grandchild in its group — outlives it, however it ends.
local BIN = os.getenv("ATOMLUA_BIN") or "build/atomlua"
local FIX = "spec/fixtures/proc/"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  local _, _, code = p:close()
  return out, code
end

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. d))
  return d
end

-- Run a scenario to its end (run directories in a temporary workdir):
-- output (stdout and stderr), exit status.
local function run(args)
  local d = os.tmpname()
  os.remove(d)
  local out, code = sh(("%s run --workdir %s %s 2>&1"):format(BIN, d, args))
  os.execute("rm -rf " .. d)
  return out, code
end

local function sleep(s) os.execute("sleep " .. s) end

local survivors_mod = require "support.survivors"
local survivors, assert_no_survivors = survivors_mod.survivors, survivors_mod.assert_none


local function new_tag() return tostring(math.random(10000000, 99999999)) end

describe("no orphans", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  -- Start the orphans scenario in the background; returns atomlua's pid once
  -- the scenario wrote its ready file.
  local function start(tag, mode, opts)
    local ready = dir .. "/ready"
    local cmd = ("%s run --workdir %s %s %sorphans.lua -- %s %s %s >%s/out 2>&1 & echo $!"):format(
      BIN, dir, opts or "", FIX, tag, ready, mode, dir)
    local pid = assert(tonumber((sh(cmd))))
    for _ = 1, 200 do
      local f = io.open(ready)
      if f then
        f:close()
        assert.are_not.equal("", survivors(tag))
        return pid
      end
      sleep(0.05)
    end
    error("scenario not ready: " .. (io.open(dir .. "/out"):read("a")))
  end

  local function wait_exit(pid)
    for _ = 1, 400 do
      if not io.open("/proc/" .. pid .. "/stat") then return end
      local st = io.open("/proc/" .. pid .. "/stat"):read("a")
      if st:match("^%d+ %b() Z") then return end
      sleep(0.05)
    end
    error("atomlua did not exit")
  end

  for _, mode in ipairs { "normal", "error" } do
    it("when the scenario ends (" .. mode .. ")", function()
      local tag = new_tag()
      local pid = start(tag, mode)
      wait_exit(pid)
      assert_no_survivors(tag)
    end)
  end

  it("when --timeout expires", function()
    local tag = new_tag()
    local pid = start(tag, "wait", "--timeout 2 --grace 1")
    wait_exit(pid)
    assert_no_survivors(tag)
  end)

  for _, sig in ipairs { "INT", "TERM", "HUP", "KILL" } do
    it("when atomlua gets SIG" .. sig, function()
      local tag = new_tag()
      local pid = start(tag, "wait")
      os.execute("kill -" .. sig .. " " .. pid)
      wait_exit(pid)
      assert_no_survivors(tag)
    end)
  end

  it("when the host of atom.so is SIGKILLed (module mode)", function()
    local tag = new_tag()
    local cpath = os.getenv("ATOMLUA_CPATH") or "./build/?.so"
    local script = dir .. "/host.lua"
    local f = io.open(script, "w")
    f:write(([[
      package.cpath = %q .. ";" .. package.cpath
      local atom = require "atom"
      atom.run(function()
        atom.spawn({ %q, %q }):expect("grandchild")
        io.open(%q, "w"):close()
        atom.sleep(1000)
      end)
    ]]):format(cpath, FIX .. "family.sh", tag, dir .. "/ready"))
    f:close()
    local pid = assert(tonumber((sh(("LD_PRELOAD=\"$ATOMLUA_SAN_PRELOAD\" lua5.4 %s >/dev/null 2>&1 & echo $!"):format(script)))))
    for _ = 1, 200 do
      if io.open(dir .. "/ready") then break end
      sleep(0.05)
    end
    assert.are_not.equal("", survivors(tag))
    os.execute("kill -9 " .. pid)
    wait_exit(pid)
    assert_no_survivors(tag)
  end)
end)

describe("critical processes", function()
  it("fail the test that owns them (exit 1), the scenario goes on", function()
    local out, code = run(FIX .. "critical_test.lua")
    assert.are.equal(1, code, out)
    assert.truthy(out:find("process n1 %(pid %d+%) exited unexpectedly: code 1"), out)
    assert.truthy(out:find("last words", 1, true), out)
    assert.truthy(out:find("after the test", 1, true), out)
  end)

  it("owned by the scenario: exit 3 when no test runs", function()
    local out, code = run(FIX .. "critical_scenario.lua")
    assert.are.equal(3, code, out)
    assert.truthy(out:find("exited unexpectedly", 1, true), out)
    assert.falsy(out:find("not reached", 1, true), out)
  end)

  it("owned by the scenario: the running test fails, exit 1", function()
    local out, code = run(FIX .. "critical_during_test.lua")
    assert.are.equal(1, code, out)
    assert.truthy(out:find("victim", 1, true), out)
    assert.falsy(out:find("never runs", 1, true), out)
  end)
end)

describe("log files", function()
  it("one per name, appended with a header; exec.log; none for output = null", function()
    local dir = tmpdir()
    local out, code = sh(("%s run --workdir %s %slogs.lua 2>&1"):format(BIN, dir, FIX))
    assert.are.equal(1, code, out)
    assert.truthy(out:find("✓ a log file appears at the first output", 1, true), out)
    local logs = sh("ls -d " .. dir .. "/*/logs"):gsub("%s+$", "")
    local function read(name)
      local f = io.open(logs .. "/" .. name)
      if not f then return nil end
      local s = f:read("a")
      f:close()
      return s
    end
    local n1 = read("n_1.log")
    assert.truthy(n1, sh("ls " .. logs))
    assert.truthy(n1:find("^first\n"), n1)
    assert.truthy(n1:find("err\n", 1, true), n1)
    assert.truthy(n1:find("\n%-%-%- atomlua: n 1 pid %d+: sh %-c 'echo second'\nsecond\n$"), n1)
    assert.truthy(read("exec.log"):find("from-sh\n", 1, true))
    assert.is_nil(read("silent.log"))
    os.execute("rm -rf " .. dir)
  end)
end)

-- The edges of the guarantee (docs/processes.md, "No orphans").
describe("no orphans, at the edges", function()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() os.execute("rm -rf " .. dir) end)

  local function is_root() return sh("id -u"):match("^0") ~= nil end

  -- A writable cgroup v2 (as atomlua looks for it: root, or delegated).
  local function cgroup_ok()
    if not is_root() then return false end
    local f = io.open("/proc/self/mountinfo")
    local info = f:read("a")
    f:close()
    for root, mnt in info:gmatch("%d+ %d+ %S+ (%S+) (%S+)[^\n]- %- cgroup2 ") do
      if root == "/" then
        local k = io.open(mnt .. "/cgroup.procs", "a")
        if k then k:close() return true end
      end
    end
    return false
  end

  -- atomlua in the background on FIX..file with args; returns its pid and
  -- the ready file's first line once written.
  local function start(file, args, opts)
    local ready = dir .. "/ready"
    local cmd = ("%s %s run --workdir %s %s %s%s -- %s >%s/out 2>&1 & echo $!"):format(
      opts and opts.env or "", BIN, dir .. "/w", opts and opts.flags or "", FIX, file, args, dir)
    local pid = assert(tonumber((sh(cmd))))
    for _ = 1, 200 do
      local f = io.open(ready)
      local line = f and f:read("l")
      if f then f:close() end
      if line then return pid, line end
      sleep(0.05)
    end
    error("scenario not ready: " .. (io.open(dir .. "/out"):read("a")))
  end

  local function state_of(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return nil end
    local st = f:read("a"):match("^%d+ %b() (%a)")
    f:close()
    return st
  end

  local function wait_exit(pid)
    for _ = 1, 400 do
      local st = state_of(pid)
      if not st or st == "Z" then return end
      sleep(0.05)
    end
    error("atomlua did not exit")
  end

  local function wait_until(what, fn)
    for _ = 1, 100 do
      if fn() then return end
      sleep(0.05)
    end
    error("timed out waiting for " .. what)
  end

  local function output() return (io.open(dir .. "/out"):read("a")) end

  it("a spawn followed at once by a blocking call, then SIGKILL", function()
    local tag = new_tag()
    local fifo = dir .. "/fifo"
    assert(os.execute("mkfifo " .. fifo))
    local pid = start("escape.lua", tag .. " " .. dir .. "/ready block " .. fifo)
    -- both the leader and its grandchild run, and atomlua never yielded
    wait_until("the family", function() return select(2, survivors(tag):gsub("%d+", "")) == 2 end)
    os.execute("kill -9 " .. pid)
    wait_exit(pid)
    assert_no_survivors(tag)
  end)

  it("the reaper spares a process group id reused by someone else", function()
    if not is_root() then
      pending("needs root (writes /proc/sys/kernel/ns_last_pid)")
      return
    end
    local tag = new_tag()
    local pid, gone = start("escape.lua", tag .. " " .. dir .. "/ready reuse")
    gone = assert(tonumber(gone))
    -- An unrelated process takes the ended group's id and leads a group of it.
    local imp
    for _ = 1, 100 do
      local got = tonumber((sh(("echo %d > /proc/sys/kernel/ns_last_pid; setsid sleep 1000.%s >/dev/null 2>&1 & echo $!")
        :format(gone - 1, tag))))
      if got == gone then imp = got break end
      os.execute("kill -9 " .. got)
    end
    if not imp then
      os.execute("kill -9 " .. pid)
      pending("could not get pid " .. gone .. " again (a busy machine)")
      return
    end
    wait_until("the impostor", function() return survivors(tag) ~= "" end)
    os.execute("kill -9 " .. pid)
    wait_exit(pid)
    sleep(0.5) -- the reaper had its chance
    local left = survivors(tag)
    os.execute("kill -9 " .. imp .. " 2>/dev/null")
    assert.are.equal(tostring(imp), left)
  end)

  -- The reaper of atomlua pid: a child named atomlua-reaper.
  local function reaper_of(pid)
    for p in sh("ls /proc"):gmatch("%d+") do
      local f = io.open("/proc/" .. p .. "/stat")
      local st = f and f:read("a") or ""
      if f then f:close() end
      local comm, state, ppid = st:match("^%d+ %((.-)%) (%a) (%d+)")
      if comm == "atomlua-reaper" and state ~= "Z" and tonumber(ppid) == pid then return tonumber(p) end
    end
  end

  it("a killed reaper is replaced at once, and knows every group", function()
    local tag = new_tag()
    local ready = dir .. "/ready"
    local cmd = ("%s run --workdir %s %sorphans.lua -- %s %s wait >%s/out 2>&1 & echo $!"):format(
      BIN, dir .. "/w", FIX, tag, ready, dir)
    local pid = assert(tonumber((sh(cmd))))
    wait_until("ready", function() return io.open(ready) ~= nil end)
    local first = reaper_of(pid)
    assert.truthy(first, "no reaper")
    os.execute("kill -9 " .. first)
    local second
    wait_until("a new reaper", function()
      second = reaper_of(pid)
      return second and second ~= first
    end)
    os.execute("kill -9 " .. pid)
    wait_exit(pid)
    assert_no_survivors(tag)
  end)

  it("p:stop() stops a leader that left its group (without cgroups too)", function()
    local out, code = sh(("ATOMLUA_CGROUP=0 %s run --timeout 20 --workdir %s %sleave_group.lua 2>&1"):format(
      BIN, dir, FIX))
    assert.are.equal(0, code, out)
    local secs = tonumber(out:match("stopped: nil TERM after ([%d.]+)s"))
    assert(secs and secs < 10, out)
  end)

  it("each process starts in a cgroup of its own, the first one too (ATOMLUA_CGROUP=0: none)", function()
    if not cgroup_ok() then
      pending("needs a writable cgroup v2 (root or a delegated subtree)")
      return
    end
    -- Each child reads its cgroup itself: it was in it before its first
    -- instruction (born there through clone3, or moved before exec).
    local out, code = run(FIX .. "cgroup_of.lua")
    assert.equal(0, code, out)
    local base = assert(out:match("atomlua (%S*)"), out)
    local function leaf(what)
      local cg = assert(out:match(what .. " (%S+)"), out)
      local run_cg, name = cg:match("^(.*/atomlua%-%d+[%-%d]*)/(p%d+)$")
      assert.truthy(run_cg, cg)
      assert.equal((base == "/" and "" or base), (run_cg:gsub("/atomlua%-%d+[%-%d]*$", "")))
      return name
    end
    local seen = {}
    for i = 1, 3 do
      local name = leaf("child " .. i)
      assert.is_nil(seen[name], out) -- running at once: one cgroup each
      seen[name] = true
    end
    assert.truthy(seen[leaf("after")], out) -- an emptied cgroup is used again
    -- A cgroup a daemon still populates is nobody else's.
    assert.not_equal(leaf("daemon"), leaf("next"), out)
    -- ... and nor is one that was killed: the process after it runs.
    assert.not_equal(leaf("killed"), leaf("afterkill"), out)
    local out0 = sh(("ATOMLUA_CGROUP=0 %s run --workdir %s %s 2>&1"):format(BIN, dir .. "/w0",
      FIX .. "cgroup_of.lua"))
    local base0 = assert(out0:match("atomlua (%S*)"), out0)
    for _, what in ipairs { "child 1", "child 2", "child 3", "after", "next", "afterkill" } do
      assert.equal(base0, out0:match(what .. " (%S+)"), out0)
    end
  end)

  it("a daemon (double fork, setsid) ends with the test that started it (cgroup)", function()
    if not cgroup_ok() then
      pending("needs a writable cgroup v2 (root or a delegated subtree)")
      return
    end
    local tag = new_tag()
    local pid = start("escape.lua", tag .. " " .. dir .. "/ready daemon")
    assert.truthy(output():find("after the test, daemon alive: false", 1, true), output())
    assert.truthy(output():find("✓ starts a daemon", 1, true), output())
    os.execute("kill -9 " .. pid)
    wait_exit(pid)
    assert_no_survivors(tag)
  end)

  it("a daemon outlives no SIGKILL of atomlua (cgroup)", function()
    if not cgroup_ok() then
      pending("needs a writable cgroup v2 (root or a delegated subtree)")
      return
    end
    local tag = new_tag()
    local pid = start("escape.lua", tag .. " " .. dir .. "/ready daemon-top")
    assert.are_not.equal("", survivors(tag))
    os.execute("kill -9 " .. pid)
    wait_exit(pid)
    assert_no_survivors(tag)
    -- and the reaper removes the run's cgroup
    local function left()
      return sh("ls -d /sys/fs/cgroup/atomlua-" .. pid .. "* /sys/fs/cgroup/unified/atomlua-" .. pid
        .. "* 2>/dev/null")
    end
    wait_until("the run cgroup removed", function() return left() == "" end)
  end)

  it("a daemon ends with the scenario file without cgroups (subreaper)", function()
    local tag = new_tag()
    local pid = start("escape.lua", tag .. " " .. dir .. "/ready daemon-top end", { env = "ATOMLUA_CGROUP=0" })
    wait_exit(pid)
    assert_no_survivors(tag)
  end)

  it("Ctrl-Z stops the nodes too; stopped time does not count against --timeout", function()
    local tag = new_tag()
    local pid, node = start("tstp.lua", tag .. " " .. dir .. "/ready", { flags = "--timeout 5 " })
    os.execute("kill -TSTP " .. pid)
    wait_until("atomlua and its node stopped", function()
      return state_of(pid) == "T" and state_of(node) == "T"
    end)
    sleep(5.5)
    assert.are.equal("T", state_of(node))
    os.execute("kill -CONT " .. pid)
    wait_until("the node resumed", function() return state_of(node) ~= "T" end)
    wait_exit(pid)
    local _, code = sh("wait " .. pid .. " 2>/dev/null") -- not our child: read the output instead
    assert.truthy(output():find("slept", 1, true), output())
    assert.falsy(output():find("timed out", 1, true), output())
    assert_no_survivors(tag)
    local _ = code
  end)
end)

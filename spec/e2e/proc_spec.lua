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

-- pids of live processes started from family.sh with this tag, from /proc
-- (not pgrep: it hangs under the sanitizers' LD_PRELOAD).
local function survivors(tag)
  local found = {}
  for pid in sh("ls /proc"):gmatch("%d+") do
    local f = io.open("/proc/" .. pid .. "/cmdline")
    local cmd = f and f:read("a") or ""
    if f then f:close() end
    local st = io.open("/proc/" .. pid .. "/stat")
    local zombie = st and st:read("a"):match("^%d+ %b() Z")
    if st then st:close() end
    if cmd:find("^sleep%z100[01]%." .. tag) and not zombie then found[#found + 1] = pid end
  end
  return table.concat(found, " ")
end

-- Poll: the reaper may need a moment after atomlua is gone.
local function assert_no_survivors(tag)
  local left
  for _ = 1, 40 do
    left = survivors(tag)
    if left == "" then return end
    sleep(0.05)
  end
  os.execute("kill -9 " .. left .. " 2>/dev/null")
  error("processes outlived atomlua: " .. left)
end

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

-- End to end (SPEC §15): in a scenario file run by the atomlua binary,
-- os.execute and io.popen wait as tasks do, show up as `sh` processes, end
-- through the normal path at --timeout, and leave no process behind when
-- atomlua is SIGKILLed — found in /proc, not with pgrep.
local cli = require "support.cli"
local S, q, lines, slurp = cli.scenario, cli.q, cli.lines, cli.slurp

local FAMILY = "spec/fixtures/proc/family.sh"

local function pexec(cmd) -- run cmd with Lua's own popen: its stdout
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

local function tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. q(p)))
  return p
end

local work
before_each(function() work = tmpdir() end)
after_each(function() os.execute("rm -rf " .. q(work)) end)

local function run(args)
  local full = { args[1], "--workdir", work .. "/runs" }
  for i = 2, #args do full[#full + 1] = args[i] end
  return cli.run(full)
end

local function new_tag() return tostring(math.random(10000000, 99999999)) end

local survivors_mod = require "support.survivors"
local survivors, assert_no_survivors = survivors_mod.survivors, survivors_mod.assert_none


describe("os.execute and io.popen in a scenario", function()
  it("wait as tasks do, return Lua's values, and are `sh` processes in the events", function()
    local events = work .. "/ev.ndjson"
    local r = run({ "run", "--events", events, S [[
      atom.test("blocking calls", function()
        local ticks = 0
        local t = atom.go(function() while true do atom.sleep(0.01); ticks = ticks + 1 end end)
        atom.sleep(0)
        local a, b, c = os.execute("sleep 1; exit 3")
        print("execute", a, b, c, "ticks>=20", ticks >= 20)
        local f = io.popen("printf 'a\nb\n'")
        local got = {}
        for l in f:lines() do got[#got + 1] = l end
        print("popen", table.concat(got, ","), f:close())
        t:cancel()
      end)
    ]] })
    assert.equals(0, r.code, r.out .. r.err)
    assert.matches("execute\tnil\texit\t3\tticks>=20\ttrue\n", r.out, 1, true)
    assert.matches("popen\ta,b\ttrue\texit\t0\n", r.out, 1, true)
    local ev = slurp(events)
    local spawns = 0
    for l in ev:gmatch("[^\n]+") do
      if l:find('"type":"process_spawn"', 1, true) and l:find('"name":"sh"', 1, true) then
        spawns = spawns + 1
      end
    end
    assert.equals(2, spawns, ev)
  end)

  it("--timeout ends a test waiting in os.execute through the normal path: 124, reports", function()
    local tag = new_tag()
    local junit = work .. "/j.xml"
    local t0 = os.time()
    -- grace 5: the watchdog would only exit at 2 + 5 + 1 s, without reports
    local r = run({ "run", "--timeout", "2", "--grace", "5", "--junit", junit,
      S(("atom.test('sleeps', function() os.execute('sleep 30; sleep 1000.%s') end)"):format(tag)) })
    local took = os.time() - t0
    assert.equals(124, r.code, r.out .. r.err)
    local l = lines(r.out)
    assert.equals("0 passed, 1 failed", l[#l])
    assert.equals("timed out after 2s", l[#l - 2])
    assert.matches("✗ sleeps", r.out, 1, true)
    assert.matches('<testcase name="sleeps"', slurp(junit), 1, true)
    assert.is_true(took < 7, "took " .. took .. " s: the watchdog's path")
    assert.equals("", survivors(tag))
  end)

  it("no survivor when atomlua is SIGKILLed during os.execute right after atom.spawn", function()
    local tag = new_tag()
    local ready = work .. "/ready"
    local script = work .. "/kill.lua"
    local f = assert(io.open(script, "w"))
    f:write(([[
      atom.spawn { %q, %q }
      os.execute(%q)
    ]]):format(FAMILY, tag, ("%s %s >/dev/null & sleep 0.3; touch %s; sleep 1002.%s; wait"):format(
      FAMILY, tag, ready, tag)))
    f:close()
    local pid = assert(tonumber((pexec(("%s run --workdir %s %s >%s/out 2>&1 & echo $!"):format(
      q(cli.bin), q(work .. "/runs"), q(script), q(work))))))
    for _ = 1, 200 do
      if io.open(ready) then break end
      os.execute("sleep 0.05")
    end
    assert.truthy(io.open(ready), "scenario not ready")
    -- both families run (the spawned one, the one under os.execute) and its
    -- sleep; on a loaded machine the last may take a moment to show
    local n = 0
    for _ = 1, 100 do
      n = #lines((survivors(tag):gsub(" ", "\n")))
      if n == 5 then break end
      os.execute("sleep 0.05")
    end
    assert.equals(5, n)
    os.execute("kill -9 " .. pid)
    assert_no_survivors(tag)
  end)
end)

-- Clusters end to end (SPEC §7): the atomlua binary runs the cluster
-- fixtures of spec/fixtures/cluster/ (nodes are node.sh) and the scenarios
-- scenarios/http_cluster.lua and scenarios/etcd_cluster.lua; we check exit
-- statuses and output, and that no node process outlives any run.
local cli = require "support.cli"

local FIX = "spec/fixtures/cluster/"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

local function sleep(s) os.execute("sleep " .. s) end

-- Live (non-zombie) processes whose argv or cwd contains the tag (the run's
-- workdir). From /proc, not pgrep, which hangs under the sanitizers'
-- LD_PRELOAD. The tag goes in two halves so this shell does not match itself.
local function survivors(tag)
  local a, b = tag:match("^(.*)%-(%d+)$")
  return sh(("T1=%s T2=%s sh -c '%s'"):format(a, b, [[
for p in /proc/[0-9]*; do
  { read -r st < $p/stat; } 2>/dev/null || continue
  case "$st" in *") Z "*) continue ;; esac
  cmd=$(tr "\0" " " < $p/cmdline 2>/dev/null)
  case "$cmd $(readlink $p/cwd 2>/dev/null)" in *"$T1-$T2"*) echo "${p#/proc/}: $cmd" ;; esac
done]]))
end

-- Poll a little: the kernel may still be tearing the last group down.
local function assert_no_survivors(tag)
  local left
  for _ = 1, 40 do
    left = survivors(tag)
    if left == "" then return end
    sleep(0.05)
  end
  for pid in left:gmatch("(%d+):") do os.execute("kill -9 " .. pid .. " 2>/dev/null") end
  error("processes outlived atomlua:\n" .. left)
end

-- Run a scenario with a fresh workdir; the workdir's name is the tag, also
-- passed as the script argument the fixtures give their nodes.
local function run(file, opts)
  local tag = ("atomlua-cl-%d"):format(math.random(10000000, 99999999))
  local dir = "/tmp/" .. tag
  local args = { "run", "--workdir", dir, file, "--", tag }
  local r
  if opts and opts.signal then
    r = cli.run_signal(args, opts.ready_line, opts.signal)
  else
    r = cli.run(args)
  end
  r.out = r.out .. r.err
  assert_no_survivors(tag)
  os.execute("rm -rf " .. dir)
  return r
end

local function has(out, text) assert(out:find(text, 1, true), "missing " .. text .. " in:\n" .. out) end

describe("clusters", function()
  it("scenarios/http_cluster.lua passes (kill, restart, pause on kvnode)", function()
    local r = run("scenarios/http_cluster.lua")
    assert.are.equal(0, r.code, r.out)
    has(r.out, "4 passed, 0 failed")
  end)

  it("scenarios/etcd_cluster.lua passes on a real 3-node etcd", function()
    local r = run("scenarios/etcd_cluster.lua")
    assert.are.equal(0, r.code, r.out)
    has(r.out, "5 passed, 0 failed")
    has(r.out, "new leader: member")
  end)

  it("a node failing at start fails c:start() at once, naming it and quoting its output", function()
    local r = run(FIX .. "start_fail.lua")
    assert.are.equal(3, r.code, r.out)
    local secs = tonumber(r.out:match("start failed: true, kind process, after ([%d.]+)s"))
    assert(secs and secs < 5, r.out)                       -- not the silent node's 10 s
    has(r.out, "fx1 running: false\nfx2 running: false\nfx3 running: false")
    has(r.out, "/start_fail.lua:7: cluster fx: node fx2 failed to start:")
    has(r.out, "fx2 exited with code 3")
    has(r.out, "| boom: cannot listen on")
    assert(r.out:find("full log: [^\n]*/logs/fx2%.log"), r.out)
    has(r.out, "/start_fail.lua:18: cluster nf: node nf2 failed to start: cannot spawn /nonexistent/node-bin")
    has(r.out, "spawn failure: ")
    has(r.out, "nf1 running: false")
  end)

  it("restart reuses ports and directories and appends to the node's log", function()
    local r = run(FIX .. "restart.lua")
    assert.are.equal(0, r.code, r.out)
    has(r.out, "2 passed, 0 failed")
  end)

  it("pause/resume stop and resume the heartbeat; c:stop() of a paused node is quick", function()
    local r = run(FIX .. "pause.lua")
    assert.are.equal(0, r.code, r.out)
    has(r.out, "2 passed, 0 failed")
  end)

  it("a node crashing on its own fails its test; nodes killed through the cluster do not", function()
    local r = run(FIX .. "critical.lua")
    assert.are.equal(1, r.code, r.out)
    assert(r.out:find("✗ a node crashing on its own fails the test"), r.out)
    assert(r.out:find("process fx1 %(pid %d+%) exited unexpectedly: code 1"), r.out)
    has(r.out, "| crashing on my own")
    has(r.out, "✓ nodes killed through the cluster do not")
    assert(r.out:find("✗ a resumed node is critical again.-exited unexpectedly: code 1"), r.out)
    has(r.out, "1 passed, 2 failed")
  end)

  it("a cluster started at top level keeps its restarted nodes across tests", function()
    local r = run(FIX .. "toplevel.lua")
    assert.are.equal(0, r.code, r.out)
    has(r.out, "3 passed, 0 failed")
  end)

  it("restarted nodes belong to the owner at c:start() even after its caller ended", function()
    local r = run(FIX .. "owner.lua")
    assert.are.equal(0, r.code, r.out)
    has(r.out, "2 passed, 0 failed")
  end)

  it("checks its arguments with Lua-style usage errors", function()
    local r = run(FIX .. "usage.lua")
    assert.are.equal(0, r.code, r.out)
    has(r.out, "2 passed, 0 failed")
  end)

  it("leaves nothing running when interrupted mid-start (SIGINT)", function()
    local r = run(FIX .. "interrupt.lua", { signal = "INT", ready_line = "waiting for fx3" })
    assert.are.equal(130, r.code, r.out)
    has(r.out, "interrupted by SIGINT")
    assert.falsy(r.out:find("not reached", 1, true), r.out)
  end)
end)

describe("node directories", function()
  it("are absolute with a relative scenario path and --workdir", function()
    local tag = ("atomlua-cl-%d"):format(math.random(10000000, 99999999))
    local dir = "/tmp/" .. tag
    assert(os.execute("mkdir -p " .. dir .. " && cp " .. FIX .. "dirs.lua " .. dir))
    local bin = cli.bin:sub(1, 1) == "/" and cli.bin or (os.getenv("PWD") .. "/" .. cli.bin)
    local out = sh(("cd %s && %s run --workdir w dirs.lua -- %s 2>&1"):format(dir, cli.q(bin), tag))
    assert_no_survivors(tag)
    os.execute("rm -rf " .. dir)
    has(out, "atom.dir absolute: true")
    has(out, "node.dir absolute: true")
    has(out, "data where expected: true")
    has(out, "data nested: false")
  end)
end)

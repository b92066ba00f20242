-- The flagship history scenario end to end: scenarios/etcd_linearizable.lua
-- runs five real etcd members under a kill/pause nemesis for a few seconds,
-- saves the history and the HTML page in the run directory, finds it
-- linearizable, and finds the same history with one read altered not.
local cli = require "support.cli"

local function has(out, text) assert(out:find(text, 1, true), "missing " .. text .. " in:\n" .. out) end

-- Live processes whose argv or cwd mention dir (none may outlive the run).
local function survivors(dir)
  local p = io.popen(([[D=%s sh -c 'for p in /proc/[0-9]*; do
  { read -r st < $p/stat; } 2>/dev/null || continue
  case "$st" in *") Z "*) continue ;; esac
  cmd=$(tr "\0" " " < $p/cmdline 2>/dev/null)
  case "$cmd $(readlink $p/cwd 2>/dev/null)" in *"$D"/*) echo "${p#/proc/}: $cmd" ;; esac
done']]):format(cli.q(dir)))
  local out = p:read("a")
  p:close()
  return out
end

describe("etcd_linearizable", function()
  it("checks a real etcd history and an altered copy of it", function()
    local dir = ("/tmp/atomlua-hist-%d"):format(math.random(10000000, 99999999))
    local r = cli.run { "run", "--keep", "--workdir", dir, "scenarios/etcd_linearizable.lua", "--", "5" }
    local out = r.out .. r.err
    assert.are.equal(0, r.code, out)
    has(out, "3 passed, 0 failed")
    has(out, "linearizable (cas-register): ")
    has(out, "not linearizable (cas-register): ")
    local hist = out:match("in (%S+/etcd%-history%.jsonl)")
    local page = out:match("page: (%S+%.html)")
    assert(hist and page, out)
    local f = assert(io.open(hist))
    local first = f:read("l")
    f:close()
    assert.matches('^{"index":0,"type":"invoke","process":%d,"f":"%a+","value":%["k%d"', first)
    f = assert(io.open(page))
    assert.matches("<svg", f:read("a") .. "<svg", 1, true)
    f:close()
    local left
    for _ = 1, 40 do
      left = survivors(dir)
      if left == "" then break end
      os.execute("sleep 0.05")
    end
    os.execute("rm -rf " .. cli.q(dir))
    assert.are.equal("", left)
  end)
end)

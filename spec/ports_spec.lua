-- atom.free_port (SPEC §5): outside the ephemeral range, never twice in a
-- run, and reserved across concurrent runs through one lock file whose
-- locks die with the run (also by SIGKILL, also when it left children).
-- The cross-run cases start child lua5.4 processes with their own
-- ATOMLUA_PORT_DIR.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"
local netfix = require "fixtures.netfix"

local function range()
  local f = assert(io.open("/proc/sys/net/ipv4/ip_local_port_range"))
  local lo, hi = f:read("n", "n")
  f:close()
  return lo, hi
end

local function words(line)
  local t = {}
  for w in (line or ""):gmatch("%S+") do t[#t + 1] = tonumber(w) end
  return t
end

-- Child code: wait (bounded) until `path` exists.
local WAIT_FOR = [[
local function wait_for(path, secs)
  atom.wait_until(function()
    local f = io.open(path)
    if f then f:close() return true end
  end, { timeout = secs, interval = 0.005 })
end
]]

describe("atom.free_port", function()
  it("returns distinct ports outside the ephemeral range that bind now", function()
    local lo, hi = range()
    local ports = atom.run(function()
      local t = {}
      for i = 1, 300 do t[i] = atom.free_port() end
      return t
    end)
    local seen = {}
    for _, p in ipairs(ports) do
      assert.equal("integer", math.type(p))
      assert.is_true(p >= 1024 and p <= 65535)
      assert.is_true(p < lo or p > hi, p .. " is in " .. lo .. "-" .. hi)
      assert.is_nil(seen[p], "port returned twice: " .. p)
      seen[p] = true
    end
    -- Each one binds on 127.0.0.1.
    local f = assert(io.popen("python3 -c 'import socket,sys\nfor p in sys.argv[1:]:\n s=socket.socket()\n"
      .. " s.bind((\"127.0.0.1\", int(p)))\n s.close()\nprint(\"ok\")' " .. table.concat(ports, " ")))
    assert.equal("ok", f:read("l"))
    f:close()
  end)

  it("gives two concurrent runs disjoint ports", function()
    local dir = netfix.tmpdir()
    local code = WAIT_FOR .. [[
      local dir, me, other = os.getenv("BARRIER"), os.getenv("ME"), os.getenv("OTHER")
      atom.run(function()
        io.open(dir .. "/ready." .. me, "w"):close()
        wait_for(dir .. "/ready." .. other, 10)
        local ports = {}
        for i = 1, 200 do ports[i] = atom.free_port() end
        io.write(table.concat(ports, " "), "\n")
        io.flush()
        wait_for(dir .. "/done", 20) -- hold them until both have printed
      end)
    ]]
    local env = { ATOMLUA_PORT_DIR = dir .. "/ports", BARRIER = dir }
    env.ME, env.OTHER = "a", "b"
    local a = netfix.child(code, env)
    env.ME, env.OTHER = "b", "a"
    local b = netfix.child(code, env)
    local pa, pb = words(a:read("l")), words(b:read("l"))
    io.open(dir .. "/done", "w"):close()
    assert.is_true(a:close())
    assert.is_true(b:close())
    assert.equal(200, #pa)
    assert.equal(200, #pb)
    local mine = {}
    for _, p in ipairs(pa) do mine[p] = true end
    for _, p in ipairs(pb) do assert.is_nil(mine[p], "both runs got " .. p) end
    -- One lock file, whatever the number of ports.
    local ls = io.popen("ls " .. dir .. "/ports")
    assert.equal("ports.lock", ls:read("a"):match("^%s*(.-)%s*$"))
    ls:close()
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("lets a SIGKILLed run's ports be taken again at once, even if it left children", function()
    local dir = netfix.tmpdir()
    local env = { ATOMLUA_PORT_DIR = dir }
    -- The victim reserves 50 ports and starts a child that outlives it.
    local victim = netfix.child([[
      atom.run(function()
        local ports = {}
        for i = 1, 50 do ports[i] = atom.free_port() end
        local h = io.popen("echo $$; exec sleep 30")
        local stat = io.open("/proc/self/stat"):read("l")
        io.write(stat:match("^%d+"), " ", h:read("l"), " ", table.concat(ports, " "), "\n")
        io.flush()
        atom.sleep(30)
      end)
    ]], env)
    local got = words(victim:read("l"))
    local vpid, sleeper = table.remove(got, 1), table.remove(got, 1)
    assert.is_not_nil(sleeper)
    os.execute("kill -KILL " .. vpid)
    victim:close()
    local again = netfix.child([[
      atom.run(function()
        local ports = {}
        for i = 1, 50 do ports[i] = atom.free_port() end
        io.write(table.concat(ports, " "), "\n")
      end)
    ]], env)
    local second = words(again:read("l"))
    assert.is_true(again:close())
    os.execute("kill " .. sleeper .. " 2>/dev/null")
    os.execute("rm -rf '" .. dir .. "'")
    assert.equal(50, #got)
    assert.same(got, second)
  end)
end)

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

-- The lock file is the user's own (issue: any local user could make one of
-- our files world-writable through a symlink, or lock every port for us).
describe("atom.free_port's lock file", function()
  local cli = require "support.cli"
  local q = cli.q
  local id = io.popen("id -u")
  local is_root = id:read("l") == "0"
  id:close()

  local function sh(cmd)
    local p = io.popen(cmd .. " 2>&1")
    local out = p:read("a")
    p:close()
    return (out:gsub("%s+$", ""))
  end

  -- Run free_port in the atomlua binary; `prefix` goes before the command
  -- (env settings, setpriv). Returns its output: "port N" or "error <cause>: <message>".
  local function free_port(prefix, cwd)
    local path = cli.scenario([[
local ok, r = pcall(atom.free_port)
if ok then print("port " .. r) else print("error " .. r.kind .. ": " .. r.message) end
]])
    os.execute("chmod 644 " .. q(path))
    local tmp = not cwd and netfix.tmpdir()
    cwd = cwd or tmp
    local out = sh(("cd %s && %s %s run --workdir %s %s"):format(q(cwd), prefix, q(cli.bin),
      q(cwd .. "/runs"), q(path)))
    os.remove(path)
    if tmp then os.execute("rm -rf " .. q(tmp)) end
    return out:match("^[^\n]*")
  end

  it("never follows a symlink placed as the lock file", function()
    local dir = netfix.tmpdir()
    sh("mkdir " .. q(dir .. "/ports") .. " && echo secret > " .. q(dir .. "/victim") .. " && chmod 600 "
      .. q(dir .. "/victim") .. " && ln -s ../victim " .. q(dir .. "/ports/ports.lock"))
    local out = free_port("ATOMLUA_PORT_DIR=" .. q(dir .. "/ports"))
    assert.matches("error io: free_port: cannot open " .. dir .. "/ports/ports.lock: it is a symbolic link",
      out, 1, true)
    assert.equal("600", sh("stat -c %a " .. q(dir .. "/victim")))
    -- A dangling one does not create its target either.
    sh("rm " .. q(dir .. "/ports/ports.lock") .. " && ln -s ../created " .. q(dir .. "/ports/ports.lock"))
    assert.matches("error io:", free_port("ATOMLUA_PORT_DIR=" .. q(dir .. "/ports")), 1, true)
    assert.equal("no", sh("test -e " .. q(dir .. "/created") .. " && echo yes || echo no"))
    -- A FIFO is not a lock file.
    sh("rm " .. q(dir .. "/ports/ports.lock") .. " && mkfifo " .. q(dir .. "/ports/ports.lock"))
    assert.matches("ports.lock: not a regular file", free_port("ATOMLUA_PORT_DIR=" .. q(dir .. "/ports")), 1, true)
    -- A directory writable by others must be sticky.
    sh("rm " .. q(dir .. "/ports/ports.lock") .. " && chmod 777 " .. q(dir .. "/ports"))
    assert.matches("is writable by others and not sticky",
      free_port("ATOMLUA_PORT_DIR=" .. q(dir .. "/ports")), 1, true)
    sh("chmod 1777 " .. q(dir .. "/ports"))
    assert.matches("^port %d+$", free_port("ATOMLUA_PORT_DIR=" .. q(dir .. "/ports")))
    assert.equal("600", sh("stat -c %a " .. q(dir .. "/ports/ports.lock")))
    os.execute("rm -rf " .. q(dir))
  end)

  it("refuses a lock file of another user", function()
    if not is_root then return pending("needs root to chown") end
    local dir = netfix.tmpdir()
    sh("mkdir -m 1777 " .. q(dir .. "/ports") .. " && touch " .. q(dir .. "/ports/ports.lock")
      .. " && chown 65534 " .. q(dir .. "/ports/ports.lock") .. " && chmod 666 " .. q(dir .. "/ports/ports.lock"))
    assert.matches("ports.lock: it belongs to another user",
      free_port("ATOMLUA_PORT_DIR=" .. q(dir .. "/ports")), 1, true)
    os.execute("rm -rf " .. q(dir))
  end)

  it("uses /tmp/atomlua-ports-<uid>, made 0700, and refuses one that is not safe", function()
    if not is_root then return pending("needs root to run as another user") end
    local uid = 61000 + math.random(0, 999)
    local pdir = "/tmp/atomlua-ports-" .. uid
    local home = netfix.tmpdir()
    sh("chmod 755 " .. q(home) .. " && chown " .. uid .. " " .. q(home) .. " && rm -rf " .. q(pdir))
    local as = "env -u ATOMLUA_PORT_DIR setpriv --reuid=" .. uid .. " --regid=" .. uid .. " --clear-groups"
    assert.matches("^port %d+$", free_port(as, home))
    assert.equal("700 " .. uid, sh("stat -c '%a %u' " .. pdir))
    assert.equal("600 " .. uid, sh("stat -c '%a %u' " .. pdir .. "/ports.lock"))
    -- Too open.
    sh("chmod 755 " .. pdir)
    assert.matches("has mode 755; it must be accessible to its owner only",
      free_port(as, home), 1, true)
    -- Someone else's (made first by another user).
    sh("rm -rf " .. pdir .. " && mkdir -m 755 " .. pdir)
    assert.matches("belongs to uid 0, not to this user", free_port(as, home), 1, true)
    -- A symlink to a directory of the right user and mode.
    sh("rm -rf " .. pdir .. " && mkdir -m 700 " .. q(home .. "/d") .. " && chown " .. uid .. " "
      .. q(home .. "/d") .. " && ln -s " .. q(home .. "/d") .. " " .. pdir)
    assert.matches("cannot open directory " .. pdir .. ": it is a symbolic link", free_port(as, home), 1, true)
    sh("rm -rf " .. pdir .. " " .. q(home))
  end)
end)

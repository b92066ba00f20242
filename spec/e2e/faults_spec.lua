-- Network faults end to end (SPEC §11): the binary with --isolate, as root
-- and as an unprivileged user (setpriv to uid 65534), hosts and drop rules
-- (spec/fixtures/faults/hosts.lua), nothing left after SIGKILL, cluster
-- fault events, and the scenarios etcd_partition.lua and proxy_latency.lua.
local cli = require "support.cli"

local FIX = "spec/fixtures/faults/"
local q = cli.q
local BIN = cli.bin:sub(1, 1) == "/" and cli.bin or (os.getenv("PWD") .. "/" .. cli.bin)
-- A user's PATH: no /usr/sbin (ip and nft are not needed on it).
local USER_PATH = "/usr/local/bin:/usr/bin:/bin"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return out
end

local function tmpdir(mode)
  local d = sh("mktemp -d /tmp/atomlua-faults-XXXXXX"):gsub("%s+$", "")
  if mode then os.execute("chmod " .. mode .. " " .. d) end
  return d
end

local function is_root() return sh("id -u"):gsub("%s", "") == "0" end

-- Run the binary as uid 65534 (cwd: this checkout, which must be readable).
local function run_unpriv(args, env)
  local parts = {}
  for i, a in ipairs(args) do parts[i] = q(a) end
  local out, err = os.tmpname(), os.tmpname()
  os.execute("chmod 666 " .. out .. " " .. err)
  local cmd = ("setpriv --reuid=65534 --regid=65534 --clear-groups env -i PATH=%s HOME=/tmp %s %s %s >%s 2>%s </dev/null")
    :format(USER_PATH, env or "", q(BIN), table.concat(parts, " "), out, err)
  local _, _, code = os.execute(cmd)
  return { code = code, out = cli.slurp(out) or "", err = cli.slurp(err) or "" }
end

-- Why an unprivileged user namespace cannot be made here, or nil.
local function unpriv_refused()
  if not is_root() then return "setpriv needs root to change user" end
  local ok = os.execute("setpriv --reuid=65534 --regid=65534 --clear-groups unshare -Urn true 2>/dev/null")
  if not ok then return "the kernel refuses unprivileged user namespaces here" end
end

local function run(args, opts) return cli.run(args, opts) end

local function check_hosts_run(r)
  assert.equal(1, r.code, r.out .. r.err)
  assert.matches("7 passed, 1 failed", r.out, 1, true)
  assert.matches("✗ critical inside a host fails the test", r.out, 1, true)
  assert.matches("exited unexpectedly: code 3", r.out, 1, true)
end

describe("--isolate", function()
  it("runs in a namespace of its own: atom.isolated, lo up, nothing outside reachable", function()
    local f = cli.scenario([[
      print("isolated", atom.isolated)
      -- /proc/net/dev shows the caller's namespace (/sys/class/net would not)
      print(atom.sh("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' '"))
      print(atom.sh("python3 -c 'import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen(); c=socket.create_connection(s.getsockname()); print(\"lo works\")'"))
    ]])
    local r = run({ "run", "--isolate", f })
    assert.equal(0, r.code, r.out .. r.err)
    assert.matches("isolated\ttrue", r.out, 1, true)
    assert.matches("isolated\ttrue\nlo \nlo works\n", r.out, 1, true)
    r = run({ "run", f })
    assert.matches("isolated\tfalse", r.out, 1, true)
    r = run({ "run", f }, { env = "ATOMLUA_ISOLATE=1" })
    assert.matches("isolated\ttrue", r.out, 1, true)
    os.remove(f)
  end)

  it("exits 2 with the reason and the remedy when the namespace is refused", function()
    local f = cli.scenario([[print("ran")]])
    local r = run({ "run", "--isolate", f }, { env = "ATOMLUA_ISOLATE_DENY=1" })
    assert.equal(2, r.code)
    assert.not_matches("ran", r.out, 1, true)
    assert.matches("atomlua: --isolate: cannot make", r.err, 1, true)
    assert.matches("run as root, or without --isolate", r.err, 1, true)
    -- without isolation asked for, it changes nothing
    r = run({ "run", f }, { env = "ATOMLUA_ISOLATE_DENY=1" })
    assert.equal(0, r.code)
    assert.matches("ran", r.out, 1, true)
    os.remove(f)
  end)

  it("two isolated runs bind the same port at the same time", function()
    local f = cli.scenario([[
      local s = atom.spawn{ "python3", "-c", "import socket,time; s=socket.socket(); s.bind(('127.0.0.1', 7999)); s.listen(); print('bound', flush=True); time.sleep(2)" }
      s:expect("bound", 10)
      s:wait()
    ]])
    local dir = tmpdir() -- run directories out of the tree
    local out = sh(("(%s run --isolate --workdir %s %s >/dev/null 2>&1; echo A$?) & (%s run --isolate --workdir %s %s >/dev/null 2>&1; echo B$?) & wait")
      :format(q(BIN), q(dir), q(f), q(BIN), q(dir), q(f)))
    assert.matches("A0", out, 1, true)
    assert.matches("B0", out, 1, true)
    os.remove(f)
    os.execute("rm -rf " .. q(dir))
  end)

  it("hosts and rules as root", function()
    if not is_root() then pending("needs root (the unprivileged test covers the rest)") return end
    local dir = tmpdir()
    check_hosts_run(run({ "run", "--isolate", "--workdir", dir, FIX .. "hosts.lua" }))
    os.execute("rm -rf " .. dir)
  end)

  it("hosts and rules as an unprivileged user; files keep the caller's uid", function()
    local why = unpriv_refused()
    if why then pending("skipped: " .. why) return end
    local dir = tmpdir("777")
    check_hosts_run(run_unpriv({ "run", "--isolate", "--workdir", dir, FIX .. "hosts.lua" }))
    local f = cli.scenario([[
      local d = atom.run_dir()
      atom.sh("echo hi > " .. d .. "/mine")
      print("uid " .. atom.sh("id -u"))
    ]])
    os.execute("chmod 644 " .. f)
    local r = run_unpriv({ "run", "--isolate", "--keep", "--workdir", dir, f })
    assert.equal(0, r.code, r.out .. r.err)
    assert.matches("uid 0", r.out, 1, true) -- root of its own namespace
    local owners = sh("find " .. dir .. " -name mine -printf '%U\\n'")
    assert.equal("65534\n", owners)
    os.execute("rm -rf " .. dir)
    os.remove(f)
    -- the exit-2 path unprivileged
    r = run_unpriv({ "run", "--isolate", f }, "ATOMLUA_ISOLATE_DENY=1")
    assert.equal(2, r.code)
  end)

  it("leaves nothing behind after SIGKILL: processes, namespaces and rules go", function()
    local tag = ("atomlua-fk-%d"):format(math.random(10000000, 99999999))
    local dir = tmpdir()
    local r = cli.run_signal({ "run", "--isolate", "--workdir", dir, FIX .. "sigkill.lua", "--", tag }, "ready", "KILL")
    local ns, hostns = r.out:match("netns (%S+) (%S+)")
    assert.truthy(ns, r.out .. r.err)
    local left
    for _ = 1, 40 do
      left = sh(("for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' 2>/dev/null < $p/cmdline); n=$(readlink $p/ns/net 2>/dev/null); case \"$c|$n\" in *%s*|*'%s'*|*'%s'*) echo \"${p#/proc/} $c\";; esac; done")
        :format(tag:gsub("%-", "'-'"), ns, hostns))
      left = left:gsub("[^\n]*for p in[^\n]*\n?", "")
      if left == "" then break end
      os.execute("sleep 0.05")
    end
    assert.equal("", left)
    os.execute("rm -rf " .. dir)
  end)
end)

describe("cluster faults", function()
  it("write fault events for kill, pause, resume and restart; network faults need --isolate", function()
    local f = cli.scenario([[
      local c <close> = atom.cluster{ size = 2, name = "s", cmd = function() return { "sleep", "100" } end }
      assert(c.nodes[1].host == "127.0.0.1" and c.nodes[1].net == nil)
      c:start()
      c:pause(1); c:resume(1); c:kill(2, "KILL"); c:restart(2)
      local ok, e = pcall(c.partition, c, { 1 }, { 2 })
      print(e.kind, e.message)
    ]])
    local ev = os.tmpname()
    local r = run({ "run", "--events", ev, f })
    assert.equal(0, r.code, r.out .. r.err)
    assert.matches("usage\tc:partition needs an isolated run", r.out, 1, true)
    local text = cli.slurp(ev)
    local actions = {}
    for line in text:gmatch("[^\n]+") do
      if line:find('"type":"fault"', 1, true) then
        actions[#actions + 1] = line:match('"action":"(%w+)"')
        assert.matches('"cluster":"s"', line, 1, true)
      end
    end
    assert.same({ "pause", "resume", "kill", "restart" }, actions)
    os.remove(ev)
    os.remove(f)
  end)
end)

describe("scenarios", function()
  it("proxy_latency.lua passes without isolation", function()
    local r = run({ "run", "scenarios/proxy_latency.lua" })
    assert.equal(0, r.code, r.out .. r.err)
    assert.matches("4 passed, 0 failed", r.out, 1, true)
  end)

  it("etcd_partition.lua passes once", function()
    local dir = tmpdir()
    local r = run({ "run", "--isolate", "--workdir", dir, "scenarios/etcd_partition.lua" })
    assert.equal(0, r.code, r.out .. r.err)
    assert.matches("3 passed, 0 failed", r.out, 1, true)
    os.execute("rm -rf " .. dir)
  end)

  it("etcd_partition.lua passes 20 times in a row #long", function()
    local dir = tmpdir()
    for i = 1, 20 do
      local r = run({ "run", "--isolate", "--workdir", dir, "scenarios/etcd_partition.lua" })
      assert.equal(0, r.code, ("run %d:\n%s%s"):format(i, r.out, r.err))
    end
    os.execute("rm -rf " .. dir)
  end)
end)

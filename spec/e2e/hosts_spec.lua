-- Hosts over real SSH (docs/hosts.md): Debian's sshd started here on
-- 127.0.0.1 on a free port, with a throw-away host key and an authorized
-- key made for the test (no system sshd, no change to the machine's ssh
-- config). The binary is uploaded through the connection; a lost transport
-- takes the remote node along within 2 s and fails the owner naming the
-- host; nothing tagged survives a normal end, an error, --timeout, SIGINT or
-- SIGKILL of atomlua. Plus the agent's refusals.
local cli = require "support.cli"

local SSHD = "/usr/sbin/sshd"
local have_sshd = io.open(SSHD) ~= nil

local function sh(cmd)
  local f = io.popen(cmd)
  local out = f:read("a")
  f:close()
  return out
end

local function tag() return tostring(math.random(10000000, 99999999)) end

-- Live processes whose command line contains `needle` (no pgrep).
local function tagged(needle)
  local found = {}
  for name in sh("ls /proc"):gmatch("%d+") do
    local f = io.open("/proc/" .. name .. "/cmdline")
    if f then
      local cmd = f:read("a") or ""
      f:close()
      local sf = io.open("/proc/" .. name .. "/stat")
      local st = sf and sf:read("a") or ""
      if sf then sf:close() end
      if cmd:find(needle, 1, true) and st:match("^%d+ %b() (%a)") ~= "Z" then found[#found + 1] = name end
    end
  end
  return found
end

local function gone_within(needle, secs)
  local deadline = os.time() + secs + 1
  local t0 = os.clock()
  while os.time() <= deadline do
    if #tagged(needle) == 0 then return true end
    os.execute("sleep 0.05")
  end
  return #tagged(needle) == 0
end

local D, port, via_words, sshd_pid

local function setup()
  D = sh("mktemp -d /tmp/atomlua-sshd-XXXXXX"):gsub("%s+$", "")
  port = tonumber(sh([[python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']]))
  assert(os.execute(("ssh-keygen -q -t ed25519 -N '' -f %s/hostkey && ssh-keygen -q -t ed25519 -N '' -f %s/id"
    .. " && cp %s/id.pub %s/authorized_keys && mkdir -p /run/sshd"):format(D, D, D, D)))
  local cfg = io.open(D .. "/sshd_config", "w")
  cfg:write(([[
Port %d
ListenAddress 127.0.0.1
HostKey %s/hostkey
AuthorizedKeysFile %s/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile %s/sshd.pid
]]):format(port, D, D, D))
  cfg:close()
  sshd_pid = sh(("%s -D -e -f %s/sshd_config >%s/sshd.log 2>&1 & echo $!"):format(SSHD, D, D)):gsub("%s+$", "")
  local via = { "ssh", "-T", "-p", tostring(port), "-i", D .. "/id", "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "root@127.0.0.1" }
  via_words = table.concat(via, "\1")
  -- wait until it accepts connections
  for _ = 1, 100 do
    if os.execute(("ssh -T -p %d -i %s/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
      .. "-o BatchMode=yes -o LogLevel=ERROR root@127.0.0.1 true </dev/null 2>/dev/null"):format(port, D)) then
      return
    end
    os.execute("sleep 0.1")
  end
  error("sshd did not start: " .. sh("cat " .. D .. "/sshd.log"))
end

-- atomlua [opts] run ssh_node.lua -- via mode tag bin
local function node_args(mode, t, opts)
  local args = { "run" }
  for _, a in ipairs(opts or {}) do args[#args + 1] = a end
  for _, a in ipairs { "spec/fixtures/hosts/ssh_node.lua", "--", via_words, mode, t, D .. "/bin/atomlua" } do
    args[#args + 1] = a
  end
  return args
end

local describe_ssh = have_sshd and describe or pending

describe_ssh("a host over ssh", function()
  setup()
  teardown(function()
    if sshd_pid then os.execute("kill " .. sshd_pid) end
    os.execute("rm -rf " .. D)
  end)

  it("uploads the binary, runs a node, and a lost transport ends it and fails the owner naming the host",
    function()
      local t = tag()
      local out, err = os.tmpname(), os.tmpname()
      local script = ([[
%s %s >%s 2>%s </dev/null &
pid=$!
i=0
while ! grep -q KILLED %s 2>/dev/null; do i=$((i+1)); [ $i -gt 400 ] && break; sleep 0.05; done
echo $pid
]]):format(cli.q(cli.bin), table.concat((function()
        local q = {}
        for i, a in ipairs(node_args("lost", t)) do q[i] = cli.q(a) end
        return q
      end)(), " "), out, err, out)
      local pid = sh(script):gsub("%s+$", "")
      assert.is_true(gone_within("1000." .. t, 2), "the remote node outlived its transport by 2 s")
      os.execute("while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
      local o = io.open(out):read("a")
      local e = io.open(err):read("a")
      assert.matches("UPLOADED true", o)
      assert.matches("host sshhost", o .. e)
      assert.matches("✗ a node on an ssh host", o .. e)
      -- the binary was put where asked, and checks out
      assert.are.equal(sh("sha256sum < " .. cli.bin), sh("sha256sum < " .. D .. "/bin/atomlua"))
    end)

  for _, case in ipairs {
    { "a normal end", "normal", {}, 0 },
    { "an error", "error", {}, 1 },
    { "--timeout", "wait", { "--timeout", "2" } },
  } do
    it("leaves nothing tagged on the host after " .. case[1], function()
      local t = tag()
      local r = cli.run(node_args(case[2], t, case[3]))
      assert.matches("UPLOADED", r.out)
      if case[4] then assert.are.equal(case[4], r.code) else assert.are_not.equal(0, r.code) end
      assert.is_true(gone_within("1000." .. t, 3), "a tagged node survived " .. case[1])
      assert.is_true(gone_within(D .. "/bin/atomlua agent", 3), "the agent survived " .. case[1])
    end)
  end

  for _, sig in ipairs { "INT", "KILL" } do
    it("leaves nothing tagged on the host after SIG" .. sig .. " of atomlua", function()
      local t = tag()
      local r = cli.run_signal(node_args("wait", t), "READY", sig)
      assert.matches("READY", r.out)
      assert.are_not.equal(0, r.code)
      assert.is_true(gone_within("1000." .. t, 3), "a tagged node survived SIG" .. sig)
      assert.is_true(gone_within(D .. "/bin/atomlua agent", 3), "the agent survived SIG" .. sig)
    end)
  end

  it("names the host and quotes ssh's stderr when it cannot connect", function()
    local f = io.open(D .. "/unreach.lua", "w")
    f:write(([[
atom.test("unreachable", function()
  local ok, e = pcall(atom.host, { via = { "ssh", "-T", "-p", "1", "-o", "BatchMode=yes", "root@127.0.0.1" },
    name = "nowhere", timeout = 10 })
  assert(not ok)
  print("KIND " .. e.kind)
  print("MSG " .. e.message)
end)
]]))
    f:close()
    local r = cli.run({ "run", D .. "/unreach.lua" })
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.matches("KIND process", r.out)
    assert.matches("MSG host nowhere: cannot start the agent through ssh", r.out)
    assert.matches("Connection refused", r.out)
  end)
end)

describe("the agent's refusals", function()
  it("refuses a terminal on stdin", function()
    local out = sh(("script -qec '%s agent' /dev/null </dev/null 2>&1; echo \"rc=$?\""):format(cli.bin))
    assert.matches("stdin is a terminal", out)
    assert.matches("rc=2", out)
  end)

  it("refuses a driver that speaks another protocol version", function()
    local out = sh([[printf '\000\000\000\015h\000\000\000\000\000\000\000\143x.y.z' | ]] .. cli.bin
      .. [[ agent | od -An -c | tr -d ' \n'; echo " rc=${PIPESTATUS:-?}"]])
    assert.matches("speaks", out)
    assert.matches("protocol1", out)
  end)

  it("is refused when it speaks another protocol version", function()
    local fake = os.tmpname()
    local f = io.open(fake, "w")
    -- an "agent" whose hello says protocol 99
    f:write([[#!/bin/sh
printf '\000\000\000\016H\000\000\000\000\000\000\000\143x.y.z'
sleep 5
]])
    f:close()
    os.execute("chmod +x " .. fake)
    local s = os.tmpname() .. ".lua"
    f = io.open(s, "w")
    f:write(([[
atom.test("mismatch", function()
  local ok, e = pcall(atom.host, { via = { "sh", "-c" }, name = "old", atomlua = %q, upload = false })
  assert(not ok)
  print("MSG " .. e.message)
end)
]]):format(fake))
    f:close()
    local r = cli.run({ "run", s })
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.matches("MSG host old: its agent %(atomlua x.y.z%) speaks protocol 99, this atomlua", r.out)
    os.remove(fake)
    os.remove(s)
  end)
end)

describe("atom.cluster on hosts", function()
  it("runs scenarios/hosts_etcd.lua: each etcd member on its own sh -c host", function()
    local r = cli.run({ "run", "scenarios/hosts_etcd.lua" })
    assert.are.equal(0, r.code, r.out .. r.err)
    assert.matches("3 passed, 0 failed", r.out)
  end)
end)

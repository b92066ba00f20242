-- End-to-end: the atomlua binary's exit statuses, errors and signals (SPEC §1).
local cli = require "support.cli"
local S = cli.scenario

local last_line = cli.last_line

describe("atomlua run", function()
  it("exits 0 on success and ends with the seed line and the closing line", function()
    local r = cli.run({ "run", S [[
      atom.test("a", function() atom.sleep(0.01) end)
      atom.skip("b", "not today")
      print("args", #atom.args, atom.args[1])
    ]], "--", "x" })
    assert.equals(0, r.code)
    assert.matches("✓ a %(", r.out)
    assert.matches("%- b %(skipped: not today%)", r.out)
    assert.matches("args\t1\tx", r.out)
    assert.equals("1 passed, 0 failed, 1 skipped", last_line(r.out))
    assert.matches("\nseed %d+: atomlua run %-%-seed %d+ ", r.out)
  end)

  it("runs the seed case of SPEC §3 as shipped in scenarios/seed.lua", function()
    local r = cli.run({ "run", "scenarios/seed.lua" })
    assert.equals(0, r.code, r.out .. r.err)
    assert.matches("node error: id 5\n.*after 5%.%d%ds\nall good\n", r.out)
    assert.equals("1 passed, 0 failed", last_line(r.out))
  end)

  it("exits 1 when a test fails, with the failure block", function()
    local r = cli.run({ "run", S [[
      atom.test("bad", function() error("broken thing") end)
      atom.test("good", function() end)
    ]] })
    assert.equals(1, r.code)
    assert.matches("✗ bad", r.out)
    assert.matches("broken thing", r.out)
    assert.matches("task: bad", r.out)
    assert.equals("1 passed, 1 failed", last_line(r.out))
  end)

  it("exits 3 on an error outside tests, naming task, file and line", function()
    local path = S "atom.sleep(0)\nerror('top level boom')\n"
    local r = cli.run({ "run", path })
    assert.equals(3, r.code)
    assert.matches("top level boom", r.out)
    assert.matches(path:gsub("%p", "%%%0") .. ":2", r.out)
    assert.matches("task: main", r.out)
    assert.matches("scenario error in", r.out)
  end)

  it("exits 2 on a syntax error naming file and line, and runs nothing", function()
    local marker = os.tmpname()
    local good = S(("io.open(%q, 'w'):write('ran')"):format(marker .. ".ran"))
    local r = cli.run({ "run", good, S "local x = = 1" })
    assert.equals(2, r.code)
    assert.matches("syntax error: .*:1:", r.err)
    assert.is_nil(io.open(marker .. ".ran"))
  end)

  it("exits 2 on a missing file, an unknown option, an unknown command, a bad value", function()
    assert.equals(2, cli.run({ "run", "/nonexistent/x.lua" }).code)
    local r = cli.run({ "run", "--bogus", S "" })
    assert.equals(2, r.code)
    assert.matches("unknown option %-%-bogus", r.err)
    assert.equals(2, cli.run({ "frobnicate" }).code)
    assert.equals(2, cli.run({ "run", "--timeout", "abc", S "" }).code)
    assert.equals(2, cli.run({ "run", "--timeout" }).code)
    assert.equals(2, cli.run({ "run", "--seed", "-1", S "" }).code)
    assert.equals(2, cli.run({ "run" }).code)
  end)

  it("version and help", function()
    local r = cli.run({ "version" })
    assert.equals(0, r.code)
    assert.matches("^atomlua %d+%.%d+%.%d+", r.out)
    local h = cli.run({ "help", "run" })
    assert.equals(0, h.code)
    assert.matches("%-%-timeout SECS", h.out)
  end)

  it("--timeout cancels the run, runs cleanups and exits 124", function()
    local r = cli.run({ "run", "--timeout", "0.3", S [[
      atom.defer(function() print("root cleanup ran") end)
      atom.test("slow", function()
        atom.defer(function() print("test cleanup ran") end)
        atom.sleep(30)
      end)
    ]] })
    assert.equals(124, r.code)
    assert.matches("test cleanup ran", r.out)
    assert.matches("root cleanup ran", r.out)
    assert.matches("✗ slow", r.out)
    assert.matches("cancelled: run timed out after 0.3s", r.out)
    assert.matches("timed out after 0.3s", r.out)
    assert.equals("0 passed, 1 failed", last_line(r.out))
  end)

  it("--timeout also ends a task that never suspends, within timeout + grace + 1", function()
    local t0 = os.time()
    local r = cli.run({ "run", "--timeout", "0.3", "--grace", "0.5", S "while true do end" })
    assert.equals(124, r.code)
    assert.is_true(os.time() - t0 <= 4)
  end)

  it("a failed test then --timeout: 124 wins", function()
    local r = cli.run({ "run", "--timeout", "0.3", S [[
      atom.test("fails", function() error("x") end)
      atom.sleep(30)
    ]] })
    assert.equals(124, r.code)
  end)

  it("a scenario error in one file and a failed test in another: 3; the other file still runs", function()
    local r = cli.run({ "run", S "error('first file broken')", S "atom.test('t', function() error('y') end)" })
    assert.equals(3, r.code)
    assert.matches("✗ t", r.out)
  end)

  for sig, code in pairs({ INT = 130, TERM = 143, HUP = 129 }) do
    it("SIG" .. sig .. " cancels the run, runs cleanups and exits " .. code, function()
      local r = cli.run_signal({ "run", S [[
        atom.defer(function() print("cleanup ran") end)
        print("ready")
        atom.test("waits", function() atom.sleep(30) end)
      ]] }, "ready", sig)
      assert.equals(code, r.code)
      assert.matches("cleanup ran", r.out)
      assert.matches("interrupted by SIG" .. sig, r.out)
    end)
  end

  it("a second signal exits at once with the first one's status", function()
    local r = cli.run_signal({ "run", "--grace", "20", S [[
      atom.defer(function() print("cleanup started"); atom.sleep(20) end)
      print("ready")
      atom.sleep(30)
    ]] }, "ready", "INT", { second = true })
    assert.equals(130, r.code)
  end)

  it("a signal then a failed test: the signal's status wins", function()
    local r = cli.run_signal({ "run", S [[
      print("ready")
      atom.test("fails while interrupted", function() atom.sleep(30) end)
    ]] }, "ready", "TERM")
    assert.equals(143, r.code)
  end)

  it("os.exit runs the cleanups and exits with its code", function()
    local r = cli.run({ "run", S [[
      atom.defer(function() print("cleanup ran") end)
      os.exit(7)
    ]] })
    assert.equals(7, r.code)
    assert.matches("cleanup ran", r.out)
  end)

  it("a deadlock fails the running test with kind deadlock", function()
    local r = cli.run({ "run", S [[
      atom.test("stuck", function() atom.event():wait() end)
    ]] })
    assert.equals(1, r.code)
    assert.matches("deadlock", r.out)
    assert.matches("waiting in ev:wait%(%)", r.out)
  end)

  it("--seed makes math.random repeatable", function()
    local path = S "print('rnd', math.random(1, 1000000))"
    local a = cli.run({ "run", "--seed", "42", path })
    local b = cli.run({ "run", "--seed", "42", path })
    assert.equals(a.out:match("rnd\t(%d+)"), b.out:match("rnd\t(%d+)"))
    assert.matches("seed 42: atomlua run %-%-seed 42 ", a.out)
  end)

  it("ATOMLUA_DEBUG=leaks finds nothing after 10,000 tasks with cancels #stress", function()
    local r = cli.run({ "run", S [[
      local ts = {}
      for i = 1, 10000 do ts[i] = atom.go(function() atom.sleep(math.random() * 0.02) end) end
      for i = 1, 10000, 7 do ts[i]:cancel() end
      for i = 1, 10000 do pcall(ts[i].join, ts[i]) end
    ]] }, { env = "ATOMLUA_DEBUG=leaks" })
    assert.equals(0, r.code)
    assert.matches("tasks=0 handles=0 refs=0 children=0", r.err)
  end)
end)

describe("command line edges", function()
  it("--help and -h after run or trace print the options, like help run", function()
    for _, a in ipairs({ { "run", "--help" }, { "run", "-h" }, { "trace", "-h" }, { "--help" }, { "-h" } }) do
      local r = cli.run(a)
      assert.equals(0, r.code, table.concat(a, " ") .. ": " .. r.err)
      assert.matches("usage: atomlua run", r.out)
    end
    assert.matches("%-%-timeout SECS", cli.run({ "run", "-h" }).out)
  end)

  it("a directory as a scenario runs its *.lua files in sorted order, with a header each", function()
    local dir = S(""):gsub("%.lua$", ".d")
    assert(os.execute("mkdir -p " .. cli.q(dir)))
    for name, src in pairs({ ["b.lua"] = "atom.test('from b', function() end)",
      ["a.lua"] = "atom.test('from a', function() end)", ["notes.txt"] = "not lua" }) do
      local f = assert(io.open(dir .. "/" .. name, "w"))
      f:write(src)
      f:close()
    end
    local r = cli.run({ "run", dir })
    assert.equals(0, r.code, r.out .. r.err)
    assert.matches("▸▸ [^\n]*/a%.lua\n✓ from a [^\n]*\n▸▸ [^\n]*/b%.lua\n✓ from b ", r.out)
    assert.equals("2 passed, 0 failed", last_line(r.out))
    -- one file: no header
    assert.not_matches("▸▸", cli.run({ "run", dir .. "/a.lua" }).out)
    os.execute("rm -rf " .. cli.q(dir))
  end)

  it("exits 2 on an empty --junit, --events or --workdir, a directory without scenarios or traces", function()
    for _, opt in ipairs({ "--junit", "--events", "--workdir" }) do
      local r = cli.run({ "run", opt, "", S "" })
      assert.equals(2, r.code, opt)
      assert.matches("option " .. opt:gsub("%-", "%%-") .. " needs a non%-empty value", r.err)
    end
    local empty = S(""):gsub("%.lua$", ".d")
    assert(os.execute("mkdir -p " .. cli.q(empty)))
    local r = cli.run({ "run", empty })
    assert.equals(2, r.code)
    assert.matches("no %*%.lua file in directory", r.err)
    local reactor = S "return { steps = {} }"
    r = cli.run({ "trace", "--reactor", reactor, empty })
    assert.equals(2, r.code)
    assert.matches("no trace %(%*%.itf%.json%) in directory", r.err)
    os.execute("rm -rf " .. cli.q(empty))
  end)
end)

describe("reports that cannot be written", function()
  local function has(path) return io.open(path) ~= nil end

  it("--junit and --events on a full device: said on stderr, exit 3, the device stays", function()
    -- a private node of /dev/full (1, 7): a regression cannot replace the real one
    local full = S(""):gsub("%.lua$", ".full")
    if not os.execute("mknod -m 666 " .. cli.q(full) .. " c 1 7 2>/dev/null") then
      pending("mknod refused (not root?)")
      return
    end
    finally(function() os.remove(full) end)
    local pf = cli.plain(full)
    local r = cli.run({ "run", "--junit", full, S "atom.test('ok', function() end)" })
    assert.equals(3, r.code, r.out .. r.err)
    assert.matches("cannot write JUnit report " .. pf .. ": No space left on device", r.err)
    local h = io.popen("stat -c %F " .. cli.q(full))
    assert.equals("character special file", h:read("l"))
    h:close()
    r = cli.run({ "run", "--events", full, S "atom.test('ok', function() end)" })
    assert.equals(3, r.code)
    assert.matches("cannot write events file " .. pf .. ": No space left on device", r.err)
    -- a failed test's 1 stays below 3; a timeout's 124 stays above
    r = cli.run({ "run", "--junit", full, S "atom.test('no', function() error('x') end)" })
    assert.equals(3, r.code)
    r = cli.run({ "run", "--timeout", "0.3", "--junit", full, S "atom.sleep(10)" })
    assert.equals(124, r.code)
  end)

  it("--junit writes through a symlink, which stays", function()
    local target = S(""):gsub("%.lua$", ".xml")
    local link = target .. ".link"
    assert(os.execute(("echo old > %s && ln -s %s %s"):format(cli.q(target), cli.q(target), cli.q(link))))
    local r = cli.run({ "run", "--junit", link, S "atom.test('ok', function() end)" })
    assert.equals(0, r.code, r.err)
    local h = io.popen("stat -c %F " .. cli.q(link))
    assert.equals("symbolic link", h:read("l"))
    h:close()
    assert.matches('<testcase name="ok"', cli.slurp(target))
    assert.is_false(has(target .. ".tmp"))
    os.remove(link)
    os.remove(target)
  end)

  it("on a full disk: JUnit, events and process logs each named on stderr, exit 3", function()
    local mnt = S(""):gsub("%.lua$", ".mnt")
    assert(os.execute("mkdir -p " .. cli.q(mnt)))
    if not os.execute("mount -t tmpfs -o size=64k tmpfs " .. cli.q(mnt) .. " 2>/dev/null") then
      os.execute("rmdir " .. cli.q(mnt))
      pending("mount -t tmpfs refused (not root?)")
      return
    end
    finally(function() os.execute("umount " .. cli.q(mnt) .. "; rmdir " .. cli.q(mnt)) end)
    -- the process log fills the disk first; the reports then find no room
    local r = cli.run({ "run", "--workdir", mnt .. "/runs", "--junit", mnt .. "/j.xml",
      "--events", mnt .. "/e.ndjson", S [[
        atom.test("logs", function()
          atom.exec{ "sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; echo" }
        end)
        for i = 1, 100 do atom.skip("filler " .. i .. (" pad"):rep(20)) end
      ]] })
    assert.equals(3, r.code, r.out .. r.err)
    assert.matches("cannot write process log " .. cli.plain(mnt) .. "/runs/[^\n]*/logs/exec%.log: No space left on device", r.err)
    assert.matches("cannot write JUnit report " .. cli.plain(mnt) .. "/j%.xml: No space left on device", r.err)
    assert.matches("cannot write events file " .. cli.plain(mnt) .. "/e%.ndjson: No space left on device", r.err)
  end)
end)

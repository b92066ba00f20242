-- Lua's own blocking calls (SPEC §15) in module mode: inside atom.run,
-- os.execute and io.popen run owned shells and wait as tasks do; their
-- results are compared with Lua 5.4's own functions, which the same calls
-- reach outside atom.run. Real processes only (sh, sleep, printf, cat).
local support = require "support.atom_loader"
local atom = support.atom

local orig = debug.getregistry()["atom.blocking.orig"] -- Lua's own functions

local function assert_clean()
  local s = atom._stats()
  assert.are.same({ tasks = 0, handles = 0, refs = 0, children = 0 },
    { tasks = s.tasks, handles = s.handles, refs = s.refs, children = s.children })
end

local function run(fn, ...)
  local res = table.pack(atom.run(fn, ...))
  assert_clean()
  return table.unpack(res, 1, res.n)
end

local function kind(e) return type(e) == "table" and e.kind or nil end

-- Alive while /proc shows it and it is not a zombie.
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return s:match("^%d+ %b() (%a)") ~= "Z"
end

local function gone(pid)
  for _ = 1, 100 do
    if not alive(pid) then return true end
    orig.execute("sleep 0.02")
  end
  return false
end

local function tmpname()
  local p = os.tmpname()
  os.remove(p)
  return p
end

local function readfile(path)
  local f = assert(io.open(path))
  local s = f:read("a")
  f:close()
  return s
end

local function pack(...) return table.pack(...) end

describe("os.execute inside a task", function()
  it("lets other tasks run while it waits", function()
    local ticks, res = 0, nil
    run(function()
      local ticker = atom.go(function()
        while true do
          atom.sleep(0.01)
          ticks = ticks + 1
        end
      end)
      atom.sleep(0) -- the ticker starts
      res = pack(os.execute("sleep 1"))
      ticker:cancel()
    end)
    assert.are.same({ n = 3, true, "exit", 0 }, res)
    -- about 100 ticks in a second; the old blocking call gave 0 or 1
    assert.is_true(ticks >= 20, "ticks during os.execute: " .. ticks)
  end)

  it("returns what Lua's os.execute returns", function()
    local cmds = { "true", "exit 3", "kill -9 $$", "kill -15 $$", "false; exit 0" }
    local want, got = {}, {}
    for i, cmd in ipairs(cmds) do want[i] = pack(orig.execute(cmd)) end
    want.none = pack(orig.execute())
    want.num = pack(orig.execute(42 .. " 2>/dev/null"))
    run(function()
      for i, cmd in ipairs(cmds) do got[i] = pack(os.execute(cmd)) end
      got.none = pack(os.execute())
      got.num = pack(os.execute(42 .. " 2>/dev/null"))
    end)
    assert.are.same(want, got)
    assert.are.same({ n = 3, nil, "exit", 3 }, got[2])
    assert.are.same({ n = 3, nil, "signal", 9 }, got[3])
    assert.are.same({ n = 1, true }, got.none)
  end)

  it("is cut by atom.timeout: timeout raised at once, the shell and its sleep gone", function()
    local pids = tmpname()
    local err, elapsed
    run(function()
      local t0 = atom.now()
      local ok
      ok, err = pcall(atom.timeout, 0.2, os.execute,
        ("sleep 5 & echo $! > %s; echo $$ >> %s; wait"):format(pids, pids))
      elapsed = atom.now() - t0
      assert(not ok)
    end)
    assert.are.equal("timeout", kind(err))
    -- the deadline is 0.2 s; the sleep would take 5 (wide slack: loaded CI)
    assert.is_true(elapsed < 1.5, "took " .. elapsed)
    local list = {}
    for pid in readfile(pids):gmatch("%d+") do list[#list + 1] = pid end
    os.remove(pids)
    assert.are.equal(2, #list)
    for _, pid in ipairs(list) do assert.is_true(gone(pid), "still running: " .. pid) end
  end)

  it("a cancelled os.execute raises cancelled and kills the group", function()
    local pidf = tmpname()
    local status, pid
    run(function()
      local t = atom.go(function() os.execute(("echo $$ > %s; exec sleep 5"):format(pidf)) end)
      atom.wait_until(function() local f = io.open(pidf); if f then f:close() end; return f ~= nil end, 5)
      atom.sleep(0.05)
      pid = readfile(pidf):match("%d+")
      t:cancel()
      pcall(t.join, t)
      status = t:status()
      -- the exit of a killed shell finishes at the next loop iteration (so
      -- does a cancelled atom.exec's): let it, before the root ends
      atom.sleep(0.05)
    end)
    os.remove(pidf)
    assert.are.equal("cancelled", status)
    assert.is_true(gone(pid))
  end)

  it("checks its argument like Lua's", function()
    local err
    run(function() _, err = pcall(os.execute, {}) end)
    assert.matches("bad argument #1 to 'os.execute' %(string expected, got table%)", tostring(err))
  end)

  it("its shell is named sh and owned: stopped at the owner's end", function()
    local pidf = tmpname()
    run(function()
      -- the shell exits at once; its background sleep stays in the group
      assert(os.execute(("sleep 100 & echo $! > %s"):format(pidf)))
    end)
    local pid = readfile(pidf):match("%d+")
    os.remove(pidf)
    assert.is_true(gone(pid), "the group outlived atom.run: " .. pid)
  end)
end)

describe("io.popen inside a task", function()
  -- The same reads with Lua's popen (outside atom.run) and ours.
  -- Ours must be in use inside atom.run: not a C FILE* (which blocks).
  local function both(fn)
    local want = fn(orig.popen)
    local got, real = nil, false
    run(function()
      got = fn(function(...)
        local f = io.popen(...)
        if getmetatable(f) == getmetatable(io.stdout) then real = true end
        return f
      end)
    end)
    assert.is_false(real, "io.popen inside atom.run returned Lua's own FILE*")
    return want, got
  end

  it("lines() yields a, b; close returns Lua's values", function()
    local want, got = both(function(popen)
      local f = popen("printf 'a\\nb\\n'")
      local lines = {}
      for l in f:lines() do lines[#lines + 1] = l end
      lines.close = pack(f:close())
      return lines
    end)
    assert.are.same({ "a", "b", close = { n = 3, true, "exit", 0 } }, got)
    assert.are.same(want, got)
  end)

  it("reads every format as Lua's does", function()
    local script = "printf ' 12 0x1F 3e2 -.5 abc\\nline2\\r\\nx\\n\\nlast'"
    local want, got = both(function(popen)
      local f = popen(script)
      local r = {}
      r[1] = pack(f:read("n", "n", "*n", "n"))
      r[2] = pack(f:read("n"))        -- fails on "abc", consumes nothing but spaces
      r[3] = pack(f:read(0), f:read(2), f:read("L"))
      r[4] = pack(f:read("l", "line"))
      r[5] = pack(f:read(1), f:read("l"))
      r[6] = pack(f:read("a"))
      r[7] = pack(f:read("a"), f:read("l"), f:read(1), f:read(0))
      r[8] = pack(f:lines("L")())
      r.close = pack(f:close())
      return r
    end)
    assert.are.same({ n = 4, 12, 31, 300.0, -0.5 }, got[1])
    assert.are.same(want, got)
  end)

  it("reads a large output in chunks, bytes unchanged", function()
    local want, got = both(function(popen)
      local f = popen("head -c 300000 /dev/zero | tr '\\0' 'x'; printf '\\r\\n\\0end'")
      local a = f:read(100000)
      local b = f:read("a")
      return { #a, #b, b:sub(-6), pack(f:close()) }
    end)
    assert.are.same({ 100000, 200006, "\r\n\0end", { n = 3, true, "exit", 0 } }, got)
    assert.are.same(want, got)
  end)

  it("close gives exit codes and signals like Lua's", function()
    local want, got = both(function(popen)
      local r = {}
      r[1] = pack(popen("exit 5"):close())
      local f = popen("echo x; kill -9 $$")
      f:read("a")
      r[2] = pack(f:close())
      local w = popen("exit 7", "w")
      r[3] = pack(w:close())
      return r
    end)
    assert.are.same({ n = 3, nil, "exit", 5 }, got[1])
    assert.are.same({ n = 3, nil, "signal", 9 }, got[2])
    assert.are.same(want, got)
  end)

  it("a \"w\" handle feeds `cat > file`", function()
    local path = tmpname()
    local res
    run(function()
      local f = io.popen("cat > " .. path, "w")
      res = { f:write("hello ", 42, " ", 1.5, "\n") == f, f:write(("y"):rep(200000)) == f,
        pack(f:close()) }
    end)
    assert.are.same({ true, true, { n = 3, true, "exit", 0 } }, res)
    assert.are.equal("hello 42 1.5\n" .. ("y"):rep(200000), readfile(path))
    os.remove(path)
  end)

  it("handles behave as files: io.type, tostring, seek, setvbuf, flush, misuse", function()
    local want, got = both(function(popen)
      local f = popen("printf x")
      local w = popen("cat >/dev/null", "w")
      local r = {
        io.type(f), tostring(f):match("^file %(0x%x+%)$") ~= nil,
        pack(f:seek()), pack(f:seek("set", 0)), pack(f:setvbuf("no")), pack(f:flush()),
        pack(f:write("x")), pack(w:read("l")), w:write("a") == w,
      }
      r[#r + 1] = f:read("a") -- before close: no SIGPIPE race for printf
      r[#r + 1] = pack(f:close())
      r[#r + 1] = pack(io.close(w))
      r[#r + 1] = io.type(f)
      r[#r + 1] = tostring(f)
      r[#r + 1] = pack(pcall(f.read, f))
      r[#r + 1] = pack(pcall(f.close, f))
      return r
    end)
    assert.are.same("file", got[1])
    assert.are.same({ n = 3, nil, "Illegal seek", 29 }, got[3])
    assert.are.same(want, got)
  end)

  it("rejects a bad mode like Lua's", function()
    local err
    run(function() _, err = pcall(io.popen, "true", "rw") end)
    assert.matches("bad argument #2 to 'io.popen' %(invalid mode%)", tostring(err))
  end)

  it("lets other tasks run while a read waits", function()
    local ticks, line = 0, nil
    run(function()
      local ticker = atom.go(function()
        while true do
          atom.sleep(0.01)
          ticks = ticks + 1
        end
      end)
      atom.sleep(0)
      local f = io.popen("sleep 0.5; echo late")
      line = f:read("l")
      f:close()
      ticker:cancel()
    end)
    assert.are.equal("late", line)
    assert.is_true(ticks >= 10, "ticks during the read: " .. ticks)
  end)

  it("a read cancelled mid-way raises timeout; <close> then kills the shell", function()
    local pid, first, err
    run(function()
      local ok
      ok, err = pcall(atom.timeout, 0.3, function()
        local f <close> = io.popen("echo $$; echo first; exec sleep 5")
        pid = f:read("n")
        first = f:read("l") .. f:read("l")
        f:read("a")
      end)
      assert(not ok)
    end)
    assert.are.equal("timeout", kind(err))
    assert.are.equal("first", first)
    assert.is_true(gone(pid), "shell still running: " .. tostring(pid))
  end)

  it("a collected open handle stops the shell's group", function()
    local pid
    run(function()
      local f = io.popen("sleep 100 & echo $!")
      pid = f:read("n")
      f = nil -- luacheck: ignore 311
      collectgarbage()
      collectgarbage()
      -- before the owner's end: only the collection can have stopped it
      atom.wait_until(function() return not alive(pid) end, 5)
    end)
    assert.is_false(alive(pid))
  end)

  it("outside a task, Lua's own popen and execute run", function()
    local f = io.popen("echo plain")
    assert.are.equal("file", io.type(f))
    assert.are.equal(getmetatable(io.stdout), getmetatable(f)) -- a real FILE*
    assert.are.equal("plain\n", f:read("a"))
    f:close()
    assert.are.same({ n = 3, nil, "exit", 2 }, pack(os.execute("exit 2")))
  end)
end)

describe("the live status line", function()
  it("is cleared while a child of os.execute or io.popen writes to the terminal", function()
    local console = require "atom.report.console"
    local text = {}
    local out = { write = function(_, s) text[#text + 1] = s end, flush = function() end }
    local c = console.new({ out = out, color = true })
    c:tick({ elapsed = 1, tests = { "a" }, procs = 1 })
    c:tick({ hide = true })
    assert.are.equal("\r\27[K⋯ 1.0s running: a (1 process)\r\27[K", table.concat(text))
    c:tick({ hide = true }) -- nothing shown: nothing written
    assert.are.equal(2, #text)
  end)
end)

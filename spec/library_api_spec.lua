-- The public calls libraries are built on (docs/API.md "Writing a library"):
-- atom.error, atom.is_error, atom.where, atom.checkpoint, atom.name(),
-- atom.owner with spawn's `owner`, atom.signum, atom.run_dir, atom.mkdir,
-- atom.emit, atom.repr, p:tail, p:status and p.log. atom.cluster and
-- atom.trace use nothing else below `atom`; this spec checks that too.
local support = require "support.atom_loader"
local atom = support.atom
local events = require "atom.events"

local function run(fn, ...) return atom.run(fn, ...) end

describe("library API", function()
  it("atom.error builds an error value with kind, fields and the caller's position", function()
    local e = atom.error("io", "disk gone", { cause = "full" })
    assert.is_true(atom.is_error(e))
    assert.is_true(atom.is_error(e, "io"))
    assert.is_false(atom.is_error(e, "usage"))
    assert.is_false(atom.is_error("io"))
    assert.equal("full", e.cause)
    assert.matches("^spec/library_api_spec.lua:%d+: disk gone$", tostring(e))
    local ok, got = pcall(function() error(atom.error("timeout", "slow"), 0) end)
    assert.is_false(ok)
    assert.equal("timeout", got.kind)
    local ok2, bad = pcall(atom.error, 1, "x")
    assert.is_false(ok2)
    assert.equal("usage", bad.kind)
  end)

  it("atom.where names the script's line", function()
    local line = debug.getinfo(1, "l").currentline + 1
    local w = atom.where()
    assert.equal("spec/library_api_spec.lua:" .. line, w)
  end)

  it("atom.checkpoint raises a pending cancellation and needs a task", function()
    local ok, e = pcall(atom.checkpoint, "lib:op")
    assert.is_false(ok)
    assert.equal("usage", e.kind)
    assert.matches("lib:op called outside a task", e.message, 1, true)
    run(function()
      atom.checkpoint()
      local t = atom.go(function()
        local x = 0
        while true do
          x = x + 1
          if x % 1000 == 0 then atom.checkpoint() end
          if x > 1e9 then break end
        end
      end)
      t:cancel()
      local ok3, err = pcall(t.join, t)
      assert.is_false(ok3)
      assert.equal("cancelled", err.kind)
    end)
  end)

  it("atom.name() reads the current task's name", function()
    assert.is_nil(atom.name())
    run(function()
      assert.equal("main", atom.name())
      atom.gather(function()
        assert.equal("main/1", atom.name())
        atom.name("worker")
        assert.equal("worker", atom.name())
      end)
    end)
  end)

  it("atom.owner and spawn's owner field: a process spawned for another owner outlives the caller", function()
    run(function()
      local p
      local owner
      atom.test("starts for the root", function()
        owner = nil
        local root_owner = atom.owner()
        assert.equal("starts for the root", root_owner.name)
        p = atom.spawn { "sleep", "30", owner = nil }
        assert.equal(true, p:is_running())
      end)
      -- the test owned it, so it was stopped when the test ended
      assert.equal("exited", (p:status()))
      owner = atom.owner()
      assert.equal("main", owner.name)
      atom.test("spawns for main", function()
        p = atom.spawn { "sleep", "30", owner = owner }
      end)
      assert.equal("running", (p:status()))
      p:stop()
      local ok, e = pcall(atom.spawn, { "true", owner = "main" })
      assert.is_false(ok)
      assert.equal("usage", e.kind)
      assert.matches("field 'owner' must be a task", e.message, 1, true)
    end)
  end)

  it("p:tail, p:status and p.log", function()
    run(function()
      local p = atom.spawn { "sh", "-c", "for i in 1 2 3 4 5; do echo line$i; done; exit 3" }
      assert.equal("running", (p:status()))
      p:wait()
      assert.same({ "exited", 3 }, { p:status() })
      assert.same({ "line4", "line5" }, p:tail(2))
      assert.same({ "line1", "line2", "line3", "line4", "line5" }, p:tail())
      assert.same({}, p:tail(0))
      assert.is_string(p.log)
      assert.matches("/logs/sh%-%d+%.log$", p.log)
      local k = atom.spawn { "sleep", "30" }
      k:kill("KILL")
      k:wait()
      assert.same({ "exited", nil, "KILL" }, { k:status() })
    end)
  end)

  it("atom.signum knows names, SIG-names and numbers", function()
    assert.equal(15, atom.signum("TERM"))
    assert.equal(9, atom.signum("SIGKILL"))
    assert.equal(2, atom.signum(2))
    assert.is_nil(atom.signum("NOPE"))
  end)

  it("atom.run_dir is absolute and created; atom.mkdir makes parents", function()
    run(function()
      local dir = atom.run_dir()
      assert.matches("^/", dir)
      local uv = require "luv"
      assert.equal("directory", uv.fs_stat(dir).type)
      local sub = atom.mkdir(dir .. "/a/b/c")
      assert.equal(dir .. "/a/b/c", sub)
      assert.equal("directory", uv.fs_stat(sub).type)
    end)
  end)

  it("atom.emit adds an event; atom.repr renders values on one line", function()
    local seen = {}
    events.subscribe(function(ev) seen[#seen + 1] = ev end)
    run(function() atom.emit("my_event", { n = 1 }) end)
    events.unsubscribe_all()
    local mine
    for _, ev in ipairs(seen) do if ev.type == "my_event" then mine = ev end end
    assert.is_table(mine)
    assert.equal(1, mine.n)
    assert.is_number(mine.t)
    assert.equal('{a = 1, b = {"x"}}', atom.repr({ a = 1, b = { "x" } }))
  end)

  it("cluster.lua and trace.lua use nothing below the public atom module", function()
    for _, f in ipairs { "lua/atom/cluster.lua", "lua/atom/trace.lua", "lua/atom/history.lua", "lua/atom/itf.lua" } do
      local fh = assert(io.open(f))
      local src = fh:read("a")
      fh:close()
      assert.is_nil(src:find("_atom", 1, true), f)
      for _, m in ipairs { "atom.state", "atom.events", "atom.errors", "atom.sched", "atom.proc",
        "atom.sync", "atom.assert" } do
        assert.is_nil(src:find('"' .. m .. '"', 1, true), f .. " requires " .. m)
        assert.is_nil(src:find("'" .. m .. "'", 1, true), f .. " requires " .. m)
      end
    end
  end)
end)

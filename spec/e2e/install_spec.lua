-- make install puts the binary, the module, the editor annotations and the
-- manual page under PREFIX, and the installed binary runs a scenario and
-- finds its annotations (atomlua --types-path).
local cli = require "support.cli"
local q = cli.q

local build = cli.bin:match("^(.*)/atomlua$") or "build"

describe("make install", function()
  it("installs a working binary, the module, the types and the man page", function()
    local prefix = os.tmpname()
    os.remove(prefix)
    local ok = os.execute(("make --no-print-directory install BUILD=%s PREFIX=%s >/dev/null 2>&1")
      :format(q(build), q(prefix)))
    assert.is_true(ok)
    for _, f in ipairs { "bin/atomlua", "lib/lua/5.4/atom.so", "share/atomlua/types/atom.lua",
      "share/man/man1/atomlua.1" } do
      assert.is_truthy(io.open(prefix .. "/" .. f), f)
    end
    local bin = prefix .. "/bin/atomlua"
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. q(dir))
    local f = assert(io.open(dir .. "/s.lua", "w"))
    f:write('atom.test("installed", function() atom.assert_eq(atom.sh("echo hi"), "hi") end)\n')
    f:close()
    local p = io.popen(("cd %s && %s run s.lua 2>&1"):format(q(dir), q(bin)))
    local out = p:read("a")
    assert.is_true(p:close(), out)
    assert.matches("1 passed, 0 failed", out, 1, true)
    local t = io.popen(q(bin) .. " --types-path")
    local path = t:read("l")
    t:close()
    assert.equal(require("luv").fs_realpath(prefix .. "/share/atomlua/types"), path)
    os.execute("rm -rf " .. q(prefix) .. " " .. q(dir))
  end)

  it("--types-path finds the source tree's types from a build", function()
    local r = cli.run { "--types-path" }
    assert.equal(0, r.code)
    assert.equal(require("luv").fs_realpath("types"), (r.out:gsub("\n$", "")))
  end)
end)

-- Out of memory (issue 10 item 9): wherever a Lua allocation fails for good,
-- the file ends with one "out of memory" scenario error naming it (exit 3),
-- and the reports are still written. ATOMLUA_MEM_LIMIT caps the file
-- state's allocator (src/mem.c); `ulimit -v` is the real thing.
local cli = require "support.cli"

local function run(src, prefix)
  local path = cli.scenario(src)
  local dir = os.tmpname()
  os.remove(dir)
  local out = os.tmpname()
  local cmd = ("%s %s run --workdir %s %s >%s 2>&1 </dev/null"):format(prefix, cli.q(cli.bin),
    cli.q(dir), cli.q(path), cli.q(out))
  local _, _, code = os.execute("(" .. cmd .. ")")
  local f = io.open(out)
  local text = f:read("a")
  f:close()
  os.remove(out)
  os.remove(path)
  os.execute("rm -rf " .. cli.q(dir))
  return code, text, path
end

-- Grows to about 450 MB: far past the limits below, yet bounded should a
-- limit ever be ignored.
local GROW = [[
atom.test("grows", function()
  local t = {}
  for i = 1, 4e5 do t[i] = ("x"):rep(1000) .. i end
end)
atom.test("after", function() print("AFTER RAN") end)
]]

describe("out of memory", function()
  it("ends the file with an out-of-memory scenario error naming it (a test)", function()
    local code, out, path = run(GROW, "ATOMLUA_MEM_LIMIT=64M")
    assert.equal(3, code, out)
    assert.matches("out of memory in " .. cli.plain(path), out)
    assert.matches("scenario error in " .. cli.plain(path), out)
    assert.not_matches("AFTER RAN", out, 1, true)
    assert.not_matches("in nil", out, 1, true)
    assert.not_matches("reporter error", out, 1, true)
  end)

  it("does so at the top level and inside one big string too", function()
    local code, out, path = run("local t = {} for i = 1, 4e5 do t[i] = ('x'):rep(1000) .. i end",
      "ATOMLUA_MEM_LIMIT=64M")
    assert.equal(3, code, out)
    assert.matches("out of memory in " .. cli.plain(path), out)
    code, out, path = run([[atom.test("big", function() local s = ("x"):rep(200 << 20) end)]],
      "ATOMLUA_MEM_LIMIT=64M")
    assert.equal(3, code, out)
    assert.matches("out of memory in " .. cli.plain(path), out)
  end)

  it("lets a scenario that recovers by collecting garbage pass", function()
    local code, out = run([[
atom.test("churn", function()
  local keep = {}
  for i = 1, 40 do keep[i] = ("k"):rep(1 << 20) .. i end -- 40 MiB live
  for i = 1, 300 do local s = ("g"):rep(1 << 20) .. i end -- 300 MiB of garbage
end)
]], "ATOMLUA_MEM_LIMIT=64M")
    assert.equal(0, code, out)
  end)

  it("says the same under ulimit -v, wherever the limit falls", function()
    if os.getenv("ATOMLUA_SANITIZE") then return pending("ASan needs unlimited address space") end
    -- The growing loop keeps running a moment after the first failure: it
    -- must not take the room the reports need (a limit of 200000 did).
    for _, kib in ipairs { 200000, 173000, 231000 } do
      local code, out, path = run(GROW, "ulimit -v " .. kib .. " &&")
      assert.equal(3, code, out)
      assert.matches("out of memory in " .. cli.plain(path), out)
      assert.not_matches("in nil", out, 1, true)
      assert.not_matches("reporter error", out, 1, true)
    end
  end)
end)

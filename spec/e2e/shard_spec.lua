-- --shard K/N (CI at scale): N machines given the same arguments run each
-- scenario file exactly once; bad values exit 2; an empty shard exits 0.
local cli = require "support.cli"
local netfix = require "fixtures.netfix"

local function seven_files()
  local dir = netfix.tmpdir()
  local files = {}
  -- written out of order: the shard is taken from the sorted list
  for _, i in ipairs { 5, 2, 7, 1, 4, 6, 3 } do
    local path = ("%s/f%d.lua"):format(dir, i)
    local f = assert(io.open(path, "w"))
    f:write(("atom.test('file %d', function() end)\n"):format(i))
    f:close()
    files[#files + 1] = path
  end
  return dir, files
end

local function ran(out)
  local got = {}
  for n in out:gmatch("✓ file (%d)") do got[#got + 1] = tonumber(n) end
  table.sort(got)
  return got
end

describe("--shard", function()
  it("runs each of 7 files exactly once over 3 shards", function()
    local dir, files = seven_files()
    local want = { { 1, 4, 7 }, { 2, 5 }, { 3, 6 } }
    local seen = {}
    for k = 1, 3 do
      local args = { "run", "--workdir", dir .. "/runs", "--shard", k .. "/3", "--events", dir .. "/ev" .. k }
      for _, f in ipairs(files) do args[#args + 1] = f end
      local r = cli.run(args)
      assert.equal(0, r.code, r.err)
      assert.same(want[k], ran(r.out))
      for _, n in ipairs(ran(r.out)) do
        assert.is_nil(seen[n])
        seen[n] = true
      end
      local lines = cli.lines(r.out)
      assert.equal(("%d passed, 0 failed (shard %d/3)"):format(#want[k], k), lines[#lines])
      local fh = assert(io.open(dir .. "/ev" .. k))
      local first = fh:read("l")
      fh:close()
      assert.truthy(first:find(('"shard":[%d,3]'):format(k), 1, true), first)
    end
    for n = 1, 7 do assert.is_true(seen[n], "file " .. n) end
    os.execute("rm -rf " .. cli.q(dir))
  end)

  it("rejects bad values with exit 2", function()
    for _, v in ipairs { "0/3", "4/3", "x", "1/0", "1/3/4", "-1/3", "1.5/3", "" } do
      local r = cli.run { "run", "--shard", v, "spec/fixtures/runner/seed_a.lua" }
      assert.equal(2, r.code, v)
      assert.truthy(r.err:find("--shard", 1, true), v)
    end
  end)

  it("an empty shard runs nothing and exits 0 with a note", function()
    local dir, files = seven_files()
    local r = cli.run { "run", "--workdir", dir .. "/runs", "--shard", "9/9", files[1], files[2] }
    assert.equal(0, r.code, r.err)
    assert.truthy(r.out:find("shard 9/9 selects none of the given files", 1, true))
    assert.same({}, ran(r.out))
    os.execute("rm -rf " .. cli.q(dir))
  end)
end)

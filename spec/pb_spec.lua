-- atom.grpc's protobuf codec (src/pb.c, lua/atom/pb.lua; SPEC §9 "Messages
-- <-> Lua"), tested differentially against python3-protobuf (the C++
-- implementation) on the descriptors of spec/fixtures/grpc/test.proto: the
-- same messages must give the same bytes, both ways.
package.cpath = (os.getenv("ATOMLUA_CPATH") or "./build/?.so") .. ";" .. package.cpath
local atom = require "atom"

local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec"
local PROTO = here .. "/fixtures/grpc/test.proto"
local run = atom.run
local reg, pool, desc_set

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
local function unhex(h) return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end)) end

local function sh(cmd)
  local f = assert(io.popen(cmd, "r"))
  local out = f:read("a")
  f:close()
  return out
end

local function py_decode(typ, bytes)
  return sh(("/usr/bin/python3 %s/fixtures/pb_vectors.py %s decode %s %s"):format(here, desc_set, typ, hex(bytes)))
end

setup(function()
  run(function() atom.grpc.load(PROTO) end)
  reg = atom.grpc._registry
  pool = reg.pool
  desc_set = os.tmpname()
  assert(os.execute(("protoc --include_imports --descriptor_set_out=%s -I%s/fixtures/grpc %s"):format(desc_set, here, PROTO)))
end)

teardown(function() if desc_set then os.remove(desc_set) end end)

local function T(name) return reg.types["atomtest." .. name] end

describe("protobuf codec against python3-protobuf", function()
  it("re-encodes every vector byte for byte", function()
    local n = 0
    for line in sh(("/usr/bin/python3 %s/fixtures/pb_vectors.py %s"):format(here, desc_set)):gmatch("[^\n]+") do
      local typ, h = line:match("^(%S+) ?(%x*)$")
      local msg = pool:decode(T(typ), unhex(h))
      assert.equal(h, hex(pool:encode(T(typ), msg)), typ .. " " .. h)
      n = n + 1
    end
    assert.is_true(n > 300)
  end)

  it("maps scalars and their edges to Lua values", function()
    local m = pool:decode(T("Scalars"), unhex("208080808080808080800130ffffffffffffffffff0140ffffffffffffffffff0151ffffffffffffffff61ffffffffffffff7f"))
    assert.equal(math.mininteger, m.i64)
    assert.equal(-1, m.u64) -- 2^64 - 1 keeps its 64 bits
    assert.equal(math.mininteger, m.s64)
    assert.equal(math.maxinteger, m.sf64)
    assert.equal(-1, m.fx64)
    assert.is_true(math.ult(1, m.u64))
    -- absent proto3 scalars read as their defaults; the proto3 optional is nil
    assert.equal(0, m.i32)
    assert.equal(0.0, m.d)
    assert.equal("", m.s)
    assert.equal(false, m.b)
    assert.equal("COLOR_UNSPECIFIED", m.color)
    assert.is_nil(m.maybe)
    assert.equal(math.type(m.d), "float")
  end)

  it("is read by python as written (int64, uint64, NaN, bytes, UTF-8, enums)", function()
    local b = pool:encode(T("Scalars"), { i64 = math.mininteger, u64 = -1, d = 0 / 0, by = "\0\255",
      s = "é✓", color = "GREEN", f = 1.5, maybe = 0, i32 = -7, sf32 = -2 })
    local text = py_decode("Scalars", b)
    assert.matches("i64: %-9223372036854775808", text)
    assert.matches("u64: 18446744073709551615", text)
    assert.matches("d: nan", text)
    assert.matches('by: "\\000\\377"', text, 1, true)
    assert.matches("color: GREEN", text)
    assert.matches("maybe: 0", text)
    assert.matches("i32: %-7", text)
    assert.matches("f: 1.5", text)
    local m = pool:decode(T("Scalars"), b)
    assert.is_true(m.d ~= m.d)
    assert.equal("é✓", m.s)
    assert.equal("\0\255", m.by)
  end)

  it("handles repeated, map, oneof, nested, enums and well-known types", function()
    local msg = { ints = { 1, -2, math.maxinteger }, strs = {}, inners = { { name = "a", nums = { 1, 2 } } },
      counts = { x = 1, y = 2, z = 3 }, by_id = { [7] = { name = "seven" }, [-1] = {} }, number = 5,
      nested = { name = "n" }, colors = { "RED", 9, 0 }, at = { seconds = 12, nanos = 3 } }
    local b = pool:encode(T("All"), msg)
    local m = pool:decode(T("All"), b)
    assert.same({ 1, -2, math.maxinteger }, m.ints)
    assert.same({}, m.strs)
    assert.same({ x = 1, y = 2, z = 3 }, m.counts)
    assert.equal("seven", m.by_id[7].name)
    assert.same({ name = "", nums = {} }, m.by_id[-1])
    assert.equal(5, m.number)
    assert.is_nil(m.text)
    assert.is_nil(m.inner)
    assert.same({ "RED", 9, "COLOR_UNSPECIFIED" }, m.colors) -- an unknown number stays a number
    assert.same({ seconds = 12, nanos = 3 }, m.at)
    local text = py_decode("All", b)
    assert.matches('counts { key: "z" value: 3 }', text, 1, true)
    assert.matches("number: 5", text)
    assert.matches("colors: 9", text)
    -- absent message fields are nil, empty repeated fields {}
    local e = pool:decode(T("All"), "")
    assert.is_nil(e.nested)
    assert.same({}, e.inners)
    assert.same({}, e.counts)
  end)

  it("skips unknown fields on the wire", function()
    -- field 99 (varint), field 100 (bytes), then i32 = 3
    local b = "\152\6\1" .. "\162\6\2hi" .. "\24\3"
    assert.equal(3, pool:decode(T("Scalars"), b).i32)
  end)

  it("rejects malformed bytes with a message", function()
    local ok, err = pcall(pool.decode, pool, T("Scalars"), "\114\5ab")
    assert.is_false(ok)
    assert.matches("malformed protobuf message", tostring(err))
  end)
end)

describe("protobuf encoding errors", function()
  local function err_of(f, ...)
    local ok, err = pcall(f, ...)
    assert(not ok, "expected an error")
    return err
  end

  it("names the unknown field and its path", function()
    local e = err_of(pool.encode, pool, T("All"), { nested = { nmae = "x" } })
    assert.equal("usage", e.kind)
    assert.matches("unknown field 'nmae' in atomtest.All.nested", e.message, 1, true)
    e = err_of(pool.encode, pool, T("All"), { inners = { {}, { bad = 1 } } })
    assert.matches("unknown field 'bad' in atomtest.All.inners[2]", e.message, 1, true)
  end)

  it("names the wrong type", function()
    local e = err_of(pool.encode, pool, T("Scalars"), { i32 = "1" })
    assert.equal("usage", e.kind)
    assert.matches("field 'i32' expects int32, got string in atomtest.Scalars", e.message, 1, true)
    e = err_of(pool.encode, pool, T("Scalars"), { i64 = 1.5 })
    assert.matches("field 'i64' expects int64, got float", e.message, 1, true)
    e = err_of(pool.encode, pool, T("Scalars"), { i32 = 2 ^ 31 | 0 })
    assert.matches("out of range for int32", e.message, 1, true)
    e = err_of(pool.encode, pool, T("Scalars"), { s = "\255" })
    assert.matches("not valid UTF-8", e.message, 1, true)
    e = err_of(pool.encode, pool, T("Scalars"), { color = "BLUE" })
    assert.matches("unknown value 'BLUE' of enum atomtest.Color", e.message, 1, true)
    e = err_of(pool.encode, pool, T("All"), { text = "a", number = 1 })
    assert.matches("fields 'text' and 'number' of one oneof are both set", e.message, 1, true)
  end)
end)

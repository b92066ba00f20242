-- atom.assert_eq (SPEC §2): deep comparison, first differing key path, cycles,
-- __eq objects (ITF sets and maps), integers equal to floats; and the renderer.
-- Not ./lua/?/init.lua: other specs load the real `atom` from build/atom.so.
package.path = "./lua/?.lua;" .. package.path

-- atom.json is the real C module: spec/support/helper.lua loads build/atom.so
-- before any spec, and its package.preload has every embedded module.

local A = require("atom.assert")
local itf = require("atom.itf")
local errors = require("atom.errors")
local json = require("atom.json")

-- The assert error raised by assert_eq(...); fails the spec if none is raised.
local function failure(...)
  local ok, err = pcall(A.assert_eq, ...)
  assert.is_false(ok, "assert_eq did not fail")
  assert.is_true(errors.is(err, "assert"), "not an assert error: " .. tostring(err))
  return err
end

local function passes(...)
  local ok, err = pcall(A.assert_eq, ...)
  assert.is_true(ok, tostring(err))
end

describe("atom.assert_eq", function()
  it("passes on equal scalars and compares numbers with ==", function()
    passes(1, 1)
    passes(1, 1.0)
    passes(-0.0, 0)
    passes("a", "a")
    passes(true, true)
    passes(nil, nil)
    passes(json.null, json.null)
  end)

  it("reports a root difference without a path", function()
    assert.equal("expected 5, got 4", failure(4, 5).message)
    assert.equal('expected "b", got "a"', failure("a", "b").message)
    assert.equal("expected 1, got \"1\"", failure("1", 1).message)
    assert.equal("expected true, got nil", failure(nil, true).message)
    assert.equal("expected 0.3, got 0.30000000000000004", failure(0.1 + 0.2, 0.3).message)
    assert.equal("expected 2.0, got 2.5", failure(2.5, 2.0).message)
    assert.equal("expected null, got false", failure(false, json.null).message)
  end)

  it("gives the first differing key path", function()
    local err = failure({ result = { height = 4, hash = "x" } }, { result = { height = 5, hash = "x" } })
    assert.equal("at .result.height: expected 5, got 4", err.message)
    assert.equal(".result.height", err.path)
    assert.equal(4, err.actual)
    assert.equal(5, err.expected)
  end)

  it("reports missing and extra keys as nil", function()
    assert.equal("at .x: expected 1, got nil", failure({}, { x = 1 }).message)
    assert.equal("at .y: expected nil, got 2", failure({ x = 1, y = 2 }, { x = 1 }).message)
    assert.equal("at [3]: expected nil, got 3", failure({ 1, 2, 3 }, { 1, 2 }).message)
  end)

  it("picks the first difference in sorted key order, deterministically", function()
    local actual = { b = 1, a = 1, [2] = "x", [10] = "y", c = { z = 1, d = 1 } }
    local expected = { b = 2, a = 2, [2] = "X", [10] = "Y", c = { z = 2, d = 2 } }
    assert.equal('at [2]: expected "X", got "x"', failure(actual, expected).message)
    actual[2], actual[10] = "X", "Y"
    assert.equal("at .a: expected 2, got 1", failure(actual, expected).message)
    actual.a, actual.b = 2, 2
    assert.equal("at .c.d: expected 2, got 1", failure(actual, expected).message)
  end)

  it("writes awkward keys readably", function()
    assert.equal('at ["bank::balances"].alice: expected 1, got 2',
      failure({ ["bank::balances"] = { alice = 2 } }, { ["bank::balances"] = { alice = 1 } }).message)
    assert.equal("at .list[2][1]: expected 3, got 4",
      failure({ list = { {}, { 4 } } }, { list = { {}, { 3 } } }).message)
    assert.equal("at [true]: expected 1, got nil", failure({}, { [true] = 1 }).message)
    assert.equal("at [1.5]: expected 1, got nil", failure({}, { [1.5] = 1 }).message)
  end)

  it("compares integer and float table values and keys", function()
    passes({ 1, 2, { 3 } }, { 1.0, 2.0, { 3.0 } })
    passes({ [1.0] = "a" }, { "a" })
  end)

  it("prefixes the message", function()
    assert.equal("balance of alice: expected 5, got 4", failure(4, 5, "balance of alice").message)
    assert.equal("after transfer: at .a: expected 5, got 4", failure({ a = 4 }, { a = 5 }, "after transfer").message)
  end)

  it("ignores metatables of plain tables", function()
    local mt = { __index = function() return 1 end }
    passes(setmetatable({ a = 1 }, mt), { a = 1 })
    assert.equal("at .b: expected 1, got nil", failure(setmetatable({ a = 1 }, mt), { a = 1, b = 1 }).message)
    passes(setmetatable({}, { __metatable = "locked" }), {})
  end)

  it("uses __eq for objects that define it", function()
    local eq_mt = { __eq = function(a, b) return a.id == b.id end }
    passes(setmetatable({ id = 1, junk = 1 }, eq_mt), setmetatable({ id = 1, junk = 2 }, eq_mt))
    failure(setmetatable({ id = 1 }, eq_mt), setmetatable({ id = 2 }, eq_mt))
  end)

  it("compares ITF sets and maps by value", function()
    passes({ s = itf.set({ 1, 2 }) }, { s = itf.set({ 2.0, 1 }) })
    passes(itf.map({ { "a", 1 }, { "b", 2 } }), itf.map({ { "b", 2 }, { "a", 1.0 } }))
    local err = failure({ s = itf.set({ 1, 2 }) }, { s = itf.set({ 1, 3 }) })
    assert.equal("at .s: expected Set(1, 3), got Set(1, 2)", err.message)
    err = failure({ s = itf.set({ 1 }) }, { s = { 1 } })
    assert.equal("at .s: expected {1}, got Set(1)", err.message)
  end)

  it("points into differing ITF maps", function()
    local actual = itf.map({ { "alice", 90 }, { "bob", 110 } })
    local expected = itf.map({ { "alice", 100 }, { "bob", 100 } })
    assert.equal('at .balances:get("alice"): expected 100, got 90',
      failure({ balances = actual }, { balances = expected }).message)
    assert.equal('at :get("carol"): expected nil, got 1',
      failure(itf.map({ { "alice", 1 }, { "carol", 1 } }), itf.map({ { "alice", 1 } })).message)
    assert.equal('at :get("bob"): expected 1, got nil',
      failure(itf.map({ { "alice", 1 } }), itf.map({ { "alice", 1 }, { "bob", 1 } })).message)
  end)

  it("handles cycles", function()
    local a, b = { x = 1 }, { x = 1 }
    a.self, b.self = a, b
    passes(a, b)
    local c, d = { x = 1 }, { x = 2 }
    c.self, d.self = c, d
    assert.equal("at .x: expected 2, got 1", failure(c, d).message)
    -- cycles of different lengths that unroll to the same infinite tree
    local p = {}
    p.next = p
    local q1, q2 = {}, {}
    q1.next, q2.next = q2, q1
    passes(p, q1)
    local r1, r2 = { v = 1 }, { v = 1 }
    r1.next, r2.next = r2, { v = 2 }
    r2.next.next = r1
    local s = { v = 1 }
    s.next = s
    assert.equal("at .next.next.v: expected 1, got 2", failure(r1, s).message)
  end)

  it("renders tables compactly and cuts long values", function()
    local err = failure({ t = { 1, 2, { a = "x" }, n = json.null } }, { t = 5 })
    assert.equal('at .t: expected 5, got {1, 2, {a = "x"}, n = null}', err.message)
    local long = {}
    for i = 1, 200 do long[i] = i end
    err = failure(long, 1)
    assert.is_true(#err.message < 260, err.message)
    assert.matches("%.%.%.$", err.message)
  end)

  it("checks its arguments", function()
    local ok, err = pcall(A.assert_eq, 1)
    assert.is_false(ok)
    assert.is_true(errors.is(err, "usage"))
    assert.equal("bad argument #2 to 'assert_eq' (value expected)", err.message)
    ok, err = pcall(A.assert_eq, 1, 1, 5)
    assert.is_false(ok)
    assert.equal("bad argument #3 to 'assert_eq' (string expected, got number)", err.message)
  end)
end)

describe("atom.assert.render", function()
  local R = A.render
  it("renders scalars", function()
    assert.equal("nil", R(nil))
    assert.equal("42", R(42))
    assert.equal("1.0", R(1.0))
    assert.equal("-1.5e+300", R(-1.5e300))
    assert.equal("inf", R(math.huge))
    assert.equal("nan", R(0 / 0))
    assert.equal('"a\\nb\\"c"', R('a\nb"c'))
    assert.equal("null", R(json.null))
    assert.equal("true", R(true))
  end)

  it("renders tables with sorted keys and cycles", function()
    assert.equal('{1, 2, b = 1, c = {}, ["d e"] = 2}', R({ 1, 2, c = {}, b = 1, ["d e"] = 2 }))
    local t = {}
    t.me = t
    assert.equal("{me = <cycle>}", R(t))
  end)

  it("renders ITF sets and maps in document order", function()
    assert.equal('Set("b", "a")', R(itf.set({ "b", "a" })))
    assert.equal('Map("bob" -> 1, "alice" -> Set())', R(itf.map({ { "bob", 1 }, { "alice", itf.set({}) } })))
    assert.equal('Set(1)', tostring(itf.set({ 1 })))
  end)

  it("respects the limit", function()
    local s = R(string.rep("x", 1000), 50)
    assert.equal(53, #s)
    assert.matches("%.%.%.$", s)
  end)

  it("uses __tostring of objects such as errors", function()
    local e = errors.new("io", "boom", { where = "a.lua:3" })
    assert.equal("a.lua:3: boom", R(e))
  end)
end)

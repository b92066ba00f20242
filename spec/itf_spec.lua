-- atom.itf: decoding every ITF encoding, value equality, read-only objects and
-- malformed documents (SPEC §6).
-- Not ./lua/?/init.lua: other specs load the real `atom` from build/atom.so.
package.path = "./lua/?.lua;" .. package.path

-- atom.json is the real C module: spec/support/helper.lua loads build/atom.so
-- before any spec, and its package.preload has every embedded module.

local itf = require("atom.itf")
local errors = require("atom.errors")
local json = require("atom.json")

-- A trace document with the given states (JSON text of each) and vars.
local function doc(states, vars)
  return ('{"#meta":{"format":"ITF","source":"t.qnt"},"vars":[%s],"states":[%s]}'):format(
    vars or '"x"', table.concat(states, ","))
end

-- The value of variable x in a one-state trace.
local function x(json_text)
  return itf.decode(doc({ '{"#meta":{"index":0},"x":' .. json_text .. "}" })).states[1].x
end

-- Decoding `text` raises an itf error whose message contains `needle`.
local function malformed(text, needle)
  local ok, err = pcall(itf.decode, text)
  assert.is_false(ok, "expected an error for " .. text)
  assert.is_true(errors.is(err, "itf"), "not an itf error: " .. tostring(err))
  assert.is_truthy(err.message:find(needle, 1, true), ("%q not in %q"):format(needle, err.message))
  return err
end

describe("atom.itf.decode", function()
  it("reads meta, vars, params, loop and 1-based states", function()
    local t = itf.decode([=[{
      "#meta": {"format": "ITF", "source": "bank.qnt", "timestamp": 1700000000000},
      "params": ["N"], "vars": ["x", "y"], "loop": 1,
      "states": [
        {"#meta": {"index": 0}, "x": 1, "y": "a"},
        {"#meta": {"index": 1}, "x": 2, "y": "b"}
      ]}]=])
    assert.same({ format = "ITF", source = "bank.qnt", timestamp = 1700000000000 }, t.meta)
    assert.same({ "x", "y" }, t.vars)
    assert.same({ "N" }, t.params)
    assert.equal(1, t.loop)
    assert.equal(2, #t.states)
    assert.equal(0, t.states[1].meta.index)
    assert.equal(1, t.states[2].meta.index)
    assert.equal(2, t.states[2].x)
    assert.equal("b", t.states[2].y)
    assert.is_nil(t.states[1]["#meta"])
  end)

  it("gives empty meta tables and no loop or params when absent", function()
    local t = itf.decode('{"vars":[],"states":[{}]}')
    assert.same({}, t.meta)
    assert.same({}, t.states[1].meta)
    assert.is_nil(t.loop)
    assert.is_nil(t.params)
    assert.same({}, t.vars)
  end)

  it("accepts a trace with no states", function()
    assert.same({}, itf.decode('{"vars":["x"],"states":[]}').states)
  end)

  it("keeps strings, booleans and plain numbers", function()
    assert.equal("hi", x('"hi"'))
    assert.equal(true, x("true"))
    assert.equal(false, x("false"))
    assert.equal(42, x("42"))
    assert.equal("integer", math.type(x("42")))
    assert.equal(-7, x("-7"))
  end)

  it("decodes Quint's qualified variable names and mbt fields as keys", function()
    local t = itf.decode([=[{"vars":["bank::balances","mbt::actionTaken","mbt::actionTaken"],
      "states":[{"#meta":{"index":0},"bank::balances":{"#map":[]},"mbt::actionTaken":"init",
      "mbt::nondetPicks":{"amount":{"tag":"None","value":{"#tup":[]}}}}]}]=])
    local s = t.states[1]
    assert.equal(0, s["bank::balances"]:size())
    assert.equal("init", s["mbt::actionTaken"])
    assert.same({ tag = "None", value = {} }, s["mbt::nondetPicks"].amount)
  end)

  describe("#bigint", function()
    it("becomes an integer when it fits", function()
      assert.equal(0, x('{"#bigint":"0"}'))
      assert.equal(0, x('{"#bigint":"-0"}'))
      assert.equal(100, x('{"#bigint":"100"}'))
      assert.equal(-12, x('{"#bigint":"-0012"}'))
      assert.equal("integer", math.type(x('{"#bigint":"100"}')))
    end)

    it("handles the 64-bit limits exactly", function()
      assert.equal(math.maxinteger, x('{"#bigint":"9223372036854775807"}'))
      assert.equal("integer", math.type(x('{"#bigint":"9223372036854775807"}')))
      assert.equal(math.mininteger, x('{"#bigint":"-9223372036854775808"}'))
      assert.equal("integer", math.type(x('{"#bigint":"-9223372036854775808"}')))
      assert.equal(-math.maxinteger, x('{"#bigint":"-9223372036854775807"}'))
      assert.equal(math.maxinteger, x('{"#bigint":"0009223372036854775807"}'))
    end)

    it("stays a digit string beyond 64 bits", function()
      assert.equal("9223372036854775808", x('{"#bigint":"9223372036854775808"}'))
      assert.equal("-9223372036854775809", x('{"#bigint":"-9223372036854775809"}'))
      assert.equal("10000000000000000000", x('{"#bigint":"10000000000000000000"}'))
      local big = "57896044618658097711785492504343953926634992332820282019728792003956564819967"
      assert.equal(big, x('{"#bigint":"' .. big .. '"}'))
      assert.equal("-" .. big, x('{"#bigint":"-000' .. big .. '"}'))
    end)

    it("rejects what is not a decimal integer", function()
      for _, bad in ipairs({ '""', '"-"', '"+5"', '" 5"', '"5 "', '"1.5"', '"1e3"', '"0x10"', '"--1"' }) do
        malformed(doc({ '{"x":{"#bigint":' .. bad .. "}}" }), "states[1].x.#bigint")
      end
      malformed(doc({ '{"x":{"#bigint":5}}' }), "#bigint must be a string")
    end)
  end)

  describe("#tup and lists", function()
    it("decodes tuples and lists as lists, recursively", function()
      assert.same({ 1, "a", true }, x('{"#tup":[{"#bigint":"1"},"a",true]}'))
      assert.same({}, x('{"#tup":[]}'))
      assert.same({ { 1, 2 }, { 3 } }, x('[[{"#bigint":"1"},2],[3]]'))
    end)

    it("rejects a #tup that is not an array", function()
      malformed(doc({ '{"x":{"#tup":{"a":1}}}' }), "states[1].x.#tup: #tup must be an array")
    end)
  end)

  it("keeps #unserializable as its string", function()
    assert.equal("Int", x('{"#unserializable":"Int"}'))
    malformed(doc({ '{"x":{"#unserializable":1}}' }), "#unserializable must be a string")
  end)

  it("keeps records and variants as plain tables", function()
    local r = x('{"name":"alice","age":{"#bigint":"30"},"tags":{"#set":["a"]}}')
    assert.equal("alice", r.name)
    assert.equal(30, r.age)
    assert.is_nil(getmetatable(r))
    assert.is_true(r.tags:has("a"))
    assert.same({ tag = "Some", value = 40 }, x('{"tag":"Some","value":{"#bigint":"40"}}'))
  end)

  describe("#set", function()
    it("has has, size, #, iter and pairs in document order", function()
      local s = x('{"#set":["c","a",{"#bigint":"2"},"b"]}')
      assert.is_true(itf.is_set(s))
      assert.equal(4, s:size())
      assert.equal(4, #s)
      assert.is_true(s:has("a"))
      assert.is_true(s:has(2))
      assert.is_true(s:has(2.0))
      assert.is_false(s:has("z"))
      assert.is_false(s:has(nil))
      local seen = {}
      for v in s:iter() do seen[#seen + 1] = v end
      assert.same({ "c", "a", 2, "b" }, seen)
      local via_pairs = {}
      for v, present in pairs(s) do
        assert.is_true(present)
        via_pairs[#via_pairs + 1] = v
      end
      assert.same(seen, via_pairs)
      assert.same(seen, s:list())
    end)

    it("holds false as a member", function()
      local s = x('{"#set":[false,true]}')
      local got = {}
      for v in pairs(s) do got[#got + 1] = v end
      assert.same({ false, true }, got)
      assert.is_true(s:has(false))
    end)

    it("finds composite members by value", function()
      local s = x([=[{"#set":[
        {"#tup":["alice",{"#bigint":"1"}]},
        {"to":"bob","amount":{"#bigint":"5"}},
        {"#set":[1,2]},
        {"#map":[["k",[1,2]]]}
      ]}]=])
      assert.is_true(s:has({ "alice", 1 }))
      assert.is_true(s:has({ "alice", 1.0 }))
      assert.is_false(s:has({ 1, "alice" }))
      assert.is_true(s:has({ amount = 5, to = "bob" }))
      assert.is_false(s:has({ amount = 5 }))
      assert.is_true(s:has(itf.set({ 2, 1 })))
      assert.is_false(s:has({ 1, 2 })) -- a list is not a set
      assert.is_true(s:has(itf.map({ { "k", { 1, 2 } } })))
      assert.is_true(s:has(x('{"#set":[2,1]}')))
    end)

    it("compares with == by value, ignoring order", function()
      local a = x('{"#set":[1,2,3]}')
      local b = x('{"#set":[3,{"#bigint":"2"},1]}')
      local c = x('{"#set":[1,2]}')
      assert.is_true(a == b)
      assert.is_false(a == c)
      assert.is_true(x('{"#set":[]}') == itf.set({}))
      assert.is_false(a == { 1, 2, 3 }) -- a set is not a list
      assert.is_false(x('{"#set":[]}') == itf.map({})) -- nor a map
      assert.is_true(itf.set({ 1.0, 2 }) == itf.set({ 2, 1 }))
      assert.is_true(x('{"#set":[{"#set":[1]},{"#set":[]}]}') == itf.set({ itf.set({}), itf.set({ 1 }) }))
    end)

    it("is read-only", function()
      local s = x('{"#set":[1]}')
      local ok, err = pcall(function() s.extra = 1 end)
      assert.is_false(ok)
      assert.is_true(errors.is(err, "usage"))
      assert.matches("read%-only", err.message)
      ok = pcall(function() s[2] = 5 end)
      assert.is_false(ok)
      assert.equal(1, #s)
    end)

    it("rejects a #set that is not an array, and duplicates", function()
      malformed(doc({ '{"x":{"#set":{"a":1}}}' }), "states[1].x.#set: #set must be an array")
      malformed(doc({ '{"x":{"#set":"abc"}}' }), "#set must be an array")
      malformed(doc({ '{"x":{"#set":[1,{"#bigint":"1"}]}}' }), "states[1].x.#set[2]: duplicate set member 1")
    end)
  end)

  describe("#map", function()
    it("has get, has, size, #, iter and pairs in document order", function()
      local m = x('{"#map":[["bob",{"#bigint":"5"}],["alice",{"#bigint":"100"}]]}')
      assert.is_true(itf.is_map(m))
      assert.equal(5, m:get("bob"))
      assert.equal(100, m:get("alice"))
      assert.is_nil(m:get("carol"))
      assert.is_true(m:has("bob"))
      assert.is_false(m:has("carol"))
      assert.equal(2, m:size())
      assert.equal(2, #m)
      local keys, vals = {}, {}
      for k, v in m:iter() do keys[#keys + 1], vals[#vals + 1] = k, v end
      assert.same({ "bob", "alice" }, keys)
      assert.same({ 5, 100 }, vals)
      local pk, pv = {}, {}
      for k, v in pairs(m) do pk[#pk + 1], pv[#pv + 1] = k, v end
      assert.same(keys, pk)
      assert.same(vals, pv)
    end)

    it("looks up composite keys by value", function()
      local m = x([=[{"#map":[
        [{"#tup":["alice","atom"]}, {"#bigint":"7"}],
        [{"denom":"muon","owner":"bob"}, 8],
        [{"#set":["a","b"]}, 9],
        [{"#map":[[1,"x"]]}, 10],
        [{"#bigint":"3"}, 11]
      ]}]=])
      assert.equal(7, m:get({ "alice", "atom" }))
      assert.equal(8, m:get({ owner = "bob", denom = "muon" }))
      assert.equal(9, m:get(itf.set({ "b", "a" })))
      assert.equal(10, m:get(itf.map({ { 1.0, "x" } })))
      assert.equal(11, m:get(3.0))
      assert.is_nil(m:get({ "atom", "alice" }))
    end)

    it("compares with == by value, ignoring entry order", function()
      local a = x('{"#map":[["a",1],["b",{"#set":[1,2]}]]}')
      local b = x('{"#map":[["b",{"#set":[2,1]}],["a",{"#bigint":"1"}]]}')
      assert.is_true(a == b)
      assert.is_false(a == x('{"#map":[["a",1],["b",{"#set":[1]}]]}'))
      assert.is_false(a == x('{"#map":[["a",1]]}'))
      assert.is_false(a == x('{"#map":[["a",1],["c",{"#set":[1,2]}]]}'))
      assert.is_true(itf.map({ { "a", 1 } }) == itf.map({ { "a", 1.0 } }))
      assert.is_false(itf.map({ { "a", 1 } }) == { a = 1 })
    end)

    it("is read-only", function()
      local m = x('{"#map":[["a",1]]}')
      local ok, err = pcall(function() m.a = 2 end)
      assert.is_false(ok)
      assert.is_true(errors.is(err, "usage"))
      assert.is_nil(rawget(m, "a"))
      assert.equal(1, m:get("a"))
    end)

    it("rejects entries that are not pairs, and duplicate keys", function()
      malformed(doc({ '{"x":{"#map":[["a",1,2]]}}' }), "states[1].x.#map[1]: #map entry must be a [key, value] pair")
      malformed(doc({ '{"x":{"#map":[["a"]]}}' }), "states[1].x.#map[1]")
      malformed(doc({ '{"x":{"#map":[["a",1],"b"]}}' }), "states[1].x.#map[2]: #map entry")
      malformed(doc({ '{"x":{"#map":[{"k":"a","v":1}]}}' }), "#map entry must be a [key, value] pair")
      malformed(doc({ '{"x":{"#map":{"a":1}}}' }), "#map must be an array")
      malformed(doc({ '{"x":{"#map":[["a",1],["a",2]]}}' }), 'states[1].x.#map[2]: duplicate map key "a"')
      malformed(doc({ '{"x":{"#map":[["a",{"#bigint":"x"}]]}}' }), "states[1].x.#map[1][2].#bigint")
    end)
  end)

  describe("itf.equal", function()
    it("compares structurally, with integers equal to floats", function()
      assert.is_true(itf.equal(1, 1.0))
      assert.is_false(itf.equal(1, "1"))
      assert.is_true(itf.equal({ a = { 1, 2 } }, { a = { 1.0, 2 } }))
      assert.is_false(itf.equal({ a = { 1, 2 } }, { a = { 1, 2, 3 } }))
      assert.is_false(itf.equal({ 1 }, { 1, nil, 3 }))
      assert.is_true(itf.equal(itf.set({ 1, 2 }), itf.set({ 2, 1 })))
      assert.is_true(itf.equal({ s = itf.set({ 1 }) }, { s = itf.set({ 1.0 }) }))
      assert.is_false(itf.equal({ s = itf.set({ 1 }) }, { s = { 1 } }))
      assert.is_true(itf.equal(json.null, json.null))
      assert.is_false(itf.equal(2.0 ^ 53, (1 << 53) + 1))
      assert.is_true(itf.equal(2.0 ^ 53, 1 << 53))
    end)

    it("refuses cyclic probes with a usage error", function()
      local t = {}
      t.self = t
      local ok, err = pcall(itf.equal, t, { self = {} })
      assert.is_false(ok)
      assert.is_true(errors.is(err, "usage"))
    end)
  end)

  describe("malformed documents", function()
    it("wraps JSON syntax errors", function()
      local err = malformed('{"vars": [', "invalid JSON")
      assert.is_true(errors.is(err.cause, "json"))
      malformed("", "invalid JSON")
    end)

    it("rejects a document that is not an object", function()
      malformed("[1,2]", "a trace must be a JSON object, got an array")
      malformed('"trace"', "a trace must be a JSON object, got a string")
    end)

    it("requires states, as an array of objects", function()
      malformed('{"vars":["x"]}', 'missing "states"')
      malformed('{"vars":["x"],"states":{"a":1}}', "states: must be an array")
      malformed('{"vars":["x"],"states":[{"x":1},[1,2]]}', "states[2]: a state must be an object, got an array")
      malformed('{"vars":["x"],"states":[{"x":1},5]}', "states[2]: a state must be an object, got a number")
    end)

    it("requires vars as a list of strings", function()
      malformed('{"states":[]}', 'missing "vars"')
      malformed('{"vars":"x","states":[]}', "vars: must be a list of strings")
      malformed('{"vars":{"a":"x"},"states":[]}', "vars: must be a list of strings")
      malformed('{"vars":["x",1],"states":[]}', "vars[2]: must be a string")
      malformed('{"vars":[],"params":"N","states":[]}', "params: must be a list of strings")
    end)

    it("checks loop and #meta", function()
      malformed('{"vars":[],"loop":-1,"states":[]}', "loop: must be a non-negative integer")
      malformed('{"vars":[],"loop":"1","states":[]}', "loop: must be a non-negative integer")
      malformed('{"#meta":[1],"vars":[],"states":[]}', "#meta: must be an object")
      malformed('{"vars":[],"states":[{"#meta":5}]}', "states[1].#meta: must be an object")
    end)

    it("rejects a model variable named meta", function()
      local err = malformed('{"vars":["meta"],"states":[]}', 'vars[1]: a model variable named "meta"')
      assert.equal("vars[1]", err.location)
      malformed('{"vars":["x"],"states":[{"#meta":{"index":0},"x":1},{"meta":2}]}',
        'states[2]: a model variable named "meta"')
    end)

    it("names the path inside the document", function()
      local err = malformed(doc({ '{"x":1}', '{"x":2}',
        '{"x":{"balances":{"#map":[["alice",{"#bigint":"1"}],["bob"]]}}}' }), "states[3].x.balances.#map[2]")
      assert.equal("states[3].x.balances.#map[2]", err.location)
      malformed(doc({ '{"x":[1,[2,{"#bigint":"z"}]]}' }), "states[1].x[2][2].#bigint")
      malformed(doc({ '{"x":{"a b":{"#bigint":"z"}}}' }), 'states[1].x["a b"].#bigint')
    end)

    it("rejects unknown or mixed # encodings and null", function()
      malformed(doc({ '{"x":{"#foo":1}}' }), 'states[1].x: unknown encoding "#foo"')
      malformed(doc({ '{"x":{"#set":[],"#map":[]}}' }), "more than one #-encoding")
      malformed(doc({ '{"x":{"#set":[],"y":1}}' }), "#set object must have no other fields")
      malformed(doc({ '{"x":null}' }), "states[1].x: null is not an ITF value")
      malformed(doc({ '{"#other":1}' }), 'states[1]: unknown field "#other"')
    end)

    it("gives itf errors a position-free message", function()
      local ok, err = pcall(itf.decode, '{"vars":[]}')
      assert.is_false(ok)
      assert.equal('missing "states"', err.message)
    end)
  end)
end)

describe("atom.itf.load", function()
  local path = os.tmpname()
  after_each(function() os.remove(path) end)

  local function write(text)
    local f = assert(io.open(path, "wb"))
    f:write(text)
    f:close()
  end

  it("reads a file", function()
    write(doc({ '{"#meta":{"index":0},"x":{"#bigint":"3"}}' }))
    local t = itf.load(path)
    assert.equal(3, t.states[1].x)
  end)

  it("prefixes errors with the file path", function()
    write(doc({ '{"x":{"#set":5}}' }))
    local ok, err = pcall(itf.load, path)
    assert.is_false(ok)
    assert.is_true(errors.is(err, "itf"))
    assert.equal(path .. ": states[1].x.#set: #set must be an array, got a number", err.message)
    assert.equal(path, err.trace_file)
  end)

  it("raises itf for a missing file", function()
    local ok, err = pcall(itf.load, "/nonexistent/t.itf.json")
    assert.is_false(ok)
    assert.is_true(errors.is(err, "itf"))
    assert.matches("/nonexistent/t.itf.json", err.message, 1, true)
  end)

  it("loads the bank example traces", function()
    local dir = "scenarios/bank/traces/"
    for _, name in ipairs({ "quint_0.itf.json", "quint_1.itf.json", "quint_2.itf.json",
      "apalache_1.itf.json" }) do
      local t = itf.load(dir .. name)
      assert.is_true(#t.states > 1, name)
      for i, s in ipairs(t.states) do assert.equal(i - 1, s.meta.index) end
    end
  end)
end)

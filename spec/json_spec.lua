-- atom.json (SPEC §5 "JSON"): the C encoder and decoder in src/json.c.
package.cpath = "./build/?.so;" .. package.cpath
local atom = require "atom"
local json = atom.json

-- The error raised by f(...), which must fail.
local function err_of(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  return err
end

local function json_error(f, ...)
  local err = err_of(f, ...)
  assert.equal("table", type(err))
  assert.equal("json", err.kind)
  return err
end

describe("atom.json.null", function()
  it("is the light userdata NULL shared with lua-cjson", function()
    assert.equal("userdata", type(json.null))
    local ok, cjson = pcall(require, "cjson")
    if ok then assert.equal(cjson.null, json.null) end
    assert.equal("null", json.encode(json.null))
    assert.equal(json.null, json.decode("null"))
  end)

  it("survives nesting both ways", function()
    assert.equal('{"a":{"b":null}}', json.encode({ a = { b = json.null } }))
    assert.equal('[null,[null]]', json.encode({ json.null, { json.null } }))
    local v = json.decode('{"a":[null,{"b":null}]}')
    assert.equal(json.null, v.a[1])
    assert.equal(json.null, v.a[2].b)
    assert.equal(2, #v.a) -- null is a value, so decoded arrays have no holes
  end)
end)

describe("atom.json.encode", function()
  it("encodes scalars", function()
    assert.equal("true", json.encode(true))
    assert.equal("false", json.encode(false))
    assert.equal("null", json.encode(nil))
    assert.equal("42", json.encode(42))
    assert.equal("-7", json.encode(-7))
    assert.equal('"hi"', json.encode("hi"))
  end)

  it("escapes strings as JSON requires and leaves '/' alone", function()
    assert.equal([["a\"b\\c/d"]], json.encode('a"b\\c/d'))
    assert.equal([["\n\r\t\b\f"]], json.encode("\n\r\t\b\f"))
    assert.equal([["\u0000\u0001\u001f"]], json.encode("\0\1\31"))
    assert.equal('"\127"', json.encode("\127"))
    assert.equal('"é€😀"', json.encode("é€😀"))
  end)

  it("encodes an empty table as {} and a marked one as []", function()
    assert.equal("{}", json.encode({}))
    local t = {}
    assert.equal(t, json.array(t))
    assert.is_nil(getmetatable(t))
    assert.equal("[]", json.encode(t))
    assert.equal("[]", json.encode(json.array({})))
    assert.equal('{"params":[]}', json.encode({ params = json.array({}) }))
  end)

  it("encodes a marked table as an array of its integer keys", function()
    assert.equal("[1,2]", json.encode(json.array({ 1, 2, x = 3 })))
    assert.equal("[null,2]", json.encode(json.array({ [2] = 2 })))
  end)

  it("encodes sequences as arrays, with null in the holes", function()
    assert.equal("[1,2,3]", json.encode({ 1, 2, 3 }))
    assert.equal("[1,null,3]", json.encode({ 1, nil, 3 }))
    assert.equal("[null,null,3]", json.encode({ [3] = 3 }))
    assert.equal('[[],{"a":[1]}]', json.encode({ json.array({}), { a = { 1 } } }))
  end)

  it("refuses an excessively sparse array instead of printing millions of nulls", function()
    local err = json_error(json.encode, { [1e9] = 1 })
    assert.matches("sparse", err.message)
  end)

  it("encodes other tables as objects with string keys", function()
    assert.equal('{"a":1}', json.encode({ a = 1 }))
    assert.equal('{"1.5":1}', json.encode({ [1.5] = 1 }))
    assert.equal('{"-1":1}', json.encode({ [-1] = 1 }))
    assert.equal('{"0":1}', json.encode({ [0] = 1 }))
    assert.same({ ["1"] = "a", ["2"] = "b", x = true }, json.decode(json.encode({ "a", "b", x = true })))
  end)

  it("encodes integers exactly, all 64 bits", function()
    assert.equal("9007199254740992", json.encode(1 << 53))
    assert.equal("-9007199254740992", json.encode(-(1 << 53)))
    assert.equal("9007199254740993", json.encode((1 << 53) + 1))
    assert.equal("9223372036854775807", json.encode(math.maxinteger))
    assert.equal("-9223372036854775808", json.encode(math.mininteger))
    assert.equal("[0,-1]", json.encode({ 0, -1 }))
  end)

  it("encodes floats with 17 significant digits, so they read back exactly", function()
    assert.equal("0.10000000000000001", json.encode(0.1))
    for _, x in ipairs({ 0.1, 1 / 3, -2 / 3, 2 ^ 51 + 0.5, 2 ^ 52 - 0.5, math.pi, 1e300, -1e-300, 5e-324,
                         2.2250738585072014e-308, 1.7976931348623157e308, 123456789.12345679,
                         2 ^ 63, -(2 ^ 70), 1e21, 0.5 }) do
      local back = json.decode(json.encode(x))
      assert.equal(x, back)
      assert.equal("float", math.type(back))
    end
  end)

  it("writes integral floats without a fraction (they decode as integers)", function()
    assert.equal("2", json.encode(2.0))
    assert.equal("-0", json.encode(-0.0))
    assert.equal("1.0000000000000001e+300", json.encode(1e300))
    assert.equal(2, json.decode(json.encode(2.0)))
    assert.equal("integer", math.type(json.decode(json.encode(2.0))))
  end)

  it("raises on NaN and infinities, naming the key path", function()
    assert.equal("encode: cannot encode NaN at .x", json_error(json.encode, { x = 0 / 0 }).message)
    assert.equal("encode: cannot encode inf at .a[2]", json_error(json.encode, { a = { 1, math.huge } }).message)
    assert.equal("encode: cannot encode -inf at (root)", json_error(json.encode, -math.huge).message)
  end)

  it("raises on invalid UTF-8, naming the key path", function()
    local err = json_error(json.encode, { method = "m", params = { "ok", "\xff" } })
    assert.equal("encode: invalid UTF-8 at .params[2]", err.message)
    assert.equal(".params[2]", err.path)
    assert.equal("encode: invalid UTF-8 at (root)", json_error(json.encode, "\xc3").message)
    assert.equal('encode: invalid UTF-8 in key at .a["\\xFF"]',
                 json_error(json.encode, { a = { ["\xff"] = 1 } }).message)
    assert.equal('encode: invalid UTF-8 at ["a b"][1]', json_error(json.encode, { ["a b"] = { "\x80" } }).message)
    for _, bad in ipairs({
      "\xc0\x80",         -- overlong NUL
      "\xe0\x80\xaf",     -- overlong '/'
      "\xed\xa0\x80",     -- UTF-16 surrogate
      "\xf4\x90\x80\x80", -- beyond U+10FFFF
      "\xf8\x88\x80\x80\x80",
      "\xe2\x82",         -- truncated
      "a\x80b",           -- stray continuation byte
    }) do
      json_error(json.encode, { bad })
    end
    assert.equal('"\xf4\x8f\xbf\xbf"', json.encode("\xf4\x8f\xbf\xbf")) -- U+10FFFF is fine
  end)

  it("raises on values JSON cannot hold", function()
    assert.equal("encode: cannot encode function value at .f", json_error(json.encode, { f = print }).message)
    assert.equal("encode: cannot encode thread value at [1]",
                 json_error(json.encode, { coroutine.create(print) }).message)
    assert.equal("encode: cannot encode userdata value at .out", json_error(json.encode, { out = io.stdout }).message)
    assert.equal("encode: cannot encode boolean key at .t", json_error(json.encode, { t = { [true] = 1 } }).message)
    assert.equal("encode: cannot encode table key at (root)", json_error(json.encode, { [{}] = 1 }).message)
  end)

  it("raises on cycles, naming where the cycle closes", function()
    local t = { a = {} }
    t.a.b = t
    assert.equal("encode: cycle at .a.b", json_error(json.encode, t).message)
    local l = {}
    l[1] = l
    assert.equal("encode: cycle at [1]", json_error(json.encode, l).message)
    local shared = { 1 }
    assert.same({ x = { 1 }, y = { 1 } }, json.decode(json.encode({ x = shared, y = shared })))
  end)

  it("limits nesting depth", function()
    local deep = {}
    for _ = 1, 999 do deep = { deep } end -- 1000 levels
    assert.equal(string.rep("[", 999) .. "{}" .. string.rep("]", 999), json.encode(deep))
    local err = json_error(json.encode, { deep })
    assert.matches("nesting deeper than 1000", err.message)
  end)

  it("ignores metatables", function()
    local t = setmetatable({}, { __index = function() return 1 end, __len = function() return 3 end })
    assert.equal("{}", json.encode(t))
  end)
end)

describe("atom.json.decode", function()
  it("decodes scalars", function()
    assert.equal(true, json.decode("true"))
    assert.equal(false, json.decode(" false "))
    assert.equal("x", json.decode('"x"'))
    assert.equal("", json.decode('""'))
    assert.equal(-12, json.decode("-12"))
  end)

  it("decodes empty arrays and objects to plain empty tables", function()
    for _, s in ipairs({ "[]", "{}", " [ ] ", "{ }" }) do
      local t = json.decode(s)
      assert.same({}, t)
      assert.is_nil(getmetatable(t))
    end
    assert.equal("{}", json.encode(json.decode("[]")))
  end)

  it("decodes nested documents", function()
    assert.same({ a = { 1, 2, { b = "c" } }, d = {} }, json.decode('{"a":[1,2,{"b":"c"}],"d":{}}'))
    assert.same({ 1, 2, 3 }, json.decode(" [ 1 ,\n 2 ,\t3\r] "))
  end)

  it("keeps object keys as strings, the last duplicate winning", function()
    local t = json.decode('{"1":"a","1":"b"}')
    assert.equal("b", t["1"])
    assert.is_nil(t[1])
  end)

  it("decodes integers up to 2^53 as integers, others as floats", function()
    local cases = {
      { "0", 0, "integer" },
      { "-0", 0, "integer" },
      { "9007199254740992", 1 << 53, "integer" },
      { "-9007199254740992", -(1 << 53), "integer" },
      { "9007199254740993", 2 ^ 53, "float" },
      { "-9007199254740993", -(2 ^ 53), "float" },
      { "9223372036854775807", 2 ^ 63, "float" },
      { "-9223372036854775808", -(2 ^ 63), "float" },
      { "123456789012345678901234567890", 1.2345678901234568e29, "float" },
      { "1.5", 1.5, "float" },
      { "1e-2", 0.01, "float" },
      { "1E400", math.huge, "float" },
      { "-1e400", -math.huge, "float" },
    }
    for _, c in ipairs(cases) do
      local v = json.decode(c[1])
      assert.equal(c[2], v)
      assert.equal(c[3], math.type(v), c[1])
    end
  end)

  it("decodes integral values written with a fraction or exponent as integers", function()
    local cases = {
      { "5.0", 5 }, { "1e3", 1000 }, { "1E+3", 1000 }, { "-2.50e1", -25 }, { "100e-2", 1 },
      { "0.0", 0 }, { "0e999999999", 0 }, { "9007199254740992.000", 1 << 53 }, { "0.9007199254740992e16", 1 << 53 },
    }
    for _, c in ipairs(cases) do
      local v = json.decode(c[1])
      assert.equal(c[2], v)
      assert.equal("integer", math.type(v), c[1])
    end
    -- Exact, not through a rounded double: these are not integers.
    assert.equal("float", math.type(json.decode("9007199254740990.5")))
    assert.equal("float", math.type(json.decode("9007199254740994.0")))
    assert.equal("float", math.type(json.decode("1.0000000000000000001")))
  end)

  it("decodes escapes, \\u escapes and surrogate pairs to UTF-8", function()
    assert.equal('"\\/\b\f\n\r\t', json.decode([["\"\\\/\b\f\n\r\t"]]))
    assert.equal("A", json.decode([["\u0041"]]))
    assert.equal("\0", json.decode([["\u0000"]]))
    assert.equal("é", json.decode([["\u00e9"]]))
    assert.equal("€", json.decode([["\u20AC"]]))
    assert.equal("\u{ffff}", json.decode([["\uffff"]]))
    assert.equal("😀", json.decode([["\ud83d\ude00"]]))
    assert.equal("\u{10ffff}", json.decode([["\uDBFF\uDFFF"]]))
    assert.equal("a😀b\n", json.decode([["a\uD83D\uDE00b\n"]]))
  end)

  it("does not check UTF-8", function()
    assert.equal("\xff\xfe", json.decode('"\xff\xfe"'))
  end)

  it("raises on malformed input, naming the position", function()
    local cases = {
      { "", 1, "expected a value at position 1, got end of input" },
      { "   ", 4, "expected a value" },
      { "[1,]", 4, "expected a value at position 4, got ']'" },
      { "[1 2]", 4, "expected ',' or ']' at position 4, got '2'" },
      { '{"a" 1}', 6, "expected ':'" },
      { '{"a":1,}', 8, "expected a string key" },
      { "{1:2}", 2, "expected a string key" },
      { '{"a":1', 7, "expected ',' or '}' at position 7, got end of input" },
      { '{"a":1} x', 9, "expected end of input at position 9, got 'x'" },
      { "[1] [2]", 5, "expected end of input" },
      { "nul", 1, "expected a value" },
      { "truex", 5, "expected end of input" },
      { "'a'", 1, "expected a value at position 1, got '''" },
      { "\1", 1, "got byte 0x01" },
      { "01", 1, "leading zero" },
      { "-", 2, "expected a digit" },
      { "1.", 3, "expected a digit after '.'" },
      { "1.e5", 3, "expected a digit after '.'" },
      { "1e", 3, "expected a digit in the exponent" },
      { "+1", 1, "expected a value" },
      { ".5", 1, "expected a value" },
      { "NaN", 1, "expected a value" },
      { '"abc', 1, "unterminated string" },
      { '"a\\', 1, "unterminated string" },
      { '"a\nb"', 3, "unescaped control character" },
      { '"a\\xb"', 3, "invalid escape" },
      { '"\\u12g4"', 6, "invalid hex digit" },
      { '"\\ud800"', 2, "lone high surrogate" },
      { '"\\ud800\\u0041"', 2, "lone high surrogate" },
      { '"\\udc00"', 2, "lone low surrogate" },
      { "\239\187\191{}", 1, "expected a value" }, -- a UTF-8 BOM
    }
    for _, c in ipairs(cases) do
      local err = json_error(json.decode, c[1])
      assert.equal(c[2], err.position, c[1])
      assert.truthy(err.message:find(c[3], 1, true), c[1] .. " -> " .. err.message)
      assert.equal("decode: ", err.message:sub(1, 8))
    end
  end)

  it("limits nesting depth without overflowing the C stack", function()
    local ok1000 = json.decode(string.rep("[", 1000) .. string.rep("]", 1000))
    assert.equal("table", type(ok1000))
    local err = json_error(json.decode, string.rep("[", 1001) .. string.rep("]", 1001))
    assert.equal("decode: nesting deeper than 1000 at position 1001", err.message)
    json_error(json.decode, string.rep('{"a":', 100000))
    json_error(json.decode, string.rep("[", 1000000))
  end)

  it("raises usage for a non-string argument", function()
    local err = err_of(json.decode, 42)
    assert.equal("usage", err.kind)
    assert.equal("bad argument #1 to 'decode' (string expected, got number)", err.message)
    err = err_of(json.decode)
    assert.equal("bad argument #1 to 'decode' (string expected, got no value)", err.message)
    assert.equal("bad argument #1 to 'array' (table expected, got string)", err_of(json.array, "x").message)
  end)
end)

describe("atom.json round trips", function()
  it("keeps values through encode and decode", function()
    local v = {
      s = "line\n\"quoted\" \\ é 😀 \0 end",
      n = { 0, -1, 1 << 53, -(1 << 53), 0.1, 1 / 3, 1e-300 },
      b = { true, false },
      z = json.null,
      o = { nested = { deeper = { "x" } } },
    }
    assert.same(v, json.decode(json.encode(v)))
  end)

  it("handles a 10 MB document", function()
    local items = {}
    for i = 1, 75000 do
      items[i] = {
        id = i, name = "item \"" .. i .. "\"\n", value = i / 7, big = i * 1000003,
        tags = { "a", "b\t", "é" }, ok = i % 2 == 0, none = json.null, empty = {},
      }
    end
    local doc = { items = items, count = #items }
    local text = json.encode(doc)
    assert.is_true(#text > 10 * 1000 * 1000, "document is " .. #text .. " bytes")
    local back = json.decode(text)
    assert.same(doc, back)
    -- Key order follows the hash tables, so compare the sizes, not the text.
    assert.equal(#text, #json.encode(back))
    -- A long string and a long array of numbers.
    local long = string.rep("abc\\\"é", 2000000)
    assert.equal(long, json.decode(json.encode(long)))
  end)
end)

-- The fast path of atom.rpc (lua/atom/rpc.lua): json_rpc_result gives the
-- result of a reply exactly when decoding the whole reply and checking it
-- would, and declines (false) otherwise, never raising for a bad reply.
describe("_atom.json_rpc_result", function()
  local _atom = require "_atom"
  local fast, null = _atom.json_rpc_result, json.null

  local function slow(body)
    local ok, doc = pcall(json.decode, body)
    if not ok or type(doc) ~= "table" then return false end
    if doc.error ~= nil and doc.error ~= null then return false end
    if doc.result == nil then return false end
    return true, doc.result
  end

  it("takes the result of a usual reply and declines anything else", function()
    local cases = {
      '{"jsonrpc":"2.0","id":1,"result":"ok"}', ' {"result" : [1, {"a":null}] , "id":"x\\n"} ',
      '{"result":1,"result":2}', '{"error":null,"result":3}', '{"error":1,"error":null,"result":4}',
      '{"result":null}', '{"result":-0}', '{"result":1e400}',
      '{"a":' .. ("["):rep(999) .. ("]"):rep(999) .. ',"result":1}',
    }
    for _, body in ipairs(cases) do
      local ok, v = fast(body)
      local sok, sv = slow(body)
      assert.is_true(ok, body)
      assert.is_true(sok, body)
      assert.same(sv, v, body)
    end
    assert.equal(null, select(2, fast('{"result":null}')))
    assert.equal(2, select(2, fast('{"result":1,"result":2}')))
    local declined = {
      '{"error":{"code":1},"result":3}', '{"result":3,"error":{"code":1}}', '{"res\\u0075lt":5}',
      '{"result":1} x', '[1]', '"str"', '{}', '{"result":1,}', '{"result":1', '{"result":tru}',
      '{"re\1sult":1}', '', '{"result":"\\ud800"}',
      '{"a":' .. ("["):rep(1000) .. ("]"):rep(1000) .. ',"result":1}',
    }
    for _, body in ipairs(declined) do
      assert.is_false(fast(body), body)
    end
    assert.is_false(fast(nil))
    -- A declined reply with an escaped key is still one the full check takes.
    assert.same({ true, 5 }, { slow('{"res\\u0075lt":5}') })
  end)
end)

-- atom.base64 and atom.hex (SPEC §5 "Bytes"): src/bytes.c.
package.cpath = "./build/?.so;" .. package.cpath
local atom = require "atom"

local function usage_error(f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, "expected an error")
  assert.equal("table", type(err))
  assert.equal("usage", err.kind)
  return err.message
end

-- Every byte value, for round trips.
local all = {}
for i = 0, 255 do all[#all + 1] = string.char(i) end
all = table.concat(all)

describe("atom.base64", function()
  -- RFC 4648 §10.
  local vectors = {
    { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
    { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
  }

  it("encodes the RFC 4648 vectors", function()
    for _, v in ipairs(vectors) do assert.equal(v[2], atom.base64.encode(v[1])) end
  end)

  it("decodes the RFC 4648 vectors", function()
    for _, v in ipairs(vectors) do assert.equal(v[1], atom.base64.decode(v[2])) end
  end)

  it("uses the standard alphabet and round-trips every byte", function()
    assert.equal("+/8=", atom.base64.encode("\251\255"))
    assert.equal("\251\255", atom.base64.decode("+/8="))
    for n = 0, 256 do
      local s = all:sub(1, n)
      assert.equal(s, atom.base64.decode(atom.base64.encode(s)))
    end
  end)

  it("raises usage on invalid input, naming the position", function()
    assert.equal("bad argument #1 to 'decode' (invalid base64: length 3 is not a multiple of 4)",
                 usage_error(atom.base64.decode, "Zm9"))
    usage_error(atom.base64.decode, "Zg")   -- padding is required
    usage_error(atom.base64.decode, "Zm9vY")
    assert.equal("bad argument #1 to 'decode' (invalid base64 character '!' at position 3)",
                 usage_error(atom.base64.decode, "Zm!v"))
    assert.matches("invalid base64 character '%-' at position 1", usage_error(atom.base64.decode, "-_8="))
    assert.matches("invalid base64 character ' ' at position 5", usage_error(atom.base64.decode, "Zm9v Zg="))
    assert.matches("byte 0x0a at position 5", usage_error(atom.base64.decode, "Zm9v\nZg="))
    assert.matches("invalid base64 padding at position 3", usage_error(atom.base64.decode, "Zm=v"))
    assert.matches("invalid base64 padding at position 2", usage_error(atom.base64.decode, "Z==="))
    assert.matches("invalid base64 padding at position 1", usage_error(atom.base64.decode, "===="))
    assert.matches("invalid base64 padding at position 3", usage_error(atom.base64.decode, "Zg==Zm9v"))
  end)

  it("raises usage for non-strings", function()
    assert.equal("bad argument #1 to 'encode' (string expected, got number)", usage_error(atom.base64.encode, 1))
    assert.equal("bad argument #1 to 'decode' (string expected, got nil)", usage_error(atom.base64.decode, nil))
  end)
end)

describe("atom.hex", function()
  -- RFC 4648 §10 (base16), written in lower case.
  local vectors = {
    { "", "" }, { "f", "66" }, { "fo", "666f" }, { "foo", "666f6f" },
    { "foob", "666f6f62" }, { "fooba", "666f6f6261" }, { "foobar", "666f6f626172" },
  }

  it("encodes in lower case", function()
    for _, v in ipairs(vectors) do assert.equal(v[2], atom.hex.encode(v[1])) end
    assert.equal("00ff7f80", atom.hex.encode("\0\255\127\128"))
  end)

  it("decodes either case and round-trips every byte", function()
    for _, v in ipairs(vectors) do
      assert.equal(v[1], atom.hex.decode(v[2]))
      assert.equal(v[1], atom.hex.decode(v[2]:upper()))
    end
    assert.equal("\171\205", atom.hex.decode("aBCd"))
    assert.equal(all, atom.hex.decode(atom.hex.encode(all)))
  end)

  it("raises usage on odd length or a bad character", function()
    assert.equal("bad argument #1 to 'decode' (invalid hex: odd length 3)", usage_error(atom.hex.decode, "abc"))
    assert.equal("bad argument #1 to 'decode' (invalid hex character 'g' at position 2)",
                 usage_error(atom.hex.decode, "0g"))
    assert.matches("invalid hex character 'x' at position 2", usage_error(atom.hex.decode, "0x12"))
    assert.matches("invalid hex character ' ' at position 3", usage_error(atom.hex.decode, "ab cd "))
  end)

  it("raises usage for non-strings", function()
    assert.equal("bad argument #1 to 'encode' (string expected, got table)", usage_error(atom.hex.encode, {}))
    assert.equal("bad argument #1 to 'decode' (string expected, got number)", usage_error(atom.hex.decode, 12))
  end)
end)

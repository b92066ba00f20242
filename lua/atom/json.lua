-- atom.json: the public JSON codec (SPEC §5 "JSON"), plus atom.base64 and
-- atom.hex (SPEC §5 "Bytes") as M.base64 and M.hex. The work is done in C
-- (src/json.c, src/bytes.c); this file only names it. The C functions are
-- used directly, without Lua wrappers, so argument errors count arguments
-- exactly as Lua does ("got no value") and hot paths pay no extra call.
local _atom = require "_atom"

local M = {}

--- The JSON null: a light userdata (NULL), equal to lua-cjson's `cjson.null`.
--- It is truthy; test `v == atom.json.null`.
M.null = _atom.json_null

--- Encode a Lua value as JSON text. Tables whose keys are all positive
--- integers become arrays (holes are `null`); other tables become objects.
--- Raises kind `json` naming the key path (`encode: invalid UTF-8 at .params[2]`).
---@type fun(v: any): string
M.encode = _atom.json_encode

--- Decode JSON text. Integers up to 2^53 become Lua integers, `null` becomes
--- `atom.json.null`. Raises kind `json` naming the byte position.
---@type fun(s: string): any
M.decode = _atom.json_decode

--- Mark `t` so it always encodes as an array (`{}` becomes `[]`); returns `t`.
---@type fun(t: table): table
M.array = _atom.json_array

M.base64 = {
  --- Standard alphabet with padding.
  ---@type fun(s: string): string
  encode = _atom.base64_encode,
  --- Raises `usage` on invalid input (length, character, padding).
  ---@type fun(s: string): string
  decode = _atom.base64_decode,
}

M.hex = {
  --- Lower-case hex.
  ---@type fun(s: string): string
  encode = _atom.hex_encode,
  --- Accepts either case; raises `usage` on odd length or a bad character.
  ---@type fun(s: string): string
  decode = _atom.hex_decode,
}

return M

/* json_fuzz.c — libFuzzer harness for the JSON decoder (src/json.c), called
 * as atom.json.decode; any input must decode or raise kind `json`. The same
 * input goes to `_atom.json_rpc_result` (atom.rpc's fast path), which must
 * take a reply's result exactly when decoding the whole reply and checking
 * it would (or decline, but only for a reply with a backslash). */
#include "fuzz_lua.h"

/* The check of json_rpc_result against decode, as a Lua function. */
static const char rpc_check[] =
    "local fast, decode, null = require('_atom').json_rpc_result, atom.json.decode, "
    "atom.json.null\n"
    "local function same(a, b)\n"
    "  if type(a) ~= type(b) then return false end\n"
    "  if type(a) ~= 'table' then return a == b end\n"
    "  for k, v in pairs(a) do if not same(v, b[k]) then return false end end\n"
    "  for k in pairs(b) do if a[k] == nil then return false end end\n"
    "  return true\n"
    "end\n"
    "return function(s)\n"
    "  local took, v = fast(s)\n"
    "  local ok, doc = pcall(decode, s)\n"
    "  local full = ok and type(doc) == 'table' and (doc.error == nil or doc.error == null)\n"
    "    and doc.result ~= nil\n"
    "  if took and not (full and same(v, doc.result)) then\n"
    "    error('json_rpc_result took a reply the full check rejects or reads otherwise')\n"
    "  end\n"
    "  if not took and full and not s:find('\\\\', 1, true) then\n"
    "    error('json_rpc_result declined a usual reply')\n"
    "  end\n"
    "end\n";

static void check_rpc_result(const uint8_t *data, size_t size) {
  static int ref = LUA_NOREF;
  lua_State *L = fuzz_state();
  int top = lua_gettop(L);
  if (ref == LUA_NOREF) {
    if (luaL_loadstring(L, rpc_check) != LUA_OK || lua_pcall(L, 0, 1, 0) != LUA_OK) {
      fprintf(stderr, "fuzz: %s\n", lua_tostring(L, -1));
      abort();
    }
    ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "fuzz: %s\n", luaL_tolstring(L, -1, NULL));
    abort();
  }
  lua_settop(L, top);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const kinds[] = {"json", NULL};
  fuzz_call("json", "decode", data, size, kinds);
  check_rpc_result(data, size);
  return 0;
}

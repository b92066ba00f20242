/* fuzz_lua.h — what the libFuzzer harnesses (fuzz/json_fuzz.c and
 * fuzz/itf_fuzz.c) share: the whole atom runtime opened once in one Lua
 * state, as in module mode, and a check of what
 * a decoder raised. A decoder may reject any input, but only with an atom
 * error of its own kind: anything else (a Lua runtime error in itf.lua, a
 * wrong kind) is a finding, reported by abort() like a crash. */
#ifndef FUZZ_LUA_H
#define FUZZ_LUA_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/atom.h"

static lua_State *fuzz_state(void) {
  static lua_State *L;
  if (L) return L;
  L = luaL_newstate();
  runtime_open(L, false);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "atom");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    fprintf(stderr, "fuzz: require 'atom' failed: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_setglobal(L, "atom");
  return L;
}

/* Call atom.<lib>.<fn>(data) protected; a raised error must be a table of
 * one of the `kinds` ("json", "itf"...). */
static void fuzz_call(const char *lib, const char *fn, const uint8_t *data, size_t size,
                      const char *const *kinds) {
  lua_State *L = fuzz_state();
  int top = lua_gettop(L);
  lua_getglobal(L, "atom");
  lua_getfield(L, -1, lib);
  lua_getfield(L, -1, fn);
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    const char *kind = NULL;
    if (lua_istable(L, -1)) {
      lua_getfield(L, -1, "kind");
      kind = lua_tostring(L, -1);
    }
    bool ok = false;
    for (int i = 0; kind && kinds[i]; i++) ok = ok || strcmp(kind, kinds[i]) == 0;
    if (!ok) {
      lua_settop(L, top + 3);
      luaL_traceback(L, L, NULL, 0);
      fprintf(stderr, "fuzz: atom.%s.%s raised an unexpected error: %s (kind %s)\n", lib, fn,
              luaL_tolstring(L, top + 3, NULL), kind ? kind : "none");
      abort();
    }
  }
  lua_settop(L, top);
  /* Keep the heap small between inputs, so leaks and use-after-free show. */
  lua_gc(L, LUA_GCSTEP, 0);
}

#endif

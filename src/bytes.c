/* bytes.c — base64 and hex, the ways node APIs carry bytes in JSON (SPEC §5
 * "Bytes"). Strict decoders: invalid input is a script bug or a bad peer, so
 * it raises `usage` naming the 1-based position. lua/atom/json.lua exposes
 * these as atom.base64 and atom.hex. */
#include <stdio.h>

#include "atom.h"

static const char bytes_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char bytes_hex[] = "0123456789abcdef";

/* The string argument 1 of `fname`, strictly (numbers are not bytes). */
static const char *bytes_checkstring(lua_State *L, const char *fname, size_t *len) {
  if (lua_type(L, 1) != LUA_TSTRING) util_typeerror(L, 1, fname, "string");
  return lua_tolstring(L, 1, len);
}

/* "bad argument #1 to 'decode' (invalid <what> character '!' at position 5)" */
static int bytes_badchar(lua_State *L, const char *what, const char *s, size_t i) {
  unsigned char c = (unsigned char)s[i];
  char shown[16];
  if (c >= 0x20 && c < 0x7f)
    snprintf(shown, sizeof shown, "'%c'", c);
  else
    snprintf(shown, sizeof shown, "byte 0x%02x", c);
  return util_argerror(L, 1, "decode",
                       lua_pushfstring(L, "invalid %s character %s at position %I", what, shown,
                                       (lua_Integer)i + 1));
}

/* The 6-bit value of a base64 digit, or -1. */
static int bytes_b64val(unsigned char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

static int bytes_hexval(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* _atom.base64_encode(s) -> standard alphabet, padded */
static int l_base64_encode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)bytes_checkstring(L, "encode", &n);
  luaL_Buffer b;
  char *o = luaL_buffinitsize(L, &b, (n + 2) / 3 * 4);
  char *start = o;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
    *o++ = bytes_b64[v >> 18];
    *o++ = bytes_b64[(v >> 12) & 63];
    *o++ = bytes_b64[(v >> 6) & 63];
    *o++ = bytes_b64[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)s[i] << 16;
    *o++ = bytes_b64[v >> 18];
    *o++ = bytes_b64[(v >> 12) & 63];
    *o++ = '=';
    *o++ = '=';
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
    *o++ = bytes_b64[v >> 18];
    *o++ = bytes_b64[(v >> 12) & 63];
    *o++ = bytes_b64[(v >> 6) & 63];
    *o++ = '=';
  }
  luaL_pushresultsize(&b, (size_t)(o - start));
  return 1;
}

/* _atom.base64_decode(s) -> bytes. Padding is required; bits left over in
 * the last digit are ignored (as most decoders do). */
static int l_base64_decode(lua_State *L) {
  size_t n;
  const char *s = bytes_checkstring(L, "decode", &n);
  if (n % 4 != 0)
    return util_argerror(
        L, 1, "decode",
        lua_pushfstring(L, "invalid base64: length %I is not a multiple of 4", (lua_Integer)n));
  /* '=' may only end the string: "xx==" or "xxx=". */
  size_t pad = 0;
  if (n > 0 && s[n - 1] == '=') pad = (s[n - 2] == '=') ? 2 : 1;
  luaL_Buffer b;
  char *o = luaL_buffinitsize(L, &b, n / 4 * 3);
  char *start = o;
  for (size_t i = 0; i < n; i += 4) {
    uint32_t v = 0;
    size_t digits = (i + 4 == n) ? 4 - pad : 4;
    for (size_t j = 0; j < digits; j++) {
      int d = bytes_b64val((unsigned char)s[i + j]);
      if (d < 0) {
        if (s[i + j] == '=')
          return util_argerror(L, 1, "decode",
                               lua_pushfstring(L, "invalid base64 padding at position %I",
                                               (lua_Integer)(i + j) + 1));
        return bytes_badchar(L, "base64", s, i + j);
      }
      v = v << 6 | (uint32_t)d;
    }
    v <<= 6 * (4 - digits);
    *o++ = (char)(v >> 16);
    if (digits > 2) *o++ = (char)(v >> 8);
    if (digits > 3) *o++ = (char)v;
  }
  luaL_pushresultsize(&b, (size_t)(o - start));
  return 1;
}

/* _atom.hex_encode(s) -> lower-case hex */
static int l_hex_encode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)bytes_checkstring(L, "encode", &n);
  luaL_Buffer b;
  char *o = luaL_buffinitsize(L, &b, n * 2);
  for (size_t i = 0; i < n; i++) {
    o[2 * i] = bytes_hex[s[i] >> 4];
    o[2 * i + 1] = bytes_hex[s[i] & 15];
  }
  luaL_pushresultsize(&b, n * 2);
  return 1;
}

/* _atom.hex_decode(s) -> bytes; either case, even length */
static int l_hex_decode(lua_State *L) {
  size_t n;
  const char *s = bytes_checkstring(L, "decode", &n);
  if (n % 2 != 0)
    return util_argerror(L, 1, "decode",
                         lua_pushfstring(L, "invalid hex: odd length %I", (lua_Integer)n));
  luaL_Buffer b;
  char *o = luaL_buffinitsize(L, &b, n / 2);
  for (size_t i = 0; i < n; i += 2) {
    int hi = bytes_hexval((unsigned char)s[i]), lo = bytes_hexval((unsigned char)s[i + 1]);
    if (hi < 0) return bytes_badchar(L, "hex", s, i);
    if (lo < 0) return bytes_badchar(L, "hex", s, i + 1);
    o[i / 2] = (char)(hi << 4 | lo);
  }
  luaL_pushresultsize(&b, n / 2);
  return 1;
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg bytes_lib[] = {{"base64_encode", l_base64_encode},
                              {"base64_decode", l_base64_decode},
                              {"hex_encode", l_hex_encode},
                              {"hex_decode", l_hex_decode},
                              {NULL, NULL}};

/* json.c — atomlua's own JSON codec (SPEC §5 "JSON").
 * The decoder is a recursive descent that builds Lua values directly on the
 * stack; the encoder writes into a growable buffer owned by a userdata, so a
 * raised error never leaks it. lua/atom/json.lua builds the public atom.json
 * table on the `_atom.json_*` functions registered here. */
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom.h"

/* Deeper documents raise a json error instead of exhausting the C stack. */
#define JSON_MAXDEPTH 1000
/* Integers up to 2^53 in magnitude decode to Lua integers (SPEC §5). */
#define JSON_MAXINT ((uint64_t)1 << 53)
/* Arrays at least this long must be at least 1/JSON_SPARSE full. */
#define JSON_SPARSE_MIN 65536
#define JSON_SPARSE 8

/* Registry key of the weak-keyed table of tables marked by json_array. */
static const char json_marks_key = 0;
#define JSON_ENC_MT "atom.json.encoder"
/* Our raisers end in lua_error, which longjmps; saying so helps the compiler
 * and the static analysers. */
#define JSON_NORETURN __attribute__((noreturn))

/* {==== decoder ==== */

struct dec {
  lua_State *L;
  const char *s, *p, *end;
  int depth;
  jmp_buf *soft; /* set: a decode error jumps there instead of raising */
};

/* Raise kind json "decode: <what> at position N<tail>" (a 1-based byte
 * offset, also in err.position). Everything built so far is on the Lua
 * stack, so unwinding frees it. */
JSON_NORETURN static void dec_raise(struct dec *d, const char *at, const char *what,
                                    const char *tail) {
  if (d->soft) longjmp(*d->soft, 1);
  lua_State *L = d->L;
  lua_Integer pos = (lua_Integer)(at - d->s) + 1;
  util_push_error(L, "json", "%s",
                  lua_pushfstring(L, "decode: %s at position %I%s", what, pos, tail));
  lua_pushinteger(L, pos);
  lua_setfield(L, -2, "position");
  lua_error(L);
  __builtin_unreachable();
}

JSON_NORETURN static void dec_fail(struct dec *d, const char *at, const char *what) {
  dec_raise(d, at, what, "");
}

/* "decode: expected X at position N, got Y". */
JSON_NORETURN static void dec_expected(struct dec *d, const char *at, const char *what) {
  if (d->soft) longjmp(*d->soft, 1);
  char got[24];
  unsigned char c = at < d->end ? (unsigned char)*at : 0;
  if (at >= d->end)
    snprintf(got, sizeof got, ", got end of input");
  else if (c >= 0x20 && c < 0x7f)
    snprintf(got, sizeof got, ", got '%c'", c);
  else
    snprintf(got, sizeof got, ", got byte 0x%02x", c);
  dec_raise(d, at, lua_pushfstring(d->L, "expected %s", what), got);
}

static inline void dec_ws(struct dec *d) {
  while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' || *d->p == '\r' || *d->p == '\t')) d->p++;
}

static inline bool dec_isdigit(char c) { return c >= '0' && c <= '9'; }

/* The byte each one-character escape stands for; 0 for invalid escapes. */
static const char dec_unescape[256] = {['"'] = '"',  ['\\'] = '\\', ['/'] = '/',  ['b'] = '\b',
                                       ['f'] = '\f', ['n'] = '\n',  ['r'] = '\r', ['t'] = '\t'};

static int dec_hex4(struct dec *d, const char *q) {
  int v = 0;
  if (d->end - q < 4) dec_fail(d, q - 2, "truncated \\u escape");
  for (int i = 0; i < 4; i++) {
    char c = q[i];
    v <<= 4;
    if (c >= '0' && c <= '9')
      v |= c - '0';
    else if (c >= 'a' && c <= 'f')
      v |= c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      v |= c - 'A' + 10;
    else
      dec_fail(d, q + i, "invalid hex digit in \\u escape");
  }
  return v;
}

static char *dec_utf8(char *out, unsigned cp) {
  if (cp < 0x80) {
    *out++ = (char)cp;
  } else if (cp < 0x800) {
    *out++ = (char)(0xC0 | (cp >> 6));
    *out++ = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    *out++ = (char)(0xE0 | (cp >> 12));
    *out++ = (char)(0x80 | ((cp >> 6) & 0x3F));
    *out++ = (char)(0x80 | (cp & 0x3F));
  } else {
    *out++ = (char)(0xF0 | (cp >> 18));
    *out++ = (char)(0x80 | ((cp >> 12) & 0x3F));
    *out++ = (char)(0x80 | ((cp >> 6) & 0x3F));
    *out++ = (char)(0x80 | (cp & 0x3F));
  }
  return out;
}

/* The slow path of dec_string, from the first backslash at q. The unescaped
 * text is never longer than the escaped one, so one buffer of the escaped
 * length (found by a first scan) is enough. */
static void dec_string_escaped(struct dec *d, const char *start, const char *q) {
  lua_State *L = d->L;
  const char *close = q;
  while (close < d->end && *close != '"') close += (*close == '\\') ? 2 : 1;
  if (close >= d->end) dec_fail(d, start - 1, "unterminated string");
  luaL_Buffer b;
  char *out = luaL_buffinitsize(L, &b, (size_t)(close - start));
  char *o = out;
  memcpy(o, start, (size_t)(q - start));
  o += q - start;
  while (q < close) {
    unsigned char c = (unsigned char)*q;
    if (c != '\\') {
      if (c < 0x20) dec_fail(d, q, "unescaped control character in string");
      *o++ = (char)c;
      q++;
    } else if (q[1] != 'u') {
      char u = dec_unescape[(unsigned char)q[1]];
      if (u == 0) dec_fail(d, q, "invalid escape in string");
      *o++ = u;
      q += 2;
    } else {
      unsigned cp = (unsigned)dec_hex4(d, q + 2);
      if (cp >= 0xDC00 && cp <= 0xDFFF) dec_fail(d, q, "lone low surrogate in \\u escape");
      if (cp >= 0xD800 && cp <= 0xDBFF) {
        /* A high surrogate must be followed by a low one (a UTF-16 pair). */
        if (close - q < 12 || q[6] != '\\' || q[7] != 'u')
          dec_fail(d, q, "lone high surrogate in \\u escape");
        unsigned lo = (unsigned)dec_hex4(d, q + 8);
        if (lo < 0xDC00 || lo > 0xDFFF) dec_fail(d, q, "lone high surrogate in \\u escape");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        q += 6;
      }
      o = dec_utf8(o, cp);
      q += 6;
    }
  }
  luaL_pushresultsize(&b, (size_t)(o - out));
  d->p = close + 1;
}

/* d->p is at the opening quote. Pushes the string. */
static void dec_string(struct dec *d) {
  const char *start = ++d->p, *q = start;
  /* Fast path: no escapes, the string is a slice of the input. */
  while (q < d->end) {
    unsigned char c = (unsigned char)*q;
    if (c == '"') {
      lua_pushlstring(d->L, start, (size_t)(q - start));
      d->p = q + 1;
      return;
    }
    if (c == '\\') {
      dec_string_escaped(d, start, q);
      return;
    }
    if (c < 0x20) dec_fail(d, q, "unescaped control character in string");
    q++;
  }
  dec_fail(d, start - 1, "unterminated string");
}

/* Whether the decimal number with digits ib[0..ni) . fb[0..nf) e exp is an
 * integer of magnitude at most 2^53; if so, stores it in *out. Exact: works
 * on the digits, not on a rounded double. */
static bool dec_exact_int(const char *ib, size_t ni, const char *fb, size_t nf, long exp,
                          uint64_t *out) {
  size_t n = ni + nf;
  long point = (long)ni + exp; /* digits before the decimal point */
#define DIGIT(i) ((i) < ni ? ib[i] : fb[(i)-ni])
  size_t whole = point <= 0 ? 0 : ((size_t)point < n ? (size_t)point : n);
  for (size_t i = whole; i < n; i++)
    if (DIGIT(i) != '0') return false;
  uint64_t v = 0;
  for (size_t i = 0; i < whole; i++) {
    v = v * 10 + (uint64_t)(DIGIT(i) - '0');
    if (v > JSON_MAXINT) return false;
  }
#undef DIGIT
  if (v != 0)
    for (long k = (long)n; k < point; k++) {
      v *= 10;
      if (v > JSON_MAXINT) return false;
    }
  *out = v;
  return true;
}

/* d->p is at '-' or a digit. Pushes an integer or a float (SPEC §5). */
static void dec_number(struct dec *d) {
  lua_State *L = d->L;
  const char *start = d->p, *q = d->p, *end = d->end;
  bool neg = false;
  if (*q == '-') {
    neg = true;
    q++;
  }
  const char *ib = q;
  if (q < end && *q == '0') {
    q++;
    if (q < end && dec_isdigit(*q)) dec_fail(d, start, "invalid number (leading zero)");
  } else if (q < end && dec_isdigit(*q)) {
    while (q < end && dec_isdigit(*q)) q++;
  } else {
    dec_expected(d, q, "a digit");
  }
  size_t ni = (size_t)(q - ib);
  const char *fb = q;
  size_t nf = 0;
  bool plain = true;
  if (q < end && *q == '.') {
    plain = false;
    fb = ++q;
    while (q < end && dec_isdigit(*q)) q++;
    nf = (size_t)(q - fb);
    if (nf == 0) dec_expected(d, q, "a digit after '.'");
  }
  long exp = 0;
  if (q < end && (*q == 'e' || *q == 'E')) {
    plain = false;
    q++;
    bool eneg = false;
    if (q < end && (*q == '+' || *q == '-')) eneg = (*q++ == '-');
    if (q >= end || !dec_isdigit(*q)) dec_expected(d, q, "a digit in the exponent");
    /* Saturate: any exponent this large already decides the value. */
    while (q < end && dec_isdigit(*q)) {
      if (exp < 1000000) exp = exp * 10 + (*q - '0');
      q++;
    }
    if (eneg) exp = -exp;
  }
  d->p = q;

  uint64_t v;
  if (plain && ni <= 16) { /* the common case: below 10^16, no overflow */
    v = 0;
    for (const char *c = ib; c < q; c++) v = v * 10 + (uint64_t)(*c - '0');
    if (v <= JSON_MAXINT) {
      lua_pushinteger(L, neg ? -(lua_Integer)v : (lua_Integer)v);
    } else {
      lua_pushnumber(L, neg ? -(lua_Number)v : (lua_Number)v); /* one exact rounding */
    }
    return;
  }
  if (dec_exact_int(ib, ni, fb, nf, exp, &v)) {
    lua_pushinteger(L, neg ? -(lua_Integer)v : (lua_Integer)v);
    return;
  }
  /* A float: let Lua convert it (locale-safe, correctly rounded strtod). */
  size_t len = (size_t)(q - start);
  char small[64];
  const char *text;
  if (len < sizeof small) {
    memcpy(small, start, len);
    small[len] = '\0';
    text = small;
  } else {
    text = lua_pushlstring(L, start, len);
  }
  if (lua_stringtonumber(L, text) == 0) dec_fail(d, start, "invalid number");
  if (lua_isinteger(L, -1)) { /* a long integer Lua could hold: still a float here */
    lua_Number f = (lua_Number)lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushnumber(L, f);
  }
  if (text != small) lua_remove(L, -2);
}

static void dec_value(struct dec *d);

static void dec_enter(struct dec *d) {
  if (++d->depth > JSON_MAXDEPTH) dec_fail(d, d->p, "nesting deeper than 1000");
  luaL_checkstack(d->L, 4, "JSON nesting");
}

static void dec_object(struct dec *d) {
  lua_State *L = d->L;
  dec_enter(d);
  d->p++;
  /* Room for a few keys up front: growing 0 -> 1 -> 2 -> 4 rehashed the
   * table three times for a typical small object (a JSON-RPC reply). */
  lua_createtable(L, 0, 4);
  dec_ws(d);
  if (d->p < d->end && *d->p == '}') {
    d->p++;
    d->depth--;
    return;
  }
  for (;;) {
    if (d->p >= d->end || *d->p != '"') dec_expected(d, d->p, "a string key");
    dec_string(d);
    dec_ws(d);
    if (d->p >= d->end || *d->p != ':') dec_expected(d, d->p, "':'");
    d->p++;
    dec_value(d);
    lua_rawset(L, -3); /* [obj] */
    dec_ws(d);
    if (d->p < d->end && *d->p == ',') {
      d->p++;
      dec_ws(d);
      continue;
    }
    if (d->p < d->end && *d->p == '}') break;
    dec_expected(d, d->p, "',' or '}'");
  }
  d->p++;
  d->depth--;
}

static void dec_array(struct dec *d) {
  lua_State *L = d->L;
  dec_enter(d);
  d->p++;
  lua_createtable(L, 4, 0);
  dec_ws(d);
  if (d->p < d->end && *d->p == ']') {
    d->p++;
    d->depth--;
    return;
  }
  for (lua_Integer i = 1;; i++) {
    dec_value(d);
    lua_rawseti(L, -2, i); /* [arr] */
    dec_ws(d);
    if (d->p < d->end && *d->p == ',') {
      d->p++;
      continue;
    }
    if (d->p < d->end && *d->p == ']') break;
    dec_expected(d, d->p, "',' or ']'");
  }
  d->p++;
  d->depth--;
}

static void dec_literal(struct dec *d, const char *word, size_t len) {
  if ((size_t)(d->end - d->p) < len || memcmp(d->p, word, len) != 0)
    dec_expected(d, d->p, "a value");
  d->p += len;
}

static void dec_value(struct dec *d) {
  dec_ws(d);
  if (d->p >= d->end) dec_expected(d, d->p, "a value");
  switch (*d->p) {
    case '{':
      dec_object(d);
      break;
    case '[':
      dec_array(d);
      break;
    case '"':
      dec_string(d);
      break;
    case 't':
      dec_literal(d, "true", 4);
      lua_pushboolean(d->L, 1);
      break;
    case 'f':
      dec_literal(d, "false", 5);
      lua_pushboolean(d->L, 0);
      break;
    case 'n':
      dec_literal(d, "null", 4);
      lua_pushlightuserdata(d->L, NULL);
      break;
    case '-':
    case '0':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9':
      dec_number(d);
      break;
    default:
      dec_expected(d, d->p, "a value");
  }
}

/* _atom.json_decode(s) -> value */
static int l_json_decode(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING) return util_typeerror(L, 1, "decode", "string");
  size_t len;
  const char *s = lua_tolstring(L, 1, &len);
  struct dec d = {L, s, s, s + len, 0, NULL};
  lua_settop(L, 1);
  dec_value(&d);
  dec_ws(&d);
  if (d.p < d.end) dec_expected(&d, d.p, "end of input");
  return 1;
}

/* _atom.json_rpc_result(s) -> true, result | false, nil: the common case
 * of a JSON-RPC reply over HTTP, for lua/atom/rpc.lua. An object whose
 * "result" member is decoded onto the stack while the other members are
 * decoded and dropped: no table for the document, no Lua strings for its
 * keys. Anything else (not a string or an object, a key with an escape, an
 * "error" member other than null, no "result", a decode error, trailing
 * bytes) gives false, and the caller decodes the whole reply as before to
 * say what is wrong with it. Members repeat as for json_decode: the last
 * one wins. A decode error jumps back here (only our own frames are in
 * between: the Lua API calls of the decoder have returned when it raises)
 * rather than raising, so no pcall is needed; memory errors still raise. */
static int l_json_rpc_result(lua_State *L) {
  size_t len;
  if (lua_type(L, 1) != LUA_TSTRING) goto other;
  const char *s = lua_tolstring(L, 1, &len);
  jmp_buf soft;
  struct dec d = {L, s, s, s + len, 1, &soft}; /* inside the top-level object */
  lua_settop(L, 1);
  lua_pushnil(L); /* 2: the result */
  if (setjmp(soft)) goto other;
  bool has_result = false, has_error = false;
  dec_ws(&d);
  if (d.p >= d.end || *d.p != '{') goto other;
  d.p++;
  dec_ws(&d);
  if (d.p < d.end && *d.p == '}') {
    d.p++;
  } else {
    for (;;) {
      if (d.p >= d.end || *d.p != '"') goto other;
      const char *k = ++d.p, *q = k;
      while (q < d.end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20) q++;
      if (q >= d.end || *q != '"') goto other;
      size_t klen = (size_t)(q - k);
      d.p = q + 1;
      dec_ws(&d);
      if (d.p >= d.end || *d.p != ':') goto other;
      d.p++;
      dec_value(&d);
      if (klen == 6 && memcmp(k, "result", 6) == 0) {
        lua_replace(L, 2);
        has_result = true;
      } else {
        if (klen == 5 && memcmp(k, "error", 5) == 0)
          has_error = !(lua_type(L, -1) == LUA_TLIGHTUSERDATA && !lua_touserdata(L, -1));
        lua_pop(L, 1);
      }
      dec_ws(&d);
      if (d.p < d.end && *d.p == ',') {
        d.p++;
        dec_ws(&d);
        continue;
      }
      if (d.p < d.end && *d.p == '}') break;
      goto other;
    }
    d.p++;
  }
  dec_ws(&d);
  if (d.p < d.end || !has_result || has_error) goto other;
  lua_pushboolean(L, 1);
  lua_insert(L, 2);
  return 2;
other:
  lua_settop(L, 1); /* also what an abandoned decode left (a string buffer) */
  lua_pushboolean(L, 0);
  return 1;
}

/* }==== */

/* {==== encoder ==== */

/* One step of the key path from the container at this depth to its child. */
struct frame {
  const void *table; /* the container, for cycle detection */
  int key;           /* stack index of the object key, or 0 for an array index */
  lua_Integer index; /* 1-based array index when key == 0 */
};

/* Lives in a userdata with a __gc, so buffers are freed however encode ends. */
struct enc {
  lua_State *L;
  char *buf;
  size_t len, cap;
  int marks; /* stack index of the marks table */
  int depth; /* frames[0..depth) lead to the value being encoded */
  int nframes;
  struct frame *frames; /* small[] until deeper than it, then malloc'd */
  struct frame small[32];
};

static void enc_release(struct enc *e) {
  free(e->buf);
  e->buf = NULL;
  e->len = e->cap = 0;
  if (e->frames != e->small) free(e->frames);
  e->frames = e->small;
  e->nframes = (int)(sizeof e->small / sizeof e->small[0]);
}

static int enc_gc(lua_State *L) {
  enc_release((struct enc *)lua_touserdata(L, 1));
  return 0;
}

static bool enc_isalpha(char c) { return c == '_' || ((c | 32) >= 'a' && (c | 32) <= 'z'); }

/* Keys that read as Lua identifiers show as ".key" in paths. */
static bool enc_isident(const char *s, size_t n) {
  if (n == 0 || !enc_isalpha(s[0])) return false;
  for (size_t i = 1; i < n; i++)
    if (!enc_isalpha(s[i]) && !(s[i] >= '0' && s[i] <= '9')) return false;
  return true;
}

static size_t utf8_seq(const unsigned char *s, size_t n);

/* Push the key path of frames[0..depth): ".params[2]", or "(root)". */
static void enc_pushpath(struct enc *e, int depth) {
  lua_State *L = e->L;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (depth == 0) luaL_addstring(&b, "(root)");
  for (int i = 0; i < depth; i++) {
    struct frame *f = &e->frames[i];
    if (f->key == 0) {
      lua_pushfstring(L, "[%I]", f->index);
    } else if (lua_type(L, f->key) == LUA_TSTRING) {
      size_t n;
      const char *k = lua_tolstring(L, f->key, &n);
      if (enc_isident(k, n)) {
        lua_pushfstring(L, ".%s", k);
      } else {
        /* Quote the key; bytes that are not valid UTF-8 show as \xHH. */
        luaL_Buffer kb;
        luaL_buffinit(L, &kb);
        luaL_addstring(&kb, "[\"");
        for (size_t j = 0; j < n;) {
          unsigned char c = (unsigned char)k[j];
          size_t len = c < 0x80 ? 1 : utf8_seq((const unsigned char *)k + j, n - j);
          if (c == '"' || c == '\\') {
            luaL_addchar(&kb, '\\');
            luaL_addchar(&kb, (char)c);
          } else if (len == 0 || c < 0x20 || c == 0x7f) {
            char hex[8];
            snprintf(hex, sizeof hex, "\\x%02X", c);
            luaL_addstring(&kb, hex);
            len = 1;
          } else {
            luaL_addlstring(&kb, k + j, len);
          }
          j += len;
        }
        luaL_addstring(&kb, "\"]");
        luaL_pushresult(&kb);
      }
    } else if (lua_isinteger(L, f->key)) {
      lua_pushfstring(L, "[%I]", lua_tointeger(L, f->key));
    } else {
      char num[40];
      snprintf(num, sizeof num, "[%.17g]", (double)lua_tonumber(L, f->key));
      lua_pushstring(L, num);
    }
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

/* Raise kind json "encode: <what> at <path>", after freeing the buffers.
 * `what` must not live in the encoder's buffers. */
JSON_NORETURN static void enc_fail(struct enc *e, int depth, const char *what) {
  lua_State *L = e->L;
  enc_pushpath(e, depth);
  const char *path = lua_tostring(L, -1);
  util_push_error(L, "json", "encode: %s at %s", what, path);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "path");
  enc_release(e);
  lua_error(L);
  __builtin_unreachable();
}

static void enc_reserve(struct enc *e, size_t need) {
  if (e->cap - e->len >= need) return;
  size_t cap = e->cap ? e->cap : 256;
  while (cap - e->len < need) {
    if (cap > ((size_t)-1) / 2) enc_fail(e, e->depth, "output too large");
    cap *= 2;
  }
  char *p = realloc(e->buf, cap);
  if (p == NULL) enc_fail(e, e->depth, "out of memory");
  e->buf = p;
  e->cap = cap;
}

static inline void enc_add(struct enc *e, const char *s, size_t n) {
  enc_reserve(e, n);
  memcpy(e->buf + e->len, s, n);
  e->len += n;
}

static inline void enc_char(struct enc *e, char c) {
  if (e->len == e->cap) enc_reserve(e, 1);
  e->buf[e->len++] = c;
}

static void enc_integer(struct enc *e, lua_Integer v) {
  char tmp[24], *p = tmp + sizeof tmp;
  /* Negate in unsigned arithmetic so math.mininteger works. */
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) *--p = '-';
  enc_add(e, p, (size_t)(tmp + sizeof tmp - p));
}

/* "%.17g": every double reads back exactly. An integral float prints without
 * a fraction ("2"), so it decodes as an integer; SPEC §5 allows that. */
static void enc_float(struct enc *e, lua_Number v) {
  if (isnan(v)) enc_fail(e, e->depth, "cannot encode NaN");
  if (isinf(v)) enc_fail(e, e->depth, v > 0 ? "cannot encode inf" : "cannot encode -inf");
  char tmp[40];
  int n = snprintf(tmp, sizeof tmp, "%.17g", (double)v);
  for (int i = 0; i < n; i++)
    if (tmp[i] == ',') tmp[i] = '.'; /* a script may have set a comma locale */
  enc_add(e, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence (RFC 3629: no overlongs, no surrogates,
 * at most U+10FFFF) starting at a byte >= 0x80, or 0 when it is invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  if (c < 0xC2) return 0;
  if (c < 0xE0) return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
  if (c < 0xF0) {
    if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
    if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0)) return 0;
    return 3;
  }
  if (c < 0xF5) {
    if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
    if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90)) return 0;
    return 4;
  }
  return 0;
}

/* 0: copy as is; 1: escape; 2: start of a multi-byte sequence to check. */
static unsigned char enc_class[256];
static const char enc_hex[] = "0123456789abcdef";

static void enc_init_class(void) {
  for (int c = 0; c < 256; c++)
    enc_class[c] = c < 0x20 || c == '"' || c == '\\' ? 1 : c >= 0x80 ? 2 : 0;
}

/* Append s as a JSON string. Returns false (appending garbage) when s is not
 * valid UTF-8; the caller raises with the key path. */
static bool enc_string(struct enc *e, const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  enc_reserve(e, n + 2);
  e->buf[e->len++] = '"';
  size_t i = 0, run = 0;
  while (i < n) {
    unsigned char k = enc_class[u[i]];
    if (k == 0) {
      i++;
    } else if (k == 2) {
      size_t len = utf8_seq(u + i, n - i);
      if (len == 0) return false;
      i += len;
    } else {
      memcpy(e->buf + e->len, s + run, i - run);
      e->len += i - run;
      /* Room for the longest escape and everything after it. */
      enc_reserve(e, 6 + (n - i - 1) + 1);
      char *o = e->buf + e->len;
      unsigned char c = u[i];
      char short_esc = c == '"'    ? '"'
                       : c == '\\' ? '\\'
                       : c == '\n' ? 'n'
                       : c == '\r' ? 'r'
                       : c == '\t' ? 't'
                       : c == '\b' ? 'b'
                       : c == '\f' ? 'f'
                                   : 0;
      if (short_esc) {
        o[0] = '\\';
        o[1] = short_esc;
        e->len += 2;
      } else {
        memcpy(o, "\\u00", 4);
        o[4] = enc_hex[c >> 4];
        o[5] = enc_hex[c & 15];
        e->len += 6;
      }
      run = ++i;
    }
  }
  memcpy(e->buf + e->len, s + run, n - run);
  e->len += n - run;
  e->buf[e->len++] = '"';
  return true;
}

static void enc_value(struct enc *e, int idx);

/* Make frames[depth] usable. */
static void enc_frame(struct enc *e) {
  if (e->depth < e->nframes) return;
  int n = e->nframes * 2;
  struct frame *f = malloc((size_t)n * sizeof *f);
  if (f == NULL) enc_fail(e, e->depth, "out of memory");
  memcpy(f, e->frames, (size_t)e->nframes * sizeof *f);
  if (e->frames != e->small) free(e->frames);
  e->frames = f;
  e->nframes = n;
}

static void enc_array(struct enc *e, int idx, lua_Integer max) {
  lua_State *L = e->L;
  enc_char(e, '[');
  for (lua_Integer i = 1; i <= max; i++) {
    if (i > 1) enc_char(e, ',');
    lua_rawgeti(L, idx, i);
    /* Not a cached pointer: deeper levels may move frames[]. */
    e->frames[e->depth].key = 0;
    e->frames[e->depth].index = i;
    e->depth++;
    enc_value(e, lua_gettop(L));
    e->depth--;
    lua_pop(L, 1);
  }
  enc_char(e, ']');
}

static void enc_object(struct enc *e, int idx) {
  lua_State *L = e->L;
  bool first = true;
  enc_char(e, '{');
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* [key, value] */
    int key = lua_gettop(L) - 1;
    if (!first) enc_char(e, ',');
    first = false;
    e->frames[e->depth].key = key;
    switch (lua_type(L, key)) {
      case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, key, &n);
        if (!enc_string(e, s, n)) enc_fail(e, e->depth + 1, "invalid UTF-8 in key");
        break;
      }
      case LUA_TNUMBER: /* written as strings; never lua_tolstring a lua_next key */
        enc_char(e, '"');
        if (lua_isinteger(L, key))
          enc_integer(e, lua_tointeger(L, key));
        else
          enc_float(e, lua_tonumber(L, key));
        enc_char(e, '"');
        break;
      default:
        enc_fail(e, e->depth, lua_pushfstring(L, "cannot encode %s key", luaL_typename(L, key)));
    }
    enc_char(e, ':');
    e->depth++;
    enc_value(e, key + 1);
    e->depth--;
    lua_pop(L, 1); /* [key] */
  }
  enc_char(e, '}');
}

static void enc_table(struct enc *e, int idx) {
  lua_State *L = e->L;
  const void *self = lua_topointer(L, idx);
  for (int i = 0; i < e->depth; i++)
    if (e->frames[i].table == self) enc_fail(e, e->depth, "cycle");
  if (e->depth >= JSON_MAXDEPTH) enc_fail(e, e->depth, "nesting deeper than 1000");
  if (!lua_checkstack(L, 6)) enc_fail(e, e->depth, "Lua stack overflow");
  enc_frame(e);
  e->frames[e->depth].table = self;

  lua_pushvalue(L, idx);
  bool marked = lua_rawget(L, e->marks) != LUA_TNIL;
  lua_pop(L, 1);

  /* Classify: an array when every key is a positive integer (or marked). */
  lua_Integer max = 0, count = 0;
  bool array = true;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1); /* [key] */
    count++;
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
      lua_Integer k = lua_tointeger(L, -1);
      if (k > max) max = k;
    } else {
      array = false;
      if (!marked) {
        lua_pop(L, 1);
        break;
      }
    }
  }
  if (marked || (array && count > 0)) {
    /* {[1e9] = x} would print a billion nulls: refuse such tables. */
    if (max > JSON_SPARSE_MIN && max / JSON_SPARSE > count)
      enc_fail(
          e, e->depth,
          lua_pushfstring(L, "excessively sparse array (largest key %I, %I entries)", max, count));
    enc_array(e, idx, max);
  } else {
    enc_object(e, idx);
  }
}

static void enc_value(struct enc *e, int idx) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      enc_add(e, "null", 4);
      break;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, idx))
        enc_add(e, "true", 4);
      else
        enc_add(e, "false", 5);
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx))
        enc_integer(e, lua_tointeger(L, idx));
      else
        enc_float(e, lua_tonumber(L, idx));
      break;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (!enc_string(e, s, n)) enc_fail(e, e->depth, "invalid UTF-8");
      break;
    }
    case LUA_TTABLE:
      enc_table(e, idx);
      break;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) {
        enc_add(e, "null", 4);
        break;
      }
      /* fall through */
    default:
      enc_fail(e, e->depth, lua_pushfstring(L, "cannot encode %s value", luaL_typename(L, idx)));
  }
}

/* _atom.json_encode(v) -> string */
static int l_json_encode(lua_State *L) {
  lua_settop(L, 1);
  struct enc *e = lua_newuserdatauv(L, sizeof *e, 0); /* [v, enc] */
  e->L = L;
  e->buf = NULL;
  e->len = e->cap = 0;
  e->depth = 0;
  e->frames = e->small;
  e->nframes = (int)(sizeof e->small / sizeof e->small[0]);
  luaL_setmetatable(L, JSON_ENC_MT);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &json_marks_key); /* [v, enc, marks] */
  e->marks = 3;
  enc_value(e, 1);
  lua_pushlstring(L, e->buf, e->len);
  enc_release(e);
  return 1;
}

/* _atom.json_array(t) -> t, marked to encode as an array. The mark lives in a
 * weak-keyed registry table, so t keeps no metatable and may still be freed. */
static int l_json_array(lua_State *L) {
  if (lua_type(L, 1) != LUA_TTABLE) return util_typeerror(L, 1, "array", "table");
  lua_settop(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &json_marks_key);
  lua_pushvalue(L, 1);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_settop(L, 1);
  return 1;
}

/* }==== */

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg json_lib[] = {{"json_encode", l_json_encode},
                             {"json_decode", l_json_decode},
                             {"json_array", l_json_array},
                             {"json_rpc_result", l_json_rpc_result},
                             {NULL, NULL}};

void json_register(lua_State *L) {
  enc_init_class();
  lua_pushlightuserdata(L, NULL); /* the same value as cjson.null */
  lua_setfield(L, -2, "json_null");

  lua_rawgetp(L, LUA_REGISTRYINDEX, &json_marks_key);
  if (lua_isnil(L, -1)) { /* once per state, also if registered twice */
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "k");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &json_marks_key);
  }
  lua_pop(L, 1);

  if (luaL_newmetatable(L, JSON_ENC_MT)) {
    lua_pushcfunction(L, enc_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}

/* pb.c — protobuf messages <-> Lua tables, driven by descriptors (the codec
 * of atom.grpc, SPEC §9 "Messages <-> Lua"). A pool holds message and enum
 * types that lua/atom/pb.lua declares from FileDescriptorProtos (themselves
 * decoded by this codec from a bootstrapped descriptor.proto); encode and
 * decode walk a Lua table or the wire bytes in one pass, with no
 * intermediate message objects. Encoding follows the C++ implementation's
 * canonical output (fields by number, proto3 defaults omitted, map entries
 * with both key and value) so it can be compared byte for byte with
 * python3-protobuf (spec/pb_spec.lua). */
#include "pb.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "atom.h"

/* {==== pool building ==== */

struct pb_pool *pb_check(lua_State *L) {
  return luaL_checkudata(L, 1, POOL_MT);
}

static char *pb_strdup(const char *s, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, s, n);
    d[n] = '\0';
  }
  return d;
}

static void pb_free_fields(struct pb_msg *m) {
  for (int i = 0; i < m->nfields; i++) {
    free(m->fields[i].name);
    free(m->fields[i].def_s);
  }
  free(m->fields);
  m->fields = NULL;
  m->nfields = 0;
}

static int l_pb_gc(lua_State *L) {
  struct pb_pool *P = luaL_checkudata(L, 1, POOL_MT);
  for (int i = 0; i < P->nmsgs; i++) {
    pb_free_fields(&P->msgs[i]);
    free(P->msgs[i].name);
  }
  for (int i = 0; i < P->nenums; i++) {
    struct pb_enum *e = &P->enums[i];
    for (int j = 0; j < e->n; j++) free(e->names[j]);
    free(e->names);
    free(e->numbers);
    free(e->name);
  }
  free(P->msgs);
  free(P->enums);
  free(P->buf.p);
  memset(P, 0, sizeof *P);
  return 0;
}

/* pool:message(fullname) -> index (1-based); fields come later (pool:fields),
 * so that messages may refer to each other in any order. */
static int l_pb_message(lua_State *L) {
  struct pb_pool *P = pb_check(L);
  size_t n;
  const char *name = luaL_checklstring(L, 2, &n);
  if (P->nmsgs == P->capmsgs) {
    int cap = P->capmsgs ? P->capmsgs * 2 : 32;
    struct pb_msg *m = realloc(P->msgs, sizeof *m * (size_t)cap);
    if (!m) return luaL_error(L, "out of memory");
    P->msgs = m;
    P->capmsgs = cap;
  }
  struct pb_msg *m = &P->msgs[P->nmsgs];
  memset(m, 0, sizeof *m);
  m->name = pb_strdup(name, n);
  if (!m->name) return luaL_error(L, "out of memory");
  P->nmsgs++;
  lua_pushinteger(L, P->nmsgs);
  return 1;
}

/* pool:enum(fullname, {names}, {numbers}) -> index (1-based) */
static int l_pb_enum(lua_State *L) {
  struct pb_pool *P = pb_check(L);
  size_t n;
  const char *name = luaL_checklstring(L, 2, &n);
  luaL_checktype(L, 3, LUA_TTABLE);
  luaL_checktype(L, 4, LUA_TTABLE);
  int count = (int)lua_rawlen(L, 3);
  if (P->nenums == P->capenums) {
    int cap = P->capenums ? P->capenums * 2 : 16;
    struct pb_enum *e = realloc(P->enums, sizeof *e * (size_t)cap);
    if (!e) return luaL_error(L, "out of memory");
    P->enums = e;
    P->capenums = cap;
  }
  struct pb_enum *e = &P->enums[P->nenums];
  memset(e, 0, sizeof *e);
  e->name = pb_strdup(name, n);
  e->names = calloc((size_t)count + 1, sizeof *e->names);
  e->numbers = calloc((size_t)count + 1, sizeof *e->numbers);
  if (!e->name || !e->names || !e->numbers) {
    free(e->name), free(e->names), free(e->numbers);
    return luaL_error(L, "out of memory");
  }
  P->nenums++; /* from here l_pb_gc frees it */
  for (int i = 0; i < count; i++) {
    lua_rawgeti(L, 3, i + 1);
    lua_rawgeti(L, 4, i + 1);
    size_t vl;
    const char *v = luaL_checklstring(L, -2, &vl);
    e->numbers[i] = (int32_t)luaL_checkinteger(L, -1);
    e->names[i] = pb_strdup(v, vl);
    if (!e->names[i]) return luaL_error(L, "out of memory");
    e->n = i + 1;
    lua_pop(L, 2);
  }
  lua_pushinteger(L, P->nenums);
  return 1;
}

static uint8_t pb_wire_type(int type) {
  switch (type) {
    case PB_DOUBLE:
    case PB_FIXED64:
    case PB_SFIXED64:
      return WT_I64;
    case PB_FLOAT:
    case PB_FIXED32:
    case PB_SFIXED32:
      return WT_I32;
    case PB_STRING:
    case PB_BYTES:
    case PB_MESSAGE:
      return WT_LEN;
    case PB_GROUP:
      return WT_SGROUP;
    default:
      return WT_VARINT;
  }
}

static int pb_field_cmp(const void *a, const void *b) {
  uint32_t x = ((const struct pb_field *)a)->number, y = ((const struct pb_field *)b)->number;
  return x < y ? -1 : x > y;
}

static lua_Integer pb_optint(lua_State *L, int t, const char *k, lua_Integer def) {
  lua_getfield(L, t, k);
  lua_Integer v = lua_isnil(L, -1) ? def : luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

static bool pb_optbool(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  bool v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* pool:fields(index, {{name=, number=, type=, repeated=, packed=, implicit=,
 * map=, oneof=, sub=, default=}, ...}, noneofs). sub and oneof are 1-based. */
static int l_pb_fields(lua_State *L) {
  struct pb_pool *P = pb_check(L);
  lua_Integer idx = luaL_checkinteger(L, 2);
  luaL_argcheck(L, idx >= 1 && idx <= P->nmsgs, 2, "no such message");
  luaL_checktype(L, 3, LUA_TTABLE);
  struct pb_msg *m = &P->msgs[idx - 1];
  pb_free_fields(m);
  int count = (int)lua_rawlen(L, 3);
  m->fields = calloc((size_t)count + 1, sizeof *m->fields);
  if (!m->fields) return luaL_error(L, "out of memory");
  m->noneofs = (int)luaL_optinteger(L, 4, 0);
  for (int i = 0; i < count; i++) {
    lua_rawgeti(L, 3, i + 1);
    int t = lua_gettop(L);
    luaL_checktype(L, t, LUA_TTABLE);
    struct pb_field *f = &m->fields[i];
    m->nfields = i + 1;
    lua_getfield(L, t, "name");
    size_t nl;
    const char *name = luaL_checklstring(L, -1, &nl);
    f->name = pb_strdup(name, nl);
    f->namelen = nl;
    lua_pop(L, 1);
    if (!f->name) return luaL_error(L, "out of memory");
    f->number = (uint32_t)pb_optint(L, t, "number", 0);
    f->type = (uint8_t)pb_optint(L, t, "type", 0);
    if (f->type < PB_DOUBLE || f->type > PB_SINT64) return luaL_error(L, "bad field type");
    f->wt = pb_wire_type(f->type);
    f->repeated = pb_optbool(L, t, "repeated");
    f->packed = pb_optbool(L, t, "packed");
    f->implicit = pb_optbool(L, t, "implicit");
    f->map = pb_optbool(L, t, "map");
    f->oneof = (int)pb_optint(L, t, "oneof", 0) - 1;
    f->sub = (int)pb_optint(L, t, "sub", 0) - 1;
    if ((f->type == PB_MESSAGE || f->type == PB_GROUP) && (f->sub < 0 || f->sub >= P->nmsgs))
      return luaL_error(L, "field %s: bad message index", f->name);
    if (f->type == PB_ENUM && (f->sub < 0 || f->sub >= P->nenums || P->enums[f->sub].n == 0))
      return luaL_error(L, "field %s: bad enum index", f->name);
    if (f->type == PB_ENUM) f->def_i = P->enums[f->sub].numbers[0];
    lua_getfield(L, t, "default");
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t dl;
      const char *d = lua_tolstring(L, -1, &dl);
      f->def_s = pb_strdup(d, dl);
      f->def_slen = dl;
    } else if (lua_isinteger(L, -1)) {
      f->def_i = lua_tointeger(L, -1);
      f->def_d = (double)f->def_i;
    } else if (lua_type(L, -1) == LUA_TNUMBER) {
      f->def_d = lua_tonumber(L, -1);
    } else if (lua_type(L, -1) == LUA_TBOOLEAN) {
      f->def_i = lua_toboolean(L, -1);
    }
    lua_pop(L, 2);
  }
  qsort(m->fields, (size_t)m->nfields, sizeof *m->fields, pb_field_cmp);
  m->defined = true;
  return 0;
}

/* }==== */

/* {==== encoding ==== */

struct enc {
  lua_State *L;
  struct pb_pool *P;
  struct wbuf *b;
  const char *top; /* top-level type name, for errors */
  int depth;
  struct {
    const char *name;
    lua_Integer index; /* element of a repeated field, 0: none */
  } path[PB_MAX_DEPTH + 1];
};

static void wb_reserve(struct enc *E, size_t n) {
  struct wbuf *b = E->b;
  if (b->len + n <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + n) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) luaL_error(E->L, "out of memory");
  b->p = p;
  b->cap = cap;
}

static void wb_varint(struct enc *E, uint64_t v) {
  wb_reserve(E, 10);
  char *p = E->b->p + E->b->len;
  size_t n = 0;
  while (v >= 0x80) {
    p[n++] = (char)(v | 0x80);
    v >>= 7;
  }
  p[n++] = (char)v;
  E->b->len += n;
}

static void wb_fixed(struct enc *E, uint64_t v, int bytes) {
  wb_reserve(E, 8);
  char *p = E->b->p + E->b->len;
  for (int i = 0; i < bytes; i++) p[i] = (char)(v >> (8 * i));
  E->b->len += (size_t)bytes;
}

static void wb_bytes(struct enc *E, const char *s, size_t n) {
  wb_reserve(E, n);
  memcpy(E->b->p + E->b->len, s, n);
  E->b->len += n;
}

static int varint_len(uint64_t v) {
  int n = 1;
  while (v >= 0x80) v >>= 7, n++;
  return n;
}

/* Length-delimited payloads: write the payload after a one-byte length slot,
 * then widen the slot when the payload was longer than 127 bytes. */
static size_t wb_open(struct enc *E) {
  wb_reserve(E, 1);
  return E->b->len++;
}

static void wb_close(struct enc *E, size_t at) {
  uint64_t n = E->b->len - at - 1;
  int vl = varint_len(n);
  if (vl > 1) {
    wb_reserve(E, (size_t)vl - 1);
    memmove(E->b->p + at + vl, E->b->p + at + 1, n);
    E->b->len += (size_t)vl - 1;
  }
  char *p = E->b->p + at;
  while (n >= 0x80) {
    *p++ = (char)(n | 0x80);
    n >>= 7;
  }
  *p = (char)n;
}

/* Raise `usage`: "<what> in <top>.<path>". */
static int enc_error(struct enc *E, const char *fmt, ...) {
  lua_State *L = E->L;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  va_list ap;
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  luaL_addvalue(&b);
  luaL_addstring(&b, " in ");
  luaL_addstring(&b, E->top);
  for (int i = 0; i < E->depth; i++) {
    luaL_addchar(&b, '.');
    luaL_addstring(&b, E->path[i].name);
    if (E->path[i].index) {
      lua_pushfstring(L, "[%I]", E->path[i].index);
      luaL_addvalue(&b);
    }
  }
  luaL_pushresult(&b);
  return util_error(L, "usage", "%s", lua_tostring(L, -1));
}

static const char *pb_type_name(int type) {
  static const char *const names[] = {"",         "double",   "float",   "int64",  "uint64",
                                      "int32",    "fixed64",  "fixed32", "bool",   "string",
                                      "group",    "message",  "bytes",   "uint32", "enum",
                                      "sfixed32", "sfixed64", "sint32",  "sint64"};
  return names[type];
}

static int enc_bad(struct enc *E, const struct pb_field *f, int idx) {
  lua_State *L = E->L;
  const char *got = luaL_typename(L, idx);
  if (lua_type(L, idx) == LUA_TNUMBER && !lua_isinteger(L, idx)) got = "float";
  return enc_error(E, "field '%s' expects %s, got %s", f->name, pb_type_name(f->type), got);
}

static bool utf8_valid(const unsigned char *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned c = s[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    size_t k;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0)
      k = 1, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0)
      k = 2, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0)
      k = 3, cp = c & 0x07;
    else
      return false;
    if (i + k >= n) return false;
    for (size_t j = 1; j <= k; j++) {
      if ((s[i + j] & 0xc0) != 0x80) return false;
      cp = cp << 6 | (s[i + j] & 0x3f);
    }
    if ((k == 1 && cp < 0x80) || (k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += k + 1;
  }
  return true;
}

static void enc_msg(struct enc *E, const struct pb_msg *m, int t);

/* The integer value at idx for f, range-checked. */
static lua_Integer enc_int(struct enc *E, const struct pb_field *f, int idx) {
  lua_State *L = E->L;
  int isnum = 0;
  lua_Integer v = 0;
  if (lua_type(L, idx) == LUA_TNUMBER) v = lua_tointegerx(L, idx, &isnum);
  if (!isnum) enc_bad(E, f, idx);
  switch (f->type) {
    case PB_INT32:
    case PB_SINT32:
    case PB_SFIXED32:
      if (v < INT32_MIN || v > INT32_MAX)
        enc_error(E, "value %I out of range for int32 field '%s'", v, f->name);
      break;
    case PB_UINT32:
    case PB_FIXED32:
      if (v < 0 || v > (lua_Integer)UINT32_MAX)
        enc_error(E, "value %I out of range for uint32 field '%s'", v, f->name);
      break;
    default:
      break;
  }
  return v;
}

static int32_t enc_enum(struct enc *E, const struct pb_field *f, int idx) {
  lua_State *L = E->L;
  const struct pb_enum *en = &E->P->enums[f->sub];
  if (lua_type(L, idx) == LUA_TSTRING) {
    const char *s = lua_tostring(L, idx);
    for (int i = 0; i < en->n; i++)
      if (strcmp(en->names[i], s) == 0) return en->numbers[i];
    enc_error(E, "unknown value '%s' of enum %s for field '%s'", s, en->name, f->name);
  }
  int isnum = 0;
  lua_Integer v = lua_type(L, idx) == LUA_TNUMBER ? lua_tointegerx(L, idx, &isnum) : 0;
  if (!isnum) enc_bad(E, f, idx);
  if (v < INT32_MIN || v > INT32_MAX)
    enc_error(E, "value %I out of range for enum field '%s'", v, f->name);
  return (int32_t)v;
}

/* True when the value at idx is the type's default (proto3 omits it). */
static bool enc_is_default(struct enc *E, const struct pb_field *f, int idx) {
  lua_State *L = E->L;
  switch (f->type) {
    case PB_BOOL:
      return lua_type(L, idx) == LUA_TBOOLEAN && !lua_toboolean(L, idx);
    case PB_STRING:
    case PB_BYTES:
      return lua_type(L, idx) == LUA_TSTRING && lua_rawlen(L, idx) == 0;
    case PB_DOUBLE:
    case PB_FLOAT: {
      if (lua_type(L, idx) != LUA_TNUMBER) return false;
      double d = lua_tonumber(L, idx);
      uint64_t bits;
      memcpy(&bits, &d, sizeof bits);
      return bits == 0; /* -0.0 is sent, as the C++ implementation does */
    }
    case PB_ENUM:
      if (lua_type(L, idx) == LUA_TSTRING) return enc_enum(E, f, idx) == 0;
      return lua_isinteger(L, idx) && lua_tointeger(L, idx) == 0;
    case PB_MESSAGE:
    case PB_GROUP:
      return false;
    default:
      return lua_isinteger(L, idx) && lua_tointeger(L, idx) == 0;
  }
}

/* Write the value at idx (no tag). */
static void enc_value(struct enc *E, const struct pb_field *f, int idx) {
  lua_State *L = E->L;
  switch (f->type) {
    case PB_DOUBLE:
    case PB_FLOAT: {
      if (lua_type(L, idx) != LUA_TNUMBER) enc_bad(E, f, idx);
      double d = lua_tonumber(L, idx);
      if (f->type == PB_DOUBLE) {
        uint64_t bits;
        memcpy(&bits, &d, sizeof bits);
        wb_fixed(E, bits, 8);
      } else {
        float x = (float)d;
        uint32_t bits;
        memcpy(&bits, &x, sizeof bits);
        wb_fixed(E, bits, 4);
      }
      return;
    }
    case PB_BOOL:
      if (lua_type(L, idx) != LUA_TBOOLEAN) enc_bad(E, f, idx);
      wb_varint(E, lua_toboolean(L, idx) ? 1 : 0);
      return;
    case PB_STRING:
    case PB_BYTES: {
      if (lua_type(L, idx) != LUA_TSTRING) enc_bad(E, f, idx);
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (f->type == PB_STRING && !utf8_valid((const unsigned char *)s, n))
        enc_error(E, "field '%s' is not valid UTF-8 (use a bytes field for raw bytes)", f->name);
      wb_varint(E, n);
      wb_bytes(E, s, n);
      return;
    }
    case PB_MESSAGE: {
      if (lua_type(L, idx) != LUA_TTABLE) enc_bad(E, f, idx);
      size_t at = wb_open(E);
      enc_msg(E, &E->P->msgs[f->sub], idx);
      wb_close(E, at);
      return;
    }
    case PB_GROUP:
      if (lua_type(L, idx) != LUA_TTABLE) enc_bad(E, f, idx);
      enc_msg(E, &E->P->msgs[f->sub], idx);
      wb_varint(E, (uint64_t)f->number << 3 | WT_EGROUP);
      return;
    case PB_ENUM:
      wb_varint(E, (uint64_t)(int64_t)enc_enum(E, f, idx));
      return;
    case PB_SINT32:
    case PB_SINT64: {
      uint64_t u = (uint64_t)enc_int(E, f, idx);
      wb_varint(E, (u << 1) ^ (0u - (u >> 63))); /* zigzag */
      return;
    }
    case PB_FIXED32:
    case PB_SFIXED32:
      wb_fixed(E, (uint64_t)enc_int(E, f, idx), 4);
      return;
    case PB_FIXED64:
    case PB_SFIXED64:
      wb_fixed(E, (uint64_t)enc_int(E, f, idx), 8);
      return;
    default: /* int32 (negative: ten bytes, sign-extended), int64, uint32, uint64 */
      wb_varint(E, (uint64_t)enc_int(E, f, idx));
      return;
  }
}

static void enc_tag(struct enc *E, const struct pb_field *f, int wt) {
  wb_varint(E, (uint64_t)f->number << 3 | (uint64_t)wt);
}

static void enc_push_path(struct enc *E, const struct pb_field *f, lua_Integer index) {
  if (E->depth >= PB_MAX_DEPTH) enc_error(E, "message nested too deeply");
  E->path[E->depth].name = f->name;
  E->path[E->depth].index = index;
  E->depth++;
}

/* A map field: the table at idx, one entry message per pair. */
static void enc_map(struct enc *E, const struct pb_field *f, int idx) {
  lua_State *L = E->L;
  const struct pb_msg *entry = &E->P->msgs[f->sub];
  if (entry->nfields != 2) enc_error(E, "bad map entry type %s", entry->name);
  const struct pb_field *kf = &entry->fields[0], *vf = &entry->fields[1];
  enc_push_path(E, f, 0);
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* [key, value] */
    int k = lua_gettop(L) - 1, v = k + 1;
    enc_tag(E, f, WT_LEN);
    size_t at = wb_open(E);
    enc_tag(E, kf, kf->wt);
    enc_value(E, kf, k);
    enc_tag(E, vf, vf->wt);
    enc_value(E, vf, v);
    wb_close(E, at);
    lua_pop(L, 1);
  }
  E->depth--;
}

bool pb_packable(int type) {
  return type != PB_STRING && type != PB_BYTES && type != PB_MESSAGE && type != PB_GROUP;
}

static void enc_repeated(struct enc *E, const struct pb_field *f, int idx) {
  lua_State *L = E->L;
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  if (n == 0) return;
  if (f->packed && pb_packable(f->type)) {
    enc_push_path(E, f, 0);
    enc_tag(E, f, WT_LEN);
    size_t at = wb_open(E);
    for (lua_Integer i = 1; i <= n; i++) {
      E->path[E->depth - 1].index = i;
      lua_rawgeti(L, idx, i);
      enc_value(E, f, lua_gettop(L));
      lua_pop(L, 1);
    }
    wb_close(E, at);
    E->depth--;
    return;
  }
  enc_push_path(E, f, 0);
  for (lua_Integer i = 1; i <= n; i++) {
    E->path[E->depth - 1].index = i;
    lua_rawgeti(L, idx, i);
    enc_tag(E, f, f->wt);
    enc_value(E, f, lua_gettop(L));
    lua_pop(L, 1);
  }
  E->depth--;
}

/* The key of table t that no field of m has (for the error). */
static int enc_unknown_key(struct enc *E, const struct pb_msg *m, int t) {
  lua_State *L = E->L;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    bool known = false;
    if (lua_type(L, -1) == LUA_TSTRING) {
      const char *k = lua_tostring(L, -1);
      for (int i = 0; i < m->nfields && !known; i++) known = strcmp(m->fields[i].name, k) == 0;
    }
    if (!known) {
      lua_pushvalue(L, -1);
      const char *k = luaL_tolstring(L, -1, NULL);
      return enc_error(E, "unknown field '%s'", k);
    }
  }
  return 0;
}

static void enc_msg(struct enc *E, const struct pb_msg *m, int t) {
  lua_State *L = E->L;
  if (!m->defined) enc_error(E, "message type %s has no definition", m->name);
  luaL_checkstack(L, 8, "message nested too deeply");
  int nset = 0;
  int oneof_seen[16];
  int noneof = m->noneofs < 16 ? m->noneofs : 0;
  for (int i = 0; i < noneof; i++) oneof_seen[i] = -1;
  for (int i = 0; i < m->nfields; i++) {
    const struct pb_field *f = &m->fields[i];
    lua_pushlstring(L, f->name, f->namelen);
    if (lua_rawget(L, t) == LUA_TNIL) {
      lua_pop(L, 1);
      continue;
    }
    nset++;
    int v = lua_gettop(L);
    if (f->repeated) {
      if (lua_type(L, v) != LUA_TTABLE)
        enc_error(E, "field '%s' expects a table (%s), got %s", f->name,
                  f->map ? "map" : "repeated", luaL_typename(L, v));
      if (f->map)
        enc_map(E, f, v);
      else
        enc_repeated(E, f, v);
    } else {
      if (f->oneof >= 0 && f->oneof < noneof) {
        if (oneof_seen[f->oneof] >= 0)
          enc_error(E, "fields '%s' and '%s' of one oneof are both set",
                    m->fields[oneof_seen[f->oneof]].name, f->name);
        oneof_seen[f->oneof] = i;
      }
      if (!(f->implicit && enc_is_default(E, f, v))) {
        enc_tag(E, f, f->wt);
        if (f->type == PB_MESSAGE || f->type == PB_GROUP) enc_push_path(E, f, 0);
        enc_value(E, f, v);
        if (f->type == PB_MESSAGE || f->type == PB_GROUP) E->depth--;
      }
    }
    lua_pop(L, 1);
  }
  /* Every key must have been a field: count them. */
  int nkeys = 0;
  lua_pushnil(L);
  while (lua_next(L, t)) {
    lua_pop(L, 1);
    nkeys++;
  }
  if (nkeys != nset) enc_unknown_key(E, m, t);
}

/* pool:encode(index, table [, framed]) -> bytes; framed: with gRPC's 5-byte
 * prefix (no compression, big-endian length). Raises `usage` naming the
 * path on an unknown field or a value of the wrong type. */
static int l_pb_encode(lua_State *L) {
  struct pb_pool *P = pb_check(L);
  lua_Integer idx = luaL_checkinteger(L, 2);
  luaL_argcheck(L, idx >= 1 && idx <= P->nmsgs, 2, "no such message");
  luaL_checktype(L, 3, LUA_TTABLE);
  bool framed = lua_toboolean(L, 4);
  struct enc *E = lua_newuserdatauv(L, sizeof *E, 0); /* freed by the GC, also on error */
  E->L = L;
  E->P = P;
  E->b = &P->buf;
  E->top = P->msgs[idx - 1].name;
  E->depth = 0;
  P->buf.len = 0;
  if (framed) {
    wb_reserve(E, 5);
    P->buf.len = 5;
  }
  enc_msg(E, &P->msgs[idx - 1], 3);
  if (framed) {
    size_t n = P->buf.len - 5;
    unsigned char *p = (unsigned char *)P->buf.p;
    p[0] = 0;
    p[1] = (unsigned char)(n >> 24), p[2] = (unsigned char)(n >> 16);
    p[3] = (unsigned char)(n >> 8), p[4] = (unsigned char)n;
  }
  lua_pushlstring(L, P->buf.p, P->buf.len);
  if (P->buf.cap > (1u << 20)) { /* do not keep a large scratch buffer */
    free(P->buf.p);
    P->buf.p = NULL;
    P->buf.cap = 0;
  }
  P->buf.len = 0;
  return 1;
}

/* }==== */

/* pool:name(index) -> the message's full name */
static int l_pb_name(lua_State *L) {
  struct pb_pool *P = pb_check(L);
  lua_Integer idx = luaL_checkinteger(L, 2);
  luaL_argcheck(L, idx >= 1 && idx <= P->nmsgs, 2, "no such message");
  lua_pushstring(L, P->msgs[idx - 1].name);
  return 1;
}

/* }==== */

/* _atom.pb_pool() -> an empty pool */
static int l_pb_pool(lua_State *L) {
  struct pb_pool *P = lua_newuserdatauv(L, sizeof *P, 0);
  memset(P, 0, sizeof *P);
  if (luaL_newmetatable(L, POOL_MT)) { /* on first use: start-up pays nothing */
    static const luaL_Reg methods[] = {{"message", l_pb_message},
                                       {"enum", l_pb_enum},
                                       {"fields", l_pb_fields},
                                       {"encode", l_pb_encode},
                                       {"decode", l_pbdec_decode},
                                       {"name", l_pb_name},
                                       {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_pb_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_setmetatable(L, -2);
  return 1;
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg pb_lib[] = {{"pb_pool", l_pb_pool}, {NULL, NULL}};

/* pbdec.c — protobuf wire bytes -> Lua tables, driven by a pool's types
 * (pb.c). One pass over the bytes: scalars straight onto the Lua stack,
 * repeated fields appended as they come (packed or not), map entries stored
 * as t[key] = value, unknown fields skipped; then the defaults of absent
 * fields (SPEC §9: proto3 scalars read as 0, "", false or the first enum
 * name, repeated fields as {}, absent messages and oneof members as nil).
 * Malformed input raises a plain error string (atom.grpc makes it INTERNAL). */
#include <string.h>

#include "pb.h"

/* {==== decoding ==== */

struct pbdec {
  lua_State *L;
  struct pb_pool *P;
  int depth;
};

static int pbdec_fail(struct pbdec *D, const char *what) {
  return luaL_error(D->L, "malformed protobuf message: %s", what);
}

static uint64_t pbdec_varint(struct pbdec *D, const uint8_t **pp, const uint8_t *end) {
  const uint8_t *p = *pp;
  uint64_t v = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    if (p >= end) pbdec_fail(D, "truncated varint");
    uint8_t c = *p++;
    v |= (uint64_t)(c & 0x7f) << shift;
    if (!(c & 0x80)) {
      *pp = p;
      return v;
    }
  }
  pbdec_fail(D, "varint too long");
  return 0;
}

static uint64_t pbdec_fixed(struct pbdec *D, const uint8_t **pp, const uint8_t *end, int bytes) {
  if (end - *pp < bytes) pbdec_fail(D, "truncated fixed-width value");
  uint64_t v = 0;
  for (int i = 0; i < bytes; i++) v |= (uint64_t)(*pp)[i] << (8 * i);
  *pp += bytes;
  return v;
}

static const uint8_t *pbdec_len(struct pbdec *D, const uint8_t **pp, const uint8_t *end,
                                size_t *n) {
  uint64_t len = pbdec_varint(D, pp, end);
  if (len > (uint64_t)(end - *pp)) pbdec_fail(D, "length past the end");
  const uint8_t *s = *pp;
  *pp += len;
  *n = (size_t)len;
  return s;
}

/* Skip a value of wire type wt (groups to their end tag). */
static void pbdec_skip(struct pbdec *D, const uint8_t **pp, const uint8_t *end, int wt,
                       uint32_t num, int depth) {
  size_t n;
  switch (wt) {
    case WT_VARINT:
      pbdec_varint(D, pp, end);
      return;
    case WT_I64:
      pbdec_fixed(D, pp, end, 8);
      return;
    case WT_I32:
      pbdec_fixed(D, pp, end, 4);
      return;
    case WT_LEN:
      pbdec_len(D, pp, end, &n);
      return;
    case WT_SGROUP:
      if (depth > PB_MAX_DEPTH) pbdec_fail(D, "groups nested too deeply");
      for (;;) {
        uint64_t tag = pbdec_varint(D, pp, end);
        int w = (int)(tag & 7);
        if (w == WT_EGROUP) {
          if ((tag >> 3) != num) pbdec_fail(D, "mismatched end group");
          return;
        }
        pbdec_skip(D, pp, end, w, (uint32_t)(tag >> 3), depth + 1);
      }
    default:
      pbdec_fail(D, "bad wire type");
  }
}

static void pbdec_msg(struct pbdec *D, const struct pb_msg *m, const uint8_t *p, const uint8_t *end,
                      uint32_t group);

static void pbdec_push_enum(struct pbdec *D, const struct pb_field *f, int64_t v) {
  const struct pb_enum *en = &D->P->enums[f->sub];
  for (int i = 0; i < en->n; i++)
    if (en->numbers[i] == v) {
      lua_pushstring(D->L, en->names[i]);
      return;
    }
  lua_pushinteger(D->L, (lua_Integer)v); /* an unknown number stays a number */
}

/* Push one scalar of f read with wire type wt (already checked). */
static void pbdec_scalar(struct pbdec *D, const struct pb_field *f, const uint8_t **pp,
                         const uint8_t *end) {
  lua_State *L = D->L;
  switch (f->type) {
    case PB_DOUBLE: {
      uint64_t b = pbdec_fixed(D, pp, end, 8);
      double d;
      memcpy(&d, &b, sizeof d);
      lua_pushnumber(L, d);
      return;
    }
    case PB_FLOAT: {
      uint32_t b = (uint32_t)pbdec_fixed(D, pp, end, 4);
      float x;
      memcpy(&x, &b, sizeof x);
      lua_pushnumber(L, (double)x);
      return;
    }
    case PB_FIXED32:
      lua_pushinteger(L, (lua_Integer)(uint32_t)pbdec_fixed(D, pp, end, 4));
      return;
    case PB_SFIXED32:
      lua_pushinteger(L, (lua_Integer)(int32_t)(uint32_t)pbdec_fixed(D, pp, end, 4));
      return;
    case PB_FIXED64:
    case PB_SFIXED64:
      lua_pushinteger(L, (lua_Integer)pbdec_fixed(D, pp, end, 8));
      return;
    case PB_BOOL:
      lua_pushboolean(L, pbdec_varint(D, pp, end) != 0);
      return;
    case PB_INT32:
      lua_pushinteger(L, (lua_Integer)(int32_t)pbdec_varint(D, pp, end));
      return;
    case PB_UINT32:
      lua_pushinteger(L, (lua_Integer)(uint32_t)pbdec_varint(D, pp, end));
      return;
    case PB_SINT32: {
      uint32_t u = (uint32_t)pbdec_varint(D, pp, end);
      lua_pushinteger(L, (lua_Integer)(int32_t)((u >> 1) ^ (0u - (u & 1))));
      return;
    }
    case PB_SINT64: {
      uint64_t u = pbdec_varint(D, pp, end);
      lua_pushinteger(L, (lua_Integer)((u >> 1) ^ (0u - (u & 1))));
      return;
    }
    case PB_ENUM:
      pbdec_push_enum(D, f, (int32_t)pbdec_varint(D, pp, end));
      return;
    default: /* int64, uint64 */
      lua_pushinteger(L, (lua_Integer)pbdec_varint(D, pp, end));
      return;
  }
}

/* Push the value of f (wire type matches f->wt). */
static void pbdec_value(struct pbdec *D, const struct pb_field *f, const uint8_t **pp,
                        const uint8_t *end) {
  size_t n;
  switch (f->type) {
    case PB_STRING:
    case PB_BYTES: {
      const uint8_t *s = pbdec_len(D, pp, end, &n);
      lua_pushlstring(D->L, (const char *)s, n);
      return;
    }
    case PB_MESSAGE: {
      const uint8_t *s = pbdec_len(D, pp, end, &n);
      pbdec_msg(D, &D->P->msgs[f->sub], s, s + n, 0);
      return;
    }
    case PB_GROUP: {
      /* The group runs to its end tag: decode from here, then skip it. */
      const uint8_t *start = *pp;
      pbdec_skip(D, pp, end, WT_SGROUP, f->number, D->depth);
      pbdec_msg(D, &D->P->msgs[f->sub], start, end, f->number);
      return;
    }
    default:
      pbdec_scalar(D, f, pp, end);
  }
}

static void pbdec_default(struct pbdec *D, const struct pb_field *f) {
  lua_State *L = D->L;
  switch (f->type) {
    case PB_DOUBLE:
    case PB_FLOAT:
      lua_pushnumber(L, f->def_d);
      return;
    case PB_BOOL:
      lua_pushboolean(L, f->def_i != 0);
      return;
    case PB_STRING:
    case PB_BYTES:
      lua_pushlstring(L, f->def_s ? f->def_s : "", f->def_slen);
      return;
    case PB_ENUM:
      pbdec_push_enum(D, f, f->def_i);
      return;
    default:
      lua_pushinteger(L, f->def_i);
      return;
  }
}

static const struct pb_field *pbdec_find(const struct pb_msg *m, uint32_t num) {
  int lo = 0, hi = m->nfields - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    uint32_t x = m->fields[mid].number;
    if (x == num) return &m->fields[mid];
    if (x < num)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return NULL;
}

/* The array of repeated field f in table t (made on first use): pushed. */
static void pbdec_array(struct pbdec *D, const struct pb_field *f, int t) {
  lua_State *L = D->L;
  lua_pushlstring(L, f->name, f->namelen);
  if (lua_rawget(L, t) == LUA_TTABLE) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushlstring(L, f->name, f->namelen);
  lua_pushvalue(L, -2);
  lua_rawset(L, t);
}

/* A map entry: decoded as a message, then stored as arr[key] = value. */
static void pbdec_map_entry(struct pbdec *D, const struct pb_field *f, const uint8_t *s, size_t n,
                            int arr) {
  lua_State *L = D->L;
  const struct pb_msg *entry = &D->P->msgs[f->sub];
  pbdec_msg(D, entry, s, s + n, 0); /* [entry] */
  if (entry->nfields != 2) pbdec_fail(D, "bad map entry type");
  const struct pb_field *vf = &entry->fields[1];
  lua_getfield(L, -1, entry->fields[0].name);
  lua_getfield(L, -2, vf->name);
  if (lua_isnil(L, -1) && vf->type == PB_MESSAGE) { /* absent message value: empty message */
    lua_pop(L, 1);
    pbdec_msg(D, &D->P->msgs[vf->sub], s, s, 0);
  }
  lua_rawset(L, arr);
  lua_pop(L, 1);
}

static void pbdec_msg(struct pbdec *D, const struct pb_msg *m, const uint8_t *p, const uint8_t *end,
                      uint32_t group) {
  lua_State *L = D->L;
  if (++D->depth > PB_MAX_DEPTH) pbdec_fail(D, "nested too deeply");
  luaL_checkstack(L, 10, "message nested too deeply");
  lua_createtable(L, 0, m->nfields);
  int t = lua_gettop(L);
  /* Which fields were seen, for defaults (a bitset, on the stack when small). */
  uint64_t seen[4] = {0, 0, 0, 0}; /* the first 256 fields; later ones are looked up */
  while (p < end) {
    uint64_t tag = pbdec_varint(D, &p, end);
    uint32_t num = (uint32_t)(tag >> 3);
    int wt = (int)(tag & 7);
    if (num == 0) pbdec_fail(D, "field number 0");
    if (wt == WT_EGROUP) {
      if (group && num == group) break;
      pbdec_fail(D, "unexpected end group");
    }
    const struct pb_field *f = pbdec_find(m, num);
    if (!f) {
      pbdec_skip(D, &p, end, wt, num, D->depth);
      continue;
    }
    size_t fi = (size_t)(f - m->fields);
    if (f->repeated && f->map) {
      if (wt != WT_LEN) {
        pbdec_skip(D, &p, end, wt, num, D->depth);
        continue;
      }
      size_t n;
      const uint8_t *s = pbdec_len(D, &p, end, &n);
      pbdec_array(D, f, t);
      pbdec_map_entry(D, f, s, n, lua_gettop(L));
      lua_pop(L, 1);
    } else if (f->repeated) {
      if (wt == WT_LEN && pb_packable(f->type)) { /* packed, whatever the descriptor says */
        size_t n;
        const uint8_t *s = pbdec_len(D, &p, end, &n);
        const uint8_t *e = s + n;
        pbdec_array(D, f, t);
        int arr = lua_gettop(L);
        lua_Integer i = (lua_Integer)lua_rawlen(L, arr);
        while (s < e) {
          pbdec_scalar(D, f, &s, e);
          lua_rawseti(L, arr, ++i);
        }
        lua_pop(L, 1);
      } else if (wt == f->wt) {
        pbdec_array(D, f, t);
        int arr = lua_gettop(L);
        pbdec_value(D, f, &p, end);
        lua_rawseti(L, arr, (lua_Integer)lua_rawlen(L, arr) + 1);
        lua_pop(L, 1);
      } else {
        pbdec_skip(D, &p, end, wt, num, D->depth);
        continue;
      }
    } else {
      if (wt != f->wt) {
        pbdec_skip(D, &p, end, wt, num, D->depth);
        continue;
      }
      if (f->oneof >= 0) /* a new member of a oneof clears the others */
        for (int i = 0; i < m->nfields; i++)
          if (m->fields[i].oneof == f->oneof && &m->fields[i] != f) {
            lua_pushlstring(L, m->fields[i].name, m->fields[i].namelen);
            lua_pushnil(L);
            lua_rawset(L, t);
          }
      /* A message field that appears twice is merged in C++; the last wins here. */
      lua_pushlstring(L, f->name, f->namelen);
      pbdec_value(D, f, &p, end);
      lua_rawset(L, t);
    }
    if (fi < 256) seen[fi / 64] |= (uint64_t)1 << (fi % 64);
  }
  for (int i = 0; i < m->nfields; i++) {
    const struct pb_field *f = &m->fields[i];
    if (i < 256 ? (seen[i / 64] & ((uint64_t)1 << (i % 64))) != 0
                : (lua_pushlstring(L, f->name, f->namelen), lua_rawget(L, t) != LUA_TNIL)) {
      if (i >= 256) lua_pop(L, 1);
      continue;
    }
    if (i >= 256) lua_pop(L, 1);
    if (f->repeated) {
      lua_pushlstring(L, f->name, f->namelen);
      lua_newtable(L);
      lua_rawset(L, t);
    } else if (f->oneof < 0 && f->type != PB_MESSAGE && f->type != PB_GROUP) {
      lua_pushlstring(L, f->name, f->namelen);
      pbdec_default(D, f);
      lua_rawset(L, t);
    }
  }
  D->depth--;
}

/* pool:decode(index, bytes [, offset]) -> table. offset (0-based) skips a
 * prefix (the gRPC frame header) without copying. Raises a string error on
 * malformed input. */
int l_pbdec_decode(lua_State *L) {
  struct pb_pool *P = pb_check(L);
  lua_Integer idx = luaL_checkinteger(L, 2);
  luaL_argcheck(L, idx >= 1 && idx <= P->nmsgs, 2, "no such message");
  size_t n;
  const char *s = luaL_checklstring(L, 3, &n);
  lua_Integer off = luaL_optinteger(L, 4, 0);
  luaL_argcheck(L, off >= 0 && (size_t)off <= n, 4, "offset out of range");
  if (!P->msgs[idx - 1].defined)
    return luaL_error(L, "message type %s has no definition", P->msgs[idx - 1].name);
  struct pbdec D = {L, P, 0};
  pbdec_msg(&D, &P->msgs[idx - 1], (const uint8_t *)s + off, (const uint8_t *)s + n, 0);
  return 1;
}

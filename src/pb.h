/* pb.h — the protobuf codec's types, shared by pb.c (pools of message and
 * enum types, encoding) and pbdec.c (decoding). */
#ifndef ATOM_PB_H
#define ATOM_PB_H

#include "atom.h"

enum {
  PB_DOUBLE = 1,
  PB_FLOAT,
  PB_INT64,
  PB_UINT64,
  PB_INT32,
  PB_FIXED64,
  PB_FIXED32,
  PB_BOOL,
  PB_STRING,
  PB_GROUP,
  PB_MESSAGE,
  PB_BYTES,
  PB_UINT32,
  PB_ENUM,
  PB_SFIXED32,
  PB_SFIXED64,
  PB_SINT32,
  PB_SINT64
};
enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2, WT_SGROUP = 3, WT_EGROUP = 4, WT_I32 = 5 };
#define PB_MAX_DEPTH 100

struct pb_field {
  char *name;
  size_t namelen;
  uint32_t number;
  uint8_t type, wt;
  bool repeated, packed, implicit, map;
  int oneof; /* -1: none (a proto3 optional is a oneof of its own) */
  int sub;   /* message or enum index, -1 */
  lua_Integer def_i;
  double def_d;
  char *def_s; /* string/bytes default (proto2), may be NULL */
  size_t def_slen;
};

struct pb_msg {
  char *name;
  int nfields, noneofs;
  struct pb_field *fields; /* sorted by number */
  bool defined;
};

struct pb_enum {
  char *name;
  int n;
  int32_t *numbers;
  char **names;
};

struct wbuf {
  char *p;
  size_t len, cap;
};

struct pb_pool {
  struct pb_msg *msgs;
  int nmsgs, capmsgs;
  struct pb_enum *enums;
  int nenums, capenums;
  struct wbuf buf; /* scratch for encode, reused */
};

#define POOL_MT "atom.pb.pool"

/* The pool argument 1 (raises otherwise). */
struct pb_pool *pb_check(lua_State *L);
/* Numeric types: may be packed. */
bool pb_packable(int type);
/* pool:decode(index, bytes [, offset]) -> table */
int l_pbdec_decode(lua_State *L);

#endif

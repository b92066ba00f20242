/* lincheck.c — the linearizability checker behind h:check (SPEC §12).
 * Wing & Gong's search over a history with Lowe's memoisation: a cache of
 * (set of linearized operations, model state) pairs already explored, so no
 * configuration is searched twice. Histories are split by key first when
 * the model allows (P-compositionality: a history is linearizable iff each
 * key's sub-history is). The built-in models (register, cas-register, kv)
 * run in C on interned values; a Lua model runs in the job's worker state.
 *
 * On the loop thread, _atom.linearizable(events, opts) pairs invocations with
 * completions and turns values into ids; the search runs as a job (work.c),
 * so the loop keeps serving and a cancelled caller stops it.
 *
 * States are 32-bit ids: a register's state is the id of its value (0: nil),
 * a kv key's the id of its string (0: ""), a Lua model's the id of its state
 * value in canonical form. Equal ids mean equal states, so the cache
 * compares integers. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "work.h"

#define NOPOS INT64_MAX
#define MAXDEPTH 100

enum model { M_REGISTER, M_CAS, M_KV, M_LUA };
enum kind { K_READ, K_WRITE, K_CAS_OK, K_CAS_FAIL, K_CAS_INFO, K_GET, K_PUT, K_APPEND, K_LUA };

struct op {
  int64_t call, ret; /* event positions (1-based); ret is huge for info and open ops */
  uint32_t key;      /* partition id */
  uint32_t in, in2, out;
  uint32_t kind;
  int32_t lua; /* index of the op table in the worker (Lua models), else 0 */
};

/* {==== byte buffers and an interning table of byte strings ==== */

struct buf {
  char *p;
  size_t n, cap;
};

static void buf_add(struct buf *b, const void *s, size_t n) {
  if (n == 0) return;
  if (b->n + n > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + n) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) abort(); /* out of memory in a worker: nothing sensible to unwind to */
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->n, s, n);
  b->n += n;
}

static uint64_t hash_bytes(const char *s, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ n;
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, s, 8);
    h = (h ^ w) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    s += 8;
    n -= 8;
  }
  uint64_t w = 0;
  memcpy(&w, s, n);
  h = (h ^ w) * 0xc4ceb9fe1a85ec53ull;
  return h ^ (h >> 29);
}

static uint64_t mix64(uint64_t x) { /* splitmix64's finaliser */
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/* Byte strings -> dense ids 0, 1, ...; the bytes live in one arena. */
struct strtab {
  struct buf bytes;
  struct str {
    uint64_t hash;
    size_t off, len;
  } * strs;
  size_t n, cap;
  uint32_t *slots; /* id + 1, 0 empty */
  size_t nslots;
};

static void strtab_free(struct strtab *t) {
  free(t->bytes.p);
  free(t->strs);
  free(t->slots);
  memset(t, 0, sizeof *t);
}

static void strtab_grow(struct strtab *t) {
  size_t ns = t->nslots ? t->nslots * 2 : 64;
  uint32_t *slots = calloc(ns, sizeof *slots);
  if (!slots) abort();
  for (size_t i = 0; i < t->n; i++) {
    size_t s = t->strs[i].hash & (ns - 1);
    while (slots[s]) s = (s + 1) & (ns - 1);
    slots[s] = (uint32_t)i + 1;
  }
  free(t->slots);
  t->slots = slots;
  t->nslots = ns;
}

static uint32_t strtab_intern(struct strtab *t, const char *s, size_t len) {
  if (2 * (t->n + 1) > t->nslots) strtab_grow(t);
  uint64_t h = hash_bytes(s, len);
  size_t i = h & (t->nslots - 1);
  for (; t->slots[i]; i = (i + 1) & (t->nslots - 1)) {
    struct str *e = &t->strs[t->slots[i] - 1];
    if (e->hash == h && e->len == len && (len == 0 || memcmp(t->bytes.p + e->off, s, len) == 0))
      return t->slots[i] - 1;
  }
  if (t->n == t->cap) {
    t->cap = t->cap ? t->cap * 2 : 64;
    struct str *p = realloc(t->strs, t->cap * sizeof *p);
    if (!p) abort();
    t->strs = p;
  }
  /* s may point into the arena (a kv append): copy after growing it safely */
  size_t off = t->bytes.n;
  if (s >= t->bytes.p && s < t->bytes.p + t->bytes.cap) {
    size_t soff = (size_t)(s - t->bytes.p);
    for (size_t k = 0; k < len; k++) { /* arena may move while it grows */
      char c = t->bytes.p[soff + k];
      buf_add(&t->bytes, &c, 1);
    }
  } else {
    buf_add(&t->bytes, s, len);
  }
  t->strs[t->n] = (struct str){h, off, len};
  t->slots[i] = (uint32_t)t->n + 1;
  return (uint32_t)t->n++;
}

/* }==== */

/* {==== canonical form of a Lua value (equal values, equal bytes) ==== */

struct pair {
  char *p;
  size_t n;
};

static int pair_cmp(const void *a, const void *b) {
  const struct pair *x = a, *y = b;
  size_t n = x->n < y->n ? x->n : y->n;
  int c = n ? memcmp(x->p, y->p, n) : 0;
  return c ? c : (x->n > y->n) - (x->n < y->n);
}

static void canon_len(struct buf *b, size_t n) {
  char tmp[24];
  int k = snprintf(tmp, sizeof tmp, "%zu:", n);
  buf_add(b, tmp, (size_t)k);
}

/* Appends the canonical bytes of the value at idx; returns an error message. */
static const char *canon(lua_State *S, int idx, struct buf *b, int depth) {
  switch (lua_type(S, idx)) {
    case LUA_TNIL:
      buf_add(b, "n", 1);
      return NULL;
    case LUA_TBOOLEAN:
      buf_add(b, lua_toboolean(S, idx) ? "T" : "F", 1);
      return NULL;
    case LUA_TNUMBER: {
      char tmp[48];
      lua_Integer i;
      lua_Number x = lua_tonumber(S, idx);
      if (lua_isinteger(S, idx)) {
        i = lua_tointeger(S, idx);
      } else if (x == x && x >= -9.2e18 && x <= 9.2e18 && (lua_Number)(lua_Integer)x == x) {
        i = (lua_Integer)x; /* 3.0 == 3 in Lua, so in the history too */
      } else {
        if (x != x) return "NaN";
        int k = snprintf(tmp, sizeof tmp, "f%.17g;", x);
        buf_add(b, tmp, (size_t)k);
        return NULL;
      }
      int k = snprintf(tmp, sizeof tmp, "i%lld;", (long long)i);
      buf_add(b, tmp, (size_t)k);
      return NULL;
    }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(S, idx, &n);
      buf_add(b, "s", 1);
      canon_len(b, n);
      buf_add(b, s, n);
      return NULL;
    }
    case LUA_TLIGHTUSERDATA:
      if (!lua_touserdata(S, idx)) { /* json.null reads as nil */
        buf_add(b, "n", 1);
        return NULL;
      }
      return "a userdata";
    case LUA_TTABLE:
      break;
    default:
      return lua_type(S, idx) == LUA_TFUNCTION ? "a function" : "a userdata";
  }
  if (depth > MAXDEPTH) return "too deeply nested tables";
  if (!lua_checkstack(S, 4)) return "too deeply nested tables";
  idx = lua_absindex(S, idx);
  struct pair *pairs = NULL;
  size_t n = 0, cap = 0;
  const char *err = NULL;
  lua_pushnil(S);
  while (lua_next(S, idx)) {
    if (lua_type(S, -1) == LUA_TLIGHTUSERDATA && !lua_touserdata(S, -1)) {
      lua_pop(S, 1); /* a null field is an absent one */
      continue;
    }
    struct buf e = {0};
    if (!err) err = canon(S, -2, &e, depth + 1);
    if (!err) err = canon(S, -1, &e, depth + 1);
    lua_pop(S, 1);
    if (err) {
      free(e.p);
      lua_pop(S, 1);
      break;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 8;
      struct pair *p = realloc(pairs, cap * sizeof *p);
      if (!p) abort();
      pairs = p;
    }
    pairs[n++] = (struct pair){e.p, e.n};
  }
  if (!err) {
    if (n) qsort(pairs, n, sizeof *pairs, pair_cmp);
    buf_add(b, "t", 1);
    canon_len(b, n);
    for (size_t i = 0; i < n; i++) buf_add(b, pairs[i].p, pairs[i].n);
    buf_add(b, "e", 1);
  }
  for (size_t i = 0; i < n; i++) free(pairs[i].p);
  free(pairs);
  return err;
}

/* }==== */

/* {==== the search for one partition ==== */

struct cache_entry {
  uint64_t hash;
  uint32_t state, lo, nw;
  size_t off; /* words[lo, lo + nw) in the arena; below lo all ones, above zero */
};

struct search {
  struct chk *c;
  struct op *ops; /* the partition's operations, sorted by call */
  uint32_t n;
  /* the linked list of call and return entries (2n + 1: a head at 2n) */
  uint32_t *next, *prev, *match; /* match: call -> return entry */
  uint32_t *eop;                 /* entry -> op */
  uint64_t *bits, *zob;
  uint32_t nwords, lo, hi; /* bits below lo are all set; from hi up all clear */
  uint64_t hash;
  /* the cache */
  struct cache_entry *ents;
  size_t nents, capents;
  uint32_t *slots;
  size_t nslots;
  uint64_t *arena;
  size_t narena, caparena;
  /* the stack of linearized calls, their states before */
  uint32_t *stack_entry, *stack_state;
  uint32_t depth;
  /* the longest prefix seen and the op that could not follow it */
  uint32_t *best, nbest, same, bad;
};

struct chk {
  struct job base;
  enum model model;
  bool independent;
  double timeout;
  struct op *ops;
  uint32_t nops, nkeys; /* nkeys: 0 until the partitions are known */
  int64_t ninvokes;
  struct strtab vals; /* value ids (built-ins) and kv strings */
  struct strtab keys;
  struct strtab lstates; /* a Lua model's states, canonical */
  int keys_ref;          /* a table (in L) key id + 1 -> key value, built-in models */
  int states;            /* Lua models: W's stack index of the states list */
  bool lua_key, lua_equal;
  char *error; /* a Lua model's error (message + traceback) */
  /* the verdict */
  int valid; /* 1, 0, -1 unknown */
  double seconds;
  uint32_t bad_key; /* partition of the counterexample */
  int64_t *prefix;  /* call positions */
  uint32_t nprefix;
  int64_t bad_op;      /* call position */
  int64_t *concurrent; /* call positions */
  uint32_t nconcurrent;
  int64_t *lin;        /* every partition's linearization, partitions in key order */
  uint32_t *lin_start; /* nkeys + 1 offsets into lin */
  uint64_t deadline;   /* uv_hrtime ns */
  uint64_t steps;
};

static void bit_set(struct search *s, uint32_t i) {
  uint32_t w = i >> 6;
  s->bits[w] |= (uint64_t)1 << (i & 63);
  s->hash ^= s->zob[i];
  if (w >= s->hi) s->hi = w + 1;
  while (s->lo < s->nwords && s->bits[s->lo] == ~(uint64_t)0) s->lo++;
  if (s->hi < s->lo) s->hi = s->lo;
}

static void bit_clear(struct search *s, uint32_t i) {
  uint32_t w = i >> 6;
  s->bits[w] &= ~((uint64_t)1 << (i & 63));
  s->hash ^= s->zob[i];
  if (w < s->lo) s->lo = w;
  while (s->hi > s->lo && s->bits[s->hi - 1] == 0) s->hi--;
}

static void cache_grow(struct search *s) {
  size_t ns = s->nslots ? s->nslots * 2 : 1024;
  uint32_t *slots = calloc(ns, sizeof *slots);
  if (!slots) abort();
  for (size_t i = 0; i < s->nents; i++) {
    size_t k = s->ents[i].hash & (ns - 1);
    while (slots[k]) k = (k + 1) & (ns - 1);
    slots[k] = (uint32_t)i + 1;
  }
  free(s->slots);
  s->slots = slots;
  s->nslots = ns;
}

/* Adds (bits, state) to the cache; false when it was there already. */
static bool cache_add(struct search *s, uint32_t state) {
  if (2 * (s->nents + 1) > s->nslots) cache_grow(s);
  uint64_t h = s->hash ^ mix64(state);
  uint32_t lo = s->lo, nw = s->hi - s->lo;
  size_t k = h & (s->nslots - 1);
  for (; s->slots[k]; k = (k + 1) & (s->nslots - 1)) {
    struct cache_entry *e = &s->ents[s->slots[k] - 1];
    if (e->hash == h && e->state == state && e->lo == lo && e->nw == nw &&
        (nw == 0 || memcmp(s->arena + e->off, s->bits + lo, nw * sizeof(uint64_t)) == 0))
      return false;
  }
  if (s->nents == s->capents) {
    s->capents = s->capents ? s->capents * 2 : 1024;
    struct cache_entry *p = realloc(s->ents, s->capents * sizeof *p);
    if (!p) abort();
    s->ents = p;
  }
  if (s->narena + nw > s->caparena) {
    size_t cap = s->caparena ? s->caparena : 4096;
    while (cap < s->narena + nw) cap *= 2;
    uint64_t *p = realloc(s->arena, cap * sizeof *p);
    if (!p) abort();
    s->arena = p;
    s->caparena = cap;
  }
  if (nw) memcpy(s->arena + s->narena, s->bits + lo, nw * sizeof(uint64_t));
  s->ents[s->nents] = (struct cache_entry){h, state, lo, nw, s->narena};
  s->narena += nw;
  s->slots[k] = (uint32_t)++s->nents;
  return true;
}

static uint32_t lua_step(struct chk *c, uint32_t state, const struct op *op, bool *ok);

static const char *kv_str(struct chk *c, uint32_t id, size_t *len) {
  struct str *e = &c->vals.strs[id];
  *len = e->len;
  return c->vals.bytes.p + e->off;
}

/* One model step: the state after op from state, or false. */
static inline bool step(struct chk *c, uint32_t state, const struct op *op, uint32_t *next) {
  switch (op->kind) {
    case K_READ:
    case K_GET:
      *next = state;
      return state == op->out;
    case K_WRITE:
    case K_PUT:
      *next = op->in;
      return true;
    case K_CAS_OK:
      *next = op->in2;
      return state == op->in;
    case K_CAS_FAIL:
      *next = state;
      return state != op->in;
    case K_CAS_INFO:
      *next = state == op->in ? op->in2 : state;
      return true;
    case K_APPEND: {
      size_t la, lb;
      kv_str(c, state, &la);
      kv_str(c, op->in, &lb);
      if (lb == 0) {
        *next = state;
        return true;
      }
      char small[256];
      char *tmp = la + lb <= sizeof small ? small : malloc(la + lb);
      if (!tmp) abort();
      const char *a = kv_str(c, state, &la), *b = kv_str(c, op->in, &lb);
      if (la) memcpy(tmp, a, la);
      memcpy(tmp + la, b, lb);
      *next = strtab_intern(&c->vals, tmp, la + lb);
      if (tmp != small) free(tmp);
      return true;
    }
    default: {
      bool ok;
      *next = lua_step(c, state, op, &ok);
      return ok;
    }
  }
}

static int entry_cmp(const void *a, const void *b) {
  const int64_t *x = a, *y = b;
  return (x[0] > y[0]) - (x[0] < y[0]);
}

static void search_free(struct search *s) {
  free(s->next);
  free(s->prev);
  free(s->match);
  free(s->eop);
  free(s->bits);
  free(s->zob);
  free(s->ents);
  free(s->slots);
  free(s->arena);
  free(s->stack_entry);
  free(s->stack_state);
  free(s->best);
}

static void lift(struct search *s, uint32_t e) {
  s->next[s->prev[e]] = s->next[e];
  s->prev[s->next[e]] = s->prev[e];
  uint32_t m = s->match[e];
  s->next[s->prev[m]] = s->next[m];
  if (s->next[m] != UINT32_MAX) s->prev[s->next[m]] = s->prev[m];
}

static void unlift(struct search *s, uint32_t e) {
  uint32_t m = s->match[e];
  s->next[s->prev[m]] = m;
  if (s->next[m] != UINT32_MAX) s->prev[s->next[m]] = m;
  s->next[s->prev[e]] = e;
  s->prev[s->next[e]] = e;
}

static bool out_of_time(struct chk *c) {
  if (work_cancelled(&c->base)) return true;
  return c->deadline && uv_hrtime() > c->deadline;
}

/* 1 linearizable, 0 not, -1 cancelled or out of time. On 1 the stack holds a
 * linearization; on 0, best/bad the longest prefix and the op after it. */
static int search_run(struct search *s, uint32_t init) {
  struct chk *c = s->c;
  uint32_t n = s->n, head = 2 * n;
  /* entries: calls and returns in event order; op i's call is entry 2i */
  int64_t *order = malloc((size_t)2 * n * 2 * sizeof *order);
  s->next = malloc((2 * (size_t)n + 1) * sizeof *s->next);
  s->prev = malloc((2 * (size_t)n + 1) * sizeof *s->prev);
  s->match = malloc((2 * (size_t)n + 1) * sizeof *s->match);
  s->eop = malloc((2 * (size_t)n + 1) * sizeof *s->eop);
  s->nwords = (n + 63) / 64 + 1;
  s->bits = calloc(s->nwords, sizeof *s->bits);
  s->zob = malloc(((size_t)n + 1) * sizeof *s->zob);
  s->stack_entry = malloc(((size_t)n + 1) * sizeof *s->stack_entry);
  s->stack_state = malloc(((size_t)n + 1) * sizeof *s->stack_state);
  s->best = malloc(((size_t)n + 1) * sizeof *s->best);
  if (!order || !s->next || !s->prev || !s->match || !s->eop || !s->bits || !s->zob ||
      !s->stack_entry || !s->stack_state || !s->best)
    abort();
  for (uint32_t i = 0; i < n; i++) {
    int64_t ret = s->ops[i].ret == NOPOS ? NOPOS - n + i : s->ops[i].ret;
    order[4 * i] = s->ops[i].call;
    order[4 * i + 1] = 2 * (int64_t)i;
    order[4 * i + 2] = ret;
    order[4 * i + 3] = 2 * (int64_t)i + 1;
    s->zob[i] = mix64((uint64_t)i * 0x2545F4914F6CDD1Dull + 17);
    s->eop[2 * i] = s->eop[2 * i + 1] = i;
    s->match[2 * i] = 2 * i + 1;
    s->match[2 * i + 1] = UINT32_MAX;
  }
  qsort(order, 2 * (size_t)n, 2 * sizeof *order, entry_cmp);
  uint32_t last = head;
  for (size_t k = 0; k < 2 * (size_t)n; k++) {
    uint32_t e = (uint32_t)order[2 * k + 1];
    s->next[last] = e;
    s->prev[e] = last;
    last = e;
  }
  s->next[last] = UINT32_MAX;
  free(order);
  s->lo = s->hi = 0;
  s->hash = 0;
  s->depth = s->nbest = s->same = 0;
  s->bad = UINT32_MAX;
  uint32_t state = init, e = s->next[head];
  while (s->next[head] != UINT32_MAX) {
    /* a Lua model's step costs far more than a look at the clock */
    if (((++c->steps & 4095) == 0 || c->model == M_LUA) && out_of_time(c)) return -1;
    if (c->error) return -1;
    if (s->match[e] != UINT32_MAX) { /* a call: try to linearize it here */
      uint32_t i = s->eop[e], ns;
      if (step(c, state, &s->ops[i], &ns)) {
        bit_set(s, i);
        if (cache_add(s, ns)) {
          s->stack_entry[s->depth] = e;
          s->stack_state[s->depth] = state;
          if (s->same == s->depth && s->depth == s->nbest) { /* extends the best */
            s->best[s->nbest++] = i;
            s->same++;
          }
          s->depth++;
          state = ns;
          lift(s, e);
          e = s->next[head];
          continue;
        }
        bit_clear(s, i);
      }
      if (c->error) return -1;
      e = s->next[e];
    } else { /* a return: its op had to be linearized by now; back up */
      if (s->depth > s->nbest || s->bad == UINT32_MAX) {
        for (uint32_t k = s->same; k < s->depth; k++) s->best[k] = s->eop[s->stack_entry[k]];
        s->nbest = s->same = s->depth;
        s->bad = s->eop[e];
      }
      if (s->depth == 0) return 0;
      s->depth--;
      if (s->same > s->depth) s->same = s->depth;
      e = s->stack_entry[s->depth];
      state = s->stack_state[s->depth];
      bit_clear(s, s->eop[e]);
      unlift(s, e);
      e = s->next[e];
    }
  }
  return 1;
}

/* }==== */

/* {==== Lua models, in the worker ==== */

/* Worker stack: the model, op tables, states by id, the message handler,
 * keys by id (a model with a key function). */
enum { W_MODEL = 1, W_OPS, W_STATES, W_MSGH, W_KEYS };

static void lua_fail(struct chk *c) {
  lua_State *W = c->base.W;
  if (c->error) return;
  const char *m = lua_tostring(W, -1);
  if (lua_type(W, -1) == LUA_TTABLE) {
    lua_rawgeti(W, -1, 1);
    lua_rawgeti(W, -2, 2);
    m = lua_pushfstring(W, "%s\n%s", lua_tostring(W, -2), lua_tostring(W, -1));
  }
  c->error = strdup(m ? m : "error in the model");
  lua_settop(W, W_KEYS);
}

/* The id of the state value on top of W (popped). */
static bool lua_intern_state(struct chk *c, uint32_t *id) {
  lua_State *W = c->base.W;
  uint32_t n = (uint32_t)lua_rawlen(W, W_STATES);
  if (c->lua_equal) { /* no canonical form: compare with every known state */
    for (uint32_t i = 1; i <= n; i++) {
      lua_getfield(W, W_MODEL, "equal");
      lua_rawgeti(W, W_STATES, i);
      lua_pushvalue(W, -3);
      if (lua_pcall(W, 2, 1, W_MSGH) != LUA_OK) {
        lua_fail(c);
        return false;
      }
      bool eq = lua_toboolean(W, -1);
      lua_pop(W, 1);
      if (eq) {
        lua_pop(W, 1);
        *id = i - 1;
        return true;
      }
    }
    lua_rawseti(W, W_STATES, n + 1);
    *id = n;
    return true;
  }
  struct buf b = {0};
  const char *err = canon(W, -1, &b, 0);
  if (err) {
    free(b.p);
    lua_pushfstring(W, "the model's state contains %s (give the model an `equal`)", err);
    lua_fail(c);
    return false;
  }
  uint32_t k = strtab_intern(&c->lstates, b.p, b.n);
  free(b.p);
  if (k >= n)
    lua_rawseti(W, W_STATES, k + 1);
  else
    lua_pop(W, 1);
  *id = k;
  return true;
}

static uint32_t lua_step(struct chk *c, uint32_t state, const struct op *op, bool *ok) {
  lua_State *W = c->base.W;
  *ok = false;
  lua_getfield(W, W_MODEL, "step");
  lua_rawgeti(W, W_STATES, state + 1);
  lua_rawgeti(W, W_OPS, op->lua);
  if (lua_pcall(W, 2, 2, W_MSGH) != LUA_OK) {
    lua_fail(c);
    return 0;
  }
  if (!lua_toboolean(W, -2)) {
    lua_pop(W, 2);
    return 0;
  }
  lua_remove(W, -2);
  uint32_t id;
  if (!lua_intern_state(c, &id)) return 0;
  *ok = true;
  return id;
}

/* }==== */

/* {==== the job ==== */

static void chk_release(struct job *j) {
  struct chk *c = (struct chk *)j;
  free(c->ops);
  strtab_free(&c->vals);
  strtab_free(&c->keys);
  strtab_free(&c->lstates);
  free(c->error);
  free(c->prefix);
  free(c->concurrent);
  free(c->lin);
  free(c->lin_start);
}

static int op_key_cmp(const void *a, const void *b) {
  const struct op *x = a, *y = b;
  if (x->key != y->key) return (x->key > y->key) - (x->key < y->key);
  return (x->call > y->call) - (x->call < y->call);
}

static void chk_run(struct job *j) {
  struct chk *c = (struct chk *)j;
  uint64_t t0 = uv_hrtime();
  if (c->timeout > 0) c->deadline = t0 + (uint64_t)(c->timeout * 1e9);
  uint32_t init = 0;
  if (c->model == M_LUA) {
    lua_State *W = j->W;
    lua_getfield(W, W_MODEL, "init");
    if (lua_isnil(W, -1)) {
      lua_pop(W, 1);
      lua_pushnil(W);
    } else if (lua_pcall(W, 0, 1, W_MSGH) != LUA_OK) {
      lua_fail(c);
      return;
    }
    if (!lua_intern_state(c, &init)) return;
  }
  if (c->model == M_KV) init = 0; /* "" */
  if (c->lua_key) {               /* the model's key function splits the history */
    lua_State *W = j->W;
    for (uint32_t i = 0; i < c->nops; i++) {
      lua_getfield(W, W_MODEL, "key");
      lua_rawgeti(W, W_OPS, c->ops[i].lua);
      if (lua_pcall(W, 1, 1, W_MSGH) != LUA_OK) {
        lua_fail(c);
        return;
      }
      struct buf b = {0};
      const char *err = canon(W, -1, &b, 0);
      if (err) {
        free(b.p);
        lua_pushfstring(W, "the model's key returned %s", err);
        lua_fail(c);
        return;
      }
      uint32_t n = (uint32_t)c->keys.n, k = strtab_intern(&c->keys, b.p, b.n);
      free(b.p);
      if (k == n)
        lua_rawseti(W, W_KEYS, (lua_Integer)k + 1);
      else
        lua_pop(W, 1);
      c->ops[i].key = k;
    }
    c->nkeys = (uint32_t)c->keys.n;
  }
  /* partitions: sorted by key id, then by call (stable within a key) */
  if (c->nops) qsort(c->ops, c->nops, sizeof *c->ops, op_key_cmp);
  c->lin = malloc(((size_t)c->nops + 1) * sizeof *c->lin);
  c->lin_start = calloc((size_t)c->nkeys + 1, sizeof *c->lin_start);
  if (!c->lin || !c->lin_start) abort();
  c->valid = 1;
  uint32_t nlin = 0, p = 0;
  for (uint32_t k = 0; k < c->nkeys; k++) {
    c->lin_start[k] = nlin;
    uint32_t q = p;
    while (q < c->nops && c->ops[q].key == k) q++;
    struct search s = {.c = c, .ops = c->ops + p, .n = q - p};
    int r = s.n ? search_run(&s, init) : 1;
    if (r == 1) {
      for (uint32_t d = 0; d < s.depth; d++) c->lin[nlin++] = s.ops[s.eop[s.stack_entry[d]]].call;
    } else if (r == 0) {
      c->valid = 0;
      c->bad_key = k;
      c->nprefix = s.nbest;
      c->prefix = malloc(((size_t)s.nbest + 1) * sizeof *c->prefix);
      c->concurrent = malloc(((size_t)s.n + 1) * sizeof *c->concurrent);
      if (!c->prefix || !c->concurrent) abort();
      for (uint32_t d = 0; d < s.nbest; d++) c->prefix[d] = s.ops[s.best[d]].call;
      const struct op *bad = &s.ops[s.bad];
      c->bad_op = bad->call;
      c->nconcurrent = 0;
      for (uint32_t i = 0; i < s.n; i++)
        if (i != s.bad && s.ops[i].call < bad->ret && s.ops[i].ret > bad->call)
          c->concurrent[c->nconcurrent++] = s.ops[i].call;
    } else {
      c->valid = -1;
    }
    search_free(&s);
    p = q;
    if (r != 1) {
      for (uint32_t k2 = k + 1; k2 <= c->nkeys; k2++) c->lin_start[k2] = nlin;
      break;
    }
  }
  c->lin_start[c->nkeys] = nlin;
  c->seconds = (double)(uv_hrtime() - t0) / 1e9;
}

static void push_positions(lua_State *L, const int64_t *v, uint32_t n) {
  lua_createtable(L, (int)n, 0);
  for (uint32_t i = 0; i < n; i++) {
    lua_pushinteger(L, v[i]);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

static void push_key(struct chk *c, lua_State *L, uint32_t k) {
  if (c->keys_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->keys_ref);
    lua_rawgeti(L, -1, (lua_Integer)k + 1);
    lua_remove(L, -2);
  } else if (c->model == M_LUA && c->lua_key) {
    lua_State *W = c->base.W; /* the worker is idle now: read its key list */
    lua_rawgeti(W, W_KEYS, (lua_Integer)k + 1);
    if (work_copy(W, -1, L)) lua_pushnil(L);
    lua_pop(W, 1);
  } else {
    lua_pushnil(L);
  }
}

static int chk_done(struct job *j, lua_State *L) {
  struct chk *c = (struct chk *)j;
  if (c->error) {
    util_push_error(L, "work", "the model raised: %s", c->error);
    return -1;
  }
  lua_createtable(L, 0, 8);
  if (c->valid == 1)
    lua_pushboolean(L, 1);
  else if (c->valid == 0)
    lua_pushboolean(L, 0);
  else
    lua_pushliteral(L, "unknown");
  lua_setfield(L, -2, "valid");
  lua_pushinteger(L, c->ninvokes);
  lua_setfield(L, -2, "ops");
  lua_pushinteger(L, c->nkeys);
  lua_setfield(L, -2, "keys");
  lua_pushnumber(L, c->seconds);
  lua_setfield(L, -2, "seconds");
  lua_pushinteger(L, (lua_Integer)c->steps);
  lua_setfield(L, -2, "steps");
  if (c->valid == 0) {
    lua_createtable(L, 0, 4);
    push_key(c, L, c->bad_key);
    lua_setfield(L, -2, "key");
    push_positions(L, c->prefix, c->nprefix);
    lua_setfield(L, -2, "prefix");
    lua_pushinteger(L, c->bad_op);
    lua_setfield(L, -2, "op");
    push_positions(L, c->concurrent, c->nconcurrent);
    lua_setfield(L, -2, "concurrent");
    lua_setfield(L, -2, "counterexample");
  }
  /* linearizations: {{key =, order = {positions}}, ...} for the keys checked */
  lua_createtable(L, (int)c->nkeys, 0);
  for (uint32_t k = 0; k < c->nkeys; k++) {
    lua_createtable(L, 0, 2);
    push_key(c, L, k);
    lua_setfield(L, -2, "key");
    push_positions(L, c->lin + c->lin_start[k], c->lin_start[k + 1] - c->lin_start[k]);
    lua_setfield(L, -2, "order");
    lua_rawseti(L, -2, (lua_Integer)k + 1);
  }
  lua_setfield(L, -2, "linearizations");
  if (c->keys_ref != LUA_NOREF) util_unref(L, &c->keys_ref);
  return 1;
}

/* }==== */

/* {==== reading the history (loop thread) ==== */

struct reader {
  lua_State *L;
  struct chk *c;
  int keylist; /* stack index of the key list (key id + 1 -> key) */
  struct buf tmp;
  uint32_t cap;
};

/* Raises usage naming the event (the job is not queued yet: freed first). */
static int reader_fail(struct reader *r, lua_Integer ev, const char *fmt, const char *what) {
  lua_State *L = r->L;
  free(r->tmp.p);
  chk_release(&r->c->base);
  if (r->c->base.W) lua_close(r->c->base.W);
  if (r->c->keys_ref != LUA_NOREF) util_unref(L, &r->c->keys_ref);
  free(r->c);
  if (ev > 0)
    return util_error(L, "usage", "check: event #%I: %s", ev, lua_pushfstring(L, fmt, what));
  return util_error(L, "usage", "check: %s", lua_pushfstring(L, fmt, what));
}

/* Id of the value at idx among the values (0: nil). */
static uint32_t value_id(struct reader *r, lua_Integer ev, int idx) {
  lua_State *L = r->L;
  int t = lua_type(L, idx);
  if (t == LUA_TNIL || (t == LUA_TLIGHTUSERDATA && !lua_touserdata(L, idx))) return 0;
  r->tmp.n = 0;
  if (r->c->model == M_KV) {
    if (t != LUA_TSTRING && t != LUA_TNUMBER)
      reader_fail(r, ev, "kv values must be strings, got %s", luaL_typename(L, idx));
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    return strtab_intern(&r->c->vals, s, n);
  }
  const char *err = canon(L, idx, &r->tmp, 0);
  if (err) reader_fail(r, ev, "the value contains %s", err);
  return strtab_intern(&r->c->vals, r->tmp.p, r->tmp.n) + 1;
}

static uint32_t key_id(struct reader *r, lua_Integer ev, int idx) {
  lua_State *L = r->L;
  r->tmp.n = 0;
  const char *err = canon(L, idx, &r->tmp, 0);
  if (err) reader_fail(r, ev, "the key contains %s", err);
  uint32_t n = (uint32_t)r->c->keys.n;
  uint32_t k = strtab_intern(&r->c->keys, r->tmp.p, r->tmp.n);
  if (k == n) {
    lua_pushvalue(L, idx);
    lua_rawseti(L, r->keylist, (lua_Integer)k + 1);
  }
  return k;
}

static const char *field_str(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1); /* the string stays alive in the event table */
  return s;
}

static uint32_t model_kind(struct reader *r, lua_Integer ev, const char *f, const char *type) {
  bool ok = strcmp(type, "ok") == 0, fail = strcmp(type, "fail") == 0;
  switch (r->c->model) {
    case M_REGISTER:
    case M_CAS:
      if (strcmp(f, "read") == 0) return ok ? K_READ : UINT32_MAX;
      if (strcmp(f, "write") == 0) return fail ? UINT32_MAX : K_WRITE;
      if (r->c->model == M_CAS && strcmp(f, "cas") == 0)
        return ok ? K_CAS_OK : fail ? K_CAS_FAIL : K_CAS_INFO;
      return reader_fail(r, ev, "the register models know read, write and cas, not '%s'", f);
    case M_KV:
      if (strcmp(f, "get") == 0) return ok ? K_GET : UINT32_MAX;
      if (strcmp(f, "put") == 0) return fail ? UINT32_MAX : K_PUT;
      if (strcmp(f, "append") == 0) return fail ? UINT32_MAX : K_APPEND;
      return reader_fail(r, ev, "the kv model knows get, put and append, not '%s'", f);
    default:
      return fail ? UINT32_MAX : K_LUA;
  }
}

/* The part of a value the model sees: v of {key, v} when independent. */
static void push_part(struct reader *r, int idx, int keyidx) {
  lua_State *L = r->L;
  if (r->c->independent && lua_type(L, idx) == LUA_TTABLE) {
    lua_rawgeti(L, idx, 1);
    bool pair = keyidx == 0 || lua_compare(L, -1, keyidx, LUA_OPEQ);
    lua_pop(L, 1);
    if (pair) {
      lua_rawgeti(L, idx, 2);
      return;
    }
  }
  lua_pushvalue(L, idx);
}

/* One completed (or open) operation: invocation at stack index inv, completion
 * at done (0: open). */
static void add_op(struct reader *r, int inv, lua_Integer inv_ev, int done, lua_Integer done_ev) {
  lua_State *L = r->L;
  struct chk *c = r->c;
  const char *type = done ? field_str(L, done, "type") : "info";
  const char *f = field_str(L, inv, "f");
  if (!f) reader_fail(r, inv_ev, "an invocation needs a string f%s", "");
  c->ninvokes++;
  uint32_t kind = model_kind(r, inv_ev, f, type);
  if (kind == UINT32_MAX) return; /* never happened, or no effect and no result */
  struct op op = {.call = inv_ev, .ret = strcmp(type, "info") == 0 ? NOPOS : done_ev, .kind = kind};
  int top = lua_gettop(L);
  lua_getfield(L, inv, "value");
  int iv = lua_gettop(L);
  if (done)
    lua_getfield(L, done, "value");
  else
    lua_pushnil(L);
  int dv = lua_gettop(L);
  int keyidx = 0;
  if (c->model == M_KV) {
    if (lua_type(L, iv) != LUA_TTABLE)
      reader_fail(r, inv_ev, "kv values are tables {key =, value =}, got %s", luaL_typename(L, iv));
    lua_getfield(L, iv, "key");
    keyidx = lua_gettop(L);
    op.key = key_id(r, inv_ev, keyidx);
    lua_getfield(L, iv, "value");
    op.in = value_id(r, inv_ev, -1);
    if (lua_type(L, dv) == LUA_TTABLE)
      lua_getfield(L, dv, "value");
    else
      lua_pushvalue(L, dv);
    op.out = value_id(r, done_ev, -1);
  } else {
    if (c->independent) {
      if (lua_type(L, iv) != LUA_TTABLE)
        reader_fail(r, inv_ev, "with independent = true values are pairs {key, v}, got %s",
                    luaL_typename(L, iv));
      lua_rawgeti(L, iv, 1);
      keyidx = lua_gettop(L);
      op.key = key_id(r, inv_ev, keyidx);
    }
    push_part(r, iv, 0);
    int pin = lua_gettop(L);
    push_part(r, dv, keyidx);
    int pout = lua_gettop(L);
    if (c->model == M_LUA) {
      lua_State *W = c->base.W;
      lua_createtable(W, 0, 5);
      lua_pushstring(W, f);
      lua_setfield(W, -2, "f");
      lua_pushstring(W, type);
      lua_setfield(W, -2, "type");
      const char *err = work_copy(L, pin, W);
      if (err) reader_fail(r, inv_ev, "the value contains %s", err);
      lua_setfield(W, -2, "value");
      if (done && strcmp(type, "ok") == 0) {
        err = work_copy(L, pout, W);
        if (err) reader_fail(r, done_ev, "the value contains %s", err);
        lua_setfield(W, -2, "output");
      }
      lua_getfield(L, inv, "process");
      err = work_copy(L, -1, W);
      if (err) lua_pushnil(W);
      lua_setfield(W, -2, "process");
      op.lua = (int32_t)lua_rawlen(W, W_OPS) + 1;
      lua_rawseti(W, W_OPS, op.lua);
    } else if (kind == K_CAS_OK || kind == K_CAS_FAIL || kind == K_CAS_INFO) {
      if (lua_type(L, pin) != LUA_TTABLE)
        reader_fail(r, inv_ev, "a cas value is {from, to}, got %s", luaL_typename(L, pin));
      lua_rawgeti(L, pin, 1);
      op.in = value_id(r, inv_ev, -1);
      lua_rawgeti(L, pin, 2);
      op.in2 = value_id(r, inv_ev, -1);
    } else {
      op.in = value_id(r, inv_ev, pin);
      op.out = value_id(r, done_ev, pout);
    }
  }
  lua_settop(L, top);
  if (c->nops == r->cap) {
    r->cap = r->cap ? r->cap * 2 : 256;
    struct op *p = realloc(c->ops, r->cap * sizeof *p);
    if (!p) abort();
    c->ops = p;
  }
  c->ops[c->nops++] = op;
}

static void setup_lua_model(struct reader *r, int dumps) {
  lua_State *L = r->L, *W = r->c->base.W;
  static const char *const fns[] = {"init", "step", "key", "equal"};
  lua_createtable(W, 0, 4); /* W_MODEL */
  for (size_t i = 0; i < 4; i++) {
    lua_getfield(L, dumps, fns[i]);
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t n;
      const char *d = lua_tolstring(L, -1, &n);
      if (!work_load(W, d, n)) reader_fail(r, 0, "the model's %s cannot be loaded", fns[i]);
      lua_setfield(W, -2, fns[i]);
    }
    lua_pop(L, 1);
  }
  lua_getfield(W, W_MODEL, "key");
  r->c->lua_key = !lua_isnil(W, -1) && !r->c->independent;
  lua_getfield(W, W_MODEL, "equal");
  r->c->lua_equal = !lua_isnil(W, -1);
  lua_pop(W, 2);
  lua_newtable(W); /* W_OPS */
  lua_newtable(W); /* W_STATES */
  lua_pushcfunction(W, work_msgh);
  lua_newtable(W); /* W_KEYS */
}

/* _atom.linearizable(events, {model =, independent =, timeout =}) -> result */
static int l_linearizable(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TTABLE);
  struct task *t = sched_enter(L, "check");
  lua_settop(L, 2);
  lua_getfield(L, 2, "model"); /* 3 */
  enum model model = M_LUA;
  if (lua_type(L, 3) == LUA_TSTRING) {
    const char *m = lua_tostring(L, 3);
    if (strcmp(m, "register") == 0)
      model = M_REGISTER;
    else if (strcmp(m, "cas-register") == 0)
      model = M_CAS;
    else if (strcmp(m, "kv") == 0)
      model = M_KV;
    else
      return util_error(L, "usage",
                        "check: unknown model '%s' (register, cas-register, kv or a table)", m);
  } else if (lua_type(L, 3) != LUA_TTABLE) {
    return util_error(L, "usage", "check: model must be a name or a table, got %s",
                      luaL_typename(L, 3));
  }
  lua_newtable(L); /* 4: the Lua model's functions, dumped (usage names an upvalue) */
  if (model == M_LUA) {
    static const char *const fns[] = {"init", "step", "key", "equal"};
    for (size_t i = 0; i < 4; i++) {
      lua_getfield(L, 3, fns[i]);
      if (!lua_isnil(L, -1)) {
        char what[32];
        snprintf(what, sizeof what, "the model's %s", fns[i]);
        work_dump(L, -1, what);
        lua_setfield(L, 4, fns[i]);
      } else if (i == 1) {
        return util_error(L, "usage", "check: a model table needs a step function");
      }
      lua_settop(L, 4);
    }
  }
  lua_newtable(L); /* 5: process -> its open invocation's position */
  lua_newtable(L); /* 6: key id + 1 -> key */
  struct chk *c = calloc(1, sizeof *c);
  if (!c) return util_error(L, "io", "out of memory");
  c->keys_ref = LUA_NOREF;
  c->model = model;
  if (model == M_KV) strtab_intern(&c->vals, "", 0); /* id 0: nil reads as "" */
  struct reader r = {.L = L, .c = c, .keylist = 6};
  lua_getfield(L, 2, "independent");
  c->independent = lua_toboolean(L, -1) && model != M_KV;
  lua_getfield(L, 2, "timeout");
  c->timeout = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 60;
  lua_settop(L, 6);
  if (model == M_LUA) {
    if (!(c->base.W = work_state_new(&c->base))) return reader_fail(&r, 0, "out of memory%s", "");
    setup_lua_model(&r, 4);
  }
  lua_Integer nev = (lua_Integer)lua_rawlen(L, 1);
  for (lua_Integer i = 1; i <= nev; i++) {
    lua_rawgeti(L, 1, i); /* 7 */
    if (lua_type(L, 7) != LUA_TTABLE)
      reader_fail(&r, i, "an event is a table, got %s", luaL_typename(L, 7));
    const char *type = field_str(L, 7, "type");
    if (!type) reader_fail(&r, i, "an event needs a string type%s", "");
    lua_getfield(L, 7, "process"); /* 8 */
    if (lua_isnil(L, 8)) reader_fail(&r, i, "an event needs a process%s", "");
    lua_pushvalue(L, 8);
    lua_rawget(L, 5); /* 9: the open invocation's position */
    if (strcmp(type, "invoke") == 0) {
      if (!lua_isnil(L, 9))
        reader_fail(&r, i, "process %s invokes while its last operation is open",
                    luaL_tolstring(L, 8, NULL));
      lua_pushvalue(L, 8);
      lua_pushinteger(L, i);
      lua_rawset(L, 5);
    } else if (strcmp(type, "ok") == 0 || strcmp(type, "fail") == 0 || strcmp(type, "info") == 0) {
      if (lua_isnil(L, 9))
        reader_fail(&r, i, "process %s completes an operation it never invoked",
                    luaL_tolstring(L, 8, NULL));
      lua_Integer inv = lua_tointeger(L, 9);
      lua_rawgeti(L, 1, inv); /* 10 */
      add_op(&r, 10, inv, 7, i);
      lua_pushvalue(L, 8);
      lua_pushnil(L);
      lua_rawset(L, 5);
    } else {
      reader_fail(&r, i, "type must be invoke, ok, fail or info, not '%s'", type);
    }
    lua_settop(L, 6);
  }
  /* operations still open count as info */
  lua_pushnil(L);
  while (lua_next(L, 5)) {
    lua_Integer inv = lua_tointeger(L, -1);
    lua_rawgeti(L, 1, inv);
    add_op(&r, lua_gettop(L), inv, 0, 0);
    lua_settop(L, 7);
  }
  free(r.tmp.p);
  if (c->independent || model == M_KV) {
    c->nkeys = (uint32_t)c->keys.n;
    lua_pushvalue(L, 6);
    c->keys_ref = util_ref(L);
  } else if (!c->lua_key) {
    c->nkeys = c->nops ? 1 : 0;
  }
  lua_settop(L, 0);
  c->base.run = chk_run;
  c->base.done = chk_done;
  c->base.release = chk_release;
  c->base.w.what = "check";
  return work_start(L, t, &c->base);
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg lincheck_lib[] = {{"linearizable", l_linearizable}, {NULL, NULL}};

/* }==== */

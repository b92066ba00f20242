/* proxy.c — atom.proxy (SPEC §11): a TCP forwarder on libuv that can delay
 * (plus seeded jitter), rate-limit, blackhole or reset the bytes of each
 * direction, for connections already open and new ones. Works in every run:
 * no namespaces, no root. lua/atom/net.lua holds the policy (arguments,
 * merging settings, ownership); this file moves bytes.
 *
 * Each connection has two directions, up (client -> upstream) and down.
 * A direction is a queue of chunks read from its source, each with the time
 * it may leave; a chunk is written to the other side once due, in order.
 * Reading stops while a direction holds more than HIGH_WATER bytes, so a
 * slow side never makes the proxy buffer without bound. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom.h"

#define PROXY_MT "atom.proxy"
#define HIGH_WATER (4 * 1024 * 1024)
#define READ_SIZE (64 * 1024)

enum { UP, DOWN };

struct pxset {
  double delay, jitter, rate; /* seconds, seconds, bytes per second (0: none) */
  bool blackhole, reset;
};

struct chunk {
  struct chunk *next;
  struct pconn *pc;
  int d;
  uint64_t due; /* uv_hrtime ns */
  uv_write_t req;
  size_t len;
  char data[];
};

struct pdir {
  struct pconn *pc;
  int d;
  struct chunk *head, *tail;
  size_t queued;     /* read and not yet written out */
  uint64_t last_due; /* chunks leave in order */
  uint64_t pace;     /* rate limit: the next chunk may not leave before this */
  struct timer t;
  bool eof, shut, stopped;
};

struct proxy;

/* A side's handle and where it belongs (handle->data stays NULL: atom.h). */
struct pside {
  uv_tcp_t tcp;
  struct pconn *pc;
  int s;
};

struct pconn {
  struct proxy *px;
  struct pside side[2]; /* 0: the client, 1: upstream */
  uv_connect_t creq;
  uv_shutdown_t sreq[2];
  struct pdir dir[2];
  int handles; /* side handles not yet closed */
  int shut_done;
  bool connected, closing, doomed;
  struct pconn *next, *prev;
};

struct proxy {
  uv_tcp_t listener;
  struct sockaddr_storage upstream;
  struct pxset set[2];
  uint64_t rng;
  double connections;
  int open;
  double bytes[2];
  struct pconn *conns;
  bool closed, listener_open, ud_alive;
};

struct pud {
  struct proxy *px;
};

/* {==== randomness for jitter: splitmix64, seeded from math.random ==== */

static double rnd(struct proxy *px) {
  uint64_t z = (px->rng += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return (double)(z >> 11) / 9007199254740992.0; /* [0, 1) */
}

/* }==== */

/* {==== lifetime ==== */

static void proxy_maybe_free(struct proxy *px) {
  if (px->ud_alive || px->listener_open || px->conns) return;
  free(px);
}

static void chunk_free_list(struct chunk *c) {
  while (c) {
    struct chunk *n = c->next;
    free(c);
    c = n;
  }
}

static void conn_free_cb(uv_handle_t *h) {
  struct pconn *c = container_of((uv_tcp_t *)h, struct pside, tcp)->pc;
  if (--c->handles > 0) return;
  struct proxy *px = c->px;
  if (c->prev)
    c->prev->next = c->next;
  else
    px->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  free(c);
  proxy_maybe_free(px);
}

/* End the connection: sides in reset_mask (1: client, 2: upstream) get an
 * RST, the others a plain close. Chunks being written are freed by their
 * write callbacks, which libuv runs before the close callbacks. */
static void conn_close(struct pconn *pc, int reset_mask) {
  if (pc->closing) return;
  pc->closing = true;
  pc->px->open--;
  for (int d = 0; d < 2; d++) {
    timer_stop(&pc->dir[d].t);
    chunk_free_list(pc->dir[d].head);
    pc->dir[d].head = pc->dir[d].tail = NULL;
  }
  for (int s = 0; s < 2; s++) {
    uv_handle_t *h = (uv_handle_t *)&pc->side[s].tcp;
    if (uv_is_closing(h)) { /* the runtime closed every handle at exit */
      pc->handles--;
      continue;
    }
    if ((reset_mask & (1 << s)) && (s == 0 || pc->connected))
      uv_tcp_close_reset(&pc->side[s].tcp, conn_free_cb);
    else
      uv_close(h, conn_free_cb);
  }
}

/* }==== */

/* {==== moving bytes ==== */

static void pump(struct pdir *pd);
static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b);

/* A chunk's data; read_cb finds the chunk again from it (container_of). */
static char *chunk_data(struct chunk *c) { return c ? c->data : NULL; }

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  (void)h;
  (void)suggested;
  b->base = chunk_data(malloc(sizeof(struct chunk) + READ_SIZE));
  b->len = b->base ? READ_SIZE : 0;
}

static void reading(struct pconn *pc, int d, bool on) {
  struct pdir *pd = &pc->dir[d];
  if (pc->closing || pd->eof || pd->stopped == !on) return;
  pd->stopped = !on;
  if (on)
    uv_read_start((uv_stream_t *)&pc->side[d].tcp, alloc_cb, read_cb);
  else
    uv_read_stop((uv_stream_t *)&pc->side[d].tcp);
}

static void write_cb(uv_write_t *req, int status) {
  struct chunk *c = container_of(req, struct chunk, req);
  struct pconn *pc = c->pc;
  struct pdir *pd = &pc->dir[c->d];
  pd->queued -= c->len;
  free(c);
  if (pc->closing) return;
  if (status < 0) {
    conn_close(pc, 3);
    return;
  }
  if (pd->stopped && pd->queued < HIGH_WATER / 2) reading(pc, pd->d, true);
}

/* Both ways shut down and flushed: the connection is over. */
static void shutdown_cb(uv_shutdown_t *req, int status) {
  struct pconn *pc = req->data;
  if (pc->closing) return;
  if (status < 0 || ++pc->shut_done == 2) conn_close(pc, 0);
}

static void pump_cb(struct timer *t) { pump(container_of(t, struct pdir, t)); }

/* Write every chunk that is due; arm the timer for the next one. */
static void pump(struct pdir *pd) {
  struct pconn *pc = pd->pc;
  if (pc->closing || !pc->connected) return;
  const struct pxset *set = &pc->px->set[pd->d];
  uv_stream_t *dst = (uv_stream_t *)&pc->side[1 - pd->d].tcp;
  uint64_t now = uv_hrtime();
  while (pd->head) {
    struct chunk *c = pd->head;
    uint64_t at = c->due > pd->pace ? c->due : pd->pace;
    if (at > now) {
      timer_start(&pd->t, (double)(at - now) / 1e9, pump_cb);
      return;
    }
    pd->head = c->next;
    if (!pd->head) pd->tail = NULL;
    if (set->rate > 0)
      pd->pace = (pd->pace > now ? pd->pace : now) + (uint64_t)(c->len / set->rate * 1e9);
    pc->px->bytes[pd->d] += (double)c->len;
    uv_buf_t b = uv_buf_init(c->data, (unsigned)c->len);
    if (uv_write(&c->req, dst, &b, 1, write_cb) < 0) {
      pd->queued -= c->len;
      free(c);
      conn_close(pc, 3);
      return;
    }
  }
  if (pd->eof && !pd->shut) {
    pd->shut = true;
    pc->sreq[pd->d].data = pc;
    if (uv_shutdown(&pc->sreq[pd->d], dst, shutdown_cb) < 0) conn_close(pc, 0);
  }
}

static void enqueue(struct pdir *pd, struct chunk *c) {
  c->next = NULL;
  if (pd->tail)
    pd->tail->next = c;
  else
    pd->head = c;
  pd->tail = c;
  pd->queued += c->len;
}

static void read_cb(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  struct chunk *c = b->base ? container_of(b->base, struct chunk, data) : NULL;
  struct pside *side = container_of((uv_tcp_t *)s, struct pside, tcp);
  struct pconn *pc = side->pc;
  int d = side->s; /* reading the client is the up direction */
  struct pdir *pd = &pc->dir[d];
  if (pc->doomed && n != 0) { /* accepted while a reset was in force */
    free(c);
    conn_close(pc, 1);
    return;
  }
  if (n <= 0) {
    free(c);
    if (n == 0) return;
    if (n == UV_EOF) {
      pd->eof = true;
      uv_read_stop(s);
      pump(pd);
    } else { /* the peer reset or failed: pass it on */
      conn_close(pc, d == UP ? 2 : 1);
    }
    return;
  }
  const struct pxset *set = &pc->px->set[d];
  if (set->blackhole) {
    free(c);
    return;
  }
  uint64_t now = uv_hrtime();
  double delay = set->delay;
  if (set->jitter > 0) delay += (2 * rnd(pc->px) - 1) * set->jitter;
  uint64_t due = now + (uint64_t)(delay > 0 ? delay * 1e9 : 0);
  if (due < pd->last_due) due = pd->last_due;
  pd->last_due = due;
  /* Under a rate limit, pieces of ~20 ms each, so the pace is smooth. */
  size_t piece = (size_t)n;
  if (set->rate > 0) {
    double p = set->rate / 50;
    piece = p < 1 ? 1 : p > (double)n ? (size_t)n : (size_t)p;
  }
  if (piece >= (size_t)n) {
    struct chunk *r = realloc(c, sizeof *c + (size_t)n);
    if (r) c = r;
    c->pc = pc, c->d = d, c->due = due, c->len = (size_t)n;
    enqueue(pd, c);
  } else {
    for (size_t off = 0; off < (size_t)n; off += piece) {
      size_t len = (size_t)n - off < piece ? (size_t)n - off : piece;
      struct chunk *p = malloc(sizeof *p + len);
      if (!p) break;
      memcpy(p->data, c->data + off, len);
      p->pc = pc, p->d = d, p->due = due, p->len = len;
      enqueue(pd, p);
    }
    free(c);
  }
  if (pd->queued > HIGH_WATER) reading(pc, d, false);
  /* An armed timer waits for an earlier chunk; this one leaves after it. */
  if (!timer_active(&pd->t)) pump(pd);
}

static void connect_cb(uv_connect_t *req, int status) {
  struct pconn *pc = container_of(req, struct pconn, creq);
  if (pc->closing) return;
  if (status < 0) {
    conn_close(pc, 1); /* the client sees a reset, as if the server refused */
    return;
  }
  pc->connected = true;
  reading(pc, UP, true);
  reading(pc, DOWN, true);
}

static void accept_cb(uv_stream_t *server, int status) {
  struct proxy *px = container_of((uv_tcp_t *)server, struct proxy, listener);
  if (status < 0 || px->closed) return;
  struct pconn *pc = calloc(1, sizeof *pc);
  if (!pc) return;
  pc->px = px;
  for (int s = 0; s < 2; s++) {
    uv_tcp_init(atom_loop, &pc->side[s].tcp);
    pc->side[s].pc = pc;
    pc->side[s].s = s;
    pc->dir[s].pc = pc;
    pc->dir[s].d = s;
    pc->dir[s].stopped = true;
    timer_init(&pc->dir[s].t);
  }
  pc->handles = 2;
  pc->next = px->conns;
  if (px->conns) px->conns->prev = pc;
  px->conns = pc;
  px->open++;
  px->connections++;
  if (uv_accept(server, (uv_stream_t *)&pc->side[0].tcp) < 0) {
    conn_close(pc, 0);
    return;
  }
  uv_tcp_nodelay(&pc->side[0].tcp, 1);
  uv_tcp_nodelay(&pc->side[1].tcp, 1);
  if (px->set[UP].reset || px->set[DOWN].reset) {
    /* Reset once the client has sent something (its request): a reset
     * before that would look like a refused connection to most clients. */
    pc->doomed = true;
    reading(pc, UP, true);
    return;
  }
  if (uv_tcp_connect(&pc->creq, &pc->side[1].tcp, (struct sockaddr *)&px->upstream, connect_cb) < 0)
    conn_close(pc, 1);
}

/* }==== */

/* {==== Lua ==== */

static void proxy_close(struct proxy *px);

static struct proxy *check_px(lua_State *L) {
  struct pud *u = luaL_checkudata(L, 1, PROXY_MT);
  if (!u->px || u->px->closed) {
    util_error(L, "io", "proxy is closed");
  }
  return u->px;
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss) {
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  if (uv_ip4_addr(host, port, (struct sockaddr_in *)ss) == 0) return 0;
  return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
}

/* _atom.proxy_new(listen_host, listen_port, up_host, up_port, seed) -> ud, host, port */
static int l_proxy_new(lua_State *L) {
  const char *lhost = luaL_checkstring(L, 1);
  int lport = (int)luaL_checkinteger(L, 2);
  const char *uhost = luaL_checkstring(L, 3);
  int uport = (int)luaL_checkinteger(L, 4);
  lua_Integer seed = luaL_checkinteger(L, 5);
  struct sockaddr_storage la;
  struct proxy *px = calloc(1, sizeof *px);
  if (!px) return util_error(L, "io", "out of memory");
  if (parse_addr(uhost, uport, &px->upstream) != 0) {
    free(px);
    return util_error(L, "usage",
                      "bad argument #1 to 'proxy' (upstream host must be an IP address or "
                      "localhost, got '%s')",
                      uhost);
  }
  if (parse_addr(lhost, lport, &la) != 0) {
    free(px);
    return util_error(L, "usage",
                      "bad argument #1 to 'proxy' (listen host must be an IP address, got '%s')",
                      lhost);
  }
  px->rng = (uint64_t)seed;
  uv_tcp_init(atom_loop, &px->listener);
  px->listener.data = NULL;
  px->listener_open = true;
  struct pud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->px = px;
  px->ud_alive = true;
  luaL_setmetatable(L, PROXY_MT);
  int r = uv_tcp_bind(&px->listener, (struct sockaddr *)&la, 0);
  if (r == 0) r = uv_listen((uv_stream_t *)&px->listener, 511, accept_cb);
  if (r < 0) {
    proxy_close(px); /* __gc frees it */
    return util_error(L, "io", "proxy: cannot listen on %s:%d: %s", lhost, lport, uv_strerror(r));
  }
  struct sockaddr_storage got;
  int len = sizeof got;
  uv_tcp_getsockname(&px->listener, (struct sockaddr *)&got, &len);
  char name[64] = "";
  int port;
  if (got.ss_family == AF_INET6) {
    uv_ip6_name((struct sockaddr_in6 *)&got, name, sizeof name);
    port = ntohs(((struct sockaddr_in6 *)&got)->sin6_port);
  } else {
    uv_ip4_name((struct sockaddr_in *)&got, name, sizeof name);
    port = ntohs(((struct sockaddr_in *)&got)->sin_port);
  }
  lua_pushstring(L, name);
  lua_pushinteger(L, port);
  return 3;
}

/* ud:apply(dir, delay, jitter, rate, blackhole, reset): dir 0 up, 1 down. */
static int l_apply(lua_State *L) {
  struct proxy *px = check_px(L);
  int d = (int)luaL_checkinteger(L, 2);
  if (d != UP && d != DOWN) return luaL_argerror(L, 2, "direction");
  struct pxset *s = &px->set[d];
  s->delay = luaL_checknumber(L, 3);
  s->jitter = luaL_checknumber(L, 4);
  s->rate = luaL_checknumber(L, 5);
  s->blackhole = lua_toboolean(L, 6);
  s->reset = lua_toboolean(L, 7);
  /* Existing connections: a blackhole discards what waits; a reset ends them. */
  struct pconn *next;
  for (struct pconn *pc = px->conns; pc; pc = next) {
    next = pc->next;
    if (pc->closing) continue;
    struct pdir *pd = &pc->dir[d];
    if (s->blackhole) {
      for (struct chunk *c = pd->head; c; c = c->next) pd->queued -= c->len;
      chunk_free_list(pd->head);
      pd->head = pd->tail = NULL;
      if (pd->stopped) reading(pc, d, true);
    }
    /* Chunks already waiting keep their due time; a shorter delay can release them sooner. */
    if (s->rate == 0) pd->pace = 0;
    if (s->delay == 0 && s->jitter == 0) {
      for (struct chunk *c = pd->head; c; c = c->next) c->due = 0;
      pd->last_due = 0;
    }
    timer_stop(&pd->t);
    pump(pd);
  }
  return 0;
}

/* ud:kick(): after apply, reset every open connection when a reset is in
 * force (the client side for down, upstream for up). */
static int l_kick(lua_State *L) {
  struct proxy *px = check_px(L);
  int mask = (px->set[DOWN].reset ? 1 : 0) | (px->set[UP].reset ? 2 : 0);
  if (!mask) return 0;
  struct pconn *next;
  for (struct pconn *pc = px->conns; pc; pc = next) {
    next = pc->next;
    conn_close(pc, mask);
  }
  return 0;
}

/* ud:stats() -> connections, open, bytes_up, bytes_down */
static int l_stats(lua_State *L) {
  struct pud *u = luaL_checkudata(L, 1, PROXY_MT);
  struct proxy *px = u->px;
  lua_pushinteger(L, px ? (lua_Integer)px->connections : 0);
  lua_pushinteger(L, px ? px->open : 0);
  lua_pushinteger(L, px ? (lua_Integer)px->bytes[UP] : 0);
  lua_pushinteger(L, px ? (lua_Integer)px->bytes[DOWN] : 0);
  return 4;
}

static void listener_close_cb(uv_handle_t *h) {
  struct proxy *px = container_of((uv_tcp_t *)h, struct proxy, listener);
  px->listener_open = false;
  proxy_maybe_free(px);
}

static void proxy_close(struct proxy *px) {
  if (!px->closed || px->listener_open) {
    px->closed = true;
    if (px->listener_open && !uv_is_closing((uv_handle_t *)&px->listener))
      uv_close((uv_handle_t *)&px->listener, listener_close_cb);
  }
  struct pconn *next;
  for (struct pconn *pc = px->conns; pc; pc = next) {
    next = pc->next;
    conn_close(pc, 0);
  }
}

static int l_close(lua_State *L) {
  struct pud *u = luaL_checkudata(L, 1, PROXY_MT);
  if (u->px) proxy_close(u->px);
  return 0;
}

static int l_gc(lua_State *L) {
  struct pud *u = luaL_checkudata(L, 1, PROXY_MT);
  struct proxy *px = u->px;
  if (!px) return 0;
  u->px = NULL;
  proxy_close(px);
  px->ud_alive = false;
  proxy_maybe_free(px);
  return 0;
}

/* }==== */

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg proxy_lib[] = {{"proxy_new", l_proxy_new}, {NULL, NULL}};

void proxy_register(lua_State *L) {
  if (luaL_newmetatable(L, PROXY_MT)) {
    static const luaL_Reg m[] = {
        {"apply", l_apply}, {"kick", l_kick}, {"stats", l_stats}, {"close", l_close}, {NULL, NULL}};
    lua_newtable(L);
    luaL_setfuncs(L, m, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}

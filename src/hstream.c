/* hstream.c — `atom.http.stream` (SPEC §10): an HTTP response read as it
 * arrives, on the curl multi handle of curlm.c. The request is set up as
 * http.c's; the call returns once the headers are in, then the body lands in
 * a bounded buffer (curl's write callback) that resp:read empties. When the
 * buffer holds LIMIT bytes the write callback pauses the transfer
 * (CURL_WRITEFUNC_PAUSE: curl stops reading the socket) and the next read
 * resumes it. lua/atom/hstream.lua adds lines, sse, events and ownership. */
#include <stdlib.h>
#include <string.h>

#include "atom.h"
#include "curlm.h"

#define HS_MT "atom.http_stream"
#define LIMIT (16u << 20)

enum { HS_HEAD, HS_BODY, HS_DONE, HS_CLOSED };

struct hs {
  struct wait w;
  struct xfer x;
  CURL *easy;
  struct task *waiter; /* in the call (headers) or in read */
  int state;
  bool in_multi, paused, follow;
  CURLcode rc;
  struct curl_slist *hdrs;
  char *reqbody;
  char *head;
  size_t head_len, head_cap;
  char *buf; /* unread body: buf[start, start + len) */
  size_t start, len, cap;
  char desc[512];
  char errbuf[CURL_ERROR_SIZE];
};

struct hud {
  struct hs *h;
};

static bool grow(char **p, size_t *cap, size_t need) {
  if (need <= *cap) return true;
  size_t c = *cap ? *cap : 16384;
  while (c < need) c *= 2;
  char *q = realloc(*p, c);
  if (!q) return false;
  *p = q;
  *cap = c;
  return true;
}

static void hs_free(struct hs *h) {
  if (h->in_multi) curlm_remove(h->easy);
  h->in_multi = false;
  if (h->easy) cu.easy_cleanup(h->easy);
  if (h->hdrs) cu.slist_free_all(h->hdrs);
  free(h->reqbody);
  free(h->head);
  free(h->buf);
  free(h);
}

/* The transport error of a failed transfer, on L. */
static void push_failure(lua_State *L, struct hs *h, struct task *task) {
  const char *detail = h->errbuf[0] ? h->errbuf : cu.easy_strerror(h->rc);
  if (h->rc == CURLE_OPERATION_TIMEDOUT) {
    util_push_error(L, "timeout", "%s timed out (%s)", h->desc, detail);
  } else {
    util_push_error(L, "http", "%s: %s", h->desc, detail);
    lua_pushstring(L, http_cause_of(&h->x, h->errbuf, h->rc));
    lua_setfield(L, -2, "cause");
  }
  if (task) {
    sched_task_name(L, task);
    lua_setfield(L, -2, "task");
  }
}

/* Results of a read, pushed on L: 1 value, -1 an error, 0 nothing yet. */
static int produce(lua_State *L, struct hs *h, struct task *task) {
  if (h->len > 0) {
    lua_pushlstring(L, h->buf + h->start, h->len);
    h->start = h->len = 0;
    if (h->paused) { /* curl hands over what it holds at once (write_cb) */
      h->paused = false;
      cu.easy_pause(h->easy, CURLPAUSE_CONT);
    }
    return 1;
  }
  if (h->state == HS_DONE) {
    if (h->rc != CURLE_OK) {
      push_failure(L, h, task);
      return -1;
    }
    lua_pushnil(L);
    return 1;
  }
  if (h->state == HS_CLOSED) {
    util_push_error(L, "io", "%s: stream closed", h->desc);
    lua_pushliteral(L, "closed");
    lua_setfield(L, -2, "cause");
    return -1;
  }
  return 0;
}

static void wake_reader(struct hs *h) {
  if (!h->waiter || h->state == HS_HEAD) return;
  lua_State *co = sched_thread(&h->w);
  lua_checkstack(co, 4);
  struct task *t = h->waiter;
  int r = produce(co, h, t);
  if (r == 0) return;
  h->waiter = NULL;
  if (r > 0)
    sched_wake(&h->w, 1);
  else
    sched_wake_error(&h->w);
}

/* The headers are in: wake the call with status and headers. */
static void headers_done(struct hs *h) {
  h->state = HS_BODY;
  if (!h->waiter) return;
  lua_State *co = sched_thread(&h->w);
  lua_checkstack(co, 6);
  lua_pushvalue(co, 10); /* the handle, on the waiting call's stack (l_http_stream) */
  long status = 0;
  cu.easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
  lua_pushinteger(co, status);
  http_push_headers(co, h->head, h->head_len);
  h->waiter = NULL;
  sched_wake(&h->w, 3);
}

static size_t header_cb(char *p, size_t size, size_t n, void *ud) {
  struct hs *h = ud;
  size_t len = size * n;
  if (h->state != HS_HEAD) return len; /* trailers */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) h->head_len = 0;
  if (!grow(&h->head, &h->head_cap, h->head_len + len)) return 0;
  memcpy(h->head + h->head_len, p, len);
  h->head_len += len;
  if ((len == 2 && p[0] == '\r') || (len == 1 && p[0] == '\n')) {
    long status = 0;
    cu.easy_getinfo(h->easy, CURLINFO_RESPONSE_CODE, &status);
    char *loc = NULL;
    cu.easy_getinfo(h->easy, CURLINFO_REDIRECT_URL, &loc);
    /* 1xx blocks, and redirects that curl follows, are not the response */
    if (status >= 200 && !(h->follow && status >= 300 && status < 400 && loc)) headers_done(h);
  }
  return len;
}

static size_t write_cb(char *p, size_t size, size_t n, void *ud) {
  struct hs *h = ud;
  size_t len = size * n;
  if (h->state == HS_HEAD) headers_done(h);
  if (h->len > 0 && h->len + len > LIMIT) {
    h->paused = true;
    return CURL_WRITEFUNC_PAUSE;
  }
  if (h->start > 0 && h->start + h->len + len > h->cap) {
    memmove(h->buf, h->buf + h->start, h->len);
    h->start = 0;
  }
  if (!grow(&h->buf, &h->cap, h->start + h->len + len)) return 0;
  memcpy(h->buf + h->start + h->len, p, len);
  h->len += len;
  wake_reader(h);
  return len;
}

static void done_cb(struct xfer *x, CURLcode rc) {
  struct hs *h = container_of(x, struct hs, x);
  h->in_multi = false;
  h->rc = rc;
  if (h->state == HS_HEAD) { /* failed (or ended) before any header block ended */
    if (rc == CURLE_OK) {
      headers_done(h);
    } else if (h->waiter) {
      lua_State *co = sched_thread(&h->w);
      lua_checkstack(co, 4);
      push_failure(co, h, h->waiter);
      h->waiter = NULL;
      h->state = HS_DONE;
      sched_wake_error(&h->w);
      return;
    }
  }
  h->state = HS_DONE;
  wake_reader(h);
}

/* The call or a read stopped waiting (cancel, timeout). A call that never got
 * its headers aborts the transfer; a read just stops waiting. */
static void wait_cancel(struct wait *w) {
  struct hs *h = container_of(w, struct hs, w);
  h->waiter = NULL;
  if (h->state == HS_HEAD) {
    if (h->in_multi) curlm_remove(h->easy);
    h->in_multi = false;
    h->state = HS_CLOSED;
  }
}

/* _atom.http_stream(fname, method, url, headers|nil, body|nil, timeout, flags,
 * proxy|nil, desc) -> handle, status, headers. */
static int l_http_stream(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  struct task *t = sched_enter(L, fname);
  const char *method = luaL_checkstring(L, 2);
  const char *url = luaL_checkstring(L, 3);
  size_t blen = 0;
  const char *body = lua_isnil(L, 5) ? NULL : luaL_checklstring(L, 5, &blen);
  double timeout = luaL_checknumber(L, 6);
  int flags = (int)luaL_checkinteger(L, 7);
  const char *proxy = luaL_optstring(L, 8, "");
  const char *desc = luaL_checkstring(L, 9);
  lua_settop(L, 9);
  char err[256];
  if (!curlm_start(err, sizeof err)) return util_error(L, "http", "%s: %s", desc, err);
  struct hud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->h = NULL;
  luaL_setmetatable(L, HS_MT);
  struct hs *h = calloc(1, sizeof *h);
  if (!h) return util_error(L, "http", "%s: out of memory", desc);
  u->h = h;
  snprintf(h->desc, sizeof h->desc, "%s", desc);
  h->easy = curlm_easy_new();
  if (!h->easy) return util_error(L, "http", "%s: out of memory", desc);
  if (body) {
    h->reqbody = malloc(blen + 1);
    if (!h->reqbody) return util_error(L, "http", "%s: out of memory", desc);
    memcpy(h->reqbody, body, blen);
  }
  h->hdrs =
      http_setup(L, h->easy, 4, method, url, body ? h->reqbody : NULL, blen, flags, proxy, fname);
  cu.easy_setopt(h->easy, CURLOPT_WRITEFUNCTION, write_cb);
  cu.easy_setopt(h->easy, CURLOPT_WRITEDATA, (void *)h);
  cu.easy_setopt(h->easy, CURLOPT_HEADERFUNCTION, header_cb);
  cu.easy_setopt(h->easy, CURLOPT_HEADERDATA, (void *)h);
  cu.easy_setopt(h->easy, CURLOPT_ERRORBUFFER, h->errbuf);
  h->follow = (flags & 2) != 0; /* HF_FOLLOW */
  h->x.done = done_cb;
  h->state = HS_HEAD;
  CURLMcode mc = curlm_add(h->easy, &h->x);
  if (mc != CURLM_OK) return util_error(L, "http", "%s: %s", desc, cu.multi_strerror(mc));
  h->in_multi = true;
  h->waiter = t;
  h->w = (struct wait){.cancel = wait_cancel, .what = "http stream"};
  return sched_wait(L, &h->w, timeout, 9);
}

static struct hs *check_hs(lua_State *L, const char *fname) {
  struct hud *u = luaL_testudata(L, 1, HS_MT);
  if (!u) {
    util_typeerror(L, 1, fname, "http stream");
    return NULL;
  }
  if (!u->h) {
    util_push_error(L, "io", "%s on a closed stream", fname);
    lua_pushliteral(L, "closed");
    lua_setfield(L, -2, "cause");
    lua_error(L);
  }
  return u->h;
}

/* h:read(timeout) -> the next chunk of body bytes, or nil at the end. */
static int l_hs_read(lua_State *L) {
  struct task *t = sched_enter(L, "read");
  struct hs *h = check_hs(L, "read");
  double timeout = lua_isnoneornil(L, 2) ? -1 : lua_tonumber(L, 2);
  if (h->waiter)
    return util_error(L, "usage", "read: another task is already reading from %s", h->desc);
  int r = produce(L, h, NULL);
  if (r > 0) return 1;
  if (r < 0) return lua_error(L);
  h->waiter = t;
  h->w = (struct wait){.cancel = wait_cancel, .what = "resp:read()"};
  lua_pushfstring(L, "resp:read() of %s", h->desc);
  return sched_wait(L, &h->w, timeout, lua_gettop(L));
}

/* h:close(): abort the transfer (the server sees the connection close). */
static int l_hs_close(lua_State *L) {
  struct hud *u = luaL_testudata(L, 1, HS_MT);
  if (!u) return util_typeerror(L, 1, "close", "http stream");
  struct hs *h = u->h;
  if (!h) return 0;
  u->h = NULL;
  if (h->waiter) {
    lua_State *co = sched_thread(&h->w);
    lua_checkstack(co, 4);
    util_push_error(co, "io", "%s: stream closed", h->desc);
    lua_pushliteral(co, "closed");
    lua_setfield(co, -2, "cause");
    sched_task_name(co, h->waiter);
    lua_setfield(co, -2, "task");
    h->waiter = NULL;
    sched_wake_error(&h->w);
  }
  hs_free(h);
  return 0;
}

/* h:info() -> buffered bytes, paused */
static int l_hs_info(lua_State *L) {
  struct hs *h = check_hs(L, "info");
  lua_pushinteger(L, (lua_Integer)h->len);
  lua_pushboolean(L, h->paused);
  return 2;
}

static int l_hs_gc(lua_State *L) {
  struct hud *u = lua_touserdata(L, 1);
  if (u && u->h) {
    u->h->waiter = NULL;
    hs_free(u->h);
    u->h = NULL;
  }
  return 0;
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg hstream_lib[] = {{"http_stream", l_http_stream}, {NULL, NULL}};

void hstream_register(lua_State *L) {
  if (luaL_newmetatable(L, HS_MT)) {
    static const luaL_Reg methods[] = {
        {"read", l_hs_read}, {"close", l_hs_close}, {"info", l_hs_info}, {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_hs_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}

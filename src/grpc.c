/* grpc.c — gRPC calls (SPEC §9) as HTTP/2 transfers on the curl multi handle
 * of curlm.c: h2c with prior knowledge for http:// targets, TLS with ALPN for
 * https://, one multiplexed connection per target (PIPEWAIT makes concurrent
 * calls wait for the first connection instead of opening their own).
 *
 * A call is one easy handle (pooled). The request is a POST of 5-byte framed
 * messages: a unary call posts its one frame in place; a stream feeds curl
 * from a send queue through a read callback that pauses while the queue is
 * empty. Response bytes are cut into whole messages as they arrive and queued
 * (bounded: the transfer pauses when the queue is full, so HTTP/2 flow control
 * stops the server). The status comes from the trailers, or from the headers
 * of a trailers-only reply. Encoding, errors and events are lua/atom/grpc.lua's;
 * this file moves bytes and reports (code, message, cause). */
#include "grpc.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* Flags of grpc_unary / grpc_open (lua/atom/grpc.lua builds them). */
static struct call *pool;
static void shared_hdrs_free(void);
static int pool_len;
#define POOL_MAX 128

/* {==== buffers and the message queue ==== */

static bool gbuf_add(struct gbuf *b, const char *p, size_t n) {
  if (b->off && b->off == b->len) b->off = b->len = 0;
  if (b->len + n > b->cap) {
    if (b->off) { /* compact first */
      memmove(b->p, b->p + b->off, b->len - b->off);
      b->len -= b->off;
      b->off = 0;
    }
    if (b->len + n > b->cap) {
      size_t cap = b->cap ? b->cap : 4096;
      while (cap < b->len + n) cap *= 2;
      char *q = realloc(b->p, cap);
      if (!q) return false;
      b->p = q;
      b->cap = cap;
    }
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return true;
}

static void gbuf_free(struct gbuf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

static void gbuf_reset(struct gbuf *b) {
  b->len = b->off = 0;
  if (b->cap > (1u << 20)) gbuf_free(b);
}

static void q_push(struct call *c, const char *p, size_t n) {
  struct gmsg *m = malloc(sizeof *m + n);
  if (!m) return;
  m->next = NULL;
  m->n = n;
  memcpy(m->data, p, n);
  if (c->qtail)
    c->qtail->next = m;
  else
    c->qhead = m;
  c->qtail = m;
  c->qn++;
  c->qbytes += n;
}

static struct gmsg *q_pop(struct call *c) {
  struct gmsg *m = c->qhead;
  if (!m) return NULL;
  c->qhead = m->next;
  if (!c->qhead) c->qtail = NULL;
  c->qn--;
  c->qbytes -= m->n;
  return m;
}

void grpc_q_clear(struct call *c) {
  struct gmsg *m;
  while ((m = q_pop(c))) free(m);
}

/* }==== */

/* {==== curl callbacks ==== */

static void call_fail(struct call *c, const char *cause, const char *msg) {
  if (c->fail_cause) return;
  c->fail_cause = cause;
  snprintf(c->fail_msg, sizeof c->fail_msg, "%s", msg);
}

static void wake_recv(struct call *c);

/* Cut arriving bytes into messages. Returning less than given fails the
 * transfer (CURLE_WRITE_ERROR), which we report with our own cause. */
static size_t write_cb(char *p, size_t size, size_t n, void *ud) {
  struct call *c = ud;
  size_t len = size * n;
  c->last_io = uv_now(atom_loop) * 1000000ull; /* the loop's time: no clock read */
  if (!c->unary && (c->qn >= Q_MSGS || c->qbytes >= Q_BYTES)) {
    c->recv_paused = true;
    return CURL_WRITEFUNC_PAUSE; /* curl keeps these bytes until unpaused */
  }
  if (!gbuf_add(&c->rbuf, p, len)) {
    call_fail(c, "too_large", "out of memory");
    return 0;
  }
  struct gbuf *b = &c->rbuf;
  while (b->len - b->off >= 5) {
    const unsigned char *h = (const unsigned char *)b->p + b->off;
    size_t mlen = (size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4];
    if (h[0] != 0) {
      call_fail(c, "protocol", "compressed message received (only identity is supported)");
      return 0;
    }
    if (mlen > c->max_message) {
      char m[120];
      snprintf(m, sizeof m, "received message larger than max (%zu vs. %zu)", mlen, c->max_message);
      call_fail(c, "too_large", m);
      return 0;
    }
    if (b->len - b->off - 5 < mlen) break;
    q_push(c, b->p + b->off + 5, mlen);
    b->off += 5 + mlen;
  }
  if (b->off == b->len) b->off = b->len = 0;
  if (!c->unary) wake_recv(c);
  return len;
}

/* Header lines, then (after the blank line) trailer lines. */
static size_t header_cb(char *p, size_t size, size_t n, void *ud) {
  struct call *c = ud;
  size_t len = size * n;
  c->last_io = uv_now(atom_loop) * 1000000ull; /* the loop's time: no clock read */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) {
    c->head.len = 0;
    c->in_trailers = false;
    return len;
  }
  if (len <= 2 && (len == 0 || p[0] == '\r' || p[0] == '\n')) {
    c->in_trailers = true;
    return len;
  }
  if (len > 12 && strncasecmp(p, "grpc-status:", 12) == 0) {
    c->status = atoi(p + 12);
  } else if (len > 13 && strncasecmp(p, "grpc-message:", 13) == 0) {
    const char *v = p + 13, *e = p + len;
    while (v < e && (*v == ' ' || *v == '\t')) v++;
    while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ')) e--;
    free(c->gmessage);
    c->gmessage = malloc((size_t)(e - v) + 1);
    if (c->gmessage) {
      memcpy(c->gmessage, v, (size_t)(e - v));
      c->gmessage[e - v] = '\0';
    }
  }
  return gbuf_add(c->in_trailers ? &c->trail : &c->head, p, len) ? len : 0;
}

/* Streams: hand curl the queued frames; pause while there is nothing. */
static size_t read_cb(char *p, size_t size, size_t n, void *ud) {
  struct call *c = ud;
  size_t room = size * n, have = c->sbuf.len - c->sbuf.off;
  if (have == 0) {
    if (c->send_closed) return 0; /* END_STREAM */
    c->send_paused = true;
    return CURL_READFUNC_PAUSE;
  }
  size_t k = have < room ? have : room;
  c->sent_any = true;
  c->last_io = uv_now(atom_loop) * 1000000ull; /* the loop's time: no clock read */
  memcpy(p, c->sbuf.p + c->sbuf.off, k);
  c->sbuf.off += k;
  if (c->sbuf.off == c->sbuf.len) c->sbuf.off = c->sbuf.len = 0;
  if (c->sw.task && c->sbuf.len - c->sbuf.off < SEND_MAX) {
    lua_State *co = sched_thread(&c->sw);
    lua_pushboolean(co, 1);
    sched_wake(&c->sw, 1);
  }
  return k;
}

/* }==== */

/* {==== the pool ==== */

static struct call *call_get(void) {
  struct call *c = pool;
  if (c) {
    pool = c->next;
    pool_len--;
  } else {
    c = calloc(1, sizeof *c);
    if (!c) return NULL;
    curlm_close_hook = grpcconn_sock_closed_cb;
    c->easy = curlm_easy_new();
    if (!c->easy) {
      free(c);
      return NULL;
    }
    CURL *e = c->easy;
    cu.easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    cu.easy_setopt(e, CURLOPT_WRITEDATA, (void *)c);
    cu.easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    cu.easy_setopt(e, CURLOPT_HEADERDATA, (void *)c);
    cu.easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
    cu.easy_setopt(e, CURLOPT_READDATA, (void *)c);
    cu.easy_setopt(e, CURLOPT_ERRORBUFFER, c->errbuf);
    cu.easy_setopt(e, CURLOPT_NOPROXY, "*"); /* gRPC targets are never proxied */
    cu.easy_setopt(e, CURLOPT_USERAGENT, "grpc-atomlua/" ATOM_VERSION);
    cu.easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    cu.easy_setopt(e, CURLOPT_POST, 1L);
    cu.easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    cu.easy_setopt(e, CURLOPT_PREREQFUNCTION, grpcconn_prereq_cb);
    cu.easy_setopt(e, CURLOPT_PREREQDATA, (void *)c);
    if (getenv("ATOMLUA_GRPC_VERBOSE")) cu.easy_setopt(e, CURLOPT_VERBOSE, 1L);
  }
  c->status = -1;
  c->final_code = -1;
  return c;
}

/* Forget the call's request and response state (the handle stays set up). */
static void call_reset(struct call *c) {
  if (c->hdrs) cu.slist_free_all(c->hdrs);
  c->hdrs = NULL;
  grpc_q_clear(c);
  gbuf_reset(&c->rbuf);
  gbuf_reset(&c->head);
  gbuf_reset(&c->trail);
  gbuf_reset(&c->sbuf);
  free(c->gmessage);
  c->gmessage = NULL;
  c->task = NULL;
  c->unary = c->running = c->ended = c->cancelled = c->recv_paused = false;
  c->tg = NULL;
  c->queued = c->reuse = c->retried = c->sent_any = false;
  c->lport = 0;
  cu.easy_setopt(c->easy, CURLOPT_FORBID_REUSE, 0L);
  c->qnext = NULL;
  c->send_closed = c->send_paused = c->in_trailers = false;
  c->fail_cause = c->final_cause = NULL;
  c->fail_msg[0] = c->errbuf[0] = '\0';
  c->status = c->final_code = -1;
}

static void call_destroy(struct call *c) {
  cu.easy_cleanup(c->easy);
  free(c->set_url);
  gbuf_free(&c->rbuf);
  gbuf_free(&c->head);
  gbuf_free(&c->trail);
  gbuf_free(&c->sbuf);
  free(c);
}

void grpc_call_put(struct call *c) {
  call_reset(c);
  if (pool_len >= POOL_MAX) {
    call_destroy(c);
    return;
  }
  c->next = pool;
  pool = c;
  pool_len++;
}

/* End of a run (http.c's http_run_end, with nothing in flight). */
void grpc_release(void) {
  shared_hdrs_free();
  while (pool) {
    struct call *c = pool;
    pool = c->next;
    call_destroy(c);
  }
  pool_len = 0;
  grpcconn_free();
}

/* }==== */

/* {==== finishing ==== */

/* The transport failure's `cause` (SPEC §9). */
static const char *cause_of(CURLcode rc) {
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
      return "refused";
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2_STREAM:
      return "reset";
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return "eof";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_USE_SSL_FAILED:
      return "tls";
    default:
      return "protocol";
  }
}

/* gRPC's mapping of an HTTP status without grpc-status. */
static int code_of_http(long st) {
  switch (st) {
    case 400:
      return 13; /* INTERNAL */
    case 401:
      return 16; /* UNAUTHENTICATED */
    case 403:
      return 7; /* PERMISSION_DENIED */
    case 404:
      return 12; /* UNIMPLEMENTED */
    case 429:
    case 502:
    case 503:
    case 504:
      return 14; /* UNAVAILABLE */
    default:
      return 2; /* UNKNOWN */
  }
}

/* Settle the final (code, message, cause) from how the transfer ended. */
static void call_settle(struct call *c, CURLcode rc) {
  c->ended = true;
  if (c->fail_cause) {
    c->final_code =
        strcmp(c->fail_cause, "too_large") == 0 ? 8 : 13; /* RESOURCE_EXHAUSTED, INTERNAL */
    c->final_cause = c->fail_cause;
    free(c->gmessage);
    c->gmessage = strdup(c->fail_msg);
    return;
  }
  if (c->status >= 0) { /* the server's word, even when the stream was reset after it */
    c->final_code = c->status;
    return;
  }
  if (rc != CURLE_OK) {
    c->final_code = 14; /* UNAVAILABLE */
    c->final_cause = rc == CURLE_OPERATION_TIMEDOUT ? "timeout" : cause_of(rc);
    free(c->gmessage);
    c->gmessage = strdup(c->errbuf[0] ? c->errbuf : cu.easy_strerror(rc));
    return;
  }
  long st = 0;
  cu.easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &st);
  if (st != 200) {
    c->final_code = code_of_http(st);
    char m[64];
    snprintf(m, sizeof m, "HTTP status %ld without grpc-status", st);
    free(c->gmessage);
    c->gmessage = strdup(m);
  } else {
    c->final_code = 13; /* INTERNAL */
    c->final_cause = "protocol";
    free(c->gmessage);
    c->gmessage = strdup("the server ended the call without grpc-status");
  }
}

/* Push header or trailer lines as {name = value}, repeated names joined
 * with ",". */
static void push_md_lines(lua_State *L, const char *p, size_t len) {
  lua_createtable(L, 0, 4);
  const char *end = p + len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *next = eol ? eol + 1 : end;
    if (!eol) eol = end;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon && colon > p) {
      const char *v = colon + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      luaL_Buffer nb;
      luaL_buffinit(L, &nb);
      for (const char *q = p; q < colon; q++)
        luaL_addchar(&nb, (*q >= 'A' && *q <= 'Z') ? (char)(*q + 32) : *q);
      luaL_pushresult(&nb); /* [t, name] */
      lua_pushvalue(L, -1);
      if (lua_rawget(L, -3) == LUA_TNIL) {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      } else {
        lua_pushliteral(L, ",");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      }
      lua_rawset(L, -3);
    }
    p = next;
  }
}

static void push_md(lua_State *L, struct gbuf *b) { push_md_lines(L, b->p, b->len); }

/* _atom.grpc_md(lines) -> {name = value}: the raw header or trailer lines a
 * unary call returned, parsed when the script looks at them. */
static int l_grpc_md(lua_State *L) {
  size_t n;
  const char *p = luaL_checklstring(L, 1, &n);
  push_md_lines(L, p, n);
  return 1;
}

/* Push code, message|nil, cause|nil for an ended call (3 values). */
static void push_end(lua_State *L, struct call *c) {
  lua_pushinteger(L, c->final_code);
  if (c->gmessage)
    lua_pushstring(L, c->gmessage);
  else
    lua_pushnil(L);
  if (c->final_cause)
    lua_pushstring(L, c->final_cause);
  else
    lua_pushnil(L);
}

/* Unary: wake the caller with code, message, cause, body|nil, headers,
 * trailers, duration. */
static void unary_done(struct call *c) {
  lua_State *co = sched_thread(&c->rw);
  if (!co) {
    grpc_call_put(c);
    return;
  }
  lua_checkstack(co, 10);
  if (c->final_code == 0 && c->qn != 1) {
    c->final_code = 13; /* INTERNAL */
    c->final_cause = "protocol";
    free(c->gmessage);
    c->gmessage = strdup(c->qn == 0 ? "no response message for a unary call"
                                    : "more than one response message for a unary call");
  }
  push_end(co, c);
  if (c->qhead)
    lua_pushlstring(co, c->qhead->data, c->qhead->n);
  else
    lua_pushnil(co);
  lua_pushlstring(co, c->head.p ? c->head.p : "", c->head.len);
  lua_pushlstring(co, c->trail.p ? c->trail.p : "", c->trail.len);
  lua_pushnumber(co, (double)(uv_hrtime() - c->t0) / 1e9);
  sched_wake(&c->rw, 7);
  grpc_call_put(c);
}

void grpc_done_cb(struct xfer *x, CURLcode rc) {
  struct call *c = container_of(x, struct call, x);
  c->running = false;
  grpcconn_unlink(c);
  if (grpcconn_restart(c)) return;
  grpcconn_forget(c);
  call_settle(c, rc);
  if (c->unary) {
    unary_done(c);
    return;
  }
  wake_recv(c);
  if (c->sw.task) { /* a sender waiting for room: the call is over */
    lua_State *co = sched_thread(&c->sw);
    lua_pushboolean(co, 0);
    sched_wake(&c->sw, 1);
  }
}

static void call_cancel_cb(struct wait *w) {
  struct call *c = container_of(w, struct call, rw);
  grpcconn_abort(c);
}

/* }==== */

/* {==== starting a call ==== */

/* The request headers: content-type, te, grpc-timeout and the lines of the
 * Lua array at idx ("name: value", already checked and encoded). */
static struct curl_slist *build_headers(lua_State *L, int idx, double timeout) {
  struct curl_slist *l = NULL;
  l = cu.slist_append(l, "Content-Type: application/grpc");
  l = cu.slist_append(l, "TE: trailers");
  /* No grpc-accept-encoding: a server then sends identity only. */
  l = cu.slist_append(l, "Accept:");
  if (timeout > 0) {
    char t[48];
    double ms = timeout * 1000.0;
    if (ms < 1) ms = 1;
    if (ms < 1e8)
      snprintf(t, sizeof t, "grpc-timeout: %lldm", (long long)(ms + 0.5));
    else
      snprintf(t, sizeof t, "grpc-timeout: %lldS", (long long)(timeout < 1e8 ? timeout : 99999999));
    l = cu.slist_append(l, t);
  }
  if (lua_type(L, idx) == LUA_TTABLE) {
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
      lua_rawgeti(L, idx, i);
      const char *line = lua_tostring(L, -1);
      if (line) l = cu.slist_append(l, line);
      lua_pop(L, 1);
    }
  }
  return l;
}

static const char *opt_field(lua_State *L, int idx, const char *k) {
  if (lua_type(L, idx) != LUA_TTABLE) return NULL;
  lua_getfield(L, idx, k);
  const char *s = lua_tostring(L, -1); /* kept alive by the options table */
  lua_pop(L, 1);
  return s;
}

/* Set the options every call sets anew on a pooled handle. */
/* Header lists of calls without metadata, by timeout: shared by every call,
 * freed at the end of a run (grpc_release). */
#define SHARED_HDRS 4
static struct {
  double timeout;
  struct curl_slist *l;
} shared_hdrs[SHARED_HDRS];
static int shared_next;

static struct curl_slist *headers_for(struct call *c, lua_State *L, int md_idx, double timeout) {
  if (lua_type(L, md_idx) == LUA_TTABLE) return c->hdrs = build_headers(L, md_idx, timeout);
  for (int i = 0; i < SHARED_HDRS; i++)
    if (shared_hdrs[i].l && shared_hdrs[i].timeout == timeout) return shared_hdrs[i].l;
  struct curl_slist *l = build_headers(L, md_idx, timeout);
  int i = shared_next;
  if (shared_hdrs[i].l) return c->hdrs = l; /* all slots taken: this call's own */
  shared_hdrs[i].l = l;
  shared_hdrs[i].timeout = timeout;
  shared_next = (i + 1) % SHARED_HDRS;
  return l;
}

static void shared_hdrs_free(void) {
  for (int i = 0; i < SHARED_HDRS; i++) {
    if (shared_hdrs[i].l) cu.slist_free_all(shared_hdrs[i].l);
    shared_hdrs[i].l = NULL;
  }
  shared_next = 0;
}

static void call_setup(struct call *c, lua_State *L, const char *url, int md_idx, double timeout,
                       lua_Integer flags, int tls_idx, lua_Integer max_message) {
  CURL *e = c->easy;
  c->max_message = (size_t)max_message;
  cu.easy_setopt(e, CURLOPT_HTTPHEADER, headers_for(c, L, md_idx, timeout));
  c->tg = (flags & GF_H2C) ? grpcconn_target(url) : NULL;
  /* Options kept on the pooled handle are set only when they change. */
  if (!c->set_url || strcmp(c->set_url, url) != 0) {
    free(c->set_url);
    c->set_url = strdup(url);
    cu.easy_setopt(e, CURLOPT_URL, url);
    /* An explicit IP version keeps gRPC off the HTTP/1.1 connections
     * atom.http keeps to the same port (curl reuses those only for
     * "whatever"). */
    const char *host = strstr(url, "://");
    cu.easy_setopt(e, CURLOPT_IPRESOLVE,
                   host && host[3] == '[' ? (long)CURL_IPRESOLVE_V6 : (long)CURL_IPRESOLVE_V4);
  }
  bool tls = lua_type(L, tls_idx) == LUA_TTABLE;
  if (tls || c->set_tls || (int)(flags & GF_INSECURE) != c->set_insecure) {
    long verify = (flags & GF_INSECURE) ? 0L : 1L;
    cu.easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify);
    cu.easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    cu.easy_setopt(e, CURLOPT_CAINFO, opt_field(L, tls_idx, "ca"));
    cu.easy_setopt(e, CURLOPT_SSLCERT, opt_field(L, tls_idx, "cert"));
    cu.easy_setopt(e, CURLOPT_SSLKEY, opt_field(L, tls_idx, "key"));
    c->set_tls = tls;
    c->set_insecure = (int)(flags & GF_INSECURE);
  }
  c->errbuf[0] = '\0';
  c->t0 = uv_hrtime();
  c->x.done = grpc_done_cb;
}

/* _atom.grpc_unary(fname, url, body, md|nil, timeout, flags, tls|nil,
 * max_message, desc) -> code, message|nil, cause|nil, body|nil, header
 * lines, trailer lines, duration (lines: parse with grpc_md). body is the framed request; timeout <
 * 0: none. */
static int l_grpc_unary(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  struct task *t = sched_enter(L, fname);
  const char *url = luaL_checkstring(L, 2);
  size_t blen;
  const char *body = luaL_checklstring(L, 3, &blen);
  double timeout = luaL_checknumber(L, 5);
  lua_Integer flags = luaL_checkinteger(L, 6);
  lua_Integer max_message = luaL_checkinteger(L, 8);
  luaL_checkstring(L, 9);
  char err[256];
  if (!curlm_start(err, sizeof err)) return util_error(L, "grpc", "%s", err);
  struct call *c = call_get();
  if (!c) return util_error(L, "grpc", "out of memory");
  call_setup(c, L, url, 4, timeout, flags, 7, max_message);
  cu.easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
  cu.easy_setopt(c->easy, CURLOPT_POSTFIELDS, (void *)body); /* in place: on our stack */
  cu.easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, 0L);
  c->unary = true;
  c->task = t;
  c->rw = (struct wait){.cancel = call_cancel_cb, .what = "grpc call"};
  CURLMcode mc = grpcconn_start(c);
  if (mc != CURLM_OK) {
    grpc_call_put(c);
    return util_error(L, "grpc", "%s", cu.multi_strerror(mc));
  }
  return sched_wait(L, &c->rw, timeout, 9);
}

/* }==== */

/* {==== streams ==== */

/* The stream userdata points to its call; NULL once closed. */
struct box {
  struct call *c;
};
#define STREAM_MT "atom.grpc.call"

static struct call *box_call(lua_State *L) {
  struct box *b = luaL_checkudata(L, 1, STREAM_MT);
  return b->c;
}

/* Hand the oldest queued message to a waiting receiver, or the end. */
static void wake_recv(struct call *c) {
  if (!c->rw.task) return;
  lua_State *co = sched_thread(&c->rw);
  lua_checkstack(co, 6);
  struct gmsg *m = q_pop(c);
  if (m) {
    lua_pushboolean(co, 1);
    lua_pushlstring(co, m->data, m->n);
    free(m);
    sched_wake(&c->rw, 2);
    return;
  }
  if (!c->ended) return;
  lua_pushboolean(co, 0);
  push_end(co, c);
  sched_wake(&c->rw, 4);
}

/* Let curl deliver again once the queue has room. */
static void resume_recv(struct call *c) {
  if (c->recv_paused && c->running && c->qn < Q_MSGS / 2 && c->qbytes < Q_BYTES / 2) {
    c->recv_paused = false;
    cu.easy_pause(c->easy, CURLPAUSE_CONT);
  }
}

static void resume_send(struct call *c) {
  if (c->send_paused && c->running) {
    c->send_paused = false;
    cu.easy_pause(c->easy, c->recv_paused ? CURLPAUSE_RECV : CURLPAUSE_CONT);
  }
}

/* Reset the stream now if it runs, and free the call. */
static void box_close(struct box *b) {
  struct call *c = b->c;
  if (!c) return;
  b->c = NULL;
  grpcconn_abort(c);
}

/* _atom.grpc_open(fname, url, md|nil, timeout, flags, tls|nil, max_message)
 * -> stream. The call starts at once; timeout < 0: no deadline (else curl
 * ends the transfer, reported as cause "timeout"). */
static int l_grpc_open(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  sched_enter(L, fname);
  const char *url = luaL_checkstring(L, 2);
  double timeout = luaL_checknumber(L, 4);
  lua_Integer flags = luaL_checkinteger(L, 5);
  lua_Integer max_message = luaL_checkinteger(L, 7);
  char err[256];
  if (!curlm_start(err, sizeof err)) return util_error(L, "grpc", "%s", err);
  struct box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->c = NULL;
  luaL_setmetatable(L, STREAM_MT);
  struct call *c = call_get();
  if (!c) return util_error(L, "grpc", "out of memory");
  b->c = c;
  call_setup(c, L, url, 3, timeout, flags, 6, max_message);
  cu.easy_setopt(c->easy, CURLOPT_POSTFIELDS, (void *)NULL);
  cu.easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
  cu.easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, timeout > 0 ? (long)(timeout * 1000 + 0.5) : 0L);
  c->rw = (struct wait){.cancel = NULL, .what = "s:recv()"};
  c->sw = (struct wait){.cancel = NULL, .what = "s:send()"};
  CURLMcode mc = grpcconn_start(c);
  if (mc != CURLM_OK) {
    box_close(b);
    return util_error(L, "grpc", "%s", cu.multi_strerror(mc));
  }
  return 1;
}

/* A receiver gave up (timeout, cancel): nothing to undo, the queue stays. */
static void recv_cancel_cb(struct wait *w) { (void)w; }
static void send_cancel_cb(struct wait *w) { (void)w; }

/* s:recv(fname, timeout, desc) -> true, bytes | false, code, message, cause
 * (code -1: closed locally). */
static int l_stream_recv(lua_State *L) {
  struct call *c = box_call(L);
  const char *fname = luaL_checkstring(L, 2);
  sched_enter(L, fname);
  double timeout = luaL_checknumber(L, 3);
  luaL_checkstring(L, 4);
  if (!c) {
    lua_pushboolean(L, 0);
    lua_pushinteger(L, -1);
    return 2;
  }
  if (c->rw.task)
    return util_error(L, "usage", "%s: another task is receiving on this stream", fname);
  struct gmsg *m = q_pop(c);
  if (m) {
    lua_pushboolean(L, 1);
    lua_pushlstring(L, m->data, m->n);
    free(m);
    resume_recv(c);
    return 2;
  }
  if (c->ended) {
    lua_pushboolean(L, 0);
    push_end(L, c);
    return 4;
  }
  resume_recv(c); /* may deliver at once */
  if ((m = q_pop(c))) {
    lua_pushboolean(L, 1);
    lua_pushlstring(L, m->data, m->n);
    free(m);
    return 2;
  }
  c->rw.cancel = recv_cancel_cb;
  c->rw.what = "s:recv()";
  return sched_wait(L, &c->rw, timeout, 4);
}

/* s:send(fname, framed) -> true (queued), or false when the call has ended
 * (the message is dropped, as gRPC libraries do); raises when closed. */
static int l_stream_send(lua_State *L) {
  struct call *c = box_call(L);
  const char *fname = luaL_checkstring(L, 2);
  sched_enter(L, fname);
  size_t n;
  const char *p = luaL_checklstring(L, 3, &n);
  if (!c) {
    lua_pushboolean(L, 0);
    lua_pushinteger(L, -1);
    return 2;
  }
  if (c->send_closed) return util_error(L, "usage", "%s: send after close_send", fname);
  if (c->ended) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (!gbuf_add(&c->sbuf, p, n)) return util_error(L, "grpc", "out of memory");
  resume_send(c);
  if (c->ended || c->sbuf.len - c->sbuf.off < SEND_MAX || c->sw.task) {
    lua_pushboolean(L, 1);
    return 1;
  }
  c->sw.cancel = send_cancel_cb;
  c->sw.what = "s:send()";
  return sched_wait(L, &c->sw, -1, 0);
}

static int l_stream_close_send(lua_State *L) {
  struct call *c = box_call(L);
  if (c && !c->send_closed) {
    c->send_closed = true;
    resume_send(c);
  }
  return 0;
}

/* s:cancel(): reset the HTTP/2 stream (RST_STREAM) and free the call; a
 * task waiting in recv on it gets code -1 (closed). Idempotent; also
 * __close and __gc. */
static int l_stream_cancel(lua_State *L) {
  struct box *b = luaL_checkudata(L, 1, STREAM_MT);
  struct call *c = b->c;
  if (!c) return 0;
  if (c->rw.task) {
    lua_State *co = sched_thread(&c->rw);
    lua_pushboolean(co, 0);
    lua_pushinteger(co, -1);
    sched_wake(&c->rw, 2);
  }
  if (c->sw.task) {
    lua_State *co = sched_thread(&c->sw);
    lua_pushboolean(co, 0);
    sched_wake(&c->sw, 1);
  }
  box_close(b);
  return 0;
}

/* s:info() -> headers|nil, trailers|nil, ended, code|nil */
static int l_stream_info(lua_State *L) {
  struct call *c = box_call(L);
  if (!c) return 0;
  if (c->head.len)
    push_md(L, &c->head);
  else
    lua_pushnil(L);
  if (c->ended)
    push_md(L, &c->trail);
  else
    lua_pushnil(L);
  lua_pushboolean(L, c->ended);
  if (c->ended)
    lua_pushinteger(L, c->final_code);
  else
    lua_pushnil(L);
  return 4;
}

/* }==== */

/* The stream metatable, made when atom.grpc loads (not at start-up). */
static int l_grpc_init(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"recv", l_stream_recv},     {"send", l_stream_send}, {"close_send", l_stream_close_send},
      {"cancel", l_stream_cancel}, {"info", l_stream_info}, {NULL, NULL}};
  if (luaL_newmetatable(L, STREAM_MT)) {
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_stream_cancel);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_stream_cancel);
    lua_setfield(L, -2, "__close");
  }
  return 1;
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg grpc_lib[] = {{"grpc_unary", l_grpc_unary},
                             {"grpc_open", l_grpc_open},
                             {"grpc_init", l_grpc_init},
                             {"grpc_md", l_grpc_md},
                             {NULL, NULL}};

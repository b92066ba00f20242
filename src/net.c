/* net.c — TCP streams (`atom.tcp.connect`, SPEC §5) and `atom.wait_port` on
 * uv_tcp_t, as task waits on the scheduler. A stream reads ahead into one
 * buffer (up to HIGH_WATER while nobody reads) so that read(n) and read_line()
 * take bytes from it, and a timed-out read loses nothing. In C rather than
 * over luv: waits, cancellation and every error path stay on sched_wait, and
 * no Lua callback runs outside a task. lua/atom/tcp.lua documents the API;
 * free_port is in ports.c. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom.h"

#define STREAM_MT "atom.stream"
/* Read-ahead stops once this much is buffered and no reader wants more. */
#define HIGH_WATER (256 * 1024)
#define READ_CHUNK (64 * 1024)
/* read_line's default longest line: a peer that sends no newline costs this
 * much memory, not all of it. */
#define MAX_LINE (1024 * 1024)

enum { R_NONE, R_BYTES, R_LINE };

struct stream {
  uv_tcp_t tcp;
  struct wait rw;      /* the reader's wait */
  struct task *reader; /* the waiting reader, or NULL */
  int mode;            /* R_BYTES / R_LINE while a reader waits */
  size_t want;         /* R_BYTES: bytes wanted; R_LINE: the longest line allowed */
  size_t max_line;     /* read_line's limit unless the call gives one */
  char *buf;           /* buffered bytes are buf[start, start + len) */
  size_t start, len, cap, scanned;
  bool reading, eof, closed;
  int err;        /* the uv error that ended reading, or 0 */
  char peer[300]; /* "host:port" for messages */
};

/* The userdata: a pointer, since libuv owns the memory until the close callback. */
struct sud {
  struct stream *s;
};

/* {==== errors ==== */

/* Out of descriptors or memory: the machine, not the peer, refused. */
static bool out_of_resources(int err) {
  return err == UV_EMFILE || err == UV_ENFILE || err == UV_ENOBUFS || err == UV_ENOMEM;
}

static const char *io_cause(int err) {
  if (out_of_resources(err)) return "resources";
  switch (err) {
    case UV_EOF:
      return "eof";
    case UV_ECANCELED:
      return "closed";
    default:
      return "reset";
  }
}

/* A connect that failed: no connection could be made, or no descriptor. */
static const char *connect_cause(int err) {
  return out_of_resources(err) ? "resources" : "refused";
}

/* Push an io error with `cause` on L; `task` names the task when the error is
 * built from a callback (util_push_error cannot see it there). */
static void push_io_error(lua_State *L, struct task *task, const char *cause, const char *fmt,
                          ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  util_push_error(L, "io", "%s", msg);
  lua_remove(L, -2);
  lua_pushstring(L, cause);
  lua_setfield(L, -2, "cause");
  if (task) {
    sched_task_name(L, task);
    lua_setfield(L, -2, "task");
  }
}

/* Argument errors of methods, which count arguments without self: `idx` is
 * the stack index, `shown` the number in the message. */
static int arg_typeerror(lua_State *L, int idx, int shown, const char *fname, const char *tname) {
  const char *got = lua_isnone(L, idx) ? "no value" : luaL_typename(L, idx);
  lua_pushfstring(L, "%s expected, got %s", tname, got);
  return util_argerror(L, shown, fname, lua_tostring(L, -1));
}

/* util_opttimeout for a method's last argument (no default: -1). */
static double method_timeout(lua_State *L, int idx, const char *fname) {
  int t = lua_type(L, idx);
  if (t == LUA_TNONE || t == LUA_TNIL) return -1;
  double v;
  if (t == LUA_TNUMBER) {
    v = lua_tonumber(L, idx);
  } else if (t == LUA_TTABLE) {
    lua_getfield(L, idx, "timeout");
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      return -1;
    }
    if (lua_type(L, -1) != LUA_TNUMBER)
      util_argerror(L, idx - 1, fname, "field 'timeout' must be a number");
    v = lua_tonumber(L, -1);
    lua_pop(L, 1);
  } else {
    return arg_typeerror(L, idx, idx - 1, fname, "number or table");
  }
  if (!(v >= 0)) util_argerror(L, idx - 1, fname, "timeout must be a non-negative number");
  return v == HUGE_VAL ? -1 : v;
}

/* A positive integer field `name` of an options table at idx (def when absent
 * or idx is not a table); `shown` is the argument number in messages. */
static size_t opt_size(lua_State *L, int idx, int shown, const char *fname, const char *name,
                       size_t def) {
  if (lua_type(L, idx) != LUA_TTABLE) return def;
  lua_getfield(L, idx, name);
  size_t v = def;
  if (!lua_isnil(L, -1)) {
    int isint;
    lua_Integer n = lua_tointegerx(L, -1, &isint);
    if (lua_type(L, -1) != LUA_TNUMBER || !isint || n < 1) {
      lua_pushfstring(L, "field '%s' must be a positive integer", name);
      util_argerror(L, shown, fname, lua_tostring(L, -1));
    }
    v = (size_t)n;
  }
  lua_pop(L, 1);
  return v;
}

/* }==== */

/* {==== streams: buffer, read-ahead, close ==== */

static void stream_free_cb(uv_handle_t *h) {
  struct stream *s = container_of(h, struct stream, tcp);
  free(s->buf);
  free(s);
}

static void stream_close(struct stream *s) {
  if (s->closed) return;
  s->closed = true;
  /* At exit the runtime may have closed every handle already (then the
   * memory goes with the process). */
  if (!uv_is_closing((uv_handle_t *)&s->tcp)) uv_close((uv_handle_t *)&s->tcp, stream_free_cb);
}

static struct stream *stream_new(void) {
  struct stream *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  uv_tcp_init(atom_loop, &s->tcp);
  s->tcp.data = NULL;
  s->max_line = MAX_LINE;
  return s;
}

static void consume(struct stream *s, size_t n) {
  s->start += n;
  s->len -= n;
  s->scanned = 0;
  if (s->len == 0) s->start = 0;
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  (void)suggested;
  struct stream *s = container_of(h, struct stream, tcp);
  if (s->cap - s->start - s->len < READ_CHUNK && s->start > 0) {
    memmove(s->buf, s->buf + s->start, s->len);
    s->start = 0;
  }
  if (s->cap - s->len < READ_CHUNK) {
    size_t cap = s->cap ? s->cap : READ_CHUNK;
    while (cap - s->len < READ_CHUNK) cap *= 2;
    char *p = realloc(s->buf, cap);
    if (p) {
      s->buf = p;
      s->cap = cap;
    }
  }
  b->base = s->buf ? s->buf + s->start + s->len : NULL;
  b->len = s->buf ? s->cap - s->start - s->len : 0; /* 0: libuv reports UV_ENOBUFS */
}

/* read_line's error for a line over `max` bytes; the bytes stay buffered
 * (s:read can still take them). */
static int line_too_large(lua_State *L, struct stream *s, size_t max, struct task *task) {
  push_io_error(L, task, "too_large", "read_line from %s: line longer than %d bytes", s->peer,
                (int)max);
  return -1;
}

/* Try to finish a read of `mode` from the buffer: push its result on L and
 * return 1, push an error and return -1, or return 0 (must wait). For R_LINE,
 * n is the longest line allowed (without "\n" and "\r"). */
static int produce(lua_State *L, struct stream *s, int mode, size_t n, struct task *task) {
  const char *p = s->buf + s->start;
  if (mode == R_BYTES && s->len >= n) {
    lua_pushlstring(L, p, n);
    consume(s, n);
    return 1;
  }
  if (mode == R_LINE) {
    const char *nl = s->len > s->scanned ? memchr(p + s->scanned, '\n', s->len - s->scanned) : NULL;
    if (nl) {
      size_t l = (size_t)(nl - p), e = l;
      if (e > 0 && p[e - 1] == '\r') e--;
      if (e > n) return line_too_large(L, s, n, task);
      lua_pushlstring(L, p, e);
      consume(s, l + 1);
      return 1;
    }
    s->scanned = s->len;
    /* No "\n" yet: too long already, whatever comes (a last "\r" may go). */
    if (s->len > n + 1 || (s->len == n + 1 && p[n] != '\r')) return line_too_large(L, s, n, task);
  }
  if (!s->eof && !s->err) return 0;
  if (s->len == 0 && s->eof) { /* a clean end before any byte of this read */
    lua_pushnil(L);
    return 1;
  }
  if (mode == R_LINE && s->eof) { /* the last line had no \n */
    size_t e = s->len;
    if (p[e - 1] == '\r') e--;
    if (e > n) return line_too_large(L, s, n, task);
    lua_pushlstring(L, p, e);
    consume(s, s->len);
    return 1;
  }
  const char *what = mode == R_LINE ? "read_line" : "read";
  if (s->eof)
    push_io_error(L, task, "eof", "%s from %s: connection closed after %d of %d bytes", what,
                  s->peer, (int)s->len, (int)n);
  else
    push_io_error(L, task, io_cause(s->err), "%s from %s: %s", what, s->peer, uv_strerror(s->err));
  lua_pushlstring(L, p, s->len);
  lua_setfield(L, -2, "partial");
  consume(s, s->len);
  return -1;
}

static void read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *b);

static void update_reading(struct stream *s) {
  bool want = !s->closed && !s->eof && !s->err && (s->reader || s->len < HIGH_WATER);
  if (want && !s->reading) {
    int rc = uv_read_start((uv_stream_t *)&s->tcp, alloc_cb, read_cb);
    if (rc == 0)
      s->reading = true;
    else
      s->err = rc; /* reading ends here; the next read raises it */
  } else if (!want && s->reading) {
    uv_read_stop((uv_stream_t *)&s->tcp);
    s->reading = false;
  }
}

static void read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *b) {
  (void)b;
  struct stream *s = container_of(h, struct stream, tcp);
  if (nread > 0) {
    s->len += (size_t)nread;
  } else if (nread == UV_EOF) {
    s->eof = true;
  } else if (nread < 0) {
    s->err = (int)nread;
  } else {
    return;
  }
  if (s->reader) {
    lua_State *co = sched_thread(&s->rw);
    lua_checkstack(co, 4);
    int r = produce(co, s, s->mode, s->want, s->reader);
    if (r != 0) {
      s->reader = NULL;
      s->mode = R_NONE;
      if (r > 0)
        sched_wake(&s->rw, 1);
      else
        sched_wake_error(&s->rw);
    }
  }
  update_reading(s);
}

static void reader_cancel(struct wait *w) {
  struct stream *s = container_of(w, struct stream, rw);
  s->reader = NULL;
  s->mode = R_NONE;
  update_reading(s);
}

/* }==== */

/* {==== stream methods ==== */

static struct stream *check_open(lua_State *L, const char *fname) {
  struct sud *u = luaL_testudata(L, 1, STREAM_MT);
  if (!u) {
    util_typeerror(L, 1, fname, "stream"); /* raises */
    return NULL;
  }
  if (!u->s) {
    util_push_error(L, "io", "%s on a closed stream", fname);
    lua_pushliteral(L, "closed");
    lua_setfield(L, -2, "cause");
    lua_error(L);
  }
  return u->s;
}

static int do_read(lua_State *L, int mode, const char *fname) {
  struct task *t = sched_enter(L, fname);
  struct stream *s = check_open(L, fname);
  size_t n = 0;
  int topt = 2;
  if (mode == R_BYTES) {
    int isint;
    lua_Integer v = lua_tointegerx(L, 2, &isint);
    if (lua_type(L, 2) != LUA_TNUMBER || !isint) arg_typeerror(L, 2, 1, fname, "integer");
    if (v < 0) util_argerror(L, 1, fname, "byte count must not be negative");
    n = (size_t)v;
    topt = 3;
  }
  double timeout = method_timeout(L, topt, fname);
  if (mode == R_LINE) n = opt_size(L, topt, topt - 1, fname, "max_line", s->max_line);
  if (s->reader)
    return util_error(L, "usage", "%s: another task is already reading from %s", fname, s->peer);
  if (mode == R_BYTES && n == 0) {
    lua_pushliteral(L, "");
    return 1;
  }
  int r = produce(L, s, mode, n, NULL);
  if (r > 0) {
    update_reading(s);
    return 1;
  }
  if (r < 0) return lua_error(L);
  s->reader = t;
  s->mode = mode;
  s->want = n;
  s->rw =
      (struct wait){.cancel = reader_cancel, .what = mode == R_LINE ? "s:read_line()" : "s:read()"};
  update_reading(s);
  if (s->err) { /* reading could not start: raise now, nothing will wake us */
    s->reader = NULL;
    s->mode = R_NONE;
    produce(L, s, mode, n, NULL);
    return lua_error(L);
  }
  lua_pushfstring(L, "%s from %s", fname, s->peer);
  return sched_wait(L, &s->rw, timeout, lua_gettop(L));
}

/* s:read(n [, timeout | opts]) -> exactly n bytes, or nil at a clean EOF. */
static int l_stream_read(lua_State *L) { return do_read(L, R_BYTES, "read"); }

/* s:read_line([timeout | opts]) -> the next line without "\n" (and "\r"), or nil at EOF. */
static int l_stream_read_line(lua_State *L) { return do_read(L, R_LINE, "read_line"); }

struct wreq {
  uv_write_t req;
  struct wait w;
  struct task *task;
  bool orphaned; /* the writer stopped waiting (timeout, cancel) */
  char peer[300];
  size_t len;
  char data[];
};

static void write_cb(uv_write_t *req, int status) {
  struct wreq *r = container_of(req, struct wreq, req);
  if (!r->orphaned) {
    if (status == 0) {
      sched_wake(&r->w, 0);
    } else {
      lua_State *co = sched_thread(&r->w);
      lua_checkstack(co, 4);
      push_io_error(co, r->task, io_cause(status), "write to %s: %s", r->peer,
                    status == UV_ECANCELED ? "stream closed" : uv_strerror(status));
      sched_wake_error(&r->w);
    }
  }
  free(r);
}

static void write_cancel(struct wait *w) { container_of(w, struct wreq, w)->orphaned = true; }

/* s:write(data [, timeout | opts]): returns when the kernel has taken the data.
 * A write that times out stays queued (its bytes may still go out). */
static int l_stream_write(lua_State *L) {
  struct task *t = sched_enter(L, "write");
  struct stream *s = check_open(L, "write");
  size_t len;
  if (lua_type(L, 2) != LUA_TSTRING && lua_type(L, 2) != LUA_TNUMBER)
    arg_typeerror(L, 2, 1, "write", "string");
  const char *data = lua_tolstring(L, 2, &len);
  double timeout = method_timeout(L, 3, "write");
  size_t done = 0;
  if (len > 0) {
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
    if (n > 0)
      done = (size_t)n;
    else if (n != UV_EAGAIN && n < 0) {
      push_io_error(L, NULL, io_cause(n), "write to %s: %s", s->peer, uv_strerror(n));
      return lua_error(L);
    }
  }
  if (done == len) return 0;
  struct wreq *r = malloc(sizeof *r + len - done);
  if (!r) return util_error(L, "io", "write to %s: out of memory", s->peer);
  memcpy(r->data, data + done, len - done);
  r->len = len - done;
  r->task = t;
  r->orphaned = false;
  snprintf(r->peer, sizeof r->peer, "%s", s->peer);
  r->w = (struct wait){.cancel = write_cancel, .what = "s:write()"};
  uv_buf_t b = uv_buf_init(r->data, (unsigned)r->len);
  int rc = uv_write(&r->req, (uv_stream_t *)&s->tcp, &b, 1, write_cb);
  if (rc != 0) {
    free(r);
    push_io_error(L, NULL, io_cause(rc), "write to %s: %s", s->peer, uv_strerror(rc));
    return lua_error(L);
  }
  lua_pushfstring(L, "write to %s", s->peer);
  return sched_wait(L, &r->w, timeout, lua_gettop(L));
}

/* s:close(): idempotent; a waiting reader and pending writes get io "closed". */
static int l_stream_close(lua_State *L) {
  struct sud *u = luaL_testudata(L, 1, STREAM_MT);
  if (!u) return util_typeerror(L, 1, "close", "stream");
  struct stream *s = u->s;
  if (!s) return 0;
  u->s = NULL;
  if (s->reader) {
    lua_State *co = sched_thread(&s->rw);
    lua_checkstack(co, 4);
    push_io_error(co, s->reader, "closed", "%s from %s: stream closed",
                  s->mode == R_LINE ? "read_line" : "read", s->peer);
    s->reader = NULL;
    sched_wake_error(&s->rw);
  }
  stream_close(s);
  return 0;
}

/* __gc: only closes. A waiting reader holds the stream on its stack, so none
 * is left unless the Lua state itself is closing; it is not woken then. */
static int l_stream_gc(lua_State *L) {
  struct sud *u = lua_touserdata(L, 1);
  if (u && u->s) {
    u->s->reader = NULL;
    stream_close(u->s);
    u->s = NULL;
  }
  return 0;
}

static int l_stream_tostring(lua_State *L) {
  struct sud *u = luaL_checkudata(L, 1, STREAM_MT);
  if (u->s)
    lua_pushfstring(L, "atom.stream (%s)", u->s->peer);
  else
    lua_pushliteral(L, "atom.stream (closed)");
  return 1;
}

/* }==== */

/* For protocols layered in C on a connected stream (ws.c): a close-on-exec
 * dup of the stream's socket, with the bytes read ahead pushed on L as a
 * string. The stream itself is closed (its userdata reads as closed). Returns
 * the fd, or -1 with an io error pushed instead. */
int net_detach(lua_State *L, int idx) {
  struct sud *u = luaL_testudata(L, idx, STREAM_MT);
  struct stream *s = u ? u->s : NULL;
  uv_os_fd_t fd;
  if (!s || s->reader || uv_fileno((uv_handle_t *)&s->tcp, &fd) != 0) {
    push_io_error(L, NULL, "closed", "stream is closed or busy");
    return -1;
  }
  int nfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (nfd < 0) {
    push_io_error(L, NULL, "reset", "dup: %s", strerror(errno));
    return -1;
  }
  lua_pushlstring(L, s->buf ? s->buf + s->start : "", s->len);
  u->s = NULL;
  stream_close(s);
  return nfd;
}

/* {==== connecting (connect and wait_port) ==== */

/* One connect or wait_port call: resolve, try each address in turn; for
 * wait_port, retry every `interval` until the deadline. Freed once it is
 * finished or cancelled and no libuv callback is pending. */
struct dial {
  struct wait w;
  struct task *task;
  struct sud *ud; /* connect: the userdata to fill (on the waiting task's stack) */
  int ud_idx;     /* its stack index there */
  bool probe, orphaned, gai_pending, connect_pending;
  uv_getaddrinfo_t gai;
  uv_connect_t creq;
  struct stream *s; /* the attempt in progress */
  struct addrinfo *ai, *cur, one;
  struct sockaddr_storage addr;
  bool numeric;
  int last_err;
  int now_err;           /* failed before the caller waited: it raises this */
  const char *now_cause; /* with this cause */
  size_t max_line;       /* for the stream */
  double interval;
  struct timer retry;
  char host[256], port[8], peer[300];
};

static void dial_start(struct dial *d);

static void dial_maybe_free(struct dial *d) {
  if (!d->orphaned || d->gai_pending || d->connect_pending) return;
  timer_stop(&d->retry);
  if (d->ai) uv_freeaddrinfo(d->ai);
  free(d);
}

static void dial_finish(struct dial *d) {
  d->orphaned = true;
  dial_maybe_free(d);
}

static void retry_cb(struct timer *tm) { dial_start(container_of(tm, struct dial, retry)); }

static void dial_fail(struct dial *d, int err, const char *cause) {
  if (d->ai) uv_freeaddrinfo(d->ai);
  d->ai = d->cur = NULL;
  if (d->probe) { /* wait_port: not there yet */
    timer_start(&d->retry, d->interval, retry_cb);
    return;
  }
  if (!d->w.task) { /* at once, inside connect (EMFILE, a broadcast address): nobody waits yet */
    d->now_err = err;
    d->now_cause = cause;
    return;
  }
  lua_State *co = sched_thread(&d->w);
  lua_checkstack(co, 4);
  push_io_error(co, d->task, cause, "connect %s: %s", d->peer, uv_strerror(err));
  sched_wake_error(&d->w);
  dial_finish(d);
}

static void dial_succeed(struct dial *d) {
  struct stream *s = d->s;
  d->s = NULL;
  if (d->probe) {
    stream_close(s);
    sched_wake(&d->w, 0);
  } else {
    snprintf(s->peer, sizeof s->peer, "%s", d->peer);
    s->max_line = d->max_line;
    d->ud->s = s;
    update_reading(s);
    lua_State *co = sched_thread(&d->w);
    lua_pushvalue(co, d->ud_idx);
    sched_wake(&d->w, 1);
  }
  dial_finish(d);
}

static void connect_cb(uv_connect_t *req, int status);

static void dial_next(struct dial *d) {
  while (d->cur) {
    struct stream *s = stream_new();
    if (!s) {
      d->last_err = UV_ENOMEM;
      break;
    }
    int rc = uv_tcp_connect(&d->creq, &s->tcp, d->cur->ai_addr, connect_cb);
    if (rc == 0) {
      d->s = s;
      d->connect_pending = true;
      return;
    }
    d->last_err = rc;
    stream_close(s);
    d->cur = d->cur->ai_next;
  }
  dial_fail(d, d->last_err, connect_cause(d->last_err));
}

static void connect_cb(uv_connect_t *req, int status) {
  struct dial *d = container_of(req, struct dial, creq);
  d->connect_pending = false;
  if (d->orphaned) { /* cancelled: the attempt was closed already */
    dial_maybe_free(d);
    return;
  }
  if (status == 0) {
    dial_succeed(d);
    return;
  }
  d->last_err = status;
  stream_close(d->s);
  d->s = NULL;
  d->cur = d->cur->ai_next;
  dial_next(d);
}

static void gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct dial *d = container_of(req, struct dial, gai);
  d->gai_pending = false;
  if (d->orphaned) {
    if (res) uv_freeaddrinfo(res);
    dial_maybe_free(d);
    return;
  }
  if (status < 0) {
    dial_fail(d, status, "dns");
    return;
  }
  d->ai = d->cur = res;
  dial_next(d);
}

static void dial_start(struct dial *d) {
  d->last_err = UV_ECONNREFUSED;
  if (d->numeric) {
    d->cur = &d->one;
    dial_next(d);
    return;
  }
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  int rc = uv_getaddrinfo(atom_loop, &d->gai, gai_cb, d->host, d->port, &hints);
  if (rc != 0) {
    dial_fail(d, rc, "dns");
    return;
  }
  d->gai_pending = true;
}

static void dial_cancel(struct wait *w) {
  struct dial *d = container_of(w, struct dial, w);
  d->orphaned = true;
  timer_stop(&d->retry);
  if (d->s) {
    stream_close(d->s); /* its connect callback runs with UV_ECANCELED */
    d->s = NULL;
  }
  if (d->gai_pending) uv_cancel((uv_req_t *)&d->gai);
  dial_maybe_free(d);
}

/* Checks host and port (arguments 1, 2) and builds a dial. */
static struct dial *dial_new(lua_State *L, const char *fname) {
  size_t hl;
  if (lua_type(L, 1) != LUA_TSTRING) util_typeerror(L, 1, fname, "string");
  const char *host = lua_tolstring(L, 1, &hl);
  if (hl == 0 || hl >= 256) util_argerror(L, 1, fname, "invalid host name");
  int isint;
  lua_Integer port = lua_tointegerx(L, 2, &isint);
  if (lua_type(L, 2) != LUA_TNUMBER || !isint) util_typeerror(L, 2, fname, "integer");
  if (port < 1 || port > 65535) util_argerror(L, 2, fname, "port out of range 1-65535");
  struct dial *d = calloc(1, sizeof *d);
  if (!d) {
    util_error(L, "io", "%s: out of memory", fname); /* raises */
    return 0;
  }
  memcpy(d->host, host, hl + 1);
  snprintf(d->port, sizeof d->port, "%d", (int)port);
  snprintf(d->peer, sizeof d->peer, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, (int)port);
  timer_init(&d->retry);
  struct sockaddr_in *a4 = (struct sockaddr_in *)&d->addr;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&d->addr;
  if (uv_ip4_addr(host, (int)port, a4) == 0) {
    d->numeric = true;
    d->one.ai_addr = (struct sockaddr *)a4;
  } else if (uv_ip6_addr(host, (int)port, a6) == 0) {
    d->numeric = true;
    d->one.ai_addr = (struct sockaddr *)a6;
  }
  return d;
}

/* atom.tcp.connect(host, port [, timeout | opts]) -> stream (default timeout 30 s). */
static int l_tcp_connect(lua_State *L) {
  struct task *t = sched_enter(L, "connect");
  double timeout = util_opttimeout(L, 3, "connect", 30);
  if (timeout == HUGE_VAL) timeout = -1; /* no deadline */
  size_t max_line = opt_size(L, 3, 3, "connect", "max_line", MAX_LINE);
  lua_settop(L, 3);
  struct sud *u = lua_newuserdatauv(L, sizeof *u, 0); /* safe empty state first */
  u->s = NULL;
  luaL_setmetatable(L, STREAM_MT);
  int ud_idx = lua_gettop(L);
  struct dial *d = dial_new(L, "connect");
  d->task = t;
  d->ud = u;
  d->ud_idx = ud_idx;
  d->max_line = max_line;
  d->w = (struct wait){.cancel = dial_cancel, .what = "connect"};
  lua_pushfstring(L, "connect %s", d->peer);
  dial_start(d);
  if (d->now_err) {
    push_io_error(L, NULL, d->now_cause, "connect %s: %s", d->peer, uv_strerror(d->now_err));
    dial_finish(d);
    return lua_error(L);
  }
  return sched_wait(L, &d->w, timeout, lua_gettop(L));
}

/* atom.wait_port(host, port [, timeout | opts]): wait until a TCP connect
 * succeeds (opts: timeout = 30, interval = 0.05 between attempts). */
static int l_wait_port(lua_State *L) {
  struct task *t = sched_enter(L, "wait_port");
  double timeout = util_opttimeout(L, 3, "wait_port", 30);
  if (timeout == HUGE_VAL) timeout = -1; /* no deadline */
  double interval = 0.05;
  if (lua_type(L, 3) == LUA_TTABLE) {
    lua_getfield(L, 3, "interval");
    if (!lua_isnil(L, -1)) {
      if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 0))
        util_argerror(L, 3, "wait_port", "field 'interval' must be a non-negative number");
      interval = lua_tonumber(L, -1);
    }
    lua_pop(L, 1);
  }
  lua_settop(L, 3);
  struct dial *d = dial_new(L, "wait_port");
  d->task = t;
  d->probe = true;
  d->interval = interval;
  d->w = (struct wait){.cancel = dial_cancel, .what = "wait_port"};
  lua_pushfstring(L, "wait_port %s", d->peer);
  dial_start(d);
  return sched_wait(L, &d->w, timeout, lua_gettop(L));
}

/* }==== */

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg net_lib[] = {
    {"tcp_connect", l_tcp_connect}, {"wait_port", l_wait_port}, {NULL, NULL}};

void net_register(lua_State *L) {
  if (luaL_newmetatable(L, STREAM_MT)) {
    static const luaL_Reg methods[] = {{"read", l_stream_read},
                                       {"read_line", l_stream_read_line},
                                       {"write", l_stream_write},
                                       {"close", l_stream_close},
                                       {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_stream_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_stream_close);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, l_stream_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}

/* ws.c — WebSocket connections (SPEC §10) on atomlua's own TCP streams: the
 * socket of a connected atom.tcp stream (net_detach) on a uv_tcp_t of ours,
 * optional TLS on memory BIOs (tls.c), and RFC 6455 framing by wslay, which
 * does no I/O: it parses what we hand it and gives back bytes to send.
 * libwslay.so.1 is loaded with dlopen on the first connect (start-up stays as
 * it was). lua/atom/ws.lua does the URL, the handshake's policy, events and
 * ownership; this file moves bytes, queues messages and waits.
 *
 * Back-pressure: received messages wait in a queue of at most Q_MSGS
 * messages or Q_BYTES bytes. While it is full wslay is not fed; input piles up
 * to IN_HIGH, then the socket is no longer read, so the peer's TCP window
 * closes. Nothing is dropped and memory stays bounded. */
#include "ws.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>
#include <wslay/wslay.h>

#include "atom.h"

#define WS_MT "atom.ws"
#define IN_HIGH (256 * 1024)
#define READ_CHUNK (64 * 1024)
#define Q_MSGS 1000
#define Q_BYTES (16u << 20)
#define HEAD_MAX (64 * 1024)
#define CLOSE_WAIT 1.0

/* {==== wslay, loaded at run time ==== */

static struct {
  int (*client_init)(wslay_event_context_ptr *, const struct wslay_event_callbacks *, void *);
  void (*ctx_free)(wslay_event_context_ptr);
  void (*set_max)(wslay_event_context_ptr, uint64_t);
  int (*recv)(wslay_event_context_ptr);
  int (*send)(wslay_event_context_ptr);
  int (*queue_msg)(wslay_event_context_ptr, const struct wslay_event_msg *);
  int (*queue_close)(wslay_event_context_ptr, uint16_t, const uint8_t *, size_t);
  void (*set_error)(wslay_event_context_ptr, int);
  int (*want_write)(wslay_event_context_ptr);
  int (*read_enabled)(wslay_event_context_ptr);
  int (*close_sent)(wslay_event_context_ptr);
  uint16_t (*code_sent)(wslay_event_context_ptr);
} W;
static bool wslay_loaded;

static bool wslay_load(char *err, size_t errsize) {
  if (wslay_loaded) return true;
  void *lib = dlopen("libwslay.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(err, errsize, "cannot load libwslay (package libwslay1): %s", dlerror());
    return false;
  }
  static const struct {
    const char *name;
    size_t off;
  } syms[] = {
#define SYM(f, n) {"wslay_event_" n, offsetof(__typeof__(W), f)}
      SYM(client_init, "context_client_init"),
      SYM(ctx_free, "context_free"),
      SYM(set_max, "config_set_max_recv_msg_length"),
      SYM(recv, "recv"),
      SYM(send, "send"),
      SYM(queue_msg, "queue_msg"),
      SYM(queue_close, "queue_close"),
      SYM(set_error, "set_error"),
      SYM(want_write, "want_write"),
      SYM(read_enabled, "get_read_enabled"),
      SYM(close_sent, "get_close_sent"),
      SYM(code_sent, "get_status_code_sent"),
#undef SYM
  };
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    void *f = dlsym(lib, syms[i].name);
    if (!f) {
      snprintf(err, errsize, "libwslay.so.1 lacks %s", syms[i].name);
      return false;
    }
    memcpy((char *)&W + syms[i].off, &f, sizeof f);
  }
  wslay_loaded = true;
  return true;
}

/* }==== */

struct msg {
  struct msg *next;
  size_t len;
  bool binary;
  char data[];
};

/* What a waiting reader wants. */
enum { R_NONE, R_TLS, R_HEAD, R_SOME, R_MSG, R_CLOSE };

struct ws {
  uv_tcp_t tcp;
  bool open;    /* the handle is not closing */
  bool ud_gone; /* the userdata was collected: free on the close callback */
  bool reading, eof, frames, tls_ready, closing;
  int err; /* the uv error that ended reading, or 0 */
  struct tls *tls;
  char *in; /* plaintext not yet parsed: in[in_start, in_start + in_len) */
  size_t in_start, in_len, in_cap;
  char *out; /* bytes to send, gathered from wslay or a raw write */
  size_t out_len, out_cap;
  wslay_event_context_ptr ctx;
  struct msg *qh, *qt;
  size_t qn, qbytes;
  struct wait rw;
  struct task *reader;
  int rmode;
  size_t rwant;
  struct timer close_timer;
  const char *fail_cause; /* the connection failed: io cause, message in fail_msg */
  char fail_msg[200];
  bool close_rcvd;
  int close_code;
  char *close_reason;
  size_t close_reason_len;
  int writes; /* uv writes in flight */
  lua_Integer sent, received;
  char peer[300];
};

struct wud {
  struct ws *w;
};

/* {==== errors ==== */

static void push_err(lua_State *L, struct task *task, const char *kind, const char *cause,
                     const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  const char *msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  util_push_error(L, kind, "%s", msg);
  lua_remove(L, -2);
  if (cause) {
    lua_pushstring(L, cause);
    lua_setfield(L, -2, "cause");
  }
  if (task) {
    sched_task_name(L, task);
    lua_setfield(L, -2, "task");
  }
}

static const char *uv_cause(int err) {
  if (err == UV_EOF) return "eof";
  if (err == UV_ECANCELED) return "closed";
  return "reset";
}

/* }==== */

/* {==== lifetime ==== */

static void ws_free(struct ws *w) {
  while (w->qh) {
    struct msg *m = w->qh;
    w->qh = m->next;
    free(m);
  }
  if (w->ctx) W.ctx_free(w->ctx);
  tls_free(w->tls);
  free(w->in);
  free(w->out);
  free(w->close_reason);
  free(w);
}

static void close_cb(uv_handle_t *h) {
  struct ws *w = container_of(h, struct ws, tcp);
  w->open = false;
  if (w->ud_gone) ws_free(w);
}

static bool handle_live(struct ws *w) { return !uv_is_closing((uv_handle_t *)&w->tcp); }

/* Close the socket now (pending writes get UV_ECANCELED). */
static void hard_close(struct ws *w) {
  timer_stop(&w->close_timer);
  if (handle_live(w)) uv_close((uv_handle_t *)&w->tcp, close_cb);
}

/* }==== */

/* {==== writing ==== */

struct wreq {
  uv_write_t req;
  struct ws *w;
  struct wait wt;
  struct task *task; /* the waiting writer, or NULL */
  size_t len;
  char data[];
};

static void fail(struct ws *w, const char *cause, const char *fmt, ...);
static void pump(struct ws *w);

static void write_cb(uv_write_t *req, int status) {
  struct wreq *r = container_of(req, struct wreq, req);
  struct ws *w = r->w;
  w->writes--;
  if (r->task) {
    if (status == 0) {
      sched_wake(&r->wt, 0);
    } else {
      lua_State *co = sched_thread(&r->wt);
      lua_checkstack(co, 4);
      push_err(co, r->task, "io", uv_cause(status), "ws send to %s: %s", w->peer,
               status == UV_ECANCELED ? "connection closed" : uv_strerror(status));
      sched_wake_error(&r->wt);
    }
  }
  free(r);
  if (status < 0 && status != UV_ECANCELED)
    fail(w, uv_cause(status), "ws %s: %s", w->peer, uv_strerror(status));
  /* A failed or finished connection closes once what it queued is out. */
  if (w->writes == 0 && (w->fail_cause || (w->closing && !w->reader))) hard_close(w);
}

static void write_orphan(struct wait *wt) { container_of(wt, struct wreq, wt)->task = NULL; }

static bool out_add(struct ws *w, const void *p, size_t n) {
  if (w->out_len + n > w->out_cap) {
    size_t cap = w->out_cap ? w->out_cap : 4096;
    while (cap < w->out_len + n) cap *= 2;
    char *q = realloc(w->out, cap);
    if (!q) return false;
    w->out = q;
    w->out_cap = cap;
  }
  memcpy(w->out + w->out_len, p, n);
  w->out_len += n;
  return true;
}

/* Hand w->out (encrypted first under TLS) to the socket: what the kernel does
 * not take at once goes into a write request, returned so a writer can wait
 * for it (NULL: all written, or nothing to write, or failed). */
static struct wreq *flush(struct ws *w) {
  if (w->tls && w->out_len > 0) {
    if (!tls_write(w->tls, w->out, w->out_len)) {
      w->out_len = 0;
      fail(w, "tls", "ws %s: TLS write failed", w->peer);
      return NULL;
    }
    w->out_len = 0;
  }
  if (w->tls) {
    size_t n = tls_pending(w->tls);
    if (n > 0 && w->out_cap < n) {
      char *q = realloc(w->out, n);
      if (!q) return NULL;
      w->out = q;
      w->out_cap = n;
    }
    w->out_len = n ? tls_take(w->tls, w->out, n) : 0;
  }
  if (w->out_len == 0 || !handle_live(w)) {
    w->out_len = 0;
    return NULL;
  }
  size_t done = 0;
  uv_buf_t b = uv_buf_init(w->out, (unsigned)w->out_len);
  int n = uv_try_write((uv_stream_t *)&w->tcp, &b, 1);
  if (n > 0) done = (size_t)n;
  if (n < 0 && n != UV_EAGAIN) {
    w->out_len = 0;
    fail(w, uv_cause(n), "ws %s: %s", w->peer, uv_strerror(n));
    return NULL;
  }
  if (done == w->out_len) {
    w->out_len = 0;
    return NULL;
  }
  struct wreq *r = malloc(sizeof *r + w->out_len - done);
  if (!r) {
    w->out_len = 0;
    fail(w, "reset", "ws %s: out of memory", w->peer);
    return NULL;
  }
  r->w = w;
  r->task = NULL;
  r->len = w->out_len - done;
  memcpy(r->data, w->out + done, r->len);
  w->out_len = 0;
  if (w->out_cap > READ_CHUNK * 4) { /* a big message's buffer is not kept */
    free(w->out);
    w->out = NULL;
    w->out_cap = 0;
  }
  b = uv_buf_init(r->data, (unsigned)r->len);
  int rc = uv_write(&r->req, (uv_stream_t *)&w->tcp, &b, 1, write_cb);
  if (rc != 0) {
    free(r);
    fail(w, uv_cause(rc), "ws %s: %s", w->peer, uv_strerror(rc));
    return NULL;
  }
  w->writes++;
  return r;
}

/* }==== */

/* {==== reading ==== */

static bool queue_full(struct ws *w) { return w->qn >= Q_MSGS || w->qbytes >= Q_BYTES; }

static void read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *b);
static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b);

static void update_reading(struct ws *w) {
  bool want = handle_live(w) && !w->eof && !w->err && !w->fail_cause && w->in_len < IN_HIGH &&
              (w->closing || !w->frames || !queue_full(w));
  if (want && !w->reading) {
    if (uv_read_start((uv_stream_t *)&w->tcp, alloc_cb, read_cb) == 0) w->reading = true;
  } else if (!want && w->reading) {
    uv_read_stop((uv_stream_t *)&w->tcp);
    w->reading = false;
  }
}

/* Room for n more bytes at the end of w->in. */
static bool in_reserve(struct ws *w, size_t n) {
  if (w->in_cap - w->in_start - w->in_len >= n) return true;
  if (w->in_start > 0) {
    memmove(w->in, w->in + w->in_start, w->in_len);
    w->in_start = 0;
    if (w->in_cap - w->in_len >= n) return true;
  }
  size_t cap = w->in_cap ? w->in_cap : READ_CHUNK;
  while (cap - w->in_len < n) cap *= 2;
  char *p = realloc(w->in, cap);
  if (!p) return false;
  w->in = p;
  w->in_cap = cap;
  return true;
}

static void in_consume(struct ws *w, size_t n) {
  w->in_start += n;
  w->in_len -= n;
  if (w->in_len == 0) w->in_start = 0;
}

static char scratch[READ_CHUNK]; /* TLS ciphertext, fed to OpenSSL at once */

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *b) {
  (void)suggested;
  struct ws *w = container_of(h, struct ws, tcp);
  if (w->tls) {
    *b = uv_buf_init(scratch, sizeof scratch);
    return;
  }
  if (!in_reserve(w, READ_CHUNK)) {
    *b = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
    return;
  }
  *b =
      uv_buf_init(w->in + w->in_start + w->in_len, (unsigned)(w->in_cap - w->in_start - w->in_len));
}

/* Try to satisfy a reader of `mode`: push its results on L and return their
 * count + 1, push an error and return -1, or return 0 (must wait). */
static int produce(lua_State *L, struct ws *w, int mode, struct task *task) {
  switch (mode) {
    case R_TLS:
      if (w->tls_ready) return 1;
      break;
    case R_HEAD: {
      const char *p = w->in + w->in_start;
      const char *e = w->in_len >= 4 ? memmem(p, w->in_len, "\r\n\r\n", 4) : NULL;
      if (e) {
        size_t n = (size_t)(e - p) + 4;
        lua_pushlstring(L, p, n);
        in_consume(w, n);
        return 2;
      }
      if (w->in_len > HEAD_MAX) {
        push_err(L, task, "http", "protocol", "ws handshake with %s: response head over %d bytes",
                 w->peer, HEAD_MAX);
        return -1;
      }
      break;
    }
    case R_SOME:
      if (w->in_len > 0) {
        size_t n = w->in_len < w->rwant ? w->in_len : w->rwant;
        lua_pushlstring(L, w->in + w->in_start, n);
        in_consume(w, n);
        return 2;
      }
      if (w->eof && !w->fail_cause) {
        lua_pushnil(L);
        return 2;
      }
      break;
    case R_MSG:
      if (w->qh) {
        struct msg *m = w->qh;
        bool was_full = queue_full(w);
        w->qh = m->next;
        if (!w->qh) w->qt = NULL;
        w->qn--;
        w->qbytes -= m->len;
        lua_pushlstring(L, m->data, m->len);
        lua_pushstring(L, m->binary ? "binary" : "text");
        free(m);
        w->received++;
        (void)was_full;
        return 3;
      }
      if (w->close_rcvd) {
        lua_pushnil(L);
        return 2;
      }
      break;
    case R_CLOSE:
      if (w->close_rcvd || w->fail_cause || w->eof || w->err) return 1;
      return 0;
    default:
      return 0;
  }
  if (w->fail_cause) {
    push_err(L, task, "io", w->fail_cause, "%s", w->fail_msg);
    return -1;
  }
  if (w->eof || w->err) {
    const char *cause = w->eof ? "eof" : uv_cause(w->err);
    push_err(
        L, task, "io", cause, "ws %s: connection %s%s", w->peer,
        w->eof ? "closed without a close frame" : "failed: ", w->eof ? "" : uv_strerror(w->err));
    return -1;
  }
  if (!handle_live(w)) {
    push_err(L, task, "io", "closed", "ws %s: connection closed", w->peer);
    return -1;
  }
  return 0;
}

/* Wake the waiting reader if what it waits for is there. */
static void wake_reader(struct ws *w) {
  if (!w->reader) return;
  lua_State *co = sched_thread(&w->rw);
  lua_checkstack(co, 6);
  int mode = w->rmode;
  int r = produce(co, w, mode, w->reader);
  if (r == 0) return;
  w->reader = NULL;
  w->rmode = R_NONE;
  if (mode == R_CLOSE) {
    timer_stop(&w->close_timer);
    if (w->writes == 0) hard_close(w);
  }
  if (r > 0)
    sched_wake(&w->rw, r - 1);
  else
    sched_wake_error(&w->rw);
}

static void fail(struct ws *w, const char *cause, const char *fmt, ...) {
  if (w->fail_cause) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(w->fail_msg, sizeof w->fail_msg, fmt, ap);
  va_end(ap);
  w->fail_cause = cause;
  if (w->writes == 0) hard_close(w);
  wake_reader(w);
}

/* wslay callbacks: input comes from w->in, output goes to w->out. */
static ssize_t wslay_recv_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, int flags,
                             void *ud) {
  (void)flags;
  struct ws *w = ud;
  if (w->in_len == 0 || (!w->closing && queue_full(w))) {
    W.set_error(ctx, WSLAY_ERR_WOULDBLOCK);
    return -1;
  }
  size_t n = len < w->in_len ? len : w->in_len;
  memcpy(buf, w->in + w->in_start, n);
  in_consume(w, n);
  return (ssize_t)n;
}

static ssize_t wslay_send_cb(wslay_event_context_ptr ctx, const uint8_t *data, size_t len,
                             int flags, void *ud) {
  (void)flags;
  struct ws *w = ud;
  if (!out_add(w, data, len)) {
    W.set_error(ctx, WSLAY_ERR_CALLBACK_FAILURE);
    return -1;
  }
  return (ssize_t)len;
}

/* Masking keys (RFC 6455 §5.3): xorshift128+ seeded from the kernel. */
static uint64_t rng[2];
static uint64_t rng_next(void) {
  if (!rng[0] && !rng[1]) {
    if (getrandom(rng, sizeof rng, 0) != sizeof rng) rng[0] = uv_hrtime() | 1;
  }
  uint64_t s1 = rng[0];
  const uint64_t s0 = rng[1];
  rng[0] = s0;
  s1 ^= s1 << 23;
  rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
  return rng[1] + s0;
}

static int wslay_genmask_cb(wslay_event_context_ptr ctx, uint8_t *buf, size_t len, void *ud) {
  (void)ctx, (void)ud;
  for (size_t i = 0; i < len; i += 8) {
    uint64_t r = rng_next();
    memcpy(buf + i, &r, len - i < 8 ? len - i : 8);
  }
  return 0;
}

static void wslay_msg_cb(wslay_event_context_ptr ctx, const struct wslay_event_on_msg_recv_arg *a,
                         void *ud) {
  (void)ctx;
  struct ws *w = ud;
  if (a->opcode == WSLAY_TEXT_FRAME || a->opcode == WSLAY_BINARY_FRAME) {
    if (w->closing) return; /* the script closed: nobody reads these */
    bool binary = a->opcode == WSLAY_BINARY_FRAME;
    if (w->reader && w->rmode == R_MSG && !w->qh) { /* straight to the waiting reader */
      lua_State *co = sched_thread(&w->rw);
      lua_checkstack(co, 4);
      lua_pushlstring(co, (const char *)a->msg, a->msg_length);
      lua_pushstring(co, binary ? "binary" : "text");
      w->reader = NULL;
      w->rmode = R_NONE;
      w->received++;
      sched_wake(&w->rw, 2);
      return;
    }
    struct msg *m = malloc(sizeof *m + a->msg_length);
    if (!m) {
      W.set_error(ctx, WSLAY_ERR_NOMEM);
      return;
    }
    m->next = NULL;
    m->len = a->msg_length;
    m->binary = binary;
    memcpy(m->data, a->msg, a->msg_length);
    if (w->qt)
      w->qt->next = m;
    else
      w->qh = m;
    w->qt = m;
    w->qn++;
    w->qbytes += m->len;
  } else if (a->opcode == WSLAY_CONNECTION_CLOSE) {
    w->close_rcvd = true;
    w->close_code = a->status_code ? a->status_code : 1005;
    if (a->msg_length > 2) {
      w->close_reason = malloc(a->msg_length - 2);
      if (w->close_reason) {
        memcpy(w->close_reason, a->msg + 2, a->msg_length - 2);
        w->close_reason_len = a->msg_length - 2;
      }
    }
  } /* pings are answered by wslay; pongs need nothing */
}

/* Move input along: TLS records into plaintext, plaintext into messages,
 * replies (pongs, the close echo) out; then wake the reader, and read the
 * socket only while there is room. */
static void pump(struct ws *w) {
  if (w->tls && !w->fail_cause) {
    char err[256];
    if (!w->tls_ready) {
      int r = tls_handshake(w->tls, err, sizeof err);
      flush(w);
      if (r < 0) fail(w, "tls", "wss %s: %s", w->peer, err);
      if (r > 0) w->tls_ready = true;
    }
    while (w->tls_ready && !w->fail_cause && w->in_len < IN_HIGH) {
      if (!in_reserve(w, 16384)) break;
      int r = tls_read(w->tls, w->in + w->in_start + w->in_len, w->in_cap - w->in_start - w->in_len,
                       err, sizeof err);
      if (r > 0) {
        w->in_len += (size_t)r;
        continue;
      }
      if (r == -1) w->eof = true;
      if (r == -2) fail(w, "tls", "wss %s: %s", w->peer, err);
      break;
    }
    if (w->tls_ready) flush(w);
  }
  if (w->frames && w->ctx && !w->fail_cause) {
    int r = W.read_enabled(w->ctx) ? W.recv(w->ctx) : 0;
    /* Replies wslay queued (pongs, the close echo, a 1009 close) go out first. */
    if (W.want_write(w->ctx)) {
      W.send(w->ctx);
      flush(w);
    }
    if (r != 0) {
      fail(w, "protocol", "ws %s: bad input from the peer (wslay error %d)", w->peer, r);
    } else if (!W.read_enabled(w->ctx) && !w->close_rcvd) {
      uint16_t code = W.code_sent(w->ctx);
      if (code == WSLAY_CODE_MESSAGE_TOO_BIG)
        fail(w, "too_large", "ws %s: a message is over max_message", w->peer);
      else
        fail(w, "protocol", "ws %s: the peer broke the protocol (close %d sent)", w->peer, code);
    }
  }
  wake_reader(w);
  update_reading(w);
}

static void read_cb(uv_stream_t *h, ssize_t nread, const uv_buf_t *b) {
  struct ws *w = container_of(h, struct ws, tcp);
  if (nread > 0) {
    if (w->tls)
      tls_feed(w->tls, b->base, (size_t)nread);
    else
      w->in_len += (size_t)nread;
  } else if (nread == UV_EOF) {
    w->eof = true;
  } else if (nread < 0) {
    w->err = (int)nread;
  } else {
    return;
  }
  pump(w);
}

static void reader_cancel(struct wait *wt) {
  struct ws *w = container_of(wt, struct ws, rw);
  int mode = w->rmode;
  w->reader = NULL;
  w->rmode = R_NONE;
  if (mode == R_CLOSE) hard_close(w); /* a cancelled close closes at once */
  update_reading(w);
}

static void close_timer_cb(struct timer *t) {
  struct ws *w = container_of(t, struct ws, close_timer);
  if (!w->reader || w->rmode != R_CLOSE) return;
  w->reader = NULL;
  w->rmode = R_NONE;
  hard_close(w);
  sched_wake(&w->rw, 0);
}

/* }==== */

/* {==== Lua methods ==== */

static struct ws *check_ws(lua_State *L, const char *fname) {
  struct wud *u = luaL_testudata(L, 1, WS_MT);
  if (!u) {
    util_typeerror(L, 1, fname, "ws");
    return NULL;
  }
  return u->w;
}

static double opt_timeout(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return -1;
  double t = lua_tonumber(L, idx);
  return t >= 0 ? t : -1;
}

/* Start a wait of `mode` (the caller checked no reader waits). */
static int wait_for(lua_State *L, struct ws *w, struct task *t, int mode, double timeout,
                    const char *what) {
  w->reader = t;
  w->rmode = mode;
  w->rw = (struct wait){.cancel = reader_cancel, .what = what};
  update_reading(w);
  lua_pushfstring(L, "%s %s", what, w->peer);
  return sched_wait(L, &w->rw, timeout, lua_gettop(L));
}

static int read_op(lua_State *L, int mode, const char *fname, double timeout, const char *what) {
  struct task *t = sched_enter(L, fname);
  struct ws *w = check_ws(L, fname);
  if (w->reader)
    return util_error(L, "usage", "%s: another task is already reading from %s", fname, w->peer);
  int r = produce(L, w, mode, NULL);
  if (r > 0) {
    if (w->frames && w->in_len > 0 && !queue_full(w))
      pump(w); /* input that waited for room in the queue */
    else
      update_reading(w);
    return r - 1;
  }
  if (r < 0) return lua_error(L);
  return wait_for(L, w, t, mode, timeout, what);
}

/* _atom.ws_wrap(stream, peer) -> ws: takes the connected stream's socket. */
static int l_ws_wrap(lua_State *L) {
  const char *peer = luaL_checkstring(L, 2);
  char err[256];
  if (!wslay_load(err, sizeof err)) return util_error(L, "io", "ws: %s", err);
  struct wud *u = lua_newuserdatauv(L, sizeof *u, 0);
  u->w = NULL;
  luaL_setmetatable(L, WS_MT);
  int fd = net_detach(L, 1);
  if (fd < 0) return lua_error(L);
  struct ws *w = calloc(1, sizeof *w);
  if (!w) return util_error(L, "io", "ws: out of memory");
  timer_init(&w->close_timer);
  snprintf(w->peer, sizeof w->peer, "%s", peer);
  uv_tcp_init(atom_loop, &w->tcp);
  w->tcp.data = NULL;
  w->open = true;
  if (uv_tcp_open(&w->tcp, fd) != 0) {
    close(fd);
    w->ud_gone = true;
    uv_close((uv_handle_t *)&w->tcp, close_cb);
    return util_error(L, "io", "ws: cannot use the socket");
  }
  uv_tcp_nodelay(&w->tcp, 1);
  size_t n;
  const char *ahead = lua_tolstring(L, -1, &n);
  if (n > 0 && in_reserve(w, n)) {
    memcpy(w->in, ahead, n);
    w->in_len = n;
  }
  lua_pop(L, 1);
  u->w = w;
  update_reading(w);
  return 1;
}

/* c:tls(host, ca|nil, cert|nil, key|nil, insecure, timeout): the TLS handshake. */
static int l_ws_tls(lua_State *L) {
  struct task *t = sched_enter(L, "connect");
  struct ws *w = check_ws(L, "connect");
  const char *host = luaL_checkstring(L, 2);
  char err[256];
  w->tls = tls_new(host, luaL_optstring(L, 3, NULL), luaL_optstring(L, 4, NULL),
                   luaL_optstring(L, 5, NULL), lua_toboolean(L, 6), err, sizeof err);
  if (!w->tls) {
    push_err(L, NULL, "io", "tls", "wss %s: %s", w->peer, err);
    return lua_error(L);
  }
  if (w->in_len > 0) { /* bytes read ahead before TLS were ciphertext */
    tls_feed(w->tls, w->in + w->in_start, w->in_len);
    w->in_len = w->in_start = 0;
  }
  double timeout = opt_timeout(L, 7);
  pump(w);
  if (w->reader) return util_error(L, "usage", "connect: busy");
  int r = produce(L, w, R_TLS, NULL);
  if (r > 0) return 0;
  if (r < 0) return lua_error(L);
  return wait_for(L, w, t, R_TLS, timeout, "TLS handshake with");
}

/* c:raw_write(data, timeout): the handshake request. */
static int l_ws_raw_write(lua_State *L) {
  struct task *t = sched_enter(L, "connect");
  struct ws *w = check_ws(L, "connect");
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  double timeout = opt_timeout(L, 3);
  if (!out_add(w, p, n)) return util_error(L, "io", "ws: out of memory");
  struct wreq *r = flush(w);
  if (w->fail_cause) {
    push_err(L, NULL, "io", w->fail_cause, "%s", w->fail_msg);
    return lua_error(L);
  }
  if (!r) return 0;
  r->task = t;
  r->wt = (struct wait){.cancel = write_orphan, .what = "ws handshake"};
  lua_pushfstring(L, "ws handshake with %s", w->peer);
  return sched_wait(L, &r->wt, timeout, lua_gettop(L));
}

/* c:raw_head(timeout) -> the response head, up to and with its blank line. */
static int l_ws_raw_head(lua_State *L) {
  return read_op(L, R_HEAD, "connect", opt_timeout(L, 2), "ws handshake with");
}

/* c:raw_read(max, timeout) -> up to max bytes, or nil at EOF. */
static int l_ws_raw_read(lua_State *L) {
  struct ws *w = check_ws(L, "connect");
  w->rwant = (size_t)luaL_checkinteger(L, 2);
  return read_op(L, R_SOME, "connect", opt_timeout(L, 3), "ws handshake with");
}

/* c:start(max_message): the handshake is done, frames from here on. */
static int l_ws_start(lua_State *L) {
  struct ws *w = check_ws(L, "connect");
  lua_Integer max = luaL_checkinteger(L, 2);
  static const struct wslay_event_callbacks cbs = {
      .recv_callback = wslay_recv_cb,
      .send_callback = wslay_send_cb,
      .genmask_callback = wslay_genmask_cb,
      .on_msg_recv_callback = wslay_msg_cb,
  };
  if (W.client_init(&w->ctx, &cbs, w) != 0) return util_error(L, "io", "ws: out of memory");
  W.set_max(w->ctx, (uint64_t)max);
  w->frames = true;
  pump(w);
  return 0;
}

/* c:recv(timeout) -> data, kind | nil once the peer closed. */
static int l_ws_recv(lua_State *L) {
  return read_op(L, R_MSG, "recv", opt_timeout(L, 2), "ws:recv() from");
}

/* c:send(data, binary, timeout): returns once the kernel has the frame. */
static int l_ws_send(lua_State *L) {
  struct task *t = sched_enter(L, "send");
  struct ws *w = check_ws(L, "send");
  size_t n;
  const char *p = luaL_checklstring(L, 2, &n);
  bool binary = lua_toboolean(L, 3);
  double timeout = opt_timeout(L, 4);
  const char *cause = w->fail_cause;
  if (!cause && !handle_live(w)) cause = "closed";
  if (!cause && (W.close_sent(w->ctx) || w->closing)) cause = "closed";
  if (!cause && (w->eof || w->err)) cause = w->eof ? "eof" : uv_cause(w->err);
  if (cause) {
    if (w->fail_cause)
      push_err(L, NULL, "io", cause, "%s", w->fail_msg);
    else
      push_err(L, NULL, "io", cause, "ws:send() to %s: connection %s", w->peer,
               strcmp(cause, "closed") == 0 ? "closed" : "lost");
    return lua_error(L);
  }
  struct wslay_event_msg m = {.opcode = binary ? WSLAY_BINARY_FRAME : WSLAY_TEXT_FRAME,
                              .msg = (const uint8_t *)p,
                              .msg_length = n};
  if (W.queue_msg(w->ctx, &m) != 0 || W.send(w->ctx) != 0)
    return util_error(L, "io", "ws:send() to %s: out of memory", w->peer);
  w->sent++;
  struct wreq *r = flush(w);
  if (w->fail_cause) {
    push_err(L, NULL, "io", w->fail_cause, "%s", w->fail_msg);
    return lua_error(L);
  }
  if (!r) return 0;
  r->task = t;
  r->wt = (struct wait){.cancel = write_orphan, .what = "ws:send()"};
  lua_pushfstring(L, "ws:send() to %s", w->peer);
  return sched_wait(L, &r->wt, timeout, lua_gettop(L));
}

/* The script closes: a task blocked in recv gets io "closed". */
static void wake_closed(struct ws *w) {
  w->closing = true;
  if (!w->reader) return;
  lua_State *co = sched_thread(&w->rw);
  lua_checkstack(co, 4);
  push_err(co, w->reader, "io", "closed", "ws:recv() from %s: connection closed", w->peer);
  w->reader = NULL;
  w->rmode = R_NONE;
  sched_wake_error(&w->rw);
}

/* c:close(code, reason): send a close frame (unless the connection is gone)
 * and wait up to 1 s for the peer's, then close the socket. Idempotent. */
static int l_ws_close(lua_State *L) {
  struct wud *u = luaL_testudata(L, 1, WS_MT);
  if (!u) return util_typeerror(L, 1, "close", "ws");
  struct ws *w = u->w;
  if (!w || !handle_live(w) || w->closing) return 0;
  int code = (int)luaL_optinteger(L, 2, 1000);
  size_t rl = 0;
  const char *reason = luaL_optlstring(L, 3, "", &rl);
  wake_closed(w);
  if (!w->frames || w->fail_cause || w->eof || w->err) {
    hard_close(w);
    return 0;
  }
  if (!W.close_sent(w->ctx)) {
    W.queue_close(w->ctx, (uint16_t)code, (const uint8_t *)reason, rl);
    W.send(w->ctx);
    flush(w);
  }
  if (w->close_rcvd || w->fail_cause || !handle_live(w)) {
    if (w->writes == 0) hard_close(w);
    return 0;
  }
  struct task *t = sched_current(L);
  if (!t) { /* outside a task (a luv callback): no waiting */
    hard_close(w);
    return 0;
  }
  pump(w); /* input already here may hold the peer's close */
  if (w->close_rcvd || !handle_live(w)) {
    if (handle_live(w) && w->writes == 0) hard_close(w);
    return 0;
  }
  timer_start(&w->close_timer, CLOSE_WAIT, close_timer_cb);
  w->reader = t;
  w->rmode = R_CLOSE;
  w->rw = (struct wait){.cancel = reader_cancel, .what = "ws:close()"};
  update_reading(w);
  lua_pushfstring(L, "ws:close() %s", w->peer);
  return sched_wait(L, &w->rw, -1, lua_gettop(L));
}

/* c:abort(): close the socket at once, no close frame. */
static int l_ws_abort(lua_State *L) {
  struct ws *w = check_ws(L, "abort");
  if (w && handle_live(w)) {
    wake_closed(w);
    hard_close(w);
  }
  return 0;
}

/* c:info() -> close_code|nil, close_reason|nil, sent, received, fail_cause|nil, open */
static int l_ws_info(lua_State *L) {
  struct ws *w = check_ws(L, "info");
  if (w->close_rcvd)
    lua_pushinteger(L, w->close_code);
  else
    lua_pushnil(L);
  if (w->close_rcvd)
    lua_pushlstring(L, w->close_reason ? w->close_reason : "", w->close_reason_len);
  else
    lua_pushnil(L);
  lua_pushinteger(L, w->sent);
  lua_pushinteger(L, w->received);
  if (w->fail_cause)
    lua_pushstring(L, w->fail_cause);
  else
    lua_pushnil(L);
  lua_pushboolean(L, handle_live(w));
  lua_pushinteger(L, (lua_Integer)w->qn);
  return 7;
}

static int l_ws_gc(lua_State *L) {
  struct wud *u = lua_touserdata(L, 1);
  struct ws *w = u ? u->w : NULL;
  if (!w) return 0;
  u->w = NULL;
  w->reader = NULL;
  w->ud_gone = true;
  timer_stop(&w->close_timer);
  if (handle_live(w))
    uv_close((uv_handle_t *)&w->tcp, close_cb);
  else if (!w->open)
    ws_free(w);
  return 0;
}

/* _atom.ws_accept(key) -> base64(sha1(key .. GUID)), and random bytes. */
static int l_ws_accept(lua_State *L) {
  size_t n;
  const char *key = luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, key, n);
  luaL_addstring(&b, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
  luaL_pushresult(&b);
  size_t kn;
  const char *k = lua_tolstring(L, -1, &kn);
  uint8_t d[20];
  sha1(k, kn, d);
  lua_pushlstring(L, (const char *)d, 20);
  return 1;
}

static int l_ws_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 0 || n > 256) return luaL_argerror(L, 1, "0..256");
  uint8_t buf[256];
  for (lua_Integer i = 0; i < n; i += 8) {
    uint64_t r = rng_next();
    memcpy(buf + i, &r, n - i < 8 ? (size_t)(n - i) : 8);
  }
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  return 1;
}

/* }==== */

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg ws_lib[] = {{"ws_wrap", l_ws_wrap},
                           {"ws_accept_digest", l_ws_accept},
                           {"ws_random", l_ws_random},
                           {NULL, NULL}};

void ws_register(lua_State *L) {
  if (luaL_newmetatable(L, WS_MT)) {
    static const luaL_Reg methods[] = {{"tls", l_ws_tls},
                                       {"raw_write", l_ws_raw_write},
                                       {"raw_head", l_ws_raw_head},
                                       {"raw_read", l_ws_raw_read},
                                       {"start", l_ws_start},
                                       {"recv", l_ws_recv},
                                       {"send", l_ws_send},
                                       {"close", l_ws_close},
                                       {"abort", l_ws_abort},
                                       {"info", l_ws_info},
                                       {NULL, NULL}};
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_ws_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}

/* remote.c — the driving side of a host's agent (agent.c, docs/hosts.md):
 * the "atom.link" userdata reads the transport's stdout as frames and its
 * stderr into a bounded tail, answers the tasks waiting on requests
 * (spawn, free_port, put, get, dir), and feeds the processes of the host —
 * ordinary proc.c processes whose pid is the host's — with their output,
 * exit and group end. Frames to the agent go into the transport's stdin
 * queue (procin.c), so requests, signals and stdin keep their order.
 * lua/atom/host.lua is the policy: the bootstrap, upload, hello, the API. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "atom.h"
#include "proc.h"

#define MT "atom.link"
#define ERR_TAIL 8192

struct lpoll { /* outlives the link while uv_close runs */
  uv_poll_t h;
  struct link *l;
  int s; /* 0: frames, 1: stderr */
};

struct lwait {
  struct wait w;
  struct link *l; /* NULL once unlinked */
  struct lwait *next;
  uint32_t id;
  bool hello; /* waits for the hello (or the upload prompt) */
};

struct pend { /* frames for a process whose handle does not exist yet */
  uint32_t id;
  char *buf;
  size_t len;
  struct pend *next;
};

struct link {
  char *name;
  int fd[2];       /* ours: frames, stderr; -1 once closed */
  int child_fd[2]; /* the transport's ends until attach */
  struct lpoll *poll[2];
  struct proc *t; /* the transport (kept alive by the userdata's uservalue) */
  char *in;
  size_t len, cap;
  char errtail[ERR_TAIL];
  size_t errlen;
  bool hello, upload, eof, closing;
  uint32_t proto;
  char version[64], *fatal;
  struct lwait *waiters;
  struct proc *procs;
  struct pend *pend;
};

static char rbuf[64 * 1024];

static struct link *check_link(lua_State *L, int i) {
  struct link *l = luaL_checkudata(L, i, MT);
  if (!l->name) luaL_error(L, "link already collected");
  return l;
}

static void put32(char *p, uint32_t v) {
  p[0] = (char)(v >> 24), p[1] = (char)(v >> 16), p[2] = (char)(v >> 8), p[3] = (char)v;
}

static uint32_t get32(const char *p) {
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* {==== sending ==== */

static bool send_frame(struct link *l, int type, uint32_t id, const char *a, size_t na,
                       const char *b, size_t nb) {
  struct proc *t = l->t;
  if (!t || t->in_fd < 0 || l->eof) return false;
  size_t n = AGENT_HDR + na + nb;
  char *f = malloc(n);
  if (!f) return false;
  put32(f, (uint32_t)(5 + na + nb));
  f[4] = (char)type;
  put32(f + 5, id);
  if (na) memcpy(f + AGENT_HDR, a, na);
  if (nb) memcpy(f + AGENT_HDR + na, b, nb);
  proc_stdin_queue(t, f, n);
  free(f);
  proc_stdin_flush(t);
  return true;
}

void remote_signal(struct proc *p, int sig) {
  if (!p->link) return;
  char s[4];
  put32(s, (uint32_t)sig);
  send_frame(p->link, A_SIGNAL, p->rid, s, 4, NULL, 0);
}

void remote_stdin(struct proc *p, const char *data, size_t n) {
  if (!p->link) return;
  if (!data)
    send_frame(p->link, A_CLOSE, p->rid, NULL, 0, NULL, 0);
  else if (n > 0)
    send_frame(p->link, A_WRITE, p->rid, data, n, NULL, 0);
}

/* }==== */

/* {==== processes ==== */

static void deliver(struct link *l, struct proc *p, int type, const char *d, size_t n);

static void replay(struct proc *p);

/* What came before the handle existed is delivered on the next loop turn,
 * not inside the spawn: a quick exit must find the script's p:wait() (as
 * a local exit, which the loop reports, does), not count as unexpected. */
static void replay_cb(struct timer *tm) { replay(container_of(tm, struct proc, replay)); }

void remote_attach(lua_State *L, int idx, struct proc *p, uint32_t rid) {
  struct link *l = check_link(L, idx);
  p->link = l;
  p->rid = rid;
  p->rnext = l->procs;
  l->procs = p;
  bool pending = l->eof;
  for (struct pend *e = l->pend; e && !pending; e = e->next) pending = e->id == rid;
  if (pending)
    timer_start(&p->replay, 0, replay_cb);
  else if (p->in_head)
    proc_stdin_flush(p); /* stdin = "data" queued at the spawn */
}

static void replay(struct proc *p) {
  struct link *l = p->link;
  if (!l) return;
  uint32_t rid = p->rid;
  for (struct pend **pp = &l->pend; *pp; pp = &(*pp)->next) {
    struct pend *e = *pp;
    if (e->id != rid) continue;
    *pp = e->next;
    for (size_t off = 0; off + AGENT_HDR <= e->len;) { /* replay in order */
      uint32_t len = get32(e->buf + off);
      deliver(l, p, e->buf[off + 4], e->buf + off + AGENT_HDR, len - 5);
      off += 4 + len;
      if (!p->link) break; /* released meanwhile */
    }
    free(e->buf);
    free(e);
    break;
  }
  if (p->link && p->in_head) proc_stdin_flush(p);   /* stdin = "data" queued at the spawn */
  if (l->eof && p->link) deliver(l, p, 0, NULL, 0); /* the transport is gone already */
}

void remote_detach(struct proc *p) {
  struct link *l = p->link;
  if (!l) return;
  for (struct proc **pp = &l->procs; *pp; pp = &(*pp)->rnext)
    if (*pp == p) {
      *pp = p->rnext;
      break;
    }
  p->link = NULL;
  p->rnext = NULL;
}

/* One event for p; type 0: the transport is lost (p ends as if SIGKILLed). */
static void deliver(struct link *l, struct proc *p, int type, const char *d, size_t n) {
  switch (type) {
    case A_OUT:
      if (n >= 1) proc_remote_feed(p, d[0] ? 1 : 0, d + 1, n - 1);
      break;
    case A_EOF:
      if (n >= 1) proc_remote_eof(p, d[0] ? 1 : 0);
      break;
    case A_EXIT:
      if (n >= 4) proc_remote_exit(p, (int)get32(d));
      break;
    case A_GONE:
      proc_remote_gone(p);
      break;
    case 0:
      if (l->closing) { /* h:close() or the owner's end: the script's doing */
        p->critical = false;
        p->caused = true;
      }
      remote_detach(p);
      p->link = NULL;
      proc_remote_exit(p, SIGKILL);
      proc_remote_eof(p, 0);
      proc_remote_eof(p, 1);
      proc_remote_gone(p);
      break;
    default:
      break;
  }
}

static struct proc *find_proc(struct link *l, uint32_t id) {
  for (struct proc *p = l->procs; p; p = p->rnext)
    if (p->rid == id) return p;
  return NULL;
}

static struct pend *find_pend(struct link *l, uint32_t id) {
  for (struct pend *e = l->pend; e; e = e->next)
    if (e->id == id) return e;
  return NULL;
}

/* }==== */

/* {==== waits ==== */

static void lwait_unlink(struct lwait *lw) {
  struct link *l = lw->l;
  if (!l) return;
  for (struct lwait **pp = &l->waiters; *pp; pp = &(*pp)->next)
    if (*pp == lw) {
      *pp = lw->next;
      break;
    }
  lw->l = NULL;
}

static void lwait_cancel(struct wait *w) { lwait_unlink(container_of(w, struct lwait, w)); }

static void push_lost(lua_State *T, struct link *l) {
  if (l->fatal)
    util_push_error(T, "process", "host %s: the agent refused: %s", l->name, l->fatal);
  else
    util_push_error(T, "process", "host %s: the connection to the agent was lost%s%.*s", l->name,
                    l->errlen ? "; transport stderr:\n" : "", (int)l->errlen, l->errtail);
}

/* The hello came (or the bootstrap asks for the binary, or it ended). */
static void wake_hello(struct link *l) {
  for (struct lwait *lw = l->waiters, *next; lw; lw = next) {
    next = lw->next;
    if (!lw->hello) continue;
    lwait_unlink(lw);
    lua_State *T = sched_thread(&lw->w);
    if (!T) continue;
    sched_wake(&lw->w, 0);
  }
}

/* The reply to request id: kind letter and payload; false if nobody waits. */
static bool wake_reply(struct link *l, uint32_t id, int type, const char *d, size_t n) {
  for (struct lwait *lw = l->waiters; lw; lw = lw->next) {
    if (lw->hello || lw->id != id) continue;
    lwait_unlink(lw);
    lua_State *T = sched_thread(&lw->w);
    if (!T) return false;
    char k[2] = {(char)type, 0};
    lua_pushstring(T, k);
    lua_pushlstring(T, d, n);
    sched_wake(&lw->w, 2);
    return true;
  }
  return false;
}

/* }==== */

/* {==== reading ==== */

static void lpoll_close_cb(uv_handle_t *h) { free(container_of((uv_poll_t *)h, struct lpoll, h)); }

static void close_side(struct link *l, int s) {
  struct lpoll *lp = l->poll[s];
  if (lp) {
    lp->l = NULL;
    uv_poll_stop(&lp->h);
    if (!uv_is_closing((uv_handle_t *)&lp->h)) uv_close((uv_handle_t *)&lp->h, lpoll_close_cb);
    l->poll[s] = NULL;
  }
  if (l->fd[s] >= 0) close(l->fd[s]);
  l->fd[s] = -1;
}

/* The transport's stdout ended: every process of the host ends, every
 * waiting task gets the error. */
static void link_lost(struct link *l) {
  if (l->eof) return;
  l->eof = true;
  close_side(l, 0);
  while (l->procs) deliver(l, l->procs, 0, NULL, 0);
  while (l->pend) {
    struct pend *e = l->pend;
    l->pend = e->next;
    free(e->buf);
    free(e);
  }
  while (l->waiters) {
    struct lwait *lw = l->waiters;
    bool hello = lw->hello;
    lwait_unlink(lw);
    lua_State *T = sched_thread(&lw->w);
    if (!T) continue;
    if (hello) {
      sched_wake(&lw->w, 0); /* l:hello() looks at the state */
    } else {
      push_lost(T, l);
      sched_wake_error(&lw->w);
    }
  }
}

static void on_frame(struct link *l, int type, uint32_t id, const char *d, size_t n) {
  switch (type) {
    case A_HELLO_R:
      l->proto = n >= 4 ? get32(d) : 0;
      snprintf(l->version, sizeof l->version, "%.*s", n > 4 ? (int)(n - 4) : 0, d + 4);
      l->hello = true;
      wake_hello(l);
      return;
    case A_FATAL:
      free(l->fatal);
      l->fatal = strndup(d, n);
      wake_hello(l);
      return;
    case A_PID:
      if (wake_reply(l, id, type, d, n)) {
        struct pend *e = calloc(1, sizeof *e);
        if (e) {
          e->id = id;
          e->next = l->pend;
          l->pend = e;
        }
      } else { /* nobody will own it: the spawning task was cancelled */
        char s[4];
        put32(s, SIGKILL);
        send_frame(l, A_SIGNAL, id, s, 4, NULL, 0);
      }
      return;
    case A_OK:
    case A_ERR:
      wake_reply(l, id, type, d, n);
      return;
    default:
      break;
  }
  struct proc *p = find_proc(l, id);
  if (p) {
    deliver(l, p, type, d, n);
    return;
  }
  struct pend *e = find_pend(l, id);
  if (!e) return;
  char *nb = realloc(e->buf, e->len + AGENT_HDR + n);
  if (!nb) return;
  e->buf = nb;
  put32(nb + e->len, (uint32_t)(5 + n));
  nb[e->len + 4] = (char)type;
  put32(nb + e->len + 5, id);
  memcpy(nb + e->len + AGENT_HDR, d, n);
  e->len += AGENT_HDR + n;
}

/* "not the atomlua agent protocol; it sent: ..." quoting what came (malloc'd). */
static char *not_agent(const char *d, size_t n) {
  if (n > 200) n = 200;
  char *m = malloc(n * 4 + 80);
  if (!m) return NULL;
  char *q = m + sprintf(m, "not the atomlua agent protocol; it sent: \"");
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)d[i];
    q += (c >= 32 && c < 127 && c != '"') ? sprintf(q, "%c", c) : sprintf(q, "\\x%02x", c);
  }
  strcpy(q, "\"");
  return m;
}

static void parse(struct link *l) {
  size_t off = 0;
  static const char prompt[] = "atomlua-upload\n";
  if (!l->hello && !l->upload && l->len >= sizeof prompt - 1 &&
      memcmp(l->in, prompt, sizeof prompt - 1) == 0) {
    off = sizeof prompt - 1;
    l->upload = true;
    wake_hello(l);
  }
  while (l->len - off >= AGENT_HDR) {
    uint32_t len = get32(l->in + off);
    if (len < 5 || len > AGENT_FRAME_MAX) {
      /* Not an agent talking (a shell's greeting, a wrong binary). */
      free(l->fatal);
      l->fatal = not_agent(l->in + off, l->len - off);
      l->len = 0;
      link_lost(l);
      return;
    }
    if (l->len - off < 4 + (size_t)len) break;
    const char *f = l->in + off;
    off += 4 + (size_t)len;
    on_frame(l, f[4], get32(f + 5), f + AGENT_HDR, len - 5);
    if (l->eof) return;
  }
  memmove(l->in, l->in + off, l->len - off);
  l->len -= off;
}

static void lpoll_cb(uv_poll_t *h, int status, int events) {
  (void)events;
  struct lpoll *lp = container_of(h, struct lpoll, h);
  struct link *l = lp->l;
  if (!l) return;
  int s = lp->s;
  for (int i = 0; i < 16 && l->fd[s] >= 0; i++) {
    ssize_t k = status < 0 ? -1 : read(l->fd[s], rbuf, sizeof rbuf);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno == EAGAIN && status >= 0) break;
    if (k <= 0) {
      if (s == 0)
        link_lost(l);
      else
        close_side(l, 1);
      return;
    }
    if (s == 1) { /* keep the last ERR_TAIL bytes */
      size_t n = (size_t)k;
      const char *src = rbuf;
      if (n >= ERR_TAIL) {
        src += n - ERR_TAIL;
        n = ERR_TAIL;
        l->errlen = 0;
      } else if (l->errlen + n > ERR_TAIL) {
        size_t drop = l->errlen + n - ERR_TAIL;
        memmove(l->errtail, l->errtail + drop, l->errlen - drop);
        l->errlen -= drop;
      }
      memcpy(l->errtail + l->errlen, src, n);
      l->errlen += n;
      continue;
    }
    if (l->len + (size_t)k > l->cap) {
      size_t cap = l->cap ? l->cap : 65536;
      while (l->len + (size_t)k > cap) cap *= 2;
      char *nb = realloc(l->in, cap);
      if (!nb) {
        link_lost(l);
        return;
      }
      l->in = nb;
      l->cap = cap;
    }
    memcpy(l->in + l->len, rbuf, (size_t)k);
    l->len += (size_t)k;
    parse(l);
    if (l->eof) return;
  }
}

/* }==== */

/* {==== Lua ==== */

/* _atom.link_new(name) -> link, with pipes for the transport's stdout/stderr. */
static int l_new(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  struct link *l = lua_newuserdatauv(L, sizeof *l, 1);
  memset(l, 0, sizeof *l);
  l->fd[0] = l->fd[1] = l->child_fd[0] = l->child_fd[1] = -1;
  l->name = strdup(name);
  luaL_setmetatable(L, MT);
  for (int s = 0; s < 2; s++) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0) return util_error(L, "io", "pipe: %s", strerror(errno));
    fcntl(fds[0], F_SETFL, O_NONBLOCK);
    l->fd[s] = fds[0];
    l->child_fd[s] = fds[1];
  }
  return 1;
}

static int l_child_fds(lua_State *L) {
  struct link *l = check_link(L, 1);
  lua_pushinteger(L, l->child_fd[0]);
  lua_pushinteger(L, l->child_fd[1]);
  return 2;
}

/* link:attach(transport_handle): start reading; the child ends are its now. */
static int l_attach(lua_State *L) {
  struct link *l = check_link(L, 1);
  struct proc **pp = luaL_checkudata(L, 2, "atom.proc");
  l->t = *pp;
  lua_pushvalue(L, 2);
  lua_setiuservalue(L, 1, 1);
  for (int s = 0; s < 2; s++) {
    if (l->child_fd[s] >= 0) close(l->child_fd[s]);
    l->child_fd[s] = -1;
    struct lpoll *lp = calloc(1, sizeof *lp);
    if (!lp) return luaL_error(L, "out of memory");
    lp->l = l;
    lp->s = s;
    uv_poll_init(atom_loop, &lp->h, l->fd[s]);
    uv_poll_start(&lp->h, UV_READABLE, lpoll_cb);
    l->poll[s] = lp;
  }
  return 0;
}

/* link:hello(timeout, desc) -> "hello", proto, version | "upload" | "fatal",
 * message | "eof", stderr tail. Waits until one of them is known. */
static int l_hello(lua_State *L) {
  struct link *l = check_link(L, 1);
  double timeout = lua_isnoneornil(L, 2) ? -1 : luaL_checknumber(L, 2);
  struct task *t = sched_enter(L, "atom.host");
  if (l->fatal) {
    lua_pushliteral(L, "fatal");
    lua_pushstring(L, l->fatal);
    return 2;
  }
  if (l->hello) {
    lua_pushliteral(L, "hello");
    lua_pushinteger(L, l->proto);
    lua_pushstring(L, l->version);
    return 3;
  }
  if (l->upload) {
    l->upload = false; /* asked once */
    lua_pushliteral(L, "upload");
    return 1;
  }
  if (l->eof) {
    lua_pushliteral(L, "eof");
    lua_pushlstring(L, l->errtail, l->errlen);
    return 2;
  }
  struct lwait *lw = sched_wait_alloc(L, t, sizeof *lw);
  lw->l = l;
  lw->hello = true;
  lw->w.what = "atom.host";
  lw->w.cancel = lwait_cancel;
  lw->next = l->waiters;
  l->waiters = lw;
  int r = sched_wait(L, &lw->w, timeout, lua_type(L, 3) == LUA_TSTRING ? 3 : 0);
  return r;
}

/* link:send(type, id, payload): a frame, no reply awaited. */
static int l_send(lua_State *L) {
  struct link *l = check_link(L, 1);
  const char *type = luaL_checkstring(L, 2);
  size_t n;
  const char *d = luaL_optlstring(L, 4, "", &n);
  lua_pushboolean(L, send_frame(l, type[0], (uint32_t)luaL_checkinteger(L, 3), d, n, NULL, 0));
  return 1;
}

/* link:request(type, id, payload, timeout, desc) -> kind, payload. */
static int l_request(lua_State *L) {
  struct link *l = check_link(L, 1);
  const char *type = luaL_checkstring(L, 2);
  uint32_t id = (uint32_t)luaL_checkinteger(L, 3);
  size_t n;
  const char *d = luaL_optlstring(L, 4, "", &n);
  double timeout = lua_isnoneornil(L, 5) ? -1 : luaL_checknumber(L, 5);
  struct task *t = sched_enter(L, "host request");
  if (l->eof || !l->t || l->t->in_fd < 0) {
    push_lost(L, l);
    return lua_error(L);
  }
  send_frame(l, type[0], id, d, n, NULL, 0);
  struct lwait *lw = sched_wait_alloc(L, t, sizeof *lw);
  lw->l = l;
  lw->id = id;
  lw->w.what = "host request";
  lw->w.cancel = lwait_cancel;
  lw->next = l->waiters;
  l->waiters = lw;
  return sched_wait(L, &lw->w, timeout, lua_type(L, 6) == LUA_TSTRING ? 6 : 0);
}

static int l_state(lua_State *L) {
  struct link *l = check_link(L, 1);
  int n = 0;
  for (struct proc *p = l->procs; p; p = p->rnext) n++;
  lua_pushboolean(L, l->eof);
  lua_pushlstring(L, l->errtail, l->errlen);
  lua_pushinteger(L, n);
  return 3;
}

/* link:closing(): the host is being closed; what ends now is expected. */
static int l_closing(lua_State *L) {
  check_link(L, 1)->closing = true;
  return 0;
}

/* link:close(): stop reading (after the transport ended or was told to). */
static int l_close(lua_State *L) {
  struct link *l = luaL_checkudata(L, 1, MT);
  if (!l->name) return 0;
  l->closing = true;
  link_lost(l);
  close_side(l, 1);
  for (int s = 0; s < 2; s++)
    if (l->child_fd[s] >= 0) close(l->child_fd[s]);
  l->child_fd[0] = l->child_fd[1] = -1;
  l->t = NULL;
  return 0;
}

static int l_gc(lua_State *L) {
  struct link *l = luaL_checkudata(L, 1, MT);
  if (!l->name) return 0;
  l_close(L);
  free(l->in);
  free(l->fatal);
  free(l->name);
  l->name = NULL;
  return 0;
}

void remote_register(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"child_fds", l_child_fds}, {"attach", l_attach},   {"hello", l_hello},
      {"send", l_send},           {"request", l_request}, {"state", l_state},
      {"close", l_close},         {"closing", l_closing}, {NULL, NULL}};
  luaL_newmetatable(L, MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

const luaL_Reg remote_lib[] = {{"link_new", l_new}, {NULL, NULL}};

/* }==== */

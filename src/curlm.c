/* curlm.c — libcurl loaded lazily with dlopen, and one curl multi handle driven
 * by atom's libuv loop through the multi_socket API (curl's multi-uv.c
 * example, minus its costs). It knows nothing of Lua: http.c turns Lua calls
 * into easy handles and gets each finished transfer back through xfer->done.
 *
 * Why not link libcurl: that adds ~3 ms and 6 MB to every start, also for the
 * many scenarios that never make a request.
 *
 * Sockets: curl's multi-uv.c closes its uv_poll_t on every CURL_POLL_REMOVE and
 * makes a new one when the socket comes back; curl 7.x sends REMOVE after every
 * transfer on a keep-alive connection, so that costs epoll_ctl calls, a malloc
 * and a close callback per request (about a third of the throughput). Here a
 * socket atomlua opened (CURLOPT_OPENSOCKETFUNCTION) keeps one poll handle
 * from open to close (CURLOPT_CLOSESOCKETFUNCTION): REMOVE only marks it idle,
 * its events stay armed (no syscall), and the first event that arrives while it
 * is idle (the peer closed the idle connection) stops it. Sockets curl makes
 * itself (the threaded resolver's socketpair) are closed behind our back, so
 * their poll handle is closed on REMOVE as in multi-uv.c. */
#include "curlm.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "atom.h"

struct curl_api cu;
void (*curlm_close_hook)(curl_socket_t fd);

struct sock {
  uv_poll_t poll;
  curl_socket_t fd;
  int events;  /* uv events armed (0: stopped) */
  bool wanted; /* curl monitors it (false after CURL_POLL_REMOVE) */
  bool owned;  /* opened by sock_open_cb: we see its close */
};

static struct {
  bool loaded;
  CURLM *multi;
  struct timer timer;
  bool timer_asap;     /* the timer is armed for "now": it fires on the next loop turn */
  struct sock **socks; /* indexed by fd */
  int nsocks;
  int in_flight;
  int peak; /* most transfers in flight at once, for the connection cache */
} M;

/* Idle connections kept: curl's default is four per easy handle *currently*
 * added, which drops to a handful whenever the finished transfers have left
 * and the tasks have not started their next ones yet, so keep-alive
 * connections would be closed and reopened all the time. Size it from the
 * peak instead. */
#define CACHE_MIN 64
#define CACHE_PER_TRANSFER 2

/* {==== loading libcurl ==== */

static bool load(char *err, size_t errsize) {
  void *lib = dlopen("libcurl.so.4", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(err, errsize, "cannot load libcurl: %s", dlerror());
    return false;
  }
  static const struct {
    const char *name;
    size_t off;
  } syms[] = {
#define SYM(f, n) {"curl_" n, offsetof(struct curl_api, f)}
      SYM(global_init, "global_init"),
      SYM(easy_init, "easy_init"),
      SYM(easy_setopt, "easy_setopt"),
      SYM(easy_getinfo, "easy_getinfo"),
      SYM(easy_cleanup, "easy_cleanup"),
      SYM(easy_strerror, "easy_strerror"),
      SYM(multi_init, "multi_init"),
      SYM(multi_setopt, "multi_setopt"),
      SYM(multi_add_handle, "multi_add_handle"),
      SYM(multi_remove_handle, "multi_remove_handle"),
      SYM(multi_socket_action, "multi_socket_action"),
      SYM(multi_info_read, "multi_info_read"),
      SYM(multi_cleanup, "multi_cleanup"),
      SYM(multi_strerror, "multi_strerror"),
      SYM(slist_append, "slist_append"),
      SYM(slist_free_all, "slist_free_all"),
      SYM(easy_pause, "easy_pause"),
#undef SYM
  };
  struct curl_api api = {0};
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    void *f = dlsym(lib, syms[i].name);
    if (!f) {
      snprintf(err, errsize, "libcurl.so.4 lacks %s", syms[i].name);
      dlclose(lib);
      return false;
    }
    memcpy((char *)&api + syms[i].off, &f, sizeof f);
  }
  void *url = dlsym(lib, "curl_url"), *url_set = dlsym(lib, "curl_url_set"),
       *url_cleanup = dlsym(lib, "curl_url_cleanup");
  if (url && url_set && url_cleanup) {
    memcpy(&api.url, &url, sizeof url);
    memcpy(&api.url_set, &url_set, sizeof url_set);
    memcpy(&api.url_cleanup, &url_cleanup, sizeof url_cleanup);
  }
  CURLcode rc = api.global_init(CURL_GLOBAL_DEFAULT);
  if (rc != CURLE_OK) {
    snprintf(err, errsize, "curl_global_init failed: %s", api.easy_strerror(rc));
    return false; /* keep the library loaded: unloading after a partial init is unsafe */
  }
  cu = api;
  return true; /* never dlclose'd: curl keeps global state */
}

/* }==== */

/* {==== sockets ==== */

static struct sock *sock_get(curl_socket_t fd) {
  return fd >= 0 && fd < M.nsocks ? M.socks[fd] : NULL;
}

static void sock_free_cb(uv_handle_t *h) { free(container_of(h, struct sock, poll)); }

/* Forget the socket's poll handle now (its memory goes in the close callback),
 * so a new socket with the same number gets a new one. */
static void sock_drop(struct sock *s) {
  M.socks[s->fd] = NULL;
  /* At exit the runtime may have closed every handle already. */
  if (!uv_is_closing((uv_handle_t *)&s->poll)) uv_close((uv_handle_t *)&s->poll, sock_free_cb);
}

static struct sock *sock_new(curl_socket_t fd, bool owned) {
  if (fd >= M.nsocks) {
    int n = M.nsocks ? M.nsocks : 64;
    while (n <= fd) n *= 2;
    struct sock **p = realloc(M.socks, sizeof *p * (size_t)n);
    if (!p) return NULL;
    memset(p + M.nsocks, 0, sizeof *p * (size_t)(n - M.nsocks));
    M.socks = p;
    M.nsocks = n;
  }
  struct sock *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  if (uv_poll_init_socket(atom_loop, &s->poll, fd) != 0) {
    free(s);
    return NULL;
  }
  s->poll.data = NULL; /* ours, not luv's (atom.h) */
  s->fd = fd;
  s->owned = owned;
  M.socks[fd] = s;
  return s;
}

static void check_done(void) {
  CURLMsg *m;
  int left;
  while ((m = cu.multi_info_read(M.multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    CURL *e = m->easy_handle;
    CURLcode rc = m->data.result;
    struct xfer *x = NULL;
    cu.easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
    cu.multi_remove_handle(M.multi, e); /* before done: done may reuse e */
    M.in_flight--;
    if (x) x->done(x, rc);
  }
}

static void poll_cb(uv_poll_t *h, int status, int events) {
  struct sock *s = container_of(h, struct sock, poll);
  if (!s->wanted) { /* an idle keep-alive socket woke up: stop until curl wants it */
    uv_poll_stop(h);
    s->events = 0;
    return;
  }
  int flags = 0;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  int running;
  cu.multi_socket_action(M.multi, s->fd, flags, &running);
  check_done();
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp) {
  (void)e, (void)userp, (void)socketp;
  struct sock *s = sock_get(fd);
  if (what == CURL_POLL_REMOVE) {
    if (!s) return 0;
    if (!s->owned) {
      sock_drop(s);
    } else {
      s->wanted = false;
      uv_unref((uv_handle_t *)&s->poll); /* an idle connection keeps no run alive */
    }
    return 0;
  }
  if (!s && !(s = sock_new(fd, false))) return -1;
  if (!s->wanted) {
    s->wanted = true;
    uv_ref((uv_handle_t *)&s->poll);
  }
  int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
  if (ev != s->events) { /* re-arm only on a change */
    if (uv_poll_start(&s->poll, ev, poll_cb) != 0) return -1;
    s->events = ev;
  }
  return 0;
}

/* curl's own socket() is not close-on-exec, so spawned processes would keep
 * our connections open (a cancelled request's server would not see them
 * close). Opening them here also tells us each socket's whole life. */
static curl_socket_t sock_open_cb(void *clientp, curlsocktype purpose, struct curl_sockaddr *a) {
  (void)purpose;
  struct xfer *x = clientp; /* curl reports only "could not connect": keep errno */
  curl_socket_t fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd < 0) {
    if (x) x->open_errno = errno;
    return CURL_SOCKET_BAD;
  }
  struct sock *stale = sock_get(fd);
  if (stale) sock_drop(stale); /* that number was closed behind our back */
  if (!sock_new(fd, true)) {
    close(fd);
    if (x) x->open_errno = ENOMEM;
    return CURL_SOCKET_BAD;
  }
  return fd;
}

static int sock_close_cb(void *clientp, curl_socket_t fd) {
  (void)clientp;
  struct sock *s = sock_get(fd);
  if (s) sock_drop(s); /* uv_close unregisters the fd before it is closed */
  if (curlm_close_hook) curlm_close_hook(fd);
  return close(fd);
}

/* }==== */

/* {==== the multi handle ==== */

static void timer_cb(struct timer *t) {
  (void)t;
  M.timer_asap = false;
  int running;
  cu.multi_socket_action(M.multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done();
}

/* curl asks for a call "in timeout_ms"; 0 means on the next loop iteration,
 * which lets one socket_action start every request added meanwhile. */
static int timer_fn(CURLM *m, long timeout_ms, void *userp) {
  (void)m, (void)userp;
  if (timeout_ms < 0) {
    timer_stop(&M.timer);
    M.timer_asap = false;
  } else if (timeout_ms > 0 || !M.timer_asap || !timer_active(&M.timer)) {
    /* curl asks again for every transfer added: one armed "now" serves all */
    timer_start(&M.timer, (double)timeout_ms / 1000.0, timer_cb);
    M.timer_asap = timeout_ms == 0;
  }
  return 0;
}

bool curlm_start(char *err, size_t errsize) {
  if (!M.loaded) {
    if (!load(err, errsize)) return false;
    M.loaded = true;
    timer_init(&M.timer);
  }
  if (M.multi) return true;
  M.multi = cu.multi_init();
  if (!M.multi) {
    snprintf(err, errsize, "curl_multi_init failed");
    return false;
  }
  cu.multi_setopt(M.multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
  cu.multi_setopt(M.multi, CURLMOPT_TIMERFUNCTION, timer_fn);
  cu.multi_setopt(M.multi, CURLMOPT_MAXCONNECTS, (long)CACHE_MIN);
  /* HTTP/2 (gRPC): many streams on one connection rather than new ones. */
  cu.multi_setopt(M.multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
  cu.multi_setopt(M.multi, CURLMOPT_MAX_CONCURRENT_STREAMS, 1000L);
  M.peak = 0;
  return true;
}

CURL *curlm_easy_new(void) {
  CURL *e = cu.easy_init();
  if (!e) return NULL;
  cu.easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  cu.easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, sock_open_cb);
  cu.easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, sock_close_cb);
  return e;
}

void curlm_bind(CURL *e, struct xfer *x) {
  cu.easy_setopt(e, CURLOPT_PRIVATE, (void *)x);
  cu.easy_setopt(e, CURLOPT_OPENSOCKETDATA, (void *)x);
}

CURLMcode curlm_add(CURL *e, struct xfer *x) {
  curlm_bind(e, x);
  return curlm_add_bound(e, x);
}

CURLMcode curlm_add_bound(CURL *e, struct xfer *x) {
  x->open_errno = 0;
  CURLMcode rc = cu.multi_add_handle(M.multi, e);
  if (rc != CURLM_OK) return rc;
  if (++M.in_flight > M.peak) {
    M.peak = M.in_flight;
    if (M.peak * CACHE_PER_TRANSFER > CACHE_MIN)
      cu.multi_setopt(M.multi, CURLMOPT_MAXCONNECTS, (long)(M.peak * CACHE_PER_TRANSFER));
  }
  return rc;
}

void curlm_remove(CURL *e) {
  if (cu.multi_remove_handle(M.multi, e) == CURLM_OK) M.in_flight--;
}

int curlm_in_flight(void) { return M.in_flight; }

void curlm_close(void) {
  if (!M.multi) return;
  timer_stop(&M.timer);
  M.timer_asap = false;
  /* Cleanup closes the idle connections through sock_close_cb. */
  cu.multi_cleanup(M.multi);
  M.multi = NULL;
  M.in_flight = 0;
  for (int fd = 0; fd < M.nsocks; fd++)
    if (M.socks[fd]) sock_drop(M.socks[fd]);
  free(M.socks);
  M.socks = NULL;
  M.nsocks = 0;
}

/* }==== */

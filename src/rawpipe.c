/* rawpipe.c — a pipe that a task reads as raw bytes: the stdout of
 * io.popen(cmd, "r") (lua/atom/blocking.lua). proc.c reads a process's
 * output as lines, ahead of the script and bounded by dropping the oldest
 * (SPEC §4); Lua's popen hands out bytes unchanged and only as fast as the
 * script reads them. So nothing is read ahead here: read(max) returns what
 * the pipe holds now and suspends the task only when it holds nothing, and
 * a child that writes more than the script reads blocks on the full pipe,
 * as under Lua's own popen. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atom.h"

#define MT "atom.rawpipe"
#define RAWPIPE_CHUNK (64 * 1024)

struct rawpipe;

/* The poll handle outlives the userdata when it is collected with the handle
 * open (uv_close is asynchronous), so it is allocated on its own. */
struct rpoll {
  uv_poll_t h; /* data stays NULL (luv's uv.walk) */
  struct rawpipe *rp;
  bool active;
};

struct rwait {
  struct wait w;
  struct rawpipe *rp; /* NULL once unlinked */
  size_t max;
};

struct rawpipe {
  int fd;       /* our end, O_NONBLOCK; -1 once closed */
  int child_fd; /* the child's end until handed over; -1 after */
  struct rpoll *poll;
  struct rwait *waiter; /* the one task reading, if it waits */
};

static char chunk[RAWPIPE_CHUNK]; /* one loop thread */

static struct rawpipe *check_rp(lua_State *L) { return luaL_checkudata(L, 1, MT); }

static void rpoll_close_cb(uv_handle_t *h) { free(container_of((uv_poll_t *)h, struct rpoll, h)); }

static void rpoll_stop(struct rawpipe *rp) {
  if (rp->poll && rp->poll->active) {
    uv_poll_stop(&rp->poll->h);
    rp->poll->active = false;
  }
}

/* Push what one read(2) gives: the bytes, nil at EOF, or false, message,
 * errno. Returns the number of values, 0 when the pipe is empty. */
static int push_read(lua_State *L, int fd, size_t max) {
  for (;;) {
    ssize_t k = read(fd, chunk, max < sizeof chunk ? max : sizeof chunk);
    if (k > 0) {
      lua_pushlstring(L, chunk, (size_t)k);
      return 1;
    }
    if (k == 0) {
      lua_pushnil(L);
      return 1;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    int e = errno;
    lua_pushboolean(L, 0);
    lua_pushstring(L, strerror(e));
    lua_pushinteger(L, e);
    return 3;
  }
}

static void rwait_unlink(struct rwait *rw) {
  if (!rw->rp) return;
  rw->rp->waiter = NULL;
  rpoll_stop(rw->rp);
  rw->rp = NULL;
}

static void rwait_cancel(struct wait *w) { rwait_unlink(container_of(w, struct rwait, w)); }

static void rpoll_cb(uv_poll_t *h, int status, int events) {
  (void)events;
  struct rawpipe *rp = container_of(h, struct rpoll, h)->rp;
  if (!rp || !rp->waiter) return;
  struct rwait *rw = rp->waiter;
  lua_State *T = sched_thread(&rw->w);
  if (!T) {
    rwait_unlink(rw);
    return;
  }
  int n;
  if (status < 0) { /* report it as read(2) would */
    lua_pushboolean(T, 0);
    lua_pushstring(T, uv_strerror(status));
    lua_pushinteger(T, -status);
    n = 3;
  } else {
    n = push_read(T, rp->fd, rw->max);
    if (n == 0) return; /* spurious: keep waiting */
  }
  rwait_unlink(rw);
  sched_wake(&rw->w, n);
}

/* _atom.rawpipe() -> pipe: both ends O_CLOEXEC, ours non-blocking. */
static int l_new(lua_State *L) {
  struct rawpipe *rp = lua_newuserdatauv(L, sizeof *rp, 0);
  rp->fd = rp->child_fd = -1;
  rp->poll = NULL;
  rp->waiter = NULL;
  luaL_setmetatable(L, MT);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) < 0) return util_error(L, "io", "pipe: %s", strerror(errno));
  fcntl(fds[0], F_SETFL, O_NONBLOCK);
  rp->fd = fds[0];
  rp->child_fd = fds[1];
  return 1;
}

/* pipe:child_fd() -> the write end, for the child's stdout. */
static int l_child_fd(lua_State *L) {
  lua_pushinteger(L, check_rp(L)->child_fd);
  return 1;
}

/* pipe:release_child() — the child has its copy: drop ours, so EOF comes
 * when the child (and whatever inherited its stdout) closes it. */
static int l_release_child(lua_State *L) {
  struct rawpipe *rp = check_rp(L);
  if (rp->child_fd >= 0) close(rp->child_fd);
  rp->child_fd = -1;
  return 0;
}

/* pipe:read(max, fname) -> bytes (1..max) | nil at EOF | false, msg, errno.
 * Suspends the task while the pipe is empty; a cancellation point. */
static int l_read(lua_State *L) {
  struct rawpipe *rp = check_rp(L);
  lua_Integer max = luaL_checkinteger(L, 2);
  const char *fname = luaL_optstring(L, 3, "read");
  struct task *t = sched_enter(L, fname);
  if (rp->fd < 0) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, strerror(EBADF));
    lua_pushinteger(L, EBADF);
    return 3;
  }
  if (rp->waiter) return util_error(L, "usage", "%s: another task is reading this pipe", fname);
  if (max < 1) max = 1;
  int n = push_read(L, rp->fd, (size_t)max);
  if (n > 0) return n;
  if (!rp->poll) {
    rp->poll = calloc(1, sizeof *rp->poll);
    if (!rp->poll) return luaL_error(L, "out of memory");
    int r = uv_poll_init(atom_loop, &rp->poll->h, rp->fd);
    if (r < 0) {
      free(rp->poll);
      rp->poll = NULL;
      return util_error(L, "io", "%s: %s", fname, uv_strerror(r));
    }
    rp->poll->rp = rp;
  }
  struct rwait *rw = sched_wait_alloc(L, t, sizeof *rw);
  rw->rp = rp;
  rw->max = (size_t)max;
  rw->w.what = "io.popen read";
  rw->w.cancel = rwait_cancel;
  rp->waiter = rw;
  uv_poll_start(&rp->poll->h, UV_READABLE, rpoll_cb);
  rp->poll->active = true;
  return sched_wait(L, &rw->w, -1, 0);
}

/* A task still waiting in read gets EBADF, like a read on a closed file. */
static void rawpipe_close(struct rawpipe *rp) {
  if (rp->waiter) {
    struct rwait *rw = rp->waiter;
    lua_State *T = sched_thread(&rw->w);
    rwait_unlink(rw);
    if (T) {
      lua_pushboolean(T, 0);
      lua_pushstring(T, strerror(EBADF));
      lua_pushinteger(T, EBADF);
      sched_wake(&rw->w, 3);
    }
  }
  if (rp->poll) {
    rpoll_stop(rp);
    rp->poll->rp = NULL;
    /* Closed already only when the runtime shut every handle (it then leaks). */
    if (!uv_is_closing((uv_handle_t *)&rp->poll->h))
      uv_close((uv_handle_t *)&rp->poll->h, rpoll_close_cb);
    rp->poll = NULL;
  }
  if (rp->fd >= 0) close(rp->fd);
  if (rp->child_fd >= 0) close(rp->child_fd);
  rp->fd = rp->child_fd = -1;
}

/* pipe:close() — idempotent; also __gc. */
static int l_close(lua_State *L) {
  rawpipe_close(check_rp(L));
  return 0;
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg rawpipe_lib[] = {{"rawpipe", l_new}, {NULL, NULL}};

void rawpipe_register(lua_State *L) {
  static const luaL_Reg methods[] = {{"child_fd", l_child_fd},
                                     {"release_child", l_release_child},
                                     {"read", l_read},
                                     {"close", l_close},
                                     {NULL, NULL}};
  luaL_newmetatable(L, MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

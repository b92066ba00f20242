/* proc.c — the life of a spawned process (SPEC §4): start it (spawn.c) with
 * its pipes, read its output into its outbuf, notice its exit through a
 * pidfd, stop its group (TERM, CONT, grace, KILL), fail its owner when a
 * critical process dies, and release everything once it is over. Tasks wait
 * on a process through proclua.c; the public API is lua/atom/proc.lua.
 * Children are reaped one pid at a time, never with waitpid(-1): luv's
 * uv.spawn children belong to libuv. Output pipes and pidfds sit in a
 * private epoll set behind one uv_poll handle: a uv_poll per fd would cost
 * four more epoll_ctl calls per fd (libuv probes every new fd). */
#include "proc.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "atom.h"

lua_State *proc_L;
static struct proc *live_head; /* every process not yet released */
static int live_children;      /* spawned and not yet reaped */
static int devnull = -1;

static char readbuf[64 * 1024]; /* one loop thread: every read goes through it */
static bool subreaper;          /* the CLI: orphaned descendants come to us */

static void on_exit_cb(struct proc *p);

/* {==== small helpers ==== */

static bool owner_running(struct task *t) {
  if (!t || sched_task_done(t)) return false;
  return !sched_task_returned(t);
}

/* Does any process of group pgid still run? Zombies do not count: an
 * orphaned member is reaped by init, which may take its time (seconds in
 * some containers), and waiting for that would stall every stop. */
static bool group_has_live_member(pid_t pgid) {
  DIR *d = opendir("/proc");
  if (!d) return true;
  bool live = false;
  struct dirent *e;
  char path[300], buf[512];
  while (!live && (e = readdir(d))) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = '\0';
    char *rp = strrchr(buf, ')'); /* the command may contain spaces and parens */
    char state;
    int ppid, pgrp;
    if (!rp || sscanf(rp + 1, " %c %d %d", &state, &ppid, &pgrp) != 3) continue;
    if (pgrp == pgid && state != 'Z' && state != 'X') live = true;
  }
  closedir(d);
  return live;
}

/* Does p's own group still exist? Asked through the pidfd, so a group id
 * reused after ours ended is not taken for ours (kill(-pgid) on kernels
 * before 6.9). */
static bool group_exists(struct proc *p) {
  if (p->pidfd >= 0) {
    long r = syscall(SYS_pidfd_send_signal, p->pidfd, 0, NULL, PIDFD_SIGNAL_PROCESS_GROUP);
    if (r == 0 || errno == ESRCH) {
      reaper_pidfd_groups = 1;
      return r == 0;
    }
    if (errno == EINVAL) reaper_pidfd_groups = -1;
  }
  return !(kill(-p->pid, 0) < 0 && errno == ESRCH);
}

/* The group, or else the cgroup: what a daemon started by p left behind. */
static bool group_alive(struct proc *p) {
  if (p->group_done) return false;
  if (p->rid) { /* on a host: the agent says when the group is empty */
    if (!p->rgone) return true;
    p->group_done = true;
    return false;
  }
  if (group_exists(p) && group_has_live_member(p->pid)) return true;
  if (p->cgfd >= 0 && cgroup_populated(p->cgfd)) {
    if (p->reaped) p->swept = true;
    return true;
  }
  p->group_done = true;
  return false;
}

/* sig, then `then` (if not 0) to p's group, leader and cgroup: one walk of
 * the cgroup's members for both. */
static void signal2(struct proc *p, int sig, int then) {
  if (p->group_done) return;
  if (p->rid) {
    remote_signal(p, sig);
    if (then) remote_signal(p, then);
    return;
  }
  reaper_signal_group(p->pid, p->pidfd, sig);
  if (then) reaper_signal_group(p->pid, p->pidfd, then);
  if (p->cgfd >= 0) {
    cgroup_signal(p->cgfd, sig, then);
    if (sig == SIGKILL) p->swept = p->cg_killed = true;
  }
}

void proc_signal(struct proc *p, int sig) { signal2(p, sig, 0); }

static void group_signal(struct proc *p, int sig) { proc_signal(p, sig); }

void proc_push_status(lua_State *L, struct proc *p) {
  if (!p->reaped) {
    lua_pushnil(L);
    lua_pushnil(L);
  } else if (WIFSIGNALED(p->status)) {
    lua_pushnil(L);
    proc_push_signame(L, WTERMSIG(p->status));
  } else {
    lua_pushinteger(L, WEXITSTATUS(p->status));
    lua_pushnil(L);
  }
}

void proc_push_signame(lua_State *L, int sig) {
  const char *name = sigabbrev_np(sig);
  if (name)
    lua_pushstring(L, name);
  else
    lua_pushfstring(L, "%d", sig);
}

/* }==== */

/* {==== the private epoll set ==== */

enum { EV_STDOUT = 0, EV_STDERR = 1, EV_EXIT = 2, EV_REAPER = 3 }; /* low bits of epoll data */

static int epfd = -1;
static uv_poll_t ep_h;
static int ep_count;    /* fds in the set but the reaper's; the uv_poll runs while > 0 */
static int dispatching; /* inside ep_cb: frees wait for the batch's end */
static struct proc *free_later;

static void out_event(struct proc *p, int s);
static void exit_event(struct proc *p);
static void watch_reaper(void);

static void ep_cb(uv_poll_t *h, int status, int events) {
  (void)h;
  (void)status;
  (void)events;
  struct epoll_event ev[64];
  int n = epoll_wait(epfd, ev, 64, 0);
  dispatching++;
  for (int i = 0; i < n; i++) {
    struct proc *p = (struct proc *)(uintptr_t)(ev[i].data.u64 & ~(uint64_t)3);
    int code = (int)(ev[i].data.u64 & 3);
    if (code == EV_REAPER) {
      reaper_died(); /* someone killed it: a new one, told every live group */
      watch_reaper();
    } else if (code == EV_EXIT) {
      if (p->exit_watched) exit_event(p);
    } else if (p->out[code].fd >= 0) { /* not closed by an earlier event */
      out_event(p, code);
    }
  }
  if (--dispatching == 0)
    while (free_later) {
      struct proc *p = free_later;
      free_later = p->free_next;
      p->handles = 0;
      proc_maybe_release(p);
    }
}

static int ep_add(int fd, struct proc *p, int code) {
  if (epfd < 0) {
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) return -errno;
    uv_poll_init(atom_loop, &ep_h, epfd);
  }
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)(uintptr_t)p | (uint64_t)code};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) return -errno;
  if (ep_count++ == 0) uv_poll_start(&ep_h, UV_READABLE, ep_cb);
  return 0;
}

/* Before close: another process may still hold the same pipe (a fork that
 * has not exec'd yet), which would keep a closed fd in the set. */
static void ep_del(int fd) {
  epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
  if (--ep_count == 0) uv_poll_stop(&ep_h);
}

/* The reaper's pidfd sits in the set too, without keeping the loop alive
 * (not counted): a dead reaper is noticed while processes run. The pidfd of
 * a replaced reaper left the set when reaper.c closed it. */
static void watch_reaper(void) {
  static unsigned watched_gen;
  unsigned gen;
  int fd = reaper_watch_fd(&gen);
  if (fd < 0 || epfd < 0 || gen == watched_gen) return;
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EV_REAPER};
  if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0) watched_gen = gen;
}

/* }==== */

/* {==== waiters ==== */

void proc_wait_link(struct proc *p, struct pwait *pw) {
  pw->p = p;
  pw->prev = NULL;
  pw->next = p->waiters;
  if (p->waiters) p->waiters->prev = pw;
  p->waiters = pw;
}

void proc_wait_unlink(struct pwait *pw) {
  struct proc *p = pw->p;
  if (!p) return;
  if (pw->prev)
    pw->prev->next = pw->next;
  else
    p->waiters = pw->next;
  if (pw->next) pw->next->prev = pw->prev;
  pw->p = NULL;
  pw->next = pw->prev = NULL;
}

/* Wake every waiter of `kind` that `ready` accepts; values from `push`. */
static void wake_kind(struct proc *p, int kind, bool (*ready)(struct pwait *),
                      void (*push)(lua_State *, struct pwait *), int nres) {
  struct pwait *pw = p->waiters, *next;
  for (; pw; pw = next) {
    next = pw->next;
    if (pw->kind != kind || (ready && !ready(pw))) continue;
    proc_wait_unlink(pw);
    lua_State *T = sched_thread(&pw->w);
    if (!T) continue;
    pw->p = p; /* for push */
    push(T, pw);
    pw->p = NULL;
    sched_wake(&pw->w, nres);
  }
}

static bool line_ready(struct pwait *pw) { return pw->pos < pw->p->ob.next || pw->p->out_ended; }
static bool exit_ready(struct pwait *pw) { return !pw->full || pw->p->out_ended; }
static void push_nothing(lua_State *T, struct pwait *pw) {
  (void)T;
  (void)pw;
}
static void push_status_w(lua_State *T, struct pwait *pw) { proc_push_status(T, pw->p); }

static void wake_lines(struct proc *p) { wake_kind(p, W_LINE, line_ready, push_nothing, 0); }

/* }==== */

/* {==== output ==== */

/* Is stream s still open (here, or on the host)? */
static bool out_open(struct proc *p, int s) { return p->out[s].fd >= 0 || p->rout[s]; }

static void rpipe_close(struct proc *p, int s) {
  struct rpipe *rp = &p->out[s];
  if (p->rout[s]) {
    p->rout[s] = false;
    outbuf_eof(&p->ob, s);
  }
  if (rp->fd < 0) return;
  ep_del(rp->fd);
  close(rp->fd);
  rp->fd = -1;
  outbuf_eof(&p->ob, s);
}

/* Read what stream s has now (at most max reads of 64 KiB, 0: all). */
static void read_some(struct proc *p, int s, int max) {
  struct rpipe *rp = &p->out[s];
  for (int i = 0; rp->fd >= 0 && (max == 0 || i < max); i++) {
    ssize_t k = read(rp->fd, readbuf, sizeof readbuf);
    if (k > 0) {
      outbuf_feed(&p->ob, s, readbuf, (size_t)k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    rpipe_close(p, s); /* EOF or error */
  }
}

static void end_output(struct proc *p) {
  if (p->out_ended) return;
  p->out_ended = true;
  timer_stop(&p->eof_timer);
  wake_lines(p);
  wake_kind(p, W_EXIT, exit_ready, push_status_w, 2);
}

/* End of output is EOF on both pipes once the process has exited. */
static void check_output_end(struct proc *p) {
  if (p->reaped && !out_open(p, 0) && !out_open(p, 1)) end_output(p);
}

static void out_event(struct proc *p, int s) {
  read_some(p, s, 16);
  outbuf_flush(&p->ob);
  wake_lines(p);
  check_output_end(p);
  proc_maybe_release(p);
}

static void drain(struct proc *p) {
  read_some(p, 0, 0);
  read_some(p, 1, 0);
  outbuf_flush(&p->ob);
}

/* A descendant keeps the pipes open: 0.5 s after the exit the output ends
 * for expect and lines (SPEC §4); reading goes on until the pipes close. */
static void eof_timer_cb(struct timer *tm) {
  struct proc *p = container_of(tm, struct proc, eof_timer);
  drain(p);
  end_output(p);
}

/* }==== */

/* {==== exit, stop and release ==== */

static void exit_poll_close(struct proc *p) {
  if (!p->exit_watched) return;
  ep_del(p->pidfd);
  p->exit_watched = false;
}

static void mark_reaped(struct proc *p, int status) {
  p->reaped = true;
  p->status = status;
  if (!p->rid) live_children--;
}

static void stop_finish(struct proc *p);
static void stop_group_cb(struct timer *tm);

static void stop_check(struct proc *p) {
  if (!p->stopping || p->stop_done || !p->reaped) return;
  if (p->sigkilled || !group_alive(p))
    stop_finish(p);
  else if (!timer_active(&p->group_timer))
    timer_start(&p->group_timer, 0.02, stop_group_cb);
}

static void stop_group_cb(struct timer *tm) {
  stop_check(container_of(tm, struct proc, group_timer));
}

/* The one kill sequence: the script ends p now (no grace), so its exit is
 * expected and not a critical failure; group, leader and cgroup get SIGKILL. */
static void kill_now(struct proc *p) {
  p->critical = false;
  p->caused = true;
  group_signal(p, SIGKILL);
  p->sigkilled = true;
}

static void grace_cb(struct timer *tm) {
  struct proc *p = container_of(tm, struct proc, grace_timer);
  group_signal(p, SIGKILL);
  p->sigkilled = true;
  stop_check(p);
}

void proc_stop_begin(struct proc *p, double grace) {
  p->critical = false;
  p->caused = true;
  if (p->stopping || p->stop_done) return;
  p->stopping = true;
  if (!p->reaped || group_alive(p)) {
    /* SIGCONT after SIGTERM so a paused group gets the TERM (SPEC §4). */
    signal2(p, SIGTERM, SIGCONT);
    timer_start(&p->grace_timer, grace, grace_cb);
  }
  stop_check(p);
}

static void stop_finish(struct proc *p) {
  p->stop_done = true;
  p->group_done = true; /* empty, or SIGKILLed: not signalled again */
  timer_stop(&p->grace_timer);
  timer_stop(&p->group_timer);
  drain(p);
  rpipe_close(p, 0);
  rpipe_close(p, 1);
  end_output(p);
  wake_kind(p, W_STOP, NULL, push_status_w, 2);
  if (p->on_stopped) {
    void (*cb)(struct proc *) = p->on_stopped;
    p->on_stopped = NULL;
    cb(p);
  }
  proc_maybe_release(p);
}

/* SIGKILL the group and reap the leader before returning (bounded), for a
 * cancelled p:stop() and exec; the rest of the exit runs from the loop. */
static void tick_cb(struct timer *tm) {
  struct proc *p = container_of(tm, struct proc, tick);
  exit_poll_close(p);
  on_exit_cb(p);
}

void proc_kill_and_reap(struct proc *p) {
  kill_now(p);
  if (p->reaped || p->pidfd < 0) return;
  struct pollfd pfd = {.fd = p->pidfd, .events = POLLIN};
  while (poll(&pfd, 1, 2000) < 0 && errno == EINTR) {
  }
  int st;
  if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
    mark_reaped(p, st);
    timer_start(&p->tick, 0, tick_cb); /* the loop finishes the exit */
  }
}

static void exit_event(struct proc *p) {
  if (!p->reaped) {
    int st;
    pid_t r = waitpid(p->pid, &st, WNOHANG);
    if (r == 0) return;
    mark_reaped(p, r == p->pid ? st : 0);
  }
  exit_poll_close(p);
  on_exit_cb(p);
}

/* Fail the owner of a critical process with the hook's error value (on top
 * of proc_L); tasks of that owner waiting on its lines get it too. */
static void fail_owner(struct proc *p) {
  lua_State *L = proc_L;
  struct pwait *pw = p->waiters, *next;
  for (; pw; pw = next) {
    next = pw->next;
    if (pw->kind != W_LINE) continue;
    lua_State *T = sched_thread(&pw->w);
    if (!T || sched_owner(pw->w.task) != p->own.owner) continue;
    proc_wait_unlink(pw);
    lua_pushvalue(L, -1);
    lua_xmove(L, T, 1);
    sched_wake_error(&pw->w);
  }
  sched_fail(L, p->own.owner); /* pops the error */
}

static void on_exit_cb(struct proc *p) {
  if (p->exit_done) return;
  p->exit_done = true;
  drain(p);
  p->exited_at = util_now();
  bool waited = false;
  for (struct pwait *pw = p->waiters; pw; pw = pw->next)
    if (pw->kind == W_EXIT) waited = true;
  /* Exits the script caused (kill, stop, wait) are expected; p:kill and
   * p:stop also disarmed `critical`. */
  bool expected = p->caused || waited;
  bool fail = p->critical && !waited && owner_running(p->own.owner);
  if (proc_L && p->ref != LUA_NOREF) {
    lua_State *L = proc_L;
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, "atom.proc.on_exit");
    if (lua_isfunction(L, -1)) {
      lua_rawgeti(L, LUA_REGISTRYINDEX, p->ref);
      lua_getiuservalue(L, -1, 1); /* the public object */
      lua_remove(L, -2);
      proc_push_status(L, p);
      lua_pushboolean(L, expected);
      lua_pushboolean(L, fail);
      if (lua_pcall(L, 5, 1, 0) != LUA_OK) {
        fprintf(stderr, "atomlua: error in the process exit hook: %s\n",
                luaL_tolstring(L, -1, NULL));
        lua_pop(L, 2);
        lua_pushnil(L);
      }
      if (fail && lua_isnil(L, -1)) {
        lua_pop(L, 1);
        util_push_error(L, "process", "process %s (pid %d) exited unexpectedly", p->name,
                        (int)p->pid);
      }
      if (fail) fail_owner(p);
    }
    lua_settop(L, top);
  }
  wake_kind(p, W_EXIT, exit_ready, push_status_w, 2);
  (void)group_alive(p); /* usually nothing is left in the group: release now */
  if (!out_open(p, 0) && !out_open(p, 1))
    end_output(p);
  else if (!p->out_ended)
    timer_start(&p->eof_timer, 0.5, eof_timer_cb);
  stop_check(p);
  proc_maybe_release(p);
}

/* Over: reaped, pipes closed, group empty or killed. Give back the fds, the
 * reaper entry, the owner link and the strong ref; memory goes with __gc. */
void proc_maybe_release(struct proc *p) {
  if (p->released) {
    if (p->ud_gone && p->handles == 0 && dispatching) { /* ep_cb may still look at it */
      p->free_next = free_later;
      free_later = p;
      p->handles = -1; /* queued once; ep_cb sets it back to 0 */
    } else if (p->ud_gone && p->handles == 0) {
      outbuf_free(&p->ob);
      free(p->name);
      free(p);
    }
    return;
  }
  if (!p->reaped || !p->exit_done || out_open(p, 0) || out_open(p, 1) || !p->group_done) return;
  if (p->stopping && !p->stop_done) return;
  p->released = true;
  timer_stop(&p->eof_timer);
  timer_stop(&p->grace_timer);
  timer_stop(&p->group_timer);
  timer_stop(&p->tick);
  timer_stop(&p->replay);
  end_output(p);
  proc_stdin_close(p);
  exit_poll_close(p);
  outbuf_flush(&p->ob);
  outbuf_log_create(&p->ob); /* silent: its (empty) log exists too */
  if (p->ob.logfd >= 0 && !p->log_shared) close(p->ob.logfd);
  if (p->ob.logfd >= 0 && p->log_shared) outbuf_shared_log_unref();
  p->ob.logfd = -1;
  if (p->rid)
    remote_detach(p);
  else
    reaper_remove(p->pid); /* before the pidfd it borrowed is closed */
  if (p->pidfd >= 0) close(p->pidfd);
  p->pidfd = -1;
  /* Not killed, so group_alive found the cgroup empty, and nothing enters
   * an empty cgroup: no need to ask again. */
  if (p->cgfd >= 0) cgroup_remove(p->cgid, p->cgfd, !p->cg_killed, !p->cg_killed);
  p->cgfd = -1;
  if (p->swept && subreaper) proc_reap_orphans(false); /* their zombies are ours */
  proc_owner_unlink(p);
  if (p->gprev)
    p->gprev->gnext = p->gnext;
  else
    live_head = p->gnext;
  if (p->gnext) p->gnext->gprev = p->gprev;
  p->gnext = p->gprev = NULL;
  if (proc_L && p->ref != LUA_NOREF) util_unref(proc_L, &p->ref);
  proc_maybe_release(p);
}

/* }==== */

/* {==== starting ==== */

static int pipe_pair(int fds[2], int nonblock_end) {
  if (pipe2(fds, O_CLOEXEC) < 0) return -errno;
  fcntl(fds[nonblock_end], F_SETFL, O_NONBLOCK); /* a new pipe has no other status flags */
  return 0;
}

static int proc_devnull(void) {
  if (devnull < 0) devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  return devnull;
}

/* What a process record holds from its options, local or on a host. */
static void init_record(struct proc *p, const struct proc_opts *o) {
  p->ref = LUA_NOREF;
  p->critical = o->critical;
  p->grace = o->grace;
  p->name = strdup(o->name);
  timer_init(&p->eof_timer);
  timer_init(&p->grace_timer);
  timer_init(&p->group_timer);
  timer_init(&p->tick);
  timer_init(&p->replay);
  outbuf_init(&p->ob, o->keep_lines, o->tail_max, o->logfd);
}

static void link_live(struct proc *p) {
  p->gnext = live_head;
  if (live_head) live_head->gprev = p;
  live_head = p;
}

/* What every spawn needs, made once: the reaper (which makes the run
 * cgroup before it forks), a few empty process cgroups and, for the CLI,
 * the subreaper role. atom.proc calls it when it loads, so the first
 * spawns do not pay for it. */
void proc_prepare(void) {
  static bool warm;
  reaper_start();
  if (!warm) {
    warm = true;
    cgroup_warm(16);
  }
#ifndef ATOM_MODULE
  /* Not in module mode: the host's own orphans would come to it. */
  if (!subreaper && prctl(PR_SET_CHILD_SUBREAPER, 1) == 0) subreaper = true;
#endif
}

/* Start the process of opts (checked by proclua.c). On failure returns NULL
 * with -errno in *err and the failed step in *stage. */
struct proc *proc_start(const struct proc_opts *o, int *err, const char **stage) {
  int in[2] = {-1, -1}, out[2] = {-1, -1}, errp[2] = {-1, -1};
  int r = 0;
  *stage = "pipe";
  if (o->stdin_mode != STDIN_NULL) r = pipe_pair(in, 1);
  if (!r && o->output == OUT_CAPTURE) r = pipe_pair(out, 0);
  if (!r && o->output == OUT_CAPTURE) r = pipe_pair(errp, 0);
  struct proc *p = r ? NULL : calloc(1, sizeof *p);
  if (!r && !p) r = -ENOMEM;
  int cgprocs = -1;
  proc_prepare();
  if (p) {
    p->pidfd = p->cgfd = -1;
    p->cgfd = cgroup_new(&p->cgid, &cgprocs, !spawn_into_cgroup());
  }
  if (!r) {
    int nul = proc_devnull();
    struct spawn_req req = {
        .path = o->path,
        .argv = o->argv,
        .envp = o->envp,
        .cwd = o->cwd,
        .netns = o->netns,
        .fd_in = o->stdin_mode != STDIN_NULL ? in[0] : nul,
        .fd_out = o->output == OUT_CAPTURE ? out[1]
                  : o->output == OUT_NULL  ? nul
                  : o->output == OUT_FD    ? o->out_fd
                                           : -1,
        .fd_err = o->output == OUT_CAPTURE               ? errp[1]
                  : o->output == OUT_NULL                ? nul
                  : o->output == OUT_FD && o->err_fd > 0 ? o->err_fd
                                                         : -1,
        .cgroup_fd = cgprocs,
        .cgroup_dir = p ? p->cgfd : -1,
    };
    r = spawn_start(&req, &p->pid, &p->pidfd, stage);
  }
  if (cgprocs >= 0) close(cgprocs);
  /* The child's ends are the child's now. */
  if (in[0] >= 0) close(in[0]);
  if (out[1] >= 0) close(out[1]);
  if (errp[1] >= 0) close(errp[1]);
  if (r) {
    if (in[1] >= 0) close(in[1]);
    if (out[0] >= 0) close(out[0]);
    if (errp[0] >= 0) close(errp[0]);
    if (p && p->cgfd >= 0) cgroup_remove(p->cgid, p->cgfd, true, false);
    free(p);
    *err = r;
    return NULL;
  }
  /* At once, before any blocking call could follow (os.execute, a read):
   * from here on, a SIGKILLed atomlua takes the whole group along. */
  reaper_add(p->pid, p->pidfd);
  live_children++;
  init_record(p, o);
  p->in_fd = in[1];
  const int fds[2] = {out[0], errp[0]};
  for (int s = 0; s < 2; s++) {
    struct rpipe *rp = &p->out[s];
    rp->fd = fds[s];
    /* Not watched, the pipe would fill and stall the child: give it EOF
     * (and the child EPIPE) instead, and say so in the log. */
    if (rp->fd >= 0 && ep_add(rp->fd, p, s) < 0) {
      close(rp->fd);
      rp->fd = -1;
      static const char msg[] = "--- atomlua: cannot watch this output pipe (epoll); not read\n";
      outbuf_log_raw(&p->ob, msg, sizeof msg - 1);
      outbuf_eof(&p->ob, s);
    }
  }
  if (p->pidfd >= 0 && ep_add(p->pidfd, p, EV_EXIT) == 0) p->exit_watched = true;
  watch_reaper();
  link_live(p);
  return p;
}

/* }==== */

/* {==== processes on hosts (remote.c feeds them) ==== */

/* A process the agent on a host started: no fds here, pid is the host's. */
struct proc *proc_start_remote(const struct proc_opts *o, pid_t pid) {
  struct proc *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->pid = pid;
  p->pidfd = p->cgfd = -1;
  p->out[0].fd = p->out[1].fd = -1;
  p->rout[0] = p->rout[1] = o->output == OUT_CAPTURE;
  init_record(p, o);
  p->in_fd = o->stdin_mode != STDIN_NULL ? REMOTE_STDIN_OPEN : -1;
  link_live(p);
  return p;
}

void proc_remote_feed(struct proc *p, int s, const char *data, size_t n) {
  if (!p->rout[s] || p->released) return;
  outbuf_feed(&p->ob, s, data, n);
  outbuf_flush(&p->ob);
  wake_lines(p);
}

void proc_remote_eof(struct proc *p, int s) {
  if (p->released) return;
  rpipe_close(p, s);
  outbuf_flush(&p->ob);
  wake_lines(p);
  check_output_end(p);
  proc_maybe_release(p);
}

void proc_remote_exit(struct proc *p, int status) {
  if (p->reaped || p->released) return;
  mark_reaped(p, status);
  on_exit_cb(p);
}

void proc_remote_gone(struct proc *p) {
  if (p->released) return;
  p->rgone = true;
  (void)group_alive(p);
  stop_check(p);
  proc_maybe_release(p);
}

/* }==== */

/* {==== orphans: atomlua is a child subreaper ==== */

/* A daemon's double fork (or any descendant whose parent died) reparents
 * to atomlua. Such children are found in /proc (ppid == us) and reaped one
 * pid at a time: waitpid(-1) would steal the children proc.c reaps through
 * pidfds, luv's and io.popen's. What is not an orphan: our processes, the
 * reaper, luv's processes, and children in our own process group (io.popen
 * and os.execute do not change group). */

enum { O_REAP, O_KILL, O_KILL_ONLY };

struct pids {
  pid_t *v;
  size_t n, cap;
};

static void pids_add(struct pids *s, pid_t pid) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? 2 * s->cap : 16;
    pid_t *v = realloc(s->v, cap * sizeof *v);
    if (!v) return;
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = pid;
}

static bool pids_has(const struct pids *s, pid_t pid) {
  for (size_t i = 0; i < s->n; i++)
    if (s->v[i] == pid) return true;
  return false;
}

static void luv_pid_cb(uv_handle_t *h, void *arg) {
  if (h->type == UV_PROCESS) pids_add(arg, ((uv_process_t *)h)->pid);
}

static bool is_ours(pid_t pid) {
  for (struct proc *p = live_head; p; p = p->gnext)
    if (p->pid == pid && !p->reaped && !p->rid) return true;
  return false;
}

/* mode O_KILL_ONLY runs on the watchdog thread right before _exit: no
 * walk of the loop's handles, no reaping. */
static void orphans(int mode) {
  if (!subreaper) return;
  DIR *d = opendir("/proc");
  if (!d) return;
  pid_t me = getpid(), mygrp = getpgrp(), rp = reaper_pid();
  struct pids luv = {0}, found = {0};
  bool luv_known = false;
  struct dirent *e;
  char path[300], buf[512];
  while ((e = readdir(d))) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = '\0';
    char *rp_ = strrchr(buf, ')');
    char state;
    int ppid, pgrp;
    if (!rp_ || sscanf(rp_ + 1, " %c %d %d", &state, &ppid, &pgrp) != 3) continue;
    pid_t pid = (pid_t)atoi(e->d_name);
    if (ppid != me || pid == rp || pgrp == mygrp || is_ours(pid)) continue;
    if (mode != O_KILL_ONLY && !luv_known) {
      uv_walk(atom_loop, luv_pid_cb, &luv);
      luv_known = true;
    }
    if (pids_has(&luv, pid)) continue;
    if (state != 'Z') {
      if (mode == O_REAP) continue;
      kill(pid, SIGKILL); /* ours to reap: its id cannot be reused meanwhile */
      if (pgrp == pid) kill(-pid, SIGKILL);
    }
    pids_add(&found, pid);
  }
  closedir(d);
  /* SIGKILLed children die at once, but not in the same instant: wait a
   * little (bounded), one pid at a time. */
  for (int round = 0; mode != O_KILL_ONLY && found.n > 0 && round < 400; round++) {
    for (size_t i = 0; i < found.n;) {
      int st;
      pid_t r = waitpid(found.v[i], &st, WNOHANG);
      if (r == found.v[i] || (r < 0 && errno == ECHILD))
        found.v[i] = found.v[--found.n];
      else
        i++;
    }
    if (found.n > 0) usleep(5000);
  }
  free(luv.v);
  free(found.v);
}

void proc_reap_orphans(bool kill_them) { orphans(kill_them ? O_KILL : O_REAP); }

/* }==== */

/* {==== what other files call ==== */

int proc_live_children(void) { return live_children; }

/* The owner's cleanup grace has passed (the scheduler disowned p already):
 * SIGKILL its group, no waiting; the exit finishes from the loop. */
static void proc_owned_kill(struct owned *o) {
  struct proc *p = container_of(o, struct proc, own);
  kill_now(p);
  stop_check(p);
}

struct proc *proc_of_owned(struct owned *o) {
  return o->kill == proc_owned_kill ? container_of(o, struct proc, own) : NULL;
}

/* Every process not yet released (a closing Lua state abandons them). */
struct proc *proc_live_head(void) {
  return live_head;
}

void proc_release_ud(struct proc *p) {
  p->ud_gone = true;
  if (!p->released) {
    proc_abandon(p); /* ends in proc_maybe_release, which may free p */
    return;
  }
  proc_maybe_release(p);
}

/* End of the run (--timeout, a second signal): SIGKILL every group. */
void proc_kill_all(void) {
  for (struct proc *p = live_head; p; p = p->gnext)
    if (!p->rid)
      kill_now(p); /* remote: may run off the loop thread; the transports' deaths end these */
  orphans(O_KILL_ONLY);
}

void proc_owner_link(struct proc *p, struct task *owner) {
  p->own.kill = proc_owned_kill;
  sched_own(owner, &p->own);
}

void proc_owner_unlink(struct proc *p) { sched_disown(&p->own); }

/* The Lua state is closing with p still live (only when a run is torn down
 * abruptly): kill it, close everything without calling Lua again. */
void proc_abandon(struct proc *p) {
  proc_kill_and_reap(p);
  p->ref = LUA_NOREF;
  p->exit_done = true;
  p->stopping = false;
  p->group_done = true;
  timer_stop(&p->eof_timer);
  timer_stop(&p->grace_timer);
  timer_stop(&p->group_timer);
  timer_stop(&p->tick);
  timer_stop(&p->replay);
  while (p->waiters) proc_wait_unlink(p->waiters);
  rpipe_close(p, 0);
  rpipe_close(p, 1);
  if (!p->reaped) { /* still not gone after SIGKILL: leave it to the reaper */
    p->reaped = true;
    if (!p->rid) live_children--;
  }
  p->rgone = true;
  proc_maybe_release(p);
}

/* }==== */

/* proclua.c — the Lua face of proc.c: `_atom.proc_spawn` and the methods of
 * the private "atom.proc" userdata that lua/atom/proc.lua wraps in the
 * public process object. Waiting methods (wait_line, wait, stop, write)
 * suspend the calling task; everything else answers at once. Arguments are
 * checked by proc.lua; here they are only coerced. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "atom.h"
#include "proc.h"

#define MT "atom.proc"

extern char **environ;

struct ownstop {
  struct wait w;
  struct proc **procs;
  int n, pending;
};

static struct proc *check_proc(lua_State *L) {
  struct proc **pp = luaL_checkudata(L, 1, MT);
  if (!*pp) luaL_error(L, "process handle already collected");
  return *pp;
}

static double opt_timeout(lua_State *L, int idx) {
  return lua_isnoneornil(L, idx) ? -1 : luaL_checknumber(L, idx);
}

static int desc_idx(lua_State *L, int idx) { return lua_type(L, idx) == LUA_TSTRING ? idx : 0; }

static void pw_cancel(struct wait *w) {
  struct pwait *pw = container_of(w, struct pwait, w);
  struct proc *p = pw->p;
  proc_wait_unlink(pw);
  if (p && pw->kill_on_cancel) proc_kill_and_reap(p);
}

static struct pwait *new_wait(lua_State *L, struct task *t, struct proc *p, int kind,
                              const char *what) {
  struct pwait *pw = sched_wait_alloc(L, t, sizeof *pw);
  pw->kind = kind;
  pw->w.what = what;
  pw->w.cancel = pw_cancel;
  proc_wait_link(p, pw);
  return pw;
}

/* {==== spawning ==== */

/* Stack slot 2 of l_spawn: nil until something needs anchoring, then a
 * table (most spawns need none: one table less per spawn). */
static void anchor_push(lua_State *L) {
  if (lua_isnil(L, 2)) {
    lua_newtable(L);
    lua_replace(L, 2);
  }
  lua_rawseti(L, 2, (lua_Integer)lua_rawlen(L, 2) + 1);
}

/* The child's environment: ours (unless env_clear) with env's overrides,
 * X = false removing X. The strings live in the anchor (anchor_push). */
static char **build_env(lua_State *L, int opts, const char **path) {
  lua_getfield(L, opts, "env");
  int env = lua_gettop(L);
  lua_getfield(L, opts, "env_clear");
  bool clear = lua_toboolean(L, -1);
  lua_pop(L, 1);
  char **envp = environ;
  if (clear || !lua_isnil(L, env)) {
    size_t n = 0, cap = 1;
    if (!clear)
      for (char **e = environ; *e; e++) cap++;
    if (!lua_isnil(L, env))
      for (lua_pushnil(L); lua_next(L, env); lua_pop(L, 1)) cap++;
    envp = lua_newuserdatauv(L, cap * sizeof *envp, 0);
    anchor_push(L);
    if (!clear)
      for (char **e = environ; *e; e++) {
        const char *eq = strchr(*e, '=');
        bool overridden = false;
        if (eq && !lua_isnil(L, env)) {
          lua_pushlstring(L, *e, (size_t)(eq - *e));
          overridden = lua_rawget(L, env) != LUA_TNIL;
          lua_pop(L, 1);
        }
        if (!overridden) envp[n++] = *e;
      }
    if (!lua_isnil(L, env))
      for (lua_pushnil(L); lua_next(L, env); lua_pop(L, 1)) {
        if (lua_type(L, -1) == LUA_TBOOLEAN || lua_type(L, -2) != LUA_TSTRING) continue;
        lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
        envp[n++] = (char *)lua_tostring(L, -1);
        anchor_push(L);
      }
    envp[n] = NULL;
  }
  lua_pop(L, 1);
  if (envp == environ) {
    *path = getenv("PATH");
    return envp;
  }
  *path = NULL;
  for (char **e = envp; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) *path = *e + 5;
  return envp;
}

static const char *opt_str(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  const char *s = lua_tostring(L, -1);
  lua_pop(L, 1); /* the string stays anchored in opts */
  return s;
}

/* "--- atomlua: NAME pid PID: ARGV\n", argv shell-quoted as proc.lua's
 * quote_argv does it: the log header of an exec (and of a process whose log
 * an earlier one of the same name wrote to). Built in a C buffer: no Lua
 * strings to intern and collect. */
struct hbuf {
  char *p;
  size_t n, cap;
  bool heap; /* p was malloc'd (it starts on the caller's stack) */
};

static void hb_add(struct hbuf *h, const char *s, size_t n) {
  if (h->n + n > h->cap) {
    size_t cap = 2 * h->cap > h->n + n ? 2 * h->cap : h->n + n;
    char *q = h->heap ? realloc(h->p, cap) : malloc(cap);
    if (!q) return; /* out of memory: a shorter header */
    if (!h->heap) memcpy(q, h->p, h->n);
    h->p = q;
    h->cap = cap;
    h->heap = true;
  }
  memcpy(h->p + h->n, s, n);
  h->n += n;
}

static void log_header(struct proc *p, const char *name, char **argv) {
  char stack[1024];
  struct hbuf h = {stack, 0, sizeof stack, false};
  char pid[32];
  hb_add(&h, "--- atomlua: ", 13);
  hb_add(&h, name, strlen(name));
  int len = snprintf(pid, sizeof pid, " pid %d:", (int)p->pid);
  hb_add(&h, pid, (size_t)len);
  for (char **a = argv; *a; a++) {
    hb_add(&h, " ", 1);
    const char *s = *a;
    bool plain = *s != '\0';
    for (const char *c = s; *c && plain; c++)
      plain = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              strchr("./_=:,@%+-", *c) != NULL;
    if (plain) {
      hb_add(&h, s, strlen(s));
      continue;
    }
    hb_add(&h, "'", 1);
    for (const char *c = s; *c; c++)
      if (*c == '\'')
        hb_add(&h, "'\\''", 4);
      else
        hb_add(&h, c, 1);
    hb_add(&h, "'", 1);
  }
  hb_add(&h, "\n", 1);
  outbuf_log_raw(&p->ob, h.p, h.n);
  if (h.heap) free(h.p);
}

/* _atom.proc_spawn(opts) -> handle, owner task (or nil). opts: argv, env,
 * env_clear, cwd, stdin ("pipe" | nil), stdin_data, output, log, log_shared
 * (exec.log: kept open for the next exec), header (write the log's header
 * line), tail, lines, critical, grace, name, wrapper (the public object),
 * stdout_fd (with output = "fd"), exe (the program to run instead of argv[0]). */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushnil(L); /* 2: the anchor for strings and arrays (anchor_push) */
  lua_getfield(L, 1, "argv");
  int nargv = (int)lua_rawlen(L, -1);
  /* The strings stay in opts.argv; numbers are converted and anchored. */
  char *small[16];
  char **argv = small;
  if (nargv + 1 > (int)(sizeof small / sizeof *small)) {
    argv = lua_newuserdatauv(L, (size_t)(nargv + 1) * sizeof *argv, 0);
    anchor_push(L);
  }
  for (int i = 0; i < nargv; i++) {
    if (lua_rawgeti(L, -1, i + 1) == LUA_TSTRING) {
      argv[i] = (char *)lua_tostring(L, -1);
      lua_pop(L, 1);
    } else {
      argv[i] = (char *)lua_tostring(L, -1);
      anchor_push(L);
    }
  }
  argv[nargv] = NULL;
  lua_pop(L, 1);
  if (nargv == 0) return util_error(L, "usage", "bad argument #1 to 'spawn' (empty argv)");
  struct proc_opts o = {0};
  o.argv = argv;
  const char *path_env;
  o.envp = build_env(L, 1, &path_env);
  o.cwd = opt_str(L, 1, "cwd");
  o.name = opt_str(L, 1, "name");
  if (!o.name) o.name = argv[0];
  const char *in = opt_str(L, 1, "stdin");
  lua_getfield(L, 1, "stdin_data");
  size_t in_len = 0;
  const char *in_data = lua_tolstring(L, -1, &in_len);
  lua_pop(L, 1);
  o.stdin_mode = in_data ? STDIN_DATA : in && strcmp(in, "pipe") == 0 ? STDIN_PIPE : STDIN_NULL;
  const char *out = opt_str(L, 1, "output");
  o.output = !out || strcmp(out, "capture") == 0 ? OUT_CAPTURE
             : strcmp(out, "inherit") == 0       ? OUT_INHERIT
             : strcmp(out, "fd") == 0            ? OUT_FD
                                                 : OUT_NULL;
  lua_getfield(L, 1, "stdout_fd"); /* output = "fd" (io.popen): the child's stdout */
  o.out_fd = (int)lua_tointeger(L, -1);
  lua_getfield(L, 1, "stderr_fd"); /* and its stderr (a host's transport) */
  o.err_fd = (int)lua_tointeger(L, -1);
  lua_pop(L, 2);
  lua_getfield(L, 1, "critical");
  o.critical = lua_toboolean(L, -1);
  lua_getfield(L, 1, "lines");
  o.keep_lines = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_getfield(L, 1, "grace"); /* policy (the default too) is lua/atom/proc.lua's */
  if (!lua_isnumber(L, -1)) return util_error(L, "usage", "internal: proc_spawn without a grace");
  o.grace = lua_tonumber(L, -1);
  lua_getfield(L, 1, "tail");
  o.tail_max = lua_isinteger(L, -1) ? (size_t)lua_tointeger(L, -1) : 1024 * 1024;
  lua_getfield(L, 1, "netns"); /* a host's namespace fd (lua/atom/net.lua) */
  o.netns = lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;
  lua_pop(L, 5);

  char path[4096];
  const char *exe = opt_str(L, 1, "exe"); /* the program, when argv[0] is not it */
  lua_getfield(L, 1, "link");             /* a process the agent on a host started (remote.c) */
  bool remote = !lua_isnil(L, -1);
  lua_pop(L, 1);
  int r = remote ? 0
                 : spawn_lookup(exe ? exe : argv[0], path_env ? path_env : SPAWN_DEFAULT_PATH, path,
                                sizeof path);
  if (r == -ENOENT && !strchr(argv[0], '/'))
    return util_error(L, "spawn", "cannot spawn %s: not found on PATH", argv[0]);
  if (r) return util_error(L, "spawn", "cannot spawn %s: %s", argv[0], strerror(-r));
  o.path = path;

  const char *log = opt_str(L, 1, "log");
  lua_getfield(L, 1, "log_shared");
  bool log_shared = lua_toboolean(L, -1);
  lua_pop(L, 1);
  o.logfd = -1;
  if (log && o.output == OUT_CAPTURE && log_shared) {
    o.logfd = outbuf_shared_log_open(log, &log_shared);
    if (o.logfd < 0) return util_error(L, "io", "cannot open log %s: %s", log, strerror(errno));
  }
  struct proc **ud = lua_newuserdatauv(L, sizeof *ud, 1);
  *ud = NULL;
  luaL_setmetatable(L, MT);
  int err;
  const char *stage;
  struct proc *p;
  if (remote) {
    lua_getfield(L, 1, "pid");
    p = proc_start_remote(&o, (pid_t)lua_tointeger(L, -1));
    lua_getfield(L, 1, "rid"); /* remote from the start: stdin waits for remote_attach */
    if (p) p->rid = (uint32_t)lua_tointeger(L, -1);
    lua_pop(L, 2);
    err = -ENOMEM;
    stage = "malloc";
  } else {
    p = proc_start(&o, &err, &stage);
  }
  if (!p) {
    if (o.logfd >= 0 && !log_shared) close(o.logfd);
    if (o.logfd >= 0 && log_shared) outbuf_shared_log_unref();
    if (strcmp(stage, "exec") == 0)
      return util_error(L, "spawn", "cannot spawn %s: %s", argv[0], strerror(-err));
    if (strcmp(stage, "chdir") == 0)
      return util_error(L, "spawn", "cannot spawn %s: cwd %s: %s", argv[0], o.cwd, strerror(-err));
    return util_error(L, "spawn", "cannot spawn %s: %s failed: %s", argv[0], stage, strerror(-err));
  }
  *ud = p;
  p->log_shared = log_shared;
  /* Its own log: created at the first output (outbuf.c), or when it ends. */
  if (log && o.output == OUT_CAPTURE && !log_shared) p->ob.logpath = strdup(log);
  lua_getfield(L, 1, "header");
  if (lua_toboolean(L, -1) && (o.logfd >= 0 || p->ob.logpath)) log_header(p, o.name, argv);
  lua_pop(L, 1);

  if (in_data) {
    proc_stdin_queue(p, in_data, in_len);
    p->in_close_after = true;
    proc_stdin_flush(p);
  }
  lua_getfield(L, 1, "wrapper");
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, -1);
  p->ref = util_ref(L);
  /* opts.owner (atom.cluster's restarts) or the nearest test or root. */
  lua_getfield(L, 1, "owner");
  struct task *owner = luaL_testudata(L, -1, "atom.task");
  lua_pop(L, 1);
  if (!owner) owner = sched_owner(sched_current(L));
  if (owner && sched_task_done(owner)) owner = sched_owner(sched_current(L));
  if (owner && sched_task_done(owner)) owner = NULL;
  proc_owner_link(p, owner);
  if (remote) { /* last: what the host already sent (even its exit) is replayed now */
    lua_getfield(L, 1, "wrapper"); /* the exit hook may see it before proc.lua returns */
    if (lua_istable(L, -1)) {
      lua_pushvalue(L, -2);
      lua_setfield(L, -2, "_c");
      lua_pushinteger(L, p->pid);
      lua_setfield(L, -2, "pid");
    }
    lua_pop(L, 1);
    lua_getfield(L, 1, "link");
    lua_getfield(L, 1, "rid");
    remote_attach(L, -2, p, (uint32_t)lua_tointeger(L, -1));
    lua_pop(L, 2);
  }
  if (owner)
    sched_push_task(L, owner);
  else
    lua_pushnil(L);
  return 2;
}

/* }==== */

/* {==== methods that answer at once ==== */

static int l_pid(lua_State *L) {
  lua_pushinteger(L, check_proc(L)->pid);
  return 1;
}

/* c:line(pos) -> line, index, stream (0/1) for the first buffered line at or
 * after pos; false when it has not come yet; nil at the end of output. */
static int l_line(lua_State *L) {
  struct proc *p = check_proc(L);
  lua_Integer pos = luaL_checkinteger(L, 2);
  if (pos < (lua_Integer)p->ob.first) pos = (lua_Integer)p->ob.first;
  if (pos < (lua_Integer)p->ob.next) {
    size_t n;
    int s;
    const char *line = outbuf_line(&p->ob, (uint64_t)pos, &n, &s);
    lua_pushlstring(L, line, n);
    lua_pushinteger(L, pos);
    lua_pushinteger(L, s);
    return 3;
  }
  if (p->out_ended) return 0;
  lua_pushboolean(L, 0);
  return 1;
}

/* c:range() -> first buffered index, next index */
static int l_range(lua_State *L) {
  struct proc *p = check_proc(L);
  lua_pushinteger(L, (lua_Integer)p->ob.first);
  lua_pushinteger(L, (lua_Integer)p->ob.next);
  return 2;
}

/* c:tail(n) -> list of the last n buffered lines */
static int l_tail(lua_State *L) {
  struct proc *p = check_proc(L);
  lua_Integer n = luaL_checkinteger(L, 2);
  uint64_t from = p->ob.next - p->ob.first > (uint64_t)n ? p->ob.next - (uint64_t)n : p->ob.first;
  lua_createtable(L, (int)(p->ob.next - from), 0);
  int i = 1;
  for (uint64_t k = from; k < p->ob.next; k++) {
    size_t len;
    int s;
    const char *line = outbuf_line(&p->ob, k, &len, &s);
    lua_pushlstring(L, line, len);
    lua_rawseti(L, -2, i++);
  }
  return 1;
}

static int l_output(lua_State *L) {
  struct proc *p = check_proc(L);
  for (int s = 0; s < 2; s++) {
    luaL_Buffer b;
    char *dst = luaL_buffinitsize(L, &b, p->ob.tail[s].len);
    outbuf_tail_copy(&p->ob, s, dst);
    luaL_pushresultsize(&b, p->ob.tail[s].len);
  }
  return 2;
}

static int l_running(lua_State *L) {
  lua_pushboolean(L, !check_proc(L)->reaped);
  return 1;
}

/* c:status() -> exited, code, signal */
static int l_status(lua_State *L) {
  struct proc *p = check_proc(L);
  lua_pushboolean(L, p->reaped);
  proc_push_status(L, p);
  return 3;
}

/* c:kill(signum) -> false once reaped; disarms critical (SPEC §4). */
static int l_kill(lua_State *L) {
  struct proc *p = check_proc(L);
  int sig = (int)luaL_checkinteger(L, 2);
  if (p->reaped) {
    lua_pushboolean(L, 0);
    return 1;
  }
  p->critical = false;
  p->caused = true;
  proc_signal(p, sig);
  if (sig == SIGKILL) p->sigkilled = true;
  lua_pushboolean(L, 1);
  return 1;
}

/* c:signal(signum): pause and resume, which leave critical alone. */
static int l_signal(lua_State *L) {
  struct proc *p = check_proc(L);
  int sig = (int)luaL_checkinteger(L, 2);
  proc_signal(p, sig);
  return 0;
}

/* c:critical([v]) -> the flag, after setting it when v is given. */
static int l_critical(lua_State *L) {
  struct proc *p = check_proc(L);
  if (!lua_isnone(L, 2)) p->critical = lua_toboolean(L, 2);
  lua_pushboolean(L, p->critical);
  return 1;
}

static int l_close_stdin(lua_State *L) {
  struct proc *p = check_proc(L);
  p->in_close_after = true;
  if (!p->in_head) proc_stdin_close(p);
  return 0;
}

/* c:log_raw(s): a header line in the log, before any output is read. */
static int l_log_raw(lua_State *L) {
  struct proc *p = check_proc(L);
  size_t n;
  const char *s = luaL_checklstring(L, 2, &n);
  outbuf_log_raw(&p->ob, s, n);
  return 0;
}

static int l_signum(lua_State *L) {
  if (lua_isinteger(L, 1)) {
    lua_Integer n = lua_tointeger(L, 1);
    if (n > 0 && n < NSIG)
      lua_pushinteger(L, n);
    else
      lua_pushnil(L);
    return 1;
  }
  const char *s = luaL_checkstring(L, 1);
  if (strncmp(s, "SIG", 3) == 0) s += 3;
  for (int sig = 1; sig < NSIG; sig++) {
    const char *name = sigabbrev_np(sig);
    if (name && strcmp(name, s) == 0) {
      lua_pushinteger(L, sig);
      return 1;
    }
  }
  lua_pushnil(L);
  return 1;
}

static int l_signame(lua_State *L) {
  proc_push_signame(L, (int)luaL_checkinteger(L, 1));
  return 1;
}

/* _atom.proc_cwd() -> the current directory (absolute), or nil, message.
 * Start-up needs it to make the run's paths absolute: here rather than
 * opening luv, which costs a seventh of an empty run. */
static int l_cwd(lua_State *L) {
  char buf[4096];
  if (!getcwd(buf, sizeof buf)) {
    lua_pushnil(L);
    lua_pushstring(L, strerror(errno));
    return 2;
  }
  lua_pushstring(L, buf);
  return 1;
}

/* }==== */

/* {==== waiting methods ==== */

/* c:wait_line(pos, timeout, desc, fname): until line pos exists or the
 * output has ended. */
static int l_wait_line(lua_State *L) {
  struct proc *p = check_proc(L);
  lua_Integer pos = luaL_checkinteger(L, 2);
  double timeout = opt_timeout(L, 3);
  const char *fname = luaL_optstring(L, 5, "p:expect");
  struct task *t = sched_enter(L, fname);
  if (pos < (lua_Integer)p->ob.next || p->out_ended) return 0;
  struct pwait *pw = new_wait(L, t, p, W_LINE, "p:expect()");
  pw->pos = (uint64_t)pos;
  return sched_wait(L, &pw->w, timeout, desc_idx(L, 4));
}

/* c:wait(timeout, desc, full, kill_on_cancel, fname) -> code, signal */
static int l_wait(lua_State *L) {
  struct proc *p = check_proc(L);
  double timeout = opt_timeout(L, 2);
  bool full = lua_toboolean(L, 4);
  const char *fname = luaL_optstring(L, 6, "p:wait");
  struct task *t = sched_enter(L, fname);
  if (p->reaped && (!full || p->out_ended)) {
    proc_push_status(L, p);
    return 2;
  }
  struct pwait *pw = new_wait(L, t, p, W_EXIT, "p:wait()");
  pw->full = full;
  pw->kill_on_cancel = lua_toboolean(L, 5);
  return sched_wait(L, &pw->w, timeout, desc_idx(L, 3));
}

/* c:stop(grace, from_close) -> code, signal. From `<close>` the wait is
 * uninterruptible until the cleanup grace has passed (SPEC §3 rule 4). */
static int l_stop(lua_State *L) {
  struct proc *p = check_proc(L);
  double grace = luaL_optnumber(L, 2, p->grace);
  bool from_close = lua_toboolean(L, 3);
  struct task *t = from_close ? sched_current(L) : NULL;
  if (!t) t = sched_enter(L, "p:stop");
  proc_stop_begin(p, grace);
  if (p->stop_done) {
    proc_push_status(L, p);
    return 2;
  }
  struct pwait *pw = new_wait(L, t, p, W_STOP, "p:stop()");
  pw->kill_on_cancel = true;
  pw->w.uninterruptible = from_close;
  return sched_wait(L, &pw->w, -1, 0);
}

/* c:write(data, timeout, desc): returns once the pipe has taken the data. */
static int l_write(lua_State *L) {
  struct proc *p = check_proc(L);
  size_t n;
  const char *data = luaL_checklstring(L, 2, &n);
  double timeout = opt_timeout(L, 3);
  struct task *t = sched_enter(L, "p:write");
  if (p->in_fd < 0 || p->in_close_after) {
    util_push_error(L, "io", "write to %s's stdin failed: stdin is closed", p->name);
    lua_pushliteral(L, "eof");
    lua_setfield(L, -2, "cause");
    return lua_error(L);
  }
  struct wreq *r = proc_stdin_queue(p, data, n);
  if (!r) return luaL_error(L, "out of memory");
  struct pwait *pw = new_wait(L, t, p, W_WRITE, "p:write()");
  r->pw = pw;
  proc_stdin_flush(p);
  if (pw->done) {
    if (pw->err) {
      util_push_error(L, "io", "write to %s's stdin failed: %s", p->name, strerror(pw->err));
      lua_pushstring(L, pw->err == EPIPE ? "reset" : "eof");
      lua_setfield(L, -2, "cause");
      return lua_error(L);
    }
    return 0;
  }
  return sched_wait(L, &pw->w, timeout, desc_idx(L, 4));
}

/* }==== */

/* {==== the owner's end ==== */

static void ownstop_cancel(struct wait *w) {
  struct ownstop *os = container_of(w, struct ownstop, w);
  for (int i = 0; i < os->n; i++) {
    struct proc *p = os->procs[i];
    if (!p) continue;
    p->os = NULL;
    p->on_stopped = NULL;
    proc_kill_and_reap(p);
  }
  free(os->procs);
  os->procs = NULL;
}

/* p's stop is over (proc.c's on_stopped): one less to wait for. */
static void ownstop_done(struct proc *p) {
  struct ownstop *os = p->os;
  p->os = NULL;
  os->procs[p->os_idx] = NULL;
  if (--os->pending > 0) return;
  free(os->procs);
  os->procs = NULL;
  outbuf_shared_log_close_idle();
  sched_wake(&os->w, 0);
}

/* _atom.proc_stop_owned([filter]): stop every process the current task owns, all
 * at once, each with its own grace; returns when all are over. Called by
 * the task trampoline (lua/atom/task.lua owner_end) for tests and roots. */
static int l_stop_owned(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return 0;
  /* "remote": only processes on hosts, before the owner's hosts close. */
  bool only_remote = lua_type(L, 1) == LUA_TSTRING && strcmp(lua_tostring(L, 1), "remote") == 0;
  int n = 0;
  for (struct owned *o = sched_owned(t); o; o = o->next) n += proc_of_owned(o) != NULL;
  if (n == 0) {
    outbuf_shared_log_close_idle();
    return 0;
  }
  struct ownstop *os = sched_wait_alloc(L, t, sizeof *os);
  os->procs = calloc((size_t)n, sizeof *os->procs);
  if (!os->procs) return luaL_error(L, "out of memory");
  os->n = n;
  int k = 0;
  for (struct owned *o = sched_owned(t), *next; o && k < n; o = next) {
    next = o->next;
    struct proc *p = proc_of_owned(o);
    if (!p) continue;
    int idx = k++;
    if (only_remote && !p->rid) continue;
    proc_stop_begin(p, p->grace);
    if (p->stop_done || p->released) continue;
    p->os = os;
    p->os_idx = idx;
    p->on_stopped = ownstop_done;
    os->procs[idx] = p;
    os->pending++;
  }
  if (os->pending == 0) {
    free(os->procs);
    os->procs = NULL;
    outbuf_shared_log_close_idle();
    return 0;
  }
  os->w.what = "stopping processes";
  os->w.cancel = ownstop_cancel;
  return sched_wait(L, &os->w, -1, 0);
}

/* }==== */

/* {==== registration ==== */

static int l_gc(lua_State *L) {
  struct proc **pp = luaL_checkudata(L, 1, MT);
  struct proc *p = *pp;
  *pp = NULL;
  if (p) proc_release_ud(p);
  return 0;
}

static int l_tostring(lua_State *L) {
  struct proc *p = check_proc(L);
  lua_pushfstring(L, "atom.proc %s (pid %d)", p->name, (int)p->pid);
  return 1;
}

/* _atom.proc_on_exit(fn): fn(object, code, signal, expected, fail) runs at
 * every exit; when fail is true it returns the owner's error. */
static int l_on_exit(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, "atom.proc.on_exit");
  return 0;
}

/* _atom.proc_children() -> spawned and not yet reaped (atom._stats). */
static int l_children(lua_State *L) {
  lua_pushinteger(L, proc_live_children());
  return 1;
}

/* The Lua state is closing: no callback may reach it any more. */
static int l_anchor_gc(lua_State *L) {
  (void)L;
  for (struct proc *p = proc_live_head(), *next; p; p = next) {
    next = p->gnext;
    proc_abandon(p);
  }
  outbuf_shared_log_reset();
  proc_reap_orphans(true); /* the file is over: what its daemons left, too */
  proc_L = NULL;
  return 0;
}

/* _atom.proc_prepare(): start the reaper now (atom.proc, as it loads). */
static int l_prepare(lua_State *L) {
  (void)L;
  proc_prepare();
  return 0;
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg proc_lib[] = {
    {"proc_spawn", l_spawn},           {"proc_prepare", l_prepare}, {"proc_on_exit", l_on_exit},
    {"proc_stop_owned", l_stop_owned}, {"proc_signum", l_signum},   {"proc_signame", l_signame},
    {"proc_children", l_children},     {"proc_cwd", l_cwd},         {NULL, NULL}};

void proc_register(lua_State *L) {
  static const luaL_Reg methods[] = {{"pid", l_pid},
                                     {"line", l_line},
                                     {"range", l_range},
                                     {"tail", l_tail},
                                     {"output", l_output},
                                     {"running", l_running},
                                     {"status", l_status},
                                     {"kill", l_kill},
                                     {"signal", l_signal},
                                     {"critical", l_critical},
                                     {"close_stdin", l_close_stdin},
                                     {"wait_line", l_wait_line},
                                     {"wait", l_wait},
                                     {"stop", l_stop},
                                     {"write", l_write},
                                     {"log_raw", l_log_raw},
                                     {NULL, NULL}};
  luaL_newmetatable(L, MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  proc_L = lua_newthread(L);
  lua_setfield(L, LUA_REGISTRYINDEX, "atom.proc.L");
  lua_newuserdatauv(L, 1, 0);
  lua_newtable(L);
  lua_pushcfunction(L, l_anchor_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, "atom.proc.anchor");
}

/* }==== */

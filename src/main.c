/* main.c — the atomlua command line. A control Lua state runs lua/atom/cli.lua
 * (arguments, checks, reporters, exit status); each scenario file then runs in
 * a fresh Lua state of its own (run_file). This file also owns what must work
 * even when Lua is stuck: signals, the run deadline and the watchdog thread. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"
#include "atom.h"
#include "proc.h"

static lua_State *control; /* runs cli.lua and the reporters */
/* Held by the main thread whenever it uses `control`, so the watchdog thread
 * can write the reports there when the loop is stuck (write_reports_hard). */
static pthread_mutex_t control_lock = PTHREAD_MUTEX_INITIALIZER;
static int emergency_ref = LUA_NOREF; /* cli.lua's finish(hard_exit) */
static lua_State *file_state;         /* the scenario file's state, while it runs */
static int forward_ref = LUA_NOREF;   /* control's function receiving events */
static uv_timer_t tick_timer;         /* the live status line's 1 s beat */

/* Call require("atom.scenario")[name]() in the running file's state when
 * that module defines it. Only from loop callbacks: no task is inside
 * lua_resume then, and the file state's main thread waits in _atom.run. */
static void file_hook(const char *name) {
  lua_State *F = file_state;
  if (!F) return;
  int top = lua_gettop(F);
  lua_getfield(F, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(F, -1, "atom.scenario") == LUA_TTABLE &&
      lua_getfield(F, -1, name) == LUA_TFUNCTION && lua_pcall(F, 0, 0, 0) != LUA_OK)
    fprintf(stderr, "atomlua: %s: %s\n", name, lua_tostring(F, -1));
  lua_settop(F, top);
}

static void tick_cb(uv_timer_t *h) {
  (void)h;
  file_hook("tick");
}

/* {==== the end of a run: deadline, signals, watchdog ==== */

static volatile sig_atomic_t first_signal; /* SIGINT, SIGTERM or SIGHUP */
static uv_async_t signal_async;
static struct timer run_deadline, run_grace;
static double grace_secs = 10, timeout_secs = -1;
static const char *stop_reason;        /* NULL while the run goes on */
static char stop_message[96];          /* the cancellation's message */
static volatile uint64_t hard_exit_ns; /* watchdog exits at this time (0: never) */
static volatile int hard_exit_code;

static int signal_status(int sig) { return sig == SIGINT ? 130 : sig == SIGTERM ? 143 : 129; }

static pid_t main_tid;
static void signal_handler(int sig) {
  /* Until the watch thread runs (watch.c), the main thread preempts a task
   * that never suspends itself, so it must be the one handling the signal. */
  if (!watch_started() && gettid() != main_tid) {
    syscall(SYS_tgkill, getpid(), main_tid, sig);
    return;
  }
  if (first_signal) _exit(signal_status(first_signal)); /* a second signal: at once */
  first_signal = sig;
  uv_async_send(&signal_async);              /* async-signal-safe */
  if (!watch_started()) sched_preempt_now(); /* the loop gets control back */
}

/* Ctrl-Z: stop the run's process groups too (the reaper knows them all
 * and is signal-safe to tell), stop ourselves, and after SIGCONT resume
 * them. The time stopped does not count against any deadline. SIGSTOP,
 * not the default SIGTSTP action, which an orphaned process group (a run
 * started from a script) would ignore. */
static volatile uint64_t watchdog_deadline_ns;
static void tstp_handler(int sig) {
  (void)sig;
  int saved = errno;
  uint64_t a = uv_hrtime();
  reaper_stop_all(true);
  kill(getpid(), SIGSTOP); /* returns once continued */
  uint64_t ns = uv_hrtime() - a;
  reaper_stop_all(false);
  timer_add_stopped(ns);
  if (watchdog_deadline_ns) watchdog_deadline_ns += ns;
  if (hard_exit_ns) hard_exit_ns += ns;
  errno = saved;
}

static void run_grace_cb(struct timer *t) {
  (void)t;
  sched_abandon_root(); /* whatever still runs is abandoned */
}

/* Cancel the running scenario's root; all cleanups together get one grace. */
static void stop_run(const char *reason, const char *message, int code, double from_ns) {
  if (stop_reason) return;
  stop_reason = reason;
  snprintf(stop_message, sizeof stop_message, "%s", message);
  hard_exit_code = code;
  hard_exit_ns = (uint64_t)from_ns + (uint64_t)((grace_secs + 1) * 1e9);
  if (file_state) {
    file_hook("before_stop"); /* failure forensics: what the tests waited for */
    sched_cancel_root(file_state, message);
    timer_start(&run_grace, grace_secs, run_grace_cb);
  }
}

static void run_deadline_cb(struct timer *t) {
  (void)t;
  char msg[96];
  snprintf(msg, sizeof msg, "cancelled: run timed out after %.14gs", timeout_secs);
  stop_run("timeout", msg, 124, (double)uv_hrtime());
}

static void signal_async_cb(uv_async_t *h) {
  (void)h;
  watch_start(); /* the watchdog's hard exit, further preemption */
  int sig = first_signal;
  const char *name = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "SIGHUP";
  char msg[64];
  snprintf(msg, sizeof msg, "cancelled: interrupted by %s", name);
  stop_run(name, msg, signal_status(sig), (double)uv_hrtime());
}

/* The watchdog does not depend on the loop: it ends the process when the
 * run's grace plus one second has passed (SPEC §1 --timeout), whatever Lua
 * is doing. It runs on watch.c's thread. */

/* On the watchdog thread: the main thread is stuck (in the file state, or
 * in a C call), so the control state is idle unless the main thread is in
 * l_forward or the reporters: wait for that a little, then let cli.lua's
 * finish() write the closing lines, run_end and the reports (SPEC §8: on
 * every ending but SIGKILL and a second signal). We exit right after, so
 * the main thread never sees the control state again. */
static void write_reports_hard(int code) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 2;
  if (emergency_ref == LUA_NOREF || pthread_mutex_timedlock(&control_lock, &until) != 0) return;
  lua_rawgeti(control, LUA_REGISTRYINDEX, emergency_ref);
  lua_pushinteger(control, code);
  if (lua_pcall(control, 1, 0, 0) != LUA_OK)
    fprintf(stderr, "atomlua: writing the reports: %s\n", lua_tostring(control, -1));
}

static void watchdog_check(void) {
  uint64_t now = uv_hrtime();
  if (first_signal) sched_set_urgent();
  int code = 0;
  if (watchdog_deadline_ns && now > watchdog_deadline_ns) code = 124;
  if (first_signal && hard_exit_ns && now > hard_exit_ns) code = signal_status(first_signal);
  if (code) {
    if (!stop_reason) { /* the loop never ran run_deadline_cb */
      snprintf(stop_message, sizeof stop_message, "cancelled: run timed out after %.14gs",
               timeout_secs);
      stop_reason = "timeout";
    }
    fflush(stdout);
    fprintf(stderr, "atomlua: cleanups did not finish in time; exiting\n");
    proc_kill_all(); /* the reaper would too, once we are gone */
    write_reports_hard(code);
    fflush(stdout);
    _exit(code);
  }
}

/* }==== */

/* {==== copying plain values between the control and file states ==== */

static void copy_value(lua_State *from, int idx, lua_State *to, int depth) {
  idx = lua_absindex(from, idx);
  luaL_checkstack(to, 4, "copy");
  switch (lua_type(from, idx)) {
    case LUA_TBOOLEAN:
      lua_pushboolean(to, lua_toboolean(from, idx));
      break;
    case LUA_TNUMBER:
      if (lua_isinteger(from, idx))
        lua_pushinteger(to, lua_tointeger(from, idx));
      else
        lua_pushnumber(to, lua_tonumber(from, idx));
      break;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(from, idx, &n);
      lua_pushlstring(to, s, n);
      break;
    }
    case LUA_TTABLE:
      if (depth > 32) {
        lua_pushliteral(to, "...");
        break;
      }
      lua_newtable(to);
      if (luaL_getmetafield(from, idx, "__tostring") != LUA_TNIL) {
        lua_pop(from, 1);
        luaL_tolstring(from, idx, NULL);
        lua_pushstring(to, lua_tostring(from, -1));
        lua_setfield(to, -2, "_str");
        lua_pop(from, 1);
      }
      lua_pushnil(from);
      while (lua_next(from, idx)) {
        int kt = lua_type(from, -2);
        if (kt == LUA_TSTRING || kt == LUA_TNUMBER || kt == LUA_TBOOLEAN) {
          copy_value(from, -2, to, depth + 1);
          copy_value(from, -1, to, depth + 1);
          lua_rawset(to, -3);
        }
        lua_pop(from, 1);
      }
      break;
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(from, idx) == NULL) { /* json null */
        lua_pushlightuserdata(to, NULL);
        break;
      }
      /* fallthrough */
    default:
      if (lua_isnil(from, idx)) {
        lua_pushnil(to);
      } else {
        luaL_tolstring(from, idx, NULL);
        lua_pushstring(to, lua_tostring(from, -1));
        lua_pop(from, 1);
      }
  }
}

/* _cli.forward(ev) in a file state: hand an event to the control state. */
static int l_forward(lua_State *L) {
  if (forward_ref == LUA_NOREF) return 0;
  pthread_mutex_lock(&control_lock);
  lua_rawgeti(control, LUA_REGISTRYINDEX, forward_ref);
  copy_value(L, 1, control, 0);
  if (lua_pcall(control, 1, 0, 0) != LUA_OK) {
    fprintf(stderr, "atomlua: reporter error: %s\n", lua_tostring(control, -1));
    lua_pop(control, 1);
  }
  pthread_mutex_unlock(&control_lock);
  return 0;
}

/* _cli.set_emergency(fn): fn(code) ends the run's reports from the watchdog. */
static int l_set_emergency(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  emergency_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* _cli.set_forward(fn, all): fn receives the file states' events; `all`
 * when every event type is wanted (--events), else only the runner's. */
static bool forward_all;
static int l_set_forward(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  forward_all = lua_toboolean(L, 2);
  lua_settop(L, 1);
  forward_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* }==== */

/* {==== running one scenario file in a fresh state ==== */

static int leaks_found;

static void report_leaks(const char *what) {
  int tasks = sched_live_tasks(), handles = sched_open_handles(), refs = util_live_refs(),
      children = proc_live_children();
  fprintf(stderr, "atomlua: leaks after %s: tasks=%d handles=%d refs=%d children=%d\n", what, tasks,
          handles, refs, children);
  if (tasks || handles || refs || children) leaks_found = 1;
}

/* _cli.loaded(): the state's modules are loaded. Both states start with the
 * collector stopped and allocating from a start-up arena (mem.c): what loads
 * first stays. From here the collector runs, its first cycle due once the
 * heap has doubled (as after a collection), and blocks come from malloc. */
static int l_loaded(lua_State *L) {
  mem_arena_end(L);
  if (!lua_gc(L, LUA_GCISRUNNING)) {
    lua_gc(L, LUA_GCRESTART);
    lua_gc(L, LUA_GCSTEP, -lua_gc(L, LUA_GCCOUNT)); /* in KiB: the debt */
  }
  return 0;
}

/* _cli.stop_reason() -> nil | "timeout" | "SIGINT" | ..., message */
static int l_stop_reason(lua_State *L) {
  if (!stop_reason) return 0;
  lua_pushstring(L, stop_reason);
  lua_pushstring(L, stop_message);
  return 2;
}

/* _cli.out_of_memory() -> true once the file state ran out (mem.c). */
static int l_out_of_memory(lua_State *L) {
  lua_pushboolean(L, mem_exhausted());
  return 1;
}

/* _cli.run_file(entry_module, config) -> result table: runs
 * require(entry_module).main(config) in a new Lua state. */
static int l_run_file(lua_State *L) {
  const char *entry = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_State *F = mem_newstate();
  if (!F) return luaL_error(L, "out of memory");
  /* No collection while the runtime and its modules load: they all stay.
   * lua/atom/scenario.lua calls _cli.loaded() before the file's code. */
  lua_gc(F, LUA_GCSTOP);
  runtime_open_file(F);
  /* The Face's own functions go in `_cli`, apart from the runtime's
   * `_atom`: only lua/atom/scenario.lua (the file state's entry) uses them. */
  static const luaL_Reg file_fns[] = {{"forward", l_forward},
                                      {"loaded", l_loaded},
                                      {"stop_reason", l_stop_reason},
                                      {"out_of_memory", l_out_of_memory},
                                      {NULL, NULL}};
  lua_getfield(F, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  luaL_newlib(F, file_fns);
  lua_pushboolean(F, forward_all);
  lua_setfield(F, -2, "events_all");
  lua_setfield(F, -2, "_cli");
  lua_pop(F, 1);
  file_state = F;
  /* The live status line: ticks only while this file runs on a terminal. The
   * timer is unref'd, so it never keeps the loop (or a deadlock) alive. */
  lua_getfield(L, 2, "live");
  if (lua_toboolean(L, -1)) uv_timer_start(&tick_timer, tick_cb, 1000, 1000);
  lua_pop(L, 1);
  /* While F runs, `control` is free (l_forward takes it for each event). */
  pthread_mutex_unlock(&control_lock);
  lua_getglobal(F, "require");
  lua_pushstring(F, entry);
  int st = lua_pcall(F, 1, 1, 0);
  if (st == LUA_OK) {
    lua_getfield(F, -1, "main");
    pthread_mutex_lock(&control_lock);
    copy_value(L, 2, F, 0);
    pthread_mutex_unlock(&control_lock);
    st = lua_pcall(F, 1, 1, 0);
  }
  pthread_mutex_lock(&control_lock);
  if (st == LUA_OK) {
    copy_value(F, -1, L, 0);
  } else {
    lua_newtable(L);
    if (st == LUA_ERRMEM || mem_exhausted())
      lua_pushliteral(L, "out of memory");
    else /* an error table too (its __tostring): never the bare word "error" */
      lua_pushstring(L, luaL_tolstring(F, -1, NULL));
    lua_setfield(L, -2, "internal_error");
  }
  file_state = NULL;
  uv_timer_stop(&tick_timer);
  timer_stop(&run_grace);
  const char *dbg = getenv("ATOMLUA_DEBUG");
  if (dbg && strstr(dbg, "leaks")) report_leaks(entry);
  lua_close(F);
  sched_reset();
  return 1;
}

/* _cli.set_limits(timeout, grace): arm the run deadline and the watchdog. */
static int l_set_limits(lua_State *L) {
  timeout_secs = luaL_optnumber(L, 1, -1);
  grace_secs = luaL_optnumber(L, 2, 10);
  if (timeout_secs > 0) {
    timer_start(&run_deadline, timeout_secs, run_deadline_cb);
    watchdog_deadline_ns = uv_hrtime() + (uint64_t)((timeout_secs + grace_secs + 1) * 1e9);
  }
  watch_add(watchdog_check); /* every 50 ms, off the loop, once a timer or a signal starts it */
  return 0;
}

/* _cli.stop_run(reason, message): e.g. --fail-fast stopping the scenario. */
static int l_stop_run(lua_State *L) {
  const char *reason = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  if (!stop_reason && file_state) sched_cancel_root(file_state, msg);
  (void)reason;
  return 0;
}

/* _cli.log_errors() -> how many process logs could not be written. */
extern int outbuf_log_errors;
static int l_log_errors(lua_State *L) {
  lua_pushinteger(L, outbuf_log_errors);
  return 1;
}

static int l_leaks_found(lua_State *L) {
  lua_pushboolean(L, leaks_found);
  return 1;
}

/* }==== */

static int pmain(lua_State *L) {
  int argc = (int)lua_tointeger(L, 1);
  char **argv = lua_touserdata(L, 2);
  /* No collection while the runtime and the CLI's modules load: they all
   * stay. lua/atom/cli.lua calls _cli.loaded() before the real work. */
  lua_gc(L, LUA_GCSTOP);
  runtime_open_control(L);
  /* The CLI's functions (the control state's `_cli`, for lua/atom/cli.lua). */
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  static const luaL_Reg cli_fns[] = {{"run_file", l_run_file},
                                     {"set_forward", l_set_forward},
                                     {"set_limits", l_set_limits},
                                     {"stop_reason", l_stop_reason},
                                     {"stop_run", l_stop_run},
                                     {"leaks_found", l_leaks_found},
                                     {"set_emergency", l_set_emergency},
                                     {"log_errors", l_log_errors},
                                     {"loaded", l_loaded},
                                     {NULL, NULL}};
  luaL_newlib(L, cli_fns);
  lua_setfield(L, -2, "_cli");
  lua_pop(L, 1);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "atom.cli");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "main");
  lua_createtable(L, argc, 0);
  for (int i = 1; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i);
  }
  lua_call(L, 1, 1);
  return 1;
}

int main(int argc, char **argv) {
  /* `atomlua agent` (docs/hosts.md): no Lua, no isolation, its own loop. */
  if (argc >= 2 && strcmp(argv[1], "agent") == 0) return agent_main(argc, argv);
  /* Namespaces first: a user namespace needs a single-threaded caller. */
  isolate_enter(argc, argv);
  /* libuv assumes fds 0-2 are open (CI may run us without stdin). */
  for (int fd = 0; fd < 3; fd++)
    if (fcntl(fd, F_GETFD) < 0) open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
  signal(SIGPIPE, SIG_IGN);
  setvbuf(stdout, NULL, _IOLBF, 0);
  /* The loop and its signal wake-up exist before any Lua runs. */
  runtime_init_loop();
  uv_async_init(atom_loop, &signal_async, signal_async_cb);
  uv_unref((uv_handle_t *)&signal_async);
  uv_timer_init(atom_loop, &tick_timer);
  uv_unref((uv_handle_t *)&tick_timer);
  timer_init(&run_deadline);
  timer_init(&run_grace);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  main_tid = gettid();
  sa.sa_handler = signal_handler;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  sa.sa_handler = tstp_handler;
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTSTP, &sa, NULL);
  lua_State *L = luaL_newstate();
  if (!L) return 70;
  mem_control_state(L); /* a start-up arena, until _cli.loaded() */
  control = L;
  pthread_mutex_lock(&control_lock); /* released while a file state runs */
  lua_pushcfunction(L, pmain);
  lua_pushinteger(L, argc);
  lua_pushlightuserdata(L, argv);
  int code;
  if (lua_pcall(L, 2, 1, 0) != LUA_OK) {
    fprintf(stderr, "atomlua: %s\n", lua_tostring(L, -1));
    code = 70;
  } else {
    code = (int)lua_tointeger(L, -1);
  }
  fflush(stdout);
  /* Every handle is closed and the loop must end empty: a handle nobody
   * closed is a leak (reported with ATOMLUA_DEBUG=leaks, which makes such
   * a run fail). The control state itself is not closed: the reports are
   * written, and the reaper stops whatever process is left when our pipe to
   * it closes. */
  runtime_close_handles();
  if (uv_loop_close(atom_loop) != 0) {
    const char *dbg = getenv("ATOMLUA_DEBUG");
    if (dbg && strstr(dbg, "leaks")) {
      fprintf(stderr, "atomlua: leaks at exit: the loop still has open handles\n");
      if (code == 0) code = 1;
    }
  }
  _exit(code);
}

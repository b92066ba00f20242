/* atom.h — the one internal header of the atomlua C host.
 * It names the pieces each src/ file provides to the others: the loop and
 * runtime (lualib.c), the timer heap (timer.c), the scheduler (sched.c),
 * errors and small helpers (util.c), and the registration hooks of the
 * subsystems (proc.c, http.c, net.c, json.c). Lua-facing policy lives in lua/. */
#ifndef ATOM_H
#define ATOM_H

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define ATOM_VERSION "0.1.0"

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Our uv handles keep handle->data == NULL and are found with container_of:
 * luv's uv.walk() treats a non-NULL data pointer as one of its own handles. */

/* {==== runtime (lualib.c) ==== */

extern uv_loop_t *atom_loop; /* the one loop; created once per process */
extern bool runtime_cli;     /* the atomlua binary (true) or module mode */

/* Opens the `_atom` C library, luv on our loop and the embedded Lua modules in L,
 * then requires "atom" and leaves it on the stack. `cli` is true for the atomlua
 * binary (signals, watchdog), false in module mode. */
int runtime_open(lua_State *L, bool cli);
/* The same for the CLI's control state and its file states: `_atom` filled
 * at the first key beyond what an empty run uses (lualib.c). */
int runtime_open_control(lua_State *L);
int runtime_open_file(lua_State *L);
/* Closes every handle still open on the loop and runs it until they are gone. */
void runtime_close_handles(void);
void runtime_init_loop(void); /* the loop exists (the CLI makes it before any Lua) */

/* }==== */

/* {==== timers (timer.c): one uv_timer_t over a binary heap of deadlines ==== */

struct tbucket;
struct timer {
  struct timer *next, *prev; /* in its bucket (timer.c), in start order */
  struct tbucket *bucket;    /* NULL when stopped */
  void (*cb)(struct timer *);
};

void timer_init(struct timer *t); /* stopped state; call before first use */
void timer_start(struct timer *t, double secs, void (*cb)(struct timer *));
void timer_stop(struct timer *t); /* idempotent */
static inline bool timer_active(const struct timer *t) { return t->bucket != NULL; }
uint64_t timer_next_due(void); /* earliest due time (uv_hrtime ns), UINT64_MAX when empty */
int timer_count(void);
void timer_add_stopped(uint64_t ns); /* atomlua was stopped ns: deadlines move (signal-safe) */
void timer_shutdown(void);           /* close the uv timer (end of process / module) */

/* }==== */

/* {==== the watch thread (watch.c) ==== */

/* Run check() every 50 ms on a thread of its own, independent of the loop,
 * once the thread is started (a check is added once). */
void watch_add(void (*check)(void));
/* Start the thread (once): timer.c with the first timer, main.c at a signal. */
void watch_start(void);
bool watch_started(void);

/* }==== */

/* {==== scheduler (sched.c) ==== */

struct task;

/* A pending operation of one suspended task. The primitive that suspends owns
 * the memory (or gets it from sched_wait_alloc) and fills `cancel`. */
struct wait {
  struct task *task;              /* the waiting task; NULL once woken or undone */
  void (*cancel)(struct wait *w); /* undo the armed operation; never wakes; may be NULL */
  const char *what;               /* static label for messages ("sleep", "ev:wait()") */
  bool uninterruptible;           /* waits for children: cancellation goes to them instead */
};

/* The task running in L, or NULL (main thread, luv callback, plain coroutine). */
struct task *sched_current(const lua_State *L);
/* Entry of every call that can wait: raises `usage` outside a task (naming fname),
 * raises `cancelled` when a cancellation is pending (a checkpoint), else returns
 * the current task. */
struct task *sched_enter(lua_State *L, const char *fname);
/* Memory for a wait record anchored to the task until its next wait. */
void *sched_wait_alloc(lua_State *L, struct task *t, size_t size);
/* Suspend the current task on w until sched_wake. `timeout` < 0 means none; on
 * expiry w->cancel runs and a `timeout` error "<desc> timed out after Xs" is
 * raised. `desc_idx` is a stack index of a string describing the operation
 * (e.g. 'expect n2 "committed"'), or 0 to use w->what. Use as
 * `return sched_wait(L, w, timeout, idx);` — the C function then returns the
 * values given to sched_wake. */
int sched_wait(lua_State *L, struct wait *w, double timeout, int desc_idx);
/* The thread on which a waker pushes the results for sched_wake. */
lua_State *sched_thread(struct wait *w);
/* Wake the task waiting on w with the nres values on top of sched_thread(w).
 * Does nothing (pops the values) when w is no longer waited on. */
void sched_wake(struct wait *w, int nres);
/* Same, but the task raises the error value on top of sched_thread(w). */
void sched_wake_error(struct wait *w);

/* True once the task's function has returned or raised (its end has begun):
 * a critical process exiting after that does not fail its owner. */
bool sched_task_returned(struct task *t);
/* The nearest test task among t and its ancestors, else the root. */
struct task *sched_owner(struct task *t);
/* Fail `owner` like an unjoined child failure: the error value on top of L is
 * popped, kept as the owner's outcome and delivered as cancellation. */
void sched_fail(lua_State *L, struct task *owner);
/* Push the task's handle userdata. */
void sched_push_task(lua_State *L, struct task *t);
const char *sched_task_name(lua_State *L, struct task *t); /* pushes nothing */
bool sched_task_done(struct task *t);
int sched_live_tasks(void);

/* Owner scopes. An owner task (a test, the root: the layer above marks them
 * with TF_OWNER) owns resources that subsystems register on it: processes
 * now, and whatever else must not outlive it. Ending them gracefully is the
 * subsystem's business at the owner's end (lua/atom/task.lua's owner_end
 * hooks); when the owner's cleanup grace has passed, or it is abandoned,
 * the scheduler disowns each one and calls its `kill`, which must not wait.
 * The scheduler knows nothing else about them. */
struct owned {
  struct owned *next, *prev;
  struct task *owner;            /* NULL when not owned */
  void (*kill)(struct owned *o); /* called after it was disowned */
};
void sched_own(struct task *owner, struct owned *o); /* owner NULL: nothing */
void sched_disown(struct owned *o);                  /* idempotent */
struct owned *sched_owned(struct task *t);           /* first; follow ->next */

/* Called at the end of every sched_run (atom.run, each scenario file), after
 * the root has ended: subsystems close what must not outlive a run
 * (connections, port reservations). Registered once per process. */
void sched_on_run_end(void (*fn)(lua_State *L));

/* The run is being stopped (a signal): preempt a task that never suspends
 * even when no timer is overdue. Safe from any thread. */
void sched_set_urgent(void);
/* The same at once, from a signal handler on the main thread (before the
 * watch thread runs): the running task yields to the loop. */
void sched_preempt_now(void);

void sched_shutdown(void);     /* close the scheduler's handles (runtime_close_handles) */
void sched_reset(void);        /* a file state closes: forget its references */
void sched_abandon_root(void); /* the run's grace has passed: abandon what still runs */
int sched_open_handles(void);  /* handles keeping the loop alive (leak checks) */

/* Called by the CLI when the run must stop (timeout, signal): cancel the root
 * with this message. */
void sched_cancel_root(lua_State *L, const char *message);

/* }==== */

/* {==== errors and helpers (util.c) ==== */

/* Raise an atom error table {kind, message, task, traceback} whose tostring
 * starts with the calling script's file:line. Never returns. */
int util_error(lua_State *L, const char *kind, const char *fmt, ...);
/* Errors name the task they were raised in; the scheduler installs this
 * (util.c sits below it): push the name of the task running in L, or push
 * nothing and return false. */
extern bool (*util_task_name_hook)(lua_State *L);
/* Push (without raising) such an error table; the caller may add fields. */
void util_push_error(lua_State *L, const char *kind, const char *fmt, ...);
/* Lua-style argument errors blaming the public function name:
 * "bad argument #1 to 'sleep' (number expected, got string)", kind usage. */
int util_argerror(lua_State *L, int arg, const char *fname, const char *extramsg);
int util_typeerror(lua_State *L, int arg, const char *fname, const char *tname);
lua_Number util_checknumber(lua_State *L, int arg, const char *fname);
/* Optional last argument of waiting calls: a number, or a table with `timeout`.
 * Returns the timeout (def when absent). */
double util_opttimeout(lua_State *L, int arg, const char *fname, double def);
/* Registry references with leak counting (ATOMLUA_DEBUG=leaks). */
int util_ref(lua_State *L);
void util_unref(lua_State *L, int *ref); /* stores LUA_NOREF */
int util_live_refs(void);
/* mkdir -p: 0, or -1 with errno set (Lua: _atom.mkdir_p raises io). */
int util_mkdir_p(const char *path);
/* The innermost frame of L that is not atom's own Lua code (false: none),
 * searching from stack level `level` up (0: the running function). */
bool util_where_frame(lua_State *L, lua_Debug *ar);
bool util_where_frame_from(lua_State *L, int level, lua_Debug *ar);
/* "file:line" of that frame, or NULL. */
const char *util_where(lua_State *L, char *buf, size_t size);
double util_now(void); /* seconds since the run began (uv_hrtime) */
/* The same at the loop's cached time (this loop turn's start, whole ms): no clock read. */
double util_now_loop(void);

/* }==== */

/* {==== memory of the CLI's scenario file states (mem.c) ==== */

/* A Lua state on the counting allocator (limit: $ATOMLUA_MEM_LIMIT). */
lua_State *mem_newstate(void);
/* The control state allocates from a start-up arena too (mem.c); both
 * states leave it when their modules are loaded: mem_arena_end. */
void mem_control_state(lua_State *L);
void mem_arena_end(lua_State *L);
/* True once an allocation of that state failed for good (a reserve was
 * released so that the file can still end and report). */
bool mem_exhausted(void);
bool mem_take_exhausted(void); /* the same, true only the first time */

/* }==== */

/* {==== subsystems ====
 * Each exports the table of its `_atom` functions (<name>_lib, listed in
 * one place: lualib.c's atom_lib) and, where it has metatables or hooks to
 * set up, a <name>_register(L) that runtime_open calls after them. */

extern const luaL_Reg sched_lib[], proc_lib[], rawpipe_lib[], http_lib[], hstream_lib[], grpc_lib[],
    pb_lib[], net_lib[], ports_lib[], ws_lib[], netns_lib[], proxy_lib[], json_lib[], bytes_lib[],
    work_lib[], lincheck_lib[], remote_lib[];

void sched_register(lua_State *L);
void proc_register(lua_State *L);
void rawpipe_register(lua_State *L);
void http_register(lua_State *L);
void hstream_register(lua_State *L);
void net_register(lua_State *L);
void ports_register(lua_State *L);
void ws_register(lua_State *L);
void netns_register(lua_State *L);
void proxy_register(lua_State *L);
void json_register(lua_State *L);
void remote_register(lua_State *L); /* remote.c: the link to a host's agent */

/* A connected atom.tcp stream handed to C code layered on it (ws.c): a dup
 * of its socket (close-on-exec), the bytes read ahead pushed on L; the stream
 * is closed. Returns the fd, or -1 with an io error pushed (net.c). */
int net_detach(lua_State *L, int idx);

int proc_live_children(void); /* unreaped children, for ATOMLUA_DEBUG=leaks */
void proc_kill_all(void);     /* SIGKILL every group now (a forced exit) */

/* }==== */

/* {==== network faults (isolate.c, netns.c, proxy.c; SPEC §11) ==== */

/* --isolate: enter the run's namespaces; call first in main, single-threaded.
 * Exits 2 with the reason when the kernel refuses. */
void isolate_enter(int argc, char **argv);
bool isolate_active(void); /* true inside an isolated run */

/* }==== */

#endif

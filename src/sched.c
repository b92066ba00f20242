/* sched.c — the scheduler: tasks are Lua coroutines resumed from C by loop
 * events. It owns the task tree, the ready queue, waits and wake-ups,
 * cancellation, deadlines, cleanup graces and abandonment. Policy built on
 * these mechanisms (gather, race, map, timeout, tests) lives in
 * lua/atom/sched.lua; how a task's body ends lives in lua/atom/task.lua.
 *
 * Invariants (each backed by a spec in spec/sched_spec.lua):
 *  1. Exactly one function, run_task(), calls lua_resume; a task is resumed
 *     only from the ready queue, never from inside a libuv callback's caller.
 *  2. A task waits on at most one `struct wait` (t->wait). Whoever ends the
 *     wait (wake, interrupt, timeout, abandon) first clears t->wait and
 *     w->task, so a wait is ended exactly once and no wake-up reaches a task
 *     that moved on.
 *  3. An unfinished task holds a registry ref to its userdata (and so to its
 *     coroutine); a finished task holds none. Every ref taken is released.
 *  4. A task finishes only after all its children finished (its finish
 *     waits in end_children), so the tree is always well nested.
 *  5. Cancellation is level-triggered: once t->cancel_pending is set it stays
 *     set, and every checkpoint of t raises it, except while t runs its
 *     cleanups or waits uninterruptibly, until its grace has passed (t->hard).
 *  6. Cancelling a task cancels its unfinished descendants, except shields
 *     and what they started, unless the cancel is forced (end of the run).
 *  7. A task cancelled before it first ran never runs.
 *  8. A finished task's outcome never changes; joiners and groups are told
 *     exactly once. */
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom.h"
#include "task.h"

const char *const sched_status_names[] = {"running", "running", "done", "failed", "cancelled"};
struct sched_state sched_state = {
    .handler_ref = LUA_NOREF, .finish_ref = LUA_NOREF, .default_grace = 10};
const char sched_task_mt = 0;

/* Preemption (preempt_check, on watch.c's thread): the task running too
 * long while a deadline is overdue yields from a count hook. A resume only
 * publishes the coroutine and counts itself (no lock, no clock): the watch
 * thread times a resume by seeing the same count in its checks. `hooking`
 * and running_co, both seq_cst, form a Dekker pair: the hook is set only on
 * a coroutine still in its resume, and the resume loop waits for it before
 * it clears the hook (so never on a finished or freed coroutine). */
static _Atomic(lua_State *) running_co;
static _Atomic uint64_t resume_seq; /* resumes begun (written by the loop's thread only) */
static atomic_bool hooking;
static volatile bool preempted;

void sched_cancel_tree(lua_State *L, struct task *t, int reason, bool force);
static void idle_cb(uv_idle_t *h) { (void)h; /* only keeps the poll from blocking */ }
static void settle(struct task *t, int nres, bool ok);

/* {==== small helpers ==== */

void sched_push_ud(lua_State *L, struct task *t) { lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref); }

void sched_push_task(lua_State *L, struct task *t) {
  /* Finished tasks have no ref; the userdata is reachable only through handles
   * the caller already holds, so callers only push unfinished tasks or use
   * the handle they have. */
  if (t->ref != LUA_NOREF)
    sched_push_ud(L, t);
  else
    lua_pushnil(L);
}

void sched_set_uv_top(lua_State *L, struct task *t, int slot) { /* [value] -> [] */
  sched_push_ud(L, t);
  lua_insert(L, -2);
  lua_setiuservalue(L, -2, slot);
  lua_pop(L, 1);
}

/* Push the name of the task whose userdata is at `ud`. Children's names
 * ("<parent>/<n>", "<parent>/go<n>") are built on first read and cached, so
 * starting 10,000 tasks makes no strings. */
void sched_push_name(lua_State *L, int ud, struct task *t) {
  ud = lua_absindex(L, ud);
  lua_getiuservalue(L, ud, UV_NAME);
  if (t->name_n) {
    lua_pushfstring(L, t->name_go ? "%s/go%d" : "%s/%d", lua_tostring(L, -1), t->name_n);
    lua_remove(L, -2);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, ud, UV_NAME);
    t->name_n = 0;
  }
}

const char *sched_task_name(lua_State *L, struct task *t) {
  if (t->ref == LUA_NOREF) {
    lua_pushliteral(L, "?");
    return lua_tostring(L, -1);
  }
  sched_push_ud(L, t);
  sched_push_name(L, -1, t);
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

bool sched_task_done(struct task *t) { return t->status >= T_DONE; }
bool sched_task_returned(struct task *t) { return t->returned || t->status >= T_DONE; }
int sched_live_tasks(void) { return sched_state.live; }

/* util_task_name_hook: errors made in util.c name the current task. */
static bool push_current_name(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return false;
  sched_task_name(L, t);
  return true;
}

/* {==== owner scopes ==== */

void sched_own(struct task *owner, struct owned *o) {
  o->owner = owner;
  o->prev = NULL;
  o->next = NULL;
  if (!owner) return;
  o->next = owner->owned;
  if (owner->owned) owner->owned->prev = o;
  owner->owned = o;
}

void sched_disown(struct owned *o) {
  if (!o->owner) return;
  if (o->prev)
    o->prev->next = o->next;
  else
    o->owner->owned = o->next;
  if (o->next) o->next->prev = o->prev;
  o->next = o->prev = NULL;
  o->owner = NULL;
}

struct owned *sched_owned(struct task *t) {
  return t->owned;
}

/* The owner's grace has passed: end what it owns now, without waiting. */
static void kill_owned(struct task *t) {
  while (t->owned) {
    struct owned *o = t->owned;
    sched_disown(o);
    o->kill(o);
  }
}

/* }==== */

struct task *sched_current(const lua_State *L) {
  return (sched_state.current && sched_state.current->co == L) ? sched_state.current : NULL;
}

struct task *sched_owner(struct task *t) {
  while (t && !(t->flags & (TF_OWNER | TF_ROOT))) t = t->parent;
  return t ? t : sched_state.root;
}

static bool deliverable(struct task *t) { return t->cancel_pending && (!t->in_cleanup || t->hard); }

static void enqueue(struct task *t) {
  if (t->queued) return;
  t->queued = true;
  t->ready_next = NULL;
  if (sched_state.ready_tail)
    sched_state.ready_tail->ready_next = t;
  else
    sched_state.ready_head = t;
  sched_state.ready_tail = t;
  if (sched_state.handles_ready && !uv_is_active((uv_handle_t *)&sched_state.idle))
    uv_idle_start(&sched_state.idle, idle_cb);
}

static struct task *dequeue(void) {
  struct task *t = sched_state.ready_head;
  if (!t) return NULL;
  sched_state.ready_head = t->ready_next;
  if (!sched_state.ready_head) sched_state.ready_tail = NULL;
  t->queued = false;
  return t;
}

/* }==== */

/* {==== errors delivered to tasks ==== */

/* Where a suspended or running thread is, as the first frame outside atom's
 * own Lua code: pushes its short source and returns the line (0: none). */
static int push_where_parts(lua_State *L, lua_State *co) {
  lua_Debug ar;
  if (!util_where_frame(co, &ar)) return 0;
  lua_pushstring(L, ar.short_src);
  return ar.currentline;
}

/* Push on L the cancellation error for t: kind cancelled, the reason's
 * message, and child_error when an unjoined child or a process failed.
 * `where`, `task` and `traceback` are filled in lazily from _src, _line and
 * _t by the error metatable (lua/atom/errors.lua): cancelling 10,000 tasks
 * makes no strings. [src (when line > 0), t's userdata] on L -> [error]. */
static void push_cancel_error_at(lua_State *L, int line) {
  int slot = lua_gettop(L) - (line ? 1 : 0);
  lua_getiuservalue(L, -1, UV_CANCEL); /* [src?, ud, reason] */
  lua_createtable(L, 0, 8);
  lua_pushliteral(L, "cancelled");
  lua_setfield(L, -2, "kind");
  lua_getfield(L, -2, "message");
  lua_setfield(L, -2, "message");
  if (lua_getfield(L, -2, "child_error") != LUA_TNIL)
    lua_setfield(L, -2, "child_error");
  else
    lua_pop(L, 1);
  if (line) {
    lua_pushvalue(L, slot);
    lua_setfield(L, -2, "_src");
    lua_pushinteger(L, line);
    lua_setfield(L, -2, "_line");
  }
  lua_pushvalue(L, -3);
  lua_setfield(L, -2, "_t");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "_own"); /* this task's own cancellation (status cancelled) */
  luaL_getmetatable(L, "atom.error");
  lua_setmetatable(L, -2);
  lua_replace(L, slot);
  lua_settop(L, slot);
}

/* The same, where where_L waits now. */
static void push_cancel_error(lua_State *L, struct task *t, lua_State *where_L) {
  int line = push_where_parts(L, where_L);
  sched_push_ud(L, t);
  push_cancel_error_at(L, line);
}

void sched_make_cancel_error(lua_State *L, int ud, struct task *t) {
  if (!t->lazy_cancel) return;
  t->lazy_cancel = false;
  lua_State *co = t->co; /* suspended where it waited (end_unresumed) */
  int line = push_where_parts(co, co);
  lua_pushvalue(L, ud);
  lua_xmove(L, co, 1);
  push_cancel_error_at(co, line);
}

/* End t's wait without waking it normally; the caller queues an outcome. */
static struct wait *detach_wait(struct task *t) {
  struct wait *w = t->wait;
  if (!w) return NULL;
  t->wait = NULL;
  w->task = NULL;
  timer_stop(&t->wait_timer);
  if (w->cancel) w->cancel(w);
  return w;
}

static void wake_with_error_on_co(struct task *t) { /* error value on top of t->co */
  t->wake_error = true;
  t->wake_nres = 1;
  enqueue(t);
}

static bool wait_uninterruptible(struct task *t) { return t->wait && t->wait->uninterruptible; }

static int task_body(lua_State *L);

/* Would raising an error at co's wait unwind nothing but plain Lua frames
 * down to task_body? No pcall or other C frame in between (it could catch
 * the error or run code), and no local that could be a <close> variable
 * (its value has a __close metamethod; a false positive only costs the fast
 * path). co is suspended: what we push on it we pop. */
static bool unwinds_silently(lua_State *co) {
  lua_Debug ar;
  if (!lua_checkstack(co, 4)) return false;
  for (int level = 1; lua_getstack(co, level, &ar); level++) { /* level 0: the wait's C function */
    lua_getinfo(co, "f", &ar);
    bool c = lua_iscfunction(co, -1);
    bool bottom = c && lua_tocfunction(co, -1) == task_body;
    lua_pop(co, 1);
    if (bottom) return !lua_getstack(co, level + 1, &ar);
    if (c) return false;
    for (int i = 1; lua_getlocal(co, &ar, i); i++) {
      bool closable = luaL_getmetafield(co, -1, "__close") != LUA_TNIL;
      lua_pop(co, closable ? 2 : 1);
      if (closable) return false;
    }
  }
  return false;
}

/* Cancelling 10,000 sleeping tasks should not mean 10,000 resumes that each
 * raise an error only to unwind it at once. When nothing could observe the
 * unwind — t waits in a plain wait, has no children, notes (defers, an
 * override), owned things or owner role, and its stack unwinds silently —
 * end it here as the resume would have: its cancellation error is its
 * outcome. Its coroutine stays suspended, never to be resumed, until it is
 * collected with the task (Lua then closes its open upvalues): resetting it
 * here would cost a stack reallocation per task. */
static bool end_unresumed(struct task *t) {
  if (!t->plain_wait || t->child_head || t->owned || (t->flags & (TF_OWNER | TF_ROOT)) ||
      t->has_override || t->in_cleanup || t == sched_state.current)
    return false;
  lua_State *L = sched_state.L, *co = t->co;
  sched_push_ud(L, t);
  bool notes = lua_getiuservalue(L, -1, UV_EXTRA) != LUA_TNIL;
  lua_pop(L, 2);
  if (notes || !unwinds_silently(co)) return false;
  detach_wait(t);
  lua_settop(co, 0); /* its outcome, the error, is made if somebody reads it */
  t->returned = true;
  t->lazy_cancel = true;
  settle(t, 0, false);
  return true;
}

/* Deliver a pending cancellation to a suspended task now. */
static void interrupt(struct task *t) {
  if (!t->wait || !deliverable(t)) return;
  if (wait_uninterruptible(t) && !t->hard) return;
  if (end_unresumed(t)) return;
  detach_wait(t);
  push_cancel_error(t->co, t, t->co);
  wake_with_error_on_co(t);
}

/* }==== */

/* {==== waits ==== */

/* The task's built-in wait record, reset for a new wait. */
struct wait *sched_own_wait(struct task *t, const char *what, bool uninterruptible) {
  struct wait *w = &t->own_wait;
  memset(w, 0, sizeof *w);
  w->what = what;
  w->uninterruptible = uninterruptible;
  return w;
}

struct task *sched_enter(lua_State *L, const char *fname) {
  struct task *t = sched_current(L);
  if (!t) {
    const char *pre = strchr(fname, ':') || strchr(fname, '.') ? "" : "atom.";
    if (lua_pushthread(L)) /* main thread: a callback or outside atom.run */
      util_error(L, "usage",
                 "%s%s called outside a task (it can wait, so it needs atom.run or a scenario)",
                 pre, fname);
    util_error(L, "usage", "%s%s called inside a plain coroutine", pre, fname);
    return NULL; /* not reached: util_error raises */
  }
  if (deliverable(t)) {
    push_cancel_error(L, t, L);
    lua_error(L);
  }
  return t;
}

static void push_extra(lua_State *L, struct task *t);

/* Kept in the task's notes, so tasks that never need it pay nothing. */
void *sched_wait_alloc(lua_State *L, struct task *t, size_t size) {
  push_extra(L, t);
  void *mem = lua_newuserdatauv(L, size, 0);
  memset(mem, 0, size);
  lua_setfield(L, -2, "waitmem");
  lua_pop(L, 1);
  return mem;
}

int sched_wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  struct task *t = sched_state.current;
  if (!t || t->co != L) /* coroutine.resume of a task's coroutine (maybe an ended one) */
    return util_error(L, "usage", "a task's coroutine can only be resumed by atom's scheduler");
  if (t->wake_error) {
    t->wake_error = false;
    return lua_error(L);
  }
  return t->resumed_nres;
}

void sched_push_desc(lua_State *L, struct task *t) {
  if (t->has_desc) {
    sched_push_ud(L, t);
    lua_getiuservalue(L, -1, UV_DESC);
    lua_remove(L, -2);
  } else {
    lua_pushnil(L);
  }
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    const char *what = t->wait && t->wait->what ? t->wait->what : "wait";
    if (strcmp(what, "sleep") == 0) { /* built here, on demand: sleeps are the hot path */
      char secs[32];
      sched_format_secs(secs, sizeof secs, t->wait_timeout);
      lua_pushfstring(L, "sleep %ss", secs);
    } else {
      lua_pushstring(L, what);
    }
  }
}

void sched_format_secs(char *buf, size_t n, double s) { snprintf(buf, n, "%.14g", s); }

static void wait_timeout_cb(struct timer *tm) {
  struct task *t = container_of(tm, struct task, wait_timer);
  lua_State *co = t->co;
  sched_push_desc(co, t); /* before detach: the label lives in the wait */
  double secs = t->wait_timeout;
  detach_wait(t);
  char buf[64];
  sched_format_secs(buf, sizeof buf, secs);
  util_push_error(co, "timeout", "%s timed out after %ss", lua_tostring(co, -1), buf);
  lua_remove(co, -2);
  wake_with_error_on_co(t);
}

int sched_wait_with_k(lua_State *L, struct wait *w, double timeout, int desc_idx, lua_KFunction k) {
  struct task *t = sched_current(L);
  if (!t) return util_error(L, "usage", "internal: wait outside a task");
  if (desc_idx) {
    lua_pushvalue(L, desc_idx);
    sched_set_uv_top(L, t, UV_DESC);
    t->has_desc = true;
  } else if (t->has_desc) { /* sleeps and group waits name themselves: no store */
    lua_pushnil(L);
    sched_set_uv_top(L, t, UV_DESC);
    t->has_desc = false;
  }
  w->task = t;
  t->wait = w;
  t->plain_wait = k == sched_wait_k;
  t->wait_since = util_now_loop(); /* for reports only: no clock read per wait */
  if (timeout >= 0) {
    t->wait_timeout = timeout;
    timer_start(&t->wait_timer, timeout, wait_timeout_cb);
  }
  return lua_yieldk(L, 0, 0, k);
}

int sched_wait(lua_State *L, struct wait *w, double timeout, int desc_idx) {
  return sched_wait_with_k(L, w, timeout, desc_idx, sched_wait_k);
}

lua_State *sched_thread(struct wait *w) { return w->task ? w->task->co : NULL; }

void sched_wake(struct wait *w, int nres) {
  struct task *t = w->task;
  if (!t) return;
  t->wait = NULL;
  w->task = NULL;
  timer_stop(&t->wait_timer);
  t->wake_error = false;
  t->wake_nres = nres;
  enqueue(t);
}

void sched_wake_error(struct wait *w) {
  struct task *t = w->task;
  if (!t) return;
  t->wait = NULL;
  w->task = NULL;
  timer_stop(&t->wait_timer);
  wake_with_error_on_co(t);
}

/* }==== */

/* {==== creating, cancelling and finishing tasks ==== */

static void link_child(struct task *parent, struct task *t) {
  t->parent = parent;
  if (!parent) return;
  t->sib_next = parent->child_head;
  if (parent->child_head) parent->child_head->sib_prev = t;
  parent->child_head = t;
}

/* While many tasks are alive (a burst of spawns: gather, map), most of the
 * heap is their records and coroutines, live until they end: every cycle of
 * the incremental collector would mark them all again. The pause goes to at
 * least 400 (a cycle when the heap has grown 4x, not Lua's default 2x) at
 * GC_BURST live tasks, and back to the program's own below half of that.
 * The mode (incremental or generational) is not touched. */
enum { GC_BURST = 1000 };
static int gc_saved_pause = -1; /* the program's pause during a burst, else -1 */

static void gc_tune(lua_State *L) {
  if (gc_saved_pause < 0 && sched_state.live >= GC_BURST) {
    gc_saved_pause = lua_gc(L, LUA_GCSETPAUSE, 400);
    if (gc_saved_pause > 400) lua_gc(L, LUA_GCSETPAUSE, gc_saved_pause);
  } else if (gc_saved_pause >= 0 && sched_state.live < GC_BURST / 2) {
    lua_gc(L, LUA_GCSETPAUSE, gc_saved_pause);
    gc_saved_pause = -1;
  }
}

static void unlink_task(struct task *t) {
  if (t->parent) {
    if (t->sib_prev)
      t->sib_prev->sib_next = t->sib_next;
    else
      t->parent->child_head = t->sib_next;
    if (t->sib_next) t->sib_next->sib_prev = t->sib_prev;
  }
  t->sib_prev = t->sib_next = NULL;
  sched_state.live--;
  if (gc_saved_pause >= 0 && sched_state.live < GC_BURST / 2) gc_tune(sched_state.L);
}

/* {==== the body of every task's coroutine ====
 * task_body runs the task's function under lua_pcallk *inside* the
 * coroutine, so its <close> variables unwind where they may still wait
 * (Lua 5.4.4), with lua/atom/task.lua's message handler; then task.lua's
 * finish(ok, ...) does the end of the task (children, defers, processes) and
 * returns ok, results... for settle(). In C, the coroutine needs one call
 * frame less than a Lua trampoline around xpcall. */

static int body_done_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  return lua_gettop(L); /* finish's ok, results... */
}

static int body_finish_k(lua_State *L, int status, lua_KContext ctx) {
  (void)ctx;
  /* [handler, results...] or [handler, error] */
  lua_pushboolean(L, status == LUA_OK || status == LUA_YIELD);
  lua_replace(L, 1);
  /* Nothing for finish to do (no child, no notes: no defers; not an owner):
   * it would return ok, results... as they are (its early return). Keep in
   * step with lua/atom/task.lua's finish. */
  struct task *t = sched_current(L);
  if (t && !t->child_head && !(t->flags & (TF_OWNER | TF_ROOT))) {
    sched_push_ud(L, t);
    bool notes = lua_getiuservalue(L, -1, UV_EXTRA) != LUA_TNIL;
    lua_pop(L, 2);
    if (!notes) {
      t->returned = true; /* as end_children */
      return lua_gettop(L);
    }
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, sched_state.finish_ref);
  lua_insert(L, 1); /* [finish, ok, results...] */
  lua_callk(L, lua_gettop(L) - 1, LUA_MULTRET, 0, body_done_k);
  return lua_gettop(L);
}

static int task_body(lua_State *L) {
  int nargs = lua_gettop(L) - 1; /* [fn, args...] */
  lua_rawgeti(L, LUA_REGISTRYINDEX, sched_state.handler_ref);
  lua_insert(L, 1); /* [handler, fn, args...] */
  int st = lua_pcallk(L, nargs, LUA_MULTRET, 1, 0, body_finish_k);
  return body_finish_k(L, st, 0);
}

/* }==== */

/* Task refs (invariant 3): a finished task's registry slot is set to false
 * and kept for the next task, so most tasks cost two rawseti instead of
 * luaL_ref and luaL_unref (530 instructions a task when measured). The
 * slots are the file state's: sched_reset forgets them.
 * They are not counted in util_live_refs (sched_state.live counts tasks). */
static int *free_refs;
static int free_refs_n, free_refs_cap;

static int task_ref(lua_State *L) { /* [ud] -> [] */
  if (free_refs_n == 0) return luaL_ref(L, LUA_REGISTRYINDEX);
  int ref = free_refs[--free_refs_n];
  lua_rawseti(L, LUA_REGISTRYINDEX, ref);
  return ref;
}

static void task_unref(lua_State *L, int ref) {
  if (free_refs_n == free_refs_cap) {
    int cap = free_refs_cap ? free_refs_cap * 2 : 256;
    int *p = realloc(free_refs, sizeof *p * (size_t)cap);
    if (!p) {
      luaL_unref(L, LUA_REGISTRYINDEX, ref);
      return;
    }
    free_refs = p;
    free_refs_cap = cap;
  }
  lua_pushboolean(L, 0); /* not nil: luaL_ref must not hand the slot out */
  lua_rawseti(L, LUA_REGISTRYINDEX, ref);
  free_refs[free_refs_n++] = ref;
}

/* [fn, args...] (nargs values) on L -> pushes the new task's userdata. */
struct task *sched_task_new(lua_State *L, struct task *parent, int nargs, unsigned flags) {
  struct task *t = lua_newuserdatauv(L, sizeof *t, UV_COUNT - 1); /* [fn, args, ud] */
  memset(t, 0, sizeof *t);
  t->ref = LUA_NOREF;
  timer_init(&t->wait_timer);
  timer_init(&t->phase);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &sched_task_mt);
  lua_setmetatable(L, -2);
  t->flags = flags;
  t->grace_secs = parent ? parent->grace_secs : sched_state.default_grace;
  lua_State *co = lua_newthread(L); /* [fn, args, ud, co] */
  t->co = co;
  lua_setiuservalue(L, -2, UV_THREAD);
  lua_insert(L, -(nargs + 2)); /* [ud, fn, args] */
  lua_pushcfunction(co, task_body);
  lua_xmove(L, co, nargs + 1); /* co: [task_body, fn, args] */
  t->wake_nres = nargs + 1;
  lua_pushvalue(L, -1);
  t->ref = task_ref(L);
  link_child(parent, t);
  if (++sched_state.live >= GC_BURST && gc_saved_pause < 0) gc_tune(L);
  /* Inherit a pending cancellation: a task started by a cancelled task is
   * cancelled too (it will never run). */
  if (parent && parent->cancel_pending && !(flags & TF_SHIELD)) {
    sched_push_ud(L, parent);
    lua_getiuservalue(L, -1, UV_CANCEL);
    sched_cancel_tree(L, t, lua_gettop(L), false);
    lua_pop(L, 2);
  }
  enqueue(t);
  return t;
}

void sched_grace_cb(struct timer *tm);

void sched_arm_grace(struct task *t) {
  /* Once cancelled, the deadline no longer matters: the timer becomes the grace. */
  if (!t->grace_armed && !t->grace_abandon_phase) {
    t->grace_armed = true;
    timer_start(&t->phase, t->grace_secs, sched_grace_cb);
  }
}

/* reason: stack index on L of {message=, child_error=}. */
void sched_cancel_tree(lua_State *L, struct task *t, int reason, bool force) {
  if (t->status >= T_DONE) return;
  if (!t->cancel_pending) {
    t->cancel_pending = true;
    lua_pushvalue(L, reason);
    sched_set_uv_top(L, t, UV_CANCEL);
    interrupt(t);
    if (t->status >= T_DONE) return; /* ended at once (end_unresumed) */
    sched_arm_grace(t);
  }
  for (struct task *c = t->child_head, *next; c; c = next) {
    next = c->sib_next; /* c may end, and leave the list, at once */
    if (force || !(c->flags & TF_SHIELD)) sched_cancel_tree(L, c, reason, force);
  }
}

void sched_push_reason(lua_State *L, const char *message) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
}

/* The grace has passed: interrupt the cleanup in progress, kill the
 * processes, note the timeout; one second later, abandon. */
void sched_abandon(struct task *t);
void sched_grace_cb(struct timer *tm) {
  struct task *t = container_of(tm, struct task, phase);
  if (t->status >= T_DONE) return;
  if (t->grace_abandon_phase) {
    sched_abandon(t);
    return;
  }
  t->hard = true;
  t->grace_abandon_phase = true;
  if (!t->cancel_pending) {
    sched_push_reason(sched_state.L, "cancelled: cleanup grace expired");
    sched_cancel_tree(sched_state.L, t, lua_gettop(sched_state.L), false);
    lua_pop(sched_state.L, 1);
  }
  char buf[64];
  sched_format_secs(buf, sizeof buf, t->grace_secs);
  util_push_error(sched_state.L, "timeout", "cleanup did not finish within %ss", buf);
  sched_push_ud(sched_state.L, t);
  lua_getiuservalue(sched_state.L, -1, UV_EXTRA);
  if (lua_isnil(sched_state.L, -1)) {
    lua_pop(sched_state.L, 1);
    lua_newtable(sched_state.L);
    lua_pushvalue(sched_state.L, -1);
    lua_setiuservalue(sched_state.L, -3, UV_EXTRA);
  }
  lua_pushvalue(sched_state.L, -3);
  lua_setfield(sched_state.L, -2, "grace_error");
  lua_pop(sched_state.L, 3);
  kill_owned(t);
  interrupt(t);
  if (t->status >= T_DONE) return; /* ended at once (end_unresumed) */
  timer_start(&t->phase, 1.0, sched_grace_cb);
}

/* Give up on a task that keeps running past its grace: close its pending
 * <close> variables without letting them wait, and finish it as cancelled. */
void sched_abandon(struct task *t) {
  if (t->status >= T_DONE) return;
  while (t->child_head) sched_abandon(t->child_head);
  t->abandoned = true;
  detach_wait(t);
  if (t->queued) { /* unlink from the ready queue */
    struct task **pp = &sched_state.ready_head;
    sched_state.ready_tail = NULL;
    for (struct task *q = sched_state.ready_head; q; q = q->ready_next) {
      if (q == t) {
        *pp = q->ready_next;
        continue;
      }
      pp = &q->ready_next;
      sched_state.ready_tail = q;
    }
    if (sched_state.ready_tail) sched_state.ready_tail->ready_next = NULL;
    t->queued = false;
  }
  char buf[512];
  const char *where = util_where(t->co, buf, sizeof buf);
  fprintf(stderr,
          "atomlua: warning: abandoned task %s at %s (it kept running past its cleanup grace)\n",
          sched_task_name(sched_state.L, t), where ? where : "?");
  lua_pop(sched_state.L, 1);
  kill_owned(t);
  lua_resetthread(t->co);
  lua_settop(t->co, 0);
  push_cancel_error(t->co, t, t->co);
  settle(t, 1, false);
}

static void notify_finished(struct task *t) {
  struct group *g = t->group;
  if (g) {
    g->running--;
    t->group_next = NULL;
    if (g->done_tail)
      g->done_tail->group_next = t;
    else
      g->done_head = t;
    g->done_tail = t;
    if (g->waiting) {
      struct wait *w = g->waiting;
      g->waiting = NULL;
      sched_wake(w, 0);
    }
  }
  while (t->joiners) {
    struct joiner *j = t->joiners;
    t->joiners = j->next;
    j->target = NULL;
    sched_wake(&j->w, 0);
  }
}

/* Push t's notes table (UV_EXTRA), creating it. */
static void push_extra(lua_State *L, struct task *t) {
  sched_push_ud(L, t);
  if (lua_getiuservalue(L, -1, UV_EXTRA) == LUA_TNIL) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, -3, UV_EXTRA);
  }
  lua_remove(L, -2);
}

/* The error on top of L becomes t's outcome whatever its body does: an
 * unjoined child's or a critical process's failure (kept in its notes). */
static void set_override(lua_State *L, struct task *t) {
  push_extra(L, t);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "override");
  lua_pop(L, 1);
  t->has_override = true;
}

/* Every unfinished task in preorder: the root, then its descendants (all
 * tasks descend from the root). Pass NULL to start. */
struct task *sched_next_task(struct task *t) {
  if (!t) return sched_state.root && sched_state.root->status < T_DONE ? sched_state.root : NULL;
  if (t->child_head) return t->child_head;
  for (; t; t = t->parent)
    if (t->sib_next) return t->sib_next;
  return NULL;
}

/* A failing unjoined child's error becomes its parent's: keep, in the
 * parent's notes, which task failed and its traceback (a string error
 * carries neither), for the report. */
static void keep_child_evidence(lua_State *L, struct task *child, struct task *parent) {
  sched_push_ud(L, child);
  lua_getiuservalue(L, -1, UV_EXTRA); /* [ud, extra|nil] */
  sched_push_ud(L, parent);
  lua_getiuservalue(L, -1, UV_EXTRA); /* [ud, cx, pud, px] */
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, -3, UV_EXTRA);
  }
  sched_push_name(L, -4, child);
  lua_setfield(L, -2, "child_task");
  if (lua_istable(L, -3)) {
    lua_getfield(L, -3, "traceback");
    lua_setfield(L, -2, "child_traceback");
  }
  lua_pop(L, 4);
}

/* The task's body returned: [ok, results...] (nres values) on t->co. */
static void settle(struct task *t, int nres, bool ok) {
  lua_State *co = t->co;
  timer_stop(&t->wait_timer);
  timer_stop(&t->phase);
  if (t->lazy_cancel) { /* its own cancellation, its error not made yet */
    nres = 0;
  } else if (t->has_override) { /* an unjoined child's or a critical process's error wins */
    lua_settop(co, 0);
    push_extra(co, t);
    lua_getfield(co, -1, "override");
    lua_remove(co, -2);
    ok = false;
    nres = 1;
  } else if (!ok && nres == 0) {
    lua_pushliteral(co, "task failed");
    nres = 1;
  }
  if (ok) {
    t->status = T_DONE;
  } else if (t->lazy_cancel) {
    t->status = T_CANCELLED;
  } else {
    bool own = false;
    if (lua_type(co, -1) == LUA_TTABLE && t->cancel_pending) {
      lua_getfield(co, -1, "_own");
      own = lua_toboolean(co, -1);
      lua_pop(co, 1);
    }
    t->status = own ? T_CANCELLED : T_FAILED;
  }
  /* Keep exactly the outcome on the dead coroutine's stack for joiners. */
  if (lua_gettop(co) > nres) {
    lua_rotate(co, 1, nres);
    lua_settop(co, nres);
  }
  struct task *parent = t->parent;
  bool joined = t->joiners != NULL || t->group != NULL;
  unlink_task(t);
  notify_finished(t);
  /* An unjoined child's failure fails its parent (rule 1). */
  if (t->status == T_FAILED && !joined && parent && !t->abandoned) {
    if (!parent->has_override) {
      lua_pushvalue(co, -1);
      lua_xmove(co, sched_state.L, 1);
      set_override(sched_state.L, parent);
      keep_child_evidence(sched_state.L, t, parent);
      sched_push_reason(sched_state.L, "cancelled: a child task failed");
      lua_insert(sched_state.L, -2);
      lua_setfield(sched_state.L, -2, "child_error");
      sched_cancel_tree(sched_state.L, parent, lua_gettop(sched_state.L), false);
      lua_pop(sched_state.L, 1);
    }
  }
  if (parent && parent->awaiting_children && parent->wait && !parent->child_head)
    sched_wake(parent->wait, 0);
  if (t->group) { /* finished, not yet popped: its group anchors it, in done order,
                   * in a slot l_spawn made (no allocation here) */
    lua_State *L = sched_state.L;
    sched_push_ud(L, t);
    lua_getiuservalue(L, -1, UV_GROUP);
    lua_getiuservalue(L, -1, 1);
    lua_pushvalue(L, -3);
    lua_rawseti(L, -2, group_slot(t->group, ++t->group->anchored_in));
    lua_pop(L, 3);
  }
  task_unref(sched_state.L, t->ref);
  t->ref = LUA_NOREF;
  if (t == sched_state.root) uv_stop(atom_loop);
}

void sched_fail(lua_State *L, struct task *owner) {
  if (!owner || owner->status >= T_DONE) {
    lua_pop(L, 1);
    return;
  }
  if (!owner->has_override) set_override(L, owner);
  sched_push_reason(L, "cancelled");
  lua_getfield(L, -2, "message");
  lua_pushfstring(L, "cancelled: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "failure");
  lua_setfield(L, -3, "message");
  lua_pop(L, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, "child_error");
  sched_cancel_tree(L, owner, lua_gettop(L), false);
  lua_pop(L, 1);
}

void sched_cancel_root(lua_State *L, const char *message) {
  if (!sched_state.root || sched_state.root->status >= T_DONE) return;
  sched_push_reason(L, message);
  sched_cancel_tree(L, sched_state.root, lua_gettop(L), false);
  lua_pop(L, 1);
}

/* }==== */

/* {==== the resume loop ==== */

static void preempt_hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  if (!lua_isyieldable(L)) return;
  lua_sethook(L, NULL, 0, 0);
  preempted = true;
  lua_yield(L, 0);
}

/* The watch thread's view of the resume in progress: its count, and the
 * first check that saw it running (no later than it began to run). */
static uint64_t seen_seq;
static uint64_t seen_since;

/* Preempt a resume running for over `ms` (from the preemption thread);
 * called on every check, so that it can time the resume. */
static bool preempt_if_running_longer(uint64_t ms, bool due) {
  uint64_t now = uv_hrtime();
  lua_State *co = atomic_load(&running_co);
  uint64_t seq = co ? atomic_load(&resume_seq) : 0;
  if (!co || seq != seen_seq) {
    seen_seq = seq;
    seen_since = now;
    return false;
  }
  if (!due || now - seen_since < ms * 1000000ull) return false;
  bool done = false;
  atomic_store(&hooking, true);
  if (atomic_load(&running_co) == co && atomic_load(&resume_seq) == seq) {
    lua_sethook(co, preempt_hook, LUA_MASKCOUNT, 1000);
    done = true;
  }
  atomic_store(&hooking, false);
  return done;
}

/* ATOMLUA_GC=aggressive (make check): a full collection before every resume,
 * so a value kept only by a C pointer is freed, and ASan sees it, at once. */
static int aggressive_gc = -1;

/* Invariant 1: the only lua_resume of the scheduler. */
static void run_task(struct task *t) {
  if (aggressive_gc < 0) {
    const char *gc = getenv("ATOMLUA_GC");
    aggressive_gc = gc && strcmp(gc, "aggressive") == 0;
  }
  if (aggressive_gc) lua_gc(sched_state.L, LUA_GCCOLLECT);
  lua_State *co = t->co;
  int nargs = t->wake_nres, nres = 0;
  t->wake_nres = 0;
  t->resumed_nres = nargs;
  t->started = true;
  if (t->status == T_NEW) t->status = T_RUNNING;
  sched_state.current = t;
  atomic_store_explicit(&resume_seq, atomic_load_explicit(&resume_seq, memory_order_relaxed) + 1,
                        memory_order_relaxed);
  atomic_store_explicit(&running_co, co, memory_order_release);
  int st = lua_resume(co, sched_state.L, nargs, &nres);
  atomic_store(&running_co, NULL);
  while (atomic_load(&hooking)) sched_yield(); /* the watch thread is setting a hook on co */
  lua_sethook(co, NULL, 0, 0);
  sched_state.current = NULL;
  /* Out of memory: whatever raised it, the file stops here (mem.c). */
  if (mem_take_exhausted()) sched_cancel_root(sched_state.L, "cancelled: out of memory");
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (preempted) { /* a count hook yielded: let the loop run, then go on */
      preempted = false;
      t->wake_nres = 0;
      enqueue(t);
      sched_state.stop_draining = true;
    } else if (!t->wait) { /* not one of our yields */
      lua_resetthread(co);
      lua_settop(co, 0);
      util_push_error(co, "usage", "coroutine.yield called in task %s outside a plain coroutine",
                      sched_task_name(co, t));
      lua_remove(co, -2);
      settle(t, 1, false);
    }
    return;
  }
  if (st == LUA_OK) {
    /* task_body returns ok, results... */
    bool ok = nres > 0 && lua_toboolean(co, -nres);
    lua_remove(co, -nres);
    settle(t, nres - 1, ok);
  } else {                          /* an error escaped task_body itself (memory, a bug) */
    lua_settop(co, lua_gettop(co)); /* error on top */
    settle(t, 1, false);
  }
}

/* Preemption (on watch.c's thread, every 50 ms): when a task has run for
 * over 100 ms while a timer is overdue (a deadline, a grace) or the run is
 * being stopped, make it yield from a count hook so the loop can fire what
 * is due. Between suspension points Lua code is otherwise never
 * interrupted. */
static volatile bool urgent;
void sched_set_urgent(void) { urgent = true; }

/* Async-signal-safe on the main thread, which alone sets running_co (so it
 * is the task being run, or NULL): lua_sethook may be called from a signal
 * handler. */
void sched_preempt_now(void) {
  lua_State *co = running_co;
  if (co) lua_sethook(co, preempt_hook, LUA_MASKCOUNT, 1000);
}

static void preempt_check(void) {
  uint64_t due = timer_next_due();
  bool overdue = due != UINT64_MAX && uv_hrtime() > due + 50 * 1000000ull;
  preempt_if_running_longer(100, overdue || urgent);
}

static void drain(void) {
  if (sched_state.in_drain) return;
  sched_state.in_drain = true;
  struct task *t;
  while (!sched_state.stop_draining && (t = dequeue())) {
    if (t->status >= T_DONE) continue;
    if (!t->started && t->cancel_pending) { /* invariant 7 */
      lua_settop(t->co, 0);
      push_cancel_error(t->co, t, t->co);
      settle(t, 1, false);
      continue;
    }
    run_task(t);
  }
  sched_state.stop_draining = false;
  sched_state.in_drain = false;
  if (!sched_state.ready_head && sched_state.handles_ready) uv_idle_stop(&sched_state.idle);
}

static void check_cb(uv_check_t *h) {
  (void)h;
  drain();
}

static void handles_init(void) {
  if (sched_state.handles_ready) return;
  uv_idle_init(atom_loop, &sched_state.idle);
  uv_check_init(atom_loop, &sched_state.check);
  uv_check_start(&sched_state.check, check_cb);
  uv_unref((uv_handle_t *)&sched_state.check);
  sched_state.handles_ready = true;
  if (sched_state.ready_head) uv_idle_start(&sched_state.idle, idle_cb);
}

void sched_shutdown(void) {
  if (!sched_state.handles_ready) return;
  uv_close((uv_handle_t *)&sched_state.idle, NULL);
  uv_close((uv_handle_t *)&sched_state.check, NULL);
  sched_state.handles_ready = false;
}

/* }==== */

/* Push the outcome of a finished task: its results, or its error. */
int sched_push_outcome(lua_State *L, int ud, struct task *t) {
  sched_make_cancel_error(L, ud, t);
  int n = lua_gettop(t->co);
  luaL_checkstack(L, n, "too many results");
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(t->co, i);
    lua_xmove(t->co, L, 1);
  }
  return n;
}

/* {==== running a root task ==== */

/* Push one line per waiting task: "t3 waiting in ev:wait() at s.lua:12". */
static void push_waiting_report(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "deadlock: every task waits for something only another task could provide");
  for (struct task *t = sched_next_task(NULL); t; t = sched_next_task(t)) {
    if (!t->wait) continue;
    char where[512];
    const char *at = util_where(t->co, where, sizeof where);
    sched_task_name(L, t);
    sched_push_desc(L, t);
    lua_pushfstring(L, "\n  %s waiting in %s at %s", lua_tostring(L, -2), lua_tostring(L, -1),
                    at ? at : "?");
    lua_remove(L, -2);
    lua_remove(L, -2);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

/* Nothing can wake anyone: fail each owner scope that runs (tests) with a
 * deadlock error, or the root when none does. */
static void break_deadlock(lua_State *L) {
  push_waiting_report(L);
  int msg = lua_gettop(L);
  int hit = 0;
  for (int pass = 0; pass < 2 && !hit; pass++) {
    for (struct task *t = sched_next_task(NULL); t; t = sched_next_task(t)) {
      if (pass == 0 ? !(t->flags & TF_OWNER) : t != sched_state.root) continue;
      lua_pushvalue(L, msg);
      util_push_error(L, "deadlock", "%s", lua_tostring(L, -1));
      lua_remove(L, -2);
      sched_task_name(L, t);
      lua_setfield(L, -2, "task");
      sched_fail(L, t);
      hit++;
    }
  }
  lua_pop(L, 1);
  if (!sched_state.ready_head && sched_state.root && sched_state.root->status < T_DONE)
    sched_abandon(sched_state.root); /* nothing woke */
}

/* Subsystems' end-of-run hooks (sched_on_run_end), in registration order. */
static void (*run_end_hooks[16])(lua_State *L);
static int run_end_count;

void sched_on_run_end(void (*fn)(lua_State *L)) {
  for (int i = 0; i < run_end_count; i++)
    if (run_end_hooks[i] == fn) return;
  if (run_end_count == (int)(sizeof run_end_hooks / sizeof *run_end_hooks)) abort(); /* a bug */
  run_end_hooks[run_end_count++] = fn;
}

/* _atom.run(fn, ...) -> true, results... | false, error: runs fn as the root
 * task on the loop until it has ended. */
int sched_run(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (sched_state.root || sched_state.current)
    return util_error(L, "usage", "atom.run cannot be called inside a task");
  lua_State *prev = sched_state.L;
  sched_state.L = L;
  util_task_name_hook = push_current_name;
  handles_init();
  watch_add(preempt_check);
  int nargs = lua_gettop(L) - 1;
  struct task *root = sched_task_new(L, NULL, nargs, TF_ROOT);
  lua_pushliteral(L, "main");
  lua_setiuservalue(L, -2, UV_NAME);
  int root_idx = lua_gettop(L);
  sched_state.root = root;
  /* uv_run returns when the root has ended (settle stops the loop), or when
   * nothing is left that could wake a task: a deadlock. */
  for (;;) {
    uv_run(atom_loop, UV_RUN_DEFAULT);
    if (root->status >= T_DONE) break;
    if (!sched_state.ready_head) break_deadlock(L);
  }
  sched_state.root = NULL;
  sched_state.L = prev;
  for (int i = 0; i < run_end_count; i++) run_end_hooks[i](L);
  lua_pushboolean(L, root->status == T_DONE);
  lua_pushvalue(L, root_idx);
  lua_pushstring(L, sched_status_names[root->status]);
  int n = sched_push_outcome(L, root_idx, root);
  return n + 3; /* ok, root task, status, results or error */
}

static int count_handles_cb_n;
static void count_handle_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  /* Handles that would keep the loop alive, plus luv's (data set) still open:
   * our own idle/check/timer/async infrastructure is unref'd or inactive. */
  if (uv_is_closing(h)) return;
  if ((uv_is_active(h) && uv_has_ref(h) && h != (uv_handle_t *)&sched_state.idle) || h->data)
    count_handles_cb_n++;
}

int sched_open_handles(void) {
  count_handles_cb_n = 0;
  uv_walk(atom_loop, count_handle_cb, NULL);
  return count_handles_cb_n;
}

/* Forget the state's references when its lua_State closes (one state per
 * scenario file). */
void sched_reset(void) {
  sched_state.handler_ref = sched_state.finish_ref = LUA_NOREF;
  sched_state.root = NULL;
  sched_state.current = NULL;
  sched_state.ready_head = sched_state.ready_tail = NULL;
  sched_state.live = 0;
  free_refs_n = 0;     /* slots of the closed state */
  gc_saved_pause = -1; /* a new state has its own pause */
}

/* }==== */

/* The run's grace has passed (--timeout or a signal): abandon what still runs. */
void sched_abandon_root(void) {
  if (sched_state.root && sched_state.root->status < T_DONE) sched_abandon(sched_state.root);
}

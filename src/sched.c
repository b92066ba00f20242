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
 *  4. A task finishes only after all its children finished (the trampoline
 *     waits in end_children), so the tree is always well nested.
 *  5. Cancellation is level-triggered: once t->cancel_pending is set it stays
 *     set, and every checkpoint of t raises it, except while t runs its
 *     cleanups or waits uninterruptibly, until its grace has passed (t->hard).
 *  6. Cancelling a task cancels its unfinished descendants, except shields
 *     and what they started, unless the cancel is forced (end of the run).
 *  7. A task cancelled before it first ran never runs.
 *  8. A finished task's outcome never changes; joiners and groups are told
 *     exactly once. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "atom.h"

/* Uservalue slots of a task userdata. */
enum { UV_THREAD = 1, UV_NAME, UV_WAITMEM, UV_DESC, UV_CANCEL, UV_EXTRA, UV_OVERRIDE, UV_GROUP, UV_COUNT };

enum status { T_NEW, T_RUNNING, T_DONE, T_FAILED, T_CANCELLED };
static const char *const status_names[] = {"running", "running", "done", "failed", "cancelled"};

enum { TF_SHIELD = 1, TF_TEST = 2, TF_ROOT = 4 };

struct group;

struct task {
  lua_State *co;
  int ref; /* to the userdata while unfinished (invariant 3) */
  enum status status;
  unsigned flags;
  struct task *parent, *child_head, *sib_prev, *sib_next;
  struct task *all_prev, *all_next; /* every unfinished task */
  struct task *ready_next;
  bool queued, cancel_pending, hard, in_cleanup, deadline_expired, abandoned, started;
  bool wake_error, has_override, awaiting_children;
  bool returned; /* its function has returned or raised (trampoline step 2 began) */
  int wake_nres;            /* values queued for the next resume */
  int resumed_nres;         /* values the current resume brought (for continuations) */
  struct wait *wait;
  double wait_timeout, wait_since;
  struct timer wait_timer, deadline, grace;
  double deadline_secs, grace_secs;
  bool grace_abandon_phase;
  struct group *group;      /* structured wait this task belongs to */
  struct group *waiting_group; /* the group whose members it awaits in group_next */
  struct task *group_next;  /* in the group's finished list */
  int group_index;          /* 1-based spawn order within the group */
  int park_seq;             /* token of the current park, for stale unparks */
  struct wait own_wait;     /* sleep and park need no memory of their own */
  struct joiner *joiners;   /* tasks waiting in t:join() */
  int go_count;
  int name_n;               /* lazy name: UV_NAME holds the parent's, add "/<n>" or "/go<n>" */
  bool name_go;
  void *procs;              /* the proc module's list head */
};

struct group {
  int running, spawned;
  struct task *done_head, *done_tail;
  struct wait *waiting; /* the owner's wait in group_next, or NULL */
};

struct joiner {
  struct wait w;
  struct task *target;
  struct joiner *next;
};

static struct {
  lua_State *L;               /* the state callbacks build values on */
  struct task *current;       /* the task inside lua_resume, or NULL */
  struct task *root;
  struct task *ready_head, *ready_tail;
  struct task *all_head;
  int live;
  int trampoline_ref;
  uv_idle_t idle;
  uv_check_t check;
  bool handles_ready;
  bool stop_draining;
  bool in_drain;
  double default_grace; /* --grace */
} S = {.trampoline_ref = LUA_NOREF, .default_grace = 10};

/* Preemption (see watchdog in main.c): the task running too long while a
 * deadline is overdue yields from a count hook. */
static pthread_mutex_t running_lock = PTHREAD_MUTEX_INITIALIZER;
static lua_State *volatile running_co;
static volatile uint64_t running_since;
static volatile bool preempted;

static void cancel_tree(lua_State *L, struct task *t, int reason, bool force);
static void idle_cb(uv_idle_t *h) { (void)h; /* only keeps the poll from blocking */ }
static void settle(struct task *t, int nres, bool ok);

/* {==== small helpers ==== */

static void push_ud(lua_State *L, struct task *t) { lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref); }

void sched_push_task(lua_State *L, struct task *t) {
  /* Finished tasks have no ref; the userdata is reachable only through handles
   * the caller already holds, so callers only push unfinished tasks or use
   * the handle they have. */
  if (t->ref != LUA_NOREF)
    push_ud(L, t);
  else
    lua_pushnil(L);
}

static void set_uv_top(lua_State *L, struct task *t, int slot) { /* [value] -> [] */
  push_ud(L, t);
  lua_insert(L, -2);
  lua_setiuservalue(L, -2, slot);
  lua_pop(L, 1);
}

/* Push the name of the task whose userdata is at `ud`. Children's names
 * ("<parent>/<n>", "<parent>/go<n>") are built on first read and cached, so
 * starting 10,000 tasks makes no strings. */
static void push_name(lua_State *L, int ud, struct task *t) {
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
  push_ud(L, t);
  push_name(L, -1, t);
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

bool sched_task_done(struct task *t) { return t->status >= T_DONE; }
bool sched_task_returned(struct task *t) { return t->returned || t->status >= T_DONE; }
int sched_live_tasks(void) { return S.live; }
void **sched_task_procs(struct task *t) { return &t->procs; }

struct task *sched_current(lua_State *L) {
  return (S.current && S.current->co == L) ? S.current : NULL;
}

struct task *sched_owner(struct task *t) {
  while (t && !(t->flags & (TF_TEST | TF_ROOT))) t = t->parent;
  return t ? t : S.root;
}

static bool deliverable(struct task *t) { return t->cancel_pending && (!t->in_cleanup || t->hard); }

static void enqueue(struct task *t) {
  if (t->queued) return;
  t->queued = true;
  t->ready_next = NULL;
  if (S.ready_tail)
    S.ready_tail->ready_next = t;
  else
    S.ready_head = t;
  S.ready_tail = t;
  if (S.handles_ready && !uv_is_active((uv_handle_t *)&S.idle)) uv_idle_start(&S.idle, idle_cb);
}

static struct task *dequeue(void) {
  struct task *t = S.ready_head;
  if (!t) return NULL;
  S.ready_head = t->ready_next;
  if (!S.ready_head) S.ready_tail = NULL;
  t->queued = false;
  return t;
}

/* }==== */

/* {==== errors delivered to tasks ==== */

/* Where a suspended or running thread is, as the first frame outside atom's
 * own Lua code: pushes its short source and returns the line (0: none). */
static int push_where_parts(lua_State *L, lua_State *co) {
  lua_Debug ar;
  for (int level = 0; lua_getstack(co, level, &ar); level++) {
    if (!lua_getinfo(co, "Sl", &ar) || ar.currentline <= 0) continue;
    if (strncmp(ar.source, "@lua/atom/", 10) == 0 || ar.source[0] == '=') continue;
    lua_pushstring(L, ar.short_src);
    return ar.currentline;
  }
  return 0;
}

/* Push on L the cancellation error for t: kind cancelled, the reason's
 * message, and child_error when an unjoined child or a process failed.
 * `where`, `task` and `traceback` are filled in lazily from _src, _line and
 * _t by the error metatable (lua/atom/errors.lua): cancelling 10,000 tasks
 * makes no strings. */
static void push_cancel_error(lua_State *L, struct task *t, lua_State *where_L) {
  push_ud(L, t);
  lua_getiuservalue(L, -1, UV_CANCEL); /* [ud, reason] */
  lua_createtable(L, 0, 8);
  lua_pushliteral(L, "cancelled");
  lua_setfield(L, -2, "kind");
  lua_getfield(L, -2, "message");
  lua_setfield(L, -2, "message");
  if (lua_getfield(L, -2, "child_error") != LUA_TNIL)
    lua_setfield(L, -2, "child_error");
  else
    lua_pop(L, 1);
  int line = push_where_parts(L, where_L);
  if (line) {
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
  lua_replace(L, -3);
  lua_pop(L, 1);
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

/* Deliver a pending cancellation to a suspended task now. */
static void interrupt(struct task *t) {
  if (!t->wait || !deliverable(t)) return;
  if (wait_uninterruptible(t) && !t->hard) return;
  detach_wait(t);
  push_cancel_error(t->co, t, t->co);
  wake_with_error_on_co(t);
}

/* }==== */

/* {==== waits ==== */

/* The task's built-in wait record, reset for a new wait. */
static struct wait *own_wait(struct task *t, const char *what, bool uninterruptible) {
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
      util_error(L, "usage", "%s%s called outside a task (it can wait, so it needs atom.run or a scenario)", pre, fname);
    util_error(L, "usage", "%s%s called inside a plain coroutine", pre, fname);
  }
  if (deliverable(t)) {
    push_cancel_error(L, t, L);
    lua_error(L);
  }
  return t;
}

void *sched_wait_alloc(lua_State *L, struct task *t, size_t size) {
  void *mem = lua_newuserdatauv(L, size, 0);
  memset(mem, 0, size);
  set_uv_top(L, t, UV_WAITMEM);
  return mem;
}

static int wait_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  struct task *t = S.current;
  if (t->wake_error) {
    t->wake_error = false;
    return lua_error(L);
  }
  return t->resumed_nres;
}

static void push_desc(lua_State *L, struct task *t) {
  push_ud(L, t);
  lua_getiuservalue(L, -1, UV_DESC);
  lua_remove(L, -2);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    const char *what = t->wait && t->wait->what ? t->wait->what : "wait";
    lua_pushstring(L, what);
  }
}

static void format_secs(char *buf, size_t n, double s) { snprintf(buf, n, "%.14g", s); }

static void wait_timeout_cb(struct timer *tm) {
  struct task *t = container_of(tm, struct task, wait_timer);
  lua_State *co = t->co;
  push_desc(co, t); /* before detach: the label lives in the wait */
  double secs = t->wait_timeout;
  detach_wait(t);
  char buf[64];
  format_secs(buf, sizeof buf, secs);
  util_push_error(co, "timeout", "%s timed out after %ss", lua_tostring(co, -1), buf);
  lua_remove(co, -2);
  wake_with_error_on_co(t);
}

static int wait_with_k(lua_State *L, struct wait *w, double timeout, int desc_idx, lua_KFunction k) {
  struct task *t = sched_current(L);
  if (!t) return util_error(L, "usage", "internal: wait outside a task");
  if (desc_idx) {
    lua_pushvalue(L, desc_idx);
    set_uv_top(L, t, UV_DESC);
  } else {
    lua_pushnil(L);
    set_uv_top(L, t, UV_DESC);
  }
  w->task = t;
  t->wait = w;
  t->wait_since = util_now();
  if (timeout >= 0) {
    t->wait_timeout = timeout;
    timer_start(&t->wait_timer, timeout, wait_timeout_cb);
  }
  return lua_yieldk(L, 0, 0, k);
}

int sched_wait(lua_State *L, struct wait *w, double timeout, int desc_idx) {
  return wait_with_k(L, w, timeout, desc_idx, wait_k);
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

static void unlink_task(struct task *t) {
  if (t->parent) {
    if (t->sib_prev)
      t->sib_prev->sib_next = t->sib_next;
    else
      t->parent->child_head = t->sib_next;
    if (t->sib_next) t->sib_next->sib_prev = t->sib_prev;
  }
  t->sib_prev = t->sib_next = NULL;
  if (t->all_prev)
    t->all_prev->all_next = t->all_next;
  else
    S.all_head = t->all_next;
  if (t->all_next) t->all_next->all_prev = t->all_prev;
  t->all_prev = t->all_next = NULL;
  S.live--;
}

/* [fn, args...] (nargs values) on L -> pushes the new task's userdata. */
static struct task *task_new(lua_State *L, struct task *parent, int nargs, unsigned flags) {
  struct task *t = lua_newuserdatauv(L, sizeof *t, UV_COUNT - 1); /* [fn, args, ud] */
  memset(t, 0, sizeof *t);
  t->ref = LUA_NOREF;
  timer_init(&t->wait_timer);
  timer_init(&t->deadline);
  timer_init(&t->grace);
  luaL_setmetatable(L, "atom.task");
  t->flags = flags;
  t->grace_secs = parent ? parent->grace_secs : S.default_grace;
  lua_State *co = lua_newthread(L); /* [fn, args, ud, co] */
  t->co = co;
  lua_setiuservalue(L, -2, UV_THREAD);
  lua_insert(L, -(nargs + 2)); /* [ud, fn, args] */
  lua_rawgeti(L, LUA_REGISTRYINDEX, S.trampoline_ref);
  lua_xmove(L, co, 1);
  lua_xmove(L, co, nargs + 1); /* co: [trampoline, fn, args] */
  t->wake_nres = nargs + 1;
  lua_pushvalue(L, -1);
  t->ref = util_ref(L);
  link_child(parent, t);
  t->all_next = S.all_head;
  if (S.all_head) S.all_head->all_prev = t;
  S.all_head = t;
  S.live++;
  /* Inherit a pending cancellation: a task started by a cancelled task is
   * cancelled too (it will never run). */
  if (parent && parent->cancel_pending && !(flags & TF_SHIELD)) {
    push_ud(L, parent);
    lua_getiuservalue(L, -1, UV_CANCEL);
    cancel_tree(L, t, lua_gettop(L), false);
    lua_pop(L, 2);
  }
  enqueue(t);
  return t;
}

static void grace_cb(struct timer *tm);

static void arm_grace(struct task *t) {
  if (!timer_active(&t->grace) && !t->grace_abandon_phase) timer_start(&t->grace, t->grace_secs, grace_cb);
}

/* reason: stack index on L of {message=, child_error=}. */
static void cancel_tree(lua_State *L, struct task *t, int reason, bool force) {
  if (t->status >= T_DONE) return;
  if (!t->cancel_pending) {
    t->cancel_pending = true;
    lua_pushvalue(L, reason);
    set_uv_top(L, t, UV_CANCEL);
    arm_grace(t);
    interrupt(t);
  }
  for (struct task *c = t->child_head; c; c = c->sib_next)
    if (force || !(c->flags & TF_SHIELD)) cancel_tree(L, c, reason, force);
}

static void push_reason(lua_State *L, const char *message) {
  lua_createtable(L, 0, 2);
  lua_pushstring(L, message);
  lua_setfield(L, -2, "message");
}

/* The grace has passed: interrupt the cleanup in progress, kill the
 * processes, note the timeout; one second later, abandon. */
static void abandon(struct task *t);
static void grace_cb(struct timer *tm) {
  struct task *t = container_of(tm, struct task, grace);
  if (t->status >= T_DONE) return;
  if (t->grace_abandon_phase) {
    abandon(t);
    return;
  }
  t->hard = true;
  t->grace_abandon_phase = true;
  if (!t->cancel_pending) {
    push_reason(S.L, "cancelled: cleanup grace expired");
    cancel_tree(S.L, t, lua_gettop(S.L), false);
    lua_pop(S.L, 1);
  }
  char buf[64];
  format_secs(buf, sizeof buf, t->grace_secs);
  util_push_error(S.L, "timeout", "cleanup did not finish within %ss", buf);
  push_ud(S.L, t);
  lua_getiuservalue(S.L, -1, UV_EXTRA);
  if (lua_isnil(S.L, -1)) {
    lua_pop(S.L, 1);
    lua_newtable(S.L);
    lua_pushvalue(S.L, -1);
    lua_setiuservalue(S.L, -3, UV_EXTRA);
  }
  lua_pushvalue(S.L, -3);
  lua_setfield(S.L, -2, "grace_error");
  lua_pop(S.L, 3);
  if (t->flags & (TF_TEST | TF_ROOT)) proc_kill_owned(t);
  interrupt(t);
  timer_start(&t->grace, 1.0, grace_cb);
}

/* Give up on a task that keeps running past its grace: close its pending
 * <close> variables without letting them wait, and finish it as cancelled. */
static void abandon(struct task *t) {
  if (t->status >= T_DONE) return;
  while (t->child_head) abandon(t->child_head);
  t->abandoned = true;
  detach_wait(t);
  if (t->queued) { /* unlink from the ready queue */
    struct task **pp = &S.ready_head;
    S.ready_tail = NULL;
    for (struct task *q = S.ready_head; q; q = q->ready_next) {
      if (q == t) {
        *pp = q->ready_next;
        continue;
      }
      pp = &q->ready_next;
      S.ready_tail = q;
    }
    if (S.ready_tail) S.ready_tail->ready_next = NULL;
    t->queued = false;
  }
  char buf[512];
  const char *where = util_where(t->co, buf, sizeof buf);
  fprintf(stderr, "atomlua: warning: abandoned task %s at %s (it kept running past its cleanup grace)\n",
          sched_task_name(S.L, t), where ? where : "?");
  lua_pop(S.L, 1);
  if (t->flags & (TF_TEST | TF_ROOT)) proc_kill_owned(t);
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

/* A failing unjoined child's error becomes its parent's: keep, in the
 * parent's notes, which task failed and its traceback (a string error
 * carries neither), for the report. */
static void keep_child_evidence(lua_State *L, struct task *child, struct task *parent) {
  push_ud(L, child);
  lua_getiuservalue(L, -1, UV_EXTRA); /* [ud, extra|nil] */
  push_ud(L, parent);
  lua_getiuservalue(L, -1, UV_EXTRA); /* [ud, cx, pud, px] */
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, -3, UV_EXTRA);
  }
  push_name(L, -4, child);
  lua_setfield(L, -2, "child_task");
  if (lua_istable(L, -3)) {
    lua_getfield(L, -3, "traceback");
    lua_setfield(L, -2, "child_traceback");
  }
  lua_pop(L, 4);
}

/* The task's trampoline returned: [ok, results...] (nres values) on t->co. */
static void settle(struct task *t, int nres, bool ok) {
  lua_State *co = t->co;
  timer_stop(&t->wait_timer);
  timer_stop(&t->deadline);
  timer_stop(&t->grace);
  if (t->has_override) { /* an unjoined child's or a critical process's error wins */
    lua_settop(co, 0);
    push_ud(co, t);
    lua_getiuservalue(co, -1, UV_OVERRIDE);
    lua_remove(co, -2);
    ok = false;
    nres = 1;
  } else if (!ok && nres == 0) {
    lua_pushliteral(co, "task failed");
    nres = 1;
  }
  if (ok) {
    t->status = T_DONE;
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
      lua_xmove(co, S.L, 1);
      lua_pushvalue(S.L, -1);
      set_uv_top(S.L, parent, UV_OVERRIDE);
      parent->has_override = true;
      keep_child_evidence(S.L, t, parent);
      push_reason(S.L, "cancelled: a child task failed");
      lua_insert(S.L, -2);
      lua_setfield(S.L, -2, "child_error");
      cancel_tree(S.L, parent, lua_gettop(S.L), false);
      lua_pop(S.L, 1);
    }
  }
  if (parent && parent->awaiting_children && parent->wait && !parent->child_head) sched_wake(parent->wait, 0);
  int ref = t->ref;
  util_unref(S.L, &ref);
  t->ref = LUA_NOREF;
  if (t == S.root) uv_stop(atom_loop);
}

void sched_fail(lua_State *L, struct task *owner) {
  if (!owner || owner->status >= T_DONE) {
    lua_pop(L, 1);
    return;
  }
  if (!owner->has_override) {
    lua_pushvalue(L, -1);
    set_uv_top(L, owner, UV_OVERRIDE);
    owner->has_override = true;
  }
  push_reason(L, "cancelled");
  lua_getfield(L, -2, "message");
  lua_pushfstring(L, "cancelled: %s", lua_tostring(L, -1) ? lua_tostring(L, -1) : "failure");
  lua_setfield(L, -3, "message");
  lua_pop(L, 1);
  lua_insert(L, -2);
  lua_setfield(L, -2, "child_error");
  cancel_tree(L, owner, lua_gettop(L), false);
  lua_pop(L, 1);
}

void sched_cancel_root(lua_State *L, const char *message) {
  if (!S.root || S.root->status >= T_DONE) return;
  push_reason(L, message);
  cancel_tree(L, S.root, lua_gettop(L), false);
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

/* Preempt a resume running for over `ms` (from the preemption thread). */
bool sched_preempt_if_running_longer(uint64_t ms);
bool sched_preempt_if_running_longer(uint64_t ms) {
  bool done = false;
  pthread_mutex_lock(&running_lock);
  if (running_co && uv_hrtime() - running_since > ms * 1000000ull) {
    lua_sethook(running_co, preempt_hook, LUA_MASKCOUNT, 1000);
    done = true;
  }
  pthread_mutex_unlock(&running_lock);
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
  if (aggressive_gc) lua_gc(S.L, LUA_GCCOLLECT);
  lua_State *co = t->co;
  int nargs = t->wake_nres, nres = 0;
  t->wake_nres = 0;
  t->resumed_nres = nargs;
  t->started = true;
  if (t->status == T_NEW) t->status = T_RUNNING;
  S.current = t;
  pthread_mutex_lock(&running_lock);
  running_co = co;
  running_since = uv_hrtime();
  pthread_mutex_unlock(&running_lock);
  int st = lua_resume(co, S.L, nargs, &nres);
  pthread_mutex_lock(&running_lock);
  running_co = NULL;
  pthread_mutex_unlock(&running_lock);
  lua_sethook(co, NULL, 0, 0);
  S.current = NULL;
  if (st == LUA_YIELD) {
    lua_pop(co, nres);
    if (preempted) { /* a count hook yielded: let the loop run, then go on */
      preempted = false;
      t->wake_nres = 0;
      enqueue(t);
      S.stop_draining = true;
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
    /* The trampoline returns ok, results... */
    bool ok = nres > 0 && lua_toboolean(co, -nres);
    lua_remove(co, -nres);
    settle(t, nres - 1, ok);
  } else { /* an error escaped the trampoline itself (memory, a bug) */
    lua_settop(co, lua_gettop(co)); /* error on top */
    settle(t, 1, false);
  }
}

/* The preemption thread: when a task has run for over 100 ms while a timer
 * is overdue (a deadline, a grace) or the run is being stopped, make it
 * yield from a count hook so the loop can fire what is due. Between
 * suspension points Lua code is otherwise never interrupted. */
volatile bool sched_urgent;
void (*volatile sched_watchdog_hook)(void); /* the CLI's hard-exit check */
static void *preempt_main(void *arg) {
  (void)arg;
  for (;;) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (sched_watchdog_hook) sched_watchdog_hook();
    uint64_t due = timer_next_due();
    bool overdue = due != UINT64_MAX && uv_hrtime() / 1000000 > due + 50;
    if (overdue || sched_urgent) sched_preempt_if_running_longer(100);
  }
  return NULL;
}

static void preempt_thread_start(void) {
  static bool started;
  if (started) return;
  started = true;
  pthread_t th;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  if (pthread_create(&th, &attr, preempt_main, NULL) == 0) pthread_detach(th);
  pthread_attr_destroy(&attr);
}

static void drain(void) {
  if (S.in_drain) return;
  S.in_drain = true;
  struct task *t;
  while (!S.stop_draining && (t = dequeue())) {
    if (t->status >= T_DONE) continue;
    if (!t->started && t->cancel_pending) { /* invariant 7 */
      lua_settop(t->co, 0);
      push_cancel_error(t->co, t, t->co);
      settle(t, 1, false);
      continue;
    }
    run_task(t);
  }
  S.stop_draining = false;
  S.in_drain = false;
  if (!S.ready_head && S.handles_ready) uv_idle_stop(&S.idle);
}

static void check_cb(uv_check_t *h) {
  (void)h;
  drain();
}

static void handles_init(void) {
  if (S.handles_ready) return;
  uv_idle_init(atom_loop, &S.idle);
  uv_check_init(atom_loop, &S.check);
  uv_check_start(&S.check, check_cb);
  uv_unref((uv_handle_t *)&S.check);
  S.handles_ready = true;
  if (S.ready_head) uv_idle_start(&S.idle, idle_cb);
}

void sched_shutdown(void);
void sched_shutdown(void) {
  if (!S.handles_ready) return;
  uv_close((uv_handle_t *)&S.idle, NULL);
  uv_close((uv_handle_t *)&S.check, NULL);
  S.handles_ready = false;
}

/* }==== */

/* {==== Lua bindings: tasks ==== */

static void deadline_cb(struct timer *tm);

static struct task *check_task(lua_State *L, int idx, const char *fname) {
  struct task *t = luaL_testudata(L, idx, "atom.task");
  if (!t) util_typeerror(L, idx, fname, "task");
  return t;
}

static struct group *check_group(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, "atom.group");
}

/* _atom.spawn(group|nil, name|nil, flags, deadline|nil, fn, ...) -> task */
static int l_spawn(lua_State *L) {
  struct group *g = lua_isnil(L, 1) ? NULL : check_group(L, 1);
  unsigned flags = (unsigned)luaL_checkinteger(L, 3);
  double deadline = luaL_optnumber(L, 4, -1);
  luaL_checktype(L, 5, LUA_TFUNCTION);
  struct task *cur = S.current, *parent = cur ? cur : S.root;
  if (!parent) return util_error(L, "usage", "no atom run is active (use atom.run or a scenario)");
  int nargs = lua_gettop(L) - 5;
  struct task *t = task_new(L, parent, nargs, flags); /* consumes fn and args */
  if (lua_isnil(L, 2)) { /* "<parent>/<n>" in a group, else "<parent>/go<n>", built lazily */
    push_ud(L, parent);
    push_name(L, -1, parent);
    lua_setiuservalue(L, -3, UV_NAME);
    lua_pop(L, 1);
    t->name_go = g == NULL;
    t->name_n = g ? g->spawned + 1 : ++parent->go_count;
  } else {
    lua_pushvalue(L, 2);
    lua_setiuservalue(L, -2, UV_NAME);
  }
  if (g) {
    t->group = g;
    t->group_index = ++g->spawned;
    g->running++;
    lua_pushvalue(L, 1);
    lua_setiuservalue(L, -2, UV_GROUP);
    lua_getiuservalue(L, 1, 1); /* the group's anchor table */
    lua_pushvalue(L, -2);
    lua_rawseti(L, -2, t->group_index);
    lua_pop(L, 1);
  }
  if (deadline >= 0) {
    t->deadline_secs = deadline;
    timer_start(&t->deadline, deadline, deadline_cb);
  }
  return 1;
}

static void deadline_cb(struct timer *tm) {
  struct task *t = container_of(tm, struct task, deadline);
  t->deadline_expired = true;
  char buf[64];
  format_secs(buf, sizeof buf, t->deadline_secs);
  lua_pushfstring(S.L, "cancelled: timed out after %ss", buf);
  push_reason(S.L, lua_tostring(S.L, -1));
  cancel_tree(S.L, t, lua_gettop(S.L), false);
  lua_pop(S.L, 2);
}

/* Push the outcome of a finished task: its results, or its error. */
static int push_outcome(lua_State *L, struct task *t) {
  int n = lua_gettop(t->co);
  luaL_checkstack(L, n, "too many results");
  for (int i = 1; i <= n; i++) {
    lua_pushvalue(t->co, i);
    lua_xmove(t->co, L, 1);
  }
  return n;
}

static int l_task_index(lua_State *L) {
  struct task *t = check_task(L, 1, "index");
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "name") == 0) {
    push_name(L, 1, t);
    return 1;
  }
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, k);
  (void)t;
  return 1;
}

static int l_task_status(lua_State *L) {
  struct task *t = check_task(L, 1, "status");
  lua_pushstring(L, status_names[t->status]);
  return 1;
}

static int l_task_cancel(lua_State *L) {
  struct task *t = check_task(L, 1, "cancel");
  if (t->status >= T_DONE) return 0;
  push_reason(L, "cancelled: by t:cancel()");
  cancel_tree(L, t, lua_gettop(L), false);
  return 0;
}

static void joiner_cancel(struct wait *w) {
  struct joiner *j = container_of(w, struct joiner, w);
  if (!j->target) return;
  for (struct joiner **pp = &j->target->joiners; *pp; pp = &(*pp)->next)
    if (*pp == j) {
      *pp = j->next;
      break;
    }
  j->target = NULL;
}

/* The task's userdata is at index 1. */
static int join_result(lua_State *L, struct task *t) {
  if (t->status == T_DONE) return push_outcome(L, t);
  if (t->status == T_CANCELLED) {
    push_name(L, 1, t);
    return util_error(L, "cancelled", "task %s was cancelled", lua_tostring(L, -1));
  }
  push_outcome(L, t);
  return lua_error(L);
}

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  struct task *me = S.current;
  if (me->wake_error) {
    me->wake_error = false;
    return lua_error(L);
  }
  struct task *t = lua_touserdata(L, 1);
  lua_settop(L, 1);
  return join_result(L, t);
}

/* t:join([timeout | opts]) */
static int l_task_join(lua_State *L) {
  struct task *t = check_task(L, 1, "join");
  double timeout = util_opttimeout(L, 2, "join", -1);
  struct task *me = sched_enter(L, "t:join");
  if (t == me) return util_error(L, "usage", "a task cannot join itself");
  lua_settop(L, 1);
  if (t->status >= T_DONE) return join_result(L, t);
  struct joiner *j = sched_wait_alloc(L, me, sizeof *j);
  j->w.cancel = joiner_cancel;
  j->w.what = "t:join()";
  j->w.blocks = true;
  j->target = t;
  j->next = t->joiners;
  t->joiners = j;
  push_name(L, 1, t);
  lua_pushfstring(L, "t:join() of %s", lua_tostring(L, -1));
  return wait_with_k(L, &j->w, timeout, lua_gettop(L), join_k);
}

static int l_task_tostring(lua_State *L) {
  struct task *t = check_task(L, 1, "tostring");
  push_name(L, 1, t);
  lua_pushfstring(L, "atom.task %s (%s)", lua_tostring(L, -1), status_names[t->status]);
  return 1;
}

/* _atom.result(t) -> the outcome of a finished task (raises its error) */
static int l_result(lua_State *L) {
  struct task *t = check_task(L, 1, "result");
  if (t->status < T_DONE) return util_error(L, "usage", "task is still running");
  lua_settop(L, 1);
  return join_result(L, t);
}

/* _atom.error_of(t) -> the error value of a failed or cancelled task */
static int l_error_of(lua_State *L) {
  struct task *t = check_task(L, 1, "error_of");
  if (t->status != T_FAILED && t->status != T_CANCELLED) return 0;
  lua_pushvalue(t->co, 1);
  lua_xmove(t->co, L, 1);
  return 1;
}

/* }==== */

/* {==== Lua bindings: groups (the structured waits of gather, race, map,
 * timeout, shield, tests) ==== */

static int l_group(lua_State *L) {
  struct group *g = lua_newuserdatauv(L, sizeof *g, 1);
  memset(g, 0, sizeof *g);
  lua_newtable(L); /* anchors the members: their pointers sit in done lists */
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, "atom.group");
  return 1;
}

static int group_next_k(lua_State *L, int status, lua_KContext ctx);

/* The owner stopped waiting without a member's end (hard cancel, abandon):
 * the group must not wake whatever the task waits for next. */
static void group_wait_cancel(struct wait *w) {
  struct task *t = container_of(w, struct task, own_wait);
  if (t->waiting_group && t->waiting_group->waiting == w) t->waiting_group->waiting = NULL;
  t->waiting_group = NULL;
}

static int group_pop(lua_State *L, struct group *g) {
  struct task *t = g->done_head;
  if (!t) return 0;
  g->done_head = t->group_next;
  if (!g->done_head) g->done_tail = NULL;
  lua_pushinteger(L, t->group_index);
  lua_pushstring(L, status_names[t->status]);
  if (lua_gettop(t->co) > 0) {
    lua_pushvalue(t->co, 1);
    lua_xmove(t->co, L, 1);
  } else {
    lua_pushnil(L);
  }
  lua_getiuservalue(L, 1, 1);
  lua_rawgeti(L, -1, t->group_index);
  lua_remove(L, -2);
  return 4;
}

/* _atom.group_next(g) -> index, status, first result or error, task; or nothing
 * once no member runs. Waits uninterruptibly: the caller's cancellation
 * reaches the members instead (invariant 6), and their ends come back here. */
static int l_group_next(lua_State *L) {
  struct group *g = check_group(L, 1);
  lua_settop(L, 1);
  int n = group_pop(L, g);
  if (n || g->running == 0) return n;
  struct task *me = sched_current(L);
  if (!me) return util_error(L, "usage", "internal: group_next outside a task");
  struct wait *w = own_wait(me, "children", true);
  w->cancel = group_wait_cancel;
  g->waiting = w;
  me->waiting_group = g;
  return wait_with_k(L, w, -1, 0, group_next_k);
}

static int group_next_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  struct task *me = S.current;
  struct group *g = check_group(L, 1);
  if (g->waiting == &me->own_wait) g->waiting = NULL;
  if (me->wake_error) {
    me->wake_error = false;
    return lua_error(L);
  }
  lua_settop(L, 1);
  return group_pop(L, g);
}

static int l_group_cancel(lua_State *L) {
  check_group(L, 1);
  const char *msg = luaL_optstring(L, 2, "cancelled: a sibling task failed");
  push_reason(L, msg);
  int reason = lua_gettop(L);
  lua_getiuservalue(L, 1, 1);
  for (lua_Integer i = 1;; i++) {
    if (lua_rawgeti(L, -1, i) == LUA_TNIL) break;
    struct task *t = lua_touserdata(L, -1);
    if (t->status < T_DONE) cancel_tree(L, t, reason, false);
    lua_pop(L, 1);
  }
  return 0;
}

/* }==== */

/* {==== Lua bindings: the current task ==== */

static int l_checkpoint(lua_State *L) {
  sched_enter(L, luaL_optstring(L, 1, "checkpoint"));
  return 0;
}

static void sleep_cb(struct timer *tm) {
  struct task *t = container_of(tm, struct task, wait_timer);
  if (t->wait) sched_wake(t->wait, 0);
}

static int l_sleep(lua_State *L) {
  lua_Number secs = util_checknumber(L, 1, "sleep");
  if (!(secs >= 0)) util_argerror(L, 1, "sleep", "non-negative number expected");
  struct task *t = sched_enter(L, "sleep");
  t->wait_timeout = secs;
  timer_start(&t->wait_timer, secs, sleep_cb); /* the wake-up itself, not a timeout */
  return wait_with_k(L, own_wait(t, "sleep", false), -1, 0, wait_k);
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, util_now());
  return 1;
}

static struct task *current_or_root(void) { return S.current ? S.current : S.root; }

static int l_current(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return 0;
  push_ud(L, t);
  return 1;
}

static int l_task_name(lua_State *L) {
  struct task *t = lua_isnoneornil(L, 1) ? current_or_root() : check_task(L, 1, "name");
  if (!t) return 0;
  if (lua_isnoneornil(L, 1)) {
    sched_task_name(L, t);
  } else {
    push_name(L, 1, t);
  }
  return 1;
}

static int l_rename(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING) util_typeerror(L, 1, "name", "string");
  struct task *t = sched_current(L);
  if (!t) return util_error(L, "usage", "atom.name called outside a task");
  lua_settop(L, 1);
  set_uv_top(L, t, UV_NAME);
  t->name_n = 0;
  return 0;
}

/* The nearest test among the current task and its ancestors: its name. */
static int l_in_test(lua_State *L) {
  for (struct task *t = S.current; t; t = t->parent)
    if (t->flags & TF_TEST) {
      sched_task_name(L, t);
      return 1;
    }
  return 0;
}

/* _atom.owner() -> the task that owns what the current task spawns */
static int l_owner(lua_State *L) {
  struct task *t = sched_owner(sched_current(L));
  if (!t || t->status >= T_DONE) return 0;
  push_ud(L, t);
  return 1;
}

static int l_is_owner(lua_State *L) {
  struct task *t = sched_current(L);
  lua_pushboolean(L, t && (t->flags & (TF_TEST | TF_ROOT)));
  return 1;
}

/* _atom.extra([create]) -> the current task's table of notes (defers,
 * traceback, cleanup errors), created on demand when create is true. */
static int l_extra(lua_State *L) {
  int ud;
  if (lua_isuserdata(L, 2)) {
    check_task(L, 2, "extra");
    ud = 2;
  } else {
    struct task *t = current_or_root();
    if (!t || t->ref == LUA_NOREF) return 0;
    push_ud(L, t);
    ud = lua_gettop(L);
  }
  lua_getiuservalue(L, ud, UV_EXTRA);
  if (lua_isnil(L, -1) && lua_toboolean(L, 1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, ud, UV_EXTRA);
  }
  return 1;
}

/* After step 2: push the task's notes table (or nil) and whether it owns
 * processes, so the trampoline's common path needs one C call. */
static int push_end_info(lua_State *L, struct task *t) {
  push_ud(L, t);
  lua_getiuservalue(L, -1, UV_EXTRA);
  lua_remove(L, -2);
  lua_pushboolean(L, (t->flags & (TF_TEST | TF_ROOT)) != 0);
  return 2;
}

static int end_children_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  S.current->awaiting_children = false;
  return push_end_info(L, S.current);
}

/* Trampoline step 2: cancel the unjoined children, wait until none is left.
 * Returns the task's notes table (or nil) and whether it is an owner. */
static int l_end_children(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return 0;
  t->returned = true;
  if (!t->child_head) return push_end_info(L, t);
  push_reason(L, "cancelled: its parent task ended");
  int reason = lua_gettop(L);
  for (struct task *c = t->child_head; c; c = c->sib_next)
    if (!c->joiners) cancel_tree(L, c, reason, true);
  lua_pop(L, 1);
  if (!t->child_head) return push_end_info(L, t);
  t->awaiting_children = true;
  return wait_with_k(L, own_wait(t, "children", true), -1, 0, end_children_k);
}

/* Trampoline step 3: cleanups run shielded; the grace starts now unless the
 * task was cancelled (then it started at the cancellation). */
static int l_begin_cleanup(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return 0;
  t->in_cleanup = true;
  arm_grace(t);
  return 0;
}

static int l_raise_grace(lua_State *L) {
  lua_Number secs = util_checknumber(L, 1, "defer");
  struct task *t = current_or_root();
  if (t && secs > t->grace_secs) {
    t->grace_secs = secs;
    if (timer_active(&t->grace) && !t->grace_abandon_phase) {
      timer_stop(&t->grace);
      timer_start(&t->grace, secs, grace_cb); /* counted anew: simple and never shorter */
    }
  }
  return 0;
}

static int l_set_default_grace(lua_State *L) {
  S.default_grace = luaL_checknumber(L, 1);
  return 0;
}

static int l_deadline_expired(lua_State *L) {
  lua_pushboolean(L, check_task(L, 1, "deadline_expired")->deadline_expired);
  return 1;
}

/* }==== */

/* {==== Lua bindings: park / unpark, the wait of Lua-built primitives
 * (channels, events, semaphores) ==== */

static int l_park_token(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return 0;
  push_ud(L, t);
  lua_pushinteger(L, t->park_seq + 1);
  return 2;
}

/* _atom.park(fname, what, timeout, blocks) -> values given to unpark */
static int l_park(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  const char *what = luaL_checkstring(L, 2);
  double timeout = luaL_optnumber(L, 3, -1);
  bool blocks = lua_toboolean(L, 4);
  struct task *t = sched_enter(L, fname);
  t->park_seq++;
  struct wait *w = own_wait(t, "park", false);
  w->blocks = blocks;
  lua_pushstring(L, what);
  lua_replace(L, 2);
  lua_settop(L, 2);
  return sched_wait(L, w, timeout, 2);
}

/* _atom.unpark(task, token, ...) -> true if that park was still waiting */
static int l_unpark(lua_State *L) {
  struct task *t = check_task(L, 1, "unpark");
  lua_Integer token = luaL_checkinteger(L, 2);
  if (t->status >= T_DONE || t->wait != &t->own_wait || t->park_seq != token ||
      strcmp(t->own_wait.what, "park") != 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  int n = lua_gettop(L) - 2;
  lua_xmove(L, t->co, n);
  sched_wake(&t->own_wait, n);
  lua_pushboolean(L, 1);
  return 1;
}

/* }==== */

/* {==== running a root task ==== */

/* Push one line per waiting task: "t3 waiting in ev:wait() at s.lua:12". */
static void push_waiting_report(lua_State *L) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "deadlock: every task waits for something only another task could provide");
  for (struct task *t = S.all_head; t; t = t->all_next) {
    if (!t->wait) continue;
    char where[512];
    const char *at = util_where(t->co, where, sizeof where);
    sched_task_name(L, t);
    push_desc(L, t);
    lua_pushfstring(L, "\n  %s waiting in %s at %s", lua_tostring(L, -2), lua_tostring(L, -1), at ? at : "?");
    lua_remove(L, -2);
    lua_remove(L, -2);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
}

/* Nothing can wake anyone: fail each running test with a deadlock error,
 * or the root when no test runs. */
static void break_deadlock(lua_State *L) {
  push_waiting_report(L);
  int msg = lua_gettop(L);
  int hit = 0;
  for (int pass = 0; pass < 2 && !hit; pass++) {
    for (struct task *t = S.all_head; t; t = t->all_next) {
      if (pass == 0 ? !(t->flags & TF_TEST) : t != S.root) continue;
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
  if (!S.ready_head && S.root && S.root->status < T_DONE) abandon(S.root); /* nothing woke */
}

/* Call _atom[name]() if the build has it (end-of-run hooks of subsystems). */
static void call_atom_fn(lua_State *L, const char *name) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "_atom");
  lua_getfield(L, -1, name);
  if (lua_isfunction(L, -1)) {
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) lua_pop(L, 1);
  } else {
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
}

/* _atom.run(fn, ...) -> true, results... | false, error: runs fn as the root
 * task on the loop until it has ended. */
static int l_run(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  if (S.root || S.current) return util_error(L, "usage", "atom.run cannot be called inside a task");
  lua_State *prev = S.L;
  S.L = L;
  handles_init();
  preempt_thread_start();
  int nargs = lua_gettop(L) - 1;
  struct task *root = task_new(L, NULL, nargs, TF_ROOT);
  lua_pushliteral(L, "main");
  lua_setiuservalue(L, -2, UV_NAME);
  int root_idx = lua_gettop(L);
  S.root = root;
  while (root->status < T_DONE) {
    uv_run(atom_loop, UV_RUN_DEFAULT);
    if (root->status >= T_DONE) break;
    if (S.ready_head) continue;
    break_deadlock(L);
  }
  S.root = NULL;
  S.L = prev;
  /* No socket outlives the run; in module mode the port reservations end
   * with atom.run, in the CLI with the process. */
  call_atom_fn(L, "http_close");
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "_atom");
  lua_getfield(L, -1, "cli");
  bool cli = lua_toboolean(L, -1);
  lua_pop(L, 3);
  if (!cli) call_atom_fn(L, "ports_release");
  lua_pushboolean(L, root->status == T_DONE);
  lua_pushvalue(L, root_idx);
  lua_pushstring(L, status_names[root->status]);
  int n = push_outcome(L, root);
  return n + 3; /* ok, root task, status, results or error */
}

static int l_cancel_root(lua_State *L) {
  sched_cancel_root(L, luaL_checkstring(L, 1));
  if (lua_toboolean(L, 2) && S.root) { /* forced: shields too (end of the run) */
    push_reason(L, luaL_checkstring(L, 1));
    cancel_tree(L, S.root, lua_gettop(L), true);
  }
  return 0;
}

static int count_handles_cb_n;
static void count_handle_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  /* Handles that would keep the loop alive, plus luv's (data set) still open:
   * our own idle/check/timer/async infrastructure is unref'd or inactive. */
  if (uv_is_closing(h)) return;
  if ((uv_is_active(h) && uv_has_ref(h) && h != (uv_handle_t *)&S.idle) || h->data) count_handles_cb_n++;
}

int sched_open_handles(void);
int sched_open_handles(void) {
  count_handles_cb_n = 0;
  uv_walk(atom_loop, count_handle_cb, NULL);
  return count_handles_cb_n;
}

static int l_stats(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, S.live);
  lua_setfield(L, -2, "tasks");
  lua_pushinteger(L, sched_open_handles());
  lua_setfield(L, -2, "handles");
  lua_pushinteger(L, util_live_refs());
  lua_setfield(L, -2, "refs");
  lua_pushinteger(L, proc_live_children());
  lua_setfield(L, -2, "children");
  lua_pushinteger(L, timer_count());
  lua_setfield(L, -2, "timers");
  return 1;
}

/* One entry of _atom.tasks for t (a task waiting on something). */
static void push_task_info(lua_State *L, struct task *t) {
  lua_createtable(L, 0, 5);
  sched_task_name(L, t);
  lua_setfield(L, -2, "name");
  lua_pushboolean(L, (t->flags & TF_TEST) != 0);
  lua_setfield(L, -2, "test");
  push_desc(L, t);
  lua_setfield(L, -2, "waiting");
  lua_pushnumber(L, t->wait_since);
  lua_setfield(L, -2, "since");
  char where[512];
  if (util_where(t->co, where, sizeof where)) {
    lua_pushstring(L, where);
    lua_setfield(L, -2, "where");
  }
  push_ud(L, t);
  lua_setfield(L, -2, "task");
}

/* Is t waiting on something of its own (not just on its children)? */
static bool waits_itself(struct task *t) { return t->wait && !t->wait->uninterruptible; }

static int collect_under(lua_State *L, struct task *t, int n, int limit) {
  for (struct task *c = t->child_head; c && n < limit; c = c->sib_next) {
    if (waits_itself(c)) {
      push_task_info(L, c);
      lua_rawseti(L, -2, ++n);
    }
    n = collect_under(L, c, n, limit);
  }
  return n;
}

/* _atom.tasks([under [, limit]]) -> list of {name=, waiting=, since=, where=,
 * test=, task=} for unfinished tasks that wait on something themselves
 * (failure forensics): all of them, or the descendants of task `under`, at
 * most `limit` (the list is newest first). Names and places cost, so callers
 * that note a few tasks say how many. */
static int l_tasks(lua_State *L) {
  struct task *under = lua_isnoneornil(L, 1) ? NULL : check_task(L, 1, "tasks");
  int limit = (int)luaL_optinteger(L, 2, INT32_MAX);
  lua_newtable(L);
  if (under) {
    collect_under(L, under, 0, limit);
    return 1;
  }
  int n = 0;
  for (struct task *t = S.all_head; t && n < limit; t = t->all_next)
    if (waits_itself(t)) {
      push_task_info(L, t);
      lua_rawseti(L, -2, ++n);
    }
  return 1;
}

static int l_set_trampoline(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  if (S.trampoline_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, S.trampoline_ref);
  S.trampoline_ref = luaL_ref(L, LUA_REGISTRYINDEX); /* lives as long as the state */
  return 0;
}

/* Forget the state's references when its lua_State closes (one state per
 * scenario file). */
void sched_reset(void);
void sched_reset(void) {
  S.trampoline_ref = LUA_NOREF;
  S.root = NULL;
  S.current = NULL;
  S.ready_head = S.ready_tail = NULL;
  S.all_head = NULL;
  S.live = 0;
}

static int l_in_task_thread(lua_State *L) {
  lua_pushboolean(L, sched_current(L) != NULL);
  return 1;
}

void sched_register(lua_State *L) {
  static const luaL_Reg task_methods[] = {
      {"cancel", l_task_cancel}, {"join", l_task_join}, {"status", l_task_status}, {NULL, NULL}};
  luaL_newmetatable(L, "atom.task");
  luaL_newlib(L, task_methods);
  lua_setfield(L, -2, "methods");
  lua_pushcfunction(L, l_task_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_task_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newmetatable(L, "atom.group");
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {
      {"spawn", l_spawn},
      {"result", l_result},
      {"error_of", l_error_of},
      {"group", l_group},
      {"group_next", l_group_next},
      {"group_cancel", l_group_cancel},
      {"checkpoint", l_checkpoint},
      {"sleep", l_sleep},
      {"now", l_now},
      {"current", l_current},
      {"task_name", l_task_name},
      {"rename", l_rename},
      {"in_test", l_in_test},
      {"is_owner", l_is_owner},
      {"owner", l_owner},
      {"extra", l_extra},
      {"end_children", l_end_children},
      {"begin_cleanup", l_begin_cleanup},
      {"raise_grace", l_raise_grace},
      {"set_default_grace", l_set_default_grace},
      {"deadline_expired", l_deadline_expired},
      {"park_token", l_park_token},
      {"park", l_park},
      {"unpark", l_unpark},
      {"run", l_run},
      {"cancel_root", l_cancel_root},
      {"stats", l_stats},
      {"tasks", l_tasks},
      {"set_trampoline", l_set_trampoline},
      {"in_task_thread", l_in_task_thread},
      {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}

/* }==== */

/* The run's grace has passed (--timeout or a signal): abandon what still runs. */
void sched_abandon_root(void);
void sched_abandon_root(void) {
  if (S.root && S.root->status < T_DONE) abandon(S.root);
}

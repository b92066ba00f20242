/* sched_lua.c — the scheduler's Lua bindings (`_atom.spawn`, groups, the
 * current task, park/unpark, stats): argument checks and stack work on top
 * of the mechanisms in sched.c, which owns every task state change. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom.h"
#include "task.h"

/* {==== Lua bindings: tasks ==== */

static void deadline_cb(struct timer *tm);

/* luaL_testudata with the metatable found by address (sched_task_mt). */
static void *test_udata(lua_State *L, int idx, const char *key) {
  void *p = lua_touserdata(L, idx);
  if (!p || !lua_getmetatable(L, idx)) return NULL;
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  if (!lua_rawequal(L, -1, -2)) p = NULL;
  lua_pop(L, 2);
  return p;
}

static struct task *check_task(lua_State *L, int idx, const char *fname) {
  struct task *t = test_udata(L, idx, &sched_task_mt);
  if (!t) util_typeerror(L, idx, fname, "task");
  return t;
}

/* The `_atom` functions have the group metatable as upvalue 1
 * (sched_register): no lookup on the hot path of spawn and group_next. */
static struct group *check_group(lua_State *L, int idx) {
  struct group *g = lua_touserdata(L, idx);
  if (g && lua_getmetatable(L, idx)) {
    bool ok = lua_rawequal(L, -1, lua_upvalueindex(1));
    lua_pop(L, 1);
    if (ok) return g;
  }
  luaL_typeerror(L, idx, "atom.group");
  return NULL;
}

static void grow_ring(lua_State *L, int gi, struct group *g);

/* _atom.spawn(group|nil, name|nil, flags, deadline|nil, fn, ...) -> task */
static int l_spawn(lua_State *L) {
  struct group *g = lua_isnil(L, 1) ? NULL : check_group(L, 1);
  unsigned flags = (unsigned)luaL_checkinteger(L, 3);
  double deadline = luaL_optnumber(L, 4, -1);
  luaL_checktype(L, 5, LUA_TFUNCTION);
  struct task *cur = sched_state.current, *parent = cur ? cur : sched_state.root;
  if (!parent) return util_error(L, "usage", "no atom run is active (use atom.run or a scenario)");
  int nargs = lua_gettop(L) - 5;
  struct task *t = sched_task_new(L, parent, nargs, flags); /* consumes fn and args */
  if (lua_isnil(L, 2)) { /* "<parent>/<n>" in a group, else "<parent>/go<n>", built lazily */
    sched_push_ud(L, parent);
    sched_push_name(L, -1, parent);
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
    /* Room for every member not yet popped, made now: a task's end
     * (sched.c) only fills its slot and allocates nothing, out of memory too. */
    if (g->spawned - g->anchored_out > g->ring) grow_ring(L, 1, g);
  }
  if (deadline >= 0) {
    t->deadline_secs = deadline;
    if (!t->cancel_pending) timer_start(&t->phase, deadline, deadline_cb); /* else: grace runs */
  }
  return 1;
}

/* Push the cancellation message of t's expired deadline: what its notes'
 * `on_deadline` function returns (whoever set the deadline knows what it
 * stands for; the runner notes what a test's tasks wait for there, since
 * the cancellation ends those waits), else "cancelled: timed out after Xs".
 * Called from a timer callback, so no task is running. */
static void push_deadline_message(lua_State *L, struct task *t) {
  int top = lua_gettop(L);
  sched_push_ud(L, t);
  if (lua_getiuservalue(L, -1, UV_EXTRA) == LUA_TTABLE &&
      lua_getfield(L, -1, "on_deadline") == LUA_TFUNCTION) {
    sched_push_ud(L, t);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK)
      fprintf(stderr, "atomlua: on_deadline: %s\n", lua_tostring(L, -1));
    else if (lua_type(L, -1) == LUA_TSTRING) {
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
      return;
    }
  }
  lua_settop(L, top);
  char buf[64];
  sched_format_secs(buf, sizeof buf, t->deadline_secs);
  lua_pushfstring(L, "cancelled: timed out after %ss", buf);
}

static void deadline_cb(struct timer *tm) {
  struct task *t = container_of(tm, struct task, phase);
  t->deadline_expired = true;
  push_deadline_message(sched_state.L, t);
  sched_push_reason(sched_state.L, lua_tostring(sched_state.L, -1));
  sched_cancel_tree(sched_state.L, t, lua_gettop(sched_state.L), false);
  lua_pop(sched_state.L, 2);
}

static int l_task_index(lua_State *L) {
  struct task *t = check_task(L, 1, "index");
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "name") == 0) {
    sched_push_name(L, 1, t);
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
  lua_pushstring(L, sched_status_names[t->status]);
  return 1;
}

static int l_task_cancel(lua_State *L) {
  struct task *t = check_task(L, 1, "cancel");
  if (t->status >= T_DONE) return 0;
  sched_push_reason(L, "cancelled: by t:cancel()");
  sched_cancel_tree(L, t, lua_gettop(L), false);
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
  if (t->status == T_DONE) return sched_push_outcome(L, 1, t);
  if (t->status == T_CANCELLED) {
    sched_push_name(L, 1, t);
    return util_error(L, "cancelled", "task %s was cancelled", lua_tostring(L, -1));
  }
  sched_push_outcome(L, 1, t);
  return lua_error(L);
}

static int join_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  struct task *me = sched_state.current;
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
  j->target = t;
  j->next = t->joiners;
  t->joiners = j;
  sched_push_name(L, 1, t);
  lua_pushfstring(L, "t:join() of %s", lua_tostring(L, -1));
  return sched_wait_with_k(L, &j->w, timeout, lua_gettop(L), join_k);
}

static int l_task_tostring(lua_State *L) {
  struct task *t = check_task(L, 1, "tostring");
  sched_push_name(L, 1, t);
  lua_pushfstring(L, "atom.task %s (%s)", lua_tostring(L, -1), sched_status_names[t->status]);
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
  sched_make_cancel_error(L, 1, t);
  lua_pushvalue(t->co, 1);
  lua_xmove(t->co, L, 1);
  return 1;
}

/* }==== */

/* {==== Lua bindings: groups (the structured waits of gather, race, map,
 * timeout, shield, tests) ==== */

/* Double the ring of the group at gi (task.h), keeping each anchored member
 * at its slot for the new size; every slot exists (false when free). */
static void grow_ring(lua_State *L, int gi, struct group *g) {
  lua_Integer old = g->ring, ring = old ? old * 2 : 8;
  lua_getiuservalue(L, gi, 1);
  lua_createtable(L, (int)ring, 0);
  for (lua_Integer i = 1; i <= ring; i++) {
    lua_pushboolean(L, 0);
    lua_rawseti(L, -2, i);
  }
  struct group bigger = *g;
  bigger.ring = ring;
  for (lua_Integer k = g->anchored_out + 1; k <= g->anchored_in; k++) {
    lua_rawgeti(L, -2, group_slot(g, k));
    lua_rawseti(L, -2, group_slot(&bigger, k));
  }
  lua_setiuservalue(L, gi, 1);
  lua_pop(L, 1);
  g->ring = ring;
}

static int l_group(lua_State *L) {
  struct group *g = lua_newuserdatauv(L, sizeof *g, 1);
  memset(g, 0, sizeof *g);
  lua_newtable(L); /* anchors the members: their pointers sit in done lists */
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_setmetatable(L, -2);
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

static int group_pop(lua_State *L, struct group *g, bool lazy) {
  struct task *t = g->done_head;
  if (!t) return 0;
  g->done_head = t->group_next;
  if (!g->done_head) g->done_tail = NULL;
  lua_pushinteger(L, t->group_index);
  lua_pushstring(L, sched_status_names[t->status]);
  /* Finished members are anchored in done order (sched.c): this is the first. */
  lua_getiuservalue(L, 1, 1);
  lua_Integer k = group_slot(g, ++g->anchored_out);
  lua_rawgeti(L, -1, k);
  lua_pushboolean(L, 0);
  lua_rawseti(L, -3, k);
  lua_remove(L, -2); /* [index, status, ud] */
  if (t->lazy_cancel && lazy) {
    lua_pushnil(L);
  } else if (sched_make_cancel_error(L, lua_gettop(L), t), lua_gettop(t->co) > 0) {
    lua_pushvalue(t->co, 1);
    lua_xmove(t->co, L, 1);
  } else {
    lua_pushnil(L);
  }
  lua_insert(L, -2); /* [index, status, value, ud] */
  return 4;
}

/* _atom.group_next(g [, lazy]) -> index, status, first result or error, task;
 * or nothing once no member runs. lazy: the caller ignores the errors of
 * cancelled members, so one not made yet stays unmade (nil). Waits
 * uninterruptibly: the caller's cancellation reaches the members instead
 * (invariant 6), and their ends come back here. */
static int l_group_next(lua_State *L) {
  struct group *g = check_group(L, 1);
  lua_settop(L, 2);
  int n = group_pop(L, g, lua_toboolean(L, 2));
  if (n || g->running == 0) return n;
  struct task *me = sched_current(L);
  if (!me) return util_error(L, "usage", "internal: group_next outside a task");
  struct wait *w = sched_own_wait(me, "children", true);
  w->cancel = group_wait_cancel;
  g->waiting = w;
  me->waiting_group = g;
  return sched_wait_with_k(L, w, -1, 0, group_next_k);
}

static int group_next_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  struct task *me = sched_state.current;
  struct group *g = check_group(L, 1);
  if (g->waiting == &me->own_wait) g->waiting = NULL;
  if (me->wake_error) {
    me->wake_error = false;
    return lua_error(L);
  }
  lua_settop(L, 2);
  return group_pop(L, g, lua_toboolean(L, 2));
}

static int l_group_cancel(lua_State *L) {
  check_group(L, 1);
  const char *msg = luaL_optstring(L, 2, "cancelled: a sibling task failed");
  sched_push_reason(L, msg);
  int reason = lua_gettop(L);
  /* Running members, in spawn order: they are the children of the group's
   * owner, the caller (or the root, as for l_spawn), newest first. */
  struct group *g = lua_touserdata(L, 1);
  struct task *me = sched_current(L);
  if (!me) me = sched_state.root;
  struct task *c = me ? me->child_head : NULL;
  while (c && c->sib_next) c = c->sib_next;
  for (struct task *prev; c; c = prev) {
    prev = c->sib_prev;
    if (c->group == g && c->status < T_DONE) sched_cancel_tree(L, c, reason, false);
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
  return sched_wait_with_k(L, sched_own_wait(t, "sleep", false), -1, 0, sched_wait_k);
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, util_now());
  return 1;
}

static struct task *current_or_root(void) {
  return sched_state.current ? sched_state.current : sched_state.root;
}

static int l_current(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return 0;
  sched_push_ud(L, t);
  return 1;
}

static int l_task_name(lua_State *L) {
  struct task *t = lua_isnoneornil(L, 1) ? current_or_root() : check_task(L, 1, "name");
  if (!t) return 0;
  if (lua_isnoneornil(L, 1)) {
    sched_task_name(L, t);
  } else {
    sched_push_name(L, 1, t);
  }
  return 1;
}

static int l_rename(lua_State *L) {
  if (lua_type(L, 1) != LUA_TSTRING) util_typeerror(L, 1, "name", "string");
  struct task *t = sched_current(L);
  if (!t) return util_error(L, "usage", "atom.name called outside a task");
  lua_settop(L, 1);
  sched_set_uv_top(L, t, UV_NAME);
  t->name_n = 0;
  return 0;
}

/* _atom.owner_scope() -> the name of the nearest owner scope below the root
 * (TF_OWNER: the runner's tests) among the current task and its ancestors. */
static int l_owner_scope(lua_State *L) {
  for (struct task *t = sched_state.current; t; t = t->parent)
    if (t->flags & TF_OWNER) {
      sched_task_name(L, t);
      return 1;
    }
  return 0;
}

/* _atom.owner() -> the task that owns what the current task spawns */
static int l_owner(lua_State *L) {
  struct task *t = sched_owner(sched_current(L));
  if (!t || t->status >= T_DONE) return 0;
  sched_push_ud(L, t);
  return 1;
}

static int l_is_owner(lua_State *L) {
  struct task *t = sched_current(L);
  lua_pushboolean(L, t && (t->flags & (TF_OWNER | TF_ROOT)));
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
    sched_push_ud(L, t);
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
  sched_push_ud(L, t);
  lua_getiuservalue(L, -1, UV_EXTRA);
  lua_remove(L, -2);
  lua_pushboolean(L, (t->flags & (TF_OWNER | TF_ROOT)) != 0);
  return 2;
}

static int end_children_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  sched_state.current->awaiting_children = false;
  return push_end_info(L, sched_state.current);
}

/* Trampoline step 2: cancel the unjoined children, wait until none is left.
 * Returns the task's notes table (or nil) and whether it is an owner. */
static int l_end_children(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return 0;
  t->returned = true;
  if (!t->child_head) return push_end_info(L, t);
  sched_push_reason(L, "cancelled: its parent task ended");
  int reason = lua_gettop(L);
  for (struct task *c = t->child_head; c; c = c->sib_next)
    if (!c->joiners) sched_cancel_tree(L, c, reason, true);
  lua_pop(L, 1);
  if (!t->child_head) return push_end_info(L, t);
  t->awaiting_children = true;
  return sched_wait_with_k(L, sched_own_wait(t, "children", true), -1, 0, end_children_k);
}

/* Trampoline step 3: cleanups run shielded; the grace starts now unless the
 * task was cancelled (then it started at the cancellation). */
static int l_begin_cleanup(lua_State *L) {
  struct task *t = sched_current(L);
  if (!t) return 0;
  t->in_cleanup = true;
  sched_arm_grace(t);
  return 0;
}

static int l_raise_grace(lua_State *L) {
  lua_Number secs = util_checknumber(L, 1, "defer");
  struct task *t = current_or_root();
  if (t && secs > t->grace_secs) {
    t->grace_secs = secs;
    if (t->grace_armed && timer_active(&t->phase) && !t->grace_abandon_phase) {
      timer_start(&t->phase, secs, sched_grace_cb); /* counted anew: simple and never shorter */
    }
  }
  return 0;
}

static int l_set_default_grace(lua_State *L) {
  sched_state.default_grace = luaL_checknumber(L, 1);
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
  sched_push_ud(L, t);
  lua_pushinteger(L, t->park_seq + 1);
  return 2;
}

/* _atom.park(fname, what, timeout) -> values given to unpark */
static int l_park(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  const char *what = luaL_checkstring(L, 2);
  double timeout = luaL_optnumber(L, 3, -1);
  struct task *t = sched_enter(L, fname);
  t->park_seq++;
  struct wait *w = sched_own_wait(t, "park", false);
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

/* {==== the rest of the bindings ==== */

static int l_cancel_root(lua_State *L) {
  sched_cancel_root(L, luaL_checkstring(L, 1));
  if (lua_toboolean(L, 2) && sched_state.root) { /* forced: shields too (end of the run) */
    sched_push_reason(L, luaL_checkstring(L, 1));
    sched_cancel_tree(L, sched_state.root, lua_gettop(L), true);
  }
  return 0;
}

static int l_stats(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, sched_state.live);
  lua_setfield(L, -2, "tasks");
  lua_pushinteger(L, sched_open_handles());
  lua_setfield(L, -2, "handles");
  lua_pushinteger(L, util_live_refs());
  lua_setfield(L, -2, "refs");
  lua_pushinteger(L, timer_count());
  lua_setfield(L, -2, "timers");
  return 1;
}

/* One entry of _atom.tasks for t (a task waiting on something). */
static void push_task_info(lua_State *L, struct task *t) {
  lua_createtable(L, 0, 5);
  sched_task_name(L, t);
  lua_setfield(L, -2, "name");
  lua_pushboolean(L, (t->flags & TF_OWNER) != 0);
  lua_setfield(L, -2, "owner");
  sched_push_desc(L, t);
  lua_setfield(L, -2, "waiting");
  lua_pushnumber(L, t->wait_since);
  lua_setfield(L, -2, "since");
  char where[512];
  if (util_where(t->co, where, sizeof where)) {
    lua_pushstring(L, where);
    lua_setfield(L, -2, "where");
  }
  sched_push_ud(L, t);
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
  for (struct task *t = sched_next_task(NULL); t && n < limit; t = sched_next_task(t))
    if (waits_itself(t)) {
      push_task_info(L, t);
      lua_rawseti(L, -2, ++n);
    }
  return 1;
}

/* _atom.set_trampoline(handler, finish): the message handler and the end
 * of every task's body (lua/atom/task.lua); they live as long as the state. */
static int l_set_trampoline(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_settop(L, 2);
  if (sched_state.finish_ref != LUA_NOREF) luaL_unref(L, LUA_REGISTRYINDEX, sched_state.finish_ref);
  if (sched_state.handler_ref != LUA_NOREF)
    luaL_unref(L, LUA_REGISTRYINDEX, sched_state.handler_ref);
  sched_state.finish_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  sched_state.handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

static int l_in_task_thread(lua_State *L) {
  lua_pushboolean(L, sched_current(L) != NULL);
  return 1;
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg sched_lib[] = {{"spawn", l_spawn},
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
                              {"owner_scope", l_owner_scope},
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
                              {"run", sched_run},
                              {"cancel_root", l_cancel_root},
                              {"stats", l_stats},
                              {"tasks", l_tasks},
                              {"set_trampoline", l_set_trampoline},
                              {"in_task_thread", l_in_task_thread},
                              {NULL, NULL}};

/* [_atom] on L: the metatables, and sched_lib again with its upvalue. */
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
  lua_rawsetp(L, LUA_REGISTRYINDEX, &sched_task_mt);
  luaL_newmetatable(L, "atom.group");
  luaL_setfuncs(L, sched_lib, 1); /* [_atom, group mt]: check_group's upvalue */
}

/* }==== */

/* work.c — work off the loop (SPEC §12): jobs on libuv's thread pool, each
 * with a Lua state of its own made on the loop thread, and atom.work(fn, ...)
 * built on them. The caller's task waits on the job like on any operation;
 * cancelling it sets the job's flag, which the worker's count hook (or a C
 * job's loop) turns into an early end; the job frees itself when its thread
 * returns, so nothing is left behind whoever stops first. */
#include "work.h"

#include <lualib.h>
#include <stdlib.h>
#include <string.h>

/* Instructions between two looks at the cancel flag: a few microseconds. */
#define WORK_HOOK_COUNT 1000
#define WORK_MAXDEPTH 200

static int live_jobs;

int work_live_jobs(void) { return live_jobs; }

/* {==== worker states ==== */

static void work_hook(lua_State *W, lua_Debug *ar) {
  (void)ar;
  struct job *j = *(struct job **)lua_getextraspace(W);
  if (j && work_cancelled(j)) luaL_error(W, "cancelled");
}

/* atom.<name> in a worker: everything but json waits on the loop or touches it. */
static int work_unavailable(lua_State *W) {
  return luaL_error(W, "atom.%s is not available in a worker (only atom.json is)",
                    lua_tostring(W, lua_upvalueindex(1)));
}

static int work_atom_index(lua_State *W) {
  lua_pushvalue(W, 2);
  lua_pushcclosure(W, work_unavailable, 1);
  return 1;
}

lua_State *work_state_new(struct job *j) {
  lua_State *W = luaL_newstate();
  if (!W) return NULL;
  *(struct job **)lua_getextraspace(W) = j;
  luaL_openlibs(W);
  lua_newtable(W); /* the C functions, as the runtime registers them */
  luaL_setfuncs(W, json_lib, 0);
  json_register(W);
  lua_createtable(W, 0, 2); /* atom */
  lua_createtable(W, 0, 4); /* atom.json */
  static const char *const names[][2] = {{"json_encode", "encode"},
                                         {"json_decode", "decode"},
                                         {"json_array", "array"},
                                         {"json_null", "null"}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    lua_getfield(W, -3, names[i][0]);
    lua_setfield(W, -2, names[i][1]);
  }
  lua_setfield(W, -2, "json");
  lua_createtable(W, 0, 1);
  lua_pushcfunction(W, work_atom_index);
  lua_setfield(W, -2, "__index");
  lua_setmetatable(W, -2);
  lua_pushvalue(W, -1);
  lua_setglobal(W, "atom");
  luaL_getsubtable(W, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_insert(W, -2);
  lua_setfield(W, -2, "atom");
  lua_pop(W, 2);
  lua_sethook(W, work_hook, LUA_MASKCOUNT, WORK_HOOK_COUNT);
  return W;
}

/* }==== */

/* {==== copying values between states ==== */

/* `seen` (in from) holds the tables on the current path: a cycle. */
static const char *copy_value(lua_State *from, int idx, lua_State *to, int seen, int depth) {
  if (!lua_checkstack(to, 4) || !lua_checkstack(from, 4)) return "too deeply nested values";
  switch (lua_type(from, idx)) {
    case LUA_TNIL:
      lua_pushnil(to);
      return NULL;
    case LUA_TBOOLEAN:
      lua_pushboolean(to, lua_toboolean(from, idx));
      return NULL;
    case LUA_TNUMBER:
      if (lua_isinteger(from, idx))
        lua_pushinteger(to, lua_tointeger(from, idx));
      else
        lua_pushnumber(to, lua_tonumber(from, idx));
      return NULL;
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(from, idx, &n);
      lua_pushlstring(to, s, n);
      return NULL;
    }
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(from, idx) == NULL) { /* atom.json.null */
        lua_pushlightuserdata(to, NULL);
        return NULL;
      }
      return "a userdata";
    case LUA_TTABLE:
      break;
    case LUA_TFUNCTION:
      return "a function";
    case LUA_TTHREAD:
      return "a coroutine";
    default:
      return "a userdata";
  }
  if (depth >= WORK_MAXDEPTH) return "too deeply nested tables";
  idx = lua_absindex(from, idx);
  lua_pushvalue(from, idx);
  if (lua_rawget(from, seen) != LUA_TNIL) {
    lua_pop(from, 1);
    return "a cycle";
  }
  lua_pop(from, 1);
  lua_pushvalue(from, idx);
  lua_pushboolean(from, 1);
  lua_rawset(from, seen);
  lua_createtable(to, (int)lua_rawlen(from, idx), 0);
  const char *err = NULL;
  lua_pushnil(from);
  while (lua_next(from, idx)) {
    if ((err = copy_value(from, -2, to, seen, depth + 1)) != NULL) {
      lua_pop(from, 2);
      break;
    }
    if ((err = copy_value(from, -1, to, seen, depth + 1)) != NULL) {
      lua_pop(to, 1);
      lua_pop(from, 2);
      break;
    }
    lua_rawset(to, -3);
    lua_pop(from, 1);
  }
  lua_pushvalue(from, idx);
  lua_pushnil(from);
  lua_rawset(from, seen);
  if (err) lua_pop(to, 1);
  return err;
}

const char *work_copy(lua_State *from, int idx, lua_State *to) {
  idx = lua_absindex(from, idx);
  if (lua_type(from, idx) != LUA_TTABLE) return copy_value(from, idx, to, 0, 0);
  lua_newtable(from);
  const char *err = copy_value(from, idx, to, lua_gettop(from), 0);
  lua_pop(from, 1);
  return err;
}

struct dump {
  char *p;
  size_t n, cap;
};

static int dump_writer(lua_State *L, const void *p, size_t sz, void *ud) {
  struct dump *d = ud;
  (void)L;
  if (d->n + sz > d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 1024;
    while (cap < d->n + sz) cap *= 2;
    char *q = realloc(d->p, cap);
    if (!q) return 1;
    d->p = q;
    d->cap = cap;
  }
  memcpy(d->p + d->n, p, sz);
  d->n += sz;
  return 0;
}

void work_dump(lua_State *L, int idx, const char *what) {
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TFUNCTION || lua_iscfunction(L, idx))
    util_error(L, "usage", "%s must be a Lua function (it is copied with string.dump)", what);
  const char *up;
  for (int i = 1; (up = lua_getupvalue(L, idx, i)) != NULL; i++) {
    lua_pop(L, 1);
    if (strcmp(up, "_ENV") != 0)
      util_error(L, "usage",
                 "%s has upvalue '%s': only _ENV is copied into a worker (pass values as "
                 "arguments)",
                 what, up);
  }
  struct dump d = {0};
  lua_pushvalue(L, idx);
  int st = lua_dump(L, dump_writer, &d, 0);
  lua_pop(L, 1);
  if (st != 0) {
    free(d.p);
    util_error(L, "io", "out of memory dumping %s", what);
  }
  lua_pushlstring(L, d.p, d.n); /* may raise: d.p would leak; it is small and rare */
  free(d.p);
}

bool work_load(lua_State *W, const char *dump, size_t n) {
  /* A dumped function's only upvalue, if any, is _ENV (work_dump checked),
   * and load sets the first upvalue to the worker's globals. */
  if (luaL_loadbufferx(W, dump, n, "=fn", "b") == LUA_OK) return true;
  lua_pop(W, 1);
  return false;
}

/* }==== */

/* {==== jobs ==== */

static void job_work_cb(uv_work_t *req) {
  struct job *j = container_of(req, struct job, req);
  if (!work_cancelled(j)) j->run(j);
}

static void job_free(struct job *j) {
  if (j->release) j->release(j);
  if (j->W) lua_close(j->W);
  live_jobs--;
  free(j);
}

static void job_after_cb(uv_work_t *req, int status) {
  struct job *j = container_of(req, struct job, req);
  lua_State *co = sched_thread(&j->w);
  if (co && status == 0) {
    int n = j->done(j, co);
    if (n < 0)
      sched_wake_error(&j->w);
    else
      sched_wake(&j->w, n);
  }
  job_free(j);
}

/* The caller stopped waiting (cancelled, abandoned): the job stops at its
 * next check and frees itself then; one not started yet never starts. */
static void job_cancel(struct wait *w) {
  struct job *j = container_of(w, struct job, w);
  atomic_store(&j->cancel, true);
  uv_cancel((uv_req_t *)&j->req);
}

int work_start(lua_State *L, struct task *t, struct job *j) {
  (void)t;
  j->w.cancel = job_cancel;
  live_jobs++;
  int rc = uv_queue_work(atom_loop, &j->req, job_work_cb, job_after_cb);
  if (rc != 0) {
    job_free(j);
    return util_error(L, "io", "cannot queue work: %s", uv_strerror(rc));
  }
  return sched_wait(L, &j->w, -1, 0);
}

/* }==== */

/* {==== atom.work(fn, ...) ==== */

struct lua_job {
  struct job base;
  int status; /* of the pcall in the worker */
};

/* In the worker: the error's message and traceback as {msg, traceback}. */
int work_msgh(lua_State *W) {
  const char *msg = luaL_tolstring(W, 1, NULL);
  lua_createtable(W, 2, 0);
  lua_pushvalue(W, -2);
  lua_rawseti(W, -2, 1);
  luaL_traceback(W, W, msg, 1);
  lua_rawseti(W, -2, 2);
  return 1;
}

static void lua_job_run(struct job *j) {
  struct lua_job *lj = (struct lua_job *)j;
  lua_State *W = j->W;
  int nargs = lua_gettop(W) - 1; /* [fn, args...] */
  lua_pushcfunction(W, work_msgh);
  lua_insert(W, 1);
  lj->status = lua_pcall(W, nargs, LUA_MULTRET, 1);
}

static int lua_job_done(struct job *j, lua_State *L) {
  struct lua_job *lj = (struct lua_job *)j;
  lua_State *W = j->W;
  int top = lua_gettop(W);
  if (lj->status != LUA_OK) {
    const char *msg = "error in a worker", *tb = NULL;
    if (lua_type(W, top) == LUA_TTABLE) {
      lua_rawgeti(W, top, 1);
      lua_rawgeti(W, top, 2);
      msg = lua_tostring(W, -2);
      tb = lua_tostring(W, -1);
    } else if (lua_type(W, top) == LUA_TSTRING) {
      msg = lua_tostring(W, top); /* a memory error: no handler ran */
    }
    util_push_error(L, "work", "%s", msg ? msg : "error in a worker");
    if (tb) {
      lua_getfield(L, -1, "traceback");
      lua_pushfstring(L, "%s\n(in the worker started by atom.work)\n%s", tb,
                      lua_isstring(L, -1) ? lua_tostring(L, -1) : "");
      lua_setfield(L, -3, "traceback");
      lua_pop(L, 1);
    }
    return -1;
  }
  int n = top - 1; /* above the handler */
  if (!lua_checkstack(L, n + 4)) {
    util_push_error(L, "usage", "atom.work: too many results (%d)", n);
    return -1;
  }
  for (int i = 2; i <= top; i++) {
    const char *err = work_copy(W, i, L);
    if (err) {
      lua_pop(L, i - 2);
      util_push_error(L, "usage",
                      "atom.work: result #%d contains %s (only nil, booleans, numbers, strings "
                      "and tables of those are copied)",
                      i - 1, err);
      return -1;
    }
  }
  return n;
}

/* atom.work(fn, ...) -> fn's results */
static int l_work(lua_State *L) {
  int nargs = lua_gettop(L);
  if (nargs < 1 || lua_type(L, 1) != LUA_TFUNCTION) return util_typeerror(L, 1, "work", "function");
  struct task *t = sched_enter(L, "work");
  work_dump(L, 1, "atom.work's function"); /* raises before anything is allocated */
  struct lua_job *lj = calloc(1, sizeof *lj);
  struct job *j = &lj->base;
  if (!lj || !(j->W = work_state_new(j))) {
    free(lj);
    return util_error(L, "io", "out of memory making a worker state");
  }
  size_t n;
  const char *dump = lua_tolstring(L, -1, &n);
  if (!work_load(j->W, dump, n)) {
    lua_close(j->W);
    free(lj);
    return util_error(L, "usage", "atom.work's function cannot be loaded in a worker");
  }
  for (int i = 2; i <= nargs; i++) {
    const char *err = work_copy(L, i, j->W);
    if (err) {
      lua_close(j->W);
      free(lj);
      return util_error(L, "usage",
                        "atom.work: argument #%d contains %s (only nil, booleans, numbers, "
                        "strings and tables of those are copied)",
                        i, err);
    }
  }
  lua_settop(L, 0);
  j->run = lua_job_run;
  j->done = lua_job_done;
  j->w.what = "atom.work";
  return work_start(L, t, j);
}

static int l_work_jobs(lua_State *L) {
  lua_pushinteger(L, live_jobs);
  return 1;
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg work_lib[] = {{"work", l_work}, {"work_jobs", l_work_jobs}, {NULL, NULL}};

/* }==== */

/* work.h — jobs on libuv's thread pool (work.c), shared with the
 * linearizability checker (lincheck.c). A job runs `run` on a worker thread
 * while the task that started it waits; `done` pushes its results on the
 * loop thread. A cancelled caller sets `cancelled` and forgets the job, which
 * frees itself when its thread returns. */
#ifndef ATOM_WORK_H
#define ATOM_WORK_H

#include <stdatomic.h>

#include "atom.h"

struct job {
  uv_work_t req;
  struct wait w;      /* the caller's wait; w.task is NULL once it stopped waiting */
  atomic_bool cancel; /* set on the loop thread, polled by run */
  lua_State *W;       /* the worker's own Lua state, or NULL */
  /* In the thread. */
  void (*run)(struct job *j);
  /* On the loop, only while the caller still waits: push the results on L
   * and return their count, or push an error and return -1. */
  int (*done)(struct job *j, lua_State *L);
  void (*release)(struct job *j); /* frees what the job owns (any thread state) */
};

/* A worker state: Lua's standard libraries, `atom.json`, and an `atom` whose
 * other fields raise usage; a count hook raises "cancelled" once j->cancel
 * is set. Made on the loop thread. */
lua_State *work_state_new(struct job *j);
/* Copy the value at idx of `from` onto `to` (nil, booleans, numbers, strings,
 * json.null and tables of those). On failure pushes nothing on `to` and
 * returns a static message naming what could not be copied. */
const char *work_copy(lua_State *from, int idx, lua_State *to);
/* Push string.dump of the Lua function at idx of L; raises usage for C
 * functions and upvalues other than _ENV (naming `what` and the upvalue). */
void work_dump(lua_State *L, int idx, const char *what);
/* Load such a dump onto W as a function (false on failure, nothing pushed). */
bool work_load(lua_State *W, const char *dump, size_t n);
/* Queue j (malloc'd by the caller, w.what set) and suspend the current task
 * until it is done. Use as `return work_start(L, t, j);`. */
int work_start(lua_State *L, struct task *t, struct job *j);
/* True when j should stop (for C loops: poll every few thousand steps). */
static inline bool work_cancelled(struct job *j) {
  return atomic_load_explicit(&j->cancel, memory_order_relaxed);
}
/* A message handler for pcalls in a worker: {message, traceback}. */
int work_msgh(lua_State *W);
int work_live_jobs(void);

#endif

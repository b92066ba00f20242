/* task.h — the scheduler's private parts, shared by sched.c (tasks, waits,
 * cancellation, the resume loop) and sched_lua.c (its Lua bindings). The
 * rest of the host uses atom.h only. */
#ifndef ATOM_TASK_H
#define ATOM_TASK_H

#include "atom.h"

/* Uservalue slots of a task userdata. */
enum { UV_THREAD = 1, UV_NAME, UV_DESC, UV_CANCEL, UV_EXTRA, UV_GROUP, UV_COUNT };

enum status { T_NEW, T_RUNNING, T_DONE, T_FAILED, T_CANCELLED };
extern const char *const sched_status_names[]; /* by enum status */

/* TF_OWNER: an owner scope (the runner marks tests so); the root is one too. */
enum { TF_SHIELD = 1, TF_OWNER = 2, TF_ROOT = 4 };

struct group;

struct task {
  lua_State *co;
  int ref;                /* to the userdata while unfinished (invariant 3) */
  enum status status : 8; /* bit-fields: 10,000 tasks, 10,000 records */
  unsigned flags : 8;
  bool queued : 1, cancel_pending : 1, hard : 1, in_cleanup : 1, deadline_expired : 1,
      abandoned : 1, started : 1;
  bool wake_error : 1, has_override : 1, awaiting_children : 1;
  bool returned : 1; /* its function has returned or raised (trampoline step 2 began) */
  bool grace_armed : 1;
  bool has_desc : 1; /* UV_DESC holds the current wait's description */
  bool grace_abandon_phase : 1;
  bool name_go : 1;
  bool plain_wait : 1;  /* its wait's continuation is sched_wait_k: it only returns or raises */
  bool lazy_cancel : 1; /* ended unresumed (end_unresumed): its error is not made yet */
  struct task *parent, *child_head, *sib_prev, *sib_next;
  struct task *ready_next;
  int wake_nres;    /* values queued for the next resume */
  int resumed_nres; /* values the current resume brought (for continuations) */
  struct wait *wait;
  double wait_timeout, wait_since;
  struct timer wait_timer;
  struct timer phase; /* the deadline (atom.timeout, tests) until cancelled, then the grace */
  double deadline_secs, grace_secs;
  struct group *group;         /* structured wait this task belongs to */
  struct group *waiting_group; /* the group whose members it awaits in group_next */
  struct task *group_next;     /* in the group's finished list */
  int group_index;             /* 1-based spawn order within the group */
  int park_seq;                /* token of the current park, for stale unparks */
  struct wait own_wait;        /* sleep and park need no memory of their own */
  struct joiner *joiners;      /* tasks waiting in t:join() */
  int go_count;
  int name_n;          /* lazy name: UV_NAME holds the parent's, add "/<n>" or "/go<n>" */
  struct owned *owned; /* what subsystems registered on this owner (sched_own) */
};

struct group {
  int running, spawned;
  /* Finished members not yet popped are anchored, in finish order, in a ring
   * of slots (the group's uservalue table, keys 1..ring): the k-th to finish
   * sits at group_slot(g, k). Sliding integer keys would make Lua rehash the
   * table on every insert. */
  lua_Integer anchored_in, anchored_out; /* ends of the queue of finished members */
  lua_Integer ring;                      /* a power of two >= spawned - anchored_out */
  struct task *done_head, *done_tail;
  struct wait *waiting; /* the owner's wait in group_next, or NULL */
};

static inline lua_Integer group_slot(const struct group *g, lua_Integer k) {
  return ((k - 1) & (g->ring - 1)) + 1;
}

struct joiner {
  struct wait w;
  struct task *target;
  struct joiner *next;
};

struct sched_state {
  lua_State *L;         /* the state callbacks build values on */
  struct task *current; /* the task inside lua_resume, or NULL */
  struct task *root;
  struct task *ready_head, *ready_tail;
  int live;
  int handler_ref, finish_ref; /* lua/atom/task.lua's, for task_body */
  uv_idle_t idle;
  uv_check_t check;
  bool handles_ready;
  bool stop_draining;
  bool in_drain;
  double default_grace; /* --grace */
};
extern struct sched_state sched_state;

/* Internals used by the bindings (sched.c). */
void sched_push_ud(lua_State *L, struct task *t);              /* an unfinished task's userdata */
void sched_push_name(lua_State *L, int ud, struct task *t);    /* builds a lazy name once */
void sched_set_uv_top(lua_State *L, struct task *t, int slot); /* [value] -> [] */
void sched_push_reason(lua_State *L, const char *message);
void sched_format_secs(char *buf, size_t n, double s);
struct wait *sched_own_wait(struct task *t, const char *what, bool uninterruptible);
int sched_wait_k(lua_State *L, int status, lua_KContext ctx);
int sched_wait_with_k(lua_State *L, struct wait *w, double timeout, int desc_idx, lua_KFunction k);
struct task *sched_task_new(lua_State *L, struct task *parent, int nargs, unsigned flags);
void sched_cancel_tree(lua_State *L, struct task *t, int reason, bool force);
void sched_arm_grace(struct task *t);
void sched_grace_cb(struct timer *tm);
void sched_abandon(struct task *t);
int sched_push_outcome(lua_State *L, int ud, struct task *t);       /* ud: t's userdata */
void sched_make_cancel_error(lua_State *L, int ud, struct task *t); /* lazy_cancel: on first read */
int sched_run(lua_State *L);
void sched_push_desc(lua_State *L, struct task *t); /* what t waits for */
struct task *sched_next_task(struct task *t);       /* preorder walk of unfinished tasks */
/* Registry key (lua_rawgetp) of the "atom.task" metatable: found by address,
 * not by name, when a task is made. */
extern const char sched_task_mt;

#endif

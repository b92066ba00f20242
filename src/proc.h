/* proc.h — what the process files share: the mechanisms, each testable
 * without Lua — spawn.c (vfork+exec), reaper.c (the no-orphan guardian
 * process), outbuf.c (line buffer, output tails, log writer) — and the
 * process record of proc.c (lifecycle) and proclua.c (Lua bindings, waits). */
#ifndef ATOM_PROC_H
#define ATOM_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* {==== spawn.c ==== */

#define SPAWN_DEFAULT_PATH "/usr/bin:/bin"

struct spawn_req {
  const char *path;          /* absolute or cwd-relative executable (from spawn_lookup) */
  char *const *argv;         /* NULL-terminated */
  char *const *envp;         /* NULL-terminated */
  const char *cwd;           /* the child's working directory, or NULL */
  int fd_in, fd_out, fd_err; /* become the child's 0, 1, 2; -1 keeps the parent's */
  int netns;                 /* > 0: a network namespace fd the child joins (a host) */
  int cgroup_fd;             /* a cgroup.procs (fd > 2) the child joins before exec; 0: none */
  int cgroup_dir;            /* that cgroup's directory (> 2): the child is born in it (clone3) */
};

/* Resolve prog as execvp would, in the parent: a name with '/' is made
 * absolute against the cwd, else searched on path_env (NULL: the default).
 * Returns 0 with the path in out, or -ENOENT / -EACCES / -errno. */
int spawn_lookup(const char *prog, const char *path_env, char *out, size_t outsz);
/* Start a child that leads its own process group, dies with its parent
 * (PDEATHSIG), has default signal dispositions and an empty mask, and runs
 * req. Returns 0 with the pid and a pidfd (O_CLOEXEC; -1 if the kernel has
 * none), or -errno with *stage naming the failed step ("exec", "chdir"...);
 * a failed child is already reaped. */
int spawn_start(const struct spawn_req *req, pid_t *pid, int *pidfd, const char **stage);
/* True while a child can be born in its cgroup (spawn_req.cgroup_dir) and
 * needs no cgroup.procs. */
bool spawn_into_cgroup(void);

/* }==== */

/* {==== reaper.c ==== */

#ifndef PIDFD_SIGNAL_PROCESS_GROUP
#define PIDFD_SIGNAL_PROCESS_GROUP (1U << 2) /* Linux 6.9 */
#endif

/* Tell the reaper process (started on first use) that group pgid exists,
 * with its leader's pidfd (borrowed: valid until reaper_remove; -1 if none),
 * or is gone. A new group is sent at once; a gone one too, or, where pidfds
 * signal groups, with the next message (reaper.c). When atomlua dies, however
 * it dies, the reaper SIGKILLs every group it still knows and the run's cgroup. */
extern int reaper_pidfd_groups; /* pidfds signal groups (Linux 6.9): 1, not: -1, unknown: 0 */
void reaper_start(void);        /* idempotent; also makes the run cgroup, which it removes */
void reaper_add(pid_t pgid, int pidfd);
void reaper_remove(pid_t pgid);
/* Signal the group led by pidfd's process (never a reused group id) and that
 * leader itself; kill(-pgid) when there is no pidfd or the kernel is < 6.9. */
void reaper_signal_group(pid_t pgid, int pidfd, int sig);
void reaper_stop_all(bool stop); /* Ctrl-Z: async-signal-safe */
/* The reaper's pidfd (-1: none yet) and its generation (changes when a new
 * reaper starts): readable when the reaper died; then call reaper_died. */
int reaper_watch_fd(unsigned *gen);
void reaper_died(void);
pid_t reaper_pid(void); /* 0 before the first add */

/* }==== */

/* {==== cgroup.c ==== */

/* A cgroup v2 of its own for each process, under one run cgroup, where a
 * writable cgroup v2 exists (else every call degrades: -1, false). */
bool cgroup_available(void); /* sets up the run cgroup at the first call */
/* An empty cgroup p<id> (a new one, or one a finished process left empty):
 * returns its directory fd and sets *id; with want_procs, its cgroup.procs
 * opened for the child to join (spawn_req.cgroup_fd; the caller closes it),
 * else *procs_fd = -1. */
int cgroup_new(unsigned *id, int *procs_fd, bool want_procs);
void cgroup_warm(int n); /* up to n empty cgroups ready in the pool */
bool cgroup_populated(int dfd);
/* SIGKILL: cgroup.kill; else each member gets sig, then `then` if not 0. */
void cgroup_signal(int dfd, int sig, int then);
/* Done with p<id>: kept for another process when `reuse` and it is empty
 * (up to a bound), else dfd closed and the cgroup removed (the reaper
 * removes what is still populated). A cgroup that was killed must not be
 * reused: Linux kills a child that clone3 puts into a cgroup whose
 * cgroup.kill count differs from its parent's (6.x). */
void cgroup_remove(unsigned id, int dfd, bool reuse, bool empty); /* empty: found so already */
int cgroup_run_fd(void);
int cgroup_base_fd(void);
const char *cgroup_run_name(void);
/* The reaper's last act: cgroup.kill the run cgroup, remove it. */
void cgroup_kill_run(int basefd, int runfd, const char *name);

/* }==== */

/* {==== outbuf.c ==== */

#define OUT_LINE_MAX (64 * 1024)    /* longer lines are cut into pieces */
#define OUT_LINES_MAX (1024 * 1024) /* bytes of lines kept in memory */

struct lblock;

/* A growing ring of the last `max` raw bytes of one stream. */
struct tail {
  char *buf;
  size_t cap, max, start, len;
};

struct partial { /* the line being assembled on one stream */
  char *buf;
  size_t len;
  bool cut; /* the previous piece was cut at OUT_LINE_MAX */
};

struct outbuf {
  bool keep_lines;
  struct lblock *head, *tail_blk;
  size_t lines_bytes;     /* memory the line blocks account for */
  uint64_t first, next;   /* buffered lines are [first, next) */
  struct partial part[2]; /* 0: stdout, 1: stderr */
  struct tail tail[2];
  int logfd;     /* -1: no log (yet) */
  char *logpath; /* a log opened at its first write (outbuf_log_create), or NULL */
  char *logbuf;
  size_t loglen;
  int log_errno; /* first write error, the log is off afterwards */
};

void outbuf_init(struct outbuf *o, bool keep_lines, size_t tail_max, int logfd);
void outbuf_free(struct outbuf *o); /* does not close logfd */
/* Bytes read from stream s (0 stdout, 1 stderr), in arrival order. */
void outbuf_feed(struct outbuf *o, int s, const char *data, size_t n);
/* EOF on stream s: a last line without newline is delivered. */
void outbuf_eof(struct outbuf *o, int s);
void outbuf_flush(struct outbuf *o);                               /* write the log buffer out */
void outbuf_log_raw(struct outbuf *o, const char *data, size_t n); /* header lines */
/* A lazily opened log (logpath) that was never written: create it empty now
 * (a process's log file exists once it is over). Frees logpath. */
void outbuf_log_create(struct outbuf *o);
/* Line idx (first <= idx < next): its bytes (valid until the next feed), or NULL. */
const char *outbuf_line(struct outbuf *o, uint64_t idx, size_t *len, int *stream);
/* Copy stream s's tail into dst (room for o->tail[s].len bytes). */
/* exec.log is shared by the execs of a scenario file: opened once (with
 * *shared set false when another file's log is still in use, so the caller
 * got an fd of its own), counted per user, closed when idle (the run
 * directory may go). */
int outbuf_shared_log_open(const char *path, bool *shared);
void outbuf_shared_log_unref(void);
void outbuf_shared_log_close_idle(void);
void outbuf_shared_log_reset(void); /* the Lua state is closing: close it whatever uses it */
void outbuf_tail_copy(const struct outbuf *o, int s, char *dst);

/* }==== */

/* {==== proc.c / proclua.c (the C tests of the mechanisms define
 * PROC_MECH_ONLY: they build without Lua) ==== */
#ifndef PROC_MECH_ONLY
#include "atom.h"

enum { STDIN_NULL, STDIN_PIPE, STDIN_DATA };
enum { OUT_CAPTURE, OUT_INHERIT, OUT_NULL, OUT_FD }; /* OUT_FD: stdout out_fd, stderr inherited */
enum { W_LINE, W_EXIT, W_STOP, W_WRITE };

struct proc_opts {
  const char *path, *cwd, *name;
  char *const *argv, *const *envp;
  int stdin_mode, output, logfd;
  int out_fd; /* with OUT_FD: the child's stdout (rawpipe.c's io.popen) */
  int netns;  /* > 0: run inside this network namespace (atom.net.host) */
  int err_fd; /* with OUT_FD: > 0 gives the child's stderr too (a host's transport) */
  bool critical, keep_lines;
  double grace;
  size_t tail_max;
};

struct proc;

/* One task waiting on a process; memory from sched_wait_alloc. */
struct pwait {
  struct wait w;
  struct proc *p; /* NULL once unlinked */
  struct pwait *next, *prev;
  int kind;
  uint64_t pos;        /* W_LINE: wait until this line exists */
  bool full;           /* W_EXIT: and until the output has ended */
  bool kill_on_cancel; /* W_STOP, exec: a cancelled wait kills and reaps */
  bool done;           /* W_WRITE: finished before the task waited */
  int err;
};

struct wreq { /* queued bytes for stdin */
  struct wreq *next;
  struct pwait *pw; /* the writer, NULL when it gave up waiting */
  size_t len, off;
  char data[];
};

struct rpipe { /* out[0] stdout, out[1] stderr */
  int fd;      /* -1 once closed */
};

struct ownstop; /* proclua.c: the owner's wait in proc_stop_owned */

struct proc {
  pid_t pid; /* also the process group id */
  int pidfd; /* open until released: it names the group even after the reap */
  int cgfd;  /* its cgroup's directory (cgroup.c), or -1 */
  unsigned cgid;
  int ref; /* strong ref to the userdata until released */
  char *name;
  int status; /* waitpid status once reaped */
  double grace, exited_at;
  bool critical;
  bool reaped, exit_done, out_ended, group_done, caused;
  bool stopping, stop_done, sigkilled, released, ud_gone;
  bool in_inited, in_polling, in_close_after;
  bool log_shared;   /* ob.logfd belongs to proclua.c's shared exec.log */
  bool exit_watched; /* pidfd in the epoll set until the exit is seen */
  bool swept;        /* its cgroup held more than its group: reparented orphans to reap */
  bool cg_killed;    /* cgroup.kill was written: the cgroup is not used again */
  int handles;       /* uv handles not yet closed (only in_h) */
  struct rpipe out[2];
  int in_fd;
  uv_poll_t in_h;
  struct wreq *in_head, *in_tail;
  struct timer eof_timer, grace_timer, group_timer, tick;
  struct timer replay; /* remote: what came before the handle existed, delivered next turn */
  struct outbuf ob;
  struct pwait *waiters;
  struct owned own;                   /* in its owner scope's list (sched_own); own.owner */
  struct proc *gnext, *gprev;         /* every unreleased process */
  void (*on_stopped)(struct proc *p); /* once, when a stop has finished (proclua.c) */
  struct ownstop *os;                 /* the owner's stop waiting for it (proclua.c) */
  int os_idx;
  struct proc *free_next; /* freed after the current event batch */
  /* A process on a host (remote.c): pid is the agent's, signals and stdin go
   * through the link, output and the exit come from it. */
  struct link *link;
  uint32_t rid;       /* its id on the link */
  bool rout[2];       /* its stdout / stderr still open on the host */
  bool rgone;         /* its group has no live member on the host */
  struct proc *rnext; /* in the link's list */
};

extern lua_State *proc_L; /* a thread of the current Lua state, for callbacks */

void proc_prepare(void); /* the reaper and the subreaper role, once */
struct proc *proc_start(const struct proc_opts *o, int *err, const char **stage);
void proc_push_status(lua_State *L, struct proc *p); /* code, signal name */
void proc_push_signame(lua_State *L, int sig);
void proc_wait_link(struct proc *p, struct pwait *pw);
void proc_wait_unlink(struct pwait *pw);
void proc_stop_begin(struct proc *p, double grace);
void proc_kill_and_reap(struct proc *p);
void proc_owner_link(struct proc *p, struct task *owner);
void proc_owner_unlink(struct proc *p);
struct proc *proc_of_owned(struct owned *o); /* NULL: o is not a process */
void proc_abandon(struct proc *p);
void proc_release_ud(struct proc *p); /* the userdata is collected */
void proc_kill_all(void);
/* Signal p's group (through its pidfd), its leader even if it left the
 * group, and everything in its cgroup. */
void proc_signal(struct proc *p, int sig);
/* atomlua (the CLI) is a child subreaper: descendants orphaned by a daemon's
 * double fork are reparented to it. Reap (and with kill, SIGKILL first)
 * every child of ours that is none of: a process of proc.c, the reaper, a
 * luv process, a member of our own process group (io.popen, os.execute).
 * Children one pid at a time, never waitpid(-1). Anything else that starts
 * children outside proc.c must keep them in our group or list them here. */
void proc_reap_orphans(bool kill);
struct proc *proc_live_head(void);
struct wreq *proc_stdin_queue(struct proc *p, const char *data, size_t n);
void proc_stdin_flush(struct proc *p);
void proc_stdin_close(struct proc *p);   /* procin.c, like the two above */
void proc_maybe_release(struct proc *p); /* release or free p once it is over */

/* A process on a host (remote.c drives these): */
#define REMOTE_STDIN_OPEN 0x7fffffff /* in_fd of a remote process with stdin = "pipe" */
struct proc *proc_start_remote(const struct proc_opts *o, pid_t pid);
void proc_remote_feed(struct proc *p, int s, const char *data, size_t n);
void proc_remote_eof(struct proc *p, int s);
void proc_remote_exit(struct proc *p, int status);
void proc_remote_gone(struct proc *p);
/* remote.c */
void remote_signal(struct proc *p, int sig);
void remote_stdin(struct proc *p, const char *data, size_t n); /* n == 0 with data NULL: close */
void remote_detach(struct proc *p);
/* Tie p to the link at stack index idx under id rid; replays what came for it. */
void remote_attach(lua_State *L, int idx, struct proc *p, uint32_t rid);

#endif
/* }==== */

#endif

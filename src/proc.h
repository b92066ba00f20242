/* proc.h — the process mechanisms under proc.c, each testable without Lua:
 * spawn.c (vfork+exec), reaper.c (the no-orphan guardian process) and
 * outbuf.c (line buffer, output tails, log writer). */
#ifndef ATOM_PROC_H
#define ATOM_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* {==== spawn.c ==== */

#define SPAWN_DEFAULT_PATH "/usr/bin:/bin"

struct spawn_req {
  const char *path;    /* absolute or cwd-relative executable (from spawn_lookup) */
  char *const *argv;   /* NULL-terminated */
  char *const *envp;   /* NULL-terminated */
  const char *cwd;     /* the child's working directory, or NULL */
  int fd_in, fd_out, fd_err; /* become the child's 0, 1, 2; -1 keeps the parent's */
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

/* }==== */

/* {==== reaper.c ==== */

/* Tell the reaper process (started on first use) that group pgid exists /
 * is gone. When atomlua dies, however it dies, the reaper SIGKILLs every
 * group it still knows. */
void reaper_add(pid_t pgid);
void reaper_remove(pid_t pgid);
pid_t reaper_pid(void); /* 0 before the first add */

/* }==== */

/* {==== outbuf.c ==== */

#define OUT_LINE_MAX (64 * 1024)   /* longer lines are cut into pieces */
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
  int logfd;              /* -1: no log */
  char *logbuf;
  size_t loglen;
  int log_errno;          /* first write error, the log is off afterwards */
};

void outbuf_init(struct outbuf *o, bool keep_lines, size_t tail_max, int logfd);
void outbuf_free(struct outbuf *o); /* does not close logfd */
/* Bytes read from stream s (0 stdout, 1 stderr), in arrival order. */
void outbuf_feed(struct outbuf *o, int s, const char *data, size_t n);
/* EOF on stream s: a last line without newline is delivered. */
void outbuf_eof(struct outbuf *o, int s);
void outbuf_flush(struct outbuf *o); /* write the log buffer out */
void outbuf_log_raw(struct outbuf *o, const char *data, size_t n); /* header lines */
/* Line idx (first <= idx < next): its bytes (valid until the next feed), or NULL. */
const char *outbuf_line(struct outbuf *o, uint64_t idx, size_t *len, int *stream);
/* Copy stream s's tail into dst (room for o->tail[s].len bytes). */
void outbuf_tail_copy(const struct outbuf *o, int s, char *dst);

/* }==== */

#endif

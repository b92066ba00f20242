/* outbuf.c — what becomes of a child's output: split into lines (SPEC §4:
 * CR before LF removed, 64 KiB pieces, last line at EOF, bytes unchanged),
 * the last 1 MiB of lines kept in blocks, the last bytes of each stream kept
 * raw for p:output() and exec, and every byte written to the log file through
 * one bounded buffer. Waiting on lines is proc.c's job. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proc.h"

#define BLOCK_DATA (OUT_LINE_MAX + 64)
#define LOGBUF (64 * 1024)
#define REC_HDR 5 /* uint32 length + stream byte */

/* Lines live in blocks of packed records; whole blocks are dropped from the
 * front, so memory stays near OUT_LINES_MAX however short the lines are. */
struct lblock {
  struct lblock *next;
  uint64_t first; /* index of its first line */
  uint32_t n, used, capoffs;
  uint32_t *offs; /* record offsets, for random access by index */
  char data[BLOCK_DATA];
};

static void *xrealloc(void *p, size_t n) {
  void *q = realloc(p, n);
  if (!q) abort(); /* out of memory: nothing sensible to do */
  return q;
}

void outbuf_init(struct outbuf *o, bool keep_lines, size_t tail_max, int logfd) {
  memset(o, 0, sizeof *o);
  o->keep_lines = keep_lines;
  o->first = o->next = 1;
  o->tail[0].max = o->tail[1].max = tail_max;
  o->logfd = logfd;
}

void outbuf_free(struct outbuf *o) {
  outbuf_flush(o);
  for (struct lblock *b = o->head, *nb; b; b = nb) {
    nb = b->next;
    free(b->offs);
    free(b);
  }
  o->head = o->tail_blk = NULL;
  for (int s = 0; s < 2; s++) {
    free(o->part[s].buf);
    free(o->tail[s].buf);
    o->part[s].buf = o->tail[s].buf = NULL;
  }
  free(o->logbuf);
  o->logbuf = NULL;
  free(o->logpath);
  o->logpath = NULL;
}

/* {==== log ==== */

/* Logs that failed to be written (full disk, I/O error): the run's exit
 * status is then at least 3 (main.c reads this). */
int outbuf_log_errors;

/* Say once per log which file failed and why; the log is off afterwards. */
static void log_failed(struct outbuf *o, int err) {
  o->log_errno = err;
  outbuf_log_errors++;
  char link[64], path[4096];
  snprintf(link, sizeof link, "/proc/self/fd/%d", o->logfd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  path[n > 0 ? n : 0] = '\0';
  fprintf(stderr, "atomlua: cannot write process log %s: %s\n", n > 0 ? path : "?", strerror(err));
}

/* A process log (not exec.log) is created at its first write, not at the
 * spawn: creating a file costs more than the rest of a spawn (70 us here). */
static bool log_open(struct outbuf *o) {
  if (o->logfd >= 0 || !o->logpath || o->log_errno) return o->logfd >= 0 && !o->log_errno;
  o->logfd = open(o->logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (o->logfd < 0) {
    o->log_errno = errno;
    outbuf_log_errors++;
    fprintf(stderr, "atomlua: cannot open process log %s: %s\n", o->logpath, strerror(errno));
  }
  free(o->logpath);
  o->logpath = NULL;
  return o->logfd >= 0;
}

void outbuf_log_create(struct outbuf *o) {
  if (o->logpath && !o->log_errno) log_open(o);
  free(o->logpath);
  o->logpath = NULL;
}

static void log_write(struct outbuf *o, const char *p, size_t n) {
  if (n > 0 && !log_open(o)) return;
  while (n > 0 && o->logfd >= 0 && !o->log_errno) {
    ssize_t k = write(o->logfd, p, n);
    if (k < 0) {
      if (errno == EINTR) continue;
      log_failed(o, errno);
      return;
    }
    p += k;
    n -= (size_t)k;
  }
}

void outbuf_flush(struct outbuf *o) {
  if (o->loglen) log_write(o, o->logbuf, o->loglen);
  o->loglen = 0;
}

static void log_append(struct outbuf *o, const char *p, size_t n) {
  if ((o->logfd < 0 && !o->logpath) || o->log_errno) return;
  if (o->loglen + n > LOGBUF) outbuf_flush(o);
  if (n >= LOGBUF) {
    log_write(o, p, n);
    return;
  }
  if (!o->logbuf) o->logbuf = xrealloc(NULL, LOGBUF);
  memcpy(o->logbuf + o->loglen, p, n);
  o->loglen += n;
}

void outbuf_log_raw(struct outbuf *o, const char *data, size_t n) {
  outbuf_flush(o);
  log_write(o, data, n); /* no buffer: most execs log nothing else */
}

/* }==== */

/* {==== raw tails ==== */

static void tail_append(struct tail *t, const char *p, size_t n) {
  if (t->max == 0) return;
  if (n >= t->max) { /* only the last max bytes survive */
    p += n - t->max;
    n = t->max;
  }
  if (t->len + n > t->cap && t->cap < t->max) { /* grow, unrolling the ring */
    size_t cap = t->cap ? t->cap : 4096;
    while (cap < t->len + n && cap < t->max) cap *= 2;
    if (cap > t->max) cap = t->max;
    char *nb = xrealloc(NULL, cap);
    size_t first = t->cap - t->start < t->len ? t->cap - t->start : t->len;
    if (t->len) {
      memcpy(nb, t->buf + t->start, first);
      memcpy(nb + first, t->buf, t->len - first);
    }
    free(t->buf);
    t->buf = nb;
    t->cap = cap;
    t->start = 0;
  }
  while (n > 0) { /* append at the end of the ring, overwriting the oldest */
    size_t end = (t->start + t->len) % t->cap;
    size_t room = t->cap - end;
    size_t k = n < room ? n : room;
    memcpy(t->buf + end, p, k);
    p += k;
    n -= k;
    t->len += k;
    if (t->len > t->cap) {
      t->start = (t->start + (t->len - t->cap)) % t->cap;
      t->len = t->cap;
    }
  }
}

void outbuf_tail_copy(const struct outbuf *o, int s, char *dst) {
  const struct tail *t = &o->tail[s];
  if (!t->len) return;
  size_t first = t->cap - t->start < t->len ? t->cap - t->start : t->len;
  memcpy(dst, t->buf + t->start, first);
  memcpy(dst + first, t->buf, t->len - first);
}

/* }==== */

/* {==== lines ==== */

static void drop_head(struct outbuf *o) {
  struct lblock *b = o->head;
  o->head = b->next;
  if (!o->head) o->tail_blk = NULL;
  o->lines_bytes -= sizeof *b + b->capoffs * sizeof(uint32_t);
  o->first = b->first + b->n;
  free(b->offs);
  free(b);
}

static void store_line(struct outbuf *o, int s, const char *p, size_t n) {
  uint64_t idx = o->next++;
  if (!o->keep_lines) {
    o->first = o->next;
    return;
  }
  struct lblock *b = o->tail_blk;
  if (!b || b->used + REC_HDR + n > BLOCK_DATA) {
    b = xrealloc(NULL, sizeof *b);
    b->next = NULL;
    b->first = idx;
    b->n = b->used = b->capoffs = 0;
    b->offs = NULL;
    if (o->tail_blk)
      o->tail_blk->next = b;
    else
      o->head = b;
    o->tail_blk = b;
    o->lines_bytes += sizeof *b;
    while (o->lines_bytes > OUT_LINES_MAX && o->head != b) drop_head(o);
  }
  if (b->n == b->capoffs) {
    uint32_t cap = b->capoffs ? 2 * b->capoffs : 256;
    b->offs = xrealloc(b->offs, cap * sizeof *b->offs);
    o->lines_bytes += (cap - b->capoffs) * sizeof *b->offs;
    b->capoffs = cap;
    while (o->lines_bytes > OUT_LINES_MAX && o->head != b) drop_head(o);
  }
  b->offs[b->n++] = b->used;
  uint32_t len = (uint32_t)n;
  memcpy(b->data + b->used, &len, 4);
  b->data[b->used + 4] = (char)s;
  memcpy(b->data + b->used + REC_HDR, p, n);
  b->used += REC_HDR + len;
}

const char *outbuf_line(struct outbuf *o, uint64_t idx, size_t *len, int *stream) {
  if (idx < o->first || idx >= o->next) return NULL;
  struct lblock *b = o->head;
  while (b && idx >= b->first + b->n) b = b->next;
  if (!b) return NULL;
  const char *rec = b->data + b->offs[idx - b->first];
  uint32_t n;
  memcpy(&n, rec, 4);
  *len = n;
  *stream = rec[4];
  return rec + REC_HDR;
}

/* A line or piece of stream s is complete: `raw` is its bytes without the
 * newline. The log gets them as they came (plus the newline). */
static void emit(struct outbuf *o, int s, const char *raw, size_t n, bool newline) {
  struct partial *pt = &o->part[s];
  log_append(o, raw, n);
  if (newline) log_append(o, "\n", 1);
  if (newline && n == 0 && pt->cut) { /* the newline right after a 64 KiB cut */
    pt->cut = false;
    return;
  }
  pt->cut = !newline;
  size_t len = n;
  if (newline && len > 0 && raw[len - 1] == '\r') len--;
  store_line(o, s, raw, len);
}

void outbuf_feed(struct outbuf *o, int s, const char *data, size_t n) {
  tail_append(&o->tail[s], data, n);
  struct partial *pt = &o->part[s];
  while (n > 0) {
    size_t room = OUT_LINE_MAX - pt->len;
    /* A newline within room+1 bytes ends a line that fits in one piece. */
    const char *nl = memchr(data, '\n', n < room + 1 ? n : room + 1);
    if (nl) {
      size_t seg = (size_t)(nl - data);
      if (pt->len == 0) {
        emit(o, s, data, seg, true);
      } else {
        memcpy(pt->buf + pt->len, data, seg);
        emit(o, s, pt->buf, pt->len + seg, true);
        pt->len = 0;
      }
      data += seg + 1;
      n -= seg + 1;
    } else if (n <= room) {
      if (!pt->buf) pt->buf = xrealloc(NULL, OUT_LINE_MAX);
      memcpy(pt->buf + pt->len, data, n);
      pt->len += n;
      n = 0;
    } else {
      if (pt->len == 0) {
        emit(o, s, data, room, false);
      } else {
        memcpy(pt->buf + pt->len, data, room);
        emit(o, s, pt->buf, OUT_LINE_MAX, false);
        pt->len = 0;
      }
      data += room;
      n -= room;
    }
  }
}

void outbuf_eof(struct outbuf *o, int s) {
  struct partial *pt = &o->part[s];
  if (pt->len) emit(o, s, pt->buf, pt->len, false);
  pt->len = 0;
  pt->cut = false;
  outbuf_flush(o);
}

/* }==== */

/* {==== exec.log, shared by the execs of a scenario file ==== */

static struct {
  char *path;
  int fd, users;
} shared_log = {NULL, -1, 0};

void outbuf_shared_log_close_idle(void) {
  if (shared_log.users > 0) return;
  if (shared_log.fd >= 0) close(shared_log.fd);
  free(shared_log.path);
  shared_log.path = NULL;
  shared_log.fd = -1;
}

void outbuf_shared_log_unref(void) { shared_log.users--; }

void outbuf_shared_log_reset(void) {
  shared_log.users = 0;
  outbuf_shared_log_close_idle();
}

int outbuf_shared_log_open(const char *path, bool *shared) {
  if (!shared_log.path || strcmp(shared_log.path, path) != 0) {
    if (shared_log.users > 0) { /* another file while execs still log: its own fd */
      *shared = false;
      return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    }
    outbuf_shared_log_close_idle();
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    shared_log.path = strdup(path);
    shared_log.fd = fd;
  }
  shared_log.users++;
  return shared_log.fd;
}

/* }==== */

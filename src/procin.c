/* procin.c — a process's stdin when it is a pipe: queued writes that go
 * out as the pipe takes them (p:write returns then), close after the queue
 * drains, and no SIGPIPE when the reader is gone (module mode does not
 * ignore it). The rest of the process's life is in proc.c. */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "atom.h"
#include "proc.h"

/* Our handles keep data == NULL (luv's uv.walk); the owner is found by
 * container_of, and closing counts down p->handles. */
static void in_close_cb(uv_handle_t *h) {
  struct proc *p = container_of((uv_poll_t *)h, struct proc, in_h);
  p->handles--;
  proc_maybe_release(p);
}

/* {==== stdin ==== */

/* write(2) on a pipe whose reader is gone raises SIGPIPE; module mode does
 * not ignore it, so block it around the write and swallow the pending one. */
static ssize_t write_nosigpipe(int fd, const char *buf, size_t n) {
  sigset_t pipe_set, old, pending;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  sigpending(&pending);
  bool was_pending = sigismember(&pending, SIGPIPE);
  ssize_t k = write(fd, buf, n);
  int e = errno;
  if (k < 0 && e == EPIPE && !was_pending) {
    struct timespec zero = {0, 0};
    sigtimedwait(&pipe_set, NULL, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  errno = e;
  return k;
}

static void wreq_done(struct proc *p, struct wreq *r, int err) {
  p->in_head = r->next;
  if (!p->in_head) p->in_tail = NULL;
  if (r->pw) {
    struct pwait *pw = r->pw;
    r->pw = NULL;
    pw->done = true;
    pw->err = err;
    proc_wait_unlink(pw);
    lua_State *T = sched_thread(&pw->w);
    if (T && err) {
      util_push_error(T, "io", "write to %s's stdin failed: %s", p->name, strerror(err));
      lua_pushstring(T, err == EPIPE ? "reset" : "eof");
      lua_setfield(T, -2, "cause");
      sched_wake_error(&pw->w);
    } else if (T) {
      sched_wake(&pw->w, 0);
    }
  }
  free(r);
}

void proc_stdin_close(struct proc *p) {
  while (p->in_head) wreq_done(p, p->in_head, EPIPE);
  if (p->in_fd < 0) return;
  if (p->rid) { /* on a host: the agent closes it after what it queued */
    p->in_fd = -1;
    remote_stdin(p, NULL, 0);
    return;
  }
  if (p->in_polling) {
    uv_poll_stop(&p->in_h);
    uv_close((uv_handle_t *)&p->in_h, in_close_cb);
    p->in_polling = false;
  }
  close(p->in_fd);
  p->in_fd = -1;
}

static void in_cb(uv_poll_t *h, int status, int events);

/* Write queued data until the pipe is full; then poll for room. */
void proc_stdin_flush(struct proc *p) {
  if (p->rid) {           /* on a host: taken once the transport's stdin queue has it */
    if (!p->link) return; /* not attached yet (remote_attach flushes) or lost */
    while (p->in_head && p->in_fd >= 0) {
      struct wreq *r = p->in_head;
      remote_stdin(p, r->data + r->off, r->len - r->off);
      r->off = r->len;
      wreq_done(p, r, 0);
    }
    if (!p->in_head && p->in_close_after) proc_stdin_close(p);
    return;
  }
  while (p->in_head && p->in_fd >= 0) {
    struct wreq *r = p->in_head;
    ssize_t k = r->len > r->off ? write_nosigpipe(p->in_fd, r->data + r->off, r->len - r->off) : 0;
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!p->in_polling) {
        if (!p->in_inited) {
          uv_poll_init(atom_loop, &p->in_h, p->in_fd);
          p->in_inited = true;
          p->handles++;
        }
        uv_poll_start(&p->in_h, UV_WRITABLE, in_cb);
        p->in_polling = true;
      }
      return;
    }
    if (k < 0) {
      int e = errno;
      while (p->in_head) wreq_done(p, p->in_head, e);
      proc_stdin_close(p);
      return;
    }
    r->off += (size_t)k;
    if (r->off == r->len) wreq_done(p, r, 0);
  }
  if (p->in_polling) {
    uv_poll_stop(&p->in_h);
    p->in_polling = false;
  }
  if (!p->in_head && p->in_close_after) proc_stdin_close(p);
}

static void in_cb(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  struct proc *p = container_of(h, struct proc, in_h);
  p->in_polling = true;
  proc_stdin_flush(p);
}

/* Queue n bytes for stdin; returns the request (done when it is no longer
 * p->in_head's chain, i.e. after proc_stdin_flush, if r->off == r->len). */
struct wreq *proc_stdin_queue(struct proc *p, const char *data, size_t n) {
  struct wreq *r = malloc(sizeof *r + n);
  if (!r) return NULL;
  r->next = NULL;
  r->pw = NULL;
  r->len = n;
  r->off = 0;
  memcpy(r->data, data, n);
  if (p->in_tail)
    p->in_tail->next = r;
  else
    p->in_head = r;
  p->in_tail = r;
  return r;
}

/* }==== */

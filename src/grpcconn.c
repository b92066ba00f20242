/* grpcconn.c — which connection a gRPC call goes on (grpc.c makes the
 * calls): one multiplexed HTTP/2 connection per target, libcurl 7.88's h2c
 * reuse bug worked around, and cancellation that reaches the server at once.
 * Keeps the list of running calls and, per h2c target, the connection state
 * and the calls waiting for it. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "grpc.h"

/* {==== connections: one per target, and libcurl 7.88's h2c reuse bug ==== */

/* Debian 12's libcurl 7.88.1 breaks an h2c connection when a transfer asking
 * for prior knowledge reuses it: it stacks a second HTTP/2 layer on the
 * connection ("Error in the HTTP2 framing layer"; curl issue #10634, fixed in
 * 8.0). So, per h2c target, only the transfer that opens the connection asks
 * for prior knowledge; the others wait until it is connected and then ask for
 * CURL_HTTP_VERSION_2TLS, which reuses the HTTP/2 connection as is. Had the
 * connection gone meanwhile, such a transfer would open an HTTP/1.1 one (no
 * gRPC server answers that, so nothing ran): it is restarted once as an
 * opener. curlm tells us when a connection's socket closes. */
enum { TS_NONE, TS_OPENING, TS_READY };
struct target {
  struct target *next;
  char *key; /* scheme://host:port/ */
  int state;
  int lport; /* the connection's local port, when READY */
  struct call *opener;
  struct call *qhead, *qtail;
};
static struct target *targets;
static struct call *running_head; /* calls added to curl */
static struct timer release_timer;
static bool release_timer_ready;

struct target *grpcconn_target(const char *url) {
  const char *p = strstr(url, "://");
  p = p ? strchr(p + 3, '/') : NULL;
  size_t n = p ? (size_t)(p - url) + 1 : strlen(url);
  for (struct target *t = targets; t; t = t->next)
    if (strlen(t->key) == n && memcmp(t->key, url, n) == 0) return t;
  struct target *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->key = strndup(url, n);
  if (!t->key) {
    free(t);
    return NULL;
  }
  t->next = targets;
  targets = t;
  return t;
}

static void target_dequeue(struct target *t, struct call *c) {
  for (struct call **pp = &t->qhead; *pp; pp = &(*pp)->qnext)
    if (*pp == c) {
      *pp = c->qnext;
      if (t->qtail == c) {
        t->qtail = NULL;
        for (struct call *q = t->qhead; q; q = q->qnext) t->qtail = q;
      }
      c->qnext = NULL;
      c->queued = false;
      return;
    }
}

static void running_link(struct call *c) {
  c->rprev = NULL;
  c->rnext = running_head;
  if (running_head) running_head->rprev = c;
  running_head = c;
}

void grpcconn_unlink(struct call *c) {
  if (c->rprev)
    c->rprev->rnext = c->rnext;
  else if (running_head == c)
    running_head = c->rnext;
  if (c->rnext) c->rnext->rprev = c->rprev;
  c->rprev = c->rnext = NULL;
}

/* {==== nudging stalled transfers ==== */

/* libcurl 7.88 can leave the last bytes it took from a request in its
 * HTTP/2 output buffer, report the upload as done and stop watching the
 * socket for writing: the server waits for the rest, we wait for the answer
 * (curl PR #11330). A call that got no callback for a while is nudged: a
 * change of its pause state makes curl flush the connection's buffer. With
 * backoff (50 ms doubling to 1 s), so an idle stream costs almost nothing. */
#define NUDGE_FIRST 50000000ull
#define NUDGE_MAX 1000000000ull
static struct timer nudge_timer;
static bool nudge_ready;

static void nudge_cb(struct timer *tm) {
  (void)tm;
  uint64_t now = uv_now(atom_loop) * 1000000ull;
  bool any = false;
  for (struct call *r = running_head; r; r = r->rnext) {
    if (r->recv_paused) continue; /* waits for the script, not for the server */
    any = true;
    if (now - r->last_io < r->nudge_after) continue;
    if (r->send_paused) {
      r->send_paused = false; /* read_cb pauses it again when nothing is queued */
      cu.easy_pause(r->easy, CURLPAUSE_CONT);
    } else {
      cu.easy_pause(r->easy, CURLPAUSE_SEND);
      cu.easy_pause(r->easy, CURLPAUSE_CONT);
    }
    r->last_io = now;
    r->nudge_after = r->nudge_after * 2 < NUDGE_MAX ? r->nudge_after * 2 : NUDGE_MAX;
  }
  if (any) timer_start(&nudge_timer, NUDGE_FIRST / 1e9, nudge_cb);
}

static void nudge_arm(struct call *c) {
  c->last_io = uv_now(atom_loop) * 1000000ull;
  c->nudge_after = NUDGE_FIRST;
  if (!nudge_ready) {
    timer_init(&nudge_timer);
    nudge_ready = true;
  }
  if (!timer_active(&nudge_timer)) timer_start(&nudge_timer, NUDGE_FIRST / 1e9, nudge_cb);
}

/* }==== */

/* Add c to curl, or queue it behind its target's opener. */
CURLMcode grpcconn_start(struct call *c) {
  struct target *t = c->tg;
  long version = CURL_HTTP_VERSION_2TLS;
  c->reuse = false;
  if (t) {
    if (t->state == TS_OPENING) {
      c->queued = true;
      c->qnext = NULL;
      if (t->qtail)
        t->qtail->qnext = c;
      else
        t->qhead = c;
      t->qtail = c;
      return CURLM_OK;
    }
    if (t->state == TS_NONE) {
      t->state = TS_OPENING;
      t->opener = c;
      version = CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
    } else {
      c->reuse = true;
    }
  }
  cu.easy_setopt(c->easy, CURLOPT_HTTP_VERSION, version);
  CURLMcode mc = curlm_add(c->easy, &c->x);
  if (mc == CURLM_OK) {
    c->running = true;
    running_link(c);
    nudge_arm(c);
  } else if (t && t->opener == c) {
    t->opener = NULL;
    t->state = TS_NONE;
  }
  return mc;
}

/* Start what waits on t (all of them once it is READY, else one new opener). */
static void target_release(struct target *t) {
  while (t->qhead && t->state != TS_OPENING) {
    struct call *c = t->qhead;
    target_dequeue(t, c);
    if (grpcconn_start(c) != CURLM_OK) {
      c->ended = true;
      grpc_done_cb(&c->x, CURLE_FAILED_INIT);
    }
  }
}

static void release_cb(struct timer *tm) {
  (void)tm;
  for (struct target *t = targets; t; t = t->next)
    if (t->state != TS_OPENING) target_release(t);
}

/* Release on the next loop turn: curl forbids adding transfers from inside
 * its callbacks. */
static void release_soon(void) {
  if (!release_timer_ready) {
    timer_init(&release_timer);
    release_timer_ready = true;
  }
  timer_start(&release_timer, 0, release_cb);
}

/* The opener is about to send its request on its new connection (curl has
 * connected; the HTTP/2 layer goes on in the same step): the queued calls
 * start on the next loop turn. */
int grpcconn_prereq_cb(void *ud, char *ip, char *lip, int port, int lport) {
  (void)ip, (void)lip, (void)port;
  struct call *c = ud;
  struct target *t = c->tg;
  c->lport = lport; /* which connection it runs on (CURLINFO_ACTIVESOCKET is not set yet) */
  if (t && t->opener == c) {
    t->opener = NULL;
    t->state = TS_READY;
    t->lport = lport;
    if (t->qhead) release_soon();
  }
  return CURL_PREREQFUNC_OK;
}

/* The call left curl or its queue for good: a target it was opening for is
 * free again. */
void grpcconn_forget(struct call *c) {
  struct target *t = c->tg;
  if (!t) return;
  if (c->queued) target_dequeue(t, c);
  if (t->opener == c) {
    t->opener = NULL;
    t->state = TS_NONE;
    target_release(t); /* the next one opens */
  }
}

/* curlm: a socket closed. */
void grpcconn_sock_closed_cb(curl_socket_t fd) {
  struct sockaddr_storage a;
  socklen_t n = sizeof a;
  if (getsockname(fd, (struct sockaddr *)&a, &n) != 0) return;
  int port = a.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&a)->sin6_port)
                                     : ntohs(((struct sockaddr_in *)&a)->sin_port);
  for (struct target *t = targets; t; t = t->next)
    if (t->state == TS_READY && t->lport == port) {
      t->state = TS_NONE;
      t->lport = 0;
      if (t->qhead) release_soon();
    }
}

/* A reusing call that had to open a connection of its own got HTTP/1.1:
 * nothing reached a gRPC server, so it may start again as an opener. */
bool grpcconn_restart(struct call *c) {
  if (!c->reuse || c->retried || c->sent_any || !c->tg) return false;
  long nconn = 0, version = 0;
  cu.easy_getinfo(c->easy, CURLINFO_NUM_CONNECTS, &nconn);
  cu.easy_getinfo(c->easy, CURLINFO_HTTP_VERSION, &version);
  if (nconn <= 0 || version == CURL_HTTP_VERSION_2_0) return false;
  c->retried = true;
  c->running = false;
  grpcconn_unlink(c);
  if (c->tg->state == TS_READY) {
    c->tg->state = TS_NONE;
    c->tg->lport = 0;
  }
  grpc_q_clear(c);
  c->rbuf.len = c->rbuf.off = c->head.len = c->trail.len = 0;
  c->status = -1;
  c->fail_cause = NULL;
  c->errbuf[0] = '\0';
  return grpcconn_start(c) == CURLM_OK;
}

void grpcconn_free(void) {
  while (targets) {
    struct target *t = targets;
    targets = t->next;
    free(t->key);
    free(t);
  }
  if (release_timer_ready) timer_stop(&release_timer);
  if (nudge_ready) timer_stop(&nudge_timer);
}

/* Cancel a call: reset its HTTP/2 stream so that the server sees it at
 * once. libcurl 7.88 queues the RST_STREAM of a removed transfer in the
 * connection's output buffer and sends it with the connection's next frame
 * only. So: when the call was the connection's last user, the connection is
 * closed instead (FORBID_REUSE); otherwise another transfer on it has its
 * receive pause toggled, which makes curl flush the buffer. */
void grpcconn_abort(struct call *c) {
  if (!c->running) {
    grpcconn_forget(c);
    grpc_call_put(c);
    return;
  }
  int lport = c->lport;
  cu.easy_setopt(c->easy, CURLOPT_FORBID_REUSE, 1L);
  curlm_remove(c->easy);
  grpcconn_unlink(c);
  grpcconn_forget(c);
  grpc_call_put(c);
  if (!lport) return;
  for (struct call *r = running_head; r; r = r->rnext) {
    if (r->lport != lport) continue;
    int keep = r->recv_paused ? CURLPAUSE_RECV : 0;
    cu.easy_pause(r->easy, keep ^ CURLPAUSE_RECV);
    cu.easy_pause(r->easy, keep);
    break;
  }
}

/* }==== */

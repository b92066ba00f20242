/* floor_w5: W5's floor in C — libcurl's multi interface driven by a libuv
 * loop (curl's multi-uv.c example), K easy handles reused for keep-alive,
 * each sending the JSON-RPC POST and checking the response body. Prints
 * requests per second. Usage: floor_w5 URL [N [K]]. The harness builds it
 * with cc -lcurl -luv. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define BODY "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"}"

struct req {
  CURL *easy;
  char buf[512];
  size_t len;
};

struct sock {
  uv_poll_t poll;
  curl_socket_t fd;
};

static uv_loop_t *loop;
static CURLM *multi;
static uv_timer_t timer;
static int todo, done, failed;

static size_t write_cb(char *p, size_t size, size_t nmemb, void *ud) {
  struct req *r = ud;
  size_t n = size * nmemb;
  if (r->len + n < sizeof r->buf) {
    memcpy(r->buf + r->len, p, n);
    r->len += n;
  }
  return n;
}

static void start(struct req *r) {
  r->len = 0;
  todo--;
  curl_multi_add_handle(multi, r->easy);
}

static void check_done(void) {
  CURLMsg *m;
  int left;
  while ((m = curl_multi_info_read(multi, &left))) {
    if (m->msg != CURLMSG_DONE) continue;
    struct req *r;
    long code = 0;
    curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
    curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &code);
    r->buf[r->len] = 0;
    if (m->data.result != CURLE_OK || code != 200 || !strstr(r->buf, "\"result\":\"ok\"")) failed++;
    done++;
    curl_multi_remove_handle(multi, m->easy_handle);
    if (todo > 0) start(r);
  }
}

static void poll_cb(uv_poll_t *p, int status, int events) {
  struct sock *s = p->data;
  int flags = status < 0 ? CURL_CSELECT_ERR
                         : ((events & UV_READABLE) ? CURL_CSELECT_IN : 0) |
                               ((events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0);
  int running;
  curl_multi_socket_action(multi, s->fd, flags, &running);
  check_done();
}

static void timer_cb(uv_timer_t *t) {
  (void)t;
  int running;
  curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done();
}

static int timer_fn(CURLM *m, long ms, void *ud) {
  (void)m, (void)ud;
  if (ms < 0)
    uv_timer_stop(&timer);
  else
    uv_timer_start(&timer, timer_cb, (uint64_t)ms, 0);
  return 0;
}

static void close_cb(uv_handle_t *h) { free(h->data); }

static int socket_fn(CURL *e, curl_socket_t fd, int what, void *ud, void *sp) {
  (void)e, (void)ud;
  struct sock *s = sp;
  if (what == CURL_POLL_REMOVE) {
    if (s) {
      uv_poll_stop(&s->poll);
      uv_close((uv_handle_t *)&s->poll, close_cb);
      curl_multi_assign(multi, fd, NULL);
    }
    return 0;
  }
  if (!s) {
    s = malloc(sizeof *s);
    s->fd = fd;
    uv_poll_init_socket(loop, &s->poll, fd);
    s->poll.data = s;
    curl_multi_assign(multi, fd, s);
  }
  int ev = ((what & CURL_POLL_IN) ? UV_READABLE : 0) | ((what & CURL_POLL_OUT) ? UV_WRITABLE : 0);
  uv_poll_start(&s->poll, ev, poll_cb);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: floor_w5 URL [N [K]]\n");
    return 2;
  }
  int n = argc > 2 ? atoi(argv[2]) : 20000, k = argc > 3 ? atoi(argv[3]) : 64;
  curl_global_init(CURL_GLOBAL_DEFAULT);
  loop = uv_default_loop();
  uv_timer_init(loop, &timer);
  multi = curl_multi_init();
  curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_fn);
  curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_fn);
  struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
  struct req *reqs = calloc((size_t)k, sizeof *reqs);
  todo = n;
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < k && todo > 0; i++) {
    struct req *r = &reqs[i];
    r->easy = curl_easy_init();
    curl_easy_setopt(r->easy, CURLOPT_URL, argv[1]);
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, BODY);
    curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(r->easy, CURLOPT_PRIVATE, r);
    start(r);
  }
  uv_run(loop, UV_RUN_DEFAULT);
  double dt = (double)(uv_hrtime() - t0) / 1e9;
  if (done != n || failed) {
    fprintf(stderr, "floor_w5: %d of %d done, %d failed\n", done, n, failed);
    return 1;
  }
  printf("RESULT req_per_s=%.1f n=%d wall_s=%.4f\n", n / dt, n, dt);
  for (int i = 0; i < k; i++) curl_easy_cleanup(reqs[i].easy);
  curl_multi_cleanup(multi);
  curl_slist_free_all(hdr);
  uv_close((uv_handle_t *)&timer, NULL);
  uv_run(loop, UV_RUN_DEFAULT);
  curl_global_cleanup();
  return 0;
}

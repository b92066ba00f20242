/* floor_w2: W2's floor in C on libuv. N timers of 60 s plus one of 50 ms;
 * when the 50 ms one fires, every other timer is closed (cancelled) and the
 * time from the failure until the last close callback ran is printed.
 * Usage: floor_w2 [N]. The harness builds it with cc -luv. */
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

static uv_timer_t *timers;
static int n, open_left;
static uint64_t t_fail, t_done;

static void close_cb(uv_handle_t *h) {
  (void)h;
  if (--open_left == 0) t_done = uv_hrtime();
}

static void sleep_cb(uv_timer_t *t) { (void)t; }

static void fail_cb(uv_timer_t *t) {
  t_fail = uv_hrtime();
  uv_close((uv_handle_t *)t, NULL);
  for (int i = 0; i < n; i++) uv_close((uv_handle_t *)&timers[i], close_cb);
}

int main(int argc, char **argv) {
  n = argc > 1 ? atoi(argv[1]) : 10000;
  uv_loop_t *loop = uv_default_loop();
  timers = calloc((size_t)n, sizeof *timers);
  uv_timer_t fail;
  for (int i = 0; i < n; i++) {
    uv_timer_init(loop, &timers[i]);
    uv_timer_start(&timers[i], sleep_cb, 60000, 0);
  }
  uv_timer_init(loop, &fail);
  uv_timer_start(&fail, fail_cb, 50, 0);
  open_left = n;
  uv_run(loop, UV_RUN_DEFAULT);
  if (open_left != 0) return 1;
  printf("RESULT cancel_ms=%.3f n=%d\n", (double)(t_done - t_fail) / 1e6, n);
  uv_loop_close(loop);
  free(timers);
  return 0;
}

/* timer_test.c — the timers (src/timer.c) without Lua: order of firing
 * (deadline, then start order), stop from anywhere in the heap, restart,
 * never early, callbacks that start and stop timers, 10,000 timers, and the
 * loop closing clean after timer_shutdown. tools/run-tests.sh builds it alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "timer.c"

uv_loop_t *atom_loop;

static int watch_starts; /* timer.c starts the watch thread with its first timer */
void watch_start(void) { watch_starts++; }

#define ASSERT(c)                                                               \
  do {                                                                          \
    if (!(c)) {                                                                 \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                                  \
    }                                                                           \
  } while (0)
#define ASSERT_EQ(a, b) ASSERT((long long)(a) == (long long)(b))

struct probe {
  struct timer t;
  int id;
  uint64_t started, fired;
};

static int order[64], norder;

static void record_cb(struct timer *tm) {
  struct probe *p = container_of(tm, struct probe, t);
  p->fired = uv_hrtime();
  order[norder++] = p->id;
}

static void start(struct probe *p, int id, double secs) {
  p->id = id;
  p->started = uv_hrtime();
  timer_start(&p->t, secs, record_cb);
}

/* Deadlines fire in order; equal deadlines in start order; never early. */
static void test_order(void) {
  struct probe p[6];
  for (int i = 0; i < 6; i++) timer_init(&p[i].t);
  norder = 0;
  start(&p[0], 0, 0.030);
  start(&p[1], 1, 0.010);
  start(&p[2], 2, 0.020);
  start(&p[3], 3, 0.010);
  start(&p[4], 4, 0);
  start(&p[5], 5, 0.0001); /* rounded up to 1 ms */
  ASSERT_EQ(timer_count(), 6);
  ASSERT(timer_next_due() == p[4].t.bucket->due);
  uv_run(atom_loop, UV_RUN_DEFAULT);
  int want[] = {4, 5, 1, 3, 2, 0};
  ASSERT_EQ(norder, 6);
  for (int i = 0; i < 6; i++) ASSERT_EQ(order[i], want[i]);
  double secs[] = {0.030, 0.010, 0.020, 0.010, 0, 0.001};
  for (int i = 0; i < 6; i++)
    ASSERT(p[i].fired - p[i].started + 1000 >= (uint64_t)(secs[i] * 1e9));
  ASSERT_EQ(timer_count(), 0);
  ASSERT(timer_next_due() == UINT64_MAX);
}

/* Stopping the first, a middle and the last entry keeps the heap in order;
 * stop is idempotent; a restart moves the deadline. */
static void test_stop_restart(void) {
  struct probe p[8];
  for (int i = 0; i < 8; i++) timer_init(&p[i].t);
  norder = 0;
  for (int i = 0; i < 8; i++) start(&p[i], i, 0.002 * (8 - i));
  timer_stop(&p[7].t); /* the earliest */
  timer_stop(&p[3].t); /* a middle one */
  timer_stop(&p[0].t); /* the latest */
  timer_stop(&p[0].t);
  ASSERT(!timer_active(&p[0].t));
  ASSERT_EQ(timer_count(), 5);
  start(&p[6], 6, 0.050); /* restarted: now the last */
  ASSERT_EQ(timer_count(), 5);
  uv_run(atom_loop, UV_RUN_DEFAULT);
  int want[] = {5, 4, 2, 1, 6};
  ASSERT_EQ(norder, 5);
  for (int i = 0; i < 5; i++) ASSERT_EQ(order[i], want[i]);
}

/* A callback may stop a timer due in the same round and start new ones. */
static struct probe chain[3];
static void chain_cb(struct timer *tm) {
  struct probe *p = container_of(tm, struct probe, t);
  order[norder++] = p->id;
  if (p->id == 0) {
    timer_stop(&chain[1].t); /* due at the same time: must not fire */
    chain[2].id = 2;
    timer_start(&chain[2].t, 0.001, chain_cb);
  }
}

static void test_callbacks(void) {
  for (int i = 0; i < 3; i++) timer_init(&chain[i].t);
  norder = 0;
  chain[0].id = 0;
  chain[1].id = 1;
  timer_start(&chain[0].t, 0.005, chain_cb);
  timer_start(&chain[1].t, 0.005, chain_cb);
  uv_run(atom_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(norder, 2);
  ASSERT_EQ(order[0], 0);
  ASSERT_EQ(order[1], 2);
}

/* 10,000 timers with pseudo-random deadlines fire in deadline order, equal
 * deadlines in start order, never early. */
struct mprobe {
  struct timer t;
  uint64_t due, seq;
};
static uint64_t last_due, last_seq;
static int fired_many;
static void many_cb(struct timer *tm) {
  struct mprobe *p = container_of(tm, struct mprobe, t);
  ASSERT(p->due > last_due || (p->due == last_due && p->seq > last_seq));
  ASSERT(uv_hrtime() >= p->due);
  last_due = p->due;
  last_seq = p->seq;
  fired_many++;
}

static void test_many(void) {
  enum { N = 10000 };
  struct mprobe *ts = calloc(N, sizeof *ts);
  ASSERT(ts);
  unsigned seed = 12345;
  for (int i = 0; i < N; i++) {
    timer_init(&ts[i].t);
    seed = seed * 1103515245u + 12345u;
    timer_start(&ts[i].t, (seed >> 16) % 50 / 1000.0, many_cb);
    ts[i].due = ts[i].t.bucket->due;
    ts[i].seq = (uint64_t)i + 1;
  }
  for (int i = 0; i < N; i += 7) timer_stop(&ts[i].t); /* 1,429 stopped */
  ASSERT_EQ(timer_count(), N - (N + 6) / 7);
  uv_run(atom_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(fired_many, N - (N + 6) / 7);
  free(ts);
}

/* More buckets than the first hash table holds (300 distinct deadlines), a
 * time shift (Ctrl-Z) applied to all of them, and buckets emptied by stops
 * from their middle: every timer still fires once, in order, never early. */
static void test_buckets_and_shift(void) {
  enum { N = 900 };
  struct mprobe *ts = calloc(N, sizeof *ts);
  ASSERT(ts);
  last_due = last_seq = 0;
  fired_many = 0;
  for (int i = 0; i < N; i++) {
    timer_init(&ts[i].t);
    timer_start(&ts[i].t, (i % 300) / 10000.0 + 0.001, many_cb);
  }
  for (int i = 1; i < N; i += 3) timer_stop(&ts[i].t); /* a middle one of every bucket */
  timer_add_stopped(5 * MS);
  ASSERT(timer_next_due() >= uv_hrtime() + 5 * MS);
  for (int i = 0; i < N; i++) {
    if (!timer_active(&ts[i].t)) continue;
    ts[i].due = ts[i].t.bucket->due;
    ts[i].seq = (uint64_t)i + 1;
  }
  /* Started after the shift: joins or makes buckets, in order all the same. */
  uv_run(atom_loop, UV_RUN_DEFAULT);
  ASSERT_EQ(fired_many, N - N / 3);
  ASSERT_EQ(timer_count(), 0);
  free(ts);
}

int main(void) {
  atom_loop = uv_default_loop();
  test_order();
  test_stop_restart();
  test_callbacks();
  test_many();
  test_buckets_and_shift();
  ASSERT_EQ(watch_starts, 1);
  timer_shutdown();
  uv_run(atom_loop, UV_RUN_DEFAULT); /* let the close callback run */
  ASSERT_EQ(uv_loop_close(atom_loop), 0);
  return 0;
}

/* timer.c — every deadline of the run (sleeps, timeouts, graces) on one
 * uv_timer_t over a binary min-heap, so a timer costs no uv handle and no
 * close callback: timers live inside the structs that own them. */
#include <stdatomic.h>
#include <stdlib.h>

#include "atom.h"

static struct timer **heap;
static int heap_len, heap_cap;
static uint64_t next_seq;
static uv_timer_t uv_timer;
static bool uv_timer_ready;
static uint64_t armed_due = UINT64_MAX;
static _Atomic uint64_t stopped_ns; /* not yet applied: see timer_add_stopped */

static bool earlier(const struct timer *a, const struct timer *b) {
  return a->due < b->due || (a->due == b->due && a->seq < b->seq);
}

static void place(int i, struct timer *t) {
  heap[i] = t;
  t->slot = i;
}

static void sift_up(int i) {
  struct timer *t = heap[i];
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (!earlier(t, heap[parent])) break;
    place(i, heap[parent]);
    i = parent;
  }
  place(i, t);
}

static void sift_down(int i) {
  struct timer *t = heap[i];
  for (;;) {
    int child = 2 * i + 1;
    if (child >= heap_len) break;
    if (child + 1 < heap_len && earlier(heap[child + 1], heap[child])) child++;
    if (!earlier(heap[child], t)) break;
    place(i, heap[child]);
    i = child;
  }
  place(i, t);
}

static void timer_fire_cb(uv_timer_t *h);

/* Time atomlua spent stopped (Ctrl-Z) does not count against deadlines:
 * main.c's handler adds it, and every due time moves by as much before the
 * heap is next used. One shift for all keeps the heap in order. */
void timer_add_stopped(uint64_t ns) { atomic_fetch_add(&stopped_ns, ns); }

static void apply_stopped(void) {
  uint64_t ns = atomic_exchange(&stopped_ns, 0);
  if (ns == 0) return;
  for (int i = 0; i < heap_len; i++) heap[i]->due += ns;
  armed_due = UINT64_MAX; /* re-arm for the new earliest due */
}

/* Keep the uv timer armed for the earliest deadline; re-arming only when the
 * earliest deadline changed keeps 10,000 sleeps cheap. */
static void rearm(void) {
  if (heap_len == 0) {
    if (uv_timer_ready) uv_timer_stop(&uv_timer);
    armed_due = UINT64_MAX;
    return;
  }
  if (!uv_timer_ready) {
    uv_timer_init(atom_loop, &uv_timer);
    uv_timer_ready = true;
  }
  uint64_t due = heap[0]->due;
  if (due == armed_due && uv_is_active((uv_handle_t *)&uv_timer)) return;
  uint64_t now = uv_hrtime();
  /* libuv counts whole milliseconds on a coarse clock: round up, and let
   * timer_fire_cb re-arm if it still came early. */
  uint64_t ms = due > now ? (due - now + 999999) / 1000000 : 0;
  uv_timer_start(&uv_timer, timer_fire_cb, ms, 0);
  armed_due = due;
}

void timer_init(struct timer *t) {
  t->slot = -1;
  t->due = 0;
  t->seq = 0;
  t->cb = NULL;
}

void timer_start(struct timer *t, double secs, void (*cb)(struct timer *)) {
  timer_stop(t);
  apply_stopped();
  if (heap_len == heap_cap) {
    heap_cap = heap_cap ? heap_cap * 2 : 64;
    heap = realloc(heap, sizeof *heap * (size_t)heap_cap);
    if (!heap) abort();
  }
  /* Round up to whole milliseconds; deadlines are kept in nanoseconds of
   * uv_hrtime (atom.now's clock), so a timer never fires early. */
  double ms = secs * 1000.0;
  uint64_t delay = ms <= 0 ? 0 : (uint64_t)ms + ((double)(uint64_t)ms < ms);
  t->due = uv_hrtime() + delay * 1000000;
  t->seq = next_seq++;
  t->cb = cb;
  place(heap_len++, t);
  sift_up(heap_len - 1);
  if (t->slot == 0) rearm();
}

void timer_stop(struct timer *t) {
  if (t->slot < 0) return;
  int i = t->slot;
  t->slot = -1;
  struct timer *last = heap[--heap_len];
  if (i < heap_len) {
    place(i, last);
    sift_up(i);
    sift_down(last->slot);
  }
  if (i == 0) rearm();
}

static void timer_fire_cb(uv_timer_t *h) {
  (void)h;
  armed_due = UINT64_MAX;
  apply_stopped();
  uint64_t now = uv_hrtime();
  while (heap_len > 0 && heap[0]->due <= now) {
    struct timer *t = heap[0];
    timer_stop(t);
    t->cb(t);
  }
  rearm();
}

uint64_t timer_next_due(void) {
  apply_stopped();
  return heap_len ? heap[0]->due : UINT64_MAX;
}
int timer_count(void) { return heap_len; }

void timer_shutdown(void) {
  heap_len = 0;
  if (uv_timer_ready) {
    uv_close((uv_handle_t *)&uv_timer, NULL);
    uv_timer_ready = false;
  }
  armed_due = UINT64_MAX;
  free(heap);
  heap = NULL;
  heap_cap = 0;
}

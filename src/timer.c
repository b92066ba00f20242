/* timer.c — every deadline of the run (sleeps, timeouts, graces) on one
 * uv_timer_t, so a timer costs no uv handle and no close callback: timers
 * live inside the structs that own them.
 *
 * Due times are rounded up to whole milliseconds (libuv's own granularity:
 * a timer never fires early, and no later than before) and the timers due
 * at the same time share a bucket, a list in start order. Buckets sit in a
 * binary min-heap and a hash table, both by due time. 10,000 tasks that
 * sleep at once make a handful of buckets, so starting, stopping and firing
 * a timer are list operations that touch no other timer (a heap of 100,000
 * timers cost a cache miss per comparison). */
#include <stdatomic.h>
#include <stdlib.h>

#include "atom.h"

#define MS 1000000ULL

struct tbucket {
  uint64_t due; /* uv_hrtime() nanoseconds */
  struct timer *head, *tail;
  int slot;              /* index in the heap */
  struct tbucket *hnext; /* hash chain; the free list */
};

static struct tbucket **heap;
static int heap_len, heap_cap;
static struct tbucket **hash; /* by due time; hash_cap is a power of 2 */
static unsigned hash_cap;
static struct tbucket *free_buckets;
static int active; /* timers started and not stopped */
static uv_timer_t uv_timer;
static bool uv_timer_ready;
static uint64_t armed_due = UINT64_MAX;
static _Atomic uint64_t stopped_ns; /* not yet applied: see timer_add_stopped */

/* {==== the heap of buckets ==== */

static void place(int i, struct tbucket *b) {
  heap[i] = b;
  b->slot = i;
}

static void sift_up(int i) {
  struct tbucket *b = heap[i];
  while (i > 0) {
    int parent = (i - 1) / 2;
    if (heap[parent]->due <= b->due) break;
    place(i, heap[parent]);
    i = parent;
  }
  place(i, b);
}

static void sift_down(int i) {
  struct tbucket *b = heap[i];
  for (;;) {
    int child = 2 * i + 1;
    if (child >= heap_len) break;
    if (child + 1 < heap_len && heap[child + 1]->due < heap[child]->due) child++;
    if (heap[child]->due >= b->due) break;
    place(i, heap[child]);
    i = child;
  }
  place(i, b);
}

/* }==== */
/* {==== buckets by due time ==== */

static unsigned hash_of(uint64_t due) {
  uint64_t k = due / MS * 0x9E3779B97F4A7C15ULL;
  return (unsigned)(k >> 32) & (hash_cap - 1);
}

static void hash_rebuild(unsigned cap) {
  struct tbucket **h = calloc(cap, sizeof *h);
  if (!h) abort();
  free(hash);
  hash = h;
  hash_cap = cap;
  for (int i = 0; i < heap_len; i++) {
    unsigned k = hash_of(heap[i]->due);
    heap[i]->hnext = hash[k];
    hash[k] = heap[i];
  }
}

/* The bucket of due time `due`, made (empty) if there is none. */
static struct tbucket *bucket_get(uint64_t due) {
  if (hash_cap) {
    for (struct tbucket *b = hash[hash_of(due)]; b; b = b->hnext)
      if (b->due == due) return b;
  }
  if (heap_len == heap_cap) {
    heap_cap = heap_cap ? heap_cap * 2 : 64;
    heap = realloc(heap, sizeof *heap * (size_t)heap_cap);
    if (!heap) abort();
  }
  struct tbucket *b = free_buckets;
  if (b)
    free_buckets = b->hnext;
  else if (!(b = malloc(sizeof *b)))
    abort();
  b->due = due;
  b->head = b->tail = NULL;
  place(heap_len++, b);
  sift_up(heap_len - 1);
  if ((unsigned)heap_len > hash_cap) {
    hash_rebuild(hash_cap ? hash_cap * 2 : 64); /* links b too */
  } else {
    unsigned k = hash_of(due);
    b->hnext = hash[k];
    hash[k] = b;
  }
  return b;
}

/* b is empty: out of the heap and the hash table, onto the free list. */
static void bucket_drop(struct tbucket *b) {
  struct tbucket **pp = &hash[hash_of(b->due)];
  while (*pp != b) pp = &(*pp)->hnext;
  *pp = b->hnext;
  int i = b->slot;
  struct tbucket *last = heap[--heap_len];
  if (i < heap_len) {
    place(i, last);
    sift_up(i);
    sift_down(last->slot);
  }
  b->hnext = free_buckets;
  free_buckets = b;
}

/* }==== */

static void timer_fire_cb(uv_timer_t *h);

/* Time atomlua spent stopped (Ctrl-Z) does not count against deadlines:
 * main.c's handler adds it, and every due time moves by as much before the
 * heap is next used. One shift for all keeps the heap in order. */
void timer_add_stopped(uint64_t ns) { atomic_fetch_add(&stopped_ns, ns); }

static void apply_stopped(void) {
  uint64_t ns = atomic_exchange(&stopped_ns, 0);
  if (ns == 0) return;
  for (int i = 0; i < heap_len; i++) heap[i]->due += ns;
  if (hash_cap) hash_rebuild(hash_cap); /* the keys moved */
  armed_due = UINT64_MAX;               /* re-arm for the new earliest due */
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
  uint64_t ms = due > now ? (due - now + MS - 1) / MS : 0;
  uv_timer_start(&uv_timer, timer_fire_cb, ms, 0);
  armed_due = due;
}

void timer_init(struct timer *t) {
  t->next = t->prev = NULL;
  t->bucket = NULL;
  t->cb = NULL;
}

void timer_start(struct timer *t, double secs, void (*cb)(struct timer *)) {
  /* A deadline that can be overdue: the preemption check has work now. */
  static bool watching;
  if (!watching) {
    watching = true;
    watch_start();
  }
  timer_stop(t);
  apply_stopped();
  /* The delay is rounded up to whole milliseconds, then the deadline (in
   * nanoseconds of uv_hrtime, atom.now's clock) up to the next whole
   * millisecond, where libuv would fire it anyway: a timer never fires
   * early. A zero delay is due now. */
  double ms = secs * 1000.0;
  uint64_t due = uv_hrtime();
  if (ms > 0) {
    uint64_t delay = ms >= 1.8e13 ? (uint64_t)1.8e13 : (uint64_t)ms + ((double)(uint64_t)ms < ms);
    due = (due + delay * MS + MS - 1) / MS * MS;
  }
  struct tbucket *b = bucket_get(due);
  t->cb = cb;
  t->bucket = b;
  t->next = NULL;
  t->prev = b->tail;
  if (b->tail)
    b->tail->next = t;
  else
    b->head = t;
  b->tail = t;
  active++;
  if (b->slot == 0) rearm();
}

void timer_stop(struct timer *t) {
  struct tbucket *b = t->bucket;
  if (!b) return;
  t->bucket = NULL;
  if (t->prev)
    t->prev->next = t->next;
  else
    b->head = t->next;
  if (t->next)
    t->next->prev = t->prev;
  else
    b->tail = t->prev;
  t->next = t->prev = NULL;
  active--;
  if (b->head) return;
  bool first = b->slot == 0;
  bucket_drop(b);
  if (first) rearm();
}

static void timer_fire_cb(uv_timer_t *h) {
  (void)h;
  armed_due = UINT64_MAX;
  apply_stopped();
  uint64_t now = uv_hrtime();
  while (heap_len > 0 && heap[0]->due <= now) {
    struct timer *t = heap[0]->head;
    timer_stop(t);
    t->cb(t);
  }
  rearm();
}

uint64_t timer_next_due(void) {
  apply_stopped();
  return heap_len ? heap[0]->due : UINT64_MAX;
}
int timer_count(void) { return active; }

void timer_shutdown(void) {
  /* Timers still started are left stopped, not pointing at freed buckets. */
  for (int i = 0; i < heap_len; i++) {
    for (struct timer *t = heap[i]->head, *n; t; t = n) {
      n = t->next;
      t->bucket = NULL;
      t->next = t->prev = NULL;
    }
    heap[i]->hnext = free_buckets;
    free_buckets = heap[i];
  }
  heap_len = 0;
  active = 0;
  while (free_buckets) {
    struct tbucket *b = free_buckets;
    free_buckets = b->hnext;
    free(b);
  }
  if (uv_timer_ready) {
    uv_close((uv_handle_t *)&uv_timer, NULL);
    uv_timer_ready = false;
  }
  armed_due = UINT64_MAX;
  free(heap);
  heap = NULL;
  heap_cap = 0;
  free(hash);
  hash = NULL;
  hash_cap = 0;
}

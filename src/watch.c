/* watch.c — one background thread, independent of the loop, that wakes
 * every 50 ms and runs the checks registered with watch_add: the
 * scheduler's preemption check (a deadline overdue while a task never
 * suspends) and the CLI's watchdog (exit when cleanups overrun). It knows
 * neither: checks run on this thread, so they may only touch what is safe
 * from another thread (atomics, a count hook under a lock, _exit; the CLI's
 * watchdog also runs its reporters in the control Lua state, under the lock
 * the main thread holds while it uses that state). The thread starts only
 * once there is something to watch (watch_start). */
#include <pthread.h>
#include <time.h>

#include "atom.h"

enum { MAX_CHECKS = 4 };
static void (*volatile checks[MAX_CHECKS])(void);
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static volatile bool started;

static void *watch_main(void *arg) {
  (void)arg;
  for (;;) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    for (int i = 0; i < MAX_CHECKS; i++) {
      void (*check)(void) = checks[i];
      if (check) check();
    }
  }
  return NULL;
}

void watch_add(void (*check)(void)) {
  pthread_mutex_lock(&lock);
  int free_slot = -1;
  bool known = false;
  for (int i = 0; i < MAX_CHECKS; i++) {
    if (checks[i] == check) known = true;
    if (!checks[i] && free_slot < 0) free_slot = i;
  }
  if (!known && free_slot >= 0) checks[free_slot] = check;
  pthread_mutex_unlock(&lock);
}

/* The thread starts when a check could have something to do: with the first
 * timer (timer.c: a deadline can be overdue only once one exists) or at a
 * signal (main.c). An empty run never starts it. */
void watch_start(void) {
  pthread_mutex_lock(&lock);
  if (!started) {
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1024 * 1024); /* room for the reporters' Lua */
    if (pthread_create(&th, &attr, watch_main, NULL) == 0) {
      pthread_detach(th);
      started = true;
    }
    pthread_attr_destroy(&attr);
  }
  pthread_mutex_unlock(&lock);
}

bool watch_started(void) { return started; }

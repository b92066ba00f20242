/* spawn_limit: the physical limit for W3. Runs N times /bin/true with at most
 * K in flight, using posix_spawn + waitpid and nothing else (no pipes, no
 * event loop), and prints processes per second. The harness builds it with cc
 * into a temporary directory: `spawn_limit [N [K]]`. */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 1000;
  int k = argc > 2 ? atoi(argv[2]) : 32;
  char *child_argv[] = {"/bin/true", NULL};
  int started = 0, done = 0, inflight = 0, failed = 0;
  double t0 = now_s();
  while (done < n) {
    while (started < n && inflight < k) {
      pid_t pid;
      int rc = posix_spawn(&pid, "/bin/true", NULL, NULL, child_argv, environ);
      if (rc != 0) {
        fprintf(stderr, "posix_spawn: error %d\n", rc);
        return 1;
      }
      started++;
      inflight++;
    }
    int status;
    pid_t pid = waitpid(-1, &status, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      perror("waitpid");
      return 1;
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed++;
    inflight--;
    done++;
  }
  double dt = now_s() - t0;
  if (failed) {
    fprintf(stderr, "%d children failed\n", failed);
    return 1;
  }
  printf("RESULT procs_per_s=%.1f n=%d wall_s=%.4f\n", n / dt, n, dt);
  return 0;
}

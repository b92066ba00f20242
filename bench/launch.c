/* launch: how the harness starts every benchmark program. A process's peak RSS
 * (ru_maxrss) includes the memory of whoever forked it, so programs started
 * straight from the Python harness would all report at least the harness's
 * ~18 MB. This small launcher starts the program with posix_spawnp, waits
 * with wait4 and writes one report line to REPORT:
 *   status wall_ns maxrss_kib utime_us stime_us
 * It also times fork+exec+wait in C for W6. Usage: launch REPORT PROG ARG... */
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: launch REPORT PROG [ARG...]\n");
    return 2;
  }
  struct timespec t0, t1;
  struct rusage ru;
  pid_t pid;
  int status;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = posix_spawnp(&pid, argv[2], NULL, NULL, argv + 2, environ);
  if (rc != 0) {
    fprintf(stderr, "launch: cannot start %s: error %d\n", argv[2], rc);
    return 127;
  }
  while (wait4(pid, &status, 0, &ru) < 0) {
    if (errno != EINTR) {
      perror("launch: wait4");
      return 1;
    }
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  long long wall = (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
  FILE *f = fopen(argv[1], "w");
  if (!f) {
    perror("launch: report");
    return 1;
  }
  fprintf(f, "%d %lld %ld %lld %lld\n", status, wall, ru.ru_maxrss,
          (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
          (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec);
  return fclose(f) == 0 ? 0 : 1;
}

/* ready_limit: the physical limit for W4. Starts one `sh -c 'sleep D; echo
 * ready; exec sleep 30'` per delay argument with posix_spawn (stdout on a
 * pipe, own process group), polls the pipes until every child printed
 * `ready`, then SIGTERMs and reaps them all; prints the total time minus the
 * longest delay. The harness builds it with cc into a temporary directory. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAXP 64
extern char **environ;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
  int n = argc - 1;
  if (n < 1 || n > MAXP) {
    fprintf(stderr, "usage: ready_limit DELAY... (1-%d delays)\n", MAXP);
    return 2;
  }
  pid_t pids[MAXP];
  struct pollfd pfd[MAXP];
  char buf[MAXP][256];
  size_t len[MAXP];
  double longest = 0;
  double t0 = now_s();
  for (int i = 0; i < n; i++) {
    double d = atof(argv[i + 1]);
    if (d > longest) longest = d;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "sleep %s; echo ready; exec sleep 30", argv[i + 1]);
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
      perror("pipe2");
      return 1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t at;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawnattr_init(&at);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&at, 0);
    char *cargv[] = {"sh", "-c", cmd, NULL};
    int rc = posix_spawn(&pids[i], "/bin/sh", &fa, &at, cargv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    close(fds[1]);
    if (rc != 0) {
      fprintf(stderr, "posix_spawn: error %d\n", rc);
      return 1;
    }
    pfd[i].fd = fds[0];
    pfd[i].events = POLLIN;
    len[i] = 0;
  }
  int waiting = n;
  while (waiting > 0) {
    if (poll(pfd, n, 10000) <= 0) {
      fprintf(stderr, "poll: timeout or error\n");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP))) continue;
      ssize_t r = read(pfd[i].fd, buf[i] + len[i], sizeof buf[i] - 1 - len[i]);
      if (r <= 0) {
        fprintf(stderr, "child %d: output ended before ready\n", i);
        return 1;
      }
      len[i] += (size_t)r;
      buf[i][len[i]] = 0;
      if (strstr(buf[i], "ready\n")) {
        close(pfd[i].fd);
        pfd[i].fd = -1;
        waiting--;
      }
    }
  }
  for (int i = 0; i < n; i++) kill(-pids[i], SIGTERM);
  for (int i = 0; i < n; i++) {
    while (waitpid(pids[i], NULL, 0) < 0 && errno == EINTR) {
    }
  }
  double dt = now_s() - t0;
  printf("RESULT overhead_ms=%.3f longest_ms=%.0f\n", (dt - longest) * 1000, longest * 1000);
  return 0;
}

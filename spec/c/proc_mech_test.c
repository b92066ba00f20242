/* proc_mech_test.c — the process mechanisms without Lua: spawn.c (lookup,
 * process group, signal reset, exec errors), outbuf.c (line rules, bounds,
 * log) and reaper.c (groups die when their spawner is SIGKILLed; a group id
 * reused by someone else is spared). tools/run-tests.sh builds it alone, so
 * the files are included here:
 * cc -D_GNU_SOURCE -Isrc spec/c/proc_mech_test.c $(pkg-config --cflags --libs libuv) */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define PROC_MECH_ONLY
#include "cgroup.c"
#include "outbuf.c"
#include "proc.h"
#include "reaper.c"
#include "spawn.c"

#define ASSERT(c)                                                               \
  do {                                                                          \
    if (!(c)) {                                                                 \
      fprintf(stderr, "%s:%d: assertion failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                                  \
    }                                                                           \
  } while (0)
#define ASSERT_EQ(a, b) ASSERT((long long)(a) == (long long)(b))
#define ASSERT_STR(a, b) ASSERT(strcmp((a), (b)) == 0)

extern char **environ;

/* Start argv; keep its pidfd in *pidfdp, or close it when pidfdp is NULL. */
static int run_fd(char *const argv[], int out, pid_t *pidp, int *pidfdp, const char **stage) {
  char path[4096];
  int r = spawn_lookup(argv[0], getenv("PATH"), path, sizeof path);
  if (r) return r;
  struct spawn_req req = {
      .path = path, .argv = argv, .envp = environ, .fd_in = -1, .fd_out = out, .fd_err = -1};
  int pidfd;
  r = spawn_start(&req, pidp, &pidfd, stage);
  if (r == 0 && pidfdp)
    *pidfdp = pidfd;
  else if (r == 0 && pidfd >= 0)
    close(pidfd);
  return r;
}

static int run(char *const argv[], int out, pid_t *pidp, const char **stage) {
  return run_fd(argv, out, pidp, NULL, stage);
}

static char *slurp(int fd) {
  static char buf[65536];
  size_t n = 0;
  ssize_t k;
  while ((k = read(fd, buf + n, sizeof buf - 1 - n)) > 0) n += (size_t)k;
  buf[n] = 0;
  return buf;
}

static void test_spawn(void) {
  char path[4096];
  ASSERT_EQ(spawn_lookup("sh", "/nonexistent:/usr/bin:/bin", path, sizeof path), 0);
  ASSERT(strstr(path, "/sh"));
  ASSERT_EQ(spawn_lookup("no-such-prog-xyz", NULL, path, sizeof path), -ENOENT);
  ASSERT_EQ(spawn_lookup("/etc/passwd", NULL, path, sizeof path), -EACCES);
  ASSERT_EQ(spawn_lookup("./x/y", NULL, path, sizeof path), -ENOENT);
  ASSERT(path[0] == '/');

  /* Own process group, default SIGPIPE though we ignore it, empty mask. */
  signal(SIGPIPE, SIG_IGN);
  sigset_t blk;
  sigemptyset(&blk);
  sigaddset(&blk, SIGUSR1);
  sigprocmask(SIG_BLOCK, &blk, NULL);
  int p[2];
  ASSERT(pipe2(p, O_CLOEXEC) == 0);
  pid_t pid;
  const char *stage = NULL;
  char *argv[] = {"sh", "-c",
                  "ps -o pid=,pgid= -p $$; exec grep -E '^(SigIgn|SigBlk)' /proc/$$/status", NULL};
  ASSERT_EQ(run(argv, p[1], &pid, &stage), 0);
  close(p[1]);
  char *out = slurp(p[0]);
  close(p[0]);
  int st;
  ASSERT_EQ(waitpid(pid, &st, 0), pid);
  ASSERT(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  int a = 0, b = 0;
  ASSERT(sscanf(out, " %d %d", &a, &b) == 2);
  ASSERT_EQ(a, pid);
  ASSERT_EQ(b, pid);
  ASSERT(strstr(out, "SigIgn:\t0000000000000000"));
  ASSERT(strstr(out, "SigBlk:\t0000000000000000"));
  sigprocmask(SIG_UNBLOCK, &blk, NULL);

  /* exec failure and chdir failure come back as errors, child reaped. */
  char tmpl[] = "/tmp/atomlua-noexec-XXXXXX";
  int fd = mkstemp(tmpl);
  ASSERT(write(fd, "#!/nonexistent/interp\n", 22) == 22);
  close(fd);
  chmod(tmpl, 0755);
  char *argv2[] = {tmpl, NULL};
  ASSERT_EQ(run(argv2, -1, &pid, &stage), -ENOENT);
  ASSERT_STR(stage, "exec");
  unlink(tmpl);
  struct spawn_req req = {.path = "/bin/true",
                          .argv = argv,
                          .envp = environ,
                          .cwd = "/nonexistent",
                          .fd_in = -1,
                          .fd_out = -1,
                          .fd_err = -1};
  int pidfd;
  ASSERT_EQ(spawn_start(&req, &pid, &pidfd, &stage), -ENOENT);
  ASSERT_STR(stage, "chdir");
  ASSERT(waitpid(-1, NULL, WNOHANG) < 0 && errno == ECHILD);
}

static int count_lines(struct outbuf *o) { return (int)(o->next - o->first); }

static void test_outbuf(void) {
  char tmpl[] = "/tmp/atomlua-log-XXXXXX";
  int logfd = mkstemp(tmpl);
  struct outbuf o;
  outbuf_init(&o, true, 8, logfd);
  outbuf_feed(&o, 0, "a\r\nb", 4);
  outbuf_feed(&o, 1, "err\n", 4);
  outbuf_feed(&o, 0, "c\n\n", 3);
  outbuf_feed(&o, 0, "\x00\xff", 2);
  outbuf_eof(&o, 0);
  ASSERT_EQ(count_lines(&o), 5);
  size_t n;
  int s;
  const char *l = outbuf_line(&o, 1, &n, &s);
  ASSERT(n == 1 && l[0] == 'a' && s == 0);
  l = outbuf_line(&o, 2, &n, &s);
  ASSERT(n == 3 && memcmp(l, "err", 3) == 0 && s == 1);
  l = outbuf_line(&o, 3, &n, &s);
  ASSERT(n == 2 && memcmp(l, "bc", 2) == 0);
  l = outbuf_line(&o, 4, &n, &s);
  ASSERT(n == 0);
  l = outbuf_line(&o, 5, &n, &s);
  ASSERT(n == 2 && memcmp(l, "\x00\xff", 2) == 0);
  ASSERT(outbuf_line(&o, 6, &n, &s) == NULL);
  /* raw tail keeps the last 8 bytes of stdout */
  char t[16];
  ASSERT_EQ(o.tail[0].len, 8);
  outbuf_tail_copy(&o, 0, t);
  ASSERT(memcmp(t, "\r\nbc\n\n\x00\xff", 8) == 0);
  /* a 150 KiB line: two 64 KiB pieces and the rest; an exact 64 KiB line
   * followed by a newline gives no extra empty line */
  char *big = malloc(150 * 1024);
  memset(big, 'x', 150 * 1024);
  uint64_t before = o.next;
  outbuf_feed(&o, 0, big, 150 * 1024);
  outbuf_feed(&o, 0, "\n", 1);
  ASSERT_EQ(o.next - before, 3);
  outbuf_line(&o, before, &n, &s);
  ASSERT_EQ(n, OUT_LINE_MAX);
  outbuf_line(&o, before + 2, &n, &s);
  ASSERT_EQ(n, 150 * 1024 - 2 * OUT_LINE_MAX);
  before = o.next;
  outbuf_feed(&o, 0, big, OUT_LINE_MAX);
  outbuf_feed(&o, 0, "\n", 1);
  ASSERT_EQ(o.next - before, 1);
  /* the memory bound: 10 MiB of short lines keep about 1 MiB */
  for (int i = 0; i < 5 * 1024 * 1024 / 8; i++) outbuf_feed(&o, 0, "y\ny\ny\ny\n", 8);
  ASSERT(o.lines_bytes <= OUT_LINES_MAX);
  ASSERT(o.first > 1000000);
  l = outbuf_line(&o, o.next - 1, &n, &s);
  ASSERT(n == 1 && l[0] == 'y');
  l = outbuf_line(&o, o.first, &n, &s);
  ASSERT(n == 1 && l[0] == 'y');
  outbuf_free(&o);
  /* the log holds every byte, in line order */
  off_t size = lseek(logfd, 0, SEEK_END);
  ASSERT_EQ(size, 4 + 4 + 3 + 2 + 150 * 1024 + 1 + OUT_LINE_MAX + 1 + 5 * 1024 * 1024);
  char head[16];
  ASSERT(pread(logfd, head, 13, 0) == 13);
  ASSERT(memcmp(head, "a\r\nerr\nbc\n\n\x00\xff", 13) == 0);
  close(logfd);
  unlink(tmpl);
  free(big);
}

static bool alive(pid_t pid) { return kill(pid, 0) == 0; }

static void test_reaper(void) {
  /* A fake atomlua spawns `sh -c 'sleep 1000 & exec sleep 1001'`, registers
   * the group and reports the pids; then we SIGKILL it. */
  int p[2];
  ASSERT(pipe(p) == 0);
  pid_t fake = fork();
  if (fake == 0) {
    close(p[0]);
    int q[2];
    if (pipe2(q, O_CLOEXEC) != 0) _exit(1);
    pid_t pid;
    int pidfd;
    const char *stage;
    char *argv[] = {"sh", "-c", "sleep 1000 & echo $!; exec sleep 1001", NULL};
    if (run_fd(argv, q[1], &pid, &pidfd, &stage) != 0) _exit(1);
    reaper_add(pid, pidfd);
    close(q[1]);
    char line[64] = {0};
    ssize_t k = read(q[0], line, sizeof line - 1);
    (void)k;
    int bg = atoi(line);
    int msg[3] = {pid, bg, reaper_pid()};
    if (write(p[1], msg, sizeof msg) != sizeof msg) _exit(1);
    pause();
    _exit(0);
  }
  close(p[1]);
  int msg[3];
  ASSERT(read(p[0], msg, sizeof msg) == sizeof msg);
  close(p[0]);
  ASSERT(msg[0] > 0 && msg[1] > 0 && msg[2] > 0);
  ASSERT(alive(msg[0]) && alive(msg[1]));
  kill(fake, SIGKILL);
  waitpid(fake, NULL, 0);
  /* The leader dies by PDEATHSIG, the grandchild only through the reaper. */
  for (int i = 0; i < 200 && (alive(msg[1]) || alive(msg[2])); i++) usleep(10000);
  ASSERT(!alive(msg[1]));
  ASSERT(!alive(msg[2]));
}

/* Become a process with pid `want` leading its own group (root only: it
 * writes /proc/sys/kernel/ns_last_pid; other forks on the machine may win
 * the race, so it tries again). Returns the pid, or 0 if impossible. */
static pid_t impostor(pid_t want) {
  for (int i = 0; i < 200; i++) {
    int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY);
    if (fd < 0) return 0;
    char num[16];
    int len = snprintf(num, sizeof num, "%d", (int)want - 1);
    ssize_t k = write(fd, num, (size_t)len);
    close(fd);
    if (k != len) return 0;
    pid_t pid = fork();
    if (pid == 0) {
      setpgid(0, 0);
      pause();
      _exit(0);
    }
    if (pid == want) {
      setpgid(pid, pid); /* whichever of the two runs first */
      return pid;
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
  return 0;
}

static void test_reaper_stale_group(void) {
  /* A fake atomlua registers a group, which then ends without the reaper
   * hearing of it (as if atomlua died right then); an unrelated process
   * gets the same id and leads a group of that id. The fake atomlua is
   * SIGKILLed: the reaper must spare the impostor. */
  int p[2];
  ASSERT(pipe(p) == 0);
  pid_t fake = fork();
  if (fake == 0) {
    close(p[0]);
    pid_t pid;
    int pidfd;
    const char *stage;
    char *argv[] = {"sleep", "1000", NULL};
    if (run_fd(argv, -1, &pid, &pidfd, &stage) != 0) _exit(1);
    reaper_add(pid, pidfd);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    int msg[2] = {pid, reaper_pid()};
    if (write(p[1], msg, sizeof msg) != sizeof msg) _exit(1);
    pause();
    _exit(0);
  }
  close(p[1]);
  int msg[2];
  ASSERT(read(p[0], msg, sizeof msg) == sizeof msg);
  close(p[0]);
  pid_t imp = impostor(msg[0]);
  if (!imp) {
    fprintf(stderr, "skipped: cannot choose a pid (ns_last_pid)\n");
    kill(fake, SIGKILL);
    waitpid(fake, NULL, 0);
    return;
  }
  ASSERT_EQ(getpgid(imp), imp);
  kill(fake, SIGKILL);
  waitpid(fake, NULL, 0);
  for (int i = 0; i < 200 && alive(msg[1]); i++) usleep(10000);
  ASSERT(!alive(msg[1])); /* the reaper has done its work */
  usleep(50000);
  ASSERT_EQ(waitpid(imp, NULL, WNOHANG), 0); /* still running */
  kill(imp, SIGKILL);
  waitpid(imp, NULL, 0);
}

static void test_speed(void) {
  /* 2000 spawns of /bin/true, 32 in flight (compare: bench/). */
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  char *argv[] = {"/bin/true", NULL};
  int inflight = 0, done = 0, started = 0;
  while (done < 2000) {
    while (inflight < 32 && started < 2000) {
      pid_t pid;
      const char *stage;
      ASSERT_EQ(run(argv, -1, &pid, &stage), 0);
      inflight++;
      started++;
    }
    ASSERT(wait(NULL) > 0);
    inflight--;
    done++;
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double secs = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
  printf("spawn_start: %.0f procs/s\n", 2000 / secs);
}

int main(void) {
  test_spawn();
  test_outbuf();
  test_reaper();
  test_reaper_stale_group();
  test_speed();
  uv_loop_t loop;
  ASSERT(uv_loop_init(&loop) == 0);
  uv_run(&loop, UV_RUN_DEFAULT);
  ASSERT(uv_loop_close(&loop) == 0);
  puts("proc_mech_test: ok");
  return 0;
}

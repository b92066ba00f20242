/* reaper.c — the no-orphan guardian (SPEC §4). At the first spawn atomlua
 * forks a small reaper process that holds one end of a socketpair; atomlua
 * sends it each new process group and each group that is gone. When the
 * socket reads EOF — atomlua exited, crashed or was SIGKILLed, or the host
 * of atom.so died — the reaper SIGKILLs every group it still knows and exits.
 * PR_SET_PDEATHSIG (spawn.c) only covers a group's leader, and only until the
 * group is registered here. proc.c decides when to add and remove. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"

static int sock = -1; /* atomlua's end; its close is the reaper's signal */
static pid_t rpid;
static pid_t *groups; /* what the reaper is told, to replay after a restart */
static size_t ngroups, capgroups;
static int32_t *pending; /* records not sent yet: +pgid added, -pgid gone */
static size_t npending, cappending;
static bool warned;

/* {==== the reaper process ==== */

/* After fork, possibly from a multithreaded host: only syscalls from here. */
static void __attribute__((noreturn)) reaper_main(int fd) {
  struct sigaction ign;
  memset(&ign, 0, sizeof ign);
  ign.sa_handler = SIG_IGN;
  /* Terminal signals and `kill -TERM` aimed at atomlua must not take the
   * reaper down before it has done its job: only EOF ends it. */
  for (int sig = 1; sig < NSIG; sig++)
    if (sig != SIGKILL && sig != SIGSTOP) sigaction(sig, &ign, NULL);
  sigset_t empty;
  sigemptyset(&empty);
  sigprocmask(SIG_SETMASK, &empty, NULL);
  setsid(); /* out of atomlua's group and session: `kill -9 -PGID` spares it */
  int hi = fcntl(fd, F_DUPFD, 10);
  dup2(hi, 3);
  int nul = open("/dev/null", O_RDWR);
  for (int i = 0; i < 3; i++) dup2(nul, i);
  /* Drop everything else: a reaper that kept atomlua's stdout open would
   * make a caller reading atomlua's output wait for it. */
  syscall(SYS_close_range, 4U, ~0U, 0U);
  if (chdir("/") < 0) { /* keep going: the cwd only pins a mount */
  }
  prctl(PR_SET_NAME, "atomlua-reaper");
  size_t cap = 4096, n = 0;
  int32_t *set =
      mmap(NULL, cap * sizeof *set, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  char buf[4096];
  size_t have = 0;
  for (;;) {
    ssize_t k = read(3, buf + have, sizeof buf - have);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    have += (size_t)k;
    size_t i = 0;
    for (; i + 4 <= have; i += 4) {
      int32_t v;
      memcpy(&v, buf + i, 4);
      if (v > 0) {
        if (n == cap && set != MAP_FAILED) {
          set = mremap(set, cap * sizeof *set, 2 * cap * sizeof *set, MREMAP_MAYMOVE);
          cap *= 2;
        }
        if (set != MAP_FAILED) set[n++] = v;
      } else if (set != MAP_FAILED) {
        for (size_t j = 0; j < n; j++)
          if (set[j] == -v) {
            set[j] = set[--n];
            break;
          }
      }
    }
    memmove(buf, buf + i, have - i);
    have -= i;
  }
  if (set != MAP_FAILED)
    for (size_t j = 0; j < n; j++) kill(-set[j], SIGKILL);
  _exit(0);
}

/* }==== */

/* {==== atomlua's side ==== */

static void restart(void);

static bool send_all(const int32_t *v, size_t n) {
  if (sock < 0) return false;
  const char *p = (const char *)v;
  size_t len = n * sizeof *v;
  while (len > 0) {
    ssize_t k = send(sock, p, len, MSG_NOSIGNAL);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return false;
    p += k;
    len -= (size_t)k;
  }
  return true;
}

static bool start(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return false;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    reaper_main(sv[1]);
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    return false;
  }
  sock = sv[0];
  rpid = pid;
  int32_t *known = malloc(ngroups * sizeof *known + 1);
  if (known) {
    for (size_t i = 0; i < ngroups; i++) known[i] = groups[i];
    send_all(known, ngroups);
    free(known);
  }
  npending = 0; /* the new reaper knows everything now */
  return true;
}

/* The reaper died (someone killed it): start a new one and tell it again
 * about every group it knew. */
static void restart(void) {
  if (sock >= 0) close(sock);
  sock = -1;
  if (rpid > 0) waitpid(rpid, NULL, WNOHANG);
  rpid = 0;
  if (!start() && !warned) {
    warned = true;
    fprintf(
        stderr,
        "atomlua: warning: cannot start the reaper process (%s); processes may outlive a crash\n",
        strerror(errno));
  }
}

static void queue(int32_t v) {
  if (npending == cappending) {
    size_t cap = cappending ? 2 * cappending : 64;
    int32_t *q = realloc(pending, cap * sizeof *q);
    if (!q) { /* cannot queue: tell it now */
      reaper_flush();
      if (!send_all(&v, 1)) restart();
      return;
    }
    pending = q;
    cappending = cap;
  }
  pending[npending++] = v;
}

void reaper_add(pid_t pgid) {
  if (ngroups == capgroups) {
    size_t cap = capgroups ? 2 * capgroups : 64;
    pid_t *g = realloc(groups, cap * sizeof *g);
    if (!g) return;
    groups = g;
    capgroups = cap;
  }
  if (sock < 0 && rpid == 0) restart(); /* the first spawn starts the reaper */
  groups[ngroups++] = pgid;
  queue(pgid);
}

void reaper_remove(pid_t pgid) {
  for (size_t i = 0; i < ngroups; i++)
    if (groups[i] == pgid) {
      groups[i] = groups[--ngroups];
      /* Added and gone before the reaper heard of it: tell it nothing. */
      for (size_t j = npending; j-- > 0;)
        if (pending[j] == pgid) {
          pending[j] = pending[--npending];
          return;
        }
      queue(-pgid);
      if (npending >= 256) reaper_flush();
      return;
    }
}

bool reaper_pending(void) { return npending > 0; }

void reaper_flush(void) {
  if (npending == 0) return;
  size_t n = npending;
  npending = 0;
  if (!send_all(pending, n)) restart(); /* a new reaper learns every group */
}

pid_t reaper_pid(void) { return rpid; }

/* }==== */

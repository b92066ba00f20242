/* reaper.c — the no-orphan guardian (SPEC §4). At the first spawn atomlua
 * forks a small reaper process that holds one end of a socketpair; atomlua
 * tells it, at once, each new process group (with a pidfd of its leader)
 * and each group that is gone. When the socket reads EOF — atomlua exited,
 * crashed or was SIGKILLed, or the host of atom.so died — the reaper
 * SIGKILLs every group it still knows, then the run's cgroup (cgroup.c), and
 * exits. It signals a group through the leader's pidfd
 * (PIDFD_SIGNAL_PROCESS_GROUP), so a group id reused by an unrelated process
 * is never hit. It also stops and resumes the groups when atomlua gets
 * Ctrl-Z (main.c). atomlua watches the reaper's own pidfd (proc.c) and
 * starts a new one at once if it dies. proc.c decides when to add and
 * remove. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"

enum { R_ADD = 1, R_DEL, R_STOP, R_CONT };

/* "Gone" records wait (at most this many) and go with the next message:
 * one sendmsg, and one wake-up of the reaper, per spawn instead of two.
 * Only where the reaper signals groups through pidfds (Linux 6.9), which
 * never reach a group id reused after ours ended: a late "gone" is then
 * harmless. Elsewhere the reaper uses the id, and it is told at once. */
#define DEL_BATCH 64

struct rmsg {
  int32_t op, pgid;
};

struct rgroup {
  pid_t pgid;
  int pidfd; /* the leader's pidfd: atomlua's (borrowed from proc.c) or the reaper's copy */
};

static int sock = -1; /* atomlua's end; its close is the reaper's signal */
static pid_t rpid;
static int rpidfd = -1;       /* the reaper's pidfd, watched by proc.c */
static unsigned generation;   /* counts reaper starts */
static struct rgroup *groups; /* what the reaper is told, to replay after a restart */
static size_t ngroups, capgroups;
static bool warned;
static int32_t pend_del[DEL_BATCH]; /* groups gone, not told yet (DEL_BATCH above) */
static int npend;
int reaper_pidfd_groups; /* PIDFD_SIGNAL_PROCESS_GROUP works: 1, does not: -1, unknown: 0 */

/* Signal the group of the leader behind pidfd — never a group id that was
 * reused — and the leader itself, in case it left its group. Kernels before
 * 6.9 cannot signal a group through a pidfd: there the id is used. */
void reaper_signal_group(pid_t pgid, int pidfd, int sig) {
  if (pidfd >= 0) {
    long r = syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, PIDFD_SIGNAL_PROCESS_GROUP);
    if (r < 0 && errno == EINVAL) kill(-pgid, sig);
    reaper_pidfd_groups = r < 0 && errno == EINVAL ? -1 : 1;
    syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
  } else {
    kill(-pgid, sig);
  }
}

/* {==== the reaper process ==== */

static void signal_all(const struct rgroup *set, size_t n, int sig) {
  for (size_t j = 0; j < n; j++) reaper_signal_group(set[j].pgid, set[j].pidfd, sig);
}

/* After fork, possibly from a multithreaded host: only syscalls from here. */
static void __attribute__((noreturn)) reaper_main(int fd, int base, int run) {
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
  /* fd 3: the socket, 4 and 5: the cgroup directories (or nothing). */
  int hi[3] = {fcntl(fd, F_DUPFD, 10), base >= 0 ? fcntl(base, F_DUPFD, 10) : -1,
               run >= 0 ? fcntl(run, F_DUPFD, 10) : -1};
  /* An fd 4 or 5 not replaced here is atomlua's (a port lock, say): the
   * reaper must not keep it open after atomlua has died. */
  for (int i = 0; i < 3; i++) {
    if (hi[i] >= 0)
      dup2(hi[i], 3 + i);
    else
      close(3 + i);
  }
  base = hi[1] >= 0 ? 4 : -1;
  run = hi[2] >= 0 ? 5 : -1;
  int nul = open("/dev/null", O_RDWR);
  for (int i = 0; i < 3; i++) dup2(nul, i);
  /* Drop everything else: a reaper that kept atomlua's stdout open would
   * make a caller reading atomlua's output wait for it. */
  syscall(SYS_close_range, 6U, ~0U, 0U);
  if (chdir("/") < 0) { /* keep going: the cwd only pins a mount */
  }
  prctl(PR_SET_NAME, "atomlua-reaper");
  /* One pidfd per group is held here: take every fd the hard limit allows. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  size_t cap = 4096, n = 0;
  struct rgroup *set =
      mmap(NULL, cap * sizeof *set, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  for (;;) {
    struct rmsg batch[1 + DEL_BATCH];
    union {
      char buf[CMSG_SPACE(sizeof(int))];
      struct cmsghdr align;
    } ctl;
    struct iovec iov = {.iov_base = batch, .iov_len = sizeof batch};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
    ssize_t k = recvmsg(3, &mh, MSG_CMSG_CLOEXEC);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    int pidfd = -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
      memcpy(&pidfd, CMSG_DATA(c), sizeof pidfd);
    /* Records in order: the pidfd goes with the (only) R_ADD of a message. */
    for (size_t r = 0; r < (size_t)k / sizeof *batch; r++) {
      struct rmsg m = batch[r];
      if (m.op == R_ADD && set != MAP_FAILED) {
        if (n == cap) {
          struct rgroup *bigger =
              mremap(set, cap * sizeof *set, 2 * cap * sizeof *set, MREMAP_MAYMOVE);
          if (bigger != MAP_FAILED) {
            set = bigger;
            cap *= 2;
          }
        }
        if (n < cap) set[n++] = (struct rgroup){m.pgid, pidfd};
        pidfd = -1;
      } else if (m.op == R_DEL && set != MAP_FAILED) {
        for (size_t j = 0; j < n; j++)
          if (set[j].pgid == m.pgid) {
            if (set[j].pidfd >= 0) close(set[j].pidfd);
            set[j] = set[--n];
            break;
          }
      } else if ((m.op == R_STOP || m.op == R_CONT) && set != MAP_FAILED) {
        signal_all(set, n, m.op == R_STOP ? SIGSTOP : SIGCONT);
      }
    }
  }
  if (set != MAP_FAILED) signal_all(set, n, SIGKILL);
  cgroup_kill_run(base, run, cgroup_run_name());
  _exit(0);
}

/* }==== */

/* {==== atomlua's side ==== */

/* One message: the pending "gone" records first (a group id they name may
 * be the one op adds, reused), then op. */
static bool send_rec(int op, pid_t pgid, int fd, int flags) {
  if (sock < 0) return false;
  struct rmsg batch[1 + DEL_BATCH];
  int nrec = 0;
  if (!(flags & MSG_DONTWAIT)) { /* not from the SIGTSTP handler */
    for (int i = 0; i < npend; i++) batch[nrec++] = (struct rmsg){R_DEL, pend_del[i]};
  }
  batch[nrec++] = (struct rmsg){op, pgid};
  union {
    char buf[CMSG_SPACE(sizeof(int))];
    struct cmsghdr align;
  } ctl;
  struct iovec iov = {.iov_base = batch, .iov_len = (size_t)nrec * sizeof *batch};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    memset(&ctl, 0, sizeof ctl);
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof ctl.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    ssize_t k = sendmsg(sock, &mh, MSG_NOSIGNAL | flags);
    if (k < 0 && errno == EINTR) continue;
    if (k != (ssize_t)iov.iov_len) return false;
    if (nrec > 1) npend = 0;
    return true;
  }
}

static bool start(void) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) return false;
  cgroup_available(); /* the run cgroup exists before the reaper forks */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pid_t pid = fork();
  if (pid == 0) {
    close(sv[0]);
    reaper_main(sv[1], cgroup_base_fd(), cgroup_run_fd());
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    return false;
  }
  sock = sv[0];
  rpid = pid;
  rpidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  generation++;
  for (size_t i = 0; i < ngroups; i++) send_rec(R_ADD, groups[i].pgid, groups[i].pidfd, 0);
  return true;
}

/* The reaper died (someone killed it): start a new one and tell it again
 * about every group it knew. */
static void restart(void) {
  if (sock >= 0) close(sock);
  sock = -1;
  npend = 0;         /* a new reaper learns only the live groups */
  if (rpidfd >= 0) { /* it is dying: its socket closed (bounded wait) */
    struct pollfd pfd = {.fd = rpidfd, .events = POLLIN};
    poll(&pfd, 1, 100);
    close(rpidfd);
    rpidfd = -1;
  }
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

void reaper_start(void) {
  if (rpid == 0) restart();
}

void reaper_add(pid_t pgid, int pidfd) {
  if (ngroups == capgroups) {
    size_t cap = capgroups ? 2 * capgroups : 64;
    struct rgroup *g = realloc(groups, cap * sizeof *g);
    if (g) {
      groups = g;
      capgroups = cap;
    }
  }
  if (ngroups < capgroups) {
    groups[ngroups++] = (struct rgroup){pgid, pidfd};
  } else { /* out of memory: the reaper still hears of it, only a restart would not */
    fprintf(stderr,
            "atomlua: warning: out of memory: process group %d is not re-registered "
            "if the reaper has to be restarted\n",
            (int)pgid);
  }
  if (rpid == 0) /* the first spawn starts the reaper, which learns every group */
    restart();
  else if (!send_rec(R_ADD, pgid, pidfd, 0))
    restart();
}

void reaper_remove(pid_t pgid) {
  for (size_t i = 0; i < ngroups; i++)
    if (groups[i].pgid == pgid) {
      groups[i] = groups[--ngroups];
      if (reaper_pidfd_groups > 0 && npend < DEL_BATCH) { /* told with the next message */
        pend_del[npend++] = pgid;
        return;
      }
      if (!send_rec(R_DEL, pgid, -1, 0)) restart(); /* a new reaper learns the rest */
      return;
    }
}

/* From main.c's SIGTSTP handler: async-signal-safe, never blocks. */
void reaper_stop_all(bool stop) { send_rec(stop ? R_STOP : R_CONT, 0, -1, MSG_DONTWAIT); }

/* The reaper's pidfd became readable: it is gone; start another one. */
void reaper_died(void) {
  if (rpidfd < 0) return;
  struct pollfd pfd = {.fd = rpidfd, .events = POLLIN};
  if (poll(&pfd, 1, 0) != 1) return; /* spurious */
  restart();
}

int reaper_watch_fd(unsigned *gen) {
  *gen = generation;
  return rpidfd;
}

pid_t reaper_pid(void) { return rpid; }

/* }==== */

/* spawn.c — starting one child: PATH lookup in the parent, then
 * clone(CLONE_VM|CLONE_VFORK) + execve, the way glibc's posix_spawn does it,
 * plus what posix_spawn cannot do in one call: a process group of its own,
 * PR_SET_PDEATHSIG, a pidfd (CLONE_PIDFD) and, where given, a cgroup. Pipes, reaping and everything
 * Lua-facing live in proc.c; this file knows nothing of Lua or libuv.
 *
 * The cgroup: on x86-64 the child is born in it (clone3 with
 * CLONE_INTO_CGROUP, Linux 5.7). Moving it there by writing cgroup.procs
 * takes the kernel's cgroup write lock, which waits for an RCU grace
 * period when no other migration ran lately: 10-20 ms on a busy machine,
 * paid by a run's first spawn. glibc has no clone3 wrapper that runs a
 * function on a new stack, hence the few lines of assembly; elsewhere, or
 * where the kernel refuses, the child writes cgroup.procs itself. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "proc.h"

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

/* {==== PATH lookup ==== */

static int check_exec(const char *path) {
  struct stat st;
  if (stat(path, &st) < 0) return -errno;
  if (!S_ISREG(st.st_mode) || !(st.st_mode & 0111)) return -EACCES;
  /* For root any x bit will do, which stat told already: spare a syscall. */
  static int euid = -1;
  if (euid < 0) euid = (int)geteuid();
  if (euid != 0 && access(path, X_OK) < 0) return -errno;
  return 0;
}

int spawn_lookup(const char *prog, const char *path_env, char *out, size_t outsz) {
  if (!prog[0]) return -ENOENT;
  if (strchr(prog, '/')) {
    /* Relative paths are taken against atomlua's cwd, before the child's
     * `cwd` applies (SPEC §4), so make them absolute here. */
    if (prog[0] == '/') {
      if (strlen(prog) >= outsz) return -ENAMETOOLONG;
      strcpy(out, prog);
    } else {
      char cwd[PATH_MAX];
      if (!getcwd(cwd, sizeof cwd)) return -errno;
      if ((size_t)snprintf(out, outsz, "%s/%s", cwd, prog) >= outsz) return -ENAMETOOLONG;
    }
    return check_exec(out);
  }
  if (!path_env) path_env = SPAWN_DEFAULT_PATH;
  int err = -ENOENT;
  const char *p = path_env;
  size_t plen = strlen(prog);
  for (;;) {
    const char *end = strchrnul(p, ':');
    size_t dlen = (size_t)(end - p);
    /* An empty PATH entry means the current directory, as for execvp. */
    size_t n = dlen ? dlen + 1 + plen : plen;
    if (n < outsz) {
      if (dlen) {
        memcpy(out, p, dlen);
        out[dlen] = '/';
        memcpy(out + dlen + 1, prog, plen + 1);
      } else {
        memcpy(out, prog, plen + 1);
      }
      int r = check_exec(out);
      if (r == 0) return 0;
      if (r == -EACCES) err = r; /* remember a non-executable match, keep looking */
    }
    if (!*end) break;
    p = end + 1;
  }
  return err;
}

/* }==== */

/* {==== the vfork child ==== */

struct child {
  const struct spawn_req *req;
  pid_t parent;
  bool in_cgroup;             /* born in req's cgroup: no cgroup.procs write */
  volatile int err;           /* errno of the failed step, written by the child */
  const char *volatile stage; /* which step failed */
};

#define CHILD_FAIL(c, what) \
  do {                      \
    (c)->err = errno;       \
    (c)->stage = (what);    \
    _exit(127);             \
  } while (0)

/* Runs on its own stack, sharing memory with the suspended parent: only
 * syscalls, no allocation, and failure is reported through *c. */
__attribute__((no_sanitize("address", "undefined"))) static int child_main(void *arg) {
  struct child *c = arg;
  const struct spawn_req *r = c->req;
  if (setpgid(0, 0) < 0) CHILD_FAIL(c, "setpgid");
  /* Covers the moment before the reaper knows this group (reaper.c). */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != c->parent) _exit(127);
  /* A host's process lives in the host's network namespace (SPEC §11);
   * before close_range, which would close the fd. */
  if (r->netns > 0 && setns(r->netns, CLONE_NEWNET) < 0) CHILD_FAIL(c, "setns");
  /* Into its own cgroup (cgroup.c) before anything can fork: what it
   * starts, daemons too, stays there. Refused: it runs without. */
  if (!c->in_cgroup && r->cgroup_fd > 2 && write(r->cgroup_fd, "0", 1) < 0) {
    /* refused: it runs outside the cgroup */
  }
  if (!c->in_cgroup && r->cgroup_fd <= 2 && r->cgroup_dir > 2) {
    /* clone3 refused it: join through cgroup.procs after all */
    int fd = openat(r->cgroup_dir, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (fd >= 0 && write(fd, "0", 1) < 0) {
      /* refused: it runs outside the cgroup */
    }
    if (fd >= 0) close(fd);
  }
  int fds[3] = {r->fd_in, r->fd_out, r->fd_err};
  /* A source that already sits on a low fd it is not meant for would be
   * overwritten by an earlier dup2: move it out of the way first. */
  for (int i = 0; i < 3; i++)
    if (fds[i] >= 0 && fds[i] < 3 && fds[i] != i) {
      fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);
      if (fds[i] < 0) CHILD_FAIL(c, "dup");
    }
  for (int i = 0; i < 3; i++) {
    if (fds[i] < 0) continue;
    if (fds[i] == i) {
      if (fcntl(i, F_SETFD, 0) < 0) CHILD_FAIL(c, "fcntl");
    } else if (dup2(fds[i], i) < 0) {
      CHILD_FAIL(c, "dup2");
    }
  }
  /* Whatever the host opened without O_CLOEXEC (Lua's io.open does) must not
   * leak into the node processes. */
  syscall(SYS_close_range, 3U, ~0U, 0U);
  if (r->cwd && chdir(r->cwd) < 0) CHILD_FAIL(c, "chdir");
  /* Default dispositions (atomlua ignores SIGPIPE; children must not), then
   * an empty mask: the parent blocked everything around clone. */
  /* The kernel's struct sigaction (handler, flags, restorer, mask), all zero:
   * SIG_DFL through the raw syscall, never a libc or sanitizer wrapper. */
  const unsigned long dfl[4] = {0, 0, 0, 0};
  for (int sig = 1; sig < 65; sig++)
    if (sig != SIGKILL && sig != SIGSTOP) syscall(SYS_rt_sigaction, sig, dfl, NULL, 8);
  uint64_t empty = 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, 8);
  execve(r->path, r->argv, r->envp);
  CHILD_FAIL(c, "exec");
  return 127;
}

/* One stack for every child: CLONE_VFORK suspends the parent until the child
 * execs or exits, and only the loop thread spawns. */
static char child_stack[64 * 1024] __attribute__((aligned(64)));

#if defined(__x86_64__)
/* The kernel's struct clone_args (linux/sched.h) up to `cgroup`, as the
 * array of 64-bit fields it is. */
enum { CA_FLAGS, CA_PIDFD, CA_EXIT_SIGNAL = 4, CA_STACK, CA_STACK_SIZE, CA_CGROUP = 10, CA_LEN };

static bool clone3_broken; /* the kernel refused it once: the old way from then on */

/* clone3 running fn(arg) on the new stack in the child, which then exits with
 * fn's value (fn execs or _exits first). Returns the pid or -errno. */
__attribute__((no_sanitize("address", "undefined"))) static long clone3_run(uint64_t ca[CA_LEN],
                                                                            int (*fn)(void *),
                                                                            void *arg) {
  register long r12 __asm__("r12") = (long)fn;
  register long r13 __asm__("r13") = (long)arg;
  long ret;
  __asm__ volatile(
      "syscall\n\t"
      "test %%rax, %%rax\n\t"
      "jnz 1f\n\t"
      /* the child, on the new stack (16-byte aligned): fn(arg), then exit */
      "xor %%ebp, %%ebp\n\t"
      "mov %%r13, %%rdi\n\t"
      "call *%%r12\n\t"
      "mov %%eax, %%edi\n\t"
      "mov $60, %%eax\n\t" /* SYS_exit */
      "syscall\n\t"
      "hlt\n"
      "1:"
      : "=a"(ret)
      : "0"((long)SYS_clone3), "D"(ca), "S"(CA_LEN * sizeof(uint64_t)), "r"(r12), "r"(r13)
      : "rcx", "r11", "memory");
  return ret;
}

/* The child born in req's cgroup, or -1 with nothing started (then the
 * caller starts it the old way). */
static pid_t start_in_cgroup(struct child *c, int *pidfd) {
  if (clone3_broken || c->req->cgroup_dir <= 2) return -1;
  uint64_t ca[CA_LEN] = {0};
  ca[CA_FLAGS] = CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_INTO_CGROUP;
  ca[CA_PIDFD] = (uint64_t)(uintptr_t)pidfd;
  ca[CA_EXIT_SIGNAL] = SIGCHLD;
  ca[CA_STACK] = (uint64_t)(uintptr_t)child_stack;
  ca[CA_STACK_SIZE] = sizeof child_stack;
  ca[CA_CGROUP] = (uint64_t)c->req->cgroup_dir;
  c->in_cgroup = true;
  long pid = clone3_run(ca, child_main, c);
  if (pid > 0) return (pid_t)pid;
  /* ENOSYS, E2BIG, EINVAL: this kernel cannot; anything else (the cgroup
   * refused): the old way, which runs without it in the end. */
  if (pid == -ENOSYS || pid == -E2BIG || pid == -EINVAL) clone3_broken = true;
  c->in_cgroup = false;
  *pidfd = -1;
  return -1;
}
bool spawn_into_cgroup(void) { return !clone3_broken; }
#else
static pid_t start_in_cgroup(struct child *c, int *pidfd) {
  (void)c;
  (void)pidfd;
  return -1;
}
bool spawn_into_cgroup(void) { return false; }
#endif

int spawn_start(const struct spawn_req *r, pid_t *pid_out, int *pidfd_out, const char **stage) {
  struct child c = {.req = r, .parent = getpid(), .err = 0, .stage = NULL};
  sigset_t all, old;
  sigfillset(&all);
  /* A signal handler must never run in the child on the parent's memory. */
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int pidfd = -1;
  pid_t pid = start_in_cgroup(&c, &pidfd);
  if (pid < 0)
    pid = clone(child_main, child_stack + sizeof child_stack,
                CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &c, &pidfd);
  int e = errno;
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (pid < 0) {
    *stage = "clone";
    return -e;
  }
  if (c.err) {
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (pidfd >= 0) close(pidfd);
    *stage = c.stage;
    return -c.err;
  }
  *pid_out = pid;
  *pidfd_out = pidfd;
  return 0;
}

/* }==== */

/* cgroup.c — a cgroup v2 of its own for every spawned process, where the
 * machine gives us a writable one (root, or a delegated subtree). A process
 * group can be left (setsid, setpgid, a double-forking daemon); a cgroup
 * cannot, short of privileges: so the cgroup is what finally holds a node's
 * descendants, and cgroup.kill ends them all. Layout:
 *   <atomlua's own cgroup>/atomlua-<pid>[-n]/p<id>
 * The run cgroup is made at the first spawn and removed by the reaper when
 * atomlua is gone (cgroup_kill_run). ATOMLUA_CGROUP=0 turns all this off.
 * Everything degrades to "no cgroup" (-1 fds) when a step is refused. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "proc.h"

static int state; /* 0: not tried yet, 1: available, -1: not */
static int basefd = -1, runfd = -1;
static char runname[64];

/* The cgroup v2 mount point (the first cgroup2 line of mountinfo). */
static bool find_mount(char *out, size_t outsz) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) return false;
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    char root[1024], mnt[1024];
    const char *dash = strstr(line, " - cgroup2 ");
    if (!dash || sscanf(line, "%*d %*d %*s %1023s %1023s", root, mnt) != 2) continue;
    /* A mount of a sub-tree (root != "/") would need path arithmetic. */
    if (strcmp(root, "/") != 0 || strlen(mnt) >= outsz) continue;
    strcpy(out, mnt);
    found = true;
  }
  fclose(f);
  return found;
}

/* Our own cgroup v2 path ("0::/path" in /proc/self/cgroup). */
static bool find_own(char *out, size_t outsz) {
  FILE *f = fopen("/proc/self/cgroup", "re");
  if (!f) return false;
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f)) {
    if (strncmp(line, "0::", 3) != 0) continue;
    line[strcspn(line, "\n")] = '\0';
    if (strlen(line + 3) >= outsz) break;
    strcpy(out, line + 3);
    found = true;
  }
  fclose(f);
  return found;
}

static bool setup(void) {
  const char *env = getenv("ATOMLUA_CGROUP");
  if (env && strcmp(env, "0") == 0) return false;
  char mnt[1024], own[2048], base[3200];
  if (!find_mount(mnt, sizeof mnt) || !find_own(own, sizeof own)) return false;
  snprintf(base, sizeof base, "%s%s", mnt, strcmp(own, "/") == 0 ? "" : own);
  basefd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  /* Moving a child out of our cgroup needs write access to its cgroup.procs. */
  if (basefd < 0 || faccessat(basefd, "cgroup.procs", W_OK, 0) < 0) goto fail;
  for (int n = 0; n < 100; n++) {
    if (n == 0)
      snprintf(runname, sizeof runname, "atomlua-%d", (int)getpid());
    else
      snprintf(runname, sizeof runname, "atomlua-%d-%d", (int)getpid(), n);
    if (mkdirat(basefd, runname, 0755) == 0) break;
    if (errno != EEXIST) goto fail;
    runname[0] = '\0';
  }
  if (!runname[0]) goto fail;
  runfd = openat(basefd, runname, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  /* cgroup.kill (Linux 5.14) is what makes it worth it. */
  if (runfd < 0 || faccessat(runfd, "cgroup.kill", W_OK, 0) < 0) {
    if (runfd >= 0) close(runfd);
    runfd = -1;
    unlinkat(basefd, runname, AT_REMOVEDIR);
    goto fail;
  }
  return true;
fail:
  if (basefd >= 0) close(basefd);
  basefd = -1;
  return false;
}

bool cgroup_available(void) {
  if (state == 0) state = setup() ? 1 : -1;
  return state > 0;
}

int cgroup_run_fd(void) { return runfd; }
int cgroup_base_fd(void) { return basefd; }
const char *cgroup_run_name(void) { return runname; }

/* Empty cgroups kept for the next processes: a mkdir and an rmdir of a
 * cgroup cost the kernel more than the rest of a spawn. */
#define POOL_MAX 64
static struct {
  unsigned id;
  int dfd;
} pool[POOL_MAX];
static int npool;
static unsigned next_id;

int cgroup_new(unsigned *id, int *procs_fd, bool want_procs) {
  *procs_fd = -1;
  if (!cgroup_available()) return -1;
  int dfd;
  if (npool > 0) {
    npool--;
    *id = pool[npool].id;
    dfd = pool[npool].dfd;
  } else {
    char name[32];
    *id = ++next_id;
    snprintf(name, sizeof name, "p%u", *id);
    if (mkdirat(runfd, name, 0755) < 0 && errno != EEXIST) return -1;
    dfd = openat(runfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
  }
  if (want_procs) {
    *procs_fd = openat(dfd, "cgroup.procs", O_WRONLY | O_CLOEXEC);
    if (*procs_fd < 0) {
      cgroup_remove(*id, dfd, true, false);
      return -1;
    }
  }
  return dfd;
}

/* Fill the pool up to n empty cgroups now (atom.proc's load), so that the
 * first spawns — a cluster's nodes, started at once — do not each pay for
 * a mkdir. */
void cgroup_warm(int n) {
  if (n > POOL_MAX || !cgroup_available()) return;
  while (npool < n) {
    char name[32];
    unsigned id = ++next_id;
    snprintf(name, sizeof name, "p%u", id);
    if (mkdirat(runfd, name, 0755) < 0 && errno != EEXIST) return;
    int dfd = openat(runfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return;
    pool[npool].id = id;
    pool[npool].dfd = dfd;
    npool++;
  }
}

/* Only syscalls below: the reaper (a fork) uses them too. */

static ssize_t read_at(int dfd, const char *file, char *buf, size_t n) {
  int fd = openat(dfd, file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t k = read(fd, buf, n - 1);
  close(fd);
  if (k >= 0) buf[k] = '\0';
  return k;
}

static void write_at(int dfd, const char *file, const char *s) {
  int fd = openat(dfd, file, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t k = write(fd, s, strlen(s));
  (void)k;
  close(fd);
}

bool cgroup_populated(int dfd) {
  char buf[256];
  if (read_at(dfd, "cgroup.events", buf, sizeof buf) <= 0) return false;
  return strstr(buf, "populated 1") != NULL;
}

void cgroup_signal(int dfd, int sig, int then) {
  if (sig == SIGKILL) {
    write_at(dfd, "cgroup.kill", "1");
    return;
  }
  int fd = openat(dfd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[4096];
  size_t have = 0;
  for (;;) {
    ssize_t k = read(fd, buf + have, sizeof buf - 1 - have);
    if (k <= 0) break;
    have += (size_t)k;
    buf[have] = '\0';
    char *p = buf, *nl;
    while ((nl = strchr(p, '\n'))) {
      long pid = strtol(p, NULL, 10);
      if (pid > 0) kill((pid_t)pid, sig);
      if (pid > 0 && then) kill((pid_t)pid, then);
      p = nl + 1;
    }
    have = (size_t)(buf + have - p);
    memmove(buf, p, have);
  }
  close(fd);
}

void cgroup_remove(unsigned id, int dfd, bool reuse, bool empty) {
  /* Empty: nothing can enter it any more (that takes a member that forks),
   * so the next process may have it. */
  if (reuse && dfd >= 0 && npool < POOL_MAX && (empty || !cgroup_populated(dfd))) {
    pool[npool].id = id;
    pool[npool].dfd = dfd;
    npool++;
    return;
  }
  char name[32];
  snprintf(name, sizeof name, "p%u", id);
  if (dfd >= 0) close(dfd);
  /* Still populated (a process SIGKILLed a moment ago): the reaper removes
   * what is left when atomlua is gone. */
  if (runfd >= 0) unlinkat(runfd, name, AT_REMOVEDIR);
}

/* The reaper's last act: kill everything in the run cgroup, wait (a few
 * seconds at most) until it is empty, remove it. Syscalls only. */
void cgroup_kill_run(int base, int run, const char *name) {
  if (run < 0) return;
  write_at(run, "cgroup.kill", "1");
  struct timespec ms10 = {0, 10 * 1000 * 1000};
  for (int i = 0; i < 500 && cgroup_populated(run); i++) nanosleep(&ms10, NULL);
  char buf[4096] __attribute__((aligned(8)));
  for (;;) {
    long n = syscall(SYS_getdents64, run, buf, sizeof buf); /* readdir would allocate */
    if (n <= 0) break;
    for (long off = 0; off < n;) {
      const struct dirent64 *d = (const struct dirent64 *)(buf + off); /* the kernel's layout */
      if (d->d_type == DT_DIR && d->d_name[0] == 'p') unlinkat(run, d->d_name, AT_REMOVEDIR);
      off += d->d_reclen;
    }
  }
  if (base >= 0) unlinkat(base, name, AT_REMOVEDIR);
}

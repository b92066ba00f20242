/* isolate.c — `--isolate` / ATOMLUA_ISOLATE=1: the whole run moves into a
 * network namespace of its own before anything else happens (SPEC §11). As
 * root a new network namespace; otherwise a new user namespace mapping the
 * caller to root, plus a network namespace. A user namespace can only be
 * entered by a single-threaded process, so main() calls this first, before
 * the loop, the reaper or the preemption thread exist. When the kernel
 * refuses, atomlua exits 2 with the reason and the remedy. */
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "atom.h"

static bool isolated;

bool isolate_active(void) { return isolated; }

/* Asked for by the command line (run/trace, before "--") or the environment. */
static bool isolate_wanted(int argc, char **argv) {
  const char *env = getenv("ATOMLUA_ISOLATE");
  if (env && *env && strcmp(env, "0") != 0) return true;
  if (argc < 2 || (strcmp(argv[1], "run") != 0 && strcmp(argv[1], "trace") != 0)) return false;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--") == 0) break;
    if (strcmp(argv[i], "--isolate") == 0) return true;
  }
  return false;
}

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  ssize_t n = write(fd, text, strlen(text));
  int e = n < 0 ? -errno : 0;
  close(fd);
  return e;
}

static int read_int(const char *path) {
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  int v = -1;
  if (fscanf(f, "%d", &v) != 1) v = -1;
  fclose(f);
  return v;
}

/* Why the kernel refused an unprivileged user namespace, as far as we can tell. */
static const char *refusal_reason(int err) {
  if (read_int("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == 1)
    return "unprivileged user namespaces are disabled "
           "(kernel.apparmor_restrict_unprivileged_userns=1)";
  if (read_int("/proc/sys/kernel/unprivileged_userns_clone") == 0)
    return "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone=0)";
  if (read_int("/proc/sys/user/max_user_namespaces") == 0)
    return "user namespaces are disabled (user.max_user_namespaces=0)";
  if (err == ENOSPC) return "the user namespace limit is reached (user.max_user_namespaces)";
  return NULL;
}

static void __attribute__((noreturn)) refuse(const char *what, int err, const char *reason) {
  fprintf(stderr, "atomlua: --isolate: cannot make %s: %s%s%s: run as root, or without --isolate\n",
          what, strerror(err), reason ? "; " : "", reason ? reason : "");
  exit(2);
}

/* Bring the new namespace's loopback up. */
static int lo_up(void) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strcpy(ifr.ifr_name, "lo");
  int r = 0;
  if (ioctl(fd, SIOCGIFFLAGS, &ifr) < 0) {
    r = -errno;
  } else {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(fd, SIOCSIFFLAGS, &ifr) < 0) r = -errno;
  }
  close(fd);
  return r;
}

void isolate_enter(int argc, char **argv) {
  if (!isolate_wanted(argc, argv)) return;
  const char *deny = getenv("ATOMLUA_ISOLATE_DENY");
  if (deny && *deny && strcmp(deny, "0") != 0)
    refuse("a network namespace", EPERM, "refused on purpose (ATOMLUA_ISOLATE_DENY=1)");
  if (geteuid() == 0) {
    if (unshare(CLONE_NEWNET) < 0) refuse("a network namespace", errno, NULL);
  } else {
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (unshare(CLONE_NEWUSER | CLONE_NEWNET) < 0) {
      int e = errno;
      refuse("a user and network namespace", e, refusal_reason(e));
    }
    /* Map the caller to root inside, so files keep the caller's uid outside. */
    char map[64];
    int r = write_file("/proc/self/setgroups", "deny");
    if (r < 0 && r != -ENOENT) refuse("the gid map (setgroups)", -r, NULL);
    snprintf(map, sizeof map, "0 %u 1\n", (unsigned)uid);
    if ((r = write_file("/proc/self/uid_map", map)) < 0) refuse("the uid map", -r, NULL);
    snprintf(map, sizeof map, "0 %u 1\n", (unsigned)gid);
    if ((r = write_file("/proc/self/gid_map", map)) < 0) refuse("the gid map", -r, NULL);
  }
  int r = lo_up();
  if (r < 0) refuse("the loopback interface up", -r, NULL);
  isolated = true;
}

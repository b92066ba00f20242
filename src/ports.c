/* ports.c — atom.free_port (SPEC §5): ports outside the kernel's ephemeral
 * range, never handed out twice in a run, and reserved across concurrent
 * runs by open-file-description locks on one file, one byte per port
 * (<dir>/ports.lock, dir = $ATOMLUA_PORT_DIR or /tmp/atomlua-ports-<uid>).
 * The locks belong to a single close-on-exec descriptor, so the kernel drops
 * them when the run ends, even by SIGKILL, and spawned children never hold
 * them. The sequence is the lowest free port from 10000 up (then 1024 up),
 * so it does not depend on --seed.
 *
 * The directory and the file are the user's own: another local user must
 * not be able to point the file at one of ours (a symlink), nor lock every
 * port for us (a file of theirs). So the directory is made 0700 and must be
 * ours, not a symlink; a group- or world-writable one ($ATOMLUA_PORT_DIR)
 * must be sticky; the file is opened without following a symlink, must be a
 * regular file of ours, and its mode is never changed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "atom.h"

#define FIRST_PORT 10000
#define LOWEST_PORT 1024

static struct {
  int fd;     /* the lock file, -1 until the first call */
  int lo, hi; /* the ephemeral range */
  int next;   /* where the next search starts */
  uint8_t given[65536 / 8];
} P = {.fd = -1};

static bool given(int port) { return P.given[port >> 3] & (1u << (port & 7)); }

static void read_range(void) {
  P.lo = 32768, P.hi = 60999; /* Linux's default when /proc is not readable */
  FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re");
  if (!f) return;
  int lo, hi;
  if (fscanf(f, "%d %d", &lo, &hi) == 2 && lo > 0 && hi >= lo) P.lo = lo, P.hi = hi;
  fclose(f);
}

/* Check the directory open as dfd (named `dir`): a directory of ours (or
 * root's), and when others may write in it, sticky (so no one else can
 * replace our file). `strict`: the default directory must be 0700-like. */
static bool dir_ok(lua_State *L, int dfd, const char *dir, bool strict) {
  struct stat st;
  if (fstat(dfd, &st) != 0) {
    lua_pushfstring(L, "cannot stat %s: %s", dir, strerror(errno));
    return false;
  }
  uid_t me = geteuid();
  if (st.st_uid != me && (strict || st.st_uid != 0)) {
    lua_pushfstring(L, "%s belongs to uid %d, not to this user (uid %d)", dir, (int)st.st_uid,
                    (int)me);
    return false;
  }
  char mode[16]; /* lua_pushfstring has no %o */
  snprintf(mode, sizeof mode, "%o", (unsigned)(st.st_mode & 07777));
  if (strict && (st.st_mode & 077)) {
    lua_pushfstring(L, "%s has mode %s; it must be accessible to its owner only (0700)", dir, mode);
    return false;
  }
  if ((st.st_mode & 022) && !(st.st_mode & S_ISVTX)) {
    lua_pushfstring(L, "%s is writable by others and not sticky (mode %s)", dir, mode);
    return false;
  }
  return true;
}

/* Open (creating) the lock file; on failure push a message and return false. */
static bool open_lockfile(lua_State *L) {
  const char *dir = getenv("ATOMLUA_PORT_DIR");
  bool strict = !dir || !*dir;
  char def[64];
  if (strict) {
    snprintf(def, sizeof def, "/tmp/atomlua-ports-%d", (int)geteuid());
    dir = def;
  }
  if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
    lua_pushfstring(L, "cannot create %s: %s", dir, strerror(errno));
    return false;
  }
  /* O_NOFOLLOW: the default path in /tmp could be anyone's symlink. */
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC | (strict ? O_NOFOLLOW : 0));
  if (dfd < 0) {
    int e = errno;
    struct stat ls;
    bool link = strict && lstat(dir, &ls) == 0 && S_ISLNK(ls.st_mode);
    lua_pushfstring(L, "cannot open directory %s: %s", dir,
                    link ? "it is a symbolic link" : strerror(e));
    return false;
  }
  if (!dir_ok(L, dfd, dir, strict)) {
    close(dfd);
    return false;
  }
  /* O_NONBLOCK | O_NOCTTY: opening a FIFO or device put there has no effect
   * before the check below refuses it. */
  int fd = openat(dfd, "ports.lock",
                  O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0600);
  int e = errno;
  close(dfd);
  if (fd < 0) {
    lua_pushfstring(L, "cannot open %s/ports.lock: %s", dir,
                    e == ELOOP ? "it is a symbolic link" : strerror(e));
    return false;
  }
  struct stat st;
  const char *bad = NULL;
  if (fstat(fd, &st) != 0)
    bad = strerror(errno);
  else if (!S_ISREG(st.st_mode))
    bad = "not a regular file";
  else if (st.st_uid != geteuid())
    bad = "it belongs to another user";
  if (bad) {
    close(fd);
    lua_pushfstring(L, "cannot use %s/ports.lock: %s", dir, bad);
    return false;
  }
  P.fd = fd;
  return true;
}

/* Lock the byte of `port`; false when another run holds it. */
static bool lock_port(int port, short type) {
  struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = port, .l_len = 1};
  return fcntl(P.fd, F_OFD_SETLK, &fl) == 0;
}

/* Binds on 127.0.0.1 right now (without SO_REUSEADDR: a port in TIME_WAIT
 * would fail a server that does not set it). */
static bool bindable(int port) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) return false;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = bind(s, (struct sockaddr *)&a, sizeof a) == 0;
  close(s);
  return ok;
}

static bool try_port(int port) {
  if (given(port) || (port >= P.lo && port <= P.hi)) return false;
  if (!lock_port(port, F_WRLCK)) return false;
  if (!bindable(port)) {
    lock_port(port, F_UNLCK);
    return false;
  }
  P.given[port >> 3] |= (uint8_t)(1u << (port & 7));
  P.next = port + 1;
  return true;
}

/* atom.free_port() -> integer port, reserved until the run ends. */
static int l_free_port(lua_State *L) {
  if (P.fd < 0) {
    if (!open_lockfile(L)) return util_error(L, "io", "free_port: %s", lua_tostring(L, -1));
    read_range();
    P.next = FIRST_PORT;
  }
  /* From where the last search stopped to the top, then from 1024 up. */
  for (int port = P.next; port <= 65535; port++)
    if (try_port(port)) goto found;
  for (int port = LOWEST_PORT; port < P.next && port <= 65535; port++)
    if (try_port(port)) goto found;
  return util_error(L, "io", "free_port: no free port outside the ephemeral range %d-%d", P.lo,
                    P.hi);
found:
  lua_pushinteger(L, P.next - 1);
  return 1;
}

/* End of a run (sched_on_run_end): in module mode the reservations end
 * with atom.run (drop them and forget what was handed out); in the CLI they
 * last as long as the process, across its scenario files. */
static void ports_run_end(lua_State *L) {
  (void)L;
  if (runtime_cli) return;
  if (P.fd >= 0) close(P.fd); /* releases all of this descriptor's locks */
  P.fd = -1;
  memset(P.given, 0, sizeof P.given);
}

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg ports_lib[] = {{"free_port", l_free_port}, {NULL, NULL}};

void ports_register(lua_State *L) {
  (void)L;
  sched_on_run_end(ports_run_end);
}

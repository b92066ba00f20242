/* ports.c — atom.free_port (SPEC §5): ports outside the kernel's ephemeral
 * range, never handed out twice in a run, and reserved across concurrent
 * runs by open-file-description locks on one file, one byte per port
 * (<dir>/ports.lock, dir = $ATOMLUA_PORT_DIR or /tmp/atomlua-ports). The
 * locks belong to a single close-on-exec descriptor, so the kernel drops
 * them when the run ends, even by SIGKILL, and spawned children never hold
 * them. The sequence is the lowest free port from 10000 up (then 1024 up),
 * so it does not depend on --seed. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
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

/* Open (creating) the lock file; on failure push a message and return false. */
static bool open_lockfile(lua_State *L) {
  const char *dir = getenv("ATOMLUA_PORT_DIR");
  if (!dir || !*dir) dir = "/tmp/atomlua-ports";
  /* Shared by every user of the machine, like /tmp itself. */
  if (mkdir(dir, 01777) == 0) chmod(dir, 01777);
  char path[4096];
  snprintf(path, sizeof path, "%s/ports.lock", dir);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd < 0) {
    lua_pushfstring(L, "cannot open %s: %s", path, strerror(errno));
    return false;
  }
  fchmod(fd, 0666); /* fails harmlessly when another user made it */
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

void ports_register(lua_State *L) {
  lua_pushcfunction(L, l_free_port);
  lua_setfield(L, -2, "free_port");
  sched_on_run_end(ports_run_end);
}

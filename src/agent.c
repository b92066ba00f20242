/* agent.c — `atomlua agent` (docs/hosts.md): a copy of atomlua on another
 * machine that runs processes for the atomlua on the far end of a
 * transport (ssh, kubectl exec -i, sh -c). Framed requests come on stdin,
 * framed replies and events go out on stdout (agent.h). Children are
 * started and guarded with the same code as local ones: spawn.c (own
 * group, PDEATHSIG) and reaper.c (a guardian that SIGKILLs every group when
 * the agent dies, however it dies). Output is forwarded raw; the driving
 * atomlua splits it into lines with outbuf.c. When stdin closes — the run
 * ended, atomlua died, the connection dropped — every group is killed, the
 * run directories go, and the agent exits. One thread, one poll(2) loop. */
#include "agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "atom.h"
#include "proc.h"

extern char **environ;

#define CHUNK (64 * 1024)
#define IN_MAX (16 * 1024 * 1024) /* bytes queued for one child's stdin */

struct buf {
  char *p;
  size_t len, cap, off;
};

struct aproc {
  uint32_t id;
  pid_t pid;
  int pidfd;
  int out[2]; /* -1 once closed */
  int in;     /* -1: none or closed */
  struct buf inq;
  bool in_close_after, exited, gone;
  struct aproc *next;
};

static struct aproc *procs;
static struct buf inbuf, outq; /* requests read; frames not yet written */
static int stop_pipe[2] = {-1, -1};
static char *dirs[64];
static bool dir_keep[64];
static int ndirs;
static lua_State *ports_L;
static int exit_code; /* 2 after a refusal */

/* {==== buffers and frames ==== */

static void buf_put(struct buf *b, const void *d, size_t n) {
  if (n == 0) return;
  if (b->len + n > b->cap) {
    if (b->off > 0) { /* compact first */
      memmove(b->p, b->p + b->off, b->len - b->off);
      b->len -= b->off;
      b->off = 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (b->len + n > cap) cap *= 2;
    char *np = realloc(b->p, cap);
    if (!np) {
      fprintf(stderr, "atomlua agent: out of memory\n");
      _exit(70);
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, d, n);
  b->len += n;
}

static void put32(char *p, uint32_t v) {
  p[0] = (char)(v >> 24), p[1] = (char)(v >> 16), p[2] = (char)(v >> 8), p[3] = (char)v;
}

static uint32_t get32(const char *p) {
  const unsigned char *u = (const unsigned char *)p;
  return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

/* Queue a frame; written out by the loop (stdout is non-blocking). */
static void frame2(int type, uint32_t id, const void *a, size_t na, const void *b, size_t nb) {
  char h[AGENT_HDR];
  put32(h, (uint32_t)(5 + na + nb));
  h[4] = (char)type;
  put32(h + 5, id);
  buf_put(&outq, h, sizeof h);
  if (na) buf_put(&outq, a, na);
  if (nb) buf_put(&outq, b, nb);
}

static void frame(int type, uint32_t id, const void *a, size_t na) {
  frame2(type, id, a, na, 0, 0);
}

static void reply_err(uint32_t id, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply_err(uint32_t id, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  frame(A_ERR, id, msg, strlen(msg));
}

static void flush_out(bool block) {
  while (outq.off < outq.len) {
    ssize_t k = write(1, outq.p + outq.off, outq.len - outq.off);
    if (k > 0) {
      outq.off += (size_t)k;
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno == EAGAIN && block) {
      struct pollfd pfd = {.fd = 1, .events = POLLOUT};
      if (poll(&pfd, 1, 2000) > 0) continue;
    }
    if (k < 0 && errno == EAGAIN) return;
    outq.off = outq.len = 0; /* the reader is gone: nothing will be read */
    return;
  }
  outq.off = outq.len = 0;
}

/* }==== */

/* {==== processes ==== */

static struct aproc *find(uint32_t id) {
  for (struct aproc *p = procs; p; p = p->next)
    if (p->id == id) return p;
  return NULL;
}

static bool group_live(pid_t pgid) {
  if (kill(-pgid, 0) < 0 && errno == ESRCH) return false;
  DIR *d = opendir("/proc");
  if (!d) return true;
  bool live = false;
  struct dirent *e;
  char path[300], b[512];
  while (!live && (e = readdir(d))) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    ssize_t n = read(fd, b, sizeof b - 1);
    close(fd);
    if (n <= 0) continue;
    b[n] = '\0';
    char *rp = strrchr(b, ')'), st;
    int ppid, pgrp;
    if (!rp || sscanf(rp + 1, " %c %d %d", &st, &ppid, &pgrp) != 3) continue;
    if (pgrp == pgid && st != 'Z' && st != 'X') live = true;
  }
  closedir(d);
  return live;
}

static void close_fd(int *fd) {
  if (*fd >= 0) close(*fd);
  *fd = -1;
}

/* Gone from the agent's books once exited, its group empty, pipes closed. */
static void maybe_free(struct aproc *p) {
  if (!p->exited || !p->gone || p->out[0] >= 0 || p->out[1] >= 0) return;
  for (struct aproc **pp = &procs; *pp; pp = &(*pp)->next)
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  close_fd(&p->in);
  free(p->inq.p);
  free(p);
}

static void check_gone(struct aproc *p) {
  if (!p->exited || p->gone || group_live(p->pid)) return;
  p->gone = true;
  reaper_remove(p->pid);
  close_fd(&p->pidfd);
  frame(A_GONE, p->id, NULL, 0);
}

static void read_out(struct aproc *p, int s);

static void on_exit_status(struct aproc *p, int status) {
  if (p->exited) return;
  p->exited = true;
  /* What it wrote before it exited goes first (a critical exit quotes it). */
  for (int s = 0; s < 2; s++)
    for (int i = 0; i < 64 && p->out[s] >= 0; i++) {
      int before = p->out[s];
      size_t q = outq.len;
      read_out(p, s);
      if (outq.len == q || p->out[s] != before) break;
    }
  char s[4];
  put32(s, (uint32_t)status);
  frame(A_EXIT, p->id, s, 4);
  check_gone(p);
}

static const char *item_str(const char *v, uint32_t n, char **keep) {
  char *s = malloc(n + 1);
  if (!s) _exit(70);
  memcpy(s, v, n);
  s[n] = '\0';
  *keep = s;
  return s;
}

static int pipe_nb(int fds[2], int nb_end) {
  if (pipe2(fds, O_CLOEXEC) < 0) return -errno;
  fcntl(fds[nb_end], F_SETFL, O_NONBLOCK);
  return 0;
}

static void do_spawn(uint32_t id, const char *d, size_t n) {
  if (find(id)) return reply_err(id, "process id %u is in use", id);
  /* Parse the items; the strings are copied into `keep` (freed at the end). */
  size_t nk = 0, na = 0, ne = 0, nu = 0;
  char **keep = calloc(n / 5 + 2, sizeof *keep);
  const char **args = calloc(n / 5 + 2, sizeof *args);
  const char **sets = calloc(n / 5 + 2, sizeof *sets);
  const char **unsets = calloc(n / 5 + 2, sizeof *unsets);
  const char *cwd = NULL, *in_mode = "null", *out_mode = "capture", *data = NULL;
  size_t data_len = 0;
  bool clear = false;
  for (size_t off = 0; off + 5 <= n;) {
    char tag = d[off];
    uint32_t len = get32(d + off + 1);
    if (len > n - off - 5) break;
    const char *v = d + off + 5;
    off += 5 + len;
    switch (tag) {
      case S_ARG:
        args[na++] = item_str(v, len, &keep[nk++]);
        break;
      case S_ENV:
        sets[ne++] = item_str(v, len, &keep[nk++]);
        break;
      case S_UNSET:
        unsets[nu++] = item_str(v, len, &keep[nk++]);
        break;
      case S_CLEAR:
        clear = true;
        break;
      case S_CWD:
        cwd = item_str(v, len, &keep[nk++]);
        break;
      case S_STDIN:
        in_mode = item_str(v, len, &keep[nk++]);
        break;
      case S_OUTPUT:
        out_mode = item_str(v, len, &keep[nk++]);
        break;
      case S_DATA:
        data = v;
        data_len = len;
        break;
      default:
        break;
    }
  }
  /* The environment: ours unless cleared, minus unsets and overridden keys. */
  size_t nenv = 0;
  for (char **e = environ; !clear && *e; e++) nenv++;
  char **envp = calloc(nenv + ne + 1, sizeof *envp);
  size_t k = 0;
  for (char **e = environ; !clear && *e; e++) {
    const char *eq = strchr(*e, '=');
    size_t kl = eq ? (size_t)(eq - *e) : strlen(*e);
    bool drop = false;
    for (size_t i = 0; i < nu && !drop; i++)
      drop = strlen(unsets[i]) == kl && strncmp(unsets[i], *e, kl) == 0;
    for (size_t i = 0; i < ne && !drop; i++)
      drop = strncmp(sets[i], *e, kl) == 0 && sets[i][kl] == '=';
    if (!drop) envp[k++] = *e;
  }
  for (size_t i = 0; i < ne; i++) envp[k++] = (char *)sets[i];
  envp[k] = NULL;
  const char *path_env = NULL;
  for (char **e = envp; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) path_env = *e + 5;
  args[na] = NULL;

  char path[4096];
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1};
  bool capture = strcmp(out_mode, "capture") == 0;
  bool piped_in = data || strcmp(in_mode, "pipe") == 0;
  int r = na == 0
              ? -ENOENT
              : spawn_lookup(args[0], path_env ? path_env : SPAWN_DEFAULT_PATH, path, sizeof path);
  if (na == 0) {
    reply_err(id, "cannot spawn: empty argv");
    goto done;
  }
  if (r == -ENOENT && !strchr(args[0], '/')) {
    reply_err(id, "cannot spawn %s: not found on PATH", args[0]);
    goto done;
  }
  if (r) {
    reply_err(id, "cannot spawn %s: %s", args[0], strerror(-r));
    goto done;
  }
  if ((piped_in && (r = pipe_nb(in, 1))) || (capture && (r = pipe_nb(out, 0))) ||
      (capture && (r = pipe_nb(err, 0)))) {
    reply_err(id, "cannot spawn %s: pipe failed: %s", args[0], strerror(-r));
    goto closeall;
  }
  int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
  struct spawn_req req = {
      .path = path,
      .argv = (char *const *)args,
      .envp = envp,
      .cwd = cwd,
      .fd_in = piped_in ? in[0] : nul,
      /* "inherit" would write into our stdout, the wire: the agent's stderr instead */
      .fd_out = capture                            ? out[1]
                : strcmp(out_mode, "inherit") == 0 ? 2
                                                   : nul,
      .fd_err = capture                            ? err[1]
                : strcmp(out_mode, "inherit") == 0 ? 2
                                                   : nul,
  };
  pid_t pid;
  int pidfd;
  const char *stage;
  reaper_start();
  r = spawn_start(&req, &pid, &pidfd, &stage);
  close(nul);
  close_fd(&in[0]);
  close_fd(&out[1]);
  close_fd(&err[1]);
  if (r) {
    if (strcmp(stage, "exec") == 0)
      reply_err(id, "cannot spawn %s: %s", args[0], strerror(-r));
    else if (strcmp(stage, "chdir") == 0)
      reply_err(id, "cannot spawn %s: cwd %s: %s", args[0], cwd, strerror(-r));
    else
      reply_err(id, "cannot spawn %s: %s failed: %s", args[0], stage, strerror(-r));
    goto closeall;
  }
  reaper_add(pid, pidfd);
  struct aproc *p = calloc(1, sizeof *p);
  if (!p) _exit(70);
  p->id = id;
  p->pid = pid;
  p->pidfd = pidfd;
  p->out[0] = out[0];
  p->out[1] = err[0];
  p->in = in[1];
  p->next = procs;
  procs = p;
  char pb[4];
  put32(pb, (uint32_t)pid);
  frame(A_PID, id, pb, 4);
  if (data) {
    buf_put(&p->inq, data, data_len);
    p->in_close_after = true;
  }
  goto done;
closeall:
  for (int i = 0; i < 2; i++) {
    close_fd(&in[i]);
    close_fd(&out[i]);
    close_fd(&err[i]);
  }
done:
  for (size_t i = 0; i < nk; i++) free(keep[i]);
  free(keep);
  free(args);
  free(sets);
  free(unsets);
  free(envp);
}

static void read_out(struct aproc *p, int s) {
  static char b[CHUNK + 1];
  for (int i = 0; i < 4 && p->out[s] >= 0; i++) {
    ssize_t k = read(p->out[s], b + 1, CHUNK);
    if (k > 0) {
      b[0] = (char)s;
      frame(A_OUT, p->id, b, (size_t)k + 1);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno == EAGAIN) return;
    close_fd(&p->out[s]);
    char c = (char)s;
    frame(A_EOF, p->id, &c, 1);
  }
}

static void write_in(struct aproc *p) {
  while (p->in >= 0 && p->inq.off < p->inq.len) {
    ssize_t k = write(p->in, p->inq.p + p->inq.off, p->inq.len - p->inq.off);
    if (k > 0) {
      p->inq.off += (size_t)k;
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && errno == EAGAIN) return;
    close_fd(&p->in); /* EPIPE: the reader is gone; later writes are dropped */
  }
  if (p->inq.off == p->inq.len) p->inq.off = p->inq.len = 0;
  if (p->in_close_after && p->inq.len == 0) close_fd(&p->in);
}

/* }==== */

/* {==== files, ports, directories ==== */

static void do_put(uint32_t id, const char *d, size_t n) {
  if (n < 9) return reply_err(id, "put: short request");
  int flags = (unsigned char)d[0];
  uint32_t mode = get32(d + 1), plen = get32(d + 5);
  if (plen > n - 9 || plen >= 4000) return reply_err(id, "put: bad path");
  char path[4096], tmp[4200];
  memcpy(path, d + 9, plen);
  path[plen] = '\0';
  snprintf(tmp, sizeof tmp, "%s.atomlua-put", path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC | ((flags & 1) ? O_TRUNC : O_APPEND),
                (mode_t)(mode & 07777));
  if (fd < 0) return reply_err(id, "put %s: %s", path, strerror(errno));
  const char *data = d + 9 + plen;
  size_t left = n - 9 - plen;
  while (left > 0) {
    ssize_t k = write(fd, data, left);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) {
      int e = errno;
      close(fd);
      return reply_err(id, "put %s: %s", path, strerror(e));
    }
    data += k;
    left -= (size_t)k;
  }
  close(fd);
  if ((flags & 2) && (chmod(tmp, (mode_t)(mode & 07777)) < 0 || rename(tmp, path) < 0))
    return reply_err(id, "put %s: %s", path, strerror(errno));
  frame(A_OK, id, NULL, 0);
}

static void do_get(uint32_t id, const char *d, size_t n) {
  char path[4096];
  if (n >= sizeof path) return reply_err(id, "get: path too long");
  memcpy(path, d, n);
  path[n] = '\0';
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0 || fstat(fd, &st) < 0) {
    int e = errno;
    if (fd >= 0) close(fd);
    return reply_err(id, "get %s: %s", path, strerror(e));
  }
  if (st.st_size > AGENT_FRAME_MAX - 64) {
    close(fd);
    return reply_err(id, "get %s: larger than %d MiB", path, AGENT_FRAME_MAX >> 20);
  }
  char *b = malloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (b && got < (size_t)st.st_size) {
    ssize_t k = read(fd, b + got, (size_t)st.st_size - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += (size_t)k;
  }
  close(fd);
  frame(A_OK, id, b, got);
  free(b);
}

static void do_port(uint32_t id) {
  if (!ports_L) {
    ports_L = luaL_newstate();
    lua_newtable(ports_L);
    luaL_setfuncs(ports_L, ports_lib, 0); /* ports.c's free_port, the same locks */
  }
  lua_State *L = ports_L;
  lua_getfield(L, 1, "free_port");
  if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
    const char *m =
        lua_type(L, -1) == LUA_TTABLE ? (lua_getfield(L, -1, "message"), "") : lua_tostring(L, -1);
    reply_err(id, "free_port: %s", *m ? m : lua_tostring(L, -1));
    lua_settop(L, 1);
    return;
  }
  char s[16];
  snprintf(s, sizeof s, "%d", (int)lua_tointeger(L, -1));
  lua_settop(L, 1);
  frame(A_OK, id, s, strlen(s));
}

static void do_dir(uint32_t id, const char *d, size_t n) {
  if (ndirs >= 64) return reply_err(id, "dir: too many run directories");
  const char *tmpd = getenv("TMPDIR");
  char t[4096];
  snprintf(t, sizeof t, "%s/atomlua-host-XXXXXX", tmpd && *tmpd ? tmpd : "/tmp");
  if (!mkdtemp(t)) return reply_err(id, "dir %s: %s", t, strerror(errno));
  dirs[ndirs] = strdup(t);
  dir_keep[ndirs++] = n > 0 && d[0];
  frame(A_OK, id, t, strlen(t));
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  remove(path);
  return 0;
}

/* }==== */

/* {==== the loop ==== */

static void stop_cb(int sig) {
  (void)sig;
  ssize_t r = write(stop_pipe[1], "x", 1);
  (void)r;
}

static bool handle(int type, uint32_t id, const char *d, size_t n) {
  struct aproc *p;
  switch (type) {
    case A_HELLO: {
      uint32_t v = n >= 4 ? get32(d) : 0;
      if (v != AGENT_PROTO) {
        char m[256];
        snprintf(m, sizeof m,
                 "atomlua agent %s speaks protocol %d, the driving atomlua %.*s speaks %u: "
                 "install the same atomlua version on both ends",
                 ATOM_VERSION, AGENT_PROTO, n > 4 ? (int)(n - 4) : 0, d + 4, v);
        frame(A_FATAL, 0, m, strlen(m));
        exit_code = 2;
        return false;
      }
      return true;
    }
    case A_SPAWN:
      do_spawn(id, d, n);
      return true;
    case A_SIGNAL:
      if ((p = find(id)) && !p->gone && n >= 4) {
        int sig = (int)get32(d);
        reaper_signal_group(p->pid, p->pidfd, sig);
      }
      return true;
    case A_WRITE:
      if ((p = find(id)) && p->in >= 0 && !p->in_close_after) {
        if (p->inq.len - p->inq.off + n > IN_MAX)
          close_fd(&p->in); /* a reader that never reads */
        else
          buf_put(&p->inq, d, n);
      }
      return true;
    case A_CLOSE:
      if ((p = find(id))) p->in_close_after = true;
      return true;
    case A_PORT:
      do_port(id);
      return true;
    case A_PUT:
      do_put(id, d, n);
      return true;
    case A_GET:
      do_get(id, d, n);
      return true;
    case A_DIR:
      do_dir(id, d, n);
      return true;
    default:
      reply_err(id, "unknown request type %d", type);
      return true;
  }
}

/* Parse what stdin gave; false when the agent must end. */
static bool parse_input(void) {
  while (inbuf.len - inbuf.off >= AGENT_HDR) {
    const char *h = inbuf.p + inbuf.off;
    uint32_t len = get32(h);
    if (len < 5 || len > AGENT_FRAME_MAX) {
      char m[128];
      snprintf(m, sizeof m, "bad frame length %u on stdin (is a terminal or a shell talking?)",
               len);
      frame(A_FATAL, 0, m, strlen(m));
      exit_code = 2;
      return false;
    }
    if (inbuf.len - inbuf.off < 4 + (size_t)len) break;
    bool go = handle(h[4], get32(h + 5), h + AGENT_HDR, len - 5);
    inbuf.off += 4 + (size_t)len;
    if (!go) return false;
  }
  if (inbuf.off == inbuf.len) inbuf.off = inbuf.len = 0;
  return true;
}

static void shutdown_all(void) {
  for (struct aproc *p = procs; p; p = p->next)
    if (!p->gone) reaper_signal_group(p->pid, p->pidfd, SIGKILL);
  /* Reap the leaders (bounded: SIGKILL is not blocked by anything). */
  for (int round = 0; round < 200; round++) {
    bool left = false;
    for (struct aproc *p = procs; p; p = p->next) {
      if (p->exited) continue;
      int st;
      pid_t r = waitpid(p->pid, &st, WNOHANG);
      if (r == p->pid || (r < 0 && errno == ECHILD))
        p->exited = true;
      else
        left = true;
    }
    if (!left) break;
    usleep(10000);
  }
  for (int i = 0; i < ndirs; i++)
    if (!dir_keep[i]) nftw(dirs[i], rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

int agent_main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  if (isatty(0)) {
    fprintf(stderr,
            "atomlua agent: stdin is a terminal; the agent is started by atom.host{} through a "
            "transport (ssh -T, kubectl exec -i, docker exec -i), not by hand\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  if (pipe2(stop_pipe, O_CLOEXEC | O_NONBLOCK) < 0) return 70;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = stop_cb;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  /* Daemons that double-fork come back to us, to be reaped (and killed at the end). */
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
  char hello[64];
  put32(hello, AGENT_PROTO);
  size_t vl = strlen(ATOM_VERSION);
  memcpy(hello + 4, ATOM_VERSION, vl);
  frame(A_HELLO_R, 0, hello, 4 + vl);
  bool running = true;
  struct pollfd *pf = NULL;
  struct aproc **who = NULL;
  int *what = NULL;
  size_t pcap = 0;
  while (running) {
    size_t np = 0, need = 3;
    for (struct aproc *p = procs; p; p = p->next) need += 4;
    if (need > pcap) {
      pcap = need * 2;
      struct pollfd *npf = realloc(pf, pcap * sizeof *pf);
      if (!npf) _exit(70);
      pf = npf;
      struct aproc **nwho = realloc(who, pcap * sizeof *who);
      if (!nwho) _exit(70);
      who = nwho;
      int *nwhat = realloc(what, pcap * sizeof *what);
      if (!nwhat) _exit(70);
      what = nwhat;
    }
    /* Stop reading requests while the wire out is backed up: a bound. */
    bool backed_up = outq.len - outq.off > 8 * 1024 * 1024;
    pf[np] = (struct pollfd){.fd = backed_up ? -1 : 0, .events = POLLIN};
    what[np++] = -1;
    pf[np] = (struct pollfd){.fd = stop_pipe[0], .events = POLLIN};
    what[np++] = -2;
    if (outq.len > outq.off) {
      pf[np] = (struct pollfd){.fd = 1, .events = POLLOUT};
      what[np++] = -3;
    }
    bool lingering = false;
    for (struct aproc *p = procs; p; p = p->next) {
      for (int s = 0; s < 2; s++)
        if (p->out[s] >= 0 && !backed_up) {
          pf[np] = (struct pollfd){.fd = p->out[s], .events = POLLIN};
          who[np] = p;
          what[np++] = s;
        }
      if (!p->exited && p->pidfd >= 0) {
        pf[np] = (struct pollfd){.fd = p->pidfd, .events = POLLIN};
        who[np] = p;
        what[np++] = 2;
      }
      if (p->in >= 0 && p->inq.len > p->inq.off) {
        pf[np] = (struct pollfd){.fd = p->in, .events = POLLOUT};
        who[np] = p;
        what[np++] = 3;
      }
      if (p->exited && !p->gone) lingering = true;
    }
    /* Without pidfds, exits are found by polling waitpid. */
    int r = poll(pf, np, lingering ? 50 : 200);
    if (r < 0 && errno != EINTR) break;
    for (size_t i = 0; r > 0 && i < np; i++) {
      if (!pf[i].revents) continue;
      if (what[i] == -1) {
        char b[CHUNK];
        ssize_t k = read(0, b, sizeof b);
        if (k > 0) {
          buf_put(&inbuf, b, (size_t)k);
          if (!parse_input()) running = false;
        } else if (k == 0 || (errno != EINTR && errno != EAGAIN)) {
          running = false; /* stdin closed: the run is over */
        }
      } else if (what[i] == -2) {
        running = false;
      } else if (what[i] == -3) {
        flush_out(false);
      } else if (what[i] == 3) {
        write_in(who[i]);
      } else if (what[i] < 2) {
        read_out(who[i], what[i]);
      }
    }
    /* Exits: every child of ours, and orphans reparented to us. */
    int st;
    pid_t w;
    while ((w = waitpid(-1, &st, WNOHANG)) > 0)
      for (struct aproc *p = procs; p; p = p->next)
        if (p->pid == w) on_exit_status(p, st);
    for (struct aproc *p = procs, *next; p; p = next) {
      next = p->next;
      if (p->in >= 0 && p->inq.len == p->inq.off && p->in_close_after) close_fd(&p->in);
      if (p->exited && !p->gone) check_gone(p);
      maybe_free(p);
    }
    flush_out(false);
  }
  flush_out(true);
  shutdown_all();
  free(pf);
  free(who);
  free(what);
  return exit_code;
}

/* }==== */

/* netns.c — hosts and drop rules of isolated runs (SPEC §11), the mechanism
 * under lua/atom/net.lua. A host is a network namespace held by an fd (no
 * process, no /run/netns mount: it dies with atomlua), linked to the run's
 * namespace by a veth pair: host N is 10.77.0.N on its eth0, the run's
 * namespace is 10.77.0.1 (on lo) and routes between hosts. Everything is
 * set up with rtnetlink from this thread: unshare(CLONE_NEWNET) makes the
 * new namespace, a netlink socket opened there keeps talking to it, and
 * setns returns the thread to the run's namespace at once. Rules go through
 * libnftables (dlopen'ed on first use, so atomlua needs it only for rules)
 * into one table of our own, `inet atomlua`, which dies with the namespace. */
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/veth.h>
#include <net/if.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "atom.h"

#define HOST_MT "atom.host"

/* {==== rtnetlink ==== */

struct nlreq {
  union {
    struct nlmsghdr h;
    char buf[1024];
  };
};

static void nl_init(struct nlreq *r, int type, int flags, const void *hdr, size_t hlen) {
  memset(r, 0, sizeof *r);
  r->h.nlmsg_len = NLMSG_LENGTH(hlen);
  r->h.nlmsg_type = (unsigned short)type;
  r->h.nlmsg_flags = (unsigned short)(NLM_F_REQUEST | NLM_F_ACK | flags);
  memcpy(r->buf + NLMSG_HDRLEN, hdr, hlen);
}

static struct rtattr *nl_attr(struct nlreq *r, int type, const void *data, size_t len) {
  struct rtattr *a = (struct rtattr *)(r->buf + NLMSG_ALIGN(r->h.nlmsg_len));
  a->rta_type = (unsigned short)type;
  a->rta_len = (unsigned short)RTA_LENGTH(len);
  if (len) memcpy(RTA_DATA(a), data, len);
  r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
  return a;
}

static void nl_nest_end(struct nlreq *r, struct rtattr *nest) {
  nest->rta_len = (unsigned short)(r->buf + r->h.nlmsg_len - (char *)nest);
}

/* Send one request and wait for its ack; the answer's ifinfomsg index goes
 * to *index when asked (RTM_GETLINK). Returns 0 or -errno. */
static int nl_talk(int fd, struct nlreq *r, int *index) {
  static unsigned seq;
  r->h.nlmsg_seq = ++seq;
  if (send(fd, &r->h, r->h.nlmsg_len, 0) < 0) return -errno;
  char buf[8192];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n);
         h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != r->h.nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        struct nlmsgerr *e = NLMSG_DATA(h);
        return e->error;
      }
      if (h->nlmsg_type == RTM_NEWLINK && index) {
        struct ifinfomsg *ifi = NLMSG_DATA(h);
        *index = ifi->ifi_index;
      }
    }
  }
}

static int nl_open(void) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return -errno;
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int e = -errno;
    close(fd);
    return e;
  }
  return fd;
}

static int link_up(int fd, int index) {
  struct nlreq r;
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC, .ifi_index = index};
  ifi.ifi_flags = IFF_UP;
  ifi.ifi_change = IFF_UP;
  nl_init(&r, RTM_NEWLINK, 0, &ifi, sizeof ifi);
  return nl_talk(fd, &r, NULL);
}

static int link_index(int fd, const char *name) {
  struct nlreq r;
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
  nl_init(&r, RTM_GETLINK, 0, &ifi, sizeof ifi);
  nl_attr(&r, IFLA_IFNAME, name, strlen(name) + 1);
  int index = 0;
  int e = nl_talk(fd, &r, &index);
  return e < 0 ? e : index ? index : -ENODEV;
}

static int addr_add(int fd, int index, uint32_t addr) {
  struct nlreq r;
  struct ifaddrmsg ifa = {.ifa_family = AF_INET, .ifa_prefixlen = 32, .ifa_index = (unsigned)index};
  nl_init(&r, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &ifa, sizeof ifa);
  nl_attr(&r, IFA_LOCAL, &addr, 4);
  nl_attr(&r, IFA_ADDRESS, &addr, 4);
  return nl_talk(fd, &r, NULL);
}

/* A route to dst/len over link `index`, through gw when gw != 0. */
static int route_add(int fd, int index, uint32_t dst, int len, uint32_t gw) {
  struct nlreq r;
  struct rtmsg rt = {.rtm_family = AF_INET,
                     .rtm_dst_len = (unsigned char)len,
                     .rtm_table = RT_TABLE_MAIN,
                     .rtm_protocol = RTPROT_STATIC,
                     .rtm_scope = gw ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK,
                     .rtm_type = RTN_UNICAST};
  nl_init(&r, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &rt, sizeof rt);
  if (len) nl_attr(&r, RTA_DST, &dst, 4);
  if (gw) nl_attr(&r, RTA_GATEWAY, &gw, 4);
  nl_attr(&r, RTA_OIF, &index, 4);
  return nl_talk(fd, &r, NULL);
}

/* A veth pair: `name` here, `peer` (named eth0) in the namespace of ns_fd. */
static int veth_add(int fd, const char *name, int ns_fd) {
  struct nlreq r;
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
  nl_init(&r, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifi, sizeof ifi);
  nl_attr(&r, IFLA_IFNAME, name, strlen(name) + 1);
  struct rtattr *info = nl_attr(&r, IFLA_LINKINFO, NULL, 0);
  nl_attr(&r, IFLA_INFO_KIND, "veth", 4);
  struct rtattr *data = nl_attr(&r, IFLA_INFO_DATA, NULL, 0);
  struct rtattr *peer = nl_attr(&r, VETH_INFO_PEER, NULL, 0);
  struct ifinfomsg pifi = {.ifi_family = AF_UNSPEC};
  r.h.nlmsg_len += NLMSG_ALIGN(sizeof pifi);
  memcpy((char *)RTA_DATA(peer), &pifi, sizeof pifi);
  nl_attr(&r, IFLA_IFNAME, "eth0", 5);
  nl_attr(&r, IFLA_NET_NS_FD, &ns_fd, 4);
  nl_nest_end(&r, peer);
  nl_nest_end(&r, data);
  nl_nest_end(&r, info);
  return nl_talk(fd, &r, NULL);
}

static int link_del(int fd, const char *name) {
  struct nlreq r;
  struct ifinfomsg ifi = {.ifi_family = AF_UNSPEC};
  nl_init(&r, RTM_DELLINK, 0, &ifi, sizeof ifi);
  nl_attr(&r, IFLA_IFNAME, name, strlen(name) + 1);
  return nl_talk(fd, &r, NULL);
}

/* }==== */

/* {==== the run's namespace and hosts ==== */

static int run_ns = -1; /* fd of the run's network namespace */
static int run_nl = -1; /* netlink socket there */
static int next_host = 2;

static uint32_t host_addr(int n) { return htonl((10u << 24) | (77u << 16) | (unsigned)n); }

/* Once per run: 10.77.0.1 on lo and forwarding on. */
static int run_setup(const char **stage) {
  if (run_nl >= 0) return 0;
  int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return *stage = "open the run's namespace", -errno;
  int nl = nl_open();
  if (nl < 0) {
    close(fd);
    return *stage = "netlink", nl;
  }
  int e = addr_add(nl, 1, host_addr(1));
  if (e < 0) {
    *stage = "address 10.77.0.1";
  } else {
    int f = open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC);
    if (f < 0 || write(f, "1\n", 2) != 2) e = -errno, *stage = "ip_forward";
    if (f >= 0) close(f);
  }
  if (e < 0) {
    close(nl);
    close(fd);
    return e;
  }
  run_ns = fd;
  run_nl = nl;
  return 0;
}

struct host {
  int ns;        /* namespace fd, -1 once closed */
  int n;         /* 10.77.0.n */
  char veth[16]; /* our end in the run's namespace */
};

/* A fresh namespace: fd and a netlink socket inside it. This thread enters
 * it only between unshare and setns; nothing else runs meanwhile. */
static int ns_new(int *ns_out, int *nl_out, const char **stage) {
  if (unshare(CLONE_NEWNET) < 0) return *stage = "unshare", -errno;
  int ns = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  int e = ns < 0 ? -errno : 0;
  int nl = e ? -1 : nl_open();
  if (nl < 0 && !e) e = nl;
  if (setns(run_ns, CLONE_NEWNET) < 0) {
    /* Stuck in the wrong namespace: nothing afterwards would be right. */
    fprintf(stderr, "atomlua: cannot return to the run's network namespace: %s\n", strerror(errno));
    abort();
  }
  if (e) {
    if (ns >= 0) close(ns);
    *stage = "open the new namespace";
    return e;
  }
  *ns_out = ns;
  *nl_out = nl;
  return 0;
}

static int host_build(struct host *h, const char **stage) {
  int e = run_setup(stage);
  if (e) return e;
  int nl = -1;
  if ((e = ns_new(&h->ns, &nl, stage))) return e;
  snprintf(h->veth, sizeof h->veth, "atom%d", h->n);
  uint32_t me = host_addr(h->n), gw = host_addr(1);
  int ri, hi;
  if ((e = veth_add(run_nl, h->veth, h->ns)) < 0) {
    *stage = "veth";
    h->veth[0] = 0;
  } else if ((ri = link_index(run_nl, h->veth)) < 0) {
    e = ri, *stage = "veth index";
  } else if ((e = link_up(run_nl, ri)) < 0) {
    *stage = "veth up";
  } else if ((e = route_add(run_nl, ri, me, 32, 0)) < 0) {
    *stage = "route to the host";
  } else if ((e = link_up(nl, 1)) < 0) {
    *stage = "host lo up";
  } else if ((hi = link_index(nl, "eth0")) < 0) {
    e = hi, *stage = "host eth0";
  } else if ((e = addr_add(nl, hi, me)) < 0) {
    *stage = "host address";
  } else if ((e = link_up(nl, hi)) < 0) {
    *stage = "host eth0 up";
  } else if ((e = route_add(nl, hi, gw, 32, 0)) < 0) {
    *stage = "host route";
  } else if ((e = route_add(nl, hi, 0, 0, gw)) < 0) {
    *stage = "host default route";
  }
  close(nl);
  if (e < 0) {
    if (h->veth[0]) link_del(run_nl, h->veth);
    close(h->ns);
    h->ns = -1;
  }
  return e;
}

static void host_close(struct host *h) {
  if (h->ns < 0) return;
  /* Deleting our end removes the pair: the host is unreachable at once,
   * even while a process still holds its namespace. */
  if (run_nl >= 0) link_del(run_nl, h->veth);
  close(h->ns);
  h->ns = -1;
}

/* _atom.host_new() -> host userdata, "10.77.0.N" */
static int l_host_new(lua_State *L) {
  if (!isolate_active())
    return util_error(L, "usage", "atom.net.host needs an isolated run (atomlua run --isolate)");
  if (next_host > 65533) return util_error(L, "usage", "atom.net.host: too many hosts");
  struct host *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->ns = -1;
  h->n = next_host;
  h->veth[0] = 0;
  luaL_setmetatable(L, HOST_MT);
  const char *stage = "?";
  int e = host_build(h, &stage);
  if (e < 0) return util_error(L, "io", "cannot make a host: %s: %s", stage, strerror(-e));
  next_host++;
  lua_pushfstring(L, "10.77.%d.%d", h->n >> 8, h->n & 255);
  return 2;
}

static struct host *check_host(lua_State *L) { return luaL_checkudata(L, 1, HOST_MT); }

/* h:fd() -> the namespace fd for spawn, or nil once closed. */
static int l_host_fd(lua_State *L) {
  struct host *h = check_host(L);
  if (h->ns < 0) return 0;
  lua_pushinteger(L, h->ns);
  return 1;
}

static int l_host_close(lua_State *L) {
  host_close(check_host(L));
  return 0;
}

static int l_isolated(lua_State *L) {
  lua_pushboolean(L, isolate_active());
  return 1;
}

/* }==== */

/* {==== rules through libnftables ==== */

struct nft_ctx;
#define NFT_OUT_HANDLE (1u << 3)
#define NFT_OUT_ECHO (1u << 5)
static struct {
  struct nft_ctx *(*ctx_new)(uint32_t);
  int (*buffer_output)(struct nft_ctx *);
  int (*buffer_error)(struct nft_ctx *);
  const char *(*get_output)(struct nft_ctx *);
  const char *(*get_error)(struct nft_ctx *);
  unsigned (*get_flags)(struct nft_ctx *);
  void (*set_flags)(struct nft_ctx *, unsigned);
  int (*run)(struct nft_ctx *, const char *);
} nft;
static struct nft_ctx *nft_ctx;

static const char *nft_load(void) {
  if (nft_ctx) return NULL;
  void *lib = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!lib) return "libnftables.so.1 is missing (install nftables / libnftables1)";
  static const char *const names[] = {"nft_ctx_new",
                                      "nft_ctx_buffer_output",
                                      "nft_ctx_buffer_error",
                                      "nft_ctx_get_output_buffer",
                                      "nft_ctx_get_error_buffer",
                                      "nft_ctx_output_get_flags",
                                      "nft_ctx_output_set_flags",
                                      "nft_run_cmd_from_buffer"};
  void **slots = (void **)&nft;
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (!(slots[i] = dlsym(lib, names[i]))) return "libnftables.so.1 lacks a function we need";
  nft_ctx = nft.ctx_new(0);
  if (!nft_ctx) return "nft_ctx_new failed";
  nft.buffer_output(nft_ctx);
  nft.buffer_error(nft_ctx);
  return NULL;
}

/* _atom.nft(commands [, echo]) -> output: run nft commands in the run's
 * namespace (one transaction); with echo, the output names new handles. */
static int l_nft(lua_State *L) {
  const char *cmds = luaL_checkstring(L, 1);
  bool echo = lua_toboolean(L, 2);
  const char *err = nft_load();
  if (err) return util_error(L, "io", "nftables: %s", err);
  unsigned flags = nft.get_flags(nft_ctx) & ~(NFT_OUT_HANDLE | NFT_OUT_ECHO);
  nft.set_flags(nft_ctx, echo ? flags | NFT_OUT_HANDLE | NFT_OUT_ECHO : flags);
  int r = nft.run(nft_ctx, cmds);
  const char *out = nft.get_output(nft_ctx);
  const char *msg = nft.get_error(nft_ctx);
  if (r != 0) return util_error(L, "io", "nftables: %s", msg && *msg ? msg : "command failed");
  lua_pushstring(L, out ? out : "");
  return 1;
}

/* }==== */

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg netns_lib[] = {
    {"host_new", l_host_new}, {"isolated", l_isolated}, {"nft", l_nft}, {NULL, NULL}};

void netns_register(lua_State *L) {
  if (luaL_newmetatable(L, HOST_MT)) {
    static const luaL_Reg m[] = {{"fd", l_host_fd}, {"close", l_host_close}, {NULL, NULL}};
    lua_newtable(L);
    luaL_setfuncs(L, m, 0);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, l_host_close);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}

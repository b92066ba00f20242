/* lualib.c — opens the atomlua runtime in a lua_State: the `_atom` C library
 * (every subsystem's functions), luv on our one loop with our own callback
 * handler, and the embedded Lua modules of lua/ through package.preload.
 * Also the entry point of module mode, `require "atom"` from stock lua5.4. */
#include <dlfcn.h>
#include <ftw.h>
#include <luv/luv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atom.h"

struct embedded {
  const char *module, *chunkname;
  const unsigned char *data;
  size_t len;
};
extern const struct embedded embedded_modules[];

uv_loop_t *atom_loop;
static uv_loop_t loop_storage;

LUALIB_API int luaopen_luv(lua_State *L);

/* Load module `i` of the embedded list, or from $ATOMLUA_PATH/<path> during
 * development, with the chunk name of its source path. */
static int embedded_loader(lua_State *L) {
  const struct embedded *e = &embedded_modules[lua_tointeger(L, lua_upvalueindex(1))];
  const char *dev = getenv("ATOMLUA_PATH");
  int st;
  if (dev && *dev) {
    lua_pushfstring(L, "%s/%s", dev, e->chunkname + 1);
    FILE *f = fopen(lua_tostring(L, -1), "rb");
    if (!f) return luaL_error(L, "cannot open %s", lua_tostring(L, -1));
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t n;
    do {
      char *p = luaL_prepbuffer(&b);
      n = fread(p, 1, LUAL_BUFFERSIZE, f);
      luaL_addsize(&b, n);
    } while (n == LUAL_BUFFERSIZE);
    fclose(f);
    luaL_pushresult(&b);
    size_t len;
    const char *src = lua_tolstring(L, -1, &len);
    st = luaL_loadbufferx(L, src, len, e->chunkname, "t");
    lua_remove(L, -2);
    lua_remove(L, -2);
  } else {
    st = luaL_loadbufferx(L, (const char *)e->data, e->len, e->chunkname, "b");
  }
  if (st != LUA_OK) return lua_error(L);
  lua_pushstring(L, e->module);
  lua_call(L, 1, 1);
  return 1;
}

/* luv runs callbacks through this: an error in a luv callback fails the root
 * task like an unjoined child (SPEC §3 "Outside tasks"), never exit(). */
static int luv_callback_pcall(lua_State *L, int nargs, int nresults, int flags) {
  (void)flags;
  int top = lua_gettop(L) - nargs - 1;
  int st = lua_pcall(L, nargs, nresults, 0);
  if (st == LUA_OK) return nresults == LUA_MULTRET ? lua_gettop(L) - top : nresults;
  if (lua_type(L, -1) == LUA_TSTRING) {
    util_push_error(L, "error", "error in a luv callback: %s", lua_tostring(L, -1));
    lua_remove(L, -2);
  }
  sched_fail(L, sched_owner(NULL));
  return -st;
}

static int preload_self(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

static void loop_init(void) {
  if (atom_loop) return;
  uv_loop_init(&loop_storage);
  atom_loop = &loop_storage;
}

void runtime_init_loop(void) { loop_init(); }

/* `require "luv"`: luv on our loop with our callback handler, both set
 * before luaopen_luv. Opened on first use: it is a third of a start-up. */
static int open_luv(lua_State *L) {
  luv_set_loop(L, atom_loop);
  luv_set_callback(L, luv_callback_pcall);
  return luaopen_luv(L);
}

bool runtime_cli;

static void close_cb(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void runtime_close_handles(void) {
  timer_shutdown();
  sched_shutdown();
  uv_walk(atom_loop, close_cb, NULL);
  while (uv_run(atom_loop, UV_RUN_NOWAIT)) {
  }
}

/* {==== module mode ==== */

static int l_mkdir_p(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (util_mkdir_p(path) != 0) return util_error(L, "io", "cannot create directory %s", path);
  return 0;
}

LUALIB_API int luaopen_atom(lua_State *L);
LUALIB_API int luaopen_atom(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "luv");
  if (!lua_isnil(L, -1))
    return luaL_error(
        L, "require \"atom\" must come before require \"luv\" (atom opens luv on its own loop)");
  lua_pop(L, 2);
#ifdef __SANITIZE_ADDRESS__
  /* make check preloads the sanitizer runtimes into lua5.4 for this module;
   * the processes the specs start must not inherit them. Specs that start
   * another lua5.4 with this module put it back from ATOMLUA_SAN_PRELOAD. */
  const char *pre = getenv("LD_PRELOAD");
  if (pre) setenv("ATOMLUA_SAN_PRELOAD", pre, 1);
  unsetenv("LD_PRELOAD");
#endif
  /* Never unload: the preemption thread runs our code until the process
   * ends, and lua_close would dlclose the module under it. */
  Dl_info info;
  if (dladdr((void *)luaopen_atom, &info) && info.dli_fname)
    dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  runtime_open(L, false);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_getfield(L, -1, "atom");
  lua_pushstring(L, "atom");
  lua_call(L, 1, 1);
  return 1;
}

/* }==== */

/* luv's handles keep a luv_handle_t in data whose first field is the registry
 * ref of their userdata; ours keep NULL. (luv's own uv.walk asserts on
 * foreign handles, so the runtime walks the loop itself.) */
static void collect_luv_cb(uv_handle_t *h, void *arg) {
  lua_State *L = arg;
  if (!h->data || uv_is_closing(h)) return;
  lua_rawgeti(L, LUA_REGISTRYINDEX, *(int *)h->data);
  if (lua_isuserdata(L, -1))
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  else
    lua_pop(L, 1);
}

/* _atom.luv_handles() -> list of the open luv handles */
static int l_luv_handles(lua_State *L) {
  lua_newtable(L);
  uv_walk(atom_loop, collect_luv_cb, L);
  return 1;
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  (void)remove(path); /* best effort: keep going */
  return 0;
}

/* _atom.rm_rf(path): remove a run directory and everything in it. */
static int l_rm_rf(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  if (rmdir(path) == 0) return 0; /* empty: most runs write nothing */
  nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}

/* _atom.file_type(path) -> "file" | "directory" | "other", or nil when
 * stat fails (follows symlinks, like luv's fs_stat). */
static int l_file_type(lua_State *L) {
  struct stat st;
  if (stat(luaL_checkstring(L, 1), &st) != 0) return 0;
  lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "directory" : "other");
  return 1;
}

/* _atom.random_bytes(n) -> n bytes from the kernel's generator (getrandom),
 * or nil. */
static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 0 && n <= 256, 1, "0 to 256 bytes");
  char buf[256];
  if (getrandom(buf, (size_t)n, 0) != (ssize_t)n) return 0;
  lua_pushlstring(L, buf, (size_t)n);
  return 1;
}

/* _atom.isatty(fd) */
static int l_isatty(lua_State *L) {
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* _atom.where(level) -> "file:line" of the script's frame from `level` up
 * (1: the caller), or nothing. */
static int l_where(lua_State *L) {
  lua_Debug ar;
  if (!util_where_frame_from(L, (int)luaL_optinteger(L, 1, 1), &ar)) return 0;
  lua_pushfstring(L, "%s:%d", ar.short_src, ar.currentline);
  return 1;
}

static const luaL_Reg runtime_lib[] = {{"where", l_where},
                                       {"rm_rf", l_rm_rf},
                                       {"isatty", l_isatty},
                                       {"luv_handles", l_luv_handles},
                                       {"mkdir_p", l_mkdir_p},
                                       {"file_type", l_file_type},
                                       {"random_bytes", l_random_bytes},
                                       {NULL, NULL}};

/* The private C library `_atom`, in one place: every C function the Lua
 * modules may call, by subsystem (each table sits beside its functions).
 * The CLI's own functions are in `_cli` (main.c), apart. */
static const luaL_Reg *const atom_lib[] = {
    sched_lib,    /* sched_lua.c: tasks, groups, park/unpark, deadlines, stats */
    proc_lib,     /* proclua.c: spawn, signals, the owner's end */
    rawpipe_lib,  /* rawpipe.c: io.popen's pipes */
    http_lib,     /* http.c: requests on the curl multi handle */
    hstream_lib,  /* hstream.c: atom.http.stream */
    grpc_lib,     /* grpc.c: gRPC calls and streams */
    pb_lib,       /* pb.c: the protobuf codec's type pools */
    net_lib,      /* net.c: TCP streams, wait_port */
    ports_lib,    /* ports.c: free_port */
    ws_lib,       /* ws.c: WebSocket framing on a detached stream */
    netns_lib,    /* netns.c: hosts, nftables, --isolate */
    proxy_lib,    /* proxy.c: atom.proxy */
    json_lib,     /* json.c */
    bytes_lib,    /* bytes.c: base64, hex */
    work_lib,     /* work.c: atom.work */
    lincheck_lib, /* lincheck.c: the linearizability checker */
    remote_lib,   /* remote.c: the link to a host's agent (atom.host) */
    runtime_lib,  /* this file: files and the terminal */
    NULL};

/* Fill `_atom` (on top of the stack) with every subsystem's functions, and
 * register their types. */
static void fill_atom(lua_State *L) {
  for (int i = 0; atom_lib[i]; i++) luaL_setfuncs(L, atom_lib[i], 0);
  sched_register(L);
  proc_register(L);
  rawpipe_register(L);
  http_register(L);
  hstream_register(L);
  net_register(L);
  ports_register(L);
  ws_register(L);
  netns_register(L);
  proxy_register(L);
  json_register(L);
  remote_register(L);
}

/* __index of a CLI state's `_atom` until it is filled: the first key it
 * lacks fills it whole, so every function comes with its types. */
static int fill_on_demand(lua_State *L) {
  lua_settop(L, 2);
  lua_pushnil(L);
  lua_setmetatable(L, 1);
  lua_pushvalue(L, 1);
  fill_atom(L);
  lua_pop(L, 1);
  lua_rawget(L, 1);
  return 1;
}

/* What a CLI state's `_atom` starts with: functions that need no
 * subsystem's types (and the scheduler's, registered at once). The rest,
 * over half of `_atom` and its metatables, comes at the first other key
 * (fill_on_demand): on the main thread, which alone runs these states
 * until then. An empty run never needs it. */
struct start_set {
  const luaL_Reg *libs[4];
  const char *names[3];
  bool sched_types;
};
/* The control state: cli.lua and the reporters (files, the clock). */
static const struct start_set control_set = {{runtime_lib}, {"now"}, false};
/* A file state: what scenario.lua, atom and atom.task use to run a file. */
static const struct start_set file_set = {
    {runtime_lib, sched_lib, work_lib}, {"proc_cwd", "isolated"}, true};
static const struct start_set *start_set;

static void open_start_set(lua_State *L, const struct start_set *set) {
  for (int i = 0; i < 4 && set->libs[i]; i++) luaL_setfuncs(L, set->libs[i], 0);
  for (int n = 0; n < 3 && set->names[n]; n++)
    for (int i = 0; atom_lib[i]; i++)
      for (const luaL_Reg *r = atom_lib[i]; r->name; r++)
        if (strcmp(r->name, set->names[n]) == 0) {
          lua_pushcfunction(L, r->func);
          lua_setfield(L, -2, r->name);
        }
  if (set->sched_types) sched_register(L);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, fill_on_demand);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
}

/* The CLI's states: `_atom` filled on first use (above). */
int runtime_open_control(lua_State *L) {
  start_set = &control_set;
  return runtime_open(L, true);
}

int runtime_open_file(lua_State *L) {
  start_set = &file_set;
  return runtime_open(L, true);
}

int runtime_open(lua_State *L, bool cli) {
  runtime_cli = cli;
  loop_init();
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  /* Tables made at their final size: growing them rehashes every entry
   * again at each doubling (a tenth of the runtime's opening). */
  static int n_funcs = -1, n_modules;
  if (n_funcs < 0) {
    n_funcs = 0;
    for (int i = 0; atom_lib[i]; i++)
      for (const luaL_Reg *r = atom_lib[i]; r->name; r++) n_funcs++;
    for (n_modules = 0; embedded_modules[n_modules].module;) n_modules++;
  }
  lua_createtable(L, 0, n_funcs + 16); /* _atom, and what the subsystems add */
  if (start_set) {
    open_start_set(L, start_set);
    start_set = NULL;
  } else {
    fill_atom(L);
  }
  lua_pushboolean(L, cli);
  lua_setfield(L, -2, "cli");
  lua_pushstring(L, ATOM_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "_atom");
  lua_pop(L, 2);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  if (cli) { /* a new state's package.preload, still empty: made again at its final size */
    lua_pop(L, 1);
    lua_createtable(L, 0, n_modules + 2);
    lua_getglobal(L, "package");
    lua_pushvalue(L, -2);
    lua_setfield(L, -2, "preload");
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  }
  /* busted's insulation empties package.loaded between spec files, not
   * package.preload: let `require "_atom"` find the same table again. */
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_getfield(L, -1, "_atom");
  lua_pushcclosure(L, preload_self, 1);
  lua_setfield(L, -3, "_atom");
  lua_pop(L, 1);
  lua_pushcfunction(L, open_luv);
  lua_setfield(L, -2, "luv");
  for (int i = 0; embedded_modules[i].module; i++) {
    lua_pushinteger(L, i);
    lua_pushcclosure(L, embedded_loader, 1);
    lua_setfield(L, -2, embedded_modules[i].module);
  }
  lua_pop(L, 1);
  return 0;
}

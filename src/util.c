/* util.c — atom error values raised from C, argument checks worded like Lua's,
 * counted registry references, and small helpers shared by every src/ file.
 * The error metatable itself is made by lua/atom/errors.lua ("atom.error"). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "atom.h"

static int live_refs;
static uint64_t run_start_ns;

double util_now(void) {
  if (run_start_ns == 0) run_start_ns = uv_hrtime();
  return (double)(uv_hrtime() - run_start_ns) / 1e9;
}

double util_now_loop(void) {
  if (run_start_ns == 0) return util_now();
  uint64_t ns = uv_now(atom_loop) * 1000000ull;
  return ns > run_start_ns ? (double)(ns - run_start_ns) / 1e9 : 0;
}

static bool is_internal(const char *src) {
  return strncmp(src, "@lua/atom/", 10) == 0 || src[0] == '=';
}

bool util_where_frame(lua_State *L, lua_Debug *ar) { return util_where_frame_from(L, 0, ar); }

/* The one walk that finds the script's frame, for C and (as _atom.where)
 * for lua/atom/errors.lua. */
bool util_where_frame_from(lua_State *L, int level, lua_Debug *ar) {
  for (; lua_getstack(L, level, ar); level++) {
    if (!lua_getinfo(L, "Sl", ar)) continue;
    if (ar->currentline > 0 && !is_internal(ar->source)) return true;
  }
  return false;
}

const char *util_where(lua_State *L, char *buf, size_t size) {
  lua_Debug ar;
  if (!util_where_frame(L, &ar)) return NULL;
  snprintf(buf, size, "%s:%d", ar.short_src, ar.currentline);
  return buf;
}

/* Set by the scheduler, which sits above this file: pushes the name of the
 * task running in L and returns true, or pushes nothing and returns false. */
bool (*util_task_name_hook)(lua_State *L);

static void push_error_v(lua_State *L, const char *kind, const char *fmt, va_list ap) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushvfstring(L, fmt, ap);
  lua_setfield(L, -2, "message");
  char buf[512];
  if (util_where(L, buf, sizeof buf)) {
    lua_pushstring(L, buf);
    lua_setfield(L, -2, "where");
  }
  if (util_task_name_hook && util_task_name_hook(L)) lua_setfield(L, -2, "task");
  luaL_getmetatable(L, "atom.error");
  lua_setmetatable(L, -2);
  /* The traceback while the stack is still there (cancellations carry only
   * their file:line; they are made in sched.c). */
  luaL_tolstring(L, -1, NULL);
  luaL_traceback(L, L, lua_tostring(L, -1), 1);
  lua_setfield(L, -3, "traceback");
  lua_pop(L, 1);
}

void util_push_error(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_error_v(L, kind, fmt, ap);
  va_end(ap);
}

int util_error(lua_State *L, const char *kind, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  push_error_v(L, kind, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

int util_argerror(lua_State *L, int arg, const char *fname, const char *extramsg) {
  return util_error(L, "usage", "bad argument #%d to '%s' (%s)", arg, fname, extramsg);
}

int util_typeerror(lua_State *L, int arg, const char *fname, const char *tname) {
  const char *got = lua_isnone(L, arg) ? "no value" : luaL_typename(L, arg);
  lua_pushfstring(L, "%s expected, got %s", tname, got);
  return util_argerror(L, arg, fname, lua_tostring(L, -1));
}

lua_Number util_checknumber(lua_State *L, int arg, const char *fname) {
  int isnum;
  lua_Number n = lua_tonumberx(L, arg, &isnum);
  if (!isnum || lua_type(L, arg) != LUA_TNUMBER) util_typeerror(L, arg, fname, "number");
  return n;
}

double util_opttimeout(lua_State *L, int arg, const char *fname, double def) {
  double v = def;
  switch (lua_type(L, arg)) {
    case LUA_TNONE:
    case LUA_TNIL:
      return def;
    case LUA_TNUMBER:
      v = lua_tonumber(L, arg);
      break;
    case LUA_TTABLE:
      lua_getfield(L, arg, "timeout");
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return def;
      }
      if (lua_type(L, -1) != LUA_TNUMBER)
        util_argerror(L, arg, fname, "field 'timeout' must be a number");
      v = lua_tonumber(L, -1);
      lua_pop(L, 1);
      break;
    default:
      util_typeerror(L, arg, fname, "number or table");
  }
  if (!(v >= 0)) util_argerror(L, arg, fname, "timeout must be a non-negative number");
  return v;
}

int util_ref(lua_State *L) {
  live_refs++;
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

void util_unref(lua_State *L, int *ref) {
  if (*ref == LUA_NOREF || *ref == LUA_REFNIL) return;
  luaL_unref(L, LUA_REGISTRYINDEX, *ref);
  *ref = LUA_NOREF;
  live_refs--;
}

int util_live_refs(void) { return live_refs; }

int util_mkdir_p(const char *path) {
  char buf[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf) return -1;
  /* Most often the parents exist: one mkdir. */
  if (mkdir(path, 0777) == 0 || errno == EEXIST) return 0;
  memcpy(buf, path, n + 1);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
    *p = '/';
  }
  if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -1;
  return 0;
}

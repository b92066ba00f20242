/* floor_w6: W6's floor — what any Lua-on-libuv host must do to start and
 * stop: a Lua state with the standard libraries, a libuv loop run once (empty)
 * and both closed. Built like atomlua (Lua and libuv linked statically). */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <uv.h>

int main(void) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  lua_close(L);
  return 0;
}

/* net.c — placeholder until its issue lands. */
#include "atom.h"

void net_register(lua_State *L) { (void)L; }

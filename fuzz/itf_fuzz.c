/* itf_fuzz.c — libFuzzer harness for the ITF decoder (lua/atom/itf.lua, on
 * the JSON decoder), called as atom.itf.decode; any input must decode or
 * raise kind `itf`. */
#include "fuzz_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const kinds[] = {"itf", NULL};
  fuzz_call("itf", "decode", data, size, kinds);
  return 0;
}

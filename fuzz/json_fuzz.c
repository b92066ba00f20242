/* json_fuzz.c — libFuzzer harness for the JSON decoder (src/json.c), called
 * as atom.json.decode; any input must decode or raise kind `json`. */
#include "fuzz_lua.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const char *const kinds[] = {"json", NULL};
  fuzz_call("json", "decode", data, size, kinds);
  return 0;
}

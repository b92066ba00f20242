/* mem.c — the allocator of the CLI's scenario file states. When memory runs
 * out (malloc fails under `ulimit -v` or a full machine, or the state passes
 * ATOMLUA_MEM_LIMIT), Lua raises "not enough memory" wherever it was, often
 * far from any handler that could say which file it was. So the allocator
 * notes it, and releases a reserve block, so that the scheduler can stop the
 * file (sched.c) and the reports can still be written: the file ends with an
 * "out of memory" scenario error naming it. Module mode keeps the host's
 * allocator. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom.h"

/* Released at the first real failure: room for cancelling, reporting and
 * closing the state. */
#define RESERVE (16u << 20)

static struct {
  size_t used;  /* bytes the state holds */
  size_t limit; /* 0: none (ATOMLUA_MEM_LIMIT) */
  void *reserve;
  bool exhausted, announced;
  /* The last request that failed and was not given yet. Lua's core collects
   * garbage and asks again at once: a success of that same request means it
   * recovered. Failing again, or any other request (the failed one was
   * given up: an error was raised, e.g. by lauxlib's buffers, which do not
   * ask again), or a check from outside the allocator, is the real thing. */
  const void *fail_ptr;
  size_t fail_size;
  bool failed;
} M;

static void exhausted(void) {
  M.exhausted = true;
  free(M.reserve);
  M.reserve = NULL;
  /* Under the test limit, the same room; else half the released room at
   * most: code still running in the file (a loop that grows) must not take
   * what the reports need. */
  M.limit = M.limit ? M.limit + RESERVE : M.used + RESERVE / 2;
}

/* {==== small blocks ====
 * Blocks of up to 1 KiB (a task's record, its coroutine, stack and call
 * frames; most tables, strings and closures) come from free lists by size
 * class of 16 bytes, carved from 64 KiB slabs: no header per block, no
 * search, no consolidation. glibc's malloc and free were a quarter of the
 * instructions of 10,000 sleeping tasks (bench/README.md, W1), and their
 * 8-byte headers and rounding 5 % of the memory. Lua passes every block's
 * size back (osize), so the class is known without a header. Freed blocks
 * stay in their class for the next ones (and the next file's state). Under
 * AddressSanitizer every block comes from malloc, so that it sees each. */
#define SMALL_MAX 1024
#define SLAB (64u << 10)
#ifdef __SANITIZE_ADDRESS__
static bool is_small(size_t size) {
  (void)size;
  return false;
}
#else
static bool is_small(size_t size) { return size <= SMALL_MAX; }
#endif

static void *small_free[SMALL_MAX / 16 + 1]; /* by class: (size + 15) / 16 */
static char *slab_next, *slab_end;

static void small_put(void *p, size_t size) {
  size_t c = (size + 15) >> 4;
  *(void **)p = small_free[c];
  small_free[c] = p;
}

static void *small_get(size_t size) {
  size_t c = (size + 15) >> 4;
  void **p = small_free[c];
  if (p) {
    small_free[c] = *p;
    return p;
  }
  size_t n = c << 4;
  if ((size_t)(slab_end - slab_next) < n) {
    char *s = malloc(SLAB);
    if (!s) return NULL;
    if (slab_end > slab_next) small_put(slab_next, (size_t)(slab_end - slab_next)); /* the rest */
    slab_next = s;
    slab_end = s + SLAB;
  }
  p = (void **)slab_next;
  slab_next += n;
  return p;
}

/* realloc for Lua's blocks: old is ptr's size (0 without ptr), size > 0. */
static void *block_realloc(void *ptr, size_t old, size_t size) {
  bool small_old = ptr && is_small(old), small_new = is_small(size);
  if (!small_old && !small_new) return realloc(ptr, size);
  if (small_old && small_new && (old + 15) >> 4 == (size + 15) >> 4) return ptr;
  void *p = small_new ? small_get(size) : malloc(size);
  if (!p || !ptr) return p;
  memcpy(p, ptr, old < size ? old : size);
  if (small_old)
    small_put(ptr, old);
  else
    free(ptr);
  return p;
}

/* }==== */

static void *mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  size_t old = ptr ? osize : 0; /* without ptr, osize tells the kind of object */
  if (nsize == 0) {
    if (ptr && is_small(old))
      small_put(ptr, old);
    else
      free(ptr);
    M.used -= old;
    return NULL;
  }
  void *p = NULL;
  if (!M.limit || nsize <= old || M.used - old + nsize <= M.limit)
    p = block_realloc(ptr, old, nsize);
  bool again = M.failed && M.fail_ptr == ptr && M.fail_size == nsize;
  if (M.failed && (!p || !again) && !M.exhausted) exhausted();
  if (!p) {
    M.failed = true;
    M.fail_ptr = ptr;
    M.fail_size = nsize;
    return NULL;
  }
  M.failed = false;
  M.used = M.used - old + nsize;
  return p;
}

static int mem_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "atomlua: PANIC: unprotected error in call to Lua API (%s)\n",
          msg ? msg : "error object is not a string");
  return 0; /* then Lua aborts */
}

/* ATOMLUA_MEM_LIMIT: bytes, or with a K, M or G suffix. */
static size_t parse_limit(const char *s) {
  if (!s || !*s) return 0;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  switch (*end) {
    case 'k':
    case 'K':
      v <<= 10;
      break;
    case 'm':
    case 'M':
      v <<= 20;
      break;
    case 'g':
    case 'G':
      v <<= 30;
      break;
    default:
      break;
  }
  return (size_t)v;
}

lua_State *mem_newstate(void) {
  M.used = 0;
  M.limit = parse_limit(getenv("ATOMLUA_MEM_LIMIT"));
  M.exhausted = M.announced = false;
  M.failed = false;
  if (!M.reserve) M.reserve = malloc(RESERVE);
  lua_State *L = lua_newstate(mem_alloc, NULL);
  if (L) lua_atpanic(L, mem_panic);
  return L;
}

/* Called outside the allocator: a failure still pending was given up. */
bool mem_exhausted(void) {
  if (M.failed && !M.exhausted) exhausted();
  return M.exhausted;
}

bool mem_take_exhausted(void) {
  if (!mem_exhausted() || M.announced) return false;
  M.announced = true;
  return true;
}

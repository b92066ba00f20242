/* mem.c — the allocator of the CLI's scenario file states. When memory runs
 * out (malloc fails under `ulimit -v` or a full machine, or the state passes
 * ATOMLUA_MEM_LIMIT), Lua raises "not enough memory" wherever it was, often
 * far from any handler that could say which file it was. So the allocator
 * notes it, and releases a reserve block, so that the scheduler can stop the
 * file (sched.c) and the reports can still be written: the file ends with an
 * "out of memory" scenario error naming it. Both the file states and the
 * CLI's control state start on a bump arena while their modules load (the
 * start-up arena, below). Module mode keeps the host's allocator. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "atom.h"

/* {==== the start-up arena ====
 *
 * A new state allocates a few thousand small blocks while the runtime and
 * its modules load (the embedded bytecode's strings and prototypes, the
 * `_atom` table), nearly all of which live as long as the state: malloc
 * was a quarter of an empty run's instructions. Until mem_arena_end, blocks
 * come from a bump arena in bss (untouched pages cost nothing); freeing one
 * does nothing, growing the newest one extends it in place. Afterwards
 * (and when the arena is full) the state allocates with malloc as before;
 * arena blocks are then never reused, only released with the arena. */

#define ARENA_SIZE (1u << 20)
struct arena {
  char *next, *end;
  bool on;
  _Alignas(16) char mem[ARENA_SIZE];
};
static struct arena control_arena, file_arena;

static void arena_start(struct arena *a) {
  a->next = a->mem;
  a->end = a->mem + ARENA_SIZE;
  a->on = true;
}

static bool in_arena(const struct arena *a, const void *p) {
  return (const char *)p >= a->mem && (const char *)p < a->mem + ARENA_SIZE;
}

/* A new block from the arena, or NULL when it is off or full. */
static inline void *arena_take(struct arena *a, size_t nsize) {
  size_t want = (nsize + 15) & ~(size_t)15;
  if (!a->on || (size_t)(a->end - a->next) < want) return NULL;
  void *p = a->next;
  a->next += want;
  return p;
}

/* realloc(ptr, nsize) for a block `ptr` of `osize` bytes, or NULL. */
static void *arena_realloc(struct arena *a, void *ptr, size_t osize, size_t nsize) {
  size_t want = (nsize + 15) & ~(size_t)15;
  if (ptr && in_arena(a, ptr)) {
    if (nsize <= osize) return ptr;
    if ((char *)ptr + ((osize + 15) & ~(size_t)15) == a->next &&
        (size_t)(a->end - (char *)ptr) >= want) {
      a->next = (char *)ptr + want; /* the newest block grows in place */
      return ptr;
    }
  } else if (ptr || !a->on || (size_t)(a->end - a->next) < want) {
    return realloc(ptr, nsize); /* a malloc'd block, or no room */
  }
  void *p;
  if (a->on && (size_t)(a->end - a->next) >= want) {
    p = a->next;
    a->next += want;
  } else if (!(p = malloc(nsize))) {
    return NULL;
  }
  if (ptr) memcpy(p, ptr, osize < nsize ? osize : nsize);
  return p;
}

static void arena_free(struct arena *a, void *ptr) {
  if (!in_arena(a, ptr)) free(ptr);
}

/* The control state's allocator (lua_setallocf; ud: its arena). */
static void *control_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  if (!ptr && nsize) {
    void *p = arena_take(ud, nsize);
    if (p) return p;
  }
  if (nsize == 0) {
    arena_free(ud, ptr);
    return NULL;
  }
  return arena_realloc(ud, ptr, ptr ? osize : 0, nsize);
}

void mem_control_state(lua_State *L) {
  arena_start(&control_arena);
  lua_setallocf(L, control_alloc, &control_arena);
}

void mem_arena_end(lua_State *L) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  if (f == control_alloc || ud == &file_arena) ((struct arena *)ud)->on = false;
}

/* }==== */

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

/* A file-arena block resized: it shrinks in place, the newest one grows in
 * place, any other moves out to the small blocks or malloc (its arena copy
 * is left for the arena's end). */
static void *arena_move(void *ptr, size_t old, size_t size) {
  struct arena *a = &file_arena;
  size_t want = (size + 15) & ~(size_t)15;
  if (size <= old) return ptr;
  if ((char *)ptr + ((old + 15) & ~(size_t)15) == a->next &&
      (size_t)(a->end - (char *)ptr) >= want) {
    a->next = (char *)ptr + want;
    return ptr;
  }
  void *p = block_realloc(NULL, 0, size);
  if (p) memcpy(p, ptr, old);
  return p;
}

/* }==== */

static void *mem_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (!ptr && nsize && !M.limit && !M.failed) { /* the common case while loading */
    void *p = arena_take(&file_arena, nsize);
    if (p) {
      M.used += nsize;
      return p;
    }
  }
  size_t old = ptr ? osize : 0; /* without ptr, osize tells the kind of object */
  if (nsize == 0) {
    if (!ptr || in_arena(&file_arena, ptr))
      ; /* arena blocks go with the arena */
    else if (is_small(old))
      small_put(ptr, old);
    else
      free(ptr);
    M.used -= old;
    return NULL;
  }
  void *p = NULL;
  if (!M.limit || nsize <= old || M.used - old + nsize <= M.limit)
    p = ptr && in_arena(&file_arena, ptr) ? arena_move(ptr, old, nsize)
                                          : block_realloc(ptr, old, nsize);
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
  arena_start(&file_arena); /* the previous file state is closed */
  lua_State *L = lua_newstate(mem_alloc, &file_arena);
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

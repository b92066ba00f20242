/* http.c — `_atom.http_perform`: one HTTP request as a task wait, on the curl
 * multi handle of curlm.c. It sets the easy handle up from already-checked
 * arguments, and turns the finished transfer into Lua values (status, body,
 * lower-case headers, duration) or an atom error with a `cause`. Argument
 * policy, shorthands, events and JSON-RPC live in lua/atom/http.lua and
 * lua/atom/rpc.lua. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "atom.h"
#include "curlm.h"

/* Flags of http_perform's 7th argument (lua/atom/http.lua builds them). */
enum { HF_HEADERS = 1, HF_FOLLOW = 2, HF_INSECURE = 4, HF_JSON = 8 };

/* A response buffer; memory is kept between requests of one pooled handle. */
struct buf {
  char *p;
  size_t len, cap;
};

/* One easy handle with everything a request needs. Pooled: a steady stream of
 * requests allocates nothing. While in flight it is the task's wait, so the
 * waker finds the task and a cancel finds the easy handle. */
struct hreq {
  struct wait w;
  struct xfer x;
  CURL *easy;
  struct task *task;
  struct curl_slist *hdrs; /* built for this request, or NULL (the shared list) */
  bool want_headers;
  size_t max_body;       /* a longer response body aborts the transfer */
  const char *too_large; /* "body" or "headers" once that went over its limit */
  /* Strings of the waiting call's arguments; they live on the suspended task's
   * stack until it resumes, and curl uses the body in place. */
  const char *desc, *method, *url;
  uint64_t t0;
  int set_flags;  /* HF_FOLLOW | HF_INSECURE as last set on the handle, -1: unknown */
  bool set_proxy; /* a proxy is set on the handle (else "", none) */
  struct buf body, head;
  struct hreq *next; /* in the pool */
  char errbuf[CURL_ERROR_SIZE];
};

static struct hreq *pool;
static int pool_len;
/* Shared, never freed while in use. "Expect:" keeps curl from waiting up to
 * 1 s for `100 Continue` before a body of 1 KiB or more (1 MiB in newer
 * curls); a smaller body goes without it: one header less for curl to
 * scan on every request. */
static struct curl_slist *plain_hdrs, *json_hdrs, *small_plain_hdrs, *small_json_hdrs;
#define EXPECT_MIN 1024

/* Handles kept for reuse; more than that in flight are freed when done. */
#define POOL_MAX 256
/* A body buffer larger than this is freed after its request. */
#define KEEP_BUF (1 << 20)
/* The response headers kept are bounded too (curl bounds each line). */
#define MAX_HEAD (1 << 20)
/* max_body unless the request gives one (lua/atom/http.lua passes it). */
#define DEFAULT_MAX_BODY ((lua_Integer)256 << 20)

/* {==== curl callbacks ==== */

static bool buf_add(struct buf *b, const char *p, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return false;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return true;
}

/* Returning less than given makes curl abort the transfer at once. */
static size_t write_cb(char *p, size_t size, size_t n, void *ud) {
  struct hreq *r = ud;
  if (size * n > r->max_body - r->body.len) {
    r->too_large = "body";
    return 0;
  }
  return buf_add(&r->body, p, size * n) ? size * n : 0;
}

/* Keeps the header lines of the last response only: a redirect or a
 * `100 Continue` starts a new block with its status line. */
static size_t header_cb(char *p, size_t size, size_t n, void *ud) {
  struct hreq *r = ud;
  size_t len = size * n;
  if (!r->want_headers) return len;
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) r->head.len = 0;
  if (r->head.len + len > MAX_HEAD) {
    r->too_large = "headers";
    return 0;
  }
  return buf_add(&r->head, p, len) ? len : 0;
}

/* }==== */

/* {==== the pool ==== */

static struct hreq *req_get(void) {
  struct hreq *r = pool;
  if (r) {
    pool = r->next;
    pool_len--;
    return r;
  }
  r = calloc(1, sizeof *r);
  if (!r) return NULL;
  r->easy = curlm_easy_new();
  if (!r->easy) {
    free(r);
    return NULL;
  }
  /* Options that never change for this handle. */
  cu.easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, write_cb);
  cu.easy_setopt(r->easy, CURLOPT_WRITEDATA, (void *)r);
  cu.easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, header_cb);
  cu.easy_setopt(r->easy, CURLOPT_HEADERDATA, (void *)r);
  cu.easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->errbuf);
  cu.easy_setopt(r->easy, CURLOPT_NOPROXY, ""); /* ignore $no_proxy as well */
  cu.easy_setopt(r->easy, CURLOPT_USERAGENT, "atomlua/" ATOM_VERSION);
  cu.easy_setopt(r->easy, CURLOPT_MAXREDIRS, 20L);
  r->x.done = NULL;
  r->set_flags = -1;
  r->set_proxy = true; /* unknown: set it on first use */
  return r;
}

static void buf_free(struct buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

static void req_put(struct hreq *r) {
  if (r->hdrs) cu.slist_free_all(r->hdrs);
  r->hdrs = NULL;
  r->task = NULL;
  r->desc = r->method = r->url = NULL;
  r->body.len = r->head.len = 0;
  if (r->body.cap > KEEP_BUF) buf_free(&r->body);
  if (r->head.cap > KEEP_BUF) buf_free(&r->head);
  if (pool_len >= POOL_MAX) {
    cu.easy_cleanup(r->easy);
    buf_free(&r->body);
    buf_free(&r->head);
    free(r);
    return;
  }
  r->next = pool;
  pool = r;
  pool_len++;
}

/* }==== */

/* {==== finishing a request ==== */

/* The transport failure's `cause` (SPEC §3 rule 5) of transfer x; errbuf
 * is curl's message for it. */
static const char *cause_of(const struct xfer *x, const char *errbuf, CURLcode rc) {
  int e = x->open_errno;
  if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
    return "resources"; /* socket() failed: no descriptor, not the peer's doing */
  switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return "dns";
    case CURLE_COULDNT_CONNECT:
      return "refused";
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
      /* curl also says RECV_ERROR for a chunked body it cannot decode
       * ("... in chunked-encoding"): the peer broke the protocol. */
      return strstr(errbuf, "chunked-encoding") ? "protocol" : "reset";
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return "eof";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
      return "tls";
    default:
      return "protocol"; /* a reply curl could not parse, too many redirects, ... */
  }
}

/* Push the header block as {lower-case name = value}, repeated names joined
 * with ", ". The buffer is ours, so names are lower-cased in place. */
static void push_headers(lua_State *L, struct buf *b) {
  lua_createtable(L, 0, 8);
  char *p = b->p, *end = b->p + b->len;
  while (p < end) {
    char *eol = memchr(p, '\n', (size_t)(end - p));
    char *next = eol ? eol + 1 : end;
    if (!eol) eol = end;
    char *colon = (*p == ' ' || *p == '\t') ? NULL : memchr(p, ':', (size_t)(eol - p));
    if (colon && colon > p) {
      for (char *c = p; c < colon; c++)
        if (*c >= 'A' && *c <= 'Z') *c = (char)(*c + 32);
      char *v = colon + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_pushlstring(L, p, (size_t)(colon - p)); /* [t, name] */
      lua_pushvalue(L, -1);
      if (lua_rawget(L, -3) == LUA_TNIL) { /* [t, name, nil] */
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      } else { /* [t, name, old] */
        lua_pushliteral(L, ", ");
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_concat(L, 3);
      }
      lua_rawset(L, -3);
    }
    p = next;
  }
}

static void set_str(lua_State *L, const char *k, const char *v) {
  lua_pushstring(L, v);
  lua_setfield(L, -2, k);
}

static void req_done(struct xfer *x, CURLcode rc) {
  struct hreq *r = container_of(x, struct hreq, x);
  lua_State *co = sched_thread(&r->w);
  if (!co) { /* nobody waits (cannot happen: a cancel removes the transfer) */
    req_put(r);
    return;
  }
  lua_checkstack(co, 8);
  double duration = (double)(uv_hrtime() - r->t0) / 1e9;
  if (rc == CURLE_OK) {
    long status = 0;
    cu.easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    lua_pushinteger(co, status);
    lua_pushlstring(co, r->body.p ? r->body.p : "", r->body.len);
    if (r->want_headers)
      push_headers(co, &r->head);
    else
      lua_pushnil(co);
    lua_pushnumber(co, duration);
    sched_wake(&r->w, 4);
    req_put(r);
    return;
  }
  const char *detail = r->errbuf[0] ? r->errbuf : cu.easy_strerror(rc);
  /* UNSUPPORTED_PROTOCOL after a connection is a reply that is not HTTP
   * ("Received HTTP/0.9"), not a bad URL. */
  char *ip = NULL;
  if (rc == CURLE_UNSUPPORTED_PROTOCOL) cu.easy_getinfo(r->easy, CURLINFO_PRIMARY_IP, &ip);
  bool connected = ip && ip[0];
  if (rc == CURLE_FILESIZE_EXCEEDED) r->too_large = "body"; /* said by Content-Length */
  if (r->too_large) {
    bool body = r->too_large[0] == 'b';
    util_push_error(co, "http", "%s: response %s larger than %I bytes", r->desc, r->too_large,
                    (lua_Integer)(body ? r->max_body : MAX_HEAD));
    set_str(co, "cause", "too_large");
  } else if (rc == CURLE_URL_MALFORMAT || (rc == CURLE_UNSUPPORTED_PROTOCOL && !connected)) {
    util_push_error(co, "usage", "%s: invalid URL (%s)", r->desc, detail);
  } else if (rc == CURLE_OPERATION_TIMEDOUT) {
    util_push_error(co, "timeout", "%s timed out (%s)", r->desc, detail);
  } else {
    if (r->x.open_errno)
      util_push_error(co, "http", "%s: cannot open a socket: %s", r->desc,
                      strerror(r->x.open_errno));
    else
      util_push_error(co, "http", "%s: %s", r->desc, detail);
    set_str(co, "cause", cause_of(&r->x, r->errbuf, rc));
  }
  set_str(co, "url", r->url);
  set_str(co, "method", r->method);
  lua_pushnumber(co, duration);
  lua_setfield(co, -2, "duration");
  sched_task_name(co, r->task); /* util_push_error cannot see the task from a callback */
  lua_setfield(co, -2, "task");
  sched_wake_error(&r->w);
  req_put(r);
}

/* The task was cancelled or timed out: abort now; an unfinished transfer's
 * connection is closed at once, so the server sees it go. */
static void req_cancel(struct wait *w) {
  struct hreq *r = container_of(w, struct hreq, w);
  curlm_remove(r->easy);
  req_put(r);
}

/* }==== */

/* {==== starting a request ==== */

/* Request headers: every key a string, every value a string or number. Checked
 * before anything is allocated, so raising leaks nothing. */
static void check_headers(lua_State *L, int idx, const char *fname, bool *has_ct,
                          bool *has_expect) {
  lua_pushnil(L);
  while (lua_next(L, idx)) { /* [key, value] */
    if (lua_type(L, -2) != LUA_TSTRING) util_argerror(L, 1, fname, "header names must be strings");
    int vt = lua_type(L, -1);
    if (vt != LUA_TSTRING && vt != LUA_TNUMBER) {
      lua_pushfstring(L, "header '%s' must be a string or number, got %s", lua_tostring(L, -2),
                      luaL_typename(L, -1));
      util_argerror(L, 1, fname, lua_tostring(L, -1));
    }
    const char *k = lua_tostring(L, -2);
    if (strcasecmp(k, "content-type") == 0) *has_ct = true;
    if (strcasecmp(k, "expect") == 0) *has_expect = true;
    lua_pop(L, 1);
  }
}

/* "Name: value", or "Name;" for an empty value (curl's way to send one). */
static struct curl_slist *add_header(struct curl_slist *l, lua_State *L, const char *k,
                                     const char *v) {
  const char *line = v[0] ? lua_pushfstring(L, "%s: %s", k, v) : lua_pushfstring(L, "%s;", k);
  struct curl_slist *n = cu.slist_append(l, line);
  lua_pop(L, 1);
  return n ? n : l;
}

static struct curl_slist *build_headers(lua_State *L, int idx, bool json, bool has_ct,
                                        bool has_expect) {
  struct curl_slist *l = NULL;
  /* curl would wait up to 1 s for `100 Continue` before a large body. */
  if (!has_expect) l = cu.slist_append(l, "Expect:");
  /* Without a type curl would label a body as a form; send none instead. */
  if (!has_ct) l = cu.slist_append(l, json ? "Content-Type: application/json" : "Content-Type:");
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pushvalue(L, -1); /* tostring on a copy: numbers stay numbers in the table */
    l = add_header(l, L, lua_tostring(L, -3), lua_tostring(L, -1));
    lua_pop(L, 2);
  }
  return l;
}

static bool is(const char *a, const char *b) { return strcmp(a, b) == 0; }

/* Plain http:// is HTTP/1.1, so a request never rides on an h2c connection
 * atom.grpc opened to the same port (see grpcconn.c). */
static void set_version(CURL *e, const char *url) {
  bool plain = strncasecmp(url, "http://", 7) == 0;
  cu.easy_setopt(e, CURLOPT_HTTP_VERSION,
                 plain ? (long)CURL_HTTP_VERSION_1_1 : (long)CURL_HTTP_VERSION_2TLS);
}

static void set_method(CURL *e, const char *method, const char *body, size_t blen) {
  cu.easy_setopt(e, CURLOPT_NOBODY, 0L);
  cu.easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
  cu.easy_setopt(e, CURLOPT_POSTFIELDS, (void *)NULL);
  const char *custom = method;
  if (is(method, "HEAD") && !body) {
    cu.easy_setopt(e, CURLOPT_NOBODY, 1L);
    custom = NULL;
  } else if (!body && (is(method, "GET") || is(method, "DELETE") || is(method, "OPTIONS") ||
                       is(method, "TRACE"))) {
    cu.easy_setopt(e, CURLOPT_HTTPGET, 1L);
    if (is(method, "GET")) custom = NULL;
  } else { /* a body, or a method that expects one (an empty body: Content-Length: 0) */
    cu.easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    cu.easy_setopt(e, CURLOPT_POSTFIELDS, (void *)(body ? body : ""));
    if (is(method, "POST")) custom = NULL;
  }
  cu.easy_setopt(e, CURLOPT_CUSTOMREQUEST, custom);
}

/* _atom.http_perform(fname, method, url, headers|nil, body|nil, timeout, flags,
 * proxy|nil, desc [, max_body]) -> status, body, headers|nil, duration.
 * fname is the public function (for errors); timeout < 0 means none; desc
 * names the operation in errors ("GET http://..."). Arguments are checked by
 * the Lua callers, except header contents. */
static int l_http_perform(lua_State *L) {
  const char *fname = luaL_checkstring(L, 1);
  struct task *t = sched_enter(L, fname);
  const char *method = luaL_checkstring(L, 2);
  const char *url = luaL_checkstring(L, 3);
  bool has_headers = lua_type(L, 4) == LUA_TTABLE;
  size_t blen = 0;
  const char *body = lua_isnil(L, 5) ? NULL : luaL_checklstring(L, 5, &blen);
  double timeout = luaL_checknumber(L, 6);
  lua_Integer flags = luaL_checkinteger(L, 7);
  const char *proxy = luaL_optstring(L, 8, "");
  const char *desc = luaL_checkstring(L, 9);
  lua_Integer max_body = luaL_optinteger(L, 10, DEFAULT_MAX_BODY);
  if (max_body < 0) max_body = 0;
  bool has_ct = false, has_expect = false;
  if (has_headers) check_headers(L, 4, fname, &has_ct, &has_expect);

  char err[256];
  if (!curlm_start(err, sizeof err)) return util_error(L, "http", "%s: %s", desc, err);
  struct hreq *r = req_get();
  if (!r) return util_error(L, "http", "%s: out of memory", desc);
  CURL *e = r->easy;
  bool json = (flags & HF_JSON) != 0;
  if (has_headers) {
    r->hdrs = build_headers(L, 4, json, has_ct, has_expect);
    cu.easy_setopt(e, CURLOPT_HTTPHEADER, r->hdrs);
  } else {
    struct curl_slist **l = blen < EXPECT_MIN ? (json ? &small_json_hdrs : &small_plain_hdrs)
                                              : (json ? &json_hdrs : &plain_hdrs);
    if (!*l) {
      const char *ct = json ? "Content-Type: application/json" : "Content-Type:";
      *l = cu.slist_append(blen < EXPECT_MIN ? NULL : cu.slist_append(NULL, "Expect:"), ct);
    }
    cu.easy_setopt(e, CURLOPT_HTTPHEADER, *l);
  }
  cu.easy_setopt(e, CURLOPT_URL, url);
  set_version(e, url);
  set_method(e, method, body, blen);
  /* Options kept on the pooled handle are set only when they change. */
  int opt_flags = (int)(flags & (HF_FOLLOW | HF_INSECURE));
  if (opt_flags != r->set_flags) {
    cu.easy_setopt(e, CURLOPT_FOLLOWLOCATION, (flags & HF_FOLLOW) ? 1L : 0L);
    long verify = (flags & HF_INSECURE) ? 0L : 1L;
    cu.easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify);
    cu.easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    r->set_flags = opt_flags;
  }
  if (proxy[0] || r->set_proxy) {
    cu.easy_setopt(e, CURLOPT_PROXY, proxy); /* "": no proxy, whatever the environment says */
    r->set_proxy = proxy[0] != '\0';
  }
  r->errbuf[0] = '\0';
  r->max_body = (size_t)max_body;
  r->too_large = NULL;
  /* Abort before the first byte when Content-Length says too much. */
  cu.easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max_body);
  r->want_headers = (flags & HF_HEADERS) != 0;
  r->task = t;
  r->desc = desc;
  r->method = method;
  r->url = url;
  r->t0 = uv_hrtime();
  r->w = (struct wait){.cancel = req_cancel, .what = "http request"};
  r->x.done = req_done;
  CURLMcode mc = curlm_add(e, &r->x);
  if (mc != CURLM_OK) {
    req_put(r);
    return util_error(L, "http", "%s: %s", desc, cu.multi_strerror(mc));
  }
  return sched_wait(L, &r->w, timeout, 9);
}

/* End of a run (sched_on_run_end): close the idle connections so that no
 * socket outlives it (nothing is in flight once the root has ended); the
 * next request opens the multi handle again. */
static void http_run_end(lua_State *L) {
  (void)L;
  if (curlm_in_flight() > 0) return;
  curlm_close();
  while (pool) {
    struct hreq *r = pool;
    pool = r->next;
    cu.easy_cleanup(r->easy);
    buf_free(&r->body);
    buf_free(&r->head);
    free(r);
  }
  pool_len = 0;
  grpc_release();
}

/* }==== */

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg http_lib[] = {{"http_perform", l_http_perform}, {NULL, NULL}};

void http_register(lua_State *L) {
  (void)L;
  sched_on_run_end(http_run_end);
}

/* {==== shared with hstream.c (atom.http.stream) ==== */

void http_push_headers(lua_State *L, char *p, size_t len) {
  struct buf b = {p, len, len};
  push_headers(L, &b);
}

const char *http_cause_of(const struct xfer *x, const char *errbuf, CURLcode rc) {
  return cause_of(x, errbuf, rc);
}

/* Set up a fresh easy handle as http_perform does (headers checked first;
 * body used in place). Returns the header list to free after the transfer. */
struct curl_slist *http_setup(lua_State *L, CURL *e, int hidx, const char *method, const char *url,
                              const char *body, size_t blen, int flags, const char *proxy,
                              const char *fname) {
  bool has_ct = false, has_expect = false, json = (flags & HF_JSON) != 0;
  bool has_headers = lua_type(L, hidx) == LUA_TTABLE;
  if (has_headers) check_headers(L, hidx, fname, &has_ct, &has_expect);
  struct curl_slist *l =
      has_headers ? build_headers(L, hidx, json, has_ct, has_expect)
                  : cu.slist_append(cu.slist_append(NULL, "Expect:"),
                                    json ? "Content-Type: application/json" : "Content-Type:");
  cu.easy_setopt(e, CURLOPT_HTTPHEADER, l);
  cu.easy_setopt(e, CURLOPT_URL, url);
  set_version(e, url);
  set_method(e, method, body, blen);
  cu.easy_setopt(e, CURLOPT_FOLLOWLOCATION, (flags & HF_FOLLOW) ? 1L : 0L);
  long verify = (flags & HF_INSECURE) ? 0L : 1L;
  cu.easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify);
  cu.easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
  cu.easy_setopt(e, CURLOPT_PROXY, proxy ? proxy : "");
  cu.easy_setopt(e, CURLOPT_NOPROXY, "");
  cu.easy_setopt(e, CURLOPT_USERAGENT, "atomlua/" ATOM_VERSION);
  cu.easy_setopt(e, CURLOPT_MAXREDIRS, 20L);
  return l;
}

/* }==== */

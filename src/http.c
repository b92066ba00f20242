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
  /* What is set on the pooled handle, so a request sets only what changed:
   * every setopt goes through curl's big switch, and some copy a string. */
  int set_flags;                   /* HF_FOLLOW | HF_INSECURE, -1: unknown */
  bool set_proxy;                  /* a proxy is set on the handle (else "", none) */
  bool set_ua;                     /* CURLOPT_USERAGENT is set (with a proxy only) */
  int set_kind;                    /* K_* of the method setup, -1: unknown */
  bool set_custom;                 /* a CURLOPT_CUSTOMREQUEST is set */
  char *set_url;                   /* copy of the URL set, or NULL */
  CURLU *uh;                       /* set_url parsed, when set as CURLOPT_CURLU */
  const char *set_fields;          /* CURLOPT_POSTFIELDS as set (K_BODY) */
  curl_off_t set_fsize;            /* CURLOPT_POSTFIELDSIZE_LARGE as set (K_BODY) */
  curl_off_t set_maxfile;          /* CURLOPT_MAXFILESIZE_LARGE as set, -1: none */
  const struct curl_slist *set_hl; /* CURLOPT_HTTPHEADER as set */
  struct buf body, head;
  struct buf req;    /* a request body built here (atom.rpc), kept with the handle */
  struct hreq *next; /* in the pool */
  char errbuf[CURL_ERROR_SIZE];
};

/* The method setups of set_method. */
enum { K_HEAD, K_GET, K_BODY };

static struct hreq *pool;
static int pool_len;
/* Shared, never freed while in use, by SH_* bits. "Expect:" keeps curl from
 * waiting up to 1 s for `100 Continue` before a body of 1 KiB or more (1 MiB
 * in newer curls); a smaller body goes without it: one header less for curl
 * to scan on every request. The User-Agent is one of these lines rather than
 * CURLOPT_USERAGENT, which makes curl format "User-Agent: %s" anew for every
 * request (about 3k instructions); through a proxy the option is used, so
 * that a tunnel's CONNECT carries it too. */
enum { SH_JSON = 1, SH_EXPECT = 2, SH_UA = 4 };
static struct curl_slist *shared_hdrs[8];
#define USER_AGENT "atomlua/" ATOM_VERSION
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
  cu.easy_setopt(r->easy, CURLOPT_MAXREDIRS, 20L);
  curlm_bind(r->easy, &r->x);
  r->x.done = NULL;
  r->set_flags = -1;
  r->set_proxy = true; /* unknown: set it on first use */
  r->set_kind = -1;
  r->set_maxfile = -1;
  return r;
}

static void buf_free(struct buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

static void req_destroy(struct hreq *r) {
  cu.easy_cleanup(r->easy);
  if (r->uh) cu.url_cleanup(r->uh);
  buf_free(&r->body);
  buf_free(&r->head);
  buf_free(&r->req);
  free(r->set_url);
  free(r);
}

static void req_put(struct hreq *r) {
  if (r->hdrs) cu.slist_free_all(r->hdrs);
  r->hdrs = NULL;
  r->task = NULL;
  r->desc = r->method = r->url = NULL;
  r->body.len = r->head.len = 0;
  if (r->body.cap > KEEP_BUF) buf_free(&r->body);
  if (r->head.cap > KEEP_BUF) buf_free(&r->head);
  if (r->req.cap > KEEP_BUF) buf_free(&r->req); /* set again before curl reads it */
  if (pool_len >= POOL_MAX) {
    req_destroy(r);
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
static void check_headers(lua_State *L, int idx, const char *fname, bool *has_ct, bool *has_expect,
                          bool *has_ua) {
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
    if (strcasecmp(k, "user-agent") == 0) *has_ua = true;
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

static struct curl_slist *append(struct curl_slist *l, const char *line) {
  struct curl_slist *n = cu.slist_append(l, line);
  return n ? n : l;
}

/* The lines atomlua adds (sh: SH_* bits) before the caller's headers. */
static struct curl_slist *own_headers(struct curl_slist *l, int sh, bool has_ct) {
  /* curl would wait up to 1 s for `100 Continue` before a large body. */
  if (sh & SH_EXPECT) l = append(l, "Expect:");
  /* Without a type curl would label a body as a form; send none instead. */
  if (!has_ct) l = append(l, (sh & SH_JSON) ? "Content-Type: application/json" : "Content-Type:");
  if (sh & SH_UA) l = append(l, "User-Agent: " USER_AGENT);
  return l;
}

static struct curl_slist *build_headers(lua_State *L, int idx, int sh, bool has_ct) {
  struct curl_slist *l = own_headers(NULL, sh, has_ct);
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

/* The method and body setup of a request: its K_* kind, and the
 * CURLOPT_CUSTOMREQUEST it needs (NULL: none). */
static int method_kind(const char *method, const char *body, const char **custom) {
  *custom = method;
  if (is(method, "HEAD") && !body) {
    *custom = NULL;
    return K_HEAD;
  }
  if (!body &&
      (is(method, "GET") || is(method, "DELETE") || is(method, "OPTIONS") || is(method, "TRACE"))) {
    if (is(method, "GET")) *custom = NULL;
    return K_GET;
  }
  /* a body, or a method that expects one (an empty body: Content-Length: 0) */
  if (is(method, "POST")) *custom = NULL;
  return K_BODY;
}

static void set_method(CURL *e, const char *method, const char *body, size_t blen) {
  const char *custom;
  int kind = method_kind(method, body, &custom);
  cu.easy_setopt(e, CURLOPT_NOBODY, 0L);
  cu.easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)-1);
  cu.easy_setopt(e, CURLOPT_POSTFIELDS, (void *)NULL);
  if (kind == K_HEAD) {
    cu.easy_setopt(e, CURLOPT_NOBODY, 1L);
  } else if (kind == K_GET) {
    cu.easy_setopt(e, CURLOPT_HTTPGET, 1L);
  } else {
    cu.easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    cu.easy_setopt(e, CURLOPT_POSTFIELDS, (void *)(body ? body : ""));
  }
  cu.easy_setopt(e, CURLOPT_CUSTOMREQUEST, custom);
}

/* set_method on a pooled handle: what the last request on it set stays
 * (curl keeps options across transfers), so a stream of POSTs sets only
 * the body. */
static void set_method_cached(struct hreq *r, const char *method, const char *body, size_t blen) {
  const char *custom;
  int kind = method_kind(method, body, &custom);
  const char *fields = body ? body : "";
  if (kind != r->set_kind || kind != K_BODY) {
    set_method(r->easy, method, body, blen);
    r->set_kind = kind;
    r->set_custom = custom != NULL;
    r->set_fields = kind == K_BODY ? fields : NULL;
    r->set_fsize = kind == K_BODY ? (curl_off_t)blen : -1;
    return;
  }
  if ((curl_off_t)blen != r->set_fsize) {
    cu.easy_setopt(r->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)blen);
    r->set_fsize = (curl_off_t)blen;
  }
  if (fields != r->set_fields) {
    cu.easy_setopt(r->easy, CURLOPT_POSTFIELDS, (void *)fields);
    r->set_fields = fields;
  }
  if (custom || r->set_custom) {
    cu.easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, custom);
    r->set_custom = custom != NULL;
  }
}

/* The URL and the HTTP version that goes with it, when they changed. The URL
 * goes in parsed (CURLOPT_CURLU): given as a string, curl parses it and
 * prints it back (curl_url_set + curl_url_get, about 10k instructions) for
 * every transfer; from a CURLU handle it copies the parts. The flags are
 * those curl parses CURLOPT_URL with; a URL they reject is set as a string,
 * so that curl fails the transfer as before. */
static bool set_url_cached(struct hreq *r, const char *url) {
  if (r->set_url && strcmp(r->set_url, url) == 0) return true;
  CURL *e = r->easy;
  free(r->set_url);
  r->set_url = NULL;
  if (cu.url && !r->uh) r->uh = cu.url();
  if (r->uh && cu.url_set(r->uh, CURLUPART_URL, url,
                          CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK) {
    /* No URL string: the next transfer takes the URL from the handle (also
     * after a redirect, or when only the CURLU's contents changed). */
    cu.easy_setopt(e, CURLOPT_URL, (char *)NULL);
    cu.easy_setopt(e, CURLOPT_CURLU, r->uh);
  } else {
    cu.easy_setopt(e, CURLOPT_CURLU, (CURLU *)NULL);
    if (cu.easy_setopt(e, CURLOPT_URL, url) != CURLE_OK) return false; /* out of memory */
  }
  set_version(e, url);
  r->set_url = strdup(url); /* NULL: unknown, set again next time */
  return true;
}

/* A request, its arguments checked (l_http_perform, l_rpc_call). */
struct reqargs {
  const char *fname, *method, *url, *body, *proxy, *desc;
  size_t blen;
  int hidx; /* stack index of the headers table, 0: none */
  double timeout;
  int flags;
  int desc_idx; /* stack index of desc */
  lua_Integer max_body;
  bool has_ct, has_expect, has_ua; /* in the headers (check_headers) */
};

/* Start request a on r (from req_get) and suspend the task until it ends;
 * r goes back to the pool on every path. */
static int start(lua_State *L, struct task *t, struct hreq *r, struct reqargs *a) {
  CURL *e = r->easy;
  bool via_proxy = a->proxy[0] != '\0';
  int sh = ((a->flags & HF_JSON) ? SH_JSON : 0) | (a->blen >= EXPECT_MIN ? SH_EXPECT : 0) |
           (via_proxy ? 0 : SH_UA);
  const struct curl_slist *hl;
  if (a->hidx) { /* "Expect:" whatever the size, as before (unless given) */
    sh = (sh & ~SH_EXPECT) | (a->has_expect ? 0 : SH_EXPECT);
    if (a->has_ua) sh &= ~SH_UA;
    hl = r->hdrs = build_headers(L, a->hidx, sh, a->has_ct);
  } else {
    struct curl_slist **l = &shared_hdrs[sh];
    if (!*l) *l = own_headers(NULL, sh, false);
    hl = *l;
  }
  if (hl != r->set_hl) {
    cu.easy_setopt(e, CURLOPT_HTTPHEADER, hl);
    r->set_hl = hl;
  }
  if (!set_url_cached(r, a->url)) {
    req_put(r);
    return util_error(L, "http", "%s: out of memory", a->desc);
  }
  set_method_cached(r, a->method, a->body, a->blen);
  /* Options kept on the pooled handle are set only when they change. */
  int opt_flags = a->flags & (HF_FOLLOW | HF_INSECURE);
  if (opt_flags != r->set_flags) {
    cu.easy_setopt(e, CURLOPT_FOLLOWLOCATION, (a->flags & HF_FOLLOW) ? 1L : 0L);
    long verify = (a->flags & HF_INSECURE) ? 0L : 1L;
    cu.easy_setopt(e, CURLOPT_SSL_VERIFYPEER, verify);
    cu.easy_setopt(e, CURLOPT_SSL_VERIFYHOST, verify ? 2L : 0L);
    r->set_flags = opt_flags;
  }
  if (via_proxy || r->set_proxy) {
    cu.easy_setopt(e, CURLOPT_PROXY, a->proxy); /* "": no proxy, whatever the environment says */
    r->set_proxy = via_proxy;
  }
  if (via_proxy != r->set_ua) {
    cu.easy_setopt(e, CURLOPT_USERAGENT, via_proxy ? USER_AGENT : NULL);
    r->set_ua = via_proxy;
  }
  r->errbuf[0] = '\0';
  r->max_body = (size_t)a->max_body;
  r->too_large = NULL;
  /* Abort before the first byte when Content-Length says too much. */
  if ((curl_off_t)a->max_body != r->set_maxfile) {
    cu.easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)a->max_body);
    r->set_maxfile = (curl_off_t)a->max_body;
  }
  r->want_headers = (a->flags & HF_HEADERS) != 0;
  r->task = t;
  r->desc = a->desc;
  r->method = a->method;
  r->url = a->url;
  r->t0 = uv_hrtime();
  r->w = (struct wait){.cancel = req_cancel, .what = "http request"};
  r->x.done = req_done;
  CURLMcode mc = curlm_add_bound(e, &r->x);
  if (mc != CURLM_OK) {
    req_put(r);
    return util_error(L, "http", "%s: %s", a->desc, cu.multi_strerror(mc));
  }
  return sched_wait(L, &r->w, a->timeout, a->desc_idx);
}

/* curl and a pooled handle, or raise. */
static struct hreq *get_handle(lua_State *L, const char *desc) {
  char err[256];
  if (!curlm_start(err, sizeof err)) util_error(L, "http", "%s: %s", desc, err);
  struct hreq *r = req_get();
  if (!r) util_error(L, "http", "%s: out of memory", desc);
  return r;
}

/* _atom.http_perform(fname, method, url, headers|nil, body|nil, timeout, flags,
 * proxy|nil, desc [, max_body]) -> status, body, headers|nil, duration.
 * fname is the public function (for errors); timeout < 0 means none; desc
 * names the operation in errors ("GET http://..."). Arguments are checked by
 * the Lua callers, except header contents. */
static int l_http_perform(lua_State *L) {
  struct reqargs a = {0};
  a.fname = luaL_checkstring(L, 1);
  struct task *t = sched_enter(L, a.fname);
  a.method = luaL_checkstring(L, 2);
  a.url = luaL_checkstring(L, 3);
  a.hidx = lua_type(L, 4) == LUA_TTABLE ? 4 : 0;
  a.body = lua_isnil(L, 5) ? NULL : luaL_checklstring(L, 5, &a.blen);
  a.timeout = luaL_checknumber(L, 6);
  a.flags = (int)luaL_checkinteger(L, 7);
  a.proxy = luaL_optstring(L, 8, "");
  a.desc = luaL_checkstring(L, 9);
  a.desc_idx = 9;
  a.max_body = luaL_optinteger(L, 10, DEFAULT_MAX_BODY);
  if (a.max_body < 0) a.max_body = 0;
  if (a.hidx) check_headers(L, a.hidx, a.fname, &a.has_ct, &a.has_expect, &a.has_ua);
  struct hreq *r = get_handle(L, a.desc);
  return start(L, t, r, &a);
}

/* _atom.rpc_call(url, method_json, params_json|nil, timeout, headers|nil,
 * flags, proxy|nil, desc, id) -> status, body, nil, duration: atom.rpc's
 * POST (lua/atom/rpc.lua checks the arguments), its body
 * {"jsonrpc":"2.0","id":<id>,"method":<method_json>[,"params":<params_json>]}
 * built into the handle's own buffer rather than a Lua string. */
static int l_rpc_call(lua_State *L) {
  struct reqargs a = {0};
  a.fname = "rpc";
  struct task *t = sched_enter(L, a.fname);
  a.method = "POST";
  a.url = luaL_checkstring(L, 1);
  size_t mlen, plen = 0;
  const char *mjson = luaL_checklstring(L, 2, &mlen);
  const char *pjson = lua_isnil(L, 3) ? NULL : luaL_checklstring(L, 3, &plen);
  a.timeout = luaL_checknumber(L, 4);
  a.hidx = lua_type(L, 5) == LUA_TTABLE ? 5 : 0;
  a.flags = (int)luaL_checkinteger(L, 6);
  a.proxy = luaL_optstring(L, 7, "");
  a.desc = luaL_checkstring(L, 8);
  a.desc_idx = 8;
  lua_Integer id = luaL_checkinteger(L, 9);
  a.max_body = DEFAULT_MAX_BODY;
  if (a.hidx) check_headers(L, a.hidx, a.fname, &a.has_ct, &a.has_expect, &a.has_ua);
  struct hreq *r = get_handle(L, a.desc);
  char ids[24], *ide = ids + sizeof ids, *idp = ide; /* as tostring(id), without snprintf */
  lua_Unsigned u = id < 0 ? 0u - (lua_Unsigned)id : (lua_Unsigned)id;
  do *--idp = (char)('0' + u % 10);
  while (u /= 10);
  if (id < 0) *--idp = '-';
  struct buf *b = &r->req;
  b->len = 0;
  bool ok =
      buf_add(b, "{\"jsonrpc\":\"2.0\",\"id\":", 22) && buf_add(b, idp, (size_t)(ide - idp)) &&
      buf_add(b, ",\"method\":", 10) && buf_add(b, mjson, mlen) &&
      (!pjson || (buf_add(b, ",\"params\":", 10) && buf_add(b, pjson, plen))) && buf_add(b, "}", 1);
  if (!ok) {
    req_put(r);
    return util_error(L, "http", "%s: out of memory", a.desc);
  }
  a.body = b->p;
  a.blen = b->len;
  return start(L, t, r, &a);
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
    req_destroy(r);
  }
  pool_len = 0;
  grpc_release();
}

/* }==== */

/* Its `_atom` functions (the inventory is lualib.c's atom_lib). */
const luaL_Reg http_lib[] = {
    {"http_perform", l_http_perform}, {"rpc_call", l_rpc_call}, {NULL, NULL}};

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
  bool has_ct = false, has_expect = false, has_ua = false;
  int sh = (flags & HF_JSON) ? SH_JSON : 0;
  bool has_headers = lua_type(L, hidx) == LUA_TTABLE;
  if (has_headers) check_headers(L, hidx, fname, &has_ct, &has_expect, &has_ua);
  struct curl_slist *l = has_headers
                             ? build_headers(L, hidx, sh | (has_expect ? 0 : SH_EXPECT), has_ct)
                             : own_headers(NULL, sh | SH_EXPECT, false);
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

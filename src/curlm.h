/* curlm.h — libcurl loaded at run time, and one curl multi handle driven by
 * the libuv loop (src/curlm.c). http.c builds requests on it. Kept out of
 * atom.h so that only the two files that speak curl see <curl/curl.h>, which
 * is used for types and constants only: atomlua never links libcurl. */
#ifndef ATOM_CURLM_H
#define ATOM_CURLM_H

#define CURL_DISABLE_TYPECHECK
#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>

/* The libcurl functions atomlua uses, resolved with dlsym by curlm_start. */
struct curl_api {
  CURLcode (*global_init)(long flags);
  CURL *(*easy_init)(void);
  CURLcode (*easy_setopt)(CURL *e, CURLoption opt, ...);
  CURLcode (*easy_getinfo)(CURL *e, CURLINFO info, ...);
  void (*easy_cleanup)(CURL *e);
  const char *(*easy_strerror)(CURLcode rc);
  CURLM *(*multi_init)(void);
  CURLMcode (*multi_setopt)(CURLM *m, CURLMoption opt, ...);
  CURLMcode (*multi_add_handle)(CURLM *m, CURL *e);
  CURLMcode (*multi_remove_handle)(CURLM *m, CURL *e);
  CURLMcode (*multi_socket_action)(CURLM *m, curl_socket_t s, int ev, int *running);
  CURLMsg *(*multi_info_read)(CURLM *m, int *left);
  CURLMcode (*multi_cleanup)(CURLM *m);
  const char *(*multi_strerror)(CURLMcode rc);
  struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
  void (*slist_free_all)(struct curl_slist *l);
  CURLcode (*easy_pause)(CURL *e, int bitmask);
  /* The URL API (curl >= 7.62), NULL when missing: http.c then sets URLs as
   * strings. */
  CURLU *(*url)(void);
  CURLUcode (*url_set)(CURLU *u, CURLUPart what, const char *part, unsigned int flags);
  void (*url_cleanup)(CURLU *u);
};
extern struct curl_api cu;

/* A transfer in flight. The easy handle's CURLOPT_PRIVATE points to it;
 * `done` runs from the loop once curl finished it (after the easy handle has
 * left the multi handle), never for a transfer taken back by curlm_remove. */
struct xfer {
  void (*done)(struct xfer *x, CURLcode rc);
  int open_errno; /* errno of a socket() that failed for it (EMFILE...), else 0 */
};

/* dlopen libcurl.so.4 and curl_global_init on first use, then make the multi
 * handle if there is none. Returns false with a message in err otherwise. */
bool curlm_start(char *err, size_t errsize);
/* A new easy handle with the options every atomlua transfer shares (sockets
 * opened close-on-exec and tracked by the glue, no signals). */
CURL *curlm_easy_new(void);
/* Start a transfer; x must stay valid until done runs or curlm_remove. */
CURLMcode curlm_add(CURL *e, struct xfer *x);
/* The same in two steps, for a handle reused with the same x: bind once
 * (CURLOPT_PRIVATE and the socket callback's data), then add each time. */
void curlm_bind(CURL *e, struct xfer *x);
CURLMcode curlm_add_bound(CURL *e, struct xfer *x);
/* Abort a transfer at once (its connection is closed when incomplete). */
void curlm_remove(CURL *e);
int curlm_in_flight(void);
/* End of a run: drop the multi handle with its idle connections and close
 * every poll handle. Transfers still in flight are aborted without `done`. */
void curlm_close(void);

/* http.c's request setup, shared with hstream.c (atom.http.stream). */
struct lua_State;
void http_push_headers(struct lua_State *L, char *p, size_t len);
const char *http_cause_of(const struct xfer *x, const char *errbuf, CURLcode rc);
struct curl_slist *http_setup(struct lua_State *L, CURL *e, int hidx, const char *method,
                              const char *url, const char *body, size_t blen, int flags,
                              const char *proxy, const char *fname);

/* Called when a socket curl opened is closed (grpc.c tracks its connections). */
extern void (*curlm_close_hook)(curl_socket_t fd);

/* grpc.c: free the pooled gRPC calls (from http.c's http_run_end). */
void grpc_release(void);

#endif

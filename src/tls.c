/* tls.c — a TLS client for wss:// on atomlua's own TCP stream: OpenSSL with
 * two memory BIOs (ciphertext in from the socket, ciphertext out to it), so
 * every byte still moves through libuv and back-pressure works as for plain
 * ws://. libssl.so.3 is loaded with dlopen on the first wss:// connect, as
 * curlm.c does with libcurl: start-up stays as it was. <openssl/ssl.h> is used
 * for types and constants only. */
#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

static struct {
  int (*init_ssl)(uint64_t, const void *);
  const SSL_METHOD *(*client_method)(void);
  SSL_CTX *(*ctx_new)(const SSL_METHOD *);
  void (*ctx_free)(SSL_CTX *);
  void (*ctx_set_verify)(SSL_CTX *, int, void *);
  int (*ctx_load_verify)(SSL_CTX *, const char *, const char *);
  int (*ctx_default_paths)(SSL_CTX *);
  int (*ctx_use_chain)(SSL_CTX *, const char *);
  int (*ctx_use_key)(SSL_CTX *, const char *, int);
  SSL *(*ssl_new)(SSL_CTX *);
  void (*ssl_free)(SSL *);
  void (*set_bio)(SSL *, BIO *, BIO *);
  void (*set_connect_state)(SSL *);
  int (*do_handshake)(SSL *);
  int (*ssl_read)(SSL *, void *, int);
  int (*ssl_write)(SSL *, const void *, int);
  int (*get_error)(const SSL *, int);
  long (*ssl_ctrl)(SSL *, int, long, void *);
  int (*set1_host)(SSL *, const char *);
  long (*get_verify_result)(const SSL *);
  X509_VERIFY_PARAM *(*get0_param)(SSL *);
  int (*param_set1_ip_asc)(X509_VERIFY_PARAM *, const char *);
  BIO *(*bio_new)(const BIO_METHOD *);
  const BIO_METHOD *(*bio_s_mem)(void);
  int (*bio_write)(BIO *, const void *, int);
  int (*bio_read)(BIO *, void *, int);
  size_t (*bio_pending)(BIO *);
  unsigned long (*err_get)(void);
  void (*err_string)(unsigned long, char *, size_t);
  void (*err_clear)(void);
  const char *(*verify_string)(long);
} S;
static bool loaded;

static bool load(char *err, size_t errsize) {
  if (loaded) return true;
  void *lib = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(err, errsize, "cannot load libssl (package libssl3): %s", dlerror());
    return false;
  }
  static const struct {
    const char *name;
    size_t off;
  } syms[] = {
#define SYM(f, n) {n, offsetof(__typeof__(S), f)}
      SYM(init_ssl, "OPENSSL_init_ssl"),
      SYM(client_method, "TLS_client_method"),
      SYM(ctx_new, "SSL_CTX_new"),
      SYM(ctx_free, "SSL_CTX_free"),
      SYM(ctx_set_verify, "SSL_CTX_set_verify"),
      SYM(ctx_load_verify, "SSL_CTX_load_verify_locations"),
      SYM(ctx_default_paths, "SSL_CTX_set_default_verify_paths"),
      SYM(ctx_use_chain, "SSL_CTX_use_certificate_chain_file"),
      SYM(ctx_use_key, "SSL_CTX_use_PrivateKey_file"),
      SYM(ssl_new, "SSL_new"),
      SYM(ssl_free, "SSL_free"),
      SYM(set_bio, "SSL_set_bio"),
      SYM(set_connect_state, "SSL_set_connect_state"),
      SYM(do_handshake, "SSL_do_handshake"),
      SYM(ssl_read, "SSL_read"),
      SYM(ssl_write, "SSL_write"),
      SYM(get_error, "SSL_get_error"),
      SYM(ssl_ctrl, "SSL_ctrl"),
      SYM(set1_host, "SSL_set1_host"),
      SYM(get_verify_result, "SSL_get_verify_result"),
      SYM(get0_param, "SSL_get0_param"),
      SYM(param_set1_ip_asc, "X509_VERIFY_PARAM_set1_ip_asc"),
      SYM(bio_new, "BIO_new"),
      SYM(bio_s_mem, "BIO_s_mem"),
      SYM(bio_write, "BIO_write"),
      SYM(bio_read, "BIO_read"),
      SYM(bio_pending, "BIO_ctrl_pending"),
      SYM(err_get, "ERR_get_error"),
      SYM(err_string, "ERR_error_string_n"),
      SYM(err_clear, "ERR_clear_error"),
      SYM(verify_string, "X509_verify_cert_error_string"),
#undef SYM
  };
  for (size_t i = 0; i < sizeof syms / sizeof syms[0]; i++) {
    void *f = dlsym(lib, syms[i].name);
    if (!f) {
      snprintf(err, errsize, "libssl.so.3 lacks %s", syms[i].name);
      return false;
    }
    memcpy((char *)&S + syms[i].off, &f, sizeof f);
  }
  S.init_ssl(0, NULL);
  loaded = true;
  return true;
}

struct tls {
  SSL_CTX *ctx;
  SSL *ssl;
  BIO *in, *out; /* owned by ssl */
};

static void last_error(const char *what, char *err, size_t errsize) {
  unsigned long e = S.err_get();
  char buf[256] = "unknown error";
  if (e) S.err_string(e, buf, sizeof buf);
  snprintf(err, errsize, "%s: %s", what, buf);
  S.err_clear();
}

static bool is_ip(const char *host) {
  return strspn(host, "0123456789.") == strlen(host) || strchr(host, ':');
}

struct tls *tls_new(const char *host, const char *ca, const char *cert, const char *key,
                    bool insecure, char *err, size_t errsize) {
  if (!load(err, errsize)) return NULL;
  struct tls *t = calloc(1, sizeof *t);
  if (!t) {
    snprintf(err, errsize, "out of memory");
    return NULL;
  }
  t->ctx = S.ctx_new(S.client_method());
  if (!t->ctx) goto fail;
  S.ctx_set_verify(t->ctx, insecure ? SSL_VERIFY_NONE : SSL_VERIFY_PEER, NULL);
  if (ca ? S.ctx_load_verify(t->ctx, ca, NULL) != 1 : S.ctx_default_paths(t->ctx) != 1) {
    last_error(ca ? "cannot load CA file" : "cannot load the system CAs", err, errsize);
    goto out;
  }
  if (cert && S.ctx_use_chain(t->ctx, cert) != 1) {
    last_error("cannot load certificate", err, errsize);
    goto out;
  }
  if (key && S.ctx_use_key(t->ctx, key, SSL_FILETYPE_PEM) != 1) {
    last_error("cannot load key", err, errsize);
    goto out;
  }
  t->ssl = S.ssl_new(t->ctx);
  t->in = S.bio_new(S.bio_s_mem());
  t->out = S.bio_new(S.bio_s_mem());
  if (!t->ssl || !t->in || !t->out) goto fail;
  S.set_bio(t->ssl, t->in, t->out);
  S.set_connect_state(t->ssl);
  if (!is_ip(host))
    S.ssl_ctrl(t->ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, (void *)host);
  if (!insecure) {
    int ok =
        is_ip(host) ? S.param_set1_ip_asc(S.get0_param(t->ssl), host) : S.set1_host(t->ssl, host);
    if (ok != 1) goto fail;
  }
  return t;
fail:
  last_error("TLS setup", err, errsize);
out:
  tls_free(t);
  return NULL;
}

void tls_free(struct tls *t) {
  if (!t) return;
  if (t->ssl)
    S.ssl_free(t->ssl);
  else {
    /* not yet handed to an SSL */
    (void)0;
  }
  if (t->ctx) S.ctx_free(t->ctx);
  free(t);
}

void tls_feed(struct tls *t, const char *p, size_t n) {
  if (n > 0) S.bio_write(t->in, p, (int)n);
}

int tls_handshake(struct tls *t, char *err, size_t errsize) {
  int r = S.do_handshake(t->ssl);
  if (r == 1) return 1;
  int e = S.get_error(t->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
  long v = S.get_verify_result(t->ssl);
  if (v != X509_V_OK) {
    snprintf(err, errsize, "certificate verify failed: %s", S.verify_string(v));
    S.err_clear();
  } else {
    last_error("TLS handshake failed", err, errsize);
  }
  return -1;
}

int tls_read(struct tls *t, char *buf, size_t n, char *err, size_t errsize) {
  int r = S.ssl_read(t->ssl, buf, (int)(n > 1 << 30 ? 1 << 30 : n));
  if (r > 0) return r;
  int e = S.get_error(t->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
  if (e == SSL_ERROR_ZERO_RETURN) return -1;
  last_error("TLS read", err, errsize);
  return -2;
}

bool tls_write(struct tls *t, const char *p, size_t n) {
  while (n > 0) {
    int chunk = n > (1 << 20) ? 1 << 20 : (int)n;
    int r = S.ssl_write(t->ssl, p, chunk);
    if (r <= 0) {
      S.err_clear();
      return false;
    }
    p += r;
    n -= (size_t)r;
  }
  return true;
}

size_t tls_pending(struct tls *t) { return S.bio_pending(t->out); }

size_t tls_take(struct tls *t, char *buf, size_t n) {
  int r = S.bio_read(t->out, buf, (int)n);
  return r > 0 ? (size_t)r : 0;
}

/* ws.h — the pieces of atom.ws (ws.c): SHA-1 for the handshake (sha1.c) and a
 * TLS client on memory BIOs over our own TCP stream (tls.c). */
#ifndef ATOM_WS_H
#define ATOM_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

void sha1(const void *data, size_t len, uint8_t out[20]);

struct tls;
/* A client session for `host` (SNI and name check unless insecure); ca, cert,
 * key may be NULL. Loads libssl on first use. NULL with a message in err. */
struct tls *tls_new(const char *host, const char *ca, const char *cert, const char *key,
                    bool insecure, char *err, size_t errsize);
void tls_free(struct tls *t);
/* Ciphertext read from the socket. */
void tls_feed(struct tls *t, const char *p, size_t n);
/* 1: handshake done, 0: needs more input, -1: failed (message in err). */
int tls_handshake(struct tls *t, char *err, size_t errsize);
/* Plaintext: > 0 bytes read, 0 needs more input, -1 the peer closed (close_notify),
 * -2 failed (message in err). */
int tls_read(struct tls *t, char *buf, size_t n, char *err, size_t errsize);
/* Encrypt plaintext into the pending output; false on failure. */
bool tls_write(struct tls *t, const char *p, size_t n);
/* Ciphertext waiting to be sent, and taking it. */
size_t tls_pending(struct tls *t);
size_t tls_take(struct tls *t, char *buf, size_t n);

#endif

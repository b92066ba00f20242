/* grpc.h — a gRPC call's state, shared by grpc.c (calls, streams, curl
 * callbacks, statuses) and grpcconn.c (which connection a call goes on,
 * starting and cancelling it). */
#ifndef ATOM_GRPC_H
#define ATOM_GRPC_H

#include "atom.h"
#include "curlm.h"

enum { GF_H2C = 1, GF_INSECURE = 2 };

/* Received messages queued before the transfer pauses. */
#define Q_MSGS 256
#define Q_BYTES (8u << 20)
/* Bytes a stream buffers for sending before s:send waits. */
#define SEND_MAX (1u << 20)

struct gmsg {
  struct gmsg *next;
  size_t n;
  char data[];
};

struct gbuf {
  char *p;
  size_t len, cap, off; /* off: bytes already consumed from the front */
};

struct target;

struct call {
  struct xfer x;
  CURL *easy;
  struct curl_slist *hdrs; /* this call's own header list, or NULL (a shared one) */
  char *set_url;           /* options as last set on the pooled handle */
  bool set_tls;
  int set_insecure;
  struct task *task; /* the unary caller */
  bool unary, running, ended, cancelled, recv_paused;
  struct target *tg;          /* h2c targets: the connection state (NULL for https) */
  bool queued;                /* waits in tg's queue, not yet added to curl */
  bool reuse;                 /* added as a reuser of tg's connection (not prior knowledge) */
  bool retried;               /* restarted once already */
  bool sent_any;              /* curl took request bytes from the send queue */
  struct call *rprev, *rnext; /* in the list of running calls */
  int lport;                  /* local port of its connection (0: unknown) */
  uint64_t last_io;           /* uv_hrtime of its last callback from curl */
  uint64_t nudge_after;       /* ns without callbacks before the next nudge */
  struct call *qnext;         /* in tg's queue */
  /* responses */
  struct gbuf rbuf;           /* bytes of an incomplete frame */
  struct gmsg *qhead, *qtail; /* whole messages, oldest first */
  int qn;                     /* messages queued */
  size_t qbytes;              /* their bytes */
  size_t max_message;         /* largest message accepted (bytes) */
  struct gbuf head, trail;    /* raw header and trailer lines */
  bool in_trailers;           /* the header block has ended */
  int status;                 /* grpc-status, -1 until seen */
  char *gmessage;             /* grpc-message (raw) */
  const char *fail_cause;     /* a local protocol failure's cause, or NULL */
  char fail_msg[200];         /* and its message */
  int final_code;             /* after the end */
  const char *final_cause;
  /* requests (streams) */
  struct gbuf sbuf; /* framed messages not yet taken by curl */
  bool send_closed, send_paused;
  /* waits */
  struct wait rw; /* unary result, or recv */
  struct wait sw; /* send waiting for room */
  uint64_t t0;
  char errbuf[CURL_ERROR_SIZE];
  struct call *next; /* in the pool */
};

/* grpc.c */
void grpc_call_put(struct call *c); /* reset it and return it to the pool */
void grpc_q_clear(struct call *c);  /* drop the queued messages */
void grpc_done_cb(struct xfer *x, CURLcode rc);

/* grpcconn.c */
struct target *grpcconn_target(const char *url); /* the h2c target of a URL */
CURLMcode grpcconn_start(struct call *c);        /* add to curl, or queue */
void grpcconn_forget(struct call *c);            /* it left curl or its queue */
bool grpcconn_restart(struct call *c);           /* restart once after a lost connection */
void grpcconn_abort(struct call *c);             /* cancel: reset its stream now */
void grpcconn_unlink(struct call *c);            /* no longer running */
void grpcconn_free(void);                        /* end of a run */
int grpcconn_prereq_cb(void *ud, char *ip, char *lip, int port, int lport);
void grpcconn_sock_closed_cb(curl_socket_t fd);

#endif

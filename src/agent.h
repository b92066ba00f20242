/* agent.h — the wire of `atomlua agent` (docs/hosts.md): frames are
 * [u32 length][u8 type][u32 id][payload], length counting type, id and
 * payload, all integers big-endian. agent.c is the agent's side; remote.c
 * the side of the atomlua that drives it. */
#ifndef ATOM_AGENT_H
#define ATOM_AGENT_H

#define AGENT_PROTO 1                      /* bumped at every incompatible change */
#define AGENT_FRAME_MAX (64 * 1024 * 1024) /* a frame's length is at most this */
#define AGENT_HDR 9                        /* length, type, id */

/* Requests (to the agent). */
#define A_HELLO 'h'  /* payload u32 proto, version text */
#define A_SPAWN 's'  /* id: the process; payload: items [u8 tag][u32 len][bytes] */
#define A_SIGNAL 'k' /* id: the process; payload u32 signal */
#define A_WRITE 'w'  /* id: the process; payload: bytes for its stdin */
#define A_CLOSE 'c'  /* id: the process; close its stdin after what is queued */
#define A_PORT 'f'   /* free_port: reply 'r' with the port in decimal */
#define A_PUT 'u'    /* payload u8 flags (1 first, 2 last), u32 mode, u32 path len, path, data */
#define A_GET 'g'    /* payload path: reply 'r' with the file's bytes */
#define A_DIR 'd'    /* payload u8 keep: a fresh directory, reply 'r' with its path */

/* Replies and events (from the agent). */
#define A_HELLO_R 'H' /* id 0, payload u32 proto, version text */
#define A_PID 'p'     /* spawned: payload u32 pid */
#define A_ERR 'e'     /* a request failed: payload the message */
#define A_OK 'r'      /* a request's result */
#define A_OUT 'o'     /* output: payload u8 stream (0 stdout, 1 stderr), bytes */
#define A_EOF 'z'     /* payload u8 stream: that pipe closed */
#define A_EXIT 'x'    /* payload u32 wait status */
#define A_GONE 'y'    /* the process's group has no live member left */
#define A_FATAL 'F'   /* the agent refuses to go on: payload the message; it exits */

/* Spawn items. */
#define S_ARG 'a'   /* argv element */
#define S_ENV 'e'   /* K=V */
#define S_UNSET 'u' /* K */
#define S_CLEAR 'z' /* start from an empty environment */
#define S_CWD 'c'
#define S_STDIN 'i'  /* "pipe" or "null" */
#define S_DATA 'd'   /* stdin bytes, written then closed */
#define S_OUTPUT 'o' /* "capture", "null" or "inherit" (the agent's stderr) */

int agent_main(int argc, char **argv);

#endif

#!/usr/bin/env python3
"""W8's server (Python 3 stdlib): a minimal WebSocket server that, on each
connection to /?n=N, answers the handshake and pushes N small text messages
("msg <i>") as fast as the socket takes them, then a close frame 1000, and
waits for the client's close. Frames are built once per N, so the server is
never the bottleneck. Prints "PORT <port>" once it listens on 127.0.0.1."""
import base64
import hashlib
import socket
import struct
import threading
from urllib.parse import parse_qs, urlparse

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CACHE = {}


def frames(n):
    if n not in CACHE:
        out = bytearray()
        for i in range(1, n + 1):
            p = b"msg %d" % i
            out += struct.pack("!BB", 0x81, len(p)) + p
        out += b"\x88\x02\x03\xe8"
        CACHE[n] = bytes(out)
    return CACHE[n]


def serve(conn):
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        key = [l.split(":", 1)[1].strip() for l in lines if l.lower().startswith("sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n\r\n" % accept).encode())
        n = int(parse_qs(urlparse(path).query).get("n", ["1000"])[0])
        conn.sendall(frames(n))
        while conn.recv(65536):  # the client's close frame, then its FIN
            pass
    except OSError:
        pass
    finally:
        conn.close()


def main():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    print("PORT %d" % s.getsockname()[1], flush=True)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()

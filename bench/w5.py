"""W5: 20,000 JSON-RPC calls, 64 in flight, against the harness's local nginx
(asyncio, stdlib only): a hand-rolled HTTP/1.1 keep-alive client on asyncio
streams, 64 connections each sending one request at a time; every request is
JSON-encoded and every response JSON-decoded and checked. Args: URL [N [K]].
Prints requests per second."""
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def worker(host, port, path, state, n):
    reader, writer = await asyncio.open_connection(host, port)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\nContent-Length: ")
    try:
        while state["next"] < n:
            state["next"] += 1
            body = json.dumps({"jsonrpc": "2.0", "id": state["next"], "method": "status"}).encode()
            writer.write(f"{head}{len(body)}\r\n\r\n".encode() + body)
            status_and_headers = await reader.readuntil(b"\r\n\r\n")
            lines = status_and_headers.split(b"\r\n")
            if not lines[0].startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"bad status: {lines[0]!r}")
            length = None
            for h in lines[1:]:
                name, _, value = h.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None:
                raise RuntimeError("no Content-Length")
            resp = json.loads(await reader.readexactly(length))
            if resp.get("result") != "ok":
                raise RuntimeError(f"bad response: {resp!r}")
            state["done"] += 1
    finally:
        writer.close()


async def main(url, n, k):
    u = urlsplit(url)
    state = {"next": 0, "done": 0}
    t0 = time.monotonic()
    await asyncio.gather(*(worker(u.hostname, u.port or 80, u.path or "/", state, n)
                           for _ in range(k)))
    dt = time.monotonic() - t0
    if state["done"] != n:
        raise SystemExit(f"only {state['done']} of {n} calls done")
    print(f"RESULT req_per_s={n / dt:.1f} n={n} wall_s={dt:.4f}")


args = sys.argv[1:]
if not args:
    raise SystemExit("usage: w5.py URL [N [K]]")
asyncio.run(main(args[0], int(args[1]) if len(args) > 1 else 20000,
                 int(args[2]) if len(args) > 2 else 64))

# W8: receive N small WebSocket text messages with Python's `websockets`
# (Debian's python3-websockets 10.4, asyncio). Args: URL [N].
import asyncio
import sys
import time

import websockets


async def main():
    url, n = sys.argv[1], int(sys.argv[2] if len(sys.argv) > 2 else 200000)
    t0 = time.monotonic()
    count = 0
    async with websockets.connect(f"{url}/?n={n}", max_size=None, compression=None) as ws:
        async for _ in ws:
            count += 1
    dt = time.monotonic() - t0
    assert count == n, f"got {count} of {n} messages"
    print(f"RESULT msg_per_s={n / dt:.1f} n={n} wall_s={dt:.4f}")


asyncio.run(main())

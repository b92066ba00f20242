"""W1: 10,000 tasks each sleeping 10 ms, gathered (asyncio, stdlib only).
Prints the wall time of the gather minus the 10 ms sleep; the harness reads peak RSS."""
import asyncio
import sys
import time


async def main(n):
    coros = [asyncio.sleep(0.01) for _ in range(n)]
    t0 = time.monotonic()
    await asyncio.gather(*coros)
    dt = time.monotonic() - t0
    print(f"RESULT overhead_ms={dt * 1000 - 10:.3f} n={n}")


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000))

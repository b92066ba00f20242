"""W4: 16 children that each sleep a given delay, print `ready` and keep running
(asyncio, stdlib only). Waits for all the ready lines, then stops all 16
(SIGTERM, reap) concurrently. Args: the delays in seconds.
Prints the total time minus the longest delay ("overhead")."""
import asyncio
import sys
import time


async def start(d):
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", f"sleep {d}; echo ready; exec sleep 30", stdout=asyncio.subprocess.PIPE)
    while True:
        line = await proc.stdout.readline()
        if not line:
            raise RuntimeError("output ended before ready")
        if b"ready" in line:
            return proc


async def stop(proc):
    proc.terminate()
    await proc.wait()


async def main(delays):
    t0 = time.monotonic()
    procs = await asyncio.gather(*(start(d) for d in delays))
    await asyncio.gather(*(stop(p) for p in procs))
    dt = time.monotonic() - t0
    longest = max(float(d) for d in delays)
    print(f"RESULT overhead_ms={(dt - longest) * 1000:.3f} longest_ms={longest * 1000:.0f}")


if len(sys.argv) < 2:
    raise SystemExit("usage: w4.py DELAY...")
asyncio.run(main(sys.argv[1:]))

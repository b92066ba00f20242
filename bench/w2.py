"""W2: 10,000 tasks sleeping 60 s plus one failing after 50 ms (asyncio, stdlib only).
Uses asyncio.TaskGroup (3.11), the structured equivalent of atom.gather: the first
error cancels every sibling and the group raises once all have unwound.
Prints the time from the failure until the TaskGroup has raised."""
import asyncio
import sys
import time

t_fail = None


async def fail():
    global t_fail
    await asyncio.sleep(0.05)
    t_fail = time.monotonic()
    raise RuntimeError("boom")


async def main(n):
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(n):
                tg.create_task(asyncio.sleep(60))
            tg.create_task(fail())
    except* RuntimeError:
        pass
    t1 = time.monotonic()
    if t_fail is None:
        raise SystemExit("the failing task did not run")
    print(f"RESULT cancel_ms={(t1 - t_fail) * 1000:.3f} n={n}")


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10000))

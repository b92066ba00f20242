"""W3: 1,000 runs of /bin/true, at most 32 at a time, all exit codes collected
(asyncio, stdlib only): create_subprocess_exec with stdout/stderr piped, as
atom.exec captures them, under a Semaphore(32). Prints processes per second.
Python 3.11's default child watcher is ThreadedChildWatcher (one thread per
child); `w3.py N K pidfd` uses PidfdChildWatcher instead."""
import asyncio
import sys
import time


async def run_one(sem):
    async with sem:
        proc = await asyncio.create_subprocess_exec(
            "/bin/true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await proc.communicate()
        return proc.returncode


async def main(n, k, pidfd):
    if pidfd:
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)
    sem = asyncio.Semaphore(k)
    t0 = time.monotonic()
    codes = await asyncio.gather(*(run_one(sem) for _ in range(n)))
    dt = time.monotonic() - t0
    bad = [c for c in codes if c != 0]
    if bad:
        raise SystemExit(f"{len(bad)} runs failed")
    print(f"RESULT procs_per_s={n / dt:.1f} n={n} wall_s={dt:.4f}")


args = sys.argv[1:]
asyncio.run(main(int(args[0]) if args else 1000, int(args[1]) if len(args) > 1 else 32,
                 len(args) > 2 and args[2] == "pidfd"))

#!/usr/bin/env python3
"""atomlua's benchmark harness (`make bench` runs it through bench/run.sh).

Runs each workload (bench/wN.lua, wN.py, wN.js and its floor: the same work
with nothing above what it needs, in plain Lua or C) several times,
interleaved, as children of this process, and prints one table of medians
with the ratios atomlua/floor and atomlua/peer. Each program measures
its own interval with a monotonic clock and prints one `RESULT key=value ...`
line; peak RSS and CPU time come from os.wait4's rusage. An implementation
that fails (e.g. a feature atomlua lacks yet) is shown as n/a with the reason.
Python 3 standard library only. Every child runs in its own session, is
bounded in time, and is killed with its group afterwards; this process is a
child subreaper, so anything a child orphans is found and killed as well.
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
# "floor" is the same work done with nothing above what it needs (plain Lua
# coroutines, C on libuv/libcurl/posix_spawn); "floor2" a second one (W2: C),
# "wrk" the HTTP client limit (W5).
IMPLS = ("atomlua", "floor", "floor2", "wrk", "asyncio", "node")
RESULT_RE = re.compile(r"^RESULT (.*)$", re.M)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# {==== running children ====


class Run:
    """One finished child: exit status, output, rusage, harness wall time."""

    def __init__(self, status, out, err, rusage, wall, timed_out):
        self.status, self.out, self.err = status, out, err
        self.rusage, self.wall, self.timed_out = rusage, wall, timed_out

    @property
    def ok(self):
        return not self.timed_out and os.WIFEXITED(self.status) and os.WEXITSTATUS(self.status) == 0

    @property
    def rss_mb(self):
        return self.rusage.ru_maxrss / 1024.0  # ru_maxrss is in KiB on Linux

    @property
    def cpu_s(self):
        return self.rusage.ru_utime + self.rusage.ru_stime

    def result(self):
        """The key=value pairs of the last RESULT line, as floats where they parse."""
        m = RESULT_RE.findall(self.out)
        if not m:
            return None
        out = {}
        for kv in m[-1].split():
            k, _, v = kv.partition("=")
            try:
                out[k] = float(v)
            except ValueError:
                out[k] = v
        return out

    def reason(self, timeout):
        """A one-line reason why this run gave no result."""
        if self.timed_out:
            return f"timed out after {timeout:g}s"
        text = (self.err.strip() or self.out.strip()).splitlines()
        # Prefer the first line that looks like an error message.
        pick = next((l for l in text if re.search(r"error|not |nil|unknown|usage|fail", l, re.I)),
                    text[-1] if text else "")
        if os.WIFSIGNALED(self.status):
            why = f"killed by signal {os.WTERMSIG(self.status)}"
        elif os.WEXITSTATUS(self.status) != 0:
            why = f"exit {os.WEXITSTATUS(self.status)}"
        else:
            why = "no RESULT line"
        pick = re.sub(r"\s+", " ", pick.strip())
        if len(pick) > 110:
            pick = pick[:107] + "..."
        return f"{why}: {pick}" if pick else why


class Usage:
    def __init__(self, maxrss, utime, stime):
        self.ru_maxrss, self.ru_utime, self.ru_stime = maxrss, utime, stime


class Runner:
    def __init__(self, tmp, verbose, launcher=None):
        self.tmp, self.verbose, self.launcher = tmp, verbose, launcher
        self.keep = set()  # our own long-lived children (nginx), spared by sweep()
        self.orphans = 0
        self.subreaper = False
        try:  # PR_SET_CHILD_SUBREAPER = 36
            self.subreaper = ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            pass

    def run(self, argv, timeout, capture=True):
        """Run argv in a new session with stdout/stderr in files; wait for it with wait4."""
        out_path = os.path.join(self.tmp, "out.txt")
        err_path = os.path.join(self.tmp, "err.txt")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        fa = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        if capture:
            fa += [(os.POSIX_SPAWN_OPEN, 1, out_path, flags, 0o644),
                   (os.POSIX_SPAWN_OPEN, 2, err_path, flags, 0o644)]
        else:
            fa += [(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                   (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0)]
        lock = threading.Lock()
        state = {"done": False, "timed_out": False}

        def on_timeout():
            with lock:
                if state["done"]:
                    return
                state["timed_out"] = True
                try:
                    os.killpg(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            time.sleep(2)
            with lock:
                if not state["done"]:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

        report = os.path.join(self.tmp, "report.txt")
        if self.launcher:
            if os.path.exists(report):
                os.unlink(report)
            argv = [self.launcher, report] + list(argv)
        t0 = time.monotonic()
        pid = os.posix_spawnp(argv[0], argv, os.environ, file_actions=fa, setsid=True)
        timer = threading.Timer(timeout, on_timeout)
        timer.daemon = True
        timer.start()
        while True:
            try:
                _, status, rusage = os.wait4(pid, 0)
                break
            except InterruptedError:
                continue
        wall = time.monotonic() - t0
        with lock:
            state["done"] = True
        timer.cancel()
        try:  # whatever the child left in its own group
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.launcher:
            # The program's own status, wall time and rusage, from the launcher.
            try:
                with open(report) as f:
                    st, ns, rss, ut, stime = (int(x) for x in f.read().split())
                status, wall = st, ns / 1e9
                rusage = Usage(rss, ut / 1e6, stime / 1e6)
            except (OSError, ValueError):
                pass  # the launcher failed or was killed: report its own status
        out = err = ""
        if capture:
            with open(out_path, errors="replace") as f:
                out = f.read()
            with open(err_path, errors="replace") as f:
                err = f.read()
        self.sweep()
        return Run(status, out, err, rusage, wall, state["timed_out"])

    def sweep(self):
        """Kill and reap every process orphaned onto us (we are a subreaper)."""
        if not self.subreaper:
            return
        me = os.getpid()
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) in self.keep:
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[1]) == me and fields[0] != "Z":
                found.append(int(d))
            elif int(fields[1]) == me:  # a zombie: just reap it
                try:
                    os.waitpid(int(d), os.WNOHANG)
                except ChildProcessError:
                    pass
        for p in found:
            try:
                os.kill(p, signal.SIGKILL)
                os.waitpid(p, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if found:
            self.orphans += len(found)
            log(f"  warning: killed {len(found)} process(es) left behind by the last run")


# ====}
# {==== measuring ====


class Cell:
    """Medians of one implementation on one workload, or why there are none."""

    def __init__(self):
        self.values, self.rss, self.cpu, self.extra, self.reason = [], [], [], [], None
        self.cpu_per_req = []
        self.spent = 0.0  # seconds of wall time used by this cell's runs

    def median(self, what="values"):
        v = getattr(self, what)
        return statistics.median(v) if v else None


def measure(runner, wl, impls, repeat, verbose):
    """Run every implementation `repeat` times, interleaved; return {impl: Cell}."""
    cells = {name: Cell() for name in impls}
    for name, spec in impls.items():
        if isinstance(spec, str):  # known beforehand not to run
            cells[name].reason = spec
    for rep in range(repeat):
        for name, spec in impls.items():
            cell = cells[name]
            if cell.reason or cell.spent > wl.get("budget", 25):
                continue  # failed, or slow enough that fewer runs must do
            argv, parse = spec if isinstance(spec, tuple) else (spec, None)
            r = runner.run(argv, wl["timeout"])
            cell.spent += r.wall
            res = (parse or Run.result)(r) if r.ok else None
            key = wl["key"]
            if res is None or key not in res:
                last = (r.out.strip().splitlines() or [""])[-1][:80]
                cell.reason = r.reason(wl["timeout"]) if not r.ok else (
                    f"no RESULT line (last line: {last!r})" if res is None else
                    res.get("error") or f"RESULT has no {key}")
                if verbose:
                    log(f"  {wl['id']} {name} run {rep + 1}: {cell.reason}\n{r.out}{r.err}")
                continue
            cell.values.append(res[key])
            cell.rss.append(r.rss_mb)
            cell.cpu.append(r.cpu_s)
            cell.extra.append(res)
            if verbose:
                log(f"  {wl['id']} {name} run {rep + 1}: {key}={res[key]:g} "
                    f"rss={r.rss_mb:.1f}MB cpu={r.cpu_s * 1000:.0f}ms")
    return cells


def measure_startup(runner, impls, runs, verbose):
    """W6: fork+exec+wait wall time of each program, `runs` times, interleaved."""
    cells = {name: Cell() for name in impls}
    for name, spec in impls.items():
        if isinstance(spec, str):
            cells[name].reason = spec
    for i in range(runs):
        for name, argv in impls.items():
            cell = cells[name]
            if cell.reason:
                continue
            r = runner.run(argv, 10, capture=(i == 0))
            if not r.ok:
                cell.reason = r.reason(10)
                continue
            cell.values.append(r.wall * 1000)
            cell.rss.append(r.rss_mb)
            cell.cpu.append(r.cpu_s)
    if verbose:
        for name, c in cells.items():
            if c.values:
                log(f"  W6 {name}: min {min(c.values):.2f} ms, max {max(c.values):.2f} ms")
    return cells


def parse_wrk(r):
    m = re.search(r"Requests/sec:\s+([\d.]+)", r.out)
    n = re.search(r"(\d+) requests in", r.out)
    if not m or not n:
        return None
    errors = re.search(r"(Non-2xx or 3xx responses: \d+|Socket errors:.*)", r.out)
    if errors:
        return {"error": "wrk reported " + errors.group(1).strip()}
    return {"req_per_s": float(m.group(1)), "n": float(n.group(1))}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """W5's server: bench/nginx.conf under a temporary prefix, as our child."""

    def __init__(self, runner, tmp):
        self.runner, self.proc = runner, None
        self.prefix = os.path.join(tmp, "nginx")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    def start(self):
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
        if not exe:
            return "nginx not installed"
        os.makedirs(os.path.join(self.prefix, "tmp"), exist_ok=True)
        with open(os.path.join(BENCH, "nginx.conf")) as f:
            conf = f.read().replace("@PORT@", str(self.port))
        conf_path = os.path.join(self.prefix, "nginx.conf")
        with open(conf_path, "w") as f:
            f.write(conf)
        err_log = os.path.join(self.prefix, "error.log")
        self.proc = subprocess.Popen(
            [exe, "-c", conf_path, "-p", self.prefix + "/", "-e", err_log, "-g", "daemon off;"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            start_new_session=True)
        self.runner.keep.add(self.proc.pid)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"nginx exited {self.proc.returncode}: {self.tail(err_log)}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                # The workers (pids we do not know) must not be swept: they are
                # children of the master, not of us, so sweep() leaves them alone.
                return None
            except OSError:
                time.sleep(0.05)
        return "nginx did not listen within 5s"

    @staticmethod
    def tail(path):
        try:
            with open(path) as f:
                lines = f.read().strip().splitlines()
            return lines[-1] if lines else ""
        except OSError:
            return ""

    def stop(self):
        if not self.proc:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self.runner.keep.discard(self.proc.pid)
        self.proc = None


def w8(runner, impls, B, args):
    """W8: the pusher (stdlib) as our child; Python's peer runs on Debian's
    /usr/bin/python3 (python3-websockets), Node's on `ws` from npm, installed
    under bench/node_modules when missing."""
    n = "200000"
    srv = subprocess.Popen([sys.executable, B("w8_server.py")], stdout=subprocess.PIPE,
                           start_new_session=True, text=True)
    runner.keep.add(srv.pid)
    try:
        line = srv.stdout.readline()
        if not line.startswith("PORT "):
            cells = {name: Cell() for name in ("atomlua", "asyncio", "node")}
            for c in cells.values():
                c.reason = "w8_server.py did not start"
            return cells
        url = "ws://127.0.0.1:" + line.split()[1]
        d = impls("w8", [url, n])
        pypeer = "/usr/bin/python3"
        ok = subprocess.run([pypeer, "-c", "import websockets"], capture_output=True).returncode == 0
        d["asyncio"] = [pypeer, B("w8.py"), url, n] if ok else "python3-websockets not installed"
        if not isinstance(d.get("node"), str) and not os.path.isdir(B("node_modules/ws")):
            npm = shutil.which("npm")
            r = subprocess.run([npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix",
                                os.path.dirname(B("w8.js")), "ws@8"], capture_output=True) if npm else None
            if not r or r.returncode != 0:
                d["node"] = "npm could not install ws"
        wl = {"id": "W8", "key": "msg_per_s", "timeout": 60, "budget": 40}
        cells = measure(runner, wl, d, args.repeat, args.verbose)
        for c in cells.values():
            if not c.reason:
                c.cpu_per_req = [cpu * 1e6 / e["n"] for cpu, e in zip(c.cpu, c.extra)]
        return cells
    finally:
        srv.kill()
        srv.wait()
        runner.keep.discard(srv.pid)


# ====}
# {==== the table ====

class Etcd(Nginx):
    """W7's server: one etcd (Debian's etcd-server) on free ports with its data
    under the temporary directory, as our child, holding the key w7 = value."""

    def __init__(self, runner, tmp):
        self.runner, self.proc = runner, None
        self.dir = os.path.join(tmp, "etcd")
        self.port, self.peer = free_port(), free_port()
        self.target = f"127.0.0.1:{self.port}"

    def start(self):
        exe = shutil.which("etcd")
        if not exe:
            return "etcd not installed (etcd-server)"
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peer}"
        log_path = os.path.join(os.path.dirname(self.dir), "etcd.log")
        with open(log_path, "w") as logf:
            self.proc = subprocess.Popen(
                [exe, "--name", "w7", "--data-dir", self.dir, "--listen-client-urls", client,
                 "--advertise-client-urls", client, "--listen-peer-urls", peer,
                 "--initial-advertise-peer-urls", peer, "--initial-cluster", "w7=" + peer],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.runner.keep.add(self.proc.pid)
        import urllib.request
        body = json.dumps({"key": "dzc=", "value": "dmFsdWU="}).encode()  # w7 = value
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"etcd exited {self.proc.returncode}: {self.tail(log_path)}"
            try:
                urllib.request.urlopen(client + "/v3/kv/put", body, timeout=1).read()
                return None
            except OSError:
                time.sleep(0.1)
        return "etcd did not answer within 20s"


def grpc_python(py):
    """A Python that can import grpc (python3-grpcio is Debian's, for /usr/bin/python3)."""
    for exe in (py, "/usr/bin/python3"):
        try:
            if subprocess.run([exe, "-c", "import grpc"], capture_output=True, timeout=20).returncode == 0:
                return exe
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


def node_grpc(node):
    """Install @grpc/grpc-js and @grpc/proto-loader under bench/.npm once (npm).
    Returns None when they are there, else the reason."""
    mods = os.path.join(BENCH, ".npm", "node_modules", "@grpc")
    if os.path.isdir(os.path.join(mods, "grpc-js")) and os.path.isdir(os.path.join(mods, "proto-loader")):
        return None
    npm = shutil.which("npm")
    if not node or not npm:
        return "node or npm not installed"
    log("W7: npm install @grpc/grpc-js @grpc/proto-loader (once, into bench/.npm) ...")
    try:
        r = subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                            os.path.join(BENCH, ".npm"), "@grpc/grpc-js@1", "@grpc/proto-loader@0"],
                           capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"npm install failed: {e}"
    return None if r.returncode == 0 else "npm install failed: " + (r.stderr.strip() or "?")[:100]



def fmt(v, unit):
    if v is None:
        return "n/a"
    if unit in ("req/s", "procs/s", "msg/s"):
        return f"{v:,.0f}"
    if unit == "MB":
        return f"{v:.1f}"
    if unit in ("µs/req", "µs/msg"):
        return f"{v:.1f}"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}"


def print_table(rows, notes):
    head = ["workload", "metric", "atomlua", "floor", "atom/floor", "asyncio", "node",
            "atom/asyncio", "atom/node", "target ratio"]
    body = []
    for r in rows:
        v, u, f = r["values"], r["unit"], r["floor"]
        body.append([r["id"], f"{r['metric']} ({u})", fmt(v["atomlua"], u),
                     fmt(v[f], u) if f else "—", ratio(v["atomlua"], v[f]) if f else "—",
                     fmt(v["asyncio"], u), fmt(v["node"], u),
                     ratio(v["atomlua"], v["asyncio"]), ratio(v["atomlua"], v["node"]),
                     r["target"]])
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    line = lambda cols: "  ".join(  # noqa: E731
        str(c).ljust(widths[i]) if i < 2 or i == len(cols) - 1 else str(c).rjust(widths[i])
        for i, c in enumerate(cols)).rstrip()
    print(line(head))
    print(line(["-" * w for w in widths]))
    for b in body:
        print(line(b))
    print()
    print("Medians of the same run; ratio = atomlua / other (times and MB: lower is better; "
          "rates: higher).")
    for n in notes:
        print(n)


def verdict(value, op, bound):
    if value is None or bound is None:
        return "untested"
    ok = value <= bound if op == "<=" else value >= bound
    return "ok" if ok else "MISSED"


# ====}


def machine_lines(args, atom, py, node):
    def cmd_out(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout.strip() or r.stderr.strip()).splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "n/a"

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        "atomlua benchmarks — " + datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        f"machine: {nproc} cpus ({os.cpu_count()} online), {cpu}, Linux {platform.release()}, load {load}",
        f"atomlua: {cmd_out([atom, 'version']) if atom else 'not built'}; "
        f"python: {platform.python_version()} ({py}); node: {cmd_out([node, '--version']) if node else 'n/a'}",
        f"nginx: {cmd_out(['nginx', '-v']) if shutil.which('nginx') else 'n/a'}; "
        f"wrk: {cmd_out(['wrk', '-v']) if shutil.which('wrk') else 'n/a'}; "
        f"runs: median of {args.repeat} (W6: {args.startup_runs})",
    ]


# Lua and libuv linked as atomlua links them (statically).
LUA_UV_STATIC = ["-I/usr/include/lua5.4", "-Wl,-Bstatic", "-llua5.4", "-luv_a", "-Wl,-Bdynamic",
                 "-lm", "-ldl", "-lpthread"]


def build_c(src, out, libs=()):
    """Compile one of bench/*.c; return None on success or the reason."""
    cc = os.environ.get("CC", "cc")
    try:
        r = subprocess.run([cc, "-O2", "-o", out, os.path.join(BENCH, src)] + list(libs),
                           capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot build {src}: {e}"
    return None if r.returncode == 0 else f"cannot build {src}: {r.stderr.strip()[:100]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default="build", help="atomlua build directory (default: build)")
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", 5)),
                    help="runs per measurement; the median is shown (default 5, env BENCH_REPEAT)")
    ap.add_argument("--startup-runs", type=int, default=50, help="runs for W6 (default 50)")
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                    help="comma-separated workloads, e.g. W1,W5 (env BENCH_ONLY)")
    ap.add_argument("--seed", type=int, default=42, help="seed of W4's delays (default 42)")
    ap.add_argument("--json", help="also write the results as JSON to this path")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every run")
    args = ap.parse_args()
    only = {w.strip().upper() for w in args.only.split(",") if w.strip()}
    want = lambda w: not only or w in only  # noqa: E731

    atom = os.path.abspath(os.path.join(args.build, "atomlua"))
    atom_missing = None
    if not os.access(atom, os.X_OK):
        atom_missing = f"{args.build}/atomlua not built"
        atom = None
    py = sys.executable
    node = shutil.which("node") or shutil.which("nodejs")

    tmp = tempfile.mkdtemp(prefix="atomlua-bench-")
    launcher = os.path.join(tmp, "launch")
    launch_err = build_c("launch.c", launcher)
    runner = Runner(tmp, args.verbose, None if launch_err else launcher)
    nginx = None
    old_cwd = os.getcwd()
    t_start = time.monotonic()
    try:
        # atomlua puts run directories under the current directory: use ours.
        os.chdir(tmp)
        env_lines = machine_lines(args, atom, py, node)
        print("\n".join(env_lines) + "\n", flush=True)
        B = lambda f: os.path.join(BENCH, f)  # noqa: E731

        def impls(stem, args_list=(), floor=None):
            d = {
                "atomlua": atom_missing or [atom, "run", B(stem + ".lua")] + (["--"] + list(args_list) if args_list else []),
                "asyncio": [py, B(stem + ".py")] + list(args_list),
                "node": [node, B(stem + ".js")] + list(args_list) if node else "node not installed",
            }
            if floor is not None:
                d["floor"] = floor
            return d

        def build(src, exe_name, libs=()):
            exe = os.path.join(tmp, exe_name)
            return build_c(src, exe, libs) or exe

        lua = shutil.which("lua5.4")
        floor_lua = (lambda mode, n, *more: [lua, B("floor_sched.lua"), mode, str(n), *more]) if lua else \
            (lambda mode, n, *more: "lua5.4 not installed")

        rows, notes, data = [], [], {}

        def add_row(wid, metric, unit, cells, what, target="", op=None, bound=None, floor="floor",
                    extra=None):
            """One table row. The target is a ratio atomlua/floor `op` bound (or a
            callable of the medians giving an absolute bound); extra: another
            (text, op, callable) condition that must hold as well."""
            values = {}
            for name in IMPLS:
                c = cells.get(name)
                values[name] = c.median(what) if c and not c.reason else None
            if floor not in cells:
                floor = None
            if callable(bound):
                b = bound(values)
            elif bound is not None and floor:
                b = bound * values[floor] if values[floor] is not None else None
            else:
                b = bound
            tgt = target
            if op:
                ok = verdict(values["atomlua"], op, b)
                if extra:
                    ok2 = verdict(values["atomlua"], extra[1], extra[2](values))
                    ok = ok if ok != "ok" else ok2
                    tgt += ", " + extra[0]
                tgt = f"{tgt}: {ok}"
            rows.append({"id": wid, "metric": metric, "unit": unit, "values": values,
                         "target": tgt, "floor": floor})
            data.setdefault(wid, {})[f"{metric} ({unit})"] = {
                name: {"median": values[name],
                       "runs": list(getattr(cells[name], what)) if name in cells else []}
                for name in IMPLS if name in cells}

        reasons = {}  # (impl, reason) -> [workload ids], to print each reason once

        def add_notes(wid, cells):
            for name in IMPLS:
                c = cells.get(name)
                if c and c.reason:
                    ids = reasons.setdefault((name, c.reason), [])
                    if wid not in ids:
                        ids.append(wid)

        def notes_runs(wid, cells):
            for name, c in cells.items():
                if not c.reason and 0 < len(c.values) < args.repeat:
                    notes.append(f"{wid} {name}: only {len(c.values)} run(s), "
                                 f"the time budget of the workload was spent")

        def skipped_cells(reason):
            cells = {n: Cell() for n in IMPLS}
            for c in cells.values():
                c.reason = reason
            return cells

        if want("W1"):
            log("W1: 10,000 sleeping tasks gathered ...")
            wl = {"id": "W1", "key": "overhead_ms", "timeout": 20}
            d = impls("w1", floor=floor_lua("w1", 10000))
            d["floor2"] = floor_lua("w1", 10000, "cached")
            cells = measure(runner, wl, d, args.repeat, args.verbose)
            add_row("W1", "gather overhead", "ms", cells, "values", "<= 1.3x", "<=", 1.3)
            add_row("W1", "... floor on a cached clock", "ms", cells, "values", floor="floor2")
            add_row("W1", "peak RSS", "MB", cells, "rss", "<= 1.3x", "<=", 1.3)
            add_notes("W1", cells)
            notes_runs("W1", cells)

        if want("W1") or want("W1L"):
            log("W1: 100,000 sleeping tasks gathered ...")
            wl = {"id": "W1", "key": "overhead_ms", "timeout": 60, "budget": 40}
            d = impls("w1", ["100000"], floor=floor_lua("w1", 100000))
            d["floor2"] = floor_lua("w1", 100000, "cached")
            cells = measure(runner, wl, d, args.repeat, args.verbose)
            node_bound = lambda v: 0.67 * v["node"] if v["node"] else None  # noqa: E731
            add_row("W1", "100k: gather overhead", "ms", cells, "values", "<= 1.3x", "<=", 1.3,
                    extra=("<= 0.67x node", "<=", node_bound))
            add_row("W1", "100k: ... floor on a cached clock", "ms", cells, "values", floor="floor2")
            add_row("W1", "100k: peak RSS", "MB", cells, "rss", "<= 1.3x", "<=", 1.3)
            add_notes("W1", cells)
            notes_runs("W1 100k", cells)

        if want("W2"):
            log("W2: cancel 10,000 tasks after a failure ...")
            wl = {"id": "W2", "key": "cancel_ms", "timeout": 15}
            d = impls("w2", floor=floor_lua("w2", 10000))
            exe = build("floor_w2.c", "floor_w2", ["-luv"])
            d["floor2"] = [exe, "10000"] if exe.startswith("/") else exe
            cells = measure(runner, wl, d, args.repeat, args.verbose)
            add_row("W2", "failure to raise", "ms", cells, "values", "<= 3x", "<=", 3)
            add_row("W2", "... against libuv in C", "ms", cells, "values", floor="floor2")
            add_notes("W2", cells)
            notes_runs("W2", cells)

        if want("W3"):
            log("W3: 1,000 x /bin/true, 32 in flight ...")
            exe = build("spawn_limit.c", "spawn_limit")
            floor = [exe, "1000", "32"] if exe.startswith("/") else exe
            wl = {"id": "W3", "key": "procs_per_s", "timeout": 30}
            cells = measure(runner, wl, impls("w3", floor=floor), args.repeat, args.verbose)
            add_row("W3", "processes", "procs/s", cells, "values", ">= 0.9x", ">=", 0.9)
            add_notes("W3", cells)
            notes_runs("W3", cells)

        if want("W4"):
            rnd = random.Random(args.seed)
            delays = [f"{rnd.randint(0, 200) / 1000:.3f}" for _ in range(16)]
            log(f"W4: 16 children until ready, then stopped (delays {' '.join(delays)}) ...")
            exe = build("ready_limit.c", "ready_limit")
            floor = [exe] + delays if exe.startswith("/") else exe
            wl = {"id": "W4", "key": "overhead_ms", "timeout": 15}
            cells = measure(runner, wl, impls("w4", delays, floor=floor), args.repeat, args.verbose)
            add_row("W4", "ready+stop overhead", "ms", cells, "values", "<= 1.3x", "<=", 1.3)
            add_notes("W4", cells)
            notes_runs("W4", cells)
            notes.append(f"W4 delays (seed {args.seed}, longest {max(map(float, delays)) * 1000:.0f} ms): "
                         + " ".join(delays))

        if want("W5"):
            log("W5: 20,000 JSON-RPC POSTs, 64 in flight, against nginx ...")
            nginx = Nginx(runner, tmp)
            why = nginx.start()
            if why:
                cells = skipped_cells(why)
            else:
                n = "20000"
                wrk = shutil.which("wrk")
                exe = build("floor_w5.c", "floor_w5", ["-lcurl", "-luv"])
                d = impls("w5", [nginx.url, n, "64"],
                          floor=[exe, nginx.url, n, "64"] if exe.startswith("/") else exe)
                d["wrk"] = ([wrk, "-t1", "-c64", "-d3s", "-s", B("w5_wrk.lua"), nginx.url], parse_wrk) \
                    if wrk else "wrk not installed"
                wl = {"id": "W5", "key": "req_per_s", "timeout": 30, "budget": 30}
                cells = measure(runner, wl, d, args.repeat, args.verbose)
                # Client CPU per request: the whole process's user+system time / requests.
                for name, c in cells.items():
                    if not c.reason:
                        c.cpu_per_req = [cpu * 1e6 / e["n"] for cpu, e in zip(c.cpu, c.extra)]
            nginx.stop()
            add_row("W5", "JSON-RPC calls", "req/s", cells, "values", ">= 0.8x", ">=", 0.8)
            add_row("W5", "client CPU", "µs/req", cells, "cpu_per_req")
            add_row("W5", "peak RSS", "MB", cells, "rss", "<= 20 MB", "<=", lambda v: 20)
            add_row("W5", "... against wrk", "req/s", cells, "values", floor="wrk")
            add_notes("W5", cells)
            notes_runs("W5", cells)

        if want("W6"):
            log(f"W6: start-up of an empty program, {args.startup_runs} runs each ...")
            exe = build("floor_w6.c", "floor_w6", LUA_UV_STATIC)
            d = impls("w6", floor=[exe] if exe.startswith("/") else exe)
            cells = measure_startup(runner, d, args.startup_runs, args.verbose)
            add_row("W6", "start-up", "ms", cells, "values", "<= 1.5x", "<=", 1.5)
            add_row("W6", "peak RSS", "MB", cells, "rss")
            add_notes("W6", cells)

        if want("W8"):
            log("W8: 200,000 small WebSocket messages pushed by bench/w8_server.py ...")
            cells = w8(runner, impls, B, args)
            add_row("W8", "WebSocket messages", "msg/s", cells, "values", ">= 1.5x best peer", ">=",
                    lambda v: 1.5 * max(x for x in (v["asyncio"], v["node"], 0) if x is not None))
            add_row("W8", "client CPU", "µs/msg", cells, "cpu_per_req", "")
            add_notes("W8", cells)
            notes_runs("W8", cells)

        if want("W9"):
            log("W9: the linearizability checker: a generated 100,000-operation kv history, "
                "and recorded etcd histories ...")
            peer = "no peer run here: Porcupine is compared by hand (bench/README.md, W9)"
            gen = {"atomlua": atom_missing or [atom, "run", B("w9.lua"), "--", "gen", "100000", "10", "10"],
                   "asyncio": peer, "node": peer}
            wl = {"id": "W9", "key": "check_s", "timeout": 120, "budget": 60}
            cells = measure(runner, wl, gen, args.repeat, args.verbose)
            add_row("W9", "kv 100k ops check", "s", cells, "values", "< 10 s", "<=", 10)
            add_row("W9", "kv 100k peak RSS", "MB", cells, "rss", "< 1024 MB", "<=", 1024)
            add_notes("W9", cells)
            notes_runs("W9", cells)
            etcd = sorted(os.path.join(os.path.dirname(BENCH), "spec", "fixtures", "history", f)
                          for f in os.listdir(os.path.join(os.path.dirname(BENCH), "spec", "fixtures", "history"))
                          if f.endswith(".jsonl"))
            rec = {"atomlua": atom_missing or [atom, "run", B("w9.lua"), "--", "files", "cas-register", "true"]
                   + etcd, "asyncio": peer, "node": peer}
            wl = {"id": "W9", "key": "check_ms", "timeout": 60}
            cells = measure(runner, wl, rec, args.repeat, args.verbose)
            add_row("W9", "recorded etcd check", "ms", cells, "values", "")
            add_notes("W9", cells)
            notes_runs("W9", cells)

        if want("W7"):
            log("W7: 20,000 unary gRPC calls, 64 in flight, to etcd's KV/Range ...")
            etcd = Etcd(runner, tmp)
            try:
                why = etcd.start()
                if why:
                    cells = skipped_cells(why)
                else:
                    n, k = "20000", "64"
                    proto = os.path.join(os.path.dirname(BENCH), "scenarios", "proto", "etcd_kv.proto")
                    args7 = [etcd.target, proto, n, k]
                    d = impls("w7", args7)
                    gpy = grpc_python(py)
                    d["asyncio"] = [gpy, B("w7.py")] + args7 if gpy else "python3-grpcio not importable"
                    if not isinstance(d["node"], str):
                        d["node"] = node_grpc(node) or d["node"]
                    wl = {"id": "W7", "key": "calls_per_s", "timeout": 60, "budget": 60}
                    cells = measure(runner, wl, d, args.repeat, args.verbose)
                    for name, c in cells.items():
                        if not c.reason:
                            c.cpu_per_req = [cpu * 1e6 / e["n"] for cpu, e in zip(c.cpu, c.extra)]
            finally:
                etcd.stop()
            best = lambda v, hi: (max if hi else min)(x for x in (v["asyncio"], v["node"]) if x) \
                if (v["asyncio"] or v["node"]) else None  # noqa: E731
            add_row("W7", "gRPC calls", "calls/s", cells, "values", ">= best peer", ">=",
                    lambda v: best(v, True))
            add_row("W7", "client CPU", "µs/call", cells, "cpu_per_req", "<= 0.5x best peer", "<=",
                    lambda v: 0.5 * best(v, False) if best(v, False) else None)
            add_notes("W7", cells)
            notes_runs("W7", cells)

        notes[:0] = [f"{','.join(ids)} {name}: n/a — {why}" for (name, why), ids in reasons.items()]
        notes.append("floors: W1, W2 plain Lua 5.4 coroutines and a timer heap (bench/floor_sched.lua); "
                     "W2 also libuv timers in C (bench/floor_w2.c); W3 posix_spawn+waitpid in C "
                     "(bench/spawn_limit.c); W4 posix_spawn+poll in C (bench/ready_limit.c); W5 libcurl "
                     "multi on libuv in C (bench/floor_w5.c), and wrk -t1 -c64 -d3s; W6 a Lua state "
                     "and a libuv loop in C (bench/floor_w6.c).")
        if runner.orphans:
            notes.append(f"warning: {runner.orphans} process(es) were left behind by benchmark "
                         "programs and killed by the harness.")
        if launch_err:
            notes.append(f"warning: {launch_err}; peak RSS includes the harness's own memory "
                         "and W6 includes Python's spawn overhead")
        notes.append(f"total bench time {time.monotonic() - t_start:.0f} s")
        print_table(rows, notes)
        if args.json:
            with open(os.path.join(old_cwd, args.json), "w") as f:
                json.dump({"machine": env_lines, "results": data, "notes": notes}, f, indent=2)
    finally:
        if nginx:
            nginx.stop()
        runner.sweep()
        os.chdir(old_cwd)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)

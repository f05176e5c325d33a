"""Helpers shared by the benchmark drivers bench.py, lua_bench.py and repl_bench.py (imported
from this folder; not run by itself). Standard library only.

  - log() with the driver's prefix, BenchError, statistics (nearest-rank percentile, summary)
  - processes: child subreaper, reaping orphans, /proc checks, the sweep of a runtime dir
    (delete VMs through the CLI, SIGKILL any QEMU left by pid file)
  - the plasmavmc CLI and plain-socket QMP (handshake, one command, the persistent-connection
    round-trip floor), waiting for the guest's readiness line
  - the driver's frame: argument helpers, SIGTERM/SIGHUP as KeyboardInterrupt, and run_bench(),
    which runs the bench, always cleans up, prints the table, writes --json and returns the
    exit status (0 all targets met, 3 some target missed, 1 the benchmark failed, 130 a signal)
"""
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

READY_LINE = b"PLASMAVMC-GUEST-READY"

NAME = "bench"   # log prefix; setup() sets the driver's


class BenchError(Exception):
    pass


def log(msg):
    print(f"{NAME}: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- statistics

def pct(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    rank = max(1, min(len(s), -(-p * len(s) // 100)))
    return s[int(rank) - 1]


def summary(values, with_max=True):
    s = {"n": len(values), "median": statistics.median(values), "p90": pct(values, 90),
         "mean": statistics.fmean(values), "min": min(values)}
    if with_max:
        s["max"] = max(values)
    return s


# ---------------------------------------------------------------------------- processes

def become_subreaper():
    """QEMU is spawned by plasmavmc in a new session and outlives a CLI call; as a subreaper
    this process inherits it and can reap it (PID 1 in this sandbox does not reap orphans)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_CHILD_SUBREAPER = 36
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except OSError:
        return False


def reap_orphans():
    """Reaps every exited child. Call only when no subprocess.Popen is outstanding."""
    reaped = 0
    for _ in range(10000):
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        reaped += 1
    return reaped


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def cmdline_mentions(pid, text):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False


def force_delete(plasmavmc, env, names):
    """`plasmavmc delete NAME --force` for each name; failures are logged, not raised."""
    for name in names:
        try:
            cli(plasmavmc, env, "delete", name, "--force", check=False, timeout=30)
        except Exception as e:   # keep cleaning
            log(f"cleanup: delete {name}: {e}")


def kill_strays_and_reap(root):
    """SIGKILLs any QEMU still alive that was launched from runtime dir `root` (by its
    qemu.pid, only if its command line names `root`), then reaps what has exited."""
    if os.path.isdir(root):
        for entry in os.listdir(root):
            pidfile = os.path.join(root, entry, "qemu.pid")
            try:
                pid = int(open(pidfile).read().strip())
            except (OSError, ValueError):
                continue
            if pid_alive(pid) and cmdline_mentions(pid, root):
                os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    reap_orphans()


# ---------------------------------------------------------------------------- CLI, QMP, guest

def cli(plasmavmc, env, *argv, check=True, timeout=60):
    """Runs `plasmavmc ARGV…`; raises BenchError on a non-zero exit if `check`."""
    r = subprocess.run([plasmavmc, *argv], env=env, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise BenchError(f"plasmavmc {' '.join(argv)} -> exit {r.returncode}: {r.stderr.strip()}")
    return r


def qemu_version():
    """The first line of `qemu-system-x86_64 --version`, as a list of at most one line."""
    return subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0:1]


def wait_ready(root, name, timeout=120.0):
    """Waits for READY_LINE in the console log of VM `name` under runtime dir `root`."""
    path = os.path.join(root, name, "console.log")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                if READY_LINE in f.read():
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise BenchError(f"vm {name}: no {READY_LINE.decode()} in {path} within {timeout:.0f} s")


def qmp_handshake(s, f, bad_greeting):
    """Greeting + qmp_capabilities on connected socket `s` read through `f`; `bad_greeting`
    is the BenchError message (str.format with `greeting`) when the greeting is not QMP's."""
    greeting = json.loads(f.readline())
    if "QMP" not in greeting:
        raise BenchError(bad_greeting.format(greeting=greeting))
    s.sendall(b'{"execute":"qmp_capabilities"}\n')
    while "return" not in json.loads(f.readline()):
        pass


def qmp_command(s, f, line):
    """Sends one command line; returns its reply (events skipped)."""
    s.sendall(line)
    while True:
        msg = json.loads(f.readline())
        if "return" in msg or "error" in msg:
            return msg


def qmp_floor_persistent(sock_path, n, warmup, bad_greeting):
    """The floor: `query-status` round trips (us) on one open blocking socket, one line out,
    read lines until the reply, json.loads; `warmup` untimed calls first."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(sock_path)
        f = s.makefile("rb")
        qmp_handshake(s, f, bad_greeting)
        samples = []
        now = time.perf_counter_ns
        for i in range(warmup + n):
            t0 = now()
            s.sendall(b'{"execute":"query-status","id":%d}\n' % i)
            while True:
                msg = json.loads(f.readline())
                if "return" in msg or "error" in msg:
                    break
            t1 = now()
            if "return" not in msg:
                raise BenchError(f"query-status failed: {msg!r}")
            if i >= warmup:
                samples.append((t1 - t0) / 1e3)
        f.close()
        return samples
    finally:
        s.close()


# ---------------------------------------------------------------------------- the driver's frame

def env_int(key, default):
    return int(os.environ.get(key, default))


def check_ranges(parser, args, ranges):
    """parser.error() unless each (attribute, lo, hi) of `ranges` has lo <= value <= hi."""
    for name, lo, hi in ranges:
        if not lo <= getattr(args, name) <= hi:
            parser.error(f"--{name.replace('_', '-')} must be in {lo}..{hi}")


def setup(name, subreaper):
    """Sets the log prefix, turns SIGTERM and SIGHUP into KeyboardInterrupt (so cleanup runs)
    and, if `subreaper`, makes this process a child subreaper."""
    global NAME
    NAME = name

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    if subreaper and not become_subreaper():
        log("warning: could not become a child subreaper; killed QEMUs may stay as zombies of PID 1")


def targets_table(targets):
    """The closing "## Targets" markdown table, as lines."""
    L = ["## Targets", "", "| target | measured | result |", "|---|---|---|"]
    for t in targets:
        L.append(f"| {t['target']} | {t['measured']} | {'PASS' if t['pass'] else 'FAIL'} |")
    return L


def run_bench(bench, json_path, cleanup):
    """bench.run(), then cleanup() whatever happened; prints bench.table(), writes
    bench.results to `json_path` if given. Returns the exit status: 0 all targets met,
    3 some target missed, 1 BenchError, 130 interrupted (SIGINT/SIGTERM/SIGHUP)."""
    try:
        bench.run()
    except BenchError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        return 130
    finally:
        cleanup()
    print(bench.table())
    if json_path:
        with open(json_path, "w") as f:
            json.dump(bench.results, f, indent=2)
            f.write("\n")
        log(f"results written to {json_path}")
    return 0 if all(t["pass"] for t in bench.results["targets"]) else 3

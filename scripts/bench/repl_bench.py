#!/usr/bin/env python3
"""plasmavmc REPL speed benchmark (not a test). Normally run through scripts/bench/repl.sh.

Targets (from the issue), release build:
  1. `plasmavmc repl` start to first prompt under 150 ms.
     Each program is spawned in a fresh pseudo-terminal (os.forkpty, TERM=xterm, 80x24); the
     time runs from just before the fork to its prompt text arriving on the master side
     (`plasmavmc> `; baselines in the same harness: `lua5.4 -i` to `> `, `python3 -q -i` to
     `>>> `). Programs alternate within each round; the first rounds are warm-up.
  2. A keystroke completion under 10 ms.
     In one running REPL, per round: type the prefix (`vm.c`, `string.f`) and wait for its
     echo; type one ordinary character (`r`, `o`) and time its echo (the pty + line-editor
     floor); press Tab and time until the completed rest (`eate`, `rmat`) echoes back; Ctrl-U
     clears the line. Context row: Enter on `1` until the value and the next prompt are back.
Prints markdown tables with PASS/FAIL; --json PATH writes the results as JSON too.
Standard library only; shared helpers (statistics, signals, output) in benchlib.py next to this
file. Every program it starts is ended (Ctrl-D, then SIGKILL) before it exits.
"""
import argparse
import errno
import fcntl
import os
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (shared helpers, this folder)
from benchlib import BenchError, log, summary  # noqa: E402

TARGET_START_MS = 150.0       # 1: start to first prompt, median
TARGET_COMPLETE_MS = 10.0     # 2: Tab to completion echoed, median

PROMPT = b"plasmavmc> "


# ---------------------------------------------------------------------------- pty processes

LIVE = {}   # pid -> PtyProc, for cleanup


class PtyProc:
    """A program on the slave side of a fresh pty; the master fd is read with select."""

    def __init__(self, argv, env):
        self.argv, self.env = argv, env
        self.buf = bytearray()
        self.eof = False
        self.status = None
        self.t_spawn = time.perf_counter()
        pid, fd = os.forkpty()
        if pid == 0:   # child: a session leader with the pty as its controlling terminal
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        LIVE[pid] = self

    def _read(self, timeout):
        """One select + read; returns the bytes read (b"" on timeout or end of output)."""
        if self.eof:
            return b""
        r, _, _ = select_fd(self.fd, timeout)
        if not r:
            return b""
        try:
            data = os.read(self.fd, 65536)
        except OSError as e:
            if e.errno != errno.EIO:   # EIO: the slave side is closed, i.e. the child is gone
                raise
            data = b""
        if not data:
            self.eof = True
        self.buf += data
        return data

    def expect(self, pattern, timeout=10.0, since=None):
        """Waits until `pattern` is in the output from offset `since` (default: all output);
        returns (perf_counter when the read completing it returned, offset after it)."""
        start = 0 if since is None else since
        deadline = time.perf_counter() + timeout
        while True:
            i = self.buf.find(pattern, start)
            if i >= 0:
                return time.perf_counter(), i + len(pattern)
            left = deadline - time.perf_counter()
            if left <= 0 or self.eof:
                tail = bytes(self.buf[-300:])
                why = "its output ended" if self.eof else f"{timeout:.0f} s passed"
                raise BenchError(f"{os.path.basename(self.argv[0])}: {pattern!r} not seen ({why}); "
                                 f"last output {tail!r}")
            self._read(left)

    def drain(self, quiet=0.02, cap=1.0):
        """Reads until nothing arrives for `quiet` s (at most `cap` s)."""
        end = time.perf_counter() + cap
        while time.perf_counter() < end and not self.eof:
            if not self._read(quiet):
                return

    def send(self, data):
        os.write(self.fd, data)

    def close(self, eof_key=b"\x04", wait=3.0):
        """Ctrl-D, then SIGKILL after `wait` s; returns seconds from Ctrl-D to exit (None if killed)."""
        t0 = time.perf_counter()
        took = None
        try:
            if not self.eof:
                self.send(eof_key)
            deadline = t0 + wait
            while time.perf_counter() < deadline:
                self._read(0.01)
                pid, st = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.status = st
                    took = time.perf_counter() - t0
                    break
        except OSError:
            pass
        self.kill()
        return took

    def kill(self):
        """SIGKILL (unless it has exited and been reaped), close the master fd, forget it."""
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                _, self.status = os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        LIVE.pop(self.pid, None)


def select_fd(fd, timeout):
    return select.select([fd], [], [], max(0.0, timeout))


def kill_all():
    for p in list(LIVE.values()):
        p.kill()


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, a):
        self.a = a
        self.root = os.path.abspath(a.runtime_dir)
        self.home = os.path.join(self.root, "home")
        os.makedirs(self.home, exist_ok=True)
        self.history = os.path.join(self.root, "history")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("LUA_INIT", "PYTHONSTARTUP", "INPUTRC", "EDITRC"))}
        # HOME in the temp dir: python3 -i would read and write ~/.python_history otherwise.
        env.update(TERM="xterm", HOME=self.home, PLASMAVMC_HISTORY=self.history,
                   PLASMAVMC_RUNTIME_DIR=self.root, LC_ALL="C.UTF-8")
        env.pop("XDG_STATE_HOME", None)
        self.env = env
        self.programs = [("plasmavmc", [a.plasmavmc, "repl"], PROMPT)]
        if a.lua:
            self.programs.append(("lua", [a.lua, "-i"], b"> "))
        if a.python:
            self.programs.append(("python", [a.python, "-q", "-i"], b">>> "))
        self.results = {"config": {}, "start": {}, "keys": {}, "context": {}, "targets": []}

    # ---- 1. start to first prompt

    def one_start(self, argv, prompt):
        p = PtyProc(argv, self.env)
        try:
            t_prompt, _ = p.expect(prompt, timeout=10)
            first = (t_prompt - p.t_spawn) * 1e3
            rss = rss_kb(p.pid)
        finally:
            took = p.close()
        if p.status is not None and os.WIFEXITED(p.status) and os.WEXITSTATUS(p.status) == 127 and not p.buf:
            raise BenchError(f"could not exec {argv[0]}")
        return first, rss, (took * 1e3 if took is not None else None)

    def bench_start(self):
        a = self.a
        names = [n for n, _, _ in self.programs]
        log(f"start: {a.warmup} warm-up + {a.starts} rounds of {', '.join(names)} (order rotated)")
        samples = {n: [] for n in names}
        rss = {n: [] for n in names}
        exits = {n: [] for n in names}
        for r in range(a.warmup + a.starts):
            k = r % len(self.programs)
            for name, argv, prompt in self.programs[k:] + self.programs[:k]:
                ms, kb, ex = self.one_start(argv, prompt)
                if r >= a.warmup:
                    samples[name].append(ms)
                    if kb:
                        rss[name].append(kb)
                    if ex is not None:
                        exits[name].append(ex)
        res = {}
        for n in names:
            s = summary(samples[n])
            s["samples_ms"] = samples[n]
            s["rss_kb_median"] = statistics.median(rss[n]) if rss[n] else None
            s["exit_ms"] = summary(exits[n]) if exits[n] else None
            res[n] = s
        self.results["start"] = res

    # ---- 2. keystrokes in one REPL

    def bench_keys(self):
        a = self.a
        log(f"keys: {a.warmup_rounds} warm-up + {a.rounds} rounds per case in one REPL")
        p = PtyProc([a.plasmavmc, "repl"], self.env)
        cases = [("vm.c", b"r", b"eate", "vm.create"), ("string.f", b"o", b"rmat", "string.format")]
        res = {}
        try:
            p.expect(PROMPT)
            p.drain()
            for prefix, char, rest, label in cases:
                echo, tab = [], []
                for r in range(a.warmup_rounds + a.rounds):
                    mark = len(p.buf)
                    p.send(prefix.encode())
                    _, mark = p.expect(prefix.encode(), timeout=5, since=mark)
                    p.drain(quiet=0.005)
                    mark = len(p.buf)
                    t0 = time.perf_counter()
                    p.send(char)
                    t1, mark = p.expect(char, timeout=5, since=mark)
                    p.drain(quiet=0.005)
                    mark = len(p.buf)
                    t2 = time.perf_counter()
                    p.send(b"\t")
                    t3, _ = p.expect(rest, timeout=5, since=mark)
                    p.drain(quiet=0.005)
                    p.send(b"\x15")   # Ctrl-U: kill the line
                    p.drain(quiet=0.02)
                    if r >= a.warmup_rounds:
                        echo.append((t1 - t0) * 1e3)
                        tab.append((t3 - t2) * 1e3)
                res[label] = {"typed": prefix + char.decode(), "echo": summary(echo), "tab": summary(tab),
                              "echo_ms": echo, "tab_ms": tab}
            # Context: Enter on a trivial expression until its value and the next prompt are back
            # (compile + run + print + history written to disk).
            enter = []
            for r in range(a.warmup_rounds + a.rounds):
                mark = len(p.buf)
                p.send(b"1")
                _, mark = p.expect(b"1", timeout=5, since=mark)
                p.drain(quiet=0.005)
                mark = len(p.buf)
                t0 = time.perf_counter()
                p.send(b"\r")
                t1, _ = p.expect(b"1\r\n" + PROMPT, timeout=5, since=mark)
                p.drain(quiet=0.005)
                if r >= a.warmup_rounds:
                    enter.append((t1 - t0) * 1e3)
            self.results["context"]["enter"] = summary(enter)
            self.results["context"]["rss_kb_after_keys"] = rss_kb(p.pid)
        finally:
            took = p.close()
        self.results["context"]["exit_ms_after_keys"] = took * 1e3 if took is not None else None
        self.results["keys"] = res

    def bench_noninteractive(self):
        """Context: `plasmavmc repl -e 'return 1'` spawned with pipes (no pty, no libedit):
        whole process, start to exit."""
        a = self.a
        env = dict(self.env)
        t = []
        for r in range(3 + a.starts):
            t0 = time.perf_counter()
            cp = subprocess.run([a.plasmavmc, "repl", "-e", "return 1"], env=env, capture_output=True,
                                stdin=subprocess.DEVNULL, timeout=30)
            t1 = time.perf_counter()
            if cp.returncode != 0 or cp.stdout.strip() != b"1":
                raise BenchError(f"plasmavmc repl -e 'return 1': exit {cp.returncode}, "
                                 f"stdout {cp.stdout!r}, stderr {cp.stderr[-300:]!r}")
            if r >= 3:
                t.append((t1 - t0) * 1e3)
        self.results["context"]["e_return_1"] = summary(t)

    def run(self):
        a = self.a
        self.results["config"] = {
            "starts": a.starts, "warmup": a.warmup, "rounds": a.rounds, "warmup_rounds": a.warmup_rounds,
            "plasmavmc": a.plasmavmc, "lua": a.lua, "python": a.python, "cpus": os.cpu_count(),
            "harness_python": sys.version.split()[0],
        }
        self.bench_start()
        self.bench_keys()
        self.bench_noninteractive()
        self.judge()

    # ---- report

    def judge(self):
        t = self.results["targets"]
        s = self.results["start"]["plasmavmc"]
        t.append({"target": f"1. `plasmavmc repl` start to first prompt < {TARGET_START_MS:.0f} ms (median)",
                  "measured": f"{s['median']:.1f} ms (p90 {s['p90']:.1f} ms)",
                  "pass": s["median"] < TARGET_START_MS})
        for label, k in self.results["keys"].items():
            t.append({"target": f"2. Tab completion `{k['typed']}` -> `{label.split('.')[1]}` "
                                f"< {TARGET_COMPLETE_MS:.0f} ms (median)",
                      "measured": f"{k['tab']['median']:.2f} ms (p90 {k['tab']['p90']:.2f} ms)",
                      "pass": k["tab"]["median"] < TARGET_COMPLETE_MS})

    def table(self):
        cfg, st, keys, ctx = (self.results[k] for k in ("config", "start", "keys", "context"))
        L = [f"plasmavmc REPL bench: {cfg['cpus']} cpus, harness python {cfg['harness_python']}, "
             f"pty 80x24 TERM=xterm", ""]
        L += [f"## 1. Start to first prompt (fresh pty each; {cfg['starts']} rounds after {cfg['warmup']} warm-up, "
              "programs alternated)", "",
              "| program | prompt | median ms | p90 ms | min ms | max ms | vs plasmavmc | RSS at prompt MiB | Ctrl-D -> exit ms (median) |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        base = st["plasmavmc"]["median"]
        labels = {"plasmavmc": "`plasmavmc repl` (release)", "lua": f"`{os.path.basename(cfg['lua'] or 'lua')} -i`",
                  "python": f"`{cfg['python']} -q -i`"}
        for name, _, prompt in self.programs:
            s = st[name]
            rss = f"{s['rss_kb_median'] / 1024:.1f}" if s["rss_kb_median"] else "?"
            ex = f"{s['exit_ms']['median']:.1f}" if s["exit_ms"] else "?"
            L.append(f"| {labels[name]} | `{prompt.decode()}` | {s['median']:.1f} | {s['p90']:.1f} | {s['min']:.1f} "
                     f"| {s['max']:.1f} | {s['median'] / base:.2f}x | {rss} | {ex} |")
        e = ctx["e_return_1"]
        L.append(f"| context: `plasmavmc repl -e 'return 1'`, pipes, spawn -> exit | | {e['median']:.1f} | {e['p90']:.1f} "
                 f"| {e['min']:.1f} | {e['max']:.1f} | {e['median'] / base:.2f}x | | |")
        L += ["", f"## 2. Keystrokes in one running REPL ({cfg['rounds']} rounds per case after "
                  f"{cfg['warmup_rounds']} warm-up; times from write() on the master to the echo read back)", "",
              "| keystroke | median ms | p90 ms | min ms | max ms | completion - echo (medians) |",
              "|---|---:|---:|---:|---:|---:|"]
        for label, k in keys.items():
            ec, tb = k["echo"], k["tab"]
            prefix = k["typed"][:-1]
            L.append(f"| `{prefix}` + `{k['typed'][-1]}`: plain character echo (floor) | {ec['median']:.3f} "
                     f"| {ec['p90']:.3f} | {ec['min']:.3f} | {ec['max']:.3f} | |")
            L.append(f"| `{k['typed']}` + Tab -> `{label}` | {tb['median']:.3f} | {tb['p90']:.3f} | {tb['min']:.3f} "
                     f"| {tb['max']:.3f} | +{tb['median'] - ec['median']:.3f} ms ({tb['median'] / ec['median']:.1f}x) |")
        en = ctx["enter"]
        L.append(f"| context: `1` + Enter -> `1` and next prompt (eval + history write) | {en['median']:.3f} "
                 f"| {en['p90']:.3f} | {en['min']:.3f} | {en['max']:.3f} | |")
        if ctx.get("rss_kb_after_keys"):
            L += ["", f"REPL RSS after the keystroke rounds: {ctx['rss_kb_after_keys'] / 1024:.1f} MiB."]
        L += [""] + benchlib.targets_table(self.results["targets"])
        return "\n".join(L)


def main():
    env_int = benchlib.env_int
    default_python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plasmavmc", required=True, help="release plasmavmc binary")
    p.add_argument("--runtime-dir", required=True, help="empty temp folder (history, HOME, runtime dir)")
    p.add_argument("--starts", type=int, default=env_int("REPL_BENCH_STARTS", 30), help="start rounds (env REPL_BENCH_STARTS)")
    p.add_argument("--warmup", type=int, default=env_int("REPL_BENCH_WARMUP", 3), help="start warm-up rounds (env REPL_BENCH_WARMUP)")
    p.add_argument("--rounds", type=int, default=env_int("REPL_BENCH_ROUNDS", 50), help="keystroke rounds per case (env REPL_BENCH_ROUNDS)")
    p.add_argument("--warmup-rounds", type=int, default=env_int("REPL_BENCH_WARMUP_ROUNDS", 5), help="(env REPL_BENCH_WARMUP_ROUNDS)")
    p.add_argument("--lua", default=shutil.which("lua5.4") or "", help="lua baseline ('' to skip; default lua5.4 on PATH)")
    p.add_argument("--python", default=default_python, help="python baseline ('' to skip; default %(default)s)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    a = p.parse_args()
    benchlib.check_ranges(p, a, (("starts", 1, 1000), ("warmup", 0, 100), ("rounds", 1, 10000), ("warmup_rounds", 0, 1000)))
    for opt in ("plasmavmc", "lua", "python"):
        v = getattr(a, opt)
        if v:
            path = shutil.which(v)
            if not path:
                p.error(f"--{opt}: {v} is not an executable")
            setattr(a, opt, os.path.abspath(path))

    benchlib.setup("repl-bench", subreaper=False)
    b = Bench(a)
    return benchlib.run_bench(b, a.json, kill_all)


if __name__ == "__main__":
    sys.exit(main())

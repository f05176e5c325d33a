#!/usr/bin/env python3
"""Lua plan runner benchmark (not a test). Normally run through scripts/bench/lua.sh.

Targets (from the issue), each measured by a `plasmavmc run` plan in this folder:
  1. lua_calls.lua     a call from Lua into a trivial Swift binding (__plasma_now) < 1 us
                       (loop of N calls minus an empty loop; a Lua function, math.abs and
                       os.clock for context).
  2. lua_status.lua    v:status() on a live VM within 1.3x of the QMP round trip alone.
                       The plan times K status / qmp("query-status") / sleep(0) calls on a VM
                       made here with the CLI; between plan runs, on the same VM, this script
                       measures two floors with a plain Python socket:
                         per-call floor:   connect + greeting + qmp_capabilities +
                                           query-status + close per call (the same QMP work
                                           as one status call today)
                         persistent floor: query-status round trip on one open connection
                                           (bench.py's floor)
                       Plan runs and floors alternate over rounds.
  3. lua_parallel.lua  vm.parallel booting 4 guests vs 1 guest alone (create -> readiness
                       line), alternated over rounds; target "well under 4x".
  4. (same plan)       VmRSS/VmHWM of the plasmavmc process itself (not QEMU), sampled from
                       /proc while the four VMs boot and run; target < 40 MiB.
Prints markdown tables with PASS/FAIL; --json PATH writes the results as JSON too.
Standard library only; shared helpers (statistics, cleanup, signals, output) in benchlib.py
next to this file.
"""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402  (shared helpers, this folder)
from benchlib import BenchError, log, reap_orphans, summary  # noqa: E402

TARGET_CALL_NS = 1000.0        # 1: Swift binding call < 1 us
TARGET_STATUS_RATIO = 1.3      # 2: status median <= 1.3 x floor median
TARGET_PARALLEL_RATIO = 3.0    # 3: "well under 4x": we call < 3.0x a pass (2 cores: 2x is the CPU floor)
TARGET_RSS_MIB = 40.0          # 4: plasmavmc's own RSS with four VMs up


# ---------------------------------------------------------------------------- processes

def read_mem_kb(pid):
    """(VmRSS, VmHWM) in kB from /proc/PID/status, or None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            text = f.read()
    except OSError:
        return None
    rss = hwm = None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    if rss is None or hwm is None:   # a zombie has no Vm* lines
        return None
    return rss, hwm


# ---------------------------------------------------------------------------- plan runs

class PlanRun:
    """One `plasmavmc run PLAN args…`: LUABENCH records from stdout, phase markers, and the
    memory of the plasmavmc process sampled every `interval` s, tagged with the phase."""

    def __init__(self, bench, plan, args, timeout, interval=0.02):
        self.b, self.plan, self.args, self.timeout, self.interval = bench, plan, args, timeout, interval
        self.records, self.samples, self.stderr_lines = [], [], []
        self.phase = "start"
        self.proc = None

    def _sample(self):
        pid = self.proc.pid
        while self.proc.poll() is None:
            m = read_mem_kb(pid)
            if m is not None:
                self.samples.append((time.monotonic(), self.phase, m[0], m[1]))
            time.sleep(self.interval)

    def _stderr(self):
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def run(self):
        argv = [self.b.a.plasmavmc, "run", "--runtime-dir", self.b.root,
                "--timeout", str(self.timeout), os.path.join(HERE, self.plan), *self.args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1, cwd=self.b.repo)
        self.b.current = self.proc
        threads = [threading.Thread(target=self._sample, daemon=True),
                   threading.Thread(target=self._stderr, daemon=True)]
        for t in threads:
            t.start()
        try:
            for line in self.proc.stdout:
                line = line.rstrip("\n")
                if line.startswith("LUABENCH-PHASE "):
                    self.phase = line.split(" ", 1)[1]
                elif line.startswith("LUABENCH "):
                    self.records.append(json.loads(line.split(" ", 1)[1]))
                elif line:
                    log(f"{self.plan}: {line}")
            rc = self.proc.wait(timeout=self.timeout + 60)
        finally:
            for t in threads:
                t.join(timeout=5)
            self.b.current = None
        reap_orphans()
        if rc != 0:
            tail = "\n".join(self.stderr_lines[-15:])
            raise BenchError(f"plasmavmc run {self.plan} exited {rc}:\n{tail}")
        return self

    def record(self, kind):
        for r in self.records:
            if r.get("kind") == kind:
                return r
        raise BenchError(f"{self.plan}: no '{kind}' record in its output")

    def mem(self, phases=None):
        """(max VmRSS kB, last VmHWM kB, samples) over the samples in `phases` (all if None)."""
        s = [x for x in self.samples if phases is None or x[1] in phases]
        if not s:
            return None
        return {"max_rss_kb": max(x[2] for x in s), "median_rss_kb": statistics.median(x[2] for x in s),
                "hwm_kb": s[-1][3], "samples": len(s)}


# ---------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args):
        self.a = args
        self.root = os.path.abspath(args.runtime_dir)
        self.repo = os.path.dirname(os.path.dirname(HERE))
        self.env = dict(os.environ, PLASMAVMC_RUNTIME_DIR=self.root)
        self.current = None        # the running `plasmavmc run`, if any
        self.cli_vms = set()
        self.results = {"config": {}, "calls": {}, "status": {}, "parallel": {}, "memory": {}, "targets": []}

    def cli(self, *argv, check=True, timeout=60):
        return benchlib.cli(self.a.plasmavmc, self.env, *argv, check=check, timeout=timeout)

    # ---- 1. calls

    def bench_calls(self):
        log(f"calls: N={self.a.calls_n} x {self.a.calls_reps} reps")
        pr = PlanRun(self, "lua_calls.lua", [str(self.a.calls_n), str(self.a.calls_reps)], timeout=600).run()
        rec = pr.record("calls")
        self.results["calls"] = rec
        self.results["memory"]["calls_plan"] = pr.mem()

    # ---- 2. status vs floors

    def floor_per_call(self, sock_path, k, warmup):
        """connect + greeting + qmp_capabilities + query-status + close, per call."""
        now = time.perf_counter_ns
        samples = []
        for i in range(warmup + k):
            t0 = now()
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(10)
                s.connect(sock_path)
                f = s.makefile("rb")
                benchlib.qmp_handshake(s, f, "per-call floor: bad greeting")
                msg = benchlib.qmp_command(s, f, b'{"execute":"query-status"}\n')
                if msg.get("return", {}).get("status") != "running":
                    raise BenchError(f"per-call floor: query-status said {msg!r}")
                f.close()
            finally:
                s.close()
            t1 = now()
            if i >= warmup:
                samples.append((t1 - t0) / 1e3)
        return samples

    def floor_persistent(self, sock_path, n, warmup):
        """query-status round trips on one open connection (bench.py's floor)."""
        return benchlib.qmp_floor_persistent(sock_path, n, warmup, "persistent floor: bad greeting")

    def bench_status(self):
        a = self.a
        name = "lb-status"
        log(f"status: creating and starting vm {name}")
        self.cli_vms.add(name)
        self.cli("create", name, "--kernel", a.kernel, "--initrd", a.initrd, "--append", "quiet",
                 "--memory", "256M", "--accel", "tcg")
        self.cli("start", name)
        benchlib.wait_ready(self.root, name)
        sock_path = os.path.join(self.root, name, "qmp.sock")
        pooled = {k: [] for k in ("status", "qmp", "sleep0", "per_call", "persistent")}
        rmed = {k: [] for k in pooled}

        def plan():
            pr = PlanRun(self, "lua_status.lua", [name, str(a.status_k), "20"], timeout=600).run()
            rec = pr.record("status")
            for k in ("status", "qmp", "sleep0"):
                pooled[k] += rec["samples_us"][k]
                rmed[k].append(statistics.median(rec["samples_us"][k]))

        def per_call():
            s = self.floor_per_call(sock_path, a.status_k, 20)
            pooled["per_call"] += s
            rmed["per_call"].append(statistics.median(s))

        def persistent():
            s = self.floor_persistent(sock_path, a.persistent_n, 100)
            pooled["persistent"] += s
            rmed["persistent"].append(statistics.median(s))

        steps = [("plan", plan), ("per-call floor", per_call), ("persistent floor", persistent)]
        for r in range(a.status_rounds):
            order = steps[r % 3:] + steps[:r % 3]
            for label, fn in order:
                log(f"status round {r + 1}/{a.status_rounds}: {label}")
                fn()
        res = {}
        for k, v in pooled.items():
            s = summary(v)
            s["round_medians"] = rmed[k]
            res[k] = s
        self.results["status"] = res
        self.cli("delete", name, "--force")
        self.cli_vms.discard(name)
        reap_orphans()

    # ---- 3 + 4. parallel boot and memory

    def bench_parallel(self):
        a = self.a
        log(f"parallel: {a.parallel_rounds} rounds of 1 guest alone and 4 with vm.parallel, hold {a.hold} s")
        pr = PlanRun(self, "lua_parallel.lua", [a.kernel, a.initrd, str(a.parallel_rounds), str(a.hold), "lb"],
                     timeout=1200).run()
        rounds = [r for r in pr.records if r.get("kind") == "parallel-round"]
        if len(rounds) != a.parallel_rounds:
            raise BenchError(f"lua_parallel.lua: {len(rounds)} rounds reported, expected {a.parallel_rounds}")
        one = [r["one"]["wall"] for r in rounds]
        four = [r["four"]["wall"] for r in rounds]
        each = [e["ready"] for r in rounds for e in r["four"]["each"]]
        self.results["parallel"] = {
            "rounds": rounds,
            "one": summary(one), "four": summary(four), "four_each_ready": summary(each),
            "ratio": statistics.median(four) / statistics.median(one),
            "round_ratios": [f / o for f, o in zip(four, one)],
        }
        m = self.results["memory"]
        m["idle"] = pr.mem({"idle"})
        m["one"] = pr.mem({"one-boot", "one-up"})
        m["four_boot"] = pr.mem({"four-boot"})
        m["four_up"] = pr.mem({"four-up"})
        m["four"] = pr.mem({"four-boot", "four-up"})
        m["whole_plan"] = pr.mem()
        if not m["four"] or not m["four_up"]:
            raise BenchError("no memory samples while the four VMs were up")

    # ---- run / cleanup

    def run(self):
        a = self.a
        self.results["config"] = {
            "calls_n": a.calls_n, "calls_reps": a.calls_reps, "status_k": a.status_k,
            "status_rounds": a.status_rounds, "persistent_n": a.persistent_n,
            "parallel_rounds": a.parallel_rounds, "hold": a.hold, "accel": "tcg",
            "runtime_dir": self.root, "cpus": os.cpu_count(), "python": sys.version.split()[0],
            "qemu": benchlib.qemu_version(),
        }
        only = set(a.only.split(",")) if a.only else {"calls", "status", "parallel"}
        if "calls" in only:
            self.bench_calls()
        if "status" in only:
            self.bench_status()
        if "parallel" in only:
            self.bench_parallel()
        self.judge()

    def cleanup(self):
        p = self.current
        if p is not None and p.poll() is None:
            # plasmavmc run turns SIGTERM into an interrupt and removes its ephemeral VMs.
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.current = None
        # Every VM in the runtime dir (the plan's own ones too), then any QEMU left by pid file.
        if os.path.isdir(self.root):
            benchlib.force_delete(self.a.plasmavmc, self.env,
                                  [e for e in sorted(os.listdir(self.root))
                                   if os.path.isfile(os.path.join(self.root, e, "spec.json"))])
        self.cli_vms.clear()
        benchlib.kill_strays_and_reap(self.root)

    # ---- report

    def judge(self):
        t = self.results["targets"]
        c, st, par, mem = (self.results[k] for k in ("calls", "status", "parallel", "memory"))
        if c:
            ns = c["median_ns"]["swift"]
            t.append({"target": "1. Lua -> trivial Swift binding (`__plasma_now()`) < 1 us per call",
                      "measured": f"{ns:.0f} ns (Lua fn {c['median_ns']['lua']:.0f} ns, "
                                  f"math.abs {c['median_ns']['c_abs']:.0f} ns)", "pass": ns < TARGET_CALL_NS})
        if st:
            s, pc, pe = st["status"]["median"], st["per_call"]["median"], st["persistent"]["median"]
            t.append({"target": f"2a. `v:status()` <= {TARGET_STATUS_RATIO}x per-call-connection floor "
                                "(connect+greeting+caps+query-status+close: same QMP work)",
                      "measured": f"{s / pc:.2f}x ({s:.0f} vs {pc:.0f} us)", "pass": s <= TARGET_STATUS_RATIO * pc})
            t.append({"target": f"2b. `v:status()` <= {TARGET_STATUS_RATIO}x persistent-connection floor "
                                "(one query-status round trip alone)",
                      "measured": f"{s / pe:.2f}x ({s:.0f} vs {pe:.0f} us)", "pass": s <= TARGET_STATUS_RATIO * pe})
        if par:
            r = par["ratio"]
            t.append({"target": f"3. `vm.parallel` 4 boots vs 1 boot: well under 4x (pass < {TARGET_PARALLEL_RATIO:.1f}x)",
                      "measured": f"{r:.2f}x ({par['four']['median']:.2f} vs {par['one']['median']:.2f} s)",
                      "pass": r < TARGET_PARALLEL_RATIO})
        if mem.get("four"):
            m = mem["four"]
            rss = m["max_rss_kb"] / 1024
            hwm = mem["whole_plan"]["hwm_kb"] / 1024
            t.append({"target": f"4. `plasmavmc run` RSS with 4 VMs booting/up < {TARGET_RSS_MIB:.0f} MiB",
                      "measured": f"{rss:.1f} MiB peak VmRSS (VmHWM {hwm:.1f} MiB)",
                      "pass": rss < TARGET_RSS_MIB and hwm < TARGET_RSS_MIB})

    def table(self):
        cfg = self.results["config"]
        c, st, par, mem = (self.results[k] for k in ("calls", "status", "parallel", "memory"))
        L = [f"plasmavmc Lua bench: {(cfg['qemu'] or ['qemu ?'])[0]}, accel tcg, {cfg['cpus']} cpus, "
             f"python {cfg['python']}", ""]
        if c:
            L += [f"## 1. Call cost inside one plan (loop of N={c['n']} calls minus an empty loop, "
                  f"median of {c['reps']} reps, order rotated)", "",
                  "| call | ns per call (median) | per-rep ns | vs Lua function |", "|---|---:|---|---:|"]
            lua = c["median_ns"]["lua"]
            labels = [("swift", "`__plasma_now()` (trivial Swift binding)"),
                      ("lua", "trivial Lua function `f()`"),
                      ("c_abs", "`math.abs(-1.5)` (C function, no syscall)"),
                      ("os_clock", "`os.clock()` (C function + clock_gettime(CPUTIME) syscall)")]
            for k, label in labels:
                reps = " / ".join(f"{x:.0f}" for x in c["ns_per_call"][k])
                L.append(f"| {label} | {c['median_ns'][k]:.1f} | {reps} | {c['median_ns'][k] / lua:.1f}x |")
            L.append(f"| empty loop iteration (subtracted) | {c['median_ns']['empty']:.1f} | | |")
            L += ["", f"Smallest step between two back-to-back `__plasma_now()` calls: {c['min_step_ns']:.0f} ns.", ""]
        if st:
            k = cfg["status_k"]
            L += [f"## 2. `v:status()` on one live VM (K={k} per plan run, interleaved status/qmp/sleep(0); "
                  f"{cfg['status_rounds']} rounds alternating with the floors on the same VM; pooled)", "",
                  "| what | median us | p90 us | mean us | min us | round medians us | vs per-call floor | vs persistent floor |",
                  "|---|---:|---:|---:|---:|---|---:|---:|"]
            pc, pe = st["per_call"]["median"], st["persistent"]["median"]
            rows = [("status", "plan: `v:status()`"),
                    ("qmp", "plan: `v:qmp(\"query-status\")`"),
                    ("sleep0", "plan: `sleep(0)` (scheduler op, no I/O)"),
                    ("per_call", "FLOOR per-call: Python connect+greeting+caps+query-status+close"),
                    ("persistent", f"FLOOR persistent: Python query-status on one open connection (n={cfg['persistent_n']})")]
            for key, label in rows:
                s = st[key]
                rm = " / ".join(f"{x:.0f}" for x in s["round_medians"])
                L.append(f"| {label} | {s['median']:.1f} | {s['p90']:.1f} | {s['mean']:.1f} | {s['min']:.1f} "
                         f"| {rm} | {s['median'] / pc:.2f}x | {s['median'] / pe:.2f}x |")
            L.append("")
        if par:
            L += [f"## 3. Boot: create -> `PLASMAVMC-GUEST-READY` ({cfg['parallel_rounds']} rounds, order alternated)", "",
                  "| what | median s | min s | max s | per round s |", "|---|---:|---:|---:|---|"]
            one_r = " / ".join(f"{r['one']['wall']:.2f}" for r in par["rounds"])
            four_r = " / ".join(f"{r['four']['wall']:.2f}" for r in par["rounds"])
            L.append(f"| 1 guest alone | {par['one']['median']:.2f} | {par['one']['min']:.2f} | {par['one']['max']:.2f} | {one_r} |")
            L.append(f"| 4 guests, `vm.parallel`: all four ready | {par['four']['median']:.2f} | {par['four']['min']:.2f} "
                     f"| {par['four']['max']:.2f} | {four_r} |")
            e = par["four_each_ready"]
            L.append(f"| 4 guests: each guest's own ready time | {e['median']:.2f} | {e['min']:.2f} | {e['max']:.2f} | |")
            L.append("")
            L.append(f"Ratio 4-parallel / 1-alone: {par['ratio']:.2f}x (per round: "
                     + ", ".join(f"{x:.2f}x" for x in par["round_ratios"])
                     + f"). With {cfg['cpus']} cpus and TCG, {4 / max(1, min(4, cfg['cpus'] or 1)):.0f}x is the CPU-bound floor.")
            L.append("")
        if mem.get("four"):
            L += ["## 4. Memory of the `plasmavmc run` process (QEMU excluded), /proc/PID/status every 20 ms", "",
                  "| phase | samples | median VmRSS MiB | max VmRSS MiB | VmHWM at end of phase MiB |", "|---|---:|---:|---:|---:|"]
            rows = [("calls_plan", "plan 1 (2M-call loops, no VM)"), ("idle", "plan 3: idle, no VM"),
                    ("one", "plan 3: 1 guest booting/up"), ("four_boot", "plan 3: 4 guests booting"),
                    ("four_up", "plan 3: 4 guests up (status polls)"), ("whole_plan", "plan 3: whole run")]
            for key, label in rows:
                m = mem.get(key)
                if not m:
                    continue
                L.append(f"| {label} | {m['samples']} | {m['median_rss_kb'] / 1024:.1f} | {m['max_rss_kb'] / 1024:.1f} "
                         f"| {m['hwm_kb'] / 1024:.1f} |")
            L.append("")
        L += benchlib.targets_table(self.results["targets"])
        return "\n".join(L)


def main():
    env_int = benchlib.env_int
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plasmavmc", required=True, help="release plasmavmc binary")
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--runtime-dir", required=True, help="empty folder for the VMs (short path: unix sockets)")
    p.add_argument("--calls-n", type=int, default=env_int("LUA_BENCH_CALLS_N", 2_000_000), help="calls per loop (env LUA_BENCH_CALLS_N)")
    p.add_argument("--calls-reps", type=int, default=env_int("LUA_BENCH_CALLS_REPS", 5), help="(env LUA_BENCH_CALLS_REPS)")
    p.add_argument("-k", "--status-k", type=int, default=env_int("LUA_BENCH_STATUS_K", 300), help="status calls per plan run and per-call floor calls per round (env LUA_BENCH_STATUS_K)")
    p.add_argument("--status-rounds", type=int, default=env_int("LUA_BENCH_STATUS_ROUNDS", 3), help="(env LUA_BENCH_STATUS_ROUNDS)")
    p.add_argument("--persistent-n", type=int, default=env_int("LUA_BENCH_PERSISTENT_N", 2000), help="persistent floor calls per round (env LUA_BENCH_PERSISTENT_N)")
    p.add_argument("--parallel-rounds", type=int, default=env_int("LUA_BENCH_PARALLEL_ROUNDS", 3), help="(env LUA_BENCH_PARALLEL_ROUNDS)")
    p.add_argument("--hold", type=float, default=float(os.environ.get("LUA_BENCH_HOLD", 3)), help="seconds the four VMs stay up per round (env LUA_BENCH_HOLD)")
    p.add_argument("--only", help="comma list of calls,status,parallel (default all)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    a = p.parse_args()
    benchlib.check_ranges(p, a, (("calls_n", 1, 100_000_000), ("calls_reps", 1, 100), ("status_k", 1, 100_000),
                                 ("status_rounds", 1, 100), ("persistent_n", 1, 1_000_000), ("parallel_rounds", 1, 50)))
    if not 0 <= a.hold <= 600:
        p.error("--hold must be in 0..600")
    if a.only and not set(a.only.split(",")) <= {"calls", "status", "parallel"}:
        p.error("--only takes a comma list of calls,status,parallel")

    benchlib.setup("lua-bench", subreaper=True)
    b = Bench(a)
    return benchlib.run_bench(b, a.json, b.cleanup)


if __name__ == "__main__":
    sys.exit(main())

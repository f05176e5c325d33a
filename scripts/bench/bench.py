#!/usr/bin/env python3
"""plasmavmc benchmark (not a test). Normally run through scripts/bench/run.sh.

Measures, in one run and on one live VM:
  1. `query-status` round trips: a plain Python socket loop (the floor), the qemu.qmp library,
     and the Swift QMP client (plasmavmc-bench), alternated in rounds, one client at a time.
  2. Wall time of `plasmavmc status NAME` (process start included) next to /bin/true
     spawned the same way.
  3. Control-plane time of create -> start -> kill -> delete through the CLI, next to the same
     lifecycle done by hand from Python with QEMU's own argv (QEMU's own time).
Prints a markdown-style table with the targets marked PASS/FAIL; --json PATH writes the
results as JSON too. Standard library only, plus qemu.qmp for its part of (1); shared helpers
(statistics, cleanup, signals, output) in benchlib.py next to this file.
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (shared helpers, this folder)
from benchlib import BenchError, log, reap_orphans  # noqa: E402

# Targets from the issue.
TARGET_QMP_RATIO = 1.2       # Swift median <= 1.2 x Python socket floor median
TARGET_STATUS_MS = 30.0      # `plasmavmc status` median wall time
TARGET_OVERHEAD_MS = 100.0   # median(CLI lifecycle) - median(raw QEMU lifecycle)

APPEND = "console=ttyS0 quiet"


def summary(values):
    return benchlib.summary(values, with_max=False)


# ---------------------------------------------------------------------------- the bench

class Bench:
    def __init__(self, args):
        self.a = args
        self.root = os.path.abspath(args.runtime_dir)
        self.env = dict(os.environ, PLASMAVMC_RUNTIME_DIR=self.root)
        self.cli_vms = set()       # names we created through the CLI and have not deleted
        self.raw = {}              # pid -> folder of QEMUs spawned by hand and not yet reaped
        self.results = {"config": {}, "qmp": {}, "status": {}, "lifecycle": {}, "targets": []}

    # ---- CLI

    def cli(self, *argv, check=True, timeout=60):
        """(wall ms, CompletedProcess) of `plasmavmc ARGV…`."""
        t0 = time.perf_counter_ns()
        r = benchlib.cli(self.a.plasmavmc, self.env, *argv, check=False, timeout=timeout)
        dt = (time.perf_counter_ns() - t0) / 1e6
        if check and r.returncode != 0:
            raise BenchError(f"plasmavmc {' '.join(argv)} -> exit {r.returncode}: {r.stderr.strip()}")
        return dt, r

    def create(self, name):
        self.cli_vms.add(name)
        return self.cli("create", name, "--kernel", self.a.kernel, "--initrd", self.a.initrd,
                        "--append", APPEND, "--accel", "tcg")[0]

    def delete(self, name, force=False):
        dt = self.cli("delete", name, *(["--force"] if force else []))[0]
        self.cli_vms.discard(name)
        return dt

    # ---- 1. QMP round trips

    def qmp_python_socket(self, sock_path, n, warmup):
        """The floor: blocking socket, one line out, read lines until the reply, json.loads."""
        return benchlib.qmp_floor_persistent(sock_path, n, warmup, "unexpected greeting {greeting!r}")

    def qmp_library(self, sock_path, n, warmup):
        from qemu.qmp import QMPClient

        async def run():
            qmp = QMPClient("bench")
            await qmp.connect(sock_path)
            try:
                samples = []
                now = time.perf_counter_ns
                for i in range(warmup + n):
                    t0 = now()
                    await qmp.execute("query-status")
                    t1 = now()
                    if i >= warmup:
                        samples.append((t1 - t0) / 1e3)
                return samples
            finally:
                await qmp.disconnect()

        return asyncio.run(asyncio.wait_for(run(), timeout=300))

    def qmp_swift_blocking(self, sock_path, n, warmup):
        return self.qmp_swift(sock_path, n, warmup, mode="qmp-blocking")

    def qmp_swift(self, sock_path, n, warmup, mode="qmp"):
        r = subprocess.run([self.a.bench, mode, sock_path, str(n), str(warmup), "--samples"],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise BenchError(f"plasmavmc-bench exit {r.returncode}: {r.stderr.strip()}")
        out = json.loads(r.stdout.strip().splitlines()[-1])
        return out["samples_us"]

    def bench_qmp(self, name):
        sock_path = os.path.join(self.root, name, "qmp.sock")
        clients = [
            ("python-socket", "Python socket loop (floor)", self.qmp_python_socket),
            ("qemu.qmp", "qemu.qmp library (asyncio)", self.qmp_library),
            ("swift", "Swift QMPClient, async (plasmavmc-bench)", self.qmp_swift),
            ("swift-blocking", "Swift QMPConnection, blocking (plasmavmc-bench)", self.qmp_swift_blocking),
        ]
        n, warmup, rounds = self.a.n, self.a.warmup, self.a.rounds
        pooled = {key: [] for key, _, _ in clients}
        round_medians = {key: [] for key, _, _ in clients}
        for r in range(rounds):
            k = r % len(clients)
            order = clients[k:] + clients[:k]   # rotate so nobody always goes first
            for key, _, fn in order:
                log(f"qmp round {r + 1}/{rounds}: {key}, n={n}")
                samples = fn(sock_path, n, warmup)
                if len(samples) != n:
                    raise BenchError(f"{key}: got {len(samples)} samples, expected {n}")
                pooled[key] += samples
                round_medians[key].append(statistics.median(samples))
        floor = statistics.median(pooled["python-socket"])
        for key, label, _ in clients:
            s = summary(pooled[key])
            s.update(label=label, round_medians=round_medians[key], ratio_vs_floor=s["median"] / floor)
            self.results["qmp"][key] = s

    # ---- 2. `plasmavmc status` wall time

    def bench_status(self, name):
        runs = self.a.status_runs
        cmds = {
            "true": ["/bin/true"],
            "status": [self.a.plasmavmc, "status", name],
            "status-missing": [self.a.plasmavmc, "status", "no-such-vm"],
        }
        times = {k: [] for k in cmds}
        for k, argv in cmds.items():   # warm the page cache once each
            subprocess.run(argv, env=self.env, capture_output=True, timeout=30)
        for _ in range(runs):
            for k, argv in cmds.items():
                t0 = time.perf_counter_ns()
                r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
                dt = (time.perf_counter_ns() - t0) / 1e6
                if k == "status" and (r.returncode != 0 or not r.stdout.startswith("running")):
                    raise BenchError(f"plasmavmc status {name}: exit {r.returncode}: {r.stdout!r} {r.stderr!r}")
                if k == "status-missing" and r.returncode != 3:
                    raise BenchError(f"plasmavmc status no-such-vm: exit {r.returncode}, expected 3")
                times[k].append(dt)
        base = statistics.median(times["true"])
        labels = {"true": "/bin/true (spawn baseline)",
                  "status": f"plasmavmc status {name} (running VM)",
                  "status-missing": "plasmavmc status no-such-vm (no QMP, exit 3)"}
        for k in cmds:
            s = summary(times[k])
            s.update(label=labels[k], ratio_vs_true=s["median"] / base)
            self.results["status"][k] = s

    # ---- 3. control plane vs QEMU's own time

    def raw_argv(self, template_argv, template_dir, template_name, new_dir, new_name):
        out = []
        for arg in template_argv:
            arg = arg.replace(template_dir + "/", new_dir + "/")
            if arg == f"guest={template_name}":
                arg = f"guest={new_name}"
            out.append(arg)
        if any(template_dir + "/" in a for a in out):
            raise BenchError("could not substitute the VM folder in the QEMU argv")
        return out

    def raw_lifecycle(self, argv, folder):
        """create/start/kill/delete by hand: mkdir + spawn + greeting + qmp_capabilities,
        cont, SIGKILL + waitpid, rm -rf."""
        now = time.perf_counter_ns
        qmp_path = os.path.join(folder, "qmp.sock")
        t0 = now()
        os.mkdir(folder, 0o700)
        logfd = os.open(os.path.join(folder, "qemu.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            pid = os.posix_spawn(argv[0], argv, os.environ,
                                 file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                                               (os.POSIX_SPAWN_DUP2, logfd, 1),
                                               (os.POSIX_SPAWN_DUP2, logfd, 2)],
                                 setsid=True)
        finally:
            os.close(logfd)
        self.raw[pid] = folder
        s = None
        deadline = time.monotonic() + 15
        while s is None:
            if time.monotonic() > deadline:
                raise BenchError(f"raw QEMU (pid {pid}) did not open {qmp_path} within 15 s")
            wpid, status = os.waitpid(pid, os.WNOHANG)
            if wpid == pid:
                del self.raw[pid]
                raise BenchError(f"raw QEMU exited while starting (status {status}); see {folder}/qemu.log")
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                c.connect(qmp_path)
                s = c
            except (FileNotFoundError, ConnectionRefusedError):
                c.close()
                time.sleep(0.0005)
        try:
            s.settimeout(10)
            f = s.makefile("rb")
            benchlib.qmp_handshake(s, f, "raw QEMU: bad greeting")
            t1 = now()
            msg = benchlib.qmp_command(s, f, b'{"execute":"cont"}\n')
            if "return" not in msg:
                raise BenchError(f"raw QEMU: cont failed: {msg!r}")
            f.close()
        finally:
            s.close()
        t2 = now()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        del self.raw[pid]
        t3 = now()
        shutil.rmtree(folder)
        t4 = now()
        return {"create": (t1 - t0) / 1e6, "start": (t2 - t1) / 1e6,
                "kill": (t3 - t2) / 1e6, "delete": (t4 - t3) / 1e6, "total": (t4 - t0) / 1e6}

    def cli_lifecycle(self, name):
        out = {"create": self.create(name),
               "start": self.cli("start", name)[0],
               "kill": self.cli("kill", name)[0],
               "delete": self.delete(name)}
        out["total"] = sum(out.values())
        return out

    def bench_lifecycle(self, template_argv, template_dir, template_name):
        k = self.a.lifecycle
        verbs = ["create", "start", "kill", "delete", "total"]
        cli = {v: [] for v in verbs}
        raw = {v: [] for v in verbs}
        for i in range(k):
            # Alternate which goes first so drift hits both alike.
            order = ("cli", "raw") if i % 2 == 0 else ("raw", "cli")
            for which in order:
                if which == "cli":
                    r = self.cli_lifecycle(f"lc-{i:02d}")
                    dst = cli
                else:
                    name = f"rw-{i:02d}"
                    folder = os.path.join(self.root, name)
                    r = self.raw_lifecycle(self.raw_argv(template_argv, template_dir, template_name, folder, name), folder)
                    dst = raw
                for v in verbs:
                    dst[v].append(r[v])
                reap_orphans()
            log(f"lifecycle {i + 1}/{k}: cli {cli['total'][-1]:.1f} ms, raw {raw['total'][-1]:.1f} ms")
        res = {}
        for v in verbs:
            res[v] = {"cli": summary(cli[v]), "raw": summary(raw[v]),
                      "diff_median": statistics.median(cli[v]) - statistics.median(raw[v])}
        res["overhead_ms"] = res["total"]["diff_median"]
        self.results["lifecycle"] = res

    # ---- run / cleanup

    def run(self):
        a = self.a
        self.results["config"] = {
            "n": a.n, "warmup": a.warmup, "rounds": a.rounds, "status_runs": a.status_runs,
            "lifecycle_runs": a.lifecycle, "accel": "tcg", "runtime_dir": self.root,
            "qemu": benchlib.qemu_version(),
            "python": sys.version.split()[0], "cpus": os.cpu_count(),
        }
        try:
            import qemu.qmp
            self.results["config"]["qemu.qmp"] = getattr(qemu.qmp, "__version__", None) or _dist_version("qemu.qmp")
        except ImportError as e:
            raise BenchError(f"qemu.qmp is not importable from {sys.executable}: {e}")

        name = "bench"
        log(f"creating and starting vm {name} under {self.root}")
        self.create(name)
        self.cli("start", name)
        benchlib.wait_ready(self.root, name)
        with open(os.path.join(self.root, name, "launch.json")) as f:
            template_argv = json.load(f)["argv"]
        template_dir = os.path.join(self.root, name)

        self.bench_qmp(name)
        log(f"plasmavmc status x{a.status_runs}")
        self.bench_status(name)
        # The lifecycle runs without the benchmark VM so its guest does not compete for CPU.
        self.delete(name, force=True)
        reap_orphans()
        log(f"lifecycle x{a.lifecycle}")
        self.bench_lifecycle(template_argv, template_dir, name)
        self.judge()

    def cleanup(self):
        benchlib.force_delete(self.a.plasmavmc, self.env,
                              [n for n in sorted(self.cli_vms) if os.path.isdir(os.path.join(self.root, n))])
        self.cli_vms.clear()
        for pid, folder in list(self.raw.items()):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            shutil.rmtree(folder, ignore_errors=True)
        self.raw.clear()
        # Anything still alive that was launched from our runtime dir (pidfile/launch record).
        benchlib.kill_strays_and_reap(self.root)

    # ---- report

    def judge(self):
        q, st, lc = self.results["qmp"], self.results["status"], self.results["lifecycle"]
        t = self.results["targets"]
        sw, fl, lib = q["swift"]["median"], q["python-socket"]["median"], q["qemu.qmp"]["median"]
        sb = q["swift-blocking"]["median"]
        t.append({"target": f"QMP round trip: Swift async client <= {TARGET_QMP_RATIO}x Python socket floor",
                  "measured": f"{sw / fl:.2f}x ({sw:.0f} vs {fl:.0f} us)", "pass": sw <= TARGET_QMP_RATIO * fl})
        t.append({"target": f"QMP round trip: Swift blocking connection <= {TARGET_QMP_RATIO}x Python socket floor",
                  "measured": f"{sb / fl:.2f}x ({sb:.0f} vs {fl:.0f} us)", "pass": sb <= TARGET_QMP_RATIO * fl})
        t.append({"target": "QMP round trip: Swift faster than qemu.qmp",
                  "measured": f"{sw:.0f} vs {lib:.0f} us ({sw / lib:.2f}x)", "pass": sw < lib})
        s = st["status"]["median"]
        t.append({"target": f"plasmavmc status (running VM) < {TARGET_STATUS_MS:.0f} ms wall",
                  "measured": f"{s:.1f} ms median (p90 {st['status']['p90']:.1f})", "pass": s < TARGET_STATUS_MS})
        o = lc["overhead_ms"]
        t.append({"target": f"create->start->kill->delete overhead < {TARGET_OVERHEAD_MS:.0f} ms beyond QEMU",
                  "measured": f"{o:.1f} ms ({lc['total']['cli']['median']:.1f} - {lc['total']['raw']['median']:.1f})",
                  "pass": o < TARGET_OVERHEAD_MS})

    def table(self):
        c, q, st, lc = self.results["config"], self.results["qmp"], self.results["status"], self.results["lifecycle"]
        L = []
        L.append(f"plasmavmc bench: {(c['qemu'] or ['qemu ?'])[0]}, accel tcg, {c['cpus']} cpus, "
                 f"python {c['python']}, qemu.qmp {c.get('qemu.qmp')}")
        L.append("")
        L.append(f"## QMP `query-status` round trip on one live VM "
                 f"(n={c['n']} x {c['rounds']} rounds per client, warm-up {c['warmup']}, pooled)")
        L.append("")
        L.append("| client | median us | p90 us | mean us | min us | round medians us | median vs floor |")
        L.append("|---|---:|---:|---:|---:|---|---:|")
        for key in ("python-socket", "qemu.qmp", "swift", "swift-blocking"):
            s = q[key]
            rm = " / ".join(f"{x:.0f}" for x in s["round_medians"])
            L.append(f"| {s['label']} | {s['median']:.1f} | {s['p90']:.1f} | {s['mean']:.1f} | {s['min']:.1f} "
                     f"| {rm} | {s['ratio_vs_floor']:.2f}x |")
        L.append("")
        L.append(f"## CLI wall time, process start included (subprocess.run, {c['status_runs']} runs each, interleaved)")
        L.append("")
        L.append("| command | median ms | p90 ms | mean ms | min ms | median vs /bin/true |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for key in ("true", "status-missing", "status"):
            s = st[key]
            L.append(f"| {s['label']} | {s['median']:.2f} | {s['p90']:.2f} | {s['mean']:.2f} | {s['min']:.2f} "
                     f"| {s['ratio_vs_true']:.1f}x |")
        L.append("")
        L.append(f"## Control plane: create -> start -> kill -> delete ({c['lifecycle_runs']} runs each, alternated)")
        L.append("")
        L.append("Raw = same QEMU argv driven from Python: mkdir+spawn+greeting+qmp_capabilities | cont | SIGKILL+waitpid | rm -rf")
        L.append("")
        L.append("| step | plasmavmc median ms | p90 ms | raw QEMU median ms | p90 ms | overhead (median diff) ms |")
        L.append("|---|---:|---:|---:|---:|---:|")
        for v in ("create", "start", "kill", "delete", "total"):
            r = lc[v]
            L.append(f"| {v} | {r['cli']['median']:.1f} | {r['cli']['p90']:.1f} | {r['raw']['median']:.1f} "
                     f"| {r['raw']['p90']:.1f} | {r['diff_median']:.1f} |")
        L.append("")
        L += benchlib.targets_table(self.results["targets"])
        return "\n".join(L)


def _dist_version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return None


def main():
    env_int = benchlib.env_int
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plasmavmc", required=True, help="release plasmavmc binary")
    p.add_argument("--bench", required=True, help="release plasmavmc-bench binary")
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--runtime-dir", required=True, help="empty folder for the VMs (short path: unix sockets)")
    p.add_argument("-n", "--n", type=int, default=env_int("BENCH_N", 2000), help="QMP calls per client per round (env BENCH_N)")
    p.add_argument("--warmup", type=int, default=env_int("BENCH_WARMUP", 100), help="untimed QMP calls first (env BENCH_WARMUP)")
    p.add_argument("--rounds", type=int, default=env_int("BENCH_ROUNDS", 3), help="rounds per QMP client (env BENCH_ROUNDS)")
    p.add_argument("--status-runs", type=int, default=env_int("BENCH_STATUS_RUNS", 50), help="(env BENCH_STATUS_RUNS)")
    p.add_argument("--lifecycle", type=int, default=env_int("BENCH_LIFECYCLE", 10), help="lifecycle runs (env BENCH_LIFECYCLE)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    a = p.parse_args()
    benchlib.check_ranges(p, a, (("n", 1, 1_000_000), ("warmup", 0, 100_000), ("rounds", 1, 100),
                                 ("status_runs", 1, 10_000), ("lifecycle", 1, 1000)))

    benchlib.setup("bench", subreaper=True)
    b = Bench(a)
    return benchlib.run_bench(b, a.json, b.cleanup)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""gRPC service benchmark (not a test). Normally run through scripts/bench/grpc.sh.

In one run, against one `plasmavmc serve` (release build) on its unix socket, in a fresh
runtime folder holding 16 created VMs (QEMU up and paused, 64 MiB, TCG):

  1. GetVm: latency (median, p99) and requests/s with 1 caller and with 16 concurrent callers
     (caller i asks for VM i), through two clients, alternated in rounds:
       swift   the grpc-swift-2 client (plasmavmc-bench grpc-getvm), one HTTP/2 connection
       python  Python grpcio: the sync stub for 1 caller, grpc.aio with 16 tasks for 16
     beside the RPC floor of each client (GetVm with an empty name: the server refuses it with
     INVALID_ARGUMENT before any VM work, so it is transport + client + server framework) and
     `plasmavmc status NAME` as one process per request (1, and 16 processes at once).
  2. WatchVm delivery: from each event's time_unix_nanos (the event log line's unix_nanos,
     written by the VM's supervisor) to the Python client receiving it, over pause/resume
     cycles of one started VM, for a watch of that VM and a watch of every VM at the same time.
  3. The server's memory: VmRSS (and VmHWM) from /proc/PID/status with no VM, with 16 created
     VMs, and after the load.

Prints markdown tables with ratios and the targets (GetVm median under 1 ms, WatchVm delivery
within 50 ms, server RSS under 50 MB with 16 VMs); --json PATH writes the results too.
"""
import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import BenchError, log, pct  # noqa: E402

import grpc  # noqa: E402
from grpc_tools import protoc  # noqa: E402

TARGET_GETVM_MS = 1.0
TARGET_WATCH_MS = 50.0
TARGET_RSS_MB = 50.0
VMS = 16


def load_stubs(proto_dir, out):
    """vm_pb2 and vm_pb2_grpc generated now from the committed .proto, into folder `out`."""
    rc = protoc.main(["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
                      os.path.join(proto_dir, "plasmavmc/v1/vm.proto")])
    if rc != 0:
        raise BenchError(f"grpc_tools.protoc failed ({rc})")
    sys.path.insert(0, out)
    global pb, pb_grpc
    from plasmavmc.v1 import vm_pb2 as pb
    from plasmavmc.v1 import vm_pb2_grpc as pb_grpc


def stats(samples, unit_per_us=1.0):
    s = [x * unit_per_us for x in samples]
    return {"n": len(s), "median": statistics.median(s), "p99": pct(s, 99), "mean": statistics.fmean(s),
            "min": min(s), "max": max(s)}


def rss_kb(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


class GrpcBench:
    def __init__(self, a):
        self.a = a
        self.root = os.path.abspath(a.runtime_dir)
        self.sock = os.path.join(self.root, "_serve.sock")
        self.env = dict(os.environ, PLASMAVMC_RUNTIME_DIR=self.root)
        self.server = None
        self.server_err = None
        self.names = [f"g{i:02d}" for i in range(VMS)]
        self.created = []
        self.channel = None
        self.watches = []
        self.stubs = None
        self.results = {"config": {}, "getvm": {}, "watch": {}, "rss": {}, "targets": []}

    # ---- the server

    def start_server(self):
        self.server_err = tempfile.TemporaryFile()
        self.server = subprocess.Popen([self.a.plasmavmc, "serve", "--runtime-dir", self.root],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.server_err,
                                       text=True)
        line = self.server.stdout.readline()   # the server prints it once it listens, or exits
        if not line.startswith("plasmavmc serve: listening on unix:"):
            self.server_err.seek(0)
            raise BenchError(f"plasmavmc serve did not start: {line!r} {self.server_err.read().decode()[-500:]}")
        self.channel = grpc.insecure_channel(f"unix:{self.sock}")
        self.stub = pb_grpc.VmServiceStub(self.channel)

    def rss(self, label):
        r = rss_kb(self.server.pid)
        self.results["rss"][label] = r
        log(f"server VmRSS {label}: {r['VmRSS'] / 1024:.1f} MB (VmHWM {r['VmHWM'] / 1024:.1f} MB)")

    # ---- GetVm

    def swift(self, names, n, conc):
        r = subprocess.run([self.a.bench, "grpc-getvm", self.sock, ",".join(names), str(n), str(conc),
                            str(self.a.warmup), "--samples"], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise BenchError(f"plasmavmc-bench grpc-getvm exit {r.returncode}: {r.stderr.strip()}")
        j = json.loads(r.stdout)
        return j["samples_us"], j["wall_s"]

    def python_sync(self, names, n, conc):
        assert conc == 1
        name = names[0]
        floor = name == ""
        req = pb.VmRef(name=name)
        call = self.stub.GetVm

        def one():
            try:
                call(req, timeout=60)
            except grpc.RpcError as e:
                if not (floor and e.code() == grpc.StatusCode.INVALID_ARGUMENT):
                    raise BenchError(f"GetVm({name!r}): {e.code().name}: {e.details()}")
        for _ in range(self.a.warmup):
            one()
        now = time.perf_counter_ns
        samples = []
        t0 = now()
        for _ in range(n):
            s = now()
            one()
            samples.append((now() - s) / 1e3)
        return samples, (now() - t0) / 1e9

    def python_aio(self, names, n, conc):
        floor = names == [""]

        async def run():
            async with grpc.aio.insecure_channel(f"unix:{self.sock}") as ch:
                stub = pb_grpc.VmServiceStub(ch)

                async def one(name):
                    try:
                        await stub.GetVm(pb.VmRef(name=name), timeout=60)
                    except grpc.aio.AioRpcError as e:
                        if not (floor and e.code() == grpc.StatusCode.INVALID_ARGUMENT):
                            raise BenchError(f"GetVm({name!r}): {e.code().name}: {e.details()}")
                for i in range(self.a.warmup):
                    await one(names[i % len(names)])
                now = time.perf_counter_ns
                samples = []

                async def caller(c):
                    name = names[c % len(names)]
                    for _ in range(n // conc + (1 if c < n % conc else 0)):
                        s = now()
                        await one(name)
                        samples.append((now() - s) / 1e3)
                t0 = now()
                await asyncio.gather(*(caller(c) for c in range(conc)))
                return samples, (now() - t0) / 1e9
        return asyncio.run(run())

    def status_cli(self, names, n, conc):
        now = time.perf_counter_ns

        def one(name):
            s = now()
            r = subprocess.run([self.a.plasmavmc, "status", name], env=self.env, capture_output=True, timeout=60)
            if r.returncode != 0:
                raise BenchError(f"plasmavmc status {name}: exit {r.returncode}: {r.stderr.decode().strip()}")
            return (now() - s) / 1e3
        t0 = now()
        if conc == 1:
            samples = [one(names[0]) for _ in range(n)]
        else:
            with concurrent.futures.ThreadPoolExecutor(conc) as ex:
                samples = list(ex.map(one, [names[i % conc] for i in range(n)]))
        return samples, (now() - t0) / 1e9

    def getvm(self):
        a = self.a
        one, many = self.names[:1], self.names
        ways = [
            ("swift-1", "grpc-swift-2 client (plasmavmc-bench)", 1, a.n, lambda: self.swift(one, a.n, 1)),
            ("python-1", "Python grpcio, sync stub", 1, a.n, lambda: self.python_sync(one, a.n, 1)),
            ("swift-16", "grpc-swift-2 client (plasmavmc-bench)", 16, a.n_conc, lambda: self.swift(many, a.n_conc, 16)),
            ("python-16", "Python grpcio, grpc.aio, 16 tasks", 16, a.n_conc,
             lambda: self.python_aio(many, a.n_conc, 16)),
            ("floor-swift", "RPC floor: GetVm(\"\") -> INVALID_ARGUMENT, grpc-swift-2", 1, a.n,
             lambda: self.swift([""], a.n, 1)),
            ("floor-python", "RPC floor: GetVm(\"\") -> INVALID_ARGUMENT, Python sync", 1, a.n,
             lambda: self.python_sync([""], a.n, 1)),
            ("status-1", "`plasmavmc status NAME`, a process per request", 1, a.status_n,
             lambda: self.status_cli(one, a.status_n, 1)),
            ("status-16", "`plasmavmc status NAME`, 16 processes at once", 16, a.status_n_conc,
             lambda: self.status_cli(many, a.status_n_conc, 16)),
        ]
        pooled = {k: {"samples": [], "wall": 0.0, "round_medians": []} for k, *_ in ways}
        for r in range(a.rounds):
            order = ways[r % len(ways):] + ways[:r % len(ways)]
            for key, _, _, _, fn in order:
                samples, wall = fn()
                p = pooled[key]
                p["samples"] += samples
                p["wall"] += wall
                p["round_medians"].append(statistics.median(samples))
            log(f"GetVm round {r + 1}/{a.rounds}: " + ", ".join(
                f"{k} {pooled[k]['round_medians'][-1]:.0f} us" for k, *_ in ways))
        for key, label, conc, _, _ in ways:
            p = pooled[key]
            s = stats(p["samples"])
            s.update(label=label, callers=conc, rps=len(p["samples"]) / p["wall"],
                     round_medians=p["round_medians"])
            self.results["getvm"][key] = s

    # ---- WatchVm

    class Watch:
        def __init__(self, stub, name):
            self.got = []          # (kind, vm name, time_unix_nanos, received unix nanos)
            self.error = None
            self.cond = threading.Condition()
            self.call = stub.WatchVm(pb.WatchVmRequest(name=name, replay=True), timeout=3600)
            self.thread = threading.Thread(target=self.run, daemon=True)
            self.thread.start()

        def run(self):
            try:
                for e in self.call:
                    t = time.time_ns()
                    with self.cond:
                        self.got.append((e.kind, e.name, e.time_unix_nanos, t))
                        self.cond.notify_all()
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    self.error = f"{e.code().name}: {e.details()}"
            with self.cond:
                self.cond.notify_all()

        def wait_for(self, kind, name, since_ns, timeout=60):
            deadline = time.monotonic() + timeout
            with self.cond:
                while not any(k == kind and n == name and t >= since_ns for k, n, t, _ in self.got):
                    left = deadline - time.monotonic()
                    if left <= 0 or not self.thread.is_alive():
                        raise BenchError(f"no {kind} event of {name} within {timeout} s ({self.error})")
                    self.cond.wait(left)

        def stop(self):
            self.call.cancel()
            self.thread.join(30)

    def watch(self):
        a = self.a
        name = self.names[0]
        self.stub.StartVm(pb.VmRef(name=name), timeout=120)
        t_pause = time.time_ns()
        self.stub.PauseVm(pb.VmRef(name=name), timeout=60)
        watches = {"one": GrpcBench.Watch(self.stub, name), "every": GrpcBench.Watch(self.stub, "")}
        self.watches = list(watches.values())
        for w in self.watches:   # the replayed pause: the stream is up
            w.wait_for("stop", name, t_pause)
        t0 = time.time_ns()
        for i in range(a.cycles):
            for verb, kind in ((self.stub.ResumeVm, "resume"), (self.stub.PauseVm, "stop")):
                since = time.time_ns()
                verb(pb.VmRef(name=name), timeout=60)
                for w in self.watches:
                    w.wait_for(kind, name, since)
        for key, w in watches.items():
            with w.cond:
                lat = [(r - t) / 1e6 for k, n, t, r in w.got if n == name and k in ("resume", "stop") and t >= t0]
            s = stats(lat)
            s["label"] = {"one": f"WatchVm(\"{name}\")", "every": "WatchVm(\"\"): every VM (16)"}[key]
            self.results["watch"][key] = s
        for w in self.watches:
            w.stop()
        self.watches = []
        log(f"WatchVm: {a.cycles} pause/resume cycles, median delivery "
            + ", ".join(f"{k} {v['median']:.1f} ms" for k, v in self.results["watch"].items()))

    # ---- the run

    def run(self):
        try:
            self.measure()
        except grpc.RpcError as e:
            raise BenchError(f"a call failed: {e.code().name}: {e.details()}")

    def measure(self):
        a = self.a
        self.stubs = tempfile.mkdtemp(prefix="pvg-stubs.")
        load_stubs(a.proto_dir, self.stubs)
        self.results["config"] = {"vms": VMS, "memory_mib": 64, "n": a.n, "n_conc": a.n_conc, "rounds": a.rounds,
                                  "warmup": a.warmup, "status_n": a.status_n, "status_n_conc": a.status_n_conc,
                                  "cycles": a.cycles, "cpus": os.cpu_count(), "qemu": benchlib.qemu_version(),
                                  "python": sys.version.split()[0], "grpcio": grpc.__version__,
                                  "build": os.path.basename(os.path.dirname(os.path.realpath(a.plasmavmc)))}
        self.start_server()
        self.rss("no VM")
        for name in self.names:
            self.stub.CreateVm(pb.CreateVmRequest(spec=pb.VmSpec(
                name=name, kernel=os.path.abspath(a.kernel), initrd=os.path.abspath(a.initrd), append="quiet",
                memory_mib=64, accel="tcg")),
                timeout=120)
            self.created.append(name)
        listed = self.stub.ListVms(pb.ListVmsRequest(), timeout=60)
        if sorted(v.spec.name for v in listed.vms) != self.names or any(
                v.state != pb.VM_STATE_CREATED for v in listed.vms):
            raise BenchError(f"expected {VMS} created VMs, got {listed}")
        self.rss(f"{VMS} VMs created")
        self.getvm()
        self.rss(f"{VMS} VMs, after the GetVm load")
        self.watch()
        self.rss(f"{VMS} VMs, after the watches")

        g = self.results["getvm"]
        rss16 = max(self.results["rss"][k]["VmRSS"] for k in self.results["rss"] if k != "no VM") / 1024
        wmed = max(w["median"] for w in self.results["watch"].values())
        # The client with less overhead of its own (its RPC floor shows it) measures the server best.
        best = min(("swift-1", "python-1"), key=lambda k: g[k]["median"])
        other = "python-1" if best == "swift-1" else "swift-1"
        self.results["targets"] = [
            {"target": f"GetVm median under {TARGET_GETVM_MS:.0f} ms (1 caller, unix socket, the faster client)",
             "measured": f"{g[best]['median'] / 1e3:.3f} ms ({g[best]['label']}; "
                         f"{g[other]['label']}: {g[other]['median'] / 1e3:.3f} ms)",
             "pass": g[best]["median"] / 1e3 < TARGET_GETVM_MS},
            {"target": f"WatchVm delivers within {TARGET_WATCH_MS:.0f} ms of the log line (median)",
             "measured": " / ".join(f"{w['median']:.1f} ms" for w in self.results["watch"].values())
                         + " (one VM / every VM)",
             "pass": wmed < TARGET_WATCH_MS},
            {"target": f"server RSS under {TARGET_RSS_MB:.0f} MB with {VMS} VMs",
             "measured": f"{rss16:.1f} MB (largest VmRSS seen with {VMS} VMs)", "pass": rss16 < TARGET_RSS_MB},
        ]

    def cleanup(self):
        for w in self.watches:
            try:
                w.stop()
            except Exception:
                pass
        if self.channel is not None and self.server is not None and self.server.poll() is None:
            for name in self.created:
                try:
                    self.stub.DeleteVm(pb.DeleteVmRequest(name=name, force=True), timeout=60)
                except grpc.RpcError as e:
                    log(f"cleanup: DeleteVm {name}: {e.code().name}: {e.details()}")
        if self.channel is not None:
            self.channel.close()
        if self.server is not None:
            if self.server.poll() is None:
                self.server.send_signal(signal.SIGTERM)
                try:
                    rc = self.server.wait(45)
                    if rc != 0:
                        log(f"warning: plasmavmc serve exited {rc} on SIGTERM")
                except subprocess.TimeoutExpired:
                    log("warning: plasmavmc serve did not stop on SIGTERM; killing it")
                    self.server.kill()
                    self.server.wait()
            self.server.stdout.close()
        # Whatever the server could not delete: through the CLI, then by pid file.
        left = [n for n in os.listdir(self.root) if os.path.isfile(os.path.join(self.root, n, "spec.json"))] \
            if os.path.isdir(self.root) else []
        benchlib.force_delete(self.a.plasmavmc, self.env, left)
        benchlib.kill_strays_and_reap(self.root)
        if self.stubs:
            shutil.rmtree(self.stubs, ignore_errors=True)

    # ---- output

    def table(self):
        c, g, w, rss = self.results["config"], self.results["getvm"], self.results["watch"], self.results["rss"]
        L = [f"plasmavmc gRPC bench: {(c['qemu'] or ['qemu ?'])[0]}, {c['cpus']} cpus, python {c['python']}, "
             f"grpcio {c['grpcio']}; one `plasmavmc serve` ({c['build']} build) on its unix socket, {c['vms']} VMs created "
             f"({c['memory_mib']} MiB, TCG, paused QEMU)", "",
             f"## GetVm over the unix socket ({c['rounds']} rounds, alternated, warm-up {c['warmup']} per run; "
             f"per round: {c['n']} calls with 1 caller, {c['n_conc']} with 16, "
             f"{c['status_n']} / {c['status_n_conc']} `plasmavmc status`)", "",
             "| client | callers | calls | median us | p99 us | req/s | round medians us | median vs status | req/s vs status |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|"]
        for key in ("swift-1", "python-1", "floor-swift", "floor-python", "status-1",
                    "swift-16", "python-16", "status-16"):
            s = g[key]
            st = g["status-16" if s["callers"] == 16 else "status-1"]
            rm = " / ".join(f"{x:.0f}" for x in s["round_medians"])
            L.append(f"| {s['label']} | {s['callers']} | {s['n']} | {s['median']:.0f} | {s['p99']:.0f} | {s['rps']:.0f} "
                     f"| {rm} | {s['median'] / st['median']:.3f}x | {s['rps'] / st['rps']:.1f}x |")
        L += ["", "```"]
        top = max(g[k]["rps"] for k in g)
        for key in ("swift-1", "python-1", "status-1", "swift-16", "python-16", "status-16"):
            s = g[key]
            L.append(f"{key:>10} {'#' * max(1, round(40 * s['rps'] / top)):<40} {s['rps']:8.0f} req/s")
        L += ["```", "",
              f"## WatchVm delivery: event log line (time_unix_nanos) -> Python client, "
              f"{c['cycles']} pause/resume cycles of one running VM, both watches open at once", "",
              "| watch | events | median ms | p99 ms | mean ms | min ms | max ms |", "|---|---:|---:|---:|---:|---:|---:|"]
        for s in w.values():
            L.append(f"| {s['label']} | {s['n']} | {s['median']:.1f} | {s['p99']:.1f} | {s['mean']:.1f} "
                     f"| {s['min']:.1f} | {s['max']:.1f} |")
        L += ["", "## Server memory (/proc/PID/status)", "", "| when | VmRSS MB | VmHWM MB | vs no VM |",
              "|---|---:|---:|---:|"]
        base = rss["no VM"]["VmRSS"]
        for k, r in rss.items():
            L.append(f"| {k} | {r['VmRSS'] / 1024:.1f} | {r['VmHWM'] / 1024:.1f} | {r['VmRSS'] / base:.2f}x |")
        L += [""] + benchlib.targets_table(self.results["targets"])
        return "\n".join(L)


def main():
    env_int = benchlib.env_int
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plasmavmc", required=True, help="release plasmavmc binary")
    p.add_argument("--bench", required=True, help="release plasmavmc-bench binary")
    p.add_argument("--proto-dir", required=True, help="folder holding plasmavmc/v1/vm.proto")
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--runtime-dir", required=True, help="empty folder for the VMs (short path: unix sockets)")
    p.add_argument("--n", type=int, default=env_int("GRPC_BENCH_N", 2000), help="GetVm calls per round, 1 caller")
    p.add_argument("--n-conc", type=int, default=env_int("GRPC_BENCH_N_CONC", 4000),
                   help="GetVm calls per round, 16 callers")
    p.add_argument("--rounds", type=int, default=env_int("GRPC_BENCH_ROUNDS", 3))
    p.add_argument("--warmup", type=int, default=env_int("GRPC_BENCH_WARMUP", 100))
    p.add_argument("--status-n", type=int, default=env_int("GRPC_BENCH_STATUS_N", 40),
                   help="`plasmavmc status` runs per round, 1 at a time")
    p.add_argument("--status-n-conc", type=int, default=env_int("GRPC_BENCH_STATUS_N_CONC", 96),
                   help="`plasmavmc status` runs per round, 16 at a time")
    p.add_argument("--cycles", type=int, default=env_int("GRPC_BENCH_CYCLES", 25), help="pause/resume cycles")
    p.add_argument("--json")
    a = p.parse_args()
    benchlib.check_ranges(p, a, [("n", 1, 10**6), ("n_conc", 16, 10**6), ("rounds", 1, 100), ("warmup", 0, 10**5),
                                 ("status_n", 1, 10**4), ("status_n_conc", 16, 10**4), ("cycles", 1, 10**4)])
    benchlib.setup("grpc-bench", subreaper=True)
    b = GrpcBench(a)
    return benchlib.run_bench(b, a.json, b.cleanup)


if __name__ == "__main__":
    sys.exit(main())

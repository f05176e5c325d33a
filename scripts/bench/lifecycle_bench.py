#!/usr/bin/env python3
"""Lifecycle benchmark (not a test): create -> start -> kill -> delete of the test guest,
N times, done three ways on one machine, alternated so drift hits all alike:

  lua       `plasmavmc run lifecycle_plan.lua`: the in-process Lua lifecycle (the build under test)
  baseline  the same plan through another plasmavmc build (--baseline-plasmavmc), e.g. the
            commit before the supervisor
  qemu.qmp  QEMU's own Python library doing the same by hand: mkdir, spawn QEMU (the argv
            plasmavmc uses), QMPClient.connect, cont, SIGKILL + waitpid, rm -rf

Prints medians per step, the total, and ratios against qemu.qmp as bars.
"""
import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402
from benchlib import BenchError, log, summary  # noqa: E402

STEPS = ["create", "start", "kill", "delete"]
PLAN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lifecycle_plan.lua")


class Lifecycle:
    def __init__(self, a):
        self.a = a
        self.root = a.runtime_dir
        self.env = dict(os.environ, PLASMAVMC_RUNTIME_DIR=self.root)
        self.samples = {}
        self.raw = {}
        self.results = {"config": {}, "lifecycle": {}, "targets": []}

    def plan(self, label, plasmavmc, prefix):
        out = subprocess.run([plasmavmc, "run", PLAN, self.a.kernel, self.a.initrd, "1", prefix],
                             env=self.env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise BenchError(f"{label}: the plan failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        rows = [l.split()[1:] for l in out.stdout.splitlines() if l.startswith("lc ")]
        if len(rows) != 1:
            raise BenchError(f"{label}: unexpected plan output: {out.stdout!r}")
        return dict(zip(STEPS, map(float, rows[0])))

    def template_argv(self):
        """QEMU's argv as plasmavmc builds it, from a VM made once."""
        name = "tmpl"
        benchlib.cli(self.a.plasmavmc, self.env, "create", name, "--kernel", self.a.kernel,
                     "--initrd", self.a.initrd, "--accel", "tcg")
        with open(os.path.join(self.root, name, "launch.json")) as f:
            argv = json.load(f)["argv"]
        benchlib.cli(self.a.plasmavmc, self.env, "delete", name, "--force")
        return argv, os.path.join(self.root, name) + "/", f"guest={name}"

    def qmp_library(self, template, i):
        from qemu.qmp import QMPClient
        argv_t, tdir, tname = template
        name = f"py{i:02d}"
        folder = os.path.join(self.root, name)
        argv = [a.replace(tdir, folder + "/").replace(tname, f"guest={name}") for a in argv_t]
        qmp_path = os.path.join(folder, "qmp.sock")
        now = time.perf_counter_ns

        async def run():
            t0 = now()
            os.mkdir(folder, 0o700)
            logfd = os.open(os.path.join(folder, "qemu.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                pid = os.posix_spawn(argv[0], argv, os.environ,
                                     file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                                                   (os.POSIX_SPAWN_DUP2, logfd, 1), (os.POSIX_SPAWN_DUP2, logfd, 2)],
                                     setsid=True)
            finally:
                os.close(logfd)
            self.raw[pid] = folder
            qmp = QMPClient(name)
            deadline = time.monotonic() + 15
            while True:
                try:
                    await qmp.connect(qmp_path)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise BenchError(f"qemu.qmp: QEMU (pid {pid}) did not open {qmp_path}")
                    await asyncio.sleep(0.0005)
            st = await qmp.execute("query-status")
            if st["status"] != "prelaunch":
                raise BenchError(f"qemu.qmp: unexpected state {st}")
            t1 = now()
            await qmp.execute("cont")
            await qmp.disconnect()
            t2 = now()
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            del self.raw[pid]
            t3 = now()
            shutil.rmtree(folder)
            t4 = now()
            return dict(zip(STEPS, [(t1 - t0) / 1e6, (t2 - t1) / 1e6, (t3 - t2) / 1e6, (t4 - t3) / 1e6]))

        return asyncio.run(asyncio.wait_for(run(), timeout=60))

    def run(self):
        a = self.a
        ways = [("lua", lambda i: self.plan("lua", a.plasmavmc, f"lu{i:02d}-"))]
        if a.baseline_plasmavmc:
            ways.append(("baseline", lambda i: self.plan("baseline", a.baseline_plasmavmc, f"bl{i:02d}-")))
        template = self.template_argv()
        ways.append(("qemu.qmp", lambda i: self.qmp_library(template, i)))
        self.samples = {w: {s: [] for s in STEPS + ["total"]} for w, _ in ways}
        self.results["config"] = {"runs": a.n, "qemu": benchlib.qemu_version(), "ways": [w for w, _ in ways],
                                  "baseline": a.baseline_label}
        for i in range(a.n):
            order = ways[i % len(ways):] + ways[:i % len(ways)]
            for w, fn in order:
                r = fn(i)
                r["total"] = sum(r[s] for s in STEPS)
                for k, v in r.items():
                    self.samples[w][k].append(v)
                benchlib.reap_orphans()
            log(f"round {i + 1}/{a.n}: " + ", ".join(f"{w} {self.samples[w]['total'][-1]:.1f} ms" for w, _ in ways))
        for w in self.samples:
            self.results["lifecycle"][w] = {k: summary(v) for k, v in self.samples[w].items()}
        lua = statistics.median(self.samples["lua"]["total"])
        py = statistics.median(self.samples["qemu.qmp"]["total"])
        self.results["targets"].append({"target": "in-process Lua lifecycle <= 1.0x qemu.qmp doing the same",
                                        "measured": f"{lua / py:.2f}x ({lua:.1f} vs {py:.1f} ms)", "pass": lua <= py})
        if "baseline" in self.samples:
            base = statistics.median(self.samples["baseline"]["total"])
            self.results["targets"].append({"target": f"no slower than the baseline ({a.baseline_label})",
                                            "measured": f"{lua / base:.2f}x ({lua:.1f} vs {base:.1f} ms)",
                                            "pass": lua <= base * 1.05})

    def cleanup(self):
        for pid, folder in list(self.raw.items()):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
            shutil.rmtree(folder, ignore_errors=True)

    def table(self):
        lc = self.results["lifecycle"]
        py = lc["qemu.qmp"]["total"]["median"]
        L = [f"## create -> start -> kill -> delete, {self.results['config']['runs']} runs each, alternated "
             f"(QEMU {self.results['config']['qemu']}, TCG)", "",
             "| way | " + " | ".join(STEPS) + " | total median ms | p90 | vs qemu.qmp |",
             "|---|" + "---:|" * (len(STEPS) + 3)]
        for w, r in lc.items():
            ratio = r["total"]["median"] / py
            L.append(f"| {w} | " + " | ".join(f"{r[s]['median']:.1f}" for s in STEPS)
                     + f" | {r['total']['median']:.1f} | {r['total']['p90']:.1f} | {ratio:.2f}x |")
        L += ["", "```"]
        top = max(r["total"]["median"] for r in lc.values())
        for w, r in lc.items():
            m = r["total"]["median"]
            L.append(f"{w:>9} {'#' * max(1, round(40 * m / top)):<40} {m:6.1f} ms  {m / py:.2f}x")
        L += ["```", ""] + benchlib.targets_table(self.results["targets"])
        return "\n".join(L)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plasmavmc", required=True)
    p.add_argument("--baseline-plasmavmc")
    p.add_argument("--baseline-label", default="baseline")
    p.add_argument("--kernel", required=True)
    p.add_argument("--initrd", required=True)
    p.add_argument("--runtime-dir", required=True)
    p.add_argument("-n", type=int, default=benchlib.env_int("LIFECYCLE_N", 15), help="runs of each way (env LIFECYCLE_N)")
    p.add_argument("--json")
    a = p.parse_args()
    benchlib.check_ranges(p, a, [("n", 1, 1000)])
    benchlib.setup("lifecycle-bench", subreaper=True)
    b = Lifecycle(a)
    return benchlib.run_bench(b, a.json, b.cleanup)


if __name__ == "__main__":
    sys.exit(main())

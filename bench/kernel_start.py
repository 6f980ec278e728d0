#!/usr/bin/env python3
"""Kernel start-up: the same ipykernel started bare and through `isolate-grade kernel`.

Measures, interleaved, the time from `KernelManager.start_kernel()` to `wait_for_ready()`
(kernel_info answered), and the shutdown, for the kernelspecs `bench-bare` and
`bench-sandboxed` it installs into the venv. Run as root, with the project venv:

    sudo .venv/bin/python bench/kernel_start.py --runs 40

Needs `bash scripts/venv.sh` and `cargo build --release` first.
"""
import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

ROOT = Path(__file__).resolve().parent.parent


def install(binary: Path, specs: Path, baseline: Path = None) -> list:
    venv = Path(sys.prefix)
    tail = [sys.executable, "-m", "ipykernel_launcher", "--HistoryManager.hist_file=:memory:", "-f", "{connection_file}"]
    kernels = [
        ("bench-bare", tail),
        ("bench-sandboxed", [str(binary), "--config", "/dev/null", "kernel", "--bind", str(venv), "--"] + tail),
    ]
    if baseline:
        kernels.append(("bench-baseline", [str(baseline), "--config", "/dev/null", "kernel", "--bind", str(venv), "--"]
                        + tail))
    for name, argv in kernels:
        d = specs / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": name, "language": "python"}))
    return [name for name, _ in kernels]


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def once(name: str, ksm: KernelSpecManager, cwd: str) -> tuple[float, float, float]:
    """(ms to ready, ms to shut down, CPU ms of the kernel and all it ran, reaped)."""
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    cpu0 = children_cpu()
    t0 = time.perf_counter()
    km.start_kernel(cwd=cwd)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    t1 = time.perf_counter()
    kc.stop_channels()
    km.shutdown_kernel(now=False)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (children_cpu() - cpu0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--binary", type=Path, default=ROOT / "target/release/isolate-grade")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline", type=Path, help="another isolate-grade binary, as the kernel `bench-baseline` "
                    "(before/after a change)")
    args = ap.parse_args()
    random.seed(args.seed)
    specs = Path(tempfile.mkdtemp(prefix="ig-bench-specs-"))
    names = install(args.binary, specs, args.baseline)
    ksm = KernelSpecManager()
    ksm.kernel_dirs.insert(0, str(specs))
    cwd = tempfile.mkdtemp(prefix="ig-bench-cwd-")
    for n in names:  # warm-up
        once(n, ksm, cwd)
    ready = {n: [] for n in names}
    down = {n: [] for n in names}
    cpu = {n: [] for n in names}
    for _ in range(args.runs):
        random.shuffle(names)
        for n in names:
            r, d, c = once(n, ksm, cwd)
            ready[n].append(r)
            down[n].append(d)
            cpu[n].append(c)

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]

    print(f"kernel start-up, {args.runs} runs each, interleaved; {sys.executable}")
    print("| kernel | ready median ms | ready p90 ms | shutdown median ms | CPU median ms |")
    print("|---|--:|--:|--:|--:|")
    for n in sorted(ready):
        print(f"| {n} | {statistics.median(ready[n]):.1f} | {q(ready[n], 0.9):.1f} | {statistics.median(down[n]):.1f} "
              f"| {statistics.median(cpu[n]):.0f} |")
    overhead = statistics.median(ready["bench-sandboxed"]) - statistics.median(ready["bench-bare"])
    print(f"sandbox overhead on start-up (median): {overhead:+.1f} ms")


if __name__ == "__main__":
    main()

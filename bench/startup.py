#!/usr/bin/env python3
"""Startup benchmark: setup + teardown cost of running a trivial program in a sandbox.

Compares running a payload directly (`bare`) with `unshare`, `bwrap` and `isolate-grade`.
Iterations are interleaved in a freshly shuffled order so that drift (CPU frequency, page
cache, noisy neighbours) affects all variants alike. Must run as root. Standard library only.

    sudo python3 bench/startup.py --runs 300
"""
import argparse
import json
import math
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALL_VARIANTS = ["bare", "unshare", "bwrap", "isolate-grade", "baseline"]
ALL_PAYLOADS = ["true", "python"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=300, help="timed iterations (default 300)")
    p.add_argument("--warmup", type=int, default=10, help="untimed iterations (default 10)")
    p.add_argument("--seed", type=int, default=1, help="shuffle seed (default 1)")
    p.add_argument("--variants", default=",".join(ALL_VARIANTS), help="comma-separated subset")
    p.add_argument("--payloads", default=",".join(ALL_PAYLOADS), help="comma-separated subset of true,python")
    p.add_argument("--binary", default=str(ROOT / "target/release/isolate-grade"), help="isolate-grade binary")
    p.add_argument("--baseline", help="another isolate-grade binary, run as the variant `baseline` (before/after a "
                   "change: build the old commit's release binary elsewhere and pass it here)")
    p.add_argument("--isolate-args", default="", help="extra args inserted after `run` (shlex-split)")
    p.add_argument("--parallel", type=int, default=2, help="worker threads for the throughput test")
    p.add_argument("--throughput-seconds", type=float, default=5.0, help="0 disables the throughput test")
    p.add_argument("--out", help="JSON output (default bench/results/startup-<timestamp>.json)")
    args = p.parse_args()
    for name, allowed in (("variants", ALL_VARIANTS), ("payloads", ALL_PAYLOADS)):
        chosen = [x.strip() for x in getattr(args, name).split(",") if x.strip()]
        if unknown := set(chosen) - set(allowed):
            p.error(f"unknown {name}: {', '.join(sorted(unknown))} (choose from {', '.join(allowed)})")
        setattr(args, name, [x for x in allowed if x in chosen])  # canonical order
    return args


def find_python():
    # Prefer the system interpreter: it lives under /usr (visible inside the bwrap sandbox) and
    # is not a version-manager shim (pyenv's `python3` is a bash script that would dominate).
    return shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or shutil.which("python3")


def bwrap_prefix(bwrap):
    """bwrap with isolation comparable to the others; mirrors the host's top-level layout."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(d):  # merged /usr (Debian 12): /lib -> usr/lib etc.
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):  # non-merged layout: bind the real directory
            argv += ["--ro-bind", d, d]
    argv += ["--ro-bind", "/etc", "/etc", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
             "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534", "--unshare-user", "--"]
    return argv


def build_jobs(args):
    """Return {(payload, variant): argv} for every combination that can run here."""
    payloads = {"true": ["/bin/true"], "python": [find_python(), "-c", "pass"]}
    prefixes = {"bare": []}
    if "unshare" in args.variants:
        if unshare := shutil.which("unshare"):
            prefixes["unshare"] = [unshare, "--mount", "--pid", "--net", "--ipc", "--uts",
                                   "--fork", "--mount-proc", "--"]
        else:
            print("SKIP unshare: not found (apt-get install -y util-linux)", file=sys.stderr)
    if "bwrap" in args.variants:
        if bwrap := shutil.which("bwrap"):
            prefixes["bwrap"] = bwrap_prefix(bwrap)
        else:
            print("SKIP bwrap: not found; install it with: apt-get install -y bubblewrap", file=sys.stderr)
    if "isolate-grade" in args.variants:
        if os.access(args.binary, os.X_OK):
            prefixes["isolate-grade"] = [args.binary, "run", *shlex.split(args.isolate_args),
                                         "--policy", "default", "--"]
        else:
            print(f"SKIP isolate-grade: {args.binary} does not exist or is not executable", file=sys.stderr)
    if "baseline" in args.variants and args.baseline:
        if os.access(args.baseline, os.X_OK):
            prefixes["baseline"] = [args.baseline, "run", *shlex.split(args.isolate_args), "--policy", "default", "--"]
        else:
            print(f"SKIP baseline: {args.baseline} does not exist or is not executable", file=sys.stderr)
    jobs = {}
    for pl in args.payloads:
        for var in args.variants:
            if var not in prefixes:
                continue
            argv = prefixes[var] + payloads[pl]
            # Probe once: a variant that does not work here is skipped, not fatal.
            r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if r.returncode != 0:
                print(f"SKIP {var} / {pl}: exit {r.returncode}: {shlex.join(argv)}\n"
                      f"{r.stderr.decode(errors='replace').rstrip()}", file=sys.stderr)
                continue
            jobs[(pl, var)] = argv
    return jobs


class RunError(Exception):
    pass


def run_once(argv):
    """Run argv once; return wall time in ns. Raises RunError (aborting the benchmark) on failure."""
    t0 = time.perf_counter_ns()
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter_ns() - t0
    if r.returncode != 0:
        raise RunError(f"exit {r.returncode}: {shlex.join(argv)}\n{r.stderr.decode(errors='replace')}")
    return elapsed


def summarize(ns):
    ms = sorted(x / 1e6 for x in ns)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[math.ceil(0.9 * len(ms)) - 1],  # nearest rank
            "mean_ms": statistics.fmean(ms), "min_ms": ms[0], "n": len(ms)}


def throughput(argv, workers, seconds):
    """K threads each launch argv in a loop for `seconds`; returns total runs per second."""
    counts, errors = [0] * workers, []
    deadline = time.perf_counter() + seconds

    def worker(i):
        try:
            while time.perf_counter() < deadline and not errors:
                run_once(argv)
                counts[i] += 1
        except RunError as e:  # exceptions do not cross threads: hand it to the caller
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return {"workers": workers, "seconds": elapsed, "runs": sum(counts), "runs_per_s": sum(counts) / elapsed}


def main():
    args = parse_args()
    try:
        bench(args)
    except RunError as e:
        sys.exit(f"ERROR: {e}")


def bench(args):
    if os.geteuid() != 0:
        sys.exit("startup.py must run as root (unshare needs CAP_SYS_ADMIN): sudo python3 bench/startup.py")
    machine = {"nproc": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()}
    jobs = build_jobs(args)
    if not jobs:
        sys.exit("nothing to run")

    print(f"# Startup benchmark\n\nMachine: nproc={machine['nproc']}, kernel {machine['kernel']}; "
          f"runs={args.runs}, warmup={args.warmup}, seed={args.seed}\n\nCommands:\n")
    for (pl, var), argv in jobs.items():
        print(f"- `{var}` / `{pl}`: `{shlex.join(argv)}`")
    print()

    rng = random.Random(args.seed)
    order = list(jobs)
    samples = {key: [] for key in jobs}
    for i in range(args.warmup + args.runs):
        rng.shuffle(order)  # fresh order every iteration
        for key in order:
            ns = run_once(jobs[key])
            if i >= args.warmup:
                samples[key].append(ns)

    summary = {key: summarize(ns) for key, ns in samples.items()}
    print("| payload | variant | median ms | p90 ms | mean ms | min ms | n "
          "| overhead median ms | overhead p90 ms | ratio |")
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for (pl, var), s in summary.items():
        bare = summary.get((pl, "bare"))
        if bare:
            s["overhead_median_ms"] = s["median_ms"] - bare["median_ms"]
            s["overhead_p90_ms"] = s["p90_ms"] - bare["p90_ms"]
            s["ratio"] = s["median_ms"] / bare["median_ms"]
            extra = f"{s['overhead_median_ms']:+.2f} | {s['overhead_p90_ms']:+.2f} | {s['ratio']:.1f}x"
        else:
            extra = "– | – | –"
        print(f"| {pl} | {var} | {s['median_ms']:.2f} | {s['p90_ms']:.2f} | {s['mean_ms']:.2f} "
              f"| {s['min_ms']:.2f} | {s['n']} | {extra} |")

    tput = {}
    tput_keys = [k for k in (("true", "bare"), ("true", "isolate-grade"), ("true", "baseline")) if k in jobs]
    if args.throughput_seconds > 0 and tput_keys:
        print(f"\nThroughput (`/bin/true`, {args.parallel} parallel workers, {args.throughput_seconds:g} s):\n")
        print("| variant | runs | runs/s |\n|---|--:|--:|")
        for key in tput_keys:
            tput[key[1]] = t = throughput(jobs[key], args.parallel, args.throughput_seconds)
            print(f"| {key[1]} | {t['runs']} | {t['runs_per_s']:.0f} |")

    out = Path(args.out or ROOT / "bench/results" / f"startup-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "commands": {f"{pl}/{var}": argv for (pl, var), argv in jobs.items()},
        "summary": {f"{pl}/{var}": s for (pl, var), s in summary.items()},
        "samples_ns": {f"{pl}/{var}": ns for (pl, var), ns in samples.items()},
        "throughput": tput,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nRaw samples and summary written to {out}")


if __name__ == "__main__":
    main()

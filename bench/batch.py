#!/usr/bin/env python3
"""Batch grading: `isolate-grade ASSIGNMENT --jobs N` against bare, serial `nbgrader autograde`
on the same submissions, on this machine, in the same run.

The fixture course's ps1 (two notebooks) with COPIES copies of each of its 10 students
(40 submissions by default) is prepared twice (course_tools.prepare), then graded:

  bare:      nbgrader autograde ps1 --create --force   (one process, one submission at a
             time, every kernel unsandboxed: nbgrader's own way)
  sandboxed: isolate-grade ps1 --jobs N                 (N workers, every kernel sandboxed)

Both grade the same work, including dave's endless loop (cut by the course's 10 s cell
timeout) and heidi's 50 MB of output (cut at 16 MB by the sandbox's output limit: less
output for nbgrader to store, which favours the sandboxed run slightly). The gradebooks are
compared: the scores must be equal. Run as root with the project venv:

    sudo .venv/bin/python bench/batch.py [--copies 4] [--jobs 2] [--order bare-first]

Needs `bash scripts/venv.sh` and `cargo build --release` first.

Besides the wall times it reports the CPU seconds each run used (its process tree, as
getrusage counts the reaped children), the busy fraction (CPU seconds / (CPUs x wall)), the
machine's busy share over the run (/proc/stat: every CPU's non-idle time, whoever used it;
run it on a quiet machine), and,
from the sandboxed run's trace (ISOLATE_GRADE_TRACE, one JSON line per step of each notebook,
written by the workers), where each second of a notebook goes: the median and total of each
phase, and the CPU seconds per notebook of the worker (nbgrader) and of the kernel (with its
sandbox and supervisor). `--jobs` defaults to isolate-grade's own default (not given).
"""
import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures" / "course"))
import course_tools  # noqa: E402


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_times():
    """(busy, total) clock ticks of all CPUs so far, from /proc/stat: busy is everything but
    idle and iowait, whoever used it (on a quiet machine, the run)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]
    total = sum(ticks[:8])  # guest time is already in user
    return total - idle, total


def timed(argv, course, env, log):
    """(wall s, CPU s of the whole process tree, exit code, share of the machine's CPU time busy)."""
    cpu, t, (busy0, total0) = children_cpu(), time.monotonic(), machine_times()
    r = subprocess.run(argv, cwd=course, env=env, capture_output=True, text=True)
    dt = time.monotonic() - t
    busy1, total1 = machine_times()
    (course / log).write_text(r.stdout + r.stderr)
    return dt, children_cpu() - cpu, r.returncode, (busy1 - busy0) / max(1, total1 - total0)


def bare(course):
    env = course_tools.nbgrader_env()
    share = Path(sys.prefix) / "share" / "jupyter"
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(share), env.get("JUPYTER_PATH")) if p)
    return timed([sys.executable, "-m", "nbgrader", "autograde", "ps1", "--create", "--force"], course, env, "bare.log")


def sandboxed(course, jobs, binary, trace):
    env = course_tools.nbgrader_env()
    env["ISOLATE_GRADE_PYTHON"] = sys.executable
    env["ISOLATE_GRADE_TRACE"] = str(trace)
    argv = [str(binary), "ps1", "--course", str(course)] + (["--jobs", str(jobs)] if jobs else [])
    return timed(argv, course, env, "isolate-grade.log")


# A notebook's phases: (name, from event, to event), as the worker's trace has them.
PHASES = [
    ("nbgrader before Execute", "convert", "execute"),
    ("kernel process start (sandbox set up)", "kernel-start", "kernel-started"),
    ("kernel_info handshake", "kernel-started", "kernel-ready"),
    ("cells", "kernel-ready", "kernel-stop"),
    ("kernel end", "kernel-stop", "kernel-stopped"),
    ("nbgrader after Execute (gradebook writes)", "executed", "converted"),
]


def timeline(trace):
    """Markdown: each phase of a notebook (median and total over all notebooks), the CPU per
    notebook, the time per student outside its notebooks and waiting for the gradebook lock."""
    events = [json.loads(line) for line in Path(trace).read_text().splitlines()]
    notebooks = collections.defaultdict(list)
    students = collections.defaultdict(list)
    for e in events:
        if e["student"] is not None:
            students[(e["pid"], e["student"])].append(e)
            if e["notebook"] is not None:
                notebooks[(e["pid"], e["student"], e["notebook"])].append(e)
    phases = {name: [] for name, _, _ in PHASES}
    worker_cpu, kernel_cpu, walls, waited = [], [], [], []
    for evs in notebooks.values():
        at = {e["event"]: e for e in evs}  # one kernel per notebook: the last of each event
        for name, a, b in PHASES:
            if a in at and b in at:
                phases[name].append(at[b]["t"] - at[a]["t"])
        first, last = evs[0], evs[-1]
        walls.append(last["t"] - first["t"])
        worker_cpu.append(last["cpu"] - first["cpu"])
        kernel_cpu.append(last["kids"] - first["kids"])
        waited.append(sum(e.get("waited", 0) for e in evs))
    outside = []
    for evs in students.values():
        inside = sum(w for (pid, st, _), w in zip(notebooks, walls) if (pid, st) == (evs[0]["pid"], evs[0]["student"]))
        outside.append(evs[-1]["t"] - evs[0]["t"] - inside)
    n = len(walls)
    out = [f"{n} notebooks of {len(students)} students (sandboxed run, from its trace):", "",
           "| phase | median s | total s |", "|---|--:|--:|"]
    for name, xs in phases.items():
        if xs:
            out.append(f"| {name} | {statistics.median(xs):.3f} | {sum(xs):.1f} |")
    out.append(f"| the whole notebook | {statistics.median(walls):.3f} | {sum(walls):.1f} |")
    out.append(f"| of it waiting for the gradebook lock | {statistics.median(waited):.3f} | {sum(waited):.1f} |")
    out.append(f"| per student, outside its notebooks | {statistics.median(outside):.3f} | {sum(outside):.1f} |")
    out += ["", "| CPU per notebook | median s | mean s |", "|---|--:|--:|",
            f"| worker (nbgrader) | {statistics.median(worker_cpu):.3f} | {statistics.mean(worker_cpu):.3f} |",
            f"| kernel, its sandbox and supervisor | {statistics.median(kernel_cpu):.3f} | "
            f"{statistics.mean(kernel_cpu):.3f} |"]
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=4, help="copies of each of the 10 students (default 4: 40)")
    p.add_argument("--jobs", type=int, help="isolate-grade's --jobs (default: not given, its own default)")
    p.add_argument("--order", choices=["bare-first", "sandboxed-first"], default="bare-first")
    p.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "isolate-grade")
    p.add_argument("--skip-bare", action="store_true", help="only the sandboxed run (no speed-up, no comparison)")
    a = p.parse_args()
    cpus = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="bench-batch.") as tmp:
        trace = Path(tmp) / "trace.jsonl"
        kinds = ["sandboxed"] if a.skip_bare else ["bare", "sandboxed"]
        courses = {k: course_tools.prepare(Path(tmp) / k, copies=a.copies) for k in kinds}
        n = len(list((courses["sandboxed"] / "submitted").iterdir()))
        runs = {"bare": lambda: bare(courses["bare"]),
                "sandboxed": lambda: sandboxed(courses["sandboxed"], a.jobs, a.binary, trace)}
        order = kinds if a.order == "bare-first" else kinds[::-1]
        measured = {}
        for k in order:
            dt, cpu, code, machine = runs[k]()
            measured[k] = (dt, cpu, machine)
            print(f"{k}: {dt:.1f} s for {n} submissions ({dt / n:.2f} s each), {cpu:.1f} CPU s "
                  f"({cpu / (2 * n):.2f} per notebook), busy {cpu / (cpus * dt):.0%} of {cpus} CPUs "
                  f"(the machine: {machine:.0%}), exit {code}", file=sys.stderr)
        print(timeline(trace))
        result = {"submissions": n, "jobs": a.jobs or "default", "cpus": cpus, "order": a.order,
                  "isolate_grade_s": round(measured["sandboxed"][0], 1),
                  "isolate_grade_cpu_s": round(measured["sandboxed"][1], 1),
                  "busy": round(measured["sandboxed"][1] / (cpus * measured["sandboxed"][0]), 3),
                  "machine_busy": round(measured["sandboxed"][2], 3)}
        if a.skip_bare:
            print(json.dumps(result))
            return 0
        same = (course_tools.gradebook(courses["bare"], "ps1")
                == course_tools.gradebook(courses["sandboxed"], "ps1"))
        scores = lambda c: {s: {nb: v["score"] for nb, v in d["notebooks"].items()}  # noqa: E731
                            for s, d in course_tools.gradebook(c, "ps1").items()}
        same_scores = scores(courses["bare"]) == scores(courses["sandboxed"])
        if not same_scores:
            b, i = scores(courses["bare"]), scores(courses["sandboxed"])
            for st in sorted(set(b) | set(i)):
                if b.get(st) != i.get(st):
                    print(f"differs: {st}: bare {b.get(st)}, isolate-grade {i.get(st)}", file=sys.stderr)
            for k in kinds:
                log = courses[k] / ("bare.log" if k == "bare" else "isolate-grade.log")
                print(f"--- the end of {k}'s log\n{log.read_text()[-3000:]}", file=sys.stderr)
        result.update({
            "bare_serial_s": round(measured["bare"][0], 1), "bare_cpu_s": round(measured["bare"][1], 1),
            "speedup": round(measured["bare"][0] / measured["sandboxed"][0], 2),
            "same_scores": same_scores, "same_gradebook": same,
        })
        print(json.dumps(result))
        return 0 if same_scores else 1


if __name__ == "__main__":
    sys.exit(main())

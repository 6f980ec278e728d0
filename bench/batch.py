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
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures" / "course"))
import course_tools  # noqa: E402


def bare(course):
    env = course_tools.nbgrader_env()
    share = Path(sys.prefix) / "share" / "jupyter"
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(share), env.get("JUPYTER_PATH")) if p)
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "nbgrader", "autograde", "ps1", "--create", "--force"],
                       cwd=course, env=env, capture_output=True, text=True)
    dt = time.monotonic() - t
    (course / "bare.log").write_text(r.stdout + r.stderr)
    return dt, r.returncode


def sandboxed(course, jobs, binary):
    env = course_tools.nbgrader_env()
    env["ISOLATE_GRADE_PYTHON"] = sys.executable
    t = time.monotonic()
    r = subprocess.run([str(binary), "ps1", "--course", str(course), "--jobs", str(jobs)],
                       env=env, capture_output=True, text=True)
    dt = time.monotonic() - t
    (course / "isolate-grade.log").write_text(r.stdout + r.stderr)
    return dt, r.returncode


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--copies", type=int, default=4, help="copies of each of the 10 students (default 4: 40)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--order", choices=["bare-first", "sandboxed-first"], default="bare-first")
    p.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "isolate-grade")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-batch.") as tmp:
        courses = {k: course_tools.prepare(Path(tmp) / k, copies=a.copies) for k in ("bare", "sandboxed")}
        n = len(list((courses["bare"] / "submitted").iterdir()))
        runs = {"bare": lambda: bare(courses["bare"]),
                "sandboxed": lambda: sandboxed(courses["sandboxed"], a.jobs, a.binary)}
        order = ["bare", "sandboxed"] if a.order == "bare-first" else ["sandboxed", "bare"]
        times = {}
        for k in order:
            dt, code = runs[k]()
            times[k] = dt
            print(f"{k}: {dt:.1f} s for {n} submissions ({dt / n:.2f} s each), exit {code}", file=sys.stderr)
        same = (course_tools.gradebook(courses["bare"], "ps1")
                == course_tools.gradebook(courses["sandboxed"], "ps1"))
        scores = lambda c: {s: {nb: v["score"] for nb, v in d["notebooks"].items()}  # noqa: E731
                            for s, d in course_tools.gradebook(c, "ps1").items()}
        same_scores = scores(courses["bare"]) == scores(courses["sandboxed"])
        result = {
            "submissions": n, "jobs": a.jobs, "cpus": os.cpu_count(), "order": a.order,
            "bare_serial_s": round(times["bare"], 1), "isolate_grade_s": round(times["sandboxed"], 1),
            "speedup": round(times["bare"] / times["sandboxed"], 2),
            "same_scores": same_scores, "same_gradebook": same,
        }
        print(json.dumps(result))
        return 0 if same_scores else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Formgrader's autograde button, one student at a time: bare nbgrader against nbgrader after
`isolate-grade install --course` (stage, locks, every kernel sandboxed), interleaved.

Formgrader runs `NbGraderAPI.autograde(assignment, student)` in the instructor's Jupyter
server, a long-lived process that reads the course's nbgrader_config.py again for each
request. Here each variant has such a process of its own (install's block patches nbgrader's
Autograde class for the whole process, so the two can't share one); the benchmark asks them in
turn, in a shuffled order each round, to grade the same student of their own copy of the
fixture course (ps1: two notebooks), and each process times the call. The first click of
each is a warm-up (imports) and is not counted. Run as root with the project venv:

    sudo .venv/bin/python bench/click.py [--clicks 10] [--student alice]

Needs `bash scripts/venv.sh` and `cargo build --release` first.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures" / "course"))
import course_tools  # noqa: E402

# The formgrader-like process: one JSON line in ({"student": ...}), one out, per click.
SERVER = r"""
import json, os, sys, time
from traitlets.config.loader import PyFileConfigLoader
from nbgrader.apps.api import NbGraderAPI

course = sys.argv[1]
os.chdir(course)
for line in sys.stdin:
    student = json.loads(line)["student"]
    t = time.monotonic()
    # formgrader reads the course's config again for each request
    cfg = PyFileConfigLoader("nbgrader_config.py", path=course).load_config()
    cfg.CourseDirectory.root = course
    result = NbGraderAPI(config=cfg).autograde("ps1", student, force=True, create=True)
    dt = time.monotonic() - t
    print(json.dumps({"seconds": dt, "success": bool(result.get("success")),
                      "error": (result.get("error") or "")[-2000:]}), flush=True)
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clicks", type=int, default=10, help="counted clicks per variant (default 10)")
    p.add_argument("--student", default="alice")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "isolate-grade")
    a = p.parse_args()
    random.seed(a.seed)
    env = course_tools.nbgrader_env()
    share = Path(sys.prefix) / "share" / "jupyter"
    env["JUPYTER_PATH"] = os.pathsep.join(x for x in (str(share), env.get("JUPYTER_PATH")) if x)
    with tempfile.TemporaryDirectory(prefix="bench-click.") as tmp:
        courses = {k: course_tools.prepare(Path(tmp) / k) for k in ("bare", "isolate-grade")}
        subprocess.run([str(a.binary), "install", "--python", sys.executable, "--kernel", "python3",
                        "--course", str(courses["isolate-grade"])], env=env, check=True, capture_output=True)
        servers = {k: subprocess.Popen([sys.executable, "-c", SERVER, str(c)], cwd=c, env=env, text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=open(Path(tmp) / f"{k}.log", "w"))
                   for k, c in courses.items()}
        times = {k: [] for k in servers}
        try:
            for round_ in range(a.clicks + 1):
                order = list(servers)
                random.shuffle(order)
                for k in order:
                    s = servers[k]
                    s.stdin.write(json.dumps({"student": a.student}) + "\n")
                    s.stdin.flush()
                    r = json.loads(s.stdout.readline())
                    if not r["success"]:
                        sys.exit(f"{k}: the click failed:\n{r['error']}")
                    if round_:
                        times[k].append(r["seconds"])
        finally:
            for s in servers.values():
                s.stdin.close()
                s.wait(timeout=60)
        same = (course_tools.gradebook(courses["bare"], "ps1") == course_tools.gradebook(courses["isolate-grade"], "ps1"))
    print(f"formgrader's autograde click (NbGraderAPI.autograde, ps1, student {a.student}), {a.clicks} clicks "
          f"each, interleaved; {sys.executable}")
    print("| variant | median s | min s | max s |")
    print("|---|--:|--:|--:|")
    for k, ts in times.items():
        print(f"| {k} | {statistics.median(ts):.2f} | {min(ts):.2f} | {max(ts):.2f} |")
    print(f"same gradebook: {same}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()

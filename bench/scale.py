#!/usr/bin/env python3
"""Scale: the memory of the batch's own process (`isolate-grade ASSIGNMENT`, the Rust process,
not nbgrader's Python workers nor the kernels) against the number of students.

For each N in --students, a throwaway course is made (course_tools.prepare_clones: the
fixture's one-notebook ps2 released, N students s0001... each submitting a copy of alice's
correct ps2), then graded at default settings:

    isolate-grade ps2 --course DIR --report DIR/report.json   (ISOLATE_GRADE_PYTHON=this venv)

(--report only names the output files; the report is built and written at the end, which is
part of what is measured.) While it runs, the batch process's /proc/<pid>/status is read
every 50 ms (every 1 ms once the last student is done, so that building the report at the
end is seen): VmRSS and VmHWM. Printed as a Markdown table:

  start     VmRSS when the first student is done (its progress line on stderr): the workers
            are ready and the pool is running
  end       VmRSS when the last student is done (before the report is built)
  peak      the largest VmRSS sampled, and VmHWM (the kernel's high-water mark) at the last
            sample before the process exited
  per student  (peak - start) / N, and the slope of VmRSS against students done (least
            squares over the second half of the run): what each student costs

Every N is checked: exit 0, the report's counts all `graded`, and the gradebook holds N
graded submissions with full marks. Run as root with the project venv:

    sudo .venv/bin/python bench/scale.py --students 100,300,1000 [--binary PATH] [--keep DIR]

Needs `bash scripts/venv.sh` and `cargo build --release` first. A student is ~1 CPU-second
of nbgrader and kernel: 1000 students take ~10 min on 2 cores.
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures" / "course"))
import course_tools  # noqa: E402

ASSIGNMENT = "ps2"
PROGRESS = re.compile(r"^\[\s*(\d+)/(\d+)\]")


def status_kb(pid):
    """(VmRSS, VmHWM) in KiB, or None once the process is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    vals = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            k, v = line.split(":", 1)
            vals[k] = int(v.split()[0])
    if "VmRSS" not in vals:
        return None
    return vals["VmRSS"], vals.get("VmHWM", vals["VmRSS"])


def slope(points):
    """Least-squares slope of (x, y) points, y per x; None with fewer than 3."""
    if len(points) < 3:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def run_one(n, binary, workdir):
    course = course_tools.prepare_clones(workdir / f"course-{n}", ASSIGNMENT, "alice", n)
    report = course / "report.json"
    env = course_tools.nbgrader_env()
    env["ISOLATE_GRADE_PYTHON"] = sys.executable
    cmd = [str(binary), ASSIGNMENT, "--course", str(course), "--report", str(report)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []  # (t, rss_kb, hwm_kb)
    marks = []  # (students done, rss_kb) at each progress line
    last = {"rss": 0, "hwm": 0}
    all_done = threading.Event()
    stderr_lines = []

    def read_stderr():
        for line in proc.stderr:
            stderr_lines.append(line)
            m = PROGRESS.match(line)
            if m:
                s = status_kb(proc.pid)
                marks.append((int(m.group(1)), s[0] if s else last["rss"]))
                if int(m.group(1)) == int(m.group(2)):
                    all_done.set()

    stdout = []
    threads = [threading.Thread(target=read_stderr, daemon=True),
               threading.Thread(target=lambda: stdout.append(proc.stdout.read()), daemon=True)]
    for t in threads:
        t.start()
    while proc.poll() is None:
        s = status_kb(proc.pid)
        if s:
            samples.append((time.monotonic() - t0, *s))
            last["rss"], last["hwm"] = s
        time.sleep(0.001 if all_done.is_set() else 0.05)
    wall = time.monotonic() - t0
    for t in threads:
        t.join()
    (course / "isolate-grade.log").write_text("".join(stdout) + "".join(stderr_lines))

    counts = json.loads(report.read_text())["counts"] if report.exists() else {}
    gb = course_tools.gradebook(course, ASSIGNMENT)
    full = sum(1 for d in gb.values()
               if d["notebooks"] and all(v["score"] == v["max"] for v in d["notebooks"].values()))
    start = marks[0][1] if marks else None
    end = marks[-1][1] if marks else None
    peak = max((s[1] for s in samples), default=0)
    hwm = last["hwm"]
    half = [p for p in marks if p[0] > n // 2]
    k = slope(half)
    return {
        "students": n, "exit": proc.returncode, "counts": counts, "gradebook_full_marks": full,
        "start_kb": start, "end_kb": end, "peak_kb": peak, "hwm_kb": hwm,
        "per_student_kb": (max(peak, hwm) - start) / n if start else None,
        "slope_kb_per_student": k, "wall_s": wall, "samples": len(samples),
        "ok": proc.returncode == 0 and counts == {"graded": n} and full == n,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--students", default="100,300,1000", help="comma-separated counts (default 100,300,1000)")
    p.add_argument("--binary", type=Path, default=ROOT / "target" / "release" / "isolate-grade")
    p.add_argument("--keep", type=Path, help="make the courses here and keep them (default: a temporary directory)")
    p.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    a = p.parse_args()
    counts = [int(c) for c in a.students.split(",") if c]
    results = []
    tmp = None
    if a.keep:
        workdir = a.keep
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-scale.")
        workdir = Path(tmp)
    try:
        for n in counts:
            r = run_one(n, a.binary, workdir)
            results.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
            if not a.keep and r["ok"]:
                shutil.rmtree(workdir / f"course-{n}", ignore_errors=True)
            elif not a.keep:
                # a failed run's course (logs, report) is kept to be looked at
                kept = Path(tempfile.mkdtemp(prefix=f"bench-scale-failed-{n}."))
                shutil.move(str(workdir / f"course-{n}"), kept)
                print(f"{n} students: not all graded; the course is kept in {kept}", file=sys.stderr)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    mb = lambda kb: f"{kb / 1024:.1f}" if kb is not None else "-"  # noqa: E731
    kb = lambda v: f"{v:.2f}" if v is not None else "-"  # noqa: E731
    print(f"`{a.binary} {ASSIGNMENT} --course DIR --report DIR/report.json` (default --jobs), "
          f"one-notebook {ASSIGNMENT}, alice's submission copied N times\n")
    print("| students | peak VmRSS MB | VmHWM MB | RSS at start MB | RSS after last student MB "
          "| (peak-start)/students KB | slope KB/student (2nd half) | wall s | all graded |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        print(f"| {r['students']} | {mb(r['peak_kb'])} | {mb(r['hwm_kb'])} | {mb(r['start_kb'])} "
              f"| {mb(r['end_kb'])} | {kb(r['per_student_kb'])} | {kb(r['slope_kb_per_student'])} "
              f"| {r['wall_s']:.0f} | {'yes' if r['ok'] else 'NO: ' + json.dumps(r['counts'])} |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

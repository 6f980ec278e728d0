"""A cell whose code ends its kernel costs that cell, not the notebook (issue #18, part 1).

A notebook of five exercises (an autograded answer and a test cell each, worth POINTS); a
student's third answer ends the kernel (a memory bomb past the policy's limit, `os._exit(1)`, a
segfault), or hits the pids limit (a fork bomb: its forks fail at the limit, and ipykernel, which
starts no thread per cell, survives them here; with a larger limit its copies reach the memory
limit first and the kernel ends). With the default `--on-kernel-death restart`:

- the student gets exactly the points of the other four exercises (computed from POINTS, not
  from running nbgrader), in the batch and in plain `nbgrader autograde` after `install`;
- the killing cell carries an error output saying what happened in words (the limit and its
  value), a fresh sandbox restores the state (tests 4 and 5 call the first answer's function,
  which only the replay defines again) and nothing of the ended one (test 5 checks that the
  file the memory bomb left in the ended sandbox's /tmp is not there);
- the graded notebook's metadata and the batch's report (JSON, CSV, the table) flag it, and a
  submission's own `isolate_grade` metadata is never shown as ours;
- a cell that ends the kernel only when re-run (it allocates when a file it left in the
  notebook's directory is there: what a kernel writes there is copied out to the submission
  when its sandbox ends, as bare nbgrader's kernel would have written it, so the next sandbox
  sees it) is marked and left out, at the cost of a restart;
- at most `--max-restarts` (`c.IsolateGrade.max_kernel_restarts`) fresh kernels: past them the
  cells left are marked not run, and a test cell not run scores 0, never full points;
- `--on-kernel-death fail` is nbgrader's way, as before: the student's verdict is the kernel's,
  no grade (tests/e2e/test_formgrader_path.py runs its limits with the config twin's `fail`).

Run as root with the project venv (scripts/test.sh does).
"""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import nbformat
import pytest

from conftest import (BIN, NEEDS_ROOT, TWIN_HOME, Instructor, Notebook, Python, best_effort_policy, grader_env,
                      make_assignment, nb_cell, policy_with_limits)

pytestmark = NEEDS_ROOT

POINTS = [1, 2, 3, 4, 5]
NOTEBOOK = "kd"
MEMORY = "256 MiB"
# Small limits, so that a bomb ends in a second or two.
POLICY = """
[limits]
memory = "256M"
cpu_time = "30s"
wall_time = "120s"
pids = 24
cpu_quota = 1.0
open_files = 1024
file_size = "64M"
stack = "8M"
tmp_size = "64M"
shm_size = "64M"
"""

BOMB = "open('/tmp/left-behind', 'w').close()\nhog = []\nwhile True:\n    hog.append(b'x' * (32 << 20))\n"
# the third exercise's answer, by student
KILLERS = {
    "memory": (BOMB, "limit", f"used more than {MEMORY} of memory"),
    "exit": ("import os\nos._exit(1)\n", "program", "exited with code 1"),
    "segfault": ("import ctypes\nctypes.string_at(0)\n", "program", "crashed (SIGSEGV)"),
}
FORK_BOMB = "import os\nwhile True:\n    os.fork()\n"
# allocates past the limit only when run a second time: the file it leaves in the notebook's
# directory is copied out to the submission when its sandbox ends, and the next sandbox sees it
SECOND_RUN_BOMB = ("import os\nif os.path.exists('ran-once'):\n    hog = []\n    while True:\n"
                   "        hog.append(b'x' * (32 << 20))\nopen('ran-once', 'w').close()\n"
                   "def f2(x):\n    return x + 2\n")


def answer(i: int) -> str:
    return f"def f{i}(x):\n    return x + {i}\n"


def exercises() -> List:
    cells = [nb_cell("markdown", "Five exercises.")]
    for i in range(1, 6):
        cells.append(nb_cell("code", f"def f{i}(x):\n    ### BEGIN SOLUTION\n    return x + {i}\n    ### END SOLUTION",
                             grade_id=f"ex{i}", solution=True))
        test = f"assert f{i}(1) == {1 + i}"
        if i >= 4:
            test += "\nassert f1(1) == 2  # defined before the kernel ended: by the replay"
        if i == 5:
            test += "\nimport os\nassert not os.path.exists('/tmp/left-behind')  # a fresh sandbox"
        cells.append(nb_cell("code", test, grade_id=f"test{i}", points=POINTS[i - 1]))
    return cells


def cell_number(grade_id: str) -> int:
    """The cell's number from 1, as nbgrader's log and our flag count (a markdown cell first)."""
    kind, i = grade_id[:-1], int(grade_id[-1])
    return 2 * i + (0 if kind == "ex" else 1)


def expected(lost: List[int]) -> float:
    """The points of every exercise but those in `lost` (1-based)."""
    return float(sum(p for i, p in enumerate(POINTS, 1) if i not in lost))


def add_submission(root: Path, student: str, answers: Dict[str, str], metadata: dict = None) -> None:
    """A submission made from the release, every answer right but those in `answers`."""
    sub = root / "submitted" / student / "ps1"
    sub.mkdir(parents=True)
    nb = nbformat.read(root / "release" / "ps1" / f"{NOTEBOOK}.ipynb", as_version=4)
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if gid.startswith("ex"):
            cell.source = answers.get(gid, answer(int(gid[2:])))
    nb.metadata.update(metadata or {})
    nbformat.write(nb, sub / f"{NOTEBOOK}.ipynb")
    (sub / "timestamp.txt").write_text("2026-11-30 09:00:00.000000 UTC")


def make(root: Path, students: Dict[str, Dict[str, str]]):
    c = make_assignment(root, Python("debian", Path(sys.executable)), [Notebook(NOTEBOOK, exercises())], {},
                        assignment="ps1")
    for student, answers in students.items():
        add_submission(root, student, answers)
    return c


def batch(root: Path, policy: Path, *args: str):
    report = root / "report.json"
    report.unlink(missing_ok=True)
    r = subprocess.run([str(BIN), "ps1", "--course", str(root), "--policy", str(policy), "--report", str(report),
                        "--jobs", "3", *args], env=grader_env(), capture_output=True, text=True, timeout=900)
    rep = json.loads(report.read_text()) if report.exists() else None
    return r, rep


def graded_notebook(root: Path, student: str):
    return nbformat.read(root / "autograded" / student / "ps1" / f"{NOTEBOOK}.ipynb", as_version=4)


def outputs_of(nb, grade_id: str) -> List[dict]:
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)
    return [o for o in cell.get("outputs", []) if o["output_type"] == "error"]


def deaths_of(nb) -> List[dict]:
    return nb.metadata.get("isolate_grade", {}).get("kernel_deaths", [])


def kernel_report_files(root: Path, student: str) -> List[Path]:
    return sorted((root / ".isolate-grade" / "ps1" / "kernels" / student / NOTEBOOK).glob("kernel-*.json"))


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """One course, graded by one batch with the defaults (restart, at most 3)."""
    tmp = tmp_path_factory.mktemp("kd")
    root = tmp / "course"
    students = {s: {"ex3": k[0]} for s, k in KILLERS.items()}
    students.update({"forkbomb": {"ex3": FORK_BOMB}, "replay": {"ex2": SECOND_RUN_BOMB, "ex3": BOMB}, "clean": {}})
    make(root, students)
    forged = {"isolate_grade": {"kernel_deaths": [{"cell": 1, "words": "forged"}]}}
    shutil.rmtree(root / "submitted" / "clean")
    add_submission(root, "clean", {}, metadata=forged)
    policy = policy_with_limits(tmp, POLICY)
    r, rep = batch(root, policy)
    return root, policy, r, rep


def by_student(rep) -> Dict[str, dict]:
    return {s["student"]: s for s in rep["students"]}


def test_a_kernel_ended_in_the_third_exercise_costs_only_its_points(graded):
    root, _, r, rep = graded
    out = r.stdout + r.stderr
    assert r.returncode == 0, out  # every student graded: no fault, no kernel verdict
    by = by_student(rep)
    scores = {s: v["score"] for s, v in by.items()}
    want = {s: expected([3]) for s in [*KILLERS, "forkbomb", "replay"]}
    want["clean"] = expected([])
    assert scores == want, out
    for student, (_, cause, words) in KILLERS.items():
        s = by[student]
        assert s["verdict"] == "graded", s
        nb = s["notebooks"][0]
        assert nb["kernel_deaths"] == [{"cell": cell_number("ex3"), "grade_id": "ex3", "cause": cause,
                                        "words": words, "replay": False, "restarted": True}], nb
        # two sandboxes, each its own report: the one that ended, and the fresh one
        assert nb["kernels"] == 2 and len(kernel_report_files(root, student)) == 2, nb
        g = graded_notebook(root, student)
        assert deaths_of(g) == nb["kernel_deaths"]
        [err] = outputs_of(g, "ex3")
        assert err["ename"] == "KernelDied" and f"the code {words} in this cell" in err["evalue"], err
        assert "fresh sandboxed kernel" in err["evalue"], err
        # the tests after it ran on the fresh kernel, with the state before it restored
        assert not outputs_of(g, "test4") and not outputs_of(g, "test5")
        assert outputs_of(g, "test3")[0]["ename"] == "NameError"
    assert by["memory"]["notebooks"][0]["verdict"] == "memory-limit"
    # the table flags every student whose kernel ended, and says how many
    assert "kernel restarted after cell 6 (ex3) of kd: used more than 256 MiB" in out, out
    assert "kernel restarted after cell 6 (ex3) of kd: exited with code 1" in out, out
    assert "6 students: 6 graded; " in out and "with a kernel the student's code ended" in out, out
    rows = list(csv.DictReader(open(root / "report.csv")))
    flagged = {row["student"]: row["kernel_deaths"] for row in rows}
    assert flagged["clean"] == "" and flagged["memory"].startswith("kernel restarted after cell 6 (ex3) of kd: the code")


def test_no_kernel_ended_is_nbgraders_grade_and_a_forged_flag_is_dropped(graded):
    root, _, _, rep = graded
    s = by_student(rep)["clean"]
    assert s["verdict"] == "graded" and s["score"] == s["max_score"] == expected([]), s
    assert s["notebooks"][0]["kernel_deaths"] == [] and s["notebooks"][0]["kernels"] == 1
    g = graded_notebook(root, "clean")
    assert "isolate_grade" not in g.metadata, g.metadata
    assert not any(outputs_of(g, gid) for gid in [f"{k}{i}" for k in ("ex", "test") for i in range(1, 6)])


def test_a_fork_bomb_against_the_pids_limit_costs_only_its_exercise(graded):
    root, _, _, rep = graded
    s = by_student(rep)["forkbomb"]
    assert s["verdict"] == "graded" and s["score"] == expected([3]), s
    # the bomb's forks fail at the limit (EAGAIN): the kernel survives its error or ends (a
    # restart, flagged; with a larger pids limit its copies reach the memory limit first and
    # it does end); either way the limit is the notebook's verdict and the other exercises score
    assert s["notebooks"][0]["verdict"] == "pids-limit", s
    for d in s["notebooks"][0]["kernel_deaths"]:
        assert d["cell"] == cell_number("ex3") and d["restarted"], d


def test_a_cell_that_ends_the_kernel_on_replay_is_marked_and_left_out(graded):
    root, _, _, rep = graded
    s = by_student(rep)["replay"]
    assert s["verdict"] == "graded" and s["score"] == expected([3]), s
    deaths = s["notebooks"][0]["kernel_deaths"]
    assert [(d["cell"], d["grade_id"], d["replay"], d["restarted"]) for d in deaths] == [
        (cell_number("ex3"), "ex3", False, True), (cell_number("ex2"), "ex2", True, True)], deaths
    assert deaths[1]["words"] == f"used more than {MEMORY} of memory"
    assert len(kernel_report_files(root, "replay")) == 3
    g = graded_notebook(root, "replay")
    [err] = outputs_of(g, "ex2")
    assert "when it was re-run on a fresh kernel" in err["evalue"], err
    assert not outputs_of(g, "test2"), "its test passed on the first run: its output is the first run's"


def test_the_restarts_are_bounded_and_the_cells_left_are_not_run(graded):
    root, policy, _, _ = graded
    add_submission(root, "bound", {"ex2": BOMB, "ex4": BOMB})
    r, rep = batch(root, policy, "--student", "bound", "--max-restarts", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    s = by_student(rep)["bound"]
    # test1, test3: test2's and test4's answers ended the kernel; test5 was never run
    assert s["verdict"] == "graded" and s["score"] == expected([2, 4, 5]), s
    deaths = s["notebooks"][0]["kernel_deaths"]
    assert [(d["grade_id"], d["restarted"]) for d in deaths] == [("ex2", True), ("ex4", False)], deaths
    g = graded_notebook(root, "bound")
    assert "was not restarted" in outputs_of(g, "ex4")[0]["evalue"]
    for gid in ("test4", "ex5", "test5"):
        [err] = outputs_of(g, gid)
        assert err["ename"] == "NotRun" and f"not run: the kernel ended in cell {cell_number('ex4')}" in err["evalue"], err
    assert len(kernel_report_files(root, "bound")) == 2


def test_fail_is_nbgraders_way_as_before(graded):
    root, policy, _, _ = graded
    r, rep = batch(root, policy, "--student", "memory", "--on-kernel-death", "fail")
    assert r.returncode == 1, r.stdout + r.stderr  # not graded, and no fault of ours
    s = by_student(rep)["memory"]
    assert s["verdict"] == "memory-limit" and s["score"] is None, s
    assert s["notebooks"][0]["kernel_deaths"] == [] and s["notebooks"][0]["kernels"] == 1
    assert "kd: its kernel ended with memory-limit" in s["message"], s


def test_rootless_a_kernel_the_program_ended_costs_only_its_points():
    """The unprivileged instructor's batch (rootless, best-effort limits: no memory or pids cap
    to end a kernel, so the program's own ends): each ended kernel restarted in a fresh
    rootless sandbox, the notebook graded but for that exercise."""
    instructor = Instructor("isolate-grade-kd-rootless-")
    try:
        root = instructor.home / "course"
        make(root, {"exit": {"ex3": KILLERS["exit"][0]}, "segfault": {"ex3": KILLERS["segfault"][0]}, "clean": {}})
        policy = best_effort_policy(instructor.home / "kd.toml", policy_with_limits(instructor.home, POLICY))
        instructor.own(instructor.home)
        report = root / "report.json"
        r = instructor.run(str(BIN), "ps1", "--course", str(root), "--policy", str(policy), "--report", str(report),
                           "--jobs", "3", cwd=root, timeout=900)
        assert r.returncode == 0, r.stdout + r.stderr
        rep = json.loads(report.read_text())
        assert rep["sandbox"]["mode"] == "rootless", rep["sandbox"]
        by = by_student(rep)
        assert {s: v["score"] for s, v in by.items()} == {"exit": expected([3]), "segfault": expected([3]),
                                                          "clean": expected([])}, r.stdout
        for student in ("exit", "segfault"):
            _, cause, words = KILLERS[student]
            nb = by[student]["notebooks"][0]
            assert nb["kernel_deaths"] == [{"cell": cell_number("ex3"), "grade_id": "ex3", "cause": cause,
                                            "words": words, "replay": False, "restarted": True}], nb
            assert nb["kernels"] == 2, nb
            g = graded_notebook(root, student)
            assert not outputs_of(g, "test4") and not outputs_of(g, "test5")  # on the fresh kernel
    finally:
        instructor.remove()


PREFIX = "isolate-grade-kd-"


def test_plain_nbgrader_after_install_restarts_too_and_reads_the_config_twin(tmp_path):
    root = tmp_path / "course"
    c = make(root, {"memory": {"ex3": BOMB}})
    try:
        r = subprocess.run([str(BIN), "install", "--python", sys.executable, "--kernel", "python3", "--twin-prefix",
                            PREFIX, "--policy", str(policy_with_limits(tmp_path, POLICY)), "--course", str(root)], env=grader_env(),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        out = c.nbgrader("autograde", "ps1", "--student", "memory")
        log = out.stdout + out.stderr
        assert c.scores() == {"memory": {NOTEBOOK: expected([3])}}, log
        assert "kernel restarted after cell 6 (ex3) of kd: the code used more than 256 MiB of memory" in log, log
        g = graded_notebook(root, "memory")
        assert [(d["grade_id"], d["restarted"]) for d in deaths_of(g)] == [("ex3", True)]
        assert "fresh sandboxed kernel" in outputs_of(g, "ex3")[0]["evalue"]
        # the config twin of --max-restarts: none, so the cells after the bomb are not run
        with open(root / "nbgrader_config.py", "a") as f:
            f.write("\nc.IsolateGrade.max_kernel_restarts = 0\n")
        out = c.nbgrader("autograde", "ps1", "--student", "memory", "--force")
        assert c.scores() == {"memory": {NOTEBOOK: expected([3, 4, 5])}}, out.stdout + out.stderr
        g = graded_notebook(root, "memory")
        assert [(d["grade_id"], d["restarted"]) for d in deaths_of(g)] == [("ex3", False)]
        assert outputs_of(g, "test5")[0]["ename"] == "NotRun"
        # a value it can't take: nothing is run, and nbgrader says which setting
        with open(root / "nbgrader_config.py", "a") as f:
            f.write("\nc.IsolateGrade.on_kernel_death = 'retry'\n")
        out = c.nbgrader("autograde", "ps1", "--student", "memory", "--force", check=False)
        assert out.returncode != 0 and "on_kernel_death" in out.stdout + out.stderr, out.stdout + out.stderr
    finally:
        for d in (TWIN_HOME / "kernels").glob(PREFIX + "*"):
            shutil.rmtree(d, ignore_errors=True)

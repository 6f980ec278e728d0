"""`isolate-grade ASSIGNMENT --slurm` (issue #16) against real daemons: conftest.py's
slurm_cluster (Debian's slurmctld and two slurmd, each node its own host in its own network
namespace, sharing this machine's filesystem) and a PostgreSQL gradebook (pg_cluster).

- the fixture course graded by a job array whose tasks run on both nodes gives the gradebook,
  verdicts and exit code of a local run; the tasks' own lines and the instructor's match;
- a node killed (its slurmd and every job step) while grading: the other node's task takes
  over its students, and the same command again ends with the gradebook of an uninterrupted
  run, every student graded once;
- the job cancelled from outside: the rest are `sandbox-error`, exit 3; Ctrl-C: the job is
  cancelled, exit 130; the same command then finishes, with the uninterrupted run's gradebook;
- refusals before anything is submitted: a SQLite gradebook (exit 2), Slurm not reachable
  (exit 3), and a gradebook the instructor reaches but the nodes don't (the preflight job's
  verdict, exit 3), each with nothing graded and no password shown.
"""

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from conftest import BIN, NEEDS_ROOT, grader_env
from test_postgres import gradebook, prepare_fixture, small

pytestmark = NEEDS_ROOT

COURSE_ID = "fixture-course"


def run_batch(course: Path, slurm_conf: Optional[str], *args: str, timeout: float = 900) -> subprocess.Popen:
    report = course / "report.json"
    report.unlink(missing_ok=True)
    env = grader_env(**({"SLURM_CONF": slurm_conf} if slurm_conf else {}))
    return subprocess.Popen([str(BIN), "ps1" if (course / "source" / "ps1").exists() else "env1",
                             "--course", str(course), "--report", str(report), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen, timeout: float = 900) -> Tuple[int, str]:
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out + err


def slurm_args(cluster, tasks: int = 2) -> List[str]:
    # one task per node (--exclusive): each task on its own host
    return ["--slurm", "--slurm-tasks", str(tasks), "--jobs", "2", "--slurm-arg=--exclusive"]


def run_dir(course: Path) -> Path:
    runs = [p for p in (course / ".isolate-grade").glob("*/slurm/*") if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def student_lines(text: str) -> Set[Tuple[str, str, str]]:
    """(student, verdict, score) of each per-student line ("[ 3/10] carol graded 8/10 (6.2s)")."""
    found = set()
    for m in re.finditer(r"^\[\s*\d+/\d+\] (\S+) (\S+)( \d\S*/\S+)? \(", text, re.M):
        found.add((m.group(1), m.group(2), (m.group(3) or "").strip()))
    return found


def queue_empty(cluster) -> bool:
    return cluster.slurm("squeue", "-h").stdout.strip() == ""


def wait_for(what: str, ready, timeout: float = 300) -> None:
    t0 = time.monotonic()
    while not ready():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def local(pg_cluster, tmp_path_factory) -> Dict[str, dict]:
    """The fixture course graded on this machine alone into PostgreSQL: the gradebook to match."""
    url = pg_cluster.create_db("local")
    course = prepare_fixture(tmp_path_factory.mktemp("local") / "course", url)
    code, out = finish(run_batch(course, None, "--jobs", "4"))
    assert code == 0, out
    return {"gradebook": gradebook(url, COURSE_ID, "ps1"),
            "report": json.loads((course / "report.json").read_text())}


def verdicts(report: dict) -> Dict[str, Tuple[str, Optional[float]]]:
    return {s["student"]: (s["verdict"], s["score"]) for s in report["students"]}


def test_the_course_is_graded_on_both_nodes_as_a_local_run_grades_it(local, pg_cluster, slurm_cluster, tmp_path):
    url = pg_cluster.create_db("both_nodes")
    course = prepare_fixture(tmp_path / "course", url)
    code, out = finish(run_batch(course, slurm_cluster.env["SLURM_CONF"], *slurm_args(slurm_cluster)))
    assert code == 0, out
    assert gradebook(url, COURSE_ID, "ps1") == local["gradebook"]
    report = json.loads((course / "report.json").read_text())
    assert verdicts(report) == verdicts(local["report"]) and report["counts"] == local["report"]["counts"]
    # each task on its own node, and the lines the tasks printed are the instructor's
    logs = {p.name for p in (course / ".isolate-grade/ps1/logs").glob("slurm-node*-worker-*.log")}
    assert {n.split("-")[1] for n in logs} == {"node1", "node2"}, logs
    run = run_dir(course)
    tasks = "".join(p.read_text() for p in run.glob("task-*.out"))
    assert student_lines(tasks) == student_lines(out) and len(student_lines(out)) == 10, (tasks, out)
    assert (run / "preflight").read_text().startswith("ok")
    assert not (course / "gradebook.db").exists()
    wait_for("the job to leave the queue", lambda: queue_empty(slurm_cluster), 60)


def tasks_on(cluster, node: str) -> List[int]:
    """The `isolate-grade slurm-task` processes running on `node`."""
    found = []
    for pid in cluster.netns_pids(node):
        try:
            if b"slurm-task" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def test_a_node_killed_while_grading_then_the_same_command_ends_as_an_uninterrupted_run(
        pg_cluster, slurm_cluster, tmp_path):
    # students who take a while each (1.5 s a notebook), so that node1 dies mid-student
    want_url = pg_cluster.create_db("kill_want")
    want_course, expected = small(tmp_path, "want", want_url, students=8, sleep=1.5)
    code, out = finish(run_batch(want_course.root, None, "--jobs", "2"))
    assert code == 0, out
    url = pg_cluster.create_db("kill")
    c, _ = small(tmp_path, "course", url, students=8, sleep=1.5)
    p = run_batch(c.root, slurm_cluster.env["SLURM_CONF"], "--slurm", "--slurm-tasks", "2", "--jobs", "1",
                  "--slurm-arg=--exclusive")
    try:
        wait_for("a result, and a task grading on node1",
                 lambda: any(c.root.glob(".isolate-grade/env1/slurm/*/results/*.json"))
                 and bool(tasks_on(slurm_cluster, "node1")))
        slurm_cluster.kill_node("node1")
        code, out = finish(p, 600)
    finally:
        if p.poll() is None:
            p.kill()
    # node2's task took over what node1 held; whatever this run left, the rerun does
    slurm_cluster.restart_node("node1")
    slurm_cluster.wait_state("node1", "idle", 60)
    assert code in (0, 3), out
    code, out = finish(run_batch(c.root, slurm_cluster.env["SLURM_CONF"], *slurm_args(slurm_cluster)))
    assert code == 0, out
    got = gradebook(url, "env-course", "env1")
    assert got == gradebook(want_url, "env-course", "env1")
    assert {s: sum(nb["score"] for nb in d["notebooks"].values()) for s, d in got.items()} == expected
    wait_for("the job to leave the queue", lambda: queue_empty(slurm_cluster), 60)

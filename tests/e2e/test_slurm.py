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
- the field, not the lab: the grader's interpreter a venv of the machine's default python3
  (pyenv's here) and an assignment with an R notebook beside a Python one, graded by the job
  array with the scores bare nbgrader gives and the gradebook of a local run;
- refusals before anything is submitted: a SQLite gradebook (exit 2), Slurm not reachable
  (exit 3), a gradebook the instructor reaches but the nodes don't (the preflight job's
  verdict, exit 3), and a course directory the nodes don't see at the instructor's path (the
  preflight job ends without a verdict, exit 3), each with nothing graded and no password shown.
"""

import json
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from conftest import (BIN, NEEDS_ROOT, Python, gradebook_at, grader_env, make_assignment, prepare_fixture,
                      py_notebook, r_notebook, small_course)

pytestmark = NEEDS_ROOT

COURSE_ID = "fixture-course"


def run_batch(course: Path, slurm_conf: Optional[str], *args: str, python: Optional[Python] = None) -> subprocess.Popen:
    """The batch on `course`, with Slurm's config if given, with `python` as the grader's
    interpreter if given (its environment: PATH and ISOLATE_GRADE_PYTHON), else this venv's."""
    report = course / "report.json"
    report.unlink(missing_ok=True)
    extra = {"SLURM_CONF": slurm_conf} if slurm_conf else {}
    env = python.run_env(ISOLATE_GRADE_PYTHON=str(python.python), **extra) if python else grader_env(**extra)
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
    runs = [p for p in (course / ".isolate-grade").glob("*/runs/*") if p.is_dir()]
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
    return {"gradebook": gradebook_at(url, COURSE_ID, "ps1"),
            "report": json.loads((course / "report.json").read_text())}


SMALL = {"students": 6, "sleep": 1.5}  # 1.5 s a notebook: a node dies, a job is cancelled, mid-student


@pytest.fixture(scope="module")
def small_want(pg_cluster, tmp_path_factory) -> Dict[str, dict]:
    """The small course graded on this machine alone: the gradebook the others must end with."""
    url = pg_cluster.create_db("small_want")
    want, expected = small_course(tmp_path_factory.mktemp("small"), "want", url, **SMALL)
    code, out = finish(run_batch(want.root, None, "--jobs", "2"))
    assert code == 0, out
    return {"gradebook": gradebook_at(url, "env-course", "env1"), "scores": expected}


def verdicts(report: dict) -> Dict[str, Tuple[str, Optional[float]]]:
    return {s["student"]: (s["verdict"], s["score"]) for s in report["students"]}


def test_the_course_is_graded_on_both_nodes_as_a_local_run_grades_it(local, pg_cluster, slurm_cluster, tmp_path):
    url = pg_cluster.create_db("both_nodes")
    course = prepare_fixture(tmp_path / "course", url)
    code, out = finish(run_batch(course, slurm_cluster.env["SLURM_CONF"], *slurm_args(slurm_cluster)))
    assert code == 0, out
    assert gradebook_at(url, COURSE_ID, "ps1") == local["gradebook"]
    report = json.loads((course / "report.json").read_text())
    assert verdicts(report) == verdicts(local["report"]) and report["counts"] == local["report"]["counts"]
    # each task on its own node, and the lines the tasks printed are the instructor's
    logs = {p.name for p in (course / ".isolate-grade/ps1/logs").glob("task-node*-worker-*.log")}
    assert {n.split("-")[1] for n in logs} == {"node1", "node2"}, logs
    run = run_dir(course)
    tasks = "".join(p.read_text() for p in run.glob("task-*.out"))
    assert student_lines(tasks) == student_lines(out) and len(student_lines(out)) == 10, (tasks, out)
    assert (run / "preflight").read_text().startswith("ok")
    assert not (course / "gradebook.db").exists()
    wait_for("the job to leave the queue", lambda: queue_empty(slurm_cluster), 60)


def tasks_on(cluster, node: str) -> List[int]:
    """The `isolate-grade task` processes running on `node`."""
    found = []
    for pid in cluster.netns_pids(node):
        try:
            if b"\x00task\x00" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            pass
    return found


def test_a_node_killed_while_grading_then_the_same_command_ends_as_an_uninterrupted_run(
        small_want, pg_cluster, slurm_cluster, tmp_path):
    url = pg_cluster.create_db("kill")
    c, _ = small_course(tmp_path, "course", url, **SMALL)
    p = run_batch(c.root, slurm_cluster.env["SLURM_CONF"], "--slurm", "--slurm-tasks", "2", "--jobs", "1",
                  "--slurm-arg=--exclusive")
    try:
        wait_for("a result, and a task grading on node1",
                 lambda: any(c.root.glob(".isolate-grade/env1/runs/*/results/*.json"))
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
    got = gradebook_at(url, "env-course", "env1")
    assert got == small_want["gradebook"]
    assert {s: sum(nb["score"] for nb in d["notebooks"].values()) for s, d in got.items()} == small_want["scores"]
    wait_for("the job to leave the queue", lambda: queue_empty(slurm_cluster), 60)


def test_a_cancelled_job_leaves_its_students_to_the_same_command_and_ctrl_c_cancels_the_job(
        small_want, pg_cluster, slurm_cluster, tmp_path):
    url = pg_cluster.create_db("cancel")
    c, _ = small_course(tmp_path, "course", url, **SMALL)
    conf = slurm_cluster.env["SLURM_CONF"]
    args = ["--slurm", "--slurm-tasks", "1", "--jobs", "1"]
    results = ".isolate-grade/env1/runs/*/results/*.json"
    # cancelled from outside (an admin, a time limit): those left are sandbox-error, exit 3
    p = run_batch(c.root, conf, *args)
    try:
        wait_for("a first result", lambda: any(c.root.glob(results)))
        job = (run_dir(c.root) / "job").read_text().strip()
        slurm_cluster.slurm("scancel", job)
        code, out = finish(p, 300)
    finally:
        if p.poll() is None:
            p.kill()
    assert code == 3, out
    report = json.loads((c.root / "report.json").read_text())
    left = [s for s in report["students"] if s["verdict"] == "sandbox-error"]
    assert left and all("the Slurm job ended without grading this student" in s["message"] for s in left), report
    # Ctrl-C: the job is cancelled, exit 130
    p = run_batch(c.root, conf, *args)
    try:
        def array_running() -> bool:
            runs = [r for r in c.root.glob(".isolate-grade/env1/runs/*")
                    if (r / "job").exists() and (r / "job").read_text().strip() != job]
            return any(any(r.glob("task-*.out")) for r in runs)
        wait_for("the new job's tasks to run", array_running)
        p.send_signal(signal.SIGINT)
        code, out = finish(p, 300)
    finally:
        if p.poll() is None:
            p.kill()
    assert code == 130 and "cancelled" in out, out
    # the job was cancelled, not left to finish: it is gone when the batch ends, and students
    # are left for the rerun (1.5 s each, one at a time: the task had seconds of work left)
    assert queue_empty(slurm_cluster), slurm_cluster.slurm("squeue").stdout
    report = json.loads((c.root / "report.json").read_text())
    assert report["counts"].get("interrupted", 0) >= 1, report["counts"]
    # the same command again: the rest, and the gradebook of an uninterrupted run
    code, out = finish(run_batch(c.root, conf, *args))
    assert code == 0, out
    assert gradebook_at(url, "env-course", "env1") == small_want["gradebook"]


class Forward(threading.Thread):
    """127.0.0.1:PORT in this network namespace, forwarded to a unix socket: a database the
    instructor's machine reaches and the nodes (other hosts) do not."""

    def __init__(self, unix_path: Path) -> None:
        super().__init__(daemon=True)
        self.unix_path = unix_path
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            back = socket.socket(socket.AF_UNIX)
            back.connect(str(self.unix_path))
            for a, b in ((conn, back), (back, conn)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_a_pyenv_grader_and_an_r_notebook_are_graded_on_the_nodes_as_locally(pg_cluster, slurm_cluster,
                                                                              pyenv_python, tmp_path):
    """The instructor's interpreter is a venv of the machine's default python3 (its base under
    /root/.pyenv, not /usr: the task on each node must find the same runtime to bind), and the
    assignment mixes IRkernel with ipykernel: each task routes each notebook to its own
    sandboxed kernel, as the local batch does, and nothing is graded by the wrong one."""
    answers = {"alice": {"py": "def square(x):\n    return x * x", "r": "square <- function(x) x^2"},
               "bob": {"py": "def square(x):\n    return x * 3", "r": "square <- function(x) x^2"},
               "carol": {"py": "def square(x):\n    return x * x", "r": 'square <- function(x) stop("no")'}}
    # computed from the notebooks' tests (2 points for square(3), 3 for the list or vector)
    want = {"alice": {"py": 5.0, "r": 5.0}, "bob": {"py": 2.0, "r": 5.0}, "carol": {"py": 5.0, "r": 0.0}}
    books = {}
    for how, conf, args in (("local", None, ["--jobs", "2"]),
                            ("slurm", slurm_cluster.env["SLURM_CONF"], slurm_args(slurm_cluster))):
        url = pg_cluster.create_db(f"mixed_{how}")
        c = make_assignment(tmp_path / how, pyenv_python, [py_notebook("py"), r_notebook("r")], answers,
                            config=f"c.CourseDirectory.db_url = {url!r}\n")
        code, out = finish(run_batch(c.root, conf, "--python", str(pyenv_python.python), *args, python=pyenv_python))
        assert code == 0, out
        report = json.loads((c.root / "report.json").read_text())
        for s in report["students"]:
            assert [nb["verdict"] for nb in s["notebooks"]] == ["ok", "ok"], s
        books[how] = gradebook_at(url, "env-course", "env1")
        assert {s: {nb: g["score"] for nb, g in b["notebooks"].items()} for s, b in books[how].items()} == want, how
    assert books["slurm"] == books["local"]
    wait_for("the job to leave the queue", lambda: queue_empty(slurm_cluster), 60)


def nothing_graded(course: Path) -> bool:
    return not list((course / "autograded").glob("*")) if (course / "autograded").exists() else True


def test_refusals_before_anything_is_graded(pg_cluster, slurm_cluster, tmp_path):
    conf = slurm_cluster.env["SLURM_CONF"]
    # a SQLite gradebook: the nodes can't share it (exit 2, no job submitted)
    lite, _ = small_course(tmp_path, "sqlite", "sqlite:///" + str(tmp_path / "sqlite" / "gradebook.db"), students=2)
    code, out = finish(run_batch(lite.root, conf, "--slurm"))
    assert code == 2 and "SQLite" in out and "PostgreSQL" in out, out
    assert queue_empty(slurm_cluster) and nothing_graded(lite.root)
    # Slurm not reachable: its controller does not answer (the cluster's config, another port)
    url = pg_cluster.create_db("refusals")
    c, _ = small_course(tmp_path, "course", url, students=2)
    down = tmp_path / "down.conf"
    down.write_text(re.sub(r"(?m)^SlurmctldPort=.*$", "SlurmctldPort=1", Path(conf).read_text()))
    code, out = finish(run_batch(c.root, str(down), "--slurm"))
    assert code == 3 and "Slurm is not reachable" in out, out
    assert nothing_graded(c.root)
    # a gradebook the instructor's machine reaches (127.0.0.1 here) and the nodes don't (their
    # own loopback): the preflight job on a node says so, exit 3, nothing graded
    fwd = Forward(pg_cluster.socket_dir / ".s.PGSQL.5432")
    fwd.start()
    try:
        tcp = f"postgresql+psycopg://{pg_cluster.user}:{pg_cluster.password}@127.0.0.1:{fwd.port}/refusals"
        (c.root / "nbgrader_config.py").write_text(
            (c.root / "nbgrader_config.py").read_text() + f"\nc.CourseDirectory.db_url = {tcp!r}\n")
        code, out = finish(run_batch(c.root, conf, "--slurm"))
    finally:
        fwd.server.close()
    assert code == 3 and "preflight job on a Slurm node failed" in out and "on node" in out, out
    assert pg_cluster.password not in out + (run_dir(c.root) / "preflight.out").read_text()
    assert nothing_graded(c.root) and queue_empty(slurm_cluster)


def test_a_course_the_nodes_do_not_see_at_the_same_path_is_refused_at_the_preflight(pg_cluster, slurm_cluster,
                                                                                     tmp_path):
    """The instructor's course at a path the nodes don't have (here: bound onto an empty
    directory in the instructor's own mount namespace, as an automounted or per-user mount
    would be): the preflight job can't read the run, so it ends without a verdict; the batch
    says what to check, exit 3, nothing graded and nothing left in the queue."""
    url = pg_cluster.create_db("unseen")
    c, _ = small_course(tmp_path, "course", url, students=2)
    seen_here = tmp_path / "instructor-only"
    seen_here.mkdir()  # the nodes see it too, empty
    env = grader_env(SLURM_CONF=slurm_cluster.env["SLURM_CONF"])
    script = 'mount --bind "$1" "$2" && shift 2 && exec "$@"'
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(c.root),
                        str(seen_here), str(BIN), "env1", "--course", str(seen_here), *slurm_args(slurm_cluster)],
                       env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 3, out
    assert "preflight job on a Slurm node failed" in out and "at the same path" in out, out
    assert str(seen_here) in out, out
    assert nothing_graded(c.root) and not list(seen_here.iterdir())
    wait_for("the job to leave the queue", lambda: queue_empty(slurm_cluster), 60)

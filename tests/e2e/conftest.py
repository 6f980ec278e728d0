"""Shared by the end-to-end suites: where things are, and small courses made on the fly."""

import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
# The binary under test: ISOLATE_GRADE_TEST_BIN (another build, to show a test fails without a
# fix), else cargo's debug build, in CARGO_TARGET_DIR when that is set.
BIN = Path(os.environ.get("ISOLATE_GRADE_TEST_BIN",
                          Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug" / "isolate-grade"))
TEST_CONFIG = ROOT / "fixtures" / "config" / "test.toml"
FIXTURE_COURSE = ROOT / "fixtures" / "course"
# The fixture course's helpers (course_tools, make_course): the suites import them by name.
sys.path.insert(0, str(FIXTURE_COURSE))
import course_tools  # noqa: E402
from make_course import DUEDATES  # noqa: E402  (the fixture course's due dates)
# Where `install` puts the twins of this venv's kernels: off the Jupyter path (out of
# JupyterLab's Launcher); JUPYTER_PATH=TWIN_HOME starts one by name.
TWIN_HOME = Path(sys.prefix) / "share" / "isolate-grade" / "jupyter"
# The project venv (the one pytest runs in).
PROJECT_VENV = Path(sys.prefix)

# Every suite runs the real binary as root: without root it is skipped, except under CI=true,
# where it runs (and fails) so that the suite can never pass by skipping.
NEEDS_ROOT = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true", reason="needs root")


def grader_env(**extra: str) -> Dict[str, str]:
    """The environment the suites run `isolate-grade` with: this venv's bin/ first on PATH
    (nbgrader runs `alembic` from there), the tests' config, this venv's python; then `extra`."""
    e = course_tools.nbgrader_env()
    e["ISOLATE_GRADE_CONFIG"] = str(TEST_CONFIG)
    e["ISOLATE_GRADE_PYTHON"] = sys.executable
    e.update(extra)
    return e


@dataclass(frozen=True)
class Python:
    """An interpreter with nbgrader and ipykernel, and the environment to run it with."""

    name: str
    python: Path
    # variables that make this environment what it is (HOME for a user site)
    env: Dict[str, str] = field(default_factory=dict)

    def run_env(self, **extra: str) -> Dict[str, str]:
        e = dict(os.environ)
        # nbgrader runs `alembic` from PATH; the interpreter's own directory first
        e["PATH"] = f"{self.python.parent}{os.pathsep}{e.get('PATH', '')}"
        e["ISOLATE_GRADE_CONFIG"] = str(TEST_CONFIG)
        e.update(self.env)
        e.update(extra)
        return e


def nb_cell(kind: str, source: str, grade_id: Optional[str] = None, points: int = 0, solution: bool = False):
    cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    if grade_id:
        cell.metadata["nbgrader"] = {
            "grade": points > 0, "grade_id": grade_id, "locked": not solution, "points": points,
            "schema_version": 3, "solution": solution, "task": False,
        }
    return cell


@dataclass
class Course:
    """A one-assignment course: `source/<assignment>/<notebook>.ipynb` released, and one
    submission per student made from the release by filling in the solution."""

    root: Path
    assignment: str
    notebook: str
    python: Python

    def nbgrader(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        r = subprocess.run([str(self.python.python), "-m", "nbgrader", *args], cwd=self.root,
                           env=self.python.run_env(**env), capture_output=True, text=True, timeout=900)
        if check:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    def scores(self) -> Dict[str, Dict[str, float]]:
        """{student: {notebook: score}} from the gradebook (students with a submission)."""
        from nbgrader.api import Gradebook

        out: Dict[str, Dict[str, float]] = {}
        with Gradebook(f"sqlite:///{self.root / 'gradebook.db'}", "env-course") as gb:
            for sub in gb.assignment_submissions(self.assignment):
                out[sub.student_id] = {nb.name: float(nb.score) for nb in sub.notebooks}
        return out


@dataclass
class Notebook:
    """One source notebook of an assignment: its cells and the kernel its metadata names."""

    name: str
    cells: List
    kernel: str = "python3"
    language: str = "python"


# The same exercise in R (IRkernel) and in Python: a solution `square`, tests worth 2 and 3.
def r_notebook(name: str = "r") -> Notebook:
    return Notebook(name, [
        nb_cell("code", "square <- function(x) {\n  ### BEGIN SOLUTION\n  x^2\n  ### END SOLUTION\n}",
                grade_id="answer", solution=True),
        nb_cell("code", "stopifnot(square(3) == 9)", grade_id="test_three", points=2),
        nb_cell("code", "stopifnot(identical(square(1:3), c(1, 4, 9)))", grade_id="test_vector", points=3),
    ], kernel="ir", language="R")


def py_notebook(name: str, kernel: str = "python3") -> Notebook:
    return Notebook(name, [
        nb_cell("code", "def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION",
                grade_id="answer", solution=True),
        nb_cell("code", "assert square(3) == 9", grade_id="test_three", points=2),
        nb_cell("code", "assert [square(i) for i in (1, 2, 3)] == [1, 4, 9]", grade_id="test_list", points=3),
    ], kernel=kernel)


def make_assignment(root: Path, python: Python, notebooks: List[Notebook], answers: Dict[str, Dict[str, str]],
                    assignment: str = "env1", config: str = "") -> Course:
    """A course with one assignment of several notebooks (any kernels). The cell with grade_id
    `answer` of each is the solution; each student's submission has it replaced by
    `answers[student][notebook]` (a notebook a student has no answer for keeps the release's)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "nbgrader_config.py").write_text(
        "c = get_config()\nc.CourseDirectory.course_id = 'env-course'\n" + config)
    src = root / "source" / assignment
    src.mkdir(parents=True)
    for n in notebooks:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": n.kernel, "display_name": n.kernel, "language": n.language}
        nb.cells = n.cells
        nbformat.write(nb, src / f"{n.name}.ipynb")
    c = Course(root, assignment, notebooks[0].name, python)
    c.nbgrader("generate_assignment", assignment, "--force")
    for student, mine in answers.items():
        sub = root / "submitted" / student / assignment
        sub.mkdir(parents=True)
        for n in notebooks:
            released = nbformat.read(root / "release" / assignment / f"{n.name}.ipynb", as_version=4)
            for cell in released.cells:
                if cell.metadata.get("nbgrader", {}).get("grade_id") == "answer" and n.name in mine:
                    cell.source = mine[n.name]
            nbformat.write(released, sub / f"{n.name}.ipynb")
        (sub / "timestamp.txt").write_text("2026-11-30 09:00:00.000000 UTC")
    return c


def make_course(root: Path, python: Python, cells: List, answers: Dict[str, str], assignment: str = "env1",
                notebook: str = "env", kernel: str = "python3", language: str = "python") -> Course:
    """`cells` is the source notebook; the cell with grade_id `answer` is the solution, and
    each student's submission has it replaced by `answers[student]`."""
    return make_assignment(root, python, [Notebook(notebook, cells, kernel, language)],
                           {s: {notebook: a} for s, a in answers.items()}, assignment)


def copy_course(c: Course, dst: Path) -> Course:
    shutil.copytree(c.root, dst)
    return Course(dst, c.assignment, c.notebook, c.python)


@pytest.fixture(scope="session")
def project_python() -> Python:
    """The project venv (Debian's /usr/bin/python3.11, scripts/venv.sh): the tests' own."""
    return Python("debian", Path(sys.executable))


# Environments the tests build from other interpreters (tests/e2e/test_pythons.py has them all;
# the Slurm suite grades with pyenv's too), kept between runs and rebuilt when the pins change.
PYTHONS = ROOT / "target" / "pythons"
REQUIREMENTS = [ROOT / "scripts" / "requirements.txt"]


def default_python3() -> Path:
    """The first python3 on PATH whose installation is outside /usr (pyenv's on this image)."""
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = Path(d) / "python3"
        if p.exists():
            real = Path(subprocess.run([str(p), "-c", "import sys; print(sys.base_prefix)"], capture_output=True,
                                       text=True, check=True).stdout.strip())
            if not str(real).startswith("/usr"):
                exe = subprocess.run([str(p), "-c", "import sys; print(sys.executable)"], capture_output=True,
                                     text=True, check=True).stdout.strip()
                return Path(exe)
    for c in sorted(Path("/root/.pyenv/versions").glob("3.1[1-9]*/bin/python3")):
        return c
    pytest.fail("no python3 installed outside /usr on this machine (pyenv's is expected on this image)")


def pip_install(target_python: Path, *args: str, via: Optional[Path] = None) -> None:
    """pip install into `target_python`'s environment (with `via`'s pip when it has none)."""
    cmd = [str(via), "-m", "pip", "--python", str(target_python)] if via else [str(target_python), "-m", "pip"]
    subprocess.run([*cmd, "install", "--disable-pip-version-check", "-q", "--progress-bar", "off", *args],
                   check=True, capture_output=True, text=True)


def built_venv(path: Path, *flags: str, maker: Optional[Path] = None, install: bool = True) -> Path:
    """`maker -m venv FLAGS PATH` (maker: default_python3()) with the project's requirements,
    built once and kept while the pins and the maker are the same; its python. Two pytest
    processes (CI runs two at once) build it one after the other, under a lock beside it."""
    maker = maker or default_python3()
    base = default_python3()
    key = hashlib.sha256(b"".join(r.read_bytes() for r in REQUIREMENTS) + str(maker).encode()
                         + " ".join(flags).encode() + b"3").hexdigest()
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = path / ".isolate-grade-test"
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.exists() and stamp.read_text() == key):
            shutil.rmtree(path, ignore_errors=True)
            subprocess.run([str(maker), "-m", "venv", *flags, str(path)], check=True)
            if install:
                reqs = [a for r in REQUIREMENTS for a in ("-r", str(r))]
                pip_install(path / "bin" / "python", *reqs, via=base if "--without-pip" in flags else None)
            stamp.write_text(key)
    return path / "bin" / "python"


@pytest.fixture(scope="session")
def pyenv_python() -> Python:
    """A venv made from the machine's default python3 (pyenv's here: its base under
    /root/.pyenv, not /usr), the way most instructors make one."""
    return Python("pyenv", built_venv(PYTHONS / "pyenv"))



def policy_with_limits(dst: Path, limits: str) -> Path:
    """`dst/small.toml`: the default policy with its [limits] table replaced by `limits` (the
    TOML text of a whole [limits] table)."""
    text = (ROOT / "policies" / "default.toml").read_text()
    start = text.index("\n[limits]\n")
    end = text.index("\n[", start + 1)
    p = dst / "small.toml"
    p.write_text(text[:start] + "\n" + limits.strip() + "\n" + text[end:])
    return p



# Rootless mode (issue #17): the instructor as an unprivileged user with no capabilities
# (`nobody` through `setpriv`), as an instructor's Jupyter server in a container runs.
NOBODY = 65534
AS_NOBODY = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
             "--bounding-set=-all", "--"]


def best_effort_policy(dst: Path, base: Path = ROOT / "policies" / "default.toml") -> Path:
    """`dst`: the policy `base` (the default one) with `limits = "best-effort"` (no cgroup for
    nobody here)."""
    text = base.read_text()
    assert "\n[sandbox]\n" in text and "\nlimits =" not in text
    dst.write_text(text.replace("\n[sandbox]\n", '\n[sandbox]\nlimits = "best-effort"\n', 1))
    return dst


class Instructor:
    """An unprivileged instructor's home (under the host's /tmp, 0755: pytest's tmp is root's
    0700), theirs: a runtime dir, a venv and a best-effort policy. The venv is made without
    pip, the project venv's packages reached through a .pth file, as a hub's user image has
    one the user owns."""

    def __init__(self, prefix: str):
        self.home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self.home.chmod(0o755)
        self.runtime = self.home / "runtime"
        self.venv = self.home / "venv"
        self.python = self.venv / "bin" / "python"
        self.runtime.mkdir(mode=0o700)
        subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(self.venv)], check=True)
        site = next(self.venv.glob("lib/python3*/site-packages"))
        (site / "project.pth").write_text(f"{next(PROJECT_VENV.glob('lib/python3*/site-packages'))}\n")
        self.policy = best_effort_policy(self.home / "best-effort.toml")
        self.own(self.home)

    def env(self, **extra: str) -> Dict[str, str]:
        e = {
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "ISOLATE_GRADE_CONFIG": str(TEST_CONFIG),
            "ISOLATE_GRADE_PYTHON": str(self.python),
        }
        e.update(extra)
        return e

    def run(self, *args: str, cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([*AS_NOBODY, *args], cwd=cwd, env=self.env(**env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def own(self, path: Path) -> None:
        subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(path)], check=True)

    def remove(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def copy_fixture_course(dst: Path) -> Path:
    """The bundled fixture course (fixtures/course) copied to `dst`, without what grading
    leaves behind (release/, autograded/, the gradebook)."""
    shutil.copytree(FIXTURE_COURSE, dst, ignore=shutil.ignore_patterns(
        "release", "autograded", "feedback", "gradebook.db", "__pycache__"))
    return dst


@pytest.fixture(scope="module")
def install_twin(project_python: Python):
    """`isolate-grade install --course` for the project venv's python3: the sandboxed twin
    (named by the prefix given) and the block in the course's nbgrader_config.py. Returns
    the twin's name; the twins are removed when the module's tests are done."""
    prefixes: List[str] = []

    def install(course: Path, prefix: str) -> str:
        prefixes.append(prefix)
        r = subprocess.run([str(BIN), "install", "--python", str(project_python.python), "--course", str(course),
                            "--kernel", "python3", "--twin-prefix", prefix], env=project_python.run_env(),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return prefix + "python3"

    yield install
    for prefix in prefixes:
        for d in (TWIN_HOME / "kernels").glob(prefix + "*"):
            shutil.rmtree(d, ignore_errors=True)


@dataclass
class JupyterServer:
    """A `jupyter lab` started by a test: where it listens, its token, its log."""

    url: str
    token: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError as e:
            return f"(no log: {e})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyter_lab(project_python: Python, tmp_path_factory):
    """Starts `jupyter lab` servers of the project venv, as an instructor runs formgrader:
    `start(root_dir, course, args=(...), **env)` gives it a Jupyter config directory of its own (the
    user's is never read) whose nbgrader_config.py points CourseDirectory.root at the course,
    waits until it answers, and returns it. Each is stopped (by its PID) at teardown."""
    started: List[JupyterServer] = []

    def start(root_dir: Path, course: Path, args: Sequence[str] = (), timeout: float = 60, **env: str) -> JupyterServer:
        home = tmp_path_factory.mktemp("jupyter")
        config = home / "config"
        (config / "labconfig").mkdir(parents=True)
        (config / "nbgrader_config.py").write_text(
            f"c = get_config()  # noqa: F821\nc.CourseDirectory.root = {str(course)!r}\n")
        # no "get notified about Jupyter news?" toast over the page
        (config / "labconfig" / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        port, token = free_port(), secrets.token_hex(16)
        log = home / "server.log"
        run_env = project_python.run_env(JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(home / "data"),
                                         JUPYTER_RUNTIME_DIR=str(home / "runtime"), **env)
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [str(project_python.python), "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                 "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.token={token}",
                 f"--ServerApp.root_dir={root_dir}", *args],
                cwd=root_dir, env=run_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = JupyterServer(f"http://127.0.0.1:{port}", token, process, log)
        started.append(server)
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                pytest.fail(f"jupyter lab exited with {process.returncode} before answering:\n{server.log_tail()}")
            try:
                req = urllib.request.Request(f"{server.url}/api/status", headers={"Authorization": f"token {token}"})
                with urllib.request.urlopen(req, timeout=5) as r:
                    if r.status == 200:
                        return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer on {server.url} within {timeout:.0f}s:\n{server.log_tail()}")
            time.sleep(0.5)

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)  # the server shuts its kernels down
            try:
                server.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


def stdout_of(kc, code: str, timeout: float = 60) -> str:
    """Execute `code` on a started kernel client; what it printed, once the kernel is idle."""
    msg_id = kc.execute(code)
    out = ""
    while True:
        m = kc.get_iopub_msg(timeout=timeout)
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        if m["msg_type"] == "stream":
            out += m["content"]["text"]
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            return out


from collections.abc import Iterator  # noqa: E402

from slurm_cluster import SlurmCluster, missing as slurm_missing  # noqa: E402


@pytest.fixture(scope="module")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A throwaway Slurm cluster of real daemons (tests/e2e/slurm_cluster.py): a controller and
    compute nodes node1 and node2, each its own host on the network, sharing this machine's
    filesystem; removed when the module's tests are done. Skipped without Slurm (bash
    scripts/slurm.sh) or root, except under CI=true, where it fails."""
    missing = slurm_missing() or (None if os.geteuid() == 0 else "the Slurm cluster needs root")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    with SlurmCluster() as cluster:
        yield cluster


# PostgreSQL (tests/e2e/test_postgres.py, test_slurm.py, test_kubernetes.py): Debian's server,
# installed by scripts/postgres.sh; the cluster is tests/e2e/pg_cluster.py's.
import pg_cluster as pg  # noqa: E402


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[pg.PgCluster]:
    """One cluster per module (each test makes its own database). Skipped without PostgreSQL
    15 (scripts/postgres.sh) or root, except under CI=true, where it fails."""
    why = pg.missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    with pg.pg_cluster() as cluster:
        yield cluster


def set_db_url(course: Path, url: str) -> None:
    with open(course / "nbgrader_config.py", "a") as f:
        f.write(f"\nc.CourseDirectory.db_url = {url!r}\n")


def prepare_fixture(dst: Path, db_url: str = "", copies: int = 1) -> Path:
    """course_tools.prepare, with the gradebook at `db_url` (SQLite in the course if empty)."""
    from nbgrader.api import Gradebook

    os.environ["PATH"] = course_tools.nbgrader_env()["PATH"]  # the Gradebook runs `alembic` from PATH

    copy_fixture_course(dst)
    for student in course_tools.STUDENTS:
        for i in range(1, copies):
            shutil.copytree(dst / "submitted" / student, dst / "submitted" / f"{student}-{i + 1}")
    with open(dst / "nbgrader_config.py", "a") as f:
        f.write("\nc.Execute.iopub_timeout = 60\n")  # 16 workers on 2 cores (test_batch.py)
    if db_url:
        set_db_url(dst, db_url)
    url = db_url or f"sqlite:///{dst / 'gradebook.db'}"
    with Gradebook(url, course_tools.course_id(dst)) as gb:
        gb.update_or_create_assignment("ps1", duedate=DUEDATES["ps1"])
    subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", "ps1", "--force"], cwd=dst,
                   env=course_tools.nbgrader_env(), check=True, capture_output=True)
    return dst


def gradebook_at(url: str, course_id: str, assignment: str) -> Dict[str, dict]:
    """course_tools.gradebook's rows, from the database at `url`."""
    from nbgrader.api import Gradebook, MissingEntry

    os.environ["PATH"] = course_tools.nbgrader_env()["PATH"]  # the Gradebook runs `alembic` from PATH

    out = {}
    with Gradebook(url, course_id) as gb:
        for student in sorted(s.id for s in gb.students):
            try:
                sub = gb.find_submission(assignment, student)
            except MissingEntry:
                continue
            out[student] = {
                "late": float(sub.total_seconds_late or 0),
                "notebooks": {nb.name: {
                    "score": float(nb.score), "max": float(nb.max_score),
                    "grades": sorted((g.name, g.auto_score, g.manual_score, g.needs_manual_grade) for g in nb.grades),
                    "comments": sorted((c.name, c.auto_comment) for c in nb.comments),
                } for nb in sub.notebooks},
            }
    return out


def small_course(tmp_path: Path, name: str, url: str, students: int = 3, sleep: float = 0.0):
    """A one-notebook course whose gradebook is at `url`; student k answers k % 3, which scores
    min(k % 3, 2) of 2. The course and the expected scores."""
    cells = [
        nb_cell("code", "def answer():\n    return 2\n", grade_id="answer", solution=True),
        nb_cell("code", f"import time\ntime.sleep({sleep})\nassert answer() >= 1", grade_id="t1", points=1),
        nb_cell("code", "assert answer() >= 2", grade_id="t2", points=1),
    ]
    answers = {f"s{k:02d}": {"env": f"def answer():\n    return {k % 3}\n"} for k in range(students)}
    c = make_assignment(tmp_path / name, Python("debian", Path(sys.executable)), [Notebook("env", cells)], answers,
                        config=f"c.CourseDirectory.db_url = {url!r}\n")
    return c, {s: float(min(k % 3, 2)) for k, s in enumerate(sorted(answers))}

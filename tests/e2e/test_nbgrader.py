"""End to end, with real nbgrader: the fixture course graded through the sandboxed kernel.

Run as root with the project venv (scripts/test.sh does):  .venv/bin/python -m pytest tests/e2e

- grades with the sandboxed kernel equal bare nbgrader's on every benign submission;
- the kernel really is sandboxed: a probe notebook, executed the way autograde executes
  (nbclient, cwd = the submission), reports its uid, network and which course paths exist;
- formgrader's path (NbGraderAPI.autograde, as its AutogradeHandler calls it) is sandboxed too.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import BIN, FIXTURE_COURSE, NEEDS_ROOT, ROOT, TEST_CONFIG, TWIN_HOME, stdout_of

COURSE = FIXTURE_COURSE
KERNEL = "isolate-grade-e2e-python3"
# Every fixture student: with the sandbox, heidi's 50 MB cell is cut at the output limit
# and interrupted, and her grades (the cell is not a graded one) are still bare nbgrader's.
BENIGN = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
SECRET_TOKEN = "hub-token-that-must-not-leak"

pytestmark = NEEDS_ROOT


@pytest.fixture(scope="session")
def sandbox_env(tmp_path_factory):
    """The kernelspec installed into the venv, and the environment the graders run with."""
    assert os.geteuid() == 0, "the e2e tests run as root (CI=true)"
    subprocess.run([str(BIN), "install", "--python", sys.executable, "--kernel", "python3", "--twin-prefix",
                    "isolate-grade-e2e-"], check=True)
    reports = tmp_path_factory.mktemp("kernel-reports")
    env = dict(os.environ)
    env["ISOLATE_GRADE_CONFIG"] = str(TEST_CONFIG)
    env["ISOLATE_GRADE_REPORT_DIR"] = str(reports)
    env["JUPYTERHUB_API_TOKEN"] = SECRET_TOKEN
    # the twin by name (install keeps it off the Jupyter path)
    env["JUPYTER_PATH"] = str(TWIN_HOME)
    # nbgrader runs `alembic` from PATH when it opens a gradebook
    env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env, reports


def grade(out: Path, env: dict, kernel: str | None) -> dict:
    cmd = [sys.executable, str(COURSE / "grade_bare.py"), "--out", str(out), "--json-out", str(out / "scores.json")]
    if kernel:
        cmd += ["--kernel-name", kernel]
    # grade_bare exits 1 when an nbgrader command failed (heidi under the output limit): the
    # scores are compared below either way
    subprocess.run(cmd, env=env, check=False)
    return json.loads((out / "scores.json").read_text())


@pytest.fixture(scope="session")
def graded(tmp_path_factory, sandbox_env):
    env, reports = sandbox_env
    base = tmp_path_factory.mktemp("graded")
    bare = grade(base / "bare", {k: v for k, v in env.items() if not k.startswith("ISOLATE_GRADE")}, None)
    sandboxed = grade(base / "sandboxed", env, KERNEL)
    return bare, sandboxed, base / "sandboxed", reports


def ended_normally(v):
    """A kernel that ended as it should: `ok`, or by ipykernel 7.4's own shutdown race once
    its client had asked it to shut down (`shutdown_requested`, seen by the relay on the
    client's side of the control channel). At shutdown its control thread flushes the IOPub
    stream while the main thread stops the IOPub thread: the flush then waits for a thread
    that is gone (the kernel hangs until jupyter_client's SIGTERM, which the report lists in
    `relayed_signals`), or writes to the IOPub socket the main thread is closing, and libzmq
    aborts (SIGABRT). See README, "How sandboxed kernels end". Every verdict of the sandbox's
    own (a limit, a fault, a kill by the supervisor) still fails this, and so does a signal
    before the shutdown request."""
    if v["status"] == "ok":
        return True
    if v["status"] != "signaled" or v["stopped_by"] is not None or not v["shutdown_requested"]:
        return False
    return (v["signal"] == "SIGTERM" and "SIGTERM" in v["relayed_signals"]) or v["signal"] == "SIGABRT"


def test_sandboxed_grades_equal_bare_nbgrader(graded):
    bare, sandboxed, _, _ = graded
    for student in BENIGN:
        assert sandboxed.get(student) == bare.get(student), student
    assert any(v for v in bare["alice"].values()), "alice has grades"


def test_every_kernel_left_a_verdict(graded):
    _, _, _, reports = graded
    verdicts = [json.loads(p.read_text()) for p in reports.glob("*.json")]
    assert verdicts, "no kernel reports"
    for v in verdicts:
        assert v["schema"] == "isolate-grade.run/1"
        assert v["status"] != "sandbox-error", v
        assert v["kernel"]["output_limit"] > 0
        assert v["sandbox"]["uid"] >= 60000
    # heidi prints more than the output limit: her cell was cut, and her kernel's verdict says so
    limited = [v for v in verdicts if v["status"] == "output-limit"]
    assert [v["kernel"]["workdir"].split("/")[-2:] for v in limited] == [["heidi", "ps1"]], limited
    assert limited[0]["output_bytes"] > limited[0]["kernel"]["output_limit"]


PROBE = r'''
import json, os, socket
course = os.environ.get("PROBE_COURSE", "")
paths = {p: os.path.exists(p) for p in [
    "/root", "/etc/shadow", "/proc/kcore",
]}
print(json.dumps({
    "uid": os.getuid(),
    "cwd": os.getcwd(),
    "listing": sorted(os.listdir(".")),
    "net": [n for _, n in socket.if_nameindex()],
    "env": sorted(os.environ),
    "parent": os.environ.get("JPY_PARENT_PID"),
    "paths": paths,
}))
open("written-by-kernel.txt", "w").write("x")
'''


def test_the_kernel_is_sandboxed(graded, sandbox_env):
    """Executed as autograde executes it: nbclient, cwd = the submission under grading."""
    from nbclient import NotebookClient

    env, _ = sandbox_env
    _, _, work, _ = graded
    cwd = work / "autograded" / "alice" / "ps2"
    assert (cwd / "data.csv").exists()
    course_paths = [work / "source", work / "gradebook.db", work / "submitted", work / "release",
                    work / "autograded" / "bob", ROOT / "src", ROOT / "fixtures", Path.home()]
    checks = "\n".join(f"paths[{str(p)!r}] = os.path.exists({str(p)!r})" for p in course_paths)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PROBE.replace("print(json.dumps", checks + "\nprint(json.dumps"))]
    old = dict(os.environ)
    os.environ.update(env)
    try:
        NotebookClient(nb, kernel_name=KERNEL, timeout=60, resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(old)
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs if o.output_type == "stream")
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["uid"] >= 60000, seen
    assert seen["net"] == ["lo"], seen
    assert seen["cwd"] == str(cwd)
    assert "data.csv" in seen["listing"], seen
    # the notebooks in the submission carry the hidden tests: not visible
    assert not any(n.endswith(".ipynb") for n in seen["listing"]), seen
    for path, exists in seen["paths"].items():
        assert not exists, f"{path} is visible in the sandbox"
    assert "JUPYTERHUB_API_TOKEN" not in seen["env"], seen
    # not the caller's pid: the kernel's parent in the sandbox is its init
    assert seen["parent"] == "1", seen
    # writes went to the scratch, and were copied out to the working directory once the
    # kernel had ended, as bare nbgrader's kernel leaves them: a regular file of the caller's
    written = cwd / "written-by-kernel.txt"
    assert written.read_text() == "x"
    assert written.stat().st_uid == os.getuid() and not written.is_symlink()


def test_formgrader_autograde_is_sandboxed(tmp_path, sandbox_env):
    """The call formgrader's AutogradeHandler makes: NbGraderAPI.autograde, in-process."""
    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config import Config

    env, reports = sandbox_env
    work = tmp_path / "course"
    shutil.copytree(COURSE, work, ignore=shutil.ignore_patterns("release", "autograded", "gradebook.db", "__pycache__"))
    old = dict(os.environ)
    os.environ.update(env)
    cwd = os.getcwd()
    try:
        os.chdir(work)
        c = Config()
        c.CourseDirectory.root = str(work)
        c.CourseDirectory.course_id = "fixture-course"
        c.Execute.kernel_name = KERNEL
        api = NbGraderAPI(CourseDirectory(config=c), config=c)
        assert api.generate_assignment("ps1")["success"]
        before = set(reports.glob("*.json"))
        result = api.autograde("ps1", "alice")
        assert result["success"], result.get("log")
        new = [json.loads(p.read_text()) for p in set(reports.glob("*.json")) - before]
        assert new and all(ended_normally(v) for v in new), [(v["status"], v["signal"]) for v in new]
        sub = api.get_submission("ps1", "alice")
        assert sub["score"] == sub["max_score"] > 0, sub
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(old)


BOUNDARY = r'''
import json, os, socket, subprocess, sys
port = int(os.environ.get("NOTHING", "0") or 0)
def reach(p):
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect(("127.0.0.1", p)); return True
    except OSError:
        return False
# a daemon that double-forks, calls setsid and ignores SIGTERM: it must die with the kernel
subprocess.Popen([sys.executable, "-c",
    "import os, signal, time\nif os.fork(): os._exit(0)\nos.setsid()\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(300)"])
print(json.dumps({
    "host_port": reach(HOST_PORT),
    "runtime": sorted(os.listdir("/run/kernel")),
    "jupyter_runtime": os.path.exists(JUPYTER_RUNTIME),
}))
'''


def test_the_kernel_reaches_nothing_but_its_client(tmp_path, sandbox_env):
    """No host port, no Jupyter runtime directory (the keys of the instructor's live kernels),
    only its own connection file; and killing it kills all it started."""
    from jupyter_client import KernelManager
    from jupyter_core.paths import jupyter_runtime_dir

    env, _ = sandbox_env
    listener = __import__("socket").socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    host_port = listener.getsockname()[1]
    runtime = jupyter_runtime_dir()
    os.makedirs(runtime, exist_ok=True)
    old = dict(os.environ)
    os.environ.update(env)
    try:
        km = KernelManager(kernel_name=KERNEL)
        km.start_kernel(cwd=str(tmp_path))
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        code = BOUNDARY.replace("HOST_PORT", str(host_port)).replace("JUPYTER_RUNTIME", repr(runtime))
        out = stdout_of(kc, code)
        seen = json.loads(out.strip().splitlines()[-1])
        wrapper = km.provisioner.process.pid
        uids = sandbox_uids_of(wrapper)
        assert uids, "no sandboxed process found under the kernel wrapper"
        km.shutdown_kernel(now=True)  # SIGKILL to the wrapper's process group
        kc.stop_channels()
    finally:
        os.environ.clear()
        os.environ.update(old)
        listener.close()
    assert seen["host_port"] is False, "the kernel reached a port on the host's loopback"
    assert seen["jupyter_runtime"] is False, "the Jupyter runtime directory is visible"
    # its own connection file only: its ports are on its own loopback (tcp), no sockets here
    assert seen["runtime"] == ["connection.json"], seen
    import time

    deadline = time.time() + 5
    while time.time() < deadline and any(processes_of(u) for u in uids):
        time.sleep(0.1)
    assert not any(processes_of(u) for u in uids), "a process of the kernel's sandbox outlived it"


def processes_of(uid):
    """Live (not zombie) processes whose real uid is `uid`."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            status = (d / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            found.append(int(d.name))
    return found


def sandbox_uids_of(wrapper_pid):
    """The uids (>= 60000) of the processes descending from the kernel wrapper."""
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = dict(line.split(":", 1) for line in (d / "status").read_text().splitlines() if ":" in line)
            except OSError:
                continue
            children.setdefault(int(fields["PPid"]), []).append((int(d.name), int(fields["Uid"].split()[0])))
    uids, todo = set(), [wrapper_pid]
    while todo:
        for pid, uid in children.get(todo.pop(), []):
            todo.append(pid)
            if uid >= 60000:
                uids.add(uid)
    return uids

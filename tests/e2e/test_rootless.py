"""Rootless mode end to end (issue #17): the instructor as an unprivileged user with no
capabilities (`nobody` through `setpriv`, as an instructor's Jupyter server in a container
runs), the binary run as an ordinary program (not setuid, no sudo), the course theirs.

- The batch grades the fixture course's ps1 in rootless sandboxes under a policy whose
  limits are best-effort: bare nbgrader's scores (make_course.EXPECTED); its report says the
  sandbox was rootless and which limits it did not enforce.
- Under the default policy (required limits) and no delegated cgroup, it refuses before
  grading anyone (exit 3), saying what to do.
- `install` then plain `nbgrader autograde` (formgrader's path), rootless: the same scores.
- A rootless kernel, started by jupyter_client as the same user, from inside: no capability
  left, the submission's notebook whited out, the caller's other files absent, the caller's
  processes and the host's loopback out of reach; what it writes in its working directory is
  copied out after it ends; its report says `rootless`.

The instructor's Python: a venv of their own (made here without pip, the project venv's
packages reached through a .pth file), as a hub's user image has one the user owns.
"""

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Dict, Iterator

import pytest

from conftest import AS_NOBODY, BIN, NEEDS_ROOT, NOBODY, PROJECT_VENV, Instructor, course_tools, prepare_fixture
from make_course import EXPECTED

pytestmark = NEEDS_ROOT

@pytest.fixture(scope="module")
def instructor() -> Iterator[Instructor]:
    i = Instructor("isolate-grade-rootless-")
    yield i
    i.remove()


@pytest.fixture
def course(instructor: Instructor, request) -> Path:
    """The fixture course with ps1 released, the instructor's."""
    dst = instructor.home / f"course-{request.node.name}"
    prepare_fixture(dst)
    instructor.own(dst)
    yield dst
    shutil.rmtree(dst, ignore_errors=True)


def scores(course: Path) -> Dict[str, Dict[str, float]]:
    return {s: {nb: v["score"] for nb, v in d["notebooks"].items()}
            for s, d in course_tools.gradebook(course, "ps1").items()}


EXPECTED_PS1 = {s: per["ps1"] for s, per in EXPECTED.items() if "ps1" in per}


def test_the_batch_grades_rootless_under_best_effort_limits_and_says_so(instructor, course):
    report = course / "report.json"
    r = instructor.run(str(BIN), "ps1", "--course", str(course), "--policy", str(instructor.policy), "--report",
                       str(report), cwd=course)
    assert r.returncode == 0, r.stdout + r.stderr
    assert scores(course) == EXPECTED_PS1
    got = json.loads(report.read_text())
    assert got["sandbox"]["mode"] == "rootless", got["sandbox"]
    assert {"memory", "pids"} <= set(got["sandbox"]["not_enforced"]), got["sandbox"]
    assert "rootless sandbox, the policy's best-effort limits: not enforced: memory" in r.stdout, r.stdout
    # the graded files are the instructor's, as bare nbgrader's would be
    assert {p.stat().st_uid for p in (course / "autograded").rglob("*")} == {NOBODY}


def test_the_batch_refuses_required_limits_without_a_cgroup_and_grades_nobody(instructor, course):
    r = instructor.run(str(BIN), "ps1", "--course", str(course), cwd=course)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "rootless" in r.stderr and 'limits = "best-effort"' in r.stderr, r.stderr
    assert not (course / "autograded").exists()
    assert scores(course) == {}


def test_plain_nbgrader_after_install_grades_rootless(instructor, course):
    python = str(instructor.python)
    prefix = "isolate-grade-rootless-"
    r = instructor.run(str(BIN), "install", "--python", python, "--course", str(course), "--kernel", "python3",
                       "--twin-prefix", prefix, "--policy", str(instructor.policy), cwd=course)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (instructor.venv / "share" / "isolate-grade" / "jupyter" / "kernels" / f"{prefix}python3").is_dir()
    r = instructor.run(python, "-m", "nbgrader", "autograde", "ps1", cwd=course)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert scores(course) == EXPECTED_PS1


# What the kernel looks at from inside, printed as JSON: `{secret}` and `{victim}` are the
# caller's own files, `{port}` a port listening on the host's loopback, `{client}` the
# client's pid on the host.
PROBE = """
import json, os, socket
caps = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapPrm", "CapBnd"))]
def reach(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
open("made-inside.txt", "w").write("from the kernel")
print(json.dumps({{
    "uid": os.getuid(), "caps": caps, "cwd": os.getcwd(),
    "notebook": os.path.exists("problem1.ipynb"),
    "secret": os.path.exists({secret!r}), "victim": os.path.exists({victim!r}),
    "host_port": reach({port}), "client": alive({client}),
    "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
}}))
"""

CLIENT = """
import json, os, sys
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpec
argv, code = json.loads(sys.argv[1]), sys.argv[2]
km = KernelManager()
km._kernel_spec = KernelSpec(argv=argv, display_name="rootless", language="python")
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=120)
out = []
reply = kc.execute_interactive(code.replace("{client}", str(os.getpid())), timeout=60,
                               output_hook=lambda m: out.append(m["content"].get("text", "")))
kc.stop_channels()
km.shutdown_kernel(now=False)
print("SEEN" + "".join(out).strip())
"""


def test_a_rootless_kernel_gets_nothing_of_the_callers_beyond_its_submission(instructor):
    submission = instructor.home / "submission"
    submission.mkdir()
    (submission / "problem1.ipynb").write_text("{}")
    (submission / "data.csv").write_text("1,2\n")
    secret = instructor.home / "secret.txt"
    secret.write_text("the instructor's token")
    victim = instructor.home / "victim.txt"
    victim.write_text("")
    instructor.own(instructor.home)
    secret.chmod(0o600)
    report = instructor.home / "kernel-report.json"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        python = str(instructor.python)
        argv = [str(BIN), "kernel", "--policy", str(instructor.policy), "--bind", str(PROJECT_VENV), "--bind",
                str(instructor.venv), "--submission", str(submission), "--report", str(report), "--", python, "-m",
                "ipykernel_launcher", "-f", "{connection_file}"]
        code = PROBE.format(secret=str(secret), victim=str(victim), port=listener.getsockname()[1], client="{client}")
        r = instructor.run(python, "-c", CLIENT, json.dumps(argv), code, cwd=instructor.home, timeout=300)
    finally:
        listener.close()
    assert r.returncode == 0 and "SEEN" in r.stdout, r.stdout + r.stderr
    seen = json.loads(r.stdout.split("SEEN", 1)[1])
    assert seen["uid"] != 0 and set(seen["caps"]) == {"0000000000000000"}, seen
    assert seen["cwd"] == str(submission), seen
    assert seen["notebook"] is False, "the submission's notebook (the hidden tests) is whited out"
    assert (seen["secret"], seen["victim"]) == (False, False), "the caller's other files are not in the sandbox"
    assert seen["host_port"] is False, "the host's loopback is out of reach"
    assert seen["client"] is False, "the caller's processes are out of reach"
    assert len(seen["pids"]) <= 4, seen["pids"]
    got = json.loads(report.read_text())
    assert got["sandbox"]["mode"] == "rootless" and got["status"] == "ok", got
    assert got["kernel"]["copied_out"]["files"] == 1, got["kernel"]
    made = submission / "made-inside.txt"
    assert made.read_text() == "from the kernel" and made.stat().st_uid == NOBODY
    assert victim.read_text() == "" and (submission / "data.csv").read_text() == "1,2\n"


# What Docker leaves in a container: /proc/sys and /sys/fs/cgroup read-only, files such as
# /proc/kcore covered (here /proc/timer_list); then the instructor inside, unprivileged.
CONTAINER_LIKE = ("mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
                  "mount --bind /dev/null /proc/timer_list && "
                  "mount --bind /sys/fs/cgroup /sys/fs/cgroup && mount -o remount,bind,ro /sys/fs/cgroup && "
                  'exec "$@"')

NOTEBOOK_WORK = """
import numpy, pandas, matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.plot(numpy.arange(3))
print(pandas.DataFrame({"a": numpy.arange(3)})["a"].sum(), sorted(__import__("os").listdir("/proc")))
"""


def test_in_a_container_like_namespace_a_kernel_runs_without_proc_and_is_refused_in_words_with_it(instructor):
    submission = instructor.home / "container-submission"
    submission.mkdir(exist_ok=True)
    no_proc = instructor.home / "no-proc.toml"
    no_proc.write_text(instructor.policy.read_text().replace('\nproc = "full"\n', '\nproc = "none"\n', 1))
    assert 'proc = "none"' in no_proc.read_text() and 'proc = "full"' not in no_proc.read_text()
    instructor.own(instructor.home)
    python = str(instructor.python)

    def kernel(policy: Path) -> subprocess.CompletedProcess:
        report = instructor.home / f"report-{policy.stem}.json"
        argv = [str(BIN), "kernel", "--policy", str(policy), "--bind", str(PROJECT_VENV), "--bind",
                str(instructor.venv), "--submission", str(submission), "--report", str(report), "--", python, "-m",
                "ipykernel_launcher", "-f", "{connection_file}"]
        return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", CONTAINER_LIKE, "sh",
                               *AS_NOBODY, python, "-c", CLIENT, json.dumps(argv), NOTEBOOK_WORK],
                              cwd=instructor.home, env=instructor.env(), capture_output=True, text=True, timeout=300)

    r = kernel(no_proc)
    assert r.returncode == 0 and "SEEN" in r.stdout, r.stdout + r.stderr
    # (matplotlib's fontconfig may warn on stderr first: no /etc/fonts is bound)
    assert r.stdout.split("SEEN", 1)[1].strip().splitlines()[-1] == "3 []", r.stdout
    # the default policy's full procfs: refused, in words that name the way out
    r = kernel(instructor.policy)
    assert r.returncode != 0
    got = json.loads((instructor.home / f"report-{instructor.policy.stem}.json").read_text())
    assert got["status"] == "sandbox-error" and got["sandbox_error"]["step"] == "proc", got
    assert 'proc = \\"none\\"' in json.dumps(got["sandbox_error"]["message"]), got

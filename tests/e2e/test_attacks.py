"""The adversarial suite (issue #5, first part): every program in fixtures/attacks/ is run as a
student would run it, against secrets planted for real, both

- through `isolate-grade run` (python3 in the default policy), and
- through `isolate-grade ps1` on an attack course: each attack is one student's solution cell,
  next to a control student with correct answers.

For each: the verdict its header promises (`run:` and `batch:` lines; `a|b` where a race
between two limits decides, both of them containment), no planted secret in any
output, report, log or graded notebook, no "ACHIEVED" line, and afterwards nothing of the run
left on the host (process, cgroup with a process in it, mount, file). The secrets: a solution
in source/, hidden tests and a student's email in the gradebook, another student's submission, a file in the instructor's
home, a root-only file, the grader's JUPYTERHUB_API_TOKEN, a TCP listener on the host's
loopback and an abstract Unix socket, each answering with the token. Another sandbox runs
beside the whole suite as a victim: the attacks get its host pids, and it must come out alive,
never stopped and never traced.

Every attack program runs through `isolate-grade run` rootless too (issue #17: as nobody with no
capabilities, the default policy made best-effort), but the two whose containment needs a limit
rootless mode documents as not enforced (the memory cap, the CPU quota): the same verdict,
contained, nothing of the run left, no cgroup made, and besides the secrets above the caller's
own (a file only nobody may read) and the caller's other process (nobody's, not sandboxed).
The batch runs rootless too: the attack course (without those two) is then an unprivileged
instructor's, graded by them; and so do the terminal attacks, `run` and a twin kernel the
instructor installed.

The summary line, written to target/attack-summary.txt (scripts/test.sh prints it): "attack
suite: N attacks, R runs (isolate-grade run, privileged and rootless, and the batch), M
contained".

Beyond the attack programs, the batch gets a submission whose files are swapped for symlinks
to the solutions in a loop while it is checked and copied. The containment tests
(tests/containment.rs), the seccomp attacks (tests/seccomp.rs) and the hostile-caller tests
(tests/hostile.rs) cover the rest of issue #5's list through `run`; the README maps each case
to its test.
"""

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import List, Set

import nbformat
import pytest

import course_tools
from conftest import AS_NOBODY, BIN, NEEDS_ROOT, NOBODY, ROOT, TWIN_HOME, Instructor, grader_env

ATTACKS = ROOT / "fixtures" / "attacks"

pytestmark = NEEDS_ROOT

TOKEN = "IGSECRET-" + secrets.token_hex(8)
NAMES = sorted(p.stem for p in ATTACKS.glob("*.py"))


# Each attack's wall-time limit through `run`. Under emulation (scripts/vm.sh boots a VM without
# KVM) everything runs several times slower: the VM stretches it, so that an attack expected to
# end `ok` is not cut short; what each attack must end with stays the same.
RUN_WALL = os.environ.get("ISOLATE_GRADE_TEST_WALL", "10s")


def expected(name):
    text = (ATTACKS / f"{name}.py").read_text()
    return {k: re.search(rf"^{k}: (\S+)$", text, re.M).group(1) for k in ("run", "batch")}


def filled(name, targets):
    """The attack's source with TARGETS filled in."""
    src = (ATTACKS / f"{name}.py").read_text()
    return src.replace("TARGETS = {}", f"TARGETS = {targets!r}", 1)


def mounts():
    return len(Path("/proc/self/mountinfo").read_text().splitlines())


def host_scratch():
    """What is in the host's /tmp, /dev/shm and /var/tmp: a run must leave nothing there."""
    return {str(p) for d in ("/tmp", "/dev/shm", "/var/tmp") for p in Path(d).iterdir()}


def uid_of(pid):
    return int(re.search(r"^Uid:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def processes_where(uid_ok):
    """Live processes whose real uid passes `uid_ok`."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                uid = uid_of(p.name)
            except (OSError, AttributeError):
                continue
            if uid_ok(uid):
                out.append(int(p.name))
    return out


def sandbox_processes(victim):
    """Processes running as a sandbox slot's uid (the test config's first_uid is 60000), but
    the victim's."""
    return processes_where(lambda uid: 60000 <= uid < 60000 + 64 and uid != victim.uid)


def nobodys_processes():
    """Processes running as nobody (a rootless run's are, on the host)."""
    return processes_where(lambda uid: uid == NOBODY)


def our_cgroups():
    """{cgroup directory: its processes} for every cgroup under the test config's cgroup_root
    ("isolate-grade") in every cgroup hierarchy mounted here (v1 slots are kept and reused)."""
    out = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2"):
            for d in Path(fields[4], "isolate-grade").glob("**/"):
                try:
                    out[str(d)] = (d / "cgroup.procs").read_text().split()
                except OSError:
                    pass
    return out


def cgroup_leftovers(victim):
    """Our cgroups that still hold a process (the victim's aside), and any that is not a slot."""
    return {d: procs for d, procs in our_cgroups().items()
            if not (d.endswith("/isolate-grade") or re.search(r"/isolate-grade/slot-\d+$", d)) or
            (procs and not any(d.endswith(v) for v in victim.cgroups))}


class Secrets:
    """Everything planted, and the listeners that hand out the token."""

    def __init__(self, tmp, victim):
        self.victim = victim
        self.dirs = []
        self.files = []
        root_only = tmp / "root-only"
        root_only.mkdir(mode=0o700)
        (root_only / "secret.txt").write_text(TOKEN)
        os.chmod(root_only / "secret.txt", 0o600)
        self.files.append(str(root_only / "secret.txt"))
        self.dirs.append(str(root_only))
        home = Path(os.path.expanduser("~"))
        self.home_secret = home / f".isolate-grade-attack-{os.getpid()}"
        self.home_secret.write_text(TOKEN)
        self.files.append(str(self.home_secret))
        self.dirs.append(str(home))
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.abstract_name = f"isolate-grade-attack-{os.getpid()}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind("\0" + self.abstract_name)
        self.unix.listen(16)
        # a root-only Unix socket by path, as a host daemon's (the relay's symlink target)
        self.unix_path = root_only / "host-daemon.sock"
        self.unix_file = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix_file.bind(str(self.unix_path))
        os.chmod(self.unix_path, 0o600)
        self.unix_file.listen(16)
        self.connections = 0
        for s in (self.tcp, self.unix, self.unix_file):
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            self.connections += 1
            c.sendall(TOKEN.encode())
            c.close()

    def targets(self):
        return {"files": self.files, "dirs": self.dirs, "ports": [self.port], "abstract": [self.abstract_name],
                "unix_paths": [str(self.unix_path)], "victims": self.victim.pids}

    def close(self):
        self.tcp.close()
        self.unix.close()
        self.unix_file.close()
        self.home_secret.unlink(missing_ok=True)


def victim_state(pid):
    """(state letter, TracerPid) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    return (re.search(r"^State:\s+(\S)", status, re.M).group(1),
            int(re.search(r"^TracerPid:\s+(\d+)", status, re.M).group(1)))


@dataclass(frozen=True)
class Victim:
    """The other sandbox: its slot's uid, its host pids, its cgroups."""

    uid: int
    pids: List[int]
    cgroups: Set[str]


@pytest.fixture(scope="module")
def victim():
    """Another sandbox, running for the whole suite: a shell waiting on a `sleep`."""
    marker = f"victim-{os.getpid()}"
    sup = subprocess.Popen([str(BIN), "run", "--wall-time", "1h", "--", "/bin/sh", "-c", f"sleep 3600; : {marker}"],
                           env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shell = None
    for _ in range(300):
        for p in Path("/proc").iterdir():
            try:
                # The supervisor's own command line (and its forked, not yet exec'd, child's)
                # holds the marker too: only the shell itself, exec'd in a slot, is the victim.
                cmdline = (p / "cmdline").read_bytes()
                if (p.name.isdigit() and cmdline.startswith(b"/bin/sh\0") and marker.encode() in cmdline
                        and 60000 <= uid_of(p.name) < 60000 + 64):
                    shell = int(p.name)
            except (OSError, AttributeError):
                pass
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split() if shell else []
        if children:
            break
        threading.Event().wait(0.1)
    assert shell and children, "the victim sandbox did not start"
    yield Victim(uid=uid_of(shell), pids=[shell, *map(int, children)],
                 cgroups={line.split(":", 2)[2] for line in Path(f"/proc/{shell}/cgroup").read_text().splitlines()})
    sup.terminate()  # relayed to the victim, which ends
    sup.wait(timeout=30)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, victim):
    s = Secrets(tmp_path_factory.mktemp("secrets"), victim)
    yield s
    s.close()


def env():
    return grader_env(JUPYTERHUB_API_TOKEN=TOKEN)


def assert_contained(texts, what):
    """No token anywhere; no line of output that starts with ACHIEVED (the attacks' sources,
    which nbgrader's log quotes in tracebacks, contain the word, but never at a line's start)."""
    for t in texts:
        assert TOKEN not in t, f"{what}: the secret leaked"
        won = re.search(r"^ACHIEVED .*$", t, re.M)
        assert not won, f"{what}: {won.group(0)}"


def notebook_outputs(path):
    """Everything the kernel produced in a graded notebook (not the cells' sources)."""
    nb = nbformat.read(path, as_version=4)
    out = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            out.append(o.get("text", ""))
            out.extend(str(v) for v in o.get("data", {}).values())
            out.append(o.get("evalue", ""))
            out.extend(o.get("traceback", []))
    return "\n".join(out)


@pytest.fixture(scope="module", autouse=True)
def results():
    """(mode, attack) -> contained?: each test that runs an attack enters False, and True once
    every assertion held. After the module's tests, the summary line is printed and written to
    target/attack-summary.txt."""
    results = {}
    yield results
    attacks = len({name for _, name in results})
    line = (f"attack suite: {attacks} attacks, {len(results)} runs (isolate-grade run, privileged and rootless, "
            "and the batch), "
            f"{sum(results.values())} contained")
    print("\n" + line)
    (ROOT / "target").mkdir(exist_ok=True)
    (ROOT / "target" / "attack-summary.txt").write_text(line + "\n")


@pytest.mark.parametrize("name", NAMES)
def test_attack_through_run(name, planted, victim, results, tmp_path):
    results[("run", name)] = False
    script = tmp_path / "attack.py"
    script.write_text(filled(name, planted.targets()))
    os.chmod(tmp_path, 0o755)
    os.chmod(script, 0o644)
    before, scratch = mounts(), host_scratch()
    report = tmp_path / "report.json"
    # stdout and stderr go to files, as a batch job's would (the sandbox writes to pipes of
    # the supervisor's, which passes them on, up to --output-limit); stdin is a pipe kept
    # open and silent
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    stdin_r, stdin_w = os.pipe()
    # an attack that must run into the wall-time limit gets 10 s wherever it runs
    wall = "10s" if expected(name)["run"] == "timeout-wall" else RUN_WALL
    try:
        with open(out, "wb") as o, open(err, "wb") as e:
            subprocess.run([str(BIN), "run", "--report", str(report), "--wall-time", wall,
                            "--bind", f"{script}:/attack.py", "--", "python3", "/attack.py"],
                           env=env(), stdin=stdin_r, stdout=o, stderr=e, timeout=300)
    finally:
        os.close(stdin_r)
        os.close(stdin_w)
    stdout, stderr = (p.read_bytes().decode(errors="replace") for p in (out, err))
    verdict = json.loads(report.read_text())
    assert verdict["status"] == expected(name)["run"], (verdict["status"], stdout[-2000:], stderr[-2000:])
    assert_contained([stdout, stderr, report.read_text()], name)
    assert mounts() == before
    assert not sandbox_processes(victim)
    assert not cgroup_leftovers(victim)
    assert not host_scratch() - scratch
    results[("run", name)] = True


# Rootless (issue #17): `isolate-grade run` by an unprivileged caller, nobody with no
# capabilities, under the default policy made best-effort (no cgroup for nobody here). The
# attacks whose containment rootless mode documents as absent are not run (each would only
# take the shared host's memory or cores); every other one must end as its header says,
# contained, with nothing left on the host.
ROOTLESS_NOT_ENFORCED = {
    "memory_bomb": "memory",  # no memory cap: it would allocate until the host's OOM killer
    "busy_threads": "cpu_quota",  # no CPU quota: it gets every core, as its header says
}
ROOTLESS_NAMES = [n for n in NAMES if n not in ROOTLESS_NOT_ENFORCED]
MARKER_VAR = "ISOLATE_GRADE_TEST_RUN"


@dataclass(frozen=True)
class Rootless:
    """nobody's side: an unprivileged instructor (their home under the host's /tmp, made
    before any test's snapshot of it; a venv and a best-effort policy there), a secret of
    their own (0600 in a 0700 directory: only the caller itself may read it), and another
    process of their own, not sandboxed (the caller's: the attacks get its pid with the
    victims')."""

    instructor: Instructor
    secret: Path
    other: subprocess.Popen

    @property
    def home(self) -> Path:
        return self.instructor.home

    @property
    def policy(self) -> Path:
        return self.instructor.policy

    @property
    def runtime(self) -> Path:
        return self.instructor.runtime

    def targets(self, planted):
        """The planted targets and the caller's own: its secret, and its other process."""
        t = planted.targets()
        return {**t, "files": [*t["files"], str(self.secret)], "dirs": [*t["dirs"], str(self.secret.parent)],
                "victims": [*t["victims"], self.other.pid]}


@pytest.fixture(scope="module")
def rootless():
    instructor = Instructor("isolate-grade-rootless-attacks-")
    private = instructor.home / "private"
    private.mkdir(mode=0o700)
    secret = private / "secret.txt"
    secret.write_text(TOKEN)
    secret.chmod(0o600)
    instructor.own(private)
    other = subprocess.Popen([*AS_NOBODY, "sleep", "3600"], stdin=subprocess.DEVNULL)
    yield Rootless(instructor, secret, other)
    other.kill()
    other.wait()
    instructor.remove()


def callers_files(home, *but):
    """Every path under the caller's `home` (theirs, all writable by them) but those of the
    directories `but`, with its size and modification time."""
    return {(str(p), p.lstat().st_size, p.lstat().st_mtime_ns) for p in home.rglob("*")
            if not any(p == b or b in p.parents for b in but)}


def processes_with_marker(marker):
    """Live processes with `marker` in their environment (a run's, rootless: on the host they
    are all nobody's)."""
    needle = f"{MARKER_VAR}={marker}\0".encode()
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and needle in (p / "environ").read_bytes():
                out.append(int(p.name))
        except OSError:
            pass
    return out


def test_the_attacks_rootless_leaves_out_are_the_limits_it_documents_as_absent(rootless):
    """An attack is left out of the rootless runs only where its verdict needs a limit that a
    rootless run's own report lists as not enforced."""
    r = subprocess.run([*AS_NOBODY, str(BIN), "run", "--report", "-", "--policy", str(rootless.policy),
                        "--", "/bin/true"], env=env() | {"XDG_RUNTIME_DIR": str(rootless.runtime)},
                       capture_output=True, text=True, timeout=60, cwd=rootless.home)
    report = json.loads(r.stdout)
    assert (report["status"], report["sandbox"]["mode"]) == ("ok", "rootless"), r.stderr
    for name, limit in ROOTLESS_NOT_ENFORCED.items():
        assert name in NAMES
        assert limit in report["sandbox"]["not_enforced"], (name, report["sandbox"])
        # what its header promises depends on that limit: the memory cap's verdict, or (the
        # quota) an `ok` that is only contained because the quota held
        assert expected(name)["run"] == {"memory": "memory-limit"}.get(limit, "ok"), name


@pytest.mark.parametrize("name", ROOTLESS_NAMES)
def test_attack_through_run_rootless(name, planted, victim, rootless, results):
    results[("run-rootless", name)] = False
    work = rootless.home / name
    work.mkdir(mode=0o755)
    os.chown(work, NOBODY, NOBODY)
    targets = rootless.targets(planted)
    script = work / "attack.py"
    script.write_text(filled(name, targets))
    os.chmod(script, 0o644)
    before, scratch, cgroups = mounts(), host_scratch(), our_cgroups()
    callers = callers_files(rootless.home, work, rootless.runtime)
    report = work / "report.json"
    out, err = work / "stdout", work / "stderr"
    stdin_r, stdin_w = os.pipe()
    marker = f"{os.getpid()}-{name}"
    wall = "10s" if expected(name)["run"] == "timeout-wall" else RUN_WALL
    try:
        with open(out, "wb") as o, open(err, "wb") as e:
            subprocess.run([*AS_NOBODY, str(BIN), "run", "--report", str(report), "--policy", str(rootless.policy),
                            "--env", MARKER_VAR, "--wall-time", wall, "--bind", f"{script}:/attack.py",
                            "--", "python3", "/attack.py"],
                           env=env() | {"XDG_RUNTIME_DIR": str(rootless.runtime), MARKER_VAR: marker},
                           stdin=stdin_r, stdout=o, stderr=e, timeout=300, cwd=work)
    finally:
        os.close(stdin_r)
        os.close(stdin_w)
    stdout, stderr = (p.read_bytes().decode(errors="replace") for p in (out, err))
    verdict = json.loads(report.read_text())
    assert verdict["sandbox"]["mode"] == "rootless", verdict
    assert verdict["sandbox"]["cgroup"] == "none", verdict
    assert verdict["status"] == expected(name)["run"], (verdict["status"], stdout[-2000:], stderr[-2000:])
    assert_contained([stdout, stderr, report.read_text()], name)
    assert mounts() == before
    # its processes were nobody's on the host, never a slot uid's: none is left with its marker
    assert not processes_with_marker(marker)
    # no cgroup made (nor any other left)
    assert our_cgroups().keys() == cgroups.keys()
    assert not host_scratch() - scratch
    # nothing the caller may write was written (but the run's own directory, where its report
    # is, and the tool's state in the runtime directory: its slot locks)
    assert callers_files(rootless.home, work, rootless.runtime) == callers
    # the caller's other process: alive, never stopped nor traced
    assert victim_state(rootless.other.pid) == ("S", 0)
    results[("run-rootless", name)] = True


@dataclass(frozen=True)
class AttackBatch:
    """The attack course after `isolate-grade ps1`: the batch's result and report, and what was
    on the host before it (mount count, scratch entries, our cgroups), and how often the swap
    race swapped."""

    course: Path
    r: subprocess.CompletedProcess
    report: dict
    mounts: int
    scratch: Set[str]
    cgroups: Set[str]
    swaps: int


def make_attack_course(dst: Path, targets: dict, names: List[str]) -> Path:
    """The fixture course's ps1 at `dst` with a student per attack of `names` (alice's
    submission, her first solution cell replaced by the attack), the control student alice,
    and secrets planted in the course (added to `targets`)."""
    course = course_tools.prepare(dst)
    for d in list((course / "submitted").iterdir()):
        if d.name != "alice":
            shutil.rmtree(d)
    # secrets in the course: the solutions, the gradebook, another student's submission
    src = course / "source" / "ps1" / "problem1.ipynb"
    nb = nbformat.read(src, as_version=4)
    nb.cells.append(nbformat.v4.new_markdown_cell(f"instructor's note: {TOKEN}"))
    nbformat.write(nb, src)
    from nbgrader.api import Gradebook
    # nbgrader runs `alembic` from PATH when it opens a gradebook
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", course_tools.nbgrader_env()["PATH"])
        with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "fixture-course") as gb:
            gb.update_or_create_student("zz-secret-keeper", email=f"{TOKEN}@example.org")
            # the hidden tests of an exam not released yet, as nbgrader keeps them
            gb.update_or_create_assignment("zz-exam")
            gb.update_or_create_notebook("final", "zz-exam")
            gb.update_or_create_source_cell("hidden-tests", "final", "zz-exam", cell_type="code", locked=True,
                                            source=f"### BEGIN HIDDEN TESTS\nassert answer() == {TOKEN!r}\n"
                                                   "### END HIDDEN TESTS")
    other = course / "submitted" / "zed" / "ps2"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text(TOKEN)
    targets["files"] += [str(src), str(course / "gradebook.db"), str(other / "notes.txt"),
                         str(course / "source" / "ps1" / "problem2.ipynb")]
    targets["dirs"] += [str(course), str(course / "source"), str(course / "release"), str(course / "submitted")]
    for name in names:
        dst = course / "submitted" / f"attack-{name.replace('_', '-')}" / "ps1"
        shutil.copytree(course / "submitted" / "alice" / "ps1", dst)
        p = dst / "problem1.ipynb"
        nb = nbformat.read(p, as_version=4)
        cell = next(c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution"))
        cell.source = filled(name, targets)
        nbformat.write(nb, p)
    return course


def grade_attack_course(course: Path, grade) -> AttackBatch:
    """`grade(report)` (the batch on `course`, two workers) while the swap race runs."""
    race = SwapRace(course, course / "source" / "ps1" / "problem1.ipynb")
    before = mounts(), host_scratch(), set(our_cgroups())
    report = course / "report.json"
    try:
        r = grade(report)
    finally:
        race.stop()
    return AttackBatch(course, r, json.loads(report.read_text()), *before, race.swaps)


@pytest.fixture(scope="module")
def attack_course_privileged(tmp_path_factory, planted):
    """The attack course, graded once with `isolate-grade ps1` by root."""
    course = make_attack_course(tmp_path_factory.mktemp("attack-course") / "course", planted.targets(), NAMES)
    return grade_attack_course(course, lambda report: subprocess.run(
        [str(BIN), "ps1", "--course", str(course), "--jobs", "2", "--report", str(report)],
        env=env(), capture_output=True, text=True, timeout=3000))


@pytest.fixture(scope="module")
def attack_course_rootless(planted, rootless):
    """The attack course, the unprivileged instructor's (nobody's, with the caller's own
    secret and other process among the targets), graded once with `isolate-grade ps1` by
    them under the best-effort policy. The attacks whose containment needs a limit rootless
    mode does not enforce are left out, as through `run`."""
    instructor = rootless.instructor
    course = make_attack_course(instructor.home / "attack-course", rootless.targets(planted), ROOTLESS_NAMES)
    instructor.own(course)
    return grade_attack_course(course, lambda report: instructor.run(
        str(BIN), "ps1", "--course", str(course), "--jobs", "2", "--policy", str(instructor.policy), "--report",
        str(report), cwd=course, timeout=3000, JUPYTERHUB_API_TOKEN=TOKEN))


# The batch's tests run for both: root's batch (privileged sandboxes) and the unprivileged
# instructor's (rootless ones).
MODES = ["privileged", "rootless"]


def attack_batch(request, mode: str) -> AttackBatch:
    return request.getfixturevalue(f"attack_course_{mode}")


def in_mode(kind: str, mode: str) -> str:
    """The summary's name for a kind of run (`batch`, `run`, `kernel`) in `mode`."""
    return kind if mode == "privileged" else f"{kind}-rootless"


RACER = "race-symlink-swap"


class SwapRace:
    """A submission of 200 extra files, each swapped for a symlink to the solutions and back
    (atomically, by rename) in a loop for as long as the batch runs: every check of a file
    races with its swap, and so does every copy."""

    def __init__(self, course, secret):
        self.dir = course / "submitted" / RACER / "ps1"
        shutil.copytree(course / "submitted" / "alice" / "ps1", self.dir)
        self.files = [self.dir / f"notes-{i:03}.txt" for i in range(200)]
        for f in self.files:
            f.write_text("my notes\n")
        self.secret = os.path.relpath(secret, self.dir)
        self.swaps = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._swap, daemon=True)
        self.thread.start()

    def _swap(self):
        """Each file in turn becomes a symlink and at once a plain file again: a check mostly
        finds it plain, and the copy that follows may find the symlink."""
        while not self.done.is_set():
            for f in self.files:
                tmp = f.with_name(f.name + ".swap")
                os.symlink(self.secret, tmp)
                os.replace(tmp, f)
                tmp.write_text("my notes\n")
                os.replace(tmp, f)
                self.swaps += 1

    def stop(self):
        self.done.set()
        self.thread.join()


@pytest.mark.parametrize("mode", MODES)
def test_the_batch_finishes_and_the_control_student_keeps_full_marks(mode, request):
    batch = attack_batch(request, mode)
    r, report = batch.r, batch.report
    by = {s["student"]: s for s in report["students"]}
    assert by["alice"]["verdict"] == "graded" and by["alice"]["score"] == by["alice"]["max_score"] == 10, r.stdout
    assert len(by) == len(NAMES if mode == "privileged" else ROOTLESS_NAMES) + 2  # and the swap race
    assert report["sandbox"]["mode"] == mode, report["sandbox"]
    assert r.returncode in (0, 1), r.stdout + r.stderr  # no fault of ours


@pytest.mark.parametrize("mode,name", [("privileged", n) for n in NAMES] + [("rootless", n) for n in ROOTLESS_NAMES])
def test_attack_through_the_batch(mode, name, request, results):
    key = (in_mode("batch", mode), name)
    results[key] = False
    batch = attack_batch(request, mode)
    course, r, report = batch.course, batch.r, batch.report
    student = f"attack-{name.replace('_', '-')}"
    got = {s["student"]: s for s in report["students"]}[student]
    want = expected(name)["batch"].split("|")
    ended = [nb for nb in got["notebooks"] if nb.get("kernel_deaths")]
    if got["verdict"] == "graded" and "graded" not in want:
        # The batch's default, --on-kernel-death restart: the attack's end of its kernel costs
        # that cell, not the notebook; the notebook's verdict is still the ending kernel's, and
        # its kernel_deaths say where (README, "A cell that ends its kernel").
        assert ended and all(nb["verdict"] in want for nb in ended), got
        assert all(d["cause"] in ("limit", "program") for nb in ended for d in nb["kernel_deaths"]), got
    else:
        assert got["verdict"] in want, got
    texts = [r.stdout, r.stderr, json.dumps(got)]
    for d in [course / "autograded" / student, course / ".isolate-grade" / "ps1" / "kernels" / student]:
        for p in d.rglob("*"):
            if p.suffix == ".ipynb":
                texts.append(notebook_outputs(p))
                assert TOKEN not in p.read_text(errors="replace"), f"{name}: the secret is in {p}"
            elif p.is_file():
                texts.append(p.read_text(errors="replace"))
    log = course / ".isolate-grade" / "ps1" / "logs" / f"{student}.log"
    if log.exists():
        texts.append(log.read_text(errors="replace"))
    assert_contained(texts, name)
    results[key] = True


@pytest.mark.parametrize("mode", MODES)
def test_the_stdio_flood_never_reached_the_logs(mode, request):
    """stdio_fds.py writes 256 MiB to each of its fds 1 and 2: the kernel's stdout and stderr
    are the supervisor's pipes, capped by the output limit (16 MB), not the worker's log."""
    course = attack_batch(request, mode).course
    logs = course / ".isolate-grade" / "ps1" / "logs"
    sizes = {p.name: p.stat().st_size for p in logs.iterdir() if p.is_file()}
    assert sum(sizes.values()) < 48 << 20, sizes


TERMINAL_ATTACK = r"""
import os, select, stat, termios
ttys = [fd for fd in map(int, os.listdir("/proc/self/fd")) if os.isatty(fd)]
for fd in ttys:
    try:
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        print(f"ACHIEVED echo turned off on fd {fd}", flush=True)
    except termios.error:
        pass
# a window title, a cleared screen, a forged line over the last one
os.write(1, b"\x1b]0;PWNED-TITLE\x07\x1b[2J\r\x1b[2Kattack-x graded 100/100\n")
os.write(2, b"\x1b[8mHIDDEN-TEXT\x1b]0;PWNED-TITLE\x07\n")
# what the instructor types while grading runs
readable = sorted(set(ttys) | {0})
got = b""
end = __import__("time").time() + 6
while __import__("time").time() < end:
    r, _, _ = select.select(readable, [], [], 0.5)
    for fd in r:
        try:
            data = os.read(fd, 1000)
        except OSError:
            data = b""
        if not data:
            readable.remove(fd)
        got += data
    if b"TYPED" in got or not readable:
        break
if got:
    print(f"ACHIEVED read what was typed: {got!r}", flush=True)
print("terminal attack done", flush=True)
"""

KERNEL_CLIENT = r"""
import sys
from jupyter_client.manager import start_new_kernel
km, kc = start_new_kernel(kernel_name=sys.argv[1], startup_timeout=60)
out = []
def hook(msg):
    if msg["msg_type"] == "stream":
        out.append(msg["content"]["text"])
    elif msg["msg_type"] == "error":
        out.append("\n".join(msg["content"]["traceback"]))
kc.execute_interactive(open(sys.argv[2]).read(), timeout=60, output_hook=hook)
open(sys.argv[3], "w").write("".join(out))
kc.stop_channels()
km.shutdown_kernel(now=True)
"""


@pytest.fixture(scope="module")
def attack_twin():
    """A sandboxed twin of the venv's python3 kernel, as `install` makes them: (its name, the
    Jupyter path that has it)."""
    name = "isolate-grade-attack-python3"
    subprocess.run([str(BIN), "install", "--python", sys.executable, "--kernel", "python3", "--twin-prefix",
                    "isolate-grade-attack-"], env=env(), check=True, capture_output=True)
    return name, TWIN_HOME


@pytest.fixture(scope="module")
def attack_twin_rootless(rootless):
    """The same, installed by the unprivileged instructor for their venv under their best-effort
    policy."""
    i = rootless.instructor
    r = i.run(str(BIN), "install", "--python", str(i.python), "--kernel", "python3", "--twin-prefix",
              "isolate-grade-attack-", "--policy", str(i.policy), cwd=i.home)
    assert r.returncode == 0, r.stdout + r.stderr
    return "isolate-grade-attack-python3", i.venv / "share" / "isolate-grade" / "jupyter"


@pytest.mark.parametrize("how", ["run", "kernel"])
@pytest.mark.parametrize("mode", MODES)
def test_the_callers_terminal_is_out_of_reach(mode, how, tmp_path, request, results):
    """Started on a terminal (nbgrader autograde in a shell, `run` by hand), by root or by the
    unprivileged instructor: the sandboxed code finds no terminal among its fds, reads nothing
    the instructor types, can't turn echo off, and what it writes reaches the terminal escaped."""
    import pty
    import termios

    key = (in_mode(how, mode), "terminal")
    results[key] = False
    if mode == "rootless":
        rootless = request.getfixturevalue("rootless")
        work = rootless.home / f"terminal-{how}"
        work.mkdir()
        rootless.instructor.own(work)
        as_caller, python = AS_NOBODY, str(rootless.instructor.python)
        caller_env = rootless.instructor.env(JUPYTERHUB_API_TOKEN=TOKEN)
        policy = ["--policy", str(rootless.policy)]
    else:
        work = tmp_path
        os.chmod(work, 0o755)
        as_caller, python, caller_env, policy = [], sys.executable, env(), []
    attack = work / "attack.py"
    attack.write_text(TERMINAL_ATTACK)
    os.chmod(attack, 0o644)
    result = work / "kernel-output.txt"
    if how == "run":
        cmd = [str(BIN), "run", *policy, "--wall-time", "30s", "--bind", f"{attack}:/attack.py", "--", "python3",
               "/attack.py"]
    else:
        twin, twin_home = request.getfixturevalue(f"attack_twin{'_rootless' if mode == 'rootless' else ''}")
        client = work / "client.py"
        client.write_text(KERNEL_CLIENT)
        os.chmod(client, 0o644)
        # (the twin by name: install keeps it off the Jupyter path)
        caller_env = {**caller_env, "JUPYTER_PATH": str(twin_home)}
        cmd = [python, str(client), twin, str(attack), str(result)]
    master, slave = pty.openpty()
    p = subprocess.Popen([*as_caller, *cmd], env=caller_env, stdin=slave, stdout=slave, stderr=slave,
                         start_new_session=True, cwd=work)
    os.close(slave)
    seen = bytearray()

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            seen.extend(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    threading.Event().wait(4 if how == "kernel" else 1.5)
    os.write(master, b"hunter2-TYPED\n")  # the instructor types (a sudo password, say)
    p.wait(timeout=120)
    attrs = termios.tcgetattr(master)
    reader.join(timeout=5)
    os.close(master)
    output = seen.decode(errors="replace") + (result.read_text() if result.exists() else "")
    assert "terminal attack done" in output, output
    assert_contained([output], f"terminal ({how})")
    assert b"\\x1b]0;PWNED-TITLE" in seen, seen  # it came through, escaped
    assert b"\x1b]0;PWNED" not in seen and b"\x1b[8m" not in seen and b"\x1b[2J" not in seen, seen
    assert attrs[3] & termios.ECHO, "echo was turned off"
    results[key] = True


@pytest.mark.parametrize("mode", MODES)
def test_what_the_kernel_leaves_comes_out_safely(mode, request):
    """copy_out.py's plants: in autograded/ afterwards only regular files and directories, its
    marker file, no notebook or timestamp of the kernel's, at most 1000 of its files."""
    course = attack_batch(request, mode).course
    student = "attack-copy-out"
    out = course / "autograded" / student / "ps1"
    assert (out / "copied-out-marker.txt").read_text() == "from the kernel"
    for p in out.rglob("*"):
        assert p.is_dir() or (p.is_file() and not p.is_symlink()), f"{p} came out"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert "forged" not in (out / "problem2.ipynb").read_text()
    submitted = (course / "submitted" / student / "ps1" / "timestamp.txt").read_text()
    assert (out / "timestamp.txt").read_text() == submitted
    assert len(list((out / "many").iterdir())) <= 1000


@pytest.mark.parametrize("mode", MODES)
def test_files_swapped_for_symlinks_during_the_batch_are_never_followed(mode, request, results):
    """Whatever state each file was caught in, the solutions never reach the graded copy: the
    student is `graded` (every file caught plain, twice) or `rejected` (a symlink seen, or a
    file that became one between its check and its copy: refused as ELOOP)."""
    key = (in_mode("batch", mode), "swap_race")
    results[key] = False
    batch = attack_batch(request, mode)
    course, r, report = batch.course, batch.r, batch.report
    got = {s["student"]: s for s in report["students"]}[RACER]
    assert got["verdict"] in ("graded", "rejected"), got
    copies = [course / ".isolate-grade" / "ps1" / "submitted" / RACER, course / "autograded" / RACER]
    for d in copies:
        for p in d.rglob("*"):
            assert not p.is_symlink(), p
            if p.is_file():
                assert TOKEN not in p.read_text(errors="replace"), f"the solutions were copied into {p}"
    assert TOKEN not in json.dumps(got) + r.stdout + r.stderr
    caught = "ELOOP" in (got.get("message") or "")  # plain when checked, a symlink when opened
    print(f"swap race: {batch.swaps} swaps, {got['verdict']}, {'caught' if caught else 'not caught'} "
          f"between check and copy; {(got.get('message') or '')[:300]}")
    results[key] = True


@pytest.mark.parametrize("mode", MODES)
def test_the_other_sandbox_survived_untouched(mode, request, victim, rootless):
    attack_batch(request, mode)
    assert victim_state(rootless.other.pid) == ("S", 0), "the caller's other process was stopped or traced"
    for pid in victim.pids:
        assert victim_state(pid) == ("S", 0), f"the victim {pid} was stopped or traced"


@pytest.mark.parametrize("mode", MODES)
def test_nothing_of_the_batch_is_left_on_the_host(mode, request, victim, rootless):
    batch = attack_batch(request, mode)
    course = batch.course
    assert mounts() == batch.mounts
    assert not host_scratch() - batch.scratch
    assert not sandbox_processes(victim)
    assert not cgroup_leftovers(victim)
    # rootless, its processes were nobody's on the host: none is left but the caller's other one
    assert set(nobodys_processes()) <= {rootless.other.pid}
    if mode == "rootless":
        assert set(our_cgroups()) == batch.cgroups  # none made (root's batch keeps its v1 slots)
    assert not Path("/tmp/pwned-by-attack").exists()
    for p in course.rglob("*"):
        assert not (p.name in ("sitecustomize.py", "zz-pwn.pth", "00-pwn.py") or
                    (p.name == "nbgrader_config.py" and p.parent != course)), p
    assert "pwn" not in (course / "nbgrader_config.py").read_text()


@pytest.mark.parametrize("mode", MODES)
def test_no_listener_on_the_host_was_reached(mode, request, planted):
    """The harness's loopback port, abstract socket and root-only path socket: network.py
    reaches for them directly, relay_deputy.py through the relay (symlinks in the runtime dir
    where the relay once resolved the kernel's sockets)."""
    attack_batch(request, mode)
    assert planted.connections == 0, "a listener on the host was reached"


"""Every kernel language, sandboxed, graded as bare nbgrader grades it.

- R with IRkernel (Debian's r-base-core and r-cran-irkernel), and xeus-python (PyPI: the
  Jupyter protocol in C++, not ipykernel), each alone, and R mixed with Python in one
  assignment: the batch and plain `nbgrader autograde` after `isolate-grade install` give
  bare nbgrader's scores; a probe in each language sees the sandbox's uid, `lo` only and no
  course files; an R infinite loop is interrupted at the cell timeout (the kernel's own
  interrupt mode, SIGINT) and grading goes on; an R memory bomb gets `memory-limit`.
- A notebook whose kernel has no sandboxed twin, or whose language is not its kernel's, is
  never run: the batch refuses before grading (exit 3), plain nbgrader fails it with a message,
  and no kernel starts.

The kernels are installed by scripts/kernels.sh (scripts/test.sh runs it before this suite).
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import (BIN, NEEDS_ROOT, TWIN_HOME, Course, Notebook, copy_course, make_assignment, nb_cell,
                      py_notebook, r_notebook)

pytestmark = NEEDS_ROOT

# nbgrader's own cell timeout, short: the R infinite loop is interrupted after it (long
# enough for a busy CI machine to reach the memory and output limits first)
CONFIG = "c.Execute.timeout = 10\nc.Execute.iopub_timeout = 60\n"


@pytest.fixture(scope="module", autouse=True)
def kernels_installed():
    have = subprocess.run([sys.executable, "-m", "jupyter", "kernelspec", "list", "--json"], capture_output=True,
                          text=True, check=True)
    specs = json.loads(have.stdout)["kernelspecs"]
    missing = [k for k in ("ir", "xpython", "octave") if k not in specs]
    assert not missing, f"kernelspecs {missing} missing: run `bash scripts/kernels.sh` (scripts/test.sh does)"


R_ANSWERS = {
    "alice": "square <- function(x) x^2",
    "bob": "square <- function(x) x * 3",  # 9 for 3, wrong for 1:3
    "carol": 'square <- function(x) stop("no")',
    # defined, then a loop nothing but the cell timeout (SIGINT) ends: full marks if interrupted
    "erin": "square <- function(x) x^2\nrepeat {}",
}
PY_ANSWERS = {"alice": "def square(x):\n    return x * x", "bob": "def square(x):\n    return x * 3",
              "carol": "def square(x):\n    raise ValueError('no')"}


def r_probe(course: Path) -> str:
    """Defines the answer, and writes what the kernel sees to probe.txt (copied out)."""
    return f"""square <- function(x) x^2
ifaces <- trimws(sub(":.*", "", readLines("/proc/net/dev")[-(1:2)]))
writeLines(c(paste0("uid=", system("id -u", intern = TRUE)),
             paste0("ifaces=", paste(sort(ifaces), collapse = ",")),
             paste0("gradebook=", file.exists("{course}/gradebook.db")),
             paste0("source=", file.exists("{course}/source")),
             paste0("language=R ", R.version$major)), "probe.txt")"""


def py_probe(course: Path) -> str:
    return f"""def square(x):
    return x * x
import os, sys
ifaces = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:])
with open("probe.txt", "w") as f:
    f.write(f"uid={{os.getuid()}}\\nifaces={{','.join(ifaces)}}\\n")
    f.write(f"gradebook={{os.path.exists('{course}/gradebook.db')}}\\nsource={{os.path.exists('{course}/source')}}\\n")
    f.write(f"ipykernel={{'ipykernel' in sys.modules}}\\n")"""


def probe_seen(c: Course, student: str) -> Dict[str, str]:
    text = (c.root / "autograded" / student / c.assignment / "probe.txt").read_text()
    return dict(line.split("=", 1) for line in text.splitlines())


def assert_sandboxed_probe(c: Course, student: str):
    seen = probe_seen(c, student)
    assert 60000 <= int(seen["uid"]) < 70000, seen
    assert seen["ifaces"] == "lo", seen
    no = ("false", "0")  # Python, R / Octave
    assert seen["gradebook"].lower() in no and seen["source"].lower() in no, seen


def install(c: Course, prefix: str, *kernels: str) -> subprocess.CompletedProcess:
    args = [str(BIN), "install", "--python", sys.executable, "--course", str(c.root), "--twin-prefix", prefix]
    for k in kernels:
        args += ["--kernel", k]
    return subprocess.run(args, env=c.python.run_env(), capture_output=True, text=True, timeout=600)


def uninstall(prefix: str):
    for d in (TWIN_HOME / "kernels").glob(prefix + "*"):
        shutil.rmtree(d, ignore_errors=True)


def plain_autograde(c: Course, tmp: Path, prefix: str, *kernels: str):
    """`install` (the block into the course's config), then plain `nbgrader autograde`: the
    kernels' reports (every one must be sandboxed), and nbgrader's output."""
    r = install(c, prefix, *kernels)
    assert r.returncode == 0, r.stdout + r.stderr
    reports = tmp / f"reports-{c.root.name}"
    reports.mkdir()
    try:
        out = c.nbgrader("autograde", c.assignment, check=False, ISOLATE_GRADE_REPORT_DIR=str(reports))
    finally:
        uninstall(prefix)
    verdicts = [json.loads(p.read_text()) for p in reports.glob("*.json")]
    assert verdicts, out.stdout + out.stderr
    for v in verdicts:
        assert v["sandbox_error"] is None, v
        assert 60000 <= v["sandbox"]["uid"] < 70000, v
    return verdicts, out


def outcome(v: dict) -> str:
    """A kernel report's status as the batch counts it (src/grade/report.rs): ended by its
    client's signal (jupyter_client's SIGINT before every shutdown, its SIGTERM after a slow
    one), or by a signal once its client had asked it to shut down (ipykernel 7.4 aborting in
    its own shutdown), is no verdict on the submission."""
    relayed = v.get("relayed_signals") or []
    if (v["status"] == "signaled" and (v.get("signal") in relayed or v.get("shutdown_requested"))) or (
            v["status"] == "exit-nonzero" and "SIGINT" in relayed):
        return "ok"
    return v["status"]


def batch(c: Course, tmp: Path, *args: str):
    report = tmp / f"batch-{c.root.name}.json"
    r = subprocess.run([str(BIN), c.assignment, "--course", str(c.root), "--python", sys.executable, "--report",
                        str(report), *args], env=c.python.run_env(), capture_output=True, text=True, timeout=900)
    rep = json.loads(report.read_text()) if report.exists() else None
    return r, rep


def points(c: Course) -> Dict[str, float]:
    return {s: sum(nbs.values()) for s, nbs in c.scores().items()}


def add_student(c: Course, student: str, notebook: str, answer: str):
    """A submission made from alice's, with `notebook`'s answer cell replaced."""
    import nbformat

    dst = c.root / "submitted" / student / c.assignment
    shutil.copytree(c.root / "submitted" / "alice" / c.assignment, dst)
    nb = nbformat.read(dst / f"{notebook}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "answer":
            cell.source = answer
    nbformat.write(nb, dst / f"{notebook}.ipynb")


def graded_bare(tmp: Path, python, notebooks: List[Notebook], answers: Dict[str, Dict[str, str]], assignment: str,
                config: str = CONFIG):
    """The course three times: graded by bare nbgrader, and two ungraded copies (plain, batch)."""
    bare = make_assignment(tmp / "bare", python, notebooks, answers, assignment=assignment, config=config)
    plain = copy_course(bare, tmp / "plain")
    batched = copy_course(bare, tmp / "batch")
    bare.nbgrader("autograde", assignment)
    return bare, plain, batched


def test_an_r_assignment_is_graded_in_the_sandboxed_irkernel_as_bare(project_python, tmp_path):
    bare, plain, batched = graded_bare(tmp_path, project_python, [r_notebook()],
                                       {s: {"r": a} for s, a in R_ANSWERS.items()}, "r1")
    want = points(bare)
    assert want == {"alice": 5.0, "bob": 2.0, "carol": 0.0, "erin": 5.0}, "bare nbgrader grades R as expected"
    for c in (plain, batched):
        add_student(c, "dave", "r", r_probe(c.root))
        # 400 MB a step (zero-filled, so touched) into the 1 GiB memory limit, well within the
        # cell timeout even on a busy machine (never run bare)
        add_student(c, "frank", "r", "hog <- list()\nrepeat hog[[length(hog) + 1]] <- numeric(5e7)")
        # 40 MB of output: cut at the 16 MB output limit and the cell interrupted, graded on.
        # The cell is still busy (sleeping) when the interrupt lands: IRkernel 1.3 exits when
        # a SIGINT finds it idle between requests (an interrupt escapes IRkernel::main()).
        add_student(c, "heidi", "r",
                    'square <- function(x) x^2\nfor (i in 1:40) cat(strrep("x", 1e6), "\\n")\nSys.sleep(8)')

    verdicts, out = plain_autograde(plain, tmp_path, "isolate-grade-test-r-", "ir")
    assert sorted(outcome(v) for v in verdicts if outcome(v) != "ok") == ["memory-limit", "output-limit"], verdicts
    got = points(plain)
    assert {s: got[s] for s in want} == want, out.stdout + out.stderr
    assert got["dave"] == 5.0 and got["heidi"] == 5.0
    assert_sandboxed_probe(plain, "dave")

    # nbgrader's own way with a kernel that dies (tests/e2e/test_kernel_death.py: the default's)
    r, rep = batch(batched, tmp_path, "--on-kernel-death", "fail")
    assert r.returncode == 1, r.stdout + r.stderr  # frank's memory bomb: not graded, no fault of ours
    by = {s["student"]: s for s in rep["students"]}
    assert by["frank"]["verdict"] == "memory-limit", by["frank"]
    assert [nb["verdict"] for nb in by["frank"]["notebooks"]] == ["memory-limit"]
    for s in [*want, "dave", "heidi"]:
        assert by[s]["verdict"] == "graded", by[s]
    assert [nb["verdict"] for nb in by["heidi"]["notebooks"]] == ["output-limit"]
    got = points(batched)
    assert {s: got[s] for s in want} == want and got["heidi"] == 5.0
    assert_sandboxed_probe(batched, "dave")
    assert "language=R" in (batched.root / "autograded/dave/r1/probe.txt").read_text()


def test_xeus_python_a_kernel_not_built_on_ipykernel_is_graded_as_bare(project_python, tmp_path):
    bare, plain, batched = graded_bare(tmp_path, project_python, [py_notebook("x", kernel="xpython")],
                                       {s: {"x": a} for s, a in PY_ANSWERS.items()}, "x1")
    want = points(bare)
    assert want == {"alice": 5.0, "bob": 2.0, "carol": 0.0}
    for c in (plain, batched):
        add_student(c, "dave", "x", py_probe(c.root))

    plain_autograde(plain, tmp_path, "isolate-grade-test-x-", "xpython")
    got = points(plain)
    assert {s: got[s] for s in want} == want and got["dave"] == 5.0
    assert_sandboxed_probe(plain, "dave")

    r, rep = batch(batched, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    got = points(batched)
    assert {s: got[s] for s in want} == want and got["dave"] == 5.0
    for c in (plain, batched):
        assert_sandboxed_probe(c, "dave")
        assert probe_seen(c, "dave")["ipykernel"] == "False", "the notebook ran in xpython, not ipykernel"
    spec = json.loads((batched.root / ".isolate-grade/x1/jupyter/kernels/isolate-grade-batch-xpython/kernel.json")
                      .read_text())
    assert spec["argv"][-4:] == ["-m", "xpython_launcher", "-f", "{connection_file}"], spec


def octave_notebook() -> Notebook:
    return Notebook("m", [
        nb_cell("code", "function y = square(x)\n  ### BEGIN SOLUTION\n  y = x .^ 2;\n  ### END SOLUTION\nend",
                grade_id="answer", solution=True),
        nb_cell("code", "assert(square(3) == 9)", grade_id="test_three", points=2),
        nb_cell("code", "assert(isequal(square([1 2 3]), [1 4 9]))", grade_id="test_vector", points=3),
    ], kernel="octave", language="octave")


OCTAVE_ANSWERS = {"alice": "function y = square(x)\n  y = x .^ 2;\nend",
                  "bob": "function y = square(x)\n  y = x * 3;\nend",
                  "carol": "function y = square(x)\n  error('no');\nend"}


def octave_probe(course: Path) -> str:
    return f"""function y = square(x)
  y = x .^ 2;
end
[~, uid] = system('id -u');
[~, ifaces] = system('tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d " " | sort | paste -sd,');
f = fopen('probe.txt', 'w');
fprintf(f, 'uid=%s\\nifaces=%s\\n', strtrim(uid), strtrim(ifaces));
fprintf(f, 'gradebook=%d\\nsource=%d\\n', exist('{course}/gradebook.db', 'file') > 0, exist('{course}/source', 'dir') > 0);
fclose(f);"""


def test_octave_a_kernel_that_drives_its_repl_through_a_pty_is_graded_as_bare(project_python, tmp_path):
    """octave_kernel (metakernel) runs octave-cli through pexpect, on a pty: the default
    policy's private devpts gives it one (none of the host's terminals). octave_kernel 1.1.1
    prints Octave's errors as stdout, not as an error output, so nbgrader gives the points of
    a failed `assert` (bob's, carol's), bare as well: the sandbox must give the same."""
    config = 'c.ClearSolutions.code_stub = {"octave": "% YOUR CODE HERE"}\n' + CONFIG
    bare, plain, batched = graded_bare(tmp_path, project_python, [octave_notebook()],
                                       {s: {"m": a} for s, a in OCTAVE_ANSWERS.items()}, "m1", config)
    want = points(bare)
    assert want == {"alice": 5.0, "bob": 5.0, "carol": 5.0}, "bare nbgrader grades Octave as octave_kernel lets it"
    for c in (plain, batched):
        add_student(c, "dave", "m", octave_probe(c.root))

    plain_autograde(plain, tmp_path, "isolate-grade-test-m-", "octave")
    r, rep = batch(batched, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    for c in (plain, batched):
        got = points(c)
        assert {s: got[s] for s in want} == want and got["dave"] == 5.0, (c.root, got)
        assert_sandboxed_probe(c, "dave")  # ran, in the sandbox, and saw no course files
        failed = (c.root / "autograded/carol/m1/m.ipynb").read_text()
        assert "error: no" in failed, "carol's cells ran and failed, as bare"


def test_one_assignment_mixing_python_and_r(project_python, tmp_path):
    answers = {"alice": {"py": PY_ANSWERS["alice"], "r": R_ANSWERS["alice"]},
               "bob": {"py": PY_ANSWERS["bob"], "r": R_ANSWERS["alice"]},
               "carol": {"py": PY_ANSWERS["alice"], "r": R_ANSWERS["carol"]}}
    bare, plain, batched = graded_bare(tmp_path, project_python, [py_notebook("py"), r_notebook("r")], answers,
                                       "mix1")
    want = bare.scores()
    assert want == {"alice": {"py": 5.0, "r": 5.0}, "bob": {"py": 2.0, "r": 5.0}, "carol": {"py": 5.0, "r": 0.0}}

    verdicts, _ = plain_autograde(plain, tmp_path, "isolate-grade-test-mix-", "python3", "ir")
    assert len(verdicts) == 6  # a sandboxed kernel per student and notebook
    assert plain.scores() == want

    r, rep = batch(batched, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert batched.scores() == want
    for s in rep["students"]:
        assert [nb["verdict"] for nb in s["notebooks"]] == ["ok", "ok"], s


def test_a_notebook_without_a_sandboxed_kernel_is_never_run(project_python, tmp_path):
    """No twin (a kernel this machine doesn't have), or a language that isn't its kernel's (an R
    notebook naming python3): the batch refuses before grading anyone; plain nbgrader after
    install fails the notebook saying why. No kernel starts, sandboxed or not."""
    julia = Notebook("jl", [nb_cell("code", "x = 1", grade_id="answer", solution=True),
                            nb_cell("code", "@assert x == 1", grade_id="t", points=1)],
                     kernel="julia-1.10", language="julia")
    mislabelled = r_notebook("mis")
    mislabelled.kernel = "python3"  # but language R
    for name, nb, why in [
        ("nojulia", julia, 'its kernel "julia-1.10" is not a kernelspec here'),
        ("mislabelled", mislabelled, 'it is in "r", but its kernel "python3" runs "python"'),
    ]:
        c = make_assignment(tmp_path / name, project_python, [nb], {"alice": {}}, assignment="a1",
                            config='c.ClearSolutions.code_stub = {"julia": "# YOUR CODE HERE", "R": "# YOUR CODE HERE"}\n')
        r, rep = batch(c, tmp_path)
        assert r.returncode == 3, r.stdout + r.stderr
        assert why in r.stderr and "nothing was graded" in r.stderr, r.stderr
        assert not (c.root / "autograded").exists() and c.scores() == {}
        assert not list((c.root / ".isolate-grade").glob("*/kernels/*/*/*.json")), "no kernel was started"

        plain = copy_course(c, tmp_path / f"{name}-plain")
        verdicts_dir = tmp_path / f"{name}-reports"
        verdicts_dir.mkdir()
        r = install(plain, "isolate-grade-test-none-", "python3")
        try:
            assert r.returncode == 0, r.stdout + r.stderr
            assert "will not be run" in r.stdout, r.stdout  # install says so too
            out = plain.nbgrader("autograde", "a1", check=False, ISOLATE_GRADE_REPORT_DIR=str(verdicts_dir))
        finally:
            uninstall("isolate-grade-test-none-")
        text = out.stdout + out.stderr
        assert "KernelNotSandboxed" in text and "so it is not run" in text, text
        assert not list(verdicts_dir.iterdir()), "no kernel was started"
        assert plain.scores().get("alice", {}).get(nb.name, 0.0) == 0.0


def test_a_notebook_written_with_a_sandboxed_twin_selected_is_graded_by_it(project_python, tmp_path):
    """An instructor who wrote the assignment with install's twin selected in JupyterLab: the
    notebook names the twin. Plain nbgrader runs that twin; the batch, its own twin of the
    same kernel."""
    prefix = "isolate-grade-test-alias-"
    c = make_assignment(tmp_path / "c", project_python, [py_notebook("p", kernel=prefix + "python3")],
                        {s: {"p": a} for s, a in PY_ANSWERS.items()}, assignment="p1")
    plain = copy_course(c, tmp_path / "plain")
    r = install(c, prefix, "python3")  # into c's config too; the batch replaces the routing
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        r, rep = batch(c, tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert points(c) == {"alice": 5.0, "bob": 2.0, "carol": 0.0}
        spec = c.root / ".isolate-grade/p1/jupyter/kernels/isolate-grade-batch-python3/kernel.json"
        assert spec.exists(), "graded by the batch's own twin of python3"
    finally:
        uninstall(prefix)
    plain_autograde(plain, tmp_path, prefix, "python3")
    assert points(plain) == {"alice": 5.0, "bob": 2.0, "carol": 0.0}

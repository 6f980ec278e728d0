"""Every Python an instructor has: grades with the sandboxed kernel equal bare nbgrader's, for
the batch and for plain `nbgrader autograde` after `isolate-grade install`, with interpreters
made the ways instructors make them (each built here, by these tests, from Debian's Python and
the machine's default `python3`, pyenv's on this image):

- debian       a venv from /usr/bin/python3.11 (the project venv)
- pyenv        a venv from the default python3 (its base under ~/.pyenv, not /usr)
- conda-like   `python3 -m venv --copies` into /opt: the interpreter is a file of its own
               under /opt, its base elsewhere
- system-site  a venv with --system-site-packages and no pip of its own: `import pip` comes
               from the base installation's site-packages
- user-site    the same venv for a caller whose package was installed with `pip install --user`
- chain        a venv made through a chain of symlinks to the base interpreter

And the preflight: an interpreter without ipykernel, a module that imports outside the sandbox
but not inside, a module that imports nowhere, and the course on PYTHONPATH, each refused before
any student is graded, with the message asserted.

Each environment's notebook earns its points only if the kernel imports the environment's
marker module, sees NBGRADER_EXECUTION=autograde, and can read back a file it wrote in its
working directory; that file must then be in `autograded/` as bare nbgrader leaves it.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import BIN, NEEDS_ROOT, PYTHONS, Python, built_venv, copy_course, default_python3, make_course, nb_cell

pytestmark = NEEDS_ROOT

WORK = PYTHONS
OPT = Path("/opt/isolate-grade-test")  # the conda-like environment lives under /opt, as conda's does


def wheel(dst: Path, name: str, source: str) -> Path:
    """A minimal pure-Python wheel with one module, made by hand (no build tools needed)."""
    dist = f"{name}-1.0"
    path = dst / f"{name}-1.0-py3-none-any.whl"
    files = {f"{name}.py": source,
             f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: isolate-grade-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{f},,\n" for f in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for f, text in files.items():
            z.writestr(f, text)
        z.writestr(f"{dist}.dist-info/RECORD", record)
    return path


@pytest.fixture(scope="session")
def pythons(project_python, pyenv_python, tmp_path_factory) -> dict:
    """Every environment, built once (kept in target/pythons and /opt/isolate-grade-test,
    rebuilt when the pins change)."""
    base = default_python3()
    envs = {"debian": project_python}
    envs["pyenv"] = pyenv_python
    envs["conda-like"] = Python("conda-like", built_venv(OPT / "conda-like", "--copies"))
    sysvenv = built_venv(WORK / "system-site", "--system-site-packages", "--without-pip")
    envs["system-site"] = Python("system-site", sysvenv)
    # pip install --user, for a caller whose home is made here
    home = tmp_path_factory.mktemp("home") / "instructor"
    home.mkdir()
    whl = wheel(tmp_path_factory.mktemp("wheels"), "igmarker_user", "WHERE = 'user site'\n")
    subprocess.run([str(base), "-m", "pip", "--python", str(sysvenv), "install", "--user", "--no-index", "-q",
                    "--disable-pip-version-check", str(whl)], check=True, env={**os.environ, "HOME": str(home)})
    envs["user-site"] = Python("user-site", sysvenv, env={"HOME": str(home)})
    # a chain of symlinks to the base interpreter, and a venv made through it
    links = WORK / "links"
    shutil.rmtree(links, ignore_errors=True)
    (links / "b").mkdir(parents=True)
    real_base = Path(os.path.realpath(base))
    (links / "b" / "python3").symlink_to(real_base)
    (links / "a").symlink_to(links / "b" / "python3")
    envs["chain"] = Python("chain", built_venv(WORK / "chain", maker=links / "a"))
    return envs


MARKERS = {
    "debian": "numpy", "pyenv": "numpy", "conda-like": "numpy", "chain": "numpy",
    "system-site": "pip",  # from the base installation only: the venv has no pip of its own
    "user-site": "igmarker_user",  # from the caller's user site only
}


def env_course(root: Path, python: Python, marker: str):
    cells = [
        nb_cell("code", f"import os\nimport {marker}"),
        nb_cell("code", "def answer():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION",
                grade_id="answer", solution=True),
        nb_cell("code", "open('side.txt', 'w').write('x')"),
        nb_cell("code", "assert answer() == 42", grade_id="test_answer", points=1),
        nb_cell("code", "assert os.environ.get('NBGRADER_EXECUTION') == 'autograde'", grade_id="test_env", points=1),
        nb_cell("code", "assert open('side.txt').read() == 'x'", grade_id="test_file", points=1),
        nb_cell("code", f"assert {marker}.__name__ == {marker!r}", grade_id="test_marker", points=1),
    ]
    return make_course(root, python, cells, {"alice": "def answer():\n    return 42",
                                            "bob": "def answer():\n    return 41"})


EXPECTED = {"alice": {"env": 4.0}, "bob": {"env": 3.0}}


@pytest.mark.parametrize("name", ["debian", "pyenv", "conda-like", "system-site", "user-site", "chain"])
def test_sandboxed_grades_equal_bare_in_every_environment(name, pythons, tmp_path):
    py = pythons[name]
    bare = env_course(tmp_path / "bare", py, MARKERS[name])
    plain = copy_course(bare, tmp_path / "plain")

    bare.nbgrader("autograde", "env1")
    assert bare.scores() == EXPECTED, "bare nbgrader itself grades as expected"

    prefix = f"isolate-grade-test-{name}-"
    kernel = prefix + "python3"
    r = subprocess.run([str(BIN), "install", "--python", str(py.python), "--course", str(plain.root), "--kernel", "python3",
                        "--twin-prefix", prefix],
                       env=py.run_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # the batch grades a course whose nbgrader_config.py has install's block too
    batch = copy_course(plain, tmp_path / "batch")
    assert "_isolate_grade(c, " in (batch.root / "nbgrader_config.py").read_text()
    try:
        reports = tmp_path / "kernel-reports"
        reports.mkdir()
        plain.nbgrader("autograde", "env1", ISOLATE_GRADE_REPORT_DIR=str(reports))
    finally:
        prefix = subprocess.run([str(py.python), "-c", "import sys; print(sys.prefix)"], capture_output=True,
                                text=True, env=py.run_env()).stdout.strip()
        shutil.rmtree(Path(prefix) / "share" / "isolate-grade" / "jupyter" / "kernels" / kernel, ignore_errors=True)
    verdicts = [p.read_text() for p in reports.glob("*.json")]
    assert len(verdicts) == 2 and all('"uid": 6' in v for v in verdicts), "both kernels ran sandboxed"
    assert plain.scores() == bare.scores()

    r = subprocess.run([str(BIN), "env1", "--course", str(batch.root), "--python", str(py.python)],
                       env=py.run_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert batch.scores() == bare.scores()

    # the file each kernel wrote in its working directory is where bare nbgrader leaves it
    for c in (bare, plain, batch):
        for s in EXPECTED:
            assert (c.root / "autograded" / s / "env1" / "side.txt").read_text() == "x", (c.root, s)


def test_the_runtime_is_what_the_interpreter_says(pythons):
    """check --python: the chain's links are recreated, the user site bound alone."""
    out = {}
    for name in ("chain", "user-site"):
        py = pythons[name]
        r = subprocess.run([str(BIN), "check", "--python", str(py.python)], env=py.run_env(), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        out[name] = next(l for l in r.stdout.splitlines() if l.split()[1:2] == ["python"])
    assert str(WORK / "links" / "a") in out["chain"], out["chain"]
    home = pythons["user-site"].env["HOME"]
    assert f"{home}/.local/lib/python" in out["user-site"] and "site-packages" in out["user-site"]
    assert f"binds {home}," not in out["user-site"] and f", {home}," not in out["user-site"]
    assert f"PYTHONUSERBASE={home}/.local" in out["user-site"]


# --- the preflight -----------------------------------------------------------------------

def simple_course(root: Path, python: Python, imports: str = ""):
    cells = [
        nb_cell("code", f"import os\n{imports}"),
        nb_cell("code", "def answer():\n    ### BEGIN SOLUTION\n    return 42\n    ### END SOLUTION",
                grade_id="answer", solution=True),
        nb_cell("code", "assert answer() == 42", grade_id="test_answer", points=1),
    ]
    # the source may import what the instructor's machine has; submissions are made from it
    return make_course(root, python, cells, {"alice": "def answer():\n    return 42"})


def nothing_graded(c):
    graded = c.root / "autograded"
    assert not graded.exists() or not any(graded.iterdir()), "a student was graded"
    assert c.scores() == {}


def test_an_interpreter_without_ipykernel_is_refused_before_grading(project_python, tmp_path):
    c = simple_course(tmp_path / "c", project_python)
    no_ipykernel = tmp_path / "bare-venv"
    subprocess.run(["/usr/bin/python3.11", "-m", "venv", "--without-pip", str(no_ipykernel)], check=True)
    py = no_ipykernel / "bin" / "python"
    env = project_python.run_env()
    r = subprocess.run([str(BIN), "env1", "--course", str(c.root), "--python", str(py)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"{py} has no module jupyter_client" in r.stderr and "pip install jupyter-client" in r.stderr, r.stderr
    nothing_graded(c)
    r = subprocess.run([str(BIN), "install", "--python", str(py)], env=env, capture_output=True, text=True)
    assert r.returncode == 3 and "has no module jupyter_client" in r.stderr, r.stdout + r.stderr
    assert not (no_ipykernel / "share" / "jupyter" / "kernels").exists()
    assert not (no_ipykernel / "share" / "isolate-grade").exists()
    r = subprocess.run([str(BIN), "check", "--python", str(py)], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "FAIL python" in r.stdout and "has no module jupyter_client" in r.stdout, r.stdout
    # nbgrader's Python has jupyter_client but the kernel's has no ipykernel: a python3
    # kernelspec naming an interpreter without it
    with_client = tmp_path / "client-venv"
    subprocess.run(["/usr/bin/python3.11", "-m", "venv", "--system-site-packages", str(with_client)], check=True)
    (with_client / "lib/python3.11/site-packages/project.pth").write_text(
        subprocess.run([sys.executable, "-c", "import jupyter_client, os; print(os.path.dirname(os.path.dirname(jupyter_client.__file__)))"],
                       capture_output=True, text=True).stdout)
    spec = with_client / "share/jupyter/kernels/python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                  "display_name": "no ipykernel", "language": "python"}))
    r = subprocess.run([str(BIN), "install", "--python", str(with_client / "bin/python"), "--kernel", "python3"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 3 and f"{py} has no module ipykernel_launcher" in r.stderr, r.stdout + r.stderr
    assert "pip install ipykernel" in r.stderr, r.stderr


def test_modules_the_sandboxed_kernel_cannot_import_are_refused_before_grading(project_python, tmp_path):
    # a package on PYTHONPATH (bound: it is a sys.path entry) that reads a host file when
    # imported (as packages read their configuration), which the sandbox does not show
    pp = tmp_path / "pythonpath"
    pp.mkdir()
    host_file = tmp_path / "host-only.conf"
    host_file.write_text("x")
    (pp / "reads_host_config.py").write_text(f"CONF = open({str(host_file)!r}).read()\n")
    c = simple_course(tmp_path / "c", project_python, "import reads_host_config\nimport not_installed_anywhere_q7")
    env = project_python.run_env(PYTHONPATH=str(pp))
    r = subprocess.run([str(BIN), "env1", "--course", str(c.root)], env={**env, "ISOLATE_GRADE_PYTHON": str(project_python.python)},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    err = r.stderr
    assert "the notebooks import modules that the sandboxed kernel" in err, err
    assert "reads_host_config: loads outside the sandbox" in err and "but not inside: FileNotFoundError" in err, err
    assert "cannot grade env1, so nothing was graded" in err, err
    assert "not_installed_anywhere_q7: cannot be loaded outside the sandbox either: ModuleNotFoundError" in err, err
    nothing_graded(c)


def test_the_course_on_pythonpath_is_never_bound(project_python, tmp_path):
    c = simple_course(tmp_path / "c", project_python)
    env = project_python.run_env(PYTHONPATH=str(c.root / "source"))
    r = subprocess.run([str(BIN), "env1", "--course", str(c.root), "--python", str(project_python.python)], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "is or is inside the course directory" in r.stderr and "PYTHONPATH" in r.stderr, r.stderr
    nothing_graded(c)


def test_a_notebook_whose_kernel_has_no_twin_is_never_run(project_python, tmp_path):
    """After `install`, plain nbgrader routes each notebook by its own kernel: an R notebook
    is not run in the sandboxed Python kernel (all zeros, silently), nor unsandboxed."""
    cells = [
        nb_cell("code", "answer <- function() {\n  ### BEGIN SOLUTION\n  42\n  ### END SOLUTION\n}",
                grade_id="answer", solution=True),
        nb_cell("code", "stopifnot(answer() == 42)", grade_id="test_answer", points=1),
    ]
    c = make_course(tmp_path / "c", project_python, cells, {"alice": "answer <- function() 42"}, kernel="ir",
                    language="R")
    # only Python is sandboxed here (IRkernel may well be installed: the twin is not asked for)
    kernel = "isolate-grade-test-twin-python3"
    r = subprocess.run([str(BIN), "install", "--python", str(project_python.python), "--course", str(c.root),
                        "--kernel", "python3", "--twin-prefix", "isolate-grade-test-twin-"], env=project_python.run_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        reports = tmp_path / "reports"
        reports.mkdir()
        r = c.nbgrader("autograde", "env1", check=False, ISOLATE_GRADE_REPORT_DIR=str(reports))
    finally:
        shutil.rmtree(Path(sys.prefix) / "share" / "isolate-grade" / "jupyter" / "kernels" / kernel, ignore_errors=True)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "the notebook's kernel 'ir' has no sandboxed twin" in out, out
    assert not list(reports.iterdir()), "a kernel was started"

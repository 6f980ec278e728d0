"""The seccomp allow list against real notebook workloads (issue #11).

A notebook that uses what students' notebooks use, numpy with its BLAS threads, pandas (csv
round trip), matplotlib (Agg: png, svg and pdf), scipy (optimize, linalg, integrate, stats,
sparse, fft), threads, a subprocess and multiprocessing pools (fork and spawn), is graded by
bare nbgrader and by the batch (an ipykernel in the sandbox, default policy: seccomp `kill`,
so any syscall outside policies/seccomp.toml's allow list fails with ENOSYS). Every test cell
must pass in both: a library that needed an unlisted call would fail its cell, or kill the
kernel. The libraries are pinned in scripts/requirements-kernels.txt (scripts/kernels.sh,
which scripts/test.sh runs, installs them); without them the test fails under CI=true.
"""

import os
import subprocess

import nbformat
import pytest

from conftest import BIN, NEEDS_ROOT, make_course, nb_cell

pytestmark = NEEDS_ROOT

LIBRARIES = ("numpy", "pandas", "matplotlib", "scipy")

SETUP = """\
import os, subprocess, threading, multiprocessing
import numpy as np, pandas as pd, scipy
from scipy import fft, integrate, linalg, optimize, sparse, stats
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
"""

ANSWER = """\
def minimum():
    ### BEGIN SOLUTION
    return optimize.minimize(lambda x: (x[0] - 1) ** 2 + (x[1] + 2) ** 2, [0, 0]).x
    ### END SOLUTION
"""

TESTS = {
    "test_scipy": "assert np.allclose(minimum(), [1, -2], atol=1e-4)\n"
                  "assert abs(integrate.quad(lambda x: x ** 2, 0, 1)[0] - 1 / 3) < 1e-9\n"
                  "assert stats.norm.cdf(0) == 0.5 and sparse.eye(5).sum() == 5\n"
                  "assert abs(fft.fft(np.ones(8))[0]) == 8",
    # a product large enough for OpenBLAS to start its threads
    "test_blas": "a = np.random.default_rng(0).random((400, 400))\n"
                 "assert np.linalg.slogdet(a @ a.T + np.eye(400))[0] == 1 and linalg.svd(a)[1][0] > 0",
    "test_pandas": "df = pd.DataFrame({'x': np.arange(1000), 'g': np.arange(1000) % 7})\n"
                   "df['y'] = df.x ** 2\n"
                   "df.to_csv('frame.csv', index=False)\n"
                   "back = pd.read_csv('frame.csv')\n"
                   "assert back.equals(df) and back.groupby('g').y.mean().round(1).iloc[0] == 330505.0",
    "test_matplotlib": "fig, ax = plt.subplots()\n"
                       "ax.plot(np.arange(10), np.arange(10) ** 2)\n"
                       "ax.set_title('squares')\n"
                       "for ext in ('png', 'svg', 'pdf'):\n"
                       "    fig.savefig(f'plot.{ext}')\n"
                       "    assert os.path.getsize(f'plot.{ext}') > 1000, ext",
    "test_processes": "seen = []\n"
                      "t = threading.Thread(target=lambda: seen.append(1))\n"
                      "t.start(); t.join()\n"
                      "assert seen == [1]\n"
                      "assert subprocess.run(['/bin/echo', 'ran'], capture_output=True, text=True).stdout == 'ran\\n'\n"
                      "for method in ('fork', 'spawn'):\n"
                      "    with multiprocessing.get_context(method).Pool(2) as pool:\n"
                      "        assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3], method",
}


def errors(notebook) -> list:
    """What failed cells of a graded notebook said: an error, or anything on stderr (nbgrader
    gives a cell that wrote to stderr no points)."""
    nb = nbformat.read(notebook, as_version=4)
    return [(c.metadata.get("nbgrader", {}).get("grade_id"), o.get("ename") or o.get("text"), o.get("evalue"))
            for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error" or o.get("name") == "stderr"]


def libraries_missing(python) -> list:
    code = "import importlib.util, sys; print(*[m for m in sys.argv[1:] if not importlib.util.find_spec(m)])"
    r = subprocess.run([str(python.python), "-c", code, *LIBRARIES], capture_output=True, text=True, check=True)
    return r.stdout.split()


def test_the_scientific_stack_runs_under_the_default_deny_filter(project_python, tmp_path):
    missing = libraries_missing(project_python)
    if missing:
        message = f"{missing} not in the project venv: run `bash scripts/kernels.sh` (scripts/test.sh does)"
        assert os.environ.get("CI") != "true", message
        pytest.skip(message)
    cells = [nb_cell("code", SETUP), nb_cell("code", ANSWER, grade_id="answer", solution=True)]
    cells += [nb_cell("code", source, grade_id=gid, points=1) for gid, source in TESTS.items()]
    # the notebook's answer is the solution itself: every test cell must pass
    bare = make_course(tmp_path / "bare", project_python, cells, {"alice": ANSWER})
    bare.nbgrader("autograde", "env1")
    full = {"alice": {"env": float(len(TESTS))}}
    bare_graded = bare.root / "autograded" / "alice" / "env1" / "env.ipynb"
    assert bare.scores() == full, f"bare nbgrader itself grades the notebook in full: {errors(bare_graded)}"

    sandboxed = make_course(tmp_path / "sandboxed", project_python, cells, {"alice": ANSWER})
    r = subprocess.run([str(BIN), "env1", "--course", str(sandboxed.root), "--python", str(project_python.python)],
                       env=project_python.run_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    graded = sandboxed.root / "autograded" / "alice" / "env1"
    assert sandboxed.scores() == full, f"cells failed in the sandbox: {errors(graded / 'env.ipynb')}\n{r.stdout}{r.stderr}"
    # what the kernel wrote in its working directory came back
    for name in ("frame.csv", "plot.png", "plot.svg", "plot.pdf"):
        assert (graded / name).stat().st_size > 0, name

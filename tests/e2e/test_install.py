"""`isolate-grade install` and `install --uninstall`, into the project venv (its python3 kernel),
with a copy of the fixture course:

- a twin's kernelspec starts the binary install recorded: by default the one that ran, by its
  real path, with a warning when that is in cargo's build directory (as target/debug is);
  `--binary` (or ISOLATE_GRADE_BINARY) records a copy installed elsewhere, without a warning;
  another program as `--binary` is refused (exit 2) and nothing is written;
- `--uninstall` removes exactly the twins named with the prefix (not another prefix's twins
  that start with it, nor a kernelspec that isn't a twin) and the course's block, leaving the
  rest of nbgrader_config.py byte for byte; run again, it finds nothing and is fine.

pytest's tmp must not be inside a cargo build directory (its default, /tmp/pytest-of-*, isn't).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

from conftest import BIN, NEEDS_ROOT, ROOT, TEST_CONFIG, TWIN_HOME

pytestmark = NEEDS_ROOT

# the twins' own place, and the Jupyter path's (JupyterLab's Launcher lists what is there)
KERNELS = TWIN_HOME / "kernels"
JUPYTER_KERNELS = Path(sys.prefix) / "share" / "jupyter" / "kernels"
PREFIX = "isolate-grade-test-install-"
BUILD_WARNING = "cargo build directory"


def remove_test_kernelspecs():
    for d in [*KERNELS.glob(PREFIX + "*"), *JUPYTER_KERNELS.glob(PREFIX + "*")]:
        shutil.rmtree(d)


@pytest.fixture(autouse=True)
def clean():
    remove_test_kernelspecs()
    yield
    remove_test_kernelspecs()


@pytest.fixture
def course(tmp_path) -> Path:
    """A copy of fixtures/course (its nbgrader_config.py, its source notebooks)."""
    dst = tmp_path / "course"
    shutil.copytree(ROOT / "fixtures" / "course", dst)
    return dst


def install(*args: str, binary: Path = BIN, **env: str) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("ISOLATE_GRADE_BINARY", None)
    e["ISOLATE_GRADE_CONFIG"] = str(TEST_CONFIG)
    e.update(env)
    return subprocess.run([str(binary), "install", "--python", sys.executable, *args], env=e, capture_output=True,
                          text=True, timeout=600)


def kernelspecs() -> Dict[str, bytes]:
    """Every kernelspec in the venv, the twins' and the Jupyter path's: path -> its kernel.json."""
    return {str(d): (d / "kernel.json").read_bytes() for k in (KERNELS, JUPYTER_KERNELS) if k.is_dir()
            for d in k.iterdir()}


def twin_argv(name: str) -> list:
    spec = json.loads((KERNELS / name / "kernel.json").read_text())
    assert spec["metadata"]["isolate_grade"]["wraps"] == "python3", spec
    return spec["argv"]


def test_the_running_binary_is_recorded_with_a_warning_in_cargos_build_directory(course):
    r = install("--course", str(course), "--twin-prefix", PREFIX, "--kernel", "python3")
    assert r.returncode == 0, r.stdout + r.stderr
    real = BIN.resolve()
    assert twin_argv(PREFIX + "python3")[:2] == [str(real), "kernel"]
    assert "# >>> isolate-grade >>>" in (course / "nbgrader_config.py").read_text()
    assert "restart it" in r.stdout, r.stdout
    # the binary is target/debug's: grading breaks at `cargo clean`, and install says so
    assert BUILD_WARNING in r.stderr and str(real) in r.stderr, r.stderr
    assert "cargo install --path . --root /usr/local" in r.stderr and "README" in r.stderr, r.stderr


def test_binary_records_a_copy_installed_elsewhere(tmp_path):
    copy = tmp_path / "bin" / "isolate-grade"
    copy.parent.mkdir()
    shutil.copyfile(BIN, copy)
    copy.chmod(0o755)
    r = install("--twin-prefix", PREFIX, "--kernel", "python3", "--binary", str(copy))
    # (the twin was started through the copy: install's preflight)
    assert r.returncode == 0, r.stdout + r.stderr
    assert twin_argv(PREFIX + "python3")[0] == str(copy)
    assert BUILD_WARNING not in r.stderr, f"{r.stderr} (is pytest's tmp in a cargo build directory?)"
    # the environment twin, with a link: the path is recorded as given (a link updated by the
    # next install keeps the kernelspecs valid)
    link = tmp_path / "link"
    link.symlink_to(copy)
    r = install("--twin-prefix", PREFIX, "--kernel", "python3", ISOLATE_GRADE_BINARY=str(link))
    assert r.returncode == 0, r.stdout + r.stderr
    assert twin_argv(PREFIX + "python3")[0] == str(link)


def test_binary_that_is_not_this_isolate_grade_is_refused(course, tmp_path):
    config = (course / "nbgrader_config.py").read_bytes()
    before = kernelspecs()
    other_version = tmp_path / "isolate-grade"
    other_version.write_text("#!/bin/sh\necho 'isolate-grade 0.0.0-other'\n")
    other_version.chmod(0o755)
    for binary, why in [("/bin/true", 'answered "true (GNU coreutils)'),
                        (str(other_version), 'answered "isolate-grade 0.0.0-other"'),
                        ("target/debug/isolate-grade", "not an absolute path")]:
        r = install("--course", str(course), "--twin-prefix", PREFIX, "--binary", binary)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"--binary {binary}: " in r.stderr and why in r.stderr, r.stderr
        assert kernelspecs() == before
        assert (course / "nbgrader_config.py").read_bytes() == config


def test_uninstall_removes_exactly_the_twins_of_the_prefix_and_the_block(course):
    cfg = course / "nbgrader_config.py"
    original = cfg.read_bytes()
    r = install("--course", str(course), "--twin-prefix", PREFIX, "--kernel", "python3")
    assert r.returncode == 0, r.stdout + r.stderr
    # what uninstall must leave: another prefix's twin whose name starts with this prefix, a
    # kernelspec that isn't a twin named with the prefix, the instructor's edit after the block
    r = install("--twin-prefix", PREFIX + "other-", "--kernel", "python3")
    assert r.returncode == 0, r.stdout + r.stderr
    plain = JUPYTER_KERNELS / (PREFIX + "plain")
    plain.mkdir()
    (plain / "kernel.json").write_text(json.dumps({"argv": ["python3", "-m", "ipykernel_launcher", "-f",
                                                            "{connection_file}"], "display_name": "plain",
                                                   "language": "python"}))
    with cfg.open("ab") as f:
        f.write(b"c.Execute.timeout = 20  # edited after install\n")
    # and a twin where an earlier version put them, on the Jupyter path
    shutil.copytree(KERNELS / (PREFIX + "python3"), JUPYTER_KERNELS / (PREFIX + "python3"))
    before = kernelspecs()
    for k in (KERNELS / (PREFIX + "python3"), KERNELS / (PREFIX + "other-python3"), JUPYTER_KERNELS / "python3",
              JUPYTER_KERNELS / (PREFIX + "python3")):
        assert str(k) in before, k

    r = install("--uninstall", "--course", str(course), "--twin-prefix", PREFIX)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'removed the kernelspec "{PREFIX}python3"' in r.stdout, r.stdout
    assert f"removed the isolate-grade block from {cfg}" in r.stdout, r.stdout
    assert "keeps the old configuration until it is restarted" in r.stdout, r.stdout
    del before[str(KERNELS / (PREFIX + "python3"))]
    del before[str(JUPYTER_KERNELS / (PREFIX + "python3"))]
    assert kernelspecs() == before
    assert cfg.read_bytes() == original + b"c.Execute.timeout = 20  # edited after install\n"

    # again: nothing to remove, nothing changed
    r = install("--uninstall", "--course", str(course), "--twin-prefix", PREFIX)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no kernelspec to remove" in r.stdout and "has no isolate-grade block" in r.stdout, r.stdout
    assert kernelspecs() == before
    assert cfg.read_bytes() == original + b"c.Execute.timeout = 20  # edited after install\n"


def test_the_twins_stay_out_of_jupyterlabs_launcher(course):
    """JupyterLab's Launcher and kernel picker offer what the server's KernelSpecManager finds
    on the Jupyter path: never a twin. A twin an earlier version left there is moved."""
    shutil.copytree(ROOT / "fixtures", JUPYTER_KERNELS / (PREFIX + "python3"), ignore=lambda d, names: names)
    (JUPYTER_KERNELS / (PREFIX + "python3") / "kernel.json").write_text(json.dumps(
        {"argv": ["x", "{connection_file}"], "display_name": "old twin", "language": "python",
         "metadata": {"isolate_grade": {"wraps": "python3"}}}))
    r = install("--course", str(course), "--twin-prefix", PREFIX, "--kernel", "python3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed the earlier twin" in r.stdout, r.stdout
    listed = subprocess.run([sys.executable, "-c", "from jupyter_client.kernelspec import KernelSpecManager as K; "
                             "print(sorted(K().find_kernel_specs()))"], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")})
    assert "python3" in listed.stdout and PREFIX not in listed.stdout, listed.stdout + listed.stderr
    assert (KERNELS / (PREFIX + "python3") / "kernel.json").exists()

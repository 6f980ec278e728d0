"""`isolate-grade kernel --submission DIR --report FILE`: the batch names a kernel's submission
and its report file explicitly, rather than through the kernel's working directory and a
directory it scans afterwards.

Run as root with the project venv (scripts/test.sh does):  .venv/bin/python -m pytest tests/e2e
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, NEEDS_ROOT, TEST_CONFIG, TWIN_HOME, stdout_of

pytestmark = NEEDS_ROOT

PREFIX = "isolate-grade-kargs-"

PROBE = r"""
import json, os
open("made-inside.txt", "w").write("hello")
print(json.dumps({"cwd": os.getcwd(), "listing": sorted(os.listdir("."))}))
"""


@pytest.fixture(scope="module")
def twin_argv():
    """The argv of this venv's sandboxed python3 twin, as `install` writes it."""
    assert os.geteuid() == 0, "the e2e tests run as root (CI=true)"
    subprocess.run([str(BIN), "install", "--python", sys.executable, "--kernel", "python3", "--twin-prefix", PREFIX],
                   check=True)
    spec = json.loads((TWIN_HOME / "kernels" / f"{PREFIX}python3" / "kernel.json").read_text())
    assert spec["argv"][1] == "kernel"
    return spec["argv"]


def run_cell(argv, cwd: Path, code: str, specs: Path, monkeypatch) -> str:
    """Start a kernel with `argv` (as a kernelspec of its own under `specs`) from `cwd`, run
    `code`, return its stdout, shut it down."""
    from jupyter_client import KernelManager

    spec = specs / "kernels" / "kargs"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "kargs", "language": "python"}))
    monkeypatch.setenv("ISOLATE_GRADE_CONFIG", str(TEST_CONFIG))
    monkeypatch.setenv("JUPYTER_PATH", str(specs))
    km = KernelManager(kernel_name="kargs")
    km.start_kernel(cwd=str(cwd))
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        out = stdout_of(kc, code)
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=False)
    return out


def with_options(argv, *options):
    return [argv[0], "kernel", *options, *argv[2:]]


def test_the_submission_and_report_are_named_explicitly(tmp_path, twin_argv, monkeypatch):
    submission = tmp_path / "submitted" / "alice" / "ps1"
    submission.mkdir(parents=True)
    (submission / "data.csv").write_text("1,2\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    report = tmp_path / "reports" / "k.json"
    report.parent.mkdir()
    argv = with_options(twin_argv, "--submission", str(submission), "--report", str(report))
    seen = json.loads(run_cell(argv, elsewhere, PROBE, tmp_path / "specs", monkeypatch).strip().splitlines()[-1])
    # inside, the kernel works in the submission, not in the directory it was started from
    assert seen["cwd"] == str(submission)
    assert "data.csv" in seen["listing"]
    # what it wrote there is carried out to the submission, and nothing to its start directory
    assert (submission / "made-inside.txt").read_text() == "hello"
    assert list(elsewhere.iterdir()) == []
    # its verdict is in the file it was given, naming the submission
    r = json.loads(report.read_text())
    assert r["kernel"]["workdir"] == str(submission)
    assert r["status"] in ("ok", "signaled"), r  # signaled: ipykernel's shutdown race (README)


@pytest.mark.parametrize("bad, why", [
    ('relative/dir', '--submission: "relative/dir" is not an absolute path'),
    ("/nonexistent-submission-dir", "/nonexistent-submission-dir"),
])
def test_a_bad_submission_is_refused_before_anything_runs(tmp_path, twin_argv, bad, why):
    conn = tmp_path / "kernel-x.json"
    conn.write_text(json.dumps({"shell_port": 50001, "iopub_port": 50002, "stdin_port": 50003,
                                "control_port": 50004, "hb_port": 50005, "ip": "127.0.0.1", "key": "k",
                                "transport": "tcp", "signature_scheme": "hmac-sha256"}))
    report = tmp_path / "r.json"
    argv = [a.replace("{connection_file}", str(conn)) for a in with_options(twin_argv, "--submission", bad,
                                                                            "--report", str(report))]
    env = dict(os.environ, ISOLATE_GRADE_CONFIG=str(TEST_CONFIG), JPY_PARENT_PID=str(os.getpid()))
    p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert why in p.stderr, p.stderr
    assert not report.exists(), "a refused request wrote its report file"

"""End to end in a real browser: formgrader's autograde button, with the sandboxed kernel.

Run as root with the project venv, after `cargo build` and `bash scripts/browser.sh`
(scripts/test.sh does all three):  .venv/bin/python -m pytest tests/e2e/test_browser.py

What it exercises, the way an instructor meets it:
- a copy of the fixture course, ps1 released, `isolate-grade install --course` (the twin of
  python3, and the block in the course's nbgrader_config.py), and three more submissions:
  `probe` (its first solution cell prints its uid, hostname and network interfaces),
  `linker` (ships notes.txt, a symbolic link to source/ps1/problem1.ipynb, solutions and all)
  and `bomb` (its first solution cell grows a list of bytearrays to 4 GiB);
- `jupyter lab` started on the course's parent, with a Jupyter config of its own whose
  nbgrader_config.py names the course (as formgrader is set up for a course);
- tests/browser/formgrader.mjs (playwright-core, Debian's chromium, headless) opens
  JupyterLab, Nbgrader > Formgrader, ps1's submissions, and clicks the autograde (lightning)
  button of alice, probe, linker and bomb; it reports what each modal and row showed, and
  leaves screenshots in target/browser/;
- alice gets full marks on the page and in the gradebook; probe's graded notebook (in
  formgrader's submission view, and on disk) shows the sandbox's uid, hostname and `lo`;
  linker's submission is refused on the formgrader path too, and nothing of the source
  notebook reaches autograded/ or the gradebook; bomb's modal says, in words, that the cell
  used too much memory and the sandbox stopped it;
- formgrader's "Generate Feedback" button (issue #18): a second course, test_feedback_redact's
  Python notebook whose hidden tests carry a marker, installed and autograded; the button of a
  good and a bad submission: no feedback file has the marker, every test cell's score is there.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import BIN, NEEDS_ROOT, ROOT, copy_fixture_course

pytestmark = NEEDS_ROOT

ASSIGNMENT = "ps1"
NOTEBOOK = "problem1"
STUDENTS = ["alice", "probe", "linker", "bomb"]
SCRIPT = ROOT / "tests" / "browser" / "formgrader.mjs"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "target" / "browser"
# Time limits, generous (the whole test takes 30-45 s here, each autograde 3-5 s) but bounded,
# so that with the server's start (60 s at most, conftest.jupyter_lab) it ends within 4 min:
# each autograde, then the browser's whole run (open the lab, four autogrades, one submission
# view), which stops itself and reports; the browser is killed only if it doesn't.
AUTOGRADE_MS = 60_000
BROWSER_DEADLINE_MS = 120_000
BROWSER_KILL_AFTER = BROWSER_DEADLINE_MS / 1000 + 30

PROBE = '''import json, os, socket
print("PROBE " + json.dumps({"uid": os.getuid(), "hostname": socket.gethostname(),
                             "interfaces": [name for _, name in socket.if_nameindex()]}))

def squares(n):
    if n < 1:
        raise ValueError("n must be at least 1")
    return [i ** 2 for i in range(1, n + 1)]
'''

# far past the default policy's 1G: every chunk is written, so it is resident
BOMB = '''chunks = []
while len(chunks) < 4 * 1024:
    chunks.append(bytearray(b"x") * (1 << 20))
'''


@dataclass(frozen=True)
class Course:
    """The course formgrader grades: a copy of the fixture course with ps1 released."""

    root: Path
    # a line only source/ps1/problem1.ipynb holds (in a solution region): if it is seen
    # anywhere else, the source notebook leaked
    solution_marker: str
    reports: Path

    def autograded(self, student: str) -> Path:
        return self.root / "autograded" / student / ASSIGNMENT


def set_solution(nb_path: Path, grade_id: str, source: str) -> None:
    nb = nbformat.read(nb_path, as_version=4)
    cells = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(cells) == 1, (nb_path, grade_id)
    cells[0].source = source
    nbformat.write(nb, nb_path)


def submit_like(course: Path, student: str, like: str = "alice") -> Path:
    """A submission of ps1 for `student`: a copy of `like`'s."""
    sub = course / "submitted" / student / ASSIGNMENT
    shutil.copytree(course / "submitted" / like / ASSIGNMENT, sub)
    return sub


@pytest.fixture(scope="module")
def course(tmp_path_factory, project_python, install_twin) -> Course:
    root = copy_fixture_course(tmp_path_factory.mktemp("browser") / "course")
    marker = f"solution-only-{secrets.token_hex(8)}"
    source = root / "source" / ASSIGNMENT / f"{NOTEBOOK}.ipynb"
    nb = nbformat.read(source, as_version=4)
    cell = next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "squares")
    cell.source = cell.source.replace("### BEGIN SOLUTION\n", f"### BEGIN SOLUTION\n    # {marker}\n", 1)
    nbformat.write(nb, source)
    assert marker in source.read_text()
    r = subprocess.run([str(project_python.python), "-m", "nbgrader", "generate_assignment", ASSIGNMENT, "--force"],
                       cwd=root, env=project_python.run_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    # the marker is where only the instructor's files have it
    assert marker not in (root / "release" / ASSIGNMENT / f"{NOTEBOOK}.ipynb").read_text()
    assert marker.encode() not in (root / "gradebook.db").read_bytes()

    set_solution(submit_like(root, "probe") / f"{NOTEBOOK}.ipynb", "squares", PROBE)
    linker = submit_like(root, "linker")
    (linker / "notes.txt").symlink_to(Path("..", "..", "..", "source", ASSIGNMENT, f"{NOTEBOOK}.ipynb"))
    assert marker in (linker / "notes.txt").read_text(), "the link points at the source notebook"
    set_solution(submit_like(root, "bomb") / f"{NOTEBOOK}.ipynb", "squares", BOMB)

    install_twin(root, "isolate-grade-browser-")
    assert "_isolate_grade(c, " in (root / "nbgrader_config.py").read_text()
    reports = root.parent / "kernel-reports"
    reports.mkdir()
    return Course(root, marker, reports)


def browser_missing() -> list[str]:
    missing = [str(p) for p in (CHROMIUM, ROOT / "tests/browser/node_modules/playwright-core") if not p.exists()]
    return missing + [c for c in ("node",) if shutil.which(c) is None]


def require_browser() -> None:
    """Fail (under CI=true) or skip when the browser or playwright-core is missing."""
    missing = browser_missing()
    if missing:
        msg = f"no browser: {', '.join(missing)} missing (run: bash scripts/browser.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def run_browser(opts: dict[str, Any]) -> tuple[str, str, int | None]:
    """tests/browser/formgrader.mjs in a session of its own, so that if it outlives its
    deadline, it and its Chromium are killed together (by the group of the PID started here)."""
    p = subprocess.Popen(["node", str(SCRIPT), json.dumps(opts)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True, env={**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"})
    try:
        stdout, stderr = p.communicate(timeout=BROWSER_KILL_AFTER)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        stderr += f"\n(killed after {BROWSER_KILL_AFTER:.0f}s)"
    return stdout, stderr, p.returncode


@pytest.fixture(scope="module")
def page(course: Course, jupyter_lab) -> dict[str, Any]:
    """What formgrader showed for each student, through the browser (tests/browser/formgrader.mjs)."""
    require_browser()
    assert BIN.exists(), f"{BIN} missing (run: cargo build)"
    server = jupyter_lab(course.root.parent, course.root, ISOLATE_GRADE_REPORT_DIR=str(course.reports))
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    opts = {"url": server.url, "token": server.token, "assignment": ASSIGNMENT, "students": STUDENTS,
            "view": ["probe"], "notebook": NOTEBOOK, "screenshots": str(SCREENSHOTS),
            "timeout_ms": AUTOGRADE_MS, "deadline_ms": BROWSER_DEADLINE_MS}
    stdout, stderr, code = run_browser(opts)
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"formgrader.mjs printed no result (exit {code}; screenshots in {SCREENSHOTS}):\n"
                    f"{stdout}\n{stderr}\nserver log:\n{server.log_tail()}")
    # what the page showed, beside the screenshots
    (SCREENSHOTS / "result.json").write_text(json.dumps(result, indent=1))
    if not result["ok"]:
        pytest.fail(f"the browser could not reach formgrader's submissions: {result['error']}\n"
                    f"screenshot: {result['screenshot']}\nserver log:\n{server.log_tail()}")
    return result


def shown(page: dict[str, Any], student: str) -> dict[str, Any]:
    """The modal and row the page showed for `student`; fails with the screenshot when the
    autograde didn't get that far."""
    seen = page["students"][student]
    if seen["error"]:
        pytest.fail(f"{student}: {seen['error']} (screenshot: {seen['screenshot']})")
    return seen


def excerpt(seen: dict[str, Any], head: int = 3, tail: int = 12) -> str:
    """The modal's first lines (its message) and last (where the log ends), and the row."""
    lines = f"{seen['modal_title']}\n{seen['modal_text']}".splitlines()
    if len(lines) > head + tail:
        lines = [*lines[:head], f"[... {len(lines) - head - tail} lines ...]", *lines[-tail:]]
    return "\n".join([*lines, f"row: {seen['row_text']}"])


def page_says(seen: dict[str, Any], *words: str, note: str = "") -> None:
    """Every one of `words` is in the modal or the row (`note` only adds to the message)."""
    text = f"{seen['modal_title']}\n{seen['modal_text']}\n{seen['row_text']}"
    missing = [w for w in words if w not in text]
    assert not missing, (f"the page does not say {missing} (screenshot: {seen['screenshot']}):\n{excerpt(seen)}"
                         + (f"\n{note}" if note else ""))


def probe_line(text: str) -> dict[str, Any]:
    lines = [ln for ln in text.splitlines() if ln.startswith("PROBE ")]
    assert lines, f"no PROBE line in:\n{text[:2000]}"
    return json.loads(lines[-1][len("PROBE "):])


def assert_sandboxed(seen: dict[str, Any], where: str) -> None:
    assert seen["uid"] >= 60000, (where, seen)
    assert seen["interfaces"] == ["lo"], (where, seen)
    assert seen["hostname"] == "sandbox", (where, seen)


def test_alice_gets_full_marks(page, course: Course):
    from nbgrader.api import Gradebook

    seen = shown(page, "alice")
    page_says(seen, "Success", f"Successfully autograded '{ASSIGNMENT}' for student 'alice'")
    score, _, max_score = seen["score_text"].partition(" / ")
    assert float(score) == float(max_score) > 0, seen
    with Gradebook(f"sqlite:///{course.root / 'gradebook.db'}", "fixture-course") as gb:
        sub = gb.find_submission(ASSIGNMENT, "alice")
        assert sub.score == sub.max_score == float(max_score), (sub.score, sub.max_score)
    alice = verdicts_of(course, "alice")
    assert len(alice) == 2 and all(v["sandbox"]["uid"] >= 60000 for v in alice), alice


def test_probe_ran_in_the_sandbox(page, course: Course):
    seen = shown(page, "probe")
    page_says(seen, "Success", f"Successfully autograded '{ASSIGNMENT}' for student 'probe'")
    view = page["views"]["probe"]
    assert not view["error"], f"probe's submission view: {view['error']} (screenshot: {view['screenshot']})"
    assert_sandboxed(probe_line(view["text"]), f"formgrader's view of probe's {NOTEBOOK}")
    graded = nbformat.read(course.autograded("probe") / f"{NOTEBOOK}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in graded.cells if c.cell_type == "code" for o in c.outputs
                      if o.output_type == "stream")
    assert_sandboxed(probe_line(printed), f"autograded/probe/{ASSIGNMENT}/{NOTEBOOK}.ipynb")


def test_linker_is_rejected_and_nothing_leaks(page, course: Course):
    seen = shown(page, "linker")
    marker = course.solution_marker.encode()
    leaks = [str(p.relative_to(course.root)) for p in sorted((course.root / "autograded").rglob("*"))
             if p.is_symlink() or (p.is_file() and marker in p.read_bytes())]
    leaks += [p.name for p in course.root.glob("gradebook.db*") if marker in p.read_bytes()]
    missing = [w for w in ("rejected", "symbolic link") if w not in f"{seen['modal_text']}\n{seen['row_text']}"]
    assert not leaks and not missing, (
        f"source/{ASSIGNMENT}/{NOTEBOOK}.ipynb leaked into: {leaks or 'nothing'}; the page does not say: "
        f"{missing or 'all said'} (screenshot: {seen['screenshot']}):\n{excerpt(seen)}")


def verdicts_of(course: Course, student: str) -> list[dict[str, Any]]:
    """The kernel reports (isolate-grade kernel --report-dir) of a student's notebooks."""
    found = [json.loads(p.read_text()) for p in sorted(course.reports.glob("*.json"))]
    return [v for v in found if v["kernel"]["workdir"].split("/")[-2:] == [student, ASSIGNMENT]]


def test_bomb_is_stopped_and_said_so(page, course: Course):
    seen = shown(page, "bomb")
    # what the sandbox itself said (its report), for the message: the page should say it too
    said = [(v["status"], v["peak_memory"]) for v in verdicts_of(course, "bomb")]
    page_says(seen, "memory", "the sandbox stopped it", note=f"the kernel's verdicts (status, peak memory): {said}")


# ---------------------------------------------------------------------------------------------
# formgrader's "Generate Feedback" button, with the redaction the install block sets up
# (issue #18: the feedback never shows the hidden tests)

FEEDBACK_SCREENSHOTS = ROOT / "target" / "browser-feedback"


@pytest.fixture(scope="module")
def feedback_course(tmp_path_factory, project_python, install_twin):
    """test_feedback_redact's Python notebook (hidden tests carrying its marker in names,
    values, comments, messages and a helper), a good and a bad submission, `install --course`,
    then `nbgrader autograde` (in the sandbox, through the block)."""
    from conftest import make_assignment
    from test_feedback_redact import ANSWERS, py_nb

    root = tmp_path_factory.mktemp("browser-feedback") / "course"
    c = make_assignment(root, project_python, [py_nb("p")], {s: ANSWERS[s] for s in ("good", "bad")})
    install_twin(root, "isolate-grade-browser-fb-")
    assert "_isolate_grade_feedback(c)" in (root / "nbgrader_config.py").read_text()
    c.nbgrader("autograde", c.assignment)
    assert not (root / "feedback").exists()
    return c


def test_formgraders_generate_feedback_button_writes_feedback_without_the_hidden_tests(feedback_course, jupyter_lab):
    from test_feedback_redact import SCORE, TOTAL, assert_no_marker

    require_browser()
    c = feedback_course
    server = jupyter_lab(c.root.parent, c.root)
    shutil.rmtree(FEEDBACK_SCREENSHOTS, ignore_errors=True)
    opts = {"url": server.url, "token": server.token, "assignment": c.assignment, "students": [],
            "feedback": ["good", "bad"], "view": [], "notebook": "p", "screenshots": str(FEEDBACK_SCREENSHOTS),
            "timeout_ms": AUTOGRADE_MS, "deadline_ms": BROWSER_DEADLINE_MS}
    stdout, stderr, code = run_browser(opts)
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        pytest.fail(f"formgrader.mjs printed no result (exit {code}):\n{stdout}\n{stderr}\n{server.log_tail()}")
    assert result["ok"], f"{result['error']} (screenshot: {result['screenshot']})\n{server.log_tail()}"
    for student in ("good", "bad"):
        seen = shown({"students": result["feedback"]}, student)
        # its log: the redaction ran in the server's GenerateFeedback
        page_says(seen, "Success", f"Successfully generated feedback for '{c.assignment}' for student '{student}'",
                  f"isolate-grade: hidden tests redacted from the feedback of {student}/p")
    # the files the button wrote: no trace of the hidden tests, and every test cell's score
    assert_no_marker(c.root)
    expected = {"good": ("6.0", [("test_helper", "3.0", "3.0"), ("test_plain", "2.0", "2.0"),
                                 ("test_visible_helper", "1.0", "1.0")]),
                "bad": ("0.0", [("test_helper", "0.0", "3.0"), ("test_plain", "0.0", "2.0"),
                                ("test_visible_helper", "0.0", "1.0")])}
    for student, (total, cells) in expected.items():
        text = (c.root / "feedback" / student / c.assignment / "p.html").read_text()
        assert TOTAL.findall(text) == [("p", total, "6.0")], (student, TOTAL.findall(text))
        assert sorted(SCORE.findall(text)) == cells, (student, SCORE.findall(text))
        assert "# hidden tests removed" in text, student

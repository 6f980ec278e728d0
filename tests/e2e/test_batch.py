"""`isolate-grade ASSIGNMENT`, end to end with real nbgrader, on copies of the fixture course.

- serial (--jobs 1) grades are the expected ones, and the report says so in JSON and CSV;
- 16 workers on 20 submissions lose nothing and match the serial run;
- a batch SIGKILLed at several points (and once stopped with SIGINT) and started again ends
  with the serial run's gradebook, and leaves no process behind;
- rejected trees (symlink, FIFO, hard link, oversized file, symlinked student directory) are
  reported and their targets never opened; a broken notebook and a memory bomb get their own
  verdicts; nobody else is affected;
- hostile submissions aimed at the grader itself (issue #11): a notebook of 200 000 tiny
  outputs and one nested 100 000 deep are refused before nbgrader parses them; one within
  the bounds that makes nbgrader's worker pass its memory limit costs its student `error`;
  file names with terminal escapes, a bidi override and a forged "graded" line, or not UTF-8,
  are refused and shown escaped; a name that is a spreadsheet formula is inert in the CSV; a
  notebook nbgrader fails on is the student's `error`, in one short line without the log;
- the gradebook lock: a writer holding the gradebook past SQLite's busy timeout makes another
  worker wait, not fail with "database is locked" (and without the lock, it does fail);
- graded students are skipped on a rerun, named or --force ones regraded, newer submissions too.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

import course_tools
import make_course
from conftest import BIN, NEEDS_ROOT, ROOT, grader_env

pytestmark = NEEDS_ROOT

EXPECTED = {s: per["ps1"] for s, per in make_course.EXPECTED.items() if "ps1" in per}


def env():
    return grader_env(JUPYTERHUB_API_TOKEN="hub-token-that-must-not-leak")


def batch(course, *args, check_code=None):
    """Run `isolate-grade ps1 --course COURSE ARGS...`; return (exit code, report, stderr)."""
    report = Path(course) / "report.json"
    report.unlink(missing_ok=True)
    r = subprocess.run([str(BIN), "ps1", "--course", str(course), "--report", str(report), *args],
                       env=env(), capture_output=True, text=True, timeout=1200)
    if check_code is not None:
        assert r.returncode == check_code, r.stdout + r.stderr
    return r.returncode, (json.loads(report.read_text()) if report.exists() else None), r.stdout + r.stderr


def scores(gb):
    return {s: {nb: v["score"] for nb, v in d["notebooks"].items()} for s, d in gb.items()}


def leftovers(course):
    """Processes whose working directory is in the course (workers, kernels), but ours."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        if cwd == str(course) or cwd.startswith(str(course) + "/"):
            found.append((int(p.name), (p / "cmdline").read_bytes()[:200]))
    return found


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    course = course_tools.prepare(tmp_path_factory.mktemp("serial") / "course")
    code, report, out = batch(course, "--jobs", "1")
    return course, code, report, out


def test_serial_grades_are_the_expected_ones_and_reported(serial):
    course, code, report, out = serial
    assert code == 0, out
    assert scores(course_tools.gradebook(course, "ps1")) == EXPECTED
    assert report["schema"] == "isolate-grade/batch/1"
    assert report["counts"] == {"graded": 10}
    by = {s["student"]: s for s in report["students"]}
    assert by["alice"]["score"] == 10 and by["alice"]["max_score"] == 10
    for s in report["students"]:
        for nb in s["notebooks"]:
            assert nb["score"] == EXPECTED[s["student"]][nb["notebook"]], (s["student"], nb)
            if nb["verdict"] != "not-run":  # erin did not submit problem2
                assert nb["wall"] > 0 and nb["cpu"] > 0 and nb["peak_memory"] > 1 << 20, nb
    # heidi's 50 MB cell was cut at the output limit; she is graded all the same. Her other
    # notebook is `ok` even when ipykernel 7.4 hangs in its shutdown until jupyter_client's
    # SIGTERM: a kernel its client ended is no verdict on the submission.
    assert [nb["verdict"] for nb in by["heidi"]["notebooks"]] == ["output-limit", "ok"]
    rows = list(csv.DictReader(open(course / "report.csv")))
    assert len(rows) == 20
    assert {(r["student"], r["notebook"], float(r["score"])) for r in rows} == {
        (s, nb, v) for s, per in EXPECTED.items() for nb, v in per.items()}
    assert "10 students: 10 graded" in out
    assert not leftovers(course)


def test_sixteen_workers_lose_nothing_and_match_serial(serial, tmp_path):
    course, _, _, _ = serial
    reference = course_tools.gradebook(course, "ps1")
    par = course_tools.prepare(tmp_path / "course", copies=2)
    # 16 workers on 2 cores run every kernel 8 times slower. After a cell's reply, nbgrader
    # waits at most Execute.iopub_timeout (4 s) for the rest of its output and then fails the
    # notebook (raise_on_iopub_timeout), bare as well. That failed heidi's notebook in one CI
    # run, and dave's here with two CPU hogs beside. Whoever runs more jobs than cores must
    # raise it too (README).
    with open(par / "nbgrader_config.py", "a") as f:
        f.write("\nc.Execute.iopub_timeout = 60\n")
    code, report, out = batch(par, "--jobs", "16")
    assert code == 0, out
    assert report["counts"] == {"graded": 20}
    got = course_tools.gradebook(par, "ps1")
    assert len(got) == 20
    for student, want in reference.items():
        for name in (student, f"{student}-2"):
            assert {k: v for k, v in got[name].items() if k != "timestamp"} == \
                   {k: v for k, v in want.items() if k != "timestamp"}, name
    logs = "".join(p.read_text(errors="replace") for p in (par / ".isolate-grade/ps1/logs").iterdir())
    assert "database is locked" not in logs
    assert course_tools.autograded_files(par, "ps1")["bob-2"] == course_tools.autograded_files(course, "ps1")["bob"]


def test_killed_at_any_point_then_resumed_matches_a_clean_run(serial, tmp_path):
    course, _, _, _ = serial
    reference = course_tools.gradebook(course, "ps1")
    reference_files = course_tools.autograded_files(course, "ps1")
    # Every student twice (alice, alice-2...): each killed run grades a few, by the clock, and
    # the Ctrl-C must still find students left (with 10, one CI run's first four runs graded 9,
    # and the Ctrl-C came after the last had finished).
    work = course_tools.prepare(tmp_path / "course", copies=2)
    # (progress line to wait for, seconds to wait, signal): during start-up, right after a
    # student is recorded, in the middle of grading; and a Ctrl-C, which stops it cleanly.
    # Each run counts only the students left ("[1/17]").
    points = [(None, 1.0, signal.SIGKILL), ("[1/", 0.0, signal.SIGKILL), ("[2/", 1.5, signal.SIGKILL),
              ("[1/", 2.5, signal.SIGKILL), ("[1/", 0.5, signal.SIGINT)]
    for line_start, delay, sig in points:
        p = subprocess.Popen([str(BIN), "ps1", "--course", str(work), "--jobs", "2"],
                             env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        seen = threading.Event()
        lines = []

        def watch():
            for line in p.stderr:
                lines.append(line)
                # ("[ 1/17]": the count is padded to the total's width)
                if line_start is None or line.replace(" ", "").startswith(line_start):
                    seen.set()
            seen.set()

        threading.Thread(target=watch, daemon=True).start()
        assert seen.wait(600)
        time.sleep(delay)
        p.send_signal(sig)
        stdout = p.stdout.read()
        p.wait(60)
        if sig == signal.SIGINT:
            left = len(reference) * 2 - len(list((work / ".isolate-grade" / "ps1" / "graded").iterdir()))
            assert p.returncode == 130, f"{left} students left after the Ctrl-C\n" + stdout + "".join(lines)
            assert "interrupted" in stdout and "stopping" in "".join(lines), stdout + "".join(lines)
        deadline = time.monotonic() + 15
        while leftovers(work) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not leftovers(work), f"left running after {sig.name} at {line_start}+{delay}s"
    code, report, out = batch(work, "--jobs", "2")
    assert code == 0, out
    assert sum(s["from_earlier_run"] for s in report["students"]) >= 1, "nothing was kept from the killed runs"
    assert sum(not s["from_earlier_run"] for s in report["students"]) >= 1, "nothing was left for the last run"
    got, got_files = course_tools.gradebook(work, "ps1"), course_tools.autograded_files(work, "ps1")
    assert len(got) == 2 * len(reference)
    for student, want in reference.items():
        for name in (student, f"{student}-2"):
            assert got[name] == want, name
            assert got_files[name] == reference_files[student], name


def _with_cell(nb_path, source):
    nb = nbformat.read(nb_path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution"))
    cell.source = source
    nbformat.write(nb, nb_path)


def test_bad_submissions_get_their_verdicts_and_nobody_else_is_affected(tmp_path):
    course = course_tools.prepare(tmp_path / "course")
    sub = course / "submitted"
    alice = sub / "alice"
    outside = tmp_path / "outside"
    outside.mkdir()
    trap = outside / "trap.fifo"
    os.mkfifo(trap)

    def student(name):
        shutil.copytree(alice, sub / name)
        return sub / name / "ps1"

    os.symlink("../../../source/ps1/problem1.ipynb", student("mallory") / "notes.txt")
    os.symlink(trap, sub / "mallory" / "ps1" / "trap.txt")
    os.mkfifo(student("oscar") / "pipe")
    os.link(student("peggy") / "problem1.ipynb", sub / "peggy" / "ps1" / "copy.ipynb")
    with open(student("trent") / "big.bin", "wb") as f:
        f.truncate(200 << 20)  # sparse: past the 100 MB per-file limit
    shutil.copytree(alice, outside / "sybil")
    os.symlink(outside / "sybil", sub / "sybil")
    (student("victor") / "problem1.ipynb").write_text("{ this is not a notebook")
    _with_cell(student("walter") / "problem1.ipynb",
               "hog = []\nwhile True:\n    hog.append(b'x' * (50 << 20))")
    hostile = _hostile_submissions(student)

    # anyone opening the FIFO for reading would release this writer
    opened = threading.Event()

    def writer():
        with open(trap, "w"):
            opened.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    # nbgrader's worker is resident at about 200 MB; the metadata bomb needs gigabytes
    # (walter's memory bomb fails his notebook, as nbgrader does: --on-kernel-death fail; the
    # default, restart, is tests/e2e/test_kernel_death.py's)
    code, report, out = batch(course, "--jobs", "2", "--worker-memory", "800M", "--on-kernel-death", "fail")
    read_by_someone = opened.is_set()
    os.close(os.open(trap, os.O_RDONLY | os.O_NONBLOCK))  # let the writer go
    t.join(5)
    assert not read_by_someone, "a symlink's target was opened"

    assert code == 1, out  # not everyone graded, and no fault of ours
    by = {s["student"]: s for s in report["students"]}
    want = {"mallory": "rejected", "oscar": "rejected", "peggy": "rejected", "trent": "rejected",
            "sybil": "rejected", "victor": "rejected", "walter": "memory-limit", **hostile}
    assert {s: by[s]["verdict"] for s in want} == want, out
    assert "notes.txt: a symbolic link" in by["mallory"]["message"]
    assert "pipe: a FIFO" in by["oscar"]["message"]
    assert "a hard link" in by["peggy"]["message"]
    assert "big.bin" in by["trent"]["message"] and "more than" in by["trent"]["message"]
    assert "symlink" in by["sybil"]["message"]
    assert "JSON" in by["victor"]["message"] or "json" in by["victor"]["message"], by["victor"]
    assert "problem1" in by["walter"]["message"]
    assert [nb["verdict"] for nb in by["walter"]["notebooks"]][0] == "memory-limit"
    _check_hostile(course, by, out)
    # the rejected were never handed to nbgrader: nothing of theirs was graded or copied
    for s in ["mallory", "oscar", "peggy", "trent", "sybil", "victor"] + [s for s, v in hostile.items() if v == "rejected"]:
        assert not (course / "autograded" / s).exists(), s
    assert not any((course / ".isolate-grade/ps1/submitted").iterdir())
    # everyone else, the control students, graded as expected
    got = scores(course_tools.gradebook(course, "ps1"))
    for s, per in EXPECTED.items():
        assert by[s]["verdict"] == "graded" and got[s] == per, s
    assert not leftovers(course)


def _kernel_reports(course, student, notebook):
    d = course / ".isolate-grade" / "ps1" / "kernels" / student / notebook
    return [json.loads(f.read_text()) for f in sorted(d.glob("kernel-*.json"))]


def test_kernels_end_at_once_and_a_kernel_that_ignores_it_still_ends_and_is_graded(tmp_path):
    """A notebook's kernel is ended by its client's SIGTERM, relayed by its supervisor, as soon
    as nbgrader has its outputs: no shutdown_request, no waiting for ipykernel to exit (src/route.py,
    `_end_at_once`). A student whose code ignores SIGTERM costs only their own notebook a
    second: the supervisor then kills the sandbox itself (`stopped_by: caller`), writes its
    report, and the student is graded in full."""
    course = course_tools.prepare(tmp_path / "course")
    shutil.copytree(course / "submitted" / "alice", course / "submitted" / "stubborn")
    nb_path = course / "submitted" / "stubborn" / "ps1" / "problem1.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("solution"))
    cell.source = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + cell.source
    nbformat.write(nb, nb_path)
    code, report, out = batch(course, "--jobs", "2", "--student", "alice", "--student", "stubborn")
    assert code == 0, out
    by = {s["student"]: s for s in report["students"]}
    got = scores(course_tools.gradebook(course, "ps1"))
    assert got["stubborn"] == got["alice"] == EXPECTED["alice"]
    assert [nb["verdict"] for nb in by["alice"]["notebooks"]] == ["ok", "ok"], by["alice"]
    assert by["stubborn"]["verdict"] == "graded" and by["stubborn"]["score"] == by["alice"]["score"], by["stubborn"]
    assert by["stubborn"]["notebooks"][1]["verdict"] == "ok", by["stubborn"]
    for notebook in ("problem1", "problem2"):
        [k] = _kernel_reports(course, "alice", notebook)
        assert (k["status"], k["signal"], k["relayed_signals"], k["shutdown_requested"]) == \
               ("signaled", "SIGTERM", ["SIGTERM"], False), k
    assert [nb["verdict"] for nb in by["stubborn"]["notebooks"]] == ["ok", "ok"], by["stubborn"]
    [k] = _kernel_reports(course, "stubborn", "problem1")
    assert (k["status"], k["signal"], k["stopped_by"], k["relayed_signals"], k["explanation"]["cause"]) == \
           ("signaled", "SIGKILL", "caller", ["SIGTERM"], "caller"), k
    assert not leftovers(course)


FORGED = "\x1b]0;pwned\x07\x1b[2J\r\x1b[2K\u202ealice  graded  full marks\x1b[8m"
FORMULA = '=HYPERLINK("evil.example?q","click")'
HIDDEN = ["squares(11) ==", "sum_of_squares(11) =="]  # the fixture's hidden tests


def _write_json(path, doc):
    path.write_text(json.dumps(doc))


def _hostile_submissions(student):
    """Submissions aimed at the grader, each a copy of alice's: {student: expected verdict}."""
    ursula = student("ursula")
    nb = json.loads((ursula / "problem1.ipynb").read_text())
    cell = next(c for c in nb["cells"] if c["cell_type"] == "code")
    # 200 000 tiny outputs, 10 MB: past the default bound of 10 000 outputs
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "x"}] * 200_000
    _write_json(ursula / "problem1.ipynb", nb)
    cell["outputs"] = []
    # nested 100 000 deep: past the bound of 64 (and Python's recursion limit)
    deep = student("yvonne") / "problem1.ipynb"
    deep.write_text(json.dumps(nb)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    # within every bound (one cell, no output, 24 MB, depth 5), but 8 M objects in a cell's
    # metadata make nbgrader's worker need gigabytes: past --worker-memory
    cell["metadata"]["bomb"] = "BOMB"
    bomb = student("zelda") / "problem1.ipynb"
    bomb.write_text(json.dumps(nb).replace('"BOMB"', "[" + ",".join(["{}"] * 8_000_000) + "]"))
    del cell["metadata"]["bomb"]
    # file names: terminal escapes with a forged line, a formula, bytes that aren't UTF-8
    (student("xavier") / FORGED).write_text("notes")
    os.symlink("../../../source/ps1/problem1.ipynb", student("yusuf") / FORMULA)
    with open(os.path.join(os.fsencode(student("wendy")), b"caf\xe9-notes.txt"), "w") as f:
        f.write("notes")
    # a notebook nbgrader reads and fails on, with terminal escapes in its exception's text:
    # the student's error, in one line, without the log, escaped wherever it is shown
    _write_json(student("quentin") / "problem1.ipynb", {**nb, "nbformat": "\x1b[2J\x1b]0;pwned\x07 99"})
    # a cell nbformat's validator rejects: its exception quotes the cell, source and all
    weird = json.loads(json.dumps(nb))
    weird["cells"][0].update(cell_type="weird", source="QUOTED-CELL-SOURCE")
    _write_json(student("rachel") / "problem1.ipynb", weird)
    return {"ursula": "rejected", "yvonne": "rejected", "zelda": "error", "xavier": "rejected",
            "yusuf": "rejected", "wendy": "rejected", "quentin": "error", "rachel": "error"}


def _check_hostile(course, by, out):
    assert "--notebook-max-outputs" in by["ursula"]["message"] and "200000 outputs" in by["ursula"]["message"]
    assert "--notebook-max-depth" in by["yvonne"]["message"]
    assert "--worker-memory" in by["zelda"]["message"], by["zelda"]
    assert "control characters" in by["xavier"]["message"]
    assert by["yusuf"]["message"].startswith(FORMULA), by["yusuf"]
    assert "caf\\xe9-notes.txt: a name that is not UTF-8" in by["wendy"]["message"], by["wendy"]
    q = by["quentin"]["message"]
    assert q.startswith("problem1: nbformat.NBFormatError: ") and "logs/quentin.log" in q and len(q) < 400, q
    assert "\x1b[2J" in q, "the JSON report keeps the data"
    r = by["rachel"]["message"]
    assert r.startswith("problem1: nbformat.validator.NotebookValidationError") and "QUOTED-CELL" not in r, r
    logs = course / ".isolate-grade" / "ps1" / "logs"
    assert "pwned" in (logs / "quentin.log").read_text()
    for log in logs.iterdir():
        assert b"\x1b" not in log.read_bytes(), f"{log}: a raw escape"
    assert by["victor"]["message"].startswith("problem1.ipynb: not a notebook's JSON"), by["victor"]
    # nothing a student named reaches the terminal raw: no escape, no bidi override
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out, out
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x0d\\x1b[2K\\u{202e}alice  graded" in out, out
    assert not any(line.startswith("alice  graded") or line.startswith("\x1b") for line in out.splitlines())
    # nor a formula to the spreadsheet
    rows = list(csv.DictReader(open(course / "report.csv", newline="")))
    assert [r["message"][:2] for r in rows if r["student"] == "yusuf"] == ["'="]
    assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for r in rows for c in r.values()), rows
    # never the hidden tests, anywhere the instructor reads at a glance
    report_text = (course / "report.json").read_text()
    for h in HIDDEN:
        assert h not in out and h not in report_text, h
    assert all(len(s["message"] or "") < 600 for s in by.values())


HOLDER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from nbgrader.api import Gradebook, Student
locked, db, lock, who, hold = sys.argv[2] == "1", sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6])
if locked:
    # the lock the batch's workers and the install block's guard take (src/route.py)
    route = {}
    exec(open(sys.argv[7]).read(), route)
    held = route["_GradebookLock"](lock)
    route["_lock_gradebooks"](lambda: held)
with Gradebook(db) as gb:
    gb.db.add(Student(id=who))
    gb.db.flush()          # a write in an open transaction: SQLite's write lock is held
    print("holding", flush=True)
    time.sleep(hold)
    gb.db.commit()
print("ok", who)
"""


@pytest.mark.parametrize("locked", [True, False], ids=["with-the-lock", "without-it-sqlite-fails"])
def test_a_long_gradebook_writer_makes_others_wait_not_fail(tmp_path, locked):
    db = f"sqlite:///{tmp_path / 'gradebook.db'}"
    os.environ["PATH"] = course_tools.nbgrader_env()["PATH"]
    from nbgrader.api import Gradebook
    Gradebook(db).close()  # create it
    run = lambda who, hold: subprocess.Popen(  # noqa: E731
        [sys.executable, "-c", HOLDER, str(Path(__file__).parent), "1" if locked else "0", db,
         str(tmp_path / "gradebook.lock"), who, str(hold), str(ROOT / "src" / "route.py")],
        env=course_tools.nbgrader_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run("first", 10.0)  # longer than SQLite's 5 s busy timeout
    assert first.stdout.readline() == "holding\n"
    second = run("second", 0.0)
    outs = [p.communicate(timeout=60) for p in (first, second)]
    if locked:
        assert [p.returncode for p in (first, second)] == [0, 0], outs
        with Gradebook(db) as gb:
            assert sorted(s.id for s in gb.students) == ["first", "second"]
    else:
        # the control: this is the failure the lock exists for
        assert second.returncode != 0 and "database is locked" in outs[1][1], outs


def test_graded_students_are_skipped_unless_named_forced_or_resubmitted(serial):
    course, _, _, _ = serial
    before = course_tools.gradebook(course, "ps1")
    code, report, out = batch(course, "--jobs", "2")
    assert code == 0, out
    assert all(s["from_earlier_run"] for s in report["students"]), out
    assert "graded by an earlier run" in out
    code, report, out = batch(course, "--student", "bob", "--student", "carol")
    assert code == 0, out
    assert [(s["student"], s["from_earlier_run"]) for s in report["students"]] == [("bob", False), ("carol", False)]
    # a newer submission is regraded; the others are not
    ts = course / "submitted" / "dave" / "ps1" / "timestamp.txt"
    ts.write_text(ts.read_text().replace("12:03:00", "12:04:00"))
    code, report, out = batch(course)
    assert code == 0, out
    assert [s["student"] for s in report["students"] if not s["from_earlier_run"]] == ["dave"]
    code, report, out = batch(course, "--force", "--jobs", "2")
    assert code == 0 and not any(s["from_earlier_run"] for s in report["students"]), out
    after = course_tools.gradebook(course, "ps1")
    assert scores(after) == scores(before)
    # bad input: a clear error, exit 2, nothing graded
    for args, msg in [(["--student", "nobody"], "no submission of ps1"), (["--student", "../x"], "--student"),
                      (["--jobs", "0"], "--jobs"), (["--policy", "no/such.toml"], "no/such.toml")]:
        code, report, out = batch(course, *args)
        assert code == 2 and msg in out and report is None, (args, out)

"""A PostgreSQL gradebook (issue #16): nbgrader's db_url at a real server, a throwaway cluster
of Debian's PostgreSQL 15 (conftest.py's pg_cluster: a unix socket in a temp dir, password
auth), one database per test.

- the fixture course graded by the batch with 16 workers into PostgreSQL gives, row by row,
  the gradebook SQLite gets, and loses nothing;
- nbgrader's find-then-add writes, run at once by several processes through route.py's lock,
  don't collide (without the advisory lock, some fail with a unique violation); the lock is
  held in the database, and a lock connection that dropped is replaced;
- a gradebook that can't be reached (wrong password, server down, driver missing) stops the
  batch before any student is touched (exit 3), and its password is shown nowhere; a database
  other than SQLite or PostgreSQL is refused (exit 2);
- a server killed mid-batch: its students get `sandbox-error`, not a grade; the server back,
  the same command grades them, with the grades of an uninterrupted run;
- plain `nbgrader autograde` after `isolate-grade install` grades into PostgreSQL, and refuses
  or stops on the same gradebooks as the batch (2, 3).
"""

import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path


import make_course
from conftest import BIN, NEEDS_ROOT, ROOT, gradebook_at, grader_env, prepare_fixture, set_db_url, small_course

pytestmark = NEEDS_ROOT

EXPECTED = {s: per["ps1"] for s, per in make_course.EXPECTED.items() if "ps1" in per}


def batch(course: Path, assignment: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    report = course / "report.json"
    report.unlink(missing_ok=True)
    return subprocess.run([str(BIN), assignment, "--course", str(course), "--report", str(report), *args],
                          env=grader_env(), capture_output=True, text=True, timeout=timeout)


def everything_shown(course: Path, r: subprocess.CompletedProcess) -> str:
    """What anyone sees of a run: its output, the report, every log and file of the state."""
    seen = [r.stdout, r.stderr]
    for p in [course / "report.json", course / "report.csv", *(course / ".isolate-grade").rglob("*")]:
        if p.is_file():
            seen.append(p.read_text(errors="replace"))
    return "\n".join(seen)


def graded_markers(course: Path, assignment: str):
    d = course / ".isolate-grade" / assignment / "graded"
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def test_fixture_course_into_postgres_with_16_workers_matches_sqlite(pg_cluster, tmp_path):
    url = pg_cluster.create_db("fixture")
    lite = prepare_fixture(tmp_path / "sqlite")
    pg = prepare_fixture(tmp_path / "pg", url, copies=2)
    outs = {}
    for course, n in ((pg, 20), (lite, 10)):
        r = batch(course, "ps1", "--jobs", "16")
        outs[course] = r.stdout + r.stderr
        assert r.returncode == 0, outs[course]
        assert json.loads((course / "report.json").read_text())["counts"] == {"graded": n}
    assert not (pg / "gradebook.db").exists(), "the batch wrote a SQLite gradebook"
    got = gradebook_at(url, "fixture-course", "ps1")
    want = gradebook_at(f"sqlite:///{lite / 'gradebook.db'}", "fixture-course", "ps1")
    # every student twice (alice and alice-2), each row as SQLite has the student's
    assert len(want) == 10 and got == {name: row for s, row in want.items() for name in (s, f"{s}-2")}
    assert {s: {nb: v["score"] for nb, v in d["notebooks"].items()} for s, d in got.items() if "-" not in s} \
        == EXPECTED
    logs = "".join(p.read_text(errors="replace") for p in (pg / ".isolate-grade/ps1/logs").iterdir())
    assert "IntegrityError" not in logs and "UniqueViolation" not in logs
    assert pg_cluster.password not in everything_shown(pg, subprocess.CompletedProcess([], 0, outs[pg], ""))


def _race(url: str, lock_dir: str, student: str, barrier, errors) -> None:
    """One process: nbgrader's find-then-add of a student, with route.py's gradebook lock."""
    try:
        route: dict = {}
        exec(compile((ROOT / "src" / "route.py").read_text(), "route.py", "exec"), route)
        lock = route["_gradebook_lock"](url, os.path.join(lock_dir, "gradebook.lock"))
        route["_lock_gradebooks"](lambda: lock)
        from nbgrader.api import Gradebook

        barrier.wait(30)
        with Gradebook(url, "race") as gb:
            gb.update_or_create_student(student, first_name="S")
            gb.update_or_create_assignment("a1")
    except Exception as e:  # noqa: BLE001 (reported to the test)
        errors.put(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def test_nbgraders_concurrent_creations_do_not_collide_under_the_lock(pg_cluster, tmp_path):
    """Eight processes create the same new student and assignment at once, as eight workers
    (or a batch and a click) do with a student's first submission; each must succeed. Each has
    a lock directory of its own, as processes on different machines would (the course's
    flock is no lock between them): only the database's lock can keep them apart."""
    url = pg_cluster.create_db("race")
    from nbgrader.api import Gradebook

    with Gradebook(url, "race"):
        pass  # the tables
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for round_ in range(3):
        barrier = ctx.Barrier(8)
        procs = []
        for i in range(8):
            (tmp_path / f"host{i}").mkdir(exist_ok=True)
            procs.append(ctx.Process(target=_race, args=(url, str(tmp_path / f"host{i}"), f"s{round_}", barrier, errors)))
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert not found, found
    with Gradebook(url, "race") as gb:
        assert sorted(s.id for s in gb.students) == ["s0", "s1", "s2"]


def test_the_lock_is_held_in_the_database_and_survives_a_dropped_connection(pg_cluster, tmp_path):
    """route.py's advisory lock: held while a Gradebook is open (one key, granted, in the
    gradebook's database), released when it closes; a lock connection the server dropped is
    replaced on the next use."""
    url = pg_cluster.create_db("reconnect")
    route: dict = {}
    exec(compile((ROOT / "src" / "route.py").read_text(), "route.py", "exec"), route)
    lock = route["_gradebook_lock"](url, str(tmp_path / "gradebook.lock"))
    held = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database " \
           "WHERE l.locktype = 'advisory' AND l.granted AND d.datname = 'reconnect'"
    from sqlalchemy import text

    for _ in range(2):
        lock.acquire()
        lock.acquire()  # (Gradebooks nest)
        assert pg_cluster.sql(held).strip() == "1"
        lock.release()
        assert pg_cluster.sql(held).strip() == "1"
        pid = lock.conn.execute(text("SELECT pg_backend_pid()")).scalar()
        lock.release()
        assert pg_cluster.sql(held).strip() == "0"
        pg_cluster.sql(f"SELECT pg_terminate_backend({pid})")  # the next acquire finds it gone
    lock.close()
    assert not (tmp_path / "gradebook.lock").exists(), "a PostgreSQL gradebook takes no lock file"


def test_an_unreachable_or_refused_gradebook_stops_the_batch_before_anyone_is_touched(pg_cluster, tmp_path):
    """Wrong password, server down, driver missing: exit 3; another database: exit 2. Nothing
    graded, nothing of a student's touched, and the password shown nowhere."""
    url = pg_cluster.create_db("unreachable")
    c, _ = small_course(tmp_path, "course", url, students=2)
    wrong = "wrong-" + pg_cluster.password[::-1]
    (tmp_path / "nothing").mkdir()
    cases = [
        ("wrong password", pg_cluster.url("unreachable", password=wrong), 3, "password authentication failed"),
        ("server down", pg_cluster.url("unreachable", socket_dir=tmp_path / "nothing"), 3, "No such file"),
        ("no driver", url.replace("postgresql+psycopg://", "postgresql+psycopg2://"), 3, "No module named 'psycopg2'"),
        ("mysql", "mysql+pymysql://grader:hunter2-secret@localhost/gradebook", 2, "is a mysql database"),
    ]
    before = sorted(p.relative_to(c.root) for p in c.root.rglob("*") if ".isolate-grade" not in p.parts)
    for case, bad, code, why in cases:
        set_db_url(c.root, bad)  # (the last assignment wins)
        r = batch(c.root, "env1")
        assert r.returncode == code, (case, r.stdout + r.stderr)
        assert why in r.stderr, (case, r.stderr)
        if code == 3:
            assert "nothing was graded" in r.stderr and "cannot be opened" in r.stderr, (case, r.stderr)
            assert "grader:***@" in r.stderr, (case, r.stderr)
        else:
            assert "SQLite" in r.stderr and "PostgreSQL" in r.stderr, r.stderr
        shown = everything_shown(c.root, r)
        for secret in (wrong, pg_cluster.password, "hunter2-secret"):
            assert secret not in shown, (case, secret)
        after = sorted(p.relative_to(c.root) for p in c.root.rglob("*") if ".isolate-grade" not in p.parts)
        # (the batch's lock made autograded/ itself, empty, as on any run)
        assert set(after) - set(before) <= {Path("autograded")}, case
        assert not any((c.root / "autograded").iterdir()) and set(before) <= set(after), case
        assert not graded_markers(c.root, "env1"), case
        assert not list((c.root / ".isolate-grade" / "env1" / "submitted").glob("*")), case
    assert gradebook_at(url, "env-course", "env1") == {}


def test_a_server_killed_mid_batch_costs_faults_and_a_rerun_completes(pg_cluster, tmp_path):
    url = pg_cluster.create_db("killed")
    c, want = small_course(tmp_path, "course", url, students=6, sleep=1.0)
    report = c.root / "report.json"
    p = subprocess.Popen([str(BIN), "env1", "--course", str(c.root), "--jobs", "2", "--report", str(report)],
                         env=grader_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(graded_markers(c.root, "env1")) < 2 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.1)
        assert p.poll() is None, "the batch ended before the server was killed"
        pg_cluster.stop()
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        try:
            pg_cluster.sql("SELECT 1")
        except AssertionError:
            pg_cluster.start()
    assert p.returncode == 3, out + err
    first = json.loads(report.read_text())
    verdicts = {s["student"]: s["verdict"] for s in first["students"]}
    assert set(verdicts.values()) <= {"graded", "sandbox-error"}, verdicts
    assert "sandbox-error" in verdicts.values() and list(verdicts.values()).count("graded") >= 2, verdicts
    for s in first["students"]:
        if s["verdict"] == "sandbox-error":
            assert s["score"] is None, s
    assert pg_cluster.password not in everything_shown(c.root, subprocess.CompletedProcess([], 3, out, err))
    r = batch(c.root, "env1", "--jobs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    again = {s["student"]: s for s in json.loads(report.read_text())["students"]}
    assert {s for s, v in again.items() if not v["from_earlier_run"]} == \
        {s for s, v in verdicts.items() if v != "graded"}
    got = gradebook_at(url, "env-course", "env1")
    assert {s: d["notebooks"]["env"]["score"] for s, d in got.items()} == want


def test_plain_nbgrader_after_install_grades_into_postgres(pg_cluster, install_twin, tmp_path):
    url = pg_cluster.create_db("plain")
    c, want = small_course(tmp_path, "course", url, students=2)
    install_twin(c.root, "pgtest-")
    r = c.nbgrader("autograde", "env1", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    got = gradebook_at(url, "env-course", "env1")
    assert {s: d["notebooks"]["env"]["score"] for s, d in got.items()} == want
    assert not (c.root / "gradebook.db").exists()
    # the same gradebooks refused or found unreachable as by the batch, before anything is staged
    set_db_url(c.root, "mysql://grader:hunter2-secret@localhost/gb")
    r = c.nbgrader("autograde", "env1", "--force", check=False)
    assert r.returncode == 2 and "is a mysql database" in r.stderr, r.stdout + r.stderr
    assert "hunter2-secret" not in r.stdout + r.stderr
    set_db_url(c.root, pg_cluster.url("plain", password="wrong-pw-123"))
    r = c.nbgrader("autograde", "env1", "--force", check=False)
    assert r.returncode == 3 and "cannot be opened" in r.stderr, r.stdout + r.stderr
    assert "wrong-pw-123" not in r.stdout + r.stderr
    assert not list((c.root / ".isolate-grade").glob("staged-*"))

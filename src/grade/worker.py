"""isolate-grade's grading worker: imports nbgrader once, then autogrades one student per request.

Started by `isolate-grade ASSIGNMENT` (src/grade/worker.rs) as `python -c <this file>`, as the
instructor, in the course directory. It is nbgrader's own `autograde` (the Autograde converter,
as `NbGraderAPI.autograde` and formgrader call it), with three changes of configuration and one
of behaviour:

- the submissions are read from the checked copies the orchestrator made (`submitted_directory`);
- every notebook runs in the sandboxed twin (one of the kernelspecs the orchestrator wrote) of
  the kernel its metadata names, routed by the same code `isolate-grade install` puts into
  nbgrader_config.py (src/route.py), with the batch's twins; the twin writes its verdict to a
  directory per student and notebook (ISOLATE_GRADE_REPORT_DIR);
- every use of the gradebook holds an exclusive lock shared by all the workers. nbgrader opens
  the gradebook briefly and often; SQLite lets one writer in at a time, and a reader that wants
  to write while another process writes gets "database is locked" at once, without waiting
  (nbgrader#174). Executing notebooks, the slow part, holds no lock.

Protocol: JSON lines. The first line on stdin is the setup; the worker answers {"ready": ...} or
{"fatal": "..."}, then reads {"student": "..."} and answers with the result, until end of input.
Answers go to the original stdout; everything else anyone prints goes to stderr (the log).
"""

import fcntl
import json
import os
import sys
import time
import traceback

PROTOCOL = None


def answer(msg):
    PROTOCOL.write(json.dumps(msg) + "\n")
    PROTOCOL.flush()


class GradebookLock:
    """An flock held while any Gradebook of this process is open (they nest)."""

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.depth = 0
        self.waited = 0.0

    def acquire(self):
        if self.depth == 0:
            t = time.monotonic()
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            self.waited += time.monotonic() - t
        self.depth += 1

    def release(self):
        self.depth -= 1
        if self.depth == 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def reset(self):
        """After a submission: a Gradebook nbgrader left open must not keep the lock."""
        leaked = self.depth
        if self.depth:
            self.depth = 0
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return leaked


def lock_the_gradebook(lock):
    from nbgrader import api

    init, close = api.Gradebook.__init__, api.Gradebook.close

    def locked_init(self, *args, **kwargs):
        lock.acquire()
        self._isolate_grade_locked = True
        try:
            init(self, *args, **kwargs)
        except BaseException:
            self._isolate_grade_locked = False
            lock.release()
            raise

    def unlocking_close(self):
        try:
            close(self)
        finally:
            if getattr(self, "_isolate_grade_locked", False):
                self._isolate_grade_locked = False
                lock.release()

    api.Gradebook.__init__ = locked_init
    api.Gradebook.close = unlocking_close


def setup(cfg):
    os.chdir(cfg["course"])
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (cfg["jupyter_path"], os.environ.get("JUPYTER_PATH")) if p)
    # nbgrader runs `alembic` from PATH when it creates a gradebook
    os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))

    from traitlets.config import Config
    from nbgrader.apps.nbgraderapp import NbGraderApp
    from nbgrader.converters import Autograde

    app = NbGraderApp()
    # the Jupyter config path and the course's nbgrader_config.py, as `nbgrader autograde` loads them
    app.initialize([])
    over = Config()
    over.CourseDirectory.root = cfg["course"]
    over.CourseDirectory.submitted_directory = cfg["submitted"]
    app.update_config(over)
    # Replaces nbgrader's Execute step (or the one of install's block in the course's config).
    route = {}
    exec(compile(cfg["route"], "isolate-grade:route.py", "exec"), route)
    route["_isolate_grade"](app.config, cfg["twins"], cfg["languages"])
    app.coursedir.root = cfg["course"]
    app.coursedir.submitted_directory = cfg["submitted"]

    lock = GradebookLock(cfg["lock"])
    lock_the_gradebook(lock)

    from nbgrader.api import Gradebook, MissingEntry

    assignment = cfg["assignment"]
    with Gradebook(app.coursedir.db_url, app.coursedir.course_id) as gb:
        try:
            a = gb.find_assignment(assignment)
        except MissingEntry:
            return None, f"the gradebook has no assignment {assignment!r}: run `nbgrader generate_assignment {assignment}` first"
        notebooks = sorted(nb.name for nb in a.notebooks)
        if not notebooks:
            return None, f"assignment {assignment!r} has no notebooks in the gradebook: run `nbgrader generate_assignment {assignment}`"
    return (app, Autograde, lock, notebooks), None


def scores(app, assignment, student):
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(app.coursedir.db_url, app.coursedir.course_id) as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            return None, None
        nbs = {
            nb.name: {
                "score": float(nb.score),
                "max_score": float(nb.max_score),
                "needs_manual_grade": bool(nb.needs_manual_grade),
            }
            for nb in sub.notebooks
        }
        return nbs, float(sub.total_seconds_late or 0)


def grade(ctx, cfg, student):
    from nbgrader.utils import capture_log, temp_attrs

    app, Autograde, lock, _ = ctx
    assignment = cfg["assignment"]
    reports = os.path.join(cfg["reports"], student)
    timings = {}
    base = Autograde.convert_single_notebook

    def convert_single_notebook(self, notebook_filename):
        name = os.path.splitext(os.path.basename(notebook_filename))[0]
        os.environ["ISOLATE_GRADE_REPORT_DIR"] = os.path.join(reports, name)
        os.makedirs(os.environ["ISOLATE_GRADE_REPORT_DIR"], exist_ok=True)
        t = time.monotonic()
        try:
            return base(self, notebook_filename)
        finally:
            timings[name] = time.monotonic() - t
            os.environ.pop("ISOLATE_GRADE_REPORT_DIR", None)

    t0 = time.monotonic()
    Autograde.convert_single_notebook = convert_single_notebook
    try:
        with temp_attrs(app.coursedir, assignment_id=assignment, student_id=student):
            converter = Autograde(coursedir=app.coursedir, parent=app)
            converter.force = True
            converter.create_student = True
            result = capture_log(converter)
    finally:
        Autograde.convert_single_notebook = base
        leaked = lock.reset()
    out = {
        "student": student,
        "success": bool(result.get("success")),
        "wall": time.monotonic() - t0,
        "notebook_wall": timings,
        "log": result.get("log", ""),
    }
    if leaked:
        out["log"] += f"\n[isolate-grade] {leaked} gradebook(s) left open by nbgrader; lock released\n"
    if not out["success"]:
        out["error"] = result.get("error", "")
    try:
        out["notebooks"], out["seconds_late"] = scores(app, assignment, student)
    except Exception:
        out["success"] = False
        out["error"] = (out.get("error") or "") + "reading the scores:\n" + traceback.format_exc()
    return out


def main():
    global PROTOCOL
    PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    cfg = json.loads(sys.stdin.readline())
    try:
        ctx, fatal = setup(cfg)
    except Exception:
        ctx, fatal = None, "starting nbgrader failed:\n" + traceback.format_exc()
    if fatal:
        answer({"fatal": fatal})
        return 2
    answer({"ready": {"pid": os.getpid(), "notebooks": ctx[3]}})
    for line in sys.stdin:
        student = json.loads(line)["student"]
        try:
            out = grade(ctx, cfg, student)
        except Exception:
            out = {"student": student, "success": False, "error": traceback.format_exc()}
        answer(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

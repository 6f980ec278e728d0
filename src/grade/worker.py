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
Strings are made valid UTF-8 first (a surrogate escape, from a name that isn't, becomes the
text `\\udcXX`): an answer is always readable.

When nbgrader fails on a submission, the answer says how, as facts for the orchestrator to
classify (src/grade/mod.rs, `classify`): the first exception raised out of the steps nbgrader
runs for it (init_destination, init_assignment, each convert_single_notebook, set_permissions),
before nbgrader swallows it into its log, with its type, errno, the notebook, the first line of
its message (cut short: the rest of a message can quote the notebook, hidden tests included),
and whether it is ours (this file's own steps, or reading the scores) rather than nbgrader's.
"""

import io
import json
import os
import sys
import time
import traceback

from typing import Any, Callable, Dict, List, Optional

PROTOCOL = None

# How much of an exception's first line an answer carries.
SUMMARY_CHARS = 200

# What the log shows escaped, as src/escape.rs does: C0 but newline and tab, DEL, C1, and the
# invisible format characters (bidi overrides and isolates, zero-width ones, separators...).
UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}
UNSAFE.update({c: f"\\u{{{c:04x}}}" for c in [*range(0x80, 0xA0), 0xAD, 0x61C, 0x180E, *range(0x200B, 0x2010),
                                              *range(0x2028, 0x202F), *range(0x2060, 0x2070), 0xFEFF,
                                              *range(0xFFF9, 0xFFFC), *range(0xE0000, 0xE0080)]})


class EscapingStream(io.TextIOBase):
    """The log (stderr) with every unsafe character escaped: nbgrader logs file names and
    messages a student chose, and the instructor reads the log in a terminal."""

    def __init__(self, raw: io.TextIOBase):
        self.raw = raw

    def write(self, s: str) -> int:
        self.raw.write(s.translate(UNSAFE))
        return len(s)

    def flush(self) -> None:
        self.raw.flush()

    def writable(self) -> bool:
        return True


def utf8(value: Any) -> Any:
    """`value` with every string valid UTF-8 (lone surrogates as `\\udcXX` text)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {utf8(k): utf8(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [utf8(v) for v in value]
    return value


def answer(msg: Dict[str, Any]) -> None:
    PROTOCOL.write(json.dumps(utf8(msg)) + "\n")
    PROTOCOL.flush()


def failure(exc: BaseException, notebook: Optional[str] = None, ours: bool = False) -> Dict[str, Any]:
    """The facts of an exception, without its message past the first line."""
    kind = type(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return {
        "type": kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}",
        "errno": exc.errno if isinstance(exc, OSError) else None,
        "notebook": notebook,
        "summary": lines[0][:SUMMARY_CHARS] if lines else "",
        "ours": ours,
    }


class OurFault(Exception):
    """A step of this worker's own failed (not nbgrader on the submission)."""


def notebook_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def recording(method: Callable, seen: List[Dict[str, Any]], per_notebook: bool) -> Callable:
    """`method`, recording the first exception it raises (nbgrader logs and swallows it);
    `per_notebook`: its first argument is the notebook's path."""

    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except BaseException as e:
            if not seen:
                cause = e.__cause__ if isinstance(e, OurFault) and e.__cause__ else e
                notebook = notebook_name(args[0]) if per_notebook and args else None
                seen.append(failure(cause, notebook, ours=isinstance(e, OurFault)))
            raise

    return wrapper


def setup(cfg: Dict[str, Any]):
    os.chdir(cfg["course"])
    # the block `isolate-grade install` writes into nbgrader_config.py stages and locks for
    # formgrader and plain nbgrader; here the batch does both itself
    os.environ["ISOLATE_GRADE_BATCH_WORKER"] = "1"
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

    # every gradebook use holds the course's gradebook lock (src/route.py)
    lock = route["_GradebookLock"](cfg["lock"])
    route["_lock_gradebooks"](lambda: lock)

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


def scores(app, assignment: str, student: str):
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


def grade(ctx, cfg: Dict[str, Any], student: str) -> Dict[str, Any]:
    from nbgrader.utils import capture_log, temp_attrs

    app, Autograde, lock, _ = ctx
    assignment = cfg["assignment"]
    reports = os.path.join(cfg["reports"], student)
    timings = {}
    seen = []
    base = Autograde.convert_single_notebook

    def convert_single_notebook(self, notebook_filename):
        name = notebook_name(notebook_filename)
        try:
            os.environ["ISOLATE_GRADE_REPORT_DIR"] = os.path.join(reports, name)
            os.makedirs(os.environ["ISOLATE_GRADE_REPORT_DIR"], exist_ok=True)
        except OSError as e:
            raise OurFault("the kernels' report directory") from e
        t = time.monotonic()
        try:
            return base(self, notebook_filename)
        finally:
            timings[name] = time.monotonic() - t
            os.environ.pop("ISOLATE_GRADE_REPORT_DIR", None)

    steps = ["init_destination", "init_assignment", "convert_single_notebook", "set_permissions"]
    originals = {step: getattr(Autograde, step) for step in steps}
    t0 = time.monotonic()
    Autograde.convert_single_notebook = convert_single_notebook
    for step in steps:
        setattr(Autograde, step, recording(getattr(Autograde, step), seen, step == "convert_single_notebook"))
    try:
        with temp_attrs(app.coursedir, assignment_id=assignment, student_id=student):
            converter = Autograde(coursedir=app.coursedir, parent=app)
            converter.force = True
            converter.create_student = True
            result = capture_log(converter)
    finally:
        for step, original in originals.items():
            setattr(Autograde, step, original)
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
        out["failure"] = seen[0] if seen else None
    try:
        out["notebooks"], out["seconds_late"] = scores(app, assignment, student)
    except Exception as e:
        out["success"] = False
        out["error"] = (out.get("error") or "") + "reading the scores:\n" + traceback.format_exc()
        out["failure"] = failure(e, ours=True)
    return out


def main() -> int:
    global PROTOCOL
    PROTOCOL = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stderr = EscapingStream(sys.stderr)
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
        except Exception as e:
            print(traceback.format_exc(), file=sys.stderr)
            out = {"student": student, "success": False, "error": traceback.format_exc(),
                   "failure": failure(e, ours=True)}
        answer(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""isolate-grade's grading worker: imports nbgrader once, then autogrades one student per request.

Started by `isolate-grade ASSIGNMENT` (src/grade/worker.rs) as `python -c <this file>`, as the
instructor, in the course directory. It is nbgrader's own `autograde` (the Autograde converter,
as `NbGraderAPI.autograde` and formgrader call it), with three changes of configuration and one
of behaviour:

- the submissions are read from the checked copies the orchestrator made (`submitted_directory`);
- every notebook runs in the sandboxed twin (one of the kernelspecs the orchestrator wrote) of
  the kernel its metadata names, routed by the same code `isolate-grade install` puts into
  nbgrader_config.py (src/route.py), with the batch's twins; each kernel writes its verdict to
  a file of its own in the directory of its student and notebook (`--report`);
- every use of the gradebook holds an exclusive lock shared by all the workers. nbgrader opens
  the gradebook briefly and often; SQLite lets one writer in at a time, and a reader that wants
  to write while another process writes gets "database is locked" at once, without waiting
  (nbgrader#174). A PostgreSQL gradebook's lock is an advisory lock in its database (route.py,
  `_gradebook_lock`); another database is refused. Executing notebooks, the slow part, holds
  no lock. A gradebook that can't be opened at start is a "fatal" with fault "gradebook".

Two changes make it cheaper than `nbgrader autograde` without changing what it does: one
SQLAlchemy engine per gradebook for the worker's life (`share_engines`), and no IRI grammar
built at import (`skip_unused_grammar`). A kernel is ended at once when its notebook is done
(src/route.py, `_end_at_once`).

Protocol (src/grade/protocol.rs has the same messages): JSON lines, each an object tagged by
"msg". The first line on stdin is the setup (with the protocol's version, checked); the worker
answers "ready" (with its version and nbgrader's) or "fatal", then reads "grade" requests and
answers each with an "answer", until end of input. `encode` and `decode` are the one place
messages are written and read. Answers go to the original stdout; everything else anyone prints
goes to stderr (the log). Strings are made valid UTF-8 first (a surrogate escape, from a name
that isn't, becomes the text `\\udcXX`): an answer is always readable. An answer names each
kernel's report file, per notebook: `<reports>/<student>/<notebook>/kernel-<uuid>.json`, given to
the kernel on its command line (`--report`, with `--submission`) by route.py, which tells us
each one (`on_kernel_report`), and, per notebook, each end of a kernel the student's code made
and grading went on past (`kernel_deaths`: route.py's `on_kernel_restart`). The setup's
`on_kernel_death` and `max_restarts` (the batch's options; None: the course's settings) become
`c.IsolateGrade.on_kernel_death` and `max_kernel_restarts` over the course's config.

The worker patches nbgrader's internals: it refuses an nbgrader outside the range it was tested
with (TESTED_NBGRADER), unless ISOLATE_GRADE_UNTESTED_NBGRADER=1.

When nbgrader fails on a submission, the answer says how, as facts for the orchestrator to
classify (src/grade/mod.rs, `classify`): the first exception raised out of the steps nbgrader
runs for it (init_destination, init_assignment, each convert_single_notebook, set_permissions),
before nbgrader swallows it into its log, with its type, errno, the notebook, the first line of
its message (cut short: the rest of a message can quote the notebook, hidden tests included),
and whether it is ours (this file's own steps, or reading the scores) rather than nbgrader's.
"""

import dataclasses
import io
import json
import os
import sys
import time
import traceback

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, TextIO, Tuple, Type, Union

# The version of the messages below; src/grade/protocol.rs's PROTOCOL must be the same.
PROTOCOL = 3

# The nbgrader releases this worker was tested with (it patches nbgrader's Autograde and
# Gradebook): at least the first, below the second. Another refuses to start unless
# ISOLATE_GRADE_UNTESTED_NBGRADER=1 (then it is the instructor's risk, said in the log).
TESTED_NBGRADER = ((0, 9), (0, 10))
UNTESTED_NBGRADER = "ISOLATE_GRADE_UNTESTED_NBGRADER"


# The messages, as src/grade/protocol.rs has them: one JSON object a line, tagged by "msg".
@dataclass(frozen=True)
class Setup:
    protocol: int
    course: str
    assignment: str
    submitted: str
    twins: Dict[str, str]
    languages: Dict[str, str]
    route: str
    jupyter_path: str
    lock: str
    reports: str
    # `--on-kernel-death` ("restart" | "fail") and `--max-restarts`; None: the course's
    # nbgrader_config.py decides (c.IsolateGrade.on_kernel_death, max_kernel_restarts)
    on_kernel_death: Optional[str]
    max_restarts: Optional[int]


@dataclass(frozen=True)
class Grade:
    student: str


@dataclass(frozen=True)
class Ready:
    protocol: int
    pid: int
    notebooks: List[str]
    nbgrader: str
    # the gradebook's database, as SQLAlchemy names its backend ("sqlite", "postgresql"...)
    gradebook: str


@dataclass(frozen=True)
class Fatal:
    error: str
    # None: the worker can't grade this assignment (bad input); "gradebook": the gradebook can't
    # be reached (server down, refused login, its driver missing), a fault. Left out when None.
    fault: Optional[str] = None


@dataclass(frozen=True)
class NotebookScore:
    score: float
    max_score: float
    needs_manual_grade: bool


@dataclass(frozen=True)
class Failure:
    type: str
    errno: Optional[int]
    notebook: Optional[str]
    summary: str
    ours: bool


@dataclass(frozen=True)
class KernelDeath:
    """An end of a notebook's kernel its student's code made (src/route.py, `_KernelDeaths`)."""
    cell: int
    grade_id: Optional[str]
    cause: str
    words: str
    replay: bool
    restarted: bool


@dataclass
class Answer:
    student: str
    success: bool
    wall: float = 0.0
    notebook_wall: Dict[str, float] = field(default_factory=dict)
    log: str = ""
    error: Optional[str] = None
    notebooks: Optional[Dict[str, NotebookScore]] = None
    seconds_late: Optional[float] = None
    failure: Optional[Failure] = None
    kernel_reports: Dict[str, List[str]] = field(default_factory=dict)
    kernel_deaths: Dict[str, List[KernelDeath]] = field(default_factory=dict)


Incoming = Union[Setup, Grade]
Outgoing = Union[Ready, Fatal, Answer]
TAGS: Dict[type, str] = {Setup: "setup", Grade: "grade", Ready: "ready", Fatal: "fatal", Answer: "answer"}
INCOMING: Dict[str, Type[Any]] = {"setup": Setup, "grade": Grade}


class ProtocolError(Exception):
    """A line that is not a message of ours, or of another protocol."""


def encode(msg: Union[Incoming, Outgoing]) -> str:
    """One line (without its newline), every string valid UTF-8 and without secrets (`scrub`)."""
    data = dataclasses.asdict(msg)
    if isinstance(msg, Fatal) and msg.fault is None:
        del data["fault"]  # a fatal's shape never changes
    return json.dumps(scrub(utf8({"msg": TAGS[type(msg)], **data})))


def decode(line: str) -> Incoming:
    """A line from the batch; a setup of another protocol, an unknown message or field is a
    ProtocolError."""
    try:
        data = json.loads(line)
    except ValueError as e:
        raise ProtocolError(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    tag = data.pop("msg", None)
    kind = INCOMING.get(tag)
    if kind is None:
        raise ProtocolError(f"unknown message {tag!r}")
    if kind is Setup and data.get("protocol") != PROTOCOL:
        raise ProtocolError(
            f"the batch speaks protocol {data.get('protocol')!r}, this worker speaks {PROTOCOL} "
            "(worker.py and the binary must come from the same build)")
    names = {f.name for f in dataclasses.fields(kind)}
    if set(data) != names:
        raise ProtocolError(f"{tag}: unknown fields {sorted(set(data) - names)}, missing {sorted(names - set(data))}")
    return kind(**data)


class Channel:
    """Where the answers go: the original stdout (everything else anyone prints goes to the log)."""

    def __init__(self, out: TextIO):
        self.out = out

    def send(self, msg: Outgoing) -> None:
        self.out.write(encode(msg) + "\n")
        self.out.flush()


def version_tuple(version: str) -> Tuple[int, ...]:
    """The leading numbers of a version: "0.9.6" is (0, 9, 6), "0.10.0rc1" (0, 10, 0)."""
    import re

    m = re.match(r"\d+(\.\d+)*", version.strip())
    return tuple(int(n) for n in m.group(0).split(".")) if m else ()


def nbgrader_refused(version: str, env: Dict[str, str]) -> Optional[str]:
    """Why this nbgrader must not be patched, or None."""
    low, high = TESTED_NBGRADER
    if low <= version_tuple(version) < high:
        return None
    tested = f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"
    if env.get(UNTESTED_NBGRADER) == "1":
        print(f"isolate-grade: nbgrader {version} is not among those tested ({tested}); "
              f"going on because {UNTESTED_NBGRADER}=1", file=sys.stderr)
        return None
    return (f"nbgrader {version} is not a version isolate-grade was tested with ({tested}); its worker patches "
            f"nbgrader's internals, so it refuses to grade with it. Install a tested nbgrader, or set "
            f"{UNTESTED_NBGRADER}=1 to try anyway")


# How much of an exception's first line an answer carries.
SUMMARY_CHARS = 200

# What the log shows escaped, as src/escape.rs does: C0 but newline and tab, DEL, C1, and the
# invisible format characters (bidi overrides and isolates, zero-width ones, separators...).
UNSAFE = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F] if c not in (0x09, 0x0A)}
UNSAFE.update({c: f"\\u{{{c:04x}}}" for c in [*range(0x80, 0xA0), 0xAD, 0x61C, 0x180E, *range(0x200B, 0x2010),
                                              *range(0x2028, 0x202F), *range(0x2060, 0x2070), 0xFEFF,
                                              *range(0xFFF9, 0xFFFC), *range(0xE0000, 0xE0080)]})


# A password in a database URL (`postgresql+psycopg://user:PASSWORD@host/db`, the gradebook's
# CourseDirectory.db_url) or in a libpq connection string (`password=PASSWORD`): what nbgrader,
# SQLAlchemy or a driver may quote in an error or a log line.
URL_PASSWORD = r"(?P<keep>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^@\s]*@"
KEYWORD_PASSWORD = r"(?P<key>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|[^\s'\"]+)"


def scrub(value: Any) -> Any:
    """`value` with every password in a database URL or connection string replaced by `***`:
    applied to every message the worker sends and every line of its log, so a gradebook's
    password is never shown (on the terminal, in the report, in a log)."""
    import re

    if isinstance(value, str):
        value = re.sub(URL_PASSWORD, lambda m: m.group("keep") + "***@", value)
        return re.sub(KEYWORD_PASSWORD, lambda m: m.group("key") + "***", value, flags=re.I)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


class EscapingStream(io.TextIOBase):
    """The log (stderr) with every unsafe character escaped: nbgrader logs file names and
    messages a student chose, and the instructor reads the log in a terminal. Passwords are
    scrubbed from it too (`scrub`)."""

    def __init__(self, raw: io.TextIOBase):
        self.raw = raw

    def write(self, s: str) -> int:
        self.raw.write(scrub(s).translate(UNSAFE))
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


def failure(exc: BaseException, notebook: Optional[str] = None, ours: bool = False) -> Failure:
    """The facts of an exception, without its message past the first line."""
    kind = type(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return Failure(
        type=kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}",
        errno=exc.errno if isinstance(exc, OSError) else None,
        notebook=notebook,
        summary=lines[0][:SUMMARY_CHARS] if lines else "",
        ours=ours,
    )


class OurFault(Exception):
    """A step of this worker's own failed (not nbgrader on the submission)."""


def notebook_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def recording(method: Callable, seen: List[Failure], per_notebook: bool) -> Callable:
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


# How long nbgrader waits for a cell's last output after its reply, unless the course says
# (nbclient's default is 4 s, after which nbgrader fails the notebook): the batch runs more
# workers than CPUs, and on a loaded machine a kernel's output can be late, never lost.
IOPUB_TIMEOUT = 30

# A timeline of every notebook, for the benchmark (bench/batch.py): the file this variable
# names gets a JSON line per step. Unset (the default): nothing is measured or written.
TRACE = "ISOLATE_GRADE_TRACE"


class Trace:
    """Each step of each notebook as it happens: {"t": monotonic seconds, "cpu": this worker's
    CPU seconds, "kids": its reaped children's (the kernels' supervisors and all they ran),
    "pid", "student", "notebook", "event", ...}. One line per write, appended, so that the
    workers of a batch can share the file."""

    def __init__(self, path: Optional[str]) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600) if path else None
        self.student: Optional[str] = None
        self.notebook: Optional[str] = None

    def __call__(self, event: str, **fields: Any) -> None:
        if self.fd is None:
            return
        import resource

        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = {"t": time.monotonic(), "cpu": time.process_time(), "kids": kids.ru_utime + kids.ru_stime,
                "pid": os.getpid(), "student": self.student, "notebook": self.notebook, "event": event, **fields}
        os.write(self.fd, (json.dumps(utf8(line)) + "\n").encode())


class KernelReports:
    """The report file of each kernel route.py started, by notebook (the one being converted)."""

    def __init__(self) -> None:
        self.notebook: Optional[str] = None
        self.files: Dict[str, List[str]] = {}
        self.deaths: Dict[str, List[KernelDeath]] = {}

    def add(self, path: str) -> None:
        self.files.setdefault(self.notebook or "", []).append(path)

    def died(self, record: Dict[str, Any]) -> None:
        """A kernel the student's code ended (route.py's `on_kernel_restart`)."""
        self.deaths.setdefault(self.notebook or "", []).append(KernelDeath(**record))

    def take(self) -> Dict[str, List[str]]:
        files, self.files, self.notebook = self.files, {}, None
        return files

    def take_deaths(self) -> Dict[str, List[KernelDeath]]:
        deaths, self.deaths = self.deaths, {}
        return deaths


@dataclass
class Grader:
    """nbgrader, loaded and configured for one assignment."""

    setup: Setup
    app: Any
    autograde: Any
    lock: Any
    notebooks: List[str]
    nbgrader: str
    kernels: KernelReports
    trace: Trace


def skip_unused_grammar() -> None:
    """jsonschema's format checker imports rfc3987-syntax where it is installed (jupyter_server's
    dependencies install it), which builds a parser for IRIs at import: 1.5 s of CPU in every
    worker (`python -X importtime -c "import nbformat"`), for two formats ("iri",
    "iri-reference") that nothing here checks: nbformat validates notebooks without a format
    checker, and nothing else in a worker validates JSON. Without it, jsonschema leaves those
    two formats unchecked, in this process only."""
    sys.modules.setdefault("rfc3987_syntax", None)  # its import then fails, which jsonschema allows


def share_engines() -> None:
    """nbgrader opens a Gradebook, and with it a new SQLAlchemy engine, several times per
    notebook, and a new engine compiles every query afresh (a third of nbgrader's own CPU per
    notebook, under cProfile). A worker keeps one engine per database for its whole life, so
    that compiled queries are reused. Each Gradebook still has its own session; its close()
    still disposes of the engine's connections, and the next one opens a fresh connection."""
    from nbgrader import api

    create = api.create_engine
    engines: Dict[Tuple[str, str], Any] = {}

    def create_engine(url: Any, **kwargs: Any) -> Any:
        key = (str(url), repr(sorted(kwargs.items())))
        if key not in engines:
            engines[key] = create(url, **kwargs)
        return engines[key]

    api.create_engine = create_engine


def load(cfg: Setup) -> Union[Grader, Fatal]:
    os.chdir(cfg.course)
    skip_unused_grammar()
    import nbgrader

    version = str(getattr(nbgrader, "__version__", "unknown"))
    refused = nbgrader_refused(version, dict(os.environ))
    if refused:
        return Fatal(refused)
    # the block `isolate-grade install` writes into nbgrader_config.py stages and locks for
    # formgrader and plain nbgrader; here the batch does both itself
    os.environ["ISOLATE_GRADE_BATCH_WORKER"] = "1"
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (cfg.jupyter_path, os.environ.get("JUPYTER_PATH")) if p)
    # nbgrader runs `alembic` from PATH when it creates a gradebook
    os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", "")))

    share_engines()
    from traitlets.config import Config
    from nbgrader.apps.nbgraderapp import NbGraderApp
    from nbgrader.converters import Autograde

    app = NbGraderApp()
    # the Jupyter config path and the course's nbgrader_config.py, as `nbgrader autograde` loads them
    app.initialize([])
    over = Config()
    over.CourseDirectory.root = cfg.course
    over.CourseDirectory.submitted_directory = cfg.submitted
    if not any("iopub_timeout" in app.config[k] for k in ("Execute", "ExecutePreprocessor", "NotebookClient")):
        over.Execute.iopub_timeout = IOPUB_TIMEOUT
    # the batch's options over the course's settings (route.py's IsolateGrade)
    if cfg.on_kernel_death is not None:
        over.IsolateGrade.on_kernel_death = cfg.on_kernel_death
    if cfg.max_restarts is not None:
        over.IsolateGrade.max_kernel_restarts = cfg.max_restarts
    app.update_config(over)
    # Replaces nbgrader's Execute step (or the one of install's block in the course's config).
    route: Dict[str, Any] = {}
    exec(compile(cfg.route, "isolate-grade:route.py", "exec"), route)
    kernels = KernelReports()
    trace = Trace(os.environ.get(TRACE))
    route["_isolate_grade"](app.config, cfg.twins, cfg.languages, on_kernel_report=kernels.add, on_event=trace,
                            on_kernel_restart=kernels.died)
    app.coursedir.root = cfg.course
    app.coursedir.submitted_directory = cfg.submitted

    # every gradebook use holds the gradebook's lock (src/route.py: the course's flock for
    # SQLite, an advisory lock for PostgreSQL; another database is refused)
    db_url = app.coursedir.db_url
    try:
        lock = route["_gradebook_lock"](db_url, cfg.lock)
    except route["_UnsupportedGradebook"] as e:
        return Fatal(str(e))
    if trace.fd is not None:
        lock = TracedLock(lock, trace)
    route["_lock_gradebooks"](lambda: lock)

    from nbgrader.api import Gradebook, MissingEntry
    from sqlalchemy.exc import SQLAlchemyError

    assignment = cfg.assignment
    try:
        gb = Gradebook(db_url, app.coursedir.course_id)
    except (SQLAlchemyError, ImportError, OSError) as e:
        print(traceback.format_exc(), file=sys.stderr)
        return Fatal(unreachable(db_url, e), fault="gradebook")
    with gb:
        try:
            a = gb.find_assignment(assignment)
        except MissingEntry:
            return Fatal(f"the gradebook has no assignment {assignment!r}: run `nbgrader generate_assignment {assignment}` first")
        notebooks = sorted(nb.name for nb in a.notebooks)
        if not notebooks:
            return Fatal(f"assignment {assignment!r} has no notebooks in the gradebook: run `nbgrader generate_assignment {assignment}`")
    return Grader(cfg, app, Autograde, lock, notebooks, version, kernels, trace)


def gradebook_backend(db_url: str) -> str:
    """The database of a gradebook URL, without its driver: `postgresql+psycopg://...` is
    "postgresql" (never the URL itself: it may hold a password)."""
    from sqlalchemy.engine import make_url

    return str(make_url(db_url).get_backend_name())


def unreachable(db_url: str, e: BaseException) -> str:
    """Why the gradebook can't be opened, in one line (its URL without the password)."""
    first = (str(e).strip().splitlines() or [""])[0][:300]
    why = f"{type(e).__name__}: {first}" if first else type(e).__name__
    hint = ""
    if isinstance(e, ImportError):
        hint = (f"; SQLAlchemy's driver for this URL is not installed for {sys.executable} (for a "
                "postgresql+psycopg:// URL: pip install 'psycopg[binary]')")
    return scrub(f"the gradebook {db_url} (CourseDirectory.db_url) cannot be opened ({why}){hint}")


class TracedLock:
    """The gradebook lock, with how long each use waited for it and held it in the trace."""

    def __init__(self, lock: Any, trace: Trace) -> None:
        self.lock, self.trace, self.since = lock, trace, 0.0

    def acquire(self) -> None:
        outer = self.lock.depth == 0
        t = time.monotonic()
        self.lock.acquire()
        if outer:
            self.since = time.monotonic()
            self.trace("gradebook-locked", waited=self.since - t)

    def release(self) -> None:
        self.lock.release()
        if self.lock.depth == 0:
            self.trace("gradebook-unlocked", held=time.monotonic() - self.since)

    def reset(self) -> int:
        return self.lock.reset()


def scores(app: Any, assignment: str, student: str) -> Tuple[Optional[Dict[str, NotebookScore]], Optional[float]]:
    from nbgrader.api import Gradebook, MissingEntry

    with Gradebook(app.coursedir.db_url, app.coursedir.course_id) as gb:
        try:
            sub = gb.find_submission(assignment, student)
        except MissingEntry:
            return None, None
        nbs = {
            nb.name: NotebookScore(
                score=float(nb.score),
                max_score=float(nb.max_score),
                needs_manual_grade=bool(nb.needs_manual_grade),
            )
            for nb in sub.notebooks
        }
        return nbs, float(sub.total_seconds_late or 0)


def grade(g: Grader, student: str) -> Answer:
    from nbgrader.utils import capture_log, temp_attrs

    Autograde = g.autograde
    assignment = g.setup.assignment
    reports = os.path.join(g.setup.reports, student)
    timings: Dict[str, float] = {}
    seen: List[Failure] = []
    base = Autograde.convert_single_notebook
    g.kernels.take()
    g.kernels.take_deaths()

    def convert_single_notebook(self, notebook_filename):
        name = notebook_name(notebook_filename)
        try:
            os.environ["ISOLATE_GRADE_REPORT_DIR"] = os.path.join(reports, name)
            os.makedirs(os.environ["ISOLATE_GRADE_REPORT_DIR"], exist_ok=True)
        except OSError as e:
            raise OurFault("the kernels' report directory") from e
        g.kernels.notebook = name
        g.trace.notebook = name
        g.trace("convert")
        t = time.monotonic()
        try:
            return base(self, notebook_filename)
        finally:
            timings[name] = time.monotonic() - t
            g.trace("converted")
            g.trace.notebook = None
            g.kernels.notebook = None
            os.environ.pop("ISOLATE_GRADE_REPORT_DIR", None)

    steps = ["init_destination", "init_assignment", "convert_single_notebook", "set_permissions"]
    originals = {step: getattr(Autograde, step) for step in steps}
    t0 = time.monotonic()
    g.trace.student = student
    g.trace("student")
    Autograde.convert_single_notebook = convert_single_notebook
    for step in steps:
        setattr(Autograde, step, recording(getattr(Autograde, step), seen, step == "convert_single_notebook"))
    try:
        with temp_attrs(g.app.coursedir, assignment_id=assignment, student_id=student):
            converter = Autograde(coursedir=g.app.coursedir, parent=g.app)
            converter.force = True
            converter.create_student = True
            result = capture_log(converter)
    finally:
        for step, original in originals.items():
            setattr(Autograde, step, original)
        leaked = g.lock.reset()
        g.trace("graded")
        g.trace.student = None
    out = Answer(
        student=student,
        success=bool(result.get("success")),
        wall=time.monotonic() - t0,
        notebook_wall=timings,
        log=result.get("log", ""),
        kernel_reports=g.kernels.take(),
        kernel_deaths=g.kernels.take_deaths(),
    )
    if leaked:
        out.log += f"\n[isolate-grade] {leaked} gradebook(s) left open by nbgrader; lock released\n"
    if not out.success:
        out.error = result.get("error", "")
        out.failure = seen[0] if seen else None
    try:
        out.notebooks, out.seconds_late = scores(g.app, assignment, student)
    except Exception as e:
        out.success = False
        out.error = (out.error or "") + "reading the scores:\n" + traceback.format_exc()
        out.failure = failure(e, ours=True)
    return out


def serve(lines: TextIO, channel: Channel) -> int:
    """The protocol: a setup, then grade requests until end of input."""
    try:
        cfg = decode(lines.readline())
        if not isinstance(cfg, Setup):
            raise ProtocolError("the first message must be the setup")
    except ProtocolError as e:
        channel.send(Fatal(f"the grading worker cannot read its setup: {e}"))
        return 2
    try:
        loaded = load(cfg)
    except Exception:
        loaded = Fatal("starting nbgrader failed:\n" + traceback.format_exc())
    if isinstance(loaded, Fatal):
        channel.send(loaded)
        return 2
    channel.send(Ready(protocol=PROTOCOL, pid=os.getpid(), notebooks=loaded.notebooks, nbgrader=loaded.nbgrader,
                       gradebook=gradebook_backend(loaded.app.coursedir.db_url)))
    for line in lines:
        try:
            request = decode(line)
            if not isinstance(request, Grade):
                raise ProtocolError("only grade requests after the setup")
        except ProtocolError as e:
            channel.send(Fatal(f"the grading worker cannot read a request: {e}"))
            return 2
        try:
            out = grade(loaded, request.student)
        except Exception as e:
            print(traceback.format_exc(), file=sys.stderr)
            out = Answer(student=request.student, success=False, error=traceback.format_exc(),
                         failure=failure(e, ours=True), kernel_reports=loaded.kernels.take(),
                         kernel_deaths=loaded.kernels.take_deaths())
        channel.send(out)
    return 0


def main() -> int:
    channel = Channel(os.fdopen(os.dup(1), "w", buffering=1))
    os.dup2(2, 1)
    sys.stderr = EscapingStream(sys.stderr)
    sys.stdout = sys.stderr
    return serve(sys.stdin, channel)


if __name__ == "__main__":
    sys.exit(main())

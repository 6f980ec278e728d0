def _isolate_grade(c, twins, languages, kernels=None, on_kernel_report=None, on_event=None, on_kernel_restart=None):
    """Route every notebook nbgrader autogrades to the sandboxed twin of its own kernel.

    `twins` maps a kernelspec name to its twin's name, `languages` each twin to its language,
    `kernels` is the directory the twins are in (`isolate-grade install` keeps them off the
    Jupyter path, out of JupyterLab's Launcher; None: found on the Jupyter path, as the batch's).
    nbgrader's Execute step is replaced by one that picks the twin the way nbclient picks a
    kernel (the notebook's `kernelspec.name`, or an explicit `Execute.kernel_name`), or, for a
    notebook that names no kernel, by its language (`kernelspec.language`, `language_info.name`).
    A notebook whose kernel has no twin, or whose language is not its twin's, is never run.
    Each kernel writes its report to `<ISOLATE_GRADE_REPORT_DIR>/<kernel id>.json`, its id being
    its connection file's name; with `on_kernel_report` (the batch's worker, whose twins this
    same binary made), each kernel is given its report file (`--report`) and its submission
    (`--submission`) on its command line instead, and `on_kernel_report` is told each file.
    A kernel is ended at once when its notebook is done (`_end_at_once`): its outputs are in,
    and the sandbox ends everything in it, so there is nothing to wait for. `on_event(name,
    **fields)`, if given, is told each step of a notebook's execution as it happens (the
    batch's timeline: "execute", "kernel-start", "kernel-started", "kernel-ready", "cell",
    "kernel-stop", "kernel-stopped", "executed", "kernel-restart").
    When the student's code ends a kernel in a cell (a limit of the sandbox, a crash, an exit:
    its report says so), the notebook is not failed, unless `c.IsolateGrade.on_kernel_death =
    "fail"` (nbgrader's own behaviour): see `_KernelDeaths`. `on_kernel_restart(record)`, if
    given, is told each such end (the batch's report: a record of `_KernelDeaths.end`).
    (isolate-grade's src/route.py: written into nbgrader_config.py by `isolate-grade install`,
    and used by the batch with its own twins.)
    """
    import os
    import shutil
    import tempfile

    from nbgrader.converters import Autograde
    from nbgrader.preprocessors import Execute

    from traitlets import Enum, Integer
    from traitlets.config import Configurable

    class KernelNotSandboxed(Exception):
        pass

    class IsolateGrade(Configurable):
        """isolate-grade's own settings, in nbgrader_config.py (`c.IsolateGrade.NAME = ...`);
        the batch's `--on-kernel-death` and `--max-restarts` override them."""

        on_kernel_death = Enum(
            ["restart", "fail"], default_value="restart",
            help="When the student's code ends its kernel in a cell (a limit of the sandbox, a crash, an "
                 "exit): 'restart' marks the cell, starts a fresh sandboxed kernel, re-runs the cells before "
                 "it that had succeeded, and goes on; 'fail' fails the notebook, as nbgrader does.",
        ).tag(config=True)
        max_kernel_restarts = Integer(
            3, min=0, max=100,
            help="With on_kernel_death = 'restart': at most this many fresh kernels per notebook; past them "
                 "the cells left are marked not run, and the notebook keeps the points it earned.",
        ).tag(config=True)

    class KernelStopped(Exception):
        """The sandboxed kernel ended in a cell: a limit, a crash, or a sandbox fault, in words."""

    def route(nb, explicit):
        ks = nb.metadata.get("kernelspec") or {}
        li = nb.metadata.get("language_info") or {}
        lang = str(ks.get("language") or li.get("name") or "").lower() or None
        name = explicit or ks.get("name")
        if name in twins.values():
            twin = name
        elif name:
            twin = twins.get(name)
            if twin is None:
                raise KernelNotSandboxed(
                    f"the notebook's kernel {name!r} has no sandboxed twin (sandboxed: {sorted(twins)}), "
                    "so it is not run: sandbox it with `isolate-grade install --kernel NAME`")
        elif lang:
            found = sorted({t for t, tl in languages.items() if tl == lang})
            if lang == "python" and twins.get("python3"):
                found = [twins["python3"]]
            if len(found) != 1:
                raise KernelNotSandboxed(
                    f"the notebook names no kernel, and {len(found)} sandboxed kernels are for its language "
                    f"{lang!r}, so it is not run: set its kernel (metadata.kernelspec.name)")
            twin = found[0]
        else:
            twin = twins.get("python3")
            if twin is None:
                raise KernelNotSandboxed("the notebook names no kernel and there is no sandboxed python3, so it is not run")
        if lang and languages.get(twin) != lang:
            raise KernelNotSandboxed(
                f"the notebook is in {lang!r}, but its kernel {name!r} runs {languages.get(twin)!r}, "
                "so it is not run: fix the notebook's metadata (kernelspec, language_info)")
        return twin

    class SandboxedExecute(Execute):
        def create_kernel_manager(self):
            km = super().create_kernel_manager()
            if on_kernel_report is not None:
                # the batch's own twins (made by this very binary): the report file and the
                # submission named on the kernel's command line
                _name_report_and_submission(km, self._isolate_grade_reports, self._isolate_grade_submission)
            self._isolate_grade_kms.append(km)
            if kernels is not None:
                from jupyter_client.kernelspec import KernelSpecManager

                # the twin's kernelspec, from where install put it (and only there)
                km.kernel_spec_manager = KernelSpecManager(kernel_dirs=[kernels], ensure_native_kernel=False)
            return km

        def _isolate_grade_event(self, name, **fields):
            if on_event is not None:
                on_event(name, **fields)

        def start_new_kernel(self, **kwargs):
            self._isolate_grade_event("kernel-start")
            super().start_new_kernel(**kwargs)
            self._isolate_grade_event("kernel-started")
            _end_at_once(self.km)

        def start_new_kernel_client(self):
            kc = super().start_new_kernel_client()
            self._isolate_grade_event("kernel-ready")
            return kc

        def _cleanup_kernel(self):
            self._isolate_grade_event("kernel-stop")
            try:
                return super()._cleanup_kernel()
            finally:
                self._isolate_grade_event("kernel-stopped")

        def on_cell_executed(self, **kwargs):
            super().on_cell_executed(**kwargs)
            self._isolate_grade_status = kwargs["execute_reply"]["content"].get("status")

        def preprocess_cell(self, cell, resources, index):
            self._isolate_grade_cell = (index, cell)
            deaths = self._isolate_grade_deaths
            try:
                if deaths is None or not _runs(self, cell):
                    return super().preprocess_cell(cell, resources, index)
                if deaths.stopped is not None:
                    _error_output(cell, "NotRun", deaths.not_run_words())
                    return cell, self.resources
                self._isolate_grade_status = None
                try:
                    out = super().preprocess_cell(cell, resources, index)
                except Exception as e:
                    why = self._isolate_grade_ended(e)
                    if why is None:
                        raise
                    self._isolate_grade_recover(index, cell, why)
                    return cell, self.resources
                if self._isolate_grade_status == "ok":
                    deaths.succeeded.append(index)
                return out
            finally:
                if cell.get("cell_type") == "code":
                    self._isolate_grade_event("cell", index=index)

        def _isolate_grade_ended(self, error):
            """The explanation in the current kernel's report when the student's code ended it
            (cause "limit" or "program"), else None: the kernel still runs (the error is
            another), it wrote no report (an end not explained), or the sandbox failed (a fault
            of ours, never restarted past): the notebook then fails as before."""
            import subprocess

            from nbclient.exceptions import DeadKernelError

            km = self.km
            if km is None:
                return None
            process = getattr(getattr(km, "provisioner", None), "process", None)
            if process is not None:
                try:
                    # the supervisor writes its report, then exits: wait for it to be whole
                    process.wait(timeout=10 if isinstance(error, DeadKernelError) else 1)
                except subprocess.TimeoutExpired:
                    return None
            elif not isinstance(error, DeadKernelError):
                return None
            why = _first_ended(_report_files(self._isolate_grade_reports, [km]))
            if why is None or why.get("cause") not in ("limit", "program"):
                return None
            self._isolate_grade_recovered.append(km)
            return why

        def _isolate_grade_recover(self, index, cell, why):
            """The kernel ended in cell `index`: mark the cell, then (within the bound) start a
            fresh sandboxed kernel and restore the notebook's state on it. A cell that ends the
            kernel again on replay is marked and left out, and costs a restart of its own."""
            deaths = self._isolate_grade_deaths
            record = deaths.end(index, cell, why, replay=False)
            _error_output(cell, "KernelDied", deaths.cell_words(record))
            self._isolate_grade_told(record)
            while record["restarted"]:
                self._isolate_grade_event("kernel-restart", index=record["cell"] - 1)
                self._cleanup_kernel()  # the ended one: its client's channels closed, its manager dropped
                # a new manager, never the old one: a new `isolate-grade kernel`, a new sandbox
                self.km = self.create_kernel_manager()
                self.start_new_kernel()
                self.start_new_kernel_client()
                again = self._isolate_grade_replay()
                if again is None:
                    return
                j, why = again
                deaths.succeeded.remove(j)
                replayed = self.nb.cells[j]
                record = deaths.end(j, replayed, why, replay=True)
                _error_output(replayed, "KernelDied", deaths.cell_words(record))
                self._isolate_grade_told(record)

        def _isolate_grade_replay(self):
            """Re-run on the fresh kernel, in order, every code cell before that had succeeded,
            each bounded by its timeout as any cell is (on a timeout the kernel is interrupted
            and the replay goes on). Their outputs are not read: the notebook keeps the first
            run's. (index, why) of a cell that ended the kernel again, else None."""
            for j in list(self._isolate_grade_deaths.succeeded):
                replayed = self.nb.cells[j]
                try:
                    msg_id = self.kc.execute(replayed.source, store_history=True, stop_on_error=False)
                    self.wait_for_reply(msg_id, replayed)
                except Exception as e:
                    why = self._isolate_grade_ended(e)
                    if why is None:
                        raise
                    return j, why
            return None

        def _isolate_grade_told(self, record):
            self.log.warning("isolate-grade: %s", _KernelDeaths.line(record, self._isolate_grade_notebook))
            self._isolate_grade_event("kernel-died", index=record["cell"] - 1, restarted=record["restarted"])
            if on_kernel_restart is not None:
                on_kernel_restart(dict(record))

        def preprocess(self, nb, resources, *args, **kwargs):
            settings = IsolateGrade(parent=self)  # a bad value: traitlets' TraitError, nothing run
            before = self.kernel_name
            self.kernel_name = route(nb, before)
            who = resources.get("nbgrader") or {}
            notebook = who.get("notebook") or resources.get("unique_key") or "the notebook"
            label = (f"student {who.get('student', '?')}, notebook {notebook} of {who.get('assignment', '?')}, "
                     f"kernel {self.kernel_name}")
            own = None if os.environ.get("ISOLATE_GRADE_REPORT_DIR") else tempfile.mkdtemp(prefix="isolate-grade-kernels-")
            saved = {k: os.environ.get(k) for k in ("ISOLATE_GRADE_REPORT_DIR", "ISOLATE_GRADE_LABEL")}
            reports = own or os.environ["ISOLATE_GRADE_REPORT_DIR"]
            os.environ["ISOLATE_GRADE_REPORT_DIR"] = reports
            os.environ["ISOLATE_GRADE_LABEL"] = label
            self._isolate_grade_cell = None
            outer_kms, self._isolate_grade_kms = getattr(self, "_isolate_grade_kms", None), []
            # the flag is ours alone: a submission's own is never shown as if we had set it
            nb.metadata.pop("isolate_grade", None)
            outer_deaths = getattr(self, "_isolate_grade_deaths", None)
            self._isolate_grade_deaths = (_KernelDeaths(settings.max_kernel_restarts)
                                          if settings.on_kernel_death == "restart" else None)
            self._isolate_grade_recovered = []
            self._isolate_grade_notebook = notebook
            self._isolate_grade_reports = reports
            path = (resources.get("metadata") or {}).get("path")
            self._isolate_grade_submission = os.path.realpath(path) if path else None
            kms = self._isolate_grade_kms
            self._isolate_grade_event("execute", kernel=self.kernel_name)
            try:
                done, resources = super().preprocess(nb, resources, *args, **kwargs)
                deaths = self._isolate_grade_deaths
                if deaths is not None and deaths.records:
                    done.metadata["isolate_grade"] = {"kernel_deaths": [dict(r) for r in deaths.records]}
                return done, resources
            except Exception as e:
                # the last kernel that ended and was not restarted past (a restarted one was the
                # student's doing, and graded past; what failed the notebook is after it)
                recovered = self._isolate_grade_recovered
                why = _first_ended(_report_files(reports, [k for k in reversed(kms) if k not in recovered]))
                if why is None:
                    raise
                place = f"of {notebook}"
                if self._isolate_grade_cell is not None:
                    index, cell = self._isolate_grade_cell
                    grade_id = (cell.get("metadata", {}).get("nbgrader") or {}).get("grade_id")
                    place = f"in cell {index + 1}{f' ({grade_id})' if grade_id else ''} of {notebook}"
                message = f"{who.get('student', '?')}: {_sentence(why, place)}"
                self.log.error("isolate-grade: %s", message)
                raise KernelStopped(message) from e
            finally:
                self._isolate_grade_event("executed")
                self._isolate_grade_kms = outer_kms
                if on_kernel_report is not None and not own:
                    for report in _report_files(reports, kms):
                        on_kernel_report(report)
                for k, v in saved.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
                self.kernel_name = before
                self._isolate_grade_deaths = outer_deaths
                if own:
                    shutil.rmtree(own, ignore_errors=True)

    steps = c.Autograde.get("autograde_preprocessors") or Autograde.class_traits()["autograde_preprocessors"].default()
    if not any(isinstance(s, type) and issubclass(s, Execute) for s in steps):
        raise ValueError(f"nbgrader's Execute step is not among the autograde preprocessors {steps}")
    c.Autograde.autograde_preprocessors = [
        SandboxedExecute if isinstance(s, type) and issubclass(s, Execute) else s for s in steps]


def _runs(client, cell):
    """Whether nbclient executes `cell` (`async_execute_cell`: a code cell with code, not
    tagged to be skipped)."""
    return (cell.get("cell_type") == "code" and bool(str(cell.get("source", "")).strip())
            and client.skip_cells_with_tag not in cell.get("metadata", {}).get("tags", []))


def _error_output(cell, ename, text):
    """An error output at the end of `cell`'s: nbgrader scores a test cell with one 0, and
    formgrader shows it in the cell, in the manual-grading view."""
    from nbformat import NotebookNode

    cell.setdefault("outputs", []).append(
        NotebookNode(output_type="error", ename=ename, evalue=text, traceback=[f"{ename}: {text}"]))


class _KernelDeaths:
    """One notebook's kernel ends, with `c.IsolateGrade.on_kernel_death = "restart"`. Each end
    the student's code made is a record: {"cell": its number (1-based, as nbgrader's log counts),
    "grade_id": the cell's, or None, "cause": "limit" | "program", "words": the kernel report's
    ("used more than 256 MiB of memory"), "replay": whether the cell ended it while being
    re-run after an earlier end, "restarted": whether a fresh kernel was started after it}.
    At most `max_restarts` fresh kernels; the end past them stops the notebook there, and
    every cell after it is marked not run (a test cell with an error scores 0, as it would have
    had it run and failed; one with no output would score full points)."""

    def __init__(self, max_restarts):
        self.max = max_restarts
        self.succeeded = []  # the code cells whose last run replied "ok", by index, in order
        self.records = []
        self.stopped = None  # the record of the end no kernel was started after

    def end(self, index, cell, why, replay):
        grade_id = ((cell.get("metadata") or {}).get("nbgrader") or {}).get("grade_id")
        restarted = sum(r["restarted"] for r in self.records) < self.max
        record = {"cell": index + 1, "grade_id": grade_id if isinstance(grade_id, str) else None,
                  "cause": why["cause"], "words": why["words"], "replay": replay, "restarted": restarted}
        self.records.append(record)
        if not restarted:
            self.stopped = record
        return record

    def cell_words(self, record):
        """What the cell's error output says."""
        what = _sentence({"cause": record["cause"], "words": record["words"]}, "in this cell")
        if record["replay"]:
            what += (" when it was re-run on a fresh kernel after an earlier cell ended the kernel; "
                     "it is not re-run again")
        if not record["restarted"]:
            return (f"{what}. The kernel was not restarted: it already was {self.max} time(s), the most for one "
                    "notebook (isolate-grade's max_kernel_restarts), so the cells after this one were not run")
        return (f"{what}. isolate-grade started a fresh sandboxed kernel, re-ran the code cells before this one "
                "that had succeeded (their outputs are not shown again), and went on with the next cell; what "
                "this cell did is lost")

    def not_run_words(self):
        r = self.stopped
        return (f"not run: the kernel ended in cell {r['cell']} and was not restarted (at most {self.max} "
                "restart(s) per notebook)")

    @staticmethod
    def line(record, notebook):
        """One line for a log or a report: "kernel restarted after cell 3 (ex3) of p1: ..."."""
        gid = f" ({record['grade_id']})" if record.get("grade_id") else ""
        at = f"cell {record['cell']}{gid} of {notebook}"
        what = _sentence({"cause": record["cause"], "words": record["words"]}, "")
        replay = " on replay" if record["replay"] else ""
        if record["restarted"]:
            return f"kernel restarted after {at}{replay}: {what}"
        return f"kernel ended in {at}{replay} and was not restarted (the most restarts): the cells after it not run: {what}"


def _end_at_once(km):
    """Have `km` end its kernel at once when asked to shut it down, rather than by
    jupyter_client's graceful way (a shutdown_request, then waiting for the kernel to exit;
    ipykernel 7.4 sometimes hangs there until jupyter_client's SIGTERM 5 s later). By then
    nbclient has every output it waited for; the kernel is `isolate-grade kernel`, whose
    SIGTERM is relayed into the sandbox, and when the program ends the sandbox ends all of
    it and the supervisor writes its report as after any end (the client's signal: cause
    "caller", not the student's doing). A program that ignores the SIGTERM is killed by the
    supervisor a second later (`stopped_by: caller`). Only a supervisor still there after 3 s
    (never expected) is shut down the graceful way after all."""
    import asyncio
    import signal

    graceful = km.shutdown_kernel

    async def shutdown_kernel(now=False, restart=False):
        provisioner = km.provisioner
        process = getattr(provisioner, "process", None)
        if not restart and process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)  # the supervisor alone, not its process group
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0  # the supervisor's own grace is 1 s
            while process.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.005)
            if process.poll() is not None:
                await provisioner.wait()  # reaped: the manager no longer has a kernel to stop
                now = True  # nothing to ask (a shutdown_request queued for no one holds its socket 0.1 s)
        result = graceful(now=now, restart=restart)
        if asyncio.iscoroutine(result):
            await result

    km.shutdown_kernel = shutdown_kernel


def _name_report_and_submission(km, reports, submission):
    """Have the kernel `km` starts write its report to a file of its own in `reports`
    (`--report FILE`) and take `submission` as its submission (`--submission DIR`; nbclient
    starts it there too): both given on its command line, before the kernel's own argv (`--`)."""
    import os
    import uuid

    report = os.path.join(reports, f"kernel-{uuid.uuid4()}.json")
    formatted = km.format_kernel_cmd

    def format_kernel_cmd(extra_arguments=None):
        cmd = formatted(extra_arguments)
        if "--" not in cmd:
            return cmd
        at = cmd.index("--")
        ours = ["--report", report] + (["--submission", submission] if submission else [])
        km._isolate_grade_report = report
        return cmd[:at] + ours + cmd[at:]

    km.format_kernel_cmd = format_kernel_cmd


def _report_files(reports, kms):
    """The report file of each kernel these managers started, in order: the one named on its
    command line (`--report`), else `<reports>/<kernel id>.json`, the id being its connection
    file's name (as `isolate-grade kernel --report-dir` names it)."""
    import os

    files = []
    for km in kms:
        connection = getattr(km, "connection_file", None)
        named = getattr(km, "_isolate_grade_report", None)
        if named:
            files.append(named)
        elif connection:
            files.append(os.path.join(reports, os.path.splitext(os.path.basename(connection))[0] + ".json"))
    return files


def _first_ended(files):
    """The explanation of the first kernel report in `files` that did not end `ok`, or None:
    {"cause": "limit"|"program"|"sandbox-fault", "words": ...}. A kernel its client ended (cause
    "caller": shut down, interrupted, or its client gone) did not make the notebook fail:
    nbgrader's own error says what did, and is not replaced. A kernel that wrote no report (it
    never started) is left out."""
    import json

    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                why = json.load(f).get("explanation")
        except (OSError, ValueError):
            continue
        if why and why.get("cause") != "caller":
            return why
    return None


def _kernel_ended(reports, earlier):
    """`_first_ended` of the reports in the directory `reports` that are not in `earlier` (by
    name order): the directory form, for a caller that does not know its kernels' ids."""
    import os

    return _first_ended([os.path.join(reports, n) for n in sorted(set(os.listdir(reports)) - earlier)])


def _sentence(why, place):
    """As src/report.rs Explanation::sentence words it (`place` empty: none)."""
    words, cause = why["words"], why["cause"]
    at = f" {place}" if place else ""
    if cause == "limit":
        return f"the code {words}{at}; the sandbox stopped it"
    if cause == "program":
        return f"the code {words}{at}"
    if cause == "caller":
        return f"the kernel {words}{at}"
    return f"sandbox fault{at}: {words}; not the student's doing (tell the course's admin)"


class _GradebookLock:
    """An flock held while any Gradebook of this process is open (they nest): SQLite lets one
    writer in at a time, and nbgrader's writes fail at once with "database is locked" while
    another process writes (nbgrader#174). The batch's workers and the formgrader/plain path
    take the same file, `<course>/.isolate-grade/gradebook.lock`."""

    def __init__(self, path):
        import os

        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.depth = 0

    def acquire(self):
        import fcntl

        if self.depth == 0:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        self.depth += 1

    def release(self):
        import fcntl

        self.depth -= 1
        if self.depth == 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def reset(self):
        """After a submission: a Gradebook nbgrader left open must not keep the lock."""
        import fcntl

        leaked = self.depth
        if self.depth:
            self.depth = 0
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        return leaked

    def close(self):
        import os

        self.reset()
        os.close(self.fd)


# The key of the advisory lock every use of a PostgreSQL gradebook holds ("isograde" in ASCII).
# One key per database, not one per student or row: PostgreSQL lets many writers in, but
# nbgrader's writes are find-then-add (a student, an assignment, a submission, the tables of a
# new gradebook), and two workers that both find nothing both add, and one fails with a unique
# violation. Serializing every gradebook use, as the flock does for SQLite, keeps nbgrader's
# own sequence of writes whole; executing notebooks, the slow part, holds no lock. Advisory
# locks are per database, so courses in other databases of the same server do not wait.
_GRADEBOOK_LOCK_KEY = 0x69736F6772616465


class _AdvisoryLock:
    """The gradebook lock of a PostgreSQL gradebook: `pg_advisory_lock` on a connection of its
    own (autocommit: it holds no transaction open), taken and released as _GradebookLock is.
    The lock is the session's: it ends with the connection, so a process that dies releases it.
    A connection that dropped (the server restarted) is replaced once before the lock is
    given up on; the error then is SQLAlchemy's, a fault of the gradebook's, never the
    student's."""

    def __init__(self, db_url):
        self.url = db_url
        self.engine = None
        self.conn = None
        self.depth = 0

    def _lock_once(self):
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        if self.engine is None:
            self.engine = create_engine(self.url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        if self.conn is None:
            self.conn = self.engine.connect()
        self.conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _GRADEBOOK_LOCK_KEY})

    def _drop(self):
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def acquire(self):
        from sqlalchemy.exc import DBAPIError

        if self.depth == 0:
            had = self.conn is not None
            try:
                self._lock_once()
            except DBAPIError:
                self._drop()
                if not had:
                    raise
                self._lock_once()  # the connection we had dropped: once more, on a new one
        self.depth += 1

    def _unlock(self):
        from sqlalchemy import text

        try:
            self.conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _GRADEBOOK_LOCK_KEY})
        except Exception:
            self._drop()  # the connection is gone, and the lock with it

    def release(self):
        self.depth -= 1
        if self.depth == 0:
            self._unlock()

    def reset(self):
        leaked = self.depth
        if self.depth:
            self.depth = 0
            self._unlock()
        return leaked

    def close(self):
        self.reset()
        self._drop()
        if self.engine is not None:
            self.engine.dispose()


class _UnsupportedGradebook(ValueError):
    """A gradebook whose writes isolate-grade cannot serialize (bad input: nothing is graded)."""


def _shown_url(db_url):
    """A database URL as it may be shown: its password hidden."""
    import re

    return re.sub(r"(://[^/@:\s]*:)[^@\s]*@", r"\1***@", str(db_url))


def _gradebook_lock(db_url, path):
    """The lock every gradebook use holds, for nbgrader's db_url (CourseDirectory.db_url, as
    nbgrader resolved it): SQLite, the flock on `path`; PostgreSQL (any of SQLAlchemy's drivers
    for it: postgresql+psycopg://, or postgresql:// which SQLAlchemy reads as psycopg2), an
    advisory lock in that database. Any other database is refused: isolate-grade has not been
    shown to keep nbgrader's writes to it whole."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(db_url).get_backend_name()
    except ArgumentError:
        backend = None
    if backend == "sqlite":
        return _GradebookLock(path)
    if backend == "postgresql":
        return _AdvisoryLock(db_url)
    what = f"a {backend} database" if backend else "not a database URL SQLAlchemy can read"
    raise _UnsupportedGradebook(
        f"the gradebook {_shown_url(db_url)} (CourseDirectory.db_url) is {what}: isolate-grade grades with a "
        "SQLite (sqlite:///...) or PostgreSQL (postgresql+psycopg://...) gradebook only")


def _lock_gradebooks(lock_for):
    """Every Gradebook opened while `lock_for()` returns a lock holds it until closed. Patched
    once per process; a later call only changes `lock_for`."""
    from nbgrader import api

    gb = api.Gradebook
    if getattr(gb, "_isolate_grade_lock_for", None) is None:
        init, close = gb.__init__, gb.close

        def locked_init(self, *args, **kwargs):
            lock = gb._isolate_grade_lock_for()
            if lock is not None:
                lock.acquire()
            self._isolate_grade_lock = lock
            try:
                init(self, *args, **kwargs)
            except BaseException:
                self._isolate_grade_lock = None
                if lock is not None:
                    lock.release()
                raise

        def unlocking_close(self):
            try:
                close(self)
            finally:
                lock = getattr(self, "_isolate_grade_lock", None)
                if lock is not None:
                    self._isolate_grade_lock = None
                    lock.release()

        gb.__init__, gb.close = locked_init, unlocking_close
    gb._isolate_grade_lock_for = lock_for


def _isolate_grade_guard(c, binary):
    """What the batch does around nbgrader, for formgrader's button, `nbgrader autograde` and
    NbGraderAPI.autograde (all run nbgrader's Autograde converter, which is patched here, once
    per process; re-running the block, as formgrader does on every request, changes nothing):

    - before nbgrader looks at a submission, `isolate-grade stage` checks it and copies what
      passed into `<course>/.isolate-grade/staged-XXXX/`, and nbgrader reads only that copy
      (its submitted_directory, for this run): a symlink, FIFO, hard link, oversized or
      malformed notebook is never followed, copied or run. A rejected submission fails in
      nbgrader's way (its log and formgrader's modal say `rejected:` with paths and reasons);
    - each student is graded holding `<course>/.isolate-grade/<assignment>/students/<id>.lock`,
      and every gradebook use holding the gradebook lock (`_gradebook_lock`: for SQLite
      `<course>/.isolate-grade/gradebook.lock`, for PostgreSQL an advisory lock), the locks a
      running batch takes: a click during a batch waits for that student, and loses nothing.
      A gradebook of another database is refused, and one that can't be reached stops the run
      before anything is staged.
    Not in the batch's own workers (they do both themselves): ISOLATE_GRADE_BATCH_WORKER.
    """
    import fcntl
    import glob
    import json
    import os
    import re
    import shutil
    import subprocess
    import tempfile

    from nbgrader.converters import Autograde
    from nbgrader.converters.base import NbGraderException

    if os.environ.get("ISOLATE_GRADE_BATCH_WORKER"):
        return
    state = Autograde.__dict__.get("_isolate_grade_state")
    if state is not None:
        state["binary"] = binary
        return
    state = {"binary": binary, "lock": None}
    Autograde._isolate_grade_state = state
    _lock_gradebooks(lambda: state["lock"])

    class SubmissionRejected(NbGraderException):
        pass

    def stage_all(self, course, staged_rel):
        """Check and copy every submission this run would grade; {(assignment, student): why}."""
        rejected, staged = {}, 0
        pattern = self._format_source(self.coursedir.assignment_id, self.coursedir.student_id)
        regexp = self._format_source("(?P<assignment_id>.*)", "(?P<student_id>.*)", escape=True)
        excluded = set(filter(None, (self.coursedir.student_id_exclude or "").split(",")))
        for path in sorted(glob.glob(pattern)):
            m = re.match(regexp, path)
            if m is None or m.group("student_id") in excluded:
                continue
            a, s = m.group("assignment_id"), m.group("student_id")
            dest = self.coursedir.format_path(staged_rel, s, a)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            r = subprocess.run([state["binary"], "stage", os.path.relpath(path, course), "--course", course,
                                "--into", dest], capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if r.returncode == 0:
                staged += 1
            elif r.returncode == 1:
                rejected[(a, s)] = json.loads(r.stdout)["message"]
            elif r.returncode == 2:
                rejected[(a, s)] = "rejected: " + r.stderr.strip().removeprefix("isolate-grade: ")
            else:
                raise NbGraderException(
                    f"isolate-grade could not check the submission {path} (a sandbox fault, not the student's "
                    f"doing: {r.stderr.strip()}); nothing was graded")
        return rejected, staged

    def shared(path, mode=0o2770):
        """In a course nbgrader shares with a group (CourseDirectory.groupshared), what we
        make is the group's too, so that another instructor's click or batch can take the
        locks; elsewhere it stays the instructor's own."""
        if groupshared["on"]:
            try:
                os.chmod(path, mode)
            except PermissionError:
                pass  # another instructor's: they made it shared

    groupshared = {"on": False}

    def student_lock(course, assignment, student):
        d = os.path.join(course, ".isolate-grade", assignment, "students")
        os.makedirs(d, exist_ok=True)
        for p in (os.path.dirname(d), d):
            shared(p)
        path = os.path.join(d, f"{student}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        shared(path, 0o660)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a batch grading this student right now: wait for it
        return fd

    def release_student(guard):
        if guard.get("student_fd") is not None:
            os.close(guard.pop("student_fd"))

    def refuse(self, message, status):
        """Nothing is graded: `nbgrader autograde` exits with the batch's status for it (2 bad
        input, 3 a fault); formgrader's button and NbGraderAPI.autograde show the message."""
        from nbgrader.apps.autogradeapp import AutogradeApp

        self.log.error("isolate-grade: %s", message)
        if isinstance(self.parent, AutogradeApp):
            raise SystemExit(status)
        raise NbGraderException(message)

    def open_gradebook_lock(self, path):
        """The gradebook's lock, for the db_url nbgrader resolved, taken once to show that the
        gradebook can be reached before anything is staged."""
        db_url = self.coursedir.db_url
        try:
            lock = _gradebook_lock(db_url, path)
        except _UnsupportedGradebook as e:
            refuse(self, f"{e}; nothing was graded", 2)
        if isinstance(lock, _GradebookLock):
            shared(path, 0o660)
        try:
            lock.acquire()
            lock.release()
        except Exception as e:
            lock.close()
            first = (str(e).strip().splitlines() or [""])[0][:300]
            refuse(self, f"the gradebook {_shown_url(db_url)} cannot be opened ({type(e).__name__}: "
                         f"{_shown_url(first)}); nothing was graded", 3)
        return lock

    start, init_notebooks, init_destination = Autograde.start, Autograde.init_notebooks, Autograde.init_destination

    def guarded_start(self):
        course = os.path.abspath(self.coursedir.root)
        groupshared["on"] = bool(getattr(self.coursedir, "groupshared", False))
        base = os.path.join(course, ".isolate-grade")
        os.makedirs(base, exist_ok=True)
        shared(base)
        lock = open_gradebook_lock(self, os.path.join(base, "gradebook.lock"))
        staged = os.path.relpath(tempfile.mkdtemp(prefix="staged-", dir=base), course)
        guard = {"course": course}
        try:
            guard["rejected"], guard["staged"] = stage_all(self, course, staged)
            self._isolate_grade = guard
            state["lock"] = lock
            # (not nbgrader's temp_attrs: it does not restore when the block raises, and a
            # rejection raises)
            guard["submitted"] = self.coursedir.submitted_directory
            self.coursedir.submitted_directory = staged
            return start(self)
        finally:
            if "submitted" in guard:
                self.coursedir.submitted_directory = guard["submitted"]
            state["lock"] = None
            self._isolate_grade = None
            release_student(guard)
            lock.close()
            shutil.rmtree(os.path.join(course, staged), ignore_errors=True)

    def guarded_init_notebooks(self):
        guard = getattr(self, "_isolate_grade", None)
        if guard is None:
            return init_notebooks(self)
        if guard["staged"] or not guard["rejected"]:
            # (nothing at all: nbgrader's own "No notebooks were matched" error)
            init_notebooks(self)
        else:
            self.assignments, self.notebooks = {}, []
        for a, s in guard["rejected"]:
            self.assignments[self._format_source(a, s)] = []

    def guarded_init_destination(self, assignment_id, student_id):
        guard = getattr(self, "_isolate_grade", None)
        if guard is None:
            return init_destination(self, assignment_id, student_id)
        release_student(guard)
        why = guard["rejected"].get((assignment_id, student_id))
        if why is not None:
            self.log.error("isolate-grade: %s of %s: %s", student_id, assignment_id, why)
            raise SubmissionRejected(f"{student_id} of {assignment_id}: {why}")
        guard["student_fd"] = student_lock(guard["course"], assignment_id, student_id)
        return init_destination(self, assignment_id, student_id)

    Autograde.start = guarded_start
    Autograde.init_notebooks = guarded_init_notebooks
    Autograde.init_destination = guarded_init_destination

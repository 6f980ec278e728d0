"""The batch's contract with its grading workers (src/grade/protocol.rs and src/grade/worker.py):
the same messages on both sides, a protocol or nbgrader version the worker was not made for
refused with a clear message. No root, no sandbox: the worker is run alone."""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKER = ROOT / "src" / "grade" / "worker.py"
PROTOCOL_RS = ROOT / "src" / "grade" / "protocol.rs"


@pytest.fixture(scope="module")
def worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("isolate_grade_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def rust_fields() -> Dict[str, List[str]]:
    """Each struct of protocol.rs and its fields as they are on the wire (serde renames applied)."""
    text = PROTOCOL_RS.read_text()
    out: Dict[str, List[str]] = {}
    for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
        fields = []
        rename: Optional[str] = None
        for line in m.group(2).splitlines():
            r = re.search(r'#\[serde\(rename = "(\w+)"\)\]', line)
            if r:
                rename = r.group(1)
            f = re.match(r"\s*pub (\w+):", line)
            if f:
                fields.append(rename or f.group(1))
                rename = None
        out[m.group(1)] = fields
    return out


def setup_message(worker: ModuleType, course: Path, protocol: Optional[int] = None) -> Dict[str, object]:
    return {
        "msg": "setup", "protocol": worker.PROTOCOL if protocol is None else protocol, "course": str(course),
        "assignment": "ps1", "submitted": "staged", "twins": {}, "languages": {}, "route": "",
        "jupyter_path": str(course), "lock": str(course / "lock"), "reports": str(course / "reports"),
        "on_kernel_death": None, "max_restarts": None,
    }


def run_worker(course: Path, first: Dict[str, object], **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "ISOLATE_GRADE_UNTESTED_NBGRADER"}
    e.update(env)
    return subprocess.run([sys.executable, "-c", WORKER.read_text()], input=json.dumps(first) + "\n",
                          capture_output=True, text=True, cwd=course, env=e, timeout=120)


def test_both_sides_have_the_same_messages(worker):
    """Every dataclass of worker.py has the fields of the struct of protocol.rs of its name, and
    both sides agree on the protocol's version."""
    rust = rust_fields()
    for cls in (worker.Setup, worker.Grade, worker.Ready, worker.Fatal, worker.NotebookScore, worker.Failure,
                worker.KernelDeath, worker.Answer):
        assert [f.name for f in dataclasses.fields(cls)] == rust[cls.__name__], cls.__name__
    version = re.search(r"pub const PROTOCOL: u32 = (\d+);", PROTOCOL_RS.read_text())
    assert version is not None and int(version.group(1)) == worker.PROTOCOL


def test_messages_round_trip(worker, tmp_path):
    setup = setup_message(worker, tmp_path)
    decoded = worker.decode(json.dumps(setup))
    assert isinstance(decoded, worker.Setup) and decoded.course == str(tmp_path)
    assert json.loads(worker.encode(decoded)) == setup
    assert worker.decode('{"msg": "grade", "student": "s1"}') == worker.Grade("s1")
    answer = worker.Answer(
        student="s1", success=False, wall=1.5, notebook_wall={"p1": 1.0}, log="log \udce9", error="Traceback",
        notebooks={"p1": worker.NotebookScore(1.0, 2.0, False)}, seconds_late=0.0,
        failure=worker.failure(KeyError("k"), "p1"), kernel_reports={"p1": ["/r/s1/p1/kernel-1.json"]})
    line = worker.encode(answer)
    assert "\n" not in line
    got = json.loads(line)
    assert got["msg"] == "answer" and got["log"] == "log \\udce9", "strings are valid UTF-8"
    assert got["failure"] == {"type": "KeyError", "errno": None, "notebook": "p1", "summary": "'k'", "ours": False}
    assert got["notebooks"]["p1"] == {"score": 1.0, "max_score": 2.0, "needs_manual_grade": False}
    assert json.loads(worker.encode(worker.Fatal("e"))) == {"msg": "fatal", "error": "e"}
    ready = json.loads(worker.encode(worker.Ready(worker.PROTOCOL, 7, ["p1"], "0.9.6", "sqlite")))
    assert ready == {"msg": "ready", "protocol": worker.PROTOCOL, "pid": 7, "notebooks": ["p1"], "nbgrader": "0.9.6",
                     "gradebook": "sqlite"}
    for bad in ('{"student": "s1"}', '{"msg": "grade", "student": "s1", "force": true}', '{"msg": "grade"}',
                '{"msg": "answer", "student": "s1"}', "[]", "not json"):
        with pytest.raises(worker.ProtocolError):
            worker.decode(bad)


def test_a_setup_of_another_protocol_is_refused_clearly(worker, tmp_path):
    r = run_worker(tmp_path, setup_message(worker, tmp_path, protocol=worker.PROTOCOL + 998))
    assert r.returncode == 2, r
    fatal = json.loads(r.stdout)
    assert fatal["msg"] == "fatal", fatal
    assert f"protocol {worker.PROTOCOL + 998}" in fatal["error"], fatal
    assert f"speaks {worker.PROTOCOL}" in fatal["error"] and "same build" in fatal["error"], fatal


def test_an_untested_nbgrader_is_refused_clearly(worker, tmp_path):
    fake = tmp_path / "fake" / "nbgrader"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "0.8.3"\n')
    path = {"PYTHONPATH": str(fake.parent)}
    r = run_worker(tmp_path, setup_message(worker, tmp_path), **path)
    assert r.returncode == 2, r
    fatal = json.loads(r.stdout)
    assert fatal["msg"] == "fatal", fatal
    assert "nbgrader 0.8.3" in fatal["error"] and ">=0.9,<0.10" in fatal["error"], fatal
    assert "ISOLATE_GRADE_UNTESTED_NBGRADER=1" in fatal["error"], fatal
    # the escape hatch: it goes on (and fails further on, the fake being no nbgrader), saying so
    r = run_worker(tmp_path, setup_message(worker, tmp_path), ISOLATE_GRADE_UNTESTED_NBGRADER="1", **path)
    fatal = json.loads(r.stdout)
    assert "starting nbgrader failed" in fatal["error"], fatal
    assert "not among those tested" in r.stderr, r.stderr
    # the range itself
    assert worker.nbgrader_refused("0.9.6", {}) is None
    assert worker.nbgrader_refused("0.9.0", {}) is None
    for v in ("0.8.3", "0.10.0", "0.10.0rc1", "1.0", "unknown"):
        assert worker.nbgrader_refused(v, {}) is not None, v


def test_route_names_each_kernels_report_and_submission_on_its_command_line(tmp_path):
    """The batch's kernels are told their report file and submission (`--report`, `--submission`,
    before the kernel's own argv); the files the worker is told are those, in order."""
    route: Dict[str, object] = {}
    exec((ROOT / "src" / "route.py").read_text(), route)

    class FakeManager:
        connection_file = str(tmp_path / "kernel-abc.json")

        def format_kernel_cmd(self, extra_arguments=None):
            return ["/bin/isolate-grade", "kernel", "--policy", "default", "--", "python", "-f", self.connection_file]

    km = FakeManager()
    route["_name_report_and_submission"](km, str(tmp_path / "reports"), "/c/autograded/s1/ps1")
    cmd = km.format_kernel_cmd()
    at = cmd.index("--")
    assert cmd[at - 4:at] == ["--report", cmd[at - 3], "--submission", "/c/autograded/s1/ps1"], cmd
    assert cmd[at:] == ["--", "python", "-f", km.connection_file]
    report = cmd[at - 3]
    assert os.path.dirname(report) == str(tmp_path / "reports") and report.endswith(".json")
    assert route["_report_files"](str(tmp_path / "reports"), [km]) == [report]
    # a kernel started the other way (install's block): its report is named after its connection file
    plain = FakeManager()
    assert route["_report_files"]("/r", [plain]) == ["/r/kernel-abc.json"]
    # and the first report that did not end ok explains the notebook's end
    (tmp_path / "reports").mkdir()
    with open(report, "w") as f:
        json.dump({"explanation": {"cause": "limit", "words": "used too much memory"}}, f)
    assert route["_first_ended"]([str(tmp_path / "missing.json"), report])["cause"] == "limit"


def in_fresh_python(code: str, cwd: Path) -> str:
    """Run CODE in a new interpreter with the worker loaded as `w` (its patches are process-wide)."""
    prelude = (f"import importlib.util, sys\nspec = importlib.util.spec_from_file_location('w', {str(WORKER)!r})\n"
               "w = importlib.util.module_from_spec(spec); sys.modules['w'] = w; spec.loader.exec_module(w)\n")
    env = dict(os.environ, PATH=os.pathsep.join((os.path.dirname(sys.executable), os.environ.get("PATH", ""))))
    r = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_the_worker_skips_the_iri_grammar_and_nbformat_still_validates(tmp_path):
    """No rfc3987-syntax parser built in a worker (1.5 s of CPU), and a notebook that breaks
    nbformat's schema is still refused."""
    out = in_fresh_python(
        "w.skip_unused_grammar()\n"
        "import nbformat, jsonschema\n"
        "print('rfc3987_syntax' in sys.modules and sys.modules['rfc3987_syntax'] is not None)\n"
        "nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('1')])\n"
        "nbformat.validate(nb)\n"
        "nb.cells[0]['execution_count'] = 'not a number'\n"
        "try:\n    nbformat.validate(nb)\nexcept nbformat.ValidationError:\n    print('refused')\n", tmp_path)
    assert out.split() == ["False", "refused"]


def test_the_worker_shares_one_engine_per_gradebook_and_sees_every_write(tmp_path):
    """Gradebooks opened one after the other share the worker's engine; what one wrote and
    closed, the next reads, also when another process wrote it in between."""
    db = f"sqlite:///{tmp_path / 'gradebook.db'}"
    out = in_fresh_python(
        "w.share_engines()\n"
        "from nbgrader.api import Gradebook\n"
        "import subprocess\n"
        f"db = {db!r}\n"
        "with Gradebook(db) as a:\n    a.add_student('s1')\n    engine = a.engine\n"
        "other = 'from nbgrader.api import Gradebook\\nwith Gradebook(%r) as g: g.add_student(\"s2\")' % db\n"
        "subprocess.run([sys.executable, '-c', other], check=True)\n"
        "with Gradebook(db) as b:\n    print(b.engine is engine, sorted(s.id for s in b.students))\n", tmp_path)
    assert out.strip() == "True ['s1', 's2']"

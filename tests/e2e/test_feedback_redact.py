"""Feedback that never reveals hidden tests (issue #18, src/feedback_redact.py).

Two levels:
- `redact` on crafted autograded notebooks: ipykernel's ANSI tracebacks (several frames; a
  hidden region calling a helper defined in the visible part, a visible cell calling a helper a
  hidden region defined; a frame of the visible part whose context quotes hidden lines), IRkernel's
  error format, a `File path:L` frame as xeus-python writes them, Octave's errors on stderr,
  streams, displays and results, each `errors` mode, strict refusal; nbgrader's own
  `determine_grade` gives every cell the same grade before and after.
- real nbgrader (bare: no sandbox, so this runs anywhere): a course whose hidden tests carry a
  marker in names, values, comments and messages, in Python (python3) and R (ir), autograded,
  then `nbgrader generate_feedback` with the redaction in its config (the code `install` puts in
  the block, and a config that sets the preprocessors list after it): no feedback file has the
  marker (bytes, and HTML-unescaped), while the score of every cell and notebook is nbgrader's
  own (unredacted) feedback's; strict refusal of a notebook; and, as root, the block that
  `isolate-grade install --course` really writes, with the autograde in the sandbox.
- real xeus-python (xpython) and Octave (octave) kernels, bare nbgrader, a notebook each whose
  hidden tests fail, pass and raise inside a helper they define: no marker, nbgrader's scores.
"""

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from conftest import BIN, NEEDS_ROOT, ROOT, Notebook, Python, make_assignment, nb_cell

M = "SECRET_HIDDEN_MARKER_42"
REDACT_PY = ROOT / "src" / "feedback_redact.py"
_spec = importlib.util.spec_from_file_location("feedback_redact", REDACT_PY)
fr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fr)

from nbgrader.utils import determine_grade, is_grade  # noqa: E402

B, E = "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"


# ---------------------------------------------------------------------------------------------
# crafted notebooks

def grade_cell(source, count, outputs=(), points=2, grade_id=None):
    c = new_code_cell(source, execution_count=count)
    c.outputs = [nbformat.from_dict(o) for o in outputs]  # (unvalidated: crafted shapes too)
    c.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "points": points,
                              "grade_id": grade_id or f"t{count}", "schema_version": 3, "task": False}
    return c


def code(source, count, outputs=()):
    c = new_code_cell(source, execution_count=count)
    c.outputs = [nbformat.from_dict(o) for o in outputs]
    return c


def ansi_frame(count, line, lines, func=None):
    """A frame as ipykernel (IPython 8) writes it: `Cell In[N], line L[, in f(v)]`, then the
    quoted lines numbered, the current one with an arrow; all in ANSI colour."""
    head = f"\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[{count}]\x1b[39m\x1b[32m, line {line}\x1b[39m"
    if func:
        name, args = func.split("(", 1)
        head += f", in \x1b[36m{name}\x1b[39m\x1b[34m({args}\x1b[39m"
    body = []
    for n, text in lines.items():
        arrow = "\x1b[32m----> \x1b[39m\x1b[32m" if n == line else "\x1b[32m      "
        body.append(f"{arrow}{n}\x1b[39m \x1b[38;5;28;01m{text}\x1b[39;00m")
    return head + "\n" + "\n".join(body) + "\n"


def py_error(ename, evalue, frames):
    return new_output("error", ename=ename, evalue=evalue, traceback=[
        "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
        f"\x1b[31m{ename}\x1b[39m                            Traceback (most recent call last)",
        *frames, f"\x1b[31m{ename}\x1b[39m: {evalue}"])


def notebook(cells):
    nb = new_notebook()
    nb.cells = cells
    return nb


def lines_of(source):
    return {n: t for n, t in enumerate(source.split("\n"), 1)}


def redacted(nb, errors="full", strict=True, begin=B, end=E):
    grades = [determine_grade(c) if is_grade(c) else None for c in nb.cells]
    nb, summary = fr.redact(nb, errors, begin, end, strict=strict)
    # pass/fail and points as nbgrader decides them from the notebook: unchanged
    assert [determine_grade(c) if is_grade(c) else None for c in nb.cells] == grades
    nbformat.validate(nb)
    text = nbformat.writes(nb)
    assert M not in text and "SECRET" not in text, text
    assert begin not in text and end not in text
    return nb, summary


def plain_tb(out):
    return "\n".join(fr.strip_ansi(t) for t in out.traceback)


STUDENT = "def square(x):\n    if x > 3:\n        raise ValueError('too big')\n    return x * x"
HELPER_CELL = (f"assert square(0) == 0\n### {B}\ndef check_{M}(v):\n    # {M}\n    return square(v) == v * v\n"
               f"assert check_{M}(5), '{M} wrong'\n### {E}")


def test_a_hidden_region_calling_the_students_code_keeps_only_the_students_frame():
    # the hidden region (lines 2-7) defines a helper and calls it; the student's code raises
    tb = py_error("ValueError", "too big", [
        ansi_frame(2, 6, {k: v for k, v in lines_of(HELPER_CELL).items() if 4 <= k <= 7}),
        ansi_frame(2, 5, {k: v for k, v in lines_of(HELPER_CELL).items() if 3 <= k <= 6}, func=f"check_{M}(v)"),
        ansi_frame(1, 3, lines_of(STUDENT), func="square(x)"),
    ])
    nb = notebook([code(STUDENT, 1), grade_cell(HELPER_CELL, 2, [tb])])
    nb, s = redacted(nb)
    assert nb.cells[1].source == "assert square(0) == 0\n# hidden tests removed"
    out = nb.cells[1].outputs[0]
    t = plain_tb(out)
    assert "Cell In[1], line 3, in square(x)" in t and "raise ValueError('too big')" in t, t
    assert "In[2]" not in t and "(2 traceback entries of the hidden tests removed)" in t
    assert t.endswith("ValueError: too big"), t  # the student's own message: kept
    assert (s.regions, s.cells, s.frames, s.messages) == (1, 1, 2, 0)


def test_a_hidden_region_calling_a_visible_helper_keeps_the_helper_and_hides_the_expected_value():
    helper = "def close_to(a, b):\n    assert a == b, f'{a} is not {b}'"
    test = f"### {B}\nclose_to(square(7), 49)  # {M}\n### {E}"
    tb = py_error("AssertionError", "14 is not 49", [
        ansi_frame(3, 2, lines_of(test)), ansi_frame(2, 2, lines_of(helper), func="close_to(a, b)")])
    nb = notebook([code("def square(x):\n    return x + x", 1), code(helper, 2), grade_cell(test, 3, [tb])])
    nb, s = redacted(nb)
    t = plain_tb(nb.cells[2].outputs[0])
    assert "Cell In[2], line 2, in close_to(a, b)" in t and "assert a == b" in t, t
    # 49 is written only in the hidden region: the message would reveal the expected value
    assert "49" not in t and t.endswith("AssertionError: (message hidden: it quotes the hidden tests)"), t
    assert nb.cells[2].outputs[0].evalue == fr.HIDDEN_MESSAGE
    assert (s.frames, s.messages) == (1, 1)


def test_a_visible_cell_calling_a_helper_a_hidden_region_defined_loses_that_frame():
    hidden = f"assert True\n### {B}\ndef _verify(v):\n    raise ValueError('{M} for ' + str(v))\n### {E}"
    visible = "_verify(3)"
    tb = py_error("ValueError", f"{M} for 3", [
        ansi_frame(5, 1, {1: visible}), ansi_frame(4, 4, {3: "def _verify(v):", 4: f"    raise ValueError('{M} for ' + str(v))"},
                                                    func="_verify(v)")])
    nb = notebook([grade_cell(hidden, 4), grade_cell(visible, 5, [tb])])
    nb, s = redacted(nb)
    t = plain_tb(nb.cells[1].outputs[0])
    assert "Cell In[5], line 1" in t and "In[4]" not in t and "ValueError: (message hidden" in t, t
    assert (s.frames, s.messages) == (1, 1)


def test_a_frame_at_a_visible_line_loses_the_hidden_lines_it_quotes():
    src = f"x = 1\n### {B}\nassert x == 1  # {M}\n### {E}\nassert x == 2, 'x is not 2'"
    tb = py_error("AssertionError", "x is not 2", [ansi_frame(7, 5, lines_of(src))])
    nb = notebook([grade_cell(src, 7, [tb])])
    nb, s = redacted(nb)
    t = plain_tb(nb.cells[0].outputs[0])
    assert "----> 5 assert x == 2" in t and "1 x = 1" in t and " 3 " not in t, t
    assert t.endswith("AssertionError: x is not 2"), t  # quotes nothing hidden: kept
    assert (s.frames, s.lines) == (0, 3)


def test_irkernels_errors_keep_only_the_calls_that_quote_nothing_hidden():
    src = f"stopifnot(square(2) == 4)\n### {B}\n{M}_v <- 16\nstopifnot(square(4) == {M}_v)\n### {E}"
    err = new_output("error", ename="ERROR", evalue=f"Error: square(4) == {M}_v is not TRUE\n", traceback=[
        f"Error: square(4) == {M}_v is not TRUE\nTraceback:\n", f"1. stopifnot(square(4) == {M}_v)",
        "2. square(4)",  # the hidden test's input, 4: only the hidden region calls square(4)
        "3. stopifnot(square(2) == 4)"])
    nb = notebook([grade_cell(src, 2, [err])])
    nb, s = redacted(nb)
    out = nb.cells[0].outputs[0]
    assert out.traceback == ["ERROR: (message hidden: it quotes the hidden tests)",
                             "(2 traceback entries of the hidden tests removed)", "3. stopifnot(square(2) == 4)"], \
        out.traceback


def test_a_file_frame_as_xeus_python_writes_it_goes_by_what_it_quotes():
    src = f"### {B}\nexpected = 16  # {M}\nassert square(4) == expected\n### {E}"
    frame = ("\x1b[0;31mFile \x1b[0;32m/tmp/xpython_41/2834.py:3\x1b[0m\n      1 ### BEGIN HIDDEN TESTS\n"
             f"      2 expected = 16  # {M}\n----> 3 assert square(4) == expected\n")
    err = py_error("AssertionError", "", [frame])
    nb = notebook([code("def square(x):\n    return x + x", 1), grade_cell(src, 2, [err])])
    nb, s = redacted(nb)
    t = plain_tb(nb.cells[1].outputs[0])
    assert "xpython" not in t and "expected" not in t and t.endswith("AssertionError"), t


def test_an_ename_written_as_the_class_repr_as_xeus_python_does_names_the_type_as_the_traceback():
    src = f"assert square(2) == 4\n### {B}\nassert square(4) == 16, '{M}: ValueError'\n### {E}"
    tb = py_error("ValueError", M, [ansi_frame(2, 3, lines_of(src))])
    tb.ename = "<class 'ValueError'>"
    nb = notebook([code("def square(x):\n    return x + x", 1), grade_cell(src, 2, [tb])])
    nb, s = redacted(nb)
    t = nb.cells[1].outputs[0].traceback
    # the header (its type, a word the hidden region also writes) kept; the error line counted
    # as the error line, not as a removed frame
    assert fr.strip_ansi(t[1]).startswith("ValueError ") and "Traceback" in fr.strip_ansi(t[1]), t
    assert fr.strip_ansi(t[-1]) == "ValueError: (message hidden: it quotes the hidden tests)", t
    assert s.frames == 1, s


def test_octaves_error_on_stderr_stays_a_failure_without_its_text():
    src = f"assert(square(2) == 4)\n### {B}\nassert(square(4) == 16, '{M}')\n### {E}"
    nb = notebook([grade_cell(src, 3, [
        new_output("stream", name="stdout", text=f"ans = {M}\n"),
        new_output("stream", name="stderr", text=f"error: {M}\nerror: called from\n    assert at line 107\n")])])
    nb, s = redacted(nb)
    outs = nb.cells[0].outputs
    assert [(o.name, o.text) for o in outs] == [("stdout", fr.HIDDEN_OUTPUT), ("stderr", fr.HIDDEN_OUTPUT)]
    assert determine_grade(nb.cells[0]) == (0, 2)
    assert s.outputs == 2


def test_a_cell_with_a_hidden_region_loses_its_prints_and_displays_but_not_its_partial_credit():
    src = f"### {B}\nprint({M!r})\ndisplay({M!r})\n0.5\n### {E}"
    outs = [new_output("stream", name="stdout", text=f"{M}\n"),
            new_output("display_data", data={"text/plain": f"'{M}'", "text/html": f"<b>{M}</b>"}),
            new_output("execute_result", data={"text/plain": "0.5"}, execution_count=1)]
    nb = notebook([grade_cell(src, 1, outs, points=2)])
    nb, s = redacted(nb)
    kinds = [(o.output_type, o.get("text") or o.get("data")) for o in nb.cells[0].outputs]
    assert kinds == [("stream", fr.HIDDEN_OUTPUT), ("execute_result", {"text/plain": "0.5"})], kinds
    assert determine_grade(nb.cells[0]) == (0.5, 2)  # nbgrader's partial credit
    # a result that is not a bare number: hidden too
    nb = notebook([grade_cell(src, 1, [new_output("execute_result", data={"text/plain": f"'{M}'"},
                                                            execution_count=1)])])
    redacted(nb)


def test_the_errors_modes():
    src = f"assert square(2) == 4, 'two'\n### {B}\nassert square(4) == 16, '{M}'\n### {E}"
    vis = "def f(x):\n    return x"

    def nb_with(evalue):
        tb = py_error("AssertionError", evalue, [ansi_frame(2, 1, {1: "assert square(2) == 4, 'two'"})])
        return notebook([code(vis, 1), grade_cell(src, 2, [tb])])

    out = redacted(nb_with("two"), "full")[0].cells[1].outputs[0]
    assert "----> 1 assert square(2) == 4" in plain_tb(out) and out.traceback[-1].endswith("AssertionError: two")
    out = redacted(nb_with("two"), "message")[0].cells[1].outputs[0]
    assert (out.ename, out.evalue, out.traceback) == ("AssertionError", "two", ["AssertionError: two"])
    out = redacted(nb_with(M), "message")[0].cells[1].outputs[0]
    assert out.traceback == ["AssertionError: (message hidden: it quotes the hidden tests)"]
    out = redacted(nb_with("two"), "none")[0].cells[1].outputs[0]
    assert (out.ename, out.evalue, out.traceback) == ("Error", "failed", ["failed"])
    # a cell that is not a test keeps its error as the kernel wrote it
    err = py_error("NameError", "name 'y' is not defined", [ansi_frame(1, 2, {2: "    return y"})])
    nb = notebook([code("def f(x):\n    return y", 1, [err]), grade_cell(src, 2)])
    assert redacted(nb, "none")[0].cells[0].outputs[0] == err
    with pytest.raises(ValueError):
        fr.redact(nb, "some", B, E, strict=True)


def test_other_delimiters_as_nbgrader_is_configured():
    src = f"ok = 1\n## BEGIN SECRET CHECKS\nassert ok, '{M}'\n## END SECRET CHECKS"
    nb = notebook([grade_cell(src, 1)])
    nb, _ = redacted(nb, begin="BEGIN SECRET CHECKS", end="END SECRET CHECKS")
    assert nb.cells[0].source == "ok = 1\n# hidden tests removed"


@pytest.mark.parametrize("what,cell,message", [
    ("an output of a shape not known here",
     grade_cell(f"### {B}\nx = '{M}'\n### {E}", 1, [{"output_type": "widget_state", "x": M}]), "shape not known"),
    ("a begin without an end", grade_cell(f"### {B}\nx = '{M}'", 1), "without"),
    ("a nested begin", grade_cell(f"### {B}\n### {B}\nx = '{M}'\n### {E}", 1), "nested"),
    ("an end without a begin", grade_cell(f"x = 1\n### {E}", 1), "without"),
])
def test_strict_refuses_what_it_cant_redact_with_certainty(what, cell, message):
    nb = notebook([cell])
    with pytest.raises(fr.RedactError, match=message):
        fr.redact(nb, "full", B, E, strict=True)


def test_strict_refuses_a_hidden_line_still_present_and_lax_drops_its_output():
    hidden = f"x = 1\n### {B}\nexpected_total = sum(range(10))\n### {E}"

    def nb():
        # a later cell that is not a test prints the hidden line (an instructor's debugging)
        return notebook([grade_cell(hidden, 1), code("print(_ih[1])", 2, [
            new_output("stream", name="stdout", text="expected_total = sum(range(10))\n")])])

    with pytest.raises(fr.RedactError, match="still quotes the hidden tests"):
        fr.redact(nb(), "full", B, E, strict=True)
    out, s = fr.redact(nb(), "full", B, E, strict=False)
    assert out.cells[1].outputs == [] and s.outputs == 1


def test_strict_off_drops_an_unknown_output_and_hides_an_open_region_to_the_cells_end():
    nb = notebook([grade_cell(f"a = 1\n### {B}\nx = '{M}'", 1, [{"output_type": "odd", "x": M}])])
    nb, s = fr.redact(nb, "full", B, E, strict=False)
    assert nb.cells[0].source == "a = 1\n# hidden tests removed" and nb.cells[0].outputs == []


# ---------------------------------------------------------------------------------------------
# real nbgrader: autograde, then generate_feedback

def py_nb(name: str) -> Notebook:
    return Notebook(name, [
        nb_cell("code", "def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION",
                grade_id="answer", solution=True),
        nb_cell("code", "def close_to(a, b):\n    assert a == b, f'{a} is not {b}'\n    return True"),
        nb_cell("code", f"assert square(2) == 4\n### {B}\n{M}_VALUE = 16  # {M} comment\nprint('{M} printed')\n"
                        f"assert square(4) == {M}_VALUE, '{M} message'\n### {E}", grade_id="test_plain", points=2),
        nb_cell("code", f"assert square(0) == 0\n### {B}\ndef check_{M}(v):\n    # {M} in the helper\n"
                        f"    if square(v) != v * v:\n        raise ValueError('{M} wrong for ' + str(v))\n"
                        f"check_{M}(5)\n### {E}\nprint('visible after')", grade_id="test_helper", points=3),
        nb_cell("code", f"### {B}\nclose_to(square(7), 49)  # {M}\n### {E}", grade_id="test_visible_helper",
                points=1),
    ])


def r_nb(name: str) -> Notebook:
    return Notebook(name, [
        nb_cell("code", "square <- function(x) {\n  ### BEGIN SOLUTION\n  x^2\n  ### END SOLUTION\n}",
                grade_id="answer", solution=True),
        nb_cell("code", f"stopifnot(square(2) == 4)\n### {B}\n{M}_value <- 16  # {M} comment\n"
                        f"print('{M} printed')\nstopifnot(square(4) == {M}_value)\n### {E}",
                grade_id="test_plain", points=2),
        nb_cell("code", f"stopifnot(square(0) == 0)\n### {B}\ncheck_{M} <- function(v) {{\n  # {M} in the helper\n"
                        f"  if (square(v) != v * v) stop('{M} wrong for ', v)\n}}\ncheck_{M}(5)\n### {E}",
                grade_id="test_helper", points=3),
    ], kernel="ir", language="R")


ANSWERS = {
    "good": {"p": "def square(x):\n    return x * x", "r": "square <- function(x) x^2"},
    # right for 0 and 2 (the visible tests), wrong for 4, 5, 7 (the hidden ones)
    "bad": {"p": "def square(x):\n    return x + x", "r": "square <- function(x) x + x"},
    # raises inside the hidden helper's call
    "raiser": {"p": "def square(x):\n    if x > 3:\n        raise ValueError('too big')\n    return x * x",
               "r": "square <- function(x) if (x > 3) stop('too big') else x^2"},
}
SCORE = re.compile(r'<a href="#([\w-]+)">[^<]*</a> \(Score: ([0-9.]+) / ([0-9.]+)\)')
TOTAL = re.compile(r"<h4>(\w+) \(Score: ([0-9.]+) / ([0-9.]+)\)</h4>")


def redaction_config(errors: str = "") -> str:
    """What `install`'s block adds for the feedback (src/feedback.rs; the root test below runs
    the real block): the module, then the call."""
    call = f"_isolate_grade_feedback(c, {errors!r})" if errors else "_isolate_grade_feedback(c)"
    return "\n" + REDACT_PY.read_text() + "\n" + call + "\n"


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    """The course, autograded once by bare nbgrader, with nbgrader's own feedback."""
    root = tmp_path_factory.mktemp("fb") / "course"
    c = make_assignment(root, Python("venv", Path(sys.executable)), [py_nb("p"), r_nb("r")], ANSWERS)
    c.nbgrader("autograde", c.assignment)
    c.nbgrader("generate_feedback", c.assignment)
    return c


def copy_of(c, dst: Path, config: str = ""):
    shutil.copytree(c.root, dst)
    shutil.rmtree(dst / "feedback")
    with open(dst / "nbgrader_config.py", "a") as f:
        f.write(config)
    return type(c)(dst, c.assignment, c.notebook, c.python)


def feedback_files(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "feedback").rglob("*")) if p.is_file()}


def scores(root: Path) -> Dict[str, tuple]:
    out = {}
    for p in sorted((root / "feedback").rglob("*.html")):
        text = p.read_text()
        out[str(p.relative_to(root))] = (TOTAL.findall(text), sorted(SCORE.findall(text)))
    return out


def assert_no_marker(root: Path):
    files = feedback_files(root)
    assert any(k.endswith(".html") for k in files), files.keys()
    for name, data in files.items():
        assert M.encode() not in data, name
        assert M not in html.unescape(data.decode(errors="replace")), name
        assert B.encode() not in data and E.encode() not in data, name


def test_nbgraders_own_feedback_shows_the_hidden_tests(graded):
    # the problem, so that the tests below mean something
    files = feedback_files(graded.root)
    for s in ANSWERS:
        for nb in ("p", "r"):
            assert M.encode() in files[f"feedback/{s}/env1/{nb}.html"], (s, nb)
    sc = scores(graded.root)
    # every test cell has a hidden part that only the good square passes
    for s, got in (("good", ("6.0", "5.0")), ("bad", ("0.0", "0.0")), ("raiser", ("0.0", "0.0"))):
        assert [sc[f"feedback/{s}/env1/{nb}.html"][0][0][1] for nb in ("p", "r")] == list(got), s


@pytest.mark.parametrize("errors", ["", "full", "message", "none"])
def test_generate_feedback_with_the_redaction_has_no_hidden_test_and_the_same_scores(graded, tmp_path, errors):
    c = copy_of(graded, tmp_path / "course", redaction_config(errors))
    r = c.nbgrader("generate_feedback", c.assignment)
    assert "isolate-grade: hidden tests redacted from the feedback of bad/p" in r.stderr, r.stderr
    assert_no_marker(c.root)
    assert scores(c.root) == scores(graded.root)
    assert set(feedback_files(c.root)) == set(feedback_files(graded.root))
    bad = (c.root / "feedback/bad/env1/p.html").read_text()
    if errors in ("", "full"):
        assert "too big" in (c.root / "feedback/raiser/env1/p.html").read_text()  # the student's own error
        assert "close_to" in bad  # the visible helper's frame
    if errors == "none":
        assert "AssertionError" not in bad and "failed" in bad


def test_a_config_that_sets_the_preprocessors_after_the_block_still_redacts(graded, tmp_path):
    c = copy_of(graded, tmp_path / "course", redaction_config() + "\nfrom nbgrader.preprocessors import GetGrades\n"
                "c.GenerateFeedback.preprocessors = [GetGrades]\n")
    c.nbgrader("generate_feedback", c.assignment)
    assert_no_marker(c.root)
    assert scores(c.root) == scores(graded.root)


def test_strict_refuses_a_notebook_it_cant_redact_and_writes_no_feedback_for_it(graded, tmp_path):
    c = copy_of(graded, tmp_path / "course", redaction_config())
    path = c.root / "autograded/bad/env1/p.ipynb"
    nb = nbformat.read(path, as_version=4)
    # the student's cell prints one of the hidden lines (read from somewhere): not attributable
    nb.cells[0].outputs.append(nbformat.v4.new_output(
        "stream", name="stdout", text=f"assert square(4) == {M}_VALUE, '{M} message'\n"))
    nbformat.write(nb, path, version=4)
    r = c.nbgrader("generate_feedback", c.assignment, check=False)
    assert r.returncode != 0
    assert "no feedback for bad/env1/p: cell 1: an output still quotes the hidden tests" in r.stderr, r.stderr
    assert not (c.root / "feedback/bad/env1/p.html").exists()
    assert_no_marker(c.root)


@NEEDS_ROOT  # install needs root here (the sandbox)
def test_the_block_install_writes_redacts_the_formgrader_path(graded, tmp_path):
    """`isolate-grade install --course`, then nbgrader autograde (in the sandbox) and
    generate_feedback, as the formgrader's buttons run them."""
    from conftest import TEST_CONFIG, TWIN_HOME
    while subprocess.run(["pgrep", "-f", "test_attacks.py"], capture_output=True).stdout:
        import time
        time.sleep(30)  # CI's adversarial suite checks the host for stray sandboxes
    prefix = "isolate-grade-test-fb-"
    c = copy_of(graded, tmp_path / "course")
    shutil.rmtree(c.root / "autograded")
    env = dict(os.environ, ISOLATE_GRADE_CONFIG=str(TEST_CONFIG))
    env.pop("ISOLATE_GRADE_BINARY", None)
    try:
        r = subprocess.run([str(BIN), "install", "--python", sys.executable, "--course", str(c.root), "--twin-prefix",
                            prefix, "--kernel", "python3", "--kernel", "ir"], env=env, capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "_isolate_grade_feedback(c)" in (c.root / "nbgrader_config.py").read_text()
        c.nbgrader("autograde", c.assignment)
        c.nbgrader("generate_feedback", c.assignment)
        assert_no_marker(c.root)
        assert scores(c.root) == scores(graded.root)
        # the block fails closed: if the redaction can't be set up, no feedback at all
        cfg = c.root / "nbgrader_config.py"
        cfg.write_text(cfg.read_text().replace("    from nbconvert.preprocessors import Preprocessor\n",
                                                "    raise ImportError('no nbconvert')\n", 1))
        shutil.rmtree(c.root / "feedback")
        r = c.nbgrader("generate_feedback", c.assignment, check=False)
        assert r.returncode != 0 and "the feedback redaction could not be set up" in r.stderr, r.stderr
        assert not list((c.root / "feedback").rglob("*.html"))
    finally:
        for d in (TWIN_HOME / "kernels").glob(prefix + "*"):
            shutil.rmtree(d)


# ---------------------------------------------------------------------------------------------
# isolate-grade feedback ASSIGNMENT (no sandbox: nbgrader's GenerateFeedback, as the instructor)

def feedback_cmd(c, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), "feedback", c.assignment, "--course", str(c.root), "--python", sys.executable,
                           *args], capture_output=True, text=True, timeout=600)


def test_the_feedback_command_redacts_rewrites_nbgraders_own_feedback_and_resumes(graded, tmp_path):
    c = copy_of(graded, tmp_path / "course")
    # nbgrader's own feedback, with the hidden tests in it, is there already: written again
    shutil.copytree(graded.root / "feedback", c.root / "feedback")
    report = tmp_path / "report.json"
    r = feedback_cmd(c, "--jobs", "2", "--report", str(report))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_no_marker(c.root)
    assert scores(c.root) == scores(graded.root)
    assert "bad: feedback written; p: 3 hidden region(s)" in r.stdout, r.stdout
    import json
    rep = json.loads(report.read_text())
    assert [s["student"] for s in rep["students"]] == sorted(ANSWERS)
    assert all(s["ok"] for s in rep["students"])
    assert rep["students"][0]["notebooks"]["p"]["summary"]["regions"] == 3
    # resumes: nothing to do; another errors mode: written again
    again = feedback_cmd(c)
    assert again.returncode == 0 and again.stdout.count("feedback up to date") == 3, again.stdout
    none = feedback_cmd(c, "--student", "bad", "--feedback-errors", "none")
    assert none.returncode == 0 and "bad: feedback written" in none.stdout, none.stdout
    assert "AssertionError" not in (c.root / "feedback/bad/env1/p.html").read_text()
    assert_no_marker(c.root)


def test_the_feedback_command_names_a_refused_notebook_and_writes_none_for_it(graded, tmp_path):
    c = copy_of(graded, tmp_path / "course")
    path = c.root / "autograded/bad/env1/p.ipynb"
    nb = nbformat.read(path, as_version=4)
    nb.cells[0].outputs.append(nbformat.v4.new_output(
        "stream", name="stdout", text=f"assert square(4) == {M}_VALUE, '{M} message'\n"))
    nbformat.write(nb, path, version=4)
    r = feedback_cmd(c)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "bad: NO feedback: " in r.stdout and "p: refused (cell 1: an output still quotes" in r.stdout, r.stdout
    assert not (c.root / "feedback/bad/env1/p.html").exists()
    assert (c.root / "feedback/good/env1/p.html").exists()
    assert_no_marker(c.root)
    assert feedback_cmd(c, "--student", "nobody").returncode == 2


def test_a_quote_reformatted_by_the_kernel_is_still_found():
    # R deparses the failing call: spacing changed, every word and number also in the visible part
    src = f"stopifnot(square(2) == 4)\nx <- c(4, 16)\n### {B}\nstopifnot(square(4)==16)  # {M}\n### {E}"
    err = new_output("error", ename="ERROR", evalue="Error: square(4) == 16 is not TRUE\n", traceback=[
        "Error: square(4) == 16 is not TRUE\nTraceback:\n", "1. stopifnot(square(4) == 16)"])
    nb = notebook([grade_cell(src, 2, [err])])
    nb, s = redacted(nb)
    out = nb.cells[0].outputs[0]
    assert "square(4)" not in "".join(out.traceback) + out.evalue, out


def test_a_result_that_is_no_partial_credit_is_hidden():
    src = f"### {B}\n49\n### {E}"
    nb = notebook([grade_cell(src, 1, [new_output("execute_result", data={"text/plain": "49"}, execution_count=1)],
                              points=2)])
    nb, _ = fr.redact(nb, "full", B, E, strict=True)
    assert "49" not in nbformat.writes(nb)


@NEEDS_ROOT  # the batch needs root here (the sandbox)
def test_the_batch_with_feedback_grades_in_the_sandbox_then_writes_the_redacted_feedback(graded, tmp_path):
    from conftest import grader_env
    while subprocess.run(["pgrep", "-f", "test_attacks.py"], capture_output=True).stdout:
        import time
        time.sleep(30)  # CI's adversarial suite checks the host for stray sandboxes
    c = copy_of(graded, tmp_path / "course")
    shutil.rmtree(c.root / "autograded")
    report = tmp_path / "report.json"
    r = subprocess.run([str(BIN), c.assignment, "--course", str(c.root), "--feedback", "--feedback-errors", "message",
                        "--report", str(report)], env=grader_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bad: feedback written; p: 3 hidden region(s)" in r.stdout, r.stdout
    assert_no_marker(c.root)
    assert scores(c.root) == scores(graded.root)
    import json
    rep = json.loads((tmp_path / "report.feedback.json").read_text())
    assert rep["errors"] == "message" and len(rep["students"]) == 3


# ---------------------------------------------------------------------------------------------
# real xeus-python (xpython) and Octave (octave) kernels: their tracebacks as they write them

def xpython_nb(name: str) -> Notebook:
    nb = py_nb(name)
    return Notebook(name, nb.cells, kernel="xpython", language="python")


def octave_nb(name: str) -> Notebook:
    return Notebook(name, [
        nb_cell("code", "function y = square(x)\n  ### BEGIN SOLUTION\n  y = x^2;\n  ### END SOLUTION\nend",
                grade_id="answer", solution=True),
        nb_cell("code", f"assert(square(2) == 4)\n### {B}\n{M}_value = 16;  # {M} comment\n"
                        f"disp('{M} printed')\nassert(square(4) == {M}_value, '{M} message')\n### {E}",
                grade_id="test_plain", points=2),
        nb_cell("code", f"assert(square(0) == 0)\n### {B}\nfunction check_{M}(v)\n  # {M} in the helper\n"
                        f"  if square(v) != v * v\n    error('{M} wrong for %d', v);\n  end\nend\n"
                        f"check_{M}(5)\n### {E}", grade_id="test_helper", points=3),
    ], kernel="octave", language="octave")


KERNEL_ANSWERS = {
    "good": {"x": ANSWERS["good"]["p"], "o": "function y = square(x)\n  y = x^2;\nend"},
    "bad": {"x": ANSWERS["bad"]["p"], "o": "function y = square(x)\n  y = x + x;\nend"},
    "raiser": {"x": ANSWERS["raiser"]["p"],
               "o": "function y = square(x)\n  if x > 3\n    error('too big');\n  end\n  y = x^2;\nend"},
}


@pytest.fixture(scope="module")
def graded_kernels(tmp_path_factory):
    """A course of one xeus-python and one Octave notebook, autograded once by bare nbgrader
    (the real kernels), with nbgrader's own feedback."""
    root = tmp_path_factory.mktemp("fbk") / "course"
    c = make_assignment(root, Python("venv", Path(sys.executable)), [xpython_nb("x"), octave_nb("o")],
                        KERNEL_ANSWERS)
    c.nbgrader("autograde", c.assignment)
    c.nbgrader("generate_feedback", c.assignment)
    return c


def test_real_xpython_and_octave_feedback_has_no_hidden_test_and_the_same_scores(graded_kernels, tmp_path):
    g = graded_kernels
    own = feedback_files(g.root)
    for s in KERNEL_ANSWERS:
        for nb in ("x", "o"):
            assert M.encode() in own[f"feedback/{s}/env1/{nb}.html"], (s, nb)  # the problem, really there
    sc = scores(g.root)
    # xeus-python: the good square passes all, the others fail every hidden part. (Octave:
    # octave_kernel 1.1.1 prints Octave's errors on stdout, so nbgrader gives every test its
    # points; see the README's kernels section. The redaction keeps nbgrader's grade either way.)
    assert [sc[f"feedback/{s}/env1/x.html"][0][0][1] for s in ("good", "bad", "raiser")] == ["6.0", "0.0", "0.0"], sc
    octave = nbformat.read(g.root / "autograded/bad/env1/o.ipynb", as_version=4)
    assert any(o.get("name") == "stdout" and f"error: {M} wrong for 5" in o.get("text", "")
               for o in octave.cells[2].outputs), octave.cells[2].outputs
    xpy = nbformat.read(g.root / "autograded/bad/env1/x.ipynb", as_version=4)
    assert xpy.cells[2].outputs[-1].ename == "<class 'AssertionError'>"  # xeus-python's ename: the repr
    for errors in ("", "message"):
        c = copy_of(g, tmp_path / f"course{errors}", redaction_config(errors))
        r = c.nbgrader("generate_feedback", c.assignment)
        assert "hidden tests redacted from the feedback of bad/x" in r.stderr, r.stderr
        assert "hidden tests redacted from the feedback of bad/o" in r.stderr, r.stderr
        assert_no_marker(c.root)
        assert scores(c.root) == sc
        assert set(feedback_files(c.root)) == set(own)
        bad = (c.root / "feedback/bad/env1/x.html").read_text()
        # the error line as the traceback names the type, not xeus-python's repr of the class
        assert "AssertionError: (message hidden: it quotes the hidden tests)" in bad and "&lt;class" not in bad
        if not errors:
            # the student's own error, raised in their code called from the hidden helper: kept
            assert "ValueError: too big" in (c.root / "feedback/raiser/env1/x.html").read_text()
            assert "close_to" in bad  # the visible helper's frame
            # the traceback's header names the type (a word the hidden region also writes): kept
            assert bad.count("Traceback (most recent call last)") == 3, bad

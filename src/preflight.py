"""isolate-grade's kernel preflight: start a kernel exactly as nbgrader will, and see it work.

Run by `isolate-grade install`, `check --python` and at the start of every batch (src/preflight.rs)
as `python -c <this file> REQUEST_JSON`, as the instructor, with the interpreter the kernels use.
It starts the named kernelspec through jupyter_client (so the same argv, policy and privilege path:
`[sudo -n] isolate-grade kernel ...`), completes the `kernel_info` handshake, imports ipykernel
and the modules the assignment's notebooks import at top level, shuts the kernel down, and, for
each module that failed inside, tries it outside the sandbox too, so that the message can say
whether the sandbox is the reason. The answer is one JSON line on stdout.
"""

import ast
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

MARK = "ISOLATE_GRADE_PREFLIGHT "


@dataclass
class Check:
    """What to try in the kernel besides kernel_info (kernels.rs's Check)."""

    check: str  # "python": imports; "r": library(); "cell": an empty cell
    python: Optional[str] = None  # the kernel's interpreter, to try failed imports outside
    module: Optional[str] = None  # python -m MODULE
    r: Optional[str] = None  # the kernel's R, to try failed libraries outside


@dataclass
class Request:
    kernel_name: str
    cwd: str
    report_dir: str
    timeout: float  # seconds, for kernel_info and for the imports (preflight.rs)
    check: Check
    language: str = "python"
    jupyter_path: Optional[str] = None
    notebooks: List[str] = field(default_factory=list)
    expect_resource_dir: Optional[str] = None


@dataclass
class FailedImport:
    module: str
    inside: str
    outside: Optional[str]  # None: imports outside the sandbox
    location: Optional[str] = None  # where it was found outside


@dataclass
class Answer:
    ok: bool
    stage: str
    error: Optional[str] = None
    resource_dir: Optional[str] = None
    argv: List[str] = field(default_factory=list)
    modules: List[str] = field(default_factory=list)
    failed_imports: List[FailedImport] = field(default_factory=list)
    kernel_reports: List[dict] = field(default_factory=list)
    stderr: str = ""
    seconds: float = 0.0


def top_level_imports(source: str) -> List[str]:
    """Modules a cell imports at its top level (magics and shell lines dropped first)."""
    lines = [l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except (SyntaxError, ValueError):
        return []
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module != "__future__":
            found.append(node.module)
    return found


def code_cells(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
    except (OSError, ValueError):
        return []
    if not isinstance(nb, dict):
        return []
    out = []
    for cell in nb.get("cells", []):
        if isinstance(cell, dict) and cell.get("cell_type") == "code":
            src = cell.get("source", "")
            out.append("".join(src) if isinstance(src, list) else str(src))
    return out


R_LIBRARY = re.compile(r"""(?:^|[^\w.])(?:library|require|requireNamespace)\(\s*["']?([A-Za-z][A-Za-z0-9.]*)["']?\s*[,)]""")


def libraries_of(notebooks: List[str]) -> List[str]:
    """The R packages the notebooks attach (library(x), require(x), requireNamespace("x")), IRkernel first."""
    libs = ["IRkernel"]
    for path in notebooks:
        for src in code_cells(path):
            for line in src.splitlines():
                if line.lstrip().startswith("#"):
                    continue
                for m in R_LIBRARY.findall(line):
                    if m not in libs:
                        libs.append(m)
    return libs[:64]


def modules_of(notebooks: List[str], base: List[str]) -> List[str]:
    """`base`, then what the notebooks import, minus modules shipped beside them."""
    local_dirs = sorted({os.path.dirname(p) for p in notebooks})
    mods = list(base)
    for path in notebooks:
        for src in code_cells(path):
            for m in top_level_imports(src):
                top = m.split(".")[0]
                local = any(
                    os.path.exists(os.path.join(d, top + ext)) for d in local_dirs for ext in (".py", "", ".so")
                ) or any(glob.glob(os.path.join(d, top + ".*.so")) for d in local_dirs)
                if not local and m not in mods:
                    mods.append(m)
    return mods[:64]


PYTHON_CHECK = """
import importlib as _il, json as _js
_res = {}
for _m in %r:
    try:
        _il.import_module(_m)
        _res[_m] = None
    except BaseException as _e:
        _res[_m] = "%%s: %%s" %% (type(_e).__name__, _e)
print(%r + _js.dumps(_res))
"""

R_CHECK = """local({
  res <- list()
  for (p in %s) res[[p]] <- tryCatch({ if (requireNamespace(p, quietly = TRUE)) "" else "there is no package called it" },
                                     error = function(e) conditionMessage(e))
  cat(%s, "{", paste(sprintf('"%%s": "%%s"', names(res), gsub('["\\\\]', "'", unlist(res))), collapse = ", "), "}\\n", sep = "")
})
"""


def r_vector(names: List[str]) -> str:
    return "c(" + ", ".join(json.dumps(n) for n in names) + ")"


def outside(check: Check, module: str, cwd: str) -> Tuple[Optional[str], Optional[str]]:
    """Import `module` (attach the R package) with the kernel's runtime outside the sandbox:
    (error or None, its file)."""
    if check.check == "r":
        code = 'p <- commandArgs(TRUE)[1]; if (!requireNamespace(p, quietly = TRUE)) stop("there is no package called ", p); cat(find.package(p))'
        argv = [check.r, "--slave", "--no-save", "--no-restore", "-e", code, "--args", module]
    else:
        code = "import importlib, sys; m = importlib.import_module(sys.argv[1]); print(getattr(m, '__file__', None) or '')"
        argv = [check.python or sys.executable, "-c", code, module]
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return "importing it took longer than 120 s", None
    if r.returncode != 0:
        last = [l for l in r.stderr.strip().splitlines() if l.strip()]
        return (last[-1] if last else "failed"), None
    return None, r.stdout.strip() or None


def kernel_reports(d: str) -> List[dict]:
    out = []
    for p in sorted(glob.glob(os.path.join(d, "*.json"))):
        try:
            with open(p) as f:
                out.append(json.load(f))
        except (OSError, ValueError):
            pass
    return out


def kernel_language(kc, timeout: float) -> str:
    """language_info.name from the kernel's kernel_info_reply, lower case."""
    msg_id = kc.kernel_info()
    deadline = time.monotonic() + timeout
    while True:
        reply = kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
        if reply.get("parent_header", {}).get("msg_id") == msg_id:
            return str(reply["content"].get("language_info", {}).get("name", "")).lower()


def preflight(req: Request) -> Answer:
    t0 = time.monotonic()
    if req.jupyter_path:
        os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (req.jupyter_path, os.environ.get("JUPYTER_PATH")) if p)
    os.environ["ISOLATE_GRADE_REPORT_DIR"] = req.report_dir
    if req.check.check == "python":
        a_modules = modules_of(req.notebooks, ["ipykernel"] if req.check.module in ("ipykernel_launcher", "ipykernel") else [])
    elif req.check.check == "r":
        a_modules = libraries_of(req.notebooks)
    else:
        a_modules = []
    a = Answer(ok=False, stage="kernelspec", modules=a_modules)
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import KernelManager

    try:
        spec = KernelSpecManager().get_kernel_spec(req.kernel_name)
    except NoSuchKernel:
        a.error = f"no kernelspec named {req.kernel_name!r} is found by this Python's Jupyter"
        return a
    a.resource_dir, a.argv = spec.resource_dir, list(spec.argv)
    if req.expect_resource_dir and os.path.realpath(spec.resource_dir) != os.path.realpath(req.expect_resource_dir):
        a.error = (f"kernelspec {req.kernel_name!r} resolves to {spec.resource_dir}, which comes before the one "
                   f"just written in {req.expect_resource_dir} on the Jupyter path: remove it or choose another --name")
        return a

    a.stage = "start"
    errf = tempfile.TemporaryFile(mode="w+")
    km = KernelManager(kernel_name=req.kernel_name)
    kc = None
    try:
        km.start_kernel(cwd=req.cwd, stderr=errf, stdout=errf)
        a.stage = "handshake"
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=req.timeout)
        said = kernel_language(kc, req.timeout)
        if said != req.language.lower():
            a.error = f"the kernel says it runs {said!r}, but its kernelspec says {req.language!r}"
            return a
        a.stage = "imports"
        chunks = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                chunks.append(msg["content"].get("text", ""))

        if req.check.check == "python":
            code = PYTHON_CHECK % (a.modules, MARK)
        elif req.check.check == "r":
            code = R_CHECK % (r_vector(a.modules), json.dumps(MARK))
        else:
            reply = kc.execute_interactive("", timeout=req.timeout, output_hook=hook)
            if reply["content"].get("status") != "ok":
                a.error = f"an empty cell ended with {reply['content'].get('status')!r}"
                return a
            a.stage, a.ok = "done", True
            return a
        kc.execute_interactive(code, timeout=req.timeout, output_hook=hook)
        text = "".join(chunks)
        line = [l for l in text.splitlines() if l.startswith(MARK)]
        if not line:
            a.error = "the import check printed nothing"
            return a
        results: Dict[str, Optional[str]] = json.loads(line[-1][len(MARK):])
        for m in a.modules:
            err = results.get(m)
            if err:
                out_err, where = outside(req.check, m, req.cwd)
                a.failed_imports.append(FailedImport(module=m, inside=err, outside=out_err, location=where))
        a.stage = "done"
        a.ok = not a.failed_imports
    except Exception as e:  # the kernel died, or never answered
        a.error = f"{type(e).__name__}: {e}"
    finally:
        if kc is not None:
            kc.stop_channels()
        try:
            if km.has_kernel:
                km.shutdown_kernel(now=not a.ok)
        except Exception:
            pass
        errf.seek(0)
        a.stderr = errf.read()[-4000:]
        errf.close()
        a.kernel_reports = kernel_reports(req.report_dir)
        a.seconds = time.monotonic() - t0
    return a


def main() -> int:
    # anything printed by the libraries goes to stderr; stdout carries the answer alone
    answer_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    raw = json.loads(sys.argv[1])
    raw["check"] = Check(**raw["check"])
    req = Request(**raw)
    try:
        a = preflight(req)
    except Exception as e:
        a = Answer(ok=False, stage="preflight", error=f"{type(e).__name__}: {e}")
    answer_to.write(json.dumps(asdict(a)) + "\n")
    answer_to.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())

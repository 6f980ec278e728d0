#!/usr/bin/env python3
"""How sandboxed kernels end: runs a three-cell notebook through nbclient KERNELS times per
interrupt mode (two loops side by side, as a batch with --jobs 2 would), and counts how each
kernel ended from its report (`isolate-grade kernel --report-dir`).

jupyter_client interrupts every kernel before it shuts it down. With `interrupt_mode: signal`
that is a SIGINT to the wrapper, relayed into the sandbox; with `message` it is an
interrupt_request on the control channel, in order with the shutdown_request behind it.
Counted per mode: `ok`; `signaled SIGTERM` (ipykernel 7.4 hanging in its shutdown until
jupyter_client's SIGTERM after 5 s, which happens bare too); `signaled SIGABRT` (ipykernel
aborting in libzmq when the interrupt lands after its shutdown began); anything else.

    sudo .venv/bin/python bench/shutdown.py [--kernels 300] [--modes signal,message]

Needs `bash scripts/venv.sh` and `cargo build` first (uses target/debug/isolate-grade unless
--binary). It installs a kernelspec per mode into the venv (isolate-grade-shutdown-MODE) and
removes it afterwards.
"""
import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
CELLS = ["def squares(n):\n    return [i * i for i in range(1, n + 1)]", "print(squares(5))",
         "assert squares(3) == [1, 4, 9]"]


def kernelspec(binary, mode):
    name = f"isolate-grade-shutdown-{mode}"
    subprocess.run([str(binary), "install", "--python", sys.executable, "--kernel", "python3", "--twin-prefix",
                    f"{name}-"],
                   check=True, capture_output=True)
    name += "-python3"
    # (install keeps twins off the Jupyter path: main() puts their home on it)
    spec = Path(sys.prefix) / "share" / "isolate-grade" / "jupyter" / "kernels" / name / "kernel.json"
    k = json.loads(spec.read_text())
    k["interrupt_mode"] = mode
    spec.write_text(json.dumps(k))
    return name, spec.parent


def loop(name, n):
    """One of the side-by-side loops (a process of its own)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    for _ in range(n):
        try:
            NotebookClient(nb, kernel_name=name, timeout=60).execute()
        except Exception as e:  # a kernel that died mid-notebook: counted from its report
            print(f"{name}: {e!r}"[:300], file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", type=int, default=300, help="kernels per mode (default 300)")
    p.add_argument("--modes", default="signal,message")
    p.add_argument("--binary", default=str(ROOT / "target" / "debug" / "isolate-grade"))
    p.add_argument("--loop", nargs=2, metavar=("KERNEL", "N"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.loop:
        return loop(a.loop[0], int(a.loop[1]))
    if os.geteuid() != 0:
        sys.exit("run as root (the kernels are sandboxed)")
    os.environ.setdefault("ISOLATE_GRADE_CONFIG", str(ROOT / "fixtures" / "config" / "test.toml"))
    os.environ["JUPYTER_PATH"] = str(Path(sys.prefix) / "share" / "isolate-grade" / "jupyter")
    print(f"{a.kernels} kernels per mode, two loops side by side, {os.cpu_count()} CPUs\n")
    print("| interrupt_mode | ok | signaled SIGTERM | signaled SIGABRT | other |")
    print("|---|--:|--:|--:|--:|")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in a.modes.split(","):
            name, spec_dir = kernelspec(a.binary, mode)
            try:
                reports = Path(tmp) / mode
                reports.mkdir()
                env = dict(os.environ, ISOLATE_GRADE_REPORT_DIR=str(reports))
                loops = [subprocess.Popen([sys.executable, __file__, "--loop", name, str(n)], env=env)
                         for n in (a.kernels // 2, a.kernels - a.kernels // 2)]
                for proc in loops:
                    proc.wait()
            finally:
                shutil.rmtree(spec_dir, ignore_errors=True)
            seen = collections.Counter()
            for r in reports.glob("*.json"):
                v = json.loads(r.read_text())
                key = v["status"] if v["status"] != "signaled" else f"signaled {v['signal']}"
                seen[key if key in ("ok", "signaled SIGTERM", "signaled SIGABRT") else "other"] += 1
            print(f"| {mode} | {seen['ok']} | {seen['signaled SIGTERM']} | {seen['signaled SIGABRT']} | "
                  f"{seen['other']} |", flush=True)


if __name__ == "__main__":
    main()

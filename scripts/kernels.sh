#!/usr/bin/env bash
# The kernels beyond ipykernel that the tests grade with, installed the way an instructor
# would install them:
#   IRkernel   Debian's r-base-core and r-cran-irkernel (kernelspec "ir", /usr/share/jupyter)
#   xeus-python  from PyPI into the project venv (kernelspecs "xpython", "xpython-raw"),
#              pinned in scripts/requirements-kernels.txt
#   Octave     Debian's octave, and octave_kernel from PyPI into the project venv ("octave")
# Idempotent; needs root for apt-get when something is missing, and scripts/venv.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need R r-base-core
need_file /usr/share/jupyter/kernels/ir/kernel.json r-cran-irkernel
need octave-cli octave
[[ -x .venv/bin/python ]] || { echo "kernels.sh: run scripts/venv.sh first" >&2; exit 1; }
.venv/bin/python -m pip install --disable-pip-version-check --no-input -q --progress-bar off \
  -r scripts/requirements-kernels.txt
echo "kernels.sh: $(R --version | head -n1); IRkernel $(Rscript -e 'cat(format(packageVersion("IRkernel")))');" \
  "xeus-python, octave_kernel $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("xeus-python"), m.version("octave_kernel"))');" \
  "$(octave-cli --version | head -n1)"

#!/usr/bin/env bash
# nbgrader's own autograde tests (shipped in its wheel: nbgrader/tests/apps/
# test_nbgrader_autograde.py) as the compatibility bar, with every kernel sandboxed, two ways:
#
#   python3  the sandboxed twin installed under the name `python3` itself (what an admin does
#            to sandbox every Python notebook): `install --kernel python3 --twin-prefix ""`
#   config   the default name, `isolate-grade-python3`, chosen by the block `install --course`
#            writes, here into an nbgrader_config.py on JUPYTER_CONFIG_DIR
#
# in a venv of its own (target/nbgrader-suite/venv, made from the default `python3` on PATH,
# pyenv's on this machine's image, so this is also a venv whose base lives outside /usr).
#
#   bash scripts/nbgrader-suite.sh [python3|config]...     (default: both)
#
# The tests run SUITE_JOBS (default 3) at a time (pytest-xdist): most of their time is kernels
# starting and shutting down, not CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
ig=$root/target/debug/isolate-grade
dir=$root/target/nbgrader-suite
venv=$dir/venv
[[ -x $ig ]] || cargo build --bins --quiet

py=${SUITE_PYTHON:-$(command -v python3)}
stamp=$(cat scripts/requirements.txt scripts/requirements-dev.txt)
if [[ ! -x $venv/bin/python ]] || [[ $(cat "$dir/requirements.txt" 2>/dev/null) != "$stamp" ]]; then
  rm -rf "$venv"
  mkdir -p "$dir"
  echo "nbgrader-suite: creating $venv with $py ($("$py" --version 2>&1))"
  "$py" -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --progress-bar off \
    -r scripts/requirements.txt -r scripts/requirements-dev.txt
  echo "$stamp" >"$dir/requirements.txt"
fi
tests=$("$venv/bin/python" -c 'import nbgrader.tests.apps as t, os; print(os.path.dirname(t.__file__))')/test_nbgrader_autograde.py

export PATH=$venv/bin:$PATH # nbgrader runs alembic from PATH
export ISOLATE_GRADE_CONFIG=${ISOLATE_GRADE_CONFIG:-$root/fixtures/config/test.toml}
status=0
for variant in "${@:-python3 config}"; do
  for v in $variant; do
    cfg=$(mktemp -d /tmp/isolate-grade-suite-config.XXXXXX)
    case $v in
      python3)
        "$ig" install --python "$venv/bin/python" --kernel python3 --twin-prefix "" >/dev/null
        # the twin named python3 is kept off the Jupyter path: put its home first on it
        twin_path=$venv/share/isolate-grade/jupyter
        ;;
      config)
        twin_path=
        # ipykernel's own python3 back, and the sandboxed kernel by name from the config block
        "$venv/bin/python" -m ipykernel install --sys-prefix >/dev/null
        "$ig" install --python "$venv/bin/python" --kernel python3 --course "$cfg" >/dev/null
        ;;
      *) echo "nbgrader-suite: unknown variant $v" >&2; exit 2 ;;
    esac
    echo "== nbgrader's autograde tests, sandboxed kernel as $v"
    # every kernel leaves its verdict here: proof that the tests ran sandboxed, not bare
    reports=$(mktemp -d /tmp/isolate-grade-suite-reports.XXXXXX)
    (cd "$dir" && JUPYTER_PATH=$twin_path JUPYTER_CONFIG_DIR=$cfg ISOLATE_GRADE_REPORT_DIR=$reports "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "${SUITE_JOBS:-3}" "$tests" \
      2>&1 | tee "$dir/$v.txt" | tail -n 25) || status=1
    kernels=$(find "$reports" -name '*.json' | wc -l)
    unsandboxed=$(grep -L '"uid": 6[0-9][0-9][0-9][0-9]' "$reports"/*.json 2>/dev/null | wc -l)
    echo "nbgrader-suite: $v: $kernels sandboxed kernels reported, $unsandboxed not in a slot uid"
    if ((kernels < 30 || unsandboxed > 0)); then
      echo "nbgrader-suite: $v: the tests did not run in the sandbox" >&2
      status=1
    fi
    rm -rf "$cfg" "$reports"
  done
done
# leave the venv's python3 as ipykernel's
"$venv/bin/python" -m ipykernel install --sys-prefix >/dev/null
exit $status

#!/usr/bin/env bash
# Create (idempotently) the project-local Python venv at <repo>/.venv with nbgrader,
# ipykernel and numpy, pinned in scripts/requirements.txt. Used by the nbgrader
# fixture course (fixtures/course/) and the tests that grade it.
#
#   bash scripts/venv.sh            # create or update .venv
#   PYTHON=/path/to/python3.11 bash scripts/venv.sh   # choose the interpreter
#
# Python 3.11 is wanted (/usr/bin/python3 on Debian bookworm). On Debian, `python3 -m
# venv` needs the python3-venv package (ensurepip); it is installed with apt-get when
# missing and we are root.
#
# The install is skipped when .venv/bin/nbgrader exists, the sha256 of
# requirements.txt matches the marker .venv/.requirements.sha256 and `pip freeze`
# still satisfies every pin.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
venv=$root/.venv
req=$here/requirements.txt
marker=$venv/.requirements.sha256

log() { echo "venv.sh: $*"; }

# --- pick the interpreter ---------------------------------------------------------
pyver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

pick_python() {
  if [[ -n ${PYTHON:-} ]]; then
    echo "$PYTHON"
    return
  fi
  local c
  for c in /usr/bin/python3.11 /usr/bin/python3 python3.11 python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    [[ $(pyver "$c") == 3.11 ]] && { command -v "$c"; return; }
  done
  # No 3.11 anywhere: accept a newer python3 (the pins need >= 3.11), with a warning.
  for c in /usr/bin/python3 python3; do
    command -v "$c" >/dev/null 2>&1 || continue
    if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      log "warning: no Python 3.11 found, using $(command -v "$c") ($(pyver "$c"))" >&2
      command -v "$c"
      return
    fi
  done
  echo "venv.sh: need Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
}

py=$(pick_python)
want=$(pyver "$py")
[[ -n $want ]] || { echo "venv.sh: $py does not run" >&2; exit 1; }

# --- already up to date? -----------------------------------------------------------
req_sha=$(sha256sum "$req" | cut -d' ' -f1)

# Every "name==version" pin of requirements.txt appears in `pip freeze` (names
# compared case-insensitively, with -, _ and . treated alike as pip does; an extra,
# "name[extra]", is not part of the name).
freeze_ok() {
  "$venv/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null |
    "$venv/bin/python" -c '
import re, sys
norm = lambda s: re.sub(r"[-_.]+", "-", s.strip()).lower()
have = {norm(l.split("==")[0]): l.split("==")[1].strip()
        for l in sys.stdin if "==" in l}
missing = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, _, ver = line.partition("==")
    name = name.split("[")[0]  # psycopg[binary]: the extra is not part of the name
    if have.get(norm(name)) != ver.strip():
        missing.append(line)
if missing:
    print("venv.sh: not satisfied: " + ", ".join(missing))
    sys.exit(1)
' "$req"
}

venv_python_ok() {
  [[ -x $venv/bin/python ]] && [[ $(pyver "$venv/bin/python") == "$want" ]] &&
    "$venv/bin/python" -m pip --version >/dev/null 2>&1
}

if venv_python_ok && [[ -x $venv/bin/nbgrader ]] && [[ -f $marker ]] &&
  [[ $(cat "$marker") == "$req_sha" ]] && freeze_ok; then
  log "$venv is up to date (Python $want, $(grep -c '==' "$req") pins); nothing to do"
  exit 0
fi

# --- make sure venv/ensurepip work (Debian: python3-venv) ---------------------------
if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    # python3.11-venv for /usr/bin/python3.11; python3-venv pulls in the default one.
    pkg=python3-venv
    [[ $py == /usr/bin/python3.11 || $py == /usr/bin/python3 ]] && pkg="python3-venv python${want}-venv"
    log "ensurepip missing for $py: apt-get install $pkg"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkg >/dev/null 2>&1 || {
      apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkg >/dev/null
    }
  fi
  "$py" -c 'import ensurepip, venv' >/dev/null 2>&1 || {
    echo "venv.sh: $py has no ensurepip/venv (install the python3-venv package)" >&2
    exit 1
  }
fi

# --- create the venv ----------------------------------------------------------------
if ! venv_python_ok; then
  if [[ -e $venv ]]; then
    log "removing broken or mismatched $venv"
    rm -rf "$venv"
  fi
  log "creating $venv with $py (Python $want)"
  "$py" -m venv "$venv"
else
  log "reusing $venv (Python $want)"
fi

# --- install the pins -----------------------------------------------------------------
log "installing $req"
rm -f "$marker"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
  --progress-bar off -r "$req"
freeze_ok || { echo "venv.sh: install did not satisfy $req" >&2; exit 1; }
echo "$req_sha" >"$marker"
log "done: $("$venv/bin/nbgrader" --version 2>&1 | tail -n1), numpy $("$venv/bin/python" -c 'import numpy; print(numpy.__version__)')"

#!/usr/bin/env bash
# The main job: grade the bundled fixture course (fixtures/course) with nbgrader, every
# student's notebook executed in the sandboxed kernel. Installs what it needs on a fresh
# machine (the project venv with nbgrader; Debian packages when run as root).
#
#   sudo bash scripts/demo.sh [OUT_DIR]      (OUT_DIR: where the graded course is kept)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
need python3 python3
[[ $(id -u) -eq 0 ]] || { echo "run as root (the sandbox is a privileged helper)" >&2; exit 1; }

out=${1:-$(mktemp -d /tmp/isolate-grade-demo.XXXXXX)}
rm -rf "$out"
bash scripts/venv.sh
cargo build --release --quiet
ig=$PWD/target/release/isolate-grade
"$ig" check

# the sandboxed kernelspec, in the venv nbgrader runs from
"$ig" install --python .venv/bin/python --name isolate-grade-python3
reports=$(mktemp -d /tmp/isolate-grade-reports.XXXXXX)
echo
echo "== grading fixtures/course in $out, every kernel sandboxed (verdicts in $reports)"
ISOLATE_GRADE_REPORT_DIR=$reports .venv/bin/python fixtures/course/grade_bare.py \
  --kernel-name isolate-grade-python3 --out "$out" --json-out "$out/scores.json" || true
echo
echo "== kernel verdicts"
.venv/bin/python - "$reports" <<'PY'
import collections, json, pathlib, sys
v = [json.loads(p.read_text()) for p in pathlib.Path(sys.argv[1]).glob("*.json")]
c = collections.Counter(r["status"] for r in v)
print(f"{len(v)} kernels: " + ", ".join(f"{n} {s}" for s, n in c.most_common()))
for r in v:
    if r["status"] != "ok":
        print(f"  {r['status']}: {r['kernel']['id']} wall {r['wall_time']}s, output {r.get('output_bytes')} bytes")
PY
echo "scores: $out/scores.json"

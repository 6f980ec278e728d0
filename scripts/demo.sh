#!/usr/bin/env bash
# The main job: grade the bundled fixture course (fixtures/course: 3 assignments, 10
# students) with `isolate-grade ASSIGNMENT`, every notebook in a sandboxed kernel, then
# check the gradebook against the expected scores. Installs what it needs on a fresh machine
# (the project venv with nbgrader; Debian packages when run as root).
#
#   sudo bash scripts/demo.sh [OUT_DIR]      (OUT_DIR: the graded course copy, kept)
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

echo
echo "== a copy of fixtures/course in $out, assignments released (nbgrader generate_assignment)"
.venv/bin/python -c 'import sys; sys.path.insert(0, "fixtures/course"); import course_tools as t; t.prepare(sys.argv[1], ("ps1", "ps2", "ps3"))' "$out"

# nbgrader and ipykernel from the project venv (an instructor's are on PATH)
export ISOLATE_GRADE_PYTHON=$PWD/.venv/bin/python
status=0
for a in ps1 ps2 ps3; do
  echo
  echo "== isolate-grade $a --course $out --report $out/report-$a.json"
  "$ig" "$a" --course "$out" --report "$out/report-$a.json" || status=$?
done

echo
echo "== the gradebook against fixtures/course/make_course.py's EXPECTED"
.venv/bin/python - "$out" <<'PY'
import sys
sys.path.insert(0, "fixtures/course")
import course_tools, make_course
bad = 0
for a in ("ps1", "ps2", "ps3"):
    got = {s: {nb: v["score"] for nb, v in d["notebooks"].items()}
           for s, d in course_tools.gradebook(sys.argv[1], a).items()}
    want = {s: per[a] for s, per in make_course.EXPECTED.items() if a in per}
    for s in sorted(set(got) | set(want)):
        if got.get(s) != want.get(s):
            bad += 1
            print(f"MISMATCH {a} {s}: expected {want.get(s)}, got {got.get(s)}")
print("all scores as expected" if not bad else f"{bad} mismatches")
sys.exit(1 if bad else 0)
PY
exit $status

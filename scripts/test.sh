#!/usr/bin/env bash
# Every test, as CI runs them (.ci/run calls exactly this). Run as root: the integration
# tests start real sandboxes; with CI=true a privileged test that can't run fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
need cc gcc
need python3 python3
need setpriv util-linux

# How long each part took, printed at the end (CI's budget is 60 min for the whole run); a
# part's own lines (its pieces that run at the same time) follow it.
timings=()
pieces=()
part_start=$SECONDS
part() { # part NAME: the previous part ends, NAME begins
  if [[ -n ${part_name:-} ]]; then timings+=("$(printf '%5ds  %s' $((SECONDS - part_start)) "$part_name")" ${pieces[@]+"${pieces[@]}"}); fi
  pieces=()
  part_name=$1
  part_start=$SECONDS
  echo "== $1"
}

part "format and lint"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings

part "build"
cargo build --bins --quiet

part "isolate-grade check"
./target/debug/isolate-grade check

part "Rust tests"
# Test binaries run one after another (tests/hostile.rs installs a system config for its
# duration); tests within a binary run in parallel, each sandbox in its own slot.
cargo test --no-fail-fast 2>&1 | tee target/test-output.txt

part "fuzz, CI-sized (scripts/fuzz.sh: policy, cli, kernel_protocol, notebook)"
FUZZ_SECONDS=${FUZZ_SECONDS:-60} bash scripts/fuzz.sh

part "end to end, with real nbgrader (project venv; tests/e2e)"
bash scripts/venv.sh
.venv/bin/python -m pip install -q -r scripts/requirements-dev.txt
bash scripts/kernels.sh # IRkernel (Debian) and xeus-python (PyPI) for tests/e2e/test_kernels.py
bash scripts/slurm.sh # Debian's Slurm and munge (no service started) for tests/e2e/test_slurm_cluster.py
bash scripts/postgres.sh # Debian's PostgreSQL 15 (no service started) for tests/e2e/test_postgres.py
bash scripts/browser.sh # Debian's chromium and playwright-core (npm) for tests/e2e/test_browser.py
# The adversarial suite first, alone: it checks that the whole host is as it was after each
# attack (the mount table, /tmp and /dev/shm, no process of a slot uid, no cgroup left), which
# another suite's sandboxes running at the same time would break. Its /tmp and /dev/shm are
# fresh ones in a mount namespace of its own, which its sandboxes' supervisors share (a leak
# from a sandbox lands there and is seen), and which no other process on the machine writes to.
attacks_start=$SECONDS
unshare --mount --propagation private -- sh -c \
  'mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=1777 tmpfs /dev/shm &&
   exec .venv/bin/python -m pytest -q tests/e2e/test_attacks.py' 2>&1 | tee target/e2e-attacks-output.txt
pieces+=("$(printf '%5ds  %s' $((SECONDS - attacks_start)) "  of which: the adversarial suite, alone")")
# the adversarial suite's summary (tests/e2e/test_attacks.py writes it)
cat target/attack-summary.txt
# Then two pytest processes at once: the suites against real daemons (PostgreSQL, Slurm, and
# the Kubernetes manifest's worker command), which share nothing with the others but the
# built binary, the venv and the slots, with the rootless, kernel-death and feedback suites
# (which keep to their own courses), beside all the rest. Most of either's time is spent
# waiting (kernels starting, cell timeouts, daemons answering), so together they take about
# the longer one's (the first about 13 min, the rest about 20).
daemons=(tests/e2e/test_postgres.py tests/e2e/test_slurm.py tests/e2e/test_slurm_cluster.py tests/e2e/test_kubernetes.py
  tests/e2e/test_rootless.py tests/e2e/test_kernel_death.py tests/e2e/test_feedback_redact.py)
(
  start=$SECONDS
  status=0
  .venv/bin/python -m pytest -q -p no:cacheprovider --basetemp=/tmp/isolate-grade-e2e-daemons "${daemons[@]}" || status=$?
  echo "$((SECONDS - start))" >target/e2e-daemons-seconds
  exit "$status"
) >target/e2e-daemons-output.txt 2>&1 &
daemons_pid=$!
# And beside both, the sandbox and containment suites again, rootless: as nobody with no
# capabilities, under best-effort variants of the built-in policies (tests/common/mod.rs,
# ISOLATE_GRADE_TEST_ROOTLESS=1), asserting what rootless mode documents as different. Their
# sandboxes are nobody's on the host, told apart by a marker, so the others' (slot uids) and
# the e2e suites' checks of them don't mix; about half a minute.
(
  start=$SECONDS
  status=0
  ISOLATE_GRADE_TEST_ROOTLESS=1 cargo test --no-fail-fast --test sandbox --test containment || status=$?
  echo "$((SECONDS - start))" >target/rootless-suites-seconds
  exit "$status"
) >target/rootless-suites-output.txt 2>&1 &
rootless_pid=$!
rest_start=$SECONDS
rest=0
.venv/bin/python -m pytest -q $(printf -- '--ignore=%s ' tests/e2e/test_attacks.py "${daemons[@]}") tests/e2e 2>&1 |
  tee target/e2e-output.txt || rest=$?
pieces+=("$(printf '%5ds  %s' $((SECONDS - rest_start)) "  of which: all the others")")
daemons_status=0
wait "$daemons_pid" || daemons_status=$?
echo "== end to end, beside the others: the daemons' suites and more (${daemons[*]})"
cat target/e2e-daemons-output.txt
pieces+=("$(printf '%5ss  %s' "$(cat target/e2e-daemons-seconds 2>/dev/null || echo '?')" "  of which: the daemons' suites and more, at the same time")")
rootless_status=0
wait "$rootless_pid" || rootless_status=$?
echo "== tests/sandbox.rs and tests/containment.rs rootless (ISOLATE_GRADE_TEST_ROOTLESS=1)"
cat target/rootless-suites-output.txt
pieces+=("$(printf '%5ss  %s' "$(cat target/rootless-suites-seconds 2>/dev/null || echo '?')" "  of which: sandbox.rs and containment.rs rootless, at the same time")")
((rest == 0 && daemons_status == 0 && rootless_status == 0)) || {
  echo "end to end: FAILED (the others: exit $rest, the daemons' suites: exit $daemons_status, rootless sandbox/containment: exit $rootless_status)" >&2
  exit 1
}

part "cgroup v2 and Debian 12's kernel in a VM (scripts/vm.sh)"
bash scripts/vm.sh

part "nbgrader's own autograde tests, sandboxed (scripts/nbgrader-suite.sh)"
bash scripts/nbgrader-suite.sh

part "done"
echo "time per part:"
printf '%s\n' "${timings[@]}"

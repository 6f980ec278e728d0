#!/bin/bash
# Inside the VM that scripts/vm.sh boots: PID 1 once scripts/vm/init has switched to the host's
# / (read-only 9p + a tmpfs overlay). It sets cgroup v2 up the way CONFIG describes, runs the
# parts one by one, writes each one's log, exit status, time and a one-line summary to RESULTS
# (a writable share: the host reads them there), and powers the VM off.
#
#   guest.sh CONFIG ROOT RESULTS     (PID 1)
#   guest.sh part NAME               (one part; run by the first form under `timeout`)
#
# ROOT is the project (the same path as on the host); RESULTS/setup.sh, written by the host,
# names the binaries to run.

cg=/sys/fs/cgroup
service=$cg/system.slice/ci.service

# ---- the parts ----------------------------------------------------------------------------
# Each prints its log on stdout/stderr and exits non-zero on failure; a part may write its own
# summary line to $IG_RESULTS/NAME.summary (else one is made from the test runner's output).

rust_suite() { # one prebuilt integration test binary (tests/NAME.rs), as CI runs it: root, CI=true
  exec "${TESTS[$1]}"
}

part_batch() { # ps1 of the fixture course: the sandbox must give bare nbgrader's scores
  local w py=$IG_ROOT/.venv/bin/python t0 rc=0
  w=$(mktemp -d)
  export ISOLATE_GRADE_PYTHON=$py ISOLATE_GRADE_CONFIG=$IG_ROOT/fixtures/config/test.toml
  # Bare nbgrader graded ps1 on the host, which also prepared the course (vm.sh): neither
  # depends on the kernel, and both take minutes under emulation.
  cp "$BATCH/bare-ps1.json" "$w/bare.json" && cp -a "$BATCH/course" "$w/course" || return 1
  # nbgrader waits at most Execute.iopub_timeout (4 s) for a cell's output after its reply,
  # then fails the notebook, bare as well: emulation is slow enough for heidi's 50 MB of output
  # to miss it now and then (as test_batch.py's 16 workers on 2 cores do; README).
  echo "c.Execute.iopub_timeout = 60" >>"$w/course/nbgrader_config.py"
  t0=$SECONDS
  "$IG" ps1 --course "$w/course" --report "$w/report.json" || rc=$?
  echo "== isolate-grade ps1: exit $rc, $((SECONDS - t0)) s"
  "$py" - "$w" "$IG_RESULTS/batch.summary" "$((SECONDS - t0))" <<'PY' || rc=1
import json, sys
sys.path.insert(0, "fixtures/course")
import course_tools, make_course
w, summary, took = sys.argv[1:]
bare = {s: per["ps1"] for s, per in json.load(open(f"{w}/bare.json")).items() if "ps1" in per}
boxed = {s: {nb: v["score"] for nb, v in d["notebooks"].items()}
         for s, d in course_tools.gradebook(f"{w}/course", "ps1").items()}
want = {s: per["ps1"] for s, per in make_course.EXPECTED.items() if "ps1" in per}
bad = [f"{s}: expected {want.get(s)}, bare {bare.get(s)}, sandboxed {boxed.get(s)}"
       for s in sorted(set(bare) | set(boxed) | set(want)) if not want.get(s) == bare.get(s) == boxed.get(s)]
print("\n".join("MISMATCH " + b for b in bad))
open(summary, "w").write(f"batch parity ok ({len(want)} students, {took} s)" if not bad else f"batch parity: {len(bad)} mismatches")
sys.exit(1 if bad else 0)
PY
  return $rc
}

part_attacks_run() { # the attack suite's `isolate-grade run` half (tests/e2e/test_attacks.py)
  # 80 s instead of 10 s of wall time for each attack that must end `ok`: emulation is several
  # times slower, and 32 busy threads for 3 s ran out of 10 s, filling the disks out of 40 s.
  export ISOLATE_GRADE_TEST_WALL=80s
  exec .venv/bin/python -m pytest -q -p no:cacheprovider tests/e2e/test_attacks.py -k test_attack_through_run
}

# What a Delegate=yes service's tool may not change: everything above the service's cgroup.
above() {
  local d
  for d in $cg $cg/system.slice; do
    echo "$d: subtree_control [$(cat $d/cgroup.subtree_control)], children [$(cd $d && ls -d -- */ | xargs)]"
  done
  echo "system.slice's own processes: [$(xargs <$cg/system.slice/cgroup.procs)]"
}

part_delegation() { # nothing above ci.service written; its processes in a leaf, the sandboxes below
  local ok=0
  above >"$IG_RESULTS/above.after"
  diff "$IG_RESULTS/above.before" "$IG_RESULTS/above.after" || { echo "FAIL: changed above the delegated cgroup"; ok=1; }
  cat "$IG_RESULTS/above.after"
  echo "ci.service: subtree_control [$(cat $service/cgroup.subtree_control)], children [$(cd $service && ls -d -- */ | xargs)], own processes [$(xargs <$service/cgroup.procs)]"
  for c in memory pids cpu; do grep -qw $c $service/cgroup.subtree_control || { echo "FAIL: $c not enabled in ci.service"; ok=1; }; done
  [[ -d $service/supervisor && -d $service/isolate-grade && ! -s $service/cgroup.procs ]] || { echo "FAIL: no supervisor leaf, no isolate-grade subtree, or processes left in ci.service"; ok=1; }
  [[ ! -e $cg/isolate-grade ]] || { echo "FAIL: a subtree at the root"; ok=1; }
  ((ok == 0)) && echo "delegation: nothing above ci.service written" >"$IG_RESULTS/delegation.summary"
  return $ok
}

# 400 MB in 10 MB steps, every page written: far past a 64 MiB limit unless swap takes it.
ALLOC='import sys
chunks = []
for i in range(int(sys.argv[1]) // 10):
    b = bytearray(10 << 20)
    for j in range(0, len(b), 4096): b[j] = 1
    chunks.append(b)
    print((i + 1) * 10, "MB", flush=True)
print("survived", flush=True)'

swapped_out() { awk '$1 == "pswpout" {print $2}' /proc/vmstat; }

part_memory_swap() { # --memory 64M holds with swap on: memory-limit, and nothing of the run swapped
  local w before status code max_swap=0 seen_max="" cur
  grep -E 'Swap(Total|Free)' /proc/meminfo
  [[ $(awk '/^SwapTotal/ {print $2}' /proc/meminfo) -gt 0 ]] || { echo "FAIL: no swap"; return 1; }
  # Control: a cgroup of our own with the same 64M limit but swap allowed lets the same
  # program live by swapping, so "no swap used" below means the tool prevented it.
  mkdir $cg/system.slice/swap-control
  echo 64M >$cg/system.slice/swap-control/memory.max
  before=$(swapped_out)
  (echo $BASHPID >$cg/system.slice/swap-control/cgroup.procs && exec python3 -c "$ALLOC" 150) | tail -n1
  echo "control (64M, swap allowed): $(($(swapped_out) - before)) pages swapped out"
  rmdir $cg/system.slice/swap-control
  w=$(mktemp -d)
  before=$(swapped_out)
  ISOLATE_GRADE_CONFIG=fixtures/config/test.toml "$IG" run --report "$w/report.json" --memory 64M --wall-time 120s \
    -- python3 -c "$ALLOC" 400 >"$w/out" 2>&1 &
  local pid=$!
  while kill -0 $pid 2>/dev/null; do # watch the run's cgroup while it lives
    for f in $cg/isolate-grade/slot-*/memory.swap.current; do
      [[ -e $f ]] || continue
      cur=$(cat "$f" 2>/dev/null) && ((cur > max_swap)) && max_swap=$cur
      seen_max+=" $(cat "${f%.current}.max" 2>/dev/null)"
    done
    sleep 0.05
  done
  wait $pid
  code=$?
  tail -n3 "$w/out"
  cat "$w/report.json"
  echo
  status=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' "$w/report.json")
  local out=$(($(swapped_out) - before)) seen
  seen=$(tr ' ' '\n' <<<"$seen_max" | sort -u | xargs)
  echo "exit $code, status $status; memory.swap.max seen: ${seen:-none}; memory.swap.current max $max_swap; pages swapped out meanwhile: $out"
  echo "memory-swap: $status, swap.max ${seen:-?}, swapped $max_swap B" >"$IG_RESULTS/memory-swap.summary"
  [[ $status == memory-limit && $code == 7 && $seen == 0 && $max_swap == 0 && $out == 0 ]]
}


# The rootless part: an unprivileged caller (nobody, no capabilities, no groups) runs
# `isolate-grade run` in a cgroup v2 subtree delegated to it, as systemd's Delegate=yes or an
# admin's chown leaves one (the directory and its cgroup.procs, cgroup.subtree_control and
# cgroup.threads its own), the caller started inside it.
NOBODY=(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all --)
FILL='import sys
print("filling", flush=True)
b = b"\x01" * (int(sys.argv[1]) << 20)
print("survived", flush=True)'
FORK_BOMB='import os, sys, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print("forked", n, "then", e, flush=True)
    sys.exit(3)'

delegate() { # delegate DIR: made by root, handed to nobody
  mkdir "$1" && chown 65534:65534 "$1" "$1"/cgroup.procs "$1"/cgroup.subtree_control "$1"/cgroup.threads
}

rootless_run() { # rootless_run CGROUP NAME [RUN ARGS...]: the caller enters CGROUP (as root), then is nobody
  local in=$1 name=$2
  shift 2
  (echo $BASHPID >"$in/cgroup.procs" && exec "${NOBODY[@]}" env XDG_RUNTIME_DIR="$RL/runtime" \
    ISOLATE_GRADE_CONFIG="${RL_CONFIG:-fixtures/config/test.toml}" "$IG" run --report "$RL/$name.json" "$@") \
    >"$RL/$name.out" 2>&1
  local code=$?
  echo "== $name: exit $code"
  tail -n3 "$RL/$name.out"
  cat "$RL/$name.json" 2>/dev/null
  echo
  return $code
}

report() { # report NAME EXPR: a Python expression of the report r
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$RL/$1.json" "$2"
}

part_rootless() { # memory and pids limits enforced rootless in a delegated subtree; refusals without one
  local ok=0 d=$cg/system.slice/rootless-nobody.service code
  RL=$(mktemp -d)
  chown 65534:65534 "$RL"
  mkdir -m 700 "$RL/runtime" && chown 65534:65534 "$RL/runtime"
  delegate $d || return 1
  above >"$RL/above.before"
  # memory: 400 MB against --memory 64M, the caller in the delegated cgroup itself (its
  # processes are moved into a leaf before the controllers are enabled). One C-level fill
  # (bytes * n), not ALLOC's page-by-page loop: with no swap, the loop's interpreter kept
  # refaulting its own code from the 9p root at the limit, which counts as reclaim progress,
  # and on a busy host it thrashed there for minutes without an OOM kill.
  rootless_run $d memory --memory 64M --wall-time 250s -- python3 -c "$FILL" 400
  code=$?
  local mem
  mem=$(report memory '(r["status"], r["sandbox"]["mode"], r["sandbox"]["cgroup"], r["sandbox"].get("not_enforced", []))')
  echo "memory: exit $code, $mem"
  [[ $code == 7 && $mem == "('memory-limit', 'rootless', 'v2', [])" ]] || { echo "FAIL: memory not limited rootless"; ok=1; }
  grep -q survived "$RL/memory.out" && { echo "FAIL: the allocation survived"; ok=1; }
  # pids: a fork bomb against --pids 16; the caller (a server that stayed) now in the leaf,
  # the subtree named by the config this time
  { echo "rootless_cgroup_root = \"system.slice/rootless-nobody.service\""; cat fixtures/config/test.toml; } >"$RL/config.toml"
  RL_CONFIG=$RL/config.toml rootless_run $d/supervisor pids --pids 16 --wall-time 120s -- python3 -c "$FORK_BOMB"
  code=$?
  local pids
  pids=$(report pids '(r["status"], "pids" in r["limits_hit"], r["sandbox"].get("not_enforced", []))')
  echo "pids: exit $code, $pids"
  [[ $pids == "('pids-limit', True, [])" ]] || { echo "FAIL: pids not limited rootless"; ok=1; }
  grep -qE '^forked ([0-9]|1[0-6]) then' "$RL/pids.out" || { echo "FAIL: the fork bomb was not stopped at 16"; ok=1; }
  # a best-effort policy uses the delegated cgroup too: nothing left unenforced
  sed 's/^\[sandbox\]$/[sandbox]\nlimits = "best-effort"/' policies/default.toml >"$RL/best-effort.toml"
  chmod 644 "$RL/best-effort.toml"
  rootless_run $d/supervisor best-effort --policy "$RL/best-effort.toml" -- /bin/true
  code=$?
  local be
  be=$(report best-effort '(r["status"], r["sandbox"]["cgroup"], r["sandbox"].get("not_enforced", []))')
  echo "best-effort: exit $code, $be"
  [[ $code == 0 && $be == "('ok', 'v2', [])" ]] || { echo "FAIL: best-effort did not use the delegated cgroup"; ok=1; }
  # check, by the same caller: where its runs' cgroups go
  (echo $BASHPID >"$d/supervisor/cgroup.procs" && exec "${NOBODY[@]}" env ISOLATE_GRADE_CONFIG=fixtures/config/test.toml \
    "$IG" check --format json) >"$RL/check.json" 2>&1
  local found
  found=$(python3 -c 'import json, sys
items = {i["name"]: i for i in json.loads(open(sys.argv[1]).readline())["items"]}
i = items["cgroup-delegation"]
print(i["ok"], i["warn"], i["detail"])' "$RL/check.json")
  echo "check: cgroup-delegation: $found"
  [[ $found == "True False $d (the cgroup this process runs in) is delegated to you"* ]] || { echo "FAIL: check's cgroup-delegation"; ok=1; }
  # what is left: the leaf, the runs' directory, no run's cgroup; nothing above written
  echo "$d: subtree_control [$(cat $d/cgroup.subtree_control)], children [$(cd $d && ls -d -- */ | xargs)], isolate-grade's [$(cd $d/isolate-grade && ls -d -- */ 2>/dev/null | xargs)]"
  for c in memory pids cpu; do grep -qw $c $d/cgroup.subtree_control || { echo "FAIL: $c not enabled in $d"; ok=1; }; done
  [[ -z $(cd $d/isolate-grade && ls -d -- */ 2>/dev/null) ]] || { echo "FAIL: a run's cgroup left behind"; ok=1; }
  above >"$RL/above.after"
  diff "$RL/above.before" "$RL/above.after" || { echo "FAIL: written above the delegated cgroup"; ok=1; }
  # refused: a delegated subtree whose parent doesn't enable pids, and one not chowned
  local p=$cg/system.slice/no-pids
  mkdir $p && echo "+cpu +memory" >$p/cgroup.subtree_control && delegate $p/rootless.service
  rootless_run $p/rootless.service no-pids -- /bin/true
  code=$?
  local msg
  msg=$(report no-pids 'r["sandbox_error"]["step"] + ": " + r["sandbox_error"]["message"]')
  [[ $code == 3 && $msg == "cgroup: rootless: no cgroup v2 subtree is delegated to this caller (uid 65534): $p/rootless.service: controllers [\"pids\"] are not enabled for it by its parent ($p/cgroup.subtree_control)"* ]] ||
    { echo "FAIL: not refused for want of pids: $code $msg"; ok=1; }
  # the configured subtree, the caller started outside it (delegation containment)
  mkdir $cg/system.slice/elsewhere.service
  RL_CONFIG=$RL/config.toml rootless_run $cg/system.slice/elsewhere.service outside -- /bin/true
  code=$?
  msg=$(report outside 'r["sandbox_error"]["message"]')
  [[ $code == 3 && $msg == *"rootless-nobody.service: the caller runs in $cg/system.slice/elsewhere.service, outside it"* ]] ||
    { echo "FAIL: a caller outside the configured subtree not refused: $code $msg"; ok=1; }
  mkdir $cg/system.slice/not-chowned.service
  rootless_run $cg/system.slice/not-chowned.service not-owned -- /bin/true
  code=$?
  msg=$(report not-owned 'r["sandbox_error"]["message"]')
  [[ $code == 3 && $msg == *"not-chowned.service: owned by uid 0, not by the caller"* ]] ||
    { echo "FAIL: a subtree not owned by the caller not refused: $code $msg"; ok=1; }
  ((ok == 0)) && echo "rootless: memory ($mem) and pids limited, best-effort uses it, check finds it; no pids, not owned and the caller outside refused" >"$IG_RESULTS/rootless.summary"
  return $ok
}

if [[ $1 == part ]]; then # one part, in the project directory, its output being its log
  source "$IG_RESULTS/setup.sh"
  cd "$IG_ROOT" || exit 1
  case $2 in
  sandbox | containment | seccomp | hostile | cgroup_v2) rust_suite "$2" ;;
  *) "part_${2//-/_}" ;;
  esac
  exit
fi

# ---- PID 1 ----------------------------------------------------------------------------------
export IG_CONFIG=$1 IG_ROOT=$2 IG_RESULTS=$3
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root USER=root LOGNAME=root
export LANG=C.UTF-8 TERM=dumb CI=true PYTHONDONTWRITEBYTECODE=1 RUST_BACKTRACE=1
cd "$IG_ROOT" || exit 1
echo "vm guest: $IG_CONFIG on $(uname -r): $(cat /proc/cmdline)"

# Like systemd: controllers enabled in the root and in system.slice, and everything we run in
# the (non-root) cgroup system.slice/ci.service, whose own subtree_control stays empty.
controllers="cpu memory pids"
grep -qw io $cg/cgroup.controllers && controllers+=" io"
for d in $cg $cg/system.slice; do
  mkdir -p $d
  for c in $controllers; do echo "+$c" >$d/cgroup.subtree_control; done
done
mkdir $service
echo "cgroup v2: root enables [$(cat $cg/cgroup.subtree_control)], system.slice [$(cat $cg/system.slice/cgroup.subtree_control)]"

case $IG_CONFIG in
service) parts="sandbox containment seccomp hostile cgroup_v2 batch attacks-run rootless" ;;
delegated)
  # A Delegate=yes service may only touch its own cgroup: point the tool there. The overlay's
  # upper layer takes the edit; the host's file stays as it is.
  sed -i 's|^cgroup_root = .*|cgroup_root = "system.slice/ci.service/isolate-grade"|' fixtures/config/test.toml
  grep '^cgroup_root' fixtures/config/test.toml
  # Only these read test.toml: containment and seccomp run with --config /dev/null, hostile
  # with a system config of its own, cgroup_v2 with none, so here they would repeat `service`.
  # attacks-run too would be 4 more minutes of CI for the same attacks under another cgroup
  # path (it passed, 37/37: VM_PARTS="attacks-run" bash scripts/vm.sh delegated)
  parts="sandbox batch delegation"
  above >"$IG_RESULTS/above.before"
  ;;
swap)
  mkswap /dev/vda >/dev/null && swapon /dev/vda
  swapon --show
  parts="containment memory-swap"
  ;;
esac

source "$IG_RESULTS/setup.sh"
parts=${VM_PARTS:-$parts}

# The parts run from a shell inside ci.service (PID 1 stays in the root cgroup, as systemd's).
(
  echo $BASHPID >$service/cgroup.procs
  echo "parts run in $(cut -d: -f3 /proc/self/cgroup)"
  for p in $parts; do
    # a hung part ends (its whole process group) and the next one runs; measured under
    # emulation on 2 cores: 2-130 s for a Rust suite, 260 s for the batch, 130 s for attacks-run
    case $p in batch | attacks-run | rootless) limit=600 ;; *) limit=300 ;; esac
    echo "vm guest: $p"
    echo "$p" >>"$IG_RESULTS/parts"
    start=$SECONDS
    timeout -k 10 $limit bash "$0" part "$p" >"$IG_RESULTS/$p.log" 2>&1 </dev/null
    rc=$?
    ((rc == 124)) && echo "part timed out after ${limit}s" >>"$IG_RESULTS/$p.log"
    if [[ ! -s $IG_RESULTS/$p.summary ]]; then # count from libtest's or pytest's closing line
      read -r passed failed < <(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$IG_RESULTS/$p.log" |
        awk '{p += $1; f += $2; n++} END {if (n) print p, f}')
      last=$(tail -n1 "$IG_RESULTS/$p.log")
      if [[ -z $passed && $last =~ [0-9]+\ (passed|failed|errors?) ]]; then # pytest: "1 failed, 24 passed, 1 error in 9s"
        passed=$(grep -oE '[0-9]+ passed' <<<"$last" | awk '{n += $1} END {print n + 0}')
        failed=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$last" | awk '{n += $1} END {print n + 0}')
      fi
      if [[ -n $passed ]]; then
        echo "$p $passed/$((passed + failed))" >"$IG_RESULTS/$p.summary"
      else
        echo "$p (no test result, exit $rc)" >"$IG_RESULTS/$p.summary"
      fi
    fi
    echo "$rc $((SECONDS - start))" >"$IG_RESULTS/$p.status"
    echo "vm guest: $p: exit $rc, $((SECONDS - start)) s"
  done
)
dmesg >"$IG_RESULTS/dmesg.log"
touch "$IG_RESULTS/done"
sync
echo o >/proc/sysrq-trigger # power off: qemu exits
sleep 60

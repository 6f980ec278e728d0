#!/usr/bin/env bash
# The main job, for now: build, check the host, and run a few programs in the sandbox.
# (Once the grading milestone lands, this grades the bundled fixture course.)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
need python3 python3
[[ $(id -u) -eq 0 ]] || { echo "run as root (the sandbox is a privileged helper)" >&2; exit 1; }

cargo build --release --quiet
ig=./target/release/isolate-grade
$ig check

run() { echo; echo "\$ isolate-grade run $*"; "$ig" run "$@" || echo "(exit code $?)"; }
run --report - -- python3 -c 'import os, socket; print("uid", os.getuid(), "hostname", socket.gethostname(), "home visible:", os.path.exists("/root"))'
run --pids 16 --wall-time 3s -- /bin/sh -c 'f() { f | f; }; f' 2>/dev/null
run --memory 64M -- python3 -c 'x = bytearray(1 << 30)'
run --cpu-time 1s -- python3 -c 'while True: pass'

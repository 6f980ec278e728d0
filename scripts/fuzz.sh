#!/usr/bin/env bash
# The fuzz targets (fuzz/fuzz_targets: policy, cli, kernel_protocol, notebook), each for FUZZ_SECONDS
# (default 60), starting from the corpus kept in fuzz/corpus/. Any crash fails; its input is
# left in fuzz/artifacts/. With a nightly toolchain the targets are built with AddressSanitizer;
# without one, with the stable toolchain and no sanitizer (`-s none`: panics, aborts and
# assertion failures are still found). Installs cargo-fuzz from crates.io when it is missing.
#
#   bash scripts/fuzz.sh [TARGET...]        FUZZ_SECONDS=600 for a longer run, FUZZ_JOBS=1 one at a time
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(+nightly fuzz) flags=(--fuzz-dir fuzz)
  echo "fuzz: nightly toolchain: AddressSanitizer"
else
  fuzz=(fuzz) flags=(--fuzz-dir fuzz -s none --target-dir fuzz/target/stable)
  echo "fuzz: no nightly toolchain: stable, no sanitizer"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi
seconds=${FUZZ_SECONDS:-60}
# Targets run FUZZ_JOBS at a time (default: one per core); each still gets its full
# FUZZ_SECONDS on a core of its own, so CI's fuzzing is as long, in less wall time.
parallel=${FUZZ_JOBS:-$(nproc)}
[[ $parallel =~ ^[1-9][0-9]*$ ]] || { echo "fuzz.sh: FUZZ_JOBS must be a positive integer, not '$parallel'" >&2; exit 2; }
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(policy cli kernel_protocol notebook)
# One build for every target first (cargo fuzz build with no target builds them all): the
# runs below then find it done, instead of queueing on cargo's build-directory lock.
cargo "${fuzz[@]}" build "${flags[@]}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fuzz_one() { # fuzz_one TARGET: its log in $work/TARGET.log, its exit status in $work/TARGET.status
  local t=$1 scratch status=0
  mkdir -p "fuzz/corpus/$t"
  # new interesting inputs go to a scratch corpus; the committed one is only read
  scratch=$(mktemp -d "$work/corpus-$t.XXXXXX")
  cargo "${fuzz[@]}" run "${flags[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$work/$t.log" 2>&1 || status=$?
  echo "$status" >"$work/$t.status"
}

for t in "${targets[@]}"; do
  while (($(jobs -rp | wc -l) >= parallel)); do wait -n || true; done
  echo "== fuzz $t for ${seconds}s (corpus: $(ls "fuzz/corpus/$t" 2>/dev/null | wc -l) inputs)"
  fuzz_one "$t" &
done
wait

failed=0
for t in "${targets[@]}"; do
  status=$(cat "$work/$t.status" 2>/dev/null || echo "no status")
  echo "== fuzz $t"
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|SUMMARY|==[0-9]+==)" "$work/$t.log" || true
  if [[ $status != 0 ]]; then
    tail -40 "$work/$t.log" >&2
    echo "fuzz $t: FAILED (exit $status); the input is in fuzz/artifacts/$t/" >&2
    failed=1
  else
    echo "fuzz $t: no crash"
  fi
done
exit "$failed"

#!/usr/bin/env bash
# The fuzz targets (fuzz/fuzz_targets: policy, cli, kernel_protocol, notebook), each for FUZZ_SECONDS
# (default 60), starting from the corpus kept in fuzz/corpus/. Any crash fails; its input is
# left in fuzz/artifacts/. With a nightly toolchain the targets are built with AddressSanitizer;
# without one, with the stable toolchain and no sanitizer (`-s none`: panics, aborts and
# assertion failures are still found). Installs cargo-fuzz from crates.io when it is missing.
#
#   bash scripts/fuzz.sh [TARGET...]        FUZZ_SECONDS=600 for a longer run
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_cargo
if cargo +nightly --version >/dev/null 2>&1; then
  build=(+nightly fuzz run --fuzz-dir fuzz)
  echo "fuzz: nightly toolchain: AddressSanitizer"
else
  build=(fuzz run --fuzz-dir fuzz -s none --target-dir fuzz/target/stable)
  echo "fuzz: no nightly toolchain: stable, no sanitizer"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install --locked --quiet cargo-fuzz
fi
seconds=${FUZZ_SECONDS:-60}
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=(policy cli kernel_protocol notebook)
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== fuzz $t for ${seconds}s (corpus: $(ls "fuzz/corpus/$t" | wc -l) inputs)"
  # new interesting inputs go to a scratch corpus; the committed one is only read
  scratch=$(mktemp -d)
  log=$(mktemp)
  status=0
  cargo "${build[@]}" "$t" "$scratch" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1 || status=$?
  grep -E "^(stat::number_of_executed_units|stat::new_units_added|SUMMARY|==[0-9]+==)" "$log" || true
  rm -rf "$scratch"
  if [[ $status -ne 0 ]]; then
    tail -40 "$log" >&2
    echo "fuzz $t: FAILED (exit $status); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  rm -f "$log"
  echo "fuzz $t: no crash"
done

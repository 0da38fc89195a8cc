#!/usr/bin/env bash
# Runs a cargo-fuzz target on the stable toolchain, without cargo-fuzz or nightly.
#
#   scripts/fuzz.sh ltp segment_decode 300     # crate dir, target, seconds (default 60)
#   scripts/fuzz.sh bpv7 decode 300
#
# libFuzzer (built by libfuzzer-sys with the C++ compiler) is driven by LLVM's SanitizerCoverage,
# whose flags (-C passes, -C llvm-args) are stable. What this leaves out compared with
# `cargo +nightly fuzz run` is AddressSanitizer (-Z sanitizer), which needs nightly; the decoders
# fuzzed here have no `unsafe`, so the checks that matter (panics, overflow, debug assertions,
# the targets' own round-trip asserts) are all on. Crashes land in <crate>/fuzz/artifacts/.
set -euo pipefail
crate=${1:?crate directory (ltp or bpv7)}
target=${2:?fuzz target name}
secs=${3:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target-fuzz}
# --target keeps these flags off build scripts, as cargo-fuzz does.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cd "$root/$crate/fuzz"
cargo build --release --target "$triple" --bin "$target"
mkdir -p corpus/"$target" artifacts/"$target"
exec "$CARGO_TARGET_DIR/$triple/release/$target" corpus/"$target" \
  -artifact_prefix=artifacts/"$target"/ -max_total_time="$secs" -print_final_stats=1

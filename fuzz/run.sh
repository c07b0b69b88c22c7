#!/usr/bin/env bash
# Builds the libFuzzer binary of one target on stable Rust and runs it.
#
#   fuzz/run.sh TARGET SECONDS [extra libFuzzer flags...]
#   fuzz/run.sh TARGET build        # build only
#
# TARGET is one of: change_set sync_request sync_response record_chunk
# server_ingest json_inputs. New inputs go to fuzz/target-corpus/TARGET
# (not committed); the committed seeds in fuzz/corpus/TARGET are read but
# never written. A crash, timeout or out-of-memory input is written to
# fuzz/artifacts/TARGET/; copy it to fuzz/regressions/TARGET/ and fix it.
#
# No sanitizer (ASan needs nightly); coverage comes from LLVM's
# SanitizerCoverage passes, which stable rustc runs with -Cpasses. The
# fuzzer runs under `nice -n 19`.
set -euo pipefail
cd "$(dirname "$0")"
target=${1:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]}
seconds=${2:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags...]}
shift 2
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
nice -n 19 cargo build --manifest-path engine/Cargo.toml --release --target "$triple" --bin "$target"
[ "$seconds" = build ] && exit 0
bin=engine/target/$triple/release/$target
mkdir -p "target-corpus/$target" "artifacts/$target" "corpus/$target"
exec nice -n 19 "$bin" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 \
    -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="artifacts/$target/" \
    "$@" "target-corpus/$target" "corpus/$target"

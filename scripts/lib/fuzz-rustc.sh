#!/usr/bin/env bash
# RUSTC_WORKSPACE_WRAPPER of the fuzz step (scripts/lib/fuzz.sh). Cargo runs it, for the
# workspace's own crates only, as `fuzz-rustc.sh RUSTC ARGS...`. It adds libFuzzer's coverage
# instrumentation (LLVM's SanitizerCoverage: 8-bit edge counters, the PC table and comparison
# tracing) and `--cfg fuzzing`. Dependencies are compiled without it, exactly as for the tests,
# so the fuzz build reuses their artifacts instead of compiling every dependency again.
set -euo pipefail
rustc="$1"
shift
for arg in "$@"; do
    # Cargo's probes of the compiler (`--crate-name ___ --print ...`) go through unchanged.
    [ "$arg" = "___" ] && exec "$rustc" "$@"
done
exec "$rustc" "$@" \
    --cfg fuzzing \
    -Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    -Cdebug-assertions \
    -Coverflow-checks

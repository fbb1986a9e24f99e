# shellcheck shell=bash
# The `fuzz` step of scripts/test.sh: builds the libFuzzer targets in tests/fuzz (one per decoder
# of untrusted input) and runs each for FUZZ_SECONDS (default 10), FUZZ_JOBS (default: the
# number of cores) at a time. A panic, a failed assertion, a timeout of one input or a run that
# outgrows libFuzzer's memory limit fails the step; the input that did it is kept in
# tests/fuzz/artifacts/TARGET/, and what each run found to explore further in
# tests/fuzz/corpus/TARGET/ (both ignored by git).
#
# tests/fuzz is a member of the workspace, so the targets resolve against Cargo.lock and reuse the
# dependencies the `build` step compiled. The workspace's own crates (the server's library and the
# targets) are compiled again through scripts/lib/fuzz-rustc.sh, which adds the coverage
# instrumentation libFuzzer is guided by. Only a stable toolchain is needed: there is no
# AddressSanitizer (a nightly flag), which Rust code without `unsafe` (Cargo.toml denies it) has
# little use for.
#
# A longer run of one target, optimised:
#   FUZZ_RELEASE=1 FUZZ_SECONDS=3600 FUZZ_TARGETS=socketio_packet scripts/test.sh fuzz

# The targets: every [[bin]] of tests/fuzz/Cargo.toml, or FUZZ_TARGETS (space-separated).
fuzz_targets() {
    if [ -n "${FUZZ_TARGETS:-}" ]; then
        tr -s ' ' '\n' <<<"$FUZZ_TARGETS" | grep -v '^$'
        return 0
    fi
    awk '/^\[\[bin\]\]/ { bin = 1; next }
         bin && /^name *=/ { gsub(/^name *= *"|"$/, ""); print; bin = 0 }' \
        "$REPO/tests/fuzz/Cargo.toml"
}

# fuzz_run TARGET DIR: runs one target's binary from DIR for FUZZ_SECONDS; its output goes to
# target/fuzz-TARGET.log.
fuzz_run() {
    local target="$1" dir="$2"
    local corpus="$REPO/tests/fuzz/corpus/$target" artifacts="$REPO/tests/fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts"
    "$dir/$target" -max_total_time="${FUZZ_SECONDS:-10}" -max_len=4096 -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$artifacts/" "$corpus" \
        >"$REPO/target/fuzz-$target.log" 2>&1
}

step_fuzz() {
    local targets target rc=0 jobs running=0
    local build=(cargo build -p switchboard-fuzz --bins) dir="$REPO/target/debug"
    if [ "${FUZZ_RELEASE:-}" = 1 ]; then
        build+=(--release)
        dir="$REPO/target/release"
    fi
    mapfile -t targets < <(fuzz_targets)
    [ "${#targets[@]}" -gt 0 ] || {
        echo "no fuzz targets in tests/fuzz/Cargo.toml" >&2
        return 1
    }
    echo "${build[*]} (the workspace's crates through scripts/lib/fuzz-rustc.sh)"
    RUSTC_WORKSPACE_WRAPPER="$REPO/scripts/lib/fuzz-rustc.sh" "${build[@]}"

    jobs="${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}"
    local -A pids=()
    for target in "${targets[@]}"; do
        if [ "$running" -ge "$jobs" ]; then
            wait -n || true
            running=$((running - 1))
        fi
        echo "fuzz $target for ${FUZZ_SECONDS:-10} s"
        fuzz_run "$target" "$dir" &
        pids[$target]=$!
        running=$((running + 1))
    done
    for target in "${targets[@]}"; do
        if wait "${pids[$target]}"; then
            printf '%s: ' "$target"
            grep -E '^stat::number_of_executed_units' "$REPO/target/fuzz-$target.log" || echo
        else
            echo "fuzz target $target failed:" >&2
            tail -n 40 "$REPO/target/fuzz-$target.log" >&2
            rc=1
        fi
    done
    return "$rc"
}

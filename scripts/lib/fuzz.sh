# shellcheck shell=bash
# The `fuzz` step of scripts/test.sh: builds the cargo-fuzz targets in tests/fuzz (libFuzzer;
# one per decoder of untrusted input) and runs each for FUZZ_SECONDS (default 10). The step is a
# smoke run that must stay cheap in CI: it builds without optimisation (`--dev`) unless
# FUZZ_RELEASE=1; long runs use the optimised build (below). A crash, a
# failed assertion or a leak fails the step and leaves the input in tests/fuzz/artifacts/.
#
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept
# them. cargo-fuzz itself is installed into the tools directory (scripts/lib/pg.sh tools_dir)
# like diesel_cli.
#
# A long local run (the counts in README.md come from this):
#   RUSTC_BOOTSTRAP=1 "$(tools_dir)"/bin/cargo-fuzz run --fuzz-dir tests/fuzz TARGET -- -runs=1000000

CARGO_FUZZ_VERSION="0.13.2"

ensure_cargo_fuzz() {
    local tools
    tools="$(tools_dir)"
    CARGO_FUZZ="$tools/bin/cargo-fuzz"
    if [ -x "$CARGO_FUZZ" ] && "$CARGO_FUZZ" --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
        return 0
    fi
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION into $tools"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$tools"
}

# fuzz_build: installs cargo-fuzz when missing and builds every target (output to stdout).
fuzz_build() {
    ensure_cargo_fuzz
    local profile=(--dev)
    [ "${FUZZ_RELEASE:-}" = 1 ] && profile=()
    echo "cargo fuzz build ${profile[*]}"
    RUSTC_BOOTSTRAP=1 "$CARGO_FUZZ" build --fuzz-dir "$REPO/tests/fuzz" "${profile[@]}"
}

# fuzz_prebuild_start: runs fuzz_build in the background at the lowest CPU priority, with its
# output in target/fuzz-build.log, so that the build takes the cores the steps before `fuzz`
# leave idle (link steps, tests waiting on sockets and timers) instead of running after them.
# step_fuzz waits for it. At nice 19 it yields the CPU to every other step, whose times do not
# change.
FUZZ_PREBUILD_PID=""
fuzz_prebuild_start() {
    mkdir -p "$REPO/target"
    rm -f "$REPO/target/fuzz-build.rc"
    (
        renice -n 19 -p "$BASHPID" >/dev/null
        rc=0
        (
            set -e
            fuzz_build
        ) || rc=$?
        echo "$rc" >"$REPO/target/fuzz-build.rc"
    ) >"$REPO/target/fuzz-build.log" 2>&1 &
    FUZZ_PREBUILD_PID=$!
    echo "building the fuzz targets in the background (target/fuzz-build.log)"
}

# fuzz_prebuild_stop: stops a background build that is still running (on exit).
fuzz_prebuild_stop() {
    if [ -n "$FUZZ_PREBUILD_PID" ] && kill -0 "$FUZZ_PREBUILD_PID" 2>/dev/null; then
        pkill -TERM -P "$FUZZ_PREBUILD_PID" 2>/dev/null || true
        kill "$FUZZ_PREBUILD_PID" 2>/dev/null || true
    fi
}

# fuzz_prebuild_wait: waits for the background build (steps run in subshells, which cannot
# `wait` for it: it leaves its exit status in target/fuzz-build.rc), prints its output and
# returns its status.
fuzz_prebuild_wait() {
    local rc_file="$REPO/target/fuzz-build.rc" waited=$SECONDS
    while [ ! -f "$rc_file" ] && kill -0 "$FUZZ_PREBUILD_PID" 2>/dev/null; do
        sleep 1
    done
    sleep 0.2
    echo "background build of the fuzz targets: waited $((SECONDS - waited)) s for it"
    cat "$REPO/target/fuzz-build.log"
    [ -f "$rc_file" ] || {
        echo "the background build of the fuzz targets ended without a status" >&2
        return 1
    }
    return "$(cat "$rc_file")"
}

step_fuzz() {
    if [ -n "$FUZZ_PREBUILD_PID" ]; then
        fuzz_prebuild_wait
        ensure_cargo_fuzz
    else
        fuzz_build
    fi
    export RUSTC_BOOTSTRAP=1
    local fuzz_dir=(--fuzz-dir "$REPO/tests/fuzz")
    local targets target rc=0
    local profile=(--dev)
    [ "${FUZZ_RELEASE:-}" = 1 ] && profile=()
    mapfile -t targets < <("$CARGO_FUZZ" list "${fuzz_dir[@]}")
    [ "${#targets[@]}" -gt 0 ] || {
        echo "no fuzz targets in tests/fuzz" >&2
        return 1
    }
    for target in "${targets[@]}"; do
        echo "fuzz $target for ${FUZZ_SECONDS:-10} s"
        if "$CARGO_FUZZ" run "${fuzz_dir[@]}" "${profile[@]}" "$target" -- -max_total_time="${FUZZ_SECONDS:-10}" -max_len=4096 \
            -print_final_stats=1 >"$REPO/target/fuzz-$target.log" 2>&1; then
            grep -E '^stat::number_of_executed_units' "$REPO/target/fuzz-$target.log" || true
        else
            echo "fuzz target $target failed:" >&2
            tail -n 40 "$REPO/target/fuzz-$target.log" >&2
            rc=1
        fi
    done
    return "$rc"
}

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

step_fuzz() {
    ensure_cargo_fuzz
    export RUSTC_BOOTSTRAP=1
    local fuzz_dir=(--fuzz-dir "$REPO/tests/fuzz")
    local targets target rc=0
    local profile=(--dev)
    [ "${FUZZ_RELEASE:-}" = 1 ] && profile=()
    echo "cargo fuzz build ${profile[*]}"
    "$CARGO_FUZZ" build "${fuzz_dir[@]}" "${profile[@]}"
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

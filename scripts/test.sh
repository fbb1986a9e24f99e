#!/usr/bin/env bash
# Runs the whole test suite:
#
#   scripts/test.sh            every step below, in order
#   scripts/test.sh STEP...    only the named steps: schema docs fmt build ops test clients api
#                              fuzz
#
# Steps: schema (migrations up, down and up again on a throwaway database; src/db/schema.rs must
# equal `diesel print-schema`), docs (every variable src/config.rs reads is listed in .env.example
# and in README.md's table), fmt (cargo fmt --check), build (every target compiled once, by
# clippy-driver with -D warnings: that one compile is both `cargo clippy --all-targets -- -D
# warnings` and the build the later steps run), ops (the deployment files: shellcheck,
# systemd-analyze verify of the units, scripts/install.sh into a scratch root, nginx -t and a live
# nginx in front of `switchboard serve` with systemd's notify protocol and seccomp filter checked,
# coturn started with the template), test (cargo test --all-targets) and clients (Node/Python
# client tests under tests/clients, when present), api (the OpenAPI document validated, then
# schemathesis against a live server with a user and an admin token; see scripts/lib/api.sh) and
# fuzz (every libFuzzer target in tests/fuzz for ~10 s; see scripts/lib/fuzz.sh).
# A failing step does not stop the later ones; the summary lists each result with its duration,
# and the exit status is non-zero when any step failed.
#
# PostgreSQL: TEST_DATABASE_URL when set (an admin URL to the `postgres` database; tests create and
# drop their own databases from it); else the server on 127.0.0.1:5432 when it accepts
# postgres://postgres@127.0.0.1:5432/postgres without a password; else a fresh private cluster in
# target/test-pgdata that is stopped and removed on exit. SB_TEST_FORCE_PRIVATE_PG=1 skips the
# 127.0.0.1:5432 probe. TEST_THREADS (default 4) sets cargo test's --test-threads.
#
# Redis (the `test` step; see scripts/lib/redis.sh): TEST_REDIS_URL when set (a server of
# version 7 or newer); else a private redis-server on a free 127.0.0.1 port, without
# persistence, in the run's temporary directory, stopped on exit. redis-server and redis-cli are
# installed when missing either way, and REDIS_SERVER_BIN names redis-server for the tests that
# start and stop servers of their own.
# shellcheck disable=SC2317 # the step_* functions are called by name from run_step
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/lib/pg.sh
source "$REPO/scripts/lib/pg.sh"
# shellcheck source=scripts/lib/redis.sh
source "$REPO/scripts/lib/redis.sh"
# shellcheck source=scripts/lib/ops.sh
source "$REPO/scripts/lib/ops.sh"
# shellcheck source=scripts/lib/api.sh
source "$REPO/scripts/lib/api.sh"
# shellcheck source=scripts/lib/fuzz.sh
source "$REPO/scripts/lib/fuzz.sh"

if [ -n "${CI:-}" ]; then
    # Plain logs: no colour codes from cargo, rustfmt or the server's log lines.
    export CARGO_TERM_COLOR=never NO_COLOR=1
fi

ALL_STEPS=(schema docs fmt build ops test clients api fuzz)
SYSTEM_PG_URL="postgres://postgres@127.0.0.1:5432/postgres"

section() { printf '\n== %s ==\n' "$*"; }

# ---------------------------------------------------------------------------------------------
# Clean-up of what this run started.

TEST_PG_DIR=""     # data directory of the private cluster this run started
TEST_PG_TMPROOT="" # temporary parent of that directory, when the repository was unusable
TEST_REDIS_TMP=""  # temporary directory of the private redis-server this run started

cleanup() {
    if [ -n "$TEST_REDIS_TMP" ]; then
        (redis_stop_private "$TEST_REDIS_TMP/redis") || true
        rm -rf -- "$TEST_REDIS_TMP"
    fi
    if [ -n "$TEST_PG_DIR" ]; then
        (pg_stop_private "$TEST_PG_DIR") || true
        rm -rf -- "$TEST_PG_DIR" "$(pg__port_file "$TEST_PG_DIR")"
    fi
    if [ -n "$TEST_PG_TMPROOT" ]; then
        rm -rf -- "$TEST_PG_TMPROOT"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# PostgreSQL for the tests.

psql_admin() {
    # psql_admin SQL: runs SQL on TEST_DATABASE_URL, never prompting for a password.
    PGCONNECT_TIMEOUT=10 PGOPTIONS='-c client_min_messages=warning' \
        psql -w -X -q -v ON_ERROR_STOP=1 "$TEST_DATABASE_URL" -c "$1"
}

system_pg_usable() {
    [ "${SB_TEST_FORCE_PRIVATE_PG:-}" = 1 ] && return 1
    command -v pg_isready >/dev/null 2>&1 || return 1
    command -v psql >/dev/null 2>&1 || return 1
    pg_isready -q -h 127.0.0.1 -p 5432 -t 3 || return 1
    PGCONNECT_TIMEOUT=5 psql -w -X -q "$SYSTEM_PG_URL" -c 'select 1' >/dev/null 2>&1
}

setup_postgres() {
    if [ -n "${TEST_DATABASE_URL:-}" ]; then
        echo "using TEST_DATABASE_URL from the environment"
        command -v psql >/dev/null 2>&1 || pg_install_if_missing
    elif system_pg_usable; then
        echo "using the PostgreSQL server on 127.0.0.1:5432"
        TEST_DATABASE_URL="$SYSTEM_PG_URL"
    else
        if [ "${SB_TEST_FORCE_PRIVATE_PG:-}" = 1 ]; then
            echo "SB_TEST_FORCE_PRIVATE_PG=1: not probing 127.0.0.1:5432"
        else
            echo "no usable PostgreSQL on 127.0.0.1:5432"
        fi
        local dir="$REPO/target/test-pgdata"
        mkdir -p "$REPO/target"
        if ! pg_dir_reachable "$dir"; then
            # Running as root in a directory the postgres OS user cannot enter.
            TEST_PG_TMPROOT="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-test.XXXXXX")"
            chmod 755 "$TEST_PG_TMPROOT"
            dir="$TEST_PG_TMPROOT/pgdata"
        fi
        # A fresh cluster every run: stop and remove what an interrupted run may have left.
        if [ -f "$dir/PG_VERSION" ]; then
            (pg_stop_private "$dir") || true
        fi
        rm -rf -- "$dir"
        TEST_PG_DIR="$dir"
        PG_PRIVATE_FAST=1 pg_start_private "$dir"
        TEST_DATABASE_URL="$PG_PRIVATE_URL"
    fi
    export TEST_DATABASE_URL
    psql_admin 'select 1' >/dev/null ||
        pg__die "cannot connect to TEST_DATABASE_URL as an administrator"
    echo "TEST_DATABASE_URL=$TEST_DATABASE_URL"
}

# ---------------------------------------------------------------------------------------------
# Redis for the tests.

setup_redis() {
    redis_install_if_missing
    if [ -n "${TEST_REDIS_URL:-}" ]; then
        echo "using TEST_REDIS_URL from the environment"
    else
        TEST_REDIS_TMP="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-test-redis.XXXXXX")"
        redis_start_private "$TEST_REDIS_TMP/redis"
        TEST_REDIS_URL="$REDIS_PRIVATE_URL"
    fi
    export TEST_REDIS_URL
    redis_check_url "$TEST_REDIS_URL"
    echo "TEST_REDIS_URL=$TEST_REDIS_URL"
    echo "REDIS_SERVER_BIN=$REDIS_SERVER_BIN ($(redis__server_version))"
}

# ---------------------------------------------------------------------------------------------
# Steps. Each runs in a subshell with errexit on; a non-zero status marks the step failed.

schema_check_cleanup() {
    if [ -n "${SCHEMA_DB:-}" ]; then
        psql_admin "DROP DATABASE IF EXISTS \"$SCHEMA_DB\"" || true
    fi
    if [ -n "${SCHEMA_TMP:-}" ]; then
        rm -rf -- "$SCHEMA_TMP"
    fi
}

step_schema() {
    ensure_diesel_cli
    SCHEMA_TMP="$(mktemp -d)"
    SCHEMA_DB="sb_schema_check_$$"
    trap schema_check_cleanup EXIT
    local url
    url="$(pg_url_with_db "$TEST_DATABASE_URL" "$SCHEMA_DB")"

    psql_admin "DROP DATABASE IF EXISTS \"$SCHEMA_DB\""
    psql_admin "CREATE DATABASE \"$SCHEMA_DB\""

    # Migrations run with a config that has no print_schema.file: diesel would otherwise rewrite
    # src/db/schema.rs after every migration command.
    printf '# migrations only\n' >"$SCHEMA_TMP/diesel.toml"
    local migrate=("$DIESEL" --config-file "$SCHEMA_TMP/diesel.toml" --database-url "$url")
    echo "diesel migration run"
    "${migrate[@]}" migration run --migration-dir "$REPO/migrations"
    echo "diesel migration redo --all (every down.sql, then every up.sql)"
    "${migrate[@]}" migration redo --all --migration-dir "$REPO/migrations"

    echo "diesel print-schema (settings from diesel.toml)"
    "$DIESEL" --config-file "$REPO/diesel.toml" --database-url "$url" print-schema \
        >"$SCHEMA_TMP/schema.rs"
    if ! diff -u src/db/schema.rs "$SCHEMA_TMP/schema.rs"; then
        echo "src/db/schema.rs is out of date: run diesel print-schema > src/db/schema.rs" >&2
        return 1
    fi
    echo "src/db/schema.rs matches the migrations"
}

step_docs() {
    local vars var missing=0
    vars="$(tr '\n' ' ' <src/config.rs | grep -oE 'parse[a-z_]*\( *src, *"[A-Z_]+"' |
        grep -oE '"[A-Z_]+"' | tr -d '"')"
    [ -n "$vars" ] || {
        echo "found no settings in src/config.rs" >&2
        return 1
    }
    for var in $vars; do
        if ! grep -qE "^(# )?$var=" .env.example; then
            echo ".env.example does not list $var (src/config.rs reads it)" >&2
            missing=1
        fi
        if ! grep -qF "| \`$var\` |" README.md; then
            echo "README.md's configuration table does not list $var (src/config.rs reads it)" >&2
            missing=1
        fi
    done
    [ "$missing" -eq 0 ] || return 1
    echo "$(wc -w <<<"$vars") settings documented in .env.example and README.md"
}

step_fmt() {
    if [ -n "${CI:-}" ]; then
        cargo fmt --check -- --color never
    else
        cargo fmt --check
    fi
}

# Every cargo command of this script compiles the workspace's own crates with clippy-driver in
# place of rustc, with -D warnings (the settings `cargo clippy` gives it): clippy's lints run in
# the compile that produces the binaries, so the dependencies are compiled once, not once to be
# checked and again to be built. Dependencies are compiled by rustc as usual.
use_clippy_driver() {
    local driver
    driver="$(command -v clippy-driver 2>/dev/null || true)"
    if [ -z "$driver" ] && command -v rustup >/dev/null 2>&1; then
        rustup component add clippy >&2
        driver="$(rustup which clippy-driver)"
    fi
    [ -n "$driver" ] || pg__die "clippy-driver was not found: rustup component add clippy"
    export RUSTC_WORKSPACE_WRAPPER="$driver"
    export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
}

# build_all: every target the tests need (the library, the binaries, their unit tests and
# tests/it), linted as it compiles (use_clippy_driver). A no-op when nothing changed, so each
# step that needs the server's binary calls it.
build_all() {
    cargo test --all-targets --no-run
}

step_build() {
    build_all
}

# The deployment files under scripts/ (see scripts/lib/ops.sh): each check prints its commands
# and their output and fails the step on any problem.
step_ops() {
    OPS_TMP="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-ops.XXXXXX")"
    trap ops_cleanup EXIT
    build_all
    OPS_BIN="$REPO/target/debug/switchboard"
    export OPS_TMP OPS_BIN
    section "ops: shellcheck"
    ops_check_shellcheck
    section "ops: systemd units"
    ops_check_units
    section "ops: install.sh"
    # install.sh adapts the site to the installed nginx's version: have nginx first.
    ops_need nginx nginx
    ops_check_install
    section "ops: nginx -t"
    ops_check_nginx
    ops_check_nginx_apps
    ops_check_nginx_cluster
    section "ops: serve under the unit's settings, behind nginx"
    ops_check_serve
    section "ops: coturn"
    ops_check_coturn
}

# Node packages the Rust tests call into (e.g. the official agora-token builder), installed
# from tests/clients/package-lock.json.
install_node_clients() {
    local dir="$REPO/tests/clients"
    [ -f "$dir/package.json" ] || return 0
    if ! command -v npm >/dev/null 2>&1; then
        pg__apt_install nodejs npm
    fi
    if [ -f "$dir/package-lock.json" ]; then
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    else
        (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
    fi
}

step_test() {
    # The call tests run a real TURN server: coturn from Debian's packages.
    if ! command -v turnserver >/dev/null 2>&1 || ! command -v turnutils_uclient >/dev/null 2>&1; then
        pg__apt_install coturn
    fi
    # tests/it/listener.rs reads the server's socket system calls with strace.
    ops_need strace strace
    # tests/it/pg_restart.rs creates, crashes and restarts a PostgreSQL cluster of its own (initdb,
    # pg_ctl), also when the other tests use TEST_DATABASE_URL or the server on 127.0.0.1:5432.
    pg_install_if_missing
    install_node_clients
    install_moto_server
    # Every test binary runs, so one failure does not hide the others.
    cargo test --all-targets --no-fail-fast -- --test-threads="${TEST_THREADS:-4}"
}

# tests/it/media_s3.rs runs the media store against a real S3-compatible server: moto's, from
# PyPI, in a virtual environment of its own under target/; exports MOTO_SERVER_BIN.
MOTO_VERSION="5.2.1"
install_moto_server() {
    local venv="$REPO/target/moto-venv"
    # (The version is read whole: `pip show | grep -q` fails under pipefail when grep stops
    # reading first, which reinstalled moto on every run.)
    local installed=""
    if [ -x "$venv/bin/python" ]; then
        installed="$("$venv/bin/python" -m pip show moto 2>/dev/null | sed -n 's/^Version: //p')"
    fi
    if [ ! -x "$venv/bin/moto_server" ] || [ "$installed" != "$MOTO_VERSION" ]; then
        command -v python3 >/dev/null 2>&1 || pg__apt_install python3 python3-venv
        python3 -m venv "$venv" 2>/dev/null || {
            pg__apt_install python3-venv
            python3 -m venv "$venv"
        }
        echo "installing moto[server] $MOTO_VERSION into $venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
            "moto[server]==$MOTO_VERSION"
    fi
    export MOTO_SERVER_BIN="$venv/bin/moto_server"
}

# Client tests (Node and Python) live in tests/clients. They get TEST_DATABASE_URL and
# SWITCHBOARD_BIN (the debug binary of the `build` step, built here when missing or stale).
# With neither tests/clients/package.json nor tests/clients/requirements.txt this is a no-op.
run_client_tests() {
    local dir="$REPO/tests/clients"
    if [ ! -f "$dir/package.json" ] && [ ! -f "$dir/requirements.txt" ]; then
        echo "no client tests (tests/clients/package.json, tests/clients/requirements.txt)"
        return 0
    fi
    export SWITCHBOARD_BIN="$REPO/target/debug/switchboard"
    build_all

    if [ -f "$dir/package.json" ]; then
        if ! command -v npm >/dev/null 2>&1; then
            pg__apt_install nodejs npm
        fi
        echo "node client tests (tests/clients)"
        [ -d "$dir/node_modules" ] || install_node_clients
        if compgen -G "$dir/*.test.js" >/dev/null || compgen -G "$dir/*.test.mjs" >/dev/null; then
            (cd "$dir" && npm test)
        else
            echo "no node test files yet (tests/clients/*.test.js)"
        fi
    fi

    if [ -f "$dir/requirements.txt" ]; then
        local venv="$REPO/target/pyenv"
        if [ ! -x "$venv/bin/python" ]; then
            command -v python3 >/dev/null 2>&1 || pg__apt_install python3 python3-venv
            python3 -m venv "$venv" 2>/dev/null || {
                pg__apt_install python3-venv
                python3 -m venv "$venv"
            }
        fi
        echo "python client tests (tests/clients)"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$dir/requirements.txt"
        "$venv/bin/python" -m pytest tests/clients -q
    fi
}

step_clients() {
    run_client_tests
}

# ---------------------------------------------------------------------------------------------

RESULTS=()
FAILED=0

run_step() {
    local name="$1" rc started
    section "$name"
    started=$SECONDS
    set +e
    (
        set -e
        "step_$name"
    )
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        RESULTS+=("ok      $name ($((SECONDS - started)) s)")
    else
        RESULTS+=("FAILED  $name (exit status $rc; $((SECONDS - started)) s)")
        FAILED=1
    fi
}

main() {
    local steps=("$@") step known s
    [ "${#steps[@]}" -gt 0 ] || steps=("${ALL_STEPS[@]}")
    for step in "${steps[@]}"; do
        known=""
        for s in "${ALL_STEPS[@]}"; do [ "$s" = "$step" ] && known=1; done
        [ -n "$known" ] || pg__die "unknown step '$step' (steps: ${ALL_STEPS[*]})"
    done

    section "setup"
    command -v cargo >/dev/null 2>&1 || pg__die "cargo was not found: install Rust (https://rustup.rs)"
    cargo --version
    use_clippy_driver
    ensure_libpq_dev
    setup_postgres
    for step in "${steps[@]}"; do
        if [ "$step" = test ]; then
            setup_redis
            break
        fi
    done

    for step in "${steps[@]}"; do
        run_step "$step"
    done

    section "summary"
    printf '%s\n' "${RESULTS[@]}"
    if [ "$FAILED" -ne 0 ]; then
        echo "some steps failed"
        return 1
    fi
    echo "all steps passed"
}

main "$@"; exit "$?"

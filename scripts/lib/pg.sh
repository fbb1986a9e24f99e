# shellcheck shell=bash
# Helpers shared by scripts/dev.sh and scripts/test.sh: PostgreSQL server binaries, a private
# PostgreSQL cluster that listens on 127.0.0.1 only, the libpq headers the build links against,
# and the pinned diesel_cli used by the schema check.
#
# Source this file after setting REPO to the repository root. Functions print progress on
# stderr and stop the calling script (exit 1) with a message when something cannot be done.

# Port probed first for a private cluster; 5432 is left to a system PostgreSQL.
PG_PRIVATE_FIRST_PORT="${PG_PRIVATE_FIRST_PORT:-55432}"
DIESEL_CLI_VERSION="2.3.4"

pg__say() { printf '%s\n' "$*" >&2; }
pg__die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
pg__is_root() { [ "$(id -u)" -eq 0 ]; }

pg__apt_updated=""
# pg__apt_install PKG...: installs Debian/Ubuntu packages (root only), refreshing the package
# lists once per run.
pg__apt_install() {
    pg__is_root || pg__die "installing $* needs root (or install it yourself: apt-get install -y $*)"
    command -v apt-get >/dev/null 2>&1 || pg__die "apt-get is not available: install $* with this system's package manager"
    if [ -z "$pg__apt_updated" ]; then
        pg__say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || pg__die "apt-get update failed"
        pg__apt_updated=1
    fi
    pg__say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || pg__die "apt-get install $* failed"
}

# The newest /usr/lib/postgresql/<version>/bin holding initdb (Debian layout), or nothing.
pg__newest_bindir() {
    local dir
    while IFS= read -r dir; do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            printf '%s\n' "$dir"
            return 0
        fi
    done < <(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V -r)
    return 0
}

# pg_install_if_missing: makes initdb, pg_ctl, postgres, pg_isready and psql callable, installing
# the `postgresql` package when they are absent and we are root. The newest
# /usr/lib/postgresql/*/bin goes first on PATH so every tool comes from one version.
pg_install_if_missing() {
    local bindir
    bindir="$(pg__newest_bindir)"
    if [ -z "$bindir" ] && ! { command -v initdb && command -v pg_ctl; } >/dev/null 2>&1; then
        if ! pg__is_root; then
            pg__die "PostgreSQL server programs (initdb, pg_ctl) were not found. Install PostgreSQL \
(e.g. sudo apt-get install -y postgresql), or set DATABASE_URL / TEST_DATABASE_URL to an existing server."
        fi
        pg__apt_install postgresql
        bindir="$(pg__newest_bindir)"
    fi
    if [ -n "$bindir" ]; then
        case ":$PATH:" in
            *":$bindir:"*) ;;
            *) PATH="$bindir:$PATH" ;;
        esac
        export PATH
    fi
    local tool
    for tool in initdb pg_ctl pg_isready psql; do
        command -v "$tool" >/dev/null 2>&1 || pg__die "$tool is still missing after installing PostgreSQL"
    done
}

# pg__as_owner CMD...: runs a PostgreSQL server program as the cluster owner: ourselves, or the
# `postgres` OS user when we are root (the server refuses to run as root). It runs from / so the
# owner never needs access to our working directory.
pg__as_owner() {
    if pg__is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# Creates the `postgres` OS user when we are root and it does not exist.
pg__ensure_owner_user() {
    pg__is_root || return 0
    id -u postgres >/dev/null 2>&1 && return 0
    command -v runuser >/dev/null 2>&1 || pg__die "runuser is missing (package util-linux)"
    pg__say "creating the postgres OS user"
    useradd --system --user-group --no-create-home --home-dir /var/lib/postgresql \
        --shell /bin/sh postgres || pg__die "useradd postgres failed"
}

# pg_dir_reachable DIR: true when the cluster owner can reach DIR's parent directory (always
# true unless we are root and some directory above DIR is closed to the postgres user).
pg_dir_reachable() {
    local parent
    parent="$(dirname -- "$1")"
    mkdir -p -- "$parent"
    pg__is_root || return 0
    pg__ensure_owner_user
    pg__as_owner test -x "$parent" -a -r "$parent"
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
pg__port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The port file of a cluster: DATADIR.port next to the data directory.
pg__port_file() { printf '%s.port\n' "${1%/}"; }

# True when the cluster in DATADIR is running.
pg__running() {
    [ -f "$1/PG_VERSION" ] || return 1
    pg__as_owner pg_ctl -D "$1" status >/dev/null 2>&1
}

# pg__wait_ready PORT: waits up to 30 s for the server on 127.0.0.1:PORT to accept connections.
pg__wait_ready() {
    local i
    for i in $(seq 1 60); do
        if pg_isready -q -h 127.0.0.1 -p "$1" -t 1; then
            return 0
        fi
        [ "$i" -lt 60 ] && sleep 0.5
    done
    return 1
}

# pg_start_private DATADIR: starts (creating it first when needed) a private cluster in DATADIR
# that listens on 127.0.0.1 only, with trust authentication for the `postgres` role. A running
# cluster is reused. Exports PG_PRIVATE_PORT and
# PG_PRIVATE_URL=postgres://postgres@127.0.0.1:PORT/postgres.
# With PG_PRIVATE_FAST=1 a new cluster trades durability for speed (fsync off): test data only.
pg_start_private() {
    local datadir="${1:?pg_start_private needs a data directory}"
    case "$datadir" in
        /*) ;;
        *) datadir="$PWD/$datadir" ;;
    esac
    datadir="${datadir%/}"
    local portfile log port=""
    portfile="$(pg__port_file "$datadir")"
    log="$datadir/postgresql.log"

    pg_install_if_missing
    pg__ensure_owner_user
    pg_dir_reachable "$datadir" || pg__die "the postgres OS user cannot reach $(dirname -- "$datadir"); \
PostgreSQL cannot run as root, so its data directory must be readable by that user. Move the \
repository under a directory the postgres user can traverse, or set DATABASE_URL / TEST_DATABASE_URL."

    if pg__running "$datadir"; then
        port="$(sed -n 4p "$datadir/postmaster.pid" 2>/dev/null || true)"
        [ -n "$port" ] || port="$(cat "$portfile" 2>/dev/null || true)"
        if [ -n "$port" ] && pg__wait_ready "$port"; then
            pg__say "reusing the PostgreSQL cluster in $datadir (127.0.0.1:$port)"
            printf '%s\n' "$port" >"$portfile"
            export PG_PRIVATE_PORT="$port"
            export PG_PRIVATE_URL="postgres://postgres@127.0.0.1:$port/postgres"
            return 0
        fi
        pg__die "a PostgreSQL cluster runs in $datadir but does not answer on 127.0.0.1:${port:-?}; \
see $log, or stop it with: pg_ctl -D $datadir -m fast stop"
    fi

    if [ ! -f "$datadir/PG_VERSION" ]; then
        pg__say "creating a PostgreSQL cluster in $datadir"
        if [ -d "$datadir" ] && [ -n "$(ls -A -- "$datadir")" ]; then
            pg__die "$datadir exists but is not a PostgreSQL data directory; remove it first"
        fi
        mkdir -p -- "$datadir"
        chmod 700 "$datadir"
        pg__is_root && chown postgres:postgres "$datadir"
        pg__as_owner initdb -D "$datadir" -A trust -U postgres -E UTF8 --locale=C --no-sync \
            >"$datadir.initdb.log" 2>&1 || {
            cat "$datadir.initdb.log" >&2
            pg__die "initdb failed in $datadir"
        }
        rm -f -- "$datadir.initdb.log"
        # A unix socket path is limited to ~107 bytes; beyond that the cluster is TCP-only.
        local sockdir="$datadir"
        [ "${#datadir}" -gt 90 ] && sockdir=""
        {
            printf '\n# Private cluster settings (scripts/lib/pg.sh)\n'
            printf "listen_addresses = '127.0.0.1'\n"
            printf "unix_socket_directories = '%s'\n" "${sockdir//\'/\'\'}"
            printf 'max_connections = 200\n'
            if [ "${PG_PRIVATE_FAST:-}" = 1 ]; then
                printf 'fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n'
            fi
        } | pg__as_owner tee -a "$datadir/postgresql.conf" >/dev/null
    fi

    # Prefer the port used last time so URLs stay stable, then probe upward.
    local candidates=() previous attempt
    previous="$(cat "$portfile" 2>/dev/null || true)"
    case "$previous" in
        '' | *[!0-9]*) ;;
        *) candidates+=("$previous") ;;
    esac
    port="$PG_PRIVATE_FIRST_PORT"
    while [ "${#candidates[@]}" -lt 6 ] && [ "$port" -lt 65535 ]; do
        if ! pg__port_in_use "$port"; then
            case " ${candidates[*]} " in
                *" $port "*) ;;
                *) candidates+=("$port") ;;
            esac
        fi
        port=$((port + 1))
    done

    for attempt in "${candidates[@]}"; do
        pg__port_in_use "$attempt" && continue
        pg__say "starting PostgreSQL on 127.0.0.1:$attempt (log: $log)"
        if pg__as_owner pg_ctl -D "$datadir" -l "$log" -w -t 60 -o "-p $attempt" start >/dev/null; then
            if pg__wait_ready "$attempt"; then
                printf '%s\n' "$attempt" >"$portfile"
                export PG_PRIVATE_PORT="$attempt"
                export PG_PRIVATE_URL="postgres://postgres@127.0.0.1:$attempt/postgres"
                return 0
            fi
            pg__as_owner pg_ctl -D "$datadir" -m fast -w stop >/dev/null 2>&1 || true
        fi
        tail -n 5 "$log" >&2 2>/dev/null || true
    done
    pg__die "could not start PostgreSQL in $datadir; see $log"
}

# pg_stop_private DATADIR: stops the cluster in DATADIR if it runs.
pg_stop_private() {
    local datadir="${1:?pg_stop_private needs a data directory}"
    if [ ! -f "$datadir/PG_VERSION" ]; then
        pg__say "no PostgreSQL cluster in $datadir"
        return 0
    fi
    pg_install_if_missing
    if ! pg__running "$datadir"; then
        pg__say "the PostgreSQL cluster in $datadir is not running"
        return 0
    fi
    pg__say "stopping the PostgreSQL cluster in $datadir"
    pg__as_owner pg_ctl -D "$datadir" -m fast -w stop >/dev/null
}

# pg_url_with_db URL DB: URL with its database name replaced by DB (query string kept).
pg_url_with_db() {
    local url="$1" db="$2" scheme rest query="" hostpart
    scheme="${url%%://*}"
    rest="${url#*://}"
    case "$rest" in
        *\?*)
            query="?${rest#*\?}"
            rest="${rest%%\?*}"
            ;;
    esac
    hostpart="${rest%%/*}"
    printf '%s://%s/%s%s\n' "$scheme" "$hostpart" "$db" "$query"
}

# ensure_libpq_dev: the libpq headers and the libpq.so link the Rust build (diesel's pq-sys)
# needs; installs libpq-dev when missing and we are root.
ensure_libpq_dev() {
    local header=/usr/include/postgresql/libpq-fe.h lib_found=""
    if command -v pg_config >/dev/null 2>&1; then
        local inc libdir
        inc="$(pg_config --includedir 2>/dev/null || true)"
        libdir="$(pg_config --libdir 2>/dev/null || true)"
        [ -n "$inc" ] && [ -f "$inc/libpq-fe.h" ] && header="$inc/libpq-fe.h"
        [ -n "$libdir" ] && [ -e "$libdir/libpq.so" ] && lib_found=1
    fi
    if [ -z "$lib_found" ] && compgen -G '/usr/lib/*/libpq.so' >/dev/null; then
        lib_found=1
    fi
    if [ -z "$lib_found" ] && [ -e /usr/lib/libpq.so ]; then
        lib_found=1
    fi
    if [ -f "$header" ] && [ -n "$lib_found" ]; then
        return 0
    fi
    if pg__is_root; then
        pg__apt_install libpq-dev
    else
        pg__say "warning: libpq-dev (libpq headers and libpq.so) seems to be missing; the build links \
against libpq: install it with sudo apt-get install -y libpq-dev"
    fi
}

# True when $1 is diesel_cli $DIESEL_CLI_VERSION with the PostgreSQL backend.
pg__diesel_ok() {
    local out
    [ -x "$1" ] || return 1
    out="$("$1" --version 2>/dev/null)" || return 1
    grep -q "Version: $DIESEL_CLI_VERSION\$" <<<"$out" && grep -q "Supported Backends:.*postgres" <<<"$out"
}

# tools_dir: prints where pinned helper tools (diesel_cli, the schemathesis venv)
# are installed: SWITCHBOARD_TOOLS_DIR, else a per-user cache shared by every checkout on the
# machine (so a fresh clone does not compile them again), e.g. ~/.cache/switchboard-tools.
tools_dir() {
    printf '%s\n' "${SWITCHBOARD_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchboard-tools}"
}

# ensure_diesel_cli: exports DIESEL, the path of diesel_cli $DIESEL_CLI_VERSION (PostgreSQL):
# $(tools_dir)/bin/diesel, else a `diesel` of that version on PATH, else one installed into
# $(tools_dir) with cargo install. The install is an unoptimised build: it compiles in about
# half the time, and what diesel_cli does here (run migrations, print the schema) waits on
# PostgreSQL, not on the CPU.
ensure_diesel_cli() {
    : "${REPO:?REPO must point at the repository root}"
    local tools
    tools="$(tools_dir)"
    DIESEL="$tools/bin/diesel"
    export DIESEL
    pg__diesel_ok "$DIESEL" && return 0
    local found
    found="$(command -v diesel 2>/dev/null || true)"
    if [ -n "$found" ] && pg__diesel_ok "$found"; then
        DIESEL="$found"
        return 0
    fi
    ensure_libpq_dev
    command -v cargo >/dev/null 2>&1 || pg__die "cargo is needed to install diesel_cli (https://rustup.rs)"
    pg__say "installing diesel_cli $DIESEL_CLI_VERSION into $tools"
    cargo install diesel_cli --version "$DIESEL_CLI_VERSION" --no-default-features \
        --features postgres --root "$tools" --locked --debug >&2 ||
        pg__die "cargo install diesel_cli $DIESEL_CLI_VERSION failed"
    [ -x "$DIESEL" ] || pg__die "diesel_cli was installed but $DIESEL is missing"
}

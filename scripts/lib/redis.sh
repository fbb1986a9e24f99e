# shellcheck shell=bash
# Redis for scripts/test.sh: the redis-server and redis-cli programs (version 7 or newer) and a
# private redis-server that listens on 127.0.0.1 only, keeps nothing on disk and belongs to the
# run that started it.
#
# Source this file after scripts/lib/pg.sh (it uses pg__say, pg__die, pg__is_root,
# pg__apt_install and pg__port_in_use). Functions print progress on stderr and stop the calling
# script (exit 1) with a message when something cannot be done.

# Port probed first for a private server; 6379 is left to a system Redis.
REDIS_PRIVATE_FIRST_PORT="${REDIS_PRIVATE_FIRST_PORT:-56379}"
REDIS_MIN_MAJOR=7

# redis_install_if_missing: makes redis-server and redis-cli callable, installing the
# `redis-server` package (which brings redis-tools) when either is absent and we are root.
# Exports REDIS_SERVER_BIN, the absolute path of redis-server as found on PATH. Debian's
# /usr/bin/redis-server is a symbolic link to redis-check-rdb that picks its role from the name
# it was called by, so the link is kept as it is, never resolved.
redis_install_if_missing() {
    if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
        if ! pg__is_root; then
            pg__die "redis-server and redis-cli (Redis $REDIS_MIN_MAJOR or newer) were not found. \
Install them (e.g. sudo apt-get install -y redis-server), or set TEST_REDIS_URL to an existing server."
        fi
        pg__apt_install redis-server
    fi
    local tool
    for tool in redis-server redis-cli; do
        command -v "$tool" >/dev/null 2>&1 || pg__die "$tool is still missing after installing redis-server"
    done
    local bin
    bin="$(command -v redis-server)"
    case "$bin" in
        /*) ;;
        *) bin="$PWD/$bin" ;;
    esac
    REDIS_SERVER_BIN="$bin"
    export REDIS_SERVER_BIN
    redis__check_major "redis-server ($REDIS_SERVER_BIN)" "$(redis__server_version)"
}

# The version of redis-server on PATH ("Redis server v=7.0.15 sha=..." gives 7.0.15).
redis__server_version() {
    redis-server --version 2>/dev/null | sed -n 's/.* v=\([0-9][0-9.]*\).*/\1/p' | head -n 1
}

# redis__check_major WHAT VERSION: stops the script unless VERSION is REDIS_MIN_MAJOR or newer.
redis__check_major() {
    local what="$1" version="$2" major
    major="${version%%.*}"
    case "$major" in
        '' | *[!0-9]*) pg__die "could not read the version of $what" ;;
    esac
    [ "$major" -ge "$REDIS_MIN_MAJOR" ] ||
        pg__die "$what is Redis $version; Switchboard needs Redis $REDIS_MIN_MAJOR or newer"
}

# redis_check_url URL: the server at URL answers PING and is Redis REDIS_MIN_MAJOR or newer.
redis_check_url() {
    local url="$1" out version
    out="$(redis-cli -u "$url" --no-auth-warning ping 2>&1)" || true
    [ "$out" = PONG ] || pg__die "the Redis server at $url does not answer PING: $out"
    version="$(redis-cli -u "$url" --no-auth-warning info server 2>/dev/null |
        tr -d '\r' | sed -n 's/^redis_version://p')"
    redis__check_major "the Redis server at $url" "$version"
}

# The pid of the private server in DIR when it runs: the pid file names a live redis-server.
redis__pid() {
    local pid comm
    pid="$(cat "$1/redis.pid" 2>/dev/null || true)"
    case "$pid" in
        '' | *[!0-9]*) return 1 ;;
    esac
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [ "$comm" = redis-server ] || return 1
    printf '%s\n' "$pid"
}

# redis__wait_ready DIR PORT: waits up to 10 s for the server started in DIR to answer on
# 127.0.0.1:PORT. The answer must come from that server (its process id), not from another one
# that took the port first; gives up early when the server has exited.
redis__wait_ready() {
    local dir="$1" port="$2" i pid answer
    for i in $(seq 1 100); do
        pid="$(redis__pid "$dir" || true)"
        if [ -n "$pid" ]; then
            answer="$(redis-cli -h 127.0.0.1 -p "$port" info server 2>/dev/null |
                tr -d '\r' | sed -n 's/^process_id://p')"
            [ "$answer" = "$pid" ] && return 0
        elif [ "$i" -gt 10 ]; then
            # Daemonized and gone: it could not listen (the port was taken meanwhile).
            return 1
        fi
        sleep 0.1
    done
    return 1
}

# redis_start_private DIR: starts a private redis-server whose pid file, log and working
# directory are in DIR (created when missing). It listens on 127.0.0.1 only, on the first free
# port from REDIS_PRIVATE_FIRST_PORT, and writes no snapshot and no append-only file. Exports
# REDIS_PRIVATE_PORT and REDIS_PRIVATE_URL=redis://127.0.0.1:PORT/0. Stop it with
# redis_stop_private DIR.
redis_start_private() {
    local dir="${1:?redis_start_private needs a directory}"
    case "$dir" in
        /*) ;;
        *) dir="$PWD/$dir" ;;
    esac
    dir="${dir%/}"
    redis_install_if_missing
    mkdir -p -- "$dir"
    if redis__pid "$dir" >/dev/null; then
        pg__die "a redis-server from $dir runs already (pid $(cat "$dir/redis.pid")); stop it first"
    fi
    rm -f -- "$dir/redis.pid"

    local port="$REDIS_PRIVATE_FIRST_PORT" tries=0 log="$dir/redis.log"
    while [ "$tries" -lt 6 ] && [ "$port" -lt 65535 ]; do
        if pg__port_in_use "$port"; then
            port=$((port + 1))
            continue
        fi
        tries=$((tries + 1))
        pg__say "starting redis-server on 127.0.0.1:$port (log: $log)"
        "$REDIS_SERVER_BIN" --bind 127.0.0.1 --port "$port" --protected-mode yes \
            --save '' --appendonly no --dir "$dir" \
            --daemonize yes --pidfile "$dir/redis.pid" --logfile "$log" >/dev/null 2>&1 || true
        if redis__wait_ready "$dir" "$port"; then
            export REDIS_PRIVATE_PORT="$port"
            export REDIS_PRIVATE_URL="redis://127.0.0.1:$port/0"
            return 0
        fi
        (redis_stop_private "$dir") || true
        tail -n 5 "$log" >&2 2>/dev/null || true
        port=$((port + 1))
    done
    pg__die "could not start redis-server in $dir; see $log"
}

# redis_stop_private DIR: stops the private server started in DIR if it runs (SIGTERM, then
# SIGKILL after 10 s). Nothing is saved: the server was started without persistence.
redis_stop_private() {
    local dir="${1:?redis_stop_private needs a directory}" pid i
    pid="$(redis__pid "$dir" || true)"
    if [ -z "$pid" ]; then
        pg__say "no redis-server from $dir is running"
        return 0
    fi
    pg__say "stopping redis-server (pid $pid) from $dir"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        [ "$i" -lt 100 ] && sleep 0.1
    done
    pg__say "redis-server (pid $pid) did not stop within 10 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
}

#!/usr/bin/env bash
# Compares Switchboard with reference Socket.IO peers under the same load, in one run: each case
# runs `switchboard-bench` against Switchboard's /ws and against a peer, and prints both figures
# and their ratio, naming the peer's mode (persisting or relay-only) on every line.
#
#   scripts/bench.sh              every case (CASES="1 2 3 4 5 6 7")
#   CASES="2 4" scripts/bench.sh  some cases
#   scripts/bench.sh soak         the soak (Switchboard only), see below
#   scripts/bench.sh cluster      two cluster nodes against one node, see below
#   scripts/bench.sh recovery     Socket.IO with connection state recovery against without
#   scripts/bench.sh media        message delivery with uploads running against without
#   scripts/bench.sh import       `switchboard import` of a generated seed 003 export, see below
#
# Cases (Switchboard's acks are always durable: committed to PostgreSQL):
#   1  open loop: CLIENTS clients in groups of GROUP_SIZE, RATE messages/s each; delivery
#      latency p50/p99, counted from the scheduled send time, vs the Node peer persisting.
#   2  closed loop (--rate 0, one send outstanding per client): CLIENTS clients in 1:1
#      conversations; durable acks/s vs the Node peer persisting.
#   3  closed loop, CLIENTS clients in groups of GROUP_SIZE; durable acks/s vs the Node peer
#      persisting.
#   4  cases 2 and 3 vs the Node peer relay-only (no DATABASE_URL): its acks are "relayed".
#   5  idle memory per authenticated connection: IDLE_SOCKETS sockets (--clients 0 --idle),
#      RSS sampled again SETTLE seconds after the last one connected (the settled figure is the
#      one compared) and AFTER_CLOSE seconds after every socket closed (is the memory given
#      back?), vs the Node peer persisting.
#   6  call set-up latency, call:initiate -> call:incoming at the callee: CALLS_SEQUENTIAL calls
#      from one caller (each ended with call:end before the next), then CALLS calls from
#      CALLERS concurrent callers; vs the Node peer relay-only (it never persists calls).
#   7  cases 2, 3 and 5 vs the Rust peer (../shared/bench/peer-socketioxide) relay-only.
# A Switchboard run shared by several cases (case 2 and 4 both need the 1:1 run) is made once.
# Ratios: "Switchboard / peer" for throughput, "peer / Switchboard" for latency and memory, so
# above 1 means Switchboard does better.
#
# Knobs (environment, defaults in brackets):
#   CASES ["1 2 3 4 5 6 7"]  which cases
#   CLIENTS [1000]          active clients in cases 1-4 and 7
#   GROUP_SIZE [10]         members per group conversation (conversations = CLIENTS / GROUP_SIZE)
#   DURATION [60]           seconds of sending per run
#   RATE [1]                case 1 (and soak): messages per second per client
#   INFLIGHT                most unanswered sends per client (bench default: 100 open loop,
#                           1 closed loop)
#   MESSAGE_BYTES [64]      message length
#   IDLE_SOCKETS [10000]    case 5 sockets
#   SETTLE [5]              case 5: seconds between connecting and the settled RSS sample
#   AFTER_CLOSE [20]        case 5: seconds between the last socket closing and the last sample
#   CALLS_SEQUENTIAL [200]  case 6: sequential calls
#   CALLERS [50]            case 6: concurrent callers
#   CALLS [1000]            case 6: calls made by the concurrent callers, in all
#   CALL_TIMEOUT [10]       case 6: seconds a call may take to ring, and again to end
#   CONNECT_CONCURRENCY [200]
#   BENCH_ARGS              more `switchboard-bench` options, passed to every run
#   PEER_DIR [../shared/bench/peer-socketio]          Node peer (npm ci in a copy)
#   SIOXIDE_DIR [../shared/bench/peer-socketioxide]   Rust peer (built in a copy)
#   SIOXIDE_TARGET_DIR [/tmp/peer-sioxide-target]     its cargo target directory (the copy
#                           it is built from is SIOXIDE_TARGET_DIR-src)
#   SERVER_RUST_LOG [warn]  Switchboard's RUST_LOG (the bench itself follows RUST_LOG)
#   CARGO_TARGET_DIR        where Switchboard is built (release/switchboard is run from there)
#
# Import (`scripts/bench.sh import`, Switchboard only: the legacy backends have no importer to
# compare with): scripts/import-data.py writes a seed 003 export of IMPORT_MESSAGES [1000000]
# messages (IMPORT_USERS [10000] users, IMPORT_CONVERSATIONS [50000] conversations) into
# IMPORT_DIR [target/bench/import-data-MESSAGES], kept for later runs; `switchboard import` reads
# it into the run's database twice: the first run's documents per second is the figure, the
# second (nothing left to import) shows what a repeated run costs.
#
# Soak (`scripts/bench.sh soak`, Switchboard only): inserts SOAK_SEED_MESSAGES [5000000]
# messages into the run's own conversations (INSERT ... SELECT FROM generate_series; seqs and
# conversations.last_seq/last_change kept consistent), then runs an open loop of CLIENTS clients
# in groups of GROUP_SIZE for SOAK_MINUTES [30], printing every SOAK_REPORT_SECS [60] seconds
# the acks, ack p50/p99, unanswered sends and server RSS, and at the end the ack p99 of the
# last SOAK_COMPARE_MINUTES [5] (may be fractional) over that of the first, and the RSS growth
# from the first report to the last. Rate: RATE when set, else 50 % (SOAK_LOAD_PCT) of SOAK_MAX_ACKS_PER_SEC
# (a measured maximum of durable acks/s for this shape, e.g. case 3's Switchboard figure)
# spread over the clients; without either, a closed-loop probe of SOAK_PROBE_SECS [20] seconds
# measures the maximum first.
#
# Cluster (`scripts/bench.sh cluster`, Switchboard only): a private Redis, then each shape run
# on one node (no Redis, as the product runs by default) and on two nodes (REDIS_URL set, both
# on this machine, the clients split between them so that every conversation spans both
# nodes), at the same total load: closed loop 1:1 and in groups of GROUP_SIZE (durable acks/s,
# delivery p50/p99), then an open loop of 1:1 conversations whose two members sit on different
# nodes, at CLUSTER_LOAD_PCT [50] % of the one-node closed-loop 1:1 maximum: every delivery
# there crosses nodes. That maximum is measured again right before each open-loop round, by a
# one-node closed-loop 1:1 probe of CLUSTER_PROBE_SECS [10] seconds, so that the rate follows
# the machine's speed at that moment rather than the closed-loop rounds' minutes before. Each
# shape runs
# CLUSTER_ROUNDS [3] rounds of one node and two nodes back to back, the order swapped every
# round; each round gives a ratio from its two runs, and the median of those is the figure to
# quote (a machine's speed may drift within minutes). Every run starts right after a
# CHECKPOINT, so that one PostgreSQL starts on its own (by WAL volume) does not land inside
# some runs and not others. Ratios are "two nodes / one node" for
# throughput and "one node / two nodes" for latency (above 1: the two nodes do better).
#
# Recovery (`scripts/bench.sh recovery`, Switchboard only): Switchboard driven over its own
# /socket.io/ (`bench --target socketio --own-socketio`), once with connection state recovery
# (SOCKETIO_RECOVERY_SECS=120: a private id, an offset on every event, cursors per session) and
# once without (SOCKETIO_RECOVERY_SECS=0): closed loop 1:1 and in groups of GROUP_SIZE (durable
# acks/s, delivery p50/p99) and idle memory per authenticated socket (IDLE_SOCKETS). Ratios are
# "with / without" for throughput and "without / with" for latency and memory (above 1: recovery
# costs nothing there).
#
# Media (`scripts/bench.sh media`, Switchboard only): the open loop of case 1 (CLIENTS clients in
# groups of GROUP_SIZE, RATE messages/s each) alone, then with MEDIA_UPLOADERS [8] threads
# uploading MEDIA_UPLOAD_BYTES [2097152]-byte WAV files back to back (streamed to the store),
# then with the same number uploading JPEG photos of about MEDIA_IMAGE_BYTES [1048576] bytes
# (held, stripped of metadata and thumbnailed), then the WAV uploads again with the intake limit
# off (MEDIA_UPLOAD_BYTES_PER_SEC=0): upload throughput (MB/s) and upload latency, and the
# delivery p50/p99 with uploads over without (above 1: uploads slow delivery down).
# The media store is a directory in the run's folder, removed at the end.
#
# PostgreSQL: DATABASE_URL (any database on the server; used to create and drop the bench
# databases), else postgres://postgres@127.0.0.1:5432/postgres when it answers, else a private
# cluster in target/bench/pgdata (stopped at exit). Two databases are created per run,
# sb_bench_<pid> and peer_bench_<pid>, and dropped at exit.
#
# Every run gets a fresh server process. Switchboard gets MESSAGE_RATE_PER_MIN=1000000,
# FRAME_RATE_PER_SEC=100000, CALL_RATE_PER_HOUR=1000000 and CALL_BURST=100000 unless set, so its
# rate limits stay out of the way; every other setting (DB_POOL_SIZE, ...) passes through from
# the environment. The Node peer gets POOL when set. JWT_SECRET is generated unless set. Each
# run's raw JSON report, the servers' logs and summary.txt go to target/bench/run-<time>-<pid>/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/lib/pg.sh disable=SC1091 # followed when given as input (scripts/test.sh)
source "$REPO/scripts/lib/pg.sh"
# shellcheck source=scripts/lib/redis.sh disable=SC1091
source "$REPO/scripts/lib/redis.sh"

CASES="${CASES:-1 2 3 4 5 6 7}"
CLIENTS="${CLIENTS:-1000}"
GROUP_SIZE="${GROUP_SIZE:-10}"
DURATION="${DURATION:-60}"
RATE_SET="${RATE:-}"
RATE="${RATE:-1}"
MESSAGE_BYTES="${MESSAGE_BYTES:-64}"
IDLE_SOCKETS="${IDLE_SOCKETS:-10000}"
SETTLE="${SETTLE:-5}"
AFTER_CLOSE="${AFTER_CLOSE:-20}"
CALLS_SEQUENTIAL="${CALLS_SEQUENTIAL:-200}"
CALLERS="${CALLERS:-50}"
CALLS="${CALLS:-1000}"
CALL_TIMEOUT="${CALL_TIMEOUT:-10}"
CONNECT_CONCURRENCY="${CONNECT_CONCURRENCY:-200}"
PEER_DIR="${PEER_DIR:-$REPO/../shared/bench/peer-socketio}"
SIOXIDE_DIR="${SIOXIDE_DIR:-$REPO/../shared/bench/peer-socketioxide}"
SIOXIDE_TARGET_DIR="${SIOXIDE_TARGET_DIR:-/tmp/peer-sioxide-target}"
SOAK_MINUTES="${SOAK_MINUTES:-30}"
SOAK_SEED_MESSAGES="${SOAK_SEED_MESSAGES:-5000000}"
SOAK_REPORT_SECS="${SOAK_REPORT_SECS:-60}"
SOAK_COMPARE_MINUTES="${SOAK_COMPARE_MINUTES:-5}"
SOAK_LOAD_PCT="${SOAK_LOAD_PCT:-50}"
SOAK_MAX_ACKS_PER_SEC="${SOAK_MAX_ACKS_PER_SEC:-}"
SOAK_PROBE_SECS="${SOAK_PROBE_SECS:-20}"
CLUSTER_LOAD_PCT="${CLUSTER_LOAD_PCT:-50}"
CLUSTER_ROUNDS="${CLUSTER_ROUNDS:-3}"
CLUSTER_PROBE_SECS="${CLUSTER_PROBE_SECS:-10}"
OUT="$REPO/target/bench"
BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/switchboard"
case "$BIN" in /*) ;; *) BIN="$REPO/$BIN" ;; esac
BENCH_BIN="$(dirname "$BIN")/switchboard-bench"

die() {
    printf 'bench: %s\n' "$*" >&2
    exit 1
}
say() { printf '%s\n' "$*"; }

MODE=cases
case "${1:-}" in
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    soak) MODE=soak ;;
    cluster) MODE=cluster ;;
    recovery) MODE=recovery ;;
    media) MODE=media ;;
    import) MODE=import ;;
    "") ;;
    *) die "unknown argument $1 (configure with environment variables; see --help)" ;;
esac

for v in CONVERSATIONS IDLE; do
    [ -z "${!v:-}" ] || die "$v is no longer a knob: conversations follow from CLIENTS and" \
        "GROUP_SIZE (1:1 in cases 2, 4 and 7), idle sockets are IDLE_SOCKETS (case 5); see --help"
done

want() { [[ " $CASES " == *" $1 "* ]]; }
is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

if [ "$MODE" = cases ]; then
    for c in $CASES; do
        case "$c" in
            [1-7]) ;;
            *) die "unknown case '$c' in CASES (1 to 7)" ;;
        esac
    done
fi
for v in CLIENTS GROUP_SIZE IDLE_SOCKETS CALLS_SEQUENTIAL CALLERS CALLS SOAK_MINUTES \
    SOAK_SEED_MESSAGES SOAK_LOAD_PCT CLUSTER_ROUNDS CLUSTER_PROBE_SECS; do
    is_uint "${!v}" || die "$v must be a whole number, not '${!v}'"
done
[ "$GROUP_SIZE" -ge 2 ] || die "GROUP_SIZE must be at least 2"
[ "$CLIENTS" -ge 2 ] || die "CLIENTS must be at least 2"
[ "$CLUSTER_ROUNDS" -ge 1 ] || die "CLUSTER_ROUNDS must be at least 1"
[ "$CLUSTER_PROBE_SECS" -ge 1 ] || die "CLUSTER_PROBE_SECS must be at least 1"
GROUPS_OF=$((CLIENTS / GROUP_SIZE))
[ "$GROUPS_OF" -ge 1 ] || die "CLIENTS must be at least GROUP_SIZE"
PAIRS=$((CLIENTS / 2))

NEED_NODE=""
NEED_SIOXIDE=""
if [ "$MODE" = cases ]; then
    for c in 1 2 3 4 5 6; do want "$c" && NEED_NODE=1; done
    want 7 && NEED_SIOXIDE=1
fi

command -v cargo >/dev/null 2>&1 || die "cargo was not found: install Rust (https://rustup.rs)"
command -v node >/dev/null 2>&1 || die "node was not found: reports are compared with Node.js 18+"
command -v psql >/dev/null 2>&1 || die "psql was not found: install the PostgreSQL client"
command -v curl >/dev/null 2>&1 || die "curl was not found"
if [ -n "$NEED_NODE" ]; then
    command -v npm >/dev/null 2>&1 || die "npm was not found: the Node peer needs it"
    [ -f "$PEER_DIR/server.js" ] || die "no Node peer in $PEER_DIR (set PEER_DIR)"
fi
if [ -n "$NEED_SIOXIDE" ]; then
    [ -f "$SIOXIDE_DIR/Cargo.toml" ] || die "no Rust peer in $SIOXIDE_DIR (set SIOXIDE_DIR)"
fi

# --- open files ------------------------------------------------------------------------------
sockets=$((CLIENTS > 2 * CALLERS ? CLIENTS : 2 * CALLERS))
if [ "$MODE" = cases ] && { want 5 || want 7; }; then
    [ "$IDLE_SOCKETS" -gt "$sockets" ] && sockets=$IDLE_SOCKETS
fi
if ! ulimit -n 65536 2>/dev/null; then
    hard="$(ulimit -Hn)"
    [ "$hard" = unlimited ] && hard=65536
    ulimit -n "$hard"
    say "note: the open-files limit is capped at $hard (ulimit -Hn)"
fi
if [ "$(ulimit -n)" -lt $((sockets + 256)) ]; then
    die "the open-files limit ($(ulimit -n)) is too low for $sockets sockets; raise the hard limit"
fi

# --- clean-up --------------------------------------------------------------------------------
SB_PID=""
SB2_PID=""
PRIVATE_REDIS=""
PEER_PID=""
ADMIN_URL=""
SB_DB="sb_bench_$$"
PEER_DB="peer_bench_$$"
DBS_CREATED=""
PRIVATE_PG=""

stop_pid() {
    local pid="$1"
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pid "$SB_PID"
    stop_pid "$SB2_PID"
    stop_pid "$PEER_PID"
    if [ -n "$PRIVATE_REDIS" ]; then
        redis_stop_private "$RUN/redis" >/dev/null || true
    fi
    if [ -n "$DBS_CREATED" ] && [ -n "$ADMIN_URL" ]; then
        for db in "$SB_DB" "$PEER_DB"; do
            psql -w -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 ||
                psql -w -X -q "$ADMIN_URL" -c "DROP DATABASE IF EXISTS \"$db\"" >/dev/null 2>&1 ||
                printf 'bench: could not drop database %s\n' "$db" >&2
        done
    fi
    if [ -n "$PRIVATE_PG" ]; then
        pg_stop_private "$OUT/pgdata" || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
    local port=$((20000 + RANDOM % 20000))
    for _ in $(seq 1 200); do
        if ! port_in_use "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
        port=$((port + 1))
    done
    die "no free TCP port found"
}
wait_health() {
    # wait_health NAME URL PID LOG
    for _ in $(seq 1 300); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "$2" 2>/dev/null)" = 200 ]; then
            return 0
        fi
        if ! kill -0 "$3" 2>/dev/null; then
            tail -n 20 "$4" >&2 || true
            die "$1 exited during start-up (log: $4)"
        fi
        sleep 0.2
    done
    tail -n 20 "$4" >&2 || true
    die "$1 did not answer $2 within 60 s (log: $4)"
}

RUN="$OUT/run-$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$RUN"
SUMMARY="$RUN/summary.txt"
: >"$SUMMARY"

# --- build -----------------------------------------------------------------------------------
say "== build =="
ensure_libpq_dev
cargo build --release
[ -x "$BIN" ] || die "no binary at $BIN after the build"
[ -x "$BENCH_BIN" ] || die "no binary at $BENCH_BIN after the build"

if [ -n "$NEED_NODE" ]; then
    say "== Node peer (npm ci in a copy of $PEER_DIR) =="
    NODE_COPY="$OUT/peer-socketio"
    rm -rf "$NODE_COPY"
    mkdir -p "$NODE_COPY"
    cp -R "$PEER_DIR/." "$NODE_COPY/"
    chmod -R u+w "$NODE_COPY"
    rm -rf "$NODE_COPY/node_modules"
    if [ -f "$NODE_COPY/package-lock.json" ]; then
        (cd "$NODE_COPY" && npm ci --no-audit --no-fund --loglevel=error)
    else
        (cd "$NODE_COPY" && npm install --no-audit --no-fund --loglevel=error)
    fi
fi
if [ -n "$NEED_SIOXIDE" ]; then
    say "== Rust peer (cargo build --release in a copy of $SIOXIDE_DIR) =="
    # Outside this repository: a copy under it would be taken for a member of Switchboard's
    # cargo workspace, and cargo refuses to build it.
    SIOXIDE_COPY="$SIOXIDE_TARGET_DIR-src"
    rm -rf "$SIOXIDE_COPY"
    mkdir -p "$SIOXIDE_COPY"
    (cd "$SIOXIDE_DIR" && tar --exclude=./target -cf - .) | (cd "$SIOXIDE_COPY" && tar -xf -)
    chmod -R u+w "$SIOXIDE_COPY"
    (cd "$SIOXIDE_COPY" && CARGO_TARGET_DIR="$SIOXIDE_TARGET_DIR" cargo build --release --locked)
    SIOXIDE_BIN="$SIOXIDE_TARGET_DIR/release/peer-socketioxide"
    [ -x "$SIOXIDE_BIN" ] || die "no binary at $SIOXIDE_BIN after the build"
fi

# --- PostgreSQL ------------------------------------------------------------------------------
say "== database =="
if [ -n "${DATABASE_URL:-}" ]; then
    ADMIN_URL="$DATABASE_URL"
    say "using DATABASE_URL from the environment"
elif pg_isready -q -h 127.0.0.1 -p 5432 -t 2 2>/dev/null &&
    psql -w -X -q -tA postgres://postgres@127.0.0.1:5432/postgres -c 'SELECT 1' >/dev/null 2>&1; then
    # Plain TCP for both servers, as the Node peer's client connects unless told otherwise
    # (libpq would use TLS where the service has it on, which costs both ends CPU).
    ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    say "using the PostgreSQL service at 127.0.0.1:5432 (sslmode=disable, for both servers)"
else
    say "no PostgreSQL at 127.0.0.1:5432: starting a private cluster in $OUT/pgdata"
    pg_start_private "$OUT/pgdata"
    PRIVATE_PG=1
    ADMIN_URL="$PG_PRIVATE_URL"
fi
psql -w -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "CREATE DATABASE \"$SB_DB\"" >/dev/null
DBS_CREATED=1
psql -w -X -q -v ON_ERROR_STOP=1 "$ADMIN_URL" -c "CREATE DATABASE \"$PEER_DB\"" >/dev/null
SB_DB_URL="$(pg_url_with_db "$ADMIN_URL" "$SB_DB")"
PEER_DB_URL="$(pg_url_with_db "$ADMIN_URL" "$PEER_DB")"
say "databases: $SB_DB, $PEER_DB; reports in $RUN"

if [ -z "${JWT_SECRET:-}" ]; then
    JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
fi
export JWT_SECRET

# --- servers ---------------------------------------------------------------------------------
SB_MESSAGE_RATE="${MESSAGE_RATE_PER_MIN:-1000000}"
SB_FRAME_RATE="${FRAME_RATE_PER_SEC:-100000}"
SB_CALL_RATE="${CALL_RATE_PER_HOUR:-1000000}"
SB_CALL_BURST="${CALL_BURST:-100000}"
SB_LOG_LEVEL="${SERVER_RUST_LOG:-warn}"
SERVER_URL=""

start_switchboard() {
    # start_switchboard NAME: a fresh Switchboard; sets SB_PID, SERVER_URL.
    local log="$RUN/$1-switchboard.log" port
    port="$(free_port)"
    DATABASE_URL="$SB_DB_URL" BIND="127.0.0.1:$port" MESSAGE_RATE_PER_MIN="$SB_MESSAGE_RATE" \
        FRAME_RATE_PER_SEC="$SB_FRAME_RATE" CALL_RATE_PER_HOUR="$SB_CALL_RATE" \
        CALL_BURST="$SB_CALL_BURST" RUST_LOG="$SB_LOG_LEVEL" MEDIA_DIR="$RUN/media" \
        MEDIA_QUOTA_BYTES="${MEDIA_QUOTA_BYTES:-1000000000000}" \
        "$BIN" serve >"$log" 2>&1 &
    SB_PID=$!
    say "JWT_SECRET=\$JWT_SECRET DATABASE_URL=$SB_DB_URL BIND=127.0.0.1:$port" \
        "MESSAGE_RATE_PER_MIN=$SB_MESSAGE_RATE FRAME_RATE_PER_SEC=$SB_FRAME_RATE" \
        "CALL_RATE_PER_HOUR=$SB_CALL_RATE CALL_BURST=$SB_CALL_BURST RUST_LOG=$SB_LOG_LEVEL" \
        "$BIN serve   (pid $SB_PID, log $log)"
    wait_health Switchboard "http://127.0.0.1:$port/health" "$SB_PID" "$log"
    SERVER_URL="ws://127.0.0.1:$port/ws"
}

start_peer() {
    # start_peer NAME PEER: PEER is node-persist, node-relay or sioxide; sets PEER_PID, SERVER_URL.
    local log="$RUN/$1-$2.log" port
    port="$(free_port)"
    case "$2" in
        node-persist)
            DATABASE_URL="$PEER_DB_URL" PORT="$port" node "$NODE_COPY/server.js" >"$log" 2>&1 &
            PEER_PID=$!
            say "JWT_SECRET=\$JWT_SECRET DATABASE_URL=$PEER_DB_URL PORT=$port${POOL:+ POOL=$POOL}" \
                "node $NODE_COPY/server.js   (pid $PEER_PID, log $log)"
            ;;
        node-relay)
            env -u DATABASE_URL PORT="$port" node "$NODE_COPY/server.js" >"$log" 2>&1 &
            PEER_PID=$!
            say "JWT_SECRET=\$JWT_SECRET PORT=$port node $NODE_COPY/server.js" \
                "  (relay-only; pid $PEER_PID, log $log)"
            ;;
        sioxide)
            env -u DATABASE_URL PORT="$port" "$SIOXIDE_BIN" >"$log" 2>&1 &
            PEER_PID=$!
            say "JWT_SECRET=\$JWT_SECRET PORT=$port $SIOXIDE_BIN" \
                "  (relay-only; pid $PEER_PID, log $log)"
            ;;
        *) die "unknown peer $2" ;;
    esac
    wait_health "peer $2" "http://127.0.0.1:$port/health" "$PEER_PID" "$log"
    SERVER_URL="http://127.0.0.1:$port"
}

# --- runs ------------------------------------------------------------------------------------
common=(--message-bytes "$MESSAGE_BYTES" --connect-concurrency "$CONNECT_CONCURRENCY")
[ -n "${INFLIGHT:-}" ] && common+=(--inflight "$INFLIGHT")
# shellcheck disable=SC2206 # BENCH_ARGS is a list of words on purpose
[ -n "${BENCH_ARGS:-}" ] && common+=(${BENCH_ARGS})

scenario_args() {
    # scenario_args NAME: the bench options of a named scenario, into SCENARIO.
    case "$1" in
        open-groups) SCENARIO=(--clients "$CLIENTS" --conversations "$GROUPS_OF" --rate "$RATE"
            --duration "$DURATION") ;;
        closed-1to1) SCENARIO=(--clients "$CLIENTS" --conversations "$PAIRS" --rate 0
            --duration "$DURATION") ;;
        closed-groups) SCENARIO=(--clients "$CLIENTS" --conversations "$GROUPS_OF" --rate 0
            --duration "$DURATION") ;;
        open-1to1) SCENARIO=(--clients "$CLIENTS" --conversations "$PAIRS" --rate "$RATE"
            --duration "$DURATION") ;;
        idle) SCENARIO=(--clients 0 --idle "$IDLE_SOCKETS" --settle "$SETTLE" --duration 1
            --after-close "$AFTER_CLOSE") ;;
        calls-sequential) SCENARIO=(--scenario calls --callers 1 --calls "$CALLS_SEQUENTIAL"
            --call-timeout "$CALL_TIMEOUT" --duration 3600) ;;
        calls-concurrent) SCENARIO=(--scenario calls --callers "$CALLERS" --calls "$CALLS"
            --call-timeout "$CALL_TIMEOUT" --duration 3600) ;;
        *) die "unknown scenario $1" ;;
    esac
}

run_bench() {
    # run_bench TITLE ARGS...: prints the command (secret elided) and runs it.
    local title="$1"
    shift
    local shown=() skip="" a
    for a in "$@"; do
        if [ -n "$skip" ]; then
            # shellcheck disable=SC2016 # the variable name is shown, not its value
            shown+=('"$JWT_SECRET"')
            skip=""
            continue
        fi
        [ "$a" = --jwt-secret ] && skip=1
        shown+=("$a")
    done
    say ""
    say "== bench: $title =="
    say "ulimit -n $(ulimit -n); ${shown[*]}"
    "$@"
}

run_switchboard() {
    # run_switchboard SCENARIO [MORE ARGS...]: once per script run; the report is
    # $RUN/SCENARIO-switchboard.json.
    local name="$1" json="$RUN/$1-switchboard.json"
    shift
    [ -f "$json" ] && return 0
    run_switchboard_into "$name" "$json" "$name" "$@"
}

run_switchboard_into() {
    # run_switchboard_into SCENARIO JSON LOG_NAME [MORE ARGS...]: a fresh Switchboard (its log
    # $RUN/LOG_NAME-switchboard.log) and one bench run against it, the report in JSON.
    local name="$1" json="$2" log_name="$3"
    shift 3
    scenario_args "$name"
    start_switchboard "$log_name"
    run_bench "$name on Switchboard" "$BENCH_BIN" --target ws --url "$SERVER_URL" \
        --database-url "$SB_DB_URL" --jwt-secret "$JWT_SECRET" --server-pid "$SB_PID" \
        --json-file "$json" "${SCENARIO[@]}" "${common[@]}" "$@"
    kill -0 "$SB_PID" 2>/dev/null || die "Switchboard exited during the run (log: $RUN/$log_name-switchboard.log)"
    stop_pid "$SB_PID"
    SB_PID=""
}

run_peer() {
    # run_peer SCENARIO PEER: once per script run; the report is $RUN/SCENARIO-PEER.json.
    local name="$1" peer="$2" json="$RUN/$1-$2.json"
    [ -f "$json" ] && return 0
    scenario_args "$name"
    start_peer "$name" "$peer"
    run_bench "$name on $peer" "$BENCH_BIN" --target socketio --url "$SERVER_URL" \
        --jwt-secret "$JWT_SECRET" --server-pid "$PEER_PID" \
        --json-file "$json" "${SCENARIO[@]}" "${common[@]}"
    kill -0 "$PEER_PID" 2>/dev/null || die "peer $peer exited during the run (log: $RUN/$name-$peer.log)"
    stop_pid "$PEER_PID"
    PEER_PID=""
}

compare() {
    # compare CASE KIND SCENARIO PEER TITLE: prints (and appends to summary.txt) Switchboard's
    # and the peer's figures and their ratio.
    node - "$@" "$RUN" "$AFTER_CLOSE" <<'EOF' | tee -a "$SUMMARY"
const fs = require('fs');
const path = require('path');
const [caseNo, kind, scenario, peer, title, dir, afterClose] = process.argv.slice(2);
const load = (who) => JSON.parse(fs.readFileSync(path.join(dir, `${scenario}-${who}.json`), 'utf8'));
const sb = load('switchboard');
const pr = load(peer);
const peerName = {
  'node-persist': ['Node socket.io', 'persisting', 'durable'],
  'node-relay': ['Node socket.io', 'relay-only', 'relayed'],
  'sioxide': ['socketioxide', 'relay-only', 'relayed'],
}[peer];
const [pName, pMode, pAcks] = peerName;
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const ratio = (a, b) => {
  if (num(a) === null || num(b) === null || b === 0) return 'n/a';
  const r = a / b;
  return (r >= 0.1 ? r.toFixed(2) : r.toPrecision(2)) + 'x';
};
const fmt = (v, unit, digits = 2) => (num(v) === null ? '-' : `${v.toFixed(digits)}${unit}`);
const pad = (s, n) => String(s).padEnd(n);
const out = [];
out.push(`-- case ${caseNo}: ${title}; peer: ${pName}, ${pMode} --`);
out.push(pad('', 36) + pad('Switchboard', 18) + pad(`${pName} (${pMode})`, 30) + 'ratio');
const row = (label, a, b, unit, better, digits) => {
  const r = better === 'higher' ? ratio(a, b) : ratio(b, a);
  const how = better === 'higher' ? 'Switchboard / peer' : 'peer / Switchboard';
  out.push(pad(label, 36) + pad(fmt(a, unit, digits), 18) + pad(fmt(b, unit, digits), 30) +
    `${r}  (${how}; peer ${pMode})`);
};
if (kind === 'latency') {
  row('delivery latency p50', sb.latency_ms.p50, pr.latency_ms.p50, ' ms', 'lower');
  row('delivery latency p99', sb.latency_ms.p99, pr.latency_ms.p99, ' ms', 'lower');
  row(`acks/s (SB durable, peer ${pAcks})`, sb.acks_per_sec, pr.acks_per_sec, '', 'higher', 1);
} else if (kind === 'throughput') {
  row(`acks/s (SB durable, peer ${pAcks})`, sb.acks_per_sec, pr.acks_per_sec, '', 'higher', 1);
  row('deliveries/s', sb.deliveries_per_sec, pr.deliveries_per_sec, '', 'higher', 1);
  row('delivery latency p50', sb.latency_ms.p50, pr.latency_ms.p50, ' ms', 'lower');
  row('delivery latency p99', sb.latency_ms.p99, pr.latency_ms.p99, ' ms', 'lower');
} else if (kind === 'memory') {
  row('RSS/connection, settled', sb.rss_per_connection_settled_kib, pr.rss_per_connection_settled_kib, ' KiB', 'lower', 1);
  row('RSS/connection, at connect', sb.rss_per_connection_kib, pr.rss_per_connection_kib, ' KiB', 'lower', 1);
  row('RSS before, MiB', sb.rss.before_kib / 1024, pr.rss.before_kib / 1024, ' MiB', 'lower', 1);
  row('RSS settled, MiB', sb.rss.settled_kib / 1024, pr.rss.settled_kib / 1024, ' MiB', 'lower', 1);
  row(`RSS ${afterClose} s after close, MiB`, sb.rss.after_close_kib / 1024, pr.rss.after_close_kib / 1024, ' MiB', 'lower', 1);
  row('connect time', sb.connect_secs, pr.connect_secs, ' s', 'lower');
} else if (kind === 'calls') {
  row('call set-up p50', sb.calls.setup_ms.p50, pr.calls.setup_ms.p50, ' ms', 'lower');
  row('call set-up p99', sb.calls.setup_ms.p99, pr.calls.setup_ms.p99, ' ms', 'lower');
  row('call end p50 (ack + callee told)', sb.calls.end_ms.p50, pr.calls.end_ms.p50, ' ms', 'lower');
  row('calls/s (set-up + end, in turn)', sb.calls.calls_per_sec, pr.calls.calls_per_sec, '', 'higher', 1);
}
for (const [name, r] of [['Switchboard', sb], [`${pName} (${pMode})`, pr]]) {
  const errs = Object.entries(r.errors).map(([k, v]) => `${k}=${v}`).join(', ') || 'none';
  let line = `${name}: ${r.connected} connected, ${r.connect_failures} connect failures`;
  if (r.calls) {
    line += `, ${r.calls.completed}/${r.calls.requested} calls completed`;
  } else if (r.clients > 0) {
    line += `, ${r.deliveries}/${r.expected_deliveries} deliveries, ${r.unanswered} unanswered`;
    if (r.rate > 0) line += `, ${r.deferred_sends} deferred, ${r.skipped_sends} skipped sends`;
  }
  out.push(`  ${line}, errors: ${errs}`);
}
out.push(`  reports: ${path.join(dir, `${scenario}-switchboard.json`)}, ${path.join(dir, `${scenario}-${peer}.json`)}`);
out.push('');
console.log(out.join('\n'));
EOF
}

case_pair() {
    # case_pair CASE KIND SCENARIO PEER TITLE
    run_switchboard "$3"
    run_peer "$3" "$4"
    say ""
    compare "$@"
}

if [ "$MODE" = cases ]; then
    say "== cases: $CASES =="
    if want 1; then
        case_pair 1 latency open-groups node-persist \
            "open loop, $CLIENTS clients in groups of $GROUP_SIZE, $RATE msg/s each, ${DURATION} s"
    fi
    if want 2; then
        case_pair 2 throughput closed-1to1 node-persist \
            "closed loop, $CLIENTS clients in 1:1 conversations, ${DURATION} s"
    fi
    if want 3; then
        case_pair 3 throughput closed-groups node-persist \
            "closed loop, $CLIENTS clients in groups of $GROUP_SIZE, ${DURATION} s"
    fi
    if want 4; then
        case_pair 4 throughput closed-1to1 node-relay \
            "closed loop, $CLIENTS clients in 1:1 conversations, ${DURATION} s"
        case_pair 4 throughput closed-groups node-relay \
            "closed loop, $CLIENTS clients in groups of $GROUP_SIZE, ${DURATION} s"
    fi
    if want 5; then
        case_pair 5 memory idle node-persist \
            "idle memory, $IDLE_SOCKETS authenticated sockets, settled ${SETTLE} s after connecting"
    fi
    if want 6; then
        case_pair 6 calls calls-sequential node-relay \
            "call set-up, $CALLS_SEQUENTIAL sequential calls (one caller)"
        case_pair 6 calls calls-concurrent node-relay \
            "call set-up, $CALLS calls from $CALLERS concurrent callers"
    fi
    if want 7; then
        case_pair 7 throughput closed-1to1 sioxide \
            "closed loop, $CLIENTS clients in 1:1 conversations, ${DURATION} s"
        case_pair 7 throughput closed-groups sioxide \
            "closed loop, $CLIENTS clients in groups of $GROUP_SIZE, ${DURATION} s"
        case_pair 7 memory idle sioxide \
            "idle memory, $IDLE_SOCKETS authenticated sockets, settled ${SETTLE} s after connecting"
    fi
    say "== summary (also in $SUMMARY) =="
    cat "$SUMMARY"
    exit 0
fi

if [ "$MODE" = recovery ]; then
    say "== recovery: Socket.IO with connection state recovery against without =="

    run_sio() {
        # run_sio SCENARIO SECS: Switchboard over /socket.io/ with SOCKETIO_RECOVERY_SECS=SECS;
        # the report is $RUN/SCENARIO-recovery-SECS.json.
        local name="$1" secs="$2" json="$RUN/$1-recovery-$2.json" log port pid
        log="$RUN/$name-recovery-$secs.log"
        scenario_args "$name"
        port="$(free_port)"
        DATABASE_URL="$SB_DB_URL" BIND="127.0.0.1:$port" MESSAGE_RATE_PER_MIN="$SB_MESSAGE_RATE" \
            FRAME_RATE_PER_SEC="$SB_FRAME_RATE" CALL_RATE_PER_HOUR="$SB_CALL_RATE" \
            CALL_BURST="$SB_CALL_BURST" RUST_LOG="$SB_LOG_LEVEL" SOCKETIO_RECOVERY_SECS="$secs" \
            "$BIN" serve >"$log" 2>&1 &
        pid=$!
        SB_PID="$pid"
        say "JWT_SECRET=\$JWT_SECRET DATABASE_URL=$SB_DB_URL BIND=127.0.0.1:$port" \
            "SOCKETIO_RECOVERY_SECS=$secs (rate limits as above) $BIN serve   (pid $pid, log $log)"
        wait_health Switchboard "http://127.0.0.1:$port/health" "$pid" "$log"
        run_bench "$name over /socket.io/, SOCKETIO_RECOVERY_SECS=$secs" "$BENCH_BIN" \
            --target socketio --own-socketio --url "http://127.0.0.1:$port" \
            --database-url "$SB_DB_URL" --jwt-secret "$JWT_SECRET" --server-pid "$pid" \
            --json-file "$json" "${SCENARIO[@]}" "${common[@]}"
        kill -0 "$pid" 2>/dev/null || die "Switchboard exited during the run (log: $log)"
        stop_pid "$pid"
        SB_PID=""
    }

    compare_recovery() {
        # compare_recovery SCENARIO TITLE: with recovery against without, from their reports.
        node - "$1" "$2" "$RUN" <<'EOF' | tee -a "$SUMMARY"
const fs = require('fs');
const path = require('path');
const [scenario, title, dir] = process.argv.slice(2);
const load = (secs) => JSON.parse(fs.readFileSync(path.join(dir, `${scenario}-recovery-${secs}.json`), 'utf8'));
const on = load(120);
const off = load(0);
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const ratio = (a, b) => (num(a) === null || num(b) === null || b === 0 ? 'n/a' : (a / b).toFixed(2) + 'x');
const fmt = (v, unit, d = 2) => (num(v) === null ? '-' : `${v.toFixed(d)}${unit}`);
const pad = (s, n) => String(s).padEnd(n);
const out = [`-- recovery: ${title} --`, pad('', 30) + pad('with', 16) + pad('without', 16) + 'ratio'];
const row = (label, a, b, unit, better, d) => {
  const r = better === 'higher' ? ratio(a, b) : ratio(b, a);
  const how = better === 'higher' ? 'with / without' : 'without / with';
  out.push(pad(label, 30) + pad(fmt(a, unit, d), 16) + pad(fmt(b, unit, d), 16) + `${r}  (${how})`);
};
if (scenario === 'idle') {
  row('RSS/connection, settled', on.rss_per_connection_settled_kib, off.rss_per_connection_settled_kib, ' KiB', 'lower', 1);
  row('RSS/connection, at connect', on.rss_per_connection_kib, off.rss_per_connection_kib, ' KiB', 'lower', 1);
} else {
  row('durable acks/s', on.acks_per_sec, off.acks_per_sec, '', 'higher', 1);
  row('delivery latency p50', on.latency_ms.p50, off.latency_ms.p50, ' ms', 'lower');
  row('delivery latency p99', on.latency_ms.p99, off.latency_ms.p99, ' ms', 'lower');
}
for (const [name, r] of [['with', on], ['without', off]]) {
  const errs = Object.entries(r.errors).map(([k, v]) => `${k}=${v}`).join(', ') || 'none';
  out.push(`  ${name}: ${r.connected} connected, ${r.deliveries}/${r.expected_deliveries} deliveries, ` +
    `${r.unanswered} unanswered, errors: ${errs}`);
}
out.push('');
console.log(out.join('\n'));
EOF
    }

    for name in closed-1to1 closed-groups idle; do
        run_sio "$name" 120
        run_sio "$name" 0
    done
    compare_recovery closed-1to1 "closed loop, $CLIENTS clients in 1:1 conversations, ${DURATION} s"
    compare_recovery closed-groups "closed loop, $CLIENTS clients in groups of $GROUP_SIZE, ${DURATION} s"
    compare_recovery idle "$IDLE_SOCKETS idle authenticated sockets, settled ${SETTLE} s after connecting"
    say "== summary (also in $SUMMARY) =="
    cat "$SUMMARY"
    exit 0
fi

if [ "$MODE" = import ]; then
    IMPORT_MESSAGES="${IMPORT_MESSAGES:-1000000}"
    IMPORT_USERS="${IMPORT_USERS:-10000}"
    IMPORT_CONVERSATIONS="${IMPORT_CONVERSATIONS:-50000}"
    IMPORT_DIR="${IMPORT_DIR:-$OUT/import-data-$IMPORT_MESSAGES}"
    command -v python3 >/dev/null 2>&1 || die "python3 was not found: it writes the export"
    if [ ! -f "$IMPORT_DIR/messages.json" ]; then
        say "== writing a seed 003 export of $IMPORT_MESSAGES messages into $IMPORT_DIR =="
        python3 "$REPO/scripts/import-data.py" --out "$IMPORT_DIR" --users "$IMPORT_USERS" \
            --conversations "$IMPORT_CONVERSATIONS" --messages "$IMPORT_MESSAGES" --seed 1
    fi
    for pass in first second; do
        say "== import, $pass run =="
        DATABASE_URL="$SB_DB_URL" JWT_SECRET="$JWT_SECRET" RUST_LOG="${SERVER_RUST_LOG:-warn}" \
            "$BIN" import --from seed003 --dir "$IMPORT_DIR" >"$RUN/import-$pass.json" \
            2>"$RUN/import-$pass.log" || die "import failed: see $RUN/import-$pass.log"
    done
    node - "$RUN" "$IMPORT_DIR" <<'EOF' | tee -a "$SUMMARY"
const fs = require('fs');
const path = require('path');
const [dir, data] = process.argv.slice(2);
const load = (f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
const bytes = fs.readdirSync(data).reduce((n, f) => n + fs.statSync(path.join(data, f)).size, 0);
const out = [`-- import: seed 003 export in ${data} (${(bytes / 1048576).toFixed(0)} MiB) --`];
for (const pass of ['first', 'second']) {
  const r = load(`import-${pass}.json`);
  const docs = Object.entries(r.collections).filter(([k]) => k !== 'receipts')
    .reduce((n, [, c]) => n + c.read, 0);
  out.push(`${pass} run: ${docs} documents in ${r.seconds.toFixed(1)} s, ${r.docs_per_sec.toFixed(0)} documents/s; ` +
    `skipped ${r.skipped}, repaired ${r.repaired}`);
  for (const [name, c] of Object.entries(r.collections)) {
    out.push(`  ${name.padEnd(14)} read ${c.read}, imported ${c.imported}, unchanged ${c.unchanged}, updated ${c.updated}`);
  }
}
out.push('');
console.log(out.join('\n'));
EOF
    say "== summary (also in $SUMMARY) =="
    cat "$SUMMARY"
    exit 0
fi

if [ "$MODE" = media ]; then
    say "== media: message delivery with uploads running against without =="
    MEDIA_UPLOADERS="${MEDIA_UPLOADERS:-8}"
    MEDIA_UPLOAD_BYTES="${MEDIA_UPLOAD_BYTES:-2097152}"
    MEDIA_IMAGE_BYTES="${MEDIA_IMAGE_BYTES:-1048576}"

    run_uploads() {
        # run_uploads KIND BYTES LABEL: case 1's open loop with MEDIA_UPLOADERS uploading KIND
        # files; the report is $RUN/open-groups-uploads-LABEL.json.
        local kind="$1" bytes="$2" label="$3" json="$RUN/open-groups-uploads-$3.json"
        scenario_args open-groups
        start_switchboard "open-groups-uploads-$label"
        run_bench "open-groups on Switchboard with $MEDIA_UPLOADERS $kind uploaders" "$BENCH_BIN" \
            --target ws --url "$SERVER_URL" --database-url "$SB_DB_URL" --jwt-secret "$JWT_SECRET" \
            --server-pid "$SB_PID" --json-file "$json" "${SCENARIO[@]}" "${common[@]}" \
            --uploaders "$MEDIA_UPLOADERS" --upload-kind "$kind" --upload-bytes "$bytes"
        kill -0 "$SB_PID" 2>/dev/null || die "Switchboard exited during the run"
        stop_pid "$SB_PID"
        SB_PID=""
        rm -rf "${RUN:?}/media"
    }

    run_switchboard open-groups
    run_uploads audio "$MEDIA_UPLOAD_BYTES" audio
    run_uploads image "$MEDIA_IMAGE_BYTES" image
    # The same audio uploads with the intake rate limit off.
    MEDIA_UPLOAD_BYTES_PER_SEC=0 run_uploads audio "$MEDIA_UPLOAD_BYTES" audio-unlimited
    node - "$RUN" "open loop, $CLIENTS clients in groups of $GROUP_SIZE at $RATE msg/s, ${DURATION} s" <<'EOF' | tee -a "$SUMMARY"
const fs = require('fs');
const path = require('path');
const [dir, title] = process.argv.slice(2);
const load = (f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
const base = load('open-groups-switchboard.json');
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const fmt = (v, unit, d = 2) => (num(v) === null ? '-' : `${v.toFixed(d)}${unit}`);
const pad = (s, n) => String(s).padEnd(n);
const out = [`-- media: ${title} --`];
const labels = {audio: 'audio (MEDIA_UPLOAD_BYTES_PER_SEC default)', image: 'image (default limits)',
  'audio-unlimited': 'audio, MEDIA_UPLOAD_BYTES_PER_SEC=0 (no intake limit)'};
for (const kind of ['audio', 'image', 'audio-unlimited']) {
  const r = load(`open-groups-uploads-${kind}.json`);
  const u = r.uploads;
  out.push(`${labels[kind]}: ${u.uploaders} uploaders x ${u.bytes_each} bytes: ${u.completed} stored, ` +
    `${u.failed} failed, ${u.mb_per_sec.toFixed(1)} MB/s; upload latency p50 ${fmt(u.latency_ms.p50, ' ms')}, ` +
    `p99 ${fmt(u.latency_ms.p99, ' ms')}`);
  out.push(pad('', 28) + pad('with uploads', 16) + pad('without', 16) + 'with / without');
  for (const [label, a, b] of [
    ['delivery latency p50', r.latency_ms.p50, base.latency_ms.p50],
    ['delivery latency p99', r.latency_ms.p99, base.latency_ms.p99],
    ['ack latency p99', r.ack_latency_ms.p99, base.ack_latency_ms.p99],
  ]) {
    const ratio = num(a) === null || num(b) === null || b === 0 ? 'n/a' : (a / b).toFixed(2) + 'x';
    out.push(pad(label, 28) + pad(fmt(a, ' ms'), 16) + pad(fmt(b, ' ms'), 16) + ratio);
  }
  out.push(`  with: ${r.deliveries}/${r.expected_deliveries} deliveries, ${r.unanswered} unanswered; ` +
    `without: ${base.deliveries}/${base.expected_deliveries}, ${base.unanswered} unanswered`);
}
out.push('');
console.log(out.join('\n'));
EOF
    say "== summary (also in $SUMMARY) =="
    cat "$SUMMARY"
    exit 0
fi

if [ "$MODE" = cluster ]; then
    say "== cluster: two nodes against one =="
    redis_start_private "$RUN/redis"
    PRIVATE_REDIS=1
    CLUSTER_PREFIX="sb-bench-$$"

    start_node() {
        # start_node NAME NODE_ID: a cluster node on the private Redis; sets NODE_PID, NODE_PORT.
        local log="$RUN/$1-$2.log" port
        port="$(free_port)"
        DATABASE_URL="$SB_DB_URL" BIND="127.0.0.1:$port" MESSAGE_RATE_PER_MIN="$SB_MESSAGE_RATE" \
            FRAME_RATE_PER_SEC="$SB_FRAME_RATE" CALL_RATE_PER_HOUR="$SB_CALL_RATE" \
            CALL_BURST="$SB_CALL_BURST" RUST_LOG="$SB_LOG_LEVEL" REDIS_URL="$REDIS_PRIVATE_URL" \
            REDIS_PREFIX="$CLUSTER_PREFIX-$1" NODE_ID="$2" \
            "$BIN" serve >"$log" 2>&1 &
        NODE_PID=$!
        say "JWT_SECRET=\$JWT_SECRET DATABASE_URL=$SB_DB_URL BIND=127.0.0.1:$port" \
            "REDIS_URL=$REDIS_PRIVATE_URL REDIS_PREFIX=$CLUSTER_PREFIX-$1 NODE_ID=$2" \
            "(rate limits as for one node) $BIN serve   (pid $NODE_PID, log $log)"
        wait_health "node $2" "http://127.0.0.1:$port/health" "$NODE_PID" "$log"
        NODE_PORT="$port"
    }

    checkpoint() {
        # A checkpoint before each run: PostgreSQL otherwise starts one whenever enough WAL has
        # been written (every minute or two under these loads), and a run that a checkpoint
        # starts in pays for its writes and the full-page images after it while the run next
        # to it may not. After this one, every run starts the same way, and the next one comes
        # when the run has written max_wal_size's share of WAL again (on a default server
        # under the closed loops here, after about a minute and a half).
        psql -w -X -q "$ADMIN_URL" -c CHECKPOINT >/dev/null 2>&1 ||
            say "warning: CHECKPOINT refused (not a superuser?); runs may meet checkpoints unevenly"
    }

    run_one_node() {
        # run_one_node SCENARIO JSON: one node without Redis, its report in JSON.
        checkpoint
        run_switchboard_into "$1" "$2" "$(basename "$2" .json)"
    }

    run_two_nodes() {
        # run_two_nodes SCENARIO JSON: two nodes sharing the private Redis, the report in JSON and
        # node a's cluster counters next to it (.metrics).
        local name="$1" json="$2" tag port_a port_b
        tag="$(basename "$json" .json)"
        scenario_args "$name"
        checkpoint
        start_node "$tag" a
        SB_PID="$NODE_PID"
        port_a="$NODE_PORT"
        start_node "$tag" b
        SB2_PID="$NODE_PID"
        port_b="$NODE_PORT"
        # Both nodes see each other before the clients connect.
        for _ in $(seq 1 100); do
            if curl -s "http://127.0.0.1:$port_a/health" | grep -q '"nodes":2' &&
                curl -s "http://127.0.0.1:$port_b/health" | grep -q '"nodes":2'; then
                break
            fi
            sleep 0.2
        done
        run_bench "$name on two nodes" "$BENCH_BIN" --target ws \
            --url "ws://127.0.0.1:$port_a/ws,ws://127.0.0.1:$port_b/ws" \
            --database-url "$SB_DB_URL" --jwt-secret "$JWT_SECRET" --server-pid "$SB_PID" \
            --json-file "$json" "${SCENARIO[@]}" "${common[@]}"
        for pid in "$SB_PID" "$SB2_PID"; do
            kill -0 "$pid" 2>/dev/null || die "a node exited during the run (logs: $RUN/$tag-*.log)"
        done
        curl -s "http://127.0.0.1:$port_a/metrics" | grep '^switchboard_cluster_' >"${json%.json}-a.metrics" || true
        stop_pid "$SB_PID"
        stop_pid "$SB2_PID"
        SB_PID=""
        SB2_PID=""
    }

    run_rounds() {
        # run_rounds SCENARIO [BEFORE]: CLUSTER_ROUNDS rounds of one node and two nodes back to
        # back, the order swapped every round so that a machine speeding up or slowing down
        # during the run favours neither; reports $RUN/SCENARIO-rN-one.json and -rN-two.json.
        # BEFORE, a function, is called with the round's number before each round.
        local name="$1" before="${2:-}" r
        for r in $(seq 1 "$CLUSTER_ROUNDS"); do
            say "-- $name: round $r of $CLUSTER_ROUNDS --"
            [ -z "$before" ] || "$before" "$r"
            if [ $((r % 2)) = 1 ]; then
                run_one_node "$name" "$RUN/$name-r$r-one.json"
                run_two_nodes "$name" "$RUN/$name-r$r-two.json"
            else
                run_two_nodes "$name" "$RUN/$name-r$r-two.json"
                run_one_node "$name" "$RUN/$name-r$r-one.json"
            fi
        done
    }

    compare_nodes() {
        # compare_nodes SCENARIO TITLE: one node against two, round by round (each ratio from a
        # pair of runs made back to back) and the median of those ratios, which is the figure
        # to quote; the medians also go to $RUN/SCENARIO-medians.json.
        node - "$1" "$2" "$RUN" "$CLUSTER_ROUNDS" <<'EOF' | tee -a "$SUMMARY"
const fs = require('fs');
const path = require('path');
const [scenario, title, dir, roundsArg] = process.argv.slice(2);
const rounds = Number(roundsArg);
const load = (r, who) => JSON.parse(fs.readFileSync(path.join(dir, `${scenario}-r${r}-${who}.json`), 'utf8'));
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const median = (xs) => {
  const v = xs.filter((x) => num(x) !== null).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};
const fmt = (v, unit, d = 2) => (num(v) === null ? '-' : `${v.toFixed(d)}${unit}`);
const fmtRatio = (v) => (num(v) === null ? 'n/a' : v.toFixed(2) + 'x');
const pad = (s, n) => String(s).padEnd(n);
const pairs = [];
for (let r = 1; r <= rounds; r++) pairs.push({ r, one: load(r, 'one'), two: load(r, 'two') });
const metrics = [
  ['durable acks/s', (x) => x.acks_per_sec, '', 'higher', 1],
  ['deliveries/s', (x) => x.deliveries_per_sec, '', 'higher', 1],
  ['delivery latency p50', (x) => x.latency_ms.p50, ' ms', 'lower', 2],
  ['delivery latency p99', (x) => x.latency_ms.p99, ' ms', 'lower', 2],
];
const medians = { one: {}, two: {}, ratio: {} };
const out = [`-- cluster: ${title}, ${rounds} round(s) --`,
  pad('', 24) + pad('round', 7) + pad('one node', 14) + pad('two nodes', 14) + 'ratio'];
for (const [label, get, unit, better, d] of metrics) {
  const how = better === 'higher' ? 'two / one' : 'one / two';
  const ratios = [];
  for (const { r, one, two } of pairs) {
    const a = num(get(one));
    const b = num(get(two));
    const below = better === 'higher' ? a : b;
    const ratio = a === null || b === null || below === 0 ? null : (better === 'higher' ? b / a : a / b);
    ratios.push(ratio);
    out.push(pad(r === 1 ? label : '', 24) + pad(r, 7) + pad(fmt(a, unit, d), 14) + pad(fmt(b, unit, d), 14) + fmtRatio(ratio));
  }
  medians.one[label] = median(pairs.map((p) => get(p.one)));
  medians.two[label] = median(pairs.map((p) => get(p.two)));
  medians.ratio[label] = median(ratios);
  out.push(pad('', 24) + pad('median', 7) + pad(fmt(medians.one[label], unit, d), 14) +
    pad(fmt(medians.two[label], unit, d), 14) +
    `${fmtRatio(medians.ratio[label])}  (${how}, median of the rounds' ratios)`);
}
fs.writeFileSync(path.join(dir, `${scenario}-medians.json`), JSON.stringify(medians, null, 2));
for (const { r, one, two } of pairs) {
  for (const [name, x] of [['one node', one], ['two nodes', two]]) {
    const errs = Object.entries(x.errors).map(([k, v]) => `${k}=${v}`).join(', ') || 'none';
    out.push(`  round ${r}, ${name}: ${x.connected} connected, ${x.deliveries}/${x.expected_deliveries} deliveries, ` +
      `${x.unanswered} unanswered, errors: ${errs}`);
  }
}
out.push('');
console.log(out.join('\n'));
EOF
    }

    run_rounds closed-1to1
    compare_nodes closed-1to1 "closed loop, $CLIENTS clients in 1:1 conversations, ${DURATION} s"
    run_rounds closed-groups
    compare_nodes closed-groups "closed loop, $CLIENTS clients in groups of $GROUP_SIZE, ${DURATION} s"
    OPEN_RATES=()
    # shellcheck disable=SC2317 # called by run_rounds, by name
    probe_open_rate() {
        # probe_open_rate ROUND: a one-node closed-loop 1:1 probe of CLUSTER_PROBE_SECS (report
        # $RUN/open-1to1-rN-probe.json); sets RATE to CLUSTER_LOAD_PCT % of its acks/s, per
        # client, for the round's open loops, and adds it to OPEN_RATES.
        local saved="$DURATION" probe="$RUN/open-1to1-r$1-probe.json" max
        DURATION="$CLUSTER_PROBE_SECS"
        run_one_node closed-1to1 "$probe"
        DURATION="$saved"
        max="$(node -e 'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).acks_per_sec)' "$probe")"
        RATE="$(node -e 'const [m, p, c] = process.argv.slice(1).map(Number);
            console.log((m * p / 100 / c).toPrecision(4));' "$max" "$CLUSTER_LOAD_PCT" "$CLIENTS")"
        OPEN_RATES+=("$RATE")
        say "round $1: open loop at $CLUSTER_LOAD_PCT % of the probe's $max acks/s: $RATE msg/s per client"
    }
    run_rounds open-1to1 probe_open_rate
    compare_nodes open-1to1 "open loop, $CLIENTS clients in 1:1 conversations at $CLUSTER_LOAD_PCT % of a one-node closed-loop probe made right before each round (${OPEN_RATES[*]} msg/s each; two nodes: every delivery crosses nodes)"
    say "== summary (also in $SUMMARY) =="
    cat "$SUMMARY"
    exit 0
fi

# --- soak ------------------------------------------------------------------------------------
say "== soak: $SOAK_MINUTES min, $CLIENTS clients in groups of $GROUP_SIZE =="
if [ -n "$RATE_SET" ]; then
    SOAK_RATE="$RATE_SET"
    say "rate: RATE=$SOAK_RATE msg/s per client"
else
    if [ -z "$SOAK_MAX_ACKS_PER_SEC" ]; then
        say "no RATE and no SOAK_MAX_ACKS_PER_SEC: measuring the maximum with a" \
            "${SOAK_PROBE_SECS} s closed-loop probe"
        DURATION="$SOAK_PROBE_SECS"
        run_switchboard closed-groups
        SOAK_MAX_ACKS_PER_SEC="$(node -e \
            'console.log(JSON.parse(require("fs").readFileSync(process.argv[1])).acks_per_sec)' \
            "$RUN/closed-groups-switchboard.json")"
    fi
    SOAK_RATE="$(node -e 'const [m, p, c] = process.argv.slice(1).map(Number);
        if (!(m > 0)) { console.error("the maximum must be a positive number"); process.exit(1); }
        console.log((m * p / 100 / c).toPrecision(4));' \
        "$SOAK_MAX_ACKS_PER_SEC" "$SOAK_LOAD_PCT" "$CLIENTS")" ||
        die "SOAK_MAX_ACKS_PER_SEC must be a positive number, not '$SOAK_MAX_ACKS_PER_SEC'"
    say "rate: $SOAK_LOAD_PCT % of $SOAK_MAX_ACKS_PER_SEC acks/s over $CLIENTS clients =" \
        "$SOAK_RATE msg/s per client"
fi
SOAK_COMPARE_SECS="$(awk -v m="$SOAK_COMPARE_MINUTES" 'BEGIN { if (m + 0 > 0) print m * 60 }')"
[ -n "$SOAK_COMPARE_SECS" ] || die "SOAK_COMPARE_MINUTES must be a positive number"
SOAK_JSON="$RUN/soak-switchboard.json"
start_switchboard soak
run_bench "soak on Switchboard (one line every ${SOAK_REPORT_SECS} s)" "$BENCH_BIN" --target ws \
    --url "$SERVER_URL" --database-url "$SB_DB_URL" --jwt-secret "$JWT_SECRET" \
    --server-pid "$SB_PID" --json-file "$SOAK_JSON" \
    --clients "$CLIENTS" --conversations "$GROUPS_OF" --rate "$SOAK_RATE" \
    --duration $((SOAK_MINUTES * 60)) --seed-messages "$SOAK_SEED_MESSAGES" \
    --report-every "$SOAK_REPORT_SECS" --compare-window "$SOAK_COMPARE_SECS" \
    "${common[@]}"
kill -0 "$SB_PID" 2>/dev/null || die "Switchboard exited during the soak (log: $RUN/soak-switchboard.log)"
stop_pid "$SB_PID"
SB_PID=""
say ""
node - "$SOAK_JSON" <<'EOF' | tee -a "$SUMMARY"
const r = JSON.parse(require('fs').readFileSync(process.argv[2], 'utf8'));
const ht = r.head_tail || {};
const f = (v, d = 2) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(d) : '-');
const mins = (ht.window_secs || 0) / 60;
console.log(`-- soak: ${r.duration_secs / 60} min, ${r.clients} clients, ${r.rate} msg/s each, ` +
  `${r.seeded_messages} messages seeded first --`);
console.log(`durable acks ${r.acks} (${f(r.acks_per_sec, 1)}/s), ack p50 ${f(r.ack_latency_ms.p50)} ms, ` +
  `p99 ${f(r.ack_latency_ms.p99)} ms; ${r.unanswered} unanswered, ${r.error_total} errors`);
console.log(`ack p99: first ${f(mins, 1)} min ${f(ht.head_ack_p99_ms)} ms, last ${f(mins, 1)} min ` +
  `${f(ht.tail_ack_p99_ms)} ms: last / first = ${f(ht.ack_p99_tail_over_head)}` +
  (ht.overlap ? ' (the run is shorter than two windows: they overlap)' : ''));
console.log(`server RSS: ${f((ht.rss_first_kib || 0) / 1024, 1)} MiB after the first report, ` +
  `${f((ht.rss_last_kib || 0) / 1024, 1)} MiB after the last: growth ${f(ht.rss_growth_pct, 1)} %`);
console.log(`report: ${process.argv[2]}`);
EOF

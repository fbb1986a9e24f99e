#!/usr/bin/env bash
# Runs one load scenario against Switchboard's /ws and against the reference Socket.IO peer
# (../shared/bench/peer-socketio, Node.js, persisting every message) and prints both reports and
# their ratios.
#
#   scripts/bench.sh
#
# Scenario (environment, defaults in brackets):
#   CLIENTS [1000]          active senders
#   CONVERSATIONS [100]     conversations; client i is in conversation i % CONVERSATIONS
#   IDLE [0]                extra connected clients that send nothing
#   DURATION [60]           seconds of sending
#   RATE [1]                messages per second per active client (0: as fast as acks allow)
#   INFLIGHT                most unanswered sends per client (bench default)
#   MESSAGE_BYTES [64]      message length
#   CONNECT_CONCURRENCY [200]
#   BENCH_ARGS              more `switchboard bench` options, passed to both runs
#   PEER_DIR [../shared/bench/peer-socketio]
#
# PostgreSQL: DATABASE_URL (any database on the server; used to create and drop the bench
# databases), else postgres://postgres@127.0.0.1:5432/postgres when it answers, else a private
# cluster in target/bench/pgdata (stopped at exit). Two databases are created per run,
# sb_bench_<pid> and peer_bench_<pid>, and dropped at exit.
#
# Switchboard gets MESSAGE_RATE_PER_MIN=1000000 and FRAME_RATE_PER_SEC=100000 unless set, so its
# rate limits stay out of the way; every other setting (DB_POOL_SIZE, ...) passes through from
# the environment. The peer gets POOL when set. JWT_SECRET is generated unless set.
# Reports and logs are kept in target/bench/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/lib/pg.sh
source "$REPO/scripts/lib/pg.sh"

CLIENTS="${CLIENTS:-1000}"
CONVERSATIONS="${CONVERSATIONS:-100}"
IDLE="${IDLE:-0}"
DURATION="${DURATION:-60}"
RATE="${RATE:-1}"
MESSAGE_BYTES="${MESSAGE_BYTES:-64}"
CONNECT_CONCURRENCY="${CONNECT_CONCURRENCY:-200}"
PEER_DIR="${PEER_DIR:-$REPO/../shared/bench/peer-socketio}"
OUT="$REPO/target/bench"
BIN="$REPO/target/release/switchboard"

die() {
    printf 'bench: %s\n' "$*" >&2
    exit 1
}
say() { printf '%s\n' "$*"; }

case "${1:-}" in
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
        exit 0
        ;;
    "") ;;
    *) die "unknown argument $1 (configure with environment variables; see --help)" ;;
esac

command -v cargo >/dev/null 2>&1 || die "cargo was not found: install Rust (https://rustup.rs)"
command -v node >/dev/null 2>&1 || die "node was not found: the reference peer needs Node.js 18+"
command -v npm >/dev/null 2>&1 || die "npm was not found: the reference peer needs it"
command -v psql >/dev/null 2>&1 || die "psql was not found: install the PostgreSQL client"
command -v curl >/dev/null 2>&1 || die "curl was not found"
[ -f "$PEER_DIR/server.js" ] || die "no reference peer in $PEER_DIR (set PEER_DIR)"

# --- open files ------------------------------------------------------------------------------
sockets=$((CLIENTS + IDLE))
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
PEER_PID=""
ADMIN_URL=""
SB_DB="sb_bench_$$"
PEER_DB="peer_bench_$$"
DBS_CREATED=""
PRIVATE_PG=""

stop_pid() {
    local pid="$1" i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    stop_pid "$SB_PID"
    stop_pid "$PEER_PID"
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
    local port=$((20000 + RANDOM % 20000)) i
    for i in $(seq 1 200); do
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
    local i
    for i in $(seq 1 300); do
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

mkdir -p "$OUT"

# --- build -----------------------------------------------------------------------------------
say "== build =="
ensure_libpq_dev
cargo build --release

# --- PostgreSQL ------------------------------------------------------------------------------
say "== database =="
if [ -n "${DATABASE_URL:-}" ]; then
    ADMIN_URL="$DATABASE_URL"
    say "using DATABASE_URL from the environment"
elif pg_isready -q -h 127.0.0.1 -p 5432 -t 2 2>/dev/null &&
    psql -w -X -q -tA postgres://postgres@127.0.0.1:5432/postgres -c 'SELECT 1' >/dev/null 2>&1; then
    ADMIN_URL="postgres://postgres@127.0.0.1:5432/postgres"
    say "using the PostgreSQL service at 127.0.0.1:5432"
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
say "databases: $SB_DB, $PEER_DB"

if [ -z "${JWT_SECRET:-}" ]; then
    JWT_SECRET="$(head -c 48 /dev/urandom | base64 | tr -d '\n')"
fi
export JWT_SECRET

# --- servers ---------------------------------------------------------------------------------
say "== start Switchboard =="
SB_PORT="$(free_port)"
SB_MESSAGE_RATE="${MESSAGE_RATE_PER_MIN:-1000000}"
SB_FRAME_RATE="${FRAME_RATE_PER_SEC:-100000}"
SB_LOG_LEVEL="${SERVER_RUST_LOG:-warn}"
DATABASE_URL="$SB_DB_URL" BIND="127.0.0.1:$SB_PORT" MESSAGE_RATE_PER_MIN="$SB_MESSAGE_RATE" \
    FRAME_RATE_PER_SEC="$SB_FRAME_RATE" RUST_LOG="$SB_LOG_LEVEL" \
    "$BIN" serve >"$OUT/switchboard.log" 2>&1 &
SB_PID=$!
say "JWT_SECRET=\$JWT_SECRET DATABASE_URL=$SB_DB_URL BIND=127.0.0.1:$SB_PORT" \
    "MESSAGE_RATE_PER_MIN=$SB_MESSAGE_RATE FRAME_RATE_PER_SEC=$SB_FRAME_RATE" \
    "RUST_LOG=$SB_LOG_LEVEL $BIN serve   (pid $SB_PID, log $OUT/switchboard.log)"
wait_health Switchboard "http://127.0.0.1:$SB_PORT/health" "$SB_PID" "$OUT/switchboard.log"

say "== start the reference peer =="
PEER_COPY="$OUT/peer-socketio"
rm -rf "$PEER_COPY"
mkdir -p "$PEER_COPY"
cp -R "$PEER_DIR/." "$PEER_COPY/"
chmod -R u+w "$PEER_COPY"
rm -rf "$PEER_COPY/node_modules"
if [ -f "$PEER_COPY/package-lock.json" ]; then
    (cd "$PEER_COPY" && npm ci --no-audit --no-fund --loglevel=error)
else
    (cd "$PEER_COPY" && npm install --no-audit --no-fund --loglevel=error)
fi
PEER_PORT="$(free_port)"
# node resolves require() from the script's directory, so no cd is needed.
DATABASE_URL="$PEER_DB_URL" PORT="$PEER_PORT" node "$PEER_COPY/server.js" >"$OUT/peer.log" 2>&1 &
PEER_PID=$!
say "JWT_SECRET=\$JWT_SECRET DATABASE_URL=$PEER_DB_URL PORT=$PEER_PORT${POOL:+ POOL=$POOL}" \
    "node $PEER_COPY/server.js   (pid $PEER_PID, log $OUT/peer.log)"
wait_health peer "http://127.0.0.1:$PEER_PORT/health" "$PEER_PID" "$OUT/peer.log"

# --- runs ------------------------------------------------------------------------------------
common=(--clients "$CLIENTS" --conversations "$CONVERSATIONS" --idle "$IDLE"
    --duration "$DURATION" --rate "$RATE" --message-bytes "$MESSAGE_BYTES"
    --connect-concurrency "$CONNECT_CONCURRENCY")
[ -n "${INFLIGHT:-}" ] && common+=(--inflight "$INFLIGHT")
# shellcheck disable=SC2206 # BENCH_ARGS is a list of words on purpose
[ -n "${BENCH_ARGS:-}" ] && common+=(${BENCH_ARGS})

run_bench() {
    # run_bench NAME ARGS...: prints the command (secret elided), runs it, keeps its JSON.
    local name="$1"
    shift
    local shown=() skip=""
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
    say "== bench: $name =="
    say "ulimit -n $(ulimit -n); ${shown[*]}"
    "$@"
}

run_bench switchboard "$BIN" bench --target ws --url "ws://127.0.0.1:$SB_PORT/ws" \
    --database-url "$SB_DB_URL" --jwt-secret "$JWT_SECRET" --server-pid "$SB_PID" \
    --json-file "$OUT/switchboard.json" "${common[@]}"
kill -0 "$SB_PID" 2>/dev/null || die "Switchboard exited during the run (log: $OUT/switchboard.log)"

run_bench peer "$BIN" bench --target socketio --url "http://127.0.0.1:$PEER_PORT" \
    --jwt-secret "$JWT_SECRET" --server-pid "$PEER_PID" \
    --json-file "$OUT/peer.json" "${common[@]}"
kill -0 "$PEER_PID" 2>/dev/null || die "the peer exited during the run (log: $OUT/peer.log)"

# --- comparison ------------------------------------------------------------------------------
say ""
say "== comparison (reports: $OUT/switchboard.json, $OUT/peer.json) =="
node - "$OUT/switchboard.json" "$OUT/peer.json" <<'EOF'
const fs = require('fs');
const [sb, peer] = process.argv.slice(2).map((f) => JSON.parse(fs.readFileSync(f, 'utf8')));
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const ratio = (a, b) => (num(a) !== null && num(b) !== null && b !== 0 ? (a / b).toFixed(2) + 'x' : 'n/a');
const fmt = (v, unit) => (num(v) === null ? '-' : `${v.toFixed(2)}${unit}`);
const rows = [
  ['durable acks/s', sb.acks_per_sec, peer.acks_per_sec, '', ratio(sb.acks_per_sec, peer.acks_per_sec), 'Switchboard / peer'],
  ['latency p50', sb.latency_ms.p50, peer.latency_ms.p50, ' ms', ratio(peer.latency_ms.p50, sb.latency_ms.p50), 'peer / Switchboard'],
  ['latency p99', sb.latency_ms.p99, peer.latency_ms.p99, ' ms', ratio(peer.latency_ms.p99, sb.latency_ms.p99), 'peer / Switchboard'],
  ['latency max', sb.latency_ms.max, peer.latency_ms.max, ' ms', ratio(peer.latency_ms.max, sb.latency_ms.max), 'peer / Switchboard'],
  ['RSS per connection', sb.rss_per_connection_kib, peer.rss_per_connection_kib, ' KiB',
    ratio(peer.rss_per_connection_kib, sb.rss_per_connection_kib), 'peer / Switchboard'],
];
const pad = (s, n) => String(s).padEnd(n);
console.log(pad('', 20) + pad('Switchboard', 16) + pad('peer', 16) + 'ratio');
for (const [label, a, b, unit, r, how] of rows) {
  console.log(pad(label, 20) + pad(fmt(a, unit), 16) + pad(fmt(b, unit), 16) + `${r}  (${how})`);
}
for (const [name, r] of [['Switchboard', sb], ['peer', peer]]) {
  const errs = Object.entries(r.errors).map(([k, v]) => `${k}=${v}`).join(', ') || 'none';
  console.log(`${name}: ${r.connected} connected, ${r.connect_failures} connect failures, ` +
    `${r.deliveries}/${r.expected_deliveries} deliveries, errors: ${errs}`);
}
EOF

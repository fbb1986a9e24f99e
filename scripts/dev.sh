#!/usr/bin/env bash
# Runs Switchboard on this machine for development.
#
#   scripts/dev.sh         build (release), provide PostgreSQL, migrate, create a first admin,
#                          then serve on BIND (default http://127.0.0.1:8080) until Ctrl-C
#   scripts/dev.sh stop    stop the private PostgreSQL cluster started by a previous run
#
# Without DATABASE_URL a private PostgreSQL cluster is created in .dev/pgdata (127.0.0.1, first
# free port from 55432) and a `switchboard` database in it; it keeps running after the server
# stops so the next start is quick. Without JWT_SECRET a random secret is generated once and kept
# in .dev/jwt_secret. SWITCHBOARD_DEV defaults to 1 and ALLOWED_ORIGINS to the usual local web
# origins. Every other setting comes from the environment (see .env.example).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# shellcheck source=scripts/lib/pg.sh
source "$REPO/scripts/lib/pg.sh"

DEV_DIR="$REPO/.dev"
PGDATA_DIR="$DEV_DIR/pgdata"
DB_NAME="switchboard"
BIN="$REPO/target/release/switchboard"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

json_field() {
    # json_field JSON KEY: the string value of KEY in a flat JSON object.
    printf '%s\n' "$1" | sed -n "s/.*\"$2\":\"\\([^\"]*\\)\".*/\\1/p"
}

case "${1:-serve}" in
    serve) ;;
    stop)
        pg_stop_private "$PGDATA_DIR"
        exit 0
        ;;
    -h | --help | help)
        usage
        exit 0
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac

command -v cargo >/dev/null 2>&1 || pg__die "cargo was not found: install Rust (https://rustup.rs)"
mkdir -p "$DEV_DIR"

echo "== build =="
ensure_libpq_dev
cargo build --release

echo "== database =="
private_cluster=""
if [ -z "${DATABASE_URL:-}" ]; then
    pg_start_private "$PGDATA_DIR"
    private_cluster=1
    exists="$(psql -w -X -q -tA "$PG_PRIVATE_URL" \
        -c "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")"
    if [ "$exists" != 1 ]; then
        echo "creating database $DB_NAME"
        psql -w -X -q -v ON_ERROR_STOP=1 "$PG_PRIVATE_URL" -c "CREATE DATABASE \"$DB_NAME\""
    fi
    DATABASE_URL="$(pg_url_with_db "$PG_PRIVATE_URL" "$DB_NAME")"
    export DATABASE_URL
    echo "DATABASE_URL=$DATABASE_URL"
else
    echo "using DATABASE_URL from the environment"
fi

if [ -z "${JWT_SECRET:-}" ]; then
    secret_file="$DEV_DIR/jwt_secret"
    if [ ! -s "$secret_file" ]; then
        (
            umask 077
            head -c 48 /dev/urandom | base64 | tr -d '\n' >"$secret_file"
        )
        echo "generated a JWT secret in $secret_file"
    fi
    chmod 600 "$secret_file"
    JWT_SECRET="$(cat "$secret_file")"
    export JWT_SECRET
fi
export SWITCHBOARD_DEV="${SWITCHBOARD_DEV:-1}"
export ALLOWED_ORIGINS="${ALLOWED_ORIGINS:-http://localhost:3000,http://127.0.0.1:3000}"

echo "== migrate =="
"$BIN" migrate

echo "== admin =="
admin_json="$("$BIN" user ensure-admin)"
case "$admin_json" in
    *'"created":true'*)
        cat <<EOF

  First admin account created. Its password is shown only this once; keep it now.
    e-mail:   $(json_field "$admin_json" email)
    password: $(json_field "$admin_json" password)
  (Another admin can be added any time with:
    target/release/switchboard user add --name NAME --email E --password PW --role admin)

EOF
        ;;
    *'"created":false'*)
        echo "an admin account exists already"
        ;;
    *)
        pg__die "unexpected output from 'switchboard user ensure-admin': $admin_json"
        ;;
esac

echo "== serve =="
echo "Switchboard: http://${BIND:-127.0.0.1:8080}  (check: curl http://${BIND:-127.0.0.1:8080}/health)"
echo "Ctrl-C stops the server."
if [ -n "$private_cluster" ]; then
    echo "PostgreSQL keeps running on 127.0.0.1:$PG_PRIVATE_PORT for the next start; stop it with: scripts/dev.sh stop"
fi
exec "$BIN" serve

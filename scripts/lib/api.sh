# shellcheck shell=bash
# The `api` step of scripts/test.sh: the OpenAPI document served at /api/openapi.json is
# validated with openapi-spec-validator, then schemathesis fuzzes every REST operation twice, side
# by side: with a user's access token and with an admin's, each against a live `switchboard
# serve` and a database of its own. It fails on any 5xx answer, on any answer the document does
# not allow (status, content type, body schema) and on a token that stopped working mid-run.
# Both tools come from PyPI into a venv in the tools directory (scripts/lib/pg.sh tools_dir).
#
# Needs: REPO, TEST_DATABASE_URL, psql_admin and pg_url_with_db (scripts/lib/pg.sh).
# Knobs: API_MAX_EXAMPLES (default 25 per operation), API_MAX_TIME (seconds per run, default 150).

API_SCHEMATHESIS_VERSION="4.32.5"
API_SPEC_VALIDATOR_VERSION="0.9.0"

api_cleanup() {
    local pid db
    for pid in "${API_RUN_PIDS[@]}" "${API_SERVER_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${API_SERVER_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    for db in "${API_DBS[@]}"; do
        psql_admin "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" || true
    done
    if [ -n "${API_TMP:-}" ]; then
        rm -rf -- "$API_TMP"
    fi
}

api_venv() {
    API_VENV="$(tools_dir)/schemathesis"
    if [ ! -x "$API_VENV/bin/python" ]; then
        command -v python3 >/dev/null 2>&1 || pg__apt_install python3 python3-venv
        python3 -m venv "$API_VENV" 2>/dev/null || {
            pg__apt_install python3-venv
            python3 -m venv "$API_VENV"
        }
    fi
    if ! "$API_VENV/bin/python" -c "import schemathesis, openapi_spec_validator" 2>/dev/null ||
        [ "$("$API_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))')" != "$API_SCHEMATHESIS_VERSION" ]; then
        "$API_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "schemathesis==$API_SCHEMATHESIS_VERSION" \
            "openapi-spec-validator==$API_SPEC_VALIDATOR_VERSION"
    fi
}

# api_json FIELD: reads one field of a JSON object on stdin.
api_json() {
    "$API_VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# api_server WHO: a database of its own (migrated; an admin, a user and a third account) and a
# `switchboard serve` on a free port for one schemathesis run, so that the admin's run (which bans,
# logs out and edits users) cannot revoke the user's token in the middle of the user's run. Sets
# API_BASE and API_TOKEN (WHO's access token).
api_server() {
    local who="$1" bin="$REPO/target/debug/switchboard" db="sb_api_check_$$_$1" port admin user tries=0
    API_DBS+=("$db")
    psql_admin "DROP DATABASE IF EXISTS \"$db\""
    psql_admin "CREATE DATABASE \"$db\""
    local env=(env DATABASE_URL="$(pg_url_with_db "$TEST_DATABASE_URL" "$db")")
    "${env[@]}" "$bin" migrate >/dev/null
    admin="$("${env[@]}" "$bin" user add --name "API Admin" --email admin@example.com \
        --password "admin-password-1" --role admin | api_json id)"
    user="$("${env[@]}" "$bin" user add --name "API User" --email user@example.com \
        --password "user-password-1" | api_json id)"
    "${env[@]}" "$bin" user add --name "Someone Else" --email other@example.com >/dev/null
    if [ "$who" = admin ]; then user="$admin"; fi
    API_TOKEN="$("${env[@]}" "$bin" token --user "$user" --ttl 7200 | api_json token)"

    port="$("$API_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    API_BASE="http://127.0.0.1:$port"
    "${env[@]}" BIND="127.0.0.1:$port" "$bin" serve >"$API_TMP/server-$who.log" 2>&1 &
    API_SERVER_PIDS+=("$!")
    until curl -fsS "$API_BASE/ping" >/dev/null 2>&1 || [ "$tries" -ge 100 ]; do
        tries=$((tries + 1))
        sleep 0.1
    done
    curl -fsS "$API_BASE/ping" >/dev/null || {
        cat "$API_TMP/server-$who.log" >&2
        return 1
    }
}

step_api() {
    API_TMP="$(mktemp -d "${TMPDIR:-/tmp}/switchboard-api.XXXXXX")"
    API_DBS=()
    API_SERVER_PIDS=()
    API_RUN_PIDS=()
    trap api_cleanup EXIT
    api_venv
    build_all
    # The servers' settings: a throwaway secret, generous limits so that rate limiting does not
    # hide the other answers (429 is still documented and allowed).
    export JWT_SECRET="api-check-secret-api-check-secret-0123456789"
    export MESSAGE_RATE_PER_MIN=1000000 MESSAGE_BURST=100000 CALL_RATE_PER_HOUR=100000 CALL_BURST=10000
    export OTP_SENDER=log OTP_RESEND_COOLDOWN_SECS=0 LOG_FORMAT=json RUST_LOG=warn
    export TURN_URLS="turn:127.0.0.1:3478?transport=udp" TURN_SECRET="api-check-turn-secret"
    local spec who rc=0 log
    local -A base=() token=()
    for who in user admin; do
        api_server "$who"
        base[$who]="$API_BASE"
        token[$who]="$API_TOKEN"
    done

    spec="$API_TMP/openapi.json"
    curl -fsS "${base[user]}/api/openapi.json" -o "$spec"
    echo "openapi-spec-validator $API_SPEC_VALIDATOR_VERSION"
    "$API_VENV/bin/python" - "$spec" <<'PY'
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename
spec, _ = read_from_filename(sys.argv[1])
validate(spec)
ops = sum(1 for item in spec["paths"].values() for m in item if m in ("get", "post", "put", "patch", "delete"))
print(f"valid OpenAPI {spec['openapi']}: {len(spec['paths'])} paths, {ops} operations")
PY

    # The user's and the admin's runs go side by side, each against its own server and with its
    # own output file (printed when both are done): each run is bounded by API_MAX_TIME, so two
    # in a row would take twice that, while one run leaves a core of the machine mostly idle.
    local checks="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"
    for who in user admin; do
        mkdir -p "$API_TMP/$who"
        (cd "$API_TMP/$who" && "$API_VENV/bin/schemathesis" run "$spec" --url "${base[$who]}" \
            -H "Authorization: Bearer ${token[$who]}" \
            --checks "$checks" \
            --phases examples,coverage,fuzzing \
            --max-examples "${API_MAX_EXAMPLES:-25}" \
            --max-time "${API_MAX_TIME:-150}" \
            --workers 1 \
            --seed 20261121 \
            --suppress-health-check all \
            --no-color >"$API_TMP/$who.log" 2>&1) &
        API_RUN_PIDS+=("$!")
    done
    local i=0
    for who in user admin; do
        if ! wait "${API_RUN_PIDS[$i]}"; then rc=1; fi
        i=$((i + 1))
        echo "schemathesis $API_SCHEMATHESIS_VERSION as the $who"
        cat "$API_TMP/$who.log"
        # The user's token must have lasted the whole run: an answer of 401 to it afterwards
        # would mean most of the run tested nothing but the refusal.
        if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer ${token[$who]}" \
            "${base[$who]}/users/me")" != 200 ]; then
            echo "the $who's token no longer works after the run" >&2
            rc=1
        fi
    done
    # Errors the servers logged themselves (actix-http's notes about unparsable requests, which
    # it answers 400, are not ours).
    for log in "$API_TMP"/server-*.log; do
        if grep '"level":"ERROR"' "$log" | grep -vq '"target":"actix_http'; then
            echo "the server logged errors during the run ($(basename "$log")):" >&2
            grep '"level":"ERROR"' "$log" | grep -v '"target":"actix_http' | head -20 >&2
            rc=1
        fi
    done
    return "$rc"
}

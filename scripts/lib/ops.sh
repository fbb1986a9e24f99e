# shellcheck shell=bash
# Checks of the deployment files (scripts/systemd, scripts/coturn, scripts/nginx,
# scripts/install.sh) for the `ops` step of scripts/test.sh.
#
# Source it after scripts/lib/pg.sh with REPO set. Every check takes OPS_TMP (a scratch
# directory) and OPS_BIN (a built switchboard binary) from the environment, prints what it runs
# and its output, and returns non-zero on any problem.

OPS_EXPOSURE_MAX=20 # systemd-analyze security: highest accepted exposure level, times ten

ops__fail() {
    printf 'FAILED: %s\n' "$*" >&2
    return 1
}

# ops_need TOOL PACKAGE: installs the Debian package PACKAGE when TOOL is not on PATH.
ops_need() {
    command -v "$1" >/dev/null 2>&1 || pg__apt_install "$2"
    command -v "$1" >/dev/null 2>&1 || pg__die "$1 is still missing after installing $2"
}

# ops__free_port: prints a TCP port on 127.0.0.1 nothing listens on.
ops__free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 30000))
        if ! pg__port_in_use "$port"; then
            printf '%s\n' "$port"
            return 0
        fi
    done
    ops__fail "no free TCP port found"
}

# ops__wait_for FILE PATTERN SECS: waits until FILE has a line matching PATTERN.
ops__wait_for() {
    local i
    for i in $(seq 1 "$(($3 * 10))"); do
        grep -qE -- "$2" "$1" 2>/dev/null && return 0
        [ "$i" -gt 0 ] && sleep 0.1
    done
    return 1
}

# ops__analyze_verify LABEL CMD...: runs a systemd-analyze verify command; any output (warnings
# about unknown keys or bad values are printed, yet exit with status 0) counts as a failure.
ops__analyze_verify() {
    local label="$1" out rc=0
    shift
    echo "\$ $*"
    out="$("$@" 2>&1)" || rc=$?
    if [ -n "$out" ]; then
        printf '%s\n' "$out"
    fi
    if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
        ops__fail "systemd-analyze verify found problems in $label (exit status $rc)"
        return 1
    fi
    echo "(no warnings) $label verified"
}

# ops_check_shellcheck: shellcheck on every script.
ops_check_shellcheck() {
    ops_need shellcheck shellcheck
    echo "\$ shellcheck scripts/*.sh scripts/lib/*.sh ($(shellcheck --version | sed -n 's/^version: //p'))"
    (cd "$REPO" && shellcheck scripts/*.sh scripts/lib/*.sh) || {
        ops__fail "shellcheck"
        return 1
    }
    echo "shellcheck: no findings"
}

# ops_check_units: systemd-analyze verify on the switchboard unit and on the cluster template
# (each with its ExecStart pointed at a copy of OPS_BIN; the template through an instance,
# switchboard@1.service, a link to it) and on Debian's coturn.service with our drop-in, plus the
# exposure level of both switchboard units.
ops_check_units() {
    ops_need systemd-analyze systemd
    local dir="$OPS_TMP/units" name unit target rc=0 out
    mkdir -p "$dir"
    cp "$OPS_BIN" "$dir/switchboard"
    for name in switchboard.service switchboard@.service; do
        unit="$dir/$name"
        sed "s|^ExecStart=/usr/local/bin/switchboard serve\$|ExecStart=$dir/switchboard serve|" \
            "$REPO/scripts/systemd/$name" >"$unit"
        grep -qx "ExecStart=$dir/switchboard serve" "$unit" ||
            ops__fail "scripts/systemd/$name has no 'ExecStart=/usr/local/bin/switchboard serve'" ||
            return 1
        target="$unit"
        case "$name" in
            *@.service)
                target="$dir/${name%@.service}@1.service"
                ln -sfn "$name" "$target"
                ;;
        esac
        ops__analyze_verify "${target##*/}" systemd-analyze verify "$target" || return 1

        echo "\$ systemd-analyze security --offline=true --threshold=$OPS_EXPOSURE_MAX ${target##*/}"
        rc=0
        out="$(systemd-analyze security --offline=true --threshold="$OPS_EXPOSURE_MAX" "$target" 2>&1)" || rc=$?
        printf '%s\n' "$out" | grep -E '✗|Overall exposure' || true
        [ "$rc" -eq 0 ] || {
            ops__fail "${target##*/} exposure is above $OPS_EXPOSURE_MAX/10"
            return 1
        }
    done

    # coturn: Debian's unit with our drop-in next to it, found through SYSTEMD_UNIT_PATH. A
    # canary drop-in with an unknown key proves the drop-in directory is read.
    local base="" cdir="$OPS_TMP/coturn-units" canary expected
    for base in /lib/systemd/system/coturn.service /usr/lib/systemd/system/coturn.service ""; do
        [ -z "$base" ] || [ -f "$base" ] && break
    done
    if [ -z "$base" ]; then
        pg__apt_install coturn
        base=/lib/systemd/system/coturn.service
    fi
    mkdir -p "$cdir/coturn.service.d"
    cp "$base" "$cdir/coturn.service"
    cp "$REPO/scripts/systemd/coturn.service.d/switchboard.conf" "$cdir/coturn.service.d/"
    canary="$cdir/coturn.service.d/zz-canary.conf"
    printf '[Service]\nSwitchboardCanary=1\n' >"$canary"
    echo "\$ SYSTEMD_UNIT_PATH=$cdir: systemd-analyze verify coturn.service (+ coturn.service.d/switchboard.conf)"
    out="$(SYSTEMD_UNIT_PATH="$cdir:" systemd-analyze verify "$cdir/coturn.service" 2>&1)" || rc=$?
    expected="$canary:2: Unknown key 'SwitchboardCanary' in section [Service], ignoring."
    if ! grep -qxF "$expected" <<<"$out"; then
        printf '%s\n' "$out"
        ops__fail "the coturn drop-in directory was not read (no warning about the canary drop-in)"
        return 1
    fi
    out="$(grep -vxF "$expected" <<<"$out" || true)"
    if [ -n "$out" ] || [ "$rc" -ne 0 ]; then
        printf '%s\n' "$out"
        ops__fail "systemd-analyze verify found problems in coturn.service with the drop-in"
        return 1
    fi
    echo "(no warnings) coturn.service + switchboard.conf drop-in verified"
}

# ops_check_install: scripts/install.sh --prefix into a scratch root; checks the layout, the
# modes, that a second run keeps an edited env file and nginx site, and that the binary runs.
ops_check_install() {
    local root="$OPS_TMP/root" f mode want
    echo "\$ scripts/install.sh --prefix $root --binary $OPS_BIN"
    bash "$REPO/scripts/install.sh" --prefix "$root" --binary "$OPS_BIN" >"$OPS_TMP/install.log" 2>&1 || {
        cat "$OPS_TMP/install.log"
        ops__fail "install.sh exited with an error"
        return 1
    }
    sed -n '1,/^Still to do/p' "$OPS_TMP/install.log"
    for f in usr/local/bin/switchboard:755 \
        usr/local/share/doc/switchboard/README.md:644 \
        etc/switchboard:750 \
        etc/switchboard/switchboard.env:640 \
        etc/switchboard/turnserver.conf.example:644 \
        etc/systemd/system/switchboard.service:644 \
        etc/systemd/system/switchboard@.service:644 \
        etc/systemd/system/coturn.service.d/switchboard.conf:644 \
        etc/nginx/sites-available/switchboard.conf:644; do
        want="${f##*:}"
        f="$root/${f%:*}"
        [ -e "$f" ] || {
            ops__fail "install.sh did not create $f"
            return 1
        }
        mode="$(stat -c %a "$f")"
        [ "$mode" = "$want" ] || {
            ops__fail "$f has mode $mode, expected $want"
            return 1
        }
    done
    cmp -s "$REPO/.env.example" "$root/etc/switchboard/switchboard.env" ||
        ops__fail "switchboard.env differs from .env.example" || return 1
    cmp -s "$REPO/scripts/systemd/switchboard.service" "$root/etc/systemd/system/switchboard.service" ||
        ops__fail "the installed unit differs from scripts/systemd/switchboard.service" || return 1
    cmp -s "$REPO/scripts/systemd/switchboard@.service" "$root/etc/systemd/system/switchboard@.service" ||
        ops__fail "the installed template differs from scripts/systemd/switchboard@.service" || return 1
    [ ! -e "$root/etc/turnserver.conf" ] && [ ! -e "$root/etc/nginx/sites-enabled" ] ||
        ops__fail "install.sh touched coturn's live configuration or enabled the nginx site" || return 1
    "$root/usr/local/bin/switchboard" --version >/dev/null ||
        ops__fail "the installed binary does not run" || return 1

    # A second run (an upgrade) keeps what the operator edited.
    echo "# operator's change" >>"$root/etc/switchboard/switchboard.env"
    sed -i 's/switchboard\.example\.com/chat.example.org/' "$root/etc/nginx/sites-available/switchboard.conf"
    echo "\$ scripts/install.sh --prefix $root --binary $OPS_BIN   (again, after edits)"
    bash "$REPO/scripts/install.sh" --prefix "$root" --binary "$OPS_BIN" >"$OPS_TMP/install2.log" 2>&1 || {
        cat "$OPS_TMP/install2.log"
        ops__fail "install.sh failed on an existing installation"
        return 1
    }
    grep -E '^kept ' "$OPS_TMP/install2.log"
    grep -q "operator's change" "$root/etc/switchboard/switchboard.env" ||
        ops__fail "a second install.sh overwrote switchboard.env" || return 1
    grep -q chat.example.org "$root/etc/nginx/sites-available/switchboard.conf" &&
        [ -f "$root/etc/nginx/sites-available/switchboard.conf.dist" ] ||
        ops__fail "a second install.sh overwrote the edited nginx site" || return 1
    mv -f "$root/etc/nginx/sites-available/switchboard.conf.dist" \
        "$root/etc/nginx/sites-available/switchboard.conf"
    echo "install.sh: layout, modes and upgrade behaviour as expected"
}

# ops__nginx_conf DIR SITE: writes DIR/nginx.conf that includes SITE in http {} with every
# path nginx writes inside DIR.
ops__nginx_conf() {
    local dir="$1" site="$2"
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
pid $dir/nginx.pid;
error_log $dir/error.log;
events {}
http {
    access_log $dir/access.log;
    client_body_temp_path $dir/tmp/client_body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    include $site;
}
EOF
}

# ops__nginx DIR ARGS...: nginx with its prefix, error log and configuration in DIR.
ops__nginx() {
    local dir="$1"
    shift
    nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" "$@"
}

# ops_check_nginx: nginx -t on the site as install.sh installed it (ops_check_install runs
# first), with a throwaway self-signed certificate where the site expects one.
ops_check_nginx() {
    ops_need nginx nginx
    ops_need openssl openssl
    local dir="$OPS_TMP/nginx" site out rc=0
    site="$OPS_TMP/root/etc/nginx/sites-available/switchboard.conf"
    [ -f "$site" ] || ops__fail "run ops_check_install first ($site is missing)" || return 1
    mkdir -p "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
        -keyout "$dir/privkey.pem" -out "$dir/fullchain.pem" 2>/dev/null ||
        ops__fail "openssl could not make a test certificate" || return 1
    sed -e "s|/etc/ssl/switchboard/fullchain.pem|$dir/fullchain.pem|" \
        -e "s|/etc/ssl/switchboard/privkey.pem|$dir/privkey.pem|" "$site" >"$dir/switchboard.conf"
    [ "$(grep -c "$dir/" "$dir/switchboard.conf")" -eq 2 ] ||
        ops__fail "the site does not name /etc/ssl/switchboard/{fullchain,privkey}.pem" || return 1
    ops__nginx_conf "$dir" "$dir/switchboard.conf"
    echo "\$ nginx -t -c $dir/nginx.conf   ($(nginx -v 2>&1))"
    out="$(ops__nginx "$dir" -t 2>&1)" || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 0 ] || grep -qE '\[(warn|emerg|alert|crit|error)\]' <<<"$out"; then
        ops__fail "nginx -t rejected the site"
        return 1
    fi
}

# ops_check_nginx_apps: nginx -t on the per-app example (scripts/nginx/switchboard-apps.conf),
# each app's domain routed to its dialect's listener. Needs ops_check_nginx's certificate.
ops_check_nginx_apps() {
    local dir="$OPS_TMP/nginx-apps" out rc=0
    mkdir -p "$dir"
    sed -e "s|/etc/ssl/switchboard/fullchain.pem|$OPS_TMP/nginx/fullchain.pem|" \
        -e "s|/etc/ssl/switchboard/privkey.pem|$OPS_TMP/nginx/privkey.pem|" \
        "$REPO/scripts/nginx/switchboard-apps.conf" >"$dir/apps.conf"
    ops__nginx_conf "$dir" "$dir/apps.conf"
    echo "\$ nginx -t -c $dir/nginx.conf   (scripts/nginx/switchboard-apps.conf)"
    out="$(ops__nginx "$dir" -t 2>&1)" || rc=$?
    printf '%s\n' "$out"
    if [ "$rc" -ne 0 ] || grep -qE '\[(warn|emerg|alert|crit|error)\]' <<<"$out"; then
        ops__fail "nginx -t rejected scripts/nginx/switchboard-apps.conf"
        return 1
    fi
}

# ops_check_nginx_cluster: nginx -t on the cluster example (scripts/nginx/switchboard-cluster.conf),
# also with its commented cookie alternative switched on. Needs ops_check_nginx's certificate.
ops_check_nginx_cluster() {
    local dir="$OPS_TMP/nginx-cluster" variant out rc
    mkdir -p "$dir"
    sed -e "s|/etc/ssl/switchboard/fullchain.pem|$OPS_TMP/nginx/fullchain.pem|" \
        -e "s|/etc/ssl/switchboard/privkey.pem|$OPS_TMP/nginx/privkey.pem|" \
        "$REPO/scripts/nginx/switchboard-cluster.conf" >"$dir/cluster.conf"
    # The cookie alternative: the map and the add_header lines uncommented, the hash on its key.
    # shellcheck disable=SC2016 # $remote_addr and $cookie_... are nginx variables
    sed -e 's/^    hash \$remote_addr consistent;$/    hash $switchboard_affinity consistent;/' \
        -e '/^# map \$cookie_switchboard_affinity /,/^# }$/s/^# \{0,1\}//' \
        -e 's/^\( *\)# add_header /\1add_header /' \
        "$dir/cluster.conf" >"$dir/cluster-cookie.conf"
    [ "$(diff "$dir/cluster.conf" "$dir/cluster-cookie.conf" | grep -c '^>')" -eq 7 ] ||
        ops__fail "the cookie alternative in switchboard-cluster.conf is not where the check expects it" ||
        return 1
    for variant in cluster cluster-cookie; do
        ops__nginx_conf "$dir" "$dir/$variant.conf"
        echo "\$ nginx -t -c $dir/nginx.conf   (scripts/nginx/switchboard-cluster.conf, $variant)"
        rc=0
        out="$(ops__nginx "$dir" -t 2>&1)" || rc=$?
        printf '%s\n' "$out"
        if [ "$rc" -ne 0 ] || grep -qE '\[(warn|emerg|alert|crit|error)\]' <<<"$out"; then
            ops__fail "nginx -t rejected scripts/nginx/switchboard-cluster.conf ($variant)"
            return 1
        fi
    done
}

# ops__syscalls GROUP: the system calls in a seccomp group, nested groups expanded.
ops__syscalls() {
    local item
    systemd-analyze syscall-filter "$1" | sed -n '2,$p' | sed -n 's/^ \{4\}\([@a-z0-9_-]*\)$/\1/p' |
        while read -r item; do
            case "$item" in
                @*) ops__syscalls "$item" ;;
                *) printf '%s\n' "$item" ;;
            esac
        done | sort -u
}

OPS_SERVER_PID=""
OPS_LISTENER_PID=""
OPS_DB=""

# ops_cleanup: stops what the checks started and removes OPS_TMP (an EXIT trap of the step).
ops_cleanup() {
    local child
    if [ -n "$OPS_SERVER_PID" ]; then
        for child in $(pgrep -P "$OPS_SERVER_PID" 2>/dev/null || true); do
            kill -TERM "$child" 2>/dev/null || true
        done
        kill -TERM "$OPS_SERVER_PID" 2>/dev/null || true
        wait "$OPS_SERVER_PID" 2>/dev/null || true
    fi
    if [ -n "$OPS_LISTENER_PID" ]; then
        kill "$OPS_LISTENER_PID" 2>/dev/null || true
        wait "$OPS_LISTENER_PID" 2>/dev/null || true
    fi
    if [ -n "${OPS_TMP:-}" ] && [ -f "$OPS_TMP/proxy/nginx.pid" ]; then
        ops__nginx "$OPS_TMP/proxy" -s stop 2>/dev/null || true
    fi
    if [ -n "$OPS_DB" ]; then
        psql_admin "DROP DATABASE IF EXISTS \"$OPS_DB\" WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    if [ -n "${OPS_TMP:-}" ]; then
        rm -rf -- "$OPS_TMP"
    fi
}

# ops_check_serve: runs `switchboard serve` as the unit would (NOTIFY_SOCKET, WATCHDOG_USEC)
# under strace, behind nginx with the installed site on local ports; checks READY=1,
# WATCHDOG=1 and STOPPING=1 arrive, that REST, the redirect and a WebSocket upgrade pass the
# proxy, and that every system call the server made and every socket family it used is allowed
# by the unit's SystemCallFilter and RestrictAddressFamilies.
# Needs TEST_DATABASE_URL and psql_admin (scripts/test.sh), and ops_check_nginx run first.
# What it starts is stopped by ops_cleanup.
ops_check_serve() {
    ops_need strace strace
    ops_need python3 python3
    ops_need curl curl
    local dir="$OPS_TMP/serve" port p80 p443 url out
    mkdir -p "$dir"
    OPS_DB="sb_ops_check_$$"
    psql_admin "DROP DATABASE IF EXISTS \"$OPS_DB\"" >/dev/null
    psql_admin "CREATE DATABASE \"$OPS_DB\"" >/dev/null
    url="$(pg_url_with_db "$TEST_DATABASE_URL" "$OPS_DB")"

    # The notification socket, as systemd would provide it.
    python3 - "$dir/notify.sock" >"$dir/notify.log" <<'EOF' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
while True:
    data = s.recv(4096).decode()
    print(data.replace("\n", " | "), flush=True)
EOF
    OPS_LISTENER_PID=$!
    local i
    for i in $(seq 1 50); do
        [ -S "$dir/notify.sock" ] && break
        sleep 0.1
    done
    [ -S "$dir/notify.sock" ] || ops__fail "the test notification socket did not appear" || return 1

    port="$(ops__free_port)"
    local secret
    secret="$(openssl rand -base64 48)"
    mkdir -p "$dir/media"
    # nginx's workers (nobody, when it starts as root) read the media files themselves, as
    # www-data does through the group on a server: let them through the scratch directories.
    chmod o+x "$OPS_TMP" "$dir"
    chmod o+rx "$dir/media"
    echo "\$ NOTIFY_SOCKET=$dir/notify.sock WATCHDOG_USEC=1000000 strace -f switchboard serve   (BIND=127.0.0.1:$port, MEDIA_DIR=$dir/media, MEDIA_ACCEL_REDIRECT=/_media/)"
    NOTIFY_SOCKET="$dir/notify.sock" WATCHDOG_USEC=1000000 BIND="127.0.0.1:$port" \
        DATABASE_URL="$url" JWT_SECRET="$secret" RUST_LOG=warn NO_COLOR=1 \
        MEDIA_DIR="$dir/media" MEDIA_ACCEL_REDIRECT=/_media/ \
        strace -f -qq -o "$dir/strace.log" "$OPS_BIN" serve >"$dir/server.log" 2>&1 &
    OPS_SERVER_PID=$!
    if ! ops__wait_for "$dir/notify.log" '^READY=1' 60; then
        cat "$dir/server.log" "$dir/notify.log"
        ops__fail "switchboard did not send READY=1"
        return 1
    fi
    echo "received: $(grep -m1 '^READY=1' "$dir/notify.log")"

    # nginx in front, with the installed site moved to local ports.
    local pdir="$OPS_TMP/proxy"
    mkdir -p "$pdir"
    p80="$(ops__free_port)"
    p443="$(ops__free_port)"
    sed -e '/listen \[::\]/d' \
        -e "s/listen 80;/listen 127.0.0.1:$p80;/" \
        -e "s/listen 443 ssl/listen 127.0.0.1:$p443 ssl/" \
        -e "s/server 127.0.0.1:8080;/server 127.0.0.1:$port;/" \
        -e "s|alias /var/lib/switchboard/media/;|alias $dir/media/;|" \
        "$OPS_TMP/nginx/switchboard.conf" >"$pdir/switchboard.conf"
    ops__nginx_conf "$pdir" "$pdir/switchboard.conf"
    echo "\$ nginx (site on 127.0.0.1:$p80 and :$p443, upstream 127.0.0.1:$port)"
    ops__nginx "$pdir" || {
        cat "$pdir/error.log"
        ops__fail "nginx did not start with the site"
        return 1
    }
    local host=switchboard.example.com
    local resolve=(--resolve "$host:$p443:127.0.0.1" --resolve "$host:$p80:127.0.0.1")
    out="$(curl -sS -o /dev/null -w '%{http_code} %{redirect_url}' "${resolve[@]}" "http://$host:$p80/ping")"
    echo "http://$host/ping -> $out"
    [[ "$out" == "301 https://$host/ping" ]] || ops__fail "no redirect to HTTPS" || return 1
    out="$(curl -sS -k "${resolve[@]}" "https://$host:$p443/ping")"
    echo "https://$host/ping -> $out"
    [ "$out" = pong ] || ops__fail "REST through nginx" || return 1
    out="$(curl -sS -k -o /dev/null -w '%{http_code} HTTP/%{http_version}' --http2 "${resolve[@]}" "https://$host:$p443/health")"
    echo "https://$host/health (HTTP/2) -> $out"
    [ "$out" = "200 HTTP/2" ] || ops__fail "/health over HTTP/2 through nginx" || return 1
    out="$(curl -sS -k -o /dev/null -w '%{http_code}' "${resolve[@]}" "https://$host:$p443/metrics")"
    echo "https://$host/metrics -> $out"
    [ "$out" = 404 ] || ops__fail "/metrics is published through nginx" || return 1
    out="$(curl -sS -k -D - -o /dev/null "${resolve[@]}" "https://$host:$p443/ping" |
        tr -d '\r' | sed -n 's/^x-request-id: //Ip')"
    echo "https://$host/ping X-Request-Id -> $out"
    [[ "$out" =~ ^[0-9a-f]{32}$ ]] || ops__fail "nginx's request id does not reach the server" || return 1
    out="$(curl -sS -k -i --http1.1 --max-time 3 "${resolve[@]}" \
        -H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13' \
        -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' "https://$host:$p443/ws" 2>/dev/null | head -n 1 | tr -d '\r' || true)"
    echo "https://$host/ws upgrade -> $out"
    [[ "$out" == "HTTP/1.1 101"* ]] || ops__fail "WebSocket upgrade through nginx" || return 1
    ops__media_through_nginx "$dir" "$url" "$secret" "$host" "$p443" "${resolve[@]}" || return 1

    if ! ops__wait_for "$dir/notify.log" '^WATCHDOG=1' 5; then
        ops__fail "no WATCHDOG=1 with WATCHDOG_USEC set"
        return 1
    fi
    # Signal the server itself (strace's child); strace exits with its status.
    local server
    server="$(pgrep -P "$OPS_SERVER_PID" | head -n 1)"
    [ -n "$server" ] || ops__fail "switchboard is not running under strace" || return 1
    kill -TERM "$server"
    local rc=0
    wait "$OPS_SERVER_PID" || rc=$?
    OPS_SERVER_PID=""
    [ "$rc" -eq 0 ] || {
        cat "$dir/server.log"
        ops__fail "switchboard exited with status $rc after SIGTERM"
        return 1
    }
    ops__wait_for "$dir/notify.log" '^STOPPING=1' 5 || ops__fail "no STOPPING=1 on SIGTERM" || return 1
    echo "notifications received:"
    sort "$dir/notify.log" | uniq -c

    # Every system call made must pass SystemCallFilter=@system-service ~@privileged @resources.
    grep -oE '^[0-9]+ +[a-z0-9_]+\(' "$dir/strace.log" | sed -E 's/^[0-9]+ +//; s/\($//' |
        sort -u >"$dir/used.txt"
    ops__syscalls @system-service >"$dir/allowed.txt"
    { ops__syscalls @privileged && ops__syscalls @resources; } | sort -u >"$dir/denied.txt"
    [ -s "$dir/used.txt" ] && [ -s "$dir/allowed.txt" ] && [ -s "$dir/denied.txt" ] ||
        ops__fail "could not list the system calls (strace or systemd-analyze syscall-filter)" || return 1
    comm -23 "$dir/allowed.txt" "$dir/denied.txt" >"$dir/effective.txt"
    # The expansion itself: threads and epoll are in, identity and priority changes are out.
    grep -qx epoll_wait "$dir/effective.txt" && grep -qx clone3 "$dir/effective.txt" &&
        ! grep -qxE 'setuid|setpriority|setrlimit' "$dir/effective.txt" ||
        ops__fail "unexpected expansion of the system call groups" || return 1
    local outside
    outside="$(comm -23 "$dir/used.txt" "$dir/effective.txt" | tr '\n' ' ')"
    echo "system calls made: $(wc -l <"$dir/used.txt"); allowed by the unit's filter:" \
        "$(wc -l <"$dir/effective.txt")"
    if [ -n "$outside" ]; then
        printf 'refused by SystemCallFilter: %s\n' "$outside"
        ops__fail "switchboard makes system calls its unit refuses"
        return 1
    fi
    echo "every system call is allowed by the unit's SystemCallFilter"

    # And every socket it opened is of a family RestrictAddressFamilies= allows.
    local families family
    families="$(grep -oE 'socket(pair)?\(AF_[A-Z0-9]+' "$dir/strace.log" | sed 's/.*(//' | sort -u | tr '\n' ' ')"
    echo "socket address families used: $families"
    for family in $families; do
        case "$family" in
            AF_INET | AF_INET6 | AF_UNIX) ;;
            *)
                ops__fail "switchboard opened an $family socket; the unit allows AF_INET AF_INET6 AF_UNIX"
                return 1
                ;;
        esac
    done
}

# ops__media_through_nginx DIR DATABASE_URL JWT_SECRET HOST PORT CURL_ARGS...: a user and a token
# from the CLI, an upload through nginx (multipart, streamed), then the download: checked by
# switchboard, sent by nginx from the media directory (X-Accel-Redirect), a range included.
ops__media_through_nginx() {
    local dir="$1" url="$2" secret="$3" host="$4" port="$5"
    shift 5
    local user token answer file out
    user="$(DATABASE_URL="$url" JWT_SECRET="$secret" "$OPS_BIN" user add --name Ops \
        --email ops@example.com | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
    token="$(DATABASE_URL="$url" JWT_SECRET="$secret" "$OPS_BIN" token --user "$user" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"
    file="$dir/upload.wav"
    python3 - "$file" <<'EOF'
import struct, sys
data = bytes(i % 251 for i in range(64000))
header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
open(sys.argv[1], "wb").write(header + b"data" + struct.pack("<I", len(data)) + data)
EOF
    answer="$(curl -sS -k "$@" -H "Authorization: Bearer $token" -F "file=@$file;type=image/png" \
        "https://$host:$port/api/media")"
    echo "POST https://$host/api/media (multipart) -> $answer"
    out="$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); print(a["contentType"], a["durationMs"], a["url"])' "$answer")" ||
        ops__fail "upload through nginx" || return 1
    read -r ctype duration signed <<<"$out"
    [ "$ctype" = audio/wav ] && [ "$duration" = 4000 ] ||
        ops__fail "the upload was not read as a 4 s WAV: $out" || return 1
    # The answer's URL names the host nginx forwarded; fetch it through the proxy.
    signed="https://$host:$port/api/media/${signed#*/api/media/}"
    out="$(curl -sS -k "$@" -D "$dir/media.headers" -o "$dir/media.part" -H 'Range: bytes=44-143' \
        -w '%{http_code} %{size_download}' "$signed")"
    echo "GET (signed URL, Range: bytes=44-143) -> $out"
    [ "$out" = "206 100" ] || {
        tail -n 5 "$OPS_TMP/proxy/error.log"
        ops__fail "a range of the file through nginx"
        return 1
    }
    cmp -s "$dir/media.part" <(tail -c +45 "$file" | head -c 100) ||
        ops__fail "the range sent by nginx differs from the file" || return 1
    grep -qi '^x-content-type-options: nosniff' "$dir/media.headers" &&
        grep -qi '^content-type: audio/wav' "$dir/media.headers" &&
        ! grep -qi '^x-accel-redirect' "$dir/media.headers" ||
        ops__fail "headers of the file sent by nginx: $(tr -d '\r' <"$dir/media.headers" | tr '\n' ' ')" || return 1
    out="$(curl -sS -k "$@" -o /dev/null -w '%{http_code}' "https://$host:$port/_media/media/x")"
    echo "GET https://$host/_media/... (internal) -> $out"
    [ "$out" = 404 ] || ops__fail "the internal media location is reachable from outside" || return 1
}

# ops_check_coturn: starts turnserver briefly with scripts/coturn/turnserver.conf (test secret,
# 127.0.0.1, high ports, a throwaway certificate); it must start without configuration
# errors, answer a STUN binding request and refuse to relay to a denied peer (127.0.0.1).
ops_check_coturn() {
    if ! command -v turnserver >/dev/null 2>&1 || ! command -v turnutils_stunclient >/dev/null 2>&1; then
        pg__apt_install coturn
    fi
    local dir="$OPS_TMP/coturn" port tls min pid out
    mkdir -p "$dir"
    port="$(ops__free_port)"
    tls="$(ops__free_port)"
    min="$(ops__free_port)"
    [ -f "$OPS_TMP/nginx/fullchain.pem" ] || ops__fail "run ops_check_nginx first" || return 1
    sed -e "s/^listening-port=.*/listening-port=$port/" \
        -e "s/^tls-listening-port=.*/tls-listening-port=$tls/" \
        -e "s/^#listening-ip=.*/listening-ip=127.0.0.1/" \
        -e "s/^external-ip=.*/external-ip=127.0.0.1/" \
        -e "s/^min-port=.*/min-port=$min/" -e "s/^max-port=.*/max-port=$((min + 50))/" \
        -e "s|^cert=.*|cert=$OPS_TMP/nginx/fullchain.pem|" \
        -e "s|^pkey=.*|pkey=$OPS_TMP/nginx/privkey.pem|" \
        -e "s/^static-auth-secret=.*/static-auth-secret=ops-test-secret/" \
        -e "s/^syslog\$/log-file=stdout/" \
        "$REPO/scripts/coturn/turnserver.conf" >"$dir/turnserver.conf"
    echo "\$ turnserver -c turnserver.conf   (the template on 127.0.0.1:$port, test secret)"
    turnserver -c "$dir/turnserver.conf" --pidfile= >"$dir/turnserver.log" 2>&1 &
    pid=$!
    local ok=""
    ops__wait_for "$dir/turnserver.log" 'Total General servers|SQLite DB connection' 10 && ok=1
    if [ -n "$ok" ]; then
        out="$(turnutils_stunclient -p "$port" 127.0.0.1 2>&1 || true)"
        grep -q 'reflexive addr' <<<"$out" || ok=""
        printf 'STUN binding: %s\n' "$(grep -m1 'reflexive addr' <<<"$out" || echo "no answer")"
    fi
    if [ -n "$ok" ]; then
        out="$(timeout 20 turnutils_uclient -W ops-test-secret -p "$port" -n 1 -m 1 -y -e 127.0.0.1 127.0.0.1 2>&1 || true)"
        if grep -q 'Forbidden IP' <<<"$out"; then
            echo "relay to 127.0.0.1 (authenticated with the secret): $(grep -m1 'Forbidden IP' <<<"$out" | sed 's/^[0-9]*: : //')"
        else
            printf '%s\n' "$out" | tail -n 5
            echo "expected coturn to refuse relaying to 127.0.0.1 (403 Forbidden IP)"
            ok=""
        fi
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if grep -nE 'Bad configuration|ERROR|Wrong|error resolving|CONFIG' "$dir/turnserver.log"; then
        ops__fail "turnserver reported configuration problems"
        return 1
    fi
    if [ -z "$ok" ]; then
        tail -n 30 "$dir/turnserver.log"
        ops__fail "turnserver did not run with the template"
        return 1
    fi
    echo "turnserver: $(grep -c '^.*Black listing' "$dir/turnserver.log") denied-peer-ip ranges loaded; started and answered"
}

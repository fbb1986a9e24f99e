#!/usr/bin/env bash
# Installs Switchboard on a systemd host (Debian/Ubuntu):
#
#   scripts/install.sh [--binary PATH | --no-build] [--prefix DIR]
#
# - builds the release binary (cargo build --release) unless --binary PATH names one, or
#   --no-build says to take target/release/switchboard as it is;
# - installs it as /usr/local/bin/switchboard (replacing the file atomically, so a running
#   server is not disturbed until it restarts);
# - creates the `switchboard` system user and group;
# - installs /etc/switchboard/switchboard.env from .env.example when absent (mode 0640,
#   root:switchboard); an existing one is never changed;
# - installs the systemd unit (/etc/systemd/system/switchboard.service), the template for
#   several cluster nodes on one host (/etc/systemd/system/switchboard@.service), the coturn
#   drop-in (/etc/systemd/system/coturn.service.d/switchboard.conf), the coturn template
#   (/etc/switchboard/turnserver.conf.example; coturn's live configuration is left alone), the
#   nginx site (/etc/nginx/sites-available/switchboard.conf, not enabled; an edited one is kept
#   and the new version written next to it as switchboard.conf.dist) and the README
#   (/usr/local/share/doc/switchboard/README.md);
# - runs `systemctl daemon-reload` when systemd is running;
# - prints what remains to be configured and how to start the services.
#
# --prefix DIR installs under DIR instead of / (a staging root, or a test): no users are
# created, no ownership is changed and systemd is not told.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PREFIX=/
BINARY=""
BUILD=1
NGINX_HTTP2_DIRECTIVE_VERSION=1.25.1

say() { printf '%s\n' "$*"; }
die() {
    printf 'install.sh: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

while [ "$#" -gt 0 ]; do
    case "$1" in
        --prefix)
            [ "$#" -ge 2 ] || die "--prefix needs a directory"
            PREFIX="$2"
            shift 2
            ;;
        --prefix=*)
            PREFIX="${1#--prefix=}"
            shift
            ;;
        --binary)
            [ "$#" -ge 2 ] || die "--binary needs a path"
            BINARY="$2"
            shift 2
            ;;
        --binary=*)
            BINARY="${1#--binary=}"
            shift
            ;;
        --no-build)
            BUILD=0
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
done

[ -n "$PREFIX" ] || die "--prefix must not be empty"
mkdir -p -- "$PREFIX"
PREFIX="$(cd -- "$PREFIX" && pwd)"
SYSTEM=0 # 1 when installing into the running system
[ "$PREFIX" = / ] && SYSTEM=1
root() { # root PATH: PATH under the prefix
    if [ "$SYSTEM" -eq 1 ]; then
        printf '%s\n' "$1"
    else
        printf '%s%s\n' "$PREFIX" "$1"
    fi
}

if [ "$SYSTEM" -eq 1 ] && [ "$(id -u)" -ne 0 ]; then
    die "installing into / needs root (run it with sudo, or use --prefix DIR)"
fi

# --- The binary ------------------------------------------------------------------------------

if [ -n "$BINARY" ]; then
    if [ ! -f "$BINARY" ] || [ ! -x "$BINARY" ]; then
        die "--binary $BINARY is not an executable file"
    fi
elif [ "$BUILD" -eq 1 ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo was not found: install Rust, or pass --binary PATH"
    say "building: cargo build --release"
    (cd "$REPO" && cargo build --release)
    BINARY="$REPO/target/release/switchboard"
else
    BINARY="$REPO/target/release/switchboard"
    [ -x "$BINARY" ] || die "--no-build: $BINARY does not exist; build it first or pass --binary PATH"
fi
VERSION="$("$BINARY" --version 2>/dev/null)" || die "$BINARY does not run (--version failed)"

# install_file MODE SRC DEST: copies SRC to DEST through a temporary file renamed into place.
install_file() {
    local mode="$1" src="$2" dest="$3" tmp
    mkdir -p -- "$(dirname -- "$dest")"
    tmp="$(mktemp "$dest.XXXXXX")"
    cp -- "$src" "$tmp"
    chmod "$mode" "$tmp"
    mv -f -- "$tmp" "$dest"
    say "installed $dest"
}

# --- User and group --------------------------------------------------------------------------

if [ "$SYSTEM" -eq 1 ]; then
    if ! getent group switchboard >/dev/null; then
        groupadd --system switchboard
        say "created group switchboard"
    fi
    if ! getent passwd switchboard >/dev/null; then
        useradd --system --gid switchboard --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "Switchboard server" switchboard
        say "created user switchboard"
    fi
    # nginx sends media files itself (X-Accel-Redirect): its worker user reads the state
    # directory through the group.
    if getent passwd www-data >/dev/null && ! id -nG www-data | tr ' ' '\n' | grep -qx switchboard; then
        usermod -a -G switchboard www-data
        say "added www-data (nginx) to group switchboard"
    fi
else
    say "--prefix $PREFIX: not creating the switchboard user or changing ownership"
fi

# --- Files -----------------------------------------------------------------------------------

install_file 0755 "$BINARY" "$(root /usr/local/bin/switchboard)"
install_file 0644 "$REPO/README.md" "$(root /usr/local/share/doc/switchboard/README.md)"

etc_dir="$(root /etc/switchboard)"
mkdir -p -- "$etc_dir"
chmod 0750 "$etc_dir"
if [ "$SYSTEM" -eq 1 ]; then
    chown root:switchboard "$etc_dir"
fi

env_file="$etc_dir/switchboard.env"
if [ -e "$env_file" ]; then
    say "kept $env_file (it exists; compare it with $REPO/.env.example for new settings)"
else
    tmp="$(mktemp "$env_file.XXXXXX")"
    cp -- "$REPO/.env.example" "$tmp"
    chmod 0640 "$tmp"
    if [ "$SYSTEM" -eq 1 ]; then
        chown root:switchboard "$tmp"
    fi
    mv -- "$tmp" "$env_file"
    say "installed $env_file (from .env.example)"
fi

install_file 0644 "$REPO/scripts/coturn/turnserver.conf" "$etc_dir/turnserver.conf.example"
install_file 0644 "$REPO/scripts/systemd/switchboard.service" \
    "$(root /etc/systemd/system/switchboard.service)"
install_file 0644 "$REPO/scripts/systemd/switchboard@.service" \
    "$(root /etc/systemd/system/switchboard@.service)"
install_file 0644 "$REPO/scripts/systemd/coturn.service.d/switchboard.conf" \
    "$(root /etc/systemd/system/coturn.service.d/switchboard.conf)"

# The nginx site uses `http2 on;` (nginx 1.25.1 and newer). For an older nginx on this machine
# (Debian 12 ships 1.22) the same setting is written the old way: `listen ... ssl http2;`.
site_src="$(mktemp)"
trap 'rm -f -- "$site_src"' EXIT
cp -- "$REPO/scripts/nginx/switchboard.conf" "$site_src"
nginx_note=""
if command -v nginx >/dev/null 2>&1; then
    nginx_version="$(nginx -v 2>&1 | sed -n 's|.*nginx/\([0-9][0-9.]*\).*|\1|p')"
    if [ -n "$nginx_version" ] &&
        [ "$(printf '%s\n%s\n' "$nginx_version" "$NGINX_HTTP2_DIRECTIVE_VERSION" | sort -V | head -n 1)" != \
            "$NGINX_HTTP2_DIRECTIVE_VERSION" ]; then
        sed -i -e '/^[[:space:]]*http2 on;/d' \
            -e 's/^\([[:space:]]*listen .*443 ssl\);/\1 http2;/' "$site_src"
        nginx_note="nginx $nginx_version predates \`http2 on;\`: the site enables HTTP/2 with \`listen ... ssl http2;\` instead"
    fi
fi
site="$(root /etc/nginx/sites-available/switchboard.conf)"
if [ -e "$site" ] && ! cmp -s "$site_src" "$site"; then
    install_file 0644 "$site_src" "$site.dist"
    say "kept $site (it differs from this version; compare it with $site.dist)"
else
    install_file 0644 "$site_src" "$site"
fi
if [ -n "$nginx_note" ]; then
    say "note: $nginx_note"
fi

# --- systemd ---------------------------------------------------------------------------------

if [ "$SYSTEM" -eq 1 ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload
    say "systemctl daemon-reload done"
else
    say "systemd is not running here (or --prefix): skipped systemctl daemon-reload"
fi

# --- What is left ----------------------------------------------------------------------------

cat <<EOF

Installed $VERSION under $PREFIX.

Still to do:
  1. Settings: edit /etc/switchboard/switchboard.env (root:switchboard, mode 0640):
     - DATABASE_URL=postgres://switchboard:PASSWORD@127.0.0.1:5432/switchboard
       (create the role and database first; migrations run when the server starts)
     - JWT_SECRET: generate one with   openssl rand -base64 48
     - ALLOWED_ORIGINS: the exact origins of browser clients (comma-separated)
     - TURN_URLS, TURN_SECRET (and TURN_TTL_SECS) when calls use coturn;
       OTP_SENDER=webhook and OTP_WEBHOOK_URL for SMS codes
  2. coturn (apt-get install coturn): start from /etc/switchboard/turnserver.conf.example as
     /etc/turnserver.conf; set static-auth-secret to the same value as TURN_SECRET, and
     external-ip, realm, cert and pkey.
  3. nginx: in /etc/nginx/sites-available/switchboard.conf set server_name and the certificate
     paths (/etc/ssl/switchboard/fullchain.pem, privkey.pem), then enable it:
       ln -s ../sites-available/switchboard.conf /etc/nginx/sites-enabled/
       nginx -t && systemctl reload nginx
  4. Start:
       systemctl enable --now switchboard
       systemctl restart coturn
       journalctl -u switchboard -f
     A first admin account (prints its password once):
       sh -c 'set -a; . /etc/switchboard/switchboard.env; exec switchboard user ensure-admin'
  Several nodes on this host instead (cluster mode, REDIS_URL set; README, "Cluster mode"):
     a /etc/switchboard/node-N.env with its own BIND for each instance N, the nginx example
     $REPO/scripts/nginx/switchboard-cluster.conf in place of the site, then
       systemctl enable --now switchboard@1 switchboard@2
EOF

# shellcheck shell=bash
# Shared by deploy/local/up.sh and deploy/local/down.sh; not meant to be run on its own.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CACHE_DIR="$REPO_ROOT/.cache"
INFRA_ENV="$CACHE_DIR/infra.env"

# Host-side addresses; the Docker path publishes the same ports.
PG_CLUSTER="joinedup"
PG_PORT="55432"
PG_USER="joinedup"
PG_PASSWORD="joinedup"
PG_DATABASE="joinedup"
KAFKA_HOST="127.0.0.1"
KAFKA_PORT="9092"

KAFKA_VERSION="3.9.1"
KAFKA_SRC="$REPO_ROOT/deploy/kafka"
KAFKA_DIR="$CACHE_DIR/kafka"
KAFKA_LIBS="$KAFKA_DIR/libs"
KAFKA_DATA="$KAFKA_DIR/data"
KAFKA_PROPS="$KAFKA_DIR/server.properties"
KAFKA_CLUSTER_ID_FILE="$KAFKA_DIR/cluster.id"
KAFKA_PIDFILE="$KAFKA_DIR/kafka.pid"
KAFKA_LOG="$KAFKA_DIR/kafka.log"
KAFKA_OUT="$KAFKA_DIR/kafka.out"
KAFKA_START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"

log() { printf '[infra] %s\n' "$*"; }
die() {
    printf '[infra] error: %s\n' "$*" >&2
    exit 1
}

# True when a Docker engine answers (the client alone is not enough).
docker_available() {
    command -v docker >/dev/null 2>&1 && timeout 15 docker info >/dev/null 2>&1
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && sudo -u postgres "$@")
    fi
}

# The major version that holds our cluster, else the newest installed PostgreSQL.
pg_version() {
    local ver
    ver="$(pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c { print $1; exit }')"
    if [ -z "$ver" ]; then
        ver="$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
            awk -F/ '{ print $5 }' | sort -V | tail -n 1)"
    fi
    printf '%s\n' "$ver"
}

pg_cluster_exists() {
    pg_lsclusters -h 2>/dev/null | awk -v c="$PG_CLUSTER" '$2 == c { found = 1 } END { exit !found }'
}

pg_cluster_online() {
    pg_lsclusters -h 2>/dev/null |
        awk -v c="$PG_CLUSTER" '$2 == c && $4 == "online" { found = 1 } END { exit !found }'
}

# Prints the pid of our broker when it runs (pidfile + command line check), else fails.
kafka_pid() {
    local pid
    [ -f "$KAFKA_PIDFILE" ] || return 1
    pid="$(cat "$KAFKA_PIDFILE")"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "-Djoinedup.kafka.home=$KAFKA_DIR " || return 1
    printf '%s\n' "$pid"
}

port_open() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# docker-compose.yml gives the service containers .cache/keys/jwt-public.pem to verify tokens.
# Make a development key pair once, so that `docker compose up` works out of the box; the
# private key sits where `joinedup token --data-dir .cache` looks for its signing key, so
# that command mints tokens these containers accept.
ensure_dev_keys() {
    local keys="$CACHE_DIR/keys"
    [ -f "$keys/jwt-public.pem" ] && return 0
    command -v openssl >/dev/null 2>&1 || die "openssl is needed to make a development JWT key"
    mkdir -p "$keys"
    (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 \
        -out "$keys/signing-key.pem" 2>/dev/null)
    openssl pkey -in "$keys/signing-key.pem" -pubout -out "$keys/jwt-public.pem"
    chmod 644 "$keys/jwt-public.pem"
    log "generated a development JWT key pair in .cache/keys (RS256)"
}

# One up.sh/down.sh at a time (several `make test` may run at once).
lock_infra() {
    mkdir -p "$CACHE_DIR"
    exec 9>"$CACHE_DIR/infra.lock"
    if ! flock -n 9; then
        log "waiting for another up.sh/down.sh to finish"
        flock 9
    fi
}

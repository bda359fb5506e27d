#!/usr/bin/env bash
# Stop what deploy/local/up.sh started. Data is kept (Docker volumes, .cache/kafka/data,
# the PostgreSQL cluster); `make clean` removes the local Kafka files.
# Idempotent: stopping what is not running is not an error.
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

kafka_down() {
    local pid i
    if ! pid="$(kafka_pid)"; then
        log "Kafka is not running"
        rm -f "$KAFKA_PIDFILE"
        return 0
    fi
    log "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 60); do
        kafka_pid >/dev/null || break
        if [ "$i" -eq 60 ]; then
            log "Kafka did not stop within 60s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        sleep 1
    done
    rm -f "$KAFKA_PIDFILE"
}

postgres_down() {
    local ver
    if ! command -v pg_lsclusters >/dev/null 2>&1 || ! pg_cluster_exists; then
        log "PostgreSQL cluster '$PG_CLUSTER' does not exist"
        return 0
    fi
    ver="$(pg_version)"
    if pg_cluster_online; then
        log "stopping PostgreSQL $ver/$PG_CLUSTER"
        as_root pg_ctlcluster "$ver" "$PG_CLUSTER" stop
    else
        log "PostgreSQL $ver/$PG_CLUSTER is not running"
    fi
}

lock_infra
if docker_available; then
    log "Docker engine found: docker compose down"
    ensure_dev_keys # docker-compose.yml refers to the key file
    (cd "$REPO_ROOT" && docker compose down)
else
    kafka_down
    postgres_down
fi
log "infrastructure is down"

#!/usr/bin/env bash
# Start the infrastructure JoinedUp needs in distributed mode and for integration tests:
# PostgreSQL on 127.0.0.1:55432 and a single-node Kafka (KRaft) on 127.0.0.1:9092.
#
# With a Docker engine: `docker compose up -d --wait postgres kafka`.
# Without one: a dedicated Debian PostgreSQL cluster ("joinedup") and a Kafka broker run as
# a local Java process, with everything under .cache/.
#
# Idempotent: running it again only checks that everything is up.
# Writes .cache/infra.env (JOINEDUP_DATABASE_URL, JOINEDUP_KAFKA_BOOTSTRAP).
set -euo pipefail

# shellcheck source=deploy/local/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

write_infra_env() {
    mkdir -p "$CACHE_DIR"
    printf '%s\n' \
        "JOINEDUP_DATABASE_URL=postgresql+asyncpg://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DATABASE" \
        "JOINEDUP_KAFKA_BOOTSTRAP=$KAFKA_HOST:$KAFKA_PORT" >"$INFRA_ENV"
    log "wrote ${INFRA_ENV#"$REPO_ROOT"/}"
}

# ---------------------------------------------------------------------------- Docker path

up_docker() {
    log "Docker engine found: docker compose up -d --wait postgres kafka"
    ensure_dev_keys
    (cd "$REPO_ROOT" && docker compose up -d --wait postgres kafka)
}

# --------------------------------------------------------------------- local-process path

ensure_java_and_maven() {
    if command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "Kafka needs Java 17+ and Maven; please install them"
    log "installing Java and Maven (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven
}

# Jars come from Maven Central through deploy/kafka/pom.xml; fetched again when the POM changes.
fetch_kafka() {
    local stamp want tmp
    stamp="$KAFKA_LIBS/.pom.sha256"
    want="$(sha256sum "$KAFKA_SRC/pom.xml" | awk '{ print $1 }')"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then
        return 0
    fi
    ensure_java_and_maven
    log "fetching Kafka $KAFKA_VERSION jars with Maven into ${KAFKA_LIBS#"$REPO_ROOT"/}"
    mkdir -p "$KAFKA_DIR"
    tmp="$KAFKA_DIR/libs.tmp"
    rm -rf "$tmp"
    if ! mvn -q -B -f "$KAFKA_SRC/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$tmp" >"$KAFKA_DIR/maven.log" 2>&1; then
        cat "$KAFKA_DIR/maven.log" >&2
        die "Maven could not fetch Kafka (see above)"
    fi
    [ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Maven did not fetch kafka_2.13-$KAFKA_VERSION.jar"
    printf '%s\n' "$want" >"$tmp/.pom.sha256"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
}

kafka_tool() {
    java -Xmx256m -Dlog4j.configuration="file:$KAFKA_SRC/tools-log4j.properties" \
        -cp "$KAFKA_LIBS/*" "$@"
}

configure_kafka() {
    mkdir -p "$KAFKA_DATA"
    sed "s|@KAFKA_DATA_DIR@|$KAFKA_DATA|" "$KAFKA_SRC/server.properties" >"$KAFKA_PROPS.tmp"
    mv "$KAFKA_PROPS.tmp" "$KAFKA_PROPS"
    if [ ! -s "$KAFKA_CLUSTER_ID_FILE" ]; then
        kafka_tool kafka.tools.StorageTool random-uuid >"$KAFKA_CLUSTER_ID_FILE.tmp"
        mv "$KAFKA_CLUSTER_ID_FILE.tmp" "$KAFKA_CLUSTER_ID_FILE"
    fi
    if [ ! -f "$KAFKA_DATA/meta.properties" ]; then
        log "formatting Kafka storage (cluster id $(cat "$KAFKA_CLUSTER_ID_FILE"))"
        kafka_tool kafka.tools.StorageTool format --ignore-formatted \
            -t "$(cat "$KAFKA_CLUSTER_ID_FILE")" -c "$KAFKA_PROPS" >/dev/null
    fi
}

# Starts the broker in the background; kafka_wait checks it came up.
kafka_start() {
    if kafka_pid >/dev/null; then
        return 0
    fi
    if port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
        # Another checkout's broker (or one left by an earlier session) is as good as ours
        # if it speaks Kafka; anything else on the port is an error.
        command -v java >/dev/null 2>&1 || ensure_java_and_maven
        fetch_kafka
        if kafka_tool kafka.admin.BrokerApiVersionsCommand \
            --bootstrap-server "$KAFKA_HOST:$KAFKA_PORT" >/dev/null 2>&1; then
            log "reusing the Kafka broker already answering on $KAFKA_HOST:$KAFKA_PORT"
            KAFKA_FOREIGN=1
            return 0
        fi
        die "something else listens on $KAFKA_HOST:$KAFKA_PORT (not a Kafka broker); stop it first"
    fi
    command -v java >/dev/null 2>&1 || ensure_java_and_maven
    fetch_kafka
    configure_kafka
    log "starting Kafka $KAFKA_VERSION (KRaft, single node) on $KAFKA_HOST:$KAFKA_PORT"
    rm -f "$KAFKA_LOG"
    rm -f "$KAFKA_PIDFILE"
    # setsid: the broker must outlive the shell (and process group) that started it. The
    # inner shell writes its own pid, then becomes the JVM (exec), so the pidfile is exact.
    # 9>&-: the broker must not inherit the lock of lock_infra.
    nohup setsid bash -c 'printf "%s\n" "$$" >"$1"; shift; exec "$@"' _ "$KAFKA_PIDFILE" \
        java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
        -Djoinedup.kafka.home="$KAFKA_DIR" \
        -Dkafka.logs.dir="$KAFKA_DIR" \
        -Dlog4j.configuration="file:$KAFKA_SRC/log4j.properties" \
        -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_PROPS" >"$KAFKA_OUT" 2>&1 </dev/null 9>&- &
    KAFKA_STARTED=1
}

kafka_wait() {
    local pid="" start="$SECONDS"
    [ "${KAFKA_FOREIGN:-0}" = 1 ] && return 0
    while :; do
        if ! pid="$(kafka_pid)"; then
            # Right after the start the pidfile may not be written yet, or its pid may not
            # have become the JVM yet: allow a few seconds before calling the broker dead.
            if [ $((SECONDS - start)) -ge 5 ]; then
                tail -n 30 "$KAFKA_LOG" "$KAFKA_OUT" 2>/dev/null >&2 || true
                die "Kafka exited during start-up; see ${KAFKA_LOG#"$REPO_ROOT"/}"
            fi
        elif grep -q 'Kafka Server started' "$KAFKA_LOG" 2>/dev/null &&
            port_open "$KAFKA_HOST" "$KAFKA_PORT"; then
            break
        fi
        if [ $((SECONDS - start)) -ge "$KAFKA_START_TIMEOUT" ]; then
            tail -n 30 "$KAFKA_LOG" "$KAFKA_OUT" 2>/dev/null >&2 || true
            die "Kafka (pid $pid) did not start within ${KAFKA_START_TIMEOUT}s"
        fi
        sleep 1
    done
    if [ "${KAFKA_STARTED:-0}" = 1 ]; then
        # The log line means the broker finished starting; also ask it over the wire.
        kafka_tool kafka.admin.BrokerApiVersionsCommand \
            --bootstrap-server "$KAFKA_HOST:$KAFKA_PORT" >/dev/null ||
            die "Kafka started but does not answer API requests on $KAFKA_HOST:$KAFKA_PORT"
        log "Kafka is up (pid $pid, log ${KAFKA_LOG#"$REPO_ROOT"/})"
    else
        log "Kafka already running (pid $pid)"
    fi
}

ensure_postgres_installed() {
    command -v pg_ctlcluster >/dev/null 2>&1 && [ -n "$(pg_version)" ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "PostgreSQL (Debian postgresql-common) is not installed"
    log "installing PostgreSQL (apt-get)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
}

postgres_up() {
    local ver
    ensure_postgres_installed
    ver="$(pg_version)"
    [ -n "$ver" ] || die "no PostgreSQL server found under /usr/lib/postgresql"
    if ! pg_cluster_exists; then
        log "creating PostgreSQL $ver cluster '$PG_CLUSTER' on port $PG_PORT"
        as_root pg_createcluster "$ver" "$PG_CLUSTER" --port "$PG_PORT" \
            -- --auth-local=peer --auth-host=scram-sha-256 >/dev/null
    fi
    if pg_cluster_online; then
        log "PostgreSQL $ver/$PG_CLUSTER already running on 127.0.0.1:$PG_PORT"
    else
        log "starting PostgreSQL $ver/$PG_CLUSTER on 127.0.0.1:$PG_PORT"
        as_root pg_ctlcluster "$ver" "$PG_CLUSTER" start 9>&- # daemons must not hold the lock
    fi
    local i
    for i in $(seq 1 30); do
        pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break
        [ "$i" -eq 30 ] && die "PostgreSQL does not accept connections on 127.0.0.1:$PG_PORT"
        sleep 1
    done
    # Role and database, idempotently (the password is reset to the known one every time).
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres >/dev/null <<SQL
DO \$\$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_USER') THEN
        CREATE ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
    ELSE
        ALTER ROLE $PG_USER LOGIN CREATEDB PASSWORD '$PG_PASSWORD';
    END IF;
END
\$\$;
SELECT 'CREATE DATABASE $PG_DATABASE OWNER $PG_USER'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$PG_DATABASE')
\gexec
SQL
}

up_local() {
    log "no Docker engine: running PostgreSQL and Kafka as local processes"
    mkdir -p "$KAFKA_DIR"
    kafka_start # the broker boots in the background while PostgreSQL starts
    postgres_up
    kafka_wait
}

lock_infra
if docker_available; then
    up_docker
else
    up_local
fi
write_infra_env
log "infrastructure is up"

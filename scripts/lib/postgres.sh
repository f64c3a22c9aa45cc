# Postgres for the run and test scripts: use the one given, else the machine's on
# 127.0.0.1:5432, else start one from the system's binaries with its data in .data/.
# Sourced; expects to run from the project root.

PG_LOCAL_PORT=${RSOLV_LOCAL_PG_PORT:-54329}
PG_LOCAL_DIR="$PWD/.data/postgres"

pg_bindir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

pg_answers() { # host port
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$1" -p "$2" -t 2
    else
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
    fi
}

install_postgres_binaries() {
    [ -n "$(pg_bindir)" ] && return 0
    echo "==> installing PostgreSQL from the system's packages" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL is not installed and this is not root: install the 'postgresql' package, or set DATABASE_URL" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
}

# Runs a Postgres binary as the postgres user when we are root (initdb refuses root).
as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Starts (or reuses) the project-local server; prints its admin URL.
start_local_postgres() {
    install_postgres_binaries || return 1
    local bin
    bin=$(pg_bindir)
    mkdir -p "$PG_LOCAL_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres "$PG_LOCAL_DIR" "$PWD/.data"
    if [ ! -f "$PG_LOCAL_DIR/PG_VERSION" ]; then
        echo "==> initialising a local Postgres in $PG_LOCAL_DIR" >&2
        as_pg_user "$bin/initdb" -D "$PG_LOCAL_DIR" -U postgres --auth=trust -E UTF8 >/dev/null
    fi
    if ! pg_answers 127.0.0.1 "$PG_LOCAL_PORT"; then
        echo "==> starting the local Postgres on 127.0.0.1:$PG_LOCAL_PORT" >&2
        as_pg_user "$bin/pg_ctl" -D "$PG_LOCAL_DIR" -w -l "$PG_LOCAL_DIR/server.log" \
            -o "-p $PG_LOCAL_PORT -k $PG_LOCAL_DIR -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
    fi
    echo "postgres://postgres@127.0.0.1:$PG_LOCAL_PORT/postgres"
}

# The machine's own cluster on 5432, started if it exists but is down.
start_system_postgres() {
    pg_answers 127.0.0.1 5432 && return 0
    if command -v pg_lsclusters >/dev/null 2>&1 && [ -n "$(ls /etc/postgresql 2>/dev/null)" ]; then
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        echo "==> starting the system Postgres cluster $version/main" >&2
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
        for _ in $(seq 1 30); do pg_answers 127.0.0.1 5432 && return 0; sleep 1; done
    fi
    return 1
}

# Prints an admin URL (a database to CREATE DATABASE from) for tests.
ensure_test_postgres() {
    if [ -n "${TEST_DATABASE_URL:-}" ]; then
        echo "$TEST_DATABASE_URL"
    elif start_system_postgres; then
        echo "postgres://postgres@127.0.0.1:5432/postgres"
    else
        start_local_postgres
    fi
}

# Creates database $2 on the server at admin URL $1 unless it exists.
ensure_database() {
    local admin=$1 name=$2
    local psql
    psql=$(command -v psql || echo "$(pg_bindir)/psql")
    if [ "$("$psql" "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$name'")" != "1" ]; then
        "$psql" "$admin" -qc "CREATE DATABASE $name" >/dev/null
    fi
    echo "${admin%/*}/$name"
}

#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests/test_postgres.py (MLflow's backend store in the
# README's team set-up), bound to 127.0.0.1 only.
#
#   .ci/postgres.sh          start it (or reuse the running one); prints ONE line on stdout,
#                            the URI of database `mlflow`, role `mlflow` (CREATEDB, so a test
#                            can make a fresh database per run):
#                              postgresql://mlflow:mlflow@127.0.0.1:54329/mlflow
#   .ci/postgres.sh stop     stop it and delete its data directory
#
# Meant for CI on Debian, run as root: installs Debian's `postgresql` package when no server
# binaries are found. Run by another user it works too if the binaries are already installed.
# Everything but the URI goes to stderr; on failure it exits 1 with a one-line reason
# (`postgres.sh: error: ...`) as its last stderr line.
#
# Settings (environment): MLFLOW_PG_PORT (54329), MLFLOW_PG_DATA (/tmp/mlflow-pg).
# The data is throwaway: fsync is off, and `stop` removes the directory.
set -euo pipefail
set -E  # the ERR trap below also fires inside functions

PORT="${MLFLOW_PG_PORT:-54329}"
DATA="${MLFLOW_PG_DATA:-/tmp/mlflow-pg}"
LOG="${DATA}-setup.log"            # output of apt-get, initdb, pg_ctl, psql (kept out of CI's log)
MARK="$DATA/.mlflow-ci-cluster"     # `stop` only deletes a directory that this script created
USER_ROLE=mlflow PASSWORD=mlflow DB=mlflow
URI="postgresql://$USER_ROLE:$PASSWORD@127.0.0.1:$PORT/$DB"

# stdout is kept for the URI alone (fd 3); whatever the commands below print goes to stderr.
exec 3>&1 1>&2
: >"$LOG" 2>/dev/null || LOG=/dev/null   # this run's log only

die() { echo "postgres.sh: error: $*" >&2; exit 1; }
trap 'die "line $LINENO: \`$BASH_COMMAND\` failed (exit $?; log: $LOG)"' ERR
say() { echo "postgres.sh: $*" >&2; }

# Run "$@" with its output in $LOG; on failure, die with DESC as the reason.
quiet() {
    local desc="$1"; shift
    "$@" >>"$LOG" 2>&1 3>&- || die "$desc failed (exit $?; log: $LOG)"
}

# Server programs run as `postgres` when we are root (the server refuses to run as root),
# else as ourselves. `cd /`: runuser keeps the cwd, which `postgres` may not be allowed to read.
as_pg() {
    if [[ $EUID -eq 0 ]]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

# The newest Debian server installation (/usr/lib/postgresql/<major>/bin), else initdb on PATH.
find_bin() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres && -x $dir/psql ]] && { echo "$dir"; return; }
    done
    dir="$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")"
    [[ -x $dir/pg_ctl && -x $dir/psql ]] && echo "$dir" || true
}

install_postgresql() {
    [[ $EUID -eq 0 ]] || die "PostgreSQL server programs not found, and not root to install them (apt-get install postgresql)"
    command -v apt-get >/dev/null || die "PostgreSQL server programs not found, and no apt-get to install them"
    say "installing Debian's postgresql (log: $LOG)"
    # Debian's package would create (and try to start) a `main` cluster on port 5432 that we do
    # not use: skip it for this install only (the setting file is removed again afterwards).
    local skip=/etc/postgresql-common/createcluster.d/zz-mlflow-ci-no-main.conf
    mkdir -p "$(dirname "$skip")"
    echo "create_main_cluster = false" >"$skip"
    local rc=0
    {
        apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            -o DPkg::Lock::Timeout=120 postgresql
    } >>"$LOG" 2>&1 3>&- || rc=$?   # 3>&-: a daemon started by a postinst must not hold our stdout
    rm -f "$skip"
    [[ $rc -eq 0 ]] || die "apt-get install postgresql failed (exit $rc; log: $LOG)"
}

is_running() { [[ -f $DATA/PG_VERSION ]] && as_pg "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

# Is anything accepting TCP connections on 127.0.0.1:$PORT?
port_taken() { (exec 9<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# psql as the superuser over the Unix socket in $DATA (trust: only its owner can reach it).
psql_su() { as_pg "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DATA" -p "$PORT" -U postgres -d postgres -Atc "$1"; }

start() {
    BIN="$(find_bin)"
    if [[ -z $BIN ]]; then
        install_postgresql
        BIN="$(find_bin)"
        [[ -n $BIN ]] || die "postgresql installed, but no initdb/pg_ctl found under /usr/lib/postgresql"
    fi
    if [[ $EUID -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "no \`postgres\` user to run the server as (Debian's postgresql-common creates it)"
    fi

    if is_running; then
        say "reusing the running cluster in $DATA"
    else
        if [[ ! -f $DATA/PG_VERSION ]]; then
            [[ ! -e $DATA || -z "$(ls -A "$DATA" 2>/dev/null)" ]] || die "$DATA exists and is not a PostgreSQL data directory (set MLFLOW_PG_DATA)"
            mkdir -p "$DATA"
            [[ $EUID -ne 0 ]] || chown postgres: "$DATA"
            chmod 700 "$DATA"
            say "initdb $DATA ($("$BIN/postgres" --version))"
            # Superuser `postgres`; trust on the Unix socket (in the 0700 data directory), a
            # password (SCRAM) over TCP. --no-sync: throwaway data.
            quiet "initdb" as_pg "$BIN/initdb" -D "$DATA" -U postgres --auth-local=trust \
                --auth-host=scram-sha-256 --encoding=UTF8 --locale=C --no-sync --no-instructions
            as_pg tee -a "$DATA/postgresql.conf" >/dev/null <<EOF

# .ci/postgres.sh: loopback only, socket in the data directory, no durability (throwaway)
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$DATA'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
            as_pg touch "$MARK"
        fi
        port_taken && die "127.0.0.1:$PORT is taken by another process (set MLFLOW_PG_PORT)"
        say "starting PostgreSQL on 127.0.0.1:$PORT"
        # The server outlives this script: it must not inherit our stdout (fd 3) or any other
        # pipe, or `$(.ci/postgres.sh)` would wait for it to exit. Its own output: server.log.
        (
            for fd in $(ls "/proc/$BASHPID/fd"); do
                [[ $fd -le 2 ]] || eval "exec $fd>&-"
            done
            exec </dev/null >>"$LOG" 2>&1
            as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w -t 60 \
                -o "-h 127.0.0.1 -p $PORT -k $DATA" start
        ) || die "pg_ctl start failed: $(tail -n 1 "$DATA/server.log" 2>/dev/null || echo "see $LOG")"
    fi

    # Role and database, created once; the role may create databases (one per test run).
    if [[ "$(psql_su "SELECT 1 FROM pg_roles WHERE rolname = '$USER_ROLE'")" != 1 ]]; then
        quiet "CREATE ROLE $USER_ROLE" psql_su "CREATE ROLE $USER_ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
    else
        quiet "ALTER ROLE $USER_ROLE" psql_su "ALTER ROLE $USER_ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'"
    fi
    if [[ "$(psql_su "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]]; then
        quiet "CREATE DATABASE $DB" psql_su "CREATE DATABASE $DB OWNER $USER_ROLE"
    fi

    # The URI must work as printed: TCP, password, the role's own database.
    quiet "connecting to $URI" env PGCONNECT_TIMEOUT=10 "$BIN/psql" -X -Atc "SELECT 1" "$URI"
    echo "$URI" >&3
}

stop() {
    BIN="$(find_bin)"
    [[ -f $DATA/PG_VERSION ]] || { say "no cluster in $DATA"; return 0; }
    [[ -n $BIN ]] || die "no pg_ctl found to stop the cluster in $DATA"
    if is_running; then
        quiet "pg_ctl stop" as_pg "$BIN/pg_ctl" -D "$DATA" -m fast -w stop
        say "stopped the cluster in $DATA"
    fi
    if [[ -f $MARK ]]; then
        rm -rf "$DATA"
        say "removed $DATA"
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 [start|stop]" ;;
esac

#!/bin/sh
# PostgreSQL for the platform: on first start, a cluster with trust auth for the compose
# network only; on every start, one database per platform store that is not there yet
# (a volume made before a store was added gets it on its next start); then the server in
# the foreground.
#   POSTGRES_LISTEN   addresses to listen on (default '*'; the loopback test sets 127.0.0.1)
#   PGPORT            port (default 5432)
#   POSTGRES_DBS      databases the platform's stores need (the compose file names them)
set -eu
: "${PGDATA:=/var/lib/postgresql/data}" "${PGPORT:=5432}" "${POSTGRES_LISTEN:=*}"
: "${POSTGRES_DBS:=consent ledger coordinator policies market}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    initdb -D "$PGDATA" -U fedcredit --auth=trust --encoding=UTF8 --no-instructions >/dev/null
    # The compose network (never published): the platform's services connect without a password.
    echo "host all fedcredit samenet trust" >> "$PGDATA/pg_hba.conf"
fi
# Only the local socket while the databases are checked: no service connects before.
postgres -D "$PGDATA" -p "$PGPORT" -c listen_addresses='' -k /run/postgresql &
pid=$!
until pg_isready -q -h /run/postgresql -p "$PGPORT"; do sleep 0.2; done
for db in $POSTGRES_DBS; do
    known=$(psql -h /run/postgresql -p "$PGPORT" -U fedcredit -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$db'")
    if [ "$known" != 1 ]; then
        createdb -h /run/postgresql -p "$PGPORT" -U fedcredit "$db"
        echo "postgres-entrypoint: created database $db"
    fi
done
kill -INT "$pid"; wait "$pid" || true
exec postgres -D "$PGDATA" -p "$PGPORT" -c listen_addresses="$POSTGRES_LISTEN" -k /run/postgresql

#!/usr/bin/env bash
# Failover drill (issue 10): losing the database machine loses nothing.
#
#  1. A PostgreSQL primary and a hot standby (pg_basebackup), with
#     synchronous replication: a commit returns once the standby has it.
#  2. Tablets (the `crvs` CLI) sync approved births through a crvs-server
#     on the primary, and hold the KIdCs they received.
#  3. More births; the tablets sync at once, and the primary is killed
#     with kill -9 in the middle.
#  4. The standby is promoted; the server restarts on it.
#  5. The tablets sync again until everything is acknowledged.
#
# Then, on the promoted standby: every KIdC a tablet held before the kill
# is in the issuance log for the same record, issued then (not recorded
# again from the tablet's evidence: the standby had it); every KIdC a
# tablet holds at the end is in the log for its record; no code is issued
# twice and no record has two; every record of every tablet is there;
# every device's change sets are there without a gap, up to the last one
# its tablet sealed.
#
# Usage: .ci/failover-drill.sh [TARGET_DIR]   (binaries from TARGET_DIR,
# default target/debug; built if missing). Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${1:-target/debug}
if [ ! -x "$TARGET/crvs-server" ] || [ ! -x "$TARGET/crvs" ]; then
    cargo build --quiet -p crvs-server -p crvs-core --bins
fi
SERVER_BIN=$(realpath "$TARGET/crvs-server")
CRVS_BIN=$(realpath "$TARGET/crvs")

PGBIN=$(pg_config --bindir 2>/dev/null || true)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
fi
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
    echo "failover drill: PostgreSQL is not installed (apt-get install postgresql)" >&2
    exit 1
fi

WORK=$(mktemp -d /tmp/crvs-drill.XXXXXX)
chmod 755 "$WORK"
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$WORK/pg"
    chown postgres "$WORK/pg"
else
    mkdir -p "$WORK/pg"
fi
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/primary" stop -m immediate >/dev/null 2>&1 || true
    as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/standby" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
P1=$(free_port)
P2=$(free_port)
while [ "$P2" = "$P1" ]; do P2=$(free_port); done
say() { echo "drill: $*"; }
fail() { echo "drill FAILED: $*" >&2; exit 1; }

say "1. primary on port $P1, synchronous standby on port $P2"
as_pg "$PGBIN/initdb" -D "$WORK/pg/primary" -A trust -U crvs -E UTF8 --no-instructions >/dev/null
cat >>"$WORK/pg/primary/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $P1
unix_socket_directories = '$WORK/pg'
wal_level = replica
max_wal_senders = 4
synchronous_commit = on
fsync = on
EOF
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/primary" -l "$WORK/pg/primary.log" -w start >/dev/null
as_pg "$PGBIN/createdb" -h 127.0.0.1 -p "$P1" -U crvs crvs
as_pg "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$P1" -U crvs -D "$WORK/pg/standby" -R -X stream -c fast
cat >>"$WORK/pg/standby/postgresql.auto.conf" <<EOF
primary_conninfo = 'host=127.0.0.1 port=$P1 user=crvs application_name=standby'
port = $P2
EOF
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/standby" -l "$WORK/pg/standby.log" -w start >/dev/null
psql1() { "$PGBIN/psql" -h 127.0.0.1 -p "$P1" -U crvs -d crvs -XAtq -c "$1"; }
psql2() { "$PGBIN/psql" -h 127.0.0.1 -p "$P2" -U crvs -d crvs -XAtq -c "$1"; }
# Synchronous from now on (a commit waits for the standby).
psql1 "ALTER SYSTEM SET synchronous_standby_names = 'standby'" >/dev/null
psql1 "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 50); do
    [ "$(psql1 "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'")" = sync ] && break
    sleep 0.2
done
[ "$(psql1 "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby'")" = sync ] ||
    fail "the standby is not a synchronous standby"

SRV="$WORK/server"
serve() {
    CRVS_DATABASE_URL="postgres://crvs@127.0.0.1:$1/crvs" RUST_LOG=warn \
        "$SERVER_BIN" serve --json --data "$SRV" --listen "127.0.0.1:${2:-0}" \
        >"$WORK/serve.out" 2>>"$WORK/serve.err" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 100); do
        grep -q listening "$WORK/serve.out" 2>/dev/null && break
        sleep 0.1
    done
    ADDR=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["listening"])' "$WORK/serve.out")
}
serve "$P1"
URL="http://$ADDR"
say "2. server on the primary at $URL"

export CRVS_PASSPHRASE="correct horse battery staple"
TABLETS=(171003 171004 171005)
BIRTHS=$(mktemp -p "$WORK")
python3 - "$BIRTHS" <<'EOF'
import json, sys, datetime
out = open(sys.argv[1], "w")
today = datetime.date.today()
for line in open("fixtures/births-sample.jsonl"):
    b = json.loads(line)
    if datetime.date.fromisoformat(b["child"]["date_of_birth"]) <= today:
        out.write(line)
EOF
crvs() { "$CRVS_BIN" --json --store "$WORK/tablet-$1" "${@:2}"; }
register() { # tablet commune, line number
    local f="$WORK/birth-$1-$2.json"
    sed -n "${2}p" "$BIRTHS" | python3 -c '
import json, sys
b = json.loads(sys.stdin.read())
v = b["residence_village_code"]
b["residence_village_code"] = sys.argv[1] + v[6:]
print(json.dumps(b))' "$1" >"$f"
    local id
    id=$(crvs "$1" birth register "$f" --by clerk-01 | python3 -c 'import json,sys; print(json.load(sys.stdin)["record_id"])')
    crvs "$1" verify "$id" --by clerk-02 >/dev/null
    crvs "$1" approve "$id" --by registrar-01 >/dev/null
}
line=1
for c in "${TABLETS[@]}"; do
    token=$(CRVS_DATABASE_URL="postgres://crvs@127.0.0.1:$P1/crvs" "$SERVER_BIN" --json enroll-token --data "$SRV" --commune "$c" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
    crvs "$c" init --commune "$c" >/dev/null
    crvs "$c" enroll --server "$URL" --token "$token" >/dev/null
    for _ in 1 2 3; do register "$c" $line; line=$((line + 1)); done
    crvs "$c" sync >/dev/null
done
held() { # commune -> "record_id kidc" per registered record
    crvs "$1" list | python3 -c '
import json, sys
for r in json.load(sys.stdin)["records"]:
    if r.get("kidc"):
        print(r["record_id"], r["kidc"])'
}
: >"$WORK/before"
for c in "${TABLETS[@]}"; do held "$c" >>"$WORK/before"; done
before=$(wc -l <"$WORK/before")
[ "$before" = 9 ] || fail "expected 9 codes on the tablets before the kill, found $before"
say "   $before births registered, their codes on the tablets"

say "3. more births, every tablet syncs at once, kill -9 the primary mid-sync"
for c in "${TABLETS[@]}"; do
    for _ in 1 2 3 4 5; do register "$c" $line; line=$((line + 1)); done
done
SYNC_PIDS=()
for c in "${TABLETS[@]}"; do
    (crvs "$c" sync >"$WORK/sync-$c.out" 2>&1 || true) &
    SYNC_PIDS+=($!)
done
sleep 0.15
PRIMARY_PID=$(head -1 "$WORK/pg/primary/postmaster.pid")
kill -9 "$PRIMARY_PID"
for p in "${SYNC_PIDS[@]}"; do wait "$p" || true; done
cut=$( (grep -L '"pending":0' "$WORK"/sync-*.out || true) | wc -l)
say "   primary (pid $PRIMARY_PID) killed; $cut of ${#TABLETS[@]} syncs did not complete"

say "4. promote the standby, restart the server on it"
kill -9 "$SERVER_PID" 2>/dev/null || true
wait "$SERVER_PID" 2>/dev/null || true
as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/standby" -w promote >/dev/null
: >"$WORK/serve.out"
serve "$P2" "${ADDR##*:}"
[ "http://$ADDR" = "$URL" ] || fail "the server came back on another address ($ADDR)"

say "5. the tablets sync again"
for c in "${TABLETS[@]}"; do
    ok=0
    for _ in $(seq 10); do
        if out=$(crvs "$c" sync 2>/dev/null) &&
            [ "$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pending"])')" = 0 ]; then
            ok=1
            break
        fi
        sleep 1
    done
    [ $ok = 1 ] || fail "tablet $c did not finish its sync after the failover"
done

say "checks on the promoted standby"
: >"$WORK/after"
for c in "${TABLETS[@]}"; do held "$c" >>"$WORK/after"; done
after=$(wc -l <"$WORK/after")
[ "$after" = 24 ] || fail "expected 24 registered births on the tablets, found $after"
while read -r record kidc; do
    got=$(psql2 "SELECT kidc || ' ' || reason FROM kidc_issuance WHERE record_id = '$record'")
    [ "$got" = "$kidc birth_approved" ] ||
        fail "a code acknowledged before the kill is not in the standby's log as issued then (record $record: '$got')"
done <"$WORK/before"
while read -r record kidc; do
    got=$(psql2 "SELECT kidc FROM kidc_issuance WHERE record_id = '$record'")
    [ "$got" = "$kidc" ] || fail "record $record: the tablet holds a code the issuance log does not give it"
done <"$WORK/after"
[ "$(cut -d' ' -f2 "$WORK/after" | sort | uniq -d | wc -l)" = 0 ] || fail "a code held by two records"
[ "$(psql2 "SELECT count(*) - count(DISTINCT kidc) FROM kidc_issuance")" = 0 ] || fail "a code issued twice"
[ "$(psql2 "SELECT count(*) - count(DISTINCT record_id) FROM kidc_issuance")" = 0 ] || fail "a record with two codes"
[ "$(psql2 "SELECT count(*) FROM kidc_issuance")" = 24 ] || fail "the issuance log does not hold exactly the 24 codes"
[ "$(psql2 "SELECT count(*) FROM records")" = 24 ] || fail "the server does not hold exactly the 24 records"
gaps=$(psql2 "SELECT count(*) FROM devices d WHERE d.last_seq <> (SELECT count(*) FROM change_set_log l WHERE l.device_id = d.device_id)")
[ "$gaps" = 0 ] || fail "a device's change-set log has a gap"
say "PASSED: 9 codes acknowledged before the kill kept (issued then, on the standby), 24 records, 24 codes, none twice"

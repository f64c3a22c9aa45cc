#!/usr/bin/env bash
# What a claim and a completion cost Postgres alone in each layout of layouts.sql: pgbench,
# no worker, no API. Findings and how to read them: BENCHMARKS.md, "What a queue table
# could buy". A scratch database `queue_layouts` is created with the migrations.
#
#   bench/queue-layouts/run.sh noop  [rounds]   claim + complete no-op jobs, 8 connections
#   bench/queue-layouts/run.sh usage [rounds]   a settling claim of usage jobs (2 connections),
#                                               and the API's group insert (4 connections)
#
# Settings: LAYOUTS (the noop layouts, default all four: jobs jobs2 jobs3 jobs4), BATCH
# (jobs per claim, default 100), ROWS (rows per group insert, default 32), FF (fillfactor
# of the new layouts, default 50), JOBS (jobs queued per round, default 200000); PGHOST,
# PGPORT, PGUSER as for psql (default 127.0.0.1, postgres). Each figure is jobs (or rows)
# a second; noop also prints each layout's share of the ceiling measured in the same round.
#
# These are statements on freshly vacuumed tables. They have over-predicted whole workers
# every time a layout was built: trust a layout only once whole workers measure it
# (BENCHMARKS.md, "A queue table again, and completions in place, in whole workers").
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export PGHOST=${PGHOST:-127.0.0.1} PGUSER=${PGUSER:-postgres}
mode=${1:-noop} rounds=${2:-3}
batch=${BATCH:-100} rows=${ROWS:-32} ff=${FF:-50} jobs=${JOBS:-200000}
db=queue_layouts

psql -d postgres -q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
for migration in "$root"/migrations/*.sql; do
    # CREATE INDEX CONCURRENTLY cannot run in a transaction block.
    if grep -q CONCURRENTLY "$migration"; then single=(); else single=(-1); fi
    psql -d "$db" -q -v ON_ERROR_STOP=1 "${single[@]}" -f "$migration" >/dev/null 2>&1
done

# Jobs per second of one pgbench script: $1 script, $2 connections, $3 synchronous_commit,
# $4 jobs per transaction (default the claim's batch). Each connection runs enough
# transactions to take 80 % of the queue, never running dry.
rate() {
    local batch=${4:-$batch}
    local tx=$((jobs * 8 / 10 / $2 / batch))
    PGOPTIONS="-c synchronous_commit=$3" pgbench -n -M simple -c "$2" -j 2 -t "$tx" -D batch="$batch" \
        -f "$here/$1" "$db" 2>&1 | sed -n "s/^tps = \([0-9.]*\) .*/\1/p" | awk -v b="$batch" '{printf "%d", $1 * b}'
}
layouts() { psql -d "$db" -q -v ON_ERROR_STOP=1 -v n="$1" -v ff="$ff" -v kind=bench_noop -f "$here/layouts.sql" >/dev/null 2>&1; }

for round in $(seq "$rounds"); do
    case $mode in
    noop)
        layouts "$jobs"
        # The ceiling as rsolv-bench defines it: batches of 100, commits waited for (the
        # workers' bookkeeping does not wait).
        ceiling=$(rate ceiling.sql 8 on 100)
        line="round $round (batch $batch, fillfactor $ff): ceiling $ceiling"
        for layout in ${LAYOUTS:-jobs jobs2 jobs3 jobs4}; do
            figure=$(rate "$layout.sql" 8 off)
            line+=", $layout $figure ($((figure * 100 / ceiling)) %)"
        done
        echo "$line"
        ;;
    usage)
        layouts 0
        psql -d "$db" -q -v ON_ERROR_STOP=1 -v n="$jobs" -f "$here/usage.sql" >/dev/null 2>&1
        # Money paths: commits waited for.
        line="round $round (batch $batch, rows $rows, fillfactor $ff): settle jobs $(rate settle_jobs.sql 2 on), settle jobs3 $(rate settle_jobs3.sql 2 on)"
        line+=", insert jobs $(rate insert_jobs.sql 4 on "$rows"), insert jobs3 $(rate insert_jobs3.sql 4 on "$rows")"
        echo "$line"
        ;;
    *) echo "usage: $0 noop|usage [rounds]" >&2; exit 2 ;;
    esac
done

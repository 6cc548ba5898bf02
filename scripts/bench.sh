#!/usr/bin/env bash
# Benchmark: kbackup against the baselines, measured in the same run on the same
# data (these machines are shared and noisy: compare ratios, not seconds).
#
#   scripts/bench.sh [SCALE] [RUNS]     (defaults: 20 and 3; SCALE 100 is about 1.5 GB)
#
# Baselines (../shared/bench/README.md):
#   floor  pg_dump -Fc -Z0 DB > /dev/null     (reading the data out once)
#   seed   pg_dump -Fc DB > file              (what the seed's backup.sh does)
#   seed restore     dropdb; createdb; pg_restore -d DB file   (the seed's restore.sh)
#   parallel restore createdb; pg_restore -j2 -d DB file
# against `kbackup restore` (file check, scratch database, row-count proof, swap)
# and `kbackup verify --quick`.
# Prints the median of each, kbackup's ratios to them, output sizes and peak memory.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SCALE=${1:-20}
RUNS=${2:-3}
DATASET=${BENCH_DATASET:-$ROOT/../shared/bench/dataset.sql}
[ -f "$DATASET" ] || die "reference dataset not found at $DATASET (set BENCH_DATASET)"

release_and_cluster bench
say "loading the reference dataset at scale $SCALE"
createdb app
psql -q -v ON_ERROR_STOP=1 -v scale="$SCALE" -d app -f "$DATASET" >/dev/null
psql -Atc "SELECT 'database size: ' || pg_size_pretty(pg_database_size('app'))"

export BACKUP_DIR="$WORK/store" DB_NAME=app POSTGRES_HOST="$PGHOST" POSTGRES_PORT="$PGPORT"
# timed NAME CMD...: appends "wall_seconds peak_kb" to $WORK/NAME
timed() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; die "$name failed"; }
  cat "$WORK/t" >> "$WORK/$name"
}
for i in $(seq "$RUNS"); do
  say "run $i of $RUNS"
  timed floor sh -c 'pg_dump -Fc -Z0 app > /dev/null'
  timed seed sh -c "pg_dump -Fc app > '$WORK/seed.dump'"
  rm -rf "$BACKUP_DIR"
  timed kbackup "$KB" backup
  timed seed_restore sh -c "dropdb --if-exists app_seed && createdb app_seed && pg_restore -d app_seed '$WORK/seed.dump'"
  timed parallel_restore sh -c "dropdb --if-exists app_par && createdb app_par && pg_restore -j2 -d app_par '$WORK/seed.dump'"
  timed kbackup_restore "$KB" restore --latest --target-db app_kb --yes --drop-old
  timed kbackup_verify_quick "$KB" verify --quick
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$2" '{print $c}' "$WORK/$1" | median; }
floor=$(col floor 1); seed=$(col seed 1); kb=$(col kbackup 1)
seed_size=$(stat -c %s "$WORK/seed.dump")
kb_size=$(stat -c %s "$BACKUP_DIR"/hourly/*.dump.zst)
printf '\n%-34s %10s %12s %12s\n' "command" "median s" "peak RSS KB" "output bytes"
printf '%-34s %10s %12s %12s\n' "pg_dump -Fc -Z0 > /dev/null (floor)" "$floor" "$(col floor 2)" "-"
printf '%-34s %10s %12s %12s\n' "pg_dump -Fc > file (seed)" "$seed" "$(col seed 2)" "$seed_size"
printf '%-34s %10s %12s %12s\n' "kbackup backup" "$kb" "$(col kbackup 2)" "$kb_size"
awk -v k="$kb" -v f="$floor" -v s="$seed" -v ks="$kb_size" -v ss="$seed_size" 'BEGIN {
  printf "\nkbackup / floor: %.2fx   kbackup / seed: %.2fx   size kbackup / seed: %.2fx\n", k/f, k/s, ks/ss }'
sr=$(col seed_restore 1); pr=$(col parallel_restore 1); kr=$(col kbackup_restore 1); vq=$(col kbackup_verify_quick 1)
printf '\n%-34s %10s %12s\n' "restore" "median s" "peak RSS KB"
printf '%-34s %10s %12s\n' "seed: dropdb; createdb; pg_restore" "$sr" "$(col seed_restore 2)"
printf '%-34s %10s %12s\n' "createdb; pg_restore -j2" "$pr" "$(col parallel_restore 2)"
printf '%-34s %10s %12s\n' "kbackup restore (checked, swapped)" "$kr" "$(col kbackup_restore 2)"
printf '%-34s %10s %12s\n' "kbackup verify --quick" "$vq" "$(col kbackup_verify_quick 2)"
awk -v k="$kr" -v s="$sr" -v p="$pr" 'BEGIN { printf "\nkbackup restore / seed restore: %.2fx   / parallel restore: %.2fx\n", k/s, k/p }'

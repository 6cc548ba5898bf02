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
# and `kbackup verify --quick`; and the same backup and restore encrypted with
# age (BACKUP_AGE_RECIPIENTS / BACKUP_AGE_IDENTITY) against unencrypted.
# Prints the median of each, kbackup's ratios to them, output sizes and peak memory.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SCALE=${1:-20}
RUNS=${2:-3}
DATASET=${BENCH_DATASET:-$ROOT/../shared/bench/dataset.sql}
[ -f "$DATASET" ] || die "reference dataset not found at $DATASET (set BENCH_DATASET)"

release_and_cluster bench
ensure age
age-keygen -o "$WORK/age-key.txt" 2>/dev/null
AGE_PUB=$(age-keygen -y "$WORK/age-key.txt")
say "loading the reference dataset at scale $SCALE"
createdb app
psql -q -v ON_ERROR_STOP=1 -v scale="$SCALE" -d app -f "$DATASET" >/dev/null
psql -Atc "SELECT 'database size: ' || pg_size_pretty(pg_database_size('app'))"

export BACKUP_DIR="$WORK/store" DB_NAME=app POSTGRES_HOST="$PGHOST" POSTGRES_PORT="$PGPORT"
# timed NAME CMD...: appends "wall_seconds peak_kb" to $WORK/NAME (wall time
# to the microsecond from bash's clock; peak memory from /usr/bin/time)
timed() {
  local name=$1; shift
  local start=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; die "$name failed"; }
  local end=$EPOCHREALTIME
  echo "$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.4f", e - s }') $(cat "$WORK/t")" >> "$WORK/$name"
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
  rm -rf "$WORK/store-age"
  BACKUP_DIR="$WORK/store-age" BACKUP_AGE_RECIPIENTS="$AGE_PUB" timed kbackup_age "$KB" backup
  BACKUP_DIR="$WORK/store-age" BACKUP_AGE_IDENTITY="$WORK/age-key.txt" \
    timed kbackup_age_restore "$KB" restore --latest --target-db app_kba --yes --drop-old
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

ka=$(col kbackup_age 1); kar=$(col kbackup_age_restore 1)
printf '\n%-34s %10s %12s %12s\n' "encrypted (age) vs not" "median s" "peak RSS KB" "ratio"
printf '%-34s %10s %12s %12s\n' "kbackup backup" "$kb" "$(col kbackup 2)" "1.00x"
printf '%-34s %10s %12s %12s\n' "kbackup backup, encrypted" "$ka" "$(col kbackup_age 2)" "$(awk -v a="$ka" -v b="$kb" 'BEGIN { printf "%.2fx", a/b }')"
printf '%-34s %10s %12s %12s\n' "kbackup restore" "$kr" "$(col kbackup_restore 2)" "1.00x"
printf '%-34s %10s %12s %12s\n' "kbackup restore, encrypted" "$kar" "$(col kbackup_age_restore 2)" "$(awk -v a="$kar" -v b="$kr" 'BEGIN { printf "%.2fx", a/b }')"

# --- The store at scale: list, status and rotate --dry-run on a store of N
# backups (STORE_N, default 10000; generated by gen-store.py from the backup
# above, hard links and real manifests), and a backup into it. Baseline: the
# same commands on a store holding one backup, in the same run. The first
# command after the store changed reads its folders and manifests once and
# writes the index (shown as "cold"); the medians are of the runs after it.
STORE_N=${STORE_N:-10000}
say "store scale: generating a store of $STORE_N backups"
small="$WORK/store-1" big="$WORK/store-$STORE_N"
rm -rf "$small" "$big"
BACKUP_DIR="$small" "$KB" backup >/dev/null 2>&1
cp -a "$small" "$big"
python3 "$ROOT/scripts/gen-store.py" "$big" "$STORE_N"
export BACKUP_KEEP_HOURLY=$((STORE_N + 10)) BACKUP_KEEP_DAILY=0 BACKUP_KEEP_WEEKLY=0
for store in "$small" "$big"; do
  tag=$(basename "$store")
  BACKUP_DIR="$store" timed "cold_$tag" "$KB" list
  for i in $(seq "$RUNS"); do
    BACKUP_DIR="$store" timed "list_$tag" "$KB" list
    BACKUP_DIR="$store" timed "status_$tag" "$KB" status
    BACKUP_DIR="$store" timed "rotate_$tag" "$KB" rotate --dry-run
  done
  BACKUP_DIR="$store" timed "backup_$tag" "$KB" backup
done
ms() { awk '{printf "%.0f", $1 * 1000}'; }
printf '\n%-34s %12s %12s %14s %14s\n' "store of 1 vs $STORE_N backups" "1: ms" "$STORE_N: ms" "1: RSS KB" "$STORE_N: RSS KB"
for c in cold list status rotate backup; do
  printf '%-34s %12s %12s %14s %14s\n' "$c" "$(col "${c}_store-1" 1 | ms)" "$(col "${c}_store-$STORE_N" 1 | ms)" \
    "$(col "${c}_store-1" 2)" "$(col "${c}_store-$STORE_N" 2)"
done

# --- A crowded remote: `kbackup sync` to a local rclone remote holding
# REMOTE_N other objects (other databases' backups, 3 files each), against the
# same sync to an empty remote, in the same run: wall time and rclone calls.
REMOTE_N=${REMOTE_N:-5000}
say "remote scale: a remote of $REMOTE_N objects"
crowded="$WORK/remote-crowded" empty="$WORK/remote-empty"
rm -rf "$crowded" "$empty"
python3 - "$crowded" "$REMOTE_N" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
os.makedirs(os.path.join(root, "hourly"), exist_ok=True)
for i in range(n // 3 + 1):
    stem = "other%03d_2024-%02d-%02d_%02d-00-00" % (i % 100, 1 + (i // 700) % 12, 1 + (i // 24) % 28, i % 24)
    for ext in ("dump.zst", "manifest.json", "globals.sql"):
        with open(os.path.join(root, "hourly", "%s.%s" % (stem, ext)), "w") as f:
            f.write("x")
PY
printf '%s objects generated\n' "$(find "$crowded" -type f | wc -l)"
for remote in "$empty" "$crowded"; do
  tag=$(basename "$remote")
  for i in $(seq "$RUNS"); do
    rm -rf "$remote/daily" "$remote/weekly"
    find "$remote/hourly" -name 'app_*' -delete 2>/dev/null || true
    export RCLONE_CONFIG=/dev/null RCLONE_CONFIG_BENCH_TYPE=local RCLONE_REMOTE_NAME=bench RCLONE_REMOTE_PATH="$remote"
    BACKUP_DIR="$small" DEBUG=true timed "sync_$tag" "$KB" sync
    grep -c 'running: rclone' "$WORK/err" >> "$WORK/calls_$tag"
    unset RCLONE_CONFIG RCLONE_CONFIG_BENCH_TYPE RCLONE_REMOTE_NAME RCLONE_REMOTE_PATH
  done
done
printf '\n%-34s %12s %12s\n' "sync to a remote of" "median ms" "rclone calls"
printf '%-34s %12s %12s\n' "0 other objects" "$(col sync_remote-empty 1 | ms)" "$(median < "$WORK/calls_remote-empty")"
printf '%-34s %12s %12s\n' "$REMOTE_N other objects" "$(col sync_remote-crowded 1 | ms)" "$(median < "$WORK/calls_remote-crowded")"

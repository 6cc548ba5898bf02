#!/usr/bin/env bash
# Benchmark: every path a user runs, each against its baseline measured in the
# same run on the same data (these machines are shared and noisy: compare
# ratios, not seconds).
#
#   scripts/bench.sh [SCALE] [RUNS]     (defaults: 20 and 3; SCALE 100 is about 1.5 GB)
#   STORE_N=10000 REMOTE_N=5000         (the store-scale and remote-scale sizes)
#
# One PostgreSQL server, in a container (this machine's own server binaries,
# its data folder on the host disk), reached both ways: through `docker exec`
# (docker mode, the seed's) and through its socket mounted on the host (direct
# mode), so that the two modes are compared on the very same server.
# Baselines (../shared/bench/README.md):
#   floor          pg_dump -Fc -Z0 DB > /dev/null   (reading the data out once)
#   bare restore   createdb; pg_restore -j2 -d DB   of kbackup's own archive,
#                  decompressed beforehand (not timed)
#   seed           pg_dump -Fc DB > file; dropdb; createdb; pg_restore   (the seed's scripts)
# Peak RSS is kbackup's own (its VmHWM, logged at exit), children apart; for the
# baselines, the command's as /usr/bin/time sees it.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SCALE=${1:-20}
RUNS=${2:-3}
STORE_N=${STORE_N:-10000}
REMOTE_N=${REMOTE_N:-5000}
# The team's reference dataset when it is beside the repository, else the
# repository's copy of it (scripts/bench-dataset.sql: a clean clone elsewhere).
DATASET=${BENCH_DATASET:-$ROOT/../shared/bench/dataset.sql}
[ -f "$DATASET" ] || [ -n "${BENCH_DATASET:-}" ] || DATASET="$ROOT/scripts/bench-dataset.sql"
[ -f "$DATASET" ] || die "reference dataset not found at $DATASET (set BENCH_DATASET)"

ensure postgres zstd age rclone docker
say "building kbackup (release)"
(cd "$ROOT" && cargo build --release --quiet)
KB="$ROOT/target/release/kbackup"
WORK=$(mktemp -d "/tmp/kbackup-bench.XXXXXX")
chmod 755 "$WORK"
trap 'stop_docker "$WORK/docker"; rm -rf "$WORK"' EXIT
say "starting a Docker engine and a PostgreSQL container in $WORK"
start_docker "$WORK/docker"
pg_container kbbench "$WORK/pg"
BIN=$(pg_bindir)
export PGHOST="$WORK/pg/sock" PGPORT=5432 PGUSER=postgres PATH="$BIN:$PATH"
age-keygen -o "$WORK/age-key.txt" 2>/dev/null
AGE_PUB=$(age-keygen -y "$WORK/age-key.txt")
say "loading the reference dataset at scale $SCALE"
createdb app
psql -q -v ON_ERROR_STOP=1 -v scale="$SCALE" -d app -f "$DATASET" >/dev/null
DB_SIZE=$(psql -Atc "SELECT pg_size_pretty(pg_database_size('app'))")

export DB_NAME=app POSTGRES_USER=postgres DEBUG=true
DIRECT=(env POSTGRES_HOST="$PGHOST" POSTGRES_PORT=5432 POSTGRES_BIN_DIR="$BIN")
DOCKER=(env CONTAINER_DB=kbbench)

# timed NAME CMD...: appends "wall_seconds peak_kb" to $WORK/NAME: wall time from
# bash's clock; kbackup's own peak memory from its exit line, else the
# command's from /usr/bin/time.
timed() {
  local name=$1; shift
  local start=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || { tail -20 "$WORK/err" >&2; die "$name failed"; }
  local end=$EPOCHREALTIME
  local kb
  kb=$(sed -n 's/.*peak RSS of kbackup itself: \([0-9]*\) kB.*/\1/p' "$WORK/err" | tail -1)
  echo "$(awk -v s="$start" -v e="$end" 'BEGIN { printf "%.4f", e - s }') ${kb:-$(cat "$WORK/t")}" >> "$WORK/$name"
}
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
col() { awk -v c="$2" '{print $c}' "$WORK/$1" | median; }
fresh() { dropdb --if-exists "$1" && createdb "$1"; }
size_of() { stat -c %s "$@" | awk '{s+=$1} END {print s}'; }

for i in $(seq "$RUNS"); do
  say "run $i of $RUNS"
  timed floor sh -c 'pg_dump -Fc -Z0 app > /dev/null'
  timed seed sh -c "pg_dump -Fc app > '$WORK/seed.dump'"
  rm -rf "$WORK/s-direct" "$WORK/s-docker" "$WORK/s-age"
  BACKUP_DIR="$WORK/s-direct" timed backup_direct "${DIRECT[@]}" "$KB" backup
  BACKUP_DIR="$WORK/s-docker" timed backup_docker "${DOCKER[@]}" "$KB" backup
  BACKUP_DIR="$WORK/s-age" BACKUP_AGE_RECIPIENTS="$AGE_PUB" timed backup_age "${DIRECT[@]}" "$KB" backup
  zstd -dqf "$WORK"/s-direct/hourly/*.dump.zst -o "$WORK/archive.dump"
  timed bare_restore sh -c "dropdb --if-exists app_bare && createdb app_bare && pg_restore -j2 -d app_bare '$WORK/archive.dump'"
  timed seed_restore sh -c "dropdb --if-exists app_seed && createdb app_seed && pg_restore -d app_seed '$WORK/seed.dump'"
  BACKUP_DIR="$WORK/s-direct" timed restore_direct "${DIRECT[@]}" "$KB" restore --latest --target-db app_kb --yes --drop-old
  BACKUP_DIR="$WORK/s-docker" timed restore_docker "${DOCKER[@]}" "$KB" restore --latest --target-db app_kbd --yes --drop-old
  BACKUP_DIR="$WORK/s-age" BACKUP_AGE_IDENTITY="$WORK/age-key.txt" \
    timed restore_age "${DIRECT[@]}" "$KB" restore --latest --target-db app_kba --yes --drop-old
  BACKUP_DIR="$WORK/s-direct" timed verify_full "${DIRECT[@]}" "$KB" verify
  timed read_file sh -c "zstd -dc '$WORK'/s-direct/hourly/*.dump.zst > /dev/null"
  BACKUP_DIR="$WORK/s-direct" timed verify_quick "${DIRECT[@]}" "$KB" verify --quick
  # Parallel dump, measured (not built): directory format with two jobs,
  # then each table's file compressed as kbackup compresses (zstd -1).
  rm -rf "$WORK/dir"
  timed dump_dir_j2 sh -c "pg_dump -Fd -j2 -Z0 -f '$WORK/dir' app && zstd -q -1 --rm '$WORK'/dir/*.dat"
done
dropdb --if-exists app_bare; dropdb --if-exists app_seed; rm -f "$WORK/archive.dump" "$WORK/seed.dump.bak"
for d in app_kb app_kbd app_kba; do dropdb --if-exists "$d"; done

# --- The store at scale: list, status and rotate --dry-run on a store of
# STORE_N backups (generated by gen-store.py from a real backup: hard links and
# real manifests) against the same on a store of one backup; and a backup into
# each. The first command after the store changed reads its folders and
# manifests once and writes the index ("cold"); medians are of the runs after.
say "store scale: a store of $STORE_N backups"
psql -qc "CREATE DATABASE small" && psql -q -d small -c "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g"
small="$WORK/store-1" big="$WORK/store-$STORE_N"
BACKUP_DIR="$small" DB_NAME=small "${DIRECT[@]}" "$KB" backup >/dev/null 2>&1
cp -a "$small" "$big"
python3 "$ROOT/scripts/gen-store.py" "$big" "$STORE_N"
for store in "$small" "$big"; do
  tag=$(basename "$store")
  export BACKUP_KEEP_HOURLY=$((STORE_N + 10)) BACKUP_KEEP_DAILY=0 BACKUP_KEEP_WEEKLY=0
  BACKUP_DIR="$store" DB_NAME=small timed "cold_$tag" "${DIRECT[@]}" "$KB" list
  for i in $(seq "$RUNS"); do
    BACKUP_DIR="$store" DB_NAME=small timed "list_$tag" "${DIRECT[@]}" "$KB" list
    BACKUP_DIR="$store" DB_NAME=small timed "status_$tag" "${DIRECT[@]}" "$KB" status
    BACKUP_DIR="$store" DB_NAME=small timed "rotate_$tag" "${DIRECT[@]}" "$KB" rotate --dry-run
  done
  BACKUP_DIR="$store" DB_NAME=small timed "backup_$tag" "${DIRECT[@]}" "$KB" backup
  unset BACKUP_KEEP_HOURLY BACKUP_KEEP_DAILY BACKUP_KEEP_WEEKLY
done

# --- Off-site: `kbackup sync` to a local rclone remote holding REMOTE_N other
# objects (other databases' backups, 3 files each) against the same sync to an
# empty remote: wall time and rclone calls.
say "remote scale: a remote of $REMOTE_N objects"
crowded="$WORK/remote-crowded" empty="$WORK/remote-empty"
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
for remote in "$empty" "$crowded"; do
  tag=$(basename "$remote")
  for i in $(seq "$RUNS"); do
    rm -rf "$remote/daily" "$remote/weekly"
    find "$remote/hourly" -name 'small_*' -delete 2>/dev/null || true
    RCLONE_CONFIG=/dev/null RCLONE_CONFIG_BENCH_TYPE=local RCLONE_REMOTE_NAME=bench RCLONE_REMOTE_PATH="$remote" \
      BACKUP_DIR="$small" DB_NAME=small timed "sync_$tag" "${DIRECT[@]}" "$KB" sync
    grep -c 'running: rclone' "$WORK/err" >> "$WORK/calls_$tag"
  done
done

# --- One table: each path, its baseline, the ratio, output size, peak RSS.
row() { # LABEL NAME BASELINE_LABEL BASELINE_NAME SIZE
  local t b
  t=$(col "$2" 1)
  if [ -n "$4" ]; then b=$(col "$4" 1); else b=""; fi
  printf '%-36s %9s  %-30s %9s %7s %12s %10s\n' "$1" "$t" "$3" "${b:--}" \
    "$( [ -n "$b" ] && awk -v a="$t" -v b="$b" 'BEGIN { printf "%.2fx", a/b }' || echo -)" "${5:--}" "$(col "$2" 2)"
}
ms_row() { # LABEL NAME BASELINE_NAME
  local t b
  t=$(col "$2" 1); b=$(col "$3" 1)
  printf '%-36s %9s  %-30s %9s %7s %12s %10s\n' "$1" "$(awk -v a="$t" 'BEGIN { printf "%.0f ms", a*1000 }')" "same, store of 1 backup" \
    "$(awk -v a="$b" 'BEGIN { printf "%.0f ms", a*1000 }')" "$(awk -v a="$t" -v b="$b" 'BEGIN { printf "%.2fx", a/b }')" "-" "$(col "$2" 2)"
}
kb_size=$(size_of "$WORK"/s-direct/hourly/*.dump.zst)
echo
echo "kbackup benchmark: scale $SCALE ($DB_SIZE), medians of $RUNS, $(nproc) cores, $(date -u +%Y-%m-%d)"
printf '%-36s %9s  %-30s %9s %7s %12s %10s\n' "path" "seconds" "baseline" "seconds" "ratio" "output bytes" "RSS kB"
row "backup, direct" backup_direct "floor: pg_dump -Z0 >/dev/null" floor "$kb_size"
row "backup, docker mode" backup_docker "backup, direct" backup_direct "$(size_of "$WORK"/s-docker/hourly/*.dump.zst)"
row "backup, encrypted (age)" backup_age "backup, direct" backup_direct "$(size_of "$WORK"/s-age/hourly/*.dump.zst.age)"
row "seed backup: pg_dump -Fc > file" seed "floor: pg_dump -Z0 >/dev/null" floor "$(size_of "$WORK/seed.dump")"
row "parallel dump: -Fd -j2 + zstd -1" dump_dir_j2 "backup, direct" backup_direct "$(size_of "$WORK"/dir/*)"
row "restore, direct" restore_direct "bare: pg_restore -j2" bare_restore
row "restore, docker mode" restore_docker "restore, direct" restore_direct
row "restore, encrypted (age)" restore_age "restore, direct" restore_direct
row "seed restore: pg_restore (serial)" seed_restore "bare: pg_restore -j2" bare_restore
row "verify (full: test restore)" verify_full "bare: pg_restore -j2" bare_restore
row "verify --quick" verify_quick "zstd -dc file >/dev/null" read_file
ms_row "list, store of $STORE_N" "list_store-$STORE_N" list_store-1
ms_row "status, store of $STORE_N" "status_store-$STORE_N" status_store-1
ms_row "rotate --dry-run, store of $STORE_N" "rotate_store-$STORE_N" rotate_store-1
ms_row "backup into a store of $STORE_N" "backup_store-$STORE_N" backup_store-1
printf '%-36s %9s  %-30s %9s %7s %12s %10s\n' "sync, remote of $REMOTE_N objects" \
  "$(col sync_remote-crowded 1)" "sync, empty remote" "$(col sync_remote-empty 1)" \
  "$(awk -v a="$(col sync_remote-crowded 1)" -v b="$(col sync_remote-empty 1)" 'BEGIN { printf "%.2fx", a/b }')" \
  "$(median < "$WORK/calls_remote-crowded") calls" "$(col sync_remote-crowded 2)"

#!/usr/bin/env bash
# Demo of the main job: installs what is missing, builds kbackup, starts a
# throwaway PostgreSQL with sample data, runs `kbackup backup` (twice, plus a
# named backup) and `kbackup list`, restores the newest file by hand to prove it,
# then shows verify, a safe restore and status, and cleans everything up.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

release_and_cluster demo

say "creating database kairon with sample data"
createdb kairon
psql -q -v ON_ERROR_STOP=1 -d kairon <<'SQL'
CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, payload jsonb NOT NULL, at timestamptz NOT NULL);
CREATE TABLE traces (id bigserial PRIMARY KEY, event_id bigint REFERENCES events(id), step text, ms int);
INSERT INTO events (kind, payload, at)
  SELECT (ARRAY['message','note','todo'])[1 + g % 3], jsonb_build_object('n', g, 'text', md5(g::text)),
         now() - g * interval '1 minute' FROM generate_series(1, 50000) g;
INSERT INTO traces (event_id, step, ms) SELECT g, 'parse', g % 900 FROM generate_series(1, 50000) g;
SQL

export BACKUP_DIR="$WORK/backups" DB_NAME=kairon POSTGRES_HOST="$PGHOST" POSTGRES_PORT="$PGPORT" DB_USER=postgres
say "kbackup backup --dry-run"
"$KB" backup --dry-run
say "kbackup backup (as cron would run it every hour)"
"$KB" backup
"$KB" backup --time "$(date -d '1 hour ago' '+%Y-%m-%d %H:%M:%S')"
say "kbackup backup --name pre_migration"
"$KB" backup --name pre_migration
say "kbackup list"
"$KB" list
say "files in the store (owner-only permissions)"
ls -l "$BACKUP_DIR"/hourly
newest=$("$KB" list --json --tier hourly | sed -n 's/.*"path": "\(hourly[^"]*\)".*/\1/p' | head -n 1)
say "restoring $newest by hand into a new database (zstd -dc FILE | pg_restore -d DB)"
createdb kairon_check
zstd -dc "$BACKUP_DIR/$newest" | pg_restore --exit-on-error -d kairon_check
psql -d kairon_check -c "SELECT 'events' AS t, count(*) FROM events UNION ALL SELECT 'traces', count(*) FROM traces"
say "kbackup verify (test restore into a temporary database, every check with its numbers)"
"$KB" verify
say "kbackup restore --latest --dry-run, then into a new database (checked, then swapped in)"
"$KB" restore --latest --target-db kairon_restored --dry-run
"$KB" restore --latest --target-db kairon_restored
say "kbackup status (what monitoring runs; exit 0 = healthy)"
"$KB" status
say "demo complete"

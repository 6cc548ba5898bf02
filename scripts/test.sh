#!/usr/bin/env bash
# The whole test suite. Installs what the tests need when it is missing
# (PostgreSQL server, zstd, the age CLI, rclone, Docker engine, the aiosmtpd SMTP sink, moto's S3
# server), then checks formatting,
# lints, and runs every test. The tests start their own PostgreSQL clusters and
# Docker engine (see tests/common).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ensure postgres zstd age man deploytools rclone docker aiosmtpd moto kubevalidate pgversions
cd "$ROOT"
say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
say "cargo test"
cargo test --all-targets 2>&1

#!/bin/sh
# README command 1: installs what the lab needs, builds Pressdock, and brings up the local
# lab (a real multi-node swarm and data tier in network namespaces) with the platform, a
# staff admin, a demo tenant and a demo site. Idempotent: a second run converges.
# Usage: sudo scripts/up.sh [lab up options, e.g. --workers 3]
set -eu
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "up.sh: run as root (sudo $0): the lab creates namespaces, bridges and mounts" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || {
  echo "up.sh: cargo is missing: install the Rust toolchain (rustup, Rust >= 1.95) first" >&2; exit 1; }
scripts/install-deps.sh
echo "==> building pressdock, pressdock-infra and pressdock-agent"
cargo build --workspace --bins
exec target/debug/pressdock-infra lab up "$@"

#!/bin/sh
# README command 2 (and CI's `.ci/run`): installs and starts every server the tests use,
# then runs the gates and the whole test suite against real servers.
#   - a MariaDB server on 127.0.0.1:3306 (started here if none answers) with a test account
#   - Redis, Sentinel and varnishd binaries (the driver tests start their own on free ports)
#   - the lab (namespaces, dockerd, Galera, Redis, Gluster, Varnish, Traefik, S3) for the
#     lab tests, which bring it up themselves and tear it down at the end
set -eu
cd "$(dirname "$0")/.."
START=$(date +%s)
# Each phase with the seconds since the start, so a slow phase shows in the log.
phase() { echo "==> [$(( $(date +%s) - START ))s] $*"; }
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (the lab tests create namespaces and mounts)" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || { echo "test.sh: cargo is missing: install Rust >= 1.95 (rustup)" >&2; exit 1; }
scripts/install-deps.sh

# The control-plane tests need one MariaDB; each test creates and drops its own database.
if ! mariadb-admin --protocol=tcp -h 127.0.0.1 -P 3306 ping >/dev/null 2>&1 \
   && ! mariadb-admin ping >/dev/null 2>&1; then
  phase "starting MariaDB on 127.0.0.1:3306"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  for _ in $(seq 1 60); do mariadb-admin ping >/dev/null 2>&1 && break; sleep 0.5; done
fi
TEST_PW=pressdock-test-pw
mariadb -uroot -e "CREATE USER IF NOT EXISTS 'pressdock_test'@'127.0.0.1' IDENTIFIED BY '$TEST_PW';
  GRANT ALL PRIVILEGES ON *.* TO 'pressdock_test'@'127.0.0.1' WITH GRANT OPTION;" \
  || mariadb -uroot -h 127.0.0.1 -e "CREATE USER IF NOT EXISTS 'pressdock_test'@'127.0.0.1' IDENTIFIED BY '$TEST_PW';
  GRANT ALL PRIVILEGES ON *.* TO 'pressdock_test'@'127.0.0.1' WITH GRANT OPTION;"
export PRESSDOCK_TEST_MYSQL_URL="mysql://pressdock_test:$TEST_PW@127.0.0.1:3306"
# One build from a fresh clone: incremental state would only cost disk (~3 GB) and time.
export CARGO_INCREMENTAL=0

phase "cargo fmt --check"
cargo fmt --all --check
phase "cargo clippy"
cargo clippy --all-targets --workspace --quiet -- -D warnings
phase "tests (control plane, drivers, planner, agent)"
cargo test --workspace --exclude infra --exclude e2e --quiet
phase "the API fuzzer (schemathesis, every check) against a live server"
# The platform tests above built target/debug/pressdock from this tree.
FUZZ_BUILD=0 scripts/fuzz-api.sh
if [ "${PRESSDOCK_SKIP_LAB:-0}" = 1 ]; then
  phase "PRESSDOCK_SKIP_LAB=1: skipping the lab and the tests that need it"; exit 0
fi
# Several checkouts sharing one machine (and its one lab) take turns for the lab part:
# PRESSDOCK_LAB_LOCK names a lock file held from here to the end.
if [ -n "${PRESSDOCK_LAB_LOCK:-}" ]; then
  phase "waiting for the lab lock $PRESSDOCK_LAB_LOCK"
  exec 9>"$PRESSDOCK_LAB_LOCK"
  flock 9
fi
phase "the lab (1 manager, 2 workers) with the platform"
cargo build --workspace --bins --quiet
target/debug/pressdock-infra lab up
phase "sites on the lab (provisioning in every backend, reconcilers, crash safety)"
PRESSDOCK_LAB_TESTS=1 cargo test -p e2e --quiet -- --test-threads=1
phase "the drivers' lab tests (#[ignore]d without a lab)"
PRESSDOCK_LAB_TESTS=1 cargo test -p backends --test drivers --quiet -- --ignored --test-threads=1
phase "lab tests (they end with lab down)"
PRESSDOCK_LAB_TESTS=1 cargo test -p infra --quiet -- --test-threads=1
phase "all tests passed"

#!/bin/sh
# Fuzzes the HTTP API against its own OpenAPI document (issue 10): starts `pressdock serve`
# on a free port over a fresh database on the local MariaDB, logs in as the bootstrap
# admin, creates a tenant (no sites: no backends are configured), then runs Schemathesis
# with every check (5xx, undocumented statuses, content types, headers and schemas, valid
# data refused, invalid data accepted, auth ignored, ...). Any finding fails the script.
#
# Needs: MariaDB on 127.0.0.1:3306 with the test account (scripts/test.sh makes it),
# schemathesis at the version scripts/install-deps.sh pins, cargo.
# Knobs: PRESSDOCK_TEST_MYSQL_URL, FUZZ_MAX_EXAMPLES (per operation and phase, default 50),
# FUZZ_SEED (default fixed, so that CI runs are repeatable; `random` for a new one),
# FUZZ_TIMEOUT (seconds, default 900: a run that takes longer fails), FUZZ_BUILD=0 (use the
# target/debug/pressdock that is there). Schemathesis'
# own --max-time is not used: it repeats fuzzing until the time is spent.
set -eu
cd "$(dirname "$0")/.."
command -v st >/dev/null 2>&1 || { echo "fuzz-api.sh: schemathesis (st) is missing: run scripts/install-deps.sh" >&2; exit 1; }
MYSQL_URL="${PRESSDOCK_TEST_MYSQL_URL:-mysql://pressdock_test:pressdock-test-pw@127.0.0.1:3306}"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-50}"
SEED="${FUZZ_SEED:-20261206}"
TIMEOUT="${FUZZ_TIMEOUT:-900}"

# scripts/test.sh has just built target/debug/pressdock with its test build (FUZZ_BUILD=0):
# building it again with `-p platform` alone would resolve other features and rebuild
# dozens of crates (minutes of CI).
if [ "${FUZZ_BUILD:-1}" != 0 ] || [ ! -x target/debug/pressdock ]; then
  cargo build -q -p platform --bin pressdock
fi
WORK="$(mktemp -d)"
DB="pressdock_fuzz_$$"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
ADMIN_EMAIL="fuzz-admin@pressdock.test"
ADMIN_PASSWORD="$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
SERVER_PID=""

# The database is dropped with the account's credentials from the URL.
mysql_exec() {
  python3 - "$MYSQL_URL" "$1" <<'PY'
import subprocess, sys, urllib.parse
url = urllib.parse.urlparse(sys.argv[1])
subprocess.run(["mariadb", "--protocol=tcp", "-h", url.hostname or "127.0.0.1", "-P", str(url.port or 3306),
                "-u", urllib.parse.unquote(url.username or "root"),
                "-p" + urllib.parse.unquote(url.password or ""), "-e", sys.argv[2]], check=True)
PY
}
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  mysql_exec "DROP DATABASE IF EXISTS $DB" || true
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

echo "==> pressdock serve on $BASE (database $DB)"
PRESSDOCK_LISTEN="127.0.0.1:$PORT" \
PRESSDOCK_DATABASE_URL="$MYSQL_URL/$DB" \
PRESSDOCK_SECRET_KEY="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
PRESSDOCK_BOOTSTRAP_ADMIN_EMAIL="$ADMIN_EMAIL" \
PRESSDOCK_BOOTSTRAP_ADMIN_PASSWORD="$ADMIN_PASSWORD" \
PRESSDOCK_ACCESS_TOKEN_TTL_SECS=7200 \
PRESSDOCK_BILLING_CLUSTER_MONTHLY_COST_MINOR=361300 \
RUST_LOG="${RUST_LOG:-warn}" \
  target/debug/pressdock serve >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 120); do
  curl -fsS "$BASE/readyz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; echo "fuzz-api.sh: the server exited" >&2; exit 1; }
  sleep 0.5
done
curl -fsS "$BASE/readyz" >/dev/null || { cat "$WORK/server.log" >&2; echo "fuzz-api.sh: the server is not ready" >&2; exit 1; }

json_field() { python3 -c "import json, sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
TOKEN="$(curl -fsS -H 'content-type: application/json' \
  -d "{\"email\":\"$ADMIN_EMAIL\",\"password\":\"$ADMIN_PASSWORD\"}" "$BASE/v1/auth/login" | json_field access_token)"
curl -fsS -H 'content-type: application/json' -H "authorization: Bearer $TOKEN" \
  -d '{"slug":"fuzz","name":"Fuzz tenant"}' "$BASE/v1/tenants" >/dev/null

echo "==> schemathesis $(st --version | awk '{print $NF}'): all checks, $MAX_EXAMPLES examples per operation, seed $SEED"
SEED_ARG="--seed=$SEED"
[ "$SEED" = random ] && SEED_ARG=""
status=0
PRESSDOCK_FUZZ_TOKEN="$TOKEN" timeout "$TIMEOUT" st --config-file scripts/fuzz-api.toml run "$BASE/v1/openapi.json" \
  --url "$BASE" --checks all --max-examples "$MAX_EXAMPLES" $SEED_ARG \
  --workers 1 --no-color --report junit --report-dir "$WORK/report" || status=$?
if [ "$status" != 0 ]; then
  echo "fuzz-api.sh: schemathesis found problems (exit $status); the server's log:" >&2
  tail -n 50 "$WORK/server.log" >&2
  exit "$status"
fi
# An error the answers hid (a failed background step, a panic) still fails the run.
if grep -E 'ERROR|panicked' "$WORK/server.log" >/dev/null; then
  echo "fuzz-api.sh: the server logged errors during the run:" >&2
  grep -E 'ERROR|panicked' "$WORK/server.log" | tail -n 20 >&2
  exit 1
fi
echo "==> the API fuzzer found nothing"

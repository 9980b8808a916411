#!/usr/bin/env bash
# Benchmark of the sites API (issue 2): `pressdock serve` (release) beside a bare axum +
# sqlx server running the same single SQL query (platform/examples/bare_sites.rs), on the
# same machine, the same throwaway database and the same wrk settings.
#
#   (a) GET  /v1/tenants/{t}/sites   default page of 50, 1,000 sites stored, as a tenant owner
#            with an access token (JWT), and again with an API token (`pdt_…`, read scope)
#   (b) POST /v1/tenants/{t}/sites   new sites with unique domains (bench-api-post.lua)
#
# Each round runs platform then bare back to back; ROUNDS rounds of (a), then ROUNDS
# rounds of (b), interleave the two sides so drift on a noisy machine hits both. The
# table shows the median of the rounds, and the median of each round's own ratio (the
# figure least moved by other load); the 1-minute load average is logged at every
# measurement and summed up under the table. Not a test: run it by hand, on a machine
# you may load.
#
#   scripts/bench-api.sh                      # defaults below
#   ROUNDS=3 THREADS=2 CONNECTIONS=16 DURATION=10s scripts/bench-api.sh
#   KINDS=get ROUNDS=5 scripts/bench-api.sh   # the GET list only (no POST rounds)
#   PRESSDOCK_BIN=/path/to/other/pressdock …  # another build of the platform, for an A/B
#
# Needs the local MariaDB (MYSQL_HOST/MYSQL_PORT/MYSQL_USER, root without password by
# default), cargo, and installs wrk, jq and curl with apt-get when missing. Cleans up
# (servers by PID, the database) on exit, also on failure.
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-16}"
DURATION="${DURATION:-10s}"
SITES="${SITES:-1000}"
KINDS="${KINDS:-get post}"   # which of (a) get, (b) post to measure
MYSQL_HOST="${MYSQL_HOST:-127.0.0.1}"
MYSQL_PORT="${MYSQL_PORT:-3306}"
MYSQL_USER="${MYSQL_USER:-root}"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LUA="$ROOT/scripts/bench-api-post.lua"
WORK="$(mktemp -d /tmp/bench-api.XXXXXX)"
DB="pdbench_$(date +%s)_$$"
DB_URL="mysql://${MYSQL_USER}@${MYSQL_HOST}:${MYSQL_PORT}/${DB}"
ADMIN_EMAIL="admin@bench.example"
PASSWORD="bench-password-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
SERVE_PID=""
BARE_PID=""

log() { printf '==> %s\n' "$*" >&2; }
sql() { mysql -h "$MYSQL_HOST" -P "$MYSQL_PORT" -u "$MYSQL_USER" -N -B "$@"; }

cleanup() {
  set +e
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  [ -n "$BARE_PID" ] && kill "$BARE_PID" 2>/dev/null && wait "$BARE_PID" 2>/dev/null
  sql -e "DROP DATABASE IF EXISTS \`$DB\`" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

# --- tools -------------------------------------------------------------------------------
missing=""
for tool in wrk jq curl mysql; do
  command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
if [ -n "$missing" ]; then
  pkgs="${missing/mysql/mariadb-client}"
  log "installing$pkgs"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q $pkgs >&2 \
    || { $SUDO apt-get update -q >&2 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q $pkgs >&2; }
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- build ---------------------------------------------------------------------------------
log "building release binaries"
(cd "$ROOT" && cargo build --release -q -p platform --bin pressdock --example bare_sites)
TARGET="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)"
PRESSDOCK="${PRESSDOCK_BIN:-$TARGET/release/pressdock}"   # PRESSDOCK_BIN: another build, for an A/B
BARE="$TARGET/release/examples/bare_sites"

wait_ready() { # url
  for _ in $(seq 1 200); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  log "not ready: $1"; return 1
}

# --- platform and data ---------------------------------------------------------------------
PD_PORT="$(free_port)"
PD="http://127.0.0.1:$PD_PORT"
log "starting pressdock serve on $PD (database $DB, job runner off)"
PRESSDOCK_DATABASE_URL="$DB_URL" PRESSDOCK_LISTEN="127.0.0.1:$PD_PORT" \
  PRESSDOCK_SECRET_KEY="bench-secret-key-$(od -An -N16 -tx8 /dev/urandom | tr -d ' ')" \
  PRESSDOCK_BOOTSTRAP_ADMIN_EMAIL="$ADMIN_EMAIL" PRESSDOCK_BOOTSTRAP_ADMIN_PASSWORD="$PASSWORD" \
  PRESSDOCK_ACCESS_TOKEN_TTL_SECS=7200 PRESSDOCK_JOBS_ENABLED=false RUST_LOG=warn \
  "$PRESSDOCK" serve 2>"$WORK/serve.log" &
SERVE_PID=$!
wait_ready "$PD/readyz"

api() { # method path token [body]
  local out
  out="$(curl -sS --fail-with-body -X "$1" "$PD$2" -H "Authorization: Bearer $3" \
    -H 'Content-Type: application/json' ${4:+-d "$4"})" || { log "$1 $2 failed: $out"; return 1; }
  printf '%s\n' "$out"
}
login() { # email
  curl -fsS "$PD/v1/auth/login" -H 'Content-Type: application/json' \
    -d "$(jq -nc --arg e "$1" --arg p "$PASSWORD" '{email: $e, password: $p}')" | jq -r .access_token
}
ADMIN="$(login "$ADMIN_EMAIL")"
TENANT="$(api POST /v1/tenants "$ADMIN" '{"slug":"bench","name":"Bench"}' | jq -r .id)"
# Workers take at most 1,000 slots each: enough workers for every stored site.
NODES=""
for n in $(seq 1 $(((SITES + 999) / 1000))); do
  id="$(api POST /v1/nodes "$ADMIN" "{\"name\":\"bench-worker-$n\",\"role\":\"worker\",\"slots\":1000}" | jq -r .id)"
  # Registered nodes are pending; with no swarm behind this server, staff activate them.
  api PATCH "/v1/nodes/$id" "$ADMIN" '{"availability":"active"}' >/dev/null
  NODES="${NODES:+$NODES,}$id"
done
api POST "/v1/tenants/$TENANT/users" "$ADMIN" \
  "$(jq -nc --arg p "$PASSWORD" '{email: "owner@bench.example", role: "owner", password: $p}')" >/dev/null
# The requests run as a tenant owner (not staff): the RBAC path a customer takes.
TOKEN="$(login owner@bench.example)"
API_TOKEN="$(api POST /v1/tokens "$TOKEN" '{"name":"bench","scopes":["read"]}' | jq -r .secret)"

log "inserting $SITES active sites with domains and placements (SQL, one transaction)"
PLAN="$(sql "$DB" -e "SELECT id FROM plans WHERE slug = 'starter'")"
awk -v n="$SITES" -v t="$TENANT" -v p="$PLAN" -v nodes="$NODES" 'BEGIN {
  srand(); a = "abcdefghijklmnopqrstuvwxyz234567"; split(nodes, node, ",")
  for (i = 1; i <= n; i++) {
    id = ""; for (k = 0; k < 10; k++) id = id substr(a, int(rand() * 32) + 1, 1)
    s = s sprintf("%s(\"%s\",\"%s\",\"Site %d\",\"%s\",\"active\",\"site%d.bench.example\")", i > 1 ? "," : "", id, t, i, p, i)
    d = d sprintf("%s(\"site%d.bench.example\",\"%s\",1)", i > 1 ? "," : "", i, id)
    q = q sprintf("%s(\"%s\",\"%s\",1)", i > 1 ? "," : "", id, node[int((i - 1) / 1000) + 1])
  }
  print "START TRANSACTION;"
  print "INSERT INTO sites (id, tenant_id, name, plan_id, state, primary_domain) VALUES " s ";"
  print "INSERT INTO domains (domain, site_id, is_primary) VALUES " d ";"
  print "INSERT INTO placements (site_id, node_id, slots) VALUES " q ";"
  print "COMMIT;"
}' | sql "$DB"
# Since migration m20261206_000017 the platform keeps a copy of a site's aliases in its row
# (these sites have none), written with the domain rows: write it as the platform would.
# A build from before it (PRESSDOCK_BIN=…) has no such column.
if [ "$(sql "$DB" -e "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = DATABASE() \
    AND table_name = 'sites' AND column_name = 'aliases_generation'")" = 1 ]; then
  sql "$DB" -e "UPDATE sites SET aliases = '', aliases_generation = generation WHERE tenant_id = '$TENANT'"
fi
stored="$(sql "$DB" -e "SELECT COUNT(*) FROM sites WHERE tenant_id = '$TENANT'")"
page="$(api GET "/v1/tenants/$TENANT/sites" "$TOKEN")"
[ "$stored" = "$SITES" ] && [ "$(jq '.items | length' <<<"$page")" = 50 ] \
  && [ "$(jq -r '.next_cursor != null and .items[0].node == "bench-worker-1"' <<<"$page")" = true ] \
  || { log "setup check failed: $stored sites stored, first page: ${page:0:300}"; exit 1; }

# --- bare baseline ---------------------------------------------------------------------------
BARE_PORT="$(free_port)"
BR="http://127.0.0.1:$BARE_PORT"
log "starting bare_sites on $BR"
DATABASE_URL="$DB_URL" LISTEN="127.0.0.1:$BARE_PORT" "$BARE" 2>"$WORK/bare.log" &
BARE_PID=$!
wait_ready "$BR/v1/tenants/$TENANT/sites"
[ "$(curl -fsS "$BR/v1/tenants/$TENANT/sites" | jq '.items | length')" = 50 ] \
  || { log "bare_sites does not answer a page of 50"; exit 1; }

# --- measure -------------------------------------------------------------------------------
WRK=(wrk "-t$THREADS" "-c$CONNECTIONS" "-d$DURATION" --latency)
to_ms() { # 1.23ms | 456.78us | 1.02s  ->  milliseconds
  awk -v v="$1" 'BEGIN { u = v; sub(/^[0-9.]+/, "", u); x = v + 0
    if (u == "us") x /= 1000; else if (u == "s") x *= 1000; else if (u == "m") x *= 60000
    printf "%.2f", x }'
}
measure() { # name kind(get|post) base token round
  local name="$1" kind="$2" base="$3" token="$4" round="$5" out="$WORK/$1-$2-$5.txt"
  local url="$base/v1/tenants/$TENANT/sites"
  if [ "$kind" = get ]; then
    if [ -n "$token" ]; then "${WRK[@]}" -H "Authorization: Bearer $token" "$url" >"$out"
    else "${WRK[@]}" "$url" >"$out"; fi
  else
    BENCH_TOKEN="$token" BENCH_RUN="${name}${round}r$$" "${WRK[@]}" -s "$LUA" "$url" >"$out"
  fi
  if grep -q 'Socket errors' "$out"; then
    log "$name $kind round $round had socket errors (timeouts count as errors):"
    grep 'Socket errors' "$out" >&2
  fi
  if grep -q 'Non-2xx' "$out"; then
    log "$name $kind round $round had failed requests:"; grep 'Non-2xx' "$out" >&2
    [ "$name" != bare ] && tail -5 "$WORK/serve.log" >&2
    exit 1
  fi
  local rps p99 load
  rps="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
  p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
  load="$(cut -d' ' -f1 /proc/loadavg)"
  echo "$name $kind $round $rps $p99 $load" >>"$WORK/results"
  log "round $round $kind $name: $rps req/s, p99 $p99 ms, load $load"
}
# All GET rounds before any POST: every POST adds a site to the listed tenant, and the
# list must be measured with the stated number of sites stored.
for kind in $KINDS; do
  for round in $(seq 1 "$ROUNDS"); do
    measure platform "$kind" "$PD" "$TOKEN" "$round"
    [ "$kind" = get ] && measure platform-apitoken get "$PD" "$API_TOKEN" "$round"
    measure bare "$kind" "$BR" "" "$round"
  done
done

# --- report --------------------------------------------------------------------------------
median() { # name kind column(4=rps,5=p99)
  awk -v n="$1" -v k="$2" -v c="$3" '$1 == n && $2 == k { print $c }' "$WORK/results" | sort -g \
    | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo
echo "Raw (name kind round req/s p99_ms load1):"
cat "$WORK/results"
echo
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, $SITES sites stored, median of $ROUNDS interleaved rounds"
echo
# The median over rounds of platform/bare within a round (both sides back to back).
round_ratio() { # name kind
  awk -v n="$1" -v k="$2" '$2 == k && $1 == n { p[$3] = $4 } $2 == k && $1 == "bare" { b[$3] = $4 }
    END { for (r in p) if (b[r] > 0) printf "%.4f\n", p[r] / b[r] }' "$WORK/results" | sort -g \
    | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
echo "| Request | Platform req/s | Bare req/s | Platform / bare | Median of round ratios | Platform p99 | Bare p99 | p99 platform / bare |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
for row in "platform get" "platform-apitoken get" "platform post"; do
  set -- $row; name="$1"; kind="$2"
  grep -q "^$name $kind " "$WORK/results" || continue
  pr="$(median "$name" $kind 4)"; br="$(median bare $kind 4)"
  pp="$(median "$name" $kind 5)"; bp="$(median bare $kind 5)"
  rr="$(round_ratio "$name" $kind)"
  label="GET /v1/tenants/{t}/sites (page of 50, JWT)"
  [ "$name" = platform-apitoken ] && label="GET /v1/tenants/{t}/sites (page of 50, API token)"
  [ "$kind" = post ] && label="POST /v1/tenants/{t}/sites"
  awk -v l="$label" -v pr="$pr" -v br="$br" -v rr="$rr" -v pp="$pp" -v bp="$bp" 'BEGIN {
    printf "| %s | %.0f | %.0f | %.2f | %.2f | %.1f ms | %.1f ms | %.1f |\n", l, pr, br, pr / br, rr, pp, bp, pp / bp }'
done
echo
awk '{ if (NR == 1 || $6 < lo) lo = $6; if (NR == 1 || $6 > hi) hi = $6 }
  END { printf "Load average (1 min) at the measurements: %s to %s on '"$(nproc)"' cores\n", lo, hi }' "$WORK/results"

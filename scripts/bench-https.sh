#!/usr/bin/env bash
# HTTPS benchmark (issue 14, item 6): the lab's edge over HTTPS against the same edge over
# plain HTTP, same site, same run, rounds alternating.
#
#   cached page    wrk, keep-alive connections, a page Varnish holds (X-Pressdock-Cache HIT
#                  for both schemes: one object per scheme): requests per second
#   new connection wrk with `Connection: close`: every request opens a connection, so over
#                  HTTPS every request is a full TLS handshake (wrk resumes no session):
#                  TLS handshakes per second against TCP connections per second
#
# The path: wrk → HAProxy (127.0.0.1, TCP) → Traefik (two replicas; websecure terminates
# TLS with the site's pebble certificate, chosen by SNI) → Varnish. wrk sends the site's
# name as SNI: it runs in a private mount namespace whose /etc/hosts maps the name to
# 127.0.0.1 (the machine's /etc/hosts is not touched).
#
# Makes its own tenant and site (keep_http on, so both schemes serve the page), waits for
# its certificate, deletes the site and the tenant at the end. Not a test: no assertion, a
# table on stdout (also in $OUT, default /tmp/bench-https.md).
#
#   flock /work/lab.lock scripts/bench-https.sh          # BENCH_SECS=10 BENCH_ROUNDS=2
#   BENCH_CONNS=32 BENCH_SECS=15 scripts/bench-https.sh
#
# Needs: a lab that is up with HTTPS (`pressdock-infra lab up`), wrk, curl, jq-free (python3).
set -euo pipefail

cd "$(dirname "$0")/.."
SECS=${BENCH_SECS:-10}
ROUNDS=${BENCH_ROUNDS:-2}
CONNS=${BENCH_CONNS:-16}
THREADS=${BENCH_THREADS:-2}
OUT=${OUT:-/tmp/bench-https.md}
STATE=/var/lib/pressdock-lab
API=http://127.0.0.1:23500

toml() { python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb"))[sys.argv[2]])' "$@"; }
json() { python3 -c 'import sys,json; v=json.load(sys.stdin)
for k in sys.argv[1].split("."): v=v[int(k)] if isinstance(v,list) else v.get(k) if v is not None else None
print("" if v is None else v)' "$1"; }

[ -f "$STATE/lab.toml" ] || { echo "no lab: run pressdock-infra lab up" >&2; exit 1; }
EDGE=$(toml "$STATE/lab.toml" edge_url); EDGE_PORT=${EDGE##*:}
EDGE_TLS=$(toml "$STATE/lab.toml" edge_https_url 2>/dev/null) || {
  echo "the lab has no HTTPS edge: run pressdock-infra lab up from this build" >&2; exit 1; }
TLS_PORT=${EDGE_TLS##*:}
ROOTS=$(toml "$STATE/lab.toml" acme_roots)
PW=$(toml "$STATE/secrets.toml" staff_password)

TOKEN=$(curl -sf "$API/v1/auth/login" -H 'content-type: application/json' \
  -d "{\"email\":\"admin@pressdock.test\",\"password\":\"$PW\"}" | json access_token)
call() { # method path [body]
  curl -s -X "$1" "$API$2" -H "authorization: Bearer $TOKEN" -H 'content-type: application/json' \
    ${3:+-d "$3"}
}
wait_op() {
  local op=$1 st
  for _ in $(seq 1 300); do
    st=$(call GET "/v1/operations/$op" | json state)
    case $st in succeeded) return 0 ;; failed) echo "operation $op failed" >&2; return 1 ;; esac
    sleep 1
  done
  echo "operation $op did not finish" >&2; return 1
}

ID=$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')
DOMAIN="bench-https-$ID.lab.test"
TENANT=$(call POST /v1/tenants "{\"slug\":\"bench-https-$ID\",\"name\":\"HTTPS benchmark\"}" | json id)
ACCEPTED=$(call POST "/v1/tenants/$TENANT/sites" \
  "{\"name\":\"HTTPS bench\",\"domain\":\"$DOMAIN\",\"plan\":\"starter\",\"keep_http\":true}")
SITE=$(echo "$ACCEPTED" | json site.id)
WORK=$(mktemp -d /tmp/bench-https.XXXXXX)
# The site, then its tenant: the benchmark leaves nothing on the lab.
cleanup() {
  local op
  if [ -n "$SITE" ]; then
    op=$(call DELETE "/v1/sites/$SITE" | json operation.id) && [ -n "$op" ] && wait_op "$op" >/dev/null 2>&1 || true
  fi
  [ -z "$TENANT" ] || call DELETE "/v1/tenants/$TENANT" >/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -n "$SITE" ] || { echo "site not created: $ACCEPTED" >&2; exit 1; }
echo "site $DOMAIN: provisioning" >&2
wait_op "$(echo "$ACCEPTED" | json operation.id)"
echo "waiting for its certificate and for the edge to serve it" >&2
for i in $(seq 1 240); do
  if curl -sf -o /dev/null --cacert "$ROOTS" --resolve "$DOMAIN:$TLS_PORT:127.0.0.1" \
      "https://$DOMAIN:$TLS_PORT/"; then break; fi
  [ "$i" = 240 ] && { echo "no verified HTTPS answer for $DOMAIN" >&2; exit 1; }
  sleep 0.5
done
cache_state() { # scheme port [tls]
  local h rc=0
  h=$(curl -s -o /dev/null -D - ${3:+--cacert "$ROOTS"} --resolve "$DOMAIN:$2:127.0.0.1" \
    "$1://$DOMAIN:$2/") || rc=$?
  [ "$rc" = 0 ] || { echo "curl-exit-$rc"; return 0; }
  printf '%s\n' "$h" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-pressdock-cache"{print $2}'
}
for _ in 1 2 3; do cache_state http "$EDGE_PORT" >/dev/null; cache_state https "$TLS_PORT" tls >/dev/null; done
echo "cache: http $(cache_state http "$EDGE_PORT"), https $(cache_state https "$TLS_PORT" tls)" >&2

printf '127.0.0.1 localhost\n127.0.0.1 %s\n' "$DOMAIN" > "$WORK/hosts"
# wrk in a mount namespace of its own that sees $WORK/hosts as /etc/hosts (SNI = the name).
run_wrk() { # url [close]
  unshare -m sh -c 'mount --bind "$1" /etc/hosts && shift && exec wrk "$@"' sh "$WORK/hosts" \
    -t"$THREADS" -c"$CONNS" -d"${SECS}s" ${2:+-H "Connection: close"} "$1" 2>&1 |
    awk '/^Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {print "#" $0 > "/dev/stderr"}'
}
declare -A sum
for r in $(seq 1 "$ROUNDS"); do
  for kind in http https http-close https-close; do
    case $kind in
      http) v=$(run_wrk "http://$DOMAIN:$EDGE_PORT/") ;;
      https) v=$(run_wrk "https://$DOMAIN:$TLS_PORT/") ;;
      http-close) v=$(run_wrk "http://$DOMAIN:$EDGE_PORT/" close) ;;
      https-close) v=$(run_wrk "https://$DOMAIN:$TLS_PORT/" close) ;;
    esac
    echo "round $r $kind: $v/s" >&2
    sum[$kind]=$(python3 -c "print(${sum[$kind]:-0} + $v)")
  done
done
avg() { python3 -c "print(f'{${sum[$1]} / $ROUNDS:.0f}')"; }
ratio() { python3 -c "print(f'{(${sum[$1]}) / (${sum[$2]}):.2f}')"; }
{
  echo "| measure ($CONNS connections, ${SECS}s x $ROUNDS rounds, wrk) | HTTPS | HTTP | HTTPS / HTTP |"
  echo "|---|---|---|---|"
  echo "| cached page, keep-alive (req/s) | $(avg https) | $(avg http) | $(ratio https http) |"
  echo "| new connection per request: TLS handshakes/s vs TCP connections/s | $(avg https-close) | $(avg http-close) | $(ratio https-close http-close) |"
  echo
  echo "cache after the run: http $(cache_state http "$EDGE_PORT"), https $(cache_state https "$TLS_PORT" tls); $(nproc) cores, $(date -u +%FT%TZ)"
} | tee "$OUT"

#!/usr/bin/env bash
# Footprint of pressdock-agent (issue 5) beside prometheus-node-exporter, measured the
# same way on the same machine: resident memory (VmRSS at the end, VmHWM = peak) and CPU
# (utime + stime from /proc/PID/stat over the phase, as % of one core).
#
#   idle         the agent supervising its site, nobody calling it (DURATION)
#   metrics      /metrics hammered by wrk (THREADS, CONNECTIONS, DURATION)
#   healthz      /healthz hammered by wrk
#   site load    the site's nginx serving a static file as fast as wrk asks: every
#                request is an access-log datagram the agent parses and counts
#                (needs php-fpm8.2, nginx and Debian's wordpress; skipped otherwise)
#   node-exporter idle and with its /metrics hammered the same way
#   stop         SIGTERM to exit, STOP_RUNS times without a drain and once with the
#                production drain (7 s): the tests only hold a stop to swarm's 20 s
#                stop grace, the figures live here (STOP_ONLY=1: only this phase)
#
# The agent runs the real php-fpm and nginx when installed (else two `sleep`s), with its
# checks every 10 s and sizes every 300 s as in production; DB and Redis point nowhere
# (the checks fail fast), no control plane. Not a test: run it by hand.
#
#   scripts/bench-agent.sh
#   DURATION=20s CONNECTIONS=16 scripts/bench-agent.sh
#   STOP_ONLY=1 STOP_RUNS=10 scripts/bench-agent.sh
set -euo pipefail

THREADS="${THREADS:-2}"
CONNECTIONS="${CONNECTIONS:-8}"
DURATION="${DURATION:-15s}"
IDLE_SECS="${IDLE_SECS:-30}"
STOP_RUNS="${STOP_RUNS:-5}"
STOP_ONLY="${STOP_ONLY:-0}"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="$(mktemp -d /tmp/bench-agent.XXXXXX)"
chmod 755 "$WORK"
AGENT_PID=""
NE_PID=""

log() { printf '==> %s\n' "$*" >&2; }
cleanup() {
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  [ -n "$NE_PID" ] && kill "$NE_PID" 2>/dev/null && wait "$NE_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null 2>&1 || { log "installing $2"; apt-get install -y -qq "$2" >/dev/null; }; }
if [ "$STOP_ONLY" != 1 ]; then
  need wrk wrk
  need prometheus-node-exporter prometheus-node-exporter
fi
need curl curl

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ticks (utime+stime) of PID
ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
HZ="$(getconf CLK_TCK)"

ROWS=()
# measure NAME PID SECONDS [wrk URL]
measure() {
  local name="$1" pid="$2" secs="$3" url="${4:-}" t0 t1 w0 w1 rps="-"
  t0="$(ticks "$pid")"; w0="$(date +%s.%N)"
  if [ -n "$url" ]; then
    rps="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$secs" "$url" | awk '/^Requests\/sec/ { printf "%.0f", $2 }')"
  else
    sleep "$secs"
  fi
  t1="$(ticks "$pid")"; w1="$(date +%s.%N)"
  local cpu rss hwm
  cpu="$(awk -v a="$t0" -v b="$t1" -v w0="$w0" -v w1="$w1" -v hz="$HZ" 'BEGIN { printf "%.2f", (b - a) / hz / (w1 - w0) * 100 }')"
  rss="$(awk -v k="$(rss_kb "$pid")" 'BEGIN { printf "%.1f", k / 1024 }')"
  hwm="$(awk -v k="$(hwm_kb "$pid")" 'BEGIN { printf "%.1f", k / 1024 }')"
  ROWS+=("| $name | $rps | $cpu | $rss | $hwm |")
  log "$name: ${rps} req/s, cpu ${cpu}%, rss ${rss} MiB, peak ${hwm} MiB"
}

log "building pressdock-agent (release)"
(cd "$ROOT" && cargo build --release -q -p site-agent)
AGENT="$ROOT/target/release/pressdock-agent"

# The site's secrets and environment, as the swarm spec gives them.
mkdir -p "$WORK/secrets"
printf 'pw\n' > "$WORK/secrets/db_password"
printf 'pw\n' > "$WORK/secrets/redis_password"
printf 'token\n' > "$WORK/secrets/agent_token"
for n in AUTH_KEY SECURE_AUTH_KEY LOGGED_IN_KEY NONCE_KEY AUTH_SALT SECURE_AUTH_SALT LOGGED_IN_SALT NONCE_SALT; do
  printf '%s=%s\n' "$n" "$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
done > "$WORK/secrets/wp_salts"

AGENT_PORT="$(free_port)"
SITE_PORT="$(free_port)"
REAL=0
if command -v php-fpm8.2 >/dev/null && command -v nginx >/dev/null && [ -f /usr/share/wordpress/wp-includes/version.php ]; then
  REAL=1
fi
export PRESSDOCK_SITE_ID=benchsite PRESSDOCK_DOMAINS=bench.test PRESSDOCK_PRIMARY_DOMAIN=bench.test
export PRESSDOCK_DB_HOST=127.0.0.1:1 PRESSDOCK_DB_NAME=wp_benchsite PRESSDOCK_DB_USER=wp_benchsite
export PRESSDOCK_REDIS_SENTINELS=127.0.0.1:1 PRESSDOCK_REDIS_MASTER_NAME=pressdock
export PRESSDOCK_REDIS_USER=wp_benchsite PRESSDOCK_REDIS_PREFIX=wp_benchsite:
export PRESSDOCK_WP_CONTENT="$WORK/wp-content"
export PRESSDOCK_DB_PASSWORD_FILE="$WORK/secrets/db_password" PRESSDOCK_REDIS_PASSWORD_FILE="$WORK/secrets/redis_password"
export PRESSDOCK_AGENT_TOKEN_FILE="$WORK/secrets/agent_token" PRESSDOCK_WP_SALTS_FILE="$WORK/secrets/wp_salts"
export PRESSDOCK_AGENT_LISTEN="127.0.0.1:$AGENT_PORT" PRESSDOCK_SITE_PORT="$SITE_PORT"
export PRESSDOCK_AGENT_RUN_DIR="$WORK/run" PRESSDOCK_AGENT_STATE_DIR="$WORK/state"
export PRESSDOCK_AGENT_WP_CONFIG="$WORK/etc/config-default.php" PRESSDOCK_AGENT_INSTALL=0
export PRESSDOCK_AGENT_LOG=warn
if [ "$REAL" = 0 ]; then
  log "php-fpm8.2/nginx/wordpress not installed: sleeps stand in, no site-load phase"
  export PRESSDOCK_AGENT_PHP_FPM_CMD="sleep 100000" PRESSDOCK_AGENT_NGINX_CMD="sleep 100001"
fi

# Milliseconds from SIGTERM to the agent's exit, for one agent started with drain $1 s.
stop_ms() {
  local pid t0 t1
  PRESSDOCK_AGENT_DRAIN_SECS="$1" "$AGENT" 2>>"$WORK/stop.log" &
  pid=$!
  for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$AGENT_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1   # children up, first checks done
  t0="$(date +%s%N)"
  kill -TERM "$pid"
  wait "$pid" || log "agent exited with $?"
  t1="$(date +%s%N)"
  echo $(( (t1 - t0) / 1000000 ))
}

# | stop, drain D s | runs | min | median | max |
stop_row() {
  local drain="$1" runs="$2" all=()
  for _ in $(seq 1 "$runs"); do all+=("$(stop_ms "$drain")"); done
  printf '%s\n' "${all[@]}" | sort -n | awk -v d="$drain" -v n="$runs" '
    { v[NR] = $1 } END { printf "| SIGTERM to exit, drain %s s | %d | %d | %d | %d |\n", d, n, v[1], v[int((NR + 1) / 2)], v[NR] }'
}

stop_table() {
  local rows=()
  log "stop: $STOP_RUNS runs without a drain, 1 with the production drain (7 s)"
  rows+=("$(stop_row 0 "$STOP_RUNS")")
  rows+=("$(stop_row 7 1)")
  printf '\n| stop (stop grace 15 s, children: %s) | runs | min ms | median ms | max ms |\n|---|---:|---:|---:|---:|\n' \
    "$([ "$REAL" = 1 ] && echo "php-fpm + nginx" || echo "two sleeps")"
  printf '%s\n' "${rows[@]}"
}

if [ "$STOP_ONLY" = 1 ]; then
  stop_table
  printf '\n%s, %s cores, load average %s, agent %s\n' "$(date -u +%Y-%m-%d)" "$(nproc)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)" "$("$AGENT" --version | awk '{print $2}')"
  exit 0
fi

log "starting the agent (real php-fpm + nginx: $REAL)"
"$AGENT" 2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$AGENT_PORT/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://127.0.0.1:$AGENT_PORT/healthz" >/dev/null
sleep 5   # let the first checks and the size walk pass

NE_PORT="$(free_port)"
prometheus-node-exporter --web.listen-address="127.0.0.1:$NE_PORT" >"$WORK/ne.log" 2>&1 &
NE_PID=$!
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$NE_PORT/metrics" >/dev/null 2>&1 && break; sleep 0.1; done
sleep 2

secs="${DURATION%s}"
measure "agent, idle" "$AGENT_PID" "$IDLE_SECS"
measure "node-exporter, idle" "$NE_PID" "$IDLE_SECS"
measure "agent, /metrics under wrk" "$AGENT_PID" "$secs" "http://127.0.0.1:$AGENT_PORT/metrics"
measure "node-exporter, /metrics under wrk" "$NE_PID" "$secs" "http://127.0.0.1:$NE_PORT/metrics"
measure "agent, /healthz under wrk" "$AGENT_PID" "$secs" "http://127.0.0.1:$AGENT_PORT/healthz"
if [ "$REAL" = 1 ]; then
  measure "agent, site serving a static file under wrk (req/s of nginx)" "$AGENT_PID" "$secs" \
    "http://127.0.0.1:$SITE_PORT/wp-includes/css/dashicons.min.css"
  curl -fsS "http://127.0.0.1:$AGENT_PORT/metrics" | grep -E '^pressdock_http_request_duration_seconds_count' >&2 || true
fi
measure "agent, idle again" "$AGENT_PID" "$IDLE_SECS"

kill -TERM "$AGENT_PID" && wait "$AGENT_PID" || true
AGENT_PID=""
STOP_TABLE="$(stop_table)"

printf '\n| phase | req/s | CPU %% of a core | RSS MiB | peak RSS MiB |\n|---|---:|---:|---:|---:|\n'
printf '%s\n' "${ROWS[@]}"
printf '%s\n' "$STOP_TABLE"
printf '\n%s, %s cores, load average %s, wrk -t%s -c%s -d%s, agent %s, node-exporter %s\n' \
  "$(date -u +%Y-%m-%d)" "$(nproc)" "$(cut -d' ' -f1-3 /proc/loadavg)" "$THREADS" "$CONNECTIONS" "$DURATION" \
  "$("$AGENT" --version | awk '{print $2}')" "$(prometheus-node-exporter --version 2>&1 | awk 'NR==1 {print $3}')"

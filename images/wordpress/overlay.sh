#!/bin/sh
# Files laid over the cached root filesystem at import time (changing them re-imports the
# image but does not rebuild it): the site agent from this workspace's target/, when built.
# $1: an empty folder to put files in. Stdout: extra `docker import --change` lines.
set -eu
out="$1"
repo="$(cd "$(dirname "$0")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
agent=""
for p in "$target/release/pressdock-agent" "$target/debug/pressdock-agent"; do
  if [ -x "$p" ] && { [ -z "$agent" ] || [ "$p" -nt "$agent" ]; }; then agent="$p"; fi
done
[ -n "$agent" ] || exit 0
mkdir -p "$out/usr/local/bin"
strip --strip-debug -o "$out/usr/local/bin/pressdock-agent" "$agent"
# The agent is the entrypoint of site tasks; /entrypoint.sh (nginx + php-fpm without the
# agent) stays for the lab's test site, which sets it explicitly.
echo 'ENTRYPOINT ["/usr/local/bin/pressdock-agent"]'
echo 'CMD ["run"]'

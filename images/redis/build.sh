#!/bin/sh
# Redis 7.0 and Sentinel from Debian, with the cache tier's entrypoint (pd-redis, beside this
# file): the Redis nodes and Sentinels of stacks/cache.yml.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mmdebstrap --variant=essential --quiet --include=redis-server,redis-sentinel \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="copy-in $here/pd-redis /usr/local/bin" \
  --customize-hook='chmod 0755 "$1"/usr/local/bin/pd-redis' \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  bookworm "$1" /etc/apt/sources.list.d/debian.sources

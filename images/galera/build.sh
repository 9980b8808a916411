#!/bin/sh
# MariaDB 10.11 and Galera 4 from Debian, with the database tier's entrypoint (pd-galera,
# beside this file): the Galera nodes of stacks/database.yml. rsync, iproute2 (ss) and procps
# are what the rsync state transfer's scripts call.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
mmdebstrap --variant=essential --quiet \
  --include=mariadb-server,galera-4,rsync,iproute2,procps \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="copy-in $here/pd-galera /usr/local/bin" \
  --customize-hook='chmod 0755 "$1"/usr/local/bin/pd-galera' \
  --customize-hook='rm -rf "$1"/var/lib/mysql/* "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  bookworm "$1" /etc/apt/sources.list.d/debian.sources

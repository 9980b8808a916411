#!/bin/sh
# Varnish 7.1 from Debian; gcc and libc6-dev come with it (VCL is compiled at load time).
set -eu
mmdebstrap --variant=essential --quiet --include=varnish,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*' \
  bookworm "$1" /etc/apt/sources.list.d/debian.sources

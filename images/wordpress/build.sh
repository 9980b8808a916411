#!/bin/sh
# WordPress runtime: Debian's php-fpm 8.2, php-mysql, php-redis, nginx-light, WordPress, a theme.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
mmdebstrap --variant=essential --quiet \
  --include=php-fpm,php-mysql,php-redis,nginx-light,wordpress,wordpress-theme-twentytwentythree,ca-certificates \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="$here/hook.sh \"\$1\"" \
  bookworm "$1" /etc/apt/sources.list.d/debian.sources

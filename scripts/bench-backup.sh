#!/usr/bin/env bash
# Backup and restore benchmark (issue 13, item 8): the platform's backup runner and
# restore against the pipelines an operator would run, on the same machine, in the same
# run, rounds alternating.
#
#   ours       platform/examples/bench_backup.rs: backup::run of a generated site (the
#              database on the machine's MariaDB, wp-content in a temp dir) into an s3s-fs
#              of our own on loopback: dump in one snapshot + tar, zstd, multipart uploads,
#              read-back of every object
#   baseline   mariadb-dump --single-transaction | zstd -3 > file, then tar | zstd -3 > file
#   restore    ours: the example restoring that backup from S3 into a fresh schema and an
#              empty folder (backup::restore: SHA-256 as it streams, every statement
#              checked, row counts compared), database and files at once; baseline:
#              zstd -dc dump | mariadb, then zstd -dc archive | tar -x
#
# Time (wall, seconds) and peak memory (max RSS; for the baseline the largest process of
# the pipeline, from GNU time) per round, with ours / baseline ratios. Run at each size of
# BENCH_SIZES (MB of database and as many MB of wp-content) to see whether memory stays flat.
# Not a test: no assertion, a table on stdout (also in $OUT, default /tmp/bench-backup.md).
#
#   scripts/bench-backup.sh                      # BENCH_SIZES="50 200", BENCH_ROUNDS=3
#   BENCH_SIZES=20 BENCH_ROUNDS=1 scripts/bench-backup.sh
#   BENCH_PROFILE=release scripts/bench-backup.sh  # a release build of the example
#   BENCH_BIN=/tmp/bench_backup.main scripts/bench-backup.sh  # that binary, no build
#
# Needs: MariaDB on 127.0.0.1:3306 (BENCH_MYSQL_URL, default the pressdock_test account),
# mariadb-dump, zstd, tar, GNU time, s3s-fs (scripts/install-deps.sh).
set -euo pipefail

cd "$(dirname "$0")/.."
SIZES=${BENCH_SIZES:-"50 200"}
ROUNDS=${BENCH_ROUNDS:-3}
PROFILE=${BENCH_PROFILE:-dev}
OUT=${OUT:-/tmp/bench-backup.md}
URL=${BENCH_MYSQL_URL:-mysql://pressdock_test:pressdock-test-pw@127.0.0.1:3306}
rest=${URL#mysql://}
cred=${rest%@*}
hostport=${rest##*@}
DBUSER=${cred%%:*}
DBPASS=${cred#*:}
[ "$DBPASS" = "$cred" ] && DBPASS=""
DBHOST=${hostport%%:*}
DBPORT=${hostport##*:}
export MYSQL_PWD="$DBPASS"
sql() { mariadb -h "$DBHOST" -P "$DBPORT" -u "$DBUSER" "$@"; }

S3S=$(command -v s3s-fs || echo "$HOME/.cargo/bin/s3s-fs")
[ -x "$S3S" ] || { echo "s3s-fs not found: run scripts/install-deps.sh" >&2; exit 1; }

if [ -n "${BENCH_BIN:-}" ]; then
  # A binary built elsewhere (e.g. an earlier commit's, kept aside to compare with).
  BIN=$BENCH_BIN
  echo "using $BIN" >&2
elif [ "$PROFILE" = release ]; then
  echo "building the example ($PROFILE)" >&2
  nice -n 10 cargo build -q --release -p platform --example bench_backup
  BIN=target/release/examples/bench_backup
else
  echo "building the example ($PROFILE)" >&2
  nice -n 10 cargo build -q -p platform --example bench_backup
  BIN=target/debug/examples/bench_backup
fi

WORK=$(mktemp -d /tmp/bench-backup.XXXXXX)
SCHEMA="bench_backup_$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')"
S3PID=""
cleanup() {
  [ -n "$S3PID" ] && kill "$S3PID" 2>/dev/null || true
  sql -e "DROP DATABASE IF EXISTS \`$SCHEMA\`" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ACCESS=bench-access
export BENCH_S3_SECRET="bench-secret-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$WORK/s3/backups"
"$S3S" --host 127.0.0.1 --port "$PORT" --access-key "$ACCESS" --secret-key "$BENCH_S3_SECRET" \
  "$WORK/s3" >/dev/null 2>&1 &
S3PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done

# A WordPress-like database of about $1 MB: posts with text bodies, post meta.
make_db() {
  local mb=$1
  sql -e "DROP DATABASE IF EXISTS \`$SCHEMA\`; CREATE DATABASE \`$SCHEMA\`"
  sql "$SCHEMA" -e "
    CREATE TABLE wp_posts (ID BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY, post_date DATETIME NOT NULL,
      post_title TEXT NOT NULL, post_content LONGTEXT NOT NULL, post_status VARCHAR(20) NOT NULL)
      DEFAULT CHARSET=utf8mb4;
    CREATE TABLE wp_postmeta (meta_id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
      post_id BIGINT UNSIGNED NOT NULL, meta_key VARCHAR(255), meta_value LONGTEXT, KEY (post_id))
      DEFAULT CHARSET=utf8mb4;
    INSERT INTO wp_posts (post_date, post_title, post_content, post_status)
      SELECT '2026-01-01' + INTERVAL seq MINUTE, CONCAT('Post ', seq),
             CONCAT('<p>', REPEAT(CONCAT(MD5(seq), ' lorem ipsum dolor sit amet '), 40), '</p>'), 'publish'
      FROM seq_1_to_$((mb * 400));
    INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
      SELECT seq, '_meta', CONCAT('a:1:{s:3:\"key\";s:32:\"', MD5(seq), '\";}') FROM seq_1_to_$((mb * 1500));"
}

# wp-content of about $1 MB: three quarters text-like (compressible), a quarter random.
make_files() {
  local mb=$1 dir=$WORK/wp-content
  rm -rf "$dir"; mkdir -p "$dir/uploads" "$dir/plugins"
  for i in $(seq "$((mb * 3 / 4))"); do
    head -c 786432 /dev/urandom | base64 -w 76 | tr 'A-Z' 'a-z' >"$dir/plugins/f$i.php"
  done
  for i in $(seq "$((mb / 4))"); do head -c 1048576 /dev/urandom >"$dir/uploads/img$i.jpg"; done
}

BACKUP_OUT=$WORK/backup.md
RESTORE_OUT=$WORK/restore.md
{
  echo "| size (MB db + MB files) | round | ours s | baseline s | ours / baseline time | ours peak MiB | baseline peak MiB | ours stored MB | baseline stored MB |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >"$BACKUP_OUT"
{
  echo "| size (MB db + MB files) | round | ours s | baseline s | ours / baseline time | ours peak MiB | baseline peak MiB |"
  echo "|---|---|---|---|---|---|---|"
} >"$RESTORE_OUT"
RSCHEMA="${SCHEMA}_r"
fresh_target() {
  sql -e "DROP DATABASE IF EXISTS \`$RSCHEMA\`; CREATE DATABASE \`$RSCHEMA\`"
  rm -rf "$WORK/restored"; mkdir -p "$WORK/restored"
}
cleanup_restore() { sql -e "DROP DATABASE IF EXISTS \`$RSCHEMA\`" || true; }
trap 'cleanup_restore; cleanup' EXIT
ratio() { echo "$1 / $2" | bc -l; }
mib() { echo "$1 / 1024" | bc -l; }
for size in $SIZES; do
  echo "generating $size MB + $size MB" >&2
  make_db "$size"
  make_files "$size"
  for round in $(seq "$ROUNDS"); do
    # Backup: ours (to S3, read back) beside mariadb-dump | zstd and tar | zstd to files.
    read -r ours_s ours_kib ours_bytes prefix < <("$BIN" "$URL" "$SCHEMA" "$WORK/wp-content" \
      "http://127.0.0.1:$PORT" backups "$ACCESS")
    rm -f "$WORK"/base.*
    t0=$(date +%s.%N)
    m1=$( { /usr/bin/time -f "%M" sh -c "mariadb-dump -h '$DBHOST' -P '$DBPORT' -u '$DBUSER' \
      --single-transaction '$SCHEMA' | zstd -q -3 >'$WORK/base.sql.zst'" ; } 2>&1 | tail -1)
    m2=$( { /usr/bin/time -f "%M" sh -c "tar -C '$WORK/wp-content' -cf - . | zstd -q -3 \
      >'$WORK/base.tar.zst'" ; } 2>&1 | tail -1)
    t1=$(date +%s.%N)
    base_s=$(echo "$t1 - $t0" | bc -l)
    base_kib=$(( m1 > m2 ? m1 : m2 ))
    base_bytes=$(( $(stat -c %s "$WORK/base.sql.zst") + $(stat -c %s "$WORK/base.tar.zst") ))
    printf '| %s + %s | %s | %.2f | %.2f | %.2f | %.0f | %.0f | %.1f | %.1f |\n' \
      "$size" "$size" "$round" "$ours_s" "$base_s" "$(ratio "$ours_s" "$base_s")" \
      "$(mib "$ours_kib")" "$(mib "$base_kib")" \
      "$(echo "$ours_bytes / 1000000" | bc -l)" "$(echo "$base_bytes / 1000000" | bc -l)" \
      | tee -a "$BACKUP_OUT" >&2

    # Restore: ours (from S3: SHA-256, zstd, every statement checked, row counts) beside
    # zstd -dc | mariadb and zstd -dc | tar -x from the files above.
    fresh_target
    read -r rours_s rours_kib < <("$BIN" "$URL" "$RSCHEMA" "$WORK/restored" \
      "http://127.0.0.1:$PORT" backups "$ACCESS" "$prefix")
    fresh_target
    t0=$(date +%s.%N)
    m1=$( { /usr/bin/time -f "%M" sh -c "zstd -q -dc '$WORK/base.sql.zst' | mariadb -h '$DBHOST' \
      -P '$DBPORT' -u '$DBUSER' '$RSCHEMA'" ; } 2>&1 | tail -1)
    m2=$( { /usr/bin/time -f "%M" sh -c "zstd -q -dc '$WORK/base.tar.zst' | tar -C '$WORK/restored' \
      -xf -" ; } 2>&1 | tail -1)
    t1=$(date +%s.%N)
    rbase_s=$(echo "$t1 - $t0" | bc -l)
    rbase_kib=$(( m1 > m2 ? m1 : m2 ))
    printf '| %s + %s | %s | %.2f | %.2f | %.2f | %.0f | %.0f |\n' \
      "$size" "$size" "$round" "$rours_s" "$rbase_s" "$(ratio "$rours_s" "$rbase_s")" \
      "$(mib "$rours_kib")" "$(mib "$rbase_kib")" | tee -a "$RESTORE_OUT" >&2
    # The bucket does not keep old rounds (disk).
    rm -rf "$WORK/s3/backups"/*
  done
done
{
  echo "Backup: ours (backup::run to S3 with read-back) vs mariadb-dump --single-transaction | zstd -3 + tar | zstd -3 to files"
  echo
  cat "$BACKUP_OUT"
  echo
  echo "Restore: ours (backup::restore from S3) vs zstd -dc | mariadb + zstd -dc | tar -x"
  echo
  cat "$RESTORE_OUT"
} | tee "$OUT"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

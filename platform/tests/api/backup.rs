//! The backup runner against real servers: the machine's MariaDB and an `s3s-fs` started
//! by each test on a loopback port (signed requests only, as in the lab), in a temp dir.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use backends::{config::S3Config, ids::Secret};
use platform::{
    backup::{self, BackupSpec, BackupStore, Event, Hooks, Progress},
    domain::Id,
};
use rand::RngCore;
use sqlx::{MySqlPool, Row};

use crate::support::{free_port, random_name, server_url};

const ACCESS_KEY: &str = "pdtest-access";
pub(crate) const SECRET_KEY: &str = "pdtest-secret-key-never-printed";
pub(crate) const BUCKET: &str = "backups";

/// An s3s-fs of our own: killed when dropped.
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
    root: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs_binary() -> PathBuf {
    if let Ok(p) = std::env::var("PRESSDOCK_S3S_FS") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo = Path::new(&home).join(".cargo/bin/s3s-fs");
    if cargo.exists() {
        cargo
    } else {
        "s3s-fs".into()
    }
}

impl S3Server {
    pub async fn start() -> Self {
        let root = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = std::process::Command::new(s3s_fs_binary())
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--access-key",
                ACCESS_KEY,
                "--secret-key",
                SECRET_KEY,
            ])
            .arg(root.path())
            .current_dir(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting s3s-fs (scripts/install-deps.sh installs it): {e}")
            });
        let endpoint = format!("http://127.0.0.1:{port}");
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let server = Self {
            child,
            endpoint,
            root,
        };
        server
            .store()
            .client()
            .create_bucket()
            .bucket(BUCKET)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "creating the bucket: {}",
                    aws_sdk_s3::error::DisplayErrorContext(e)
                )
            });
        server
    }

    pub fn config(&self, secret: &str) -> S3Config {
        S3Config {
            endpoint: self.endpoint.clone(),
            bucket: BUCKET.to_owned(),
            region: "us-east-1".to_owned(),
            access_key: ACCESS_KEY.to_owned(),
            secret_key: Secret::new(secret),
            force_path_style: true,
        }
    }

    /// Files s3s-fs keeps for unfinished multipart uploads (`.upload-ID.json`, parts).
    pub fn open_upload_files(&self) -> Vec<String> {
        let mut found: Vec<String> = std::fs::read_dir(self.root.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".upload"))
            .collect();
        found.sort();
        found
    }

    pub fn store(&self) -> BackupStore {
        BackupStore::new(&self.config(SECRET_KEY))
            .unwrap()
            .with_part_size(backup::store::MIN_PART_SIZE)
    }
}

/// A site's schema on the machine's MariaDB, dropped at the end.
pub(crate) struct Schema {
    pub(crate) admin: MySqlPool,
    pub(crate) name: String,
}

impl Schema {
    pub(crate) async fn create() -> Self {
        let admin = MySqlPool::connect(&server_url()).await.unwrap();
        let name = random_name("pdtest_bk");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .execute(&admin)
            .await
            .unwrap();
        Self { admin, name }
    }

    pub(crate) async fn exec(&self, sql: &str) {
        let mut conn = self.admin.acquire().await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("USE `{}`", self.name)))
            .execute(&mut *conn)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// `CHECKSUM TABLE` and `COUNT(*)` of every base table, by name.
    pub(crate) async fn fingerprint(&self) -> Vec<(String, i64, i64)> {
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? \
             AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME",
        )
        .bind(&self.name)
        .fetch_all(&self.admin)
        .await
        .unwrap();
        let mut out = Vec::new();
        for t in tables {
            let q = format!("`{}`.`{}`", self.name, t.replace('`', "``"));
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("CHECKSUM TABLE {q}")))
                .fetch_one(&self.admin)
                .await
                .unwrap();
            let sum: Option<i64> = row.try_get(1).unwrap();
            let count: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {q}")))
                    .fetch_one(&self.admin)
                    .await
                    .unwrap();
            out.push((t, sum.unwrap_or(0), count));
        }
        out
    }

    fn opts(&self) -> mysql_async::Opts {
        mysql_async::Opts::from_url(&server_url()).unwrap()
    }

    pub(crate) async fn drop(self) {
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS `{}`",
            self.name
        )))
        .execute(&self.admin)
        .await;
        self.admin.close().await;
    }
}

/// Tables with every kind of value a WordPress database holds, and some it might.
pub(crate) async fn fill_site(schema: &Schema) {
    schema
        .exec(
            "CREATE TABLE wp_options (option_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
               option_name VARCHAR(191) NOT NULL UNIQUE, option_value LONGTEXT NOT NULL, \
               autoload VARCHAR(20) NOT NULL DEFAULT 'yes') DEFAULT CHARSET=utf8mb4;
             INSERT INTO wp_options (option_name, option_value) VALUES
               ('siteurl', 'https://a.example'),
               ('blogname', 'Caf\\xc3\\xa9 \"quotes\" ''single'' back\\\\slash \\n newline \\0 nul 🚀'),
               ('widget', 'a:1:{s:4:\"text\";s:17:\"https://a.example\";}'),
               ('empty', '');
             CREATE TABLE wp_posts (ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
               post_date DATETIME NOT NULL, post_content LONGTEXT NOT NULL, \
               post_title TEXT NOT NULL, menu_order INT NOT NULL DEFAULT 0) DEFAULT CHARSET=utf8mb4;
             INSERT INTO wp_posts (post_date, post_content, post_title, menu_order)
               SELECT '2026-12-06 10:00:00' + INTERVAL seq SECOND,
                      CONCAT('<p>Post ', seq, ' ', REPEAT('lorem ipsum ', 1 + seq % 50), '</p>'),
                      CONCAT('Title ', seq), CAST(seq % 7 AS SIGNED) - 3
               FROM seq_1_to_20000;
             CREATE TABLE odd_types (id INT PRIMARY KEY, b BLOB, vb VARBINARY(16), bits BIT(12), \
               d DECIMAL(20,6), f DOUBLE, fl FLOAT, ts TIMESTAMP NULL, t TIME, y YEAR, \
               e ENUM('a','b c'), s SET('x','y'), j JSON, n INT NULL, l1 VARCHAR(20) CHARACTER SET latin1);
             INSERT INTO odd_types VALUES
               (1, 0x00FF27225C0A0D1A, 0x000102, b'101010101010', -12345678901234.123456, \
                -1.5e-300, 3.25, '2026-12-06 20:00:00', '-838:59:59', 2026, 'b c', 'x,y', \
                '{\"k\": [1, \"v\"]}', NULL, 'Gr\\xfc\\xdfe'),
               (2, '', '', b'0', 0, 0, 0, NULL, '00:00:00', 1901, 'a', '', NULL, 0, '');
             INSERT INTO odd_types (id, l1) VALUES (3, CONVERT('Größe' USING latin1));
             CREATE TABLE `wp_empty``tick` (id INT PRIMARY KEY) ENGINE=InnoDB;
             CREATE VIEW wp_recent AS SELECT ID FROM wp_posts WHERE ID > 19990;",
        )
        .await;
}

/// A wp-content tree: nested folders, a large incompressible upload (several parts at the
/// 5 MiB part size), an empty file, a symbolic link, a name with spaces and accents.
pub(crate) fn fill_files(root: &Path, random_mib: usize) {
    std::fs::create_dir_all(root.join("uploads/2026/12")).unwrap();
    std::fs::create_dir_all(root.join("plugins/hello")).unwrap();
    std::fs::create_dir_all(root.join("themes/empty-dir")).unwrap();
    std::fs::write(root.join("index.php"), "<?php // Silence is golden.\n").unwrap();
    std::fs::write(root.join("plugins/hello/hello.php"), "<?php echo 'hi';\n").unwrap();
    std::fs::write(root.join("uploads/2026/12/empty.txt"), "").unwrap();
    std::fs::write(
        root.join("uploads/2026/12/café menu.txt"),
        "soupe du jour\n",
    )
    .unwrap();
    let mut big = vec![0u8; random_mib * 1024 * 1024];
    rand::rng().fill_bytes(&mut big);
    std::fs::write(root.join("uploads/2026/12/video.bin"), &big).unwrap();
    std::os::unix::fs::symlink("../index.php", root.join("plugins/link.php")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("plugins/hello/hello.php"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
}

pub(crate) fn spec(schema: &Schema, files: &Path) -> BackupSpec {
    BackupSpec {
        backup_id: Id::generate(),
        tenant_id: Id::generate(),
        site_id: Id::generate(),
        plan: "standard".to_owned(),
        db: schema.opts(),
        schema: schema.name.clone(),
        files_root: files.to_owned(),
        wordpress_version: Some("6.9".to_owned()),
        php_version: Some("8.3.14".to_owned()),
    }
}

pub(crate) async fn fetch(store: &BackupStore, key: &str) -> Vec<u8> {
    store.get(key).await.unwrap()
}

pub(crate) fn unzstd(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(bytes)
        .unwrap()
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// Loads `sql` into `schema` with the `mariadb` client, as an operator would.
fn load_with_client(schema: &str, sql: &[u8]) {
    let url = server_url();
    let rest = url.trim_start_matches("mysql://");
    let (cred, hostport) = rest.split_once('@').unwrap_or(("root", rest));
    let (user, password) = cred.split_once(':').unwrap_or((cred, ""));
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
    let port = port.trim_end_matches('/');
    let mut cmd = std::process::Command::new("mariadb");
    cmd.args(["-h", host, "-P", port, "-u", user, schema]);
    if !password.is_empty() {
        cmd.env("MYSQL_PWD", password);
    }
    let mut child = cmd.stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(sql).unwrap();
    assert!(child.wait().unwrap().success(), "mariadb refused the dump");
}

#[tokio::test]
async fn a_backup_is_a_consistent_pair_written_and_read_back() {
    let s3 = S3Server::start().await;
    let store = s3.store();
    let schema = Schema::create().await;
    fill_site(&schema).await;
    let dir = tempfile::tempdir().unwrap();
    fill_files(dir.path(), 12);
    let spec = spec(&schema, dir.path());
    let (progress, mut events) = Progress::channel();

    let hooks = Hooks {
        progress: Some(progress),
        journal: None,
    };
    let done = backup::run(&store, &spec, hooks).await.unwrap();
    let m = &done.manifest;

    // The folder holds exactly the two objects and the manifest, nothing in progress.
    let prefix = spec.prefix();
    assert_eq!(
        prefix,
        format!("{}/{}/{}/", spec.tenant_id, spec.site_id, spec.backup_id)
    );
    let mut listed = store.list(&prefix).await.unwrap();
    listed.sort();
    let names: Vec<&str> = listed
        .iter()
        .map(|(k, _)| k.trim_start_matches(&prefix))
        .collect();
    assert_eq!(
        names,
        ["database.sql.zst", "manifest.json", "wp-content.tar.zst"]
    );
    assert_eq!(s3.open_upload_files(), Vec::<String>::new());

    // The manifest as stored is the one returned, and records what is there.
    let stored: serde_json::Value =
        serde_json::from_slice(&fetch(&store, &done.manifest_key).await).unwrap();
    assert_eq!(stored["format"], 1);
    assert_eq!(stored["backup_id"], spec.backup_id.as_str());
    assert_eq!(stored["plan"], "standard");
    assert_eq!(stored["versions"]["wordpress"], "6.9");
    assert_eq!(stored["versions"]["php"], "8.3.14");
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&schema.admin)
        .await
        .unwrap();
    assert_eq!(stored["versions"]["database"], version.as_str());
    assert!(m.started_at <= m.finished_at);
    for (key, size) in &listed {
        if let Some(o) = m.objects.iter().find(|o| &o.key == key) {
            assert_eq!(*size, o.size, "{key}");
            let body = fetch(&store, key).await;
            assert_eq!(hex::encode(sha2::Sha256::digest(&body)), o.sha256, "{key}");
            assert_eq!(unzstd(&body).len() as u64, o.uncompressed_size, "{key}");
        }
    }
    use sha2::Digest;
    let files_obj = m.object(backup::FILES_OBJECT).unwrap();
    assert!(
        files_obj.parts >= 3,
        "a 12 MiB upload in 5 MiB parts: {files_obj:?}"
    );

    // Tables and row counts as the database has them; the view is named, not dumped.
    let fp = schema.fingerprint().await;
    let tables: Vec<(String, u64)> = m
        .database
        .tables
        .iter()
        .map(|t| (t.name.clone(), t.rows))
        .collect();
    let expected: Vec<(String, u64)> = fp.iter().map(|(t, _, n)| (t.clone(), *n as u64)).collect();
    assert_eq!(tables, expected);
    assert!(tables.contains(&("wp_posts".to_owned(), 20000)));
    assert_eq!(m.database.skipped, ["wp_recent"]);

    // The dump names no schema, and loads with the stock client into another database
    // with the same checksums, table by table.
    let sql = unzstd(&fetch(&store, &m.object(backup::DATABASE_OBJECT).unwrap().key).await);
    let text = String::from_utf8_lossy(&sql);
    assert!(!text.contains(&schema.name), "the dump names its schema");
    assert!(!text.to_ascii_uppercase().contains("\nUSE "));
    assert!(!text.to_ascii_uppercase().contains("CREATE DATABASE"));
    let copy = Schema::create().await;
    load_with_client(&copy.name, &sql);
    assert_eq!(copy.fingerprint().await, fp);
    let blogname: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT option_value FROM `{}`.wp_options WHERE option_name = 'blogname'",
        copy.name
    )))
    .fetch_one(&copy.admin)
    .await
    .unwrap();
    assert!(
        blogname.contains("🚀") && blogname.contains('\0'),
        "{blogname:?}"
    );

    // The archive unpacks to the same tree: contents, the link, the mode.
    let tar_bytes = unzstd(&fetch(&store, &files_obj.key).await);
    let out = tempfile::tempdir().unwrap();
    tar::Archive::new(&tar_bytes[..])
        .unpack(out.path())
        .unwrap();
    for f in [
        "index.php",
        "plugins/hello/hello.php",
        "uploads/2026/12/empty.txt",
        "uploads/2026/12/café menu.txt",
        "uploads/2026/12/video.bin",
    ] {
        assert_eq!(
            std::fs::read(out.path().join(f)).unwrap(),
            std::fs::read(dir.path().join(f)).unwrap(),
            "{f}"
        );
    }
    assert!(out.path().join("themes/empty-dir").is_dir());
    assert_eq!(
        std::fs::read_link(out.path().join("plugins/link.php")).unwrap(),
        PathBuf::from("../index.php")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(out.path().join("plugins/hello/hello.php"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    assert_eq!(m.files.files, 5);
    assert_eq!(m.files.symlinks, 1);
    assert_eq!(m.files.bytes, 12 * 1024 * 1024 + 28 + 17 + 14);
    assert!(m.files.changed_while_read.is_empty());

    // Every object was verified before the manifest was.
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        seen.push(e);
    }
    let verified: Vec<&str> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Verified { key } => Some(key.trim_start_matches(&prefix)),
            _ => None,
        })
        .collect();
    assert_eq!(
        verified,
        ["database.sql.zst", "wp-content.tar.zst", "manifest.json"]
    );

    copy.drop().await;
    schema.drop().await;
}

#[tokio::test]
async fn the_dump_reads_one_snapshot_while_the_site_writes() {
    let s3 = S3Server::start().await;
    let store = s3.store();
    let schema = Schema::create().await;
    // `a_log` is read first and `z_log` last, with a large table between them; every
    // write adds one row to each in one transaction.
    schema
        .exec(
            "CREATE TABLE a_log (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB;
             CREATE TABLE m_big (id INT PRIMARY KEY, body TEXT) ENGINE=InnoDB;
             CREATE TABLE z_log (id INT AUTO_INCREMENT PRIMARY KEY, v INT) ENGINE=InnoDB;
             INSERT INTO m_big SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_150000;
             INSERT INTO a_log (v) VALUES (0); INSERT INTO z_log (v) VALUES (0);",
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    fill_files(dir.path(), 1);

    let writer_pool = MySqlPool::connect(&format!("{}/{}", server_url(), schema.name))
        .await
        .unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut n = 0u64;
        while !*stop_rx.borrow_and_update() {
            let mut tx = writer_pool.begin().await.unwrap();
            sqlx::query("INSERT INTO a_log (v) VALUES (1)")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("INSERT INTO z_log (v) VALUES (1)")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
            n += 1;
        }
        n
    });
    let spec = spec(&schema, dir.path());
    let done = backup::run(&store, &spec, Hooks::default()).await.unwrap();
    stop_tx.send(true).unwrap();
    let writes = writer.await.unwrap();
    assert!(writes > 0, "the writer never ran during the backup");

    let rows = |name: &str| {
        done.manifest
            .database
            .tables
            .iter()
            .find(|t| t.name == name)
            .map(|t| t.rows)
            .unwrap()
    };
    assert_eq!(rows("a_log"), rows("z_log"), "{:?}", done.manifest.database);
    assert_eq!(rows("m_big"), 150000);
    // Read by several connections (m_big in key ranges), all in the one snapshot: the two
    // logs, read by different connections, still agree.
    assert_eq!(
        done.manifest.database.readers,
        Some(4),
        "{:?}",
        done.manifest.database
    );
    // The restored copy agrees with the manifest.
    let sql = unzstd(&fetch(&store, &format!("{}database.sql.zst", spec.prefix())).await);
    let copy = Schema::create().await;
    load_with_client(&copy.name, &sql);
    let fp = copy.fingerprint().await;
    let count = |name: &str| fp.iter().find(|t| t.0 == name).unwrap().2 as u64;
    assert_eq!(count("a_log"), rows("a_log"));
    assert_eq!(count("z_log"), rows("z_log"));
    copy.drop().await;
    schema.drop().await;
}

/// The values of the `nasty` table, by row: `t` and `v` utf8mb4 text, `l` latin1 text,
/// `b` and `vb` binary (`None`: NULL).
fn nasty_rows() -> Vec<(i32, [Option<Vec<u8>>; 5])> {
    let special =
        b"NUL\0 bs\\ sq' dq\" cr\r lf\n crlf\r\n ctrlz\x1a \\0 \\' \\% \\_ end\\".to_vec();
    let utf8 = "🚀 Café — ünï 0x41 NULL '' \\".as_bytes().to_vec();
    let latin1 = b"Gr\xfc\xdfe \xe9\xff\\'\0\"\x1a".to_vec();
    let every_byte: Vec<u8> = (0..=255).collect();
    let long_text = special.repeat(30_000);
    let long_bytes = utf8.repeat(30_000);
    let s = |b: &[u8]| Some(b.to_vec());
    let all = |b: &[u8]| std::array::from_fn(|_| Some(b.to_vec()));
    vec![
        // The same bytes in every column, text and binary.
        (1, all(&special)),
        (2, [s(&utf8), s(&utf8), s(&latin1), s(&utf8), s(&latin1)]),
        (3, all(b"")),
        (4, [None, None, None, None, None]),
        (
            5,
            [
                s(&long_text),
                None,
                s(&every_byte),
                s(&long_bytes),
                s(&every_byte),
            ],
        ),
    ]
}

/// `SELECT` of the `nasty` table's values as the server holds them, bytes exactly.
async fn nasty_values(schema: &Schema) -> Vec<(i32, [Option<Vec<u8>>; 5])> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, HEX(t), HEX(v), HEX(l), HEX(b), HEX(vb) FROM `{}`.nasty ORDER BY id",
        schema.name
    )))
    .fetch_all(&schema.admin)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            let col = |i: usize| {
                r.try_get::<Option<String>, _>(i)
                    .unwrap()
                    .map(|h| hex::decode(h).unwrap())
            };
            (r.get(0), [col(1), col(2), col(3), col(4), col(5)])
        })
        .collect()
}

/// Restores the backup under `prefix` into `into` with `backup::restore`.
async fn restore_into(store: &BackupStore, prefix: &str, into: &Schema) {
    let manifest = backup::restore::read_manifest(store, prefix, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let db = mysql_async::OptsBuilder::from_opts(into.opts()).db_name(Some(into.name.clone()));
    backup::restore::restore_database(store, &manifest, db.into(), None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Text columns are dumped as escaped string literals and binary ones as `0x…`, and every
/// byte comes back through a backup and a restore: NUL, backslashes, both quotes, CR and
/// LF, Ctrl-Z, 4-byte UTF-8, latin1, every byte value, `''` apart from NULL, values longer
/// than a statement. A dump in the earlier form (every string as `0x…`) still restores to
/// the same bytes.
#[tokio::test]
async fn text_and_binary_values_come_back_byte_for_byte_through_a_backup_and_a_restore() {
    use sha2::Digest;
    let s3 = S3Server::start().await;
    let store = s3.store();
    let schema = Schema::create().await;
    let expected = nasty_rows();
    let literal = |v: &Option<Vec<u8>>, charset: Option<&str>| match (v, charset) {
        (None, _) => "NULL".to_owned(),
        (Some(b), _) if b.is_empty() => "''".to_owned(),
        (Some(b), Some(cs)) => format!("CONVERT(0x{} USING {cs})", hex::encode(b)),
        (Some(b), None) => format!("0x{}", hex::encode(b)),
    };
    let charsets = [Some("utf8mb4"), Some("utf8mb4"), Some("latin1"), None, None];
    let values: Vec<String> = expected
        .iter()
        .map(|(id, cols)| {
            let cols: Vec<String> = cols
                .iter()
                .zip(charsets)
                .map(|(v, cs)| literal(v, cs))
                .collect();
            format!("({id}, {})", cols.join(", "))
        })
        .collect();
    schema
        .exec(&format!(
            "CREATE TABLE nasty (id INT PRIMARY KEY, t LONGTEXT, v VARCHAR(300), \
               l TEXT CHARACTER SET latin1, b LONGBLOB, vb VARBINARY(300)) DEFAULT CHARSET=utf8mb4;
             INSERT INTO nasty VALUES {};",
            values.join(",\n")
        ))
        .await;
    assert_eq!(nasty_values(&schema).await, expected, "the table as filled");
    let dir = tempfile::tempdir().unwrap();
    fill_files(dir.path(), 1);
    let spec = spec(&schema, dir.path());
    let done = backup::run(&store, &spec, Hooks::default()).await.unwrap();

    // Row 1 holds the same bytes in its three text and two binary columns: three string
    // literals, two hex ones (row 5's long values are other bytes, or not at their start).
    let db_key = done
        .manifest
        .object(backup::DATABASE_OBJECT)
        .unwrap()
        .key
        .clone();
    let sql = unzstd(&fetch(&store, &db_key).await);
    let quoted: &[u8] =
        b"'NUL\\0 bs\\\\ sq\\' dq\" cr\\r lf\\n crlf\\r\\n ctrlz\\Z \\\\0 \\\\\\' \\\\% \\\\_ end\\\\'";
    let hexed = format!("0x{}", hex::encode(expected[0].1[0].as_ref().unwrap()));
    let count = |needle: &[u8]| sql.windows(needle.len()).filter(|w| *w == needle).count();
    assert_eq!(count(quoted), 3, "{}", String::from_utf8_lossy(&sql));
    assert_eq!(count(hexed.as_bytes()), 2);

    // Restored into another schema: the same bytes, the same checksums.
    let copy = Schema::create().await;
    restore_into(&store, &spec.prefix(), &copy).await;
    assert_eq!(nasty_values(&copy).await, expected);
    assert_eq!(copy.fingerprint().await, schema.fingerprint().await);

    // A dump as backups taken before wrote it (every string `0x…`, `''` when empty),
    // in place of this one: restored, the same bytes again.
    let (_, create): (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SHOW CREATE TABLE `{}`.nasty",
        schema.name
    )))
    .fetch_one(&schema.admin)
    .await
    .unwrap();
    let old_values: Vec<String> = expected
        .iter()
        .map(|(id, cols)| {
            let cols: Vec<String> = cols.iter().map(|v| literal(v, None)).collect();
            format!("({id},{})", cols.join(","))
        })
        .collect();
    let old = format!(
        "-- Pressdock backup: one consistent snapshot of the site's database\n\
         SET NAMES binary;\nSET time_zone = '+00:00';\n\
         SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO';\n\
         SET FOREIGN_KEY_CHECKS = 0;\nSET UNIQUE_CHECKS = 0;\n\
         \n-- table `nasty`\nDROP TABLE IF EXISTS `nasty`;\n{create};\n\
         INSERT INTO `nasty` VALUES\n{};\n\
         SET FOREIGN_KEY_CHECKS = 1;\nSET UNIQUE_CHECKS = 1;\n-- end of dump\n",
        old_values.join(",\n")
    );
    let body = zstd::encode_all(old.as_bytes(), 3).unwrap();
    store
        .put(&db_key, body.clone(), "application/zstd")
        .await
        .unwrap();
    let mut manifest = done.manifest.clone();
    for o in &mut manifest.objects {
        if o.name == backup::DATABASE_OBJECT {
            o.size = body.len() as u64;
            o.sha256 = hex::encode(sha2::Sha256::digest(&body));
            o.uncompressed_size = old.len() as u64;
        }
    }
    store
        .put(
            &done.manifest_key,
            serde_json::to_vec_pretty(&manifest).unwrap(),
            "application/json",
        )
        .await
        .unwrap();
    let old_copy = Schema::create().await;
    restore_into(&store, &spec.prefix(), &old_copy).await;
    assert_eq!(nasty_values(&old_copy).await, expected);
    assert_eq!(old_copy.fingerprint().await, schema.fingerprint().await);

    old_copy.drop().await;
    copy.drop().await;
    schema.drop().await;
}

/// MariaDB's own data types that the server sends in their text form (INET4, INET6, UUID)
/// come back as they were, beside a BINARY(16) holding raw bytes.
#[tokio::test]
async fn inet_and_uuid_columns_come_back_through_a_backup_and_a_restore() {
    let s3 = S3Server::start().await;
    let store = s3.store();
    let schema = Schema::create().await;
    schema
        .exec(
            "CREATE TABLE addresses (id INT PRIMARY KEY, v6 INET6, v4 INET4, u UUID,                raw BINARY(16));
             INSERT INTO addresses VALUES
               (1, '2001:db8::ff00:42:8329', '192.0.2.7', '123e4567-e89b-12d3-a456-426655440000',
                UNHEX('00FF2700275C0A0D1A22000000000000')),
               (2, '::1', '10.0.0.1', '00000000-0000-0000-0000-000000000000', NULL),
               (3, NULL, NULL, NULL, NULL);",
        )
        .await;
    let read = |schema: &Schema| {
        let query = format!(
            "SELECT id, CAST(v6 AS CHAR), CAST(v4 AS CHAR), CAST(u AS CHAR), HEX(raw) \
             FROM `{}`.addresses ORDER BY id",
            schema.name
        );
        let admin = schema.admin.clone();
        async move {
            sqlx::query_as::<
                _,
                (
                    i32,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                    Option<String>,
                ),
            >(sqlx::AssertSqlSafe(query))
            .fetch_all(&admin)
            .await
            .unwrap()
        }
    };
    let before = read(&schema).await;
    assert_eq!(before[0].1.as_deref(), Some("2001:db8::ff00:42:8329"));
    let dir = tempfile::tempdir().unwrap();
    fill_files(dir.path(), 1);
    let spec = spec(&schema, dir.path());
    let done = backup::run(&store, &spec, Hooks::default()).await.unwrap();
    let db_key = &done.manifest.object(backup::DATABASE_OBJECT).unwrap().key;
    let sql = String::from_utf8_lossy(&unzstd(&fetch(&store, db_key).await)).into_owned();
    let copy = Schema::create().await;
    restore_into(&store, &spec.prefix(), &copy).await;
    assert_eq!(read(&copy).await, before, "{sql}");
    assert_eq!(copy.fingerprint().await, schema.fingerprint().await);
    copy.drop().await;
    schema.drop().await;
}

#[tokio::test]
async fn a_backup_that_fails_midway_aborts_its_uploads_and_leaves_nothing() {
    let s3 = S3Server::start().await;
    let store = s3.store();
    let schema = Schema::create().await;
    fill_site(&schema).await;
    schema
        .exec("CREATE TABLE zz_secret (id INT PRIMARY KEY); INSERT INTO zz_secret VALUES (1);")
        .await;
    // An account that may read every table but the last: the dump fails after it has
    // written the others, while the files are streaming.
    let user = random_name("pdbk").to_lowercase();
    let db = &schema.name;
    schema
        .exec(&format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY 'pw-{user}';
             GRANT SELECT, SHOW VIEW ON `{db}`.`wp_options` TO '{user}'@'%';
             GRANT SELECT ON `{db}`.`wp_posts` TO '{user}'@'%';
             GRANT INSERT ON `{db}`.`zz_secret` TO '{user}'@'%';"
        ))
        .await;
    let dir = tempfile::tempdir().unwrap();
    fill_files(dir.path(), 12);
    let mut spec = spec(&schema, dir.path());
    let url = server_url();
    let hostport = url.rsplit('@').next().unwrap_or("127.0.0.1:3306");
    spec.db = mysql_async::Opts::from_url(&format!(
        "mysql://{user}:pw-{user}@{}",
        hostport.trim_start_matches("mysql://")
    ))
    .unwrap();

    let err = backup::run(&store, &spec, Hooks::default())
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("dumping table zz_secret"), "{msg}");
    assert!(!msg.contains(&format!("pw-{user}")), "{msg}");
    // Nothing left: no object, no open multipart upload.
    assert_eq!(store.list(&spec.prefix()).await.unwrap(), vec![]);
    assert_eq!(s3.open_upload_files(), Vec::<String>::new());

    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP USER '{user}'@'%'")))
        .execute(&schema.admin)
        .await;
    schema.drop().await;
}

#[tokio::test]
async fn a_runner_stopped_mid_upload_leaves_an_upload_that_cleanup_aborts() {
    let s3 = S3Server::start().await;
    let store = s3.store();
    let schema = Schema::create().await;
    fill_site(&schema).await;
    let dir = tempfile::tempdir().unwrap();
    fill_files(dir.path(), 24);
    let spec = spec(&schema, dir.path());
    let (progress, mut events) = Progress::channel();
    // The journal the platform keeps in its database, here in memory.
    let journaled = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let journal: backup::UploadJournal = {
        let journaled = journaled.clone();
        std::sync::Arc::new(move |key, upload| {
            journaled.lock().unwrap().push((key, upload));
            Box::pin(async { Ok(()) })
        })
    };
    let task = {
        let (store, spec) = (store.clone(), spec.clone());
        let hooks = Hooks {
            progress: Some(progress),
            journal: Some(journal),
        };
        tokio::spawn(async move { backup::run(&store, &spec, hooks).await })
    };
    // Stopped (as a killed process would be) once the first part of wp-content is in.
    loop {
        match events.recv().await {
            Some(Event::PartUploaded { key, .. }) if key.ends_with(backup::FILES_OBJECT) => break,
            Some(_) => {}
            None => panic!("the backup ended before uploading a part"),
        }
    }
    task.abort();
    let _ = task.await;

    let uploads = journaled.lock().unwrap().clone();
    let files_upload = uploads
        .iter()
        .find(|(k, _)| k.ends_with(backup::FILES_OBJECT))
        .unwrap_or_else(|| panic!("{uploads:?}"));
    assert!(store.parts(&files_upload.0, &files_upload.1).await.unwrap() >= 1);
    assert!(!s3.open_upload_files().is_empty());
    assert!(
        store
            .list(&spec.prefix())
            .await
            .unwrap()
            .iter()
            .all(|(k, _)| !k.ends_with(backup::MANIFEST_OBJECT)),
        "a stopped backup has no manifest"
    );
    // What the platform runs when it takes the backup up again; twice is the same.
    store.remove_prefix(&spec.prefix(), &uploads).await.unwrap();
    store.remove_prefix(&spec.prefix(), &uploads).await.unwrap();
    assert_eq!(
        store
            .parts(&files_upload.0, &files_upload.1)
            .await
            .unwrap_or(0),
        0
    );
    assert_eq!(s3.open_upload_files(), Vec::<String>::new());
    assert_eq!(store.list(&spec.prefix()).await.unwrap(), vec![]);
    schema.drop().await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_never_printed() {
    let s3 = S3Server::start().await;
    let store = BackupStore::new(&s3.config("not-the-secret-key-xyz")).unwrap();
    let schema = Schema::create().await;
    let dir = tempfile::tempdir().unwrap();
    fill_files(dir.path(), 1);
    let spec = spec(&schema, dir.path());
    let err = backup::run(&store, &spec, Hooks::default())
        .await
        .unwrap_err();
    let msg = format!("{err:#} {err:?}");
    assert!(
        msg.contains("SignatureDoesNotMatch")
            || msg.contains("AccessDenied")
            || msg.contains("InvalidAccessKeyId"),
        "{msg}"
    );
    assert!(!msg.contains("not-the-secret-key-xyz"), "{msg}");
    assert!(!format!("{store:?}").contains("not-the-secret-key-xyz"));
    // And the real key sees nothing there.
    assert_eq!(s3.store().list(&spec.prefix()).await.unwrap(), vec![]);
    schema.drop().await;
}

/// `[backends]` for a platform whose backups go to `s3`, reading sites' databases on the
/// machine's MariaDB and their directories under `sites_root`.
pub(crate) fn backends_config(s3: &S3Server, sites_root: &Path) -> toml::Table {
    toml::from_str(&format!(
        r#"
        [galera]
        admin_url = "{db}"
        site_db_host = "127.0.0.1:3306"
        [gluster]
        mount = "{root}"
        node_mount = "{root}"
        [s3]
        endpoint = "{endpoint}"
        bucket = "{BUCKET}"
        access_key = "{ACCESS_KEY}"
        secret_key = "{SECRET_KEY}"
        force_path_style = true
        "#,
        db = server_url(),
        root = sites_root.display(),
        endpoint = s3.endpoint,
    ))
    .unwrap()
}

/// A site row (active) of `tenant` on the starter plan, its schema filled, its directory.
pub(crate) async fn seed_site(
    app: &crate::support::TestApp,
    tenant: &str,
    sites_root: &Path,
) -> (Id, Schema) {
    let site = Id::generate();
    let plan: String = sqlx::query_scalar("SELECT id FROM plans WHERE slug = 'starter'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sites (id, tenant_id, name, plan_id, state, primary_domain) \
         VALUES (?, ?, 'Site', ?, 'active', ?)",
    )
    .bind(site.as_str())
    .bind(tenant)
    .bind(&plan)
    .bind(format!("{site}.example"))
    .execute(&app.db)
    .await
    .unwrap();
    let schema = Schema {
        admin: MySqlPool::connect(&server_url()).await.unwrap(),
        name: format!("wp_{site}"),
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{}`",
        schema.name
    )))
    .execute(&schema.admin)
    .await
    .unwrap();
    fill_site(&schema).await;
    fill_files(&sites_root.join(site.as_str()), 1);
    (site, schema)
}

/// A backup step taken up again after its runner was killed mid-stream: the journaled
/// upload of the first attempt is aborted, its stray object removed, and the backup runs
/// to `complete`; running the step once more changes nothing.
#[tokio::test]
async fn a_backup_step_taken_up_again_clears_the_killed_attempt_and_completes() {
    let e = crate::backup_fixture::Setup::new("rs")
        .jobs(false)
        .start()
        .await;
    let (app, s3, provisioner, tenant) = (&e.app, &e.s3, &e.provisioner, &e.tenant);
    let (site, schema) = e.seed_site().await;

    // What a killed runner left: the row `running`, an upload with a part, journaled,
    // and a stray object under the backup's folder.
    let backup = Id::generate();
    sqlx::query(
        "INSERT INTO backups (id, tenant_id, site_id, kind, state, plan_id, started_at) \
         SELECT ?, tenant_id, id, 'manual', 'running', plan_id, NOW(6) FROM sites WHERE id = ?",
    )
    .bind(backup.as_str())
    .bind(site.as_str())
    .execute(&app.db)
    .await
    .unwrap();
    let store = s3.store();
    let prefix = format!("{tenant}/{site}/{backup}/");
    let key = format!("{prefix}{}", backup::FILES_OBJECT);
    let upload = store
        .client()
        .create_multipart_upload()
        .bucket(BUCKET)
        .key(&key)
        .send()
        .await
        .unwrap()
        .upload_id()
        .unwrap()
        .to_owned();
    store
        .client()
        .upload_part()
        .bucket(BUCKET)
        .key(&key)
        .upload_id(&upload)
        .part_number(1)
        .body(vec![7u8; 1024].into())
        .send()
        .await
        .unwrap();
    sqlx::query("INSERT INTO backup_uploads (backup_id, object_key, upload_id) VALUES (?, ?, ?)")
        .bind(backup.as_str())
        .bind(&key)
        .bind(&upload)
        .execute(&app.db)
        .await
        .unwrap();
    store
        .put(
            &format!("{prefix}{}", backup::DATABASE_OBJECT),
            b"half a dump".to_vec(),
            "application/zstd",
        )
        .await
        .unwrap();
    assert_eq!(store.parts(&key, &upload).await.unwrap(), 1);

    platform::backup::job::run_backup(&app.db, provisioner, backup.as_str())
        .await
        .unwrap();
    assert_eq!(store.parts(&key, &upload).await.unwrap_or(0), 0);
    assert_eq!(s3.open_upload_files(), Vec::<String>::new());
    let row: (String, i64, String) =
        sqlx::query_as("SELECT state, database_bytes, manifest_sha256 FROM backups WHERE id = ?")
            .bind(backup.as_str())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(row.0, "complete");
    let listed = store.list(&prefix).await.unwrap();
    let db_size = listed
        .iter()
        .find(|(k, _)| k.ends_with(backup::DATABASE_OBJECT))
        .unwrap()
        .1;
    assert_eq!(row.1 as u64, db_size);
    assert!(db_size > b"half a dump".len() as u64);
    let journal: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM backup_uploads WHERE backup_id = ?")
            .bind(backup.as_str())
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(journal, 0);

    // Again: a complete backup is left as it is.
    platform::backup::job::run_backup(&app.db, provisioner, backup.as_str())
        .await
        .unwrap();
    let again: String = sqlx::query_scalar("SELECT manifest_sha256 FROM backups WHERE id = ?")
        .bind(backup.as_str())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(again, row.2);
    assert_eq!(store.list(&prefix).await.unwrap(), listed);

    schema.drop().await;
    e.finish().await;
}

/// The API: `POST /v1/sites/{site}/backups` runs the backup as an operation of the job
/// runner against the real MariaDB and s3s-fs; list, get, delete; bad input and another
/// tenant's caller.
#[tokio::test]
async fn backups_through_the_api_are_operations_with_states_and_sizes() {
    use reqwest::{Method, StatusCode};
    use serde_json::json;

    let e = crate::backup_fixture::Setup::new("bk").start().await;
    let (app, s3, admin, tenant, member) = (
        &e.app,
        &e.s3,
        e.admin.as_str(),
        e.tenant.as_str(),
        e.member.as_str(),
    );
    let other_tenant = app
        .create_tenant(admin, &random_name("ot").replace('_', "-"))
        .await;
    let (outsider, _) = app.user_with_role(admin, &other_tenant, "owner").await;

    // A site as provisioning leaves it: its row, its schema, its directory.
    let (site, schema) = e.seed_site().await;

    // Bad input: problem+json naming the field.
    let (status, headers, body) = app
        .request_full(
            Method::GET,
            &format!("/v1/sites/{site}/backups?limit=0"),
            Some(member),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(body["errors"][0]["field"], "limit", "{body}");
    let (status, body) = app.get("/v1/backups/NOT-AN-ID", member).await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status} {body}"
    );
    assert!(body["title"].is_string(), "{body}");

    // Create: 202 with the pending backup and its operation.
    let (status, body) = app
        .post(&format!("/v1/sites/{site}/backups"), member, json!(null))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["backup"]["state"], "pending", "{body}");
    assert_eq!(body["backup"]["site_id"], site.as_str());
    assert_eq!(body["operation"]["kind"], "site.backup");
    assert_eq!(body["operation"]["target_type"], "backup");
    let backup = body["backup"]["id"].as_str().unwrap().to_owned();
    let op = body["operation"]["id"].as_str().unwrap().to_owned();

    // A second one while it runs is refused, naming why.
    let (status, body) = app
        .post(&format!("/v1/sites/{site}/backups"), member, json!(null))
        .await;
    if status != StatusCode::ACCEPTED {
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("under way"),
            "{body}"
        );
    }

    let done = app.wait_operation(member, &op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (status, got) = app.get(&format!("/v1/backups/{backup}"), member).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["state"], "complete", "{got}");
    assert_eq!(got["kind"], "manual");
    assert!(got["completed_at"].is_string());
    assert_eq!(got["tables_count"], 4, "{got}");

    // The sizes and the manifest's checksum are those of the objects in the bucket.
    let store = s3.store();
    let prefix = format!("{tenant}/{site}/{backup}/");
    let listed = store.list(&prefix).await.unwrap();
    let size_of = |name: &str| {
        listed
            .iter()
            .find(|(k, _)| k.ends_with(name))
            .map(|(_, s)| *s as i64)
            .unwrap_or_else(|| panic!("{name} not in {listed:?}"))
    };
    assert_eq!(got["database_bytes"], size_of(backup::DATABASE_OBJECT));
    assert_eq!(got["files_bytes"], size_of(backup::FILES_OBJECT));
    use sha2::Digest;
    let manifest = fetch(&store, &format!("{prefix}manifest.json")).await;
    assert_eq!(
        got["manifest_sha256"],
        hex::encode(sha2::Sha256::digest(&manifest))
    );
    let manifest: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    assert_eq!(manifest["plan"], "starter");
    assert_eq!(manifest["site_id"], site.as_str());

    // Listed, newest first; another tenant sees nothing of it.
    let (status, page) = app.get(&format!("/v1/sites/{site}/backups"), member).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"][0]["id"], backup.as_str(), "{page}");
    let (status, body) = app.get(&format!("/v1/backups/{backup}"), &outsider).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app
        .request(
            Method::DELETE,
            &format!("/v1/backups/{backup}"),
            Some(&outsider),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = app
        .get(&format!("/v1/sites/{site}/backups"), &outsider)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Delete: an operation that removes the objects; then the backup is gone.
    let (status, body) = app
        .request(
            Method::DELETE,
            &format!("/v1/backups/{backup}"),
            Some(member),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["backup"]["state"], "deleting", "{body}");
    let op = body["operation"]["id"].as_str().unwrap().to_owned();
    let done = app.wait_operation(member, &op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(store.list(&prefix).await.unwrap(), vec![]);
    let (status, _) = app.get(&format!("/v1/backups/{backup}"), member).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    schema.drop().await;
    e.finish().await;
}

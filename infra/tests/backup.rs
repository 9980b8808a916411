//! Cluster backups (issue 15, item 7) against real servers started by the test: a scratch
//! MariaDB (`mariadbd` on a free port, its own data directory) and a real S3 server
//! (`s3s-fs`, which checks every request's SigV4 signature). The shared lab is not touched.
//!
//! A lost database rebuilt from the backup: rows written, backed up hot (`mariabackup
//! --stream=xbstream | zstd` → multipart upload), the server stopped and its data directory
//! deleted, the backup restored into a new one, a server started on it: the same rows.
//! `--nocapture` prints the sizes and times.
use infra::cluster::backup::{self, Galera, S3, Secret};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ACCESS: &str = "PDTESTACCESSKEY00001";
const SECRET: &str = "pd-test-secret-key-0123456789abcdefghij";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn scratch(name: &str) -> PathBuf {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!("pd-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// A process ended (SIGTERM, then waited for) when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.0.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.0.wait();
    }
}

fn s3s_fs() -> PathBuf {
    for p in std::env::var("PATH").unwrap_or_default().split(':') {
        let c = Path::new(p).join("s3s-fs");
        if c.exists() {
            return c;
        }
    }
    let c = PathBuf::from("/root/.cargo/bin/s3s-fs");
    assert!(
        c.exists(),
        "s3s-fs not found: scripts/install-deps.sh installs it (cargo install s3s-fs --version 0.14.1 --features binary --locked)"
    );
    c
}

fn wait_port(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "nothing on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_s3(root: &Path) -> (Proc, u16) {
    std::fs::create_dir_all(root).unwrap_or_else(|e| panic!("{e}"));
    let port = free_port();
    let child = Command::new(s3s_fs())
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS, "--secret-key", SECRET])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("s3s-fs: {e}"));
    wait_port(port);
    (Proc(child), port)
}

/// A MariaDB server on its own data directory and port, as root (the test runs as root).
struct Db {
    _proc: Proc,
    socket: PathBuf,
}

/// A client of the S3 server on `port` for the tests' bucket, signing with `secret`.
fn s3_client(port: u16, secret: &str) -> S3 {
    S3::new(
        &format!("http://127.0.0.1:{port}"),
        "cluster-backups",
        "us-east-1",
        ACCESS,
        Secret::new(secret.into()),
    )
    .unwrap_or_else(|e| panic!("{e:#}"))
}

/// An S3 server of the test's own (its data under `root/s3`) and a client of it whose
/// bucket exists: the server (stopped when dropped), its port, the client.
async fn s3_with_bucket(root: &Path) -> (Proc, u16, S3) {
    let (server, port) = start_s3(&root.join("s3"));
    let s3 = s3_client(port, SECRET);
    s3.ensure_bucket().await.unwrap_or_else(|e| panic!("{e:#}"));
    (server, port, s3)
}

fn cnf(dir: &Path, port: u16) -> PathBuf {
    let path = dir.with_extension("cnf");
    std::fs::write(
        &path,
        format!(
            "[mariadbd]\ndatadir={d}\nsocket={d}/mysqld.sock\npid-file={d}/mysqld.pid\nport={port}\n\
             bind-address=127.0.0.1\nuser=root\nskip-log-bin\ninnodb_buffer_pool_size=64M\n\
             innodb_log_file_size=48M\nlog-error={d}.err\n",
            d = dir.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    path
}

fn start_db(dir: &Path, install: bool) -> Db {
    let port = free_port();
    let cnf = cnf(dir, port);
    if install {
        let out = Command::new("mariadb-install-db")
            .arg(format!("--defaults-file={}", cnf.display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .output()
            .unwrap_or_else(|e| panic!("mariadb-install-db: {e}"));
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let child = Command::new("mariadbd")
        .arg(format!("--defaults-file={}", cnf.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("mariadbd: {e}"));
    let db = Db {
        _proc: Proc(child),
        socket: dir.join("mysqld.sock"),
    };
    let t = Instant::now();
    while sql(&db, "SELECT 1").is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "mariadbd did not start: {}",
            std::fs::read_to_string(dir.with_extension("err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    db
}

fn sql(db: &Db, q: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .arg("--no-defaults")
        .arg(format!("--socket={}", db.socket.display()))
        .args(["-u", "root", "-N", "-B", "-e", q])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

const FINGERPRINT: &str = "SET SESSION group_concat_max_len = 1000000000; \
    SELECT COUNT(*), SUM(price), MD5(GROUP_CONCAT(id, MD5(payload) ORDER BY id)) FROM shop.orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_is_rebuilt_from_its_backup_in_s3() {
    let root = scratch("backup");
    let (_s3proc, s3port, s3) = s3_with_bucket(&root).await;
    s3.ensure_bucket()
        .await
        .unwrap_or_else(|e| panic!("twice: {e:#}"));

    let data = root.join("db1");
    std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{e}"));
    let db = start_db(&data, true);
    // 20,000 rows with 1 KiB of random bytes each: ~20 MB that zstd cannot shrink, so the
    // upload takes several parts.
    sql(
        &db,
        "CREATE DATABASE shop; USE shop; \
         CREATE TABLE shop.orders (id INT PRIMARY KEY, item VARCHAR(64) NOT NULL, \
           price INT NOT NULL, payload VARBINARY(1024) NOT NULL) ENGINE=InnoDB; \
         INSERT INTO shop.orders SELECT seq, CONCAT('item-', seq), seq * 7, RANDOM_BYTES(1024) \
           FROM seq_1_to_20000;",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let before = sql(&db, FINGERPRINT).unwrap_or_else(|e| panic!("{e}"));
    assert!(before.starts_with("20000\t1400070000\t"), "{before}");

    let source = Galera {
        user: "root".into(),
        password: Secret::new(String::new()),
        socket: Some(db.socket.clone()),
        host: "127.0.0.1".into(),
        port: 0,
        datadir: data.clone(),
        // A plain server here: --galera-info is for a Galera node.
        galera_info: false,
    };
    // A backup that fails (no such socket) leaves nothing listed: the upload is aborted.
    let broken = Galera {
        socket: Some(root.join("no-such.sock")),
        ..source.clone()
    };
    let e = backup::backup_galera(&s3, &broken, "t")
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("mariabackup failed"), "{e}");
    assert!(!e.contains(SECRET));
    assert_eq!(
        backup::list_backups(&s3, "t", "galera").await.ok(),
        Some(vec![])
    );
    // The server keeps serving while mariabackup copies (a hot backup).
    let t0 = Instant::now();
    let made = backup::backup_galera(&s3, &source, "t")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // A plain server: no Galera position, and none pretended.
    assert_eq!(made.position, None);
    let stored = made.stored;
    let backup_s = t0.elapsed().as_secs_f64();
    assert!(stored.bytes > 2 * backup::PART_SIZE as u64, "{stored:?}");
    let stamps = backup::list_backups(&s3, "t", "galera")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(stamps.len(), 1);
    assert!(stored.key.ends_with("/backup.xbstream.zst"));

    // The cluster is lost: the server stops, its files are gone.
    drop(db);
    std::fs::remove_dir_all(&data).unwrap_or_else(|e| panic!("{e}"));

    let data2 = root.join("db2");
    let t1 = Instant::now();
    let restored = backup::restore_galera(&s3, "t", "latest", &data2, None)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        restored.position.is_none() && !data2.join("grastate.dat").exists(),
        "a plain MariaDB backup gets no grastate.dat"
    );
    let stamp = restored.stamp;
    let restore_s = t1.elapsed().as_secs_f64();
    assert_eq!(stamp, stamps[0]);
    let db2 = start_db(&data2, false);
    let after = sql(&db2, FINGERPRINT).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after, before, "the restored rows differ");
    // Into a data directory that is not empty: refused.
    let e = backup::restore_galera(&s3, "t", "latest", &data2, None)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("is not empty"), "{e}");
    drop(db2);

    // A copy altered in the bucket is refused: its SHA-256 differs from the manifest's.
    s3.put(&stored.key, b"not a backup".to_vec())
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let e = backup::restore_galera(&s3, "t", "latest", &root.join("db3"), None)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(
        e.contains("failed") || e.contains("do not use this copy"),
        "{e}"
    );
    // A wrong secret: S3's refusal, without the secret.
    let bad = s3_client(s3port, "wrong-secret-wrong-secret");
    let e = backup::list_backups(&bad, "t", "galera")
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("403") && !e.contains("wrong-secret"), "{e}");

    println!(
        "galera backup: {:.1} MB compressed in {backup_s:.1}s; restore (fetch, check, unpack, prepare): {restore_s:.1}s",
        stored.bytes as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// The swarm-state part: a folder as a tar to S3 and back (the same path as a manager's
/// /var/lib/docker/swarm; the lab's own is not copied here).
#[tokio::test]
async fn a_swarm_state_folder_goes_to_s3_and_back() {
    let root = scratch("swarm-backup");
    let (_s3proc, _, s3) = s3_with_bucket(&root).await;
    let swarm = root.join("docker/swarm");
    std::fs::create_dir_all(swarm.join("raft/wal-v3-encrypted")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(swarm.join("certificates")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        swarm.join("raft/wal-v3-encrypted/0000000000000000-0000000000000000.wal"),
        vec![7u8; 64 << 10],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(swarm.join("certificates/swarm-node.key"), "key")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(swarm.join("state.json"), "[]").unwrap_or_else(|e| panic!("{e}"));
    let stored = backup::backup_swarm(&s3, &swarm, "pd-prod-manager-03", "t", false)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        stored.key.starts_with("t/swarm/pd-prod-manager-03/"),
        "{stored:?}"
    );
    let target = root.join("new-docker-root");
    let stamp = backup::restore_swarm(&s3, "t", "pd-prod-manager-03", "latest", &target)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(stored.key.contains(&stamp));
    for f in [
        "raft/wal-v3-encrypted/0000000000000000-0000000000000000.wal",
        "certificates/swarm-node.key",
        "state.json",
    ] {
        assert_eq!(
            std::fs::read(swarm.join(f)).ok(),
            std::fs::read(target.join("swarm").join(f)).ok(),
            "{f}"
        );
    }
    // Not over an existing swarm folder.
    let e = backup::restore_swarm(&s3, "t", "pd-prod-manager-03", "latest", &target)
        .await
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    assert!(e.contains("move it aside first"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

/// A lost manager quorum recovered from the backup of a real swarm: the lab manager's
/// `/var/lib/docker/swarm` is copied (read-only, its dockerd keeps running) to a scratch S3,
/// restored into a new docker root, and a dockerd started on it in a network namespace of its
/// own (loopback plus the manager's address: nothing of the lab is reachable from it) becomes
/// a one-manager swarm with `swarm init --force-new-cluster`, with the lab's services,
/// networks and nodes. Runs with PRESSDOCK_LAB_TESTS=1 (under `flock /work/lab.lock`).
#[tokio::test]
async fn a_lab_managers_swarm_state_restores_into_a_one_manager_swarm() {
    if std::env::var("PRESSDOCK_LAB_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: PRESSDOCK_LAB_TESTS=1 runs it against the lab");
        return;
    }
    let live = Path::new("/var/lib/pressdock-lab/nodes/pdlab-m1/docker/swarm");
    assert!(
        live.exists(),
        "the lab is not up ({} missing)",
        live.display()
    );
    let root = scratch("lab-swarm");
    let (_s3proc, _, s3) = s3_with_bucket(&root).await;
    let t0 = Instant::now();
    let stored = backup::backup_swarm(&s3, live, "pdlab-m1", "lab", false)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let backup_s = t0.elapsed().as_secs_f64();
    let docker_root = root.join("docker");
    backup::restore_swarm(&s3, "lab", "pdlab-m1", "latest", &docker_root)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(docker_root.join("swarm/docker-state.json")).unwrap_or_default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let addr = state["LocalAddr"].as_str().unwrap_or("").to_owned();
    assert!(addr.parse::<std::net::Ipv4Addr>().is_ok(), "{state}");
    let sock = root.join("d.sock");
    let script = format!(
        "ip link set lo up && ip addr add {addr}/32 dev lo && exec dockerd --data-root {} \
         --exec-root {} -H unix://{} --pidfile {} --iptables=false --bridge=none \
         --storage-driver=overlay2",
        docker_root.display(),
        root.join("exec").display(),
        sock.display(),
        root.join("d.pid").display()
    );
    let child = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let _dockerd = Proc(child);
    let docker = |args: &[&str]| {
        Command::new("/usr/bin/docker")
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(args)
            .output()
            .map(|o| {
                (
                    o.status.success(),
                    String::from_utf8_lossy(&o.stdout).into_owned(),
                )
            })
            .unwrap_or((false, String::new()))
    };
    let t = Instant::now();
    while !docker(&["info"]).0 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the restored dockerd did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let t1 = Instant::now();
    let (ok, _) = docker(&[
        "swarm",
        "init",
        "--force-new-cluster",
        "--advertise-addr",
        &addr,
    ]);
    let init_s = t1.elapsed().as_secs_f64();
    assert!(ok, "swarm init --force-new-cluster failed");
    let (_, services) = docker(&["service", "ls", "--format", "{{.Name}}"]);
    let (_, networks) = docker(&[
        "network",
        "ls",
        "--filter",
        "driver=overlay",
        "--format",
        "{{.Name}}",
    ]);
    let (_, nodes) = docker(&["node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}"]);
    for s in ["pd_traefik", "pd_varnish"] {
        assert!(services.lines().any(|l| l == s), "{s} not in {services}");
    }
    for n in ["pd-edge", "pd-sites"] {
        assert!(networks.lines().any(|l| l == n), "{n} not in {networks}");
    }
    assert_eq!(
        nodes.lines().filter(|l| l.ends_with("Leader")).count(),
        1,
        "{nodes}"
    );
    println!(
        "lab manager's swarm state: {:.2} MB compressed, backup {backup_s:.1}s; force-new-cluster {init_s:.1}s; {} services, {} nodes",
        stored.bytes as f64 / 1e6,
        services.lines().count(),
        nodes.lines().count()
    );
    // Its dockerd is stopped (SIGTERM to its PID) before the folder goes.
    if let Ok(pid) = std::fs::read_to_string(root.join("d.pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        let t = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

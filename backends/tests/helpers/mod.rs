//! Real servers for the driver tests: processes started on OS-chosen loopback ports in
//! a temporary directory, stopped by PID when the guard drops.

#![allow(dead_code)]

pub mod proxysql_admin;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backends::ids::Secret;

/// A free loopback port (bound then released; the server binds it right after).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    l.local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"))
        .port()
}

/// A started process; killed (SIGKILL, by its PID) and reaped on drop.
pub struct Proc {
    pub name: &'static str,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc { name, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_port(addr: &str, timeout: Duration) {
    let start = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(start.elapsed() < timeout, "{addr} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until `INFO <section>` of the Redis (or Sentinel) at `addr`, as `auth`'s user if
/// given, contains `want`.
pub fn wait_info(addr: &str, auth: Option<(&str, &str)>, section: &str, want: &str) {
    use std::io::{Read, Write};
    let start = Instant::now();
    loop {
        // Read until the answer shows `want` or the server stops sending (Sentinel has no
        // QUIT, so the connection stays open).
        let answer = std::net::TcpStream::connect(addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_millis(500)))?;
            let login = auth
                .map(|(user, password)| format!("AUTH {user} {password}\r\n"))
                .unwrap_or_default();
            s.write_all(format!("{login}INFO {section}\r\n").as_bytes())?;
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&out).contains(want) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
            Ok(String::from_utf8_lossy(&out).into_owned())
        });
        let last = match answer {
            Ok(text) if text.contains(want) => return,
            Ok(text) => text,
            Err(e) => e.to_string(),
        };
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{addr}: INFO {section} never showed {want:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `mysql://root@127.0.0.1:3306` unless `PRESSDOCK_TEST_MYSQL_URL` says otherwise.
pub fn mysql_admin_url() -> Secret {
    Secret::new(
        std::env::var("PRESSDOCK_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned()),
    )
}

pub fn mysql_host_port() -> (String, u16) {
    let url = mysql_admin_url();
    let rest = url.expose().rsplit('@').next().unwrap_or("127.0.0.1:3306");
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (h, p) = hostport.rsplit_once(':').unwrap_or((hostport, "3306"));
    (h.to_owned(), p.parse().unwrap_or(3306))
}

/// A Redis master, one replica and one Sentinel, each with its own aclfile.
/// The Sentinel's own admin (its `default` user is off, as in the lab).
pub const SENTINEL_ADMIN: &str = "pdadmin";
pub const SENTINEL_PASSWORD: &str = "sentinel-test-pw";

pub struct RedisLab {
    pub dir: tempfile::TempDir,
    pub master: String,
    pub replica: String,
    pub sentinel: String,
    pub master_name: String,
    // Sentinel first: dropped (killed) before the data nodes.
    _procs: Vec<Proc>,
}

impl RedisLab {
    pub fn start() -> RedisLab {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let (mp, rp, sp) = (free_port(), free_port(), free_port());
        let master_name = format!("pdtest{}", rand_suffix());
        let mut procs = Vec::new();
        for (name, port, replica_of) in [("master", mp, None), ("replica", rp, Some(mp))] {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{e}"));
            let acl = d.join("users.acl");
            std::fs::write(&acl, "").unwrap_or_else(|e| panic!("{e}"));
            let mut cmd = Command::new("redis-server");
            cmd.arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&d)
                .arg("--aclfile")
                .arg(&acl);
            if let Some(m) = replica_of {
                cmd.args(["--replicaof", "127.0.0.1"]).arg(m.to_string());
            }
            procs.push(Proc::spawn(
                if name == "master" {
                    "redis master"
                } else {
                    "redis replica"
                },
                &mut cmd,
            ));
            wait_port(&format!("127.0.0.1:{port}"), Duration::from_secs(10));
        }
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {sp}\nbind 127.0.0.1\ndir {}\nsentinel monitor {master_name} 127.0.0.1 {mp} 1\n\
                 sentinel down-after-milliseconds {master_name} 1000\n\
                 user default off\nuser {SENTINEL_ADMIN} on >{SENTINEL_PASSWORD} +@all\n",
                dir.path().display()
            ),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sentinel_bin = if Path::new("/usr/bin/redis-sentinel").exists() {
            "redis-sentinel"
        } else {
            "redis-server"
        };
        let mut cmd = Command::new(sentinel_bin);
        cmd.arg(&conf);
        if sentinel_bin == "redis-server" {
            cmd.arg("--sentinel");
        }
        procs.insert(0, Proc::spawn("redis sentinel", &mut cmd));
        wait_port(&format!("127.0.0.1:{sp}"), Duration::from_secs(10));
        // Each port is answered by the server started on it (not by another test's that
        // took a port released by free_port), and the replica has its first copy.
        wait_info(
            &format!("127.0.0.1:{mp}"),
            None,
            "replication",
            "role:master",
        );
        wait_info(
            &format!("127.0.0.1:{rp}"),
            None,
            "replication",
            "master_link_status:up",
        );
        wait_info(
            &format!("127.0.0.1:{sp}"),
            Some((SENTINEL_ADMIN, SENTINEL_PASSWORD)),
            "sentinel",
            &format!("name={master_name},"),
        );
        RedisLab {
            dir,
            master: format!("127.0.0.1:{mp}"),
            replica: format!("127.0.0.1:{rp}"),
            sentinel: format!("127.0.0.1:{sp}"),
            master_name,
            _procs: procs,
        }
    }

    /// SIGKILLs the first data node started (the initial master).
    pub fn kill_initial_master(&mut self) {
        if let Some(i) = self._procs.iter().position(|p| p.name == "redis master") {
            drop(self._procs.remove(i));
        }
    }

    pub fn acl_file(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("users.acl")
    }
}

/// A varnishd in the foreground (`-F`, so the PID is varnishd's), with `-S` and `-T`.
pub struct VarnishLab {
    pub dir: tempfile::TempDir,
    pub admin: String,
    pub http: String,
    pub secret_file: PathBuf,
    _proc: Proc,
}

impl VarnishLab {
    pub fn start() -> VarnishLab {
        Self::start_with_vcl_path(None)
    }

    /// With `-p vcl_path=<dir>`: where `include "x.vcl"` is looked up.
    pub fn start_with_vcl_path(vcl_path: Option<&Path>) -> VarnishLab {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let secret_file = dir.path().join("secret");
        std::fs::write(&secret_file, format!("{}\n", rand_suffix()))
            .unwrap_or_else(|e| panic!("{e}"));
        let (hp, ap) = (free_port(), free_port());
        let mut cmd = Command::new("varnishd");
        cmd.arg("-F")
            .args(["-j", "none"])
            .arg("-a")
            .arg(format!("127.0.0.1:{hp}"))
            .arg("-T")
            .arg(format!("127.0.0.1:{ap}"))
            .arg("-S")
            .arg(&secret_file)
            .arg("-n")
            .arg(dir.path().join("n"))
            .args(["-b", "127.0.0.1:9", "-s", "malloc,32m"]);
        if let Some(p) = vcl_path {
            cmd.arg("-p").arg(format!("vcl_path={}", p.display()));
        }
        let proc = Proc::spawn("varnishd", &mut cmd);
        wait_port(&format!("127.0.0.1:{ap}"), Duration::from_secs(30));
        wait_port(&format!("127.0.0.1:{hp}"), Duration::from_secs(30));
        VarnishLab {
            dir,
            admin: format!("127.0.0.1:{ap}"),
            http: format!("127.0.0.1:{hp}"),
            secret_file,
            _proc: proc,
        }
    }
}

/// 8 random lower-case letters, for names that must not collide between test runs.
pub fn rand_suffix() -> String {
    backends::SiteResourceId::generate().as_str()[..8].to_owned()
}

/// A minimal HTTP/1.1 GET (no redirects, `Connection: close`); status and full response.
pub async fn http_get(addr: &str, host: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// An HTTP backend that answers every request `200` with body `site=<X-Pressdock-Site>`
/// (what Varnish forwarded). Stops when dropped.
pub struct EchoBackend {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl EchoBackend {
    pub async fn start() -> EchoBackend {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("{e}"));
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    loop {
                        let mut req = Vec::new();
                        let mut byte = [0u8; 1];
                        while !req.ends_with(b"\r\n\r\n") {
                            match s.read(&mut byte).await {
                                Ok(1) => req.push(byte[0]),
                                _ => return,
                            }
                        }
                        let text = String::from_utf8_lossy(&req).to_string();
                        let site = text
                            .lines()
                            .find_map(|l| {
                                l.strip_prefix("X-Pressdock-Site: ")
                                    .or_else(|| l.strip_prefix("x-pressdock-site: "))
                            })
                            .unwrap_or("")
                            .trim()
                            .to_owned();
                        let body = format!("site={site}");
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        EchoBackend { port, task }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

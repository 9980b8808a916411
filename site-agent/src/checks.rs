//! Probes of what the site depends on: the database (through the router), Redis (the
//! master found through Sentinel, as the site's ACL user), WordPress on the local nginx,
//! php-fpm's status page; and measurements: database and wp-content bytes, versions.
//!
//! Redis is spoken as plain RESP (four commands) rather than through a client crate:
//! that keeps the agent small, and these probes need nothing more.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use mysql_async::prelude::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::config::Settings;
use crate::metrics::FpmStatus;

const TIMEOUT: Duration = Duration::from_secs(3);

async fn timed<T>(what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {} s", TIMEOUT.as_secs()))?
}

// ---- database ----

/// One connection to the site's database, reopened when it breaks.
pub struct Database {
    opts: mysql_async::Opts,
    db_name: String,
    conn: Option<mysql_async::Conn>,
}

impl Database {
    pub fn new(s: &Settings) -> Result<Self> {
        Self::with(&s.db_host, &s.db_user, s.db_password.expose(), &s.db_name)
    }

    /// `host` is `HOST:PORT` (or `HOST`, port 3306).
    pub fn with(host: &str, user: &str, password: &str, db_name: &str) -> Result<Self> {
        let (h, port) = match host.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().context("DB host port")?),
            None => (host, 3306),
        };
        let pass = (!password.is_empty()).then(|| password.to_owned());
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(h)
            .tcp_port(port)
            .user(Some(user))
            .pass(pass)
            .db_name(Some(db_name))
            .into();
        Ok(Self {
            opts,
            db_name: db_name.to_owned(),
            conn: None,
        })
    }

    async fn conn(&mut self) -> Result<&mut mysql_async::Conn> {
        if self.conn.is_none() {
            let c = timed("database connect", async {
                Ok(mysql_async::Conn::new(self.opts.clone()).await?)
            })
            .await?;
            self.conn = Some(c);
        }
        self.conn.as_mut().ok_or_else(|| anyhow!("no connection"))
    }

    /// `SELECT 1` on the connection (reconnecting once when it broke).
    pub async fn ping(&mut self) -> Result<()> {
        for attempt in 0..2 {
            let conn = self.conn().await?;
            let r: Result<Option<u8>> = timed("database ping", async {
                Ok(conn.query_first("SELECT 1").await?)
            })
            .await;
            match r {
                Ok(Some(1)) => return Ok(()),
                Ok(_) => bail!("SELECT 1 answered something else"),
                Err(e) if attempt == 0 => {
                    tracing::debug!(error = %e, "database connection broken; reconnecting");
                    self.conn = None;
                }
                Err(e) => return Err(e),
            }
        }
        bail!("unreachable")
    }

    /// Data and index bytes of the site's schema.
    pub async fn size_bytes(&mut self) -> Result<u64> {
        let db = self.db_name.clone();
        let conn = self.conn().await?;
        let r: Result<Option<u64>> = timed("database size", async {
            Ok(conn
                .exec_first(
                    "SELECT CAST(COALESCE(SUM(data_length + index_length), 0) AS UNSIGNED) \
                     FROM information_schema.tables WHERE table_schema = ?",
                    (db,),
                )
                .await?)
        })
        .await;
        if r.is_err() {
            self.conn = None;
        }
        Ok(r?.unwrap_or(0))
    }
}

// ---- redis ----

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

struct Resp(BufReader<TcpStream>);

impl Resp {
    async fn connect(addr: &str) -> Result<Self> {
        Ok(Self(BufReader::new(TcpStream::connect(addr).await?)))
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> Result<Reply> {
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            buf.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            buf.extend_from_slice(a);
            buf.extend_from_slice(b"\r\n");
        }
        self.0.get_mut().write_all(&buf).await?;
        let first = self.scalar().await?;
        match first {
            Reply::Array(Some(mut v)) => {
                // `scalar` returned the header: `v` holds the count as one Int.
                let n = match v.pop() {
                    Some(Reply::Int(n)) => n,
                    _ => 0,
                };
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.scalar().await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Ok(other),
        }
    }

    /// One reply; for an array only its header (nested arrays are not needed here).
    async fn scalar(&mut self) -> Result<Reply> {
        let mut line = String::new();
        if self.0.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (kind, rest) = line
            .split_at_checked(1)
            .ok_or_else(|| anyhow!("empty reply"))?;
        Ok(match kind {
            "+" => Reply::Simple(rest.to_owned()),
            "-" => Reply::Error(rest.to_owned()),
            ":" => Reply::Int(rest.parse()?),
            "$" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let mut b = vec![0; usize::try_from(n)? + 2];
                    self.0.read_exact(&mut b).await?;
                    b.truncate(b.len() - 2);
                    Reply::Bulk(Some(b))
                }
            }
            "*" => {
                let n: i64 = rest.parse()?;
                if n < 0 {
                    Reply::Array(None)
                } else {
                    Reply::Array(Some(vec![Reply::Int(n)]))
                }
            }
            _ => bail!("unexpected reply {kind:?}"),
        })
    }
}

/// Asks the Sentinels in turn for the master's `HOST:PORT`, as the site's own user: the
/// Sentinels answer nobody else, and this user may only ask that.
pub async fn redis_master(
    sentinels: &[String],
    master_name: &str,
    user: &str,
    password: &str,
) -> Result<String> {
    let mut last = anyhow!("no sentinel configured");
    for s in sentinels {
        let r = timed("sentinel", async {
            let mut c = redis_login(s, user, password).await?;
            match c
                .cmd(&[
                    b"SENTINEL",
                    b"get-master-addr-by-name",
                    master_name.as_bytes(),
                ])
                .await?
            {
                Reply::Array(Some(v)) => match v.as_slice() {
                    [Reply::Bulk(Some(h)), Reply::Bulk(Some(p))] => Ok(format!(
                        "{}:{}",
                        String::from_utf8_lossy(h),
                        String::from_utf8_lossy(p)
                    )),
                    _ => bail!("sentinel {s}: unexpected answer"),
                },
                Reply::Array(None) => bail!("sentinel {s} does not know master {master_name:?}"),
                other => bail!("sentinel {s}: {other:?}"),
            }
        })
        .await;
        match r {
            Ok(addr) => return Ok(addr),
            Err(e) => last = e.context(format!("sentinel {s}")),
        }
    }
    Err(last)
}

async fn redis_login(master: &str, user: &str, password: &str) -> Result<Resp> {
    let mut c = Resp::connect(master).await?;
    match c
        .cmd(&[b"AUTH", user.as_bytes(), password.as_bytes()])
        .await?
    {
        Reply::Simple(s) if s == "OK" => Ok(c),
        // Only the error code (e.g. WRONGPASS): the message never carries the password,
        // but keep it short.
        Reply::Error(e) => bail!("AUTH refused: {}", e.split(' ').next().unwrap_or("")),
        other => bail!("AUTH: {other:?}"),
    }
}

/// Connects to the master as the site's user and checks `PING`.
pub async fn redis_ping(master: &str, user: &str, password: &str) -> Result<()> {
    timed("redis", async {
        let mut c = redis_login(master, user, password).await?;
        match c.cmd(&[b"PING"]).await? {
            Reply::Simple(s) if s == "PONG" => Ok(()),
            other => bail!("PING: {other:?}"),
        }
    })
    .await
}

/// `INCR key` as the site's user; returns the new value.
pub async fn redis_incr(master: &str, user: &str, password: &str, key: &str) -> Result<i64> {
    timed("redis", async {
        let mut c = redis_login(master, user, password).await?;
        match c.cmd(&[b"INCR", key.as_bytes()]).await? {
            Reply::Int(n) => Ok(n),
            other => bail!("INCR: {other:?}"),
        }
    })
    .await
}

// ---- local web server ----

/// A minimal HTTP/1.0 GET to the local nginx: `(status, headers and body)`. Local only,
/// so no client crate with its connection pool is needed.
pub async fn local_get(port: u16, path: &str, host: &str) -> Result<(u16, String)> {
    timed("local http", async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: pressdock-agent\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut body = Vec::new();
        s.take(2 * 1024 * 1024).read_to_end(&mut body).await?;
        let text = String::from_utf8_lossy(&body).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status line"))?;
        Ok((status, text))
    })
    .await
}

/// WordPress answers on the local nginx: `GET /` with the primary domain gives 200 and
/// an HTML page (a redirect to install.php or a database error page is not ready).
pub async fn wordpress_answers(port: u16, host: &str) -> Result<()> {
    let (status, text) = local_get(port, "/", host).await?;
    if status != 200 {
        bail!("GET / answered {status}");
    }
    if !text.contains("<html") && !text.contains("<!DOCTYPE") && !text.contains("<!doctype") {
        bail!("GET / answered 200 without an HTML page");
    }
    Ok(())
}

/// php-fpm's pool status through nginx (`/fpm-status?json`, loopback only).
pub async fn fpm_status(port: u16) -> Result<FpmStatus> {
    let (status, text) = local_get(port, "/fpm-status?json", "localhost").await?;
    if status != 200 {
        bail!("fpm status answered {status}");
    }
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| anyhow!("fpm status: no body"))?;
    Ok(serde_json::from_str(body)?)
}

// ---- sizes and versions ----

/// Bytes of the regular files under `dir` (symlinks not followed: the bundled themes are
/// links into the image). Runs on a blocking thread.
pub async fn dir_bytes(dir: &Path) -> Result<u64> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut total = 0u64;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(e.path());
                } else if ft.is_file() {
                    total += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
            }
        }
        total
    })
    .await
    .context("walking wp-content")
}

/// `$wp_version` from `wp-includes/version.php`.
pub fn wordpress_version(wp_root: &Path) -> Option<String> {
    let text = std::fs::read_to_string(wp_root.join("wp-includes/version.php")).ok()?;
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("$wp_version"))?;
    let v = line.split('\'').nth(1)?;
    Some(v.to_owned())
}

/// The first line of `prog ARGS` (stdout or stderr: `nginx -v` writes to stderr).
pub async fn command_version(prog: &str, args: &[&str]) -> Option<String> {
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(prog).args(args).output(),
    )
    .await
    .ok()?
    .ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wordpress_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("wp-includes")).expect("mkdir");
        std::fs::write(
            dir.path().join("wp-includes/version.php"),
            "<?php\n/**\n * @global string $wp_version\n */\n$wp_version = '6.1.9';\n",
        )
        .expect("write");
        assert_eq!(wordpress_version(dir.path()).as_deref(), Some("6.1.9"));
    }

    #[tokio::test]
    async fn dir_bytes_counts_files_not_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
        std::fs::write(dir.path().join("a/b/f"), vec![0u8; 1000]).expect("write");
        std::fs::write(dir.path().join("g"), vec![0u8; 24]).expect("write");
        std::os::unix::fs::symlink("/usr", dir.path().join("link")).expect("link");
        assert_eq!(dir_bytes(dir.path()).await.expect("walk"), 1024);
    }
}

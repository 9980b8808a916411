//! Cluster backups (issue 15, item 7): the Galera cluster's data and the swarm's state, to S3.
//!
//! - **Galera**: `mariabackup --backup --stream=xbstream` on one database node (a hot, consistent
//!   copy of InnoDB while the node keeps serving; `--galera-info` records the cluster's
//!   position), compressed by `zstd`, uploaded as a multipart upload while it is made (nothing
//!   is written to the node's disk). The upload is completed only once both `mariabackup` and
//!   `zstd` exited 0; otherwise it is aborted, so a half backup never lists as one.
//! - **Swarm state**: a manager's `/var/lib/docker/swarm` (raft log, certificates, keys) as a
//!   tar, compressed, uploaded the same way; with `--stop-docker` dockerd is stopped for the
//!   copy (consistent raft files) and started again, which a 3-manager swarm tolerates for one
//!   manager at a time.
//! - Each backup is `<prefix>/<kind>/<stamp>/` with the data object and a `manifest.json`
//!   (size, SHA-256 of what was uploaded, the tool's command; for Galera the cluster position
//!   the copy is consistent with, read from the stream itself: [`XbTap`]); a restore checks
//!   the SHA-256.
//!
//! Restore: [`restore_galera`] fetches, checks, unpacks (`mbstream -x`) and prepares
//! (`mariabackup --prepare`) into an empty data directory, and writes its `grastate.dat` from
//! the backup's position (`safe_to_bootstrap: 1`), so the first node of the rebuilt cluster
//! (`galera_new_cluster`) starts the cluster at that position and the others join it by SST
//! (infra/README.md; on the lab, [`crate::lab::cluster_backup`] runs the whole runbook);
//! [`restore_swarm`] unpacks the tar where dockerd expects it.
//!
//! S3 requests are signed with the lab's SigV4 signer ([`crate::lab::sigv4`]: path-style,
//! header signing with the payload's hash), so every part is hashed and signed; the
//! credentials come from the environment and never appear in output or errors.
use crate::lab::sigv4;
use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Multipart part size: S3's minimum is 5 MiB for every part but the last.
pub const PART_SIZE: usize = 8 << 20;

/// A secret that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// An S3 bucket over HTTP, path-style (s3s-fs, MinIO, DigitalOcean Spaces, AWS).
#[derive(Debug)]
pub struct S3 {
    http: reqwest::Client,
    /// `http://host:port` or `https://host`.
    endpoint: String,
    host: String,
    pub bucket: String,
    region: String,
    access_key: String,
    secret_key: Secret,
}

/// What a backup left in the bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub bytes: u64,
    pub sha256: String,
}

fn valid_key(key: &str) -> Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
    if !ok {
        bail!("object key {key:?}: only letters, digits and / . _ - are used");
    }
    Ok(())
}

/// Percent-encodes a query value as SigV4's canonical form wants it.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The text of every `<tag>…</tag>` in an S3 XML answer (S3's answers are flat enough).
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(after[..j].to_owned());
        rest = &after[j + close.len()..];
    }
    out
}

impl S3 {
    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        access_key: &str,
        secret_key: Secret,
    ) -> Result<S3> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&endpoint).context("the S3 endpoint")?;
        let host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            _ => bail!("the S3 endpoint has no host"),
        };
        if bucket.is_empty()
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("the S3 bucket {bucket:?}: lowercase letters, digits and -");
        }
        Ok(S3 {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            endpoint,
            host,
            bucket: bucket.into(),
            region: region.into(),
            access_key: access_key.into(),
            secret_key,
        })
    }

    /// From `PRESSDOCK_BACKUP_S3_ENDPOINT`, `…_BUCKET`, `…_REGION` (default us-east-1),
    /// `…_ACCESS_KEY`, `…_SECRET_KEY`.
    pub fn from_env() -> Result<S3> {
        let var = |n: &str| {
            std::env::var(format!("PRESSDOCK_BACKUP_S3_{n}"))
                .with_context(|| format!("PRESSDOCK_BACKUP_S3_{n} is not set"))
        };
        S3::new(
            &var("ENDPOINT")?,
            &var("BUCKET")?,
            &var("REGION").unwrap_or_else(|_| "us-east-1".into()),
            &var("ACCESS_KEY")?,
            Secret::new(var("SECRET_KEY")?),
        )
    }

    /// One signed request. `key` empty: the bucket itself. `query`: name/value pairs.
    async fn send(
        &self,
        method: reqwest::Method,
        key: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<reqwest::Response> {
        let path = if key.is_empty() {
            format!("/{}", self.bucket)
        } else {
            valid_key(key)?;
            format!("/{}/{key}", self.bucket)
        };
        let mut q: Vec<(String, String)> = query.iter().map(|(k, v)| (enc(k), enc(v))).collect();
        q.sort();
        let query: String = q
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let headers = sigv4::sign(
            &sigv4::Credentials {
                access_key: &self.access_key,
                secret_key: &self.secret_key.0,
                region: &self.region,
            },
            method.as_str(),
            &self.host,
            &path,
            &query,
            &body,
            std::time::SystemTime::now(),
        );
        let url = if query.is_empty() {
            format!("{}{path}", self.endpoint)
        } else {
            format!("{}{path}?{query}", self.endpoint)
        };
        let mut r = self.http.request(method.clone(), url).body(body);
        for (k, v) in headers {
            r = r.header(k, v);
        }
        let resp = r
            .send()
            .await
            .with_context(|| format!("S3 {method} {path}"))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            let code = xml_values(&text, "Code").into_iter().next();
            let msg = xml_values(&text, "Message").into_iter().next();
            bail!(
                "S3 answered {method} {path} with {status}: {} {}",
                code.unwrap_or_default(),
                msg.unwrap_or_default()
            );
        }
        Ok(resp)
    }

    /// Creates the bucket unless it exists.
    pub async fn ensure_bucket(&self) -> Result<()> {
        if self
            .send(reqwest::Method::HEAD, "", &[], Vec::new())
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.send(reqwest::Method::PUT, "", &[], Vec::new()).await?;
        Ok(())
    }

    pub async fn put(&self, key: &str, body: Vec<u8>) -> Result<()> {
        self.send(reqwest::Method::PUT, key, &[], body).await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Vec<u8>> {
        let r = self
            .send(reqwest::Method::GET, key, &[], Vec::new())
            .await?;
        Ok(r.bytes().await?.to_vec())
    }

    /// Keys under `prefix` (every page).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = vec![("list-type", "2"), ("prefix", prefix)];
            if let Some(t) = &token {
                q.push(("continuation-token", t));
            }
            let text = self
                .send(reqwest::Method::GET, "", &q, Vec::new())
                .await?
                .text()
                .await?;
            keys.extend(xml_values(&text, "Key"));
            token = xml_values(&text, "NextContinuationToken")
                .into_iter()
                .next();
            if token.is_none()
                || xml_values(&text, "IsTruncated").first().map(String::as_str) != Some("true")
            {
                return Ok(keys);
            }
        }
    }

    /// Uploads what `reader` gives, part after part, while it is produced. The upload is
    /// completed only if `finish` (called once the reader is exhausted: the producers'
    /// exit statuses) succeeds; on any error it is aborted.
    pub async fn put_stream<R, F>(&self, key: &str, mut reader: R, finish: F) -> Result<Stored>
    where
        R: AsyncRead + Unpin,
        F: std::future::Future<Output = Result<()>>,
    {
        let created = self
            .send(reqwest::Method::POST, key, &[("uploads", "")], Vec::new())
            .await?
            .text()
            .await?;
        let upload_id = xml_values(&created, "UploadId")
            .into_iter()
            .next()
            .context("CreateMultipartUpload: no UploadId")?;
        let result: Result<Stored> = async {
            let mut parts: Vec<(u32, String)> = Vec::new();
            let mut hash = Sha256::new();
            let mut total = 0u64;
            loop {
                let mut buf = vec![0u8; PART_SIZE];
                let mut n = 0;
                while n < PART_SIZE {
                    let r = reader
                        .read(&mut buf[n..])
                        .await
                        .context("reading the stream")?;
                    if r == 0 {
                        break;
                    }
                    n += r;
                }
                buf.truncate(n);
                if n == 0 && !parts.is_empty() {
                    break;
                }
                hash.update(&buf);
                total += n as u64;
                let number = u32::try_from(parts.len() + 1)?;
                let resp = self
                    .send(
                        reqwest::Method::PUT,
                        key,
                        &[
                            ("partNumber", &number.to_string()),
                            ("uploadId", &upload_id),
                        ],
                        buf,
                    )
                    .await?;
                let etag = resp
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                parts.push((number, etag));
                if n < PART_SIZE {
                    break;
                }
            }
            finish.await?;
            let xml: String = parts
                .iter()
                .map(|(n, e)| format!("<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"))
                .collect();
            self.send(
                reqwest::Method::POST,
                key,
                &[("uploadId", &upload_id)],
                format!("<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>").into_bytes(),
            )
            .await?;
            Ok(Stored {
                key: key.to_owned(),
                bytes: total,
                sha256: hex::encode(hash.finalize()),
            })
        }
        .await;
        if result.is_err() {
            let _ = self
                .send(
                    reqwest::Method::DELETE,
                    key,
                    &[("uploadId", &upload_id)],
                    Vec::new(),
                )
                .await;
        }
        result
    }

    /// Streams an object into `w`; returns its size and SHA-256.
    pub async fn get_stream<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        key: &str,
        w: &mut W,
    ) -> Result<(u64, String)> {
        let mut r = self
            .send(reqwest::Method::GET, key, &[], Vec::new())
            .await?;
        let mut hash = Sha256::new();
        let mut total = 0u64;
        while let Some(chunk) = r.chunk().await? {
            hash.update(&chunk);
            total += chunk.len() as u64;
            w.write_all(&chunk).await?;
        }
        w.shutdown().await?;
        Ok((total, hex::encode(hash.finalize())))
    }
}

/// `YYYYMMDDTHHMMSSZ` now: the name of a backup (sorts by time).
pub fn stamp() -> String {
    sigv4::amz_date(std::time::SystemTime::now())
}

/// The backups of `kind` (`galera`, `swarm/<host>`) under `prefix`, oldest first.
pub async fn list_backups(s3: &S3, prefix: &str, kind: &str) -> Result<Vec<String>> {
    let base = format!("{prefix}/{kind}/");
    let mut stamps: Vec<String> = s3
        .list(&base)
        .await?
        .into_iter()
        .filter_map(|k| {
            k.strip_prefix(&base)?
                .strip_suffix("/manifest.json")
                .map(str::to_owned)
        })
        .collect();
    stamps.sort();
    Ok(stamps)
}

/// Where a MariaDB server is, for `mariabackup`.
#[derive(Debug, Clone)]
pub struct Galera {
    pub user: String,
    pub password: Secret,
    /// A Unix socket (then host and port are not used), or host and port.
    pub socket: Option<PathBuf>,
    pub host: String,
    pub port: u16,
    /// The server's data directory (mariabackup copies the files from there).
    pub datadir: PathBuf,
    /// `--galera-info`: record the cluster's position (a Galera node).
    pub galera_info: bool,
}

/// The tail of a program's standard error (mariabackup is verbose).
async fn tail(mut e: tokio::process::ChildStderr) -> String {
    let mut s = String::new();
    let _ = e.read_to_string(&mut s).await;
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

async fn exited(name: &str, child: &mut tokio::process::Child, err: String) -> Result<()> {
    let st = child.wait().await?;
    if !st.success() {
        bail!("{name} failed ({st}): {err}");
    }
    Ok(())
}

/// A private file holding the client credentials for `--defaults-extra-file` (a password on
/// the command line would show in `ps`).
fn client_defaults(g: &Galera) -> Result<tempfile_lite::TempFile> {
    let mut text = format!("[client]\nuser={}\n", g.user);
    if !g.password.0.is_empty() {
        text.push_str(&format!("password={}\n", g.password.0));
    }
    tempfile_lite::TempFile::private(&text)
}

/// Hot backup of a MariaDB/Galera node to `<prefix>/galera/<stamp>/`.
pub async fn backup_galera(s3: &S3, g: &Galera, prefix: &str) -> Result<GaleraBackup> {
    let defaults = client_defaults(g)?;
    let work = tempfile_lite::TempDir::new("pd-mariabackup")?;
    let mut cmd = tokio::process::Command::new("mariabackup");
    cmd.arg(format!("--defaults-extra-file={}", defaults.path.display()))
        .arg("--backup")
        .arg("--stream=xbstream")
        .arg(format!("--target-dir={}", work.path.display()))
        .arg(format!("--datadir={}", g.datadir.display()));
    match &g.socket {
        Some(s) => cmd.arg(format!("--socket={}", s.display())),
        None => cmd
            .arg(format!("--host={}", g.host))
            .arg(format!("--port={}", g.port)),
    };
    if g.galera_info {
        cmd.arg("--galera-info");
    }
    let stamp = stamp();
    let key = format!("{prefix}/galera/{stamp}/backup.xbstream.zst");
    let (stored, tap) = stream_up(s3, &key, cmd, "mariabackup", Some(XbTap::default())).await?;
    let tap = tap.unwrap_or_default();
    let position = tap.file(GALERA_INFO).and_then(WsrepPosition::parse);
    if g.galera_info && position.is_none() {
        bail!(
            "the backup stream has no readable {GALERA_INFO} (is this a Galera node?);              the upload is kept but not listed: back up again, or use --no-galera-info"
        );
    }
    let mut extra = serde_json::Map::new();
    if let Some(p) = &position {
        extra.insert("wsrep_position".into(), serde_json::to_value(p)?);
    }
    if let Some(b) = tap.file(BINLOG_INFO) {
        extra.insert("binlog_info".into(), b.trim().into());
    }
    manifest(
        s3,
        prefix,
        &format!("galera/{stamp}"),
        &stored,
        "mariabackup --stream=xbstream | zstd",
        extra,
    )
    .await?;
    Ok(GaleraBackup {
        stamp,
        stored,
        position,
    })
}

/// A Galera backup made by [`backup_galera`].
#[derive(Clone, Debug)]
pub struct GaleraBackup {
    pub stamp: String,
    pub stored: Stored,
    /// The cluster position the copy is consistent with (`--galera-info`).
    pub position: Option<WsrepPosition>,
}

/// Where mariabackup records the Galera position (`--galera-info`) and the binary log's.
pub const GALERA_INFO: &str = "xtrabackup_galera_info";
const BINLOG_INFO: &str = "xtrabackup_binlog_info";

/// A Galera cluster position: the cluster's state UUID and the last committed seqno, and what
/// MariaDB writes beside them: the wsrep GTID domain (10.11: `<uuid>:<seqno> <domain>`) or a
/// GTID (`domain-server-seq`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WsrepPosition {
    pub uuid: String,
    pub seqno: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid_domain_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
}

impl WsrepPosition {
    /// `xtrabackup_galera_info`: `<uuid>:<seqno>`, then the GTID domain or a GTID.
    pub fn parse(text: &str) -> Option<WsrepPosition> {
        let mut words = text.split_whitespace();
        let (uuid, seqno) = words.next()?.rsplit_once(':')?;
        let uuid_ok = uuid.len() == 36 && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        let seqno: i64 = seqno.parse().ok()?;
        if !uuid_ok || seqno < -1 {
            return None;
        }
        let next = words.next();
        let gtid_domain_id = next.and_then(|w| w.parse().ok());
        let gtid = next
            .filter(|g| g.contains('-'))
            .filter(|g| {
                g.bytes()
                    .all(|b| b.is_ascii_digit() || b == b'-' || b == b',')
            })
            .map(str::to_owned);
        Some(WsrepPosition {
            uuid: uuid.to_owned(),
            seqno,
            gtid_domain_id,
            gtid,
        })
    }

    /// The `grastate.dat` a node bootstraps from at this position.
    pub fn grastate(&self) -> String {
        format!(
            "# GALERA saved state\nversion: 2.1\nuuid:    {}\nseqno:   {}\nsafe_to_bootstrap: 1\n",
            self.uuid, self.seqno
        )
    }
}

impl fmt::Display for WsrepPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uuid, self.seqno)?;
        if let Some(g) = &self.gtid {
            write!(f, " (GTID {g})")?;
        } else if let Some(d) = self.gtid_domain_id {
            write!(f, " (GTID domain {d})")?;
        }
        Ok(())
    }
}

/// Reads an xbstream as it passes (the stream `mbstream` unpacks) and keeps the content of the
/// small metadata files mariabackup writes into it, so the manifest can say which position a
/// backup holds without unpacking it. The format: chunks of `XBSTCK01`, a flag byte, a type
/// byte (`P` payload, `E` end of a file), the path's length (u32 LE) and path; a payload
/// chunk then has its length (u64 LE), offset (u64 LE), a CRC-32 (u32) and its bytes. A
/// stream it cannot read (another format) only leaves it without files; the bytes pass
/// unchanged either way.
#[derive(Debug, Default)]
pub struct XbTap {
    /// Bytes of a chunk header not complete yet.
    head: Vec<u8>,
    /// Payload bytes of the current chunk still to pass, and whether they are kept.
    payload_left: u64,
    keep: Option<String>,
    files: Vec<(String, Vec<u8>)>,
    lost: bool,
}

const XB_MAGIC: &[u8; 8] = b"XBSTCK01";
/// Files larger than this are never kept (data files pass through).
const XB_KEEP_MAX: u64 = 64 << 10;

impl XbTap {
    /// The content of a kept file (`xtrabackup_galera_info`, `xtrabackup_binlog_info`).
    pub fn file(&self, name: &str) -> Option<&str> {
        self.files
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, b)| std::str::from_utf8(b).ok())
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.lost {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                if let Some(name) = &self.keep
                    && let Some((_, b)) = self.files.iter_mut().find(|(f, _)| f == name)
                {
                    b.extend_from_slice(&data[..n]);
                }
                self.payload_left -= n as u64;
                data = &data[n..];
                continue;
            }
            // A header: take bytes one chunk at a time until it is complete.
            let need = self.header_len();
            match need {
                Err(()) => {
                    self.lost = true;
                    return;
                }
                Ok(Some(total)) if self.head.len() >= total => {
                    self.start_chunk();
                }
                Ok(want) => {
                    let want = want.unwrap_or(14);
                    let take = (want.max(self.head.len() + 1) - self.head.len()).min(data.len());
                    self.head.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if let Ok(Some(total)) = self.header_len()
                        && self.head.len() >= total
                    {
                        self.start_chunk();
                    }
                }
            }
        }
    }

    /// The whole header's length once enough of it is known; `Err` when it is no xbstream.
    fn header_len(&self) -> Result<Option<usize>, ()> {
        let h = &self.head;
        let n = h.len().min(8);
        if h[..n] != XB_MAGIC[..n] {
            return Err(());
        }
        if h.len() < 14 {
            return Ok(None);
        }
        let path_len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]) as usize;
        if path_len > 4096 {
            return Err(());
        }
        match h[9] {
            b'E' => Ok(Some(14 + path_len)),
            b'P' => Ok(Some(14 + path_len + 20)),
            _ => Err(()),
        }
    }

    fn start_chunk(&mut self) {
        let h = std::mem::take(&mut self.head);
        let path_len = u32::from_le_bytes([h[10], h[11], h[12], h[13]]) as usize;
        let path = String::from_utf8_lossy(&h[14..14 + path_len]).into_owned();
        if h[9] != b'P' {
            return;
        }
        let at = 14 + path_len;
        let mut len = [0u8; 8];
        len.copy_from_slice(&h[at..at + 8]);
        self.payload_left = u64::from_le_bytes(len);
        let name = path.rsplit('/').next().unwrap_or_default().to_owned();
        self.keep = None;
        if (name == GALERA_INFO || name == BINLOG_INFO) && self.payload_left <= XB_KEEP_MAX {
            if !self.files.iter().any(|(n, _)| *n == name) {
                self.files.push((name.clone(), Vec::new()));
            }
            self.keep = Some(name);
        }
    }
}

/// The swarm's state: a tar of `dir` (a manager's `/var/lib/docker/swarm`) to
/// `<prefix>/swarm/<host>/<stamp>/`. `stop_docker`: `systemctl stop docker` for the copy,
/// started again whatever happens.
pub async fn backup_swarm(
    s3: &S3,
    dir: &Path,
    host: &str,
    prefix: &str,
    stop_docker: bool,
) -> Result<Stored> {
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        bail!("host {host:?}: letters, digits, - and .");
    }
    let parent = dir.parent().context("the swarm folder has no parent")?;
    let name = dir.file_name().context("the swarm folder has no name")?;
    if stop_docker {
        managers_all_up().await?;
        systemctl("stop").await?;
    }
    let mut cmd = tokio::process::Command::new("tar");
    cmd.arg("-C").arg(parent).arg("-cf").arg("-").arg(name);
    let stamp = stamp();
    let key = format!("{prefix}/swarm/{host}/{stamp}/swarm.tar.zst");
    let r = stream_up(s3, &key, cmd, "tar", None).await;
    if stop_docker {
        systemctl("start").await?;
    }
    let (stored, _) = r?;
    manifest(
        s3,
        prefix,
        &format!("swarm/{host}/{stamp}"),
        &stored,
        "tar -c swarm | zstd",
        serde_json::Map::new(),
    )
    .await?;
    Ok(stored)
}

/// Stopping this manager's dockerd keeps quorum only if every other manager is up.
async fn managers_all_up() -> Result<()> {
    let out = tokio::process::Command::new("docker")
        .args([
            "node",
            "ls",
            "--filter",
            "role=manager",
            "--format",
            "{{.Hostname}} {{.Status}}",
        ])
        .output()
        .await
        .context("docker node ls")?;
    if !out.status.success() {
        bail!(
            "docker node ls: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let down: Vec<&str> = text
        .lines()
        .filter(|l| !l.ends_with(" Ready"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    if !down.is_empty() {
        bail!(
            "manager(s) {} not Ready: stopping dockerd here would leave the swarm without quorum; back up without --stop-docker or later",
            down.join(", ")
        );
    }
    Ok(())
}

async fn systemctl(verb: &str) -> Result<()> {
    let st = tokio::process::Command::new("systemctl")
        .args([verb, "docker"])
        .status()
        .await?;
    if !st.success() {
        bail!("systemctl {verb} docker: {st}");
    }
    Ok(())
}

/// `producer | zstd` uploaded to `key`. With a `tap`, the producer's output passes through
/// it on its way to zstd (and the tap is handed back once the stream ended).
async fn stream_up(
    s3: &S3,
    key: &str,
    mut producer: tokio::process::Command,
    name: &str,
    tap: Option<XbTap>,
) -> Result<(Stored, Option<XbTap>)> {
    let mut p = producer
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let mut p_out = p.stdout.take().context("no stdout")?;
    let p_err = p.stderr.take().context("no stderr")?;
    let (z_in, copy) = match tap {
        None => (p_out.try_into()?, None),
        Some(mut tap) => {
            let copy = async move |mut w: tokio::process::ChildStdin| -> Result<XbTap> {
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    let n = p_out
                        .read(&mut buf)
                        .await
                        .context("reading the backup stream")?;
                    if n == 0 {
                        break;
                    }
                    tap.feed(&buf[..n]);
                    w.write_all(&buf[..n]).await.context("writing to zstd")?;
                }
                w.shutdown().await?;
                Ok(tap)
            };
            (Stdio::piped(), Some(copy))
        }
    };
    let mut z = tokio::process::Command::new("zstd")
        .args(["-q", "-c", "-3", "-T0"])
        .stdin(z_in)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting zstd")?;
    let copied = match copy {
        Some(copy) => Some(tokio::spawn(copy(z.stdin.take().context("no stdin")?))),
        None => None,
    };
    let z_out = z.stdout.take().context("no stdout")?;
    let z_err = z.stderr.take().context("no stderr")?;
    let p_tail = tokio::spawn(tail(p_err));
    let z_tail = tokio::spawn(tail(z_err));
    let mut tap_back = None;
    let finish = async {
        exited(name, &mut p, p_tail.await.unwrap_or_default()).await?;
        if let Some(c) = copied {
            tap_back = Some(c.await.context("the stream copy")??);
        }
        exited("zstd", &mut z, z_tail.await.unwrap_or_default()).await
    };
    let stored = s3.put_stream(key, z_out, finish).await?;
    Ok((stored, tap_back))
}

async fn manifest(
    s3: &S3,
    prefix: &str,
    dir: &str,
    stored: &Stored,
    how: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    let mut m = serde_json::json!({
        "key": stored.key, "bytes": stored.bytes, "sha256": stored.sha256,
        "made_by": how, "tool": concat!("pressdock-infra ", env!("CARGO_PKG_VERSION")),
    });
    if let Some(o) = m.as_object_mut() {
        o.extend(extra);
    }
    s3.put(
        &format!("{prefix}/{dir}/manifest.json"),
        serde_json::to_vec_pretty(&m)?,
    )
    .await
}

/// The manifest of a backup: (key of the data, bytes, sha256), and the JSON itself.
async fn read_manifest(s3: &S3, prefix: &str, dir: &str) -> Result<(Stored, serde_json::Value)> {
    let m: serde_json::Value = serde_json::from_slice(
        &s3.get(&format!("{prefix}/{dir}/manifest.json"))
            .await
            .with_context(|| format!("backup {dir}"))?,
    )?;
    let stored = Stored {
        key: m["key"].as_str().context("manifest: key")?.to_owned(),
        bytes: m["bytes"].as_u64().unwrap_or(0),
        sha256: m["sha256"].as_str().unwrap_or("").to_owned(),
    };
    Ok((stored, m))
}

/// The Galera position a backup's manifest records, if it records one.
pub async fn galera_manifest_position(
    s3: &S3,
    prefix: &str,
    stamp: &str,
) -> Result<Option<WsrepPosition>> {
    let (_, m) = read_manifest(s3, prefix, &format!("galera/{stamp}")).await?;
    Ok(serde_json::from_value(m["wsrep_position"].clone()).ok())
}

/// Downloads `stored`, checks its SHA-256, and pipes it through `zstd -d` into `consumer`.
async fn stream_down(
    s3: &S3,
    stored: &Stored,
    mut consumer: tokio::process::Command,
    name: &str,
) -> Result<()> {
    let mut z = tokio::process::Command::new("zstd")
        .args(["-q", "-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting zstd")?;
    let z_out: Stdio = z.stdout.take().context("no stdout")?.try_into()?;
    let mut z_in = z.stdin.take().context("no stdin")?;
    let z_err = z.stderr.take().context("no stderr")?;
    let mut c = consumer
        .stdin(z_out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let c_err = c.stderr.take().context("no stderr")?;
    let z_tail = tokio::spawn(tail(z_err));
    let c_tail = tokio::spawn(tail(c_err));
    let (bytes, sha) = s3.get_stream(&stored.key, &mut z_in).await?;
    drop(z_in);
    exited("zstd -d", &mut z, z_tail.await.unwrap_or_default()).await?;
    exited(name, &mut c, c_tail.await.unwrap_or_default()).await?;
    if bytes != stored.bytes || sha != stored.sha256 {
        bail!(
            "{}: {bytes} bytes with SHA-256 {sha}, the manifest says {} bytes, {}: do not use this copy",
            stored.key,
            stored.bytes,
            stored.sha256
        );
    }
    Ok(())
}

/// Picks a backup: `latest` or a stamp.
pub async fn pick(s3: &S3, prefix: &str, kind: &str, which: &str) -> Result<String> {
    let all = list_backups(s3, prefix, kind).await?;
    if which == "latest" {
        return all
            .last()
            .cloned()
            .with_context(|| format!("no {kind} backup under {prefix}/ in bucket {}", s3.bucket));
    }
    if !all.iter().any(|s| s == which) {
        bail!("no {kind} backup {which} (there are: {})", all.join(", "));
    }
    Ok(which.to_owned())
}

/// What [`restore_galera`] restored.
#[derive(Clone, Debug)]
pub struct RestoredGalera {
    pub stamp: String,
    /// The position `grastate.dat` now holds (none for a plain MariaDB backup).
    pub position: Option<WsrepPosition>,
}

/// Restores a Galera backup into `datadir` (must be missing or empty): fetched, checked,
/// unpacked, prepared; for a Galera backup `grastate.dat` is written from the position the
/// backup holds (checked against the manifest's), marked safe to bootstrap, so the node
/// starting on it with `--wsrep-new-cluster` continues the cluster at that position.
/// `owner`: `chown -R` it to this user (`mysql`) when given.
pub async fn restore_galera(
    s3: &S3,
    prefix: &str,
    which: &str,
    datadir: &Path,
    owner: Option<&str>,
) -> Result<RestoredGalera> {
    if datadir.exists() && std::fs::read_dir(datadir)?.next().is_some() {
        bail!(
            "{} is not empty: restore into an empty data directory",
            datadir.display()
        );
    }
    std::fs::create_dir_all(datadir)?;
    let stamp = pick(s3, prefix, "galera", which).await?;
    let (stored, m) = read_manifest(s3, prefix, &format!("galera/{stamp}")).await?;
    let recorded: Option<WsrepPosition> = serde_json::from_value(m["wsrep_position"].clone()).ok();
    let mut unpack = tokio::process::Command::new("mbstream");
    unpack.arg("-x").arg("-C").arg(datadir);
    stream_down(s3, &stored, unpack, "mbstream -x").await?;
    let out = tokio::process::Command::new("mariabackup")
        .arg("--prepare")
        .arg(format!("--target-dir={}", datadir.display()))
        .output()
        .await
        .context("running mariabackup --prepare")?;
    if !out.status.success() {
        let e = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = e.lines().collect();
        bail!(
            "mariabackup --prepare failed: {}",
            lines[lines.len().saturating_sub(8)..].join("\n")
        );
    }
    let position = match std::fs::read_to_string(datadir.join(GALERA_INFO)) {
        Ok(text) => Some(WsrepPosition::parse(&text).with_context(|| {
            format!("{GALERA_INFO} of backup {stamp} is not <uuid>:<seqno>: {text:?}")
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context(GALERA_INFO),
    };
    if let (Some(p), Some(r)) = (&position, &recorded)
        && (p.uuid != r.uuid || p.seqno != r.seqno)
    {
        bail!("backup {stamp} holds position {p}, its manifest says {r}: do not use this copy");
    }
    if let Some(p) = &position {
        std::fs::write(datadir.join("grastate.dat"), p.grastate())
            .context("writing grastate.dat")?;
    }
    if let Some(u) = owner {
        let st = tokio::process::Command::new("chown")
            .arg("-R")
            .arg(format!("{u}:{u}"))
            .arg(datadir)
            .status()
            .await?;
        if !st.success() {
            bail!("chown -R {u} {}: {st}", datadir.display());
        }
    }
    Ok(RestoredGalera { stamp, position })
}

/// Restores a manager's swarm state: the tar unpacked into `docker_root` (dockerd stopped;
/// `swarm` must not exist there).
pub async fn restore_swarm(
    s3: &S3,
    prefix: &str,
    host: &str,
    which: &str,
    docker_root: &Path,
) -> Result<String> {
    if docker_root.join("swarm").exists() {
        bail!(
            "{} exists: stop docker and move it aside first",
            docker_root.join("swarm").display()
        );
    }
    std::fs::create_dir_all(docker_root)?;
    let kind = format!("swarm/{host}");
    let stamp = pick(s3, prefix, &kind, which).await?;
    let (stored, _) = read_manifest(s3, prefix, &format!("{kind}/{stamp}")).await?;
    let mut untar = tokio::process::Command::new("tar");
    untar.arg("-C").arg(docker_root).arg("-xf").arg("-");
    stream_down(s3, &stored, untar, "tar -x").await?;
    Ok(stamp)
}

/// Small temporary files and folders removed on drop (no extra crate for two uses).
mod tempfile_lite {
    use anyhow::Result;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::path::PathBuf;

    fn unique(prefix: &str) -> PathBuf {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()))
    }

    pub struct TempFile {
        pub path: PathBuf,
    }

    impl TempFile {
        /// Mode 0600, created new.
        pub fn private(text: &str) -> Result<TempFile> {
            let path = unique("pd-client");
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(text.as_bytes())?;
            Ok(TempFile { path })
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    pub struct TempDir {
        pub path: PathBuf,
    }

    impl TempDir {
        pub fn new(prefix: &str) -> Result<TempDir> {
            let path = unique(prefix);
            std::fs::create_dir(&path)?;
            Ok(TempDir { path })
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An xbstream as `mbstream -c` writes it (checked against mbstream 10.11's bytes).
    fn xb_chunk(path: &str, payload: Option<&[u8]>) -> Vec<u8> {
        let mut c = XB_MAGIC.to_vec();
        c.push(0);
        c.push(if payload.is_some() { b'P' } else { b'E' });
        c.extend_from_slice(&u32::try_from(path.len()).unwrap_or(0).to_le_bytes());
        c.extend_from_slice(path.as_bytes());
        if let Some(p) = payload {
            c.extend_from_slice(&(p.len() as u64).to_le_bytes());
            c.extend_from_slice(&0u64.to_le_bytes());
            c.extend_from_slice(&[0x3a, 0xc1, 0x6c, 0x33]);
            c.extend_from_slice(p);
        }
        c
    }

    #[test]
    fn the_tap_keeps_the_galera_position_whatever_the_read_sizes() {
        let info = b"3f1c0a52-5b2e-11ef-9a55-2f0e8c7d4b11:1234 0-1-77\n";
        let mut stream = Vec::new();
        stream.extend(xb_chunk("ibdata1", Some(&[7u8; 70_000])));
        stream.extend(xb_chunk("ibdata1", None));
        stream.extend(xb_chunk(GALERA_INFO, Some(info)));
        stream.extend(xb_chunk(GALERA_INFO, None));
        stream.extend(xb_chunk("wp_x/t.ibd", Some(b"rows")));
        for step in [1, 3, 13, 14, 33, 4096, stream.len()] {
            let mut tap = XbTap::default();
            for part in stream.chunks(step) {
                tap.feed(part);
            }
            let p = tap.file(GALERA_INFO).and_then(WsrepPosition::parse);
            assert_eq!(
                p,
                Some(WsrepPosition {
                    uuid: "3f1c0a52-5b2e-11ef-9a55-2f0e8c7d4b11".into(),
                    seqno: 1234,
                    gtid_domain_id: None,
                    gtid: Some("0-1-77".into()),
                }),
                "read {step} bytes at a time"
            );
            assert!(tap.file("ibdata1").is_none(), "data files are not kept");
        }
        let mut other = XbTap::default();
        other.feed(b"not an xbstream at all, a tar perhaps");
        assert!(other.file(GALERA_INFO).is_none());
    }

    #[test]
    fn positions_parse_strictly_and_make_a_bootstrappable_grastate() {
        let p = WsrepPosition::parse("3f1c0a52-5b2e-11ef-9a55-2f0e8c7d4b11:42\n").expect("parses");
        assert_eq!(
            (p.seqno, p.gtid.as_deref(), p.gtid_domain_id),
            (42, None, None)
        );
        // What MariaDB 10.11 wrote on the lab: the position and the wsrep GTID domain.
        let lab =
            WsrepPosition::parse("e8414b25-f21d-11f1-8ec6-3b52c99257e7:19447 0\n").expect("parses");
        assert_eq!(
            (lab.seqno, lab.gtid.as_deref(), lab.gtid_domain_id),
            (19447, None, Some(0))
        );
        assert_eq!(
            lab.to_string(),
            "e8414b25-f21d-11f1-8ec6-3b52c99257e7:19447 (GTID domain 0)"
        );
        assert_eq!(
            p.grastate(),
            "# GALERA saved state\nversion: 2.1\nuuid:    3f1c0a52-5b2e-11ef-9a55-2f0e8c7d4b11\n\
             seqno:   42\nsafe_to_bootstrap: 1\n"
        );
        for bad in [
            "",
            "x:1",
            "3f1c0a52-5b2e-11ef-9a55-2f0e8c7d4b11",
            "3f1c0a52-5b2e-11ef-9a55-2f0e8c7d4b11:-5",
            "3f1c0a52-5b2e-11ef-9a55-2f0e8c7d4b1;:1",
        ] {
            assert!(WsrepPosition::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn keys_and_queries_are_ours() {
        assert!(valid_key("pd-prod/galera/20261206T231500Z/backup.xbstream.zst").is_ok());
        for bad in ["", "/x", "a/../b", "a b", "a?b"] {
            assert!(valid_key(bad).is_err(), "{bad}");
        }
        assert_eq!(enc("a+b/c=d"), "a%2Bb%2Fc%3Dd");
        assert_eq!(
            xml_values("<a><Key>x</Key><Key>y/z</Key></a>", "Key"),
            ["x", "y/z"]
        );
        let s3 = S3::new(
            "http://127.0.0.1:9",
            "backups",
            "us-east-1",
            "AK",
            Secret::new("very-secret".into()),
        );
        let s = format!("{:?}", s3.ok());
        assert!(
            !s.contains("very-secret") && s.contains("<redacted>"),
            "{s}"
        );
    }
}

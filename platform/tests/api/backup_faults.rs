//! S3 faults during a backup (issue 13, item 6), against a real S3 server (`s3s-fs`, signed
//! requests only) with the faults injected by a proxy in front of it, not by a mocked client:
//! refusals (`503 SlowDown`, `500 InternalError`) and connections cut in the middle of a
//! part's body. Transient faults are retried and the backup completes and verifies; a store
//! that keeps failing fails the backup, its multipart uploads are aborted and nothing under
//! its prefix could pass for a backup.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use platform::backup::{self, BackupStore, Hooks, store::Timeouts};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use crate::{
    backup::{S3Server, SECRET_KEY},
    backup_fixture::Source,
};

/// What the proxy does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Forwarded to the S3 server.
    Pass,
    /// Answered by the proxy with this status and an S3 error body.
    Status(u16),
    /// The head and this many bytes of the body are forwarded, then both connections are
    /// closed (a network cut mid-upload).
    Cut(usize),
    /// The request is read whole and never answered: the connection is held open (up to
    /// 60 s) until the client gives up on it (a server that hangs).
    Stall,
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    fault: Fault,
}

impl Seen {
    fn is_part_upload(&self) -> bool {
        is_part_upload(&self.method, &self.target)
    }
}

fn is_part_upload(method: &str, target: &str) -> bool {
    method == "PUT" && target.contains("partNumber=")
}

type Rule = Arc<dyn Fn(&str, &str, usize) -> Fault + Send + Sync>;

/// An HTTP/1.1 proxy to `upstream`: one request per connection (it asks both sides to
/// close after each), each decided by `rule(method, target, n)`, `n` counting the requests
/// of that method and target kind (part uploads counted apart from the rest).
struct FaultProxy {
    endpoint: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    async fn start(upstream: &str, rule: Rule) -> Self {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let parts = Arc::new(AtomicUsize::new(0));
        let others = Arc::new(AtomicUsize::new(0));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let (upstream, rule, seen) = (upstream.clone(), rule.clone(), seen.clone());
                    let (parts, others) = (parts.clone(), others.clone());
                    tokio::spawn(async move {
                        let _ = serve(client, &upstream, rule, seen, parts, others).await;
                    });
                }
            })
        };
        Self {
            endpoint,
            seen,
            task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Reads a request head (through the blank line); what followed it is returned too.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<(String, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            return Ok(Some((head, buf[end + 4..].to_vec())));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
        assert!(buf.len() < 1 << 20, "a request head over 1 MiB");
    }
}

/// The head with `Connection: close` in place of any connection header.
fn closing(head: &str) -> String {
    let mut out = String::new();
    for line in head.trim_end_matches("\r\n").split("\r\n") {
        let lower = line.to_ascii_lowercase();
        // The proxy answers `Expect: 100-continue` itself where it reads the body.
        if lower.starts_with("connection:") || lower.starts_with("expect:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve(
    mut client: TcpStream,
    upstream: &str,
    rule: Rule,
    seen: Arc<Mutex<Vec<Seen>>>,
    parts: Arc<AtomicUsize>,
    others: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let Some((head, early_body)) = read_head(&mut client).await? else {
        return Ok(());
    };
    let mut request_line = head.split("\r\n").next().unwrap_or("").split(' ');
    let method = request_line.next().unwrap_or("").to_owned();
    let target = request_line.next().unwrap_or("").to_owned();
    let n = if is_part_upload(&method, &target) {
        parts.fetch_add(1, Ordering::SeqCst)
    } else {
        others.fetch_add(1, Ordering::SeqCst)
    };
    let fault = rule(&method, &target, n);
    seen.lock().unwrap().push(Seen {
        method,
        target,
        fault,
    });
    match fault {
        Fault::Pass => {
            let mut server = TcpStream::connect(upstream).await?;
            server.write_all(closing(&head).as_bytes()).await?;
            server.write_all(&early_body).await?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
        }
        Fault::Status(code) => {
            // The body is read first (unless the client waits for 100-continue), so the
            // client sees the answer, not a reset while it is still sending.
            let length: usize = header(&head, "content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let expects =
                header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
            if !expects {
                let mut left = length.saturating_sub(early_body.len());
                let mut sink = [0u8; 65536];
                while left > 0 {
                    let n = client.read(&mut sink[..left.min(65536)]).await?;
                    if n == 0 {
                        break;
                    }
                    left -= n;
                }
            }
            let (code_name, reason) = match code {
                503 => ("SlowDown", "Service Unavailable"),
                _ => ("InternalError", "Internal Server Error"),
            };
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code_name}</Code>\
                 <Message>injected by the test's proxy</Message><RequestId>fault</RequestId></Error>"
            );
            let answer = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(answer.as_bytes()).await?;
            client.shutdown().await?;
        }
        Fault::Cut(bytes) => {
            // A client waiting for `100 Continue` before its body gets it from us (the
            // upstream's would never reach it), and no read waits more than 10 s.
            if header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
                client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            let mut server = TcpStream::connect(upstream).await?;
            server.write_all(closing(&head).as_bytes()).await?;
            let mut sent = early_body.len().min(bytes);
            server.write_all(&early_body[..sent]).await?;
            let mut chunk = [0u8; 65536];
            while sent < bytes {
                let read = client.read(&mut chunk[..(bytes - sent).min(65536)]);
                let Ok(n) = tokio::time::timeout(Duration::from_secs(10), read).await else {
                    break;
                };
                let n = n?;
                if n == 0 {
                    break;
                }
                server.write_all(&chunk[..n]).await?;
                sent += n;
            }
            // Dropped without an answer: the client's request dies mid-body.
        }
        Fault::Stall => {
            if header(&head, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
                client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
            }
            // Everything the client sends is read and dropped; no answer ever comes. The
            // client closing its side (its timeout) ends this, or 60 s.
            let mut sink = [0u8; 65536];
            let held = async {
                loop {
                    match client.read(&mut sink).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(60), held).await;
        }
    }
    Ok(())
}

/// A store whose requests go through `proxy` (same bucket and key pair as `s3`).
fn store_via(s3: &S3Server, proxy: &FaultProxy) -> BackupStore {
    let mut config = s3.config(SECRET_KEY);
    config.endpoint = proxy.endpoint.clone();
    BackupStore::new(&config)
        .unwrap()
        .with_part_size(backup::store::MIN_PART_SIZE)
}

/// Every object the manifest lists is in the store (read directly, not through the proxy)
/// with the manifest's size and SHA-256.
async fn assert_objects_match(direct: &BackupStore, done: &backup::Completed, prefix: &str) {
    assert_eq!(
        done.manifest.objects.len(),
        2,
        "{:?}",
        done.manifest.objects
    );
    for object in &done.manifest.objects {
        let bytes = direct
            .get(&format!("{prefix}{}", object.name))
            .await
            .unwrap();
        assert_eq!(bytes.len() as u64, object.size, "{}", object.name);
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            object.sha256,
            "{}",
            object.name
        );
    }
}

#[tokio::test]
async fn refused_and_cut_part_uploads_are_retried_and_the_backup_completes() {
    // 12 MiB of incompressible uploads: three parts of wp-content at the 5 MiB part size.
    let src = Source::start(12).await;
    let (s3, direct, spec) = (&src.s3, &src.direct, &src.spec);
    // The first part upload is refused with 503 SlowDown, the second with 500, the third
    // is cut after 1 MiB of its body; everything after that passes.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Arc::new(|method: &str, target: &str, n| {
            if !is_part_upload(method, target) {
                return Fault::Pass;
            }
            match n {
                0 => Fault::Status(503),
                1 => Fault::Status(500),
                2 => Fault::Cut(1024 * 1024),
                _ => Fault::Pass,
            }
        }),
    )
    .await;
    let store = store_via(s3, &proxy);

    let done = tokio::time::timeout(
        Duration::from_secs(180),
        backup::run(&store, spec, Hooks::default()),
    )
    .await
    .expect("a backup through transient faults must end, not hang")
    .unwrap_or_else(|e| panic!("the backup should outlast three transient faults: {e:#}"));

    let seen = proxy.seen();
    let faults: Vec<Fault> = seen
        .iter()
        .filter(|s| s.is_part_upload())
        .map(|s| s.fault)
        .take(3)
        .collect();
    assert_eq!(
        faults,
        [
            Fault::Status(503),
            Fault::Status(500),
            Fault::Cut(1024 * 1024)
        ]
    );
    let passed_parts = seen
        .iter()
        .filter(|s| s.is_part_upload() && s.fault == Fault::Pass)
        .count();
    assert!(
        passed_parts >= 4,
        "every part must still arrive once (database and wp-content): {seen:#?}"
    );
    let prefix = spec.prefix();
    let mut names: Vec<String> = direct
        .list(&prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k.trim_start_matches(&prefix).to_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["database.sql.zst", "manifest.json", "wp-content.tar.zst"]
    );
    assert_objects_match(direct, &done, &prefix).await;
    // The retried parts left nothing half-written behind.
    assert_eq!(s3.open_upload_files(), Vec::<String>::new());
    src.drop().await;
}

#[tokio::test]
async fn a_store_that_keeps_failing_fails_the_backup_and_aborts_its_uploads() {
    let src = Source::start(12).await;
    let (s3, direct, spec) = (&src.s3, &src.direct, &src.spec);
    // The first part of each object passes; every later part upload is refused for good.
    // Everything else (starting, aborting, listing, deleting) passes, as on a store whose
    // data path is broken and whose control path is not.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Arc::new(|method: &str, target: &str, n| {
            if is_part_upload(method, target) && n >= 2 {
                Fault::Status(500)
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let store = store_via(s3, &proxy);

    let err = tokio::time::timeout(
        Duration::from_secs(120),
        backup::run(&store, spec, Hooks::default()),
    )
    .await
    .expect("a failing store must end the backup, not hang it")
    .expect_err("a store refusing every part cannot hold a complete backup");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("InternalError"),
        "the store's own error: {msg}"
    );
    assert!(!msg.contains(SECRET_KEY), "{msg}");

    let seen = proxy.seen();
    let refused = seen
        .iter()
        .filter(|s| s.fault == Fault::Status(500))
        .count();
    assert!(refused >= 2, "refused parts were retried: {seen:#?}");
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.target.contains("uploadId=")),
        "the unfinished upload was aborted: {seen:#?}"
    );
    // Nothing left that could pass for a backup: no object, no manifest, no upload.
    assert_eq!(direct.list(&spec.prefix()).await.unwrap(), vec![]);
    assert_eq!(s3.open_upload_files(), Vec::<String>::new());
    src.drop().await;
}

/// Shorter timeouts than the store's own, so that a test of a stalled server takes tens of
/// seconds, yet long enough that a part the server does answer is never cut by them on a
/// loaded machine.
fn short_timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        read: Duration::from_secs(10),
        attempt: Duration::from_secs(15),
        stalled_stream_grace: Duration::from_secs(10),
    }
}

#[test]
fn the_store_has_connect_read_and_attempt_timeouts_by_default() {
    let s3_config = backends::config::S3Config {
        endpoint: "http://127.0.0.1:9".to_owned(),
        bucket: "b".to_owned(),
        region: "us-east-1".to_owned(),
        access_key: "a".to_owned(),
        secret_key: backends::ids::Secret::new("s"),
        force_path_style: true,
    };
    let t = BackupStore::new(&s3_config).unwrap().timeouts().unwrap();
    assert_eq!(t.connect_timeout(), Some(Duration::from_secs(10)));
    assert_eq!(t.read_timeout(), Some(Duration::from_secs(60)));
    assert_eq!(
        t.operation_attempt_timeout(),
        Some(Duration::from_secs(120))
    );
}

/// A server that takes part uploads and never answers: each stalled attempt times out
/// (the read timeout), the SDK tries again, and the backup completes. Without timeouts the
/// first stalled part would hold the backup forever (the hang of CI run B).
#[tokio::test]
async fn a_stalled_part_upload_times_out_and_is_retried() {
    let src = Source::start(6).await;
    let (s3, direct, spec) = (&src.s3, &src.direct, &src.spec);
    // The first two part uploads hang; everything after passes.
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Arc::new(|method: &str, target: &str, n| {
            if is_part_upload(method, target) && n < 2 {
                Fault::Stall
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let store = store_via(s3, &proxy).with_timeouts(short_timeouts());
    let started = std::time::Instant::now();
    let done = tokio::time::timeout(
        Duration::from_secs(180),
        backup::run(&store, spec, Hooks::default()),
    )
    .await
    .expect("a stalled upload must time out, not hang the backup")
    .unwrap_or_else(|e| panic!("the backup should outlast two stalled parts: {e:#}"));
    let took = started.elapsed();
    let stalled = proxy
        .seen()
        .iter()
        .filter(|s| s.fault == Fault::Stall)
        .count();
    assert_eq!(stalled, 2);
    eprintln!("two stalled parts, retried: the backup took {took:.1?}");
    assert_objects_match(direct, &done, &spec.prefix()).await;
    assert_eq!(s3.open_upload_files(), Vec::<String>::new());
    src.drop().await;
}

/// A server that never answers a part upload: every attempt times out, the backup fails
/// with a timeout (no secret in it), its upload is aborted and nothing is left.
#[tokio::test]
async fn a_store_that_never_answers_fails_the_backup_within_its_timeouts() {
    let src = Source::start(6).await;
    let (s3, direct, spec) = (&src.s3, &src.direct, &src.spec);
    let proxy = FaultProxy::start(
        &s3.endpoint,
        Arc::new(|method: &str, target: &str, _| {
            if is_part_upload(method, target) {
                Fault::Stall
            } else {
                Fault::Pass
            }
        }),
    )
    .await;
    let store = store_via(s3, &proxy).with_timeouts(short_timeouts());
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(
        Duration::from_secs(180),
        backup::run(&store, spec, Hooks::default()),
    )
    .await
    .expect("a store that never answers must fail the backup, not hang it")
    .expect_err("no part was ever stored");
    let msg = format!("{err:#}");
    assert!(
        msg.to_lowercase().contains("timeout") || msg.contains("timed out"),
        "{msg}"
    );
    assert!(!msg.contains(SECRET_KEY), "{msg}");
    eprintln!(
        "a store that never answers: the backup failed after {:.1?}",
        started.elapsed()
    );
    let seen = proxy.seen();
    // Each part sent (at most two in flight per object) was tried 3 times (the SDK's
    // standard retries), each attempt ended by the timeout, and no more.
    let mut attempts = std::collections::BTreeMap::<&str, usize>::new();
    for s in seen.iter().filter(|s| s.fault == Fault::Stall) {
        *attempts.entry(s.target.as_str()).or_default() += 1;
    }
    assert!(attempts.len() >= 2, "both objects sent a part: {seen:#?}");
    assert!(attempts.values().all(|n| *n == 3), "{attempts:#?}");
    assert!(
        seen.iter()
            .any(|s| s.method == "DELETE" && s.target.contains("uploadId=")),
        "the unfinished upload was aborted: {seen:#?}"
    );
    assert_eq!(direct.list(&spec.prefix()).await.unwrap(), vec![]);
    assert_eq!(s3.open_upload_files(), Vec::<String>::new());
    src.drop().await;
}

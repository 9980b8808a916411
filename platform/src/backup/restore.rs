//! A backup read back into a site: its objects checked against the manifest before
//! anything is overwritten ([`verify`]), then the database ([`restore_database`]) and
//! wp-content ([`restore_files`]) replaced, each streamed from S3 (hashed as it arrives,
//! zstd-decoded, applied) in bounded memory: no temporary copy on disk.
//!
//! The database is written through connections of the *site's own* database user with
//! the site's schema selected (never the platform's account), several at once for the
//! rows, every statement checked first by [`sqlscan::check`]: a crafted dump can neither
//! name another schema nor run with rights over one. wp-content is replaced, not merged: the site's folder is emptied
//! and the archive unpacked into it in place (the running task bind-mounts that folder,
//! so it must stay the same directory). A restore that stops halfway leaves a half-written
//! site; the saga runs the step again (it converges: tables dropped and created again, the
//! folder emptied again), or unwinds by restoring the automatic backup taken just before.

use std::{
    io::{self, Read},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use mysql_async::{Conn, Opts, prelude::Queryable};
use sha2::{Digest, Sha256};
use tokio::{sync::mpsc, task::JoinHandle};

use super::{
    BackupStore, DATABASE_OBJECT, FILES_OBJECT, MANIFEST_FORMAT, MANIFEST_OBJECT, Manifest,
    ObjectEntry,
    serialized::Rewriter,
    sqlscan::{self, Splitter, Statement},
};

/// Why a restore did not happen or did not finish.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The backup cannot be restored as it is (a damaged object, a statement a dump may not
    /// hold): trying again will not help. The text names the object and is shown to the
    /// site's tenant.
    #[error("{0}")]
    Refused(String),
    /// The store, the database or the storage failed: worth trying again.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

fn refused(message: impl Into<String>) -> RestoreError {
    RestoreError::Refused(message.into())
}

/// Chunks queued between the download and the decoder.
const QUEUED_CHUNKS: usize = 8;
/// Statements queued between the decoder and the database.
const QUEUED_STATEMENTS: usize = 2;

/// Reads `manifest.json` of the backup under `prefix`; `expected_sha256`: what the
/// backup's record says the manifest is.
pub async fn read_manifest(
    store: &BackupStore,
    prefix: &str,
    expected_sha256: Option<&str>,
) -> Result<Manifest, RestoreError> {
    let key = format!("{prefix}{MANIFEST_OBJECT}");
    let body = store.get(&key).await?;
    let sha = hex::encode(Sha256::digest(&body));
    if let Some(expected) = expected_sha256
        && expected != sha
    {
        return Err(refused(format!(
            "{MANIFEST_OBJECT} does not match the backup's record (sha256 {sha}, recorded {expected})"
        )));
    }
    let manifest: Manifest = serde_json::from_slice(&body)
        .map_err(|e| refused(format!("{MANIFEST_OBJECT} cannot be read: {e}")))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(refused(format!(
            "{MANIFEST_OBJECT} is in format {}, which this release does not restore",
            manifest.format
        )));
    }
    for name in [DATABASE_OBJECT, FILES_OBJECT] {
        let Some(o) = manifest.object(name) else {
            return Err(refused(format!("{MANIFEST_OBJECT} lists no {name}")));
        };
        if o.key != format!("{prefix}{name}") {
            return Err(refused(format!(
                "{MANIFEST_OBJECT} places {name} outside the backup's folder"
            )));
        }
    }
    Ok(manifest)
}

/// An object being downloaded: its chunks, and the task that hashes them as they pass
/// (its result: bytes and SHA-256 of what was received).
struct Download {
    chunks: mpsc::Receiver<Bytes>,
    digest: JoinHandle<anyhow::Result<(u64, String)>>,
}

/// Starts downloading `entry`. The request is answered before this returns, so a store
/// that is down fails here, before anything is overwritten.
async fn download(store: &BackupStore, entry: &ObjectEntry) -> anyhow::Result<Download> {
    let out = store
        .client()
        .get_object()
        .bucket(store.bucket())
        .key(&entry.key)
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "reading {}: {}",
                entry.name,
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })?;
    let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
    let name = entry.name.clone();
    let digest = tokio::spawn(async move {
        let mut body = out.body;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut open = true;
        while let Some(chunk) = body.try_next().await.map_err(|e| {
            anyhow!(
                "reading {name}: {}",
                aws_sdk_s3::error::DisplayErrorContext(e)
            )
        })? {
            size += chunk.len() as u64;
            hasher.update(&chunk);
            // The consumer may stop early (it refused the content): the rest is still
            // read and hashed, so that a damaged object is named as such.
            if open && tx.send(chunk).await.is_err() {
                open = false;
            }
        }
        Ok((size, hex::encode(hasher.finalize())))
    });
    Ok(Download { chunks: rx, digest })
}

/// `Read` over the downloaded chunks, for the blocking decoder.
struct ChunkReader {
    chunks: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

fn decoder(
    chunks: mpsc::Receiver<Bytes>,
) -> io::Result<zstd::stream::read::Decoder<'static, io::BufReader<ChunkReader>>> {
    zstd::stream::read::Decoder::new(ChunkReader {
        chunks,
        current: Bytes::new(),
    })
}

/// The download's end compared with the manifest: a damaged or truncated object is named
/// before any other error the content caused.
async fn settle<T>(
    entry: &ObjectEntry,
    digest: JoinHandle<anyhow::Result<(u64, String)>>,
    content: Result<T, RestoreError>,
) -> Result<T, RestoreError> {
    let (size, sha256) = digest.await.context("the download task")??;
    if size != entry.size || sha256 != entry.sha256 {
        return Err(refused(format!(
            "{} does not match the manifest: {size} bytes with sha256 {sha256}, the manifest \
             says {} bytes with sha256 {} (damaged or truncated); nothing was restored from it",
            entry.name, entry.size, entry.sha256
        )));
    }
    content
}

/// What [`verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    pub statements: u64,
    pub archive_entries: u64,
}

/// Reads every object of the backup through: sizes and SHA-256 against the manifest,
/// every statement of the dump checked, every archive entry's type and path checked.
/// Nothing is written.
pub async fn verify(store: &BackupStore, manifest: &Manifest) -> Result<Verified, RestoreError> {
    let db = object(manifest, DATABASE_OBJECT)?;
    let files = object(manifest, FILES_OBJECT)?;
    let (statements, archive_entries) = tokio::try_join!(
        async {
            let d = download(store, db).await?;
            let chunks = d.chunks;
            let scan =
                tokio::task::spawn_blocking(move || scan_dump(chunks, None, |_, _, _| Ok(())))
                    .await
                    .context("the dump check")?
                    .map(|(n, _)| n);
            settle(db, d.digest, scan).await
        },
        async {
            let d = download(store, files).await?;
            let chunks = d.chunks;
            let scan = tokio::task::spawn_blocking(move || scan_archive(chunks, None))
                .await
                .context("the archive check")?;
            settle(files, d.digest, scan).await
        },
    )?;
    Ok(Verified {
        statements,
        archive_entries,
    })
}

fn object<'a>(manifest: &'a Manifest, name: &str) -> Result<&'a ObjectEntry, RestoreError> {
    manifest
        .object(name)
        .ok_or_else(|| refused(format!("{MANIFEST_OBJECT} lists no {name}")))
}

/// Decodes the dump and hands each checked (and, with `rewriter`, rewritten) statement to
/// `each` with its number in the dump and its kind; returns the statements and the string literals rewritten.
fn scan_dump(
    chunks: mpsc::Receiver<Bytes>,
    rewriter: Option<&Rewriter>,
    mut each: impl FnMut(u64, Statement, Vec<u8>) -> Result<(), RestoreError>,
) -> Result<(u64, u64), RestoreError> {
    let damaged =
        |e: &dyn std::fmt::Display| refused(format!("{DATABASE_OBJECT} cannot be read: {e}"));
    let mut input = decoder(chunks).map_err(|e| damaged(&e))?;
    let mut splitter = Splitter::default();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut count, mut rewritten) = (0u64, 0u64);
    loop {
        let n = input.read(&mut buf).map_err(|e| damaged(&e))?;
        if n == 0 {
            break;
        }
        splitter.push(&buf[..n]);
        while let Some(statement) = splitter.next_statement().map_err(|e| damaged(&e))? {
            count += 1;
            let kind = sqlscan::check(&statement).map_err(|e| {
                refused(format!(
                    "{DATABASE_OBJECT}, statement {count}: {e}; nothing was run"
                ))
            })?;
            let statement = match (kind, rewriter) {
                (Statement::Empty, _) => continue,
                (Statement::Insert, Some(r)) => {
                    let (out, n) =
                        sqlscan::rewrite_strings(&statement, r).map_err(|e| damaged(&e))?;
                    rewritten += n;
                    out
                }
                _ => statement,
            };
            each(count, kind, statement)?;
        }
    }
    splitter.finish().map_err(|e| damaged(&e))?;
    Ok((count, rewritten))
}

/// Decodes the archive; checks each entry (regular files, folders and symbolic links only,
/// paths inside the folder) and, with `into`, unpacks it there.
fn scan_archive(
    chunks: mpsc::Receiver<Bytes>,
    into: Option<(&Path, bool)>,
) -> Result<u64, RestoreError> {
    let damaged =
        |e: &dyn std::fmt::Display| refused(format!("{FILES_OBJECT} cannot be read: {e}"));
    let input = decoder(chunks).map_err(|e| damaged(&e))?;
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    if let Some((_, owners)) = into {
        archive.set_preserve_ownerships(owners);
    }
    let mut count = 0u64;
    for entry in archive.entries().map_err(|e| damaged(&e))? {
        let mut entry = entry.map_err(|e| damaged(&e))?;
        let path = entry.path().map_err(|e| damaged(&e))?.into_owned();
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if !matches!(kind, T::Regular | T::Directory | T::Symlink) {
            return Err(refused(format!(
                "{FILES_OBJECT}: {} is a {kind:?} entry; only files, folders and links are restored",
                path.display()
            )));
        }
        if path.is_absolute()
            || path.components().any(|c| {
                !matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
        {
            return Err(refused(format!(
                "{FILES_OBJECT}: {} points outside the site's folder",
                path.display()
            )));
        }
        if let Some((root, _)) = into {
            let inside = entry
                .unpack_in(root)
                .with_context(|| format!("writing {}", path.display()))?;
            if !inside {
                return Err(refused(format!(
                    "{FILES_OBJECT}: {} points outside the site's folder",
                    path.display()
                )));
            }
        } else {
            // Read through, so that the zstd checksum at the end is checked.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| damaged(&e))?;
        }
        count += 1;
    }
    // The rest of the stream (tar's end blocks, zstd's checksum).
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| damaged(&e))?;
    Ok(count)
}

/// What [`restore_database`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatabaseRestored {
    pub statements: u64,
    pub strings_rewritten: u64,
    /// Tables that were in the database but not in the backup, dropped.
    pub dropped: Vec<String>,
    /// `INSERT`s run by each of the connections that loaded the rows.
    pub inserts_per_writer: Vec<u64>,
}

/// Connections that load the dump's rows at once (besides the one that runs its
/// definitions and counts the rows at the end).
pub const WRITERS: usize = 4;

/// Replaces the database that `site_db` selects (a connection of the site's own user)
/// with the backup's dump; with `rewriter`, string literals are rewritten (a clone's
/// domain). Tables not in the backup are dropped; every table's row count is compared
/// with the manifest at the end.
///
/// The dump is read and checked statement by statement in one thread ([`sqlscan::check`]
/// on every one, whichever connection runs it); its `INSERT`s are loaded over
/// [`WRITERS`] connections at once, all opened from `site_db` (the same user, the same
/// schema selected), each taking the next statement when it is free. A definition
/// (`DROP TABLE`, `CREATE TABLE`) waits until every row statement before it has run, so
/// the statements of a table always meet the table the dump defined for them; the
/// session settings (`SET`) reach every connection before its next statement. The first
/// statement that fails stops every connection (no further statement is handed out) and
/// is the error returned: the site is then as a restore halfway leaves it, which the
/// saga converges by running the step again or undoes from the pre-restore backup.
pub async fn restore_database(
    store: &BackupStore,
    manifest: &Manifest,
    site_db: Opts,
    rewriter: Option<Rewriter>,
) -> Result<DatabaseRestored, RestoreError> {
    let entry = object(manifest, DATABASE_OBJECT)?;
    let mut conn = Conn::new(site_db.clone())
        .await
        .context("connecting as the site's database user")?;
    let result = apply_dump(&mut conn, &site_db, store, manifest, entry, rewriter).await;
    let _ = conn.disconnect().await;
    result
}

/// What the row connections share: statements handed out but not yet run, the first
/// failure, and a wake-up for whoever waits for them to drain.
#[derive(Default)]
struct Writers {
    pending: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicBool,
    error: std::sync::Mutex<Option<RestoreError>>,
    changed: tokio::sync::Notify,
}

impl Writers {
    fn fail(&self, err: RestoreError) {
        if let Ok(mut first) = self.error.lock()
            && first.is_none()
        {
            *first = Some(err);
        }
        self.failed.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    fn has_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    fn take_error(&self) -> Option<RestoreError> {
        self.error.lock().ok().and_then(|mut e| e.take())
    }

    /// Returns once every statement handed out has run, or one failed.
    async fn drained(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.pending.load(Ordering::SeqCst) == 0 || self.has_failed() {
                return;
            }
            changed.await;
        }
    }
}

/// A row statement for the row connections: its place in the dump and the session
/// settings (`SET`s) read before it.
struct Job {
    statement: Vec<u8>,
    position: u64,
    session: Arc<Vec<Vec<u8>>>,
}

/// Runs the `SET`s of `session` that `conn` has not run yet.
async fn catch_up(
    conn: &mut Conn,
    session: &[Vec<u8>],
    applied: &mut usize,
) -> Result<(), RestoreError> {
    while let Some(set) = session.get(*applied) {
        conn.query_drop(set.as_slice())
            .await
            .context("applying the dump's session settings")?;
        *applied += 1;
    }
    Ok(())
}

/// How many times a row statement is run when the server ends it with a deadlock or a
/// lock wait timeout.
const DEADLOCK_TRIES: u32 = 5;

/// InnoDB's deadlock (1213) and lock wait timeout (1205): the statement was rolled back.
fn is_lock_conflict(e: &mysql_async::Error) -> bool {
    matches!(e, mysql_async::Error::Server(s) if s.code == 1213 || s.code == 1205)
}

/// One row connection: takes the next statement when free, until the queue ends or a
/// connection fails. Returns the `INSERT`s it ran.
async fn writer(
    mut conn: Conn,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Job>>>,
    shared: Arc<Writers>,
) -> u64 {
    let mut applied = 0usize;
    let mut ran = 0u64;
    loop {
        let job = queue.lock().await.recv().await;
        let Some(job) = job else { break };
        if shared.has_failed() {
            break;
        }
        let run = async {
            catch_up(&mut conn, &job.session, &mut applied).await?;
            let mut tries = 0u32;
            loop {
                tries += 1;
                match conn.query_drop(job.statement.as_slice()).await {
                    Ok(()) => break Ok(()),
                    // Rows of one table loaded side by side can deadlock on InnoDB's gap
                    // locks (seen in CI re-running a restore over its own rows): the
                    // server rolled the statement back (each runs on its own, autocommit),
                    // so it is run again, as the error asks.
                    Err(e) if tries < DEADLOCK_TRIES && is_lock_conflict(&e) => {
                        tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(tries)))
                            .await;
                    }
                    Err(e) => {
                        break Err(RestoreError::Failed(anyhow::Error::new(e).context(
                            format!("running statement {} of the dump", job.position),
                        )));
                    }
                }
            }
        };
        match run.await {
            Ok(()) => {
                ran += 1;
                shared.pending.fetch_sub(1, Ordering::SeqCst);
                shared.changed.notify_waiters();
            }
            Err(err) => {
                shared.fail(err);
                break;
            }
        }
    }
    let _ = conn.disconnect().await;
    ran
}

async fn apply_dump(
    conn: &mut Conn,
    site_db: &Opts,
    store: &BackupStore,
    manifest: &Manifest,
    entry: &ObjectEntry,
    rewriter: Option<Rewriter>,
) -> Result<DatabaseRestored, RestoreError> {
    let d = download(store, entry).await?;
    conn.query_drop("SET FOREIGN_KEY_CHECKS = 0")
        .await
        .context("preparing the session")?;
    // Replace, not merge: a table the site made after the backup goes.
    let present: Vec<String> = conn
        .query(
            "SELECT TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'",
        )
        .await
        .context("listing the site's tables")?;
    let mut dropped = Vec::new();
    for table in present {
        if !manifest.database.tables.iter().any(|t| t.name == table) {
            conn.query_drop(format!(
                "DROP TABLE IF EXISTS `{}`",
                table.replace('`', "``")
            ))
            .await
            .with_context(|| format!("dropping table {table}"))?;
            dropped.push(table);
        }
    }
    let mut connections = Vec::with_capacity(WRITERS);
    for _ in 0..WRITERS {
        let opened = async {
            let mut c = Conn::new(site_db.clone()).await?;
            c.query_drop("SET FOREIGN_KEY_CHECKS = 0").await?;
            Ok::<_, mysql_async::Error>(c)
        };
        match opened.await {
            Ok(c) => connections.push(c),
            Err(e) => {
                for c in connections {
                    let _ = c.disconnect().await;
                }
                return Err(RestoreError::Failed(
                    anyhow::Error::new(e).context("connecting as the site's database user"),
                ));
            }
        }
    }

    let (tx, mut rx) = mpsc::channel::<(u64, Statement, Vec<u8>)>(QUEUED_STATEMENTS);
    let chunks = d.chunks;
    let scan = tokio::task::spawn_blocking(move || {
        scan_dump(chunks, rewriter.as_ref(), |position, kind, statement| {
            tx.blocking_send((position, kind, statement)).map_err(|_| {
                RestoreError::Failed(anyhow!("the database stopped taking statements"))
            })
        })
    });
    let shared = Arc::new(Writers::default());
    let (jobs, queue) = mpsc::channel::<Job>(WRITERS);
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|c| tokio::spawn(writer(c, queue.clone(), shared.clone())))
        .collect();
    // The writers hold the queue alone: once they all stopped, a hand-out fails.
    drop(queue);

    let mut session: Arc<Vec<Vec<u8>>> = Arc::new(Vec::new());
    let mut applied = 0usize;
    while let Some((position, kind, statement)) = rx.recv().await {
        if shared.has_failed() {
            break;
        }
        match kind {
            Statement::Insert => {
                shared.pending.fetch_add(1, Ordering::SeqCst);
                let job = Job {
                    statement,
                    position,
                    session: session.clone(),
                };
                // Closed only when every writer stopped, which only a failure does.
                if jobs.send(job).await.is_err() {
                    break;
                }
            }
            Statement::Set => Arc::make_mut(&mut session).push(statement),
            _ => {
                shared.drained().await;
                if shared.has_failed() {
                    break;
                }
                let run = async {
                    catch_up(conn, &session, &mut applied).await?;
                    conn.query_drop(statement).await.map_err(|e| {
                        RestoreError::Failed(
                            anyhow::Error::new(e)
                                .context(format!("running statement {position} of the dump")),
                        )
                    })
                };
                if let Err(err) = run.await {
                    shared.fail(err);
                    break;
                }
            }
        }
    }
    drop(rx);
    drop(jobs);
    let mut inserts_per_writer = Vec::with_capacity(tasks.len());
    for task in tasks {
        inserts_per_writer.push(task.await.context("a restore connection")?);
    }
    let scanned = scan.await.context("the dump reader")?;
    // The database's error first: the reader then only saw its channel close.
    let scanned = match (shared.take_error(), scanned) {
        (Some(e), _) => Err(e),
        (None, s) => s,
    };
    let (statements, strings_rewritten) = settle(entry, d.digest, scanned).await?;

    for table in &manifest.database.tables {
        let rows: Option<u64> = conn
            .query_first(format!(
                "SELECT COUNT(*) FROM `{}`",
                table.name.replace('`', "``")
            ))
            .await
            .with_context(|| format!("counting the rows of {}", table.name))?;
        if rows != Some(table.rows) {
            return Err(refused(format!(
                "table {} has {} rows after the restore; the manifest says {}",
                table.name,
                rows.unwrap_or(0),
                table.rows
            )));
        }
    }
    conn.query_drop("SET FOREIGN_KEY_CHECKS = 1")
        .await
        .context("ending the session")?;
    Ok(DatabaseRestored {
        statements,
        strings_rewritten,
        dropped,
        inserts_per_writer,
    })
}

/// Replaces the content of `root` (the site's folder) with the backup's archive: the
/// folder is emptied, then the archive unpacked into it. Owners are kept when the
/// platform runs as root (the site's files belong to uid 33).
pub async fn restore_files(
    store: &BackupStore,
    manifest: &Manifest,
    root: PathBuf,
) -> Result<u64, RestoreError> {
    let entry = object(manifest, FILES_OBJECT)?;
    let d = download(store, entry).await?;
    let chunks = d.chunks;
    // Only root may give files to another owner (`/proc/self` belongs to the effective uid).
    let owners = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    };
    let unpacked = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&root)
            .with_context(|| format!("creating the site's folder {}", root.display()))?;
        empty_folder(&root)?;
        scan_archive(chunks, Some((&root, owners)))
    })
    .await
    .context("the unpacking thread")?;
    settle(entry, d.digest, unpacked).await
}

/// Removes everything inside `root` (not `root` itself); links are removed, never followed.
fn empty_folder(root: &Path) -> Result<(), RestoreError> {
    let entries = std::fs::read_dir(root)
        .with_context(|| format!("listing the site's folder {}", root.display()))?;
    for entry in entries {
        let entry = entry.context("listing the site's folder")?;
        let path = entry.path();
        let kind = entry.file_type().context("reading an entry's type")?;
        let removed = if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(RestoreError::Failed(
                    anyhow::Error::new(e).context(format!("removing {}", path.display())),
                ));
            }
        }
    }
    Ok(())
}

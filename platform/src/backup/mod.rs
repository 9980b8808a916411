//! Backups of a site: its database and its wp-content, streamed to S3 by the platform.
//!
//! The platform runs backups itself (never the site's container, which holds no key to
//! the bucket: docs/security.md, "Backups"). A backup is:
//!
//! - `database.sql.zst`: every table of the site's schema, read inside one consistent
//!   snapshot ([`dump`]), as SQL that names no schema;
//! - `wp-content.tar.zst`: the site's directory on the storage mount as a tar stream
//!   ([`files`]);
//! - `manifest.json`: sizes and SHA-256 of both objects, the tables with their row
//!   counts, versions, start and end times, the plan.
//!
//! All three live under `<tenant>/<site>/<backup-id>/` in the `[backends.s3]` bucket. The
//! two data objects stream through zstd into S3 multipart uploads, in parallel: no
//! temporary file, and memory bounded by the part size whatever the site's size (about
//! `3 × part_size` per object plus a few MiB of buffers). [`run`] returns only after
//! every object and the manifest were written and read back with the sizes and checksums
//! the manifest records; only then may a backup be called `complete`. On any error it
//! aborts the unfinished uploads and removes what it wrote. Each upload is journaled
//! ([`Hooks::journal`]) before its first part, so the uploads of a runner killed
//! mid-backup are aborted by [`BackupStore::remove_prefix`] when the backup is taken up
//! again.

pub mod drill;
pub mod drill_job;
pub mod dump;
pub mod files;
pub mod job;
pub mod restore;
pub mod restore_job;
pub mod schedule;
pub mod serialized;
pub mod sqlscan;
pub mod store;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

pub use dump::{DumpSummary, TableRows};
pub use files::FilesSummary;
pub use store::BackupStore;

use crate::domain::Id;

/// The manifest's format; a restore refuses formats it does not know.
pub const MANIFEST_FORMAT: u32 = 1;
pub const DATABASE_OBJECT: &str = "database.sql.zst";
pub const FILES_OBJECT: &str = "wp-content.tar.zst";
pub const MANIFEST_OBJECT: &str = "manifest.json";

/// zstd level: 3 is zstd's default, fast enough to keep up with a database read.
const ZSTD_LEVEL: i32 = 3;

/// What to back up and where it is read from.
#[derive(Debug, Clone)]
pub struct BackupSpec {
    pub backup_id: Id,
    pub tenant_id: Id,
    pub site_id: Id,
    pub plan: String,
    /// A connection to the database server (the platform's account, or the site's own
    /// through the router); the dump reads only `schema`.
    pub db: mysql_async::Opts,
    pub schema: String,
    /// The site's wp-content: its directory on the platform's storage mount.
    pub files_root: std::path::PathBuf,
    /// Versions as the site's agent last reported them (`None`: not known).
    pub wordpress_version: Option<String>,
    pub php_version: Option<String>,
}

impl BackupSpec {
    /// `<tenant>/<site>/<backup-id>/`: built from generated ids only.
    pub fn prefix(&self) -> String {
        backup_prefix(&self.tenant_id, &self.site_id, &self.backup_id)
    }
}

pub fn backup_prefix(tenant: &Id, site: &Id, backup: &Id) -> String {
    format!("{tenant}/{site}/{backup}/")
}

/// An object of the backup as written and read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectEntry {
    /// The object's name inside the backup's folder.
    pub name: String,
    pub key: String,
    /// Bytes stored (compressed).
    pub size: u64,
    /// SHA-256 of the bytes stored, hex.
    pub sha256: String,
    /// Bytes before compression.
    pub uncompressed_size: u64,
    pub compression: String,
    pub parts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub wordpress: Option<String>,
    pub php: Option<String>,
    pub database: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseSection {
    pub schema: String,
    pub tables: Vec<TableRows>,
    pub skipped: Vec<String>,
    /// Connections that read the tables inside the one snapshot (absent in backups taken
    /// before the dump read in parallel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readers: Option<u32>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub backup_id: Id,
    pub tenant_id: Id,
    pub site_id: Id,
    pub plan: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub versions: Versions,
    pub database: DatabaseSection,
    pub files: FilesSummary,
    pub objects: Vec<ObjectEntry>,
}

impl Manifest {
    pub fn object(&self, name: &str) -> Option<&ObjectEntry> {
        self.objects.iter().find(|o| o.name == name)
    }

    /// Bytes stored for the backup (its objects, not the manifest).
    pub fn stored_bytes(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// A finished, verified backup.
#[derive(Debug, Clone)]
pub struct Completed {
    pub manifest: Manifest,
    pub manifest_key: String,
    pub manifest_size: u64,
    pub manifest_sha256: String,
}

/// What a running backup reports (for progress and for tests that stop it midway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    PartUploaded { key: String, part: i32 },
    ObjectWritten { key: String },
    Verified { key: String },
}

/// Records a multipart upload (`key`, `upload id`) durably before its first part is sent.
pub type UploadJournal = std::sync::Arc<
    dyn Fn(String, String) -> futures::future::BoxFuture<'static, anyhow::Result<()>> + Send + Sync,
>;

/// What the caller hears while a backup runs.
#[derive(Clone, Default)]
pub struct Hooks {
    pub progress: Option<Progress>,
    pub journal: Option<UploadJournal>,
}

/// Where events go; a closed receiver is ignored.
#[derive(Debug, Clone)]
pub struct Progress(mpsc::UnboundedSender<Event>);

impl Progress {
    pub fn channel() -> (Self, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    fn send(&self, event: Event) {
        let _ = self.0.send(event);
    }
}

/// Runs the backup `spec` into `store`: both streams, the manifest, the read-back.
///
/// On error every unfinished multipart upload is aborted and the backup's objects are
/// removed, so a failed backup leaves nothing that could pass for one.
pub async fn run(
    store: &BackupStore,
    spec: &BackupSpec,
    hooks: Hooks,
) -> anyhow::Result<Completed> {
    let uploads = store::OpenUploads::default();
    let result = write_and_verify(store, spec, &uploads, &hooks).await;
    if let Err(err) = &result {
        tracing::warn!(
            backup = %spec.backup_id,
            site = %spec.site_id,
            error = format!("{err:#}"),
            "backup failed; removing what it wrote"
        );
        if let Err(e) = store.remove_prefix(&spec.prefix(), &uploads.take()).await {
            tracing::warn!(backup = %spec.backup_id, error = format!("{e:#}"), "removing a failed backup's objects failed");
        }
    }
    result
}

async fn write_and_verify(
    store: &BackupStore,
    spec: &BackupSpec,
    uploads: &store::OpenUploads,
    hooks: &Hooks,
) -> anyhow::Result<Completed> {
    let progress = &hooks.progress;
    let prefix = spec.prefix();
    let started_at = Utc::now();

    let database = async {
        let key = format!("{prefix}{DATABASE_OBJECT}");
        let object = store.create(key, uploads, hooks).await?;
        let mut out = store::CompressedWriter::new(object, ZSTD_LEVEL)?;
        let summary = match dump::dump_database(spec.db.clone(), &spec.schema, &mut out).await {
            Ok(summary) => summary,
            Err(err) => {
                out.settle().await;
                return Err(err);
            }
        };
        let (written, raw) = out.finish().await?;
        read_back(store, DATABASE_OBJECT, &written).await?;
        anyhow::Ok((summary, written, raw))
    };
    let files = async {
        let key = format!("{prefix}{FILES_OBJECT}");
        let object = store.create(key, uploads, hooks).await?;
        let mut out = store::CompressedWriter::new(object, ZSTD_LEVEL)?;
        let (mut chunks, walker) = files::start_archive(spec.files_root.clone());
        while let Some(chunk) = chunks.recv().await {
            if let Err(err) = out.write(&chunk).await {
                out.settle().await;
                return Err(err);
            }
        }
        let summary = walker.await.context("the archiving thread")??;
        let (written, raw) = out.finish().await?;
        read_back(store, FILES_OBJECT, &written).await?;
        anyhow::Ok((summary, written, raw))
    };
    // Both streams run to their end even when one fails: a stream dropped mid-request
    // could still create an upload or land a part after the clean-up aborted the rest.
    // Each object is read back as soon as it is whole, while the other may still be
    // streaming: a manifest is only ever written for objects that are there, whole.
    let (database, files) = tokio::join!(database, files);
    let ((dump, db_object, db_raw), (files, files_object, files_raw)) = (database?, files?);

    let entry = |name: &str, o: store::WrittenObject, raw: u64| ObjectEntry {
        name: name.to_owned(),
        key: o.key,
        size: o.size,
        sha256: o.sha256,
        uncompressed_size: raw,
        compression: "zstd".to_owned(),
        parts: o.parts,
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        backup_id: spec.backup_id.clone(),
        tenant_id: spec.tenant_id.clone(),
        site_id: spec.site_id.clone(),
        plan: spec.plan.clone(),
        started_at,
        finished_at: Utc::now(),
        versions: Versions {
            wordpress: spec.wordpress_version.clone(),
            php: spec.php_version.clone(),
            database: dump.server_version.clone(),
        },
        database: DatabaseSection {
            schema: spec.schema.clone(),
            tables: dump.tables,
            skipped: dump.skipped,
            readers: Some(dump.readers),
        },
        files,
        objects: vec![
            entry(DATABASE_OBJECT, db_object, db_raw),
            entry(FILES_OBJECT, files_object, files_raw),
        ],
    };
    // Every object was read back above, before the manifest exists.
    if let Some(p) = &progress {
        for o in &manifest.objects {
            p.send(Event::ObjectWritten { key: o.key.clone() });
        }
        for o in &manifest.objects {
            p.send(Event::Verified { key: o.key.clone() });
        }
    }
    let body = serde_json::to_vec_pretty(&manifest).context("encoding the manifest")?;
    let manifest_sha256 = hex::encode(Sha256::digest(&body));
    let manifest_key = format!("{prefix}{MANIFEST_OBJECT}");
    store
        .put(&manifest_key, body.clone(), "application/json")
        .await?;
    let back = store.get(&manifest_key).await?;
    if back != body {
        bail!("the manifest read back differs from the one written");
    }
    if let Some(p) = &progress {
        p.send(Event::Verified {
            key: manifest_key.clone(),
        });
    }
    Ok(Completed {
        manifest,
        manifest_key,
        manifest_size: body.len() as u64,
        manifest_sha256,
    })
}

/// Reads `written` back from the store whole: its size and SHA-256 must be those it was
/// written with.
async fn read_back(
    store: &BackupStore,
    name: &str,
    written: &store::WrittenObject,
) -> anyhow::Result<()> {
    let (size, sha256) = store.digest(&written.key).await?;
    if size != written.size || sha256 != written.sha256 {
        bail!(
            "{name} read back as {size} bytes (sha256 {sha256}), written as {} bytes (sha256 {})",
            written.size,
            written.sha256
        );
    }
    Ok(())
}

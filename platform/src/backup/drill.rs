//! A drill: a backup restored for real, but into a scratch database and a scratch folder,
//! and compared with its manifest; then the scratch is dropped.
//!
//! It runs the very code a restore runs ([`restore::restore_database`],
//! [`restore::restore_files`]), so a drill that passes says the backup restores, not only
//! that its bytes are intact: every object's size and SHA-256 against the manifest, every
//! statement of the dump checked and run, every table's row count compared, every archive
//! entry unpacked, and the files and their bytes counted against the manifest.
//!
//! The scratch database is `drill_<backup-id>` (generated ids only), created by the
//! platform's account and written through a connection that selects it; the dump's
//! statements pass [`super::sqlscan::check`] first, so none can name another schema. Its
//! name is the same on every attempt: a drill taken up again after a crash drops what the
//! previous attempt left, and no drill of one backup runs twice at once (the API and the
//! scheduler enqueue one only when none is under way).

use std::path::{Path, PathBuf};

use anyhow::Context;
use mysql_async::{Conn, Opts, OptsBuilder, prelude::Queryable};

use super::{
    BackupStore, FILES_OBJECT, MANIFEST_OBJECT,
    restore::{self, RestoreError},
};
use crate::domain::Id;

/// Where a drill restores to.
#[derive(Debug, Clone)]
pub struct Scratch {
    pub schema: String,
    pub dir: PathBuf,
}

impl Scratch {
    /// `drill_<backup>` and `<root>/drill_<backup>`.
    pub fn for_backup(backup: &Id, root: &Path) -> Self {
        let name = format!("drill_{backup}");
        Self {
            dir: root.join(&name),
            schema: name,
        }
    }
}

/// What a passing drill restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrillReport {
    pub tables: usize,
    pub rows: u64,
    pub statements: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Restores the backup under `prefix` into `scratch` through the platform's account
/// `admin`, compares it with the manifest (`manifest_sha256`: what the backup's record
/// says the manifest is), then drops the scratch, whatever the outcome.
///
/// [`RestoreError::Refused`] names what does not match (the object, the table, the files);
/// [`RestoreError::Failed`] is the store, the database or the disk failing.
pub async fn run(
    store: &BackupStore,
    prefix: &str,
    manifest_sha256: Option<&str>,
    admin: Opts,
    scratch: &Scratch,
) -> Result<DrillReport, RestoreError> {
    let result = restore_into(store, prefix, manifest_sha256, admin.clone(), scratch).await;
    let dropped = drop_scratch(admin, scratch).await;
    match (result, dropped) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(RestoreError::Failed(e)),
        (Ok(report), Ok(())) => Ok(report),
    }
}

fn quoted(schema: &str) -> String {
    format!("`{}`", schema.replace('`', "``"))
}

async fn admin_conn(admin: Opts) -> anyhow::Result<Conn> {
    Conn::new(admin)
        .await
        .context("connecting to the database server")
}

/// Drops the scratch database and removes the scratch folder ("already gone" is success).
pub async fn drop_scratch(admin: Opts, scratch: &Scratch) -> anyhow::Result<()> {
    let mut conn = admin_conn(admin).await?;
    let dropped = conn
        .query_drop(format!(
            "DROP DATABASE IF EXISTS {}",
            quoted(&scratch.schema)
        ))
        .await
        .context("dropping the drill's scratch database");
    let _ = conn.disconnect().await;
    dropped?;
    let dir = scratch.dir.clone();
    tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow::Error::new(e).context(format!("removing {}", dir.display()))),
    })
    .await
    .context("the clean-up thread")?
}

async fn restore_into(
    store: &BackupStore,
    prefix: &str,
    manifest_sha256: Option<&str>,
    admin: Opts,
    scratch: &Scratch,
) -> Result<DrillReport, RestoreError> {
    let manifest = restore::read_manifest(store, prefix, manifest_sha256).await?;
    // A fresh scratch: what an earlier, interrupted attempt left is dropped first.
    drop_scratch(admin.clone(), scratch).await?;
    let mut conn = admin_conn(admin.clone()).await?;
    let created = conn
        .query_drop(format!(
            "CREATE DATABASE {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
            quoted(&scratch.schema)
        ))
        .await
        .context("creating the drill's scratch database");
    let _ = conn.disconnect().await;
    created?;
    let scratch_db: Opts = OptsBuilder::from_opts(admin)
        .db_name(Some(scratch.schema.clone()))
        .into();

    // Both at once, each to its end (a future dropped midway could leave a thread
    // unpacking into a folder being removed).
    let (database, files) = tokio::join!(
        restore::restore_database(store, &manifest, scratch_db, None),
        restore::restore_files(store, &manifest, scratch.dir.clone()),
    );
    let database = database?;
    files?;

    let dir = scratch.dir.clone();
    let (files, bytes) = tokio::task::spawn_blocking(move || count_files(&dir))
        .await
        .context("the counting thread")??;
    let expected = &manifest.files;
    if files != expected.files || bytes != expected.bytes {
        return Err(RestoreError::Refused(format!(
            "{FILES_OBJECT} unpacked into {files} files of {bytes} bytes; \
             {MANIFEST_OBJECT} says {} files of {} bytes",
            expected.files, expected.bytes
        )));
    }
    Ok(DrillReport {
        tables: manifest.database.tables.len(),
        rows: manifest.database.tables.iter().map(|t| t.rows).sum(),
        statements: database.statements,
        files,
        bytes,
    })
}

/// Regular files under `root` and the bytes of their content (links not followed).
fn count_files(root: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut files, mut bytes) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))?
        {
            let entry = entry.context("listing the scratch folder")?;
            let kind = entry.file_type().context("reading an entry's type")?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files += 1;
                bytes += entry.metadata().context("reading a file's size")?.len();
            }
        }
    }
    Ok((files, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_is_named_from_the_backup_id_only() {
        let id = Id::generate();
        let s = Scratch::for_backup(&id, Path::new("/var/tmp/drills"));
        assert_eq!(s.schema, format!("drill_{id}"));
        assert_eq!(
            s.dir,
            Path::new("/var/tmp/drills").join(format!("drill_{id}"))
        );
    }

    #[test]
    fn files_and_bytes_are_counted_without_following_links() -> anyhow::Result<()> {
        let root = tempfile::tempdir()?;
        std::fs::create_dir_all(root.path().join("a/b"))?;
        std::fs::write(root.path().join("a/one"), b"12345")?;
        std::fs::write(root.path().join("a/b/two"), b"67")?;
        std::os::unix::fs::symlink("/etc", root.path().join("link"))?;
        assert_eq!(count_files(root.path())?, (2, 7));
        Ok(())
    }
}

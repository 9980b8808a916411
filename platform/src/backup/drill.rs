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
//! platform's account together with an account of the same name, `drill_<backup-id>`@`%`,
//! with a generated password and `ALL` on the scratch schema only ([`prepare`]). The dump
//! is written through that account with the scratch selected, exactly as a restore writes
//! through the site's own user: its statements pass [`super::sqlscan::check`] first, so
//! none can name another schema, and one that slipped through would have no rights on
//! any. The account is dropped with the scratch ([`drop_scratch`]); its password lives
//! only in the connection options and is never logged. The names are the same on every
//! attempt: a drill taken up again after a crash drops what the previous attempt left
//! (schema, account and folder), and no drill of one backup runs twice at once (the API
//! and the scheduler enqueue one only when none is under way).

use std::path::{Path, PathBuf};

use anyhow::Context;
use backends::ids::SitePassword;
use mysql_async::{Conn, Opts, OptsBuilder, prelude::Queryable};

use super::{
    BackupStore, FILES_OBJECT, MANIFEST_OBJECT,
    restore::{self, RestoreError},
};
use crate::domain::Id;

/// Where a drill restores to.
#[derive(Debug, Clone)]
pub struct Scratch {
    /// The scratch schema, and the name of the account that writes it.
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

    /// `'drill_<backup>'@'%'`: the account, as statements name it (generated ids only).
    fn account(&self) -> String {
        format!("'{}'@'%'", self.schema)
    }

    /// `` `drill\_<backup>` ``: the schema in a database-level `GRANT`, where `_` is a
    /// wildcard (unescaped, the grant would match `drillX<backup>` too).
    fn grant_ident(&self) -> String {
        format!("`{}`", self.schema.replace('_', "\\_"))
    }
}

/// The scratch's own account, ready: a connection as it selects the scratch schema.
pub struct ScratchAccount {
    /// Connects as `drill_<backup>` with the scratch selected (holds the password).
    pub opts: Opts,
    /// `CURRENT_USER()` as the server saw the account's first connection.
    pub current_user: String,
}

impl std::fmt::Debug for ScratchAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchAccount")
            .field("current_user", &self.current_user)
            .finish_non_exhaustive()
    }
}

/// What a passing drill restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrillReport {
    /// The account the dump was written through (`drill_<backup>@%`).
    pub account: String,
    pub tables: usize,
    pub rows: u64,
    pub statements: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Restores the backup under `prefix` into `scratch`, compares it with the manifest (`manifest_sha256`: what the backup's record
/// says the manifest is), then drops the scratch, whatever the outcome. `admin` (the
/// platform's account) only creates and drops the scratch and its account; the dump is
/// written through the scratch's own account ([`prepare`]).
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

/// Creates the scratch schema and its account (a fresh password each time, `ALL` on the
/// scratch schema and nothing else), after dropping what an earlier attempt left; checks
/// that the account connects. The password is bound into session variables that the
/// server quotes itself (MariaDB takes no bound parameter in `CREATE USER`), cleared
/// right after, and otherwise only in the returned options.
pub async fn prepare(admin: Opts, scratch: &Scratch) -> anyhow::Result<ScratchAccount> {
    drop_scratch(admin.clone(), scratch).await?;
    let password = SitePassword::generate();
    let mut conn = admin_conn(admin.clone()).await?;
    let created = create_on(&mut conn, scratch, &password).await;
    let _ = conn.disconnect().await;
    created?;
    let opts: Opts = OptsBuilder::from_opts(admin)
        .user(Some(scratch.schema.clone()))
        .pass(Some(password.expose().to_owned()))
        .db_name(Some(scratch.schema.clone()))
        .into();
    let mut conn = Conn::new(opts.clone())
        .await
        .context("connecting as the drill's scratch account")?;
    let current_user: Option<String> = conn
        .query_first("SELECT CURRENT_USER()")
        .await
        .context("reading the scratch account's name")?;
    let _ = conn.disconnect().await;
    Ok(ScratchAccount {
        opts,
        current_user: current_user.unwrap_or_default(),
    })
}

async fn create_on(
    conn: &mut Conn,
    scratch: &Scratch,
    password: &SitePassword,
) -> anyhow::Result<()> {
    conn.query_drop(format!(
        "CREATE DATABASE {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        quoted(&scratch.schema)
    ))
    .await
    .context("creating the drill's scratch database")?;
    conn.exec_drop(
        "SET @pd_u = ?, @pd_pw = ?",
        (scratch.schema.as_str(), password.expose()),
    )
    .await
    .context("binding the scratch account's credentials")?;
    let created = conn
        .query_drop(
            "EXECUTE IMMEDIATE CONCAT('CREATE USER ', QUOTE(@pd_u), '@''%'' IDENTIFIED BY ', QUOTE(@pd_pw))",
        )
        .await
        .context("creating the drill's scratch account");
    let cleared = conn
        .query_drop("SET @pd_u = NULL, @pd_pw = NULL")
        .await
        .context("clearing the scratch account's credentials");
    created?;
    cleared?;
    conn.query_drop(format!(
        "GRANT ALL PRIVILEGES ON {}.* TO {}",
        scratch.grant_ident(),
        scratch.account()
    ))
    .await
    .context("granting the scratch account its schema")?;
    Ok(())
}

/// Drops the scratch account (its sessions ended first: a dropped account's open
/// sessions keep their rights), the scratch database and the scratch folder ("already
/// gone" is success).
pub async fn drop_scratch(admin: Opts, scratch: &Scratch) -> anyhow::Result<()> {
    let mut conn = admin_conn(admin).await?;
    let dropped = drop_on(&mut conn, scratch).await;
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

async fn drop_on(conn: &mut Conn, scratch: &Scratch) -> anyhow::Result<()> {
    let sessions: Vec<u64> = conn
        .exec(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?",
            (scratch.schema.as_str(),),
        )
        .await
        .context("listing the scratch account's sessions")?;
    for session in sessions {
        // One that ended meanwhile is fine (1094, unknown thread id).
        let _ = conn.query_drop(format!("KILL CONNECTION {session}")).await;
    }
    conn.query_drop(format!("DROP USER IF EXISTS {}", scratch.account()))
        .await
        .context("dropping the drill's scratch account")?;
    conn.query_drop(format!(
        "DROP DATABASE IF EXISTS {}",
        quoted(&scratch.schema)
    ))
    .await
    .context("dropping the drill's scratch database")
}

async fn restore_into(
    store: &BackupStore,
    prefix: &str,
    manifest_sha256: Option<&str>,
    admin: Opts,
    scratch: &Scratch,
) -> Result<DrillReport, RestoreError> {
    let manifest = restore::read_manifest(store, prefix, manifest_sha256).await?;
    // A fresh scratch and account: what an earlier, interrupted attempt left goes first.
    let account = prepare(admin, scratch).await?;

    // Both at once, each to its end (a future dropped midway could leave a thread
    // unpacking into a folder being removed).
    let (database, files) = tokio::join!(
        restore::restore_database(store, &manifest, account.opts.clone(), None),
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
        account: account.current_user,
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
    fn the_scratch_grant_escapes_the_wildcard_in_its_schema_name() {
        let id = Id::generate();
        let s = Scratch::for_backup(&id, Path::new("/tmp"));
        assert_eq!(s.grant_ident(), format!("`drill\\_{id}`"));
        assert_eq!(s.account(), format!("'drill_{id}'@'%'"));
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

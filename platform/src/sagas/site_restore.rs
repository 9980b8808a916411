//! `site.restore`: a backup written back into a site — the same site (a restore) or a new
//! site of the same tenant (a clone, whose domain is rewritten in the database). The
//! target is the site; its `restores` row says which backup (`backup/restore_job.rs`).
//!
//! Order matters: the backup is read through and checked (checksums, every statement of
//! the dump) before anything is touched; then the site as it is gets backed up (the way
//! back); then the site is stopped, its database and files replaced, its object-cache
//! keys in Redis deleted (WordPress would otherwise read options and posts cached from the
//! database it replaced), started again and its cached pages banned. A step that fails for good unwinds: the database and files
//! are put back from that pre-restore backup, and the site is started again. A runner
//! killed halfway takes the step up again; each step replaces what is there, so it
//! converges.

use futures::future::BoxFuture;

use super::{
    Outcome, Saga, Step, StepContext, StepResult, Undo, always,
    site_steps::{self as s},
};
use crate::{backup::restore_job as r, states::OperationKind};

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteRestore,
    steps: steps![
        CHECK_BACKUP,
        [
            Step {
                name: "backup_current",
                action: |c| Box::pin(r::backup_current(&c.db, &c.backends, &c.target)),
                undo: Undo::Nothing("the pre-restore backup is kept: it is the way back"),
                when: always,
            },
            Step {
                name: "stop_site",
                action: s::scale_down,
                undo: Undo::Reverse(s::ensure_service),
                when: |b| b.swarm.is_some(),
            },
        ],
        fill_from_backup(
            Undo::Reverse(|c| Box::pin(r::put_back_database(&c.db, &c.backends, &c.target))),
            Undo::Reverse(|c| Box::pin(r::put_back_files(&c.db, &c.backends, &c.target))),
        ),
        [
            Step {
                name: "start_site",
                action: s::ensure_service,
                undo: Undo::Nothing("the site runs again whichever way the restore ends"),
                when: |b| b.swarm.is_some(),
            },
            BAN_CACHE,
        ],
    ],
    finish,
};

/// Why the steps that only read have no undo.
const READS_ONLY: &str = "it only reads; nothing to take back";

/// The site waited for and its backup read through and checked, before anything is
/// touched (a restore's first steps and an undelete's, once the site is recorded).
pub(super) const CHECK_BACKUP: [Step; 2] = [
    Step {
        name: "wait_for_site",
        action: |c| Box::pin(r::wait_for_site(&c.db, &c.target)),
        undo: Undo::Nothing(READS_ONLY),
        when: always,
    },
    Step {
        name: "verify_backup",
        action: |c| Box::pin(r::verify_backup(&c.db, &c.backends, &c.target)),
        undo: Undo::Nothing(READS_ONLY),
        when: always,
    },
];

/// The site's database and files replaced by the backup's, and its object-cache keys
/// deleted. `database` and `files` take the first two back: a restore puts back the
/// pre-restore backup, an undelete leaves it to the undo of the resource that was filled.
pub(super) const fn fill_from_backup(database: Undo, files: Undo) -> [Step; 3] {
    [
        Step {
            name: "restore_database",
            action: |c| Box::pin(r::restore_database(&c.db, &c.backends, &c.target)),
            undo: database,
            when: always,
        },
        Step {
            name: "restore_files",
            action: |c| Box::pin(r::restore_files(&c.db, &c.backends, &c.target)),
            undo: files,
            when: always,
        },
        Step {
            name: "flush_object_cache",
            action: s::flush_object_cache,
            undo: Undo::Nothing("emptying the object cache only makes WordPress read the database"),
            when: |b| b.redis.is_some(),
        },
    ]
}

/// The site's cached pages banned at the edge (a restore's last step and an undelete's).
pub(super) const BAN_CACHE: Step = Step {
    name: "ban_cache",
    action: s::ban_hosts,
    undo: Undo::Nothing("a ban only empties the cache; the pages are fetched again"),
    when: |b| b.varnish.is_some(),
};

fn finish(c: &StepContext, kind: OperationKind, outcome: Outcome) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        r::on_finish(&c.db, &c.target, outcome == Outcome::Succeeded).await?;
        s::finish(c, kind, outcome).await
    })
}

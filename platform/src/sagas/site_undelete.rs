//! `site.undelete`: a deleted site brought back under its own id, with its domains, from
//! one of its complete backups (its final one, usually). The request
//! (`app::restores::restore` on a `deleted` site) gave the site its domains back and made
//! it `provisioning`, in one transaction with the operation and its `restores` row.
//!
//! The saga is a create's (one step per resource, each `ensure_*`, each with its undo)
//! with the restore's steps between the resources and the service, joined from the lists
//! those sagas are made of (`site_create`, `site_restore`): the backup is checked before
//! anything is made; the database and folder are filled from the backup before the site's
//! service starts, so WordPress first runs on the restored site, never on an empty
//! database. A step that fails for good unwinds every step that ran: every resource made
//! is removed and the domains freed again, and the site is `deleted` as it was (its
//! backups untouched, `deleted_at` kept: the final backup's retention still counts from
//! the delete; the aliases it kept before the request kept again, those another site took
//! meanwhile included, see [`RECORD_DELETED_SITE`]). A runner killed halfway takes the
//! step up again; each converges.

use futures::future::BoxFuture;

use super::{
    Outcome, Saga, Step, StepContext, StepResult, Undo, always,
    site_create::{PROVISION, SERVE, record_site},
    site_restore::{BAN_CACHE, CHECK_BACKUP, fill_from_backup},
    site_steps::{self as s},
};
use crate::{backup::restore_job as r, states::OperationKind};

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteUndelete,
    steps: steps![
        [RECORD_DELETED_SITE],
        CHECK_BACKUP,
        PROVISION,
        fill_from_backup(
            Undo::Nothing("the database it filled is dropped by the undo of ensure_database"),
            Undo::Nothing("the folder it filled is removed by the undo of ensure_storage"),
        ),
        SERVE,
        [BAN_CACHE],
    ],
    finish,
};

/// A create's first step (`site_create::RECORD_SITE`) with another undo: a create's frees
/// the domains and keeps the aliases the site held, which for an undelete are only those
/// the request could give back; this one keeps the list the delete had kept.
const RECORD_DELETED_SITE: Step = Step {
    name: "record_site",
    action: record_site,
    undo: Undo::Reverse(s::give_back_domains),
    when: always,
};

fn finish(c: &StepContext, kind: OperationKind, outcome: Outcome) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        r::on_finish(&c.db, &c.target, outcome == Outcome::Succeeded).await?;
        s::finish(c, kind, outcome).await
    })
}

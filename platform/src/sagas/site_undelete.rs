//! `site.undelete`: a deleted site brought back under its own id, with its domains, from
//! one of its complete backups (its final one, usually). The request
//! (`app::restores::restore` on a `deleted` site) gave the site its domains back and made
//! it `provisioning`, in one transaction with the operation and its `restores` row.
//!
//! The saga is a create's (one step per resource, each `ensure_*`, each with its undo)
//! with the restore's steps between the resources and the service: the backup is checked
//! before anything is made; the database and folder are filled from the backup before the
//! site's service starts, so WordPress first runs on the restored site, never on an empty
//! database. A step that fails for good unwinds every step that ran: every resource made
//! is removed and the domains freed again, and the site is `deleted` as it was (its
//! backups untouched, `deleted_at` kept: the final backup's retention still counts from
//! the delete). A runner killed halfway takes the step up again; each converges.

use futures::future::BoxFuture;

use super::{
    Outcome, Saga, Step, StepContext, StepResult, Undo, always,
    site_create::{record_site, reserve_slot},
    site_steps::{self as s},
};
use crate::{backup::restore_job as r, provision::Backends, states::OperationKind};

/// Why the steps that only read have no undo.
const READS_ONLY: &str = "it only reads; nothing to take back";

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteUndelete,
    steps: &[
        Step {
            name: "record_site",
            action: record_site,
            undo: Undo::Reverse(s::release_domains),
            when: always,
        },
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
        Step {
            name: "reserve_slot",
            action: reserve_slot,
            undo: Undo::Reverse(s::release_slot),
            when: always,
        },
        Step {
            name: "generate_secrets",
            action: s::generate_secrets,
            undo: Undo::Reverse(s::forget_secrets),
            when: Backends::any,
        },
        Step {
            name: "ensure_database",
            action: s::ensure_database,
            undo: Undo::Reverse(s::remove_database),
            when: |b| b.galera.is_some(),
        },
        Step {
            name: "ensure_router_user",
            action: s::ensure_router_user,
            undo: Undo::Reverse(s::remove_router_user),
            when: |b| b.router.is_some(),
        },
        Step {
            name: "ensure_cache_user",
            action: s::ensure_cache_user,
            undo: Undo::Reverse(s::remove_cache_user),
            when: |b| b.redis.is_some(),
        },
        Step {
            name: "ensure_storage",
            action: s::ensure_storage,
            undo: Undo::Reverse(s::remove_storage),
            when: |b| b.gluster.is_some(),
        },
        Step {
            name: "restore_database",
            action: |c| Box::pin(r::restore_database(&c.db, &c.backends, &c.target)),
            undo: Undo::Nothing("the database it filled is dropped by the undo of ensure_database"),
            when: always,
        },
        Step {
            name: "restore_files",
            action: |c| Box::pin(r::restore_files(&c.db, &c.backends, &c.target)),
            undo: Undo::Nothing("the folder it filled is removed by the undo of ensure_storage"),
            when: always,
        },
        Step {
            name: "flush_object_cache",
            action: s::flush_object_cache,
            undo: Undo::Nothing("emptying the object cache only makes WordPress read the database"),
            when: |b| b.redis.is_some(),
        },
        Step {
            name: "ensure_swarm_secrets",
            action: s::ensure_swarm_secrets,
            undo: Undo::Reverse(s::remove_swarm_secrets),
            when: |b| b.swarm.is_some(),
        },
        Step {
            name: "ensure_service",
            action: s::create_service,
            undo: Undo::Reverse(s::remove_service),
            when: |b| b.swarm.is_some(),
        },
        Step {
            name: "publish_hosts",
            action: s::publish_hosts,
            undo: Undo::Reverse(s::unpublish_hosts),
            when: |b| b.varnish.is_some(),
        },
        Step {
            name: "ban_cache",
            action: s::ban_hosts,
            undo: Undo::Nothing("a ban only empties the cache; the pages are fetched again"),
            when: |b| b.varnish.is_some(),
        },
    ],
    finish,
};

fn finish(c: &StepContext, kind: OperationKind, outcome: Outcome) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        r::on_finish(&c.db, &c.target, outcome == Outcome::Succeeded).await?;
        s::finish(c, kind, outcome).await
    })
}

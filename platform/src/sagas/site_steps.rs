//! The per-site steps several sagas share: each one resource, over
//! [`Backends`](crate::provision::Backends)'s idempotent operations, and the end of
//! a site saga (the site's state, through `app::site_state`, its only writer).

use backends::{SiteResourceId, varnish::HostState};
use futures::future::BoxFuture;

use super::{Outcome, StepContext, StepError, StepResult};
use crate::{
    app::site_state::{self, SiteEvent},
    states::OperationKind,
};

/// The operation's target as a site id.
pub(super) fn site(c: &StepContext) -> Result<SiteResourceId, StepError> {
    SiteResourceId::parse(&c.target).map_err(StepError::internal)
}

/// A step on the site's id: `site_step!(name, |c, id| future)`.
macro_rules! site_step {
    ($(#[$meta:meta])* $name:ident, |$c:ident, $id:ident| $body:expr) => {
        $(#[$meta])*
        pub(super) fn $name($c: &StepContext) -> BoxFuture<'_, StepResult> {
            Box::pin(async move {
                let $id = site($c)?;
                $body.await
            })
        }
    };
}

site_step!(generate_secrets, |c, id| c
    .backends
    .generate_secrets(&c.db, &id));
site_step!(forget_secrets, |c, id| crate::provision::forget_secrets(
    &c.db, &id
));
site_step!(ensure_database, |c, id| c
    .backends
    .ensure_database(&c.db, &id));
site_step!(remove_database, |c, id| c.backends.remove_database(&id));
site_step!(ensure_router_user, |c, id| c
    .backends
    .ensure_router_user(&c.db, &id));
site_step!(remove_router_user, |c, id| c
    .backends
    .remove_router_user(&id));
site_step!(ensure_cache_user, |c, id| c
    .backends
    .ensure_cache_user(&c.db, &id));
site_step!(remove_cache_user, |c, id| c.backends.remove_cache_user(&id));
site_step!(
    /// The site's object-cache keys deleted (its user kept): nothing cached from a
    /// replaced database is read again.
    flush_object_cache,
    |c, id| c.backends.flush_cache(&id)
);
site_step!(ensure_storage, |c, id| c
    .backends
    .ensure_storage(&c.db, &id));
site_step!(remove_storage, |c, id| c.backends.remove_storage(&id));
site_step!(ensure_swarm_secrets, |c, id| async {
    c.backends.ensure_swarm_secrets(&c.db, &id).await.map(drop)
});
site_step!(remove_swarm_secrets, |c, id| c
    .backends
    .remove_swarm_secrets(&id));
site_step!(
    /// A new site has no service yet: create it without reading around it.
    create_service,
    |c, id| c.backends.ensure_service(&c.db, &id, true, c.control_url())
);
site_step!(
    /// Inspect the service and converge it on its spec.
    ensure_service,
    |c, id| c.backends.ensure_service(&c.db, &id, false, c.control_url())
);
site_step!(scale_down, |c, id| c.backends.scale(&id, 0));
site_step!(scale_up, |c, id| c.backends.scale(&id, 1));
site_step!(remove_service, |c, id| c.backends.remove_service(&id));
site_step!(publish_hosts, |c, id| c
    .backends
    .publish_hosts(&c.db, Some((&id, Some(HostState::Active)))));
site_step!(suspend_hosts, |c, id| c
    .backends
    .publish_hosts(&c.db, Some((&id, Some(HostState::Suspended)))));
site_step!(unpublish_hosts, |c, id| c
    .backends
    .publish_hosts(&c.db, Some((&id, None))));
site_step!(ban_hosts, |c, id| c.backends.ban_hosts(&c.db, &id));

/// Frees the site's slot on its worker.
pub(super) fn release_slot(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        sqlx::query("DELETE FROM placements WHERE site_id = ?")
            .bind(&c.target)
            .execute(&c.db)
            .await?;
        Ok(())
    })
}

/// Frees the site's domains for other sites. The aliases it had stay in its row
/// (`sites.aliases`, read from `domains` in the same transaction), marked as no copy a
/// reader uses (`aliases_generation` NULL: readers then read `domains`, where the site has
/// none; migration m20261206_000017): what an undelete claims back
/// (`app::sites::reclaim_domains`). The primary domain stays in `primary_domain`. The
/// edge's host table is loaded again without the site.
pub(super) fn release_domains(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(free_domains(c, None))
}

/// An undelete's unwind: its domains freed as [`release_domains`] frees them, and the
/// aliases kept as they were before the undelete was requested (`restores.kept_aliases`,
/// migration m20261207_000022), not only those it had reclaimed: the ones another site
/// took meanwhile stay kept, so a later undelete gets back those freed by then. An
/// undelete recorded without the list (by the previous release) keeps what it holds.
pub(super) fn give_back_domains(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        // The undelete's own row: the site's one restore still pending or running (an
        // undelete waits for every other operation of its site; `finish` ends the row
        // after the unwind).
        let kept: Option<Option<String>> = sqlx::query_scalar(
            "SELECT kept_aliases FROM restores WHERE site_id = ? \
             AND state IN ('pending', 'running') ORDER BY seq DESC LIMIT 1",
        )
        .bind(&c.target)
        .fetch_optional(&c.db)
        .await?;
        free_domains(c, kept.flatten()).await
    })
}

/// Deletes the site's `domains` rows and keeps its aliases in `sites.aliases`: `kept`
/// when given, else the aliases it held.
async fn free_domains(c: &StepContext, kept: Option<String>) -> StepResult {
    let mut tx = c.db.begin().await?;
    let held: Vec<(String, bool)> = sqlx::query_as(
        "SELECT domain, is_primary FROM domains WHERE site_id = ? ORDER BY domain FOR UPDATE",
    )
    .bind(&c.target)
    .fetch_all(&mut *tx)
    .await?;
    let aliases = match kept {
        // Written whether or not the site holds domains: the same value each run.
        Some(kept) => Some(kept),
        // A step run again finds no domains left: the aliases kept by the first run stay.
        None if held.is_empty() => None,
        None => Some(
            held.iter()
                .filter(|(_, primary)| !primary)
                .map(|(domain, _)| domain.as_str())
                .collect::<Vec<_>>()
                .join(" "),
        ),
    };
    if !held.is_empty() {
        sqlx::query("DELETE FROM domains WHERE site_id = ?")
            .bind(&c.target)
            .execute(&mut *tx)
            .await?;
    }
    if let Some(aliases) = aliases {
        sqlx::query("UPDATE sites SET aliases = ?, aliases_generation = NULL WHERE id = ?")
            .bind(aliases)
            .bind(&c.target)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    // A create's first step warms the edge's host table, which names the site from its
    // row (`Backends::warm_hosts`), and a later step may have failed before
    // `publish_hosts` (whose undo would have unloaded it): load the table again
    // without the site. Its domains are gone now, so a warm-up reading after this
    // leaves it out too; one that read before loads in an earlier turn.
    c.backends
        .publish_hosts(&c.db, Some((&site(c)?, None)))
        .await
}

/// A step whose effect is the saga's end (the site's state is set by [`finish`]); kept
/// as a step so that the operation shows it.
pub(super) fn at_the_end(_: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async { Ok(()) })
}

/// The end of a site saga of `kind`: the site's state as `app::site_state` decides.
pub(super) fn finish(
    c: &StepContext,
    kind: OperationKind,
    outcome: Outcome,
) -> BoxFuture<'_, StepResult> {
    Box::pin(finish_site(c, kind, outcome))
}

async fn finish_site(c: &StepContext, kind: OperationKind, outcome: Outcome) -> StepResult {
    let agent_ready = if c.backends.agents_report(c.control_url()) {
        let ready: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM agent_reports WHERE site_id = ? AND ready = 1")
                .bind(&c.target)
                .fetch_optional(&c.db)
                .await?;
        ready.is_some()
    } else {
        true
    };
    let mut tx = c.db.begin().await?;
    let event = SiteEvent::Finished {
        kind,
        succeeded: outcome == Outcome::Succeeded,
        agent_ready,
    };
    if let Some(Err(refused)) = site_state::change(&mut tx, &c.target, event).await? {
        return Err(StepError::internal(refused));
    }
    tx.commit().await?;
    Ok(())
}

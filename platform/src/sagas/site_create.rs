//! `site.create`: records, places and provisions a new site, one step per resource. A
//! step that fails for good unwinds every step that ran, in reverse order, and the site
//! ends `failed` with nothing left behind; otherwise it ends `active` (or `provisioning`
//! until its agent reports ready).

use futures::future::BoxFuture;
use sqlx::QueryBuilder;

use super::{
    Saga, Step, StepContext, StepError, StepResult, Undo, always,
    site_steps::{self as s},
};
use crate::{
    app::placement::{NewSite, Placed, place_new_sites},
    group::Turn,
    provision::Backends,
    states::OperationKind,
};

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteCreate,
    steps: steps![[RECORD_SITE], PROVISION, SERVE],
    finish: s::finish,
};

/// The site's row and domains checked ([`record_site`]); an undelete's first step too.
pub(super) const RECORD_SITE: Step = Step {
    name: "record_site",
    action: record_site,
    undo: Undo::Reverse(s::release_domains),
    when: always,
};

/// The site placed on a worker and its resources made, one step each, each undo removing
/// what its step made (a create's and an undelete's).
pub(super) const PROVISION: [Step; 6] = [
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
];

/// The site's service started on its resources and its hosts published at the edge (a
/// create's last steps and an undelete's, once the resources are filled).
pub(super) const SERVE: [Step; 3] = [
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
];

/// The site's row and domains were written with the operation (`app::sites::create`):
/// this step checks they are still there and still `provisioning`.
pub(super) fn record_site(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT s.state, (SELECT COUNT(*) FROM domains d WHERE d.site_id = s.id) FROM sites s WHERE s.id = ?",
        )
        .bind(&c.target)
        .fetch_optional(&c.db)
        .await?;
        match row {
            Some((state, domains)) if state == "provisioning" && domains > 0 => {
                // The edge's host table loads while the other steps run (`publish_hosts`).
                c.backends.warm_hosts(&c.db);
                Ok(())
            }
            Some((state, _)) => Err(StepError::permanent(
                "the site changed while it was being created",
                anyhow::anyhow!("site is {state}, not provisioning"),
            )),
            None => Err(StepError::internal(anyhow::anyhow!(
                "site {} is not recorded",
                c.target
            ))),
        }
    })
}

/// Places the site on the active worker with the fewest of its tenant's sites, then the
/// most free slots. Worker rows are locked while choosing, so concurrent placements never
/// overfill a worker; the placement's primary key makes the step idempotent. Sites waiting
/// at the same time are placed in one transaction ([`crate::group`]): a burst of creates
/// took the workers' lock once per site, one after another.
fn reserve_slot(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        // Run again after a crash or a lost lease: the placement is there.
        let placed: Option<String> =
            sqlx::query_scalar("SELECT node_id FROM placements WHERE site_id = ?")
                .bind(&c.target)
                .fetch_optional(&c.db)
                .await?;
        if placed.is_some() {
            return Ok(());
        }
        let (tenant, slots): (String, i32) = sqlx::query_as(
            "SELECT s.tenant_id, p.slots FROM sites s JOIN plans p ON p.id = s.plan_id WHERE s.id = ?",
        )
        .bind(&c.target)
        .fetch_one(&c.db)
        .await?;
        let site = NewSite {
            tenant,
            slots: u32::try_from(slots).unwrap_or(1).max(1),
        };
        let outcome = match c.settings.placing.join(c.target.clone(), site).await {
            Turn::Done(outcome) => outcome,
            Turn::Lead(leader) => {
                let outcome = reserve_slots(c, &leader.changes)
                    .await
                    .map_err(|e| (e.public_message(), e.internal_message()));
                leader.finish(outcome.clone());
                outcome
            }
        };
        let chosen = outcome
            .map_err(|(public, cause)| StepError::retryable(public, anyhow::anyhow!("{cause}")))?;
        match chosen.get(&c.target) {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(StepError::permanent(
                format!("no worker can take the site ({reason}); add or activate a worker"),
                anyhow::anyhow!("placement: {reason}"),
            )),
            None => Err(StepError::retryable(
                "placing the site failed",
                anyhow::anyhow!("the placement group did not carry site {}", c.target),
            )),
        }
    })
}

/// One transaction for a group of new sites: the active workers' rows locked, the sites
/// placed meanwhile (by another runner of the same step) left as they are, the others
/// placed together and inserted. Each site: placed, or the reason no worker can take it.
async fn reserve_slots(c: &StepContext, new: &[(String, NewSite)]) -> Result<Placed, StepError> {
    let mut tx = c.db.begin().await?;
    // The active workers' rows first, before any plain read: they serialise
    // reservations (and moves onto them), and the reads below then see what the last
    // holder committed.
    sqlx::query(
        "SELECT id FROM nodes WHERE role = 'worker' AND availability = 'active' FOR UPDATE",
    )
    .execute(&mut *tx)
    .await?;
    let mut query = QueryBuilder::new("SELECT site_id FROM placements WHERE site_id IN (");
    let mut ids = query.separated(", ");
    for (id, _) in new {
        ids.push_bind(id);
    }
    query.push(")");
    let already: Vec<String> = query.build_query_scalar().fetch_all(&mut *tx).await?;
    let todo: Vec<(String, NewSite)> = new
        .iter()
        .filter(|(id, _)| !already.contains(id))
        .cloned()
        .collect();
    let chosen = place_new_sites(&mut tx, &c.settings.placement, &todo)
        .await
        .map_err(|e| StepError::retryable("placing the site failed", e))?;
    let rows: Vec<(&String, &String, u32)> = todo
        .iter()
        .filter_map(|(id, site)| match chosen.get(id) {
            Some(Ok(node)) => Some((id, node, site.slots)),
            _ => None,
        })
        .collect();
    if !rows.is_empty() {
        let mut insert = QueryBuilder::new("INSERT INTO placements (site_id, node_id, slots) ");
        insert.push_values(rows, |mut row, (site, node, slots)| {
            row.push_bind(site).push_bind(node).push_bind(slots);
        });
        insert.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let mut placed: Placed = already.into_iter().map(|id| (id, Ok(()))).collect();
    placed.extend(
        chosen
            .into_iter()
            .map(|(id, r)| (id, r.map(drop).map_err(|reason| reason.to_string()))),
    );
    Ok(placed)
}

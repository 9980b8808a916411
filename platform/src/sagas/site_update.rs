//! `site.update`: applies a site's changed name, domains or plan (already in the
//! database, `app::sites::update`) to the backends: storage quota, service spec, host
//! table, and a ban of the cached pages. Forward only; the site's state does not change.

use super::{
    Saga, Step, Undo, always, nothing_to_finish,
    site_steps::{self as s},
};
use crate::states::OperationKind;

const FORWARD_ONLY: &str =
    "an update goes forward only: the database already holds the new desired state";

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteUpdate,
    steps: &[
        Step {
            name: "ensure_storage",
            action: s::ensure_storage,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.gluster.is_some(),
        },
        Step {
            name: "ensure_swarm_secrets",
            action: s::ensure_swarm_secrets,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.swarm.is_some(),
        },
        Step {
            name: "ensure_service",
            action: s::ensure_service,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.swarm.is_some(),
        },
        Step {
            name: "publish_hosts",
            action: s::publish_hosts,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.varnish.is_some(),
        },
        Step {
            name: "ban_hosts",
            action: s::ban_hosts,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.varnish.is_some(),
        },
        Step {
            name: "mark_updated",
            action: s::at_the_end,
            undo: Undo::Nothing("it has no effect"),
            when: always,
        },
    ],
    finish: nothing_to_finish,
};

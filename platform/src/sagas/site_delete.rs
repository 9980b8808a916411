//! `site.delete`: removes every resource of the site, in the reverse order of its create,
//! then frees its slot, domains and secrets; the site ends `deleted`. A delete goes
//! forward only: its steps are retried, and a step that fails for good leaves the site
//! `failed` for an operator, with nothing taken back.

use super::{
    Saga, Step, Undo, always,
    site_steps::{self as s},
};
use crate::{provision::Backends, states::OperationKind};

/// Why no step of a delete has an undo.
const FORWARD_ONLY: &str =
    "a delete goes forward only: taking back half of it would recreate what was removed";

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteDelete,
    steps: &[
        Step {
            name: "unpublish_hosts",
            action: s::unpublish_hosts,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.varnish.is_some(),
        },
        Step {
            name: "remove_service",
            action: s::remove_service,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.swarm.is_some(),
        },
        Step {
            name: "remove_swarm_secrets",
            action: s::remove_swarm_secrets,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.swarm.is_some(),
        },
        Step {
            name: "remove_storage",
            action: s::remove_storage,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.gluster.is_some(),
        },
        Step {
            name: "remove_cache_user",
            action: s::remove_cache_user,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.redis.is_some(),
        },
        Step {
            name: "remove_router_user",
            action: s::remove_router_user,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.router.is_some(),
        },
        Step {
            name: "remove_database",
            action: s::remove_database,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.galera.is_some(),
        },
        Step {
            name: "release_slot",
            action: s::release_slot,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: always,
        },
        Step {
            name: "release_domains",
            action: s::release_domains,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: always,
        },
        Step {
            name: "forget_secrets",
            action: s::forget_secrets,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: Backends::any,
        },
    ],
    finish: s::finish,
};

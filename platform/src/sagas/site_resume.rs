//! `site.resume`: the service scales back to one task and the edge serves the site's
//! hosts again; the site ends `active`. Forward only, like a suspend.

use super::{
    Saga, Step, Undo, always,
    site_steps::{self as s},
};
use crate::states::OperationKind;

const FORWARD_ONLY: &str = "a resume goes forward only; a failure is left for an operator";

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteResume,
    steps: &[
        Step {
            name: "scale_up",
            action: s::scale_up,
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
            name: "mark_active",
            action: s::at_the_end,
            undo: Undo::Nothing("its effect is the saga's end"),
            when: always,
        },
    ],
    finish: s::finish,
};

//! `site.suspend`: the edge answers the site's hosts with a "suspended" page and its
//! service scales to zero; the site ends `suspended`. Forward only: a failure leaves the
//! site as it was for an operator (the operation says why).

use super::{
    Saga, Step, Undo, always,
    site_steps::{self as s},
};
use crate::states::OperationKind;

const FORWARD_ONLY: &str = "a suspend goes forward only; a failure is left for an operator";

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteSuspend,
    steps: &[
        Step {
            name: "suspend_hosts",
            action: s::suspend_hosts,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.varnish.is_some(),
        },
        Step {
            name: "scale_down",
            action: s::scale_down,
            undo: Undo::Nothing(FORWARD_ONLY),
            when: |b| b.swarm.is_some(),
        },
        Step {
            name: "mark_suspended",
            action: s::at_the_end,
            undo: Undo::Nothing("its effect is the saga's end"),
            when: always,
        },
    ],
    finish: s::finish,
};

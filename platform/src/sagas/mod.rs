//! Sagas: every durable multi-step operation, one file each, declared as a typed list of
//! steps (name, action, undo, and the configurations that include it).
//!
//! A saga file is all there is to a kind of operation: its steps in order, what each does,
//! how each is taken back, and what the target's state becomes at the end. The runner
//! (`crate::background::jobs`) knows leases, retries, failpoints and unwinding, and nothing about
//! sites: it finds a kind's saga with [`saga`] (an exhaustive `match` on
//! [`OperationKind`]) and a stored step's code by its name in that saga's list.
//!
//! The compiler holds the shape: a [`Step`] without an [`Undo`] decision does not build
//! (`Undo::Nothing` names why a step has none), and a new [`OperationKind`] without a saga
//! is a non-exhaustive `match`. Adding a step is one entry in one list.
//!
//! Step names are stored in `operation_steps.name`: a running operation resumes by them
//! after a crash, so a name, once shipped, stays (a new name is a new step).
//!
//! Every step is idempotent (`ensure_*` converges, `remove_*` treats "already gone" as
//! success), so a step interrupted by a crash runs again safely (STYLE.md, habit 4).
//!
//! Sagas that take the same steps share them as lists ([`steps!`] joins them): an
//! undelete is a create's provisioning with a restore's checking and filling between.

/// A saga's steps, joined from lists of steps in order: `steps![[ONE], SOME, more()]`,
/// each a `[Step; _]` a constant can hold; the joined list is built while compiling.
macro_rules! steps {
    ($($part:expr),+ $(,)?) => {{
        const PARTS: &[&[$crate::sagas::Step]] = &[$(&$part),+];
        const STEPS: [$crate::sagas::Step; $crate::sagas::count(PARTS)] =
            $crate::sagas::concat(PARTS);
        &STEPS
    }};
}

mod backup_delete;
mod backup_verify;
pub mod site_backup;
pub mod site_create;
pub mod site_delete;
pub mod site_move;
pub mod site_restore;
pub mod site_resume;
mod site_steps;
pub mod site_suspend;
pub mod site_undelete;
pub mod site_update;

use std::sync::Arc;

use futures::future::BoxFuture;
use sqlx::MySqlPool;

pub use crate::step_error::{Failure, StepError, StepResult};
use crate::{
    app::placement::{Placing, placing},
    config::{Config, PlacementConfig},
    provision::Backends,
    states::OperationKind,
};

/// A step's effect, or its undo, on the operation's target.
pub type Action = for<'a> fn(&'a StepContext) -> BoxFuture<'a, StepResult>;

/// What a step runs against.
pub struct StepContext {
    pub db: MySqlPool,
    pub backends: Arc<Backends>,
    /// What the sagas are configured with besides the drivers (the runner's).
    pub settings: Arc<SagaSettings>,
    /// The operation's target (`operations.target_id`), as stored: the saga validates it.
    pub target: String,
}

impl StepContext {
    /// The URL the sites' agents report to, if they report.
    pub fn control_url(&self) -> Option<&str> {
        self.settings.control_url.as_deref()
    }
}

/// What the sagas are configured with besides the drivers, and the groups they write in
/// together: the job runner holds it and hands it to every step (`Backends` holds only the
/// drivers and what they need).
#[derive(Debug, Clone)]
pub struct SagaSettings {
    /// The URL the sites' agents report to (`[agent] control_url`, without a trailing
    /// `/`); `None`: they do not, and a site is `active` as soon as its create operation
    /// finishes.
    pub control_url: Option<String>,
    /// How sites are placed and moved (`[placement]`).
    pub placement: PlacementConfig,
    /// New sites waiting to be placed together (`reserve_slot`): one per process.
    pub placing: Arc<Placing>,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            control_url: None,
            placement: PlacementConfig::default(),
            placing: Arc::new(placing()),
        }
    }
}

impl SagaSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            control_url: config.agent.report_url().map(str::to_owned),
            placement: config.placement.clone(),
            ..Self::default()
        }
    }
}

/// How a step is taken back when a later step fails for good.
#[derive(Clone, Copy)]
pub enum Undo {
    /// Run this to take the step's effect back; "already gone" is success.
    Reverse(Action),
    /// Nothing to take back, and why (a read, a wait, a forward-only saga).
    Nothing(&'static str),
}

/// One step of a saga (`Copy`: a list of steps several sagas share is copied into each).
#[derive(Clone, Copy)]
pub struct Step {
    /// Stored in `operation_steps.name`; never renamed once shipped.
    pub name: &'static str,
    pub action: Action,
    pub undo: Undo,
    /// Whether this configuration has the step (a backend that is not configured has no
    /// steps: the operation records exactly the steps that run).
    pub when: fn(&Backends) -> bool,
}

/// How a saga ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// A step failed for good and every step that ran was undone.
    Failed,
}

/// A saga's end: the target's state after the saga of this kind succeeded or unwound.
pub type Finish = for<'a> fn(&'a StepContext, OperationKind, Outcome) -> BoxFuture<'a, StepResult>;

/// A kind of operation: its steps and its end.
pub struct Saga {
    pub kind: OperationKind,
    pub steps: &'static [Step],
    pub finish: Finish,
}

impl Saga {
    /// The names of the steps this configuration runs, in order (what `enqueue` records).
    pub fn plan(&self, backends: &Backends) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter(|s| (s.when)(backends))
            .map(|s| s.name)
            .collect()
    }

    /// The step stored under `name` (an operation recorded by this or an earlier release).
    pub fn step(&self, name: &str) -> Option<&'static Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// What `app::operations::enqueue` records: this configuration's steps of a kind's saga.
impl crate::app::operations::Plans for Backends {
    fn plan(&self, kind: OperationKind) -> Vec<&'static str> {
        saga(kind).plan(self)
    }
}

/// The saga of a kind of operation.
pub fn saga(kind: OperationKind) -> &'static Saga {
    match kind {
        OperationKind::SiteCreate => &site_create::SAGA,
        OperationKind::SiteDelete => &site_delete::SAGA,
        OperationKind::SiteSuspend => &site_suspend::SAGA,
        OperationKind::SiteResume => &site_resume::SAGA,
        OperationKind::SiteUpdate => &site_update::SAGA,
        OperationKind::SiteMove => &site_move::SAGA,
        OperationKind::SiteBackup => &site_backup::SAGA,
        OperationKind::BackupDelete => &backup_delete::SAGA,
        OperationKind::SiteRestore => &site_restore::SAGA,
        OperationKind::BackupVerify => &backup_verify::SAGA,
        OperationKind::SiteUndelete => &site_undelete::SAGA,
    }
}

/// How many steps `parts` hold in all (the length [`steps!`] gives [`concat`]).
const fn count(parts: &[&[Step]]) -> usize {
    let (mut n, mut i) = (0, 0);
    while i < parts.len() {
        n += parts[i].len();
        i += 1;
    }
    n
}

/// The steps of `parts`, one list after another, as one list of `N` steps.
const fn concat<const N: usize>(parts: &[&[Step]]) -> [Step; N] {
    // Every place is written below; the first step only fills the array until then.
    let mut out = [parts[0][0]; N];
    let (mut n, mut i) = (0, 0);
    while i < parts.len() {
        let mut j = 0;
        while j < parts[i].len() {
            out[n] = parts[i][j];
            n += 1;
            j += 1;
        }
        i += 1;
    }
    assert!(n == N, "a saga's steps are not the steps of its lists");
    out
}

/// A step that every configuration has.
fn always(_: &Backends) -> bool {
    true
}

/// A finish that changes nothing.
fn nothing_to_finish(_: &StepContext, _: OperationKind, _: Outcome) -> BoxFuture<'_, StepResult> {
    Box::pin(async { Ok(()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_saga_with_distinct_step_names() {
        for kind in OperationKind::ALL {
            let saga = saga(*kind);
            assert_eq!(saga.kind, *kind);
            let mut names: Vec<_> = saga.steps.iter().map(|s| s.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), saga.steps.len(), "{kind}: a name used twice");
            for step in saga.steps {
                assert!(saga.step(step.name).is_some());
            }
        }
    }

    /// The sagas joined from shared lists ([`steps!`]) keep the steps they shipped with:
    /// names, order and which have an undo (a running operation resumes by these names).
    #[test]
    fn joined_sagas_keep_their_shipped_steps() {
        let steps = |kind| -> Vec<(&str, bool)> {
            saga(kind)
                .steps
                .iter()
                .map(|s| (s.name, matches!(s.undo, Undo::Reverse(_))))
                .collect()
        };
        let provision = [
            ("reserve_slot", true),
            ("generate_secrets", true),
            ("ensure_database", true),
            ("ensure_router_user", true),
            ("ensure_cache_user", true),
            ("ensure_storage", true),
        ];
        let serve = [
            ("ensure_swarm_secrets", true),
            ("ensure_service", true),
            ("publish_hosts", true),
        ];
        let check = [("wait_for_site", false), ("verify_backup", false)];
        assert_eq!(
            steps(OperationKind::SiteCreate),
            [&[("record_site", true)][..], &provision, &serve].concat()
        );
        assert_eq!(
            steps(OperationKind::SiteRestore),
            [
                &check[..],
                &[
                    ("backup_current", false),
                    ("stop_site", true),
                    ("restore_database", true),
                    ("restore_files", true),
                    ("flush_object_cache", false),
                    ("start_site", false),
                    ("ban_cache", false),
                ],
            ]
            .concat()
        );
        assert_eq!(
            steps(OperationKind::SiteUndelete),
            [
                &[("record_site", true)][..],
                &check,
                &provision,
                &[
                    ("restore_database", false),
                    ("restore_files", false),
                    ("flush_object_cache", false),
                ],
                &serve,
                &[("ban_cache", false)],
            ]
            .concat()
        );
    }
}

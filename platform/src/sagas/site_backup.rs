//! `site.backup`: the site's database (one consistent snapshot) and wp-content streamed to
//! S3 and read back (`crate::backup`). The target is the backup's id. One step: it clears
//! an earlier, interrupted attempt itself, so running it again converges; the end marks a
//! backup that did not complete `failed` (only the step writes `complete`).

use futures::future::BoxFuture;

use super::{Outcome, Saga, Step, StepContext, StepResult, Undo, always};
use crate::states::OperationKind;

pub static SAGA: Saga = Saga {
    kind: OperationKind::SiteBackup,
    steps: &[Step {
        name: "run_backup",
        action: run_backup,
        undo: Undo::Nothing("a failed attempt aborts its uploads and removes its objects"),
        when: always,
    }],
    finish,
};

fn run_backup(c: &StepContext) -> BoxFuture<'_, StepResult> {
    Box::pin(crate::backup::job::run_backup(
        &c.db,
        &c.backends,
        &c.target,
    ))
}

pub(super) fn finish(
    c: &StepContext,
    kind: OperationKind,
    outcome: Outcome,
) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        crate::backup::job::on_finish(
            &c.db,
            kind.as_str(),
            &c.target,
            outcome == Outcome::Succeeded,
        )
        .await?;
        Ok(())
    })
}

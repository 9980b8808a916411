//! `backup.verify`: a drill. The backup is restored into a scratch database and a scratch
//! folder, compared with its manifest (every object's size and SHA-256, every table's row
//! count, the files and their bytes), and the scratch dropped (`crate::backup::drill`).
//! The end records the result on the backup (`verified_at`, `verify_result`,
//! `verify_error`) and counts it in the metrics. Forward only: the step drops its scratch
//! itself, and running it again starts from a fresh one.

use futures::future::BoxFuture;

use super::{Outcome, Saga, Step, StepContext, StepResult, Undo, always};
use crate::states::OperationKind;

pub static SAGA: Saga = Saga {
    kind: OperationKind::BackupVerify,
    steps: &[Step {
        name: "drill_backup",
        action: |c| {
            Box::pin(crate::backup::drill_job::drill_backup(
                &c.db,
                &c.backends,
                &c.target,
            ))
        },
        undo: Undo::Nothing("a drill writes only to its own scratch, which it drops"),
        when: always,
    }],
    finish,
};

fn finish(c: &StepContext, _: OperationKind, outcome: Outcome) -> BoxFuture<'_, StepResult> {
    Box::pin(async move {
        crate::backup::drill_job::on_finish(&c.db, &c.target, outcome == Outcome::Succeeded)
            .await?;
        Ok(())
    })
}

//! `backup.delete`: a backup's objects and any unfinished upload removed from S3; the end
//! marks the backup `deleted` (or `failed`, to delete again). Forward only.

use super::{Saga, Step, Undo, site_backup::finish};
use crate::states::OperationKind;

pub static SAGA: Saga = Saga {
    kind: OperationKind::BackupDelete,
    steps: &[Step {
        name: "remove_backup",
        action: |c| {
            Box::pin(crate::backup::job::remove_backup(
                &c.db,
                &c.backends,
                &c.target,
            ))
        },
        undo: Undo::Nothing("a delete goes forward only; deleting again is safe"),
        when: super::always,
    }],
    finish,
};

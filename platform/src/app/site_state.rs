//! The one place that decides which changes of a site's state are allowed ([`decide`])
//! and the only writer of `sites.state` after the insert ([`change`]): the request paths
//! (`app::sites`), the sagas' ends (`sagas::site_*`) and the agent's reports and sweeper
//! (`agent`) all go through it, so the state machine is read in one `match`.
//!
//! ```text
//!   (insert) provisioning ──create ok, agent ready──▶ active ◀──resume── suspended
//!                │  └──create failed──▶ failed            │  ▲ ──suspend──▶ ▲
//!                │                                         ▼  │ agent ready  │
//!                │                                       degraded ──suspend─┘
//!   provisioning|active|degraded|suspended|failed ──delete requested──▶ deleting
//!   deleting ──delete ok──▶ deleted        deleting ──delete failed──▶ failed
//!   deleted ──undelete requested──▶ provisioning ──undelete ok──▶ (as a create's end)
//!                                                 └─undelete failed (unwound)──▶ deleted
//! ```
//!
//! `deleted_at` is when the site was deleted: set when it becomes `deleted`, kept by an
//! undelete that failed (the final backup's retention still counts from the delete),
//! cleared by one that succeeded.

use sqlx::MySqlConnection;

use crate::states::{OperationKind, OperationState, SiteState};

/// What happens to a site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteEvent {
    /// Someone asks for an operation of this kind (checked before it is enqueued).
    Requested(OperationKind),
    /// The saga of this kind ended: it succeeded, or failed and unwound. `agent_ready`:
    /// the site's agent reported ready (or agents do not report here).
    Finished {
        kind: OperationKind,
        succeeded: bool,
        agent_ready: bool,
    },
    /// The site's agent reported ready, with no operation of the site under way.
    AgentReady,
    /// The site's agent has not been ready for the configured timeout.
    AgentSilent,
}

/// Why a change was refused: the site is in a state the event does not apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the site is {current}; {event} does not apply now")]
pub struct NotAllowed {
    pub current: SiteState,
    pub event: EventName,
}

/// An event's name for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventName(SiteEvent);

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            SiteEvent::Requested(kind) => write!(f, "{kind}"),
            SiteEvent::Finished { kind, .. } => write!(f, "the end of {kind}"),
            SiteEvent::AgentReady => f.write_str("a ready report"),
            SiteEvent::AgentSilent => f.write_str("a silent agent"),
        }
    }
}

/// The state a site in `current` goes to on `event`; `Err` when the event is not allowed
/// in that state. `Ok(current)` means allowed, nothing changes.
///
/// A saga's end is always allowed: while its operation ran, no other operation could
/// start on the site, and only the agent's events (which wait for no operation under
/// way, or only degrade an active site) could have changed its state.
pub fn decide(current: SiteState, event: SiteEvent) -> Result<SiteState, NotAllowed> {
    use OperationKind as K;
    use SiteState as S;
    let refused = Err(NotAllowed {
        current,
        event: EventName(event),
    });
    match event {
        SiteEvent::Requested(kind) => match (kind, current) {
            (
                K::SiteDelete,
                S::Provisioning | S::Active | S::Degraded | S::Suspended | S::Failed,
            ) => Ok(S::Deleting),
            (K::SiteSuspend, S::Active | S::Degraded) => Ok(current),
            (K::SiteResume, S::Suspended) => Ok(current),
            (K::SiteUpdate, S::Provisioning | S::Active | S::Degraded | S::Suspended) => {
                Ok(current)
            }
            (K::SiteMove, S::Active | S::Degraded | S::Suspended) => Ok(current),
            (K::SiteRestore, S::Active | S::Degraded | S::Suspended) => Ok(current),
            (K::SiteUndelete, S::Deleted) => Ok(S::Provisioning),
            _ => refused,
        },
        SiteEvent::Finished {
            kind,
            succeeded,
            agent_ready,
        } => Ok(match (kind, succeeded) {
            // With agents reporting, a created site is `active` once its agent reported
            // ready (the report may come before or after the saga's end).
            (K::SiteCreate | K::SiteUndelete, true) if agent_ready => S::Active,
            (K::SiteCreate | K::SiteUndelete, true) => S::Provisioning,
            (K::SiteResume, true) => S::Active,
            (K::SiteSuspend, true) => S::Suspended,
            (K::SiteDelete, true) => S::Deleted,
            // A site whose create or delete failed is not what it should be; a failed
            // suspend, resume, update or move leaves it as it was (the operation says why).
            (K::SiteCreate | K::SiteDelete, false) => S::Failed,
            // An undelete that failed took back every resource it made: deleted again.
            (K::SiteUndelete, false) => S::Deleted,
            _ => current,
        }),
        SiteEvent::AgentReady => match current {
            S::Provisioning | S::Degraded => Ok(S::Active),
            _ => refused,
        },
        SiteEvent::AgentSilent => match current {
            S::Active => Ok(S::Degraded),
            _ => refused,
        },
    }
}

/// A change made by [`change`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub from: SiteState,
    pub to: SiteState,
}

/// Applies `event` to the site, in the caller's transaction: locks the site's row, asks
/// [`decide`], writes the new state (and `deleted_at`, and the billing state record) when
/// it differs. `Ok(None)`: the site does not exist, or (for [`SiteEvent::AgentReady`]) an
/// operation of the site is under way and the saga's end will decide.
pub async fn change(
    conn: &mut MySqlConnection,
    site: &str,
    event: SiteEvent,
) -> Result<Option<Result<Changed, NotAllowed>>, sqlx::Error> {
    let current: Option<SiteState> =
        sqlx::query_scalar("SELECT state FROM sites WHERE id = ? FOR UPDATE")
            .bind(site)
            .fetch_optional(&mut *conn)
            .await?;
    let Some(current) = current else {
        return Ok(None);
    };
    if event == SiteEvent::AgentReady {
        let busy: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM operations WHERE target_type = 'site' AND target_id = ? \
             AND state IN (?, ?, ?) LIMIT 1",
        )
        .bind(site)
        .bind(OperationState::UNDER_WAY[0])
        .bind(OperationState::UNDER_WAY[1])
        .bind(OperationState::UNDER_WAY[2])
        .fetch_optional(&mut *conn)
        .await?;
        if busy.is_some() {
            return Ok(None);
        }
    }
    let next = match decide(current, event) {
        Ok(next) => next,
        Err(refused) => return Ok(Some(Err(refused))),
    };
    // An undelete's success clears `deleted_at` even when the state stays `provisioning`
    // (its agent has not reported ready yet).
    let undeleted = matches!(
        event,
        SiteEvent::Finished {
            kind: OperationKind::SiteUndelete,
            succeeded: true,
            ..
        }
    );
    if next != current || undeleted {
        sqlx::query(
            "UPDATE sites SET state = ?, updated_at = NOW(6), \
             deleted_at = IF(? = 'deleted', COALESCE(deleted_at, NOW(6)), IF(?, NULL, deleted_at)) \
             WHERE id = ?",
        )
        .bind(next)
        .bind(next)
        .bind(undeleted)
        .bind(site)
        .execute(&mut *conn)
        .await?;
    }
    if next != current {
        super::billing::record_site_state(&mut *conn, Some(site)).await?;
    }
    Ok(Some(Ok(Changed {
        from: current,
        to: next,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use OperationKind as K;
    use SiteState as S;

    #[test]
    fn requests_follow_the_life_cycle() {
        assert_eq!(
            decide(S::Active, SiteEvent::Requested(K::SiteDelete)),
            Ok(S::Deleting)
        );
        assert_eq!(
            decide(S::Failed, SiteEvent::Requested(K::SiteDelete)),
            Ok(S::Deleting)
        );
        assert!(decide(S::Deleting, SiteEvent::Requested(K::SiteDelete)).is_err());
        assert!(decide(S::Deleted, SiteEvent::Requested(K::SiteUpdate)).is_err());
        assert!(decide(S::Deleted, SiteEvent::Requested(K::SiteRestore)).is_err());
        assert_eq!(
            decide(S::Deleted, SiteEvent::Requested(K::SiteUndelete)),
            Ok(S::Provisioning)
        );
        for live in [S::Provisioning, S::Active, S::Suspended, S::Failed] {
            assert!(decide(live, SiteEvent::Requested(K::SiteUndelete)).is_err());
        }
        assert_eq!(
            decide(S::Degraded, SiteEvent::Requested(K::SiteSuspend)),
            Ok(S::Degraded)
        );
        assert!(decide(S::Suspended, SiteEvent::Requested(K::SiteSuspend)).is_err());
        assert!(decide(S::Active, SiteEvent::Requested(K::SiteResume)).is_err());
        let refused = decide(S::Active, SiteEvent::Requested(K::SiteResume));
        assert_eq!(
            refused.map_err(|e| e.to_string()),
            Err("the site is active; site.resume does not apply now".to_owned())
        );
    }

    #[test]
    fn a_sagas_end_and_the_agent_move_the_site() {
        let end = |kind, succeeded, agent_ready| SiteEvent::Finished {
            kind,
            succeeded,
            agent_ready,
        };
        assert_eq!(
            decide(S::Provisioning, end(K::SiteCreate, true, true)),
            Ok(S::Active)
        );
        assert_eq!(
            decide(S::Provisioning, end(K::SiteCreate, true, false)),
            Ok(S::Provisioning)
        );
        assert_eq!(
            decide(S::Provisioning, end(K::SiteCreate, false, false)),
            Ok(S::Failed)
        );
        assert_eq!(
            decide(S::Deleting, end(K::SiteDelete, true, false)),
            Ok(S::Deleted)
        );
        assert_eq!(
            decide(S::Deleting, end(K::SiteDelete, false, false)),
            Ok(S::Failed)
        );
        assert_eq!(
            decide(S::Provisioning, end(K::SiteUndelete, true, true)),
            Ok(S::Active)
        );
        assert_eq!(
            decide(S::Provisioning, end(K::SiteUndelete, true, false)),
            Ok(S::Provisioning)
        );
        assert_eq!(
            decide(S::Provisioning, end(K::SiteUndelete, false, false)),
            Ok(S::Deleted)
        );
        assert_eq!(
            decide(S::Active, end(K::SiteSuspend, false, false)),
            Ok(S::Active)
        );
        assert_eq!(
            decide(S::Degraded, end(K::SiteMove, true, true)),
            Ok(S::Degraded)
        );
        assert_eq!(
            decide(S::Provisioning, SiteEvent::AgentReady),
            Ok(S::Active)
        );
        assert!(decide(S::Suspended, SiteEvent::AgentReady).is_err());
        assert_eq!(decide(S::Active, SiteEvent::AgentSilent), Ok(S::Degraded));
        assert!(decide(S::Degraded, SiteEvent::AgentSilent).is_err());
    }
}

//! When balance moves may start: only for an imbalance that lasts.
//!
//! Every move restarts the site's task, so a balance move (unlike a forced one: a worker
//! drained or down) is only worth it for an imbalance that stays. Counts move for a
//! moment all the time: sites being created or deleted, a plan changing, another move
//! finishing. The platform's placement loop plans every few seconds and asks a
//! [`BalanceGate`] whether to carry out the balance moves of the plan: only once the same
//! imbalance (the same workers giving sites) has been planned in `min_passes`
//! consecutive passes spanning at least `min_duration`. The gate holds no clock: the
//! caller passes the time of each pass, so it is as deterministic as the planner.
//!
//! The other half of the hysteresis is per site: a site moved recently is marked
//! [`crate::Site::balance_hold`] by the caller and the planner does not move it for
//! balance (it still moves it off a drained, down or over-full worker).

use std::time::{Duration, Instant};

use crate::model::{MoveReason, NodeId, RebalancePlan};

/// Remembers the imbalance of the last passes. See the module docs.
#[derive(Debug, Clone)]
pub struct BalanceGate {
    min_passes: u32,
    min_duration: Duration,
    seen: Option<Seen>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// The workers the plan's balance moves come from, sorted.
    donors: Vec<NodeId>,
    since: Instant,
    passes: u32,
}

/// What the gate said about one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceVerdict {
    /// The plan has no balance moves.
    Balanced,
    /// Balance moves planned, but the imbalance is not lasting yet: in how many passes
    /// in a row, and for how long, it has been seen.
    Waiting { passes: u32, for_duration: Duration },
    /// The imbalance lasted: carry out the balance moves.
    Move,
}

impl BalanceGate {
    /// At least `min_passes` passes (0 counts as 1) spanning at least `min_duration`.
    pub fn new(min_passes: u32, min_duration: Duration) -> Self {
        Self {
            min_passes: min_passes.max(1),
            min_duration,
            seen: None,
        }
    }

    /// Looks at the plan of a pass made at `now`. The same donors as the pass before
    /// count on; other donors start the count again; none clears it.
    pub fn observe(&mut self, plan: &RebalancePlan, now: Instant) -> BalanceVerdict {
        let mut donors: Vec<NodeId> = plan
            .moves
            .iter()
            .filter(|m| m.reason == MoveReason::Balance)
            .map(|m| m.from.clone())
            .collect();
        donors.sort();
        donors.dedup();
        if donors.is_empty() {
            self.seen = None;
            return BalanceVerdict::Balanced;
        }
        let seen = match self.seen.take() {
            Some(mut s) if s.donors == donors => {
                s.passes += 1;
                s
            }
            _ => Seen {
                donors,
                since: now,
                passes: 1,
            },
        };
        let for_duration = now.saturating_duration_since(seen.since);
        let verdict = if seen.passes >= self.min_passes && for_duration >= self.min_duration {
            BalanceVerdict::Move
        } else {
            BalanceVerdict::Waiting {
                passes: seen.passes,
                for_duration,
            }
        };
        self.seen = Some(seen);
        verdict
    }

    /// Forgets what was seen: after balance moves started, or while moves run (the map
    /// is changing), the next imbalance has to last again.
    pub fn reset(&mut self) {
        self.seen = None;
    }
}

//! Host-table loads taken in groups (a group commit).
//!
//! Every Varnish instance holds one host table, compiled into a VCL on each load (a C
//! compile: 1–3 s on the lab). Loads take turns, so twenty sites created at once used to
//! queue twenty compiles, each for a table that differed from the last by one site. Now a
//! caller leaves its change (one site's entry) in the open batch and waits for the turn;
//! whoever gets the turn takes every change waiting, loads one table with all of them and
//! gives each waiter the result. A caller whose change was loaded by someone else's turn
//! returns as soon as it gets the turn, without reading or loading anything.
//!
//! The table is read from the control-plane database inside the turn (every live site's
//! domains), so a change is never lost: a site's rows are committed before its step asks
//! for a load, and the overrides only say how one site's entry differs from its row (left
//! out while it is deleted, suspended while it is suspended).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
};

use backends::{SiteResourceId, varnish::HostState};

/// One site's entry as its step wants it loaded (`None`: left out).
pub type Override = (SiteResourceId, Option<HostState>);

/// What a group's load ended in, for every caller of the group: `Err` holds the public
/// message and the cause's chain as text (an error is not `Clone`).
type Outcome = Result<(), (String, String)>;

#[derive(Default)]
struct Batch {
    overrides: BTreeMap<SiteResourceId, Option<HostState>>,
    outcome: Arc<OnceLock<Outcome>>,
}

/// The open batch and the turn. One per process (loads of other replicas are converged by
/// the name of the loaded VCL: the same table has the same name).
#[derive(Default)]
pub struct HostLoads {
    open: Mutex<Batch>,
    turn: tokio::sync::Mutex<()>,
}

/// What a caller does once it has the turn.
pub enum Turn<'a> {
    /// Someone else's load carried this caller's change: its result.
    Done(Result<(), (String, String)>),
    /// Load the table with these overrides, then [`Leader::finish`].
    Load(Leader<'a>),
}

/// The caller that loads the group's table. Dropped without `finish` (its future was
/// cancelled, or it returned early on an error before loading), the group is failed so
/// that no waiter believes its change loaded.
pub struct Leader<'a> {
    pub overrides: Vec<Override>,
    outcome: Arc<OnceLock<Outcome>>,
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

impl Leader<'_> {
    /// Records the group's result for every waiter, and releases the turn.
    pub fn finish(self, outcome: Result<(), (String, String)>) {
        let _ = self.outcome.set(outcome);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let _ = self.outcome.set(Err((
            "the page cache did not load the site's hosts".into(),
            "the load carrying this change was abandoned".into(),
        )));
    }
}

impl HostLoads {
    /// Joins the open batch with `change` and waits for the turn.
    pub async fn join(&self, change: Override) -> Turn<'_> {
        let outcome = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            // The same site asking again while its last ask waits (the sagas never do: a
            // site's steps do not overlap) replaces it: the last ask wins, as it would
            // if the two loads had run one after the other.
            open.overrides.insert(change.0, change.1);
            open.outcome.clone()
        };
        let turn = self.turn.lock().await;
        if let Some(done) = outcome.get() {
            return Turn::Done(done.clone());
        }
        let batch = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        Turn::Load(Leader {
            overrides: batch.overrides.into_iter().collect(),
            outcome: batch.outcome,
            _turn: turn,
        })
    }

    /// The turn alone, for a caller that compares and reloads the whole table (the
    /// reconciler): no batch is taken, waiting changes stay for the next load.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sitesitesa`, `sitesitesb`, …: ten letters, as our ids are.
    fn site(n: u8) -> SiteResourceId {
        SiteResourceId::parse(&format!("sitesites{}", char::from(b'a' + n))).expect("a valid id")
    }

    #[tokio::test]
    async fn waiting_changes_are_loaded_by_one_leader_and_all_get_its_result() {
        let loads = Arc::new(HostLoads::default());
        // The turn is held, so the next callers all wait in one batch.
        let held = loads.turn().await;
        let mut waiters = Vec::new();
        for n in 0..5 {
            let loads = loads.clone();
            waiters.push(tokio::spawn(async move {
                match loads.join((site(n), Some(HostState::Active))).await {
                    Turn::Done(r) => (false, r.is_ok(), 0),
                    Turn::Load(leader) => {
                        let carried = leader.overrides.len();
                        leader.finish(Ok(()));
                        (true, true, carried)
                    }
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(held);
        let mut leaders = 0;
        for w in waiters {
            let (leader, ok, carried) = w.await.expect("no panic");
            assert!(ok);
            if leader {
                leaders += 1;
                assert_eq!(carried, 5, "the leader loads every waiting change");
            }
        }
        assert_eq!(leaders, 1, "five waiting changes, one load");
    }

    #[tokio::test]
    async fn an_abandoned_load_fails_its_group_and_the_next_change_loads_again() {
        let loads = HostLoads::default();
        match loads.join((site(1), None)).await {
            Turn::Load(leader) => drop(leader),
            Turn::Done(_) => panic!("the first caller leads"),
        }
        match loads.join((site(2), Some(HostState::Suspended))).await {
            Turn::Load(leader) => {
                assert_eq!(
                    leader.overrides.len(),
                    1,
                    "the abandoned change is not carried"
                );
                leader.finish(Ok(()));
            }
            Turn::Done(_) => panic!("a new batch leads"),
        }
    }
}

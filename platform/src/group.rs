//! Group commits: writes of one kind taken in groups.
//!
//! Some writes serialise every caller: a Varnish host table (one VCL compile per load)
//! and a placement (the active workers' rows locked while choosing). Twenty sites created
//! at once used to queue twenty of each, one after another. Now a caller leaves its
//! change in the open batch and waits for the turn; whoever gets the turn takes every
//! change waiting, writes them together and gives each waiter the group's result. A
//! caller whose change was written by someone else's turn returns as soon as it gets the
//! turn, without reading or writing anything.
//!
//! The group only saves work inside one process: the writes themselves stay correct
//! across processes (a lock or a name in the database, an idempotent load), so several
//! replicas may each lead their own groups.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock},
};

/// What a group's write ended in, for every caller of the group: `Err` holds the public
/// message and the cause's chain as text (an error is not `Clone`).
pub type Outcome<T> = Result<T, (String, String)>;

struct Batch<K, V, T> {
    changes: BTreeMap<K, V>,
    outcome: Arc<OnceLock<Outcome<T>>>,
}

impl<K, V, T> Default for Batch<K, V, T> {
    fn default() -> Self {
        Self {
            changes: BTreeMap::new(),
            outcome: Arc::default(),
        }
    }
}

/// The open batch of changes (`K` names what a change is for, `V` is the change) and the
/// turn; a group's write ends in a `T` for all of its callers.
pub struct Group<K, V, T> {
    open: Mutex<Batch<K, V, T>>,
    turn: tokio::sync::Mutex<()>,
    /// The public message of a group whose leader gave up without a result.
    abandoned: &'static str,
}

impl<K, V, T> std::fmt::Debug for Group<K, V, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("abandoned", &self.abandoned)
            .finish_non_exhaustive()
    }
}

/// What a caller does once it has the turn.
pub enum Turn<'a, K, V, T> {
    /// Someone else's write carried this caller's change: its result.
    Done(Outcome<T>),
    /// Write these changes, then [`Leader::finish`].
    Lead(Leader<'a, K, V, T>),
}

/// The caller that writes the group's changes. Dropped without `finish` (its future was
/// cancelled, or it returned early on an error), the group is failed, so that no waiter
/// believes its change was written.
pub struct Leader<'a, K, V, T> {
    pub changes: Vec<(K, V)>,
    outcome: Arc<OnceLock<Outcome<T>>>,
    abandoned: &'static str,
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

impl<K, V, T> Leader<'_, K, V, T> {
    /// Records the group's result for every waiter, and releases the turn.
    pub fn finish(self, outcome: Outcome<T>) {
        let _ = self.outcome.set(outcome);
    }
}

impl<K, V, T> Drop for Leader<'_, K, V, T> {
    fn drop(&mut self) {
        let _ = self.outcome.set(Err((
            self.abandoned.to_owned(),
            "the write carrying this change was abandoned".into(),
        )));
    }
}

impl<K: Ord, V, T: Clone> Group<K, V, T> {
    /// An empty group; `abandoned` is what its callers are told when a leader gives up.
    pub fn new(abandoned: &'static str) -> Self {
        Self {
            open: Mutex::new(Batch::default()),
            turn: tokio::sync::Mutex::new(()),
            abandoned,
        }
    }

    /// Joins the open batch with `change` for `key` and waits for the turn. The same key
    /// asking again while its last ask waits replaces it: the last ask wins, as it would
    /// if the two writes had run one after the other.
    pub async fn join(&self, key: K, change: V) -> Turn<'_, K, V, T> {
        let outcome = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            open.changes.insert(key, change);
            open.outcome.clone()
        };
        let turn = self.turn.lock().await;
        if let Some(done) = outcome.get() {
            return Turn::Done(done.clone());
        }
        let batch = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        Turn::Lead(Leader {
            changes: batch.changes.into_iter().collect(),
            outcome: batch.outcome,
            abandoned: self.abandoned,
            _turn: turn,
        })
    }

    /// The turn alone, for a caller that reads and rewrites everything (the reconciler):
    /// no batch is taken, waiting changes stay for the next write.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.turn.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Numbers = Group<u8, &'static str, usize>;

    #[tokio::test]
    async fn waiting_changes_are_written_by_one_leader_and_all_get_its_result() {
        let group = Arc::new(Numbers::new("not written"));
        // The turn is held, so the next callers all wait in one batch.
        let held = group.turn().await;
        let mut waiters = Vec::new();
        for n in 0..5 {
            let group = group.clone();
            waiters.push(tokio::spawn(async move {
                match group.join(n, "change").await {
                    Turn::Done(r) => (false, r),
                    Turn::Lead(leader) => {
                        let carried = leader.changes.len();
                        leader.finish(Ok(carried));
                        (true, Ok(carried))
                    }
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(held);
        let mut leaders = 0;
        for w in waiters {
            let (leader, result) = w.await.expect("no panic");
            assert_eq!(result, Ok(5), "every caller gets the one write's result");
            leaders += usize::from(leader);
        }
        assert_eq!(leaders, 1, "five waiting changes, one write");
    }

    #[tokio::test]
    async fn the_last_ask_of_a_key_wins() {
        let group = Arc::new(Numbers::new("not written"));
        let held = group.turn().await;
        let mut asks = Vec::new();
        for change in ["first", "second"] {
            let group = group.clone();
            asks.push(tokio::spawn(async move {
                match group.join(1, change).await {
                    Turn::Lead(leader) => {
                        let seen: Vec<_> = leader.changes.iter().map(|(_, v)| *v).collect();
                        leader.finish(Ok(1));
                        Some(seen)
                    }
                    Turn::Done(r) => {
                        assert_eq!(r, Ok(1));
                        None
                    }
                }
            }));
            // The first ask is in the batch before the second comes.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        drop(held);
        let mut led = Vec::new();
        for ask in asks {
            led.extend(ask.await.expect("no panic"));
        }
        assert_eq!(
            led,
            [vec!["second"]],
            "one write, with the key's last change"
        );
    }

    #[tokio::test]
    async fn an_abandoned_write_fails_its_group_and_the_next_change_writes_again() {
        let group = Numbers::new("the change was not written");
        match group.join(1, "one").await {
            Turn::Lead(leader) => drop(leader),
            Turn::Done(_) => panic!("the first caller leads"),
        }
        match group.join(2, "two").await {
            Turn::Lead(leader) => {
                assert_eq!(
                    leader.changes,
                    [(2, "two")],
                    "the abandoned change is not carried"
                );
                leader.finish(Ok(1));
            }
            Turn::Done(_) => panic!("a new batch leads"),
        }
    }

    #[tokio::test]
    async fn a_waiter_of_an_abandoned_group_gets_the_public_message() {
        let group = Arc::new(Numbers::new("the change was not written"));
        let held = group.turn().await;
        let (a, b) = (group.clone(), group.clone());
        let one = tokio::spawn(async move {
            match a.join(1, "one").await {
                Turn::Lead(leader) => {
                    drop(leader);
                    None
                }
                Turn::Done(r) => Some(r),
            }
        });
        let two = tokio::spawn(async move {
            match b.join(2, "two").await {
                Turn::Lead(leader) => {
                    drop(leader);
                    None
                }
                Turn::Done(r) => Some(r),
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(held);
        let results: Vec<_> = [one.await, two.await]
            .into_iter()
            .filter_map(|r| r.expect("no panic"))
            .collect();
        assert_eq!(results.len(), 1, "one led and gave up, the other waited");
        let (public, _) = results[0].clone().expect_err("the group failed");
        assert_eq!(public, "the change was not written");
    }
}

//! What runs on its own, on timers and queues, not in a request: the job runner that
//! drives the sagas (`jobs`), the reconcilers that repair drift (`reconcile`), the
//! placement loop (`placement`), the drill schedule's loop (`drills`) and the agents'
//! sweeper (`sweeper`).
//!
//! This layer calls `sagas`, `app` and `backup`; none of them calls it.

pub mod drills;
pub mod jobs;
pub mod placement;
pub mod reconcile;
pub mod sweeper;

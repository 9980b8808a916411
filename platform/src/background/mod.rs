//! What runs on its own, on timers and queues, not in a request: the job runner that
//! drives the sagas (`jobs`), the reconcilers that repair drift (`reconcile`), the
//! placement loop (`placement`) and the agents' sweeper (`sweeper`).
//!
//! This layer calls `sagas` and `app`; neither calls it.

pub mod jobs;
pub mod placement;
pub mod reconcile;
pub mod sweeper;

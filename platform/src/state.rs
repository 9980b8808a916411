//! Shared application state handed to every handler.

use std::sync::Arc;

use sqlx::MySqlPool;

use crate::{
    auth::TokenSigner, config::Config, crypto::SecretBox, metrics::Metrics, provision::Backends,
};

#[derive(Clone)]
pub struct AppState {
    pub db: MySqlPool,
    pub config: Arc<Config>,
    pub signer: TokenSigner,
    pub metrics: Metrics,
    /// The drivers: what the sagas and reconcilers change the cluster with.
    pub backends: Arc<Backends>,
    /// The key of the sealed secrets (sites' secrets, certificates): what an agent's
    /// token is checked with and the edge's certificates are opened with.
    pub secrets: SecretBox,
    /// Wakes this process's job runner after a commit that enqueued a job.
    pub runner: RunnerWake,
}

impl AppState {
    /// Says that a job was committed (call after the commit): the runner of this process
    /// claims it without waiting for its next poll.
    pub fn wake_runner(&self) {
        self.runner.wake();
    }
}

/// Rung when this process committed a job: its runner claims at once instead of at its
/// next poll (`jobs.poll_millis`, which other processes' jobs still wait for). Clones ring
/// the same runner.
#[derive(Clone, Default)]
pub struct RunnerWake(Arc<tokio::sync::Notify>);

impl RunnerWake {
    pub fn wake(&self) {
        self.0.notify_one();
    }

    /// Returns when [`RunnerWake::wake`] was called (at once if it was since the last
    /// return).
    pub async fn woken(&self) {
        self.0.notified().await;
    }
}

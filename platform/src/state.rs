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
}

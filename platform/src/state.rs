//! Shared application state handed to every handler.

use std::sync::Arc;

use sqlx::MySqlPool;

use crate::{auth::TokenSigner, config::Config, metrics::Metrics, provision::Provisioner};

#[derive(Clone)]
pub struct AppState {
    pub db: MySqlPool,
    pub config: Arc<Config>,
    pub signer: TokenSigner,
    pub metrics: Metrics,
    pub provisioner: Arc<Provisioner>,
}

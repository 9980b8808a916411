//! The agent's HTTP server: `/healthz` (alive), `/readyz` (ready to serve), `/metrics`.
//! Handlers only read state the background tasks keep current, so they are cheap and a
//! slow database never makes a health check time out.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::agent::Shared;
use crate::metrics::{render, self_usage};

/// A child down this long makes `/healthz` fail (swarm then replaces the task).
pub const CHILD_DOWN_LIMIT: Duration = Duration::from_secs(60);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let children = s.children.snapshot();
    match s.children.down_longer_than(CHILD_DOWN_LIMIT) {
        None => json(
            StatusCode::OK,
            serde_json::json!({"live": true, "children": children}),
        ),
        Some(name) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"live": false, "down": name, "children": children}),
        ),
    }
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let h = s.health();
    let status = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, serde_json::to_value(&h).unwrap_or_default())
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let body = render(&s.metrics.snapshot(), &s.children.snapshot(), self_usage());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

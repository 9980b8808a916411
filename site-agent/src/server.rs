//! The agent's HTTP server: `/healthz` (alive), `/readyz` (ready to serve), `/metrics`,
//! and `POST /purge` (the site's plugin, loopback only; see [`crate::purge`]).
//! Handlers only read state the background tasks keep current, or queue work for them,
//! so they are cheap and a slow database or control plane never makes one time out.
//!
//! The server must be served with the peer address
//! (`into_make_service_with_connect_info::<SocketAddr>()`): `/purge` needs it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::agent::Shared;
use crate::metrics::{render, self_usage};
use crate::protocol::Health;
use crate::purge::{LocalPurgeError, PurgeQueue, parse_local};

/// A child down this long makes `/healthz` fail (swarm then replaces the task).
pub const CHILD_DOWN_LIMIT: Duration = Duration::from_secs(60);

pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared.clone())
        .merge(purge_router(shared.purges.clone()))
}

/// `POST /purge` alone, on the queue it fills.
pub fn purge_router(queue: Arc<PurgeQueue>) -> Router {
    Router::new().route("/purge", post(purge)).with_state(queue)
}

/// Only processes of this container (the plugin in php-fpm) may purge: the agent's port
/// is reachable on the swarm network too.
pub fn local_peer(peer: SocketAddr) -> bool {
    peer.ip().to_canonical().is_loopback()
}

/// An RFC 9457 problem; the detail never holds a secret (there is none here).
fn problem(status: StatusCode, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        serde_json::json!({
            "type": "about:blank",
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "detail": detail,
        })
        .to_string(),
    )
        .into_response()
}

async fn purge(
    State(queue): State<Arc<PurgeQueue>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> Response {
    if !local_peer(peer) {
        tracing::warn!(peer = %peer, "purge from outside the container refused");
        return problem(StatusCode::FORBIDDEN, "purges are taken from loopback only");
    }
    match parse_local(&body) {
        Ok(p) => {
            let (paths, all) = (p.path_count(), p.is_all());
            queue.push(p);
            json(
                StatusCode::ACCEPTED,
                serde_json::json!({"queued_paths": paths, "all": all}),
            )
        }
        Err(e) => {
            let status = match e {
                LocalPurgeError::Body(_) => StatusCode::BAD_REQUEST,
                LocalPurgeError::Path { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let detail = e.to_string();
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::from(e)),
                "purge refused"
            );
            problem(status, &detail)
        }
    }
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

/// Readiness with each check's name and outcome only. The port is reachable from the
/// swarm network (the edge, the platform, and until network confinement other sites'
/// tasks), so why a check failed (connection errors naming internal hosts, SQL and Redis
/// messages) stays out of the body: the agent logs it, and its authenticated report to
/// the platform carries it.
async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    let h = public_health(s.health());
    let status = if h.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(status, serde_json::to_value(&h).unwrap_or_default())
}

/// `h` without the checks' details (see [`readyz`]).
pub fn public_health(mut h: Health) -> Health {
    for c in &mut h.checks {
        c.detail = None;
    }
    h
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::purge::Purge;
    use axum::extract::connect_info::MockConnectInfo;

    /// Serves `/purge` on loopback as if the peer were `peer` (the real listener's peer
    /// address is always loopback here).
    async fn serve_as(peer: SocketAddr) -> (String, Arc<PurgeQueue>) {
        let queue = Arc::new(PurgeQueue::default());
        let app = purge_router(queue.clone()).layer(MockConnectInfo(peer));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(l, app).await;
        });
        (format!("http://{addr}/purge"), queue)
    }

    async fn post(url: &str, body: &str) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    #[test]
    fn public_health_keeps_names_and_outcomes_only() {
        use crate::protocol::Check;
        let h = Health {
            live: true,
            ready: false,
            wordpress_installed: true,
            checks: vec![
                Check {
                    name: "database".into(),
                    ok: false,
                    detail: Some("connect 10.77.0.1:6033: Access denied for user".into()),
                },
                Check {
                    name: "redis".into(),
                    ok: true,
                    detail: None,
                },
            ],
        };
        let v = serde_json::to_value(public_health(h)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({
                "live": true, "ready": false, "wordpress_installed": true,
                "checks": [{"name": "database", "ok": false}, {"name": "redis", "ok": true}],
            })
        );
    }

    #[test]
    fn only_loopback_peers_are_local() {
        for ok in [
            "127.0.0.1:1",
            "127.3.4.5:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(local_peer(ok.parse().expect("addr")), "{ok}");
        }
        for no in [
            "10.0.1.7:1",
            "172.18.0.3:1",
            "[::ffff:10.0.0.1]:1",
            "[fe80::1]:1",
        ] {
            assert!(!local_peer(no.parse().expect("addr")), "{no}");
        }
    }

    #[tokio::test]
    async fn purge_endpoint_queues_from_loopback_and_refuses_others() {
        let (url, queue) = serve_as("127.0.0.1:40000".parse().expect("addr")).await;
        let (s, b) = post(&url, r#"{"paths":["/hello-world/","/"]}"#).await;
        assert_eq!(
            (s, &b),
            (202, &serde_json::json!({"queued_paths": 2, "all": false}))
        );
        let (s, b) = post(&url, r#"{"paths":["/feed/","/"],"all":false}"#).await;
        assert_eq!(s, 202, "{b}");
        let pending = queue.take();
        assert_eq!(
            pending.into_request("s").paths,
            vec!["/", "/feed/", "/hello-world/"]
        );
        let (s, b) = post(&url, r#"{"paths":["/ok/","/a b"]}"#).await;
        assert_eq!(s, 422);
        assert_eq!(b["status"], 422);
        assert!(
            b["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("paths[1]: ")),
            "{b}"
        );
        let (s, b) = post(&url, "paths=/x").await;
        assert_eq!(s, 400);
        assert_eq!(b["title"], "Bad Request");
        assert!(queue.take().is_empty(), "refused bodies queue nothing");

        let (url, queue) = serve_as("10.0.1.7:40000".parse().expect("addr")).await;
        let (s, b) = post(&url, r#"{"all":true}"#).await;
        assert_eq!(s, 403);
        assert_eq!(b["detail"], "purges are taken from loopback only");
        assert_eq!(queue.take(), Purge::default());
    }
}

//! What the edge asks of the platform, outside the `/v1` API (like `/healthz`):
//!
//! - `GET /.well-known/acme-challenge/{token}`: the HTTP-01 answer, from the database, so
//!   whichever Traefik replica the ACME server reaches, and whichever platform replica it
//!   forwards to, answers it.
//! - `GET /edge/traefik.json`: Traefik's dynamic configuration for `providers.http`
//!   (`endpoint` this URL, `headers.Authorization` the bearer `certs.edge_token`): every
//!   valid certificate inline (`tls.certificates`), a redirect to HTTPS on the `web`
//!   entrypoint for each domain that has one, and the route that sends the challenge path
//!   to the platform (`certs.challenge_upstream`) ahead of every site's route. Each replica
//!   polls it, so every replica serves every certificate and no node holds the only copy.

use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::store;
use crate::{error::ApiError, state::AppState};

/// Router priority of the challenge route: above every other route on `web`.
const CHALLENGE_PRIORITY: u32 = 1_000_000;
/// Router priority of the HTTPS redirects: above the sites' own `web` routers (whose
/// priority is their rule's length, under 10 000), below the challenge route.
const REDIRECT_PRIORITY: u32 = 100_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/.well-known/acme-challenge/{token}", get(challenge))
        .route("/edge/traefik.json", get(traefik))
}

/// RFC 8555 tokens are base64url, at least 128 bits; anything else is not ours.
fn valid_token(token: &str) -> bool {
    (16..=128).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn challenge(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    if !valid_token(&token) {
        return ApiError::NotFound("challenge").into_response();
    }
    match store::challenge(&state.db, &token).await {
        Ok(Some(answer)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            answer,
        )
            .into_response(),
        Ok(None) => ApiError::NotFound("challenge").into_response(),
        Err(err) => ApiError::Internal(err).into_response(),
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Compare digests: equal length, and no early exit on the secret's bytes.
    Sha256::digest(given.as_bytes()) == Sha256::digest(token.as_bytes())
}

async fn traefik(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let token = state.config.certs.edge_token.expose();
    if token.is_empty() {
        return ApiError::NotFound("route").into_response();
    }
    if !authorized(&headers, token) {
        return ApiError::Unauthorized("the edge provider token is required").into_response();
    }
    match store::servable(&state.db, &state.provisioner.secrets).await {
        Ok(certificates) => Json(dynamic_config(
            &certificates,
            state.config.certs.challenge_upstream.as_deref(),
            &state.config.certs.web_entrypoint,
        ))
        .into_response(),
        Err(err) => ApiError::Internal(err).into_response(),
    }
}

/// Traefik's dynamic configuration for the given certificates.
pub fn dynamic_config(
    certificates: &[(String, store::Material)],
    challenge_upstream: Option<&str>,
    web_entrypoint: &str,
) -> Value {
    let mut routers = Map::new();
    let mut services = Map::new();
    let mut middlewares = Map::new();
    if let Some(upstream) = challenge_upstream {
        routers.insert(
            "pd-acme-challenge".into(),
            json!({
                "rule": "PathPrefix(`/.well-known/acme-challenge/`)",
                "entryPoints": [web_entrypoint],
                "service": "pd-acme-challenge",
                "priority": CHALLENGE_PRIORITY,
            }),
        );
        services.insert(
            "pd-acme-challenge".into(),
            json!({ "loadBalancer": { "servers": [{ "url": upstream }] } }),
        );
    }
    if !certificates.is_empty() {
        middlewares.insert(
            "pd-to-https".into(),
            json!({ "redirectScheme": { "scheme": "https", "permanent": true } }),
        );
        // One router per domain: the names are ours (a counter), the domains were
        // validated when the site took them (lower-case letters, digits, '-', '.').
        for (i, (domain, _)) in certificates.iter().enumerate() {
            routers.insert(
                format!("pd-https-{i}"),
                json!({
                    "rule": format!("Host(`{domain}`)"),
                    "entryPoints": [web_entrypoint],
                    "middlewares": ["pd-to-https"],
                    "service": "noop@internal",
                    "priority": REDIRECT_PRIORITY,
                }),
            );
        }
    }
    let mut config = Map::new();
    if !routers.is_empty() {
        let mut http = Map::new();
        http.insert("routers".into(), Value::Object(routers));
        if !services.is_empty() {
            http.insert("services".into(), Value::Object(services));
        }
        if !middlewares.is_empty() {
            http.insert("middlewares".into(), Value::Object(middlewares));
        }
        config.insert("http".into(), Value::Object(http));
    }
    if !certificates.is_empty() {
        let list: Vec<Value> = certificates
            .iter()
            .map(|(_, m)| json!({ "certFile": m.chain_pem, "keyFile": m.key_pem }))
            .collect();
        config.insert("tls".into(), json!({ "certificates": list }));
    }
    Value::Object(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_base64url() {
        assert!(valid_token("LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0"));
        assert!(!valid_token("short"));
        assert!(!valid_token("../../etc/passwd/aaaaaaaaaaaaaaaa"));
    }

    #[test]
    fn config_has_certificates_redirects_and_the_challenge_route() {
        let m = store::Material {
            chain_pem: "CHAIN".into(),
            key_pem: "KEY".into(),
        };
        let c = dynamic_config(&[("a.test".into(), m)], Some("http://platform:8080"), "web");
        assert_eq!(c["tls"]["certificates"][0]["certFile"], "CHAIN");
        assert_eq!(c["tls"]["certificates"][0]["keyFile"], "KEY");
        assert_eq!(c["http"]["routers"]["pd-https-0"]["rule"], "Host(`a.test`)");
        assert_eq!(
            c["http"]["routers"]["pd-https-0"]["middlewares"][0],
            "pd-to-https"
        );
        assert_eq!(
            c["http"]["services"]["pd-acme-challenge"]["loadBalancer"]["servers"][0]["url"],
            "http://platform:8080"
        );
        let empty = dynamic_config(&[], None, "web");
        assert_eq!(empty, json!({}));
    }
}

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
//!   Replicas poll at their own moments, so a new certificate reaches them up to a poll
//!   interval apart: a domain's redirect (and HSTS) is published only once its certificate
//!   has been in this document for longer than two polls (`certs.edge_poll_interval_secs`,
//!   [`store::for_edge`]); until then a replica that redirected could send a visitor to
//!   another that still answers HTTPS with Traefik's default certificate.

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
    let c = &state.config.certs;
    let served = async {
        let certificates = store::for_edge(&state.db, &state.secrets, c.redirect_after()).await?;
        let options = store::https_options(&state.db).await?;
        anyhow::Ok((certificates, options))
    };
    match served.await {
        Ok((certificates, options)) => {
            let domains: Vec<Served> = certificates
                .into_iter()
                .map(|cert| {
                    let (site, options) = options
                        .get(&cert.domain)
                        .map(|(site, o)| (Some(site.clone()), *o))
                        .unwrap_or_default();
                    Served {
                        site,
                        options,
                        domain: cert.domain,
                        material: cert.material,
                        settled: cert.settled,
                    }
                })
                .collect();
            Json(dynamic_config(
                &domains,
                &EdgeSettings {
                    challenge_upstream: c.challenge_upstream.as_deref(),
                    web_entrypoint: &c.web_entrypoint,
                    websecure_entrypoint: &c.websecure_entrypoint,
                    https_service: c.https_service.as_deref(),
                },
            ))
            .into_response()
        }
        Err(err) => ApiError::Internal(err).into_response(),
    }
}

/// One domain the edge serves over HTTPS: its certificate and its site's options.
pub struct Served {
    /// The site holding the domain (names its routers, so the edge's per-router counters
    /// are the site's: platform/src/app/edge_usage.rs).
    pub site: Option<String>,
    pub domain: String,
    pub material: store::Material,
    pub options: store::HttpsOptions,
    /// Every edge replica serves the certificate by now ([`store::EdgeCertificate`]): the
    /// redirect to HTTPS and HSTS are published only then.
    pub settled: bool,
}

/// How the edge is laid out (`[certs]` of the configuration).
pub struct EdgeSettings<'a> {
    /// Where the challenge path goes; `None`: no challenge route.
    pub challenge_upstream: Option<&'a str>,
    /// The plain-HTTP entrypoint (redirects, the challenge route).
    pub web_entrypoint: &'a str,
    /// The HTTPS entrypoint (the HSTS routers).
    pub websecure_entrypoint: &'a str,
    /// The Traefik service that HTTPS requests go to (the cache), for the routers that add
    /// HSTS; `None`: no HSTS routers.
    pub https_service: Option<&'a str>,
}

/// `Strict-Transport-Security` max-age of the sites that turn HSTS on: one year.
pub const HSTS_MAX_AGE_SECS: u64 = 31_536_000;

/// Traefik's dynamic configuration for the given certificates: every certificate at once,
/// a domain's redirect and HSTS router only once it is [`Served::settled`] (HSTS tells
/// browsers to use nothing but HTTPS, so it waits for every replica just as the redirect
/// does; a site that keeps HTTP gets HSTS, if it asks for it, at the same moment).
pub fn dynamic_config(domains: &[Served], edge: &EdgeSettings<'_>) -> Value {
    let mut routers = Map::new();
    let mut services = Map::new();
    let mut middlewares = Map::new();
    if let Some(upstream) = edge.challenge_upstream {
        routers.insert(
            "pd-acme-challenge".into(),
            json!({
                "rule": "PathPrefix(`/.well-known/acme-challenge/`)",
                "entryPoints": [edge.web_entrypoint],
                "service": "pd-acme-challenge",
                "priority": CHALLENGE_PRIORITY,
            }),
        );
        services.insert(
            "pd-acme-challenge".into(),
            json!({ "loadBalancer": { "servers": [{ "url": upstream }] } }),
        );
    }
    // One router per domain: the names are ours (the site's id and the domain's index,
    // `wp_<site>-https-<i>` as the route writer names the site's own routers, so the edge's
    // counters stay the site's), the domains were validated when the site took them
    // (lower-case letters, digits, '-', '.').
    for (i, served) in domains.iter().enumerate() {
        if !served.settled {
            continue;
        }
        let rule = format!("Host(`{}`)", served.domain);
        let owner = served
            .site
            .as_deref()
            .map_or_else(|| "pd".to_owned(), |site| format!("wp_{site}"));
        if !served.options.keep_http {
            middlewares.insert(
                "pd-to-https".into(),
                json!({ "redirectScheme": { "scheme": "https", "permanent": true } }),
            );
            routers.insert(
                format!("{owner}-https-{i}"),
                json!({
                    "rule": rule,
                    "entryPoints": [edge.web_entrypoint],
                    "middlewares": ["pd-to-https"],
                    "service": "noop@internal",
                    "priority": REDIRECT_PRIORITY,
                }),
            );
        }
        if served.options.hsts
            && let Some(service) = edge.https_service
        {
            middlewares.insert(
                "pd-hsts".into(),
                json!({ "headers": { "stsSeconds": HSTS_MAX_AGE_SECS } }),
            );
            routers.insert(
                format!("{owner}-hsts-{i}"),
                json!({
                    "rule": rule,
                    "entryPoints": [edge.websecure_entrypoint],
                    "middlewares": ["pd-hsts"],
                    "service": service,
                    "priority": REDIRECT_PRIORITY,
                    "tls": {},
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
    if !domains.is_empty() {
        let list: Vec<Value> = domains
            .iter()
            .map(|d| json!({ "certFile": d.material.chain_pem, "keyFile": d.material.key_pem }))
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

    fn served(domain: &str, keep_http: bool, hsts: bool) -> Served {
        Served {
            site: None,
            domain: domain.into(),
            material: store::Material {
                chain_pem: format!("CHAIN {domain}"),
                key_pem: format!("KEY {domain}"),
            },
            options: store::HttpsOptions { keep_http, hsts },
            settled: true,
        }
    }

    const EDGE: EdgeSettings<'static> = EdgeSettings {
        challenge_upstream: Some("http://platform:8080"),
        web_entrypoint: "web",
        websecure_entrypoint: "websecure",
        https_service: Some("pd-cache@file"),
    };

    #[test]
    fn config_has_certificates_redirects_and_the_challenge_route() {
        let c = dynamic_config(&[served("a.test", false, false)], &EDGE);
        assert_eq!(c["tls"]["certificates"][0]["certFile"], "CHAIN a.test");
        assert_eq!(c["tls"]["certificates"][0]["keyFile"], "KEY a.test");
        assert_eq!(c["http"]["routers"]["pd-https-0"]["rule"], "Host(`a.test`)");
        assert_eq!(
            c["http"]["routers"]["pd-https-0"]["middlewares"][0],
            "pd-to-https"
        );
        assert!(c["http"]["routers"].get("pd-hsts-0").is_none(), "{c}");
        assert_eq!(
            c["http"]["services"]["pd-acme-challenge"]["loadBalancer"]["servers"][0]["url"],
            "http://platform:8080"
        );
        let none = EdgeSettings {
            challenge_upstream: None,
            ..EDGE
        };
        assert_eq!(dynamic_config(&[], &none), json!({}));
    }

    #[test]
    fn keep_http_drops_the_redirect_and_hsts_adds_a_header_router() {
        let c = dynamic_config(
            &[served("a.test", true, false), served("b.test", false, true)],
            &EDGE,
        );
        let routers = &c["http"]["routers"];
        assert!(
            routers.get("pd-https-0").is_none(),
            "a.test keeps HTTP: {c}"
        );
        assert!(routers.get("pd-hsts-0").is_none(), "{c}");
        assert_eq!(routers["pd-https-1"]["rule"], "Host(`b.test`)");
        assert_eq!(routers["pd-hsts-1"]["rule"], "Host(`b.test`)");
        assert_eq!(routers["pd-hsts-1"]["entryPoints"][0], "websecure");
        assert_eq!(routers["pd-hsts-1"]["service"], "pd-cache@file");
        assert_eq!(routers["pd-hsts-1"]["tls"], json!({}));
        assert_eq!(
            c["http"]["middlewares"]["pd-hsts"]["headers"]["stsSeconds"],
            31_536_000
        );
        // Both certificates are served whatever the options.
        assert_eq!(c["tls"]["certificates"].as_array().unwrap().len(), 2);
        // Without a service to send HTTPS requests to, no HSTS router.
        let no_service = EdgeSettings {
            https_service: None,
            ..EDGE
        };
        let c = dynamic_config(&[served("b.test", false, true)], &no_service);
        assert!(c["http"]["routers"].get("pd-hsts-0").is_none(), "{c}");
    }

    #[test]
    fn a_certificate_not_yet_settled_is_served_without_its_redirect_or_hsts() {
        let new = Served {
            settled: false,
            ..served("new.test", false, true)
        };
        let c = dynamic_config(&[new, served("old.test", false, true)], &EDGE);
        let names: Vec<&str> = c["tls"]["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["certFile"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["CHAIN new.test", "CHAIN old.test"]);
        let routers = c["http"]["routers"].as_object().unwrap();
        let mut names: Vec<&str> = routers.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["pd-acme-challenge", "pd-hsts-1", "pd-https-1"],
            "{c}"
        );
        assert!(!c["http"].to_string().contains("new.test"), "{c}");
    }
}

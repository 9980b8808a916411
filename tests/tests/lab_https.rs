//! HTTPS for real on the lab (issue 14, items 2, 4, 5): the lab platform orders each site
//! domain's certificate from pebble (Let's Encrypt's test CA) through the real HTTP-01 flow
//! (pebble fetches the challenge through the lab's edge), and every Traefik replica serves
//! it from the platform's `/edge/traefik.json`. Checked with a TLS client that verifies the
//! chain against the lab ACME roots and the name (no `-k`).
//!
//! Gated by `PRESSDOCK_LAB_TESTS=1` and a lab that is up. Runs against the lab's own
//! platform (its `[certs]` points at pebble); the platform is restarted once, by
//! `pressdock-infra lab up`, to show that it does not order again what it holds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use e2e::{Api, LAB_STATE, random};
use reqwest::{Method, StatusCode, redirect::Policy};
use serde_json::{Value, json};

fn lab() -> Option<toml::Table> {
    let summary = Path::new(LAB_STATE).join("lab.toml");
    if !e2e::lab_tests_enabled(&summary) {
        return None;
    }
    let lab = e2e::read_toml(&summary);
    if lab.get("edge_https_url").is_none() {
        panic!("the lab has no HTTPS edge: run `pressdock-infra lab up` from this build");
    }
    Some(lab)
}

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

/// A client that trusts only the lab ACME roots, sends `domain` to `to` (SNI and Host are
/// the domain's), verifies chain and name, and does not follow redirects.
fn verifying(roots: &[u8], domain: &str, to: SocketAddr) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .tls_info(true)
        .redirect(Policy::none())
        .timeout(Duration::from_secs(20))
        .resolve(domain, to);
    for root in reqwest::Certificate::from_pem_bundle(roots).unwrap() {
        b = b.add_root_certificate(root);
    }
    b.build().unwrap()
}

/// A plain-HTTP client for the edge (no redirects followed).
fn plain(domain: &str, to: SocketAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .timeout(Duration::from_secs(20))
        .resolve(domain, to)
        .build()
        .unwrap()
}

struct Page {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
    /// The DER of the certificate the server presented (HTTPS only).
    leaf: Option<Vec<u8>>,
}

async fn get(client: &reqwest::Client, url: &str) -> Result<Page, String> {
    let r = client.get(url).send().await.map_err(|e| format!("{e:?}"))?;
    let leaf = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec));
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.text().await.map_err(|e| format!("{e:?}"))?;
    Ok(Page {
        status,
        headers,
        body,
        leaf,
    })
}

/// Asks until `f` returns `Some` (a bounded wait, not a timed assertion): the issuer's
/// passes and Traefik's polls of the provider take seconds.
async fn until<T, F, Fut>(what: &str, within: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn certificate(api: &Api, site: &str, domain: &str) -> Value {
    let (status, body) = api
        .call(Method::GET, &format!("/v1/sites/{site}"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["domain"] == domain)
        .cloned()
        .unwrap_or(Value::Null)
}

async fn patch(api: &Api, site: &str, change: Value) {
    let (status, body) = api
        .call(Method::PATCH, &format!("/v1/sites/{site}"), Some(change))
        .await;
    assert_eq!(status, 202, "{body}");
    api.succeeds(&body).await;
}

/// The site's page over HTTPS through `to`, verified, from WordPress through the cache.
async fn https_page(roots: &[u8], domain: &str, to: SocketAddr) -> Page {
    let client = verifying(roots, domain, to);
    let url = format!("https://{domain}:{}/", to.port());
    until(
        &format!("{domain} over HTTPS at {to}"),
        Duration::from_secs(120),
        || async {
            let p = get(&client, &url).await?;
            if p.status == 200 && p.headers.contains_key("x-pressdock-cache") {
                Ok(p)
            } else {
                Err(format!("HTTP {} {:?}", p.status, p.headers))
            }
        },
    )
    .await
}

#[tokio::test]
async fn sites_get_certificates_from_the_lab_acme_server_served_by_every_edge_replica() {
    let Some(lab) = lab() else { return };
    let s = |k: &str| lab[k].as_str().unwrap().to_owned();
    let https = addr(&s("edge_https_url"));
    let http = addr(&s("edge_url"));
    let roots = std::fs::read(s("acme_roots")).unwrap();
    let replicas: Vec<SocketAddr> = lab["edge_https_replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        replicas.len() >= 2,
        "two edge replicas at least: {replicas:?}"
    );
    let dns = s("acme_dns_management");

    let api = Api::lab_staff().await;
    let id = random().to_lowercase();
    let tenant = api.create_tenant(&format!("tls-{id}"), "HTTPS test").await;
    let domain = format!("tls-{id}.lab.test");
    let accepted = api.create_site(&tenant, "HTTPS", &domain).await;
    api.succeeds(&accepted).await;
    let site = accepted["site"]["id"].as_str().unwrap().to_owned();

    // 1. Issued through HTTP-01 and served over HTTPS: the chain verifies against the lab
    //    ACME roots for the domain's name, and WordPress makes https:// links.
    let cert = until("the certificate", Duration::from_secs(120), || async {
        let c = certificate(&api, &site, &domain).await;
        if c["state"] == "valid" {
            Ok(c)
        } else {
            Err(c.to_string())
        }
    })
    .await;
    assert!(
        cert["issuer"].as_str().unwrap().contains("Pebble"),
        "{cert}"
    );
    let page = https_page(&roots, &domain, https).await;
    let leaf = page.leaf.clone().expect("the server's certificate");
    assert!(
        page.body.contains(&format!("https://{domain}/")),
        "WordPress links over https: {}",
        &page.body[..page.body.len().min(2000)]
    );
    assert!(
        !page.body.contains(&format!("http://{domain}/")),
        "no http:// link of the site over HTTPS"
    );
    assert!(
        page.headers.get("strict-transport-security").is_none(),
        "HSTS is off by default"
    );
    // The same client refuses another name on this certificate, and a client without the
    // lab ACME roots refuses the chain.
    let other = format!("other-{id}.lab.test");
    assert!(
        get(
            &verifying(&roots, &other, https),
            &format!("https://{other}:{}/", https.port())
        )
        .await
        .is_err(),
        "a name the certificate does not cover must not verify"
    );
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .resolve(&domain, https)
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("https://{domain}:{}/", https.port()))
            .send()
            .await
            .is_err(),
        "without the lab ACME roots the chain must not verify"
    );

    // 2. Every edge replica serves the same certificate (each Traefik polls the platform).
    for replica in &replicas {
        let p = https_page(&roots, &domain, *replica).await;
        assert_eq!(
            p.leaf.as_deref(),
            Some(&leaf[..]),
            "replica {replica} serves another certificate"
        );
    }

    // 3. HTTP redirects to HTTPS; the ACME challenge path stays on HTTP (the platform's
    //    answer: an unknown token is its problem+json 404, not a redirect).
    let plain_client = plain(&domain, http);
    let r = get(&plain_client, &format!("http://{domain}:{}/", http.port()))
        .await
        .unwrap();
    assert!(
        r.status == StatusCode::MOVED_PERMANENTLY || r.status == StatusCode::PERMANENT_REDIRECT,
        "HTTP {} {:?}",
        r.status,
        r.headers
    );
    assert_eq!(r.headers["location"], format!("https://{domain}/"));
    let token = format!("{}{}", random(), random()).replace('-', "");
    let r = get(
        &plain_client,
        &format!(
            "http://{domain}:{}/.well-known/acme-challenge/{token}",
            http.port()
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "{:?} {}",
        r.headers,
        r.body
    );
    assert_eq!(r.headers["content-type"], "application/problem+json");

    // 4. HSTS and keep-HTTP are per-site options. Varnish keeps one object per scheme:
    //    over HTTP the same page has http:// links while the https:// one stays cached.
    patch(&api, &site, json!({ "hsts": true, "keep_http": true })).await;
    let client = verifying(&roots, &domain, https);
    let url = format!("https://{domain}:{}/", https.port());
    let hsts = until("HSTS on HTTPS", Duration::from_secs(60), || async {
        let p = get(&client, &url).await?;
        p.headers
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap().to_owned())
            .ok_or_else(|| format!("{:?}", p.headers))
    })
    .await;
    assert_eq!(hsts, "max-age=31536000");
    let over_http = until("HTTP kept", Duration::from_secs(60), || async {
        let p = get(&plain_client, &format!("http://{domain}:{}/", http.port())).await?;
        if p.status == 200 {
            Ok(p)
        } else {
            Err(format!("HTTP {} {:?}", p.status, p.headers))
        }
    })
    .await;
    assert!(
        over_http.body.contains(&format!("http://{domain}/")),
        "WordPress links over http on plain HTTP"
    );
    assert!(over_http.headers.get("strict-transport-security").is_none());
    let again = get(&client, &url).await.unwrap();
    assert!(again.body.contains(&format!("https://{domain}/")));
    assert_eq!(
        again.headers["x-pressdock-cache"], "HIT",
        "{:?}",
        again.headers
    );

    // 5. A restarted platform does not order again what it holds; an alias added later is
    //    covered, and a failing alias (resolving where nothing listens) shows the ACME
    //    server's reason while the other domains keep serving.
    let pid = std::fs::read_to_string(Path::new(LAB_STATE).join("pids/platform.pid")).unwrap();
    let pid: i32 = pid.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    until("the platform to stop", Duration::from_secs(30), || async {
        if Path::new(&format!("/proc/{pid}")).exists() {
            Err("running".to_owned())
        } else {
            Ok(())
        }
    })
    .await;
    let api = Api::lab_staff().await; // `pressdock-infra lab up` starts it again
    let good = format!("alias-{id}.lab.test");
    let bad = format!("bad-{id}.lab.test");
    let r = reqwest::Client::new()
        .post(format!("{dns}/add-a"))
        .json(&json!({ "host": bad, "addresses": ["127.0.0.2"] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    patch(&api, &site, json!({ "aliases": [good, bad] })).await;
    until(
        "the alias's certificate",
        Duration::from_secs(120),
        || async {
            let c = certificate(&api, &site, &good).await;
            if c["state"] == "valid" {
                Ok(())
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    let failed = until(
        "the failing alias's error",
        Duration::from_secs(120),
        || async {
            let c = certificate(&api, &site, &bad).await;
            if c["state"] == "failed" {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    let reason = failed["last_error"].as_str().unwrap();
    assert!(
        reason.contains("127.0.0.2") && reason.contains("connection refused"),
        "the ACME server's reason: {failed}"
    );
    let alias_page = https_page(&roots, &good, https).await;
    assert!(alias_page.leaf.is_some());
    assert_ne!(alias_page.leaf, Some(leaf.clone()), "the alias has its own");
    let still = https_page(&roots, &domain, https).await;
    assert_eq!(
        still.leaf.as_deref(),
        Some(&leaf[..]),
        "the primary domain's certificate was ordered again"
    );
    let held = certificate(&api, &site, &domain).await;
    assert_eq!(held["state"], "valid", "{held}");
    assert_eq!(held["not_after"], cert["not_after"], "{held}");
    assert_eq!(held["next_attempt_at"], cert["next_attempt_at"], "{held}");
    assert!(held["last_error"].is_null(), "{held}");

    // Clean up: the site's domains leave the certificate set with it.
    let (status, body) = api
        .call(Method::DELETE, &format!("/v1/sites/{site}"), None)
        .await;
    assert_eq!(status, 202, "{body}");
    api.succeeds(&body).await;
}

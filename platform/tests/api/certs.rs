//! Site certificates through a real ACME server: Debian's `pebble` (Let's Encrypt's test
//! CA) with real HTTP-01 validation against the platform's own listener, and
//! `pebble-challtestsrv` as pebble's DNS server, so each test domain resolves to loopback
//! (or, for the failing domain, to an address where nothing listens).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use platform::certs::{
    issuer::Issuer,
    store::{self, Material},
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{SECRET_KEY, TestApp, free_port, random_name};

const EDGE_TOKEN: &str = "edge-provider-token-0123456789abcdef";

/// pebble and its DNS server, stopped when dropped.
struct Pebble {
    _pebble: tokio::process::Child,
    _dns: tokio::process::Child,
    _dir: tempfile::TempDir,
    directory: String,
    management: String,
    dns_management: String,
    /// The root pebble's own HTTPS chains to (made here, not pebble's issuing root).
    api_root: PathBuf,
}

fn binary(name: &str) -> PathBuf {
    let path = Path::new("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-deps.sh (Debian package pebble)",
        path.display()
    );
    path
}

/// A CA and a leaf for 127.0.0.1 signed by it: pebble's own HTTPS (the package ships none).
fn pebble_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pressdock test pebble API root");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let (root, cert, key) = (
        dir.join("root.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&root, ca.pem()).unwrap();
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    (root, cert, key)
}

impl Pebble {
    /// Starts pebble with HTTP-01 validation against `http_port` on the resolved address,
    /// its certificates lasting `validity_secs` (pebble's `certificateValidityPeriod`)
    /// when given.
    async fn start(http_port: u16, validity_secs: Option<u64>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (api_root, cert, key) = pebble_tls(dir.path());
        let (listen, mgmt, dns, dns_mgmt, tls) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = dir.path().join("pebble.json");
        let mut settings = json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": cert, "privateKey": key,
            "httpPort": http_port, "tlsPort": tls,
            "ocspResponderURL": "", "externalAccountBindingRequired": false,
        }});
        if let Some(secs) = validity_secs {
            settings["pebble"]["certificateValidityPeriod"] = json!(secs);
        }
        std::fs::write(&config, settings.to_string()).unwrap();
        let dns_child = tokio::process::Command::new(binary("pebble-challtestsrv"))
            .args([
                "-dns01",
                &format!("127.0.0.1:{dns}"),
                "-management",
                &format!("127.0.0.1:{dns_mgmt}"),
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pebble = tokio::process::Command::new(binary("pebble"))
            .arg("-config")
            .arg(&config)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns}"))
            // Real validation, no random sleeps, no injected bad nonces.
            .env("PEBBLE_VA_ALWAYS_VALID", "0")
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let this = Self {
            _pebble: pebble,
            _dns: dns_child,
            _dir: dir,
            directory: format!("https://127.0.0.1:{listen}/dir"),
            management: format!("https://127.0.0.1:{mgmt}"),
            dns_management: format!("http://127.0.0.1:{dns_mgmt}"),
            api_root,
        };
        // Bounded wait for both servers to answer (not an assertion on time).
        let client = this.api_client();
        for _ in 0..200 {
            let dir_up = client.get(&this.directory).send().await.is_ok();
            let dns_up = reqwest::Client::new()
                .post(format!("{}/clear-a", this.dns_management))
                .json(&json!({ "host": "warmup.test" }))
                .send()
                .await
                .is_ok();
            if dir_up && dns_up {
                return this;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pebble did not start");
    }

    /// A client that trusts only pebble's API root.
    fn api_client(&self) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(&std::fs::read(&self.api_root).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .build()
            .unwrap()
    }

    /// The root pebble issues certificates under (it makes a new one at each start).
    async fn issuing_root(&self) -> String {
        let response = self
            .api_client()
            .get(format!("{}/roots/0", self.management))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.text().await.unwrap()
    }

    /// Makes `host` resolve to loopback again (challtestsrv's default), where the platform is.
    async fn unresolve(&self, host: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/clear-a", self.dns_management))
            .json(&json!({ "host": host }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    /// Makes `host` resolve, for pebble's validation, to `address`.
    async fn resolve(&self, host: &str, address: &str) {
        let response = reqwest::Client::new()
            .post(format!("{}/add-a", self.dns_management))
            .json(&json!({ "host": host, "addresses": [address] }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

/// A TLS acceptor for the chain and its key (ring, the default protocol versions, no
/// client certificates).
fn tls_acceptor(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> tokio_rustls::TlsAcceptor {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Serves the chain and key over TLS on loopback, answering one fixed body, until dropped.
async fn tls_server(material: &Material) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(material.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes()).unwrap();
    let acceptor = tls_acceptor(chain, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let body = "served with the issued certificate";
                let _ = tls
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (addr, task)
}

/// Staff point the platform at `directory` (`PUT /v1/admin/acme`); the settings it answers.
async fn put_directory(app: &TestApp, admin: &str, directory: &str) -> Value {
    let (status, body) = app
        .request(
            Method::PUT,
            "/v1/admin/acme",
            Some(admin),
            Some(json!({ "directory": directory, "contact_email": "ops@pressdock.test" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Creates a site of `tenant` as staff (`site`: the request's body) and waits for its
/// create to succeed; the site's id.
async fn create_site(app: &TestApp, admin: &str, tenant: &str, site: Value) -> String {
    let (status, body) = app
        .post(&format!("/v1/tenants/{tenant}/sites"), admin, site)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let op = app
        .wait_operation(admin, body["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    body["site"]["id"].as_str().unwrap().to_owned()
}

/// Changes a site as staff (`PATCH`, `change`: the request's body) and waits for its
/// update to succeed.
async fn update_site(app: &TestApp, admin: &str, site: &str, change: Value) {
    let (status, body) = app
        .request(
            Method::PATCH,
            &format!("/v1/sites/{site}"),
            Some(admin),
            Some(change),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let op = app
        .wait_operation(admin, body["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");
}

/// An issuer of its own on the test server's database (what a restarted platform, or
/// another replica, runs).
fn new_issuer(app: &TestApp, config: platform::config::CertsConfig) -> Issuer {
    Issuer::new(
        app.db.clone(),
        platform::crypto::SecretBox::new(SECRET_KEY.as_bytes()),
        config,
    )
}

/// The platform's metrics page (`GET /metrics`).
async fn metrics_page(app: &TestApp) -> String {
    reqwest::get(format!("{}/metrics", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A test server and a staff token, its directory one nothing answers at: a pass that
/// tried to order would fail.
async fn dead_directory() -> (TestApp, String) {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    put_directory(&app, &admin, "https://127.0.0.1:9/dir").await;
    (app, admin)
}

async fn site_certificates(app: &TestApp, token: &str, site: &str) -> Value {
    let (status, body) = app.get(&format!("/v1/sites/{site}"), token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["certificates"].clone()
}

/// A certificate row as the issuer left it: state, consecutive failures, seconds until the
/// next attempt, the last error.
async fn row(app: &TestApp, domain: &str) -> Option<(String, i32, i64, Option<String>)> {
    sqlx::query_as(
        "SELECT state, failures, TIMESTAMPDIFF(SECOND, NOW(6), next_attempt_at), last_error \
         FROM certificates WHERE domain = ?",
    )
    .bind(domain)
    .fetch_optional(&app.db)
    .await
    .unwrap()
}

/// A held certificate's not-after (Unix seconds) and the seconds left of the row's lease
/// (its grace, for a domain no live site uses), if it has one running.
async fn grace(app: &TestApp, domain: &str) -> (Option<i64>, Option<i64>) {
    sqlx::query_as(
        "SELECT CAST(UNIX_TIMESTAMP(not_after) AS SIGNED), \
         IF(lease_until > NOW(6), TIMESTAMPDIFF(SECOND, NOW(6), lease_until), NULL) \
         FROM certificates WHERE domain = ?",
    )
    .bind(domain)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Brings the domain's next attempt to now (as if its renewal time or back-off had come).
async fn make_due(app: &TestApp, domain: &str) {
    sqlx::query("UPDATE certificates SET next_attempt_at = NOW(6) WHERE domain = ?")
        .bind(domain)
        .execute(&app.db)
        .await
        .unwrap();
}

/// Waits (bounded) until `f` gives `Some`; the issuer runs every second.
async fn eventually<T, Fut: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> Fut,
) -> T {
    for _ in 0..600 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within 60 s");
}

async fn edge_config(app: &TestApp) -> Value {
    reqwest::Client::new()
        .get(format!("{}/edge/traefik.json", app.base))
        .bearer_auth(EDGE_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The chains the edge is given, by the domain of their leaf (none without `tls`).
fn served_chains(config: &Value) -> Vec<(String, String)> {
    config["tls"]["certificates"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let chain = c["certFile"].as_str().unwrap().to_owned();
            let leaf = x509_parser::pem::parse_x509_pem(chain.as_bytes())
                .unwrap()
                .1;
            let cert = leaf.parse_x509().unwrap();
            let name = cert
                .subject_alternative_name()
                .unwrap()
                .unwrap()
                .value
                .general_names
                .iter()
                .find_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .unwrap();
            (name, chain)
        })
        .collect()
}

/// A test server issuing certificates from a pebble of its own, with a staff token, a
/// worker and a tenant (its directory not set yet: nothing is ordered until a test sets
/// it). The issuer runs every second and the edge polls every second.
struct Acme {
    app: TestApp,
    pebble: Pebble,
    admin: String,
    tenant: String,
    /// pebble's API root, which the server trusts for the directory
    /// (`certs.directory_ca_file`).
    directory_root: PathBuf,
    _trust: tempfile::TempDir,
}

impl Acme {
    /// `tenant`: the tenant's slug; `validity_secs`: how long pebble's certificates last
    /// (its default when `None`); `certs`: the test's own `[certs]` settings.
    async fn start(
        tenant: &str,
        validity_secs: Option<u64>,
        certs: impl FnOnce(&mut platform::config::CertsConfig),
    ) -> Self {
        // The platform listens first; pebble, started next, validates HTTP-01 against its
        // port.
        let trust = tempfile::tempdir().unwrap();
        let directory_root = trust.path().join("pebble-api-root.pem");
        let ca_file = directory_root.clone();
        let app = TestApp::spawn_with(|c| {
            c.certs.enabled = true;
            c.certs.interval_secs = 1;
            c.certs.edge_token = platform::config::Secret::new(EDGE_TOKEN);
            c.certs.directory_ca_file = Some(ca_file);
            c.certs.edge_poll_interval_secs = 1;
            certs(&mut c.certs);
        })
        .await;
        let port: u16 = app.base.rsplit(':').next().unwrap().parse().unwrap();
        let pebble = Pebble::start(port, validity_secs).await;
        std::fs::copy(&pebble.api_root, &directory_root).unwrap();
        let admin = app.admin_token().await;
        app.add_worker(&admin, "worker-1", 25).await;
        let tenant = app.create_tenant(&admin, tenant).await;
        Self {
            app,
            pebble,
            admin,
            tenant,
            directory_root,
            _trust: trust,
        }
    }
}

#[tokio::test]
async fn issues_through_http01_serves_and_reports_a_failing_domain() {
    // Redirects two seconds (two edge polls) after the edge first gets a certificate.
    let Acme {
        app,
        pebble,
        admin,
        tenant,
        directory_root,
        _trust,
    } = Acme::start("shop", None, |c| {
        c.order_timeout_secs = 60;
        // A failed domain is not retried within the test.
        c.retry_base_secs = 3600;
        c.challenge_upstream = Some("http://platform.internal:8080".to_owned());
    })
    .await;
    let id = random_name("s").replace('_', "");
    let good = format!("{id}.pebble.test");
    let bad = format!("bad{id}.pebble.test");
    // Nothing listens on 127.0.0.2: pebble's fetch of the challenge is refused.
    pebble.resolve(&bad, "127.0.0.2").await;

    // Staff choose the directory and contact (until then nothing is ordered).
    let body = put_directory(&app, &admin, &pebble.directory).await;
    assert_eq!(body["directory_url"], pebble.directory.as_str());
    assert_eq!(body["contact_email"], "ops@pressdock.test");

    let site = create_site(
        &app,
        &admin,
        &tenant,
        json!({ "name": "Shop", "domain": good, "aliases": [bad], "plan": "starter" }),
    )
    .await;

    // Bounded wait for both orders to finish (the issuer runs every second).
    let mut certificates = Value::Null;
    for _ in 0..600 {
        certificates = site_certificates(&app, &admin, &site).await;
        let settled = certificates
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] != "pending");
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let list = certificates.as_array().unwrap();
    assert_eq!(list.len(), 2, "{certificates}");
    assert_eq!(list[0]["domain"], good.as_str());
    assert_eq!(list[0]["state"], "valid", "{certificates}");
    assert!(
        list[0]["issuer"].as_str().unwrap().contains("Pebble"),
        "{certificates}"
    );
    assert!(list[0]["last_error"].is_null(), "{certificates}");
    let not_after: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(list[0]["not_after"].clone()).unwrap();
    let renew: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(list[0]["next_attempt_at"].clone()).unwrap();
    assert!(not_after > chrono::Utc::now() && renew < not_after);
    // The failing alias carries the ACME server's reason and does not hold back the primary.
    assert_eq!(list[1]["domain"], bad.as_str());
    assert_eq!(list[1]["state"], "failed", "{certificates}");
    let reason = list[1]["last_error"].as_str().unwrap();
    assert!(
        reason.contains("127.0.0.2") && reason.to_lowercase().contains("refused"),
        "{reason}"
    );
    assert!(list[1]["issuer"].is_null() && list[1]["not_after"].is_null());

    // At rest: the account and the certificate are sealed, not PEM or JSON in the clear.
    let (account,): (Vec<u8>,) =
        sqlx::query_as("SELECT account_sealed FROM acme_settings WHERE id = 1")
            .fetch_one(&app.db)
            .await
            .unwrap();
    let (sealed,): (Vec<u8>,) =
        sqlx::query_as("SELECT pem_sealed FROM certificates WHERE domain = ?")
            .bind(&good)
            .fetch_one(&app.db)
            .await
            .unwrap();
    for blob in [&account, &sealed] {
        assert!(!blob.windows(5).any(|w| w == b"-----" || w == b"\"key_"));
    }

    // The edge's provider: refused without the token, every valid certificate with it.
    let edge = reqwest::Client::new();
    let response = edge
        .get(format!("{}/edge/traefik.json", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let config = edge_config(&app).await;
    let served = config["tls"]["certificates"].as_array().unwrap();
    assert_eq!(served.len(), 1, "only the valid domain: {config}");
    let material = Material {
        chain_pem: served[0]["certFile"].as_str().unwrap().to_owned(),
        key_pem: served[0]["keyFile"].as_str().unwrap().to_owned(),
    };
    // The first answer that carries a certificate does not carry its redirect (a replica
    // that has not polled yet would still answer HTTPS with Traefik's default
    // certificate); a later one does, named after the site, as its own routers are (the
    // edge's counters stay the site's).
    let redirect = format!("wp_{site}-https-0");
    assert!(
        config["http"]["routers"].get(&redirect).is_none(),
        "{config}"
    );
    let config = eventually("the redirect", || async {
        let c = edge_config(&app).await;
        c["http"]["routers"].get(&redirect).is_some().then_some(c)
    })
    .await;
    assert_eq!(
        config["http"]["routers"][&redirect]["rule"],
        format!("Host(`{good}`)")
    );
    assert_eq!(
        config["http"]["middlewares"]["pd-to-https"]["redirectScheme"]["scheme"],
        "https"
    );
    assert_eq!(
        config["http"]["routers"]["pd-acme-challenge"]["rule"],
        "PathPrefix(`/.well-known/acme-challenge/`)"
    );

    // A verifying TLS client that trusts only pebble's issuing root accepts the chain for
    // the domain's name, and refuses it for another name and without that root.
    let (addr, server) = tls_server(&material).await;
    let issuing_root =
        reqwest::Certificate::from_pem(pebble.issuing_root().await.as_bytes()).unwrap();
    let verifying = |name: &str, root: Option<reqwest::Certificate>| {
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .https_only(true)
            .resolve(name, addr);
        if let Some(root) = root {
            b = b.add_root_certificate(root);
        }
        b.build().unwrap()
    };
    let body = verifying(&good, Some(issuing_root.clone()))
        .get(format!("https://{good}:{}/", addr.port()))
        .send()
        .await
        .expect("the chain verifies against pebble's root for the domain")
        .text()
        .await
        .unwrap();
    assert_eq!(body, "served with the issued certificate");
    let other = format!("other{id}.pebble.test");
    assert!(
        verifying(&other, Some(issuing_root))
            .get(format!("https://{other}:{}/", addr.port()))
            .send()
            .await
            .is_err(),
        "another name must not verify"
    );
    assert!(
        verifying(&good, None)
            .get(format!("https://{good}:{}/", addr.port()))
            .send()
            .await
            .is_err(),
        "without pebble's root the chain must not verify"
    );
    server.abort();

    // Renewal: once due (forced here; normally two thirds into the lifetime) the issuer
    // orders again and the edge gets the new certificate.
    sqlx::query("UPDATE certificates SET next_attempt_at = NOW(6) WHERE domain = ?")
        .bind(&good)
        .execute(&app.db)
        .await
        .unwrap();
    let mut renewed = None;
    for _ in 0..600 {
        let config = edge_config(&app).await;
        let chain = config["tls"]["certificates"][0]["certFile"]
            .as_str()
            .unwrap()
            .to_owned();
        if chain != material.chain_pem {
            renewed = Some(chain);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(renewed.is_some(), "the certificate was not renewed");
    let certificates = site_certificates(&app, &admin, &site).await;
    assert_eq!(certificates[0]["state"], "valid", "{certificates}");
    let renew: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(certificates[0]["next_attempt_at"].clone()).unwrap();
    assert!(renew > chrono::Utc::now(), "{certificates}");

    // The expiry metric: pebble's certificates last longer than 14 days.
    let metrics = metrics_page(&app).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "pressdock_certificates_expiring_14d 0"),
        "{metrics}"
    );

    // The account is registered once and shown without its key.
    let (status, body) = app.get("/v1/admin/acme", &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["account_registered"], true, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 6, "{body}");
    // Every order of this test is counted against the account's budget, none paused.
    assert!(body["orders_in_window"].as_u64().unwrap() >= 2, "{body}");
    assert_eq!(body["orders_per_window"], 300, "{body}");
    assert_eq!(body["rate_limited_until"], Value::Null, "{body}");

    // A restarted platform (a new issuer on the same database) orders nothing it holds.
    let again = new_issuer(
        &app,
        platform::config::CertsConfig {
            directory_ca_file: Some(directory_root.clone()),
            ..Default::default()
        },
    );
    let report = again.run_pass().await.unwrap();
    assert!(
        report.issued.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    assert_eq!(
        store::for_edge(
            &app.db,
            &platform::crypto::SecretBox::new(SECRET_KEY.as_bytes()),
            Duration::ZERO,
        )
        .await
        .unwrap()
        .len(),
        1
    );

    // A renewal that fails keeps the held certificate served, says why, and is retried
    // after the back-off; once the domain answers again it is renewed and the error goes.
    pebble.resolve(&good, "127.0.0.2").await;
    let held = served_chains(&edge_config(&app).await);
    make_due(&app, &good).await;
    let (state, failures, wait, error) = eventually("a failed renewal", || async {
        row(&app, &good).await.filter(|r| r.1 == 1)
    })
    .await;
    assert_eq!(state, "valid", "a held certificate stays valid");
    assert!(
        (3590..=3600).contains(&wait),
        "retried after an hour: {wait}"
    );
    assert!(error.unwrap().contains("127.0.0.2"));
    assert_eq!(failures, 1);
    assert_eq!(served_chains(&edge_config(&app).await), held);
    let shown = site_certificates(&app, &admin, &site).await;
    assert_eq!(shown[0]["state"], "valid", "{shown}");
    assert!(
        shown[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.2"),
        "{shown}"
    );
    pebble.unresolve(&good).await;
    make_due(&app, &good).await;
    let (state, failures, _, error) = eventually("the renewal after the failure", || async {
        row(&app, &good).await.filter(|r| r.1 == 0)
    })
    .await;
    assert_eq!((state.as_str(), error), ("valid", None));
    assert_eq!(failures, 0);
    assert_ne!(served_chains(&edge_config(&app).await), held);

    // The failing alias is retried on its schedule, the back-off doubling (an hour, then
    // two), until its name points at us: then it is issued, and the edge serves both.
    let (state, failures, wait, _) = row(&app, &bad).await.unwrap();
    assert_eq!((state.as_str(), failures), ("failed", 1));
    assert!((0..=3600).contains(&wait), "{wait}");
    make_due(&app, &bad).await;
    let (state, _, wait, error) = eventually("the second failure", || async {
        row(&app, &bad).await.filter(|r| r.1 == 2)
    })
    .await;
    assert_eq!(state, "failed");
    assert!((7190..=7200).contains(&wait), "two hours: {wait}");
    assert!(error.unwrap().contains("127.0.0.2"));
    pebble.unresolve(&bad).await;
    make_due(&app, &bad).await;
    eventually("the alias issued", || async {
        row(&app, &bad).await.filter(|r| r.0 == "valid")
    })
    .await;
    let names: Vec<String> = served_chains(&edge_config(&app).await)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&good) && names.contains(&bad), "{names:?}");

    // A domain removed from its site is neither served nor renewed, but keeps its row (its
    // certificate) for its grace (`certs.unused_grace_secs`, a day); added to another site
    // within it, it is served there with the certificate it held (not ordered again: no
    // rate limit spent) and routed as that site's.
    let (held_until, _) = grace(&app, &bad).await;
    update_site(&app, &admin, &site, json!({ "aliases": [] })).await;
    let left = eventually("the removed alias in its grace", || async {
        let (_, lease) = grace(&app, &bad).await;
        lease.filter(|secs| *secs > 86_000)
    })
    .await;
    assert!(left <= 86_400, "a day's grace: {left}");
    assert!(
        store::due(&app.db, 100)
            .await
            .unwrap()
            .iter()
            .all(|d| *d != bad),
        "a domain in its grace is not ordered"
    );
    let config = edge_config(&app).await;
    assert_eq!(served_chains(&config).len(), 1, "{config}");
    assert!(!config.to_string().contains(&bad), "{config}");
    let certificates = site_certificates(&app, &admin, &site).await;
    assert_eq!(certificates.as_array().unwrap().len(), 1, "{certificates}");

    let other_domain = format!("b{id}.pebble.test");
    let other = create_site(
        &app,
        &admin,
        &tenant,
        json!({ "name": "Other", "domain": other_domain, "aliases": [bad], "plan": "starter" }),
    )
    .await;
    let moved = eventually("the moved alias served on its new site", || async {
        let c = site_certificates(&app, &admin, &other).await;
        c.as_array()
            .unwrap()
            .iter()
            .all(|c| c["state"] == "valid")
            .then_some(c)
    })
    .await;
    assert_eq!(moved[1]["domain"], bad.as_str(), "{moved}");
    assert_eq!(
        grace(&app, &bad).await,
        (held_until, None),
        "the moved alias keeps the certificate it held, its grace over"
    );
    // The edge was not given it while no site had it: it starts over, its certificate
    // served at once and its redirect once every replica has it.
    let config = edge_config(&app).await;
    assert_eq!(served_chains(&config).len(), 3, "{config}");
    let routers = |config: &Value| -> Vec<String> {
        config["http"]["routers"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, r)| r["rule"] == format!("Host(`{bad}`)"))
            .map(|(name, _)| name.clone())
            .collect()
    };
    assert!(routers(&config).is_empty(), "{config}");
    let routed = eventually("the moved alias's redirect", || async {
        let r = routers(&edge_config(&app).await);
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(routed.len(), 1, "{routed:?}");
    assert!(
        routed[0].starts_with(&format!("wp_{other}-https-")),
        "{config}"
    );

    // Its grace over with no site using it, the row goes.
    update_site(&app, &admin, &other, json!({ "aliases": [] })).await;
    eventually("the alias in its grace again", || async {
        grace(&app, &bad).await.1
    })
    .await;
    sqlx::query("UPDATE certificates SET lease_until = NOW(6) WHERE domain = ?")
        .bind(&bad)
        .execute(&app.db)
        .await
        .unwrap();
    eventually("the row gone once its grace is over", || async {
        row(&app, &bad).await.is_none().then_some(())
    })
    .await;

    // A new directory (staging to production) makes what the old one issued due at once;
    // the held certificate stays served until its replacement is issued.
    let sealed_now = || async {
        let (nonce,): (Vec<u8>,) =
            sqlx::query_as("SELECT pem_nonce FROM certificates WHERE domain = ?")
                .bind(&good)
                .fetch_one(&app.db)
                .await
                .unwrap();
        nonce
    };
    let held = served_chains(&edge_config(&app).await);
    let held_nonce = sealed_now().await;
    // Nothing answers there: no account, so nothing is ordered while it is set.
    put_directory(&app, &admin, "https://127.0.0.1:9/dir").await;
    let (state, failures, wait, _) = row(&app, &good).await.unwrap();
    assert_eq!((state.as_str(), failures), ("valid", 0));
    assert!(wait <= 0, "due at once, not in {wait} s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(served_chains(&edge_config(&app).await), held);
    assert_eq!(
        sealed_now().await,
        held_nonce,
        "nothing issued by a dead directory"
    );
    put_directory(&app, &admin, &pebble.directory).await;
    eventually(
        "the certificate issued again by the directory now set",
        || async { (sealed_now().await != held_nonce).then_some(()) },
    )
    .await;
    let now = row(&app, &good).await.unwrap();
    let certificates = site_certificates(&app, &admin, &site).await;
    assert_eq!(
        (now.0.as_str(), now.1, now.3.as_deref()),
        ("valid", 0, None),
        "{now:?} {certificates}"
    );
    assert!(now.2 > 0, "not due again: {now:?} {certificates}");
    assert_ne!(
        served_chains(&edge_config(&app).await),
        held,
        "the new one is served"
    );

    // The expiry metric counts a certificate within 14 days of its end.
    sqlx::query("UPDATE certificates SET not_after = NOW(6) + INTERVAL 13 DAY WHERE domain = ?")
        .bind(&good)
        .execute(&app.db)
        .await
        .unwrap();
    eventually("the expiry metric at 1", || async {
        metrics_page(&app)
            .await
            .lines()
            .any(|l| l == "pressdock_certificates_expiring_14d 1")
            .then_some(())
    })
    .await;

    app.finish().await;
}

/// Whether `config` redirects `domain` to HTTPS on `web`, and whether it adds HSTS for it
/// on `websecure`.
fn redirect_and_hsts(config: &Value, domain: &str) -> (bool, bool) {
    let rule = format!("Host(`{domain}`)");
    let Some(routers) = config["http"]["routers"].as_object() else {
        return (false, false);
    };
    let routed = |entrypoint: &str, middleware: &str| {
        routers.values().any(|r| {
            r["rule"] == rule.as_str()
                && r["entryPoints"][0] == entrypoint
                && r["middlewares"][0] == middleware
        })
    };
    (routed("web", "pd-to-https"), routed("websecure", "pd-hsts"))
}

/// The row's `served_since`, and how long ago that was (microseconds, the database's clock).
async fn served_since(
    app: &TestApp,
    domain: &str,
) -> (Option<chrono::DateTime<chrono::Utc>>, Option<i64>) {
    sqlx::query_as(
        "SELECT served_since, TIMESTAMPDIFF(MICROSECOND, served_since, NOW(6)) \
         FROM certificates WHERE domain = ?",
    )
    .bind(domain)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

/// Traefik replicas poll the provider each at its own moment, so a new certificate reaches
/// them up to a poll apart. The provider gives the edge a new certificate at once, but its
/// redirect to HTTPS (and HSTS) only once the edge has had it for longer than two polls
/// (`certs.edge_poll_interval_secs`, 1 s here): no replica sends a visitor to HTTPS while
/// another still answers with Traefik's default certificate. A renewal keeps the redirect;
/// a break (the edge not given the certificate, here because it expired) starts over.
#[tokio::test]
async fn a_new_certificate_is_served_at_once_and_redirected_to_once_every_replica_has_it() {
    /// Two polls of 1 s.
    const SETTLE_MICROS: i64 = 2_000_000;
    let Acme {
        app,
        pebble,
        admin,
        tenant,
        _trust,
        ..
    } = Acme::start("fresh", None, |c| {
        c.order_timeout_secs = 60;
        c.https_service = Some("pd-cache@file".to_owned());
        c.challenge_upstream = Some("http://platform.internal:8080".to_owned());
    })
    .await;
    put_directory(&app, &admin, &pebble.directory).await;
    let domain = format!("{}.pebble.test", random_name("n").replace('_', ""));
    let site = create_site(
        &app,
        &admin,
        &tenant,
        json!({ "name": "Fresh", "domain": domain, "plan": "starter", "hsts": true }),
    )
    .await;
    eventually("the certificate", || async {
        let c = site_certificates(&app, &admin, &site).await;
        (c[0]["state"] == "valid").then_some(())
    })
    .await;
    let names = |config: &Value| -> Vec<String> {
        served_chains(config)
            .into_iter()
            .map(|(name, _)| name)
            .collect()
    };

    // Right after issuance: the certificate, neither the redirect nor HSTS.
    let first = edge_config(&app).await;
    assert_eq!(names(&first), [domain.as_str()], "{first}");
    assert_eq!(
        redirect_and_hsts(&first, &domain),
        (false, false),
        "{first}"
    );
    assert_eq!(
        first["http"]["routers"]["pd-acme-challenge"]["entryPoints"][0], "web",
        "{first}"
    );
    let (since, _) = served_since(&app, &domain).await;
    assert!(since.is_some(), "the first answer that carries it sets it");

    // Two polls later, by nothing but time: the redirect and HSTS, together.
    let settled = eventually("the redirect", || async {
        let c = edge_config(&app).await;
        redirect_and_hsts(&c, &domain).0.then_some(c)
    })
    .await;
    assert_eq!(
        redirect_and_hsts(&settled, &domain),
        (true, true),
        "{settled}"
    );
    assert_eq!(
        settled["http"]["middlewares"]["pd-to-https"]["redirectScheme"]["scheme"],
        "https"
    );
    let (again, ago) = served_since(&app, &domain).await;
    assert_eq!(again, since, "set once, by the first answer");
    assert!(
        ago.unwrap() > SETTLE_MICROS,
        "redirected before two polls had passed: {ago:?} µs"
    );

    // A renewal replaces the chain; every answer meanwhile keeps the redirect and HSTS.
    let held = served_chains(&settled);
    make_due(&app, &domain).await;
    let renewed = eventually("the renewed certificate", || async {
        let c = edge_config(&app).await;
        assert_eq!(
            redirect_and_hsts(&c, &domain),
            (true, true),
            "a renewal must not take the redirect away: {c}"
        );
        (served_chains(&c) != held).then_some(c)
    })
    .await;
    assert_eq!(names(&renewed), [domain.as_str()], "{renewed}");
    assert_eq!(redirect_and_hsts(&renewed, &domain), (true, true));
    assert_eq!(
        served_since(&app, &domain).await.0,
        since,
        "kept by the renewal"
    );

    // A break: once an answer leaves the certificate out (expired here), it starts over.
    let (not_after,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("SELECT not_after FROM certificates WHERE domain = ?")
            .bind(&domain)
            .fetch_one(&app.db)
            .await
            .unwrap();
    let set_not_after = |at: chrono::DateTime<chrono::Utc>| {
        let (db, domain) = (app.db.clone(), domain.clone());
        async move {
            sqlx::query("UPDATE certificates SET not_after = ? WHERE domain = ?")
                .bind(at)
                .bind(domain)
                .execute(&db)
                .await
                .unwrap();
        }
    };
    set_not_after(chrono::Utc::now() - chrono::Duration::seconds(1)).await;
    let gone = edge_config(&app).await;
    assert!(names(&gone).is_empty(), "{gone}");
    assert_eq!(redirect_and_hsts(&gone, &domain), (false, false), "{gone}");
    assert_eq!(served_since(&app, &domain).await.0, None);
    set_not_after(not_after).await;
    let back = edge_config(&app).await;
    assert_eq!(names(&back), [domain.as_str()], "{back}");
    assert_eq!(redirect_and_hsts(&back, &domain), (false, false), "{back}");
    eventually("the redirect after the break", || async {
        redirect_and_hsts(&edge_config(&app).await, &domain)
            .0
            .then_some(())
    })
    .await;
    app.finish().await;
}

/// One order per domain at a time across platform replicas: the lease on the row is
/// taken by one of many concurrent takers, refused while it runs, free again once given
/// back or expired (a replica that died mid-order), and never on a domain not yet due.
#[tokio::test]
async fn one_order_per_domain_at_a_time() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "INSERT INTO certificates (domain, state, next_attempt_at) VALUES \
         ('due.lease.test', 'pending', NOW(6)), \
         ('later.lease.test', 'pending', NOW(6) + INTERVAL 1 HOUR)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let takers: Vec<_> = (0..8)
        .map(|_| {
            let db = app.db.clone();
            tokio::spawn(async move { store::lease(&db, "due.lease.test", 600).await.unwrap() })
        })
        .collect();
    let mut taken = 0;
    for t in takers {
        taken += usize::from(t.await.unwrap());
    }
    assert_eq!(taken, 1, "exactly one replica orders");
    assert!(store::due(&app.db, 10).await.unwrap().is_empty());
    assert!(!store::lease(&app.db, "due.lease.test", 600).await.unwrap());
    assert!(
        !store::lease(&app.db, "later.lease.test", 600)
            .await
            .unwrap()
    );
    store::release(&app.db, "due.lease.test").await.unwrap();
    assert_eq!(
        store::due(&app.db, 10).await.unwrap(),
        ["due.lease.test".to_owned()]
    );
    // A lease that ran out (its holder died) is taken over.
    assert!(store::lease(&app.db, "due.lease.test", 0).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store::lease(&app.db, "due.lease.test", 600).await.unwrap());
    app.finish().await;
}

#[tokio::test]
async fn acme_settings_are_validated_and_staff_only() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let (status, body) = app.get("/v1/admin/acme", &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "directory_url": null, "contact_email": null, "account_registered": false,
            "rate_limited_until": null, "orders_in_window": 0, "orders_per_window": 300,
        })
    );
    let (status, body) = app
        .request(
            Method::PUT,
            "/v1/admin/acme",
            Some(&admin),
            Some(json!({ "directory": "http://acme.test/dir", "contact_email": "nope" })),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["directory", "contact_email"], "{body}");
    let (status, body) = app
        .request(
            Method::PUT,
            "/v1/admin/acme",
            Some(&admin),
            Some(
                json!({ "directory": "letsencrypt-staging", "contact_email": "Ops@Example.test" }),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "directory_url": platform::certs::LETS_ENCRYPT_STAGING,
            "contact_email": "ops@example.test",
            "account_registered": false,
            "rate_limited_until": null,
            "orders_in_window": 0,
            "orders_per_window": 300,
        })
    );
    // Operators read, only admins change; tenants see neither.
    let operator = app.staff_with_role(&admin, "operator").await;
    let (status, _) = app.get("/v1/admin/acme", &operator).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .request(
            Method::PUT,
            "/v1/admin/acme",
            Some(&operator),
            Some(json!({ "directory": "letsencrypt", "contact_email": "a@b.test" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let tenant = app.create_tenant(&admin, "acme-co").await;
    let (owner, _) = app.user_with_role(&admin, &tenant, "owner").await;
    let (status, body) = app.get("/v1/admin/acme", &owner).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["status"], 403, "{body}");
    // The change is audited.
    let (status, body) = app.get("/v1/audit", &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "acme.settings"),
        "{body}"
    );
    // The edge provider is off without a token, and the challenge route knows no token.
    let (status, _) = app
        .request(Method::GET, "/edge/traefik.json", None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .request(
            Method::GET,
            "/.well-known/acme-challenge/LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0",
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["status"], 404, "{body}");
    app.finish().await;
}

/// A Traefik of our own in front of `origin`: `websecure` on a free port terminates TLS with
/// whatever certificate the platform's provider gives it (polled every second), as every
/// edge replica does. Killed when dropped.
struct EdgeTraefik {
    child: std::process::Child,
    websecure: u16,
    _dir: tempfile::TempDir,
}

impl Drop for EdgeTraefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl EdgeTraefik {
    fn start(app: &TestApp, origin: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let dynamic = dir.path().join("dynamic");
        std::fs::create_dir(&dynamic).unwrap();
        std::fs::write(
            dynamic.join("routes.yml"),
            format!(
                "http:\n  routers:\n    sites:\n      rule: PathPrefix(`/`)\n      entryPoints: [websecure]\n      service: origin\n      tls: {{}}\n  services:\n    origin:\n      loadBalancer:\n        servers:\n          - url: http://127.0.0.1:{origin}\n"
            ),
        )
        .unwrap();
        let (web, websecure) = (free_port(), free_port());
        let config = dir.path().join("traefik.yml");
        std::fs::write(
            &config,
            format!(
                "entryPoints:\n  web:\n    address: 127.0.0.1:{web}\n  websecure:\n    address: 127.0.0.1:{websecure}\nproviders:\n  file:\n    directory: {}\n  http:\n    endpoint: {}/edge/traefik.json\n    pollInterval: 1s\n    headers:\n      Authorization: Bearer {EDGE_TOKEN}\nlog:\n  level: ERROR\n",
                dynamic.display(),
                app.base
            ),
        )
        .unwrap();
        let child = std::process::Command::new("traefik")
            .arg(format!("--configFile={}", config.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting traefik (scripts/install-deps.sh installs it): {e}")
            });
        Self {
            child,
            websecure,
            _dir: dir,
        }
    }
}

/// Requests `url` until `stop`, each answer checked (200, the origin's body naming the
/// domain, over a chain that verified); returns (requests, failures, the distinct leaf
/// certificates in the order first seen).
async fn steady_load(
    client: reqwest::Client,
    url: String,
    expected: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<String>, Vec<Vec<u8>>) {
    let (mut requests, mut failures, mut leaves) = (0u64, Vec::new(), Vec::<Vec<u8>>::new());
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        requests += 1;
        match client.get(&url).send().await {
            Ok(r) => {
                let leaf = r
                    .extensions()
                    .get::<reqwest::tls::TlsInfo>()
                    .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec));
                let status = r.status();
                match (status, r.text().await, leaf) {
                    (StatusCode::OK, Ok(body), Some(leaf)) if body == expected => {
                        if !leaves.contains(&leaf) {
                            leaves.push(leaf);
                        }
                    }
                    (status, body, leaf) => failures.push(format!(
                        "HTTP {status}: {body:?}, a leaf: {}",
                        leaf.is_some()
                    )),
                }
            }
            Err(e) => failures.push(format!("{e:?}")),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (requests, failures, leaves)
}

/// Renewal forced by a short-lived certificate (pebble's certificates last 24 s here): at
/// two thirds of its lifetime the platform orders a new one and a real Traefik, polling
/// the platform's provider, swaps it in while clients keep requesting over HTTPS, new
/// connections and kept-alive ones. Every answer is checked; none may fail.
#[tokio::test]
async fn a_short_lived_certificate_is_renewed_at_the_edge_under_load_with_no_failed_request() {
    const VALIDITY_SECS: u64 = 24;
    // The edge polls every second, as often as its Traefik does (EdgeTraefik).
    let Acme {
        app,
        pebble,
        admin,
        tenant,
        _trust,
        ..
    } = Acme::start("short", Some(VALIDITY_SECS), |c| {
        c.order_timeout_secs = 30;
        c.retry_base_secs = 1;
        c.retry_max_secs = 2;
    })
    .await;
    put_directory(&app, &admin, &pebble.directory).await;
    let domain = format!("{}.pebble.test", random_name("r").replace('_', ""));
    let site = create_site(
        &app,
        &admin,
        &tenant,
        json!({ "name": "Site", "domain": domain, "plan": "starter" }),
    )
    .await;
    let first = eventually("the certificate", || async {
        let c = site_certificates(&app, &admin, &site).await;
        (c[0]["state"] == "valid").then(|| c[0].clone())
    })
    .await;
    let not_after: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(first["not_after"].clone()).unwrap();
    let renew_at: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(first["next_attempt_at"].clone()).unwrap();
    assert!(not_after <= chrono::Utc::now() + chrono::Duration::seconds(VALIDITY_SECS as i64));
    let third = (not_after - renew_at).num_seconds();
    assert!(
        (7..=8).contains(&third),
        "due a third of the lifetime before the end: {first}"
    );

    let origin = {
        let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("");
            format!("hello from {}", host.split(':').next().unwrap_or(""))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    };
    let traefik = EdgeTraefik::start(&app, origin);
    let root = reqwest::Certificate::from_pem(pebble.issuing_root().await.as_bytes()).unwrap();
    let edge = SocketAddr::from(([127, 0, 0, 1], traefik.websecure));
    let client = |fresh: bool| {
        let mut b = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root.clone())
            .tls_info(true)
            .timeout(Duration::from_secs(10))
            .resolve(&domain, edge);
        if fresh {
            b = b.pool_max_idle_per_host(0);
        }
        b.build().unwrap()
    };
    let url = format!("https://{domain}:{}/", traefik.websecure);
    let expected = format!("hello from {domain}");
    // Traefik up with the certificate (a bounded wait).
    let old_leaf = eventually("Traefik serving the certificate", || async {
        let r = client(true).get(&url).send().await.ok()?;
        let leaf = r
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))?;
        (r.text().await.ok()? == expected).then_some(leaf)
    })
    .await;

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = [true, true, false, false]
        .into_iter()
        .map(|fresh| {
            tokio::spawn(steady_load(
                client(fresh),
                url.clone(),
                expected.clone(),
                stop.clone(),
            ))
        })
        .collect();
    // Until the edge serves the renewed certificate, then a second more.
    let renewed_chain = eventually("the renewed certificate at the edge", || async {
        let config = edge_config(&app).await;
        let (_, chain) = served_chains(&config).into_iter().next()?;
        let r = client(true).get(&url).send().await.ok()?;
        let leaf = r
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|i| i.peer_certificate().map(<[u8]>::to_vec))?;
        (leaf != old_leaf).then_some(chain)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut requests, mut failures, mut leaves) = (0, Vec::new(), Vec::new());
    for w in workers {
        let (n, f, l) = w.await.unwrap();
        requests += n;
        failures.extend(f);
        for leaf in l {
            if !leaves.contains(&leaf) {
                leaves.push(leaf);
            }
        }
    }
    println!(
        "renewal under load: {requests} requests, {} failed, {} certificates served",
        failures.len(),
        leaves.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {requests} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(requests >= 50, "{requests}");
    assert!(
        leaves.len() >= 2 && leaves[0] == old_leaf,
        "{} leaves",
        leaves.len()
    );
    let renewed = site_certificates(&app, &admin, &site).await;
    assert_eq!(renewed[0]["state"], "valid", "{renewed}");
    assert!(renewed[0]["last_error"].is_null(), "{renewed}");
    let later: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(renewed[0]["not_after"].clone()).unwrap();
    assert!(later > not_after, "{renewed}");
    assert!(!renewed_chain.is_empty());
    drop(traefik);
    app.finish().await;
}

/// The account's budget of new orders: a rolling window counted in the database, shared by
/// replicas (many concurrent takers charge exactly the budget), records older than the
/// window no longer count. Over it a pass orders nothing (the due domains wait, unleased).
#[tokio::test]
async fn new_orders_keep_the_accounts_budget() {
    let (app, admin) = dead_directory().await;
    let takers: Vec<_> = (0..8)
        .map(|i| {
            let db = app.db.clone();
            tokio::spawn(async move {
                store::charge_order(&db, &format!("d{i}.budget.test"), 5, 3600)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut charged = 0;
    for t in takers {
        match t.await.unwrap() {
            store::Charge::Charged => charged += 1,
            store::Charge::Spent => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(charged, 5, "the budget holds across concurrent replicas");
    assert_eq!(store::orders_in_window(&app.db, 3600).await.unwrap(), 5);
    assert_eq!(
        store::charge_order(&app.db, "more.budget.test", 5, 3600)
            .await
            .unwrap(),
        store::Charge::Spent
    );
    let (status, body) = app.get("/v1/admin/acme", &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["orders_in_window"], 5, "{body}");

    // Orders placed two hours ago are outside a one-hour window (and dropped), not a
    // three-hour one.
    sqlx::query(
        "UPDATE rate_limits SET window_start = window_start - INTERVAL 2 HOUR \
         WHERE bucket LIKE 'acme/order/%'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(store::orders_in_window(&app.db, 3 * 3600).await.unwrap(), 5);
    assert_eq!(store::orders_in_window(&app.db, 3600).await.unwrap(), 0);
    assert_eq!(
        store::charge_order(&app.db, "more.budget.test", 5, 3600)
            .await
            .unwrap(),
        store::Charge::Charged
    );
    let kept: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM rate_limits WHERE bucket LIKE 'acme/order/%'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(kept, 1, "records older than the window are dropped");

    // Over the budget, a pass orders nothing: the domain of a live site stays pending,
    // charged nothing.
    live_domain(&app, &admin, "budgetsite", "due.budget.test").await;
    let spent = Issuer::new(
        app.db.clone(),
        platform::crypto::SecretBox::new(SECRET_KEY.as_bytes()),
        platform::config::CertsConfig {
            orders_per_window: 1,
            order_window_secs: 3600,
            ..Default::default()
        },
    );
    let report = spent.run_pass().await.unwrap();
    assert_eq!(report.added, 1, "{report:?}");
    assert!(report.over_budget, "{report:?}");
    assert!(
        report.issued.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let (state, failures, _, last_error) = row(&app, "due.budget.test").await.unwrap();
    assert_eq!((state.as_str(), failures, last_error), ("pending", 0, None));
    assert_eq!(
        store::due(&app.db, 10).await.unwrap(),
        ["due.budget.test".to_owned()]
    );
    // Within the budget the same pass goes on to the directory (which answers nothing).
    let within = Issuer::new(
        app.db.clone(),
        platform::crypto::SecretBox::new(SECRET_KEY.as_bytes()),
        platform::config::CertsConfig::default(),
    );
    within
        .run_pass()
        .await
        .expect_err("the directory answers nothing");
    app.finish().await;
}

/// Over the budget, the renewals of the certificates that expire soonest go first, then
/// the domains without one, the longest waiting first.
#[tokio::test]
async fn renewals_expiring_soonest_are_ordered_first() {
    let app = TestApp::spawn().await;
    sqlx::query(
        "INSERT INTO certificates (domain, state, not_after, next_attempt_at) VALUES \
         ('new.order.test', 'pending', NULL, NOW(6) - INTERVAL 2 DAY), \
         ('later.order.test', 'valid', NOW(6) + INTERVAL 20 DAY, NOW(6) - INTERVAL 3 DAY), \
         ('soon.order.test', 'valid', NOW(6) + INTERVAL 5 DAY, NOW(6) - INTERVAL 1 DAY), \
         ('failed.order.test', 'failed', NULL, NOW(6) - INTERVAL 1 HOUR)",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(
        store::due(&app.db, 10).await.unwrap(),
        [
            "soon.order.test",
            "later.order.test",
            "new.order.test",
            "failed.order.test"
        ]
    );
    assert_eq!(
        store::due(&app.db, 1).await.unwrap(),
        ["soon.order.test".to_owned()]
    );
    app.finish().await;
}

/// A `rateLimited` answer (here its handling, as the issuer does when an order gets one:
/// pebble does not rate-limit) pauses every new order of the account until its
/// `Retry-After`: recorded in the database (a restarted platform keeps it), shown on the
/// domain and to staff, and lifted by a new directory (a new account).
#[tokio::test]
async fn a_rate_limited_answer_pauses_every_new_order() {
    let (app, admin) = dead_directory().await;
    sqlx::query(
        "INSERT INTO certificates (domain, state, next_attempt_at) VALUES \
         ('limited.pause.test', 'pending', NOW(6)), ('other.pause.test', 'pending', NOW(6))",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let config = platform::config::CertsConfig {
        rate_limited_default_secs: 3600,
        ..Default::default()
    };
    let issuer = new_issuer(&app, config.clone());
    // No Retry-After was answered: the default hour.
    let until = issuer
        .rate_limited(
            "limited.pause.test",
            "urn:ietf:params:acme:error:rateLimited: too many new orders",
        )
        .await
        .unwrap();
    assert!(
        until > chrono::Utc::now() + chrono::Duration::minutes(50),
        "{until}"
    );
    let (state, failures, wait, last_error) = row(&app, "limited.pause.test").await.unwrap();
    assert_eq!((state.as_str(), failures), ("failed", 0));
    assert!(wait > 50 * 60, "the domain waits for the pause: {wait}");
    let last_error = last_error.unwrap();
    let shown = format!(
        "rate limited by the ACME server until {}: urn:ietf:params:acme:error:rateLimited: too many new orders",
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    assert_eq!(last_error, shown);
    assert_eq!(store::paused_until(&app.db).await.unwrap(), Some(until));
    assert_eq!(
        store::charge_order(&app.db, "other.pause.test", 300, 3600)
            .await
            .unwrap(),
        store::Charge::Paused(until)
    );
    // A shorter pause asked later does not shorten it.
    assert_eq!(store::pause_orders(&app.db, 60).await.unwrap(), until);

    // Staff see it.
    let (status, body) = app.get("/v1/admin/acme", &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let shown_until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(body["rate_limited_until"].clone()).unwrap();
    assert_eq!(shown_until, until, "{body}");
    assert_eq!(body["orders_in_window"], 0, "{body}");

    // A restarted platform (a new issuer on the same database) orders nothing meanwhile:
    // the other due domain waits untouched, and no account is asked for (the directory
    // answers nothing, which would fail the pass).
    let again = new_issuer(&app, config);
    let report = again.run_pass().await.unwrap();
    assert_eq!(report.paused_until, Some(until), "{report:?}");
    assert!(
        report.issued.is_empty() && report.failed.is_empty(),
        "{report:?}"
    );
    let (state, failures, _, last_error) = row(&app, "other.pause.test").await.unwrap();
    assert_eq!((state.as_str(), failures, last_error), ("pending", 0, None));

    // A new directory is a new account: its orders do not wait for the old one's pause.
    put_directory(&app, &admin, "letsencrypt-staging").await;
    assert_eq!(store::paused_until(&app.db).await.unwrap(), None);
    let (_, body) = app.get("/v1/admin/acme", &admin).await;
    assert_eq!(body["rate_limited_until"], Value::Null, "{body}");
    app.finish().await;
}

/// An ACME directory over HTTPS that registers any account and answers every new order
/// `rateLimited` with `Retry-After: 120` (pebble does not rate-limit): its URL, the root
/// its HTTPS chains to, how many new orders it was sent, and its task.
async fn rate_limiting_directory(
    dir: &Path,
) -> (
    String,
    PathBuf,
    Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let (root, cert, key) = pebble_tls(dir);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let acceptor = tls_acceptor(chain, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let orders = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = orders.clone();
    let served = base.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, base, orders) = (acceptor.clone(), served.clone(), counted.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                // One request per connection: its head, then its body (ignored).
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                let head_end = loop {
                    let Ok(n) = tls.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&request[..head_end]).to_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse().unwrap());
                while request.len() < head_end + length {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let (status, headers, body) = match path.as_str() {
                    "/dir" => (
                        "200 OK",
                        "content-type: application/json\r\n".to_owned(),
                        json!({
                            "newNonce": format!("{base}/nonce"),
                            "newAccount": format!("{base}/account"),
                            "newOrder": format!("{base}/order"),
                        })
                        .to_string(),
                    ),
                    "/account" => (
                        "201 Created",
                        format!("content-type: application/json\r\nlocation: {base}/account/1\r\n"),
                        json!({ "status": "valid" }).to_string(),
                    ),
                    "/order" => {
                        orders.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        (
                            "429 Too Many Requests",
                            "content-type: application/problem+json\r\nretry-after: 120\r\n"
                                .to_owned(),
                            json!({
                                "type": "urn:ietf:params:acme:error:rateLimited",
                                "detail": "too many new orders (300) from this account in the last 3h0m0s",
                                "status": 429,
                            })
                            .to_string(),
                        )
                    }
                    _ => ("200 OK", String::new(), String::new()),
                };
                let _ = tls
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\n{headers}replay-nonce: nonce{}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            rand_nonce(),
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("{base}/dir"), root, orders, task)
}

fn rand_nonce() -> String {
    random_name("n").replace('_', "")
}

/// A live site's domain, straight in the tables (no provisioning needed by the issuer).
async fn live_domain(app: &TestApp, admin: &str, site: &str, domain: &str) {
    let tenant = app.create_tenant(admin, site).await;
    let plan: String = sqlx::query_scalar("SELECT id FROM plans WHERE slug = 'starter'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sites (id, tenant_id, name, plan_id, state, primary_domain) \
         VALUES (?, ?, 'Site', ?, 'active', ?)",
    )
    .bind(site)
    .bind(&tenant)
    .bind(&plan)
    .bind(domain)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO domains (domain, site_id, is_primary) VALUES (?, ?, 1)")
        .bind(domain)
        .bind(site)
        .execute(&app.db)
        .await
        .unwrap();
}

/// The whole path of a `rateLimited` answer with its `Retry-After` header (120 s here, not
/// the default hour): the issuer reads the header, pauses every new order until then,
/// shows it on the domain, and sends no new order while the pause lasts.
#[tokio::test]
async fn a_rate_limited_order_is_paused_until_its_retry_after() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let tls = tempfile::tempdir().unwrap();
    let (directory, root, orders, _server) = rate_limiting_directory(tls.path()).await;
    put_directory(&app, &admin, &directory).await;
    live_domain(&app, &admin, "limitsite1", "limited.retry.test").await;
    live_domain(&app, &admin, "limitsite2", "other.retry.test").await;
    let issuer = new_issuer(
        &app,
        platform::config::CertsConfig {
            directory_ca_file: Some(root),
            rate_limited_default_secs: 3600,
            ..Default::default()
        },
    );
    let before = chrono::Utc::now();
    let report = issuer.run_pass().await.unwrap();
    assert_eq!(report.added, 2, "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    let until = report.paused_until.expect("paused");
    // The header's two minutes, not the default hour.
    assert!(
        until > before + chrono::Duration::seconds(100)
            && until < before + chrono::Duration::minutes(30),
        "{until}"
    );
    assert_eq!(orders.load(std::sync::atomic::Ordering::SeqCst), 1);
    let limited = &report.failed[0];
    let (state, failures, _, last_error) = row(&app, limited).await.unwrap();
    assert_eq!((state.as_str(), failures), ("failed", 0));
    let last_error = last_error.unwrap();
    assert!(
        last_error.starts_with(&format!(
            "rate limited by the ACME server until {}: ",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )) && last_error.contains("too many new orders (300)"),
        "{last_error}"
    );
    // The other domain was not ordered: it waits, pending, with no error.
    let other = if limited == "limited.retry.test" {
        "other.retry.test"
    } else {
        "limited.retry.test"
    };
    let (state, failures, _, last_error) = row(&app, other).await.unwrap();
    assert_eq!((state.as_str(), failures, last_error), ("pending", 0, None));
    // The next pass sends nothing.
    let report = issuer.run_pass().await.unwrap();
    assert_eq!(report.paused_until, Some(until), "{report:?}");
    assert_eq!(orders.load(std::sync::atomic::Ordering::SeqCst), 1);
    let (_, body) = app.get("/v1/admin/acme", &admin).await;
    assert_eq!(body["account_registered"], true, "{body}");
    assert_eq!(body["orders_in_window"], 1, "{body}");
    app.finish().await;
}

//! The renewal loop: orders certificates from the staff-chosen ACME directory with
//! `instant-acme`, one domain per order, HTTP-01 answered through [`super::edge`].

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client as HyperClient, connect::HttpConnector},
    rt::TokioExecutor,
};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, BodyWrapper, BytesResponse, ChallengeType,
    HttpClient, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use sqlx::MySqlPool;
use tokio::sync::watch;

use super::store::{self, Charge, Issued, Material, Settings};
use crate::{config::CertsConfig, crypto::SecretBox, metrics::Metrics};

/// Orders and renews the certificates of the sites' domains.
#[derive(Clone)]
pub struct Issuer {
    db: MySqlPool,
    secrets: SecretBox,
    config: CertsConfig,
    /// The `Retry-After` of the last error answer of the ACME server ([`RecordingClient`]).
    retry_after: Arc<Mutex<Option<String>>>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PassReport {
    pub added: u64,
    pub removed: u64,
    pub issued: Vec<String>,
    pub failed: Vec<String>,
    /// New orders wait until then: the ACME server answered `rateLimited` (at this pass
    /// or before).
    pub paused_until: Option<DateTime<Utc>>,
    /// The budget of new orders of the window was spent: due domains were left waiting.
    pub over_budget: bool,
}

/// Why an order failed, as the ACME server (or the network) said it; shown to tenants.
#[derive(Debug)]
struct OrderFailure(String);

/// The directory does not know our account (RFC 8555 `accountDoesNotExist`): not the
/// domain's failure. The directory refuses for now (`rateLimited`): every new order waits.
#[derive(Debug)]
enum Failure {
    Order(OrderFailure),
    AccountGone(String),
    RateLimited(String),
}

impl From<OrderFailure> for Failure {
    fn from(failure: OrderFailure) -> Self {
        Self::Order(failure)
    }
}

impl From<instant_acme::Error> for Failure {
    fn from(err: instant_acme::Error) -> Self {
        let problem_type = match &err {
            instant_acme::Error::Api(problem) => problem.r#type.as_deref().unwrap_or_default(),
            _ => "",
        };
        if problem_type.ends_with(":accountDoesNotExist") {
            Self::AccountGone(err.to_string())
        } else if problem_type == "urn:ietf:params:acme:error:rateLimited" {
            Self::RateLimited(err.to_string())
        } else {
            Self::Order(OrderFailure(err.to_string()))
        }
    }
}

/// instant-acme's HTTP client (hyper over rustls, as its own), keeping the `Retry-After`
/// of the last error answer: instant-acme's `Error::Api` carries the problem document
/// only, and a `rateLimited` answer says in that header when to come back (RFC 8555 §6.6).
struct RecordingClient {
    inner: HyperClient<HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>,
    retry_after: Arc<Mutex<Option<String>>>,
}

impl HttpClient for RecordingClient {
    fn request(
        &self,
        req: axum::http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let sent = HttpClient::request(&self.inner, req);
        let slot = self.retry_after.clone();
        Box::pin(async move {
            let response = sent.await?;
            let status = response.parts.status;
            if status.is_client_error() || status.is_server_error() {
                let value = response
                    .parts
                    .headers
                    .get(axum::http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim().chars().take(100).collect());
                if let Ok(mut last) = slot.lock() {
                    *last = value;
                }
            }
            Ok(response)
        })
    }
}

/// How long every new order waits after a `rateLimited` answer: its `Retry-After` (RFC 9110:
/// seconds, or an HTTP date, read against `now`); `default_secs` without one or with one
/// that does not parse; at least a second, at most `max_secs`.
pub fn rate_limit_pause_secs(
    retry_after: Option<&str>,
    now: DateTime<Utc>,
    default_secs: u64,
    max_secs: u64,
) -> u64 {
    let asked = retry_after.map(str::trim).and_then(|value| {
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            return Some(value.parse::<u64>().unwrap_or(u64::MAX));
        }
        let at = DateTime::parse_from_rfc2822(value).ok()?;
        Some(u64::try_from((at.with_timezone(&Utc) - now).num_seconds()).unwrap_or(0))
    });
    asked.unwrap_or(default_secs).clamp(1, max_secs.max(1))
}

impl Issuer {
    pub fn new(db: MySqlPool, secrets: SecretBox, config: CertsConfig) -> Self {
        Self {
            db,
            secrets,
            config,
            retry_after: Arc::default(),
        }
    }

    /// One pass: sync the domain set, then order what is due. A failing domain is recorded
    /// and the pass goes on with the others.
    pub async fn run_pass(&self) -> anyhow::Result<PassReport> {
        let lease_secs = order_lease_secs(&self.config);
        let synced =
            store::sync_domains(&self.db, self.config.unused_grace_secs, lease_secs).await?;
        let mut report = PassReport {
            added: synced.added,
            removed: synced.removed,
            ..Default::default()
        };
        let Some(settings) = store::settings(&self.db).await? else {
            return Ok(report);
        };
        if let Some(until) = store::paused_until(&self.db).await? {
            report.paused_until = Some(until);
            return Ok(report);
        }
        let due = store::due(&self.db, self.config.max_orders_per_pass).await?;
        if due.is_empty() {
            return Ok(report);
        }
        // The budget is charged order by order below; spent already, no account is needed.
        let placed = store::orders_in_window(&self.db, self.config.order_window_secs).await?;
        if placed >= u64::from(self.config.orders_per_window) {
            report.over_budget = true;
            return Ok(report);
        }
        let account = match self.account(&settings).await {
            Ok(account) => account,
            Err(err) => {
                // The directory is down or refuses us: every due domain waits, none is
                // charged a failure of its own.
                tracing::warn!(error = format!("{err:#}"), "no ACME account");
                return Err(err);
            }
        };
        for domain in due {
            if !store::lease(&self.db, &domain, lease_secs).await? {
                continue;
            }
            let charge = store::charge_order(
                &self.db,
                &domain,
                self.config.orders_per_window,
                self.config.order_window_secs,
            )
            .await;
            match charge {
                Ok(Charge::Charged) => {}
                other => {
                    // The domain waits, uncharged, as every other due one.
                    store::release(&self.db, &domain).await?;
                    match other? {
                        Charge::Paused(until) => report.paused_until = Some(until),
                        _ => report.over_budget = true,
                    }
                    break;
                }
            }
            self.take_retry_after();
            match self.order(&account, &domain).await {
                Err(Failure::AccountGone(reason)) => {
                    // The directory lost our account (pebble restarted, the account was
                    // deactivated): register again at the next pass, charge no domain.
                    store::release(&self.db, &domain).await?;
                    store::forget_account(&self.db, &settings.directory_url).await?;
                    anyhow::bail!(
                        "the ACME directory does not know the account ({reason}); a new one is registered at the next pass"
                    );
                }
                Ok((material, issued)) => {
                    store::store_issued(&self.db, &self.secrets, &domain, &material, &issued)
                        .await?;
                    tracing::info!(%domain, not_after = %issued.not_after, "certificate issued");
                    report.issued.push(domain);
                }
                Err(Failure::RateLimited(reason)) => {
                    let until = self.rate_limited(&domain, &reason).await?;
                    report.failed.push(domain);
                    report.paused_until = Some(until);
                    break;
                }
                Err(Failure::Order(OrderFailure(reason))) => {
                    let failures = store::failures(&self.db, &domain).await?;
                    let retry = backoff_secs(
                        failures,
                        self.config.retry_base_secs,
                        self.config.retry_max_secs,
                    );
                    store::store_failure(&self.db, &domain, &reason, retry).await?;
                    tracing::warn!(%domain, %reason, retry_secs = retry, "certificate order failed");
                    report.failed.push(domain);
                }
            }
        }
        Ok(report)
    }

    /// Pauses every new order after `domain`'s order was answered `rateLimited`, until the
    /// answer's `Retry-After`, and shows why on the domain. Returns when the pause ends.
    pub async fn rate_limited(&self, domain: &str, reason: &str) -> anyhow::Result<DateTime<Utc>> {
        let retry_after = self.take_retry_after();
        let secs = rate_limit_pause_secs(
            retry_after.as_deref(),
            Utc::now(),
            self.config.rate_limited_default_secs,
            self.config.rate_limited_max_secs,
        );
        let until = store::pause_orders(&self.db, secs).await?;
        let shown = format!(
            "rate limited by the ACME server until {}: {reason}",
            until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        store::store_rate_limited(&self.db, domain, &shown, until).await?;
        tracing::warn!(%domain, %reason, ?retry_after, %until, "the ACME server rate-limits the account: new orders wait");
        Ok(until)
    }

    /// Takes the `Retry-After` of the last error answer, leaving none.
    fn take_retry_after(&self) -> Option<String> {
        self.retry_after
            .lock()
            .ok()
            .and_then(|mut last| last.take())
    }

    /// An account builder over a [`RecordingClient`]: the system's roots, or only the one
    /// in `directory_ca_file`.
    fn builder(&self) -> anyhow::Result<instant_acme::AccountBuilder> {
        let connector = HttpsConnectorBuilder::new();
        let connector = match &self.config.directory_ca_file {
            Some(path) => {
                let root = CertificateDer::from_pem_file(path)
                    .with_context(|| format!("reading the ACME root in {}", path.display()))?;
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(root)
                    .with_context(|| format!("trusting the ACME root in {}", path.display()))?;
                connector.with_tls_config(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            }
            None => connector
                .try_with_platform_verifier()
                .context("building the ACME HTTP client")?,
        };
        let inner = HyperClient::builder(TokioExecutor::new())
            .build(connector.https_only().enable_http1().enable_http2().build());
        Ok(Account::builder_with_http(Box::new(RecordingClient {
            inner,
            retry_after: self.retry_after.clone(),
        })))
    }

    /// The account of the configured directory: the stored one, or a new registration
    /// (stored sealed before it is used).
    async fn account(&self, settings: &Settings) -> anyhow::Result<Account> {
        let directory = &settings.directory_url;
        if let Some(json) = store::account(&self.db, &self.secrets, directory).await? {
            let credentials: AccountCredentials =
                serde_json::from_str(&json).context("reading the stored ACME account")?;
            return self
                .builder()?
                .from_credentials(credentials)
                .await
                .context("loading the ACME account");
        }
        let contact = format!("mailto:{}", settings.contact_email);
        let contacts = [contact.as_str()];
        let (account, credentials) = self
            .builder()?
            .create(
                &NewAccount {
                    contact: if settings.contact_email.is_empty() {
                        &[]
                    } else {
                        &contacts
                    },
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.clone(),
                None,
            )
            .await
            .with_context(|| format!("registering an ACME account at {directory}"))?;
        let json = serde_json::to_string(&credentials)?;
        store::store_account(&self.db, &self.secrets, directory, &json).await?;
        tracing::info!(%directory, "registered an ACME account");
        Ok(account)
    }

    /// One order for one domain through HTTP-01.
    async fn order(&self, account: &Account, domain: &str) -> Result<(Material, Issued), Failure> {
        let identifiers = [Identifier::Dns(domain.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut tokens = Vec::new();
        let published = self
            .answer_challenges(&mut order, domain, &mut tokens)
            .await;
        let outcome = match published {
            Ok(()) => self.finish(&mut order).await,
            Err(err) => Err(err),
        };
        if let Err(err) = store::drop_challenges(&self.db, &tokens).await {
            tracing::warn!(error = format!("{err:#}"), "dropping HTTP-01 answers");
        }
        let chain_and_key = outcome?;
        let issued = describe(&chain_and_key.chain_pem)
            .map_err(|err| OrderFailure(format!("the issued certificate: {err:#}")))?;
        Ok((chain_and_key, issued))
    }

    async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        domain: &str,
        tokens: &mut Vec<String>,
    ) -> Result<(), Failure> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(OrderFailure(format!("authorization is {other:?}")).into()),
            }
            let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| {
                OrderFailure("the ACME server offers no HTTP-01 challenge".to_owned())
            })?;
            let token = challenge.token.clone();
            let key_authorization = challenge.key_authorization();
            store::put_challenge(&self.db, &token, key_authorization.as_str(), domain)
                .await
                .map_err(|err| OrderFailure(format!("publishing the answer: {err:#}")))?;
            tokens.push(token);
            challenge.set_ready().await?;
        }
        Ok(())
    }

    async fn finish(&self, order: &mut instant_acme::Order) -> Result<Material, Failure> {
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(self.config.order_timeout_secs));
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(OrderFailure(challenge_errors(order).await).into());
        }
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&retries).await?;
        Ok(Material { chain_pem, key_pem })
    }
}

/// The reasons the ACME server gave on the order's challenges.
async fn challenge_errors(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        if let Ok(state) = authz.refresh().await {
            for challenge in &state.challenges {
                if let Some(err) = &challenge.error {
                    reasons.push(err.to_string());
                }
            }
        }
    }
    if reasons.is_empty() {
        "the order became invalid".to_owned()
    } else {
        reasons.join("; ")
    }
}

/// How long an order holds its domain's lease: three times its timeout (the order's
/// readiness, then its certificate), and a minute.
pub fn order_lease_secs(config: &CertsConfig) -> u64 {
    config
        .order_timeout_secs
        .saturating_mul(3)
        .saturating_add(60)
}

/// Seconds to wait after the `failures`-th consecutive failure (0-based): doubling from
/// `base`, at most `max`.
pub fn backoff_secs(failures: u32, base: u64, max: u64) -> u64 {
    base.saturating_mul(1u64 << failures.min(32)).min(max)
}

/// The leaf's issuer and validity, and when to renew it: two thirds into its lifetime.
pub fn describe(chain_pem: &str) -> anyhow::Result<Issued> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(chain_pem.as_bytes())
        .map_err(|err| anyhow::anyhow!("not PEM: {err}"))?;
    let leaf = pem
        .parse_x509()
        .map_err(|err| anyhow::anyhow!("not an X.509 certificate: {err}"))?;
    let at = |t: i64| {
        DateTime::<Utc>::from_timestamp(t, 0).ok_or_else(|| anyhow::anyhow!("a date out of range"))
    };
    let not_before = at(leaf.validity().not_before.timestamp())?;
    let not_after = at(leaf.validity().not_after.timestamp())?;
    let renew_at = not_before + (not_after - not_before) * 2 / 3;
    Ok(Issued {
        issuer: leaf.issuer().to_string(),
        not_before,
        not_after,
        renew_at,
    })
}

/// Runs passes every `interval_secs` until shutdown, and keeps the expiry metric current.
pub async fn run_periodically(
    issuer: Issuer,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    if let (Some(directory), email) = (&issuer.config.directory, &issuer.config.contact_email) {
        let seeded = match super::directory_url(directory) {
            Ok(directory_url) => store::seed_settings(
                &issuer.db,
                &Settings {
                    directory_url,
                    contact_email: email.clone(),
                },
            )
            .await
            .map_err(|err| format!("{err:#}")),
            Err(why) => Err(format!("certs.directory {why}")),
        };
        if let Err(error) = seeded {
            tracing::error!(%error, "the configured ACME directory is not used");
        }
    }
    let interval = Duration::from_secs(issuer.config.interval_secs.max(1));
    loop {
        match issuer.run_pass().await {
            Ok(report) if !report.issued.is_empty() || !report.failed.is_empty() => {
                tracing::info!(
                    issued = report.issued.len(),
                    failed = report.failed.len(),
                    "certificate pass"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = format!("{err:#}"), "certificate pass failed"),
        }
        match store::expiring_within(&issuer.db, 14 * 86_400).await {
            Ok(n) => metrics.certs_expiring.set(n),
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "counting expiring certificates")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_secs(0, 60, 86_400), 60);
        assert_eq!(backoff_secs(1, 60, 86_400), 120);
        assert_eq!(backoff_secs(5, 60, 86_400), 1920);
        assert_eq!(backoff_secs(20, 60, 86_400), 86_400);
        assert_eq!(backoff_secs(u32::MAX, 60, 86_400), 86_400);
    }

    #[test]
    fn a_retry_after_is_seconds_or_a_date_within_bounds() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let pause = |v: Option<&str>| rate_limit_pause_secs(v, now, 3600, 86_400);
        assert_eq!(pause(Some("120")), 120);
        assert_eq!(pause(Some(" 7 ")), 7);
        assert_eq!(pause(Some("Mon, 07 Dec 2026 10:30:00 GMT")), 1800);
        // None, or one that does not parse: the default.
        assert_eq!(pause(None), 3600);
        assert_eq!(pause(Some("")), 3600);
        assert_eq!(pause(Some("soon")), 3600);
        assert_eq!(pause(Some("-5")), 3600);
        // Capped; a date past (or zero seconds) is still a second.
        assert_eq!(pause(Some("999999999999999999999999")), 86_400);
        assert_eq!(pause(Some("Tue, 07 Dec 2027 10:00:00 GMT")), 86_400);
        assert_eq!(pause(Some("Sun, 06 Dec 2026 10:00:00 GMT")), 1);
        assert_eq!(pause(Some("0")), 1);
    }

    #[test]
    fn a_rate_limited_problem_pauses_the_account_not_the_domain() {
        let problem = |t: &str| {
            instant_acme::Error::Api(instant_acme::Problem {
                r#type: Some(t.to_owned()),
                detail: Some("too many new orders recently".to_owned()),
                status: Some(429),
                subproblems: Vec::new(),
            })
        };
        match Failure::from(problem("urn:ietf:params:acme:error:rateLimited")) {
            Failure::RateLimited(reason) => {
                assert!(reason.contains("too many new orders"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Failure::from(problem("urn:ietf:params:acme:error:accountDoesNotExist")),
            Failure::AccountGone(_)
        ));
        assert!(matches!(
            Failure::from(problem("urn:ietf:params:acme:error:unauthorized")),
            Failure::Order(_)
        ));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod describe_tests {
    use super::*;

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 1);
        params.not_after = rcgen::date_time_ymd(2026, 4, 1); // 90 days
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test Issuer");
        let cert = params.self_signed(&key).unwrap();
        let issued = describe(&cert.pem()).unwrap();
        assert_eq!(issued.issuer, "CN=Test Issuer");
        assert_eq!(issued.not_before.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert_eq!(issued.not_after.to_rfc3339(), "2026-04-01T00:00:00+00:00");
        assert_eq!(issued.renew_at.to_rfc3339(), "2026-03-02T00:00:00+00:00");
        assert!(describe("not a certificate").is_err());
    }
}

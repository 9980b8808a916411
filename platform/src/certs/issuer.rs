//! The renewal loop: orders certificates from the staff-chosen ACME directory with
//! `instant-acme`, one domain per order, HTTP-01 answered through [`super::edge`].

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use sqlx::MySqlPool;
use tokio::sync::watch;

use super::store::{self, Issued, Material, Settings};
use crate::{config::CertsConfig, crypto::SecretBox, metrics::Metrics};

/// Orders and renews the certificates of the sites' domains.
#[derive(Clone)]
pub struct Issuer {
    db: MySqlPool,
    secrets: SecretBox,
    config: CertsConfig,
}

/// What one pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PassReport {
    pub added: u64,
    pub removed: u64,
    pub issued: Vec<String>,
    pub failed: Vec<String>,
}

/// Why an order failed, as the ACME server (or the network) said it; shown to tenants.
#[derive(Debug)]
struct OrderFailure(String);

/// The directory does not know our account (RFC 8555 `accountDoesNotExist`): not the
/// domain's failure.
#[derive(Debug)]
enum Failure {
    Order(OrderFailure),
    AccountGone(String),
}

impl From<instant_acme::Error> for OrderFailure {
    fn from(err: instant_acme::Error) -> Self {
        Self(err.to_string())
    }
}

impl From<OrderFailure> for Failure {
    fn from(failure: OrderFailure) -> Self {
        Self::Order(failure)
    }
}

impl From<instant_acme::Error> for Failure {
    fn from(err: instant_acme::Error) -> Self {
        match &err {
            instant_acme::Error::Api(problem)
                if problem
                    .r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":accountDoesNotExist")) =>
            {
                Self::AccountGone(err.to_string())
            }
            _ => Self::Order(err.into()),
        }
    }
}

impl Issuer {
    pub fn new(db: MySqlPool, secrets: SecretBox, config: CertsConfig) -> Self {
        Self {
            db,
            secrets,
            config,
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
        let due = store::due(&self.db, self.config.max_orders_per_pass).await?;
        if due.is_empty() {
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

    fn builder(&self) -> anyhow::Result<instant_acme::AccountBuilder> {
        Ok(match &self.config.directory_ca_file {
            Some(path) => Account::builder_with_root(path)
                .with_context(|| format!("trusting the ACME root in {}", path.display()))?,
            None => Account::builder().context("building the ACME HTTP client")?,
        })
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
    ) -> Result<(), OrderFailure> {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(OrderFailure(format!("authorization is {other:?}"))),
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

    async fn finish(&self, order: &mut instant_acme::Order) -> Result<Material, OrderFailure> {
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(Duration::from_secs(self.config.order_timeout_secs));
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(OrderFailure(challenge_errors(order).await));
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

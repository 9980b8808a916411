//! The certificates' rows: settings and account, per-domain certificates, HTTP-01 answers,
//! and the account's order budget and rate-limit pause (rows of `rate_limits`).
//!
//! Sealed values are bound to their row (`acme/account/<directory>`,
//! `certificate/<domain>`), so a ciphertext copied to another row does not open.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, MySqlPool};

use super::DomainCertificate;
use crate::crypto::SecretBox;

/// The states of a site in which its domains get certificates.
const LIVE_SITE_STATES: &str = "'active', 'degraded', 'suspended'";

/// The staff-chosen ACME directory and contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub directory_url: String,
    pub contact_email: String,
}

/// The settings, if staff (or the configuration) chose any.
pub async fn settings(db: &MySqlPool) -> anyhow::Result<Option<Settings>> {
    Ok(settings_and_account(db).await?.map(|(s, _)| s))
}

/// The settings, and whether an account of their directory is registered.
pub async fn settings_and_account(db: &MySqlPool) -> anyhow::Result<Option<(Settings, bool)>> {
    let row: Option<(String, String, bool)> = sqlx::query_as(
        "SELECT directory_url, contact_email, \
         (account_sealed IS NOT NULL AND account_directory = directory_url) \
         FROM acme_settings WHERE id = 1",
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(directory_url, contact_email, account)| {
        (
            Settings {
                directory_url,
                contact_email,
            },
            account,
        )
    }))
}

/// Sets the directory and contact; a changed directory drops the account (it belongs to
/// the old directory), so the next order registers a new one.
/// A new directory makes every certificate another directory issued due at once (staging's
/// certificates are not trusted by browsers: a switch to production must not wait for
/// their renewal). Each keeps being served until its replacement is issued.
pub async fn set_settings(conn: &mut sqlx::MySqlConnection, s: &Settings) -> anyhow::Result<()> {
    let held: Option<String> =
        sqlx::query_scalar("SELECT directory_url FROM acme_settings WHERE id = 1 FOR UPDATE")
            .fetch_optional(&mut *conn)
            .await
            .context("reading the ACME settings")?;
    if held.as_deref().is_some_and(|d| d != s.directory_url) {
        sqlx::query(
            "UPDATE certificates SET renew_at = LEAST(COALESCE(renew_at, NOW(6)), NOW(6)), \
             next_attempt_at = NOW(6), failures = 0 WHERE state = 'valid'",
        )
        .execute(&mut *conn)
        .await
        .context("making the old directory's certificates due")?;
        // A pause the old directory asked for is not the new one's.
        sqlx::query("DELETE FROM rate_limits WHERE bucket = ?")
            .bind(PAUSE_BUCKET)
            .execute(&mut *conn)
            .await
            .context("lifting the old directory's pause")?;
    }
    sqlx::query(
        "INSERT INTO acme_settings (id, directory_url, contact_email) VALUES (1, ?, ?) \
         ON DUPLICATE KEY UPDATE \
           account_nonce = IF(directory_url = VALUES(directory_url), account_nonce, NULL), \
           account_sealed = IF(directory_url = VALUES(directory_url), account_sealed, NULL), \
           account_directory = IF(directory_url = VALUES(directory_url), account_directory, NULL), \
           directory_url = VALUES(directory_url), contact_email = VALUES(contact_email), \
           updated_at = NOW(6)",
    )
    .bind(&s.directory_url)
    .bind(&s.contact_email)
    .execute(conn)
    .await
    .context("storing the ACME settings")?;
    Ok(())
}

/// Stores settings from the configuration only where staff set none.
pub async fn seed_settings(db: &MySqlPool, s: &Settings) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT IGNORE INTO acme_settings (id, directory_url, contact_email) VALUES (1, ?, ?)",
    )
    .bind(&s.directory_url)
    .bind(&s.contact_email)
    .execute(db)
    .await
    .context("seeding the ACME settings")?;
    Ok(())
}

fn account_context(directory: &str) -> String {
    format!("acme/account/{directory}")
}

#[derive(FromRow)]
struct AccountRow {
    account_directory: Option<String>,
    account_nonce: Option<Vec<u8>>,
    account_sealed: Option<Vec<u8>>,
}

/// The sealed account credentials (JSON) of `directory`, opened.
pub async fn account(
    db: &MySqlPool,
    secrets: &SecretBox,
    directory: &str,
) -> anyhow::Result<Option<String>> {
    let row: Option<AccountRow> = sqlx::query_as(
        "SELECT account_directory, account_nonce, account_sealed FROM acme_settings WHERE id = 1",
    )
    .fetch_optional(db)
    .await?;
    match row {
        Some(AccountRow {
            account_directory: Some(dir),
            account_nonce: Some(nonce),
            account_sealed: Some(sealed),
        }) if dir == directory => Ok(Some(
            secrets
                .open(&account_context(directory), &nonce, &sealed)
                .context("opening the ACME account")?,
        )),
        _ => Ok(None),
    }
}

/// Stores the account of `directory`, unless staff changed the directory meanwhile.
pub async fn store_account(
    db: &MySqlPool,
    secrets: &SecretBox,
    directory: &str,
    credentials_json: &str,
) -> anyhow::Result<()> {
    let (nonce, sealed) = secrets.seal(&account_context(directory), credentials_json)?;
    sqlx::query(
        "UPDATE acme_settings SET account_directory = ?, account_nonce = ?, account_sealed = ? \
         WHERE id = 1 AND directory_url = ?",
    )
    .bind(directory)
    .bind(&nonce[..])
    .bind(&sealed)
    .bind(directory)
    .execute(db)
    .await
    .context("storing the ACME account")?;
    Ok(())
}

/// Forgets the account of `directory` (the directory no longer knows it: a test CA that
/// restarted, an account deactivated); the next pass registers a new one.
pub async fn forget_account(db: &MySqlPool, directory: &str) -> anyhow::Result<()> {
    sqlx::query(
        "UPDATE acme_settings SET account_directory = NULL, account_nonce = NULL, \
         account_sealed = NULL WHERE id = 1 AND account_directory = ?",
    )
    .bind(directory)
    .execute(db)
    .await
    .context("forgetting the ACME account")?;
    Ok(())
}

/// Gives up the domain's lease without charging it a failure (the order never started).
pub async fn release(db: &MySqlPool, domain: &str) -> anyhow::Result<()> {
    sqlx::query("UPDATE certificates SET lease_until = NULL WHERE domain = ?")
        .bind(domain)
        .execute(db)
        .await
        .context("releasing a certificate lease")?;
    Ok(())
}

/// The domains of live sites ([`LIVE_SITE_STATES`]), as a subquery.
const LIVE_DOMAINS: &str = "SELECT d.domain FROM domains d JOIN sites s ON s.id = d.site_id \
     WHERE s.state IN ('active', 'degraded', 'suspended')";

/// What [`sync_domains`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Rows added for domains that had none.
    pub added: u64,
    /// Domains no live site uses any more whose grace began.
    pub unused: u64,
    /// Domains taken again by a live site within their grace.
    pub taken_again: u64,
    /// Rows removed: their grace ended with no live site using them.
    pub removed: u64,
}

/// Brings the rows in line with the domains of live sites. A domain no live site uses
/// keeps its row (its certificate, its failures and back-off) for `grace_secs`: the row
/// is leased for that long, so it is neither ordered nor renewed, and the edge does not
/// serve it ([`for_edge`]). A domain taken again within its grace (moved to another site,
/// a site deleted and made again) keeps its certificate and is not ordered again; its
/// grace lease is dropped. A row whose lease ends while no live site uses it is removed.
///
/// An order's own lease ([`lease`], `order_lease_secs` long) is never dropped: a lease
/// that ends later than that from now is a grace (a grace that has less than that left
/// runs out instead, and the domain is ordered then as usual).
pub async fn sync_domains(
    db: &MySqlPool,
    grace_secs: u64,
    order_lease_secs: u64,
) -> anyhow::Result<Synced> {
    let added = sqlx::query(crate::sql!(
        "INSERT IGNORE INTO certificates (domain, state) \
         SELECT domain, 'pending' FROM ({LIVE_DOMAINS}) live"
    ))
    .execute(db)
    .await?
    .rows_affected();
    let taken_again = sqlx::query(crate::sql!(
        "UPDATE certificates SET lease_until = NULL \
         WHERE lease_until > NOW(6) + INTERVAL ? SECOND AND domain IN ({LIVE_DOMAINS})"
    ))
    .bind(order_lease_secs)
    .execute(db)
    .await?
    .rows_affected();
    let unused = sqlx::query(crate::sql!(
        "UPDATE certificates SET lease_until = NOW(6) + INTERVAL ? SECOND, updated_at = NOW(6) \
         WHERE lease_until IS NULL AND domain NOT IN ({LIVE_DOMAINS})"
    ))
    .bind(grace_secs)
    .execute(db)
    .await?
    .rows_affected();
    let removed = sqlx::query(crate::sql!(
        "DELETE FROM certificates WHERE lease_until < NOW(6) AND domain NOT IN ({LIVE_DOMAINS})"
    ))
    .execute(db)
    .await?
    .rows_affected();
    Ok(Synced {
        added,
        unused,
        taken_again,
        removed,
    })
}

/// Domains whose order is due and not leased by another replica: the renewals of the
/// certificates that expire soonest first (when the order budget is short, they are what
/// must not wait), then the others, the longest waiting first.
pub async fn due(db: &MySqlPool, limit: u32) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT domain FROM certificates WHERE next_attempt_at <= NOW(6) \
         AND (lease_until IS NULL OR lease_until < NOW(6)) \
         ORDER BY not_after IS NULL, not_after, next_attempt_at LIMIT ?",
    )
    .bind(limit)
    .fetch_all(db)
    .await?)
}

/// Takes the domain's lease for `secs`; false when another replica holds it or it is not due.
pub async fn lease(db: &MySqlPool, domain: &str, secs: u64) -> anyhow::Result<bool> {
    Ok(sqlx::query(
        "UPDATE certificates SET lease_until = NOW(6) + INTERVAL ? SECOND \
         WHERE domain = ? AND next_attempt_at <= NOW(6) \
         AND (lease_until IS NULL OR lease_until < NOW(6))",
    )
    .bind(secs)
    .bind(domain)
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// The `rate_limits` row of the account-wide pause of new orders: its `window_start` is
/// when the pause ends (no migration: that table is the platform's generic counter store).
pub const PAUSE_BUCKET: &str = "acme/paused";
/// The prefix of the `rate_limits` rows that record each new order (`acme/order/<time>/<domain>`,
/// `window_start` its time): the budget counts them over a rolling window.
pub const ORDER_BUCKET_PREFIX: &str = "acme/order/";

/// Pauses every new order of the account for `secs` (an ACME `rateLimited` answer); a
/// pause that ends later already is kept. Returns when the pause ends.
pub async fn pause_orders(db: &MySqlPool, secs: u64) -> anyhow::Result<DateTime<Utc>> {
    sqlx::query(
        "INSERT INTO rate_limits (bucket, window_start, hits) \
         VALUES (?, NOW(6) + INTERVAL ? SECOND, 0) \
         ON DUPLICATE KEY UPDATE window_start = GREATEST(window_start, VALUES(window_start))",
    )
    .bind(PAUSE_BUCKET)
    .bind(secs)
    .execute(db)
    .await
    .context("pausing new ACME orders")?;
    Ok(
        sqlx::query_scalar("SELECT window_start FROM rate_limits WHERE bucket = ?")
            .bind(PAUSE_BUCKET)
            .fetch_one(db)
            .await?,
    )
}

/// When the pause of new orders ends, if one is in force.
pub async fn paused_until(db: &MySqlPool) -> anyhow::Result<Option<DateTime<Utc>>> {
    Ok(sqlx::query_scalar(
        "SELECT window_start FROM rate_limits WHERE bucket = ? AND window_start > NOW(6)",
    )
    .bind(PAUSE_BUCKET)
    .fetch_optional(db)
    .await?)
}

/// New orders recorded within the last `window_secs`.
pub async fn orders_in_window(
    conn: impl sqlx::MySqlExecutor<'_>,
    window_secs: u64,
) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(hits), 0) AS SIGNED) FROM rate_limits \
         WHERE bucket LIKE 'acme/order/%' AND window_start > NOW(6) - INTERVAL ? SECOND",
    )
    .bind(window_secs)
    .fetch_one(conn)
    .await?;
    Ok(n.max(0) as u64)
}

/// What [`charge_order`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The order is recorded: place it.
    Charged,
    /// `budget` orders were placed within the window: wait.
    Spent,
    /// The ACME server asked every new order to wait until then.
    Paused(DateTime<Utc>),
}

/// Takes one new order for `domain` out of the account's budget: `budget` orders within
/// the last `window_secs`, all replicas together (they take turns on the settings row), and
/// none while a pause is in force. Records older than the window are dropped.
pub async fn charge_order(
    db: &MySqlPool,
    domain: &str,
    budget: u32,
    window_secs: u64,
) -> anyhow::Result<Charge> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT id FROM acme_settings WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await
        .context("taking the order budget's turn")?;
    let paused: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT window_start FROM rate_limits WHERE bucket = ? AND window_start > NOW(6)",
    )
    .bind(PAUSE_BUCKET)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(until) = paused {
        return Ok(Charge::Paused(until));
    }
    sqlx::query(
        "DELETE FROM rate_limits WHERE bucket LIKE 'acme/order/%' \
         AND window_start < NOW(6) - INTERVAL ? SECOND",
    )
    .bind(window_secs)
    .execute(&mut *tx)
    .await?;
    if orders_in_window(&mut *tx, window_secs).await? >= u64::from(budget) {
        return Ok(Charge::Spent);
    }
    sqlx::query(
        "INSERT INTO rate_limits (bucket, window_start, hits) \
         VALUES (CONCAT(?, DATE_FORMAT(NOW(6), '%Y%m%d%H%i%s%f'), '/', ?), NOW(6), 1) \
         ON DUPLICATE KEY UPDATE hits = hits + 1",
    )
    .bind(ORDER_BUCKET_PREFIX)
    .bind(domain)
    .execute(&mut *tx)
    .await
    .context("recording a new ACME order")?;
    tx.commit().await?;
    Ok(Charge::Charged)
}

/// A certificate chain (leaf first) and its private key, PEM.
#[derive(Clone, Serialize, Deserialize)]
pub struct Material {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Material { chain_pem, key_pem: <redacted> }")
    }
}

/// The public facts of an issued certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    pub issuer: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub renew_at: DateTime<Utc>,
}

fn certificate_context(domain: &str) -> String {
    format!("certificate/{domain}")
}

/// Stores a new certificate, clears the failure count and the lease, and schedules renewal.
pub async fn store_issued(
    db: &MySqlPool,
    secrets: &SecretBox,
    domain: &str,
    material: &Material,
    issued: &Issued,
) -> anyhow::Result<()> {
    let plain = serde_json::to_string(material)?;
    let (nonce, sealed) = secrets.seal(&certificate_context(domain), &plain)?;
    sqlx::query(
        "UPDATE certificates SET state = 'valid', issuer = ?, not_before = ?, not_after = ?, \
         renew_at = ?, next_attempt_at = ?, pem_nonce = ?, pem_sealed = ?, last_error = NULL, \
         failures = 0, lease_until = NULL, updated_at = NOW(6) WHERE domain = ?",
    )
    .bind(&issued.issuer)
    .bind(issued.not_before)
    .bind(issued.not_after)
    .bind(issued.renew_at)
    .bind(issued.renew_at)
    .bind(&nonce[..])
    .bind(&sealed)
    .bind(domain)
    .execute(db)
    .await
    .context("storing a certificate")?;
    Ok(())
}

/// Records a failed order: the reason, the next attempt after `retry_secs`, and `failed`
/// unless a certificate that has not expired is still held (it keeps being served).
pub async fn store_failure(
    db: &MySqlPool,
    domain: &str,
    reason: &str,
    retry_secs: u64,
) -> anyhow::Result<()> {
    let reason: String = reason.chars().take(2000).collect();
    sqlx::query(
        "UPDATE certificates SET \
           state = IF(pem_sealed IS NOT NULL AND not_after > NOW(6), 'valid', 'failed'), \
           last_error = ?, failures = failures + 1, \
           next_attempt_at = NOW(6) + INTERVAL ? SECOND, lease_until = NULL, \
           updated_at = NOW(6) WHERE domain = ?",
    )
    .bind(reason)
    .bind(retry_secs)
    .bind(domain)
    .execute(db)
    .await
    .context("recording a failed order")?;
    Ok(())
}

/// Records an order the ACME server refused with `rateLimited`: the reason, and the next
/// attempt when the pause ends. Not counted as the domain's failure (no back-off grows).
pub async fn store_rate_limited(
    db: &MySqlPool,
    domain: &str,
    reason: &str,
    until: DateTime<Utc>,
) -> anyhow::Result<()> {
    let reason: String = reason.chars().take(2000).collect();
    sqlx::query(
        "UPDATE certificates SET \
           state = IF(pem_sealed IS NOT NULL AND not_after > NOW(6), 'valid', 'failed'), \
           last_error = ?, next_attempt_at = ?, lease_until = NULL, \
           updated_at = NOW(6) WHERE domain = ?",
    )
    .bind(reason)
    .bind(until)
    .bind(domain)
    .execute(db)
    .await
    .context("recording a rate-limited order")?;
    Ok(())
}

/// How many consecutive failures the domain has.
pub async fn failures(db: &MySqlPool, domain: &str) -> anyhow::Result<u32> {
    let n: Option<i32> = sqlx::query_scalar("SELECT failures FROM certificates WHERE domain = ?")
        .bind(domain)
        .fetch_optional(db)
        .await?;
    Ok(n.unwrap_or(0).max(0) as u32)
}

/// A domain's HTTPS options, from its site (`keep_http`, `hsts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpsOptions {
    pub keep_http: bool,
    pub hsts: bool,
}

/// The HTTPS options of every domain of a live site that has a certificate to serve.
pub async fn https_options(
    db: &MySqlPool,
) -> anyhow::Result<std::collections::HashMap<String, (String, HttpsOptions)>> {
    let rows: Vec<(String, String, bool, bool)> = sqlx::query_as(crate::sql!(
        "SELECT d.domain, s.id, s.keep_http, s.hsts FROM domains d JOIN sites s ON s.id = d.site_id \
         JOIN certificates c ON c.domain = d.domain \
         WHERE s.state IN ({LIVE_SITE_STATES}) AND c.pem_sealed IS NOT NULL"
    ))
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(domain, site, keep_http, hsts)| (domain, (site, HttpsOptions { keep_http, hsts })))
        .collect())
}

/// A certificate the edge is given ([`for_edge`]).
pub struct EdgeCertificate {
    pub domain: String,
    pub material: Material,
    /// The edge has been given this domain's certificate, without a break, for longer than
    /// the `settle` [`for_edge`] was asked with: every replica serves it, so its redirect
    /// to HTTPS (and HSTS) may be published.
    pub settled: bool,
}

/// What the edge is given now: every certificate of a live site's domain that has not
/// expired, opened (a domain in its grace, used by no live site, is not served), ordered by
/// domain.
///
/// It also keeps each row's `served_since`, the moment from which the edge has been given
/// the domain's certificate without a break: set by the first answer that carries it,
/// cleared by the first that does not (the domain left its site or its site is not live,
/// the certificate expired or does not open). A renewal replaces the chain and keeps it,
/// so a renewed domain's redirect stays on. Both writes happen before the answer leaves:
/// if they fail, the edge keeps the document it had. A domain is `settled` once its
/// `served_since` is older than `settle` (two polls of the edge, by the database's clock):
/// computed at each poll, so the redirect appears at the first poll after that, with no
/// other event.
pub async fn for_edge(
    db: &MySqlPool,
    secrets: &SecretBox,
    settle: std::time::Duration,
) -> anyhow::Result<Vec<EdgeCertificate>> {
    let settle_us = u64::try_from(settle.as_micros()).unwrap_or(u64::MAX);
    // Every row that is servable or was served at the last answer; the others need nothing.
    let rows: Vec<EdgeRow> = sqlx::query_as(crate::sql!(
        "SELECT domain, pem_nonce, pem_sealed, servable, \
               served_since IS NOT NULL AS serving, \
               (served_since IS NOT NULL AND served_since < NOW(6) - INTERVAL ? MICROSECOND) \
                 AS settled \
             FROM (SELECT domain, pem_nonce, pem_sealed, served_since, \
                     COALESCE(pem_sealed IS NOT NULL AND not_after > NOW(6) \
                       AND domain IN ({LIVE_DOMAINS}), FALSE) AS servable \
                   FROM certificates) c \
             WHERE servable OR served_since IS NOT NULL ORDER BY domain"
    ))
    .bind(settle_us)
    .fetch_all(db)
    .await
    .context("reading the certificates to serve")?;
    let mut out = Vec::with_capacity(rows.len());
    let (mut started, mut stopped) = (Vec::new(), Vec::new());
    for EdgeRow {
        domain,
        pem_nonce,
        pem_sealed,
        servable,
        serving,
        settled,
    } in rows
    {
        let material = match (servable, pem_nonce, pem_sealed) {
            (true, Some(nonce), Some(sealed)) => match secrets
                .open(&certificate_context(&domain), &nonce, &sealed)
                .and_then(|plain| Ok(serde_json::from_str::<Material>(&plain)?))
            {
                Ok(material) => Some(material),
                // One unreadable row must not take every other domain's HTTPS down.
                Err(err) => {
                    tracing::error!(%domain, error = format!("{err:#}"), "a stored certificate does not open");
                    None
                }
            },
            _ => None,
        };
        match material {
            Some(material) => {
                if !serving {
                    started.push(domain.clone());
                }
                out.push(EdgeCertificate {
                    domain,
                    material,
                    settled,
                });
            }
            None if serving => stopped.push(domain),
            None => {}
        }
    }
    mark_served(db, &started, true).await?;
    mark_served(db, &stopped, false).await?;
    Ok(out)
}

#[derive(FromRow)]
struct EdgeRow {
    domain: String,
    pem_nonce: Option<Vec<u8>>,
    pem_sealed: Option<Vec<u8>>,
    /// A live site's domain, with a certificate that has not expired.
    servable: bool,
    /// `served_since` is set: the last answer carried it.
    serving: bool,
    /// Carried for longer than the settle time.
    settled: bool,
}

/// Sets `served_since` of `domains` to now where it is not set (`serving`), or clears it.
async fn mark_served(db: &MySqlPool, domains: &[String], serving: bool) -> anyhow::Result<()> {
    if domains.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::QueryBuilder::new(if serving {
        "UPDATE certificates SET served_since = NOW(6) WHERE served_since IS NULL AND domain IN ("
    } else {
        "UPDATE certificates SET served_since = NULL WHERE domain IN ("
    });
    let mut sep = q.separated(", ");
    for d in domains {
        sep.push_bind(d);
    }
    q.push(")");
    q.build()
        .execute(db)
        .await
        .context("recording what the edge is given")?;
    Ok(())
}

#[derive(FromRow)]
struct CertRow {
    domain: String,
    state: String,
    issuer: Option<String>,
    not_after: Option<DateTime<Utc>>,
    next_attempt_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

/// The certificates of a site's domains, in the order of `domains`; a domain without a
/// row (the site is not live yet, or the issuer has not seen it) shows as `pending`.
pub async fn for_domains(
    db: &MySqlPool,
    domains: &[String],
) -> anyhow::Result<Vec<DomainCertificate>> {
    if domains.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = sqlx::QueryBuilder::new(
        "SELECT domain, state, issuer, not_after, next_attempt_at, last_error \
         FROM certificates WHERE domain IN (",
    );
    let mut sep = q.separated(", ");
    for d in domains {
        sep.push_bind(d);
    }
    q.push(")");
    let rows: Vec<CertRow> = q.build_query_as().fetch_all(db).await?;
    Ok(domains
        .iter()
        .map(|d| match rows.iter().find(|r| &r.domain == d) {
            Some(r) => DomainCertificate {
                domain: d.clone(),
                state: r.state.clone(),
                issuer: r.issuer.clone(),
                not_after: r.not_after,
                next_attempt_at: r.next_attempt_at,
                last_error: r.last_error.clone(),
            },
            None => DomainCertificate {
                domain: d.clone(),
                state: "pending".to_owned(),
                issuer: None,
                not_after: None,
                next_attempt_at: None,
                last_error: None,
            },
        })
        .collect())
}

/// Live sites' domains whose certificate expires within `secs` (the metric's value).
pub async fn expiring_within(db: &MySqlPool, secs: u64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(crate::sql!(
        "SELECT COUNT(*) FROM certificates WHERE pem_sealed IS NOT NULL \
         AND not_after < NOW(6) + INTERVAL ? SECOND AND domain IN ({LIVE_DOMAINS})"
    ))
    .bind(secs)
    .fetch_one(db)
    .await?)
}

/// Publishes an HTTP-01 answer for an hour (an order takes seconds to minutes).
pub async fn put_challenge(
    db: &MySqlPool,
    token: &str,
    key_authorization: &str,
    domain: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "REPLACE INTO acme_challenges (token, key_authorization, domain, expires_at) \
         VALUES (?, ?, ?, NOW(6) + INTERVAL 1 HOUR)",
    )
    .bind(token)
    .bind(key_authorization)
    .bind(domain)
    .execute(db)
    .await
    .context("publishing an HTTP-01 answer")?;
    Ok(())
}

/// The answer to an HTTP-01 challenge for `token`, if one is pending.
pub async fn challenge(db: &MySqlPool, token: &str) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT key_authorization FROM acme_challenges WHERE token = ? AND expires_at > NOW(6)",
    )
    .bind(token)
    .fetch_optional(db)
    .await?)
}

/// Drops the answers of a finished order, and any that expired.
pub async fn drop_challenges(db: &MySqlPool, tokens: &[String]) -> anyhow::Result<()> {
    for token in tokens {
        sqlx::query("DELETE FROM acme_challenges WHERE token = ?")
            .bind(token)
            .execute(db)
            .await?;
    }
    sqlx::query("DELETE FROM acme_challenges WHERE expires_at < NOW(6)")
        .execute(db)
        .await?;
    Ok(())
}

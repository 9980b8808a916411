//! HTTPS for every site domain (issue 14): ACME certificates issued, renewed and served.
//!
//! - [`store`]: the certificates, the ACME account and the pending HTTP-01 answers, all in
//!   the control-plane database. Account credentials and certificate chains with their
//!   keys are sealed with the platform's [`SecretBox`](crate::crypto::SecretBox): no node
//!   keeps the only copy in a file, and any platform replica can serve or renew them.
//! - [`issuer`]: the renewal loop. Each pass brings the table in line with the domains of
//!   live sites, then orders, one domain per order, the certificates that are missing, due
//!   (two thirds of their lifetime) or whose back-off has passed. A lease on the row keeps
//!   one order per domain at a time across replicas; a failing domain records the ACME
//!   server's reason and is retried later, without holding back any other domain. The
//!   account's limits are kept: a budget of new orders per rolling window, and a pause of
//!   every new order after a `rateLimited` answer, until its `Retry-After` (both in the
//!   database, so they hold across restarts and replicas).
//! - [`edge`]: what the edge asks of the platform, outside the `/v1` API: the HTTP-01
//!   answers (`/.well-known/acme-challenge/{token}`, which every Traefik replica forwards
//!   here), and Traefik's dynamic configuration (`providers.http`): every certificate
//!   inline, HTTP→HTTPS redirects (and HSTS) of the domains whose certificate every
//!   replica serves by now (two of the edge's polls after the first answer that carried
//!   it), and the challenge route.

pub mod edge;
pub mod issuer;
pub mod store;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::{
    actor::Actor,
    audit::{self, Event},
    domain::{Email, Fields, StaffRole},
    error::ApiResult,
    state::AppState,
};

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (untrusted certificates, generous rate limits).
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// The form a directory URL must have: the OpenAPI pattern of `directory` (repeated there
/// as a literal), and exactly what [`directory_url`] accepts.
pub const DIRECTORY_PATTERN: &str = r"^(letsencrypt|letsencrypt-staging|https://(([a-z0-9]{1,30}\.){0,3}[a-z][a-z0-9]{0,29}|((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}))?(/[A-Za-z0-9_-]{1,30}){0,4})$";

/// The directory URL a configured value names: the presets `letsencrypt` and
/// `letsencrypt-staging`, or an `https://` URL of lower-case host labels (the last one
/// starting with a letter) or an IPv4 address, an optional port
/// (1 to 64999) and up to four path segments ([`DIRECTORY_PATTERN`]).
pub fn directory_url(value: &str) -> Result<String, String> {
    match value {
        "letsencrypt" => return Ok(LETS_ENCRYPT.to_owned()),
        "letsencrypt-staging" => return Ok(LETS_ENCRYPT_STAGING.to_owned()),
        _ => {}
    }
    let bad = || "must be letsencrypt, letsencrypt-staging or an https:// URL".to_owned();
    let rest = value.strip_prefix("https://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=30).contains(&l.len())
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    if labels.len() > 4 || !labels.iter().all(label_ok) {
        return Err(bad());
    }
    // A host whose last label is a number is an IPv4 address to a URL parser: only a
    // dotted quad of 0 to 255 (no leading zero) is one; a name ends in a label that starts
    // with a letter (`a.b.2` is neither, and no URL).
    let octet = |l: &&str| {
        l.len() <= 3
            && (l.len() == 1 || !l.starts_with('0'))
            && l.parse::<u16>().is_ok_and(|n| n <= 255)
    };
    let ipv4 = labels.len() == 4 && labels.iter().all(octet);
    let named = labels
        .last()
        .is_some_and(|l| l.bytes().next().is_some_and(|b| b.is_ascii_lowercase()));
    if !(ipv4 || named) {
        return Err(bad());
    }
    if let Some(p) = port
        && (p.is_empty()
            || p.starts_with('0')
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u32>().map_or(true, |n| n >= 65_000))
    {
        return Err(bad());
    }
    if !path.is_empty() {
        let segments: Vec<&str> = path[1..].split('/').collect();
        let segment_ok = |s: &&str| {
            (1..=30).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if segments.len() > 4 || !segments.iter().all(segment_ok) {
            return Err(bad());
        }
    }
    reqwest::Url::parse(value).map_err(|_| bad())?;
    Ok(value.to_owned())
}

/// The ACME directory and contact staff chose (`GET`/`PUT /v1/admin/acme`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AcmeSettings {
    /// `null` until staff (or `certs.directory` in the configuration) choose one: no
    /// certificate is ordered before.
    pub directory_url: Option<String>,
    pub contact_email: Option<String>,
    /// Whether the platform holds an account at this directory (its key is sealed in the
    /// control-plane database and never shown).
    pub account_registered: bool,
    /// Until when every new order waits: the ACME server answered `rateLimited` (its
    /// `Retry-After`, or `certs.rate_limited_default_secs` without one). `null`: no pause.
    pub rate_limited_until: Option<chrono::DateTime<chrono::Utc>>,
    /// New orders placed within the last `certs.order_window_secs` (all replicas).
    pub orders_in_window: u64,
    /// The budget of new orders within that window (`certs.orders_per_window`); over it,
    /// due domains wait.
    pub orders_per_window: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcmeSettingsChange {
    /// `letsencrypt`, `letsencrypt-staging`, or the `https://` URL of an RFC 8555
    /// directory. Changing it registers a new account at the next order.
    #[schema(
        max_length = 500,
        pattern = r"^(letsencrypt|letsencrypt-staging|https://(([a-z0-9]{1,30}\.){0,3}[a-z][a-z0-9]{0,29}|((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}))?(/[A-Za-z0-9_-]{1,30}){0,4})$"
    )]
    pub directory: String,
    /// The account's contact address (expiry notices from the CA).
    #[schema(format = "email", max_length = 254)]
    pub contact_email: String,
}

/// The current settings; staff (admin, operator) only.
pub async fn get_settings(state: &AppState, actor: &Actor) -> ApiResult<AcmeSettings> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let certs = &state.config.certs;
    let rate_limited_until = store::paused_until(&state.db).await?;
    let orders_in_window = store::orders_in_window(&state.db, certs.order_window_secs).await?;
    let (directory_url, contact_email, account_registered) =
        match store::settings_and_account(&state.db).await? {
            Some((s, account)) => (Some(s.directory_url), Some(s.contact_email), account),
            None => (None, None, false),
        };
    Ok(AcmeSettings {
        directory_url,
        contact_email,
        account_registered,
        rate_limited_until,
        orders_in_window,
        orders_per_window: certs.orders_per_window,
    })
}

/// Sets the directory and contact; staff admins only. Audited.
pub async fn put_settings(
    state: &AppState,
    actor: &Actor,
    input: AcmeSettingsChange,
) -> ApiResult<AcmeSettings> {
    actor.require_staff(&[StaffRole::Admin])?;
    let mut fields = Fields::default();
    let directory = fields.check("directory", directory_url(&input.directory));
    let email = fields.check("contact_email", Email::parse(&input.contact_email));
    fields.finish()?;
    let (Some(directory_url), Some(email)) = (directory, email) else {
        return Err(crate::error::ApiError::BadRequest(
            "invalid settings".into(),
        ));
    };
    let settings = store::Settings {
        directory_url,
        contact_email: email.as_str().to_owned(),
    };
    let mut tx = state.db.begin().await?;
    store::set_settings(&mut tx, &settings).await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "acme.settings",
            tenant_id: None,
            target_type: "acme",
            target_id: "settings",
            details: json!({ "directory_url": settings.directory_url, "contact_email": settings.contact_email }),
        },
    )
    .await?;
    tx.commit().await?;
    get_settings(state, actor).await
}

/// A domain's certificate as `GET /v1/sites/{site}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DomainCertificate {
    pub domain: String,
    /// `pending` (not issued yet), `valid` (served; renewed at two thirds of its lifetime),
    /// `failed` (the last order failed and no valid certificate is held).
    pub state: String,
    /// The issuer's distinguished name.
    pub issuer: Option<String>,
    pub not_after: Option<chrono::DateTime<chrono::Utc>>,
    /// When the platform renews it (or retries after a failure).
    pub next_attempt_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The ACME server's reason for the last failure, if the last order failed.
    pub last_error: Option<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn directory_presets_and_urls() {
        assert_eq!(directory_url("letsencrypt").unwrap(), LETS_ENCRYPT);
        assert_eq!(
            directory_url("letsencrypt-staging").unwrap(),
            LETS_ENCRYPT_STAGING
        );
        assert_eq!(
            directory_url("https://127.0.0.1:14000/dir").unwrap(),
            "https://127.0.0.1:14000/dir"
        );
        assert!(directory_url("http://acme.test/dir").is_err());
        assert!(directory_url("staging").is_err());
        assert!(directory_url("https://Acme.test/dir").is_err());
        assert!(directory_url("https://acme.test:0/dir").is_err());
        assert!(directory_url("https://acme.test/dir/").is_err());
        assert!(directory_url("https://acme.test:14000").is_ok());
        assert!(directory_url("https://acme.test:64999").is_ok());
        assert!(directory_url("https://acme.test:65000").is_err());
        // The fuzzer's find: a last label that is a number is an IPv4 address or nothing.
        assert!(directory_url("https://a3.uig.2/dir").is_err());
        assert!(directory_url("https://1.2.3/dir").is_err());
        assert!(directory_url("https://256.1.1.1/dir").is_err());
        assert!(directory_url("https://01.1.1.1/dir").is_err());
        assert!(directory_url("https://10.0.0.255/dir").is_ok());
        assert!(directory_url("https://a3.uig.b2/dir").is_ok());
        assert!(directory_url("https://localhost:14000/dir").is_ok());
    }
}

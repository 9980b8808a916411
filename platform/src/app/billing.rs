//! Usage metering and billing: plan prices with effective dates, each site's state history,
//! hourly usage samples, the monthly rollup per tenant, closing a period, and exports.
//!
//! The rules (docs in README.md, "Billing"):
//! - Time is UTC throughout; a period is a calendar month `YYYY-MM`.
//! - A site's plan charge accrues, by the second, while its state is one of
//!   [`BILLED_STATES`]; the state and plan at any second come from `site_state_history`,
//!   which every writer of `sites.state` or `sites.plan_id` appends to through
//!   [`record_site_state`]. The charge of a piece is `monthly × seconds ÷ seconds of the
//!   month`, rounded half up to the minor unit once per line.
//! - A price applies from 00:00 UTC of its `effective_from` date; prices are only added,
//!   and only for a date after today, so a price change is never retroactive.
//! - Usage comes in hourly samples keyed by (site, hour, source); the first sample of a key
//!   wins, so re-ingesting changes nothing. A sample with other values for a stored key is
//!   a conflict: not applied, kept in `usage_sample_conflicts`, reported in the ingest's
//!   answer and listed for staff, who accept (it replaces the sample) or reject it.
//!   Requests billed are the edge's (`source=edge`):
//!   the edge counts every request served to the site's visitors, including Varnish cache
//!   hits that never reach the site, and it runs outside the tenant's container, which the
//!   tenant's own code (plugins) could tamper with. The agent's access-log counts are kept
//!   for comparison (`agent_request_counts`: the growth of each report's counters, in the
//!   hour it arrives; [`metering`] shows both side by side). Storage is the agent's
//!   (`wp_content_bytes + db_bytes`).
//! - An hour the site was billed for without a sample of a source is a gap, counted per
//!   line (`gap_hours_edge`, `gap_hours_agent`); it is never read as zero usage silently.
//! - Overage per line (site × plan × price): requests over the included requests prorated
//!   by the line's seconds (rounded down), per 10,000 requests; storage by the peak hourly
//!   sample over the included storage, in started GiB, per GiB-month prorated by seconds.
//! - Closing a period (staff) freezes its lines, totals included; a closed period never
//!   changes and its export is byte-for-byte the same. Samples that arrive later are
//!   stored; the difference they make to a closed period appears as `adjustment` lines in
//!   the first open period after it.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlPool};
use utoipa::{IntoParams, ToSchema};

use crate::{
    actor::Actor,
    audit::{self, Event},
    domain::{Fields, Id, PlanId, StaffRole, TenantId, TenantRole},
    error::{ApiError, ApiResult},
    state::AppState,
};

/// The states in which a site's plan is charged. A suspended site is not charged (the
/// agency suspends for non-payment); provisioning, failed, deleting and deleted are not.
pub const BILLED_STATES: &[&str] = &["active", "degraded"];

/// Appends a site's current state and plan to its history, stamped with its `updated_at`
/// (set by the same write), unless the latest history row already says the same. With no
/// site, does so for every site whose history lags (a writer that crashed between its
/// update and this call converges here). Every writer of `sites.state` or `sites.plan_id`
/// calls this right after its write, in its transaction where it has one.
pub async fn record_site_state(
    conn: &mut sqlx::MySqlConnection,
    site: Option<&str>,
) -> sqlx::Result<u64> {
    // A plain (consistent, non-locking) read, then plain inserts: an `INSERT … SELECT`
    // would take shared locks on the history's index and deadlock concurrent creates. Two
    // writers racing on one site may both append the same state: harmless, the rollup
    // reads consecutive equal rows as one stretch.
    let lagging: Vec<(String, String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT s.id, s.tenant_id, s.state, s.plan_id, s.updated_at FROM sites s \
         WHERE (? IS NULL OR s.id = ?) \
         AND COALESCE((SELECT CONCAT(h.state, '/', h.plan_id) FROM site_state_history h \
         WHERE h.site_id = s.id ORDER BY h.id DESC LIMIT 1), '') <> CONCAT(s.state, '/', s.plan_id)",
    )
    .bind(site)
    .bind(site)
    .fetch_all(&mut *conn)
    .await?;
    for (id, tenant, state, plan, at) in &lagging {
        sqlx::query(
            "INSERT INTO site_state_history (site_id, tenant_id, state, plan_id, at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(tenant)
        .bind(state)
        .bind(plan)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(lagging.len() as u64)
}

// ---------------------------------------------------------------------------------------
// Periods

/// A calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    year: i32,
    month: u32,
}

impl Period {
    /// `YYYY-MM`, years 2000 to 9999.
    pub fn parse(input: &str) -> Result<Self, String> {
        let bytes = input.as_bytes();
        let ok = bytes.len() == 7
            && bytes[4] == b'-'
            && bytes
                .iter()
                .enumerate()
                .all(|(i, b)| i == 4 || b.is_ascii_digit());
        let parsed = ok
            .then(|| {
                Some((
                    input[..4].parse::<i32>().ok()?,
                    input[5..].parse::<u32>().ok()?,
                ))
            })
            .flatten();
        match parsed {
            Some((year, month)) if (2000..=9999).contains(&year) && (1..=12).contains(&month) => {
                Ok(Self { year, month })
            }
            _ => Err("must be a month as YYYY-MM, such as 2026-11".to_owned()),
        }
    }

    /// A query's required `period` parameter.
    pub fn required(input: Option<&str>) -> Result<Self, String> {
        input.map_or_else(|| Err("is required (YYYY-MM)".to_owned()), Self::parse)
    }

    pub fn of(at: DateTime<Utc>) -> Self {
        Self {
            year: at.year(),
            month: at.month(),
        }
    }

    pub fn start(self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0)
            .single()
            .unwrap_or_default()
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn end(self) -> DateTime<Utc> {
        self.next().start()
    }

    /// Seconds in the month: the denominator of every proration.
    pub fn seconds(self) -> i64 {
        self.end().timestamp() - self.start().timestamp()
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

// ---------------------------------------------------------------------------------------
// Prices

#[derive(Debug, Clone, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Price {
    pub plan_id: String,
    /// The first day (00:00 UTC) the price applies.
    pub effective_from: NaiveDate,
    /// ISO 4217 code, such as USD.
    pub currency: String,
    /// The monthly price in minor units (cents).
    pub monthly_minor: i64,
    pub included_storage_bytes: i64,
    /// Requests a month included (prorated by the seconds held).
    pub included_requests: i64,
    /// Minor units per started GiB over the included storage, per month held.
    pub storage_overage_minor_per_gib: i64,
    /// Minor units per 10,000 requests over the included requests.
    pub request_overage_minor_per_10k: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPrice {
    /// `YYYY-MM-DD`, after today (UTC): prices never apply retroactively (409 otherwise).
    #[schema(value_type = String, format = Date)]
    pub effective_from: String,
    #[schema(pattern = "^[A-Z]{3}$")]
    pub currency: String,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub monthly_minor: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub included_storage_bytes: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub included_requests: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub storage_overage_minor_per_gib: i64,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub request_overage_minor_per_10k: i64,
}

const PRICE_COLUMNS: &str = "plan_id, effective_from, currency, monthly_minor, included_storage_bytes, \
     included_requests, storage_overage_minor_per_gib, request_overage_minor_per_10k";

/// A plan's prices, oldest first. Anyone signed in may read them (as the plans).
pub async fn prices(state: &AppState, plan: &PlanId) -> ApiResult<Vec<Price>> {
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM plans WHERE id = ?")
        .bind(plan.as_str())
        .fetch_optional(&state.db)
        .await?;
    if exists.is_none() {
        return Err(ApiError::NotFound("plan"));
    }
    Ok(sqlx::query_as::<_, Price>(crate::sql!(
        "SELECT {PRICE_COLUMNS} FROM plan_prices WHERE plan_id = ? ORDER BY effective_from"
    ))
    .bind(plan.as_str())
    .fetch_all(&state.db)
    .await?)
}

/// Adds a price from a date after `today` (staff admin).
pub async fn add_price(
    state: &AppState,
    actor: &Actor,
    plan: &PlanId,
    input: NewPrice,
    today: NaiveDate,
) -> ApiResult<Price> {
    actor.require_staff(&[StaffRole::Admin])?;
    let mut fields = Fields::default();
    let from = fields.check(
        "effective_from",
        NaiveDate::parse_from_str(&input.effective_from, "%Y-%m-%d")
            .ok()
            .filter(|_| input.effective_from.len() == 10)
            .ok_or_else(|| "must be a date as YYYY-MM-DD".to_owned()),
    );
    if !(input.currency.len() == 3 && input.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        fields.push("currency", "must be an ISO 4217 code such as USD");
    }
    for (field, value, max) in [
        ("monthly_minor", input.monthly_minor, 1_000_000_000),
        (
            "included_storage_bytes",
            input.included_storage_bytes,
            1_000_000_000_000_000,
        ),
        (
            "included_requests",
            input.included_requests,
            1_000_000_000_000,
        ),
        (
            "storage_overage_minor_per_gib",
            input.storage_overage_minor_per_gib,
            1_000_000_000,
        ),
        (
            "request_overage_minor_per_10k",
            input.request_overage_minor_per_10k,
            1_000_000_000,
        ),
    ] {
        if !(0..=max).contains(&value) {
            fields.push(field, format!("must be between 0 and {max}"));
        }
    }
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM plans WHERE id = ?")
        .bind(plan.as_str())
        .fetch_optional(&state.db)
        .await?;
    if exists.is_none() {
        return Err(ApiError::NotFound("plan"));
    }
    fields.finish()?;
    let Some(from) = from else {
        return Err(ApiError::field("effective_from", "invalid"));
    };
    if from <= today {
        return Err(ApiError::conflict(
            Some("effective_from"),
            format!("must be after today ({today}): a price never applies retroactively"),
        ));
    }
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(crate::sql!(
        "INSERT INTO plan_prices ({PRICE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    ))
    .bind(plan.as_str())
    .bind(from)
    .bind(&input.currency)
    .bind(input.monthly_minor)
    .bind(input.included_storage_bytes)
    .bind(input.included_requests)
    .bind(input.storage_overage_minor_per_gib)
    .bind(input.request_overage_minor_per_10k)
    .execute(&mut *tx)
    .await;
    super::unique(
        inserted,
        "effective_from",
        "this plan has a price from this date",
    )?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "plan.price",
            tenant_id: None,
            target_type: "plan",
            target_id: plan.as_str(),
            details: json!({ "effective_from": from.to_string(), "currency": input.currency,
                "monthly_minor": input.monthly_minor }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Price {
        plan_id: plan.as_str().to_owned(),
        effective_from: from,
        currency: input.currency,
        monthly_minor: input.monthly_minor,
        included_storage_bytes: input.included_storage_bytes,
        included_requests: input.included_requests,
        storage_overage_minor_per_gib: input.storage_overage_minor_per_gib,
        request_overage_minor_per_10k: input.request_overage_minor_per_10k,
    })
}

/// Gives every plan without a price one from its `price_cents` (idempotent): plans created
/// by [`super::plans`] or seeded at start.
pub async fn ensure_base_prices(db: &MySqlPool) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT IGNORE INTO plan_prices (plan_id, effective_from, currency, monthly_minor, \
         included_storage_bytes, included_requests, storage_overage_minor_per_gib, request_overage_minor_per_10k) \
         SELECT p.id, DATE(p.created_at), 'USD', p.price_cents, CAST(p.storage_mb AS SIGNED) * 1048576, 1000000, 50, 10 \
         FROM plans p WHERE NOT EXISTS (SELECT 1 FROM plan_prices x WHERE x.plan_id = p.id)",
    )
    .execute(db)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Samples

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSample {
    #[schema(pattern = "^[a-z2-7]{10}$")]
    pub site: String,
    /// The hour measured: its first second, Unix time (UTC), a multiple of 3600, such as
    /// 1793714400 for 2026-11-03T14:00:00Z.
    #[schema(
        minimum = 946_684_800,
        maximum = 253_402_297_200_i64,
        multiple_of = 3600
    )]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub hour_unix: i64,
    /// `edge` (per-host counts at the edge; billed requests) or `agent` (the site's agent:
    /// access-log counts and storage).
    #[schema(pattern = "^(edge|agent)$")]
    pub source: String,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub requests: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub bytes_out: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub wp_content_bytes: Option<i64>,
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub db_bytes: Option<i64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SampleBatch {
    /// 1 to 200 samples.
    #[schema(min_items = 1, max_items = 200)]
    pub samples: Vec<NewSample>,
}

/// A sample's measured values (`null`: not measured by its source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema, FromRow)]
pub struct SampleValues {
    pub requests: Option<i64>,
    pub bytes_out: Option<i64>,
    pub wp_content_bytes: Option<i64>,
    pub db_bytes: Option<i64>,
}

impl SampleValues {
    /// The values spelled in one string: the conflict table's key beside the sample's.
    fn spelled(&self) -> String {
        let one = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        format!(
            "{}:{}:{}:{}",
            one(self.requests),
            one(self.bytes_out),
            one(self.wp_content_bytes),
            one(self.db_bytes)
        )
    }
}

/// A sample whose key (site, hour, source) was stored with other values: not applied,
/// kept for staff to accept or reject (README, "Billing").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SampleConflict {
    pub id: i64,
    pub site: String,
    /// The hour's first second, Unix time (UTC).
    pub hour_unix: i64,
    pub source: String,
    /// What is stored and billed.
    pub stored: SampleValues,
    /// What was sent since, and not applied.
    pub offered: SampleValues,
    /// When this value was first offered.
    pub received_at: DateTime<Utc>,
    /// `null` while open; `accepted` (the offered values replaced the stored ones) or
    /// `rejected`.
    pub resolution: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// A conflicting sample of an ingest: its position in the batch and the conflict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Conflicting {
    /// The sample's index in `samples`.
    pub index: u64,
    pub conflict: SampleConflict,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ingested {
    /// Samples stored now.
    pub inserted: u64,
    /// Samples whose key (site, hour, source) was already stored with the same values:
    /// nothing changed.
    pub unchanged: u64,
    /// Samples whose key was already stored with other values: not applied, kept as
    /// conflicts (listed in `conflicting`).
    pub conflicts: u64,
    pub conflicting: Vec<Conflicting>,
}

/// Stores samples (staff admin or operator; the metering collectors use a staff API token).
/// The first sample of a key is billed; the same values again change nothing; other values
/// for a stored key are conflicts: kept, reported, never applied silently.
pub async fn ingest(state: &AppState, actor: &Actor, batch: SampleBatch) -> ApiResult<Ingested> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let mut fields = Fields::default();
    if batch.samples.is_empty() || batch.samples.len() > 200 {
        fields.push("samples", "must hold 1 to 200 samples");
    }
    let mut rows = Vec::with_capacity(batch.samples.len());
    for (i, s) in batch.samples.iter().enumerate() {
        let site = fields.check(
            &format!("samples[{i}].site"),
            Id::parse(&s.site).ok_or_else(|| "is not a site id".to_owned()),
        );
        let hour = fields.check(
            &format!("samples[{i}].hour_unix"),
            Some(s.hour_unix)
                .filter(|t| t % 3600 == 0 && (946_684_800..=253_402_297_200).contains(t))
                .and_then(|t| DateTime::from_timestamp(t, 0))
                .ok_or_else(|| {
                    "must be the first second of an hour, Unix time, from 2000 to 9999".to_owned()
                }),
        );
        if !matches!(s.source.as_str(), "edge" | "agent") {
            fields.push(format!("samples[{i}].source"), "must be edge or agent");
        }
        for (name, value) in [
            ("requests", s.requests),
            ("bytes_out", s.bytes_out),
            ("wp_content_bytes", s.wp_content_bytes),
            ("db_bytes", s.db_bytes),
        ] {
            if value.is_some_and(|v| !(0..=1_000_000_000_000_000).contains(&v)) {
                fields.push(
                    format!("samples[{i}].{name}"),
                    "must be between 0 and 10^15",
                );
            }
        }
        if let (Some(site), Some(hour)) = (site, hour) {
            rows.push((site, hour, s));
        }
    }
    fields.finish()?;
    let ids: Vec<&str> = rows.iter().map(|(site, _, _)| site.as_str()).collect();
    let known: HashSet<String> = if ids.is_empty() {
        HashSet::new()
    } else {
        let marks = vec!["?"; ids.len()].join(", ");
        let mut query = sqlx::query_scalar::<_, String>(crate::sql!(
            "SELECT id FROM sites WHERE id IN ({marks})"
        ));
        for id in &ids {
            query = query.bind(*id);
        }
        query.fetch_all(&state.db).await?.into_iter().collect()
    };
    if let Some((i, (site, _, _))) = rows
        .iter()
        .enumerate()
        .find(|(_, (site, _, _))| !known.contains(site.as_str()))
    {
        return Err(ApiError::conflict(
            Some("samples"),
            format!("samples[{i}].site: there is no site {}", site.as_str()),
        ));
    }
    let mut tx = state.db.begin().await?;
    let (mut inserted, mut unchanged) = (0, 0);
    let mut conflicting = Vec::new();
    for (i, (site, hour, s)) in rows.iter().enumerate() {
        let offered = SampleValues {
            requests: s.requests,
            bytes_out: s.bytes_out,
            wp_content_bytes: s.wp_content_bytes,
            db_bytes: s.db_bytes,
        };
        let stored_now = sqlx::query(
            "INSERT IGNORE INTO usage_samples (site_id, hour, source, requests, bytes_out, wp_content_bytes, db_bytes) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(site.as_str())
        .bind(hour.naive_utc())
        .bind(&s.source)
        .bind(offered.requests)
        .bind(offered.bytes_out)
        .bind(offered.wp_content_bytes)
        .bind(offered.db_bytes)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if stored_now > 0 {
            inserted += 1;
            continue;
        }
        let stored = sqlx::query_as::<_, SampleValues>(
            "SELECT requests, bytes_out, wp_content_bytes, db_bytes FROM usage_samples \
             WHERE site_id = ? AND hour = ? AND source = ?",
        )
        .bind(site.as_str())
        .bind(hour.naive_utc())
        .bind(&s.source)
        .fetch_one(&mut *tx)
        .await?;
        if stored == offered {
            unchanged += 1;
            continue;
        }
        // The same conflicting value sent again is the same row (its key spells the values).
        sqlx::query(
            "INSERT INTO usage_sample_conflicts (site_id, hour, source, requests, bytes_out, \
             wp_content_bytes, db_bytes, offered) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE id = id",
        )
        .bind(site.as_str())
        .bind(hour.naive_utc())
        .bind(&s.source)
        .bind(offered.requests)
        .bind(offered.bytes_out)
        .bind(offered.wp_content_bytes)
        .bind(offered.db_bytes)
        .bind(offered.spelled())
        .execute(&mut *tx)
        .await?;
        let conflict = sqlx::query_as::<_, ConflictRow>(crate::sql!(
            "SELECT {CONFLICT_COLUMNS} FROM usage_sample_conflicts c \
             JOIN usage_samples u ON u.site_id = c.site_id AND u.hour = c.hour AND u.source = c.source \
             WHERE c.site_id = ? AND c.hour = ? AND c.source = ? AND c.offered = ?"
        ))
        .bind(site.as_str())
        .bind(hour.naive_utc())
        .bind(&s.source)
        .bind(offered.spelled())
        .fetch_one(&mut *tx)
        .await?
        .into_conflict();
        tracing::warn!(
            site = %site,
            hour_unix = hour.timestamp(),
            source = %s.source,
            conflict_id = conflict.id,
            "usage sample differs from the stored one: kept as a conflict, not applied"
        );
        conflicting.push(Conflicting {
            index: i as u64,
            conflict,
        });
    }
    tx.commit().await?;
    Ok(Ingested {
        inserted,
        unchanged,
        conflicts: conflicting.len() as u64,
        conflicting,
    })
}

const CONFLICT_COLUMNS: &str = "c.id, c.site_id, c.hour, c.source, \
     u.requests AS s_requests, u.bytes_out AS s_bytes_out, u.wp_content_bytes AS s_wp_content_bytes, u.db_bytes AS s_db_bytes, \
     c.requests, c.bytes_out, c.wp_content_bytes, c.db_bytes, c.received_at, c.resolution, c.resolved_at";

#[derive(FromRow)]
struct ConflictRow {
    id: i64,
    site_id: String,
    hour: chrono::NaiveDateTime,
    source: String,
    s_requests: Option<i64>,
    s_bytes_out: Option<i64>,
    s_wp_content_bytes: Option<i64>,
    s_db_bytes: Option<i64>,
    requests: Option<i64>,
    bytes_out: Option<i64>,
    wp_content_bytes: Option<i64>,
    db_bytes: Option<i64>,
    received_at: DateTime<Utc>,
    resolution: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
}

impl ConflictRow {
    fn into_conflict(self) -> SampleConflict {
        SampleConflict {
            id: self.id,
            site: self.site_id,
            hour_unix: self.hour.and_utc().timestamp(),
            source: self.source,
            stored: SampleValues {
                requests: self.s_requests,
                bytes_out: self.s_bytes_out,
                wp_content_bytes: self.s_wp_content_bytes,
                db_bytes: self.s_db_bytes,
            },
            offered: SampleValues {
                requests: self.requests,
                bytes_out: self.bytes_out,
                wp_content_bytes: self.wp_content_bytes,
                db_bytes: self.db_bytes,
            },
            received_at: self.received_at,
            resolution: self.resolution,
            resolved_at: self.resolved_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ConflictQuery {
    /// The month of the samples' hours, `YYYY-MM` (UTC).
    #[param(
        required = true,
        pattern = "^(2[0-9]{3}|[3-9][0-9]{3})-(0[1-9]|1[0-2])$"
    )]
    pub period: Option<String>,
}

/// The conflicts of a period's samples, open and resolved, by hour (staff).
pub async fn conflicts(
    state: &AppState,
    actor: &Actor,
    query: ConflictQuery,
) -> ApiResult<Vec<SampleConflict>> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let period =
        Period::required(query.period.as_deref()).map_err(|m| ApiError::field("period", m))?;
    let rows = sqlx::query_as::<_, ConflictRow>(crate::sql!(
        "SELECT {CONFLICT_COLUMNS} FROM usage_sample_conflicts c \
         JOIN usage_samples u ON u.site_id = c.site_id AND u.hour = c.hour AND u.source = c.source \
         WHERE c.hour >= ? AND c.hour < ? ORDER BY c.hour, c.site_id, c.source, c.id"
    ))
    .bind(period.start().naive_utc())
    .bind(sql_time(period.end()))
    .fetch_all(&state.db)
    .await?;
    Ok(rows.into_iter().map(ConflictRow::into_conflict).collect())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// `accepted`: the offered values replace the stored sample (a closed period gets
    /// adjustment lines in the next open one); `rejected`: the stored sample stays.
    #[schema(pattern = "^(accepted|rejected)$")]
    pub resolution: String,
}

/// Accepts or rejects an open conflict (staff admin), once.
pub async fn resolve_conflict(
    state: &AppState,
    actor: &Actor,
    id: &str,
    input: Resolution,
    now: DateTime<Utc>,
) -> ApiResult<SampleConflict> {
    actor.require_staff(&[StaffRole::Admin])?;
    let Some(id) = id
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0 && id.len() <= 18 && id.bytes().all(|b| b.is_ascii_digit()))
    else {
        return Err(ApiError::NotFound("conflict"));
    };
    if !matches!(input.resolution.as_str(), "accepted" | "rejected") {
        return Err(ApiError::field(
            "resolution",
            "must be accepted or rejected",
        ));
    }
    let mut tx = state.db.begin().await?;
    let Some(row) = sqlx::query_as::<_, ConflictRow>(crate::sql!(
        "SELECT {CONFLICT_COLUMNS} FROM usage_sample_conflicts c \
         JOIN usage_samples u ON u.site_id = c.site_id AND u.hour = c.hour AND u.source = c.source \
         WHERE c.id = ? FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Err(ApiError::NotFound("conflict"));
    };
    if row.resolution.is_some() {
        return Err(ApiError::conflict(
            Some("resolution"),
            "this conflict is resolved already",
        ));
    }
    let conflict = row.into_conflict();
    if input.resolution == "accepted" {
        sqlx::query(
            "UPDATE usage_samples SET requests = ?, bytes_out = ?, wp_content_bytes = ?, db_bytes = ?, \
             received_at = ? WHERE site_id = ? AND hour = ? AND source = ?",
        )
        .bind(conflict.offered.requests)
        .bind(conflict.offered.bytes_out)
        .bind(conflict.offered.wp_content_bytes)
        .bind(conflict.offered.db_bytes)
        .bind(now.naive_utc())
        .bind(&conflict.site)
        .bind(
            DateTime::from_timestamp(conflict.hour_unix, 0)
                .unwrap_or_default()
                .naive_utc(),
        )
        .bind(&conflict.source)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE usage_sample_conflicts SET resolution = ?, resolved_at = ?, resolved_by = ? WHERE id = ?",
    )
    .bind(&input.resolution)
    .bind(now.naive_utc())
    .bind(&actor.user_id)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "billing.conflict",
            tenant_id: None,
            target_type: "site",
            target_id: &conflict.site,
            details: json!({ "conflict": id, "resolution": input.resolution,
                "hour_unix": conflict.hour_unix, "source": conflict.source,
                "stored": conflict.stored, "offered": conflict.offered }),
        },
    )
    .await?;
    tx.commit().await?;
    let stored = if input.resolution == "accepted" {
        conflict.offered.clone()
    } else {
        conflict.stored.clone()
    };
    Ok(SampleConflict {
        stored,
        resolution: Some(input.resolution),
        resolved_at: Some(now),
        ..conflict
    })
}

/// The agent's storage sample of the hour `at` falls in (the first one wins, as for any
/// sample): called on each agent report that carries sizes.
pub async fn record_agent_storage(
    conn: &mut sqlx::MySqlConnection,
    site: &str,
    at: DateTime<Utc>,
    wp_content_bytes: Option<u64>,
    db_bytes: Option<u64>,
) -> sqlx::Result<()> {
    let hour = DateTime::from_timestamp(at.timestamp() - at.timestamp().rem_euclid(3600), 0)
        .unwrap_or_default();
    sqlx::query(
        "INSERT IGNORE INTO usage_samples (site_id, hour, source, wp_content_bytes, db_bytes) \
         VALUES (?, ?, 'agent', ?, ?)",
    )
    .bind(site)
    .bind(hour.naive_utc())
    .bind(wp_content_bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
    .bind(db_bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored agent report's origin and counters: (task, started at, seq, requests, bytes).
pub type CountedReport<'a> = (Option<&'a str>, DateTime<Utc>, i64, u64, u64);

/// What one agent report adds to the site's access-log counts: the growth of its counters
/// since the report it replaces when both come from the same agent process (same task,
/// same start, later sequence number), else everything the new process counted since it
/// started. `previous` is (task, started at, seq, requests, bytes) of the replaced report;
/// `current` the new report's (task, started at, seq). Counters that went down (a reset
/// the origin did not show) count from zero.
pub fn counted_since(
    previous: Option<CountedReport<'_>>,
    current: (Option<&str>, DateTime<Utc>, i64),
    requests_total: u64,
    bytes_total: u64,
) -> (u64, u64) {
    match previous {
        Some((task, started, seq, requests, bytes))
            if task == current.0 && started == current.1 && seq < current.2 =>
        {
            (
                requests_total
                    .checked_sub(requests)
                    .unwrap_or(requests_total),
                bytes_total.checked_sub(bytes).unwrap_or(bytes_total),
            )
        }
        Some((task, started, seq, _, _))
            if task == current.0 && started == current.1 && seq >= current.2 =>
        {
            (0, 0)
        }
        _ => (requests_total, bytes_total),
    }
}

/// Adds an agent report's access-log counts to the hour `at` falls in (the hour the report
/// arrived: with reports every few seconds, the traffic of those seconds may land in the
/// next hour). Kept beside the edge's counts for comparison; not billed.
pub async fn record_agent_requests(
    conn: &mut sqlx::MySqlConnection,
    site: &str,
    at: DateTime<Utc>,
    requests: u64,
    bytes_out: u64,
) -> sqlx::Result<()> {
    let hour = DateTime::from_timestamp(hour_floor(at.timestamp()), 0).unwrap_or_default();
    let clamp = |v: u64| i64::try_from(v.min(1_000_000_000_000_000)).unwrap_or(0);
    sqlx::query(
        "INSERT INTO agent_request_counts (site_id, hour, requests, bytes_out, reports) VALUES (?, ?, ?, ?, 1) \
         ON DUPLICATE KEY UPDATE requests = LEAST(requests + VALUES(requests), 1000000000000000000), \
         bytes_out = LEAST(bytes_out + VALUES(bytes_out), 1000000000000000000), reports = reports + 1",
    )
    .bind(site)
    .bind(hour.naive_utc())
    .bind(clamp(requests))
    .bind(clamp(bytes_out))
    .execute(conn)
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Lines

/// One line of an export: a charge of a site, an adjustment, or a tenant's total. The
/// field order is the CSV's column order (stable; README.md, "Billing").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Line {
    pub period: String,
    pub tenant_id: String,
    pub tenant_slug: String,
    /// Empty on `total` lines.
    pub site_id: String,
    /// `plan`, `storage_overage`, `request_overage`, `adjustment` or `total`.
    pub kind: String,
    /// On an adjustment, the kind of line it corrects; else empty.
    pub adjusts: String,
    /// The period the charge is for: this one, or a closed one an adjustment corrects.
    pub for_period: String,
    pub plan: String,
    /// The `effective_from` of the price used.
    pub price_from: String,
    pub quantity: i64,
    /// `second`, `gib` or `request`.
    pub unit: String,
    /// Monthly price, per GiB-month or per 10,000 requests, in minor units.
    pub rate_minor: i64,
    pub amount_minor: i64,
    pub currency: String,
    /// Seconds billed on this plan and price in the period.
    pub seconds: i64,
    /// Requests counted at the edge in the hours of this line.
    pub requests: i64,
    /// The largest hourly storage sample (wp-content + database) in the hours of this line.
    pub storage_peak_bytes: i64,
    /// Hours billed without an edge sample.
    pub gap_hours_edge: i64,
    /// Hours billed without an agent sample.
    pub gap_hours_agent: i64,
}

/// The CSV header: the column order, stable (documented in README.md).
pub const CSV_HEADER: &str = "period,tenant_id,tenant_slug,site_id,kind,adjusts,for_period,plan,price_from,\
quantity,unit,rate_minor,amount_minor,currency,seconds,requests,storage_peak_bytes,gap_hours_edge,gap_hours_agent";

/// One RFC 4180 field: quoted when it holds a comma, a quote, CR or LF (quotes doubled).
fn csv_field(out: &mut String, value: &str) {
    if value.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&value.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

impl Line {
    /// The line as a CSV record, CRLF-terminated (RFC 4180).
    pub fn csv(&self) -> String {
        let mut out = String::with_capacity(200);
        let texts = [
            &self.period,
            &self.tenant_id,
            &self.tenant_slug,
            &self.site_id,
            &self.kind,
            &self.adjusts,
            &self.for_period,
            &self.plan,
            &self.price_from,
        ];
        for (i, t) in texts.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_field(&mut out, t);
        }
        let tail = [
            self.quantity.to_string(),
            self.unit.clone(),
            self.rate_minor.to_string(),
            self.amount_minor.to_string(),
            self.currency.clone(),
            self.seconds.to_string(),
            self.requests.to_string(),
            self.storage_peak_bytes.to_string(),
            self.gap_hours_edge.to_string(),
            self.gap_hours_agent.to_string(),
        ];
        for t in &tail {
            out.push(',');
            csv_field(&mut out, t);
        }
        out.push_str("\r\n");
        out
    }

    /// The line as one JSON object and a newline (JSON Lines).
    pub fn jsonl(&self) -> String {
        let mut out = serde_json::to_string(self).unwrap_or_default();
        out.push('\n');
        out
    }
}

// ---------------------------------------------------------------------------------------
// The rollup: the lines and the hours they read usage from come from the state history
// and the prices (small, loaded whole, computed in Rust); the samples (large: one per site,
// hour and source) are summed by the database over those hours.

/// A history row: from `at` on, the site is in `state` on `plan_id`.
#[derive(Debug, Clone, FromRow)]
pub struct HistoryRow {
    pub site_id: String,
    pub tenant_id: String,
    pub state: String,
    pub plan_id: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, FromRow)]
pub struct SampleRow {
    pub site_id: String,
    pub hour: chrono::NaiveDateTime,
    pub source: String,
    pub requests: Option<i64>,
    pub wp_content_bytes: Option<i64>,
    pub db_bytes: Option<i64>,
}

/// Everything a rollup reads.
#[derive(Debug, Default)]
pub struct Inputs {
    /// Ordered by site, then time.
    pub history: Vec<HistoryRow>,
    /// Per plan, ordered by `effective_from`.
    pub prices: HashMap<String, Vec<Price>>,
    pub plan_slugs: HashMap<String, String>,
    pub tenant_slugs: HashMap<String, String>,
    pub samples: Vec<SampleRow>,
}

/// Rounds `n / d` half up (n ≥ 0, d > 0).
fn div_round(n: i128, d: i128) -> i64 {
    i64::try_from((2 * n + d) / (2 * d)).unwrap_or(i64::MAX)
}

const GIB: i64 = 1 << 30;

/// A site's samples by hour (epoch seconds): edge requests, agent storage bytes.
type HourSamples = HashMap<i64, (Option<i64>, Option<i64>)>;

/// A line before its usage is known: a site's seconds on one plan at one price.
#[derive(Debug, Clone)]
struct Draft<'a> {
    site: &'a str,
    tenant: &'a str,
    plan: &'a str,
    /// Index of the price in `inputs.prices[plan]`.
    price: usize,
    seconds: i64,
    /// Hours of the period attributed to this line.
    hours: i64,
}

/// Hours `[from, to)` (epoch seconds, on the hour) of a draft's site whose samples count
/// toward that draft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HourRange {
    draft: usize,
    from: i64,
    to: i64,
}

/// The samples of a draft's hours, summed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    edge_hours: i64,
    requests: i64,
    agent_hours: i64,
    storage_peak: i64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.edge_hours += other.edge_hours;
        self.requests = self.requests.saturating_add(other.requests);
        self.agent_hours += other.agent_hours;
        self.storage_peak = self.storage_peak.max(other.storage_peak);
    }
}

/// The first second of the hour `t` falls in, and of the hour after the one `t` ends.
fn hour_floor(t: i64) -> i64 {
    t - t.rem_euclid(3600)
}

fn hour_ceil(t: i64) -> i64 {
    hour_floor(t + 3599)
}

/// The lines of `period` without their usage, and the hours each line's usage is read
/// from: the part of the rollup that needs only the state history and the prices (small),
/// so that the samples (large) can be summed where they are stored.
fn drafts(period: Period, cap: DateTime<Utc>, inputs: &Inputs) -> (Vec<Draft<'_>>, Vec<HourRange>) {
    let start = period.start().timestamp();
    let end = period.end().timestamp().min(cap.timestamp());
    let mut drafts = Vec::new();
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < inputs.history.len() {
        let site = &inputs.history[i].site_id;
        let mut j = i;
        while j < inputs.history.len() && &inputs.history[j].site_id == site {
            j += 1;
        }
        let rows = &inputs.history[i..j];
        i = j;
        // Billed pieces, in time order and disjoint: (from, to, plan, price index).
        let mut pieces: Vec<(i64, i64, &str, usize)> = Vec::new();
        for (k, row) in rows.iter().enumerate() {
            let from = row.at.timestamp().max(start);
            let to = rows
                .get(k + 1)
                .map_or(end, |next| next.at.timestamp())
                .min(end);
            if from >= to || !BILLED_STATES.contains(&row.state.as_str()) {
                continue;
            }
            let Some(prices) = inputs.prices.get(&row.plan_id) else {
                continue;
            };
            // Split at every price's start inside [from, to).
            let mut t = from;
            while t < to {
                let day = DateTime::from_timestamp(t, 0)
                    .unwrap_or_default()
                    .date_naive();
                let Some(idx) = prices.iter().rposition(|p| p.effective_from <= day) else {
                    // No price yet: not charged until the first one.
                    match prices.first() {
                        Some(p) => {
                            t = p
                                .effective_from
                                .and_hms_opt(0, 0, 0)
                                .unwrap_or_default()
                                .and_utc()
                                .timestamp();
                            continue;
                        }
                        None => break,
                    }
                };
                let piece_end = prices.get(idx + 1).map_or(to, |p| {
                    p.effective_from
                        .and_hms_opt(0, 0, 0)
                        .unwrap_or_default()
                        .and_utc()
                        .timestamp()
                        .min(to)
                });
                pieces.push((t, piece_end, row.plan_id.as_str(), idx));
                t = piece_end;
            }
        }
        if pieces.is_empty() {
            continue;
        }
        // Each hour billed belongs to the line of the latest piece in it: a piece's hours
        // run from the hour it starts in to the hour it ends in, less the hour the next
        // piece starts in (pieces are disjoint and in order, so no later piece reaches
        // further back).
        let mut seconds: BTreeMap<(&str, usize), (i64, i64)> = BTreeMap::new();
        let mut site_ranges = Vec::new();
        for (k, &(from, to, plan, idx)) in pieces.iter().enumerate() {
            let entry = seconds.entry((plan, idx)).or_default();
            entry.0 += to - from;
            let h_from = hour_floor(from);
            let h_to = pieces
                .get(k + 1)
                .map_or(hour_ceil(to), |next| hour_ceil(to).min(hour_floor(next.0)));
            if h_from < h_to {
                entry.1 += (h_to - h_from) / 3600;
                site_ranges.push(((plan, idx), h_from, h_to));
            }
        }
        let first = drafts.len();
        let index: HashMap<(&str, usize), usize> = seconds
            .keys()
            .enumerate()
            .map(|(n, key)| (*key, first + n))
            .collect();
        for ((plan, price), (secs, hours)) in seconds {
            drafts.push(Draft {
                site: site.as_str(),
                tenant: rows[0].tenant_id.as_str(),
                plan,
                price,
                seconds: secs,
                hours,
            });
        }
        for (key, from, to) in site_ranges {
            ranges.push(HourRange {
                draft: index[&key],
                from,
                to,
            });
        }
    }
    (drafts, ranges)
}

/// The lines of the drafts given their usage (`usage[n]` is `drafts[n]`'s).
fn finish(period: Period, inputs: &Inputs, drafts: &[Draft<'_>], usage: &[Usage]) -> Vec<Line> {
    let month = i128::from(period.seconds());
    let mut lines = Vec::with_capacity(drafts.len());
    for (draft, used) in drafts.iter().zip(usage) {
        let price = &inputs.prices[draft.plan][draft.price];
        let base = Line {
            period: period.to_string(),
            tenant_id: draft.tenant.to_owned(),
            tenant_slug: inputs
                .tenant_slugs
                .get(draft.tenant)
                .cloned()
                .unwrap_or_default(),
            site_id: draft.site.to_owned(),
            kind: "plan".to_owned(),
            adjusts: String::new(),
            for_period: period.to_string(),
            plan: inputs
                .plan_slugs
                .get(draft.plan)
                .cloned()
                .unwrap_or_default(),
            price_from: price.effective_from.to_string(),
            quantity: draft.seconds,
            unit: "second".to_owned(),
            rate_minor: price.monthly_minor,
            amount_minor: div_round(
                i128::from(price.monthly_minor) * i128::from(draft.seconds),
                month,
            ),
            currency: price.currency.clone(),
            seconds: draft.seconds,
            requests: used.requests,
            storage_peak_bytes: used.storage_peak,
            gap_hours_edge: draft.hours - used.edge_hours,
            gap_hours_agent: draft.hours - used.agent_hours,
        };
        let included =
            i64::try_from(i128::from(price.included_requests) * i128::from(draft.seconds) / month)
                .unwrap_or(i64::MAX);
        let over_requests = (used.requests - included).max(0);
        let over_bytes = (used.storage_peak - price.included_storage_bytes).max(0);
        let over_gib = (over_bytes + GIB - 1) / GIB;
        let storage = Line {
            kind: "storage_overage".to_owned(),
            quantity: over_gib,
            unit: "gib".to_owned(),
            rate_minor: price.storage_overage_minor_per_gib,
            amount_minor: div_round(
                i128::from(price.storage_overage_minor_per_gib)
                    * i128::from(over_gib)
                    * i128::from(draft.seconds),
                month,
            ),
            ..base.clone()
        };
        let requests = Line {
            kind: "request_overage".to_owned(),
            quantity: over_requests,
            unit: "request".to_owned(),
            rate_minor: price.request_overage_minor_per_10k,
            amount_minor: div_round(
                i128::from(price.request_overage_minor_per_10k) * i128::from(over_requests),
                10_000,
            ),
            ..base.clone()
        };
        lines.push(base);
        if storage.quantity > 0 {
            lines.push(storage);
        }
        if requests.quantity > 0 {
            lines.push(requests);
        }
    }
    lines
}

/// The charge lines of `period` for the sites in `inputs`, counted up to `cap` (the end of
/// the period, or now for the current month), with the usage summed in memory from
/// `inputs.samples`. No adjustments, no totals. The platform sums the samples in the
/// database instead ([`base_lines_db`]); both give the same lines (a test holds them to it).
pub fn base_lines(period: Period, cap: DateTime<Utc>, inputs: &Inputs) -> Vec<Line> {
    let mut samples: HashMap<&str, HourSamples> = HashMap::new();
    for s in &inputs.samples {
        let hour = s.hour.and_utc().timestamp();
        let slot = samples
            .entry(s.site_id.as_str())
            .or_default()
            .entry(hour)
            .or_default();
        match s.source.as_str() {
            "edge" => slot.0 = Some(s.requests.unwrap_or(0)),
            "agent" => {
                slot.1 = Some(
                    s.wp_content_bytes
                        .unwrap_or(0)
                        .saturating_add(s.db_bytes.unwrap_or(0)),
                );
            }
            _ => {}
        }
    }
    let (drafts, ranges) = drafts(period, cap, inputs);
    let mut usage = vec![Usage::default(); drafts.len()];
    for range in &ranges {
        let Some(site) = samples.get(drafts[range.draft].site) else {
            continue;
        };
        let used = &mut usage[range.draft];
        let mut h = range.from;
        while h < range.to {
            let (edge, agent) = site.get(&h).copied().unwrap_or_default();
            if let Some(requests) = edge {
                used.edge_hours += 1;
                used.requests = used.requests.saturating_add(requests);
            }
            if let Some(bytes) = agent {
                used.agent_hours += 1;
                used.storage_peak = used.storage_peak.max(bytes);
            }
            h += 3600;
        }
    }
    finish(period, inputs, &drafts, &usage)
}

/// Hour ranges sent to the database in one statement.
const RANGES_PER_QUERY: usize = 2000;

/// Sums each range's samples in the database: one row back per range, whatever the number
/// of samples. The ranges travel as one JSON array (`JSON_TABLE`), and each is read from
/// `usage_samples` by its primary key (site, hour, source).
const USAGE_SQL: &str = "SELECT r.n, \
    CAST(COALESCE(SUM(u.source = 'edge'), 0) AS SIGNED), \
    CAST(LEAST(COALESCE(SUM(IF(u.source = 'edge', COALESCE(u.requests, 0), 0)), 0), 9223372036854775807) AS SIGNED), \
    CAST(COALESCE(SUM(u.source = 'agent'), 0) AS SIGNED), \
    CAST(LEAST(COALESCE(MAX(IF(u.source = 'agent', \
        CAST(COALESCE(u.wp_content_bytes, 0) AS DECIMAL(21)) + COALESCE(u.db_bytes, 0), NULL)), 0), \
        9223372036854775807) AS SIGNED) \
    FROM JSON_TABLE(?, '$[*]' COLUMNS (n INT PATH '$[0]', \
        site CHAR(10) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PATH '$[1]', \
        h0 DATETIME PATH '$[2]', h1 DATETIME PATH '$[3]')) r \
    STRAIGHT_JOIN usage_samples u ON u.site_id = r.site AND u.hour >= r.h0 AND u.hour < r.h1 \
    GROUP BY r.n";

/// [`base_lines`] with the samples summed in the database, per line's hour ranges: the
/// rollup moves one row per range instead of every sample of the month.
pub async fn base_lines_db(
    db: &MySqlPool,
    period: Period,
    cap: DateTime<Utc>,
    inputs: &Inputs,
) -> ApiResult<Vec<Line>> {
    let (drafts, ranges) = drafts(period, cap, inputs);
    let mut usage = vec![Usage::default(); drafts.len()];
    let when = |t: i64| {
        sql_time(DateTime::from_timestamp(t, 0).unwrap_or_default())
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    for chunk in ranges.chunks(RANGES_PER_QUERY) {
        let doc = serde_json::Value::Array(
            chunk
                .iter()
                .enumerate()
                .map(|(n, r)| json!([n, drafts[r.draft].site, when(r.from), when(r.to)]))
                .collect(),
        );
        let rows: Vec<(i32, i64, i64, i64, i64)> = sqlx::query_as(USAGE_SQL)
            .bind(doc.to_string())
            .fetch_all(db)
            .await?;
        for (n, edge_hours, requests, agent_hours, storage_peak) in rows {
            let Some(range) = usize::try_from(n).ok().and_then(|n| chunk.get(n)) else {
                continue;
            };
            usage[range.draft].add(Usage {
                edge_hours,
                requests,
                agent_hours,
                storage_peak,
            });
        }
    }
    Ok(finish(period, inputs, &drafts, &usage))
}

/// The key an adjustment matches lines on.
fn adjust_key(line: &Line) -> (String, String, String, String, String, String) {
    let kind = if line.kind == "adjustment" {
        line.adjusts.clone()
    } else {
        line.kind.clone()
    };
    (
        line.tenant_id.clone(),
        line.site_id.clone(),
        kind,
        line.plan.clone(),
        line.price_from.clone(),
        line.currency.clone(),
    )
}

/// Adjustment lines in `period` for the closed period `closed`: what `recomputed` (its lines
/// computed now) says minus what `frozen` (every frozen line for it, adjustments included)
/// said.
pub fn adjustments(period: Period, recomputed: &[Line], frozen: &[Line]) -> Vec<Line> {
    let mut sums: BTreeMap<_, (i64, i64, Option<Line>)> = BTreeMap::new();
    for line in recomputed {
        let e = sums.entry(adjust_key(line)).or_default();
        e.0 += line.quantity;
        e.1 += line.amount_minor;
        e.2 = Some(line.clone());
    }
    for line in frozen.iter().filter(|l| l.kind != "total") {
        let e = sums.entry(adjust_key(line)).or_default();
        e.0 -= line.quantity;
        e.1 -= line.amount_minor;
        if e.2.is_none() {
            e.2 = Some(line.clone());
        }
    }
    let mut out = Vec::new();
    for ((_, _, kind, _, _, _), (quantity, amount, line)) in sums {
        let Some(line) = line else { continue };
        if quantity == 0 && amount == 0 {
            continue;
        }
        out.push(Line {
            period: period.to_string(),
            kind: "adjustment".to_owned(),
            adjusts: kind,
            quantity,
            amount_minor: amount,
            ..line
        });
    }
    out
}

/// Orders lines per tenant (by site, adjustments after charges) and appends each tenant's
/// totals, one per currency.
pub fn with_totals(period: Period, mut lines: Vec<Line>) -> Vec<Line> {
    fn rank(kind: &str) -> u8 {
        match kind {
            "plan" => 0,
            "storage_overage" => 1,
            "request_overage" => 2,
            _ => 3,
        }
    }
    /// By tenant and site, charges before adjustments, then by period, by kind (an
    /// adjustment ranks as the kind it adjusts), plan and price.
    fn order(l: &Line) -> (&str, &str, bool, &str, u8, &str, &str) {
        let adjustment = l.kind == "adjustment";
        (
            &l.tenant_id,
            &l.site_id,
            adjustment,
            &l.for_period,
            rank(if adjustment { &l.adjusts } else { &l.kind }),
            &l.plan,
            &l.price_from,
        )
    }
    lines.sort_by(|a, b| order(a).cmp(&order(b)));
    let mut out = Vec::with_capacity(lines.len() + 8);
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut iter = lines.into_iter().peekable();
    while let Some(line) = iter.next() {
        *totals.entry(line.currency.clone()).or_default() += line.amount_minor;
        let last_of_tenant = iter.peek().is_none_or(|n| n.tenant_id != line.tenant_id);
        let (tenant_id, tenant_slug) = (line.tenant_id.clone(), line.tenant_slug.clone());
        out.push(line);
        if last_of_tenant {
            for (currency, amount) in std::mem::take(&mut totals) {
                out.push(Line {
                    period: period.to_string(),
                    tenant_id: tenant_id.clone(),
                    tenant_slug: tenant_slug.clone(),
                    site_id: String::new(),
                    kind: "total".to_owned(),
                    adjusts: String::new(),
                    for_period: period.to_string(),
                    plan: String::new(),
                    price_from: String::new(),
                    quantity: 0,
                    unit: String::new(),
                    rate_minor: 0,
                    amount_minor: amount,
                    currency,
                    seconds: 0,
                    requests: 0,
                    storage_peak_bytes: 0,
                    gap_hours_edge: 0,
                    gap_hours_agent: 0,
                });
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Loading and closing

/// Which tenants a caller's export covers: `None` for all (staff).
pub type TenantScope = Option<Vec<String>>;

/// A time as MariaDB's DATETIME holds it: the end of December 9999 is the largest.
fn sql_time(at: DateTime<Utc>) -> chrono::NaiveDateTime {
    let max = NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 59))
        .unwrap_or_default();
    at.naive_utc().min(max)
}

/// The history, prices and names a rollup of `period` reads (not the samples: see
/// [`base_lines_db`]).
async fn load_inputs(db: &MySqlPool, period: Period, scope: &TenantScope) -> ApiResult<Inputs> {
    let end = sql_time(period.end());
    let mut history = sqlx::query_as::<_, HistoryRow>(
        "SELECT site_id, tenant_id, state, plan_id, at FROM site_state_history WHERE at < ? \
         ORDER BY site_id, at, id",
    )
    .bind(end)
    .fetch_all(db)
    .await?;
    if let Some(tenants) = scope {
        history.retain(|h| tenants.contains(&h.tenant_id));
    }
    let mut prices: HashMap<String, Vec<Price>> = HashMap::new();
    for price in sqlx::query_as::<_, Price>(crate::sql!(
        "SELECT {PRICE_COLUMNS} FROM plan_prices ORDER BY plan_id, effective_from"
    ))
    .fetch_all(db)
    .await?
    {
        prices.entry(price.plan_id.clone()).or_default().push(price);
    }
    let plan_slugs = sqlx::query_as::<_, (String, String)>("SELECT id, slug FROM plans")
        .fetch_all(db)
        .await?
        .into_iter()
        .collect();
    let tenant_slugs = sqlx::query_as::<_, (String, String)>("SELECT id, slug FROM tenants")
        .fetch_all(db)
        .await?
        .into_iter()
        .collect();
    Ok(Inputs {
        history,
        prices,
        plan_slugs,
        tenant_slugs,
        samples: Vec::new(),
    })
}

async fn closed_periods(db: &MySqlPool) -> ApiResult<Vec<Period>> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT period FROM billing_periods ORDER BY period")
            .fetch_all(db)
            .await?;
    Ok(rows.iter().filter_map(|p| Period::parse(p).ok()).collect())
}

async fn frozen_lines(
    db: &MySqlPool,
    filter: &str,
    value: &str,
    scope: &TenantScope,
) -> ApiResult<Vec<Line>> {
    let rows: Vec<(String, String)> = sqlx::query_as(crate::sql!(
        "SELECT tenant_id, body FROM billing_lines WHERE {filter} = ? ORDER BY period, tenant_id, line_no"
    ))
    .bind(value)
    .fetch_all(db)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (tenant, body) in rows {
        if scope.as_ref().is_some_and(|t| !t.contains(&tenant)) {
            continue;
        }
        out.push(serde_json::from_str(&body).map_err(anyhow::Error::from)?);
    }
    Ok(out)
}

/// The lines of an open period as of `now`: charges, adjustments of closed periods whose
/// first open period after them is this one, and totals.
pub async fn open_lines(
    db: &MySqlPool,
    period: Period,
    now: DateTime<Utc>,
    scope: &TenantScope,
) -> ApiResult<Vec<Line>> {
    let closed = closed_periods(db).await?;
    let inputs = load_inputs(db, period, scope).await?;
    let mut lines = base_lines_db(db, period, now, &inputs).await?;
    for &p in closed.iter().filter(|p| **p < period) {
        let mut first_open = p.next();
        while closed.contains(&first_open) {
            first_open = first_open.next();
        }
        if first_open != period {
            continue;
        }
        let inputs = load_inputs(db, p, scope).await?;
        let recomputed = base_lines_db(db, p, p.end(), &inputs).await?;
        let frozen: Vec<Line> = frozen_lines(db, "for_period", &p.to_string(), scope)
            .await?
            .into_iter()
            .filter(|l| l.for_period == p.to_string())
            .collect();
        lines.extend(adjustments(period, &recomputed, &frozen));
    }
    Ok(with_totals(period, lines))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloseRequest {
    /// The month to close, `YYYY-MM`; it must have ended.
    #[schema(pattern = "^(2[0-9]{3}|[3-9][0-9]{3})-(0[1-9]|1[0-2])$")]
    pub period: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClosedPeriod {
    pub period: String,
    pub closed_at: DateTime<Utc>,
    /// Lines frozen, totals included.
    pub lines: u64,
}

/// Closes a period (staff admin): freezes its lines. Once only; never before it ends; never
/// before a period already closed after it.
pub async fn close(
    state: &AppState,
    actor: &Actor,
    input: CloseRequest,
    now: DateTime<Utc>,
) -> ApiResult<ClosedPeriod> {
    actor.require_staff(&[StaffRole::Admin])?;
    let period = Period::parse(&input.period).map_err(|m| ApiError::field("period", m))?;
    if period.end() > now {
        return Err(ApiError::conflict(
            Some("period"),
            "has not ended yet; a period closes after its last second",
        ));
    }
    // A writer that crashed between its state change and its history row converges here.
    record_site_state(&mut *state.db.acquire().await?, None).await?;
    let closed = closed_periods(&state.db).await?;
    if closed.contains(&period) {
        return Err(ApiError::conflict(
            Some("period"),
            "this period is closed already",
        ));
    }
    if closed.iter().any(|p| *p > period) {
        return Err(ApiError::conflict(
            Some("period"),
            "a later period is closed; periods close in order",
        ));
    }
    let lines = open_lines(&state.db, period, period.end(), &None).await?;
    let mut tx = state.db.begin().await?;
    let inserted =
        sqlx::query("INSERT INTO billing_periods (period, closed_at, closed_by) VALUES (?, ?, ?)")
            .bind(period.to_string())
            .bind(now.naive_utc())
            .bind(&actor.user_id)
            .execute(&mut *tx)
            .await;
    super::unique(inserted, "period", "this period is closed already")?;
    let mut numbers: HashMap<&str, i32> = HashMap::new();
    for line in &lines {
        let n = numbers.entry(line.tenant_id.as_str()).or_default();
        *n += 1;
        sqlx::query(
            "INSERT INTO billing_lines (period, tenant_id, line_no, for_period, body) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(period.to_string())
        .bind(&line.tenant_id)
        .bind(*n)
        .bind(&line.for_period)
        .bind(serde_json::to_string(line).map_err(anyhow::Error::from)?)
        .execute(&mut *tx)
        .await?;
    }
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "billing.close",
            tenant_id: None,
            target_type: "period",
            target_id: &period.to_string(),
            details: json!({ "lines": lines.len() }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(ClosedPeriod {
        period: period.to_string(),
        closed_at: now,
        lines: lines.len() as u64,
    })
}

// ---------------------------------------------------------------------------------------
// Exports

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// The month, `YYYY-MM` (UTC).
    #[param(
        required = true,
        pattern = "^(2[0-9]{3}|[3-9][0-9]{3})-(0[1-9]|1[0-2])$"
    )]
    pub period: Option<String>,
    /// `csv` (RFC 4180, with a header row) or `jsonl` (one JSON object a line).
    #[param(required = true, pattern = "^(csv|jsonl)$")]
    pub format: Option<String>,
    /// Only this tenant (staff: any; a tenant owner: one they own).
    #[param(pattern = "^[a-z2-7]{10}$")]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Jsonl,
}

/// What an export needs once checked: the period, the format, the tenants it covers.
pub struct Export {
    pub period: Period,
    pub format: Format,
    pub scope: TenantScope,
}

/// Parses and authorizes an export: staff see every tenant, a tenant owner their own,
/// anyone else 403 (or 404 for a tenant they have no part in).
pub async fn authorize_export(
    state: &AppState,
    actor: &Actor,
    query: ExportQuery,
) -> ApiResult<Export> {
    let mut fields = Fields::default();
    let period = fields.check("period", Period::required(query.period.as_deref()));
    let format = match query.format.as_deref() {
        Some("csv") => Some(Format::Csv),
        Some("jsonl") => Some(Format::Jsonl),
        Some(_) => {
            fields.push("format", "must be csv or jsonl");
            None
        }
        None => {
            fields.push("format", "is required (csv or jsonl)");
            None
        }
    };
    let tenant = match &query.tenant {
        Some(t) => fields.check(
            "tenant",
            TenantId::parse(t).ok_or_else(|| "is not a tenant id".to_owned()),
        ),
        None => None,
    };
    fields.finish()?;
    let (Some(period), Some(format)) = (period, format) else {
        return Err(ApiError::field("period", "invalid"));
    };
    let scope = match tenant {
        Some(tenant) => {
            actor
                .require_tenant(state, &tenant, TenantRole::Owner)
                .await?;
            Some(vec![tenant.as_str().to_owned()])
        }
        None if actor.is_staff() => None,
        None => {
            let owned: Vec<String> = sqlx::query_scalar(
                "SELECT tenant_id FROM memberships WHERE user_id = ? AND role = 'owner' ORDER BY tenant_id",
            )
            .bind(&actor.user_id)
            .fetch_all(&state.db)
            .await?;
            if owned.is_empty() {
                return Err(ApiError::Forbidden(
                    "billing exports are for staff and tenant owners",
                ));
            }
            Some(owned)
        }
    };
    Ok(Export {
        period,
        format,
        scope,
    })
}

/// The export's lines: a closed period's frozen lines, else the open period's as of `now`.
/// Chunks of rendered text are sent to `out` as they are made, so a large period streams.
pub async fn stream_export(
    db: MySqlPool,
    export: Export,
    now: DateTime<Utc>,
    out: futures::channel::mpsc::Sender<Result<String, std::io::Error>>,
) {
    use futures::SinkExt;
    let mut out = out;
    let render = |line: &Line| match export.format {
        Format::Csv => line.csv(),
        Format::Jsonl => line.jsonl(),
    };
    if export.format == Format::Csv {
        let header = format!("{CSV_HEADER}\r\n");
        if out.send(Ok(header)).await.is_err() {
            return;
        }
    }
    let closed = match closed_periods(&db).await {
        Ok(c) => c.contains(&export.period),
        Err(err) => {
            let _ = out.send(Err(std::io::Error::other(err.to_string()))).await;
            return;
        }
    };
    let mut chunk = String::new();
    if closed {
        use futures::TryStreamExt;
        let mut rows = sqlx::query_as::<_, (String, String)>(
            "SELECT tenant_id, body FROM billing_lines WHERE period = ? ORDER BY tenant_id, line_no",
        )
        .bind(export.period.to_string())
        .fetch(&db);
        loop {
            match rows.try_next().await {
                Ok(Some((tenant, body))) => {
                    if export.scope.as_ref().is_some_and(|t| !t.contains(&tenant)) {
                        continue;
                    }
                    if export.format == Format::Jsonl {
                        // The stored body is the line's JSON exactly.
                        chunk.push_str(&body);
                        chunk.push('\n');
                    } else {
                        match serde_json::from_str::<Line>(&body) {
                            Ok(line) => chunk.push_str(&line.csv()),
                            Err(err) => {
                                let _ = out.send(Err(std::io::Error::other(err))).await;
                                return;
                            }
                        }
                    }
                    if chunk.len() >= 64 * 1024
                        && out.send(Ok(std::mem::take(&mut chunk))).await.is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(err) => {
                    let _ = out.send(Err(std::io::Error::other(err))).await;
                    return;
                }
            }
        }
    } else {
        let lines = match open_lines(&db, export.period, now, &export.scope).await {
            Ok(lines) => lines,
            Err(err) => {
                tracing::error!(error = ?err, "billing export failed");
                let _ = out.send(Err(std::io::Error::other("export failed"))).await;
                return;
            }
        };
        for line in &lines {
            chunk.push_str(&render(line));
            if chunk.len() >= 64 * 1024 && out.send(Ok(std::mem::take(&mut chunk))).await.is_err() {
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = out.send(Ok(chunk)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Metering: one site's hours, both sources side by side

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MeteringQuery {
    /// The month, `YYYY-MM` (UTC).
    #[param(
        required = true,
        pattern = "^(2[0-9]{3}|[3-9][0-9]{3})-(0[1-9]|1[0-2])$"
    )]
    pub period: Option<String>,
    /// The site.
    #[param(required = true, pattern = "^[a-z2-7]{10}$")]
    pub site: Option<String>,
}

/// One hour of a site: what each source measured (`null`: no sample, a gap).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MeteringHour {
    /// The hour's first second, Unix time (UTC).
    pub hour_unix: i64,
    /// Whether the site's plan was charged in this hour (a gap matters only then).
    pub billed: bool,
    /// The edge's count (billed).
    pub edge_requests: Option<i64>,
    pub edge_bytes_out: Option<i64>,
    /// The agent's access-log count: a posted `agent` sample's, else the sum of the
    /// agent's reports that arrived in the hour (for comparison; not billed).
    pub agent_requests: Option<i64>,
    pub agent_bytes_out: Option<i64>,
    /// The agent's storage sample (wp-content + database).
    pub storage_bytes: Option<i64>,
}

/// A site's metering in a month (staff).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Metering {
    pub site: String,
    pub period: String,
    pub billed_hours: i64,
    /// Billed hours without an edge sample: their requests are not billed (not read as 0
    /// silently: the export's `gap_hours_edge`).
    pub gap_hours_edge: i64,
    /// Billed hours without an agent storage sample.
    pub gap_hours_agent: i64,
    /// Billed hours without any agent access-log count.
    pub gap_hours_agent_requests: i64,
    /// Sums over the billed hours.
    pub edge_requests: i64,
    pub agent_requests: i64,
    /// Every hour of the month up to now.
    pub hours: Vec<MeteringHour>,
}

/// A site's hours in a period: the edge's and the agent's counts side by side, and the
/// gaps of each (staff admin or operator).
pub async fn metering(
    state: &AppState,
    actor: &Actor,
    query: MeteringQuery,
    now: DateTime<Utc>,
) -> ApiResult<Metering> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let mut fields = Fields::default();
    let period = fields.check("period", Period::required(query.period.as_deref()));
    let site = match &query.site {
        Some(s) => fields.check(
            "site",
            Id::parse(s).ok_or_else(|| "is not a site id".to_owned()),
        ),
        None => {
            fields.push("site", "is required");
            None
        }
    };
    fields.finish()?;
    let (Some(period), Some(site)) = (period, site) else {
        return Err(ApiError::field("period", "invalid"));
    };
    let exists: Option<i64> = sqlx::query_scalar("SELECT 1 FROM sites WHERE id = ?")
        .bind(site.as_str())
        .fetch_optional(&state.db)
        .await?;
    if exists.is_none() {
        return Err(ApiError::NotFound("site"));
    }
    let end = sql_time(period.end());
    let mut inputs = load_inputs(&state.db, period, &None).await?;
    inputs.history.retain(|h| h.site_id == site.as_str());
    let cap = now.min(period.end());
    let (_, ranges) = drafts(period, cap, &inputs);
    let billed: HashSet<i64> = ranges
        .iter()
        .flat_map(|r| (r.from..r.to).step_by(3600))
        .collect();
    #[allow(clippy::type_complexity)]
    let samples: Vec<(
        chrono::NaiveDateTime,
        String,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    )> = sqlx::query_as(
        "SELECT hour, source, requests, bytes_out, wp_content_bytes, db_bytes FROM usage_samples \
             WHERE site_id = ? AND hour >= ? AND hour < ?",
    )
    .bind(site.as_str())
    .bind(period.start().naive_utc())
    .bind(end)
    .fetch_all(&state.db)
    .await?;
    let counts: HashMap<i64, (i64, i64)> = sqlx::query_as::<_, (chrono::NaiveDateTime, i64, i64)>(
        "SELECT hour, requests, bytes_out FROM agent_request_counts WHERE site_id = ? AND hour >= ? AND hour < ?",
    )
    .bind(site.as_str())
    .bind(period.start().naive_utc())
    .bind(end)
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|(hour, r, b)| (hour.and_utc().timestamp(), (r, b)))
    .collect();
    let mut by_hour: HashMap<i64, MeteringHour> = HashMap::new();
    let blank = |hour_unix| MeteringHour {
        hour_unix,
        billed: false,
        edge_requests: None,
        edge_bytes_out: None,
        agent_requests: None,
        agent_bytes_out: None,
        storage_bytes: None,
    };
    for (hour, source, requests, bytes_out, wp, db) in samples {
        let t = hour.and_utc().timestamp();
        let row = by_hour.entry(t).or_insert_with(|| blank(t));
        if source == "edge" {
            row.edge_requests = Some(requests.unwrap_or(0));
            row.edge_bytes_out = bytes_out;
        } else {
            row.agent_requests = requests;
            row.agent_bytes_out = bytes_out;
            row.storage_bytes = Some(wp.unwrap_or(0).saturating_add(db.unwrap_or(0)));
        }
    }
    let mut out = Metering {
        site: site.as_str().to_owned(),
        period: period.to_string(),
        billed_hours: 0,
        gap_hours_edge: 0,
        gap_hours_agent: 0,
        gap_hours_agent_requests: 0,
        edge_requests: 0,
        agent_requests: 0,
        hours: Vec::new(),
    };
    let mut t = period.start().timestamp();
    let last = hour_ceil(cap.timestamp());
    while t < last {
        let mut row = by_hour.remove(&t).unwrap_or_else(|| blank(t));
        if let Some((requests, bytes)) = counts.get(&t) {
            row.agent_requests = row.agent_requests.or(Some(*requests));
            row.agent_bytes_out = row.agent_bytes_out.or(Some(*bytes));
        }
        row.billed = billed.contains(&t);
        if row.billed {
            out.billed_hours += 1;
            out.gap_hours_edge += i64::from(row.edge_requests.is_none());
            out.gap_hours_agent += i64::from(row.storage_bytes.is_none());
            out.gap_hours_agent_requests += i64::from(row.agent_requests.is_none());
            out.edge_requests = out
                .edge_requests
                .saturating_add(row.edge_requests.unwrap_or(0));
            out.agent_requests = out
                .agent_requests
                .saturating_add(row.agent_requests.unwrap_or(0));
        }
        out.hours.push(row);
        t += 3600;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Cost beside price

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MarginQuery {
    /// The month, `YYYY-MM` (UTC).
    #[param(
        required = true,
        pattern = "^(2[0-9]{3}|[3-9][0-9]{3})-(0[1-9]|1[0-2])$"
    )]
    pub period: Option<String>,
    /// What the cluster cost that month, in minor units of `currency`; default: the
    /// configured `billing.cluster_monthly_cost_minor` (`pressdock-infra cluster cost`
    /// estimates it).
    #[param(minimum = 0, maximum = 1_000_000_000_000_i64)]
    pub cluster_cost_minor: Option<i64>,
    /// The currency of the cost (default: `billing.currency`); revenue lines in other
    /// currencies are left out.
    #[param(pattern = "^[A-Z]{3}$")]
    pub currency: Option<String>,
}

/// Revenue, allocated cost and margin of one tenant's sites on one plan in a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Margin {
    pub tenant_id: String,
    pub tenant_slug: String,
    pub plan: String,
    /// Sites billed on this plan in the period (each carries its own share of the cost:
    /// its slots × its seconds).
    pub sites: i64,
    /// Worker slots of the plan × seconds billed.
    pub slot_seconds: i64,
    /// Charges, overages and adjustments in `currency`.
    pub revenue_minor: i64,
    /// The cluster's cost × this row's share of all slot-seconds billed in the period.
    pub cost_minor: i64,
    pub margin_minor: i64,
    pub currency: String,
}

/// Staff (admin or operator): revenue, cost and margin per tenant and plan. The cluster's
/// cost is allocated to sites by worker slots used (plan slots × seconds billed), over all
/// tenants; idle capacity is not charged to anyone, so the costs add up to the cluster's
/// cost (± rounding of each row half up).
pub async fn margins(
    state: &AppState,
    actor: &Actor,
    query: MarginQuery,
    now: DateTime<Utc>,
) -> ApiResult<Vec<Margin>> {
    actor.require_staff(&[StaffRole::Admin, StaffRole::Operator])?;
    let mut fields = Fields::default();
    let period = fields.check("period", Period::required(query.period.as_deref()));
    let configured = &state.config.billing;
    let currency = match &query.currency {
        Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()) => Some(c.clone()),
        Some(_) => {
            fields.push("currency", "must be an ISO 4217 code such as USD");
            None
        }
        None => Some(configured.currency.clone()),
    };
    let cost = match query.cluster_cost_minor {
        Some(c) if (0..=1_000_000_000_000).contains(&c) => Some(c),
        Some(_) => {
            fields.push("cluster_cost_minor", "must be between 0 and 10^12");
            None
        }
        None => None,
    };
    fields.finish()?;
    let (Some(period), Some(currency)) = (period, currency) else {
        return Err(ApiError::field("period", "invalid"));
    };
    // Without a cost in the query, the configured one, in its own currency only. Both
    // refusals are 409: the request is well formed, the platform's configuration lacks it.
    let cost = match (cost, configured.cluster_monthly_cost_minor) {
        (Some(c), _) => c,
        (None, Some(c)) if currency == configured.currency => c,
        (None, Some(_)) => {
            return Err(ApiError::conflict(
                Some("cluster_cost_minor"),
                format!(
                    "is required for a currency other than the configured cost's ({})",
                    configured.currency
                ),
            ));
        }
        (None, None) => {
            return Err(ApiError::conflict(
                Some("cluster_cost_minor"),
                "is required: no billing.cluster_monthly_cost_minor is configured",
            ));
        }
    };
    let closed = closed_periods(&state.db).await?.contains(&period);
    let lines = if closed {
        frozen_lines(&state.db, "period", &period.to_string(), &None).await?
    } else {
        open_lines(&state.db, period, now, &None).await?
    };
    let slots: HashMap<String, i64> =
        sqlx::query_as::<_, (String, i32)>("SELECT slug, slots FROM plans")
            .fetch_all(&state.db)
            .await?
            .into_iter()
            .map(|(slug, slots)| (slug, i64::from(slots)))
            .collect();
    Ok(allocate(&lines, &slots, cost, &currency))
}

/// [`margins`] over computed lines (pure).
pub fn allocate(
    lines: &[Line],
    slots: &HashMap<String, i64>,
    cost: i64,
    currency: &str,
) -> Vec<Margin> {
    let mut rows: BTreeMap<(String, String), Margin> = BTreeMap::new();
    let mut sites: HashSet<(&str, &str, &str)> = HashSet::new();
    for line in lines
        .iter()
        .filter(|l| l.kind != "total" && l.currency == currency)
    {
        let row = rows
            .entry((line.tenant_id.clone(), line.plan.clone()))
            .or_insert_with(|| Margin {
                tenant_id: line.tenant_id.clone(),
                tenant_slug: line.tenant_slug.clone(),
                plan: line.plan.clone(),
                sites: 0,
                slot_seconds: 0,
                revenue_minor: 0,
                cost_minor: 0,
                margin_minor: 0,
                currency: currency.to_owned(),
            });
        row.revenue_minor += line.amount_minor;
        if line.kind == "plan"
            && sites.insert((
                line.tenant_id.as_str(),
                line.plan.as_str(),
                line.site_id.as_str(),
            ))
        {
            row.sites += 1;
        }
        if line.kind == "plan" {
            row.slot_seconds += line.seconds * slots.get(&line.plan).copied().unwrap_or(1);
        }
    }
    let total: i128 = rows.values().map(|r| i128::from(r.slot_seconds)).sum();
    rows.into_values()
        .map(|mut row| {
            row.cost_minor = if total > 0 {
                div_round(i128::from(cost) * i128::from(row.slot_seconds), total)
            } else {
                0
            };
            row.margin_minor = row.revenue_minor - row.cost_minor;
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse_strictly() {
        assert_eq!(
            Period::parse("2026-11").map(|p| p.to_string()),
            Ok("2026-11".into())
        );
        for bad in [
            "2026-13",
            "2026-00",
            "26-11",
            "2026/11",
            "2026-1",
            "",
            "1999-12",
            "２026-11",
        ] {
            assert!(Period::parse(bad).is_err(), "{bad}");
        }
        let nov = Period::parse("2026-11").unwrap_or_else(|_| unreachable!());
        assert_eq!(nov.seconds(), 30 * 86_400);
        assert_eq!(nov.next().to_string(), "2026-12");
        assert_eq!(nov.next().next().to_string(), "2027-01");
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let mut out = String::new();
        csv_field(&mut out, "a,\"b\"\r\n");
        assert_eq!(out, "\"a,\"\"b\"\"\r\n\"");
        let mut plain = String::new();
        csv_field(&mut plain, "acme");
        assert_eq!(plain, "acme");
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|_| unreachable!())
            .with_timezone(&Utc)
    }

    /// An hour with several pieces belongs to the latest: a site suspended and resumed
    /// within 10:00-11:00, then moved to another plan in the same hour.
    #[test]
    fn each_hour_belongs_to_the_latest_piece_in_it() {
        let row = |state: &str, plan: &str, at: &str| HistoryRow {
            site_id: "s".into(),
            tenant_id: "t".into(),
            state: state.into(),
            plan_id: plan.into(),
            at: utc(at),
        };
        let price = |plan: &str, monthly| Price {
            plan_id: plan.into(),
            effective_from: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default(),
            currency: "USD".into(),
            monthly_minor: monthly,
            included_storage_bytes: 0,
            included_requests: 0,
            storage_overage_minor_per_gib: 0,
            request_overage_minor_per_10k: 10_000,
        };
        let start = utc("2026-11-01T00:00:00Z");
        let inputs = Inputs {
            history: vec![
                row("active", "a", "2026-11-01T00:00:00Z"),
                row("suspended", "a", "2026-11-02T10:15:00Z"),
                row("active", "a", "2026-11-02T10:45:00Z"),
                row("active", "b", "2026-11-02T10:50:00Z"),
                row("deleted", "b", "2026-11-02T12:30:00Z"),
            ],
            prices: [
                ("a".to_owned(), vec![price("a", 3000)]),
                ("b".to_owned(), vec![price("b", 9000)]),
            ]
            .into(),
            plan_slugs: [("a".into(), "A".into()), ("b".into(), "B".into())].into(),
            tenant_slugs: HashMap::new(),
            // One edge request every hour from Nov 1 00:00 to Nov 2 12:00 (37 hours).
            samples: (0..37)
                .map(|h| SampleRow {
                    site_id: "s".into(),
                    hour: (start + chrono::Duration::hours(h)).naive_utc(),
                    source: "edge".into(),
                    requests: Some(1),
                    wp_content_bytes: None,
                    db_bytes: None,
                })
                .collect(),
        };
        let period = Period::parse("2026-11").unwrap_or_else(|_| unreachable!());
        let (drafts, ranges) = drafts(period, period.end(), &inputs);
        let hours: Vec<(&str, i64, i64)> = drafts
            .iter()
            .map(|d| (d.plan, d.seconds, d.hours))
            .collect();
        // a: 34 h 15 min + 5 min; its hours Nov 1 00:00 to Nov 2 10:00 (34). b: 100 min,
        // hours 10:00, 11:00 and 12:00.
        assert_eq!(hours, vec![("a", 123_600, 34), ("b", 6000, 3)]);
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        let lines = base_lines(period, period.end(), &inputs);
        let requests: Vec<(&str, &str, i64, i64, i64)> = lines
            .iter()
            .map(|l| {
                (
                    l.plan.as_str(),
                    l.kind.as_str(),
                    l.requests,
                    l.gap_hours_edge,
                    l.gap_hours_agent,
                )
            })
            .collect();
        assert_eq!(
            requests,
            vec![
                ("A", "plan", 34, 0, 34),
                ("A", "request_overage", 34, 0, 34),
                ("B", "plan", 3, 0, 3),
                ("B", "request_overage", 3, 0, 3),
            ]
        );
    }

    #[test]
    fn agent_counts_grow_by_the_difference_within_one_process() {
        let t0 = utc("2026-11-03T10:00:00Z");
        let t1 = utc("2026-11-03T11:00:00Z");
        let prev = Some((Some("task1"), t0, 5, 100, 1000));
        // The same process, later: the growth.
        assert_eq!(
            counted_since(prev, (Some("task1"), t0, 6), 130, 1500),
            (30, 500)
        );
        // The same process, an older or repeated report: nothing.
        assert_eq!(
            counted_since(prev, (Some("task1"), t0, 5), 130, 1500),
            (0, 0)
        );
        // A restarted agent or another task: all it counted since it started.
        assert_eq!(counted_since(prev, (Some("task1"), t1, 1), 7, 70), (7, 70));
        assert_eq!(counted_since(prev, (Some("task2"), t0, 9), 7, 70), (7, 70));
        // The first report of a site; counters that went down.
        assert_eq!(counted_since(None, (None, t0, 1), 3, 30), (3, 30));
        assert_eq!(
            counted_since(prev, (Some("task1"), t0, 7), 40, 400),
            (40, 400)
        );
    }

    #[test]
    fn rounding_is_half_up() {
        assert_eq!(div_round(5, 10), 1);
        assert_eq!(div_round(4, 10), 0);
        assert_eq!(div_round(15, 10), 2);
        assert_eq!(div_round(0, 7), 0);
    }
}

//! Plans: what a site may use (slots on a worker, storage, memory, CPU) and its price.

use chrono::{DateTime, Duration as TimeDelta, NaiveTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::{FromRow, MySqlPool};
use utoipa::ToSchema;

use super::unique;
use crate::{
    actor::Actor,
    audit::{self, Event},
    domain::{Fields, Id, PlanId, Slug, StaffRole, parse_name},
    error::{ApiError, ApiResult},
    state::AppState,
};

#[derive(Debug, Clone, Serialize, Deserialize, FromRow, ToSchema)]
pub struct Plan {
    pub id: String,
    pub slug: String,
    pub name: String,
    /// Worker slots a site of this plan takes (a worker has 25).
    pub slots: i32,
    pub storage_mb: i32,
    pub memory_mb: i32,
    pub cpu_millis: i32,
    pub price_cents: i32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPlan {
    #[schema(pattern = "^[a-z][a-z0-9-]{0,61}[a-z0-9]$")]
    pub slug: String,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[schema(minimum = 1, maximum = 25)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub slots: i32,
    #[schema(minimum = 64, maximum = 1_048_576)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub storage_mb: i32,
    #[schema(minimum = 64, maximum = 65_536)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub memory_mb: i32,
    #[schema(minimum = 50, maximum = 16_000)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub cpu_millis: i32,
    #[schema(minimum = 0, maximum = 10_000_000)]
    #[serde(deserialize_with = "crate::domain::integer")]
    pub price_cents: i32,
}

const COLUMNS: &str = "id, slug, name, slots, storage_mb, memory_mb, cpu_millis, price_cents";

pub async fn list(state: &AppState) -> ApiResult<Vec<Plan>> {
    Ok(
        sqlx::query_as::<_, Plan>(sql!("SELECT {COLUMNS} FROM plans ORDER BY slots, slug"))
            .fetch_all(&state.db)
            .await?,
    )
}

pub async fn by_slug(db: &MySqlPool, slug: &str) -> ApiResult<Option<Plan>> {
    Ok(
        sqlx::query_as::<_, Plan>(sql!("SELECT {COLUMNS} FROM plans WHERE slug = ?"))
            .bind(slug)
            .fetch_optional(db)
            .await?,
    )
}

fn in_range(fields: &mut Fields, field: &str, value: i32, min: i32, max: i32) {
    if !(min..=max).contains(&value) {
        fields.push(field, format!("must be between {min} and {max}"));
    }
}

pub async fn create(state: &AppState, actor: &Actor, input: NewPlan) -> ApiResult<Plan> {
    actor.require_staff(&[StaffRole::Admin])?;
    let mut fields = Fields::default();
    let slug = fields.check("slug", Slug::parse(&input.slug));
    let name = fields.check("name", parse_name(&input.name));
    in_range(&mut fields, "slots", input.slots, 1, 25);
    in_range(&mut fields, "storage_mb", input.storage_mb, 64, 1_048_576);
    in_range(&mut fields, "memory_mb", input.memory_mb, 64, 65_536);
    in_range(&mut fields, "cpu_millis", input.cpu_millis, 50, 16_000);
    in_range(&mut fields, "price_cents", input.price_cents, 0, 10_000_000);
    fields.finish()?;
    let (Some(slug), Some(name)) = (slug, name) else {
        return Err(ApiError::field("body", "invalid"));
    };
    let id = PlanId::generate();
    let mut tx = state.db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO plans (id, slug, name, slots, storage_mb, memory_mb, cpu_millis, price_cents) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_str())
    .bind(slug.as_str())
    .bind(&name)
    .bind(input.slots)
    .bind(input.storage_mb)
    .bind(input.memory_mb)
    .bind(input.cpu_millis)
    .bind(input.price_cents)
    .execute(&mut *tx)
    .await;
    unique(inserted, "slug", "a plan with this slug exists")?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "plan.create",
            tenant_id: None,
            target_type: "plan",
            target_id: id.as_str(),
            details: json!({ "slug": slug.as_str(), "slots": input.slots }),
        },
    )
    .await?;
    tx.commit().await?;
    // Its first price: `price_cents` from today (GET/POST /v1/plans/{plan}/prices).
    super::billing::ensure_base_prices(&state.db).await?;
    by_slug(&state.db, slug.as_str())
        .await?
        .ok_or(ApiError::NotFound("plan"))
}

/// The plans every fresh installation has, created once (idempotent).
pub async fn seed_defaults(db: &MySqlPool) -> anyhow::Result<()> {
    const DEFAULTS: &[(&str, &str, i32, i32, i32, i32, i32)] = &[
        ("starter", "Starter", 1, 1024, 256, 250, 900),
        ("business", "Business", 2, 5120, 512, 500, 2900),
        ("agency", "Agency", 4, 20480, 1024, 1000, 7900),
    ];
    for (slug, name, slots, storage, memory, cpu, price) in DEFAULTS {
        sqlx::query(
            "INSERT IGNORE INTO plans (id, slug, name, slots, storage_mb, memory_mb, cpu_millis, price_cents) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(Id::generate().as_str())
        .bind(slug)
        .bind(name)
        .bind(slots)
        .bind(storage)
        .bind(memory)
        .bind(cpu)
        .bind(price)
        .execute(db)
        .await?;
    }
    super::billing::ensure_base_prices(db).await?;
    Ok(())
}

/// A plan's backup policy: when its sites are backed up and how long their scheduled
/// backups are kept (`platform/src/backup/schedule.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BackupPolicy {
    pub plan_id: String,
    /// Whether the scheduler backs the plan's sites up (retention applies either way).
    pub enabled: bool,
    /// `every N h` or `daily HH:MM` (UTC), as set; null when the plan has no policy.
    pub schedule: Option<String>,
    /// Every this many hours, at multiples of it since 00:00 UTC (6: 00:00, 06:00, 12:00,
    /// 18:00 UTC); null when `daily_at` is set.
    pub every_hours: Option<i32>,
    /// Daily at this UTC time (`HH:MM`); null when `every_hours` is set.
    pub daily_at: Option<String>,
    /// Scheduled backups kept per site, newest first (null: no limit by count).
    pub keep_count: Option<i32>,
    /// Scheduled backups older than this many days are pruned (null: no limit by age).
    /// The newest complete backup of a site is never pruned.
    pub keep_days: Option<i32>,
    /// The next slot at which a site of the plan is backed up (UTC), when enabled.
    pub next_run_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When staff last set the policy; null when the plan has none.
    pub updated_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The pattern of a schedule: `every N h` (1 to 168) or `daily HH:MM` (UTC).
pub const SCHEDULE_PATTERN: &str =
    "^(every ([1-9]|[1-9][0-9]|1[0-5][0-9]|16[0-8])h|daily ([01][0-9]|2[0-3]):[0-5][0-9])$";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBackupPolicy {
    /// true by default.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// `every 6h` (every N hours, 1 to 168, slots on multiples of N hours since 00:00
    /// UTC) or `daily 03:30` (daily at that UTC time).
    #[schema(
        pattern = "^(every ([1-9]|[1-9][0-9]|1[0-5][0-9]|16[0-8])h|daily ([01][0-9]|2[0-3]):[0-5][0-9])$"
    )]
    pub schedule: String,
    /// 1 to 1000 scheduled backups kept per site (absent: no limit by count).
    #[schema(minimum = 1, maximum = 1000)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub keep_count: Option<i32>,
    /// 1 to 3650 days (absent: no limit by age).
    #[schema(minimum = 1, maximum = 3650)]
    #[serde(default, deserialize_with = "crate::domain::optional_integer")]
    pub keep_days: Option<i32>,
}

/// When a plan's sites are backed up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// Every N hours (1 to 168), slots on multiples of N hours since the Unix epoch.
    EveryHours(u32),
    /// Daily at this many minutes after 00:00 UTC (0 to 1439).
    DailyAt(u32),
}

impl Schedule {
    /// From the policy's columns; `None` when they do not make one schedule.
    pub fn from_columns(every_hours: Option<i32>, daily_at_minute: Option<i32>) -> Option<Self> {
        match (every_hours, daily_at_minute) {
            (Some(h), None) if (1..=168).contains(&h) => Some(Self::EveryHours(h as u32)),
            (None, Some(m)) if (0..1440).contains(&m) => Some(Self::DailyAt(m as u32)),
            _ => None,
        }
    }

    /// The latest slot at or before `now`.
    pub fn last_slot(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::EveryHours(hours) => {
                let period = i64::from(hours) * 3600;
                let secs = now.timestamp().div_euclid(period) * period;
                Utc.timestamp_opt(secs, 0).single().unwrap_or(now)
            }
            Self::DailyAt(minute) => {
                let at = NaiveTime::from_num_seconds_from_midnight_opt(minute * 60, 0)
                    .unwrap_or(NaiveTime::MIN);
                let today = now.date_naive().and_time(at).and_utc();
                if today <= now {
                    today
                } else {
                    today - TimeDelta::days(1)
                }
            }
        }
    }

    /// The slot after `slot`.
    pub fn next_slot(self, slot: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::EveryHours(hours) => slot + TimeDelta::hours(i64::from(hours)),
            Self::DailyAt(_) => slot + TimeDelta::days(1),
        }
    }
}

type PolicyRow = (
    String,
    bool,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    chrono::DateTime<chrono::Utc>,
);

fn policy_of(row: PolicyRow) -> BackupPolicy {
    let (plan_id, enabled, every_hours, daily_at_minute, keep_count, keep_days, updated_at) = row;
    let schedule = Schedule::from_columns(every_hours, daily_at_minute);
    BackupPolicy {
        plan_id,
        enabled,
        schedule: match (every_hours, daily_at_minute) {
            (Some(h), _) => Some(format!("every {h}h")),
            (None, Some(m)) => Some(format!("daily {:02}:{:02}", m / 60, m % 60)),
            (None, None) => None,
        },
        every_hours,
        daily_at: daily_at_minute.map(|m| format!("{:02}:{:02}", m / 60, m % 60)),
        keep_count,
        keep_days,
        next_run_at: schedule
            .filter(|_| enabled)
            .map(|s| s.next_slot(s.last_slot(chrono::Utc::now()))),
        updated_at: Some(updated_at),
    }
}

/// A schedule as [`SCHEDULE_PATTERN`] spells it: `(every_hours, daily_at_minute)`.
pub fn parse_schedule(value: &str) -> Result<(Option<i32>, Option<i32>), String> {
    let bad = || {
        "must be `every N h` (N from 1 to 168, such as every 6h) or `daily HH:MM` (UTC, such as daily 03:30)".to_owned()
    };
    let digits = |t: &str| !t.is_empty() && t.len() <= 3 && t.bytes().all(|b| b.is_ascii_digit());
    if let Some(hours) = value
        .strip_prefix("every ")
        .and_then(|v| v.strip_suffix('h'))
    {
        if !digits(hours) || hours.starts_with('0') {
            return Err(bad());
        }
        let h: i32 = hours.parse().map_err(|_| bad())?;
        return if (1..=168).contains(&h) {
            Ok((Some(h), None))
        } else {
            Err(bad())
        };
    }
    let at = value.strip_prefix("daily ").ok_or_else(bad)?;
    let (h, m) = at.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 || !digits(h) || !digits(m) {
        return Err(bad());
    }
    let (h, m): (i32, i32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((None, Some(h * 60 + m)))
}

async fn plan_exists(db: &MySqlPool, plan: &PlanId) -> ApiResult<()> {
    let found: Option<String> = sqlx::query_scalar("SELECT id FROM plans WHERE id = ?")
        .bind(plan.as_str())
        .fetch_optional(db)
        .await?;
    found.map(drop).ok_or(ApiError::NotFound("plan"))
}

/// `GET /v1/plans/{plan}/backup-policy`. A plan without a policy has one that schedules
/// nothing and prunes nothing (`enabled: false`, `schedule: null`): 404 is for a plan that
/// does not exist.
pub async fn backup_policy(state: &AppState, plan: &PlanId) -> ApiResult<BackupPolicy> {
    plan_exists(&state.db, plan).await?;
    let row: Option<PolicyRow> = sqlx::query_as(
        "SELECT plan_id, enabled, every_hours, daily_at_minute, keep_count, keep_days, updated_at \
         FROM backup_policies WHERE plan_id = ?",
    )
    .bind(plan.as_str())
    .fetch_optional(&state.db)
    .await?;
    Ok(row.map(policy_of).unwrap_or_else(|| BackupPolicy {
        plan_id: plan.as_str().to_owned(),
        enabled: false,
        schedule: None,
        every_hours: None,
        daily_at: None,
        keep_count: None,
        keep_days: None,
        next_run_at: None,
        updated_at: None,
    }))
}

/// `PUT /v1/plans/{plan}/backup-policy` (staff admins): sets the whole policy.
pub async fn set_backup_policy(
    state: &AppState,
    actor: &Actor,
    plan: &PlanId,
    input: NewBackupPolicy,
) -> ApiResult<BackupPolicy> {
    actor.require_staff(&[StaffRole::Admin])?;
    plan_exists(&state.db, plan).await?;
    let mut fields = Fields::default();
    let schedule = fields.check("schedule", parse_schedule(&input.schedule));
    if let Some(k) = input.keep_count {
        in_range(&mut fields, "keep_count", k, 1, 1000);
    }
    if let Some(d) = input.keep_days {
        in_range(&mut fields, "keep_days", d, 1, 3650);
    }
    fields.finish()?;
    let Some((every_hours, daily)) = schedule else {
        return Err(ApiError::field("schedule", "invalid"));
    };
    let enabled = input.enabled.unwrap_or(true);
    let mut tx = state.db.begin().await?;
    sqlx::query(
        "INSERT INTO backup_policies (plan_id, enabled, every_hours, daily_at_minute, keep_count, keep_days, updated_at) \
         VALUES (?, ?, ?, ?, ?, ?, NOW(6)) ON DUPLICATE KEY UPDATE enabled = VALUES(enabled), \
         every_hours = VALUES(every_hours), daily_at_minute = VALUES(daily_at_minute), \
         keep_count = VALUES(keep_count), keep_days = VALUES(keep_days), updated_at = NOW(6)",
    )
    .bind(plan.as_str())
    .bind(enabled)
    .bind(every_hours)
    .bind(daily)
    .bind(input.keep_count)
    .bind(input.keep_days)
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        Some(actor),
        Event {
            action: "plan.backup_policy",
            tenant_id: None,
            target_type: "plan",
            target_id: plan.as_str(),
            details: json!({ "enabled": enabled, "schedule": input.schedule,
                "keep_count": input.keep_count, "keep_days": input.keep_days }),
        },
    )
    .await?;
    tx.commit().await?;
    backup_policy(state, plan).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn schedules_parse_exactly_as_their_pattern_says() {
        assert_eq!(parse_schedule("every 6h"), Ok((Some(6), None)));
        assert_eq!(parse_schedule("every 168h"), Ok((Some(168), None)));
        assert_eq!(parse_schedule("daily 03:30"), Ok((None, Some(210))));
        assert_eq!(parse_schedule("daily 23:59"), Ok((None, Some(1439))));
        for bad in [
            "",
            "every 0h",
            "every 06h",
            "every 169h",
            "every 6",
            "every h",
            "daily 3:30",
            "daily 24:00",
            "daily 03:60",
            "daily 03:30 ",
            "Daily 03:30",
            "every 1000h",
        ] {
            assert!(parse_schedule(bad).is_err(), "{bad:?}");
        }
        // The Rust parser and the schema's pattern agree (a regex of the pattern's shape).
        assert!(SCHEDULE_PATTERN.starts_with('^') && SCHEDULE_PATTERN.ends_with('$'));
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn slots_are_the_latest_at_or_before_now() {
        let daily = Schedule::DailyAt(3 * 60 + 30);
        let six = Schedule::EveryHours(6);
        // (schedule, now, the latest slot at or before it)
        let last = [
            (daily, "2026-12-07T03:29:59Z", "2026-12-06T03:30:00Z"),
            (daily, "2026-12-07T03:30:00Z", "2026-12-07T03:30:00Z"),
            (daily, "2026-12-07T23:59:00Z", "2026-12-07T03:30:00Z"),
            // Three days down: still one slot, the latest.
            (daily, "2026-12-10T04:00:00Z", "2026-12-10T03:30:00Z"),
            (six, "2026-12-07T05:59:59Z", "2026-12-07T00:00:00Z"),
            (six, "2026-12-07T13:00:00Z", "2026-12-07T12:00:00Z"),
        ];
        for (schedule, now, slot) in last {
            assert_eq!(
                schedule.last_slot(at(now)),
                at(slot),
                "{schedule:?} at {now}"
            );
        }
        assert_eq!(
            six.next_slot(at("2026-12-07T12:00:00Z")),
            at("2026-12-07T18:00:00Z")
        );
        for (every_hours, daily_at_minute) in [
            (Some(6), Some(10)),
            (None, None),
            (Some(0), None),
            (None, Some(1440)),
        ] {
            assert_eq!(Schedule::from_columns(every_hours, daily_at_minute), None);
        }
    }
}

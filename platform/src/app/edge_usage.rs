//! The edge's per-site request counts, the billed source of requests (issue 16): every
//! Traefik replica of the edge is scraped for its Prometheus counters, and each site's
//! growth becomes hourly usage samples (`source = edge`).
//!
//! Why Traefik's counters: every request a visitor makes to a site passes a router of the
//! site on the `web` (or `websecure`) entrypoint before Varnish, cache hits included, and
//! outside the tenant's container (the agent's access-log counts are the tenant's own and
//! miss cache hits). The route writer names those routers `wp_<site>-<entrypoint>`
//! (infra/src/routes.rs), so `traefik_router_requests_total{router="wp_<site>-web@file"}`
//! and `traefik_router_responses_bytes_total` are the site's requests and bytes served.
//!
//! How counters become hours, with the promises the bill needs:
//! - **Nothing counted twice**: a scrape adds only the growth since the replica's last
//!   scrape (`edge_counter_marks`), read and written in one transaction that locks the
//!   replica's row, so two platform replicas scraping at once add it once.
//! - **Restarts**: a counter lower than its mark means Traefik restarted; its whole value is
//!   the growth since. What that replica served between its last scrape and its restart is
//!   lost; that hour is not marked complete, so it shows as a gap, not as a smaller count.
//! - **Hours**: growth lands in the hour of the scrape that saw it (a scrape a minute: at
//!   most a minute of traffic moves to the next hour; none is lost or doubled).
//! - **Gaps are visible**: an hour becomes samples only when every configured replica was
//!   scraped in it and in the hour before (the growth it carries then starts at the
//!   previous hour's last scrape) and no replica restarted in it; otherwise no edge sample
//!   is written for it, and the export's `gap_hours_edge` counts it. A complete hour writes
//!   a sample for every site billed in it, zero for one that served nothing.
//! - **Final**: an hour is written once (`edge_hours`), after it has ended, through the
//!   same idempotent insert as the API's samples (first stored wins).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use sqlx::{MySqlPool, Row};

use crate::app::billing::BILLED_STATES;
use crate::domain::Id;

/// One replica's counters by site: (requests, bytes served).
pub type Counts = BTreeMap<String, (u64, u64)>;

/// What one replica's metrics page says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Page {
    pub counts: Counts,
    /// `process_start_time_seconds`, in milliseconds: a different value is a restart
    /// (counters from zero).
    pub started: Option<i64>,
}

/// The site a router of ours belongs to: `wp_<site>-<entrypoint or purpose>@<provider>`
/// (the route writer's `wp_<site>-web`, `-websecure`, `-internal`; the platform's HTTPS
/// redirect and HSTS routers `wp_<site>-https-<n>`, `-hsts-<n>`). Routers on `internal`
/// are left out: Varnish sends there only what it did not answer from its cache, and the
/// visitor's request was already counted on the edge entrypoint.
fn router_site(router: &str, internal: &str) -> Option<String> {
    let name = router.split('@').next()?;
    let (site, purpose) = name.strip_prefix("wp_")?.split_at_checked(10)?;
    let purpose = purpose.strip_prefix('-')?;
    if purpose.is_empty() || purpose == internal {
        return None;
    }
    Id::parse(site).map(|id| id.as_str().to_owned())
}

/// Sums a Traefik `/metrics` page's router counters by site (every code, method and
/// protocol of its edge routers). Routers that are not a site's, and the sites' routers on
/// the `internal` entrypoint, are left out.
pub fn parse_page(page: &str, internal: &str) -> anyhow::Result<Page> {
    let lines = page.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).context("reading the edge's metrics")?;
    let mut counts = Counts::new();
    let mut started = None;
    for sample in scrape.samples {
        if sample.metric == "process_start_time_seconds" {
            if let prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) =
                sample.value
            {
                // In milliseconds: a replica restarted within the second it started is
                // still another process.
                #[allow(clippy::cast_possible_truncation)]
                let v = (v * 1000.0).round() as i64;
                started = Some(v);
            }
            continue;
        }
        let is_requests = sample.metric == "traefik_router_requests_total";
        let is_bytes = sample.metric == "traefik_router_responses_bytes_total";
        if !is_requests && !is_bytes {
            continue;
        }
        let Some(site) = sample
            .labels
            .get("router")
            .and_then(|r| router_site(r, internal))
        else {
            continue;
        };
        let value = match sample.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        if !(value.is_finite() && value >= 0.0) {
            bail!("the edge's metrics: {} is {value}", sample.metric);
        }
        // Counters are integers; f64 holds them exactly up to 2^53.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let value = value as u64;
        let entry = counts.entry(site).or_default();
        if is_requests {
            entry.0 = entry.0.saturating_add(value);
        } else {
            entry.1 = entry.1.saturating_add(value);
        }
    }
    Ok(Page { counts, started })
}

fn hour_of(at: DateTime<Utc>) -> chrono::NaiveDateTime {
    let t = at.timestamp();
    DateTime::from_timestamp(t - t.rem_euclid(3600), 0)
        .unwrap_or_default()
        .naive_utc()
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v.min(1_000_000_000_000_000)).unwrap_or(0)
}

/// What one scrape added.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scraped {
    pub sites: usize,
    pub requests: u64,
    pub restarted: bool,
}

/// Adds one replica's counters, read `at`, to the hour of `at`.
pub async fn record_scrape(
    db: &MySqlPool,
    replica: &str,
    at: DateTime<Utc>,
    page: &Page,
) -> anyhow::Result<Scraped> {
    let hour = hour_of(at);
    // Made before the transaction: inside it, two first scrapes' duplicate-key checks
    // would each hold the row shared and deadlock on the lock below.
    sqlx::query("INSERT IGNORE INTO edge_replicas (replica) VALUES (?)")
        .bind(replica)
        .execute(db)
        .await?;
    let mut tx = db.begin().await?;
    // The replica's row is the lock: a second scraper waits here and then sees our marks.
    let (last_scrape, last_started): (Option<chrono::NaiveDateTime>, Option<i64>) = sqlx::query_as(
        "SELECT last_scrape_at, started FROM edge_replicas WHERE replica = ? FOR UPDATE",
    )
    .bind(replica)
    .fetch_one(&mut *tx)
    .await?;
    let first = last_scrape.is_none();
    let marks: BTreeMap<String, (i64, i64)> = sqlx::query(
        "SELECT site_id, requests, bytes_out FROM edge_counter_marks WHERE replica = ?",
    )
    .bind(replica)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .map(|r| Ok((r.try_get(0)?, (r.try_get(1)?, r.try_get(2)?))))
    .collect::<sqlx::Result<_>>()?;
    let counts: Vec<(&String, i64, i64)> = page
        .counts
        .iter()
        .map(|(site, (r, b))| (site, clamp(*r), clamp(*b)))
        .collect();
    // A restart: the process started at another time, or (without that metric) a counter
    // went down.
    let restarted = !first
        && (matches!((last_started, page.started), (Some(before), Some(now)) if before != now)
            || counts.iter().any(|(site, requests, bytes)| {
                marks
                    .get(*site)
                    .is_some_and(|(r, b)| requests < r || bytes < b)
            }));
    let mut added = Scraped {
        restarted,
        ..Scraped::default()
    };
    for (site, requests, bytes) in &counts {
        let growth = match marks.get(*site) {
            // The replica's first scrape: its counters are the baseline, not this hour's.
            _ if first => (0, 0),
            Some((r, b)) if !restarted => ((requests - r).max(0), (bytes - b).max(0)),
            // A router first seen (the site's first request on this replica), or a
            // restarted replica: everything it counted is new.
            _ => (*requests, *bytes),
        };
        if growth == (0, 0) {
            continue;
        }
        sqlx::query(
            "INSERT INTO edge_hour_counts (site_id, hour, requests, bytes_out) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE requests = LEAST(requests + VALUES(requests), 1000000000000000000), \
             bytes_out = LEAST(bytes_out + VALUES(bytes_out), 1000000000000000000)",
        )
        .bind(site.as_str())
        .bind(hour)
        .bind(growth.0)
        .bind(growth.1)
        .execute(&mut *tx)
        .await?;
        added.sites += 1;
        added.requests += u64::try_from(growth.0).unwrap_or(0);
    }
    // The marks become this page: routers gone from it (a restart, a removed site) go.
    sqlx::query("DELETE FROM edge_counter_marks WHERE replica = ?")
        .bind(replica)
        .execute(&mut *tx)
        .await?;
    for chunk in counts.chunks(500) {
        let mut insert = sqlx::QueryBuilder::<sqlx::MySql>::new(
            "INSERT INTO edge_counter_marks (replica, site_id, requests, bytes_out) ",
        );
        insert.push_values(chunk, |mut row, (site, requests, bytes)| {
            row.push_bind(replica)
                .push_bind(site.as_str())
                .push_bind(*requests)
                .push_bind(*bytes);
        });
        insert.build().execute(&mut *tx).await?;
    }
    sqlx::query(
        "INSERT INTO edge_scrapes (replica, hour, scrapes, restarts) VALUES (?, ?, 1, ?) \
         ON DUPLICATE KEY UPDATE scrapes = scrapes + 1, restarts = restarts + VALUES(restarts)",
    )
    .bind(replica)
    .bind(hour)
    .bind(i32::from(restarted || first))
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE edge_replicas SET last_scrape_at = ?, started = ? WHERE replica = ?")
        .bind(at.naive_utc())
        .bind(page.started)
        .bind(replica)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(added)
}

/// What [`close_hours`] did with the hours that ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Closed {
    /// Hours written as samples.
    pub complete: Vec<i64>,
    /// Hours left without edge samples (a replica not scraped, or restarted, in them).
    pub gaps: Vec<i64>,
    pub samples: u64,
}

/// Writes the edge samples of every hour that ended before `now` and is not written yet,
/// from the first hour any replica was scraped in. `replicas` are the configured ones.
pub async fn close_hours(
    db: &MySqlPool,
    replicas: &[String],
    now: DateTime<Utc>,
) -> anyhow::Result<Closed> {
    let mut closed = Closed::default();
    if replicas.is_empty() {
        return Ok(closed);
    }
    let current = hour_of(now);
    let open: Vec<chrono::NaiveDateTime> = sqlx::query_scalar(
        "SELECT DISTINCT s.hour FROM edge_scrapes s \
         WHERE s.hour < ? AND NOT EXISTS (SELECT 1 FROM edge_hours h WHERE h.hour = s.hour) \
         ORDER BY s.hour",
    )
    .bind(current)
    .fetch_all(db)
    .await?;
    for hour in open {
        let before = hour - chrono::Duration::hours(1);
        let mut tx = db.begin().await?;
        // Taken once: a second closer waits, then finds the hour written.
        let taken = sqlx::query("INSERT IGNORE INTO edge_hours (hour, complete) VALUES (?, 0)")
            .bind(hour)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if taken == 0 {
            continue;
        }
        // Complete: every replica scraped in the hour and in the one before (its growth
        // starts at that hour's last scrape), none restarted (or first seen) in it.
        let mut complete = true;
        for replica in replicas {
            let (this_hour, hour_before, restarts): (i64, i64, i64) = sqlx::query_as(
                "SELECT CAST(COALESCE(SUM(hour = ?), 0) AS SIGNED), \
                        CAST(COALESCE(SUM(hour = ?), 0) AS SIGNED), \
                        CAST(COALESCE(SUM(IF(hour = ?, restarts, 0)), 0) AS SIGNED) \
                 FROM edge_scrapes WHERE replica = ? AND hour IN (?, ?)",
            )
            .bind(hour)
            .bind(before)
            .bind(hour)
            .bind(replica)
            .bind(hour)
            .bind(before)
            .fetch_one(&mut *tx)
            .await?;
            if this_hour == 0 || hour_before == 0 || restarts > 0 {
                complete = false;
            }
        }
        let unix = hour.and_utc().timestamp();
        if !complete {
            tx.commit().await?;
            closed.gaps.push(unix);
            continue;
        }
        let next = hour + chrono::Duration::hours(1);
        // Every site billed in the hour (a charged state current at its start or entered
        // during it), with its counts or zero; and any site the edge counted.
        let billed = vec!["?"; BILLED_STATES.len()].join(", ");
        let mut insert = sqlx::query(crate::sql!(
            "INSERT IGNORE INTO usage_samples (site_id, hour, source, requests, bytes_out) \
             SELECT s.site_id, ?, 'edge', COALESCE(c.requests, 0), COALESCE(c.bytes_out, 0) FROM ( \
               SELECT h.site_id FROM site_state_history h \
               WHERE h.at < ? AND h.state IN ({billed}) AND NOT EXISTS ( \
                 SELECT 1 FROM site_state_history n WHERE n.site_id = h.site_id AND n.id > h.id AND n.at <= ?) \
               UNION SELECT site_id FROM edge_hour_counts WHERE hour = ? \
             ) s JOIN sites ON sites.id = s.site_id \
             LEFT JOIN edge_hour_counts c ON c.site_id = s.site_id AND c.hour = ?"
        ))
        .bind(hour)
        .bind(next);
        for state in BILLED_STATES {
            insert = insert.bind(*state);
        }
        let written = insert
            .bind(hour)
            .bind(hour)
            .bind(hour)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE edge_hours SET complete = 1 WHERE hour = ?")
            .bind(hour)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        closed.complete.push(unix);
        closed.samples += written;
    }
    Ok(closed)
}

/// Reads one replica's metrics page.
pub async fn fetch_page(
    client: &reqwest::Client,
    url: &str,
    internal: &str,
) -> anyhow::Result<Page> {
    let page = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("scraping the edge at {url}"))?
        .text()
        .await
        .with_context(|| format!("reading the edge's metrics at {url}"))?;
    parse_page(&page, internal)
}

/// One pass: every replica scraped (a failing one is logged and leaves a gap), then the
/// ended hours closed.
pub async fn pass(
    db: &MySqlPool,
    client: &reqwest::Client,
    replicas: &[String],
    internal: &str,
) -> Closed {
    for replica in replicas {
        let counted = match fetch_page(client, replica, internal).await {
            Ok(page) => record_scrape(db, replica, Utc::now(), &page).await,
            Err(err) => Err(err),
        };
        if let Err(err) = counted {
            tracing::warn!(replica = %replica, error = format!("{err:#}"), "edge usage: scrape failed");
        }
    }
    match close_hours(db, replicas, Utc::now()).await {
        Ok(closed) => closed,
        Err(err) => {
            tracing::warn!(
                error = format!("{err:#}"),
                "edge usage: closing hours failed"
            );
            Closed::default()
        }
    }
}

/// Scrapes the edge every `interval` until shutdown.
pub async fn run_periodically(
    db: MySqlPool,
    replicas: Vec<String>,
    internal: String,
    interval: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "edge usage: no HTTP client");
            return;
        }
    };
    loop {
        let closed = pass(&db, &client, &replicas, &internal).await;
        if !closed.gaps.is_empty() {
            tracing::warn!(hours = ?closed.gaps, "edge usage: hours left without edge samples (a replica was not scraped or restarted)");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn routers_of_sites_are_summed_and_others_left_out() {
        let page = "\
# HELP traefik_router_requests_total How many HTTP requests are processed on a router.
# TYPE traefik_router_requests_total counter
traefik_router_requests_total{code=\"200\",method=\"GET\",protocol=\"http\",router=\"wp_abcdefgh23-web@file\",service=\"pd-cache@file\"} 5
traefik_router_requests_total{code=\"304\",method=\"GET\",protocol=\"http\",router=\"wp_abcdefgh23-websecure@file\",service=\"pd-cache@file\"} 2
traefik_router_requests_total{code=\"200\",method=\"GET\",protocol=\"http\",router=\"pd-cache@file\",service=\"pd-cache@file\"} 40
traefik_router_requests_total{code=\"200\",method=\"GET\",protocol=\"http\",router=\"wp_NOTANID-web@file\",service=\"x\"} 9
traefik_router_requests_total{code=\"200\",method=\"GET\",protocol=\"http\",router=\"wp_abcdefgh23-internal@file\",service=\"wp_abcdefgh23@file\"} 3
traefik_router_requests_total{code=\"301\",method=\"GET\",protocol=\"http\",router=\"wp_abcdefgh23-https-0@http\",service=\"noop@internal\"} 1
# TYPE traefik_router_responses_bytes_total counter
traefik_router_responses_bytes_total{code=\"200\",method=\"GET\",protocol=\"http\",router=\"wp_abcdefgh23-web@file\",service=\"pd-cache@file\"} 1000
traefik_router_responses_bytes_total{code=\"304\",method=\"GET\",protocol=\"http\",router=\"wp_abcdefgh23-websecure@file\",service=\"pd-cache@file\"} 24
";
        let page = parse_page(page, "internal").unwrap();
        assert_eq!(
            page.counts,
            Counts::from([("abcdefgh23".to_owned(), (8, 1024))])
        );
        assert_eq!(page.started, None);
    }

    #[test]
    fn router_names_map_to_sites() {
        let site = |r| router_site(r, "internal");
        assert_eq!(
            site("wp_k3v7q2m6xa-web@file").as_deref(),
            Some("k3v7q2m6xa")
        );
        assert_eq!(
            site("wp_k3v7q2m6xa-hsts-2@http").as_deref(),
            Some("k3v7q2m6xa")
        );
        assert_eq!(site("wp_k3v7q2m6xa-internal@file"), None);
        assert_eq!(site("wp_k3v7q2m6xa"), None);
        assert_eq!(site("pd-cache@file"), None);
        assert_eq!(site("wp_k3v7q2m6x-web@file"), None);
    }
}

//! The billing rollup at scale (issue 16): 1,000 sites × 720 hourly samples (November
//! 2026), the platform's rollup (`app::billing::open_lines`: loads history, prices and
//! samples, computes every line and the totals) beside the same aggregation written by hand
//! as one SQL query, run side by side on the same database. Both must give the same totals
//! to the minor unit; the times are the median of 5 runs of each.
//!
//! Every site holds one plan the whole month (the case one plain query can express); 10
//! tenants. Run: `PRESSDOCK_TEST_MYSQL_URL=mysql://… cargo run -q -p platform --example
//! billing_scale`. The database it makes is dropped at the end.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use platform::{app::billing, config::DatabaseUrl, domain::Id};

const SITES: usize = 1000;
const HOURS: i64 = 720;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let server = std::env::var("PRESSDOCK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    let name = format!("pdbench_{}", Id::generate().as_str());
    let db = platform::db::connect(&DatabaseUrl::new(format!("{server}/{name}")), 4).await?;
    let result = run(&db).await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{name}`")))
        .execute(&db)
        .await?;
    result
}

async fn run(db: &sqlx::MySqlPool) -> anyhow::Result<()> {
    platform::db::migrate(db).await?;
    platform::app::plans::seed_defaults(db).await?;
    let plans: Vec<String> = sqlx::query_scalar("SELECT id FROM plans ORDER BY slug")
        .fetch_all(db)
        .await?;
    for plan in &plans {
        sqlx::query(
            "INSERT INTO plan_prices (plan_id, effective_from, currency, monthly_minor, included_storage_bytes, \
             included_requests, storage_overage_minor_per_gib, request_overage_minor_per_10k) \
             VALUES (?, '2026-01-01', 'USD', 2900, 1073741824, 100000, 200, 50)",
        )
        .bind(plan)
        .execute(db)
        .await?;
    }
    let mut tenants = Vec::new();
    for t in 0..10 {
        let id = Id::generate().as_str().to_owned();
        sqlx::query("INSERT INTO tenants (id, slug, name) VALUES (?, ?, ?)")
            .bind(&id)
            .bind(format!("tenant-{t}"))
            .bind(format!("Tenant {t}"))
            .execute(db)
            .await?;
        tenants.push(id);
    }
    let start = chrono::NaiveDate::from_ymd_opt(2026, 11, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    let mut sites = Vec::new();
    for i in 0..SITES {
        let id = Id::generate().as_str().to_owned();
        let tenant = &tenants[i % tenants.len()];
        let plan = &plans[i % plans.len()];
        sqlx::query(
            "INSERT INTO sites (id, tenant_id, name, plan_id, state, primary_domain, created_at, updated_at) \
             VALUES (?, ?, 'Site', ?, 'active', ?, '2026-10-01', '2026-10-01')",
        )
        .bind(&id)
        .bind(tenant)
        .bind(plan)
        .bind(format!("s{i}.bench.test"))
        .execute(db)
        .await?;
        sqlx::query(
            "INSERT INTO site_state_history (site_id, tenant_id, state, plan_id, at) VALUES (?, ?, 'active', ?, '2026-10-01')",
        )
        .bind(&id)
        .bind(tenant)
        .bind(plan)
        .execute(db)
        .await?;
        sites.push(id);
    }
    let fill = Instant::now();
    for (i, site) in sites.iter().enumerate() {
        // 720 rows in one statement; requests vary by site and hour.
        let mut sql = String::from(
            "INSERT INTO usage_samples (site_id, hour, source, requests, bytes_out) VALUES ",
        );
        for h in 0..HOURS {
            if h > 0 {
                sql.push(',');
            }
            let hour = start + chrono::Duration::hours(h);
            let requests = (i as i64 * 7 + h * 13) % 400;
            sql.push_str(&format!("('{site}', '{hour}', 'edge', {requests}, 0)"));
        }
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(db).await?;
    }
    println!(
        "filled {SITES} sites × {HOURS} samples in {:.1} s",
        fill.elapsed().as_secs_f64()
    );
    sqlx::query("ANALYZE TABLE usage_samples, sites, site_state_history")
        .execute(db)
        .await?;

    let period = billing::Period::parse("2026-11").unwrap();
    let mut rollup_ms = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let lines = billing::open_lines(db, period, period.end(), &None).await?;
        rollup_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        ours = lines
            .into_iter()
            .filter(|l| l.kind == "total")
            .map(|l| (l.tenant_id, l.amount_minor))
            .collect::<Vec<_>>();
    }
    // The same aggregation by hand: every site holds its plan the whole month, so its plan
    // charge is the monthly price and its allowance the whole included requests.
    const HAND: &str = "SELECT x.tenant_id, CAST(SUM(p.monthly_minor + \
        FLOOR((2 * GREATEST(x.requests - p.included_requests, 0) * p.request_overage_minor_per_10k + 10000) / 20000)) AS SIGNED) \
        FROM (SELECT s.id, s.tenant_id, s.plan_id, SUM(u.requests) AS requests FROM sites s \
              JOIN usage_samples u ON u.site_id = s.id AND u.source = 'edge' AND u.hour >= ? AND u.hour < ? \
              GROUP BY s.id, s.tenant_id, s.plan_id) x \
        JOIN plan_prices p ON p.plan_id = x.plan_id AND p.effective_from = '2026-01-01' \
        GROUP BY x.tenant_id ORDER BY x.tenant_id";
    let mut hand_ms = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        theirs = sqlx::query_as::<_, (String, i64)>(HAND)
            .bind(period.start().naive_utc())
            .bind(period.end().naive_utc())
            .fetch_all(db)
            .await?;
        hand_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    assert_eq!(
        ours, theirs,
        "the rollup and the hand-written query disagree"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, h) = (median(&mut rollup_ms), median(&mut hand_ms));
    let total: i64 = ours.iter().map(|(_, a)| a).sum();
    println!(
        "totals agree: {} tenants, {total} minor units in all",
        ours.len()
    );
    println!("rollup (platform): median {r:.0} ms of 5");
    println!("one SQL query:     median {h:.0} ms of 5");
    println!("ratio: {:.2}×", r / h);
    Ok(())
}

//! Billing: a generated month for three tenants gives exact totals; exports reproduce; a
//! closed period never changes (late samples become adjustments in the next open period);
//! access is enforced; a period closes once.
//!
//! The month is November 2026 (30 days, 2,592,000 s). The sites' state histories are
//! written with the times they would have had (the state writers stamp "now"); usage goes
//! through the API. Expected amounts are worked out by hand in the comments.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::TestApp;

/// GET as raw bytes: status, content type, body.
async fn raw(app: &TestApp, path: &str, token: &str) -> (StatusCode, String, Vec<u8>) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

fn jsonl(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) async fn plan_id(app: &TestApp, slug: &str) -> String {
    sqlx::query_scalar("SELECT id FROM plans WHERE slug = ?")
        .bind(slug)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// A USD price: [monthly, included GiB, included requests, per GiB-month, per 10,000 requests].
async fn price(app: &TestApp, plan: &str, from: &str, rates: [i64; 5]) {
    let [monthly, storage_gib, requests, gib_rate, req_rate] = rates;
    sqlx::query(
        "INSERT INTO plan_prices (plan_id, effective_from, currency, monthly_minor, included_storage_bytes, \
         included_requests, storage_overage_minor_per_gib, request_overage_minor_per_10k) VALUES (?, ?, 'USD', ?, ?, ?, ?, ?)",
    )
    .bind(plan)
    .bind(from)
    .bind(monthly)
    .bind(storage_gib << 30)
    .bind(requests)
    .bind(gib_rate)
    .bind(req_rate)
    .execute(&app.db)
    .await
    .unwrap();
}

/// A site with its history: (state, plan id, UTC time) in order.
pub(crate) async fn site(
    app: &TestApp,
    tenant: &str,
    domain: &str,
    history: &[(&str, &str, &str)],
) -> String {
    let id = platform::domain::Id::generate().as_str().to_owned();
    let (state, plan, at) = history.last().unwrap();
    sqlx::query(
        "INSERT INTO sites (id, tenant_id, name, plan_id, state, primary_domain, created_at, updated_at) \
         VALUES (?, ?, 'Site', ?, ?, ?, ?, ?)",
    )
    .bind(&id)
    .bind(tenant)
    .bind(plan)
    .bind(state)
    .bind(domain)
    .bind(history[0].2)
    .bind(at)
    .execute(&app.db)
    .await
    .unwrap();
    for (state, plan, at) in history {
        sqlx::query(
            "INSERT INTO site_state_history (site_id, tenant_id, state, plan_id, at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(tenant)
        .bind(state)
        .bind(plan)
        .bind(at)
        .execute(&app.db)
        .await
        .unwrap();
    }
    id
}

/// Hours of November 2026 from `day` `hour` for `count` hours, as Unix seconds.
/// An RFC 3339 time as Unix seconds.
fn at(time: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(time)
        .unwrap()
        .timestamp()
}

fn hours(day: u32, hour: u32, count: u32) -> Vec<i64> {
    let start = chrono::NaiveDate::from_ymd_opt(2026, 11, day)
        .unwrap()
        .and_hms_opt(hour, 0, 0)
        .unwrap()
        .and_utc();
    (0..count)
        .map(|i| (start + chrono::Duration::hours(i64::from(i))).timestamp())
        .collect()
}

/// What both billing months start from: the tenants acme and globex, and the starter plan
/// with its USD price from October 2026 (30.00 a month, 1 GiB and 100,000 requests
/// included, 2.00 a GiB-month and 0.50 per 10,000 requests over).
struct Start {
    app: TestApp,
    admin: String,
    acme: String,
    globex: String,
    starter: String,
}

async fn start() -> Start {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let acme = app.create_tenant(&admin, "acme").await;
    let globex = app.create_tenant(&admin, "globex").await;
    let starter = plan_id(&app, "starter").await;
    price(&app, &starter, "2026-10-01", [3000, 1, 100_000, 200, 50]).await;
    Start {
        app,
        admin,
        acme,
        globex,
        starter,
    }
}

async fn owner_of_acme(app: &TestApp, admin: &str, tenant: &str) -> String {
    app.user_with_role(admin, tenant, "owner").await.0
}

async fn ingest(app: &TestApp, token: &str, samples: Vec<Value>) -> Value {
    let (mut inserted, mut unchanged, mut conflicts) = (0, 0, 0);
    for chunk in samples.chunks(200) {
        let (status, body) = app
            .post("/v1/billing/samples", token, json!({ "samples": chunk }))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        inserted += body["inserted"].as_u64().unwrap();
        unchanged += body["unchanged"].as_u64().unwrap();
        conflicts += body["conflicts"].as_u64().unwrap();
        assert_eq!(
            body["conflicting"].as_array().unwrap().len() as u64,
            body["conflicts"].as_u64().unwrap(),
            "{body}"
        );
    }
    json!({ "inserted": inserted, "unchanged": unchanged, "conflicts": conflicts })
}

#[tokio::test]
async fn a_generated_month_bills_exactly_and_closes_once() {
    let Start {
        app,
        admin,
        acme,
        globex,
        starter,
    } = start().await;
    let initech = app.create_tenant(&admin, "initech").await;
    let business = plan_id(&app, "business").await;
    // Starter: 30.00 a month, 1 GiB and 100,000 requests included, 2.00 a GiB-month and
    // 0.50 per 10,000 requests over (from `start`); from November 16, 45.00 a month.
    price(&app, &starter, "2026-11-16", [4500, 1, 100_000, 200, 50]).await;
    // Business: 90.00, 5 GiB and 1,000,000 requests, 1.00 a GiB-month, 0.20 per 10,000.
    price(&app, &business, "2026-10-01", [9000, 5, 1_000_000, 100, 20]).await;

    // acme/a1: starter, active all month.
    let a1 = site(
        &app,
        &acme,
        "a1.example",
        &[
            ("provisioning", &starter, "2026-10-20 00:00:00"),
            ("active", &starter, "2026-10-20 00:10:00"),
        ],
    )
    .await;
    // globex/b1: created Nov 10, suspended Nov 12, resumed Nov 14, business from Nov 20,
    // deleted Nov 25 12:00.
    let b1 = site(
        &app,
        &globex,
        "b1.example",
        &[
            ("provisioning", &starter, "2026-11-10 05:59:30"),
            ("active", &starter, "2026-11-10 06:00:00"),
            ("suspended", &starter, "2026-11-12 06:00:00"),
            ("active", &starter, "2026-11-14 06:00:00"),
            ("active", &business, "2026-11-20 00:00:00"),
            ("deleting", &business, "2026-11-25 12:00:00"),
            ("deleted", &business, "2026-11-25 12:05:00"),
        ],
    )
    .await;
    // initech/c1: business all month; c2: starter from the month's last second.
    let c1 = site(
        &app,
        &initech,
        "c1.example",
        &[("active", &business, "2026-10-01 00:00:00")],
    )
    .await;
    let c2 = site(
        &app,
        &initech,
        "c2.example",
        &[
            ("provisioning", &starter, "2026-11-30 23:59:00"),
            ("active", &starter, "2026-11-30 23:59:59"),
        ],
    )
    .await;

    // Usage. a1: 200 requests every hour but Nov 1 05:00 and 06:00 (gaps); storage 0.5 GiB
    // on Nov 1, 2.5 GiB (2 GiB files + 0.5 GiB database) on Nov 20 12:00.
    let mut a1_samples: Vec<Value> = hours(1, 0, 720)
        .into_iter()
        .filter(|h| *h != at("2026-11-01T05:00:00Z") && *h != at("2026-11-01T06:00:00Z"))
        .map(|h| json!({ "site": a1, "hour_unix": h, "source": "edge", "requests": 200, "bytes_out": 1_000_000 }))
        .collect();
    a1_samples.push(
        json!({ "site": a1, "hour_unix": at("2026-11-01T00:00:00Z"), "source": "agent",
        "wp_content_bytes": 1_i64 << 29, "db_bytes": 0, "requests": 150 }),
    );
    a1_samples.push(
        json!({ "site": a1, "hour_unix": at("2026-11-20T12:00:00Z"), "source": "agent",
        "wp_content_bytes": 2_i64 << 30, "db_bytes": 1_i64 << 29 }),
    );
    let body = ingest(&app, &admin, a1_samples).await;
    assert_eq!(body["unchanged"], 0, "{body}");
    // b1: 1,000 edge requests every hour from Nov 10 00:00 to Nov 25 23:00 (384 hours),
    // half of them sent first, then all (the first half repeated: unchanged).
    let b1_samples: Vec<Value> = hours(10, 0, 384)
        .into_iter()
        .map(|h| json!({ "site": b1, "hour_unix": h, "source": "edge", "requests": 1000 }))
        .collect();
    let body = ingest(&app, &admin, b1_samples[..192].to_vec()).await;
    assert_eq!(
        body,
        json!({ "inserted": 192, "unchanged": 0, "conflicts": 0 })
    );
    let body = ingest(&app, &admin, b1_samples.clone()).await;
    assert_eq!(
        body,
        json!({ "inserted": 192, "unchanged": 192, "conflicts": 0 })
    );
    // A second sample of a key with other numbers is a conflict: reported, kept, not
    // applied (the first stays billed); sent again, it is the same conflict. Rejected, it
    // changes nothing.
    let other = json!({ "site": b1, "hour_unix": at("2026-11-10T06:00:00Z"),
        "source": "edge", "requests": 999_999 });
    let (status, body) = app
        .post(
            "/v1/billing/samples",
            &admin,
            json!({ "samples": [other.clone()] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["inserted"], 0, "{body}");
    assert_eq!(body["unchanged"], 0, "{body}");
    assert_eq!(body["conflicts"], 1, "{body}");
    let conflict = &body["conflicting"][0];
    assert_eq!(conflict["index"], 0, "{body}");
    assert_eq!(conflict["conflict"]["site"], b1.as_str(), "{body}");
    assert_eq!(
        conflict["conflict"]["hour_unix"],
        at("2026-11-10T06:00:00Z")
    );
    assert_eq!(
        conflict["conflict"]["stored"],
        json!({ "requests": 1000, "bytes_out": null, "wp_content_bytes": null, "db_bytes": null })
    );
    assert_eq!(conflict["conflict"]["offered"]["requests"], 999_999);
    assert_eq!(conflict["conflict"]["resolution"], Value::Null);
    let conflict_id = conflict["conflict"]["id"].as_i64().unwrap();
    let (_, again) = app
        .post("/v1/billing/samples", &admin, json!({ "samples": [other] }))
        .await;
    assert_eq!(
        again["conflicting"][0]["conflict"]["id"], conflict_id,
        "{again}"
    );
    let (status, listed) = app
        .get("/v1/billing/conflicts?period=2026-11", &admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], conflict_id);
    let (status, body) = app
        .post(
            &format!("/v1/billing/conflicts/{conflict_id}/resolve"),
            &admin,
            json!({ "resolution": "rejected" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resolution"], "rejected");
    assert_eq!(body["stored"]["requests"], 1000);
    let (status, body) = app
        .post(
            &format!("/v1/billing/conflicts/{conflict_id}/resolve"),
            &admin,
            json!({ "resolution": "accepted" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errors"][0]["field"], "resolution", "{body}");
    // c1: one storage sample of 6 GiB + 1 byte; one outside the month (ignored).
    ingest(&app, &admin, vec![
        json!({ "site": c1, "hour_unix": at("2026-11-05T00:00:00Z"), "source": "agent", "wp_content_bytes": (6_i64 << 30) + 1 }),
        json!({ "site": c1, "hour_unix": at("2026-12-01T00:00:00Z"), "source": "agent", "wp_content_bytes": 50_i64 << 30 }),
    ])
    .await;

    // Before closing, the open month's export already shows the same lines.
    let (status, _, open_nov) = raw(
        &app,
        "/v1/billing/exports?period=2026-11&format=jsonl",
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = app
        .post("/v1/billing/close", &admin, json!({ "period": "2026-11" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["period"], "2026-11");
    let (status, body) = app
        .post("/v1/billing/close", &admin, json!({ "period": "2026-11" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errors"][0]["field"], "period", "{body}");

    let (status, content_type, nov) = raw(
        &app,
        "/v1/billing/exports?period=2026-11&format=jsonl",
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "application/jsonl");
    assert_eq!(nov, open_nov, "closing froze what the open period showed");
    let label = |id: &str| {
        [(&a1, "a1"), (&b1, "b1"), (&c1, "c1"), (&c2, "c2")]
            .iter()
            .find(|(s, _)| s.as_str() == id)
            .map_or("", |(_, l)| *l)
    };
    let got: Vec<(String, String, String, String, i64, i64)> = jsonl(&nov)
        .iter()
        .map(|l| {
            (
                l["tenant_slug"].as_str().unwrap().to_owned(),
                label(l["site_id"].as_str().unwrap()).to_owned(),
                l["kind"].as_str().unwrap().to_owned(),
                l["price_from"].as_str().unwrap().to_owned(),
                l["quantity"].as_i64().unwrap(),
                l["amount_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(&str, &str, &str, &str, i64, i64)> = vec![
        // a1 Nov 1-16 (1,296,000 s) at 30.00: 1500. Requests 358 h × 200 = 71,600 over
        // 50,000 included (prorated) = 21,600 × 0.50/10,000 = 108.
        ("acme", "a1", "plan", "2026-10-01", 1_296_000, 1500),
        ("acme", "a1", "request_overage", "2026-10-01", 21_600, 108),
        // Nov 16-30 at 45.00: 2250. Peak 2.5 GiB over 1 GiB = 2 started GiB × 2.00 × ½ = 200.
        // 360 h × 200 = 72,000 over 50,000 = 22,000 → 110.
        ("acme", "a1", "plan", "2026-11-16", 1_296_000, 2250),
        ("acme", "a1", "storage_overage", "2026-11-16", 2, 200),
        ("acme", "a1", "request_overage", "2026-11-16", 22_000, 110),
        ("acme", "", "total", "", 0, 4168),
        // b1 starter at 30.00: Nov 10 06:00-12 06:00 and Nov 14 06:00-16 00:00 = 324,000 s
        // → 375; 90 h × 1,000 = 90,000 over 12,500 = 77,500 → 387.5 → 388 (half up).
        ("globex", "b1", "plan", "2026-10-01", 324_000, 375),
        ("globex", "b1", "request_overage", "2026-10-01", 77_500, 388),
        // business Nov 20 00:00-25 12:00 = 475,200 s at 90.00 → 1650; 132,000 requests
        // under 183,333 included.
        ("globex", "b1", "plan", "2026-10-01", 475_200, 1650),
        // starter at 45.00 Nov 16-20 = 345,600 s → 600; 96,000 over 13,333 = 82,667 →
        // 413.335 → 413.
        ("globex", "b1", "plan", "2026-11-16", 345_600, 600),
        ("globex", "b1", "request_overage", "2026-11-16", 82_667, 413),
        ("globex", "", "total", "", 0, 3426),
        // c1 all month at 90.00; 6 GiB + 1 byte over 5 GiB = 2 started GiB × 1.00 = 200.
        ("initech", "c1", "plan", "2026-10-01", 2_592_000, 9000),
        ("initech", "c1", "storage_overage", "2026-10-01", 2, 200),
        // c2: one second at 45.00 = 0.0017 → 0.
        ("initech", "c2", "plan", "2026-11-16", 1, 0),
        ("initech", "", "total", "", 0, 9200),
    ];
    // Lines are ordered by tenant id, then site id: compare as sets per tenant, in order
    // within a site.
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut expected_sorted: Vec<_> = expected
        .iter()
        .map(|(t, s, k, p, q, a)| {
            (
                (*t).to_owned(),
                (*s).to_owned(),
                (*k).to_owned(),
                (*p).to_owned(),
                *q,
                *a,
            )
        })
        .collect();
    expected_sorted.sort();
    assert_eq!(
        got_sorted,
        expected_sorted,
        "{}",
        String::from_utf8_lossy(&nov)
    );
    // Gaps are visible: a1's first line had 2 hours without an edge sample.
    let a1_first = jsonl(&nov)
        .into_iter()
        .find(|l| {
            l["site_id"] == a1.as_str() && l["kind"] == "plan" && l["price_from"] == "2026-10-01"
        })
        .unwrap();
    assert_eq!(a1_first["gap_hours_edge"], 2, "{a1_first}");
    assert_eq!(a1_first["gap_hours_agent"], 359, "{a1_first}");
    assert_eq!(a1_first["requests"], 71_600, "{a1_first}");

    // The CSV: a header, CRLF records, byte-for-byte the same each time.
    let (status, content_type, csv1) = raw(
        &app,
        "/v1/billing/exports?period=2026-11&format=csv",
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let text = String::from_utf8(csv1.clone()).unwrap();
    assert!(
        text.starts_with(&format!("{}\r\n", platform::app::billing::CSV_HEADER)),
        "{text}"
    );
    assert_eq!(text.matches("\r\n").count(), 1 + expected.len(), "{text}");

    // A late sample for a closed month (a1's gap at Nov 1 05:00): the closed export does
    // not change; December shows the difference as an adjustment.
    ingest(&app, &admin, vec![json!({ "site": a1, "hour_unix": at("2026-11-01T05:00:00Z"), "source": "edge", "requests": 10_000 })]).await;
    let (_, _, csv2) = raw(
        &app,
        "/v1/billing/exports?period=2026-11&format=csv",
        &admin,
    )
    .await;
    assert_eq!(
        hex::encode(Sha256::digest(&csv1)),
        hex::encode(Sha256::digest(&csv2))
    );
    // Cost beside price: 1,000.00 of cluster cost allocated by slot-seconds (starter 1
    // slot, business 2): 9,396,001 in all.
    let (status, body) = app
        .get(
            "/v1/billing/margins?period=2026-11&cluster_cost_minor=100000&currency=USD",
            &admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut margins: Vec<(String, String, i64, i64, i64, i64)> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["tenant_slug"].as_str().unwrap().to_owned(),
                m["plan"].as_str().unwrap().to_owned(),
                m["slot_seconds"].as_i64().unwrap(),
                m["revenue_minor"].as_i64().unwrap(),
                m["cost_minor"].as_i64().unwrap(),
                m["margin_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    margins.sort();
    let row =
        |t: &str, p: &str, ss, rev, cost| (t.to_owned(), p.to_owned(), ss, rev, cost, rev - cost);
    assert_eq!(
        margins,
        vec![
            row("acme", "starter", 2_592_000, 4168, 27_586),
            row("globex", "business", 950_400, 1650, 10_115),
            row("globex", "starter", 669_600, 1776, 7126),
            row("initech", "business", 5_184_000, 9200, 55_172),
            row("initech", "starter", 1, 0, 0),
        ]
    );
    let (status, body) = app
        .get(
            "/v1/billing/margins?period=2026-11&cluster_cost_minor=100000&currency=USD",
            &owner_of_acme(&app, &admin, &acme).await,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    // No cost configured ([billing] cluster_monthly_cost_minor) and none given: 409 naming it.
    let (status, body) = app.get("/v1/billing/margins?period=2026-11", &admin).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errors"][0]["field"], "cluster_cost_minor", "{body}");

    // The CLI writes the same bytes to standard output.
    let output = tokio::process::Command::new(crate::support::binary())
        .args([
            "billing", "export", "--period", "2026-11", "--format", "csv",
        ])
        .env("PRESSDOCK_URL", &app.base)
        .env("PRESSDOCK_TOKEN", &admin)
        .env("PRESSDOCK_CLI_CONFIG", "/nonexistent/pressdock-cli.toml")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(output.stdout, csv1);
    let output = tokio::process::Command::new(crate::support::binary())
        .args([
            "billing", "export", "--period", "2026-13", "--format", "csv",
        ])
        .env("PRESSDOCK_URL", &app.base)
        .env("PRESSDOCK_TOKEN", &admin)
        .env("PRESSDOCK_CLI_CONFIG", "/nonexistent/pressdock-cli.toml")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("period: must be a month as YYYY-MM"),
        "{stderr}"
    );
    let (_, _, nov_again) = raw(
        &app,
        "/v1/billing/exports?period=2026-11&format=jsonl",
        &admin,
    )
    .await;
    assert_eq!(nov, nov_again);
    let (status, _, dec) = raw(
        &app,
        "/v1/billing/exports?period=2026-12&format=jsonl",
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let adjustments: Vec<Value> = jsonl(&dec)
        .into_iter()
        .filter(|l| l["kind"] == "adjustment")
        .collect();
    assert_eq!(adjustments.len(), 1, "{}", String::from_utf8_lossy(&dec));
    // 81,600 − 50,000 = 31,600 over → 158, was 108: +10,000 requests, +50.
    assert_eq!(adjustments[0]["site_id"], a1.as_str());
    assert_eq!(adjustments[0]["adjusts"], "request_overage");
    assert_eq!(adjustments[0]["for_period"], "2026-11");
    assert_eq!(adjustments[0]["quantity"], 10_000);
    assert_eq!(adjustments[0]["amount_minor"], 50);

    app.finish().await;
}

#[tokio::test]
async fn exports_are_scoped_and_checked() {
    let Start {
        app,
        admin,
        acme,
        globex,
        starter,
    } = start().await;
    let a = site(
        &app,
        &acme,
        "a.example",
        &[("active", &starter, "2026-10-01 00:00:00")],
    )
    .await;
    let g = site(
        &app,
        &globex,
        "g.example",
        &[("active", &starter, "2026-10-01 00:00:00")],
    )
    .await;
    let (owner, _) = app.user_with_role(&admin, &acme, "owner").await;
    let (member, _) = app.user_with_role(&admin, &acme, "member").await;
    let (viewer, _) = app.user_with_role(&admin, &acme, "viewer").await;
    let operator = app.staff_with_role(&admin, "operator").await;

    let sites_of = |body: &[u8]| -> Vec<String> {
        jsonl(body)
            .iter()
            .filter(|l| l["kind"] == "plan")
            .map(|l| l["site_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let path = "/v1/billing/exports?period=2026-11&format=jsonl";
    let (status, _, body) = raw(&app, path, &operator).await;
    assert_eq!(status, StatusCode::OK);
    let mut all = sites_of(&body);
    all.sort();
    let mut both = vec![a.clone(), g.clone()];
    both.sort();
    assert_eq!(all, both);
    let (status, _, body) = raw(&app, path, &owner).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        sites_of(&body),
        vec![a.clone()],
        "an owner sees their tenant only"
    );
    let (status, _, body) = raw(&app, &format!("{path}&tenant={globex}"), &owner).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
    for token in [&member, &viewer] {
        let (status, body) = app.get(path, token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let (status, body) = app.get(&format!("{path}&tenant={acme}"), token).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    }
    let (status, body) = app.request(Method::GET, path, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // The last month there is: an empty export (the header), not an error.
    let (status, _, body) = raw(
        &app,
        "/v1/billing/exports?period=9999-12&format=csv",
        &admin,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        format!("{}\r\n", platform::app::billing::CSV_HEADER).into_bytes()
    );

    // Bad input: problem+json naming the field.
    for (query, field) in [
        ("period=2026-13&format=csv", "period"),
        ("period=2026-1&format=csv", "period"),
        ("format=csv", "period"),
        ("period=2026-11&format=xml", "format"),
        ("period=2026-11", "format"),
        ("period=2026-11&format=csv&tenant=nope", "tenant"),
    ] {
        let (status, headers, body) = app
            .request_full(
                Method::GET,
                &format!("/v1/billing/exports?{query}"),
                Some(&admin),
                None,
                &[],
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{query}"
        );
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
    }

    // Samples: staff only; an hour not on the hour, a negative count and an unknown site
    // are refused, naming the field.
    let sample = json!({ "site": a, "hour_unix": 1_793_714_400, "source": "edge", "requests": 1 });
    let (status, body) = app
        .post(
            "/v1/billing/samples",
            &owner,
            json!({ "samples": [sample] }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .post(
            "/v1/billing/samples",
            &admin,
            json!({ "samples": [
            { "site": a, "hour_unix": 1_793_714_401, "source": "edge" },
        ] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "samples[0].hour_unix", "{body}");
    let (status, body) = app
        .post(
            "/v1/billing/samples",
            &admin,
            json!({ "samples": [
            sample, { "site": a, "hour_unix": 1_793_714_400, "source": "cdn", "requests": -1 },
        ] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "samples[1].source", "{body}");
    assert_eq!(body["errors"][1]["field"], "samples[1].requests", "{body}");
    let (status, body) = app
        .post(
            "/v1/billing/samples",
            &admin,
            json!({ "samples": [
            { "site": "2222222222", "hour_unix": 1_793_714_400, "source": "edge" },
        ] }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errors"][0]["field"], "samples", "{body}");

    // Closing: staff admin only, once, never an unfinished month.
    let (status, body) = app
        .post("/v1/billing/close", &owner, json!({ "period": "2026-11" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .post(
            "/v1/billing/close",
            &operator,
            json!({ "period": "2026-11" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = app
        .post("/v1/billing/close", &admin, json!({ "period": "2999-01" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errors"][0]["field"], "period", "{body}");
    let (status, body) = app
        .post("/v1/billing/close", &admin, json!({ "period": "2026-10" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .post("/v1/billing/close", &admin, json!({ "period": "2026-10" }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errors"][0]["field"], "period", "{body}");

    // Prices: staff admin, from a later date only.
    let (status, body) = app
        .post(&format!("/v1/plans/{starter}/prices"), &admin, json!({ "effective_from": "2026-01-01",
            "currency": "USD", "monthly_minor": 1, "included_storage_bytes": 0, "included_requests": 0,
            "storage_overage_minor_per_gib": 0, "request_overage_minor_per_10k": 0 }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errors"][0]["field"], "effective_from", "{body}");
    let (status, body) = app
        .post(&format!("/v1/plans/{starter}/prices"), &admin, json!({ "effective_from": "2099-01-01",
            "currency": "EUR", "monthly_minor": 1200, "included_storage_bytes": 1_073_741_824,
            "included_requests": 10, "storage_overage_minor_per_gib": 5, "request_overage_minor_per_10k": 7 }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = app
        .get(&format!("/v1/plans/{starter}/prices"), &owner)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body.as_array().unwrap().last().unwrap()["currency"],
        "EUR",
        "{body}"
    );

    app.finish().await;
}

#[tokio::test]
async fn every_state_writer_appends_history() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let (status, created) = app.create_site(&admin, &tenant, "history.example").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let id = created["site"]["id"].as_str().unwrap().to_owned();
    app.wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
        .await;
    let history = |app: &TestApp, id: String| {
        let db = app.db.clone();
        async move {
            sqlx::query_as::<_, (String, String)>(
                "SELECT h.state, p.slug FROM site_state_history h JOIN plans p ON p.id = h.plan_id \
                 WHERE h.site_id = ? ORDER BY h.id",
            )
            .bind(id)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    let current: String = sqlx::query_scalar("SELECT state FROM sites WHERE id = ?")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let rows = history(&app, id.clone()).await;
    assert_eq!(rows[0], ("provisioning".to_owned(), "starter".to_owned()));
    assert_eq!(rows.last().unwrap().0, current, "{rows:?}");
    // A plan change, then a suspension (when the site is active).
    let (status, body) = app
        .request(
            Method::PATCH,
            &format!("/v1/sites/{id}"),
            Some(&admin),
            Some(json!({ "plan": "business" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.wait_operation(&admin, body["operation"]["id"].as_str().unwrap())
        .await;
    let rows = history(&app, id.clone()).await;
    assert_eq!(rows.last().unwrap().1, "business", "{rows:?}");
    let (status, body) = app
        .request(
            Method::DELETE,
            &format!("/v1/sites/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    app.wait_operation(&admin, body["operation"]["id"].as_str().unwrap())
        .await;
    let rows = history(&app, id.clone()).await;
    let states: Vec<&str> = rows.iter().map(|(s, _)| s.as_str()).collect();
    assert!(states.contains(&"deleting"), "{rows:?}");
    let current: String = sqlx::query_scalar("SELECT state FROM sites WHERE id = ?")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(*states.last().unwrap(), current.as_str(), "{rows:?}");
    app.finish().await;
}

#[tokio::test]
async fn an_accepted_conflict_corrects_a_closed_month_and_margins_use_the_configured_cost() {
    let app = TestApp::spawn_with(|config| {
        config.billing.cluster_monthly_cost_minor = Some(50_000);
    })
    .await;
    let admin = app.admin_token().await;
    let acme = app.create_tenant(&admin, "acme").await;
    let starter = plan_id(&app, "starter").await;
    // 30.00 a month, no requests included, 0.50 per 10,000.
    price(&app, &starter, "2026-10-01", [3000, 1, 0, 200, 50]).await;
    let a = site(
        &app,
        &acme,
        "a.example",
        &[("active", &starter, "2026-10-01 00:00:00")],
    )
    .await;
    let hour = at("2026-11-03T10:00:00Z");
    let body = ingest(
        &app,
        &admin,
        vec![json!({ "site": a, "hour_unix": hour, "source": "edge", "requests": 10_000 })],
    )
    .await;
    assert_eq!(
        body,
        json!({ "inserted": 1, "unchanged": 0, "conflicts": 0 })
    );
    let (status, body) = app
        .post("/v1/billing/close", &admin, json!({ "period": "2026-11" }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, _, nov) = raw(
        &app,
        "/v1/billing/exports?period=2026-11&format=csv",
        &admin,
    )
    .await;

    // The edge recounted the hour: 30,000. A conflict, until staff accept it.
    let (status, body) = app
        .post(
            "/v1/billing/samples",
            &admin,
            json!({ "samples": [{ "site": a, "hour_unix": hour, "source": "edge", "requests": 30_000 }] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["conflicts"], 1, "{body}");
    let id = body["conflicting"][0]["conflict"]["id"].as_i64().unwrap();
    let (_, _, dec) = raw(
        &app,
        "/v1/billing/exports?period=2026-12&format=jsonl",
        &admin,
    )
    .await;
    assert!(
        jsonl(&dec).iter().all(|l| l["kind"] != "adjustment"),
        "an open conflict is not applied: {}",
        String::from_utf8_lossy(&dec)
    );
    let operator = app.staff_with_role(&admin, "operator").await;
    let resolve = format!("/v1/billing/conflicts/{id}/resolve");
    let (status, body) = app
        .post(&resolve, &operator, json!({ "resolution": "accepted" }))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    for missing in ["999999", "abc", "0"] {
        let (status, body) = app
            .post(
                &format!("/v1/billing/conflicts/{missing}/resolve"),
                &admin,
                json!({ "resolution": "accepted" }),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}: {body}");
    }
    let (status, body) = app
        .post(&resolve, &admin, json!({ "resolution": "maybe" }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "resolution", "{body}");
    let (status, body) = app
        .post(&resolve, &admin, json!({ "resolution": "accepted" }))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["resolution"], "accepted");
    assert_eq!(body["stored"]["requests"], 30_000, "{body}");
    let (_, listed) = app
        .get("/v1/billing/conflicts?period=2026-11", &admin)
        .await;
    assert_eq!(listed[0]["resolution"], "accepted", "{listed}");
    assert_eq!(listed[0]["stored"]["requests"], 30_000, "{listed}");

    // The closed month is unchanged; December carries the correction: +20,000 requests, +100.
    let (_, _, nov_again) = raw(
        &app,
        "/v1/billing/exports?period=2026-11&format=csv",
        &admin,
    )
    .await;
    assert_eq!(nov, nov_again);
    let (_, _, dec) = raw(
        &app,
        "/v1/billing/exports?period=2026-12&format=jsonl",
        &admin,
    )
    .await;
    let adjustments: Vec<Value> = jsonl(&dec)
        .into_iter()
        .filter(|l| l["kind"] == "adjustment")
        .collect();
    assert_eq!(adjustments.len(), 1, "{}", String::from_utf8_lossy(&dec));
    assert_eq!(adjustments[0]["adjusts"], "request_overage");
    assert_eq!(adjustments[0]["for_period"], "2026-11");
    assert_eq!(adjustments[0]["quantity"], 20_000);
    assert_eq!(adjustments[0]["amount_minor"], 100);

    // Metering: the site's hours with both sources side by side. The agent's access-log
    // counts (two reports in Nov 3 10:00, one posted agent sample) are shown, not billed;
    // 719 of the 720 billed hours have no edge sample: gaps, visible.
    let mut conn = app.db.acquire().await.unwrap();
    for (requests, bytes) in [(12_000, 1_000_000), (13_000, 2_000_000)] {
        platform::app::billing::record_agent_requests(
            &mut conn,
            &a,
            chrono::DateTime::from_timestamp(hour + 1800, 0).unwrap(),
            requests,
            bytes,
        )
        .await
        .unwrap();
    }
    drop(conn);
    ingest(
        &app,
        &admin,
        vec![json!({ "site": a, "hour_unix": hour + 3600, "source": "agent", "requests": 7, "wp_content_bytes": 5 })],
    )
    .await;
    let (status, body) = app
        .get(
            &format!("/v1/billing/metering?period=2026-11&site={a}"),
            &admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["billed_hours"], 720, "{}", body["billed_hours"]);
    assert_eq!(body["gap_hours_edge"], 719);
    assert_eq!(body["gap_hours_agent"], 719);
    assert_eq!(body["gap_hours_agent_requests"], 718);
    assert_eq!(body["edge_requests"], 30_000);
    assert_eq!(body["agent_requests"], 25_007);
    let hours = body["hours"].as_array().unwrap();
    assert_eq!(hours.len(), 720);
    let at_hour = |t: i64| hours.iter().find(|h| h["hour_unix"] == t).unwrap();
    assert_eq!(
        at_hour(hour),
        &json!({ "hour_unix": hour, "billed": true, "edge_requests": 30_000, "edge_bytes_out": null,
            "agent_requests": 25_000, "agent_bytes_out": 3_000_000, "storage_bytes": null })
    );
    assert_eq!(at_hour(hour + 7200)["edge_requests"], Value::Null);
    let (status, body) = app
        .get(
            "/v1/billing/metering?period=2026-11&site=aaaaaaaaaa",
            &admin,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let owner = owner_of_acme(&app, &admin, &acme).await;
    let (status, body) = app
        .get(
            &format!("/v1/billing/metering?period=2026-11&site={a}"),
            &owner,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Margins with the configured cost (500.00 USD): the only site bears all of it.
    let (status, body) = app.get("/v1/billing/margins?period=2026-11", &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!([{ "tenant_id": acme, "tenant_slug": "acme", "plan": "starter", "sites": 1,
            "slot_seconds": 2_592_000, "revenue_minor": 3050, "cost_minor": 50_000,
            "margin_minor": -46_950, "currency": "USD" }])
    );
    // A cost given in the query wins; another currency needs its own cost.
    let (_, body) = app
        .get(
            "/v1/billing/margins?period=2026-11&cluster_cost_minor=1000",
            &admin,
        )
        .await;
    assert_eq!(body[0]["cost_minor"], 1000, "{body}");
    let (status, body) = app
        .get("/v1/billing/margins?period=2026-11&currency=EUR", &admin)
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["errors"][0]["field"], "cluster_cost_minor", "{body}");
    app.finish().await;
}

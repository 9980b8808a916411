//! The edge collector against a real Traefik (the `traefik` binary the lab runs, on
//! loopback ports): a router per site as the route writer names them, requests sent
//! through it to a small origin, its `/metrics` page scraped, and the growth turned into
//! hourly `edge` samples. The scrapes are stamped with chosen hours (the collector's clock
//! is a parameter) so that an afternoon of hours runs in seconds.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use chrono::{DateTime, Utc};
use platform::app::edge_usage::{self, Closed};
use serde_json::Value;

use crate::{
    billing::{plan_id, site},
    support::{TestApp, free_port},
};

/// A Traefik of our own (file provider, Prometheus metrics with router labels).
struct Traefik {
    child: Child,
    web: u16,
    metrics: u16,
    dir: tempfile::TempDir,
    /// The replica's name for the collector: its first metrics URL (a restart moves it to
    /// new ports, since a port given back may be taken by a parallel test meanwhile).
    name: String,
}

impl Drop for Traefik {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_traefik(dir: &Path, web: u16, metrics: u16) -> Child {
    Command::new("traefik")
        .arg(format!("--entrypoints.web.address=127.0.0.1:{web}"))
        .arg(format!("--entrypoints.metrics.address=127.0.0.1:{metrics}"))
        .args([
            "--metrics.prometheus=true",
            "--metrics.prometheus.entryPoint=metrics",
            "--metrics.prometheus.addRoutersLabels=true",
            "--log.level=ERROR",
        ])
        .arg(format!("--providers.file.directory={}", dir.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting traefik (scripts/install-deps.sh installs it): {e}"))
}

impl Traefik {
    /// Routes `host → origin` for each site, as `wp_<site>-web`.
    async fn start(routes: &[(&str, &str)], origin: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut yaml = String::from("http:\n  routers:\n");
        for (site, host) in routes {
            yaml.push_str(&format!(
                "    wp_{site}-web:\n      rule: Host(`{host}`)\n      entryPoints: [web]\n      service: origin\n"
            ));
        }
        yaml.push_str(&format!(
            "  services:\n    origin:\n      loadBalancer:\n        servers:\n          - url: http://127.0.0.1:{origin}\n"
        ));
        std::fs::write(dir.path().join("routes.yml"), yaml).unwrap();
        let (web, metrics) = (free_port(), free_port());
        let child = spawn_traefik(dir.path(), web, metrics);
        let traefik = Self {
            child,
            web,
            metrics,
            dir,
            name: format!("http://127.0.0.1:{metrics}/metrics"),
        };
        traefik.wait_ready(routes[0].1).await;
        traefik
    }

    async fn wait_ready(&self, host: &str) {
        for _ in 0..200 {
            let ok = reqwest::Client::new()
                .get(format!("http://127.0.0.1:{}/ready", self.web))
                .header("host", host)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("traefik did not route {host}");
    }

    /// Stops and starts it again (on new ports, under the same replica name): its
    /// counters start from zero.
    async fn restart(&mut self, host: &str) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.web, self.metrics) = (free_port(), free_port());
        self.child = spawn_traefik(self.dir.path(), self.web, self.metrics);
        self.wait_ready(host).await;
    }

    fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.metrics)
    }

    /// `n` requests to `host`; each answer must be the origin's, naming the host.
    async fn visit(&self, host: &str, n: usize) {
        let client = reqwest::Client::new();
        for _ in 0..n {
            let body = client
                .get(format!("http://127.0.0.1:{}/hello", self.web))
                .header("host", host)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(body, format!("hello from {host}"));
        }
    }
}

/// An origin answering `hello from <host>` (and 200 on /ready).
async fn origin() -> u16 {
    let app = axum::Router::new().fallback(|headers: axum::http::HeaderMap| async move {
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("")
            .to_owned();
        format!("hello from {host}")
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

async fn scrape(app: &TestApp, traefik: &Traefik, at: &str) -> edge_usage::Scraped {
    let page = edge_usage::fetch_page(&reqwest::Client::new(), &traefik.metrics_url(), "internal")
        .await
        .unwrap();
    edge_usage::record_scrape(&app.db, &traefik.name, t(at), &page)
        .await
        .unwrap()
}

async fn close(app: &TestApp, traefik: &Traefik, at: &str) -> Closed {
    edge_usage::close_hours(&app.db, std::slice::from_ref(&traefik.name), t(at))
        .await
        .unwrap()
}

/// The edge samples of a site: (hour, requests, bytes_out).
async fn samples(app: &TestApp, site: &str) -> Vec<(String, i64, i64)> {
    sqlx::query_as::<_, (chrono::NaiveDateTime, i64, i64)>(
        "SELECT hour, requests, bytes_out FROM usage_samples WHERE site_id = ? AND source = 'edge' ORDER BY hour",
    )
    .bind(site)
    .fetch_all(&app.db)
    .await
    .unwrap()
    .into_iter()
    .map(|(h, r, b)| (h.format("%d %H:00").to_string(), r, b))
    .collect()
}

fn unix(s: &str) -> i64 {
    t(s).timestamp()
}

#[tokio::test]
async fn the_edge_counters_become_hourly_samples_with_gaps_shown() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let plan = plan_id(&app, "starter").await;
    let since = [("active", plan.as_str(), "2026-11-01 00:00:00")];
    let a = site(&app, &tenant, "a.test", &since).await;
    let b = site(&app, &tenant, "b.test", &since).await;
    // Billed, never visited: zero requests, not a gap.
    let quiet = site(&app, &tenant, "quiet.test", &since).await;
    // Deleted before the hours measured: no sample at all.
    let gone = site(
        &app,
        &tenant,
        "gone.test",
        &[
            ("active", plan.as_str(), "2026-11-01 00:00:00"),
            ("deleted", plan.as_str(), "2026-11-05 00:00:00"),
        ],
    )
    .await;
    let mut traefik = Traefik::start(&[(&a, "a.test"), (&b, "b.test")], origin().await).await;

    // 10:00 is the collector's first hour: its counters are a baseline, the hour a gap.
    assert_eq!(
        scrape(&app, &traefik, "2026-11-10T10:01:00Z")
            .await
            .requests,
        0
    );
    traefik.visit("a.test", 5).await;
    traefik.visit("b.test", 3).await;
    let first = scrape(&app, &traefik, "2026-11-10T11:01:00Z").await;
    // The readiness probes counted too (one or more to a.test): read what Traefik says.
    assert!(first.requests >= 8, "{first:?}");
    let probes = first.requests - 8;
    traefik.visit("a.test", 2).await;
    scrape(&app, &traefik, "2026-11-10T11:30:00Z").await;
    // Two platform replicas scraping the same page at once add its growth once.
    traefik.visit("a.test", 2).await;
    let (x, y) = tokio::join!(
        scrape(&app, &traefik, "2026-11-10T11:40:00Z"),
        scrape(&app, &traefik, "2026-11-10T11:40:00Z")
    );
    assert_eq!(x.requests + y.requests, 2, "{x:?} {y:?}");
    scrape(&app, &traefik, "2026-11-10T12:01:00Z").await;

    let closed = close(&app, &traefik, "2026-11-10T12:02:00Z").await;
    assert_eq!(
        closed,
        Closed {
            complete: vec![unix("2026-11-10T11:00:00Z")],
            gaps: vec![unix("2026-11-10T10:00:00Z")],
            samples: 3,
        }
    );
    let a_samples = samples(&app, &a).await;
    assert_eq!(a_samples.len(), 1, "{a_samples:?}");
    assert_eq!(a_samples[0].0, "10 11:00");
    assert_eq!(a_samples[0].1, 9 + i64::try_from(probes).unwrap());
    assert!(
        a_samples[0].2 >= 9 * "hello from a.test".len() as i64,
        "{a_samples:?}"
    );
    assert_eq!(samples(&app, &b).await[0].1, 3);
    assert_eq!(samples(&app, &quiet).await, [("10 11:00".to_owned(), 0, 0)]);
    assert_eq!(samples(&app, &gone).await, []);
    // Closing again writes nothing and changes nothing.
    assert_eq!(
        close(&app, &traefik, "2026-11-10T12:03:00Z").await,
        Closed::default()
    );

    // A restart: what the replica counted before it since the last scrape is lost, so its
    // hour is a gap; counting goes on from zero after it.
    traefik.restart("a.test").await;
    traefik.visit("a.test", 4).await;
    let after = scrape(&app, &traefik, "2026-11-10T12:30:00Z").await;
    assert!(after.restarted, "{after:?}");
    // b's router is new to the restarted replica: its first count is all growth, and
    // lands in the hour of the scrape that sees it.
    traefik.visit("b.test", 1).await;
    scrape(&app, &traefik, "2026-11-10T13:01:00Z").await;
    scrape(&app, &traefik, "2026-11-10T14:01:00Z").await;
    let closed = close(&app, &traefik, "2026-11-10T14:02:00Z").await;
    assert_eq!(closed.gaps, vec![unix("2026-11-10T12:00:00Z")]);
    assert_eq!(closed.complete, vec![unix("2026-11-10T13:00:00Z")]);
    // 13:00 saw only b's one request (a's four were in the restarted 12:00).
    let b_samples = samples(&app, &b).await;
    assert_eq!(b_samples.last().unwrap().0, "10 13:00");
    assert_eq!(b_samples.last().unwrap().1, 1);
    assert_eq!(samples(&app, &a).await.last().unwrap().1, 0);

    // The billing view shows the gap as a gap (null), the counted hour as counted.
    let (status, body): (_, Value) = app
        .get(
            &format!("/v1/billing/metering?period=2026-11&site={a}"),
            &admin,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let hour = |at: &str| {
        body["hours"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["hour_unix"] == unix(at))
            .cloned()
            .unwrap_or_else(|| panic!("no hour {at} in {body}"))
    };
    assert_eq!(hour("2026-11-10T11:00:00Z")["edge_requests"], 9 + probes);
    assert_eq!(hour("2026-11-10T12:00:00Z")["edge_requests"], Value::Null);
}

//! Prometheus metrics of the site, at `/metrics` (text format 0.0.4, written by the
//! `prometheus` crate's encoder).
//!
//! - Requests and response times come from nginx's access log, which nginx sends as
//!   syslog datagrams to a Unix socket of the agent ([`crate::accesslog`]): nothing is
//!   written to disk, nothing tails a file, and every request counts (a status endpoint
//!   such as stub_status has counters but no response times).
//! - php-fpm's pool status (`/fpm-status?json`, loopback only) is read every check
//!   interval, wp-content and database sizes every size interval (walking a Gluster
//!   directory is not free), so a scrape only formats numbers.
//! - The agent's own memory (RSS) and CPU from `/proc/self`.

use std::sync::Mutex;

use prometheus::{
    TextEncoder,
    proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType},
};
use serde::Deserialize;

use crate::supervise::ChildStatus;

/// Upper bounds of the response-time buckets, seconds.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Request counters and the response-time histogram.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Requests {
    /// By status class: index 0 = 1xx … 4 = 5xx.
    pub by_class: [u64; 5],
    /// Non-cumulative counts per bucket; the last is `+Inf`.
    pub buckets: [u64; BUCKETS.len() + 1],
    pub seconds_sum: f64,
    pub bytes_sent: u64,
}

impl Requests {
    pub fn observe(&mut self, status: u16, seconds: f64, bytes: u64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class] += 1;
        let i = BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i] += 1;
        self.seconds_sum += seconds;
        self.bytes_sent += bytes;
    }

    /// Adds the counts of `other` (a batch) to these.
    pub fn merge(&mut self, other: &Requests) {
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        for (a, b) in self.buckets.iter_mut().zip(other.buckets) {
            *a += b;
        }
        self.seconds_sum += other.seconds_sum;
        self.bytes_sent += other.bytes_sent;
    }

    pub fn total(&self) -> u64 {
        self.by_class.iter().sum()
    }
}

/// One access-log line as nginx sends it with `log_format pressdock '$status
/// $request_time $bytes_sent'` over syslog: `<190>Nov 28 19:20:00 nginx: 200 0.012 5123`.
/// The last three fields are ours, whatever the syslog header looks like.
pub fn parse_access_line(line: &str) -> Option<(u16, f64, u64)> {
    let mut it = line.trim_end().rsplitn(4, ' ');
    let bytes = it.next()?.parse().ok()?;
    let secs: f64 = it.next()?.parse().ok()?;
    let status = it.next()?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then_some((status, secs, bytes))
}

/// php-fpm's `/fpm-status?json` (the fields we use).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct FpmStatus {
    #[serde(rename = "accepted conn")]
    pub accepted_conn: u64,
    #[serde(rename = "listen queue")]
    pub listen_queue: u64,
    #[serde(rename = "idle processes")]
    pub idle_processes: u64,
    #[serde(rename = "active processes")]
    pub active_processes: u64,
    #[serde(rename = "total processes")]
    pub total_processes: u64,
    #[serde(rename = "max active processes")]
    pub max_active_processes: u64,
    #[serde(rename = "max children reached")]
    pub max_children_reached: u64,
    #[serde(rename = "slow requests")]
    pub slow_requests: u64,
}

/// Everything `/metrics` shows, gathered by the background tasks.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub requests: Requests,
    pub fpm: Option<FpmStatus>,
    pub wp_content_bytes: Option<u64>,
    pub database_bytes: Option<u64>,
    pub ready: bool,
    pub wordpress_installed: bool,
    pub desired_generation: Option<u64>,
    pub last_report_ok_unix: Option<u64>,
    pub reports_failed: u64,
    /// Purge requests to the control plane: accepted, failed (retried), dropped.
    pub purges_sent: u64,
    pub purges_failed: u64,
    pub purges_dropped: u64,
}

/// The shared, mutable state behind `/metrics`.
#[derive(Debug, Default)]
pub struct Metrics(pub Mutex<Snapshot>);

impl Metrics {
    pub fn with<R>(&self, f: impl FnOnce(&mut Snapshot) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut g| f(&mut g))
    }
    pub fn snapshot(&self) -> Snapshot {
        self.with(|s| s.clone()).unwrap_or_default()
    }
}

/// The agent process's own resources.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SelfUsage {
    pub rss_bytes: u64,
    pub cpu_seconds: f64,
}

/// Reads `/proc/self/status` (VmRSS) and `/proc/self/stat` (utime + stime).
pub fn self_usage() -> SelfUsage {
    let rss_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    // Fields after the `(comm)`; utime and stime are the 14th and 15th of the line.
    let cpu_seconds = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
            // USER_HZ is 100 on Linux (sysconf(_SC_CLK_TCK)).
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(0.0);
    SelfUsage {
        rss_bytes,
        cpu_seconds,
    }
}

/// One metric family of the snapshot: name, help, kind and its samples.
struct Family(MetricFamily);

impl Family {
    fn new(name: &str, kind: MetricType, help: &str) -> Self {
        let mut f = MetricFamily::default();
        f.set_name(name.to_owned());
        f.set_help(help.to_owned());
        f.set_field_type(kind);
        Self(f)
    }

    /// Adds a sample of a counter or gauge (as the family's kind says).
    fn sample(mut self, labels: &[(&str, &str)], value: f64) -> Self {
        let mut m = Metric::from_label(
            labels
                .iter()
                .map(|(name, value)| {
                    let mut l = LabelPair::default();
                    l.set_name((*name).to_owned());
                    l.set_value((*value).to_owned());
                    l
                })
                .collect(),
        );
        if self.0.get_field_type() == MetricType::COUNTER {
            let mut c = Counter::default();
            c.set_value(value);
            m.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            m.set_gauge(g);
        }
        self.0.mut_metric().push(m);
        self
    }

    fn value(self, value: f64) -> Self {
        self.sample(&[], value)
    }
}

/// The response-time histogram from the snapshot's (non-cumulative) bucket counts.
fn duration_histogram(r: &Requests) -> Family {
    let mut f = Family::new(
        "pressdock_http_request_duration_seconds",
        MetricType::HISTOGRAM,
        "nginx $request_time of the site's requests.",
    );
    let mut cumulative = 0;
    let buckets = BUCKETS
        .iter()
        .zip(r.buckets)
        .map(|(le, n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(*le);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    // The `+Inf` bucket is the count, which the encoder writes itself.
    h.set_sample_count(cumulative + r.buckets[BUCKETS.len()]);
    h.set_sample_sum(r.seconds_sum);
    let mut m = Metric::default();
    m.set_histogram(h);
    f.0.mut_metric().push(m);
    f
}

/// The `/metrics` body (Prometheus text format 0.0.4, written by the `prometheus` crate).
/// Pure: the background tasks gathered the numbers, a scrape only formats them.
pub fn render(s: &Snapshot, children: &[ChildStatus], usage: SelfUsage) -> String {
    use MetricType::{COUNTER, GAUGE};
    let r = &s.requests;
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
    let mut requests = Family::new(
        "pressdock_http_requests_total",
        COUNTER,
        "Requests answered by the site's nginx, by status class.",
    );
    for (class, n) in classes.iter().zip(r.by_class) {
        requests = requests.sample(&[("code", class)], n as f64);
    }
    let mut families = vec![
        requests,
        duration_histogram(r),
        Family::new(
            "pressdock_http_response_bytes_total",
            COUNTER,
            "Bytes sent to clients.",
        )
        .value(r.bytes_sent as f64),
        Family::new(
            "pressdock_php_fpm_up",
            GAUGE,
            "1 when the last php-fpm status read worked.",
        )
        .value(f64::from(u8::from(s.fpm.is_some()))),
    ];
    if let Some(f) = &s.fpm {
        let rows: [(&str, MetricType, &str, u64); 8] = [
            (
                "accepted_connections_total",
                COUNTER,
                "Connections accepted by the pool.",
                f.accepted_conn,
            ),
            (
                "listen_queue",
                GAUGE,
                "Requests waiting for a free worker.",
                f.listen_queue,
            ),
            ("idle_processes", GAUGE, "Idle workers.", f.idle_processes),
            (
                "active_processes",
                GAUGE,
                "Busy workers.",
                f.active_processes,
            ),
            ("total_processes", GAUGE, "Workers.", f.total_processes),
            (
                "max_active_processes",
                GAUGE,
                "Most busy workers at once since php-fpm started.",
                f.max_active_processes,
            ),
            (
                "max_children_reached_total",
                COUNTER,
                "Times the pool hit pm.max_children.",
                f.max_children_reached,
            ),
            (
                "slow_requests_total",
                COUNTER,
                "Requests over request_slowlog_timeout.",
                f.slow_requests,
            ),
        ];
        for (name, kind, help, v) in rows {
            families.push(
                Family::new(&format!("pressdock_php_fpm_{name}"), kind, help).value(v as f64),
            );
        }
    }
    if let Some(b) = s.wp_content_bytes {
        families.push(
            Family::new(
                "pressdock_wp_content_bytes",
                GAUGE,
                "Bytes of the files under wp-content.",
            )
            .value(b as f64),
        );
    }
    if let Some(b) = s.database_bytes {
        families.push(
            Family::new(
                "pressdock_database_bytes",
                GAUGE,
                "Data and index bytes of the site's schema.",
            )
            .value(b as f64),
        );
    }
    families.push(
        Family::new("pressdock_ready", GAUGE, "1 when /readyz answers 200.")
            .value(f64::from(u8::from(s.ready))),
    );
    families.push(
        Family::new(
            "pressdock_wordpress_installed",
            GAUGE,
            "1 once WordPress is installed.",
        )
        .value(f64::from(u8::from(s.wordpress_installed))),
    );
    let mut up = Family::new(
        "pressdock_child_up",
        GAUGE,
        "1 while the supervised process runs.",
    );
    let mut restarts = Family::new(
        "pressdock_child_restarts_total",
        COUNTER,
        "Restarts of a supervised process after it died.",
    );
    for c in children {
        up = up.sample(&[("child", &c.name)], f64::from(u8::from(c.running)));
        restarts = restarts.sample(&[("child", &c.name)], c.restarts as f64);
    }
    families.extend([up, restarts]);
    if let Some(g) = s.desired_generation {
        families.push(
            Family::new(
                "pressdock_desired_generation",
                GAUGE,
                "Generation of the desired config held.",
            )
            .value(g as f64),
        );
    }
    if let Some(t) = s.last_report_ok_unix {
        families.push(
            Family::new(
                "pressdock_report_last_success_timestamp_seconds",
                GAUGE,
                "When the control plane last accepted a report.",
            )
            .value(t as f64),
        );
    }
    families.push(
        Family::new(
            "pressdock_report_failures_total",
            COUNTER,
            "Reports that failed.",
        )
        .value(s.reports_failed as f64),
    );
    let mut purges = Family::new(
        "pressdock_agent_purges_total",
        COUNTER,
        "Purge requests to the control plane: sent (accepted), failed (retried), dropped (refused, or lost at stop).",
    );
    for (result, n) in [
        ("sent", s.purges_sent),
        ("failed", s.purges_failed),
        ("dropped", s.purges_dropped),
    ] {
        purges = purges.sample(&[("result", result)], n as f64);
    }
    families.push(purges);
    families.push(
        Family::new(
            "pressdock_agent_resident_memory_bytes",
            GAUGE,
            "RSS of the agent process.",
        )
        .value(usage.rss_bytes as f64),
    );
    families.push(
        Family::new(
            "pressdock_agent_cpu_seconds_total",
            COUNTER,
            "CPU time of the agent process.",
        )
        .value(usage.cpu_seconds),
    );
    // A family without samples (no children yet) is left out: the format has no empty one.
    let families: Vec<MetricFamily> = families
        .into_iter()
        .map(|f| f.0)
        .filter(|f| !f.get_metric().is_empty())
        .collect();
    TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nginx_syslog_lines() {
        assert_eq!(
            parse_access_line("<190>Nov 28 19:20:00 nginx: 200 0.012 5123"),
            Some((200, 0.012, 5123))
        );
        assert_eq!(
            parse_access_line("<190>Nov 28 19:20:00 nginx: 503 1.500 0\n"),
            Some((503, 1.5, 0))
        );
        assert_eq!(parse_access_line("garbage"), None);
        assert_eq!(parse_access_line("nginx: 200 -1 5"), None);
    }

    #[test]
    fn histogram_is_cumulative_and_counts_match() {
        let mut s = Snapshot::default();
        s.requests.observe(200, 0.004, 100);
        s.requests.observe(200, 0.3, 100);
        s.requests.observe(502, 20.0, 10);
        s.requests.observe(404, 0.01, 10);
        s.fpm = Some(FpmStatus {
            accepted_conn: 7,
            active_processes: 1,
            ..Default::default()
        });
        s.database_bytes = Some(65536);
        s.purges_sent = 3;
        s.purges_dropped = 1;
        let children = vec![ChildStatus {
            name: "nginx".into(),
            pid: Some(1),
            running: true,
            restarts: 2,
            last_exit: None,
            down_since: None,
        }];
        let text = render(
            &s,
            &children,
            SelfUsage {
                rss_bytes: 4096,
                cpu_seconds: 0.5,
            },
        );
        for want in [
            "pressdock_http_requests_total{code=\"2xx\"} 2",
            "pressdock_http_requests_total{code=\"5xx\"} 1",
            "pressdock_http_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "pressdock_http_request_duration_seconds_bucket{le=\"0.01\"} 2",
            "pressdock_http_request_duration_seconds_bucket{le=\"0.5\"} 3",
            "pressdock_http_request_duration_seconds_bucket{le=\"10\"} 3",
            "pressdock_http_request_duration_seconds_bucket{le=\"+Inf\"} 4",
            "pressdock_http_request_duration_seconds_count 4",
            "pressdock_http_response_bytes_total 220",
            "pressdock_php_fpm_accepted_connections_total 7",
            "pressdock_database_bytes 65536",
            "pressdock_child_restarts_total{child=\"nginx\"} 2",
            "pressdock_agent_resident_memory_bytes 4096",
            "# TYPE pressdock_agent_purges_total counter",
            "pressdock_agent_purges_total{result=\"sent\"} 3",
            "pressdock_agent_purges_total{result=\"failed\"} 0",
            "pressdock_agent_purges_total{result=\"dropped\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(
            !text.contains("pressdock_wp_content_bytes"),
            "unknown sizes are left out"
        );
    }

    #[test]
    fn merge_adds_batches() {
        let mut a = Requests::default();
        a.observe(200, 0.1, 10);
        let mut b = Requests::default();
        b.observe(500, 3.0, 5);
        b.observe(200, 0.1, 5);
        a.merge(&b);
        let mut all = Requests::default();
        all.observe(200, 0.1, 10);
        all.observe(500, 3.0, 5);
        all.observe(200, 0.1, 5);
        assert_eq!(a, all);
    }

    #[test]
    fn fpm_json_parses() {
        let j = r#"{"pool":"www","process manager":"dynamic","start time":1,"start since":2,
            "accepted conn":12,"listen queue":0,"max listen queue":0,"listen queue len":0,
            "idle processes":1,"active processes":1,"total processes":2,"max active processes":1,
            "max children reached":0,"slow requests":0}"#;
        let f: FpmStatus = serde_json::from_str(j).expect("json");
        assert_eq!(f.accepted_conn, 12);
        assert_eq!(f.total_processes, 2);
    }

    #[test]
    fn self_usage_reads_proc() {
        let u = self_usage();
        assert!(u.rss_bytes > 0);
    }
}

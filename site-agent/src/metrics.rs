//! Prometheus metrics of the site, at `/metrics` (text format 0.0.4).
//!
//! - Requests and response times come from nginx's access log, which nginx sends as
//!   syslog datagrams to a Unix socket of the agent ([`crate::accesslog`]): nothing is
//!   written to disk, nothing tails a file, and every request counts (a status endpoint
//!   such as stub_status has counters but no response times).
//! - php-fpm's pool status (`/fpm-status?json`, loopback only) is read every check
//!   interval, wp-content and database sizes every size interval (walking a Gluster
//!   directory is not free), so a scrape only formats numbers.
//! - The agent's own memory (RSS) and CPU from `/proc/self`.

use std::fmt::Write as _;
use std::sync::Mutex;

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

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The `/metrics` body. Pure.
pub fn render(s: &Snapshot, children: &[ChildStatus], usage: SelfUsage) -> String {
    let mut o = String::with_capacity(4096);
    let r = &s.requests;
    header(
        &mut o,
        "pressdock_http_requests_total",
        "counter",
        "Requests answered by the site's nginx, by status class.",
    );
    for (i, n) in r.by_class.iter().enumerate() {
        let _ = writeln!(
            o,
            "pressdock_http_requests_total{{code=\"{}xx\"}} {n}",
            i + 1
        );
    }
    header(
        &mut o,
        "pressdock_http_request_duration_seconds",
        "histogram",
        "nginx $request_time of the site's requests.",
    );
    let mut cum = 0;
    for (i, b) in BUCKETS.iter().enumerate() {
        cum += r.buckets[i];
        let _ = writeln!(
            o,
            "pressdock_http_request_duration_seconds_bucket{{le=\"{b}\"}} {cum}"
        );
    }
    cum += r.buckets[BUCKETS.len()];
    let _ = writeln!(
        o,
        "pressdock_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {cum}"
    );
    let _ = writeln!(
        o,
        "pressdock_http_request_duration_seconds_sum {}",
        r.seconds_sum
    );
    let _ = writeln!(o, "pressdock_http_request_duration_seconds_count {cum}");
    header(
        &mut o,
        "pressdock_http_response_bytes_total",
        "counter",
        "Bytes sent to clients.",
    );
    let _ = writeln!(o, "pressdock_http_response_bytes_total {}", r.bytes_sent);

    header(
        &mut o,
        "pressdock_php_fpm_up",
        "gauge",
        "1 when the last php-fpm status read worked.",
    );
    let _ = writeln!(o, "pressdock_php_fpm_up {}", u8::from(s.fpm.is_some()));
    if let Some(f) = &s.fpm {
        let rows: [(&str, &str, &str, u64); 8] = [
            (
                "accepted_connections_total",
                "counter",
                "Connections accepted by the pool.",
                f.accepted_conn,
            ),
            (
                "listen_queue",
                "gauge",
                "Requests waiting for a free worker.",
                f.listen_queue,
            ),
            ("idle_processes", "gauge", "Idle workers.", f.idle_processes),
            (
                "active_processes",
                "gauge",
                "Busy workers.",
                f.active_processes,
            ),
            ("total_processes", "gauge", "Workers.", f.total_processes),
            (
                "max_active_processes",
                "gauge",
                "Most busy workers at once since php-fpm started.",
                f.max_active_processes,
            ),
            (
                "max_children_reached_total",
                "counter",
                "Times the pool hit pm.max_children.",
                f.max_children_reached,
            ),
            (
                "slow_requests_total",
                "counter",
                "Requests over request_slowlog_timeout.",
                f.slow_requests,
            ),
        ];
        for (name, kind, help, v) in rows {
            let full = format!("pressdock_php_fpm_{name}");
            header(&mut o, &full, kind, help);
            let _ = writeln!(o, "{full} {v}");
        }
    }
    if let Some(b) = s.wp_content_bytes {
        header(
            &mut o,
            "pressdock_wp_content_bytes",
            "gauge",
            "Bytes of the files under wp-content.",
        );
        let _ = writeln!(o, "pressdock_wp_content_bytes {b}");
    }
    if let Some(b) = s.database_bytes {
        header(
            &mut o,
            "pressdock_database_bytes",
            "gauge",
            "Data and index bytes of the site's schema.",
        );
        let _ = writeln!(o, "pressdock_database_bytes {b}");
    }
    header(
        &mut o,
        "pressdock_ready",
        "gauge",
        "1 when /readyz answers 200.",
    );
    let _ = writeln!(o, "pressdock_ready {}", u8::from(s.ready));
    header(
        &mut o,
        "pressdock_wordpress_installed",
        "gauge",
        "1 once WordPress is installed.",
    );
    let _ = writeln!(
        o,
        "pressdock_wordpress_installed {}",
        u8::from(s.wordpress_installed)
    );
    header(
        &mut o,
        "pressdock_child_up",
        "gauge",
        "1 while the supervised process runs.",
    );
    for c in children {
        let _ = writeln!(
            o,
            "pressdock_child_up{{child=\"{}\"}} {}",
            c.name,
            u8::from(c.running)
        );
    }
    header(
        &mut o,
        "pressdock_child_restarts_total",
        "counter",
        "Restarts of a supervised process after it died.",
    );
    for c in children {
        let _ = writeln!(
            o,
            "pressdock_child_restarts_total{{child=\"{}\"}} {}",
            c.name, c.restarts
        );
    }
    if let Some(g) = s.desired_generation {
        header(
            &mut o,
            "pressdock_desired_generation",
            "gauge",
            "Generation of the desired config held.",
        );
        let _ = writeln!(o, "pressdock_desired_generation {g}");
    }
    if let Some(t) = s.last_report_ok_unix {
        header(
            &mut o,
            "pressdock_report_last_success_timestamp_seconds",
            "gauge",
            "When the control plane last accepted a report.",
        );
        let _ = writeln!(o, "pressdock_report_last_success_timestamp_seconds {t}");
    }
    header(
        &mut o,
        "pressdock_report_failures_total",
        "counter",
        "Reports that failed.",
    );
    let _ = writeln!(o, "pressdock_report_failures_total {}", s.reports_failed);
    header(
        &mut o,
        "pressdock_agent_purges_total",
        "counter",
        "Purge requests to the control plane: sent (accepted), failed (retried), dropped (refused, or lost at stop).",
    );
    for (result, n) in [
        ("sent", s.purges_sent),
        ("failed", s.purges_failed),
        ("dropped", s.purges_dropped),
    ] {
        let _ = writeln!(o, "pressdock_agent_purges_total{{result=\"{result}\"}} {n}");
    }
    header(
        &mut o,
        "pressdock_agent_resident_memory_bytes",
        "gauge",
        "RSS of the agent process.",
    );
    let _ = writeln!(
        o,
        "pressdock_agent_resident_memory_bytes {}",
        usage.rss_bytes
    );
    header(
        &mut o,
        "pressdock_agent_cpu_seconds_total",
        "counter",
        "CPU time of the agent process.",
    );
    let _ = writeln!(o, "pressdock_agent_cpu_seconds_total {}", usage.cpu_seconds);
    o
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

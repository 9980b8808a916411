//! The route writer: Traefik's routes to the tasks of the swarm's services, written as a
//! file for Traefik's file provider, so that a task's hand-over is ordered by us and not by
//! the timing of a provider's refresh.
//!
//! Why not Traefik's swarm provider: it rebuilds every route from the task list on each
//! refresh, and while a service's task was replaced a request now and then met Traefik's
//! bare `404 page not found` (issue 10, item 9): the router was gone for a moment. Here:
//!
//! - A service opts in with `pressdock.route.*` labels (set by the platform for every site,
//!   [`LABEL_HOSTS`] and friends; the lab's test services use the same labels). Its routers
//!   and its load balancer are written for as long as the service exists, even with no task
//!   (then Traefik answers 503, which Varnish retries), never dropped while it is replaced.
//! - Its servers are the addresses, on the route network, of its tasks that swarm wants
//!   running and that run. With a health check a task is "running" only once healthy, so a
//!   new task is listed as soon as it can serve. With `start-first`, swarm tells the old task
//!   to stop only after the new one runs: the same task list that drops the old one lists the
//!   new one. The old task then still serves for its drain time (the site agent: 7 s after
//!   SIGTERM), which covers this writer's poll (0.5 s) and Traefik's reload of the file (up
//!   to its 2 s throttle): requests already sent to it are answered.
//! - When no task is wanted and running (a crash, a node down), tasks that still run while
//!   told to stop are listed instead: a draining task answers, an empty list cannot.
//!
//! One code path for the lab and production: `pressdock-infra routes` runs beside every
//! Traefik replica (in production one per manager, against that manager's docker socket; in
//! the lab one process on the host, whose folder every manager's Traefik mounts), and the
//! platform only sets labels. The edge keeps routing when the control plane is down.
use crate::lab::http;
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Space- or comma-separated host names of the service (`Host(…)` rules). Required: a
/// service without it has no routes.
pub const LABEL_HOSTS: &str = "pressdock.route.hosts";
/// Port the tasks listen on (default 80).
pub const LABEL_PORT: &str = "pressdock.route.port";
/// Overlay network on which Traefik reaches the tasks (default: the writer's `--network`).
pub const LABEL_NETWORK: &str = "pressdock.route.network";
/// Entrypoint whose router sends the hosts to the tasks (default `internal`).
pub const LABEL_INTERNAL: &str = "pressdock.route.internal";
/// Entrypoints (comma-separated) whose routers send the hosts to [`LABEL_CACHE`], the
/// cache tier: `web`, `websecure`. Default none (the edge's catch-all covers `web`).
pub const LABEL_EDGE: &str = "pressdock.route.edge";
/// Entrypoints among [`LABEL_EDGE`] that terminate TLS.
pub const LABEL_TLS: &str = "pressdock.route.tls";
/// Certificate resolver of the TLS routers (empty: Traefik's default certificate).
pub const LABEL_CERT_RESOLVER: &str = "pressdock.route.certresolver";
/// Traefik service of the cache tier (default `pd-cache@file`, stacks/edge-routes.yml).
pub const LABEL_CACHE: &str = "pressdock.route.cache";

/// What one service asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Router and service name: the swarm service's name.
    pub name: String,
    pub hosts: Vec<String>,
    pub port: u16,
    pub network: String,
    pub internal: String,
    pub edge: Vec<String>,
    pub tls: Vec<String>,
    pub cert_resolver: String,
    pub cache: String,
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !h.starts_with(['.', '-'])
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn list(s: &str) -> Vec<String> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Route labels read from the Traefik labels of a service made for the swarm provider
/// (sites created before the route writer: `traefik.enable`, an `internal` router with a
/// `Host(…)` rule, the load balancer's port, `traefik.swarm.network`), so that such a site
/// keeps its route until the platform rewrites its labels. `None` when there are none.
pub fn legacy_labels(labels: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    if labels.get("traefik.enable").map(String::as_str) != Some("true") {
        return None;
    }
    let mut hosts = Vec::new();
    for (k, v) in labels {
        let Some(router) = k
            .strip_prefix("traefik.http.routers.")
            .and_then(|r| r.strip_suffix(".entrypoints"))
        else {
            continue;
        };
        if !list(v).iter().any(|e| e == "internal") {
            continue;
        }
        let rule = labels
            .get(&format!("traefik.http.routers.{router}.rule"))
            .map_or("", String::as_str);
        for part in rule.split("Host(`").skip(1) {
            if let Some(h) = part.split('`').next() {
                hosts.push(h.to_owned());
            }
        }
    }
    if hosts.is_empty() {
        return None;
    }
    let mut out = BTreeMap::from([(LABEL_HOSTS.to_owned(), hosts.join(","))]);
    if let Some(port) = labels.iter().find_map(|(k, v)| {
        (k.starts_with("traefik.http.services.") && k.ends_with(".loadbalancer.server.port"))
            .then(|| v.clone())
    }) {
        out.insert(LABEL_PORT.to_owned(), port);
    }
    if let Some(n) = labels.get("traefik.swarm.network") {
        out.insert(LABEL_NETWORK.to_owned(), n.clone());
    }
    Some(out)
}

/// The route a service's labels ask for: `None` without [`LABEL_HOSTS`] (nor legacy
/// Traefik labels, [`legacy_labels`]), an error naming the label when one is malformed
/// (the service is then left out, and said so).
pub fn route_of(
    name: &str,
    labels: &BTreeMap<String, String>,
    network: &str,
) -> Option<Result<Route>> {
    let legacy;
    let labels = if labels.contains_key(LABEL_HOSTS) {
        labels
    } else {
        legacy = legacy_labels(labels)?;
        &legacy
    };
    let hosts = list(labels.get(LABEL_HOSTS)?);
    Some((|| {
        let name = name.replace('.', "-");
        if !valid_name(&name) {
            bail!("service name {name:?}: letters, digits, '-', '_' only");
        }
        if hosts.is_empty() {
            bail!("{LABEL_HOSTS} is empty");
        }
        if let Some(h) = hosts.iter().find(|h| !valid_host(h)) {
            bail!("{LABEL_HOSTS}: {h:?} is not a lower-case host name");
        }
        let port = match labels.get(LABEL_PORT) {
            None => 80,
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("{LABEL_PORT}: {p:?} is not a port"))?,
        };
        let word = |label: &str, default: &str| -> Result<String> {
            let v = labels.get(label).map_or(default, String::as_str);
            if !v.is_empty() && !valid_name(v.trim_end_matches("@file")) {
                bail!("{label}: {v:?} is not a name");
            }
            Ok(v.to_owned())
        };
        let words = |label: &str| -> Result<Vec<String>> {
            let v = list(labels.get(label).map_or("", String::as_str));
            if let Some(w) = v.iter().find(|w| !valid_name(w)) {
                bail!("{label}: {w:?} is not a name");
            }
            Ok(v)
        };
        Ok(Route {
            hosts,
            port,
            network: word(LABEL_NETWORK, network)?,
            internal: word(LABEL_INTERNAL, "internal")?,
            edge: words(LABEL_EDGE)?,
            tls: words(LABEL_TLS)?,
            cert_resolver: word(LABEL_CERT_RESOLVER, "")?,
            cache: word(LABEL_CACHE, "pd-cache@file")?,
            name,
        })
    })())
}

/// One task as the writer needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub service_id: String,
    pub desired_running: bool,
    pub running: bool,
    /// `(network name, address without prefix length)`.
    pub addresses: Vec<(String, String)>,
}

/// Parses the Engine API's task list (`GET /tasks`).
pub fn parse_tasks(v: &Value) -> Vec<Task> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|t| Task {
            service_id: t["ServiceID"].as_str().unwrap_or("").to_owned(),
            desired_running: t["DesiredState"] == "running",
            running: t["Status"]["State"] == "running",
            addresses: t["NetworksAttachments"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|a| {
                    let net = a["Network"]["Spec"]["Name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned();
                    a["Addresses"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str())
                        .map(move |x| (net.clone(), x.split('/').next().unwrap_or("").to_owned()))
                        .collect::<Vec<_>>()
                })
                .collect(),
        })
        .collect()
}

/// The server URLs of a route: tasks wanted and running; if none, tasks still running
/// while told to stop (draining). Sorted, so the file only changes when the set does.
pub fn servers(route: &Route, service_id: &str, tasks: &[Task]) -> Vec<String> {
    let urls = |want: bool| -> Vec<String> {
        let mut v: Vec<String> = tasks
            .iter()
            .filter(|t| t.service_id == service_id && t.running && t.desired_running == want)
            .flat_map(|t| t.addresses.iter())
            .filter(|(net, ip)| *net == route.network && !ip.is_empty())
            .map(|(_, ip)| format!("http://{ip}:{}", route.port))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let live = urls(true);
    if live.is_empty() { urls(false) } else { live }
}

fn host_rule(hosts: &[String]) -> String {
    hosts
        .iter()
        .map(|h| format!("Host(`{h}`)"))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// Traefik's dynamic configuration for these routes and their servers. Pure.
pub fn config(routes: &[(Route, Vec<String>)]) -> Value {
    let mut routers = serde_json::Map::new();
    let mut services = serde_json::Map::new();
    for (r, servers) in routes {
        let rule = host_rule(&r.hosts);
        routers.insert(
            format!("{}-{}", r.name, r.internal),
            json!({ "rule": rule, "entryPoints": [r.internal], "service": r.name }),
        );
        for ep in &r.edge {
            let mut router = json!({ "rule": rule, "entryPoints": [ep], "service": r.cache });
            if r.tls.contains(ep) {
                router["tls"] = if r.cert_resolver.is_empty() {
                    json!({})
                } else {
                    json!({ "certResolver": r.cert_resolver })
                };
            }
            routers.insert(format!("{}-{ep}", r.name), router);
        }
        let servers: Vec<Value> = servers.iter().map(|u| json!({ "url": u })).collect();
        services.insert(
            r.name.clone(),
            json!({ "loadBalancer": { "servers": servers } }),
        );
    }
    json!({ "http": { "routers": routers, "services": services } })
}

/// `GET` on the Engine API over its unix socket (HTTP/1.0: one answer, no chunks).
pub fn docker_get(sock: &Path, path: &str) -> Result<Value> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("connecting to {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path}"))?;
    let r = http::parse_response(&raw).with_context(|| format!("GET {path}"))?;
    if r.status != 200 {
        bail!("GET {path}: HTTP {} {}", r.status, r.body.trim());
    }
    serde_json::from_str(&r.body).with_context(|| format!("GET {path}: not JSON"))
}

fn filters(f: &Value) -> String {
    let mut out = String::from("filters=");
    for b in f.to_string().bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One look at the swarm: every labelled service's route and servers.
pub fn observe(sock: &Path, api: &str, network: &str) -> Result<Vec<(Route, Vec<String>)>> {
    // Every service: the labelled ones, and those still with legacy Traefik labels.
    let svcs = docker_get(sock, &format!("/{api}/services"))?;
    let tasks = parse_tasks(&docker_get(
        sock,
        &format!(
            "/{api}/tasks?{}",
            filters(&json!({ "desired-state": ["running"] }))
        ),
    )?);
    let mut out = Vec::new();
    for s in svcs.as_array().into_iter().flatten() {
        let id = s["ID"].as_str().unwrap_or("");
        let name = s["Spec"]["Name"].as_str().unwrap_or("");
        let labels: BTreeMap<String, String> = s["Spec"]["Labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        let route = match route_of(name, &labels, network) {
            None => continue,
            Some(Err(e)) => {
                eprintln!("routes: service {name} left out: {e:#}");
                continue;
            }
            Some(Ok(r)) => r,
        };
        let mut srv = servers(&route, id, &tasks);
        if srv.is_empty() {
            // Nothing wanted and running: a task that drains still answers.
            let all = parse_tasks(&docker_get(
                sock,
                &format!("/{api}/tasks?{}", filters(&json!({ "service": [id] }))),
            )?);
            srv = servers(&route, id, &all);
        }
        out.push((route, srv));
    }
    out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    Ok(out)
}

/// Writes `content` to `path` through a temporary file and a rename (Traefik's watcher
/// never reads half a file). `Ok(false)` when the file already holds it.
pub fn write_if_changed(path: &Path, content: &str) -> Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|s| s == content) {
        return Ok(false);
    }
    let dir = path.parent().context("the routes file has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // A dot file: Traefik's directory provider reads only *.yml/*.yaml/*.toml.
    let mut tmp = tempfile::Builder::new()
        .prefix(".routes.tmp")
        .tempfile_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    std::io::Write::write_all(&mut tmp, content.as_bytes())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(true)
}

pub struct Options {
    pub docker_sock: PathBuf,
    pub api_version: String,
    pub network: String,
    pub out: PathBuf,
    pub interval: Duration,
}

/// Seconds since the epoch, with milliseconds, for the log (no clock crate needed).
fn stamp() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

/// Follows the swarm until killed: a look every `interval`, the file rewritten when the
/// routes change. A failed look keeps the last file (the routes stay as they were).
pub fn run(o: &Options) -> Result<()> {
    let api = format!("v{}", o.api_version.trim_start_matches('v'));
    let mut last_err = String::new();
    loop {
        match observe(&o.docker_sock, &api, &o.network) {
            Ok(routes) => {
                last_err.clear();
                let mut text = serde_json::to_string_pretty(&config(&routes))?;
                text.push('\n');
                let text = format!(
                    "# Written by `pressdock-infra routes` from the swarm's tasks: do not edit.\n{text}"
                );
                if write_if_changed(&o.out, &text)? {
                    let summary: Vec<String> = routes
                        .iter()
                        .map(|(r, s)| format!("{}={}", r.name, s.len()))
                        .collect();
                    eprintln!(
                        "{} routes: wrote {} ({})",
                        stamp(),
                        o.out.display(),
                        summary.join(" ")
                    );
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if msg != last_err {
                    eprintln!("{} routes: {msg} (keeping the last routes)", stamp());
                    last_err = msg;
                }
            }
        }
        std::thread::sleep(o.interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn task(svc: &str, desired: bool, running: bool, ip: &str) -> Task {
        Task {
            service_id: svc.into(),
            desired_running: desired,
            running,
            addresses: vec![
                ("pd-sites".into(), ip.into()),
                ("ingress".into(), "10.0.0.9".into()),
            ],
        }
    }

    fn route() -> Route {
        route_of(
            "wp_k3v7q2m6xa",
            &labels(&[(LABEL_HOSTS, "a.test,www.a.test")]),
            "pd-sites",
        )
        .expect("labelled")
        .expect("valid")
    }

    #[test]
    fn labels_give_a_route_with_defaults() {
        let r = route();
        assert_eq!(r.name, "wp_k3v7q2m6xa");
        assert_eq!(r.hosts, ["a.test", "www.a.test"]);
        assert_eq!((r.port, r.network.as_str()), (80, "pd-sites"));
        assert_eq!(r.internal, "internal");
        assert!(r.edge.is_empty() && r.tls.is_empty() && r.cert_resolver.is_empty());
        assert_eq!(r.cache, "pd-cache@file");
        assert!(
            route_of("x", &labels(&[]), "n").is_none(),
            "no hosts label: no route"
        );
    }

    #[test]
    fn legacy_traefik_labels_still_route() {
        let l = labels(&[
            ("traefik.enable", "true"),
            ("traefik.swarm.network", "pd-sites"),
            (
                "traefik.http.services.wp-x.loadbalancer.server.port",
                "8080",
            ),
            (
                "traefik.http.routers.wp-x-internal.rule",
                "Host(`a.test`) || Host(`b.test`)",
            ),
            ("traefik.http.routers.wp-x-internal.entrypoints", "internal"),
            ("traefik.http.routers.wp-x-web.rule", "Host(`c.test`)"),
            ("traefik.http.routers.wp-x-web.entrypoints", "web"),
        ]);
        let r = route_of("wp_x", &l, "other")
            .expect("legacy")
            .expect("valid");
        assert_eq!(r.hosts, ["a.test", "b.test"]);
        assert_eq!((r.port, r.network.as_str()), (8080, "pd-sites"));
        let mut off = l.clone();
        off.insert("traefik.enable".into(), "false".into());
        assert!(route_of("wp_x", &off, "n").is_none());
    }

    #[test]
    fn malformed_labels_are_refused_by_name() {
        for (l, v) in [
            (LABEL_HOSTS, "a.test Host(`evil`)"),
            (LABEL_HOSTS, " "),
            (LABEL_PORT, "http"),
            (LABEL_EDGE, "web,we b`"),
            (LABEL_CACHE, "x\"y"),
        ] {
            let mut ls = labels(&[(LABEL_HOSTS, "a.test")]);
            ls.insert(l.into(), v.into());
            let e = route_of("s", &ls, "n").expect("labelled").expect_err(v);
            assert!(format!("{e:#}").contains(l), "{e:#} names {l}");
        }
    }

    #[test]
    fn servers_are_running_wanted_tasks_else_draining_ones() {
        let r = route();
        let t = vec![
            task("S", true, true, "10.216.0.7"),
            task("S", false, true, "10.216.0.6"), // told to stop, drains
            task("S", true, false, "10.216.0.8"), // starting (not healthy yet)
            task("T", true, true, "10.216.0.9"),  // another service
        ];
        assert_eq!(servers(&r, "S", &t), ["http://10.216.0.7:80"]);
        // The new task is not running yet and the old one drains: the old one answers.
        assert_eq!(servers(&r, "S", &t[1..3]), ["http://10.216.0.6:80"]);
        assert!(servers(&r, "S", &t[2..3]).is_empty());
    }

    #[test]
    fn config_has_routers_for_every_entrypoint_and_keeps_an_empty_service() {
        let mut r = route();
        r.edge = vec!["web".into(), "websecure".into()];
        r.tls = vec!["websecure".into()];
        r.cert_resolver = "le".into();
        let c = config(&[(r, vec![])]);
        let rule = "Host(`a.test`) || Host(`www.a.test`)";
        assert_eq!(
            c,
            json!({"http": {
                "routers": {
                    "wp_k3v7q2m6xa-internal": {"rule": rule, "entryPoints": ["internal"], "service": "wp_k3v7q2m6xa"},
                    "wp_k3v7q2m6xa-web": {"rule": rule, "entryPoints": ["web"], "service": "pd-cache@file"},
                    "wp_k3v7q2m6xa-websecure": {"rule": rule, "entryPoints": ["websecure"], "service": "pd-cache@file", "tls": {"certResolver": "le"}},
                },
                "services": {"wp_k3v7q2m6xa": {"loadBalancer": {"servers": []}}},
            }})
        );
    }

    #[test]
    fn tasks_parse_from_the_engine_api_shape() {
        let v = json!([{
            "ServiceID": "S", "DesiredState": "running", "Status": {"State": "running"},
            "NetworksAttachments": [{"Network": {"Spec": {"Name": "pd-sites"}}, "Addresses": ["10.216.0.6/20"]}]
        }]);
        assert_eq!(
            parse_tasks(&v),
            vec![Task {
                service_id: "S".into(),
                desired_running: true,
                running: true,
                addresses: vec![("pd-sites".into(), "10.216.0.6".into())],
            }]
        );
    }

    #[test]
    fn filters_are_url_encoded() {
        assert_eq!(
            filters(&json!({"label": ["a.b"]})),
            "filters=%7B%22label%22%3A%5B%22a.b%22%5D%7D"
        );
    }
}

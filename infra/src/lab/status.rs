//! `lab status`: nodes, services and servers, each with a health probe.
use super::platform::Platform;
use super::sh::try_out;
use super::{HOST_IP, Lab, STATE, data, http, ports};

fn line(what: &str, ok: bool, detail: &str) {
    println!(
        "  {:<28} {:<5} {detail}",
        what,
        if ok { "ok" } else { "DOWN" }
    );
}

/// Prints the state of everything; returns whether all is healthy.
pub fn status(lab: &Lab) -> bool {
    let mut healthy = true;
    let mut report = |what: &str, ok: bool, detail: &str| {
        healthy &= ok;
        line(what, ok, detail);
    };
    println!("nodes:");
    let m1 = lab.topo.first_manager();
    // The manager's view of each node: `<hostname> <state> <availability> <manager status>`.
    let swarm = try_out(&mut m1.docker([
        "node",
        "ls",
        "--format",
        "{{.Hostname}} {{.Status}} {{.Availability}} {{.ManagerStatus}}",
    ]))
    .unwrap_or_default();
    for n in lab.topo.nodes() {
        let local = try_out(&mut n.docker(["info", "--format", "{{.Swarm.LocalNodeState}}"]));
        let view = swarm
            .lines()
            .find(|l| l.split_whitespace().next() == Some(n.host().as_str()))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "));
        let ready = view.as_deref().is_some_and(|v| v.starts_with("Ready"));
        let ok = local.as_deref().is_some_and(|s| s.trim() == "active") && ready;
        report(
            &format!("{} ({})", n.host(), n.ip),
            ok,
            &format!(
                "dockerd: {}; swarm: {}",
                local.as_deref().map(str::trim).unwrap_or("not answering"),
                view.as_deref().unwrap_or("not a member")
            ),
        );
    }
    // Swarm members that are not lab nodes (left over from a removed worker).
    for l in swarm.lines() {
        let host = l.split_whitespace().next().unwrap_or("");
        if !lab.topo.nodes().iter().any(|n| n.host() == host) {
            println!("    other swarm member: {l}");
        }
    }
    println!("services:");
    for l in super::nodes::services(lab).lines() {
        let mut f = l.split_whitespace();
        let name = f.next().unwrap_or("");
        let _mode = f.next();
        let replicas = f.next().unwrap_or("0/0");
        let ok = replicas
            .split_once('/')
            .is_some_and(|(a, b)| a == b && a != "0");
        report(name, ok, replicas);
    }
    println!("servers:");
    for n in 1..=lab.topo.galera_nodes {
        let st = data::galera_state(lab, n);
        report(
            &format!("galera g{n} {HOST_IP}:{}", data::galera_port(n)),
            st.as_ref()
                .is_some_and(|(l, c)| l == "Synced" && c == "Primary"),
            &st.map(|(l, c)| format!("{l}/{c}"))
                .unwrap_or_else(|| "not answering".into()),
        );
    }
    let router = data::router_servers();
    report(
        &format!("router {HOST_IP}:{}", ports::ROUTER),
        router.iter().any(|(_, s)| s == "UP"),
        &router
            .iter()
            .map(|(n, s)| format!("{n}={s}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    for n in 1..=2u8 {
        let role = data::redis_cli(lab, data::redis_port(n), &["ROLE"])
            .ok()
            .and_then(|r| r.lines().next().map(str::to_owned));
        report(
            &format!("redis r{n} {HOST_IP}:{}", data::redis_port(n)),
            role.is_some(),
            role.as_deref().unwrap_or("not answering"),
        );
    }
    let master = data::sentinel_master(&lab.secrets.redis_admin);
    for n in 1..=3u8 {
        let ok = data::sentinel_cli(&lab.secrets.redis_admin, data::sentinel_port(n), &["PING"])
            .is_ok_and(|o| o.contains("PONG"));
        report(
            &format!("sentinel s{n} {HOST_IP}:{}", data::sentinel_port(n)),
            ok,
            &format!("master {}", master.as_deref().unwrap_or("?")),
        );
    }
    let vol = data::gluster(&["volume", "status", "sites"]).ok();
    let tls = data::gluster(&["volume", "info", "sites"]).is_ok_and(|i| {
        ["client.ssl: on", "server.ssl: on"]
            .iter()
            .all(|o| i.lines().any(|l| l.trim() == *o))
    }) && super::gluster_tls::FILES
        .iter()
        .all(|f| std::path::Path::new(f).exists());
    report(
        "gluster volume sites",
        vol.as_deref()
            .is_some_and(|v| v.matches(" Y ").count() >= 2)
            && tls,
        match (vol.is_some(), tls) {
            (false, _) => "glusterd not answering",
            (true, true) => "bricks online; TLS on the management and I/O paths",
            (true, false) => "bricks online, but TLS is off (run `lab up`)",
        },
    );
    for n in lab.topo.nodes() {
        let (m, h) = data::mount_state(&n.gluster_mount());
        report(
            &format!("gluster mount {}", n.host()),
            h,
            if h {
                "mounted"
            } else if m {
                "dead mount"
            } else {
                "not mounted"
            },
        );
    }
    let signed = data::s3_request(&data::s3_credentials(lab), "GET", "/backups");
    let addr = format!("{HOST_IP}:{}", ports::S3);
    let unsigned = http::get(&addr, "/backups", &addr);
    report(
        &format!("s3 {addr}"),
        signed.as_ref().is_ok_and(|r| r.status == 200)
            && unsigned.as_ref().is_ok_and(|r| r.status == 403),
        "bucket backups; unsigned requests refused",
    );
    let dns = format!("{HOST_IP}:{}", super::dns::PORT);
    report(
        &format!("dns {dns}"),
        super::dns::answers(&dns),
        "NXDOMAIN for outside names",
    );
    let routes_file = super::edge_routes::dir(lab).join("sites.yml");
    let routed = std::fs::read_to_string(&routes_file)
        .ok()
        .and_then(|t| {
            let json = t
                .lines()
                .filter(|l| !l.starts_with('#'))
                .collect::<String>();
            serde_json::from_str::<serde_json::Value>(&json).ok()
        })
        .and_then(|v| v["http"]["services"].as_object().map(|o| o.len()));
    report(
        "route writer",
        lab.procs.alive("routes").is_some() && routed.is_some(),
        &match (lab.procs.alive("routes"), routed) {
            (Some(_), Some(n)) => format!("{n} service(s) routed ({})", routes_file.display()),
            (None, _) => "not running".to_owned(),
            (Some(_), None) => format!("{} unreadable", routes_file.display()),
        },
    );
    for (what, ok, detail) in super::guard::status_lines(lab) {
        report(&what, ok, &detail);
    }
    let edge = http::get(
        &format!("127.0.0.1:{}", ports::EDGE),
        "/pressdock-health",
        "hello.lab.test",
    );
    report(
        &format!("edge 127.0.0.1:{}", ports::EDGE),
        edge.as_ref()
            .is_ok_and(|r| r.status == 200 && r.header("X-Pressdock-Cache").is_some()),
        &edge
            .map(|r| {
                format!(
                    "HTTP {} X-Pressdock-Cache={}",
                    r.status,
                    r.header("X-Pressdock-Cache").unwrap_or("-")
                )
            })
            .unwrap_or_else(|e| format!("{e:#}")),
    );
    report(
        &format!("ACME server (pebble) {}", super::acme::directory_url()),
        lab.procs.alive("pebble").is_some() && super::acme::directory_answers(lab),
        "issues the sites' certificates (HTTP-01 through the edge)",
    );
    let plat = lab.procs.alive("platform");
    line(
        &format!("platform 127.0.0.1:{}", ports::PLATFORM),
        plat.is_some(),
        if plat.is_some() {
            "running"
        } else {
            "not running (optional)"
        },
    );
    healthy
}

/// Every Traefik replica's `websecure` address (two per manager: `traefik`, `traefik-b`).
pub fn https_replicas(lab: &Lab) -> Vec<String> {
    lab.topo
        .cache_nodes()
        .iter()
        .flat_map(|n| {
            [
                format!("{}:{}", n.ip, ports::NODE_WEBSECURE),
                format!("{}:{}", n.ip, ports::NODE_WEBSECURE_B),
            ]
        })
        .collect()
}

pub fn print_endpoints(lab: &Lab, plat: Option<&Platform>) {
    let s = &lab.secrets;
    println!();
    println!("Pressdock lab is up.");
    println!(
        "  edge (Traefik → Varnish → site): http://127.0.0.1:{}/  (try: curl -H 'Host: hello.lab.test' http://127.0.0.1:{}/pressdock-health -i)",
        ports::EDGE,
        ports::EDGE
    );
    println!(
        "  edge over HTTPS: https://127.0.0.1:{}/  (certificates from the lab's ACME server; \
         try: curl --cacert {} --resolve {}:{}:127.0.0.1 https://{}:{}/)",
        ports::EDGE_TLS,
        super::acme::roots(lab).display(),
        super::platform::DEMO_DOMAIN,
        ports::EDGE_TLS,
        super::platform::DEMO_DOMAIN,
        ports::EDGE_TLS
    );
    println!(
        "    Traefik replicas (HTTPS): {}",
        https_replicas(lab).join(", ")
    );
    println!(
        "  ACME (pebble): {}  roots: {}  DNS management: {}",
        super::acme::directory_url(),
        super::acme::roots(lab).display(),
        super::acme::dns_management_url()
    );
    println!(
        "  Galera router:  mysql -h {HOST_IP} -P {} -u pdadmin -p  (password: pressdock-infra lab password galera)",
        ports::ROUTER,
    );
    println!(
        "  Redis (Sentinel {HOST_IP}:{}, master pressdock): user admin  (password: pressdock-infra lab password redis)",
        data::sentinel_port(1),
    );
    if let Some(m1) = lab.topo.cache_nodes().first() {
        let used = super::PlatformRedis::saved() == super::PlatformRedis::Stack;
        println!(
            "  cache stack (Sentinel {}:{}, master {}): user default, same password{}",
            m1.ip,
            super::nodes::CACHE_SENTINEL_PORT,
            super::nodes::CACHE_MASTER_NAME,
            if used {
                "  (the platform's Redis: --platform-redis stack)"
            } else {
                ""
            },
        );
    }
    println!(
        "  S3: http://{HOST_IP}:{}/backups (signed requests only; access key {}, secret in \
         {STATE}/secrets.toml)",
        ports::S3,
        s.s3_access_key
    );
    println!(
        "  docker: docker -H {}  node ls",
        lab.topo.first_manager().docker_host()
    );
    println!(
        "  platform config: {}",
        super::platform::config_path().display()
    );
    match plat {
        Some(p) => {
            println!("  platform API: {}", p.url);
            println!(
                "    staff admin: {}  (password: pressdock-infra lab password staff)",
                super::platform::STAFF_EMAIL,
            );
            println!(
                "    demo tenant {}: owner {}  (password: pressdock-infra lab password demo)",
                p.demo_tenant, p.demo_email
            );
            if !p.demo_site.is_empty() {
                println!(
                    "    demo site: {}  (curl --cacert {} --resolve {}:{}:127.0.0.1 https://{}:{}/)",
                    p.demo_site,
                    super::acme::roots(lab).display(),
                    super::platform::DEMO_DOMAIN,
                    ports::EDGE_TLS,
                    super::platform::DEMO_DOMAIN,
                    ports::EDGE_TLS
                );
            }
        }
        None => println!("  platform: not started (see the message above)"),
    }
    println!("  state: {STATE}  (lab status | lab down [--keep-data])");
}

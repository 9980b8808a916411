//! The data tier as real servers on the bridge address: Galera (3 nodes, or 1) behind an
//! HAProxy writer router, Redis master + replica with three Sentinels, GlusterFS volume
//! `sites` mounted on every node (TLS only), and s3s-fs as the S3 server (signed requests only).
use super::sh::{self, cmd, progress, run, try_out, wait_for};
use super::{GLUSTER_HOST, HOST_IP, Lab, Node, ports};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DATA_CG: &str = "pdlab-data";

// ---------------------------------------------------------------- Galera

pub fn galera_dir(lab: &Lab, n: u8) -> PathBuf {
    lab.path(&format!("galera/g{n}"))
}
pub fn galera_sock(lab: &Lab, n: u8) -> PathBuf {
    galera_dir(lab, n).join("mysqld.sock")
}
pub fn galera_port(n: u8) -> u16 {
    ports::GALERA_SQL + u16::from(n)
}

/// Runs SQL as root over a node's unix socket; returns tab-separated rows.
pub fn sql_local(lab: &Lab, n: u8, sql: &str) -> Result<String> {
    run(&mut cmd(
        "mariadb",
        [
            "--no-defaults",
            "-S",
            &galera_sock(lab, n).to_string_lossy(),
            "-u",
            "root",
            "-N",
            "-B",
            "-e",
            sql,
        ],
    ))
}

/// `wsrep_local_state_comment` and `wsrep_cluster_status` of a node, if it answers.
pub fn galera_state(lab: &Lab, n: u8) -> Option<(String, String)> {
    let out = sql_local(
        lab,
        n,
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME \
         IN ('wsrep_local_state_comment','wsrep_cluster_status') ORDER BY VARIABLE_NAME",
    )
    .ok()?;
    let mut it = out.lines();
    let cluster = it.next()?.trim().to_owned();
    let local = it.next()?.trim().to_owned();
    Some((local, cluster))
}

fn galera_cnf(lab: &Lab, n: u8) -> String {
    let total = lab.topo.galera_nodes;
    let members: Vec<String> = (1..=total)
        .map(|i| format!("{HOST_IP}:{}", ports::GALERA_GCOMM + u16::from(i)))
        .collect();
    let dir = galera_dir(lab, n);
    format!(
        "[mariadbd]\nuser=mysql\nport={port}\nbind-address={HOST_IP}\n\
         datadir={dir}/data\nsocket={dir}/mysqld.sock\npid-file={dir}/mysqld.pid\n\
         log-error={dir}/error.log\nskip-name-resolve\nmax_connections=400\n\
         innodb_buffer_pool_size=64M\ninnodb_log_file_size=32M\nperformance_schema=OFF\n\
         binlog_format=ROW\ninnodb_autoinc_lock_mode=2\ndefault_storage_engine=InnoDB\n\
         wsrep_on=ON\nwsrep_provider=/usr/lib/galera/libgalera_smm.so\n\
         wsrep_cluster_name=pressdock-lab\nwsrep_cluster_address=gcomm://{members}\n\
         wsrep_node_name=g{n}\nwsrep_node_address={HOST_IP}:{gcomm}\n\
         wsrep_sst_receive_address={HOST_IP}:{sst}\n\
         wsrep_provider_options=\"gmcast.listen_addr=tcp://{HOST_IP}:{gcomm};ist.recv_addr={HOST_IP}:{ist};gcache.size=32M;evs.suspect_timeout=PT2S;evs.keepalive_period=PT0.5S\"\n\
         wsrep_sst_method=rsync\n",
        port = galera_port(n),
        dir = dir.display(),
        members = members.join(","),
        gcomm = ports::GALERA_GCOMM + u16::from(n),
        sst = ports::GALERA_SST + u16::from(n),
        ist = ports::GALERA_IST + u16::from(n),
    )
}

fn start_galera_node(lab: &Lab, n: u8, bootstrap: bool) -> Result<()> {
    let dir = galera_dir(lab, n);
    let data = dir.join("data");
    let cnf = dir.join("my.cnf");
    sh::write_file(&cnf, &galera_cnf(lab, n))?;
    std::fs::create_dir_all(&data).context("creating galera datadir")?;
    if bootstrap && !data.join("mysql").exists() {
        run(&mut cmd(
            "chown",
            ["-R", "mysql:mysql", &dir.to_string_lossy()],
        ))?;
        run(&mut cmd(
            "mariadb-install-db",
            [
                format!("--defaults-file={}", cnf.display()),
                "--auth-root-authentication-method=normal".into(),
                "--skip-test-db".into(),
            ],
        ))
        .context("mariadb-install-db")?;
    }
    if bootstrap {
        // After a full stop every node may say it is unsafe to bootstrap; node 1 is the
        // lab's choice of survivor.
        let gs = data.join("grastate.dat");
        if let Ok(s) = std::fs::read_to_string(&gs) {
            std::fs::write(
                &gs,
                s.replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1"),
            )
            .context("marking grastate.dat safe to bootstrap")?;
        }
    }
    run(&mut cmd(
        "chown",
        ["-R", "mysql:mysql", &dir.to_string_lossy()],
    ))?;
    if bootstrap {
        return run_galera_node(lab, n, true, GALERA_BOOT_WAIT);
    }
    // A joiner's state transfer (rsync of the lab's small datadir) takes seconds. One that
    // has not finished in JOIN_WAIT is stopped, its datadir emptied, and tried once more:
    // CI once saw node 2 never reach Synced in 180 s, with no log to say why.
    let mut last = None;
    for attempt in 1..=JOIN_TRIES {
        match run_galera_node(lab, n, false, JOIN_WAIT) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < JOIN_TRIES => {
                progress(
                    "galera",
                    format!(
                        "node {n} not Synced ({e:#}); starting it again from an empty datadir\n{}",
                        log_tail(&dir.join("error.log"), 15)
                    ),
                );
                stop_joiner(lab, n)?;
                std::fs::remove_dir_all(&data).context("emptying the joiner's datadir")?;
                std::fs::create_dir_all(&data).context("creating galera datadir")?;
                run(&mut cmd(
                    "chown",
                    ["-R", "mysql:mysql", &dir.to_string_lossy()],
                ))?;
            }
            Err(e) => last = Some(e),
        }
    }
    let e = last.context("no attempt made")?;
    Err(e.context(format!(
        "the last lines of {}:\n{}",
        dir.join("error.log").display(),
        log_tail(&dir.join("error.log"), 30)
    )))
}

/// How long a bootstrapping node may take to be Synced (it has nothing to transfer).
const GALERA_BOOT_WAIT: Duration = Duration::from_secs(180);
/// How long a joiner may take to be Synced before it is started again, and how many times
/// it is started.
const JOIN_WAIT: Duration = Duration::from_secs(90);
const JOIN_TRIES: u32 = 2;

/// The last `lines` lines of a log, for an error that must say why without a shell.
pub(super) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let all: Vec<&str> = s.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({} unreadable: {e})", path.display()),
    }
}

/// Stops a joiner and the rsync daemon its state-transfer script started (a child in its
/// own session that would keep the SST port).
fn stop_joiner(lab: &Lab, n: u8) -> Result<()> {
    lab.procs
        .stop(&format!("galera-{n}"), Duration::from_secs(10))?;
    let conf = galera_dir(lab, n).join("data").join("rsync_sst.conf");
    let _ = cmd("pkill", ["-9", "-f", &conf.to_string_lossy()]).status();
    Ok(())
}

fn run_galera_node(lab: &Lab, n: u8, bootstrap: bool, within: Duration) -> Result<()> {
    let dir = galera_dir(lab, n);
    let cnf = dir.join("my.cnf");
    let mut args = vec![format!("--defaults-file={}", cnf.display())];
    if bootstrap {
        args.push("--wsrep-new-cluster".into());
    }
    lab.procs.spawn(
        &format!("galera-{n}"),
        DATA_CG,
        &format!("g{n}/my.cnf"),
        &lab.path(&format!("logs/galera-{n}.log")),
        "mariadbd",
        &args,
    )?;
    wait_for(
        &format!(
            "Galera node {n} to be Synced (log: {}/error.log)",
            dir.display()
        ),
        within,
        Duration::from_millis(500),
        || {
            if lab.procs.alive(&format!("galera-{n}")).is_none() {
                return Some(Err(anyhow::anyhow!(
                    "Galera node {n} exited; see {}/error.log",
                    dir.display()
                )));
            }
            match galera_state(lab, n) {
                Some((l, c)) if l == "Synced" && c == "Primary" => Some(Ok(())),
                _ => None,
            }
        },
    )??;
    Ok(())
}

/// Starts missing Galera nodes: bootstraps node 1 when none runs, joins the others.
pub fn ensure_galera(lab: &Lab) -> Result<()> {
    let total = lab.topo.galera_nodes;
    let alive: Vec<u8> = (1..=total)
        .filter(|n| lab.procs.alive(&format!("galera-{n}")).is_some())
        .collect();
    if alive.is_empty() {
        progress("galera", "bootstrapping node 1");
        start_galera_node(lab, 1, true)?;
    }
    for n in 1..=total {
        if lab.procs.alive(&format!("galera-{n}")).is_none() {
            progress("galera", format!("starting node {n} (state transfer)"));
            start_galera_node(lab, n, false)?;
        }
    }
    // Users (replicated by Galera): an admin for the platform's drivers, a check user for
    // the router, the platform's own database and user. Idempotent statements.
    let s = &lab.secrets;
    let live = (1..=total)
        .find(|n| galera_state(lab, *n).is_some_and(|(l, _)| l == "Synced"))
        .context("no Synced Galera node to configure")?;
    sql_local(
        lab,
        live,
        &format!(
            "CREATE USER IF NOT EXISTS 'pdadmin'@'%' IDENTIFIED BY '{a}'; \
             ALTER USER 'pdadmin'@'%' IDENTIFIED BY '{a}'; \
             GRANT ALL PRIVILEGES ON *.* TO 'pdadmin'@'%' WITH GRANT OPTION; \
             CREATE USER IF NOT EXISTS 'pdcheck'@'%' IDENTIFIED BY '{c}'; \
             ALTER USER 'pdcheck'@'%' IDENTIFIED BY '{c}'; \
             CREATE DATABASE IF NOT EXISTS pressdock CHARACTER SET utf8mb4; \
             CREATE USER IF NOT EXISTS 'pressdock'@'%' IDENTIFIED BY '{p}'; \
             ALTER USER 'pressdock'@'%' IDENTIFIED BY '{p}'; \
             GRANT ALL PRIVILEGES ON pressdock.* TO 'pressdock'@'%';",
            a = s.galera_admin,
            c = s.galera_check,
            p = s.platform_db
        ),
    )
    .context("creating Galera users")?;
    Ok(())
}

// ---------------------------------------------------------------- HAProxy

/// HAProxy: the Galera writer router (one active server, the others `backup`) whose
/// external check admits only a node that is Synced in a Primary component, and the
/// loopback entry to the edge (Traefik `web` on the manager nodes).
pub fn ensure_haproxy(lab: &Lab, managers: &[Node]) -> Result<()> {
    let dir = lab.path("haproxy");
    let check = dir.join("galera-check.sh");
    sh::write_file(
        &check,
        &format!(
            "#!/bin/sh\n# HAProxy external check: $3 = server address, $4 = port. Passes only\n\
             # a node that is Synced and in the Primary component.\n\
             out=$(/usr/bin/mariadb --no-defaults --connect-timeout=2 -h \"$3\" -P \"$4\" -u pdcheck \
             -p'{pw}' -N -B -e \"SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
             WHERE VARIABLE_NAME IN ('wsrep_cluster_status','wsrep_local_state_comment') \
             ORDER BY VARIABLE_NAME\" 2>/dev/null) || exit 1\n\
             [ \"$(echo $out)\" = \"Primary Synced\" ]\n",
            pw = lab.secrets.galera_check
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&check, std::fs::Permissions::from_mode(0o700))
        .context("chmod galera-check.sh")?;
    let mut servers = String::new();
    for n in 1..=lab.topo.galera_nodes {
        servers.push_str(&format!(
            "    server g{n} {HOST_IP}:{} check{}\n",
            galera_port(n),
            if n == 1 { "" } else { " backup" }
        ));
    }
    // Two Traefik replicas per manager (`traefik`, `traefik-b`): plain HTTP and HTTPS
    // (TLS passed through: Traefik terminates it with the platform's certificates).
    let mut edge = String::new();
    let mut edge_tls = String::new();
    for m in managers {
        for (suffix, web, websecure) in [
            ("", ports::NODE_WEB, ports::NODE_WEBSECURE),
            ("b", ports::NODE_WEB_B, ports::NODE_WEBSECURE_B),
        ] {
            edge.push_str(&format!(
                "    server {}{suffix} {}:{web} check inter 2s\n",
                m.name, m.ip
            ));
            edge_tls.push_str(&format!(
                "    server {}{suffix} {}:{websecure} check inter 2s\n",
                m.name, m.ip
            ));
        }
    }
    let cfg = format!(
        "# Generated by pressdock-infra lab up.\n\
         global\n    external-check\n    insecure-fork-wanted\n    maxconn 4000\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 1h\n    timeout server 1h\n\
         \n# Galera writer: one node takes writes; backups only when it fails its check.\n\
         listen galera-writer\n    bind {HOST_IP}:{router}\n    option external-check\n\
         \x20   external-check path \"/usr/bin:/bin\"\n    external-check command {check}\n\
         \x20   default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions\n{servers}\n\
         listen edge-web\n    bind 127.0.0.1:{edge_port}\n    balance roundrobin\n{edge}\n\
         listen edge-websecure\n    bind 127.0.0.1:{edge_tls_port}\n    balance roundrobin\n{edge_tls}\n\
         listen stats\n    mode http\n    bind 127.0.0.1:{stats}\n    stats enable\n    stats uri /\n",
        router = ports::ROUTER,
        check = check.display(),
        edge_port = ports::EDGE,
        edge_tls_port = ports::EDGE_TLS,
        stats = ports::HAPROXY_STATS,
    );
    let path = dir.join("haproxy.cfg");
    let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(cfg.as_str());
    sh::write_file(&path, &cfg)?;
    run(&mut cmd(
        "haproxy",
        ["-c", "-q", "-f", &path.to_string_lossy()],
    ))
    .context("checking haproxy.cfg")?;
    if lab.procs.alive("haproxy").is_some() {
        if !changed {
            return Ok(());
        }
        lab.procs.stop("haproxy", Duration::from_secs(3))?;
    }
    lab.procs.spawn(
        "haproxy",
        DATA_CG,
        "haproxy.cfg",
        &lab.path("logs/haproxy.log"),
        "haproxy",
        &[
            "-db".into(),
            "-f".into(),
            path.to_string_lossy().into_owned(),
        ],
    )?;
    wait_for(
        "HAProxy to listen",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || std::net::TcpStream::connect((HOST_IP, ports::ROUTER)).ok(),
    )?;
    Ok(())
}

/// Router server states from HAProxy's stats CSV: `(server, status)`.
pub fn router_servers() -> Vec<(String, String)> {
    let Ok(csv) = super::http::get(
        &format!("127.0.0.1:{}", ports::HAPROXY_STATS),
        "/;csv",
        "127.0.0.1",
    ) else {
        return vec![];
    };
    csv.body
        .lines()
        .filter(|l| l.starts_with("galera-writer,g"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            Some((f.get(1)?.to_string(), f.get(17)?.to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------- Redis + Sentinel

pub fn redis_port(n: u8) -> u16 {
    ports::REDIS + u16::from(n)
}
pub fn sentinel_port(n: u8) -> u16 {
    ports::SENTINEL + u16::from(n)
}

/// `redis-cli` against a lab Redis node as the admin user.
pub fn redis_cli(lab: &Lab, port: u16, args: &[&str]) -> Result<String> {
    let mut c = cmd(
        "redis-cli",
        [
            "-h",
            HOST_IP,
            "-p",
            &port.to_string(),
            "--user",
            "admin",
            "--no-auth-warning",
        ],
    );
    c.env("REDISCLI_AUTH", &lab.secrets.redis_admin).args(args);
    run(&mut c)
}

/// `redis-cli` against a lab Sentinel as its `admin` user (the same password as the data
/// nodes' admin): a Sentinel's `default` user is off, since a site's code can reach it.
pub fn sentinel_cli(password: &str, port: u16, args: &[&str]) -> Result<String> {
    let mut c = cmd(
        "redis-cli",
        [
            "-h",
            HOST_IP,
            "-p",
            &port.to_string(),
            "--user",
            "admin",
            "--no-auth-warning",
        ],
    );
    c.env("REDISCLI_AUTH", password).args(args);
    run(&mut c)
}

/// `redis-cli` against a lab Sentinel without credentials (to converge a Sentinel of an
/// earlier lab that still has an open `default` user).
fn sentinel_cli_anonymous(port: u16, args: &[&str]) -> Result<String> {
    run(cmd("redis-cli", ["-h", HOST_IP, "-p", &port.to_string()]).args(args))
}

/// The Sentinel's own users: `admin` (the platform, the lab tools and the Sentinels
/// among themselves) and `default` off. Sites get their own discovery-only users from
/// the platform's Redis driver.
fn sentinel_users_conf(pw: &str) -> String {
    format!(
        "user default off\nuser admin on >{pw} +@all\n\
         sentinel sentinel-user admin\nsentinel sentinel-pass {pw}\n"
    )
}

/// Closes a running Sentinel of an earlier lab that still answers anonymously: the admin
/// user and the Sentinels' own credentials first, then `default` off, then saved.
fn secure_sentinel(pw: &str, port: u16) -> Result<()> {
    if sentinel_cli(pw, port, &["PING"]).is_ok_and(|o| o.contains("PONG")) {
        return Ok(());
    }
    for args in [
        &["ACL", "SETUSER", "admin", "on", &format!(">{pw}"), "+@all"][..],
        &["SENTINEL", "CONFIG", "SET", "sentinel-user", "admin"],
        &["SENTINEL", "CONFIG", "SET", "sentinel-pass", pw],
        &["ACL", "SETUSER", "default", "off"],
    ] {
        let out = sentinel_cli_anonymous(port, args)?;
        if !out.contains("OK") {
            return Err(anyhow::anyhow!(
                "sentinel {port}: {} answered {}",
                args[..2].join(" "),
                out.trim()
            ));
        }
    }
    sentinel_cli(pw, port, &["SENTINEL", "FLUSHCONFIG"])?;
    Ok(())
}

/// The master as the sentinels see it (`host:port`), if any sentinel answers.
pub fn sentinel_master(password: &str) -> Option<String> {
    (1..=3).find_map(|i| {
        let out = sentinel_cli(
            password,
            sentinel_port(i),
            &["SENTINEL", "get-master-addr-by-name", "pressdock"],
        )
        .ok()?;
        let mut it = out.lines();
        Some(format!("{}:{}", it.next()?.trim(), it.next()?.trim()))
    })
}

pub fn ensure_redis(lab: &Lab) -> Result<()> {
    let pw = &lab.secrets.redis_admin;
    let master_now = sentinel_master(pw);
    for n in 1..=2u8 {
        let name = format!("redis-{n}");
        if lab.procs.alive(&name).is_some() {
            continue;
        }
        let dir = lab.path(&format!("redis/r{n}"));
        std::fs::create_dir_all(&dir).context("creating redis dir")?;
        let acl = dir.join("users.acl");
        if !acl.exists() {
            sh::write_file(
                &acl,
                &format!("user default off\nuser admin on >{pw} ~* &* +@all\n"),
            )?;
        }
        // A node that comes back follows the current master (a restarted old master would
        // otherwise serve as a standalone master until Sentinel demotes it).
        let me = format!("{HOST_IP}:{}", redis_port(n));
        let replicaof = match &master_now {
            Some(m) if *m != me => Some(m.replace(':', " ")),
            Some(_) => None,
            None if n == 1 => None,
            None => Some(format!("{HOST_IP} {}", redis_port(1))),
        };
        let conf = format!(
            "bind {HOST_IP}\nport {port}\nprotected-mode no\ndaemonize no\ndir {dir}\n\
             aclfile {acl}\nsave \"\"\nappendonly no\nmasteruser admin\nmasterauth {pw}\n{repl}",
            port = redis_port(n),
            dir = dir.display(),
            acl = acl.display(),
            repl = replicaof
                .map(|r| format!("replicaof {r}\n"))
                .unwrap_or_default()
        );
        let cpath = dir.join("redis.conf");
        sh::write_file(&cpath, &conf)?;
        lab.procs.spawn(
            &name,
            DATA_CG,
            &format!("{}", redis_port(n)),
            &lab.path(&format!("logs/{name}.log")),
            "redis-server",
            &[cpath.to_string_lossy().into_owned()],
        )?;
        wait_for(
            &format!("Redis {n}"),
            Duration::from_secs(15),
            Duration::from_millis(100),
            || redis_cli(lab, redis_port(n), &["PING"]).ok(),
        )?;
    }
    for n in 1..=3u8 {
        let name = format!("sentinel-{n}");
        if lab.procs.alive(&name).is_some() {
            continue;
        }
        let dir = lab.path(&format!("redis/s{n}"));
        let cpath = dir.join("sentinel.conf");
        // Sentinel rewrites its file with what it learnt; keep it across restarts.
        if !cpath.exists() {
            let (mh, mp) = master_now
                .as_deref()
                .and_then(|m| m.split_once(':'))
                .map(|(h, p)| (h.to_owned(), p.to_owned()))
                .unwrap_or((HOST_IP.to_owned(), redis_port(1).to_string()));
            sh::write_file(
                &cpath,
                &format!(
                    "bind {HOST_IP}\nport {port}\ndaemonize no\ndir {dir}\n\
                     sentinel resolve-hostnames no\n\
                     sentinel monitor pressdock {mh} {mp} 2\n\
                     sentinel auth-user pressdock admin\nsentinel auth-pass pressdock {pw}\n\
                     sentinel down-after-milliseconds pressdock 1000\n\
                     sentinel failover-timeout pressdock 5000\n\
                     sentinel parallel-syncs pressdock 1\n{users}",
                    port = sentinel_port(n),
                    dir = dir.display(),
                    users = sentinel_users_conf(pw),
                ),
            )?;
        } else if !std::fs::read_to_string(&cpath)?.contains("user default off") {
            // A file from an earlier lab: Sentinel keeps these lines when it rewrites it.
            let old = std::fs::read_to_string(&cpath)?;
            sh::write_file(&cpath, &format!("{old}{}", sentinel_users_conf(pw)))?;
        }
        lab.procs.spawn(
            &name,
            DATA_CG,
            &format!("{}", sentinel_port(n)),
            &lab.path(&format!("logs/{name}.log")),
            "redis-server",
            &[cpath.to_string_lossy().into_owned(), "--sentinel".into()],
        )?;
    }
    for n in 1..=3u8 {
        wait_for(
            &format!("Sentinel {n}"),
            Duration::from_secs(15),
            Duration::from_millis(100),
            || {
                sentinel_cli_anonymous(sentinel_port(n), &["PING"])
                    .ok()
                    .filter(|o| !o.is_empty())
            },
        )?;
        secure_sentinel(pw, sentinel_port(n))?;
    }
    // Ready when every sentinel knows the master, a replica and the other sentinels.
    wait_for(
        "every Sentinel to see the master, a replica and 2 other sentinels",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            (1..=3u8)
                .all(|i| {
                    let Ok(out) =
                        sentinel_cli(pw, sentinel_port(i), &["SENTINEL", "master", "pressdock"])
                    else {
                        return false;
                    };
                    let kv: Vec<&str> = out.lines().collect();
                    let get = |k: &str| {
                        kv.iter()
                            .position(|l| *l == k)
                            .and_then(|p| kv.get(p + 1))
                            .and_then(|v| v.parse::<u32>().ok())
                            .unwrap_or(0)
                    };
                    get("num-slaves") >= 1 && get("num-other-sentinels") >= 2
                })
                .then_some(())
        },
    )?;
    Ok(())
}

// ---------------------------------------------------------------- GlusterFS

/// The gluster CLI against this host's glusterd. glusterd runs one transaction at a time
/// and refuses others ("Another transaction is in progress", "Locking failed"): those are
/// retried for up to 15 s, since the platform's drivers use the same glusterd.
pub fn gluster(args: &[&str]) -> Result<String> {
    let mut attempt = 0;
    loop {
        match run(cmd("gluster", ["--mode=script"]).args(args)) {
            Err(e)
                if attempt < 15
                    && ["Another transaction", "Locking failed", "locked"]
                        .iter()
                        .any(|m| format!("{e:#}").contains(m)) =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            r => return r,
        }
    }
}

fn glusterd_workdir(lab: &Lab) -> PathBuf {
    lab.path("gluster/glusterd")
}

pub fn ensure_glusterd(lab: &Lab) -> Result<()> {
    if lab.procs.alive("glusterd").is_some() && gluster(&["volume", "list"]).is_ok() {
        return Ok(());
    }
    let wd = glusterd_workdir(lab);
    std::fs::create_dir_all(&wd).context("creating glusterd workdir")?;
    let vol = lab.path("gluster/glusterd.vol");
    sh::write_file(
        &vol,
        &format!(
            "volume management\n    type mgmt/glusterd\n    option working-directory {wd}\n\
             \x20   option transport-type socket\n    option transport.socket.keepalive-time 10\n\
             \x20   option transport.socket.keepalive-interval 2\n\
             \x20   option transport.socket.read-fail-log off\n\
             \x20   option transport.socket.listen-port {port}\n\
             \x20   option transport.socket.bind-address {HOST_IP}\n    option ping-timeout 0\n\
             \x20   option event-threads 1\n    option base-port 49152\n    option max-port 49170\n\
             end-volume\n",
            wd = wd.display(),
            port = ports::GLUSTERD,
        ),
    )?;
    lab.procs.spawn(
        "glusterd",
        DATA_CG,
        "glusterd.vol",
        &lab.path("logs/glusterd.out"),
        "glusterd",
        &[
            "-N".into(),
            "-f".into(),
            vol.to_string_lossy().into_owned(),
            "--log-file".into(),
            lab.path("logs/glusterd.log").to_string_lossy().into_owned(),
        ],
    )?;
    wait_for(
        "glusterd (log: /var/lib/pressdock-lab/logs/glusterd.log)",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || gluster(&["volume", "list"]).ok(),
    )?;
    Ok(())
}

/// Volume `sites`, replica 2, started, with quotas enforced immediately, for the storage
/// clients' certificate and addresses only (see `gluster_tls`).
pub fn ensure_volume(lab: &Lab) -> Result<()> {
    let info = gluster(&["volume", "info", "sites"]).ok();
    if info.is_none() {
        let b1 = lab.path("gluster/b1");
        let b2 = lab.path("gluster/b2");
        for b in [&b1, &b2] {
            std::fs::create_dir_all(b).context("creating brick dir")?;
        }
        gluster(&[
            "volume",
            "create",
            "sites",
            "replica",
            "2",
            &format!("{GLUSTER_HOST}:{}", b1.display()),
            &format!("{GLUSTER_HOST}:{}", b2.display()),
            "force",
        ])
        .context("creating gluster volume sites")?;
    }
    // TLS and the clients' addresses before the bricks start (a change restarts them).
    super::gluster_tls::ensure_volume_options(lab)?;
    let info = gluster(&["volume", "info", "sites"])?;
    if !info.contains("Status: Started") {
        gluster(&["volume", "start", "sites", "force"]).context("starting volume sites")?;
    } else {
        // Bricks of a volume that glusterd knew before a restart: make sure they run.
        let _ = gluster(&["volume", "start", "sites", "force"]);
    }
    if !info.contains("features.quota: on") {
        gluster(&["volume", "quota", "sites", "enable"]).context("enabling quota")?;
    }
    for (k, v) in [
        ("features.hard-timeout", "0"),
        ("features.soft-timeout", "0"),
        ("features.quota-deem-statfs", "on"),
    ] {
        if !info.contains(&format!("{k}: {v}")) {
            gluster(&["volume", "set", "sites", k, v]).with_context(|| format!("setting {k}"))?;
        }
    }
    Ok(())
}

/// Whether `path` is a mount point, and whether it answers (a dead FUSE mount does not).
pub fn mount_state(path: &Path) -> (bool, bool) {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(&*path.to_string_lossy()))
        })
        .unwrap_or(false);
    (mounted, mounted && std::fs::metadata(path).is_ok())
}

/// One Gluster client per node, run in the node's namespace, mounted at
/// `<state>/nodes/<host>/sites`; tasks bind-mount subfolders of it.
pub fn ensure_mount(lab: &Lab, node: &Node) -> Result<()> {
    let mnt = node.gluster_mount();
    let name = format!("gluster-mount-{}", node.host());
    let (mounted, healthy) = mount_state(&mnt);
    if healthy && lab.procs.alive(&name).is_some() {
        return Ok(());
    }
    if mounted {
        let _ = run(&mut cmd("umount", ["-l", &mnt.to_string_lossy()]));
    }
    lab.procs.stop(&name, Duration::from_secs(2))?;
    std::fs::create_dir_all(&mnt).context("creating mount point")?;
    lab.procs.spawn(
        &name,
        DATA_CG,
        &mnt.to_string_lossy(),
        &lab.path(&format!("logs/{name}.out")),
        "nsenter",
        &[
            format!("--net={}", node.netns_path()),
            "glusterfs".into(),
            "-N".into(),
            format!("--volfile-server={GLUSTER_HOST}"),
            "--volfile-id=sites".into(),
            format!(
                "--log-file={}",
                lab.path(&format!("logs/{name}.log")).display()
            ),
            mnt.to_string_lossy().into_owned(),
        ],
    )?;
    wait_for(
        &format!("Gluster mount on {}", node.host()),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (mount_state(&mnt).1).then_some(()),
    )?;
    Ok(())
}

// ---------------------------------------------------------------- S3

/// The lab's S3 server: `s3s-fs` (objects as files under `<state>/s3`), which checks every
/// request's signature (SigV4, and V2) against the one key pair it is given and refuses
/// unsigned ones. Earlier labs ran moto as `s3` on port 23400; moto accepts anything, and
/// its own `/moto-api/reset-auth` switches its optional checks off without credentials.
pub const S3_PROC: &str = "s3-signed";
pub const S3_BUCKET: &str = "backups";
pub const S3_REGION: &str = "us-east-1";

fn s3_addr() -> String {
    format!("{HOST_IP}:{}", ports::S3)
}

/// A request to the lab's S3 server signed with the platform's key (or with `creds`).
pub fn s3_request(
    creds: &super::sigv4::Credentials<'_>,
    method: &str,
    path: &str,
) -> Result<super::http::Response> {
    let addr = s3_addr();
    let headers = super::sigv4::sign(
        creds,
        method,
        &addr,
        path,
        "",
        b"",
        std::time::SystemTime::now(),
    );
    let h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    super::http::request(&addr, method, path, &addr, None, &h)
}

pub fn s3_credentials(lab: &Lab) -> super::sigv4::Credentials<'_> {
    super::sigv4::Credentials {
        access_key: &lab.secrets.s3_access_key,
        secret_key: &lab.secrets.s3_secret_key,
        region: S3_REGION,
    }
}

/// The `<Code>` of an S3 error body.
pub fn s3_error_code(body: &str) -> Option<&str> {
    let start = body.find("<Code>")? + "<Code>".len();
    let len = body[start..].find("</Code>")?;
    Some(&body[start..start + len])
}

pub fn ensure_s3(lab: &Lab) -> Result<()> {
    if lab.procs.stop("s3", Duration::from_secs(3))? {
        progress(
            "s3",
            "stopped the earlier lab's moto (it answered unsigned requests)",
        );
    }
    let creds = s3_credentials(lab);
    // A server started with other keys (secrets.toml re-created) is restarted.
    if lab.procs.alive(S3_PROC).is_some()
        && s3_request(&creds, "GET", "/").is_ok_and(|r| r.status == 403)
    {
        lab.procs.stop(S3_PROC, Duration::from_secs(3))?;
    }
    if lab.procs.alive(S3_PROC).is_none() {
        if !sh::have("s3s-fs") {
            bail!(
                "s3s-fs not found: run scripts/install-deps.sh (cargo install s3s-fs \
                 --version 0.14.1 --features binary --locked)"
            );
        }
        let root = lab.path("s3");
        std::fs::create_dir_all(&root).context("creating the S3 folder")?;
        lab.procs.spawn(
            S3_PROC,
            DATA_CG,
            "s3s-fs",
            &lab.path("logs/s3.log"),
            "s3s-fs",
            &[
                "--host".into(),
                HOST_IP.into(),
                "--port".into(),
                ports::S3.to_string(),
                "--access-key".into(),
                lab.secrets.s3_access_key.clone(),
                "--secret-key".into(),
                lab.secrets.s3_secret_key.clone(),
                root.to_string_lossy().into_owned(),
            ],
        )?;
        wait_for(
            "the S3 server (s3s-fs)",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || std::net::TcpStream::connect(s3_addr()).ok(),
        )?;
    }
    let path = format!("/{S3_BUCKET}");
    let r = s3_request(&creds, "PUT", &path)?;
    let exists = matches!(
        s3_error_code(&r.body),
        Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")
    );
    if r.status != 200 && !exists {
        bail!(
            "creating S3 bucket {S3_BUCKET}: HTTP {} {}",
            r.status,
            s3_error_code(&r.body).unwrap_or("")
        );
    }
    // The point of this server: a request without a signature is refused.
    let anon = super::http::get(&s3_addr(), &path, &s3_addr())?;
    if anon.status != 403 || s3_error_code(&anon.body) != Some("AccessDenied") {
        bail!(
            "the S3 server answered an unsigned GET {path} with HTTP {} (expected 403 \
             AccessDenied)",
            anon.status
        );
    }
    Ok(())
}

/// Listening TCP ports on the machine (for prerequisite checks).
pub fn listening_ports() -> Vec<(String, u16, String)> {
    try_out(&mut cmd("ss", ["-Hltnp"]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(3)?;
            let (addr, port) = local.rsplit_once(':')?;
            Some((
                addr.to_owned(),
                port.parse().ok()?,
                f.get(5).unwrap_or(&"").to_string(),
            ))
        })
        .collect()
}

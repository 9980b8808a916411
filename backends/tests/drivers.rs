//! The drivers against real servers: MariaDB (the machine's, 127.0.0.1:3306), and Redis +
//! Sentinel and Varnish started by each test on free loopback ports. ProxySQL is not
//! installable here: its driver runs against a stand-in of the admin interface
//! (`helpers/proxysql_admin.rs`). Gluster and the swarm are not runnable here: their pure
//! parts are unit-tested in the crate (and run against the lab, `--ignored`).

mod helpers;

use std::collections::BTreeSet;
use std::time::Duration;

use backends::config::{
    BackendsConfig, GlusterConfig, RedisConfig, VarnishConfig, VarnishInstance,
};
use backends::galera::{GaleraDriver, SiteDatabase};
use backends::gluster::{GlusterDriver, SiteStorage};
use backends::ids::Secret;
use backends::ids::{DomainName, SitePassword, SiteResourceId};
use backends::redis::{NodeRole, RedisSentinelDriver, SiteCache};
use backends::router::{
    DbRouter, PROXYSQL_ADMIN_MAX_ALLOWED_PACKET, PROXYSQL_ADMIN_WAIT_TIMEOUT_SECS,
    PROXYSQL_LIST_USERS, ProxySqlRouter, ProxySqlUserSettings, RouterUserState, mysql_native_hash,
    proxysql_admin_opts, proxysql_upsert_statements, proxysql_verify_query,
};
use backends::swarm::{SiteRuntime, SwarmDriver};
use backends::varnish::{
    EdgeCache, HostState, HostTable, VarnishCli, VarnishDriver, render_hosts_include,
};
use helpers::proxysql_admin::{ProxySqlAdmin, Received};
use mysql_async::prelude::*;

/// The value, or a panic naming the error and every cause under it.
fn ok<T, E: std::error::Error>(r: Result<T, E>) -> T {
    r.unwrap_or_else(|e| {
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        panic!("{message}")
    })
}

// ---------------------------------------------------------------- Galera / MariaDB

fn galera() -> GaleraDriver {
    ok(GaleraDriver::from_url(&helpers::mysql_admin_url()))
}

async fn site_conn(
    id: &SiteResourceId,
    pw: &SitePassword,
) -> Result<mysql_async::Conn, mysql_async::Error> {
    let (host, port) = helpers::mysql_host_port();
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(id.resource_name()))
        .pass(Some(pw.expose().to_owned()))
        .db_name(Some(id.resource_name()));
    mysql_async::Conn::new(opts).await
}

async fn admin_conn() -> mysql_async::Conn {
    ok(mysql_async::Conn::from_url(helpers::mysql_admin_url().expose()).await)
}

#[tokio::test]
async fn galera_ensure_is_idempotent_and_removal_twice_succeeds() {
    let db = galera();
    let id = SiteResourceId::generate();
    let pw = SitePassword::generate();

    // Two concurrent first runs (a saga step retried while the first is in flight).
    let (r1, r2) = tokio::join!(
        db.ensure_site_database(&id, &pw),
        db.ensure_site_database(&id, &pw)
    );
    let first = ok(r1);
    assert_eq!(ok(r2), first);
    assert!(first.is_converged(), "{first:?}");
    assert_eq!(first.password_matches, Some(true));
    let second = ok(db.ensure_site_database(&id, &pw).await);
    assert_eq!(first, second);
    assert!(ok(db.list_site_ids().await).contains(&id));

    // The site can log in and use its schema.
    let mut c = ok(site_conn(&id, &pw).await);
    ok(c.query_drop("CREATE TABLE t (x INT)").await);
    ok(c.query_drop("INSERT INTO t VALUES (1)").await);
    drop(c);

    // A new password converges; the old one stops working.
    let pw2 = SitePassword::generate();
    let st = ok(db.ensure_site_database(&id, &pw2).await);
    assert_eq!(st.password_matches, Some(true));
    assert!(
        site_conn(&id, &pw).await.is_err(),
        "old password still accepted"
    );
    let mut c = ok(site_conn(&id, &pw2).await);
    let n: Option<i64> = ok(c.query_first("SELECT COUNT(*) FROM t").await);
    assert_eq!(n, Some(1), "ensure must not touch existing data");

    // Removal ends the open session, then is a no-op the second time.
    ok(db.remove_site_database(&id).await);
    ok(db.remove_site_database(&id).await);
    let gone = ok(db.observe_site_database(&id, None).await);
    assert!(gone.is_absent(), "{gone:?}");
    assert!(
        c.query_drop("SELECT 1").await.is_err(),
        "session survived DROP USER"
    );
    assert!(!ok(db.list_site_ids().await).contains(&id));
    ok(db.disconnect().await);
}

#[tokio::test]
async fn galera_widened_grants_are_detected_and_converged() {
    let db = galera();
    let id = SiteResourceId::generate();
    let other = SiteResourceId::generate();
    let pw = SitePassword::generate();
    ok(db.ensure_site_database(&id, &pw).await);

    let mut admin = admin_conn().await;
    let acct = format!("'{}'@'%'", id.resource_name());
    ok(admin
        .query_drop(format!("GRANT SELECT, PROCESS ON *.* TO {acct}"))
        .await);
    ok(admin
        .query_drop(format!(
            "GRANT ALL ON `{}`.* TO {acct} WITH GRANT OPTION",
            id.resource_name()
        ))
        .await);
    ok(admin
        .query_drop(format!(
            "GRANT SELECT ON `{}`.* TO {acct}",
            other.resource_name()
        ))
        .await);

    let drifted = ok(db.observe_site_database(&id, Some(&pw)).await);
    assert!(!drifted.is_converged());
    assert!(drifted.extra_grants.len() >= 2, "{drifted:?}");

    let fixed = ok(db.ensure_site_database(&id, &pw).await);
    assert!(fixed.is_converged(), "{fixed:?}");
    let grants: Vec<String> = ok(admin.query(format!("SHOW GRANTS FOR {acct}")).await);
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert!(
        grants
            .iter()
            .all(|g| !g.contains("GRANT OPTION") && !g.contains(&other.resource_name()))
    );

    ok(db.remove_site_database(&id).await);
    ok(db.disconnect().await);
}

#[tokio::test]
async fn galera_site_a_cannot_read_site_b() {
    let db = galera();
    let (a, b) = (SiteResourceId::generate(), SiteResourceId::generate());
    let (pa, pb) = (SitePassword::generate(), SitePassword::generate());
    ok(db.ensure_site_database(&a, &pa).await);
    ok(db.ensure_site_database(&b, &pb).await);

    let mut cb = ok(site_conn(&b, &pb).await);
    ok(cb.query_drop("CREATE TABLE secrets (v TEXT)").await);
    ok(cb.query_drop("INSERT INTO secrets VALUES ('b-only')").await);

    let mut ca = ok(site_conn(&a, &pa).await);
    let read = ca
        .query_first::<String, _>(format!("SELECT v FROM `{}`.secrets", b.resource_name()))
        .await;
    let err = read.expect_err("A read B's table").to_string();
    assert!(err.contains("denied"), "{err}");
    assert!(
        ca.query_drop(format!("USE `{}`", b.resource_name()))
            .await
            .is_err()
    );
    let dbs: Vec<String> = ok(ca.query("SHOW DATABASES").await);
    assert!(!dbs.contains(&b.resource_name()), "{dbs:?}");
    assert!(dbs.contains(&a.resource_name()));
    // `_` is a wildcard in database-level grants: the escaped grant keeps A from
    // creating look-alike databases.
    let lookalike = format!("wpX{a}");
    let created = ca
        .query_drop(format!("CREATE DATABASE `{lookalike}`"))
        .await;
    assert!(created.is_err(), "A created {lookalike}");
    // And B cannot log in with A's password.
    assert!(site_conn(&b, &pa).await.is_err());
    drop((ca, cb));

    ok(db.remove_site_database(&a).await);
    ok(db.remove_site_database(&b).await);
    ok(db.disconnect().await);
}

#[tokio::test]
async fn proxysql_hash_equals_server_password_hash() {
    let pw = SitePassword::generate();
    let mut admin = admin_conn().await;
    let server: Option<String> = ok(admin.exec_first("SELECT PASSWORD(?)", (pw.expose(),)).await);
    assert_eq!(server, Some(mysql_native_hash(&pw)));
}

// ---------------------------------------------------------------- ProxySQL admin (stand-in)

fn proxysql_settings() -> ProxySqlUserSettings {
    ProxySqlUserSettings {
        default_hostgroup: 10,
        max_connections: 50,
    }
}

fn proxysql_router(admins: &[&ProxySqlAdmin]) -> ProxySqlRouter {
    let urls: Vec<Secret> = admins.iter().map(|a| Secret::new(a.url())).collect();
    ok(ProxySqlRouter::new(&urls, proxysql_settings()))
}

fn converged(admin: &ProxySqlAdmin) -> RouterUserState {
    RouterUserState {
        endpoint: admin.label(),
        converged: true,
        runtime_rows: 2,
        reachable: true,
        error: None,
    }
}

/// The statements one `ensure` sends to one endpoint: nothing else (no session-setup
/// query on connect, no reset when the connection goes back to the pool).
fn ensure_statements(id: &SiteResourceId, pw: &SitePassword) -> Vec<String> {
    let mut s = proxysql_upsert_statements(id, pw, proxysql_settings());
    s.push(proxysql_verify_query(id));
    s
}

#[tokio::test]
async fn proxysql_ensure_observe_list_remove_speak_the_admin_dialect() {
    let admin = ProxySqlAdmin::start().await;
    let router = proxysql_router(&[&admin]);
    let id = SiteResourceId::generate();
    let pw = SitePassword::generate();
    let user = id.resource_name();
    let hash = mysql_native_hash(&pw);

    assert_eq!(
        ok(router.ensure_router_user(&id, &pw).await),
        vec![converged(&admin)]
    );
    assert_eq!(admin.queries(), ensure_statements(&id, &pw));
    assert_eq!(admin.refused(), vec![]);
    // Memory and disk hold one row with the hash (never the clear text); runtime shows
    // it as a frontend and a backend row.
    for layer in ["memory", "disk"] {
        let rows = admin.rows(layer, &user);
        assert_eq!(rows.len(), 1, "{layer}: {rows:?}");
        let r = &rows[0];
        assert_eq!(ProxySqlAdmin::value(r, "password"), Some(hash.as_str()));
        assert_eq!(ProxySqlAdmin::value(r, "default_hostgroup"), Some("10"));
        assert_eq!(
            ProxySqlAdmin::value(r, "default_schema"),
            Some(user.as_str())
        );
        assert_eq!(ProxySqlAdmin::value(r, "max_connections"), Some("50"));
        assert_eq!(ProxySqlAdmin::value(r, "frontend"), Some("1"));
        assert_eq!(ProxySqlAdmin::value(r, "backend"), Some("1"));
    }
    assert_eq!(admin.rows("runtime", &user).len(), 2);

    // Twice: the same state, still one row (REPLACE on the primary key), the pooled
    // session reused without a reset.
    admin.clear_log();
    assert_eq!(
        ok(router.ensure_router_user(&id, &pw).await),
        vec![converged(&admin)]
    );
    assert_eq!(admin.queries(), ensure_statements(&id, &pw));
    assert_eq!(admin.rows("memory", &user).len(), 1);
    assert_eq!(
        ok(router.observe_router_user(&id, &pw).await),
        vec![converged(&admin)]
    );

    // Drift made by hand (another password, loaded to runtime) is seen and converged.
    let (_, opts) = ok(proxysql_admin_opts(&Secret::new(admin.url())));
    let mut hand = ok(mysql_async::Conn::new(opts).await);
    ok(hand
        .query_drop(format!(
            "REPLACE INTO mysql_users (username, password, default_hostgroup) VALUES \
             ('{user}', '*0000', 10)"
        ))
        .await);
    ok(hand.query_drop("LOAD MYSQL USERS TO RUNTIME").await);
    let drifted = ok(router.observe_router_user(&id, &pw).await);
    assert!(!drifted[0].converged && drifted[0].reachable, "{drifted:?}");
    assert_eq!(
        ok(router.ensure_router_user(&id, &pw).await),
        vec![converged(&admin)]
    );

    // Listed among the site users; a foreign `wp` user that is not ours is not.
    ok(hand
        .query_drop(
            "INSERT INTO mysql_users (username, password) VALUES ('wpadmin_other', '*1111')",
        )
        .await);
    let listed = ok(router.list_site_ids().await);
    assert!(listed.contains(&id), "{listed:?}");
    assert!(listed.iter().all(|i| i.resource_name() != "wpadmin_other"));

    // Removal from every layer, twice.
    ok(router.remove_router_user(&id).await);
    ok(router.remove_router_user(&id).await);
    for layer in ["memory", "runtime", "disk"] {
        assert_eq!(
            admin.rows(layer, &user),
            Vec::<Vec<Option<String>>>::new(),
            "{layer}"
        );
    }
    let gone = ok(router.observe_router_user(&id, &pw).await);
    assert_eq!(gone.len(), 1);
    assert!(!gone[0].converged && gone[0].reachable && gone[0].runtime_rows == 0);
    assert!(!ok(router.list_site_ids().await).contains(&id));
    ok(hand.disconnect().await);
    assert_eq!(admin.refused(), vec![]);

    // Closing the pool ends each admin session with COM_QUIT.
    admin.clear_log();
    ok(router.disconnect().await);
    admin.wait_for(|r| r.command == "COM_QUIT").await;
    assert_eq!(admin.refused(), vec![]);
    let commands: BTreeSet<String> = admin
        .received()
        .into_iter()
        .map(|r| r.command.split(' ').next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(commands, BTreeSet::from(["COM_QUIT".to_owned()]));
}

#[tokio::test]
async fn proxysql_stand_in_refuses_what_the_real_admin_refused() {
    let admin = ProxySqlAdmin::start().await;

    // mysql_async's defaults: the session values are read with one multi-variable
    // SELECT, which the admin cannot parse (ProxySQL 2.7.2's answer, word for word).
    let err = mysql_async::Conn::from_url(admin.url())
        .await
        .err()
        .unwrap_or_else(|| panic!("the default connect options were accepted"));
    assert!(
        err.to_string()
            .contains(r#"ProxySQL Admin Error: near ",": syntax error"#),
        "{err}"
    );
    assert_eq!(
        admin.refused(),
        vec![Received {
            command: "COM_QUERY SELECT @@max_allowed_packet,@@wait_timeout,@@socket".into(),
            refused: Some(r#"ProxySQL Admin Error: near ",": syntax error"#.into()),
        }]
    );

    // Session values given but the pool's reset left on: the connection going back to
    // the pool sends COM_RESET_CONNECTION, refused for an admin session.
    admin.clear_log();
    let opts = mysql_async::OptsBuilder::from_opts(ok(mysql_async::Opts::from_url(&admin.url())))
        .max_allowed_packet(Some(PROXYSQL_ADMIN_MAX_ALLOWED_PACKET))
        .wait_timeout(Some(PROXYSQL_ADMIN_WAIT_TIMEOUT_SECS))
        .prefer_socket(false);
    let pool = mysql_async::Pool::new(opts);
    let mut conn = ok(pool.get_conn().await);
    let users: Vec<String> = ok(conn.query(PROXYSQL_LIST_USERS).await);
    assert_eq!(users, Vec::<String>::new());
    drop(conn);
    let reset = admin
        .wait_for(|r| r.command == "COM_RESET_CONNECTION")
        .await;
    assert_eq!(
        reset.refused.as_deref(),
        Some(
            "Received unsupported 'COM_RESET_CONNECTION' for session type \
             'PROXYSQL_SESSION_ADMIN'"
        )
    );
    let _ = pool.disconnect().await;

    // The driver's options: connect and reuse send nothing but our queries; the binary
    // protocol is refused; only the first statement of a multi-statement query runs.
    admin.clear_log();
    let (label, opts) = ok(proxysql_admin_opts(&Secret::new(admin.url())));
    assert_eq!(label, admin.label());
    let pool = mysql_async::Pool::new(opts);
    for _ in 0..3 {
        let mut c = ok(pool.get_conn().await);
        ok(c.query_drop(PROXYSQL_LIST_USERS).await);
    }
    let mut c = ok(pool.get_conn().await);
    let err = c
        .exec_drop(
            "SELECT username FROM mysql_users WHERE username = ?",
            ("x",),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("a prepared statement was accepted"));
    assert!(err.to_string().contains("Command not supported"), "{err}");
    ok(c.query_drop(
        "INSERT INTO mysql_users (username, password) VALUES ('wp_a', '*1'); \
         INSERT INTO mysql_users (username, password) VALUES ('wp_b', '*2')",
    )
    .await);
    assert_eq!(admin.rows("memory", "wp_a").len(), 1);
    assert_eq!(admin.rows("memory", "wp_b").len(), 0, "the tail was run");
    let lone: Option<String> = ok(c.query_first("SELECT @@max_allowed_packet").await);
    assert_eq!(lone.as_deref(), Some("67108864"));
    drop(c);
    ok(pool.disconnect().await);
    let refused: Vec<String> = admin.refused().into_iter().map(|r| r.command).collect();
    assert_eq!(
        refused,
        vec![
            "COM_STMT_PREPARE".to_owned(),
            "COM_QUERY INSERT INTO mysql_users (username, password) VALUES ('wp_a', '*1'); \
             INSERT INTO mysql_users (username, password) VALUES ('wp_b', '*2')"
                .to_owned(),
        ]
    );
    assert!(
        admin
            .received()
            .iter()
            .all(|r| r.command != "COM_RESET_CONNECTION" && !r.command.contains("@@wait_timeout")),
        "{:?}",
        admin.received()
    );
}

#[tokio::test]
async fn proxysql_partial_change_is_reported_per_endpoint_and_converged_by_re_ensure() {
    let a = ProxySqlAdmin::start().await;
    let b = ProxySqlAdmin::start().await;
    let router = proxysql_router(&[&a, &b]);
    let id = SiteResourceId::generate();
    let pw = SitePassword::generate();
    let user = id.resource_name();

    b.stop().await;
    let err = router
        .ensure_router_user(&id, &pw)
        .await
        .err()
        .unwrap_or_else(|| panic!("ensure succeeded with an endpoint down"));
    // The first line names the endpoint that failed, why, and where it applied.
    let line = err.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.starts_with(&format!(
            "proxysql: ensure user {user}: failed on 1 of 2 endpoints: {b}: connect: ",
            b = b.label()
        )),
        "{line}"
    );
    assert!(line.contains("Connection refused"), "{line}");
    assert!(
        line.ends_with(&format!("; applied on {}", a.label())),
        "{line}"
    );
    match &err {
        backends::Error::Endpoints {
            applied, failed, ..
        } => {
            assert_eq!(applied, &vec![a.label()]);
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].endpoint, b.label());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        a.rows("runtime", &user).len(),
        2,
        "the first endpoint holds the user"
    );

    // What the `sites` reconciler sees: converged on a, b unreachable with its cause.
    let seen = ok(router.observe_router_user(&id, &pw).await);
    assert_eq!(seen[0], converged(&a));
    assert!(!seen[1].reachable && !seen[1].converged, "{seen:?}");
    assert!(
        seen[1]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("connect") && e.contains("Connection refused")),
        "{seen:?}"
    );
    let listed = router.list_site_ids().await.err().map(|e| e.to_string());
    assert!(
        listed.as_deref().is_some_and(|e| e.contains(&b.label())),
        "{listed:?}"
    );

    // b comes back without the user; the reconciler's pass (observe, then ensure where
    // anything is not converged) converges both.
    b.restart().await;
    let seen = ok(router.observe_router_user(&id, &pw).await);
    assert_eq!(seen[0], converged(&a));
    assert!(seen[1].reachable && !seen[1].converged && seen[1].runtime_rows == 0);
    assert_eq!(
        ok(router.ensure_router_user(&id, &pw).await),
        vec![converged(&a), converged(&b)]
    );
    assert_eq!(b.rows("disk", &user).len(), 1);
    assert_eq!(a.refused(), vec![]);
    assert_eq!(b.refused(), vec![]);

    // Removal with b down: gone from a, reported for b; again once b is back: gone.
    b.stop().await;
    let err = router
        .remove_router_user(&id)
        .await
        .err()
        .unwrap_or_else(|| panic!("remove succeeded with an endpoint down"));
    assert!(
        err.to_string().starts_with(&format!(
            "proxysql: remove user {user}: failed on 1 of 2 endpoints: {}",
            b.label()
        )),
        "{err}"
    );
    assert_eq!(a.rows("memory", &user).len(), 0);
    b.restart().await;
    assert_eq!(b.rows("runtime", &user).len(), 2, "restarted from disk");
    ok(router.remove_router_user(&id).await);
    for admin in [&a, &b] {
        for layer in ["memory", "runtime", "disk"] {
            assert_eq!(
                admin.rows(layer, &user).len(),
                0,
                "{} {layer}",
                admin.label()
            );
        }
    }
    ok(router.disconnect().await);
}

// ---------------------------------------------------------------- Redis + Sentinel

fn redis_driver(lab: &helpers::RedisLab, unlink_batch: usize) -> RedisSentinelDriver {
    ok(RedisSentinelDriver::new(&RedisConfig {
        sentinels: vec![lab.sentinel.clone()],
        master_name: lab.master_name.clone(),
        admin_user: None,
        admin_password: None,
        sentinel_user: Some(helpers::SENTINEL_ADMIN.into()),
        sentinel_password: Some(Secret::new(helpers::SENTINEL_PASSWORD)),
        unlink_batch,
    }))
}

async fn redis_as(
    node: &str,
    user: &str,
    pw: &str,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{user}:{pw}@{node}/"))?;
    client.get_multiplexed_async_connection().await
}

async fn wait_for_replica(driver: &RedisSentinelDriver) {
    let start = std::time::Instant::now();
    loop {
        let t = ok(driver.topology().await);
        if !t.replicas.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "sentinel never saw the replica"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn redis_acl_on_every_node_isolation_and_removal() {
    let lab = helpers::RedisLab::start();
    let driver = redis_driver(&lab, 500);
    wait_for_replica(&driver).await;
    let t = ok(driver.topology().await);
    assert_eq!(t.master, lab.master);
    assert_eq!(t.replicas, vec![lab.replica.clone()]);

    let (a, b) = (SiteResourceId::generate(), SiteResourceId::generate());
    let (pa, pb) = (SitePassword::generate(), SitePassword::generate());
    let st = ok(driver.ensure_site_cache(&a, &pa).await);
    assert!(st.is_converged(), "{st:?}");
    // Master, replica and the Sentinel (where the user may only find the master).
    assert_eq!(st.nodes.len(), 3);
    assert!(st.nodes.iter().all(|n| n.saved == Some(true)));
    assert_eq!(
        st.nodes
            .iter()
            .filter(|n| n.role == NodeRole::Sentinel)
            .count(),
        1
    );
    let again = ok(driver.ensure_site_cache(&a, &pa).await);
    assert_eq!(st, again);
    ok(driver.ensure_site_cache(&b, &pb).await);

    // Persisted to each node's aclfile, as a hash only.
    for node in ["master", "replica"] {
        let acl = ok(std::fs::read_to_string(lab.acl_file(node)));
        assert!(
            acl.contains(&format!("user {} on", a.resource_name())),
            "{node}: {acl}"
        );
        assert!(
            !acl.contains(pa.expose()),
            "clear-text password in the aclfile"
        );
    }

    // A on the master: own keys yes; B's keys, key listing and counts no.
    let mut ca = ok(redis_as(&lab.master, &a.resource_name(), pa.expose()).await);
    let mut cb = ok(redis_as(&lab.master, &b.resource_name(), pb.expose()).await);
    let _: () = ok(redis::cmd("SET")
        .arg(format!("wp_{b}:secret"))
        .arg("b")
        .query_async(&mut cb)
        .await);
    let _: () = ok(redis::cmd("SET")
        .arg(format!("wp_{a}:k"))
        .arg("a")
        .query_async(&mut ca)
        .await);
    let who: String = ok(redis::cmd("ACL").arg("WHOAMI").query_async(&mut ca).await);
    assert_eq!(who, a.resource_name());
    // What the object-cache drop-in sends still works on its own keys.
    let _: () = ok(redis::cmd("SETEX")
        .arg(format!("wp_{a}:t"))
        .arg(60)
        .arg("v")
        .query_async(&mut ca)
        .await);
    let n: i64 = ok(redis::cmd("INCR")
        .arg(format!("wp_{a}:__version"))
        .query_async(&mut ca)
        .await);
    assert_eq!(n, 1);
    let gone: i64 = ok(redis::cmd("DEL")
        .arg(format!("wp_{a}:t"))
        .arg(format!("wp_{a}:__version"))
        .query_async(&mut ca)
        .await);
    assert_eq!(gone, 2);
    let pong: String = ok(redis::cmd("PING").query_async(&mut ca).await);
    assert_eq!(pong, "PONG");

    // Sentinel (issue 11): nothing without a password; the site's own user finds the
    // master and can neither reconfigure failover nor read Sentinel's state.
    let mut anon = ok(redis::Client::open(format!("redis://{}/", lab.sentinel)))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let r: redis::RedisResult<redis::Value> = redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(&lab.master_name)
        .query_async(&mut anon)
        .await;
    let e = r.expect_err("an anonymous Sentinel client");
    assert!(e.to_string().contains("NOAUTH"), "{e}");
    let mut sa = ok(redis_as(&lab.sentinel, &a.resource_name(), pa.expose()).await);
    let (mh, mport): (String, String) = ok(redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg(&lab.master_name)
        .query_async(&mut sa)
        .await);
    assert_eq!(format!("{mh}:{mport}"), lab.master);
    for (name, cmd) in [
        (
            "SENTINEL SET",
            redis::cmd("SENTINEL")
                .arg("SET")
                .arg(&lab.master_name)
                .arg("down-after-milliseconds")
                .arg(10)
                .clone(),
        ),
        (
            "SENTINEL MASTERS",
            redis::cmd("SENTINEL").arg("MASTERS").clone(),
        ),
        (
            "SENTINEL REMOVE",
            redis::cmd("SENTINEL")
                .arg("REMOVE")
                .arg(&lab.master_name)
                .clone(),
        ),
        ("ACL LIST", redis::cmd("ACL").arg("LIST").clone()),
        ("INFO", redis::cmd("INFO").clone()),
    ] {
        let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut sa).await;
        let e = r.expect_err(name);
        assert!(e.to_string().contains("NOPERM"), "sentinel {name}: {e}");
    }
    // B's password is not A's user on the Sentinel either.
    assert!(
        redis_as(&lab.sentinel, &a.resource_name(), pb.expose())
            .await
            .is_err()
    );
    for (name, cmd) in [
        (
            "GET",
            redis::cmd("GET").arg(format!("wp_{b}:secret")).clone(),
        ),
        (
            "SET",
            redis::cmd("SET").arg(format!("wp_{b}:x")).arg("1").clone(),
        ),
        ("KEYS", redis::cmd("KEYS").arg("*").clone()),
        ("SCAN", redis::cmd("SCAN").arg(0).clone()),
        ("DBSIZE", redis::cmd("DBSIZE").clone()),
        ("RANDOMKEY", redis::cmd("RANDOMKEY").clone()),
        ("FLUSHALL", redis::cmd("FLUSHALL").clone()),
        ("ACL LIST", redis::cmd("ACL").arg("LIST").clone()),
        // Server-wide effects or other tenants' names (issue 11): tracking broadcasts
        // invalidations of every key, scripts and functions are shared, memory and
        // pub/sub introspection cover the whole server, other databases hide keys from
        // removal.
        (
            "CLIENT TRACKING",
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("on")
                .arg("BCAST")
                .clone(),
        ),
        ("CLIENT LIST", redis::cmd("CLIENT").arg("LIST").clone()),
        ("SCRIPT FLUSH", redis::cmd("SCRIPT").arg("FLUSH").clone()),
        ("SCRIPT KILL", redis::cmd("SCRIPT").arg("KILL").clone()),
        ("EVAL", redis::cmd("EVAL").arg("return 1").arg(0).clone()),
        (
            "FUNCTION FLUSH",
            redis::cmd("FUNCTION").arg("FLUSH").clone(),
        ),
        (
            "FUNCTION DELETE",
            redis::cmd("FUNCTION").arg("DELETE").arg("x").clone(),
        ),
        ("FUNCTION LIST", redis::cmd("FUNCTION").arg("LIST").clone()),
        ("MEMORY PURGE", redis::cmd("MEMORY").arg("PURGE").clone()),
        ("MEMORY STATS", redis::cmd("MEMORY").arg("STATS").clone()),
        (
            "PUBSUB CHANNELS",
            redis::cmd("PUBSUB").arg("CHANNELS").clone(),
        ),
        ("SELECT", redis::cmd("SELECT").arg(1).clone()),
        (
            "MOVE",
            redis::cmd("MOVE").arg(format!("wp_{a}:k")).arg(1).clone(),
        ),
        ("INFO", redis::cmd("INFO").clone()),
    ] {
        let r: redis::RedisResult<redis::Value> = cmd.query_async(&mut ca).await;
        let e = r.expect_err(name);
        assert!(
            e.to_string().contains("NOPERM") || e.to_string().contains("permission"),
            "{name}: {e}"
        );
    }

    // The ACL is on the replica too (reads work there once replicated).
    let mut ra = ok(redis_as(&lab.replica, &a.resource_name(), pa.expose()).await);
    let start = std::time::Instant::now();
    loop {
        let v: Option<String> = ok(redis::cmd("GET")
            .arg(format!("wp_{a}:k"))
            .query_async(&mut ra)
            .await);
        if v.as_deref() == Some("a") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(format!("wp_{b}:secret"))
        .query_async(&mut ra)
        .await;
    assert!(r.is_err(), "A read B's key on the replica");

    // Drift: the user deleted by hand on the replica is seen and repaired.
    let mut admin_replica = ok(redis::Client::open(format!("redis://{}/", lab.replica)))
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _: i64 = ok(redis::cmd("ACL")
        .arg("DELUSER")
        .arg(a.resource_name())
        .query_async(&mut admin_replica)
        .await);
    let drift = ok(driver.observe_site_cache(&a, Some(&pa)).await);
    assert!(!drift.is_converged());
    assert!(ok(driver.ensure_site_cache(&a, &pa).await).is_converged());

    // Removal: 1200 keys in batches of 500, B untouched, user gone on both nodes.
    let mut pipe = redis::pipe();
    for i in 0..1199 {
        pipe.cmd("SET").arg(format!("wp_{a}:n{i}")).arg(i).ignore();
    }
    let _: () = ok(pipe.query_async(&mut ca).await);
    let removed = ok(driver.remove_site_cache(&a).await);
    assert_eq!(removed.keys_deleted, 1200);
    assert_eq!(removed.nodes.len(), 3);
    assert!(
        redis_as(&lab.sentinel, &a.resource_name(), pa.expose())
            .await
            .is_err(),
        "the site's user is gone from the Sentinel"
    );
    let gone = ok(driver.observe_site_cache(&a, None).await);
    assert!(gone.is_absent(), "{gone:?}");
    assert!(
        redis_as(&lab.master, &a.resource_name(), pa.expose())
            .await
            .is_err()
    );
    let b_still: Option<String> = ok(redis::cmd("GET")
        .arg(format!("wp_{b}:secret"))
        .query_async(&mut cb)
        .await);
    assert_eq!(b_still.as_deref(), Some("b"));
    let twice = ok(driver.remove_site_cache(&a).await);
    assert_eq!(twice.keys_deleted, 0);
    assert_eq!(
        ok(driver.list_site_ids().await),
        BTreeSet::from([b.clone()])
    );
}

/// Why the ACL goes to every node: after a failover the promoted replica already has
/// the site's user; the dead old master is reported unreachable, not converged.
#[tokio::test]
async fn redis_failover_keeps_site_users_and_reports_the_dead_node() {
    let mut lab = helpers::RedisLab::start();
    let driver = redis_driver(&lab, 500);
    wait_for_replica(&driver).await;
    let (a, pa) = (SiteResourceId::generate(), SitePassword::generate());
    assert!(ok(driver.ensure_site_cache(&a, &pa).await).is_converged());

    lab.kill_initial_master();
    let start = std::time::Instant::now();
    let t = loop {
        // Right after the promotion Sentinel may still list the new master among the
        // replicas and not yet flag the old one: wait for the settled view.
        if let Ok(t) = driver.topology().await
            && t.master == lab.replica
            && t.down_replicas.contains(&lab.master)
        {
            break t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no settled failover"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(t.down_replicas, vec![lab.master.clone()], "{t:?}");

    // A keeps working on the new master without any re-provisioning.
    let mut ca = ok(redis_as(&lab.replica, &a.resource_name(), pa.expose()).await);
    let _: () = ok(redis::cmd("SET")
        .arg(format!("wp_{a}:after"))
        .arg("1")
        .query_async(&mut ca)
        .await);
    let st = ok(driver.observe_site_cache(&a, Some(&pa)).await);
    assert!(
        !st.is_converged(),
        "a dead node cannot count as converged: {st:?}"
    );
    assert!(
        st.nodes
            .iter()
            .any(|n| n.node == lab.replica && n.converged)
    );
    assert!(
        st.nodes
            .iter()
            .any(|n| n.node == lab.master && !n.reachable)
    );
    // A new site is applied to what is reachable; the dead node is reported.
    let (b, pb) = (SiteResourceId::generate(), SitePassword::generate());
    let sb = ok(driver.ensure_site_cache(&b, &pb).await);
    assert!(
        sb.nodes
            .iter()
            .any(|n| n.node == lab.replica && n.converged)
    );
    assert!(sb.nodes.iter().any(|n| !n.reachable));
}

// ---------------------------------------------------------------- Varnish

fn varnish_inline_driver(lab: &helpers::VarnishLab, backend_port: u16) -> VarnishDriver {
    ok(VarnishDriver::new(&VarnishConfig {
        instances: vec![VarnishInstance {
            address: lab.admin.clone(),
            secret_file: lab.secret_file.clone(),
        }],
        vcl_dir: None,
        hosts_file: None,
        vcl_dir_in_instance: None,
        main_vcl: "main.vcl".into(),
        backend_host: Some("127.0.0.1".into()),
        backend_port: Some(backend_port),
        vcl_prefix: "pd_".into(),
    }))
}

fn host(s: &str) -> DomainName {
    ok(DomainName::parse(s))
}

fn body_of(resp: &str) -> &str {
    resp.split("\r\n\r\n").nth(1).unwrap_or("")
}

async fn cli(lab: &helpers::VarnishLab) -> VarnishCli {
    let secret = ok(std::fs::read(&lab.secret_file));
    ok(VarnishCli::connect(&lab.admin, &secret).await)
}

#[tokio::test]
async fn varnish_inline_host_table_load_use_discard_verify_and_ban() {
    let echo = helpers::EchoBackend::start().await;
    let lab = helpers::VarnishLab::start();
    let driver = varnish_inline_driver(&lab, echo.port);
    let (sa, ss) = (SiteResourceId::generate(), SiteResourceId::generate());
    let mut t1 = HostTable::default();
    t1.insert(host("a.test"), sa.clone(), HostState::Active);
    t1.insert(host("s.test"), ss.clone(), HostState::Suspended);

    let st = ok(driver.apply_host_table(&t1).await);
    assert!(st.iter().all(|s| s.converged), "{st:?}");
    let name1 = ok(driver.render(&t1).await).name;
    assert_eq!(st[0].active.as_deref(), Some(name1.as_str()));
    // Again: nothing new loaded.
    ok(driver.apply_host_table(&t1).await);
    let list = ok(cli(&lab).await.vcl_list().await);
    assert_eq!(
        list.iter().filter(|e| e.name.starts_with("pd_")).count(),
        1,
        "{list:?}"
    );

    // The VCL itself: the site gets its id, unknown host is our 404, suspended our 503.
    let (code, resp) = helpers::http_get(&lab.http, "A.test:8080").await;
    assert_eq!(
        (code, body_of(&resp)),
        (200, format!("site={sa}").as_str()),
        "{resp}"
    );
    let (code, resp) = helpers::http_get(&lab.http, "unknown.test").await;
    assert_eq!(code, 404, "{resp}");
    assert!(
        resp.contains("X-Pressdock-Edge: not-found")
            && resp.contains("No site is configured for this address"),
        "{resp}"
    );
    let (code, resp) = helpers::http_get(&lab.http, "s.test").await;
    assert_eq!(code, 503, "{resp}");
    assert!(resp.contains("Site suspended"), "{resp}");

    // A changed table replaces the VCL and discards the old one.
    let mut t2 = t1.clone();
    t2.remove_site(&ss);
    t2.insert(host("b.test"), sa.clone(), HostState::Active);
    ok(driver.apply_host_table(&t2).await);
    assert!(
        ok(driver.observe_host_table(&t2).await)
            .iter()
            .all(|s| s.converged)
    );
    assert!(!ok(driver.observe_host_table(&t1).await)[0].converged);
    let list = ok(cli(&lab).await.vcl_list().await);
    assert!(
        !list
            .iter()
            .any(|e| e.name == name1 && e.status != "discarded"),
        "old VCL not discarded: {list:?}"
    );
    let (code, _) = helpers::http_get(&lab.http, "s.test").await;
    assert_eq!(code, 404, "s.test is no longer known");

    // Drift: another VCL activated by hand is seen and repaired.
    let mut c = cli(&lab).await;
    ok(c.command_ok("vcl.use", &["boot"]).await);
    assert!(!ok(driver.observe_host_table(&t2).await)[0].converged);
    assert!(ok(driver.apply_host_table(&t2).await)[0].converged);

    // Ban by host.
    ok(driver.ban_host(&host("b.test")).await);
    let bans = ok(cli(&lab).await.command_ok("ban.list", &[]).await);
    assert!(bans.contains("req.http.host == b.test"), "{bans}");
}

/// Include mode with the repository's own VCL (configs/varnish: main.vcl includes
/// hosts.vcl and pressdock.vcl); only backend.vcl is replaced (its `traefik` host does
/// not resolve here).
#[tokio::test]
async fn varnish_include_mode_with_the_repository_vcl() {
    let echo = helpers::EchoBackend::start().await;
    let vcl_dir = ok(tempfile::tempdir());
    let repo_vcl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/varnish");
    // Every include of the repository but the two this test owns.
    for entry in ok(std::fs::read_dir(&repo_vcl)) {
        let path = ok(entry).path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        if name.ends_with(".vcl") && name != "backend.vcl" && name != "hosts.vcl" {
            ok(std::fs::copy(&path, vcl_dir.path().join(&name)));
        }
    }
    ok(std::fs::write(
        vcl_dir.path().join("backend.vcl"),
        format!(
            "backend default {{ .host = \"127.0.0.1\"; .port = \"{}\"; }}\n",
            echo.port
        ),
    ));
    let hosts_file = vcl_dir.path().join("hosts.vcl");
    ok(std::fs::write(&hosts_file, "sub pressdock_hosts {\n}\n"));
    let lab = helpers::VarnishLab::start_with_vcl_path(Some(vcl_dir.path()));
    let driver = ok(VarnishDriver::new(&VarnishConfig {
        instances: vec![VarnishInstance {
            address: lab.admin.clone(),
            secret_file: lab.secret_file.clone(),
        }],
        vcl_dir: Some(vcl_dir.path().to_path_buf()),
        hosts_file: Some(hosts_file.clone()),
        vcl_dir_in_instance: Some(vcl_dir.path().display().to_string()),
        main_vcl: "main.vcl".into(),
        backend_host: None,
        backend_port: None,
        vcl_prefix: "pd_".into(),
    }));

    let (sa, sb) = (SiteResourceId::generate(), SiteResourceId::generate());
    let mut t = HostTable::default();
    t.insert(host("a.test"), sa.clone(), HostState::Active);
    t.insert(host("s.test"), sb.clone(), HostState::Suspended);
    assert!(ok(driver.apply_host_table(&t).await)[0].converged);
    assert_eq!(
        ok(std::fs::read_to_string(&hosts_file)),
        render_hosts_include(&t)
    );
    let first = ok(driver.render(&t).await).name;
    ok(driver.apply_host_table(&t).await);
    let list = ok(cli(&lab).await.vcl_list().await);
    assert_eq!(
        list.iter().filter(|e| e.name.starts_with("pd_")).count(),
        1,
        "{list:?}"
    );

    let (code, resp) = helpers::http_get(&lab.http, "a.test").await;
    assert_eq!(
        (code, body_of(&resp)),
        (200, format!("site={sa}").as_str()),
        "{resp}"
    );
    let (code, resp) = helpers::http_get(&lab.http, "s.test").await;
    assert_eq!(code, 503, "{resp}");
    assert!(resp.contains("Site suspended"), "{resp}");
    // Unknown hosts get our not-found page (pressdock.vcl's vcl_synth).
    let (code, resp) = helpers::http_get(&lab.http, "unknown.test").await;
    assert_eq!(code, 404, "{resp}");
    assert!(
        resp.contains("X-Pressdock-Edge: not-found")
            && resp.contains("No site is configured for this address"),
        "{resp}"
    );
    // a.test is now cached (pressdock.vcl caches anonymous GETs).
    let (_, resp) = helpers::http_get(&lab.http, "a.test").await;
    assert!(resp.contains("X-Pressdock-Cache: HIT"), "{resp}");

    // A ban of the host drops its cached page; a path ban only that path.
    ok(driver.ban_paths(&host("a.test"), &["/".to_owned()]).await);
    let (_, resp) = helpers::http_get(&lab.http, "a.test").await;
    assert!(resp.contains("X-Pressdock-Cache: MISS"), "path ban: {resp}");
    let (_, resp) = helpers::http_get(&lab.http, "a.test").await;
    assert!(resp.contains("X-Pressdock-Cache: HIT"), "{resp}");
    ok(driver.ban_host(&host("a.test")).await);
    let (_, resp) = helpers::http_get(&lab.http, "a.test").await;
    assert!(resp.contains("X-Pressdock-Cache: MISS"), "host ban: {resp}");

    // a.test leaves the table: new VCL, and the host gets our not-found page.
    t.remove(&host("a.test"));
    assert!(ok(driver.apply_host_table(&t).await)[0].converged);
    assert_ne!(ok(driver.render(&t).await).name, first);
    let (code, resp) = helpers::http_get(&lab.http, "a.test").await;
    assert_eq!(code, 404, "{resp}");
    assert!(resp.contains("X-Pressdock-Edge: not-found"), "{resp}");
}

#[tokio::test]
async fn varnish_rejects_a_wrong_secret_and_a_bad_vcl_keeps_the_old_one() {
    let lab = helpers::VarnishLab::start();
    let err = VarnishCli::connect(&lab.admin, b"wrong\n")
        .await
        .expect_err("auth with a wrong secret");
    assert!(err.to_string().contains("authentication refused"), "{err}");

    let mut c = cli(&lab).await;
    let before = ok(c.vcl_list().await);
    let bad = c
        .vcl_inline("pd_bad", "vcl 4.1;\nsub vcl_recv { this is not vcl }\n")
        .await;
    assert!(bad.is_err());
    let after = ok(c.vcl_list().await);
    assert_eq!(
        before.iter().find(|e| e.status == "active"),
        after.iter().find(|e| e.status == "active")
    );
}

// ---------------------------------------------------------------- Gluster (directory)

fn gluster_config(mount: &std::path::Path) -> GlusterConfig {
    GlusterConfig {
        remote_host: "gluster.invalid".into(),
        volume: "sites".into(),
        mount: mount.to_path_buf(),
        node_mount: mount.to_path_buf(),
        gluster_bin: "gluster".into(),
        owner_uid: 33,
        owner_gid: 33,
        spares: 0,
    }
}

/// The directory half of the Gluster driver on a real filesystem (a temporary folder
/// stands in for the volume's mount; the quota half needs glusterd: see the lab tests).
#[tokio::test]
async fn gluster_directory_owner_and_removal() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mount = ok(tempfile::tempdir());
    let driver = ok(GlusterDriver::new(&gluster_config(mount.path()))).without_mount_check();
    let id = SiteResourceId::generate();
    ok(driver.ensure_directory(&id).await);
    ok(driver.ensure_directory(&id).await);
    let meta = ok(std::fs::metadata(driver.local_dir(&id)));
    assert_eq!(
        (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
        (33, 33, 0o750)
    );
    assert_eq!(ok(driver.observe_directory(&id).await), (true, true));
    // Drift: owner changed by hand, converged by the next ensure.
    ok(std::os::unix::fs::chown(
        driver.local_dir(&id),
        Some(0),
        Some(0),
    ));
    assert_eq!(ok(driver.observe_directory(&id).await), (true, false));
    ok(driver.ensure_directory(&id).await);
    assert_eq!(ok(driver.observe_directory(&id).await), (true, true));

    ok(std::fs::create_dir_all(
        driver.local_dir(&id).join("uploads/2026"),
    ));
    ok(std::fs::write(
        driver.local_dir(&id).join("uploads/2026/a.jpg"),
        b"x",
    ));
    ok(std::fs::create_dir(mount.path().join("not-a-site")));
    let listed = ok(driver.list_site_ids().await);
    assert_eq!(listed, BTreeSet::from([id.clone()]));
    ok(driver.remove_directory(&id).await);
    ok(driver.remove_directory(&id).await);
    assert_eq!(ok(driver.observe_directory(&id).await), (false, false));

    // With the mount-point check on, a plain folder is refused (a dead Gluster client
    // leaves one behind; writing there would fill the local disk).
    let strict = ok(GlusterDriver::new(&gluster_config(mount.path())));
    let err = strict
        .ensure_directory(&id)
        .await
        .expect_err("not a mount point");
    assert!(err.to_string().contains("not a mount point"), "{err}");
}

/// Spare directories, the directory half: ready ones are taken by a rename (each once),
/// unfinished ones (`.` first) never; nothing left is `false`.
#[tokio::test]
async fn gluster_spares_are_taken_once_and_unfinished_ones_never() {
    let mount = ok(tempfile::tempdir());
    let driver = ok(GlusterDriver::new(&gluster_config(mount.path()))).without_mount_check();
    let bytes = 10 << 20;
    assert_eq!(ok(driver.list_spares(bytes).await), Default::default());
    let root = mount.path().join(".spares").join(bytes.to_string());
    let (ready, unfinished) = (SiteResourceId::generate(), SiteResourceId::generate());
    ok(std::fs::create_dir_all(root.join(ready.as_str())));
    ok(std::fs::create_dir_all(root.join(format!(".{unfinished}"))));
    ok(std::fs::create_dir_all(root.join("not-a-spare")));
    let spares = ok(driver.list_spares(bytes).await);
    assert_eq!(spares.ready, vec![ready.as_str().to_owned()]);
    assert_eq!(spares.unfinished, vec![format!(".{unfinished}")]);
    let (a, b) = (SiteResourceId::generate(), SiteResourceId::generate());
    assert!(ok(driver.claim_spare(&a, bytes).await));
    assert!(driver.local_dir(&a).is_dir());
    assert!(!root.join(ready.as_str()).exists());
    assert!(
        !ok(driver.claim_spare(&b, bytes).await),
        "only an unfinished one is left"
    );
    assert!(!driver.local_dir(&b).exists());
    // Spares are not sites.
    assert_eq!(ok(driver.list_site_ids().await), BTreeSet::from([a]));
}

// ---------------------------------------------------------------- the lab (opt-in)
//
// Against `pressdock-infra lab up` (its config file: PRESSDOCK_LAB_CONFIG, default
// /var/lib/pressdock-lab/pressdock.toml). Run with `cargo test -p backends -- --ignored`.

fn lab_config() -> BackendsConfig {
    #[derive(serde::Deserialize)]
    struct File {
        backends: BackendsConfig,
    }
    let path = std::env::var("PRESSDOCK_LAB_CONFIG")
        .unwrap_or_else(|_| "/var/lib/pressdock-lab/pressdock.toml".to_owned());
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e} (is the lab up?)"));
    let f: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    f.backends
}

/// A spare's limit goes with it when it is renamed into place: the site's directory has
/// the limit at its own path (read back through glusterd), the limit holds against
/// writes, and removing the site's storage removes it.
#[tokio::test]
#[ignore = "needs the lab (pressdock-infra lab up)"]
async fn lab_gluster_spare_keeps_its_quota_when_taken() {
    let cfg = lab_config()
        .gluster
        .unwrap_or_else(|| panic!("no [backends.gluster]"));
    let driver = ok(GlusterDriver::new(&cfg));
    // A limit no plan has, so that no control plane's spares are taken here.
    let quota = (3 << 20) + 4096;
    let name = ok(driver.make_spare(quota).await);
    assert!(ok(driver.list_spares(quota).await).ready.contains(&name));
    let id = SiteResourceId::generate();
    assert!(ok(driver.claim_spare(&id, quota).await));
    let st = ok(driver.observe_site_storage(&id).await);
    assert!(st.is_converged(quota), "{st:?}");
    // 4 MiB into a 3 MiB limit: refused (the lab's quota timeouts are 0).
    let dir = driver.local_dir(&id);
    let written = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(dir.join("big"))?;
        for _ in 0..64 {
            f.write_all(&[7u8; 64 * 1024])?;
            f.sync_all()?;
        }
        Ok(())
    })
    .await
    .expect("the writer thread");
    assert!(written.is_err(), "the limit did not hold after the rename");
    ok(driver.remove_site_storage(&id).await);
    let st = ok(driver.observe_site_storage(&id).await);
    assert!(!st.directory_exists && st.quota_bytes.is_none(), "{st:?}");
}

#[tokio::test]
#[ignore = "needs the lab (pressdock-infra lab up)"]
async fn lab_gluster_directory_and_quota() {
    let cfg = lab_config()
        .gluster
        .unwrap_or_else(|| panic!("no [backends.gluster]"));
    let driver = ok(GlusterDriver::new(&cfg));
    let id = SiteResourceId::generate();
    let quota = 10 << 20;
    let st = ok(driver.ensure_site_storage(&id, quota).await);
    assert!(st.is_converged(quota), "{st:?}");
    assert_eq!(ok(driver.ensure_site_storage(&id, quota).await), st);
    // Plan change, then a hand-made change is converged back.
    assert!(ok(driver.ensure_site_storage(&id, 2 * quota).await).is_converged(2 * quota));
    ok(driver.set_quota(&id, quota).await);
    assert_eq!(
        ok(driver.observe_site_storage(&id).await).quota_bytes,
        Some(quota)
    );
    ok(driver.remove_site_storage(&id).await);
    ok(driver.remove_site_storage(&id).await);
    let gone = ok(driver.observe_site_storage(&id).await);
    assert!(
        !gone.directory_exists && gone.quota_bytes.is_none(),
        "{gone:?}"
    );
}

#[tokio::test]
#[ignore = "needs the lab (pressdock-infra lab up)"]
async fn lab_swarm_secrets_and_service() {
    use backends::swarm::{PlanResources, SecretKind, SiteServiceParams};
    let all = lab_config();
    let cfg = all
        .swarm
        .clone()
        .unwrap_or_else(|| panic!("no [backends.swarm]"));
    let driver = ok(SwarmDriver::new(&cfg));
    let nodes = ok(driver.list_nodes().await);
    let (node, _, _) = nodes
        .iter()
        .find(|(_, _, role)| role == "worker")
        .or_else(|| nodes.first())
        .cloned()
        .unwrap_or_else(|| panic!("no swarm node"));
    let id = SiteResourceId::generate();
    let mut secrets = std::collections::BTreeMap::new();
    for kind in SecretKind::ALL {
        let data = Secret::new(SitePassword::generate().expose());
        let r = ok(driver.ensure_secret(&id, kind, &data).await);
        assert_eq!(
            ok(driver.ensure_secret(&id, kind, &data).await),
            r,
            "same content, same secret"
        );
        secrets.insert(kind, r);
    }
    let mut params = SiteServiceParams {
        id: id.clone(),
        domains: BTreeSet::from([host(&format!("{id}.lab.test"))]),
        primary_domain: host(&format!("{id}.lab.test")),
        agent: Default::default(),
        node,
        resources: PlanResources {
            cpu_limit_millis: 500,
            memory_limit_bytes: 256 << 20,
            cpu_reservation_millis: 100,
            memory_reservation_bytes: 64 << 20,
        },
        secrets: secrets.clone(),
        wp_content_source: "/tmp".into(),
        db_host: "127.0.0.1:3306".into(),
        redis_sentinels: vec![],
        redis_master_name: "pressdock".into(),
        extra_env: Default::default(),
        image: None,
        suspended: false,
        force_update: 0,
    };
    let st = ok(driver.ensure_service(&params).await);
    assert!(st.exists && st.replicas == Some(1), "{st:?}");
    let again = ok(driver.ensure_service(&params).await);
    assert_eq!(
        again.version, st.version,
        "an unchanged spec must not update the service"
    );
    assert_eq!(ok(driver.scale_service(&id, 0).await).replicas, Some(0));
    params.suspended = false;
    assert_eq!(ok(driver.ensure_service(&params).await).replicas, Some(1));
    params.suspended = true;
    assert_eq!(ok(driver.ensure_service(&params).await).replicas, Some(0));

    // Running again, so that there is a task to stop.
    params.suspended = false;
    ok(driver.ensure_service(&params).await);
    let start = std::time::Instant::now();
    while ok(driver.site_tasks(&id).await)
        .iter()
        .all(|(_, state)| state != "starting" && state != "running")
    {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the task's container never started"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // remove_service returns once the task has stopped, so what the task held (its
    // secrets, its storage) can be removed at once, with no retry.
    ok(driver.remove_service(&id).await);
    assert!(!ok(driver.observe_service(&id).await).exists);
    assert_eq!(
        ok(driver.prune_site_secrets(&id, &[]).await),
        SecretKind::ALL.len()
    );
    ok(driver.remove_service(&id).await);
    assert_eq!(ok(driver.prune_site_secrets(&id, &[]).await), 0);
}

#[tokio::test]
#[ignore = "needs the lab (pressdock-infra lab up)"]
async fn lab_galera_through_the_router_and_redis_through_sentinel() {
    let all = lab_config();
    let g = all.galera.unwrap_or_else(|| panic!("no [backends.galera]"));
    let db = ok(GaleraDriver::new(&g));
    let router = ok(backends::router::Router::from_config(&g));
    let id = SiteResourceId::generate();
    let pw = SitePassword::generate();
    assert!(ok(db.ensure_site_database(&id, &pw).await).is_converged());
    assert!(
        ok(router.ensure_router_user(&id, &pw).await)
            .iter()
            .all(|s| s.converged)
    );
    ok(router.remove_router_user(&id).await);
    ok(db.remove_site_database(&id).await);
    assert!(ok(db.observe_site_database(&id, None).await).is_absent());

    let r = all.redis.unwrap_or_else(|| panic!("no [backends.redis]"));
    let cache = ok(RedisSentinelDriver::new(&r));
    let st = ok(cache.ensure_site_cache(&id, &pw).await);
    assert!(st.is_converged() && st.nodes.len() >= 2, "{st:?}");
    ok(cache.remove_site_cache(&id).await);
    assert!(ok(cache.observe_site_cache(&id, None).await).is_absent());
}

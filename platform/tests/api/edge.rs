//! Sagas, purges and the reconcilers against real backends without the lab: the
//! machine's MariaDB as Galera, a Redis (master, replica, Sentinel) and a `varnishd` this
//! test starts on free ports (the drivers' own helpers, `backends/tests/helpers`), with the
//! repository's VCL in include mode and an echo server as the site's web server.

use std::{path::Path, process::Command};

use serde_json::json;

use crate::helpers::{self, EchoBackend, RedisLab, VarnishLab};
use crate::support::{TestApp, random_name, server_url, step_names};

/// The servers a [`TestApp`] drives, and the `[backends]` table that names them.
pub struct MachineBackends {
    pub redis: RedisLab,
    pub varnish: VarnishLab,
    _echo: EchoBackend,
    pub vcl_dir: tempfile::TempDir,
}

impl MachineBackends {
    pub async fn start() -> Self {
        let echo = EchoBackend::start().await;
        let vcl_dir = tempfile::tempdir().unwrap();
        let repo_vcl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/varnish");
        for entry in std::fs::read_dir(&repo_vcl).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            if name.ends_with(".vcl") && name != "backend.vcl" && name != "hosts.vcl" {
                std::fs::copy(&path, vcl_dir.path().join(&name)).unwrap();
            }
        }
        // The lab's backend (Traefik) does not resolve here: the echo server stands for it.
        std::fs::write(
            vcl_dir.path().join("backend.vcl"),
            format!(
                "backend default {{ .host = \"127.0.0.1\"; .port = \"{}\"; }}\n",
                echo.port
            ),
        )
        .unwrap();
        std::fs::write(
            vcl_dir.path().join("hosts.vcl"),
            "sub pressdock_hosts {\n}\n",
        )
        .unwrap();
        let varnish = VarnishLab::start_with_vcl_path(Some(vcl_dir.path()));
        let redis = RedisLab::start();
        Self {
            redis,
            varnish,
            _echo: echo,
            vcl_dir,
        }
    }

    pub fn config(&self) -> toml::Table {
        let dir = self.vcl_dir.path().display();
        toml::from_str(&format!(
            r#"
            [galera]
            admin_url = "{db}"
            site_db_host = "127.0.0.1:3306"
            [redis]
            sentinels = ["{sentinel}"]
            master_name = "{master}"
            sentinel_user = "{sentinel_user}"
            sentinel_password = "{sentinel_password}"
            [varnish]
            instances = [{{ address = "{admin}", secret_file = "{secret}" }}]
            vcl_dir = "{dir}"
            hosts_file = "{dir}/hosts.vcl"
            vcl_dir_in_instance = "{dir}"
            "#,
            db = server_url(),
            sentinel = self.redis.sentinel,
            master = self.redis.master_name,
            sentinel_user = helpers::SENTINEL_ADMIN,
            sentinel_password = helpers::SENTINEL_PASSWORD,
            admin = self.varnish.admin,
            secret = self.varnish.secret_file.display(),
        ))
        .unwrap()
    }

    /// `redis-cli` on the master.
    pub fn redis(&self, args: &[&str]) -> String {
        let (host, port) = self.redis.master.rsplit_once(':').unwrap();
        let out = Command::new("redis-cli")
            .args(["-h", host, "-p", port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET /` through the edge with `Host: host`: the status and the whole response.
    pub async fn get(&self, host: &str) -> (u16, String) {
        helpers::http_get(&self.varnish.http, host).await
    }
}

#[tokio::test]
async fn a_site_is_created_served_purged_and_deleted_on_real_redis_and_varnish() {
    let machine = MachineBackends::start().await;
    let backends = machine.config();
    let app = TestApp::spawn_with(|c| {
        c.backends = backends;
        c.reconcile.enabled = false;
    })
    .await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let domain = format!("{}.example", random_name("edge").replace('_', "-"));

    // site.create: every step of this configuration ran on the real servers.
    let (status, created) = app.create_site(&admin, &tenant, &domain).await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{created}");
    let op = app
        .wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(
        step_names(&op),
        [
            "record_site",
            "reserve_slot",
            "generate_secrets",
            "ensure_database",
            "ensure_router_user",
            "ensure_cache_user",
            "publish_hosts"
        ],
        "{op}"
    );
    let site = created["site"]["id"].as_str().unwrap().to_owned();
    let (_, shown) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert_eq!(shown["state"], "active", "{shown}");
    // The site's Redis user exists, limited to its own keys.
    let acl = machine.redis(&["ACL", "GETUSER", &format!("wp_{site}")]);
    assert!(acl.contains(&format!("~wp_{site}:*")), "{acl}");
    // The edge routes the domain to the site (the echo server names the site Varnish
    // forwarded for), and caches it.
    let (code, first) = machine.get(&domain).await;
    assert_eq!(code, 200, "{first}");
    assert!(first.ends_with(&format!("site={site}")), "{first}");
    let (_, again) = machine.get(&domain).await;
    assert!(again.contains("X-Pressdock-Cache: HIT"), "{again}");

    // A purge bans the path on the one Varnish: counted, and the next request misses.
    let purge = format!("/v1/sites/{site}/cache/purge");
    let (status, done) = app.post(&purge, &admin, json!({ "paths": ["/"] })).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{done}");
    assert!(done["banned"].as_u64().unwrap() > 0, "{done}");
    assert_eq!(
        done["banned"], 1,
        "one domain × one path × one instance: {done}"
    );
    let (_, after) = machine.get(&domain).await;
    assert!(after.contains("X-Pressdock-Cache: MISS"), "{after}");

    // The reconcilers find the edge and Redis as the sagas left them.
    let (status, ran) = app
        .post("/v1/admin/reconcilers/run", &admin, json!({}))
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{ran}");
    assert!(ran["sites"]["checked"].as_u64() >= Some(1), "{ran}");
    for (name, report) in ran.as_object().unwrap() {
        assert!(
            report["errors"].as_array().is_none_or(Vec::is_empty),
            "{name}: {report}"
        );
    }

    // site.delete unwinds it all: the edge answers not-found, the Redis user is gone.
    let (status, deleted) = app
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/sites/{site}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{deleted}");
    let op = app
        .wait_operation(&admin, deleted["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let (code, gone) = machine.get(&domain).await;
    assert_eq!(code, 404, "{gone}");
    assert!(gone.contains("X-Pressdock-Edge: not-found"), "{gone}");
    let acl = machine.redis(&["ACL", "GETUSER", &format!("wp_{site}")]);
    assert!(!acl.contains(&format!("wp_{site}")), "{acl}");
    app.finish().await;
}

//! Sites provisioned for real on the lab (issue 4): every backend has a site's resources
//! exactly when the platform says it exists; drift is repaired by the reconcilers; a failure
//! at any step of a create unwinds to nothing; every step can run twice; a SIGKILL at any
//! step of a create or a delete converges after a restart; sites are isolated.
//!
//! Gated by `PRESSDOCK_LAB_TESTS=1` and a lab that is up (`pressdock-infra lab up`). The
//! tests run their own `pressdock serve` processes on the lab's configuration with a fresh
//! control-plane database each, and stop the lab's own platform process first: one control
//! plane at a time owns the Varnish host table. `pressdock-infra lab up` starts it again.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use backends::{
    EdgeCache, GaleraDriver, GlusterDriver, RedisSentinelDriver, SiteCache, SiteDatabase,
    SitePassword, SiteResourceId, SiteRuntime, SiteStorage, SwarmDriver, VarnishDriver,
    config::BackendsConfig,
};
use e2e::{CREATE_STEPS, DELETE_STEPS, random};
use serde_json::{Value, json};

static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LAB_CONFIG: &str = "/var/lib/pressdock-lab/pressdock.toml";
const ADMIN: &str = "admin@pressdock.test";
const PASSWORD: &str = "lab-test-admin-password";

fn enabled() -> bool {
    e2e::lab_tests_enabled(Path::new(LAB_CONFIG))
}

/// The start of each test here: `None` when the lab tests do not run; else the lock that
/// runs them one at a time (held), the lab (its own platform stopped) and a fresh name for
/// the test's control-plane database.
async fn begin() -> Option<(tokio::sync::MutexGuard<'static, ()>, Lab, String)> {
    if !enabled() {
        return None;
    }
    let guard = LOCK.lock().await;
    let lab = Lab::load();
    lab.sweep_leftovers().await;
    Some((guard, lab, format!("pdtest_{}", random())))
}

/// The lab's swarm manager, through the Docker API.
fn swarm_api(lab: &Lab) -> bollard::Docker {
    let host = &lab.backends.swarm.as_ref().unwrap().docker_host;
    bollard::Docker::connect_with_socket(
        host.trim_start_matches("unix://"),
        30,
        &bollard::ClientVersion {
            major_version: 1,
            minor_version: 41,
        },
    )
    .unwrap()
}

/// The bind-mount sources of a site's service, as the swarm records them.
async fn service_mount_sources(lab: &Lab, site: &str) -> Vec<String> {
    let service = swarm_api(lab)
        .inspect_service(
            &format!("wp_{site}"),
            None::<bollard::query_parameters::InspectServiceOptions>,
        )
        .await
        .unwrap();
    service
        .spec
        .and_then(|s| s.task_template)
        .and_then(|t| t.container_spec)
        .and_then(|c| c.mounts)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.source)
        .collect()
}

/// The swarm secrets of a site, by name.
async fn swarm_secrets(lab: &Lab, site: &str) -> Vec<String> {
    let secrets = swarm_api(lab)
        .list_secrets(None::<bollard::query_parameters::ListSecretsOptions>)
        .await
        .unwrap();
    secrets
        .into_iter()
        .filter_map(|s| s.spec.and_then(|spec| spec.name))
        .filter(|name| name.starts_with(&format!("wp_{site}")))
        .collect()
}

/// Letters, digits and `_` only: a database name safe to quote into SQL.
fn is_identifier(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The lab's configuration, rewritten for a test platform of our own.
struct Lab {
    table: toml::Table,
    backends: BackendsConfig,
    router_url: String,
}

impl Lab {
    /// The lab's configuration, its own control plane stopped (one control plane at a
    /// time owns the edge).
    fn load() -> Self {
        let lab = Self::read();
        // Stop the lab's own control plane: one control plane at a time owns the edge.
        let pid =
            std::fs::read_to_string("/var/lib/pressdock-lab/pids/platform.pid").unwrap_or_default();
        if let Some(pid) = pid
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        lab
    }

    /// The lab's configuration, its control plane left running.
    fn read() -> Self {
        let text = std::fs::read_to_string(LAB_CONFIG).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let backends: BackendsConfig = table["backends"].clone().try_into().unwrap();
        // The test control planes get databases of their own, made with the lab's admin account.
        let admin = backends
            .galera
            .as_ref()
            .unwrap()
            .admin_url
            .expose()
            .trim_end_matches('/')
            .to_owned();
        let router_url = match admin.rfind('/') {
            Some(i) if i > "mysql://".len() => admin[..i].to_owned(),
            _ => admin,
        };
        Self {
            table,
            backends,
            router_url,
        }
    }

    /// Removes what earlier tests left on the lab: a test that fails panics before it deletes
    /// its sites, and their tasks kept running (CI once found 51 of them, the idle lab at a load
    /// of 104, and the next tests' moves timing out). Every site some backend holds that the
    /// lab's own control plane does not know is removed from every backend, and the test
    /// control-plane databases (`pdtest_*`) are dropped. Safe because the lab tests run one at a
    /// time (this file's lock; `PRESSDOCK_LAB_LOCK` across runs): no other test platform is
    /// using them. The backups in the lab's S3 of the sites the lab's control plane does not
    /// know go too ([`Lab::sweep_backups`]): the final backups of the test platforms' sites.
    /// Best effort: a failure here is printed, and the test goes on.
    async fn sweep_leftovers(&self) {
        if let Err(e) = self.try_sweep_leftovers().await {
            eprintln!("sweeping earlier tests' leftovers failed: {e:#}");
        }
    }

    async fn try_sweep_leftovers(&self) -> anyhow::Result<()> {
        use sqlx::Row;
        let live = self.known_sites().await?;
        if let Err(e) = self.sweep_backups(&live).await {
            eprintln!("sweeping earlier tests' backups from the lab's S3 failed: {e:#}");
        }
        let pool = sqlx::MySqlPool::connect(&self.router_url).await?;
        let swarm = self.swarm();
        let mut held = swarm.list_site_ids().await?;
        held.extend(self.galera().list_site_ids().await?);
        held.extend(self.redis().list_site_ids().await?);
        held.extend(self.gluster().list_site_ids().await?);
        let leftovers: Vec<SiteResourceId> = held
            .into_iter()
            .filter(|id| !live.contains(id.as_str()))
            .collect();
        if !leftovers.is_empty() {
            eprintln!(
                "removing {} site(s) earlier tests left on the lab",
                leftovers.len()
            );
        }
        for id in &leftovers {
            swarm.remove_service(id).await?;
            swarm.prune_site_secrets(id, &[]).await?;
            self.galera().remove_site_database(id).await?;
            self.redis().remove_site_cache(id).await?;
            self.gluster().remove_site_storage(id).await?;
        }
        let databases: Vec<String> = sqlx::query(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'pdtest\\_%'",
        )
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
        for name in databases {
            // The names are ours (`pdtest_` and random letters), checked before they are quoted.
            if is_identifier(&name) {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS `{name}`"
                )))
                .execute(&pool)
                .await?;
            }
        }
        pool.close().await;
        Ok(())
    }

    /// Deletes the backup objects (`<tenant>/<site>/<backup>/…`) of every site `live` (the
    /// lab's own control plane's `sites`, deleted ones included: their final backups are
    /// the lab platform's to prune) does not name: what the test platforms' sites left, a
    /// final backup at each delete. Only keys whose first two parts are ids as the
    /// platform makes them: another test's objects under a prefix of its own (such as
    /// `lab_storage_auth`'s `authtest-<pid>/`) are that test's to remove. An empty `live`
    /// removes nothing: the lab's control plane always knows its demo site, so it means the
    /// wrong database was read. (Unfinished multipart uploads are not found: the lab's
    /// s3s-fs does not list them.)
    async fn sweep_backups(
        &self,
        live: &std::collections::BTreeSet<String>,
    ) -> anyhow::Result<usize> {
        let Some(s3) = self.backends.s3.as_ref() else {
            return Ok(0);
        };
        anyhow::ensure!(
            !live.is_empty(),
            "the lab's control plane knows no site (not even its demo site): not sweeping S3"
        );
        let store = platform::backup::BackupStore::new(s3)?;
        let mut unknown = std::collections::BTreeSet::new();
        for (key, _) in store.list("").await? {
            let mut parts = key.splitn(3, '/');
            let (Some(tenant), Some(site), Some(_)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if platform::domain::Id::parse(tenant).is_some()
                && SiteResourceId::parse(site).is_ok()
                && !live.contains(site)
            {
                unknown.insert(format!("{tenant}/{site}/"));
            }
        }
        if !unknown.is_empty() {
            eprintln!(
                "removing the backups of {} site(s) earlier tests left in the lab's S3",
                unknown.len()
            );
        }
        for prefix in &unknown {
            store.remove_prefix(prefix, &[]).await?;
        }
        Ok(unknown.len())
    }

    /// The ids of the sites the lab's own control plane knows (`sites`, deleted ones too).
    async fn known_sites(&self) -> anyhow::Result<std::collections::BTreeSet<String>> {
        let lab_database = self.lab_database()?;
        let pool = sqlx::MySqlPool::connect(&self.router_url).await?;
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM `{lab_database}`.sites"
        )))
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        Ok(ids.into_iter().collect())
    }

    /// `<tenant>/<site>/` of the lab's demo site (`lab up` makes `demo.lab.test`).
    async fn demo_prefix(&self) -> String {
        let lab_database = self.lab_database().unwrap();
        let pool = sqlx::MySqlPool::connect(&self.router_url).await.unwrap();
        let (tenant, site): (String, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT s.tenant_id, s.id FROM `{lab_database}`.sites s \
             JOIN `{lab_database}`.domains d ON d.site_id = s.id WHERE d.domain = 'demo.lab.test'"
        )))
        .fetch_one(&pool)
        .await
        .expect("the lab's demo site (demo.lab.test)");
        pool.close().await;
        format!("{tenant}/{site}/")
    }

    /// The ids of the lab's own control plane's complete backups.
    async fn complete_backups(&self) -> anyhow::Result<std::collections::BTreeSet<String>> {
        let lab_database = self.lab_database()?;
        let pool = sqlx::MySqlPool::connect(&self.router_url).await?;
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM `{lab_database}`.backups WHERE state = 'complete'"
        )))
        .fetch_all(&pool)
        .await?;
        pool.close().await;
        Ok(ids.into_iter().collect())
    }

    /// The name of the lab's own control-plane database, checked to be a plain identifier.
    fn lab_database(&self) -> anyhow::Result<String> {
        let lab_database = self.table["database_url"]
            .as_str()
            .and_then(|url| url.rsplit('/').next())
            .and_then(|name| name.split('?').next())
            .unwrap_or("pressdock")
            .to_owned();
        anyhow::ensure!(
            is_identifier(&lab_database),
            "the lab's database name {lab_database:?} is not a plain identifier"
        );
        Ok(lab_database)
    }

    /// Varnish's host table, as the control plane last wrote it.
    fn host_table(&self) -> String {
        std::fs::read_to_string(
            self.backends
                .varnish
                .as_ref()
                .unwrap()
                .hosts_file
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }
    fn galera(&self) -> GaleraDriver {
        GaleraDriver::new(self.backends.galera.as_ref().unwrap()).unwrap()
    }
    fn redis(&self) -> RedisSentinelDriver {
        RedisSentinelDriver::new(self.backends.redis.as_ref().unwrap()).unwrap()
    }
    fn gluster(&self) -> GlusterDriver {
        GlusterDriver::new(self.backends.gluster.as_ref().unwrap()).unwrap()
    }
    fn varnish(&self) -> VarnishDriver {
        VarnishDriver::new(self.backends.varnish.as_ref().unwrap()).unwrap()
    }
    fn swarm(&self) -> SwarmDriver {
        SwarmDriver::new(self.backends.swarm.as_ref().unwrap()).unwrap()
    }
}

/// A `pressdock serve` of ours on the lab, with its own control-plane database.
struct Platform {
    child: tokio::process::Child,
    api: e2e::Api,
    database_url: String,
    config_path: PathBuf,
}

impl Platform {
    /// A control plane whose sites do not report (agents get no control URL): a site is
    /// `active` when its create operation finishes. The provisioning tests use it.
    async fn start(lab: &Lab, database: &str, failpoints: &str) -> Self {
        Self::launch(lab, database, failpoints, false, None, None).await
    }

    /// A control plane the sites' agents report to (the lab's `[agent]` settings).
    async fn start_with_agents(lab: &Lab, database: &str) -> Self {
        Self::launch(lab, database, "", true, None, None).await
    }

    /// Agents reporting, and a final backup of every site deleted (`[backups]
    /// final_backup`, whatever the lab's configuration says).
    async fn start_with_final_backups(lab: &Lab, database: &str) -> Self {
        Self::launch(lab, database, "", true, None, Some(true)).await
    }

    /// Agents reporting and the placement loop on, with these `[placement]` settings.
    async fn start_with_placement(lab: &Lab, database: &str, placement: toml::Table) -> Self {
        Self::launch(lab, database, "", true, Some(placement), None).await
    }

    async fn launch(
        lab: &Lab,
        database: &str,
        failpoints: &str,
        agents: bool,
        placement: Option<toml::Table>,
        final_backup: Option<bool>,
    ) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut table = lab.table.clone();
        if !agents {
            table.remove("agent");
        }
        // No certificates: the lab's own platform (stopped meanwhile) keeps the edge's, and
        // these tests read their sites over plain HTTP.
        table.remove("certs");
        // Moves between workers would race these tests' own operations (issue 6 has its own).
        let placement = placement.unwrap_or_else(|| {
            let mut off = toml::Table::new();
            off.insert("enabled".into(), false.into());
            off
        });
        table.insert("placement".into(), placement.into());
        if let Some(on) = final_backup {
            let backups = table
                .entry("backups")
                .or_insert_with(|| toml::Table::new().into());
            if let Some(backups) = backups.as_table_mut() {
                backups.insert("final_backup".into(), on.into());
            }
        }
        let database_url = format!("{}/{database}", lab.router_url);
        table.insert("database_url".into(), database_url.clone().into());
        table.insert("listen".into(), format!("127.0.0.1:{port}").into());
        let mut bootstrap = toml::Table::new();
        bootstrap.insert("admin_email".into(), ADMIN.into());
        bootstrap.insert("admin_password".into(), PASSWORD.into());
        table.insert("bootstrap".into(), bootstrap.into());
        let mut reconcile = toml::Table::new();
        reconcile.insert("interval_secs".into(), 3600.into());
        reconcile.insert("orphan_grace_secs".into(), 0.into());
        table.insert("reconcile".into(), reconcile.into());
        let mut jobs = toml::Table::new();
        jobs.insert("lease_secs".into(), 3.into());
        jobs.insert("poll_millis".into(), 100.into());
        jobs.insert("max_attempts".into(), 3.into());
        table.insert("jobs".into(), jobs.into());
        let config_path = std::env::temp_dir().join(format!("pd-lab-test-{database}-{port}.toml"));
        std::fs::write(&config_path, toml::to_string(&table).unwrap()).unwrap();
        let mut child = tokio::process::Command::new(e2e::pressdock_binary())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("PRESSDOCK_FAILPOINTS", failpoints)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("pressdock serve exited with {status}");
            }
            assert!(
                Instant::now() < deadline,
                "pressdock serve did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut api = e2e::Api::login(http, &base, ADMIN, PASSWORD).await;
        api.poll = Duration::from_millis(250);
        Self {
            child,
            api,
            database_url,
            config_path,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.api.call(method, path, body).await
    }

    /// Syncs the nodes from the swarm, and makes a tenant.
    async fn prepare(&self) -> String {
        self.reconcile().await;
        self.api
            .create_tenant(&format!("t-{}", random()), "Lab test")
            .await
    }

    async fn create_site(&self, tenant: &str, domain: &str) -> (String, String) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/sites"),
                Some(json!({ "name": "Lab site", "domain": domain, "aliases": [format!("www.{domain}")], "plan": "starter" })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        (
            body["site"]["id"].as_str().unwrap().to_owned(),
            body["operation"]["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn transition(&self, site: &str, action: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/sites/{site}/{action}"),
                None,
            )
            .await;
        assert_eq!(status, 202, "{action}: {body}");
        body["operation"]["id"].as_str().unwrap().to_owned()
    }

    /// Runs every reconciler once and returns their results.
    async fn reconcile(&self) -> Value {
        let (status, ran) = self
            .call(reqwest::Method::POST, "/v1/admin/reconcilers/run", None)
            .await;
        assert_eq!(status, 200, "{ran}");
        ran
    }

    /// Creates a site on `<prefix>-<random>.lab.test` and waits for its create to succeed.
    async fn create_ready(&self, tenant: &str, prefix: &str) -> String {
        let (site, op) = self
            .create_site(tenant, &format!("{prefix}-{}.lab.test", random()))
            .await;
        let done = self.wait(&op).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        site
    }

    /// Deletes a site, waits for the delete to succeed and checks every backend is clean.
    async fn delete_and_vanish(&self, lab: &Lab, site: &str) {
        let op = self.delete_site(site).await;
        let done = self.wait(&op).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_absent(lab, site).await;
    }

    async fn delete_site(&self, site: &str) -> String {
        let (status, body) = self
            .call(reqwest::Method::DELETE, &format!("/v1/sites/{site}"), None)
            .await;
        assert_eq!(status, 202, "{body}");
        body["operation"]["id"].as_str().unwrap().to_owned()
    }

    async fn operation(&self, op: &str) -> Value {
        self.api.operation(op).await
    }

    async fn wait(&self, op: &str) -> Value {
        self.api.wait_operation(op, Duration::from_secs(240)).await
    }

    fn kill9(&mut self) {
        let pid = self.child.id().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }

    async fn secret(&self, site: &str, kind: &str) -> String {
        let pool = sqlx::MySqlPool::connect(&self.database_url).await.unwrap();
        let (nonce, sealed): (Vec<u8>, Vec<u8>) = sqlx::query_as(
            "SELECT nonce, ciphertext FROM site_secrets WHERE site_id = ? AND kind = ?",
        )
        .bind(site)
        .bind(kind)
        .fetch_one(&pool)
        .await
        .unwrap();
        pool.close().await;
        let text = std::fs::read_to_string(&self.config_path).unwrap();
        let table: toml::Table = text.parse().unwrap();
        let key = table["secret_key"].as_str().unwrap();
        platform::crypto::SecretBox::new(key.as_bytes())
            .open(&format!("{site}/{kind}"), &nonce, &sealed)
            .unwrap()
    }

    async fn stop(mut self) {
        let pid = self.child.id().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// A backend observation, tried again up to 3 times 1 s apart: on this loaded machine a
/// Galera node now and then closes a new connection during the handshake (seen once in CI:
/// "connect: connection closed"); what the tests assert is the state, not one connect.
macro_rules! observed {
    ($e:expr) => {{
        let mut attempt = 0;
        loop {
            match $e.await {
                Ok(v) => break v,
                Err(err) if attempt < 3 => {
                    attempt += 1;
                    eprintln!("observation failed, trying again: {err:?}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(err) => panic!("observation failed: {err:?}"),
            }
        }
    }};
}

/// Every backend has the site's resources, converged.
async fn assert_present(lab: &Lab, p: &Platform, site: &str) {
    let id = SiteResourceId::parse(site).unwrap();
    let db_pw = SitePassword::parse(&p.secret(site, "db_password").await).unwrap();
    let state = observed!(lab.galera().observe_site_database(&id, Some(&db_pw)));
    assert!(state.is_converged(), "galera: {state:?}");
    let redis_pw = SitePassword::parse(&p.secret(site, "redis_password").await).unwrap();
    let cache = observed!(lab.redis().observe_site_cache(&id, Some(&redis_pw)));
    assert!(
        cache.is_converged() && cache.nodes.len() >= 2,
        "redis on every node: {cache:?}"
    );
    let storage = observed!(lab.gluster().observe_site_storage(&id));
    assert!(
        storage.is_converged(1024 * 1024 * 1024),
        "gluster: {storage:?}"
    );
    let service = lab.swarm().observe_service(&id).await.unwrap();
    assert!(
        service.exists && service.replicas == Some(1),
        "swarm: {service:?}"
    );
    let vcl = lab.host_table();
    assert!(vcl.contains(site), "the host table names the site");
}

/// No backend has anything of the site.
async fn assert_absent(lab: &Lab, site: &str) {
    let id = SiteResourceId::parse(site).unwrap();
    let state = observed!(lab.galera().observe_site_database(&id, None));
    assert!(state.is_absent(), "galera: {state:?}");
    let cache = observed!(lab.redis().observe_site_cache(&id, None));
    assert!(cache.is_absent(), "redis: {cache:?}");
    let storage = observed!(lab.gluster().observe_site_storage(&id));
    assert!(
        !storage.directory_exists && storage.quota_bytes.is_none(),
        "gluster: {storage:?}"
    );
    let service = lab.swarm().observe_service(&id).await.unwrap();
    assert!(!service.exists, "swarm: {service:?}");
    let vcl = lab.host_table();
    assert!(!vcl.contains(site), "the host table does not name the site");
}

#[tokio::test]
async fn a_site_lives_in_every_backend_is_isolated_and_drift_is_repaired() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let p = Platform::start(&lab, &database, "").await;
    let tenant = p.prepare().await;
    let (a, op_a) = p
        .create_site(&tenant, &format!("a-{}.lab.test", random()))
        .await;
    let (b, op_b) = p
        .create_site(&tenant, &format!("b-{}.lab.test", random()))
        .await;
    for op in [&op_a, &op_b] {
        let done = p.wait(op).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    assert_present(&lab, &p, &a).await;
    assert_present(&lab, &p, &b).await;

    // Isolation: A's database user cannot read B's schema, through the router.
    let galera = lab.backends.galera.as_ref().unwrap();
    let a_pw = p.secret(&a, "db_password").await;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(galera.site_db_host.split(':').next().unwrap())
        .tcp_port(
            galera
                .site_db_host
                .split(':')
                .nth(1)
                .unwrap()
                .parse()
                .unwrap(),
        )
        .user(Some(format!("wp_{a}")))
        .pass(Some(a_pw.clone()))
        .db_name(Some(format!("wp_{a}")));
    let mut conn = mysql_async::Conn::new(opts).await.unwrap();
    use mysql_async::prelude::Queryable;
    conn.query_drop("CREATE TABLE mine (v INT)").await.unwrap();
    let denied = conn
        .query_drop(format!("CREATE TABLE wp_{b}.theirs (v INT)"))
        .await;
    assert!(denied.is_err(), "A must not write B's schema");
    let denied: Result<Vec<String>, _> = conn
        .query(format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'wp_{b}'"
        ))
        .await;
    assert_eq!(
        denied.unwrap_or_default(),
        Vec::<String>::new(),
        "A sees none of B's tables"
    );
    conn.disconnect().await.unwrap();

    // Isolation: A's Redis user cannot GET, SCAN or KEYS B's keys.
    let topo = lab.redis().topology().await.unwrap();
    let redis_cfg = lab.backends.redis.as_ref().unwrap();
    let admin_url = format!(
        "redis://{}:{}@{}/",
        redis_cfg.admin_user.clone().unwrap_or_default(),
        redis_cfg
            .admin_password
            .as_ref()
            .map(|s| s.expose().to_owned())
            .unwrap_or_default(),
        topo.master
    );
    let mut admin = redis::Client::open(admin_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("wp_{b}:secret"))
        .arg("b-data")
        .query_async(&mut admin)
        .await
        .unwrap();
    let a_redis = p.secret(&a, "redis_password").await;
    let mut as_a = redis::Client::open(format!("redis://wp_{a}:{a_redis}@{}/", topo.master))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("wp_{a}:mine"))
        .arg("a-data")
        .query_async(&mut as_a)
        .await
        .unwrap();
    let get: redis::RedisResult<Option<String>> = redis::cmd("GET")
        .arg(format!("wp_{b}:secret"))
        .query_async(&mut as_a)
        .await;
    assert!(get.is_err(), "GET of B's key must fail: {get:?}");
    let keys: redis::RedisResult<Vec<String>> =
        redis::cmd("KEYS").arg("*").query_async(&mut as_a).await;
    assert!(keys.is_err(), "KEYS must fail: {keys:?}");
    let scan: redis::RedisResult<(String, Vec<String>)> =
        redis::cmd("SCAN").arg(0).query_async(&mut as_a).await;
    assert!(scan.is_err(), "SCAN must fail: {scan:?}");

    // Isolation of files: each site's service mounts its own Gluster directory and nothing
    // else of the volume (checked on the swarm's own record of both services).
    for (site, other) in [(&a, &b), (&b, &a)] {
        let mounts = service_mount_sources(&lab, site).await;
        assert!(
            mounts.iter().any(|m| m.ends_with(&format!("/{site}"))),
            "{site} mounts its directory: {mounts:?}"
        );
        assert!(
            !mounts.iter().any(|m| m.contains(other.as_str())),
            "{site} must not mount {other}'s files: {mounts:?}"
        );
        assert!(
            !mounts
                .iter()
                .any(|m| m.ends_with("/sites") || m.ends_with("/sites/")),
            "not the whole volume: {mounts:?}"
        );
    }

    // Drift, made by hand, repaired by one reconcile pass.
    let id_a = SiteResourceId::parse(&a).unwrap();
    for replica in &topo.replicas {
        let url = format!(
            "redis://{}:{}@{replica}/",
            redis_cfg.admin_user.clone().unwrap_or_default(),
            redis_cfg
                .admin_password
                .as_ref()
                .map(|s| s.expose().to_owned())
                .unwrap_or_default()
        );
        let mut c = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(format!("wp_{a}"))
            .query_async(&mut c)
            .await
            .unwrap();
    }
    lab.swarm().remove_service(&id_a).await.unwrap();
    let admin_db = galera.admin_url.expose().to_owned();
    let mut root = mysql_async::Conn::from_url(admin_db).await.unwrap();
    root.query_drop(format!("GRANT SELECT ON *.* TO `wp_{a}`@`%`"))
        .await
        .unwrap();
    root.disconnect().await.unwrap();
    lab.gluster()
        .set_quota(&id_a, 2 * 1024 * 1024 * 1024)
        .await
        .unwrap();
    let mut stale = backends::varnish::HostTable::default();
    stale.insert(
        backends::DomainName::parse("stale.lab.test").unwrap(),
        id_a.clone(),
        backends::varnish::HostState::Active,
    );
    lab.varnish().apply_host_table(&stale).await.unwrap();

    let ran = p.reconcile().await;
    let repairs = ran["sites"]["repairs"].to_string();
    for backend in ["redis", "swarm", "galera", "gluster", "varnish"] {
        assert!(
            repairs.contains(&format!("\"backend\":\"{backend}\"")),
            "{backend} repaired: {ran}"
        );
    }
    assert_present(&lab, &p, &a).await;
    let (_, status_list) = p
        .call(reqwest::Method::GET, "/v1/admin/reconcilers", None)
        .await;
    assert!(status_list.to_string().contains("\"sites\""));

    // Orphans: a database of a deleted site is removed (grace 0 here); a foreign one is only reported.
    let foreign = SiteResourceId::generate();
    let foreign_pw = SitePassword::generate();
    lab.galera()
        .ensure_site_database(&foreign, &foreign_pw)
        .await
        .unwrap();

    // Delete both; nothing is left anywhere.
    for site in [&a, &b] {
        let op = p.delete_site(site).await;
        assert_eq!(p.wait(&op).await["state"], "succeeded");
        assert_absent(&lab, site).await;
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("wp_{a}:*"))
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(keys.is_empty(), "the site's keys are gone: {keys:?}");
    let ran = p.reconcile().await;
    let orphans = ran["orphans"]["orphans"].to_string();
    assert!(
        orphans.contains(&foreign.resource_name()) && orphans.contains("\"foreign\":true"),
        "{ran}"
    );
    assert!(
        lab.galera()
            .observe_site_database(&foreign, None)
            .await
            .unwrap()
            .database_exists,
        "foreign resources are kept"
    );
    lab.galera().remove_site_database(&foreign).await.unwrap();
    p.stop().await;
}

#[tokio::test]
async fn a_failure_at_every_create_step_unwinds_to_nothing() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    for step in CREATE_STEPS {
        let p = Platform::start(&lab, &database, &format!("{step}=fail")).await;
        let tenant = p.prepare().await;
        let (site, op) = p
            .create_site(&tenant, &format!("fail-{}.lab.test", random()))
            .await;
        let done = p.wait(&op).await;
        assert_eq!(done["state"], "failed", "{step}: {done}");
        let states: Vec<&str> = done["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect();
        let failed_at = CREATE_STEPS.iter().position(|s| s == step).unwrap();
        assert!(
            states[..=failed_at].iter().all(|s| *s == "undone"),
            "{step}: {states:?}"
        );
        assert!(
            states[failed_at + 1..].iter().all(|s| *s == "pending"),
            "{step}: {states:?}"
        );
        assert_absent(&lab, &site).await;
        p.stop().await;
    }
}

#[tokio::test]
async fn every_step_run_twice_gives_the_same_state() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let p = Platform::start(&lab, &database, "*=twice").await;
    let tenant = p.prepare().await;
    let site = p.create_ready(&tenant, "twice").await;
    assert_present(&lab, &p, &site).await;
    let swarm_secrets = swarm_secrets(&lab, &site).await;
    assert_eq!(
        swarm_secrets.len(),
        backends::swarm::SecretKind::ALL.len(),
        "one secret per kind, not two: {swarm_secrets:?}"
    );
    // Suspend, resume and a plan change, each step twice too.
    let domain = p.domain(&site).await;
    let op = p.transition(&site, "suspend").await;
    assert_eq!(p.wait(&op).await["state"], "succeeded");
    assert_suspended(&lab, &site, &domain).await;
    let op = p.transition(&site, "resume").await;
    assert_eq!(p.wait(&op).await["state"], "succeeded");
    assert_present(&lab, &p, &site).await;
    let done = p.change_plan(&site, "business").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let storage = lab
        .gluster()
        .observe_site_storage(&SiteResourceId::parse(&site).unwrap())
        .await
        .unwrap();
    assert!(
        storage.is_converged(5 * 1024 * 1024 * 1024),
        "the business plan's quota: {storage:?}"
    );
    p.delete_and_vanish(&lab, &site).await;
    p.stop().await;
}

/// Suspend, resume and update go forward only: a failed step leaves the operation failed
/// and the site as the database says it is, which the next reconcile pass restores.
#[tokio::test]
async fn a_failed_suspend_is_repaired_by_the_next_reconcile_pass() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let p = Platform::start(&lab, &database, "scale_down=fail").await;
    let tenant = p.prepare().await;
    let site = p.create_ready(&tenant, "halfsusp").await;
    let op = p.transition(&site, "suspend").await;
    let done = p.wait(&op).await;
    assert_eq!(done["state"], "failed", "{done}");
    // The host table was already switched to the maintenance page, the service still runs.
    let (_, body) = p
        .call(reqwest::Method::GET, &format!("/v1/sites/{site}"), None)
        .await;
    assert_eq!(
        body["state"], "active",
        "a failed suspend leaves the site active"
    );
    let ran = p.reconcile().await;
    assert!(
        ran["sites"]["repairs"].to_string().contains("varnish"),
        "{ran}"
    );
    assert_present(&lab, &p, &site).await;
    p.delete_and_vanish(&lab, &site).await;
    p.stop().await;
}

/// A delete goes forward only: a failure at any of its steps leaves the site `failed` with
/// the operation saying why, and deleting it again removes what is left, everywhere.
#[tokio::test]
async fn a_failure_at_every_delete_step_is_finished_by_deleting_again() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let setup = Platform::start(&lab, &database, "").await;
    let tenant = setup.prepare().await;
    setup.stop().await;
    for step in DELETE_STEPS {
        let p = Platform::start(&lab, &database, &format!("{step}=fail")).await;
        let site = p.create_ready(&tenant, "faildel").await;
        let op = p.delete_site(&site).await;
        let done = p.wait(&op).await;
        assert_eq!(done["state"], "failed", "{step}: {done}");
        let (_, body) = p
            .call(reqwest::Method::GET, &format!("/v1/sites/{site}"), None)
            .await;
        assert_eq!(body["state"], "failed", "{step}: {body}");
        p.stop().await;
        let p = Platform::start(&lab, &database, "").await;
        let op = p.delete_site(&site).await;
        assert_eq!(
            p.wait(&op).await["state"],
            "succeeded",
            "{step}: second delete"
        );
        assert_absent(&lab, &site).await;
        p.stop().await;
    }
}

/// A delete that fails before removing the database leaves an orphan of a failed site;
/// with a grace of 0 the next reconcile pass removes it.
#[tokio::test]
async fn an_orphan_of_a_failed_delete_is_removed_after_the_grace() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let p = Platform::start(&lab, &database, "remove_database=refuse").await;
    let tenant = p.prepare().await;
    let site = p.create_ready(&tenant, "orphan").await;
    let op = p.delete_site(&site).await;
    assert_eq!(p.wait(&op).await["state"], "failed");
    let id = SiteResourceId::parse(&site).unwrap();
    assert!(
        lab.galera()
            .observe_site_database(&id, None)
            .await
            .unwrap()
            .database_exists
    );
    let ran = p.reconcile().await;
    let orphans = ran["orphans"].to_string();
    assert!(
        orphans.contains(&format!("wp_{site}")) && orphans.contains("orphan removed"),
        "{ran}"
    );
    assert!(
        lab.galera()
            .observe_site_database(&id, None)
            .await
            .unwrap()
            .is_absent()
    );
    p.stop().await;
}

/// Suspend, resume and update go forward only: a failure at any of their steps fails the
/// operation, leaves the site in the state the database holds, and one reconcile pass
/// brings every backend back to that state.
#[tokio::test]
async fn a_failure_at_every_suspend_resume_and_update_step_is_repaired() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let setup = Platform::start(&lab, &database, "").await;
    let tenant = setup.prepare().await;
    let site = setup.create_ready(&tenant, "forward").await;
    let domain = setup.domain(&site).await;
    setup.stop().await;
    for step in ["suspend_hosts", "scale_down", "mark_suspended"] {
        let p = failed_and_reconciled(&lab, &database, &site, "suspend", step).await;
        assert_present(&lab, &p, &site).await;
        p.stop().await;
    }
    transition_succeeds(&lab, &database, &site, "suspend").await;
    for step in ["scale_up", "publish_hosts", "mark_active"] {
        let p = failed_and_reconciled(&lab, &database, &site, "resume", step).await;
        assert_suspended(&lab, &site, &domain).await;
        p.stop().await;
    }
    transition_succeeds(&lab, &database, &site, "resume").await;
    let id = SiteResourceId::parse(&site).unwrap();
    for (i, step) in [
        "ensure_storage",
        "ensure_swarm_secrets",
        "ensure_service",
        "publish_hosts",
        "ban_hosts",
        "mark_updated",
    ]
    .into_iter()
    .enumerate()
    {
        let p = Platform::start(&lab, &database, &format!("{step}=fail")).await;
        let plan = if i % 2 == 0 { "business" } else { "starter" };
        let done = p.change_plan(&site, plan).await;
        assert_eq!(done["state"], "failed", "update failing at {step}");
        p.reconcile().await;
        let quota = if plan == "business" { 5 } else { 1 } * 1024 * 1024 * 1024;
        let storage = lab.gluster().observe_site_storage(&id).await.unwrap();
        assert!(
            storage.is_converged(quota),
            "{step}: the new plan's quota after repair: {storage:?}"
        );
        let service = lab.swarm().observe_service(&id).await.unwrap();
        assert!(
            service.exists && service.replicas == Some(1),
            "{step}: {service:?}"
        );
        p.stop().await;
    }
    let p = Platform::start(&lab, &database, "").await;
    p.delete_and_vanish(&lab, &site).await;
    p.stop().await;
}

/// A control plane failing at `step`, on which the site's `action` (suspend, resume) failed
/// and then one reconcile pass ran: the caller checks the repair and stops it.
async fn failed_and_reconciled(
    lab: &Lab,
    database: &str,
    site: &str,
    action: &str,
    step: &str,
) -> Platform {
    let p = Platform::start(lab, database, &format!("{step}=fail")).await;
    let op = p.transition(site, action).await;
    assert_eq!(
        p.wait(&op).await["state"],
        "failed",
        "{action} failing at {step}"
    );
    p.reconcile().await;
    p
}

/// The site's `action` on a control plane that fails nowhere, which must succeed.
async fn transition_succeeds(lab: &Lab, database: &str, site: &str, action: &str) {
    let p = Platform::start(lab, database, "").await;
    let op = p.transition(site, action).await;
    assert_eq!(p.wait(&op).await["state"], "succeeded");
    p.stop().await;
}

/// The service is scaled to zero and the edge answers our maintenance page for the domain.
async fn assert_suspended(lab: &Lab, site: &str, domain: &str) {
    let id = SiteResourceId::parse(site).unwrap();
    let service = lab.swarm().observe_service(&id).await.unwrap();
    assert!(
        service.exists && service.replicas == Some(0),
        "scaled to zero: {service:?}"
    );
    let vcl = lab.host_table();
    assert!(
        vcl.contains(domain) && vcl.contains("Site suspended"),
        "host table: {vcl}"
    );
    // Through the real edge (Traefik → Varnish): our 503, not a route-less 404.
    let mut answer = (0, String::new());
    for _ in 0..40 {
        if let Ok(r) = reqwest::Client::new()
            .get("http://127.0.0.1:23080/")
            .header("Host", domain)
            .send()
            .await
        {
            answer = (r.status().as_u16(), r.text().await.unwrap_or_default());
            if answer.0 == 503 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        answer.0, 503,
        "edge answer for a suspended site: {answer:?}"
    );
    assert!(
        answer.1.to_lowercase().contains("suspended"),
        "our maintenance page: {}",
        answer.1
    );
}

/// Kills the platform while `step` is in flight, restarts it, and returns the finished operation.
async fn kill_at(
    lab: &Lab,
    database: &str,
    step: &str,
    start: impl AsyncFnOnce(&Platform) -> String,
) -> (Value, Platform) {
    let mut p = Platform::start(lab, database, &format!("{step}=pause:60000")).await;
    let op = start(&p).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let body = p.operation(&op).await;
        let running = body["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == step && s["state"] == "running");
        if running {
            break;
        }
        assert!(Instant::now() < deadline, "{step} never ran: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    p.kill9();
    let _ = p.child.wait().await;
    let again = Platform::start(lab, database, "").await;
    let done = again.wait(&op).await;
    (done, again)
}

#[tokio::test]
async fn a_sigkill_at_every_step_of_create_and_delete_converges() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let setup = Platform::start(&lab, &database, "").await;
    let tenant = setup.prepare().await;
    setup.stop().await;
    // Pair the steps: round i kills the create at its i-th step, then the delete of the same
    // site at the delete's i-th step (both sagas have ten steps), so each round checks two
    // crashes for the price of one site.
    assert_eq!(CREATE_STEPS.len(), DELETE_STEPS.len());
    for (create_step, delete_step) in CREATE_STEPS.iter().zip(DELETE_STEPS) {
        let domain = format!("kill-{}.lab.test", random());
        let mut site = String::new();
        let (done, p) = kill_at(&lab, &database, create_step, async |p: &Platform| {
            let (s, op) = p.create_site(&tenant, &domain).await;
            site = s;
            op
        })
        .await;
        assert_eq!(
            done["state"], "succeeded",
            "create killed at {create_step}: {done}"
        );
        assert_present(&lab, &p, &site).await;
        let secrets = swarm_secrets(&lab, &site).await;
        assert_eq!(
            secrets.len(),
            backends::swarm::SecretKind::ALL.len(),
            "{create_step}: nothing doubled: {secrets:?}"
        );
        p.stop().await;
        let (done, p) = kill_at(&lab, &database, delete_step, async |p: &Platform| {
            p.delete_site(&site).await
        })
        .await;
        assert_eq!(
            done["state"], "succeeded",
            "delete killed at {delete_step}: {done}"
        );
        assert_absent(&lab, &site).await;
        p.stop().await;
    }
}

/// An anonymous or logged-in visitor of one site through the lab's edge
/// (127.0.0.1:23080: Traefik → Varnish → Traefik → the site's task).
struct Visitor {
    domain: String,
    http: reqwest::Client,
    /// `name=value` of the cookies WordPress set (empty: anonymous).
    cookies: std::collections::BTreeMap<String, String>,
}

struct Page {
    status: u16,
    cache: String,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Visitor {
    fn new(domain: &str) -> Self {
        Self {
            domain: domain.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            cookies: Default::default(),
        }
    }

    async fn send(&mut self, r: reqwest::RequestBuilder) -> Page {
        let mut r = r.header("Host", &self.domain);
        if !self.cookies.is_empty() {
            let jar = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("; ");
            r = r.header("Cookie", jar);
        }
        let response = r.send().await.unwrap();
        for c in response.headers().get_all("set-cookie") {
            let pair = c.to_str().unwrap_or("").split(';').next().unwrap_or("");
            if let Some((k, v)) = pair.split_once('=') {
                if v.is_empty() || v == "deleted" || v == "+" {
                    self.cookies.remove(k.trim());
                } else {
                    self.cookies.insert(k.trim().to_owned(), v.to_owned());
                }
            }
        }
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let cache = headers
            .get("x-pressdock-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        Page {
            status,
            cache,
            headers,
            body: response.text().await.unwrap_or_default(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let r = self.http.get(format!("http://127.0.0.1:23080{path}"));
        self.send(r).await
    }
}

/// Issue 5, end to end: a site created through the API serves WordPress with its title
/// through the edge, cached; its administrator logs in with the one-time password and
/// publishes; the post appears on the cached home page because the site's mu-plugin asked
/// for a purge through the agent; deleting the site leaves our not-found page.
#[tokio::test]
async fn a_created_site_serves_wordpress_through_the_cache_and_purges_on_publish() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let p = Platform::start_with_agents(&lab, &database).await;
    let tenant = p.prepare().await;
    let suffix = random();
    let domain = format!("rt-{suffix}.lab.test");
    let title = format!("Runtime {suffix} Café");
    let started = Instant::now();
    let (status, created) = p
        .call(
            reqwest::Method::POST,
            &format!("/v1/tenants/{tenant}/sites"),
            Some(json!({ "name": title, "domain": domain, "plan": "starter",
                          "admin_email": "owner@runtime.test" })),
        )
        .await;
    assert_eq!(status, 202, "{created}");
    let site = created["site"]["id"].as_str().unwrap().to_owned();
    let admin_user = created["admin"]["user"].as_str().unwrap().to_owned();
    let admin_password = created["admin"]["password"].as_str().unwrap().to_owned();
    assert_eq!(admin_user, "admin");
    let op = created["operation"]["id"].as_str().unwrap();
    let done = p.wait(op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let provisioned = started.elapsed();

    // The agent installs WordPress and reports ready: the site becomes active.
    let shown = p
        .wait_site(&site, Duration::from_secs(240), |b| {
            b["state"] == "active" && b["agent"]["ready"] == true
        })
        .await;
    let ready = started.elapsed();
    eprintln!(
        "site {site}: operation done after {provisioned:?}, active (agent ready) after {ready:?}"
    );
    let report = &shown["agent"]["report"];
    assert!(
        report["versions"]["wordpress"].is_string(),
        "the agent reports WordPress's version: {report}"
    );
    assert!(report["health"]["wordpress_installed"] == true, "{report}");
    assert!(shown["agent"]["node"].is_string(), "{shown}");
    assert!(
        !shown.to_string().contains(&admin_password),
        "the password is never shown again"
    );

    // Anonymous visitors: the home page with the site's title, then a Varnish HIT.
    let mut anon = Visitor::new(&domain);
    let mut home = anon.get("/").await;
    for _ in 0..60 {
        if home.status == 200 && home.body.contains(&title) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        home = anon.get("/").await;
    }
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(
        home.body.contains(&title),
        "the site's title on its home page"
    );
    let again = anon.get("/").await;
    assert_eq!(
        again.cache, "HIT",
        "the second request is served by Varnish"
    );
    assert!(again.body.contains(&title));

    // The administrator logs in with the one-time password.
    let mut admin = Visitor::new(&domain);
    admin
        .cookies
        .insert("wordpress_test_cookie".into(), "WP%20Cookie%20check".into());
    let login = admin
        .send(
            admin
                .http
                .post("http://127.0.0.1:23080/wp-login.php")
                .form(&[
                    ("log", admin_user.as_str()),
                    ("pwd", admin_password.as_str()),
                    ("wp-submit", "Log In"),
                    ("testcookie", "1"),
                ]),
        )
        .await;
    assert_eq!(login.status, 302, "login: {}", login.body);
    assert!(
        admin
            .cookies
            .keys()
            .any(|k| k.starts_with("wordpress_logged_in_")),
        "logged in: {:?}",
        admin.cookies.keys()
    );
    let logged_in = admin.get("/").await;
    assert_eq!(logged_in.status, 200);
    assert_eq!(
        logged_in.cache, "PASS",
        "a logged-in request bypasses the cache"
    );
    assert!(
        logged_in.body.contains("wpadminbar"),
        "the logged-in page has the admin bar"
    );

    // Publish a post through WordPress's REST API (cookie + nonce, as the editor does).
    let nonce = admin
        .get("/wp-admin/admin-ajax.php?action=rest-nonce")
        .await;
    assert_eq!(nonce.status, 200, "{}", nonce.body);
    let post_title = format!("Fresh news {}", random());
    let before = anon.get("/").await;
    assert_eq!(
        before.cache, "HIT",
        "the home page is cached before the post"
    );
    assert!(!before.body.contains(&post_title));
    // The anonymous REST API is cached too (issue 10): the post list, as a headless
    // front end reads it (plain permalinks here: the `?rest_route=` form).
    let rest_list = "/?rest_route=/wp/v2/posts&per_page=5";
    anon.get(rest_list).await;
    let rest_before = anon.get(rest_list).await;
    assert_eq!(rest_before.cache, "HIT", "the REST post list is cached");
    assert!(!rest_before.body.contains(&post_title));
    let published = admin
        .send(
            admin
                .http
                .post("http://127.0.0.1:23080/?rest_route=/wp/v2/posts")
                .header("X-WP-Nonce", nonce.body.trim())
                .json(&json!({ "title": post_title, "content": "Published in the lab.", "status": "publish" })),
        )
        .await;
    assert_eq!(published.status, 201, "publish: {}", published.body);
    let published_at = Instant::now();
    // The contract: a purge shows the post before the cached copy expires. WordPress
    // sends visitors no Cache-Control, so that is Varnish's default TTL (120 s) after
    // the copy was fetched, at most `before`'s age ago; seen after that, it proves nothing.
    let age: u64 = before
        .headers
        .get("age")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let expires = published_at + Duration::from_secs(120 - age.min(119));
    let mut after = anon.get("/").await;
    while !after.body.contains(&post_title) && Instant::now() < expires {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = anon.get("/").await;
    }
    assert!(
        after.body.contains(&post_title),
        "the post is on the cached home page (purged) before the old copy expired; cache: {}",
        after.cache
    );
    // Purged with the page: the REST list shows the post at once (same purge request).
    let rest_after = anon.get(rest_list).await;
    assert!(
        rest_after.body.contains(&post_title),
        "the REST post list is purged with the page ({}): {}",
        rest_after.cache,
        rest_after.body.chars().take(200).collect::<String>()
    );
    eprintln!(
        "post visible on the home page {:?} after publishing",
        published_at.elapsed()
    );

    // A tenant's purge through the API drops the cached home page.
    assert_eq!(anon.get("/").await.cache, "HIT");
    let (status, purged) = p
        .call(
            reqwest::Method::POST,
            &format!("/v1/sites/{site}/cache/purge"),
            Some(json!({ "paths": ["/"] })),
        )
        .await;
    assert_eq!(status, 200, "{purged}");
    assert!(purged["banned"].as_u64().unwrap() >= 1, "{purged}");
    assert_eq!(anon.get("/").await.cache, "MISS", "purged by the API");

    // Deleted: nothing left anywhere, and the edge answers our not-found page.
    p.delete_and_vanish(&lab, &site).await;
    let mut gone = anon.get("/").await;
    for _ in 0..40 {
        if gone.status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        gone = anon.get("/").await;
    }
    assert_eq!(gone.status, 404, "{}", gone.body);
    assert!(
        gone.body.contains("No site is configured for this address"),
        "our not-found page: {}",
        gone.body
    );
    assert_eq!(
        gone.headers
            .get("x-pressdock-edge")
            .and_then(|v| v.to_str().ok()),
        Some("not-found")
    );
    p.stop().await;
}

/// Issue 13 on the lab: a site deleted by mistake comes back. Its delete takes a final
/// backup to the lab's S3 first, listed under the deleted site and in the tenant's final
/// backups; `POST /v1/sites/{site}/restores` with it (`site.undelete`) makes every
/// resource again under the same id — database, router user, Redis ACL, Gluster folder
/// with its quota, swarm service, Varnish hosts — restores the backup into them, and the
/// site serves its own pages again on its domain and alias, with the change made in its
/// database after it was created (only the backup had it).
#[tokio::test]
async fn a_deleted_site_comes_back_from_its_final_backup_and_serves_its_pages_again() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    let p = Platform::start_with_final_backups(&lab, &database).await;
    let tenant = p.prepare().await;
    let suffix = random();
    let domain = format!("ud-{suffix}.lab.test");
    let (site, op) = p.create_site(&tenant, &domain).await;
    assert_eq!(p.wait(&op).await["state"], "succeeded");
    p.wait_site(&site, Duration::from_secs(240), |b| {
        b["state"] == "active" && b["agent"]["ready"] == true
    })
    .await;
    // A change in the site's database after its create: only the backup keeps it.
    let title = format!("Brought back {suffix}");
    let pool = sqlx::MySqlPool::connect(&format!("{}/wp_{site}", lab.router_url))
        .await
        .unwrap();
    sqlx::query("UPDATE wp_options SET option_value = ? WHERE option_name = 'blogname'")
        .bind(&title)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let op = p.delete_site(&site).await;
    let done = p.wait(&op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["steps"][0]["name"], "final_backup", "{done}");
    assert_absent(&lab, &site).await;
    let (status, page) = p
        .call(
            reqwest::Method::GET,
            &format!("/v1/sites/{site}/backups"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    let fin = &page["items"][0];
    assert_eq!(fin["kind"], "final", "{page}");
    assert_eq!(fin["state"], "complete", "{page}");
    let fin = fin["id"].as_str().unwrap().to_owned();
    let (status, finals) = p
        .call(
            reqwest::Method::GET,
            &format!("/v1/tenants/{tenant}/backups?kind=final"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{finals}");
    assert!(
        finals["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == fin.as_str() && b["site_id"] == site.as_str()),
        "{finals}"
    );

    let started = Instant::now();
    let (status, body) = p
        .call(
            reqwest::Method::POST,
            &format!("/v1/sites/{site}/restores"),
            Some(json!({ "backup": fin })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["operation"]["kind"], "site.undelete", "{body}");
    let done = p.wait(body["operation"]["id"].as_str().unwrap()).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let shown = p
        .wait_site(&site, Duration::from_secs(240), |b| {
            b["state"] == "active" && b["agent"]["ready"] == true
        })
        .await;
    eprintln!(
        "site {site} brought back: operation done and agent ready after {:?}",
        started.elapsed()
    );
    assert_eq!(shown["domain"], domain.as_str(), "{shown}");
    assert_eq!(
        shown["aliases"],
        json!([format!("www.{domain}")]),
        "{shown}"
    );
    assert_present(&lab, &p, &site).await;
    let mut visitor = Visitor::new(&domain);
    let mut home = visitor.get("/").await;
    for _ in 0..60 {
        if home.status == 200 && home.body.contains(&title) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        home = visitor.get("/").await;
    }
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(
        home.body.contains(&title),
        "the restored title on the home page"
    );
    // The alias is routed to the site again (WordPress answers it, redirecting to the
    // primary domain), not to the edge's not-found page.
    let alias = Visitor::new(&format!("www.{domain}")).get("/").await;
    assert!(
        alias.status == 200 || (300..400).contains(&alias.status),
        "the alias: {} {}",
        alias.status,
        alias.body
    );
    assert_eq!(
        alias.headers.get("x-pressdock-edge"),
        None,
        "the alias is routed"
    );

    p.delete_and_vanish(&lab, &site).await;
    p.stop().await;
}

/// `pressdock-infra` of this workspace, for changing the lab's nodes.
fn lab_tool(args: &[&str]) -> Duration {
    let started = Instant::now();
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pressdock-infra");
    let status = std::process::Command::new(bin)
        .arg("lab")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "pressdock-infra lab {args:?}: {status}");
    started.elapsed()
}

/// Requests to one site through the edge, one in flight, 200 ms apart, each with a new query so that
/// Varnish passes it to the site's task; every answer must be 200 with the site's title.
struct Prober {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Probed>,
}

/// What a [`Prober`] saw: requests sent, the failed ones, the slowest answer, and the
/// answers that took over 10 s (reported, not failed).
struct Probed {
    sent: u64,
    failures: Vec<String>,
    slowest: Duration,
    slow: Vec<String>,
}

impl Prober {
    fn start(domain: String, title: String) -> Self {
        let (stop, mut rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            // A visitor's browser waits; the edge itself gives up after Varnish's
            // first_byte_timeout (60 s). A slow answer is reported, not failed.
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap();
            let (mut sent, mut failures, mut slowest) = (0u64, Vec::new(), Duration::ZERO);
            let mut slow = Vec::new();
            let began = Instant::now();
            while !*rx.borrow() {
                sent += 1;
                let at = began.elapsed();
                let answer = http
                    .get(format!("http://127.0.0.1:23080/?probe={sent}-{}", random()))
                    .header("Host", &domain)
                    .send()
                    .await;
                match answer {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        // The edge's retries (Varnish, on a task or route being replaced).
                        let retries = r
                            .headers()
                            .get("x-pressdock-retries")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("0")
                            .to_owned();
                        let body = r.text().await.unwrap_or_default();
                        let took = began.elapsed() - at;
                        slowest = slowest.max(took);
                        if took > Duration::from_secs(10) {
                            slow.push(format!(
                                "request {sent} at {at:.1?} took {took:.1?} ({retries} retries at the edge)"
                            ));
                        }
                        if status != 200 || !body.contains(&title) {
                            failures.push(format!(
                                "request {sent} at {at:.1?} took {:.1?} ({retries} retries at the edge): {status}: {}",
                                began.elapsed() - at,
                                body.chars().take(120).collect::<String>()
                            ));
                        }
                    }
                    Err(e) => {
                        // The whole chain: reqwest's own message names only the URL.
                        let mut why = e.to_string();
                        let mut source = std::error::Error::source(&e);
                        while let Some(s) = source {
                            why.push_str(&format!(": {s}"));
                            source = s.source();
                        }
                        failures.push(format!(
                            "request {sent} at {at:.1?} took {:.1?}: error: {why}",
                            began.elapsed() - at
                        ))
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = rx.changed() => {}
                }
            }
            Probed {
                sent,
                failures,
                slowest,
                slow,
            }
        });
        Self { stop, task }
    }

    async fn finish(self) -> Probed {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// Stops the probers (one per site, in `sites`' order) and asserts that every site got at
/// least `min_sent` requests and that none failed; prints the totals and the slowest answer.
async fn no_failed_request(
    phase: &str,
    sites: &[(String, String, String)],
    probers: Vec<Prober>,
    min_sent: u64,
) {
    let (mut total, mut slowest) = (0, Duration::ZERO);
    for ((_, domain, _), prober) in sites.iter().zip(probers) {
        let seen = prober.finish().await;
        assert!(seen.sent >= min_sent, "{domain}: {} requests", seen.sent);
        assert!(
            seen.failures.is_empty(),
            "{phase}: {domain}: {} of {} failed: {:?}",
            seen.failures.len(),
            seen.sent,
            seen.failures
        );
        total += seen.sent;
        slowest = slowest.max(seen.slowest);
        if !seen.slow.is_empty() {
            eprintln!("{phase}: {domain}: slow answers: {:?}", seen.slow);
        }
    }
    eprintln!("{phase}: {total} requests, 0 failed, the slowest answered in {slowest:.1?}");
}

impl Platform {
    async fn site(&self, site: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/v1/sites/{site}"), None)
            .await
            .1
    }

    /// The site's primary domain.
    async fn domain(&self, site: &str) -> String {
        self.site(site).await["domain"].as_str().unwrap().to_owned()
    }

    /// `PATCH /v1/sites/{site}` to another plan: the finished operation.
    async fn change_plan(&self, site: &str, plan: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::PATCH,
                &format!("/v1/sites/{site}"),
                Some(json!({ "plan": plan })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        self.wait(body["operation"]["id"].as_str().unwrap()).await
    }

    /// Polls `GET /v1/sites/{site}` until `done` holds; returns that answer.
    async fn wait_site(
        &self,
        site: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let body = self.site(site).await;
            if done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "site {site} did not get there within {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits until no move is queued or running and `done` moves exist; returns the map.
    async fn moves_settled(&self, done: usize, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, map) = self.call(reqwest::Method::GET, "/v1/placement", None).await;
            assert_eq!(status, 200, "{map}");
            let recent = map["recent_moves"].as_array().unwrap();
            let finished = recent.iter().filter(|m| m["state"] == "done").count();
            let running = recent
                .iter()
                .filter(|m| m["state"] == "queued" || m["state"] == "moving")
                .count();
            assert!(
                recent.iter().all(|m| m["state"] != "failed"),
                "a move failed: {recent:?}"
            );
            if finished >= done && running == 0 {
                return map;
            }
            assert!(Instant::now() < deadline, "moves did not settle: {map}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Issue 6 on the lab (1 manager, then 3 workers): 12 sites on two workers; a third worker
/// joins and the placement loop moves its share there while every moved site answers
/// every request; a drained worker is emptied, its sites still answering; a worker whose
/// dockerd is killed has its sites serving elsewhere within the grace period plus 60 s.
#[tokio::test]
async fn sites_move_to_a_new_worker_off_a_drained_one_and_off_a_dead_one() {
    let Some((_guard, lab, database)) = begin().await else {
        return;
    };
    lab_tool(&["up", "--workers", "2", "--no-platform"]);
    let grace_secs = 20;
    let mut placement = toml::Table::new();
    placement.insert("interval_secs".into(), 2.into());
    placement.insert("down_grace_secs".into(), (grace_secs as i64).into());
    placement.insert("rebalance".into(), "auto".into());
    // The hysteresis of balance moves (issue 10) has its own API test; here the moves
    // back onto a worker follow at once, sites just moved included.
    placement.insert("balance_after_passes".into(), 2.into());
    placement.insert("balance_after_secs".into(), 2.into());
    placement.insert("move_cooldown_secs".into(), 0.into());
    let p = Platform::start_with_placement(&lab, &database, placement).await;
    let tenant = p.prepare().await;

    // Twelve sites, all active (WordPress installed and ready) on the two workers.
    let mut sites = Vec::new();
    for i in 0..12 {
        let domain = format!("mv{i}-{}.lab.test", random());
        let title = format!("Moving site {i} {}", random());
        let (status, created) = p
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/sites"),
                Some(json!({ "name": title, "domain": domain, "plan": "starter" })),
            )
            .await;
        assert_eq!(status, 202, "{created}");
        sites.push((
            created["site"]["id"].as_str().unwrap().to_owned(),
            domain,
            title,
        ));
    }
    let started = Instant::now();
    for (site, _, _) in &sites {
        p.wait_site(site, Duration::from_secs(420), |b| b["state"] == "active")
            .await;
    }
    eprintln!("12 sites active after {:?}", started.elapsed());
    let node_of = |v: &Value| v["node"].as_str().unwrap_or("").to_owned();
    let mut before = std::collections::BTreeMap::new();
    for (site, _, _) in &sites {
        before.insert(site.clone(), node_of(&p.site(site).await));
    }
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for n in before.values() {
        *counts.entry(n.clone()).or_default() += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [6, 6],
        "{counts:?}"
    );

    // Every site answers while a third worker joins and the loop rebalances.
    let probers: Vec<Prober> = sites
        .iter()
        .map(|(_, d, t)| Prober::start(d.clone(), t.clone()))
        .collect();
    let joined = lab_tool(&["up", "--workers", "3", "--no-platform"]);
    let join_started = Instant::now();
    let map = p.moves_settled(4, Duration::from_secs(300)).await;
    eprintln!(
        "worker joined in {joined:?} (lab up); 4 moves done {:?} later",
        join_started.elapsed()
    );
    let moves = map["recent_moves"].as_array().unwrap();
    assert_eq!(moves.len(), 4, "the planner's lower bound: {moves:?}");
    for m in moves {
        eprintln!(
            "  move {} {} -> {}: ready after {} s, {} s in all",
            m["domain"], m["from"], m["to"], m["seconds_to_ready"], m["seconds_total"]
        );
        assert_eq!(m["to"], "pdlab-w3", "{m}");
    }
    // One request in flight per site, one after the other with 200 ms between, from before
    // the worker joined until the moves are done (the last one is still in flight when
    // the prober is stopped): the phase is covered however slow the answers. How many that
    // makes depends on the machine (CI ci-b: 2 for one site at load ~40, each answer 12-15 s
    // long), so only one is required; what is asserted is that none failed.
    no_failed_request("join", &sites, probers, 1).await;
    // Every site active again once the probers stop. Not at once: under the probers, on 2
    // cores, a site that did not move can miss its agent's 3 s WordPress check for longer
    // than the report timeout and be `degraded` meanwhile (CI ci-1: php-fpm at its children
    // limit, 3 s an answer, no request failed); that is the platform saying so, not a move
    // going wrong. What is asserted is that each gets back to `active`.
    for (site, _, _) in &sites {
        p.wait_site(site, Duration::from_secs(180), |b| b["state"] == "active")
            .await;
    }

    // Drain pdlab-w1 through the API: all its sites move and keep answering.
    let (_, nodes) = p.call(reqwest::Method::GET, "/v1/nodes", None).await;
    let node_id = |name: &str| {
        nodes
            .as_array()
            .or(nodes["items"].as_array())
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .map(|n| n["id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let w1 = node_id("pdlab-w1");
    let probers: Vec<Prober> = sites
        .iter()
        .map(|(_, d, t)| Prober::start(d.clone(), t.clone()))
        .collect();
    let drain_started = Instant::now();
    let (status, _) = p
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/nodes/{w1}"),
            Some(json!({ "availability": "drain" })),
        )
        .await;
    assert_eq!(status, 200);
    let map = p.moves_settled(8, Duration::from_secs(300)).await;
    eprintln!("drain: 4 moves done after {:?}", drain_started.elapsed());
    let w1_node = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "pdlab-w1")
        .unwrap()
        .clone();
    assert!(w1_node["sites"].as_array().unwrap().is_empty(), "{w1_node}");
    no_failed_request("drain", &sites, probers, 1).await;

    // Bring pdlab-w1 back, then kill pdlab-w2's dockerd: its sites serve elsewhere within
    // the grace period plus 60 s.
    let (status, _) = p
        .call(
            reqwest::Method::PATCH,
            &format!("/v1/nodes/{w1}"),
            Some(json!({ "availability": "active" })),
        )
        .await;
    assert_eq!(status, 200);
    // w1 is empty and active again: the loop balances onto it; let it finish first.
    p.moves_settled(12, Duration::from_secs(300)).await;
    let mut on_w2 = Vec::new();
    for (site, domain, title) in &sites {
        if node_of(&p.site(site).await) == "pdlab-w2" {
            on_w2.push((site.clone(), domain.clone(), title.clone()));
        }
    }
    assert!(!on_w2.is_empty());
    let killed = Instant::now();
    lab_tool(&["node", "kill", "w2"]);
    let limit = Duration::from_secs(grace_secs + 60);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for (site, domain, title) in &on_w2 {
        loop {
            let ok = match http
                .get(format!("http://127.0.0.1:23080/?after-kill={}", random()))
                .header("Host", domain)
                .send()
                .await
            {
                Ok(r) => {
                    r.status() == 200 && r.text().await.unwrap_or_default().contains(title.as_str())
                }
                Err(_) => false,
            };
            let body = p.site(site).await;
            if ok && node_of(&body) != "pdlab-w2" {
                break;
            }
            assert!(
                killed.elapsed() < limit,
                "{domain} not serving elsewhere {limit:?} after the kill: {body}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    eprintln!(
        "worker killed: its {} sites served elsewhere after {:?} (grace {grace_secs} s)",
        on_w2.len(),
        killed.elapsed()
    );

    // Leave the lab as we found it: the worker back, the sites gone. The same database
    // under a control plane without the placement loop, so that no move races the deletes.
    p.moves_settled(12 + on_w2.len(), Duration::from_secs(300))
        .await;
    p.stop().await;
    lab_tool(&["node", "start", "w2"]);
    let q = Platform::start(&lab, &database, "").await;
    q.moves_settled(12 + on_w2.len(), Duration::from_secs(300))
        .await;
    let mut deletes = Vec::new();
    for (site, _, _) in &sites {
        deletes.push(q.delete_site(site).await);
    }
    for op in deletes {
        let done = q.wait(&op).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    q.stop().await;
}

/// The sweep at the start of every test here deletes from the lab's S3 the backups of the
/// sites the lab's own control plane does not know (the final backups of the test
/// platforms' sites), and nothing else: the objects of every site the lab knows, its demo
/// site's included, and objects outside a `<tenant>/<site>/` prefix stay. The lab's
/// platform keeps running (only the sweep runs): an object of a known site that goes
/// missing counts only if the lab still lists its backup as complete (its own retention
/// may prune one meanwhile).
#[tokio::test]
async fn the_sweep_removes_the_backups_of_sites_the_lab_does_not_know_and_no_other() {
    if !enabled() {
        return;
    }
    let _guard = LOCK.lock().await;
    let lab = Lab::read();
    let store = platform::backup::BackupStore::new(lab.backends.s3.as_ref().unwrap()).unwrap();
    let known = lab.known_sites().await.unwrap();
    assert!(!known.is_empty(), "the lab knows its demo site");
    let part = |key: &str, i: usize| key.split('/').nth(i).unwrap_or("").to_owned();
    let keys = async || -> std::collections::BTreeSet<String> {
        store
            .list("")
            .await
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect()
    };
    let of_known: std::collections::BTreeSet<String> = keys()
        .await
        .into_iter()
        .filter(|key| known.contains(&part(key, 1)))
        .collect();
    let known_with_backups: std::collections::BTreeSet<String> =
        of_known.iter().map(|key| part(key, 1)).collect();

    // A test platform's deleted site's final backup, another test's object outside any
    // site's prefix, and an object of ours under the lab's demo site's prefix (the demo
    // site may have no backup to watch).
    let (tenant, site, backup) = (random(), SiteResourceId::generate(), random());
    let left = [
        format!("{tenant}/{site}/{backup}/manifest.json"),
        format!("{tenant}/{site}/{backup}/database.sql.zst"),
    ];
    let other = format!("sweeptest-{}/{tenant}/{site}/probe.txt", random());
    let demo_probe = format!(
        "{}sweeptest-{}/probe.txt",
        lab.demo_prefix().await,
        random()
    );
    for key in left.iter().chain([&other, &demo_probe]) {
        store
            .put(key, b"left by a test".to_vec(), "application/octet-stream")
            .await
            .unwrap();
    }

    lab.sweep_leftovers().await;

    let after = keys().await;
    for key in &left {
        assert!(!after.contains(key), "{key} is removed");
    }
    assert!(after.contains(&other), "{other} is kept");
    assert!(after.contains(&demo_probe), "{demo_probe} is kept");
    let complete = lab.complete_backups().await.unwrap();
    let lost: Vec<&String> = of_known
        .iter()
        .filter(|key| !after.contains(*key) && complete.contains(&part(key, 2)))
        .collect();
    assert!(
        lost.is_empty(),
        "objects of sites the lab knows were removed: {lost:?}"
    );
    eprintln!(
        "the sweep removed the unknown site's {} objects and kept {} objects of {} site(s) \
         the lab knows ({} known in all), {demo_probe} and {other}",
        left.len(),
        of_known.len(),
        known_with_backups.len(),
        known.len(),
    );
    // Only our own objects: the prefixes hold nothing else.
    for probe in [&other, &demo_probe] {
        let folder = &probe[..probe.rfind('/').unwrap() + 1];
        assert_eq!(store.list(folder).await.unwrap().len(), 1, "{folder}");
        store.remove_prefix(folder, &[]).await.unwrap();
    }
}

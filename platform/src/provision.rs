//! Provisioning: the per-site resource operations the sagas' steps call
//! (`crate::sagas::site_steps`), over the drivers of the `backends` crate, and the
//! secrets each site needs.
//!
//! A backend whose `[backends.*]` section is absent has no steps (each saga's list says
//! which backend a step needs). With no backends at all the platform is a control plane
//! only (slots are reserved, nothing is created), which is what the control-plane tests use.
//!
//! Every operation is idempotent because every driver call is (`ensure_*` converges,
//! `remove_*` treats "already gone" as success). Each driver's failure carries its own
//! public message (a Varnish failure is not "the database is unreachable").

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use anyhow::{Context, anyhow};
use backends::{
    BackendsConfig, DbRouter, DomainName, EdgeCache, GaleraDriver, GlusterDriver,
    RedisSentinelDriver, Secret, SiteCache, SiteDatabase, SitePassword, SiteResourceId,
    SiteRuntime, SiteStorage, SwarmDriver, VarnishDriver,
    router::Router,
    swarm::{NodeId, PlanResources, SecretKind, SiteServiceParams},
    varnish::{HostState, HostTable},
};
use sqlx::MySqlPool;

use crate::{crypto::SecretBox, step_error::StepError};

/// The backends: every configured driver (each called through its trait of the
/// `backends` crate: `SiteDatabase`, `DbRouter`, `SiteCache`, `SiteStorage`,
/// `SiteRuntime`, `EdgeCache`), built once at start, with what the per-site operations
/// need beside them (the key that opens the sites' secrets, the turns some backends
/// need). The sagas reach the cluster only through it. What the sagas are configured
/// with (`[agent] control_url`, `[placement]`) is the runner's (`sagas::SagaSettings`),
/// and waking the runner is `AppState`'s (`state::RunnerWake`).
pub struct Backends {
    pub galera: Option<GaleraDriver>,
    pub router: Option<Router>,
    pub redis: Option<RedisSentinelDriver>,
    pub gluster: Option<GlusterDriver>,
    pub varnish: Option<VarnishDriver>,
    pub swarm: Option<SwarmDriver>,
    pub config: BackendsConfig,
    pub secrets: SecretBox,
    /// glusterd runs one volume transaction at a time and refuses a concurrent one
    /// ("Another transaction is in progress"; measured in the lab: of 6 concurrent
    /// `limit-usage` calls 2 succeeded, 4 were refused after ~0.2 s): this process's
    /// quota calls take turns, first come first served. Calls of other processes (other
    /// replicas) are retried by the driver on that refusal.
    gluster_turn: tokio::sync::Mutex<()>,
    /// The host table is one file and one VCL per instance: loads in this process take
    /// turns so that a table is never loaded under another table's name, and changes
    /// waiting for the turn are loaded together (`crate::edge_hosts`).
    host_loads: crate::edge_hosts::HostLoads,
    /// A warm-up of the host table waits for the turn ([`Backends::warm_hosts`]).
    hosts_warming: std::sync::atomic::AtomicBool,
    /// The table this process last loaded on every instance (`None`: unknown, after a
    /// failed load): a site step whose entry it already holds loads nothing and does not
    /// wait for the turn ([`Backends::publish_hosts`]).
    loaded_hosts: std::sync::Mutex<Option<HostTable>>,
    /// Backups' rules (`[backups]`): whether a delete takes a final backup.
    pub backups: crate::config::BackupsConfig,
}

/// A secret of the site, opened with `secrets` (the backends' key, which is also the
/// application's: an agent's token is checked with it, without the drivers).
pub async fn open_secret(
    db: &MySqlPool,
    secrets: &SecretBox,
    id: &SiteResourceId,
    kind: SecretKind,
) -> Result<Secret, StepError> {
    let row: Option<(Vec<u8>, Vec<u8>)> =
        sqlx::query_as("SELECT nonce, ciphertext FROM site_secrets WHERE site_id = ? AND kind = ?")
            .bind(id.as_str())
            .bind(kind.as_str())
            .fetch_optional(db)
            .await?;
    let (nonce, sealed) =
        row.ok_or_else(|| permanent(anyhow!("site {id} has no {} secret", kind.as_str())))?;
    let context = format!("{}/{}", id.as_str(), kind.as_str());
    Ok(Secret::new(
        secrets.open(&context, &nonce, &sealed).map_err(permanent)?,
    ))
}

/// How long a host-table warm-up waits for the rest of a burst's rows before it reads
/// the table ([`Backends::warm_hosts`]): short beside a create's other steps, which run
/// meanwhile.
const WARM_GATHER: std::time::Duration = std::time::Duration::from_millis(300);

/// The secrets of a site, by kind.
pub const SECRET_KINDS: [SecretKind; 5] = SecretKind::ALL;

/// A driver's error as a step's: `public` names the dependency for the operation's
/// readers, `context` starts the internal chain.
fn retryable(
    public: &'static str,
    context: &'static str,
) -> impl FnOnce(backends::Error) -> StepError {
    move |err| StepError::backend(public, context, err)
}

/// A fault of the platform's own data (a secret that does not open, an id that does not
/// parse): permanent, and nothing a tenant can act on.
fn permanent(err: impl Into<anyhow::Error>) -> StepError {
    StepError::internal(err)
}

impl Backends {
    /// Builds the drivers of the configured sections.
    pub fn from_config(table: &toml::Table, secret_key: &[u8]) -> anyhow::Result<Self> {
        // Credentials given as `{ file = "…" }` are read now (crate::config).
        let mut value = toml::Value::Table(table.clone());
        crate::config::resolve_secret_files(&mut value, "backends")?;
        let config: BackendsConfig = value
            .try_into()
            .context("invalid [backends] configuration")?;
        let galera = config
            .galera
            .as_ref()
            .map(GaleraDriver::new)
            .transpose()
            .context("backends.galera")?;
        let router = config
            .galera
            .as_ref()
            .map(Router::from_config)
            .transpose()
            .context("backends.galera router")?;
        let redis = config
            .redis
            .as_ref()
            .map(RedisSentinelDriver::new)
            .transpose()
            .context("backends.redis")?;
        let gluster = config
            .gluster
            .as_ref()
            .map(GlusterDriver::new)
            .transpose()
            .context("backends.gluster")?;
        let varnish = config
            .varnish
            .as_ref()
            .map(VarnishDriver::new)
            .transpose()
            .context("backends.varnish")?;
        let swarm = config
            .swarm
            .as_ref()
            .map(SwarmDriver::new)
            .transpose()
            .context("backends.swarm")?;
        Ok(Self {
            galera,
            router,
            redis,
            gluster,
            varnish,
            swarm,
            config,
            secrets: SecretBox::new(secret_key),
            gluster_turn: tokio::sync::Mutex::new(()),
            host_loads: crate::edge_hosts::host_loads(),
            hosts_warming: Default::default(),
            loaded_hosts: Default::default(),
            backups: Default::default(),
        })
    }

    pub fn with_backups(mut self, backups: crate::config::BackupsConfig) -> Self {
        self.backups = backups;
        self
    }

    /// Whether backups can be taken here: the bucket, the database and the files.
    pub fn backups_configured(&self) -> bool {
        self.config.s3.is_some() && self.config.galera.is_some() && self.config.gluster.is_some()
    }

    /// Brings the site's service to its spec (after its placement changed); its agent
    /// reports to `control_url`.
    pub async fn ensure_site_service(
        &self,
        db: &MySqlPool,
        site: &str,
        control_url: Option<&str>,
    ) -> Result<(), StepError> {
        let id = SiteResourceId::parse(site).map_err(permanent)?;
        self.ensure_service(db, &id, false, control_url).await
    }

    /// Agents report readiness when they are given a URL to report to and there is a
    /// swarm to run them (so `active` waits for the first ready report).
    pub fn agents_report(&self, control_url: Option<&str>) -> bool {
        control_url.is_some() && self.swarm.is_some()
    }

    /// Generates the first administrator's password of a new site and stores it sealed
    /// in the site's transaction. Returns it for the one answer that shows it.
    pub async fn store_admin_password(
        &self,
        tx: &mut sqlx::MySqlConnection,
        site_id: &str,
    ) -> anyhow::Result<Secret> {
        let value = SitePassword::generate().expose().to_owned();
        let kind = SecretKind::AdminPassword;
        let context = format!("{site_id}/{}", kind.as_str());
        let (nonce, sealed) = self.secrets.seal(&context, &value)?;
        sqlx::query(
            "INSERT INTO site_secrets (site_id, kind, nonce, ciphertext) VALUES (?, ?, ?, ?)",
        )
        .bind(site_id)
        .bind(kind.as_str())
        .bind(&nonce[..])
        .bind(&sealed)
        .execute(&mut *tx)
        .await?;
        Ok(Secret::new(value))
    }

    /// Loads the host table in the background, soon. The table carries every site being
    /// created (from its row), so a site whose create calls this first finds its hosts
    /// loaded when its own `publish_hosts` comes, after its other steps, instead of
    /// waiting then for a VCL compile (1–3 s). Only a head start: a failed warm-up is
    /// logged, and the step loads as it always did. One warm-up waits for the turn at a
    /// time; a call that finds it waiting is carried by it (it reads the table after).
    pub fn warm_hosts(self: &Arc<Self>, db: &MySqlPool) {
        use std::sync::atomic::Ordering;
        if self.varnish.is_none() || self.hosts_warming.swap(true, Ordering::AcqRel) {
            return;
        }
        let (backends, db) = (self.clone(), db.clone());
        tokio::spawn(async move {
            // Creates come in bursts (an agency's twenty sites): the rows of a burst's
            // other requests, committed within this pause, are in the same table, where a
            // warm-up read at once held only the first site and a second compile followed.
            tokio::time::sleep(WARM_GATHER).await;
            let _turn = backends.host_loads.turn().await;
            backends.hosts_warming.store(false, Ordering::Release);
            let loaded = match host_table(&db, &[]).await {
                Ok(table) => backends.load_hosts(&table).await,
                Err(e) => Err(e),
            };
            if let Err(e) = loaded {
                tracing::warn!(error = %e.internal_message(), "warming the host table failed; the sites' own steps load it");
            }
        });
    }

    /// Loads `table` on every instance and remembers it as loaded (forgets what was
    /// loaded when the load fails: an instance may hold either table). The caller holds
    /// the turn.
    pub(crate) async fn load_hosts(&self, table: &HostTable) -> Result<(), StepError> {
        let Some(varnish) = &self.varnish else {
            return Ok(());
        };
        let loaded = load_host_table(varnish, table).await;
        self.remember_hosts(loaded.is_ok().then(|| table.clone()));
        loaded
    }

    /// Records the table every instance holds (`None`: not known), for a caller holding
    /// the turn that found or loaded it (the reconciler).
    pub(crate) fn remember_hosts(&self, table: Option<HostTable>) {
        *self.loaded_hosts.lock().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// Holds the host table for the caller (the reconciler compares and reloads it).
    pub async fn varnish_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.host_loads.turn().await
    }

    pub fn any(&self) -> bool {
        self.galera.is_some()
            || self.redis.is_some()
            || self.gluster.is_some()
            || self.varnish.is_some()
            || self.swarm.is_some()
    }

    pub async fn generate_secrets(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
    ) -> Result<(), StepError> {
        let mut sealed = Vec::with_capacity(SECRET_KINDS.len());
        for kind in SECRET_KINDS {
            let value = match kind {
                SecretKind::WpSalts => wp_salts(),
                _ => SitePassword::generate().expose().to_owned(),
            };
            let context = format!("{}/{}", id.as_str(), kind.as_str());
            let (nonce, ciphertext) = self.secrets.seal(&context, &value).map_err(permanent)?;
            sealed.push((kind, nonce, ciphertext));
        }
        // Every kind in one statement (one commit, where it was one per kind). INSERT
        // IGNORE: a second run keeps the first run's secrets, kind by kind.
        let mut insert = sqlx::QueryBuilder::new(
            "INSERT IGNORE INTO site_secrets (site_id, kind, nonce, ciphertext) ",
        );
        insert.push_values(sealed, |mut row, (kind, nonce, ciphertext)| {
            row.push_bind(id.as_str().to_owned())
                .push_bind(kind.as_str())
                .push_bind(nonce.to_vec())
                .push_bind(ciphertext);
        });
        insert.build().execute(db).await?;
        Ok(())
    }

    /// A secret of the site, decrypted.
    pub async fn secret(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
        kind: SecretKind,
    ) -> Result<Secret, StepError> {
        open_secret(db, &self.secrets, id, kind).await
    }

    async fn password(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
        kind: SecretKind,
    ) -> Result<SitePassword, StepError> {
        let secret = self.secret(db, id, kind).await?;
        SitePassword::parse(secret.expose()).map_err(permanent)
    }

    pub async fn ensure_database(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
    ) -> Result<(), StepError> {
        let Some(galera) = &self.galera else {
            return Ok(());
        };
        let password = self.password(db, id, SecretKind::DbPassword).await?;
        galera
            .ensure_site_database(id, &password)
            .await
            .map(drop)
            .map_err(retryable(
                "the database server did not prepare the site's database",
                "ensuring the database",
            ))
    }

    pub async fn remove_database(&self, id: &SiteResourceId) -> Result<(), StepError> {
        let Some(galera) = &self.galera else {
            return Ok(());
        };
        galera.remove_site_database(id).await.map_err(retryable(
            "the database server did not remove the site's database",
            "removing the database",
        ))
    }

    pub(crate) async fn ensure_router_user(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
    ) -> Result<(), StepError> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        let password = self.password(db, id, SecretKind::DbPassword).await?;
        router
            .ensure_router_user(id, &password)
            .await
            .map(drop)
            .map_err(retryable(
                "the database router did not accept the site's user",
                "ensuring the DB router user",
            ))
    }

    pub(crate) async fn remove_router_user(&self, id: &SiteResourceId) -> Result<(), StepError> {
        let Some(router) = &self.router else {
            return Ok(());
        };
        router.remove_router_user(id).await.map_err(retryable(
            "the database router did not remove the site's user",
            "removing the DB router user",
        ))
    }

    pub(crate) async fn ensure_cache_user(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
    ) -> Result<(), StepError> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        let password = self.password(db, id, SecretKind::RedisPassword).await?;
        redis
            .ensure_site_cache(id, &password)
            .await
            .map(drop)
            .map_err(retryable(
                "the object cache did not accept the site's user",
                "ensuring the Redis ACL user",
            ))
    }

    pub(crate) async fn remove_cache_user(&self, id: &SiteResourceId) -> Result<(), StepError> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        redis
            .remove_site_cache(id)
            .await
            .map(drop)
            .map_err(retryable(
                "the object cache did not remove the site's user",
                "removing the Redis ACL user",
            ))
    }

    /// Deletes the site's object-cache keys (`wp_<id>:*`), keeping its user: after a
    /// restore, nothing cached from the replaced database is read again.
    pub(crate) async fn flush_cache(&self, id: &SiteResourceId) -> Result<(), StepError> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        redis.flush_site_keys(id).await.map(drop).map_err(retryable(
            "the object cache could not be emptied",
            "flushing the site's Redis keys",
        ))
    }

    async fn quota_bytes(db: &MySqlPool, id: &SiteResourceId) -> Result<u64, StepError> {
        let mb: i32 = sqlx::query_scalar(
            "SELECT p.storage_mb FROM sites s JOIN plans p ON p.id = s.plan_id WHERE s.id = ?",
        )
        .bind(id.as_str())
        .fetch_one(db)
        .await?;
        Ok(u64::try_from(mb).unwrap_or(0) * 1024 * 1024)
    }

    pub(crate) async fn ensure_storage(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
    ) -> Result<(), StepError> {
        let Some(gluster) = &self.gluster else {
            return Ok(());
        };
        let quota = Self::quota_bytes(db, id).await?;
        // A spare made ahead of time with this quota, renamed into place: the directory has
        // its limit from its first moment and the create takes no glusterd transaction
        // (`refill_spares` makes them, off the create path). Only for a directory that does
        // not exist yet: a step run again after a crash converges the usual way below.
        if gluster.config().spares > 0 {
            let public = "the file storage did not prepare the site's folder";
            let (exists, _) = gluster
                .observe_directory(id)
                .await
                .map_err(retryable(public, "looking for the site's storage"))?;
            if !exists
                && gluster
                    .claim_spare(id, quota)
                    .await
                    .map_err(retryable(public, "taking a spare directory"))?
            {
                return Ok(());
            }
        }
        // What `ensure_site_storage` does, with only the quota in the turn: the directory
        // (mkdir, chown, chmod through the mount: round trips to the bricks) is no
        // glusterd transaction, so sagas make theirs side by side and hold the turn for
        // the one `limit-usage` alone.
        gluster.ensure_directory(id).await.map_err(retryable(
            "the file storage did not prepare the site's folder",
            "ensuring the site's storage",
        ))?;
        let _turn = self.gluster_turn.lock().await;
        gluster.set_quota(id, quota).await.map_err(retryable(
            "the file storage did not prepare the site's folder",
            "ensuring the site's storage",
        ))
    }

    /// Keeps `[backends.gluster] spares` spare directories ready for each plan's quota:
    /// removes unfinished ones (a run stopped half-way), then makes the missing ones, one
    /// volume transaction each, each in its own Gluster turn (a saga waits for one call at
    /// most). Runs in one process at a time (`server`, under a named lock). Returns the
    /// number made.
    pub async fn refill_spares(&self, db: &MySqlPool) -> anyhow::Result<usize> {
        let Some(gluster) = &self.gluster else {
            return Ok(0);
        };
        let wanted = gluster.config().spares as usize;
        if wanted == 0 {
            return Ok(0);
        }
        let sizes: Vec<i32> = sqlx::query_scalar("SELECT DISTINCT storage_mb FROM plans")
            .fetch_all(db)
            .await?;
        let mut made = 0;
        for mb in sizes {
            let bytes = u64::try_from(mb).unwrap_or(0) * 1024 * 1024;
            if bytes == 0 {
                continue;
            }
            let spares = gluster.list_spares(bytes).await?;
            for name in &spares.unfinished {
                let _turn = self.gluster_turn.lock().await;
                gluster
                    .remove_spare(bytes, name)
                    .await
                    .with_context(|| format!("removing unfinished spare {name}"))?;
            }
            for _ in spares.ready.len()..wanted {
                let _turn = self.gluster_turn.lock().await;
                gluster
                    .make_spare(bytes)
                    .await
                    .with_context(|| format!("making a spare directory of {bytes} bytes"))?;
                made += 1;
            }
        }
        Ok(made)
    }

    /// The spares' loop inside `serve`: a refill every `interval`, in one process at a
    /// time across replicas (a MariaDB named lock on a connection of its own).
    pub async fn run_spares(
        self: std::sync::Arc<Self>,
        db: MySqlPool,
        interval: std::time::Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let pass = async {
                let mut lock = db.acquire().await?;
                let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('pressdock_spares', 0)")
                    .fetch_one(&mut *lock)
                    .await?;
                if got != Some(1) {
                    return anyhow::Ok(0);
                }
                let made = self.refill_spares(&db).await;
                sqlx::query("DO RELEASE_LOCK('pressdock_spares')")
                    .execute(&mut *lock)
                    .await?;
                made
            };
            match pass.await {
                Ok(0) => {}
                Ok(made) => tracing::info!(made, "made spare site directories"),
                Err(err) => tracing::warn!(
                    error = format!("{err:#}"),
                    "refilling spare directories failed"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    pub(crate) async fn remove_storage(&self, id: &SiteResourceId) -> Result<(), StepError> {
        let Some(gluster) = &self.gluster else {
            return Ok(());
        };
        let _turn = self.gluster_turn.lock().await;
        gluster.remove_site_storage(id).await.map_err(retryable(
            "the file storage did not remove the site's folder",
            "removing the site's storage",
        ))
    }

    pub(crate) async fn ensure_swarm_secrets(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
    ) -> Result<BTreeMap<SecretKind, backends::swarm::SecretRef>, StepError> {
        let Some(swarm) = &self.swarm else {
            return Ok(BTreeMap::new());
        };
        // Every kind's row in one query, then one listing of the site's swarm secrets:
        // `service_params` comes here again for the ids (docs/benchmarks.md, provisioning).
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> =
            sqlx::query_as("SELECT kind, nonce, ciphertext FROM site_secrets WHERE site_id = ?")
                .bind(id.as_str())
                .fetch_all(db)
                .await?;
        let mut wanted = Vec::with_capacity(SECRET_KINDS.len());
        for kind in SECRET_KINDS {
            let (_, nonce, sealed) = rows
                .iter()
                .find(|(k, _, _)| k == kind.as_str())
                .ok_or_else(|| permanent(anyhow!("site {id} has no {} secret", kind.as_str())))?;
            let context = format!("{}/{}", id.as_str(), kind.as_str());
            let data = self
                .secrets
                .open(&context, nonce, sealed)
                .map_err(permanent)?;
            wanted.push((kind, Secret::new(data)));
        }
        swarm
            .ensure_site_secrets(id, &wanted)
            .await
            .map_err(retryable(
                "the container platform did not store the site's credentials",
                "ensuring the swarm secrets",
            ))
    }

    pub(crate) async fn remove_swarm_secrets(&self, id: &SiteResourceId) -> Result<(), StepError> {
        let Some(swarm) = &self.swarm else {
            return Ok(());
        };
        swarm
            .prune_site_secrets(id, &[])
            .await
            .map(drop)
            .map_err(retryable(
                "the container platform did not remove the site's credentials",
                "removing the swarm secrets",
            ))
    }

    /// Assembles the service's parameters from the database and the secrets; the site's
    /// agent reports to `control_url` (`[agent]`; `None`: it does not report).
    pub async fn service_params(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
        control_url: Option<&str>,
    ) -> Result<SiteServiceParams, StepError> {
        #[allow(clippy::type_complexity)]
        let (
            swarm_node,
            node_name,
            memory_mb,
            cpu_millis,
            state,
            generation,
            primary,
            title,
            admin_user,
            admin_email,
        ): (
            Option<String>,
            String,
            i32,
            i32,
            String,
            i64,
            String,
            String,
            String,
            String,
        ) = sqlx::query_as(
            "SELECT n.swarm_node_id, n.name, p.memory_mb, p.cpu_millis, s.state, s.generation, \
                 s.primary_domain, s.name, s.admin_user, s.admin_email FROM sites s \
                 JOIN plans p ON p.id = s.plan_id JOIN placements pl ON pl.site_id = s.id \
                 JOIN nodes n ON n.id = pl.node_id WHERE s.id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(db)
        .await?
        .ok_or_else(|| permanent(anyhow!("site {id} is not placed on a worker")))?;
        let swarm_node = swarm_node.ok_or_else(|| {
            permanent(anyhow!(
                "worker {node_name} has no swarm node id; sync nodes from the swarm"
            ))
        })?;
        let node = NodeId::parse(&swarm_node).map_err(permanent)?;
        let domains = site_domains(db, id).await?;
        let primary_domain = DomainName::parse(&primary).map_err(permanent)?;
        let secrets = self.ensure_swarm_secrets(db, id).await?;
        let gluster = self
            .gluster
            .as_ref()
            .ok_or_else(|| permanent(anyhow!("the swarm backend needs backends.gluster")))?;
        let galera = self
            .config
            .galera
            .as_ref()
            .ok_or_else(|| permanent(anyhow!("the swarm backend needs backends.galera")))?;
        let redis = self
            .config
            .redis
            .as_ref()
            .ok_or_else(|| permanent(anyhow!("the swarm backend needs backends.redis")))?;
        let memory = u64::try_from(memory_mb).unwrap_or(256) * 1024 * 1024;
        let cpu = u32::try_from(cpu_millis).unwrap_or(250);
        Ok(SiteServiceParams {
            id: id.clone(),
            domains,
            primary_domain,
            agent: backends::swarm::AgentParams {
                control_url: control_url.map(str::to_owned),
                title,
                admin_user,
                admin_email,
            },
            node,
            resources: PlanResources {
                cpu_limit_millis: cpu,
                memory_limit_bytes: memory,
                cpu_reservation_millis: cpu / 4,
                memory_reservation_bytes: memory / 4,
            },
            secrets,
            wp_content_source: gluster.node_dir(id),
            db_host: galera.site_db_host.clone(),
            redis_sentinels: redis.sentinels.clone(),
            redis_master_name: redis.master_name.clone(),
            extra_env: BTreeMap::new(),
            image: None,
            suspended: state == "suspended",
            force_update: u64::try_from(generation).unwrap_or(0),
        })
    }

    /// `create`: the site is new (its create saga): `service create` first, and only
    /// when a service exists the inspect-and-converge of `ensure_service`.
    pub(crate) async fn ensure_service(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
        create: bool,
        control_url: Option<&str>,
    ) -> Result<(), StepError> {
        let Some(swarm) = &self.swarm else {
            return Ok(());
        };
        let params = self.service_params(db, id, control_url).await?;
        let state = if create {
            swarm.create_or_ensure_service(&params).await
        } else {
            swarm.ensure_service(&params).await
        };
        state.map(drop).map_err(retryable(
            "the container platform did not run the site's service",
            "ensuring the swarm service",
        ))
    }

    pub(crate) async fn scale(&self, id: &SiteResourceId, replicas: u64) -> Result<(), StepError> {
        let Some(swarm) = &self.swarm else {
            return Ok(());
        };
        swarm
            .scale_service(id, replicas)
            .await
            .map(drop)
            .map_err(retryable(
                "the container platform did not scale the site's service",
                "scaling the swarm service",
            ))
    }

    pub(crate) async fn remove_service(&self, id: &SiteResourceId) -> Result<(), StepError> {
        let Some(swarm) = &self.swarm else {
            return Ok(());
        };
        swarm.remove_service(id).await.map_err(retryable(
            "the container platform did not remove the site's service",
            "removing the swarm service",
        ))
    }

    /// Loads the host table of every live site on every Varnish, with one site's entry
    /// overridden (`None`: left out). Changes of sites waiting at the same time are loaded
    /// as one table (one VCL compile for all of them). A site whose entry the last loaded
    /// table already holds as wanted, still active on every instance (a burst's sites,
    /// loaded by the warm-up their first step started), returns at once, without waiting
    /// for a load of other sites' changes: any later load reads the same rows, and only
    /// the site's own steps override its entry.
    pub async fn publish_hosts(
        &self,
        db: &MySqlPool,
        site: Option<(&SiteResourceId, Option<HostState>)>,
    ) -> Result<(), StepError> {
        if self.varnish.is_none() {
            return Ok(());
        }
        let Some((id, state)) = site else {
            let _turn = self.host_loads.turn().await;
            return self.load_hosts(&host_table(db, &[]).await?).await;
        };
        let domains = site_domains(db, id).await?;
        if self.loaded_and_active(&[(id, state, &domains)]).await {
            return Ok(());
        }
        let leader = match self.host_loads.join(id.clone(), (state, domains)).await {
            crate::group::Turn::Done(outcome) => {
                return outcome
                    .map_err(|(public, cause)| StepError::retryable(public, anyhow!("{cause}")));
            }
            crate::group::Turn::Lead(leader) => leader,
        };
        // The turn came after a load that may have carried every waiting change (a
        // burst's sites waiting on the warm-up that holds them): nothing to read or load.
        let wants: Vec<_> = leader
            .changes
            .iter()
            .map(|(id, (state, domains))| (id, *state, domains))
            .collect();
        let loaded = if self.loaded_and_active(&wants).await {
            Ok(())
        } else {
            let overrides: Vec<crate::edge_hosts::Override> = leader
                .changes
                .iter()
                .map(|(id, (state, _))| (id.clone(), *state))
                .collect();
            match host_table(db, &overrides).await {
                Ok(table) => self.load_hosts(&table).await,
                Err(e) => Err(e),
            }
        };
        leader.finish(
            loaded
                .as_ref()
                .map(drop)
                .map_err(|e| (e.public_message(), e.internal_message())),
        );
        loaded
    }

    /// Whether the table last loaded holds every site as wanted ([`holds_site`]) and is
    /// still the one every instance runs: remembered is not enough (an instance restarted
    /// since runs its boot VCL, another control plane may have loaded its own table), so
    /// each instance is asked, a listing and no compile.
    async fn loaded_and_active(
        &self,
        wants: &[(&SiteResourceId, Option<HostState>, &BTreeSet<DomainName>)],
    ) -> bool {
        let Some(varnish) = &self.varnish else {
            return false;
        };
        let table = {
            let loaded = self.loaded_hosts.lock().unwrap_or_else(|e| e.into_inner());
            match loaded.as_ref() {
                Some(table)
                    if wants
                        .iter()
                        .all(|(id, state, domains)| holds_site(table, id, *state, domains)) =>
                {
                    table.clone()
                }
                _ => return false,
            }
        };
        varnish
            .observe_host_table(&table)
            .await
            .is_ok_and(|states| states.iter().all(|s| s.converged))
    }

    pub(crate) async fn ban_hosts(
        &self,
        db: &MySqlPool,
        id: &SiteResourceId,
    ) -> Result<(), StepError> {
        let Some(varnish) = &self.varnish else {
            return Ok(());
        };
        for domain in site_domains(db, id).await? {
            varnish.ban_host(&domain).await.map_err(retryable(
                "the page cache did not clear the site's pages",
                "banning the site's cache",
            ))?;
        }
        Ok(())
    }
}

pub(crate) async fn forget_secrets(db: &MySqlPool, id: &SiteResourceId) -> Result<(), StepError> {
    for statement in [
        "DELETE FROM site_secrets WHERE site_id = ?",
        "DELETE FROM agent_reports WHERE site_id = ?",
    ] {
        sqlx::query(statement).bind(id.as_str()).execute(db).await?;
    }
    Ok(())
}

/// WordPress's eight keys and salts, 64 characters each, as `NAME=value` lines.
fn wp_salts() -> String {
    agent_protocol::WP_SALT_NAMES
        .iter()
        .map(|n| {
            let value: String = (0..2)
                .map(|_| SitePassword::generate().expose().to_owned())
                .collect();
            format!("{n}={value}\n")
        })
        .collect()
}

/// The site's domains as the drivers' validated type.
pub async fn site_domains(
    db: &MySqlPool,
    id: &SiteResourceId,
) -> Result<BTreeSet<DomainName>, StepError> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT domain FROM domains WHERE site_id = ?")
        .bind(id.as_str())
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|d| DomainName::parse(d).map_err(permanent))
        .collect()
}

/// Every domain of every live site, as the edge should route it, with some sites' entries
/// overridden (`None`: left out).
pub async fn host_table(
    db: &MySqlPool,
    overrides: &[crate::edge_hosts::Override],
) -> Result<HostTable, StepError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT d.domain, s.id, s.state FROM domains d JOIN sites s ON s.id = d.site_id \
         WHERE s.state IN ('provisioning', 'active', 'degraded', 'suspended')",
    )
    .fetch_all(db)
    .await?;
    let mut table = HostTable::default();
    for (domain, id, state) in rows {
        let (Ok(domain), Ok(id)) = (DomainName::parse(&domain), SiteResourceId::parse(&id)) else {
            continue;
        };
        let state = if state == "suspended" {
            HostState::Suspended
        } else {
            HostState::Active
        };
        table.insert(domain, id, state);
    }
    for (id, state) in overrides {
        table.remove_site(id);
        if let Some(state) = state {
            for domain in site_domains(db, id).await? {
                table.insert(domain, id.clone(), *state);
            }
        }
    }
    Ok(table)
}

/// Whether `table` holds the site `id` as `state` wants it: exactly its `domains`, each
/// in that state (`None`: no entry of the site). Pure.
fn holds_site(
    table: &HostTable,
    id: &SiteResourceId,
    state: Option<HostState>,
    domains: &BTreeSet<DomainName>,
) -> bool {
    let mut held = table.hosts.iter().filter(|(_, e)| &e.site == id);
    match state {
        None => held.next().is_none(),
        Some(state) => {
            held.all(|(d, e)| e.state == state && domains.contains(d))
                && domains
                    .iter()
                    .all(|d| table.hosts.get(d).is_some_and(|e| &e.site == id))
        }
    }
}

/// Loads `table` on every instance; an instance that did not take it is an error.
async fn load_host_table(varnish: &VarnishDriver, table: &HostTable) -> Result<(), StepError> {
    let states = varnish.apply_host_table(table).await.map_err(retryable(
        "the page cache did not load the site's hosts",
        "loading the Varnish host table",
    ))?;
    if let Some(bad) = states.iter().find(|s| !s.converged) {
        return Err(StepError::retryable(
            "the page cache did not load the site's hosts",
            anyhow!("varnish {} did not activate the host table", bad.instance),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SiteResourceId {
        SiteResourceId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn domains(names: &[&str]) -> BTreeSet<DomainName> {
        names
            .iter()
            .map(|d| DomainName::parse(d).unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    #[test]
    fn a_loaded_table_holds_a_site_only_with_exactly_its_domains_in_the_wanted_state() {
        let (a, b) = (id("aaaaaaaaaa"), id("bbbbbbbbbb"));
        let mut table = HostTable::default();
        for d in domains(&["a.test", "www.a.test"]) {
            table.insert(d, a.clone(), HostState::Active);
        }
        for d in domains(&["b.test"]) {
            table.insert(d, b.clone(), HostState::Suspended);
        }
        let a_domains = domains(&["a.test", "www.a.test"]);
        let active = Some(HostState::Active);
        assert!(holds_site(&table, &a, active, &a_domains));
        assert!(
            !holds_site(&table, &a, Some(HostState::Suspended), &a_domains),
            "a suspend must load"
        );
        assert!(
            !holds_site(
                &table,
                &a,
                active,
                &domains(&["a.test", "www.a.test", "new.a.test"])
            ),
            "an alias added since the load must load"
        );
        assert!(
            !holds_site(&table, &a, active, &domains(&["a.test"])),
            "an alias removed since the load must load"
        );
        assert!(
            !holds_site(&table, &a, active, &domains(&["a.test", "b.test"])),
            "a domain the table gives another site must load"
        );
        assert!(
            !holds_site(&table, &a, None, &BTreeSet::new()),
            "present, wanted out"
        );
        assert!(holds_site(
            &table,
            &id("cccccccccc"),
            None,
            &BTreeSet::new()
        ));
        assert!(
            !holds_site(&table, &id("cccccccccc"), active, &domains(&["c.test"])),
            "a site the table lacks must load"
        );
    }
}

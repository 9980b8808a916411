//! The one set-up of the backup tests (drills, restores and clones, schedules, S3 faults),
//! on real servers: an `s3s-fs` of the test's own ([`S3Server`]), the machine's MariaDB,
//! and, for the tests that go through the API, a test server whose `[backends]` point
//! at them.
//!
//! - [`Setup`] → [`BackupEnv`]: the server (reconcilers and the backup and drill
//!   schedules off: tests run the passes themselves), a platform-side [`Backends`] on the
//!   same configuration, a staff token, a tenant and a user of it.
//! - [`Source`]: a filled schema and wp-content folder with a [`BackupSpec`] for them,
//!   for tests that call the backup runner directly.

use std::path::{Path, PathBuf};

use platform::{
    backup::{BackupSpec, BackupStore},
    config::BackupsConfig,
    domain::Id,
    provision::Backends,
};
use reqwest::StatusCode;
use serde_json::json;

use crate::{
    backup::{S3Server, Schema, backends_config, fill_files, fill_site, seed_site, spec},
    support::{SECRET_KEY, TestApp, random_name},
};

/// How a [`BackupEnv`] is set up.
#[must_use]
pub(crate) struct Setup {
    tenant_prefix: &'static str,
    jobs: bool,
    creates_sites: bool,
    extra_backends: Option<toml::Table>,
    backups: BackupsConfig,
}

impl Setup {
    /// A tenant named from `tenant_prefix`, a `member` of it, the job runner on.
    pub(crate) fn new(tenant_prefix: &'static str) -> Self {
        Self {
            tenant_prefix,
            jobs: true,
            creates_sites: false,
            extra_backends: None,
            backups: BackupsConfig::default(),
        }
    }

    /// Whether the server runs its operations (off: the test runs the steps itself).
    pub(crate) fn jobs(mut self, on: bool) -> Self {
        self.jobs = on;
        self
    }

    /// For tests whose operations create sites (clones): sites' folders on `/dev/shm`, a
    /// real mount point as a site's create requires (no Gluster volume here, so its
    /// quota command is `true`), and a worker to place them on.
    pub(crate) fn creates_sites(mut self) -> Self {
        self.creates_sites = true;
        self
    }

    /// More `[backends]` tables (e.g. `[redis]`).
    pub(crate) fn backends(mut self, extra: toml::Table) -> Self {
        self.extra_backends = Some(extra);
        self
    }

    /// The backups configuration the platform-side [`Backends`] runs with.
    pub(crate) fn backups(mut self, config: BackupsConfig) -> Self {
        self.backups = config;
        self
    }

    pub(crate) async fn start(self) -> BackupEnv {
        let s3 = S3Server::start().await;
        let (sites_dir, sites_root) = if self.creates_sites {
            (None, PathBuf::from("/dev/shm"))
        } else {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().to_owned();
            (Some(dir), root)
        };
        let mut backends = backends_config(&s3, &sites_root);
        if self.creates_sites {
            backends["gluster"]
                .as_table_mut()
                .unwrap()
                .insert("gluster_bin".into(), toml::Value::String("true".into()));
        }
        if let Some(extra) = self.extra_backends {
            backends.extend(extra);
        }
        let provisioner = Backends::from_config(&backends, SECRET_KEY.as_bytes())
            .unwrap()
            .with_backups(self.backups.clone());
        let jobs = self.jobs;
        let app = TestApp::spawn_with(|c| {
            c.backends = backends;
            c.jobs.enabled = jobs;
            c.reconcile.enabled = false;
            // The tests run the schedules' passes themselves, at the times they choose.
            c.backups.scheduler = false;
            c.drills.enabled = false;
        })
        .await;
        let admin = app.admin_token().await;
        if self.creates_sites {
            app.add_worker(&admin, &random_name("w").replace('_', "-"), 25)
                .await;
        }
        let tenant = app
            .create_tenant(&admin, &random_name(self.tenant_prefix).replace('_', "-"))
            .await;
        let (member, _) = app.user_with_role(&admin, &tenant, "member").await;
        BackupEnv {
            s3,
            _sites_dir: sites_dir,
            sites_root,
            app,
            provisioner,
            backups: self.backups,
            admin,
            tenant,
            member,
        }
    }
}

/// A test server with backups to an S3 server of its own; see [`Setup`].
pub(crate) struct BackupEnv {
    pub(crate) s3: S3Server,
    _sites_dir: Option<tempfile::TempDir>,
    /// Where sites' folders are (the `[gluster]` mount).
    pub(crate) sites_root: PathBuf,
    pub(crate) app: TestApp,
    /// The platform's backends on the server's configuration, for steps and passes
    /// a test runs itself.
    pub(crate) provisioner: Backends,
    pub(crate) backups: BackupsConfig,
    /// A staff (admin) token.
    pub(crate) admin: String,
    pub(crate) tenant: String,
    /// A token of a `member` of the tenant.
    pub(crate) member: String,
}

impl BackupEnv {
    pub(crate) fn sites_root(&self) -> &Path {
        &self.sites_root
    }

    /// A site row (active) of the tenant, its schema filled, its folder.
    pub(crate) async fn seed_site(&self) -> (Id, Schema) {
        seed_site(&self.app, &self.tenant, &self.sites_root).await
    }

    /// Takes a backup through the API as `token`; returns its id once complete.
    pub(crate) async fn backup_now(&self, token: &str, site: &Id) -> String {
        let (status, body) = self
            .app
            .post(&format!("/v1/sites/{site}/backups"), token, json!(null))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let op = body["operation"]["id"].as_str().unwrap().to_owned();
        let done = self.app.wait_operation(token, &op).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        body["backup"]["id"].as_str().unwrap().to_owned()
    }

    /// Stops the server, then the S3 server.
    pub(crate) async fn finish(self) {
        self.app.finish().await;
        drop(self.s3);
    }
}

/// What the backup runner reads, for tests that call it directly: a schema filled with
/// [`fill_site`], a wp-content folder with `random_mib` MiB of incompressible uploads,
/// the spec for both, and an S3 server to write to.
pub(crate) struct Source {
    pub(crate) s3: S3Server,
    /// A store straight to the S3 server (no proxy).
    pub(crate) direct: BackupStore,
    pub(crate) schema: Schema,
    _dir: tempfile::TempDir,
    pub(crate) spec: BackupSpec,
}

impl Source {
    pub(crate) async fn start(random_mib: usize) -> Self {
        let s3 = S3Server::start().await;
        let direct = s3.store();
        let schema = Schema::create().await;
        fill_site(&schema).await;
        let dir = tempfile::tempdir().unwrap();
        fill_files(dir.path(), random_mib);
        let spec = spec(&schema, dir.path());
        Self {
            s3,
            direct,
            schema,
            _dir: dir,
            spec,
        }
    }

    pub(crate) async fn drop(self) {
        self.schema.drop().await;
        drop(self.s3);
    }
}

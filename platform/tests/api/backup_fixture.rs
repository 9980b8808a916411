//! The one set-up of the backup tests (drills, restores and clones, schedules, S3 faults),
//! on real servers: an `s3s-fs` of the test's own ([`S3Server`]), the machine's MariaDB,
//! and, for the tests that go through the API, a test server whose `[backends]` point
//! at them.
//!
//! - [`Setup`] → [`BackupEnv`]: the server (reconcilers and the backup and drill
//!   schedules off: tests run the passes themselves), a platform-side [`Backends`] on the
//!   same configuration, a staff token, a tenant and a user of it.
//! - [`Site`]: a site as provisioning leaves it (row, secrets, its own database user, a
//!   filled schema and folder), for the restore and undelete tests; [`tree`] reads a
//!   folder back for comparison.
//! - [`BackupEnv::replace_dump`]: a backup's dump replaced, with a manifest and record
//!   that vouch for it (what a crafted or damaged backup looks like to a restore).
//! - [`BackupEnv::add_domains`], [`BackupEnv::take_domain`], [`BackupEnv::delete_site`],
//!   [`BackupEnv::request_restore`], [`BackupEnv::refused_restore`], [`BackupEnv::cli`]: a site given its domains,
//!   deleted, restored or brought back, through the API and the CLI as the member.
//! - [`Source`]: a filled schema and wp-content folder with a [`BackupSpec`] for them,
//!   for tests that call the backup runner directly.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use backends::SiteResourceId;
use platform::{
    backup::{self, BackupSpec, BackupStore},
    config::BackupsConfig,
    domain::Id,
    provision::Backends,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest;

use crate::{
    backup::{
        S3Server, Schema, backends_config, fetch, fill_files, fill_site, seed_site, spec, unzstd,
    },
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
    max_attempts: Option<u32>,
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
            max_attempts: None,
        }
    }

    /// Attempts of a step before its operation unwinds (`[jobs] max_attempts`): few, for
    /// tests of a failure that would be retried for a while.
    pub(crate) fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
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
        let (jobs, max_attempts) = (self.jobs, self.max_attempts);
        let app = TestApp::spawn_with(|c| {
            c.backends = backends;
            c.jobs.enabled = jobs;
            if let Some(attempts) = max_attempts {
                c.jobs.max_attempts = attempts;
            }
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

    /// A site of the tenant as provisioning leaves it: [`Self::seed_site`], then its
    /// secrets and its own database user (`wp_<id>`, with its sealed password).
    pub(crate) async fn provisioned_site(&self) -> Site {
        let (id, schema) = self.seed_site().await;
        let rid = SiteResourceId::parse(id.as_str()).unwrap();
        self.provisioner
            .generate_secrets(&self.app.db, &rid)
            .await
            .unwrap();
        self.provisioner
            .ensure_database(&self.app.db, &rid)
            .await
            .unwrap();
        Site {
            root: self.sites_root().join(id.as_str()),
            id,
            schema,
        }
    }

    /// `<tenant>/<site>/<backup>/`, the backup's folder in the bucket.
    pub(crate) fn backup_prefix(&self, site: &Id, backup: &str) -> String {
        format!("{}/{site}/{backup}/", self.tenant)
    }

    /// The SQL of a backup's dump, decompressed: bytes, not text (text columns are
    /// written as stored, and a latin1 column's bytes are no UTF-8).
    pub(crate) async fn dump_sql(&self, site: &Id, backup: &str) -> Vec<u8> {
        let key = format!(
            "{}{}",
            self.backup_prefix(site, backup),
            backup::DATABASE_OBJECT
        );
        unzstd(&fetch(&self.s3.store(), &key).await)
    }

    /// Makes a backup's dump fail part-way: a statement on a table that does not exist,
    /// after half of the dump's row statements (the tables before it already loaded).
    pub(crate) async fn fail_dump_midway(&self, site: &Id, backup: &str) -> BrokenDump {
        let sql = self.dump_sql(site, backup).await;
        let inserts = positions(&sql, "\nINSERT INTO ");
        let at = inserts[inserts.len() / 2] + 1;
        let failing = [
            &sql[..at],
            b"INSERT INTO wp_missing VALUES (1);\n",
            &sql[at..],
        ]
        .concat();
        self.replace_dump(site, backup, &failing).await;
        BrokenDump {
            inserts: inserts.len(),
            refused: positions(&failing[..at], ";\n").len() + 1,
            original: sql,
        }
    }

    /// Replaces a backup's dump with `sql`, and its manifest (the object's size and
    /// SHA-256) and record (the manifest's SHA-256) with ones that vouch for it: to the
    /// restore, the backup is whole, whatever `sql` says.
    pub(crate) async fn replace_dump(&self, site: &Id, backup: &str, sql: &[u8]) {
        let store = self.s3.store();
        let prefix = self.backup_prefix(site, backup);
        let body = zstd::encode_all(sql, 3).unwrap();
        store
            .put(
                &format!("{prefix}{}", backup::DATABASE_OBJECT),
                body.clone(),
                "application/zstd",
            )
            .await
            .unwrap();
        let manifest_key = format!("{prefix}{}", backup::MANIFEST_OBJECT);
        let mut manifest: Value =
            serde_json::from_slice(&fetch(&store, &manifest_key).await).unwrap();
        for o in manifest["objects"].as_array_mut().unwrap() {
            if o["name"] == backup::DATABASE_OBJECT {
                o["size"] = json!(body.len());
                o["sha256"] = json!(hex::encode(sha2::Sha256::digest(&body)));
            }
        }
        let manifest = serde_json::to_vec_pretty(&manifest).unwrap();
        store
            .put(&manifest_key, manifest.clone(), "application/json")
            .await
            .unwrap();
        sqlx::query("UPDATE backups SET manifest_sha256 = ? WHERE id = ?")
            .bind(hex::encode(sha2::Sha256::digest(&manifest)))
            .bind(backup)
            .execute(&self.app.db)
            .await
            .unwrap();
    }

    /// Gives the site its domains as a create writes them: `domains` rows and the copy of
    /// its aliases in its row.
    pub(crate) async fn add_domains(&self, site: &Id, primary: &str, aliases: &[&str]) {
        for (domain, is_primary) in
            std::iter::once((primary, true)).chain(aliases.iter().map(|a| (*a, false)))
        {
            self.insert_domain(site, domain, is_primary).await;
        }
        let mut sorted = aliases.to_vec();
        sorted.sort_unstable();
        sqlx::query("UPDATE sites SET aliases = ?, aliases_generation = generation WHERE id = ?")
            .bind(sorted.join(" "))
            .bind(site.as_str())
            .execute(&self.app.db)
            .await
            .unwrap();
    }

    /// Gives `site` one more alias, as a `domains` row only: a site that took a domain
    /// another one freed.
    pub(crate) async fn take_domain(&self, site: &Id, domain: &str) {
        self.insert_domain(site, domain, false).await;
    }

    async fn insert_domain(&self, site: &Id, domain: &str, is_primary: bool) {
        sqlx::query("INSERT INTO domains (domain, site_id, is_primary) VALUES (?, ?, ?)")
            .bind(domain)
            .bind(site.as_str())
            .bind(is_primary)
            .execute(&self.app.db)
            .await
            .unwrap();
    }

    /// Deletes the site through the API as the member (its final backup first) and
    /// returns that backup's id, found as a tenant finds it: in the deleted site's own
    /// backup list.
    pub(crate) async fn delete_site(&self, site: &Id) -> String {
        let (status, body) = self
            .app
            .request(
                Method::DELETE,
                &format!("/v1/sites/{site}"),
                Some(&self.member),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let done = self.wait_accepted(&body).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        let (status, _) = self
            .app
            .get(&format!("/v1/sites/{site}"), &self.member)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, page) = self
            .app
            .get(&format!("/v1/sites/{site}/backups"), &self.member)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let newest = &page["items"][0];
        assert_eq!(newest["kind"], "final", "{page}");
        assert_eq!(newest["state"], "complete", "{page}");
        newest["id"].as_str().unwrap().to_owned()
    }

    /// Asks as the member for `backup` to be written back into the site (or a deleted
    /// site brought back): the answer, once checked to be a 202.
    pub(crate) async fn request_restore(&self, site: &Id, backup: &str) -> Value {
        let (status, body) = self
            .app
            .post(
                &format!("/v1/sites/{site}/restores"),
                &self.member,
                json!({ "backup": backup }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body
    }

    /// Asks as the member for a restore that is refused: the status and the problem+json
    /// body (its content type checked).
    pub(crate) async fn refused_restore(&self, site: &Id, backup: &str) -> (StatusCode, Value) {
        let (status, headers, body) = self
            .app
            .request_full(
                Method::POST,
                &format!("/v1/sites/{site}/restores"),
                Some(&self.member),
                Some(json!({ "backup": backup })),
                &[],
            )
            .await;
        assert_eq!(headers["content-type"], "application/problem+json");
        (status, body)
    }

    /// Waits, as the member, for the operation of an accepted request's answer (`body`).
    pub(crate) async fn wait_accepted(&self, body: &Value) -> Value {
        self.app
            .wait_operation(&self.member, body["operation"]["id"].as_str().unwrap())
            .await
    }

    /// The `pressdock` CLI run with `args` as the member against the server:
    /// `(stdout, stderr)` of a run that succeeded.
    pub(crate) async fn cli(&self, args: &[&str]) -> (String, String) {
        let out = tokio::process::Command::new(crate::support::binary())
            .args(args)
            .args(["--url", &self.app.base])
            .env("PRESSDOCK_TOKEN", &self.member)
            .env("PRESSDOCK_CLI_CONFIG", "/nonexistent/pressdock-cli.toml")
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{args:?}: {stderr}");
        (stdout, stderr)
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

/// A site as provisioning leaves it, with its own database user and sealed password
/// ([`BackupEnv::provisioned_site`]).
pub(crate) struct Site {
    pub(crate) id: Id,
    pub(crate) schema: Schema,
    /// Its folder (under the `[gluster]` mount).
    pub(crate) root: PathBuf,
}

impl Site {
    /// Drops its database, user and schema and removes its folder, whatever is left.
    pub(crate) async fn remove(self, provisioner: &Backends) {
        let rid = SiteResourceId::parse(self.id.as_str()).unwrap();
        let _ = provisioner.remove_database(&rid).await;
        let _ = std::fs::remove_dir_all(&self.root);
        self.schema.drop().await;
    }

    /// The changes a tenant regrets: a row changed, rows deleted, a table added; a file
    /// changed, one removed, one added.
    pub(crate) async fn change(&self) {
        self.schema
            .exec(
                "UPDATE wp_options SET option_value = 'changed' WHERE option_name = 'blogname';
                 DELETE FROM wp_posts WHERE ID < 100;
                 CREATE TABLE wp_new (id INT PRIMARY KEY);
                 INSERT INTO wp_new VALUES (1);",
            )
            .await;
        std::fs::write(self.root.join("index.php"), "<?php // defaced\n").unwrap();
        std::fs::remove_file(self.root.join("uploads/2026/12/empty.txt")).unwrap();
        std::fs::write(
            self.root.join("plugins/evil.php"),
            "<?php eval($_GET['x']);\n",
        )
        .unwrap();
    }
}

/// Every entry under `root`: path → kind, mode and content hash (or link target).
pub(crate) fn tree(root: &Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for path in entries {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, format!("link -> {}", target.display()));
            } else if meta.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(root, &path, out);
            } else {
                let body = std::fs::read(&path).unwrap();
                out.insert(
                    rel,
                    format!("file {mode:o} {}", hex::encode(sha2::Sha256::digest(&body))),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
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

/// Where `needle` starts in a dump, each time.
pub(crate) fn positions(sql: &[u8], needle: &str) -> Vec<usize> {
    sql.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_bytes())
        .map(|(i, _)| i)
        .collect()
}

/// A dump made to fail part-way ([`BackupEnv::fail_dump_midway`]).
pub(crate) struct BrokenDump {
    /// The dump as it was, to put back.
    pub original: Vec<u8>,
    /// How many row statements it has.
    pub inserts: usize,
    /// The refused statement's number in the broken dump.
    pub refused: usize,
}

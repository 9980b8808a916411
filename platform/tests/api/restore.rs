//! Restores and clones against real servers: the machine's MariaDB (each site with its
//! own database user, as provisioning makes it) and an `s3s-fs` of each test's own.

use std::sync::Arc;

use backends::SiteResourceId;
use platform::{
    backup,
    domain::Id,
    provision::Backends,
    sagas::{self, Outcome, StepContext},
    states::OperationKind,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest;

use crate::{
    backup::{S3Server, Schema, backends_config, fetch, unzstd},
    backup_fixture::{BackupEnv, Setup, positions, tree},
    support::{SECRET_KEY, TestApp, random_name},
};

async fn env(jobs: bool) -> BackupEnv {
    Setup::new("rs").jobs(jobs).start().await
}

/// Starts a restore through the API and waits for its operation.
async fn restore(app: &TestApp, token: &str, site: &Id, backup: &str) -> (Value, Value) {
    let (status, body) = app
        .post(
            &format!("/v1/sites/{site}/restores"),
            token,
            json!({ "backup": backup }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["operation"]["kind"], "site.restore", "{body}");
    assert_eq!(body["operation"]["target_id"], site.as_str(), "{body}");
    assert_eq!(body["restore"]["state"], "pending", "{body}");
    let op = body["operation"]["id"].as_str().unwrap().to_owned();
    let done = app.wait_operation(token, &op).await;
    let id = body["restore"]["id"].as_str().unwrap();
    let (status, row) = app.get(&format!("/v1/restores/{id}"), token).await;
    assert_eq!(status, StatusCode::OK, "{row}");
    (done, row)
}

/// Rows and files equal after a change is undone by a restore; the automatic backup taken
/// before it undoes the restore in turn.
#[tokio::test]
async fn a_restore_puts_rows_and_files_back_and_its_pre_restore_backup_undoes_it() {
    let e = env(true).await;
    let site = e.provisioned_site().await;
    let original_db = site.schema.fingerprint().await;
    let original_files = tree(&site.root);
    let b1 = e.backup_now(&e.member, &site.id).await;

    site.change().await;
    let changed_db = site.schema.fingerprint().await;
    let changed_files = tree(&site.root);
    assert_ne!(changed_db, original_db);
    assert_ne!(changed_files, original_files);

    let (op, row) = restore(&e.app, &e.member, &site.id, &b1).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let steps: Vec<&str> = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "wait_for_site",
            "verify_backup",
            "backup_current",
            "restore_database",
            "restore_files"
        ]
    );
    assert_eq!(row["state"], "complete", "{row}");
    assert_eq!(row["kind"], "restore");
    assert_eq!(row["backup_id"], b1.as_str());
    assert!(row["statements"].as_i64().unwrap() > 10, "{row}");
    assert_eq!(
        row["files_restored"].as_i64().unwrap() as usize,
        original_files.len(),
        "{row}"
    );
    assert_eq!(site.schema.fingerprint().await, original_db);
    assert_eq!(tree(&site.root), original_files);

    // The automatic backup holds the regretted state: restoring it undoes the restore.
    let pre = row["pre_restore_backup_id"].as_str().unwrap().to_owned();
    let (status, backup) = e.app.get(&format!("/v1/backups/{pre}"), &e.member).await;
    assert_eq!(status, StatusCode::OK, "{backup}");
    assert_eq!(backup["kind"], "pre_restore", "{backup}");
    assert_eq!(backup["state"], "complete", "{backup}");
    let (op, row) = restore(&e.app, &e.member, &site.id, &pre).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(row["state"], "complete", "{row}");
    assert_eq!(site.schema.fingerprint().await, changed_db);
    assert_eq!(tree(&site.root), changed_files);

    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// A truncated object is refused by name before anything is overwritten (and before the
/// pre-restore backup: nothing is taken for a restore that cannot happen); a dump that
/// carries `USE other` is refused with the statement's number before any statement runs.
#[tokio::test]
async fn a_damaged_or_crafted_backup_is_refused_before_anything_is_overwritten() {
    let e = env(true).await;
    let site = e.provisioned_site().await;
    let b1 = e.backup_now(&e.member, &site.id).await;
    site.change().await;
    let changed_db = site.schema.fingerprint().await;
    let changed_files = tree(&site.root);

    let store = e.s3.store();
    let prefix = e.backup_prefix(&site.id, &b1);
    let files_key = format!("{prefix}{}", backup::FILES_OBJECT);
    let whole = fetch(&store, &files_key).await;
    store
        .put(
            &files_key,
            whole[..whole.len() / 2].to_vec(),
            "application/zstd",
        )
        .await
        .unwrap();
    let (op, row) = restore(&e.app, &e.member, &site.id, &b1).await;
    assert_eq!(op["state"], "failed", "{op}");
    let error = op["error"].as_str().unwrap();
    assert!(
        error.contains("wp-content.tar.zst does not match the manifest"),
        "{error}"
    );
    assert!(error.contains("truncated"), "{error}");
    assert_eq!(row["state"], "failed", "{row}");
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("wp-content.tar.zst"),
        "{row}"
    );
    assert!(row["pre_restore_backup_id"].is_null(), "{row}");
    assert_eq!(site.schema.fingerprint().await, changed_db);
    assert_eq!(tree(&site.root), changed_files);

    // The files whole again; a dump with `USE other` in its middle, and a manifest (and
    // record) that vouch for it: what a tenant with a crafted backup would bring.
    store
        .put(&files_key, whole.clone(), "application/zstd")
        .await
        .unwrap();
    let sql = e.dump_sql(&site.id, &b1).await;
    let at = positions(&sql, "\n-- table `wp_posts`")[0];
    let crafted = [
        &sql[..at],
        b"\nUSE `other_site`;\nDELETE FROM wp_users;\n",
        &sql[at..],
    ]
    .concat();
    e.replace_dump(&site.id, &b1, &crafted).await;
    let (op, row) = restore(&e.app, &e.member, &site.id, &b1).await;
    assert_eq!(op["state"], "failed", "{op}");
    let error = op["error"].as_str().unwrap();
    assert!(error.contains("database.sql.zst, statement"), "{error}");
    assert!(error.contains("USE is not allowed"), "{error}");
    assert!(error.contains("nothing was run"), "{error}");
    assert_eq!(row["state"], "failed", "{row}");
    assert_eq!(site.schema.fingerprint().await, changed_db);
    assert_eq!(tree(&site.root), changed_files);

    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// A restore that fails in the middle of the parallel row load (four connections of the
/// site's own user; a statement the server refuses halfway through the dump's rows, after
/// tables were already replaced) is retried, then unwound by the runner: the database
/// comes back from the automatic pre-restore backup, table for table and row for row, and
/// the files (never reached) are as they were.
#[tokio::test]
async fn a_restore_failing_midway_through_the_parallel_load_is_put_back_from_its_pre_restore_backup()
 {
    let e = Setup::new("rf").max_attempts(2).start().await;
    let site = e.provisioned_site().await;
    let b1 = e.backup_now(&e.member, &site.id).await;
    site.change().await;
    let changed_db = site.schema.fingerprint().await;
    let changed_files = tree(&site.root);

    // The dump's rows go out over several statements; the refused one comes after half
    // of them, so the load fails part-way, with the tables before it already replaced.
    let broken = e.fail_dump_midway(&site.id, &b1).await;
    let (inserts, position) = (broken.inserts, broken.refused);
    assert!(inserts >= 6, "a dump of several row statements: {inserts}");

    let (op, row) = restore(&e.app, &e.member, &site.id, &b1).await;
    assert_eq!(op["state"], "failed", "{op}");
    let steps: Vec<(&str, &str, i64)> = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["state"].as_str().unwrap(),
                s["attempts"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("wait_for_site", "undone", 1),
            ("verify_backup", "undone", 1),
            ("backup_current", "undone", 1),
            ("restore_database", "undone", 2),
            ("restore_files", "pending", 0),
        ],
        "{op}"
    );
    assert!(
        op["error"]
            .as_str()
            .unwrap()
            .contains("the site's database could not be restored"),
        "{op}"
    );
    // Staff see the cause: the statement the server refused, by its number in the dump.
    let staff = e
        .app
        .wait_operation(&e.admin, op["id"].as_str().unwrap())
        .await;
    let cause = staff["internal_error"].as_str().unwrap_or("");
    assert!(
        cause.contains(&format!("running statement {position} of the dump"))
            && cause.contains("wp_missing"),
        "statement {position}: {staff}"
    );
    assert_eq!(row["state"], "failed", "{row}");
    let pre = row["pre_restore_backup_id"].as_str().unwrap();
    let (_, backup) = e.app.get(&format!("/v1/backups/{pre}"), &e.member).await;
    assert_eq!(backup["state"], "complete", "{backup}");

    // Put back: the rows and tables of the site as it was before the restore.
    assert_eq!(site.schema.fingerprint().await, changed_db);
    assert_eq!(tree(&site.root), changed_files);

    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// The saga's steps run by hand as a runner would: each twice (idempotent), and the
/// database and files steps interrupted halfway and taken up again: the site converges
/// on the backup.
#[tokio::test]
async fn a_restore_interrupted_halfway_and_taken_up_again_converges() {
    let e = env(false).await;
    let site = e.provisioned_site().await;
    let original_db = site.schema.fingerprint().await;
    let original_files = tree(&site.root);
    // A backup taken by its step, with the runner off.
    let (status, body) = e
        .app
        .post(
            &format!("/v1/sites/{}/backups", site.id),
            &e.member,
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let b1 = body["backup"]["id"].as_str().unwrap().to_owned();
    backup::job::run_backup(&e.app.db, &e.provisioner, &b1)
        .await
        .unwrap();
    site.change().await;

    let (status, body) = e
        .app
        .post(
            &format!("/v1/sites/{}/restores", site.id),
            &e.member,
            json!({ "backup": b1 }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let ctx = StepContext {
        db: e.app.db.clone(),
        backends: Arc::new(
            Backends::from_config(
                &backends_config(&e.s3, e.sites_root()),
                SECRET_KEY.as_bytes(),
            )
            .unwrap(),
        ),
        settings: Default::default(),
        target: site.id.as_str().to_owned(),
    };
    let saga = sagas::saga(OperationKind::SiteRestore);
    let planned = saga.plan(&ctx.backends);
    for name in &planned {
        let step = saga.step(name).unwrap();
        if *name == "restore_database" || *name == "restore_files" {
            // Killed mid-way: the task is dropped wherever it got to.
            let task = {
                let ctx = StepContext {
                    db: ctx.db.clone(),
                    backends: ctx.backends.clone(),
                    settings: ctx.settings.clone(),
                    target: ctx.target.clone(),
                };
                tokio::spawn(async move { (step.action)(&ctx).await })
            };
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            task.abort();
            let _ = task.await;
        }
        (step.action)(&ctx)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        (step.action)(&ctx)
            .await
            .unwrap_or_else(|e| panic!("{name} again: {e:#}"));
    }
    // And the half state made explicit: a table gone, a stray file, then the two steps
    // once more, as a runner taking the operation over does.
    site.schema.exec("DROP TABLE wp_posts;").await;
    std::fs::write(site.root.join("stray.tmp"), "half").unwrap();
    for name in ["restore_database", "restore_files"] {
        (saga.step(name).unwrap().action)(&ctx).await.unwrap();
    }
    (saga.finish)(&ctx, OperationKind::SiteRestore, Outcome::Succeeded)
        .await
        .unwrap();
    assert_eq!(site.schema.fingerprint().await, original_db);
    assert_eq!(tree(&site.root), original_files);
    let id = body["restore"]["id"].as_str().unwrap();
    let (status, row) = e.app.get(&format!("/v1/restores/{id}"), &e.member).await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert_eq!(row["state"], "complete", "{row}");
    // One pre-restore backup however often its step ran.
    let pre: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM backups WHERE site_id = ? AND kind = 'pre_restore'",
    )
    .bind(site.id.as_str())
    .fetch_one(&e.app.db)
    .await
    .unwrap();
    assert_eq!(pre, 1);

    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// Bad input is problem+json naming the field; another tenant's caller gets a 404.
#[tokio::test]
async fn restore_and_clone_requests_are_checked_field_by_field() {
    let e = env(false).await;
    let (site, schema) = e.seed_site().await;
    let other_tenant = e
        .app
        .create_tenant(&e.admin, &random_name("ot").replace('_', "-"))
        .await;
    let (outsider, _) = e.app.user_with_role(&e.admin, &other_tenant, "owner").await;

    let check =
        |status: StatusCode, headers: &reqwest::header::HeaderMap, body: &Value, field: &str| {
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(headers["content-type"], "application/problem+json");
            assert_eq!(body["errors"][0]["field"], field, "{body}");
        };
    for (path, body, field, says) in [
        (
            "restores",
            json!({ "backup": "NOT-AN-ID" }),
            "backup",
            "is not a backup id",
        ),
        (
            "restores",
            json!({ "backup": Id::generate().as_str() }),
            "backup",
            "is not a backup of this site",
        ),
        ("clones", json!({ "domain": "not a domain" }), "domain", ""),
        (
            "clones",
            json!({ "domain": format!("{}.example", Id::generate()) }),
            "backup",
            "no complete backup",
        ),
    ] {
        let (status, headers, got) = e
            .app
            .request_full(
                Method::POST,
                &format!("/v1/sites/{site}/{path}"),
                Some(&e.member),
                Some(body.clone()),
                &[],
            )
            .await;
        check(status, &headers, &got, field);
        assert!(
            got["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .contains(says),
            "{body}: {got}"
        );
    }
    // A field that is not ours, and another tenant's caller.
    let (status, _, got) = e
        .app
        .request_full(
            Method::POST,
            &format!("/v1/sites/{site}/restores"),
            Some(&e.member),
            Some(json!({ "backup": Id::generate().as_str(), "force": true })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{got}");
    let (status, got) = e
        .app
        .post(
            &format!("/v1/sites/{site}/restores"),
            &outsider,
            json!({ "backup": Id::generate().as_str() }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{got}");
    assert!(got["title"].is_string(), "{got}");
    let (status, _) = e
        .app
        .get(&format!("/v1/restores/{}", Id::generate()), &e.member)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    schema.drop().await;
    e.finish().await;
}

/// A clone: a new site of the tenant created through the create operation, the backup
/// restored into it with the domain rewritten — serialized values' lengths fixed — and
/// its files equal to the source's.
#[tokio::test]
async fn a_clone_is_a_new_site_with_the_domain_rewritten_serialized_values_included() {
    let e = Setup::new("cl").creates_sites().start().await;
    let (app, provisioner, member) = (&e.app, &e.provisioner, e.member.as_str());
    let shm = e.sites_root();
    let source = e.provisioned_site().await;
    let from = format!("{}.example", source.id);
    let inner = format!("a:1:{{i:0;s:{}:\"https://{from}/x\";}}", from.len() + 10);
    let nested = format!(
        "a:2:{{s:4:\"home\";s:{}:\"https://{from}\";s:5:\"inner\";s:{}:\"{inner}\";}}",
        from.len() + 8,
        inner.len()
    );
    source
        .schema
        .exec(&format!(
            "UPDATE wp_options SET option_value = 'https://{from}' WHERE option_name = 'siteurl';
             INSERT INTO wp_options (option_name, option_value) VALUES
               ('nested', '{}'),
               ('text', 'Café \"{from}\" it''s {from}/wp-content \\\\ 🚀');",
            nested.replace('\\', "\\\\").replace('\'', "''")
        ))
        .await;
    let source_files = tree(&source.root);
    let b1 = e.backup_now(member, &source.id).await;

    let to = format!("clone-{}.example.net", Id::generate());
    let (status, body) = app
        .post(
            &format!("/v1/sites/{}/clones", source.id),
            member,
            json!({ "domain": to }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["restore"]["kind"], "clone", "{body}");
    assert_eq!(body["restore"]["backup_id"], b1.as_str(), "{body}");
    assert_eq!(body["restore"]["domain_from"], from.as_str(), "{body}");
    assert_eq!(body["restore"]["domain_to"], to.as_str(), "{body}");
    assert_eq!(body["site"]["domain"], to.as_str(), "{body}");
    assert_eq!(body["site"]["plan"], "starter", "{body}");
    assert_eq!(body["create_operation"]["kind"], "site.create", "{body}");
    let new_site = Id::parse(body["site"]["id"].as_str().unwrap()).unwrap();
    let create = app
        .wait_operation(member, body["create_operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(create["state"], "succeeded", "{create}");
    let done = app
        .wait_operation(member, body["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, row) = app
        .get(
            &format!("/v1/restores/{}", body["restore"]["id"].as_str().unwrap()),
            member,
        )
        .await;
    assert_eq!(row["state"], "complete", "{row}");
    assert!(row["pre_restore_backup_id"].is_null(), "{row}");
    let (_, got) = app.get(&format!("/v1/sites/{new_site}"), member).await;
    assert_eq!(got["state"], "active", "{got}");

    // The new site's database: the domain rewritten, serialized lengths right.
    let clone = Schema {
        admin: sqlx::MySqlPool::connect(&crate::support::server_url())
            .await
            .unwrap(),
        name: format!("wp_{new_site}"),
    };
    let option = |name: &'static str| {
        let (pool, schema) = (clone.admin.clone(), clone.name.clone());
        async move {
            let v: Vec<u8> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT CAST(option_value AS BINARY) FROM `{schema}`.wp_options WHERE option_name = ?"
            )))
            .bind(name)
            .fetch_one(&pool)
            .await
            .unwrap();
            String::from_utf8(v).unwrap()
        }
    };
    assert_eq!(option("siteurl").await, format!("https://{to}"));
    let inner_new = format!("a:1:{{i:0;s:{}:\"https://{to}/x\";}}", to.len() + 10);
    assert_eq!(
        option("nested").await,
        format!(
            "a:2:{{s:4:\"home\";s:{}:\"https://{to}\";s:5:\"inner\";s:{}:\"{inner_new}\";}}",
            to.len() + 8,
            inner_new.len()
        )
    );
    assert_eq!(
        option("text").await,
        format!("Café \"{to}\" it's {to}/wp-content \\ 🚀")
    );
    // The serialized widget of the fill names another domain: left as it was.
    assert_eq!(
        option("widget").await,
        "a:1:{s:4:\"text\";s:17:\"https://a.example\";}"
    );
    // The source is untouched.
    let src: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT option_value FROM `{}`.wp_options WHERE option_name = 'siteurl'",
        source.schema.name
    )))
    .fetch_one(&source.schema.admin)
    .await
    .unwrap();
    assert_eq!(src, format!("https://{from}"));
    // siteurl, nested and text: the values that name the source.
    assert_eq!(row["strings_rewritten"], 3, "{row}");
    // Files: the source's tree.
    let new_root = shm.join(new_site.as_str());
    assert_eq!(tree(&new_root), source_files);

    let rid = SiteResourceId::parse(new_site.as_str()).unwrap();
    let _ = provisioner.remove_database(&rid).await;
    let _ = std::fs::remove_dir_all(&new_root);
    clone.drop().await;
    source.remove(provisioner).await;
    e.finish().await;
}

/// `pressdock backups create|list|show` and `pressdock sites restore --wait` as a tenant
/// member runs them: the real binary against the server, progress on standard error.
#[tokio::test]
async fn the_cli_takes_lists_and_restores_backups_showing_progress() {
    let e = env(true).await;
    let site = e.provisioned_site().await;
    let original_db = site.schema.fingerprint().await;
    let id = site.id.as_str();
    let (out, progress) = e.cli(&["backups", "create", id, "--wait", "--json"]).await;
    let created: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["backup"]["state"], "complete", "{out}");
    assert!(progress.contains("run_backup: done"), "{progress}");
    let backup = created["backup"]["id"].as_str().unwrap().to_owned();
    let (out, _) = e.cli(&["backups", "list", id, "--json"]).await;
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list[0]["id"], backup.as_str(), "{out}");
    let (out, _) = e.cli(&["backups", "show", &backup]).await;
    assert!(out.contains(&backup) && out.contains("complete"), "{out}");

    site.change().await;
    let (out, progress) = e
        .cli(&["sites", "restore", id, "--backup", &backup, "--wait"])
        .await;
    assert!(progress.contains("site.restore: succeeded"), "{progress}");
    assert!(progress.contains("verify_backup: done"), "{progress}");
    assert!(progress.contains("restore_files: done"), "{progress}");
    assert!(out.contains("complete"), "{out}");
    assert_eq!(site.schema.fingerprint().await, original_db);

    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// While a restore of a site is under way (its operation not yet run: the runner is off
/// here), a manual backup of the site and a second restore are refused with a 409
/// problem+json saying why; the backup list is unchanged.
#[tokio::test]
async fn a_backup_or_a_second_restore_during_a_restore_is_refused() {
    let e = env(false).await;
    let site = e.provisioned_site().await;
    let (status, body) = e
        .app
        .post(
            &format!("/v1/sites/{}/backups", site.id),
            &e.member,
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let b1 = body["backup"]["id"].as_str().unwrap().to_owned();
    backup::job::run_backup(&e.app.db, &e.provisioner, &b1)
        .await
        .unwrap();
    // The backup's operation is still pending (no runner): end it as the runner would.
    sqlx::query("UPDATE operations SET state = 'succeeded' WHERE target_id = ?")
        .bind(&b1)
        .execute(&e.app.db)
        .await
        .unwrap();
    let (status, body) = e
        .app
        .post(
            &format!("/v1/sites/{}/restores", site.id),
            &e.member,
            json!({ "backup": b1 }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let (status, headers, body) = e
        .app
        .request_full(
            Method::POST,
            &format!("/v1/sites/{}/backups", site.id),
            Some(&e.member),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("restore of this site is under way"),
        "{body}"
    );
    let (status, headers, body) = e
        .app
        .request_full(
            Method::POST,
            &format!("/v1/sites/{}/restores", site.id),
            Some(&e.member),
            Some(json!({ "backup": b1 })),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        body["detail"].as_str().unwrap().contains("under way"),
        "{body}"
    );
    let backups: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM backups WHERE site_id = ?")
        .bind(site.id.as_str())
        .fetch_one(&e.app.db)
        .await
        .unwrap();
    assert_eq!(backups, 1, "nothing half-created");
    let restores: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM restores WHERE site_id = ?")
        .bind(site.id.as_str())
        .fetch_one(&e.app.db)
        .await
        .unwrap();
    assert_eq!(restores, 1);
    site.remove(&e.provisioner).await;
    e.finish().await;
}

/// After a restore, the site's object-cache keys (`wp_<id>:*`) are gone from Redis (a
/// real master, replica and Sentinel) and another site's are kept.
#[tokio::test]
async fn a_restore_flushes_the_sites_object_cache() {
    let redis = crate::helpers::RedisLab::start();
    let extra: toml::Table = toml::from_str(&format!(
        r#"
        [redis]
        sentinels = ["{sentinel}"]
        master_name = "{master}"
        sentinel_user = "{user}"
        sentinel_password = "{password}"
        "#,
        sentinel = redis.sentinel,
        master = redis.master_name,
        user = crate::helpers::SENTINEL_ADMIN,
        password = crate::helpers::SENTINEL_PASSWORD,
    ))
    .unwrap();
    let e = Setup::new("rc").backends(extra).start().await;
    let (app, provisioner, admin) = (&e.app, &e.provisioner, e.admin.as_str());
    let site = e.provisioned_site().await;
    let b1 = e.backup_now(admin, &site.id).await;

    let cli = |args: &[&str]| {
        let (host, port) = redis.master.rsplit_once(':').unwrap();
        let out = std::process::Command::new("redis-cli")
            .args(["-h", host, "-p", port])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let other = format!("wp_{}:options:alloptions", Id::generate());
    for n in 0..50 {
        cli(&["SET", &format!("wp_{}:posts:{n}", site.id), "stale"]);
    }
    cli(&[
        "SET",
        &format!("wp_{}:options:alloptions", site.id),
        "stale",
    ]);
    cli(&["SET", &other, "kept"]);

    let (done, row) = restore(app, admin, &site.id, &b1).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(row["state"], "complete", "{row}");
    let steps: Vec<&str> = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(steps.contains(&"flush_object_cache"), "{steps:?}");
    let left = cli(&["--scan", "--pattern", &format!("wp_{}:*", site.id)]);
    assert_eq!(left, "", "the site's keys are gone");
    assert_eq!(cli(&["GET", &other]), "kept");

    site.remove(provisioner).await;
    e.finish().await;
}

/// Deleting a site takes a final backup first; the site is gone but the backup stays
/// reachable to its tenant (by id and in the tenant's list), and a clone from it brings
/// the site back under its own domain with the same rows and files. After
/// `final_retention_days` the pruner deletes it.
#[tokio::test]
async fn a_deleted_sites_final_backup_is_kept_and_cloned_back_then_pruned() {
    let e = Setup::new("fb").creates_sites().start().await;
    let (app, provisioner, admin, tenant, member) = (
        &e.app,
        &e.provisioner,
        e.admin.as_str(),
        e.tenant.as_str(),
        e.member.as_str(),
    );
    let shm = e.sites_root();
    let site = e.provisioned_site().await;
    let domain = format!("{}.example", site.id);
    sqlx::query("INSERT INTO domains (domain, site_id, is_primary) VALUES (?, ?, 1)")
        .bind(&domain)
        .bind(site.id.as_str())
        .execute(&app.db)
        .await
        .unwrap();
    let original_db = site.schema.fingerprint().await;
    let original_files = tree(&site.root);

    let (status, body) = app
        .request(
            Method::DELETE,
            &format!("/v1/sites/{}", site.id),
            Some(member),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = app
        .wait_operation(member, body["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(done["steps"][0]["name"], "final_backup", "{done}");
    let (status, _) = app.get(&format!("/v1/sites/{}", site.id), member).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!site.root.exists(), "the site's files were removed");

    // The tenant finds the final backup, complete, though its site is gone.
    let (status, page) = app
        .get(&format!("/v1/tenants/{tenant}/backups?kind=final"), member)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    let fin = page["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(page["items"][0]["site_id"], site.id.as_str());
    let (status, got) = app.get(&format!("/v1/backups/{fin}"), member).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["state"], "complete", "{got}");
    assert_eq!(got["kind"], "final", "{got}");
    let (status, body) = app
        .get(&format!("/v1/tenants/{tenant}/backups?kind=weekly"), member)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "kind", "{body}");

    // Back as a new site under the same domain (free again since the delete).
    let (status, body) = app
        .post(
            &format!("/v1/backups/{fin}/clones"),
            member,
            json!({ "domain": domain }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["restore"]["backup_id"], fin.as_str(), "{body}");
    assert_eq!(body["site"]["domain"], domain.as_str(), "{body}");
    let new_site = Id::parse(body["site"]["id"].as_str().unwrap()).unwrap();
    let create = app
        .wait_operation(member, body["create_operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(create["state"], "succeeded", "{create}");
    let restored = app
        .wait_operation(member, body["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(restored["state"], "succeeded", "{restored}");
    let clone = Schema {
        admin: sqlx::MySqlPool::connect(&crate::support::server_url())
            .await
            .unwrap(),
        name: format!("wp_{new_site}"),
    };
    let clone_db = clone.fingerprint().await;
    assert_eq!(clone_db, original_db, "the same rows");
    let new_root = shm.join(new_site.as_str());
    assert_eq!(tree(&new_root), original_files, "the same files");

    // 31 days later the final backup is pruned: objects and then its row.
    let config = platform::config::BackupsConfig::default();
    let later = chrono::Utc::now() + chrono::Duration::days(31);
    let report = platform::backup::schedule::pass(&app.db, provisioner, &config, later)
        .await
        .unwrap()
        .unwrap();
    assert!(report.pruned.contains(&fin), "{report:?}");
    let op: String = sqlx::query_scalar(
        "SELECT id FROM operations WHERE target_id = ? AND kind = 'backup.delete'",
    )
    .bind(&fin)
    .fetch_one(&app.db)
    .await
    .unwrap();
    let deleted = app.wait_operation(admin, &op).await;
    assert_eq!(deleted["state"], "succeeded", "{deleted}");
    let prefix = format!("{tenant}/{}/{fin}/", site.id);
    assert_eq!(e.s3.store().list(&prefix).await.unwrap(), vec![]);
    let (status, _) = app.get(&format!("/v1/backups/{fin}"), member).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let rid = SiteResourceId::parse(new_site.as_str()).unwrap();
    let _ = provisioner.remove_database(&rid).await;
    let _ = std::fs::remove_dir_all(&new_root);
    clone.drop().await;
    site.schema.drop().await;
    e.finish().await;
}

/// Tables of several shapes for the parallel load: a large one cut into many
/// statements, one without a primary key, blobs, a unique key, an empty one.
async fn fill_many_tables(schema: &Schema) {
    schema
        .exec(
            "CREATE TABLE wp_posts (ID BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
               post_content LONGTEXT NOT NULL, post_title TEXT NOT NULL) DEFAULT CHARSET=utf8mb4;
             INSERT INTO wp_posts (post_content, post_title)
               SELECT REPEAT(CONCAT(MD5(seq), ' lorem ''ipsum'' \\\\ '), 1 + seq % 20), CONCAT('T', seq)
               FROM seq_1_to_30000;
             CREATE TABLE wp_postmeta (meta_id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
               post_id BIGINT UNSIGNED NOT NULL, meta_key VARCHAR(255), meta_value LONGTEXT, \
               KEY (post_id)) DEFAULT CHARSET=utf8mb4;
             INSERT INTO wp_postmeta (post_id, meta_key, meta_value)
               SELECT seq % 30000, IF(seq % 3 = 0, NULL, '_edit_lock'), CONCAT('a:1:{i:0;s:32:\"', MD5(seq), '\";}')
               FROM seq_1_to_60000;
             CREATE TABLE wp_comments (post_id BIGINT NOT NULL, body TEXT, KEY (post_id)) DEFAULT CHARSET=utf8mb4;
             INSERT INTO wp_comments SELECT seq % 97, CONCAT('comment ', seq, ' 🚀') FROM seq_1_to_20000;
             CREATE TABLE wp_blobs (id INT PRIMARY KEY, data LONGBLOB);
             INSERT INTO wp_blobs SELECT seq, UNHEX(REPEAT(MD5(seq), 64)) FROM seq_1_to_3000;
             CREATE TABLE wp_users (ID INT PRIMARY KEY, user_login VARCHAR(60) NOT NULL UNIQUE) DEFAULT CHARSET=utf8mb4;
             INSERT INTO wp_users SELECT seq, CONCAT('user', seq) FROM seq_1_to_5000;
             CREATE TABLE wp_termmeta (id INT PRIMARY KEY);",
        )
        .await;
}

/// The rows of a multi-table dump are loaded over several connections at once and come
/// back identical (every table's row count and `CHECKSUM TABLE`); every connection is
/// the target's own account (here a drill's scratch account: `ALL` on its schema only).
/// A statement the server refuses stops every connection: the restore returns that
/// statement's error, the rows after it are not all loaded, and no connection is left.
#[tokio::test]
async fn a_restore_loads_tables_over_several_connections_identically_and_stops_on_a_failure() {
    use platform::backup::{drill, restore};

    let s3 = S3Server::start().await;
    let store = s3.store();
    let source = Schema::create().await;
    fill_many_tables(&source).await;
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("index.php"), "<?php\n").unwrap();
    let spec = crate::backup::spec(&source, files.path());
    let done = backup::run(&store, &spec, backup::Hooks::default())
        .await
        .unwrap();
    let manifest = done.manifest;
    let expected = source.fingerprint().await;
    assert_eq!(expected.len(), 6, "{expected:?}");

    let admin = mysql_async::Opts::from_url(&crate::support::server_url()).unwrap();
    let scratch_root = tempfile::tempdir().unwrap();
    let scratch = drill::Scratch::for_backup(&Id::generate(), scratch_root.path());
    let account = drill::prepare(admin.clone(), &scratch).await.unwrap();
    let target = Schema {
        admin: sqlx::MySqlPool::connect(&crate::support::server_url())
            .await
            .unwrap(),
        name: scratch.schema.clone(),
    };
    let restored = restore::restore_database(&store, &manifest, account.opts.clone(), None)
        .await
        .unwrap();
    assert_eq!(target.fingerprint().await, expected);
    assert_eq!(restored.inserts_per_writer.len(), restore::WRITERS);
    let inserts: u64 = restored.inserts_per_writer.iter().sum();
    let sql = unzstd(
        &fetch(
            &store,
            &manifest.object(backup::DATABASE_OBJECT).unwrap().key,
        )
        .await,
    );
    let sql = String::from_utf8_lossy(&sql).into_owned();
    assert_eq!(inserts, sql.matches("\nINSERT INTO ").count() as u64);
    assert!(inserts >= 20, "a dump of many statements: {inserts}");
    eprintln!("INSERTs per connection: {:?}", restored.inserts_per_writer);
    let busy = restored
        .inserts_per_writer
        .iter()
        .filter(|n| **n > 0)
        .count();
    assert!(
        busy >= 2,
        "the rows went over several connections: {:?}",
        restored.inserts_per_writer
    );
    // Running it again (a step taken up again) converges on the same rows.
    restore::restore_database(&store, &manifest, account.opts.clone(), None)
        .await
        .unwrap();
    assert_eq!(target.fingerprint().await, expected);

    // A statement the server refuses (a table the dump never made) before the rows.
    let at = sql.find("\nINSERT INTO ").unwrap() + 1;
    let bad = format!(
        "{}INSERT INTO wp_missing VALUES (1);\n{}",
        &sql[..at],
        &sql[at..]
    );
    let body = zstd::encode_all(bad.as_bytes(), 3).unwrap();
    let key = manifest
        .object(backup::DATABASE_OBJECT)
        .unwrap()
        .key
        .clone();
    store
        .put(&key, body.clone(), "application/zstd")
        .await
        .unwrap();
    let mut crafted = manifest.clone();
    for o in &mut crafted.objects {
        if o.name == backup::DATABASE_OBJECT {
            o.size = body.len() as u64;
            o.sha256 = hex::encode(sha2::Sha256::digest(&body));
        }
    }
    let position = bad[..at].matches(";\n").count() + 1;
    let err = restore::restore_database(&store, &crafted, account.opts.clone(), None)
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(matches!(err, restore::RestoreError::Failed(_)), "{text}");
    assert!(
        text.contains(&format!("running statement {position} of the dump")),
        "{text}"
    );
    assert!(text.contains("wp_missing"), "{text}");
    let loaded: i64 = target
        .fingerprint()
        .await
        .iter()
        .map(|(_, _, rows)| rows)
        .sum();
    let total: i64 = expected.iter().map(|(_, _, rows)| rows).sum();
    assert!(loaded < total, "stopped: {loaded} of {total} rows loaded");
    let mut sessions = -1i64;
    for _ in 0..40 {
        sessions = sqlx::query_scalar(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?",
        )
        .bind(&scratch.schema)
        .fetch_one(&target.admin)
        .await
        .unwrap();
        if sessions == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(sessions, 0, "every connection closed");

    drill::drop_scratch(admin, &scratch).await.unwrap();
    target.admin.close().await;
    source.drop().await;
    drop(s3);
}

//! Backup drills against real servers: the machine's MariaDB and an `s3s-fs` of each
//! test's own. A drill restores a backup into a scratch database and folder, compares
//! it with the manifest, records the result on the backup and counts it in `/metrics`.

use platform::{backup::drill_job, config::DrillsConfig, domain::Id, provision::Backends};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    backup::{S3Server, backends_config, fetch, seed_site},
    support::{SECRET_KEY, TestApp, random_name},
};

struct Env {
    s3: S3Server,
    sites_root: tempfile::TempDir,
    app: TestApp,
    provisioner: Backends,
    admin: String,
    tenant: String,
    member: String,
}

async fn env() -> Env {
    let s3 = S3Server::start().await;
    let sites_root = tempfile::tempdir().unwrap();
    let backends = backends_config(&s3, sites_root.path());
    let provisioner = Backends::from_config(&backends, SECRET_KEY.as_bytes()).unwrap();
    let app = TestApp::spawn_with(|c| {
        c.backends = backends;
        c.reconcile.enabled = false;
        // The tests run the schedule's passes themselves.
        c.drills.enabled = false;
    })
    .await;
    let admin = app.admin_token().await;
    let tenant = app
        .create_tenant(&admin, &random_name("dr").replace('_', "-"))
        .await;
    let (member, _) = app.user_with_role(&admin, &tenant, "member").await;
    Env {
        s3,
        sites_root,
        app,
        provisioner,
        admin,
        tenant,
        member,
    }
}

async fn backup_now(app: &TestApp, token: &str, site: &Id) -> String {
    let (status, body) = app
        .post(&format!("/v1/sites/{site}/backups"), token, json!(null))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let op = body["operation"]["id"].as_str().unwrap().to_owned();
    let done = app.wait_operation(token, &op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    body["backup"]["id"].as_str().unwrap().to_owned()
}

/// Starts a drill through the API as `token`; returns the operation once it ended.
async fn drill(app: &TestApp, token: &str, backup: &str) -> Value {
    let (status, body) = app
        .post(&format!("/v1/backups/{backup}/verify"), token, json!(null))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["operation"]["kind"], "backup.verify", "{body}");
    assert_eq!(body["operation"]["target_id"], backup, "{body}");
    let op = body["operation"]["id"].as_str().unwrap().to_owned();
    app.wait_operation(token, &op).await
}

/// `pressdock_backup_drills_total{result}` as `/metrics` shows it (0 when absent).
async fn drills_metric(app: &TestApp, result: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("pressdock_backup_drills_total{{result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

async fn scratch_schema_exists(app: &TestApp, backup: &str) -> bool {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
    )
    .bind(format!("drill_{backup}"))
    .fetch_one(&app.db)
    .await
    .unwrap();
    n > 0
}

fn scratch_dir(backup: &str) -> std::path::PathBuf {
    drill_job::scratch_root().join(format!("drill_{backup}"))
}

/// A good backup passes its drill (shown on the backup, in the list, in the metrics) and
/// its scratch is dropped; after one of its objects is damaged in the bucket, the next
/// drill fails naming that object, the failure is on the backup and in the metrics.
#[tokio::test]
async fn a_good_backup_passes_its_drill_and_a_damaged_object_fails_it_by_name() {
    let e = env().await;
    let (site, schema) = seed_site(&e.app, &e.tenant, e.sites_root.path()).await;
    let backup = backup_now(&e.app, &e.member, &site).await;

    let (status, list) = e
        .app
        .get(&format!("/v1/sites/{site}/backups"), &e.member)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["items"][0]["id"], backup.as_str(), "{list}");
    assert_eq!(list["items"][0]["verified_at"], Value::Null, "{list}");
    assert_eq!(list["items"][0]["verify_result"], Value::Null, "{list}");

    // A drill is the platform's to run: the site's own member is refused.
    let (status, body) = e
        .app
        .post(
            &format!("/v1/backups/{backup}/verify"),
            &e.member,
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["status"], 403, "{body}");
    // Not a backup of anyone's: 404.
    let (status, body) = e
        .app
        .post(
            &format!("/v1/backups/{}/verify", Id::generate()),
            &e.admin,
            json!(null),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let passed_before = drills_metric(&e.app, "passed").await;
    let op = drill(&e.app, &e.admin, &backup).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let (status, row) = e.app.get(&format!("/v1/backups/{backup}"), &e.member).await;
    assert_eq!(status, StatusCode::OK, "{row}");
    assert_eq!(row["verify_result"], "passed", "{row}");
    assert_eq!(row["verify_error"], Value::Null, "{row}");
    assert!(row["verified_at"].is_string(), "{row}");
    assert_eq!(row["state"], "complete", "{row}");
    assert!(drills_metric(&e.app, "passed").await >= passed_before + 1.0);
    assert!(!scratch_schema_exists(&e.app, &backup).await);
    assert!(!scratch_dir(&backup).exists());
    // The site itself was not touched.
    assert!(!schema.fingerprint().await.is_empty());

    // One byte of wp-content's object changed in the bucket, its size kept.
    let store = e.s3.store();
    let key = format!("{}/{site}/{backup}/wp-content.tar.zst", e.tenant);
    let mut body = fetch(&store, &key).await;
    let middle = body.len() / 2;
    body[middle] ^= 0x55;
    store
        .put(&key, body, "application/octet-stream")
        .await
        .unwrap();

    let failed_before = drills_metric(&e.app, "failed").await;
    let op = drill(&e.app, &e.admin, &backup).await;
    assert_eq!(op["state"], "failed", "{op}");
    assert!(
        op["error"]
            .as_str()
            .unwrap_or_default()
            .contains("wp-content.tar.zst does not match the manifest"),
        "{op}"
    );
    let (status, list) = e
        .app
        .get(&format!("/v1/sites/{site}/backups"), &e.member)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let row = &list["items"][0];
    assert_eq!(row["id"], backup.as_str(), "{list}");
    assert_eq!(row["verify_result"], "failed", "{row}");
    let error = row["verify_error"].as_str().unwrap();
    assert!(
        error.contains("wp-content.tar.zst does not match the manifest"),
        "{error}"
    );
    assert!(!error.contains(SECRET_KEY), "{error}");
    // Still a backup, still listed: a drill reports, it does not delete.
    assert_eq!(row["state"], "complete", "{row}");
    assert!(drills_metric(&e.app, "failed").await >= failed_before + 1.0);
    assert!(!scratch_schema_exists(&e.app, &backup).await);
    assert!(!scratch_dir(&backup).exists());

    schema.drop().await;
    e.app.finish().await;
    drop(e.s3);
}

async fn wait_drill(app: &TestApp, token: &str, backup: &str) -> Value {
    let op: String = sqlx::query_scalar("SELECT verify_operation_id FROM backups WHERE id = ?")
        .bind(backup)
        .fetch_one(&app.db)
        .await
        .unwrap();
    app.wait_operation(token, &op).await
}

/// The schedule drills each site's latest complete backup once per period, never an
/// older one, and a site again once its last drill is older than the period; a pass
/// while a drill is under way adds none.
#[tokio::test]
async fn the_schedule_drills_each_sites_latest_backup_once_per_period() {
    let e = env().await;
    let (a, schema_a) = seed_site(&e.app, &e.tenant, e.sites_root.path()).await;
    let (b, schema_b) = seed_site(&e.app, &e.tenant, e.sites_root.path()).await;
    let a_old = backup_now(&e.app, &e.member, &a).await;
    let a_latest = backup_now(&e.app, &e.member, &a).await;
    let b_latest = backup_now(&e.app, &e.member, &b).await;
    let config = DrillsConfig {
        enabled: true,
        interval_secs: 3600,
        every_days: 7,
        max_per_pass: 10,
    };

    let mut due = drill_job::schedule_once(&e.app.db, &e.provisioner, &config)
        .await
        .unwrap();
    due.sort();
    let mut expected = vec![a_latest.clone(), b_latest.clone()];
    expected.sort();
    assert_eq!(due, expected);
    // Under way: a second pass adds nothing.
    let again = drill_job::schedule_once(&e.app.db, &e.provisioner, &config)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    for backup in [&a_latest, &b_latest] {
        let op = wait_drill(&e.app, &e.admin, backup).await;
        assert_eq!(op["state"], "succeeded", "{op}");
    }
    let (_, row) = e.app.get(&format!("/v1/backups/{a_old}"), &e.member).await;
    assert_eq!(row["verified_at"], Value::Null, "{row}");
    // Drilled within the period: not due.
    let none = drill_job::schedule_once(&e.app.db, &e.provisioner, &config)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    // Site a's drill eight days old: a is due again, b is not.
    sqlx::query("UPDATE backups SET verified_at = NOW(6) - INTERVAL 8 DAY WHERE site_id = ?")
        .bind(a.as_str())
        .execute(&e.app.db)
        .await
        .unwrap();
    let due = drill_job::schedule_once(&e.app.db, &e.provisioner, &config)
        .await
        .unwrap();
    assert_eq!(due, vec![a_latest.clone()]);
    let op = wait_drill(&e.app, &e.admin, &a_latest).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let (_, row) = e
        .app
        .get(&format!("/v1/backups/{a_latest}"), &e.member)
        .await;
    assert_eq!(row["verify_result"], "passed", "{row}");

    for s in [schema_a, schema_b] {
        s.drop().await;
    }
    e.app.finish().await;
    drop(e.s3);
}

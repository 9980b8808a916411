//! Backup drills against real servers: the machine's MariaDB and an `s3s-fs` of each
//! test's own. A drill restores a backup into a scratch database and folder, compares
//! it with the manifest, records the result on the backup and counts it in `/metrics`.

use platform::{
    backup::{drill, drill_job},
    config::DrillsConfig,
    domain::Id,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    backup::fetch,
    backup_fixture::{BackupEnv, Setup},
    support::{SECRET_KEY, TestApp},
};

async fn env() -> BackupEnv {
    Setup::new("dr").start().await
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
    let (site, schema) = e.seed_site().await;
    let backup = e.backup_now(&e.member, &site).await;

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
    e.finish().await;
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
    let (a, schema_a) = e.seed_site().await;
    let (b, schema_b) = e.seed_site().await;
    let a_old = e.backup_now(&e.member, &a).await;
    let a_latest = e.backup_now(&e.member, &a).await;
    let b_latest = e.backup_now(&e.member, &b).await;
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
    e.finish().await;
}

/// A drill writes its scratch as an account of its own, `drill_<backup>`@`%`, granted on
/// the scratch schema only: that account can build tables in its scratch, but cannot
/// read (or even select) the site's schema, create a database or see another; a drill
/// reports it wrote through that account, and the account goes with the scratch.
#[tokio::test]
async fn a_drill_writes_as_a_scratch_account_that_cannot_read_another_schema() {
    use mysql_async::prelude::Queryable;

    let e = env().await;
    let (site, schema) = e.seed_site().await;
    let backup = e.backup_now(&e.member, &site).await;
    let backup_id = Id::parse(&backup).unwrap();
    let admin = mysql_async::Opts::from_url(&crate::support::server_url()).unwrap();
    let scratch_root = tempfile::tempdir().unwrap();
    let scratch = drill::Scratch::for_backup(&backup_id, scratch_root.path());
    let account_rows = || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM mysql.user WHERE User = ?")
            .bind(format!("drill_{backup}"))
            .fetch_one(&e.app.db)
            .await
            .unwrap();
        n
    };

    let account = drill::prepare(admin.clone(), &scratch).await.unwrap();
    assert_eq!(account.current_user, format!("drill_{backup}@%"));
    assert!(!format!("{account:?}").contains(account.opts.pass().unwrap()));
    let mut conn = mysql_async::Conn::new(account.opts.clone()).await.unwrap();
    // Its own schema: tables made, written and read.
    conn.query_drop("CREATE TABLE t (id INT PRIMARY KEY)")
        .await
        .unwrap();
    conn.query_drop("INSERT INTO t VALUES (1)").await.unwrap();
    let own: Option<i64> = conn.query_first("SELECT COUNT(*) FROM t").await.unwrap();
    assert_eq!(own, Some(1));
    // Another schema (the site's, which the backup came from): no rows, no `USE`.
    let denied = |r: Result<(), mysql_async::Error>| match r {
        Err(mysql_async::Error::Server(e)) => e.code,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let read = conn
        .query_drop(format!("SELECT * FROM `{}`.wp_options", schema.name))
        .await;
    assert_eq!(denied(read), 1142, "SELECT command denied");
    let write = conn
        .query_drop(format!(
            "INSERT INTO `{}`.wp_options (option_name, option_value) VALUES ('x', 'y')",
            schema.name
        ))
        .await;
    assert_eq!(denied(write), 1142, "INSERT command denied");
    let select_db = conn.query_drop(format!("USE `{}`", schema.name)).await;
    assert_eq!(denied(select_db), 1044, "access denied to the database");
    let create_db = conn
        .query_drop(format!("CREATE DATABASE `drillX{backup}`"))
        .await;
    assert_eq!(
        denied(create_db),
        1044,
        "no other database, not even a look-alike"
    );
    let mut visible: Vec<String> = conn.query("SHOW DATABASES").await.unwrap();
    visible.sort();
    assert_eq!(
        visible,
        vec![format!("drill_{backup}"), "information_schema".to_owned()]
    );
    let grants: Vec<String> = conn.query("SHOW GRANTS").await.unwrap();
    assert_eq!(grants.len(), 2, "{grants:?}");
    assert!(grants[0].starts_with(&format!("GRANT USAGE ON *.* TO `drill_{backup}`@`%`")));
    assert_eq!(
        grants[1],
        format!("GRANT ALL PRIVILEGES ON `drill\\_{backup}`.* TO `drill_{backup}`@`%`")
    );

    // Dropped with the scratch: its open session is ended, the account is gone.
    drill::drop_scratch(admin.clone(), &scratch).await.unwrap();
    assert!(conn.query_drop("SELECT 1").await.is_err(), "session ended");
    assert_eq!(account_rows().await, 0);
    assert!(!scratch_schema_exists(&e.app, &backup).await);
    assert!(
        mysql_async::Conn::new(account.opts.clone()).await.is_err(),
        "the account no longer connects"
    );

    // A whole drill: written through that account, which is gone afterwards.
    let store = e.s3.store();
    let prefix = platform::backup::backup_prefix(&Id::parse(&e.tenant).unwrap(), &site, &backup_id);
    let report = drill::run(&store, &prefix, None, admin, &scratch)
        .await
        .unwrap();
    assert_eq!(report.account, format!("drill_{backup}@%"));
    assert!(report.rows > 20_000, "{report:?}");
    assert_eq!(account_rows().await, 0);
    assert!(!scratch_schema_exists(&e.app, &backup).await);
    assert!(!scratch.dir.exists());
    // The site's own schema is untouched.
    assert!(!schema.fingerprint().await.is_empty());

    schema.drop().await;
    e.finish().await;
}

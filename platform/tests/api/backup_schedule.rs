//! Backup policies per plan, the scheduler and the pruner (issue 13, item 3) against the
//! machine's MariaDB and a real s3s-fs. The scheduler's pass is called with the time it
//! should believe (`backup::schedule::pass(…, now)`), so days of schedule take seconds;
//! the backups it starts are run by the test server's job runner.

use chrono::{DateTime, Duration as TimeDelta, Timelike, Utc};
use platform::{backup::schedule, config::BackupsConfig, domain::Id};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    backup_fixture::{BackupEnv, Setup},
    support::{TestApp, random_name},
};

async fn starter(app: &TestApp) -> String {
    sqlx::query_scalar("SELECT id FROM plans WHERE slug = 'starter'")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn put_policy(app: &TestApp, token: &str, plan: &str, body: Value) -> (StatusCode, Value) {
    app.request(
        Method::PUT,
        &format!("/v1/plans/{plan}/backup-policy"),
        Some(token),
        Some(body),
    )
    .await
}

/// Staff set a plan's policy through the API; every fault is a problem+json naming its
/// field; a tenant member may read it but not change it.
#[tokio::test]
async fn backup_policies_are_set_by_staff_and_checked_field_by_field() {
    let app = TestApp::spawn_with(|c| c.reconcile.enabled = false).await;
    let admin = app.admin_token().await;
    let tenant = app
        .create_tenant(&admin, &random_name("bp").replace('_', "-"))
        .await;
    let (member, _) = app.user_with_role(&admin, &tenant, "owner").await;
    let plan = starter(&app).await;

    let (status, body) = app
        .get(&format!("/v1/plans/{plan}/backup-policy"), &admin)
        .await;
    // No policy yet: one that schedules and prunes nothing (404 is for an unknown plan).
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["enabled"], false, "{body}");
    assert!(
        body["schedule"].is_null() && body["updated_at"].is_null(),
        "{body}"
    );
    assert!(
        body["keep_count"].is_null() && body["keep_days"].is_null(),
        "{body}"
    );

    for (input, field) in [
        (json!({ "schedule": "daily 25:00" }), "schedule"),
        (json!({ "schedule": "daily 3:00" }), "schedule"),
        (json!({ "schedule": "every 0h" }), "schedule"),
        (json!({ "schedule": "every 169h" }), "schedule"),
        (json!({ "schedule": "hourly" }), "schedule"),
        (
            json!({ "schedule": "every 6h", "keep_count": 0 }),
            "keep_count",
        ),
        (
            json!({ "schedule": "every 6h", "keep_days": 4000 }),
            "keep_days",
        ),
    ] {
        let (status, body) = put_policy(&app, &admin, &plan, input.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{input}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{input}: {body}");
    }
    for input in [
        json!({ "keep_count": 3 }),
        json!({ "schedule": 6 }),
        json!({ "schedule": "every 6h", "hourly": true }),
    ] {
        let (status, body) = put_policy(&app, &admin, &plan, input.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{input}: {body}");
        assert!(body["title"].as_str().is_some(), "{body}");
    }
    // The document's pattern is the one the server parses.
    let (_, doc) = app.get("/v1/openapi.json", &admin).await;
    assert_eq!(
        doc["components"]["schemas"]["NewBackupPolicy"]["properties"]["schedule"]["pattern"],
        platform::app::plans::SCHEDULE_PATTERN
    );
    let (status, body) = put_policy(&app, &member, &plan, json!({ "schedule": "every 6h" })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = put_policy(
        &app,
        &admin,
        &Id::generate().to_string(),
        json!({ "schedule": "every 6h" }),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = app.get("/v1/plans/nope/backup-policy", &admin).await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::UNPROCESSABLE_ENTITY,
        "{status} {body}"
    );

    let (status, body) = put_policy(
        &app,
        &admin,
        &plan,
        json!({ "schedule": "daily 03:30", "keep_count": 7, "keep_days": 30 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["plan_id"], plan.as_str());
    assert_eq!(body["enabled"], true);
    assert_eq!(body["schedule"], "daily 03:30");
    assert_eq!(body["daily_at"], "03:30");
    assert!(body["every_hours"].is_null(), "{body}");
    assert_eq!(body["keep_count"], 7);
    assert_eq!(body["keep_days"], 30);
    let next: DateTime<Utc> = body["next_run_at"].as_str().unwrap().parse().unwrap();
    assert_eq!((next.hour(), next.minute()), (3, 30), "{body}");
    assert!(
        next > Utc::now() && next <= Utc::now() + TimeDelta::days(1),
        "{body}"
    );

    // Replaced whole; the member reads it.
    let (status, body) = put_policy(
        &app,
        &admin,
        &plan,
        json!({ "schedule": "every 6h", "enabled": false }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, got) = app
        .get(&format!("/v1/plans/{plan}/backup-policy"), &member)
        .await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["every_hours"], 6, "{got}");
    assert!(
        got["daily_at"].is_null() && got["keep_count"].is_null(),
        "{got}"
    );
    assert_eq!(got["enabled"], false);
    assert!(got["next_run_at"].is_null(), "{got}");
    let audited: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'plan.backup_policy' AND target_id = ?",
    )
    .bind(&plan)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(audited, 2);
    app.finish().await;
}

async fn env(config: BackupsConfig) -> BackupEnv {
    Setup::new("sc").backups(config).start().await
}

/// The schedule's helpers on the shared set-up.
impl BackupEnv {
    async fn pass(&self, now: DateTime<Utc>) -> schedule::PassReport {
        schedule::pass(&self.app.db, &self.provisioner, &self.backups, now)
            .await
            .unwrap()
            .expect("no other scheduler holds the lock")
    }

    /// Waits for the operations of `backups` to end; returns their states.
    async fn settle(&self, backups: &[String]) -> Vec<String> {
        let mut states = Vec::new();
        for b in backups {
            let op: String = sqlx::query_scalar(
                "SELECT id FROM operations WHERE target_type = 'backup' AND target_id = ? \
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(b)
            .fetch_one(&self.app.db)
            .await
            .unwrap();
            // Up to 3 minutes: a loaded CI machine runs many backups at once.
            let mut state = String::new();
            for _ in 0..1800 {
                state = sqlx::query_scalar("SELECT state FROM operations WHERE id = ?")
                    .bind(&op)
                    .fetch_one(&self.app.db)
                    .await
                    .unwrap();
                if matches!(state.as_str(), "succeeded" | "failed") {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            assert_eq!(state, "succeeded", "operation {op} of backup {b}");
            let state: String = sqlx::query_scalar("SELECT state FROM backups WHERE id = ?")
                .bind(b)
                .fetch_optional(&self.app.db)
                .await
                .unwrap()
                .unwrap_or_else(|| "removed".to_owned());
            states.push(state);
        }
        states
    }
}

/// One backup per slot, a second pass in the same slot starts none; three days of
/// downtime end in one backup per site (not three); `max_running` defers the rest to a
/// later pass; a site created after the slot waits for the next one.
#[tokio::test]
async fn the_scheduler_takes_each_slot_once_and_catches_up_with_one_backup() {
    let e = env(BackupsConfig {
        max_running: 1,
        ..BackupsConfig::default()
    })
    .await;
    let plan = starter(&e.app).await;
    let (status, body) = put_policy(
        &e.app,
        &e.admin,
        &plan,
        json!({ "schedule": "daily 03:00", "keep_count": 10 }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (a, schema_a) = e.seed_site().await;
    let (b, schema_b) = e.seed_site().await;

    // Tomorrow at 04:00 UTC: the 03:00 slot is due for both; one runs at a time.
    let day = (Utc::now() + TimeDelta::days(1)).date_naive();
    let t0 = day.and_hms_opt(4, 0, 0).unwrap().and_utc();
    let slot0 = day.and_hms_opt(3, 0, 0).unwrap().and_utc();
    // Another replica's pass holds the lock: this one does nothing.
    let mut other = e.app.db.acquire().await.unwrap();
    let held: i64 = sqlx::query_scalar(
        "SELECT GET_LOCK(LEFT(CONCAT('pressdock_backups.', DATABASE()), 64), 0)",
    )
    .fetch_one(&mut *other)
    .await
    .unwrap();
    assert_eq!(held, 1);
    let skipped = schedule::pass(&e.app.db, &e.provisioner, &e.backups, t0)
        .await
        .unwrap();
    assert_eq!(skipped, None);
    sqlx::query("DO RELEASE_LOCK(LEFT(CONCAT('pressdock_backups.', DATABASE()), 64))")
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);
    let first = e.pass(t0).await;
    assert_eq!(first.started.len(), 1, "{first:?}");
    assert_eq!(first.deferred, 1, "{first:?}");
    assert_eq!(e.settle(&first.started).await, ["complete"]);
    let second = e.pass(t0 + TimeDelta::minutes(1)).await;
    assert_eq!(second.started.len(), 1, "{second:?}");
    assert_eq!(e.settle(&second.started).await, ["complete"]);
    // The same slot again: nothing.
    let again = e.pass(t0 + TimeDelta::minutes(2)).await;
    assert_eq!(again, schedule::PassReport::default());
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT site_id, kind, scheduled_for FROM backups WHERE state = 'complete' ORDER BY site_id",
    )
    .fetch_all(&e.app.db)
    .await
    .unwrap();
    let mut sites = [a.to_string(), b.to_string()];
    sites.sort();
    assert_eq!(
        rows,
        sites
            .iter()
            .map(|s| (s.clone(), "scheduled".to_owned(), slot0))
            .collect::<Vec<_>>()
    );
    // Through the API: a scheduled backup with its slot.
    let (status, page) = e.app.get(&format!("/v1/sites/{a}/backups"), &e.admin).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["items"][0]["kind"], "scheduled", "{page}");
    assert_eq!(
        page["items"][0]["scheduled_for"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        slot0
    );

    // Down for three days: the passes resume at t0 + 3 days; each site gets one backup
    // (for the latest slot), not three.
    let t3 = t0 + TimeDelta::days(3);
    let mut started = Vec::new();
    for minute in 0..4 {
        let r = e.pass(t3 + TimeDelta::minutes(minute)).await;
        e.settle(&r.started).await;
        started.extend(r.started);
    }
    assert_eq!(started.len(), 2, "{started:?}");
    let per_site: Vec<(String, i64)> = sqlx::query_as(
        "SELECT site_id, COUNT(*) FROM backups WHERE kind = 'scheduled' GROUP BY site_id ORDER BY site_id",
    )
    .fetch_all(&e.app.db)
    .await
    .unwrap();
    assert_eq!(
        per_site,
        sites.iter().map(|s| (s.clone(), 2)).collect::<Vec<_>>()
    );
    let last: DateTime<Utc> =
        sqlx::query_scalar("SELECT MAX(scheduled_for) FROM backups WHERE site_id = ?")
            .bind(a.as_str())
            .fetch_one(&e.app.db)
            .await
            .unwrap();
    assert_eq!(last, slot0 + TimeDelta::days(3));

    // A site created after the slot waits for the next one; a disabled policy schedules
    // nothing.
    let (c, schema_c) = e.seed_site().await;
    sqlx::query("UPDATE sites SET created_at = ? WHERE id = ?")
        .bind((t3 - TimeDelta::minutes(30)).naive_utc())
        .bind(c.as_str())
        .execute(&e.app.db)
        .await
        .unwrap();
    assert_eq!(
        e.pass(t3 + TimeDelta::minutes(10)).await.started,
        Vec::<String>::new()
    );
    let (status, _) = put_policy(
        &e.app,
        &e.admin,
        &plan,
        json!({ "schedule": "daily 03:00", "enabled": false }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        e.pass(t3 + TimeDelta::days(1)).await.started,
        Vec::<String>::new()
    );

    for s in [schema_a, schema_b, schema_c] {
        s.drop().await;
    }
    e.finish().await;
}

/// Inserts a backup row as the scheduler or a restore leaves it, aged.
async fn aged(
    app: &TestApp,
    site: &Id,
    kind: &str,
    state: &str,
    completed: DateTime<Utc>,
) -> String {
    let id = Id::generate();
    sqlx::query(
        "INSERT INTO backups (id, tenant_id, site_id, kind, state, plan_id, created_at, completed_at) \
         SELECT ?, tenant_id, id, ?, ?, plan_id, ?, ? FROM sites WHERE id = ?",
    )
    .bind(id.as_str())
    .bind(kind)
    .bind(state)
    .bind(completed.naive_utc())
    .bind((state == "complete").then_some(completed.naive_utc()))
    .bind(site.as_str())
    .execute(&app.db)
    .await
    .unwrap();
    id.to_string()
}

async fn restore_row(
    app: &TestApp,
    site: &Id,
    backup: &str,
    pre: &str,
    state: &str,
    ended: DateTime<Utc>,
) {
    sqlx::query(
        "INSERT INTO restores (id, tenant_id, site_id, backup_id, source_site_id, kind, state, \
         pre_restore_backup_id, finished_at) SELECT ?, tenant_id, id, ?, id, 'restore', ?, ?, ? \
         FROM sites WHERE id = ?",
    )
    .bind(Id::generate().as_str())
    .bind(backup)
    .bind(state)
    .bind(pre)
    .bind((state != "running").then_some(ended.naive_utc()))
    .bind(site.as_str())
    .execute(&app.db)
    .await
    .unwrap();
}

/// Retention by count and by age removes the objects and then the rows of expired
/// backups, and never the newest complete backup of a site, one a restore under way
/// reads, a pre-restore backup within its days, nor a deleted site's final backup within
/// `final_retention_days`.
#[tokio::test]
async fn retention_prunes_expired_backups_and_keeps_the_protected_ones() {
    let e = env(BackupsConfig::default()).await;
    let plan = starter(&e.app).await;
    let (status, body) = put_policy(
        &e.app,
        &e.admin,
        &plan,
        json!({ "schedule": "every 24h", "keep_count": 2, "keep_days": 10, "enabled": false }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let now = Utc::now();
    let days = |d: i64| now - TimeDelta::days(d);
    let (site, schema) = e.seed_site().await;

    // A real backup, its objects in the bucket, made scheduled and 3 days old: third by
    // count, so expired.
    let (status, body) = e
        .app
        .post(&format!("/v1/sites/{site}/backups"), &e.admin, json!(null))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let real = body["backup"]["id"].as_str().unwrap().to_owned();
    assert_eq!(e.settle(std::slice::from_ref(&real)).await, ["complete"]);
    sqlx::query("UPDATE backups SET kind = 'scheduled', completed_at = ? WHERE id = ?")
        .bind(days(3).naive_utc())
        .bind(&real)
        .execute(&e.app.db)
        .await
        .unwrap();
    let prefix = format!("{}/{site}/{real}/", e.tenant);
    assert_eq!(e.s3.store().list(&prefix).await.unwrap().len(), 3);

    let newest = aged(&e.app, &site, "scheduled", "complete", days(1)).await;
    let second = aged(&e.app, &site, "scheduled", "complete", days(2)).await;
    let old_in_use = aged(&e.app, &site, "scheduled", "complete", days(20)).await;
    let old = aged(&e.app, &site, "scheduled", "complete", days(30)).await;
    let manual_old = aged(&e.app, &site, "manual", "complete", days(90)).await;
    let failed_old = aged(&e.app, &site, "scheduled", "failed", days(8)).await;
    let failed_new = aged(&e.app, &site, "manual", "failed", days(2)).await;
    let pre_done = aged(&e.app, &site, "pre_restore", "complete", days(9)).await;
    let pre_recent = aged(&e.app, &site, "pre_restore", "complete", days(3)).await;
    restore_row(&e.app, &site, &manual_old, &pre_done, "complete", days(8)).await;
    restore_row(&e.app, &site, &manual_old, &pre_recent, "complete", days(2)).await;
    // A restore under way reads `old_in_use`.
    let pre_running = aged(&e.app, &site, "pre_restore", "complete", days(40)).await;
    restore_row(&e.app, &site, &old_in_use, &pre_running, "running", now).await;

    // A site whose only backup is scheduled and 40 days old: the newest, kept.
    let (lonely, lonely_schema) = e.seed_site().await;
    let only = aged(&e.app, &lonely, "scheduled", "complete", days(40)).await;
    // Deleted sites: one 31 days ago (its final and older backups go), one 2 days ago
    // (its final backup stays).
    let (gone, gone_schema) = e.seed_site().await;
    let gone_final = aged(&e.app, &gone, "final", "complete", days(31)).await;
    let gone_manual = aged(&e.app, &gone, "manual", "complete", days(60)).await;
    let (recent, recent_schema) = e.seed_site().await;
    let recent_final = aged(&e.app, &recent, "final", "complete", days(2)).await;
    for (s, d) in [(&gone, 31), (&recent, 2)] {
        sqlx::query("UPDATE sites SET state = 'deleted', deleted_at = ? WHERE id = ?")
            .bind(days(d).naive_utc())
            .bind(s.as_str())
            .execute(&e.app.db)
            .await
            .unwrap();
    }

    let report = e.pass(now).await;
    let mut pruned = report.pruned.clone();
    pruned.sort();
    let mut expected = vec![
        real.clone(),
        old.clone(),
        failed_old.clone(),
        pre_done.clone(),
        gone_final.clone(),
        gone_manual.clone(),
    ];
    expected.sort();
    assert_eq!(pruned, expected, "{report:?}");
    assert!(report.started.is_empty());
    let states = e.settle(&pruned).await;
    assert!(states.iter().all(|s| s == "deleted"), "{states:?}");
    // The real backup's objects are gone from the bucket.
    assert_eq!(e.s3.store().list(&prefix).await.unwrap(), vec![]);
    let kept: Vec<String> =
        sqlx::query_scalar("SELECT id FROM backups WHERE state = 'complete' OR state = 'failed'")
            .fetch_all(&e.app.db)
            .await
            .unwrap();
    for id in [
        &newest,
        &second,
        &old_in_use,
        &manual_old,
        &failed_new,
        &pre_recent,
        &pre_running,
        &only,
        &recent_final,
    ] {
        assert!(kept.contains(id), "{id} must be kept: {kept:?}");
    }
    // The tenant no longer sees the pruned ones.
    let (status, body) = e.app.get(&format!("/v1/backups/{old}"), &e.admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let audited: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'backup.prune'")
            .fetch_one(&e.app.db)
            .await
            .unwrap();
    assert_eq!(audited, 6);

    // Nothing more to prune at the same time; a day later the deleted rows go.
    assert_eq!(e.pass(now).await.pruned, Vec::<String>::new());
    let later = e.pass(now + TimeDelta::hours(25)).await;
    assert_eq!(later.rows_removed, 6, "{later:?}");
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM backups WHERE state = 'deleted'")
        .fetch_one(&e.app.db)
        .await
        .unwrap();
    assert_eq!(left, 0);

    for s in [schema, lonely_schema, gone_schema, recent_schema] {
        s.drop().await;
    }
    e.finish().await;
}

/// `pressdock plans backup-policy` shows and sets a plan's policy (by slug), refuses
/// retention options without a schedule, and `pressdock backups list --tenant` lists a
/// tenant's backups.
#[tokio::test]
async fn the_cli_sets_and_shows_a_plans_backup_policy() {
    let app = TestApp::spawn_with(|c| c.reconcile.enabled = false).await;
    let admin = app.admin_token().await;
    let tenant = app
        .create_tenant(&admin, &random_name("cp").replace('_', "-"))
        .await;
    let run = |args: &[&str], ok: bool| {
        let (base, token) = (app.base.clone(), admin.clone());
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        async move {
            let out = tokio::process::Command::new(crate::support::binary())
                .args(&args)
                .args(["--url", &base])
                .env("PRESSDOCK_TOKEN", token)
                .env("PRESSDOCK_CLI_CONFIG", "/nonexistent/pressdock-cli.toml")
                .kill_on_drop(true)
                .output()
                .await
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.status.success(), ok, "{args:?}: {stderr}");
            (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
        }
    };
    let (out, _) = run(
        &[
            "plans",
            "backup-policy",
            "starter",
            "--daily-at",
            "02:15",
            "--keep-count",
            "5",
            "--keep-days",
            "14",
            "--json",
        ],
        true,
    )
    .await;
    let set: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(set["daily_at"], "02:15", "{out}");
    assert_eq!(set["keep_count"], 5, "{out}");
    let (out, _) = run(&["plans", "backup-policy", "starter"], true).await;
    assert!(out.contains("02:15") && out.contains("14"), "{out}");
    let (_, err) = run(
        &["plans", "backup-policy", "starter", "--keep-days", "3"],
        false,
    )
    .await;
    assert!(err.contains("--every-hours or --daily-at"), "{err}");
    let (_, err) = run(
        &["plans", "backup-policy", "starter", "--every-hours", "0"],
        false,
    )
    .await;
    assert!(err.contains("schedule"), "{err}");
    let (_, err) = run(&["plans", "backup-policy", "platinum"], false).await;
    assert!(err.contains("no plan platinum"), "{err}");
    let (out, _) = run(
        &[
            "backups", "list", "--tenant", &tenant, "--kind", "final", "--json",
        ],
        true,
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!([]),
        "{out}"
    );
    app.finish().await;
}

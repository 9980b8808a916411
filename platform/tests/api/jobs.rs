//! The job runner across processes: takeover after SIGKILL, two runners sharing work,
//! retries with backoff and unwinding, all against `pressdock serve` child processes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{ADMIN_EMAIL, PASSWORD, ServerProcess, TestApp, wait_operation};

async fn token(http: &reqwest::Client, base: &str) -> String {
    let body: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": ADMIN_EMAIL, "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// A database prepared by an in-process app with its job runner off, plus a tenant and a worker.
async fn prepared() -> (TestApp, String, String) {
    let app = TestApp::spawn_with(|c| c.jobs.enabled = false).await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    (app, admin, tenant)
}

#[tokio::test]
async fn a_killed_runners_saga_is_finished_by_another_without_doubling() {
    let (app, admin, tenant) = prepared().await;
    let http = reqwest::Client::new();
    // Runner A pauses after reserve_slot's effect, before recording it done.
    let mut a = ServerProcess::start(
        &app.database_url,
        &[("PRESSDOCK_FAILPOINTS", "reserve_slot=pause:30000")],
    )
    .await;
    let (_, created) = app.create_site(&admin, &tenant, "takeover.example").await;
    let op = created["operation"]["id"].as_str().unwrap().to_owned();
    let site = created["site"]["id"].as_str().unwrap().to_owned();
    // Wait until the effect exists while the step is still `running`.
    let mut placed = false;
    for _ in 0..200 {
        let state: String = sqlx::query_scalar(
            "SELECT state FROM operation_steps WHERE operation_id = ? AND name = 'reserve_slot'",
        )
        .bind(&op)
        .fetch_one(&app.db)
        .await
        .unwrap();
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM placements WHERE site_id = ?")
            .bind(&site)
            .fetch_one(&app.db)
            .await
            .unwrap();
        if state == "running" && rows == 1 {
            placed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(placed, "runner A reached the failpoint");
    a.kill9();
    let _ = a.child.wait().await;

    // Runner B takes the job over once A's lease (2 s) ends and finishes it.
    let b = ServerProcess::start(&app.database_url, &[]).await;
    let admin_b = token(&http, &b.base).await;
    let done = wait_operation(&http, &b.base, &admin_b, &op).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let reserve = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "reserve_slot")
        .unwrap()
        .clone();
    assert_eq!(
        reserve["attempts"], 2,
        "the interrupted step ran again: {reserve}"
    );
    assert_eq!(reserve["state"], "done");
    // No effect doubled: one placement, one slot used, one site.
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM placements WHERE site_id = ?")
        .bind(&site)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let used: i64 = sqlx::query_scalar("SELECT CAST(SUM(slots) AS SIGNED) FROM placements")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(used, 1);
    let (_, site_body) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert_eq!(site_body["state"], "active");
    assert_eq!(site_body["node"], "worker-1");
    let owner: Option<String> =
        sqlx::query_scalar("SELECT lease_owner FROM jobs WHERE operation_id = ?")
            .bind(&op)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(owner.is_none(), "the finished job holds no lease");
    drop(b);
    app.finish().await;
}

#[tokio::test]
async fn two_runners_share_the_work_and_never_run_a_step_twice() {
    let (app, admin, tenant) = prepared().await;
    let http = reqwest::Client::new();
    let a = ServerProcess::start(&app.database_url, &[]).await;
    let b = ServerProcess::start(&app.database_url, &[]).await;
    let mut ops = Vec::new();
    for i in 0..20 {
        let (status, created) = app
            .create_site(&admin, &tenant, &format!("many{i}.example"))
            .await;
        assert_eq!(status, reqwest::StatusCode::ACCEPTED);
        ops.push(created["operation"]["id"].as_str().unwrap().to_owned());
    }
    let admin_a = token(&http, &a.base).await;
    for op in &ops {
        assert_eq!(
            wait_operation(&http, &a.base, &admin_a, op).await["state"],
            "succeeded"
        );
    }
    let twice: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM operation_steps WHERE attempts <> 1")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(twice, 0, "every step ran exactly once");
    let placed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM placements")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(placed, 20);
    // Both processes took part (their lease owners start with their pids).
    let owners: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT SUBSTRING_INDEX(created_by, '-', 1) FROM operations")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert!(!owners.is_empty());
    drop((a, b));
    app.finish().await;
}

#[tokio::test]
async fn retryable_errors_back_off_and_permanent_ones_unwind() {
    let (app, admin, tenant) = prepared().await;
    let http = reqwest::Client::new();
    let runner = ServerProcess::start(
        &app.database_url,
        &[("PRESSDOCK_FAILPOINTS", "record_site=retry:2")],
    )
    .await;
    let t = token(&http, &runner.base).await;
    let (_, created) = app.create_site(&admin, &tenant, "flaky.example").await;
    let op = wait_operation(
        &http,
        &runner.base,
        &t,
        created["operation"]["id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    assert_eq!(op["steps"][0]["attempts"], 3, "{op}");
    drop(runner);

    let runner = ServerProcess::start(
        &app.database_url,
        &[("PRESSDOCK_FAILPOINTS", "reserve_slot=fail")],
    )
    .await;
    let t = token(&http, &runner.base).await;
    let (_, created) = app.create_site(&admin, &tenant, "doomed.example").await;
    let site = created["site"]["id"].as_str().unwrap().to_owned();
    let op = wait_operation(
        &http,
        &runner.base,
        &t,
        created["operation"]["id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(op["state"], "failed", "{op}");
    assert!(op["error"].as_str().unwrap().contains("failpoint"));
    let states: Vec<&str> = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["undone", "undone"]);
    // Nothing left behind: no placement, no domain; the site is marked failed.
    let placed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM placements WHERE site_id = ?")
        .bind(&site)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let domains: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM domains WHERE site_id = ?")
        .bind(&site)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!((placed, domains), (0, 0));
    let (_, body) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert_eq!(body["state"], "failed");
    drop(runner);
    app.finish().await;
}

/// A deadlock between two transactions (MariaDB picks one to roll back) makes the step wait
/// and run again rather than use up an attempt; other database errors stay retryable.
#[tokio::test]
async fn a_deadlock_is_a_short_wait_not_a_failed_attempt() {
    use platform::sagas::StepError;
    let app = TestApp::spawn_with(|c| c.jobs.enabled = false).await;
    sqlx::query("CREATE TABLE deadlock_probe (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO deadlock_probe VALUES (1, 0), (2, 0)")
        .execute(&app.db)
        .await
        .unwrap();
    let mut a = app.db.begin().await.unwrap();
    let mut b = app.db.begin().await.unwrap();
    let lock = "UPDATE deadlock_probe SET v = v + 1 WHERE id = ?";
    sqlx::query(lock).bind(1).execute(&mut *a).await.unwrap();
    sqlx::query(lock).bind(2).execute(&mut *b).await.unwrap();
    // Each now wants the other's row: one of the two is chosen as the victim.
    let (ra, rb) = tokio::join!(sqlx::query(lock).bind(2).execute(&mut *a), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        sqlx::query(lock).bind(1).execute(&mut *b).await
    });
    let victim = match (ra, rb) {
        (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
        other => panic!("expected exactly one deadlock victim: {other:?}"),
    };
    match StepError::from(victim) {
        StepError::Wait(after, why) => {
            assert!(after <= Duration::from_secs(1), "{after:?}");
            assert!(why.contains("Deadlock"), "{why}");
        }
        other => panic!("a deadlock should wait: {other:?}"),
    }
    drop((a, b));
    let missing = sqlx::query("SELECT * FROM no_such_table")
        .execute(&app.db)
        .await
        .unwrap_err();
    assert!(matches!(StepError::from(missing), StepError::Retryable(_)));
    app.finish().await;
}

/// One process runs many sagas at once (`jobs.concurrency`, 16 by default), not one per
/// fixed loop: 8 creates held in their first step are all `running` together, under one
/// runner's lease owner, and all finish.
#[tokio::test]
async fn one_runner_runs_many_sagas_at_once() {
    let (app, admin, tenant) = prepared().await;
    let http = reqwest::Client::new();
    let server = ServerProcess::start(
        &app.database_url,
        &[("PRESSDOCK_FAILPOINTS", "record_site=pause:10000")],
    )
    .await;
    let mut ops = Vec::new();
    for i in 0..8 {
        let (_, created) = app
            .create_site(&admin, &tenant, &format!("together{i}.example"))
            .await;
        ops.push(created["operation"]["id"].as_str().unwrap().to_owned());
    }
    // Poll (a bound on waiting, not on speed) until the eight are inside the step at once.
    let mut together = 0;
    for _ in 0..300 {
        together = sqlx::query_scalar(
            "SELECT COUNT(*) FROM operation_steps WHERE name = 'record_site' AND state = 'running'",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
        if together == 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(together, 8, "every saga claimed while the others run");
    let owners: Vec<Option<String>> =
        sqlx::query_scalar("SELECT DISTINCT lease_owner FROM jobs WHERE state = 'running'")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(owners.len(), 1, "one process, one runner: {owners:?}");
    assert!(owners[0].is_some());
    let admin_s = token(&http, &server.base).await;
    for op in &ops {
        let done = wait_operation(&http, &server.base, &admin_s, op).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    drop(server);
    app.finish().await;
}

/// Errors for people (issue 12): a tenant reads a failed operation's public message, and
/// never the internal chain; staff read both. A row written by an earlier release (no
/// public message) shows tenants a generic sentence, not its internal error.
#[tokio::test]
async fn a_tenant_reads_the_public_error_and_staff_the_whole_chain() {
    let (app, admin, tenant) = prepared().await;
    let http = reqwest::Client::new();
    let (viewer, _) = app.user_with_role(&admin, &tenant, "viewer").await;
    let runner = ServerProcess::start(
        &app.database_url,
        &[("PRESSDOCK_FAILPOINTS", "reserve_slot=fail")],
    )
    .await;
    let t = token(&http, &runner.base).await;
    let (_, created) = app.create_site(&admin, &tenant, "opaque.example").await;
    let op = created["operation"]["id"].as_str().unwrap().to_owned();
    let done = wait_operation(&http, &runner.base, &t, &op).await;
    assert_eq!(done["state"], "failed", "{done}");
    drop(runner);

    // Staff: the public message and, apart, the chain down to its cause.
    let (status, staff) = app.get(&format!("/v1/operations/{op}"), &admin).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{staff}");
    assert_eq!(staff["error"], "failpoint: reserve_slot fails", "{staff}");
    assert_eq!(
        staff["internal_error"], "failpoint: reserve_slot fails: injected by PRESSDOCK_FAILPOINTS",
        "{staff}"
    );
    let failed = &staff["steps"][1];
    assert_eq!(failed["name"], "reserve_slot", "{staff}");
    assert_eq!(failed["state"], "undone", "{staff}");

    // The tenant's viewer: the same public message, no chain anywhere in the body.
    let (status, seen) = app.get(&format!("/v1/operations/{op}"), &viewer).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{seen}");
    assert_eq!(seen["error"], "failpoint: reserve_slot fails", "{seen}");
    assert!(seen.get("internal_error").is_none(), "{seen}");
    assert!(!seen.to_string().contains("PRESSDOCK_FAILPOINTS"), "{seen}");
    let (status, list) = app
        .get(&format!("/v1/operations?tenant={tenant}"), &viewer)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{list}");
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == op.as_str())
        .unwrap()
        .clone();
    assert_eq!(listed["error"], "failpoint: reserve_slot fails", "{list}");
    assert!(listed.get("internal_error").is_none(), "{list}");
    assert!(!list.to_string().contains("PRESSDOCK_FAILPOINTS"), "{list}");

    // As an earlier release wrote it: only the internal error.
    sqlx::query(
        "UPDATE operations SET public_error = NULL, \
         error = 'galera: Access denied for user root@10.0.0.5' WHERE id = ?",
    )
    .bind(&op)
    .execute(&app.db)
    .await
    .unwrap();
    let (_, seen) = app.get(&format!("/v1/operations/{op}"), &viewer).await;
    assert_eq!(
        seen["error"], "the operation did not succeed; staff can see why",
        "{seen}"
    );
    assert!(!seen.to_string().contains("Access denied"), "{seen}");
    let (_, staff) = app.get(&format!("/v1/operations/{op}"), &admin).await;
    assert_eq!(
        staff["internal_error"], "galera: Access denied for user root@10.0.0.5",
        "{staff}"
    );
    app.finish().await;
}

/// A move off a drained worker that fails after the site went to its new worker cannot take
/// the site back there: the undo leaves it on the new worker and the move ends `failed`,
/// instead of retrying the undo forever (seen on the lab: "undo failed; will try again …
/// worker … is drain", the evacuation stuck for good).
#[tokio::test]
async fn a_failed_evacuation_move_leaves_the_site_on_its_new_worker() {
    let (app, admin, tenant) = prepared().await;
    let http = reqwest::Client::new();
    let runner = ServerProcess::start(&app.database_url, &[]).await;
    let t = token(&http, &runner.base).await;
    let (_, created) = app.create_site(&admin, &tenant, "evacuee.example").await;
    let site = created["site"]["id"].as_str().unwrap().to_owned();
    let op = wait_operation(
        &http,
        &runner.base,
        &t,
        created["operation"]["id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    drop(runner);
    let old: String = sqlx::query_scalar("SELECT node_id FROM placements WHERE site_id = ?")
        .bind(&site)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let new = app.add_worker(&admin, "worker-2", 25).await;

    // Every move's `move_service` fails after its effect (placement and service moved).
    let runner = ServerProcess::start(
        &app.database_url,
        &[("PRESSDOCK_FAILPOINTS", "move_service=fail")],
    )
    .await;
    let (status, _) = app
        .request(
            reqwest::Method::PATCH,
            &format!("/v1/nodes/{old}"),
            Some(&admin),
            Some(json!({ "availability": "drain" })),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK);
    let (status, applied) = app
        .post(
            "/v1/placement/rebalance",
            &admin,
            json!({ "dry_run": false }),
        )
        .await;
    // 202 with the move, or 200 with none if the placement loop queued it first.
    assert!(status.is_success(), "{status} {applied}");

    // The move (the rebalance's or the placement loop's) ends, failed, within a minute.
    let mut ended = None;
    for _ in 0..240 {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT m.state, o.state FROM site_moves m JOIN operations o \
             ON o.id = m.operation_id WHERE m.site_id = ? ORDER BY m.created_at DESC LIMIT 1",
        )
        .bind(&site)
        .fetch_optional(&app.db)
        .await
        .unwrap();
        if let Some((move_state, op_state)) = row
            && (op_state == "failed" || op_state == "succeeded")
        {
            ended = Some((move_state, op_state));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        ended,
        Some(("failed".to_owned(), "failed".to_owned())),
        "the move must end failed, not hang in its undo"
    );
    let placed: String = sqlx::query_scalar("SELECT node_id FROM placements WHERE site_id = ?")
        .bind(&site)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(placed, new, "the site stays on the worker that takes sites");
    drop(runner);
    app.finish().await;
}

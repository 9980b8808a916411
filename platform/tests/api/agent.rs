//! The agents' side: reports with the site's agent token move the site between `active`
//! and `degraded` and show in `GET /v1/sites/{site}`; the first administrator's password is
//! handed out once; cache purges are checked and scoped like every site action.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{SECRET_KEY, TestApp};

/// A report as the agent sends it (`agent_protocol::AgentReport`).
fn report(site: &str, ready: bool, seq: u64) -> Value {
    json!({
        "site_id": site, "seq": seq, "started_at_unix": 1_700_000_000u64, "sent_at_unix": 1_700_000_100u64,
        "node_id": "n0de1d", "task_id": "t4sk1d",
        "health": { "live": true, "ready": ready, "wordpress_installed": true,
                    "checks": [{ "name": "database", "ok": ready }] },
        "versions": { "agent": "0.1.0", "wordpress": "6.1.1" },
        "sizes": { "wp_content_bytes": 1234 },
        "counters": { "requests_total": 5, "requests_5xx_total": 0, "response_bytes_total": 100,
                      "response_seconds_total": 0.5, "child_restarts_total": 0 }
    })
}

/// Gives the site an agent token, as the create saga does with backends configured.
async fn give_agent_token(app: &TestApp, site: &str, token: &str) {
    let sealer = platform::crypto::SecretBox::new(SECRET_KEY.as_bytes());
    let (nonce, sealed) = sealer.seal(&format!("{site}/agent_token"), token).unwrap();
    sqlx::query("INSERT INTO site_secrets (site_id, kind, nonce, ciphertext) VALUES (?, 'agent_token', ?, ?)")
        .bind(site)
        .bind(&nonce[..])
        .bind(&sealed)
        .execute(&app.db)
        .await
        .unwrap();
}

async fn agent_post(app: &TestApp, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    app.request(Method::POST, path, Some(token), Some(body))
        .await
}

async fn active_site(app: &TestApp, admin: &str, tenant: &str, domain: &str) -> (String, Value) {
    let (status, created) = app
        .post(
            &format!("/v1/tenants/{tenant}/sites"),
            admin,
            json!({ "name": "Agent site", "domain": domain, "plan": "starter" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let op = app
        .wait_operation(admin, created["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    (created["site"]["id"].as_str().unwrap().to_owned(), created)
}

#[tokio::test]
async fn reports_move_the_site_between_active_and_degraded_and_show_in_the_site() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let tenant = app.create_tenant(&admin, "agents").await;
    let (site, _) = active_site(&app, &admin, &tenant, "agent.example").await;
    let (other, _) = active_site(&app, &admin, &tenant, "other.example").await;
    let token = "agent-token-0123456789abcdef0123";
    give_agent_token(&app, &site, token).await;

    // Wrong token, another site's id, a malformed body: refused, nothing recorded.
    let (status, body) =
        agent_post(&app, "/v1/agent/report", "wrong", report(&site, true, 1)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["status"], 401);
    let (status, _) = agent_post(&app, "/v1/agent/report", token, report(&other, true, 1)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a token is good for its own site only"
    );
    let (status, body) =
        agent_post(&app, "/v1/agent/report", token, json!({ "site_id": site })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // An agent token is no user credential: tenant and staff routes refuse it.
    for path in [format!("/v1/sites/{site}"), "/v1/tenants".to_owned()] {
        let (status, body) = app.get(&path, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
    }
    let (status, body) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.get("agent").is_none(), "no report yet: {body}");

    // A ready report: the desired config comes back with the site's generation.
    let (status, answer) =
        agent_post(&app, "/v1/agent/report", token, report(&site, true, 1)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["desired"]["generation"], 1);
    assert_eq!(
        answer["desired"]["php"]["max_children"], 4,
        "256 MiB starter plan"
    );
    assert!(answer["report_interval_secs"].as_u64().unwrap() > 0);
    let (_, shown) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert_eq!(shown["agent"]["ready"], true, "{shown}");
    assert_eq!(shown["agent"]["task_id"], "t4sk1d");
    assert_eq!(shown["agent"]["report"]["versions"]["wordpress"], "6.1.1");
    assert_eq!(shown["agent"]["report"]["sizes"]["wp_content_bytes"], 1234);
    // The report's sizes are the hour's storage sample for billing.
    let sample: (String, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT source, wp_content_bytes, db_bytes FROM usage_samples WHERE site_id = ?",
    )
    .bind(&site)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(sample, ("agent".to_owned(), Some(1234), None));

    // Not ready past the timeout: degraded (the sweeper), and active again when ready.
    let (status, _) = agent_post(&app, "/v1/agent/report", token, report(&site, false, 2)).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let changed = platform::app::agent::sweep(&app.db, Duration::ZERO)
        .await
        .unwrap();
    assert!(changed >= 1);
    let (_, shown) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert_eq!(shown["state"], "degraded", "{shown}");
    assert_eq!(shown["agent"]["ready"], false);
    let (status, _) = agent_post(&app, "/v1/agent/report", token, report(&site, true, 3)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert_eq!(shown["state"], "active", "{shown}");
    let (_, audit) = app
        .get(&format!("/v1/tenants/{tenant}/audit"), &admin)
        .await;
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target_id"] == site.as_str())
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"site.degraded") && actions.contains(&"site.ready"),
        "{actions:?}"
    );

    // A site being deleted is told so (404), and its token stops working with it.
    let (status, _) = app
        .request(
            Method::DELETE,
            &format!("/v1/sites/{site}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _) = agent_post(&app, "/v1/agent/report", token, report(&site, true, 4)).await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::UNAUTHORIZED,
        "{status}"
    );
    app.finish().await;
}

#[tokio::test]
async fn the_admin_password_is_handed_out_once_and_purges_are_checked() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let tenant = app.create_tenant(&admin, "once").await;
    let (viewer, _) = app.user_with_role(&admin, &tenant, "viewer").await;
    let path = format!("/v1/tenants/{tenant}/sites");
    let body = json!({ "name": "Once", "domain": "once.example", "plan": "starter",
                       "admin_user": "editor-in-chief", "admin_email": "Chief@Once.Example" });
    let (status, _, first) = app
        .request_full(
            Method::POST,
            &path,
            Some(&admin),
            Some(body.clone()),
            &[("Idempotency-Key", "once-1")],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let password = first["admin"]["password"].as_str().unwrap().to_owned();
    assert!(password.len() >= 20, "a strong one-time password");
    assert_eq!(first["admin"]["user"], "editor-in-chief");
    assert_eq!(first["admin"]["email"], "chief@once.example");
    assert_eq!(
        first["admin"]["login_url"],
        "http://once.example/wp-login.php"
    );
    let (status, headers, replay) = app
        .request_full(
            Method::POST,
            &path,
            Some(&admin),
            Some(body),
            &[("Idempotency-Key", "once-1")],
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replay["admin"]["user"], "editor-in-chief");
    assert!(
        replay["admin"].get("password").is_none(),
        "a replay does not show it: {replay}"
    );
    let site = first["site"]["id"].as_str().unwrap();
    let (_, shown) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert!(!shown.to_string().contains(&password));
    let stored: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT ciphertext FROM site_secrets WHERE site_id = ? AND kind = 'admin_password'",
    )
    .bind(site)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(stored.len(), 1, "sealed for the installer");
    assert!(
        !String::from_utf8_lossy(&stored[0]).contains(&password),
        "encrypted at rest"
    );
    let idem: Vec<String> = sqlx::query_scalar(
        "SELECT response_body FROM idempotency_keys WHERE response_body IS NOT NULL",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(!idem.is_empty());
    assert!(
        idem.iter().all(|r| !r.contains(&password)),
        "not in the stored replay"
    );

    // Bad logins for WordPress are named.
    let (status, bad) = app
        .post(
            &path,
            &admin,
            json!({ "name": "X", "domain": "x.example", "plan": "starter",
                                      "admin_user": "Bad User", "admin_email": "nope" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = bad["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["admin_user", "admin_email"]);

    // Purges: checked paths, members only, the site must be serving.
    app.wait_operation(&admin, first["operation"]["id"].as_str().unwrap())
        .await;
    let purge = format!("/v1/sites/{site}/cache/purge");
    let (status, bad) = app
        .post(&purge, &admin, json!({ "paths": ["/ok/", "relative"] }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["errors"][0]["field"], "paths[1]");
    let (status, _) = app.post(&purge, &viewer, json!({ "paths": ["/"] })).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a viewer may not purge");
    let (status, done) = app.post(&purge, &admin, json!({ "paths": ["/"] })).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["banned"], 0, "no Varnish configured here");
    let (status, _) = app
        .post("/v1/sites/aaaaaaaaaa/cache/purge", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.finish().await;
}

/// A report from one task of the site: `task` on the swarm node `node`, whose agent
/// started `started` seconds after a fixed time; `requests` tells the reports apart.
fn task_report(
    site: &str,
    task: &str,
    node: &str,
    started: u64,
    seq: u64,
    ready: bool,
    requests: u64,
) -> Value {
    let mut r = report(site, ready, seq);
    r["task_id"] = json!(task);
    r["node_id"] = json!(node);
    r["started_at_unix"] = json!(1_700_000_000u64 + started);
    r["counters"]["requests_total"] = json!(requests);
    r
}

async fn shown_agent(app: &TestApp, admin: &str, site: &str) -> (Value, Value) {
    let (status, shown) = app.get(&format!("/v1/sites/{site}"), admin).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    (
        shown["agent"]["task_id"].clone(),
        shown["agent"]["report"]["counters"]["requests_total"].clone(),
    )
}

#[tokio::test]
async fn a_report_from_a_task_the_site_left_never_overwrites_the_current_one() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let wa = app.add_worker(&admin, "worker-a", 25).await;
    let wb = app.add_worker(&admin, "worker-b", 25).await;
    for (node, swarm) in [(&wa, "swarmnodea"), (&wb, "swarmnodeb")] {
        sqlx::query("UPDATE nodes SET swarm_node_id = ? WHERE id = ?")
            .bind(swarm)
            .bind(node)
            .execute(&app.db)
            .await
            .unwrap();
    }
    let tenant = app.create_tenant(&admin, "ordered").await;
    let (site, _) = active_site(&app, &admin, &tenant, "ordered.example").await;
    let token = "agent-token-ordered-0123456789abc";
    give_agent_token(&app, &site, token).await;
    let placed: String = sqlx::query_scalar("SELECT node_id FROM placements WHERE site_id = ?")
        .bind(&site)
        .fetch_one(&app.db)
        .await
        .unwrap();
    let (from, to, from_swarm, to_swarm) = if placed == wa {
        (&wa, &wb, "swarmnodea", "swarmnodeb")
    } else {
        (&wb, &wa, "swarmnodeb", "swarmnodea")
    };
    let post = |body: Value| agent_post(&app, "/v1/agent/report", token, body);

    // The task on the site's worker reports; a lost-and-resent older report of the same
    // task is answered but not stored.
    let (status, _) = post(task_report(&site, "oldtask", from_swarm, 0, 2, true, 20)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = post(task_report(&site, "oldtask", from_swarm, 0, 1, true, 10)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["desired"]["generation"], 1, "still told its config");
    assert_eq!(
        shown_agent(&app, &admin, &site).await,
        (json!("oldtask"), json!(20))
    );

    // The site moves (the move saga changes the placement, then the service): the new
    // task reports ready from the new worker.
    sqlx::query("UPDATE placements SET node_id = ? WHERE site_id = ? AND node_id = ?")
        .bind(to)
        .bind(&site)
        .bind(from)
        .execute(&app.db)
        .await
        .unwrap();
    let (status, _) = post(task_report(&site, "newtask", to_swarm, 60, 1, true, 1)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        shown_agent(&app, &admin, &site).await,
        (json!("newtask"), json!(1))
    );

    // The old task, draining on the worker the site left, reports again (not ready, its
    // sequence further on): the site keeps showing the new task, ready, and active.
    let (status, _) = post(task_report(&site, "oldtask", from_swarm, 0, 3, false, 30)).await;
    assert_eq!(status, StatusCode::OK);
    let (_, shown) = app.get(&format!("/v1/sites/{site}"), &admin).await;
    assert_eq!(shown["agent"]["task_id"], "newtask", "{shown}");
    assert_eq!(shown["agent"]["ready"], true, "{shown}");
    assert_eq!(
        shown["agent"]["node"],
        if to == &wa { "worker-a" } else { "worker-b" }
    );
    assert_eq!(shown["state"], "active");

    // On the new worker: an update's old task (started earlier) never overwrites; the
    // update's new task (started later) does; the same task only moves forward.
    let (status, _) = post(task_report(&site, "newtask", to_swarm, 60, 3, true, 3)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = post(task_report(&site, "newtask", to_swarm, 60, 2, true, 2)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        shown_agent(&app, &admin, &site).await,
        (json!("newtask"), json!(3))
    );
    let (status, _) = post(task_report(&site, "staletask", to_swarm, 30, 50, false, 50)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        shown_agent(&app, &admin, &site).await,
        (json!("newtask"), json!(3))
    );
    let (status, _) = post(task_report(&site, "updatetask", to_swarm, 120, 1, true, 7)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        shown_agent(&app, &admin, &site).await,
        (json!("updatetask"), json!(7))
    );

    // The access-log counts (billing, for comparison with the edge's): the stored reports
    // only, each adding its counters' growth within one agent process, or all a new
    // process counted: oldtask 20, newtask 1 then 3 − 1, updatetask 7. Bytes: 100 a
    // process (the counter stays at 100).
    let counted: (i64, i64, i64) = sqlx::query_as(
        "SELECT CAST(SUM(requests) AS SIGNED), CAST(SUM(bytes_out) AS SIGNED), CAST(SUM(reports) AS SIGNED) \
         FROM agent_request_counts WHERE site_id = ?",
    )
    .bind(&site)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(counted, (30, 300, 4));
    app.finish().await;
}

//! Nodes come from the swarm: a node registered by hand is `pending` and never a placement
//! target (neither for a new site nor for a move) until the swarm links it, or, with no
//! swarm backend, staff activate it; an empty node that is not a live swarm node can be
//! removed. Also the list of operations, scoped to the caller's tenants.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestApp;

async fn register(app: &TestApp, admin: &str, name: &str) -> Value {
    let (status, body) = app
        .post(
            "/v1/nodes",
            admin,
            json!({ "name": name, "role": "worker", "slots": 25 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

async fn availability(app: &TestApp, admin: &str) -> Vec<(String, String)> {
    let (status, nodes) = app.get("/v1/nodes", admin).await;
    assert_eq!(status, StatusCode::OK, "{nodes}");
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["availability"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_pending_node_takes_no_new_site_and_no_move() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let pending = register(&app, &admin, "joining").await;
    assert_eq!(pending["availability"], "pending", "{pending}");
    assert_eq!(pending["swarm_node_id"], Value::Null, "{pending}");
    let tenant = app.create_tenant(&admin, "early").await;

    // Only a pending worker: the site is placed nowhere, and the failure says why.
    let (status, created) = app.create_site(&admin, &tenant, "first.example").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let op = app
        .wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "failed", "{op}");
    let error = op["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no worker can take the site"),
        "the failure names the cause: {op}"
    );
    let (_, nodes) = app.get("/v1/nodes", &admin).await;
    assert_eq!(nodes[0]["used_slots"], 0, "{nodes}");

    // An active worker beside it takes every new site; the pending one none.
    app.add_worker(&admin, "ready", 25).await;
    for i in 0..4 {
        let (status, created) = app
            .create_site(&admin, &tenant, &format!("s{i}.example"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        let op = app
            .wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
            .await;
        assert_eq!(op["state"], "succeeded", "{op}");
        let (_, site) = app
            .get(
                &format!("/v1/sites/{}", created["site"]["id"].as_str().unwrap()),
                &admin,
            )
            .await;
        assert_eq!(site["node"], "ready", "{site}");
    }

    // Four sites on one worker and an empty pending one: the map shows it pending, and
    // neither a dry run nor an applied rebalance moves anything onto it.
    let (status, map) = app.get("/v1/placement", &admin).await;
    assert_eq!(status, StatusCode::OK, "{map}");
    let shown: Vec<(&str, &str, usize)> = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap(),
                n["availability"].as_str().unwrap(),
                n["sites"].as_array().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(
        shown,
        [("joining", "pending", 0), ("ready", "active", 4)],
        "{map}"
    );
    assert_eq!(map["proposed"], json!([]), "{map}");
    let (status, applied) = app
        .post(
            "/v1/placement/rebalance",
            &admin,
            json!({ "dry_run": false }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{applied}");
    assert_eq!(applied["moves"], json!([]), "{applied}");
    assert_eq!(applied["operations"], json!([]), "{applied}");

    // Once active (here: staff, as there is no swarm), it is a target like any other.
    let id = pending["id"].as_str().unwrap();
    let (status, node) = app
        .request(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(&admin),
            Some(json!({ "availability": "active" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{node}");
    let (_, dry) = app.post("/v1/placement/rebalance", &admin, json!({})).await;
    let moves = dry["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 2, "{dry}");
    assert!(moves.iter().all(|m| m["to"] == "joining"), "{dry}");
    app.finish().await;
}

/// With a swarm backend, only the swarm makes a node active: staff cannot vouch for a node
/// no swarm node has claimed. (The swarm here does not answer; the node stays pending.)
#[tokio::test]
async fn with_a_swarm_backend_an_unlinked_node_cannot_be_activated() {
    // The driver wants the socket's path to exist; a plain file refuses every connection
    // at once, as a manager that is not there does.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    std::fs::write(&socket, b"").unwrap();
    let app = TestApp::spawn_with(|config| {
        config.placement.enabled = false;
        config.reconcile.enabled = false;
        config.backends.insert(
            "swarm".into(),
            toml::Value::Table(
                toml::from_str(&format!(
                    "docker_host = \"unix://{}\"\n\
                     runtime_image = \"pressdock/wordpress:test\"\n\
                     site_network = \"pd-sites\"\n",
                    socket.display()
                ))
                .unwrap(),
            ),
        );
    })
    .await;
    let admin = app.admin_token().await;
    let node = register(&app, &admin, "worker-1").await;
    assert_eq!(node["availability"], "pending", "{node}");
    let id = node["id"].as_str().unwrap();
    let (status, problem) = app
        .request(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(&admin),
            Some(json!({ "availability": "active" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("worker-1 has not joined the swarm"),
        "{problem}"
    );
    assert_eq!(problem["errors"][0]["field"], "availability", "{problem}");
    assert_eq!(
        availability(&app, &admin).await,
        [("worker-1".to_owned(), "pending".to_owned())]
    );
    // A drain is still the staff's to order.
    let (status, node) = app
        .request(
            Method::PATCH,
            &format!("/v1/nodes/{id}"),
            Some(&admin),
            Some(json!({ "availability": "drain" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{node}");
    assert_eq!(node["availability"], "drain", "{node}");
    // Linked to a swarm node, staff lift their drain, but a node the swarm has not made
    // ready yet (no `pressdock.pool` label: pending) stays pending.
    sqlx::query("UPDATE nodes SET swarm_node_id = 'abc123swarm' WHERE id = ?")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let path = format!("/v1/nodes/{id}");
    let activate = || {
        app.request(
            Method::PATCH,
            &path,
            Some(&admin),
            Some(json!({ "availability": "active" })),
        )
    };
    let (status, node) = activate().await;
    assert_eq!(status, StatusCode::OK, "{node}");
    assert_eq!(node["availability"], "active", "{node}");
    sqlx::query("UPDATE nodes SET availability = 'pending' WHERE id = ?")
        .bind(id)
        .execute(&app.db)
        .await
        .unwrap();
    let (status, problem) = activate().await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("worker-1 is not ready for sites yet"),
        "{problem}"
    );
    app.finish().await;
}

/// Against the lab's real swarm (read only: the node list), with `PRESSDOCK_LAB_TESTS=1`:
/// a node registered under a name no swarm node has stays pending, one registered under
/// a swarm node's name is linked at once, and a hand-made node an older release left
/// `active` is made pending by the next sync.
#[tokio::test]
async fn the_swarm_links_nodes_by_name_and_leaves_the_others_pending() {
    const MANAGER: &str = "/var/lib/pressdock-lab/run/pdlab-m1.sock";
    if std::env::var("PRESSDOCK_LAB_TESTS").as_deref() != Ok("1")
        || !std::path::Path::new(MANAGER).exists()
    {
        eprintln!("skipped: needs PRESSDOCK_LAB_TESTS=1 and the lab's swarm");
        return;
    }
    let app = TestApp::spawn_with(|config| {
        config.placement.enabled = false;
        config.reconcile.enabled = false;
        config.backends.insert(
            "swarm".into(),
            toml::Value::Table(
                toml::from_str(&format!(
                    "docker_host = \"unix://{MANAGER}\"\n\
                     runtime_image = \"pressdock/wordpress:test\"\n\
                     site_network = \"pd-sites\"\n"
                ))
                .unwrap(),
            ),
        );
    })
    .await;
    let admin = app.admin_token().await;
    let ghost = register(&app, &admin, "worker-9").await;
    assert_eq!(ghost["availability"], "pending", "{ghost}");
    // Registering syncs: every swarm node is recorded; the lab's manager by its host name.
    let nodes = availability(&app, &admin).await;
    assert!(
        nodes.contains(&("pdlab-m1".to_owned(), "active".to_owned())),
        "{nodes:?}"
    );
    assert!(
        nodes.contains(&("worker-9".to_owned(), "pending".to_owned())),
        "{nodes:?}"
    );
    // A row an older release made active with no swarm node behind it.
    sqlx::query("UPDATE nodes SET availability = 'active' WHERE name = 'worker-9'")
        .execute(&app.db)
        .await
        .unwrap();
    let (status, body) = app
        .post(
            "/v1/nodes",
            &admin,
            json!({ "name": "worker-10", "role": "worker" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let nodes = availability(&app, &admin).await;
    assert!(
        nodes.contains(&("worker-9".to_owned(), "pending".to_owned())),
        "{nodes:?}"
    );
    let (_, listed) = app.get("/v1/nodes", &admin).await;
    let m1 = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "pdlab-m1")
        .unwrap();
    assert!(
        m1["swarm_node_id"].as_str().is_some_and(|s| !s.is_empty()),
        "{m1}"
    );
    app.finish().await;
}

#[tokio::test]
async fn only_an_empty_node_that_is_no_live_swarm_node_can_be_removed() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let busy = app.add_worker(&admin, "busy", 25).await;
    let spare = register(&app, &admin, "spare").await;
    let spare = spare["id"].as_str().unwrap().to_owned();
    let tenant = app.create_tenant(&admin, "holder").await;
    let (_, created) = app.create_site(&admin, &tenant, "held.example").await;
    let op = app
        .wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");

    // Holding a site: 409 naming the node and why.
    let (status, problem) = app
        .request(
            Method::DELETE,
            &format!("/v1/nodes/{busy}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("busy holds 1 site(s)"),
        "{problem}"
    );

    // A live swarm node (as the node sync records one): 409 too.
    sqlx::query("UPDATE nodes SET swarm_node_id = 'abc123swarm' WHERE id = ?")
        .bind(&spare)
        .execute(&app.db)
        .await
        .unwrap();
    let (status, problem) = app
        .request(
            Method::DELETE,
            &format!("/v1/nodes/{spare}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("spare is a live swarm node (pending)"),
        "{problem}"
    );

    // Tenant users may not; an unknown node is a 404.
    let (owner, _) = app.user_with_role(&admin, &tenant, "owner").await;
    let (status, problem) = app
        .request(
            Method::DELETE,
            &format!("/v1/nodes/{spare}"),
            Some(&owner),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{problem}");
    let (status, problem) = app
        .request(Method::DELETE, "/v1/nodes/aaaaaaaaaa", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(
        problem["type"].as_str().map(|t| t.ends_with("not-found")),
        Some(true),
        "{problem}"
    );

    // Once it has left the swarm (down), it goes, and the audit log says who removed it.
    sqlx::query("UPDATE nodes SET availability = 'down' WHERE id = ?")
        .bind(&spare)
        .execute(&app.db)
        .await
        .unwrap();
    let (status, body) = app
        .request(
            Method::DELETE,
            &format!("/v1/nodes/{spare}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        availability(&app, &admin).await,
        [("busy".to_owned(), "active".to_owned())]
    );
    let (_, audit) = app.get("/v1/audit?action=node.remove", &admin).await;
    assert_eq!(audit["items"][0]["target_id"], spare.as_str(), "{audit}");
    assert_eq!(audit["items"][0]["details"]["name"], "spare", "{audit}");
    let (status, _) = app
        .request(
            Method::DELETE,
            &format!("/v1/nodes/{spare}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    app.finish().await;
}

#[tokio::test]
async fn operations_are_listed_newest_first_for_the_callers_tenants() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let mine = app.create_tenant(&admin, "mine").await;
    let theirs = app.create_tenant(&admin, "theirs").await;
    let (viewer, _) = app.user_with_role(&admin, &mine, "viewer").await;
    let mut my_ops = Vec::new();
    for domain in ["a.example", "b.example"] {
        let (_, created) = app.create_site(&admin, &mine, domain).await;
        let id = created["operation"]["id"].as_str().unwrap().to_owned();
        app.wait_operation(&admin, &id).await;
        my_ops.push(id);
    }
    let (_, created) = app.create_site(&admin, &theirs, "c.example").await;
    let their_op = created["operation"]["id"].as_str().unwrap().to_owned();
    app.wait_operation(&admin, &their_op).await;

    // A viewer of one tenant sees its operations only, newest first, without steps.
    let (status, page) = app.get("/v1/operations", &viewer).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [my_ops[1].as_str(), my_ops[0].as_str()], "{page}");
    assert_eq!(page["items"][0]["kind"], "site.create", "{page}");
    assert_eq!(page["items"][0]["state"], "succeeded", "{page}");
    assert_eq!(page["items"][0]["tenant_id"], mine.as_str(), "{page}");
    assert_eq!(page["items"][0]["steps"], json!([]), "{page}");
    assert!(page["items"][0].get("seq").is_none(), "{page}");
    assert_eq!(page["next_cursor"], Value::Null, "{page}");
    // Another tenant is not found, as everywhere.
    let (status, problem) = app
        .get(&format!("/v1/operations?tenant={theirs}"), &viewer)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");

    // Staff see all, a page at a time.
    let (_, first) = app.get("/v1/operations?limit=2", &admin).await;
    assert_eq!(first["items"][0]["id"], their_op.as_str(), "{first}");
    assert_eq!(first["items"][1]["id"], my_ops[1].as_str(), "{first}");
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app
        .get(&format!("/v1/operations?limit=2&cursor={cursor}"), &admin)
        .await;
    assert_eq!(second["items"][0]["id"], my_ops[0].as_str(), "{second}");
    assert_eq!(second["items"].as_array().unwrap().len(), 1, "{second}");
    assert_eq!(second["next_cursor"], Value::Null, "{second}");
    let (_, filtered) = app
        .get(
            &format!("/v1/operations?tenant={theirs}&kind=site.create&state=succeeded"),
            &admin,
        )
        .await;
    assert_eq!(filtered["items"].as_array().unwrap().len(), 1, "{filtered}");
    assert_eq!(filtered["items"][0]["id"], their_op.as_str(), "{filtered}");

    // Bad filters name their field.
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("state=done", "state"),
        ("cursor=nonsense", "cursor"),
        ("tenant=NOT-AN-ID", "tenant"),
        ("kind=DROP%20TABLE", "kind"),
    ] {
        let (status, problem) = app.get(&format!("/v1/operations?{query}"), &admin).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {problem}"
        );
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }
    let (status, _) = app.request(Method::GET, "/v1/operations", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.finish().await;
}

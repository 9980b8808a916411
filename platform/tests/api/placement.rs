//! Placement through the API (no swarm here: a move is the placement row and its
//! operation; the lab tests move real tasks): the map, a dry run, applying the moves a
//! new worker calls for, evacuating a drained worker, and who may do it.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestApp;

async fn sites_per_node(app: &TestApp, admin: &str) -> Vec<(String, String, usize)> {
    let (status, map) = app.get("/v1/placement", admin).await;
    assert_eq!(status, StatusCode::OK, "{map}");
    map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_owned(),
                n["availability"].as_str().unwrap().to_owned(),
                n["sites"].as_array().unwrap().len(),
            )
        })
        .collect()
}

async fn wait_all(app: &TestApp, admin: &str, answer: &Value) {
    for op in answer["operations"].as_array().unwrap() {
        let done = app.wait_operation(admin, op.as_str().unwrap()).await;
        assert_eq!(done["state"], "succeeded", "{done}");
        assert_eq!(done["kind"], "site.move");
    }
}

#[tokio::test]
async fn a_new_worker_gets_its_share_and_a_drained_worker_is_emptied() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "w1", 25).await;
    let w2 = app.add_worker(&admin, "w2", 25).await;
    let tenant = app.create_tenant(&admin, "spread").await;
    let (owner, _) = app.user_with_role(&admin, &tenant, "owner").await;
    for i in 0..12 {
        let (status, created) = app
            .create_site(&admin, &tenant, &format!("s{i}.example"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        app.wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
            .await;
    }
    let before = sites_per_node(&app, &admin).await;
    assert_eq!(
        before.iter().map(|n| n.2).collect::<Vec<_>>(),
        [6, 6],
        "12 sites on two workers: {before:?}"
    );

    // A third worker: the dry run shows the fewest moves that balance the map.
    app.add_worker(&admin, "w3", 25).await;
    let (status, dry) = app.post("/v1/placement/rebalance", &admin, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["dry_run"], true);
    let moves = dry["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 4, "{dry}");
    assert_eq!(dry["lower_bound"], 4, "as few moves as possible");
    assert!(
        moves
            .iter()
            .all(|m| m["to"] == "w3" && m["reason"] == "balance")
    );
    assert!(dry["operations"].as_array().unwrap().is_empty());
    let (_, map) = app.get("/v1/placement", &admin).await;
    assert_eq!(
        map["proposed"].as_array().unwrap().len(),
        4,
        "shown as proposed"
    );

    // Applied: four site.move operations, and the map is balanced.
    let (status, applied) = app
        .post(
            "/v1/placement/rebalance",
            &admin,
            json!({ "dry_run": false }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{applied}");
    assert_eq!(applied["operations"].as_array().unwrap().len(), 4);
    wait_all(&app, &admin, &applied).await;
    let after = sites_per_node(&app, &admin).await;
    assert_eq!(
        after.iter().map(|n| n.2).collect::<Vec<_>>(),
        [4, 4, 4],
        "{after:?}"
    );
    let (_, map) = app.get("/v1/placement", &admin).await;
    assert!(map["proposed"].as_array().unwrap().is_empty(), "{map}");
    let recent = map["recent_moves"].as_array().unwrap();
    assert_eq!(recent.len(), 4);
    assert!(
        recent
            .iter()
            .all(|m| m["state"] == "done" && m["seconds_total"].as_f64().is_some())
    );
    assert!((map["balance"]["max_over_mean"].as_f64().unwrap() - 1.0).abs() < 1e-9);

    // Drained: every site of w2 goes to the others, within their capacity.
    let (status, _) = app
        .request(
            Method::PATCH,
            &format!("/v1/nodes/{w2}"),
            Some(&admin),
            Some(json!({ "availability": "drain" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, applied) = app
        .post(
            "/v1/placement/rebalance",
            &admin,
            json!({ "dry_run": false }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{applied}");
    assert!(
        applied["moves"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["from"] == "w2" && m["reason"] == "evacuate")
    );
    wait_all(&app, &admin, &applied).await;
    let drained = sites_per_node(&app, &admin).await;
    assert_eq!(
        drained,
        [
            ("w1".into(), "active".into(), 6),
            ("w2".into(), "drain".into(), 0),
            ("w3".into(), "active".into(), 6)
        ]
    );

    // Staff only; bad input named.
    let (status, _) = app.get("/v1/placement", &owner).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = app.post("/v1/placement/rebalance", &owner, json!({})).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, bad) = app
        .post(
            "/v1/placement/rebalance",
            &admin,
            json!({ "dry_run": "no" }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["errors"][0]["field"], "dry_run");
    let (status, bad) = app
        .post("/v1/placement/rebalance", &admin, json!({ "max_moves": 0 }))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    assert_eq!(bad["errors"][0]["field"], "max_moves");
    app.finish().await;
}

#[tokio::test]
async fn a_bigger_plan_refits_the_site_onto_a_worker_with_room() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "small", 1).await;
    app.add_worker(&admin, "roomy", 6).await;
    let tenant = app.create_tenant(&admin, "refit").await;
    let mut sites = Vec::new();
    for domain in ["one.example", "two.example"] {
        let (status, created) = app.create_site(&admin, &tenant, domain).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        app.wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
            .await;
        sites.push(created["site"]["id"].as_str().unwrap().to_owned());
    }
    let on_small = {
        let mut found = None;
        for site in &sites {
            let (_, body) = app.get(&format!("/v1/sites/{site}"), &admin).await;
            if body["node"] == "small" {
                found = Some(site.clone());
            }
        }
        found.expect("one site on the one-slot worker (tenant spread)")
    };
    // Business needs 2 slots: the one-slot worker cannot hold it, the roomy one takes it.
    let (status, accepted) = app
        .request(
            Method::PATCH,
            &format!("/v1/sites/{on_small}"),
            Some(&admin),
            Some(json!({ "plan": "business" })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let done = app
        .wait_operation(&admin, accepted["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(done["state"], "succeeded", "{done}");
    let (_, body) = app.get(&format!("/v1/sites/{on_small}"), &admin).await;
    assert_eq!(
        (body["plan"].as_str(), body["node"].as_str()),
        (Some("business"), Some("roomy")),
        "{body}"
    );
    let nodes = sites_per_node(&app, &admin).await;
    assert_eq!(
        nodes,
        [
            ("roomy".into(), "active".into(), 2),
            ("small".into(), "active".into(), 0)
        ]
    );
    // No worker with room for a plan: 409 naming the field, nothing changed.
    let (status, _) = app.post("/v1/plans", &admin, json!({ "slug": "huge", "name": "Huge", "slots": 25, "storage_mb": 1024, "memory_mb": 256, "cpu_millis": 250, "price_cents": 1 })).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, refused) = app
        .request(
            Method::PATCH,
            &format!("/v1/sites/{on_small}"),
            Some(&admin),
            Some(json!({ "plan": "huge" })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    let (_, body) = app.get(&format!("/v1/sites/{on_small}"), &admin).await;
    assert_eq!(body["plan"], "business");
    app.finish().await;
}

/// The placement loop's passes, run by hand at chosen times (no swarm here, so `serve`
/// runs no loop): balance moves wait for an imbalance seen in three passes in a row; a
/// site that just moved is not moved again for balance; a drained worker is emptied at
/// the first pass, recently moved sites included.
#[tokio::test]
async fn the_loop_waits_for_a_lasting_imbalance_and_never_delays_an_evacuation() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let config = platform::config::PlacementConfig {
        balance_after_passes: 3,
        balance_after_secs: 20,
        move_cooldown_secs: 3600,
        ..Default::default()
    };
    let provisioner = platform::provision::Backends::from_config(
        &Default::default(),
        crate::support::SECRET_KEY.as_bytes(),
    )
    .unwrap();
    app.add_worker(&admin, "w1", 25).await;
    app.add_worker(&admin, "w2", 25).await;
    let tenant = app.create_tenant(&admin, "steady").await;
    for i in 0..12 {
        let (status, created) = app
            .create_site(&admin, &tenant, &format!("h{i}.example"))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        app.wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
            .await;
    }
    let t0 = std::time::Instant::now();
    let at = |s: u64| t0 + std::time::Duration::from_secs(s);
    let mut gate = platform::app::placement::balance_gate(&config);
    let pass = async |gate: &mut placement::BalanceGate, secs: u64| {
        platform::app::placement::pass(&app.db, &provisioner, &config, gate, at(secs))
            .await
            .unwrap()
            .expect("the placement lock")
    };

    // Balanced: nothing to do.
    let report = pass(&mut gate, 0).await;
    assert_eq!((report.proposed, report.moves_started), (0, 0));
    assert_eq!(report.balance_waiting, None);

    // A third worker: the imbalance is seen, and waited on for three passes and 20 s.
    app.add_worker(&admin, "w3", 25).await;
    for (secs, passes) in [(5, 1), (10, 2), (15, 3)] {
        let report = pass(&mut gate, secs).await;
        assert_eq!(report.proposed, 4);
        assert_eq!(report.moves_started, 0, "pass at {secs} s");
        assert_eq!(report.balance_waiting.map(|w| w.0), Some(passes));
    }
    assert!(
        sites_per_node(&app, &admin)
            .await
            .iter()
            .all(|n| n.0 != "w3" || n.2 == 0)
    );
    // Three passes, but only 10 s since it was first seen; at 25 s it has lasted 20 s.
    let report = pass(&mut gate, 25).await;
    assert_eq!(report.moves_started, 4, "lasted three passes and 20 s");
    assert_eq!(report.balance_waiting, None);
    let (_, map) = app.get("/v1/placement", &admin).await;
    let moved: Vec<String> = map["recent_moves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["site"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(moved.len(), 4);
    wait_all(
        &app,
        &admin,
        &json!({ "operations": map["recent_moves"].as_array().unwrap().iter().map(|m| m["operation"].clone()).collect::<Vec<_>>() }),
    )
    .await;
    assert_eq!(
        sites_per_node(&app, &admin)
            .await
            .iter()
            .map(|n| n.2)
            .collect::<Vec<_>>(),
        [4, 4, 4]
    );

    // A fourth worker: w3's sites just moved, so w1 and w2 give sites and w3 none, even
    // once the imbalance lasted.
    app.add_worker(&admin, "w4", 25).await;
    let (status, dry) = app.post("/v1/placement/rebalance", &admin, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    let proposed = dry["moves"].as_array().unwrap();
    assert!(!proposed.is_empty(), "{dry}");
    for m in proposed {
        assert_ne!(m["from"], "w3", "a site that just moved: {dry}");
        assert!(!moved.contains(&m["site"].as_str().unwrap().to_owned()));
    }

    // w3 drained: its sites leave at the first pass, cool-down or not, and while the
    // balance moves towards w4 are still waiting.
    let w3 = map["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "w3")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = app
        .request(
            Method::PATCH,
            &format!("/v1/nodes/{w3}"),
            Some(&admin),
            Some(json!({ "availability": "drain" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut fresh = platform::app::placement::balance_gate(&config);
    let report = pass(&mut fresh, 100).await;
    assert_eq!(report.moves_started, 4, "every site of w3, at once");
    let (_, map) = app.get("/v1/placement", &admin).await;
    let evacuations: Vec<&Value> = map["recent_moves"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["reason"] == "evacuate")
        .collect();
    assert_eq!(evacuations.len(), 4, "{map}");
    assert!(
        evacuations
            .iter()
            .all(|m| m["from"] == "w3" && moved.contains(&m["site"].as_str().unwrap().to_owned()))
    );
    app.finish().await;
}

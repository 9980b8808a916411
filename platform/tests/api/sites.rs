//! Sites: validation, idempotency, domain uniqueness under concurrency, pagination, changes.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::TestApp;

async fn setup() -> (TestApp, String, String) {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    app.add_worker(&admin, "worker-2", 25).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    (app, admin, tenant)
}

fn fields(body: &Value) -> Vec<String> {
    body["errors"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|e| e["field"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn validation_errors_name_the_field() {
    let (app, admin, tenant) = setup().await;
    let path = format!("/v1/tenants/{tenant}/sites");
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (
            json!({ "name": "", "domain": "ok.example", "plan": "starter" }),
            vec!["name"],
        ),
        (
            json!({ "name": "A", "domain": "*.example.com", "plan": "starter" }),
            vec!["domain"],
        ),
        (
            json!({ "name": "A", "domain": "localhost", "plan": "starter" }),
            vec!["domain"],
        ),
        (
            json!({ "name": "A", "domain": format!("{}.com", "a".repeat(64)), "plan": "starter" }),
            vec!["domain"],
        ),
        (
            json!({ "name": "A", "domain": "ok.example", "aliases": ["fine.example", "bad_label.example"], "plan": "starter" }),
            vec!["aliases[1]"],
        ),
        (
            json!({ "name": "A", "domain": "ok.example", "aliases": ["OK.example"], "plan": "starter" }),
            vec!["aliases[0]"],
        ),
        (
            json!({ "name": "A", "domain": "ok.example", "plan": "gold" }),
            vec!["plan"],
        ),
        (
            json!({ "name": "", "domain": "", "plan": "gold" }),
            vec!["name", "domain", "plan"],
        ),
        (
            json!({ "name": "A", "domain": "ok.example", "plan": 3 }),
            vec!["plan"],
        ),
        (json!({ "name": "A", "domain": "ok.example" }), vec!["body"]),
        (
            json!({ "name": "A", "domain": "ok.example", "plan": "starter", "owner": "me" }),
            vec!["owner"],
        ),
        (
            json!({ "name": "A", "domain": "ok.example", "aliases": "x.example", "plan": "starter" }),
            vec!["aliases"],
        ),
        (json!([1, 2]), vec!["body"]),
    ];
    for (body, expected) in cases {
        let (status, response) = app.post(&path, &admin, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {response}"
        );
        assert_eq!(
            response["type"],
            "https://pressdock.dev/problems/invalid-fields"
        );
        let got = fields(&response);
        for field in &expected {
            assert!(
                got.iter()
                    .any(|g| g == field || g.starts_with(&format!("{field}."))),
                "{body}: expected {field} in {got:?}"
            );
        }
    }
    // Nothing was half-created.
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0);
    let (_, list) = app
        .get(&format!("/v1/tenants/{tenant}/sites?limit=0"), &admin)
        .await;
    assert_eq!(fields(&list), vec!["limit"]);
    let (_, list) = app
        .get(
            &format!("/v1/tenants/{tenant}/sites?state=sleeping"),
            &admin,
        )
        .await;
    assert_eq!(fields(&list), vec!["state"]);
    let (_, list) = app
        .get(&format!("/v1/tenants/{tenant}/sites?cursor=%21%21"), &admin)
        .await;
    assert_eq!(fields(&list), vec!["cursor"]);
    app.finish().await;
}

#[tokio::test]
async fn malformed_requests_get_the_right_status_never_500() {
    let (app, admin, tenant) = setup().await;
    let url = format!("{}/v1/tenants/{tenant}/sites", app.base);
    let http = reqwest::Client::new();
    let send = |body: Vec<u8>, content_type: Option<&'static str>| {
        let mut r = http.post(&url).bearer_auth(&admin).body(body);
        if let Some(ct) = content_type {
            r = r.header("content-type", ct);
        }
        r.send()
    };
    let r = send(b"{\"name\":".to_vec(), Some("application/json"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = send(b"{}".to_vec(), Some("text/plain")).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = send(b"{}".to_vec(), None).await.unwrap();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = format!("{{\"name\":\"{}\"}}", "x".repeat(100_000));
    let r = send(big.into_bytes(), Some("application/json"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["type"],
        "https://pressdock.dev/problems/payload-too-large"
    );
    let r = send(vec![0xff, 0xfe, 0x00], Some("application/json"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Malformed ids in paths are simply not found.
    for path in [
        "/v1/sites/..%2F..%2Fetc",
        "/v1/sites/AAAAAAAAAA",
        "/v1/sites/x'%20OR%201=1",
        "/v1/tenants/zz/sites",
    ] {
        let (status, body) = app.get(path, &admin).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
    }
    let (status, body) = app.get("/v1/no/such/route", &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["type"], "https://pressdock.dev/problems/not-found");
    let r = http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!r.contains("status=\"500\""), "no 500 in {r}");
    app.finish().await;
}

#[tokio::test]
async fn create_honours_idempotency_key() {
    let (app, admin, tenant) = setup().await;
    let path = format!("/v1/tenants/{tenant}/sites");
    let body = json!({ "name": "Shop", "domain": "shop.example", "plan": "starter" });
    let key = [("Idempotency-Key", "create-shop-1")];
    let (s1, h1, first) = app
        .request_full(Method::POST, &path, Some(&admin), Some(body.clone()), &key)
        .await;
    assert_eq!(s1, StatusCode::ACCEPTED, "{first}");
    assert!(h1.get("idempotent-replayed").is_none());
    let (s2, h2, second) = app
        .request_full(Method::POST, &path, Some(&admin), Some(body.clone()), &key)
        .await;
    assert_eq!(s2, StatusCode::ACCEPTED, "{second}");
    assert_eq!(h2["idempotent-replayed"], "true");
    assert_eq!(first["site"]["id"], second["site"]["id"]);
    assert_eq!(first["operation"]["id"], second["operation"]["id"]);
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 1);
    // The same key with another body is refused; without a key a repeat is a conflict.
    let other = json!({ "name": "Shop", "domain": "other.example", "plan": "starter" });
    let (status, _, response) = app
        .request_full(Method::POST, &path, Some(&admin), Some(other), &key)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(fields(&response), vec!["Idempotency-Key"]);
    let (status, response) = app.post(&path, &admin, body).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(fields(&response), vec!["domain"]);
    app.finish().await;
}

#[tokio::test]
async fn concurrent_creates_of_one_domain_have_exactly_one_winner() {
    let (app, admin, tenant) = setup().await;
    let other = app.create_tenant(&admin, "globex").await;
    let attempts = (0..8).map(|i| {
        let t = if i % 2 == 0 {
            tenant.clone()
        } else {
            other.clone()
        };
        let app = &app;
        let admin = &admin;
        async move {
            app.post(
                &format!("/v1/tenants/{t}/sites"),
                admin,
                json!({ "name": format!("R{i}"), "domain": "Race.Example", "plan": "starter" }),
            )
            .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let winners = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    let conflicts: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CONFLICT)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(winners, 1, "{results:?}");
    assert_eq!(conflicts.len(), 7, "{results:?}");
    assert!(conflicts.iter().all(|b| fields(b) == vec!["domain"]));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sites")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 1, "losers left no site row behind");
    app.finish().await;
}

#[tokio::test]
async fn listing_paginates_and_filters() {
    let (app, admin, tenant) = setup().await;
    // No alias, one, or three given out of order: the list carries each site's aliases
    // sorted, and a page's limit counts sites, not alias rows.
    let aliases = |i: usize| -> Vec<String> {
        match i % 3 {
            0 => vec![],
            1 => vec![format!("www.s{i}.example")],
            _ => vec![
                format!("z{i}.example"),
                format!("a{i}.example"),
                format!("m{i}.example"),
            ],
        }
    };
    let sorted = |i: usize| {
        let mut a = aliases(i);
        a.sort();
        json!(a)
    };
    let mut ops = Vec::new();
    for i in 0..7 {
        let (status, created) = app
            .post(
                &format!("/v1/tenants/{tenant}/sites"),
                &admin,
                json!({ "name": "Site", "domain": format!("s{i}.example"), "aliases": aliases(i), "plan": "starter" }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        assert_eq!(created["site"]["aliases"], sorted(i), "{created}");
        ops.push(created["operation"]["id"].as_str().unwrap().to_owned());
    }
    for op in &ops {
        assert_eq!(app.wait_operation(&admin, op).await["state"], "succeeded");
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(
                &format!("/v1/tenants/{tenant}/sites?limit=3{cursor}"),
                &admin,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let items = page["items"].as_array().unwrap();
        // 3, 3, then 1: the pages hold 3 sites each, however many aliases they have.
        assert_eq!(items.len(), if seen.len() < 6 { 3 } else { 1 }, "{page}");
        for item in items {
            let i = seen.len();
            assert_eq!(item["domain"], format!("s{i}.example"), "{page}");
            assert_eq!(item["aliases"], sorted(i), "{page}");
            seen.push(item["domain"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..7).map(|i| format!("s{i}.example")).collect::<Vec<_>>()
    );
    // Found by one alias, listed with all of them; one site alone also by `GET`.
    let (_, page) = app
        .get(
            &format!("/v1/tenants/{tenant}/sites?domain=m5.example"),
            &admin,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["items"][0]["domain"], "s5.example");
    assert_eq!(page["items"][0]["aliases"], sorted(5));
    let id = page["items"][0]["id"].as_str().unwrap();
    let (_, site) = app.get(&format!("/v1/sites/{id}"), &admin).await;
    assert_eq!(
        site["aliases"],
        json!(["a5.example", "m5.example", "z5.example"])
    );
    let (_, page) = app
        .get(
            &format!("/v1/tenants/{tenant}/sites?domain=S3.EXAMPLE"),
            &admin,
        )
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["domain"], "s3.example");
    let (_, page) = app
        .get(&format!("/v1/tenants/{tenant}/sites?state=active"), &admin)
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 7);
    let (_, page) = app
        .get(
            &format!("/v1/tenants/{tenant}/sites?state=suspended"),
            &admin,
        )
        .await;
    assert_eq!(page["items"], json!([]));
    // Spread: the tenant's sites alternate over the two workers.
    let per_node: Vec<(String, i64)> =
        sqlx::query_as("SELECT node_id, COUNT(*) FROM placements GROUP BY node_id")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(per_node.len(), 2);
    assert!(per_node.iter().all(|(_, n)| *n >= 3), "{per_node:?}");
    app.finish().await;
}

/// The copy of a site's aliases in its row (migration m20261206_000017) is read only when
/// it was written at the site's generation; a row the previous release wrote or changed
/// (no copy, or `generation` bumped without one) is listed with the aliases in `domains`.
#[tokio::test]
async fn alias_copy_is_read_only_at_the_sites_generation() {
    let (app, admin, tenant) = setup().await;
    let mut ids = Vec::new();
    for (domain, aliases) in [
        ("fresh.example", ["b.fresh.example", "a.fresh.example"]),
        ("old.example", ["www.old.example", "x.old.example"]),
    ] {
        let (status, created) = app
            .post(
                &format!("/v1/tenants/{tenant}/sites"),
                &admin,
                json!({ "name": "Site", "domain": domain, "aliases": aliases, "plan": "starter" }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        app.wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
            .await;
        ids.push(created["site"]["id"].as_str().unwrap().to_owned());
    }
    let copy: (Option<String>, Option<i64>, i64) =
        sqlx::query_as("SELECT aliases, aliases_generation, generation FROM sites WHERE id = ?")
            .bind(&ids[0])
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(
        copy,
        (Some("a.fresh.example b.fresh.example".into()), Some(1), 1)
    );
    // What the previous release's PATCH of the aliases does: new `domains` rows and a
    // bumped generation, the copy untouched (now stale).
    sqlx::query("DELETE FROM domains WHERE site_id = ? AND is_primary = 0")
        .bind(&ids[1])
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO domains (domain, site_id, is_primary) VALUES ('new.old.example', ?, 0)",
    )
    .bind(&ids[1])
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("UPDATE sites SET generation = generation + 1 WHERE id = ?")
        .bind(&ids[1])
        .execute(&app.db)
        .await
        .unwrap();
    let listed = |page: &Value| -> Vec<Value> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["aliases"].clone())
            .collect()
    };
    let (status, page) = app
        .get(&format!("/v1/tenants/{tenant}/sites"), &admin)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        listed(&page),
        vec![
            json!(["a.fresh.example", "b.fresh.example"]),
            json!(["new.old.example"])
        ]
    );
    let (_, site) = app.get(&format!("/v1/sites/{}", ids[1]), &admin).await;
    assert_eq!(site["aliases"], json!(["new.old.example"]), "{site}");
    // A change of the name alone keeps a stale copy stale, and a current one current.
    for id in &ids {
        let (status, changed) = app
            .request(
                Method::PATCH,
                &format!("/v1/sites/{id}"),
                Some(&admin),
                Some(json!({ "name": "Renamed" })),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{changed}");
        app.wait_operation(&admin, changed["operation"]["id"].as_str().unwrap())
            .await;
    }
    let (_, page) = app
        .get(&format!("/v1/tenants/{tenant}/sites"), &admin)
        .await;
    assert_eq!(
        listed(&page),
        vec![
            json!(["a.fresh.example", "b.fresh.example"]),
            json!(["new.old.example"])
        ]
    );
    let current: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, aliases_generation <=> generation FROM sites WHERE tenant_id = ? ORDER BY seq",
    )
    .bind(&tenant)
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(current, vec![(ids[0].clone(), 1), (ids[1].clone(), 0)]);
    // A change of the aliases writes the copy again: current from then on.
    let (status, changed) = app
        .request(
            Method::PATCH,
            &format!("/v1/sites/{}", ids[1]),
            Some(&admin),
            Some(json!({ "aliases": ["z.old.example", "c.old.example"] })),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{changed}");
    assert_eq!(
        changed["site"]["aliases"],
        json!(["c.old.example", "z.old.example"])
    );
    app.wait_operation(&admin, changed["operation"]["id"].as_str().unwrap())
        .await;
    let copy: (Option<String>, i64) =
        sqlx::query_as("SELECT aliases, aliases_generation <=> generation FROM sites WHERE id = ?")
            .bind(&ids[1])
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(copy, (Some("c.old.example z.old.example".into()), 1));
    // A site the previous release created has no copy at all.
    sqlx::query("UPDATE sites SET aliases = NULL, aliases_generation = NULL WHERE id = ?")
        .bind(&ids[0])
        .execute(&app.db)
        .await
        .unwrap();
    let (_, page) = app
        .get(&format!("/v1/tenants/{tenant}/sites"), &admin)
        .await;
    assert_eq!(
        listed(&page),
        vec![
            json!(["a.fresh.example", "b.fresh.example"]),
            json!(["c.old.example", "z.old.example"])
        ]
    );
    app.finish().await;
}

#[tokio::test]
async fn patch_changes_domains_and_plan_and_delete_frees_the_domain() {
    let (app, admin, tenant) = setup().await;
    let (_, created) = app.create_site(&admin, &tenant, "first.example").await;
    let id = created["site"]["id"].as_str().unwrap().to_owned();
    app.wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
        .await;
    let (_, other) = app.create_site(&admin, &tenant, "taken.example").await;
    app.wait_operation(&admin, other["operation"]["id"].as_str().unwrap())
        .await;

    let (status, site) = app
        .request(Method::PATCH, &format!("/v1/sites/{id}"), Some(&admin), Some(json!({ "domain": "Second.Example", "aliases": ["www.second.example"], "plan": "business" })))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{site}");
    let op = app
        .wait_operation(&admin, site["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["kind"], "site.update");
    assert_eq!(op["state"], "succeeded");
    let site = &site["site"];
    assert_eq!(site["domain"], "second.example");
    assert_eq!(site["aliases"], json!(["www.second.example"]));
    assert_eq!(site["plan"], "business");
    assert_eq!(site["generation"], 2);
    let slots: i32 = sqlx::query_scalar("SELECT slots FROM placements WHERE site_id = ?")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(slots, 2);
    // The old domain is free again; a taken one is a conflict that changes nothing.
    let (status, _) = app.create_site(&admin, &tenant, "first.example").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, body) = app
        .request(
            Method::PATCH,
            &format!("/v1/sites/{id}"),
            Some(&admin),
            Some(json!({ "aliases": ["taken.example"] })),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(fields(&body), vec!["aliases"]);
    let (_, site) = app.get(&format!("/v1/sites/{id}"), &admin).await;
    assert_eq!(site["aliases"], json!(["www.second.example"]));

    // Suspend, resume, delete.
    for (action, state) in [("suspend", "suspended"), ("resume", "active")] {
        let (status, accepted) = app
            .request(
                Method::POST,
                &format!("/v1/sites/{id}/{action}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
        let op = app
            .wait_operation(&admin, accepted["operation"]["id"].as_str().unwrap())
            .await;
        assert_eq!(op["state"], "succeeded");
        let (_, site) = app.get(&format!("/v1/sites/{id}"), &admin).await;
        assert_eq!(site["state"], state);
    }
    let (status, body) = app
        .request(
            Method::POST,
            &format!("/v1/sites/{id}/resume"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "resume of an active site: {body}"
    );
    let (status, accepted) = app
        .request(
            Method::DELETE,
            &format!("/v1/sites/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(accepted["site"]["state"], "deleting");
    let op = app
        .wait_operation(&admin, accepted["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded");
    assert_eq!(
        op["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["state"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["done", "done"]
    );
    let (status, _) = app.get(&format!("/v1/sites/{id}"), &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.create_site(&admin, &tenant, "second.example").await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "the deleted site's domain is free"
    );
    let placed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM placements WHERE site_id = ?")
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(placed, 0);

    // The audit log has every mutation with who, from where and the request id.
    let (_, audit) = app
        .get(
            &format!("/v1/tenants/{tenant}/audit?action=site.update"),
            &admin,
        )
        .await;
    let event = &audit["items"][0];
    assert_eq!(event["target_id"], id.as_str());
    assert_eq!(event["actor_email"], "admin@pressdock.test");
    assert_eq!(event["source_ip"], "127.0.0.1");
    assert!(event["request_id"].as_str().is_some_and(|r| r.len() >= 32));
    app.finish().await;
}

#[tokio::test]
async fn a_full_cluster_fails_the_create_and_unwinds() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "tiny", 1).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let (_, first) = app.create_site(&admin, &tenant, "one.example").await;
    assert_eq!(
        app.wait_operation(&admin, first["operation"]["id"].as_str().unwrap())
            .await["state"],
        "succeeded"
    );
    let (_, second) = app.create_site(&admin, &tenant, "two.example").await;
    let op = app
        .wait_operation(&admin, second["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "failed");
    assert!(
        op["error"].as_str().unwrap().contains(
            "no worker can take the site (needs 1 slots, the most free on a matching node is 0)"
        ),
        "{op}"
    );
    let states: Vec<&str> = op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, vec!["undone", "undone"]);
    let (_, page) = app
        .get(&format!("/v1/tenants/{tenant}/sites?state=failed"), &admin)
        .await;
    assert_eq!(page["items"][0]["domain"], "two.example");
    // The failed site's domain was released by the unwind.
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM domains WHERE domain = 'two.example'")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(held, 0);
    app.finish().await;
}

/// New sites are placed by the planner with the configured policy: with one slot of
/// headroom kept free, a two-slot worker takes one site and refuses the second.
#[tokio::test]
async fn new_sites_keep_the_configured_headroom_free() {
    let app = TestApp::spawn_with(|c| c.placement.headroom_slots = 1).await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "small", 2).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let (_, first) = app.create_site(&admin, &tenant, "one.example").await;
    let op = app
        .wait_operation(&admin, first["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let (_, second) = app.create_site(&admin, &tenant, "two.example").await;
    let op = app
        .wait_operation(&admin, second["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "failed", "{op}");
    assert!(
        op["error"].as_str().unwrap().contains("needs 1 slots"),
        "{op}"
    );
    app.finish().await;
}

/// Creates racing for the last slots of a worker: the runner's loops reserve one at a time,
/// so exactly as many succeed as there are slots and the worker is never over capacity.
#[tokio::test]
async fn concurrent_creates_never_fill_a_worker_past_its_slots() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let worker = app.add_worker(&admin, "five", 5).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let creates = (0..9).map(|i| {
        let (app, admin, tenant) = (&app, &admin, &tenant);
        async move {
            app.create_site(admin, tenant, &format!("s{i}.example"))
                .await
        }
    });
    let created = futures::future::join_all(creates).await;
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for (_, body) in created {
        let op = app
            .wait_operation(&admin, body["operation"]["id"].as_str().unwrap())
            .await;
        *states
            .entry(op["state"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(states.get("succeeded"), Some(&5), "{states:?}");
    assert_eq!(states.get("failed"), Some(&4), "{states:?}");
    let used: i64 = sqlx::query_scalar(
        "SELECT CAST(COALESCE(SUM(slots), 0) AS SIGNED) FROM placements WHERE node_id = ?",
    )
    .bind(&worker)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(used, 5);
    app.finish().await;
}

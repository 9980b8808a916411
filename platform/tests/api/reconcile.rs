//! The `sites` reconciler against backends: the machine's MariaDB as Galera, and two
//! stand-ins of ProxySQL's admin interface as the DB router (ProxySQL is not installable
//! here; the stand-in refuses what ProxySQL's admin refuses).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::proxysql_admin::ProxySqlAdmin;
use crate::support::{TestApp, random_name, server_url};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn sites_reconciler_completes_a_router_user_missing_on_one_endpoint() {
    let a = ProxySqlAdmin::start().await;
    let b = ProxySqlAdmin::start().await;
    let backends: toml::Table = toml::from_str(&format!(
        r#"
        [galera]
        admin_url = "{mysql}"
        router = "proxysql"
        proxysql_admin_urls = ["{a}", "{b}"]
        site_db_host = "127.0.0.1:3306"
        "#,
        mysql = server_url(),
        a = a.url(),
        b = b.url(),
    ))
    .unwrap();
    let app = TestApp::spawn_with(|c| {
        c.backends = backends;
        c.reconcile.enabled = false;
        c.reconcile.orphan_grace_secs = 0;
    })
    .await;
    let admin = app.admin_token().await;
    app.add_worker(&admin, "worker-1", 25).await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let domain = format!("{}.example", random_name("router").replace('_', "-"));
    let (status, created) = app.create_site(&admin, &tenant, &domain).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let op = app
        .wait_operation(&admin, created["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let site = created["site"]["id"].as_str().unwrap().to_owned();
    let user = format!("wp_{site}");
    assert_eq!(a.rows("runtime", &user).len(), 2);
    assert_eq!(b.rows("runtime", &user).len(), 2);

    // b is replaced by a fresh ProxySQL (no users) and is not up yet: the pass names
    // the endpoint and the cause, and leaves a as it is.
    b.stop().await;
    b.wipe();
    let (status, ran) = app
        .post("/v1/admin/reconcilers/run", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    let errors = strings(&ran["sites"]["errors"]);
    assert_eq!(errors.len(), 1, "{ran}");
    assert!(
        errors[0].contains(&format!(
            "failed on 1 of 2 endpoints: {}: connect",
            b.label()
        )) && errors[0].contains("Connection refused")
            && errors[0].contains(&format!("applied on {}", a.label())),
        "{ran}"
    );
    assert_eq!(a.rows("runtime", &user).len(), 2);

    // b is up: the next pass writes the user there and says so.
    b.restart().await;
    let (status, ran) = app
        .post("/v1/admin/reconcilers/run", &admin, json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    assert_eq!(ran["sites"]["errors"], json!([]), "{ran}");
    let repairs = ran["sites"]["repairs"].as_array().unwrap();
    assert_eq!(repairs.len(), 1, "{ran}");
    assert_eq!(repairs[0]["site"], site.as_str());
    assert_eq!(repairs[0]["backend"], "router");
    assert_eq!(
        repairs[0]["drift"],
        format!("user not converged on {} (0 runtime rows)", b.label())
    );
    assert_eq!(b.rows("runtime", &user).len(), 2);
    assert_eq!(b.rows("disk", &user).len(), 1);

    // Converged: nothing to repair.
    let (_, ran) = app
        .post("/v1/admin/reconcilers/run", &admin, json!({}))
        .await;
    assert_eq!(ran["sites"]["repairs"], json!([]), "{ran}");
    assert_eq!(ran["sites"]["errors"], json!([]), "{ran}");
    for admin in [&a, &b] {
        assert_eq!(admin.refused(), vec![], "{}", admin.label());
    }

    // Deleting the site removes the user from both endpoints (and its database).
    let (status, deleted) = app
        .request(
            Method::DELETE,
            &format!("/v1/sites/{site}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{deleted}");
    let op = app
        .wait_operation(&admin, deleted["operation"]["id"].as_str().unwrap())
        .await;
    assert_eq!(op["state"], "succeeded", "{op}");
    for admin in [&a, &b] {
        for layer in ["memory", "runtime", "disk"] {
            assert_eq!(
                admin.rows(layer, &user).len(),
                0,
                "{} {layer}",
                admin.label()
            );
        }
    }

    // A user of the deleted site left on b (a removal that missed it): the `orphans`
    // reconciler finds it on the router and removes it (grace 0 here).
    b.put_user(&user);
    let (_, ran) = app
        .post("/v1/admin/reconcilers/run", &admin, json!({}))
        .await;
    assert_eq!(ran["orphans"]["errors"], json!([]), "{ran}");
    // (The machine's MariaDB is shared: other tests' databases show up as foreign.)
    let on_router: Vec<&Value> = ran["orphans"]["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["backend"] == "router")
        .collect();
    assert_eq!(
        on_router,
        vec![
            &json!({ "backend": "router", "resource": user, "foreign": false, "age_secs": 0, "removed": true })
        ],
        "{ran}"
    );
    assert_eq!(b.rows("runtime", &user).len(), 0);
    app.finish().await;
}

//! Health, readiness, metrics, the OpenAPI document and Swagger UI.

use reqwest::StatusCode;

use crate::support::TestApp;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let health: serde_json::Value = http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    let r = http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    let id = r.headers().get("x-request-id").cloned();
    let ready: serde_json::Value = r.json().await.unwrap();
    assert_eq!(ready["database"], "ok");
    assert!(id.is_some(), "every response carries a request id");
    let admin = app.admin_token().await;
    let _ = app.get("/v1/tenants", &admin).await;
    let metrics = http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"pressdock_http_requests_total{method="GET",route="/v1/tenants",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"pressdock_http_request_duration_seconds_bucket{method="POST",route="/v1/auth/login""#
    ));
    app.finish().await;
}

#[tokio::test]
async fn openapi_is_served_and_matches_the_checked_in_copy() {
    let generated = platform::api::openapi_pretty();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        generated.trim() == checked_in.trim(),
        "docs/openapi.json is stale: run `cargo run -p platform -- openapi > docs/openapi.json`"
    );
    let doc: serde_json::Value = serde_json::from_str(&generated).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/tenants/{tenant}/sites"]["post"].is_object());

    let app = TestApp::spawn().await;
    let http = reqwest::Client::new();
    let served: serde_json::Value = http
        .get(format!("{}/v1/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(served, doc);
    let r = http
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("swagger-ui"));
    app.finish().await;
}

#[tokio::test]
async fn printed_configuration_redacts_secrets() {
    let output = std::process::Command::new(crate::support::binary())
        .arg("config")
        .env(
            "PRESSDOCK_DATABASE_URL",
            "mysql://pd:hunter2-db@db.internal:3306/pressdock",
        )
        .env("PRESSDOCK_BOOTSTRAP_ADMIN_PASSWORD", "hunter2-admin")
        .env(
            "PRESSDOCK_SECRET_KEY",
            "hunter2-key-hunter2-key-hunter2-key-00",
        )
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success());
    assert!(
        text.contains("mysql://pd:[redacted]@db.internal:3306/pressdock"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn reconcilers_report_their_last_run_to_staff_only() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let tenant = app.create_tenant(&admin, "acme").await;
    let (member, _) = app.user_with_role(&admin, &tenant, "member").await;
    let (status, body) = app.get("/v1/admin/reconcilers", &member).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, ran) = app
        .post("/v1/admin/reconcilers/run", &admin, serde_json::json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{ran}");
    // Without backends there is nothing to compare: every reconciler runs and reports.
    assert_eq!(ran["sites"]["repairs"], serde_json::json!([]));
    let (status, list) = app.get("/v1/admin/reconcilers", &admin).await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["nodes", "orphans", "sites"]);
    assert!(list[0]["finished_at"].is_string());
    app.finish().await;
}

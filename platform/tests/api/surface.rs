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

/// The OpenAPI document says what the extractors and the error type do: every error
/// answer is `application/problem+json`, path parameters are generated ids, list filters
/// are optional query parameters with the server's bounds (issue 10: an OpenAPI fuzzer
/// found them documented as required path parameters, `limit` from 0, and 400/401/415/422
/// undocumented). `scripts/fuzz-api.sh` checks the whole document against a live server.
#[test]
fn openapi_documents_errors_parameters_and_limits_as_served() {
    let doc: serde_json::Value = serde_json::from_str(&platform::api::openapi_pretty()).unwrap();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let content = response["content"].as_object().unwrap();
                    assert_eq!(
                        content.keys().collect::<Vec<_>>(),
                        vec!["application/problem+json"],
                        "{method} {path} {status}"
                    );
                }
            }
            let has_body = op.get("requestBody").is_some();
            for status in ["400", "413", "415", "422"] {
                assert_eq!(
                    responses.contains_key(status),
                    has_body
                        || (status == "422"
                            && op.get("parameters").is_some_and(|p| p
                                .as_array()
                                .unwrap()
                                .iter()
                                .any(|p| p["in"] == "query"))),
                    "{method} {path} {status}"
                );
            }
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path}");
            }
            for parameter in op["parameters"].as_array().into_iter().flatten() {
                if parameter["in"] == "path" {
                    assert_eq!(parameter["schema"]["pattern"], "^[a-z2-7]{10}$", "{path}");
                    assert!(responses.contains_key("404"), "{method} {path}");
                } else {
                    // Query filters, or the optional `Idempotency-Key` header.
                    assert!(
                        parameter["in"] == "query" || parameter["in"] == "header",
                        "{method} {path}"
                    );
                    // Filters are optional; a billing export or report names its period
                    // (and format, or cost) and cannot do without them.
                    if !path.starts_with("/v1/billing/") {
                        assert_eq!(parameter["required"], false, "{method} {path}");
                    }
                }
            }
        }
    }
    assert!(operations >= 40, "{operations}");
    let audit = &doc["paths"]["/v1/audit"]["get"]["parameters"];
    let limit = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 500);
    let tenant = &doc["components"]["schemas"]["NewTenant"]["properties"];
    assert_eq!(tenant["name"]["minLength"], 1);
    assert_eq!(tenant["name"]["maxLength"], 200);
    let staff = &doc["components"]["schemas"]["NewStaffUser"]["properties"];
    assert_eq!(staff["email"]["format"], "email");
    assert_eq!(staff["password"]["minLength"], 12);
    assert_eq!(staff["password"]["maxLength"], 256);
}

/// What the OpenAPI fuzzer found on a live server stays fixed: agents' routes check the
/// token before they judge the body, integers may be written `2.0` (JSON Schema's
/// `integer`), a token name longer than its column is 422 (it was a 500), and malformed
/// bodies are problem+json.
#[tokio::test]
async fn fuzzer_findings_stay_fixed() {
    use reqwest::Method;
    use serde_json::json;
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let http = reqwest::Client::new();

    // No token: 401 whatever the body, even one that is not JSON.
    let r = http
        .post(format!("{}/v1/agent/report", app.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "problem+json"
    );
    // A token that is no site's: 401 for a body that is not a report, too (it was 422).
    for path in ["/v1/agent/report", "/v1/agent/purge"] {
        for body in [json!({}), json!({ "site_id": "abcdefghij", "paths": 5 })] {
            let (status, answer) = app
                .request(Method::POST, path, Some(&admin), Some(body))
                .await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {answer}");
            assert_eq!(answer["detail"], "a valid agent token is required");
        }
    }

    // `2.0` is an integer; `2.5` is not, and the error names the field.
    let plan = |slots: serde_json::Value| {
        json!({ "slug": "fuzz-plan", "name": "Fuzz", "slots": slots, "storage_mb": 1024.0,
                "memory_mb": 256, "cpu_millis": 500, "price_cents": 0 })
    };
    let (status, body) = app.post("/v1/plans", &admin, plan(json!(2.5))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "slots", "{body}");
    let (status, body) = app.post("/v1/plans", &admin, plan(json!(2.0))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["slots"], 2);
    assert_eq!(body["storage_mb"], 1024);

    // API token names fit their 100-character column.
    let (status, body) = app
        .post(
            "/v1/tokens",
            &admin,
            json!({ "name": "n".repeat(101), "scopes": ["read"] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "name", "{body}");
    assert_eq!(body["errors"][0]["message"], "must be 1 to 100 characters");

    // Cursors are positions: digits only, at most 18.
    let (status, body) = app.get("/v1/audit?cursor=5&limit=1", &admin).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .get(&format!("/v1/audit?cursor={}", "9".repeat(19)), &admin)
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "cursor", "{body}");

    // Bodies are objects: serde alone would take `[]` for a rebalance with defaults.
    for body in [json!([]), json!([true, 5]), json!("x")] {
        let (status, answer) = app
            .post("/v1/placement/rebalance", &admin, body.clone())
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["errors"][0]["field"], "body", "{answer}");
        assert_eq!(answer["errors"][0]["message"], "must be a JSON object");
    }

    // A body that is not JSON, or not sent as JSON: problem+json, 400 and 415.
    for (content_type, expected) in [
        ("application/json", StatusCode::BAD_REQUEST),
        ("text/plain", StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let r = http
            .post(format!("{}/v1/tenants", app.base))
            .bearer_auth(&admin)
            .header("content-type", content_type)
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
        assert_eq!(r.headers()["content-type"], "application/problem+json");
        let problem: serde_json::Value = r.json().await.unwrap();
        assert_eq!(problem["status"], expected.as_u16());
    }
    app.finish().await;
}

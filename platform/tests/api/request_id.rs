//! The request id: every log line written while answering a request is in a span that
//! carries the id, and a 500 names it in its body (the id an operator looks the lines up
//! by). The lines are captured by a process-wide JSON subscriber that keeps only the lines
//! of the requests made here (marked by a random value in their URI).

use std::{
    io::Write,
    sync::{Mutex, OnceLock},
};

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{TestApp, random_name};

/// Lines captured so far, of the marked requests only.
static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
const MARK: &str = "pdreqmark";

struct Capture(Vec<u8>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.0);
        let mut lines = LINES.lock().unwrap_or_else(|e| e.into_inner());
        lines.extend(
            text.lines()
                .filter(|line| line.contains(MARK))
                .map(str::to_owned),
        );
    }
}

/// The only global subscriber of this test binary: a test that installs its own (say
/// `tracing_subscriber::fmt().try_init()` for debugging) and runs first takes the place of
/// this one, and the assertions on the captured lines fail depending on the order.
fn capture_logs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        // The server's own format when PRESSDOCK_LOG_FORMAT=json (platform/src/main.rs).
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
            .with_writer(|| Capture(Vec::new()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

fn lines_with(marker: &str) -> Vec<Value> {
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|line| line.contains(marker))
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .collect()
}

/// The `request` span among the spans a line was written in (the outermost one of a
/// request; code inside may open its own).
fn request_span(line: &Value) -> &Value {
    line["spans"]
        .as_array()
        .and_then(|spans| spans.iter().find(|s| s["name"] == "request"))
        .unwrap_or_else(|| panic!("a line outside the request span: {line}"))
}

#[tokio::test]
async fn a_500_names_the_request_id_that_every_log_line_of_the_request_carries() {
    capture_logs();
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    // The audit log's table is gone: reading it is an internal error (a 500), logged.
    sqlx::query("RENAME TABLE audit_events TO audit_events_gone")
        .execute(&app.db)
        .await
        .expect("rename");
    let marker = random_name(MARK);
    let (status, headers, body) = app
        .request_full(
            Method::GET,
            &format!("/v1/audit?action={marker}"),
            Some(&admin),
            None,
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_owned();
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    assert_eq!(body["type"], "https://pressdock.dev/problems/internal");
    assert_eq!(
        body["detail"],
        "an internal error occurred; the request id identifies it in the logs"
    );
    // Nothing of the cause reaches the body.
    assert!(!body.to_string().contains("audit_events"), "{body}");

    let lines = lines_with(&marker);
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "request failed"
                && l["level"] == "ERROR"
                && l["fields"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("audit_events"))),
        "the failure is logged with its cause: {lines:#?}"
    );
    for line in &lines {
        assert_eq!(request_span(line)["request_id"], id.as_str(), "{line}");
    }

    // A caller's own id is kept, answered and logged.
    let (status, headers, body) = app
        .request_full(
            Method::GET,
            &format!("/v1/audit?action={marker}-2"),
            Some(&admin),
            None,
            &[("x-request-id", "caller-chosen-id-42")],
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(headers["x-request-id"], "caller-chosen-id-42");
    assert_eq!(body["request_id"], "caller-chosen-id-42");
    let lines = lines_with(&format!("{marker}-2"));
    assert!(!lines.is_empty());
    for line in &lines {
        assert_eq!(
            request_span(line)["request_id"],
            "caller-chosen-id-42",
            "{line}"
        );
    }

    // A 4xx does not carry it (nothing was logged for the operator to find).
    let (status, body) = app.get("/v1/tenants/zzzzzzzzzz", &admin).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body.get("request_id").is_none(), "{body}");

    sqlx::query("RENAME TABLE audit_events_gone TO audit_events")
        .execute(&app.db)
        .await
        .expect("rename back");
    app.finish().await;
}

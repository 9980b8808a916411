//! The control-plane schema across releases: a release starts on a database that a newer
//! one already migrated further (migrations only expand), and refuses one that lacks a
//! migration it needs.

use crate::support::TestApp;

#[tokio::test]
async fn an_older_release_runs_on_a_schema_a_newer_one_migrated() {
    let app = TestApp::spawn().await;
    // A newer release applied one more migration.
    sqlx::query(
        "INSERT INTO seaql_migrations (version, applied_at) \
         VALUES ('m29991231_000999_from_a_newer_release', UNIX_TIMESTAMP())",
    )
    .execute(&app.db)
    .await
    .unwrap();
    platform::db::migrate(&app.db)
        .await
        .expect("a schema one migration ahead is used as it is");
    // Still served by this release's code (the schema is all it needs).
    let (status, body) = app
        .request(reqwest::Method::GET, "/healthz", None, None)
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");

    // Ahead and behind at once (another branch's migrations instead of one of ours):
    // refused, naming both.
    let (ours,): (String,) =
        sqlx::query_as("SELECT MAX(version) FROM seaql_migrations WHERE version < 'm2999'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    sqlx::query("DELETE FROM seaql_migrations WHERE version = ?")
        .bind(&ours)
        .execute(&app.db)
        .await
        .unwrap();
    let err = platform::db::migrate(&app.db).await.unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("m29991231_000999_from_a_newer_release") && message.contains(&ours),
        "{message}"
    );
    app.finish().await;
}

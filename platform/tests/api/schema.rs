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

/// A TCP proxy to the test's MariaDB that closes the first `cut` connections as soon as
/// they are accepted (a router restarting: the client reads EOF where it waits for the
/// server's greeting), and counts every connection.
struct CuttingProxy {
    addr: std::net::SocketAddr,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttingProxy {
    async fn start(upstream: String, cut: usize) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if counter.fetch_add(1, Ordering::SeqCst) < cut {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The test server's URL with its host and port replaced by `addr`, its password by
/// `password` if given, and the database `name`.
fn url_through(addr: std::net::SocketAddr, password: Option<&str>, name: &str) -> String {
    let mut url = url::Url::parse(&crate::support::server_url()).unwrap();
    url.set_host(Some(&addr.ip().to_string())).unwrap();
    url.set_port(Some(addr.port())).unwrap();
    if let Some(password) = password {
        url.set_password(Some(password)).unwrap();
    }
    url.set_path(&format!("/{name}"));
    url.to_string()
}

fn upstream_of_test_server() -> String {
    let url = url::Url::parse(&crate::support::server_url()).unwrap();
    format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(3306))
}

#[tokio::test]
async fn a_connection_cut_before_the_greeting_is_tried_again_and_a_refusal_is_not() {
    use platform::config::DatabaseUrl;
    // Two connections closed before the server's greeting: start-up waits them out.
    let proxy = CuttingProxy::start(upstream_of_test_server(), 2).await;
    let name = crate::support::random_name("pdtest");
    let pool = platform::db::connect(&DatabaseUrl::new(url_through(proxy.addr, None, &name)), 2)
        .await
        .expect("connects once the cuts stop");
    let (one,): (i64,) = sqlx::query_as("SELECT 1").fetch_one(&pool).await.unwrap();
    assert_eq!(one, 1);
    assert!(proxy.accepted() >= 3, "{} connections", proxy.accepted());
    crate::support::drop_database(&pool, &name).await;

    // A wrong password is the server's answer: one connection, no retry.
    let proxy = CuttingProxy::start(upstream_of_test_server(), 0).await;
    let name = crate::support::random_name("pdtest");
    let err = platform::db::connect(
        &DatabaseUrl::new(url_through(proxy.addr, Some("not-the-password"), &name)),
        2,
    )
    .await
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("Access denied"), "{message}");
    assert!(
        !message.contains("not-the-password"),
        "the password leaked: {message}"
    );
    assert_eq!(proxy.accepted(), 1, "a refusal must not be retried");
}

//! `TestApp`: a Pressdock server on its own fresh database of the real MariaDB, on a port
//! chosen by the OS, plus helpers to act as each kind of user.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};

use platform::{
    config::{Config, DatabaseUrl, Secret},
    server,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::MySqlPool;
use tokio::sync::watch;

pub const ADMIN_EMAIL: &str = "admin@pressdock.test";
pub const PASSWORD: &str = "correct-horse-battery";
pub const SECRET_KEY: &str = "test-secret-key-0123456789abcdef0123456789";

/// The MariaDB server tests use; each test gets its own database on it.
pub fn server_url() -> String {
    std::env::var("PRESSDOCK_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

pub fn random_name(prefix: &str) -> String {
    format!("{prefix}_{}", platform::domain::Id::generate())
}

pub struct TestApp {
    pub base: String,
    pub db: MySqlPool,
    pub database: String,
    pub database_url: String,
    http: reqwest::Client,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

pub fn test_config(database_url: &str, jobs: bool) -> Config {
    let mut config = Config::load_from(None, &[]).expect("defaults");
    config.database_url = DatabaseUrl::new(database_url);
    config.secret_key = Secret::new(SECRET_KEY);
    config.bootstrap.admin_email = Some(ADMIN_EMAIL.to_owned());
    config.bootstrap.admin_password = Secret::new(PASSWORD);
    config.jobs.enabled = jobs;
    config.jobs.poll_millis = 50;
    config.jobs.lease_secs = 3;
    config
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let database = random_name("pdtest");
        let database_url = format!("{}/{database}", server_url());
        let mut config = test_config(&database_url, true);
        adjust(&mut config);
        let state = server::prepare(config).await.expect("prepare");
        let db = state.db.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            server::serve(state, listener, rx).await.expect("serve");
        });
        Self {
            base: format!("http://{addr}"),
            db,
            database,
            database_url,
            http: reqwest::Client::new(),
            stop,
            task,
        }
    }

    /// Stops the server and drops the test database.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        drop_database(&self.db, &self.database).await;
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, _, body) = self.request_full(method, path, token, body, &[]).await;
        (status, body)
    }

    pub async fn request_full(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, headers, body)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.request(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.request(Method::POST, path, Some(token), Some(body))
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Value {
        let (status, body) = self
            .request(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({ "email": email, "password": password })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {email}: {body}");
        body
    }

    pub async fn admin_token(&self) -> String {
        self.login(ADMIN_EMAIL, PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn create_tenant(&self, admin: &str, slug: &str) -> String {
        let (status, body) = self
            .post("/v1/tenants", admin, json!({ "slug": slug, "name": slug }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Invites a new user with a role into a tenant and returns their access token.
    pub async fn user_with_role(&self, admin: &str, tenant: &str, role: &str) -> (String, String) {
        let email = format!("{}@users.test", random_name(role));
        let (status, body) = self
            .post(
                &format!("/v1/tenants/{tenant}/users"),
                admin,
                json!({ "email": email, "role": role, "password": PASSWORD }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = self.login(&email, PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        (token, body["user_id"].as_str().unwrap().to_owned())
    }

    pub async fn staff_with_role(&self, admin: &str, role: &str) -> String {
        let email = format!("{}@staff.test", random_name(role));
        let (status, body) = self
            .post(
                "/v1/users",
                admin,
                json!({ "email": email, "password": PASSWORD, "staff_role": role }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.login(&email, PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn add_worker(&self, admin: &str, name: &str, slots: i32) -> String {
        let (status, body) = self
            .post(
                "/v1/nodes",
                admin,
                json!({ "name": name, "role": "worker", "slots": slots }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["availability"], "pending", "{body}");
        let id = body["id"].as_str().unwrap().to_owned();
        // No swarm here: staff vouch for the node, as a control plane only has them do.
        let (status, body) = self
            .request(
                Method::PATCH,
                &format!("/v1/nodes/{id}"),
                Some(admin),
                Some(json!({ "availability": "active" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["availability"], "active", "{body}");
        id
    }

    pub async fn create_site(
        &self,
        token: &str,
        tenant: &str,
        domain: &str,
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/v1/tenants/{tenant}/sites"),
            token,
            json!({ "name": "Site", "domain": domain, "plan": "starter" }),
        )
        .await
    }

    /// Polls an operation until it finishes.
    pub async fn wait_operation(&self, token: &str, id: &str) -> Value {
        wait_operation(&self.http, &self.base, token, id).await
    }
}

pub async fn wait_operation(http: &reqwest::Client, base: &str, token: &str, id: &str) -> Value {
    for _ in 0..400 {
        let op: Value = http
            .get(format!("{base}/v1/operations/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .expect("poll")
            .json()
            .await
            .expect("json");
        if matches!(op["state"].as_str(), Some("succeeded" | "failed")) {
            return op;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("operation {id} did not finish");
}

/// The names of an operation's steps, in order.
pub fn step_names(op: &Value) -> Vec<&str> {
    op["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect()
}

pub async fn drop_database(db: &MySqlPool, name: &str) {
    assert!(name.starts_with("pdtest_"));
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{name}`"
    )))
    .execute(db)
    .await;
    db.close().await;
}

/// A `pressdock serve` child process on the given database.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub base: String,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pressdock"))
}

impl ServerProcess {
    pub async fn start(database_url: &str, envs: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut command = tokio::process::Command::new(binary());
        command
            .arg("serve")
            .env("PRESSDOCK_DATABASE_URL", database_url)
            .env("PRESSDOCK_LISTEN", format!("127.0.0.1:{port}"))
            .env("PRESSDOCK_SECRET_KEY", SECRET_KEY)
            .env("PRESSDOCK_BOOTSTRAP_ADMIN_EMAIL", ADMIN_EMAIL)
            .env("PRESSDOCK_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD)
            .env("PRESSDOCK_JOBS_LEASE_SECS", "2")
            .env("PRESSDOCK_JOBS_POLL_MILLIS", "50")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn pressdock");
        let base = format!("http://127.0.0.1:{port}");
        for _ in 0..200 {
            if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
                && r.status().is_success()
            {
                return Self { child, base };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("pressdock serve did not become ready");
    }

    pub fn kill9(&mut self) {
        let pid = self.child.id().expect("pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
    }
}

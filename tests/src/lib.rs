//! End-to-end tests that cross crates live in tests/tests/; what several of them need on
//! the lab lives here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The lab's state folder (`pressdock-infra lab up` writes it).
pub const LAB_STATE: &str = "/var/lib/pressdock-lab";
/// Where the lab keeps the nodes' docker sockets (`<host>.sock`).
pub const LAB_RUN: &str = "/var/lib/pressdock-lab/run";
/// The lab's own platform API.
pub const LAB_API: &str = "http://127.0.0.1:23500";
/// The lab platform's staff admin; its password is in the lab's `secrets.toml`.
pub const LAB_STAFF: &str = "admin@pressdock.test";

/// The steps of a site create with every backend configured, in order (the lab tests
/// fail and kill at each; the provisioning benchmark times each).
pub const CREATE_STEPS: &[&str] = &[
    "record_site",
    "reserve_slot",
    "generate_secrets",
    "ensure_database",
    "ensure_router_user",
    "ensure_cache_user",
    "ensure_storage",
    "ensure_swarm_secrets",
    "ensure_service",
    "publish_hosts",
];

/// The steps of a site delete, in order.
pub const DELETE_STEPS: &[&str] = &[
    "unpublish_hosts",
    "remove_service",
    "remove_swarm_secrets",
    "remove_storage",
    "remove_cache_user",
    "remove_router_user",
    "remove_database",
    "release_slot",
    "release_domains",
    "forget_secrets",
];

/// Whether the lab tests run; `marker` is a file a lab that is up has. Without `PRESSDOCK_LAB_TESTS=1` the test is skipped (it says so on stderr). With it, a
/// lab that is not up is a failure, not a skip: CI sets the variable after `lab up`, and a
/// skipped lab test there would look like a pass.
pub fn lab_tests_enabled(marker: &Path) -> bool {
    if std::env::var("PRESSDOCK_LAB_TESTS").as_deref() != Ok("1") {
        eprintln!("skipped: needs PRESSDOCK_LAB_TESTS=1 and a lab that is up");
        return false;
    }
    assert!(
        marker.exists(),
        "PRESSDOCK_LAB_TESTS=1 but the lab is not up ({} is missing): run `pressdock-infra lab up` first",
        marker.display()
    );
    true
}

/// A fresh random name part (a platform id).
pub fn random() -> String {
    platform::domain::Id::generate().to_string()
}

/// A TOML file, parsed; panics naming the file.
pub fn read_toml(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `pressdock` binary of this workspace (`cargo build --workspace --bins` first), or
/// `PRESSDOCK_BIN`.
pub fn pressdock_binary() -> PathBuf {
    std::env::var("PRESSDOCK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pressdock"))
}

/// A lab node's docker socket, by host name (`pdlab-w1`).
pub fn node_sock(host: &str) -> PathBuf {
    Path::new(LAB_RUN).join(format!("{host}.sock"))
}

/// The docker socket of a `-H` value (`unix:///…/pdlab-w1.sock`).
pub fn sock_of(docker_host: &str) -> PathBuf {
    PathBuf::from(docker_host.trim_start_matches("unix://"))
}

/// A `docker -H unix://<sock>` command, arguments to add.
pub fn docker_command(sock: &Path) -> Command {
    let mut c = Command::new("/usr/bin/docker");
    c.arg("-H").arg(format!("unix://{}", sock.display()));
    c
}

/// Runs `c`, asserts it succeeded (its stderr in the message) and returns its stdout.
pub fn output(c: &mut Command) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `docker -H unix://<sock> <args>`, which must succeed: its stdout, trimmed.
pub fn docker_stdout(sock: &Path, args: &[&str]) -> String {
    output(docker_command(sock).args(args)).trim().to_owned()
}

/// `docker -H unix://<sock> <args>`: (exit ok, stdout then stderr).
pub fn docker(sock: &Path, args: &[&str]) -> (bool, String) {
    let out = docker_command(sock)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running docker: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A running container on a lab node.
pub struct Container {
    /// The node's docker socket.
    pub sock: PathBuf,
    /// The node's host name (`pdlab-w1`, …).
    pub host: String,
    /// The container's id.
    pub id: String,
    /// The container's name (a site's: `wp_<site>.<slot>.<task id>`).
    pub name: String,
}

/// The docker sockets of the lab's nodes (none when the lab is not up).
pub fn lab_socks() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(LAB_RUN) else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect()
}

/// The first running container that `filter` (a `docker ps --filter`) matches, on the
/// first of these nodes that has one. A node whose daemon does not answer (a test may have
/// killed it) has none.
pub fn find_container(socks: &[PathBuf], filter: &str) -> Option<Container> {
    socks.iter().find_map(|sock| {
        let (ok, out) = docker(
            sock,
            &["ps", "--filter", filter, "--format", "{{.ID}} {{.Names}}"],
        );
        let line = out.lines().next().filter(|_| ok)?;
        let (id, name) = line.split_once(' ')?;
        Some(Container {
            sock: sock.clone(),
            host: sock.file_stem()?.to_string_lossy().into_owned(),
            id: id.to_owned(),
            name: name.to_owned(),
        })
    })
}

/// [`find_container`] on the nodes `socks()` names, again every `every` until one runs or
/// `within` has passed.
pub fn wait_container(
    socks: impl Fn() -> Vec<PathBuf>,
    filter: &str,
    within: Duration,
    every: Duration,
) -> Option<Container> {
    let deadline = Instant::now() + within;
    loop {
        match find_container(&socks(), filter) {
            Some(c) => return Some(c),
            None if Instant::now() < deadline => std::thread::sleep(every),
            None => return None,
        }
    }
}

/// The running container of the lab's demo site (`lab up` makes `demo.lab.test`).
pub struct DemoTask {
    /// The node's docker socket.
    pub sock: PathBuf,
    /// The node's host name (`pdlab-w1`, …).
    pub host: String,
    /// The container's id.
    pub id: String,
    /// The container's name (`wp_<site>.<slot>.<task id>`).
    pub name: String,
    /// The site's id.
    pub site: String,
}

/// The demo site's running task. Other tests' sites may be mid-delete, and the demo's own
/// task may be between two (earlier lab tests kill nodes and move sites): this waits for
/// the swarm to run it again, bounded by what a task start takes at most (300 s).
pub fn demo_site_task() -> DemoTask {
    let (ok, out) = docker(
        &node_sock("pdlab-m1"),
        &[
            "service",
            "ls",
            "--filter",
            "label=pressdock.route.hosts=demo.lab.test",
            "--format",
            "{{.Name}}",
        ],
    );
    assert!(ok, "listing the demo site's service: {out}");
    let service = out
        .lines()
        .next()
        .expect("the demo site's service (lab up makes demo.lab.test)")
        .to_owned();
    let Some(Container {
        sock,
        host,
        id,
        name,
    }) = wait_container(
        lab_socks,
        &format!("label=com.docker.swarm.service.name={service}"),
        Duration::from_secs(300),
        Duration::from_secs(2),
    )
    else {
        panic!("the demo site's task ({service}) did not run within 300 s");
    };
    let site = name
        .trim_start_matches("wp_")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_owned();
    DemoTask {
        sock,
        host,
        id,
        name,
        site,
    }
}

/// A platform API client, logged in: the lab's own platform or a test's `pressdock serve`.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The access token every call carries.
    pub token: String,
    pub http: reqwest::Client,
    /// How often [`Api::wait_operation`] asks.
    pub poll: Duration,
}

impl Api {
    /// Logs in at `base` with `email` and `password`; panics with the answer when that
    /// gives no access token.
    pub async fn login(http: reqwest::Client, base: &str, email: &str, password: &str) -> Self {
        let login: Value = http
            .post(format!("{base}/v1/auth/login"))
            .json(&json!({ "email": email, "password": password }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("the platform answers on {base}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("a login answer from {base}: {e}"));
        let token = login["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("staff login: {login}"))
            .to_owned();
        Self {
            base: base.to_owned(),
            token,
            http,
            poll: Duration::from_millis(500),
        }
    }

    /// The lab's own platform (127.0.0.1:23500) as its staff admin. The `lab_sites` tests
    /// leave it stopped: `pressdock-infra lab up` converges the lab and starts it again.
    pub async fn lab_staff() -> Self {
        if std::net::TcpStream::connect("127.0.0.1:23500").is_err() {
            let infra =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/pressdock-infra");
            let status = Command::new(&infra)
                .args(["lab", "up"])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("{}: {e}", infra.display()));
            assert!(status.success(), "pressdock-infra lab up: {status}");
        }
        Self::login(
            reqwest::Client::new(),
            LAB_API,
            LAB_STAFF,
            &lab_staff_password(),
        )
        .await
    }

    /// `method path` with `body` as JSON: (status, the answer as JSON, or as a string
    /// when it is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            r = r.json(&body);
        }
        let r = r
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}{path}: {e}", self.base));
        let status = r.status().as_u16();
        let text = r
            .text()
            .await
            .unwrap_or_else(|e| panic!("{}{path}: {e}", self.base));
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET /v1/operations/{op}`.
    pub async fn operation(&self, op: &str) -> Value {
        self.call(reqwest::Method::GET, &format!("/v1/operations/{op}"), None)
            .await
            .1
    }

    /// The operation once it has finished (`succeeded` or `failed`), or `None` when it had
    /// not within `within`.
    pub async fn finished_operation(&self, op: &str, within: Duration) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let body = self.operation(op).await;
            if matches!(body["state"].as_str(), Some("succeeded" | "failed")) {
                return Some(body);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// `POST /v1/tenants`: the new tenant's id.
    pub async fn create_tenant(&self, slug: &str, name: &str) -> String {
        let (status, tenant) = self
            .call(
                reqwest::Method::POST,
                "/v1/tenants",
                Some(json!({ "slug": slug, "name": name })),
            )
            .await;
        assert_eq!(status, 201, "{tenant}");
        tenant["id"].as_str().expect("the tenant's id").to_owned()
    }

    /// `POST /v1/tenants/{tenant}/sites` on the starter plan: the answer (202 Accepted)
    /// with the site, its create operation and its one-time admin password.
    pub async fn create_site(&self, tenant: &str, title: &str, domain: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/sites"),
                Some(json!({ "name": title, "domain": domain, "plan": "starter" })),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body
    }

    /// Waits (300 s at most) for the operation of an accepted answer and asserts that it
    /// succeeded.
    pub async fn succeeds(&self, accepted: &Value) {
        let op = accepted["operation"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("an operation in {accepted}"));
        let done = self.wait_operation(op, Duration::from_secs(300)).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }

    /// Deletes every site of `tenant` that is not deleted yet (waiting for each delete),
    /// then the tenant: what a test leaves on the lab when it is done. Panics when a
    /// delete fails, so a leak is seen.
    pub async fn remove_tenant(&self, tenant: &str) {
        let (status, page) = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/tenants/{tenant}/sites?limit=200"),
                None,
            )
            .await;
        assert_eq!(status, 200, "the tenant's sites: {page}");
        let mut deletes = Vec::new();
        for site in page["items"].as_array().into_iter().flatten() {
            if site["state"] == "deleted" {
                continue;
            }
            let id = site["id"].as_str().unwrap_or_default();
            let (status, body) = self
                .call(reqwest::Method::DELETE, &format!("/v1/sites/{id}"), None)
                .await;
            assert_eq!(status, 202, "deleting site {id}: {body}");
            deletes.push(body);
        }
        for accepted in &deletes {
            self.succeeds(accepted).await;
        }
        let (status, body) = self
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/tenants/{tenant}"),
                None,
            )
            .await;
        assert_eq!(status, 204, "deleting tenant {tenant}: {body}");
    }

    /// The operation once it has finished; panics when it has not within `within`.
    pub async fn wait_operation(&self, op: &str, within: Duration) -> Value {
        match self.finished_operation(op, within).await {
            Some(done) => done,
            None => panic!(
                "operation {op} did not finish within {within:?}: {}",
                self.operation(op).await
            ),
        }
    }
}

/// GET `path` (with its query) of `domain` through the lab's edge: plain HTTP first
/// (127.0.0.1:23080); when the edge redirects to HTTPS (the domain has its certificate and
/// its site does not keep HTTP), the same path through the HTTPS edge (`edge_https_url` of
/// the lab's `lab.toml`), verifying the chain against the lab ACME roots and the name.
/// The final status and body; `Err` when a request fails.
pub async fn edge_get(domain: &str, path: &str) -> Result<(u16, String), String> {
    let no_redirect = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
    };
    let r = no_redirect()
        .build()
        .map_err(|e| e.to_string())?
        .get(format!("http://127.0.0.1:23080{path}"))
        .header("Host", domain)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let location = r
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_owned);
    if !matches!(status, 301 | 308)
        || location.as_deref() != Some(&format!("https://{domain}{path}"))
    {
        return Ok((status, r.text().await.map_err(|e| e.to_string())?));
    }
    let lab = read_toml(&Path::new(LAB_STATE).join("lab.toml"));
    let https: std::net::SocketAddr = lab["edge_https_url"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("https://")
        .parse()
        .map_err(|e| format!("edge_https_url: {e}"))?;
    let roots = std::fs::read(lab["acme_roots"].as_str().unwrap_or_default())
        .map_err(|e| format!("the lab ACME roots: {e}"))?;
    let mut b = no_redirect()
        .tls_built_in_root_certs(false)
        .resolve(domain, https);
    for root in reqwest::Certificate::from_pem_bundle(&roots).map_err(|e| e.to_string())? {
        b = b.add_root_certificate(root);
    }
    let r = b
        .build()
        .map_err(|e| e.to_string())?
        .get(format!("https://{domain}:{}{path}", https.port()))
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.map_err(|e| e.to_string())?))
}

/// The lab staff admin's password, from the lab's `secrets.toml`.
pub fn lab_staff_password() -> String {
    read_toml(&Path::new(LAB_STATE).join("secrets.toml"))["staff_password"]
        .as_str()
        .expect("staff_password in the lab's secrets.toml")
        .to_owned()
}

/// The ports the lab volume's bricks listen on (`gluster volume status sites --xml`); the
/// start of the lab's configured range when glusterd does not answer.
pub fn gluster_bricks() -> Vec<u16> {
    let out = Command::new("gluster")
        .args(["--mode=script", "volume", "status", "sites", "--xml"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut ports: Vec<u16> = text
        .split("<port>")
        .skip(1)
        .filter_map(|s| s.split('<').next()?.parse().ok())
        .filter(|p| *p > 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    if ports.is_empty() {
        ports = vec![49152, 49153];
    }
    ports
}

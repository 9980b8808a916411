//! The `pressdock` CLI: commands against a running server's API.
//!
//! `pressdock login` stores the server URL and tokens in `~/.config/pressdock/cli.toml`
//! (or `PRESSDOCK_CLI_CONFIG`), created with mode 0600. Output is a table by default and
//! the API's JSON with `--json`. `PRESSDOCK_TOKEN` (an API token) overrides the stored login.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Args, Clone)]
pub struct Global {
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Server URL (default: the one stored by `login`).
    #[arg(long, global = true, env = "PRESSDOCK_URL")]
    url: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Log in and store the tokens.
    Login {
        #[arg(long)]
        email: String,
        /// Read from PRESSDOCK_PASSWORD, or the first line of standard input.
        #[arg(long, env = "PRESSDOCK_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        global: Global,
    },
    /// Forget the stored login (and revoke its refresh token).
    Logout {
        #[command(flatten)]
        global: Global,
    },
    /// Tenants (staff manage them).
    Tenants {
        #[command(subcommand)]
        action: TenantCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Users: staff accounts and tenant members.
    Users {
        #[command(subcommand)]
        action: UserCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Plans.
    Plans {
        #[command(subcommand)]
        action: PlanCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Sites.
    Sites {
        #[command(subcommand)]
        action: SiteCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Operations (the progress of changes).
    Operations {
        #[command(subcommand)]
        action: OperationCmd,
        #[command(flatten)]
        global: Global,
    },
    /// API tokens for automation.
    Tokens {
        #[command(subcommand)]
        action: TokenCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Cluster nodes (staff).
    Nodes {
        #[command(subcommand)]
        action: NodeCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Where sites run: the map, and moves between workers (staff).
    Placement {
        #[command(subcommand)]
        action: PlacementCmd,
        #[command(flatten)]
        global: Global,
    },
}

#[derive(Subcommand)]
pub enum PlacementCmd {
    /// Workers with their utilisation, the moves a rebalance would make, the latest moves.
    Show,
    /// The moves that would balance the workers; `--apply` starts them.
    Rebalance {
        #[arg(long)]
        apply: bool,
        #[arg(long)]
        max_moves: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum TenantCmd {
    List,
    Show {
        tenant: String,
    },
    Create {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
    },
    Delete {
        tenant: String,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Members of a tenant, or staff without --tenant.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Invite a user into a tenant (creates the account if needed).
    Invite {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        email: String,
        #[arg(long, value_parser = ["owner", "member", "viewer"])]
        role: String,
    },
    /// Change a member's role.
    Role {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
        #[arg(long, value_parser = ["owner", "member", "viewer"])]
        role: String,
    },
    Remove {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
pub enum PlanCmd {
    List,
    Create {
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        slots: i32,
        #[arg(long)]
        storage_mb: i32,
        #[arg(long)]
        memory_mb: i32,
        #[arg(long)]
        cpu_millis: i32,
        #[arg(long)]
        price_cents: i32,
    },
}

#[derive(Subcommand)]
pub enum SiteCmd {
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        domain: Option<String>,
    },
    Show {
        site: String,
    },
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        domain: String,
        #[arg(long = "alias")]
        aliases: Vec<String>,
        #[arg(long)]
        plan: String,
        /// Wait until the operation finishes.
        #[arg(long)]
        wait: bool,
    },
    Update {
        site: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        plan: Option<String>,
    },
    Delete {
        site: String,
        #[arg(long)]
        wait: bool,
    },
    Suspend {
        site: String,
    },
    Resume {
        site: String,
    },
}

#[derive(Subcommand)]
pub enum OperationCmd {
    Show {
        operation: String,
        /// Poll until the operation finishes.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    List,
    Create {
        #[arg(long)]
        name: String,
        #[arg(long = "scope", value_parser = ["read", "write"], required = true)]
        scopes: Vec<String>,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    Revoke {
        token: String,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    List,
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        slots: Option<i32>,
        #[arg(long)]
        address: Option<String>,
    },
    Drain {
        node: String,
    },
    Activate {
        node: String,
    },
}

/// What `login` stores.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    url: String,
    access_token: String,
    refresh_token: String,
}

fn config_path() -> anyhow::Result<PathBuf> {
    if let Ok(path) = std::env::var("PRESSDOCK_CLI_CONFIG") {
        return Ok(path.into());
    }
    let base = std::env::var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set")?;
    Ok(base.join("pressdock").join("cli.toml"))
}

fn load_stored() -> anyhow::Result<Option<Stored>> {
    let path = config_path()?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes the login with mode 0600 (in a directory created 0700), atomically.
fn save_stored(stored: &Stored) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let path = config_path()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    // `mode` applies only when the file is created; a leftover temporary file keeps its own.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(toml::to_string(stored)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

struct Client {
    http: reqwest::Client,
    url: String,
    stored: Option<Stored>,
    api_token: Option<String>,
}

impl Client {
    fn new(global: &Global) -> anyhow::Result<Self> {
        let stored = load_stored()?;
        let url = global
            .url
            .clone()
            .or_else(|| stored.as_ref().map(|s| s.url.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned());
        Ok(Self {
            http: reqwest::Client::new(),
            url: url.trim_end_matches('/').to_owned(),
            stored,
            api_token: std::env::var("PRESSDOCK_TOKEN").ok(),
        })
    }

    fn bearer(&self) -> anyhow::Result<String> {
        if let Some(token) = &self.api_token {
            return Ok(token.clone());
        }
        match &self.stored {
            Some(s) => Ok(s.access_token.clone()),
            None => bail!("not logged in: run `pressdock login --email …` or set PRESSDOCK_TOKEN"),
        }
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.bearer()?);
        if let Some(body) = body {
            request = request.json(body);
        }
        request
            .send()
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }

    /// One API call; refreshes an expired access token once.
    async fn call(
        &mut self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut response = self.send(method.clone(), path, body.as_ref()).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED
            && self.api_token.is_none()
            && self.refresh().await?
        {
            response = self.send(method, path, body.as_ref()).await?;
        }
        read(response).await
    }

    async fn refresh(&mut self) -> anyhow::Result<bool> {
        let Some(stored) = &self.stored else {
            return Ok(false);
        };
        let response = self
            .http
            .post(format!("{}/v1/auth/refresh", self.url))
            .json(&json!({ "refresh_token": stored.refresh_token }))
            .send()
            .await?;
        if !response.status().is_success() {
            return Ok(false);
        }
        let pair: Value = response.json().await?;
        let updated = Stored {
            url: self.url.clone(),
            access_token: pair["access_token"].as_str().unwrap_or_default().to_owned(),
            refresh_token: pair["refresh_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        };
        save_stored(&updated)?;
        self.stored = Some(updated);
        Ok(true)
    }
}

/// The body of a response, or the problem's detail and field errors as the error.
async fn read(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.context("reading the response")?;
    if status.is_success() {
        return Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).context("the response is not JSON")?
        });
    }
    let problem: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut message = format!(
        "{}: {}",
        status.as_u16(),
        problem["detail"].as_str().unwrap_or(&text)
    );
    if let Some(errors) = problem["errors"].as_array() {
        for e in errors {
            message.push_str(&format!(
                "\n  {}: {}",
                e["field"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("?")
            ));
        }
    }
    bail!(message)
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Prints rows of objects as a table of the given columns, or the JSON.
fn print(json: bool, value: &Value, columns: &[&str]) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        );
        return;
    }
    let rows: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(map) if map.contains_key("items") => map["items"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        other => vec![other],
    };
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_header(columns.iter().map(|c| c.to_uppercase()));
    for row in rows {
        table.add_row(columns.iter().map(|c| cell(&row[*c])));
    }
    println!("{table}");
}

const SITE_COLUMNS: &[&str] = &["id", "name", "domain", "aliases", "plan", "state", "node"];
const OPERATION_COLUMNS: &[&str] = &["id", "kind", "state", "target_id", "error"];

async fn wait_operation(client: &mut Client, id: &str) -> anyhow::Result<Value> {
    loop {
        let op = client
            .call(reqwest::Method::GET, &format!("/v1/operations/{id}"), None)
            .await?;
        if matches!(op["state"].as_str(), Some("succeeded" | "failed")) {
            return Ok(op);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn print_operation(json: bool, op: &Value) {
    if json {
        print(true, op, &[]);
        return;
    }
    print(false, op, OPERATION_COLUMNS);
    print(
        false,
        &op["steps"],
        &["position", "name", "state", "attempts", "error"],
    );
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    use reqwest::Method;
    match command {
        Command::Login {
            email,
            password,
            global,
        } => {
            let password = match password {
                Some(p) => p,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the password from standard input")?;
                    line.trim_end_matches(['\n', '\r']).to_owned()
                }
            };
            let client = Client::new(&global)?;
            let response = client
                .http
                .post(format!("{}/v1/auth/login", client.url))
                .json(&json!({ "email": email, "password": password }))
                .send()
                .await
                .with_context(|| format!("connecting to {}", client.url))?;
            let pair = read(response).await?;
            save_stored(&Stored {
                url: client.url.clone(),
                access_token: pair["access_token"].as_str().unwrap_or_default().to_owned(),
                refresh_token: pair["refresh_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            })?;
            println!(
                "logged in to {} as {email}; login stored in {}",
                client.url,
                config_path()?.display()
            );
        }
        Command::Logout { global } => {
            let client = Client::new(&global)?;
            if let Some(stored) = &client.stored {
                let _ = client
                    .http
                    .post(format!("{}/v1/auth/logout", client.url))
                    .json(&json!({ "refresh_token": stored.refresh_token }))
                    .send()
                    .await;
                std::fs::remove_file(config_path()?).ok();
            }
            println!("logged out");
        }
        Command::Tenants { action, global } => {
            let mut c = Client::new(&global)?;
            let cols = &["id", "slug", "name", "state", "created_at"];
            let value = match action {
                TenantCmd::List => c.call(Method::GET, "/v1/tenants", None).await?,
                TenantCmd::Show { tenant } => {
                    c.call(Method::GET, &format!("/v1/tenants/{tenant}"), None)
                        .await?
                }
                TenantCmd::Create { slug, name } => {
                    c.call(
                        Method::POST,
                        "/v1/tenants",
                        Some(json!({ "slug": slug, "name": name })),
                    )
                    .await?
                }
                TenantCmd::Delete { tenant } => {
                    c.call(Method::DELETE, &format!("/v1/tenants/{tenant}"), None)
                        .await?;
                    println!("deleted tenant {tenant}");
                    return Ok(());
                }
            };
            print(global.json, &value, cols);
        }
        Command::Users { action, global } => {
            let mut c = Client::new(&global)?;
            match action {
                UserCmd::List { tenant: None } => {
                    let v = c.call(Method::GET, "/v1/users", None).await?;
                    print(global.json, &v, &["id", "email", "name", "staff_role"]);
                }
                UserCmd::List { tenant: Some(t) } => {
                    let v = c
                        .call(Method::GET, &format!("/v1/tenants/{t}/users"), None)
                        .await?;
                    print(global.json, &v, &["user_id", "email", "name", "role"]);
                }
                UserCmd::Invite {
                    tenant,
                    email,
                    role,
                } => {
                    let v = c
                        .call(
                            Method::POST,
                            &format!("/v1/tenants/{tenant}/users"),
                            Some(json!({ "email": email, "role": role })),
                        )
                        .await?;
                    print(
                        global.json,
                        &v,
                        &["user_id", "email", "role", "initial_password"],
                    );
                }
                UserCmd::Role { tenant, user, role } => {
                    let v = c
                        .call(
                            Method::PATCH,
                            &format!("/v1/tenants/{tenant}/users/{user}"),
                            Some(json!({ "role": role })),
                        )
                        .await?;
                    print(global.json, &v, &["user_id", "email", "role"]);
                }
                UserCmd::Remove { tenant, user } => {
                    c.call(
                        Method::DELETE,
                        &format!("/v1/tenants/{tenant}/users/{user}"),
                        None,
                    )
                    .await?;
                    println!("removed {user} from {tenant}");
                }
            }
        }
        Command::Plans { action, global } => {
            let mut c = Client::new(&global)?;
            let value = match action {
                PlanCmd::List => c.call(Method::GET, "/v1/plans", None).await?,
                PlanCmd::Create { slug, name, slots, storage_mb, memory_mb, cpu_millis, price_cents } => {
                    c.call(
                        Method::POST,
                        "/v1/plans",
                        Some(json!({ "slug": slug, "name": name, "slots": slots, "storage_mb": storage_mb,
                            "memory_mb": memory_mb, "cpu_millis": cpu_millis, "price_cents": price_cents })),
                    )
                    .await?
                }
            };
            print(
                global.json,
                &value,
                &[
                    "slug",
                    "name",
                    "slots",
                    "storage_mb",
                    "memory_mb",
                    "cpu_millis",
                    "price_cents",
                ],
            );
        }
        Command::Sites { action, global } => {
            let mut c = Client::new(&global)?;
            match action {
                SiteCmd::List {
                    tenant,
                    state,
                    domain,
                } => {
                    let mut all = Vec::new();
                    let mut cursor: Option<String> = None;
                    loop {
                        let mut query = vec![("limit", "200".to_owned())];
                        query.extend(state.clone().map(|s| ("state", s)));
                        query.extend(domain.clone().map(|d| ("domain", d)));
                        query.extend(cursor.clone().map(|c| ("cursor", c)));
                        let qs = query
                            .iter()
                            .map(|(k, v)| format!("{k}={}", urlencode(v)))
                            .collect::<Vec<_>>()
                            .join("&");
                        let page = c
                            .call(
                                Method::GET,
                                &format!("/v1/tenants/{tenant}/sites?{qs}"),
                                None,
                            )
                            .await?;
                        all.extend(page["items"].as_array().cloned().unwrap_or_default());
                        match page["next_cursor"].as_str() {
                            Some(next) => cursor = Some(next.to_owned()),
                            None => break,
                        }
                    }
                    print(global.json, &Value::Array(all), SITE_COLUMNS);
                }
                SiteCmd::Show { site } => {
                    let v = c
                        .call(Method::GET, &format!("/v1/sites/{site}"), None)
                        .await?;
                    print(global.json, &v, SITE_COLUMNS);
                }
                SiteCmd::Create {
                    tenant,
                    name,
                    domain,
                    aliases,
                    plan,
                    wait,
                } => {
                    let v = c
                        .call(Method::POST, &format!("/v1/tenants/{tenant}/sites"), Some(json!({ "name": name, "domain": domain, "aliases": aliases, "plan": plan })))
                        .await?;
                    finish_accepted(&mut c, global.json, v, wait).await?;
                }
                SiteCmd::Update {
                    site,
                    name,
                    domain,
                    plan,
                } => {
                    let mut body = serde_json::Map::new();
                    body.extend(name.map(|v| ("name".to_owned(), json!(v))));
                    body.extend(domain.map(|v| ("domain".to_owned(), json!(v))));
                    body.extend(plan.map(|v| ("plan".to_owned(), json!(v))));
                    let v = c
                        .call(
                            Method::PATCH,
                            &format!("/v1/sites/{site}"),
                            Some(Value::Object(body)),
                        )
                        .await?;
                    finish_accepted(&mut c, global.json, v, false).await?;
                }
                SiteCmd::Delete { site, wait } => {
                    let v = c
                        .call(Method::DELETE, &format!("/v1/sites/{site}"), None)
                        .await?;
                    finish_accepted(&mut c, global.json, v, wait).await?;
                }
                SiteCmd::Suspend { site } => {
                    let v = c
                        .call(Method::POST, &format!("/v1/sites/{site}/suspend"), None)
                        .await?;
                    finish_accepted(&mut c, global.json, v, false).await?;
                }
                SiteCmd::Resume { site } => {
                    let v = c
                        .call(Method::POST, &format!("/v1/sites/{site}/resume"), None)
                        .await?;
                    finish_accepted(&mut c, global.json, v, false).await?;
                }
            }
        }
        Command::Operations {
            action: OperationCmd::Show { operation, wait },
            global,
        } => {
            let mut c = Client::new(&global)?;
            let op = if wait {
                wait_operation(&mut c, &operation).await?
            } else {
                c.call(Method::GET, &format!("/v1/operations/{operation}"), None)
                    .await?
            };
            print_operation(global.json, &op);
        }
        Command::Tokens { action, global } => {
            let mut c = Client::new(&global)?;
            match action {
                TokenCmd::List => {
                    let v = c.call(Method::GET, "/v1/tokens", None).await?;
                    print(
                        global.json,
                        &v,
                        &[
                            "id",
                            "name",
                            "scopes",
                            "expires_at",
                            "revoked_at",
                            "last_used_at",
                        ],
                    );
                }
                TokenCmd::Create {
                    name,
                    scopes,
                    expires_in_days,
                } => {
                    let v = c
                        .call(Method::POST, "/v1/tokens", Some(json!({ "name": name, "scopes": scopes, "expires_in_days": expires_in_days })))
                        .await?;
                    print(
                        global.json,
                        &v,
                        &["id", "name", "scopes", "expires_at", "secret"],
                    );
                    if !global.json {
                        eprintln!("the secret is shown only once; store it now");
                    }
                }
                TokenCmd::Revoke { token } => {
                    c.call(Method::DELETE, &format!("/v1/tokens/{token}"), None)
                        .await?;
                    println!("revoked {token}");
                }
            }
        }
        Command::Nodes { action, global } => {
            let mut c = Client::new(&global)?;
            let cols = &[
                "id",
                "name",
                "role",
                "availability",
                "slots",
                "used_slots",
                "address",
            ];
            let value = match action {
                NodeCmd::List => c.call(Method::GET, "/v1/nodes", None).await?,
                NodeCmd::Register { name, role, slots, address } => {
                    c.call(Method::POST, "/v1/nodes", Some(json!({ "name": name, "role": role, "slots": slots, "address": address }))).await?
                }
                NodeCmd::Drain { node } => c.call(Method::PATCH, &format!("/v1/nodes/{node}"), Some(json!({ "availability": "drain" }))).await?,
                NodeCmd::Activate { node } => {
                    c.call(Method::PATCH, &format!("/v1/nodes/{node}"), Some(json!({ "availability": "active" }))).await?
                }
            };
            print(global.json, &value, cols);
        }
        Command::Placement { action, global } => {
            let mut c = Client::new(&global)?;
            match action {
                PlacementCmd::Show => {
                    let map = c.call(Method::GET, "/v1/placement", None).await?;
                    if global.json {
                        print(true, &map, &[]);
                    } else {
                        print(false, &placement_rows(&map), PLACEMENT_COLUMNS);
                        println!(
                            "\nbalance: max/mean utilisation {:.3} over {} active worker(s)",
                            map["balance"]["max_over_mean"].as_f64().unwrap_or(0.0),
                            map["balance"]["active_nodes"]
                        );
                        println!("\nproposed moves:");
                        print(false, &map["proposed"], MOVE_COLUMNS);
                        println!("\nrecent moves:");
                        print(false, &map["recent_moves"], RECENT_MOVE_COLUMNS);
                    }
                }
                PlacementCmd::Rebalance { apply, max_moves } => {
                    let answer = c
                        .call(
                            Method::POST,
                            "/v1/placement/rebalance",
                            Some(json!({ "dry_run": !apply, "max_moves": max_moves })),
                        )
                        .await?;
                    if global.json {
                        print(true, &answer, &[]);
                    } else {
                        print(false, &answer["moves"], MOVE_COLUMNS);
                        println!(
                            "\n{} move(s), lower bound {}; max/mean utilisation {:.3} -> {:.3}{}",
                            answer["moves"].as_array().map_or(0, Vec::len),
                            answer["lower_bound"],
                            answer["before"]["max_over_mean"].as_f64().unwrap_or(0.0),
                            answer["after"]["max_over_mean"].as_f64().unwrap_or(0.0),
                            if apply {
                                format!(
                                    "; {} operation(s) started",
                                    answer["operations"].as_array().map_or(0, Vec::len)
                                )
                            } else {
                                " (dry run: --apply starts them)".into()
                            }
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

const PLACEMENT_COLUMNS: &[&str] = &[
    "name",
    "availability",
    "used",
    "slots",
    "utilisation",
    "sites",
];
const MOVE_COLUMNS: &[&str] = &["domain", "from", "to", "slots", "reason", "wave"];
const RECENT_MOVE_COLUMNS: &[&str] = &[
    "domain",
    "from",
    "to",
    "reason",
    "state",
    "seconds_to_ready",
    "seconds_total",
];

/// One row per worker of `GET /v1/placement`.
fn placement_rows(map: &Value) -> Value {
    Value::Array(
        map["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "name": n["name"],
                            "availability": n["availability"],
                            "used": n["used_slots"],
                            "slots": n["slots"],
                            "utilisation": format!("{:.0}%", n["utilisation"].as_f64().unwrap_or(0.0) * 100.0),
                            "sites": n["sites"].as_array().map_or(0, Vec::len),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

async fn finish_accepted(
    c: &mut Client,
    json: bool,
    accepted: Value,
    wait: bool,
) -> anyhow::Result<()> {
    let (site, op) = if wait {
        let id = accepted["operation"]["id"]
            .as_str()
            .context("the response has no operation id")?;
        let op = wait_operation(c, id).await?;
        // Show the site as the operation left it; a deleted site is gone, so keep the
        // accepted view of it then.
        let site = match accepted["site"]["id"].as_str() {
            Some(site) => c
                .call(reqwest::Method::GET, &format!("/v1/sites/{site}"), None)
                .await
                .unwrap_or_else(|_| accepted["site"].clone()),
            None => accepted["site"].clone(),
        };
        (site, op)
    } else {
        (accepted["site"].clone(), accepted["operation"].clone())
    };
    if json {
        print(true, &json!({ "site": site, "operation": op }), &[]);
    } else {
        print(false, &site, SITE_COLUMNS);
        print_operation(false, &op);
    }
    if wait && op["state"] == "failed" {
        bail!("the operation failed: {}", cell(&op["error"]));
    }
    Ok(())
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

//! The `pressdock` CLI: commands against a running server's API.
//!
//! `pressdock login` stores the server URL and tokens in `~/.config/pressdock/cli.toml`
//! (or `PRESSDOCK_CLI_CONFIG`), created with mode 0600. Output is a table by default and
//! the API's JSON with `--json`. `PRESSDOCK_TOKEN` (an API token) overrides the stored login.

use std::{io::Write, path::PathBuf};

/// A line of the command's answer on standard output. A reader that went away
/// (`pressdock sites list | head -3`) ends the command quietly with 141, as `cat` ends by
/// SIGPIPE, instead of the panic `println!` gives (Rust ignores SIGPIPE).
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*), "\n")
    };
}

/// Writes to standard output; see [`outln!`].
pub fn write_out(args: std::fmt::Arguments<'_>, end: &str) {
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(end.as_bytes()))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(err) => {
            eprintln!("error: writing to standard output: {err}");
            std::process::exit(1)
        }
    }
}

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
    /// Server URL, such as http://127.0.0.1:23500 for the lab (default: the one stored by
    /// `login`, else http://127.0.0.1:8080).
    #[arg(long, global = true, env = "PRESSDOCK_URL")]
    url: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Log in and store the tokens.
    Login {
        /// The account's e-mail address.
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
    /// Plans: the sizes a site can have (slots, storage, memory, CPU, price).
    Plans {
        #[command(subcommand)]
        action: PlanCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Sites: create, list, change, suspend, resume and delete WordPress sites.
    Sites {
        #[command(subcommand)]
        action: SiteCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Backups of sites: take, list, show and delete them (restore: `sites restore`).
    Backups {
        #[command(subcommand)]
        action: BackupCmd,
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
    ///
    /// Nodes come from the swarm; one registered ahead is pending (no sites) until a swarm
    /// node of its name joins.
    Nodes {
        #[command(subcommand)]
        action: NodeCmd,
        #[command(flatten)]
        global: Global,
    },
    /// Billing: usage exports per period, closing a period (staff).
    Billing {
        #[command(subcommand)]
        action: BillingCmd,
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
        /// Start the moves (a `site.move` operation each) instead of only showing them.
        #[arg(long)]
        apply: bool,
        /// At most this many moves.
        #[arg(long)]
        max_moves: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum TenantCmd {
    /// Tenants you can see (staff: all).
    List,
    /// One tenant.
    Show {
        /// The tenant's id.
        tenant: String,
    },
    /// Create a tenant (staff); prints its id.
    Create {
        /// Short lower-case name: a-z, 0-9 and '-'.
        #[arg(long)]
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// Delete a tenant that has no sites (staff).
    Delete {
        /// The tenant's id.
        tenant: String,
    },
}

#[derive(Subcommand)]
pub enum UserCmd {
    /// Members of a tenant, or staff without --tenant.
    List {
        /// The tenant's id; without it, the staff accounts.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Invite a user into a tenant (creates the account if needed).
    Invite {
        /// The tenant's id.
        #[arg(long)]
        tenant: String,
        /// The user's e-mail address.
        #[arg(long)]
        email: String,
        /// Their role in the tenant.
        #[arg(long, value_parser = ["owner", "member", "viewer"])]
        role: String,
    },
    /// Change a member's role.
    Role {
        /// The tenant's id.
        #[arg(long)]
        tenant: String,
        /// The member's user id.
        #[arg(long)]
        user: String,
        /// Their new role in the tenant.
        #[arg(long, value_parser = ["owner", "member", "viewer"])]
        role: String,
    },
    /// Remove a member from a tenant.
    Remove {
        /// The tenant's id.
        #[arg(long)]
        tenant: String,
        /// The member's user id.
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
pub enum BillingCmd {
    /// Write a period's billing lines to standard output (staff: every tenant; a tenant
    /// owner: their own), such as `pressdock billing export --period 2026-11 --format csv
    /// > usage.csv`.
    Export {
        /// The month, YYYY-MM (UTC).
        #[arg(long)]
        period: String,
        /// csv (RFC 4180 with a header row) or jsonl.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Only this tenant's lines (its id).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Close a period (staff admin): its lines are frozen; later usage of it becomes
    /// adjustments in the next open period.
    Close {
        /// The month, YYYY-MM; it must have ended.
        #[arg(long)]
        period: String,
    },
}

#[derive(Subcommand)]
pub enum PlanCmd {
    /// Every plan.
    List,
    /// Create a plan (staff).
    Create {
        /// Short lower-case name, used as `--plan` of `sites create`.
        #[arg(long)]
        slug: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Worker slots a site of this plan takes (a worker has 25).
        #[arg(long)]
        slots: i32,
        /// Storage quota of wp-content, in MiB.
        #[arg(long)]
        storage_mb: i32,
        /// Memory limit of the site's task, in MiB.
        #[arg(long)]
        memory_mb: i32,
        /// CPU limit of the site's task, in thousandths of a CPU.
        #[arg(long)]
        cpu_millis: i32,
        /// Monthly price, in cents.
        #[arg(long)]
        price_cents: i32,
    },
    /// The plan's backup policy; with --every-hours or --daily-at, set it (staff admins).
    BackupPolicy {
        /// The plan's slug or id.
        plan: String,
        /// Back the plan's sites up every this many hours (1 to 168, slots on multiples
        /// of it since 00:00 UTC).
        #[arg(long, conflicts_with = "daily_at")]
        every_hours: Option<i32>,
        /// Back the plan's sites up daily at this UTC time (HH:MM).
        #[arg(long)]
        daily_at: Option<String>,
        /// Scheduled backups kept per site, newest first.
        #[arg(long)]
        keep_count: Option<i32>,
        /// Scheduled backups older than this many days are pruned.
        #[arg(long)]
        keep_days: Option<i32>,
        /// Keep the policy's retention but schedule no backups.
        #[arg(long)]
        disable: bool,
    },
}

#[derive(Subcommand)]
pub enum SiteCmd {
    /// A tenant's sites (all pages).
    List {
        /// The tenant's id.
        #[arg(long)]
        tenant: String,
        /// Only sites in this state (provisioning, active, degraded, suspended, failed…).
        #[arg(long)]
        state: Option<String>,
        /// Only the site with this domain (primary or alias).
        #[arg(long)]
        domain: Option<String>,
    },
    /// One site, with its agent's last report.
    Show {
        /// The site's id.
        site: String,
    },
    /// Create a site. Prints the WordPress administrator's password once: store it.
    Create {
        /// The tenant's id.
        #[arg(long)]
        tenant: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// The primary domain (IDNA names are stored as punycode).
        #[arg(long)]
        domain: String,
        /// Another domain of the site (repeat for more).
        #[arg(long = "alias")]
        aliases: Vec<String>,
        /// The plan's slug (`pressdock plans list`), such as starter.
        #[arg(long)]
        plan: String,
        /// Login of the first WordPress administrator (default: admin).
        #[arg(long)]
        admin_user: Option<String>,
        /// E-mail of the first WordPress administrator (default: yours).
        #[arg(long)]
        admin_email: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Change a site's name, primary domain or plan.
    Update {
        /// The site's id.
        site: String,
        /// New display name.
        #[arg(long)]
        name: Option<String>,
        /// New primary domain.
        #[arg(long)]
        domain: Option<String>,
        /// New plan slug.
        #[arg(long)]
        plan: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// Delete a site and every resource it has.
    Delete {
        /// The site's id.
        site: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Stop serving a site (its data stays).
    Suspend {
        /// The site's id.
        site: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Serve a suspended site again.
    Resume {
        /// The site's id.
        site: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Restore one of the site's backups into it (the site is backed up first: the
    /// restore's `pre_restore_backup_id` undoes it). A deleted site is brought back
    /// from the backup under its own id and domain (its final backup:
    /// `pressdock backups list SITE`).
    Restore {
        /// The site's id.
        site: String,
        /// The backup's id (`pressdock backups list SITE`).
        #[arg(long)]
        backup: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Clone the site into a new site of the same tenant with another domain (rewritten
    /// in the database, serialized values included).
    Clone {
        /// The site's id.
        site: String,
        /// The new site's primary domain.
        #[arg(long)]
        domain: String,
        /// The backup to clone from (default: the site's latest complete backup).
        #[arg(long)]
        backup: Option<String>,
        /// The new site's name (default: the source's with " (clone)").
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Back up a site now: its database (one consistent snapshot) and wp-content.
    Create {
        /// The site's id.
        site: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// A site's backups (or with --tenant, all of a tenant's, deleted sites' included),
    /// newest first, with their states and sizes.
    List {
        /// The site's id.
        #[arg(required_unless_present = "tenant", conflicts_with = "tenant")]
        site: Option<String>,
        /// All backups of this tenant's sites, deleted sites included.
        #[arg(long)]
        tenant: Option<String>,
        /// With --tenant: only this kind (manual, scheduled, final, pre_restore).
        #[arg(long, requires = "tenant")]
        kind: Option<String>,
    },
    /// A new site made from a backup (a deleted site's final backup too), with the
    /// backed-up site's plan and settings and its domain rewritten to --domain.
    Clone {
        /// The backup's id.
        backup: String,
        /// The new site's primary domain (a deleted site's own domain is free again).
        #[arg(long)]
        domain: String,
        /// The new site's name (default: the backed-up site's with " (clone)").
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
    /// One backup.
    Show {
        /// The backup's id.
        backup: String,
    },
    /// Delete a complete or failed backup's objects.
    Delete {
        /// The backup's id.
        backup: String,
        #[command(flatten)]
        wait: Wait,
    },
}

/// Waiting for a change to take effect.
#[derive(Args, Clone, Copy)]
pub struct Wait {
    /// Wait until the change has taken effect (a new site: until it is active, serving),
    /// showing progress on standard error; exit non-zero with the reason if it fails.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up (exit non-zero) after this many seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
}

#[derive(Subcommand)]
pub enum OperationCmd {
    /// Operations newest first: your tenants' (staff: all).
    List {
        /// Only this tenant's operations (its id).
        #[arg(long)]
        tenant: Option<String>,
        /// Only operations in this state.
        #[arg(long, value_parser = ["pending", "running", "unwinding", "succeeded", "failed"])]
        state: Option<String>,
        /// Only this kind, such as site.create.
        #[arg(long)]
        kind: Option<String>,
        /// Only operations on this site (its id).
        #[arg(long)]
        site: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One operation with its steps.
    Show {
        /// The operation's id.
        operation: String,
        /// Poll until the operation finishes, showing its steps on standard error.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Your API tokens (never their secrets).
    List,
    /// Create an API token; its secret is shown once.
    Create {
        /// What the token is for.
        #[arg(long)]
        name: String,
        /// read or write (repeat for both).
        #[arg(long = "scope", value_parser = ["read", "write"], required = true)]
        scopes: Vec<String>,
        /// Expire after this many days (default: never).
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Revoke an API token.
    Revoke {
        /// The token's id (not its secret).
        token: String,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Every node with its role, availability and slots.
    List,
    /// Register a node ahead of its joining the swarm: it is pending (no sites) until a
    /// swarm node of this name joins.
    Register {
        /// The node's host name, as the swarm will know it.
        #[arg(long)]
        name: String,
        /// manager, cache, worker, database, storage or monitoring.
        #[arg(long)]
        role: String,
        /// Site slots (default: 25 for a worker, 0 otherwise).
        #[arg(long)]
        slots: Option<i32>,
        /// The node's IP address.
        #[arg(long)]
        address: Option<String>,
    },
    /// Drain a node: its sites move away without downtime, and it takes no new ones.
    Drain {
        /// The node's id or name.
        node: String,
    },
    /// Lift a drain (or, with no swarm backend, activate a registered node).
    Activate {
        /// The node's id or name.
        node: String,
    },
    /// Remove an empty node that is not a live swarm node.
    Remove {
        /// The node's id or name.
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
    use std::os::unix::fs::DirBuilderExt;
    let path = config_path()?;
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            dir.to_path_buf()
        }
        None => PathBuf::from("."),
    };
    // Created 0600 with a random name (no leftover of an earlier run is reused), removed
    // if anything below fails.
    let mut file = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    file.write_all(toml::to_string(stored)?.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(&path)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", path.display()))?;
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

    /// A GET whose body is copied to standard output as it arrives (exports); a problem
    /// is the error, as for [`Client::call`].
    async fn download(&mut self, path: &str) -> anyhow::Result<()> {
        let mut response = self.send(reqwest::Method::GET, path, None).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED
            && self.api_token.is_none()
            && self.refresh().await?
        {
            response = self.send(reqwest::Method::GET, path, None).await?;
        }
        if !response.status().is_success() {
            read(response).await?;
            bail!("the server refused the download");
        }
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = response.chunk().await.context("reading the export")? {
            out.write_all(&chunk)
                .context("writing to standard output")?;
        }
        out.flush()?;
        Ok(())
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

/// A query-string value, percent-encoded (all but unreserved characters).
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
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
        outln!(
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
    outln!("{table}");
}

const SITE_COLUMNS: &[&str] = &["id", "name", "domain", "aliases", "plan", "state", "node"];
const OPERATION_COLUMNS: &[&str] = &["id", "kind", "state", "target_id", "error"];

/// Polls an operation until it finishes, telling standard error what changes (its state,
/// each step's state and attempts) so a long wait shows where it is.
async fn wait_operation(
    client: &mut Client,
    id: &str,
    deadline: Option<tokio::time::Instant>,
) -> anyhow::Result<Value> {
    let mut seen: Vec<String> = Vec::new();
    loop {
        let op = client
            .call(reqwest::Method::GET, &format!("/v1/operations/{id}"), None)
            .await?;
        for line in progress_lines(&op) {
            if !seen.contains(&line) {
                eprintln!("{line}");
                seen.push(line);
            }
        }
        if matches!(op["state"].as_str(), Some("succeeded" | "failed")) {
            return Ok(op);
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return Ok(op);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// What an operation says about its progress, one line per state worth showing.
fn progress_lines(op: &Value) -> Vec<String> {
    let kind = op["kind"].as_str().unwrap_or("operation");
    let mut lines = vec![format!("{kind}: {}", cell(&op["state"]))];
    for step in op["steps"].as_array().into_iter().flatten() {
        let state = step["state"].as_str().unwrap_or("?");
        if state == "pending" {
            continue;
        }
        let mut line = format!("  {}: {state}", cell(&step["name"]));
        if step["attempts"].as_i64().unwrap_or(0) > 1 {
            line.push_str(&format!(" (attempt {})", step["attempts"]));
        }
        // Staff are shown the whole chain; tenant users get only the public message.
        if let Some(error) = step["internal_error"].as_str().or(step["error"].as_str()) {
            line.push_str(&format!(": {error}"));
        }
        lines.push(line);
    }
    lines
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

/// `pressdock plans backup-policy`: shows or sets a plan's backup policy.
async fn backup_policy(
    c: &mut Client,
    json_out: bool,
    plan: String,
    (every_hours, daily_at): (Option<i32>, Option<String>),
    (keep_count, keep_days): (Option<i32>, Option<i32>),
    disable: bool,
) -> anyhow::Result<()> {
    let plans = c.call(reqwest::Method::GET, "/v1/plans", None).await?;
    let id = plans
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["slug"] == plan.as_str() || p["id"] == plan.as_str())
        .and_then(|p| p["id"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no plan {plan} (pressdock plans list)"))?;
    let path = format!("/v1/plans/{id}/backup-policy");
    let schedule = match (every_hours, daily_at) {
        (Some(h), _) => Some(format!("every {h}h")),
        (None, Some(at)) => Some(format!("daily {at}")),
        (None, None) => None,
    };
    let value = if let Some(schedule) = schedule {
        let body = json!({ "enabled": !disable, "schedule": schedule,
            "keep_count": keep_count, "keep_days": keep_days });
        c.call(reqwest::Method::PUT, &path, Some(body)).await?
    } else if disable || keep_count.is_some() || keep_days.is_some() {
        bail!("give --every-hours or --daily-at with the policy's other options");
    } else {
        c.call(reqwest::Method::GET, &path, None).await?
    };
    print(
        json_out,
        &value,
        &[
            "plan_id",
            "enabled",
            "schedule",
            "keep_count",
            "keep_days",
            "next_run_at",
        ],
    );
    Ok(())
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
            outln!(
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
            outln!("logged out");
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
                    outln!("deleted tenant {tenant}");
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
                    outln!("removed {user} from {tenant}");
                }
            }
        }
        Command::Plans { action, global } => {
            let mut c = Client::new(&global)?;
            let value = match action {
                PlanCmd::BackupPolicy {
                    plan,
                    every_hours,
                    daily_at,
                    keep_count,
                    keep_days,
                    disable,
                } => {
                    return backup_policy(
                        &mut c,
                        global.json,
                        plan,
                        (every_hours, daily_at),
                        (keep_count, keep_days),
                        disable,
                    )
                    .await;
                }
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
                        let qs = query_string(&query);
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
                    admin_user,
                    admin_email,
                    wait,
                } => {
                    let mut body =
                        json!({ "name": name, "domain": domain, "aliases": aliases, "plan": plan });
                    if let Some(user) = admin_user {
                        body["admin_user"] = json!(user);
                    }
                    if let Some(email) = admin_email {
                        body["admin_email"] = json!(email);
                    }
                    let v = c
                        .call(
                            Method::POST,
                            &format!("/v1/tenants/{tenant}/sites"),
                            Some(body),
                        )
                        .await?;
                    finish_accepted(&mut c, global.json, v, wait, "active").await?;
                }
                SiteCmd::Update {
                    site,
                    name,
                    domain,
                    plan,
                    wait,
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
                    finish_accepted(&mut c, global.json, v, wait, "active").await?;
                }
                SiteCmd::Delete { site, wait } => {
                    let v = c
                        .call(Method::DELETE, &format!("/v1/sites/{site}"), None)
                        .await?;
                    finish_accepted(&mut c, global.json, v, wait, "deleted").await?;
                }
                SiteCmd::Suspend { site, wait } => {
                    let v = c
                        .call(Method::POST, &format!("/v1/sites/{site}/suspend"), None)
                        .await?;
                    finish_accepted(&mut c, global.json, v, wait, "suspended").await?;
                }
                SiteCmd::Resume { site, wait } => {
                    let v = c
                        .call(Method::POST, &format!("/v1/sites/{site}/resume"), None)
                        .await?;
                    finish_accepted(&mut c, global.json, v, wait, "active").await?;
                }
                SiteCmd::Restore { site, backup, wait } => {
                    let v = c
                        .call(
                            Method::POST,
                            &format!("/v1/sites/{site}/restores"),
                            Some(json!({ "backup": backup })),
                        )
                        .await?;
                    let taken = cell(&v["aliases_taken"]);
                    if !taken.is_empty() {
                        eprintln!("aliases used by another site now, not given back: {taken}");
                    }
                    finish_restore(&mut c, global.json, v, wait).await?;
                }
                SiteCmd::Clone {
                    site,
                    domain,
                    backup,
                    name,
                    wait,
                } => {
                    let mut body = json!({ "domain": domain });
                    body["backup"] = json!(backup);
                    body["name"] = json!(name);
                    let v = c
                        .call(
                            Method::POST,
                            &format!("/v1/sites/{site}/clones"),
                            Some(body),
                        )
                        .await?;
                    if !global.json {
                        print(false, &v["site"], SITE_COLUMNS);
                    }
                    if wait.wait
                        && let Some(create) = v["create_operation"]["id"].as_str()
                    {
                        let create = wait_operation(&mut c, create, Some(deadline(wait))).await?;
                        if create["state"].as_str() != Some("succeeded") {
                            bail!(
                                "creating the new site failed: {}",
                                create["error"].as_str().unwrap_or("no reason given")
                            );
                        }
                    }
                    finish_restore(&mut c, global.json, v, wait).await?;
                }
            }
        }
        Command::Backups { action, global } => {
            let mut c = Client::new(&global)?;
            match action {
                BackupCmd::Create { site, wait } => {
                    let v = c
                        .call(Method::POST, &format!("/v1/sites/{site}/backups"), None)
                        .await?;
                    finish_backup(&mut c, global.json, v, wait).await?;
                }
                BackupCmd::List { site, tenant, kind } => {
                    let path = match (site, tenant) {
                        (_, Some(tenant)) => {
                            let mut query = vec![("limit", "200".to_owned())];
                            query.extend(kind.map(|k| ("kind", k)));
                            format!("/v1/tenants/{tenant}/backups?{}", query_string(&query))
                        }
                        (Some(site), None) => format!("/v1/sites/{site}/backups?limit=200"),
                        (None, None) => bail!("give a site, or --tenant"),
                    };
                    let page = c.call(Method::GET, &path, None).await?;
                    print(global.json, &page["items"], BACKUP_COLUMNS);
                }
                BackupCmd::Clone {
                    backup,
                    domain,
                    name,
                    wait,
                } => {
                    let v = c
                        .call(
                            Method::POST,
                            &format!("/v1/backups/{backup}/clones"),
                            Some(json!({ "domain": domain, "name": name })),
                        )
                        .await?;
                    if !global.json {
                        print(false, &v["site"], SITE_COLUMNS);
                    }
                    if wait.wait
                        && let Some(create) = v["create_operation"]["id"].as_str()
                    {
                        let create = wait_operation(&mut c, create, Some(deadline(wait))).await?;
                        if create["state"].as_str() != Some("succeeded") {
                            bail!(
                                "creating the new site failed: {}",
                                create["error"].as_str().unwrap_or("no reason given")
                            );
                        }
                    }
                    finish_restore(&mut c, global.json, v, wait).await?;
                }
                BackupCmd::Show { backup } => {
                    let v = c
                        .call(Method::GET, &format!("/v1/backups/{backup}"), None)
                        .await?;
                    print(global.json, &v, BACKUP_COLUMNS);
                }
                BackupCmd::Delete { backup, wait } => {
                    let v = c
                        .call(Method::DELETE, &format!("/v1/backups/{backup}"), None)
                        .await?;
                    finish_backup(&mut c, global.json, v, wait).await?;
                }
            }
        }
        Command::Operations { action, global } => {
            let mut c = Client::new(&global)?;
            match action {
                OperationCmd::Show { operation, wait } => {
                    let op = if wait {
                        wait_operation(&mut c, &operation, None).await?
                    } else {
                        c.call(Method::GET, &format!("/v1/operations/{operation}"), None)
                            .await?
                    };
                    print_operation(global.json, &op);
                }
                OperationCmd::List {
                    tenant,
                    state,
                    kind,
                    site,
                    limit,
                } => {
                    let mut query = vec![("limit", limit.to_string())];
                    query.extend(tenant.map(|t| ("tenant", t)));
                    query.extend(state.map(|s| ("state", s)));
                    query.extend(kind.map(|k| ("kind", k)));
                    query.extend(site.map(|s| ("target", s)));
                    let qs = query_string(&query);
                    let page = c
                        .call(Method::GET, &format!("/v1/operations?{qs}"), None)
                        .await?;
                    print(
                        global.json,
                        &page["items"],
                        &["id", "kind", "state", "target_id", "created_at", "error"],
                    );
                }
            }
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
                    outln!("revoked {token}");
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
                NodeCmd::Register {
                    name,
                    role,
                    slots,
                    address,
                } => {
                    let node = c.call(Method::POST, "/v1/nodes", Some(json!({ "name": name, "role": role, "slots": slots, "address": address }))).await?;
                    if node["availability"] == "pending" && !global.json {
                        eprintln!(
                            "{name} is pending: it takes sites once a swarm node named {name} joins"
                        );
                    }
                    node
                }
                NodeCmd::Drain { node } => {
                    let id = node_id(&mut c, &node).await?;
                    c.call(
                        Method::PATCH,
                        &format!("/v1/nodes/{id}"),
                        Some(json!({ "availability": "drain" })),
                    )
                    .await?
                }
                NodeCmd::Activate { node } => {
                    let id = node_id(&mut c, &node).await?;
                    c.call(
                        Method::PATCH,
                        &format!("/v1/nodes/{id}"),
                        Some(json!({ "availability": "active" })),
                    )
                    .await?
                }
                NodeCmd::Remove { node } => {
                    let id = node_id(&mut c, &node).await?;
                    c.call(Method::DELETE, &format!("/v1/nodes/{id}"), None)
                        .await?;
                    outln!("removed node {node}");
                    return Ok(());
                }
            };
            print(global.json, &value, cols);
        }
        Command::Billing { action, global } => {
            let mut c = Client::new(&global)?;
            match action {
                BillingCmd::Export {
                    period,
                    format,
                    tenant,
                } => {
                    let mut path = format!(
                        "/v1/billing/exports?period={}&format={}",
                        query_value(&period),
                        query_value(&format)
                    );
                    if let Some(tenant) = tenant {
                        path.push_str(&format!("&tenant={}", query_value(&tenant)));
                    }
                    c.download(&path).await?;
                }
                BillingCmd::Close { period } => {
                    let value = c
                        .call(
                            Method::POST,
                            "/v1/billing/close",
                            Some(json!({ "period": period })),
                        )
                        .await?;
                    print(global.json, &value, &["period", "closed_at", "lines"]);
                }
            }
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
                        outln!(
                            "\nbalance: max/mean utilisation {:.3} over {} active worker(s)",
                            map["balance"]["max_over_mean"].as_f64().unwrap_or(0.0),
                            map["balance"]["active_nodes"]
                        );
                        outln!("\nproposed moves:");
                        print(false, &map["proposed"], MOVE_COLUMNS);
                        outln!("\nrecent moves:");
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
                        outln!(
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

/// The one-time password of a new site's WordPress administrator: printed once, here,
/// with the warning that nothing shows it again (the API answers it only in the 202).
const PASSWORD_WARNING: &str = "warning: the WordPress administrator's password is shown \
     only now and will not be shown again: store it (or change it after logging in)";

fn print_admin(admin: &Value) {
    let Some(password) = admin["password"].as_str() else {
        return;
    };
    outln!(
        "\nWordPress administrator: {} <{}>\npassword: {password}\nlog in at: {}\n",
        cell(&admin["user"]),
        cell(&admin["email"]),
        cell(&admin["login_url"]),
    );
}

/// Prints a 202's site and operation; with `wait`, first waits for the operation and then
/// for the site to reach `target` (a new site: `active`, once its agent reports ready).
const BACKUP_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "state",
    "database_bytes",
    "files_bytes",
    "tables_count",
    "completed_at",
    "error",
];
const RESTORE_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "state",
    "site_id",
    "backup_id",
    "pre_restore_backup_id",
    "domain_to",
    "error",
];

fn deadline(wait: Wait) -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(wait.timeout)
}

/// Waits (with `--wait`) for the operation of an accepted backup change, then prints the
/// backup as it is; non-zero exit if the operation failed.
async fn finish_backup(
    c: &mut Client,
    json: bool,
    accepted: Value,
    wait: Wait,
) -> anyhow::Result<()> {
    finish_with(
        c,
        json,
        accepted,
        wait,
        "backup",
        "/v1/backups/",
        BACKUP_COLUMNS,
    )
    .await
}

/// The same for a restore or a clone.
async fn finish_restore(
    c: &mut Client,
    json: bool,
    accepted: Value,
    wait: Wait,
) -> anyhow::Result<()> {
    finish_with(
        c,
        json,
        accepted,
        wait,
        "restore",
        "/v1/restores/",
        RESTORE_COLUMNS,
    )
    .await
}

async fn finish_with(
    c: &mut Client,
    json: bool,
    accepted: Value,
    wait: Wait,
    what: &str,
    path: &str,
    columns: &[&str],
) -> anyhow::Result<()> {
    use reqwest::Method;
    let mut op = accepted["operation"].clone();
    let mut item = accepted[what].clone();
    if wait.wait {
        let id = op["id"]
            .as_str()
            .context("the response has no operation id")?
            .to_owned();
        op = wait_operation(c, &id, Some(deadline(wait))).await?;
        if let Some(item_id) = item["id"].as_str() {
            // A deleted backup is gone: keep what the answer said.
            if let Ok(now) = c.call(Method::GET, &format!("{path}{item_id}"), None).await {
                item = now;
            }
        }
    }
    if json {
        let mut out = accepted.clone();
        out[what] = item;
        out["operation"] = op.clone();
        print(true, &out, &[]);
    } else {
        print(false, &item, columns);
        print_operation(false, &op);
    }
    if wait.wait {
        match op["state"].as_str() {
            Some("succeeded") => {}
            Some("failed") => bail!(
                "the operation failed: {}",
                op["internal_error"]
                    .as_str()
                    .or(op["error"].as_str())
                    .unwrap_or("no reason given")
            ),
            _ => bail!(
                "the operation is still {} after {} s",
                cell(&op["state"]),
                wait.timeout
            ),
        }
    }
    Ok(())
}

async fn finish_accepted(
    c: &mut Client,
    json: bool,
    accepted: Value,
    wait: Wait,
    target: &str,
) -> anyhow::Result<()> {
    let admin = accepted.get("admin").cloned();
    if admin.as_ref().is_some_and(|a| a["password"].is_string()) {
        eprintln!("{PASSWORD_WARNING}");
        // In a table, at once: a wait that fails or is interrupted must not lose it.
        if !json {
            print_admin(&accepted["admin"]);
        }
    }
    let mut failure = None;
    let (site, op) = if wait.wait {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait.timeout);
        let id = accepted["operation"]["id"]
            .as_str()
            .context("the response has no operation id")?;
        let op = wait_operation(c, id, Some(deadline)).await?;
        let site_id = accepted["site"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let site = match op["state"].as_str() {
            Some("succeeded") => match wait_site(c, &site_id, target, deadline).await? {
                Ok(site) => site,
                Err((site, why)) => {
                    failure = Some(why);
                    site
                }
            },
            Some("failed") => {
                failure = Some(format!(
                    "the operation failed: {}",
                    op["internal_error"]
                        .as_str()
                        .or(op["error"].as_str())
                        .unwrap_or("no reason given")
                ));
                current_site(c, &site_id, &accepted["site"]).await
            }
            _ => {
                failure = Some(format!(
                    "the operation is still {} after {} s",
                    cell(&op["state"]),
                    wait.timeout
                ));
                current_site(c, &site_id, &accepted["site"]).await
            }
        };
        (site, op)
    } else {
        (accepted["site"].clone(), accepted["operation"].clone())
    };
    if json {
        let mut out = json!({ "site": site, "operation": op });
        if let Some(admin) = admin {
            out["admin"] = admin;
        }
        print(true, &out, &[]);
    } else {
        print(false, &site, SITE_COLUMNS);
        print_operation(false, &op);
    }
    if let Some(why) = failure {
        bail!(why);
    }
    Ok(())
}

/// The site as it is now; a deleted site is gone, so the accepted view of it then.
async fn current_site(c: &mut Client, id: &str, accepted: &Value) -> Value {
    if id.is_empty() {
        return accepted.clone();
    }
    c.call(reqwest::Method::GET, &format!("/v1/sites/{id}"), None)
        .await
        .unwrap_or_else(|_| accepted.clone())
}

/// Polls the site until it is in `target` (a deleted site may also be gone: 404), or
/// `failed`, or the deadline passes; tells standard error each state it passes through.
/// `Err` carries the site and why it did not get there.
async fn wait_site(
    c: &mut Client,
    id: &str,
    target: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<Result<Value, (Value, String)>> {
    let mut last = String::new();
    loop {
        let site = match c
            .call(reqwest::Method::GET, &format!("/v1/sites/{id}"), None)
            .await
        {
            Ok(site) => site,
            Err(err) if target == "deleted" && err.to_string().starts_with("404") => {
                return Ok(Ok(json!({ "id": id, "state": "deleted" })));
            }
            Err(err) => return Err(err),
        };
        let state = site["state"].as_str().unwrap_or("?").to_owned();
        if state != last {
            let why = match state.as_str() {
                "provisioning" => " (waiting for its agent to report ready)",
                "degraded" => " (its agent stopped reporting ready)",
                _ => "",
            };
            eprintln!("site {}: {state}{why}", cell(&site["domain"]));
            last.clone_from(&state);
        }
        if state == target {
            return Ok(Ok(site));
        }
        if state == "failed" {
            return Ok(Err((
                site,
                format!("the site failed (see `pressdock operations list --site {id}`)"),
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Err((
                site,
                format!("the site is still {state}, not {target}, at the end of --timeout"),
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// A node given by id or name: the API takes ids, people remember names.
async fn node_id(c: &mut Client, node: &str) -> anyhow::Result<String> {
    let nodes = c.call(reqwest::Method::GET, "/v1/nodes", None).await?;
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == node || n["name"] == node)
        .and_then(|n| n["id"].as_str().map(str::to_owned))
        .with_context(|| {
            format!("no node with the id or name {node:?} (see `pressdock nodes list`)")
        })
}

/// `k=v&…`, each part form-encoded (`application/x-www-form-urlencoded`, what the API's
/// query extractors decode).
fn query_string(pairs: &[(&str, String)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
        .finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_strings_are_form_encoded() {
        let pairs = [
            ("limit", "200".to_owned()),
            ("domain", "a b&c=d.test".to_owned()),
            ("cursor", "é/+%".to_owned()),
        ];
        assert_eq!(
            super::query_string(&pairs),
            "limit=200&domain=a+b%26c%3Dd.test&cursor=%C3%A9%2F%2B%25"
        );
    }
}

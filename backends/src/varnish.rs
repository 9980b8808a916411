//! The edge cache: the host table of active sites, loaded on every Varnish instance
//! through the Varnish CLI protocol, and bans by host.
//!
//! Two ways to get the table in ([`VclMode`]):
//! - include (the lab, and any setup where the instances mount one VCL folder): the
//!   table is rendered as `hosts.vcl` ([`render_hosts_include`], pure: `sub
//!   pressdock_hosts` setting `X-Pressdock-Site`, or our 503 for suspended hosts), written
//!   into the folder, and every instance `vcl.load`s the repository's `main.vcl`, which
//!   includes it (configs/varnish/);
//! - inline: a complete VCL ([`render_inline_vcl`], pure) sent with `vcl.inline`.
//!
//! A VCL's name is derived from its content (`<prefix><sha256[..16]>`; in include mode
//! over every `*.vcl` of the folder), which makes loading idempotent (same table, same
//! name: nothing to do) and verification a name comparison (`vcl.list` shows the
//! expected name as `active`).
//!
//! Protocol (varnish-cli(7), "VCLI protocol – Scripting the CLI interface" in the
//! Varnish reference): every response starts with a 13-byte line `SSS LLLLLLLL\n`
//! (status, body length), then the body and a newline. With `-S`, the first response
//! is `107` whose body starts with a 32-character challenge; the client answers
//! `auth <hex sha256(challenge + "\n" + secret-file-bytes + challenge + "\n")>`.
//! Arguments are double-quoted with `\\`, `\"`, `\n` escapes; the VCL goes in a here
//! document (`<< WORD`), which has no length limit.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{VarnishConfig, VarnishInstance};
use crate::error::{Error, Result};
use crate::ids::{DomainName, SiteResourceId};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// `vcl.inline` compiles C: slower on a loaded machine.
const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// CLI status codes (vcli.h).
pub mod status {
    pub const SYNTAX: u16 = 100;
    pub const UNKNOWN: u16 = 101;
    pub const UNIMPL: u16 = 102;
    pub const TOOFEW: u16 = 104;
    pub const TOOMANY: u16 = 105;
    pub const PARAM: u16 = 106;
    pub const AUTH: u16 = 107;
    pub const OK: u16 = 200;
    pub const TRUNCATED: u16 = 201;
    pub const CANT: u16 = 300;
    pub const COMMS: u16 = 400;
    pub const CLOSE: u16 = 500;
}

/// What a host is for the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// Served: `X-Pressdock-Site` is set to the site's id, the request goes on.
    Active,
    /// Our maintenance page (`503 Site suspended`).
    Suspended,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub site: SiteResourceId,
    pub state: HostState,
}

/// Every host Varnish should know, with its site. Unknown hosts are left to the rest
/// of the VCL (the repository's `pressdock.vcl` passes them uncached).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostTable {
    pub hosts: BTreeMap<DomainName, HostEntry>,
}

impl HostTable {
    pub fn insert(&mut self, host: DomainName, site: SiteResourceId, state: HostState) {
        self.hosts.insert(host, HostEntry { site, state });
    }

    pub fn remove(&mut self, host: &DomainName) {
        self.hosts.remove(host);
    }

    /// Removes every host of a site.
    pub fn remove_site(&mut self, site: &SiteResourceId) {
        self.hosts.retain(|_, e| &e.site != site);
    }
}

/// Where Varnish sends misses in [`VclMode::Inline`] (Traefik's `internal` entrypoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VclBackend {
    pub host: String,
    pub port: u16,
}

/// How the host table reaches the instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VclMode {
    /// The repository's VCL (`configs/varnish/main.vcl`, which includes `hosts.vcl`) in a
    /// folder every instance mounts: the driver rewrites `hosts_file` and has each
    /// instance `vcl.load` `main_vcl_in_instance` (compiling the new include).
    Include {
        vcl_dir: PathBuf,
        hosts_file: PathBuf,
        main_vcl_in_instance: String,
    },
    /// No shared folder: a complete, self-contained VCL sent with `vcl.inline`.
    Inline { backend: VclBackend },
}

/// A VCL to load: its content-derived name, and either its source or its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedVcl {
    pub name: String,
    pub load: VclLoad,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VclLoad {
    Inline(String),
    /// `vcl.load <name> <path>` (path as the instance sees it).
    File(String),
}

/// The body of `sub pressdock_hosts` as an if/elsif chain (sorted, deterministic).
fn host_dispatch(table: &HostTable, indent: &str) -> String {
    let mut out = String::new();
    for (i, (host, entry)) in table.hosts.iter().enumerate() {
        // DomainName is [a-z0-9.-] and SiteResourceId [a-z2-7]: nothing to escape.
        let kw = if i == 0 { "if" } else { "} elsif" };
        let action = match entry.state {
            HostState::Active => format!("set req.http.X-Pressdock-Site = \"{}\";", entry.site),
            HostState::Suspended => "return (synth(503, \"Site suspended\"));".to_owned(),
        };
        out.push_str(&format!(
            "{indent}{kw} (req.http.host == \"{host}\") {{\n{indent}    {action}\n"
        ));
    }
    if !table.hosts.is_empty() {
        out.push_str(&format!("{indent}}}\n"));
    }
    out
}

/// The `hosts.vcl` include: `sub pressdock_hosts`, called by `pressdock.vcl` after the
/// host is lower-cased and stripped of its port. Pure and deterministic.
pub fn render_hosts_include(table: &HostTable) -> String {
    let active = table
        .hosts
        .values()
        .filter(|e| e.state == HostState::Active)
        .count();
    format!(
        "# Host table: generated by pressdock (backends::varnish), rewritten on every change.\n\
         # {active} active and {suspended} suspended host(s).\n\
         sub pressdock_hosts {{\n{body}}}\n",
        suspended = table.hosts.len() - active,
        body = host_dispatch(table, "    "),
    )
}

/// A complete VCL for [`VclMode::Inline`]: the host table, our 404 for unknown hosts,
/// our maintenance page. Pure and deterministic.
pub fn render_inline_vcl(
    table: &HostTable,
    backend: &VclBackend,
    name_prefix: &str,
) -> Result<RenderedVcl> {
    validate_backend_host(&backend.host)?;
    validate_vcl_prefix(name_prefix)?;
    let source = format!(
        r#"vcl 4.1;

import std;

# Generated by pressdock (backends::varnish). Do not edit: the next host-table change
# replaces it.

backend internal {{
    .host = "{host}";
    .port = "{port}";
}}

{include}
sub vcl_recv {{
    set req.http.host = std.tolower(regsub(req.http.host, ":[0-9]+$", ""));
    unset req.http.X-Pressdock-Site;
    call pressdock_hosts;
    if (!req.http.X-Pressdock-Site) {{
        return (synth(404, "No site is configured for this address"));
    }}
    # Known host: on to the built-in vcl_recv (pass with cookies or auth).
}}

sub vcl_synth {{
    # The same pages and headers as configs/varnish/pressdock.vcl (include mode).
    set resp.http.Content-Type = "text/html; charset=utf-8";
    set resp.http.Cache-Control = "no-store";
    if (resp.status == 404) {{
        set resp.http.X-Pressdock-Edge = "not-found";
    }} elsif (resp.status == 503) {{
        set resp.http.X-Pressdock-Edge = "suspended";
        set resp.http.Retry-After = "300";
    }}
    synthetic({{"<!doctype html><html><head><title>"}} + resp.reason + {{"</title></head><body><h1>"}} + resp.reason + {{"</h1><p>Pressdock</p></body></html>"}});
    return (deliver);
}}
"#,
        host = backend.host,
        port = backend.port,
        include = render_hosts_include(table),
    );
    let digest = hex::encode(Sha256::digest(source.as_bytes()));
    Ok(RenderedVcl {
        name: format!("{name_prefix}{}", &digest[..16]),
        load: VclLoad::Inline(source),
    })
}

fn validate_backend_host(host: &str) -> Result<()> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "varnish backend host",
            "a host name or IP address",
        ))
    }
}

fn validate_vcl_prefix(prefix: &str) -> Result<()> {
    let mut bytes = prefix.bytes();
    let ok = bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("vcl prefix", "[A-Za-z][A-Za-z0-9_]*"))
    }
}

/// Quotes one CLI argument (varnish-cli(7) "Syntax") when it needs it: empty, or with
/// whitespace, quotes, backslashes or control characters. Plain tokens go as they are
/// (the `ban` parser, for one, refuses a quoted operator).
pub fn quote_cli_arg(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '\\');
    if plain {
        return arg.to_owned();
    }
    let mut out = String::with_capacity(arg.len() + 2);
    out.push('"');
    for c in arg.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `auth` response to a challenge.
pub fn auth_response(challenge: &str, secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(challenge.as_bytes());
    h.update(b"\n");
    h.update(secret);
    h.update(challenge.as_bytes());
    h.update(b"\n");
    hex::encode(h.finalize())
}

/// One CLI response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliResponse {
    pub status: u16,
    pub body: String,
}

/// An authenticated CLI connection to one varnishd (`-T`).
pub struct VarnishCli {
    stream: TcpStream,
    address: String,
}

impl std::fmt::Debug for VarnishCli {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VarnishCli")
            .field("address", &self.address)
            .finish()
    }
}

impl VarnishCli {
    fn err(&self, context: impl Into<String>) -> Error {
        Error::Varnish {
            instance: self.address.clone(),
            context: context.into(),
        }
    }

    /// Connects and answers the `107` challenge with the secret file's bytes.
    pub async fn connect(address: &str, secret: &[u8]) -> Result<Self> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| Error::Varnish {
                instance: address.to_owned(),
                context: "connect timed out".into(),
            })?
            .map_err(Error::io(format!("varnish {address}: connect")))?;
        let mut cli = Self {
            stream,
            address: address.to_owned(),
        };
        let banner = cli.read_response(IO_TIMEOUT).await?;
        match banner.status {
            status::OK => Ok(cli),
            status::AUTH => {
                let challenge = banner
                    .body
                    .get(..32)
                    .ok_or_else(|| cli.err("short auth challenge"))?
                    .to_owned();
                let line = format!("auth {}\n", auth_response(&challenge, secret));
                cli.write(line.as_bytes()).await?;
                let r = cli.read_response(IO_TIMEOUT).await?;
                if r.status == status::OK {
                    Ok(cli)
                } else {
                    Err(cli.err(format!("authentication refused (status {})", r.status)))
                }
            }
            other => Err(cli.err(format!("unexpected banner status {other}"))),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let address = self.address.clone();
        tokio::time::timeout(IO_TIMEOUT, self.stream.write_all(bytes))
            .await
            .map_err(|_| self.err("write timed out"))?
            .map_err(Error::io(format!("varnish {address}: write")))
    }

    async fn read_response(&mut self, timeout: Duration) -> Result<CliResponse> {
        let address = self.address.clone();
        let read = async {
            let mut head = [0u8; 13];
            self.stream.read_exact(&mut head).await?;
            let mut rest = Vec::new();
            let len = parse_head(&head).map(|(s, l)| {
                rest.resize(l + 1, 0);
                (s, l)
            });
            if let Some((_, _)) = len {
                self.stream.read_exact(&mut rest).await?;
            }
            Ok::<_, std::io::Error>((head, len, rest))
        };
        let (head, len, mut rest) = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| self.err("response timed out"))?
            .map_err(Error::io(format!("varnish {address}: read")))?;
        let (status, _) = len.ok_or_else(|| {
            self.err(format!(
                "bad response line {:?}",
                String::from_utf8_lossy(&head)
            ))
        })?;
        rest.pop(); // the newline after the body
        Ok(CliResponse {
            status,
            body: String::from_utf8_lossy(&rest).into_owned(),
        })
    }

    /// Sends one command (the name as is, every argument quoted) and reads the answer.
    pub async fn command(&mut self, name: &str, args: &[&str]) -> Result<CliResponse> {
        if args.iter().any(|a| a.contains("<<")) {
            // `<<` opens a here document even inside quotes (varnish-cli(7)).
            return Err(self.err(format!("{name}: argument contains '<<'")));
        }
        let mut line = name.to_owned();
        for a in args {
            line.push(' ');
            line.push_str(&quote_cli_arg(a));
        }
        line.push('\n');
        self.write(line.as_bytes()).await?;
        // `vcl.load` compiles the VCL, which takes seconds.
        let timeout = if name == "vcl.load" {
            COMPILE_TIMEOUT
        } else {
            IO_TIMEOUT
        };
        self.read_response(timeout).await
    }

    /// Like [`command`](Self::command) but any status other than 200 is an error.
    pub async fn command_ok(&mut self, name: &str, args: &[&str]) -> Result<String> {
        let r = self.command(name, args).await?;
        if r.status == status::OK {
            Ok(r.body)
        } else {
            Err(self.err(format!(
                "{name} failed (status {}): {}",
                r.status,
                r.body.trim()
            )))
        }
    }

    /// `vcl.inline <name> << WORD` with the source as a here document.
    pub async fn vcl_inline(&mut self, name: &str, source: &str) -> Result<()> {
        // A terminator that cannot be a line of the source.
        let mut word = format!(
            "PRESSDOCK_EOF_{}",
            &hex::encode(Sha256::digest(source))[..12]
        );
        while source.lines().any(|l| l == word) {
            word.push('X');
        }
        let mut body = format!("vcl.inline {} << {word}\n{source}", quote_cli_arg(name));
        if !source.ends_with('\n') {
            body.push('\n');
        }
        body.push_str(&word);
        body.push('\n');
        self.write(body.as_bytes()).await?;
        let r = self.read_response(COMPILE_TIMEOUT).await?;
        if r.status == status::OK {
            Ok(())
        } else {
            Err(self.err(format!(
                "vcl.inline {name} failed (status {}): {}",
                r.status,
                r.body.trim()
            )))
        }
    }

    /// `vcl.list`, parsed.
    pub async fn vcl_list(&mut self) -> Result<Vec<VclEntry>> {
        let body = self.command_ok("vcl.list", &[]).await?;
        Ok(parse_vcl_list(&body))
    }
}

fn parse_head(head: &[u8; 13]) -> Option<(u16, usize)> {
    if head[3] != b' ' || head[12] != b'\n' {
        return None;
    }
    let s = std::str::from_utf8(head).ok()?;
    let status = s[..3].parse().ok()?;
    let len = s[4..12].trim().parse().ok()?;
    Some((status, len))
}

/// One line of `vcl.list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VclEntry {
    /// `active`, `available` or `discarded`.
    pub status: String,
    pub name: String,
}

/// Parses `vcl.list` text: `status state temperature busy name [label info]`.
pub fn parse_vcl_list(body: &str) -> Vec<VclEntry> {
    body.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            match cols.as_slice() {
                [status, _, _, _, name, ..] => Some(VclEntry {
                    status: (*status).to_owned(),
                    name: (*name).to_owned(),
                }),
                _ => None,
            }
        })
        .collect()
}

/// The host table on one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceVclState {
    pub instance: String,
    pub active: Option<String>,
    pub expected: String,
    pub converged: bool,
}

/// The edge cache, as the sagas and reconcilers use it.
pub trait EdgeCache {
    /// Loads (if new), activates and verifies the VCL of this host table on every
    /// instance, then discards our older VCLs there.
    fn apply_host_table(
        &self,
        table: &HostTable,
    ) -> impl Future<Output = Result<Vec<InstanceVclState>>> + Send;

    /// Whether every instance runs the VCL of this host table.
    fn observe_host_table(
        &self,
        table: &HostTable,
    ) -> impl Future<Output = Result<Vec<InstanceVclState>>> + Send;

    /// `ban req.http.host == <host>` on every instance.
    fn ban_host(&self, host: &DomainName) -> impl Future<Output = Result<()>> + Send;

    /// Bans the objects of these URL paths of a host on every instance (a path without
    /// a query also covers its query variants). Paths must pass [`check_purge_path`].
    fn ban_paths(
        &self,
        host: &DomainName,
        paths: &[String],
    ) -> impl Future<Output = Result<()>> + Send;
}

/// [`EdgeCache`] on every configured Varnish instance.
#[derive(Debug, Clone)]
pub struct VarnishDriver {
    instances: Vec<VarnishInstance>,
    mode: VclMode,
    prefix: String,
}

impl VarnishDriver {
    /// Include mode when `vcl_dir`, `hosts_file` and `vcl_dir_in_instance` are set,
    /// else inline mode with `backend_host`/`backend_port`.
    pub fn new(config: &VarnishConfig) -> Result<Self> {
        validate_vcl_prefix(&config.vcl_prefix)?;
        let mode = match (
            &config.vcl_dir,
            &config.hosts_file,
            &config.vcl_dir_in_instance,
            &config.backend_host,
            config.backend_port,
        ) {
            (Some(dir), Some(hosts), Some(in_instance), _, _) => {
                if !hosts.starts_with(dir) {
                    return Err(Error::invalid(
                        "varnish.hosts_file",
                        "must be inside varnish.vcl_dir",
                    ));
                }
                VclMode::Include {
                    vcl_dir: dir.clone(),
                    hosts_file: hosts.clone(),
                    main_vcl_in_instance: format!(
                        "{}/{}",
                        in_instance.trim_end_matches('/'),
                        config.main_vcl
                    ),
                }
            }
            (_, _, _, Some(host), Some(port)) => {
                validate_backend_host(host)?;
                VclMode::Inline {
                    backend: VclBackend {
                        host: host.clone(),
                        port,
                    },
                }
            }
            _ => {
                return Err(Error::invalid(
                    "backends.varnish",
                    "set vcl_dir + hosts_file + vcl_dir_in_instance, or backend_host + backend_port",
                ));
            }
        };
        Ok(Self {
            instances: config.instances.clone(),
            mode,
            prefix: config.vcl_prefix.clone(),
        })
    }

    pub fn mode(&self) -> &VclMode {
        &self.mode
    }

    /// The VCL this table should run as (reads the VCL folder in include mode; writes
    /// nothing).
    pub async fn render(&self, table: &HostTable) -> Result<RenderedVcl> {
        match &self.mode {
            VclMode::Inline { backend } => render_inline_vcl(table, backend, &self.prefix),
            VclMode::Include {
                vcl_dir,
                hosts_file,
                main_vcl_in_instance,
            } => {
                let hosts = render_hosts_include(table);
                let digest = hash_vcl_dir(vcl_dir, hosts_file, &hosts).await?;
                Ok(RenderedVcl {
                    name: format!("{}{}", self.prefix, &digest[..16]),
                    load: VclLoad::File(main_vcl_in_instance.clone()),
                })
            }
        }
    }

    /// Include mode: writes the hosts file (temporary name, then rename) if it differs.
    async fn write_hosts_file(&self, table: &HostTable) -> Result<()> {
        let VclMode::Include { hosts_file, .. } = &self.mode else {
            return Ok(());
        };
        let content = render_hosts_include(table);
        if tokio::fs::read_to_string(hosts_file).await.ok().as_deref() == Some(content.as_str()) {
            return Ok(());
        }
        let path = hosts_file.clone();
        tokio::task::spawn_blocking(move || write_atomic(&path, content.as_bytes()))
            .await
            .map_err(|e| {
                Error::io(format!("write {}", hosts_file.display()))(std::io::Error::other(e))
            })?
            .map_err(Error::io(format!("write {}", hosts_file.display())))
    }

    async fn open(instance: &VarnishInstance) -> Result<VarnishCli> {
        let secret = tokio::fs::read(&instance.secret_file)
            .await
            .map_err(Error::io(format!(
                "read varnish secret file {}",
                instance.secret_file.display()
            )))?;
        VarnishCli::connect(&instance.address, &secret).await
    }

    async fn apply_one(
        &self,
        instance: &VarnishInstance,
        vcl: &RenderedVcl,
    ) -> Result<InstanceVclState> {
        let mut cli = Self::open(instance).await?;
        let list = cli.vcl_list().await?;
        let loaded = list
            .iter()
            .any(|e| e.name == vcl.name && e.status != "discarded");
        let active = list
            .iter()
            .find(|e| e.status == "active")
            .map(|e| e.name.clone());
        // Already active, with no earlier VCL of ours left to discard: the first listing
        // says all there is (one round trip, where it was three; most sites of a burst of
        // creates find their hosts loaded by another's step).
        let stale = |e: &&VclEntry| {
            e.name != vcl.name && e.name.starts_with(&self.prefix) && e.status == "available"
        };
        if active.as_deref() == Some(vcl.name.as_str()) && !list.iter().any(|e| stale(&e)) {
            return Ok(InstanceVclState {
                instance: instance.address.clone(),
                active,
                expected: vcl.name.clone(),
                converged: true,
            });
        }
        if active.as_deref() != Some(vcl.name.as_str()) {
            tracing::info!(instance = %instance.address, vcl = %vcl.name, loaded, "activating host table VCL");
            if !loaded {
                match &vcl.load {
                    VclLoad::Inline(source) => cli.vcl_inline(&vcl.name, source).await?,
                    VclLoad::File(path) => {
                        cli.command_ok("vcl.load", &[&vcl.name, path]).await?;
                    }
                }
            }
            cli.command_ok("vcl.use", &[&vcl.name]).await?;
        }
        // After vcl.use the previous VCL is `available`: discard ours that are.
        let list = cli.vcl_list().await?;
        for old in list.iter().filter(|e| {
            e.name != vcl.name && e.name.starts_with(&self.prefix) && e.status == "available"
        }) {
            // Best effort: a VCL still referenced by a label stays; next run retries.
            if let Err(e) = cli.command_ok("vcl.discard", &[&old.name]).await {
                tracing::warn!(instance = %instance.address, vcl = %old.name, error = %e, "vcl.discard");
            }
        }
        let after = cli.vcl_list().await?;
        let active = after
            .iter()
            .find(|e| e.status == "active")
            .map(|e| e.name.clone());
        let converged = active.as_deref() == Some(vcl.name.as_str());
        if !converged {
            return Err(cli.err(format!("{} is not active after vcl.use", vcl.name)));
        }
        Ok(InstanceVclState {
            instance: instance.address.clone(),
            active,
            expected: vcl.name.clone(),
            converged,
        })
    }
}

/// SHA-256 over every `*.vcl` of the folder (sorted by name), with the hosts file's
/// content replaced by `hosts`: a change to any include gives a new VCL name.
/// Writes a file through a temporary one in the same directory and a rename: varnishd
/// never reads half a file. Readable by others (varnishd runs as its own user).
fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".hosts.vcl.tmp")
        .tempfile_in(dir)?;
    file.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    file.write_all(content)?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

async fn hash_vcl_dir(dir: &Path, hosts_file: &Path, hosts: &str) -> Result<String> {
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(Error::io(format!("read {}", dir.display())))?;
    let mut files = Vec::new();
    while let Some(e) = entries
        .next_entry()
        .await
        .map_err(Error::io(format!("read {}", dir.display())))?
    {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "vcl") && path != hosts_file {
            files.push(path);
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let content = tokio::fs::read(&f)
            .await
            .map_err(Error::io(format!("read {}", f.display())))?;
        h.update(
            f.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
        h.update(b"\0");
        h.update(&content);
        h.update(b"\0");
    }
    h.update(b"hosts\0");
    h.update(hosts.as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// A URL path we accept to purge: starts with `/`, at most 2,048 bytes of visible ASCII.
pub fn check_purge_path(path: &str) -> Result<()> {
    if path.starts_with('/') && path.len() <= 2048 && path.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(Error::invalid(
            "purge path",
            "starts with '/', at most 2048 characters of visible ASCII",
        ))
    }
}

/// The `req.url` regular expression that bans one path: every character but letters,
/// digits, `/` and `_` is escaped, so the path matches only itself. Pure.
pub fn path_ban_regex(path: &str) -> String {
    let mut re = String::with_capacity(path.len() * 2 + 12);
    re.push('^');
    for c in path.chars() {
        if !(c.is_ascii_alphanumeric() || c == '/' || c == '_') {
            re.push('\\');
        }
        re.push(c);
    }
    if !path.contains('?') {
        re.push_str("(\\?.*)?");
    }
    re.push('$');
    re
}

impl EdgeCache for VarnishDriver {
    async fn apply_host_table(&self, table: &HostTable) -> Result<Vec<InstanceVclState>> {
        self.write_hosts_file(table).await?;
        let vcl = self.render(table).await?;
        let mut states = Vec::new();
        for instance in &self.instances {
            states.push(self.apply_one(instance, &vcl).await?);
        }
        Ok(states)
    }

    async fn observe_host_table(&self, table: &HostTable) -> Result<Vec<InstanceVclState>> {
        let vcl = self.render(table).await?;
        let mut states = Vec::new();
        for instance in &self.instances {
            let mut cli = Self::open(instance).await?;
            let list = cli.vcl_list().await?;
            let active = list
                .iter()
                .find(|e| e.status == "active")
                .map(|e| e.name.clone());
            states.push(InstanceVclState {
                instance: instance.address.clone(),
                converged: active.as_deref() == Some(vcl.name.as_str()),
                active,
                expected: vcl.name.clone(),
            });
        }
        Ok(states)
    }

    async fn ban_host(&self, host: &DomainName) -> Result<()> {
        for instance in &self.instances {
            let mut cli = Self::open(instance).await?;
            cli.command_ok("ban", &["req.http.host", "==", host.as_str()])
                .await?;
        }
        Ok(())
    }

    async fn ban_paths(&self, host: &DomainName, paths: &[String]) -> Result<()> {
        for path in paths {
            check_purge_path(path)?;
        }
        for instance in &self.instances {
            let mut cli = Self::open(instance).await?;
            for path in paths {
                let re = path_ban_regex(path);
                cli.command_ok(
                    "ban",
                    &[
                        "req.http.host",
                        "==",
                        host.as_str(),
                        "&&",
                        "req.url",
                        "~",
                        &re,
                    ],
                )
                .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DomainName {
        DomainName::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn path_bans_match_only_their_path() {
        assert_eq!(path_ban_regex("/a-b/"), "^/a\\-b/(\\?.*)?$");
        assert_eq!(path_ban_regex("/?p=5"), "^/\\?p\\=5$");
        assert_eq!(path_ban_regex("/x.y"), "^/x\\.y(\\?.*)?$");
        assert!(check_purge_path("/ok/path?x=1").is_ok());
        for bad in ["", "relative", "/with space", "/tab\t", "/é"] {
            assert!(check_purge_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_purge_path(&format!("/{}", "a".repeat(2048))).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_cli_arg("a b"), "\"a b\"");
        assert_eq!(quote_cli_arg("=="), "==");
        assert_eq!(quote_cli_arg(""), "\"\"");
        assert_eq!(quote_cli_arg("x\"y\\z\n"), "\"x\\\"y\\\\z\\n\"");
    }

    #[test]
    fn head_parsing() {
        assert_eq!(parse_head(b"200 19      \n"), Some((200, 19)));
        assert_eq!(parse_head(b"107 59      \n"), Some((107, 59)));
        assert_eq!(parse_head(b"200 19       "), None);
    }

    #[test]
    fn auth_response_known_vector() {
        // sha256("abc\n" + "s\n" + "abc\n"), checked with sha256sum.
        assert_eq!(
            auth_response("abc", b"s\n"),
            hex::encode(Sha256::digest(b"abc\ns\nabc\n"))
        );
    }

    fn site(s: &str) -> SiteResourceId {
        SiteResourceId::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn table() -> HostTable {
        let mut t = HostTable::default();
        t.insert(d("b.test"), site("bbbbbbbbbb"), HostState::Active);
        t.insert(d("a.test"), site("aaaaaaaaaa"), HostState::Active);
        t.insert(d("s.test"), site("ssssssssss"), HostState::Suspended);
        t
    }

    #[test]
    fn hosts_include_exact() {
        assert_eq!(
            render_hosts_include(&table()),
            "# Host table: generated by pressdock (backends::varnish), rewritten on every change.\n\
             # 2 active and 1 suspended host(s).\n\
             sub pressdock_hosts {\n\
             \x20   if (req.http.host == \"a.test\") {\n\
             \x20       set req.http.X-Pressdock-Site = \"aaaaaaaaaa\";\n\
             \x20   } elsif (req.http.host == \"b.test\") {\n\
             \x20       set req.http.X-Pressdock-Site = \"bbbbbbbbbb\";\n\
             \x20   } elsif (req.http.host == \"s.test\") {\n\
             \x20       return (synth(503, \"Site suspended\"));\n\
             \x20   }\n\
             }\n"
        );
        assert_eq!(
            render_hosts_include(&HostTable::default()),
            "# Host table: generated by pressdock (backends::varnish), rewritten on every change.\n\
             # 0 active and 0 suspended host(s).\nsub pressdock_hosts {\n}\n"
        );
    }

    #[test]
    fn inline_vcl_is_deterministic_and_named_by_content() {
        let backend = VclBackend {
            host: "127.0.0.1".into(),
            port: 8081,
        };
        let mut t = table();
        let v1 = render_inline_vcl(&t, &backend, "pd_").unwrap_or_else(|e| panic!("{e}"));
        let v2 = render_inline_vcl(&t.clone(), &backend, "pd_").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v1, v2);
        assert!(v1.name.starts_with("pd_") && v1.name.len() == 19);
        let VclLoad::Inline(src) = &v1.load else {
            panic!("inline expected")
        };
        assert!(src.contains(&render_hosts_include(&t)));
        assert!(src.contains(".host = \"127.0.0.1\";\n    .port = \"8081\";"));
        t.remove_site(&site("bbbbbbbbbb"));
        let v3 = render_inline_vcl(&t, &backend, "pd_").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(v1.name, v3.name);
        let bad = VclBackend {
            host: "x\"; }".into(),
            port: 1,
        };
        assert!(render_inline_vcl(&t, &bad, "pd_").is_err());
        assert!(render_inline_vcl(&t, &backend, "1x").is_err());
    }

    #[test]
    fn vcl_list_parsing() {
        let body = "active      auto    warm         0    pd_0123\n\
                    available   auto    cold         0    boot\n\
                    available  label    warm         0    lbl -> pd_0123\n";
        let got = parse_vcl_list(body);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].status, "active");
        assert_eq!(got[0].name, "pd_0123");
        assert_eq!(got[2].name, "lbl");
    }
}

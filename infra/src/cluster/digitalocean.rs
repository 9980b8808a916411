//! The DigitalOcean provider, over its HTTP API v2 (reqwest, rustls).
//!
//! - The token comes from `DIGITALOCEAN_TOKEN` and lives in a [`Token`] that never prints;
//!   it is sent only to the API's own origin (a pagination link to another host is refused).
//! - Lists follow `links.pages.next` to the end.
//! - 429: waits until `ratelimit-reset` (or `retry-after`), at most [`Client::max_wait`],
//!   then retries, any method (a rejected request did nothing). 5xx and broken connections
//!   are retried with exponential backoff for GET, PUT and DELETE only: a POST that failed
//!   may have created something, and the next `apply` finds it by its tag and name instead
//!   of creating it twice. A connection that could not be made is retried for any method.
//! - Actions (droplet create, volume attach) are polled until `completed`; `errored` fails.
//! - Errors carry DigitalOcean's `id`, `message` and `request_id`, the method and the path.
use super::desired::{Droplet, Firewall, FwRule, LoadBalancer, Sources, Volume, Vpc};
use super::provider::{
    Observed, ObservedDroplet, ObservedFirewall, ObservedLoadBalancer, ObservedVolume, ObservedVpc,
    Provider,
};
use super::spec::Protocol;
use anyhow::{Context, Result, bail};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub const API: &str = "https://api.digitalocean.com";
pub const TOKEN_ENV: &str = "DIGITALOCEAN_TOKEN";

/// The API token. No `Debug` or `Display` of its value: it must not reach logs or errors.
pub struct Token(String);

impl Token {
    pub fn new(s: String) -> Token {
        Token(s)
    }
    pub fn from_env() -> Result<Token> {
        match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Ok(Token(t.trim().to_owned())),
            _ => bail!("{TOKEN_ENV} is not set (a DigitalOcean API token with write scope)"),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// DigitalOcean's error id (`not_found`, `unprocessable_entity`, `too_many_requests`).
    pub id: String,
    pub message: String,
    pub request_id: Option<String>,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DigitalOcean answered {} {} with {} {}: {}",
            self.method, self.path, self.status, self.id, self.message
        )?;
        if let Some(r) = &self.request_id {
            write!(f, " (request {r})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

pub struct Client {
    http: reqwest::Client,
    /// `https://api.digitalocean.com` (a test server's address in tests), no trailing `/`.
    base: String,
    token: Token,
    /// Items per page of every list (DigitalOcean: 1 to 200).
    pub per_page: u32,
    /// Between two looks at an action or a load balancer.
    pub poll_interval: Duration,
    /// Give up waiting for an action after this long.
    pub action_timeout: Duration,
    /// First backoff after a 5xx or connection error; doubles each time.
    pub backoff: Duration,
    /// Retries of one request (429s and retryable failures together).
    pub max_retries: u32,
    /// Longest wait for a rate limit's reset.
    pub max_wait: Duration,
    calls: AtomicU64,
    rate_limited: AtomicU64,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::PUT | Method::DELETE | Method::HEAD
    )
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn str_of(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or("").to_owned()
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn protocol(s: &str) -> Result<Protocol> {
    Ok(match s {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        "icmp" => Protocol::Icmp,
        p => bail!("unknown firewall protocol {p:?}"),
    })
}

fn rules_json(rules: &[FwRule], key: &str) -> Value {
    Value::Array(
        rules
            .iter()
            .map(|r| {
                let mut s = serde_json::Map::new();
                if !r.sources.addresses.is_empty() {
                    s.insert("addresses".into(), json!(r.sources.addresses));
                }
                if !r.sources.tags.is_empty() {
                    s.insert("tags".into(), json!(r.sources.tags));
                }
                if !r.sources.load_balancers.is_empty() {
                    s.insert("load_balancer_uids".into(), json!(r.sources.load_balancers));
                }
                json!({ "protocol": r.protocol.as_str(), "ports": r.ports, key: s })
            })
            .collect(),
    )
}

fn rules_of(v: Option<&Value>, key: &str) -> Result<Vec<FwRule>> {
    let mut out = Vec::new();
    for r in v.and_then(Value::as_array).into_iter().flatten() {
        let s = r.get(key);
        let mut sources = Sources {
            addresses: strings(s.and_then(|s| s.get("addresses"))),
            tags: strings(s.and_then(|s| s.get("tags"))),
            load_balancers: strings(s.and_then(|s| s.get("load_balancer_uids"))),
        };
        sources.addresses.sort();
        sources.tags.sort();
        sources.load_balancers.sort();
        let proto = protocol(&str_of(r, "protocol"))?;
        let mut ports = str_of(r, "ports");
        // The API writes "0" for every port; some answers say "all".
        if ports == "all" || proto == Protocol::Icmp || ports.is_empty() {
            ports = "0".into();
        }
        out.push(FwRule {
            protocol: proto,
            ports,
            sources,
        });
    }
    out.sort();
    Ok(out)
}

fn lb_body(lb: &LoadBalancer, vpc_id: &str) -> Value {
    json!({
        "name": lb.name,
        "region": lb.region,
        "size_unit": lb.size_unit,
        "tag": lb.tag,
        "vpc_uuid": vpc_id,
        "enable_proxy_protocol": lb.proxy_protocol,
        "forwarding_rules": lb.ports.iter().map(|p| json!({
            "entry_protocol": "tcp", "entry_port": p,
            "target_protocol": "tcp", "target_port": p,
        })).collect::<Vec<_>>(),
        "health_check": {
            "protocol": "tcp",
            "port": lb.health_check_port,
            "check_interval_seconds": 10,
            "response_timeout_seconds": 5,
            "healthy_threshold": 3,
            "unhealthy_threshold": 3,
        },
    })
}

fn firewall_body(fw: &Firewall) -> Value {
    json!({
        "name": fw.name,
        "tags": fw.tags,
        "inbound_rules": rules_json(&fw.inbound, "sources"),
        "outbound_rules": rules_json(&fw.outbound, "destinations"),
    })
}

impl Client {
    /// A client of `base` (`API`, or a test server) with the defaults above.
    pub fn new(base: &str, token: Token) -> Result<Client> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("pressdock-infra/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            // Redirects would carry the token along; the API does not redirect.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("building the HTTP client")?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            per_page: 200,
            poll_interval: Duration::from_secs(3),
            action_timeout: Duration::from_secs(900),
            backoff: Duration::from_millis(500),
            max_retries: 8,
            max_wait: Duration::from_secs(120),
            calls: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
        })
    }

    /// Requests sent so far (retries included).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// 429 answers met so far.
    pub fn rate_limited(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// One request to `path` (`/v2/…`, with its query) or to an absolute URL of the API's
    /// origin; the answer's JSON (`null` for 204), or an [`ApiError`].
    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else if path.starts_with(&format!("{}/", self.base)) {
            path.to_owned()
        } else {
            bail!("refusing to send the token to {path:?}: not {}", self.base);
        };
        let shown = url.strip_prefix(&self.base).unwrap_or(&url).to_owned();
        let mut attempt = 0u32;
        loop {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token.0);
            if let Some(b) = body {
                req = req.json(b);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                // A connection never made sent nothing: safe to retry whatever the method.
                Err(e)
                    if (is_idempotent(&method) || e.is_connect()) && attempt < self.max_retries =>
                {
                    attempt += 1;
                    let wait = self.backoff * 2u32.saturating_pow(attempt - 1).min(64);
                    eprintln!(
                        "{method} {shown}: {e}; retry {attempt} in {} ms",
                        wait.as_millis()
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e.without_url()))
                        .with_context(|| format!("{method} {shown}"));
                }
            };
            let status = resp.status();
            if status == StatusCode::TOO_MANY_REQUESTS && attempt < self.max_retries {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                let h = resp.headers();
                let wait = header_u64(h, "retry-after")
                    .map(Duration::from_secs)
                    .or_else(|| {
                        header_u64(h, "ratelimit-reset")
                            .map(|reset| Duration::from_secs(reset.saturating_sub(unix_now())))
                    })
                    .unwrap_or(self.backoff)
                    .max(self.backoff)
                    .min(self.max_wait);
                eprintln!(
                    "{method} {shown}: rate limited (ratelimit-remaining {}), waiting {} ms",
                    header_u64(h, "ratelimit-remaining").map_or("?".into(), |r| r.to_string()),
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.is_server_error() && is_idempotent(&method) && attempt < self.max_retries {
                attempt += 1;
                let wait = self.backoff * 2u32.saturating_pow(attempt - 1).min(64);
                eprintln!(
                    "{method} {shown}: {status}; retry {attempt} in {} ms",
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                continue;
            }
            let text = resp
                .text()
                .await
                .with_context(|| format!("reading the answer to {method} {shown}"))?;
            if status.is_success() {
                if status == StatusCode::NO_CONTENT || text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_str(&text)
                    .with_context(|| format!("{method} {shown}: the answer is not JSON"));
            }
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            return Err(ApiError {
                method: method.to_string(),
                path: shown,
                status: status.as_u16(),
                id: v
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown")
                    .to_owned(),
                message: v
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| text.chars().take(200).collect()),
                request_id: v
                    .get("request_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            }
            .into());
        }
    }

    /// Every item of a list (`key`: `droplets`, `volumes`, …), page after page.
    pub async fn list(&self, path: &str, key: &str) -> Result<Vec<Value>> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{sep}per_page={}", self.per_page));
        let mut out = Vec::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > 10_000 {
                bail!("GET {path}: more than 10,000 pages");
            }
            let v = self.call(Method::GET, &url, None).await?;
            let items = v
                .get(key)
                .and_then(Value::as_array)
                .with_context(|| format!("GET {path}: no `{key}` list in the answer"))?;
            out.extend(items.iter().cloned());
            next = v
                .pointer("/links/pages/next")
                .and_then(Value::as_str)
                .map(str::to_owned);
        }
        Ok(out)
    }

    /// A volume action (`attach`, `detach`), awaited.
    async fn volume_action(
        &self,
        kind: &str,
        volume_id: &str,
        droplet_id: u64,
        region: &str,
    ) -> Result<()> {
        let v = self
            .call(
                Method::POST,
                &format!("/v2/volumes/{volume_id}/actions"),
                Some(&json!({ "type": kind, "droplet_id": droplet_id, "region": region })),
            )
            .await?;
        let id = v
            .pointer("/action/id")
            .and_then(Value::as_u64)
            .with_context(|| format!("no action.id in the {kind} answer"))?;
        self.wait_actions(&[id]).await
    }

    /// Monthly price of every droplet size (`/v2/sizes`), by slug.
    pub async fn prices(&self) -> Result<std::collections::BTreeMap<String, f64>> {
        Ok(self
            .list("/v2/sizes", "sizes")
            .await?
            .iter()
            .filter_map(|s| Some((str_of(s, "slug"), s.get("price_monthly")?.as_f64()?)))
            .collect())
    }

    /// Polls actions until all completed. One look per round, at the first action still
    /// pending: actions of one apply finish at about the same time, so when it is done the
    /// next ones are looked at at once (33 droplets: a look per round plus one per droplet,
    /// not 33 per round, which would meet the API's 250 requests a minute).
    pub async fn wait_actions(&self, ids: &[u64]) -> Result<()> {
        let t0 = tokio::time::Instant::now();
        let mut pending = ids.iter().copied().peekable();
        while let Some(&id) = pending.peek() {
            let v = self
                .call(Method::GET, &format!("/v2/actions/{id}"), None)
                .await?;
            match v.pointer("/action/status").and_then(Value::as_str) {
                Some("completed") => {
                    pending.next();
                    continue;
                }
                Some("errored") => bail!(
                    "action {id} ({} of {} {}) errored",
                    v.pointer("/action/type")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    v.pointer("/action/resource_type")
                        .and_then(Value::as_str)
                        .unwrap_or("?"),
                    v.pointer("/action/resource_id")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                ),
                _ => {}
            }
            if t0.elapsed() > self.action_timeout {
                bail!(
                    "action {id} still in progress after {:?}",
                    self.action_timeout
                );
            }
            tokio::time::sleep(self.poll_interval).await;
        }
        Ok(())
    }
}

/// A delete that finds nothing to delete did its job (a retried or re-run delete).
fn gone_is_done(r: Result<Value>) -> Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.status == 404) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

fn droplet_of(v: &Value) -> ObservedDroplet {
    ObservedDroplet {
        id: v.get("id").and_then(Value::as_u64).unwrap_or(0),
        name: str_of(v, "name"),
        size: str_of(v, "size_slug"),
        region: v
            .pointer("/region/slug")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        tags: strings(v.get("tags")),
        status: str_of(v, "status"),
        volume_ids: strings(v.get("volume_ids")),
        vpc_id: v.get("vpc_uuid").and_then(Value::as_str).map(str::to_owned),
        private_ip: address(v, "private"),
        public_ip: address(v, "public"),
    }
}

/// The droplet's IPv4 address of `kind` (`public`, `private`).
fn address(v: &Value, kind: &str) -> Option<std::net::Ipv4Addr> {
    v.pointer("/networks/v4")?
        .as_array()?
        .iter()
        .find(|n| n.get("type").and_then(Value::as_str) == Some(kind))?
        .get("ip_address")?
        .as_str()?
        .parse()
        .ok()
}

impl Provider for Client {
    async fn observe(
        &self,
        cluster_tag: &str,
        region: &str,
        vpc: &str,
        lb: &str,
    ) -> Result<Observed> {
        let tags = self
            .list("/v2/tags", "tags")
            .await?
            .iter()
            .map(|t| str_of(t, "name"))
            .collect();
        let vpc = self
            .list("/v2/vpcs", "vpcs")
            .await?
            .iter()
            .find(|v| str_of(v, "name") == vpc)
            .map(|v| ObservedVpc {
                id: str_of(v, "id"),
                name: str_of(v, "name"),
                region: str_of(v, "region"),
                ip_range: str_of(v, "ip_range"),
            });
        // By tag, and by name too: a droplet that lost the cluster's tag by hand must be
        // found (and tagged again), not created a second time.
        let prefix = format!("{cluster_tag}-");
        let droplets = self
            .list("/v2/droplets", "droplets")
            .await?
            .iter()
            .map(droplet_of)
            .filter(|d| d.tags.iter().any(|t| t == cluster_tag) || d.name.starts_with(&prefix))
            .collect();
        let volumes = self
            .list(&format!("/v2/volumes?region={region}"), "volumes")
            .await?
            .iter()
            .filter(|v| {
                strings(v.get("tags")).iter().any(|t| t == cluster_tag)
                    || str_of(v, "name").starts_with(&prefix)
            })
            .map(|v| ObservedVolume {
                id: str_of(v, "id"),
                name: str_of(v, "name"),
                region: v
                    .pointer("/region/slug")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                size_gib: v
                    .get("size_gigabytes")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(0),
                droplet_ids: v
                    .get("droplet_ids")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default(),
                tags: strings(v.get("tags")),
            })
            .collect();
        let mut load_balancers = Vec::new();
        for l in self.list("/v2/load_balancers", "load_balancers").await? {
            if str_of(&l, "name") != lb {
                continue;
            }
            let rules = l
                .get("forwarding_rules")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // Ports passed through as the spec says them; anything else shows as port 0,
            // so that the comparison differs and the plan rewrites it.
            let ports = rules
                .iter()
                .map(|r| {
                    let e = r.get("entry_port").and_then(Value::as_u64);
                    let t = r.get("target_port").and_then(Value::as_u64);
                    let tcp = str_of(r, "entry_protocol") == "tcp"
                        && str_of(r, "target_protocol") == "tcp";
                    match (e, t) {
                        (Some(e), Some(t)) if e == t && tcp => u16::try_from(e).unwrap_or(0),
                        _ => 0,
                    }
                })
                .collect();
            let hc_tcp = l.pointer("/health_check/protocol").and_then(Value::as_str) == Some("tcp");
            load_balancers.push(ObservedLoadBalancer {
                id: str_of(&l, "id"),
                status: str_of(&l, "status"),
                vpc_id: l.get("vpc_uuid").and_then(Value::as_str).map(str::to_owned),
                lb: LoadBalancer {
                    name: str_of(&l, "name"),
                    region: l
                        .pointer("/region/slug")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    tag: str_of(&l, "tag"),
                    ports,
                    health_check_port: if hc_tcp {
                        l.pointer("/health_check/port")
                            .and_then(Value::as_u64)
                            .and_then(|p| u16::try_from(p).ok())
                            .unwrap_or(0)
                    } else {
                        0
                    },
                    proxy_protocol: l
                        .get("enable_proxy_protocol")
                        .and_then(Value::as_bool)
                        .unwrap_or(false),
                    size_unit: l
                        .get("size_unit")
                        .and_then(Value::as_u64)
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0),
                },
            });
        }
        let mut firewalls = Vec::new();
        for f in self.list("/v2/firewalls", "firewalls").await? {
            let name = str_of(&f, "name");
            if !name.starts_with(&prefix) {
                continue;
            }
            let mut tags = strings(f.get("tags"));
            tags.sort();
            firewalls.push(ObservedFirewall {
                id: str_of(&f, "id"),
                fw: Firewall {
                    name,
                    tags,
                    inbound: rules_of(f.get("inbound_rules"), "sources")?,
                    outbound: rules_of(f.get("outbound_rules"), "destinations")?,
                },
            });
        }
        let mut ssh_keys = Vec::new();
        for k in self.list("/v2/account/keys", "ssh_keys").await? {
            ssh_keys.push(str_of(&k, "fingerprint"));
            if let Some(id) = k.get("id").and_then(Value::as_u64) {
                ssh_keys.push(id.to_string());
            }
        }
        let sizes = self
            .list("/v2/sizes", "sizes")
            .await?
            .iter()
            .filter(|s| s.get("available").and_then(Value::as_bool) != Some(false))
            .map(|s| (str_of(s, "slug"), strings(s.get("regions"))))
            .collect();
        Ok(Observed {
            tags,
            vpc,
            droplets,
            volumes,
            load_balancers,
            firewalls,
            ssh_keys,
            sizes,
            nodes: None,
        })
    }

    async fn create_tag(&self, name: &str) -> Result<()> {
        self.call(Method::POST, "/v2/tags", Some(&json!({ "name": name })))
            .await?;
        Ok(())
    }

    async fn create_vpc(&self, vpc: &Vpc) -> Result<String> {
        let v = self
            .call(
                Method::POST,
                "/v2/vpcs",
                Some(&json!({
                    "name": vpc.name,
                    "region": vpc.region,
                    "ip_range": vpc.ip_range,
                    "description": "pressdock cluster (pressdock-infra)",
                })),
            )
            .await?;
        v.pointer("/vpc/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("POST /v2/vpcs: no vpc.id in the answer")
    }

    async fn create_volume(&self, volume: &Volume) -> Result<String> {
        let v = self
            .call(
                Method::POST,
                "/v2/volumes",
                Some(&json!({
                    "name": volume.name,
                    "region": volume.region,
                    "size_gigabytes": volume.size_gib,
                    "filesystem_type": volume.filesystem,
                    "tags": volume.tags,
                    "description": format!("data of {}", volume.droplet),
                })),
            )
            .await?;
        v.pointer("/volume/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("POST /v2/volumes: no volume.id in the answer")
    }

    async fn create_droplets(
        &self,
        droplets: &[&Droplet],
        vpc_id: &str,
        volume: Option<&str>,
    ) -> Result<(Vec<u64>, Vec<u64>)> {
        let Some(first) = droplets.first() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let ssh_keys: Vec<Value> = first
            .ssh_keys
            .iter()
            .map(|k| k.parse::<u64>().map_or_else(|_| json!(k), |id| json!(id)))
            .collect();
        let mut body = json!({
            "region": first.region,
            "size": first.size,
            "image": first.image,
            "ssh_keys": ssh_keys,
            "tags": first.tags,
            "user_data": first.user_data,
            "vpc_uuid": vpc_id,
            "monitoring": true,
            "ipv6": false,
        });
        if droplets.len() == 1 {
            body["name"] = json!(first.name);
        } else {
            body["names"] = json!(droplets.iter().map(|d| &d.name).collect::<Vec<_>>());
        }
        if let Some(v) = volume {
            body["volumes"] = json!([v]);
        }
        let v = self.call(Method::POST, "/v2/droplets", Some(&body)).await?;
        let made: Vec<ObservedDroplet> = match (v.get("droplet"), v.get("droplets")) {
            (Some(d), _) => vec![droplet_of(d)],
            (None, Some(Value::Array(ds))) => ds.iter().map(droplet_of).collect(),
            _ => bail!("POST /v2/droplets: no droplet in the answer"),
        };
        let actions = v
            .pointer("/links/actions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|x| x.get("id")?.as_u64()).collect())
            .unwrap_or_default();
        let ids = droplets
            .iter()
            .map(|d| {
                made.iter()
                    .find(|m| m.name == d.name)
                    .map(|m| m.id)
                    .with_context(|| format!("POST /v2/droplets: {} not in the answer", d.name))
            })
            .collect::<Result<Vec<u64>>>()?;
        Ok((ids, actions))
    }

    async fn wait(&self, actions: &[u64]) -> Result<()> {
        self.wait_actions(actions).await
    }

    async fn settle_droplet(&self, id: u64) -> Result<()> {
        let pending: Vec<u64> = self
            .list(&format!("/v2/droplets/{id}/actions"), "actions")
            .await?
            .iter()
            .filter(|a| a.get("status").and_then(Value::as_str) == Some("in-progress"))
            .filter_map(|a| a.get("id").and_then(Value::as_u64))
            .collect();
        self.wait_actions(&pending).await
    }

    async fn tag_droplet(&self, tag: &str, droplet_id: u64) -> Result<()> {
        self.call(
            Method::POST,
            &format!("/v2/tags/{tag}/resources"),
            Some(&json!({ "resources": [
                { "resource_id": droplet_id.to_string(), "resource_type": "droplet" }
            ]})),
        )
        .await?;
        Ok(())
    }

    async fn attach_volume(&self, volume_id: &str, droplet_id: u64, region: &str) -> Result<()> {
        self.volume_action("attach", volume_id, droplet_id, region)
            .await
    }

    async fn detach_volume(&self, volume_id: &str, droplet_id: u64, region: &str) -> Result<()> {
        self.volume_action("detach", volume_id, droplet_id, region)
            .await
    }

    async fn create_load_balancer(&self, lb: &LoadBalancer, vpc_id: &str) -> Result<String> {
        let v = self
            .call(
                Method::POST,
                "/v2/load_balancers",
                Some(&lb_body(lb, vpc_id)),
            )
            .await?;
        let id = v
            .pointer("/load_balancer/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("POST /v2/load_balancers: no load_balancer.id in the answer")?;
        // A load balancer has no action: its status goes from `new` to `active`.
        let t0 = tokio::time::Instant::now();
        loop {
            let v = self
                .call(Method::GET, &format!("/v2/load_balancers/{id}"), None)
                .await?;
            match v.pointer("/load_balancer/status").and_then(Value::as_str) {
                Some("active") => return Ok(id),
                Some("errored") => bail!("load balancer {} errored", lb.name),
                _ => {}
            }
            if t0.elapsed() > self.action_timeout {
                bail!(
                    "load balancer {} not active after {:?}",
                    lb.name,
                    self.action_timeout
                );
            }
            tokio::time::sleep(self.poll_interval).await;
        }
    }

    async fn update_load_balancer(&self, id: &str, lb: &LoadBalancer, vpc_id: &str) -> Result<()> {
        self.call(
            Method::PUT,
            &format!("/v2/load_balancers/{id}"),
            Some(&lb_body(lb, vpc_id)),
        )
        .await?;
        Ok(())
    }

    async fn create_firewall(&self, fw: &Firewall) -> Result<String> {
        let v = self
            .call(Method::POST, "/v2/firewalls", Some(&firewall_body(fw)))
            .await?;
        v.pointer("/firewall/id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("POST /v2/firewalls: no firewall.id in the answer")
    }

    async fn update_firewall(&self, id: &str, fw: &Firewall) -> Result<()> {
        self.call(
            Method::PUT,
            &format!("/v2/firewalls/{id}"),
            Some(&firewall_body(fw)),
        )
        .await?;
        Ok(())
    }

    async fn delete_firewall(&self, id: &str) -> Result<()> {
        gone_is_done(
            self.call(Method::DELETE, &format!("/v2/firewalls/{id}"), None)
                .await,
        )
    }

    async fn destroy_droplet(&self, id: u64) -> Result<()> {
        gone_is_done(
            self.call(Method::DELETE, &format!("/v2/droplets/{id}"), None)
                .await,
        )
    }
}

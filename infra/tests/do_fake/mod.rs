//! A DigitalOcean API server for tests: the endpoints the provider uses, over HTTP, with
//! in-memory state, and every request and response checked against DigitalOcean's published
//! OpenAPI spec ([`openapi`]). A request the spec rejects is answered 400 and recorded; a
//! response the spec rejects is recorded; [`Fake::violations`] must be empty at the end of
//! every test.
//!
//! It can also misbehave on purpose: answer 429 (with `ratelimit-*` headers) to the next
//! requests, or fail one chosen call with a 500, before or after carrying it out (a response
//! lost on the way back).
pub mod openapi;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use openapi::{Op, Spec};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Fail the `nth` (1-based) call of `method template` with a 500; `after`: carry it out first.
/// Template `"*"`: the nth change (any method but GET), whatever its operation.
#[derive(Clone, Debug)]
pub struct Fault {
    pub method: &'static str,
    pub template: &'static str,
    pub nth: u32,
    pub after: bool,
}

#[derive(Default)]
pub struct State_ {
    next_id: u64,
    tags: Vec<String>,
    vpcs: Vec<Value>,
    droplets: Vec<Value>,
    volumes: Vec<Value>,
    load_balancers: Vec<Value>,
    firewalls: Vec<Value>,
    /// id → (action, the clock at which it completes).
    actions: BTreeMap<u64, (Value, u32)>,
    /// Time, for actions: one tick per look at any action.
    clock: u32,
    lb_polls: BTreeMap<String, u32>,
    /// Ticks of [`State_::clock`] an action takes (looks of a load balancer before it is
    /// active).
    pub polls: u32,
    /// Answer 429 to this many of the next requests.
    pub rate_limit_next: u32,
    pub fault: Option<Fault>,
    seen: BTreeMap<String, u32>,
    /// `METHOD template` of every request, in order.
    pub calls: Vec<String>,
    pub violations: Vec<String>,
    /// Every request's raw text (query and body), to look for secrets that must not be there.
    pub raw: Vec<String>,
}

impl State_ {
    /// A fresh number: the id of a droplet or an action, the serial in another object's
    /// UUID.
    fn fresh(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn volume_id(&self, name: &str) -> String {
        self.volumes
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["id"].as_str())
            .unwrap_or("")
            .to_owned()
    }
    pub fn tag_count(&self) -> usize {
        self.tags.len()
    }
    pub fn droplets_named(&self, name: &str) -> Vec<u64> {
        self.droplets
            .iter()
            .filter(|d| d["name"] == name)
            .filter_map(|d| d["id"].as_u64())
            .collect()
    }
    pub fn remove_droplet(&mut self, id: u64) {
        self.droplets.retain(|d| d["id"] != id);
    }
}

pub struct Fake {
    pub base: String,
    pub token: String,
    pub state: Arc<Mutex<State_>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Shared {
    token: String,
    state: Arc<Mutex<State_>>,
    base: String,
}

const NOW: &str = "2026-12-06T17:00:00Z";

fn region(slug: &str) -> Value {
    json!({
        "slug": slug,
        "name": format!("Region {slug}"),
        "sizes": ["s-4vcpu-8gb", "s-8vcpu-16gb", "m-2vcpu-16gb", "m-4vcpu-32gb"],
        "features": ["backups", "ipv6", "metadata", "install_agent", "storage"],
        "available": true,
    })
}

fn uuid(kind: u32, n: u64) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

fn error(status: StatusCode, id: &str, message: &str) -> (StatusCode, Option<Value>) {
    (
        status,
        Some(
            json!({ "id": id, "message": message, "request_id": "4d9d8375-3c56-4925-a3e7-eb137fed17e9" }),
        ),
    )
}

fn not_found() -> (StatusCode, Option<Value>) {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "The resource you were accessing could not be found.",
    )
}

fn unprocessable(message: &str) -> (StatusCode, Option<Value>) {
    error(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unprocessable_entity",
        message,
    )
}

impl Fake {
    pub async fn start(token: &str) -> Fake {
        let state = Arc::new(Mutex::new(State_ {
            polls: 1,
            ..State_::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("binding the fake: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake address: {e}"));
        let base = format!("http://{addr}");
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            state: state.clone(),
            base: base.clone(),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Fake {
            base,
            token: token.to_owned(),
            state,
            server,
        }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut State_) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    pub fn violations(&self) -> Vec<String> {
        self.with(|s| s.violations.clone())
    }

    pub fn droplet_names(&self) -> Vec<String> {
        self.with(|s| {
            s.droplets
                .iter()
                .map(|d| d["name"].as_str().unwrap_or("").to_owned())
                .collect()
        })
    }

    pub fn counts(&self) -> [usize; 5] {
        self.with(|s| {
            [
                s.droplets.len(),
                s.volumes.len(),
                s.firewalls.len(),
                s.load_balancers.len(),
                s.vpcs.len(),
            ]
        })
    }

    /// Calls per `METHOD template`, since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<String> {
        self.with(|s| std::mem::take(&mut s.calls))
    }

    /// Makes a second droplet of the same name (two applies at once).
    pub fn twin(&self, droplet: &str) {
        self.with(|s| {
            if let Some(d) = s.droplets.iter().find(|d| d["name"] == droplet).cloned() {
                let mut t = d;
                t["id"] = json!(s.fresh());
                s.droplets.push(t);
            }
        });
    }

    /// Removes a tag from a droplet behind the tool's back (drift).
    pub fn untag(&self, droplet: &str, tag: &str) {
        self.with(|s| {
            for d in &mut s.droplets {
                if d["name"] == droplet
                    && let Some(t) = d["tags"].as_array_mut()
                {
                    t.retain(|x| x != tag);
                }
            }
        });
    }

    /// Detaches a volume behind the tool's back (drift).
    pub fn detach(&self, volume: &str) {
        self.with(|s| {
            let mut id = String::new();
            for v in &mut s.volumes {
                if v["name"] == volume {
                    id = v["id"].as_str().unwrap_or("").to_owned();
                    v["droplet_ids"] = json!([]);
                }
            }
            for d in &mut s.droplets {
                if let Some(ids) = d["volume_ids"].as_array_mut() {
                    ids.retain(|x| *x != id.as_str());
                }
            }
        });
    }

    /// Adds a firewall rule behind the tool's back (drift).
    pub fn open_port_on(&self, firewall: &str, port: &str) {
        self.with(|s| {
            for f in &mut s.firewalls {
                if f["name"] == firewall
                    && let Some(rules) = f["inbound_rules"].as_array_mut()
                {
                    rules.push(json!({"protocol": "tcp", "ports": port, "sources": {"addresses": ["0.0.0.0/0"]}}));
                }
            }
        });
    }
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            q.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (k.to_owned(), v.replace("%3A", ":").replace("%2F", "/"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn rate_headers(remaining: u64) -> Vec<(String, String)> {
    let reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    vec![
        ("ratelimit-limit".into(), "5000".into()),
        ("ratelimit-remaining".into(), remaining.to_string()),
        ("ratelimit-reset".into(), reset.to_string()),
    ]
}

async fn handle(
    State(sh): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = query_pairs(&uri);
    let body_json: Option<Value> = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut s = sh.state.lock().unwrap_or_else(|e| e.into_inner());
                s.violations
                    .push(format!("{method} {path}: body is not JSON: {e}"));
                return respond(StatusCode::BAD_REQUEST, vec![], None);
            }
        }
    };
    let spec = Spec::get();
    let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
    st.raw
        .push(format!("{method} {uri} {}", String::from_utf8_lossy(&body)));
    let op = match spec.check_request(method.as_str(), &path, &query, body_json.as_ref()) {
        Ok(op) => op,
        Err(errs) => {
            st.violations.extend(errs.iter().cloned());
            st.calls.push(format!("{method} {path} (rejected)"));
            // The error body must itself be valid for the operation, when there is one.
            let (status, body) = error(StatusCode::BAD_REQUEST, "bad_request", &errs.join("; "));
            if let Ok(op) = spec.find(method.as_str(), &path) {
                let hs = rate_headers(4999);
                let v = spec.check_response(&op, status.as_u16(), &hs, body.as_ref());
                st.violations.extend(v);
            }
            return respond(status, rate_headers(4999), body);
        }
    };
    let key = format!("{} {}", op.method, op.template);
    st.calls.push(key.clone());
    let auth_ok = headers.get("authorization").and_then(|h| h.to_str().ok())
        == Some(&format!("Bearer {}", sh.token));
    let (status, body, hs) = if !auth_ok {
        let (s, b) = error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unable to authenticate you",
        );
        (s, b, rate_headers(4999))
    } else if st.rate_limit_next > 0 {
        st.rate_limit_next -= 1;
        let (s, b) = error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "API Rate limit exceeded.",
        );
        (s, b, rate_headers(0))
    } else {
        let n = {
            let c = st.seen.entry(key.clone()).or_insert(0);
            *c += 1;
            *c
        };
        // Template "*": the nth change of any kind (every method but GET).
        let changes = if op.method == "GET" {
            0
        } else {
            let c = st.seen.entry("*".into()).or_insert(0);
            *c += 1;
            *c
        };
        let fault = st.fault.clone().filter(|f| {
            if f.template == "*" {
                changes == f.nth
            } else {
                f.method == op.method && f.template == op.template && f.nth == n
            }
        });
        let (s, b) = match &fault {
            Some(f) if !f.after => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "Unexpected server-side error",
            ),
            _ => {
                let r = serve(&mut st, &sh.base, &op, &query, body_json.as_ref());
                if fault.is_some() {
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "server_error",
                        "Unexpected server-side error",
                    )
                } else {
                    r
                }
            }
        };
        (s, b, rate_headers(4990))
    };
    let v = spec.check_response(&op, status.as_u16(), &hs, body.as_ref());
    st.violations.extend(v);
    respond(status, hs, body)
}

fn respond(status: StatusCode, headers: Vec<(String, String)>, body: Option<Value>) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(k, v);
    }
    let r = match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(axum::body::Body::from(v.to_string())),
        None => b.body(axum::body::Body::empty()),
    };
    r.unwrap_or_else(|_| Response::new(axum::body::Body::empty()))
}

fn page(
    base: &str,
    path: &str,
    query: &[(String, String)],
    key: &str,
    items: Vec<Value>,
) -> (StatusCode, Option<Value>) {
    let get = |k: &str| -> Option<u64> {
        query
            .iter()
            .find(|(q, _)| q == k)
            .and_then(|(_, v)| v.parse().ok())
    };
    let per_page = get("per_page").unwrap_or(20).max(1) as usize;
    let page = get("page").unwrap_or(1).max(1) as usize;
    let total = items.len();
    let last = total.div_ceil(per_page).max(1);
    let others: String = query
        .iter()
        .filter(|(k, _)| k != "page" && k != "per_page")
        .map(|(k, v)| format!("&{k}={v}"))
        .collect();
    let link = |p: usize| format!("{base}{path}?page={p}&per_page={per_page}{others}");
    let mut pages = serde_json::Map::new();
    if page > 1 {
        pages.insert("first".into(), json!(link(1)));
        pages.insert("prev".into(), json!(link(page - 1)));
    }
    if page < last {
        pages.insert("next".into(), json!(link(page + 1)));
        pages.insert("last".into(), json!(link(last)));
    }
    let slice: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * per_page)
        .take(per_page)
        .collect();
    (
        StatusCode::OK,
        Some(json!({ key: slice, "links": { "pages": pages }, "meta": { "total": total } })),
    )
}

fn new_action(
    st: &mut State_,
    kind: &str,
    resource_id: u64,
    resource_type: &str,
    region_slug: &str,
) -> Value {
    let id = st.fresh();
    let a = json!({
        "id": id,
        "status": "in-progress",
        "type": kind,
        "started_at": NOW,
        "completed_at": null,
        "resource_id": resource_id,
        "resource_type": resource_type,
        "region": region(region_slug),
        "region_slug": region_slug,
    });
    let done_at = st.clock + st.polls;
    st.actions.insert(id, (a.clone(), done_at));
    a
}

fn droplet_json(id: u64, name: &str, b: &Value, volumes: &[String]) -> Value {
    let region_slug = b["region"].as_str().unwrap_or("nyc3");
    let size = b["size"].as_str().unwrap_or("s-1vcpu-1gb");
    json!({
        "id": id,
        "name": name,
        "memory": 8192,
        "vcpus": 4,
        "disk": 160,
        "locked": false,
        "status": "new",
        "kernel": null,
        "created_at": NOW,
        "features": ["monitoring", "private_networking"],
        "backup_ids": [],
        "next_backup_window": null,
        "snapshot_ids": [],
        "image": {
            "id": 7_555_620,
            "name": "12 x64",
            "distribution": "Debian",
            "slug": b["image"],
            "public": true,
            "regions": [region_slug],
            "created_at": NOW,
            "min_disk_size": 15,
            "type": "base",
            "size_gigabytes": 2.36,
            "description": "Debian 12 x64",
            "tags": [],
            "status": "available",
            "error_message": "",
        },
        "volume_ids": volumes,
        "size": {
            "slug": size,
            "memory": 8192,
            "vcpus": 4,
            "disk": 160,
            "transfer": 5.0,
            "price_monthly": 48.0,
            "price_hourly": 0.07143,
            "regions": [region_slug],
            "available": true,
            "description": "Basic",
        },
        "size_slug": size,
        "networks": {
            "v4": [
                {"ip_address": format!("203.0.113.{}", id % 250 + 1), "netmask": "255.255.240.0", "gateway": "203.0.113.254", "type": "public"},
                {"ip_address": format!("10.110.0.{}", id % 250 + 2), "netmask": "255.255.240.0", "gateway": "10.110.0.1", "type": "private"},
            ],
            "v6": [],
        },
        "region": region(region_slug),
        "tags": b["tags"].as_array().cloned().unwrap_or_default(),
        "vpc_uuid": b["vpc_uuid"],
    })
}

fn lb_json(id: &str, b: &Value, droplet_ids: Vec<u64>) -> Value {
    json!({
        "id": id,
        "name": b["name"],
        "ip": "",
        "status": "new",
        "created_at": NOW,
        "algorithm": "round_robin",
        "forwarding_rules": b["forwarding_rules"],
        "health_check": b["health_check"],
        "sticky_sessions": {"type": "none"},
        "redirect_http_to_https": false,
        "enable_proxy_protocol": b["enable_proxy_protocol"].as_bool().unwrap_or(false),
        "enable_backend_keepalive": false,
        "http_idle_timeout_seconds": 60,
        "vpc_uuid": b["vpc_uuid"],
        "size_unit": b["size_unit"].as_u64().unwrap_or(1),
        "disable_lets_encrypt_dns_records": false,
        "region": region(b["region"].as_str().unwrap_or("nyc3")),
        "tag": b["tag"].as_str().unwrap_or(""),
        "droplet_ids": droplet_ids,
    })
}

fn tagged(st: &State_, tag: &str) -> Vec<u64> {
    st.droplets
        .iter()
        .filter(|d| {
            d["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == tag))
        })
        .filter_map(|d| d["id"].as_u64())
        .collect()
}

fn firewall_json(st: &State_, id: &str, b: &Value) -> Value {
    let tags: Vec<String> = b["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut droplet_ids: Vec<u64> = tags.iter().flat_map(|t| tagged(st, t)).collect();
    droplet_ids.sort_unstable();
    droplet_ids.dedup();
    json!({
        "id": id,
        "name": b["name"],
        "status": "succeeded",
        "created_at": NOW,
        "pending_changes": [],
        "inbound_rules": b["inbound_rules"].as_array().cloned().unwrap_or_default(),
        "outbound_rules": b["outbound_rules"].as_array().cloned().unwrap_or_default(),
        "droplet_ids": droplet_ids,
        "tags": tags,
    })
}

/// One operation on the state. The request already passed the spec's checks.
fn serve(
    st: &mut State_,
    base: &str,
    op: &Op,
    query: &[(String, String)],
    body: Option<&Value>,
) -> (StatusCode, Option<Value>) {
    let b = body.cloned().unwrap_or(Value::Null);
    let q = |k: &str| query.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
    let p = |k: &str| op.path_params.get(k).cloned().unwrap_or_default();
    match (op.method.as_str(), op.template.as_str()) {
        ("GET", "/v2/account/keys") => {
            let keys = vec![json!({
                "id": 512_189,
                "fingerprint": "3b:16:bf:e4:8b:00:8b:b8:59:8c:a9:d3:f0:19:45:fa",
                "public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB2mTest operator@example",
                "name": "operator",
            })];
            page(base, "/v2/account/keys", query, "ssh_keys", keys)
        }
        ("GET", "/v2/sizes") => {
            let items = [
                ("s-1vcpu-1gb", 1, 1024, 6.0),
                ("s-4vcpu-8gb", 4, 8192, 48.0),
                ("s-8vcpu-16gb", 8, 16384, 96.0),
                ("m-2vcpu-16gb", 2, 16384, 84.0),
                ("m-4vcpu-32gb", 4, 32768, 168.0),
            ]
            .into_iter()
            .map(|(slug, vcpus, memory, monthly)| {
                json!({
                    "slug": slug, "vcpus": vcpus, "memory": memory, "disk": 160,
                    "transfer": 5.0, "price_monthly": monthly,
                    "price_hourly": monthly / 672.0, "regions": ["fra1", "ams3"],
                    "available": true, "description": "Basic",
                })
            })
            .collect();
            page(base, "/v2/sizes", query, "sizes", items)
        }
        ("GET", "/v2/tags") => {
            let items = st
                .tags
                .iter()
                .map(|t| {
                    let n = tagged(st, t).len();
                    json!({"name": t, "resources": {"count": n, "droplets": {"count": n}}})
                })
                .collect();
            page(base, "/v2/tags", query, "tags", items)
        }
        ("POST", "/v2/tags") => {
            let name = b["name"].as_str().unwrap_or("").to_owned();
            if !st.tags.contains(&name) {
                st.tags.push(name.clone());
            }
            (
                StatusCode::CREATED,
                Some(json!({"tag": {"name": name, "resources": {"count": 0}}})),
            )
        }
        ("POST", "/v2/tags/{tag_id}/resources") => {
            let tag = p("tag_id");
            if !st.tags.contains(&tag) {
                return not_found();
            }
            for r in b["resources"].as_array().into_iter().flatten() {
                let id: u64 = r["resource_id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let Some(d) = st.droplets.iter_mut().find(|d| d["id"] == id) else {
                    return not_found();
                };
                if let Some(t) = d["tags"].as_array_mut()
                    && !t.iter().any(|x| x == tag.as_str())
                {
                    t.push(json!(tag));
                }
            }
            (StatusCode::NO_CONTENT, None)
        }
        ("GET", "/v2/vpcs") => page(base, "/v2/vpcs", query, "vpcs", st.vpcs.clone()),
        ("POST", "/v2/vpcs") => {
            if st.vpcs.iter().any(|v| v["name"] == b["name"]) {
                return unprocessable("A VPC with this name already exists.");
            }
            let id = uuid(1, st.fresh());
            let v = json!({
                "id": id, "urn": format!("do:vpc:{id}"), "name": b["name"],
                "description": b["description"].as_str().unwrap_or(""),
                "region": b["region"], "ip_range": b["ip_range"], "default": false, "created_at": NOW,
            });
            st.vpcs.push(v.clone());
            (StatusCode::CREATED, Some(json!({"vpc": v})))
        }
        ("GET", "/v2/droplets") => {
            let items = st
                .droplets
                .iter()
                .filter(|d| {
                    q("tag_name").is_none_or(|t| {
                        d["tags"]
                            .as_array()
                            .is_some_and(|a| a.iter().any(|x| *x == t.as_str()))
                    })
                })
                .cloned()
                .collect();
            page(base, "/v2/droplets", query, "droplets", items)
        }
        ("POST", "/v2/droplets") => {
            if !st.vpcs.iter().any(|v| v["id"] == b["vpc_uuid"]) {
                return unprocessable("vpc_uuid is not a VPC of this account");
            }
            let names: Vec<String> = match (&b["name"], &b["names"]) {
                (Value::String(n), _) => vec![n.clone()],
                (_, Value::Array(ns)) => ns
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect(),
                _ => return unprocessable("name or names is required"),
            };
            if names.len() > 10 {
                return unprocessable("at most 10 names per request");
            }
            let vols: Vec<String> = b["volumes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if !vols.is_empty() && names.len() > 1 {
                return unprocessable("volumes can be attached to one droplet only");
            }
            for v in &vols {
                match st.volumes.iter().find(|x| x["id"] == v.as_str()) {
                    None => return unprocessable("volume not found"),
                    Some(x) if x["droplet_ids"].as_array().is_some_and(|a| !a.is_empty()) => {
                        return unprocessable("volume is already attached");
                    }
                    _ => {}
                }
            }
            for t in b["tags"].as_array().into_iter().flatten() {
                if let Some(t) = t.as_str()
                    && !st.tags.iter().any(|x| x == t)
                {
                    st.tags.push(t.to_owned());
                }
            }
            let region_slug = b["region"].as_str().unwrap_or("nyc3").to_owned();
            let mut made = Vec::new();
            let mut actions = Vec::new();
            for n in &names {
                let id = st.fresh();
                let d = droplet_json(id, n, &b, &vols);
                for v in &vols {
                    if let Some(x) = st.volumes.iter_mut().find(|x| x["id"] == v.as_str()) {
                        x["droplet_ids"] = json!([id]);
                    }
                }
                st.droplets.push(d.clone());
                let a = new_action(st, "create", id, "droplet", &region_slug);
                actions.push(json!({"id": a["id"], "rel": "create", "href": format!("{base}/v2/actions/{}", a["id"])}));
                made.push(d);
            }
            let body = if b["name"].is_string() {
                json!({"droplet": made[0], "links": {"actions": actions}})
            } else {
                json!({"droplets": made, "links": {"actions": actions}})
            };
            (StatusCode::ACCEPTED, Some(body))
        }
        ("DELETE", "/v2/droplets/{droplet_id}") => {
            let id: u64 = p("droplet_id").parse().unwrap_or(0);
            let before = st.droplets.len();
            st.droplets.retain(|d| d["id"] != id);
            if st.droplets.len() == before {
                return not_found();
            }
            for v in &mut st.volumes {
                if let Some(a) = v["droplet_ids"].as_array_mut() {
                    a.retain(|x| *x != id);
                }
            }
            (StatusCode::NO_CONTENT, None)
        }
        ("GET", "/v2/actions/{action_id}") => {
            let id: u64 = p("action_id").parse().unwrap_or(0);
            st.clock += 1;
            let clock = st.clock;
            let Some((a, done_at)) = st.actions.get_mut(&id) else {
                return not_found();
            };
            if clock > *done_at && a["status"] == "in-progress" {
                a["status"] = json!("completed");
                a["completed_at"] = json!(NOW);
            }
            let a = a.clone();
            if a["status"] == "completed" && a["type"] == "create" {
                let rid = a["resource_id"].as_u64().unwrap_or(0);
                if let Some(d) = st.droplets.iter_mut().find(|d| d["id"] == rid) {
                    d["status"] = json!("active");
                }
            }
            (StatusCode::OK, Some(json!({"action": a})))
        }
        ("GET", "/v2/droplets/{droplet_id}/actions") => {
            let id: u64 = p("droplet_id").parse().unwrap_or(0);
            if !st.droplets.iter().any(|d| d["id"] == id) {
                return not_found();
            }
            let items = st
                .actions
                .values()
                .filter(|(a, _)| a["resource_id"] == id && a["resource_type"] == "droplet")
                .map(|(a, _)| a.clone())
                .collect();
            page(
                base,
                &format!("/v2/droplets/{id}/actions"),
                query,
                "actions",
                items,
            )
        }
        ("GET", "/v2/volumes") => {
            let items = st
                .volumes
                .iter()
                .filter(|v| q("region").is_none_or(|r| v["region"]["slug"] == r.as_str()))
                .filter(|v| q("name").is_none_or(|n| v["name"] == n.as_str()))
                .cloned()
                .collect();
            page(base, "/v2/volumes", query, "volumes", items)
        }
        ("POST", "/v2/volumes") => {
            if st
                .volumes
                .iter()
                .any(|v| v["name"] == b["name"] && v["region"]["slug"] == b["region"])
            {
                return unprocessable("a volume with that name already exists in the region");
            }
            let id = uuid(2, st.fresh());
            let v = json!({
                "id": id, "name": b["name"], "size_gigabytes": b["size_gigabytes"],
                "description": b["description"].as_str().unwrap_or(""),
                "droplet_ids": [], "region": region(b["region"].as_str().unwrap_or("nyc3")),
                "created_at": NOW, "filesystem_type": b["filesystem_type"].as_str().unwrap_or(""),
                "filesystem_label": "", "tags": b["tags"].as_array().cloned().unwrap_or_default(),
            });
            st.volumes.push(v.clone());
            (StatusCode::CREATED, Some(json!({"volume": v})))
        }
        ("POST", "/v2/volumes/{volume_id}/actions") => {
            let vid = p("volume_id");
            let did = b["droplet_id"].as_u64().unwrap_or(0);
            if !st.droplets.iter().any(|d| d["id"] == did) {
                return not_found();
            }
            let Some(v) = st.volumes.iter_mut().find(|v| v["id"] == vid.as_str()) else {
                return not_found();
            };
            match b["type"].as_str() {
                Some("attach") => {
                    if v["droplet_ids"].as_array().is_some_and(|a| !a.is_empty()) {
                        return unprocessable("volume is already attached");
                    }
                    v["droplet_ids"] = json!([did]);
                }
                Some("detach") => {
                    if !v["droplet_ids"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| *x == did))
                    {
                        return unprocessable("volume is not attached to that droplet");
                    }
                    v["droplet_ids"] = json!([]);
                    let region_slug = v["region"]["slug"].as_str().unwrap_or("nyc3").to_owned();
                    if let Some(d) = st.droplets.iter_mut().find(|d| d["id"] == did)
                        && let Some(ids) = d["volume_ids"].as_array_mut()
                    {
                        ids.retain(|x| *x != vid.as_str());
                    }
                    let a = new_action(st, "detach_volume", did, "volume", &region_slug);
                    return (StatusCode::ACCEPTED, Some(json!({"action": a})));
                }
                _ => return unprocessable("only attach and detach here"),
            }
            let region_slug = v["region"]["slug"].as_str().unwrap_or("nyc3").to_owned();
            if let Some(d) = st.droplets.iter_mut().find(|d| d["id"] == did)
                && let Some(ids) = d["volume_ids"].as_array_mut()
            {
                ids.push(json!(vid));
            }
            let a = new_action(st, "attach_volume", did, "volume", &region_slug);
            (StatusCode::ACCEPTED, Some(json!({"action": a})))
        }
        ("GET", "/v2/load_balancers") => {
            let items = st
                .load_balancers
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    l["droplet_ids"] = json!(tagged(st, l["tag"].as_str().unwrap_or("")));
                    l
                })
                .collect();
            page(base, "/v2/load_balancers", query, "load_balancers", items)
        }
        ("POST", "/v2/load_balancers") => {
            if st.load_balancers.iter().any(|l| l["name"] == b["name"]) {
                return unprocessable("a load balancer with that name exists");
            }
            let id = uuid(3, st.fresh());
            let ids = tagged(st, b["tag"].as_str().unwrap_or(""));
            let l = lb_json(&id, &b, ids);
            st.load_balancers.push(l.clone());
            (StatusCode::ACCEPTED, Some(json!({"load_balancer": l})))
        }
        ("GET", "/v2/load_balancers/{lb_id}") => {
            let id = p("lb_id");
            // `new` for `polls` GETs, then `active`.
            let polls = st.polls;
            let seen = st.lb_polls.entry(id.clone()).or_insert(0);
            *seen += 1;
            let ready = *seen > polls;
            let Some(l) = st
                .load_balancers
                .iter_mut()
                .find(|l| l["id"] == id.as_str())
            else {
                return not_found();
            };
            if ready && l["status"] == "new" {
                l["status"] = json!("active");
                l["ip"] = json!("203.0.113.250");
            }
            (StatusCode::OK, Some(json!({"load_balancer": l.clone()})))
        }
        ("PUT", "/v2/load_balancers/{lb_id}") => {
            let id = p("lb_id");
            let ids = tagged(st, b["tag"].as_str().unwrap_or(""));
            let Some(l) = st
                .load_balancers
                .iter_mut()
                .find(|l| l["id"] == id.as_str())
            else {
                return not_found();
            };
            let mut n = lb_json(&id, &b, ids);
            n["status"] = l["status"].clone();
            *l = n.clone();
            (StatusCode::OK, Some(json!({"load_balancer": n})))
        }
        ("GET", "/v2/firewalls") => {
            let items = st
                .firewalls
                .iter()
                .map(|f| firewall_json(st, f["id"].as_str().unwrap_or(""), f))
                .collect();
            page(base, "/v2/firewalls", query, "firewalls", items)
        }
        ("POST", "/v2/firewalls") => {
            if st.firewalls.iter().any(|f| f["name"] == b["name"]) {
                return unprocessable("a firewall with that name exists");
            }
            let id = uuid(4, st.fresh());
            let f = firewall_json(st, &id, &b);
            st.firewalls.push(f.clone());
            (StatusCode::ACCEPTED, Some(json!({"firewall": f})))
        }
        ("PUT", "/v2/firewalls/{firewall_id}") => {
            let id = p("firewall_id");
            if !st.firewalls.iter().any(|f| f["id"] == id.as_str()) {
                return not_found();
            }
            let f = firewall_json(st, &id, &b);
            if let Some(x) = st.firewalls.iter_mut().find(|f| f["id"] == id.as_str()) {
                *x = f.clone();
            }
            (StatusCode::OK, Some(json!({"firewall": f})))
        }
        ("DELETE", "/v2/firewalls/{firewall_id}") => {
            let id = p("firewall_id");
            let before = st.firewalls.len();
            st.firewalls.retain(|f| f["id"] != id.as_str());
            if before == st.firewalls.len() {
                return not_found();
            }
            (StatusCode::NO_CONTENT, None)
        }
        _ => error(
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "the test server does not implement this operation",
        ),
    }
}

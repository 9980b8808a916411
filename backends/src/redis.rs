//! The site's Redis object cache: ACL user `wp_<id>` limited to keys and channels
//! `wp_<id>:*`, on every data node.
//!
//! ACLs are not replicated, so the user is applied to the master *and* every replica,
//! found through Sentinel (`SENTINEL get-master-addr-by-name`, `SENTINEL replicas`),
//! then `ACL SAVE`d where the node has an `aclfile` (so a restarted node keeps it).
//! A replica Sentinel flags as down (`s_down`, `o_down`, `disconnected`) is skipped and
//! reported unreachable; the reconciler applies the user when it is back.
//!
//! The rule set: a site's code (any plugin) holds this user's password, so the user may
//! touch its own keys and channels and nothing server-wide. `+@all -@dangerous`, minus:
//! - `SCAN`, `RANDOMKEY`, `DBSIZE`: they leak other sites' key names and counts (`KEYS` is
//!   already in `@dangerous`);
//! - `@scripting` (`EVAL`, `SCRIPT FLUSH|KILL`, `FUNCTION LOAD|FLUSH|DELETE`, `FCALL`):
//!   scripts and functions are server-wide, one tenant's flush or kill hits every site;
//! - `CLIENT` but `ID`, `GETNAME`, `SETNAME`: `CLIENT TRACKING … BCAST` delivers
//!   invalidations naming every tenant's keys, and the rest is about other connections;
//! - `MEMORY` but `USAGE` of its own keys (`PURGE` and `STATS` are server-wide), `PUBSUB`
//!   (lists every tenant's channels);
//! - `SELECT`, `MOVE`, `COPY`: keys stay in database 0, where removal and the reconciler
//!   look for them.
//!
//! plus `ACL WHOAMI`.
//!
//! The same user, with the same password, is on every Sentinel with one right: to ask
//! where the master is (`SENTINEL GET-MASTER-ADDR-BY-NAME`, plus `AUTH`, `HELLO`,
//! `PING`). The Sentinels' `default` user is off, so a site can neither reconfigure
//! failover nor read the others' topology; each site authenticates with its own
//! credentials, and a deleted site's user goes from the Sentinels too. Sentinel keeps
//! users in its own config file (`SENTINEL FLUSHCONFIG` writes it).
//!
//! The object-cache drop-in uses `AUTH`, `GET`, `SET`, `SETEX`, `DEL`,
//! `INCR` and `PING`. The password is given as `#<sha256>`, so the clear text never
//! reaches Redis, its ACL file or its logs.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, ProtocolVersion,
    RedisConnectionInfo, Value,
};

use crate::config::RedisConfig;
use crate::error::{Error, Result};
use crate::ids::{Secret, SitePassword, SiteResourceId};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// The command rules of every site user, after `reset on #<hash> ~… &…`.
pub const SITE_COMMAND_RULES: &str = "+@all -@dangerous -@scripting -scan -randomkey -dbsize \
     -select -move -copy -client +client|id +client|getname +client|setname -memory \
     +memory|usage -pubsub +acl|whoami";

/// Whether `ACL GETUSER`'s `commands` is [`SITE_COMMAND_RULES`] as Redis reports it:
/// `+@all` first, then the same subtractions in any order (Redis 7.0 reorders them),
/// with or without `+acl|whoami` (7.0 drops it as redundant: `ACL WHOAMI` is not
/// `@dangerous`, so `+@all -@dangerous` already allows it).
pub fn commands_match(reported: &str) -> bool {
    let mut want: Vec<&str> = SITE_COMMAND_RULES
        .split(' ')
        .filter(|r| *r != "+acl|whoami")
        .collect();
    let mut got: Vec<&str> = reported
        .split_whitespace()
        .filter(|r| *r != "+acl|whoami")
        .collect();
    if got.first() != Some(&"+@all") {
        return false;
    }
    want.sort_unstable();
    got.sort_unstable();
    want == got
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Master,
    Replica,
    /// A Sentinel, where the site's user may only discover the master.
    Sentinel,
}

/// The command rules of every site user on a Sentinel, after `reset on #<hash>`.
pub const SENTINEL_SITE_RULES: &str = "-@all +auth +hello +ping +sentinel|get-master-addr-by-name";

/// The data nodes as Sentinel sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// `host:port` of the master.
    pub master: String,
    /// Replicas Sentinel considers up.
    pub replicas: Vec<String>,
    /// Replicas Sentinel flags as down or disconnected.
    pub down_replicas: Vec<String>,
}

/// The site user on one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAclState {
    pub node: String,
    pub role: NodeRole,
    pub reachable: bool,
    pub user_present: bool,
    /// Present with exactly our flags, password, key/channel patterns and command rules
    /// (password checked only when one is given).
    pub converged: bool,
    /// `Some(true)` after a successful `ACL SAVE`; `None` where no aclfile is configured
    /// (or nothing was written).
    pub saved: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheState {
    pub nodes: Vec<NodeAclState>,
}

impl CacheState {
    /// Every node converged and reachable.
    pub fn is_converged(&self) -> bool {
        !self.nodes.is_empty() && self.nodes.iter().all(|n| n.reachable && n.converged)
    }

    /// The user is on no reachable node.
    pub fn is_absent(&self) -> bool {
        self.nodes.iter().all(|n| !n.user_present)
    }
}

/// What `remove_site_cache` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRemoval {
    pub nodes: Vec<String>,
    pub keys_deleted: u64,
}

/// The site's Redis user and keys.
pub trait SiteCache {
    /// Creates or converges the ACL user on every reachable node, then `ACL SAVE`;
    /// returns the state it made (not read back: [`SiteCache::observe_site_cache`] reads).
    fn ensure_site_cache(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> impl Future<Output = Result<CacheState>> + Send;

    /// Reads the user on every node (password compared when given).
    fn observe_site_cache(
        &self,
        id: &SiteResourceId,
        password: Option<&SitePassword>,
    ) -> impl Future<Output = Result<CacheState>> + Send;

    /// Deletes the user on every reachable node, then the site's keys on the master
    /// (`SCAN MATCH wp_<id>:*`, `UNLINK` in batches). Absent is success.
    fn remove_site_cache(
        &self,
        id: &SiteResourceId,
    ) -> impl Future<Output = Result<CacheRemoval>> + Send;
}

/// [`SiteCache`] over Redis nodes discovered through Sentinel.
#[derive(Debug, Clone)]
pub struct RedisSentinelDriver {
    sentinels: Vec<String>,
    master_name: String,
    admin_user: Option<String>,
    admin_password: Option<Secret>,
    sentinel_user: Option<String>,
    sentinel_password: Option<Secret>,
    unlink_batch: usize,
}

fn redis_err(node: &str, context: &str) -> impl FnOnce(redis::RedisError) -> Error {
    let node = node.to_owned();
    let context = context.to_owned();
    move |source| Error::Redis {
        node,
        context,
        source,
    }
}

fn split_addr(addr: &str) -> Result<(String, u16)> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| Error::unexpected("redis", format!("address without port: {addr}")))?;
    let port = port
        .parse()
        .map_err(|_| Error::unexpected("redis", format!("bad port in {addr}")))?;
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

async fn connect(
    addr: &str,
    username: Option<&str>,
    password: Option<&Secret>,
) -> Result<MultiplexedConnection> {
    let (host, port) = split_addr(addr)?;
    let info = ConnectionInfo {
        addr: ConnectionAddr::Tcp(host, port),
        redis: RedisConnectionInfo {
            db: 0,
            username: username.map(str::to_owned),
            password: password.map(|p| p.expose().to_owned()),
            protocol: ProtocolVersion::RESP2,
        },
    };
    let client = Client::open(info).map_err(redis_err(addr, "client"))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT);
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(redis_err(addr, "connect"))
}

/// `SENTINEL FLUSHCONFIG`: Sentinel keeps its users in its own config file.
async fn flush_sentinel_config(conn: &mut MultiplexedConnection, node: &str) -> Result<()> {
    let _: () = redis::cmd("SENTINEL")
        .arg("FLUSHCONFIG")
        .query_async(conn)
        .await
        .map_err(redis_err(node, "SENTINEL FLUSHCONFIG"))?;
    Ok(())
}

/// Whether `ACL DRYRUN` lets `user` run `args` (`OK`, or the reason it may not).
async fn dryrun_allows(
    conn: &mut MultiplexedConnection,
    node: &str,
    user: &str,
    args: &[&str],
) -> Result<bool> {
    let v: Value = redis::cmd("ACL")
        .arg("DRYRUN")
        .arg(user)
        .arg(args)
        .query_async(conn)
        .await
        .map_err(redis_err(node, "ACL DRYRUN"))?;
    Ok(matches!(v, Value::Okay) || value_to_string(&v).is_some_and(|s| s == "OK"))
}

/// The `ACL SETUSER` arguments of a site user on a Sentinel (after the user name). Pure.
pub fn sentinel_acl_rules(password: &SitePassword) -> Vec<String> {
    let mut rules = vec![
        "reset".to_owned(),
        "on".to_owned(),
        format!("#{}", password.sha256_hex()),
    ];
    rules.extend(SENTINEL_SITE_RULES.split(' ').map(str::to_owned));
    rules
}

/// The `ACL SETUSER` arguments of a site user (after the user name). Pure.
pub fn site_acl_rules(id: &SiteResourceId, password: &SitePassword) -> Vec<String> {
    let prefix = id.redis_prefix();
    let mut rules = vec![
        "reset".to_owned(),
        "on".to_owned(),
        format!("#{}", password.sha256_hex()),
        format!("~{prefix}*"),
        format!("&{prefix}*"),
    ];
    rules.extend(SITE_COMMAND_RULES.split(' ').map(str::to_owned));
    rules
}

fn value_to_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn value_to_strings(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) | Value::Set(items) => {
            items.iter().filter_map(value_to_string).collect()
        }
        other => value_to_string(other).into_iter().collect(),
    }
}

/// The fields of `ACL GETUSER` we compare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclUser {
    pub flags: Vec<String>,
    pub passwords: Vec<String>,
    pub commands: String,
    pub keys: String,
    pub channels: String,
}

/// Parses the reply of `ACL GETUSER` (RESP2 flat key/value array, or RESP3 map).
pub fn parse_acl_getuser(v: &Value) -> Option<AclUser> {
    let pairs: Vec<(String, &Value)> = match v {
        Value::Nil => return None,
        Value::Array(items) => items
            .chunks(2)
            .filter_map(|c| match c {
                [k, v] => value_to_string(k).map(|k| (k, v)),
                _ => None,
            })
            .collect(),
        Value::Map(items) => items
            .iter()
            .filter_map(|(k, v)| value_to_string(k).map(|k| (k, v)))
            .collect(),
        _ => return None,
    };
    let mut user = AclUser::default();
    for (k, v) in pairs {
        match k.as_str() {
            "flags" => user.flags = value_to_strings(v),
            "passwords" => user.passwords = value_to_strings(v),
            "commands" => user.commands = value_to_string(v).unwrap_or_default(),
            "keys" => user.keys = value_to_strings(v).join(" "),
            "channels" => user.channels = value_to_strings(v).join(" "),
            _ => {}
        }
    }
    Some(user)
}

/// Whether a user read back is exactly the site user. Pure.
pub fn acl_user_converged(
    id: &SiteResourceId,
    password: Option<&SitePassword>,
    user: &AclUser,
) -> bool {
    let prefix = id.redis_prefix();
    let password_ok = match password {
        Some(p) => user.passwords == [p.sha256_hex()],
        None => user.passwords.len() == 1,
    };
    user.flags.iter().any(|f| f == "on")
        && !user.flags.iter().any(|f| f == "nopass" || f == "allkeys")
        && password_ok
        && user.keys == format!("~{prefix}*")
        && user.channels == format!("&{prefix}*")
        && commands_match(&user.commands)
}

impl RedisSentinelDriver {
    pub fn new(config: &RedisConfig) -> Result<Self> {
        if config.sentinels.is_empty() {
            return Err(Error::invalid("redis.sentinels", "at least one sentinel"));
        }
        for s in &config.sentinels {
            split_addr(s)?;
        }
        Ok(Self {
            sentinels: config.sentinels.clone(),
            master_name: config.master_name.clone(),
            admin_user: config.admin_user.clone(),
            admin_password: config.admin_password.clone(),
            sentinel_user: config.sentinel_user.clone(),
            sentinel_password: config.sentinel_password.clone(),
            unlink_batch: config.unlink_batch.max(1),
        })
    }

    async fn node(&self, addr: &str) -> Result<MultiplexedConnection> {
        connect(
            addr,
            self.admin_user.as_deref(),
            self.admin_password.as_ref(),
        )
        .await
    }

    async fn sentinel(&self, addr: &str) -> Result<MultiplexedConnection> {
        connect(
            addr,
            self.sentinel_user.as_deref(),
            self.sentinel_password.as_ref(),
        )
        .await
    }

    /// Applies the site's discovery-only user on every Sentinel that answers, all at once
    /// (one that does not is reported unreachable; the reconciler applies it when it is
    /// back). Writes only: `ACL SETUSER` and `SENTINEL FLUSHCONFIG` in one pipeline per
    /// Sentinel; reading back is [`SiteCache::observe_site_cache`]'s.
    async fn ensure_on_sentinels(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> Result<Vec<NodeAclState>> {
        let rules = sentinel_acl_rules(password);
        let name = id.resource_name();
        let apply = |node: &String| {
            let (rules, name) = (&rules, &name);
            let node = node.clone();
            async move {
                let mut conn = match self.sentinel(&node).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(sentinel = %node, error = %e, "sentinel unreachable");
                        return Ok(Self::sentinel_state(&node, None));
                    }
                };
                let _: () = redis::pipe()
                    .cmd("ACL")
                    .arg("SETUSER")
                    .arg(name)
                    .arg(rules)
                    .ignore()
                    .cmd("SENTINEL")
                    .arg("FLUSHCONFIG")
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err(&node, "ACL SETUSER, SENTINEL FLUSHCONFIG"))?;
                Ok(NodeAclState {
                    node,
                    role: NodeRole::Sentinel,
                    reachable: true,
                    user_present: true,
                    converged: true,
                    saved: Some(true),
                })
            }
        };
        futures::future::join_all(self.sentinels.iter().map(apply))
            .await
            .into_iter()
            .collect()
    }

    /// Applies the site user on one data node: `ACL SETUSER` and the node's `aclfile` in
    /// one pipeline, then `ACL SAVE` where it has one. Writes only (see
    /// [`SiteCache::ensure_site_cache`]).
    async fn ensure_on_node(
        &self,
        node: String,
        role: NodeRole,
        name: &str,
        rules: &[String],
    ) -> Result<NodeAclState> {
        let mut conn = self.node(&node).await?;
        let ((), aclfile): ((), Vec<String>) = redis::pipe()
            .cmd("ACL")
            .arg("SETUSER")
            .arg(name)
            .arg(rules)
            .cmd("CONFIG")
            .arg("GET")
            .arg("aclfile")
            .query_async(&mut conn)
            .await
            .map_err(redis_err(&node, "ACL SETUSER, CONFIG GET aclfile"))?;
        let saved = if aclfile.get(1).is_none_or(|f| f.is_empty()) {
            tracing::debug!(node = %node, "no aclfile: ACL kept in memory only");
            None
        } else {
            let _: () = redis::cmd("ACL")
                .arg("SAVE")
                .query_async(&mut conn)
                .await
                .map_err(redis_err(&node, "ACL SAVE"))?;
            Some(true)
        };
        Ok(NodeAclState {
            node,
            role,
            reachable: true,
            user_present: true,
            converged: true,
            saved,
        })
    }

    /// The site's user on one Sentinel: present, on, its password, and allowed to find
    /// the master but not to change Sentinel or read its state (`ACL DRYRUN`: Sentinel
    /// rewrites the rules into its own command categories, so they are checked by what
    /// they allow, not by their text).
    async fn observe_on_sentinel(
        &self,
        conn: &mut MultiplexedConnection,
        node: &str,
        id: &SiteResourceId,
        password: Option<&SitePassword>,
    ) -> Result<NodeAclState> {
        let Some(user) = Self::read_user(conn, node, id).await? else {
            return Ok(Self::sentinel_state(node, Some(false)));
        };
        let password_ok = match password {
            Some(p) => user.passwords == [p.sha256_hex()],
            None => user.passwords.len() == 1,
        };
        let flags_ok = user.flags.iter().any(|f| f == "on")
            && !user.flags.iter().any(|f| f == "nopass" || f == "allkeys");
        let name = id.resource_name();
        let finds_master = dryrun_allows(
            conn,
            node,
            &name,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", "x"],
        )
        .await?;
        let mut denied = true;
        for probe in [
            &["SENTINEL", "SET", "x", "down-after-milliseconds", "1"][..],
            &["SENTINEL", "MASTERS"],
            &["SENTINEL", "RESET", "*"],
            &["ACL", "LIST"],
            &["CLIENT", "LIST"],
            &["INFO"],
        ] {
            denied &= !dryrun_allows(conn, node, &name, probe).await?;
        }
        Ok(NodeAclState {
            node: node.to_owned(),
            role: NodeRole::Sentinel,
            reachable: true,
            user_present: true,
            converged: password_ok && flags_ok && finds_master && denied,
            saved: None,
        })
    }

    fn sentinel_state(node: &str, present: Option<bool>) -> NodeAclState {
        NodeAclState {
            node: node.to_owned(),
            role: NodeRole::Sentinel,
            reachable: present.is_some(),
            user_present: present.unwrap_or(false),
            converged: false,
            saved: None,
        }
    }

    /// Asks the Sentinels, in order, for the master and its replicas.
    pub async fn topology(&self) -> Result<Topology> {
        let mut last_err = None;
        for sentinel in &self.sentinels {
            match self.topology_from(sentinel).await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    tracing::warn!(sentinel = %sentinel, error = %e, "sentinel did not answer");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::unexpected("redis", "no sentinel configured")))
    }

    async fn topology_from(&self, sentinel: &str) -> Result<Topology> {
        let mut conn = self.sentinel(sentinel).await?;
        let master: Option<(String, String)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await
            .map_err(redis_err(sentinel, "SENTINEL get-master-addr-by-name"))?;
        let (host, port) = master.ok_or_else(|| {
            Error::unexpected(
                "redis",
                format!(
                    "sentinel {sentinel} does not know master {}",
                    self.master_name
                ),
            )
        })?;
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("replicas")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await
            .map_err(redis_err(sentinel, "SENTINEL replicas"))?;
        let mut up = Vec::new();
        let mut down = Vec::new();
        for r in replicas {
            let (Some(ip), Some(port)) = (r.get("ip"), r.get("port")) else {
                continue;
            };
            let addr = format!("{ip}:{port}");
            let flags = r.get("flags").map(String::as_str).unwrap_or("");
            let is_down = flags
                .split(',')
                .any(|f| matches!(f, "s_down" | "o_down" | "disconnected"));
            if is_down {
                down.push(addr);
            } else {
                up.push(addr);
            }
        }
        up.sort();
        down.sort();
        Ok(Topology {
            master: format!("{host}:{port}"),
            replicas: up,
            down_replicas: down,
        })
    }

    fn nodes_of(t: &Topology) -> Vec<(String, NodeRole)> {
        std::iter::once((t.master.clone(), NodeRole::Master))
            .chain(t.replicas.iter().map(|r| (r.clone(), NodeRole::Replica)))
            .collect()
    }

    fn unreachable(t: &Topology) -> impl Iterator<Item = NodeAclState> + '_ {
        t.down_replicas.iter().map(|node| NodeAclState {
            node: node.clone(),
            role: NodeRole::Replica,
            reachable: false,
            user_present: false,
            converged: false,
            saved: None,
        })
    }

    async fn read_user(
        conn: &mut MultiplexedConnection,
        node: &str,
        id: &SiteResourceId,
    ) -> Result<Option<AclUser>> {
        let v: Value = redis::cmd("ACL")
            .arg("GETUSER")
            .arg(id.resource_name())
            .query_async(conn)
            .await
            .map_err(redis_err(node, "ACL GETUSER"))?;
        Ok(parse_acl_getuser(&v))
    }

    /// `ACL SAVE` if the node has an aclfile; `None` if it has none.
    async fn save_acl(conn: &mut MultiplexedConnection, node: &str) -> Result<Option<bool>> {
        let aclfile: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("aclfile")
            .query_async(conn)
            .await
            .map_err(redis_err(node, "CONFIG GET aclfile"))?;
        if aclfile.get(1).is_none_or(|f| f.is_empty()) {
            tracing::debug!(node = %node, "no aclfile: ACL kept in memory only");
            return Ok(None);
        }
        let _: () = redis::cmd("ACL")
            .arg("SAVE")
            .query_async(conn)
            .await
            .map_err(redis_err(node, "ACL SAVE"))?;
        Ok(Some(true))
    }

    /// Deletes the site's object-cache keys (`SCAN MATCH wp_<id>:*` on the master,
    /// `UNLINK` in batches) and leaves its user as it is: what a restore does, so that
    /// WordPress reads no entry cached from the database it replaced. Returns how many
    /// keys went.
    pub async fn flush_site_keys(&self, id: &SiteResourceId) -> Result<u64> {
        let t = self.topology().await?;
        let deleted = self.delete_keys(&t.master, id).await?;
        tracing::info!(site = %id, keys_deleted = deleted, "site's object-cache keys flushed");
        Ok(deleted)
    }

    async fn delete_keys(&self, master: &str, id: &SiteResourceId) -> Result<u64> {
        // The id is [a-z2-7]: no glob metacharacters in the pattern.
        let pattern = format!("{}*", id.redis_prefix());
        let mut conn = self.node(master).await?;
        let mut cursor: u64 = 0;
        let mut deleted: u64 = 0;
        let mut batch: Vec<String> = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(redis_err(master, "SCAN"))?;
            batch.extend(keys);
            while batch.len() >= self.unlink_batch || (next == 0 && !batch.is_empty()) {
                let take = batch.len().min(self.unlink_batch);
                let chunk: Vec<String> = batch.drain(..take).collect();
                let n: u64 = redis::cmd("UNLINK")
                    .arg(&chunk)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_err(master, "UNLINK"))?;
                deleted += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(deleted)
    }

    /// Ids of every `wp_<id>` ACL user on the master (orphan detection).
    pub async fn list_site_ids(&self) -> Result<BTreeSet<SiteResourceId>> {
        let t = self.topology().await?;
        let mut conn = self.node(&t.master).await?;
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut conn)
            .await
            .map_err(redis_err(&t.master, "ACL USERS"))?;
        Ok(users
            .iter()
            .filter_map(|u| SiteResourceId::from_resource_name(u))
            .collect())
    }
}

impl SiteCache for RedisSentinelDriver {
    async fn ensure_site_cache(
        &self,
        id: &SiteResourceId,
        password: &SitePassword,
    ) -> Result<CacheState> {
        // Writes only, every node at once: the Sentinels while the topology is asked
        // for, then every data node. `ACL SETUSER … reset …` replaces the whole user, so
        // nothing needs reading first; Redis refuses a rule it does not take, so a
        // success is the user as given. Reading back (`ACL GETUSER`, `ACL DRYRUN` on the
        // Sentinels) is `observe_site_cache`'s, which the reconciler runs before it
        // ensures; the read-backs made this step 4 to 5 times the floor's
        // (docs/benchmarks.md, provisioning). Convergence does not weaken: a saga
        // interrupted here finds the step `running` and runs it whole again.
        let (topology, sentinels) =
            tokio::join!(self.topology(), self.ensure_on_sentinels(id, password));
        let t = topology?;
        let sentinels = sentinels?;
        let rules = site_acl_rules(id, password);
        let name = id.resource_name();
        let mut nodes: Vec<NodeAclState> = futures::future::join_all(
            Self::nodes_of(&t)
                .into_iter()
                .map(|(node, role)| self.ensure_on_node(node, role, &name, &rules)),
        )
        .await
        .into_iter()
        .collect::<Result<_>>()?;
        nodes.extend(Self::unreachable(&t));
        nodes.extend(sentinels);
        tracing::info!(
            site = %id,
            nodes = nodes.len(),
            unreachable = nodes.iter().filter(|n| !n.reachable).count(),
            "redis ACL user applied"
        );
        Ok(CacheState { nodes })
    }

    async fn observe_site_cache(
        &self,
        id: &SiteResourceId,
        password: Option<&SitePassword>,
    ) -> Result<CacheState> {
        let t = self.topology().await?;
        let mut nodes = Vec::new();
        for (node, role) in Self::nodes_of(&t) {
            let state = match self.node(&node).await {
                Ok(mut conn) => {
                    let user = Self::read_user(&mut conn, &node, id).await?;
                    NodeAclState {
                        node,
                        role,
                        reachable: true,
                        user_present: user.is_some(),
                        converged: user
                            .as_ref()
                            .is_some_and(|u| acl_user_converged(id, password, u)),
                        saved: None,
                    }
                }
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "redis node unreachable");
                    NodeAclState {
                        node,
                        role,
                        reachable: false,
                        user_present: false,
                        converged: false,
                        saved: None,
                    }
                }
            };
            nodes.push(state);
        }
        nodes.extend(Self::unreachable(&t));
        for node in &self.sentinels {
            let state = match self.sentinel(node).await {
                Ok(mut conn) => {
                    self.observe_on_sentinel(&mut conn, node, id, password)
                        .await?
                }
                Err(e) => {
                    tracing::warn!(sentinel = %node, error = %e, "sentinel unreachable");
                    Self::sentinel_state(node, None)
                }
            };
            nodes.push(state);
        }
        Ok(CacheState { nodes })
    }

    async fn remove_site_cache(&self, id: &SiteResourceId) -> Result<CacheRemoval> {
        let t = self.topology().await?;
        let mut touched = Vec::new();
        // The user first, everywhere: DELUSER also closes its connections, so no new
        // keys appear while the old ones are deleted.
        for (node, _) in Self::nodes_of(&t) {
            let mut conn = self.node(&node).await?;
            let _: i64 = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(id.resource_name())
                .query_async(&mut conn)
                .await
                .map_err(redis_err(&node, "ACL DELUSER"))?;
            Self::save_acl(&mut conn, &node).await?;
            touched.push(node);
        }
        // A Sentinel that does not answer keeps a discovery-only user until the next
        // removal of the same id; it blocks no delete.
        for node in &self.sentinels {
            let mut conn = match self.sentinel(node).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(sentinel = %node, error = %e, "sentinel unreachable");
                    continue;
                }
            };
            let _: i64 = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(id.resource_name())
                .query_async(&mut conn)
                .await
                .map_err(redis_err(node, "ACL DELUSER"))?;
            flush_sentinel_config(&mut conn, node).await?;
            touched.push(node.clone());
        }
        let deleted = self.delete_keys(&t.master, id).await?;
        tracing::info!(site = %id, keys_deleted = deleted, "redis ACL user and keys removed");
        Ok(CacheRemoval {
            nodes: touched,
            keys_deleted: deleted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_exact() {
        let id = SiteResourceId::parse("k3v7q2m6xa").unwrap_or_else(|e| panic!("{e}"));
        let pw = SitePassword::parse("abcdefghijklmnopqrstuvwxyz012345")
            .unwrap_or_else(|e| panic!("{e}"));
        let rules = site_acl_rules(&id, &pw);
        assert_eq!(
            rules.join(" "),
            format!(
                "reset on #{} ~wp_k3v7q2m6xa:* &wp_k3v7q2m6xa:* {SITE_COMMAND_RULES}",
                pw.sha256_hex()
            )
        );
        assert!(!rules.iter().any(|r| r.contains(pw.expose())));
    }

    #[test]
    fn commands_read_back() {
        // As Redis 7.0.15 reads it back (reordered, `+acl|whoami` dropped).
        let read_back = "+@all -@dangerous -@scripting -pubsub -randomkey -memory \
                         +memory|usage -client +client|id +client|getname +client|setname \
                         -scan -dbsize -select -move -copy";
        assert!(commands_match(read_back));
        assert!(commands_match(SITE_COMMAND_RULES));
        // The rules of earlier releases are drift: the reconciler applies the new ones.
        assert!(!commands_match(
            "+@all -@dangerous -dbsize -scan -randomkey"
        ));
        assert!(!commands_match(&read_back.replace(" -@scripting", "")));
        assert!(!commands_match(&format!("{read_back} +flushall")));
        assert!(!commands_match(&format!(
            "-@dangerous +@all {}",
            read_back.trim_start_matches("+@all -@dangerous ")
        )));
    }
}

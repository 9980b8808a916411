//! Cache purges, from the site's must-use plugin to the control plane.
//!
//! The plugin (`wp-content/mu-plugins/pressdock-cache.php`, [`crate::render::PURGE_PLUGIN_PHP`])
//! collects during a request which pages a change made stale and, at shutdown, posts them
//! to the agent: `POST /purge` on the agent's port, from loopback only, body
//! `{"paths": ["/hello-world/", "/"], "all": false}` ([`parse_local`]). The agent answers
//! `202` at once and merges the purge into a [`PurgeQueue`]: one pending set of paths,
//! bounded (over [`MAX_PURGE_PATHS`] it becomes `all`), so a burst of edits costs one
//! request and a slow control plane costs no memory.
//!
//! The forwarder ([`run`]) takes what is pending and posts it as a [`PurgeRequest`] to
//! `{control_url}/v1/agent/purge` with the agent token, one request in flight. What
//! arrives meanwhile waits and goes in the next request. `429`, `5xx` and transport errors
//! put the batch back (merged with newer purges) and retry with backoff; `401`, `404`,
//! `422` and other client errors drop it with a log line (retrying cannot help). At stop
//! it makes one last attempt with what is pending. Counted in
//! `pressdock_agent_purges_total{result="sent|failed|dropped"}`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use tokio::sync::{Notify, watch};

use crate::agent::Shared;
use crate::backoff::Backoff;
use crate::protocol::{
    MAX_PURGE_PATHS, PURGE_PATH, PurgePath, PurgePathError, PurgeRequest, PurgeResponse,
};
use crate::supervise::stopped;

/// A set of pages to purge: some paths, or everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Purge {
    all: bool,
    paths: BTreeSet<PurgePath>,
}

impl Purge {
    pub fn all() -> Self {
        Self {
            all: true,
            paths: BTreeSet::new(),
        }
    }

    /// These paths; more than [`MAX_PURGE_PATHS`] distinct ones become `all`.
    pub fn paths(paths: impl IntoIterator<Item = PurgePath>) -> Self {
        let mut p = Self::default();
        p.paths.extend(paths);
        p.cap();
        p
    }

    pub fn is_all(&self) -> bool {
        self.all
    }

    pub fn path_count(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        !self.all && self.paths.is_empty()
    }

    /// Adds `other`: paths are merged, `all` wins, over the cap is `all`.
    pub fn merge(&mut self, other: Purge) {
        if self.all || other.all {
            *self = Self::all();
            return;
        }
        self.paths.extend(other.paths);
        self.cap();
    }

    fn cap(&mut self) {
        if self.paths.len() > MAX_PURGE_PATHS {
            *self = Self::all();
        }
    }

    /// The body for the control plane (no paths with `all`).
    pub fn into_request(self, site_id: &str) -> PurgeRequest {
        PurgeRequest {
            site_id: site_id.to_owned(),
            paths: self.paths.into_iter().map(PurgePath::into_string).collect(),
            all: self.all,
        }
    }
}

/// Why the plugin's body was refused.
#[derive(Debug)]
pub enum LocalPurgeError {
    /// Not the JSON object `{"paths": [...], "all": bool}` (400).
    Body(serde_json::Error),
    /// A path breaks the rules of [`PurgePath`] (422); nothing of the body is queued.
    Path { index: usize, error: PurgePathError },
}

impl std::fmt::Display for LocalPurgeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Body(_) => f.write_str("the body is not {\"paths\": [string], \"all\": bool}"),
            Self::Path { index, error } => write!(f, "paths[{index}]: {error}"),
        }
    }
}

impl std::error::Error for LocalPurgeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Body(e) => Some(e),
            Self::Path { error, .. } => Some(error),
        }
    }
}

/// The plugin's body (`POST /purge` on the agent).
#[derive(Debug, Deserialize)]
struct LocalPurge {
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    all: bool,
}

/// Parses the plugin's body: every path valid, or the whole body refused.
pub fn parse_local(body: &[u8]) -> Result<Purge, LocalPurgeError> {
    let b: LocalPurge = serde_json::from_slice(body).map_err(LocalPurgeError::Body)?;
    let paths = b
        .paths
        .iter()
        .enumerate()
        .map(|(index, p)| {
            PurgePath::parse(p).map_err(|error| LocalPurgeError::Path { index, error })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if b.all {
        Purge::all()
    } else {
        Purge::paths(paths)
    })
}

/// The pending purges: one merged [`Purge`], so bounded by construction.
#[derive(Debug, Default)]
pub struct PurgeQueue {
    pending: Mutex<Purge>,
    wake: Notify,
}

impl PurgeQueue {
    /// Merges `p` into what is pending and wakes the forwarder.
    pub fn push(&self, p: Purge) {
        if p.is_empty() {
            return;
        }
        if let Ok(mut g) = self.pending.lock() {
            g.merge(p);
        }
        self.wake.notify_one();
    }

    /// Everything pending now (possibly nothing).
    pub fn take(&self) -> Purge {
        self.pending
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default()
    }

    /// Waits until something is pending and takes it.
    pub async fn next(&self) -> Purge {
        loop {
            let p = self.take();
            if !p.is_empty() {
                return p;
            }
            // A push between take and here left a permit: this returns at once.
            self.wake.notified().await;
        }
    }
}

/// What became of one request to the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `2xx`; the number of bans when the body said.
    Sent(Option<u32>),
    /// Retrying may help (`408`, `429`, `5xx`, no answer).
    Retry(String),
    /// Retrying cannot help (`401`, `404`, `422`, other `4xx`).
    Drop(StatusCode),
}

/// How the forwarder treats an answer of this status (the body is read for `2xx` only).
pub fn classify(status: StatusCode) -> Outcome {
    if status.is_success() {
        Outcome::Sent(None)
    } else if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        Outcome::Retry(format!("control plane answered {status}"))
    } else {
        Outcome::Drop(status)
    }
}

async fn send(client: &reqwest::Client, url: &str, token: &str, req: &PurgeRequest) -> Outcome {
    let resp = match client.post(url).bearer_auth(token).json(req).send().await {
        Ok(r) => r,
        // The error names the URL, never the header.
        Err(e) => return Outcome::Retry(format!("{:#}", anyhow::Error::from(e))),
    };
    match classify(resp.status()) {
        Outcome::Sent(_) => {
            Outcome::Sent(resp.json::<PurgeResponse>().await.ok().map(|r| r.banned))
        }
        other => other,
    }
}

/// Forwards the queued purges until `stop`, then makes one last attempt.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let s = &shared.settings;
    let queue = shared.purges.clone();
    let count = |r: &Outcome| {
        shared.metrics.with(|m| match r {
            Outcome::Sent(_) => m.purges_sent += 1,
            Outcome::Retry(_) => m.purges_failed += 1,
            Outcome::Drop(_) => m.purges_dropped += 1,
        });
    };
    let Some(base) = s.control_url.clone() else {
        // No control plane (tests, a broken spec): purges have nowhere to go.
        loop {
            tokio::select! {
                p = queue.next() => {
                    shared.metrics.with(|m| m.purges_dropped += 1);
                    tracing::debug!(paths = p.path_count(), all = p.is_all(),
                        "no control-plane URL: purge dropped");
                }
                _ = stopped(&mut stop) => return,
            }
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("pressdock-agent/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client; not forwarding purges");
            return;
        }
    };
    let url = format!("{base}{PURGE_PATH}");
    let token = s.agent_token.expose();
    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(60),
        Duration::MAX,
    );
    loop {
        let batch = tokio::select! {
            p = queue.next() => p,
            _ = stopped(&mut stop) => break,
        };
        let (paths, all) = (batch.path_count(), batch.is_all());
        let outcome = send(
            &client,
            &url,
            token,
            &batch.clone().into_request(&s.site_id),
        )
        .await;
        count(&outcome);
        match outcome {
            Outcome::Sent(banned) => {
                backoff.reset();
                tracing::info!(paths, all, banned, "purge sent");
            }
            Outcome::Drop(status) => {
                tracing::warn!(
                    paths,
                    all,
                    status = status.as_u16(),
                    "purge refused; dropped"
                );
            }
            Outcome::Retry(error) => {
                queue.push(batch);
                let delay = backoff.next_delay(Duration::ZERO);
                tracing::warn!(
                    paths,
                    all,
                    error,
                    retry_ms = delay.as_millis() as u64,
                    "purge failed"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut stop) => break,
                }
            }
        }
    }
    // Stopping: the last requests of the site may just have queued something.
    let last = queue.take();
    if last.is_empty() {
        return;
    }
    let (paths, all) = (last.path_count(), last.is_all());
    let outcome = tokio::time::timeout(
        Duration::from_secs(2),
        send(&client, &url, token, &last.into_request(&s.site_id)),
    )
    .await
    .unwrap_or_else(|_| Outcome::Retry("no answer within 2 s".into()));
    match outcome {
        Outcome::Sent(banned) => {
            count(&Outcome::Sent(banned));
            tracing::info!(paths, all, banned, "purge sent at stop");
        }
        Outcome::Drop(status) => {
            count(&Outcome::Drop(status));
            tracing::warn!(
                paths,
                all,
                status = status.as_u16(),
                "purge refused; dropped"
            );
        }
        Outcome::Retry(error) => {
            // No time left to retry: lost with this task.
            count(&Outcome::Drop(StatusCode::SERVICE_UNAVAILABLE));
            tracing::warn!(paths, all, error, "purge failed at stop; dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PurgePath {
        PurgePath::parse(s).expect("path")
    }

    #[test]
    fn merging_dedups_lets_all_win_and_caps_at_100() {
        let mut a = Purge::paths([p("/a/"), p("/")]);
        a.merge(Purge::paths([p("/"), p("/feed/")]));
        assert_eq!(
            a.clone().into_request("s1").paths,
            vec!["/", "/a/", "/feed/"]
        );
        let mut b = a.clone();
        b.merge(Purge::all());
        assert!(b.is_all() && b.path_count() == 0);
        b.merge(Purge::paths([p("/x/")]));
        assert!(b.is_all(), "all stays all");
        assert_eq!(b.into_request("s1").paths, Vec::<String>::new());

        let mut c = Purge::paths((0..MAX_PURGE_PATHS).map(|i| p(&format!("/{i}/"))));
        assert!(!c.is_all());
        assert_eq!(c.path_count(), MAX_PURGE_PATHS);
        c.merge(Purge::paths([p("/0/")]));
        assert!(!c.is_all(), "a known path adds nothing");
        c.merge(Purge::paths([p("/new/")]));
        assert!(c.is_all(), "101 paths: all");
    }

    #[test]
    fn local_bodies_are_checked_whole() {
        let ok =
            parse_local(br#"{"paths":["/hello-world/","/?p=5","/hello-world/"]}"#).expect("ok");
        assert_eq!(ok.path_count(), 2);
        assert!(!ok.is_all());
        assert!(
            parse_local(br#"{"all":true,"paths":["/x"]}"#)
                .expect("all")
                .is_all()
        );
        let many: Vec<String> = (0..150).map(|i| format!("/{i}")).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "paths": many })).expect("json");
        assert!(parse_local(&body).expect("many").is_all());
        match parse_local(br#"{"paths":["/ok","no-slash"]}"#) {
            Err(LocalPurgeError::Path { index: 1, error }) => {
                assert_eq!(error, PurgePathError::NotAbsolute)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse_local(b"paths=/x"),
            Err(LocalPurgeError::Body(_))
        ));
        assert!(matches!(
            parse_local(br#"{"paths":"/x"}"#),
            Err(LocalPurgeError::Body(_))
        ));
        assert!(parse_local(b"{}").expect("empty").is_empty());
    }

    #[test]
    fn statuses_map_to_send_retry_or_drop() {
        assert_eq!(classify(StatusCode::ACCEPTED), Outcome::Sent(None));
        for s in [401, 404, 422, 400, 403] {
            let s = StatusCode::from_u16(s).expect("status");
            assert_eq!(classify(s), Outcome::Drop(s));
        }
        for s in [429, 500, 502, 503, 408] {
            let s = StatusCode::from_u16(s).expect("status");
            assert!(matches!(classify(s), Outcome::Retry(_)), "{s}");
        }
    }

    #[tokio::test]
    async fn the_queue_coalesces_what_arrives_between_takes() {
        let q = Arc::new(PurgeQueue::default());
        q.push(Purge::paths([p("/a/")]));
        q.push(Purge::paths([p("/b/"), p("/a/")]));
        q.push(Purge::default());
        let first = q.next().await;
        assert_eq!(first.into_request("s").paths, vec!["/a/", "/b/"]);
        assert!(q.take().is_empty());
        // A waiting forwarder wakes on the next push.
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await }
        });
        tokio::task::yield_now().await;
        q.push(Purge::all());
        let got = tokio::time::timeout(Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .expect("join");
        assert!(got.is_all());
    }
}

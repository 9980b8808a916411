//! Waiting for the node's network guard before any PHP runs.
//!
//! On a cluster whose workers run `pressdock-infra guard`, the platform sets
//! `PRESSDOCK_NET_GUARD_WAIT_SECS` in every site's spec. The guard confines a new task's
//! network namespace within a fraction of a second of its start, then writes [`MARK`] into
//! the container (root's `/run`: the tenant's code can neither write nor fake it, and it
//! has not run yet). Until the mark is there the agent starts nothing that runs tenant code
//! (the installer, which loads must-use plugins; php-fpm): a malicious plugin never runs in
//! an unconfined task. No mark within the bound: the agent fails, and swarm starts a new
//! task (closed, not open, when the guard is down).
use anyhow::{Result, bail};
use std::path::Path;
use std::time::{Duration, Instant};

/// Written by the guard (`infra::guard::MARK`, the same path).
pub const MARK: &str = "/run/pressdock-net-guard";

/// The bound from the environment's `PRESSDOCK_NET_GUARD_WAIT_SECS`: `None` when unset or
/// 0 (no guard on this cluster), an error naming the variable when it is not a number.
pub fn wait_from(value: Option<&str>) -> Result<Option<Duration>> {
    match value.map(str::trim) {
        None | Some("") | Some("0") => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(n) => Ok(Some(Duration::from_secs(u64::from(n)))),
            Err(_) => bail!("PRESSDOCK_NET_GUARD_WAIT_SECS: {v:?} is not a number of seconds"),
        },
    }
}

/// Waits until `mark` exists, up to `within`; returns how long it took.
pub async fn wait_for_mark(mark: &Path, within: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        if mark.exists() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() >= within {
            bail!(
                "this task was not confined by the node's network guard within {}s ({} is \
                 missing): is `pressdock-infra guard` running on this node? No PHP runs \
                 unconfined",
                within.as_secs(),
                mark.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_comes_from_the_environment() {
        assert_eq!(wait_from(None).ok(), Some(None));
        assert_eq!(wait_from(Some("0")).ok(), Some(None));
        assert_eq!(
            wait_from(Some("30")).ok(),
            Some(Some(Duration::from_secs(30)))
        );
        let e = wait_from(Some("soon")).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("PRESSDOCK_NET_GUARD_WAIT_SECS")));
    }

    #[tokio::test]
    async fn waits_for_the_mark_and_fails_without_it() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mark = dir.path().join("pressdock-net-guard");
        let e = wait_for_mark(&mark, Duration::from_millis(100)).await;
        assert!(e.is_err_and(|e| e.to_string().contains("not confined")));
        let m = mark.clone();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            std::fs::write(&m, "confined\n")
        });
        assert!(wait_for_mark(&mark, Duration::from_secs(30)).await.is_ok());
        assert!(writer.await.is_ok_and(|r| r.is_ok()));
    }
}

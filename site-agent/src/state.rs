//! The desired config the agent holds, persisted so that a restarted agent keeps it and
//! refuses a stale platform replica's older generation (DESIGN.md, "Agent protocol").

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::protocol::DesiredConfig;
use crate::render::write_atomic;

/// What to do with an offered desired config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Newer than what is held (or nothing is held): persist and apply.
    Accept,
    /// The generation held: nothing to do.
    Same,
    /// Older than what is held: refuse.
    Stale { held: u64 },
}

/// The rule, as a pure function.
pub fn decide(held: Option<u64>, offered: u64) -> Decision {
    match held {
        None => Decision::Accept,
        Some(h) if offered > h => Decision::Accept,
        Some(h) if offered == h => Decision::Same,
        Some(h) => Decision::Stale { held: h },
    }
}

/// The persisted desired config (`<state_dir>/desired.json`).
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    held: Option<DesiredConfig>,
}

impl StateStore {
    /// Loads what was persisted; a missing file is an empty store, a corrupt one an error
    /// (the agent then starts empty and logs it: the platform sends the config again).
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("desired.json");
        let held = match std::fs::read(&path) {
            Ok(bytes) => Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("parsing {}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self { path, held })
    }

    pub fn held(&self) -> Option<&DesiredConfig> {
        self.held.as_ref()
    }

    pub fn generation(&self) -> Option<u64> {
        self.held.as_ref().map(|d| d.generation)
    }

    /// Persists `offered` when [`decide`] accepts it (file first, then memory: a crash in
    /// between leaves the newer one on disk, which is what the platform wants).
    pub fn offer(&mut self, offered: DesiredConfig) -> Result<Decision> {
        let d = decide(self.generation(), offered.generation);
        if d == Decision::Accept {
            let json = serde_json::to_vec_pretty(&offered).context("serializing desired")?;
            write_atomic(&self.path, &json, 0o600)?;
            self.held = Some(offered);
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(generation: u64, max_children: u32) -> DesiredConfig {
        let mut d: DesiredConfig =
            serde_json::from_str(&format!(r#"{{"generation":{generation}}}"#)).expect("json");
        d.php.max_children = max_children;
        d
    }

    #[test]
    fn decide_accepts_newer_ignores_same_refuses_older() {
        assert_eq!(decide(None, 0), Decision::Accept);
        assert_eq!(decide(Some(3), 4), Decision::Accept);
        assert_eq!(decide(Some(3), 3), Decision::Same);
        assert_eq!(decide(Some(3), 2), Decision::Stale { held: 3 });
    }

    #[test]
    fn store_persists_across_reopen_and_refuses_older_generations() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = StateStore::open(dir.path()).expect("open");
        assert_eq!(s.generation(), None);
        assert_eq!(s.offer(cfg(5, 3)).expect("offer"), Decision::Accept);
        assert_eq!(
            s.offer(cfg(4, 9)).expect("offer"),
            Decision::Stale { held: 5 }
        );
        assert_eq!(s.offer(cfg(5, 9)).expect("offer"), Decision::Same);
        let mut again = StateStore::open(dir.path()).expect("reopen");
        assert_eq!(again.generation(), Some(5));
        assert_eq!(
            again.held().map(|d| d.php.max_children),
            Some(3),
            "older one not written"
        );
        assert_eq!(
            again.offer(cfg(2, 1)).expect("offer"),
            Decision::Stale { held: 5 }
        );
        assert_eq!(again.offer(cfg(6, 7)).expect("offer"), Decision::Accept);
        assert_eq!(
            StateStore::open(dir.path()).expect("reopen").generation(),
            Some(6)
        );
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("desired.json"), "{").expect("write");
        assert!(StateStore::open(dir.path()).is_err());
    }
}

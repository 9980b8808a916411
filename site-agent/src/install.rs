//! First start: WordPress installed by its own installer (`wp_install()`), run through
//! php-cli with the script [`crate::render::INSTALL_PHP`]; a marker on wp-content keeps a
//! restart (or the next task, on another worker) from running it again, and the script
//! itself checks `is_blog_installed()` so a lost marker never reinstalls.
//!
//! Also prepares wp-content: the Gluster directory starts empty, so the agent creates
//! `plugins`, `themes`, `uploads`, `mu-plugins` and links the themes bundled in the image.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;

use crate::config::{InstallSettings, Settings};
use crate::render::{INSTALL_PHP, write_atomic, write_atomic_owned};

/// uid/gid of www-data in Debian.
pub const WWW_DATA: u32 = 33;

/// What the install script printed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstallOutcome {
    pub result: String,
    #[serde(default)]
    pub user_id: Option<u64>,
}

/// Creates wp-content's directories (owned by www-data when run as root) and links the
/// themes of the image (`<wp_root>/wp-content/themes/*`) that the site lacks.
pub fn prepare_wp_content(s: &Settings) -> Result<()> {
    for sub in ["plugins", "themes", "uploads", "mu-plugins"] {
        let d = s.wp_content.join(sub);
        if !d.exists() {
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            // Not root (tests): leave the owner as it is.
            let _ = std::os::unix::fs::lchown(&d, Some(WWW_DATA), Some(WWW_DATA));
        }
    }
    let bundled = s.paths.wp_root.join("wp-content/themes");
    if let Ok(rd) = std::fs::read_dir(&bundled) {
        for e in rd.flatten() {
            let target = s.wp_content.join("themes").join(e.file_name());
            if std::fs::symlink_metadata(&target).is_err() && e.path().is_dir() {
                std::os::unix::fs::symlink(e.path(), &target)
                    .with_context(|| format!("linking {}", target.display()))?;
            }
        }
    }
    Ok(())
}

/// Runs the installer unless the marker says it ran; `Ok`: WordPress is installed
/// (`result`: `installed`, `already-installed`, or `marker` when it did not run).
pub async fn ensure_installed(s: &Settings, i: &InstallSettings) -> Result<InstallOutcome> {
    if s.install_marker().exists() {
        return Ok(InstallOutcome {
            result: "marker".into(),
            user_id: None,
        });
    }
    let password = i
        .admin_password
        .as_ref()
        .ok_or_else(|| anyhow!("no admin password (secret admin_password) to install with"))?;
    let script = s.paths.run_dir.join("install.php");
    write_atomic_owned(&script, INSTALL_PHP.as_bytes(), 0o640, Some((0, WWW_DATA)))?;
    let input = serde_json::json!({
        "abspath": s.paths.wp_root.display().to_string(),
        "host": s.primary_domain,
        "title": i.title,
        "admin_user": i.admin_user,
        "admin_email": i.admin_email,
        "admin_password": password.expose(),
    });
    let outcome = run_php(&s.php_cli, &script, input.to_string().as_bytes()).await?;
    let marker = serde_json::json!({"site_id": s.site_id, "result": outcome.result});
    write_atomic(&s.install_marker(), marker.to_string().as_bytes(), 0o644)?;
    Ok(outcome)
}

/// Runs the installer as www-data when the agent is root: it loads WordPress, and with it
/// the must-use plugins and drop-ins in wp-content, which the tenant's code can write (and
/// it can delete the marker to have the installer run again). As root that would be
/// tenant code with the agent's rights (the secret files, the capabilities).
async fn run_php(php: &str, script: &Path, stdin: &[u8]) -> Result<InstallOutcome> {
    let mut cmd = tokio::process::Command::new(php);
    if nix::unistd::geteuid().is_root() {
        // std drops the supplementary groups too when it changes the uid as root.
        cmd.uid(WWW_DATA).gid(WWW_DATA);
    }
    let mut child = cmd
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {php}"))?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(stdin)
            .await
            .context("writing the installer's input")?;
    }
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        child.wait_with_output(),
    )
    .await
    .map_err(|_| anyhow!("the installer ran over 120 s"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .and_then(|l| serde_json::from_str::<InstallOutcome>(l).ok());
    match parsed {
        Some(o)
            if out.status.success()
                && (o.result == "installed" || o.result == "already-installed") =>
        {
            Ok(o)
        }
        _ => {
            // WordPress prints its error pages as HTML; keep it short and secret-free
            // (the input went through stdin and is never echoed).
            let mut why: String = format!("{}{}", String::from_utf8_lossy(&out.stderr), stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            why.truncate(300);
            bail!("the installer failed ({}): {why}", out.status)
        }
    }
}

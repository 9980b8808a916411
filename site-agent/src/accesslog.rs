//! Receives nginx's access log: nginx sends each line as a syslog datagram to a Unix
//! socket of the agent (`access_log syslog:server=unix:…`, see `render_nginx_conf`), the
//! agent counts it into [`crate::metrics::Requests`]. Lost datagrams (agent busy) are
//! lost counts, never a blocked nginx.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::UnixDatagram;

use crate::metrics::{Metrics, parse_access_line};

/// Binds the socket (replacing a stale one) and counts lines until the task is dropped.
pub fn spawn(path: &Path, metrics: Arc<Metrics>) -> Result<tokio::task::JoinHandle<()>> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let sock = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // nginx's workers (www-data) write to it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            match sock.recv(&mut buf).await {
                Ok(n) => {
                    let line = String::from_utf8_lossy(&buf[..n]);
                    if let Some((status, secs, bytes)) = parse_access_line(&line) {
                        metrics.with(|m| m.requests.observe(status, secs, bytes));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "access log socket failed");
                    return;
                }
            }
        }
    }))
}

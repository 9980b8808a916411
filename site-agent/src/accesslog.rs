//! Receives nginx's access log: nginx sends each line as a syslog datagram to a Unix
//! socket of the agent (`access_log syslog:server=unix:…`, see `render_nginx_conf`), the
//! agent counts it into [`crate::metrics::Requests`]. Lost datagrams (agent busy) are
//! lost counts, never a blocked nginx.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::UnixDatagram;

use crate::metrics::{Metrics, Requests, parse_access_line};

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
            // Wait for one datagram, then drain what is queued without waiting and count
            // the batch under one lock: under load the queue (net.unix.max_dgram_qlen
            // datagrams) empties faster than one wake-up per line would.
            let mut batch = Requests::default();
            match sock.recv(&mut buf).await {
                Ok(n) => count(&mut batch, &buf[..n]),
                Err(e) => {
                    tracing::warn!(error = %e, "access log socket failed");
                    return;
                }
            }
            for _ in 0..1024 {
                match sock.try_recv(&mut buf) {
                    Ok(n) => count(&mut batch, &buf[..n]),
                    Err(_) => break,
                }
            }
            metrics.with(|m| m.requests.merge(&batch));
        }
    }))
}

fn count(batch: &mut Requests, datagram: &[u8]) {
    let line = String::from_utf8_lossy(datagram);
    if let Some((status, secs, bytes)) = parse_access_line(&line) {
        batch.observe(status, secs, bytes);
    }
}

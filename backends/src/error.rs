//! The crate's error: which backend, what we were doing (context), and the client's
//! error as `source` (never repeated in `Display`; log the whole chain). No variant
//! carries a password: commands that hold secrets are described, not echoed.

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A value failed validation before reaching any server.
    #[error("invalid {what}: {reason}")]
    Invalid {
        what: &'static str,
        reason: &'static str,
    },
    /// MariaDB/Galera or the ProxySQL admin interface.
    #[error("{backend}: {context}")]
    Mysql {
        backend: &'static str,
        context: String,
        #[source]
        source: mysql_async::Error,
    },
    /// A Redis node or Sentinel.
    #[error("redis {node}: {context}")]
    Redis {
        node: String,
        context: String,
        #[source]
        source: ::redis::RedisError,
    },
    /// The Varnish CLI answered something other than 200, or the protocol broke.
    #[error("varnish {instance}: {context}")]
    Varnish { instance: String, context: String },
    /// Docker Engine API (swarm).
    #[error("swarm: {context}")]
    Docker {
        context: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The `gluster` CLI failed (non-zero exit); `stderr` is trimmed, it holds no secrets.
    #[error("gluster: {context}: {stderr}")]
    Gluster { context: String, stderr: String },
    /// Local I/O (the Gluster mount, the Varnish socket, secret files).
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A change to a backend with several endpoints (ProxySQL admin interfaces) that did
    /// not succeed on all of them: which endpoints have it and, for every other one, its
    /// own cause. An error has one `source`, so the causes are in the message, each with
    /// its whole chain (see [`EndpointFailure`]); there is no `source` to repeat them.
    #[error("{backend}: {action}: {}", endpoints_summary(backend, applied, failed))]
    Endpoints {
        backend: &'static str,
        action: String,
        /// Endpoints where the change is applied (and verified where the driver verifies).
        applied: Vec<String>,
        failed: Vec<EndpointFailure>,
    },
    /// A backend is not in the state we converged it to (observed after `ensure`), or
    /// answered something we cannot read.
    #[error("{backend}: {detail}")]
    Unexpected {
        backend: &'static str,
        detail: String,
    },
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: &'static str) -> Self {
        Error::Invalid { what, reason }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn unexpected(backend: &'static str, detail: impl Into<String>) -> Self {
        Error::Unexpected {
            backend,
            detail: detail.into(),
        }
    }
}

/// One endpoint's failure inside [`Error::Endpoints`].
#[derive(Debug)]
pub struct EndpointFailure {
    pub endpoint: String,
    pub error: Error,
}

/// An error and its causes on one line, `a: b: c`. mysql_async's errors also print their
/// source in `Display`; a cause already in the line is not added again.
pub(crate) fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// `failed on 1 of 2 endpoints: B: <cause chain>; applied on A`: every failure with its
/// whole chain, so the first line of a log or of a step error says what is where and why.
fn endpoints_summary(backend: &str, applied: &[String], failed: &[EndpointFailure]) -> String {
    let total = applied.len() + failed.len();
    let failures: Vec<String> = failed
        .iter()
        .map(|f| {
            let line = chain(&f.error);
            let line = line
                .strip_prefix(backend)
                .and_then(|l| l.strip_prefix(": "))
                .unwrap_or(&line);
            if line.starts_with(&f.endpoint) {
                line.to_owned()
            } else {
                format!("{}: {line}", f.endpoint)
            }
        })
        .collect();
    let applied = if applied.is_empty() {
        "none".to_owned()
    } else {
        applied.join(", ")
    };
    format!(
        "failed on {} of {total} endpoints: {}; applied on {applied}",
        failed.len(),
        failures.join("; ")
    )
}

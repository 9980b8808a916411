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

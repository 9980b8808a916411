//! The error of a saga's step: whether to retry, and two messages. The public one is what
//! a tenant reads on the operation (no backend names, addresses or driver errors); the
//! cause, with its whole chain, is for staff and logs ([`StepError::internal_message`]).
//!
//! It lives beside the sagas rather than in them: the steps' bodies (`provision`'s
//! `Backends` operations, `backup/`'s jobs) answer in it, and the sagas, the runner and the
//! reconcilers read it, so every one of them imports this module and none of them imports
//! another for its error (`sagas` re-exports it as `sagas::StepError`).

use std::{borrow::Cow, time::Duration};

/// A step that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Worth trying again later (a backend is unreachable, a lock is taken).
    #[error(transparent)]
    Retryable(Failure),
    /// Trying again will not help; the saga unwinds.
    #[error(transparent)]
    Permanent(Failure),
    /// Not yet (a move waits for its turn or for its new task): run the step again after
    /// this long, without counting an attempt. The text says what it waits for.
    #[error("waiting: {1}")]
    Wait(Duration, String),
}

/// A failure's public message and its cause.
#[derive(Debug, thiserror::Error)]
#[error("{public}")]
pub struct Failure {
    /// Shown to anyone who may read the operation.
    pub public: Cow<'static, str>,
    /// The cause with its chain: staff and logs only.
    #[source]
    pub cause: anyhow::Error,
}

/// What a step, an undo or a saga's end returns.
pub type StepResult = Result<(), StepError>;

/// What a tenant reads while a step waits (the reason names workers and tasks).
pub const WAITING: &str = "waiting for its turn; it runs again shortly";

impl StepError {
    /// Retry later; `public` says what could not be done, `cause` why.
    pub fn retryable(
        public: impl Into<Cow<'static, str>>,
        cause: impl Into<anyhow::Error>,
    ) -> Self {
        Self::Retryable(Failure {
            public: public.into(),
            cause: cause.into(),
        })
    }

    /// Unwind; `public` says what could not be done, `cause` why.
    pub fn permanent(
        public: impl Into<Cow<'static, str>>,
        cause: impl Into<anyhow::Error>,
    ) -> Self {
        Self::Permanent(Failure {
            public: public.into(),
            cause: cause.into(),
        })
    }

    /// Unwind on a fault of the platform itself (bad stored data, a broken invariant):
    /// the public message says only that.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self::permanent("an internal error stopped the operation", cause)
    }

    /// A backend driver's error: invalid input is permanent, anything else retryable.
    /// `public` names the dependency and what was asked of it; `context` is the internal
    /// wording the chain starts with.
    pub fn backend(public: &'static str, context: &'static str, err: backends::Error) -> Self {
        let permanent = matches!(err, backends::Error::Invalid { .. });
        let cause = anyhow::Error::new(err).context(context);
        if permanent {
            Self::permanent(public, cause)
        } else {
            Self::retryable(public, cause)
        }
    }

    /// What a tenant may read.
    pub fn public_message(&self) -> String {
        match self {
            Self::Retryable(f) | Self::Permanent(f) => f.public.to_string(),
            Self::Wait(..) => WAITING.to_owned(),
        }
    }

    /// The public message and the whole chain of causes, for staff and logs.
    pub fn internal_message(&self) -> String {
        match self {
            Self::Retryable(f) | Self::Permanent(f) => format!("{}: {:#}", f.public, f.cause),
            Self::Wait(_, why) => why.clone(),
        }
    }
}

impl From<sqlx::Error> for StepError {
    fn from(err: sqlx::Error) -> Self {
        // A deadlock (1213) or a lock wait timeout (1205) says only that another
        // transaction got there first (moves and the node sync lock the same rows): run the
        // step again soon, without using up one of its attempts.
        let conflict = err
            .as_database_error()
            .and_then(|e| e.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>())
            .is_some_and(|e| matches!(e.number(), 1205 | 1213));
        if conflict {
            return Self::Wait(
                Duration::from_millis(500),
                format!("database: {err}; trying again"),
            );
        }
        Self::retryable(
            "the control plane's database did not answer",
            anyhow::Error::new(err).context("database"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_message_hides_the_chain_the_internal_one_keeps_it() {
        let err = StepError::retryable(
            "the site's database could not be prepared",
            anyhow::anyhow!("access denied for user 'root'@'10.0.0.5'").context("galera"),
        );
        assert_eq!(
            err.public_message(),
            "the site's database could not be prepared"
        );
        assert_eq!(err.to_string(), "the site's database could not be prepared");
        assert_eq!(
            err.internal_message(),
            "the site's database could not be prepared: galera: access denied for user 'root'@'10.0.0.5'"
        );
        // The chain is the error's sources, not repeated in its Display.
        let source = std::error::Error::source(&err).expect("a source");
        assert_eq!(source.to_string(), "galera");
    }
}

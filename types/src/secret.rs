//! [`Secret`]: the one type for passwords, keys and tokens.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value that must never be printed: passwords, keys, tokens.
///
/// Kept in a [`secrecy::SecretString`] (zeroed when dropped). `Debug` and `Display` print
/// `[redacted]`, and so does `Serialize` (an empty one as `""`, so that printing a
/// configuration shows which secrets are set), which makes printing any structure that
/// holds one safe. Read it with [`Secret::expose`] exactly where it is sent to a server,
/// written to a file or compared.
#[derive(Clone, Default)]
pub struct Secret(SecretString);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(SecretString::from(value.into()))
    }

    /// The secret itself; call only where it is used, never to log it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.is_empty() { "" } else { "[redacted]" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_and_round_trips_only_inward() {
        let s = Secret::new("hunter2");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] Secret([redacted])");
        assert_eq!(
            serde_json::to_string(&s).unwrap_or_default(),
            "\"[redacted]\""
        );
        assert_eq!(
            serde_json::to_string(&Secret::default()).unwrap_or_default(),
            "\"\""
        );
        let read: Secret = serde_json::from_str("\"hunter2\"").unwrap_or_default();
        assert_eq!(read, s);
        assert_ne!(read, Secret::new("hunter3"));
        assert!(Secret::default().is_empty() && !s.is_empty());
        // In a structure printed with `{:?}` or as TOML it stays hidden.
        #[derive(Debug, Serialize)]
        struct Holder {
            password: Secret,
        }
        let h = Holder { password: s };
        assert!(!format!("{h:?}").contains("hunter2"));
        assert!(!toml::to_string(&h).unwrap_or_default().contains("hunter2"));
    }
}

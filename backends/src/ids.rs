//! Validated names: the only values the drivers format into SQL, ACL rules, VCL, labels
//! or paths. Parse, don't validate: once one of these exists it is known to be safe.

use std::fmt;

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

use crate::error::Error;

/// The site's server-generated id: lower-case base32, exactly 10 characters
/// (`^[a-z2-7]{10}$`), e.g. `k3v9q2m8xa`. Every per-site resource is named from it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteResourceId(String);

impl SiteResourceId {
    pub const LEN: usize = 10;

    pub fn parse(s: &str) -> Result<Self, Error> {
        let ok = s.len() == Self::LEN
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(Error::invalid(
                "site resource id",
                "must match ^[a-z2-7]{10}$",
            ))
        }
    }

    /// Parses a resource name such as `wp_k3v9q2m8xa` back into the id (for listing
    /// orphans); `None` for names that are not ours.
    pub fn from_resource_name(name: &str) -> Option<Self> {
        name.strip_prefix("wp_").and_then(|s| Self::parse(s).ok())
    }

    /// A fresh random id (the control plane normally generates it; handy in tests).
    pub fn generate() -> Self {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut rng = rand::rng();
        let s = (0..Self::LEN)
            .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
            .collect();
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `wp_<id>`: the database, the database user, the Redis user, the swarm service.
    pub fn resource_name(&self) -> String {
        format!("wp_{}", self.0)
    }

    /// `wp_<id>:`: the prefix of every Redis key and channel of the site.
    pub fn redis_prefix(&self) -> String {
        format!("wp_{}:", self.0)
    }
}

impl fmt::Display for SiteResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SiteResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteResourceId({})", self.0)
    }
}

impl serde::Serialize for SiteResourceId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for SiteResourceId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for SiteResourceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Self::parse(s)
    }
}

/// A host name as it appears in `Host:` headers, VCL and Traefik rules, and a secret
/// value: the workspace's one definition of each (the `pressdock-types` crate); the
/// drivers take only these.
pub use pressdock_types::{DomainName, DomainNameError, Secret};

/// A per-site password (database, Redis): 24 to 64 characters of `[A-Za-z0-9]`.
///
/// The alphabet is what makes it safe everywhere it must travel as text: the ProxySQL
/// admin interface (no bound parameters), Redis ACL rules, swarm secrets, PHP config.
/// Generated ones are 32 characters (about 190 bits).
#[derive(Clone, PartialEq, Eq)]
pub struct SitePassword(Secret);

impl SitePassword {
    pub const GENERATED_LEN: usize = 32;

    pub fn generate() -> Self {
        let s: String = rand::rng()
            .sample_iter(&Alphanumeric)
            .take(Self::GENERATED_LEN)
            .map(char::from)
            .collect();
        Self(Secret::new(s))
    }

    /// Accepts a stored password (e.g. decrypted from the control plane).
    pub fn parse(s: &str) -> Result<Self, Error> {
        if (24..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(Secret::new(s)))
        } else {
            Err(Error::invalid(
                "site password",
                "must be 24..=64 characters of [A-Za-z0-9]",
            ))
        }
    }

    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    pub fn secret(&self) -> &Secret {
        &self.0
    }

    /// Lower-case hex SHA-256 of the password: what Redis stores and `ACL GETUSER` shows.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.expose().as_bytes()))
    }
}

impl fmt::Debug for SitePassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SitePassword([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_id_accepts_base32_only() {
        assert!(
            SiteResourceId::parse("k3v9q2m8xa").is_err(),
            "9 is not base32"
        );
        assert!(SiteResourceId::parse("k3v7q2m6xa").is_ok());
        for bad in [
            "",
            "k3v7q2m6x",
            "k3v7q2m6xab",
            "K3V7Q2M6XA",
            "k3v7q2m6x1",
            "k3v7q2m6x`",
            "k3v7q2m6x'",
            "k3v7q2m_xa",
        ] {
            assert!(SiteResourceId::parse(bad).is_err(), "{bad:?}");
        }
        let id = SiteResourceId::generate();
        assert_eq!(SiteResourceId::parse(id.as_str()).ok(), Some(id.clone()));
        assert_eq!(id.resource_name(), format!("wp_{id}"));
        assert_eq!(
            SiteResourceId::from_resource_name(&id.resource_name()),
            Some(id)
        );
        assert_eq!(SiteResourceId::from_resource_name("wp_users"), None);
        let json: Result<SiteResourceId, _> = serde_json::from_str("\"k3v7q2m6xa\"");
        assert!(json.is_ok());
        let bad: Result<SiteResourceId, _> = serde_json::from_str("\"K3V7Q2M6XA\"");
        assert!(bad.is_err());
        let bad: Result<DomainName, _> = serde_json::from_str("\"Example.com\"");
        assert!(bad.is_err());
    }

    #[test]
    fn secrets_never_print() {
        let p = SitePassword::generate();
        assert_eq!(p.expose().len(), 32);
        assert!(p.expose().bytes().all(|b| b.is_ascii_alphanumeric()));
        assert!(!format!("{p:?}").contains(p.expose()));
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] Secret([redacted])");
        assert!(SitePassword::parse("short").is_err());
        assert!(SitePassword::parse(&format!("{}'", "a".repeat(30))).is_err());
        assert!(SitePassword::parse(&"a".repeat(30)).is_ok());
    }
}

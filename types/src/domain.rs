//! [`DomainName`]: a host name as the edge routes it.

use std::fmt;

/// A fully qualified host name as the edge routes it and as it appears in `Host:`
/// headers, VCL and Traefik rules: IDNA to punycode, lower-case ASCII, RFC 1035 lengths
/// (labels 1–63 of `[a-z0-9-]`, no leading or trailing `-`, whole name up to 253), at least
/// two labels, no trailing dot, no wildcard, not an IP address.
///
/// Two ways in: [`DomainName::parse`] takes what a person typed and normalises it
/// (`Bücher.Example.` is `xn--bcher-kva.example`); [`DomainName::parse_canonical`] (and
/// `Deserialize`, `FromStr`) takes only the canonical spelling, for values read back from
/// storage or a configuration, where another spelling means something wrote it wrongly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

/// Why a domain name was refused; the message completes "the domain …" in a field error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DomainNameError(&'static str);

impl DomainNameError {
    pub fn message(&self) -> &'static str {
        self.0
    }
}

impl fmt::Display for DomainNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DomainNameError {}

impl From<DomainNameError> for String {
    fn from(err: DomainNameError) -> Self {
        err.0.to_owned()
    }
}

impl DomainName {
    /// Normalises and checks a name as a person typed it: surrounding white space and one
    /// trailing dot dropped, IDNA to punycode, lower-cased.
    pub fn parse(input: &str) -> Result<Self, DomainNameError> {
        let bad = |reason| Err(DomainNameError(reason));
        let trimmed = input.trim().trim_end_matches('.');
        if trimmed.is_empty() {
            return bad("must not be empty");
        }
        if trimmed.contains('*') {
            return bad("wildcard domains are not allowed");
        }
        let ascii = idna::domain_to_ascii_strict(trimmed)
            .map_err(|_| DomainNameError("is not a valid internationalised domain name"))?
            .to_ascii_lowercase();
        if ascii.len() > 253 {
            return bad("is longer than 253 characters");
        }
        let labels: Vec<&str> = ascii.split('.').collect();
        if labels.len() < 2 {
            return bad("must have at least two labels, such as example.com");
        }
        for label in &labels {
            if label.is_empty() || label.len() > 63 {
                return bad("every label must be 1 to 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            {
                return bad("may contain only letters, digits and hyphens");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("labels must not start or end with a hyphen");
            }
        }
        if labels
            .last()
            .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
        {
            return bad("must be a name, not an IP address");
        }
        Ok(Self(ascii))
    }

    /// Accepts only a name already in its canonical spelling (what [`DomainName::parse`]
    /// returns): lower-case ASCII, punycode for IDNs, no trailing dot or white space.
    pub fn parse_canonical(s: &str) -> Result<Self, DomainNameError> {
        let name = Self::parse(s)?;
        if name.0 == s {
            Ok(name)
        } else {
            Err(DomainNameError(
                "must be in canonical form: lower-case ASCII, punycode for IDNs, no trailing dot",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for DomainName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for DomainName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse_canonical(&s).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for DomainName {
    type Err = DomainNameError;
    fn from_str(s: &str) -> Result<Self, DomainNameError> {
        Self::parse_canonical(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_names_are_normalised_and_checked() {
        let ok = |s: &str| DomainName::parse(s).map(|d| d.0);
        assert_eq!(ok("Example.COM.").as_deref(), Ok("example.com"));
        assert_eq!(ok(" www.example.com ").as_deref(), Ok("www.example.com"));
        assert_eq!(ok("bücher.example").as_deref(), Ok("xn--bcher-kva.example"));
        assert!(ok("*.example.com").is_err());
        assert!(ok("localhost").is_err());
        assert!(ok("a..b").is_err());
        assert!(ok(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(ok(&format!("{}.com", vec!["a".repeat(60); 5].join("."))).is_err());
        assert!(ok("-bad.com").is_err());
        assert!(ok("10.0.0.1").is_err());
        assert!(ok("under_score.com").is_err());
        assert_eq!(
            DomainName::parse("localhost").map_err(String::from),
            Err("must have at least two labels, such as example.com".to_owned())
        );
    }

    #[test]
    fn canonical_names_only_in_their_one_spelling() {
        for ok in [
            "s1.test",
            "www.example.com",
            "xn--bcher-kva.example",
            "a-b.c0",
        ] {
            assert_eq!(
                DomainName::parse_canonical(ok).map(|d| d.0).as_deref(),
                Ok(ok)
            );
        }
        for bad in [
            "localhost",
            "Example.com",
            "a..b",
            "-a.b",
            "a-.b",
            "a.b.",
            " a.b",
            "a b.c",
            "a\".b",
            "a`.b",
            "bücher.example",
            "a.b:80",
            "10.0.0.1",
        ] {
            assert!(DomainName::parse_canonical(bad).is_err(), "{bad}");
        }
        let long = format!("{}.test", "a".repeat(64));
        assert!(DomainName::parse_canonical(&long).is_err());
        let json: Result<DomainName, _> = serde_json::from_str("\"Example.com\"");
        assert!(json.is_err());
        let json: Result<DomainName, _> = serde_json::from_str("\"example.com\"");
        assert_eq!(json.map(|d| d.0).ok().as_deref(), Some("example.com"));
        assert_eq!(
            serde_json::to_string(&DomainName::parse("A.test").ok()).ok(),
            Some("\"a.test\"".to_owned())
        );
    }
}

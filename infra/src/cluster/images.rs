//! The images the stacks and the platform run, and where each comes from (issue 15, item 4).
//!
//! The compose files in `stacks/` name no image: each service says `image:
//! ${PD_IMAGE_<NAME>}`, and the deployer fills the variable in, as it fills in the stacks'
//! other `PD_*` values. Production takes the references from the cluster spec's `[images]`
//! table (`configs/cluster.toml`, checked by [`super::spec`]: well formed, from a registry,
//! pinned); the lab is one more provider with image overrides for what it builds itself: it
//! fills in its own `local/<name>:dev` ([`Images::lab`], imported on every node by
//! `crate::lab::images`). The same stack file is deployed with either set, so what the lab
//! runs is what production runs, built elsewhere.
//!
//! The WordPress runtime is no stack's in production: sites are services the platform
//! creates (`[backends.swarm] runtime_image`), so the spec's `images.wordpress` is what the
//! platform's configuration must say; `cluster check` prints it (the infra does not write the
//! platform's configuration for production yet). The lab's platform configuration and its
//! test site take the lab's.
use std::collections::BTreeMap;
use std::fmt;

/// An image the cluster runs: its key in `[images]`, the stacks' variable, what runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageUse {
    pub key: &'static str,
    pub var: &'static str,
    pub used_by: &'static str,
    /// The lab builds it (`images/<key>/`, `crate::lab::images::IMAGES`); `false`: no build
    /// of it runs here (ProxySQL: packaged in no registry these machines reach, LAB.md), the
    /// lab keeps a stand-in and places no task of it.
    pub lab_built: bool,
}

/// Every image, in the order `cluster check` shows them. The keys of those the lab builds are
/// its recipes (`images/<key>/`, `crate::lab::images::IMAGES`).
pub const IMAGES: [ImageUse; 6] = [
    ImageUse {
        key: "traefik",
        var: "PD_IMAGE_TRAEFIK",
        used_by: "stacks/edge.yml (Traefik), stacks/monitoring.yml (the placeholder)",
        lab_built: true,
    },
    ImageUse {
        key: "varnish",
        var: "PD_IMAGE_VARNISH",
        used_by: "stacks/edge.yml (Varnish)",
        lab_built: true,
    },
    ImageUse {
        key: "redis",
        var: "PD_IMAGE_REDIS",
        used_by: "stacks/cache.yml (Redis, Sentinel)",
        lab_built: true,
    },
    ImageUse {
        key: "wordpress",
        var: "PD_IMAGE_WORDPRESS",
        used_by: "the sites: the platform's [backends.swarm] runtime_image",
        lab_built: true,
    },
    ImageUse {
        key: "galera",
        var: "PD_IMAGE_GALERA",
        used_by: "stacks/database.yml (MariaDB Galera)",
        lab_built: true,
    },
    ImageUse {
        key: "proxysql",
        var: "PD_IMAGE_PROXYSQL",
        used_by: "stacks/database.yml (ProxySQL; no lab build, the lab's router is HAProxy)",
        lab_built: false,
    },
];

/// The lab's own build of image `key`, as `lab up` imports it on every node.
pub fn lab_reference(key: &str) -> String {
    format!("local/{key}:dev")
}

/// A reference per [`IMAGES`] key. Made only by [`Images::lab`] or from a checked spec
/// ([`super::spec::Checked`]), so every key has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images(BTreeMap<&'static str, String>);

impl Images {
    /// The lab's: `local/<key>:dev` for every image (for one it does not build, ProxySQL, a
    /// name no node has: the lab places no task of it).
    pub fn lab() -> Images {
        Images(
            IMAGES
                .iter()
                .map(|i| (i.key, lab_reference(i.key)))
                .collect(),
        )
    }

    /// From references already checked, one per key (the spec's checks make sure).
    pub(super) fn from_checked(refs: BTreeMap<&'static str, String>) -> Images {
        Images(refs)
    }

    /// The reference of image `key` (one of [`IMAGES`]).
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    /// The site runtime: what the platform's `[backends.swarm] runtime_image` says.
    pub fn runtime_image(&self) -> &str {
        self.get("wordpress")
    }

    /// The stacks' variables: `PD_IMAGE_<NAME>` → reference.
    pub fn vars(&self) -> BTreeMap<String, String> {
        IMAGES
            .iter()
            .map(|i| (i.var.to_owned(), self.get(i.key).to_owned()))
            .collect()
    }
}

/// An image reference as Docker reads it (`[registry[:port]/]path[:tag][@sha256:…]`),
/// parsed: the grammar of the distribution project's `reference` package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `registry.example.com:5000`; `None`: Docker Hub.
    pub registry: Option<String>,
    /// `pressdock/redis`.
    pub path: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        f.write_str(&self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A path component: lower-case letters and digits, separated by one `.`, one or two `_`, or
/// any number of `-`.
fn path_component(s: &str) -> bool {
    let b = s.as_bytes();
    let sep = |c: u8| c == b'.' || c == b'_' || c == b'-';
    if b.is_empty() || sep(b[0]) || sep(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_lowercase() || b[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && sep(b[i]) {
            i += 1;
        }
        let run = &s[start..i];
        // Neither a letter or digit nor a separator (an upper-case letter, `$`, …).
        if run.is_empty() {
            return false;
        }
        let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A registry: host name labels (letters, digits, inner `-`) separated by `.`, an optional
/// port.
fn registry(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label) && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

impl Reference {
    /// Parses `s`; the error says what is wrong, for a message that names the field.
    pub fn parse(s: &str) -> Result<Reference, String> {
        if s.is_empty() {
            return Err("empty".into());
        }
        if s.trim() != s || s.chars().any(char::is_whitespace) {
            return Err(format!("{s:?}: white space in an image reference"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d.strip_prefix("sha256:").ok_or_else(|| {
                    format!("{s:?}: the digest after @ must be sha256:<64 hex digits>")
                })?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(format!(
                        "{s:?}: the digest after @ must be sha256:<64 lower-case hex digits>"
                    ));
                }
                (r, Some(d.to_owned()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/' (a registry's port is not).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(t) = tag {
            let b = t.as_bytes();
            let ok = !b.is_empty()
                && b.len() <= 128
                && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c));
            if !ok {
                return Err(format!(
                    "{s:?}: the tag {t:?} must be letters, digits, _ . - (not first), at most 128"
                ));
            }
        }
        if name.is_empty() || name.len() > 255 {
            return Err(format!("{s:?}: a name of 1 to 255 characters"));
        }
        // The first component is a registry if it looks like a host (Docker's own rule).
        let (registry_part, path) = match name.split_once('/') {
            Some((first, p))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first), p)
            }
            _ => (None, name),
        };
        if let Some(r) = registry_part
            && !registry(r)
        {
            return Err(format!("{s:?}: {r:?} is not a registry host[:port]"));
        }
        if let Some(c) = path.split('/').find(|c| !path_component(c)) {
            return Err(format!(
                "{s:?}: the path component {c:?} must be lower-case letters and digits, \
                 separated by . _ __ or -"
            ));
        }
        Ok(Reference {
            registry: registry_part.map(str::to_owned),
            path: path.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// A tag other than `latest`, or a digest: the same reference runs the same image
    /// tomorrow.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some() || self.tag.as_deref().is_some_and(|t| t != "latest")
    }

    /// Only the lab's nodes have it: its own build (`local/…`), or a registry on the node
    /// itself (`localhost`).
    pub fn is_local(&self) -> bool {
        let own_build =
            self.registry.is_none() && (self.path == "local" || self.path.starts_with("local/"));
        own_build
            || self
                .registry
                .as_deref()
                .is_some_and(|r| r == "localhost" || r.starts_with("localhost:"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_reads_them() {
        let r = Reference::parse("registry.example.com:5000/pressdock/redis:7.0.15-1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.registry.as_deref(), Some("registry.example.com:5000"));
        assert_eq!(r.path, "pressdock/redis");
        assert_eq!(r.tag.as_deref(), Some("7.0.15-1"));
        assert!(r.is_pinned() && !r.is_local());
        let d = format!("ghcr.io/acme/varnish@sha256:{}", "ab".repeat(32));
        let r = Reference::parse(&d).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.to_string(), d);
        assert!(r.is_pinned() && r.tag.is_none());
        // Docker Hub, no registry part; a port is not a tag.
        let r = Reference::parse("traefik:v2.11.3").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.registry, r.path.as_str()), (None, "traefik"));
        let r = Reference::parse("localhost:5000/redis").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.tag, None);
        assert!(r.is_local() && !r.is_pinned());
        assert!(Reference::parse("local/redis:dev").is_ok_and(|r| r.is_local() && r.is_pinned()));
        assert!(Reference::parse("a/b:latest").is_ok_and(|r| !r.is_pinned()));
        assert!(
            Reference::parse(&format!("a/b:latest@sha256:{}", "0".repeat(64)))
                .is_ok_and(|r| r.is_pinned())
        );
        for bad in [
            "",
            "Redis:7",
            "a//b:1",
            "a/b:",
            "a/b:-x",
            "a/b c:1",
            "a/b:1@sha256:xyz",
            "a/b@md5:00",
            "-a/b:1",
            "a/b_:1",
            "a/b___c:1",
            "reg.example.com:port/a:1",
            "$(reboot)/a:1",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_lab_fills_in_its_own_builds() {
        let l = Images::lab();
        assert_eq!(l.get("redis"), "local/redis:dev");
        assert_eq!(l.runtime_image(), "local/wordpress:dev");
        assert_eq!(l.vars()["PD_IMAGE_TRAEFIK"], "local/traefik:dev");
        assert_eq!(l.vars().len(), IMAGES.len());
        // One image per recipe the lab builds, no more; ProxySQL is the one it cannot build.
        let mut keys: Vec<&str> = IMAGES
            .iter()
            .filter(|i| i.lab_built)
            .map(|i| i.key)
            .collect();
        assert_eq!(
            IMAGES
                .iter()
                .filter(|i| !i.lab_built)
                .map(|i| i.key)
                .collect::<Vec<_>>(),
            ["proxysql"]
        );
        let mut built = crate::lab::images::IMAGES.to_vec();
        keys.sort_unstable();
        built.sort_unstable();
        assert_eq!(keys, built);
    }
}

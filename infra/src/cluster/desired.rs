//! What a checked spec wants, resource by resource, with every name and tag derived from the
//! spec's `name`: the same spec always wants the same resources, and the tool finds what it
//! made by those names and tags (no state file).
use super::cloud_init;
use super::spec::{Checked, Protocol, Role, Rule, Source};
use std::collections::BTreeSet;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vpc {
    pub name: String,
    pub region: String,
    pub ip_range: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Droplet {
    pub name: String,
    pub role: Role,
    pub index: u32,
    pub size: String,
    pub region: String,
    pub image: String,
    pub ssh_keys: Vec<String>,
    /// Sorted.
    pub tags: Vec<String>,
    pub user_data: String,
    /// Name of its volume, if its role has one.
    pub volume: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub region: String,
    pub size_gib: u32,
    pub filesystem: &'static str,
    pub tags: Vec<String>,
    /// The droplet it belongs to.
    pub droplet: String,
}

/// Where a firewall rule's traffic comes from, with names (the load balancer's id is known
/// only once it exists; the executor resolves it).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sources {
    pub addresses: Vec<String>,
    pub tags: Vec<String>,
    /// Load balancers by name.
    pub load_balancers: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FwRule {
    pub protocol: Protocol,
    /// As the API writes it (`"0"`: all).
    pub ports: String,
    pub sources: Sources,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Firewall {
    pub name: String,
    /// Droplets with this tag get the rules.
    pub tags: Vec<String>,
    /// Sorted, sources sorted: compared as sets.
    pub inbound: Vec<FwRule>,
    pub outbound: Vec<FwRule>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadBalancer {
    pub name: String,
    pub region: String,
    /// Droplets with this tag are its targets.
    pub tag: String,
    /// TCP passthrough, same port.
    pub ports: Vec<u16>,
    pub health_check_port: u16,
    pub proxy_protocol: bool,
    pub size_unit: u32,
}

/// Everything the spec wants.
#[derive(Clone, Debug)]
pub struct Desired {
    /// The tag on every droplet and volume the tool makes: how it finds them.
    pub cluster_tag: String,
    /// Every tag the resources use (created first; firewalls name them).
    pub tags: Vec<String>,
    pub vpc: Vpc,
    pub droplets: Vec<Droplet>,
    pub volumes: Vec<Volume>,
    pub load_balancer: LoadBalancer,
    pub firewalls: Vec<Firewall>,
}

pub fn role_tag(cluster: &str, role: Role) -> String {
    format!("{cluster}-{role}")
}

pub fn droplet_name(cluster: &str, role: Role, index: u32) -> String {
    format!("{cluster}-{role}-{index:02}")
}

fn everywhere() -> Vec<String> {
    vec!["0.0.0.0/0".into(), "::/0".into()]
}

fn fw_rule(c: &Checked, rule: &Rule, lb: &str) -> FwRule {
    let name = &c.spec.name;
    let mut s = Sources::default();
    for src in &rule.from {
        match src {
            Source::Role(r) => s.tags.push(role_tag(name, *r)),
            Source::Cluster => s.tags.push(name.clone()),
            Source::Admin => s.addresses.extend(c.spec.admin_addresses.iter().cloned()),
            Source::Edge => s.load_balancers.push(lb.to_owned()),
            Source::Internet => s.addresses.extend(everywhere()),
        }
    }
    s.addresses.sort();
    s.addresses.dedup();
    s.tags.sort();
    s.load_balancers.sort();
    FwRule {
        protocol: rule.protocol,
        ports: rule.ports.to_api(),
        sources: s,
    }
}

/// Nodes reach out freely (packages, images, Let's Encrypt, S3 backups): DigitalOcean drops
/// all outbound traffic of a firewalled droplet that no outbound rule admits.
fn outbound_all() -> Vec<FwRule> {
    [Protocol::Icmp, Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| FwRule {
            protocol,
            ports: "0".into(),
            sources: Sources {
                addresses: everywhere(),
                ..Sources::default()
            },
        })
        .collect()
}

impl Desired {
    pub fn from_spec(c: &Checked) -> Desired {
        let s = &c.spec;
        let name = &s.name;
        let lb_name = format!("{name}-edge");
        let mut tags: BTreeSet<String> = BTreeSet::from([name.clone()]);
        tags.extend(s.tags.iter().cloned());
        let mut droplets = Vec::new();
        let mut volumes = Vec::new();
        for (role, r) in &s.roles {
            tags.insert(role_tag(name, *role));
            for i in 1..=r.count {
                let dname = droplet_name(name, *role, i);
                let mut dtags: Vec<String> = vec![name.clone(), role_tag(name, *role)];
                dtags.extend(s.tags.iter().cloned());
                dtags.sort();
                dtags.dedup();
                let volume = r.volume.as_ref().map(|v| {
                    let vname = format!("{dname}-data");
                    volumes.push(Volume {
                        name: vname.clone(),
                        region: s.region.clone(),
                        size_gib: v.size_gib,
                        filesystem: v.filesystem.as_str(),
                        tags: dtags.clone(),
                        droplet: dname.clone(),
                    });
                    vname
                });
                droplets.push(Droplet {
                    user_data: cloud_init::user_data(
                        *role,
                        r.volume.as_ref(),
                        volume.as_deref(),
                        s.guard.as_ref().map(|g| (g, s.vpc.ip_range.as_str())),
                    ),
                    name: dname,
                    role: *role,
                    index: i,
                    size: r.size.clone(),
                    region: s.region.clone(),
                    image: s.image.clone(),
                    ssh_keys: s.ssh_keys.clone(),
                    tags: dtags,
                    volume,
                });
            }
        }
        let mut firewalls = Vec::new();
        let mut fw = |fname: String, target: String, rules: &[Rule]| {
            let mut inbound: Vec<FwRule> = rules.iter().map(|r| fw_rule(c, r, &lb_name)).collect();
            inbound.sort();
            firewalls.push(Firewall {
                name: fname,
                tags: vec![target],
                inbound,
                outbound: outbound_all(),
            });
        };
        fw(format!("{name}-common"), name.clone(), &c.common_rules);
        for (role, rules) in &c.rules {
            if !rules.is_empty() {
                fw(
                    format!("{name}-{role}"),
                    role_tag(name, *role),
                    rules.as_slice(),
                );
            }
        }
        Desired {
            cluster_tag: name.clone(),
            tags: tags.into_iter().collect(),
            vpc: Vpc {
                name: name.clone(),
                region: s.region.clone(),
                ip_range: s.vpc.ip_range.clone(),
            },
            droplets,
            volumes,
            load_balancer: LoadBalancer {
                name: lb_name,
                region: s.region.clone(),
                tag: role_tag(name, s.edge.role),
                ports: s.edge.ports.clone(),
                health_check_port: s.edge.health_check_port,
                proxy_protocol: s.edge.proxy_protocol,
                size_unit: s.edge.size_unit,
            },
            firewalls,
        }
    }

    /// What `check` prints: every resource, one line each, rules spelled out.
    pub fn describe(&self, c: &Checked) -> String {
        use std::fmt::Write;
        let mut o = String::new();
        let s = &c.spec;
        let _ = writeln!(
            o,
            "cluster {} on {} in {} ({} nodes), image {}",
            s.name,
            match s.provider {
                super::spec::ProviderKind::Digitalocean => "DigitalOcean",
            },
            s.region,
            c.node_count(),
            s.image
        );
        let _ = writeln!(o, "vpc {} {}", self.vpc.name, self.vpc.ip_range);
        let _ = writeln!(o, "tags {}", self.tags.join(" "));
        for (role, r) in &s.roles {
            let names: Vec<&str> = self
                .droplets
                .iter()
                .filter(|d| d.role == *role)
                .map(|d| d.name.as_str())
                .collect();
            let _ = writeln!(
                o,
                "{:<10} {:>2} × {:<14} {}{}{}  {} … {}",
                role.as_str(),
                r.count,
                r.size,
                r.volume
                    .as_ref()
                    .map(|v| format!(
                        "+ {} GiB {} at {}",
                        v.size_gib,
                        v.filesystem.as_str(),
                        v.mount
                    ))
                    .unwrap_or_default(),
                r.pool
                    .as_ref()
                    .map(|p| format!(" pool {p}"))
                    .unwrap_or_default(),
                r.slots.map(|n| format!(" {n} slots")).unwrap_or_default(),
                names.first().unwrap_or(&""),
                names.last().unwrap_or(&""),
            );
        }
        let lb = &self.load_balancer;
        let _ = writeln!(
            o,
            "load balancer {} → droplets tagged {}: tcp {} (passthrough), health tcp:{}",
            lb.name,
            lb.tag,
            lb.ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            lb.health_check_port
        );
        if let Some(g) = &s.guard {
            let _ = writeln!(
                o,
                "network guard on every worker: {} (sha256 {}), {}",
                g.binary_url,
                g.sha256,
                g.args(&s.vpc.ip_range)
            );
            for a in &g.allow {
                let _ = writeln!(
                    o,
                    "    site tasks reach {:<9} {:<6} {}",
                    a.role, a.ports, a.why
                );
            }
        }
        // What the stacks' `${PD_IMAGE_…}` are filled in with, and the sites' runtime.
        let _ = writeln!(o, "images (pulled by the nodes; [images]):");
        for i in super::images::IMAGES {
            let _ = writeln!(o, "    {:<9} {}  {}", i.key, c.images.get(i.key), i.used_by);
        }
        let rules_of = |target: &str| -> Vec<&Rule> {
            if target == s.name {
                c.common_rules.iter().collect()
            } else {
                Role::ALL
                    .into_iter()
                    .find(|r| role_tag(&s.name, *r) == target)
                    .map(|r| c.rules[&r].iter().collect())
                    .unwrap_or_default()
            }
        };
        for f in &self.firewalls {
            let _ = writeln!(
                o,
                "firewall {} → droplets tagged {}",
                f.name,
                f.tags.join(",")
            );
            for r in rules_of(&f.tags[0]) {
                let from: Vec<String> = r.from.iter().map(Source::to_string).collect();
                let _ = writeln!(
                    o,
                    "    allow {:<4} {:<12} from {:<40} {}",
                    r.protocol.as_str(),
                    if r.protocol == Protocol::Icmp {
                        "-".into()
                    } else {
                        r.ports.to_api()
                    },
                    from.join(","),
                    r.why
                );
            }
            let _ = writeln!(o, "    outbound: all (tcp, udp, icmp)");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> (Checked, Desired) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../configs/cluster.toml"
        ))
        .unwrap_or_default();
        let c = Checked::parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let d = Desired::from_spec(&c);
        (c, d)
    }

    #[test]
    fn names_and_tags_follow_the_spec() {
        let (_, d) = desired();
        assert_eq!(d.droplets.len(), 33);
        assert_eq!(d.volumes.len(), 5);
        assert!(d.droplets.iter().any(|x| x.name == "pd-prod-worker-20"));
        let db = d
            .droplets
            .iter()
            .find(|x| x.name == "pd-prod-database-02")
            .map(|x| (x.tags.clone(), x.volume.clone()));
        assert_eq!(
            db,
            Some((
                vec![
                    "pd-prod".into(),
                    "pd-prod-database".into(),
                    "pressdock".into()
                ],
                Some("pd-prod-database-02-data".into())
            ))
        );
        // common + one per role with rules (workers have none of their own).
        assert_eq!(d.firewalls.len(), 6);
        let fw = d.firewalls.iter().find(|f| f.name == "pd-prod-manager");
        assert!(fw.is_some_and(|f| f.inbound.iter().any(|r| r.ports == "443"
            && r.sources.load_balancers == ["pd-prod-edge"]
            && r.sources.addresses.is_empty())));
        // No address source anywhere is the whole internet.
        for f in &d.firewalls {
            for r in &f.inbound {
                assert!(
                    !r.sources.addresses.iter().any(|a| a.ends_with("/0")),
                    "{}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn storage_nodes_get_glusterfs_and_every_node_docker() {
        let (_, d) = desired();
        for x in &d.droplets {
            assert!(x.user_data.starts_with("#cloud-config\n"), "{}", x.name);
            assert!(x.user_data.contains("docker.io"), "{}", x.name);
            assert_eq!(
                x.user_data.contains("glusterfs-server"),
                x.role == Role::Storage,
                "{}",
                x.name
            );
        }
        let (c, d) = desired();
        let text = d.describe(&c);
        assert!(text.contains("worker     20 × s-8vcpu-16gb"), "{text}");
        // The images it would deploy, the sites' runtime image among them.
        for line in [
            "images (pulled by the nodes; [images]):\n",
            "    redis     registry.example.com/pressdock/redis:0.1.0  stacks/cache.yml (Redis, Sentinel)\n",
            "    wordpress registry.example.com/pressdock/wordpress:0.1.0  the sites: the platform's [backends.swarm] runtime_image\n",
        ] {
            assert!(text.contains(line), "{line:?} not in {text}");
        }
    }

    #[test]
    fn cache_and_database_nodes_write_their_vpc_address_for_their_stacks() {
        let (_, d) = desired();
        for x in &d.droplets {
            let u = &x.user_data;
            let cache = matches!(x.role, Role::Cache | Role::Database);
            assert_eq!(
                u.contains("/etc/pressdock/node/addr"),
                cache,
                "{}: {u}",
                x.name
            );
            if cache {
                assert!(u.contains("  - curl\n"), "{u}");
                assert!(u.contains("curl -fsS --retry 5 http://169.254.169.254/metadata/v1/interfaces/private/0/ipv4/address > /etc/pressdock/node/addr.new && mv /etc/pressdock/node/addr.new /etc/pressdock/node/addr"), "{u}");
            }
        }
    }

    #[test]
    fn workers_install_and_start_the_network_guard_before_they_join() {
        let (_, d) = desired();
        for x in &d.droplets {
            let u = &x.user_data;
            let worker = x.role == Role::Worker;
            assert_eq!(u.contains("pressdock-guard"), worker, "{}", x.name);
            if !worker {
                continue;
            }
            // The unit as written in configs/systemd, its endpoints, a pinned binary.
            assert!(u.contains("      ExecStart=/usr/local/bin/pressdock-infra guard --docker-host unix:///var/run/docker.sock $PD_GUARD_ARGS\n"), "{u}");
            assert!(u.contains("      PD_GUARD_ARGS=\"--allow 10.110.0.0/20:6033 --allow 10.110.0.0/20:6379-6380 --allow 10.110.0.0/20:26379 --allow 10.110.0.0/20:8081 --internet 80,443,587\"\n"), "{u}");
            assert!(u.contains("| sha256sum -c - && chmod 0755"), "{u}");
            // Started after docker and the binary, in that order.
            let at = |what: &str| u.find(what).unwrap_or_else(|| panic!("{what} in {u}"));
            let (docker, fetch, start) = (
                at("systemctl enable --now docker"),
                at("curl -fsSL"),
                at("systemctl enable --now pressdock-guard"),
            );
            assert!(docker < fetch && fetch < start, "{u}");
        }
    }
}

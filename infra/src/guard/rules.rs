//! The rules of a site task's network namespace, and of the database nodes' replication
//! ports. Pure: a [`Policy`] and the edge's addresses in, `iptables-restore` text out.
//!
//! A site task's filter table is replaced whole (one `iptables-restore`, atomic): policy
//! `DROP` on every chain, then
//!
//! - `INPUT`: loopback; replies (`ESTABLISHED,RELATED`); the site port from each edge
//!   (Traefik) task; the agent port from [`Policy::agent_from`]; everything else rejected.
//! - `OUTPUT`: loopback (docker's embedded DNS at 127.0.0.11 is loopback, after docker's
//!   own NAT rules, which live in the `nat` table and are left alone); replies; each
//!   [`Policy::allow`] endpoint (the DB router, Redis, the Sentinels, the platform's agent
//!   listener); then the private, loopback, link-local (cloud metadata) and multicast
//!   ranges rejected; then the public internet on [`Policy::internet`]'s ports; everything
//!   else rejected.
//!
//! Rejected, not dropped: a plugin's connection fails at once (a reset) instead of
//! hanging a PHP worker for its whole timeout.
use anyhow::{Context, Result, bail};
use std::fmt;
use std::net::Ipv4Addr;

/// An IPv4 network: address and prefix length, host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn host(addr: Ipv4Addr) -> Self {
        Cidr { addr, prefix: 32 }
    }

    /// `10.0.0.0/8` or a bare address (a /32). Host bits must be zero.
    pub fn parse(s: &str) -> Result<Self> {
        let (a, p) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .with_context(|| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .with_context(|| format!("{s:?}: prefix length {p:?} is not 0-32"))?;
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        if u32::from(addr) & !mask != 0 {
            bail!("{s:?}: host bits set (the network is {}/{prefix})", {
                Ipv4Addr::from(u32::from(addr) & mask)
            });
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A port or an inclusive range of ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub first: u16,
    pub last: u16,
}

impl Ports {
    /// `443` or `23201-23202`.
    pub fn parse(s: &str) -> Result<Self> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let port = |x: &str| -> Result<u16> {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("{s:?}: {x:?} is not a port (1-65535)"))
        };
        let (first, last) = (port(a)?, port(b)?);
        if first > last {
            bail!("{s:?}: the range runs backwards");
        }
        Ok(Ports { first, last })
    }

    /// iptables' form: `443` or `23201:23202`.
    fn arg(&self) -> String {
        if self.first == self.last {
            self.first.to_string()
        } else {
            format!("{}:{}", self.first, self.last)
        }
    }
}

/// A TCP endpoint a site task may connect to: `10.213.0.1:23100`,
/// `10.213.0.1:23201-23202`, `10.30.0.0/24:6379`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub net: Cidr,
    pub ports: Ports,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Self> {
        let (net, ports) = s
            .rsplit_once(':')
            .with_context(|| format!("{s:?}: expected ADDRESS[/PREFIX]:PORT[-PORT]"))?;
        Ok(Endpoint {
            net: Cidr::parse(net)?,
            ports: Ports::parse(ports)?,
        })
    }
}

/// Which public (non-private) destinations a site task may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Internet {
    /// None: WordPress's update checks, plugin and theme installs and outbound mail fail.
    Off,
    /// TCP to these ports (at most 15 entries: one `multiport` match).
    Ports(Vec<Ports>),
    /// Any TCP and UDP destination port.
    All,
}

impl Internet {
    /// `off`, `all`, or a comma-separated list of ports and ranges (`80,443,587`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim() {
            "off" | "none" => Ok(Internet::Off),
            "all" => Ok(Internet::All),
            list => {
                let ports: Vec<Ports> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(Ports::parse)
                    .collect::<Result<_>>()?;
                if ports.is_empty() {
                    bail!("{s:?}: no port (use `off` for none)");
                }
                // A range counts twice in iptables' multiport limit of 15.
                let weight: usize = ports
                    .iter()
                    .map(|p| if p.first == p.last { 1 } else { 2 })
                    .sum();
                if weight > 15 {
                    bail!("{s:?}: at most 15 ports (a range counts as 2)");
                }
                Ok(Internet::Ports(ports))
            }
        }
    }
}

/// Ranges that are never "the internet": private networks (the cluster's nodes, docker's
/// bridges and overlays), CGNAT, loopback, link-local (169.254.169.254 is the cloud's
/// metadata service, which hands out the droplet's credentials), multicast and reserved.
pub const NOT_INTERNET: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
];

/// What every site task on a node may do. The same for every site: what differs between
/// sites (user, password, key prefix, schema) is enforced by the services themselves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// TCP endpoints a task may connect to, beside loopback.
    pub allow: Vec<Endpoint>,
    pub internet: Internet,
    /// Ranges rejected before the internet rule (default [`NOT_INTERNET`]).
    pub not_internet: Vec<Cidr>,
    /// The site's web server (nginx), reachable from the edge only.
    pub site_port: u16,
    /// The agent's health and metrics port, reachable from [`Policy::agent_from`] only.
    pub agent_port: u16,
    pub agent_from: Vec<Cidr>,
}

impl Policy {
    pub fn default_not_internet() -> Vec<Cidr> {
        NOT_INTERNET
            .iter()
            .filter_map(|c| Cidr::parse(c).ok())
            .collect()
    }
}

/// The `-A …` rules of a task's filter table, in order. `edge`: the addresses of the edge's
/// (Traefik's) tasks on the site network; sorted and deduplicated here.
pub fn task_rules(p: &Policy, edge: &[Ipv4Addr]) -> Vec<String> {
    let mut edge: Vec<Ipv4Addr> = edge.to_vec();
    edge.sort();
    edge.dedup();
    let mut r = vec![
        "-A INPUT -i lo -j ACCEPT".to_owned(),
        "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".to_owned(),
    ];
    for e in &edge {
        r.push(format!(
            "-A INPUT -s {e}/32 -p tcp -m tcp --dport {} -j ACCEPT",
            p.site_port
        ));
    }
    for c in &p.agent_from {
        r.push(format!(
            "-A INPUT -s {c} -p tcp -m tcp --dport {} -j ACCEPT",
            p.agent_port
        ));
    }
    r.push("-A INPUT -p tcp -j REJECT --reject-with tcp-reset".to_owned());
    r.push("-A INPUT -j REJECT --reject-with icmp-port-unreachable".to_owned());
    r.push("-A OUTPUT -o lo -j ACCEPT".to_owned());
    r.push("-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT".to_owned());
    for a in &p.allow {
        r.push(format!(
            "-A OUTPUT -d {} -p tcp -m tcp --dport {} -j ACCEPT",
            a.net,
            a.ports.arg()
        ));
    }
    if p.internet != Internet::Off {
        for c in &p.not_internet {
            r.push(format!(
                "-A OUTPUT -d {c} -p tcp -j REJECT --reject-with tcp-reset"
            ));
            r.push(format!(
                "-A OUTPUT -d {c} -j REJECT --reject-with icmp-port-unreachable"
            ));
        }
        match &p.internet {
            Internet::Ports(ports) => {
                let list: Vec<String> = ports.iter().map(Ports::arg).collect();
                r.push(format!(
                    "-A OUTPUT -p tcp -m multiport --dports {} -j ACCEPT",
                    list.join(",")
                ));
            }
            Internet::All => {
                r.push("-A OUTPUT -p tcp -j ACCEPT".to_owned());
                r.push("-A OUTPUT -p udp -j ACCEPT".to_owned());
            }
            Internet::Off => {}
        }
    }
    r.push("-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset".to_owned());
    r.push("-A OUTPUT -j REJECT --reject-with icmp-port-unreachable".to_owned());
    r
}

/// The whole `iptables-restore` input for a task's filter table (replaces it atomically).
pub fn task_restore(p: &Policy, edge: &[Ipv4Addr]) -> String {
    let mut s = String::from(
        "# pressdock-infra guard: a site task's network confinement\n*filter\n\
         :INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\n",
    );
    for l in task_rules(p, edge) {
        s.push_str(&l);
        s.push('\n');
    }
    s.push_str("COMMIT\n");
    s
}

/// IPv6: loopback only (the site network is IPv4; a task has no business with IPv6).
pub fn task_restore6() -> String {
    "# pressdock-infra guard\n*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n\
     :OUTPUT DROP [0:0]\n-A INPUT -i lo -j ACCEPT\n-A OUTPUT -o lo -j ACCEPT\nCOMMIT\n"
        .to_owned()
}

/// Galera's replication ports (group communication, IST, SST) on one database node:
/// accepted from the database nodes only, rejected from anyone else. Rules for the node's
/// `INPUT` chain as iptables arguments (without `-A INPUT`/`-I INPUT`), in order, each
/// carrying `comment` (the lab's tag, or the cluster tool's) so they can be found and
/// removed.
pub fn galera_rules(db_nodes: &[Ipv4Addr], ports: &[Ports], comment: &str) -> Vec<Vec<String>> {
    let list: Vec<String> = ports.iter().map(Ports::arg).collect();
    let list = list.join(",");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["-p".into(), "tcp".into()];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v.extend(
            [
                "-m",
                "multiport",
                "--dports",
                &list,
                "-m",
                "comment",
                "--comment",
                comment,
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
        v
    };
    let mut nodes = db_nodes.to_vec();
    nodes.sort();
    nodes.dedup();
    let mut out: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let mut v = base(&["-s", &format!("{n}/32")]);
            v.extend(["-j".to_owned(), "ACCEPT".to_owned()]);
            v
        })
        .collect();
    let mut reject = base(&[]);
    reject.extend(
        ["-j", "REJECT", "--reject-with", "tcp-reset"]
            .iter()
            .map(|s| (*s).to_owned()),
    );
    out.push(reject);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_policy(internet: Internet) -> Policy {
        Policy {
            allow: [
                "10.213.0.1:23100",
                "10.213.0.1:23201-23202",
                "10.213.0.1:23211-23213",
                "10.213.0.1:23501",
            ]
            .iter()
            .map(|s| Endpoint::parse(s).expect("valid"))
            .collect(),
            internet,
            not_internet: Policy::default_not_internet(),
            site_port: 80,
            agent_port: 9180,
            agent_from: vec![],
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("address")
    }

    #[test]
    fn lab_rules_exact() {
        let r = task_rules(&lab_policy(Internet::Off), &[ip("10.216.0.2")]);
        assert_eq!(
            r,
            [
                "-A INPUT -i lo -j ACCEPT",
                "-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-A INPUT -s 10.216.0.2/32 -p tcp -m tcp --dport 80 -j ACCEPT",
                "-A INPUT -p tcp -j REJECT --reject-with tcp-reset",
                "-A INPUT -j REJECT --reject-with icmp-port-unreachable",
                "-A OUTPUT -o lo -j ACCEPT",
                "-A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
                "-A OUTPUT -d 10.213.0.1/32 -p tcp -m tcp --dport 23100 -j ACCEPT",
                "-A OUTPUT -d 10.213.0.1/32 -p tcp -m tcp --dport 23201:23202 -j ACCEPT",
                "-A OUTPUT -d 10.213.0.1/32 -p tcp -m tcp --dport 23211:23213 -j ACCEPT",
                "-A OUTPUT -d 10.213.0.1/32 -p tcp -m tcp --dport 23501 -j ACCEPT",
                "-A OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
                "-A OUTPUT -j REJECT --reject-with icmp-port-unreachable",
            ]
        );
    }

    #[test]
    fn internet_comes_after_the_allowlist_and_the_private_ranges() {
        let p = lab_policy(Internet::parse("80,443").expect("ports"));
        let r = task_rules(&p, &[]);
        let pos = |needle: &str| {
            r.iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} missing in {r:#?}"))
        };
        let router = pos("--dport 23100 -j ACCEPT");
        let private = pos("-d 10.0.0.0/8 -p tcp -j REJECT");
        let metadata = pos("-d 169.254.0.0/16 -p tcp -j REJECT");
        let web = pos("--dports 80,443 -j ACCEPT");
        assert!(router < private && private < web && metadata < web);
        assert_eq!(
            r.last().map(String::as_str),
            Some("-A OUTPUT -j REJECT --reject-with icmp-port-unreachable")
        );
        // No edge known yet: the site port answers nobody.
        assert!(!r.iter().any(|l| l.contains("--dport 80 -j ACCEPT")));
        // 2 + 0 edge + 2 (INPUT) + 2 + 4 allowed + 2 × 9 ranges + 1 + 2 (OUTPUT)
        assert_eq!(r.len(), 31);
        let all = task_rules(&lab_policy(Internet::All), &[]);
        assert!(all.contains(&"-A OUTPUT -p udp -j ACCEPT".to_owned()));
    }

    #[test]
    fn edge_addresses_are_sorted_and_deduplicated_and_agent_sources_admitted() {
        let mut p = lab_policy(Internet::Off);
        p.agent_from = vec![Cidr::parse("10.40.0.0/24").expect("cidr")];
        let a = task_restore(&p, &[ip("10.216.0.9"), ip("10.216.0.3"), ip("10.216.0.9")]);
        let b = task_restore(&p, &[ip("10.216.0.3"), ip("10.216.0.9")]);
        assert_eq!(a, b, "the same set gives the same text (and digest)");
        assert!(a.contains("-A INPUT -s 10.216.0.3/32 -p tcp -m tcp --dport 80 -j ACCEPT\n-A INPUT -s 10.216.0.9/32"));
        assert!(a.contains("-A INPUT -s 10.40.0.0/24 -p tcp -m tcp --dport 9180 -j ACCEPT"));
        assert!(a.starts_with("# pressdock-infra guard"));
        assert!(a.contains(":INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\n"));
        assert!(a.ends_with("COMMIT\n"));
    }

    #[test]
    fn parsing_names_the_bad_part() {
        for (s, want) in [
            ("10.213.0.1", "ADDRESS"),
            ("10.213.0.300:80", "not an IPv4 address"),
            ("10.213.0.1:0", "not a port"),
            ("10.213.0.1:90-80", "backwards"),
            ("10.213.0.1/33:80", "prefix length"),
            ("10.213.0.1/24:80", "host bits"),
        ] {
            let e = Endpoint::parse(s).expect_err(s);
            assert!(format!("{e:#}").contains(want), "{s}: {e:#}");
        }
        assert_eq!(
            Endpoint::parse("10.30.0.0/24:6379").expect("ok"),
            Endpoint {
                net: Cidr::parse("10.30.0.0/24").expect("ok"),
                ports: Ports {
                    first: 6379,
                    last: 6379
                }
            }
        );
        assert_eq!(Internet::parse("off").expect("off"), Internet::Off);
        assert!(Internet::parse("").is_err());
        assert!(Internet::parse("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15").is_ok());
        assert!(Internet::parse("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15-16").is_err());
    }

    #[test]
    fn galera_replication_ports_accept_the_database_nodes_only() {
        let ports = [
            Ports::parse("4567-4568").expect("ok"),
            Ports::parse("4444").expect("ok"),
        ];
        let r = galera_rules(
            &[ip("10.0.3.2"), ip("10.0.3.1"), ip("10.0.3.2")],
            &ports,
            "pd",
        );
        let lines: Vec<String> = r.iter().map(|v| v.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "-p tcp -s 10.0.3.1/32 -m multiport --dports 4567:4568,4444 -m comment --comment pd -j ACCEPT",
                "-p tcp -s 10.0.3.2/32 -m multiport --dports 4567:4568,4444 -m comment --comment pd -j ACCEPT",
                "-p tcp -m multiport --dports 4567:4568,4444 -m comment --comment pd -j REJECT --reject-with tcp-reset",
            ]
        );
    }

    #[test]
    fn ipv6_is_loopback_only() {
        let s = task_restore6();
        assert_eq!(s.matches("-A ").count(), 2);
        assert!(s.contains(":OUTPUT DROP"));
    }
}

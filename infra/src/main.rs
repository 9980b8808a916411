//! `pressdock-infra`: builds and evolves the cluster. `lab up|status|down` manage the local
//! lab (see `infra::lab`).
use anyhow::Result;
use clap::{Parser, Subcommand};
use infra::lab::{self, Lab, STATE, Secrets, proc::Procs, up::UpOptions};
use std::path::Path;

/// Pressdock cluster tool.
#[derive(Parser)]
#[command(name = "pressdock-infra", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The local lab: a real multi-node swarm and data tier on this machine.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
    /// Follow the swarm and write Traefik's routes to the tasks of services labelled
    /// `pressdock.route.hosts` (file provider). Runs beside every Traefik; see infra/README.md.
    Routes {
        /// A swarm manager's docker socket (`unix:///…` or a path).
        #[arg(long)]
        docker_host: String,
        /// The file to write (in the folder Traefik's file provider watches).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Overlay network of the tasks (unless a service's `pressdock.route.network` says).
        #[arg(long, default_value = "pd-sites")]
        network: String,
        /// Engine API version (Docker 20.10: 1.41).
        #[arg(long, default_value = "1.41")]
        api_version: String,
        /// How often to look at the swarm, in milliseconds.
        #[arg(long, default_value_t = 500)]
        interval_ms: u64,
    },
    /// Confine the site tasks of one node: follow its dockerd and give every container
    /// labelled `pressdock.site` the network rules of docs/security.md ("Network
    /// confinement"). One per worker; needs root (nsenter, iptables-restore).
    Guard {
        /// The node's docker socket (`unix:///…` or a path).
        #[arg(long)]
        docker_host: String,
        /// A TCP endpoint site tasks may connect to, `ADDRESS[/PREFIX]:PORT[-PORT]`
        /// (the DB router, Redis, the Sentinels, the platform's agent listener). Repeat.
        #[arg(long = "allow", value_name = "ENDPOINT")]
        allow: Vec<String>,
        /// The public internet: `off`, `all`, or TCP ports (`80,443`: WordPress's updates,
        /// plugin and theme installs). Private, link-local and loopback ranges never count.
        #[arg(long, default_value = "80,443")]
        internet: String,
        /// Swarm services whose tasks are the edge (Traefik): they alone reach the site port.
        #[arg(long = "edge-service", default_value = "pd_traefik")]
        edge_services: Vec<String>,
        /// The overlay network of the sites (where the edge reaches them).
        #[arg(long, default_value = "pd-sites")]
        network: String,
        #[arg(long, default_value_t = 80)]
        site_port: u16,
        #[arg(long, default_value_t = 9180)]
        agent_port: u16,
        /// A network allowed to the agent port (e.g. Prometheus). Repeat. Default: none.
        #[arg(long = "agent-from", value_name = "CIDR")]
        agent_from: Vec<String>,
        /// The container label of site tasks.
        #[arg(long, default_value = "pressdock.site")]
        label: String,
        #[arg(long, default_value = "1.41")]
        api_version: String,
        /// A full pass every this many milliseconds (the edge's addresses, missed events).
        #[arg(long, default_value_t = 1000)]
        resync_ms: u64,
        /// One pass, then exit.
        #[arg(long)]
        once: bool,
    },
    /// On a database node: Galera's replication ports (group communication, IST, SST)
    /// accept the database nodes only (INPUT rules at the top, tagged with --comment).
    /// Prints the rules; `--apply` adds them (idempotent). See docs/security.md.
    GaleraFirewall {
        /// A database node's address. Repeat for each (the node itself included).
        #[arg(long = "db-node", required = true)]
        db_nodes: Vec<std::net::Ipv4Addr>,
        /// Replication ports: gcomm 4567, IST 4568, SST 4444 by default.
        #[arg(long, default_value = "4567-4568,4444")]
        ports: String,
        #[arg(long, default_value = "pressdock-galera")]
        comment: String,
        #[arg(long)]
        apply: bool,
    },
    /// The lab's DNS server (started by `lab up`): NXDOMAIN to every query, at once.
    #[command(name = "lab-dns", hide = true)]
    LabDns {
        #[arg(long)]
        listen: String,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build or converge the lab (idempotent), then print URLs and credentials.
    Up {
        #[arg(long, default_value_t = 1)]
        managers: u8,
        /// Workers (default: as many as the running lab has, else 2). On a running lab
        /// this adds the missing workers or removes the extra ones; other nodes keep running.
        #[arg(long)]
        workers: Option<u8>,
        /// Galera nodes: 3 (default) or 1.
        #[arg(long, default_value_t = 3)]
        galera_nodes: u8,
        /// Fail on missing packages instead of running scripts/install-deps.sh.
        #[arg(long)]
        no_install: bool,
        /// Do not start `pressdock serve` nor create the demo tenant.
        #[arg(long)]
        no_platform: bool,
    },
    /// Nodes, services and servers with their health (exit 1 when something is down).
    Status,
    /// Remove everything the lab made; data too unless --keep-data.
    Down {
        #[arg(long)]
        keep_data: bool,
    },
    /// Fail, restore or drain one node of a running lab (`w1`, `w2`, …).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// SIGKILL every process of the node (dockerd, containerd, its tasks): a worker
    /// failure. The swarm marks it down after about 3 heartbeats (6 s in the lab).
    Kill { name: String },
    /// Start a killed node again (same swarm node, labels and images); waits until Ready.
    Start { name: String },
    /// `docker node update --availability drain`: its tasks move to other nodes.
    Drain { name: String },
    /// `docker node update --availability active`.
    Activate { name: String },
}

/// The running lab, as recorded by the last `lab up`.
fn running_lab(repo: std::path::PathBuf) -> Result<Lab> {
    let Some(topo) = lab::saved_topology() else {
        anyhow::bail!("no lab here ({STATE} has no topology); run `pressdock-infra lab up`");
    };
    Ok(Lab {
        topo,
        secrets: Secrets::load_or_create()?,
        procs: Procs {
            dir: Path::new(STATE).join("pids"),
        },
        repo,
    })
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let repo = lab::repo_root();
    match cli.cmd {
        Cmd::LabDns { listen } => lab::dns::serve(&listen),
        Cmd::GaleraFirewall {
            db_nodes,
            ports,
            comment,
            apply,
        } => {
            use anyhow::Context;
            let ports = ports
                .split(',')
                .map(infra::guard::rules::Ports::parse)
                .collect::<Result<Vec<_>>>()
                .context("--ports")?;
            let rules = infra::guard::rules::galera_rules(&db_nodes, &ports, &comment);
            for r in &rules {
                println!("iptables -A INPUT {}", r.join(" "));
            }
            if apply && infra::guard::ensure_input_rules(&rules)? {
                eprintln!("added at the top of INPUT");
            }
            Ok(())
        }
        Cmd::Guard {
            docker_host,
            allow,
            internet,
            edge_services,
            network,
            site_port,
            agent_port,
            agent_from,
            label,
            api_version,
            resync_ms,
            once,
        } => {
            use anyhow::Context;
            use infra::guard::rules;
            let policy = rules::Policy {
                allow: allow
                    .iter()
                    .map(|a| rules::Endpoint::parse(a))
                    .collect::<Result<_>>()
                    .context("--allow")?,
                internet: rules::Internet::parse(&internet).context("--internet")?,
                not_internet: rules::Policy::default_not_internet(),
                site_port,
                agent_port,
                agent_from: agent_from
                    .iter()
                    .map(|c| rules::Cidr::parse(c))
                    .collect::<Result<_>>()
                    .context("--agent-from")?,
            };
            infra::guard::run(&infra::guard::Options {
                docker_sock: docker_host
                    .strip_prefix("unix://")
                    .unwrap_or(&docker_host)
                    .into(),
                api_version,
                policy,
                edge_services,
                network,
                label,
                resync: std::time::Duration::from_millis(resync_ms.max(100)),
                once,
            })
        }
        Cmd::Routes {
            docker_host,
            out,
            network,
            api_version,
            interval_ms,
        } => infra::routes::run(&infra::routes::Options {
            docker_sock: docker_host
                .strip_prefix("unix://")
                .unwrap_or(&docker_host)
                .into(),
            api_version,
            network,
            out,
            interval: std::time::Duration::from_millis(interval_ms.max(100)),
        }),
        Cmd::Lab { cmd } => match cmd {
            LabCmd::Up {
                managers,
                workers,
                galera_nodes,
                no_install,
                no_platform,
            } => lab::up::up(
                &repo,
                &UpOptions {
                    managers,
                    workers: workers
                        .or_else(|| lab::saved_topology().map(|t| t.workers))
                        .unwrap_or(2),
                    galera_nodes,
                    no_install,
                    no_platform,
                },
            ),
            LabCmd::Status => {
                if lab::saved_topology().is_none() {
                    println!("no lab here ({STATE} has no topology); run `pressdock-infra lab up`");
                    std::process::exit(1);
                }
                let l = running_lab(repo)?;
                if !lab::status::status(&l) {
                    std::process::exit(1);
                }
                Ok(())
            }
            LabCmd::Node { cmd } => {
                if !nix::unistd::Uid::effective().is_root() {
                    anyhow::bail!("`lab node` needs root: run it with sudo");
                }
                let l = running_lab(repo)?;
                let t0 = std::time::Instant::now();
                match cmd {
                    NodeCmd::Kill { name } => {
                        lab::node_ops::kill(&l, &lab::node_ops::find(&l, &name)?)?;
                    }
                    NodeCmd::Start { name } => {
                        let n = lab::node_ops::find(&l, &name)?;
                        // Not while a `lab up`/`lab down` changes the lab.
                        let _lock = lab::acquire_lock()?;
                        lab::node_ops::start(&l, &n)?;
                    }
                    NodeCmd::Drain { name } => {
                        lab::node_ops::set_availability(
                            &l,
                            &lab::node_ops::find(&l, &name)?,
                            "drain",
                        )?;
                    }
                    NodeCmd::Activate { name } => {
                        lab::node_ops::set_availability(
                            &l,
                            &lab::node_ops::find(&l, &name)?,
                            "active",
                        )?;
                    }
                }
                println!("done in {:.1}s", t0.elapsed().as_secs_f64());
                Ok(())
            }
            LabCmd::Down { keep_data } => {
                if !nix::unistd::Uid::effective().is_root() {
                    anyhow::bail!("`lab down` needs root: run it with sudo");
                }
                let _lock = lab::acquire_lock()?;
                let topo = lab::saved_topology().unwrap_or(lab::Topology {
                    managers: 1,
                    workers: 2,
                    galera_nodes: 3,
                });
                std::fs::create_dir_all(STATE)?;
                let l = Lab {
                    topo,
                    secrets: Secrets::load_or_create()?,
                    procs: Procs {
                        dir: Path::new(STATE).join("pids"),
                    },
                    repo,
                };
                lab::down::down(&l, keep_data)
            }
        },
    }
}

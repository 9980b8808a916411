//! `pressdock-infra`: builds and evolves the cluster. `lab up|status|down` manage the local
//! lab (see `infra::lab`); `cluster check|plan|apply` the production cluster declared in
//! `configs/cluster.toml` (see `infra::cluster`).
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
    /// The production cluster declared in a spec (`configs/cluster.toml`).
    Cluster {
        /// The spec.
        #[arg(long, global = true, default_value = "configs/cluster.toml")]
        spec: std::path::PathBuf,
        #[command(subcommand)]
        cmd: ClusterCmd,
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
enum ClusterCmd {
    /// Parse and check the spec, print what it would build (no account needed).
    Check,
    /// The difference between the spec and the account (token: DIGITALOCEAN_TOKEN).
    Plan {
        /// Show the plan with this node replaced (see `apply --replace`).
        #[arg(long)]
        replace: Vec<String>,
    },
    /// Carry the plan out, resource by resource; re-run after a failure to converge.
    Apply {
        /// Allow destroying droplets that the spec no longer has (drain them first).
        #[arg(long)]
        allow_destroy: bool,
        /// Destroy this node and create it again, its volume moved over (a failed node).
        /// Repeatable, but at most one manager and one database node per apply.
        #[arg(long)]
        replace: Vec<String>,
    },
    /// Monthly cost of the spec from DigitalOcean's prices (`/v2/sizes`), per site.
    Cost,
    /// From the droplets to a labelled swarm with its networks and stacks: observes every
    /// machine (docker over SSH), plans the missing steps and runs them.
    Swarm {
        /// Print the steps for machines in no swarm yet; no SSH.
        #[arg(long)]
        dry_run: bool,
        /// SSH user on the nodes.
        #[arg(long, default_value = "root")]
        ssh_user: String,
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

/// `cluster check|plan|apply`.
fn cluster(spec: &Path, cmd: ClusterCmd, repo: &Path) -> Result<()> {
    use infra::cluster::{self, desired::Desired, digitalocean, plan::plan, spec::Checked};
    let checked = Checked::load(spec)?;
    let desired = Desired::from_spec(&checked);
    if matches!(cmd, ClusterCmd::Check) {
        print!("{}", desired.describe(&checked));
        return Ok(());
    }
    let api = std::env::var("PRESSDOCK_DO_API").unwrap_or_else(|_| digitalocean::API.into());
    let mut client = digitalocean::Client::new(&api, digitalocean::Token::from_env()?)?;
    if let Some(ms) = std::env::var("PRESSDOCK_DO_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        client.poll_interval = std::time::Duration::from_millis(ms);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if matches!(cmd, ClusterCmd::Cost) {
            let prices = client.prices().await?;
            let cost = cluster::cost::cost(&checked, &prices).map_err(|e| anyhow::anyhow!(e))?;
            print!("{}", cluster::cost::report(&cost));
            return Ok(());
        }
        let observed = cluster::observe(&client, &desired).await?;
        if let ClusterCmd::Swarm { dry_run, ssh_user } = cmd {
            let (machines, missing) = cluster::swarm::machines(&desired, &observed.droplets);
            if !missing.is_empty() {
                anyhow::bail!(
                    "{} droplet(s) missing or without addresses ({}): run `cluster apply` first",
                    missing.len(),
                    missing.join(", ")
                );
            }
            let docker = cluster::swarm_exec::SshDocker { user: ssh_user };
            let seen = if dry_run {
                cluster::swarm::ObservedSwarm::default()
            } else {
                cluster::swarm_exec::observe(&docker, &machines)?
            };
            let steps = cluster::swarm::plan_swarm(&checked, &machines, &seen, &|_| true);
            for s in &steps {
                println!("{s}");
            }
            println!("swarm: {} steps", steps.len());
            if !dry_run {
                cluster::swarm_exec::execute(
                    &docker,
                    &machines,
                    &steps,
                    repo,
                    std::time::Duration::from_secs(1),
                    &mut |l| eprintln!("{l}"),
                )?;
            }
            return Ok(());
        }
        let replace = match &cmd {
            ClusterCmd::Plan { replace } | ClusterCmd::Apply { replace, .. } => replace.clone(),
            _ => Vec::new(),
        };
        let p = cluster::plan::plan_replacing(&desired, &observed, &replace);
        println!("{p}");
        if let ClusterCmd::Apply { allow_destroy, .. } = cmd {
            if p.is_empty() {
                println!("nothing to do ({} API calls)", client.calls());
                return Ok(());
            }
            cluster::apply::apply(
                &client,
                &desired,
                &observed,
                &p,
                allow_destroy,
                &mut |line| eprintln!("{line}"),
            )
            .await?;
            let after = plan(&desired, &cluster::observe(&client, &desired).await?);
            println!(
                "applied: {} changes, {} API calls; plan now: {}",
                p.changes.len(),
                client.calls(),
                if after.is_empty() {
                    "nothing to do".to_owned()
                } else {
                    after.to_string()
                }
            );
        }
        Ok(())
    })
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
        Cmd::Cluster { spec, cmd } => cluster(&spec, cmd, &repo),
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

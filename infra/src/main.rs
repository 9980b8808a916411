//! `pressdock-infra`: builds and evolves the cluster. `lab up|status|down` manage the local
//! lab (see `infra::lab`); `cluster check|plan|apply` the production cluster declared in
//! `configs/cluster.toml` (see `infra::cluster`).
use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
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
    /// Back the cluster up to S3 (`PRESSDOCK_BACKUP_S3_*`): Galera or a manager's swarm
    /// state. Run by the timers in configs/systemd/; see infra/README.md ("Backups").
    Backup {
        #[command(subcommand)]
        cmd: BackupCmd,
    },
    /// Restore a backup made by `backup` (see infra/README.md, "Restore").
    Restore {
        #[command(subcommand)]
        cmd: RestoreCmd,
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
        /// The Redis the platform and its sites use: `host` (the lab's host Redis and
        /// Sentinels, the default) or `stack` (the cache stack at the cache nodes'
        /// addresses; the workers' guards then let sites reach it). Kept for later
        /// `lab up`s; default: as the running lab has, else `host`.
        #[arg(long)]
        platform_redis: Option<String>,
    },
    /// Nodes, services and servers with their health (exit 1 when something is down).
    Status,
    /// Print one of the lab's passwords on standard output, alone (for a pipe such as
    /// `pressdock-infra lab password staff | pressdock login …`). `lab up` and `lab status`
    /// never print them: their output ends up in logs.
    Password {
        #[arg(value_enum)]
        which: LabPassword,
    },
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
    /// The cluster backup on the lab: `galera` (hot mariabackup of a Synced node to the lab's
    /// S3, bucket `pdlab-cluster`, prefix `pd-lab`), as `backup galera` does in production.
    Backup {
        #[command(subcommand)]
        cmd: LabBackupCmd,
    },
    /// Rebuild the lab's Galera cluster from a backup: the runbook of infra/README.md
    /// ("Restore") on the lab's nodes (stops every node, keeps the old data aside).
    Restore {
        #[command(subcommand)]
        cmd: LabRestoreCmd,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LabPassword {
    /// The platform's staff administrator (admin@pressdock.test).
    Staff,
    /// The demo tenant's owner.
    Demo,
    /// The demo site's WordPress administrator.
    DemoSite,
    /// The Galera router's `pdadmin`.
    Galera,
    /// Redis and Sentinel's `admin`.
    Redis,
}

#[derive(Subcommand)]
enum LabBackupCmd {
    /// Hot backup of the Galera cluster (one Synced node).
    Galera,
    /// The first manager's swarm state, its dockerd stopped for the copy (the lab's edge
    /// pauses for those seconds).
    Swarm,
    /// The Galera backups in the lab's bucket, oldest first.
    List,
}

#[derive(Subcommand)]
enum LabRestoreCmd {
    /// Rebuild the Galera cluster from a backup.
    Galera {
        /// `latest` or a stamp from `lab backup list`.
        #[arg(long, default_value = "latest")]
        from: String,
    },
    /// Recover the first manager's swarm state from a backup and `swarm init
    /// --force-new-cluster` on it.
    Swarm {
        #[arg(long, default_value = "latest")]
        from: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Parse and check the spec, print what it would build (no account needed).
    Check,
    /// The difference between the spec and the account (token: DIGITALOCEAN_TOKEN), and
    /// with --swarm the swarm steps that follow (docker over SSH; the platform's nodes from
    /// PRESSDOCK_API with PRESSDOCK_API_TOKEN).
    Plan {
        /// Show the plan with this node replaced (see `apply --replace`).
        #[arg(long)]
        replace: Vec<String>,
        /// Replace every node the swarm sees down.
        #[arg(long)]
        replace_failed: bool,
        /// Also observe the swarm and the platform (nodes to drain, joins, stack updates).
        #[arg(long)]
        swarm: bool,
        #[arg(long, default_value = "root")]
        ssh_user: String,
    },
    /// Carry the plan out, resource by resource; re-run after a failure to converge. With
    /// --swarm: nodes drained through the platform before their droplets go, then the
    /// swarm steps (join, label, remove old entries, rolling stack updates).
    Apply {
        /// Allow destroying droplets that the spec no longer has.
        #[arg(long)]
        allow_destroy: bool,
        /// Destroy this node and create it again, its volume moved over (a failed node).
        /// Repeatable, but at most one manager and one database node per apply.
        #[arg(long)]
        replace: Vec<String>,
        /// Replace every node the swarm sees down (needs --swarm).
        #[arg(long)]
        replace_failed: bool,
        /// The whole cluster: the swarm and the platform too (see `plan --swarm`).
        #[arg(long)]
        swarm: bool,
        /// With --swarm and no PRESSDOCK_API: drain workers in the swarm only (a cluster
        /// that serves no sites yet).
        #[arg(long)]
        no_platform: bool,
        #[arg(long, default_value = "root")]
        ssh_user: String,
    },
    /// Monthly cost of the spec from DigitalOcean's prices (`/v2/sizes`), per site.
    Cost,
    /// The platform's configuration (`pressdock.toml`) for this cluster: the droplets' VPC
    /// addresses (ProxySQL, the cache stack's Sentinels, Varnish, Gluster), the spec's images
    /// and backups bucket; every credential a file reference (printed: the files to make).
    PlatformConfig {
        /// Write it here (atomically) instead of printing it.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Where the platform reads the credential files (swarm secrets: /run/secrets).
        #[arg(long, default_value = "/run/secrets")]
        secrets_dir: String,
    },
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
    /// A lost manager quorum, after `restore swarm` and dockerd started on the manager the
    /// backup is of (infra/README.md, "Restore"): with --force-new-cluster, `swarm init
    /// --force-new-cluster` on it if it has no leader; then every other manager leaves and
    /// joins it again, one at a time, each `Reachable` before the next.
    RecoverManagers {
        /// The manager holding the restored swarm state (e.g. pd-prod-manager-03).
        #[arg(long)]
        restored: String,
        /// Run `swarm init --force-new-cluster` on it if it has no leader (never otherwise).
        #[arg(long)]
        force_new_cluster: bool,
        /// SSH user on the nodes.
        #[arg(long, default_value = "root")]
        ssh_user: String,
    },
}

#[derive(clap::Args)]
struct GaleraArgs {
    /// Object key prefix: the cluster's name.
    #[arg(long, default_value = "pd-prod")]
    prefix: String,
    /// A user with RELOAD, PROCESS, LOCK TABLES, BINLOG MONITOR (password in
    /// PRESSDOCK_BACKUP_DB_PASSWORD).
    #[arg(long, default_value = "pdbackup")]
    user: String,
    #[arg(long)]
    socket: Option<std::path::PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 3306)]
    port: u16,
    #[arg(long, default_value = "/var/lib/mysql")]
    datadir: std::path::PathBuf,
    /// Not a Galera node (no --galera-info).
    #[arg(long)]
    no_galera_info: bool,
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Hot backup of this database node: mariabackup | zstd → S3.
    Galera(GaleraArgs),
    /// This manager's swarm state (/var/lib/docker/swarm) as a tar → S3.
    Swarm {
        #[arg(long, default_value = "pd-prod")]
        prefix: String,
        #[arg(long, default_value = "/var/lib/docker/swarm")]
        dir: std::path::PathBuf,
        /// Stop dockerd for the copy (consistent raft files), start it after.
        #[arg(long)]
        stop_docker: bool,
        /// The manager's name in the key (default: this host's name).
        #[arg(long)]
        host: Option<String>,
    },
    /// The backups in the bucket.
    List {
        #[arg(long, default_value = "pd-prod")]
        prefix: String,
        /// `galera` or `swarm/<host>`.
        #[arg(long, default_value = "galera")]
        kind: String,
    },
}

#[derive(Subcommand)]
enum RestoreCmd {
    /// Fetch, check (SHA-256), unpack and prepare a Galera backup into an empty data
    /// directory; then start the first node of the new cluster on it (infra/README.md).
    Galera {
        #[arg(long, default_value = "pd-prod")]
        prefix: String,
        /// `latest` or a stamp from `backup list`.
        #[arg(long, default_value = "latest")]
        from: String,
        #[arg(long)]
        datadir: std::path::PathBuf,
        /// chown -R the data directory to this user.
        #[arg(long, default_value = "mysql")]
        owner: String,
    },
    /// Unpack a manager's swarm state into the docker root (dockerd stopped); then start
    /// dockerd and run `cluster recover-managers --force-new-cluster` (infra/README.md).
    Swarm {
        #[arg(long, default_value = "pd-prod")]
        prefix: String,
        /// The manager whose backup it is.
        #[arg(long)]
        host: String,
        #[arg(long, default_value = "latest")]
        from: String,
        #[arg(long, default_value = "/var/lib/docker")]
        docker_root: std::path::PathBuf,
    },
}

fn backup_cmd(cmd: BackupCmd) -> Result<()> {
    use infra::cluster::backup;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let s3 = backup::S3::from_env()?;
        let t0 = std::time::Instant::now();
        let stored = match cmd {
            BackupCmd::List { prefix, kind } => {
                for b in backup::list_backups(&s3, &prefix, &kind).await? {
                    println!("{b}");
                }
                return Ok(());
            }
            BackupCmd::Galera(a) => {
                s3.ensure_bucket().await?;
                let g = backup::Galera {
                    user: a.user,
                    password: backup::Secret::new(
                        std::env::var("PRESSDOCK_BACKUP_DB_PASSWORD").unwrap_or_default(),
                    ),
                    socket: a.socket,
                    host: a.host,
                    port: a.port,
                    datadir: a.datadir,
                    galera_info: !a.no_galera_info,
                };
                let b = backup::backup_galera(&s3, &g, &a.prefix).await?;
                if let Some(p) = &b.position {
                    println!("galera backup {} at position {p}", b.stamp);
                }
                b.stored
            }
            BackupCmd::Swarm {
                prefix,
                dir,
                stop_docker,
                host,
            } => {
                s3.ensure_bucket().await?;
                let host = match host {
                    Some(h) => h,
                    None => std::fs::read_to_string("/proc/sys/kernel/hostname")?
                        .trim()
                        .to_owned(),
                };
                backup::backup_swarm(&s3, &dir, &host, &prefix, stop_docker).await?
            }
        };
        println!(
            "stored {} ({} bytes, sha256 {}) in {:.1}s",
            stored.key,
            stored.bytes,
            stored.sha256,
            t0.elapsed().as_secs_f64()
        );
        Ok(())
    })
}

fn restore_cmd(cmd: RestoreCmd) -> Result<()> {
    use infra::cluster::backup;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let s3 = backup::S3::from_env()?;
        let t0 = std::time::Instant::now();
        match cmd {
            RestoreCmd::Galera {
                prefix,
                from,
                datadir,
                owner,
            } => {
                let owner = (!owner.is_empty()).then_some(owner.as_str());
                let r = backup::restore_galera(&s3, &prefix, &from, &datadir, owner).await?;
                println!(
                    "galera backup {} restored and prepared in {} ({:.1}s)",
                    r.stamp,
                    datadir.display(),
                    t0.elapsed().as_secs_f64()
                );
                match r.position {
                    Some(p) => println!(
                        "grastate.dat: position {p}, safe_to_bootstrap 1: start this node with \
                         `galera_new_cluster`, then the others (empty data) one at a time"
                    ),
                    None => println!("no Galera position in this backup (a plain MariaDB)"),
                }
            }
            RestoreCmd::Swarm {
                prefix,
                host,
                from,
                docker_root,
            } => {
                let stamp = backup::restore_swarm(&s3, &prefix, &host, &from, &docker_root).await?;
                println!(
                    "swarm state {stamp} of {host} unpacked into {} ({:.1}s)",
                    docker_root.display(),
                    t0.elapsed().as_secs_f64()
                );
                println!(
                    "next: `systemctl start docker` here, then from the operator's machine \
                     `pressdock-infra cluster recover-managers --restored {host} \
                     --force-new-cluster` (infra/README.md, \"Restore\")"
                );
            }
        }
        Ok(())
    })
}

#[derive(Subcommand)]
enum NodeCmd {
    /// SIGKILL every process of the node (dockerd, containerd, its tasks): a worker
    /// failure. The swarm marks it down after about 3 heartbeats (6 s in the lab).
    Kill { name: String },
    /// Start a killed node again (same swarm node, labels and images); waits until Ready.
    Start { name: String },
    /// Replace a worker's machine (a failed one, or any): its sites moved off it through
    /// the platform, the machine destroyed, a new one made under its name, joined and
    /// labelled, and active again in the platform; as `cluster apply --swarm --replace`.
    /// Managers are refused (quorum).
    Replace { name: String },
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
        if let ClusterCmd::PlatformConfig { out, secrets_dir } = &cmd {
            let machines = every_machine(&desired, &observed.droplets)?;
            let text = infra::platform_config::render(&cluster::platform_config::production(
                &checked,
                &machines,
                secrets_dir,
            )?);
            match out {
                Some(path) => {
                    let tmp = path.with_extension("toml.tmp");
                    std::fs::write(&tmp, &text)
                        .with_context(|| format!("writing {}", tmp.display()))?;
                    std::fs::rename(&tmp, path)
                        .with_context(|| format!("writing {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{text}"),
            }
            eprintln!("the platform reads these files (under {secrets_dir}):");
            for (name, what) in cluster::platform_config::SECRET_FILES {
                eprintln!("  {name:<40} {what}");
            }
            return Ok(());
        }
        if let ClusterCmd::RecoverManagers {
            restored,
            force_new_cluster,
            ssh_user,
        } = &cmd
        {
            let (machines, _) = cluster::swarm::machines(&desired, &observed.droplets);
            let docker = cluster::swarm_exec::SshDocker {
                user: ssh_user.clone(),
            };
            let r = cluster::swarm_exec::recover_managers(
                &docker,
                &machines,
                restored,
                *force_new_cluster,
                std::time::Duration::from_secs(1),
                &mut |l| eprintln!("{l}"),
            )?;
            println!(
                "managers: {} rejoined ({}), {} already reachable, {} not answering ({}){}",
                r.rejoined.len(),
                r.rejoined.join(", "),
                r.already.len(),
                r.unreachable.len(),
                r.unreachable.join(", "),
                if r.forced {
                    "; swarm init --force-new-cluster ran"
                } else {
                    ""
                }
            );
            if !r.unreachable.is_empty() {
                println!("next: cluster apply --swarm --replace-failed");
            }
            println!("then: cluster apply --swarm (labels the rejoined managers' new nodes)");
            return Ok(());
        }
        if let ClusterCmd::Swarm { dry_run, ssh_user } = cmd {
            let machines = every_machine(&desired, &observed.droplets)?;
            let docker = cluster::swarm_exec::SshDocker { user: ssh_user };
            let seen = if dry_run {
                cluster::swarm::ObservedSwarm::default()
            } else {
                cluster::swarm_exec::observe(&docker, &machines)?
            };
            let steps = cluster::swarm::plan_swarm_with(
                &checked,
                &machines,
                &seen,
                &|_| true,
                &cluster::swarm::stack_files(repo, &checked.images.vars())?,
            );
            for s in &steps {
                println!("{s}");
            }
            println!("swarm: {} steps", steps.len());
            if !dry_run {
                let leader = cluster::swarm::leader(&machines, &seen)
                    .map(|m| m.name.clone())
                    .unwrap_or_default();
                cluster::swarm_exec::execute(
                    &docker,
                    &machines,
                    &leader,
                    &steps,
                    cluster::swarm_exec::StackSource {
                        repo,
                        set: &checked.images.vars(),
                    },
                    std::time::Duration::from_secs(1),
                    &mut |l| eprintln!("{l}"),
                )?;
            }
            // The storage tier: the Gluster volume and its mounts (ssh to the nodes).
            let shell = cluster::storage::SshShell { user: docker.user };
            storage_steps(&checked, &machines, &shell, !dry_run, dry_run)?;
            platform_config_on_managers(&checked, &machines, &shell, !dry_run)?;
            return Ok(());
        }
        let (replace, replace_failed, with_swarm, ssh_user) = match &cmd {
            ClusterCmd::Plan {
                replace,
                replace_failed,
                swarm,
                ssh_user,
            }
            | ClusterCmd::Apply {
                replace,
                replace_failed,
                swarm,
                ssh_user,
                ..
            } => (replace.clone(), *replace_failed, *swarm, ssh_user.clone()),
            _ => (Vec::new(), false, false, String::new()),
        };
        if with_swarm {
            use cluster::evolve::{AnyPlatform, ApiToken, Cluster, PlatformClient};
            let platform = match (
                std::env::var("PRESSDOCK_API"),
                std::env::var("PRESSDOCK_API_TOKEN"),
            ) {
                (Ok(api), Ok(t)) if !api.is_empty() => {
                    AnyPlatform::Api(PlatformClient::new(&api, ApiToken::new(t))?)
                }
                _ => AnyPlatform::None,
            };
            let docker = cluster::swarm_exec::SshDocker { user: ssh_user };
            let c = Cluster {
                provider: &client,
                docker: &docker,
                platform: &platform,
                checked: &checked,
                desired: &desired,
                repo,
                stacks: cluster::swarm::stack_files(repo, &checked.images.vars())?,
                poll: std::time::Duration::from_secs(2),
                evacuation_timeout: std::time::Duration::from_secs(3600),
                drain_without_platform: matches!(
                    cmd,
                    ClusterCmd::Apply {
                        no_platform: true,
                        ..
                    }
                ),
            };
            let seen = c.observe().await?;
            let p = c.plan(&seen, &replace, replace_failed);
            println!("{p}");
            let shell = cluster::storage::SshShell {
                user: docker.user.clone(),
            };
            let (machines, missing) = cluster::swarm::machines(&desired, &seen.observed.droplets);
            if let ClusterCmd::Apply { allow_destroy, .. } = cmd {
                if !p.is_empty() {
                    c.apply(allow_destroy, &replace, replace_failed, &mut |l| {
                        eprintln!("{l}")
                    })
                    .await?;
                }
                // The storage tier once every droplet has its addresses: the Gluster volume
                // and the workers' and managers' mounts (a second run plans nothing).
                let after = cluster::observe(&client, &desired).await?;
                let (machines, missing) = cluster::swarm::machines(&desired, &after.droplets);
                if !missing.is_empty() {
                    anyhow::bail!(
                        "storage: droplet(s) without addresses ({}): run apply again",
                        missing.join(", ")
                    );
                }
                let ran = storage_steps(&checked, &machines, &shell, true, false)?;
                platform_config_on_managers(&checked, &machines, &shell, true)?;
                if p.is_empty() {
                    println!("nothing to do{}", if ran > 0 { " but storage" } else { "" });
                    return Ok(());
                }
                let after = c.plan(&c.observe().await?, &[], false);
                println!(
                    "applied; plan now: {}",
                    if after.is_empty() {
                        "nothing to do".to_owned()
                    } else {
                        after.to_string()
                    }
                );
                return Ok(());
            }
            if missing.is_empty() {
                storage_steps(&checked, &machines, &shell, false, false)?;
            } else {
                println!("storage: planned once every droplet exists");
            }
            return Ok(());
        }
        let p = cluster::plan::plan_with(&desired, &observed, &replace, replace_failed);
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

/// The platform's configuration (`cluster::platform_config`, credentials under
/// /run/secrets) written to every manager whose copy differs, if `run`; else only said.
fn platform_config_on_managers(
    checked: &infra::cluster::spec::Checked,
    machines: &[infra::cluster::swarm::Machine],
    shell: &infra::cluster::storage::SshShell,
    run: bool,
) -> Result<()> {
    use infra::cluster::platform_config::{MANAGER_PATH, install, production};
    let text = infra::platform_config::render(&production(checked, machines, "/run/secrets")?);
    if !run {
        println!("platform: {MANAGER_PATH} on every manager (`cluster platform-config` prints it)");
        return Ok(());
    }
    let written = install(shell, machines, &text)?;
    println!(
        "platform: {MANAGER_PATH} {}",
        if written.is_empty() {
            "unchanged on every manager".to_owned()
        } else {
            format!("written on {}", written.join(", "))
        }
    );
    Ok(())
}

/// The storage tier's steps (`cluster::storage`): observed over SSH (or, `fresh`, as for
/// nodes with nothing yet), printed, and run if `run`. A refusal (a brick would be lost) is
/// an error. Returns how many steps there were.
fn storage_steps(
    checked: &infra::cluster::spec::Checked,
    machines: &[infra::cluster::swarm::Machine],
    shell: &infra::cluster::storage::SshShell,
    run: bool,
    fresh: bool,
) -> Result<usize> {
    let poll = std::time::Duration::from_secs(1);
    let seen = if fresh {
        infra::cluster::storage::ObservedStorage::default()
    } else {
        infra::cluster::storage::observe(shell, machines, poll)?
    };
    let steps = infra::cluster::storage::plan_storage(checked, machines, &seen)
        .map_err(|e| anyhow::anyhow!("storage: refusing: {e}"))?;
    for s in &steps {
        println!("> {s}");
    }
    println!("storage: {} steps", steps.len());
    if run {
        infra::cluster::storage::execute(shell, machines, &steps, poll, &mut |l| eprintln!("{l}"))?;
    }
    Ok(steps.len())
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
        Cmd::Backup { cmd } => backup_cmd(cmd),
        Cmd::Restore { cmd } => restore_cmd(cmd),
        Cmd::LabDns { listen } => lab::dns::serve(&listen),
        Cmd::GaleraFirewall {
            db_nodes,
            ports,
            comment,
            apply,
        } => {
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
                platform_redis,
            } => {
                if let Some(r) = platform_redis {
                    lab::PlatformRedis::parse(&r)?.save()?;
                }
                lab::up::up(
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
                )
            }
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
                    NodeCmd::Replace { name } => {
                        let n = lab::node_ops::find(&l, &name)?;
                        let platform_id = {
                            let _lock = lab::acquire_lock()?;
                            lab::node_ops::replace_machine(&l, &n)?
                        };
                        // The new machine: what `lab up` makes for a missing node (its own lock).
                        lab::up::up(
                            &l.repo,
                            &UpOptions {
                                managers: l.topo.managers,
                                workers: l.topo.workers,
                                galera_nodes: l.topo.galera_nodes,
                                no_install: true,
                                no_platform: true,
                            },
                        )?;
                        if let Some(id) = platform_id {
                            lab::machines::activate(&l, &n, &id)?;
                        }
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
            LabCmd::Backup { cmd } => {
                let l = running_lab(repo)?;
                let t0 = std::time::Instant::now();
                match cmd {
                    LabBackupCmd::List => {
                        // Galera backups; the swarm's are under swarm/<manager>.
                        let s3 = lab::cluster_backup::s3(&l)?;
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?;
                        for b in rt.block_on(infra::cluster::backup::list_backups(
                            &s3,
                            lab::cluster_backup::PREFIX,
                            "galera",
                        ))? {
                            println!("{b}");
                        }
                    }
                    LabBackupCmd::Swarm => {
                        let _lock = lab::acquire_lock()?;
                        let (b, down) = lab::cluster_backup::backup_swarm(&l)?;
                        println!(
                            "swarm state: {} ({} bytes, sha256 {}); dockerd down {:.1}s, {:.1}s in all",
                            b.key,
                            b.bytes,
                            b.sha256,
                            down.as_secs_f64(),
                            t0.elapsed().as_secs_f64()
                        );
                    }
                    LabBackupCmd::Galera => {
                        let (node, b) = lab::cluster_backup::backup_galera(&l)?;
                        println!(
                            "galera backup {} of node g{node}: {} ({} bytes, sha256 {}), position {} in {:.1}s",
                            b.stamp,
                            b.stored.key,
                            b.stored.bytes,
                            b.stored.sha256,
                            b.position
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                            t0.elapsed().as_secs_f64()
                        );
                    }
                }
                Ok(())
            }
            LabCmd::Restore { cmd } => {
                if !nix::unistd::Uid::effective().is_root() {
                    anyhow::bail!("`lab restore` needs root: run it with sudo");
                }
                let l = running_lab(repo)?;
                // Not while a `lab up`/`lab down` changes the lab.
                let _lock = lab::acquire_lock()?;
                let from = match cmd {
                    LabRestoreCmd::Swarm { from } => {
                        let (stamp, took) = lab::cluster_backup::restore_swarm(&l, &from)?;
                        println!(
                            "swarm state {stamp} restored; the manager leads a new one-manager raft \
                             {:.1}s after its dockerd stopped",
                            took.as_secs_f64()
                        );
                        return Ok(());
                    }
                    LabRestoreCmd::Galera { from } => from,
                };
                let r = lab::cluster_backup::restore_galera(&l, &from)?;
                println!(
                    "galera cluster rebuilt from backup {} at {}: prepared in {:.1}s, \
                     {} node(s) Synced {:.1}s after the first stopped",
                    r.restored.stamp,
                    r.restored
                        .position
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    r.prepare.as_secs_f64(),
                    l.topo.galera_nodes,
                    r.outage.as_secs_f64()
                );
                Ok(())
            }
            LabCmd::Password { which } => {
                if lab::saved_topology().is_none() {
                    anyhow::bail!(
                        "no lab here ({STATE} has no topology); run `pressdock-infra lab up`"
                    );
                }
                let secrets = lab::Secrets::load_or_create()?;
                let password = match which {
                    LabPassword::Staff => secrets.staff_password,
                    LabPassword::Demo => secrets.demo_password,
                    LabPassword::Galera => secrets.galera_admin,
                    LabPassword::Redis => secrets.redis_admin,
                    LabPassword::DemoSite => {
                        let file = lab::platform::demo_admin_file();
                        let line = std::fs::read_to_string(&file).with_context(|| {
                            format!(
                                "reading {} (written when lab up creates the demo site)",
                                file.display()
                            )
                        })?;
                        line.split(" / ")
                            .nth(1)
                            .map(|p| p.trim().to_owned())
                            .with_context(|| format!("{} holds no password", file.display()))?
                    }
                };
                println!("{password}");
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

/// Every droplet of the spec as a machine with its addresses, or an error naming the ones
/// missing or without addresses (`cluster apply` makes them).
fn every_machine(
    desired: &infra::cluster::desired::Desired,
    droplets: &[infra::cluster::provider::ObservedDroplet],
) -> anyhow::Result<Vec<infra::cluster::swarm::Machine>> {
    let (machines, missing) = infra::cluster::swarm::machines(desired, droplets);
    if !missing.is_empty() {
        anyhow::bail!(
            "{} droplet(s) missing or without addresses ({}): run `cluster apply` first",
            missing.len(),
            missing.join(", ")
        );
    }
    Ok(machines)
}

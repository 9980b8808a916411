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
}

#[derive(Subcommand)]
enum LabCmd {
    /// Build or converge the lab (idempotent), then print URLs and credentials.
    Up {
        #[arg(long, default_value_t = 1)]
        managers: u8,
        #[arg(long, default_value_t = 2)]
        workers: u8,
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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let repo = lab::repo_root();
    match cli.cmd {
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
                    workers,
                    galera_nodes,
                    no_install,
                    no_platform,
                },
            ),
            LabCmd::Status => {
                let Some(topo) = lab::saved_topology() else {
                    println!("no lab here ({STATE} has no topology); run `pressdock-infra lab up`");
                    std::process::exit(1);
                };
                let l = Lab {
                    topo,
                    secrets: Secrets::load_or_create()?,
                    procs: Procs {
                        dir: Path::new(STATE).join("pids"),
                    },
                    repo,
                };
                if !lab::status::status(&l) {
                    std::process::exit(1);
                }
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

//! `pressdock-infra`: builds and evolves the cluster (see issue 3 for `lab`).
use clap::Parser;

/// Pressdock cluster tool.
#[derive(Parser)]
#[command(name = "pressdock-infra", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}

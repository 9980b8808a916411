//! `pressdock-agent`: the per-site agent that will run inside every site's container.
//!
//! Until its issue lands it only prints help and version; see the README.

use clap::Parser;

/// The Pressdock site agent (not implemented yet: prints help and version only).
#[derive(Parser)]
#[command(name = "pressdock-agent", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "pressdock-agent {}: not implemented yet; see --help",
        env!("CARGO_PKG_VERSION")
    );
}

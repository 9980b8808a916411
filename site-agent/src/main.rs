//! `pressdock-agent`: see the library's docs (`site_agent`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use site_agent::config::Settings;

/// The Pressdock site agent: the entrypoint of a site's container.
#[derive(Parser)]
#[command(name = "pressdock-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Render the files, supervise php-fpm and nginx, serve health and metrics, report
    /// (the default).
    Run,
    /// Render wp-config, the object-cache drop-in and the nginx/php-fpm configs, then exit.
    Render,
    /// The container's health check: exit 0 when the agent's `/healthz` (or `/readyz`
    /// with `--ready`) answers 200.
    Health {
        #[arg(long)]
        ready: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Health { ready }) => health(if ready { "/readyz" } else { "/healthz" }),
        Some(Cmd::Render) => with_settings(|s| {
            let php = site_agent::state::StateStore::open(&s.paths.state_dir)
                .ok()
                .and_then(|st| st.held().map(|d| d.php.clone()))
                .unwrap_or_default();
            site_agent::agent::render_all(&s, &php)
        }),
        Some(Cmd::Run) | None => with_settings(|s| {
            // no_new_privs before any thread exists (it is per thread, inherited): php-fpm,
            // nginx and whatever PHP executes never gain privileges through exec (setuid
            // binaries, file capabilities), on engines that cannot set it for the task.
            nix::sys::prctl::set_no_new_privs()?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(site_agent::agent::run(s))
        }),
    }
}

fn with_settings(f: impl FnOnce(Settings) -> anyhow::Result<()>) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PRESSDOCK_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Settings::from_env().and_then(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "pressdock-agent failed");
            ExitCode::FAILURE
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: the health check runs every 10 s in every task and
/// must cost next to nothing (no runtime, no settings, no secrets read).
fn health(path: &str) -> ExitCode {
    let listen = std::env::var("PRESSDOCK_AGENT_LISTEN").unwrap_or_else(|_| "0.0.0.0:9180".into());
    let port = listen
        .parse::<SocketAddr>()
        .map(|a| a.port())
        .unwrap_or(9180);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let result = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.take(64 * 1024).read_to_string(&mut out)?;
        Ok(out)
    })();
    match result {
        Ok(text) if text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200") => {
            ExitCode::SUCCESS
        }
        Ok(text) => {
            eprintln!("{}", text.lines().last().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{addr}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

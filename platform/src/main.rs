//! `pressdock`: the control plane server (`serve`, `migrate`) and the CLI for its API.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use platform::{cli, config::Config, db, server};

#[derive(Parser)]
#[command(
    name = "pressdock",
    version,
    about = "Pressdock: WordPress hosting on Docker Swarm"
)]
struct Args {
    /// Configuration file (TOML); also PRESSDOCK_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the API server and the job runner.
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print the effective configuration, secrets redacted.
    Config,
    /// Print the OpenAPI document.
    Openapi,
    #[command(flatten)]
    Client(Box<cli::Command>),
}

fn init_tracing() {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let json = std::env::var("PRESSDOCK_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init()
    } else {
        builder.init()
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = match args.command {
        Command::Serve => {
            init_tracing();
            run_server(args.config).await
        }
        Command::Migrate => {
            init_tracing();
            migrate(args.config).await
        }
        Command::Config => Config::load(args.config.as_deref())
            .and_then(|c| toml::to_string_pretty(&c).context("printing"))
            .map(|text| cli::write_out(format_args!("{text}"), "")),
        Command::Openapi => {
            cli::write_out(format_args!("{}", platform::api::openapi_pretty()), "\n");
            Ok(())
        }
        Command::Client(command) => cli::run(*command).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_server(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    let listen = config.listen;
    let state = server::prepare(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen} (is another server using the port?)"))?;
    tracing::info!(address = %listen, "pressdock serving");
    server::serve(state, listener, server::shutdown_on_signal()).await
}

async fn migrate(file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(file.as_deref())?;
    let pool = db::connect(&config.database_url, 2).await?;
    db::migrate(&pool).await?;
    tracing::info!("migrations applied");
    Ok(())
}

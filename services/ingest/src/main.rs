//! `flightline-ingest`: `serve` takes flight records over HTTP into Kafka; `sink` moves them from
//! Kafka into ClickHouse. One binary, two roles, two Deployments.

mod produce;
mod sink;

use clap::{Parser, Subcommand};
use flightline_service::config::{FromEnv, IngestConfig, SinkConfig};

#[derive(Parser)]
#[command(
    name = "flightline-ingest",
    version,
    about = "Flight records: HTTP → Kafka (serve) and Kafka → ClickHouse (sink)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// POST /v1/flights → Kafka. Settings from the environment: `flightline_service::config::IngestConfig`.
    Serve,
    /// Kafka → ClickHouse. Settings from the environment: `flightline_service::config::SinkConfig`.
    Sink,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flightline_service::server::init_logging();
    match Cli::parse().command {
        Command::Serve => {
            let config = IngestConfig::from_env()?;
            config.server.log_start();
            produce::serve(config).await
        }
        Command::Sink => {
            let config = SinkConfig::from_env()?;
            config.server.log_start();
            sink::run(config).await
        }
    }
}

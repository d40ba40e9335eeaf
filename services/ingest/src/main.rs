//! `flightline-ingest`: `serve` takes flight records over HTTP into Kafka; `sink` moves them from
//! Kafka into ClickHouse. One binary, two roles, two Deployments.

mod produce;
mod sink;

use clap::{Parser, Subcommand};

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
    /// POST /v1/flights → Kafka. Environment: LISTEN_ADDR, KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC,
    /// INGEST_MAX_BODY_BYTES, INGEST_MAX_RECORDS, API_KEYS_FILE, HTTP_* limits, and for TLS/SASL
    /// KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_*_PEM.
    Serve,
    /// Kafka → ClickHouse. Environment: LISTEN_ADDR (metrics), KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC,
    /// KAFKA_DLQ_TOPIC, KAFKA_CONSUMER_GROUP, CLICKHOUSE_URL, CLICKHOUSE_DATABASE, CLICKHOUSE_TABLE,
    /// CLICKHOUSE_USER, CLICKHOUSE_PASSWORD, CLICKHOUSE_CA_PEM, SINK_BATCH_SIZE, SINK_MAX_BATCH_BYTES,
    /// SINK_LINGER_MS, and the Kafka TLS/SASL variables of `serve`.
    Sink,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flightline_service::server::init_logging();
    match Cli::parse().command {
        Command::Serve => produce::serve().await,
        Command::Sink => sink::run().await,
    }
}

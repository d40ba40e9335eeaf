//! The services' configurations: typed clap arguments read from the environment the operator
//! writes (`contract` holds the names and defaults). Each concern is one `Args` struct; each
//! service flattens the ones it needs into its configuration ([`IngestConfig`], [`SinkConfig`],
//! [`QueryConfig`], [`PredictConfig`]), which it reads once at start with
//! [`FromEnv::from_env`]. The operator's tests parse its Deployments' env with the same types.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::Args;
use clap::builder::NonEmptyStringValueParser;

pub use crate::contract::FromEnv;
use crate::contract::{auth, clickhouse, http, ingest, kafka, predict, query, records, service, sink};
use crate::flight::Identity;

/// What every service reads: where to listen, which pipeline and component it serves, and the
/// server constants a user may tune.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct ServerArgs {
    /// Address the HTTP server listens on.
    #[arg(long, env = service::LISTEN_ADDR, default_value = service::LISTEN_ADDR_DEFAULT)]
    pub listen_addr: SocketAddr,
    /// `<namespace>/<name>` of the pipeline.
    #[arg(long, env = service::PIPELINE)]
    pub pipeline: Option<String>,
    /// The component this pod runs.
    #[arg(long, env = service::COMPONENT)]
    pub component: Option<String>,
    /// Log filter; `server::init_logging` reads it (before anything else can be logged).
    #[arg(long, env = service::LOG_FILTER, default_value = service::LOG_FILTER_DEFAULT)]
    pub log_filter: String,
    /// Time to receive the request line and headers, in seconds.
    #[arg(long, env = http::HEADER_READ_TIMEOUT_SECONDS, default_value_t = http::HEADER_READ_TIMEOUT_SECONDS_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub header_read_timeout_seconds: u32,
    /// Connections held open at once.
    #[arg(long, env = http::MAX_CONNECTIONS, default_value_t = http::MAX_CONNECTIONS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: u64,
    /// Fraction of API requests failed on purpose (drills).
    #[arg(long, env = service::FAULT_ERROR_RATIO, default_value_t = 0.0, value_parser = ratio)]
    pub fault_error_ratio: f64,
}

fn ratio(text: &str) -> Result<f64, String> {
    let ratio: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&ratio) { Ok(ratio) } else { Err(format!("{ratio} must be between 0 and 1")) }
}

impl ServerArgs {
    /// Logs what the pod serves, so its first line says which pipeline and component it is.
    pub fn log_start(&self) {
        tracing::info!(
            pipeline = self.pipeline.as_deref().unwrap_or_default(),
            component = self.component.as_deref().unwrap_or_default(),
            version = env!("CARGO_PKG_VERSION"),
            "starting"
        );
    }
}

/// `LISTEN_ADDR`, default `0.0.0.0:8080`.
pub fn listen_addr() -> anyhow::Result<SocketAddr> {
    Ok(ServerArgs::from_env()?.listen_addr)
}

/// How long a client may take to send the request line and headers (slow-loris bound), default 10 s.
pub fn header_read_timeout() -> anyhow::Result<Duration> {
    Ok(Duration::from_secs(ServerArgs::from_env()?.header_read_timeout_seconds.into()))
}

/// How many connections a service holds open at once, default 1,024; past it, new connections
/// wait in the kernel's accept queue instead of each costing a task and buffers.
pub fn max_connections() -> anyhow::Result<usize> {
    Ok(usize::try_from(ServerArgs::from_env()?.max_connections)?)
}

/// The fault switch's ratio (0 = off).
pub fn fault_error_ratio() -> anyhow::Result<f64> {
    Ok(ServerArgs::from_env()?.fault_error_ratio)
}

/// What one service's HTTP side allows: per-client rate, in-flight requests and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Sustained requests per second per client; 0 turns rate limiting off.
    pub requests_per_second: u32,
    /// Requests a client may send at once before the sustained rate applies.
    pub burst: u32,
    /// Requests in flight before new ones get 503 + `Retry-After`.
    pub max_concurrent_requests: u32,
    /// Whole-request time, body read included.
    pub request_timeout_seconds: u32,
    /// Time to receive the whole request body.
    pub body_read_timeout_seconds: u32,
}

impl HttpLimits {
    /// The defaults of the services and of the CRD (`spec.<component>.limits`; the operator's
    /// `HttpLimitValues::default_for` takes them from here).
    pub const INGEST: Self = Self::defaults(20, 40, 16, 60);
    pub const QUERY: Self = Self::defaults(1000, 2000, 64, 15);
    pub const PREDICT: Self = Self::defaults(1000, 2000, 64, 10);

    const fn defaults(requests_per_second: u32, burst: u32, max_concurrent_requests: u32, timeout: u32) -> Self {
        Self {
            requests_per_second,
            burst,
            max_concurrent_requests,
            request_timeout_seconds: timeout,
            body_read_timeout_seconds: http::BODY_READ_TIMEOUT_SECONDS_DEFAULT,
        }
    }

    /// The service's defaults, overridden by whatever the environment sets.
    pub fn from_env(defaults: Self) -> anyhow::Result<Self> {
        HttpLimitArgs::from_env()?.limits(defaults)
    }
}

/// The HTTP limits as the environment sets them; unset ones take the service's defaults.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct HttpLimitArgs {
    #[arg(long, env = http::RATE_LIMIT_RPS)]
    pub rate_limit_rps: Option<u32>,
    #[arg(long, env = http::RATE_LIMIT_BURST)]
    pub rate_limit_burst: Option<u32>,
    #[arg(long, env = http::MAX_CONCURRENT_REQUESTS, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: Option<u32>,
    #[arg(long, env = http::REQUEST_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u32).range(1..))]
    pub request_timeout_seconds: Option<u32>,
    #[arg(long, env = http::BODY_READ_TIMEOUT_SECONDS, value_parser = clap::value_parser!(u32).range(1..))]
    pub body_read_timeout_seconds: Option<u32>,
}

impl HttpLimitArgs {
    pub fn limits(&self, defaults: HttpLimits) -> anyhow::Result<HttpLimits> {
        let limits = HttpLimits {
            requests_per_second: self.rate_limit_rps.unwrap_or(defaults.requests_per_second),
            burst: self.rate_limit_burst.unwrap_or(defaults.burst),
            max_concurrent_requests: self.max_concurrent_requests.unwrap_or(defaults.max_concurrent_requests),
            request_timeout_seconds: self.request_timeout_seconds.unwrap_or(defaults.request_timeout_seconds),
            body_read_timeout_seconds: self.body_read_timeout_seconds.unwrap_or(defaults.body_read_timeout_seconds),
        };
        anyhow::ensure!(
            limits.requests_per_second == 0 || limits.burst > 0,
            "{} must be at least 1 when {} is set",
            http::RATE_LIMIT_BURST,
            http::RATE_LIMIT_RPS
        );
        Ok(limits)
    }
}

/// Who may call the API (`auth::Auth::from_args`).
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct AuthArgs {
    /// An empty value is kept (and refused as holding no keys): a Secret key left empty must not
    /// turn auth off.
    #[arg(long, env = auth::API_KEY_HASHES)]
    pub api_key_hashes: Option<String>,
    #[arg(long, env = auth::API_KEYS_FILE)]
    pub api_keys_file: Option<PathBuf>,
    #[arg(long, env = auth::JWT_ALGORITHM)]
    pub jwt_algorithm: Option<String>,
    #[arg(long, env = auth::JWT_KEY)]
    pub jwt_key: Option<String>,
    #[arg(long, env = auth::JWT_ISSUER)]
    pub jwt_issuer: Option<String>,
    #[arg(long, env = auth::JWT_AUDIENCE)]
    pub jwt_audience: Option<String>,
}

/// Where records go.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct KafkaArgs {
    #[arg(long, env = kafka::BOOTSTRAP_SERVERS, value_parser = NonEmptyStringValueParser::new())]
    pub bootstrap_servers: String,
    #[arg(long, env = kafka::TOPIC, value_parser = NonEmptyStringValueParser::new())]
    pub topic: String,
}

/// TLS and SASL to Kafka (`connect::KafkaSecurity::from_args` checks them together). Empty
/// values are unset ones.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct KafkaSecurityArgs {
    #[arg(long, env = kafka::SECURITY_PROTOCOL)]
    pub security_protocol: Option<String>,
    #[arg(long, env = kafka::SASL_MECHANISM)]
    pub sasl_mechanism: Option<String>,
    #[arg(long, env = kafka::SASL_USERNAME)]
    pub sasl_username: Option<String>,
    #[arg(long, env = kafka::SASL_PASSWORD)]
    pub sasl_password: Option<String>,
    #[arg(long, env = kafka::SSL_CA_PEM)]
    pub ssl_ca_pem: Option<String>,
    #[arg(long, env = kafka::SSL_CERTIFICATE_PEM)]
    pub ssl_certificate_pem: Option<String>,
    #[arg(long, env = kafka::SSL_KEY_PEM)]
    pub ssl_key_pem: Option<String>,
}

/// Where flights are stored. The database and table are plain identifiers (they are quoted into SQL).
#[derive(Args, Clone, Debug, PartialEq)]
pub struct ClickHouseArgs {
    #[arg(long = "clickhouse-url", env = clickhouse::URL, value_parser = NonEmptyStringValueParser::new())]
    pub url: String,
    #[arg(long = "clickhouse-database", env = clickhouse::DATABASE, value_parser = identifier)]
    pub database: String,
    #[arg(long = "clickhouse-table", env = clickhouse::TABLE, value_parser = identifier)]
    pub table: String,
    /// Empty: ClickHouse's default user.
    #[arg(long = "clickhouse-user", env = clickhouse::USER)]
    pub user: Option<String>,
    #[arg(long = "clickhouse-password", env = clickhouse::PASSWORD)]
    pub password: Option<String>,
    /// Empty: the system's roots.
    #[arg(long = "clickhouse-ca-pem", env = clickhouse::CA_PEM)]
    pub ca_pem: Option<String>,
}

fn identifier(text: &str) -> Result<String, String> {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(text.to_string())
    } else {
        Err("not a plain identifier (letters, digits, '_')".into())
    }
}

impl ClickHouseArgs {
    /// A client for the URL (TLS with the CA for `https://`), with the user when one is set.
    pub fn client(&self) -> anyhow::Result<::clickhouse::Client> {
        let ca = self.ca_pem.as_deref().filter(|v| !v.is_empty());
        let client = crate::connect::clickhouse_client(&self.url, ca)?;
        Ok(match self.user.as_deref().filter(|u| !u.is_empty()) {
            Some(user) => client.with_user(user).with_password(self.password.clone().unwrap_or_default()),
            None => client,
        })
    }
}

/// How stored flights are identified.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct RecordArgs {
    /// Default `Record`.
    #[arg(long, env = records::IDENTITY, value_parser = identity)]
    pub identity: Option<Identity>,
}

fn identity(text: &str) -> Result<Identity, String> {
    Identity::parse(text).ok_or_else(|| "must be Record or ScheduledFlight".to_string())
}

impl RecordArgs {
    pub fn identity(&self) -> Identity {
        self.identity.unwrap_or(Identity::Record)
    }
}

/// Ingest's request bounds.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct IngestArgs {
    #[arg(long, env = ingest::MAX_BODY_BYTES, default_value_t = ingest::MAX_BODY_BYTES_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_body_bytes: u64,
    #[arg(long, env = ingest::MAX_RECORDS, default_value_t = ingest::MAX_RECORDS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_records: u64,
}

/// The sink's consumer group, dead-letter topic and batches.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct SinkArgs {
    #[arg(long, env = kafka::CONSUMER_GROUP, value_parser = NonEmptyStringValueParser::new())]
    pub consumer_group: String,
    /// Empty: no dead-letter topic.
    #[arg(long, env = kafka::DLQ_TOPIC)]
    pub dead_letter_topic: Option<String>,
    #[arg(long, env = sink::BATCH_SIZE, default_value_t = sink::BATCH_SIZE_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_size: u64,
    #[arg(long, env = sink::MAX_BATCH_BYTES, default_value_t = sink::MAX_BATCH_BYTES_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_bytes: u64,
    #[arg(long, env = sink::LINGER_MS, default_value_t = sink::LINGER_MS_DEFAULT)]
    pub linger_ms: u64,
}

impl SinkArgs {
    pub fn dead_letter_topic(&self) -> Option<&str> {
        self.dead_letter_topic.as_deref().filter(|t| !t.is_empty())
    }
}

/// Query's bounds and result cache.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct QueryArgs {
    #[arg(long, env = query::MAX_ROWS, default_value_t = query::MAX_ROWS_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_rows: u32,
    #[arg(long, env = query::MAX_EXECUTION_SECONDS, default_value_t = query::MAX_EXECUTION_SECONDS_DEFAULT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_execution_seconds: u32,
    #[arg(long, env = query::FRESHNESS_MS, default_value_t = query::FRESHNESS_MS_DEFAULT,
          value_parser = clap::value_parser!(u64).range(0..=query::FRESHNESS_MS_MAX))]
    pub freshness_ms: u64,
    #[arg(long, env = query::CACHE_MAX_ENTRIES, default_value_t = query::CACHE_MAX_ENTRIES_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_max_entries: u64,
    #[arg(long, env = query::CACHE_MAX_BYTES, default_value_t = query::CACHE_MAX_BYTES_DEFAULT)]
    pub cache_max_bytes: u64,
}

/// Predict's model.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct PredictArgs {
    /// Empty: the built-in model.
    #[arg(long, env = predict::MODEL_PATH)]
    pub model_path: Option<String>,
}

impl PredictArgs {
    pub fn model_path(&self) -> Option<&str> {
        self.model_path.as_deref().filter(|p| !p.is_empty())
    }
}

/// `flightline-ingest serve`.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct IngestConfig {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub http: HttpLimitArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,
    #[command(flatten)]
    pub records: RecordArgs,
    #[command(flatten)]
    pub ingest: IngestArgs,
}

/// `flightline-ingest sink`.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct SinkConfig {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,
    #[command(flatten)]
    pub records: RecordArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub sink: SinkArgs,
}

/// `flightline-query`.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct QueryConfig {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub http: HttpLimitArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub clickhouse: ClickHouseArgs,
    #[command(flatten)]
    pub query: QueryArgs,
}

/// `flightline-predict` (serve).
#[derive(Args, Clone, Debug, PartialEq)]
pub struct PredictConfig {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub http: HttpLimitArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub predict: PredictArgs,
}

/// The four roles the service binaries run (the operator's components), by the configuration
/// each reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Ingest,
    Sink,
    Query,
    Predict,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Ingest, Role::Sink, Role::Query, Role::Predict];

    /// The variables the service reads, in its configuration's order.
    pub fn env_keys(self) -> &'static [String] {
        static KEYS: LazyLock<[Vec<String>; 4]> = LazyLock::new(|| {
            [IngestConfig::env_keys(), SinkConfig::env_keys(), QueryConfig::env_keys(), PredictConfig::env_keys()]
        });
        &KEYS[self as usize]
    }

    /// Reads the service's configuration from `lookup` and checks everything it can without
    /// I/O, as the service does at start: the operator's tests run its Deployments through this.
    pub fn check(self, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        let auth = |args: &AuthArgs| crate::auth::Auth::from_args(args).map(drop);
        let kafka = |args: &KafkaSecurityArgs| crate::connect::KafkaSecurity::from_args(args).map(drop);
        match self {
            Role::Ingest => {
                let config = IngestConfig::from_lookup(lookup)?;
                config.http.limits(HttpLimits::INGEST)?;
                auth(&config.auth)?;
                kafka(&config.kafka_security)
            }
            Role::Sink => kafka(&SinkConfig::from_lookup(lookup)?.kafka_security),
            Role::Query => {
                let config = QueryConfig::from_lookup(lookup)?;
                config.http.limits(HttpLimits::QUERY)?;
                auth(&config.auth)
            }
            Role::Predict => {
                let config = PredictConfig::from_lookup(lookup)?;
                config.http.limits(HttpLimits::PREDICT)?;
                auth(&config.auth)
            }
        }
    }
}

/// ClickHouse settings every statement of query runs with: reads only (`readonly=2`, not 1, so the
/// per-query limits can still be set), a server-side time limit, and result limits that throw
/// rather than silently cut the answer.
pub fn clickhouse_read_only_settings(max_execution_seconds: u32) -> [(&'static str, String); 3] {
    [
        ("readonly", "2".into()),
        ("max_execution_time", max_execution_seconds.to_string()),
        ("result_overflow_mode", "throw".into()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::contract::KEYS;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// What the operator always writes for the sink, minus nothing: the smallest accepted env.
    fn sink_env() -> BTreeMap<String, String> {
        vars(&[
            (kafka::BOOTSTRAP_SERVERS, "k:9092"),
            (kafka::TOPIC, "t"),
            (kafka::CONSUMER_GROUP, "g"),
            (clickhouse::URL, "http://ch:8123"),
            (clickhouse::DATABASE, "flightline"),
            (clickhouse::TABLE, "flights"),
        ])
    }

    fn sink(env: &BTreeMap<String, String>) -> anyhow::Result<SinkConfig> {
        SinkConfig::from_lookup(|name| env.get(name).cloned())
    }

    fn refused<T: FromEnv + std::fmt::Debug>(env: &BTreeMap<String, String>) -> String {
        T::from_lookup(|name| env.get(name).cloned()).unwrap_err().to_string()
    }

    #[test]
    fn the_contract_lists_exactly_what_the_services_read() {
        let read: BTreeSet<String> = Role::ALL.iter().flat_map(|role| role.env_keys().iter().cloned()).collect();
        let listed: BTreeSet<String> = KEYS.iter().map(|key| key.name.to_string()).collect();
        assert_eq!(read, listed);
        for role in Role::ALL {
            let keys = role.env_keys();
            assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len(), "{role:?} reads a variable twice");
        }
    }

    #[test]
    fn defaults_are_the_contracts() {
        let config = sink(&sink_env()).unwrap();
        assert_eq!(config.server.listen_addr, service::LISTEN_ADDR_DEFAULT.parse().unwrap());
        assert_eq!(config.server.log_filter, service::LOG_FILTER_DEFAULT);
        assert_eq!(config.server.header_read_timeout_seconds, http::HEADER_READ_TIMEOUT_SECONDS_DEFAULT);
        assert_eq!(config.server.max_connections, http::MAX_CONNECTIONS_DEFAULT);
        assert_eq!(config.server.fault_error_ratio, 0.0);
        assert_eq!(config.records.identity(), Identity::Record);
        assert_eq!(config.sink.batch_size, sink::BATCH_SIZE_DEFAULT);
        assert_eq!(config.sink.max_batch_bytes, sink::MAX_BATCH_BYTES_DEFAULT);
        assert_eq!(config.sink.linger_ms, sink::LINGER_MS_DEFAULT);
        assert_eq!(config.sink.dead_letter_topic(), None);
        assert_eq!(config.clickhouse.user, None);

        let query = QueryConfig::from_lookup(|name| sink_env().get(name).cloned()).unwrap();
        assert_eq!(query.query.max_rows, query::MAX_ROWS_DEFAULT);
        assert_eq!(query.query.max_execution_seconds, query::MAX_EXECUTION_SECONDS_DEFAULT);
        assert_eq!(query.query.freshness_ms, query::FRESHNESS_MS_DEFAULT);
        assert_eq!(query.query.cache_max_entries, query::CACHE_MAX_ENTRIES_DEFAULT);
        assert_eq!(query.query.cache_max_bytes, query::CACHE_MAX_BYTES_DEFAULT);
        assert_eq!(query.http.limits(HttpLimits::QUERY).unwrap(), HttpLimits::QUERY);
        assert_eq!(query.auth, AuthArgs::default());

        let ingest = IngestConfig::from_lookup(|name| sink_env().get(name).cloned()).unwrap();
        assert_eq!(ingest.ingest.max_body_bytes, ingest::MAX_BODY_BYTES_DEFAULT);
        assert_eq!(ingest.ingest.max_records, ingest::MAX_RECORDS_DEFAULT);
        assert_eq!(ingest.http.limits(HttpLimits::INGEST).unwrap(), HttpLimits::INGEST);

        // Predict needs nothing: the built-in model, open API, default limits.
        let predict = PredictConfig::from_lookup(|_| None).unwrap();
        assert_eq!(predict.predict.model_path(), None);
        assert_eq!(predict.http.limits(HttpLimits::PREDICT).unwrap(), HttpLimits::PREDICT);
        Role::Predict.check(|_| None).unwrap();
    }

    #[test]
    fn set_values_replace_the_defaults() {
        let mut env = sink_env();
        env.extend(vars(&[
            (service::LISTEN_ADDR, "127.0.0.1:9000"),
            (records::IDENTITY, "ScheduledFlight"),
            (kafka::DLQ_TOPIC, "t.dlq"),
            (sink::BATCH_SIZE, "5"),
            (sink::LINGER_MS, "0"),
            (clickhouse::USER, "writer"),
        ]));
        let config = sink(&env).unwrap();
        assert_eq!(config.server.listen_addr.port(), 9000);
        assert_eq!(config.records.identity(), Identity::ScheduledFlight);
        assert_eq!(config.sink.dead_letter_topic(), Some("t.dlq"));
        assert_eq!((config.sink.batch_size, config.sink.linger_ms), (5, 0));
        assert_eq!(config.clickhouse.user.as_deref(), Some("writer"));
        // The operator writes an empty dead-letter topic when it is off.
        env.insert(kafka::DLQ_TOPIC.into(), String::new());
        assert_eq!(sink(&env).unwrap().sink.dead_letter_topic(), None);
        let limits = HttpLimitArgs { rate_limit_rps: Some(0), max_concurrent_requests: Some(8), ..Default::default() };
        let limits = limits.limits(HttpLimits::INGEST).unwrap();
        assert_eq!((limits.requests_per_second, limits.max_concurrent_requests, limits.burst), (0, 8, 40));
    }

    #[test]
    fn bad_values_are_refused_naming_the_variable() {
        let with = |pairs: &[(&str, &str)]| {
            let mut env = sink_env();
            env.extend(vars(pairs));
            env
        };
        let mut missing = sink_env();
        missing.remove(kafka::TOPIC);
        assert_eq!(refused::<SinkConfig>(&missing), "KAFKA_TOPIC must be set");
        for (name, value, why) in [
            (kafka::TOPIC, "", "KAFKA_TOPIC must not be empty"),
            (service::LISTEN_ADDR, "everywhere", "LISTEN_ADDR=\"everywhere\": invalid socket address"),
            (records::IDENTITY, "Flight", "FLIGHTLINE_IDENTITY=\"Flight\": must be Record or ScheduledFlight"),
            (clickhouse::TABLE, "f; DROP TABLE f", "CLICKHOUSE_TABLE=\"f; DROP TABLE f\": not a plain identifier"),
            (sink::BATCH_SIZE, "0", "SINK_BATCH_SIZE=\"0\": 0 is not in 1.."),
            (sink::MAX_BATCH_BYTES, "-1", "SINK_MAX_BATCH_BYTES=\"-1\""),
            (sink::LINGER_MS, "", "SINK_LINGER_MS=\"\""),
            (http::MAX_CONNECTIONS, "0", "HTTP_MAX_CONNECTIONS=\"0\""),
            (service::FAULT_ERROR_RATIO, "2", "FLIGHTLINE_FAULT_ERROR_RATIO=\"2\": 2 must be between 0 and 1"),
        ] {
            let message = refused::<SinkConfig>(&with(&[(name, value)]));
            assert!(message.starts_with(why), "{name}={value:?}: {message}");
        }
        for (name, value, why) in [
            (query::FRESHNESS_MS, "3600001", "QUERY_FRESHNESS_MS=\"3600001\": 3600001 is not in 0..=3600000"),
            (query::MAX_EXECUTION_SECONDS, "0", "QUERY_MAX_EXECUTION_SECONDS=\"0\""),
            (http::MAX_CONCURRENT_REQUESTS, "0", "HTTP_MAX_CONCURRENT_REQUESTS=\"0\""),
            (http::REQUEST_TIMEOUT_SECONDS, "soon", "HTTP_REQUEST_TIMEOUT_SECONDS=\"soon\": invalid digit"),
        ] {
            let message = refused::<QueryConfig>(&with(&[(name, value)]));
            assert!(message.starts_with(why), "{name}={value:?}: {message}");
        }
        let burst = with(&[(http::RATE_LIMIT_RPS, "5"), (http::RATE_LIMIT_BURST, "0")]);
        let message = Role::Query.check(|name| burst.get(name).cloned()).unwrap_err().to_string();
        assert_eq!(message, "HTTP_RATE_LIMIT_BURST must be at least 1 when HTTP_RATE_LIMIT_RPS is set");
    }

    /// A Secret key left empty must not turn auth off, nor TLS-less SASL on.
    #[test]
    fn empty_credentials_fail_closed() {
        let env = vars(&[(auth::API_KEY_HASHES, "")]);
        let message = Role::Predict.check(|name| env.get(name).cloned()).unwrap_err().to_string();
        assert!(message.contains("API_KEY_HASHES holds no keys"), "{message}");
        let env = vars(&[(auth::JWT_ALGORITHM, "HS256")]);
        let message = Role::Predict.check(|name| env.get(name).cloned()).unwrap_err().to_string();
        assert_eq!(message, "JWT_ALGORITHM and JWT_KEY go together");
        let mut env = sink_env();
        env.extend(vars(&[
            (kafka::SECURITY_PROTOCOL, "SASL_SSL"),
            (kafka::SASL_MECHANISM, "PLAIN"),
            (kafka::SASL_USERNAME, "u"),
            (kafka::SASL_PASSWORD, ""),
        ]));
        let message = Role::Sink.check(|name| env.get(name).cloned()).unwrap_err().to_string();
        assert_eq!(message, "KAFKA_SASL_PASSWORD must be set for SASL_SSL");
    }
}

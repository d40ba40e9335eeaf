//! The environment contract between the operator and the services: every variable's name, and
//! its default where it has one, defined once. The operator writes the variables from these
//! constants (`operator/src/desired/workloads.rs`, `spec/resolve.rs`, `spec/security.rs`), the
//! services read them through the typed clap configurations of [`crate::config`]
//! (`#[arg(env = ...)]`), and the FlightPipeline CRD forbids users to set the reserved ones
//! ([`is_reserved`], the CEL rule of `operator/src/crd_rules.rs`).
//!
//! [`KEYS`] lists every variable; a test checks it against the variables the four service
//! configurations declare, so a key cannot be added on one side only.

use std::ffi::{OsStr, OsString};

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command, FromArgMatches};

/// What every service reads.
pub mod service {
    /// Address the HTTP server (API, health, metrics) listens on.
    pub const LISTEN_ADDR: &str = "LISTEN_ADDR";
    pub const LISTEN_ADDR_DEFAULT: &str = "0.0.0.0:8080";
    /// `<namespace>/<name>` of the FlightPipeline the pod serves; the services log it at start.
    pub const PIPELINE: &str = "FLIGHTLINE_PIPELINE";
    /// The component the pod runs (`ingest`, `sink`, `query`, `predict`); logged at start.
    pub const COMPONENT: &str = "FLIGHTLINE_COMPONENT";
    /// Log filter (tracing's `EnvFilter` syntax), read by `server::init_logging`.
    pub const LOG_FILTER: &str = "RUST_LOG";
    pub const LOG_FILTER_DEFAULT: &str = "info";
    /// Fraction (0 to 1) of API requests answered with 503 `fault_injected`, for SLO drills.
    pub const FAULT_ERROR_RATIO: &str = "FLIGHTLINE_FAULT_ERROR_RATIO";
}

/// How stored flights are identified (ingest and the sink).
pub mod records {
    /// `spec.identity`: `Record` (the default) or `ScheduledFlight`.
    pub const IDENTITY: &str = "FLIGHTLINE_IDENTITY";
}

/// The HTTP server's limits: the first four per component from `spec.<component>.limits` (their
/// defaults are `config::HttpLimits::{INGEST,QUERY,PREDICT}`, the CRD's too), the rest service
/// constants a user may tune through `spec.<component>.env`.
pub mod http {
    /// Sustained requests per second per client; 0 turns rate limiting off.
    pub const RATE_LIMIT_RPS: &str = "HTTP_RATE_LIMIT_RPS";
    /// Requests a client may send at once before the sustained rate applies.
    pub const RATE_LIMIT_BURST: &str = "HTTP_RATE_LIMIT_BURST";
    /// Requests in flight before new ones get 503.
    pub const MAX_CONCURRENT_REQUESTS: &str = "HTTP_MAX_CONCURRENT_REQUESTS";
    /// Whole-request time, body read included, in seconds.
    pub const REQUEST_TIMEOUT_SECONDS: &str = "HTTP_REQUEST_TIMEOUT_SECONDS";
    /// Time to receive a request body, in seconds.
    pub const BODY_READ_TIMEOUT_SECONDS: &str = "HTTP_BODY_READ_TIMEOUT_SECONDS";
    pub const BODY_READ_TIMEOUT_SECONDS_DEFAULT: u32 = 30;
    /// Time to receive the request line and headers (slow-loris bound), in seconds.
    pub const HEADER_READ_TIMEOUT_SECONDS: &str = "HTTP_HEADER_READ_TIMEOUT_SECONDS";
    pub const HEADER_READ_TIMEOUT_SECONDS_DEFAULT: u32 = 10;
    /// Connections held open at once; past it, new ones wait in the kernel's accept queue.
    pub const MAX_CONNECTIONS: &str = "HTTP_MAX_CONNECTIONS";
    pub const MAX_CONNECTIONS_DEFAULT: u64 = 1024;
}

/// Who may call the HTTP APIs (`auth.rs`); none set means auth off.
pub mod auth {
    /// SHA-256 hex hashes of the API keys, one per line (from `spec.auth.apiKeysSecret`).
    pub const API_KEY_HASHES: &str = "API_KEY_HASHES";
    /// A file of such hashes, when `API_KEY_HASHES` is not set.
    pub const API_KEYS_FILE: &str = "API_KEYS_FILE";
    /// `HS256` or `RS256`; goes with `JWT_KEY`.
    pub const JWT_ALGORITHM: &str = "JWT_ALGORITHM";
    /// The HS256 secret or the RS256 PEM public key.
    pub const JWT_KEY: &str = "JWT_KEY";
    /// Required `iss` claim, when set.
    pub const JWT_ISSUER: &str = "JWT_ISSUER";
    /// Required `aud` claim, when set.
    pub const JWT_AUDIENCE: &str = "JWT_AUDIENCE";
}

/// Kafka: where records go, and TLS and SASL (`connect.rs`).
pub mod kafka {
    pub const BOOTSTRAP_SERVERS: &str = "KAFKA_BOOTSTRAP_SERVERS";
    pub const TOPIC: &str = "KAFKA_TOPIC";
    /// The sink's dead-letter topic; empty or unset: none (unstorable records are dropped, counted).
    pub const DLQ_TOPIC: &str = "KAFKA_DLQ_TOPIC";
    /// The sink's consumer group.
    pub const CONSUMER_GROUP: &str = "KAFKA_CONSUMER_GROUP";
    /// `PLAINTEXT` (the default), `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    pub const SECURITY_PROTOCOL: &str = "KAFKA_SECURITY_PROTOCOL";
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub const SASL_MECHANISM: &str = "KAFKA_SASL_MECHANISM";
    pub const SASL_USERNAME: &str = "KAFKA_SASL_USERNAME";
    pub const SASL_PASSWORD: &str = "KAFKA_SASL_PASSWORD";
    /// PEM CA bundle of the brokers' certificates; unset: the system's roots.
    pub const SSL_CA_PEM: &str = "KAFKA_SSL_CA_PEM";
    /// PEM client certificate and key (mutual TLS), both or neither.
    pub const SSL_CERTIFICATE_PEM: &str = "KAFKA_SSL_CERTIFICATE_PEM";
    pub const SSL_KEY_PEM: &str = "KAFKA_SSL_KEY_PEM";
}

/// ClickHouse: where flights are stored (sink) and read (query).
pub mod clickhouse {
    pub const URL: &str = "CLICKHOUSE_URL";
    pub const DATABASE: &str = "CLICKHOUSE_DATABASE";
    pub const TABLE: &str = "CLICKHOUSE_TABLE";
    /// User and password, from a Secret; unset: ClickHouse's default user.
    pub const USER: &str = "CLICKHOUSE_USER";
    pub const PASSWORD: &str = "CLICKHOUSE_PASSWORD";
    /// PEM CA bundle of an `https://` URL's certificate; unset: the system's roots.
    pub const CA_PEM: &str = "CLICKHOUSE_CA_PEM";
}

/// Ingest's request bounds (`spec.ingest`).
pub mod ingest {
    pub const MAX_BODY_BYTES: &str = "INGEST_MAX_BODY_BYTES";
    pub const MAX_BODY_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
    pub const MAX_RECORDS: &str = "INGEST_MAX_RECORDS";
    pub const MAX_RECORDS_DEFAULT: u64 = crate::flight::DEFAULT_MAX_RECORDS as u64;
}

/// The sink's batches (`spec.sink`).
pub mod sink {
    pub const BATCH_SIZE: &str = "SINK_BATCH_SIZE";
    pub const BATCH_SIZE_DEFAULT: u64 = 10_000;
    pub const MAX_BATCH_BYTES: &str = "SINK_MAX_BATCH_BYTES";
    pub const MAX_BATCH_BYTES_DEFAULT: u64 = 16 * 1024 * 1024;
    pub const LINGER_MS: &str = "SINK_LINGER_MS";
    pub const LINGER_MS_DEFAULT: u64 = 1_000;
}

/// Query's bounds (`spec.query`) and its result cache.
pub mod query {
    pub const MAX_ROWS: &str = "QUERY_MAX_ROWS";
    pub const MAX_ROWS_DEFAULT: u32 = 10_000;
    pub const MAX_EXECUTION_SECONDS: &str = "QUERY_MAX_EXECUTION_SECONDS";
    pub const MAX_EXECUTION_SECONDS_DEFAULT: u32 = 10;
    /// How old a cached answer may be; 0: no cache.
    pub const FRESHNESS_MS: &str = "QUERY_FRESHNESS_MS";
    pub const FRESHNESS_MS_DEFAULT: u64 = 2_000;
    /// An hour.
    pub const FRESHNESS_MS_MAX: u64 = 3_600_000;
    pub const CACHE_MAX_ENTRIES: &str = "QUERY_CACHE_MAX_ENTRIES";
    pub const CACHE_MAX_ENTRIES_DEFAULT: u64 = 1_024;
    /// An answer over an eighth of it is not stored.
    pub const CACHE_MAX_BYTES: &str = "QUERY_CACHE_MAX_BYTES";
    pub const CACHE_MAX_BYTES_DEFAULT: u64 = 64 << 20;
}

/// Predict's model.
pub mod predict {
    /// Path of the model artifact; empty or unset: the model built into the binary.
    pub const MODEL_PATH: &str = "PREDICT_MODEL_PATH";
}

/// Who sets a variable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetBy {
    /// The operator, from the spec: `spec.<component>.env` may not set it.
    Operator,
    /// A service constant (or, for `RUST_LOG`, an operator default) a user may tune through
    /// `spec.<component>.env`, unless it starts with a [`RESERVED_PREFIXES`] entry.
    User,
}

/// One variable of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub name: &'static str,
    pub set_by: SetBy,
}

const fn operator(name: &'static str) -> Key {
    Key { name, set_by: SetBy::Operator }
}
const fn user(name: &'static str) -> Key {
    Key { name, set_by: SetBy::User }
}

/// Every variable of the contract.
pub const KEYS: &[Key] = &[
    operator(service::LISTEN_ADDR),
    operator(service::PIPELINE),
    operator(service::COMPONENT),
    user(service::LOG_FILTER),
    user(service::FAULT_ERROR_RATIO),
    operator(records::IDENTITY),
    operator(http::RATE_LIMIT_RPS),
    operator(http::RATE_LIMIT_BURST),
    operator(http::MAX_CONCURRENT_REQUESTS),
    operator(http::REQUEST_TIMEOUT_SECONDS),
    user(http::BODY_READ_TIMEOUT_SECONDS),
    user(http::HEADER_READ_TIMEOUT_SECONDS),
    user(http::MAX_CONNECTIONS),
    operator(auth::API_KEY_HASHES),
    user(auth::API_KEYS_FILE),
    operator(auth::JWT_ALGORITHM),
    operator(auth::JWT_KEY),
    operator(auth::JWT_ISSUER),
    operator(auth::JWT_AUDIENCE),
    operator(kafka::BOOTSTRAP_SERVERS),
    operator(kafka::TOPIC),
    operator(kafka::DLQ_TOPIC),
    operator(kafka::CONSUMER_GROUP),
    operator(kafka::SECURITY_PROTOCOL),
    operator(kafka::SASL_MECHANISM),
    operator(kafka::SASL_USERNAME),
    operator(kafka::SASL_PASSWORD),
    operator(kafka::SSL_CA_PEM),
    operator(kafka::SSL_CERTIFICATE_PEM),
    operator(kafka::SSL_KEY_PEM),
    operator(clickhouse::URL),
    operator(clickhouse::DATABASE),
    operator(clickhouse::TABLE),
    operator(clickhouse::USER),
    operator(clickhouse::PASSWORD),
    operator(clickhouse::CA_PEM),
    operator(ingest::MAX_BODY_BYTES),
    operator(ingest::MAX_RECORDS),
    operator(sink::BATCH_SIZE),
    operator(sink::MAX_BATCH_BYTES),
    operator(sink::LINGER_MS),
    operator(query::MAX_ROWS),
    operator(query::MAX_EXECUTION_SECONDS),
    operator(query::FRESHNESS_MS),
    user(query::CACHE_MAX_ENTRIES),
    user(query::CACHE_MAX_BYTES),
    operator(predict::MODEL_PATH),
];

/// Name spaces of the services' variables: `spec.<component>.env` may set nothing in them, so a
/// variable added later is reserved from the start.
pub const RESERVED_PREFIXES: [&str; 8] =
    ["KAFKA_", "CLICKHOUSE_", "INGEST_", "SINK_", "QUERY_", "PREDICT_", "API_KEY", "JWT_"];

/// Whether `spec.<component>.env` may not set `name`: the operator sets it, or it is in a
/// reserved name space.
pub fn is_reserved(name: &str) -> bool {
    match KEYS.iter().find(|key| key.name == name) {
        Some(key) => key.set_by == SetBy::Operator,
        None => RESERVED_PREFIXES.iter().any(|prefix| name.starts_with(prefix)),
    }
}

/// The user's variables inside a reserved name space (`QUERY_CACHE_MAX_ENTRIES`): the CEL rule
/// lets them through.
pub fn tunable_inside_prefixes() -> Vec<&'static str> {
    KEYS.iter()
        .filter(|key| key.set_by == SetBy::User)
        .map(|key| key.name)
        .filter(|name| RESERVED_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .collect()
}

/// The operator's variables outside the reserved name spaces: with [`RESERVED_PREFIXES`], what
/// the CRD's CEL rule lists.
pub fn reserved_outside_prefixes() -> Vec<&'static str> {
    KEYS.iter()
        .filter(|key| key.set_by == SetBy::Operator)
        .map(|key| key.name)
        .filter(|name| !RESERVED_PREFIXES.iter().any(|prefix| name.starts_with(prefix)))
        .collect()
}

/// A clap configuration (`#[derive(Args)]` with `#[arg(long, env = ...)]` on every field) read
/// from the environment.
///
/// clap reads `env` when the command is built, from the process; to read any variable lookup the
/// same way (the operator's tests check its Deployments with it), the values are handed to clap
/// as `--<long>=<value>` of the arguments that declare the variable, and the process environment
/// is cut off. Unset is absent; an empty value is an empty value (each configuration decides what
/// an empty string means; an empty number is an error). Errors name the variable.
pub trait FromEnv: Args + FromArgMatches + Sized {
    /// From the process environment.
    fn from_env() -> anyhow::Result<Self> {
        Self::from_os_lookup(|name| std::env::var_os(name))
    }

    /// From a lookup of raw values, as the process environment holds them: a value that is not
    /// UTF-8 is an error naming the variable, not an unset one (an API key hash or a CA that
    /// could not be read must not turn auth or TLS off).
    fn from_os_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> anyhow::Result<Self> {
        let mut values = std::collections::BTreeMap::new();
        for name in Self::env_keys() {
            if let Some(value) = lookup(&name) {
                let value = value.into_string().map_err(|_| anyhow::anyhow!("{name} is not valid UTF-8"))?;
                values.insert(name, value);
            }
        }
        Self::from_lookup(|name| values.get(name).cloned())
    }

    /// From any lookup.
    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let command = command::<Self>();
        let mut argv = Vec::new();
        for arg in command.get_arguments() {
            let (Some(name), Some(long)) = (arg.get_env().and_then(OsStr::to_str), arg.get_long()) else {
                continue;
            };
            if let Some(value) = lookup(name) {
                argv.push(format!("--{long}={value}"));
            }
        }
        // clap captured each `env` variable's process value when the command was built and
        // would fall back to it for an argument absent here: cut it off, the lookup alone counts.
        let detached = command.clone().mut_args(|arg| arg.env(clap::builder::Resettable::Reset));
        let matches = detached.try_get_matches_from(argv).map_err(|e| explain(&command, &e))?;
        Self::from_arg_matches(&matches).map_err(|e| explain(&command, &e))
    }

    /// The variables this configuration reads.
    fn env_keys() -> Vec<String> {
        command::<Self>()
            .get_arguments()
            .filter_map(|arg| arg.get_env().and_then(OsStr::to_str))
            .map(str::to_string)
            .collect()
    }
}

impl<T: Args + FromArgMatches> FromEnv for T {}

/// The configuration as a clap command that reads no process environment (the variables come
/// in as arguments).
fn command<T: Args>() -> Command {
    T::augment_args(Command::new("flightline-service").no_binary_name(true))
        .disable_help_flag(true)
        .disable_version_flag(true)
}

/// A clap error in the environment's words: `NAME must be set`, `NAME="value": why`.
fn explain(command: &Command, error: &clap::Error) -> anyhow::Error {
    // clap shows an argument as `--long <VALUE>`; the user set `NAME`.
    let env_of = |shown: &str| -> String {
        let long = shown.trim_start_matches('-').split([' ', '=']).next().unwrap_or_default();
        command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))
            .and_then(|arg| arg.get_env().and_then(OsStr::to_str))
            .map_or_else(|| shown.to_string(), str::to_string)
    };
    let names: Vec<String> = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(shown)) => vec![env_of(shown)],
        Some(ContextValue::Strings(shown)) => shown.iter().map(|s| env_of(s)).collect(),
        _ => Vec::new(),
    };
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) => Some(value.clone()),
        _ => None,
    };
    let why = std::error::Error::source(error).map(ToString::to_string);
    let names = names.join(", ");
    match (error.kind(), value, why) {
        (ErrorKind::MissingRequiredArgument, _, _) => anyhow::anyhow!("{names} must be set"),
        (_, Some(value), Some(why)) => anyhow::anyhow!("{names}={value:?}: {why}"),
        (ErrorKind::InvalidValue, Some(value), None) if value.is_empty() => {
            anyhow::anyhow!("{names} must not be empty")
        }
        (ErrorKind::InvalidValue, Some(value), None) => {
            let valid = match error.get(ContextKind::ValidValue) {
                Some(ContextValue::Strings(valid)) => valid.join(", "),
                _ => String::new(),
            };
            anyhow::anyhow!("{names}={value:?}: must be one of {valid}")
        }
        _ => {
            let text = error.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            anyhow::anyhow!("{names}: {first}")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn every_key_is_listed_once_and_reserved_keys_cover_what_the_operator_writes() {
        let names: BTreeSet<&str> = KEYS.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), KEYS.len(), "a key is listed twice");
        for key in KEYS.iter().filter(|key| key.set_by == SetBy::Operator) {
            assert!(is_reserved(key.name), "{key:?}");
        }
        assert!(!is_reserved("RUST_LOG") && !is_reserved("HTTP_MAX_CONNECTIONS") && !is_reserved("MY_FLAG"));
        assert!(is_reserved("KAFKA_ANYTHING_LATER") && is_reserved("LISTEN_ADDR"));
        // A tunable key inside a reserved name space is the user's to set.
        for key in KEYS.iter().filter(|key| key.set_by == SetBy::User) {
            assert!(!is_reserved(key.name), "{key:?}");
        }
        assert!(tunable_inside_prefixes().contains(&"QUERY_CACHE_MAX_ENTRIES"));
        assert_eq!(
            reserved_outside_prefixes(),
            [
                "LISTEN_ADDR",
                "FLIGHTLINE_PIPELINE",
                "FLIGHTLINE_COMPONENT",
                "FLIGHTLINE_IDENTITY",
                "HTTP_RATE_LIMIT_RPS",
                "HTTP_RATE_LIMIT_BURST",
                "HTTP_MAX_CONCURRENT_REQUESTS",
                "HTTP_REQUEST_TIMEOUT_SECONDS",
            ]
        );
    }

    /// A small configuration with each kind of argument.
    #[derive(clap::Args, Debug, PartialEq)]
    struct Sample {
        #[arg(long, env = kafka::TOPIC, value_parser = clap::builder::NonEmptyStringValueParser::new())]
        topic: String,
        #[arg(long, env = sink::BATCH_SIZE, default_value_t = sink::BATCH_SIZE_DEFAULT,
              value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
        #[arg(long, env = kafka::DLQ_TOPIC)]
        dead_letter_topic: Option<String>,
    }

    /// A variable every test process has.
    #[derive(clap::Args, Debug, PartialEq)]
    struct ProcessPath {
        #[arg(long, env = "PATH")]
        path: Option<String>,
        #[arg(long, env = "FLIGHTLINE_TEST_COUNT", default_value_t = 1)]
        count: u32,
    }

    /// The lookup alone counts: what the process environment holds does not leak in (the
    /// operator checks its Deployments' env in a process whose own env has `RUST_LOG`,
    /// `KAFKA_BOOTSTRAP_SERVERS`, `CLICKHOUSE_URL`...).
    #[test]
    fn the_process_environment_does_not_leak_into_a_lookup() {
        assert!(std::env::var_os("PATH").is_some());
        assert_eq!(ProcessPath::from_lookup(|_| None).unwrap(), ProcessPath { path: None, count: 1 });
        let set = ProcessPath::from_lookup(|name| (name == "PATH").then(|| "/x".to_string())).unwrap();
        assert_eq!(set.path.as_deref(), Some("/x"));
        assert_eq!(ProcessPath::from_env().unwrap().path, std::env::var("PATH").ok());
    }

    /// A value that is not UTF-8 is refused by name, not taken as unset.
    #[test]
    fn a_value_that_is_not_utf8_is_refused_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt;
        let lookup = |name: &str| (name == kafka::DLQ_TOPIC).then(|| OsString::from_vec(vec![b't', 0xff]));
        let message = Sample::from_os_lookup(lookup).unwrap_err().to_string();
        assert_eq!(message, "KAFKA_DLQ_TOPIC is not valid UTF-8");
        let topic = |name: &str| (name == kafka::TOPIC).then(|| OsString::from("t"));
        assert_eq!(Sample::from_os_lookup(topic).unwrap().topic, "t");
    }

    fn parse(vars: &[(&str, &str)]) -> anyhow::Result<Sample> {
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Sample::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn values_come_from_the_lookup_and_defaults_fill_the_rest() {
        // Passed as `--long=value`: a leading '-', '=', commas and any Unicode stay the value.
        let odd = parse(&[(kafka::TOPIC, "-a,b=c ✈ --x"), (kafka::DLQ_TOPIC, "--")]).unwrap();
        assert_eq!((odd.topic.as_str(), odd.dead_letter_topic.as_deref()), ("-a,b=c ✈ --x", Some("--")));
        let sample = parse(&[(kafka::TOPIC, "--not-a-flag=x"), (kafka::DLQ_TOPIC, "")]).unwrap();
        assert_eq!(
            sample,
            Sample {
                topic: "--not-a-flag=x".into(),
                batch_size: sink::BATCH_SIZE_DEFAULT,
                dead_letter_topic: Some(String::new())
            }
        );
        assert_eq!(Sample::env_keys(), [kafka::TOPIC, sink::BATCH_SIZE, kafka::DLQ_TOPIC]);
    }

    #[test]
    fn errors_name_the_variable() {
        let message = |vars: &[(&str, &str)]| parse(vars).unwrap_err().to_string();
        assert_eq!(message(&[]), "KAFKA_TOPIC must be set");
        assert_eq!(message(&[(kafka::TOPIC, "")]), "KAFKA_TOPIC must not be empty");
        let bad = message(&[(kafka::TOPIC, "t"), (sink::BATCH_SIZE, "ten")]);
        assert!(bad.starts_with("SINK_BATCH_SIZE=\"ten\": invalid digit"), "{bad}");
        let zero = message(&[(kafka::TOPIC, "t"), (sink::BATCH_SIZE, "0")]);
        assert!(zero.starts_with("SINK_BATCH_SIZE=\"0\": 0 is not in 1.."), "{zero}");
        let empty = message(&[(kafka::TOPIC, "t"), (sink::BATCH_SIZE, "")]);
        assert!(empty.starts_with("SINK_BATCH_SIZE"), "{empty}");
    }
}

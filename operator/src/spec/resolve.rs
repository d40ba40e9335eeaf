//! Validation and defaulting: a `FlightPipeline` plus the operator's defaults become a `Resolved`
//! pipeline, or a list of problems that each name the field at fault. Pure.
//!
//! The CRD schema already rejects what it can express (ranges, enums, patterns). This catches the
//! rest: facts that depend on the operator's configuration, on the object's name, or on several
//! fields at once.

use std::collections::BTreeMap;

use flightline_service::config::{FromEnv, HttpLimitArgs, HttpLimits as ServiceLimits, QueryArgs, ServerArgs};
use flightline_service::contract;

use crate::crd::{
    AutoscalingSpec, CaSecretRef, FlightPipelineSpec, HttpLimits, JwtSpec, MonitoringSpec, SecretKeyRef, SecretKeyRefs,
    WorkloadSpec,
};
use crate::desired::slo::{Objectives, latency_le, window_seconds};
use crate::desired::table::{
    BASE_COLUMNS, MAX_TABLE_LEN, TableSpec, default_table_name, default_table_owner, ttl_days,
};
use crate::desired::topic::{TopicSpec, default_topic_owner, reserved_topic, retention_ms};
use crate::spec::security::{self, KafkaSecurityRefs};

/// Longest pipeline name: `<name>-predict` must stay a valid Service name with room for pod suffixes.
pub const MAX_NAME_LEN: usize = 40;
const MAX_TOPIC_LEN: usize = 249;
pub const MANAGED_TOPIC_CONFIGS: [&str; 2] = ["retention.ms", "cleanup.policy"];

/// What the operator supplies when a pipeline leaves something out.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub kafka_bootstrap_servers: Option<String>,
    pub clickhouse_url: Option<String>,
    pub images: Images,
    /// What a pipeline may ask for.
    pub limits: OperatorLimits,
}

/// Bounds the platform team sets on what any pipeline may ask for (the operator's `--allowed-*`
/// and `--max-*` flags). An allow-list allows the operator's own default (endpoint or image) and
/// the values it lists; `*` in a list allows any value. An empty list thus allows only the default.
#[derive(Clone, Debug, PartialEq)]
pub struct OperatorLimits {
    /// `host:port` Kafka bootstrap servers a pipeline may name.
    pub allowed_kafka_bootstrap_servers: Vec<String>,
    /// ClickHouse URLs a pipeline may name (compared without a trailing `/`, case-insensitively).
    pub allowed_clickhouse_urls: Vec<String>,
    /// Image prefixes, e.g. `registry.example.com/flightline/`; a prefix matches up to a `/`, `:`
    /// or `@`, so `ghcr.io/team` does not allow `ghcr.io/team-evil/x`.
    pub allowed_image_prefixes: Vec<String>,
    pub max_partitions: i32,
    /// Most pods of one component: `replicas` and `autoscaling.maxReplicas`.
    pub max_replicas: i32,
    pub max_body_bytes: i64,
    pub max_records: i64,
    pub max_batch_size: i32,
    pub max_batch_bytes: i64,
}

/// Any value, in an allow-list.
pub const ALLOW_ANY: &str = "*";

impl Default for OperatorLimits {
    /// The flags' defaults: the CRD's defaults are the most a pipeline gets for bodies and records
    /// (the workloads' default memory limit is sized for them); partitions, replicas and batches
    /// get room to grow.
    fn default() -> Self {
        Self {
            allowed_kafka_bootstrap_servers: Vec::new(),
            allowed_clickhouse_urls: Vec::new(),
            allowed_image_prefixes: Vec::new(),
            max_partitions: 100,
            max_replicas: 20,
            max_body_bytes: 16 * 1024 * 1024,
            max_records: 100_000,
            max_batch_size: 100_000,
            max_batch_bytes: 64 * 1024 * 1024,
        }
    }
}

impl OperatorLimits {
    /// Limits that allow every endpoint and image (for printing a manifest's rules offline).
    pub fn allow_any() -> Self {
        Self {
            allowed_kafka_bootstrap_servers: vec![ALLOW_ANY.into()],
            allowed_clickhouse_urls: vec![ALLOW_ANY.into()],
            allowed_image_prefixes: vec![ALLOW_ANY.into()],
            max_partitions: i32::MAX,
            max_replicas: i32::MAX,
            max_body_bytes: i64::MAX,
            max_records: i64::MAX,
            max_batch_size: i32::MAX,
            max_batch_bytes: i64::MAX,
        }
    }
}

/// ClickHouse `DateTime` is seconds in a `u32`: it ends at 2106-02-07 06:28:15 UTC, and
/// `scheduled_at + ttl` past that wraps around to 1970, so ClickHouse expires the row at once.
const DATETIME_END_EPOCH: i64 = u32::MAX as i64;
/// 2101-01-01 00:00:00 UTC. The table holds flights up to 2106-02-06, so no TTL at all is safe for
/// every row it can hold; a TTL must at least keep flights of this century (up to the end of 2100)
/// from wrapping. Rows scheduled after 2100 with a TTL still expire early.
const AFTER_LATEST_SCHEDULED_EPOCH: i64 = 4_133_980_800;
/// Longest TTL: 1,863 days (about 5 years). A row scheduled at 2100-12-31 23:59:59 expires at
/// 2106-02-06 23:59:59, before `DateTime` ends. (The tens of thousands of days wrapped for
/// every row of the data set: 2017 + 32,544 days is already past 2106.)
pub const MAX_TTL_DAYS: u32 = ((DATETIME_END_EPOCH - AFTER_LATEST_SCHEDULED_EPOCH) / 86_400) as u32;

/// Default container images, by component.
#[derive(Clone, Debug)]
pub struct Images {
    pub ingest: String,
    pub query: String,
    pub predict: String,
}

impl Default for Images {
    fn default() -> Self {
        let tag = env!("CARGO_PKG_VERSION");
        Self {
            ingest: format!("ghcr.io/flightline/flightline-ingest:{tag}"),
            query: format!("ghcr.io/flightline/flightline-query:{tag}"),
            predict: format!("ghcr.io/flightline/flightline-predict:{tag}"),
        }
    }
}

/// The four workloads. Ingest and sink share one binary with two roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Ingest,
    Sink,
    Query,
    Predict,
}

impl Component {
    pub const ALL: [Component; 4] = [Component::Ingest, Component::Sink, Component::Query, Component::Predict];

    pub fn as_str(self) -> &'static str {
        match self {
            Component::Ingest => "ingest",
            Component::Sink => "sink",
            Component::Query => "query",
            Component::Predict => "predict",
        }
    }
}

/// One workload, resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    pub component: Component,
    pub enabled: bool,
    pub image: String,
    pub replicas: i32,
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    pub env: BTreeMap<String, String>,
    /// Scaling by load; `replicas` is then left to the autoscaler.
    pub autoscaling: Option<AutoscalingSpec>,
    /// Limits of the HTTP API (none for the sink).
    pub http_limits: Option<HttpLimitValues>,
}

/// `spec.<component>.limits` with the component's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimitValues {
    pub requests_per_second: i32,
    pub burst: i32,
    pub max_concurrent_requests: i32,
    pub request_timeout_seconds: i32,
}

impl HttpLimitValues {
    /// The component's defaults; the services fall back to the same values when unset.
    pub fn default_for(component: Component) -> Option<Self> {
        let service = match component {
            Component::Ingest => ServiceLimits::INGEST,
            Component::Query => ServiceLimits::QUERY,
            Component::Predict => ServiceLimits::PREDICT,
            Component::Sink => return None,
        };
        let signed = |v: u32| i32::try_from(v).expect("the services' default limits fit the CRD's i32");
        Some(Self {
            requests_per_second: signed(service.requests_per_second),
            burst: signed(service.burst),
            max_concurrent_requests: signed(service.max_concurrent_requests),
            request_timeout_seconds: signed(service.request_timeout_seconds),
        })
    }

    fn with(self, spec: &HttpLimits) -> Self {
        Self {
            requests_per_second: spec.requests_per_second.unwrap_or(self.requests_per_second),
            burst: spec.burst.unwrap_or(self.burst),
            max_concurrent_requests: spec.max_concurrent_requests.unwrap_or(self.max_concurrent_requests),
            request_timeout_seconds: spec.request_timeout_seconds.unwrap_or(self.request_timeout_seconds),
        }
    }
}

/// A pipeline with every default filled in and every cross-field rule checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub namespace: String,
    pub name: String,
    pub bootstrap_servers: String,
    pub topic: TopicSpec,
    pub dead_letter: Option<TopicSpec>,
    pub clickhouse_url: String,
    /// TLS and SASL to Kafka, for the operator, ingest and the sink.
    pub kafka_security: KafkaSecurityRefs,
    /// CA of ClickHouse's certificate (an `https://` URL), for the operator, the sink and query.
    pub clickhouse_ca: Option<CaSecretRef>,
    pub credentials: Option<SecretKeyRefs>,
    /// ClickHouse credentials of query: its own, else `credentials`.
    pub query_credentials: Option<SecretKeyRefs>,
    /// Secret key with the hashed API keys the HTTP services accept.
    pub api_keys: Option<SecretKeyRef>,
    /// How the HTTP services verify JWTs.
    pub jwt: Option<JwtSpec>,
    pub table: TableSpec,
    pub workloads: Vec<Workload>,
    /// Settings the services read from the pipeline's ConfigMap.
    pub settings: BTreeMap<String, String>,
    pub objectives: Objectives,
    pub monitoring: MonitoringSpec,
}

impl Resolved {
    pub fn workload(&self, component: Component) -> &Workload {
        self.workloads.iter().find(|w| w.component == component).expect("every component is resolved")
    }
}

pub fn resolve(
    namespace: &str,
    name: &str,
    spec: &FlightPipelineSpec,
    defaults: &Defaults,
) -> Result<Resolved, Vec<String>> {
    let mut problems = Vec::new();

    if name.len() > MAX_NAME_LEN {
        problems.push(format!("metadata.name: {} characters is too long; at most {MAX_NAME_LEN}", name.len()));
    }
    if !is_dns_label(name) {
        problems.push(format!(
            "metadata.name: {name:?} must start with a letter and contain only lower-case letters, digits and '-'"
        ));
    }

    let bootstrap_servers = non_empty(&spec.kafka.bootstrap_servers)
        .or(defaults.kafka_bootstrap_servers.as_deref().and_then(non_empty))
        .unwrap_or_default()
        .to_string();
    if bootstrap_servers.is_empty() {
        problems.push(
            "spec.kafka.bootstrapServers: missing, and the operator has no default (--kafka-bootstrap-servers)".into(),
        );
    }
    for server in bootstrap_servers.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if let Err(why) = check_host_port(server) {
            problems.push(format!("spec.kafka.bootstrapServers: {server:?} {why}"));
        }
    }
    let limits = &defaults.limits;
    let default_servers = defaults.kafka_bootstrap_servers.as_deref().unwrap_or_default();
    let allowed_servers: Vec<&str> =
        default_servers.split(',').chain(limits.allowed_kafka_bootstrap_servers.iter().map(String::as_str)).collect();
    for server in split_list(&bootstrap_servers) {
        if !allows(&allowed_servers, server, |a, s| a.eq_ignore_ascii_case(s)) {
            problems.push(not_allowed(
                "spec.kafka.bootstrapServers",
                server,
                "--allowed-kafka-bootstrap-servers",
                &allowed_servers,
            ));
        }
    }
    if spec.kafka.partitions > limits.max_partitions {
        problems.push(over_limit(
            "spec.kafka.partitions",
            spec.kafka.partitions,
            "--max-partitions",
            limits.max_partitions,
        ));
    }

    let topic_name =
        non_empty(&spec.kafka.topic).map(String::from).unwrap_or_else(|| format!("{namespace}.{name}.flights"));
    check_topic_name("spec.kafka.topic", &topic_name, &mut problems);
    let default_of = default_topic_owner(&topic_name);
    check_not_default_of_another("spec.kafka.topic", &topic_name, default_of, namespace, name, &mut problems);
    let retention =
        retention_ms(&spec.kafka.retention).map_err(|e| problems.push(format!("spec.kafka.retention: {e}")));
    let mut configs = BTreeMap::new();
    for (key, value) in &spec.kafka.config {
        if MANAGED_TOPIC_CONFIGS.contains(&key.as_str()) {
            problems.push(format!("spec.kafka.config: {key} is managed by the operator; use spec.kafka.retention"));
        } else if key.is_empty() || !key.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.') {
            problems.push(format!("spec.kafka.config: {key:?} is not a Kafka config name"));
        } else {
            configs.insert(key.clone(), value.clone());
        }
    }
    let topic = TopicSpec {
        name: topic_name.clone(),
        partitions: spec.kafka.partitions,
        replication_factor: spec.kafka.replication_factor,
        configs: with_retention(&configs, retention.unwrap_or(0)),
    };
    if spec.kafka.partitions < 1 {
        problems.push(format!("spec.kafka.partitions: {} must be at least 1", spec.kafka.partitions));
    }
    if spec.kafka.replication_factor < 1 {
        problems.push(format!("spec.kafka.replicationFactor: {} must be at least 1", spec.kafka.replication_factor));
    }

    let dead_letter = if spec.kafka.dead_letter.enabled {
        let dlq_name =
            non_empty(&spec.kafka.dead_letter.topic).map(String::from).unwrap_or_else(|| format!("{topic_name}.dlq"));
        check_topic_name("spec.kafka.deadLetter.topic", &dlq_name, &mut problems);
        let (field, default_of) = ("spec.kafka.deadLetter.topic", default_topic_owner(&dlq_name));
        check_not_default_of_another(field, &dlq_name, default_of, namespace, name, &mut problems);
        if dlq_name == topic_name {
            problems.push("spec.kafka.deadLetter.topic: must differ from the topic".into());
        }
        let dlq_retention = retention_ms(&spec.kafka.dead_letter.retention)
            .map_err(|e| problems.push(format!("spec.kafka.deadLetter.retention: {e}")))
            .unwrap_or(0);
        Some(TopicSpec {
            name: dlq_name,
            // Dead letters are rare; one partition keeps their order.
            partitions: 1,
            replication_factor: spec.kafka.replication_factor,
            configs: with_retention(&BTreeMap::new(), dlq_retention),
        })
    } else {
        None
    };

    let clickhouse_url = non_empty(&spec.clickhouse.url)
        .or(defaults.clickhouse_url.as_deref().and_then(non_empty))
        .unwrap_or_default()
        .to_string();
    if clickhouse_url.is_empty() {
        problems.push("spec.clickhouse.url: missing, and the operator has no default (--clickhouse-url)".into());
    } else if !(clickhouse_url.starts_with("http://") || clickhouse_url.starts_with("https://")) {
        problems.push(format!("spec.clickhouse.url: {clickhouse_url:?} must start with http:// or https://"));
    } else {
        let allowed_urls: Vec<&str> =
            defaults.clickhouse_url.iter().chain(&limits.allowed_clickhouse_urls).map(String::as_str).collect();
        let same_url = |a: &str, b: &str| a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'));
        if !allows(&allowed_urls, &clickhouse_url, same_url) {
            problems.push(not_allowed(
                "spec.clickhouse.url",
                &clickhouse_url,
                "--allowed-clickhouse-urls",
                &allowed_urls,
            ));
        }
    }
    let ttl =
        ttl_days(&spec.clickhouse.ttl).map_err(|e| problems.push(format!("spec.clickhouse.ttl: {e}"))).unwrap_or(None);
    if let Some(days) = ttl.filter(|d| *d > MAX_TTL_DAYS) {
        problems.push(format!(
            "spec.clickhouse.ttl: {days}d is more than {MAX_TTL_DAYS}d: a flight scheduled in 2100 plus the TTL would \
             pass 2106-02-07, where ClickHouse's DateTime wraps around and the row would expire at once"
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for column in &spec.clickhouse.extra_columns {
        if BASE_COLUMNS.iter().any(|(n, _)| *n == column.name) {
            problems.push(format!("spec.clickhouse.extraColumns: {:?} is a built-in column", column.name));
        }
        if !seen.insert(column.name.as_str()) {
            problems.push(format!("spec.clickhouse.extraColumns: {:?} appears twice", column.name));
        }
    }
    let table_name = match non_empty(&spec.clickhouse.table) {
        Some(table) => table.to_string(),
        None => default_table_name(namespace, name).unwrap_or_else(|e| {
            problems.push(format!("spec.clickhouse.table: {e}"));
            String::new()
        }),
    };
    if table_name.len() > MAX_TABLE_LEN {
        problems.push(format!("spec.clickhouse.table: {table_name:?} is longer than {MAX_TABLE_LEN} characters"));
    }
    let default_of = default_table_owner(&table_name);
    check_not_default_of_another("spec.clickhouse.table", &table_name, default_of, namespace, name, &mut problems);
    let table = TableSpec {
        database: spec.clickhouse.database.clone(),
        table: table_name,
        ttl_days: ttl,
        partitioning: spec.clickhouse.partition_by,
        identity: spec.identity,
        extra_columns: spec.clickhouse.extra_columns.iter().map(|c| (c.name.clone(), c.column_type)).collect(),
    };
    for (field, ident) in [("spec.clickhouse.database", &table.database), ("spec.clickhouse.table", &table.table)] {
        if !is_identifier(ident) {
            problems.push(format!("{field}: {ident:?} must be a letter or '_' followed by letters, digits or '_'"));
        }
    }

    if spec.auth.as_ref().is_some_and(|a| a.api_keys_secret.is_none() && a.jwt.is_none()) {
        problems.push("spec.auth: set apiKeysSecret, jwt or both (or remove spec.auth for open APIs)".into());
    }

    let workloads = vec![
        workload(Component::Ingest, &spec.ingest.workload, Some(&spec.ingest.limits), defaults, &mut problems),
        workload(Component::Sink, &spec.sink.workload, None, defaults, &mut problems),
        workload(Component::Query, &spec.query.workload, Some(&spec.query.limits), defaults, &mut problems),
        workload(Component::Predict, &spec.predict.workload, Some(&spec.predict.limits), defaults, &mut problems),
    ];
    for (field, value, flag, max) in [
        ("spec.ingest.maxBodyBytes", spec.ingest.max_body_bytes, "--max-body-bytes", limits.max_body_bytes),
        ("spec.ingest.maxRecords", spec.ingest.max_records, "--max-records", limits.max_records),
        ("spec.sink.batchSize", spec.sink.batch_size.into(), "--max-batch-size", limits.max_batch_size.into()),
        ("spec.sink.maxBatchBytes", spec.sink.max_batch_bytes, "--max-batch-bytes", limits.max_batch_bytes),
    ] {
        if value > max {
            problems.push(over_limit(field, value, flag, max));
        }
    }

    let objectives = objectives(&spec.slo, &mut problems);
    let kafka_security = security::kafka(&spec.kafka).map_err(|e| problems.push(e)).unwrap_or_default();
    let clickhouse_ca = security::clickhouse(&spec.clickhouse, &clickhouse_url).map_err(|e| problems.push(e));

    if !problems.is_empty() {
        return Err(problems);
    }

    // The pipeline's settings, one ConfigMap; each container refers to the keys its service reads.
    let mut settings: BTreeMap<String, String> = [
        (contract::service::PIPELINE, format!("{namespace}/{name}")),
        (contract::kafka::BOOTSTRAP_SERVERS, bootstrap_servers.clone()),
        (contract::kafka::TOPIC, topic.name.clone()),
        (contract::kafka::DLQ_TOPIC, dead_letter.as_ref().map(|t| t.name.clone()).unwrap_or_default()),
        (contract::kafka::CONSUMER_GROUP, format!("flightline.{namespace}.{name}.sink")),
        (contract::clickhouse::URL, clickhouse_url.clone()),
        (contract::clickhouse::DATABASE, table.database.clone()),
        (contract::clickhouse::TABLE, table.table.clone()),
        (contract::ingest::MAX_BODY_BYTES, spec.ingest.max_body_bytes.to_string()),
        (contract::ingest::MAX_RECORDS, spec.ingest.max_records.to_string()),
        (contract::sink::BATCH_SIZE, spec.sink.batch_size.to_string()),
        (contract::sink::MAX_BATCH_BYTES, spec.sink.max_batch_bytes.to_string()),
        (contract::sink::LINGER_MS, spec.sink.linger_ms.to_string()),
        (contract::query::MAX_ROWS, spec.query.max_rows.to_string()),
        (contract::query::MAX_EXECUTION_SECONDS, spec.query.max_execution_seconds.to_string()),
        (contract::query::FRESHNESS_MS, spec.query.freshness_ms.to_string()),
        (contract::records::IDENTITY, spec.identity.as_str().into()),
        (contract::predict::MODEL_PATH, spec.predict.model_path.clone()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect();
    settings.extend(security::kafka_settings(&kafka_security));

    Ok(Resolved {
        namespace: namespace.into(),
        name: name.into(),
        bootstrap_servers,
        topic,
        dead_letter,
        clickhouse_url,
        kafka_security,
        clickhouse_ca: clickhouse_ca.unwrap_or_default(),
        credentials: spec.clickhouse.credentials_secret.clone(),
        query_credentials: spec.query.credentials_secret.clone().or_else(|| spec.clickhouse.credentials_secret.clone()),
        api_keys: spec.auth.as_ref().and_then(|a| a.api_keys_secret.clone()),
        jwt: spec.auth.as_ref().and_then(|a| a.jwt.clone()),
        table,
        workloads,
        settings,
        objectives,
        monitoring: spec.monitoring.clone(),
    })
}

fn objectives(slo: &crate::crd::SloSpec, problems: &mut Vec<String>) -> Objectives {
    let window_seconds = window_seconds(&slo.window).unwrap_or_else(|e| {
        problems.push(format!("spec.slo.window: {e}"));
        0
    });
    let latency_le = latency_le(slo.latency_threshold_ms).unwrap_or_else(|| {
        let buckets: Vec<String> =
            crate::desired::slo::LATENCY_BUCKETS_MS.iter().map(|(ms, _)| ms.to_string()).collect();
        problems.push(format!(
            "spec.slo.latencyThresholdMs: {} is not a latency bucket of the services; use one of {}",
            slo.latency_threshold_ms,
            buckets.join(", ")
        ));
        ""
    });
    for (field, percent) in [("availability", slo.availability), ("latencyTarget", slo.latency_target)] {
        if !(50.0..100.0).contains(&percent) {
            problems.push(format!("spec.slo.{field}: {percent} must be a percentage from 50 to below 100"));
        }
    }
    Objectives {
        availability: slo.availability / 100.0,
        latency: slo.latency_target / 100.0,
        latency_le: latency_le.to_string(),
        latency_threshold_ms: slo.latency_threshold_ms,
        window_seconds,
        max_consumer_lag: slo.max_consumer_lag,
        max_freshness_seconds: slo.max_freshness_seconds,
    }
}

fn workload(
    component: Component,
    spec: &WorkloadSpec,
    http_limits: Option<&HttpLimits>,
    defaults: &Defaults,
    problems: &mut Vec<String>,
) -> Workload {
    let field = format!("spec.{}", component.as_str());
    let limits = &defaults.limits;
    let default_image = match component {
        Component::Ingest | Component::Sink => &defaults.images.ingest,
        Component::Query => &defaults.images.query,
        Component::Predict => &defaults.images.predict,
    };
    if spec.replicas < 0 {
        problems.push(format!("{field}.replicas: {} must not be negative", spec.replicas));
    }
    if spec.replicas > limits.max_replicas {
        problems.push(over_limit(&format!("{field}.replicas"), spec.replicas, "--max-replicas", limits.max_replicas));
    }
    if let Some(max) = spec.autoscaling.as_ref().map(|a| a.max_replicas).filter(|m| *m > limits.max_replicas) {
        let field = format!("{field}.autoscaling.maxReplicas");
        problems.push(over_limit(&field, max, "--max-replicas", limits.max_replicas));
    }
    let image = non_empty(&spec.image).unwrap_or(default_image);
    if image != default_image && !allows(&limits.allowed_image_prefixes, image, image_has_prefix) {
        let prefixes: Vec<&str> = std::iter::once(default_image.as_str())
            .chain(limits.allowed_image_prefixes.iter().map(String::as_str))
            .collect();
        problems.push(not_allowed(&format!("{field}.image"), image, "--allowed-image-prefixes", &prefixes));
    }
    for key in spec.env.keys() {
        let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            problems.push(format!("{field}.env: {key:?} is not a valid environment variable name"));
        } else if is_reserved_env(key) {
            problems.push(format!(
                "{field}.env: {key} is written by the operator from the spec (a container's env would override it, \
                 and with it the operator's limits and which topic, table and credentials the pod uses); set the \
                 spec field instead"
            ));
        }
    }
    // The contract's variables a user may set are read by the service's own parsers at start: a
    // value they refuse (`HTTP_MAX_CONNECTIONS=0`, a fault ratio of 2) would crash-loop the pods
    // of a spec the CRD accepts, so it is refused here, naming the variable.
    let user_env = |name: &str| spec.env.get(name).filter(|_| !is_reserved_env(name)).cloned();
    let mut refused = vec![ServerArgs::from_lookup(user_env).err()];
    if component != Component::Sink {
        refused.push(HttpLimitArgs::from_lookup(user_env).err());
    }
    if component == Component::Query {
        // The cache bounds are query's to tune; the rest of QueryArgs is reserved (absent here).
        refused.push(QueryArgs::from_lookup(user_env).err());
    }
    problems.extend(refused.into_iter().flatten().map(|e| format!("{field}.env: {e}")));
    if spec.image.chars().any(char::is_whitespace) {
        problems.push(format!("{field}.image: {:?} must not contain spaces", spec.image));
    }
    if let Some(a) = &spec.autoscaling {
        if a.min_replicas < 1 || a.min_replicas > a.max_replicas {
            problems.push(format!(
                "{field}.autoscaling: minReplicas {} must be at least 1 and at most maxReplicas {}",
                a.min_replicas, a.max_replicas
            ));
        }
        if a.target_requests_per_second < 1 || a.target_consumer_lag < 1 {
            problems.push(format!("{field}.autoscaling: targets must be positive"));
        }
    }
    Workload {
        component,
        enabled: spec.enabled,
        image: image.to_string(),
        replicas: spec.replicas,
        resources: spec.resources.clone(),
        env: spec.env.clone(),
        autoscaling: spec.autoscaling.clone(),
        http_limits: HttpLimitValues::default_for(component).zip(http_limits).map(|(d, spec)| d.with(spec)),
    }
}

fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Whether an allow-list has `*` or an entry that `matches` the value.
fn allows<S: AsRef<str>>(allowed: &[S], value: &str, matches: impl Fn(&str, &str) -> bool) -> bool {
    allowed.iter().map(|a| a.as_ref().trim()).filter(|a| !a.is_empty()).any(|a| a == ALLOW_ANY || matches(a, value))
}

/// A prefix ends at a path, tag or digest boundary: `ghcr.io/team` matches `ghcr.io/team/x:1`,
/// not `ghcr.io/team-evil/x:1` nor `ghcr.io/teamx`.
fn image_has_prefix(prefix: &str, image: &str) -> bool {
    let boundary = |c: char| matches!(c, '/' | ':' | '@');
    image
        .strip_prefix(prefix)
        .is_some_and(|rest| prefix.ends_with(boundary) || rest.is_empty() || rest.starts_with(boundary))
}

fn not_allowed(field: &str, value: &str, flag: &str, allowed: &[&str]) -> String {
    let listed: Vec<&str> = allowed.iter().map(|a| a.trim()).filter(|a| !a.is_empty()).collect();
    let listed = if listed.is_empty() { "nothing".to_string() } else { listed.join(", ") };
    format!("{field}: {value:?} is not allowed by the operator ({flag}; allowed: {listed})")
}

fn over_limit(field: &str, value: impl std::fmt::Display, flag: &str, max: impl std::fmt::Display) -> String {
    format!("{field}: {value} is more than the operator allows ({flag} {max})")
}

/// Environment the operator writes into a pipeline's ConfigMap or containers, or the services read
/// for where their data goes and how they authenticate: `spec.<component>.env` may not set it
/// (`contract::is_reserved`: the contract's operator keys and its reserved name spaces). Left
/// free: `RUST_LOG`, the fault switch of drills and the HTTP server's read timeouts and connections.
fn is_reserved_env(key: &str) -> bool {
    contract::is_reserved(key)
}

fn with_retention(configs: &BTreeMap<String, String>, retention_ms: i64) -> BTreeMap<String, String> {
    let mut all = configs.clone();
    all.insert("cleanup.policy".into(), "delete".into());
    all.insert("retention.ms".into(), retention_ms.to_string());
    all
}

fn non_empty(s: &str) -> Option<&str> {
    let s = s.trim();
    (!s.is_empty()).then_some(s)
}

fn check_topic_name(field: &str, topic: &str, problems: &mut Vec<String>) {
    if topic.len() > MAX_TOPIC_LEN {
        problems.push(format!("{field}: {topic:?} is {} characters; Kafka allows {MAX_TOPIC_LEN}", topic.len()));
    }
    if topic == "." || topic == ".." || !topic.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
        problems.push(format!("{field}: {topic:?} is not a legal Kafka topic name"));
    }
    if let Some(why) = reserved_topic(topic) {
        problems.push(format!("{field}: {topic:?} is reserved: {why}"));
    }
}

/// Another pipeline's default name, taken first, would block that pipeline for good (its
/// creator keeps it), so a name that decodes to another `(namespace, name)` is refused.
fn check_not_default_of_another(
    field: &str,
    value: &str,
    default_of: Option<(String, String)>,
    namespace: &str,
    name: &str,
    problems: &mut Vec<String>,
) {
    if let Some((owner_namespace, owner_name)) = default_of
        && (owner_namespace != namespace || owner_name != name)
    {
        problems.push(format!(
            "{field}: {value:?} is the default name of pipeline {owner_namespace}/{owner_name}; name another"
        ));
    }
}

fn check_host_port(server: &str) -> Result<(), &'static str> {
    let (host, port) = server.rsplit_once(':').ok_or("must be host:port")?;
    if host.is_empty() {
        return Err("has no host");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err("has no valid port"),
    }
}

fn is_dns_label(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn is_identifier(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ExtraColumn, ExtraColumnType};

    fn defaults() -> Defaults {
        Defaults {
            kafka_bootstrap_servers: Some("127.0.0.1:19092".into()),
            clickhouse_url: Some("http://127.0.0.1:18123".into()),
            images: Images::default(),
            limits: OperatorLimits::default(),
        }
    }

    fn problems(name: &str, spec: &FlightPipelineSpec, defaults: &Defaults) -> Vec<String> {
        resolve("ns", name, spec, defaults).expect_err("should be invalid")
    }

    #[test]
    fn defaults_fill_in_names_and_endpoints() {
        let r = resolve("air", "scl", &FlightPipelineSpec::default(), &defaults()).unwrap();
        assert_eq!(r.topic.name, "air.scl.flights");
        assert_eq!(r.dead_letter.as_ref().unwrap().name, "air.scl.flights.dlq");
        assert_eq!(r.topic.configs["retention.ms"], "604800000");
        assert_eq!(r.topic.partitions, 3);
        assert_eq!(r.bootstrap_servers, "127.0.0.1:19092");
        assert_eq!(r.table.qualified(), "flightline.air_scl_3_flights");
        assert_eq!(r.settings["KAFKA_CONSUMER_GROUP"], "flightline.air.scl.sink");
        assert!(r.workload(Component::Sink).image.contains("flightline-ingest"));
    }

    #[test]
    fn spec_values_win_over_defaults() {
        let mut spec = FlightPipelineSpec::default();
        spec.kafka.bootstrap_servers = "kafka:9092".into();
        spec.kafka.topic = "flights".into();
        spec.kafka.dead_letter.enabled = false;
        let mut defaults = defaults();
        defaults.limits.allowed_kafka_bootstrap_servers = vec!["kafka:9092".into()];
        let r = resolve("air", "scl", &spec, &defaults).unwrap();
        assert_eq!(r.bootstrap_servers, "kafka:9092");
        assert_eq!(r.topic.name, "flights");
        assert!(r.dead_letter.is_none());
        assert_eq!(r.settings["KAFKA_DLQ_TOPIC"], "");
    }

    #[test]
    fn missing_endpoints_are_named() {
        let found = problems("scl", &FlightPipelineSpec::default(), &Defaults::default());
        assert!(found.iter().any(|p| p.starts_with("spec.kafka.bootstrapServers: missing")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("spec.clickhouse.url: missing")), "{found:?}");
    }

    #[test]
    fn env_may_set_logging_the_fault_switch_and_read_timeouts_but_nothing_the_operator_writes() {
        let mut spec = FlightPipelineSpec::default();
        for key in ["RUST_LOG", "FLIGHTLINE_FAULT_ERROR_RATIO", "HTTP_BODY_READ_TIMEOUT_SECONDS"] {
            spec.predict.workload.env.insert(key.into(), "1".into());
        }
        let r = resolve("air", "scl", &spec, &defaults()).unwrap();
        for key in r.settings.keys() {
            assert!(
                is_reserved_env(key),
                "{key} is written into the ConfigMap but a container's env could override it"
            );
        }
    }

    /// Values the services would refuse at start are refused by the operator, naming the
    /// component, the variable and why; valid ones pass.
    #[test]
    fn env_values_the_service_would_refuse_are_reported() {
        let mut spec = FlightPipelineSpec::default();
        for (key, value) in [
            ("RUST_LOG", "debug,hyper=warn"),
            ("FLIGHTLINE_FAULT_ERROR_RATIO", "0.25"),
            ("HTTP_BODY_READ_TIMEOUT_SECONDS", "3"),
            ("HTTP_HEADER_READ_TIMEOUT_SECONDS", "5"),
            ("HTTP_MAX_CONNECTIONS", "64"),
            ("MY_FLAG", "-x=y,z"),
        ] {
            spec.predict.workload.env.insert(key.into(), value.into());
        }
        spec.query.workload.env.insert("QUERY_CACHE_MAX_ENTRIES".into(), "4096".into());
        spec.query.workload.env.insert("QUERY_CACHE_MAX_BYTES".into(), "134217728".into());
        resolve("air", "scl", &spec, &defaults()).unwrap();
        for (component, key, value, says) in [
            (Component::Query, "HTTP_MAX_CONNECTIONS", "0", "spec.query.env: HTTP_MAX_CONNECTIONS=\"0\""),
            (
                Component::Sink,
                "FLIGHTLINE_FAULT_ERROR_RATIO",
                "2",
                "spec.sink.env: FLIGHTLINE_FAULT_ERROR_RATIO=\"2\": 2 must be between 0 and 1",
            ),
            (
                Component::Ingest,
                "HTTP_BODY_READ_TIMEOUT_SECONDS",
                "soon",
                "spec.ingest.env: HTTP_BODY_READ_TIMEOUT_SECONDS=\"soon\": invalid digit",
            ),
            (
                Component::Predict,
                "HTTP_HEADER_READ_TIMEOUT_SECONDS",
                "",
                "spec.predict.env: HTTP_HEADER_READ_TIMEOUT_SECONDS",
            ),
            (Component::Query, "QUERY_CACHE_MAX_ENTRIES", "0", "spec.query.env: QUERY_CACHE_MAX_ENTRIES=\"0\""),
            (Component::Query, "QUERY_CACHE_MAX_BYTES", "lots", "spec.query.env: QUERY_CACHE_MAX_BYTES=\"lots\""),
        ] {
            let mut spec = FlightPipelineSpec::default();
            let env = match component {
                Component::Ingest => &mut spec.ingest.workload.env,
                Component::Sink => &mut spec.sink.workload.env,
                Component::Query => &mut spec.query.workload.env,
                Component::Predict => &mut spec.predict.workload.env,
            };
            env.insert(key.into(), value.into());
            let found = problems("scl", &spec, &defaults());
            assert!(found.iter().any(|p| p.starts_with(says)), "{key}={value:?}: {found:?}");
        }
        // A reserved variable is reported as reserved, once, not parsed.
        let mut spec = FlightPipelineSpec::default();
        spec.query.workload.env.insert("HTTP_RATE_LIMIT_RPS".into(), "many".into());
        let found = problems("scl", &spec, &defaults());
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("written by the operator"), "{found:?}");
    }

    #[test]
    fn each_bad_field_is_reported() {
        type Mutation = Box<dyn Fn(&mut FlightPipelineSpec)>;
        let cases: Vec<(&str, Mutation, &str)> = vec![
            ("scl", Box::new(|s| s.kafka.bootstrap_servers = "no-port".into()), "spec.kafka.bootstrapServers"),
            ("scl", Box::new(|s| s.kafka.partitions = -1), "spec.kafka.partitions"),
            ("scl", Box::new(|s| s.kafka.retention = "3w".into()), "spec.kafka.retention"),
            ("scl", Box::new(|s| s.kafka.topic = "a".repeat(300)), "spec.kafka.topic"),
            ("scl", Box::new(|s| s.kafka.topic = "bad topic".into()), "spec.kafka.topic"),
            ("scl", Box::new(|s| s.kafka.dead_letter.topic = "t".into()), "spec.kafka.deadLetter.topic"),
            ("scl", Box::new(|s| drop(s.kafka.config.insert("retention.ms".into(), "1".into()))), "spec.kafka.config"),
            ("scl", Box::new(|s| s.clickhouse.url = "ftp://x".into()), "spec.clickhouse.url"),
            ("scl", Box::new(|s| s.clickhouse.ttl = "12h".into()), "spec.clickhouse.ttl"),
            ("scl", Box::new(|s| s.clickhouse.table = "drop table".into()), "spec.clickhouse.table"),
            (
                "scl",
                Box::new(|s| {
                    s.clickhouse
                        .extra_columns
                        .push(ExtraColumn { name: "delayed".into(), column_type: ExtraColumnType::Bool })
                }),
                "spec.clickhouse.extraColumns",
            ),
            ("scl", Box::new(|s| s.ingest.workload.replicas = -2), "spec.ingest.replicas"),
            ("scl", Box::new(|s| drop(s.query.workload.env.insert("1BAD".into(), "x".into()))), "spec.query.env"),
            (
                "scl",
                Box::new(|s| drop(s.sink.workload.env.insert("CLICKHOUSE_TABLE".into(), "other_team".into()))),
                "spec.sink.env",
            ),
            (
                "scl",
                Box::new(|s| drop(s.ingest.workload.env.insert("INGEST_MAX_BODY_BYTES".into(), "2000000000".into()))),
                "spec.ingest.env",
            ),
            (
                "scl",
                Box::new(|s| drop(s.query.workload.env.insert("HTTP_RATE_LIMIT_RPS".into(), "0".into()))),
                "spec.query.env",
            ),
            (
                "scl",
                Box::new(|s| drop(s.predict.workload.env.insert("JWT_KEY".into(), "x".into()))),
                "spec.predict.env",
            ),
            ("scl", Box::new(|s| s.slo.latency_threshold_ms = 300), "spec.slo.latencyThresholdMs"),
            ("scl", Box::new(|s| s.slo.window = "900d".into()), "spec.slo.window"),
            ("scl", Box::new(|s| s.slo.availability = 100.0), "spec.slo.availability"),
            (
                "scl",
                Box::new(|s| {
                    s.predict.workload.autoscaling =
                        Some(crate::crd::AutoscalingSpec { min_replicas: 4, max_replicas: 2, ..Default::default() })
                }),
                "spec.predict.autoscaling",
            ),
            ("a-very-long-pipeline-name-that-goes-past-forty", Box::new(|_| {}), "metadata.name"),
            ("Upper", Box::new(|_| {}), "metadata.name"),
        ];
        for (name, mutate, field) in cases {
            let mut spec = FlightPipelineSpec::default();
            spec.kafka.topic = "t".into();
            mutate(&mut spec);
            let found = problems(name, &spec, &defaults());
            assert!(found.iter().any(|p| p.starts_with(field)), "expected a problem on {field}, got {found:?}");
        }
    }

    #[test]
    fn endpoints_and_images_must_be_the_defaults_or_allowed() {
        let mut spec = FlightPipelineSpec::default();
        spec.kafka.bootstrap_servers = "127.0.0.1:19092,evil:9092".into();
        spec.clickhouse.url = "http://evil:8123".into();
        spec.query.workload.image = "evil.example/query:1".into();
        let found = problems("scl", &spec, &defaults());
        for (field, flag) in [
            ("spec.kafka.bootstrapServers: \"evil:9092\"", "--allowed-kafka-bootstrap-servers"),
            ("spec.clickhouse.url: \"http://evil:8123\"", "--allowed-clickhouse-urls"),
            ("spec.query.image: \"evil.example/query:1\"", "--allowed-image-prefixes"),
        ] {
            assert!(found.iter().any(|p| p.starts_with(field) && p.contains(flag)), "{field}: {found:?}");
        }
        assert_eq!(found.len(), 3, "the default server is allowed: {found:?}");
        // The message says what is allowed: the default, here.
        assert!(found[0].contains("allowed: 127.0.0.1:19092"), "{found:?}");

        // Listed values are allowed (servers and URLs compared case-insensitively, URLs without a
        // trailing '/'), and so is everything under `*`.
        let mut listed = defaults();
        listed.limits.allowed_kafka_bootstrap_servers = vec!["EVIL:9092".into()];
        listed.limits.allowed_clickhouse_urls = vec!["http://evil:8123/".into()];
        listed.limits.allowed_image_prefixes = vec!["evil.example/".into()];
        resolve("ns", "scl", &spec, &listed).unwrap();
        let mut any = defaults();
        any.limits.allowed_kafka_bootstrap_servers = vec![ALLOW_ANY.into()];
        any.limits.allowed_clickhouse_urls = vec![ALLOW_ANY.into()];
        any.limits.allowed_image_prefixes = vec![ALLOW_ANY.into()];
        resolve("ns", "scl", &spec, &any).unwrap();
    }

    #[test]
    fn an_image_prefix_ends_at_a_path_tag_or_digest_boundary() {
        assert!(image_has_prefix("ghcr.io/team", "ghcr.io/team/query:1"));
        assert!(image_has_prefix("ghcr.io/team/", "ghcr.io/team/query:1"));
        assert!(image_has_prefix("ghcr.io/team/query", "ghcr.io/team/query:1"));
        assert!(image_has_prefix("ghcr.io/team/query", "ghcr.io/team/query@sha256:ab"));
        assert!(image_has_prefix("ghcr.io/team/query:1", "ghcr.io/team/query:1"));
        assert!(!image_has_prefix("ghcr.io/team", "ghcr.io/team-evil/query:1"));
        assert!(!image_has_prefix("ghcr.io", "ghcr.io.evil.com/query:1"));
        assert!(!image_has_prefix("ghcr.io/team/query:1", "ghcr.io/team/query:10"));
    }

    #[test]
    fn sizes_beyond_the_operator_limits_name_the_field_and_the_flag() {
        type Mutation = Box<dyn Fn(&mut FlightPipelineSpec)>;
        let cases: Vec<(Mutation, &str, &str)> = vec![
            (Box::new(|s| s.kafka.partitions = 101), "spec.kafka.partitions: 101", "--max-partitions 100"),
            (Box::new(|s| s.ingest.workload.replicas = 21), "spec.ingest.replicas: 21", "--max-replicas 20"),
            (
                Box::new(|s| {
                    s.sink.workload.autoscaling =
                        Some(crate::crd::AutoscalingSpec { max_replicas: 50, ..Default::default() })
                }),
                "spec.sink.autoscaling.maxReplicas: 50",
                "--max-replicas 20",
            ),
            (
                Box::new(|s| s.ingest.max_body_bytes = 16 * 1024 * 1024 + 1),
                "spec.ingest.maxBodyBytes: 16777217",
                "--max-body-bytes 16777216",
            ),
            (Box::new(|s| s.ingest.max_records = 100_001), "spec.ingest.maxRecords: 100001", "--max-records 100000"),
            (Box::new(|s| s.sink.batch_size = 100_001), "spec.sink.batchSize: 100001", "--max-batch-size 100000"),
            (
                Box::new(|s| s.sink.max_batch_bytes = 64 * 1024 * 1024 + 1),
                "spec.sink.maxBatchBytes: 67108865",
                "--max-batch-bytes 67108864",
            ),
        ];
        for (mutate, field, flag) in cases {
            let mut spec = FlightPipelineSpec::default();
            mutate(&mut spec);
            let found = problems("scl", &spec, &defaults());
            assert!(found.iter().any(|p| p.starts_with(field) && p.ends_with(&format!("({flag})"))), "{found:?}");
        }
        // At the limits: valid.
        let mut spec = FlightPipelineSpec::default();
        spec.kafka.partitions = 100;
        spec.ingest.workload.replicas = 20;
        spec.ingest.max_body_bytes = 16 * 1024 * 1024;
        spec.ingest.max_records = 100_000;
        spec.sink.batch_size = 100_000;
        spec.sink.max_batch_bytes = 64 * 1024 * 1024;
        resolve("ns", "scl", &spec, &defaults()).unwrap();
    }

    #[test]
    fn a_ttl_that_would_pass_the_end_of_datetime_is_refused() {
        use k8s_openapi::jiff::{SignedDuration, Timestamp};
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        // The constants are what they say.
        assert_eq!(DATETIME_END_EPOCH, at("2106-02-07T06:28:15Z").as_second());
        assert_eq!(AFTER_LATEST_SCHEDULED_EPOCH, at("2101-01-01T00:00:00Z").as_second());
        let days = |d: u32| SignedDuration::from_hours(24 * i64::from(d));
        let latest_row = at("2100-12-31T23:59:59Z");
        assert!(latest_row + days(MAX_TTL_DAYS) < at("2106-02-07T06:28:15Z"));
        assert!(latest_row + days(MAX_TTL_DAYS + 1) > at("2106-02-07T06:28:15Z"));
        assert_eq!(MAX_TTL_DAYS, 1863);

        let mut spec = FlightPipelineSpec::default();
        spec.clickhouse.ttl = format!("{MAX_TTL_DAYS}d");
        assert_eq!(resolve("ns", "scl", &spec, &defaults()).unwrap().table.ttl_days, Some(MAX_TTL_DAYS));
        for ttl in [format!("{}d", MAX_TTL_DAYS + 1), "60000d".to_string()] {
            spec.clickhouse.ttl = ttl.clone();
            let found = problems("scl", &spec, &defaults());
            assert!(
                found.iter().any(|p| p.starts_with(&format!("spec.clickhouse.ttl: {ttl} is more than 1863d"))),
                "{found:?}"
            );
        }
    }

    #[test]
    fn http_limits_take_the_components_defaults_field_by_field() {
        let mut spec = FlightPipelineSpec::default();
        spec.query.limits = HttpLimits { burst: Some(5), request_timeout_seconds: Some(3), ..Default::default() };
        let r = resolve("ns", "scl", &spec, &defaults()).unwrap();
        let limits = |c| r.workload(c).http_limits;
        assert_eq!(
            limits(Component::Ingest),
            Some(HttpLimitValues {
                requests_per_second: 20,
                burst: 40,
                max_concurrent_requests: 16,
                request_timeout_seconds: 60
            })
        );
        assert_eq!(
            limits(Component::Query),
            Some(HttpLimitValues {
                requests_per_second: 1000,
                burst: 5,
                max_concurrent_requests: 64,
                request_timeout_seconds: 3
            })
        );
        assert_eq!(limits(Component::Predict).unwrap().request_timeout_seconds, 10);
        assert_eq!(limits(Component::Sink), None);
    }

    #[test]
    fn new_settings_reach_the_config_map_and_query_credentials_fall_back() {
        let mut spec = FlightPipelineSpec::default();
        spec.ingest.max_records = 500;
        spec.sink.max_batch_bytes = 2048;
        spec.query.max_execution_seconds = 7;
        let admin = SecretKeyRefs { name: "admin".into(), username_key: "u".into(), password_key: "p".into() };
        spec.clickhouse.credentials_secret = Some(admin.clone());
        let r = resolve("ns", "scl", &spec, &defaults()).unwrap();
        assert_eq!(r.settings["INGEST_MAX_RECORDS"], "500");
        assert_eq!(r.settings["SINK_MAX_BATCH_BYTES"], "2048");
        assert_eq!(r.settings["QUERY_MAX_EXECUTION_SECONDS"], "7");
        assert_eq!(r.query_credentials, Some(admin.clone()));
        let reader = SecretKeyRefs { name: "reader".into(), ..admin.clone() };
        spec.query.credentials_secret = Some(reader.clone());
        let r = resolve("ns", "scl", &spec, &defaults()).unwrap();
        assert_eq!((r.credentials, r.query_credentials), (Some(admin), Some(reader)));
        let defaults = resolve("ns", "scl", &FlightPipelineSpec::default(), &defaults()).unwrap().settings;
        assert_eq!(
            (
                &*defaults["INGEST_MAX_RECORDS"],
                &*defaults["SINK_MAX_BATCH_BYTES"],
                &*defaults["QUERY_MAX_EXECUTION_SECONDS"]
            ),
            ("100000", "16777216", "10")
        );
    }

    #[test]
    fn internal_topics_and_other_pipelines_default_names_are_refused() {
        type Case = (&'static str, fn(&mut FlightPipelineSpec), &'static str);
        let cases: [Case; 6] = [
            ("spec.kafka.topic", |s| s.kafka.topic = "__consumer_offsets".into(), "reserved"),
            ("spec.kafka.deadLetter.topic", |s| s.kafka.dead_letter.topic = "connect-offsets".into(), "reserved"),
            ("spec.kafka.topic", |s| s.kafka.topic = "b.scl.flights".into(), "default name of pipeline b/scl"),
            ("spec.kafka.topic", |s| s.kafka.topic = "b.scl.flights.dlq".into(), "default name of pipeline b/scl"),
            ("spec.kafka.deadLetter.topic", |s| s.kafka.dead_letter.topic = "b.scl.flights.dlq".into(), "b/scl"),
            ("spec.clickhouse.table", |s| s.clickhouse.table = "b_scl_1_flights".into(), "pipeline b/scl"),
        ];
        for (field, set, why) in cases {
            let mut spec = FlightPipelineSpec::default();
            set(&mut spec);
            let problems = problems("scl", &spec, &defaults());
            assert!(problems.iter().any(|p| p.starts_with(field) && p.contains(why)), "{field}: {problems:?}");
        }
        // The pipeline's own default names, spelled out, are its own.
        let mut spec = FlightPipelineSpec::default();
        spec.kafka.topic = "ns.scl.flights".into();
        spec.kafka.dead_letter.topic = "ns.scl.flights.dlq".into();
        spec.clickhouse.table = "ns_scl_2_flights".into();
        assert!(resolve("ns", "scl", &spec, &defaults()).is_ok());
    }
}

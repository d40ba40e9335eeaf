//! Validation and defaulting: a `FlightPipeline` plus the operator's defaults become a `Resolved`
//! pipeline, or a list of problems that each name the field at fault. Pure.
//!
//! The CRD schema already rejects what it can express (ranges, enums, patterns). This catches the
//! rest: facts that depend on the operator's configuration, on the object's name, or on several
//! fields at once.

use std::collections::BTreeMap;

use crate::build::slo::{Objectives, latency_le, window_seconds};
use crate::build::table::{BASE_COLUMNS, TableSpec, ttl_days};
use crate::build::topic::{TopicSpec, retention_ms};
use crate::crd::{
    AutoscalingSpec, FlightPipelineSpec, JwtSpec, MonitoringSpec, SecretKeyRef, SecretKeyRefs, WorkloadSpec,
};

/// Longest pipeline name: `<name>-predict` must stay a valid Service name with room for pod suffixes.
pub const MAX_NAME_LEN: usize = 40;
const MAX_TOPIC_LEN: usize = 249;
const MANAGED_TOPIC_CONFIGS: [&str; 2] = ["retention.ms", "cleanup.policy"];

/// What the operator supplies when a pipeline leaves something out.
#[derive(Clone, Debug, Default)]
pub struct Defaults {
    pub kafka_bootstrap_servers: Option<String>,
    pub clickhouse_url: Option<String>,
    pub images: Images,
}

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
    pub credentials: Option<SecretKeyRefs>,
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

    let topic_name =
        non_empty(&spec.kafka.topic).map(String::from).unwrap_or_else(|| format!("{namespace}.{name}.flights"));
    check_topic_name("spec.kafka.topic", &topic_name, &mut problems);
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
    }
    let ttl =
        ttl_days(&spec.clickhouse.ttl).map_err(|e| problems.push(format!("spec.clickhouse.ttl: {e}"))).unwrap_or(None);
    let mut seen = std::collections::BTreeSet::new();
    for column in &spec.clickhouse.extra_columns {
        if BASE_COLUMNS.iter().any(|(n, _)| *n == column.name) {
            problems.push(format!("spec.clickhouse.extraColumns: {:?} is a built-in column", column.name));
        }
        if !seen.insert(column.name.as_str()) {
            problems.push(format!("spec.clickhouse.extraColumns: {:?} appears twice", column.name));
        }
    }
    let table_name = non_empty(&spec.clickhouse.table)
        .map(String::from)
        .unwrap_or_else(|| format!("{namespace}_{name}_flights").replace(['-', '.'], "_"));
    if table_name.len() > 63 {
        problems.push(format!("spec.clickhouse.table: {table_name:?} is longer than 63 characters; name one"));
    }
    let table = TableSpec {
        database: spec.clickhouse.database.clone(),
        table: table_name,
        ttl_days: ttl,
        partitioning: spec.clickhouse.partition_by,
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
        workload(Component::Ingest, &spec.ingest.workload, &defaults.images.ingest, &mut problems),
        workload(Component::Sink, &spec.sink.workload, &defaults.images.ingest, &mut problems),
        workload(Component::Query, &spec.query.workload, &defaults.images.query, &mut problems),
        workload(Component::Predict, &spec.predict.workload, &defaults.images.predict, &mut problems),
    ];

    let objectives = objectives(&spec.slo, &mut problems);

    if !problems.is_empty() {
        return Err(problems);
    }

    let settings = BTreeMap::from([
        ("FLIGHTLINE_PIPELINE".to_string(), format!("{namespace}/{name}")),
        ("KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap_servers.clone()),
        ("KAFKA_TOPIC".into(), topic.name.clone()),
        ("KAFKA_DLQ_TOPIC".into(), dead_letter.as_ref().map(|t| t.name.clone()).unwrap_or_default()),
        ("KAFKA_CONSUMER_GROUP".into(), format!("flightline.{namespace}.{name}.sink")),
        ("CLICKHOUSE_URL".into(), clickhouse_url.clone()),
        ("CLICKHOUSE_DATABASE".into(), table.database.clone()),
        ("CLICKHOUSE_TABLE".into(), table.table.clone()),
        ("INGEST_MAX_BODY_BYTES".into(), spec.ingest.max_body_bytes.to_string()),
        ("SINK_BATCH_SIZE".into(), spec.sink.batch_size.to_string()),
        ("SINK_LINGER_MS".into(), spec.sink.linger_ms.to_string()),
        ("QUERY_MAX_ROWS".into(), spec.query.max_rows.to_string()),
        ("PREDICT_MODEL_PATH".into(), spec.predict.model_path.clone()),
    ]);

    Ok(Resolved {
        namespace: namespace.into(),
        name: name.into(),
        bootstrap_servers,
        topic,
        dead_letter,
        clickhouse_url,
        credentials: spec.clickhouse.credentials_secret.clone(),
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
        let buckets: Vec<String> = crate::build::slo::LATENCY_BUCKETS_MS.iter().map(|(ms, _)| ms.to_string()).collect();
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

fn workload(component: Component, spec: &WorkloadSpec, default_image: &str, problems: &mut Vec<String>) -> Workload {
    let field = format!("spec.{}", component.as_str());
    if spec.replicas < 0 {
        problems.push(format!("{field}.replicas: {} must not be negative", spec.replicas));
    }
    for key in spec.env.keys() {
        let valid = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            problems.push(format!("{field}.env: {key:?} is not a valid environment variable name"));
        }
    }
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
        image: non_empty(&spec.image).unwrap_or(default_image).to_string(),
        replicas: spec.replicas,
        resources: spec.resources.clone(),
        env: spec.env.clone(),
        autoscaling: spec.autoscaling.clone(),
    }
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
        assert_eq!(r.table.qualified(), "flightline.air_scl_flights");
        assert_eq!(r.settings["KAFKA_CONSUMER_GROUP"], "flightline.air.scl.sink");
        assert!(r.workload(Component::Sink).image.contains("flightline-ingest"));
    }

    #[test]
    fn spec_values_win_over_defaults() {
        let mut spec = FlightPipelineSpec::default();
        spec.kafka.bootstrap_servers = "kafka:9092".into();
        spec.kafka.topic = "flights".into();
        spec.kafka.dead_letter.enabled = false;
        let r = resolve("air", "scl", &spec, &defaults()).unwrap();
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
}

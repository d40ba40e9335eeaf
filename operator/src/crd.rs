//! The `FlightPipeline` API (`flightline.dev/v1alpha1`).
//!
//! Field docs become the CRD's descriptions, so `kubectl explain flightpipeline.spec.kafka` reads
//! these comments. Fields with a default are plain (non-`Option`) types so that Kubernetes 1.20's
//! `kubectl explain` still shows their type; the generator strips `nullable` from the rest.

// Each printcolumn repeats `type_ = "string"`, which clippy takes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use flightline_service::contract;
use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd_rules;

/// Finalizer that lets the operator clean up the topic and table on deletion.
pub const FINALIZER: &str = "flightline.dev/cleanup";
/// Annotation (`"true"`) that lets a pipeline go without touching Kafka or ClickHouse.
pub const SKIP_CLEANUP_ANNOTATION: &str = "flightline.dev/skip-cleanup";

/// A flight-data pipeline: a Kafka topic (and dead-letter topic), a ClickHouse table and the
/// ingest, sink, query and predict workloads that move and serve the data.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "flightline.dev",
    version = "v1alpha1",
    kind = "FlightPipeline",
    plural = "flightpipelines",
    shortname = "fp",
    category = "flightline",
    namespaced,
    status = "FlightPipelineStatus",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Topic", type_ = "string", json_path = ".status.topic"),
    printcolumn(name = "Table", type_ = "string", json_path = ".status.table"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct FlightPipelineSpec {
    /// Where flight records are published: the Kafka topic and its dead-letter topic.
    #[serde(default)]
    pub kafka: KafkaSpec,
    /// Where flight records are stored: the ClickHouse database and table.
    #[serde(default)]
    pub clickhouse: ClickHouseSpec,
    /// What identifies a stored flight, so a record sent any number of times, by any path, is
    /// stored once. `Record` (default): the whole record; `ScheduledFlight`: the scheduled time,
    /// flight number, airline, origin and destination, so a later record of that flight (PUT or
    /// POST) replaces the earlier one. Fixed once the table exists.
    #[serde(default)]
    pub identity: Identity,
    /// HTTP ingestion of flight records (JSON or CSV) into the topic.
    #[serde(default)]
    pub ingest: IngestSpec,
    /// The consumer that moves records from the topic into the table in batches.
    #[serde(default)]
    pub sink: SinkSpec,
    /// HTTP queries over stored flights and delay statistics.
    #[serde(default)]
    pub query: QuerySpec,
    /// HTTP flight-delay predictions.
    #[serde(default)]
    pub predict: PredictSpec,
    /// Who may call the ingest, query and predict APIs. Without it they are open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Service-level objectives of the HTTP services; the alert rules page when their error
    /// budget burns too fast.
    #[serde(default)]
    pub slo: SloSpec,
    /// Scraping, alert rules and Grafana dashboards for the pipeline.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// What happens to the topics and the table when the pipeline is deleted. `Retain` keeps
    /// them; `Delete` removes them.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Stop reconciling: the operator leaves every child object and external resource as it is
    /// until this is set back to false.
    #[serde(default)]
    pub paused: bool,
}

/// The Kafka side of the pipeline.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::kafka)]
pub struct KafkaSpec {
    /// Comma-separated `host:port` bootstrap servers. Empty means the operator's default
    /// (`--kafka-bootstrap-servers`); a pipeline with neither is reported as invalid.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub bootstrap_servers: String,
    /// Topic name. Empty means `<namespace>.<name>.flights`.
    #[serde(default)]
    #[schemars(length(max = 249), regex(pattern = r"^[a-zA-Z0-9._-]*$"))]
    pub topic: String,
    /// Number of partitions. It can grow; Kafka cannot shrink a topic, so a decrease is
    /// reported as `NotSupported` and left alone.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    /// Replication factor, fixed once the topic exists.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i16,
    /// How long records are kept: a number with a unit `ms`, `s`, `m`, `h` or `d` (e.g. `7d`),
    /// or `forever`. Sets `retention.ms`.
    #[serde(default = "default_retention")]
    #[schemars(regex(pattern = r"^([0-9]{1,12}(ms|s|m|h|d)|forever)$"))]
    pub retention: String,
    /// Extra topic configs, passed through as given (e.g. `compression.type: zstd`).
    /// `retention.ms` and `cleanup.policy` are managed by the operator and may not be set here.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// The dead-letter topic that receives records the sink cannot parse, with the reason.
    #[serde(default)]
    pub dead_letter: DeadLetterSpec,
    /// Use the topic and dead-letter topic even if they already exist and this pipeline did not
    /// create them: the operator then manages their partitions and configs. Off, an existing topic
    /// is reported as `ResourceConflict` and left alone. An adopted topic is never deleted.
    #[serde(default)]
    pub adopt_existing: bool,
    /// TLS to the brokers (security protocol `SSL`, or `SASL_SSL` with `sasl`), used by the
    /// operator, ingest and the sink. Without it they connect in plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTlsSpec>,
    /// SASL authentication to the brokers: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with a user and
    /// password from a Secret. It needs `tls` unless `allowPlaintext` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSaslSpec>,
}

/// TLS to the Kafka brokers.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTlsSpec {
    /// Secret key holding the PEM CA bundle that signed the brokers' certificates (Strimzi's
    /// `<cluster>-cluster-ca-cert`, key `ca.crt`). Without it the system's trusted roots are used,
    /// as for a managed service with a public certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<CaSecretRef>,
    /// Secret holding a client certificate and its private key in PEM, for brokers that
    /// authenticate clients by certificate (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_secret: Option<ClientCertificateSecretRef>,
}

/// SASL authentication to the Kafka brokers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSaslSpec {
    /// `SCRAM-SHA-512` (Strimzi, MSK), `SCRAM-SHA-256` or `PLAIN` (Confluent Cloud API keys).
    pub mechanism: SaslMechanism,
    /// Secret with the user and password (keys `username` and `password` unless set).
    pub credentials_secret: SecretKeyRefs,
    /// Allow SASL without `tls` (security protocol `SASL_PLAINTEXT`): the credentials then cross
    /// the network unencrypted (in clear with `PLAIN`). Off, such a spec is `InvalidSpec`.
    #[serde(default)]
    pub allow_plaintext: bool,
}

/// SASL mechanisms.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "PLAIN")]
    Plain,
}

/// A Secret key holding a PEM CA bundle.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    /// Secret name, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the PEM CA bundle.
    #[serde(default = "default_ca_key")]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".into()
}

/// A Secret holding a client certificate and key (the `kubernetes.io/tls` layout by default).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertificateSecretRef {
    /// Secret name, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the PEM certificate (chain).
    #[serde(default = "default_cert_key")]
    pub cert_key: String,
    /// Key of the PEM private key (PKCS#8, PKCS#1 or SEC1, unencrypted).
    #[serde(default = "default_key_key")]
    pub key_key: String,
}

fn default_cert_key() -> String {
    "tls.crt".into()
}
fn default_key_key() -> String {
    "tls.key".into()
}

/// TLS to ClickHouse over `https://`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClickHouseTlsSpec {
    /// Secret key holding the PEM CA bundle that signed ClickHouse's certificate. Without it the
    /// system's trusted roots are used (ClickHouse Cloud).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<CaSecretRef>,
}

/// The dead-letter topic.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::dead_letter)]
pub struct DeadLetterSpec {
    /// Create and use a dead-letter topic.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Topic name. Empty means `<topic>.dlq`.
    #[serde(default)]
    #[schemars(length(max = 249), regex(pattern = r"^[a-zA-Z0-9._-]*$"))]
    pub topic: String,
    /// Retention of dead letters (same format as `kafka.retention`).
    #[serde(default = "default_dlq_retention")]
    #[schemars(regex(pattern = r"^([0-9]{1,12}(ms|s|m|h|d)|forever)$"))]
    pub retention: String,
}

/// The ClickHouse side of the pipeline.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::clickhouse)]
pub struct ClickHouseSpec {
    /// HTTP(S) URL of ClickHouse, e.g. `http://clickhouse:8123` or `https://clickhouse:8443`
    /// (see `tls`). Empty means the operator's default (`--clickhouse-url`).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub url: String,
    /// Database, created if missing.
    #[serde(default = "default_database")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub database: String,
    /// Table, created if missing. Empty means `<namespace>_<name>_<length of namespace>_flights`
    /// (with `-` as `_`): distinct for every namespace and name, so two pipelines never share a
    /// table by accident.
    #[serde(default)]
    #[schemars(length(max = 63), regex(pattern = r"^([a-zA-Z_][a-zA-Z0-9_]*)?$"))]
    pub table: String,
    /// Secret with the ClickHouse user and password (keys `username` and `password`).
    /// Without it the `default` user without a password is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRefs>,
    /// Drop rows whose scheduled time is older than this: a number of days with unit `d`
    /// (e.g. `730d`), at most `1863d` (a flight of 2100 plus a longer TTL would pass the end of
    /// ClickHouse's `DateTime`, 2106-02-07, and expire at once). Empty keeps rows forever.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]{1,5}d)?$"))]
    pub ttl: String,
    /// Partitioning of the table by scheduled time. Fixed once the table exists.
    #[serde(default)]
    pub partition_by: Partitioning,
    /// Extra columns beyond the data set's, added to the table with `ALTER TABLE ADD COLUMN`.
    /// Columns can be added; changing one's type is reported as `NotSupported`, and a column
    /// removed from the spec stays in the table (no data is dropped).
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub extra_columns: Vec<ExtraColumn>,
    /// Use the table even if it already exists and this pipeline did not create it: the operator
    /// then adds its columns and sets its TTL. Off, an existing table is reported as
    /// `ResourceConflict` and left alone. An adopted table is never dropped.
    #[serde(default)]
    pub adopt_existing: bool,
    /// TLS settings for an `https://` URL (used by the operator, the sink and query). An
    /// `https://` URL without it trusts the system's roots; with an `http://` URL it is `InvalidSpec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClickHouseTlsSpec>,
}

/// API authentication: API keys, JWTs, or both (a caller needs one that passes).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Secret holding the allowed API keys, hashed: one SHA-256 hex digest per line
    /// (`printf %s "$KEY" | sha256sum`). Callers send `Authorization: Bearer <key>` or `X-API-Key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret: Option<SecretKeyRef>,
    /// JSON Web Tokens: callers send `Authorization: Bearer <token>`; the token needs an `exp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
}

/// How JWTs are verified.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// `HS256` (a shared secret of at least 32 bytes) or `RS256` (an RSA public key in PEM).
    pub algorithm: JwtAlgorithm,
    /// Secret holding the shared secret (HS256) or the PEM public key (RS256), under `key`.
    pub key_secret: JwtKeySecret,
    /// Accept only tokens with this `iss` claim. Empty: any issuer.
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub issuer: String,
    /// Accept only tokens with this `aud` claim. Empty: any audience.
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub audience: String,
}

/// JWT signature algorithms.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
}

/// The Secret key holding the JWT verification key.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtKeySecret {
    /// Secret name, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_jwt_key")]
    pub key: String,
}

fn default_jwt_key() -> String {
    "jwt-key".into()
}

/// One key of a Secret.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret.
    #[serde(default = "default_api_keys_key")]
    pub key: String,
}

fn default_api_keys_key() -> String {
    "api-key-hashes".into()
}

/// A reference to a Secret holding credentials.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRefs {
    /// Secret name, in the pipeline's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key of the user name.
    #[serde(default = "default_username_key")]
    pub username_key: String,
    /// Key of the password.
    #[serde(default = "default_password_key")]
    pub password_key: String,
}

/// What identifies a stored flight (`spec.identity`).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Identity {
    /// The whole record: the same record sent again is stored once; records that differ are two rows.
    #[default]
    Record,
    /// The scheduled flight: the newest record of a flight replaces the earlier ones.
    ScheduledFlight,
}

impl Identity {
    /// The spec's spelling, also the services' `FLIGHTLINE_IDENTITY` and the table comment's.
    pub fn as_str(self) -> &'static str {
        match self {
            Identity::Record => "Record",
            Identity::ScheduledFlight => "ScheduledFlight",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Identity::Record, Identity::ScheduledFlight].into_iter().find(|i| i.as_str() == text)
    }
}

/// How the table is partitioned.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Partitioning {
    /// One partition per month of scheduled time (`toYYYYMM`).
    #[default]
    Month,
    /// One partition per day of scheduled time (`toYYYYMMDD`).
    Day,
    /// A single partition.
    None,
}

/// An extra column of the table.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtraColumn {
    /// Column name; must not clash with a built-in column.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z_][a-z0-9_]*$"))]
    pub name: String,
    /// Column type.
    #[serde(rename = "type")]
    pub column_type: ExtraColumnType,
}

/// Types an extra column may have. Each is stored with its type's default for existing rows.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ExtraColumnType {
    String,
    Int64,
    Float64,
    Bool,
    DateTime,
}

/// What the operator does with external resources when the pipeline is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the topics and the table (the default: data outlives its pipeline).
    #[default]
    Retain,
    /// Delete the topics and the table.
    Delete,
}

/// Settings every workload has.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Run this component. Switching it off deletes its Deployment and Service.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Container image. Empty means the operator's default for this component.
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub image: String,
    /// Number of pods.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// CPU and memory requests and limits. Empty means the operator's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables for the container (name → value). Names the operator writes from the
    /// spec (KAFKA_*, CLICKHOUSE_*, INGEST_*, SINK_*, QUERY_*, PREDICT_*, API_KEY*, JWT_*, the HTTP limits,
    /// LISTEN_ADDR) are refused: set the spec field instead.
    #[serde(default)]
    #[schemars(extend("maxProperties" = crd_rules::MAX_ENV_VARS))]
    pub env: BTreeMap<String, String>,
    /// Scale the component on its load instead of a fixed `replicas`: HTTP components on their
    /// request rate per pod, the sink on its consumer lag (never above the topic's partitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            image: String::new(),
            replicas: default_replicas(),
            resources: None,
            env: BTreeMap::new(),
            autoscaling: None,
        }
    }
}

/// Autoscaling of one component. The Deployment then leaves `replicas` to the autoscaler.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::autoscaling)]
pub struct AutoscalingSpec {
    /// `HPA`: a HorizontalPodAutoscaler on the per-pod metric served by prometheus-adapter
    /// (`autoscaling/v2`, or `v2beta2` on servers without it). `KEDA`: a KEDA `ScaledObject`
    /// with a Prometheus trigger (KEDA must be installed).
    #[serde(default)]
    pub provider: AutoscalingProvider,
    /// Fewest pods.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// Most pods. For the sink, capped at the topic's partitions (more consumers would idle).
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// HTTP components: requests per second one pod should serve (health and metrics excluded).
    #[serde(default = "default_target_rps")]
    #[schemars(range(min = 1, max = 1000000))]
    pub target_requests_per_second: i32,
    /// Sink: records waiting in the topic per pod before another pod is added.
    #[serde(default = "default_target_lag")]
    #[schemars(range(min = 1, max = 100000000))]
    pub target_consumer_lag: i64,
    /// Seconds of lower load before the autoscaler removes pods (the HPA's
    /// `behavior.scaleDown.stabilizationWindowSeconds`; for KEDA its HPA's). Unset: 300, as
    /// Kubernetes. Shorter follows load faster, at the risk of flapping on bursty traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_seconds: Option<i32>,
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            provider: AutoscalingProvider::default(),
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_requests_per_second: default_target_rps(),
            target_consumer_lag: default_target_lag(),
            scale_down_stabilization_seconds: None,
        }
    }
}

/// Which autoscaler the operator creates.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AutoscalingProvider {
    /// A HorizontalPodAutoscaler.
    #[default]
    #[serde(rename = "HPA")]
    Hpa,
    /// A KEDA ScaledObject.
    #[serde(rename = "KEDA")]
    Keda,
}

/// Service-level objectives, shared by the ingest, query and predict APIs (each is judged on its own).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::slo)]
pub struct SloSpec {
    /// Percentage of API requests that must not fail with a 5xx, e.g. `99.5`.
    #[serde(default = "default_availability")]
    #[schemars(range(min = 50.0, max = 99.999))]
    pub availability: f64,
    /// A request slower than this many milliseconds counts against the latency objective. One of
    /// the services' histogram buckets: 5, 10, 25, 50, 100, 250, 400, 500, 1000, 2500, 5000.
    #[serde(default = "default_latency_threshold_ms")]
    #[schemars(range(min = 5, max = 5000))]
    pub latency_threshold_ms: i32,
    /// Percentage of API requests that must be faster than `latencyThresholdMs`, e.g. `95`.
    #[serde(default = "default_latency_target")]
    #[schemars(range(min = 50.0, max = 99.999))]
    pub latency_target: f64,
    /// The period the objectives hold over, in days (`28d`) or hours (`6h`); the burn-rate alert
    /// windows scale with it (1 h and 5 min at 30 days).
    #[serde(default = "default_slo_window")]
    #[schemars(regex(pattern = r"^[0-9]{1,3}(d|h)$"))]
    pub window: String,
    /// Records waiting in the topic above which the consumer-lag alert fires.
    #[serde(default = "default_max_consumer_lag")]
    #[schemars(range(min = 1))]
    pub max_consumer_lag: i64,
    /// Seconds from ingestion to queryable (p95) above which the freshness alert fires (at most
    /// an hour: the sink's freshness histogram ends there).
    #[serde(default = "default_max_freshness_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub max_freshness_seconds: i32,
}

impl Default for SloSpec {
    fn default() -> Self {
        Self {
            availability: default_availability(),
            latency_threshold_ms: default_latency_threshold_ms(),
            latency_target: default_latency_target(),
            window: default_slo_window(),
            max_consumer_lag: default_max_consumer_lag(),
            max_freshness_seconds: default_max_freshness_seconds(),
        }
    }
}

/// What the operator sets up for monitoring. Each part needs its CRD (prometheus-operator's
/// `ServiceMonitor` and `PrometheusRule`); without them pods carry `prometheus.io/*` annotations.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringSpec {
    /// A ServiceMonitor for the pipeline's services.
    #[serde(default = "default_true")]
    pub service_monitor: bool,
    /// A PrometheusRule with the SLO recording rules and alerts.
    #[serde(default = "default_true")]
    pub alert_rules: bool,
    /// A ConfigMap with the pipeline's Grafana dashboard, for Grafana's dashboard sidecar.
    #[serde(default = "default_true")]
    pub dashboards: bool,
    /// Grafana folder of the dashboard. Empty means the operator's default.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub grafana_folder: String,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self { service_monitor: true, alert_rules: true, dashboards: true, grafana_folder: String::new() }
    }
}

/// The ingest component.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::workload)]
pub struct IngestSpec {
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// Largest request body accepted, in bytes (larger bodies get 413). At most the operator's
    /// `--max-body-bytes`.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_body_bytes: i64,
    /// Most flight records one request may carry (more get 400). At most the operator's
    /// `--max-records`.
    #[serde(default = "default_max_records")]
    #[schemars(range(min = 1, max = 10000000))]
    pub max_records: i64,
    /// Rate, concurrency and time limits of the HTTP API. Defaults: 20 requests per second per
    /// client, burst 40, 16 requests at once, 60 s per request.
    #[serde(default)]
    pub limits: HttpLimits,
}

/// The sink component.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::workload)]
pub struct SinkSpec {
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// Most records per ClickHouse insert. At most the operator's `--max-batch-size`.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 1000000))]
    pub batch_size: i32,
    /// Most bytes of records per ClickHouse insert (a batch ends at whichever of `batchSize` and
    /// this comes first). At most the operator's `--max-batch-bytes`.
    #[serde(default = "default_max_batch_bytes")]
    #[schemars(range(min = 1024, max = 1073741824))]
    pub max_batch_bytes: i64,
    /// Longest wait for a batch to fill, in milliseconds.
    #[serde(default = "default_linger_ms")]
    #[schemars(range(min = 0, max = 600000))]
    pub linger_ms: i32,
}

/// The query component.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::workload)]
pub struct QuerySpec {
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// Most rows one `GET /v1/flights` page returns.
    #[serde(default = "default_max_rows")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_rows: i32,
    /// Longest time ClickHouse may spend on one query statement (`max_execution_time`), in seconds.
    #[serde(default = "default_max_execution_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub max_execution_seconds: i32,
    /// How old an answer may be, in milliseconds: statistics and pages are cached and refreshed
    /// in the background within this bound, so many readers cost ClickHouse one query per
    /// distinct request per bound. 0 reads ClickHouse on every request.
    #[serde(default = "default_freshness_ms")]
    #[schemars(range(min = 0, max = 3600000))]
    pub freshness_ms: i32,
    /// Secret with the ClickHouse user and password query reads with (keys `username` and
    /// `password`): best a read-only user. Without it query uses `spec.clickhouse.credentialsSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRefs>,
    /// Rate, concurrency and time limits of the HTTP API. Defaults: 1000 requests per second per
    /// client, burst 2000, 64 requests at once, 15 s per request.
    #[serde(default)]
    pub limits: HttpLimits,
}

/// The predict component.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crd_rules::workload)]
pub struct PredictSpec {
    #[serde(flatten)]
    pub workload: WorkloadSpec,
    /// Path of the model artifact inside the container. Empty means the model built into the image.
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub model_path: String,
    /// Rate, concurrency and time limits of the HTTP API. Defaults: 1000 requests per second per
    /// client, burst 2000, 64 requests at once, 10 s per request.
    #[serde(default)]
    pub limits: HttpLimits,
}

/// Limits of one HTTP API. A field left out takes the component's default (see the component's
/// `limits`).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpLimits {
    /// Requests per second one client (API key, token subject, else address) may sustain; more
    /// get 429 with `Retry-After`. 0 turns rate limiting off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000000))]
    pub requests_per_second: Option<i32>,
    /// Requests one client may send at once above its rate before it gets 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub burst: Option<i32>,
    /// Requests served at once by one pod; more get 503 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_concurrent_requests: Option<i32>,
    /// Longest time one request may take, in seconds; a slower one gets 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600))]
    pub request_timeout_seconds: Option<i32>,
}

/// What the operator observed and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlightPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `KafkaReady`, `ClickHouseReady`, `WorkloadsAvailable`, `AutoscalingReady`,
    /// `MonitoringReady` and, while paused, `Paused`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The topic in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The dead-letter topic in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// The table in use, as `database.table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Partitions the topic has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// In-cluster URLs of the HTTP services, by component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, String>,
    /// Available replicas, by component.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub available_replicas: BTreeMap<String, i32>,
    /// The topics and the table this pipeline uses, where they are, and whether it created them.
    /// Written before a resource is created; `deletionPolicy: Delete` deletes only what is recorded
    /// here as created, at the recorded location. Absent on pipelines reconciled before this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<Vec<StorageRecord>>,
}

/// One external resource a pipeline uses.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageRecord {
    pub kind: StorageKind,
    /// Topic name, or `database.table`.
    pub name: String,
    /// Kafka bootstrap servers or ClickHouse URL the resource lives at.
    pub location: String,
    /// Flightline created it for this pipeline (false: adopted).
    pub created_by_flightline: bool,
}

/// Kinds of external resources.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema)]
pub enum StorageKind {
    Topic,
    Table,
}

fn default_true() -> bool {
    true
}
fn default_partitions() -> i32 {
    3
}
fn default_replication_factor() -> i16 {
    1
}
fn default_retention() -> String {
    "7d".into()
}
fn default_dlq_retention() -> String {
    "30d".into()
}
fn default_database() -> String {
    "flightline".into()
}
fn default_username_key() -> String {
    "username".into()
}
fn default_password_key() -> String {
    "password".into()
}
fn default_replicas() -> i32 {
    1
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    5
}
fn default_target_rps() -> i32 {
    100
}
fn default_target_lag() -> i64 {
    50_000
}
fn default_availability() -> f64 {
    99.5
}
fn default_latency_threshold_ms() -> i32 {
    400
}
fn default_latency_target() -> f64 {
    95.0
}
fn default_slo_window() -> String {
    "28d".into()
}
fn default_max_consumer_lag() -> i64 {
    100_000
}
fn default_max_freshness_seconds() -> i32 {
    300
}
// The services' defaults (`flightline_service::contract`), so a variable left unset means the same.
fn default_max_body_bytes() -> i64 {
    contract::ingest::MAX_BODY_BYTES_DEFAULT as i64
}
fn default_batch_size() -> i32 {
    contract::sink::BATCH_SIZE_DEFAULT as i32
}
fn default_linger_ms() -> i32 {
    contract::sink::LINGER_MS_DEFAULT as i32
}
fn default_max_rows() -> i32 {
    contract::query::MAX_ROWS_DEFAULT as i32
}
fn default_max_records() -> i64 {
    contract::ingest::MAX_RECORDS_DEFAULT as i64
}
fn default_max_batch_bytes() -> i64 {
    contract::sink::MAX_BATCH_BYTES_DEFAULT as i64
}
fn default_max_execution_seconds() -> i32 {
    contract::query::MAX_EXECUTION_SECONDS_DEFAULT as i32
}

fn default_freshness_ms() -> i32 {
    contract::query::FRESHNESS_MS_DEFAULT as i32
}

impl Default for KafkaSpec {
    fn default() -> Self {
        Self {
            bootstrap_servers: String::new(),
            topic: String::new(),
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            retention: default_retention(),
            config: BTreeMap::new(),
            dead_letter: DeadLetterSpec::default(),
            adopt_existing: false,
            tls: None,
            sasl: None,
        }
    }
}

impl Default for DeadLetterSpec {
    fn default() -> Self {
        Self { enabled: true, topic: String::new(), retention: default_dlq_retention() }
    }
}

impl Default for ClickHouseSpec {
    fn default() -> Self {
        Self {
            url: String::new(),
            database: default_database(),
            table: String::new(),
            credentials_secret: None,
            ttl: String::new(),
            partition_by: Partitioning::default(),
            extra_columns: Vec::new(),
            adopt_existing: false,
            tls: None,
        }
    }
}

impl Default for IngestSpec {
    fn default() -> Self {
        Self {
            workload: WorkloadSpec::default(),
            max_body_bytes: default_max_body_bytes(),
            max_records: default_max_records(),
            limits: HttpLimits::default(),
        }
    }
}

impl Default for SinkSpec {
    fn default() -> Self {
        Self {
            workload: WorkloadSpec::default(),
            batch_size: default_batch_size(),
            max_batch_bytes: default_max_batch_bytes(),
            linger_ms: default_linger_ms(),
        }
    }
}

impl Default for QuerySpec {
    fn default() -> Self {
        Self {
            workload: WorkloadSpec::default(),
            max_rows: default_max_rows(),
            max_execution_seconds: default_max_execution_seconds(),
            freshness_ms: default_freshness_ms(),
            credentials_secret: None,
            limits: HttpLimits::default(),
        }
    }
}

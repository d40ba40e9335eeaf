//! What every reconcile shares: the client, the operator's defaults, caches and pools.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Client;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use std::sync::Arc;

use super::{clickhouse, discovery, kafka, kubernetes, storage};
use crate::crd::FlightPipeline;
use crate::desired::monitoring::DashboardSettings;
use crate::spec::resolve::Defaults;
use crate::telemetry::Metrics;

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub defaults: Defaults,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Re-reconcile period that catches drift made outside Kubernetes.
    pub resync: Duration,
    /// Timeout of each Kafka and ClickHouse call.
    pub io_timeout: Duration,
    /// Consecutive failures per pipeline, for exponential backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Prometheus that KEDA triggers query.
    pub prometheus_url: Option<String>,
    /// How dashboards are labelled for Grafana's sidecar.
    pub dashboards: DashboardSettings,
    /// Every FlightPipeline the controller watches (its reflector store): claims between
    /// pipelines are checked against it without an API call.
    pub pipelines: Store<FlightPipeline>,
    /// The claims of every pipeline, rebuilt only when the store's pipelines changed.
    pub claims: Mutex<storage::ClaimIndexCache>,
    /// The owned children the controller watches (labelled as managed by the operator).
    pub children: ChildStores,
    /// What the API server offers, asked at most once per TTL.
    pub discovery: discovery::DiscoveryCache,
    /// ClickHouse clients per URL and credentials, reused across reconciles.
    pub clickhouse: clickhouse::ClientPool,
    /// Kafka admin sessions and batched topic reads, creates and deletes, per cluster.
    pub kafka: kafka::Clusters,
}

/// Reflector stores of the owned kinds, fed by the controller's own watches, and of the
/// discovered kinds it applies (HPAs, ScaledObjects, ServiceMonitors, PrometheusRules) that were
/// served when the operator started.
pub struct ChildStores {
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub dynamic: Vec<(ApiResource, Store<DynamicObject>)>,
}

impl ChildStores {
    /// The store of a discovered kind, if it is watched.
    pub fn dynamic(&self, resource: &ApiResource) -> Option<kubernetes::Cached<'_, DynamicObject>> {
        self.dynamic
            .iter()
            .find(|(r, _)| r.api_version == resource.api_version && r.kind == resource.kind)
            .map(|(r, store)| kubernetes::Cached { store, dyntype: r.clone() })
    }
}

//! What every reconcile shares: the client, the operator's defaults, caches and pools.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
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
/// discovered kinds it applies (HPAs, ScaledObjects, ServiceMonitors, PrometheusRules).
pub struct ChildStores {
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub dynamic: DiscoveredStores,
}

impl ChildStores {
    /// The store of a discovered kind, if it is watched.
    pub fn dynamic(&self, resource: &ApiResource) -> Option<kubernetes::Cached<DynamicObject>> {
        self.dynamic.get(resource).map(|(r, store)| kubernetes::Cached { store, dyntype: r })
    }
}

/// Where the watches of discovered kinds look: the operator's namespace scope and the label of
/// the objects it manages.
pub struct WatchScope {
    pub client: Client,
    pub namespace: Option<String>,
    pub labels: String,
}

/// Stores of the discovered kinds, each fed by its own watch of the objects labelled as the
/// operator's. A kind served after the operator started (KEDA or prometheus-operator installed
/// later) gets its watch when a reconcile first finds it served: until its first full list, and
/// without a scope (tests), its objects are read from the API server. Changes to these kinds do
/// not trigger a reconcile; the resync repairs them.
pub struct DiscoveredStores {
    scope: Option<WatchScope>,
    stores: RwLock<Vec<(ApiResource, Store<DynamicObject>)>>,
}

impl DiscoveredStores {
    pub fn new(scope: Option<WatchScope>) -> Self {
        Self { scope, stores: RwLock::default() }
    }

    /// The kind's store, if it is watched.
    pub fn get(&self, resource: &ApiResource) -> Option<(ApiResource, Store<DynamicObject>)> {
        let stores = self.stores.read().expect("stores lock");
        stores.iter().find(|(r, _)| r.api_version == resource.api_version && r.kind == resource.kind).cloned()
    }

    /// Starts a watch for each discovered kind in `resources` that has none (the built-in
    /// Deployments, Services and ConfigMaps have theirs). Returns how many it started.
    pub fn watch_missing(&self, resources: &[ApiResource]) -> usize {
        let Some(scope) = &self.scope else { return 0 };
        let built_in = [
            ApiResource::erase::<Deployment>(&()),
            ApiResource::erase::<Service>(&()),
            ApiResource::erase::<ConfigMap>(&()),
        ];
        let own_watch = |r: &ApiResource| !built_in.iter().any(|b| b.group == r.group && b.kind == r.kind);
        // Every reconcile asks: a read lock answers when each kind has its watch already.
        if resources.iter().filter(|r| own_watch(r)).all(|r| self.get(r).is_some()) {
            return 0;
        }
        let mut stores = self.stores.write().expect("stores lock");
        let mut started = 0;
        for resource in resources.iter().filter(|r| own_watch(r)) {
            if stores.iter().any(|(r, _)| r.api_version == resource.api_version && r.kind == resource.kind) {
                continue;
            }
            stores.push((resource.clone(), watch(scope, resource)));
            tracing::info!(kind = %resource.kind, api_version = %resource.api_version, "watching a discovered kind");
            started += 1;
        }
        started
    }
}

/// A store of `resource`'s objects labelled as the operator's, fed by a watch that runs for the
/// operator's life.
fn watch(scope: &WatchScope, resource: &ApiResource) -> Store<DynamicObject> {
    let api: Api<DynamicObject> = match &scope.namespace {
        Some(ns) => Api::namespaced_with(scope.client.clone(), ns, resource),
        None => Api::all_with(scope.client.clone(), resource),
    };
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    let strip = {
        let resource = resource.clone();
        move |object: &mut DynamicObject| kubernetes::strip_dynamic(object, &resource)
    };
    let stream =
        watcher(api, watcher::Config::default().labels(&scope.labels)).default_backoff().modify(strip).reflect(writer);
    tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    store
}

#[cfg(test)]
mod tests {
    use axum::http::{Request, Response};
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use kube::client::Body;

    use super::*;
    use crate::desired::monitoring::service_monitor_resource;

    #[tokio::test]
    async fn a_kind_served_later_gets_one_watch_of_the_operators_objects_and_built_in_kinds_none() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let scope = WatchScope {
            client: Client::new(service, "default"),
            namespace: Some("air".into()),
            labels: "app.kubernetes.io/managed-by=flightline-operator".into(),
        };
        let stores = DiscoveredStores::new(Some(scope));
        let deployment = ApiResource::erase::<Deployment>(&());
        let hpa = ApiResource::erase::<HorizontalPodAutoscaler>(&());
        let service_monitor = service_monitor_resource();
        assert_eq!(stores.watch_missing(&[deployment.clone(), hpa.clone()]), 1, "the HPA kind, not Deployments");
        assert_eq!(stores.watch_missing(&[hpa.clone(), service_monitor.clone()]), 1, "served later: one more");
        assert_eq!(stores.watch_missing(&[hpa.clone(), service_monitor.clone()]), 0, "each kind is watched once");
        assert!(stores.get(&hpa).is_some() && stores.get(&service_monitor).is_some());
        assert!(stores.get(&deployment).is_none());
        // Each watch lists the operator's labelled objects of its kind, in the scope's namespace.
        let mut lists = Vec::new();
        for _ in 0..2 {
            let (request, _answer) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
                .await
                .expect("a watch lists its kind")
                .expect("the client is alive");
            assert!(
                request.uri().query().unwrap_or_default().contains("labelSelector=app.kubernetes.io%2Fmanaged-by"),
                "{}",
                request.uri()
            );
            lists.push(request.uri().path().to_string());
        }
        lists.sort();
        assert_eq!(
            lists,
            [
                "/apis/autoscaling/v2/namespaces/air/horizontalpodautoscalers",
                "/apis/monitoring.coreos.com/v1/namespaces/air/servicemonitors",
            ]
        );
        assert_eq!(DiscoveredStores::new(None).watch_missing(&[hpa]), 0, "no scope, no watch");
    }
}

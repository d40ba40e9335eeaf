//! What every reconcile shares: the client, the operator's defaults, caches and pools.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
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
    pub names: NameIndex,
}

impl ChildStores {
    /// The store of a discovered kind, if it is watched.
    pub fn dynamic(&self, resource: &ApiResource) -> Option<kubernetes::Cached<DynamicObject>> {
        self.dynamic.get(resource).map(|(r, store)| kubernetes::Cached { store, dyntype: r })
    }
}

/// Where the watches of discovered kinds look: the operator's namespace scope and the label of
/// the objects it manages.
#[derive(Clone)]
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
        let mut stores = self.stores.write().expect("stores lock");
        let mut started = 0;
        for resource in resources {
            let watched = stores.iter().any(|(r, _)| r.api_version == resource.api_version && r.kind == resource.kind);
            if watched || built_in.iter().any(|b| b.group == resource.group && b.kind == resource.kind) {
                continue;
            }
            stores.push((resource.clone(), watch(scope, resource)));
            tracing::info!(kind = %resource.kind, api_version = %resource.api_version, "watching a discovered kind");
            started += 1;
        }
        started
    }
}

/// The names taken, per child kind: a metadata-only watch of every object of the kind in the
/// operator's scope, labelled as the operator's or not, keeping nothing but names. A child absent
/// from its kind's labelled store and from this index is new to the cluster: it is applied
/// (unforced) without a read first, and at fleet scale that read was a third of the API requests
/// of a new pipeline. An object of its name made by someone else is in the index, and read.
pub struct NameIndex {
    scope: Option<WatchScope>,
    stores: RwLock<Vec<(ApiResource, Store<PartialObjectMeta<DynamicObject>>)>>,
}

impl NameIndex {
    pub fn new(scope: Option<WatchScope>) -> Self {
        Self { scope, stores: RwLock::default() }
    }

    /// Starts a watch for each kind in `resources` that has none. Returns how many it started.
    pub fn watch_missing(&self, resources: &[ApiResource]) -> usize {
        let Some(scope) = &self.scope else { return 0 };
        let mut stores = self.stores.write().expect("stores lock");
        let mut started = 0;
        for resource in resources {
            if stores.iter().any(|(r, _)| crate::desired::children::same_kind(r, resource)) {
                continue;
            }
            stores.push((resource.clone(), watch_names(scope, resource)));
            started += 1;
        }
        started
    }

    /// Whether an object named `name` exists in `namespace`; `None` while the kind is not watched
    /// or its first full list has not arrived.
    pub fn taken(&self, resource: &ApiResource, namespace: &str, name: &str) -> Option<bool> {
        let stores = self.stores.read().expect("stores lock");
        let (resource, store) = stores.iter().find(|(r, _)| crate::desired::children::same_kind(r, resource))?;
        store.wait_until_ready().now_or_never()?.ok()?;
        Some(store.get(&ObjectRef::new_with(name, resource.clone()).within(namespace)).is_some())
    }
}

/// A store of the names of `resource`'s objects in the scope, fed by a metadata-only watch.
fn watch_names(scope: &WatchScope, resource: &ApiResource) -> Store<PartialObjectMeta<DynamicObject>> {
    // An `Api` of `PartialObjectMeta` lists and watches metadata only.
    let api: Api<PartialObjectMeta<DynamicObject>> = match &scope.namespace {
        Some(ns) => Api::namespaced_with(scope.client.clone(), ns, resource),
        None => Api::all_with(scope.client.clone(), resource),
    };
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    // The name is all the index needs: a cluster's ConfigMaps cost a few hundred bytes each.
    let keep_name = |object: &mut PartialObjectMeta<DynamicObject>| {
        let meta = object.meta_mut();
        let (name, namespace) = (meta.name.take(), meta.namespace.take());
        *meta = kube::api::ObjectMeta { name, namespace, ..Default::default() };
    };
    let stream = watcher(api, watcher::Config::default()).default_backoff().modify(keep_name).reflect(writer);
    tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    store
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

    #[tokio::test]
    async fn the_name_index_lists_every_object_of_a_kind_metadata_only_and_knows_which_names_are_taken() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let scope = WatchScope { client: Client::new(service, "default"), namespace: None, labels: "ignored=1".into() };
        let index = NameIndex::new(Some(scope));
        let config_map = ApiResource::erase::<ConfigMap>(&());
        assert_eq!(index.taken(&config_map, "air", "scl-dashboard"), None, "not watched: unknown");
        assert_eq!(index.watch_missing(std::slice::from_ref(&config_map)), 1, "built-in kinds too");
        assert_eq!(index.watch_missing(std::slice::from_ref(&config_map)), 0, "each kind is watched once");
        assert_eq!(index.taken(&config_map, "air", "scl-dashboard"), None, "not listed yet: unknown");

        let (request, answer) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
            .await
            .expect("the watch lists its kind")
            .expect("the client is alive");
        // Every ConfigMap of the scope, labelled or not, as metadata only.
        assert_eq!(request.uri().path(), "/api/v1/configmaps");
        assert!(!request.uri().query().unwrap_or_default().contains("labelSelector"), "{}", request.uri());
        let accept = request.headers()["accept"].to_str().unwrap();
        assert!(accept.contains("as=PartialObjectMetadataList"), "{accept}");
        let list = serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "7"},
            "items": [{"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMeta",
                       "metadata": {"name": "scl-dashboard", "namespace": "air", "labels": {"team": "x"},
                                    "annotations": {"big": "x".repeat(1000)}}}],
        });
        answer.send_response(Response::new(Body::from(serde_json::to_vec(&list).unwrap())));
        let listed = async {
            while index.taken(&config_map, "air", "scl-dashboard").is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), listed).await.expect("the index is ready after its list");
        assert_eq!(index.taken(&config_map, "air", "scl-dashboard"), Some(true), "someone's object");
        assert_eq!(index.taken(&config_map, "air", "scl-pipeline"), Some(false), "a free name");
        assert_eq!(index.taken(&config_map, "other", "scl-dashboard"), Some(false), "per namespace");
        // Only the name is kept.
        let stores = index.stores.read().unwrap();
        let kept = stores[0].1.state();
        assert_eq!(kept[0].metadata.labels, None);
        assert_eq!(kept[0].metadata.annotations, None);
        assert_eq!(NameIndex::new(None).watch_missing(&[config_map]), 0, "no scope, no watch");
    }
}

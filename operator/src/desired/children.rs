//! Every Kubernetes child of a pipeline as one ordered set, in dependency order: the settings
//! ConfigMap, the Services and Deployments, their autoscalers, then the monitoring objects. Pure.
//!
//! The reconciler applies the set in order, then deletes the pipeline's labelled children that are
//! not in it (the shape of Stackable operator-rs `ClusterResources`: `add`, then
//! `delete_orphaned_resources`). So nothing is deleted per kind: a part switched off is simply no
//! longer in the set. Adding a child kind is a builder and one entry in [`BUILDERS`].

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{ApiResource, DynamicObject};
use serde::Serialize;

use crate::conditions::ConditionType;
use crate::desired::autoscaling::{self, Offers, Plan};
use crate::desired::monitoring::{self, DashboardSettings};
use crate::desired::workloads::{self, Scrape};
use crate::spec::resolve::{Component, Resolved};

/// What the API server serves beyond the built-in workload APIs, as discovery found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    pub autoscaling: Offers,
    pub service_monitor: bool,
    pub prometheus_rule: bool,
}

/// The cluster and operator settings the children depend on.
#[derive(Clone, Copy, Debug)]
pub struct Cluster<'a> {
    pub served: Discovered,
    /// The Prometheus KEDA triggers query (`--prometheus-url`).
    pub prometheus_url: Option<&'a str>,
    pub dashboards: &'a DashboardSettings,
}

/// One child object and the kind it is applied as.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    /// The condition that reports it.
    pub part: ConditionType,
    pub resource: ApiResource,
    pub object: DynamicObject,
    /// How its condition names it once applied (`predict (HPA)`); `None`: not named.
    pub note: Option<String>,
    /// An earlier child that must be this pipeline's before this one is applied.
    pub needs: Option<Need>,
}

impl Child {
    pub fn name(&self) -> &str {
        self.object.metadata.name.as_deref().unwrap_or_default()
    }
}

/// A child another one builds on: no pod starts on someone else's settings, no autoscaler scales
/// someone else's Deployment.
#[derive(Clone, Debug, PartialEq)]
pub struct Need {
    pub kind: String,
    pub name: String,
    /// What the dependent's condition says when that child is someone else's (`None`: the
    /// conflict of that child, reported in the same condition, says it all).
    pub otherwise: Option<String>,
}

/// What a part says that is no object: a provider that is missing, how pods are scraped.
#[derive(Clone, Debug, PartialEq)]
pub struct Note {
    pub part: ConditionType,
    pub text: String,
    /// Asked for but impossible on this cluster (the part fails with `ProviderMissing`).
    pub missing: bool,
}

/// Children and notes, in the order they are applied and reported.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Child(Box<Child>),
    Note(Note),
}

/// Every child of a pipeline, in dependency order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChildSet {
    pub items: Vec<Item>,
}

impl ChildSet {
    pub fn children(&self) -> impl Iterator<Item = &Child> {
        self.items.iter().filter_map(|item| match item {
            Item::Child(child) => Some(child.as_ref()),
            Item::Note(_) => None,
        })
    }

    /// Whether the set holds an object of this kind and name (what orphan deletion keeps).
    pub fn contains(&self, resource: &ApiResource, name: &str) -> bool {
        self.children().any(|c| same_kind(&c.resource, resource) && c.name() == name)
    }

    fn push(&mut self, child: Child) {
        self.items.push(Item::Child(Box::new(child)));
    }

    fn note(&mut self, part: ConditionType, text: impl Into<String>, missing: bool) {
        self.items.push(Item::Note(Note { part, text: text.into(), missing }));
    }
}

/// Same API group and kind (the version a store or the set uses does not matter).
pub fn same_kind(a: &ApiResource, b: &ApiResource) -> bool {
    a.group == b.group && a.kind == b.kind
}

/// What every builder reads.
struct Input<'a> {
    resolved: &'a Resolved,
    owner: &'a OwnerReference,
    cluster: &'a Cluster<'a>,
    scrape: Scrape,
}

/// One builder: the kinds its children may have (where the API server serves them), and the
/// children it adds to the set.
struct Builder {
    kinds: fn(&Discovered) -> Vec<ApiResource>,
    build: fn(&Input<'_>, &mut ChildSet),
}

/// Every builder, in dependency order. A new child kind is one entry here.
const BUILDERS: [Builder; 8] = [
    Builder { kinds: |_| vec![typed::<ConfigMap>()], build: settings },
    Builder { kinds: |_| vec![typed::<Service>()], build: services },
    Builder { kinds: |_| vec![typed::<Deployment>()], build: deployments },
    Builder { kinds: autoscaler_kinds, build: autoscalers },
    Builder {
        kinds: |s| s.service_monitor.then(monitoring::service_monitor_resource).into_iter().collect(),
        build: service_monitor,
    },
    Builder {
        kinds: |s| s.prometheus_rule.then(monitoring::prometheus_rule_resource).into_iter().collect(),
        build: prometheus_rule,
    },
    Builder { kinds: |_| Vec::new(), build: scrape_note },
    Builder { kinds: |_| vec![typed::<ConfigMap>()], build: dashboard },
];

/// Every child of the pipeline, in the order they are applied.
pub fn desired_children(resolved: &Resolved, owner: &OwnerReference, cluster: &Cluster<'_>) -> ChildSet {
    let input = Input { resolved, owner, cluster, scrape: scrape(resolved, &cluster.served) };
    let mut set = ChildSet::default();
    for builder in &BUILDERS {
        (builder.build)(&input, &mut set);
    }
    set
}

/// The kinds a pipeline's children may have on this cluster, each once, in apply order: where
/// orphans are looked for.
pub fn kinds(served: &Discovered) -> Vec<ApiResource> {
    let mut kinds: Vec<ApiResource> = Vec::new();
    for resource in BUILDERS.iter().flat_map(|b| (b.kinds)(served)) {
        if !kinds.iter().any(|k| same_kind(k, &resource)) {
            kinds.push(resource);
        }
    }
    kinds
}

/// Every name a child of pipeline `pipeline` may have, whatever its kind: where the reconciler
/// looks for orphans in its stores (by name: a walk of every object would cost each reconcile the
/// size of the fleet). A builder naming a child otherwise adds the name here (the test of every
/// set checks it); a child renamed keeps its old name here, so the old object is still found.
pub fn child_names(pipeline: &str) -> Vec<String> {
    let workloads = Component::ALL.map(|c| workloads::workload_name(pipeline, c));
    let others = [
        workloads::config_map_name(pipeline),
        monitoring::monitoring_name(pipeline),
        monitoring::dashboard_name(pipeline),
    ];
    workloads.into_iter().chain(others).collect()
}

/// How Prometheus finds the pods: by the ServiceMonitor where there is one, else by annotations.
pub fn scrape(resolved: &Resolved, served: &Discovered) -> Scrape {
    if served.service_monitor && resolved.monitoring.service_monitor {
        Scrape::ByServiceMonitor
    } else {
        Scrape::ByAnnotations
    }
}

fn typed<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// A typed object as the set holds it.
fn erase<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> (ApiResource, DynamicObject) {
    let json = serde_json::to_value(object).expect("a Kubernetes object serializes");
    (typed::<K>(), serde_json::from_value(json).expect("a Kubernetes object is a DynamicObject"))
}

fn child(part: ConditionType, (resource, object): (ApiResource, DynamicObject)) -> Child {
    Child { part, resource, object, note: None, needs: None }
}

/// Pods read their settings from it: the workloads need it to be the pipeline's.
fn needs_settings(resolved: &Resolved) -> Option<Need> {
    let name = workloads::config_map_name(&resolved.name);
    Some(Need { kind: "ConfigMap".into(), name, otherwise: None })
}

fn settings(input: &Input<'_>, set: &mut ChildSet) {
    let config_map = workloads::config_map(input.resolved, input.owner);
    set.push(child(ConditionType::WorkloadsAvailable, erase(&config_map)));
}

fn services(input: &Input<'_>, set: &mut ChildSet) {
    for workload in input.resolved.workloads.iter().filter(|w| w.enabled) {
        let service = workloads::service(input.resolved, workload.component, input.owner);
        let needs = needs_settings(input.resolved);
        set.push(Child { needs, ..child(ConditionType::WorkloadsAvailable, erase(&service)) });
    }
}

fn deployments(input: &Input<'_>, set: &mut ChildSet) {
    for workload in input.resolved.workloads.iter().filter(|w| w.enabled) {
        let deployment = workloads::deployment(input.resolved, workload, input.owner, input.scrape);
        let needs = needs_settings(input.resolved);
        set.push(Child { needs, ..child(ConditionType::WorkloadsAvailable, erase(&deployment)) });
    }
}

fn autoscaler_kinds(served: &Discovered) -> Vec<ApiResource> {
    let hpa = served.autoscaling.hpa.map(|v| v.api_resource());
    hpa.into_iter().chain(served.autoscaling.keda.then(autoscaling::scaled_object_resource)).collect()
}

/// One HPA or ScaledObject per autoscaled workload, each after its Deployment; a provider the
/// cluster lacks is a note.
fn autoscalers(input: &Input<'_>, set: &mut ChildSet) {
    let Input { resolved, owner, cluster, .. } = input;
    let part = ConditionType::AutoscalingReady;
    for workload in &resolved.workloads {
        let component = workload.component.as_str();
        let (resource, object, provider) =
            match autoscaling::plan(resolved, workload, cluster.served.autoscaling, cluster.prometheus_url, owner) {
                Plan::None => continue,
                Plan::Unavailable(why) => {
                    set.note(part, why, true);
                    continue;
                }
                Plan::Hpa(hpa) => {
                    let version = cluster.served.autoscaling.hpa.expect("planned with an HPA version");
                    (version.api_resource(), hpa, "HPA")
                }
                Plan::ScaledObject(object) => (autoscaling::scaled_object_resource(), object, "KEDA"),
            };
        let target = workloads::workload_name(&resolved.name, workload.component);
        let otherwise = format!("{component} not autoscaled: Deployment {target} is not controlled by this pipeline");
        set.push(Child {
            part,
            resource,
            object: *object,
            note: Some(format!("{component} ({provider})")),
            needs: Some(Need { kind: "Deployment".into(), name: target, otherwise: Some(otherwise) }),
        });
    }
}

/// A prometheus-operator object where its CRD is served and the spec asks for it.
fn prometheus_operator_object(
    input: &Input<'_>,
    set: &mut ChildSet,
    (served, asked, what): (bool, bool, &str),
    (resource, build): (ApiResource, fn(&Resolved, &OwnerReference) -> DynamicObject),
) {
    let part = ConditionType::MonitoringReady;
    match (served, asked) {
        (_, false) => {}
        (false, true) => set.note(part, format!("no {what} CRD (prometheus-operator not installed)"), false),
        (true, true) => {
            let object = build(input.resolved, input.owner);
            let note = Some(format!("{what} {}", monitoring::monitoring_name(&input.resolved.name)));
            set.push(Child { part, resource, object, note, needs: None });
        }
    }
}

fn service_monitor(input: &Input<'_>, set: &mut ChildSet) {
    let asked = (input.cluster.served.service_monitor, input.resolved.monitoring.service_monitor, "ServiceMonitor");
    prometheus_operator_object(
        input,
        set,
        asked,
        (monitoring::service_monitor_resource(), monitoring::service_monitor),
    );
}

fn prometheus_rule(input: &Input<'_>, set: &mut ChildSet) {
    let asked = (input.cluster.served.prometheus_rule, input.resolved.monitoring.alert_rules, "PrometheusRule");
    prometheus_operator_object(
        input,
        set,
        asked,
        (monitoring::prometheus_rule_resource(), monitoring::prometheus_rule),
    );
}

fn scrape_note(input: &Input<'_>, set: &mut ChildSet) {
    if input.scrape == Scrape::ByAnnotations {
        set.note(ConditionType::MonitoringReady, "pods carry prometheus.io/* scrape annotations", false);
    }
}

fn dashboard(input: &Input<'_>, set: &mut ChildSet) {
    if input.resolved.monitoring.dashboards {
        let config_map = monitoring::pipeline_dashboard(input.resolved, input.owner, input.cluster.dashboards);
        let note = Some(format!("dashboard ConfigMap {}", monitoring::dashboard_name(&input.resolved.name)));
        set.push(Child { note, ..child(ConditionType::MonitoringReady, erase(&config_map)) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{AutoscalingProvider, AutoscalingSpec, FlightPipelineSpec};
    use crate::desired::autoscaling::HpaVersion;
    use crate::desired::labels;
    use crate::spec::fixtures::{owner, resolved};

    const EVERYTHING: Discovered = Discovered {
        autoscaling: Offers { hpa: Some(HpaVersion::V2), keda: true },
        service_monitor: true,
        prometheus_rule: true,
    };

    fn set_of(spec: &FlightPipelineSpec, served: Discovered) -> ChildSet {
        let dashboards = DashboardSettings::default();
        let cluster = Cluster { served, prometheus_url: Some("http://prometheus:9090"), dashboards: &dashboards };
        desired_children(&resolved(spec), &owner(), &cluster)
    }

    /// `Kind/name` of every child, in order.
    fn names(set: &ChildSet) -> Vec<String> {
        set.children().map(|c| format!("{}/{}", c.resource.kind, c.name())).collect()
    }

    fn notes(set: &ChildSet) -> Vec<(ConditionType, String, bool)> {
        let notes = set.items.iter().filter_map(|i| match i {
            Item::Note(n) => Some((n.part, n.text.clone(), n.missing)),
            Item::Child(_) => None,
        });
        notes.collect()
    }

    /// The example's shape: every component, predict autoscaled by an HPA, monitoring on.
    fn representative() -> FlightPipelineSpec {
        let mut spec = FlightPipelineSpec::default();
        spec.predict.workload.autoscaling = Some(AutoscalingSpec::default());
        spec
    }

    #[test]
    fn the_whole_child_set_of_a_representative_pipeline() {
        let set = set_of(&representative(), EVERYTHING);
        assert_eq!(
            names(&set),
            [
                "ConfigMap/scl-pipeline",
                "Service/scl-ingest",
                "Service/scl-sink",
                "Service/scl-query",
                "Service/scl-predict",
                "Deployment/scl-ingest",
                "Deployment/scl-sink",
                "Deployment/scl-query",
                "Deployment/scl-predict",
                "HorizontalPodAutoscaler/scl-predict",
                "ServiceMonitor/scl-flightline",
                "PrometheusRule/scl-flightline",
                "ConfigMap/scl-dashboard",
            ]
        );
        assert_eq!(notes(&set), []);
        let common = labels::common("scl", None);
        for child in set.children() {
            let what = format!("{}/{}", child.resource.kind, child.name());
            // Applied as the kind it says it is, in the pipeline's namespace.
            let types = child.object.types.as_ref().expect("apiVersion and kind");
            assert_eq!(
                (&types.api_version, &types.kind),
                (&child.resource.api_version, &child.resource.kind),
                "{what}"
            );
            assert_eq!(child.object.metadata.namespace.as_deref(), Some("air"), "{what}");
            // Found again by the pipeline's labels, and controlled by it alone.
            let labels = child.object.metadata.labels.as_ref().expect("labels");
            for (key, value) in &common {
                assert_eq!(labels.get(key), Some(value), "{what}: {key}");
            }
            assert_eq!(child.object.metadata.owner_references.as_deref(), Some(&[owner()][..]), "{what}");
            // Everything it needs comes before it.
            if let Some(need) = &child.needs {
                let position =
                    |kind: &str, name: &str| set.children().position(|c| c.resource.kind == kind && c.name() == name);
                let own = position(&child.resource.kind, child.name()).unwrap();
                let needed = position(&need.kind, &need.name).unwrap_or_else(|| panic!("{what} needs {need:?}"));
                assert!(needed < own, "{what}");
            }
            // Every kind in the set is one orphans are looked for.
            assert!(kinds(&EVERYTHING).iter().any(|k| k == &child.resource), "{what}");
        }
        // What each condition says of it once applied, and what a conflict on the Deployment says.
        let said: Vec<_> = set.children().filter_map(|c| Some((c.part, c.note.clone()?))).collect();
        assert_eq!(
            said,
            [
                (ConditionType::AutoscalingReady, "predict (HPA)".to_string()),
                (ConditionType::MonitoringReady, "ServiceMonitor scl-flightline".to_string()),
                (ConditionType::MonitoringReady, "PrometheusRule scl-flightline".to_string()),
                (ConditionType::MonitoringReady, "dashboard ConfigMap scl-dashboard".to_string()),
            ]
        );
        let hpa = set.children().find(|c| c.resource.kind == "HorizontalPodAutoscaler").unwrap();
        assert_eq!(
            hpa.needs.as_ref().unwrap().otherwise.as_deref(),
            Some("predict not autoscaled: Deployment scl-predict is not controlled by this pipeline")
        );
        // Scraped by the ServiceMonitor: no annotations on the pods.
        let predict = set.children().find(|c| c.resource.kind == "Deployment" && c.name() == "scl-predict").unwrap();
        assert!(
            predict.object.data["spec"]["template"]["metadata"]["annotations"].get("prometheus.io/scrape").is_none()
        );
    }

    /// Orphans are looked up by these names: a child named otherwise would never be deleted.
    #[test]
    fn every_child_of_every_shape_is_named_as_child_names_says() {
        let family = child_names("scl");
        assert_eq!(
            family,
            ["scl-ingest", "scl-sink", "scl-query", "scl-predict", "scl-pipeline", "scl-flightline", "scl-dashboard"]
        );
        let mut everything = representative();
        for provider in [AutoscalingProvider::Hpa, AutoscalingProvider::Keda] {
            let autoscaling = Some(AutoscalingSpec { provider, ..AutoscalingSpec::default() });
            everything.ingest.workload.autoscaling = autoscaling.clone();
            everything.sink.workload.autoscaling = autoscaling.clone();
            everything.query.workload.autoscaling = autoscaling.clone();
            everything.predict.workload.autoscaling = autoscaling;
            let set = set_of(&everything, EVERYTHING);
            assert_eq!(set.children().count(), 16, "{provider:?}: {:?}", names(&set));
            for child in set.children() {
                assert!(family.iter().any(|n| n == child.name()), "{}/{}", child.resource.kind, child.name());
            }
        }
    }

    #[test]
    fn kinds_are_each_served_kind_once_in_apply_order() {
        let kinds_of = |served| kinds(&served).into_iter().map(|k| k.kind).collect::<Vec<_>>();
        assert_eq!(
            kinds_of(EVERYTHING),
            [
                "ConfigMap",
                "Service",
                "Deployment",
                "HorizontalPodAutoscaler",
                "ScaledObject",
                "ServiceMonitor",
                "PrometheusRule"
            ]
        );
        assert_eq!(kinds_of(Discovered::default()), ["ConfigMap", "Service", "Deployment"]);
    }

    /// Cases of the spec and the cluster, each with the children and notes that differ from the
    /// representative set.
    #[test]
    fn parts_switched_off_or_not_served_leave_the_set() {
        type Case = (&'static str, fn(&mut FlightPipelineSpec), Discovered, &'static [&'static str]);
        let keda = |spec: &mut FlightPipelineSpec| {
            spec.predict.workload.autoscaling =
                Some(AutoscalingSpec { provider: AutoscalingProvider::Keda, ..AutoscalingSpec::default() });
        };
        let cases: [Case; 6] = [
            (
                "predict disabled",
                |s| s.predict.workload.enabled = false,
                EVERYTHING,
                &["-Service/scl-predict", "-Deployment/scl-predict", "-HorizontalPodAutoscaler/scl-predict"],
            ),
            (
                "autoscaling off",
                |s| s.predict.workload.autoscaling = None,
                EVERYTHING,
                &["-HorizontalPodAutoscaler/scl-predict"],
            ),
            ("KEDA", keda, EVERYTHING, &["-HorizontalPodAutoscaler/scl-predict", "+ScaledObject/scl-predict"]),
            (
                "monitoring off",
                |s| {
                    s.monitoring.service_monitor = false;
                    s.monitoring.alert_rules = false;
                    s.monitoring.dashboards = false;
                },
                EVERYTHING,
                &["-ServiceMonitor/scl-flightline", "-PrometheusRule/scl-flightline", "-ConfigMap/scl-dashboard"],
            ),
            (
                "no prometheus-operator",
                |_| {},
                Discovered { service_monitor: false, prometheus_rule: false, ..EVERYTHING },
                &["-ServiceMonitor/scl-flightline", "-PrometheusRule/scl-flightline"],
            ),
            (
                "no HPA API",
                |_| {},
                Discovered { autoscaling: Offers { hpa: None, keda: true }, ..EVERYTHING },
                &["-HorizontalPodAutoscaler/scl-predict"],
            ),
        ];
        let everything = names(&set_of(&representative(), EVERYTHING));
        for (case, change, served, diff) in cases {
            let mut spec = representative();
            change(&mut spec);
            let got = names(&set_of(&spec, served));
            let mut want: Vec<String> = everything.clone();
            for entry in diff {
                let (sign, name) = entry.split_at(1);
                match sign {
                    "-" => want.retain(|n| n != name),
                    _ => {
                        let after = want.iter().position(|n| n == "Deployment/scl-predict").unwrap();
                        want.insert(after + 1, name.to_string());
                    }
                }
            }
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn what_cannot_be_built_here_is_said_in_its_part() {
        let monitoring = ConditionType::MonitoringReady;
        let annotations = (monitoring, "pods carry prometheus.io/* scrape annotations".to_string(), false);
        let bare = Discovered { autoscaling: Offers::default(), service_monitor: false, prometheus_rule: false };
        assert_eq!(
            notes(&set_of(&representative(), bare)),
            [
                (
                    ConditionType::AutoscalingReady,
                    "predict: the API server serves neither autoscaling/v2 nor autoscaling/v2beta2".to_string(),
                    true
                ),
                (monitoring, "no ServiceMonitor CRD (prometheus-operator not installed)".to_string(), false),
                (monitoring, "no PrometheusRule CRD (prometheus-operator not installed)".to_string(), false),
                annotations.clone(),
            ]
        );
        // Not asked for: nothing said but how pods are scraped, and the pods carry the annotations.
        let mut spec = representative();
        spec.monitoring.service_monitor = false;
        spec.monitoring.alert_rules = false;
        let set = set_of(&spec, EVERYTHING);
        assert_eq!(notes(&set), [annotations]);
        let predict = set.children().find(|c| c.resource.kind == "Deployment" && c.name() == "scl-predict").unwrap();
        assert_eq!(predict.object.data["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    }
}

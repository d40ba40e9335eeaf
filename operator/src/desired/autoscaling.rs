//! Autoscalers for a pipeline's workloads: a HorizontalPodAutoscaler on the per-pod metric that
//! prometheus-adapter serves, or a KEDA `ScaledObject` with a Prometheus trigger. Pure.
//!
//! HTTP components scale on their request rate (health and metrics endpoints excluded), the sink
//! on its consumer lag, and never beyond the topic's partitions: one more consumer than partitions
//! would sit idle.

use kube::api::{ApiResource, DynamicObject};
use serde_json::json;

use crate::crd::{AutoscalingProvider, AutoscalingSpec};
use crate::desired::workloads::{metadata, workload_name};
use crate::spec::resolve::{Component, Resolved, Workload};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// The HPA API a server offers: `autoscaling/v2` from Kubernetes 1.23, `v2beta2` before (the
/// schema of the fields used here is the same in both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HpaVersion {
    V2,
    V2beta2,
}

impl HpaVersion {
    pub fn api_resource(self) -> ApiResource {
        let version = match self {
            HpaVersion::V2 => "v2",
            HpaVersion::V2beta2 => "v2beta2",
        };
        ApiResource {
            group: "autoscaling".into(),
            version: version.into(),
            api_version: format!("autoscaling/{version}"),
            kind: "HorizontalPodAutoscaler".into(),
            plural: "horizontalpodautoscalers".into(),
        }
    }
}

pub fn scaled_object_resource() -> ApiResource {
    ApiResource {
        group: "keda.sh".into(),
        version: "v1alpha1".into(),
        api_version: "keda.sh/v1alpha1".into(),
        kind: "ScaledObject".into(),
        plural: "scaledobjects".into(),
    }
}

/// The per-pod metric the HPA reads through the custom metrics API (see the prometheus-adapter
/// rules in `charts/prometheus-adapter-values.yaml`).
pub fn pod_metric_name(component: Component) -> String {
    match component {
        Component::Sink => "flightline_sink_consumer_lag".into(),
        c => format!("flightline_{}_http_requests_per_second", c.as_str()),
    }
}

/// The pipeline-wide PromQL a KEDA trigger compares with its threshold.
pub fn pipeline_query(resolved: &Resolved, component: Component) -> String {
    let scope = format!(r#"namespace="{}",pipeline="{}""#, resolved.namespace, resolved.name);
    match component {
        Component::Sink => format!("sum(flightline_sink_consumer_lag{{{scope}}})"),
        c => format!(
            r#"sum(rate(flightline_{}_http_requests_total{{{scope},route!~"/healthz|/readyz|/metrics"}}[2m]))"#,
            c.as_str()
        ),
    }
}

/// The target per pod: requests per second, or records of lag for the sink.
pub fn target(component: Component, a: &AutoscalingSpec) -> i64 {
    match component {
        Component::Sink => a.target_consumer_lag,
        _ => i64::from(a.target_requests_per_second),
    }
}

/// A whole number as the API server writes a quantity back (`5000` → `5k`), so that the live HPA
/// matches what the operator applies and an unchanged pipeline writes nothing.
pub fn quantity(n: i64) -> String {
    let mut mantissa = n;
    for suffix in ["", "k", "M", "G", "T", "P"] {
        if mantissa == 0 || mantissa % 1000 != 0 {
            return format!("{mantissa}{suffix}");
        }
        mantissa /= 1000;
    }
    format!("{mantissa}E")
}

/// `(min, max)` replicas; the sink's max is capped at the topic's partitions.
pub fn bounds(resolved: &Resolved, workload: &Workload, a: &AutoscalingSpec) -> (i32, i32) {
    let max = match workload.component {
        Component::Sink => a.max_replicas.min(resolved.topic.partitions),
        _ => a.max_replicas,
    };
    (a.min_replicas.min(max), max)
}

/// Both kinds of autoscaler are named after the workload they scale.
pub fn autoscaler_name(resolved: &Resolved, component: Component) -> String {
    workload_name(&resolved.name, component)
}

fn scale_target(resolved: &Resolved, component: Component) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": workload_name(&resolved.name, component)})
}

/// Kubernetes' own scale-down stabilisation window, used when the spec sets none.
pub const DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: i32 = 300;

/// The HPA's `behavior`: up fast (double, or +4 pods, per 30 s), down slowly (a fifth per minute
/// after `scaleDownStabilizationSeconds`, default 5 minutes, of lower load), so bursts are served
/// and a dip does not flap the pods.
pub fn behavior(a: &AutoscalingSpec) -> serde_json::Value {
    let window = a.scale_down_stabilization_seconds.unwrap_or(DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS);
    json!({
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 30},
                {"type": "Pods", "value": 4, "periodSeconds": 30},
            ],
        },
        "scaleDown": {
            "stabilizationWindowSeconds": window,
            "selectPolicy": "Max",
            "policies": [{"type": "Percent", "value": 20, "periodSeconds": 60}],
        },
    })
}

pub fn hpa(
    resolved: &Resolved,
    workload: &Workload,
    a: &AutoscalingSpec,
    version: HpaVersion,
    owner: &OwnerReference,
) -> DynamicObject {
    let (min, max) = bounds(resolved, workload, a);
    let mut hpa = DynamicObject::new(&autoscaler_name(resolved, workload.component), &version.api_resource());
    hpa.metadata = metadata(autoscaler_name(resolved, workload.component), resolved, Some(workload.component), owner);
    hpa.data = json!({
        "spec": {
            "scaleTargetRef": scale_target(resolved, workload.component),
            "minReplicas": min,
            "maxReplicas": max,
            "metrics": [{
                "type": "Pods",
                "pods": {
                    "metric": {"name": pod_metric_name(workload.component)},
                    "target": {"type": "AverageValue", "averageValue": quantity(target(workload.component, a))},
                },
            }],
            "behavior": behavior(a),
        }
    });
    hpa
}

pub fn scaled_object(
    resolved: &Resolved,
    workload: &Workload,
    a: &AutoscalingSpec,
    prometheus_url: &str,
    owner: &OwnerReference,
) -> DynamicObject {
    let (min, max) = bounds(resolved, workload, a);
    let name = autoscaler_name(resolved, workload.component);
    let mut object = DynamicObject::new(&name, &scaled_object_resource());
    object.metadata = metadata(name, resolved, Some(workload.component), owner);
    object.data = json!({
        "spec": {
            "scaleTargetRef": {"name": workload_name(&resolved.name, workload.component)},
            "minReplicaCount": min,
            "maxReplicaCount": max,
            "pollingInterval": 15,
            "cooldownPeriod": 300,
            // Prometheus unreachable: hold the minimum rather than scale on nothing.
            "fallback": {"failureThreshold": 3, "replicas": min},
            "triggers": [{
                "type": "prometheus",
                "metricType": "AverageValue",
                "metadata": {
                    "serverAddress": prometheus_url,
                    "query": pipeline_query(resolved, workload.component),
                    "threshold": target(workload.component, a).to_string(),
                },
            }],
        }
    });
    // The window of the HPA KEDA makes, only when asked for (KEDA's own default stays otherwise).
    if let Some(window) = a.scale_down_stabilization_seconds {
        object.data["spec"]["advanced"] = json!({
            "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": window}}}
        });
    }
    object
}

/// What the autoscaler of a workload should be, given what the cluster offers.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Fixed replicas: no autoscaler (an existing one is deleted).
    None,
    Hpa(Box<DynamicObject>),
    ScaledObject(Box<DynamicObject>),
    /// Asked for but impossible here; the message says why.
    Unavailable(String),
}

/// What the cluster serves, as discovery found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offers {
    pub hpa: Option<HpaVersion>,
    pub keda: bool,
}

pub fn plan(
    resolved: &Resolved,
    workload: &Workload,
    offers: Offers,
    prometheus_url: Option<&str>,
    owner: &OwnerReference,
) -> Plan {
    let Some(a) = workload.autoscaling.as_ref().filter(|_| workload.enabled) else {
        return Plan::None;
    };
    let component = workload.component.as_str();
    match a.provider {
        AutoscalingProvider::Hpa => match offers.hpa {
            Some(version) => Plan::Hpa(Box::new(hpa(resolved, workload, a, version, owner))),
            None => Plan::Unavailable(format!(
                "{component}: the API server serves neither autoscaling/v2 nor autoscaling/v2beta2"
            )),
        },
        AutoscalingProvider::Keda if !offers.keda => Plan::Unavailable(format!(
            "{component}: provider KEDA, but KEDA is not installed (no scaledobjects.keda.sh/v1alpha1)"
        )),
        AutoscalingProvider::Keda => match prometheus_url {
            Some(url) => Plan::ScaledObject(Box::new(scaled_object(resolved, workload, a, url, owner))),
            None => Plan::Unavailable(format!(
                "{component}: provider KEDA needs the operator's --prometheus-url for its trigger"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FlightPipelineSpec;
    use crate::spec::fixtures::{owner, resolved};

    fn autoscaled(provider: AutoscalingProvider) -> FlightPipelineSpec {
        let mut spec = FlightPipelineSpec::default();
        let a = AutoscalingSpec { provider, min_replicas: 2, max_replicas: 8, ..AutoscalingSpec::default() };
        spec.predict.workload.autoscaling = Some(a.clone());
        spec.sink.workload.autoscaling = Some(a);
        spec
    }

    #[test]
    fn hpa_targets_the_request_rate_per_pod() {
        let r = resolved(&autoscaled(AutoscalingProvider::Hpa));
        let offers = Offers { hpa: Some(HpaVersion::V2beta2), keda: false };
        let Plan::Hpa(hpa) = plan(&r, r.workload(Component::Predict), offers, None, &owner()) else {
            panic!("expected an HPA")
        };
        assert_eq!(hpa.types.as_ref().unwrap().api_version, "autoscaling/v2beta2");
        let spec = &hpa.data["spec"];
        assert_eq!(spec["scaleTargetRef"]["name"], "scl-predict");
        assert_eq!((spec["minReplicas"].as_i64(), spec["maxReplicas"].as_i64()), (Some(2), Some(8)));
        assert_eq!(spec["metrics"][0]["pods"]["metric"]["name"], "flightline_predict_http_requests_per_second");
        assert_eq!(spec["metrics"][0]["pods"]["target"]["averageValue"], "100");
    }

    #[test]
    fn scale_down_window_defaults_to_kubernetes_and_follows_the_spec() {
        let mut spec = autoscaled(AutoscalingProvider::Hpa);
        let offers = Offers { hpa: Some(HpaVersion::V2), keda: false };
        let window = |spec: &FlightPipelineSpec| {
            let r = resolved(spec);
            let Plan::Hpa(hpa) = plan(&r, r.workload(Component::Predict), offers, None, &owner()) else { panic!() };
            let behavior = &hpa.data["spec"]["behavior"];
            // Scaling up is never delayed, whatever the window down.
            assert_eq!(behavior["scaleUp"]["stabilizationWindowSeconds"], 0);
            behavior["scaleDown"]["stabilizationWindowSeconds"].as_i64()
        };
        assert_eq!(window(&spec), Some(300));
        spec.predict.workload.autoscaling.as_mut().unwrap().scale_down_stabilization_seconds = Some(15);
        assert_eq!(window(&spec), Some(15));
        spec.predict.workload.autoscaling.as_mut().unwrap().scale_down_stabilization_seconds = Some(0);
        assert_eq!(window(&spec), Some(0));
    }

    #[test]
    fn keda_gets_the_window_only_when_asked() {
        let mut spec = autoscaled(AutoscalingProvider::Keda);
        let keda = Offers { hpa: None, keda: true };
        let advanced = |spec: &FlightPipelineSpec| {
            let r = resolved(spec);
            let Plan::ScaledObject(so) = plan(&r, r.workload(Component::Sink), keda, Some("http://p:9090"), &owner())
            else {
                panic!()
            };
            so.data["spec"].get("advanced").cloned()
        };
        assert_eq!(advanced(&spec), None);
        spec.sink.workload.autoscaling.as_mut().unwrap().scale_down_stabilization_seconds = Some(30);
        let got = advanced(&spec).expect("advanced");
        assert_eq!(got["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 30);
    }

    #[test]
    fn quantities_are_canonical() {
        let cases = [(0, "0"), (50, "50"), (1500, "1500"), (5000, "5k"), (50_000, "50k"), (2_000_000, "2M")];
        for (n, want) in cases {
            assert_eq!(quantity(n), want);
        }
    }

    #[test]
    fn sink_never_scales_beyond_the_partitions() {
        let r = resolved(&autoscaled(AutoscalingProvider::Hpa));
        let offers = Offers { hpa: Some(HpaVersion::V2), keda: false };
        let Plan::Hpa(hpa) = plan(&r, r.workload(Component::Sink), offers, None, &owner()) else { panic!() };
        assert_eq!(hpa.types.as_ref().unwrap().api_version, "autoscaling/v2");
        assert_eq!(hpa.data["spec"]["maxReplicas"], 3);
        assert_eq!(hpa.data["spec"]["metrics"][0]["pods"]["metric"]["name"], "flightline_sink_consumer_lag");
    }

    #[test]
    fn keda_needs_keda_and_a_prometheus() {
        let r = resolved(&autoscaled(AutoscalingProvider::Keda));
        let predict = r.workload(Component::Predict);
        let none = Offers::default();
        assert!(
            matches!(plan(&r, predict, none, Some("http://p:9090"), &owner()), Plan::Unavailable(m) if m.contains("not installed"))
        );
        let keda = Offers { hpa: None, keda: true };
        assert!(
            matches!(plan(&r, predict, keda, None, &owner()), Plan::Unavailable(m) if m.contains("--prometheus-url"))
        );
        let Plan::ScaledObject(so) = plan(&r, predict, keda, Some("http://p:9090"), &owner()) else { panic!() };
        let trigger = &so.data["spec"]["triggers"][0];
        assert_eq!(trigger["metadata"]["serverAddress"], "http://p:9090");
        assert!(trigger["metadata"]["query"].as_str().unwrap().contains(r#"pipeline="scl""#));
        assert_eq!(so.data["spec"]["fallback"]["replicas"], 2);
    }

    #[test]
    fn fixed_replicas_and_disabled_components_have_no_autoscaler() {
        let r = resolved(&FlightPipelineSpec::default());
        let offers = Offers { hpa: Some(HpaVersion::V2), keda: true };
        assert_eq!(plan(&r, r.workload(Component::Query), offers, None, &owner()), Plan::None);
        let mut spec = autoscaled(AutoscalingProvider::Hpa);
        spec.predict.workload.enabled = false;
        let r = resolved(&spec);
        assert_eq!(plan(&r, r.workload(Component::Predict), offers, None, &owner()), Plan::None);
    }
}

//! Monitoring objects of a pipeline: the ServiceMonitor that has Prometheus scrape its pods, the
//! PrometheusRule with its SLO rules and alerts, and the ConfigMap that ships its Grafana
//! dashboard to Grafana's sidecar. Plus the fleet and operator dashboards. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{ApiResource, DynamicObject};
use serde_json::{Value, json};

use crate::desired::labels;
use crate::desired::slo;
use crate::desired::workloads::metadata;
use crate::spec::resolve::Resolved;

pub const PIPELINE_DASHBOARD: &str = include_str!("../../../grafana/flightline-pipeline.json");
pub const FLEET_DASHBOARD: &str = include_str!("../../../grafana/flightline-fleet.json");
pub const OPERATOR_DASHBOARD: &str = include_str!("../../../grafana/flightline-operator.json");

/// How dashboards are labelled and filed for Grafana's sidecar (the kube-prometheus-stack
/// defaults; both are operator flags).
#[derive(Clone, Debug, PartialEq)]
pub struct DashboardSettings {
    /// `key=value` label the sidecar watches for.
    pub label: (String, String),
    /// Annotation that names the folder.
    pub folder_annotation: String,
    /// Folder used when a pipeline names none.
    pub default_folder: String,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        Self {
            label: ("grafana_dashboard".into(), "1".into()),
            folder_annotation: "grafana_folder".into(),
            default_folder: "Flightline".into(),
        }
    }
}

pub fn service_monitor_resource() -> ApiResource {
    monitoring_resource("ServiceMonitor", "servicemonitors")
}

pub fn prometheus_rule_resource() -> ApiResource {
    monitoring_resource("PrometheusRule", "prometheusrules")
}

fn monitoring_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "monitoring.coreos.com".into(),
        version: "v1".into(),
        api_version: "monitoring.coreos.com/v1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Name of every monitoring object of a pipeline.
pub fn monitoring_name(pipeline: &str) -> String {
    format!("{pipeline}-flightline")
}

/// Scrapes every Service of the pipeline, with the target labels the rules and dashboards use:
/// `namespace`, `pod`, `pipeline` and `component`.
pub fn service_monitor(resolved: &Resolved, owner: &OwnerReference) -> DynamicObject {
    let name = monitoring_name(&resolved.name);
    let mut object = DynamicObject::new(&name, &service_monitor_resource());
    object.metadata = metadata(name, resolved, None, owner);
    let relabel = |label: &str, target: &str| {
        json!({
            "sourceLabels": [format!("__meta_kubernetes_pod_label_{}", label.replace(['.', '/', '-'], "_"))],
            "targetLabel": target,
            "action": "replace",
        })
    };
    object.data = json!({
        "spec": {
            "selector": {"matchLabels": {
                labels::NAME: "flightline",
                labels::INSTANCE: resolved.name,
            }},
            "endpoints": [{
                "port": "http",
                "path": "/metrics",
                "interval": "15s",
                "relabelings": [relabel(labels::INSTANCE, "pipeline"), relabel(labels::COMPONENT, "component")],
            }],
        }
    });
    object
}

pub fn prometheus_rule(resolved: &Resolved, owner: &OwnerReference) -> DynamicObject {
    let name = monitoring_name(&resolved.name);
    let mut object = DynamicObject::new(&name, &prometheus_rule_resource());
    object.metadata = metadata(name, resolved, None, owner);
    object.data = json!({ "spec": slo::rules(resolved) });
    object
}

/// The pipeline's dashboard: the shared one with its own uid and title, and the namespace and
/// pipeline variables preset to this pipeline.
pub fn pipeline_dashboard(resolved: &Resolved, owner: &OwnerReference, settings: &DashboardSettings) -> ConfigMap {
    let mut dashboard: Value =
        serde_json::from_str(PIPELINE_DASHBOARD).expect("grafana/flightline-pipeline.json is JSON");
    let uid = format!("fl-{:016x}", fnv1a(&format!("{}/{}", resolved.namespace, resolved.name)));
    dashboard["uid"] = json!(uid);
    dashboard["title"] = json!(format!("Flightline / {} / {}", resolved.namespace, resolved.name));
    if let Some(variables) = dashboard["templating"]["list"].as_array_mut() {
        for variable in variables {
            let value = match variable["name"].as_str() {
                Some("namespace") => &resolved.namespace,
                Some("pipeline") => &resolved.name,
                _ => continue,
            };
            variable["current"] = json!({"selected": true, "text": value, "value": value});
        }
    }
    let folder = if resolved.monitoring.grafana_folder.is_empty() {
        settings.default_folder.clone()
    } else {
        resolved.monitoring.grafana_folder.clone()
    };
    let mut meta = metadata(dashboard_name(&resolved.name), resolved, None, owner);
    dashboard_meta(&mut meta, settings, &folder);
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(
            format!("flightline-{}-{}.json", resolved.namespace, resolved.name),
            // Compact: 54 KB rather than 89 KB pretty-printed. Every pipeline has one, the API server
            // parses each apply of it as YAML, and etcd and every ConfigMap watcher hold a copy.
            serde_json::to_string(&dashboard).expect("JSON serializes"),
        )])),
        ..ConfigMap::default()
    }
}

pub fn dashboard_name(pipeline: &str) -> String {
    format!("{pipeline}-dashboard")
}

/// The fleet and operator dashboards, shipped once beside the operator.
pub fn operator_dashboards(namespace: &str, settings: &DashboardSettings) -> Vec<ConfigMap> {
    [("flightline-fleet", FLEET_DASHBOARD), ("flightline-operator", OPERATOR_DASHBOARD)]
        .into_iter()
        .map(|(name, json)| {
            let mut meta = ObjectMeta {
                name: Some(format!("{name}-dashboard")),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([
                    (labels::NAME.to_string(), "flightline".to_string()),
                    (labels::PART_OF.to_string(), "flightline".to_string()),
                    (labels::MANAGED_BY.to_string(), labels::MANAGER.to_string()),
                ])),
                ..ObjectMeta::default()
            };
            dashboard_meta(&mut meta, settings, &settings.default_folder);
            ConfigMap {
                metadata: meta,
                data: Some(BTreeMap::from([(format!("{name}.json"), json.to_string())])),
                ..ConfigMap::default()
            }
        })
        .collect()
}

fn dashboard_meta(meta: &mut ObjectMeta, settings: &DashboardSettings, folder: &str) {
    meta.labels.get_or_insert_with(BTreeMap::new).insert(settings.label.0.clone(), settings.label.1.clone());
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(settings.folder_annotation.clone(), folder.to_string());
}

/// FNV-1a: a dashboard uid must be stable across releases and at most 40 characters.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FlightPipelineSpec;
    use crate::spec::fixtures::{owner, resolved};

    #[test]
    fn dashboard_config_map_is_labelled_for_the_sidecar_and_preset_to_the_pipeline() {
        let mut spec = FlightPipelineSpec::default();
        spec.monitoring.grafana_folder = "Airports".into();
        let cm = pipeline_dashboard(&resolved(&spec), &owner(), &DashboardSettings::default());
        assert_eq!(cm.metadata.labels.as_ref().unwrap()["grafana_dashboard"], "1");
        assert_eq!(cm.metadata.annotations.as_ref().unwrap()["grafana_folder"], "Airports");
        assert_eq!(cm.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        let json: Value = serde_json::from_str(&cm.data.unwrap()["flightline-air-scl.json"]).unwrap();
        let uid = json["uid"].as_str().unwrap();
        assert!(uid.len() <= 40 && uid.starts_with("fl-"));
        let vars = json["templating"]["list"].as_array().unwrap();
        let pipeline = vars.iter().find(|v| v["name"] == "pipeline").expect("a pipeline variable");
        assert_eq!(pipeline["current"]["value"], "scl");
        let ds = vars.iter().find(|v| v["name"] == "datasource").expect("a datasource variable");
        assert_eq!(ds["type"], "datasource");
    }

    #[test]
    fn service_monitor_selects_the_pipeline_and_labels_its_targets() {
        let sm = service_monitor(&resolved(&FlightPipelineSpec::default()), &owner());
        assert_eq!(sm.data["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"], "scl");
        let relabelings = &sm.data["spec"]["endpoints"][0]["relabelings"];
        assert_eq!(relabelings[0]["sourceLabels"][0], "__meta_kubernetes_pod_label_app_kubernetes_io_instance");
        assert_eq!(relabelings[1]["targetLabel"], "component");
    }

    #[test]
    fn operator_dashboards_are_valid_json_with_stable_uids() {
        let cms = operator_dashboards("flightline-system", &DashboardSettings::default());
        let uids: Vec<String> = cms
            .iter()
            .map(|cm| {
                let json: Value = serde_json::from_str(cm.data.as_ref().unwrap().values().next().unwrap()).unwrap();
                json["uid"].as_str().unwrap().to_string()
            })
            .collect();
        assert_eq!(uids, ["flightline-fleet", "flightline-operator"]);
    }
}

//! What the API server offers beyond the built-in workload APIs: which HPA version, and whether
//! the prometheus-operator and KEDA CRDs are installed. Asked on every reconcile (two or three
//! cheap reads), so installing a CRD later is picked up without restarting the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIGroupList;
use kube::Client;

use crate::build::autoscaling::{HpaVersion, Offers};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    pub autoscaling: Offers,
    pub service_monitor: bool,
    pub prometheus_rule: bool,
}

pub async fn discover(client: &Client) -> Result<Discovered, kube::Error> {
    let groups = client.list_api_groups().await?;
    let serves = |group: &str, version: &str| serves(&groups, group, version);
    let hpa = if serves("autoscaling", "v2") {
        Some(HpaVersion::V2)
    } else if serves("autoscaling", "v2beta2") {
        Some(HpaVersion::V2beta2)
    } else {
        None
    };
    let kinds = |group_version: &'static str, present: bool| {
        let client = client.clone();
        async move {
            if !present {
                return Ok::<_, kube::Error>(Vec::new());
            }
            let list = client.list_api_group_resources(group_version).await?;
            Ok(list.resources.into_iter().map(|r| r.kind).collect::<Vec<_>>())
        }
    };
    let keda = kinds("keda.sh/v1alpha1", serves("keda.sh", "v1alpha1")).await?;
    let monitoring = kinds("monitoring.coreos.com/v1", serves("monitoring.coreos.com", "v1")).await?;
    Ok(Discovered {
        autoscaling: Offers { hpa, keda: keda.iter().any(|k| k == "ScaledObject") },
        service_monitor: monitoring.iter().any(|k| k == "ServiceMonitor"),
        prometheus_rule: monitoring.iter().any(|k| k == "PrometheusRule"),
    })
}

fn serves(groups: &APIGroupList, group: &str, version: &str) -> bool {
    groups.groups.iter().any(|g| g.name == group && g.versions.iter().any(|v| v.version == version))
}

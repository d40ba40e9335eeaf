//! The pipeline's Kubernetes children, in dependency order: settings ConfigMap, Services and
//! Deployments; then their autoscalers; then the monitoring objects. Each step deletes what a
//! switched-off part left behind (only objects this pipeline controls).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject};

use super::discovery::Discovered;
use super::{Context, Error, kubernetes};
use crate::build::autoscaling::{self, Offers, Plan};
use crate::build::conditions::{self, Finding, reason};
use crate::build::monitoring;
use crate::build::resolve::{Component, Resolved};
use crate::build::workloads::{self, Scrape};

pub async fn apply_workloads(
    resolved: &Resolved,
    owner: &OwnerReference,
    ctx: &Context,
    scrape: Scrape,
) -> Result<(Finding, BTreeMap<String, String>, BTreeMap<String, i32>), Error> {
    let ns = &resolved.namespace;
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);

    kubernetes::apply(&config_maps, &workloads::config_map(resolved, owner)).await?;
    let mut endpoints = BTreeMap::new();
    let mut replicas = BTreeMap::new();
    let mut waiting = Vec::new();
    for workload in &resolved.workloads {
        let name = workloads::workload_name(&resolved.name, workload.component);
        if !workload.enabled {
            kubernetes::delete_owned(&deployments, &name, &owner.uid).await?;
            kubernetes::delete_owned(&services, &name, &owner.uid).await?;
            continue;
        }
        kubernetes::apply(&services, &workloads::service(resolved, workload.component, owner)).await?;
        kubernetes::apply(&deployments, &workloads::deployment(resolved, workload, owner, scrape)).await?;
        if workload.component != Component::Sink {
            endpoints
                .insert(workload.component.as_str().to_string(), workloads::endpoint(resolved, workload.component));
        }
        let (available, wanted) = kubernetes::availability(&deployments, &name).await?;
        replicas.insert(workload.component.as_str().to_string(), available);
        if available < wanted {
            waiting.push(format!("{} {available}/{wanted}", workload.component.as_str()));
        }
    }
    let finding = if waiting.is_empty() {
        Finding::ok(conditions::WORKLOADS_AVAILABLE, reason::AVAILABLE, "every enabled workload is available")
    } else {
        Finding::failed(
            conditions::WORKLOADS_AVAILABLE,
            reason::PROGRESSING,
            format!("waiting for available replicas: {}", waiting.join(", ")),
        )
    };
    Ok((finding, endpoints, replicas))
}

/// One HPA or ScaledObject per autoscaled workload; the other kind, and autoscalers of workloads
/// back on fixed replicas, are deleted.
pub async fn apply_autoscalers(
    resolved: &Resolved,
    owner: &OwnerReference,
    ctx: &Context,
    offers: Offers,
) -> Result<Finding, Error> {
    let api = |resource: &ApiResource| -> Api<DynamicObject> {
        Api::namespaced_with(ctx.client.clone(), &resolved.namespace, resource)
    };
    let hpas = offers.hpa.map(|v| api(&v.api_resource()));
    let scaled_objects = offers.keda.then(|| api(&autoscaling::scaled_object_resource()));
    let mut applied = Vec::new();
    let mut missing = Vec::new();
    for workload in &resolved.workloads {
        let name = autoscaling::autoscaler_name(resolved, workload.component);
        let plan = autoscaling::plan(resolved, workload, offers, ctx.prometheus_url.as_deref(), owner);
        let (keep_hpa, keep_scaled_object) = match &plan {
            Plan::Hpa(hpa) => {
                kubernetes::apply(hpas.as_ref().expect("planned with an HPA version"), hpa.as_ref()).await?;
                applied.push(format!("{} (HPA)", workload.component.as_str()));
                (true, false)
            }
            Plan::ScaledObject(object) => {
                kubernetes::apply(scaled_objects.as_ref().expect("planned with KEDA"), object.as_ref()).await?;
                applied.push(format!("{} (KEDA)", workload.component.as_str()));
                (false, true)
            }
            Plan::Unavailable(why) => {
                missing.push(why.clone());
                (false, false)
            }
            Plan::None => (false, false),
        };
        if let (false, Some(hpas)) = (keep_hpa, &hpas) {
            kubernetes::delete_owned(hpas, &name, &owner.uid).await?;
        }
        if let (false, Some(scaled_objects)) = (keep_scaled_object, &scaled_objects) {
            kubernetes::delete_owned(scaled_objects, &name, &owner.uid).await?;
        }
    }
    Ok(if !missing.is_empty() {
        Finding::failed(conditions::AUTOSCALING_READY, reason::PROVIDER_MISSING, missing.join("; "))
    } else if applied.is_empty() {
        Finding::ok(conditions::AUTOSCALING_READY, reason::FIXED_REPLICAS, "every workload runs fixed replicas")
    } else {
        Finding::ok(
            conditions::AUTOSCALING_READY,
            reason::AUTOSCALERS_APPLIED,
            format!("autoscaled: {}", applied.join(", ")),
        )
    })
}

/// The ServiceMonitor and PrometheusRule (where their CRDs are installed) and the dashboard
/// ConfigMap, each as `spec.monitoring` asks.
pub async fn apply_monitoring(
    resolved: &Resolved,
    owner: &OwnerReference,
    ctx: &Context,
    discovered: Discovered,
) -> Result<Finding, Error> {
    let ns = &resolved.namespace;
    let wanted = &resolved.monitoring;
    let name = monitoring::monitoring_name(&resolved.name);
    let mut notes = Vec::new();
    for (present, asked, resource, object, what) in [
        (
            discovered.service_monitor,
            wanted.service_monitor,
            monitoring::service_monitor_resource(),
            monitoring::service_monitor as fn(&Resolved, &OwnerReference) -> DynamicObject,
            "ServiceMonitor",
        ),
        (
            discovered.prometheus_rule,
            wanted.alert_rules,
            monitoring::prometheus_rule_resource(),
            monitoring::prometheus_rule,
            "PrometheusRule",
        ),
    ] {
        if !present {
            if asked {
                notes.push(format!("no {what} CRD (prometheus-operator not installed)"));
            }
            continue;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &resource);
        if asked {
            kubernetes::apply(&api, &object(resolved, owner)).await?;
            notes.push(format!("{what} {name}"));
        } else {
            kubernetes::delete_owned(&api, &name, &owner.uid).await?;
        }
    }
    if !discovered.service_monitor || !wanted.service_monitor {
        notes.push("pods carry prometheus.io/* scrape annotations".into());
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let dashboard = monitoring::dashboard_name(&resolved.name);
    if wanted.dashboards {
        kubernetes::apply(&config_maps, &monitoring::pipeline_dashboard(resolved, owner, &ctx.dashboards)).await?;
        notes.push(format!("dashboard ConfigMap {dashboard}"));
    } else {
        kubernetes::delete_owned(&config_maps, &dashboard, &owner.uid).await?;
    }
    Ok(Finding::ok(conditions::MONITORING_READY, reason::MONITORING_APPLIED, notes.join("; ")))
}

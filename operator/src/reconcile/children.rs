//! The pipeline's Kubernetes children, in dependency order: settings ConfigMap, Services and
//! Deployments; then their autoscalers; then the monitoring objects. Each step deletes what a
//! switched-off part left behind (only objects this pipeline controls). An object of a child's name
//! that this pipeline does not control is left alone and reported as `ResourceConflict`.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use kube::api::{Api, ApiResource, DynamicObject};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::discovery::Discovered;
use super::kubernetes::{Applied, Cached};
use super::{Context, Error, kubernetes};
use crate::conditions::{ConditionType, Finding, reason};
use crate::desired::autoscaling::{self, Offers, Plan};
use crate::desired::monitoring;
use crate::desired::workloads::{self, Scrape};
use crate::spec::resolve::{Component, Resolved};

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

    let mut conflicts = Vec::new();
    let mut endpoints = BTreeMap::new();
    let mut replicas = BTreeMap::new();
    // Pods read their settings from this ConfigMap: with someone else's, none may start.
    let stores = &ctx.children;
    if !apply_child(
        &config_maps,
        Cached::typed(&stores.config_maps),
        &workloads::config_map(resolved, owner),
        &mut conflicts,
    )
    .await?
    {
        return Ok((conflict(ConditionType::WorkloadsAvailable, &conflicts), endpoints, replicas));
    }
    let mut waiting = Vec::new();
    for workload in &resolved.workloads {
        let name = workloads::workload_name(&resolved.name, workload.component);
        if !workload.enabled {
            kubernetes::delete_owned_cached(&deployments, Cached::typed(&stores.deployments), ns, &name, &owner.uid)
                .await?;
            kubernetes::delete_owned_cached(&services, Cached::typed(&stores.services), ns, &name, &owner.uid).await?;
            continue;
        }
        let service = workloads::service(resolved, workload.component, owner);
        let service_ours = apply_child(&services, Cached::typed(&stores.services), &service, &mut conflicts).await?;
        let deployment = workloads::deployment(resolved, workload, owner, scrape);
        if !apply_child(&deployments, Cached::typed(&stores.deployments), &deployment, &mut conflicts).await? {
            continue;
        }
        if workload.component != Component::Sink && service_ours {
            endpoints
                .insert(workload.component.as_str().to_string(), workloads::endpoint(resolved, workload.component));
        }
        let (available, wanted) = kubernetes::availability_cached(&deployments, &stores.deployments, ns, &name).await?;
        replicas.insert(workload.component.as_str().to_string(), available);
        if available < wanted {
            waiting.push(format!("{} {available}/{wanted}", workload.component.as_str()));
        }
    }
    let finding = if !conflicts.is_empty() {
        conflict(ConditionType::WorkloadsAvailable, &conflicts)
    } else if waiting.is_empty() {
        Finding::ok(ConditionType::WorkloadsAvailable, reason::AVAILABLE, "every enabled workload is available")
    } else {
        Finding::failed(
            ConditionType::WorkloadsAvailable,
            reason::PROGRESSING,
            format!("waiting for available replicas: {}", waiting.join(", ")),
        )
    };
    Ok((finding, endpoints, replicas))
}

/// Applies one child; an object of its name that the pipeline does not control is left alone and
/// noted in `conflicts`. Returns whether the child is the pipeline's. With a store of its kind,
/// an unchanged child costs no request.
async fn apply_child<K>(
    api: &Api<K>,
    cache: Option<Cached<'_, K>>,
    desired: &K,
    conflicts: &mut Vec<String>,
) -> Result<bool, Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    match kubernetes::apply_cached(api, cache, desired).await? {
        Applied::NotOurs(whose) => {
            conflicts.push(whose);
            Ok(false)
        }
        Applied::Unchanged | Applied::Written => Ok(true),
    }
}

fn conflict(type_: ConditionType, conflicts: &[String]) -> Finding {
    Finding::failed(type_, reason::RESOURCE_CONFLICT, conflicts.join("; "))
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
    let hpa_resource = offers.hpa.map(|v| v.api_resource());
    let scaled_object_resource = autoscaling::scaled_object_resource();
    let hpas = hpa_resource.as_ref().map(api);
    let scaled_objects = offers.keda.then(|| api(&scaled_object_resource));
    let hpa_cache = || hpa_resource.as_ref().and_then(|r| ctx.children.dynamic(r));
    let scaled_object_cache = || ctx.children.dynamic(&scaled_object_resource);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &resolved.namespace);
    let mut applied = Vec::new();
    let mut missing = Vec::new();
    let mut conflicts = Vec::new();
    for workload in &resolved.workloads {
        let name = autoscaling::autoscaler_name(resolved, workload.component);
        let plan = autoscaling::plan(resolved, workload, offers, ctx.prometheus_url.as_deref(), owner);
        let target = workloads::workload_name(&resolved.name, workload.component);
        // Never scale a Deployment of the same name that is someone else's.
        let target_not_ours = matches!(plan, Plan::Hpa(_) | Plan::ScaledObject(_))
            && !kubernetes::is_ours_or_absent_cached(
                &deployments,
                Cached::typed(&ctx.children.deployments),
                &resolved.namespace,
                &target,
                &owner.uid,
            )
            .await?;
        if target_not_ours {
            conflicts.push(format!(
                "{} not autoscaled: Deployment {target} is not controlled by this pipeline",
                workload.component.as_str()
            ));
            continue;
        }
        let (keep_hpa, keep_scaled_object) = match &plan {
            Plan::Hpa(hpa) => {
                let hpas = hpas.as_ref().expect("planned with an HPA version");
                if apply_child(hpas, hpa_cache(), hpa.as_ref(), &mut conflicts).await? {
                    applied.push(format!("{} (HPA)", workload.component.as_str()));
                }
                (true, false)
            }
            Plan::ScaledObject(object) => {
                let scaled_objects = scaled_objects.as_ref().expect("planned with KEDA");
                if apply_child(scaled_objects, scaled_object_cache(), object.as_ref(), &mut conflicts).await? {
                    applied.push(format!("{} (KEDA)", workload.component.as_str()));
                }
                (false, true)
            }
            Plan::Unavailable(why) => {
                missing.push(why.clone());
                (false, false)
            }
            Plan::None => (false, false),
        };
        if let (false, Some(hpas)) = (keep_hpa, &hpas) {
            kubernetes::delete_owned_cached(hpas, hpa_cache(), &resolved.namespace, &name, &owner.uid).await?;
        }
        if let (false, Some(scaled_objects)) = (keep_scaled_object, &scaled_objects) {
            kubernetes::delete_owned_cached(
                scaled_objects,
                scaled_object_cache(),
                &resolved.namespace,
                &name,
                &owner.uid,
            )
            .await?;
        }
    }
    Ok(if !conflicts.is_empty() {
        conflict(ConditionType::AutoscalingReady, &conflicts)
    } else if !missing.is_empty() {
        Finding::failed(ConditionType::AutoscalingReady, reason::PROVIDER_MISSING, missing.join("; "))
    } else if applied.is_empty() {
        Finding::ok(ConditionType::AutoscalingReady, reason::FIXED_REPLICAS, "every workload runs fixed replicas")
    } else {
        Finding::ok(
            ConditionType::AutoscalingReady,
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
    let mut conflicts = Vec::new();
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
            if apply_child(&api, ctx.children.dynamic(&resource), &object(resolved, owner), &mut conflicts).await? {
                notes.push(format!("{what} {name}"));
            }
        } else {
            kubernetes::delete_owned_cached(&api, ctx.children.dynamic(&resource), ns, &name, &owner.uid).await?;
        }
    }
    if !discovered.service_monitor || !wanted.service_monitor {
        notes.push("pods carry prometheus.io/* scrape annotations".into());
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    let dashboard = monitoring::dashboard_name(&resolved.name);
    if wanted.dashboards {
        let object = monitoring::pipeline_dashboard(resolved, owner, &ctx.dashboards);
        if apply_child(&config_maps, Cached::typed(&ctx.children.config_maps), &object, &mut conflicts).await? {
            notes.push(format!("dashboard ConfigMap {dashboard}"));
        }
    } else {
        kubernetes::delete_owned_cached(
            &config_maps,
            Cached::typed(&ctx.children.config_maps),
            ns,
            &dashboard,
            &owner.uid,
        )
        .await?;
    }
    Ok(if conflicts.is_empty() {
        Finding::ok(ConditionType::MonitoringReady, reason::MONITORING_APPLIED, notes.join("; "))
    } else {
        conflict(ConditionType::MonitoringReady, &conflicts)
    })
}

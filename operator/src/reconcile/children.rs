//! The pipeline's Kubernetes children as one desired set (`desired::children`): applied in order,
//! then the pipeline's labelled children that are no longer in the set are deleted (only objects
//! it controls). An object of a child's name that the pipeline does not control is left alone and
//! reported as `ResourceConflict`; a child that needs it is not applied.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DynamicObject};

use super::kubernetes::{self, Applied};
use super::{Context, Error};
use crate::conditions::{ConditionType, Finding, reason};
use crate::desired::children::{Child, ChildSet, Cluster, Discovered, Item, child_names, desired_children, kinds};
use crate::desired::workloads;
use crate::spec::resolve::{Component, Resolved};

/// The parts a pipeline's children report on, in status order.
const PARTS: [ConditionType; 3] =
    [ConditionType::WorkloadsAvailable, ConditionType::AutoscalingReady, ConditionType::MonitoringReady];

/// What applying the children found.
pub struct Outcome {
    /// One finding per part in `PARTS`.
    pub findings: Vec<Finding>,
    /// The in-cluster URL of each HTTP component whose Service and Deployment are the pipeline's.
    pub endpoints: BTreeMap<String, String>,
    /// Available replicas of each of the pipeline's Deployments.
    pub replicas: BTreeMap<String, i32>,
    /// The first refusal of a child by the API server: said in its part's condition, and the
    /// reconcile is retried with backoff once the status is written.
    pub refused: Option<kube::Error>,
}

/// What became of one child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Ours,
    /// An object of its name is someone else's.
    Theirs,
    /// Not applied: a child it needs is not the pipeline's.
    Blocked,
}

/// The fate of each child applied so far, by kind and name.
type Fates = HashMap<(String, String), Fate>;

/// Whether a child may be applied: only when what it needs is the pipeline's. If not, what its
/// condition says: the need's `otherwise` when that child is someone else's, nothing when it was
/// not applied itself (its own cause is reported already).
fn admit(child: &Child, fates: &Fates) -> Result<(), Option<String>> {
    let Some(need) = &child.needs else {
        return Ok(());
    };
    match fates.get(&(need.kind.clone(), need.name.clone())) {
        Some(Fate::Ours) => Ok(()),
        Some(Fate::Theirs) => Err(need.otherwise.clone()),
        Some(Fate::Blocked) | None => Err(None),
    }
}

/// What a part's condition is made of.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub conflicts: Vec<String>,
    /// Children the API server refused, with its reason.
    pub refused: Vec<String>,
    /// Asked for, impossible on this cluster.
    pub missing: Vec<String>,
    /// Children applied and facts about the part, in order.
    pub notes: Vec<String>,
    /// Deployments short of their replicas (`predict 0/1`).
    pub waiting: Vec<String>,
}

/// Builds the desired set, applies it in order and deletes the pipeline's children not in it.
pub async fn reconcile(
    resolved: &Resolved,
    owner: &OwnerReference,
    ctx: &Context,
    served: Discovered,
) -> Result<Outcome, Error> {
    let cluster = Cluster { served, prometheus_url: ctx.prometheus_url.as_deref(), dashboards: &ctx.dashboards };
    let set = desired_children(resolved, owner, &cluster);
    let ns = &resolved.namespace;
    let api = |resource: &ApiResource| -> Api<DynamicObject> { Api::namespaced_with(ctx.client.clone(), ns, resource) };
    let mut fates: Fates = HashMap::new();
    let mut refused: Option<kube::Error> = None;
    let mut reports: BTreeMap<ConditionType, Report> = PARTS.iter().map(|p| (*p, Report::default())).collect();
    for item in &set.items {
        let child = match item {
            Item::Note(note) => {
                let report = reports.entry(note.part).or_default();
                if note.missing { &mut report.missing } else { &mut report.notes }.push(note.text.clone());
                continue;
            }
            Item::Child(child) => child,
        };
        let report = reports.entry(child.part).or_default();
        let key = (child.resource.kind.clone(), child.name().to_string());
        if let Err(said) = admit(child, &fates) {
            report.conflicts.extend(said);
            fates.insert(key, Fate::Blocked);
            continue;
        }
        let cache = ctx.children.cache(&child.resource);
        let fate = match kubernetes::apply_child(&api(&child.resource), cache.as_deref(), &child.object).await {
            Ok(Applied::NotOurs(whose)) => {
                report.conflicts.push(whose);
                Fate::Theirs
            }
            Ok(Applied::Unchanged | Applied::Written) => {
                report.notes.extend(child.note.clone());
                Fate::Ours
            }
            // The API server refused this child: the rest of the set and the orphan deletion still
            // go ahead, then the reconcile fails. An orphan may be why it is refused (KEDA's webhook
            // refuses a ScaledObject for a Deployment another HPA scales: switching HPA to KEDA would
            // otherwise fail before the old HPA is deleted, forever).
            Err(e) if refused_child(&e) => {
                tracing::warn!(kind = %child.resource.kind, name = %child.name(), error = %e, "child refused");
                report.refused.push(format!("{} {}: {}", child.resource.kind, child.name(), refusal(&e)));
                refused.get_or_insert(e);
                Fate::Blocked
            }
            Err(e) => return Err(e.into()),
        };
        fates.insert(key, fate);
    }
    delete_orphans(&set, resolved, owner, ctx, &served).await?;

    // The workloads' availability and endpoints, from the Deployments and Services that are ours.
    let ours = |kind: &str, name: &str| fates.get(&(kind.to_string(), name.to_string())) == Some(&Fate::Ours);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    let mut endpoints = BTreeMap::new();
    let mut replicas = BTreeMap::new();
    let workloads_report = reports.entry(ConditionType::WorkloadsAvailable).or_default();
    for workload in resolved.workloads.iter().filter(|w| w.enabled) {
        let name = workloads::workload_name(&resolved.name, workload.component);
        if !ours("Deployment", &name) {
            continue;
        }
        let component = workload.component.as_str();
        if workload.component != Component::Sink && ours("Service", &name) {
            endpoints.insert(component.to_string(), workloads::endpoint(resolved, workload.component));
        }
        let (available, wanted) =
            kubernetes::availability_cached(&deployments, &ctx.children.deployments, ns, &name).await?;
        replicas.insert(component.to_string(), available);
        if available < wanted {
            workloads_report.waiting.push(format!("{component} {available}/{wanted}"));
        }
    }
    let findings = PARTS.iter().map(|part| finding(*part, &reports[part])).collect();
    Ok(Outcome { findings, endpoints, replicas, refused })
}

/// An apply the API server refused for this object alone (admission, validation, permission, a
/// kind gone), not an outage or throttling: the other children are still applied.
fn refused_child(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if matches!(status.code, 400 | 403 | 404 | 409 | 422))
}

/// What the API server said when it refused a child (its status message, else the error).
fn refusal(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// Deletes the pipeline's children (labelled as its own and controlled by it) of every kind it
/// may have that are not in the set, the last applied kind first.
pub(super) async fn delete_orphans(
    set: &ChildSet,
    resolved: &Resolved,
    owner: &OwnerReference,
    ctx: &Context,
    served: &Discovered,
) -> Result<(), Error> {
    let pipeline = (resolved.namespace.as_str(), resolved.name.as_str(), owner.uid.as_str());
    let names = child_names(&resolved.name);
    for resource in kinds(served).iter().rev() {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &resolved.namespace, resource);
        let cache = ctx.children.cache(resource);
        for name in kubernetes::owned_names(&api, cache.as_deref(), pipeline, &names).await? {
            if !set.contains(resource, &name) {
                tracing::info!(kind = %resource.kind, %name, "deleting a child no longer wanted");
                kubernetes::delete_owned(&api, &name, &owner.uid).await?;
            }
        }
    }
    Ok(())
}

/// A part's condition: a conflict first, then what is missing, else what was applied.
pub fn finding(part: ConditionType, report: &Report) -> Finding {
    if !report.conflicts.is_empty() {
        return Finding::failed(part, reason::RESOURCE_CONFLICT, report.conflicts.join("; "));
    }
    if !report.refused.is_empty() {
        return Finding::failed(part, reason::CHILD_REFUSED, report.refused.join("; "));
    }
    match part {
        ConditionType::WorkloadsAvailable if report.waiting.is_empty() => {
            Finding::ok(part, reason::AVAILABLE, "every enabled workload is available")
        }
        ConditionType::WorkloadsAvailable => Finding::failed(
            part,
            reason::PROGRESSING,
            format!("waiting for available replicas: {}", report.waiting.join(", ")),
        ),
        ConditionType::AutoscalingReady if !report.missing.is_empty() => {
            Finding::failed(part, reason::PROVIDER_MISSING, report.missing.join("; "))
        }
        ConditionType::AutoscalingReady if report.notes.is_empty() => {
            Finding::ok(part, reason::FIXED_REPLICAS, "every workload runs fixed replicas")
        }
        ConditionType::AutoscalingReady => {
            Finding::ok(part, reason::AUTOSCALERS_APPLIED, format!("autoscaled: {}", report.notes.join(", ")))
        }
        _ => Finding::ok(part, reason::MONITORING_APPLIED, report.notes.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_applied_only_on_what_is_the_pipelines_and_a_conflict_below_it_is_said_once() {
        use crate::crd::{AutoscalingSpec, FlightPipelineSpec};
        use crate::desired::autoscaling::{HpaVersion, Offers};
        use crate::desired::monitoring::DashboardSettings;
        use crate::spec::fixtures::{owner, resolved};
        let mut spec = FlightPipelineSpec::default();
        spec.predict.workload.autoscaling = Some(AutoscalingSpec::default());
        let served =
            Discovered { autoscaling: Offers { hpa: Some(HpaVersion::V2), keda: false }, ..Discovered::default() };
        let dashboards = DashboardSettings::default();
        let cluster = Cluster { served, prometheus_url: None, dashboards: &dashboards };
        let set = desired_children(&resolved(&spec), &owner(), &cluster);
        let child = |kind: &str, name: &str| {
            set.children().find(|c| c.resource.kind == kind && c.name() == name).expect("in the set")
        };
        let fates = |entries: &[(&str, &str, Fate)]| -> Fates {
            entries.iter().map(|(k, n, f)| ((k.to_string(), n.to_string()), *f)).collect()
        };
        let (settings, deployment, hpa) = (
            child("ConfigMap", "scl-pipeline"),
            child("Deployment", "scl-predict"),
            child("HorizontalPodAutoscaler", "scl-predict"),
        );
        // What needs nothing is always applied.
        assert_eq!(admit(settings, &fates(&[])), Ok(()));
        // No pod on someone else's settings; the ConfigMap's own conflict says it.
        assert_eq!(admit(deployment, &fates(&[("ConfigMap", "scl-pipeline", Fate::Theirs)])), Err(None));
        assert_eq!(admit(deployment, &fates(&[("ConfigMap", "scl-pipeline", Fate::Ours)])), Ok(()));
        // No autoscaler on someone else's Deployment, said in the autoscaling condition.
        let theirs = fates(&[("Deployment", "scl-predict", Fate::Theirs)]);
        let said = "predict not autoscaled: Deployment scl-predict is not controlled by this pipeline";
        assert_eq!(admit(hpa, &theirs), Err(Some(said.to_string())));
        // Nor on one that was not applied (the settings were someone else's), said nowhere twice.
        assert_eq!(admit(hpa, &fates(&[("Deployment", "scl-predict", Fate::Blocked)])), Err(None));
        assert_eq!(admit(hpa, &fates(&[("Deployment", "scl-predict", Fate::Ours)])), Ok(()));
    }

    fn report(conflicts: &[&str], missing: &[&str], notes: &[&str], waiting: &[&str]) -> Report {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        Report {
            conflicts: owned(conflicts),
            refused: vec![],
            missing: owned(missing),
            notes: owned(notes),
            waiting: owned(waiting),
        }
    }

    #[test]
    fn each_part_says_a_conflict_first_then_what_is_missing_then_what_was_applied() {
        use ConditionType::*;
        let cases = [
            (WorkloadsAvailable, report(&[], &[], &[], &[]), true, "Available", "every enabled workload is available"),
            (
                WorkloadsAvailable,
                report(&[], &[], &[], &["ingest 0/1", "predict 1/2"]),
                false,
                "Progressing",
                "waiting for available replicas: ingest 0/1, predict 1/2",
            ),
            (
                WorkloadsAvailable,
                report(&["ConfigMap a exists", "Deployment b exists"], &[], &[], &["ingest 0/1"]),
                false,
                "ResourceConflict",
                "ConfigMap a exists; Deployment b exists",
            ),
            (AutoscalingReady, report(&[], &[], &[], &[]), true, "FixedReplicas", "every workload runs fixed replicas"),
            (
                AutoscalingReady,
                report(&[], &[], &["predict (HPA)", "sink (KEDA)"], &[]),
                true,
                "AutoscalersApplied",
                "autoscaled: predict (HPA), sink (KEDA)",
            ),
            (
                AutoscalingReady,
                report(&[], &["sink: no KEDA", "predict: no HPA"], &["query (HPA)"], &[]),
                false,
                "ProviderMissing",
                "sink: no KEDA; predict: no HPA",
            ),
            (
                AutoscalingReady,
                report(&["predict not autoscaled"], &["sink: no KEDA"], &[], &[]),
                false,
                "ResourceConflict",
                "predict not autoscaled",
            ),
            (
                MonitoringReady,
                report(&[], &[], &["ServiceMonitor x", "pods carry annotations"], &[]),
                true,
                "MonitoringApplied",
                "ServiceMonitor x; pods carry annotations",
            ),
            (
                MonitoringReady,
                report(&["ConfigMap d exists"], &[], &["ServiceMonitor x"], &[]),
                false,
                "ResourceConflict",
                "ConfigMap d exists",
            ),
        ];
        for (part, report, ok, reason, message) in cases {
            let got = finding(part, &report);
            assert_eq!(
                (got.type_, got.ok, got.reason, got.message.as_str()),
                (part, ok, reason, message),
                "{report:?}"
            );
        }
    }
}

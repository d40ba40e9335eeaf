//! The status subresource and Events: written only when something changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::conditions::{self, ConditionType, Finding};
use crate::crd::{FlightPipeline, FlightPipelineStatus};

/// A separate field manager for status: Kubernetes 1.20 tracks managed fields per object, not per
/// subresource, so a status apply under the spec's manager name would claim (and could drop) the
/// fields that manager owns in the spec.
const STATUS_MANAGER: &str = "flightline-operator-status";

/// Facts for the status beyond conditions; `None` keeps what is there.
#[derive(Default)]
pub struct Facts {
    pub topic: Option<String>,
    pub dead_letter_topic: Option<Option<String>>,
    pub table: Option<String>,
    pub partitions: Option<i32>,
    pub endpoints: Option<std::collections::BTreeMap<String, String>>,
    pub available_replicas: Option<std::collections::BTreeMap<String, i32>>,
    /// `status.storage`: the resources in use and whether this pipeline created them.
    pub storage: Option<Vec<crate::crd::StorageRecord>>,
    /// Keep `observedGeneration` as it is: the spec was not acted on (paused).
    pub spec_not_acted_on: bool,
    /// What this reconcile changed outside Kubernetes (`topic: created …; table: …`): said in the
    /// Event of a change of `Ready`, else in an Event of its own (`Reconciled`). One Event, not two,
    /// for a new pipeline: at fleet scale each Event is an API request.
    pub changed: Option<String>,
}

/// Merges findings and facts into the status, patches it when it changed, and publishes an Event
/// when `Ready` changes status or reason or the reconcile changed something outside Kubernetes.
#[tracing::instrument(name = "status_update", skip_all)]
pub async fn update(
    api: &Api<FlightPipeline>,
    recorder: &Recorder,
    fp: &FlightPipeline,
    findings: &[Finding],
    facts: Facts,
) -> Result<(), kube::Error> {
    let old = fp.status.clone().unwrap_or_default();
    let now = Time(Timestamp::now());
    let mut new = FlightPipelineStatus {
        observed_generation: if facts.spec_not_acted_on { old.observed_generation } else { fp.metadata.generation },
        conditions: conditions::merge(&old.conditions, findings, fp.metadata.generation, &now),
        ..old.clone()
    };
    if let Some(topic) = facts.topic {
        new.topic = Some(topic);
    }
    if let Some(dlq) = facts.dead_letter_topic {
        new.dead_letter_topic = dlq;
    }
    if let Some(table) = facts.table {
        new.table = Some(table);
    }
    if facts.partitions.is_some() {
        new.partitions = facts.partitions;
    }
    if let Some(endpoints) = facts.endpoints {
        new.endpoints = endpoints;
    }
    if let Some(replicas) = facts.available_replicas {
        new.available_replicas = replicas;
    }
    if let Some(records) = facts.storage {
        new.storage = Some(records);
    }
    let changed = facts.changed;
    if new == old {
        publish_changed(recorder, fp, changed.as_deref()).await;
        return Ok(());
    }
    let patch = json!({
        "apiVersion": FlightPipeline::api_version(&()),
        "kind": FlightPipeline::kind(&()),
        "status": new,
    });
    if let Err(e) =
        api.patch_status(&fp.name_any(), &PatchParams::apply(STATUS_MANAGER).force(), &Patch::Apply(&patch)).await
    {
        // The change happened even though its status did not land: the next reconcile no longer sees it.
        publish_changed(recorder, fp, changed.as_deref()).await;
        return Err(e);
    }

    let ready = |s: &FlightPipelineStatus| {
        s.conditions.iter().find(|c| c.type_ == ConditionType::Ready).map(|c| (c.status.clone(), c.reason.clone()))
    };
    let mut published = None;
    if ready(&old) != ready(&new)
        && let Some(c) = new.conditions.iter().find(|c| c.type_ == ConditionType::Ready)
    {
        let type_ = if c.status == "True" { EventType::Normal } else { EventType::Warning };
        match &changed {
            // The change first: a long message is cut at the end. An action of its own: the
            // recorder folds repeats of one reason and action into a series that keeps the first note.
            Some(changed) => {
                let note = format!("{changed}; {}", c.message);
                publish_as(recorder, fp, type_, &c.reason, STORAGE_ACTION, &note).await
            }
            None => publish(recorder, fp, type_, &c.reason, &c.message).await,
        }
        published = Some(c.message.clone());
    }
    if published.is_none() {
        publish_changed(recorder, fp, changed.as_deref()).await;
    }
    // A conflict behind another failure of Ready still gets its Event (once, not per reconcile). The
    // condition type is the Event's action: the recorder folds Events of one action and reason
    // into a series that keeps the first note.
    for (type_, note) in conditions::new_conflicts(&old.conditions, &new.conditions) {
        if published.as_deref() != Some(note.as_str()) {
            let reason = conditions::reason::RESOURCE_CONFLICT;
            publish_as(recorder, fp, EventType::Warning, reason, type_, &note).await;
        }
    }
    Ok(())
}

/// The action of Events that say what a reconcile changed outside Kubernetes.
const STORAGE_ACTION: &str = "ReconcileStorage";

/// The Event of what a reconcile changed outside Kubernetes, if it changed anything.
pub async fn publish_changed(recorder: &Recorder, fp: &FlightPipeline, changed: Option<&str>) {
    if let Some(note) = changed {
        publish_as(recorder, fp, EventType::Normal, "Reconciled", STORAGE_ACTION, note).await;
    }
}

/// Publishes an Event; failures are logged, never fatal (Events are best effort).
#[tracing::instrument(name = "event", skip_all)]
pub async fn publish(recorder: &Recorder, fp: &FlightPipeline, type_: EventType, reason: &str, note: &str) {
    publish_as(recorder, fp, type_, reason, "Reconcile", note).await
}

async fn publish_as(
    recorder: &Recorder,
    fp: &FlightPipeline,
    type_: EventType,
    reason: &str,
    action: &str,
    note: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(conditions::truncate(note)),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &fp.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}

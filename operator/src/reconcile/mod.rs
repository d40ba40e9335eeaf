//! The reconciler: validate → pure build → apply children → external systems → conditions → status.

pub mod batch;
pub mod children;
pub mod clickhouse;
mod context;
pub mod discovery;
mod error;
pub mod kafka;
pub mod kafka_sasl;
pub mod kafka_wire;
pub mod kubernetes;
pub mod outcome;
pub mod security;
pub mod status;
pub mod storage;

#[cfg(test)]
mod fixtures;

pub use self::context::{ChildStores, Context, DiscoveredStores, WatchScope};
pub use self::error::{Error, backoff, error_policy};

use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Resource, ResourceExt};

use self::status::Facts;
use crate::conditions::{self, ConditionType, Finding, reason};
use crate::crd::{DeletionPolicy, FINALIZER, FlightPipeline, SKIP_CLEANUP_ANNOTATION};
use crate::spec::resolve::{Resolved, resolve};

#[tracing::instrument(skip_all, fields(namespace = %fp.namespace().unwrap_or_default(), pipeline = %fp.name_any()))]
pub async fn reconcile(fp: Arc<FlightPipeline>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = fp.namespace().unwrap_or_default();
    let api: Api<FlightPipeline> = Api::namespaced(ctx.client.clone(), &namespace);
    let key = format!("{namespace}/{}", fp.name_any());
    ctx.metrics.in_flight.inc();
    let result = finalizer(&api, FINALIZER, fp, |event| async {
        match event {
            Finalizer::Apply(fp) => apply(&fp, &ctx).await,
            Finalizer::Cleanup(fp) => cleanup(&fp, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics.in_flight.dec();
    ctx.metrics.observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.failures.lock().expect("failures lock").remove(&key);
    }
    result
}

async fn apply(fp: &FlightPipeline, ctx: &Context) -> Result<Action, Error> {
    let namespace = fp.namespace().unwrap_or_default();
    let name = fp.name_any();
    let api: Api<FlightPipeline> = Api::namespaced(ctx.client.clone(), &namespace);

    if fp.spec.paused {
        let paused =
            Finding::ok(ConditionType::Paused, reason::PAUSED, "spec.paused is true: the operator changes nothing");
        let facts = Facts { spec_not_acted_on: true, ..Facts::default() };
        status::update(&api, &ctx.recorder, fp, &[paused], facts).await?;
        return Ok(Action::await_change());
    }

    let resolved = match resolve(&namespace, &name, &fp.spec, &ctx.defaults) {
        Ok(resolved) => resolved,
        Err(problems) => {
            let message = problems.join("; ");
            tracing::warn!(pipeline = %name, %namespace, %message, "invalid spec");
            let findings = conditions::all_failed(reason::INVALID_SPEC, &message);
            ctx.metrics.set_pipeline_ready(&namespace, &name, false);
            status::update(&api, &ctx.recorder, fp, &findings, Facts::default()).await?;
            // Nothing to retry: the next change to the object triggers a new reconcile.
            return Ok(Action::await_change());
        }
    };
    let owner = fp.controller_owner_ref(&()).expect("FlightPipeline has a name and uid");

    // Storage first: the topic and table exist before the services that need them start.
    let storage = storage::ensure(fp, &resolved, ctx).await;
    let changes =
        [(storage.topic_changed, &storage.kafka, "topic"), (storage.table_changed, &storage.clickhouse, "table")];

    let mut findings = vec![storage.kafka.clone(), storage.clickhouse.clone()];
    let mut facts = Facts {
        topic: Some(resolved.topic.name.clone()),
        dead_letter_topic: Some(resolved.dead_letter.as_ref().map(|t| t.name.clone())),
        table: Some(resolved.table.qualified()),
        partitions: storage.partitions,
        storage: storage.records.clone(),
        changed: storage_note(&changes),
        ..Facts::default()
    };
    let mut refused_child = None;
    if storage.usable {
        let applied = match apply_children(&resolved, &owner, ctx).await {
            Ok(applied) => applied,
            Err(e) => {
                // What the storage step changed is said even though no status is written now.
                status::publish_changed(&ctx.recorder, fp, facts.changed.as_deref()).await;
                return Err(e);
            }
        };
        findings.extend(applied.findings);
        facts.endpoints = Some(applied.endpoints);
        facts.available_replicas = Some(applied.replicas);
        refused_child = applied.refused;
    } else {
        for type_ in
            [ConditionType::WorkloadsAvailable, ConditionType::AutoscalingReady, ConditionType::MonitoringReady]
        {
            findings.push(Finding::failed(type_, reason::WAITING, "applied once the topic and the table exist"));
        }
    }
    // A conflict is what the user must act on: it names Ready even when listed after a wait.
    let mut by_urgency = findings.clone();
    by_urgency.sort_by_key(|f| f.reason != reason::RESOURCE_CONFLICT);
    let ready = conditions::ready(&by_urgency);
    ctx.metrics.set_pipeline_ready(&namespace, &name, ready.ok);
    findings.insert(0, ready);
    status::update(&api, &ctx.recorder, fp, &findings, facts).await?;

    // Unreachable systems and refused children are retried with backoff; everything else waits
    // for the next resync.
    if let Some(error) = storage.error {
        return Err(error);
    }
    if let Some(error) = refused_child {
        return Err(error.into());
    }
    Ok(Action::requeue(ctx.resync))
}

/// Discovers what the cluster serves and applies the pipeline's children.
async fn apply_children(
    resolved: &Resolved,
    owner: &OwnerReference,
    ctx: &Context,
) -> Result<children::Outcome, Error> {
    let discovered = ctx.discovery.for_pipeline(&ctx.client, resolved).await?;
    // A kind installed after the operator started gets its store now, not reads per reconcile.
    ctx.children.dynamic.watch_missing(&crate::desired::children::kinds(&discovered));
    let applied = children::reconcile(resolved, owner, ctx, discovered).await;
    if applied.is_err() {
        // A discovered kind may have gone (its CRD deleted): ask again next time.
        ctx.discovery.invalidate();
    }
    applied
}

/// The Event note for what the storage step changed (`topic: …; table: …`), or none.
fn storage_note(changes: &[(bool, &Finding, &str)]) -> Option<String> {
    let parts: Vec<String> =
        changes.iter().filter(|(changed, ..)| *changed).map(|(_, f, noun)| format!("{noun}: {}", f.message)).collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Runs when a pipeline is deleted. `Retain` (the default) and the skip annotation touch nothing
/// outside Kubernetes; `Delete` removes the topics and the table this pipeline created (as its
/// status records them, where they were created), never one it adopted or another pipeline claims.
/// A failure here keeps the finalizer and retries with backoff; the Warning event says how to let go.
async fn cleanup(fp: &FlightPipeline, ctx: &Context) -> Result<Action, Error> {
    ctx.metrics.forget_pipeline(&fp.namespace().unwrap_or_default(), &fp.name_any());
    let skip = fp.annotations().get(SKIP_CLEANUP_ANNOTATION).is_some_and(|v| v == "true");
    if skip || fp.spec.deletion_policy == DeletionPolicy::Retain {
        tracing::info!(pipeline = %fp.name_any(), skip, "deleted; external resources retained");
        return Ok(Action::await_change());
    }
    let namespace = fp.namespace().unwrap_or_default();
    match storage::delete_created(fp, ctx).await {
        Ok(deleted) => {
            let note = if deleted.is_empty() {
                "deleted nothing outside Kubernetes: this pipeline created no topic or table that is still its own"
                    .into()
            } else {
                format!("deleted {}", deleted.join(", "))
            };
            tracing::info!(pipeline = %fp.name_any(), %namespace, %note, "cleaned up");
            status::publish(&ctx.recorder, fp, EventType::Normal, "Deleted", &note).await;
            Ok(Action::await_change())
        }
        Err(e) => {
            let note = format!(
                "could not delete the topics and table ({e}); retrying. To let go without deleting them: \
                 kubectl annotate flightpipeline {} -n {namespace} {SKIP_CLEANUP_ANNOTATION}=true",
                fp.name_any()
            );
            status::publish(&ctx.recorder, fp, EventType::Warning, "CleanupFailed", &note).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::storage_note;
    use crate::conditions::{ConditionType, Finding, reason};

    #[test]
    fn one_event_says_what_the_storage_step_changed() {
        let topic =
            Finding::ok(ConditionType::KafkaReady, reason::TOPIC_READY, "created air.scl.flights (3 partitions)");
        let table = Finding::ok(ConditionType::ClickHouseReady, reason::TABLE_READY, "created flightline.t");
        assert_eq!(
            storage_note(&[(true, &topic, "topic"), (true, &table, "table")]).as_deref(),
            Some("topic: created air.scl.flights (3 partitions); table: created flightline.t")
        );
        assert_eq!(
            storage_note(&[(false, &topic, "topic"), (true, &table, "table")]).as_deref(),
            Some("table: created flightline.t")
        );
        assert_eq!(storage_note(&[(false, &topic, "topic"), (false, &table, "table")]), None);
    }
}

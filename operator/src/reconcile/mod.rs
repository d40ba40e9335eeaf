//! The reconciler: validate → pure build → apply children → external systems → conditions → status.

pub mod children;
pub mod clickhouse;
pub mod discovery;
pub mod kafka;
pub mod kafka_wire;
pub mod kubernetes;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Client, Resource, ResourceExt};

use self::clickhouse::{ClickHouseAdmin, ClickHouseError};
use self::kafka::{KafkaAdmin, KafkaError};
use self::status::Facts;
use crate::build::conditions::{self, Finding, reason};
use crate::build::monitoring::DashboardSettings;
use crate::build::resolve::{Defaults, Resolved, resolve};
use crate::build::table::{TableSpec, plan_table};
use crate::build::topic::plan_topic;
use crate::build::workloads::Scrape;
use crate::crd::{DeletionPolicy, FINALIZER, FlightPipeline, SKIP_CLEANUP_ANNOTATION};
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("ClickHouse credentials: {0}")]
    Credentials(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Low-cardinality label for the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Kafka(e) if e.is_transient() => "kafka_unavailable",
            Error::Kafka(_) => "kafka",
            Error::ClickHouse(e) if e.is_transient() => "clickhouse_unavailable",
            Error::ClickHouse(_) => "clickhouse",
            Error::Credentials(_) => "credentials",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.reason()
                }
                _ => "finalizer",
            },
        }
    }
}

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
}

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

/// Retries failed reconciles with exponential backoff (1 s doubling to 5 min) and ±50 % jitter,
/// so a broker outage does not turn into a retry storm across many pipelines.
pub fn error_policy(fp: Arc<FlightPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", fp.namespace().unwrap_or_default(), fp.name_any());
    let attempt = {
        let mut failures = ctx.failures.lock().expect("failures lock");
        let n = failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(attempt, rand::random::<f64>());
    tracing::warn!(pipeline = %key, error = %error, attempt, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Action::requeue(delay)
}

/// `base · 2^(attempt-1)` capped at 5 minutes, scaled by a jitter factor in [0.5, 1.5).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1 << attempt.saturating_sub(1).min(9));
    base.min(Duration::from_secs(300)).mul_f64(0.5 + jitter)
}

async fn apply(fp: &FlightPipeline, ctx: &Context) -> Result<Action, Error> {
    let namespace = fp.namespace().unwrap_or_default();
    let name = fp.name_any();
    let api: Api<FlightPipeline> = Api::namespaced(ctx.client.clone(), &namespace);

    if fp.spec.paused {
        let paused =
            Finding::ok(conditions::PAUSED, reason::PAUSED, "spec.paused is true: the operator changes nothing");
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
    let kafka = ensure_kafka(&resolved, ctx).await;
    let clickhouse = ensure_clickhouse(&resolved, ctx).await;
    for (outcome, noun) in [(&kafka, "topic"), (&clickhouse, "table")] {
        if outcome.changed {
            status::publish(
                &ctx.recorder,
                fp,
                EventType::Normal,
                "Reconciled",
                &format!("{noun}: {}", outcome.finding.message),
            )
            .await;
        }
    }

    let mut findings = vec![kafka.finding.clone(), clickhouse.finding.clone()];
    let mut facts = Facts {
        topic: Some(resolved.topic.name.clone()),
        dead_letter_topic: Some(resolved.dead_letter.as_ref().map(|t| t.name.clone())),
        table: Some(resolved.table.qualified()),
        partitions: kafka.partitions,
        ..Facts::default()
    };
    if kafka.usable && clickhouse.usable {
        let discovered = discovery::discover(&ctx.client).await?;
        let scrape = if discovered.service_monitor && resolved.monitoring.service_monitor {
            Scrape::ByServiceMonitor
        } else {
            Scrape::ByAnnotations
        };
        let (finding, endpoints, replicas) = children::apply_workloads(&resolved, &owner, ctx, scrape).await?;
        findings.push(finding);
        findings.push(children::apply_autoscalers(&resolved, &owner, ctx, discovered.autoscaling).await?);
        findings.push(children::apply_monitoring(&resolved, &owner, ctx, discovered).await?);
        facts.endpoints = Some(endpoints);
        facts.available_replicas = Some(replicas);
    } else {
        for type_ in [conditions::WORKLOADS_AVAILABLE, conditions::AUTOSCALING_READY, conditions::MONITORING_READY] {
            findings.push(Finding::failed(type_, reason::WAITING, "applied once the topic and the table exist"));
        }
    }
    let ready = conditions::ready(&findings);
    ctx.metrics.set_pipeline_ready(&namespace, &name, ready.ok);
    findings.insert(0, ready);
    status::update(&api, &ctx.recorder, fp, &findings, facts).await?;

    // Unreachable systems are retried with backoff; everything else waits for the next resync.
    if let Some(error) = kafka.error.or(clickhouse.error) {
        return Err(error);
    }
    Ok(Action::requeue(ctx.resync))
}

/// What one external system's step found.
struct StorageOutcome {
    finding: Finding,
    /// The resource exists, so workloads can run (possibly with a `NotSupported` difference).
    usable: bool,
    /// Something was created or changed.
    changed: bool,
    partitions: Option<i32>,
    /// A transient error to retry with backoff.
    error: Option<Error>,
}

impl StorageOutcome {
    fn failed(
        type_: &'static str,
        error: impl Into<Error> + std::fmt::Display,
        transient: bool,
        unavailable: &'static str,
        other: &'static str,
    ) -> Self {
        let finding = Finding::failed(type_, if transient { unavailable } else { other }, error.to_string());
        Self { finding, usable: false, changed: false, partitions: None, error: transient.then(|| error.into()) }
    }
}

async fn ensure_kafka(resolved: &Resolved, ctx: &Context) -> StorageOutcome {
    let fail = |e: KafkaError| {
        let transient = e.is_transient();
        StorageOutcome::failed(conditions::KAFKA_READY, e, transient, reason::KAFKA_UNAVAILABLE, reason::KAFKA_ERROR)
    };
    let mut admin = match KafkaAdmin::connect(&resolved.bootstrap_servers, ctx.io_timeout).await {
        Ok(admin) => admin,
        Err(e) => return fail(e),
    };
    let mut not_supported = Vec::new();
    let mut changed = false;
    let mut partitions = None;
    for topic in std::iter::once(&resolved.topic).chain(resolved.dead_letter.as_ref()) {
        let observed = match admin.describe(&topic.name).await {
            Ok(observed) => observed,
            Err(e) => return fail(e),
        };
        let plan = plan_topic(topic, observed.as_ref());
        not_supported.extend(plan.not_supported.iter().cloned());
        let mut now_has = observed.as_ref().map(|o| o.partitions).unwrap_or(topic.partitions);
        if !plan.is_noop() {
            tracing::info!(topic = %topic.name, ?plan, "changing Kafka topic");
            match admin.apply(topic, &plan).await {
                Ok(()) => {
                    changed = true;
                    now_has = plan.grow_partitions_to.unwrap_or(now_has);
                }
                // A broker without CreatePartitions (or config APIs): report, do not retry. Without
                // CreateTopics there is no topic, so the workloads cannot start either.
                Err(e) if e.is_unsupported() && plan.create => {
                    let mut outcome = fail(e);
                    outcome.finding.reason = reason::NOT_SUPPORTED;
                    return outcome;
                }
                Err(e) if e.is_unsupported() => {
                    not_supported.push(format!("{e}; topic {} was left as it is", topic.name))
                }
                Err(e) => return fail(e),
            }
        }
        if topic.name == resolved.topic.name {
            partitions = Some(now_has);
        }
    }
    let finding = if not_supported.is_empty() {
        let dlq =
            resolved.dead_letter.as_ref().map(|t| format!(" and dead-letter topic {}", t.name)).unwrap_or_default();
        Finding::ok(
            conditions::KAFKA_READY,
            reason::TOPIC_READY,
            format!("topic {} ({} partitions){dlq} ready", resolved.topic.name, partitions.unwrap_or_default()),
        )
    } else {
        Finding::failed(conditions::KAFKA_READY, reason::NOT_SUPPORTED, not_supported.join("; "))
    };
    StorageOutcome { finding, usable: true, changed, partitions, error: None }
}

async fn ensure_clickhouse(resolved: &Resolved, ctx: &Context) -> StorageOutcome {
    let fail = |e: Error| {
        let transient = matches!(&e, Error::ClickHouse(c) if c.is_transient());
        StorageOutcome::failed(
            conditions::CLICKHOUSE_READY,
            e,
            transient,
            reason::CLICKHOUSE_UNAVAILABLE,
            reason::CLICKHOUSE_ERROR,
        )
    };
    let admin = match clickhouse_admin(resolved, ctx).await {
        Ok(admin) => admin,
        Err(e) => return fail(e),
    };
    let observed = match admin.describe(&resolved.table).await {
        Ok(observed) => observed,
        Err(e) => return fail(e.into()),
    };
    let plan = plan_table(&resolved.table, observed.as_ref());
    let changed = !plan.statements.is_empty();
    if let Err(e) = admin.apply(&resolved.table, &plan).await {
        return fail(e.into());
    }
    let finding = if plan.not_supported.is_empty() {
        Finding::ok(
            conditions::CLICKHOUSE_READY,
            reason::TABLE_READY,
            format!("table {} ready", resolved.table.qualified()),
        )
    } else {
        Finding::failed(conditions::CLICKHOUSE_READY, reason::NOT_SUPPORTED, plan.not_supported.join("; "))
    };
    StorageOutcome { finding, usable: true, changed, partitions: None, error: None }
}

async fn clickhouse_admin(resolved: &Resolved, ctx: &Context) -> Result<ClickHouseAdmin, Error> {
    let credentials = match &resolved.credentials {
        None => None,
        Some(refs) => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &resolved.namespace);
            let secret = secrets
                .get_opt(&refs.name)
                .await?
                .ok_or_else(|| Error::Credentials(format!("Secret {} not found", refs.name)))?;
            let read = |key: &str| {
                secret
                    .data
                    .as_ref()
                    .and_then(|d| d.get(key))
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                    .ok_or_else(|| Error::Credentials(format!("Secret {} has no key {key}", refs.name)))
            };
            Some((read(&refs.username_key)?, read(&refs.password_key)?))
        }
    };
    Ok(ClickHouseAdmin::new(&resolved.clickhouse_url, credentials, ctx.io_timeout))
}

/// Runs when a pipeline is deleted. `Retain` (the default) and the skip annotation touch nothing
/// outside Kubernetes; `Delete` removes the topics and the table. A failure here keeps the
/// finalizer and retries with backoff; the Warning event says how to let go.
async fn cleanup(fp: &FlightPipeline, ctx: &Context) -> Result<Action, Error> {
    ctx.metrics.forget_pipeline(&fp.namespace().unwrap_or_default(), &fp.name_any());
    let skip = fp.annotations().get(SKIP_CLEANUP_ANNOTATION).is_some_and(|v| v == "true");
    if skip || fp.spec.deletion_policy == DeletionPolicy::Retain {
        tracing::info!(pipeline = %fp.name_any(), skip, "deleted; external resources retained");
        return Ok(Action::await_change());
    }
    let namespace = fp.namespace().unwrap_or_default();
    let result = delete_external(fp, &namespace, ctx).await;
    if let Err(e) = &result {
        let note = format!(
            "could not delete the topics and table ({e}); retrying. To let go without deleting them: \
             kubectl annotate flightpipeline {} -n {namespace} {SKIP_CLEANUP_ANNOTATION}=true",
            fp.name_any()
        );
        status::publish(&ctx.recorder, fp, EventType::Warning, "CleanupFailed", &note).await;
    }
    result.map(|_| Action::await_change())
}

async fn delete_external(fp: &FlightPipeline, namespace: &str, ctx: &Context) -> Result<(), Error> {
    // An invalid spec cannot name what to delete; the status still says what was in use.
    let Ok(resolved) = resolve(namespace, &fp.name_any(), &fp.spec, &ctx.defaults) else {
        tracing::warn!(pipeline = %fp.name_any(), "deleted with an invalid spec; nothing external to clean up");
        return Ok(());
    };
    let status = fp.status.clone().unwrap_or_default();
    let topics: Vec<String> = status
        .topic
        .into_iter()
        .chain(status.dead_letter_topic)
        .chain(std::iter::once(resolved.topic.name.clone()))
        .chain(resolved.dead_letter.as_ref().map(|t| t.name.clone()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    // Credentials first: if their Secret is gone, fail before deleting anything.
    let clickhouse = clickhouse_admin(&resolved, ctx).await?;
    KafkaAdmin::connect(&resolved.bootstrap_servers, ctx.io_timeout).await?.delete(&topics).await?;
    let table: &TableSpec = &resolved.table;
    clickhouse.drop(table).await?;
    status::publish(
        &ctx.recorder,
        fp,
        EventType::Normal,
        "Deleted",
        &format!("deleted topics {} and table {}", topics.join(", "), table.qualified()),
    )
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.5), Duration::from_secs(8));
        assert_eq!(backoff(30, 0.5), Duration::from_secs(300));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert!(backoff(30, 0.999) < Duration::from_secs(450));
    }
}

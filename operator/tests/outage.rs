//! End-to-end tests that stop and start parts of the shared stack. They live in their own test
//! binary, which cargo runs after (never beside) the others, one test at a time.

mod support;

use flightline_operator::crd::DeletionPolicy;
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use support::*;

/// Restarts the broker even when an assertion fails, so later tests find it running.
struct KafkaStopped;

impl KafkaStopped {
    fn new() -> Self {
        dev(&["stack", "stop-kafka"]);
        Self
    }
}

impl Drop for KafkaStopped {
    fn drop(&mut self) {
        dev(&["stack", "start-kafka"]);
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn kafka_gone_during_delete_blocks_until_let_go_and_never_wedges_the_namespace() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("outage").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = example_pipeline(&ns);
    fp.spec.deletion_policy = DeletionPolicy::Delete;
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;

    let kafka = KafkaStopped::new();
    api.delete("scl", &DeleteParams::default()).await.unwrap();

    // Cleanup cannot reach Kafka: the finalizer stays and an Event says how to let go.
    let events: Api<Event> = Api::namespaced(stack.client.clone(), &ns.name);
    let cleanup_failed = async || {
        let events = events.list(&ListParams::default()).await.unwrap().items;
        events.into_iter().find(|e| e.reason.as_deref() == Some("CleanupFailed")).and_then(|e| e.message)
    };
    eventually("a CleanupFailed event", async || cleanup_failed().await.is_some()).await;
    let note = cleanup_failed().await.unwrap();
    assert!(note.contains("flightline.dev/skip-cleanup=true"), "{note}");
    assert!(api.get_opt("scl").await.unwrap().is_some(), "the finalizer holds the pipeline while cleanup fails");

    // The documented way out: annotate, and the pipeline goes without touching Kafka or ClickHouse.
    let patch = json!({"metadata": {"annotations": {"flightline.dev/skip-cleanup": "true"}}});
    api.patch("scl", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_gone(&api, "scl").await;

    // And the namespace can go while Kafka is still down.
    let namespaces: Api<Namespace> = Api::all(stack.client.clone());
    namespaces.delete(&ns.name, &DeleteParams::default()).await.unwrap();
    eventually("the namespace is gone (not wedged)", async || namespaces.get_opt(&ns.name).await.unwrap().is_none())
        .await;
    drop(kafka);
    // The topic and table were let go, not deleted.
    assert!(stack.topic(&format!("{}.scl.flights", ns.name)).await.is_some());
    assert_eq!(stack.columns(&ns.database, "scl_flights").await.len(), 25);
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn kafka_outage_is_reported_and_recovers_with_backoff() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("kafka-down").await;
    let operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let kafka = KafkaStopped::new();
    apply(&api, &example_pipeline(&ns)).await.unwrap();
    let down = wait_condition(&api, "scl", "KafkaReady", "False", Some("KafkaUnavailable")).await;
    assert!(condition(&down, "KafkaReady").unwrap().message.contains("cannot reach Kafka broker"));
    assert_eq!(condition(&down, "WorkloadsAvailable").unwrap().reason, "WaitingForStorage");
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let errors = operator
        .metric("flightline_operator_reconcile_errors_total{reason=\"kafka_unavailable\"}")
        .await
        .unwrap_or(0.0);
    assert!((1.0..=8.0).contains(&errors), "backoff keeps retries few: {errors} in ~6 s");
    drop(kafka);
    wait_condition(&api, "scl", "Ready", "True", None).await;
}

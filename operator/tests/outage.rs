//! End-to-end tests that stop and start parts of the shared stack. They live in their own test
//! binary, which cargo runs after (never beside) the others, one test at a time.

mod support;

use flightline_operator::crd::DeletionPolicy;
use flightline_operator::desired::table::BASE_COLUMNS;
use k8s_openapi::api::core::v1::{Event, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use support::*;

/// A stopped part of the stack (`kafka` or `clickhouse`), started again when dropped, even when an
/// assertion fails, so later tests find it running.
struct Stopped(&'static str);

impl Stopped {
    fn new(part: &'static str) -> Self {
        dev(&["stack", &format!("stop-{part}")]);
        Self(part)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        dev(&["stack", &format!("start-{}", self.0)]);
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

    let kafka = Stopped::new("kafka");
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
    assert_eq!(stack.columns(&ns.database, "scl_flights").await.len(), BASE_COLUMNS.len());
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn kafka_outage_is_reported_and_recovers_with_backoff() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("kafka-down").await;
    let operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let kafka = Stopped::new("kafka");
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

const ROWS: u64 = 68_206;

async fn stored(query: &str) -> u64 {
    let (status, body) = http("GET", query, "/v1/stats/delays?by=type", &[], b"").await;
    if status != 200 {
        return 0;
    }
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["total"]["flights"].as_u64().unwrap_or(0)
}

/// Waits until `ROWS` are stored, then checks that no more arrive: each record once. On a timeout
/// it says how many arrived, so a slow sink and a lost record can be told apart.
async fn wait_all_stored_once(query: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let n = stored(query).await;
        if n >= ROWS {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{n} of {ROWS} records stored after {TIMEOUT:?}");
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(stored(query).await, ROWS, "a record sent twice is stored once");
}

/// A pipeline with small sink batches, so a load spans many inserts and commits.
async fn loading_pipeline(stack: &Stack, ns: &TestNamespace) -> [String; 2] {
    let api = pipelines(stack, ns);
    let mut fp = example_pipeline(ns);
    fp.spec.sink.batch_size = 2_000;
    fp.spec.sink.linger_ms = 200;
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    [service_addr(stack, ns, "scl", "ingest").await, service_addr(stack, ns, "scl", "query").await]
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn clickhouse_down_for_30_seconds_during_a_load_loses_and_duplicates_nothing() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("ch-down").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let [ingest, query] = loading_pipeline(&stack, &ns).await;
    let csv = data_set_csv();
    let post =
        tokio::spawn(async move { http("POST", &ingest, "/v1/flights", &[("Content-Type", "text/csv")], &csv).await });
    eventually("the sink has started storing rows", async || stored(&query).await > 0).await;
    {
        let _clickhouse = Stopped::new("clickhouse");
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
    let (status, body) = post.await.unwrap();
    assert_eq!(status, 202, "{body}");
    wait_all_stored_once(&query).await;
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn broker_restart_during_a_load_keeps_every_acknowledged_record() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("broker-restart").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let [ingest, query] = loading_pipeline(&stack, &ns).await;

    // The data set in slices of 2,000 rows, posted while the broker goes away and comes back.
    let csv = String::from_utf8(data_set_csv()).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap().to_string();
    let rows: Vec<&str> = lines.collect();
    let slices: Vec<String> = rows.chunks(2_000).map(|c| format!("{header}\n{}\n", c.join("\n"))).collect();
    let poster = {
        let ingest = ingest.clone();
        tokio::spawn(async move {
            let mut acknowledged = 0u64;
            let deadline = tokio::time::Instant::now() + TIMEOUT * 2;
            for slice in slices {
                // A 503 (broker away) is retried, as a client following Retry-After would.
                loop {
                    assert!(tokio::time::Instant::now() < deadline, "ingest did not recover after the broker restart");
                    let (status, body) =
                        http("POST", &ingest, "/v1/flights", &[("Content-Type", "text/csv")], slice.as_bytes()).await;
                    if status == 202 {
                        acknowledged +=
                            serde_json::from_str::<serde_json::Value>(&body).unwrap()["accepted"].as_u64().unwrap();
                        break;
                    }
                    assert_eq!(status, 503, "{body}");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
            acknowledged
        })
    };
    eventually("the load is under way", async || stored(&query).await > 0).await;
    drop(Stopped::new("kafka"));
    let acknowledged = poster.await.unwrap();
    assert_eq!(acknowledged, ROWS);
    // Every acknowledged record arrives, and once: a slice the broker took but could not
    // acknowledge before it stopped was sent again by the client, and its records' ids collapse.
    wait_all_stored_once(&query).await;
}

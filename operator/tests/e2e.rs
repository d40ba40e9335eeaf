//! End-to-end tests of the operator against the local stack: a real Kubernetes apiserver,
//! Apache Kafka and the ClickHouse engine. Run them with `dev/test`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use flightline_operator::crd::{DeletionPolicy, ExtraColumn, ExtraColumnType, FlightPipeline};
use flightline_operator::desired::monitoring;
use flightline_operator::desired::table::BASE_COLUMNS;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use support::*;

const LABELS: &str = "app.kubernetes.io/instance=scl,app.kubernetes.io/managed-by=flightline-operator";

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn example_pipeline_becomes_ready_with_topic_table_and_workloads() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("example").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let fp = apply(&api, &example_pipeline(&ns)).await.expect("apply example");
    let started = std::time::Instant::now();
    let ready = wait_condition(&api, "scl", "Ready", "True", Some("Ready")).await;
    println!("example pipeline Ready {:.1}s after apply", started.elapsed().as_secs_f64());

    // Kafka, read back from the broker.
    let topic_name = format!("{}.scl.flights", ns.name);
    let status = ready.status.as_ref().unwrap();
    assert_eq!(status.topic.as_deref(), Some(topic_name.as_str()));
    assert_eq!(status.partitions, Some(3));
    let topic = stack.topic(&topic_name).await.expect("topic exists");
    assert_eq!(topic.partitions, 3);
    assert_eq!(topic.replication_factor, 1);
    let configs = topic.configs.expect("broker describes configs");
    assert_eq!(configs["retention.ms"], "604800000");
    assert_eq!(configs["compression.type"], "producer");
    let dlq = stack.topic(&format!("{topic_name}.dlq")).await.expect("dead-letter topic exists");
    assert_eq!(dlq.configs.unwrap()["retention.ms"], (30 * 86_400_000i64).to_string());

    // ClickHouse, read back from system.columns.
    let columns = stack.columns(&ns.database, "scl_flights").await;
    assert_eq!(columns.len(), BASE_COLUMNS.len(), "{columns:?}");
    assert_eq!(BASE_COLUMNS.len(), 28);
    assert_eq!(columns["scheduled_at"], "DateTime");
    assert_eq!(columns["flight_type"], "Enum8('I' = 1, 'N' = 2)");
    assert_eq!(columns["delay_minutes"], "Int32");
    assert_eq!(columns["delayed"], "Bool");
    assert_eq!(columns["period_day"], "Enum8('morning' = 1, 'afternoon' = 2, 'night' = 3)");
    assert_eq!(columns["high_season"], "Bool");
    assert_eq!(columns["source_offset"], "Int64");
    assert_eq!(columns["record_id"], "String");
    let engine = stack.engine_full(&ns.database, "scl_flights").await.unwrap();
    assert!(engine.starts_with("ReplacingMergeTree(version)"), "{engine}");
    assert!(engine.contains("ORDER BY (scheduled_at, record_id)"), "{engine}");

    // Kubernetes children: owned by the pipeline, labelled, running the service commands.
    let uid = fp.uid().unwrap();
    let config_maps: Api<ConfigMap> = Api::namespaced(stack.client.clone(), &ns.name);
    let deployment_list = children::<Deployment>(&stack, &ns).await;
    let mut names: Vec<_> = deployment_list.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(names, ["scl-ingest", "scl-predict", "scl-query", "scl-sink"]);
    for d in &deployment_list {
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.kind.as_str(), owner.controller),
            (uid.as_str(), "FlightPipeline", Some(true))
        );
        assert_eq!(d.labels()["app.kubernetes.io/part-of"], "flightline");
        let container = &d.spec.template.spec.as_ref().unwrap().containers[0];
        assert!(container.command.as_ref().unwrap()[0].starts_with("flightline-"));
    }
    assert_eq!(children::<Service>(&stack, &ns).await.len(), 4);
    let cm = config_maps.get("scl-pipeline").await.unwrap();
    assert_eq!(cm.owner_references()[0].uid, uid);
    let settings = cm.data.unwrap();
    assert_eq!(settings["KAFKA_TOPIC"], topic_name);
    assert_eq!(settings["KAFKA_BOOTSTRAP_SERVERS"], stack.bootstrap);
    assert_eq!(settings["CLICKHOUSE_TABLE"], "scl_flights");

    // The API is explainable and the printer columns show readiness.
    let explain = kubectl(&["explain", "flightpipeline.spec.kafka"]);
    assert!(explain.contains("bootstrapServers") && explain.contains("Kafka cannot shrink a topic"), "{explain}");
    let table = kubectl(&["get", "fp", "-n", &ns.name]);
    assert!(table.contains("READY") && table.contains("True") && table.contains(&topic_name), "{table}");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn retention_converges_partitions_grow_and_never_shrink() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("topic").await;
    let operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = example_pipeline(&ns);
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    let topic_name = format!("{}.scl.flights", ns.name);

    // Retention change: applied to the broker.
    fp.spec.kafka.retention = "36h".into();
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    assert_eq!(stack.topic(&topic_name).await.unwrap().configs.unwrap()["retention.ms"], "129600000");

    // 3 → 6: the broker adds partitions (CreatePartitions) and the status reports them.
    fp.spec.kafka.partitions = 6;
    apply(&api, &fp).await.unwrap();
    eventually("the topic has 6 partitions", async || {
        stack.topic(&topic_name).await.is_some_and(|t| t.partitions == 6)
    })
    .await;
    let grown = wait_condition(&api, "scl", "Ready", "True", None).await;
    assert_eq!(grown.status.as_ref().unwrap().partitions, Some(6));

    // No retry storm: with a 2 s resync, 10 s bring a handful of reconciles, not hundreds.
    let before = operator.metric("flightline_operator_reconciliations_total{result=\"ok\"}").await.unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = operator.metric("flightline_operator_reconciliations_total{result=\"ok\"}").await.unwrap_or(0.0);
    assert!(after - before <= 15.0, "{} reconciles in 10 s", after - before);
    assert_eq!(
        operator.metric("flightline_operator_reconciliations_total{result=\"error\"}").await.unwrap_or(0.0),
        0.0
    );

    // A pipeline created at 6 and cut to 3: Kafka cannot remove partitions; the rest stays ready.
    let mut six = example_pipeline(&ns);
    six.metadata.name = Some("six".into());
    six.spec.kafka.partitions = 6;
    six.spec.clickhouse.table = "six".into();
    apply(&api, &six).await.unwrap();
    wait_condition(&api, "six", "Ready", "True", None).await;
    assert_eq!(stack.topic(&format!("{}.six.flights", ns.name)).await.unwrap().partitions, 6);
    six.spec.kafka.partitions = 3;
    apply(&api, &six).await.unwrap();
    let cut = wait_condition(&api, "six", "KafkaReady", "False", Some("NotSupported")).await;
    assert!(condition(&cut, "KafkaReady").unwrap().message.contains("cannot remove partitions"));
    assert_eq!(condition(&cut, "ClickHouseReady").unwrap().status, "True");
    assert_eq!(condition(&cut, "WorkloadsAvailable").unwrap().status, "True");
    assert_eq!(stack.topic(&format!("{}.six.flights", ns.name)).await.unwrap().partitions, 6);
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn columns_are_added_ttl_changes_and_type_changes_are_not_supported() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("table").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = example_pipeline(&ns);
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;

    fp.spec.clickhouse.extra_columns = vec![ExtraColumn { name: "gate".into(), column_type: ExtraColumnType::String }];
    fp.spec.clickhouse.ttl = "365d".into();
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    assert_eq!(stack.columns(&ns.database, "scl_flights").await["gate"], "String");
    let engine = stack.engine_full(&ns.database, "scl_flights").await.unwrap();
    assert!(engine.contains("TTL scheduled_at + toIntervalDay(365)"), "{engine}");

    fp.spec.clickhouse.ttl = String::new();
    apply(&api, &fp).await.unwrap();
    wait_for(&api, "scl", "TTL removed", |p| {
        p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
    })
    .await;
    wait_condition(&api, "scl", "Ready", "True", None).await;
    assert!(!stack.engine_full(&ns.database, "scl_flights").await.unwrap().contains("TTL"));

    fp.spec.clickhouse.extra_columns[0].column_type = ExtraColumnType::Int64;
    apply(&api, &fp).await.unwrap();
    let changed = wait_condition(&api, "scl", "ClickHouseReady", "False", Some("NotSupported")).await;
    assert!(condition(&changed, "ClickHouseReady").unwrap().message.contains("column gate"));
    assert_eq!(stack.columns(&ns.database, "scl_flights").await["gate"], "String");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn delete_policy_removes_topic_and_table_and_retain_keeps_them() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("delete").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    for (name, policy) in [("gone", DeletionPolicy::Delete), ("kept", DeletionPolicy::Retain)] {
        let mut fp = example_pipeline(&ns);
        fp.metadata.name = Some(name.into());
        fp.spec.clickhouse.table = name.into();
        fp.spec.deletion_policy = policy;
        apply(&api, &fp).await.unwrap();
    }
    for name in ["gone", "kept"] {
        wait_condition(&api, name, "Ready", "True", None).await;
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    for name in ["gone", "kept"] {
        wait_gone(&api, name).await;
    }
    assert!(stack.topic(&format!("{}.gone.flights", ns.name)).await.is_none());
    assert!(stack.topic(&format!("{}.gone.flights.dlq", ns.name)).await.is_none());
    assert!(stack.columns(&ns.database, "gone").await.is_empty());
    assert!(stack.topic(&format!("{}.kept.flights", ns.name)).await.is_some());
    assert_eq!(stack.columns(&ns.database, "kept").await.len(), BASE_COLUMNS.len());
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn unchanged_pipeline_is_not_written_across_resyncs() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("noop").await;
    let operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    apply(&api, &example_pipeline(&ns)).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    // Let the Deployments' status settle, then take a snapshot of every resourceVersion.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let snapshot = versions(&stack, &ns).await;
    let reconciles_before = operator.metric("flightline_operator_reconciliations_total{result=\"ok\"}").await.unwrap();
    tokio::time::sleep(Duration::from_secs(9)).await; // several 2 s resyncs
    let reconciles_after = operator.metric("flightline_operator_reconciliations_total{result=\"ok\"}").await.unwrap();
    assert!(reconciles_after - reconciles_before >= 3.0, "the resyncs ran ({reconciles_before} → {reconciles_after})");
    assert_eq!(versions(&stack, &ns).await, snapshot, "a no-op reconcile wrote something");
}

async fn versions(stack: &Stack, ns: &TestNamespace) -> BTreeMap<String, String> {
    let fp = pipelines(stack, ns).get("scl").await.unwrap();
    let mut all = BTreeMap::from([("flightpipeline/scl".to_string(), fp.resource_version().unwrap())]);
    let named = |kind: &str, name: String, version: Option<String>| (format!("{kind}/{name}"), version.unwrap());
    all.extend(
        children::<Deployment>(stack, ns).await.iter().map(|o| named("deployment", o.name_any(), o.resource_version())),
    );
    all.extend(
        children::<Service>(stack, ns).await.iter().map(|o| named("service", o.name_any(), o.resource_version())),
    );
    all.extend(
        children::<ConfigMap>(stack, ns).await.iter().map(|o| named("configmap", o.name_any(), o.resource_version())),
    );
    // The monitoring objects only the operator writes (an HPA's status is the HPA controller's).
    for resource in [monitoring::service_monitor_resource(), monitoring::prometheus_rule_resource()] {
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(stack.client.clone(), &ns.name, &resource);
        let list = api.list(&ListParams::default().labels(LABELS)).await.unwrap().items;
        all.extend(list.iter().map(|o| named(&resource.plural, o.name_any(), o.resource_version())));
    }
    // 4 Deployments, 4 Services, settings and dashboard ConfigMaps, ServiceMonitor, PrometheusRule.
    assert_eq!(all.len(), 13, "{all:?}");
    all
}

/// The pipeline `scl`'s children of one kind, found by the operator's labels.
async fn children<K>(stack: &Stack, ns: &TestNamespace) -> Vec<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(stack.client.clone(), &ns.name);
    api.list(&ListParams::default().labels(LABELS)).await.unwrap().items
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn operator_restarted_mid_way_converges_without_duplicates() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("restart").await;
    let options = OperatorOptions::new(&ns.name);
    let mut first = Operator::start(&stack, &options);
    let api = pipelines(&stack, &ns);
    apply(&api, &example_pipeline(&ns)).await.unwrap();
    // Crash as soon as the operator has started working on it.
    wait_for(&api, "scl", "finalizer added", |fp| !fp.finalizers().is_empty()).await;
    first.kill();
    let _second = Operator::start(&stack, &options);
    wait_condition(&api, "scl", "Ready", "True", None).await;
    assert_eq!(children::<Deployment>(&stack, &ns).await.len(), 4);
    assert_eq!(children::<Service>(&stack, &ns).await.len(), 4);
    // The settings and the dashboard.
    assert_eq!(children::<ConfigMap>(&stack, &ns).await.len(), 2);
    let fp = api.get("scl").await.unwrap();
    assert_eq!(fp.finalizers().iter().filter(|f| *f == "flightline.dev/cleanup").count(), 1);
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn two_replicas_elect_one_leader_and_fail_over() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("leader").await;
    let options = OperatorOptions::new(&ns.name);
    let mut a = Operator::start(&stack, &options);
    let mut b = Operator::start(&stack, &options);
    let leases: Api<Lease> = Api::namespaced(stack.client.clone(), &ns.name);
    let holder = async || leases.get_opt("flightline-operator").await.unwrap().and_then(|l| l.spec?.holder_identity);
    eventually("a replica takes the lease", async || holder().await.is_some()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let leader_flags = (a.metric("flightline_operator_leader").await, b.metric("flightline_operator_leader").await);
    let first_holder = holder().await.unwrap();
    let (leader, standby) = if first_holder == a.identity { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert_eq!(
        (leader_flags.0.unwrap_or(0.0) + leader_flags.1.unwrap_or(0.0)) as i32,
        1,
        "exactly one replica reports leadership: {leader_flags:?}"
    );
    assert_eq!(standby.metric("flightline_operator_leader").await, Some(0.0));

    // The standby does not reconcile; after the leader crashes it takes over and does.
    let api = pipelines(&stack, &ns);
    leader.kill();
    apply(&api, &example_pipeline(&ns)).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    assert_eq!(holder().await.as_deref(), Some(standby.identity.as_str()));
    assert_eq!(standby.metric("flightline_operator_leader").await, Some(1.0));

    // A graceful stop hands the lease back at once.
    standby.terminate();
    let lease = leases.get("flightline-operator").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity, None);
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn invalid_specs_are_rejected_or_reported_and_the_operator_keeps_going() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("invalid").await;
    // No cluster defaults: a pipeline must name its Kafka and ClickHouse itself.
    let mut options = OperatorOptions::new(&ns.name);
    options.with_defaults = false;
    let mut operator = Operator::start(&stack, &options);
    let api = pipelines(&stack, &ns);
    let valid = |name: &str| {
        let mut fp = example_pipeline(&ns);
        fp.metadata.name = Some(name.into());
        fp.spec.kafka.bootstrap_servers = stack.bootstrap.clone();
        fp.spec.clickhouse.url = stack.clickhouse_url.clone();
        fp.spec.clickhouse.table = name.replace('-', "_");
        serde_json::to_value(fp).unwrap()
    };

    // Rejected by the CRD schema at the API server.
    let schema_cases = [
        ("negative-partitions", json!({"spec": {"kafka": {"partitions": -3}}}), "spec.kafka.partitions"),
        ("unknown-policy", json!({"spec": {"deletionPolicy": "Purge"}}), "spec.deletionPolicy"),
        ("too-many-replicas", json!({"spec": {"query": {"replicas": 1000}}}), "spec.query.replicas"),
        ("bad-retention", json!({"spec": {"kafka": {"retention": "3 weeks"}}}), "spec.kafka.retention"),
        ("bad-table", json!({"spec": {"clickhouse": {"table": "flights; DROP TABLE x"}}}), "spec.clickhouse.table"),
        (
            "bad-column-type",
            json!({"spec": {"clickhouse": {"extraColumns": [{"name": "gate", "type": "Blob"}]}}}),
            "extraColumns",
        ),
    ];
    for (name, patch, field) in schema_cases {
        let mut body = valid(name);
        merge(&mut body, &patch);
        let result = create_raw(&stack, &ns, &body).await;
        let error = result.expect_err(&format!("{name} should be rejected"));
        assert!(error.contains(field), "{name}: expected an error naming {field}, got {error}");
    }

    // Cross-field checks: refused at admission by the CRD's CEL rules (x-kubernetes-validations),
    // with the field's path and the rule's message.
    let cel_cases = [
        (
            "min-above-max",
            json!({"spec": {"predict": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}}}),
            "spec.predict.autoscaling.minReplicas",
            "minReplicas must be at most maxReplicas",
        ),
        (
            "clashing-column",
            json!({"spec": {"clickhouse": {"extraColumns": [{"name": "delayed", "type": "Bool"}]}}}),
            "spec.clickhouse.extraColumns",
            "built-in columns",
        ),
        (
            "twice-column",
            json!({"spec": {"clickhouse": {"extraColumns": [{"name": "gate", "type": "String"}, {"name": "gate", "type": "Int64"}]}}}),
            "spec.clickhouse.extraColumns",
            "appears twice",
        ),
        (
            "same-dlq",
            json!({"spec": {"kafka": {"topic": "t1", "deadLetter": {"topic": "t1"}}}}),
            "spec.kafka.deadLetter.topic",
            "must differ from the topic",
        ),
        (
            "managed-config",
            json!({"spec": {"kafka": {"config": {"retention.ms": "1"}}}}),
            "spec.kafka.config",
            "managed by the operator",
        ),
        ("internal-topic", json!({"spec": {"kafka": {"topic": "__consumer_offsets"}}}), "spec.kafka.topic", "reserved"),
        (
            "streams-dlq",
            json!({"spec": {"kafka": {"deadLetter": {"topic": "app-store-changelog"}}}}),
            "spec.kafka.deadLetter.topic",
            "reserved",
        ),
        (
            "env-other-table",
            json!({"spec": {"sink": {"env": {"CLICKHOUSE_TABLE": "another_teams_table"}}}}),
            "spec.sink.env",
            "the operator writes from the spec",
        ),
        ("ftp-clickhouse", json!({"spec": {"clickhouse": {"url": "ftp://ch:21"}}}), "spec.clickhouse.url", "http://"),
        ("odd-bucket", json!({"spec": {"slo": {"latencyThresholdMs": 7}}}), "spec.slo.latencyThresholdMs", "bucket"),
    ];
    for (name, patch, field, text) in cel_cases {
        let mut body = valid(name);
        merge(&mut body, &patch);
        let error = create_raw(&stack, &ns, &body).await.expect_err(&format!("{name} should be refused"));
        assert!(error.contains(field) && error.contains(text), "{name}: expected {field} and {text:?} in {error}");
    }

    // Accepted by the schema, reported by the operator as InvalidSpec naming the field.
    let long_name = "a-pipeline-name-much-longer-than-forty-chars";
    let operator_cases = [
        (
            "missing-bootstrap",
            json!({"spec": {"kafka": {"bootstrapServers": ""}}}),
            "spec.kafka.bootstrapServers: missing",
        ),
        (
            "no-port",
            json!({"spec": {"kafka": {"bootstrapServers": "kafka-without-port"}}}),
            "spec.kafka.bootstrapServers",
        ),
        (long_name, json!({}), "metadata.name"),
        ("missing-clickhouse", json!({"spec": {"clickhouse": {"url": ""}}}), "spec.clickhouse.url: missing"),
    ];
    for (name, patch, _) in &operator_cases {
        let mut body = valid(name);
        merge(&mut body, patch);
        create_raw(&stack, &ns, &body).await.unwrap_or_else(|e| panic!("{name} should pass the schema: {e}"));
    }
    for (name, _, text) in &operator_cases {
        let fp = wait_condition(&api, name, "Ready", "False", Some("InvalidSpec")).await;
        let message = &condition(&fp, "Ready").unwrap().message;
        assert!(message.contains(text), "{name}: expected {text:?} in {message:?}");
    }
    assert!(operator.is_running(), "the operator survived every invalid spec");

    // The watch keeps running: a valid pipeline still converges, and fixing an invalid one works.
    create_raw(&stack, &ns, &valid("good")).await.unwrap();
    wait_condition(&api, "good", "Ready", "True", None).await;
    let mut fixed: FlightPipeline = api.get("no-port").await.unwrap();
    fixed.spec.kafka.bootstrap_servers = stack.bootstrap.clone();
    apply(&api, &fixed).await.unwrap();
    wait_condition(&api, "no-port", "Ready", "True", None).await;
    assert!(operator.is_running());
}

fn merge(base: &mut serde_json::Value, patch: &serde_json::Value) {
    match (base, patch) {
        (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Creates a pipeline from raw JSON (bypassing the Rust types, as `kubectl create` would).
fn kubectl(args: &[&str]) -> String {
    let output = std::process::Command::new("kubectl").args(args).output().expect("kubectl");
    assert!(output.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn drift_outside_kubernetes_is_repaired_and_paused_pipelines_are_left_alone() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("drift").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = example_pipeline(&ns);
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    let topic_name = format!("{}.scl.flights", ns.name);

    // Someone drops the table and a Deployment behind the operator's back.
    stack.clickhouse().query(&format!("DROP TABLE `{}`.scl_flights", ns.database)).execute().await.unwrap();
    let deployments: Api<Deployment> = Api::namespaced(stack.client.clone(), &ns.name);
    deployments.delete("scl-query", &DeleteParams::default()).await.unwrap();
    eventually("the table and the Deployment are back", async || {
        stack.columns(&ns.database, "scl_flights").await.len() == BASE_COLUMNS.len()
            && deployments.get_opt("scl-query").await.unwrap().is_some()
    })
    .await;

    // Paused: spec changes wait; the Paused condition says why.
    fp.spec.paused = true;
    fp.spec.kafka.retention = "2d".into();
    fp.spec.query.workload.enabled = false;
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Paused", "True", Some("ReconciliationPaused")).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stack.topic(&topic_name).await.unwrap().configs.unwrap()["retention.ms"], "604800000");
    assert!(deployments.get_opt("scl-query").await.unwrap().is_some());

    // Resumed: the changes land, the switched-off component's objects go, Paused is gone.
    fp.spec.paused = false;
    apply(&api, &fp).await.unwrap();
    let resumed = wait_condition(&api, "scl", "Ready", "True", None).await;
    assert!(condition(&resumed, "Paused").is_none());
    assert_eq!(stack.topic(&topic_name).await.unwrap().configs.unwrap()["retention.ms"], "172800000");
    let services: Api<Service> = Api::namespaced(stack.client.clone(), &ns.name);
    eventually("the switched-off query's objects are gone", async || {
        deployments.get_opt("scl-query").await.unwrap().is_none()
            && services.get_opt("scl-query").await.unwrap().is_none()
    })
    .await;
    assert!(!resumed.status.unwrap().endpoints.contains_key("query"));
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn children_no_longer_wanted_are_deleted_and_only_the_pipelines_own() {
    use flightline_operator::desired::autoscaling::HpaVersion;
    use k8s_openapi::api::core::v1::ServicePort;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::api::{DynamicObject, PostParams};

    let stack = Stack::connect().await;
    let ns = stack.namespace("orphans").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    // The example: predict autoscaled by an HPA, every monitoring object on.
    let mut fp = example_pipeline(&ns);
    assert!(fp.spec.predict.workload.autoscaling.is_some());
    apply(&api, &fp).await.unwrap();
    let ready = wait_condition(&api, "scl", "Ready", "True", None).await;
    assert!(condition(&ready, "AutoscalingReady").unwrap().message.contains("predict (HPA)"));

    // Someone else's Service with the pipeline's labels, under an owner of its own, and a name
    // the pipeline's children have (`child_names`: orphans are looked up by those names).
    let config_maps: Api<ConfigMap> = Api::namespaced(stack.client.clone(), &ns.name);
    let holder = ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some("holder".into()), ..Default::default() },
        ..Default::default()
    };
    let holder = config_maps.create(&PostParams::default(), &holder).await.unwrap();
    let services: Api<Service> = Api::namespaced(stack.client.clone(), &ns.name);
    let labels: BTreeMap<String, String> =
        LABELS.split(',').map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).unwrap()).collect();
    let theirs = Service {
        metadata: kube::api::ObjectMeta {
            name: Some("scl-flightline".into()),
            labels: Some(labels),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "holder".into(),
                uid: holder.uid().unwrap(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
            ports: Some(vec![ServicePort { port: 80, ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let theirs = services.create(&PostParams::default(), &theirs).await.unwrap();

    // Predict and monitoring switched off: their objects are no longer in the desired set.
    fp.spec.predict.workload.enabled = false;
    fp.spec.monitoring.service_monitor = false;
    fp.spec.monitoring.alert_rules = false;
    fp.spec.monitoring.dashboards = false;
    apply(&api, &fp).await.unwrap();
    let dynamic = |resource| Api::<DynamicObject>::namespaced_with(stack.client.clone(), &ns.name, &resource);
    let hpas = dynamic(HpaVersion::V2.api_resource());
    let monitors = dynamic(monitoring::service_monitor_resource());
    let rules = dynamic(monitoring::prometheus_rule_resource());
    let deployments: Api<Deployment> = Api::namespaced(stack.client.clone(), &ns.name);
    eventually("predict's and monitoring's objects are gone", async || {
        deployments.get_opt("scl-predict").await.unwrap().is_none()
            && services.get_opt("scl-predict").await.unwrap().is_none()
            && hpas.get_opt("scl-predict").await.unwrap().is_none()
            && monitors.get_opt("scl-flightline").await.unwrap().is_none()
            && rules.get_opt("scl-flightline").await.unwrap().is_none()
            && config_maps.get_opt("scl-dashboard").await.unwrap().is_none()
    })
    .await;
    let fp = wait_condition(&api, "scl", "Ready", "True", None).await;
    assert_eq!(condition(&fp, "AutoscalingReady").unwrap().reason, "FixedReplicas");
    let monitoring = &condition(&fp, "MonitoringReady").unwrap().message;
    assert_eq!(monitoring, "pods carry prometheus.io/* scrape annotations");
    assert!(!fp.status.unwrap().endpoints.contains_key("predict"));

    // The rest of the pipeline stays, and so does someone else's Service, untouched, several resyncs later.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let names = |list: Vec<Deployment>| list.iter().map(|d| d.name_any()).collect::<Vec<_>>();
    assert_eq!(names(children::<Deployment>(&stack, &ns).await), ["scl-ingest", "scl-query", "scl-sink"]);
    let settings = children::<ConfigMap>(&stack, &ns).await;
    assert_eq!(settings.iter().map(|c| c.name_any()).collect::<Vec<_>>(), ["scl-pipeline"]);
    let now = services.get("scl-flightline").await.expect("someone else's Service survives");
    assert_eq!(now.resource_version(), theirs.resource_version());
    assert!(config_maps.get_opt("holder").await.unwrap().is_some());
}

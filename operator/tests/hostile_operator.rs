//! End-to-end tests of the operator's limits against the local stack: what a pipeline may ask for
//! (endpoints, images, sizes, TTLs), children that must not take over someone else's objects, and
//! the per-component limits reaching the running services. Run them with `dev/test`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use flightline_operator::crd::{FlightPipeline, HttpLimits, SecretKeyRefs};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Event, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams};
use support::*;

/// The example pipeline under another name, with a topic and table of its own.
fn named(ns: &TestNamespace, name: &str) -> FlightPipeline {
    let mut fp = example_pipeline(ns);
    fp.metadata.name = Some(name.into());
    fp.spec.kafka.topic = format!("{}.{name}", ns.name);
    fp.spec.clickhouse.table = name.replace('-', "_");
    fp
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn pipelines_beyond_the_operators_limits_are_invalid_and_touch_nothing() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("limits").await;
    // The harness allows the local stack's endpoints and no other; the size limits are the flags' defaults.
    let mut operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);

    type Mutation = fn(&mut FlightPipeline);
    let cases: [(&str, Mutation, &str); 8] = [
        (
            "foreign-kafka",
            |fp| fp.spec.kafka.bootstrap_servers = "127.0.0.1:1".into(),
            "spec.kafka.bootstrapServers: \"127.0.0.1:1\" is not allowed by the operator (--allowed-kafka-bootstrap-servers",
        ),
        (
            "foreign-clickhouse",
            |fp| fp.spec.clickhouse.url = "http://127.0.0.1:1".into(),
            "spec.clickhouse.url: \"http://127.0.0.1:1\" is not allowed by the operator (--allowed-clickhouse-urls",
        ),
        (
            "foreign-image",
            |fp| fp.spec.query.workload.image = "registry.evil.example/flightline-query:latest".into(),
            "spec.query.image: \"registry.evil.example/flightline-query:latest\" is not allowed by the operator \
             (--allowed-image-prefixes",
        ),
        // Tens of thousands of days: scheduled_at + TTL would wrap past 2106 and expire every row.
        (
            "endless-ttl",
            |fp| fp.spec.clickhouse.ttl = "60000d".into(),
            "spec.clickhouse.ttl: 60000d is more than 1863d",
        ),
        (
            "many-partitions",
            |fp| fp.spec.kafka.partitions = 101,
            "spec.kafka.partitions: 101 is more than the operator allows (--max-partitions 100)",
        ),
        (
            "huge-body",
            |fp| fp.spec.ingest.max_body_bytes = 1 << 30,
            "spec.ingest.maxBodyBytes: 1073741824 is more than the operator allows (--max-body-bytes 16777216)",
        ),
        (
            "many-pods",
            |fp| fp.spec.sink.workload.replicas = 50,
            "spec.sink.replicas: 50 is more than the operator allows (--max-replicas 20)",
        ),
        // A value the service would refuse at start: not a crash loop, the operator says why.
        (
            "no-connections",
            |fp| drop(fp.spec.predict.workload.env.insert("HTTP_MAX_CONNECTIONS".into(), "0".into())),
            "spec.predict.env: HTTP_MAX_CONNECTIONS=\"0\": 0 is not in 1..",
        ),
    ];
    for (name, mutate, _) in &cases {
        let mut fp = named(&ns, name);
        mutate(&mut fp);
        apply(&api, &fp).await.unwrap_or_else(|e| panic!("{name} passes the CRD schema: {e}"));
    }
    for (name, _, text) in &cases {
        let fp = wait_condition(&api, name, "Ready", "False", Some("InvalidSpec")).await;
        let message = &condition(&fp, "Ready").unwrap().message;
        assert!(message.contains(text), "{name}: expected {text:?} in {message:?}");
        // Nothing was made for an invalid pipeline: no topic, no table, no workloads.
        assert!(stack.topic(&format!("{}.{name}", ns.name)).await.is_none(), "{name}: a topic was created");
        assert_eq!(stack.engine_full(&ns.database, &name.replace('-', "_")).await, None, "{name}: a table was created");
        let deployments: Api<Deployment> = Api::namespaced(stack.client.clone(), &ns.name);
        let selector = format!("app.kubernetes.io/instance={name}");
        assert!(deployments.list(&ListParams::default().labels(&selector)).await.unwrap().items.is_empty());
    }
    assert!(operator.is_running());

    // A container's env overrides the ConfigMap: it must not redirect a pod to another team's table
    // or lift the operator's limits. The API server refuses it (the CRD's CEL rule on env).
    for (name, component, key) in
        [("env-other-table", "sink", "CLICKHOUSE_TABLE"), ("env-huge-body", "ingest", "INGEST_MAX_BODY_BYTES")]
    {
        let mut fp = serde_json::to_value(named(&ns, name)).unwrap();
        fp["spec"][component]["env"] = serde_json::json!({ key: "another_teams_table_or_2000000000" });
        let error = create_raw(&stack, &ns, &fp).await.expect_err(&format!("{name} is refused at admission"));
        let field = format!("spec.{component}.env");
        assert!(error.contains(&field) && error.contains("the operator writes from the spec"), "{name}: {error}");
    }

    // However many problems a spec has, the status and the Event carry at most 1 KiB of them.
    let mut fp = named(&ns, "many-problems");
    fp.spec.kafka.bootstrap_servers = (0..150).map(|n| format!("x{n}")).collect::<Vec<_>>().join(",");
    apply(&api, &fp).await.unwrap();
    let fp = wait_condition(&api, "many-problems", "Ready", "False", Some("InvalidSpec")).await;
    for c in &fp.status.as_ref().unwrap().conditions {
        assert!(c.message.len() <= 1024 && c.message.ends_with('…'), "{}: {} bytes", c.type_, c.message.len());
    }
    let events: Api<Event> = Api::namespaced(stack.client.clone(), &ns.name);
    let invalid_event = async || {
        let events = events.list(&ListParams::default()).await.unwrap().items;
        events.into_iter().find_map(|e| {
            (e.involved_object.name.as_deref() == Some("many-problems") && e.reason.as_deref() == Some("InvalidSpec"))
                .then_some(e.message.unwrap_or_default())
        })
    };
    eventually("an InvalidSpec event", async || invalid_event().await.is_some()).await;
    let note = invalid_event().await.unwrap();
    assert!(note.len() <= 1024 && note.starts_with("spec.kafka.bootstrapServers"), "{note}");

    // Within the limits the same operator builds the pipeline.
    let mut fixed: FlightPipeline = api.get("endless-ttl").await.unwrap();
    fixed.spec.clickhouse.ttl = "1863d".into();
    apply(&api, &fixed).await.unwrap();
    wait_condition(&api, "endless-ttl", "ClickHouseReady", "True", None).await;
    let engine = stack.engine_full(&ns.database, "endless_ttl").await.expect("table created");
    assert!(engine.contains("toIntervalDay(1863)"), "{engine}");
}

/// A Deployment made by hand, not by Flightline: no pods (0 replicas), its own labels.
fn hand_made(name: &str) -> Deployment {
    let labels = BTreeMap::from([("app".to_string(), "by-hand".to_string())]);
    Deployment {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        spec: DeploymentSpec {
            replicas: Some(0),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..LabelSelector::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..ObjectMeta::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some("example.org/someone-elses-app:1".into()),
                        ..Container::default()
                    }],
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn an_existing_deployment_of_a_childs_name_is_reported_not_taken_over() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("takeover").await;
    let deployments: Api<Deployment> = Api::namespaced(stack.client.clone(), &ns.name);
    let params = PostParams { field_manager: Some("someone-else".into()), ..PostParams::default() };
    let theirs = deployments.create(&params, &hand_made("scl-query")).await.expect("create the hand-made Deployment");

    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    apply(&api, &example_pipeline(&ns)).await.unwrap();
    let fp = wait_condition(&api, "scl", "WorkloadsAvailable", "False", Some("ResourceConflict")).await;
    let message = &condition(&fp, "WorkloadsAvailable").unwrap().message;
    assert!(
        message.contains("Deployment scl-query exists and is not controlled by this pipeline")
            && message.contains("someone-else"),
        "{message}"
    );
    // Ready carries the conflict, and an Event says it.
    let fp = wait_condition(&api, "scl", "Ready", "False", Some("ResourceConflict")).await;
    assert!(condition(&fp, "Ready").unwrap().message.contains("scl-query"));
    let events: Api<Event> = Api::namespaced(stack.client.clone(), &ns.name);
    let conflict_event = async || {
        let events = events.list(&ListParams::default()).await.unwrap().items;
        events.into_iter().any(|e| {
            e.reason.as_deref() == Some("ResourceConflict")
                && e.involved_object.name.as_deref() == Some("scl")
                && e.message.as_deref().is_some_and(|m| m.contains("scl-query"))
        })
    };
    eventually("a ResourceConflict event", conflict_event).await;

    // The rest of the pipeline is built, owned by it.
    let uid = fp.uid().unwrap();
    for name in ["scl-ingest", "scl-sink", "scl-predict"] {
        let ours = deployments.get(name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ours.owner_references()[0].uid, uid, "{name}");
    }

    // The hand-made Deployment has the spec it was made with, and no field of Flightline's. Several
    // resyncs later (every 2 s here) nothing has written it at all: the same resourceVersion (its
    // status was written by the Deployment controller before, if at all).
    let seen = deployments.get("scl-query").await.unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let now = deployments.get("scl-query").await.unwrap();
    assert_eq!(now.resource_version(), seen.resource_version());
    assert_eq!(now.spec, theirs.spec);
    let managers: Vec<_> = now.metadata.managed_fields.iter().flatten().filter_map(|m| m.manager.clone()).collect();
    assert!(managers.contains(&"someone-else".to_string()), "{managers:?}");
    assert!(!managers.iter().any(|m| m.starts_with("flightline")), "{managers:?}");
    assert!(now.owner_references().is_empty());
    assert!(!now.labels().contains_key("app.kubernetes.io/managed-by"));

    // Once its owner removes it, the pipeline builds its own query Deployment and becomes ready.
    deployments.delete("scl-query", &DeleteParams::default()).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;
    let ours = deployments.get("scl-query").await.unwrap();
    assert_eq!(ours.owner_references()[0].uid, uid);
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn existing_config_maps_of_a_childs_name_are_left_alone_and_no_pod_reads_someone_elses_settings() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("cmtakeover").await;
    let config_maps: Api<ConfigMap> = Api::namespaced(stack.client.clone(), &ns.name);
    let by_hand = |name: &str| ConfigMap {
        metadata: ObjectMeta { name: Some(name.into()), ..ObjectMeta::default() },
        data: Some(BTreeMap::from([("KAFKA_TOPIC".to_string(), "someone-elses".to_string())])),
        ..ConfigMap::default()
    };
    let params = PostParams { field_manager: Some("someone-else".into()), ..PostParams::default() };
    // The settings ConfigMap every pod reads, and the dashboard's.
    let settings = config_maps.create(&params, &by_hand("scl-pipeline")).await.unwrap();
    let dashboard = config_maps.create(&params, &by_hand("scl-dashboard")).await.unwrap();

    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    apply(&api, &example_pipeline(&ns)).await.unwrap();
    let fp = wait_condition(&api, "scl", "WorkloadsAvailable", "False", Some("ResourceConflict")).await;
    let message = &condition(&fp, "WorkloadsAvailable").unwrap().message;
    assert!(message.starts_with("ConfigMap scl-pipeline exists and is not controlled by this pipeline"), "{message}");
    let fp = wait_condition(&api, "scl", "MonitoringReady", "False", Some("ResourceConflict")).await;
    assert!(condition(&fp, "MonitoringReady").unwrap().message.contains("ConfigMap scl-dashboard"));
    // Each conflict has its Event, the one behind Ready's first failure too.
    let events: Api<Event> = Api::namespaced(stack.client.clone(), &ns.name);
    for object in ["ConfigMap scl-pipeline", "ConfigMap scl-dashboard"] {
        let noted = async || {
            let events = events.list(&ListParams::default()).await.unwrap().items;
            events.iter().any(|e| {
                e.reason.as_deref() == Some("ResourceConflict")
                    && e.message.as_deref().is_some_and(|m| m.contains(&format!("{object} exists")))
            })
        };
        eventually(&format!("a ResourceConflict event about {object}"), noted).await;
    }

    // No workload was started on someone else's settings, and both ConfigMaps are untouched.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let deployments: Api<Deployment> = Api::namespaced(stack.client.clone(), &ns.name);
    let ours = deployments.list(&ListParams::default().labels("app.kubernetes.io/instance=scl")).await.unwrap();
    assert!(ours.items.is_empty(), "{:?}", ours.items.iter().map(|d| d.name_any()).collect::<Vec<_>>());
    for before in [settings, dashboard] {
        let now = config_maps.get(&before.name_any()).await.unwrap();
        assert_eq!(now.resource_version(), before.resource_version(), "{}", before.name_any());
        assert_eq!(now.data, before.data);
        assert!(now.owner_references().is_empty());
    }
}

/// The environment a pod's process actually runs with: its process on this machine (`pod_pid`: a
/// process of node.py's, or the process in a container of the real node).
async fn process_env(stack: &Stack, ns: &TestNamespace, component: &str) -> BTreeMap<String, String> {
    let pid = pod_pid(stack, ns, "scl", component).await;
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read the process environment");
    environ
        .split(|b| *b == 0)
        .filter_map(|kv| String::from_utf8_lossy(kv).split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn limits_and_query_credentials_reach_the_running_services() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("envlimits").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    // Query's own ClickHouse user (the local ClickHouse accepts any user).
    let secrets: Api<Secret> = Api::namespaced(stack.client.clone(), &ns.name);
    let reader = Secret {
        metadata: ObjectMeta { name: Some("scl-reader".into()), ..ObjectMeta::default() },
        string_data: Some(BTreeMap::from([
            ("username".to_string(), "flightline_reader".to_string()),
            ("password".to_string(), "reader-password".to_string()),
        ])),
        ..Secret::default()
    };
    secrets.create(&PostParams::default(), &reader).await.unwrap();

    let mut fp = example_pipeline(&ns);
    fp.spec.ingest.limits = HttpLimits {
        requests_per_second: Some(7),
        burst: Some(9),
        max_concurrent_requests: Some(3),
        request_timeout_seconds: Some(11),
    };
    fp.spec.ingest.max_records = 500;
    fp.spec.sink.max_batch_bytes = 65_536;
    fp.spec.query.max_execution_seconds = 4;
    fp.spec.query.limits.burst = Some(123);
    fp.spec.query.credentials_secret = Some(SecretKeyRefs {
        name: "scl-reader".into(),
        username_key: "username".into(),
        password_key: "password".into(),
    });
    // The kubelet would expand `$(CLICKHOUSE_PASSWORD)` in a value: the service gets the text.
    let note = "x$(CLICKHOUSE_PASSWORD)$$y";
    fp.spec.query.workload.env.insert("FLIGHTLINE_NOTE".into(), note.into());
    let api = pipelines(&stack, &ns);
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "Ready", "True", None).await;

    let get = |env: &BTreeMap<String, String>, key: &str| env.get(key).cloned().unwrap_or_else(|| "unset".into());
    let limits = [
        "HTTP_RATE_LIMIT_RPS",
        "HTTP_RATE_LIMIT_BURST",
        "HTTP_MAX_CONCURRENT_REQUESTS",
        "HTTP_REQUEST_TIMEOUT_SECONDS",
    ];
    for (component, want) in [
        ("ingest", ["7", "9", "3", "11"]),
        // Query: its defaults, except the burst it sets.
        ("query", ["1000", "123", "64", "15"]),
        ("predict", ["1000", "2000", "64", "10"]),
    ] {
        let env = process_env(&stack, &ns, component).await;
        let got: Vec<String> = limits.iter().map(|k| get(&env, k)).collect();
        assert_eq!(got, want, "{component}");
    }
    // Pipeline-wide settings come from the ConfigMap, each pod holding those its service reads.
    for (component, key, want) in [
        ("ingest", "INGEST_MAX_RECORDS", "500"),
        ("sink", "SINK_MAX_BATCH_BYTES", "65536"),
        ("query", "QUERY_MAX_EXECUTION_SECONDS", "4"),
        ("query", "INGEST_MAX_RECORDS", "unset"),
        ("predict", "SINK_MAX_BATCH_BYTES", "unset"),
        // Written when Kafka is plaintext too, so no key a pod names ever leaves the ConfigMap.
        ("ingest", "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
        ("sink", "KAFKA_SASL_MECHANISM", ""),
        ("query", "FLIGHTLINE_NOTE", note),
    ] {
        assert_eq!(get(&process_env(&stack, &ns, component).await, key), want, "{component} {key}");
    }
    let query = process_env(&stack, &ns, "query").await;
    assert_eq!(
        (get(&query, "CLICKHOUSE_USER"), get(&query, "CLICKHOUSE_PASSWORD")),
        ("flightline_reader".into(), "reader-password".into())
    );
    // The pipeline names no ClickHouse credentials of its own, so only query has a user.
    let ingest = process_env(&stack, &ns, "ingest").await;
    assert_eq!(get(&ingest, "CLICKHOUSE_USER"), "unset");

    // And query serves with them.
    let addr = service_addr(&stack, &ns, "scl", "query").await;
    let (status, body) = http("GET", &addr, "/v1/stats/delays?by=airline", &[], b"").await;
    assert_eq!(status, 200, "{body}");
}

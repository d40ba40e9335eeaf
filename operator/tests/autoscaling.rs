//! End-to-end tests of autoscaling against the local control plane: the HPA API version chosen by
//! discovery, HPAs that follow the spec, a sink never scaled past its partitions, no replicas fight
//! with the autoscaler, KEDA ScaledObjects when KEDA is there, and the predict HPA really scaling
//! on its request rate through the local prometheus-adapter (custom.metrics.k8s.io).

mod support;

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flightline_operator::crd::{AutoscalingProvider, AutoscalingSpec};
use flightline_operator::desired::autoscaling::{HpaVersion, scaled_object_resource};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;
use support::*;

fn kubectl(args: &[&str]) {
    let status = Command::new("kubectl").args(args).status().expect("kubectl");
    assert!(status.success(), "kubectl {}", args.join(" "));
}

async fn served_autoscaling_versions(stack: &Stack) -> Vec<String> {
    let groups = stack.client.list_api_groups().await.unwrap();
    let group = groups.groups.into_iter().find(|g| g.name == "autoscaling").expect("autoscaling group");
    group.versions.into_iter().map(|v| v.version).collect()
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn hpas_follow_the_spec_and_leave_replicas_to_the_autoscaler() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("hpa").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);

    // Kubernetes 1.20 has no autoscaling/v2: the operator must fall back to v2beta2.
    let versions = served_autoscaling_versions(&stack).await;
    let version = if versions.iter().any(|v| v == "v2") { HpaVersion::V2 } else { HpaVersion::V2beta2 };
    let resource = version.api_resource();
    assert!(versions.contains(&resource.version), "served: {versions:?}");
    let hpas: Api<DynamicObject> = Api::namespaced_with(stack.client.clone(), &ns.name, &resource);

    let mut fp = example_pipeline(&ns);
    let scaled = |max, rps, lag| AutoscalingSpec {
        provider: AutoscalingProvider::Hpa,
        min_replicas: 1,
        max_replicas: max,
        target_requests_per_second: rps,
        target_consumer_lag: lag,
        scale_down_stabilization_seconds: None,
    };
    fp.spec.predict.workload.autoscaling = Some(scaled(4, 50, 1));
    fp.spec.sink.workload.autoscaling = Some(scaled(10, 1, 5_000));
    apply(&api, &fp).await.unwrap();
    let ready = wait_condition(&api, "scl", "AutoscalingReady", "True", Some("AutoscalersApplied")).await;
    assert!(condition(&ready, "AutoscalingReady").unwrap().message.contains("predict (HPA)"));

    let spec = |hpa: &DynamicObject| hpa.data["spec"].clone();
    let predict = spec(&hpas.get("scl-predict").await.unwrap());
    assert_eq!(predict["scaleTargetRef"]["name"], "scl-predict");
    assert_eq!((predict["minReplicas"].as_i64(), predict["maxReplicas"].as_i64()), (Some(1), Some(4)));
    let metric = &predict["metrics"][0]["pods"];
    assert_eq!(metric["metric"]["name"], "flightline_predict_http_requests_per_second");
    assert_eq!(metric["target"]["averageValue"], "50");
    assert_eq!(predict["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 300);
    // The sink asked for 10 but the topic has 3 partitions.
    let sink = spec(&hpas.get("scl-sink").await.unwrap());
    assert_eq!(sink["maxReplicas"], 3);
    assert_eq!(sink["metrics"][0]["pods"]["metric"]["name"], "flightline_sink_consumer_lag");
    // The API server writes quantities canonically; the operator applies them that way.
    assert_eq!(sink["metrics"][0]["pods"]["target"]["averageValue"], "5k");
    assert!(hpas.get_opt("scl-query").await.unwrap().is_none(), "query runs fixed replicas");

    // The operator never sets replicas of an autoscaled Deployment, so an autoscaler's change stays.
    let deployments: Api<Deployment> = Api::namespaced(stack.client.clone(), &ns.name);
    let managed = deployments.get("scl-predict").await.unwrap().metadata.managed_fields.unwrap_or_default();
    let ours = managed.iter().find(|m| m.manager.as_deref() == Some("flightline-operator")).expect("our entry");
    let owned = serde_json::to_string(&ours.fields_v1).unwrap();
    assert!(!owned.contains("f:replicas"), "the operator owns spec.replicas: {owned}");
    // (No API request reaches predict in this test, so the adapter has no rate for its pods and the
    // HPA, which has no reading, leaves the scaled replicas alone.)
    kubectl(&["scale", "deployment/scl-predict", "-n", &ns.name, "--replicas=2"]);

    // A new target converges; the scaled replicas survive the reconcile.
    fp.spec.predict.workload.autoscaling = Some(scaled(6, 80, 1));
    apply(&api, &fp).await.unwrap();
    eventually("the predict HPA has the new target", async || {
        let s = spec(&hpas.get("scl-predict").await.unwrap());
        s["maxReplicas"] == 6 && s["metrics"][0]["pods"]["target"]["averageValue"] == "80"
    })
    .await;
    wait_condition(&api, "scl", "AutoscalingReady", "True", None).await;
    assert_eq!(deployments.get("scl-predict").await.unwrap().spec.replicas, Some(2));

    // Back to fixed replicas: the HPA goes, the operator sets replicas again.
    fp.spec.predict.workload.autoscaling = None;
    fp.spec.predict.workload.replicas = 1;
    apply(&api, &fp).await.unwrap();
    eventually("the predict HPA is deleted", async || hpas.get_opt("scl-predict").await.unwrap().is_none()).await;
    eventually("predict is back to 1 replica", async || {
        deployments.get("scl-predict").await.unwrap().spec.replicas == Some(1)
    })
    .await;
    assert!(hpas.get_opt("scl-sink").await.unwrap().is_some(), "the sink keeps its HPA");
}

#[tokio::test]
#[ignore = "needs the local stack: run dev/test"]
async fn keda_scaled_objects_need_keda_and_say_so() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("keda").await;
    let mut options = OperatorOptions::new(&ns.name);
    options.prometheus_url = Some("http://prometheus.monitoring.svc:9090".into());
    let _operator = Operator::start(&stack, &options);
    let api = pipelines(&stack, &ns);
    // KEDA's own CRD, from its Go module (dev/install crds).
    let cache = std::env::var("FLIGHTLINE_CACHE").expect("FLIGHTLINE_CACHE (from .flightline/env)");
    let crd = &format!("{cache}/crds/keda/keda.sh_scaledobjects.yaml");
    // This is the only test that touches KEDA's CRD (cluster-wide): start without it.
    kubectl(&["delete", "-f", crd, "--ignore-not-found", "--wait=true"]);

    let mut fp = example_pipeline(&ns);
    fp.spec.query.workload.autoscaling = Some(AutoscalingSpec {
        provider: AutoscalingProvider::Keda,
        min_replicas: 2,
        max_replicas: 5,
        target_requests_per_second: 30,
        ..AutoscalingSpec::default()
    });
    apply(&api, &fp).await.unwrap();
    let missing = wait_condition(&api, "scl", "AutoscalingReady", "False", Some("ProviderMissing")).await;
    assert!(condition(&missing, "AutoscalingReady").unwrap().message.contains("KEDA is not installed"));
    assert_eq!(condition(&missing, "Ready").unwrap().status, "False");

    kubectl(&["apply", "--server-side", "-f", crd]);
    // Polled, not `kubectl wait`: that fails at once on a CRD whose status has no conditions yet.
    let crds: Api<CustomResourceDefinition> = Api::all(stack.client.clone());
    eventually("the ScaledObject CRD is Established", async || {
        let crd = crds.get("scaledobjects.keda.sh").await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        conditions.iter().any(|c| c.type_ == "Established" && c.status == "True")
    })
    .await;
    // Discovery runs on every reconcile; the test operator resyncs every 2 s.
    wait_condition(&api, "scl", "AutoscalingReady", "True", Some("AutoscalersApplied")).await;
    let resource = scaled_object_resource();
    let scaled_objects: Api<DynamicObject> = Api::namespaced_with(stack.client.clone(), &ns.name, &resource);
    let object = scaled_objects.get("scl-query").await.unwrap();
    let spec: &Value = &object.data["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"], "scl-query");
    assert_eq!((spec["minReplicaCount"].as_i64(), spec["maxReplicaCount"].as_i64()), (Some(2), Some(5)));
    assert_eq!(spec["fallback"]["replicas"], 2);
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    assert_eq!(trigger["metadata"]["serverAddress"], "http://prometheus.monitoring.svc:9090");
    assert_eq!(trigger["metadata"]["threshold"], "30");
    let query = trigger["metadata"]["query"].as_str().unwrap();
    assert!(query.contains(&format!(r#"namespace="{}",pipeline="scl""#, ns.name)), "{query}");
    assert!(query.starts_with("sum(rate(flightline_query_http_requests_total{"), "{query}");
    wait_condition(&api, "scl", "Ready", "True", None).await;
}

const PREDICTION: &[u8] = br#"{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"I","MES":7}]}"#;
/// Requests per second one predict pod should serve in the scaling test.
const TARGET_PER_POD: i32 = 5;
/// The steady load: twice the target, so the HPA wants exactly 2 pods (one would serve 10/s, two 5/s).
const LOAD_PER_SECOND: u64 = 10;

/// The IPs of the Ready, not terminating pods of a pipeline's component.
async fn ready_pod_ips(pods: &Api<Pod>, component: &str) -> BTreeSet<String> {
    let selector = format!("app.kubernetes.io/instance=scl,app.kubernetes.io/component={component}");
    let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else { return BTreeSet::new() };
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status?;
            let ready = status.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(status.pod_ip).flatten()
        })
        .collect()
}

/// `LOAD_PER_SECOND` predictions a second, round-robin over the Ready predict pods' IPs (the host
/// reaches them directly: the real node's CNI bridge, or node.py's 127.0.1.N; there is no
/// kube-proxy, so the test balances as a Service would); the pod list is refreshed every second.
/// Stops when dropped.
struct Load {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Load {
    fn start(pods: Api<Pod>) -> Self {
        let targets = Arc::new(tokio::sync::RwLock::new(Vec::<String>::new()));
        let refresh = {
            let targets = targets.clone();
            tokio::spawn(async move {
                loop {
                    let ips = ready_pod_ips(&pods, "predict").await;
                    if !ips.is_empty() {
                        *targets.write().await = ips.into_iter().map(|ip| format!("{ip}:8080")).collect();
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            })
        };
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let send = {
            let (ok, failed) = (ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(1000 / LOAD_PER_SECOND));
                for n in 0usize.. {
                    tick.tick().await;
                    let targets = targets.read().await.clone();
                    if targets.is_empty() {
                        continue;
                    }
                    let addr = targets[n % targets.len()].clone();
                    let (ok, failed) = (ok.clone(), failed.clone());
                    tokio::spawn(async move {
                        let answer = tokio::time::timeout(Duration::from_secs(5), post_prediction(&addr)).await;
                        let counter = if matches!(answer, Ok(200)) { ok } else { failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    });
                }
            })
        };
        Self { tasks: vec![refresh, send], ok, failed }
    }

    fn counts(&self) -> (u64, u64) {
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One POST /predict; the status (0 when the connection failed).
async fn post_prediction(addr: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return 0 };
    let head = format!(
        "POST /predict HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        PREDICTION.len()
    );
    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(PREDICTION).await.is_err() {
        return 0;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// `kubectl get hpa NAME` as a user sees it.
fn kubectl_get_hpa(ns: &str, name: &str) -> String {
    let out = Command::new("kubectl").args(["get", "hpa", name, "-n", ns]).output().expect("kubectl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What the HPA last read: the average per pod (a quantity such as `9800m`), desired replicas.
fn hpa_reading(hpa: &DynamicObject) -> (Option<String>, i64) {
    let status = &hpa.data["status"];
    let current = status["currentMetrics"][0]["pods"]["current"]["averageValue"].as_str().map(String::from);
    (current, status["desiredReplicas"].as_i64().unwrap_or(0))
}

/// A quantity as the API server writes it (`9800m`, `10`, `5k`) as a number.
fn quantity_value(q: &str) -> f64 {
    let (number, scale) = match q.strip_suffix('m') {
        Some(n) => (n, 1e-3),
        None => match q.strip_suffix('k') {
            Some(n) => (n, 1e3),
            None => (q, 1.0),
        },
    };
    number.parse::<f64>().expect("a quantity") * scale
}

#[test]
fn quantities_read_back() {
    assert_eq!(quantity_value("9800m"), 9.8);
    assert_eq!(quantity_value("10"), 10.0);
    assert_eq!(quantity_value("5k"), 5000.0);
}

/// Polls every 2 s for up to `limit`; panics with `state()` when it runs out.
async fn within(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool, state: impl AsyncFn() -> String) {
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting until {what}; {}", state().await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

#[tokio::test]
#[ignore = "needs the local stack with Prometheus and prometheus-adapter: run dev/test"]
async fn predict_scales_out_on_request_rate_and_back_in_when_the_load_stops() {
    let stack = Stack::connect().await;
    let groups = stack.client.list_api_groups().await.unwrap();
    assert!(
        groups.groups.iter().any(|g| g.name == "custom.metrics.k8s.io"),
        "custom.metrics.k8s.io is not served: start prometheus-adapter (dev/stack start-monitoring)"
    );
    let ns = stack.namespace("hpa-scale").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let resource = HpaVersion::V2.api_resource();
    let hpas: Api<DynamicObject> = Api::namespaced_with(stack.client.clone(), &ns.name, &resource);
    let deployments: Api<Deployment> = Api::namespaced(stack.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), &ns.name);

    let mut fp = example_pipeline(&ns);
    fp.spec.predict.workload.autoscaling = Some(AutoscalingSpec {
        provider: AutoscalingProvider::Hpa,
        min_replicas: 1,
        max_replicas: 3,
        target_requests_per_second: TARGET_PER_POD,
        // Kubernetes' 300 s would make the test wait 5 minutes for the way back.
        scale_down_stabilization_seconds: Some(15),
        ..AutoscalingSpec::default()
    });
    apply(&api, &fp).await.unwrap();
    wait_condition(&api, "scl", "AutoscalingReady", "True", Some("AutoscalersApplied")).await;
    let hpa = hpas.get("scl-predict").await.unwrap();
    assert_eq!(hpa.data["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"], 15);
    assert_eq!(hpa.data["spec"]["metrics"][0]["pods"]["target"]["averageValue"], TARGET_PER_POD.to_string());
    eventually("one ready predict pod", async || ready_pod_ips(&pods, "predict").await.len() == 1).await;

    let state = async || {
        let hpa = hpas.get("scl-predict").await.map(|h| h.data["status"].clone()).unwrap_or_default();
        let replicas = deployments.get("scl-predict").await.ok().and_then(|d| d.spec.replicas);
        format!(
            "deployment replicas {replicas:?}, ready pods {:?}, HPA status {hpa}",
            ready_pod_ips(&pods, "predict").await
        )
    };

    // Load above the target: the HPA reads the live rate through the adapter and adds a pod.
    let started = Instant::now();
    let load = Load::start(pods.clone());
    within(
        Duration::from_secs(240),
        "the HPA reads the request rate",
        async || {
            let hpa = hpas.get("scl-predict").await.unwrap();
            hpa_reading(&hpa).0.is_some_and(|v| quantity_value(&v) > f64::from(TARGET_PER_POD))
        },
        state,
    )
    .await;
    let read_after = started.elapsed();
    within(
        Duration::from_secs(240),
        "predict runs at least 2 ready pods",
        async || ready_pod_ips(&pods, "predict").await.len() >= 2,
        state,
    )
    .await;
    let up_after = started.elapsed();
    // `kubectl get hpa` shows the live value per pod against the target, not <unknown>.
    let shown = kubectl_get_hpa(&ns.name, "scl-predict");
    println!("scale-up: the HPA read the load after {read_after:?}, 2 ready pods after {up_after:?}\n{shown}");
    assert!(!shown.contains("<unknown>"), "{shown}");
    let targets = shown.lines().nth(1).and_then(|l| l.split_whitespace().nth(2)).unwrap_or_default().to_string();
    assert!(targets.ends_with(&format!("/{TARGET_PER_POD}")), "TARGETS column: {targets}\n{shown}");
    // Twice the target needs two pods; the requests are spread over both and keep being answered.
    let ips = ready_pod_ips(&pods, "predict").await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let (ok, failed) = load.counts();
    assert!(ok > 0 && failed * 100 <= ok, "predictions answered {ok}, failed {failed}");
    let hpa = hpas.get("scl-predict").await.unwrap();
    let (current, desired) = hpa_reading(&hpa);
    println!("under load: pods {ips:?}, HPA current {current:?} per pod, desired {desired}");
    assert!((2..=3).contains(&desired), "desired {desired}; {}", state().await);

    // The load stops: the 2-minute rate falls below the target, and after the 15 s window the
    // HPA goes back to one pod.
    drop(load);
    let stopped = Instant::now();
    within(
        Duration::from_secs(360),
        "predict is back to one pod",
        async || {
            let replicas = deployments.get("scl-predict").await.unwrap().spec.replicas;
            let hpa = hpas.get("scl-predict").await.unwrap();
            replicas == Some(1)
                && ready_pod_ips(&pods, "predict").await.len() == 1
                && hpa.data["status"]["currentReplicas"] == 1
        },
        state,
    )
    .await;
    let down_after = stopped.elapsed();
    let shown = kubectl_get_hpa(&ns.name, "scl-predict");
    println!("scale-down: one pod {down_after:?} after the load stopped\n{shown}");
    assert!(!shown.contains("<unknown>"), "{shown}");
    let (current, desired) = hpa_reading(&hpas.get("scl-predict").await.unwrap());
    assert_eq!(desired, 1);
    assert!(current.is_some_and(|v| quantity_value(&v) <= f64::from(TARGET_PER_POD)), "{}", state().await);
}

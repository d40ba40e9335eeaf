//! End-to-end test of monitoring against the local stack's real Prometheus and Alertmanager: the
//! operator's ServiceMonitor, PrometheusRule and dashboard ConfigMap; Prometheus scraping the
//! pipeline's pods and evaluating its rules; the prometheus-adapter query under a known load;
//! every dashboard panel query answering; and the fast-burn alert reaching Alertmanager when the
//! fault switch fails predict, then resolving when it is switched off.
//!
//! The pipeline uses a 12-hour SLO window so that the page windows are 1 minute and 30 seconds
//! (the 30-day recipe scaled, with a 30-second floor) and the drill takes minutes, not hours.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flightline_operator::desired::monitoring::{prometheus_rule_resource, service_monitor_resource};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};
use support::*;

const PREDICTION: &[u8] = br#"{"flights":[{"OPERA":"Aerolineas Argentinas","TIPOVUELO":"N","MES":3}]}"#;
const LOAD_PER_SECOND: u64 = 20;

fn env_url(name: &str) -> String {
    let url = std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run through dev/test"));
    url.trim_start_matches("http://").trim_end_matches('/').to_string()
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query's result vector.
async fn prom_query(query: &str) -> Vec<Value> {
    let (status, body) =
        http("GET", &env_url("PROMETHEUS_URL"), &format!("/api/v1/query?query={}", encode(query)), &[], b"").await;
    assert_eq!(status, 200, "{query}: {body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    answer["data"]["result"].as_array().cloned().unwrap_or_default()
}

async fn prom_value(query: &str) -> Option<f64> {
    prom_query(query).await.first().and_then(|s| s["value"][1].as_str()?.parse().ok())
}

/// Active alerts with this name for the namespace, as Alertmanager has them.
async fn active_alerts(alertname: &str, namespace: &str) -> Vec<Value> {
    let filter = encode(&format!(r#"alertname="{alertname}""#));
    let ns = encode(&format!(r#"namespace="{namespace}""#));
    let path = format!("/api/v2/alerts?filter={filter}&filter={ns}&active=true&silenced=false&inhibited=false");
    let (status, body) = http("GET", &env_url("ALERTMANAGER_URL"), &path, &[], b"").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Vec<Value>>(&body)
        .unwrap()
        .into_iter()
        .filter(|a| a["status"]["state"] == "active")
        .collect()
}

/// Polls with a longer deadline than `eventually` (alerts take minutes).
async fn within(minutes: u64, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(minutes * 60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {minutes} min waiting until {what}");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Sends `LOAD_PER_SECOND` predictions a second to whichever predict pod is ready, until dropped.
struct Load {
    task: tokio::task::JoinHandle<()>,
    answers: Arc<[AtomicU64; 2]>,
}

impl Load {
    fn start(target: Arc<tokio::sync::RwLock<String>>) -> Self {
        let answers: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let counts = answers.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / LOAD_PER_SECOND));
            loop {
                tick.tick().await;
                let addr = target.read().await.clone();
                let counts = counts.clone();
                tokio::spawn(async move {
                    let Ok(Ok(mut stream)) =
                        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&addr)).await
                    else {
                        return;
                    };
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let head = format!(
                        "POST /predict HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                        PREDICTION.len()
                    );
                    if stream.write_all(head.as_bytes()).await.is_err() || stream.write_all(PREDICTION).await.is_err() {
                        return;
                    }
                    let mut response = String::new();
                    let _ = stream.read_to_string(&mut response).await;
                    let ok = response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200");
                    counts[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        Self { task, answers }
    }

    fn counts(&self) -> (u64, u64) {
        (self.answers[0].load(Ordering::Relaxed), self.answers[1].load(Ordering::Relaxed))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits until a new predict pod is ready after a rollout and points the load at it.
async fn follow_rollout(stack: &Stack, ns: &TestNamespace, target: &tokio::sync::RwLock<String>, what: &str) {
    let old = target.read().await.clone();
    within(2, what, async || {
        let now = service_addr(stack, ns, "scl", "predict").await;
        *target.write().await = now.clone();
        now != old
    })
    .await;
}

/// Registers the test's operator with the local Prometheus (file-based discovery).
struct ScrapeTarget(std::path::PathBuf);

impl ScrapeTarget {
    fn register(operator: &Operator, name: &str) -> Self {
        let state = std::env::var("FLIGHTLINE_STATE")
            .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../.flightline").to_string());
        let path = std::path::PathBuf::from(format!("{state}/prometheus/targets/e2e-{name}.json"));
        let targets =
            json!([{"targets": [format!("127.0.0.1:{}", operator.metrics_port)], "labels": {"instance_name": name}}]);
        std::fs::write(&path, targets.to_string()).expect("write the file_sd target");
        Self(path)
    }
}

impl Drop for ScrapeTarget {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test]
#[ignore = "needs the local stack with Prometheus and Alertmanager: run dev/test"]
async fn prometheus_scrapes_the_pipeline_evaluates_its_slo_rules_and_pages_on_fast_burn() {
    let stack = Stack::connect().await;
    let ns = stack.namespace("monitoring").await;
    let operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let _target = ScrapeTarget::register(&operator, &ns.name);
    let api = pipelines(&stack, &ns);
    let mut fp = example_pipeline(&ns);
    fp.spec.slo.window = "12h".into();
    fp.spec.predict.workload.autoscaling = None;
    apply(&api, &fp).await.unwrap();
    let ready = wait_condition(&api, "scl", "Ready", "True", None).await;
    let monitoring = condition(&ready, "MonitoringReady").unwrap();
    assert!(monitoring.message.contains("ServiceMonitor scl-flightline"), "{}", monitoring.message);

    // The objects, as the prometheus-operator and Grafana's sidecar would find them.
    let rules: Api<DynamicObject> = Api::namespaced_with(stack.client.clone(), &ns.name, &prometheus_rule_resource());
    let rule = rules.get("scl-flightline").await.unwrap();
    let groups = rule.data["spec"]["groups"].as_array().unwrap();
    assert!(
        groups.iter().any(|g| g["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["alert"] == "FlightlineErrorBudgetBurnFast"))
    );
    let monitors: Api<DynamicObject> =
        Api::namespaced_with(stack.client.clone(), &ns.name, &service_monitor_resource());
    assert_eq!(monitors.get("scl-flightline").await.unwrap().data["spec"]["endpoints"][0]["port"], "http");
    let config_maps: Api<ConfigMap> = Api::namespaced(stack.client.clone(), &ns.name);
    let dashboard = config_maps.get("scl-dashboard").await.unwrap();
    assert_eq!(dashboard.metadata.labels.unwrap()["grafana_dashboard"], "1");
    assert_eq!(dashboard.metadata.annotations.unwrap()["grafana_folder"], "Flightline");

    // Traffic on every service: the data set through ingest, queries, and a steady predict load.
    let ingest = service_addr(&stack, &ns, "scl", "ingest").await;
    let query = service_addr(&stack, &ns, "scl", "query").await;
    let predict = Arc::new(tokio::sync::RwLock::new(service_addr(&stack, &ns, "scl", "predict").await));
    let load = Load::start(predict.clone());
    // A slice of the data set: enough for every data-flow panel, and light on the broker that the
    // full loads of tests/pipeline.rs share.
    let csv = data_set_csv();
    let slice: Vec<u8> = csv.split_inclusive(|b| *b == b'\n').take(2_001).flatten().copied().collect();
    let (status, body) = http("POST", &ingest, "/v1/flights", &[("Content-Type", "text/csv")], &slice).await;
    assert_eq!(status, 202, "{body}");
    for by in ["airline", "month", "destination", "period_day", "type"] {
        let (status, _) = http("GET", &query, &format!("/v1/stats/delays?by={by}"), &[], b"").await;
        assert_eq!(status, 200);
    }

    // Prometheus scrapes each pod with the pipeline's labels and evaluates the rules the syncer loaded.
    let scope = format!(r#"namespace="{}",pipeline="scl""#, ns.name);
    within(3, "Prometheus scrapes the four components", async || {
        prom_query(&format!("up{{{scope}}} == 1")).await.len() == 4
    })
    .await;
    within(3, "the SLO recording rules have values", async || {
        prom_value(&format!(r#"flightline:slo_requests:rate{{{scope},component="predict",window="1m"}}"#))
            .await
            .is_some_and(|rate| rate > 0.0)
    })
    .await;

    // The prometheus-adapter rule, rendered as the adapter renders it for the predict pod, gives
    // the rate the load generator sends (the 2-minute window needs 2 minutes of load).
    let adapter =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/prometheus-adapter-values.yaml"))
            .unwrap();
    let template = adapter
        .lines()
        .filter_map(|l| l.trim().strip_prefix("metricsQuery: '")?.strip_suffix('\''))
        .next()
        .expect("a metricsQuery");
    let adapter_query = template
        .replace("<<.Series>>", "flightline_predict_http_requests_total")
        .replace("<<.LabelMatchers>>", &format!(r#"namespace="{}",pod=~"scl-predict-.*""#, ns.name))
        .replace("<<.GroupBy>>", "pod");
    tokio::time::sleep(Duration::from_secs(130)).await;
    let per_pod = prom_value(&adapter_query).await.expect("the adapter query returns the predict pod");
    let (ok, failed) = load.counts();
    println!(
        "prometheus-adapter query: {per_pod:.2} requests/s per pod (load: {LOAD_PER_SECOND}/s, {ok} ok, {failed} failed)"
    );
    assert!((per_pod - LOAD_PER_SECOND as f64).abs() < LOAD_PER_SECOND as f64 * 0.2, "{per_pod} vs {LOAD_PER_SECOND}");

    // Every panel query of the three dashboards returns data from this Prometheus.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let check = std::process::Command::new(format!("{root}/dev/check-dashboard-queries"))
        .args([ns.name.as_str(), "scl"])
        .output()
        .expect("run dev/check-dashboard-queries");
    let report = String::from_utf8_lossy(&check.stdout);
    println!("{report}{}", String::from_utf8_lossy(&check.stderr));
    assert!(check.status.success(), "dashboard panel queries failed");

    // The drill: fail every predict request; the fast-burn page reaches Alertmanager.
    fp.spec.predict.workload.env.insert("FLIGHTLINE_FAULT_ERROR_RATIO".into(), "1".into());
    apply(&api, &fp).await.unwrap();
    let drill = std::time::Instant::now();
    follow_rollout(&stack, &ns, &predict, "a predict pod with the fault switch").await;
    within(5, "FlightlineErrorBudgetBurnFast is active in Alertmanager", async || {
        let alerts = active_alerts("FlightlineErrorBudgetBurnFast", &ns.name).await;
        alerts.iter().any(|a| a["labels"]["component"] == "predict" && a["labels"]["severity"] == "page")
    })
    .await;
    println!(
        "fast-burn page active in Alertmanager {:.0}s after the fault switch was applied",
        drill.elapsed().as_secs_f64()
    );
    let (_, failed) = load.counts();
    assert!(failed > 0, "the fault switch failed no request");

    // Recovery: the switch off, the alert resolves.
    fp.spec.predict.workload.env.remove("FLIGHTLINE_FAULT_ERROR_RATIO");
    apply(&api, &fp).await.unwrap();
    let recovery = std::time::Instant::now();
    follow_rollout(&stack, &ns, &predict, "a predict pod without the fault switch").await;
    within(5, "FlightlineErrorBudgetBurnFast resolves", async || {
        active_alerts("FlightlineErrorBudgetBurnFast", &ns.name).await.is_empty()
    })
    .await;
    println!("fast-burn page resolved {:.0}s after the fault switch was removed", recovery.elapsed().as_secs_f64());
    drop(load);
}

//! Harness for end-to-end tests against the local stack (`dev/test` starts it and exports
//! KUBECONFIG, KAFKA_BOOTSTRAP_SERVERS and CLICKHOUSE_URL). Each test gets its own namespace,
//! ClickHouse database and operator process (watching only that namespace, with its own Lease),
//! so tests run in parallel without seeing each other.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clickhouse::Row;
use flightline_operator::crd::FlightPipeline;
use flightline_operator::desired::topic::ObservedTopic;
use flightline_operator::reconcile::kafka::KafkaAdmin;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::Deserialize;

pub const TIMEOUT: Duration = Duration::from_secs(90);

pub struct Stack {
    pub client: Client,
    pub bootstrap: String,
    pub clickhouse_url: String,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the end-to-end tests through dev/test"))
}

impl Stack {
    pub async fn connect() -> Self {
        let bootstrap = env("KAFKA_BOOTSTRAP_SERVERS");
        let clickhouse_url = env("CLICKHOUSE_URL");
        env("KUBECONFIG");
        let client = Client::try_default().await.expect("a client for the local apiserver");
        Self { client, bootstrap, clickhouse_url }
    }

    pub fn clickhouse(&self) -> clickhouse::Client {
        clickhouse::Client::default().with_url(&self.clickhouse_url)
    }

    pub async fn topic(&self, name: &str) -> Option<ObservedTopic> {
        let mut admin = KafkaAdmin::connect(&self.bootstrap, Duration::from_secs(10)).await.expect("broker reachable");
        admin.describe(name).await.expect("describe topic")
    }

    pub async fn columns(&self, database: &str, table: &str) -> BTreeMap<String, String> {
        #[derive(Row, Deserialize)]
        struct Column {
            name: String,
            #[serde(rename = "type")]
            column_type: String,
        }
        self.clickhouse()
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(database)
            .bind(table)
            .fetch_all::<Column>()
            .await
            .expect("system.columns")
            .into_iter()
            .map(|c| (c.name, c.column_type))
            .collect()
    }

    pub async fn engine_full(&self, database: &str, table: &str) -> Option<String> {
        #[derive(Row, Deserialize)]
        struct Engine {
            engine_full: String,
        }
        self.clickhouse()
            .query("SELECT engine_full FROM system.tables WHERE database = ? AND name = ?")
            .bind(database)
            .bind(table)
            .fetch_all::<Engine>()
            .await
            .expect("system.tables")
            .into_iter()
            .next()
            .map(|e| e.engine_full)
    }

    /// Creates a namespace, deleted again when the guard drops.
    pub async fn namespace(&self, prefix: &str) -> TestNamespace {
        let name = format!("e2e-{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns = Namespace {
            metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        TestNamespace { database: name.replace('-', "_"), name }
    }
}

pub struct TestNamespace {
    pub name: String,
    /// A ClickHouse database of this test's own.
    pub database: String,
}

impl TestNamespace {
    /// Saves the log of every container in the namespace (the previous run's too) to
    /// `E2E_LOG_DIR/pods-<namespace>.log`, and prints each one's last warnings: a failed test's
    /// output then says what the services saw, also in CI, where the stack is gone afterwards.
    fn save_pod_logs(&self) {
        let Ok(pods) = Command::new("kubectl")
            .args(["-n", &self.name, "get", "pods", "-o", "name", "--request-timeout=10s"])
            .output()
        else {
            return;
        };
        let mut saved = String::new();
        for pod in String::from_utf8_lossy(&pods.stdout).lines() {
            for previous in ["--previous=false", "--previous=true"] {
                let Ok(out) = Command::new("kubectl")
                    .args(["-n", &self.name, "logs", pod, "--all-containers", previous, "--request-timeout=10s"])
                    .output()
                else {
                    continue;
                };
                let text = String::from_utf8_lossy(&out.stdout);
                if text.is_empty() {
                    continue;
                }
                saved.push_str(&format!("===== {pod} {previous}\n{text}"));
                let warnings: Vec<&str> =
                    text.lines().filter(|l| l.contains("\"WARN\"") || l.contains("\"ERROR\"")).collect();
                let shown = &warnings[warnings.len().saturating_sub(8)..];
                println!(
                    "{pod} {previous}: {} warnings{}",
                    warnings.len(),
                    if shown.is_empty() { "" } else { ", the last:" }
                );
                for line in shown {
                    println!("  {}", line.chars().take(400).collect::<String>());
                }
            }
        }
        let log_dir = log_dir();
        let path = format!("{log_dir}/pods-{}.log", self.name);
        if std::fs::write(&path, saved).is_ok() {
            println!("pod logs: {path}");
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.save_pod_logs();
        }
        let _ = Command::new("kubectl")
            .args(["delete", "namespace", &self.name, "--wait=false", "--ignore-not-found"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Options of a test's operator process.
pub struct OperatorOptions {
    pub namespace: String,
    pub with_defaults: bool,
    pub lease_name: String,
    pub resync_seconds: u64,
    /// `--prometheus-url` (KEDA triggers).
    pub prometheus_url: Option<String>,
}

impl OperatorOptions {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.into(),
            with_defaults: true,
            lease_name: "flightline-operator".into(),
            resync_seconds: 2,
            prometheus_url: None,
        }
    }
}

/// An operator process; killed when dropped.
pub struct Operator {
    child: Child,
    pub metrics_port: u16,
    pub identity: String,
}

impl Operator {
    pub fn start(stack: &Stack, options: &OperatorOptions) -> Self {
        let metrics_port = free_port();
        let identity = format!("op-{metrics_port}");
        let mut command = Command::new(env!("CARGO_BIN_EXE_flightline-operator"));
        command
            .arg("run")
            .env("FLIGHTLINE_WATCH_NAMESPACE", &options.namespace)
            .env("FLIGHTLINE_LEASE_NAMESPACE", &options.namespace)
            .env("FLIGHTLINE_LEASE_NAME", &options.lease_name)
            .env("FLIGHTLINE_LEASE_DURATION_SECONDS", "4")
            .env("FLIGHTLINE_RESYNC_SECONDS", options.resync_seconds.to_string())
            .env("FLIGHTLINE_IO_TIMEOUT_SECONDS", "3")
            .env("FLIGHTLINE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("POD_NAME", &identity)
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("FLIGHTLINE_KAFKA_BOOTSTRAP_SERVERS")
            .env_remove("FLIGHTLINE_PROMETHEUS_URL")
            .env_remove("FLIGHTLINE_CLICKHOUSE_URL")
            .stdout(Stdio::null());
        if let Some(url) = &options.prometheus_url {
            command.env("FLIGHTLINE_PROMETHEUS_URL", url);
        }
        if options.with_defaults {
            command
                .env("FLIGHTLINE_KAFKA_BOOTSTRAP_SERVERS", &stack.bootstrap)
                .env("FLIGHTLINE_CLICKHOUSE_URL", &stack.clickhouse_url);
        }
        // The local stack's endpoints are allowed even without defaults (pipelines then name them).
        command
            .env("FLIGHTLINE_ALLOWED_KAFKA_BOOTSTRAP_SERVERS", &stack.bootstrap)
            .env("FLIGHTLINE_ALLOWED_CLICKHOUSE_URLS", &stack.clickhouse_url)
            .env_remove("FLIGHTLINE_ALLOWED_IMAGE_PREFIXES");
        // Operator logs go to a file per process, for reading when a test fails.
        let log_dir = log_dir();
        let log = std::fs::File::create(format!("{log_dir}/operator-{}-{identity}.log", options.namespace))
            .expect("log file");
        command.stderr(log);
        let child = command.spawn().expect("start the operator binary");
        Self { child, metrics_port, identity }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGKILL: a crash, with no chance to release the lease.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: a graceful stop.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        for _ in 0..100 {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    pub async fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").await
    }

    /// Value of an unlabelled or labelled sample, e.g. `flightline_operator_leader`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the tests' logs go: `E2E_LOG_DIR` (dev/test sets it), else the system's temporary directory.
fn log_dir() -> String {
    std::env::var("E2E_LOG_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A minimal HTTP/1.0 request to `host:port` (no HTTP client dependency needed for the tests).
/// Returns the status and the body.
///
/// The body is written while the response is read: a server may answer early (413 for a body over
/// its limit, 401 before reading) and close the connection, and the unsent rest of the body then
/// fails to write (`BrokenPipe`, `ConnectionReset`). That is the server's answer, not a test failure,
/// so write errors are ignored and whatever response arrived is returned (status 0 when none did).
pub async fn http(method: &str, addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head += &format!("{name}: {value}\r\n");
    }
    head += "\r\n";
    // Borrowed halves: an owned write half would half-close the connection when dropped, and a
    // server may take that for a client gone before it answers.
    let (mut reader, mut writer) = stream.split();
    let write = async move {
        // Errors ignored on purpose: see above.
        if writer.write_all(head.as_bytes()).await.is_ok() {
            let _ = writer.write_all(body).await;
        }
    };
    let read = async move {
        let mut response = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        // A reset after the response (the server closed with our body unread) ends the read, keeping what came.
        while let Ok(n) = reader.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..n]);
        }
        response
    };
    let exchange = async { tokio::join!(write, read).1 };
    let response = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {addr}{path}: no complete answer in {HTTP_TIMEOUT:?}"));
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, body.to_string())
}

/// Longest wait for one HTTP exchange in the tests (a full data-set load takes seconds).
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(180);

/// `host:port` of a ready pod of one component of a pipeline (the local node gives each pod an IP).
pub async fn service_addr(stack: &Stack, ns: &TestNamespace, pipeline: &str, component: &str) -> String {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), &ns.name);
    let selector = format!("app.kubernetes.io/instance={pipeline},app.kubernetes.io/component={component}");
    let ready_ip = async || {
        let list = pods.list(&kube::api::ListParams::default().labels(&selector)).await.unwrap();
        list.items.into_iter().find_map(|p| {
            let status = p.status?;
            let ready = status.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            if ready && p.metadata.deletion_timestamp.is_none() { status.pod_ip } else { None }
        })
    };
    eventually(&format!("a ready {component} pod"), async || ready_ip().await.is_some()).await;
    format!("{}:8080", ready_ip().await.unwrap())
}

/// The data set, uncompressed.
pub fn data_set_csv() -> Vec<u8> {
    use std::io::Read;
    let gz = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../data/scl-flights-2017.csv.gz")).unwrap();
    let mut csv = Vec::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut csv).unwrap();
    csv
}

/// A minimal HTTP/1.0 GET on loopback (no HTTP client dependency needed for the tests).
pub async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default()
}

/// `examples/scl.yaml`, with this test's namespace and database.
pub fn example_pipeline(ns: &TestNamespace) -> FlightPipeline {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/scl.yaml")).expect("example");
    let mut fp: FlightPipeline = serde_saphyr::from_str(&text).expect("the example parses as a FlightPipeline");
    fp.metadata.namespace = Some(ns.name.clone());
    fp.spec.clickhouse.database = ns.database.clone();
    // Open APIs unless a test sets up keys (the auth test does).
    fp.spec.auth = None;
    // dev/test runs up to 8 pipelines at once on a 2-CPU node: at the default 100m CPU request per pod the
    // scheduler leaves the later pods Pending (Insufficient cpu), so the tests' pods ask for 10m.
    let small = |memory_limit: &str| {
        Some(k8s_openapi::api::core::v1::ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("10m".into())),
                ("memory".into(), Quantity("32Mi".into())),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), Quantity(memory_limit.into()))])),
            ..Default::default()
        })
    };
    fp.spec.ingest.workload.resources = small("512Mi");
    fp.spec.sink.workload.resources = small("256Mi");
    fp.spec.query.workload.resources = small("256Mi");
    fp.spec.predict.workload.resources = small("256Mi");
    fp
}

pub fn pipelines(stack: &Stack, ns: &TestNamespace) -> Api<FlightPipeline> {
    Api::namespaced(stack.client.clone(), &ns.name)
}

/// Server-side applies a pipeline as a user would (`kubectl apply --server-side`).
pub async fn apply(api: &Api<FlightPipeline>, fp: &FlightPipeline) -> Result<FlightPipeline, kube::Error> {
    let mut fp = fp.clone();
    fp.metadata.managed_fields = None;
    fp.metadata.resource_version = None;
    fp.status = None;
    api.patch(&fp.name_any(), &PatchParams::apply("e2e-user").force(), &Patch::Apply(&fp)).await
}

pub fn condition<'a>(fp: &'a FlightPipeline, type_: &str) -> Option<&'a Condition> {
    fp.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
}

/// Polls until `check` holds for the pipeline, or panics with its last state.
pub async fn wait_for(
    api: &Api<FlightPipeline>,
    name: &str,
    what: &str,
    check: impl Fn(&FlightPipeline) -> bool,
) -> FlightPipeline {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let current = api.get_opt(name).await.expect("get pipeline");
        if let Some(fp) = &current
            && check(fp)
        {
            return fp.clone();
        }
        if tokio::time::Instant::now() > deadline {
            let status = current.and_then(|fp| fp.status).map(|s| serde_json::to_string_pretty(&s.conditions).unwrap());
            panic!("timed out waiting for {name}: {what}; conditions: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits for a condition with the given status and (optionally) reason, for the current generation.
pub async fn wait_condition(
    api: &Api<FlightPipeline>,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
) -> FlightPipeline {
    let what = format!("{type_}={status} reason {reason:?}");
    wait_for(api, name, &what, |fp| {
        condition(fp, type_).is_some_and(|c| {
            c.status == status
                && reason.is_none_or(|r| c.reason == r)
                && c.observed_generation == fp.metadata.generation
        })
    })
    .await
}

pub async fn wait_gone(api: &Api<FlightPipeline>, name: &str) {
    eventually(&format!("{name} deleted"), async || api.get_opt(name).await.expect("get").is_none()).await;
}

/// Polls `check` every 300 ms until it holds; panics naming `what` after `TIMEOUT`.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Runs a dev/ script (e.g. `dev/stack stop-kafka`) from the repository root.
pub fn dev(args: &[&str]) {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let status =
        Command::new("bash").arg(format!("{root}/dev/{}", args[0])).args(&args[1..]).status().expect("run dev script");
    assert!(status.success(), "dev/{} failed", args.join(" "));
}

// ---- helper B (issue 8, hostile data): dead letters with their headers, pod processes' memory ----

/// Reads a topic's partition 0 from the start: up to `want` records as (payload, headers).
pub async fn read_topic(bootstrap: &str, topic: &str, want: usize) -> Vec<(String, BTreeMap<String, String>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "e2e-topic-reader")
        .create()
        .expect("consumer");
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, rdkafka::Offset::Beginning).expect("assignment");
    consumer.assign(&assignment).expect("assign");
    let mut found = Vec::new();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while found.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) {
            found.push(payload_and_headers(&message));
        }
        tokio::task::yield_now().await;
    }
    found
}

/// The process id of a ready pod of a component: `process://<pid>` from `dev/k8s/node.py`, which runs
/// containers as processes, or the process in the container's cgroup on the real node.
pub async fn pod_pid(stack: &Stack, ns: &TestNamespace, pipeline: &str, component: &str) -> u32 {
    use k8s_openapi::api::core::v1::Pod;
    let addr = service_addr(stack, ns, pipeline, component).await;
    let ip = addr.split(':').next().expect("ip").to_string();
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), &ns.name);
    let selector = format!("app.kubernetes.io/instance={pipeline},app.kubernetes.io/component={component}");
    let pod = pods
        .list(&kube::api::ListParams::default().labels(&selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(ip.as_str()))
        .expect("the ready pod");
    let statuses = pod.status.and_then(|s| s.container_statuses).expect("container statuses");
    let id = statuses[0].container_id.clone().expect("container id");
    if let Some(container) = id.strip_prefix("containerd://") {
        return container_pid(container);
    }
    id.strip_prefix("process://").and_then(|pid| pid.parse().ok()).expect("a process of the local node")
}

/// The process of a container the real node (`dev/k8s/node.sh`) runs: the one in its cgroup, a
/// directory named after the container under the node's cgroup root (same pid namespace as the tests).
fn container_pid(container: &str) -> u32 {
    fn find(dir: &std::path::Path, name: &str, depth: u32) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if entry.file_name() == name {
                return Some(path);
            }
            if depth > 0
                && let Some(found) = find(&path, name, depth - 1)
            {
                return Some(found);
            }
        }
        None
    }
    let cgroup = find(std::path::Path::new("/sys/fs/cgroup/pids"), container, 3)
        .unwrap_or_else(|| panic!("no cgroup of container {container} under /sys/fs/cgroup/pids"));
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).expect("cgroup.procs");
    procs.lines().next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no process in {}", cgroup.display()))
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM")
}

/// A record's payload and headers, as text.
pub fn payload_and_headers(message: &impl rdkafka::message::Message) -> (String, BTreeMap<String, String>) {
    use rdkafka::message::Headers;
    let headers = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned()))
                .collect()
        })
        .unwrap_or_default();
    (String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(), headers)
}

/// Creates a FlightPipeline from raw JSON (so a test can send what the Rust types would never
/// serialize) and gives the API server's refusal as text.
pub async fn create_raw(stack: &Stack, ns: &TestNamespace, body: &serde_json::Value) -> Result<(), String> {
    let resource = kube::api::ApiResource::erase::<FlightPipeline>(&());
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(stack.client.clone(), &ns.name, &resource);
    let mut body = body.clone();
    body["metadata"] = serde_json::json!({"name": body["metadata"]["name"], "namespace": ns.name});
    body.as_object_mut().expect("a JSON object").remove("status");
    let object: kube::api::DynamicObject = serde_json::from_value(body).expect("a FlightPipeline's JSON");
    api.create(&Default::default(), &object).await.map(|_| ()).map_err(|e| e.to_string())
}

// Row counts and the sink's progress, for tests that assert exact counts.

pub async fn count(stack: &Stack, table: &str) -> u64 {
    stack.clickhouse().query(&format!("SELECT count() FROM {table} FINAL")).fetch_one::<u64>().await.unwrap()
}

/// Waits until the table holds `rows` and the sink has committed everything in its topic (so no
/// further row or dead letter is on its way), then asserts exactly `rows`: no fixed sleep, which a
/// busy CI machine could outrun.
pub async fn wait_count(stack: &Stack, ns: &TestNamespace, fp: &FlightPipeline, rows: u64) {
    let table = table_of(fp);
    eventually(&format!("{rows} rows in {table}"), async || count(stack, &table).await >= rows).await;
    wait_sink_caught_up(stack, ns, fp).await;
    assert_eq!(count(stack, &table).await, rows, "exactly {rows} rows");
}

/// The low and high watermarks of each partition of `topic`.
pub fn watermarks(consumer: &BaseConsumer, topic: &str) -> Vec<(i32, i64, i64)> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let partitions = metadata.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect::<Vec<_>>();
    partitions
        .into_iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10)).expect("watermarks");
            (p, low, high)
        })
        .collect()
}

/// Waits until the sink's consumer group has committed up to the high-water mark of every
/// partition of the pipeline's topic. The sink commits a batch only after its rows are inserted
/// and its dead letters sent, so from then on the table and the dead-letter topic are final.
pub async fn wait_sink_caught_up(stack: &Stack, ns: &TestNamespace, fp: &FlightPipeline) {
    let topic = topic_of(fp);
    let group = format!("flightline.{}.{}.sink", ns.name, fp.name_any());
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &stack.bootstrap).set("group.id", &group).create().unwrap();
    eventually(&format!("the sink committed all of {topic}"), async || {
        let mut wanted = TopicPartitionList::new();
        let marks = watermarks(&consumer, &topic);
        for (partition, _, _) in &marks {
            wanted.add_partition(&topic, *partition);
        }
        let Ok(committed) = consumer.committed_offsets(wanted, Duration::from_secs(10)) else { return false };
        marks.iter().all(|(partition, _, high)| match committed.find_partition(&topic, *partition) {
            Some(element) => match element.offset() {
                Offset::Offset(done) => done >= *high,
                _ => *high == 0,
            },
            None => *high == 0,
        })
    })
    .await;
}

pub fn table_of(fp: &FlightPipeline) -> String {
    fp.status.as_ref().and_then(|s| s.table.clone()).expect("status.table")
}

pub fn topic_of(fp: &FlightPipeline) -> String {
    fp.status.as_ref().and_then(|s| s.topic.clone()).expect("status.topic")
}

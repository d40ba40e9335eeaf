//! The reconciler against a mock API server, in named scenarios (the shape of kube-rs
//! controller-rs `src/fixtures.rs`). A scenario lists every request one reconcile makes, in order:
//! method, path and the parts of the body that matter; it answers each as the API server would,
//! and the run fails on any request it does not list or on one it lists that never comes. No
//! cluster, Kafka or ClickHouse: the operator's Kafka and ClickHouse defaults are closed loopback
//! ports, so a path that should not reach them fails visibly if it does.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{Store, store};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::{ChildStores, Context, DiscoveredStores, Error, discovery, reconcile};
use crate::crd::{FINALIZER, FlightPipeline, FlightPipelineStatus};
use crate::spec::resolve::Defaults;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const PIPELINE_PATH: &str = "/apis/flightline.dev/v1alpha1/namespaces/air/flightpipelines/scl";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/air/events";
/// Another controller's finalizer, listed before ours: removal must name our index.
const OTHER_FINALIZER: &str = "example.com/keep";

/// A loopback port nothing listens on, the same for every test: a second reconcile then sees the
/// same failure text as the first. The port stays bound (never listening) for the whole run, so no
/// other test's listener can be given it: a connect is refused, always.
pub fn closed_port(which: usize) -> u16 {
    static PORTS: std::sync::OnceLock<[(std::net::SocketAddr, tokio::net::TcpSocket); 2]> = std::sync::OnceLock::new();
    PORTS.get_or_init(|| {
        [0; 2].map(|_| {
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            socket.bind("127.0.0.1:0".parse().expect("an address")).expect("bind a loopback port");
            (socket.local_addr().expect("its address"), socket)
        })
    })[which]
        .0
        .port()
}

/// Kafka and ClickHouse at closed loopback ports: every call fails at once, refused.
pub fn unreachable_storage() -> (String, String) {
    (format!("127.0.0.1:{}", closed_port(0)), format!("http://127.0.0.1:{}", closed_port(1)))
}

/// A loopback listener in the place of Kafka or ClickHouse that counts the connections made to it
/// and closes each at once: a scenario that must not touch them checks the count is zero.
pub struct Witness {
    pub addr: std::net::SocketAddr,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    listening: tokio::task::JoinHandle<()>,
}

impl Witness {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let listening = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(socket);
            }
        });
        Self { addr, connections, listening }
    }

    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.listening.abort();
    }
}

/// A store as a watch leaves it after its first full list.
fn synced<K>(objects: &[K]) -> Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (reader, mut writer) = store::<K>();
    writer.apply_watcher_event(&watcher::Event::Init);
    for object in objects {
        writer.apply_watcher_event(&watcher::Event::InitApply(object.clone()));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    reader
}

impl Context {
    /// A context on a mock API server: the pipeline store holds `pipelines`, the child stores are
    /// synced and empty, and Kafka and ClickHouse default to `(bootstrap servers, URL)`.
    pub fn test(pipelines: &[FlightPipeline], storage: (String, String)) -> (Arc<Self>, ApiServer) {
        let children = ChildStores {
            deployments: synced::<Deployment>(&[]),
            services: synced::<Service>(&[]),
            config_maps: synced::<ConfigMap>(&[]),
            dynamic: DiscoveredStores::new(None),
        };
        Self::test_with_children(pipelines, storage, children)
    }

    /// `test` with the given child stores.
    pub fn test_with_children(
        pipelines: &[FlightPipeline],
        (kafka, clickhouse): (String, String),
        children: ChildStores,
    ) -> (Arc<Self>, ApiServer) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let defaults =
            Defaults { kafka_bootstrap_servers: Some(kafka), clickhouse_url: Some(clickhouse), ..Defaults::default() };
        let ctx = Context {
            client: client.clone(),
            defaults,
            metrics: Default::default(),
            recorder: Recorder::new(client, "flightline-operator".into()),
            resync: Duration::from_secs(300),
            io_timeout: Duration::from_secs(5),
            failures: Default::default(),
            prometheus_url: None,
            dashboards: Default::default(),
            pipelines: synced(pipelines),
            claims: Default::default(),
            children,
            discovery: discovery::DiscoveryCache::new(Duration::from_secs(60)),
            clickhouse: Default::default(),
            kafka: Default::default(),
        };
        (Arc::new(ctx), ApiServer { handle })
    }
}

/// `air/scl` as the API server stores it (uid, generation, creation time), with `spec` and
/// optionally our finalizer.
pub fn pipeline(spec: Value, finalized: bool) -> FlightPipeline {
    let finalizers = if finalized { json!([FINALIZER]) } else { json!(null) };
    serde_json::from_value(json!({
        "apiVersion": "flightline.dev/v1alpha1",
        "kind": "FlightPipeline",
        "metadata": {
            "name": "scl", "namespace": "air", "uid": "uid-scl", "generation": 3,
            "resourceVersion": "100", "creationTimestamp": "2026-01-01T00:00:00Z", "finalizers": finalizers,
        },
        "spec": spec,
    }))
    .expect("a FlightPipeline")
}

/// The pipeline being deleted, our finalizer second after another controller's.
pub fn deleting(spec: Value) -> FlightPipeline {
    let mut fp = pipeline(spec, false);
    fp.metadata.finalizers = Some(vec![OTHER_FINALIZER.into(), FINALIZER.into()]);
    fp.metadata.deletion_timestamp = Some(serde_json::from_value(json!("2026-01-02T00:00:00Z")).expect("a time"));
    fp
}

/// What one reconcile is expected to ask of the API server, in order.
pub enum Scenario {
    /// A pipeline without the finalizer: one JSON patch adds it; nothing else happens.
    FinalizerAdded,
    /// `spec.paused`: one status apply with `Paused` True (ReconciliationPaused) and nothing else: no
    /// child, Kafka or ClickHouse call, and no Event (`Ready` did not change).
    PausedStatus,
    /// An invalid spec: a status apply with `Ready` and every part False/InvalidSpec naming the
    /// problem, then the Warning Event for `Ready`.
    InvalidSpec { problem: &'static str },
    /// The status is already what the reconcile computes: no request at all.
    NothingToWrite,
    /// Deleted under `deletionPolicy: Retain`: the finalizer is removed (by its index), nothing else.
    Retained,
    /// Deleted under `deletionPolicy: Delete` with nothing recorded as created: an Event says so,
    /// then the finalizer is removed; no Kafka or ClickHouse call.
    DeletedNothing,
    /// Deleted under `deletionPolicy: Delete` while Kafka is unreachable: a Warning Event says how
    /// to let go without deleting; the finalizer stays and the reconcile is retried.
    CleanupFailed,
    /// Kafka and ClickHouse unreachable: a status apply with KafkaUnavailable and
    /// ClickHouseUnavailable (the workloads wait), then the Warning Event for `Ready`.
    StorageUnavailable,
}

/// The mock API server's side: every request a scenario expects, answered in turn.
pub struct ApiServer {
    handle: Handle,
}

impl ApiServer {
    /// Runs `scenario` against one reconcile of `fp`: returns what the reconcile returned and the
    /// pipeline as the API server holds it afterwards. Panics on a request the scenario does not
    /// list (also one made after the scenario's last), or on a listed one that does not come.
    pub async fn reconcile(
        self,
        ctx: Arc<Context>,
        fp: FlightPipeline,
        scenario: Scenario,
    ) -> (Result<Action, Error>, FlightPipeline) {
        // The test holds the context (and so the client) until the end: a request after the
        // reconcile returned would otherwise look like the client going away.
        let mut reconciling = tokio::spawn(reconcile(Arc::new(fp.clone()), ctx.clone()));
        let mut expected = tokio::spawn(self.run(scenario, fp));
        let mut ended = None;
        let (mut server, fp) = tokio::select! {
            biased;
            done = &mut expected => done.expect("the scenario's requests were as expected"),
            result = &mut reconciling => {
                // The scenario may still be sending its last answer: a moment for it.
                match tokio::time::timeout(Duration::from_secs(1), &mut expected).await {
                    Ok(done) => {
                        ended = Some(result);
                        done.expect("the scenario's requests were as expected")
                    }
                    Err(_) => panic!("the reconcile ended before the scenario's requests came: {result:?}"),
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(20)) => panic!("the scenario's requests did not come within 20 s"),
        };
        // A reconcile that makes a request the scenario does not list waits for its answer: the
        // request shows up here instead of the reconcile's end.
        let result = match ended {
            Some(result) => result,
            None => tokio::select! {
                biased;
                done = tokio::time::timeout(Duration::from_secs(20), reconciling) => {
                    done.expect("the reconcile finished within 20 s")
                }
                unexpected = server.handle.next_request() => match unexpected {
                    Some((request, _)) => panic!("a request the scenario does not list: {} {}", request.method(), request.uri()),
                    None => panic!("the mock API server's client went away"),
                },
            },
        }
        .expect("the reconcile did not panic");
        // Nothing may be left unanswered either.
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::ZERO, server.handle.next_request()).await {
            panic!("a request the scenario does not list: {} {}", request.method(), request.uri());
        }
        drop(ctx);
        (result, fp)
    }

    async fn run(mut self, scenario: Scenario, fp: FlightPipeline) -> (Self, FlightPipeline) {
        let fp = match scenario {
            Scenario::FinalizerAdded => self.finalizer_added(fp).await,
            Scenario::PausedStatus => self.paused_status(fp).await,
            Scenario::InvalidSpec { problem } => {
                let fp = self.invalid_spec_status(fp, problem).await;
                self.event("Warning", "InvalidSpec", problem).await;
                fp
            }
            Scenario::NothingToWrite => fp,
            Scenario::Retained => self.finalizer_removed(fp).await,
            Scenario::DeletedNothing => {
                self.event("Normal", "Deleted", "deleted nothing outside Kubernetes").await;
                self.finalizer_removed(fp).await
            }
            Scenario::CleanupFailed => {
                let let_go = "kubectl annotate flightpipeline scl -n air flightline.dev/skip-cleanup=true";
                self.event("Warning", "CleanupFailed", let_go).await;
                fp
            }
            Scenario::StorageUnavailable => {
                let fp = self.storage_unavailable_status(fp).await;
                self.event("Warning", "KafkaUnavailable", "KafkaReady: ").await;
                fp
            }
        };
        (self, fp)
    }

    /// The next request, which must be `method` on `path`: its query and JSON body, and where to answer.
    async fn expect(
        &mut self,
        method: Method,
        path: &str,
        content_type: &str,
    ) -> (String, Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) = self.handle.next_request().await.expect("the reconcile made a request");
        assert_eq!((request.method(), request.uri().path()), (&method, path), "{}", request.uri());
        let query = request.uri().query().unwrap_or_default().to_string();
        let header = request.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_string());
        assert_eq!(header.as_deref(), Some(content_type), "{method} {path}");
        let bytes = request.into_body().collect_bytes().await.expect("the request body");
        let body = serde_json::from_slice(&bytes).expect("a JSON body");
        (query, body, send)
    }

    fn answer(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: &impl serde::Serialize) {
        let bytes = serde_json::to_vec(body).expect("serializes");
        send.send_response(Response::builder().status(status).body(Body::from(bytes)).expect("a response"));
    }

    async fn finalizer_added(&mut self, mut fp: FlightPipeline) -> FlightPipeline {
        let (_, patch, send) = self.expect(Method::PATCH, PIPELINE_PATH, "application/json-patch+json").await;
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        );
        fp.metadata.finalizers = Some(vec![FINALIZER.into()]);
        Self::answer(send, StatusCode::OK, &fp);
        fp
    }

    async fn finalizer_removed(&mut self, mut fp: FlightPipeline) -> FlightPipeline {
        let (_, patch, send) = self.expect(Method::PATCH, PIPELINE_PATH, "application/json-patch+json").await;
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ])
        );
        fp.metadata.finalizers = Some(vec![OTHER_FINALIZER.into()]);
        Self::answer(send, StatusCode::OK, &fp);
        fp
    }

    /// A server-side apply of the status under the operator's status field manager: the status it
    /// carries becomes the pipeline's.
    async fn status_applied(&mut self, mut fp: FlightPipeline) -> (FlightPipeline, FlightPipelineStatus) {
        let path = format!("{PIPELINE_PATH}/status");
        let (query, body, send) = self.expect(Method::PATCH, &path, "application/apply-patch+yaml").await;
        assert!(query.contains("fieldManager=flightline-operator-status") && query.contains("force=true"), "{query}");
        assert_eq!((&body["apiVersion"], &body["kind"]), (&json!("flightline.dev/v1alpha1"), &json!("FlightPipeline")));
        let status: FlightPipelineStatus = serde_json::from_value(body["status"].clone()).expect("a status");
        fp.status = Some(status.clone());
        Self::answer(send, StatusCode::OK, &fp);
        (fp, status)
    }

    async fn paused_status(&mut self, fp: FlightPipeline) -> FlightPipeline {
        let (fp, status) = self.status_applied(fp).await;
        let conditions: Vec<_> =
            status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect();
        assert_eq!(conditions, [("Paused", "True", "ReconciliationPaused")]);
        assert_eq!(status.observed_generation, None, "a paused spec was not acted on");
        assert_eq!(FlightPipelineStatus { conditions: vec![], ..status }, FlightPipelineStatus::default());
        fp
    }

    async fn invalid_spec_status(&mut self, fp: FlightPipeline, problem: &str) -> FlightPipeline {
        let (fp, status) = self.status_applied(fp).await;
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        let expected =
            ["Ready", "KafkaReady", "ClickHouseReady", "WorkloadsAvailable", "AutoscalingReady", "MonitoringReady"];
        assert_eq!(types, expected);
        for c in &status.conditions {
            assert_eq!((c.status.as_str(), c.reason.as_str()), ("False", "InvalidSpec"), "{}", c.type_);
            assert!(c.message.contains(problem), "{}: {}", c.type_, c.message);
            assert_eq!(c.observed_generation, Some(3));
        }
        assert_eq!(status.observed_generation, Some(3));
        fp
    }

    async fn storage_unavailable_status(&mut self, fp: FlightPipeline) -> FlightPipeline {
        let (fp, status) = self.status_applied(fp).await;
        let conditions: Vec<_> =
            status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect();
        assert_eq!(
            conditions,
            [
                ("Ready", "False", "KafkaUnavailable"),
                ("KafkaReady", "False", "KafkaUnavailable"),
                ("ClickHouseReady", "False", "ClickHouseUnavailable"),
                ("WorkloadsAvailable", "False", "WaitingForStorage"),
                ("AutoscalingReady", "False", "WaitingForStorage"),
                ("MonitoringReady", "False", "WaitingForStorage"),
            ]
        );
        // What the reconcile would use, recorded; nothing recorded as created (nothing was).
        assert_eq!(status.topic.as_deref(), Some("air.scl.flights"));
        assert_eq!(status.storage, Some(vec![]));
        assert_eq!(status.observed_generation, Some(3));
        fp
    }

    /// An Event about `air/scl` (created: the recorder has not seen its like).
    async fn event(&mut self, type_: &str, reason: &str, note: &str) {
        let (_, event, send) = self.expect(Method::POST, EVENTS_PATH, "application/json").await;
        assert_eq!((event["type"].as_str(), event["reason"].as_str()), (Some(type_), Some(reason)), "{event}");
        assert!(event["note"].as_str().is_some_and(|n| n.contains(note)), "{event}");
        assert_eq!(
            (&event["regarding"]["kind"], &event["regarding"]["name"]),
            (&json!("FlightPipeline"), &json!("scl"))
        );
        Self::answer(send, StatusCode::CREATED, &event);
    }
}

mod scenarios {
    use super::*;

    /// One reconcile with Kafka and ClickHouse watched: the scenario must not connect to either.
    async fn run(fp: FlightPipeline, scenario: Scenario) -> (Result<Action, Error>, FlightPipeline) {
        let (kafka, clickhouse) = (Witness::start().await, Witness::start().await);
        let endpoints = (kafka.addr.to_string(), format!("http://{}", clickhouse.addr));
        let (ctx, server) = Context::test(std::slice::from_ref(&fp), endpoints);
        let outcome = server.reconcile(ctx, fp, scenario).await;
        assert_eq!((kafka.connections(), clickhouse.connections()), (0, 0), "connections to Kafka and ClickHouse");
        outcome
    }

    /// One reconcile with Kafka and ClickHouse at closed ports.
    async fn run_unreachable(fp: FlightPipeline, scenario: Scenario) -> (Result<Action, Error>, FlightPipeline) {
        let (ctx, server) = Context::test(std::slice::from_ref(&fp), unreachable_storage());
        server.reconcile(ctx, fp, scenario).await
    }

    fn messages(fp: &FlightPipeline) -> Vec<String> {
        fp.status.iter().flat_map(|s| &s.conditions).map(|c| c.message.clone()).collect()
    }

    /// The witnesses see a reconcile that does reach Kafka and ClickHouse: each hangs up at once,
    /// which is an outage too.
    #[tokio::test]
    async fn a_broker_and_a_clickhouse_that_hang_up_are_unavailable_and_were_called() {
        let (kafka, clickhouse) = (Witness::start().await, Witness::start().await);
        let endpoints = (kafka.addr.to_string(), format!("http://{}", clickhouse.addr));
        let fp = pipeline(json!({}), true);
        let (ctx, server) = Context::test(std::slice::from_ref(&fp), endpoints);
        let (result, fp) = server.reconcile(ctx, fp, Scenario::StorageUnavailable).await;
        assert_eq!(result.expect_err("retried").reason(), "kafka_unavailable");
        assert!(kafka.connections() >= 1 && clickhouse.connections() >= 1);
        assert!(messages(&fp)[1].contains(&kafka.addr.to_string()), "{:?}", messages(&fp));
    }

    /// What a reconcile changed outside Kubernetes rides on the Event of `Ready`'s change, said first
    /// and under an action of its own (the recorder folds repeats of one reason and action); with no
    /// change of `Ready` it gets an Event of its own: one Event per reconcile, not two.
    #[tokio::test]
    async fn the_storage_changes_ride_on_readys_event_else_get_their_own() {
        use crate::conditions::{ConditionType, Finding, reason};
        use crate::reconcile::status::{self, Facts};
        let fp = pipeline(json!({}), true);
        let (ctx, mut server) = Context::test(std::slice::from_ref(&fp), unreachable_storage());
        let api: kube::Api<FlightPipeline> = kube::Api::namespaced(ctx.client.clone(), "air");
        let changed =
            || Some("topic: created air.scl.flights (3 partitions); table: created flightline.scl".to_string());
        let ready = || [Finding::ok(ConditionType::Ready, reason::READY, "every part is ready")];
        let update = {
            let (api, ctx, fp) = (api.clone(), ctx.clone(), fp.clone());
            tokio::spawn(async move {
                let facts = Facts { changed: changed(), ..Facts::default() };
                status::update(&api, &ctx.recorder, &fp, &ready(), facts).await
            })
        };
        let (fp, _) = server.status_applied(fp).await;
        let (_, event, send) = server.expect(Method::POST, EVENTS_PATH, "application/json").await;
        assert_eq!(
            (event["reason"].as_str(), event["action"].as_str()),
            (Some(reason::READY), Some("ReconcileStorage"))
        );
        assert_eq!(event["note"], json!(format!("{}; every part is ready", changed().unwrap())));
        ApiServer::answer(send, StatusCode::CREATED, &event);
        update.await.unwrap().expect("the status and the Event written");

        // Ready as it was, a topic made again (drift repaired): the change alone is said.
        let update = {
            let (api, ctx, fp) = (api.clone(), ctx.clone(), fp.clone());
            tokio::spawn(async move {
                let facts = Facts { changed: changed(), ..Facts::default() };
                status::update(&api, &ctx.recorder, &fp, &ready(), facts).await
            })
        };
        let (_, event, send) = server.expect(Method::POST, EVENTS_PATH, "application/json").await;
        assert_eq!(
            (event["reason"].as_str(), event["action"].as_str()),
            (Some("Reconciled"), Some("ReconcileStorage"))
        );
        assert_eq!(event["note"], json!(changed().unwrap()));
        ApiServer::answer(send, StatusCode::CREATED, &event);
        update.await.unwrap().expect("no status write, one Event");
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::ZERO, server.handle.next_request()).await {
            panic!("a request not expected: {} {}", request.method(), request.uri());
        }
    }

    #[tokio::test]
    async fn a_new_pipeline_gets_the_finalizer_and_nothing_else() {
        let (result, fp) = run(pipeline(json!({}), false), Scenario::FinalizerAdded).await;
        assert_eq!(result.unwrap(), Action::await_change(), "the patch itself triggers the next reconcile");
        assert_eq!(fp.metadata.finalizers, Some(vec![FINALIZER.to_string()]));
    }

    #[tokio::test]
    async fn a_paused_pipeline_gets_one_status_write_and_no_other_call() {
        let (result, fp) = run(pipeline(json!({"paused": true}), true), Scenario::PausedStatus).await;
        assert_eq!(result.unwrap(), Action::await_change());
        // No-op reconciles write nothing: the same pipeline again makes no request at all.
        let (result, _) = run(fp, Scenario::NothingToWrite).await;
        assert_eq!(result.unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn an_invalid_spec_fails_every_condition_and_calls_nothing_else() {
        let spec = json!({"kafka": {"partitions": 0}});
        let problem = "spec.kafka.partitions: 0 must be at least 1";
        let (result, fp) = run(pipeline(spec, true), Scenario::InvalidSpec { problem }).await;
        assert_eq!(result.unwrap(), Action::await_change(), "nothing to retry until the spec changes");
        let (result, _) = run(fp, Scenario::NothingToWrite).await;
        assert_eq!(result.unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn deleting_under_retain_removes_the_finalizer_only() {
        let (result, fp) = run(deleting(json!({"deletionPolicy": "Retain"})), Scenario::Retained).await;
        assert_eq!(result.unwrap(), Action::await_change());
        assert_eq!(fp.metadata.finalizers, Some(vec![OTHER_FINALIZER.to_string()]));
    }

    #[tokio::test]
    async fn deleting_under_delete_with_nothing_created_touches_neither_kafka_nor_clickhouse() {
        let (result, fp) = run(deleting(json!({"deletionPolicy": "Delete"})), Scenario::DeletedNothing).await;
        assert_eq!(result.unwrap(), Action::await_change());
        assert_eq!(fp.metadata.finalizers, Some(vec![OTHER_FINALIZER.to_string()]));
    }

    #[tokio::test]
    async fn deleting_under_delete_while_kafka_is_down_keeps_the_finalizer_and_retries() {
        let mut fp = deleting(json!({"deletionPolicy": "Delete"}));
        let (kafka, clickhouse) = unreachable_storage();
        let record = |kind, name: &str, location: &str| json!({"kind": kind, "name": name, "location": location, "createdByFlightline": true});
        let status = json!({"storage": [
            record("Topic", "air.scl.flights", &kafka),
            record("Table", "flightline.air_scl_flights", &clickhouse),
        ]});
        fp.status = Some(serde_json::from_value(status).unwrap());
        let (result, fp) = run_unreachable(fp, Scenario::CleanupFailed).await;
        assert_eq!(result.expect_err("retried with backoff").reason(), "kafka_unavailable");
        assert_eq!(fp.metadata.finalizers, Some(vec![OTHER_FINALIZER.to_string(), FINALIZER.to_string()]));
    }

    #[tokio::test]
    async fn unreachable_kafka_and_clickhouse_are_reported_and_retried() {
        let (result, fp) = run_unreachable(pipeline(json!({}), true), Scenario::StorageUnavailable).await;
        let error = result.expect_err("an outage is retried with backoff");
        assert_eq!(error.reason(), "kafka_unavailable", "{error}");
        let messages = messages(&fp);
        assert!(messages[1].starts_with("cannot reach Kafka broker 127.0.0.1:"), "{}", messages[1]);
        assert!(messages[2].starts_with("cannot reach ClickHouse at http://127.0.0.1:"), "{}", messages[2]);
        // The retry against the same outage finds the status as it is: it writes nothing, and
        // still asks to be retried.
        let (result, _) = run_unreachable(fp, Scenario::NothingToWrite).await;
        assert_eq!(result.expect_err("retried again").reason(), "kafka_unavailable");
    }
}

/// Orphan deletion (`children::delete_orphans`) against the mock API server: only what is labelled
/// as the pipeline's, in its namespace and controlled by it, is deleted; each delete is guarded by
/// the object's uid and resourceVersion as read just before.
mod orphans {
    use super::*;
    use crate::conditions::{ConditionType, reason};
    use crate::desired::children::{Cluster, Discovered, desired_children};
    use crate::spec::fixtures::{owner, resolved};

    /// An object of `kind` as the API server keeps it, labelled as pipeline `instance`'s when
    /// given, with one owner reference `(uid, controller)`.
    fn object<K: serde::de::DeserializeOwned>(
        kind: (&str, &str),
        (namespace, name): (&str, &str),
        instance: Option<&str>,
        (owner_uid, controller): (&str, bool),
    ) -> K {
        let labels = match instance {
            Some(i) => json!({"app.kubernetes.io/instance": i, "app.kubernetes.io/managed-by": "flightline-operator"}),
            None => json!({"app.kubernetes.io/managed-by": "flightline-operator"}),
        };
        serde_json::from_value(json!({
            "apiVersion": kind.0, "kind": kind.1,
            "metadata": {
                "name": name, "namespace": namespace, "uid": format!("uid-of-{name}"), "resourceVersion": "7",
                "labels": labels,
                "ownerReferences": [{"apiVersion": "flightline.dev/v1alpha1", "kind": "FlightPipeline",
                    "name": "scl", "uid": owner_uid, "controller": controller}],
            },
        }))
        .expect("an object")
    }

    fn config_map(namespace: &str, name: &str, instance: Option<&str>, owner: (&str, bool)) -> ConfigMap {
        object(("v1", "ConfigMap"), (namespace, name), instance, owner)
    }

    /// The next request: method, path and query, its JSON body (Null when empty), where to answer.
    async fn next(handle: &mut Handle) -> (String, Value, tower_test::mock::SendResponse<Response<Body>>) {
        let (request, send) = handle.next_request().await.expect("a request");
        let line = format!("{} {}", request.method(), request.uri());
        let bytes = request.into_body().collect_bytes().await.expect("the request body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON") };
        (line, body, send)
    }

    fn answer(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: Value) {
        let bytes = serde_json::to_vec(&body).expect("serializes");
        send.send_response(Response::builder().status(status).body(Body::from(bytes)).expect("a response"));
    }

    fn status(code: u16, reason: &str) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
    }

    #[tokio::test]
    async fn only_the_pipelines_own_labelled_children_not_in_the_set_are_deleted_each_guarded_by_uid() {
        let ours = ("uid-1", true);
        // Each named as a child of scl may be (`child_names`) and labelled as scl's; only the
        // first two are scl's children (owner() is uid-1), and scl-pipeline is in the set.
        let config_maps = synced(&[
            config_map("air", "scl-flightline", Some("scl"), ours),
            config_map("air", "scl-pipeline", Some("scl"), ours),
            // Another tenant's object labelled like scl's child.
            config_map("air", "scl-ingest", Some("scl"), ("uid-other", true)),
            // Pipeline scl of another namespace.
            config_map("other", "scl-flightline", Some("scl"), ("uid-scl-other", true)),
            // An owner reference with scl's uid that is not the controller.
            config_map("air", "scl-sink", Some("scl"), ("uid-1", false)),
            // Controlled by scl but not labelled as its child.
            config_map("air", "scl-query", None, ours),
            // Controlled by scl but labelled as another pipeline's.
            config_map("air", "scl-predict", Some("other"), ours),
            // A name none of scl's children has (`child_names`): the store is not walked for it.
            config_map("air", "scl-old", Some("scl"), ours),
        ]);
        let deployment =
            |name, owner| object::<Deployment>(("apps/v1", "Deployment"), ("air", name), Some("scl"), owner);
        let children = ChildStores {
            deployments: synced(&[deployment("scl-predict", ours), deployment("scl-query", ours)]),
            // A store without its first full list yet: the API server is asked by label.
            services: store::<Service>().0,
            config_maps,
            dynamic: DiscoveredStores::new(None),
        };
        let (ctx, server) = Context::test_with_children(&[], unreachable_storage(), children);
        let mut handle = server.handle;
        // predict switched off: its Deployment is an orphan.
        let mut spec = crate::crd::FlightPipelineSpec::default();
        spec.predict.workload.enabled = false;
        let resolved = resolved(&spec);
        let dashboards = Default::default();
        let cluster = Cluster { served: Discovered::default(), prometheus_url: None, dashboards: &dashboards };
        let (owner, served) = (owner(), Discovered::default());
        let set = desired_children(&resolved, &owner, &cluster);
        assert!(set.children().any(|c| c.name() == "scl-pipeline"));
        assert!(!set.children().any(|c| c.name() == "scl-predict"));

        let deleting = super::super::children::delete_orphans(&set, &resolved, &owner, &ctx, &served);
        let serving = async {
            // The last applied kind first: Deployments. scl-predict is still ours when read, but
            // changed before the delete (its precondition fails): left for the next reconcile.
            let (line, _, send) = next(&mut handle).await;
            assert_eq!(line, "GET /apis/apps/v1/namespaces/air/deployments/scl-predict");
            answer(send, StatusCode::OK, serde_json::to_value(deployment("scl-predict", ours)).unwrap());
            let (line, body, send) = next(&mut handle).await;
            assert_eq!(line, "DELETE /apis/apps/v1/namespaces/air/deployments/scl-predict?");
            assert_eq!(body["preconditions"], json!({"uid": "uid-of-scl-predict", "resourceVersion": "7"}));
            answer(send, StatusCode::CONFLICT, status(409, "Conflict"));
            // Services, listed by label: of the two, one controlled by scl, and that one is
            // someone else's by the time it is read again (deleted and recreated): not deleted.
            let (line, _, send) = next(&mut handle).await;
            assert_eq!(
                line,
                "GET /api/v1/namespaces/air/services?&labelSelector=app.kubernetes.io%2Finstance%3Dscl%2Capp.kubernetes.io%2Fmanaged-by%3Dflightline-operator"
            );
            let service = |name, owner| object::<Value>(("v1", "Service"), ("air", name), Some("scl"), owner);
            let list = json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {},
                "items": [service("scl-gone", ours), service("scl-spoof", ("uid-other", true))]});
            answer(send, StatusCode::OK, list);
            let (line, _, send) = next(&mut handle).await;
            assert_eq!(line, "GET /api/v1/namespaces/air/services/scl-gone");
            answer(send, StatusCode::OK, service("scl-gone", ("uid-other", true)));
            // ConfigMaps: scl-flightline alone, deleted with its uid and resourceVersion.
            let (line, _, send) = next(&mut handle).await;
            assert_eq!(line, "GET /api/v1/namespaces/air/configmaps/scl-flightline");
            answer(
                send,
                StatusCode::OK,
                serde_json::to_value(config_map("air", "scl-flightline", Some("scl"), ours)).unwrap(),
            );
            let (line, body, send) = next(&mut handle).await;
            assert_eq!(line, "DELETE /api/v1/namespaces/air/configmaps/scl-flightline?");
            assert_eq!(
                body,
                json!({"propagationPolicy": "Background",
                       "preconditions": {"uid": "uid-of-scl-flightline", "resourceVersion": "7"}})
            );
            answer(send, StatusCode::OK, status(200, "Success"));
        };
        let (deleted, ()) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(deleting, serving) })
            .await
            .expect("within 20 s");
        deleted.expect("no error");
        // Nothing else was asked.
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::ZERO, handle.next_request()).await {
            panic!("a request not expected: {} {}", request.method(), request.uri());
        }
    }

    #[tokio::test]
    async fn a_kind_no_longer_served_has_no_orphans_and_an_api_failure_stops_the_deletes() {
        let children = || ChildStores {
            deployments: store::<Deployment>().0,
            services: synced(&[]),
            config_maps: synced(&[]),
            dynamic: DiscoveredStores::new(None),
        };
        let resolved = resolved(&Default::default());
        let dashboards = Default::default();
        let cluster = Cluster { served: Discovered::default(), prometheus_url: None, dashboards: &dashboards };
        let (owner, served) = (owner(), Discovered::default());
        let set = desired_children(&resolved, &owner, &cluster);
        for (code, ok) in [(404, true), (500, false), (403, false)] {
            let (ctx, server) = Context::test_with_children(&[], unreachable_storage(), children());
            let mut handle = server.handle;
            let deleting = super::super::children::delete_orphans(&set, &resolved, &owner, &ctx, &served);
            let serving = async {
                let (line, _, send) = next(&mut handle).await;
                assert!(line.starts_with("GET /apis/apps/v1/namespaces/air/deployments?"), "{line}");
                answer(send, StatusCode::from_u16(code).unwrap(), status(code, "from the test"));
            };
            let (deleted, ()) = tokio::join!(deleting, serving);
            assert_eq!(deleted.is_ok(), ok, "{code}: {deleted:?}");
            if let Ok(Some((request, _))) = tokio::time::timeout(Duration::ZERO, handle.next_request()).await {
                panic!("{code}: a request not expected: {} {}", request.method(), request.uri());
            }
        }
    }

    /// A child the API server refuses (an admission webhook) does not keep the orphans: they are
    /// deleted all the same, then the reconcile fails and is retried.
    #[tokio::test]
    async fn a_refused_child_does_not_stop_the_orphans_from_going() {
        let (owner, served) = (owner(), Discovered::default());
        let resolved = resolved(&Default::default());
        let dashboards = Default::default();
        let cluster = Cluster { served, prometheus_url: None, dashboards: &dashboards };
        let set = desired_children(&resolved, &owner, &cluster);
        // Every child as wanted, but the predict Deployment (absent); and an orphan ConfigMap.
        fn typed<K: serde::de::DeserializeOwned>(set: &crate::desired::children::ChildSet, kind: &str) -> Vec<K> {
            let objects = set
                .children()
                .filter(|c| c.resource.kind == kind)
                .filter(|c| (c.resource.kind.as_str(), c.name()) != ("Deployment", "scl-predict"));
            objects.map(|c| serde_json::from_value(serde_json::to_value(&c.object).unwrap()).unwrap()).collect()
        }
        let mut config_maps: Vec<ConfigMap> = typed(&set, "ConfigMap");
        config_maps.push(config_map("air", "scl-flightline", Some("scl"), ("uid-1", true)));
        let children = ChildStores {
            deployments: synced::<Deployment>(&typed(&set, "Deployment")),
            services: synced::<Service>(&typed(&set, "Service")),
            config_maps: synced(&config_maps),
            dynamic: DiscoveredStores::new(None),
        };
        let (ctx, server) = Context::test_with_children(&[], unreachable_storage(), children);
        let mut handle = server.handle;
        let applying = super::super::children::reconcile(&resolved, &owner, &ctx, served);
        let serving = async {
            let (line, _, send) = next(&mut handle).await;
            assert_eq!(line, "GET /apis/apps/v1/namespaces/air/deployments/scl-predict");
            answer(send, StatusCode::NOT_FOUND, status(404, "NotFound"));
            let (line, _, send) = next(&mut handle).await;
            assert!(line.starts_with("PATCH /apis/apps/v1/namespaces/air/deployments/scl-predict?"), "{line}");
            answer(send, StatusCode::FORBIDDEN, status(403, "admission webhook denied the request"));
            let (line, _, send) = next(&mut handle).await;
            assert_eq!(line, "GET /api/v1/namespaces/air/configmaps/scl-flightline");
            answer(
                send,
                StatusCode::OK,
                serde_json::to_value(config_map("air", "scl-flightline", Some("scl"), ("uid-1", true))).unwrap(),
            );
            let (line, _, send) = next(&mut handle).await;
            assert_eq!(line, "DELETE /api/v1/namespaces/air/configmaps/scl-flightline?");
            answer(send, StatusCode::OK, status(200, "Success"));
        };
        let (applied, ()) = tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(applying, serving) })
            .await
            .expect("within 20 s");
        // The refusal is said in its part's condition (the status is written), then retried.
        let outcome = applied.expect("a refused child is an outcome, not a failed reconcile");
        assert!(matches!(&outcome.refused, Some(kube::Error::Api(e)) if e.code == 403), "{:?}", outcome.refused);
        let workloads = outcome.findings.iter().find(|f| f.type_ == ConditionType::WorkloadsAvailable).unwrap();
        assert!(!workloads.ok && workloads.reason == reason::CHILD_REFUSED, "{workloads:?}");
        assert_eq!(workloads.message, "Deployment scl-predict: admission webhook denied the request");
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::ZERO, handle.next_request()).await {
            panic!("a request not expected: {} {}", request.method(), request.uri());
        }
    }
}

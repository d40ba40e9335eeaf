//! `flightline-operator`: runs the FlightPipeline controller, or prints the CRD.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::utils::PredicateConfig;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};

use flightline_operator::crd::FlightPipeline;
use flightline_operator::crdgen;
use flightline_operator::desired::monitoring::{self, DashboardSettings};
use flightline_operator::desired::{labels, slo};
use flightline_operator::leader::{Elector, LeaseConfig};
use flightline_operator::reconcile::discovery::{self, DiscoveryCache};
use flightline_operator::reconcile::kubernetes;
use flightline_operator::reconcile::{ChildStores, Context, DiscoveredStores, WatchScope, error_policy, reconcile};
use flightline_operator::spec::resolve::{Defaults, Images, OperatorLimits, resolve};
use flightline_operator::telemetry::{self, Health, Metrics};

#[derive(Parser)]
#[command(
    name = "flightline-operator",
    version,
    about = "Reconciles FlightPipeline resources into Kafka topics, ClickHouse tables and workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (the default).
    Run,
    /// Print the FlightPipeline CustomResourceDefinition as YAML.
    Crd,
    /// Print the Prometheus rule file (SLO recording rules and alerts) of a FlightPipeline
    /// manifest, exactly as its PrometheusRule carries it; `--operator` prints the operator's own.
    Rules {
        /// A FlightPipeline YAML file.
        #[arg(required_unless_present = "operator")]
        file: Option<std::path::PathBuf>,
        /// The alerts about the operator itself instead.
        #[arg(long, conflicts_with = "file")]
        operator: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Kafka bootstrap servers for pipelines that do not name their own.
    #[arg(long, env = "FLIGHTLINE_KAFKA_BOOTSTRAP_SERVERS")]
    kafka_bootstrap_servers: Option<String>,
    /// ClickHouse HTTP URL for pipelines that do not name their own.
    #[arg(long, env = "FLIGHTLINE_CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "FLIGHTLINE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "FLIGHTLINE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Seconds between re-reconciles of an unchanged pipeline (catches drift in Kafka and ClickHouse).
    #[arg(long, env = "FLIGHTLINE_RESYNC_SECONDS", default_value_t = 120)]
    resync_seconds: u64,
    /// Most reconciles at once: bounds memory and the load on the API server and the clusters.
    #[arg(long, env = "FLIGHTLINE_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Seconds the answer of API discovery (HPA version, KEDA and prometheus-operator CRDs) is reused.
    #[arg(long, env = "FLIGHTLINE_DISCOVERY_TTL_SECONDS", default_value_t = 60)]
    discovery_ttl_seconds: u64,
    /// Timeout of each Kafka and ClickHouse call, in seconds.
    #[arg(long, env = "FLIGHTLINE_IO_TIMEOUT_SECONDS", default_value_t = 10)]
    io_timeout_seconds: u64,
    /// Elect a leader through a Lease so that only one replica reconciles.
    #[arg(long, env = "FLIGHTLINE_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "FLIGHTLINE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Name of the leader Lease.
    #[arg(long, env = "FLIGHTLINE_LEASE_NAME", default_value = "flightline-operator")]
    lease_name: String,
    /// Seconds a lease stays valid without renewal.
    #[arg(long, env = "FLIGHTLINE_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds the leader keeps trying to renew before it gives up (default: 2/3 of the duration).
    #[arg(long, env = "FLIGHTLINE_LEASE_RENEW_DEADLINE_SECONDS")]
    lease_renew_deadline_seconds: Option<f64>,
    /// Seconds between renewals and between attempts (default: 1/5 of the renew deadline).
    #[arg(long, env = "FLIGHTLINE_LEASE_RETRY_PERIOD_SECONDS")]
    lease_retry_period_seconds: Option<f64>,
    /// This replica's identity in the Lease (default: the pod name, else host name and PID).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Default image of the ingest and sink workloads.
    #[arg(long, env = "FLIGHTLINE_INGEST_IMAGE")]
    ingest_image: Option<String>,
    /// Default image of the query workload.
    #[arg(long, env = "FLIGHTLINE_QUERY_IMAGE")]
    query_image: Option<String>,
    /// Default image of the predict workload.
    #[arg(long, env = "FLIGHTLINE_PREDICT_IMAGE")]
    predict_image: Option<String>,
    /// Prometheus URL for KEDA triggers (pipelines with `autoscaling.provider: KEDA`).
    #[arg(long, env = "FLIGHTLINE_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// Label (`key=value`) that Grafana's dashboard sidecar watches for.
    #[arg(long, env = "FLIGHTLINE_DASHBOARD_LABEL", default_value = "grafana_dashboard=1")]
    dashboard_label: String,
    /// Annotation that tells Grafana's sidecar the dashboard's folder.
    #[arg(long, env = "FLIGHTLINE_DASHBOARD_FOLDER_ANNOTATION", default_value = "grafana_folder")]
    dashboard_folder_annotation: String,
    /// Grafana folder of dashboards whose pipeline names none.
    #[arg(long, env = "FLIGHTLINE_DASHBOARD_FOLDER", default_value = "Flightline")]
    dashboard_folder: String,
    /// Namespace for the fleet and operator dashboards (default: the pod's namespace; none: not shipped).
    #[arg(long, env = "FLIGHTLINE_DASHBOARD_NAMESPACE")]
    dashboard_namespace: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
}

/// What a pipeline may ask for. A pipeline beyond them is `InvalidSpec`, naming the field and the flag.
#[derive(clap::Args)]
struct LimitArgs {
    /// Kafka bootstrap servers (`host:port`, comma-separated) a pipeline may name besides
    /// --kafka-bootstrap-servers; `*` allows any. Empty: only --kafka-bootstrap-servers.
    #[arg(long, env = "FLIGHTLINE_ALLOWED_KAFKA_BOOTSTRAP_SERVERS", value_delimiter = ',')]
    allowed_kafka_bootstrap_servers: Vec<String>,
    /// ClickHouse URLs (comma-separated) a pipeline may name besides --clickhouse-url; `*` allows
    /// any. Empty: only --clickhouse-url.
    #[arg(long, env = "FLIGHTLINE_ALLOWED_CLICKHOUSE_URLS", value_delimiter = ',')]
    allowed_clickhouse_urls: Vec<String>,
    /// Image prefixes (comma-separated, e.g. `registry.example.com/flightline/`) a pipeline's
    /// images may start with besides the default images; `*` allows any. Empty: only the defaults.
    #[arg(long, env = "FLIGHTLINE_ALLOWED_IMAGE_PREFIXES", value_delimiter = ',')]
    allowed_image_prefixes: Vec<String>,
    /// Most partitions of a pipeline's topic.
    #[arg(long, env = "FLIGHTLINE_MAX_PARTITIONS", default_value_t = OperatorLimits::default().max_partitions)]
    max_partitions: i32,
    /// Most pods of one component (`replicas` and `autoscaling.maxReplicas`).
    #[arg(long, env = "FLIGHTLINE_MAX_REPLICAS", default_value_t = OperatorLimits::default().max_replicas)]
    max_replicas: i32,
    /// Largest `spec.ingest.maxBodyBytes`.
    #[arg(long, env = "FLIGHTLINE_MAX_BODY_BYTES", default_value_t = OperatorLimits::default().max_body_bytes)]
    max_body_bytes: i64,
    /// Largest `spec.ingest.maxRecords`.
    #[arg(long, env = "FLIGHTLINE_MAX_RECORDS", default_value_t = OperatorLimits::default().max_records)]
    max_records: i64,
    /// Largest `spec.sink.batchSize`.
    #[arg(long, env = "FLIGHTLINE_MAX_BATCH_SIZE", default_value_t = OperatorLimits::default().max_batch_size)]
    max_batch_size: i32,
    /// Largest `spec.sink.maxBatchBytes`.
    #[arg(long, env = "FLIGHTLINE_MAX_BATCH_BYTES", default_value_t = OperatorLimits::default().max_batch_bytes)]
    max_batch_bytes: i64,
}

impl LimitArgs {
    fn limits(&self) -> OperatorLimits {
        let list = |values: &[String]| values.iter().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
        OperatorLimits {
            allowed_kafka_bootstrap_servers: list(&self.allowed_kafka_bootstrap_servers),
            allowed_clickhouse_urls: list(&self.allowed_clickhouse_urls),
            allowed_image_prefixes: list(&self.allowed_image_prefixes),
            max_partitions: self.max_partitions,
            max_replicas: self.max_replicas,
            max_body_bytes: self.max_body_bytes,
            max_records: self.max_records,
            max_batch_size: self.max_batch_size,
            max_batch_bytes: self.max_batch_bytes,
        }
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(cli_main())
}

/// glibc gives each thread that allocates at the same moment an arena of its own (up to eight per
/// core) and keeps what each held: at 1,000 pipelines that was about 15 MB of the operator's 95 MB
/// peak (`bench/operator-scale`). Two serve a runtime of a few threads. Set before any thread
/// starts; a `MALLOC_ARENA_MAX` in the environment wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; no other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

async fn cli_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", crdgen::crd_yaml());
            Ok(())
        }
        Some(Command::Rules { file, operator }) => {
            let rules = match file {
                Some(path) if !operator => pipeline_rules(&path)?,
                _ => slo::operator_rules(),
            };
            print!("{}", serde_saphyr::to_string(&rules)?);
            Ok(())
        }
        Some(Command::Run) | None => {
            telemetry::init_logging();
            run(cli.run).await
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = Health { metrics: metrics.clone(), ready: ready.clone() };
    let server = tokio::spawn(telemetry::serve(args.metrics_addr, health));

    let pipelines: Api<FlightPipeline> = match &args.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    wait_for_crd(&pipelines).await;
    ready.store(true, Ordering::Relaxed);

    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let elector = if args.leader_elect {
        let namespace = args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into());
        let seconds = |s: Option<f64>| s.filter(|s| s.is_finite() && *s > 0.0).map(Duration::from_secs_f64);
        let (duration, renew_deadline, retry_period) = LeaseConfig::timings(
            Duration::from_secs(args.lease_duration_seconds),
            seconds(args.lease_renew_deadline_seconds),
            seconds(args.lease_retry_period_seconds),
        );
        // Its own client: renewals get their own connections, not a place behind the reconciles.
        let lease_client = kube::Client::try_default().await?;
        Some(Elector::new(
            lease_client,
            LeaseConfig {
                namespace,
                name: args.lease_name.clone(),
                identity: identity.clone(),
                duration,
                renew_deadline,
                retry_period,
            },
        ))
    } else {
        None
    };
    if let Some(elector) = &elector {
        tokio::select! {
            _ = elector.acquire() => {}
            _ = shutdown_signal() => return Ok(()),
        }
    }
    metrics.leader.set(1);

    let images = Images::default();
    let defaults = Defaults {
        kafka_bootstrap_servers: args.kafka_bootstrap_servers.clone(),
        clickhouse_url: args.clickhouse_url.clone(),
        images: Images {
            ingest: args.ingest_image.clone().unwrap_or(images.ingest),
            query: args.query_image.clone().unwrap_or(images.query),
            predict: args.predict_image.clone().unwrap_or(images.predict),
        },
        limits: args.limits.limits(),
    };
    let (label_key, label_value) =
        args.dashboard_label.split_once('=').ok_or_else(|| anyhow::anyhow!("--dashboard-label must be key=value"))?;
    let dashboards = DashboardSettings {
        label: (label_key.into(), label_value.into()),
        folder_annotation: args.dashboard_folder_annotation.clone(),
        default_folder: args.dashboard_folder.clone(),
    };
    if let Some(namespace) = args.dashboard_namespace.clone().or_else(|| std::env::var("POD_NAMESPACE").ok()) {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        for dashboard in monitoring::operator_dashboards(&namespace, &dashboards) {
            if let Err(e) = kubernetes::apply(&config_maps, &dashboard).await {
                tracing::warn!(error = %e, %namespace, "could not apply the fleet and operator dashboards");
            }
        }
    }
    let reporter = Reporter { controller: labels::MANAGER.into(), instance: Some(identity) };
    // Built first: its reflector store is how a reconcile sees every pipeline's claims, kept
    // without managedFields. Every change reaches the store; a reconcile is triggered only by what
    // it acts on (not by its own status writes, which would make each one run twice).
    let (pipeline_store, pipeline_writer) = reflector::store();
    let pipeline_changes = watcher(pipelines, watcher::Config::default())
        .default_backoff()
        .modify(kubernetes::strip_for_cache)
        .reflect(pipeline_writer)
        .applied_objects()
        .predicate_filter(acted_on, PredicateConfig::default());
    let controller = Controller::for_stream(pipeline_changes, pipeline_store)
        .with_config(controller::Config::default().concurrency(args.concurrency.max(1)));
    // The owned kinds are watched once, into stores a reconcile reads instead of the API server:
    // without managedFields, and ConfigMaps (the dashboards are ~100 KB) without their data.
    let owned_labels = format!("{}={}", labels::MANAGED_BY, labels::MANAGER);
    let owned = watcher::Config::default().labels(&owned_labels);
    let (deployments, services, config_maps) = match &args.watch_namespace {
        Some(ns) => (
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
            Api::<ConfigMap>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    let (deployment_store, deployment_writer) = reflector::store();
    let (service_store, service_writer) = reflector::store();
    let (config_map_store, config_map_writer) = reflector::store();
    let deployments = watcher(deployments, owned.clone())
        .default_backoff()
        .modify(kubernetes::strip_for_cache)
        .reflect(deployment_writer)
        .touched_objects();
    let services = watcher(services, owned.clone())
        .default_backoff()
        .modify(kubernetes::strip_for_cache)
        .reflect(service_writer)
        .touched_objects();
    let config_maps = watcher(config_maps, owned)
        .default_backoff()
        .modify(kubernetes::strip_config_map)
        .reflect(config_map_writer)
        .touched_objects();
    let scope = WatchScope { client: client.clone(), namespace: args.watch_namespace.clone(), labels: owned_labels };
    let dynamic = watch_discovered(DiscoveredStores::new(Some(scope)), &client).await;
    let ctx = Arc::new(Context {
        pipelines: controller.store(),
        claims: Default::default(),
        children: ChildStores {
            deployments: deployment_store,
            services: service_store,
            config_maps: config_map_store,
            dynamic,
        },
        discovery: DiscoveryCache::new(Duration::from_secs(args.discovery_ttl_seconds)),
        clickhouse: Default::default(),
        kafka: Default::default(),
        client: client.clone(),
        defaults,
        metrics: metrics.clone(),
        recorder: Recorder::new(client.clone(), reporter),
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        io_timeout: Duration::from_secs(args.io_timeout_seconds.max(1)),
        failures: Default::default(),
        prometheus_url: args.prometheus_url.clone(),
        dashboards,
    });

    let controller = controller
        .owns_stream(deployments)
        .owns_stream(services)
        .owns_stream(config_maps)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => {
                    tracing::debug!(pipeline = %object.name, namespace = ?object.namespace, "reconciled")
                }
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        });
    tracing::info!(namespace = ?args.watch_namespace, "controller started");

    match &elector {
        Some(elector) => {
            tokio::select! {
                _ = controller => elector.release().await,
                lost = elector.hold() => {
                    // Another replica may be reconciling already: stop at once, let Kubernetes restart us.
                    tracing::error!(error = %lost, "leadership lost; exiting");
                    std::process::exit(1);
                }
            }
        }
        None => controller.await,
    }
    server.abort();
    tracing::info!("stopped");
    Ok(())
}

/// What a reconcile acts on, hashed: the spec (generation), finalizers, deletion, labels and
/// annotations, and the uid (a pipeline made again). Not the status, which only reconciles write.
fn acted_on(fp: &FlightPipeline) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let meta = &fp.metadata;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&meta.uid, meta.generation, &meta.finalizers, &meta.labels, &meta.annotations).hash(&mut hasher);
    meta.deletion_timestamp.as_ref().map(|t| t.0.to_string()).hash(&mut hasher);
    predicates::generation(fp).hash(&mut hasher);
    Some(hasher.finish())
}

/// Stores of the discovered kinds the operator applies (HPAs, ScaledObjects, ServiceMonitors,
/// PrometheusRules) that the API server serves now; a kind served later gets its store when a
/// reconcile first finds it served.
async fn watch_discovered(stores: DiscoveredStores, client: &kube::Client) -> DiscoveredStores {
    match discovery::discover(client).await {
        Ok(found) => {
            stores.watch_missing(&flightline_operator::desired::children::kinds(&found));
        }
        Err(e) => {
            tracing::warn!(error = %e, "discovery failed; discovered kinds are watched once a reconcile finds them")
        }
    }
    stores
}

/// The rule file of a pipeline manifest. Endpoints do not appear in rules, so placeholders stand
/// in for the operator's defaults.
fn pipeline_rules(path: &std::path::Path) -> anyhow::Result<slo::RuleFile> {
    let text = std::fs::read_to_string(path)?;
    let fp: FlightPipeline = serde_saphyr::from_str(&text)?;
    let defaults = Defaults {
        kafka_bootstrap_servers: Some("unused:9092".into()),
        clickhouse_url: Some("http://unused:8123".into()),
        limits: OperatorLimits::allow_any(),
        ..Defaults::default()
    };
    let namespace = fp.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let name = fp.metadata.name.clone().unwrap_or_default();
    let resolved = resolve(&namespace, &name, &fp.spec, &defaults)
        .map_err(|problems| anyhow::anyhow!("{}: {}", path.display(), problems.join("; ")))?;
    Ok(slo::rules(&resolved))
}

/// Blocks until the FlightPipeline CRD is served, saying what is missing meanwhile.
async fn wait_for_crd(pipelines: &Api<FlightPipeline>) {
    loop {
        match pipelines.list(&ListParams::default().limit(1)).await {
            Ok(_) => return,
            Err(e) => tracing::warn!(
                error = %e,
                "cannot list FlightPipelines; is the CRD installed? (kubectl apply -f crds/)"
            ),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_write_triggers_no_reconcile_and_what_a_reconcile_acts_on_does() {
        let fp: FlightPipeline = serde_json::from_value(serde_json::json!({
            "apiVersion": "flightline.dev/v1alpha1", "kind": "FlightPipeline",
            "metadata": {"name": "scl", "namespace": "air", "uid": "u1", "generation": 1, "resourceVersion": "10"},
            "spec": {}
        }))
        .unwrap();
        let base = acted_on(&fp);
        let mut status_written = fp.clone();
        status_written.status = Some(Default::default());
        status_written.metadata.resource_version = Some("11".into());
        status_written.metadata.managed_fields = Some(vec![Default::default()]);
        assert_eq!(acted_on(&status_written), base);
        let changes: [fn(&mut FlightPipeline); 6] = [
            |fp| fp.metadata.generation = Some(2),
            |fp| fp.metadata.finalizers = Some(vec!["flightline.dev/cleanup".into()]),
            |fp| {
                fp.metadata.deletion_timestamp =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()))
            },
            |fp| {
                fp.metadata.annotations = Some([("flightline.dev/skip-cleanup".to_string(), "true".to_string())].into())
            },
            |fp| fp.metadata.labels = Some([("team".to_string(), "a".to_string())].into()),
            |fp| fp.metadata.uid = Some("u2".into()),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut changed = fp.clone();
            change(&mut changed);
            assert_ne!(acted_on(&changed), base, "change {i}");
        }
    }

    #[test]
    fn limit_flags_take_comma_separated_lists_and_default_to_the_operator_limits() {
        let cli = Cli::try_parse_from([
            "flightline-operator",
            "--allowed-kafka-bootstrap-servers",
            "kafka-a:9092, kafka-b:9092,",
            "--allowed-image-prefixes=*",
            "--max-partitions",
            "12",
        ])
        .unwrap();
        let limits = cli.run.limits.limits();
        assert_eq!(limits.allowed_kafka_bootstrap_servers, ["kafka-a:9092", "kafka-b:9092"]);
        assert_eq!(limits.allowed_image_prefixes, ["*"]);
        assert!(limits.allowed_clickhouse_urls.is_empty());
        assert_eq!(limits.max_partitions, 12);
        let defaults = OperatorLimits::default();
        assert_eq!(
            OperatorLimits { max_partitions: defaults.max_partitions, ..limits },
            OperatorLimits {
                allowed_kafka_bootstrap_servers: vec!["kafka-a:9092".into(), "kafka-b:9092".into()],
                allowed_image_prefixes: vec!["*".into()],
                ..defaults
            }
        );
    }
}

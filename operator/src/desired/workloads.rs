//! Kubernetes objects for a resolved pipeline: the settings ConfigMap, and a Deployment and a
//! Service per enabled component. Pure: no client, no I/O.

use std::collections::BTreeMap;

use flightline_service::config::Role;
use flightline_service::contract::{auth, clickhouse, http, service};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapKeySelector, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::desired::labels;
use crate::spec::resolve::{Component, Resolved, Workload};
use crate::spec::security;

pub const HTTP_PORT: i32 = 8080;
/// Pod-template annotation that changes whenever the settings the component reads do, so its
/// pods roll (and only its: a sink batch size does not restart the HTTP services).
pub const CONFIG_HASH_ANNOTATION: &str = "flightline.dev/config-hash";

pub fn config_map_name(pipeline: &str) -> String {
    format!("{pipeline}-pipeline")
}

pub fn workload_name(pipeline: &str, component: Component) -> String {
    format!("{pipeline}-{}", component.as_str())
}

/// In-cluster URL of a component's HTTP service.
pub fn endpoint(resolved: &Resolved, component: Component) -> String {
    format!("http://{}.{}.svc:{HTTP_PORT}", workload_name(&resolved.name, component), resolved.namespace)
}

/// The command each component's container runs (the service binaries read the rest from env).
pub fn command(component: Component) -> Vec<String> {
    let argv: &[&str] = match component {
        Component::Ingest => &["flightline-ingest", "serve"],
        Component::Sink => &["flightline-ingest", "sink"],
        Component::Query => &["flightline-query"],
        Component::Predict => &["flightline-predict"],
    };
    argv.iter().map(|s| s.to_string()).collect()
}

pub fn config_map(resolved: &Resolved, owner: &OwnerReference) -> ConfigMap {
    ConfigMap {
        metadata: metadata(config_map_name(&resolved.name), resolved, None, owner),
        data: Some(resolved.settings.clone()),
        ..ConfigMap::default()
    }
}

/// How Prometheus finds the pods: a ServiceMonitor, or the `prometheus.io/*` pod annotations
/// where the prometheus-operator is not installed (never both, or every series is scraped twice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scrape {
    ByServiceMonitor,
    ByAnnotations,
}

pub fn deployment(resolved: &Resolved, workload: &Workload, owner: &OwnerReference, scrape: Scrape) -> Deployment {
    let name = workload_name(&resolved.name, workload.component);
    let selector = labels::selector(&resolved.name, workload.component);
    let mut pod_labels = labels::common(&resolved.name, Some(workload.component));
    pod_labels.extend(selector.clone());
    let mut annotations =
        BTreeMap::from([(CONFIG_HASH_ANNOTATION.to_string(), settings_hash(resolved, workload.component))]);
    if scrape == Scrape::ByAnnotations {
        annotations.extend([
            ("prometheus.io/scrape".to_string(), "true".to_string()),
            ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
            ("prometheus.io/path".to_string(), "/metrics".to_string()),
        ]);
    }
    Deployment {
        metadata: metadata(name.clone(), resolved, Some(workload.component), owner),
        spec: DeploymentSpec {
            // An autoscaled workload leaves replicas to its autoscaler: a value here would make
            // every apply fight the HPA.
            replicas: workload.autoscaling.is_none().then_some(workload.replicas),
            selector: LabelSelector { match_labels: Some(selector), ..LabelSelector::default() },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(resolved, workload)),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

pub fn service(resolved: &Resolved, component: Component, owner: &OwnerReference) -> Service {
    Service {
        metadata: metadata(workload_name(&resolved.name, component), resolved, Some(component), owner),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(labels::selector(&resolved.name, component)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

fn pod_spec(resolved: &Resolved, workload: &Workload) -> PodSpec {
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    PodSpec {
        containers: vec![Container {
            name: workload.component.as_str().into(),
            image: Some(workload.image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            command: Some(command(workload.component)),
            env: Some(env(resolved, workload)),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }]),
            liveness_probe: Some(probe("/healthz", 10)),
            readiness_probe: Some(probe("/readyz", 5)),
            resources: Some(workload.resources.clone().unwrap_or_else(|| default_resources(workload.component))),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
                ..SecurityContext::default()
            }),
            volume_mounts: Some(vec![VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            }]),
            ..Container::default()
        }],
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
            ..PodSecurityContext::default()
        }),
        termination_grace_period_seconds: Some(30),
        volumes: Some(vec![Volume { name: "tmp".into(), empty_dir: Some(Default::default()), ..Volume::default() }]),
        ..PodSpec::default()
    }
}

/// The configuration a component's binary reads (`flightline_service::config`).
pub fn role(component: Component) -> Role {
    match component {
        Component::Ingest => Role::Ingest,
        Component::Sink => Role::Sink,
        Component::Query => Role::Query,
        Component::Predict => Role::Predict,
    }
}

/// A container's environment, every name from the contract (`flightline_service::contract`):
/// the pipeline's settings this component reads, by reference to the ConfigMap (a service gets
/// no variable it does not know), then the component's own values and Secret references.
fn env(resolved: &Resolved, workload: &Workload) -> Vec<EnvVar> {
    // The kubelet expands `$(NAME)` in a `value` to an earlier variable's value, Secret-backed
    // ones included: `$$` keeps every value (the spec's env, a JWT issuer) exactly as written, so
    // `RUST_LOG: $(KAFKA_SASL_PASSWORD)` is that text, not the password in a start-up error.
    let value = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value.replace('$', "$$")),
        ..EnvVar::default()
    };
    let reads = role(workload.component).env_keys();
    let mut env: Vec<EnvVar> = resolved
        .settings
        .keys()
        .filter(|key| reads.contains(key))
        .map(|key| EnvVar {
            name: key.clone(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: config_map_name(&resolved.name),
                    key: key.clone(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        })
        .collect();
    env.extend([
        value(service::COMPONENT, workload.component.as_str().into()),
        value(service::LISTEN_ADDR, format!("0.0.0.0:{HTTP_PORT}")),
        value(service::LOG_FILTER, service::LOG_FILTER_DEFAULT.into()),
    ]);
    let from_secret = |name: &str, secret: &str, key: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(false) }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    // ClickHouse's clients only; query reads with its own (read-only) user when the spec names one.
    let credentials = match workload.component {
        Component::Sink => resolved.credentials.as_ref(),
        Component::Query => resolved.query_credentials.as_ref(),
        Component::Ingest | Component::Predict => None,
    };
    if let Some(secret) = credentials {
        env.push(from_secret(clickhouse::USER, &secret.name, &secret.username_key));
        env.push(from_secret(clickhouse::PASSWORD, &secret.name, &secret.password_key));
    }
    // TLS and SASL material from Secrets: Kafka for the two Kafka clients, ClickHouse's CA for its two.
    if matches!(workload.component, Component::Ingest | Component::Sink) {
        env.extend(security::kafka_env(&resolved.kafka_security));
    }
    if matches!(workload.component, Component::Sink | Component::Query) {
        env.extend(security::clickhouse_env(resolved.clickhouse_ca.as_ref()));
    }
    // Limits are per component, so they are the container's, not the shared ConfigMap's.
    if let Some(limits) = &workload.http_limits {
        env.extend([
            value(http::RATE_LIMIT_RPS, limits.requests_per_second.to_string()),
            value(http::RATE_LIMIT_BURST, limits.burst.to_string()),
            value(http::MAX_CONCURRENT_REQUESTS, limits.max_concurrent_requests.to_string()),
            value(http::REQUEST_TIMEOUT_SECONDS, limits.request_timeout_seconds.to_string()),
        ]);
    }
    // The HTTP APIs check callers; the sink has no API.
    if workload.component != Component::Sink {
        if let Some(keys) = &resolved.api_keys {
            env.push(from_secret(auth::API_KEY_HASHES, &keys.name, &keys.key));
        }
        if let Some(jwt) = &resolved.jwt {
            env.push(value(auth::JWT_ALGORITHM, format!("{:?}", jwt.algorithm)));
            env.push(from_secret(auth::JWT_KEY, &jwt.key_secret.name, &jwt.key_secret.key));
            // Empty values are left out: the API server drops them, and the no-op check would see drift.
            for (name, v) in [(auth::JWT_ISSUER, &jwt.issuer), (auth::JWT_AUDIENCE, &jwt.audience)] {
                if !v.is_empty() {
                    env.push(value(name, v.clone()));
                }
            }
        }
    }
    // The user's variables win over ours (a list with a name twice would fail to apply).
    env.retain(|e| !workload.env.contains_key(&e.name));
    env.extend(workload.env.iter().map(|(k, v)| value(k, v.clone())));
    env
}

/// Memory sized from measured peaks (debug build, VmHWM): ingest holds up to about 2 × the body limit
/// per request in flight (axum collects the body, the parser borrows it) plus ~15 MiB: 16 concurrent
/// 16 MiB bodies peaked at 478 MiB, so its limit is 512Mi with the default limits. The others stay
/// under 64 MiB at their limits (sink 47 MiB after a 16 MiB batch, predict 16 MiB at 10,000 flights).
fn default_resources(component: Component) -> ResourceRequirements {
    let (request, limit) = match component {
        Component::Ingest => ("128Mi", "512Mi"),
        Component::Sink | Component::Query | Component::Predict => ("64Mi", "256Mi"),
    };
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity("100m".into())),
            ("memory".into(), Quantity(request.into())),
        ])),
        limits: Some(BTreeMap::from([("memory".into(), Quantity(limit.into()))])),
        ..ResourceRequirements::default()
    }
}

/// Name, namespace, labels and owner of a pipeline's child object.
pub fn metadata(name: String, resolved: &Resolved, component: Option<Component>, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(resolved.namespace.clone()),
        labels: Some(labels::common(&resolved.name, component)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// FNV-1a over the settings the component reads (the ConfigMap keys its container refers to):
/// stable across releases, unlike `DefaultHasher`.
fn settings_hash(resolved: &Resolved, component: Component) -> String {
    let reads = role(component).env_keys();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (key, value) in resolved.settings.iter().filter(|(key, _)| reads.contains(key)) {
        for byte in key.bytes().chain([0]).chain(value.bytes()).chain([0]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::FlightPipelineSpec;
    use crate::spec::fixtures::{owner, resolved};
    use std::collections::BTreeSet;

    #[test]
    fn deployment_runs_the_component_command_with_the_pipeline_settings() {
        let r = resolved(&FlightPipelineSpec::default());
        let d = deployment(&r, r.workload(Component::Sink), &owner(), Scrape::ByServiceMonitor);
        assert_eq!(d.metadata.name.as_deref(), Some("scl-sink"));
        assert_eq!(d.metadata.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        let labels = d.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/instance"], "scl");
        assert_eq!(labels["app.kubernetes.io/component"], "sink");
        let pod = d.spec.template.spec.as_ref().unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.command.as_ref().unwrap(), &["flightline-ingest", "sink"]);
        let env = container.env.as_ref().unwrap();
        let topic = env.iter().find(|e| e.name == "KAFKA_TOPIC").and_then(|e| e.value_from.as_ref()).unwrap();
        assert_eq!(topic.config_map_key_ref.as_ref().unwrap().name, "scl-pipeline");
        assert!(env.iter().any(|e| e.name == "FLIGHTLINE_COMPONENT" && e.value.as_deref() == Some("sink")));
        assert_eq!(container.security_context.as_ref().unwrap().read_only_root_filesystem, Some(true));
        assert_eq!(
            container.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz")
        );
    }

    #[test]
    fn default_memory_limits_follow_the_measured_peaks() {
        let r = resolved(&FlightPipelineSpec::default());
        let limit = |component| {
            let d = deployment(&r, r.workload(component), &owner(), Scrape::ByServiceMonitor);
            let resources = d.spec.template.spec.unwrap().containers[0].resources.clone().unwrap();
            resources.limits.unwrap()["memory"].0.clone()
        };
        assert_eq!(limit(Component::Ingest), "512Mi");
        for component in [Component::Sink, Component::Query, Component::Predict] {
            assert_eq!(limit(component), "256Mi");
        }
    }

    #[test]
    fn autoscaled_workloads_leave_replicas_alone_and_annotations_replace_a_service_monitor() {
        let mut spec = FlightPipelineSpec::default();
        spec.predict.workload.autoscaling = Some(crate::crd::AutoscalingSpec::default());
        let r = resolved(&spec);
        let d = deployment(&r, r.workload(Component::Predict), &owner(), Scrape::ByAnnotations);
        assert_eq!(d.spec.replicas, None);
        let annotations = d.spec.template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(annotations["prometheus.io/port"], "8080");
        let d = deployment(&r, r.workload(Component::Query), &owner(), Scrape::ByServiceMonitor);
        assert_eq!(d.spec.replicas, Some(1));
        assert!(!d.spec.template.metadata.unwrap().annotations.unwrap().contains_key("prometheus.io/scrape"));
    }

    #[test]
    fn selector_matches_pod_labels() {
        let r = resolved(&FlightPipelineSpec::default());
        let d = deployment(&r, r.workload(Component::Query), &owner(), Scrape::ByServiceMonitor);
        let spec = d.spec;
        let pod_labels = spec.template.metadata.unwrap().labels.unwrap();
        for (k, v) in spec.selector.match_labels.unwrap() {
            assert_eq!(pod_labels.get(&k), Some(&v));
        }
    }

    #[test]
    fn settings_change_rolls_pods_and_nothing_else_does() {
        let hashes = |spec: &FlightPipelineSpec| {
            let r = resolved(spec);
            Component::ALL.map(|component| {
                let d = deployment(&r, r.workload(component), &owner(), Scrape::ByServiceMonitor);
                d.spec.template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION].clone()
            })
        };
        // What changed, for each component in `Component::ALL`'s order: whether its pods roll.
        let rolls = |change: &dyn Fn(&mut FlightPipelineSpec)| {
            let mut spec = FlightPipelineSpec::default();
            let before = hashes(&spec);
            change(&mut spec);
            let after = hashes(&spec);
            Component::ALL.map(|c| (c, before[c as usize] != after[c as usize]))
        };
        let none = rolls(&|s| s.query.workload.replicas = 3);
        assert!(none.iter().all(|(_, rolled)| !rolled), "{none:?}");
        for (change, rolled) in [
            (
                &(|s: &mut FlightPipelineSpec| s.sink.batch_size = 5) as &dyn Fn(&mut FlightPipelineSpec),
                [Component::Sink].as_slice(),
            ),
            (&|s| s.query.freshness_ms = 0, &[Component::Query]),
            (&|s| s.predict.model_path = "/m.json".into(), &[Component::Predict]),
            (&|s| s.ingest.max_records = 5, &[Component::Ingest]),
            (&|s| s.kafka.topic = "other".into(), &[Component::Ingest, Component::Sink]),
            (&|s| s.identity = crate::crd::Identity::ScheduledFlight, &[Component::Ingest, Component::Sink]),
        ] {
            let got = rolls(change);
            for (component, did) in got {
                assert_eq!(did, rolled.contains(&component), "{component:?}: {got:?}");
            }
        }
    }

    /// Containers refer to each ConfigMap key they read, not optionally: a key that went away when
    /// a part is switched off would leave the pods of the previous template that start again stuck
    /// (CreateContainerConfigError). So the ConfigMap's keys are the same whatever the spec.
    #[test]
    fn the_config_map_holds_the_same_keys_whatever_is_switched_on() {
        let keys = |r: &Resolved| config_map(r, &owner()).data.unwrap().into_keys().collect::<Vec<_>>();
        let plain = resolved(&FlightPipelineSpec::default());
        let full = full_featured();
        assert_eq!(keys(&plain), keys(&resolved_full(&full)));
        let mut dead_letter = FlightPipelineSpec::default();
        dead_letter.kafka.dead_letter.enabled = false;
        assert_eq!(keys(&plain), keys(&resolved(&dead_letter)));
    }

    #[test]
    fn user_env_replaces_the_operators_own() {
        let mut spec = FlightPipelineSpec::default();
        spec.query.workload.env.insert("RUST_LOG".into(), "debug".into());
        let r = resolved(&spec);
        let d = deployment(&r, r.workload(Component::Query), &owner(), Scrape::ByServiceMonitor);
        let env = d.spec.template.spec.unwrap().containers[0].env.clone().unwrap();
        let rust_log: Vec<_> = env.iter().filter(|e| e.name == "RUST_LOG").collect();
        assert_eq!(rust_log.len(), 1);
        assert_eq!(rust_log[0].value.as_deref(), Some("debug"));
    }

    /// What the kubelet does to a `value` (`$$` is `$`, `$(NAME)` of an earlier variable its
    /// value, anything else as is), for the escaping test.
    fn kubelet_expand(value: &str, earlier: &BTreeMap<&str, &str>) -> String {
        let mut out = String::new();
        let mut rest = value;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            if let Some(after) = rest.strip_prefix("$$") {
                out.push('$');
                rest = after;
            } else if let Some((name, after)) = rest.strip_prefix("$(").and_then(|r| r.split_once(')')) {
                match earlier.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[..name.len() + 3]),
                }
                rest = after;
            } else {
                out.push('$');
                rest = &rest[1..];
            }
        }
        out + rest
    }

    #[test]
    fn values_reach_the_service_as_written_not_expanded() {
        let mut spec = full_featured();
        let written = "x$(KAFKA_SASL_PASSWORD)$$y$(JWT_KEY)$";
        spec.query.workload.env.insert(service::LOG_FILTER.into(), written.into());
        spec.query.workload.env.insert("MY_PRICE".into(), "$5".into());
        if let Some(jwt) = spec.auth.as_mut().and_then(|a| a.jwt.as_mut()) {
            jwt.issuer = "https://$(CLICKHOUSE_PASSWORD)".into();
        }
        let r = resolved_full(&spec);
        let d = deployment(&r, r.workload(Component::Query), &owner(), Scrape::ByServiceMonitor);
        let env = d.spec.template.spec.unwrap().containers.remove(0).env.unwrap();
        let secrets =
            BTreeMap::from([("KAFKA_SASL_PASSWORD", "s3cret"), ("JWT_KEY", "k"), ("CLICKHOUSE_PASSWORD", "p")]);
        let seen = |name: &str| kubelet_expand(value_of(&env, name).unwrap(), &secrets);
        assert_eq!(seen(service::LOG_FILTER), written);
        assert_eq!(seen("MY_PRICE"), "$5");
        assert_eq!(seen(auth::JWT_ISSUER), "https://$(CLICKHOUSE_PASSWORD)");
        // The simulation does expand what is not escaped.
        assert_eq!(kubelet_expand("a$(JWT_KEY)$$b$(NONE)", &secrets), "ak$b$(NONE)");
    }

    #[test]
    fn credentials_come_from_the_secret() {
        let mut spec = FlightPipelineSpec::default();
        spec.clickhouse.credentials_secret =
            Some(crate::crd::SecretKeyRefs { name: "ch".into(), username_key: "u".into(), password_key: "p".into() });
        let r = resolved(&spec);
        let d = deployment(&r, r.workload(Component::Query), &owner(), Scrape::ByServiceMonitor);
        let env = d.spec.template.spec.unwrap().containers[0].env.clone().unwrap();
        let password = env.iter().find(|e| e.name == "CLICKHOUSE_PASSWORD").unwrap();
        assert_eq!(password.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().key, "p");
    }

    fn env_of(spec: &FlightPipelineSpec, component: Component) -> Vec<EnvVar> {
        let r = resolved(spec);
        let d = deployment(&r, r.workload(component), &owner(), Scrape::ByServiceMonitor);
        d.spec.template.spec.unwrap().containers[0].env.clone().unwrap()
    }

    fn value_of<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter().find(|e| e.name == name).and_then(|e| e.value.as_deref())
    }

    #[test]
    fn each_http_component_gets_its_own_limits_and_the_sink_none() {
        let mut spec = FlightPipelineSpec::default();
        spec.ingest.limits.requests_per_second = Some(0);
        spec.predict.limits.max_concurrent_requests = Some(8);
        let names = [
            "HTTP_RATE_LIMIT_RPS",
            "HTTP_RATE_LIMIT_BURST",
            "HTTP_MAX_CONCURRENT_REQUESTS",
            "HTTP_REQUEST_TIMEOUT_SECONDS",
        ];
        for (component, want) in [
            (Component::Ingest, ["0", "40", "16", "60"]),
            (Component::Query, ["1000", "2000", "64", "15"]),
            (Component::Predict, ["1000", "2000", "8", "10"]),
        ] {
            let env = env_of(&spec, component);
            let got: Vec<_> = names.iter().map(|n| value_of(&env, n).unwrap_or("unset")).collect();
            assert_eq!(got, want, "{component:?}");
        }
        let sink = env_of(&spec, Component::Sink);
        assert!(names.iter().all(|n| value_of(&sink, n).is_none()));
    }

    #[test]
    fn query_reads_with_its_own_credentials_and_the_others_with_the_pipelines() {
        let refs = |name: &str| crate::crd::SecretKeyRefs {
            name: name.into(),
            username_key: "username".into(),
            password_key: "password".into(),
        };
        let secret_of = |env: &[EnvVar], var: &str| {
            env.iter()
                .find(|e| e.name == var)
                .map(|e| e.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap().name.clone())
        };
        let mut spec = FlightPipelineSpec::default();
        spec.clickhouse.credentials_secret = Some(refs("admin"));
        assert_eq!(secret_of(&env_of(&spec, Component::Query), "CLICKHOUSE_USER").as_deref(), Some("admin"));
        spec.query.credentials_secret = Some(refs("reader"));
        for (component, want) in
            [(Component::Query, Some("reader")), (Component::Sink, Some("admin")), (Component::Ingest, None)]
        {
            let env = env_of(&spec, component);
            assert_eq!(secret_of(&env, "CLICKHOUSE_USER").as_deref(), want, "{component:?}");
            assert_eq!(secret_of(&env, "CLICKHOUSE_PASSWORD").as_deref(), want, "{component:?}");
        }
        spec.clickhouse.credentials_secret = None;
        assert_eq!(secret_of(&env_of(&spec, Component::Sink), "CLICKHOUSE_USER"), None);
        assert_eq!(secret_of(&env_of(&spec, Component::Query), "CLICKHOUSE_USER").as_deref(), Some("reader"));
    }

    /// A pipeline with every feature that writes a variable: Kafka TLS (CA and client certificate)
    /// and SASL, ClickHouse over https with a CA and credentials, query's own reader, API keys and
    /// a JWT with issuer and audience, limits, identity, a model path, and a user's `RUST_LOG`.
    fn full_featured() -> FlightPipelineSpec {
        use crate::crd::{
            AuthSpec, CaSecretRef, ClickHouseTlsSpec, ClientCertificateSecretRef, JwtAlgorithm, JwtKeySecret, JwtSpec,
            KafkaSaslSpec, KafkaTlsSpec, SaslMechanism, SecretKeyRef, SecretKeyRefs,
        };
        let refs = |name: &str| SecretKeyRefs { name: name.into(), username_key: "u".into(), password_key: "p".into() };
        let ca = |name: &str| Some(CaSecretRef { name: name.into(), key: "ca.crt".into() });
        let mut spec = FlightPipelineSpec::default();
        spec.kafka.tls = Some(KafkaTlsSpec {
            ca_secret: ca("kafka-ca"),
            client_certificate_secret: Some(ClientCertificateSecretRef {
                name: "kafka-client".into(),
                cert_key: "tls.crt".into(),
                key_key: "tls.key".into(),
            }),
        });
        spec.kafka.sasl = Some(KafkaSaslSpec {
            mechanism: SaslMechanism::ScramSha512,
            credentials_secret: refs("kafka-user"),
            allow_plaintext: false,
        });
        spec.clickhouse.tls = Some(ClickHouseTlsSpec { ca_secret: ca("ch-ca") });
        spec.clickhouse.credentials_secret = Some(refs("ch-writer"));
        spec.query.credentials_secret = Some(refs("ch-reader"));
        spec.auth = Some(AuthSpec {
            api_keys_secret: Some(SecretKeyRef { name: "keys".into(), key: "hashes".into() }),
            jwt: Some(JwtSpec {
                algorithm: JwtAlgorithm::HS256,
                key_secret: JwtKeySecret { name: "jwt".into(), key: "key".into() },
                issuer: "https://issuer".into(),
                audience: "flightline".into(),
            }),
        });
        spec.ingest.limits.requests_per_second = Some(0);
        spec.predict.limits.max_concurrent_requests = Some(8);
        spec.identity = crate::crd::Identity::ScheduledFlight;
        spec.predict.model_path = "/models/delay.json".into();
        spec.query.workload.env.insert(service::LOG_FILTER.into(), "debug".into());
        spec
    }

    /// `full_featured` resolved against an operator whose ClickHouse default is https.
    fn resolved_full(spec: &FlightPipelineSpec) -> Resolved {
        let defaults = crate::spec::resolve::Defaults {
            kafka_bootstrap_servers: Some("k:9093".into()),
            clickhouse_url: Some("https://ch:8443".into()),
            ..Default::default()
        };
        crate::spec::resolve::resolve("air", "scl", spec, &defaults).unwrap()
    }

    /// What a Secret key holds, as a service would accept it.
    fn secret_value(variable: &str) -> String {
        match variable {
            auth::API_KEY_HASHES => flightline_service::auth::hash_key("a key"),
            auth::JWT_KEY => "a shared secret of at least 32 bytes".into(),
            _ => format!("<{variable} from its Secret>"),
        }
    }

    /// The operator's Deployments are accepted by the services (issue 11, one typed contract): each
    /// container's env, with ConfigMap and Secret references resolved, parses through the
    /// service's own clap configuration (so every required variable is written and every value is
    /// valid), names only variables that service reads, and together the containers read every
    /// key the ConfigMap holds.
    #[test]
    fn every_container_env_is_accepted_by_its_service_and_holds_only_what_it_reads() {
        use flightline_service::contract::KEYS;
        let spec = full_featured();
        let r = resolved_full(&spec);
        let settings = config_map(&r, &owner()).data.unwrap();
        let mut read_from_config_map = BTreeSet::new();
        for component in Component::ALL {
            let d = deployment(&r, r.workload(component), &owner(), Scrape::ByServiceMonitor);
            let container = d.spec.template.spec.unwrap().containers.remove(0);
            assert_eq!(container.env_from, None, "{component:?}: a service gets only the variables it reads");
            let mut vars = BTreeMap::new();
            for var in container.env.unwrap() {
                let source = var.value_from.as_ref();
                let value = match (&var.value, source.and_then(|s| s.config_map_key_ref.as_ref())) {
                    (Some(value), _) => value.clone(),
                    (None, Some(key_ref)) => {
                        assert_eq!(key_ref.name, config_map_name("scl"));
                        read_from_config_map.insert(key_ref.key.clone());
                        settings
                            .get(&key_ref.key)
                            .unwrap_or_else(|| panic!("{} is not in the ConfigMap", key_ref.key))
                            .clone()
                    }
                    (None, None) => {
                        assert!(source.and_then(|s| s.secret_key_ref.as_ref()).is_some(), "{var:?}");
                        secret_value(&var.name)
                    }
                };
                assert!(vars.insert(var.name.clone(), value).is_none(), "{component:?}: {} twice", var.name);
            }
            let reads = role(component).env_keys();
            for name in vars.keys() {
                assert!(reads.contains(name), "{component:?} is given {name}, which it does not read");
                assert!(KEYS.iter().any(|key| key.name == name), "{name} is not in the contract");
            }
            role(component)
                .check(|name| vars.get(name).cloned())
                .unwrap_or_else(|e| panic!("{component:?} refuses the operator's env: {e:#}"));
            // Each required variable is there because it is written: without it the service stops
            // at start, with an error that names it.
            let mut required = Vec::new();
            for name in vars.keys() {
                let without = |n: &str| (n != name).then(|| vars.get(n).cloned()).flatten();
                if let Err(e) = role(component).check(without) {
                    assert!(e.to_string().contains(name.as_str()), "{component:?} without {name}: {e}");
                    required.push(name.as_str());
                }
            }
            if component != Component::Predict {
                assert!(required.contains(&"CLICKHOUSE_URL") || required.contains(&"KAFKA_TOPIC"), "{required:?}");
            }
        }
        let in_config_map: BTreeSet<String> = settings.keys().cloned().collect();
        assert_eq!(read_from_config_map, in_config_map, "a ConfigMap key no service reads, or one not referenced");
    }

    #[test]
    fn the_services_get_the_values_of_the_spec() {
        use flightline_service::config::{FromEnv, IngestConfig, QueryConfig};
        let spec = full_featured();
        let r = resolved_full(&spec);
        let settings = &config_map(&r, &owner()).data.unwrap();
        let lookup = |component| {
            let d = deployment(&r, r.workload(component), &owner(), Scrape::ByServiceMonitor);
            let env = d.spec.template.spec.unwrap().containers.remove(0).env.unwrap();
            move |name: &str| {
                let var = env.iter().find(|e| e.name == name)?;
                var.value.clone().or_else(|| {
                    let source = var.value_from.as_ref()?;
                    match &source.config_map_key_ref {
                        Some(key_ref) => settings.get(&key_ref.key).cloned(),
                        None => Some(secret_value(name)),
                    }
                })
            }
        };
        let ingest = IngestConfig::from_lookup(lookup(Component::Ingest)).unwrap();
        assert_eq!(ingest.kafka.topic, r.topic.name);
        assert_eq!(ingest.records.identity().as_str(), "ScheduledFlight");
        assert_eq!(ingest.http.rate_limit_rps, Some(0));
        assert_eq!(ingest.server.pipeline.as_deref(), Some("air/scl"));
        assert_eq!(ingest.server.component.as_deref(), Some("ingest"));
        assert_eq!(ingest.server.listen_addr.port(), u16::try_from(HTTP_PORT).unwrap());
        let query = QueryConfig::from_lookup(lookup(Component::Query)).unwrap();
        assert_eq!(query.server.log_filter, "debug");
        assert_eq!(query.clickhouse.table, r.table.table);
        assert_eq!(query.query.max_rows, u32::try_from(spec.query.max_rows).unwrap());
        assert_eq!(query.http.max_concurrent_requests, Some(64));
    }
}

//! End-to-end tests of autoscaling against the local Kubernetes 1.20 control plane: the HPA API
//! version chosen by discovery, HPAs that follow the spec, a sink never scaled past its
//! partitions, no replicas fight with the autoscaler, and KEDA ScaledObjects when KEDA is there.

mod support;

use std::process::Command;

use flightline_operator::build::autoscaling::{HpaVersion, scaled_object_resource};
use flightline_operator::crd::{AutoscalingProvider, AutoscalingSpec};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject};
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
    let crd = concat!(env!("CARGO_MANIFEST_DIR"), "/../dev/crds/keda/keda.sh_scaledobjects.yaml");
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
    kubectl(&["wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=60s"]);
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

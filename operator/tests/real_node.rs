//! End-to-end test of the real node (`dev/stack start-node`: the kubelet, containerd and runc, pods
//! in network namespaces on the stack's CNI bridge): a pipeline's predict Deployment runs as a
//! container, answers over its pod IP, and its Service has that pod as an endpoint, which the
//! process-pods of `dev/k8s/node.py` (loopback IPs, refused as endpoints) could not give.
//!
//! Run it with the real node started:
//! `dev/stack start-node && cargo test --workspace --locked --test real_node -- --ignored --nocapture`

mod support;

use std::net::Ipv4Addr;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use support::*;

const PREDICTION: &str = r#"{"flights":[{"OPERA":"Aerolineas Argentinas","TIPOVUELO":"N","MES":3}]}"#;

/// `POD_CIDR` as `dev/k8s/node.sh` writes it to the stack's env file (default 10.88.0.0/16).
fn pod_cidr() -> (Ipv4Addr, u32) {
    let cidr = std::env::var("POD_CIDR").unwrap_or_else(|_| "10.88.0.0/16".into());
    let (net, bits) = cidr.split_once('/').expect("POD_CIDR is a.b.c.d/n");
    (net.parse().expect("POD_CIDR's address"), bits.parse().expect("POD_CIDR's prefix"))
}

fn in_cidr(ip: Ipv4Addr, (net, bits): (Ipv4Addr, u32)) -> bool {
    let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
    u32::from(ip) & mask == u32::from(net) & mask
}

#[test]
fn cidr_membership() {
    let cidr = ("10.88.0.0".parse().unwrap(), 16);
    assert!(in_cidr("10.88.0.2".parse().unwrap(), cidr));
    assert!(in_cidr("10.88.255.254".parse().unwrap(), cidr));
    assert!(!in_cidr("10.89.0.2".parse().unwrap(), cidr));
    assert!(!in_cidr("127.0.1.2".parse().unwrap(), cidr));
}

#[tokio::test]
#[ignore = "needs the local stack with the real node: dev/stack start-node"]
async fn predict_runs_as_a_container_on_the_real_node_and_backs_its_service() {
    let stack = Stack::connect().await;

    // The real node: registered by a kubelet with containerd as its runtime.
    let nodes: Api<Node> = Api::all(stack.client.clone());
    let node = nodes
        .list(&ListParams::default().labels("flightline.dev/real-node=true"))
        .await
        .expect("list nodes")
        .items
        .into_iter()
        .next()
        .expect("no node labelled flightline.dev/real-node=true: dev/stack start-node");
    let node_name = node.metadata.name.clone().unwrap();
    let info = node.status.as_ref().and_then(|s| s.node_info.clone()).expect("nodeInfo");
    println!("node {node_name}: kubelet {}, runtime {}", info.kubelet_version, info.container_runtime_version);
    assert!(info.container_runtime_version.starts_with("containerd://1."), "{}", info.container_runtime_version);
    assert!(!info.kubelet_version.contains("flightline-local"), "the stand-in node.py, not a kubelet");
    let ready = node.status.as_ref().and_then(|s| s.conditions.as_ref()).into_iter().flatten();
    assert!(ready.into_iter().any(|c| c.type_ == "Ready" && c.status == "True"), "node {node_name} is not Ready");

    // A pipeline of predict alone: the other services need Kafka and ClickHouse from inside the pods.
    let ns = stack.namespace("realnode").await;
    let _operator = Operator::start(&stack, &OperatorOptions::new(&ns.name));
    let api = pipelines(&stack, &ns);
    let mut fp = example_pipeline(&ns);
    fp.spec.ingest.workload.enabled = false;
    fp.spec.sink.workload.enabled = false;
    fp.spec.query.workload.enabled = false;
    fp.spec.predict.workload.enabled = true;
    fp.spec.predict.workload.replicas = 1;
    fp.spec.predict.workload.autoscaling = None;
    let applied = Instant::now();
    apply(&api, &fp).await.expect("apply pipeline");
    wait_condition(&api, "scl", "Ready", "True", Some("Ready")).await;
    let to_ready = applied.elapsed();

    // The pod: on the real node, in a container, with an address of the pod network.
    let pods: Api<Pod> = Api::namespaced(stack.client.clone(), &ns.name);
    let selector = "app.kubernetes.io/instance=scl,app.kubernetes.io/component=predict";
    let addr = service_addr(&stack, &ns, "scl", "predict").await;
    let pod_ip: Ipv4Addr = addr.split(':').next().unwrap().parse().expect("an IPv4 pod IP");
    let pod = pods
        .list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .find(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) == Some(&pod_ip.to_string()))
        .expect("the ready predict pod");
    let spec = pod.spec.as_ref().unwrap();
    let status = pod.status.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(node_name.as_str()));
    assert!(in_cidr(pod_ip, pod_cidr()), "pod IP {pod_ip} outside POD_CIDR {:?}", pod_cidr());
    assert_ne!(status.host_ip.as_deref(), Some(pod_ip.to_string().as_str()), "a host-network pod");
    let container = &status.container_statuses.as_ref().expect("container statuses")[0];
    let container_id = container.container_id.as_deref().expect("container id");
    assert!(container_id.starts_with("containerd://"), "{container_id}");
    assert!(
        container.image.ends_with(&format!("flightline-predict:{}", env!("CARGO_PKG_VERSION"))),
        "{}",
        container.image
    );
    assert!(container.ready);
    // Times the kubelet recorded: pod created -> container started -> pod Ready.
    let created = pod.metadata.creation_timestamp.as_ref().unwrap().0;
    let started =
        container.state.as_ref().and_then(|s| s.running.as_ref()).and_then(|r| r.started_at.as_ref()).unwrap().0;
    let pod_ready = status.conditions.as_ref().unwrap().iter().find(|c| c.type_ == "Ready").unwrap();
    let pod_ready_at = pod_ready.last_transition_time.as_ref().unwrap().0;
    println!(
        "pod {} on {node_name}: IP {pod_ip}, {container_id}; container started {} s and Ready {} s after the pod's \
         creation (the API's timestamps are whole seconds); pipeline Ready {:.1}s after apply",
        pod.metadata.name.as_deref().unwrap(),
        started.duration_since(created).as_secs(),
        pod_ready_at.duration_since(created).as_secs(),
        to_ready.as_secs_f64(),
    );

    // It answers over the pod IP, from the host, through the bridge.
    let (code, body) =
        http("POST", &addr, "/predict", &[("Content-Type", "application/json")], PREDICTION.as_bytes()).await;
    assert_eq!((code, body.as_str()), (200, r#"{"predict":[0]}"#));

    // Its Service has it as a ready endpoint (EndpointSlices, kept by the controller-manager).
    let slices: Api<EndpointSlice> = Api::namespaced(stack.client.clone(), &ns.name);
    let ready_endpoint = async || {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=scl-predict")).await.unwrap();
        list.items.iter().any(|s| {
            s.endpoints.iter().flatten().any(|e| {
                e.addresses.contains(&pod_ip.to_string())
                    && e.conditions.as_ref().and_then(|c| c.ready) == Some(true)
                    && e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == pod.metadata.name.as_deref()
            }) && s.ports.iter().flatten().any(|p| p.port == Some(8080) && p.name.as_deref() == Some("http"))
        })
    };
    eventually("scl-predict's EndpointSlice lists the pod, ready, port http 8080", ready_endpoint).await;
    println!("EndpointSlice of Service scl-predict: {pod_ip}:8080 ready");

    // Deleting the pod: the Deployment's new pod gets a new container and address, and the
    // endpoints follow it (a kubelet that really stops containers and tears their network down).
    let old = pod.metadata.name.clone().unwrap();
    let deleted = Instant::now();
    pods.delete(&old, &Default::default()).await.expect("delete the pod");
    eventually("a new ready predict pod replaces the deleted one", async || {
        let list = pods.list(&ListParams::default().labels(selector)).await.unwrap();
        list.items.iter().any(|p| {
            p.metadata.name.as_deref() != Some(old.as_str())
                && p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
    })
    .await;
    let replaced = deleted.elapsed();
    eventually("the old pod is gone", async || pods.get_opt(&old).await.unwrap().is_none()).await;
    let new_addr = service_addr(&stack, &ns, "scl", "predict").await;
    let new_ip = new_addr.split(':').next().unwrap().to_string();
    eventually("the EndpointSlice lists the new pod and not the old one", async || {
        let list = slices.list(&ListParams::default().labels("kubernetes.io/service-name=scl-predict")).await.unwrap();
        let addresses: Vec<String> =
            list.items.iter().flat_map(|s| s.endpoints.iter().flatten().flat_map(|e| e.addresses.clone())).collect();
        addresses == [new_ip.clone()]
    })
    .await;
    let (code, body) =
        http("POST", &new_addr, "/predict", &[("Content-Type", "application/json")], PREDICTION.as_bytes()).await;
    assert_eq!((code, body.as_str()), (200, r#"{"predict":[0]}"#));
    println!("pod replaced in {:.1}s: {new_addr}, old address gone from the EndpointSlice", replaced.as_secs_f64());
}

//! What the builders' table tests share: a pipeline `air/scl` resolved against an operator with
//! default endpoints, and the owner reference its children carry.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::crd::FlightPipelineSpec;
use crate::spec::resolve::{Defaults, Resolved, resolve};

pub fn resolved(spec: &FlightPipelineSpec) -> Resolved {
    let defaults = Defaults {
        kafka_bootstrap_servers: Some("k:9092".into()),
        clickhouse_url: Some("http://ch:8123".into()),
        ..Defaults::default()
    };
    resolve("air", "scl", spec, &defaults).unwrap()
}

pub fn owner() -> OwnerReference {
    OwnerReference {
        api_version: "flightline.dev/v1alpha1".into(),
        kind: "FlightPipeline".into(),
        name: "scl".into(),
        uid: "uid-1".into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

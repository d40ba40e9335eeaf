//! The standard `app.kubernetes.io/*` labels on everything the operator creates.

use std::collections::BTreeMap;

use crate::spec::resolve::Component;

pub const NAME: &str = "app.kubernetes.io/name";
pub const INSTANCE: &str = "app.kubernetes.io/instance";
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const PART_OF: &str = "app.kubernetes.io/part-of";
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const VERSION: &str = "app.kubernetes.io/version";

pub const MANAGER: &str = "flightline-operator";

/// Labels that select one component's pods (stable: a Deployment's selector cannot change).
pub fn selector(pipeline: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME.to_string(), "flightline".to_string()),
        (INSTANCE.to_string(), pipeline.to_string()),
        (COMPONENT.to_string(), component.as_str().to_string()),
    ])
}

/// Labels on every object of a pipeline.
pub fn common(pipeline: &str, component: Option<Component>) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        (NAME.to_string(), "flightline".to_string()),
        (INSTANCE.to_string(), pipeline.to_string()),
        (PART_OF.to_string(), "flightline".to_string()),
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (VERSION.to_string(), env!("CARGO_PKG_VERSION").to_string()),
    ]);
    if let Some(component) = component {
        labels.insert(COMPONENT.to_string(), component.as_str().to_string());
    }
    labels
}

//! Pure builders: a `FlightPipeline` in, desired state out. No client and no I/O, so every rule
//! here is covered by table tests.

pub mod autoscaling;
pub mod claims;
pub mod conditions;
#[cfg(test)]
pub mod fixtures;
pub mod labels;
pub mod monitoring;
pub mod ownership;
pub mod resolve;
pub mod security;
pub mod slo;
pub mod table;
pub mod topic;
pub mod workloads;

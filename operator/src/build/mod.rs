//! Pure builders: a `FlightPipeline` in, desired state out. No client and no I/O, so every rule
//! here is covered by table tests.

pub mod conditions;
pub mod labels;
pub mod resolve;
pub mod table;
pub mod topic;
pub mod workloads;

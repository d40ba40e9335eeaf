//! Pure builders: a resolved pipeline in, desired state out. No client and no I/O, so every rule
//! here is covered by table tests.

pub mod autoscaling;
pub mod children;
pub mod labels;
pub mod monitoring;
pub mod slo;
pub mod table;
pub mod topic;
pub mod workloads;

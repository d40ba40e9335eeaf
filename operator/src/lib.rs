//! The Flightline operator: reconciles `FlightPipeline` resources into Kafka topics, ClickHouse
//! tables and the workloads that move and serve flight data.

pub mod build;
pub mod crd;
pub mod crd_rules;
pub mod crdgen;
pub mod leader;
pub mod reconcile;
pub mod telemetry;

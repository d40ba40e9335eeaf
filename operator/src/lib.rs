//! The Flightline operator: reconciles `FlightPipeline` resources into Kafka topics, ClickHouse
//! tables and the workloads that move and serve flight data.

pub mod conditions;
pub mod crd;
pub mod crd_rules;
pub mod crdgen;
pub mod desired;
pub mod leader;
pub mod ownership;
pub mod reconcile;
pub mod spec;
pub mod telemetry;

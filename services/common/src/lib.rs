//! What the Flightline services share: the HTTP server with health, readiness and metrics
//! endpoints, JSON errors, API-key auth, configuration from the environment, TLS and SASL to Kafka and ClickHouse, and flight records.

pub mod auth;
pub mod config;
pub mod connect;
pub mod contract;
pub mod flight;
pub mod limits;
pub mod openapi;
pub mod ratelimit;
pub mod server;

#[cfg(test)]
mod server_tests;

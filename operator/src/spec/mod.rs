//! A `FlightPipeline`'s spec checked against the operator's configuration and defaulted into a
//! `Resolved` pipeline, or a list of problems that each name the field at fault. Pure.

#[cfg(test)]
pub mod fixtures;
pub mod resolve;
pub mod security;

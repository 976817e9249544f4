//! Portcullis: an email/password authentication service built as a hexagon.
//!
//! `domain` is the pure core; `inbound` and `outbound` hold the adapters; `startup` is the one
//! place that knows them all and wires them together.

pub mod config;
pub mod domain;
pub mod inbound;
pub mod outbound;
#[cfg(test)]
mod properties;
pub mod startup;
pub mod telemetry;

//! What the JSON API and the console share, so that neither imports the other's internals:
//! the problem document every error takes, the one mapping of the core's errors to statuses
//! and words, who the client is, the parsers of text parameters, and the metrics.

pub mod client;
pub mod errors;
pub mod metrics;
pub mod params;
pub mod problem;

//! Inbound adapters: how the world drives the core. The HTTP API (with its documentation
//! pages) and the web console, both served by one HTTP server; the command line is in
//! `main.rs` and `cli.rs`.

pub mod console;
pub mod http;

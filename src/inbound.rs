//! Inbound adapters: how the world drives the core. The HTTP API (with its documentation
//! pages) and the web console, both served by one HTTP server, and the command line.

pub mod cli;
pub mod console;
pub mod http;
pub mod web;

//! Inbound adapters: how the world drives the core. Today, HTTP.

pub mod http;

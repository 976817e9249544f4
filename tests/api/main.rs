//! Black-box tests of the HTTP API: a real server on 127.0.0.1:0, a fresh database per test,
//! SQLite always and PostgreSQL when `TEST_DATABASE_URL` is set. One binary, to link once.

mod browser;
#[path = "../../benches/support/cable.rs"]
mod cable;
mod helpers;

mod account_changes;
mod admin;
mod backup;

mod cli;
mod clients;
mod console;
mod docs;
mod email;
mod errors;
mod factor_repository;
mod hardening;
mod import;
mod instances;
mod keys;
mod limits;
mod login;
mod mfa;
mod migration_policy;
mod migrations;
mod oauth_repository;
mod operations;
mod overload;
mod passkeys;
mod passwords;
mod protected;
mod provider;
mod registration;
mod relying_party;
mod repository;
mod session_cache;
mod sessions;
mod smtp;
mod soft_authenticator;
mod tokens;
mod webauthn;

//! The SeaORM adapter: one `UserRepository` for PostgreSQL and SQLite alike.
//!
//! The differences between the two engines stay in here (connection set-up in
//! [`connection`]); the core sees neither SQL nor `DbErr`.

mod admin;
mod backup;
mod bounded;
mod changes;
pub mod connection;
mod entities;
mod factors;
mod housekeeping;
mod import;
pub mod invalidations;
mod mail;
mod oauth;
mod rate_limiter;
mod rows;
mod session_lookups;
mod sessions;
mod signing_keys;
mod store;
mod users;

pub use backup::{Backup, BackupError, backup};
pub use connection::{
    DatabaseSettings, SchemaState, connect, migrate_down, migrate_up, pool_usage,
};
pub use import::PyauthDatabase;
pub use rate_limiter::SeaOrmRateLimiter;
pub use signing_keys::SeaOrmSigningKeyStore;
pub use store::SeaOrmStore;

//! The SeaORM adapter: one [`UserRepository`] for PostgreSQL and SQLite alike.
//!
//! The differences between the two engines stay in here (connection set-up in
//! [`connection`]); the core sees neither SQL nor `DbErr`.

mod admin;
mod changes;
pub mod connection;
mod entities;
mod factors;
mod import;
pub mod invalidations;
mod mail;
mod rate_limiter;
mod repository;
mod session_lookups;
mod signing_keys;

pub use connection::{DatabaseSettings, connect, migrate_down, migrate_up, pool_usage};
pub use import::PyauthDatabase;
pub use rate_limiter::SeaOrmRateLimiter;
pub use repository::SeaOrmUserRepository;
pub use signing_keys::SeaOrmSigningKeyStore;

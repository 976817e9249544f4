//! The SeaORM adapter: one [`UserRepository`] for PostgreSQL and SQLite alike.
//!
//! The differences between the two engines stay in here (connection set-up in
//! [`connection`]); the core sees neither SQL nor `DbErr`.

pub mod connection;
mod entities;
mod repository;

pub use connection::{DatabaseSettings, connect, migrate_down, migrate_up};
pub use repository::SeaOrmUserRepository;

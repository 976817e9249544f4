//! In-memory adapters, for development, tests and demos.
//!
//! Their state lives in one process, so they serve exactly one instance and forget everything
//! on restart; several instances need the database adapters.

mod changes;
mod factors;
mod rate_limiter;
mod signing_keys;
mod user_repository;

pub use rate_limiter::MemoryRateLimiter;
pub use signing_keys::MemorySigningKeyStore;
pub use user_repository::MemoryUserRepository;

//! In-memory adapters, for development, tests and demos.
//!
//! Their state lives in one process, so they serve exactly one instance and forget everything
//! on restart; several instances need the database adapters.

mod changes;
mod factor_state;
mod factors;
mod oauth;
mod oauth_state;
mod outbox;
mod rate_limiter;
mod sessions;
mod signing_keys;
mod store;

pub use rate_limiter::MemoryRateLimiter;
pub use signing_keys::MemorySigningKeyStore;
pub use store::MemoryStore;

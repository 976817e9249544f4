//! Outbound adapters: one module per technology, each implementing ports of `crate::domain`.

pub mod bcrypt;
pub mod clock;
pub mod jwt;
pub mod mail;
pub mod memory;
pub mod sea_orm;
pub mod sealing;
pub mod session_cache;
pub mod webauthn;

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

use crate::domain::ports::{
    AuditLog, ChallengeRepository, ClientRepository, FactorRepository, GrantRepository,
    Housekeeping, LinkTokens, MailOutbox, SessionRepository, UserRepository,
};

/// Every storage port at once: what one store ([`memory::MemoryStore`], [`sea_orm::SeaOrmStore`])
/// serves, so that an account change spans users, sessions, tokens, factors, the trail and the
/// outbox in one transaction, and a client's deletion or a revoked consent ends its sessions in
/// the transaction of the change.
pub trait Store:
    UserRepository
    + SessionRepository
    + AuditLog
    + LinkTokens
    + MailOutbox
    + Housekeeping
    + FactorRepository
    + ChallengeRepository
    + ClientRepository
    + GrantRepository
{
}

impl<S> Store for S where
    S: UserRepository
        + SessionRepository
        + AuditLog
        + LinkTokens
        + MailOutbox
        + Housekeeping
        + FactorRepository
        + ChallengeRepository
        + ClientRepository
        + GrantRepository
{
}

//! The core: entities, value types, ports and use cases.
//!
//! Nothing here knows HTTP, SQL, JWT or bcrypt. Adapters implement the traits in [`ports`];
//! the use cases in [`service`] only ever see those traits.

pub mod address;
pub mod audit;
pub mod change;
pub mod error;
pub mod import;
pub mod link_token;
pub mod mail;
pub mod mfa;
pub mod oauth;
pub mod password;
pub mod ports;
pub mod secrets;
pub mod service;
pub mod session;
pub mod signing_key;
pub mod user;

pub use address::{Email, EmailError};
pub use audit::{
    AUDIT_USER_AGENT_MAX_CHARS, AuditEvent, AuditKind, AuditQuery, FOLDED_COUNT, NewAuditEvent,
};
pub use change::{AccountChange, Applied, Condition, Edit, Refusal};
pub use error::BackendError;
pub use link_token::{LinkTokenHash, LinkTokenKind, LinkTokenRecord, NewLinkToken};
pub use mail::{FactorChange, Mail, MailJob, MailKind, OutboxDepth, QueuedMail};
pub use password::{Password, PasswordError, PasswordHash, PasswordPolicy};
pub use service::{AuthPolicy, Core};
pub use session::{
    ClientInfo, CookieHash, NewRefreshToken, NewSession, NewSessionCookie, Principal,
    RefreshTokenHash, RefreshTokenRecord, Session, SessionId, SessionKey, TokenPair,
};
pub use signing_key::{
    GeneratedKey, Hs256Acceptance, KeyAlgorithm, KeyChange, KeyMove, KeyPolicy, KeySet, KeyState,
    SigningKey,
};
pub use user::{FullName, FullNameError, NewUser, Role, User, UserChanges, UserId, UserQuery};

//! The ports: what the core needs from the outside world, as traits, one file per concern.
//!
//! Every adapter must honour the `# Errors` contract of each method: technology errors are
//! translated into [`BackendError`](crate::domain::BackendError) (or a more specific domain
//! error) inside the adapter, so the core never sees a driver's error type.
//!
//! The storage ports ([`UserRepository`], [`SessionRepository`], [`AuditLog`], [`LinkTokens`],
//! [`MailOutbox`], [`Housekeeping`], [`FactorRepository`], [`ChallengeRepository`],
//! [`ClientRepository`], [`GrantRepository`]) are narrow, and one store serves them all: an
//! account change spans several of them in one transaction.

mod audit;
mod credentials;
mod factors;
mod housekeeping;
mod import;
mod keys;
mod limits;
mod mail;
mod oauth;
mod passkeys;
mod sessions;
mod time;
mod users;

pub use audit::*;
pub use credentials::*;
pub use factors::*;
pub use housekeeping::*;
pub use import::*;
pub use keys::*;
pub use limits::*;
pub use mail::*;
pub use oauth::*;
pub use passkeys::*;
pub use sessions::*;
pub use time::*;
pub use users::*;

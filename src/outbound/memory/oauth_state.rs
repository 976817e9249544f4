//! The OpenID provider's state the memory store holds (clients, consents, codes, revoked
//! access tokens), with what deleting a user and the purge do to it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::domain::UserId;
use crate::domain::oauth::{AuthorizationCode, ClientId, CodeHash, Consent, OAuthClient};

/// The clients, consents, codes and revoked access tokens.
#[derive(Default)]
pub(super) struct OAuthState {
    pub(super) clients: HashMap<ClientId, OAuthClient>,
    pub(super) consents: HashMap<(UserId, ClientId), Consent>,
    pub(super) codes: HashMap<CodeHash, AuthorizationCode>,
    /// Each revoked access token's id, with the token's own end.
    pub(super) revoked: HashMap<String, DateTime<Utc>>,
}

impl OAuthState {
    /// Forgets user `id`'s consents and codes, as the database's ON DELETE CASCADE does.
    pub(super) fn forget_user(&mut self, id: UserId) {
        self.consents.retain(|(user, _), _| *user != id);
        self.codes.retain(|_, code| code.user_id != id);
    }

    /// Drops the codes and revocations expired at `now`.
    pub(super) fn purge(&mut self, now: DateTime<Utc>) {
        self.codes.retain(|_, code| now < code.expires_at);
        self.revoked.retain(|_, expires_at| now < *expires_at);
    }
}

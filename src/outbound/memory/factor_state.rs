//! The second factors, pending challenges and WebAuthn ceremonies the memory store holds,
//! with what a change to a user does to them.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::UserId;
use crate::domain::mfa::{
    Ceremony, FactorRemoval, MfaChallenge, MfaTokenHash, Passkey, RecoveryCodeHash, TotpFactor,
};

/// The second factors, challenges and ceremonies of every user.
#[derive(Default)]
pub(super) struct FactorState {
    pub(super) totp: HashMap<UserId, TotpFactor>,
    /// Each user's recovery codes, with when each was used.
    pub(super) recovery: HashMap<UserId, HashMap<RecoveryCodeHash, Option<DateTime<Utc>>>>,
    pub(super) challenges: HashMap<MfaTokenHash, MfaChallenge>,
    pub(super) passkeys: HashMap<Uuid, Passkey>,
    pub(super) ceremonies: HashMap<String, Ceremony>,
}

impl FactorState {
    /// Forgets everything of user `id`, as the database's ON DELETE CASCADE does.
    pub(super) fn forget_user(&mut self, id: UserId) {
        self.totp.remove(&id);
        self.recovery.remove(&id);
        self.challenges.retain(|_, c| c.user_id != id);
        self.passkeys.retain(|_, p| p.user_id != id);
        self.ceremonies.retain(|_, c| c.user_id != Some(id));
    }

    /// What a reset of user `id` removes now: the factors added while the address was
    /// unverified, and an enrolment never confirmed.
    pub(super) fn added_unverified(&self, id: UserId) -> FactorRemoval {
        let passkeys = self
            .passkeys
            .values()
            .filter(|p| p.user_id == id && p.added_unverified)
            .map(|p| p.id)
            .collect();
        FactorRemoval {
            totp: self
                .totp
                .get(&id)
                .is_some_and(|t| t.confirmed_at.is_none() || t.added_unverified),
            passkeys,
        }
    }

    /// Removes what `removal` names of user `id`'s factors.
    pub(super) fn remove(&mut self, id: UserId, removal: &FactorRemoval) {
        if removal.totp {
            self.totp.remove(&id);
            self.recovery.remove(&id);
        }
        self.passkeys
            .retain(|key, _| !removal.passkeys.contains(key));
    }

    /// Whether a passkey with `credential_id` is stored, for anyone.
    pub(super) fn credential_taken(&self, credential_id: &[u8]) -> bool {
        self.passkeys
            .values()
            .any(|p| p.credential_id == credential_id)
    }

    /// Whether user `id`'s TOTP secret is `sealed`, unconfirmed.
    pub(super) fn pending_totp_is(&self, id: UserId, sealed: &[u8]) -> bool {
        self.totp
            .get(&id)
            .is_some_and(|t| t.confirmed_at.is_none() && t.sealed_secret == sealed)
    }

    /// Whether user `id` holds passkey `passkey`.
    pub(super) fn holds(&self, id: UserId, passkey: Uuid) -> bool {
        self.passkeys.get(&passkey).is_some_and(|p| p.user_id == id)
    }

    /// Whether user `id` has a TOTP factor or recovery codes, or, with `passkeys`, a passkey.
    pub(super) fn has_any(&self, id: UserId, passkeys: bool) -> bool {
        self.totp.contains_key(&id)
            || self
                .recovery
                .get(&id)
                .is_some_and(|codes| !codes.is_empty())
            || (passkeys && self.passkeys.values().any(|p| p.user_id == id))
    }

    /// The ids of user `id`'s passkeys.
    pub(super) fn passkeys_of(&self, id: UserId) -> Vec<Uuid> {
        self.passkeys
            .values()
            .filter(|p| p.user_id == id)
            .map(|p| p.id)
            .collect()
    }

    /// Confirms user `id`'s pending TOTP factor at `at`.
    pub(super) fn confirm_totp(
        &mut self,
        id: UserId,
        step: i64,
        recovery: Vec<RecoveryCodeHash>,
        added_unverified: bool,
        at: DateTime<Utc>,
    ) {
        if let Some(totp) = self.totp.get_mut(&id) {
            totp.confirmed_at = Some(at);
            totp.last_step = Some(step);
            totp.added_unverified = added_unverified;
        }
        self.recovery
            .insert(id, recovery.into_iter().map(|hash| (hash, None)).collect());
    }

    pub(super) fn add_passkey(&mut self, passkey: Passkey) {
        self.passkeys.insert(passkey.id, passkey);
    }

    /// Drops the challenges and ceremonies expired at `now`.
    pub(super) fn purge(&mut self, now: DateTime<Utc>) {
        self.challenges.retain(|_, c| now < c.expires_at);
        self.ceremonies.retain(|_, c| now < c.expires_at);
    }
}

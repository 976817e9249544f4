//! [`FactorRepository`] in the state of [`MemoryStore`], under its one lock: every
//! check and write of a call happens at once, which is what the database adapter gets from its
//! conditional statements.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::{MemoryStore, State};
use crate::domain::mfa::{
    Ceremony, FactorRemoval, Factors, MfaChallenge, MfaTokenHash, NewMfaChallenge, Passkey,
    RecoveryCodeHash, TotpFactor,
};
use crate::domain::ports::{ChallengeRepository, FactorRepository};
use crate::domain::{BackendError, UserId};

/// The second factors, challenges and ceremonies of every user.
#[derive(Default)]
pub(super) struct FactorState {
    totp: HashMap<UserId, TotpFactor>,
    /// Each user's recovery codes, with when each was used.
    recovery: HashMap<UserId, HashMap<RecoveryCodeHash, Option<DateTime<Utc>>>>,
    challenges: HashMap<MfaTokenHash, MfaChallenge>,
    passkeys: HashMap<Uuid, Passkey>,
    ceremonies: HashMap<String, Ceremony>,
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

/// What the database's foreign keys refuse: a row of a user that does not exist.
fn known_user(state: &State, id: UserId) -> Result<(), BackendError> {
    if state.users.contains_key(&id) {
        Ok(())
    } else {
        Err(BackendError::unexpected(format!("no user {}", id.0)))
    }
}

#[async_trait]
impl FactorRepository for MemoryStore {
    async fn factors(&self, id: UserId) -> Result<Factors, BackendError> {
        let state = self.state()?;
        let factors = &state.factors;
        let passkeys = factors
            .passkeys
            .values()
            .filter(|p| p.user_id == id)
            .count();
        Ok(Factors {
            totp: factors
                .totp
                .get(&id)
                .is_some_and(|t| t.confirmed_at.is_some()),
            passkeys: u32::try_from(passkeys).map_err(BackendError::unexpected)?,
        })
    }

    async fn find_totp(&self, id: UserId) -> Result<Option<TotpFactor>, BackendError> {
        Ok(self.state()?.factors.totp.get(&id).cloned())
    }

    async fn store_pending_totp(
        &self,
        id: UserId,
        sealed_secret: Vec<u8>,
        _now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        known_user(&state, id)?;
        let totp = &mut state.factors.totp;
        if totp.get(&id).is_some_and(|t| t.confirmed_at.is_some()) {
            return Ok(false);
        }
        totp.insert(
            id,
            TotpFactor {
                user_id: id,
                sealed_secret,
                confirmed_at: None,
                last_step: None,
                added_unverified: false,
            },
        );
        Ok(true)
    }

    async fn use_totp_step(&self, id: UserId, step: i64) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        match state.factors.totp.get_mut(&id) {
            Some(totp)
                if totp.confirmed_at.is_some() && totp.last_step.is_none_or(|last| last < step) =>
            {
                totp.last_step = Some(step);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn spend_recovery_code(
        &self,
        id: UserId,
        hash: &RecoveryCodeHash,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        let used_at = state
            .factors
            .recovery
            .get_mut(&id)
            .and_then(|codes| codes.get_mut(hash));
        match used_at {
            Some(used_at @ None) => {
                *used_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn list_passkeys(&self, id: UserId) -> Result<Vec<Passkey>, BackendError> {
        let state = self.state()?;
        let mut found: Vec<Passkey> = state
            .factors
            .passkeys
            .values()
            .filter(|p| p.user_id == id)
            .cloned()
            .collect();
        found.sort_by_key(|p| (p.created_at, p.id));
        Ok(found)
    }

    async fn find_passkey(&self, credential_id: &[u8]) -> Result<Option<Passkey>, BackendError> {
        Ok(self
            .state()?
            .factors
            .passkeys
            .values()
            .find(|p| p.credential_id == credential_id)
            .cloned())
    }

    async fn touch_passkey(
        &self,
        id: Uuid,
        credential: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        if let Some(passkey) = self.state()?.factors.passkeys.get_mut(&id) {
            passkey.last_used_at = Some(now);
            if let Some(credential) = credential {
                passkey.credential = credential;
            }
        }
        Ok(())
    }

    async fn rename_passkey(
        &self,
        user_id: UserId,
        id: Uuid,
        name: &str,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        match state.factors.passkeys.get_mut(&id) {
            Some(passkey) if passkey.user_id == user_id => {
                name.clone_into(&mut passkey.name);
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[async_trait]
impl ChallengeRepository for MemoryStore {
    async fn store_mfa_challenge(&self, challenge: NewMfaChallenge) -> Result<(), BackendError> {
        let mut state = self.state()?;
        known_user(&state, challenge.user_id)?;
        state.factors.challenges.insert(
            challenge.hash,
            MfaChallenge {
                user_id: challenge.user_id,
                credential_version: challenge.credential_version,
                expires_at: challenge.expires_at,
                failures: 0,
                spent_at: None,
            },
        );
        Ok(())
    }

    async fn find_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
    ) -> Result<Option<MfaChallenge>, BackendError> {
        Ok(self.state()?.factors.challenges.get(hash).cloned())
    }

    async fn fail_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
        max_failures: u32,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        if let Some(challenge) = state
            .factors
            .challenges
            .get_mut(hash)
            .filter(|c| c.spent_at.is_none())
        {
            challenge.failures += 1;
            if challenge.failures >= max_failures {
                challenge.spent_at = Some(now);
            }
        }
        Ok(())
    }

    async fn spend_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let mut state = self.state()?;
        match state.factors.challenges.get_mut(hash) {
            Some(challenge) if challenge.spent_at.is_none() => {
                challenge.spent_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn store_ceremony(
        &self,
        ceremony: Ceremony,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let mut state = self.state()?;
        if let Some(id) = ceremony.user_id {
            known_user(&state, id)?;
        }
        state.factors.ceremonies.retain(|_, c| now < c.expires_at);
        state
            .factors
            .ceremonies
            .insert(ceremony.challenge.clone(), ceremony);
        Ok(())
    }

    async fn take_ceremony(
        &self,
        challenge: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Ceremony>, BackendError> {
        Ok(self
            .state()?
            .factors
            .ceremonies
            .remove(challenge)
            .filter(|c| now < c.expires_at))
    }
}

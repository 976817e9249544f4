//! [`FactorRepository`] in the state of [`MemoryStore`], under its one lock: every
//! check and write of a call happens at once, which is what the database adapter gets from its
//! conditional statements.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::store::{MemoryStore, State};
use crate::domain::mfa::{
    Ceremony, Factors, MfaChallenge, MfaTokenHash, NewMfaChallenge, Passkey, RecoveryCodeHash,
    TotpFactor,
};
use crate::domain::ports::{ChallengeRepository, FactorRepository};
use crate::domain::{BackendError, UserId};

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

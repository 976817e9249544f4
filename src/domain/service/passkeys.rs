//! Passkeys (WebAuthn): registering them, signing in with one, listing and removing them.
//!
//! A ceremony's state is stored until its answer comes back, found by the challenge the
//! answer carries, and taken (deleted) by the first answer: any instance can finish a
//! ceremony another one started, and none can finish it twice. A passkey sign-in is a whole
//! login (`amr` `webauthn`): it needs no password and no code.

use std::sync::Arc;

use chrono::SubsecRound as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::credentials::{Credentials, LoginError, login_session_error};
use super::limits::{Action, Guard, Throttled};
use super::notices::Mailing;
use super::opening::{CookieSession, SessionOpener};
use super::second_step::{MfaError, Proof, SecondStep};
use crate::domain::mfa::{
    AuthMethod, Ceremony, CeremonyKind, FactorRemoval, MAX_PASSKEYS, Passkey,
};
use crate::domain::ports::{
    CeremonyError, ChallengeRepository, Clock, FactorRepository, PasskeyCeremonies, UserRepository,
};
use crate::domain::{
    AccountChange, Applied, AuditKind, AuthPolicy, BackendError, ClientInfo, Condition, Edit,
    FactorChange, NewAuditEvent, Principal, Refusal, TokenPair, User, UserId,
};

/// Why a passkey use case failed.
#[derive(Debug, thiserror::Error)]
pub enum PasskeyError {
    /// The browser's answer is malformed, for an unknown, spent or expired ceremony, for
    /// another user or origin, or does not verify; or names no stored passkey.
    #[error("invalid passkey response")]
    InvalidResponse,
    /// The credential is registered already.
    #[error("passkey already registered")]
    AlreadyRegistered,
    /// The caller holds [`MAX_PASSKEYS`] already.
    #[error("too many passkeys")]
    TooMany,
    /// The caller has no passkey with that id.
    #[error("passkey not found")]
    NotFound,
    /// The password given to add a passkey is wrong.
    #[error("incorrect password")]
    WrongPassword,
    /// The code given to add a passkey is wrong, replayed or malformed.
    #[error("invalid code")]
    InvalidCode,
    /// Passkeys need a `public_url` whose host can be a relying-party id.
    #[error("passkeys are not configured")]
    NotConfigured,
    /// The account cannot sign in (inactive, unverified).
    #[error(transparent)]
    Login(LoginError),
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<CeremonyError> for PasskeyError {
    fn from(err: CeremonyError) -> Self {
        match err {
            CeremonyError::Rejected(reason) => {
                tracing::info!(%reason, "WebAuthn answer refused");
                Self::InvalidResponse
            }
            CeremonyError::Backend(err) => Self::Backend(err),
        }
    }
}

impl From<MfaError> for PasskeyError {
    fn from(err: MfaError) -> Self {
        match err {
            MfaError::WrongPassword => Self::WrongPassword,
            MfaError::InvalidCode => Self::InvalidCode,
            MfaError::Throttled(t) => Self::Throttled(t),
            MfaError::Backend(b) => Self::Backend(b),
            // `prove` answers none of these.
            MfaError::AlreadyEnabled | MfaError::NotEnabled => {
                Self::Backend(BackendError::unexpected(err))
            }
        }
    }
}

impl From<LoginError> for PasskeyError {
    fn from(err: LoginError) -> Self {
        match err {
            LoginError::Throttled(t) => Self::Throttled(t),
            LoginError::Backend(b) => Self::Backend(b),
            other => Self::Login(other),
        }
    }
}

/// The WebAuthn user handle of `user`: stable, so that every passkey of a user names them
/// alike, and free of anything personal (it is a digest of the id, not the id or the email).
pub fn user_handle(user: UserId) -> Uuid {
    let digest = Sha256::digest(format!("portcullis webauthn user {user}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// The default name of a user's `n`th passkey.
fn default_name(n: usize) -> String {
    format!("Passkey {n}")
}

/// Passkeys: registering, signing in, listing, renaming, removing.
pub struct Passkeys {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) factors: Arc<dyn FactorRepository>,
    pub(super) challenges: Arc<dyn ChallengeRepository>,
    pub(super) passkeys: Option<Arc<dyn PasskeyCeremonies>>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) guard: Arc<Guard>,
    pub(super) credentials: Arc<Credentials>,
    pub(super) second_step: Arc<SecondStep>,
    pub(super) opener: Arc<SessionOpener>,
    pub(super) mailing: Arc<Mailing>,
}

impl Passkeys {
    fn ceremonies(&self) -> Result<&dyn PasskeyCeremonies, PasskeyError> {
        self.passkeys.as_deref().ok_or(PasskeyError::NotConfigured)
    }

    /// Starts adding a passkey for the caller: the options for the browser. The caller proves
    /// themselves again first (the password, or a code for a user with TOTP; see
    /// `SecondStep::prove`), so an access token alone adds no way in; that check's limits
    /// also bound the ceremonies one caller can store.
    ///
    /// # Errors
    /// [`PasskeyError::NotConfigured`]; [`PasskeyError::TooMany`];
    /// [`PasskeyError::WrongPassword`], [`PasskeyError::InvalidCode`];
    /// [`PasskeyError::Throttled`]; [`PasskeyError::Backend`].
    pub async fn begin_passkey_registration(
        &self,
        principal: &Principal,
        proof: Proof<'_>,
        client: &ClientInfo,
    ) -> Result<String, PasskeyError> {
        let ceremonies = self.ceremonies()?;
        let user = &principal.user;
        let existing: Vec<Vec<u8>> = self
            .factors
            .list_passkeys(user.id)
            .await?
            .into_iter()
            .map(|passkey| passkey.credential_id)
            .collect();
        if existing.len() >= MAX_PASSKEYS {
            return Err(PasskeyError::TooMany);
        }
        self.second_step.prove(principal, proof, client).await?;
        let shown = user
            .full_name
            .as_ref()
            .map_or(user.email.as_str(), |name| name.as_str());
        let start = ceremonies.start_registration(
            user_handle(user.id),
            user.email.as_str(),
            shown,
            &existing,
        )?;
        self.keep_ceremony(
            CeremonyKind::Registration,
            Some(user.id),
            &start.challenge,
            start.state,
        )
        .await?;
        Ok(start.options)
    }

    /// Finishes adding a passkey: checks the browser's answer to a registration the caller
    /// started, and stores the credential under `name` (a default one when `None`).
    ///
    /// # Errors
    /// [`PasskeyError::InvalidResponse`] for an answer that does not verify, or to a ceremony
    /// that is unknown, spent, expired or not the caller's; [`PasskeyError::AlreadyRegistered`].
    pub async fn finish_passkey_registration(
        &self,
        principal: &Principal,
        response: &str,
        name: Option<String>,
        client: &ClientInfo,
    ) -> Result<Passkey, PasskeyError> {
        let ceremonies = self.ceremonies()?;
        let user = &principal.user;
        let ceremony = self
            .take_ceremony(ceremonies, response, CeremonyKind::Registration)
            .await?;
        if ceremony.user_id != Some(user.id) {
            return Err(PasskeyError::InvalidResponse);
        }
        let registered = ceremonies.finish_registration(&ceremony.state, response)?;
        let count = self.factors.list_passkeys(user.id).await?.len();
        // Checked again here: registrations started before the last slot was taken.
        if count >= MAX_PASSKEYS {
            return Err(PasskeyError::TooMany);
        }
        // Storage keeps microseconds: the passkey answered is then the one listed later.
        let now = self.clock.now().trunc_subsecs(6);
        let passkey = Passkey {
            id: Uuid::new_v4(),
            user_id: user.id,
            name: name.unwrap_or_else(|| default_name(count + 1)),
            created_at: now,
            last_used_at: None,
            credential_id: registered.credential_id,
            credential: registered.credential,
            user_handle: user_handle(user.id),
            added_unverified: !user.email_verified,
        };
        let audit = NewAuditEvent::new(AuditKind::PasskeyAdded, Some(user.id), client, now)
            .with("passkey_id", passkey.id);
        let notice = self
            .mailing
            .factor_notice(
                user,
                FactorChange::Added,
                vec![passkey.described()],
                client.ip.as_deref(),
            )
            .await?;
        // As a reset is, on the credential version: stored before a reset (which then sees
        // it), or refused.
        let change = AccountChange::of(user.id, now)
            .when(Condition::Current {
                credential_version: user.credential_version,
            })
            .then(Edit::AddPasskey(passkey.clone()))
            .recording(audit)
            .mailing(notice);
        match self.users.apply(change).await? {
            Applied::Refused(Refusal::CredentialTaken) => Err(PasskeyError::AlreadyRegistered),
            // A reset or a new password since this request began: it vouches for nothing.
            Applied::Refused(_) => Err(PasskeyError::InvalidResponse),
            Applied::Done(_) | Applied::Deleted => Ok(passkey),
        }
    }

    /// Starts a sign-in with a passkey: the options for the browser. Limited per client
    /// address like a login, since each start stores a ceremony.
    ///
    /// # Errors
    /// [`PasskeyError::Throttled`]; [`PasskeyError::NotConfigured`].
    pub async fn begin_passkey_login(&self, client: &ClientInfo) -> Result<String, PasskeyError> {
        let ceremonies = self.ceremonies()?;
        self.guard
            .throttle(Action::Login, client.ip.as_deref(), None)
            .await?;
        let start = ceremonies.start_authentication()?;
        self.keep_ceremony(
            CeremonyKind::Authentication,
            None,
            &start.challenge,
            start.state,
        )
        .await?;
        Ok(start.options)
    }

    /// Finishes a sign-in with a passkey and opens a session.
    ///
    /// # Errors
    /// [`PasskeyError::InvalidResponse`] for an answer that does not verify, to an unknown,
    /// spent or expired ceremony, or with a passkey nobody has; [`PasskeyError::Login`] for
    /// an inactive or unverified account.
    pub async fn finish_passkey_login(
        &self,
        response: &str,
        client: ClientInfo,
    ) -> Result<TokenPair, PasskeyError> {
        let user = self.check_passkey(response, &client).await?;
        self.opener
            .start_session(&user, client, vec![AuthMethod::Webauthn])
            .await
            .map_err(|err| login_session_error(err).into())
    }

    /// [`Passkeys::finish_passkey_login`] for the console: a session held by a cookie.
    ///
    /// # Errors
    /// As [`Passkeys::finish_passkey_login`].
    pub async fn finish_passkey_sign_in_with_cookie(
        &self,
        response: &str,
        client: ClientInfo,
    ) -> Result<CookieSession, PasskeyError> {
        let user = self.check_passkey(response, &client).await?;
        self.opener
            .open_cookie_session(&user, client, vec![AuthMethod::Webauthn])
            .await
            .map_err(|err| login_session_error(err).into())
    }

    /// The checks of a passkey sign-in: the ceremony, the passkey, the limits, the signature,
    /// the account. Returns the user to open a session for.
    async fn check_passkey(
        &self,
        response: &str,
        client: &ClientInfo,
    ) -> Result<User, PasskeyError> {
        let ceremonies = self.ceremonies()?;
        let ceremony = self
            .take_ceremony(ceremonies, response, CeremonyKind::Authentication)
            .await?;
        let credential_id = ceremonies.credential_of(response)?;
        let passkey = self
            .factors
            .find_passkey(&credential_id)
            .await?
            .ok_or(PasskeyError::InvalidResponse)?;
        let user = self
            .users
            .find_user_by_id(passkey.user_id)
            .await?
            .ok_or(PasskeyError::InvalidResponse)?;
        self.guard
            .throttle(Action::Login, client.ip.as_deref(), Some(user.email.key()))
            .await?;
        let verified = ceremonies.finish_authentication(
            &ceremony.state,
            response,
            passkey.user_handle,
            &passkey.credential,
        )?;
        if verified.credential_id != passkey.credential_id {
            return Err(PasskeyError::InvalidResponse);
        }
        self.credentials.check_account(&user)?;
        self.factors
            .touch_passkey(passkey.id, verified.updated_credential, self.clock.now())
            .await?;
        Ok(user)
    }

    /// The caller's passkeys, oldest first.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn passkeys(&self, user: UserId) -> Result<Vec<Passkey>, BackendError> {
        self.factors.list_passkeys(user).await
    }

    /// Removes one of the caller's passkeys.
    ///
    /// # Errors
    /// [`PasskeyError::NotFound`] for an id that is not one of the caller's passkeys.
    pub async fn remove_passkey(
        &self,
        principal: &Principal,
        id: Uuid,
        client: &ClientInfo,
    ) -> Result<(), PasskeyError> {
        let user = &principal.user;
        let passkey = self
            .factors
            .list_passkeys(user.id)
            .await?
            .into_iter()
            .find(|passkey| passkey.id == id)
            .ok_or(PasskeyError::NotFound)?;
        let audit = NewAuditEvent::new(
            AuditKind::PasskeyRemoved,
            Some(user.id),
            client,
            self.clock.now(),
        )
        .with("passkey_id", id);
        let notice = self
            .mailing
            .factor_notice(
                user,
                FactorChange::Removed,
                vec![passkey.described()],
                client.ip.as_deref(),
            )
            .await?;
        let change = AccountChange::of(user.id, audit.at)
            .when(Condition::HoldsPasskey(id))
            .then(Edit::RemoveFactors(FactorRemoval {
                totp: false,
                passkeys: vec![id],
            }))
            .recording(audit)
            .mailing(notice);
        if self.users.apply(change).await?.kept() {
            Ok(())
        } else {
            Err(PasskeyError::NotFound)
        }
    }

    /// Renames one of the caller's passkeys to `name` (see [`crate::domain::mfa::passkey_name`]).
    ///
    /// # Errors
    /// [`PasskeyError::NotFound`] for an id that is not one of the caller's passkeys.
    pub async fn rename_passkey(
        &self,
        principal: &Principal,
        id: Uuid,
        name: &str,
    ) -> Result<(), PasskeyError> {
        if self
            .factors
            .rename_passkey(principal.user.id, id, name)
            .await?
        {
            Ok(())
        } else {
            Err(PasskeyError::NotFound)
        }
    }

    async fn keep_ceremony(
        &self,
        kind: CeremonyKind,
        user_id: Option<UserId>,
        challenge: &str,
        state: String,
    ) -> Result<(), BackendError> {
        let now = self.clock.now();
        let ceremony = Ceremony {
            challenge: challenge.to_owned(),
            kind,
            user_id,
            state,
            expires_at: now + self.policy.mfa.ceremony_ttl,
        };
        self.challenges.store_ceremony(ceremony, now).await
    }

    /// The ceremony the answer `response` is to, taken so that it finishes at most once.
    async fn take_ceremony(
        &self,
        ceremonies: &dyn PasskeyCeremonies,
        response: &str,
        kind: CeremonyKind,
    ) -> Result<Ceremony, PasskeyError> {
        let challenge = ceremonies.challenge_of(response)?;
        self.challenges
            .take_ceremony(&challenge, self.clock.now())
            .await?
            .filter(|ceremony| ceremony.kind == kind)
            .ok_or(PasskeyError::InvalidResponse)
    }
}

#[cfg(test)]
mod tests;

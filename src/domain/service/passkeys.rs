//! Passkeys (WebAuthn): registering them, signing in with one, listing and removing them.
//!
//! A ceremony's state is stored until its answer comes back, found by the challenge the
//! answer carries, and taken (deleted) by the first answer: any instance can finish a
//! ceremony another one started, and none can finish it twice. A passkey sign-in is a whole
//! login (`amr` `webauthn`): it needs no password and no code.

use chrono::SubsecRound as _;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::accounts::{LoginError, login_session_error};
use super::limits::{Action, Throttled};
use super::mfa::{MfaError, Proof};
use super::{AuthService, CookieSession};
use crate::domain::mfa::{
    AuthMethod, Ceremony, CeremonyKind, FactorRemoval, MAX_PASSKEYS, Passkey,
};
use crate::domain::ports::{CeremonyError, PasskeyCeremonies};
use crate::domain::{
    AccountChange, Applied, AuditKind, BackendError, ClientInfo, Condition, Edit, FactorChange,
    NewAuditEvent, Principal, Refusal, TokenPair, User, UserId,
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

impl AuthService {
    fn ceremonies(&self) -> Result<&dyn PasskeyCeremonies, PasskeyError> {
        self.passkeys.as_deref().ok_or(PasskeyError::NotConfigured)
    }

    /// Starts adding a passkey for the caller: the options for the browser. The caller proves
    /// themselves again first (the password, or a code for a user with TOTP; see
    /// [`AuthService::prove`]), so an access token alone adds no way in; that check's limits
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
        self.prove(principal, proof, client).await?;
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
        self.throttle(Action::Login, client.ip.as_deref(), None)
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
        self.start_session(&user, client, vec![AuthMethod::Webauthn])
            .await
            .map_err(|err| login_session_error(err).into())
    }

    /// [`AuthService::finish_passkey_login`] for the console: a session held by a cookie.
    ///
    /// # Errors
    /// As [`AuthService::finish_passkey_login`].
    pub async fn finish_passkey_sign_in_with_cookie(
        &self,
        response: &str,
        client: ClientInfo,
    ) -> Result<CookieSession, PasskeyError> {
        let user = self.check_passkey(response, &client).await?;
        self.open_cookie_session(&user, client, vec![AuthMethod::Webauthn])
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
        self.throttle(Action::Login, client.ip.as_deref(), Some(user.email.key()))
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
        self.check_account(&user)?;
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
mod tests {
    use chrono::TimeDelta;
    use mockall::predicate::eq;

    use super::super::test_support::{Mocks, now, session, user};
    use super::*;
    use crate::domain::Role;
    use crate::domain::ports::{CeremonyStart, MockPasskeyCeremonies, VerifiedAssertion};

    const ANSWER: &str = r#"{"id":"answer"}"#;

    fn principal() -> Principal {
        Principal {
            user: user(7, Role::User, true),
            session_id: None,
        }
    }

    fn stored(user_id: i64) -> Passkey {
        Passkey {
            id: Uuid::from_u128(1),
            user_id: UserId(user_id),
            name: "Laptop".into(),
            created_at: now(),
            last_used_at: None,
            credential_id: vec![1, 2, 3],
            credential: "stored-credential".into(),
            user_handle: user_handle(UserId(user_id)),
            added_unverified: false,
        }
    }

    /// `begin_passkey_registration` of `principal()` with the password `pw`, which the hasher
    /// finds `right`.
    async fn start(m: Mocks, right: bool) -> Result<String, PasskeyError> {
        let mut m = m;
        m.hasher
            .expect_verify()
            .withf(|candidate, _| candidate == "pw")
            .returning(move |_, _| Ok(right));
        m.service()
            .begin_passkey_registration(&principal(), Proof::Password("pw"), &ClientInfo::default())
            .await
    }

    fn ceremony(kind: CeremonyKind, user_id: Option<i64>) -> Ceremony {
        Ceremony {
            challenge: "challenge".into(),
            kind,
            user_id: user_id.map(UserId),
            state: "state".into(),
            expires_at: now() + TimeDelta::minutes(5),
        }
    }

    /// Ceremonies whose answers carry the challenge `challenge`.
    fn ceremonies() -> MockPasskeyCeremonies {
        let mut ceremonies = MockPasskeyCeremonies::new();
        ceremonies
            .expect_challenge_of()
            .returning(|_| Ok("challenge".into()));
        ceremonies
    }

    #[test]
    fn a_users_handle_is_stable_and_names_nobody_else() {
        assert_eq!(user_handle(UserId(7)), user_handle(UserId(7)));
        assert_ne!(user_handle(UserId(7)), user_handle(UserId(8)));
    }

    #[tokio::test]
    async fn without_a_relying_party_passkeys_say_they_are_not_configured() {
        let err = Mocks::new()
            .service()
            .begin_passkey_login(&ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, PasskeyError::NotConfigured));
    }

    #[tokio::test]
    async fn a_registration_excludes_the_users_passkeys_and_keeps_its_state_five_minutes() {
        let mut m = Mocks::new();
        m.factors
            .expect_list_passkeys()
            .returning(|id| Ok(vec![stored(id.0)]));
        let mut ceremonies = MockPasskeyCeremonies::new();
        ceremonies
            .expect_start_registration()
            .withf(|handle, name, shown, existing| {
                *handle == user_handle(UserId(7))
                    && name == "user7@example.com"
                    && shown == "user7@example.com"
                    && existing == [vec![1, 2, 3]]
            })
            .returning(|_, _, _, _| {
                Ok(CeremonyStart {
                    options: "{\"publicKey\":{}}".into(),
                    challenge: "challenge".into(),
                    state: "state".into(),
                })
            });
        m.passkeys = Some(ceremonies);
        m.challenges
            .expect_store_ceremony()
            .with(eq(ceremony(CeremonyKind::Registration, Some(7))), eq(now()))
            .times(1)
            .returning(|_, _| Ok(()));
        let options = start(m, true).await.unwrap();
        assert_eq!(options, "{\"publicKey\":{}}");
    }

    #[tokio::test]
    async fn an_access_token_alone_starts_no_registration() {
        let mut m = Mocks::new();
        m.factors.expect_list_passkeys().returning(|_| Ok(vec![]));
        let mut ceremonies = MockPasskeyCeremonies::new();
        ceremonies.expect_start_registration().never();
        m.passkeys = Some(ceremonies);
        m.challenges.expect_store_ceremony().never();
        let err = start(m, false).await.unwrap_err();
        assert!(matches!(err, PasskeyError::WrongPassword));
        // Nor does a code that is not one (a user with TOTP may give one instead).
        let mut m = Mocks::new();
        m.factors.expect_list_passkeys().returning(|_| Ok(vec![]));
        m.factors.expect_find_totp().returning(|_| Ok(None));
        m.factors.expect_spend_recovery_code().never();
        let mut ceremonies = MockPasskeyCeremonies::new();
        ceremonies.expect_start_registration().never();
        m.passkeys = Some(ceremonies);
        let err = m
            .service()
            .begin_passkey_registration(&principal(), Proof::Code("123456"), &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, PasskeyError::InvalidCode));
    }

    #[tokio::test]
    async fn a_user_with_the_most_passkeys_starts_no_registration() {
        let mut m = Mocks::new();
        m.factors
            .expect_list_passkeys()
            .returning(|id| Ok(vec![stored(id.0); MAX_PASSKEYS]));
        let mut ceremonies = MockPasskeyCeremonies::new();
        ceremonies.expect_start_registration().never();
        m.passkeys = Some(ceremonies);
        m.challenges.expect_store_ceremony().never();
        let err = start(m, true).await.unwrap_err();
        assert!(matches!(err, PasskeyError::TooMany));
    }

    #[tokio::test]
    async fn a_registration_is_finished_only_by_the_user_who_started_it() {
        for (kind, owner) in [
            (CeremonyKind::Registration, Some(8)),
            (CeremonyKind::Authentication, None),
        ] {
            let mut m = Mocks::new();
            let mut ceremonies = ceremonies();
            ceremonies.expect_finish_registration().never();
            m.passkeys = Some(ceremonies);
            m.challenges
                .expect_take_ceremony()
                .returning(move |_, _| Ok(Some(ceremony(kind, owner))));
            m.users.expect_apply().never();
            let err = m
                .service()
                .finish_passkey_registration(&principal(), ANSWER, None, &ClientInfo::default())
                .await
                .unwrap_err();
            assert!(matches!(err, PasskeyError::InvalidResponse));
        }
    }

    #[tokio::test]
    async fn a_verified_registration_stores_the_passkey_with_its_name_once() {
        for applied in [
            None,
            Some(Refusal::CredentialTaken),
            Some(Refusal::NotCurrent),
        ] {
            let mut m = Mocks::new();
            let mut ceremonies = ceremonies();
            ceremonies
                .expect_finish_registration()
                .with(eq("state"), eq(ANSWER))
                .returning(|_, _| {
                    Ok(crate::domain::ports::RegisteredPasskey {
                        credential_id: vec![9],
                        credential: "new-credential".into(),
                    })
                });
            m.passkeys = Some(ceremonies);
            m.challenges
                .expect_take_ceremony()
                .with(eq("challenge"), eq(now()))
                .returning(|_, _| Ok(Some(ceremony(CeremonyKind::Registration, Some(7)))));
            m.factors.expect_list_passkeys().returning(|_| Ok(vec![]));
            m.users
                .expect_apply()
                .withf(|change| {
                    let [Edit::AddPasskey(passkey)] = change.edits.as_slice() else {
                        return false;
                    };
                    passkey.user_id == UserId(7)
                        && passkey.name == "Passkey 1"
                        && passkey.credential_id == [9]
                        // Added while the address is unverified: a reset removes it.
                        && passkey.added_unverified
                        // Only if the password is still the one of this session's login.
                        && change.conditions
                            == [Condition::Current {
                                credential_version: 0,
                            }]
                        && matches!(change.audit.as_slice(), [a] if a.kind == AuditKind::PasskeyAdded)
                        && change.mail.is_empty()
                })
                .times(1)
                .returning(move |change| {
                    Ok(applied.map_or_else(
                        || Applied::Done(user(change.user.0, Role::User, false)),
                        Applied::Refused,
                    ))
                });
            let result = m
                .service()
                .finish_passkey_registration(&principal(), ANSWER, None, &ClientInfo::default())
                .await;
            match (applied, result) {
                (None, Ok(passkey)) => {
                    assert_eq!(passkey.credential, "new-credential");
                }
                (Some(Refusal::CredentialTaken), Err(PasskeyError::AlreadyRegistered))
                | (Some(Refusal::NotCurrent), Err(PasskeyError::InvalidResponse)) => {}
                (applied, result) => panic!("{applied:?}: {result:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_passkey_added_or_removed_is_announced_to_the_address_naming_it() {
        let mut m = Mocks::new();
        m.mailer = Some(crate::domain::ports::MockMailer::new());
        let mut ceremonies = ceremonies();
        ceremonies.expect_finish_registration().returning(|_, _| {
            Ok(crate::domain::ports::RegisteredPasskey {
                credential_id: vec![9],
                credential: "new-credential".into(),
            })
        });
        m.passkeys = Some(ceremonies);
        m.challenges
            .expect_take_ceremony()
            .returning(|_, _| Ok(Some(ceremony(CeremonyKind::Registration, Some(7)))));
        m.factors
            .expect_list_passkeys()
            .returning(|id| Ok(vec![stored(id.0)]));
        m.users
            .expect_apply()
            .withf(|change| {
                matches!(change.edits.as_slice(), [Edit::AddPasskey(_)])
                    && change.mail
                        == [crate::domain::MailJob::FactorNotice {
                            user_id: UserId(7),
                            change: FactorChange::Added,
                            factors: vec!["passkey \"Phone\"".into()],
                        }]
            })
            .times(1)
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        m.users
            .expect_apply()
            .withf(|change| {
                change.conditions == [Condition::HoldsPasskey(Uuid::from_u128(1))]
                    && change.edits
                        == [Edit::RemoveFactors(FactorRemoval {
                            totp: false,
                            passkeys: vec![Uuid::from_u128(1)],
                        })]
                    && change.mail
                        == [crate::domain::MailJob::FactorNotice {
                            user_id: UserId(7),
                            change: FactorChange::Removed,
                            factors: vec!["passkey \"Laptop\"".into()],
                        }]
            })
            .times(1)
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        let service = m.service();
        service
            .finish_passkey_registration(
                &principal(),
                ANSWER,
                Some("Phone".into()),
                &ClientInfo::default(),
            )
            .await
            .unwrap();
        service
            .remove_passkey(&principal(), Uuid::from_u128(1), &ClientInfo::default())
            .await
            .unwrap();
    }

    /// A sign-in ceremony whose answer names the passkey `stored(7)`.
    fn sign_in(m: &mut Mocks, verified: Result<VerifiedAssertion, CeremonyError>) {
        let mut ceremonies = ceremonies();
        ceremonies
            .expect_credential_of()
            .returning(|_| Ok(vec![1, 2, 3]));
        let mut verified = Some(verified);
        ceremonies
            .expect_finish_authentication()
            .withf(|state, answer, handle, credential| {
                state == "state"
                    && answer == ANSWER
                    && *handle == user_handle(UserId(7))
                    && credential == "stored-credential"
            })
            .times(1)
            .returning(move |_, _, _, _| verified.take().unwrap());
        m.passkeys = Some(ceremonies);
        m.challenges
            .expect_take_ceremony()
            .returning(|_, _| Ok(Some(ceremony(CeremonyKind::Authentication, None))));
        m.factors
            .expect_find_passkey()
            .with(eq(vec![1u8, 2, 3]))
            .returning(|_| Ok(Some(stored(7))));
    }

    #[tokio::test]
    async fn a_verified_passkey_opens_a_webauthn_session_and_stores_the_new_counter() {
        let mut m = Mocks::new();
        sign_in(
            &mut m,
            Ok(VerifiedAssertion {
                credential_id: vec![1, 2, 3],
                updated_credential: Some("counter-2".into()),
            }),
        );
        m.users
            .expect_find_user_by_id()
            .returning(|id| Ok(Some(user(id.0, Role::User, true))));
        m.factors
            .expect_touch_passkey()
            .with(
                eq(Uuid::from_u128(1)),
                eq(Some("counter-2".to_owned())),
                eq(now()),
            )
            .times(1)
            .returning(|_, _, _| Ok(()));
        m.sessions
            .expect_create_session()
            .withf(|s, _| s.methods == [AuthMethod::Webauthn] && s.user_id == UserId(7))
            .times(1)
            .returning(|s, _| Ok(session(s.id, s.user_id.0)));
        m.tokens.expect_issue().returning(|_| Ok("signed".into()));
        let pair = m
            .service()
            .finish_passkey_login(ANSWER, ClientInfo::default())
            .await
            .unwrap();
        assert_eq!(pair.access_token, "signed");
    }

    #[tokio::test]
    async fn a_bad_signature_or_an_inactive_user_opens_nothing() {
        for active in [true, false] {
            let mut m = Mocks::new();
            let verdict = if active {
                Err(CeremonyError::Rejected("bad signature".into()))
            } else {
                Ok(VerifiedAssertion {
                    credential_id: vec![1, 2, 3],
                    updated_credential: None,
                })
            };
            sign_in(&mut m, verdict);
            m.users
                .expect_find_user_by_id()
                .returning(move |id| Ok(Some(user(id.0, Role::User, active))));
            m.factors.expect_touch_passkey().never();
            m.sessions.expect_create_session().never();
            let err = m
                .service()
                .finish_passkey_login(ANSWER, ClientInfo::default())
                .await
                .unwrap_err();
            if active {
                assert!(matches!(err, PasskeyError::InvalidResponse));
            } else {
                assert!(matches!(err, PasskeyError::Login(LoginError::Inactive)));
            }
        }
    }

    #[tokio::test]
    async fn an_answer_to_a_spent_or_unknown_ceremony_is_refused_before_any_check() {
        let mut m = Mocks::new();
        let mut ceremonies = ceremonies();
        ceremonies.expect_finish_authentication().never();
        m.passkeys = Some(ceremonies);
        m.challenges
            .expect_take_ceremony()
            .returning(|_, _| Ok(None));
        m.factors.expect_find_passkey().never();
        let err = m
            .service()
            .finish_passkey_login(ANSWER, ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, PasskeyError::InvalidResponse));
    }

    #[tokio::test]
    async fn renaming_anothers_passkey_is_not_found() {
        let mut m = Mocks::new();
        m.factors
            .expect_rename_passkey()
            .with(eq(UserId(7)), eq(Uuid::from_u128(5)), eq("Phone"))
            .returning(|_, _, _| Ok(false));
        let err = m
            .service()
            .rename_passkey(&principal(), Uuid::from_u128(5), "Phone")
            .await
            .unwrap_err();
        assert!(matches!(err, PasskeyError::NotFound));
    }

    #[tokio::test]
    async fn removing_anothers_passkey_is_not_found() {
        let mut m = Mocks::new();
        // Not among the caller's: nothing is removed, and nobody is told.
        m.factors
            .expect_list_passkeys()
            .with(eq(UserId(7)))
            .returning(|id| Ok(vec![stored(id.0)]));
        m.users.expect_apply().never();
        let err = m
            .service()
            .remove_passkey(&principal(), Uuid::from_u128(5), &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, PasskeyError::NotFound));
    }
}

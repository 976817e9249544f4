//! The second factor of a login: TOTP enrolment and removal, recovery codes, and the second
//! step that turns a pending login into a session.
//!
//! A right password of an enrolled user does not clear the account's failure run (see
//! [`AuthService::login`]): only the second step does. So wrong codes add up across logins,
//! and whoever holds the password alone meets the failure delay like a password guesser.

use chrono::TimeDelta;

use super::AuthService;
use super::accounts::{LoginError, login_session_error};
use super::limits::{Action, Throttled};
use crate::domain::mfa::{
    AuthMethod, FactorRemoval, Factors, MfaChallenge, MfaTokenHash, NewMfaChallenge,
    RecoveryCodeHash, RecoveryCodes, TOTP_DESCRIBED, TotpCode, TotpSecret,
};
use crate::domain::{
    AccountChange, AuditKind, BackendError, ClientInfo, Condition, Edit, FactorChange, MailJob,
    NewAuditEvent, Principal, TokenPair, User, UserId,
};

/// Second-factor settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MfaPolicy {
    /// The issuer authenticator apps show next to the account.
    pub issuer: String,
    /// How long the second step of a login may wait.
    pub challenge_ttl: TimeDelta,
    /// Wrong codes that spend a pending login.
    pub max_failures: u32,
    /// How long a WebAuthn ceremony may take.
    pub ceremony_ttl: TimeDelta,
}

impl Default for MfaPolicy {
    fn default() -> Self {
        Self {
            issuer: "Portcullis".into(),
            challenge_ttl: TimeDelta::minutes(5),
            max_failures: 5,
            ceremony_ttl: TimeDelta::minutes(5),
        }
    }
}

/// What a right password leads to.
#[derive(Debug)]
pub enum LoginStep {
    /// No second factor: the session is open.
    Done(TokenPair),
    /// A second factor is owed, at [`AuthService::complete_login`].
    SecondFactor(PendingLogin),
}

/// A login waiting for its second step.
#[derive(Debug)]
pub struct PendingLogin {
    /// The opaque `mfa_token` that names it.
    pub mfa_token: String,
    /// The ways it can be completed (`totp`, `recovery_code`).
    pub methods: Vec<&'static str>,
}

/// A new TOTP secret, waiting for a first code.
#[derive(Debug)]
pub struct TotpEnrolment {
    pub secret: TotpSecret,
    /// The `otpauth://` URI for an app (and the console's QR code).
    pub uri: String,
}

/// The proof offered at the second step, or to remove a factor.
#[derive(Debug)]
pub enum SecondFactor<'a> {
    Code(&'a str),
    RecoveryCode(&'a str),
}

/// Why a second-factor use case failed.
#[derive(Debug, thiserror::Error)]
pub enum MfaError {
    /// A wrong, replayed or malformed code or recovery code; for the second step of a login
    /// also a spent, expired or unknown `mfa_token`.
    #[error("invalid code")]
    InvalidCode,
    #[error("TOTP already enabled")]
    AlreadyEnabled,
    /// There is no TOTP factor to confirm or remove.
    #[error("TOTP not enabled")]
    NotEnabled,
    #[error("incorrect password")]
    WrongPassword,
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl From<LoginError> for MfaError {
    fn from(err: LoginError) -> Self {
        match err {
            LoginError::Throttled(t) => Self::Throttled(t),
            LoginError::Backend(b) => Self::Backend(b),
            // The user changed since the password step: the challenge vouches for nothing.
            LoginError::InvalidCredentials
            | LoginError::Inactive
            | LoginError::Unverified
            | LoginError::SecondFactorRequired => Self::InvalidCode,
        }
    }
}

/// The binding of a user's sealed TOTP secret: a sealed secret copied to another user's row
/// does not open.
fn totp_binding(user: UserId) -> String {
    format!("totp-secret user:{user}")
}

impl AuthService {
    /// Which second factors `user` has.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn factors(&self, user: UserId) -> Result<Factors, BackendError> {
        self.factors.factors(user).await
    }

    /// After a right password: for a user with a TOTP factor, stores a pending login and
    /// returns it; for anyone else, clears the account's failure run (the proof is complete)
    /// and returns `None`, for the caller to open the session.
    pub(super) async fn second_step_owed(
        &self,
        user: &User,
    ) -> Result<Option<PendingLogin>, BackendError> {
        if !self.factors.factors(user.id).await?.totp {
            self.clear_failures(user.email.key()).await?;
            return Ok(None);
        }
        let challenge = NewMfaChallenge::generate(
            user.id,
            user.credential_version,
            self.clock.now(),
            self.policy.mfa.challenge_ttl,
        );
        let mfa_token = challenge.secret.clone();
        self.challenges.store_mfa_challenge(challenge).await?;
        Ok(Some(PendingLogin {
            mfa_token,
            methods: vec!["totp", "recovery_code"],
        }))
    }

    /// The second step of a login: checks a code or a recovery code against the pending login
    /// `mfa_token`, and opens the session. A wrong code is a failed login of the account
    /// (limits, failure delay) and does not spend the pending login until the
    /// `max_failures`th; success spends it.
    ///
    /// # Errors
    /// [`MfaError::InvalidCode`] for a wrong, replayed or malformed code, and for a spent,
    /// expired or unknown `mfa_token` (or one whose user changed since);
    /// [`MfaError::Throttled`] over a limit or during the failure delay.
    pub async fn complete_login(
        &self,
        mfa_token: &str,
        proof: SecondFactor<'_>,
        client: ClientInfo,
    ) -> Result<TokenPair, MfaError> {
        let (user, method) = self.check_second_factor(mfa_token, proof, &client).await?;
        self.start_session(&user, client, vec![AuthMethod::Password, method])
            .await
            .map_err(|err| login_session_error(err).into())
    }

    /// The checks of a second step, in order: the pending login, its user, the limits, the
    /// code; then the pending login is spent. Returns the user to open a session for, and how
    /// they proved it.
    pub(super) async fn check_second_factor(
        &self,
        mfa_token: &str,
        proof: SecondFactor<'_>,
        client: &ClientInfo,
    ) -> Result<(User, AuthMethod), MfaError> {
        let hash = MfaTokenHash::of(mfa_token);
        let now = self.clock.now();
        let challenge = self
            .challenges
            .find_mfa_challenge(&hash)
            .await?
            .filter(|challenge| challenge.is_open(now))
            .ok_or(MfaError::InvalidCode)?;
        let user = self.challenged_user(&challenge).await?;
        let account = user.email.key();
        self.throttle(Action::Login, client.ip.as_deref(), Some(account))
            .await?;
        self.admit_check(account).await?;
        let Some(method) = self.check_proof(&user, proof).await? else {
            self.record_wrong(account).await?;
            self.challenges
                .fail_mfa_challenge(&hash, self.policy.mfa.max_failures, now)
                .await?;
            let failed =
                NewAuditEvent::new(AuditKind::MfaFailed, Some(user.id), client, now).failed();
            self.record_failure(failed).await?;
            return Err(MfaError::InvalidCode);
        };
        if !self.challenges.spend_mfa_challenge(&hash, now).await? {
            return Err(MfaError::InvalidCode);
        }
        self.clear_failures(account).await?;
        Ok((user, method))
    }

    /// The user of a pending login, as long as nothing changed since the password step.
    async fn challenged_user(&self, challenge: &MfaChallenge) -> Result<User, MfaError> {
        self.users
            .find_user_by_id(challenge.user_id)
            .await?
            .filter(|user| {
                user.is_active && user.credential_version == challenge.credential_version
            })
            .ok_or(MfaError::InvalidCode)
    }

    /// Whether `proof` is right for `user`, spending what it uses (the code's step, the
    /// recovery code). `None` for a wrong one.
    async fn check_proof(
        &self,
        user: &User,
        proof: SecondFactor<'_>,
    ) -> Result<Option<AuthMethod>, BackendError> {
        match proof {
            SecondFactor::Code(code) => Ok(self
                .use_totp_code(user.id, code)
                .await?
                .then_some(AuthMethod::Otp)),
            SecondFactor::RecoveryCode(code) => {
                let Some(hash) = RecoveryCodeHash::of_typed(code) else {
                    return Ok(None);
                };
                let now = self.clock.now();
                if !self
                    .factors
                    .spend_recovery_code(user.id, &hash, now)
                    .await?
                {
                    return Ok(None);
                }
                let used = NewAuditEvent::new(
                    AuditKind::RecoveryCodeUsed,
                    Some(user.id),
                    &ClientInfo::default(),
                    now,
                );
                self.audit.record_audit(used).await?;
                Ok(Some(AuthMethod::RecoveryCode))
            }
        }
    }

    /// Whether `code` is a current code of `user`'s confirmed factor not used before, and
    /// if so, marks its step used.
    async fn use_totp_code(&self, user: UserId, code: &str) -> Result<bool, BackendError> {
        let Some(code) = TotpCode::parse(code) else {
            return Ok(false);
        };
        let Some(factor) = self
            .factors
            .find_totp(user)
            .await?
            .filter(|factor| factor.confirmed_at.is_some())
        else {
            return Ok(false);
        };
        let secret = self.open_secret(user, &factor.sealed_secret)?;
        let Some(step) = secret.matching_step(&code, self.clock.now()) else {
            return Ok(false);
        };
        if factor.last_step.is_some_and(|last| step <= last) {
            return Ok(false);
        }
        self.factors.use_totp_step(user, step).await
    }

    fn open_secret(&self, user: UserId, sealed: &[u8]) -> Result<TotpSecret, BackendError> {
        self.sealer
            .open(sealed, &totp_binding(user))
            .map(TotpSecret::from_bytes)
    }

    /// Starts a TOTP enrolment for the caller: a new secret, stored sealed and unconfirmed
    /// (replacing an unconfirmed one), to be confirmed by a first code. The caller proves
    /// themselves again first (see [`AuthService::prove`]): an access token alone adds no way
    /// in.
    ///
    /// # Errors
    /// [`MfaError::AlreadyEnabled`] when the caller has a confirmed factor;
    /// [`MfaError::WrongPassword`] and the other failures of [`AuthService::prove`].
    pub async fn begin_totp(
        &self,
        principal: &Principal,
        proof: Proof<'_>,
        client: &ClientInfo,
    ) -> Result<TotpEnrolment, MfaError> {
        let user = &principal.user;
        let enabled = self
            .factors
            .find_totp(user.id)
            .await?
            .is_some_and(|factor| factor.confirmed_at.is_some());
        if enabled {
            return Err(MfaError::AlreadyEnabled);
        }
        self.prove(principal, proof, client).await?;
        let secret = TotpSecret::generate();
        let sealed = self
            .sealer
            .seal(secret.as_bytes(), &totp_binding(user.id))?;
        if !self
            .factors
            .store_pending_totp(user.id, sealed, self.clock.now())
            .await?
        {
            return Err(MfaError::AlreadyEnabled);
        }
        let uri = secret.otpauth_uri(&self.policy.mfa.issuer, user.email.as_str());
        Ok(TotpEnrolment { secret, uri })
    }

    /// Confirms the caller's pending TOTP secret with a current code, and hands out ten new
    /// recovery codes (their hashes replace any earlier ones).
    ///
    /// # Errors
    /// [`MfaError::InvalidCode`] for a wrong or malformed code, or when no enrolment is
    /// pending; [`MfaError::AlreadyEnabled`] when it is confirmed already.
    pub async fn confirm_totp(
        &self,
        principal: &Principal,
        code: &str,
        client: &ClientInfo,
    ) -> Result<Vec<String>, MfaError> {
        let user = &principal.user;
        self.throttle_recheck(user, client).await?;
        let factor = self
            .factors
            .find_totp(user.id)
            .await?
            .ok_or(MfaError::InvalidCode)?;
        if factor.confirmed_at.is_some() {
            return Err(MfaError::AlreadyEnabled);
        }
        let code = TotpCode::parse(code).ok_or(MfaError::InvalidCode)?;
        let secret = self.open_secret(user.id, &factor.sealed_secret)?;
        let step = secret
            .matching_step(&code, self.clock.now())
            .ok_or(MfaError::InvalidCode)?;
        let recovery = RecoveryCodes::generate();
        let audit = NewAuditEvent::new(
            AuditKind::TotpEnabled,
            Some(user.id),
            client,
            self.clock.now(),
        );
        let notice = self
            .factor_notice(
                user,
                FactorChange::Added,
                vec![TOTP_DESCRIBED.into()],
                client.ip.as_deref(),
            )
            .await?;
        // As a reset is, on the credential version: the factor is confirmed before a reset
        // (which then sees it) or not at all.
        let change = AccountChange::of(user.id, audit.at)
            .when(Condition::Current {
                credential_version: user.credential_version,
            })
            .when(Condition::PendingTotpIs(factor.sealed_secret))
            .then(Edit::ConfirmTotp {
                step,
                recovery: recovery.hashes,
                added_unverified: !user.email_verified,
            })
            .recording(audit)
            .mailing(notice);
        if !self.users.apply(change).await?.kept() {
            // A second enrolment replaced the secret, another confirmation won, or the
            // password was reset or changed meanwhile.
            return Err(MfaError::InvalidCode);
        }
        Ok(recovery.codes)
    }

    /// Removes the caller's TOTP factor and recovery codes, on a current code, a recovery code
    /// or the password (see [`AuthService::prove`]).
    ///
    /// # Errors
    /// [`MfaError::NotEnabled`] without a confirmed factor; [`MfaError::InvalidCode`] for a
    /// wrong code; [`MfaError::WrongPassword`]; [`MfaError::Throttled`].
    pub async fn disable_totp(
        &self,
        principal: &Principal,
        proof: Proof<'_>,
        client: &ClientInfo,
    ) -> Result<(), MfaError> {
        let user = &principal.user;
        let enabled = self
            .factors
            .find_totp(user.id)
            .await?
            .is_some_and(|factor| factor.confirmed_at.is_some());
        if !enabled {
            return Err(MfaError::NotEnabled);
        }
        self.prove(principal, proof, client).await?;
        let audit = NewAuditEvent::new(
            AuditKind::TotpDisabled,
            Some(user.id),
            client,
            self.clock.now(),
        );
        let notice = self
            .factor_notice(
                user,
                FactorChange::Removed,
                vec![TOTP_DESCRIBED.into()],
                client.ip.as_deref(),
            )
            .await?;
        let change = AccountChange::of(user.id, audit.at)
            .when(Condition::HasFactors { passkeys: false })
            .then(Edit::RemoveFactors(FactorRemoval {
                totp: true,
                passkeys: Vec::new(),
            }))
            .recording(audit)
            .mailing(notice);
        self.users.apply(change).await?;
        Ok(())
    }

    /// Checks the proof a signed-in caller gives again before a change that adds or removes a
    /// way into the account: the password, through the re-check path of a password change
    /// (its limits, the account's failure run, the session ended after repeated wrong ones),
    /// or a current TOTP code or an unused recovery code (the same limits and failure run;
    /// either is spent). A stolen access token alone cannot pass it.
    ///
    /// # Errors
    /// [`MfaError::WrongPassword`]; [`MfaError::InvalidCode`] for a wrong, replayed or
    /// malformed code; [`MfaError::Throttled`].
    pub(super) async fn prove(
        &self,
        principal: &Principal,
        proof: Proof<'_>,
        client: &ClientInfo,
    ) -> Result<(), MfaError> {
        let user = &principal.user;
        match proof {
            Proof::Password(password) => {
                if !self.recheck_password(principal, password, client).await? {
                    return Err(MfaError::WrongPassword);
                }
            }
            Proof::Code(code) => {
                self.throttle_recheck(user, client).await?;
                self.admit_check(user.email.key()).await?;
                let offered = if TotpCode::parse(code).is_some() {
                    SecondFactor::Code(code)
                } else {
                    SecondFactor::RecoveryCode(code)
                };
                if self.check_proof(user, offered).await?.is_none() {
                    self.record_wrong(user.email.key()).await?;
                    return Err(MfaError::InvalidCode);
                }
                self.clear_failures(user.email.key()).await?;
            }
        }
        Ok(())
    }

    /// The mail that tells `user`'s address of a change of their second factors (`factors`,
    /// named), caused by a request from the client address `ip` (`None`: by an admin, whose
    /// mail counts in the recipient's budget alone): `None` without a mail transport, or when
    /// a budget is spent (the change happens anyway).
    pub(super) async fn factor_notice(
        &self,
        user: &User,
        change: FactorChange,
        factors: Vec<String>,
        ip: Option<&str>,
    ) -> Result<Option<MailJob>, BackendError> {
        if !self.mail_configured() || factors.is_empty() {
            return Ok(None);
        }
        if !self.within_mail_budget(&[&user.email], ip).await? {
            return Ok(None);
        }
        Ok(Some(MailJob::FactorNotice {
            user_id: user.id,
            change,
            factors,
        }))
    }
}

/// What a signed-in caller proves themselves with again (see [`AuthService::prove`]).
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// The account's password.
    Password(&'a str),
    /// A current TOTP code, or an unused recovery code.
    Code(&'a str),
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use mockall::predicate::{always, eq};

    use super::super::test_support::{Mocks, now, session, user};
    use super::*;
    use crate::domain::mfa::{TotpFactor, totp_step};
    use crate::domain::ports::MockRateLimiter;
    use crate::domain::{Applied, Email, Refusal, Role, SessionKey};

    const TOKEN: &str = "the-mfa-token";

    fn secret() -> TotpSecret {
        TotpSecret::from_bytes(b"12345678901234567890".to_vec())
    }

    /// The sealed form the test sealer gives `secret()` of user 7.
    fn sealed() -> Vec<u8> {
        [
            totp_binding(UserId(7)).as_bytes(),
            &[0],
            secret().as_bytes(),
        ]
        .concat()
    }

    fn code_at(offset_steps: i64) -> String {
        format!("{:06}", secret().code_at(totp_step(now()) + offset_steps))
    }

    fn factor(last_step: Option<i64>) -> TotpFactor {
        TotpFactor {
            user_id: UserId(7),
            sealed_secret: sealed(),
            confirmed_at: Some(now() - TimeDelta::days(1)),
            last_step,
            added_unverified: false,
        }
    }

    fn challenge(expires_in: TimeDelta) -> MfaChallenge {
        MfaChallenge {
            user_id: UserId(7),
            credential_version: 0,
            expires_at: now() + expires_in,
            failures: 0,
            spent_at: None,
        }
    }

    fn enrolled(m: &mut Mocks) {
        m.factors.expect_factors().returning(|_| {
            Ok(Factors {
                totp: true,
                passkeys: 0,
            })
        });
    }

    /// A limiter that admits every attempt and expects the run to be cleared `clears` times and
    /// a failure recorded `failures` times.
    fn limiter(clears: usize, failures: usize) -> MockRateLimiter {
        let mut limiter = MockRateLimiter::new();
        limiter.expect_increment().returning(|_, _| Ok(1));
        limiter.expect_failures().returning(|_| Ok(None));
        limiter.expect_swap_failures().returning(|_, _, _| Ok(true));
        limiter
            .expect_clear_failures()
            .times(clears)
            .returning(|_| Ok(()));
        limiter
            .expect_record_failure()
            .times(failures)
            .returning(|_, _| Ok(()));
        limiter
    }

    /// A pending login of user 7, open for `expires_in`, with the user unchanged.
    /// Completes the pending login of [`TOKEN`] with `proof`, on the service `m` makes.
    async fn submit(m: Mocks, proof: SecondFactor<'_>) -> Result<TokenPair, MfaError> {
        m.service()
            .complete_login(TOKEN, proof, ClientInfo::default())
            .await
    }

    fn pending(m: &mut Mocks, expires_in: TimeDelta) {
        m.challenges
            .expect_find_mfa_challenge()
            .with(eq(MfaTokenHash::of(TOKEN)))
            .returning(move |_| Ok(Some(challenge(expires_in))));
        m.users
            .expect_find_user_by_id()
            .returning(|id| Ok(Some(user(id.0, Role::User, true))));
    }

    fn expect_session(m: &mut Mocks, methods: Vec<AuthMethod>) {
        let stored = methods.clone();
        m.sessions
            .expect_create_session()
            .withf(move |s, key| s.methods == stored && matches!(key, SessionKey::RefreshToken(_)))
            .times(1)
            .returning(|s, _| {
                let mut opened = session(s.id, s.user_id.0);
                opened.methods = s.methods;
                Ok(opened)
            });
        m.tokens
            .expect_issue()
            .withf(move |claims| claims.methods == methods)
            .times(1)
            .returning(|_| Ok("signed".into()));
    }

    #[tokio::test]
    async fn a_right_password_of_an_enrolled_user_opens_no_session_and_keeps_the_failure_run() {
        let mut m = Mocks::new();
        enrolled(&mut m);
        m.limiter = Some(limiter(0, 0));
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        m.sessions.expect_create_session().never();
        let expires = now() + TimeDelta::minutes(5);
        m.challenges
            .expect_store_mfa_challenge()
            .withf(move |c| {
                c.user_id == UserId(7)
                    && c.expires_at == expires
                    && c.hash == MfaTokenHash::of(&c.secret)
            })
            .times(1)
            .returning(|_| Ok(()));
        let step = m
            .service()
            .login(
                &Email::parse("user7@example.com").unwrap(),
                "pw",
                ClientInfo::default(),
            )
            .await
            .unwrap();
        let LoginStep::SecondFactor(pending) = step else {
            panic!("expected a second step");
        };
        assert_eq!(pending.mfa_token.len(), 43);
        assert_eq!(pending.methods, ["totp", "recovery_code"]);
    }

    #[tokio::test]
    async fn a_user_without_a_second_factor_gets_a_password_session_and_a_clear_run() {
        let mut m = Mocks::new();
        m.limiter = Some(limiter(1, 0));
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        expect_session(&mut m, vec![AuthMethod::Password]);
        let step = m
            .service()
            .login(
                &Email::parse("user7@example.com").unwrap(),
                "pw",
                ClientInfo::default(),
            )
            .await
            .unwrap();
        assert!(matches!(step, LoginStep::Done(_)));
    }

    #[tokio::test]
    async fn the_password_grant_refuses_an_enrolled_user_only_after_the_right_password() {
        for right in [true, false] {
            let mut m = Mocks::new();
            enrolled(&mut m);
            m.users
                .expect_find_user_by_email()
                .returning(|_| Ok(Some(user(7, Role::User, true))));
            m.hasher.expect_verify().returning(move |_, _| Ok(right));
            m.sessions.expect_create_session().never();
            m.challenges.expect_store_mfa_challenge().never();
            let err = m
                .service()
                .login_without_second_step(
                    &Email::parse("user7@example.com").unwrap(),
                    "pw",
                    ClientInfo::default(),
                )
                .await
                .unwrap_err();
            if right {
                assert!(matches!(err, LoginError::SecondFactorRequired));
            } else {
                assert!(matches!(err, LoginError::InvalidCredentials));
            }
        }
    }

    #[tokio::test]
    async fn a_current_code_completes_the_login_spends_it_and_the_pending_login() {
        for offset in [-1, 0, 1] {
            let mut m = Mocks::new();
            m.limiter = Some(limiter(1, 0));
            pending(&mut m, TimeDelta::minutes(5));
            m.factors
                .expect_find_totp()
                .returning(|_| Ok(Some(factor(Some(totp_step(now()) - 5)))));
            m.factors
                .expect_use_totp_step()
                .with(eq(UserId(7)), eq(totp_step(now()) + offset))
                .times(1)
                .returning(|_, _| Ok(true));
            m.challenges
                .expect_spend_mfa_challenge()
                .with(eq(MfaTokenHash::of(TOKEN)), eq(now()))
                .times(1)
                .returning(|_, _| Ok(true));
            expect_session(&mut m, vec![AuthMethod::Password, AuthMethod::Otp]);
            let pair = submit(m, SecondFactor::Code(&code_at(offset)))
                .await
                .unwrap();
            assert_eq!(pair.access_token, "signed");
        }
    }

    /// Expects a wrong code: the failure is dated, the pending login counts it, and it is
    /// recorded; nothing is opened.
    fn expect_wrong_code(m: &mut Mocks) {
        m.limiter = Some(limiter(0, 1));
        m.challenges
            .expect_fail_mfa_challenge()
            .with(eq(MfaTokenHash::of(TOKEN)), eq(5), eq(now()))
            .times(1)
            .returning(|_, _, _| Ok(()));
        m.challenges.expect_spend_mfa_challenge().never();
        m.sessions.expect_create_session().never();
    }

    #[tokio::test]
    async fn wrong_replayed_far_and_malformed_codes_count_as_failures_and_open_nothing() {
        let step = totp_step(now());
        let cases: [(String, Option<i64>); 5] = [
            // A replay: this step was used already.
            (code_at(0), Some(step)),
            // An older code of the window, after a newer one was used.
            (code_at(-1), Some(step)),
            // Two steps away.
            (code_at(2), None),
            ("12345".into(), None),
            ("abcdef".into(), None),
        ];
        for (code, last_step) in cases {
            let mut m = Mocks::new();
            expect_wrong_code(&mut m);
            pending(&mut m, TimeDelta::minutes(5));
            m.factors
                .expect_find_totp()
                .returning(move |_| Ok(Some(factor(last_step))));
            m.factors.expect_use_totp_step().never();
            let err = submit(m, SecondFactor::Code(&code)).await.unwrap_err();
            assert!(matches!(err, MfaError::InvalidCode), "{code}");
        }
    }

    #[tokio::test]
    async fn a_code_that_loses_the_race_for_its_step_is_refused() {
        let mut m = Mocks::new();
        expect_wrong_code(&mut m);
        pending(&mut m, TimeDelta::minutes(5));
        m.factors
            .expect_find_totp()
            .returning(|_| Ok(Some(factor(None))));
        m.factors.expect_use_totp_step().returning(|_, _| Ok(false));
        let err = submit(m, SecondFactor::Code(&code_at(0)))
            .await
            .unwrap_err();
        assert!(matches!(err, MfaError::InvalidCode));
    }

    #[tokio::test]
    async fn an_expired_spent_unknown_or_outdated_pending_login_is_refused_before_any_check() {
        for case in 0..4 {
            let mut m = Mocks::new();
            m.limiter = Some(limiter(0, 0));
            m.challenges
                .expect_find_mfa_challenge()
                .returning(move |_| {
                    Ok(match case {
                        0 => Some(challenge(TimeDelta::zero())),
                        1 => Some(MfaChallenge {
                            spent_at: Some(now()),
                            ..challenge(TimeDelta::minutes(5))
                        }),
                        2 => None,
                        _ => Some(MfaChallenge {
                            credential_version: 1,
                            ..challenge(TimeDelta::minutes(5))
                        }),
                    })
                });
            m.users
                .expect_find_user_by_id()
                .returning(|id| Ok(Some(user(id.0, Role::User, true))));
            m.factors.expect_find_totp().never();
            m.challenges.expect_fail_mfa_challenge().never();
            let err = submit(m, SecondFactor::Code(&code_at(0)))
                .await
                .unwrap_err();
            assert!(matches!(err, MfaError::InvalidCode), "case {case}");
        }
    }

    #[tokio::test]
    async fn a_recovery_code_completes_the_login_once() {
        for unused in [true, false] {
            let mut m = Mocks::new();
            pending(&mut m, TimeDelta::minutes(5));
            let typed = "ABCD-efgh-ijkl-mnop";
            m.factors
                .expect_spend_recovery_code()
                .with(
                    eq(UserId(7)),
                    eq(RecoveryCodeHash::of_typed("abcdefghijklmnop").unwrap()),
                    always(),
                )
                .times(1)
                .returning(move |_, _, _| Ok(unused));
            if unused {
                m.limiter = Some(limiter(1, 0));
                m.challenges
                    .expect_spend_mfa_challenge()
                    .returning(|_, _| Ok(true));
                expect_session(&mut m, vec![AuthMethod::Password, AuthMethod::RecoveryCode]);
            } else {
                expect_wrong_code(&mut m);
            }
            let result = submit(m, SecondFactor::RecoveryCode(typed)).await;
            assert_eq!(result.is_ok(), unused);
        }
    }

    #[tokio::test]
    async fn the_failure_delay_refuses_a_code_before_it_is_checked() {
        let mut m = Mocks::new();
        let mut limiter = MockRateLimiter::new();
        limiter.expect_increment().returning(|_, _| Ok(1));
        limiter.expect_failures().returning(|_| {
            Ok(Some(crate::domain::ports::FailureRecord {
                count: 9,
                last_at: now(),
            }))
        });
        m.limiter = Some(limiter);
        pending(&mut m, TimeDelta::minutes(5));
        m.factors.expect_find_totp().never();
        m.challenges.expect_fail_mfa_challenge().never();
        let err = submit(m, SecondFactor::Code(&code_at(0)))
            .await
            .unwrap_err();
        assert!(matches!(err, MfaError::Throttled(_)));
    }

    fn principal() -> Principal {
        Principal {
            user: user(7, Role::User, true),
            session_id: None,
        }
    }

    /// `begin_totp` with the password `password`, which the hasher finds `right`.
    async fn enrol(m: Mocks, right: bool) -> Result<TotpEnrolment, MfaError> {
        let mut m = m;
        m.hasher
            .expect_verify()
            .withf(|candidate, hash| candidate == "pw" && hash.as_str() == "hash-of-user-7")
            .returning(move |_, _| Ok(right));
        m.service()
            .begin_totp(&principal(), Proof::Password("pw"), &ClientInfo::default())
            .await
    }

    #[tokio::test]
    async fn an_enrolment_stores_the_secret_sealed_to_its_user_and_shows_it_once() {
        let mut m = Mocks::new();
        m.factors.expect_find_totp().returning(|_| Ok(None));
        m.factors
            .expect_store_pending_totp()
            .withf(|id, sealed, _| {
                *id == UserId(7) && sealed.starts_with(totp_binding(UserId(7)).as_bytes())
            })
            .times(1)
            .returning(|_, _, _| Ok(true));
        let enrolment = enrol(m, true).await.unwrap();
        assert!(
            enrolment
                .uri
                .starts_with("otpauth://totp/Portcullis:user7@example.com?secret=")
        );
        assert!(enrolment.uri.contains(&enrolment.secret.base32()));

        // Confirmed already, seen before the password is asked, or by the store after it.
        let mut m = Mocks::new();
        m.factors
            .expect_find_totp()
            .returning(|_| Ok(Some(factor(None))));
        m.hasher.expect_verify().never();
        let err = m
            .service()
            .begin_totp(&principal(), Proof::Password("pw"), &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, MfaError::AlreadyEnabled));
        let mut m = Mocks::new();
        m.factors.expect_find_totp().returning(|_| Ok(None));
        m.factors
            .expect_store_pending_totp()
            .returning(|_, _, _| Ok(false));
        let err = enrol(m, true).await.unwrap_err();
        assert!(matches!(err, MfaError::AlreadyEnabled));
    }

    #[tokio::test]
    async fn an_access_token_alone_cannot_start_an_enrolment() {
        let mut m = Mocks::new();
        m.factors.expect_find_totp().returning(|_| Ok(None));
        m.factors.expect_store_pending_totp().never();
        let err = enrol(m, false).await.unwrap_err();
        assert!(matches!(err, MfaError::WrongPassword));
    }

    fn unconfirmed(m: &mut Mocks) {
        m.factors.expect_find_totp().returning(|_| {
            Ok(Some(TotpFactor {
                confirmed_at: None,
                ..factor(None)
            }))
        });
    }

    #[tokio::test]
    async fn a_current_code_confirms_the_enrolment_with_ten_recovery_codes() {
        let mut m = Mocks::new();
        unconfirmed(&mut m);
        m.users
            .expect_apply()
            .withf(|change| {
                let [
                    Edit::ConfirmTotp {
                        step,
                        recovery,
                        added_unverified,
                    },
                ] = change.edits.as_slice()
                else {
                    return false;
                };
                change.user == UserId(7)
                    && change.conditions
                        == [
                            Condition::Current {
                                credential_version: 0,
                            },
                            Condition::PendingTotpIs(sealed()),
                        ]
                    && *step == totp_step(now())
                    && recovery.len() == 10
                    && matches!(change.audit.as_slice(), [a] if a.kind == AuditKind::TotpEnabled)
                    // The address is unverified: a reset will remove it.
                    && *added_unverified
                    // No transport: no notice.
                    && change.mail.is_empty()
            })
            .times(1)
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        let codes = m
            .service()
            .confirm_totp(&principal(), &code_at(0), &ClientInfo::default())
            .await
            .unwrap();
        assert_eq!(codes.len(), 10);
    }

    #[tokio::test]
    async fn a_wrong_code_or_a_replaced_secret_confirms_nothing() {
        let mut m = Mocks::new();
        unconfirmed(&mut m);
        m.users.expect_apply().never();
        let err = m
            .service()
            .confirm_totp(&principal(), &code_at(3), &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, MfaError::InvalidCode));

        let mut m = Mocks::new();
        unconfirmed(&mut m);
        m.users
            .expect_apply()
            .returning(|_| Ok(Applied::Refused(Refusal::TotpChanged)));
        let err = m
            .service()
            .confirm_totp(&principal(), &code_at(0), &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, MfaError::InvalidCode));
    }

    #[tokio::test]
    async fn removing_the_factor_takes_a_current_unused_code_and_keeps_the_passkeys() {
        let mut m = Mocks::new();
        m.limiter = Some(limiter(1, 0));
        m.factors
            .expect_find_totp()
            .returning(|_| Ok(Some(factor(None))));
        m.factors.expect_use_totp_step().returning(|_, _| Ok(true));
        m.users
            .expect_apply()
            .withf(|change| {
                change.user == UserId(7)
                    && change.conditions == [Condition::HasFactors { passkeys: false }]
                    && change.edits
                        == [Edit::RemoveFactors(FactorRemoval {
                            totp: true,
                            passkeys: Vec::new(),
                        })]
                    && matches!(change.audit.as_slice(), [a] if a.kind == AuditKind::TotpDisabled)
            })
            .times(1)
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        m.service()
            .disable_totp(
                &principal(),
                Proof::Code(&code_at(0)),
                &ClientInfo::default(),
            )
            .await
            .unwrap();

        let mut m = Mocks::new();
        m.limiter = Some(limiter(0, 1));
        m.factors
            .expect_find_totp()
            .returning(|_| Ok(Some(factor(Some(totp_step(now()))))));
        m.users.expect_apply().never();
        let err = m
            .service()
            .disable_totp(
                &principal(),
                Proof::Code(&code_at(0)),
                &ClientInfo::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, MfaError::InvalidCode));
    }
}

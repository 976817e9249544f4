//! Register, log in, authenticate an access token, authorise a role.

use chrono::{DateTime, Utc};

use super::AuthService;
use super::limits::{Action, Throttled};
use super::mfa::LoginStep;
use crate::domain::mfa::AuthMethod;
use crate::domain::ports::{CreateSessionError, CreateUserError, TokenError};
use crate::domain::{
    AccountChange, AuditKind, BackendError, ClientInfo, Condition, Edit, Email, FullName,
    NewAuditEvent, NewUser, Password, PasswordError, Principal, Role, TokenPair, User,
};

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("email already registered")]
    EmailTaken,
    #[error("password {0}")]
    WeakPassword(#[from] PasswordError),
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a login failed. Unknown email and wrong password are one variant on purpose.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("incorrect email or password")]
    InvalidCredentials,
    /// Only ever returned after the password was verified.
    #[error("inactive user account")]
    Inactive,
    /// Only ever returned after the password was verified, for an active account, when
    /// verified addresses are required.
    #[error("email not verified")]
    Unverified,
    /// Only ever returned after the password was verified, by a login that cannot take a
    /// second step (the OAuth2 password grant), for a user with a second factor.
    #[error("mfa_required")]
    SecondFactorRequired,
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why an access token does not grant what was asked.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Forged, tampered, expired, or of an ended session or a deleted user.
    #[error("invalid token")]
    InvalidToken,
    #[error("inactive user")]
    Inactive,
    #[error("insufficient privileges")]
    Forbidden,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// A session that could not be stored after a right password: the user changed meanwhile
/// (password, deactivation), so the password checked is no longer the one that counts.
pub(super) fn login_session_error(err: CreateSessionError) -> LoginError {
    match err {
        CreateSessionError::Stale => LoginError::InvalidCredentials,
        CreateSessionError::Backend(err) => LoginError::Backend(err),
    }
}

impl AuthService {
    /// Registers a user with role `user`, within the registration limits of `client`'s
    /// address and of the email.
    ///
    /// # Errors
    /// [`RegisterError::Throttled`] over a limit (nothing is hashed then);
    /// [`RegisterError::EmailTaken`] when the normalised email is registered already.
    pub async fn register(
        &self,
        email: Email,
        password: Password,
        full_name: Option<FullName>,
        client: &ClientInfo,
    ) -> Result<User, RegisterError> {
        self.check_new_password(&password, &email, full_name.as_ref())?;
        self.throttle(Action::Register, client.ip.as_deref(), Some(email.key()))
            .await?;
        // The verification mail counts in the address's and the client's mail budgets like any
        // other; over either, the registration goes through without it (the user asks for
        // one later at POST /auth/verify/request).
        let verify = self.policy.mail.verify_on_register
            && self.mail_configured()
            && self
                .within_mail_budget(&[&email], client.ip.as_deref())
                .await?;
        let audit = NewAuditEvent::new(AuditKind::UserRegistered, None, client, self.clock.now());
        self.create_user(email, password, full_name, Role::User, verify, audit)
            .await
            .map_err(|err| match err {
                CreateUserError::EmailTaken => RegisterError::EmailTaken,
                CreateUserError::Backend(err) => RegisterError::Backend(err),
            })
    }

    pub(super) async fn create_user(
        &self,
        email: Email,
        password: Password,
        full_name: Option<FullName>,
        role: Role,
        send_verification: bool,
        audit: NewAuditEvent,
    ) -> Result<User, CreateUserError> {
        let password_hash = self.hasher.hash(&password).await?;
        let new_user = NewUser {
            email,
            full_name,
            role,
            password_hash,
            created_at: self.clock.now(),
            send_verification,
            audit,
        };
        self.users.create_user(new_user).await
    }

    /// Checks a password and opens a session, or, for a user with a second factor, a pending
    /// login that [`AuthService::complete_login`] finishes.
    ///
    /// An unknown email costs one hash verification like a known one, so the response time
    /// does not reveal which emails are registered.
    ///
    /// # Errors
    /// [`LoginError::Throttled`] over a limit or during an account's failure delay (nothing is
    /// hashed then); [`LoginError::InvalidCredentials`] for an unknown email or a wrong
    /// password; [`LoginError::Inactive`] for a deactivated user with the right password.
    pub async fn login(
        &self,
        email: &Email,
        password: &str,
        client: ClientInfo,
    ) -> Result<LoginStep, LoginError> {
        let user = self.check_login(email, password, &client).await?;
        if let Some(pending) = self.second_step_owed(&user).await? {
            return Ok(LoginStep::SecondFactor(pending));
        }
        self.start_session(&user, client, vec![AuthMethod::Password])
            .await
            .map(LoginStep::Done)
            .map_err(login_session_error)
    }

    /// A login in one step, as the OAuth2 password grant has no room for a second one.
    ///
    /// # Errors
    /// As [`AuthService::login`], and [`LoginError::SecondFactorRequired`] for a user with a
    /// second factor, only after the right password (a wrong one is
    /// [`LoginError::InvalidCredentials`] as ever, so the grant tells nothing about enrolment).
    pub async fn login_without_second_step(
        &self,
        email: &Email,
        password: &str,
        client: ClientInfo,
    ) -> Result<TokenPair, LoginError> {
        let user = self.check_login(email, password, &client).await?;
        if self.factors.factors(user.id).await?.totp {
            return Err(LoginError::SecondFactorRequired);
        }
        self.clear_failures(user.email.key()).await?;
        self.start_session(&user, client, vec![AuthMethod::Password])
            .await
            .map_err(login_session_error)
    }

    /// The checks of a login, in order: abuse limits, the password (at the cost of one hash
    /// whether or not the email is known), the account's state; then a rehash if one is due.
    /// Returns the user to open a session for, or to ask a second factor of. The account's
    /// failure run is left to the caller to clear.
    pub(super) async fn check_login(
        &self,
        email: &Email,
        password: &str,
        client: &ClientInfo,
    ) -> Result<User, LoginError> {
        let account = email.key();
        self.throttle(Action::Login, client.ip.as_deref(), Some(account))
            .await?;
        let user = self.users.find_user_by_email(email).await?;
        // An unknown email is checked against the dummy hash and counted like a wrong password.
        // A known one waits for the dummy hash too: right after a start, while it is still being
        // made, an unknown email would otherwise answer later than a known one.
        let dummy = self.dummy_hash().await?;
        let hash = user.as_ref().map_or(&dummy, |u| &u.password_hash);
        let right = self.verify_password(account, password, hash).await?;
        if !right {
            // A registered email's failures name its user; an unknown one's name nobody.
            let failed = NewAuditEvent::new(
                AuditKind::LoginFailed,
                user.as_ref().map(|u| u.id),
                client,
                self.clock.now(),
            )
            .failed();
            self.record_failure(failed).await?;
        }
        let Some(user) = user.filter(|_| right) else {
            return Err(LoginError::InvalidCredentials);
        };
        self.check_account(&user)?;
        if self.hasher.needs_rehash(&user.password_hash) {
            self.rehash(&user, password).await;
        }
        Ok(user)
    }

    /// Whether `user`, who has proved who they are, may sign in: active, and verified when
    /// verified addresses are required.
    pub(super) fn check_account(&self, user: &User) -> Result<(), LoginError> {
        if !user.is_active {
            return Err(LoginError::Inactive);
        }
        if self.policy.mail.require_verified && !user.email_verified {
            return Err(LoginError::Unverified);
        }
        Ok(())
    }

    /// Stores `password`, just verified, hashed again with the hasher's current parameters (a
    /// raised or lowered bcrypt cost, or an imported hash): one extra hash on this login, none
    /// on the next. Best effort: a failure is logged, and the login goes on.
    async fn rehash(&self, user: &User, password: &str) {
        let Ok(password) = Password::parse(password) else {
            return;
        };
        let stored = match self.hasher.hash(&password).await {
            // The same password: sessions and the credential version stay. A new password that
            // won a race is never overwritten.
            Ok(hash) => {
                let change = AccountChange::of(user.id, self.clock.now())
                    .when(Condition::PasswordHashIs(user.password_hash.clone()))
                    .then(Edit::SetPasswordHash(hash));
                self.users.apply(change).await.map(drop)
            }
            Err(err) => Err(err),
        };
        if let Err(err) = stored {
            tracing::warn!(user_id = %user.id, error = %err, "password rehash failed; the next login tries again");
        }
    }

    /// Turns an access token into the caller, on the user's and session's current state: a
    /// role change, a deactivation or a logout applies to the very next request.
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] for a token that is not ours, expired (beyond the leeway),
    /// issued in the future, or whose session or user is gone; [`AuthError::Inactive`] for a
    /// deactivated user.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AuthError> {
        let now = self.clock.now();
        let verified = match self.tokens.verify(token) {
            Err(TokenError::UnknownKey(kid)) => {
                // Another instance may have made the key since this one last loaded them:
                // reload (paced), then judge the same token again.
                self.keys
                    .reload_for_unknown_kid(&kid)
                    .await
                    .map_err(|err| AuthError::Backend(err.into_backend()))?;
                self.tokens.verify(token)
            }
            other => other,
        };
        let claims = match verified {
            Ok(claims) => claims,
            Err(TokenError::Rejected(_))
                if self
                    .policy
                    .pyauth_tokens_until
                    .is_some_and(|until| now < until) =>
            {
                return self.authenticate_pyauth(token, now).await;
            }
            Err(TokenError::Rejected(_) | TokenError::UnknownKey(_)) => {
                return Err(AuthError::InvalidToken);
            }
            Err(TokenError::Backend(err)) => return Err(AuthError::Backend(err)),
        };
        let leeway = self.policy.leeway;
        if claims.expires_at + leeway <= now || claims.issued_at - leeway > now {
            return Err(AuthError::InvalidToken);
        }
        let (session, user) = self
            .sessions
            .find_session(claims.session_id)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if session.user_id != claims.user_id || user.id != claims.user_id {
            return Err(AuthError::InvalidToken);
        }
        // Before the session check: deactivation ends the sessions too, and the caller should
        // hear the reason that applies to the account, not to the token.
        if !user.is_active {
            return Err(AuthError::Inactive);
        }
        if !session.is_live(now) {
            return Err(AuthError::InvalidToken);
        }
        Ok(Principal {
            user,
            session_id: Some(session.id),
        })
    }

    /// A token of the old service, during the cutover: as pyauth did, the user is loaded on
    /// every request (so deactivation and role changes apply at once), and the token belongs to
    /// no session. The deadline itself has no leeway: the caller checked it.
    ///
    /// The token's `sub` names a row of pyauth's table, not a user here: it maps only to the
    /// user the import made from that row. Ids are shared by both services only for imported
    /// users; a user who registered here may hold the same number as a pyauth row the import
    /// skipped, or one pyauth handed out after the import.
    async fn authenticate_pyauth(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        let claims = self.tokens.verify_pyauth(token).map_err(|err| match err {
            TokenError::Rejected(_) | TokenError::UnknownKey(_) => AuthError::InvalidToken,
            TokenError::Backend(err) => AuthError::Backend(err),
        })?;
        if claims.expires_at + self.policy.leeway <= now {
            return Err(AuthError::InvalidToken);
        }
        let user = self
            .users
            .find_pyauth_user(claims.user_id.0)
            .await?
            .ok_or(AuthError::InvalidToken)?;
        if !user.is_active {
            return Err(AuthError::Inactive);
        }
        Ok(Principal {
            user,
            session_id: None,
        })
    }

    /// Checks that the caller holds `role` (an admin holds every role).
    ///
    /// # Errors
    /// [`AuthError::Forbidden`] otherwise.
    pub fn authorize(&self, principal: &Principal, role: Role) -> Result<(), AuthError> {
        match (principal.user.role, role) {
            (Role::Admin, _) | (Role::User, Role::User) => Ok(()),
            (Role::User, Role::Admin) => Err(AuthError::Forbidden),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use mockall::predicate::{always, eq};

    use super::super::test_support::{DUMMY_HASH, Mocks, session, user};
    use super::*;
    use crate::domain::ports::AccessClaims;
    use crate::domain::{Applied, PasswordHash, Refusal, SessionId, UserId};

    fn email(n: i64) -> Email {
        Email::parse(&format!("user{n}@example.com")).unwrap()
    }

    fn password() -> Password {
        Password::parse("correct horse").unwrap()
    }

    fn unavailable() -> BackendError {
        BackendError::Unavailable("database down".into())
    }

    #[tokio::test]
    async fn register_hashes_the_password_and_stores_a_user_with_role_user() {
        let mut m = Mocks::new();
        m.hasher
            .expect_hash()
            .times(1)
            .returning(|p| Ok(PasswordHash::new(format!("hashed:{}", p.expose()))));
        m.users
            .expect_create_user()
            .withf(|u| {
                u.role == Role::User
                    && u.password_hash.as_str() == "hashed:correct horse"
                    && u.email.as_str() == "user1@example.com"
            })
            .times(1)
            .returning(|_| Ok(user(1, Role::User, true)));
        let created = m
            .service()
            .register(email(1), password(), None, &ClientInfo::default())
            .await
            .unwrap();
        assert_eq!(created.id, UserId(1));
    }

    #[tokio::test]
    async fn a_registration_sends_its_verification_within_the_mail_budgets_only() {
        for (spent, mailed) in [("", true), ("mail:", false), ("mail_to:", false)] {
            let mut m = Mocks::new();
            m.mailer = Some(crate::domain::ports::MockMailer::new());
            let mut limiter = crate::domain::ports::MockRateLimiter::new();
            limiter.expect_increment().returning(move |bucket, _| {
                Ok(if !spent.is_empty() && bucket.starts_with(spent) {
                    99
                } else {
                    1
                })
            });
            m.limiter = Some(limiter);
            m.hasher
                .expect_hash()
                .returning(|_| Ok(PasswordHash::new("h".into())));
            // Over the client address's or the address's budget, the user is made all the
            // same: only the mail is left out.
            m.users
                .expect_create_user()
                .withf(move |u| u.send_verification == mailed)
                .times(1)
                .returning(|_| Ok(user(1, Role::User, true)));
            m.service()
                .register(
                    email(1),
                    password(),
                    None,
                    &ClientInfo::new(None, Some("203.0.113.9".into())),
                )
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn register_of_a_taken_email_is_refused() {
        let mut m = Mocks::new();
        m.hasher
            .expect_hash()
            .returning(|_| Ok(PasswordHash::new("h".into())));
        m.users
            .expect_create_user()
            .returning(|_| Err(CreateUserError::EmailTaken));
        let err = m
            .service()
            .register(email(1), password(), None, &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RegisterError::EmailTaken));
    }

    #[tokio::test]
    async fn register_passes_storage_outages_through() {
        let mut m = Mocks::new();
        m.hasher
            .expect_hash()
            .returning(|_| Ok(PasswordHash::new("h".into())));
        m.users
            .expect_create_user()
            .returning(|_| Err(CreateUserError::Backend(unavailable())));
        let err = m
            .service()
            .register(email(1), password(), None, &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            RegisterError::Backend(BackendError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn register_stores_nothing_when_the_hasher_is_overloaded() {
        let mut m = Mocks::new();
        m.hasher
            .expect_hash()
            .returning(|_| Err(BackendError::Overloaded));
        m.users.expect_create_user().never();
        let err = m
            .service()
            .register(email(1), password(), None, &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            RegisterError::Backend(BackendError::Overloaded)
        ));
    }

    fn expect_session_start(m: &mut Mocks) {
        m.sessions
            .expect_create_session()
            .times(1)
            .returning(|s, _| Ok(session(s.id, s.user_id.0)));
        m.tokens
            .expect_issue()
            .times(1)
            .returning(|c| Ok(format!("access-for-{}", c.user_id)));
    }

    #[tokio::test]
    async fn login_with_the_right_password_opens_a_session() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, true))));
        m.hasher
            .expect_verify()
            .with(
                eq("correct horse"),
                eq(PasswordHash::new("hash-of-user-7".into())),
            )
            .times(1)
            .returning(|_, _| Ok(true));
        let now = m.now;
        m.sessions
            .expect_create_session()
            .withf(move |s, key| {
                let crate::domain::SessionKey::RefreshToken(r) = key else {
                    return false;
                };
                s.user_id == UserId(7)
                    && s.expires_at == now + TimeDelta::days(90)
                    && r.session_id == s.id
                    && r.expires_at == now + TimeDelta::days(14)
                    && r.hash == crate::domain::RefreshTokenHash::of(&r.secret)
                    && s.audit.kind == crate::domain::AuditKind::LoginSucceeded
                    && s.audit.user_id == Some(UserId(7))
                    && s.audit.detail["session_id"] == s.id.to_string()
            })
            .times(1)
            .returning(|s, _| Ok(session(s.id, s.user_id.0)));
        m.tokens
            .expect_issue()
            .withf(move |c| {
                c.user_id == UserId(7)
                    && c.role == Role::User
                    && c.issued_at == now
                    && c.expires_at == now + TimeDelta::minutes(15)
            })
            .times(1)
            .returning(|_| Ok("signed".into()));
        let LoginStep::Done(pair) = m
            .service()
            .login(&email(7), "correct horse", ClientInfo::default())
            .await
            .unwrap()
        else {
            panic!("a user without a second factor gets tokens");
        };
        assert_eq!(pair.access_token, "signed");
        assert_eq!(pair.expires_in_seconds, 900);
        assert_eq!(pair.refresh_token.len(), 43);
    }

    /// A login whose stored hash has another cost: the tests below make it need a rehash.
    fn login_needing_a_rehash(m: &mut Mocks, right: bool) {
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, true))));
        m.hasher.expect_verify().returning(move |_, _| Ok(right));
        m.hasher.expect_needs_rehash().returning(|_| true);
        m.sessions
            .expect_create_session()
            .returning(|s, _| Ok(session(s.id, s.user_id.0)));
        m.tokens.expect_issue().returning(|_| Ok("signed".into()));
    }

    #[tokio::test]
    async fn a_login_stores_the_password_rehashed_when_its_hash_has_another_cost() {
        let mut m = Mocks::new();
        login_needing_a_rehash(&mut m, true);
        m.hasher
            .expect_hash()
            .withf(|p| p.expose() == "correct horse")
            .times(1)
            .returning(|_| Ok(PasswordHash::new("rehashed".into())));
        m.users
            .expect_apply()
            .withf(|change| {
                change.user == UserId(7)
                    && change.conditions
                        == [Condition::PasswordHashIs(PasswordHash::new(
                            "hash-of-user-7".into(),
                        ))]
                    && change.edits == [Edit::SetPasswordHash(PasswordHash::new("rehashed".into()))]
                    && change.audit.is_empty()
                    && change.mail.is_empty()
            })
            .times(1)
            .returning(|_| Ok(Applied::Refused(Refusal::PasswordChanged)));
        let service = m.service();
        assert!(
            service
                .login(&email(7), "correct horse", ClientInfo::default())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn a_failed_rehash_does_not_fail_the_login_and_a_wrong_password_rehashes_nothing() {
        let mut m = Mocks::new();
        login_needing_a_rehash(&mut m, true);
        m.hasher
            .expect_hash()
            .returning(|_| Err(BackendError::Overloaded));
        m.users.expect_apply().never();
        let service = m.service();
        assert!(
            service
                .login(&email(7), "correct horse", ClientInfo::default())
                .await
                .is_ok()
        );

        let mut m = Mocks::new();
        login_needing_a_rehash(&mut m, false);
        m.hasher.expect_hash().never();
        m.users.expect_apply().never();
        let err = m
            .service()
            .login(&email(7), "wrong password", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials));
    }

    #[tokio::test]
    async fn registration_refuses_common_passwords_and_the_address_before_anything_else() {
        for (candidate, rule) in [
            ("Password1", PasswordError::Common),
            ("USER1@example.com", PasswordError::SameAsEmail),
        ] {
            let mut m = Mocks::new();
            m.hasher.expect_hash().never();
            m.users.expect_create_user().never();
            let err = m
                .service()
                .register(
                    email(1),
                    Password::parse(candidate).unwrap(),
                    None,
                    &ClientInfo::default(),
                )
                .await
                .unwrap_err();
            assert!(
                matches!(&err, RegisterError::WeakPassword(e) if *e == rule),
                "{candidate}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn login_with_a_wrong_password_is_rejected() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, true))));
        m.hasher
            .expect_verify()
            .times(1)
            .returning(|_, _| Ok(false));
        m.sessions.expect_create_session().never();
        let err = m
            .service()
            .login(&email(7), "wrong", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials));
    }

    #[tokio::test]
    async fn login_with_unknown_email_still_verifies_a_hash_and_is_rejected_like_a_wrong_password()
    {
        let mut m = Mocks::new();
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.hasher
            .expect_verify()
            .with(eq("whatever1"), eq(PasswordHash::new(DUMMY_HASH.into())))
            .times(1)
            .returning(|_, _| Ok(false));
        let err = m
            .service()
            .login(&email(8), "whatever1", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials));
    }

    #[tokio::test]
    async fn without_a_dummy_hash_given_the_first_to_need_it_makes_it_once_at_full_cost() {
        let mut m = Mocks::new();
        m.dummy_hash = None;
        m.users.expect_find_user_by_email().returning(|_| Ok(None));
        m.hasher
            .expect_hash()
            .times(1)
            .returning(|_| Ok(PasswordHash::new("made-at-full-cost".into())));
        m.hasher
            .expect_verify()
            .withf(|_, hash| hash.as_str() == "made-at-full-cost")
            .times(2)
            .returning(|_, _| Ok(false));
        let service = m.service();
        // A login before the server's own preparation makes it; the preparation then has
        // nothing to do, and later logins use the same hash.
        for step in 0..3 {
            if step == 1 {
                service.prepare().await.unwrap();
                continue;
            }
            let err = service
                .login(&email(404), "guess", ClientInfo::default())
                .await
                .unwrap_err();
            assert!(matches!(err, LoginError::InvalidCredentials));
        }
    }

    #[tokio::test]
    async fn login_of_an_inactive_user_is_refused_only_after_a_correct_password() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, false))));
        m.hasher.expect_verify().times(1).returning(|_, _| Ok(true));
        m.sessions.expect_create_session().never();
        let err = m
            .service()
            .login(&email(7), "correct horse", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::Inactive));

        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, false))));
        m.hasher.expect_verify().returning(|_, _| Ok(false));
        let err = m
            .service()
            .login(&email(7), "wrong", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials));
    }

    fn claims(m: &Mocks, user_id: i64, session_id: SessionId) -> AccessClaims {
        AccessClaims {
            user_id: UserId(user_id),
            role: Role::User,
            session_id,
            issued_at: m.now - TimeDelta::minutes(1),
            expires_at: m.now + TimeDelta::minutes(14),
            token_id: "jti".into(),
            methods: vec![AuthMethod::Password],
        }
    }

    /// `authenticate` of a token the issuer rejects, with pyauth tokens accepted until
    /// `until` and the token's own expiry at `expires_at`.
    async fn pyauth_authentication(
        until: Option<TimeDelta>,
        expires_in: TimeDelta,
        active: bool,
    ) -> Result<Principal, AuthError> {
        let mut m = Mocks::new();
        let now = m.now;
        m.policy.pyauth_tokens_until = until.map(|d| now + d);
        m.tokens
            .expect_verify()
            .returning(|_| Err(TokenError::Rejected("no kid, no sid".into())));
        m.tokens.expect_verify_pyauth().returning(move |_| {
            Ok(crate::domain::ports::PyauthClaims {
                user_id: UserId(7),
                expires_at: now + expires_in,
            })
        });
        m.users
            .expect_find_pyauth_user()
            .with(eq(7))
            .returning(move |_| Ok(Some(user(7, Role::Admin, active))));
        m.users.expect_find_user_by_id().never();
        m.service().authenticate("pyauth-token").await
    }

    #[tokio::test]
    async fn a_token_naming_a_key_not_loaded_yet_is_judged_again_after_the_keys_reload() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        let c = claims(&m, 3, sid);
        let mut seq = mockall::Sequence::new();
        m.tokens
            .expect_verify()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_| Err(TokenError::UnknownKey("k2".into())));
        let mut store = crate::domain::ports::MockSigningKeyStore::new();
        let mut ring = crate::domain::ports::MockKeyRing::new();
        // One read of the table, installed, before the same token is checked again.
        store
            .expect_list_keys()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|| Ok(Vec::new()));
        ring.expect_install()
            .times(1)
            .in_sequence(&mut seq)
            .returning(|_, _| Ok(()));
        m.tokens
            .expect_verify()
            .times(1)
            .in_sequence(&mut seq)
            .returning(move |_| Ok(c.clone()));
        m.keys = Some((store, ring));
        m.sessions
            .expect_find_session()
            .returning(move |_| Ok(Some((session(sid, 3), user(3, Role::User, true)))));
        let principal = m.service().authenticate("tok").await.unwrap();
        assert_eq!(principal.user.id, UserId(3));
    }

    #[tokio::test]
    async fn a_pyauth_token_of_a_row_the_import_did_not_bring_names_nobody() {
        // Whoever holds id 7 here registered here (or the row was skipped): the token of
        // pyauth's row 7 is another person's and opens nothing.
        let mut m = Mocks::new();
        let now = m.now;
        m.policy.pyauth_tokens_until = Some(now + TimeDelta::hours(1));
        m.tokens
            .expect_verify()
            .returning(|_| Err(TokenError::Rejected("no kid, no sid".into())));
        m.tokens.expect_verify_pyauth().returning(move |_| {
            Ok(crate::domain::ports::PyauthClaims {
                user_id: UserId(7),
                expires_at: now + TimeDelta::minutes(10),
            })
        });
        m.users
            .expect_find_pyauth_user()
            .with(eq(7))
            .returning(|_| Ok(None));
        m.users.expect_find_user_by_id().never();
        let err = m.service().authenticate("pyauth-token").await.unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken), "{err:?}");
    }

    #[tokio::test]
    async fn pyauth_tokens_pass_until_the_deadline_on_the_users_current_state_with_no_session() {
        let minute = TimeDelta::minutes(1);
        let principal = pyauth_authentication(Some(minute), minute, true)
            .await
            .unwrap();
        assert_eq!(principal.user.id, UserId(7));
        assert_eq!(
            principal.user.role,
            Role::Admin,
            "the role of the database, not the token"
        );
        assert_eq!(principal.session_id, None);
        // Expired beyond the leeway; a deactivated user; no deadline; the deadline passed
        // (with no leeway, whatever the token's expiry).
        for (until, expires_in, active, expected) in [
            (Some(minute), -minute, true, AuthError::InvalidToken),
            (Some(minute), minute, false, AuthError::Inactive),
            (None, minute, true, AuthError::InvalidToken),
            (
                Some(TimeDelta::zero()),
                minute * 60,
                true,
                AuthError::InvalidToken,
            ),
        ] {
            let err = pyauth_authentication(until, expires_in, active)
                .await
                .unwrap_err();
            assert_eq!(
                std::mem::discriminant(&err),
                std::mem::discriminant(&expected),
                "{until:?} {expires_in:?} {active}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn authenticate_loads_the_current_user_through_the_session() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        let c = claims(&m, 3, sid);
        m.tokens
            .expect_verify()
            .with(eq("tok"))
            .returning(move |_| Ok(c.clone()));
        // The stored role wins over the one in the token.
        m.sessions
            .expect_find_session()
            .with(eq(sid))
            .times(1)
            .returning(|id| Ok(Some((session(id, 3), user(3, Role::Admin, true)))));
        let principal = m.service().authenticate("tok").await.unwrap();
        assert_eq!(principal.user.role, Role::Admin);
        assert_eq!(principal.session_id, Some(sid));
    }

    #[tokio::test]
    async fn authenticate_rejects_a_token_the_issuer_rejects_without_touching_storage() {
        let mut m = Mocks::new();
        m.tokens
            .expect_verify()
            .returning(|_| Err(TokenError::Rejected("bad signature".into())));
        m.sessions.expect_find_session().never();
        let err = m.service().authenticate("forged").await.unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken));
    }

    #[tokio::test]
    async fn authenticate_rejects_a_token_expired_by_the_clock_beyond_the_leeway() {
        let mut m = Mocks::new();
        let mut c = claims(&m, 3, SessionId::random());
        c.expires_at = m.now - TimeDelta::seconds(31);
        m.tokens.expect_verify().returning(move |_| Ok(c.clone()));
        m.sessions.expect_find_session().never();
        let err = m.service().authenticate("old").await.unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken));
    }

    #[tokio::test]
    async fn authenticate_accepts_a_token_expired_within_the_leeway() {
        let mut m = Mocks::new();
        let mut c = claims(&m, 3, SessionId::random());
        c.expires_at = m.now - TimeDelta::seconds(29);
        m.tokens.expect_verify().returning(move |_| Ok(c.clone()));
        m.sessions
            .expect_find_session()
            .returning(|id| Ok(Some((session(id, 3), user(3, Role::User, true)))));
        assert!(m.service().authenticate("just-expired").await.is_ok());
    }

    #[tokio::test]
    async fn authenticate_rejects_a_token_issued_in_the_future() {
        let mut m = Mocks::new();
        let mut c = claims(&m, 3, SessionId::random());
        c.issued_at = m.now + TimeDelta::minutes(5);
        m.tokens.expect_verify().returning(move |_| Ok(c.clone()));
        m.sessions.expect_find_session().never();
        assert!(matches!(
            m.service().authenticate("future").await.unwrap_err(),
            AuthError::InvalidToken
        ));
    }

    #[tokio::test]
    async fn authenticate_rejects_an_ended_or_unknown_session_or_a_mismatched_user() {
        for case in ["ended", "unknown", "other-user"] {
            let mut m = Mocks::new();
            let sid = SessionId::random();
            let c = claims(&m, 3, sid);
            let now = m.now;
            m.tokens.expect_verify().returning(move |_| Ok(c.clone()));
            m.sessions
                .expect_find_session()
                .with(always())
                .returning(move |id| {
                    Ok(match case {
                        "ended" => {
                            let mut s = session(id, 3);
                            s.ended_at = Some(now);
                            Some((s, user(3, Role::User, true)))
                        }
                        "other-user" => Some((session(id, 4), user(4, Role::User, true))),
                        _ => None,
                    })
                });
            let err = m.service().authenticate("tok").await.unwrap_err();
            assert!(matches!(err, AuthError::InvalidToken), "{case}");
        }
    }

    #[tokio::test]
    async fn authenticate_rejects_a_deactivated_user() {
        let mut m = Mocks::new();
        let c = claims(&m, 3, SessionId::random());
        m.tokens.expect_verify().returning(move |_| Ok(c.clone()));
        m.sessions
            .expect_find_session()
            .returning(|id| Ok(Some((session(id, 3), user(3, Role::User, false)))));
        assert!(matches!(
            m.service().authenticate("tok").await.unwrap_err(),
            AuthError::Inactive
        ));
    }

    #[test]
    fn authorize_lets_admins_everywhere_and_users_only_to_user_routes() {
        let service = Mocks::new().service();
        let as_role = |role| Principal {
            user: user(1, role, true),
            session_id: Some(SessionId::random()),
        };
        assert!(service.authorize(&as_role(Role::User), Role::User).is_ok());
        assert!(service.authorize(&as_role(Role::Admin), Role::User).is_ok());
        assert!(
            service
                .authorize(&as_role(Role::Admin), Role::Admin)
                .is_ok()
        );
        assert!(matches!(
            service.authorize(&as_role(Role::User), Role::Admin),
            Err(AuthError::Forbidden)
        ));
    }

    #[tokio::test]
    async fn login_issues_no_token_when_the_session_cannot_be_stored() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        m.sessions.expect_create_session().returning(|_, _| {
            Err(CreateSessionError::Backend(BackendError::Unavailable(
                "down".into(),
            )))
        });
        m.tokens.expect_issue().never();
        let err = m
            .service()
            .login(&email(7), "correct horse", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            LoginError::Backend(BackendError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_login_that_raced_a_password_change_or_deactivation_opens_nothing() {
        // The user as read has version 0; storage says it moved on before the session was
        // stored (the interleaving of issue 7, finding 3).
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        m.sessions
            .expect_create_session()
            .withf(|s, _| s.credential_version == 0 && s.live_limit == 100)
            .times(1)
            .returning(|_, _| Err(CreateSessionError::Stale));
        m.tokens.expect_issue().never();
        let err = m
            .service()
            .login(&email(7), "correct horse", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials), "{err:?}");
    }

    #[tokio::test]
    async fn login_of_an_admin_signs_a_token_for_that_user() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(2, Role::Admin, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        expect_session_start(&mut m);
        let LoginStep::Done(pair) = m
            .service()
            .login(&email(2), "correct horse", ClientInfo::default())
            .await
            .unwrap()
        else {
            panic!("a user without a second factor gets tokens");
        };
        assert_eq!(pair.access_token, "access-for-2");
    }

    #[tokio::test]
    async fn a_failed_login_is_recorded_with_the_user_of_a_known_email_only() {
        for known in [true, false] {
            let mut m = Mocks::new();
            m.users
                .expect_find_user_by_email()
                .returning(move |_| Ok(known.then(|| user(7, Role::User, true))));
            m.hasher.expect_verify().returning(|_, _| Ok(false));
            let now = m.now;
            // Folded with the failures like it of the last minute; a user agent of kilobytes
            // is kept to its first 256 characters.
            m.audit
                .expect_record_folded()
                .withf(move |event, since| {
                    event.kind == crate::domain::AuditKind::LoginFailed
                        && !event.success
                        && event.user_id == known.then_some(UserId(7))
                        && event.client.ip.as_deref() == Some("198.51.100.9")
                        && event.client.user_agent.as_ref().map(|a| a.chars().count()) == Some(256)
                        && *since == now - TimeDelta::seconds(60)
                })
                .times(1)
                .returning(|_, _| Ok(()));
            m.audit.expect_record_audit().never();
            let client = ClientInfo::new(Some(&"x".repeat(4000)), Some("198.51.100.9".into()));
            let err = m
                .service()
                .login(&email(7), "wrong", client)
                .await
                .unwrap_err();
            assert!(matches!(err, LoginError::InvalidCredentials));
        }
    }

    #[tokio::test]
    async fn a_registration_is_recorded_with_the_new_user() {
        let mut m = Mocks::new();
        m.hasher
            .expect_hash()
            .returning(|_| Ok(PasswordHash::new("h".into())));
        m.users
            .expect_create_user()
            .withf(|u| {
                u.audit.kind == crate::domain::AuditKind::UserRegistered
                    && u.audit.user_id.is_none()
            })
            .times(1)
            .returning(|_| Ok(user(1, Role::User, true)));
        m.service()
            .register(email(1), password(), None, &ClientInfo::default())
            .await
            .unwrap();
    }
}

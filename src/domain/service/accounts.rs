//! Register, log in, authenticate an access token, authorise a role.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::credentials::{Credentials, LoginError, login_session_error};
use super::keys::SigningKeys;
use super::limits::{Action, Guard, Throttled};
use super::notices::Mailing;
use super::opening::SessionOpener;
use super::second_step::{PendingLogin, SecondStep};
use crate::domain::mfa::AuthMethod;
use crate::domain::ports::{
    Clock, CreateUserError, PasswordHasher, SessionRepository, TokenError, TokenIssuer,
    UserRepository,
};
use crate::domain::{
    AuditKind, AuthPolicy, BackendError, ClientInfo, Email, FullName, NewAuditEvent, NewUser,
    Password, PasswordError, Principal, Role, TokenPair, User,
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

/// Registering, signing in with a password, and checking access tokens.
pub struct Accounts {
    pub(super) users: Arc<dyn UserRepository>,
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) tokens: Arc<dyn TokenIssuer>,
    pub(super) keys: Arc<SigningKeys>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) hasher: Arc<dyn PasswordHasher>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) guard: Arc<Guard>,
    pub(super) credentials: Arc<Credentials>,
    pub(super) mailing: Arc<Mailing>,
    pub(super) opener: Arc<SessionOpener>,
    pub(super) second_step: Arc<SecondStep>,
}

impl Accounts {
    /// Makes the dummy hash now, if it is not made yet: what a server does right after it
    /// starts serving, so that the first login finds it ready.
    ///
    /// # Errors
    /// [`BackendError`] from the hasher; the next login that needs the hash tries again.
    pub async fn prepare(&self) -> Result<(), BackendError> {
        self.credentials.prepare().await
    }

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
        self.credentials
            .check_new_password(&password, &email, full_name.as_ref())?;
        self.guard
            .throttle(Action::Register, client.ip.as_deref(), Some(email.key()))
            .await?;
        // The verification mail counts in the address's and the client's mail budgets like any
        // other; over either, the registration goes through without it (the user asks for
        // one later at POST /auth/verify/request).
        let verify = self.policy.mail.verify_on_register
            && self.mailing.mail_configured()
            && self
                .guard
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
    /// login that `SecondFactors::complete_login` finishes.
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
        let user = self
            .credentials
            .check_login(email, password, &client)
            .await?;
        if let Some(pending) = self.second_step.second_step_owed(&user).await? {
            return Ok(LoginStep::SecondFactor(pending));
        }
        self.opener
            .start_session(&user, client, vec![AuthMethod::Password])
            .await
            .map(LoginStep::Done)
            .map_err(login_session_error)
    }

    /// A login in one step, as the OAuth2 password grant has no room for a second one.
    ///
    /// # Errors
    /// As [`Accounts::login`], and [`LoginError::SecondFactorRequired`] for a user with a
    /// second factor, only after the right password (a wrong one is
    /// [`LoginError::InvalidCredentials`] as ever, so the grant tells nothing about enrolment).
    pub async fn login_without_second_step(
        &self,
        email: &Email,
        password: &str,
        client: ClientInfo,
    ) -> Result<TokenPair, LoginError> {
        let user = self
            .credentials
            .check_login(email, password, &client)
            .await?;
        if self.second_step.factors(user.id).await?.totp {
            return Err(LoginError::SecondFactorRequired);
        }
        self.credentials.clear_failures(user.email.key()).await?;
        self.opener
            .start_session(&user, client, vec![AuthMethod::Password])
            .await
            .map_err(login_session_error)
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
        // A relying party's session never backs one of Portcullis's own tokens.
        if session.user_id != claims.user_id
            || user.id != claims.user_id
            || session.client_id.is_some()
        {
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

/// What a right password leads to.
#[derive(Debug)]
pub enum LoginStep {
    /// No second factor: the session is open.
    Done(TokenPair),
    /// A second factor is owed, at [`SecondFactors::complete_login`].
    SecondFactor(PendingLogin),
}

#[cfg(test)]
mod tests;

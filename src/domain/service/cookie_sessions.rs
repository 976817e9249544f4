//! Sessions held by a browser cookie instead of tokens: the web console's sign-in.
//!
//! The same session as an API login (same table, same limits, listed and ended the same way),
//! with one difference: the browser gets an opaque cookie secret, never an access or refresh
//! token, so nothing a page script could read would let anyone act as the user.

use std::sync::Arc;

use chrono::TimeDelta;

use super::accounts::AuthError;
use super::credentials::{Credentials, LoginError, login_session_error};
use super::opening::{CookieSession, SessionOpener};
use super::second_step::{MfaError, PendingLogin, SecondFactor, SecondStep};
use crate::domain::mfa::AuthMethod;
use crate::domain::ports::{Clock, SessionRepository};
use crate::domain::{AuthPolicy, ClientInfo, CookieHash, Email, Principal};

/// A use of a cookie session moves its idle end on only when the last recorded use is older
/// than this: a page view costs no write, and the idle end is at most this much early.
const TOUCH_EVERY: TimeDelta = TimeDelta::minutes(5);

/// What a console sign-in's password step leads to.
#[derive(Debug)]
pub enum CookieSignIn {
    Done(CookieSession),
    /// A second factor is owed.
    SecondFactor(PendingLogin),
}

/// Sessions held by the console's cookie.
pub struct CookieSessions {
    pub(super) sessions: Arc<dyn SessionRepository>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) policy: Arc<AuthPolicy>,
    pub(super) credentials: Arc<Credentials>,
    pub(super) opener: Arc<SessionOpener>,
    pub(super) second_step: Arc<SecondStep>,
}

impl CookieSessions {
    /// Checks a password exactly as `Accounts::login` does (limits, failure delay, one
    /// hash for known and unknown emails alike) and opens a session held by a cookie, or, for
    /// a user with a second factor, a pending login that
    /// [`CookieSessions::complete_sign_in_with_cookie`] finishes.
    ///
    /// # Errors
    /// As `Accounts::login`.
    pub async fn sign_in_with_cookie(
        &self,
        email: &Email,
        password: &str,
        client: ClientInfo,
    ) -> Result<CookieSignIn, LoginError> {
        let user = self
            .credentials
            .check_login(email, password, &client)
            .await?;
        if let Some(pending) = self.second_step.second_step_owed(&user).await? {
            return Ok(CookieSignIn::SecondFactor(pending));
        }
        let session = self
            .opener
            .open_cookie_session(&user, client, vec![AuthMethod::Password])
            .await
            .map_err(login_session_error)?;
        Ok(CookieSignIn::Done(session))
    }

    /// The second step of a console sign-in, as `SecondFactors::complete_login` is of a login.
    ///
    /// # Errors
    /// As `SecondFactors::complete_login`.
    pub async fn complete_sign_in_with_cookie(
        &self,
        mfa_token: &str,
        proof: SecondFactor<'_>,
        client: ClientInfo,
    ) -> Result<CookieSession, MfaError> {
        let (user, method) = self
            .second_step
            .check_second_factor(mfa_token, proof, &client)
            .await?;
        self.opener
            .open_cookie_session(&user, client, vec![AuthMethod::Password, method])
            .await
            .map_err(|err| login_session_error(err).into())
    }

    /// Turns a console cookie into the caller, on the user's and session's current state, as
    /// `Accounts::authenticate` does for an access token. A session in use stays alive:
    /// its idle end moves on (at most once every few minutes), never beyond its absolute end.
    ///
    /// # Errors
    /// [`AuthError::InvalidToken`] for an unknown cookie or a session that is ended or expired;
    /// [`AuthError::Inactive`] for a deactivated user.
    pub async fn authenticate_cookie(&self, secret: &str) -> Result<Principal, AuthError> {
        let (session, user) = self
            .sessions
            .find_cookie_session(&CookieHash::of(secret))
            .await?
            .ok_or(AuthError::InvalidToken)?;
        let now = self.clock.now();
        if !user.is_active {
            return Err(AuthError::Inactive);
        }
        if !session.is_live(now) || session.user_id != user.id {
            return Err(AuthError::InvalidToken);
        }
        if now - session.last_used_at >= TOUCH_EVERY {
            let idle_end = (now + self.policy.refresh_token_ttl).min(session.expires_at);
            self.sessions
                .touch_session(session.id, now, idle_end)
                .await?;
        }
        Ok(Principal {
            user,
            session_id: Some(session.id),
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::domain::Session;
    use crate::domain::{SessionId, SessionKey};
    use mockall::predicate::{always, eq};

    use super::super::test_support::{Mocks, now, session, user};
    use super::*;
    use crate::domain::ports::CreateSessionError;
    use crate::domain::{Role, UserId};

    fn email() -> Email {
        Email::parse("user1@example.com").unwrap()
    }

    #[tokio::test]
    async fn signing_in_opens_a_session_held_by_a_cookie_and_issues_no_token() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(1, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        m.sessions
            .expect_create_session()
            .withf(|new, key| {
                new.user_id == UserId(1)
                    && matches!(key, SessionKey::Cookie(c) if c.expires_at > now())
            })
            .times(1)
            .returning(|new, _| Ok(session(new.id, 1)));
        m.tokens.expect_issue().never();
        let service = m.service();
        let CookieSignIn::Done(signed_in) = service
            .cookies
            .sign_in_with_cookie(&email(), "correct horse", ClientInfo::default())
            .await
            .unwrap()
        else {
            panic!("a user without a second factor gets a session");
        };
        assert_eq!(signed_in.secret.len(), 43);
    }

    #[tokio::test]
    async fn a_wrong_password_opens_nothing() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(1, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(false));
        m.sessions.expect_create_session().never();
        let err = m
            .service()
            .cookies
            .sign_in_with_cookie(&email(), "wrong", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials), "{err:?}");
    }

    #[tokio::test]
    async fn a_password_changed_during_sign_in_opens_nothing() {
        let mut m = Mocks::new();
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(1, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        m.sessions
            .expect_create_session()
            .returning(|_, _| Err(CreateSessionError::Stale));
        let err = m
            .service()
            .cookies
            .sign_in_with_cookie(&email(), "correct horse", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, LoginError::InvalidCredentials), "{err:?}");
    }

    fn cookie_session(
        m: &mut Mocks,
        edit: impl Fn(&mut Session, &mut crate::domain::User) + Send + Sync + 'static,
    ) {
        m.sessions
            .expect_find_cookie_session()
            .with(eq(CookieHash::of("secret")))
            .returning(move |_| {
                let mut s = session(SessionId::random(), 1);
                let mut u = user(1, Role::User, true);
                edit(&mut s, &mut u);
                Ok(Some((s, u)))
            });
    }

    #[tokio::test]
    async fn a_live_cookie_session_is_the_caller_and_a_recent_one_is_not_written() {
        let mut m = Mocks::new();
        cookie_session(&mut m, |s, _| s.last_used_at = now());
        m.sessions.expect_touch_session().never();
        let principal = m
            .service()
            .cookies
            .authenticate_cookie("secret")
            .await
            .unwrap();
        assert_eq!(principal.user.id, UserId(1));
        assert!(principal.session_id.is_some());
    }

    #[tokio::test]
    async fn a_session_in_use_moves_its_idle_end_but_never_past_its_absolute_end() {
        let mut m = Mocks::new();
        let end = now() + TimeDelta::minutes(3);
        cookie_session(&mut m, move |s, _| {
            s.last_used_at = now() - TOUCH_EVERY;
            s.expires_at = end;
        });
        m.sessions
            .expect_touch_session()
            .with(always(), eq(now()), eq(end))
            .times(1)
            .returning(|_, _, _| Ok(()));
        m.service()
            .cookies
            .authenticate_cookie("secret")
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn ended_expired_idle_and_unknown_cookies_are_refused() {
        for edit in [
            |s: &mut Session, _: &mut crate::domain::User| s.ended_at = Some(now()),
            |s: &mut Session, _: &mut crate::domain::User| s.expires_at = now(),
            |s: &mut Session, _: &mut crate::domain::User| s.idle_expires_at = now(),
        ] {
            let mut m = Mocks::new();
            cookie_session(&mut m, edit);
            m.sessions.expect_touch_session().never();
            let err = m
                .service()
                .cookies
                .authenticate_cookie("secret")
                .await
                .unwrap_err();
            assert!(matches!(err, AuthError::InvalidToken), "{err:?}");
        }
        let mut m = Mocks::new();
        m.sessions
            .expect_find_cookie_session()
            .returning(|_| Ok(None));
        let err = m
            .service()
            .cookies
            .authenticate_cookie("other")
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::InvalidToken), "{err:?}");
    }

    #[tokio::test]
    async fn a_deactivated_user_is_refused_with_the_reason() {
        let mut m = Mocks::new();
        cookie_session(&mut m, |_, u| u.is_active = false);
        let err = m
            .service()
            .cookies
            .authenticate_cookie("secret")
            .await
            .unwrap_err();
        assert!(matches!(err, AuthError::Inactive), "{err:?}");
    }
}

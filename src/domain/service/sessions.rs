//! Refresh with rotation and reuse detection, logout, the session list, password change.

use super::AuthService;
use super::limits::{Action, LimitError, Throttled};
use crate::domain::ports::Rotation;
use crate::domain::{
    AccountChange, AuditKind, BackendError, ClientInfo, Condition, NewAuditEvent, Password,
    PasswordError, Principal, RefreshTokenHash, Session, SessionId, TokenPair,
};

/// Why a refresh was refused. Every variant answers 401 to the client.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// Unknown, expired, or of an ended session or an inactive user.
    #[error("invalid refresh token")]
    InvalidToken,
    /// The token was spent already: someone holds a copy. Its whole session has been ended.
    #[error("refresh token reused; session revoked")]
    Reused,
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why ending a session failed.
#[derive(Debug, thiserror::Error)]
pub enum EndSessionError {
    /// No live session of the caller has that id (whether or not someone else's does).
    #[error("session not found")]
    NotFound,
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Why a password change failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangePasswordError {
    #[error("current password is incorrect")]
    WrongPassword,
    #[error("new password {0}")]
    WeakPassword(#[from] PasswordError),
    #[error(transparent)]
    Throttled(#[from] Throttled),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl AuthService {
    /// Spends a refresh token for a new pair (rotation). Presenting a spent token again ends
    /// the session it belongs to, since either the client or a thief holds a stolen copy
    /// (OAuth 2.0 Security BCP, section 4.14.2).
    ///
    /// # Errors
    /// [`RefreshError::Reused`] for a spent token (also when a concurrent refresh of the same
    /// token won the race), [`RefreshError::Throttled`] over a limit of the client's address or
    /// of the account, [`RefreshError::InvalidToken`] for anything else not acceptable.
    pub async fn refresh(
        &self,
        presented: &str,
        client: ClientInfo,
    ) -> Result<TokenPair, RefreshError> {
        self.throttle(Action::Refresh, client.ip.as_deref(), None)
            .await?;
        let hash = RefreshTokenHash::of(presented);
        let record = self
            .sessions
            .find_refresh_token(&hash)
            .await?
            .ok_or(RefreshError::InvalidToken)?;
        let now = self.clock.now();
        let session = &record.session;
        // Reuse is acted on before any per-account limit: a thief's replay must end the
        // session even while the account's refresh budget is spent.
        if record.spent_at.is_some() {
            return Err(self.revoke_for_reuse(session, &client).await);
        }
        let account = record.user.id.to_string();
        self.throttle(Action::Refresh, None, Some(&account)).await?;
        if record.expires_at <= now || !session.is_live(now) || !record.user.is_active {
            return Err(RefreshError::InvalidToken);
        }
        let next = self.next_refresh_token(session.id, session.expires_at, now);
        let refresh_token = next.secret.clone();
        match self
            .sessions
            .rotate_refresh_token(&hash, next, client.clone())
            .await?
        {
            Rotation::Rotated => {}
            Rotation::AlreadySpent => return Err(self.revoke_for_reuse(session, &client).await),
            Rotation::SessionEnded => return Err(RefreshError::InvalidToken),
        }
        let access_token = self.issue_access_token(&record.user, session, now).await?;
        Ok(self.token_pair(access_token, refresh_token))
    }

    async fn revoke_for_reuse(&self, session: &Session, client: &ClientInfo) -> RefreshError {
        tracing::warn!(session_id = %session.id, user_id = %session.user_id, "refresh token reuse detected; ending the session");
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            AuditKind::SessionRefreshReused,
            Some(session.user_id),
            client,
            now,
        )
        .with("session_id", session.id);
        match self
            .sessions
            .end_session(session.user_id, session.id, now, audit)
            .await
        {
            Ok(_) => RefreshError::Reused,
            Err(err) => RefreshError::Backend(err),
        }
    }

    /// Ends the caller's current session: its refresh token and access tokens stop working.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn logout(
        &self,
        principal: &Principal,
        client: &ClientInfo,
    ) -> Result<(), BackendError> {
        // A token of the old service belongs to no session: there is nothing to end.
        let Some(session_id) = principal.session_id else {
            return Ok(());
        };
        let audit = self.session_ended(principal, session_id, "logout", client);
        self.sessions
            .end_session(principal.user.id, session_id, self.clock.now(), audit)
            .await?;
        Ok(())
    }

    /// The record of `principal` ending session `id`, for `reason`.
    fn session_ended(
        &self,
        principal: &Principal,
        id: SessionId,
        reason: &str,
        client: &ClientInfo,
    ) -> NewAuditEvent {
        NewAuditEvent::new(
            AuditKind::SessionEnded,
            Some(principal.user.id),
            client,
            self.clock.now(),
        )
        .with("session_id", id)
        .with("reason", reason)
    }

    /// The caller's live sessions, newest first; never more than `max_sessions_per_user`.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn list_sessions(&self, principal: &Principal) -> Result<Vec<Session>, BackendError> {
        self.sessions
            .list_live_sessions(
                principal.user.id,
                self.clock.now(),
                self.policy.max_sessions_per_user,
            )
            .await
    }

    /// Ends one of the caller's own sessions.
    ///
    /// # Errors
    /// [`EndSessionError::NotFound`] when the caller has no live session with that id.
    pub async fn end_session(
        &self,
        principal: &Principal,
        id: SessionId,
        client: &ClientInfo,
    ) -> Result<(), EndSessionError> {
        let audit = self.session_ended(principal, id, "ended by the user", client);
        if self
            .sessions
            .end_session(principal.user.id, id, self.clock.now(), audit)
            .await?
        {
            Ok(())
        } else {
            Err(EndSessionError::NotFound)
        }
    }

    /// Changes the caller's password after checking the current one, and ends every other
    /// session of theirs.
    ///
    /// # Errors
    /// [`ChangePasswordError::WrongPassword`] when `current` does not match;
    /// [`ChangePasswordError::Throttled`] over a limit or during the account's failure delay.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current: &str,
        new: Password,
        client: &ClientInfo,
    ) -> Result<(), ChangePasswordError> {
        let user = &principal.user;
        self.check_new_password(&new, &user.email, user.full_name.as_ref())?;
        if !self.recheck_password(principal, current, client).await? {
            return Err(ChangePasswordError::WrongPassword);
        }
        let hash = self.hasher.hash(&new).await?;
        let now = self.clock.now();
        let audit = NewAuditEvent::new(
            AuditKind::PasswordChanged,
            Some(principal.user.id),
            client,
            now,
        );
        // The password was checked against the hash this request read: a reset, another
        // change or a deactivation since makes it not the current one any more.
        let change = AccountChange::of(user.id, now)
            .when(Condition::Current {
                credential_version: user.credential_version,
            })
            .new_password(hash, principal.session_id)
            .recording(audit);
        if self.users.apply(change).await?.kept() {
            Ok(())
        } else {
            Err(ChangePasswordError::WrongPassword)
        }
    }

    /// Checks the password of a signed-in caller: the one path for every use case that asks
    /// for it again. The attempt is limited per client address and per user, and goes through
    /// the account's failure run shared with login ([`AuthService::verify_password`]). A
    /// session that gets `free_failures` wrong passwords is ended: whoever holds its token is
    /// guessing.
    ///
    /// # Errors
    /// [`LimitError::Throttled`] over a limit or during the failure delay, before any hash.
    pub(super) async fn recheck_password(
        &self,
        principal: &Principal,
        candidate: &str,
        client: &ClientInfo,
    ) -> Result<bool, LimitError> {
        let user = &principal.user;
        self.throttle_recheck(user, client).await?;
        let right = self
            .verify_password(user.email.key(), candidate, &user.password_hash)
            .await?;
        if right {
            // The session passed every factor at its login: the password completes the proof.
            self.clear_failures(user.email.key()).await?;
        }
        // A token of the old service has no session to end; the failure run and the limits
        // above still apply to it.
        if let (false, Some(session_id)) = (right, principal.session_id)
            && self.wrong_rechecks(session_id).await? >= self.limits.free_failures
        {
            tracing::warn!(%session_id, user_id = %user.id, "repeated wrong passwords; ending the session");
            let audit =
                self.session_ended(principal, session_id, "repeated wrong passwords", client);
            self.sessions
                .end_session(user.id, session_id, self.clock.now(), audit)
                .await?;
        }
        Ok(right)
    }

    /// Deletes dead sessions and expired refresh tokens; run periodically.
    ///
    /// # Errors
    /// [`BackendError`] when storage fails.
    pub async fn purge_expired_sessions(&self) -> Result<u64, BackendError> {
        let now = self.clock.now();
        self.housekeeping
            .purge_expired(now, now - self.policy.audit_retention)
            .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use mockall::predicate::{always, eq};

    use super::super::limits::subject_key;
    use super::super::test_support::{Mocks, session, user};
    use super::*;
    use crate::domain::ports::MockRateLimiter;
    use crate::domain::{Applied, Edit, PasswordHash, RefreshTokenRecord, Role, UserId};

    const PRESENTED: &str = "presented-refresh-token";

    fn record(m: &Mocks, sid: SessionId) -> RefreshTokenRecord {
        RefreshTokenRecord {
            expires_at: m.now + TimeDelta::days(1),
            spent_at: None,
            session: session(sid, 5),
            user: user(5, Role::User, true),
        }
    }

    fn expect_lookup(m: &mut Mocks, rec: RefreshTokenRecord) {
        m.sessions
            .expect_find_refresh_token()
            .with(eq(RefreshTokenHash::of(PRESENTED)))
            .times(1)
            .returning(move |_| Ok(Some(rec.clone())));
    }

    #[tokio::test]
    async fn refresh_spends_the_token_and_issues_a_new_pair() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        let now = m.now;
        let rec = record(&m, sid);
        expect_lookup(&mut m, rec);
        m.sessions
            .expect_rotate_refresh_token()
            .withf(move |old, next, client| {
                *old == RefreshTokenHash::of(PRESENTED)
                    && next.session_id == sid
                    && next.expires_at == now + TimeDelta::days(14)
                    && next.hash == RefreshTokenHash::of(&next.secret)
                    && client.user_agent.as_deref() == Some("app/2")
            })
            .times(1)
            .returning(|_, _, _| Ok(Rotation::Rotated));
        m.tokens
            .expect_issue()
            .withf(move |c| c.session_id == sid && c.user_id == UserId(5))
            .returning(|_| Ok("access".into()));
        m.sessions.expect_end_session().never();
        let pair = m
            .service()
            .refresh(PRESENTED, ClientInfo::new(Some("app/2"), None))
            .await
            .unwrap();
        assert_eq!(pair.access_token, "access");
        assert_ne!(pair.refresh_token, PRESENTED);
    }

    #[tokio::test]
    async fn refresh_never_extends_a_session_beyond_its_absolute_lifetime() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        let mut rec = record(&m, sid);
        let session_end = m.now + TimeDelta::hours(3);
        rec.session.expires_at = session_end;
        expect_lookup(&mut m, rec);
        m.sessions
            .expect_rotate_refresh_token()
            .withf(move |_, next, _| next.expires_at == session_end)
            .times(1)
            .returning(|_, _, _| Ok(Rotation::Rotated));
        m.tokens.expect_issue().returning(|_| Ok("access".into()));
        assert!(
            m.service()
                .refresh(PRESENTED, ClientInfo::default())
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn reusing_a_spent_token_ends_its_whole_session() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        let mut rec = record(&m, sid);
        rec.spent_at = Some(m.now - TimeDelta::minutes(5));
        expect_lookup(&mut m, rec);
        m.sessions.expect_rotate_refresh_token().never();
        m.sessions
            .expect_end_session()
            .with(eq(UserId(5)), eq(sid), eq(m.now), always())
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        m.tokens.expect_issue().never();
        let err = m
            .service()
            .refresh(PRESENTED, ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RefreshError::Reused));
    }

    #[tokio::test]
    async fn losing_a_concurrent_rotation_counts_as_reuse() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        let rec = record(&m, sid);
        expect_lookup(&mut m, rec);
        m.sessions
            .expect_rotate_refresh_token()
            .times(1)
            .returning(|_, _, _| Ok(Rotation::AlreadySpent));
        m.sessions
            .expect_end_session()
            .with(eq(UserId(5)), eq(sid), eq(m.now), always())
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        m.tokens.expect_issue().never();
        let err = m
            .service()
            .refresh(PRESENTED, ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RefreshError::Reused));
    }

    #[tokio::test]
    async fn a_refresh_that_raced_the_end_of_its_session_issues_nothing() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        let rec = record(&m, sid);
        expect_lookup(&mut m, rec);
        m.sessions
            .expect_rotate_refresh_token()
            .times(1)
            .returning(|_, _, _| Ok(Rotation::SessionEnded));
        m.sessions.expect_end_session().never();
        m.tokens.expect_issue().never();
        let err = m
            .service()
            .refresh(PRESENTED, ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RefreshError::InvalidToken), "{err:?}");
    }

    #[tokio::test]
    async fn refresh_refuses_unknown_expired_and_dead_sessions_without_rotating() {
        type Spoil = fn(&mut RefreshTokenRecord, chrono::DateTime<chrono::Utc>);
        let cases: [(&str, Spoil); 5] = [
            ("token expired by the clock", |r, now| r.expires_at = now),
            ("absolute lifetime over", |r, now| {
                r.session.expires_at = now
            }),
            ("idle expiry passed", |r, now| {
                r.session.idle_expires_at = now - TimeDelta::seconds(1)
            }),
            ("session ended", |r, now| r.session.ended_at = Some(now)),
            ("user deactivated", |r, _| r.user.is_active = false),
        ];
        for (case, spoil) in cases {
            let mut m = Mocks::new();
            let mut rec = record(&m, SessionId::random());
            spoil(&mut rec, m.now);
            expect_lookup(&mut m, rec);
            m.sessions.expect_rotate_refresh_token().never();
            m.sessions.expect_end_session().never();
            let err = m
                .service()
                .refresh(PRESENTED, ClientInfo::default())
                .await
                .unwrap_err();
            assert!(matches!(err, RefreshError::InvalidToken), "{case}");
        }

        let mut m = Mocks::new();
        m.sessions
            .expect_find_refresh_token()
            .returning(|_| Ok(None));
        let err = m
            .service()
            .refresh("unknown", ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RefreshError::InvalidToken));
    }

    fn principal(sid: SessionId) -> Principal {
        Principal {
            user: user(5, Role::User, true),
            session_id: Some(sid),
        }
    }

    #[tokio::test]
    async fn logout_ends_the_current_session() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        m.sessions
            .expect_end_session()
            .with(eq(UserId(5)), eq(sid), eq(m.now), always())
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        m.service()
            .logout(&principal(sid), &ClientInfo::default())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn ending_a_session_that_is_not_the_callers_is_not_found() {
        let mut m = Mocks::new();
        let other = SessionId::random();
        m.sessions
            .expect_end_session()
            .with(eq(UserId(5)), eq(other), eq(m.now), always())
            .returning(|_, _, _, _| Ok(false));
        let err = m
            .service()
            .end_session(
                &principal(SessionId::random()),
                other,
                &ClientInfo::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, EndSessionError::NotFound));
    }

    #[tokio::test]
    async fn list_sessions_asks_for_the_callers_live_sessions() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        m.sessions
            .expect_list_live_sessions()
            .with(eq(UserId(5)), eq(m.now), eq(100))
            .returning(move |_, _, _| Ok(vec![session(sid, 5)]));
        let sessions = m.service().list_sessions(&principal(sid)).await.unwrap();
        assert_eq!(sessions.len(), 1);
    }

    #[tokio::test]
    async fn change_password_checks_the_current_one_and_ends_the_other_sessions() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        m.hasher
            .expect_verify()
            .with(
                eq("old password"),
                eq(PasswordHash::new("hash-of-user-5".into())),
            )
            .times(1)
            .returning(|_, _| Ok(true));
        m.hasher
            .expect_hash()
            .times(1)
            .returning(|_| Ok(PasswordHash::new("new-hash".into())));
        let now = m.now;
        m.users
            .expect_apply()
            .withf(move |change| {
                change.user == UserId(5)
                    && change.at == now
                    && change.conditions
                        == [Condition::Current {
                            credential_version: 0,
                        }]
                    && change.edits
                        == [
                            Edit::SetPasswordHash(PasswordHash::new("new-hash".into())),
                            Edit::BumpCredentialVersion,
                            Edit::Touch,
                            Edit::EndSessions { keep: Some(sid) },
                        ]
            })
            .times(1)
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        m.service()
            .change_password(
                &principal(sid),
                "old password",
                Password::parse("new password").unwrap(),
                &ClientInfo::default(),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn change_password_with_a_wrong_current_password_changes_nothing() {
        let mut m = Mocks::new();
        m.hasher.expect_verify().returning(|_, _| Ok(false));
        m.hasher.expect_hash().never();
        m.users.expect_apply().never();
        let err = m
            .service()
            .change_password(
                &principal(SessionId::random()),
                "wrong",
                Password::parse("new password").unwrap(),
                &ClientInfo::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ChangePasswordError::WrongPassword));
    }

    /// A limiter that lets everything through and counts `bucket`s starting with `prefix` as
    /// `count`.
    fn limiter_counting(prefix: &'static str, count: u32) -> MockRateLimiter {
        let mut limiter = MockRateLimiter::new();
        limiter
            .expect_increment()
            .returning(move |bucket, _| Ok(if bucket.starts_with(prefix) { count } else { 1 }));
        limiter.expect_failures().returning(|_| Ok(None));
        limiter.expect_swap_failures().returning(|_, _, _| Ok(true));
        limiter.expect_record_failure().returning(|_, _| Ok(()));
        limiter.expect_clear_failures().returning(|_| Ok(()));
        limiter
    }

    #[tokio::test]
    async fn a_password_change_over_the_per_user_limit_is_refused_before_any_hash() {
        let mut m = Mocks::new();
        m.limiter = Some(limiter_counting("password_check:", 11));
        m.hasher.expect_verify().never();
        m.users.expect_apply().never();
        let err = m
            .service()
            .change_password(
                &principal(SessionId::random()),
                "guess",
                Password::parse("new password").unwrap(),
                &ClientInfo::new(None, Some("203.0.113.9".into())),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ChangePasswordError::Throttled(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_password_change_counts_in_the_failure_run_that_login_uses() {
        let mut m = Mocks::new();
        let run = subject_key(
            "failures",
            crate::domain::Email::parse("user5@example.com")
                .unwrap()
                .key(),
        );
        let mut limiter = MockRateLimiter::new();
        limiter.expect_increment().returning(|_, _| Ok(1));
        let key = run.clone();
        limiter
            .expect_failures()
            .withf(move |account| account == key)
            .times(1)
            .returning(|_| Ok(None));
        let key = run.clone();
        limiter
            .expect_swap_failures()
            .withf(move |account, _, _| account == key)
            .times(1)
            .returning(|_, _, _| Ok(true));
        limiter
            .expect_record_failure()
            .withf(move |account, _| *account == run)
            .times(1)
            .returning(|_, _| Ok(()));
        m.limiter = Some(limiter);
        m.hasher
            .expect_verify()
            .times(1)
            .returning(|_, _| Ok(false));
        let err = m
            .service()
            .change_password(
                &principal(SessionId::random()),
                "guess",
                Password::parse("new password").unwrap(),
                &ClientInfo::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, ChangePasswordError::WrongPassword));
    }

    #[tokio::test]
    async fn the_fifth_wrong_password_of_a_session_ends_it() {
        let sid = SessionId::random();
        for (wrong_so_far, ends) in [(4, false), (5, true)] {
            let mut m = Mocks::new();
            m.limiter = Some(limiter_counting("password_check_failures:", wrong_so_far));
            m.hasher.expect_verify().returning(|_, _| Ok(false));
            m.sessions
                .expect_end_session()
                .with(eq(UserId(5)), eq(sid), eq(m.now), always())
                .times(usize::from(ends))
                .returning(|_, _, _, _| Ok(true));
            let err = m
                .service()
                .change_password(
                    &principal(sid),
                    "guess",
                    Password::parse("new password").unwrap(),
                    &ClientInfo::default(),
                )
                .await
                .unwrap_err();
            assert!(matches!(err, ChangePasswordError::WrongPassword));
        }
    }

    #[tokio::test]
    async fn session_ends_and_password_changes_are_recorded_with_their_reason() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        m.sessions
            .expect_end_session()
            .withf(move |_, id, _, audit| {
                *id == sid
                    && audit.kind == crate::domain::AuditKind::SessionEnded
                    && audit.detail["reason"] == "logout"
            })
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        m.service()
            .logout(&principal(sid), &ClientInfo::default())
            .await
            .unwrap();

        let mut m = Mocks::new();
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        m.hasher
            .expect_hash()
            .returning(|_| Ok(PasswordHash::new("new".into())));
        m.users
            .expect_apply()
            .withf(|change| {
                matches!(change.audit.as_slice(), [audit]
                    if audit.kind == crate::domain::AuditKind::PasswordChanged
                        && audit.user_id == Some(UserId(5)))
            })
            .times(1)
            .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        m.service()
            .change_password(
                &principal(sid),
                "old password",
                Password::parse("new password").unwrap(),
                &ClientInfo::default(),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_reused_refresh_token_is_recorded_as_such() {
        let mut m = Mocks::new();
        let sid = SessionId::random();
        let mut rec = record(&m, sid);
        rec.spent_at = Some(m.now);
        expect_lookup(&mut m, rec);
        m.sessions
            .expect_end_session()
            .withf(|_, _, _, audit| audit.kind == crate::domain::AuditKind::SessionRefreshReused)
            .times(1)
            .returning(|_, _, _, _| Ok(true));
        let err = m
            .service()
            .refresh(PRESENTED, ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, RefreshError::Reused));
    }
}

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
        .sessions
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
            .sessions
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
        .sessions
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
        .sessions
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
        .sessions
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
            .sessions
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
        .sessions
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
        .sessions
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
        .sessions
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
    let sessions = m
        .service()
        .sessions
        .list_sessions(&principal(sid))
        .await
        .unwrap();
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
        .sessions
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
        .sessions
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
        .sessions
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
        .sessions
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
            .sessions
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
        .sessions
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
        .sessions
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
        .sessions
        .refresh(PRESENTED, ClientInfo::default())
        .await
        .unwrap_err();
    assert!(matches!(err, RefreshError::Reused));
}

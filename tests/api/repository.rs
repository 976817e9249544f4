//! The storage adapters against one contract: in memory, SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use portcullis::domain::mfa::{AuthMethod, FactorRemoval};
use portcullis::domain::ports::{
    CreateSessionError, CreateUserError, FailureRecord, RateLimiter, Rotation, SigningKeyStore,
};
use portcullis::domain::{
    AccountChange, Applied, AuditKind, ClientInfo, Condition, CookieHash, Edit, Email,
    LinkTokenHash, LinkTokenKind, MailJob, NewAuditEvent, NewLinkToken, NewRefreshToken,
    NewSession, NewSessionCookie, NewUser, OutboxDepth, PasswordHash, RefreshTokenHash, Refusal,
    Role, SessionId, SessionKey, User, UserChanges, UserId,
};
use portcullis::domain::{GeneratedKey, KeyAlgorithm, KeyChange, KeyMove, KeyState, SigningKey};
use portcullis::outbound::Store;
use portcullis::outbound::memory::{MemoryRateLimiter, MemorySigningKeyStore, MemoryStore};
use portcullis::outbound::sea_orm::{
    SeaOrmRateLimiter, SeaOrmSigningKeyStore, SeaOrmStore, migrate_up,
};

use crate::helpers::{Backend, TestDb};

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 27, 12, 0, 0).unwrap()
}

/// An audit event for the writes that record one.
pub(crate) fn event() -> NewAuditEvent {
    NewAuditEvent::new(AuditKind::UserUpdated, None, &ClientInfo::default(), t0())
}

/// The change an admin makes to user `id`, as the core builds it.
pub(crate) fn update(id: UserId, changes: UserChanges) -> AccountChange {
    AccountChange::update(id, t0(), changes).recording(event())
}

/// A password change of user `id` to `hash`, keeping session `keep`, as the core builds it.
pub(crate) fn new_password(id: UserId, hash: &str, keep: Option<SessionId>) -> AccountChange {
    AccountChange::of(id, t0() + TimeDelta::minutes(1))
        .new_password(PasswordHash::new(hash.into()), keep)
        .recording(event())
}

/// `change` applied by `repo`: what it did.
pub(crate) async fn apply(repo: &dyn Store, change: AccountChange) -> Applied {
    repo.apply(change).await.unwrap()
}

pub(crate) fn set_role(role: Role) -> UserChanges {
    UserChanges {
        role: Some(role),
        ..UserChanges::default()
    }
}

pub(crate) fn set_active(active: bool) -> UserChanges {
    UserChanges {
        is_active: Some(active),
        ..UserChanges::default()
    }
}

/// Runs `test` on the in-memory adapter, then on the database adapter over SQLite and (when
/// configured) PostgreSQL, each on a fresh, migrated database.
async fn on_every_adapter<P, F, Fut>(
    memory: Arc<P>,
    database: impl Fn(sea_orm::DatabaseConnection) -> Arc<P>,
    test: F,
) where
    P: ?Sized,
    F: Fn(Arc<P>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    test(memory).await;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(db) = TestDb::create(backend).await else {
            continue;
        };
        let conn = db.pool(5).await;
        migrate_up(&conn).await.unwrap();
        test(database(conn.clone())).await;
        conn.close().await.unwrap();
        db.drop_database().await;
    }
}

/// [`on_every_adapter`] for the stores: every storage port of one store.
pub(crate) async fn on_every_store<F, Fut>(test: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    on_every_adapter(
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        |conn| Arc::new(SeaOrmStore::new(conn, Duration::from_secs(5), 1)),
        test,
    )
    .await;
}

/// [`on_every_adapter`] for the rate limiters.
async fn on_every_limiter<F, Fut>(test: F)
where
    F: Fn(Arc<dyn RateLimiter>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    on_every_adapter(
        Arc::new(MemoryRateLimiter::new()) as Arc<dyn RateLimiter>,
        |conn| Arc::new(SeaOrmRateLimiter::new(conn, Duration::from_secs(5))),
        test,
    )
    .await;
}

pub(crate) async fn user(repo: &dyn Store, email: &str) -> User {
    repo.create_user(NewUser {
        email: Email::parse(email).unwrap(),
        full_name: None,
        role: Role::User,
        password_hash: PasswordHash::new(format!("hash-of-{email}")),
        created_at: t0(),
        send_verification: false,
        audit: event(),
    })
    .await
    .unwrap()
}

/// A session of `user` as read, opened at `at` (idle expiry one day later), with at most
/// `live_limit` live sessions.
pub(crate) fn new_session(
    user: &User,
    at: DateTime<Utc>,
    live_limit: u32,
) -> (NewSession, NewRefreshToken) {
    let id = SessionId::random();
    let refresh = NewRefreshToken::generate(id, at, at + TimeDelta::days(1));
    let session = NewSession {
        id,
        user_id: user.id,
        created_at: at,
        expires_at: at + TimeDelta::days(90),
        client: ClientInfo::new(Some("agent"), Some("192.0.2.1".into())),
        methods: vec![AuthMethod::Password],
        client_id: None,
        origin: None,
        credential_version: user.credential_version,
        live_limit,
        audit: event(),
    };
    (session, refresh)
}

/// Opens a session at `t0` (idle expiry one day later): its id and refresh token.
pub(crate) async fn session(repo: &dyn Store, user: &User) -> (SessionId, NewRefreshToken) {
    let (new, refresh) = new_session(user, t0(), 100);
    let id = new.id;
    repo.create_session(new, SessionKey::RefreshToken(refresh.clone()))
        .await
        .unwrap();
    (id, refresh)
}

#[tokio::test]
async fn users_are_unique_by_normalised_email_and_found_by_either_key() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "Alice@Example.com").await;
        assert_eq!(alice.email.as_str(), "Alice@Example.com");
        let duplicate = repo
            .create_user(NewUser {
                email: Email::parse("alice@example.COM").unwrap(),
                full_name: None,
                role: Role::User,
                password_hash: PasswordHash::new("h".into()),
                created_at: t0(),
                send_verification: false,
                audit: event(),
            })
            .await;
        assert!(matches!(duplicate, Err(CreateUserError::EmailTaken)));
        let by_email = repo
            .find_user_by_email(&Email::parse("ALICE@example.com").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_email, alice);
        assert_eq!(
            repo.find_user_by_id(alice.id).await.unwrap().unwrap(),
            alice
        );
        assert!(
            repo.find_user_by_id(UserId(424242))
                .await
                .unwrap()
                .is_none()
        );
        let promoted = apply(repo.as_ref(), update(alice.id, set_role(Role::Admin)))
            .await
            .user()
            .unwrap();
        assert_eq!(promoted.role, Role::Admin);
        assert_eq!(
            apply(repo.as_ref(), update(UserId(424242), set_role(Role::Admin))).await,
            Applied::Refused(Refusal::UnknownUser)
        );
        repo.ping().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_refresh_token_rotates_exactly_once() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let (sid, first) = session(repo.as_ref(), &alice).await;
        let (found, owner) = repo.find_session(sid).await.unwrap().unwrap();
        assert_eq!(owner.id, alice.id);
        assert_eq!(found.client.user_agent.as_deref(), Some("agent"));

        let record = repo.find_refresh_token(&first.hash).await.unwrap().unwrap();
        assert_eq!(record.session.id, sid);
        assert!(record.spent_at.is_none());

        let later = t0() + TimeDelta::hours(1);
        let next = NewRefreshToken::generate(sid, later, later + TimeDelta::days(1));
        let client = ClientInfo::new(Some("new-agent"), None);
        assert_eq!(
            repo.rotate_refresh_token(&first.hash, next.clone(), client.clone())
                .await
                .unwrap(),
            Rotation::Rotated
        );
        let again = NewRefreshToken::generate(sid, later, later + TimeDelta::days(1));
        assert_eq!(
            repo.rotate_refresh_token(&first.hash, again.clone(), client)
                .await
                .unwrap(),
            Rotation::AlreadySpent
        );
        assert!(
            repo.find_refresh_token(&again.hash)
                .await
                .unwrap()
                .is_none()
        );

        let spent = repo.find_refresh_token(&first.hash).await.unwrap().unwrap();
        assert!(spent.spent_at.is_some());
        let current = repo.find_refresh_token(&next.hash).await.unwrap().unwrap();
        assert!(current.spent_at.is_none());
        assert_eq!(current.session.last_used_at, later);
        assert_eq!(current.session.idle_expires_at, next.expires_at);
        assert_eq!(
            current.session.client.user_agent.as_deref(),
            Some("new-agent")
        );
        assert!(
            repo.find_refresh_token(&RefreshTokenHash::of("unknown"))
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}

#[tokio::test]
async fn only_the_owner_ends_a_session_and_ended_ones_are_not_listed() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let mallory = user(repo.as_ref(), "mallory@example.com").await;
        let (a1, _) = session(repo.as_ref(), &alice).await;
        let (a2, _) = session(repo.as_ref(), &alice).await;
        let now = t0() + TimeDelta::minutes(1);
        assert_eq!(
            repo.list_live_sessions(alice.id, now, 100)
                .await
                .unwrap()
                .len(),
            2
        );
        assert!(
            !repo
                .end_session(mallory.id, a1, now, event())
                .await
                .unwrap()
        );
        assert!(repo.end_session(alice.id, a1, now, event()).await.unwrap());
        assert!(!repo.end_session(alice.id, a1, now, event()).await.unwrap());
        let live = repo.list_live_sessions(alice.id, now, 100).await.unwrap();
        assert_eq!(live.iter().map(|s| s.id).collect::<Vec<_>>(), [a2]);
        let (ended, _) = repo.find_session(a1).await.unwrap().unwrap();
        assert_eq!(ended.ended_at, Some(now));
        // Past the idle expiry nothing is live.
        let idle = t0() + TimeDelta::days(2);
        assert!(
            repo.list_live_sessions(alice.id, idle, 100)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn a_password_change_keeps_one_session_and_deactivation_ends_all() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let (keep, _) = session(repo.as_ref(), &alice).await;
        let (other, _) = session(repo.as_ref(), &alice).await;
        let now = t0() + TimeDelta::minutes(1);
        apply(repo.as_ref(), new_password(alice.id, "new", Some(keep))).await;
        let stored = repo.find_user_by_id(alice.id).await.unwrap().unwrap();
        assert_eq!(stored.password_hash, PasswordHash::new("new".into()));
        let live = repo.list_live_sessions(alice.id, now, 100).await.unwrap();
        assert_eq!(live.iter().map(|s| s.id).collect::<Vec<_>>(), [keep]);
        assert!(
            repo.find_session(other)
                .await
                .unwrap()
                .unwrap()
                .0
                .ended_at
                .is_some()
        );

        let off = apply(repo.as_ref(), update(alice.id, set_active(false)))
            .await
            .user()
            .unwrap();
        assert!(!off.is_active);
        assert!(
            repo.list_live_sessions(alice.id, now, 100)
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            apply(repo.as_ref(), update(UserId(424242), set_active(false))).await,
            Applied::Refused(Refusal::UnknownUser)
        );
    })
    .await;
}

#[tokio::test]
async fn the_purge_deletes_dead_sessions_and_expired_tokens_only() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let (live, live_token) = session(repo.as_ref(), &alice).await;
        let (ended, ended_token) = session(repo.as_ref(), &alice).await;
        let now = t0() + TimeDelta::minutes(1);
        repo.end_session(alice.id, ended, now, event())
            .await
            .unwrap();
        assert_eq!(
            repo.purge_expired(now, t0() - TimeDelta::days(1000))
                .await
                .unwrap(),
            1
        );
        assert!(repo.find_session(ended).await.unwrap().is_none());
        assert!(
            repo.find_refresh_token(&ended_token.hash)
                .await
                .unwrap()
                .is_none()
        );
        assert!(repo.find_session(live).await.unwrap().is_some());
        assert!(
            repo.find_refresh_token(&live_token.hash)
                .await
                .unwrap()
                .is_some()
        );
        // A day later the idle session is dead too.
        assert_eq!(
            repo.purge_expired(t0() + TimeDelta::days(2), t0() - TimeDelta::days(1000))
                .await
                .unwrap(),
            1
        );
        assert!(repo.find_session(live).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_count_every_concurrent_increment_once() {
    on_every_limiter(|limiter| async move {
        let ends = t0() + TimeDelta::minutes(1);
        let counts =
            futures::future::join_all((0..20).map(|_| limiter.increment("bucket-a", ends))).await;
        let mut counts: Vec<u32> = counts.into_iter().map(Result::unwrap).collect();
        counts.sort_unstable();
        assert_eq!(counts, (1..=20).collect::<Vec<u32>>());
        assert_eq!(limiter.increment("bucket-b", ends).await.unwrap(), 1);
        // Expired counters go; live ones stay.
        limiter.purge_expired(ends, t0()).await.unwrap();
        assert_eq!(
            limiter
                .increment("bucket-a", ends + TimeDelta::minutes(1))
                .await
                .unwrap(),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn failure_runs_swap_only_from_what_was_seen_date_failures_and_clear() {
    on_every_limiter(|limiter| async move {
        assert!(limiter.failures("acct").await.unwrap().is_none());
        let one = FailureRecord {
            count: 1,
            last_at: t0(),
        };
        assert!(limiter.swap_failures("acct", None, one).await.unwrap());
        // A swap from a stale view changes nothing.
        assert!(!limiter.swap_failures("acct", None, one).await.unwrap());
        let stored = limiter.failures("acct").await.unwrap().unwrap();
        assert_eq!(stored, one);
        let two = FailureRecord {
            count: 2,
            last_at: t0() + TimeDelta::seconds(5),
        };
        assert!(
            limiter
                .swap_failures("acct", Some(stored), two)
                .await
                .unwrap()
        );
        assert!(!limiter.swap_failures("acct", Some(one), two).await.unwrap());
        // The failure is dated when its hash ends; the count stays as admitted.
        let ended = t0() + TimeDelta::seconds(6);
        limiter.record_failure("acct", ended).await.unwrap();
        assert_eq!(
            limiter.failures("acct").await.unwrap(),
            Some(FailureRecord {
                count: 2,
                last_at: ended
            })
        );
        // An attempt that never hashed is given back.
        limiter.release_attempt("acct").await.unwrap();
        assert_eq!(limiter.failures("acct").await.unwrap().unwrap().count, 1);
        limiter.clear_failures("acct").await.unwrap();
        assert!(limiter.failures("acct").await.unwrap().is_none());
        // A failure whose run was cleared meanwhile starts a run of one.
        limiter.record_failure("acct", ended).await.unwrap();
        assert_eq!(limiter.failures("acct").await.unwrap().unwrap().count, 1);
        limiter.release_attempt("none").await.unwrap();
        assert!(limiter.failures("none").await.unwrap().is_none());

        limiter.swap_failures("old", None, one).await.unwrap();
        let much_later = t0() + TimeDelta::days(3);
        limiter
            .purge_expired(much_later, much_later - TimeDelta::days(1))
            .await
            .unwrap();
        assert!(limiter.failures("old").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_swaps_from_one_view_exactly_one_wins() {
    on_every_limiter(|limiter| async move {
        for seen in [
            None,
            Some(FailureRecord {
                count: 3,
                last_at: t0(),
            }),
        ] {
            limiter.clear_failures("race").await.unwrap();
            if let Some(run) = seen {
                assert!(limiter.swap_failures("race", None, run).await.unwrap());
            }
            let next = FailureRecord {
                count: seen.map_or(1, |r| r.count + 1),
                last_at: t0() + TimeDelta::seconds(1),
            };
            let swaps = (0..20).map(|_| limiter.swap_failures("race", seen, next));
            let won = futures::future::join_all(swaps)
                .await
                .into_iter()
                .map(Result::unwrap)
                .filter(|won| *won)
                .count();
            assert_eq!(won, 1, "from {seen:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_session_opens_only_on_the_credentials_the_login_read() {
    on_every_store(|repo| async move {
        let now = t0() + TimeDelta::minutes(1);
        // A password change between the read and the insert: refused, nothing stored.
        let alice = user(repo.as_ref(), "alice@example.com").await;
        apply(repo.as_ref(), new_password(alice.id, "new", None)).await;
        let (stale, refresh) = new_session(&alice, now, 100);
        let (sid, hash) = (stale.id, refresh.hash.clone());
        assert!(matches!(
            repo.create_session(stale, SessionKey::RefreshToken(refresh))
                .await,
            Err(CreateSessionError::Stale)
        ));
        assert!(repo.find_session(sid).await.unwrap().is_none());
        assert!(repo.find_refresh_token(&hash).await.unwrap().is_none());
        // The user as read now opens a session.
        let current = repo.find_user_by_id(alice.id).await.unwrap().unwrap();
        assert_ne!(current.credential_version, alice.credential_version);
        let (fresh, refresh) = new_session(&current, now, 100);
        repo.create_session(fresh, SessionKey::RefreshToken(refresh))
            .await
            .unwrap();

        // A deactivation, even one undone since, voids what was read before it.
        let bob = user(repo.as_ref(), "bob@example.com").await;
        apply(repo.as_ref(), update(bob.id, set_active(false))).await;
        let (inactive, refresh) = new_session(&bob, now, 100);
        assert!(matches!(
            repo.create_session(inactive, SessionKey::RefreshToken(refresh))
                .await,
            Err(CreateSessionError::Stale)
        ));
        let again = apply(repo.as_ref(), update(bob.id, set_active(true)))
            .await
            .user()
            .unwrap();
        let (before, refresh) = new_session(&bob, now, 100);
        assert!(matches!(
            repo.create_session(before, SessionKey::RefreshToken(refresh))
                .await,
            Err(CreateSessionError::Stale)
        ));
        let (after, refresh) = new_session(&again, now, 100);
        repo.create_session(after, SessionKey::RefreshToken(refresh))
            .await
            .unwrap();
        assert!(
            repo.list_live_sessions(bob.id, now, 100)
                .await
                .unwrap()
                .len()
                == 1
        );
    })
    .await;
}

#[tokio::test]
async fn a_cookie_session_is_found_by_its_cookie_only_and_touched_only_while_live() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let (new, _) = new_session(&alice, t0(), 100);
        let sid = new.id;
        let cookie = NewSessionCookie::generate(t0() + TimeDelta::hours(2));
        let stored = repo
            .create_session(new, SessionKey::Cookie(cookie.clone()))
            .await
            .unwrap();
        assert_eq!(stored.idle_expires_at, t0() + TimeDelta::hours(2));
        let (found, owner) = repo
            .find_cookie_session(&cookie.hash)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.id, owner.id), (sid, alice.id));
        // The cookie is no refresh token, and nothing else names its session.
        let as_refresh = RefreshTokenHash(cookie.hash.0.clone());
        assert!(
            repo.find_refresh_token(&as_refresh)
                .await
                .unwrap()
                .is_none()
        );
        let other = CookieHash::of("not the cookie");
        assert!(repo.find_cookie_session(&other).await.unwrap().is_none());
        // It is listed with the API's sessions.
        let live = repo.list_live_sessions(alice.id, t0(), 100).await.unwrap();
        assert_eq!(live.iter().map(|s| s.id).collect::<Vec<_>>(), [sid]);

        let later = t0() + TimeDelta::hours(1);
        repo.touch_session(sid, later, later + TimeDelta::hours(2))
            .await
            .unwrap();
        let (touched, _) = repo.find_session(sid).await.unwrap().unwrap();
        assert_eq!(touched.last_used_at, later);
        assert_eq!(touched.idle_expires_at, later + TimeDelta::hours(2));

        assert!(
            repo.end_session(alice.id, sid, later, event())
                .await
                .unwrap()
        );
        let end = later + TimeDelta::hours(1);
        repo.touch_session(sid, end, end + TimeDelta::days(1))
            .await
            .unwrap();
        let (ended, _) = repo
            .find_cookie_session(&cookie.hash)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ended.ended_at, Some(later));
        assert_eq!(ended.last_used_at, later, "an ended session is not touched");

        repo.purge_expired(end, t0()).await.unwrap();
        assert!(
            repo.find_cookie_session(&cookie.hash)
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}

#[tokio::test]
async fn a_rotation_never_revives_an_ended_session() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let (sid, first) = session(repo.as_ref(), &alice).await;
        let now = t0() + TimeDelta::minutes(1);
        // The password change lands between the refresh's read and its rotation.
        apply(repo.as_ref(), new_password(alice.id, "new", None)).await;
        let next = NewRefreshToken::generate(sid, now, now + TimeDelta::days(1));
        assert_eq!(
            repo.rotate_refresh_token(&first.hash, next.clone(), ClientInfo::default())
                .await
                .unwrap(),
            Rotation::SessionEnded
        );
        assert!(repo.find_refresh_token(&next.hash).await.unwrap().is_none());
        let unspent = repo.find_refresh_token(&first.hash).await.unwrap().unwrap();
        assert!(unspent.spent_at.is_none());
    })
    .await;
}

#[tokio::test]
async fn a_new_session_beyond_the_limit_ends_the_least_recently_used() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let mut opened = Vec::new();
        for minute in 0..3 {
            let (new, refresh) = new_session(&alice, t0() + TimeDelta::minutes(minute), 3);
            opened.push((new.id, refresh.clone()));
            repo.create_session(new, SessionKey::RefreshToken(refresh))
                .await
                .unwrap();
        }
        // The oldest one is used again, so the second is now the least recently used.
        let used = t0() + TimeDelta::minutes(5);
        let next = NewRefreshToken::generate(opened[0].0, used, used + TimeDelta::days(1));
        repo.rotate_refresh_token(&opened[0].1.hash, next, ClientInfo::default())
            .await
            .unwrap();
        let later = t0() + TimeDelta::minutes(10);
        let (fourth, refresh) = new_session(&alice, later, 3);
        let fourth_id = fourth.id;
        repo.create_session(fourth, SessionKey::RefreshToken(refresh))
            .await
            .unwrap();
        let mut live: Vec<SessionId> = repo
            .list_live_sessions(alice.id, later, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        live.sort_by_key(|id| id.0);
        let mut expected = vec![opened[0].0, opened[2].0, fourth_id];
        expected.sort_by_key(|id| id.0);
        assert_eq!(live, expected);
        assert_eq!(
            repo.find_session(opened[1].0)
                .await
                .unwrap()
                .unwrap()
                .0
                .ended_at,
            Some(later)
        );
        // The list is bounded even when more are live (a limit lowered since).
        assert_eq!(
            repo.list_live_sessions(alice.id, later, 2)
                .await
                .unwrap()
                .len(),
            2
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_session_lookups_each_get_their_own_answer() {
    on_every_store(|repo| async move {
        let mut expected = Vec::new();
        for n in 0..12 {
            let owner = user(repo.as_ref(), &format!("owner{n}@example.com")).await;
            let (sid, _) = session(repo.as_ref(), &owner).await;
            expected.push((sid, Some(owner.id)));
        }
        expected.push((SessionId::random(), None));
        // Many lookups at once, several for the same session: each is answered for its id.
        let lookups = expected
            .iter()
            .cycle()
            .take(60)
            .map(|(sid, _)| repo.find_session(*sid));
        let answers = futures::future::join_all(lookups).await;
        for ((sid, owner), answer) in expected.iter().cycle().zip(answers) {
            let found = answer.unwrap().map(|(session, user)| {
                assert_eq!(session.id, *sid);
                user.id
            });
            assert_eq!(found, *owner, "session {sid}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_hands_each_due_job_to_one_claimer_and_keeps_what_failed() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        for _ in 0..10 {
            repo.enqueue_mail(MailJob::Verification { user_id: alice.id }, t0())
                .await
                .unwrap();
        }
        let lease = TimeDelta::minutes(5);
        // Twenty workers at once, one job each at most: every job goes to exactly one.
        let claims = (0..20).map(|_| repo.claim_mail(t0(), lease, 1));
        let mut ids: Vec<i64> = futures::future::join_all(claims)
            .await
            .into_iter()
            .flat_map(Result::unwrap)
            .map(|mail| mail.id)
            .collect();
        ids.sort_unstable();
        let before = ids.len();
        ids.dedup();
        assert_eq!((before, ids.len()), (10, 10));
        // Claimed jobs are nobody else's until the lease ends.
        assert!(repo.claim_mail(t0(), lease, 100).await.unwrap().is_empty());
        repo.finish_mail(ids[0], t0()).await.unwrap();
        repo.retry_mail(ids[1], 1, t0() + TimeDelta::hours(1), "connection refused")
            .await
            .unwrap();
        repo.fail_mail(ids[2], 8, "550 no such user").await.unwrap();
        assert_eq!(
            repo.mail_depth().await.unwrap(),
            OutboxDepth {
                pending: 8,
                failed: 1
            }
        );
        // After the lease, the unsettled jobs are due again; the retried one when its time comes.
        let later = t0() + lease + TimeDelta::seconds(1);
        let again = repo.claim_mail(later, lease, 100).await.unwrap();
        assert_eq!(again.len(), 7);
        assert!(
            again
                .iter()
                .all(|m| m.job == MailJob::Verification { user_id: alice.id })
        );
        for mail in &again {
            repo.finish_mail(mail.id, later).await.unwrap();
        }
        let retried = repo
            .claim_mail(t0() + TimeDelta::hours(2), lease, 100)
            .await
            .unwrap();
        assert_eq!(
            retried
                .iter()
                .map(|m| (m.id, m.attempts))
                .collect::<Vec<_>>(),
            [(ids[1], 1)]
        );
        // A week on, what was delivered and what was given up are purged; nothing pending is.
        repo.finish_mail(ids[1], t0() + TimeDelta::hours(2))
            .await
            .unwrap();
        repo.enqueue_mail(
            MailJob::Verification { user_id: alice.id },
            t0() + TimeDelta::days(8),
        )
        .await
        .unwrap();
        repo.purge_expired(t0() + TimeDelta::days(8), t0() - TimeDelta::days(1000))
            .await
            .unwrap();
        assert_eq!(
            repo.mail_depth().await.unwrap(),
            OutboxDepth {
                pending: 1,
                failed: 0
            }
        );
    })
    .await;
}

#[tokio::test]
async fn a_reset_token_works_once_and_spends_the_others() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let (session_id, _) = session(repo.as_ref(), &alice).await;
        let token = |kind| NewLinkToken::generate(kind, &alice, t0(), TimeDelta::minutes(30));
        let first = token(LinkTokenKind::PasswordReset);
        let second = token(LinkTokenKind::PasswordReset);
        for t in [&first, &second] {
            repo.store_email_token(t.clone(), None).await.unwrap();
        }
        let found = repo.find_email_token(&first.hash).await.unwrap().unwrap();
        assert_eq!(found.user.id, alice.id);
        assert!(found.usable_for(LinkTokenKind::PasswordReset, t0()));
        let now = t0() + TimeDelta::minutes(1);
        // As the core builds a reset: on the user as read, spending the token.
        let reset = |token: LinkTokenHash, hash: &'static str, user: User| {
            let repo = Arc::clone(&repo);
            async move {
                let change = AccountChange::of(user.id, now)
                    .when(Condition::Current {
                        credential_version: user.credential_version,
                    })
                    .when(Condition::SpendsToken(token))
                    .when(Condition::UnverifiedFactorsAre(FactorRemoval::default()))
                    .new_password(PasswordHash::new(hash.into()), None)
                    .then(Edit::SetEmailVerified(true))
                    .then(Edit::SpendTokens(vec![LinkTokenKind::PasswordReset]))
                    .recording(event());
                apply(repo.as_ref(), change).await
            }
        };
        assert!(matches!(
            reset(first.hash.clone(), "new", alice.clone()).await,
            Applied::Done(_)
        ));
        let after = repo.find_user_by_id(alice.id).await.unwrap().unwrap();
        assert_eq!(
            reset(first.hash.clone(), "again", after.clone()).await,
            Applied::Refused(Refusal::TokenSpent)
        );
        assert_eq!(after.password_hash, PasswordHash::new("new".into()));
        assert!(after.email_verified);
        assert_ne!(after.credential_version, alice.credential_version);
        assert!(
            repo.find_session(session_id)
                .await
                .unwrap()
                .unwrap()
                .0
                .ended_at
                .is_some()
        );
        let other = repo.find_email_token(&second.hash).await.unwrap().unwrap();
        assert!(other.spent_at.is_some(), "the other reset token is spent");
        // The user as read before the reset is stale now: a reset with it changes nothing.
        let third = token(LinkTokenKind::PasswordReset);
        repo.store_email_token(third.clone(), None).await.unwrap();
        assert_eq!(
            reset(third.hash.clone(), "x", alice.clone()).await,
            Applied::Refused(Refusal::NotCurrent)
        );
        let unchanged = repo.find_email_token(&third.hash).await.unwrap().unwrap();
        assert!(
            unchanged.spent_at.is_none(),
            "a refused change spends nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn a_verification_proves_only_the_address_it_was_sent_to() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let token = NewLinkToken::generate(
            LinkTokenKind::Verification,
            &alice,
            t0(),
            TimeDelta::hours(1),
        );
        repo.store_email_token(token.clone(), None).await.unwrap();
        let verify = |address: &str| {
            AccountChange::of(alice.id, t0())
                .when(Condition::AddressIs(address.into()))
                .when(Condition::SpendsToken(token.hash.clone()))
                .then(Edit::SetEmailVerified(true))
                .recording(event())
        };
        assert_eq!(
            apply(repo.as_ref(), verify("elsewhere@example.com")).await,
            Applied::Refused(Refusal::AddressChanged)
        );
        let verified = apply(repo.as_ref(), verify("alice@example.com"))
            .await
            .user()
            .unwrap();
        assert!(verified.email_verified);
        assert_eq!(
            apply(repo.as_ref(), verify("alice@example.com")).await,
            Applied::Refused(Refusal::TokenSpent)
        );
    })
    .await;
}

#[tokio::test]
async fn an_email_change_moves_the_account_unless_the_address_was_taken() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let (keep, _) = session(repo.as_ref(), &alice).await;
        let (other, _) = session(repo.as_ref(), &alice).await;
        let change = |to: &str| {
            let mut token = NewLinkToken::generate(
                LinkTokenKind::EmailChange,
                &alice,
                t0(),
                TimeDelta::hours(1),
            );
            token.new_email = Some(Email::parse(to).unwrap());
            token.keep_session = Some(keep);
            token
        };
        user(repo.as_ref(), "taken@example.com").await;
        let taken = change("TAKEN@example.com");
        repo.store_email_token(taken.clone(), None).await.unwrap();
        let now = t0() + TimeDelta::minutes(1);
        let move_to = |token: &NewLinkToken| {
            AccountChange::of(alice.id, now)
                .when(Condition::Current {
                    credential_version: alice.credential_version,
                })
                .when(Condition::SpendsToken(token.hash.clone()))
                .then(Edit::SetEmail(token.new_email.clone().unwrap()))
                .then(Edit::SetEmailVerified(true))
                .then(Edit::BumpCredentialVersion)
                .then(Edit::EndSessions { keep: Some(keep) })
                .then(Edit::SpendTokens(vec![LinkTokenKind::EmailChange]))
                .recording(event())
        };
        assert_eq!(
            apply(repo.as_ref(), move_to(&taken)).await,
            Applied::Refused(Refusal::AddressTaken)
        );
        let unchanged = repo.find_user_by_id(alice.id).await.unwrap().unwrap();
        assert_eq!(unchanged.email.as_str(), "alice@example.com");
        assert!(
            repo.find_email_token(&taken.hash)
                .await
                .unwrap()
                .unwrap()
                .spent_at
                .is_none()
        );

        let free = change("alice.new@example.com");
        repo.store_email_token(free.clone(), None).await.unwrap();
        let moved = apply(repo.as_ref(), move_to(&free)).await.user().unwrap();
        assert_eq!(moved.email.as_str(), "alice.new@example.com");
        assert!(moved.email_verified);
        assert!(
            repo.find_user_by_email(&Email::parse("alice@example.com").unwrap())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            repo.find_session(keep)
                .await
                .unwrap()
                .unwrap()
                .0
                .ended_at
                .is_none()
        );
        assert!(
            repo.find_session(other)
                .await
                .unwrap()
                .unwrap()
                .0
                .ended_at
                .is_some()
        );
        // The old address is free again.
        user(repo.as_ref(), "alice@example.com").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_demotions_deactivations_and_deletions_leave_an_admin() {
    on_every_store(|repo| async move {
        let mut survivor: Option<UserId> = None;
        for round in 0..8 {
            // Exactly two active admins: a and b (the last round's survivor steps down).
            let a = user(repo.as_ref(), &format!("a{round}@example.com")).await;
            let b = user(repo.as_ref(), &format!("b{round}@example.com")).await;
            apply(repo.as_ref(), update(a.id, set_role(Role::Admin))).await;
            if let Some(previous) = survivor {
                apply(repo.as_ref(), update(previous, set_role(Role::User))).await;
            }
            apply(repo.as_ref(), update(b.id, set_role(Role::Admin))).await;
            // Every way to remove the two, all at once, in an order that varies by round.
            let mut attempts = vec![
                (a.id, Some(set_role(Role::User))),
                (b.id, Some(set_role(Role::User))),
                (a.id, Some(set_active(false))),
                (b.id, None),
            ];
            attempts.rotate_left(round % 4);
            let changes = attempts.into_iter().map(|(id, changes)| {
                let repo = Arc::clone(&repo);
                let change = changes.map_or_else(
                    || {
                        AccountChange::of(id, t0())
                            .when(Condition::LeavesAnActiveAdmin)
                            .then(Edit::Delete)
                    },
                    |changes| update(id, changes),
                );
                async move { repo.apply(change).await.unwrap() }
            });
            for outcome in futures::future::join_all(changes).await {
                assert!(
                    // A change of a user deleted meanwhile finds nobody.
                    matches!(
                        outcome,
                        Applied::Done(_)
                            | Applied::Deleted
                            | Applied::Refused(Refusal::LastAdmin | Refusal::UnknownUser)
                    ),
                    "{outcome:?}"
                );
            }
            let left = repo
                .list_users(&portcullis::domain::UserQuery {
                    role: Some(Role::Admin),
                    is_active: Some(true),
                    limit: 100,
                    ..Default::default()
                })
                .await
                .unwrap();
            assert_eq!(left.len(), 1, "round {round}: {left:?}");
            survivor = Some(left[0].id);
        }
    })
    .await;
}

fn signing_key(kid: &str, state: KeyState, at: DateTime<Utc>) -> SigningKey {
    let generated = GeneratedKey {
        kid: kid.to_owned(),
        public_jwk: format!("{{\"kid\":\"{kid}\"}}"),
        sealed_private: vec![1, 2, 3, kid.len() as u8],
    };
    SigningKey::new(generated, KeyAlgorithm::EdDsa, state, at, at)
}

fn insert(key: SigningKey) -> KeyChange {
    KeyChange {
        moves: Vec::new(),
        insert: Some(key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_changes_are_conditional_all_or_nothing_and_one_racer_wins() {
    on_every_adapter(
        Arc::new(MemorySigningKeyStore::new()) as Arc<dyn SigningKeyStore>,
        |conn| Arc::new(SeaOrmSigningKeyStore::new(conn, Duration::from_secs(5))),
        |store| async move {
            let a = signing_key("a", KeyState::Current, t0());
            assert!(store.apply_key_change(&insert(a.clone())).await.unwrap());
            assert_eq!(store.list_keys().await.unwrap(), std::slice::from_ref(&a));
            // A second current key is refused, and nothing changes.
            let rival = signing_key("rival", KeyState::Current, t0());
            assert!(!store.apply_key_change(&insert(rival)).await.unwrap());

            // Ten instances start the same rotation at once: exactly one next key is made.
            let racers = (0..10).map(|i| {
                let store = Arc::clone(&store);
                let next =
                    signing_key(&format!("n{i}"), KeyState::Next, t0() + TimeDelta::hours(1));
                async move { store.apply_key_change(&insert(next)).await.unwrap() }
            });
            let won = futures::future::join_all(racers).await;
            assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
            let keys = store.list_keys().await.unwrap();
            assert_eq!(keys.len(), 2);
            let next = keys
                .iter()
                .find(|k| k.state == KeyState::Next)
                .unwrap()
                .clone();
            assert_eq!(
                next.sealed_private.len(),
                4,
                "sealed bytes kept as they are"
            );

            // The promotion, raced: one instance makes it, the other's moves find nothing.
            let at = t0() + TimeDelta::hours(2);
            let promotion = KeyChange {
                moves: vec![
                    KeyMove::demote(&a, at, TimeDelta::minutes(16)),
                    KeyMove::promote(&next, at),
                ],
                insert: None,
            };
            let (x, y) = tokio::join!(
                store.apply_key_change(&promotion),
                store.apply_key_change(&promotion)
            );
            assert_eq!([x.unwrap(), y.unwrap()].iter().filter(|w| **w).count(), 1);
            let keys = store.list_keys().await.unwrap();
            let old = keys.iter().find(|k| k.kid == "a").unwrap();
            assert_eq!(old.state, KeyState::Previous);
            assert_eq!(old.retires_at, Some(at + TimeDelta::minutes(16)));
            assert_eq!(
                keys.iter().find(|k| k.kid == next.kid).unwrap().state,
                KeyState::Current
            );

            // A change whose second move fails leaves the first undone too.
            let half = KeyChange {
                moves: vec![KeyMove::retire(old, at), KeyMove::promote(&next, at)],
                insert: None,
            };
            assert!(!store.apply_key_change(&half).await.unwrap());
            let keys = store.list_keys().await.unwrap();
            assert_eq!(
                keys.iter().find(|k| k.kid == "a").unwrap().state,
                KeyState::Previous
            );
        },
    )
    .await;
}

/// `login.failed` of `user` (or of nobody) from `ip`, at `at`.
fn failure(user: Option<UserId>, ip: &str, at: DateTime<Utc>) -> NewAuditEvent {
    NewAuditEvent::new(
        AuditKind::LoginFailed,
        user,
        &ClientInfo::new(Some("curl/8"), Some(ip.into())),
        at,
    )
    .failed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_fold_by_kind_address_and_account_within_the_window() {
    on_every_store(|repo| async move {
        let alice = user(repo.as_ref(), "alice@example.com").await;
        let window = TimeDelta::seconds(60);
        let fold = |event: NewAuditEvent| {
            let repo = Arc::clone(&repo);
            async move {
                let since = event.at - window;
                repo.record_folded(event, since).await.unwrap();
            }
        };
        // Five for nobody and three for Alice from one address, one from another address.
        for n in 0..5 {
            fold(failure(None, "203.0.113.1", t0() + TimeDelta::seconds(n))).await;
        }
        for n in 0..3 {
            fold(failure(
                Some(alice.id),
                "203.0.113.1",
                t0() + TimeDelta::seconds(n),
            ))
            .await;
        }
        fold(failure(None, "203.0.113.2", t0())).await;
        // Twenty at once into one event: none is lost.
        let at_once = (0..20).map(|_| fold(failure(None, "203.0.113.3", t0())));
        futures::future::join_all(at_once).await;
        // After the window a new event starts.
        fold(failure(None, "203.0.113.1", t0() + TimeDelta::seconds(120))).await;
        let trail = repo
            .list_audit(&portcullis::domain::AuditQuery {
                kind: Some(AuditKind::LoginFailed),
                limit: 100,
                ..portcullis::domain::AuditQuery::default()
            })
            .await
            .unwrap();
        let mut counts: Vec<(Option<String>, Option<i64>, u64)> = trail
            .iter()
            .map(|e| {
                let count = e.event.detail["count"].parse().unwrap();
                (
                    e.event.client.ip.clone(),
                    e.event.user_id.map(|u| u.0),
                    count,
                )
            })
            .collect();
        counts.sort();
        let mut expected = vec![
            (Some("203.0.113.1".to_owned()), None, 5),
            (Some("203.0.113.1".to_owned()), None, 1),
            (Some("203.0.113.1".to_owned()), Some(alice.id.0), 3),
            (Some("203.0.113.2".to_owned()), None, 1),
        ];
        let concurrent: u64 = counts
            .iter()
            .filter(|(ip, ..)| ip.as_deref() == Some("203.0.113.3"))
            .map(|(.., count)| count)
            .sum();
        assert_eq!(concurrent, 20, "{counts:?}");
        counts.retain(|(ip, ..)| ip.as_deref() != Some("203.0.113.3"));
        expected.sort();
        assert_eq!(counts, expected);
    })
    .await;
}

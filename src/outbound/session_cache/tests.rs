use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use mockall::predicate::eq;

use super::*;
use crate::domain::ports::{
    MockSessionRepository, MockUserRepository, SessionRepository, UserRepository,
};
use crate::domain::service::test_support::{session as stored_session, user};
use crate::domain::{AuditKind, NewAuditEvent, NewSession, Role, SessionKey};

const LIMITS: CacheLimits = CacheLimits {
    max_entries: 1000,
    max_bytes: 1 << 20,
    max_age: Duration::from_secs(300),
};

/// A session of `user_id` live for the next `idle` (its idle end), on the real clock: the
/// cache reads the real clock.
fn live(user_id: i64, idle: TimeDelta) -> Session {
    let mut session = stored_session(SessionId::random(), user_id);
    let now = Utc::now();
    session.created_at = now;
    session.last_used_at = now;
    session.expires_at = now + TimeDelta::days(90);
    session.idle_expires_at = now + idle;
    session
}

fn day_long(user_id: i64) -> (Session, User) {
    (
        live(user_id, TimeDelta::days(1)),
        user(user_id, Role::User, true),
    )
}

fn cache_with(limits: CacheLimits) -> SessionCache {
    SessionCache::new(limits, true)
}

/// Looks `session` up, filling the cache on a miss as the decorator does; says whether it hit.
fn check(cache: &SessionCache, session: &Session, user: &User) -> bool {
    match cache.lookup(session.id) {
        Lookup::Hit(found) => {
            assert_eq!((&found.0, &found.1), (session, user));
            true
        }
        Lookup::Miss(ticket) => {
            cache.fill(ticket, session, user);
            false
        }
        Lookup::Bypass => false,
    }
}

#[test]
fn a_filled_check_is_answered_from_memory_and_counted() {
    let cache = cache_with(LIMITS);
    let (session, user) = day_long(1);
    assert!(!check(&cache, &session, &user));
    assert!(check(&cache, &session, &user));
    assert!(check(&cache, &session, &user));
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 1));
    assert!(stats.bytes > 0);
}

#[test]
fn an_answer_read_before_an_invalidation_that_concerns_it_is_not_stored() {
    let (session, owner) = day_long(1);
    let unrelated = [
        Invalidation::User(UserId(2)),
        Invalidation::Session(SessionId::random()),
    ];
    let concerning = [
        Invalidation::User(UserId(1)),
        Invalidation::Session(session.id),
        Invalidation::Everything,
    ];
    for (what, stored) in unrelated
        .iter()
        .map(|what| (*what, true))
        .chain(concerning.iter().map(|what| (*what, false)))
    {
        let cache = cache_with(LIMITS);
        let Lookup::Miss(ticket) = cache.lookup(session.id) else {
            panic!("an empty cache misses");
        };
        // A write commits (and invalidates) while the lookup's read is in flight: its answer
        // may be from before the write.
        cache.invalidate(Invalidation::User(UserId(3)));
        cache.invalidate(what);
        cache.fill(ticket, &session, &owner);
        assert_eq!(check(&cache, &session, &owner), stored, "{what:?}");
    }

    // More invalidations than are remembered: the ticket is void, whatever they were.
    let cache = cache_with(LIMITS);
    let Lookup::Miss(ticket) = cache.lookup(session.id) else {
        panic!("an empty cache misses");
    };
    for n in 0..300 {
        cache.invalidate(Invalidation::User(UserId(100 + n)));
    }
    cache.fill(ticket, &session, &owner);
    assert!(!check(&cache, &session, &owner));
}

#[test]
fn an_untrusted_cache_is_bypassed_and_stores_nothing_until_trusted_and_emptied() {
    let cache = SessionCache::new(LIMITS, false);
    let (session, user) = day_long(1);
    assert!(matches!(cache.lookup(session.id), Lookup::Bypass));
    cache.trust();
    assert!(!check(&cache, &session, &user));
    assert!(check(&cache, &session, &user));

    // A ticket taken before the feed was lost is void after.
    let (other, other_user) = day_long(2);
    let Lookup::Miss(ticket) = cache.lookup(other.id) else {
        panic!("not cached yet");
    };
    cache.distrust();
    cache.fill(ticket, &other, &other_user);
    assert!(matches!(cache.lookup(session.id), Lookup::Bypass));
    assert_eq!(cache.stats().entries, 0);
    assert!(!cache.stats().trusted);

    cache.trust();
    assert!(matches!(cache.lookup(session.id), Lookup::Miss(_)));
    assert_eq!(cache.stats().bypassed, 2);
}

#[test]
fn a_user_invalidation_drops_every_session_of_that_user_and_no_other() {
    let cache = cache_with(LIMITS);
    let (first, owner) = day_long(1);
    let second = live(1, TimeDelta::days(1));
    let (other, other_user) = day_long(2);
    for (session, user) in [(&first, &owner), (&second, &owner), (&other, &other_user)] {
        check(&cache, session, user);
    }
    cache.received(Invalidation::User(UserId(1)));
    assert!(!check(&cache, &first, &owner));
    assert!(!check(&cache, &second, &owner));
    assert!(check(&cache, &other, &other_user));
    assert_eq!(cache.stats().invalidations_received, 1);
}

#[test]
fn a_session_invalidation_drops_that_session_alone_and_everything_drops_all() {
    let cache = cache_with(LIMITS);
    let (ended, owner) = day_long(1);
    let sibling = live(1, TimeDelta::days(1));
    check(&cache, &ended, &owner);
    check(&cache, &sibling, &owner);
    cache.invalidate(Invalidation::Session(ended.id));
    assert!(!check(&cache, &ended, &owner));
    assert!(check(&cache, &sibling, &owner));
    cache.invalidate(Invalidation::Everything);
    assert_eq!((cache.stats().entries, cache.stats().bytes), (0, 0));
}

#[test]
fn an_entry_ends_with_its_sessions_idle_end_and_after_max_age() {
    let cache = cache_with(LIMITS);
    let owner = user(1, Role::User, true);
    let dying = live(1, TimeDelta::milliseconds(40));
    check(&cache, &dying, &owner);
    assert!(check(&cache, &dying, &owner));
    std::thread::sleep(Duration::from_millis(60));
    assert!(matches!(cache.lookup(dying.id), Lookup::Miss(_)));
    assert_eq!(
        cache.stats().entries,
        0,
        "an expired entry is dropped when met"
    );

    let short = cache_with(CacheLimits {
        max_age: Duration::from_millis(40),
        ..LIMITS
    });
    let (session, user) = day_long(2);
    check(&short, &session, &user);
    assert!(check(&short, &session, &user));
    std::thread::sleep(Duration::from_millis(60));
    assert!(!check(&short, &session, &user));
}

#[test]
fn entries_whose_time_is_up_make_room_though_nobody_asks_for_them_again() {
    let cache = cache_with(CacheLimits {
        max_age: Duration::from_millis(40),
        ..LIMITS
    });
    for user_id in 1..=50 {
        let (session, user) = day_long(user_id);
        check(&cache, &session, &user);
    }
    std::thread::sleep(Duration::from_millis(60));
    let (session, user) = day_long(51);
    check(&cache, &session, &user);
    let stats = cache.stats();
    assert_eq!(
        stats.entries, 1,
        "abandoned sessions stay until the bounds push them out"
    );
    assert_eq!(stats.bytes, weight(&session, &user));
    assert!(check(&cache, &session, &user));
}

#[test]
fn refused_checks_are_not_stored() {
    let cache = cache_with(LIMITS);
    let (mut ended, owner) = day_long(1);
    ended.ended_at = Some(Utc::now());
    let (session, inactive) = (live(2, TimeDelta::days(1)), user(2, Role::User, false));
    let (foreign, stranger) = (live(3, TimeDelta::days(1)), user(4, Role::User, true));
    for (session, user) in [
        (&ended, &owner),
        (&session, &inactive),
        (&foreign, &stranger),
    ] {
        check(&cache, session, user);
        assert!(!check(&cache, session, user));
    }
    assert_eq!(cache.stats().entries, 0);
}

#[test]
fn the_oldest_entries_make_room_within_both_bounds() {
    let (probe, probe_user) = day_long(1);
    let one = weight(&probe, &probe_user);
    for limits in [
        CacheLimits {
            max_entries: 3,
            ..LIMITS
        },
        CacheLimits {
            max_bytes: 3 * one + one / 2,
            ..LIMITS
        },
    ] {
        let cache = cache_with(limits);
        let checks: Vec<_> = (1..=5).map(day_long).collect();
        for (session, user) in &checks {
            check(&cache, session, user);
        }
        let stats = cache.stats();
        assert_eq!(stats.entries, 3, "{limits:?}");
        assert!(stats.bytes <= limits.max_bytes);
        for (session, user) in &checks[..2] {
            assert!(
                matches!(cache.lookup(session.id), Lookup::Miss(_)),
                "{user:?}"
            );
        }
        for (session, user) in &checks[2..] {
            assert!(check(&cache, session, user));
        }
    }
}

#[test]
fn the_eviction_queue_stays_bounded_under_churn() {
    let cache = cache_with(CacheLimits {
        max_entries: 10,
        ..LIMITS
    });
    let (session, user) = day_long(1);
    for _ in 0..10_000 {
        check(&cache, &session, &user);
        cache.invalidate(Invalidation::Session(session.id));
    }
    let queue = cache.state().queue.len();
    assert!(queue <= 2 * 10 + 64, "{queue}");
}

#[test]
fn an_entry_weighs_a_few_hundred_bytes() {
    let (mut session, user) = day_long(1);
    let bare = weight(&session, &user);
    // A browser's user agent is about a hundred characters.
    session.client.user_agent = Some("x".repeat(100));
    session.client.ip = Some("203.0.113.7".into());
    let typical = weight(&session, &user);
    assert_eq!(typical, bare + 111);
    eprintln!("an entry weighs {bare} bytes bare, {typical} with a browser's user agent");
    assert!((400..800).contains(&typical), "{typical}");
}

// The decorator: every write that ends a session or changes a user drops what it made stale
// before it returns, so the next check reads the stored state (here: the session ended).

type Write = fn(Arc<CachedSessions>, Session) -> futures_util::future::BoxFuture<'static, ()>;

fn audit() -> NewAuditEvent {
    NewAuditEvent::new(
        AuditKind::SessionEnded,
        Some(UserId(1)),
        &crate::domain::ClientInfo::default(),
        Utc::now(),
    )
}

fn writes() -> Vec<(&'static str, Write)> {
    vec![
        ("logout or session delete", |repo, s| {
            Box::pin(async move {
                let _ = repo.end_session(s.user_id, s.id, Utc::now(), audit()).await;
            })
        }),
        ("any account change", |repo, s| {
            Box::pin(async move {
                let change = crate::domain::AccountChange::of(s.user_id, Utc::now())
                    .then(crate::domain::Edit::Touch);
                let _ = repo.apply(change).await;
            })
        }),
        ("login beyond the session limit", |repo, s| {
            Box::pin(async move {
                let _ = repo.create_session(new_session(&s), key()).await;
            })
        }),
    ]
}

fn key() -> SessionKey {
    SessionKey::Cookie(crate::domain::NewSessionCookie::generate(Utc::now()))
}

fn new_session(ended: &Session) -> NewSession {
    NewSession {
        id: SessionId::random(),
        user_id: ended.user_id,
        created_at: Utc::now(),
        expires_at: Utc::now() + TimeDelta::days(1),
        client: crate::domain::ClientInfo::default(),
        methods: Vec::new(),
        client_id: None,
        origin: None,
        credential_version: 0,
        live_limit: 1,
        audit: audit(),
    }
}

/// Inner repositories that store `session`, and answer every write with an error (the
/// decorator must invalidate whatever the write returned) after ending the session.
fn inner_ending(session: &Session) -> (MockUserRepository, MockSessionRepository) {
    let (mut users, mut inner) = (MockUserRepository::new(), MockSessionRepository::new());
    let owner = user(session.user_id.0, Role::User, true);
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (stored, seen) = (session.clone(), Arc::clone(&ended));
    inner
        .expect_find_session()
        .with(eq(session.id))
        .returning(move |_| {
            let mut current = stored.clone();
            if seen.load(std::sync::atomic::Ordering::SeqCst) {
                current.ended_at = Some(Utc::now());
            }
            Ok(Some((current, owner.clone())))
        });
    let fail = || crate::domain::BackendError::unexpected("after the commit, the answer was lost");
    macro_rules! ends {
        ($mock:ident.$expect:ident, $error:expr, $($arg:tt)+) => {{
            let ended = Arc::clone(&ended);
            $mock.$expect().returning(move |$($arg)+| {
                ended.store(true, std::sync::atomic::Ordering::SeqCst);
                Err($error)
            });
        }};
    }
    ends!(inner.expect_end_session, fail(), _, _, _, _);
    ends!(inner.expect_create_session, fail().into(), _, _);
    ends!(users.expect_apply, fail(), _);
    (users, inner)
}

/// The decorator over `inner`, filling `cache`.
fn cached(
    (users, sessions): (MockUserRepository, MockSessionRepository),
    cache: &Arc<SessionCache>,
) -> CachedSessions {
    CachedSessions::new(Arc::new(users), Arc::new(sessions), Arc::clone(cache))
}

#[tokio::test]
async fn every_write_that_ends_a_session_or_changes_a_user_makes_the_next_check_read_it() {
    for (name, write) in writes() {
        let session = live(7, TimeDelta::days(1));
        let cache = Arc::new(cache_with(LIMITS));
        let repo = Arc::new(cached(inner_ending(&session), &cache));
        for _ in 0..2 {
            let (found, _) = repo.find_session(session.id).await.unwrap().unwrap();
            assert!(found.is_live(Utc::now()), "{name}");
        }
        assert_eq!(cache.stats().hits, 1, "{name}: the second check is cached");
        write(Arc::clone(&repo), session.clone()).await;
        let (found, _) = repo.find_session(session.id).await.unwrap().unwrap();
        assert!(
            !found.is_live(Utc::now()),
            "{name}: the check after the write still saw the cached session"
        );
    }
}

#[tokio::test]
async fn a_refresh_or_a_page_view_keeps_the_cached_check() {
    let session = live(7, TimeDelta::days(1));
    let (users, mut inner) = inner_ending(&session);
    inner.expect_touch_session().returning(|_, _, _| Ok(()));
    let cache = Arc::new(cache_with(LIMITS));
    let repo = cached((users, inner), &cache);
    repo.find_session(session.id).await.unwrap();
    repo.touch_session(session.id, Utc::now(), Utc::now() + TimeDelta::days(2))
        .await
        .unwrap();
    repo.find_session(session.id).await.unwrap();
    assert_eq!(cache.stats().hits, 1);
}

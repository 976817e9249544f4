use mockall::predicate::{always, eq};

use super::super::credentials::ADMISSION_TRIES;
use super::super::test_support::{Mocks, user};
use super::*;
use crate::domain::ports::{FailureRecord, MockRateLimiter};
use crate::domain::service::{LoginError, RegisterError};
use crate::domain::{ClientInfo, Email, Password, Role};

fn client() -> ClientInfo {
    ClientInfo::new(None, Some("203.0.113.5".into()))
}

fn email() -> Email {
    Email::parse("target@example.com").unwrap()
}

/// A limiter under every quota, whose account has the failure run `run`; every swap
/// succeeds.
fn limiter_with_run(run: Option<FailureRecord>) -> MockRateLimiter {
    let mut limiter = MockRateLimiter::new();
    limiter.expect_increment().returning(|_, _| Ok(1));
    limiter.expect_failures().returning(move |_| Ok(run));
    limiter.expect_swap_failures().returning(|_, _, _| Ok(true));
    limiter
}

#[test]
fn the_delay_starts_after_the_free_failures_doubles_and_is_capped() {
    let policy = LimitPolicy::default();
    let delays: Vec<Option<i64>> = (0..=20)
        .map(|n| backoff_delay(&policy, n).map(|d| d.num_seconds()))
        .collect();
    assert_eq!(&delays[..6], &[None; 6]);
    assert_eq!(
        &delays[6..11],
        &[Some(1), Some(2), Some(4), Some(8), Some(16)]
    );
    assert_eq!(delays[20], Some(900));
    assert_eq!(backoff_delay(&policy, u32::MAX), Some(policy.max_delay));
}

#[tokio::test]
async fn a_spent_ip_quota_refuses_login_before_any_hash_with_the_window_rest() {
    let mut m = Mocks::new();
    let mut limiter = MockRateLimiter::new();
    // 12:00:00 exactly: the minute window ends in 60 s.
    limiter.expect_increment().times(1).returning(|_, _| Ok(61));
    m.limiter = Some(limiter);
    m.users.expect_find_user_by_email().never();
    m.hasher.expect_verify().never();
    let err = m
        .service()
        .accounts
        .login(&email(), "whatever1", client())
        .await
        .unwrap_err();
    match err {
        LoginError::Throttled(t) => assert_eq!(t.retry_after, TimeDelta::seconds(60)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn counters_are_keyed_by_action_subject_and_window_without_raw_values() {
    let mut m = Mocks::new();
    let mut limiter = MockRateLimiter::new();
    let now = m.now;
    limiter
        .expect_increment()
        .withf(move |bucket, ends| {
            bucket.starts_with("register:")
                && bucket.ends_with(&format!(":{}", now.timestamp()))
                && !bucket.contains("203.0.113.5")
                && !bucket.contains("target@example.com")
                && *ends == now + TimeDelta::minutes(1)
        })
        .times(2)
        .returning(|_, _| Ok(1));
    limiter.expect_failures().never();
    m.limiter = Some(limiter);
    m.hasher
        .expect_hash()
        .returning(|_| Ok(crate::domain::PasswordHash::new("h".into())));
    m.users
        .expect_create_user()
        .returning(|_| Ok(user(1, Role::User, true)));
    m.service()
        .accounts
        .register(
            email(),
            Password::parse("long enough").unwrap(),
            None,
            &client(),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn an_account_serving_a_delay_is_refused_until_it_ends() {
    let mut m = Mocks::new();
    // Seven failures: a 2 s delay, the last failure 1 s ago.
    m.limiter = Some(limiter_with_run(Some(FailureRecord {
        count: 7,
        last_at: m.now - TimeDelta::seconds(1),
    })));
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    m.hasher.expect_verify().never();
    let err = m
        .service()
        .accounts
        .login(&email(), "whatever1", client())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LoginError::Throttled(t) if t.retry_after == TimeDelta::seconds(1)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_wrong_password_lengthens_the_delay_and_a_right_one_clears_it() {
    let mut m = Mocks::new();
    let mut limiter = limiter_with_run(None);
    let now = m.now;
    limiter
        .expect_record_failure()
        .with(always(), eq(now))
        .times(1)
        .returning(|_, _| Ok(()));
    limiter.expect_clear_failures().never();
    m.limiter = Some(limiter);
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(1, Role::User, true))));
    m.hasher.expect_verify().returning(|_, _| Ok(false));
    let err = m
        .service()
        .accounts
        .login(&email(), "wrong", client())
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::InvalidCredentials));

    let mut m = Mocks::new();
    let mut limiter = limiter_with_run(None);
    limiter.expect_record_failure().never();
    limiter
        .expect_clear_failures()
        .times(1)
        .returning(|_| Ok(()));
    m.limiter = Some(limiter);
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(1, Role::User, true))));
    m.hasher.expect_verify().returning(|_, _| Ok(true));
    m.sessions
        .expect_create_session()
        .returning(|s, _| Ok(super::super::test_support::session(s.id, 1)));
    m.tokens.expect_issue().returning(|_| Ok("t".into()));
    assert!(
        m.service()
            .accounts
            .login(&email(), "right", client())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn an_unknown_email_counts_as_a_failure_too() {
    let mut m = Mocks::new();
    let mut limiter = limiter_with_run(None);
    limiter
        .expect_record_failure()
        .times(1)
        .returning(|_, _| Ok(()));
    m.limiter = Some(limiter);
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    m.hasher.expect_verify().returning(|_, _| Ok(false));
    let err = m
        .service()
        .accounts
        .login(&email(), "x", client())
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::InvalidCredentials));
}

#[tokio::test]
async fn registration_over_its_quota_is_refused_before_hashing() {
    let mut m = Mocks::new();
    let mut limiter = MockRateLimiter::new();
    limiter.expect_increment().returning(|_, _| Ok(31));
    m.limiter = Some(limiter);
    m.hasher.expect_hash().never();
    m.users.expect_create_user().never();
    let err = m
        .service()
        .accounts
        .register(
            email(),
            Password::parse("long enough").unwrap(),
            None,
            &client(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegisterError::Throttled(_)));
}

#[tokio::test]
async fn a_stale_failure_run_imposes_no_delay() {
    let mut m = Mocks::new();
    let mut limiter = limiter_with_run(Some(FailureRecord {
        count: 30,
        last_at: m.now - TimeDelta::days(2),
    }));
    limiter.expect_record_failure().returning(|_, _| Ok(()));
    m.limiter = Some(limiter);
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    m.hasher
        .expect_verify()
        .times(1)
        .returning(|_, _| Ok(false));
    let err = m
        .service()
        .accounts
        .login(&email(), "x", client())
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::InvalidCredentials));
}

#[tokio::test]
async fn a_replayed_refresh_token_ends_its_session_even_over_the_account_limit() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let mut m = Mocks::new();
    let mut limiter = MockRateLimiter::new();
    // The address is under its quota; anything counted after it is far over.
    let calls = AtomicUsize::new(0);
    limiter.expect_increment().returning(move |_, _| {
        Ok(if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            1
        } else {
            999
        })
    });
    m.limiter = Some(limiter);
    let sid = crate::domain::SessionId::random();
    let record = crate::domain::RefreshTokenRecord {
        expires_at: m.now + TimeDelta::days(1),
        spent_at: Some(m.now - TimeDelta::minutes(1)),
        session: super::super::test_support::session(sid, 5),
        user: user(5, Role::User, true),
    };
    m.sessions
        .expect_find_refresh_token()
        .returning(move |_| Ok(Some(record.clone())));
    m.sessions
        .expect_end_session()
        .times(1)
        .returning(|_, _, _, _| Ok(true));
    let err = m
        .service()
        .sessions
        .refresh("replayed", client())
        .await
        .unwrap_err();
    assert!(
        matches!(err, crate::domain::service::RefreshError::Reused),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_attempt_is_admitted_and_counted_before_its_hash_starts() {
    let mut m = Mocks::new();
    let now = m.now;
    let seen = FailureRecord {
        count: 3,
        last_at: now - TimeDelta::minutes(1),
    };
    let mut seq = mockall::Sequence::new();
    let mut limiter = MockRateLimiter::new();
    limiter.expect_increment().returning(|_, _| Ok(1));
    limiter
        .expect_failures()
        .times(1)
        .in_sequence(&mut seq)
        .returning(move |_| Ok(Some(seen)));
    limiter
        .expect_swap_failures()
        .with(
            always(),
            eq(Some(seen)),
            eq(FailureRecord {
                count: 4,
                last_at: now,
            }),
        )
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _, _| Ok(true));
    m.hasher
        .expect_verify()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(false));
    limiter
        .expect_record_failure()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_, _| Ok(()));
    m.limiter = Some(limiter);
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    let err = m
        .service()
        .accounts
        .login(&email(), "wrong", client())
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::InvalidCredentials));
}

#[tokio::test]
async fn an_attempt_that_loses_the_swap_reads_again_and_meets_the_delay_the_winner_started() {
    // Five failures: the sixth attempt is free, but a concurrent one takes it first.
    let mut m = Mocks::new();
    let now = m.now;
    let reads = std::sync::atomic::AtomicUsize::new(0);
    let mut limiter = MockRateLimiter::new();
    limiter.expect_increment().returning(|_, _| Ok(1));
    limiter.expect_failures().times(2).returning(move |_| {
        let count = if reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            5
        } else {
            6
        };
        Ok(Some(FailureRecord {
            count,
            last_at: now,
        }))
    });
    limiter
        .expect_swap_failures()
        .times(1)
        .returning(|_, _, _| Ok(false));
    m.limiter = Some(limiter);
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    m.hasher.expect_verify().never();
    let err = m
        .service()
        .accounts
        .login(&email(), "guess", client())
        .await
        .unwrap_err();
    assert!(
        matches!(err, LoginError::Throttled(t) if t.retry_after == TimeDelta::seconds(1)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_hash_that_could_not_run_gives_its_attempt_back() {
    let mut m = Mocks::new();
    let mut limiter = limiter_with_run(None);
    limiter
        .expect_release_attempt()
        .times(1)
        .returning(|_| Ok(()));
    limiter.expect_record_failure().never();
    limiter.expect_clear_failures().never();
    m.limiter = Some(limiter);
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    m.hasher
        .expect_verify()
        .returning(|_, _| Err(BackendError::Overloaded));
    let err = m
        .service()
        .accounts
        .login(&email(), "guess", client())
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::Backend(BackendError::Overloaded)));
}

#[tokio::test]
async fn a_contended_account_is_refused_rather_than_retried_forever() {
    let mut m = Mocks::new();
    let mut limiter = limiter_with_run(None);
    limiter.checkpoint();
    limiter.expect_increment().returning(|_, _| Ok(1));
    limiter.expect_failures().returning(|_| Ok(None));
    limiter
        .expect_swap_failures()
        .times(ADMISSION_TRIES)
        .returning(|_, _, _| Ok(false));
    m.limiter = Some(limiter);
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    m.hasher.expect_verify().never();
    let err = m
        .service()
        .accounts
        .login(&email(), "guess", client())
        .await
        .unwrap_err();
    assert!(matches!(err, LoginError::Throttled(_)), "{err:?}");
}

#[test]
fn ipv6_clients_are_counted_per_network_and_ipv4_per_address() {
    assert_eq!(address_subject("203.0.113.5", 64), "203.0.113.5");
    assert_eq!(address_subject("::ffff:203.0.113.5", 64), "203.0.113.5");
    let a = address_subject("2001:db8:1:2:aaaa::1", 64);
    let b = address_subject("2001:db8:1:2:ffff:ffff:ffff:ffff", 64);
    assert_eq!(a, b);
    assert_eq!(a, "2001:db8:1:2::/64");
    assert_ne!(a, address_subject("2001:db8:1:3::1", 64));
    assert_ne!(
        address_subject("2001:db8::1", 128),
        address_subject("2001:db8::2", 128)
    );
    assert_eq!(
        address_subject("2001:db8:1:2::1", 48),
        address_subject("2001:db8:1:ffff::1", 48)
    );
    assert_eq!(address_subject("unix-socket", 64), "unix-socket");
}

#[tokio::test]
async fn two_addresses_of_one_ipv6_network_share_a_budget() {
    let mut m = Mocks::new();
    let mut limiter = MockRateLimiter::new();
    let buckets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = std::sync::Arc::clone(&buckets);
    limiter.expect_increment().returning(move |bucket, _| {
        seen.lock().unwrap().push(bucket.to_owned());
        Ok(1)
    });
    m.limiter = Some(limiter);
    m.hasher
        .expect_hash()
        .returning(|_| Ok(crate::domain::PasswordHash::new("h".into())));
    m.users
        .expect_create_user()
        .returning(|_| Ok(user(1, Role::User, true)));
    let service = m.service();
    for ip in ["2001:db8:1:2::1", "2001:db8:1:2:dead:beef::9"] {
        service
            .accounts
            .register(
                Email::parse(&format!("u{}@example.com", ip.len())).unwrap(),
                Password::parse("long enough").unwrap(),
                None,
                &ClientInfo::new(None, Some(ip.into())),
            )
            .await
            .unwrap();
    }
    let buckets = buckets.lock().unwrap();
    // Per address, then per account, for each registration.
    assert_eq!(buckets[0], buckets[2]);
    assert_ne!(buckets[1], buckets[3]);
}

//! The factor storage against one contract: in memory, SQLite and PostgreSQL.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use portcullis::domain::mfa::{
    AuthMethod, Ceremony, CeremonyKind, FactorRemoval, Factors, MfaTokenHash, NewMfaChallenge,
    Passkey, RecoveryCodeHash,
};
use portcullis::domain::{
    AccountChange, Applied, AuditKind, AuditQuery, ClientInfo, Condition, Edit, NewAuditEvent,
    NewSessionCookie, Refusal, SessionKey, User, UserId,
};
use portcullis::outbound::Store;
use uuid::Uuid;

use crate::repository::{event, new_session, on_every_store, t0, user};

/// The hash of recovery code `n`: stored as given, whatever it hashes.
fn code(n: usize) -> RecoveryCodeHash {
    RecoveryCodeHash(format!("hash-of-code-{n}"))
}

fn audited(kind: AuditKind, user: &User) -> NewAuditEvent {
    NewAuditEvent::new(kind, Some(user.id), &ClientInfo::default(), t0())
}

/// How many `kind` events were recorded.
async fn recorded(users: &dyn Store, kind: AuditKind) -> usize {
    users
        .list_audit(&AuditQuery {
            kind: Some(kind),
            limit: 100,
            ..AuditQuery::default()
        })
        .await
        .unwrap()
        .len()
}

/// The confirmation of `user`'s pending secret `sealed` by a code of `step`, with `recovery`,
/// as the core builds it.
fn confirmation(
    user: &User,
    sealed: &[u8],
    step: i64,
    recovery: Vec<RecoveryCodeHash>,
    audit: NewAuditEvent,
) -> AccountChange {
    AccountChange::of(user.id, t0())
        .when(Condition::Current {
            credential_version: user.credential_version,
        })
        .when(Condition::PendingTotpIs(sealed.to_vec()))
        .then(Edit::ConfirmTotp {
            step,
            recovery,
            added_unverified: false,
        })
        .recording(audit)
}

/// The addition of `key` by its owner at credential version 0, as the core builds it.
fn adding(key: &Passkey, audit: NewAuditEvent) -> AccountChange {
    AccountChange::of(key.user_id, t0())
        .when(Condition::Current {
            credential_version: 0,
        })
        .then(Edit::AddPasskey(key.clone()))
        .recording(audit)
}

/// The removal of passkey `id` by user `owner`, as the core builds it.
fn removing(owner: UserId, id: Uuid, audit: NewAuditEvent) -> AccountChange {
    AccountChange::of(owner, t0())
        .when(Condition::HoldsPasskey(id))
        .then(Edit::RemoveFactors(FactorRemoval {
            totp: false,
            passkeys: vec![id],
        }))
        .recording(audit)
}

/// The removal of `owner`'s TOTP factor, and with `passkeys` of every passkey, as the core
/// builds it.
fn removing_factors(owner: UserId, passkeys: bool, audit: NewAuditEvent) -> AccountChange {
    let change = AccountChange::of(owner, t0())
        .when(Condition::HasFactors { passkeys })
        .then(Edit::RemoveFactors(FactorRemoval {
            totp: true,
            passkeys: Vec::new(),
        }))
        .recording(audit);
    if passkeys {
        change.then(Edit::RemoveAllPasskeys)
    } else {
        change
    }
}

/// Whether `change` was kept.
async fn kept(users: &dyn Store, change: AccountChange) -> bool {
    users.apply(change).await.unwrap().kept()
}

/// Enrols and confirms TOTP for `user` with `codes` as recovery codes, at step 100.
async fn with_totp(
    users: &dyn Store,
    factors: &dyn Store,
    user: &User,
    codes: Vec<RecoveryCodeHash>,
) {
    let sealed = format!("sealed-{}", user.id.0).into_bytes();
    assert!(
        factors
            .store_pending_totp(user.id, sealed.clone(), t0())
            .await
            .unwrap()
    );
    assert!(kept(users, confirmation(user, &sealed, 100, codes, event())).await);
}

pub(crate) fn passkey(user: &User, credential_id: &[u8], at: DateTime<Utc>) -> Passkey {
    Passkey {
        id: Uuid::new_v4(),
        user_id: user.id,
        name: "Laptop".into(),
        created_at: at,
        last_used_at: None,
        credential_id: credential_id.to_vec(),
        credential: "{\"counter\":0}".into(),
        user_handle: Uuid::new_v4(),
        added_unverified: false,
    }
}

fn challenge(user: &User, ttl: TimeDelta) -> NewMfaChallenge {
    NewMfaChallenge::generate(user.id, user.credential_version, t0(), ttl)
}

fn ceremony(challenge: &str, user_id: Option<UserId>, ttl: TimeDelta) -> Ceremony {
    Ceremony {
        challenge: challenge.into(),
        kind: if user_id.is_some() {
            CeremonyKind::Registration
        } else {
            CeremonyKind::Authentication
        },
        user_id,
        state: format!("state of {challenge}"),
        expires_at: t0() + ttl,
    }
}

#[tokio::test]
async fn a_pending_totp_secret_is_replaced_until_confirmed_and_kept_after() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        assert!(factors.find_totp(alice.id).await.unwrap().is_none());
        assert!(
            factors
                .store_pending_totp(alice.id, b"first".to_vec(), t0())
                .await
                .unwrap()
        );
        assert!(
            factors
                .store_pending_totp(alice.id, b"second".to_vec(), t0())
                .await
                .unwrap()
        );
        let pending = factors.find_totp(alice.id).await.unwrap().unwrap();
        assert_eq!(pending.sealed_secret, b"second");
        assert_eq!((pending.confirmed_at, pending.last_step), (None, None));
        assert_eq!(factors.factors(alice.id).await.unwrap(), Factors::default());

        // A code checked against the replaced secret confirms nothing.
        let enabled = audited(AuditKind::TotpEnabled, &alice);
        assert!(
            !kept(
                users,
                confirmation(&alice, b"first", 7, vec![code(1)], enabled.clone())
            )
            .await
        );
        assert_eq!(recorded(users, AuditKind::TotpEnabled).await, 0);
        assert!(
            kept(
                users,
                confirmation(&alice, b"second", 7, vec![code(1)], enabled.clone())
            )
            .await
        );
        assert_eq!(recorded(users, AuditKind::TotpEnabled).await, 1);
        assert!(
            !kept(
                users,
                confirmation(&alice, b"second", 8, vec![code(2)], enabled)
            )
            .await
        );
        let confirmed = factors.find_totp(alice.id).await.unwrap().unwrap();
        assert_eq!(confirmed.sealed_secret, b"second");
        assert_eq!(confirmed.confirmed_at, Some(t0()));
        assert_eq!(confirmed.last_step, Some(7));
        assert!(factors.factors(alice.id).await.unwrap().totp);

        assert!(
            !factors
                .store_pending_totp(alice.id, b"third".to_vec(), t0())
                .await
                .unwrap()
        );
        assert_eq!(factors.find_totp(alice.id).await.unwrap(), Some(confirmed));
    })
    .await;
}

#[tokio::test]
async fn an_enrolment_replaces_the_recovery_codes_and_each_is_spent_once() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        let bob = user(users, "bob@example.com").await;
        with_totp(users, factors, &alice, vec![code(1), code(2)]).await;
        let later = t0() + TimeDelta::minutes(1);
        assert!(
            !factors
                .spend_recovery_code(bob.id, &code(1), later)
                .await
                .unwrap()
        );
        assert!(
            factors
                .spend_recovery_code(alice.id, &code(1), later)
                .await
                .unwrap()
        );
        assert!(
            !factors
                .spend_recovery_code(alice.id, &code(1), later)
                .await
                .unwrap()
        );
        assert!(
            !factors
                .spend_recovery_code(alice.id, &code(3), later)
                .await
                .unwrap()
        );

        kept(users, removing_factors(alice.id, false, event())).await;
        with_totp(users, factors, &alice, vec![code(3)]).await;
        assert!(
            !factors
                .spend_recovery_code(alice.id, &code(2), later)
                .await
                .unwrap()
        );
        assert!(
            factors
                .spend_recovery_code(alice.id, &code(3), later)
                .await
                .unwrap()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_concurrent_spends_of_one_recovery_code_exactly_one_wins() {
    on_every_store(|store| async move {
        let alice = user(store.as_ref(), "alice@example.com").await;
        with_totp(store.as_ref(), store.as_ref(), &alice, vec![code(1)]).await;
        let spends = (0..20).map(|_| {
            let factors = Arc::clone(&store);
            async move { factors.spend_recovery_code(alice.id, &code(1), t0()).await }
        });
        let won = futures::future::join_all(spends)
            .await
            .into_iter()
            .map(Result::unwrap)
            .filter(|won| *won)
            .count();
        assert_eq!(won, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_totp_step_is_used_once_and_never_after_a_later_one() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        assert!(
            factors
                .store_pending_totp(alice.id, b"sealed".to_vec(), t0())
                .await
                .unwrap()
        );
        assert!(
            !factors.use_totp_step(alice.id, 50).await.unwrap(),
            "an unconfirmed factor takes no code"
        );
        assert!(kept(users, confirmation(&alice, b"sealed", 100, vec![], event())).await);
        for (step, accepted) in [
            (100, false),
            (99, false),
            (101, true),
            (101, false),
            (100, false),
        ] {
            assert_eq!(
                factors.use_totp_step(alice.id, step).await.unwrap(),
                accepted,
                "step {step}"
            );
        }
        let uses = (0..20).map(|_| {
            let factors = Arc::clone(&store);
            async move { factors.use_totp_step(alice.id, 105).await }
        });
        let won = futures::future::join_all(uses)
            .await
            .into_iter()
            .map(Result::unwrap)
            .filter(|won| *won)
            .count();
        assert_eq!(won, 1);
        let factor = factors.find_totp(alice.id).await.unwrap().unwrap();
        assert_eq!(factor.last_step, Some(105));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenge_is_spent_by_its_last_allowed_failure_or_by_one_success() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        let failing = challenge(&alice, TimeDelta::minutes(5));
        factors.store_mfa_challenge(failing.clone()).await.unwrap();
        let stored = factors
            .find_mfa_challenge(&failing.hash)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (stored.user_id, stored.credential_version, stored.expires_at),
            (alice.id, alice.credential_version, failing.expires_at)
        );
        assert_eq!((stored.failures, stored.spent_at), (0, None));
        let later = t0() + TimeDelta::minutes(1);
        for failures in 1..=3 {
            factors
                .fail_mfa_challenge(&failing.hash, 3, later)
                .await
                .unwrap();
            let seen = factors
                .find_mfa_challenge(&failing.hash)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(seen.failures, failures);
            assert_eq!(seen.spent_at, (failures == 3).then_some(later));
        }
        assert!(
            !factors
                .spend_mfa_challenge(&failing.hash, later)
                .await
                .unwrap()
        );

        let passing = challenge(&alice, TimeDelta::minutes(5));
        factors.store_mfa_challenge(passing.clone()).await.unwrap();
        let spends = (0..20).map(|_| {
            let factors = Arc::clone(&store);
            let hash = passing.hash.clone();
            async move { factors.spend_mfa_challenge(&hash, later).await }
        });
        let won = futures::future::join_all(spends)
            .await
            .into_iter()
            .map(Result::unwrap)
            .filter(|won| *won)
            .count();
        assert_eq!(won, 1);
        let spent = factors
            .find_mfa_challenge(&passing.hash)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(spent.spent_at, Some(later));

        let unknown = MfaTokenHash::of("unknown");
        assert!(
            factors
                .find_mfa_challenge(&unknown)
                .await
                .unwrap()
                .is_none()
        );
        assert!(!factors.spend_mfa_challenge(&unknown, later).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn a_credential_id_is_held_by_one_passkey_of_one_user() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        let bob = user(users, "bob@example.com").await;
        let older = passkey(&alice, b"credential-1", t0());
        let newer = passkey(&alice, b"credential-2", t0() + TimeDelta::minutes(1));
        let added = audited(AuditKind::PasskeyAdded, &alice);
        for key in [&newer, &older] {
            assert!(kept(users, adding(key, added.clone())).await);
        }
        let taken = passkey(&bob, b"credential-1", t0());
        assert_eq!(
            users.apply(adding(&taken, added)).await.unwrap(),
            Applied::Refused(Refusal::CredentialTaken)
        );
        assert_eq!(recorded(users, AuditKind::PasskeyAdded).await, 2);
        assert!(factors.list_passkeys(bob.id).await.unwrap().is_empty());
        assert_eq!(
            factors.list_passkeys(alice.id).await.unwrap(),
            [older.clone(), newer]
        );
        assert_eq!(
            factors.factors(alice.id).await.unwrap(),
            Factors {
                totp: false,
                passkeys: 2
            }
        );
        assert_eq!(
            factors.find_passkey(b"credential-1").await.unwrap(),
            Some(older.clone())
        );
        assert!(
            factors
                .find_passkey(b"credential-3")
                .await
                .unwrap()
                .is_none()
        );

        let later = t0() + TimeDelta::hours(1);
        factors.touch_passkey(older.id, None, later).await.unwrap();
        let touched = factors
            .find_passkey(b"credential-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (touched.last_used_at, touched.credential.as_str()),
            (Some(later), older.credential.as_str())
        );
        factors
            .touch_passkey(older.id, Some("{\"counter\":1}".into()), later)
            .await
            .unwrap();
        let moved = factors
            .find_passkey(b"credential-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(moved.credential, "{\"counter\":1}");
    })
    .await;
}

#[tokio::test]
async fn a_passkey_is_removed_by_its_owner_only() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        let bob = user(users, "bob@example.com").await;
        let key = passkey(&alice, b"credential", t0());
        assert!(kept(users, adding(&key, event())).await);
        let removed = audited(AuditKind::PasskeyRemoved, &alice);
        assert!(!kept(users, removing(bob.id, key.id, removed.clone())).await);
        assert_eq!(
            factors.list_passkeys(alice.id).await.unwrap(),
            std::slice::from_ref(&key)
        );
        assert_eq!(recorded(users, AuditKind::PasskeyRemoved).await, 0);
        assert!(kept(users, removing(alice.id, key.id, removed.clone())).await);
        assert!(factors.list_passkeys(alice.id).await.unwrap().is_empty());
        assert!(!kept(users, removing(alice.id, key.id, removed)).await);
        assert_eq!(recorded(users, AuditKind::PasskeyRemoved).await, 1);
    })
    .await;
}

#[tokio::test]
async fn a_passkey_is_renamed_by_its_owner_only() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        let bob = user(users, "bob@example.com").await;
        let key = passkey(&alice, b"credential", t0());
        assert!(kept(users, adding(&key, event())).await);
        assert!(
            !factors
                .rename_passkey(bob.id, key.id, "Bob's now")
                .await
                .unwrap()
        );
        assert!(
            !factors
                .rename_passkey(alice.id, Uuid::new_v4(), "Nothing")
                .await
                .unwrap()
        );
        assert_eq!(
            factors.list_passkeys(alice.id).await.unwrap(),
            std::slice::from_ref(&key)
        );
        assert!(
            factors
                .rename_passkey(alice.id, key.id, "Work phone")
                .await
                .unwrap()
        );
        let renamed = Passkey {
            name: "Work phone".into(),
            ..key
        };
        assert_eq!(factors.list_passkeys(alice.id).await.unwrap(), [renamed]);
    })
    .await;
}

#[tokio::test]
async fn a_ceremony_is_taken_once_and_never_after_it_expired() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        let registration = ceremony("reg", Some(alice.id), TimeDelta::minutes(5));
        let sign_in = ceremony("auth", None, TimeDelta::minutes(5));
        for stored in [&registration, &sign_in] {
            factors.store_ceremony(stored.clone(), t0()).await.unwrap();
        }
        let now = t0() + TimeDelta::minutes(1);
        assert_eq!(
            factors.take_ceremony("reg", now).await.unwrap(),
            Some(registration)
        );
        assert!(factors.take_ceremony("reg", now).await.unwrap().is_none());
        assert!(
            factors
                .take_ceremony("unknown", now)
                .await
                .unwrap()
                .is_none()
        );

        let expired = t0() + TimeDelta::minutes(5);
        assert!(
            factors
                .take_ceremony("auth", expired)
                .await
                .unwrap()
                .is_none()
        );
        // Taking an expired ceremony deletes it too.
        assert!(factors.take_ceremony("auth", t0()).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn removing_factors_keeps_passkeys_unless_asked_and_records_only_a_removal() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        with_totp(users, factors, &alice, vec![code(1)]).await;
        let key = passkey(&alice, b"credential", t0());
        assert!(kept(users, adding(&key, event())).await);
        let reset = audited(AuditKind::MfaReset, &alice);

        assert!(kept(users, removing_factors(alice.id, false, reset.clone())).await);
        assert!(factors.find_totp(alice.id).await.unwrap().is_none());
        assert!(
            !factors
                .spend_recovery_code(alice.id, &code(1), t0())
                .await
                .unwrap()
        );
        assert_eq!(
            factors.factors(alice.id).await.unwrap(),
            Factors {
                totp: false,
                passkeys: 1
            }
        );
        assert!(!kept(users, removing_factors(alice.id, false, reset.clone())).await);
        assert_eq!(recorded(users, AuditKind::MfaReset).await, 1);

        assert!(kept(users, removing_factors(alice.id, true, reset.clone())).await);
        assert_eq!(factors.factors(alice.id).await.unwrap(), Factors::default());
        assert!(!kept(users, removing_factors(alice.id, true, reset)).await);
        assert_eq!(recorded(users, AuditKind::MfaReset).await, 2);
    })
    .await;
}

#[tokio::test]
async fn deleting_a_user_deletes_their_factors_challenges_and_ceremonies() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        let bob = user(users, "bob@example.com").await;
        with_totp(users, factors, &alice, vec![code(1)]).await;
        let alices_key = passkey(&alice, b"alice's", t0());
        let bobs_key = passkey(&bob, b"bob's", t0());
        for key in [&alices_key, &bobs_key] {
            assert!(kept(users, adding(key, event())).await);
        }
        let pending = challenge(&alice, TimeDelta::minutes(5));
        factors.store_mfa_challenge(pending.clone()).await.unwrap();
        let registration = ceremony("reg", Some(alice.id), TimeDelta::minutes(5));
        factors.store_ceremony(registration, t0()).await.unwrap();

        assert_eq!(
            users
                .apply(AccountChange::of(alice.id, t0()).then(Edit::Delete))
                .await
                .unwrap(),
            Applied::Deleted
        );
        assert!(factors.find_totp(alice.id).await.unwrap().is_none());
        assert!(
            !factors
                .spend_recovery_code(alice.id, &code(1), t0())
                .await
                .unwrap()
        );
        assert!(factors.find_passkey(b"alice's").await.unwrap().is_none());
        assert!(
            factors
                .find_mfa_challenge(&pending.hash)
                .await
                .unwrap()
                .is_none()
        );
        assert!(factors.take_ceremony("reg", t0()).await.unwrap().is_none());
        assert_eq!(
            factors.find_passkey(b"bob's").await.unwrap(),
            Some(bobs_key)
        );
        // The credential is free again.
        let reused = passkey(&bob, b"alice's", t0());
        assert!(kept(users, adding(&reused, event())).await);
    })
    .await;
}

#[tokio::test]
async fn the_purge_deletes_expired_challenges_and_ceremonies_only() {
    on_every_store(|store| async move {
        let (users, factors) = (store.as_ref(), store.as_ref());
        let alice = user(users, "alice@example.com").await;
        let short = challenge(&alice, TimeDelta::minutes(5));
        let long = challenge(&alice, TimeDelta::hours(1));
        for stored in [&short, &long] {
            factors.store_mfa_challenge(stored.clone()).await.unwrap();
        }
        for stored in [
            ceremony("short", None, TimeDelta::minutes(5)),
            ceremony("long", None, TimeDelta::hours(1)),
        ] {
            factors.store_ceremony(stored, t0()).await.unwrap();
        }
        users
            .purge_expired(t0() + TimeDelta::minutes(10), t0() - TimeDelta::days(1000))
            .await
            .unwrap();
        assert!(
            factors
                .find_mfa_challenge(&short.hash)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            factors
                .find_mfa_challenge(&long.hash)
                .await
                .unwrap()
                .is_some()
        );
        // Taken at a time they were open: only the purge can have removed one.
        assert!(
            factors
                .take_ceremony("short", t0())
                .await
                .unwrap()
                .is_none()
        );
        assert!(factors.take_ceremony("long", t0()).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn a_session_keeps_how_its_user_signed_in() {
    on_every_store(|store| async move {
        let users = store.as_ref();
        let alice = user(users, "alice@example.com").await;
        let two_step = vec![AuthMethod::Password, AuthMethod::Otp];
        let (mut api, refresh) = new_session(&alice, t0(), 100);
        api.methods = two_step.clone();
        let api_id = api.id;
        let stored = users
            .create_session(api, SessionKey::RefreshToken(refresh.clone()))
            .await
            .unwrap();
        assert_eq!(stored.methods, two_step);
        let (mut console, _) = new_session(&alice, t0(), 100);
        console.methods = vec![AuthMethod::Webauthn];
        let cookie = NewSessionCookie::generate(t0() + TimeDelta::hours(2));
        users
            .create_session(console, SessionKey::Cookie(cookie.clone()))
            .await
            .unwrap();

        let (found, _) = users.find_session(api_id).await.unwrap().unwrap();
        assert_eq!(found.methods, two_step);
        let record = users
            .find_refresh_token(&refresh.hash)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.session.methods, two_step);
        let (by_cookie, _) = users
            .find_cookie_session(&cookie.hash)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(by_cookie.methods, [AuthMethod::Webauthn]);
        let mut listed: Vec<Vec<AuthMethod>> = users
            .list_live_sessions(alice.id, t0(), 100)
            .await
            .unwrap()
            .into_iter()
            .map(|session| session.methods)
            .collect();
        listed.sort_by_key(Vec::len);
        assert_eq!(listed, [vec![AuthMethod::Webauthn], two_step]);
    })
    .await;
}

#[tokio::test]
async fn storing_a_ceremony_deletes_the_expired_ones_at_once() {
    on_every_store(|store| async move {
        let factors = store.as_ref();
        factors
            .store_ceremony(ceremony("abandoned", None, TimeDelta::minutes(5)), t0())
            .await
            .unwrap();
        factors
            .store_ceremony(ceremony("live", None, TimeDelta::minutes(5)), t0())
            .await
            .unwrap();
        // Ten minutes on, the next start sweeps what expired, without the periodic purge.
        let later = t0() + TimeDelta::minutes(10);
        factors
            .store_ceremony(
                Ceremony {
                    expires_at: later + TimeDelta::minutes(5),
                    ..ceremony("next", None, TimeDelta::zero())
                },
                later,
            )
            .await
            .unwrap();
        // Taken as of before their expiry, the swept ones are gone; the new one is not.
        for gone in ["abandoned", "live"] {
            assert!(factors.take_ceremony(gone, t0()).await.unwrap().is_none());
        }
        assert!(
            factors
                .take_ceremony("next", later)
                .await
                .unwrap()
                .is_some()
        );
    })
    .await;
}

use chrono::TimeDelta;
use mockall::predicate::eq;

use super::super::test_support::{Mocks, now, session, user};
use super::*;
use crate::domain::Role;
use crate::domain::ports::{CeremonyStart, MockPasskeyCeremonies, VerifiedAssertion};

const ANSWER: &str = r#"{"id":"answer"}"#;

fn principal() -> Principal {
    Principal {
        user: user(7, Role::User, true),
        session_id: None,
    }
}

fn stored(user_id: i64) -> Passkey {
    Passkey {
        id: Uuid::from_u128(1),
        user_id: UserId(user_id),
        name: "Laptop".into(),
        created_at: now(),
        last_used_at: None,
        credential_id: vec![1, 2, 3],
        credential: "stored-credential".into(),
        user_handle: user_handle(UserId(user_id)),
        added_unverified: false,
    }
}

/// `begin_passkey_registration` of `principal()` with the password `pw`, which the hasher
/// finds `right`.
async fn start(m: Mocks, right: bool) -> Result<String, PasskeyError> {
    let mut m = m;
    m.hasher
        .expect_verify()
        .withf(|candidate, _| candidate == "pw")
        .returning(move |_, _| Ok(right));
    m.service()
        .passkeys
        .begin_passkey_registration(&principal(), Proof::Password("pw"), &ClientInfo::default())
        .await
}

fn ceremony(kind: CeremonyKind, user_id: Option<i64>) -> Ceremony {
    Ceremony {
        challenge: "challenge".into(),
        kind,
        user_id: user_id.map(UserId),
        state: "state".into(),
        expires_at: now() + TimeDelta::minutes(5),
    }
}

/// Ceremonies whose answers carry the challenge `challenge`.
fn ceremonies() -> MockPasskeyCeremonies {
    let mut ceremonies = MockPasskeyCeremonies::new();
    ceremonies
        .expect_challenge_of()
        .returning(|_| Ok("challenge".into()));
    ceremonies
}

#[test]
fn a_users_handle_is_stable_and_names_nobody_else() {
    assert_eq!(user_handle(UserId(7)), user_handle(UserId(7)));
    assert_ne!(user_handle(UserId(7)), user_handle(UserId(8)));
}

#[tokio::test]
async fn without_a_relying_party_passkeys_say_they_are_not_configured() {
    let err = Mocks::new()
        .service()
        .passkeys
        .begin_passkey_login(&ClientInfo::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PasskeyError::NotConfigured));
}

#[tokio::test]
async fn a_registration_excludes_the_users_passkeys_and_keeps_its_state_five_minutes() {
    let mut m = Mocks::new();
    m.factors
        .expect_list_passkeys()
        .returning(|id| Ok(vec![stored(id.0)]));
    let mut ceremonies = MockPasskeyCeremonies::new();
    ceremonies
        .expect_start_registration()
        .withf(|handle, name, shown, existing| {
            *handle == user_handle(UserId(7))
                && name == "user7@example.com"
                && shown == "user7@example.com"
                && existing == [vec![1, 2, 3]]
        })
        .returning(|_, _, _, _| {
            Ok(CeremonyStart {
                options: "{\"publicKey\":{}}".into(),
                challenge: "challenge".into(),
                state: "state".into(),
            })
        });
    m.passkeys = Some(ceremonies);
    m.challenges
        .expect_store_ceremony()
        .with(eq(ceremony(CeremonyKind::Registration, Some(7))), eq(now()))
        .times(1)
        .returning(|_, _| Ok(()));
    let options = start(m, true).await.unwrap();
    assert_eq!(options, "{\"publicKey\":{}}");
}

#[tokio::test]
async fn an_access_token_alone_starts_no_registration() {
    let mut m = Mocks::new();
    m.factors.expect_list_passkeys().returning(|_| Ok(vec![]));
    let mut ceremonies = MockPasskeyCeremonies::new();
    ceremonies.expect_start_registration().never();
    m.passkeys = Some(ceremonies);
    m.challenges.expect_store_ceremony().never();
    let err = start(m, false).await.unwrap_err();
    assert!(matches!(err, PasskeyError::WrongPassword));
    // Nor does a code that is not one (a user with TOTP may give one instead).
    let mut m = Mocks::new();
    m.factors.expect_list_passkeys().returning(|_| Ok(vec![]));
    m.factors.expect_find_totp().returning(|_| Ok(None));
    m.factors.expect_spend_recovery_code().never();
    let mut ceremonies = MockPasskeyCeremonies::new();
    ceremonies.expect_start_registration().never();
    m.passkeys = Some(ceremonies);
    let err = m
        .service()
        .passkeys
        .begin_passkey_registration(&principal(), Proof::Code("123456"), &ClientInfo::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PasskeyError::InvalidCode));
}

#[tokio::test]
async fn a_user_with_the_most_passkeys_starts_no_registration() {
    let mut m = Mocks::new();
    m.factors
        .expect_list_passkeys()
        .returning(|id| Ok(vec![stored(id.0); MAX_PASSKEYS]));
    let mut ceremonies = MockPasskeyCeremonies::new();
    ceremonies.expect_start_registration().never();
    m.passkeys = Some(ceremonies);
    m.challenges.expect_store_ceremony().never();
    let err = start(m, true).await.unwrap_err();
    assert!(matches!(err, PasskeyError::TooMany));
}

#[tokio::test]
async fn a_registration_is_finished_only_by_the_user_who_started_it() {
    for (kind, owner) in [
        (CeremonyKind::Registration, Some(8)),
        (CeremonyKind::Authentication, None),
    ] {
        let mut m = Mocks::new();
        let mut ceremonies = ceremonies();
        ceremonies.expect_finish_registration().never();
        m.passkeys = Some(ceremonies);
        m.challenges
            .expect_take_ceremony()
            .returning(move |_, _| Ok(Some(ceremony(kind, owner))));
        m.users.expect_apply().never();
        let err = m
            .service()
            .passkeys
            .finish_passkey_registration(&principal(), ANSWER, None, &ClientInfo::default())
            .await
            .unwrap_err();
        assert!(matches!(err, PasskeyError::InvalidResponse));
    }
}

#[tokio::test]
async fn a_verified_registration_stores_the_passkey_with_its_name_once() {
    for applied in [
        None,
        Some(Refusal::CredentialTaken),
        Some(Refusal::NotCurrent),
    ] {
        let mut m = Mocks::new();
        let mut ceremonies = ceremonies();
        ceremonies
            .expect_finish_registration()
            .with(eq("state"), eq(ANSWER))
            .returning(|_, _| {
                Ok(crate::domain::ports::RegisteredPasskey {
                    credential_id: vec![9],
                    credential: "new-credential".into(),
                })
            });
        m.passkeys = Some(ceremonies);
        m.challenges
            .expect_take_ceremony()
            .with(eq("challenge"), eq(now()))
            .returning(|_, _| Ok(Some(ceremony(CeremonyKind::Registration, Some(7)))));
        m.factors.expect_list_passkeys().returning(|_| Ok(vec![]));
        m.users
            .expect_apply()
            .withf(|change| {
                let [Edit::AddPasskey(passkey)] = change.edits.as_slice() else {
                    return false;
                };
                passkey.user_id == UserId(7)
                    && passkey.name == "Passkey 1"
                    && passkey.credential_id == [9]
                    // Added while the address is unverified: a reset removes it.
                    && passkey.added_unverified
                    // Only if the password is still the one of this session's login.
                    && change.conditions
                        == [Condition::Current {
                            credential_version: 0,
                        }]
                    && matches!(change.audit.as_slice(), [a] if a.kind == AuditKind::PasskeyAdded)
                    && change.mail.is_empty()
            })
            .times(1)
            .returning(move |change| {
                Ok(applied.map_or_else(
                    || Applied::Done(user(change.user.0, Role::User, false)),
                    Applied::Refused,
                ))
            });
        let result = m
            .service()
            .passkeys
            .finish_passkey_registration(&principal(), ANSWER, None, &ClientInfo::default())
            .await;
        match (applied, result) {
            (None, Ok(passkey)) => {
                assert_eq!(passkey.credential, "new-credential");
            }
            (Some(Refusal::CredentialTaken), Err(PasskeyError::AlreadyRegistered))
            | (Some(Refusal::NotCurrent), Err(PasskeyError::InvalidResponse)) => {}
            (applied, result) => panic!("{applied:?}: {result:?}"),
        }
    }
}

#[tokio::test]
async fn a_passkey_added_or_removed_is_announced_to_the_address_naming_it() {
    let mut m = Mocks::new();
    m.mailer = Some(crate::domain::ports::MockMailer::new());
    let mut ceremonies = ceremonies();
    ceremonies.expect_finish_registration().returning(|_, _| {
        Ok(crate::domain::ports::RegisteredPasskey {
            credential_id: vec![9],
            credential: "new-credential".into(),
        })
    });
    m.passkeys = Some(ceremonies);
    m.challenges
        .expect_take_ceremony()
        .returning(|_, _| Ok(Some(ceremony(CeremonyKind::Registration, Some(7)))));
    m.factors
        .expect_list_passkeys()
        .returning(|id| Ok(vec![stored(id.0)]));
    m.users
        .expect_apply()
        .withf(|change| {
            matches!(change.edits.as_slice(), [Edit::AddPasskey(_)])
                && change.mail
                    == [crate::domain::MailJob::FactorNotice {
                        user_id: UserId(7),
                        change: FactorChange::Added,
                        factors: vec!["passkey \"Phone\"".into()],
                    }]
        })
        .times(1)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    m.users
        .expect_apply()
        .withf(|change| {
            change.conditions == [Condition::HoldsPasskey(Uuid::from_u128(1))]
                && change.edits
                    == [Edit::RemoveFactors(FactorRemoval {
                        totp: false,
                        passkeys: vec![Uuid::from_u128(1)],
                    })]
                && change.mail
                    == [crate::domain::MailJob::FactorNotice {
                        user_id: UserId(7),
                        change: FactorChange::Removed,
                        factors: vec!["passkey \"Laptop\"".into()],
                    }]
        })
        .times(1)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    let service = m.service();
    service
        .passkeys
        .finish_passkey_registration(
            &principal(),
            ANSWER,
            Some("Phone".into()),
            &ClientInfo::default(),
        )
        .await
        .unwrap();
    service
        .passkeys
        .remove_passkey(&principal(), Uuid::from_u128(1), &ClientInfo::default())
        .await
        .unwrap();
}

/// A sign-in ceremony whose answer names the passkey `stored(7)`.
fn sign_in(m: &mut Mocks, verified: Result<VerifiedAssertion, CeremonyError>) {
    let mut ceremonies = ceremonies();
    ceremonies
        .expect_credential_of()
        .returning(|_| Ok(vec![1, 2, 3]));
    let mut verified = Some(verified);
    ceremonies
        .expect_finish_authentication()
        .withf(|state, answer, handle, credential| {
            state == "state"
                && answer == ANSWER
                && *handle == user_handle(UserId(7))
                && credential == "stored-credential"
        })
        .times(1)
        .returning(move |_, _, _, _| verified.take().unwrap());
    m.passkeys = Some(ceremonies);
    m.challenges
        .expect_take_ceremony()
        .returning(|_, _| Ok(Some(ceremony(CeremonyKind::Authentication, None))));
    m.factors
        .expect_find_passkey()
        .with(eq(vec![1u8, 2, 3]))
        .returning(|_| Ok(Some(stored(7))));
}

#[tokio::test]
async fn a_verified_passkey_opens_a_webauthn_session_and_stores_the_new_counter() {
    let mut m = Mocks::new();
    sign_in(
        &mut m,
        Ok(VerifiedAssertion {
            credential_id: vec![1, 2, 3],
            updated_credential: Some("counter-2".into()),
        }),
    );
    m.users
        .expect_find_user_by_id()
        .returning(|id| Ok(Some(user(id.0, Role::User, true))));
    m.factors
        .expect_touch_passkey()
        .with(
            eq(Uuid::from_u128(1)),
            eq(Some("counter-2".to_owned())),
            eq(now()),
        )
        .times(1)
        .returning(|_, _, _| Ok(()));
    m.sessions
        .expect_create_session()
        .withf(|s, _| s.methods == [AuthMethod::Webauthn] && s.user_id == UserId(7))
        .times(1)
        .returning(|s, _| Ok(session(s.id, s.user_id.0)));
    m.tokens.expect_issue().returning(|_| Ok("signed".into()));
    let pair = m
        .service()
        .passkeys
        .finish_passkey_login(ANSWER, ClientInfo::default())
        .await
        .unwrap();
    assert_eq!(pair.access_token, "signed");
}

#[tokio::test]
async fn a_bad_signature_or_an_inactive_user_opens_nothing() {
    for active in [true, false] {
        let mut m = Mocks::new();
        let verdict = if active {
            Err(CeremonyError::Rejected("bad signature".into()))
        } else {
            Ok(VerifiedAssertion {
                credential_id: vec![1, 2, 3],
                updated_credential: None,
            })
        };
        sign_in(&mut m, verdict);
        m.users
            .expect_find_user_by_id()
            .returning(move |id| Ok(Some(user(id.0, Role::User, active))));
        m.factors.expect_touch_passkey().never();
        m.sessions.expect_create_session().never();
        let err = m
            .service()
            .passkeys
            .finish_passkey_login(ANSWER, ClientInfo::default())
            .await
            .unwrap_err();
        if active {
            assert!(matches!(err, PasskeyError::InvalidResponse));
        } else {
            assert!(matches!(err, PasskeyError::Login(LoginError::Inactive)));
        }
    }
}

#[tokio::test]
async fn an_answer_to_a_spent_or_unknown_ceremony_is_refused_before_any_check() {
    let mut m = Mocks::new();
    let mut ceremonies = ceremonies();
    ceremonies.expect_finish_authentication().never();
    m.passkeys = Some(ceremonies);
    m.challenges
        .expect_take_ceremony()
        .returning(|_, _| Ok(None));
    m.factors.expect_find_passkey().never();
    let err = m
        .service()
        .passkeys
        .finish_passkey_login(ANSWER, ClientInfo::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PasskeyError::InvalidResponse));
}

#[tokio::test]
async fn renaming_anothers_passkey_is_not_found() {
    let mut m = Mocks::new();
    m.factors
        .expect_rename_passkey()
        .with(eq(UserId(7)), eq(Uuid::from_u128(5)), eq("Phone"))
        .returning(|_, _, _| Ok(false));
    let err = m
        .service()
        .passkeys
        .rename_passkey(&principal(), Uuid::from_u128(5), "Phone")
        .await
        .unwrap_err();
    assert!(matches!(err, PasskeyError::NotFound));
}

#[tokio::test]
async fn removing_anothers_passkey_is_not_found() {
    let mut m = Mocks::new();
    // Not among the caller's: nothing is removed, and nobody is told.
    m.factors
        .expect_list_passkeys()
        .with(eq(UserId(7)))
        .returning(|id| Ok(vec![stored(id.0)]));
    m.users.expect_apply().never();
    let err = m
        .service()
        .passkeys
        .remove_passkey(&principal(), Uuid::from_u128(5), &ClientInfo::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PasskeyError::NotFound));
}

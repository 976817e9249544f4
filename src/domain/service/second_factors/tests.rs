use crate::domain::mfa::{MfaChallenge, MfaTokenHash, RecoveryCodeHash};
use crate::domain::service::LoginError;
use crate::domain::service::LoginStep;
use chrono::TimeDelta;
use mockall::predicate::{always, eq};

use super::super::test_support::{Mocks, now, session, user};
use super::*;
use crate::domain::mfa::{TotpFactor, totp_step};
use crate::domain::ports::MockRateLimiter;
use crate::domain::{Applied, Email, Refusal, Role, SessionKey};

const TOKEN: &str = "the-mfa-token";

fn secret() -> TotpSecret {
    TotpSecret::from_bytes(b"12345678901234567890".to_vec())
}

/// The sealed form the test sealer gives `secret()` of user 7.
fn sealed() -> Vec<u8> {
    [
        totp_binding(UserId(7)).as_bytes(),
        &[0],
        secret().as_bytes(),
    ]
    .concat()
}

fn code_at(offset_steps: i64) -> String {
    format!("{:06}", secret().code_at(totp_step(now()) + offset_steps))
}

fn factor(last_step: Option<i64>) -> TotpFactor {
    TotpFactor {
        user_id: UserId(7),
        sealed_secret: sealed(),
        confirmed_at: Some(now() - TimeDelta::days(1)),
        last_step,
        added_unverified: false,
    }
}

fn challenge(expires_in: TimeDelta) -> MfaChallenge {
    MfaChallenge {
        user_id: UserId(7),
        credential_version: 0,
        expires_at: now() + expires_in,
        failures: 0,
        spent_at: None,
    }
}

fn enrolled(m: &mut Mocks) {
    m.factors.expect_factors().returning(|_| {
        Ok(Factors {
            totp: true,
            passkeys: 0,
        })
    });
}

/// A limiter that admits every attempt and expects the run to be cleared `clears` times and
/// a failure recorded `failures` times.
fn limiter(clears: usize, failures: usize) -> MockRateLimiter {
    let mut limiter = MockRateLimiter::new();
    limiter.expect_increment().returning(|_, _| Ok(1));
    limiter.expect_failures().returning(|_| Ok(None));
    limiter.expect_swap_failures().returning(|_, _, _| Ok(true));
    limiter
        .expect_clear_failures()
        .times(clears)
        .returning(|_| Ok(()));
    limiter
        .expect_record_failure()
        .times(failures)
        .returning(|_, _| Ok(()));
    limiter
}

/// A pending login of user 7, open for `expires_in`, with the user unchanged.
/// Completes the pending login of [`TOKEN`] with `proof`, on the service `m` makes.
async fn submit(m: Mocks, proof: SecondFactor<'_>) -> Result<TokenPair, MfaError> {
    m.service()
        .factors
        .complete_login(TOKEN, proof, ClientInfo::default())
        .await
}

fn pending(m: &mut Mocks, expires_in: TimeDelta) {
    m.challenges
        .expect_find_mfa_challenge()
        .with(eq(MfaTokenHash::of(TOKEN)))
        .returning(move |_| Ok(Some(challenge(expires_in))));
    m.users
        .expect_find_user_by_id()
        .returning(|id| Ok(Some(user(id.0, Role::User, true))));
}

fn expect_session(m: &mut Mocks, methods: Vec<AuthMethod>) {
    let stored = methods.clone();
    m.sessions
        .expect_create_session()
        .withf(move |s, key| s.methods == stored && matches!(key, SessionKey::RefreshToken(_)))
        .times(1)
        .returning(|s, _| {
            let mut opened = session(s.id, s.user_id.0);
            opened.methods = s.methods;
            Ok(opened)
        });
    m.tokens
        .expect_issue()
        .withf(move |claims| claims.methods == methods)
        .times(1)
        .returning(|_| Ok("signed".into()));
}

#[tokio::test]
async fn a_right_password_of_an_enrolled_user_opens_no_session_and_keeps_the_failure_run() {
    let mut m = Mocks::new();
    enrolled(&mut m);
    m.limiter = Some(limiter(0, 0));
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(7, Role::User, true))));
    m.hasher.expect_verify().returning(|_, _| Ok(true));
    m.sessions.expect_create_session().never();
    let expires = now() + TimeDelta::minutes(5);
    m.challenges
        .expect_store_mfa_challenge()
        .withf(move |c| {
            c.user_id == UserId(7)
                && c.expires_at == expires
                && c.hash == MfaTokenHash::of(&c.secret)
        })
        .times(1)
        .returning(|_| Ok(()));
    let step = m
        .service()
        .accounts
        .login(
            &Email::parse("user7@example.com").unwrap(),
            "pw",
            ClientInfo::default(),
        )
        .await
        .unwrap();
    let LoginStep::SecondFactor(pending) = step else {
        panic!("expected a second step");
    };
    assert_eq!(pending.mfa_token.len(), 43);
    assert_eq!(pending.methods, ["totp", "recovery_code"]);
}

#[tokio::test]
async fn a_user_without_a_second_factor_gets_a_password_session_and_a_clear_run() {
    let mut m = Mocks::new();
    m.limiter = Some(limiter(1, 0));
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(7, Role::User, true))));
    m.hasher.expect_verify().returning(|_, _| Ok(true));
    expect_session(&mut m, vec![AuthMethod::Password]);
    let step = m
        .service()
        .accounts
        .login(
            &Email::parse("user7@example.com").unwrap(),
            "pw",
            ClientInfo::default(),
        )
        .await
        .unwrap();
    assert!(matches!(step, LoginStep::Done(_)));
}

#[tokio::test]
async fn the_password_grant_refuses_an_enrolled_user_only_after_the_right_password() {
    for right in [true, false] {
        let mut m = Mocks::new();
        enrolled(&mut m);
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(7, Role::User, true))));
        m.hasher.expect_verify().returning(move |_, _| Ok(right));
        m.sessions.expect_create_session().never();
        m.challenges.expect_store_mfa_challenge().never();
        let err = m
            .service()
            .accounts
            .login_without_second_step(
                &Email::parse("user7@example.com").unwrap(),
                "pw",
                ClientInfo::default(),
            )
            .await
            .unwrap_err();
        if right {
            assert!(matches!(err, LoginError::SecondFactorRequired));
        } else {
            assert!(matches!(err, LoginError::InvalidCredentials));
        }
    }
}

#[tokio::test]
async fn a_current_code_completes_the_login_spends_it_and_the_pending_login() {
    for offset in [-1, 0, 1] {
        let mut m = Mocks::new();
        m.limiter = Some(limiter(1, 0));
        pending(&mut m, TimeDelta::minutes(5));
        m.factors
            .expect_find_totp()
            .returning(|_| Ok(Some(factor(Some(totp_step(now()) - 5)))));
        m.factors
            .expect_use_totp_step()
            .with(eq(UserId(7)), eq(totp_step(now()) + offset))
            .times(1)
            .returning(|_, _| Ok(true));
        m.challenges
            .expect_spend_mfa_challenge()
            .with(eq(MfaTokenHash::of(TOKEN)), eq(now()))
            .times(1)
            .returning(|_, _| Ok(true));
        expect_session(&mut m, vec![AuthMethod::Password, AuthMethod::Otp]);
        let pair = submit(m, SecondFactor::Code(&code_at(offset)))
            .await
            .unwrap();
        assert_eq!(pair.access_token, "signed");
    }
}

/// Expects a wrong code: the failure is dated, the pending login counts it, and it is
/// recorded; nothing is opened.
fn expect_wrong_code(m: &mut Mocks) {
    m.limiter = Some(limiter(0, 1));
    m.challenges
        .expect_fail_mfa_challenge()
        .with(eq(MfaTokenHash::of(TOKEN)), eq(5), eq(now()))
        .times(1)
        .returning(|_, _, _| Ok(()));
    m.challenges.expect_spend_mfa_challenge().never();
    m.sessions.expect_create_session().never();
}

#[tokio::test]
async fn wrong_replayed_far_and_malformed_codes_count_as_failures_and_open_nothing() {
    let step = totp_step(now());
    let cases: [(String, Option<i64>); 5] = [
        // A replay: this step was used already.
        (code_at(0), Some(step)),
        // An older code of the window, after a newer one was used.
        (code_at(-1), Some(step)),
        // Two steps away.
        (code_at(2), None),
        ("12345".into(), None),
        ("abcdef".into(), None),
    ];
    for (code, last_step) in cases {
        let mut m = Mocks::new();
        expect_wrong_code(&mut m);
        pending(&mut m, TimeDelta::minutes(5));
        m.factors
            .expect_find_totp()
            .returning(move |_| Ok(Some(factor(last_step))));
        m.factors.expect_use_totp_step().never();
        let err = submit(m, SecondFactor::Code(&code)).await.unwrap_err();
        assert!(matches!(err, MfaError::InvalidCode), "{code}");
    }
}

#[tokio::test]
async fn a_code_that_loses_the_race_for_its_step_is_refused() {
    let mut m = Mocks::new();
    expect_wrong_code(&mut m);
    pending(&mut m, TimeDelta::minutes(5));
    m.factors
        .expect_find_totp()
        .returning(|_| Ok(Some(factor(None))));
    m.factors.expect_use_totp_step().returning(|_, _| Ok(false));
    let err = submit(m, SecondFactor::Code(&code_at(0)))
        .await
        .unwrap_err();
    assert!(matches!(err, MfaError::InvalidCode));
}

#[tokio::test]
async fn an_expired_spent_unknown_or_outdated_pending_login_is_refused_before_any_check() {
    for case in 0..4 {
        let mut m = Mocks::new();
        m.limiter = Some(limiter(0, 0));
        m.challenges
            .expect_find_mfa_challenge()
            .returning(move |_| {
                Ok(match case {
                    0 => Some(challenge(TimeDelta::zero())),
                    1 => Some(MfaChallenge {
                        spent_at: Some(now()),
                        ..challenge(TimeDelta::minutes(5))
                    }),
                    2 => None,
                    _ => Some(MfaChallenge {
                        credential_version: 1,
                        ..challenge(TimeDelta::minutes(5))
                    }),
                })
            });
        m.users
            .expect_find_user_by_id()
            .returning(|id| Ok(Some(user(id.0, Role::User, true))));
        m.factors.expect_find_totp().never();
        m.challenges.expect_fail_mfa_challenge().never();
        let err = submit(m, SecondFactor::Code(&code_at(0)))
            .await
            .unwrap_err();
        assert!(matches!(err, MfaError::InvalidCode), "case {case}");
    }
}

#[tokio::test]
async fn a_recovery_code_completes_the_login_once() {
    for unused in [true, false] {
        let mut m = Mocks::new();
        pending(&mut m, TimeDelta::minutes(5));
        let typed = "ABCD-efgh-ijkl-mnop";
        m.factors
            .expect_spend_recovery_code()
            .with(
                eq(UserId(7)),
                eq(RecoveryCodeHash::of_typed("abcdefghijklmnop").unwrap()),
                always(),
            )
            .times(1)
            .returning(move |_, _, _| Ok(unused));
        if unused {
            m.limiter = Some(limiter(1, 0));
            m.challenges
                .expect_spend_mfa_challenge()
                .returning(|_, _| Ok(true));
            expect_session(&mut m, vec![AuthMethod::Password, AuthMethod::RecoveryCode]);
        } else {
            expect_wrong_code(&mut m);
        }
        let result = submit(m, SecondFactor::RecoveryCode(typed)).await;
        assert_eq!(result.is_ok(), unused);
    }
}

#[tokio::test]
async fn the_failure_delay_refuses_a_code_before_it_is_checked() {
    let mut m = Mocks::new();
    let mut limiter = MockRateLimiter::new();
    limiter.expect_increment().returning(|_, _| Ok(1));
    limiter.expect_failures().returning(|_| {
        Ok(Some(crate::domain::ports::FailureRecord {
            count: 9,
            last_at: now(),
        }))
    });
    m.limiter = Some(limiter);
    pending(&mut m, TimeDelta::minutes(5));
    m.factors.expect_find_totp().never();
    m.challenges.expect_fail_mfa_challenge().never();
    let err = submit(m, SecondFactor::Code(&code_at(0)))
        .await
        .unwrap_err();
    assert!(matches!(err, MfaError::Throttled(_)));
}

fn principal() -> Principal {
    Principal {
        user: user(7, Role::User, true),
        session_id: None,
    }
}

/// `begin_totp` with the password `password`, which the hasher finds `right`.
async fn enrol(m: Mocks, right: bool) -> Result<TotpEnrolment, MfaError> {
    let mut m = m;
    m.hasher
        .expect_verify()
        .withf(|candidate, hash| candidate == "pw" && hash.as_str() == "hash-of-user-7")
        .returning(move |_, _| Ok(right));
    m.service()
        .factors
        .begin_totp(&principal(), Proof::Password("pw"), &ClientInfo::default())
        .await
}

#[tokio::test]
async fn an_enrolment_stores_the_secret_sealed_to_its_user_and_shows_it_once() {
    let mut m = Mocks::new();
    m.factors.expect_find_totp().returning(|_| Ok(None));
    m.factors
        .expect_store_pending_totp()
        .withf(|id, sealed, _| {
            *id == UserId(7) && sealed.starts_with(totp_binding(UserId(7)).as_bytes())
        })
        .times(1)
        .returning(|_, _, _| Ok(true));
    let enrolment = enrol(m, true).await.unwrap();
    assert!(
        enrolment
            .uri
            .starts_with("otpauth://totp/Portcullis:user7@example.com?secret=")
    );
    assert!(enrolment.uri.contains(&enrolment.secret.base32()));

    // Confirmed already, seen before the password is asked, or by the store after it.
    let mut m = Mocks::new();
    m.factors
        .expect_find_totp()
        .returning(|_| Ok(Some(factor(None))));
    m.hasher.expect_verify().never();
    let err = m
        .service()
        .factors
        .begin_totp(&principal(), Proof::Password("pw"), &ClientInfo::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MfaError::AlreadyEnabled));
    let mut m = Mocks::new();
    m.factors.expect_find_totp().returning(|_| Ok(None));
    m.factors
        .expect_store_pending_totp()
        .returning(|_, _, _| Ok(false));
    let err = enrol(m, true).await.unwrap_err();
    assert!(matches!(err, MfaError::AlreadyEnabled));
}

#[tokio::test]
async fn an_access_token_alone_cannot_start_an_enrolment() {
    let mut m = Mocks::new();
    m.factors.expect_find_totp().returning(|_| Ok(None));
    m.factors.expect_store_pending_totp().never();
    let err = enrol(m, false).await.unwrap_err();
    assert!(matches!(err, MfaError::WrongPassword));
}

fn unconfirmed(m: &mut Mocks) {
    m.factors.expect_find_totp().returning(|_| {
        Ok(Some(TotpFactor {
            confirmed_at: None,
            ..factor(None)
        }))
    });
}

#[tokio::test]
async fn a_current_code_confirms_the_enrolment_with_ten_recovery_codes() {
    let mut m = Mocks::new();
    unconfirmed(&mut m);
    m.users
        .expect_apply()
        .withf(|change| {
            let [
                Edit::ConfirmTotp {
                    step,
                    recovery,
                    added_unverified,
                },
            ] = change.edits.as_slice()
            else {
                return false;
            };
            change.user == UserId(7)
                && change.conditions
                    == [
                        Condition::Current {
                            credential_version: 0,
                        },
                        Condition::PendingTotpIs(sealed()),
                    ]
                && *step == totp_step(now())
                && recovery.len() == 10
                && matches!(change.audit.as_slice(), [a] if a.kind == AuditKind::TotpEnabled)
                // The address is unverified: a reset will remove it.
                && *added_unverified
                // No transport: no notice.
                && change.mail.is_empty()
        })
        .times(1)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    let codes = m
        .service()
        .factors
        .confirm_totp(&principal(), &code_at(0), &ClientInfo::default())
        .await
        .unwrap();
    assert_eq!(codes.len(), 10);
}

#[tokio::test]
async fn a_wrong_code_or_a_replaced_secret_confirms_nothing() {
    let mut m = Mocks::new();
    unconfirmed(&mut m);
    m.users.expect_apply().never();
    let err = m
        .service()
        .factors
        .confirm_totp(&principal(), &code_at(3), &ClientInfo::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MfaError::InvalidCode));

    let mut m = Mocks::new();
    unconfirmed(&mut m);
    m.users
        .expect_apply()
        .returning(|_| Ok(Applied::Refused(Refusal::TotpChanged)));
    let err = m
        .service()
        .factors
        .confirm_totp(&principal(), &code_at(0), &ClientInfo::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MfaError::InvalidCode));
}

#[tokio::test]
async fn removing_the_factor_takes_a_current_unused_code_and_keeps_the_passkeys() {
    let mut m = Mocks::new();
    m.limiter = Some(limiter(1, 0));
    m.factors
        .expect_find_totp()
        .returning(|_| Ok(Some(factor(None))));
    m.factors.expect_use_totp_step().returning(|_, _| Ok(true));
    m.users
        .expect_apply()
        .withf(|change| {
            change.user == UserId(7)
                && change.conditions == [Condition::HasFactors { passkeys: false }]
                && change.edits
                    == [Edit::RemoveFactors(FactorRemoval {
                        totp: true,
                        passkeys: Vec::new(),
                    })]
                && matches!(change.audit.as_slice(), [a] if a.kind == AuditKind::TotpDisabled)
        })
        .times(1)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    m.service()
        .factors
        .disable_totp(
            &principal(),
            Proof::Code(&code_at(0)),
            &ClientInfo::default(),
        )
        .await
        .unwrap();

    let mut m = Mocks::new();
    m.limiter = Some(limiter(0, 1));
    m.factors
        .expect_find_totp()
        .returning(|_| Ok(Some(factor(Some(totp_step(now()))))));
    m.users.expect_apply().never();
    let err = m
        .service()
        .factors
        .disable_totp(
            &principal(),
            Proof::Code(&code_at(0)),
            &ClientInfo::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MfaError::InvalidCode));
}

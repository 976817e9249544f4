use mockall::predicate::{always, eq};

use super::super::test_support::{Mocks, session, user};
use super::*;
use crate::domain::mfa::FactorRemoval;
use crate::domain::ports::MockMailer;
use crate::domain::{LinkTokenRecord, PasswordHash, Role, SessionId, UserId};

fn email(address: &str) -> Email {
    Email::parse(address).unwrap()
}

fn client() -> ClientInfo {
    ClientInfo::new(None, Some("203.0.113.7".into()))
}

/// Mocks with a mailer that accepts everything.
fn with_mail() -> Mocks {
    let mut m = Mocks::new();
    let mut mailer = MockMailer::new();
    mailer.expect_send().returning(|_| Ok("250 OK".into()));
    m.mailer = Some(mailer);
    m
}

fn record(m: &Mocks, kind: LinkTokenKind) -> LinkTokenRecord {
    LinkTokenRecord {
        kind,
        user: user(5, Role::User, true),
        email: "user5@example.com".into(),
        new_email: None,
        keep_session: None,
        expires_at: m.now + TimeDelta::minutes(10),
        spent_at: None,
    }
}

fn principal() -> Principal {
    Principal {
        user: user(5, Role::User, true),
        session_id: Some(SessionId::random()),
    }
}

/// The user has no second factor.
fn no_factors(m: &mut Mocks) {
    m.factors.expect_find_totp().returning(|_| Ok(None));
    m.factors
        .expect_list_passkeys()
        .returning(|_| Ok(Vec::new()));
}

#[tokio::test]
async fn forgot_queues_one_job_for_any_address_and_looks_nothing_up() {
    let mut m = with_mail();
    m.users.expect_find_user_by_email().never();
    m.outbox
        .expect_enqueue_mail()
        .with(
            eq(MailJob::PasswordReset {
                email: email("nobody@example.com"),
                requested_by: Some(client()),
            }),
            always(),
        )
        .times(1)
        .returning(|_, _| Ok(()));
    m.service()
        .recovery
        .forgot_password(email("nobody@example.com"), &client())
        .await
        .unwrap();
}

#[tokio::test]
async fn without_a_transport_forgot_is_refused_before_any_limit_or_write() {
    let mut m = Mocks::new();
    m.outbox.expect_enqueue_mail().never();
    let mut limiter = crate::domain::ports::MockRateLimiter::new();
    limiter.expect_increment().never();
    m.limiter = Some(limiter);
    let err = m
        .service()
        .recovery
        .forgot_password(email("ann@example.com"), &client())
        .await
        .unwrap_err();
    assert!(matches!(err, MailRequestError::NotConfigured));
}

#[tokio::test]
async fn forgot_over_the_mail_limit_queues_nothing() {
    let mut m = with_mail();
    let mut limiter = crate::domain::ports::MockRateLimiter::new();
    limiter
        .expect_increment()
        .returning(|bucket, _| Ok(if bucket.starts_with("mail:") { 99 } else { 1 }));
    m.limiter = Some(limiter);
    m.outbox.expect_enqueue_mail().never();
    let err = m
        .service()
        .recovery
        .forgot_password(email("ann@example.com"), &client())
        .await
        .unwrap_err();
    assert!(matches!(err, MailRequestError::Throttled(_)));
}

#[tokio::test]
async fn a_reset_token_is_refused_when_unknown_spent_expired_or_of_another_kind() {
    type Spoil = fn(&mut LinkTokenRecord, DateTime);
    type DateTime = chrono::DateTime<chrono::Utc>;
    let spoils: [(&str, Spoil); 5] = [
        ("another kind", |r, _| r.kind = LinkTokenKind::Verification),
        ("spent", |r, now| r.spent_at = Some(now)),
        ("expired", |r, now| r.expires_at = now),
        ("user deactivated", |r, _| r.user.is_active = false),
        ("address changed", |r, _| r.email = "old@example.com".into()),
    ];
    for (case, spoil) in spoils {
        let mut m = with_mail();
        let mut rec = record(&m, LinkTokenKind::PasswordReset);
        spoil(&mut rec, m.now);
        m.links
            .expect_find_email_token()
            .returning(move |_| Ok(Some(rec.clone())));
        m.hasher.expect_hash().never();
        m.users.expect_apply().never();
        let err = m
            .service()
            .recovery
            .reset_password("token", Password::parse("new password").unwrap(), &client())
            .await
            .unwrap_err();
        assert!(matches!(err, RedeemError::InvalidToken), "{case}");
    }
    let mut m = with_mail();
    m.links.expect_find_email_token().returning(|_| Ok(None));
    m.hasher.expect_hash().never();
    let err = m
        .service()
        .recovery
        .reset_password(
            "unknown",
            Password::parse("new password").unwrap(),
            &client(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RedeemError::InvalidToken));
    // Huge or empty tokens are not even looked up.
    let mut m = with_mail();
    m.links.expect_find_email_token().never();
    let service = m.service();
    for token in [String::new(), "x".repeat(129)] {
        assert!(matches!(
            service
                .recovery
                .reset_password(&token, Password::parse("new password").unwrap(), &client())
                .await,
            Err(RedeemError::InvalidToken)
        ));
    }
}

#[tokio::test]
async fn a_reset_sets_the_password_atomically_and_clears_the_failure_delay() {
    let mut m = with_mail();
    let rec = record(&m, LinkTokenKind::PasswordReset);
    m.links
        .expect_find_email_token()
        .with(eq(LinkTokenHash::of("token")))
        .returning(move |_| Ok(Some(rec.clone())));
    m.hasher
        .expect_hash()
        .times(1)
        .returning(|_| Ok(PasswordHash::new("new-hash".into())));
    no_factors(&mut m);
    m.users
        .expect_apply()
        .withf(|change| {
            let [audit] = change.audit.as_slice() else {
                return false;
            };
            change.user == UserId(5)
                && change.conditions
                    == [
                        Condition::Current {
                            credential_version: 0,
                        },
                        Condition::SpendsToken(LinkTokenHash::of("token")),
                        Condition::UnverifiedFactorsAre(FactorRemoval::default()),
                    ]
                && change.edits
                    == [
                        Edit::SetPasswordHash(PasswordHash::new("new-hash".into())),
                        Edit::BumpCredentialVersion,
                        Edit::Touch,
                        Edit::EndSessions { keep: None },
                        Edit::SetEmailVerified(true),
                        Edit::SpendTokens(vec![
                            LinkTokenKind::PasswordReset,
                            LinkTokenKind::EmailChange,
                        ]),
                        Edit::RemoveFactors(FactorRemoval::default()),
                    ]
                && audit.kind == AuditKind::PasswordReset
                && audit.client == client()
                && change.mail.is_empty()
        })
        .times(1)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    let mut limiter = crate::domain::ports::MockRateLimiter::new();
    limiter
        .expect_clear_failures()
        .withf(|key| {
            *key == super::super::limits::subject_key("failures", email("user5@example.com").key())
        })
        .times(1)
        .returning(|_| Ok(()));
    m.limiter = Some(limiter);
    m.service()
        .recovery
        .reset_password("token", Password::parse("new password").unwrap(), &client())
        .await
        .unwrap();
}

/// A passkey of user 5 named `name`, added while the address was `unverified` or not.
fn passkey(n: u128, name: &str, unverified: bool) -> crate::domain::mfa::Passkey {
    crate::domain::mfa::Passkey {
        id: uuid::Uuid::from_u128(n),
        user_id: UserId(5),
        name: name.into(),
        created_at: chrono::Utc::now(),
        last_used_at: None,
        credential_id: vec![u8::try_from(n).unwrap()],
        credential: String::new(),
        user_handle: uuid::Uuid::nil(),
        added_unverified: unverified,
    }
}

#[tokio::test]
async fn a_reset_removes_what_was_added_before_the_address_was_proved_and_says_so() {
    let mut m = with_mail();
    let rec = record(&m, LinkTokenKind::PasswordReset);
    m.links
        .expect_find_email_token()
        .returning(move |_| Ok(Some(rec.clone())));
    m.hasher
        .expect_hash()
        .returning(|_| Ok(PasswordHash::new("h".into())));
    m.factors.expect_find_totp().returning(|_| {
        Ok(Some(crate::domain::mfa::TotpFactor {
            user_id: UserId(5),
            sealed_secret: Vec::new(),
            confirmed_at: Some(chrono::Utc::now()),
            last_step: None,
            added_unverified: true,
        }))
    });
    m.factors.expect_list_passkeys().returning(|_| {
        Ok(vec![
            passkey(1, "Owner's", false),
            passkey(2, "Impostor's", true),
        ])
    });
    // The first attempt finds a factor added meanwhile; the second reads again.
    let mut seq = mockall::Sequence::new();
    m.users
        .expect_apply()
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok(Applied::Refused(Refusal::FactorsChanged)));
    m.users
        .expect_apply()
        .withf(|change| {
            let removed = "TOTP (authenticator app), passkey \"Impostor's\"";
            let removal = FactorRemoval {
                totp: true,
                passkeys: vec![uuid::Uuid::from_u128(2)],
            };
            let [audit] = change.audit.as_slice() else {
                return false;
            };
            change
                .conditions
                .contains(&Condition::UnverifiedFactorsAre(removal.clone()))
                && change.edits.last() == Some(&Edit::RemoveFactors(removal))
                && audit.detail.get("factors_removed").map(String::as_str) == Some(removed)
                && change.mail
                    == [MailJob::FactorNotice {
                        user_id: UserId(5),
                        change: FactorChange::RemovedByReset,
                        factors: vec![
                            "TOTP (authenticator app)".into(),
                            "passkey \"Impostor's\"".into(),
                        ],
                    }]
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    m.service()
        .recovery
        .reset_password("token", Password::parse("new password").unwrap(), &client())
        .await
        .unwrap();
}

#[tokio::test]
async fn forgot_over_the_addresss_mail_budget_answers_as_usual_and_queues_nothing() {
    let mut m = with_mail();
    let mut limiter = crate::domain::ports::MockRateLimiter::new();
    limiter
        .expect_increment()
        .returning(|bucket, _| Ok(if bucket.starts_with("mail_to:") { 4 } else { 1 }));
    m.limiter = Some(limiter);
    m.outbox.expect_enqueue_mail().never();
    m.service()
        .recovery
        .forgot_password(email("ann@example.com"), &client())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_reset_that_loses_a_race_for_its_token_is_refused() {
    let mut m = with_mail();
    let rec = record(&m, LinkTokenKind::PasswordReset);
    m.links
        .expect_find_email_token()
        .returning(move |_| Ok(Some(rec.clone())));
    m.hasher
        .expect_hash()
        .returning(|_| Ok(PasswordHash::new("h".into())));
    no_factors(&mut m);
    m.users
        .expect_apply()
        .returning(|_| Ok(Applied::Refused(Refusal::TokenSpent)));
    let err = m
        .service()
        .recovery
        .reset_password("token", Password::parse("new password").unwrap(), &client())
        .await
        .unwrap_err();
    assert!(matches!(err, RedeemError::InvalidToken));
}

#[tokio::test]
async fn a_verified_address_needs_no_verification_mail() {
    let mut m = with_mail();
    m.outbox.expect_enqueue_mail().never();
    let mut verified = principal();
    verified.user.email_verified = true;
    let err = m
        .service()
        .recovery
        .request_verification(&verified, &client())
        .await
        .unwrap_err();
    assert!(matches!(err, MailRequestError::AlreadyVerified));
}

#[tokio::test]
async fn an_email_change_with_a_wrong_password_queues_nothing() {
    let mut m = with_mail();
    m.hasher.expect_verify().returning(|_, _| Ok(false));
    m.outbox.expect_enqueue_mail().never();
    let err = m
        .service()
        .recovery
        .request_email_change(&principal(), email("new@example.com"), "wrong", &client())
        .await
        .unwrap_err();
    assert!(matches!(err, MailRequestError::WrongPassword));
}

#[tokio::test]
async fn an_unverified_login_is_refused_only_when_verification_is_required() {
    for required in [false, true] {
        let mut m = Mocks::new();
        m.policy.mail.require_verified = required;
        m.users
            .expect_find_user_by_email()
            .returning(|_| Ok(Some(user(5, Role::User, true))));
        m.hasher.expect_verify().returning(|_, _| Ok(true));
        m.sessions
            .expect_create_session()
            .returning(|s, _| Ok(session(s.id, 5)));
        m.tokens.expect_issue().returning(|_| Ok("t".into()));
        let result = m
            .service()
            .accounts
            .login(&email("user5@example.com"), "right", client())
            .await;
        assert_eq!(
            matches!(result, Err(crate::domain::service::LoginError::Unverified)),
            required
        );
    }
}

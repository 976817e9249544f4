use mockall::predicate::{always, eq};

use super::super::test_support::{Mocks, user};
use super::*;
use crate::domain::SessionId;
use crate::domain::ports::MockMailer;

fn admin() -> Principal {
    Principal {
        user: user(1, Role::Admin, true),
        session_id: Some(SessionId::random()),
    }
}

#[tokio::test]
async fn promoting_an_unknown_email_fails_and_changes_nothing() {
    let mut m = Mocks::new();
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    m.users.expect_apply().never();
    let email = Email::parse("ghost@example.com").unwrap();
    let err = m
        .service()
        .admin
        .set_role(&email, Role::Admin)
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::UnknownUser));
}

#[tokio::test]
async fn promoting_changes_the_role_of_the_user_found_by_email_and_records_it() {
    let mut m = Mocks::new();
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(9, Role::User, true))));
    m.users
        .expect_apply()
        .withf(|change| {
            let [audit] = change.audit.as_slice() else {
                return false;
            };
            change.user == UserId(9)
                && change.conditions.is_empty()
                && change.edits == [Edit::SetRole(Role::Admin), Edit::Touch]
                && audit.kind == AuditKind::UserUpdated
                && audit.user_id == Some(UserId(9))
                && audit.detail["changes"] == "role=admin"
                && audit.detail["via"] == "cli"
                && change.mail.is_empty()
        })
        .times(1)
        .returning(|_| Ok(Applied::Done(user(9, Role::Admin, true))));
    let email = Email::parse("user9@example.com").unwrap();
    let updated = m
        .service()
        .admin
        .set_role(&email, Role::Admin)
        .await
        .unwrap();
    assert_eq!(updated.role, Role::Admin);
}

#[tokio::test]
async fn the_last_admin_rule_of_storage_reaches_the_operator() {
    let mut m = Mocks::new();
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(1, Role::Admin, true))));
    m.users
        .expect_apply()
        .returning(|_| Ok(Applied::Refused(Refusal::LastAdmin)));
    let email = Email::parse("user1@example.com").unwrap();
    let err = m
        .service()
        .admin
        .set_active(&email, false)
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::LastAdmin));
}

#[tokio::test]
async fn a_deactivation_by_an_admin_ends_everything_keeps_an_admin_and_names_who_asked() {
    let mut m = Mocks::new();
    m.users
        .expect_apply()
        .withf(|change| {
            let [audit] = change.audit.as_slice() else {
                return false;
            };
            change.conditions == [Condition::LeavesAnActiveAdmin]
                && change.edits
                    == [
                        Edit::SetActive(false),
                        Edit::Touch,
                        Edit::BumpCredentialVersion,
                        Edit::EndSessions { keep: None },
                    ]
                && audit.actor_id == Some(UserId(1))
                && audit.user_id == Some(UserId(9))
                && audit.client.ip.as_deref() == Some("198.51.100.4")
        })
        .times(1)
        .returning(|_| Ok(Applied::Done(user(9, Role::User, false))));
    let admin = admin();
    let client = ClientInfo::new(None, Some("198.51.100.4".into()));
    let changes = UserChanges {
        is_active: Some(false),
        ..UserChanges::default()
    };
    m.service()
        .admin
        .update_account(Actor::Admin(&admin, &client), UserId(9), changes)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_invited_user_gets_a_set_password_link_and_needs_mail() {
    let mut m = Mocks::new();
    m.users.expect_create_user().never();
    let invite = || NewAccount {
        email: Email::parse("new@example.com").unwrap(),
        full_name: None,
        role: Role::User,
        password: None,
    };
    let admin = admin();
    let client = ClientInfo::default();
    let err = m
        .service()
        .admin
        .create_account(Actor::Admin(&admin, &client), invite())
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::MailNotConfigured));

    let mut m = Mocks::new();
    m.mailer = Some(MockMailer::new());
    m.hasher
        .expect_hash()
        .returning(|_| Ok(crate::domain::PasswordHash::new("h".into())));
    m.users
        .expect_create_user()
        .withf(|u| !u.send_verification && u.audit.kind == AuditKind::UserCreated)
        .returning(|_| Ok(user(7, Role::User, true)));
    m.outbox
        .expect_enqueue_mail()
        .with(eq(MailJob::Invitation { user_id: UserId(7) }), always())
        .times(1)
        .returning(|_, _| Ok(()));
    m.service()
        .admin
        .create_account(Actor::Admin(&admin, &client), invite())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_admins_reset_link_is_recorded_at_once_and_sent_within_the_budget() {
    let admin = admin();
    let client = ClientInfo::new(Some("console"), Some("198.51.100.4".into()));
    for (spent, queued) in [(false, true), (true, false)] {
        let mut m = Mocks::new();
        m.mailer = Some(MockMailer::new());
        let mut limiter = crate::domain::ports::MockRateLimiter::new();
        limiter
            .expect_increment()
            .returning(move |_, _| Ok(if spent { 4 } else { 1 }));
        m.limiter = Some(limiter);
        m.users
            .expect_find_user_by_id()
            .returning(|id| Ok(Some(user(id.0, Role::User, true))));
        let recorded = |audit: &NewAuditEvent, mail: &str| {
            audit.kind == AuditKind::PasswordResetRequested
                && audit.user_id == Some(UserId(9))
                && audit.actor_id == Some(UserId(1))
                && audit.client.ip.as_deref() == Some("198.51.100.4")
                && audit
                    .detail
                    .get("mail")
                    .is_some_and(|m| m.starts_with(mail))
        };
        if queued {
            m.users
                .expect_apply()
                .withf(move |change| {
                    change.conditions.is_empty()
                        && change.edits.is_empty()
                        && change.mail
                            == [MailJob::PasswordReset {
                                email: Email::parse("user9@example.com").unwrap(),
                                requested_by: None,
                            }]
                        && matches!(change.audit.as_slice(), [a] if recorded(a, "queued"))
                })
                .times(1)
                .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
        } else {
            m.users.expect_apply().never();
            m.audit
                .expect_record_audit()
                .withf(move |audit| recorded(audit, "not sent"))
                .times(1)
                .returning(|_| Ok(()));
        }
        m.service()
            .admin
            .send_reset_link(Actor::Admin(&admin, &client), UserId(9))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn an_admin_resets_every_factor_of_a_user_and_it_is_recorded() {
    let mut m = Mocks::new();
    m.users
        .expect_find_user_by_id()
        .returning(|id| Ok(Some(user(id.0, Role::User, true))));
    m.factors.expect_find_totp().returning(|_| Ok(None));
    m.factors
        .expect_list_passkeys()
        .returning(|_| Ok(Vec::new()));
    m.users
        .expect_apply()
        .withf(|change| {
            let [audit] = change.audit.as_slice() else {
                return false;
            };
            change.user == UserId(9)
                && change.conditions == [Condition::HasFactors { passkeys: true }]
                && change.edits
                    == [
                        Edit::RemoveFactors(FactorRemoval {
                            totp: true,
                            passkeys: Vec::new(),
                        }),
                        Edit::RemoveAllPasskeys,
                    ]
                && audit.kind == AuditKind::MfaReset
                && audit.actor_id == Some(UserId(1))
                && change.mail.is_empty()
        })
        .times(1)
        .returning(|change| Ok(Applied::Done(user(change.user.0, Role::User, true))));
    let admin = admin();
    let client = ClientInfo::default();
    assert!(
        m.service()
            .admin
            .reset_factors(Actor::Admin(&admin, &client), UserId(9))
            .await
            .unwrap()
    );

    let mut m = Mocks::new();
    m.users.expect_find_user_by_id().returning(|_| Ok(None));
    m.users.expect_apply().never();
    let err = m
        .service()
        .admin
        .reset_factors(Actor::Operator, UserId(404))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::UnknownUser));
}

#[tokio::test]
async fn deleting_an_unknown_id_is_not_found() {
    let mut m = Mocks::new();
    m.users
        .expect_apply()
        .withf(|change| {
            change.conditions == [Condition::LeavesAnActiveAdmin]
                && change.edits == [Edit::Delete]
                && change.audit.len() == 1
        })
        .returning(|_| Ok(Applied::Refused(Refusal::UnknownUser)));
    let admin = admin();
    let client = ClientInfo::default();
    let err = m
        .service()
        .admin
        .delete_account(Actor::Admin(&admin, &client), UserId(404))
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::UnknownUser));
}

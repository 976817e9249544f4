use crate::domain::{AuditKind, ClientInfo};
use mockall::predicate::{always, eq};

use super::super::test_support::{Mocks, user};
use super::*;
use crate::domain::ports::MockMailer;
use crate::domain::{Role, SessionId, UserId};

fn email(address: &str) -> Email {
    Email::parse(address).unwrap()
}

fn client() -> ClientInfo {
    ClientInfo::new(None, Some("203.0.113.7".into()))
}

/// Mocks whose outbox hands out `job` once, and records how it was settled.
fn delivering(job: MailJob, attempts: u32) -> Mocks {
    let mut m = Mocks::new();
    let queued_at = m.now;
    m.outbox
        .expect_claim_mail()
        .times(1)
        .returning(move |_, _, _| {
            Ok(vec![QueuedMail {
                id: 1,
                job: job.clone(),
                attempts,
                queued_at,
            }])
        });
    m
}

#[tokio::test]
async fn a_reset_job_for_an_unknown_or_inactive_address_sends_nothing() {
    for found in [None, Some(user(5, Role::User, false))] {
        let mut m = delivering(
            MailJob::PasswordReset {
                email: email("who@example.com"),
                requested_by: Some(client()),
            },
            0,
        );
        m.users
            .expect_find_user_by_email()
            .returning(move |_| Ok(found.clone()));
        m.links.expect_store_email_token().never();
        let mut mailer = MockMailer::new();
        mailer.expect_send().never();
        m.mailer = Some(mailer);
        m.outbox
            .expect_finish_mail()
            .times(1)
            .returning(|_, _| Ok(()));
        let done = m.service().delivery.deliver_mail().await.unwrap();
        assert_eq!(done[0].outcome, DeliveryOutcome::Dropped);
    }
}

#[tokio::test]
async fn a_reset_link_goes_to_the_address_on_the_account_not_the_look_alike_typed() {
    let mut m = delivering(
        MailJob::PasswordReset {
            email: email("us\u{435}r5@example.com"),
            requested_by: Some(client()),
        },
        0,
    );
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(5, Role::User, true))));
    let now = m.now;
    m.links
        .expect_store_email_token()
        .withf(move |t, audit| {
            t.kind == LinkTokenKind::PasswordReset
                && t.user_id == UserId(5)
                && t.expires_at == now + TimeDelta::minutes(30)
                // The request is on record with its client, now that the address is known
                // to be registered.
                && audit.as_ref().is_some_and(|a| {
                    a.kind == AuditKind::PasswordResetRequested
                        && a.user_id == Some(UserId(5))
                        && a.client == client()
                })
        })
        .times(1)
        .returning(|_, _| Ok(()));
    let mut mailer = MockMailer::new();
    mailer
        .expect_send()
        .withf(|mail| {
            mail.to == "user5@example.com"
                && mail.kind == MailKind::PasswordReset
                && mail.link.as_deref().is_some_and(|l| {
                    l.starts_with("http://127.0.0.1:8000/console/reset?token=") && l.len() > 43
                })
        })
        .times(1)
        .returning(|_| Ok("250 OK".into()));
    m.mailer = Some(mailer);
    m.outbox
        .expect_finish_mail()
        .times(1)
        .returning(|_, _| Ok(()));
    let done = m.service().delivery.deliver_mail().await.unwrap();
    assert_eq!(done[0].outcome, DeliveryOutcome::Sent);
}

#[tokio::test]
async fn a_failed_delivery_is_retried_later_and_given_up_after_the_limit() {
    for (attempts_before, rejected, expected) in [
        (0, false, DeliveryOutcome::Retrying),
        (7, false, DeliveryOutcome::Failed),
        (0, true, DeliveryOutcome::Failed),
    ] {
        let mut m = delivering(
            MailJob::Verification { user_id: UserId(5) },
            attempts_before,
        );
        m.users
            .expect_find_user_by_id()
            .returning(|_| Ok(Some(user(5, Role::User, true))));
        m.links.expect_store_email_token().returning(|_, _| Ok(()));
        let mut mailer = MockMailer::new();
        mailer.expect_send().returning(move |_| {
            Err(if rejected {
                MailError::Rejected("550 no such user".into())
            } else {
                MailError::Transient("connection refused".into())
            })
        });
        m.mailer = Some(mailer);
        let now = m.now;
        m.outbox
            .expect_retry_mail()
            .with(eq(1), eq(1), eq(now + TimeDelta::seconds(30)), always())
            .times(usize::from(expected == DeliveryOutcome::Retrying))
            .returning(|_, _, _, _| Ok(()));
        m.outbox
            .expect_fail_mail()
            .times(usize::from(expected == DeliveryOutcome::Failed))
            .returning(|_, _, _| Ok(()));
        let done = m.service().delivery.deliver_mail().await.unwrap();
        assert_eq!(done[0].outcome, expected, "{attempts_before} {rejected}");
    }
}

#[test]
fn retries_wait_twice_as_long_each_time_up_to_an_hour() {
    let base = TimeDelta::seconds(30);
    assert_eq!(retry_delay(base, 1), TimeDelta::seconds(30));
    assert_eq!(retry_delay(base, 2), TimeDelta::seconds(60));
    assert_eq!(retry_delay(base, 4), TimeDelta::seconds(240));
    assert_eq!(retry_delay(base, 30), MAX_RETRY_DELAY);
}

#[tokio::test]
async fn a_change_to_a_taken_address_warns_its_owner_instead_of_sending_a_link() {
    let keep = SessionId::random();
    let mut m = delivering(
        MailJob::EmailChange {
            user_id: UserId(5),
            new_email: email("user6@example.com"),
            keep: Some(keep),
        },
        0,
    );
    m.users
        .expect_find_user_by_id()
        .returning(|_| Ok(Some(user(5, Role::User, true))));
    m.users
        .expect_find_user_by_email()
        .returning(|_| Ok(Some(user(6, Role::User, true))));
    m.links.expect_store_email_token().never();
    let mut mailer = MockMailer::new();
    let mut seq = mockall::Sequence::new();
    mailer
        .expect_send()
        .withf(|mail| mail.kind == MailKind::EmailChangeNotice && mail.to == "user5@example.com")
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok("250".into()));
    mailer
        .expect_send()
        .withf(|mail| {
            mail.kind == MailKind::EmailInUse
                && mail.to == "user6@example.com"
                && mail.link.is_none()
        })
        .times(1)
        .in_sequence(&mut seq)
        .returning(|_| Ok("250".into()));
    m.mailer = Some(mailer);
    m.outbox.expect_finish_mail().returning(|_, _| Ok(()));
    m.service().delivery.deliver_mail().await.unwrap();
}

#[tokio::test]
async fn a_change_to_a_free_address_sends_its_link_there_bound_to_the_asking_session() {
    let keep = SessionId::random();
    let mut m = delivering(
        MailJob::EmailChange {
            user_id: UserId(5),
            new_email: email("fresh@example.com"),
            keep: Some(keep),
        },
        0,
    );
    m.users
        .expect_find_user_by_id()
        .returning(|_| Ok(Some(user(5, Role::User, true))));
    m.users.expect_find_user_by_email().returning(|_| Ok(None));
    m.links
        .expect_store_email_token()
        .withf(move |t, _| {
            t.kind == LinkTokenKind::EmailChange
                && t.new_email == Some(email("fresh@example.com"))
                && t.keep_session == Some(keep)
                && t.email == "user5@example.com"
        })
        .times(1)
        .returning(|_, _| Ok(()));
    let mut mailer = MockMailer::new();
    mailer
        .expect_send()
        .withf(|mail| mail.kind == MailKind::EmailChangeNotice)
        .times(1)
        .returning(|_| Ok("250".into()));
    mailer
        .expect_send()
        .withf(|mail| mail.kind == MailKind::EmailChange && mail.to == "fresh@example.com")
        .times(1)
        .returning(|_| Ok("250".into()));
    m.mailer = Some(mailer);
    m.outbox.expect_finish_mail().returning(|_, _| Ok(()));
    m.service().delivery.deliver_mail().await.unwrap();
}

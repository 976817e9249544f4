//! Account changes (the one write path of an account): every store applies a change whole, or,
//! when one of its conditions does not hold, keeps nothing of it and names the condition. In
//! memory, on SQLite and on PostgreSQL.

use chrono::TimeDelta;
use portcullis::domain::mfa::FactorRemoval;
use portcullis::domain::{
    AccountChange, Applied, AuditQuery, Condition, Edit, FullName, LinkTokenHash, LinkTokenKind,
    MailJob, NewLinkToken, PasswordHash, Refusal, Role, User, UserId,
};
use portcullis::outbound::Store;
use uuid::Uuid;

use crate::repository::{event, on_every_store, session, set_role, t0, update, user};

/// Everything a change could leave behind: the user, their sessions, their link token, the
/// audit trail and the outbox.
#[derive(Debug, PartialEq)]
struct Seen {
    user: Option<User>,
    live_sessions: usize,
    token_spent: bool,
    events: usize,
    pending_mail: u64,
}

async fn seen(store: &dyn Store, id: UserId, token: &LinkTokenHash) -> Seen {
    let users = store;
    Seen {
        user: users.find_user_by_id(id).await.unwrap(),
        live_sessions: users.list_live_sessions(id, t0(), 100).await.unwrap().len(),
        token_spent: users
            .find_email_token(token)
            .await
            .unwrap()
            .is_some_and(|t| t.spent_at.is_some()),
        events: users
            .list_audit(&AuditQuery {
                limit: 1000,
                ..AuditQuery::default()
            })
            .await
            .unwrap()
            .len(),
        pending_mail: store.mail_depth().await.unwrap().pending,
    }
}

/// A change of `alice` that touches everything: her password, name, sessions, link tokens, the
/// audit trail and the outbox, on `condition`, with `last` as its last edit.
fn everything(alice: &User, condition: Option<Condition>, last: Option<Edit>) -> AccountChange {
    let mut change = AccountChange::of(alice.id, t0() + TimeDelta::minutes(1));
    change.conditions.extend(condition);
    change
        .new_password(PasswordHash::new("changed".into()), None)
        .then(Edit::SetFullName(Some(FullName::parse("Changed").unwrap())))
        .then(Edit::SpendTokens(vec![LinkTokenKind::PasswordReset]))
        .then(last.unwrap_or(Edit::Touch))
        .recording(event())
        .mailing(Some(MailJob::Verification { user_id: alice.id }))
}

#[tokio::test]
async fn a_refused_change_keeps_nothing_and_names_the_condition_that_failed() {
    on_every_store(|store| async move {
        let users = store.as_ref();
        let alice = user(users, "alice@example.com").await;
        let bob = user(users, "bob@example.com").await;
        session(users, &alice).await;
        let token = NewLinkToken::generate(
            LinkTokenKind::PasswordReset,
            &alice,
            t0(),
            TimeDelta::hours(1),
        );
        users.store_email_token(token.clone(), None).await.unwrap();
        let mut bobs_key = crate::factor_repository::passkey(&bob, b"bob's", t0());
        assert!(
            users
                .apply(AccountChange::of(bob.id, t0()).then(Edit::AddPasskey(bobs_key.clone())))
                .await
                .unwrap()
                .kept()
        );
        let before = seen(store.as_ref(), alice.id, &token.hash).await;
        // Alice holds bob's credential id, under a passkey id of her own.
        bobs_key.user_id = alice.id;
        bobs_key.id = Uuid::new_v4();

        let cases = [
            (
                Some(Condition::Current {
                    credential_version: alice.credential_version + 1,
                }),
                None,
                Refusal::NotCurrent,
            ),
            (
                Some(Condition::SpendsToken(LinkTokenHash::of("unknown"))),
                None,
                Refusal::TokenSpent,
            ),
            (
                Some(Condition::AddressIs("alice@elsewhere.example".into())),
                None,
                Refusal::AddressChanged,
            ),
            (
                Some(Condition::UnverifiedFactorsAre(FactorRemoval {
                    totp: true,
                    passkeys: Vec::new(),
                })),
                None,
                Refusal::FactorsChanged,
            ),
            (
                Some(Condition::PasswordHashIs(PasswordHash::new("other".into()))),
                None,
                Refusal::PasswordChanged,
            ),
            (
                Some(Condition::PendingTotpIs(b"sealed".to_vec())),
                None,
                Refusal::TotpChanged,
            ),
            (
                Some(Condition::HoldsPasskey(Uuid::new_v4())),
                None,
                Refusal::NoSuchPasskey,
            ),
            (
                Some(Condition::HasFactors { passkeys: true }),
                None,
                Refusal::NothingToRemove,
            ),
            (
                None,
                Some(Edit::SetEmail(bob.email.clone())),
                Refusal::AddressTaken,
            ),
            (
                None,
                Some(Edit::AddPasskey(bobs_key)),
                Refusal::CredentialTaken,
            ),
        ];
        for (condition, last, refusal) in cases {
            let change = everything(&alice, condition, last);
            assert_eq!(
                users.apply(change).await.unwrap(),
                Applied::Refused(refusal),
                "{refusal:?}"
            );
            assert_eq!(
                seen(store.as_ref(), alice.id, &token.hash).await,
                before,
                "{refusal:?}"
            );
        }
        let mut nobody = everything(&alice, None, None);
        nobody.user = UserId(424_242);
        assert_eq!(
            users.apply(nobody).await.unwrap(),
            Applied::Refused(Refusal::UnknownUser)
        );
        assert_eq!(seen(store.as_ref(), alice.id, &token.hash).await, before);

        // The same change on conditions that hold is kept whole.
        let holding = everything(
            &alice,
            Some(Condition::SpendsToken(token.hash.clone())),
            Some(Edit::SetEmail(
                portcullis::domain::Email::parse("alice.new@example.com").unwrap(),
            )),
        )
        .when(Condition::AddressIs("alice@example.com".into()))
        .when(Condition::PasswordHashIs(alice.password_hash.clone()))
        .when(Condition::Current {
            credential_version: alice.credential_version,
        });
        let after = users.apply(holding).await.unwrap().user().unwrap();
        assert_eq!(after.password_hash, PasswordHash::new("changed".into()));
        assert_eq!(
            after.full_name.as_ref().map(FullName::as_str),
            Some("Changed")
        );
        assert_eq!(after.email.as_str(), "alice.new@example.com");
        assert_eq!(after.credential_version, alice.credential_version + 1);
        assert_eq!(after.updated_at, t0() + TimeDelta::minutes(1));
        let now = seen(store.as_ref(), alice.id, &token.hash).await;
        assert_eq!(
            (
                now.live_sessions,
                now.token_spent,
                now.events,
                now.pending_mail
            ),
            (0, true, before.events + 1, before.pending_mail + 1)
        );
    })
    .await;
}

#[tokio::test]
async fn the_last_admin_rule_holds_for_a_lone_admin_and_lets_a_second_go() {
    on_every_store(|store| async move {
        let users = store.as_ref();
        let alice = user(users, "alice@example.com").await;
        let bob = user(users, "bob@example.com").await;
        assert!(
            users
                .apply(update(alice.id, set_role(Role::Admin)))
                .await
                .unwrap()
                .kept()
        );
        let token = LinkTokenHash::of("none");
        let before = seen(store.as_ref(), alice.id, &token).await;
        let demotion =
            || update(alice.id, set_role(Role::User)).then(Edit::EndSessions { keep: None });
        assert_eq!(
            users.apply(demotion()).await.unwrap(),
            Applied::Refused(Refusal::LastAdmin)
        );
        assert_eq!(seen(store.as_ref(), alice.id, &token).await, before);
        let deletion = AccountChange::of(alice.id, t0())
            .when(Condition::LeavesAnActiveAdmin)
            .then(Edit::Delete);
        assert_eq!(
            users.apply(deletion.clone()).await.unwrap(),
            Applied::Refused(Refusal::LastAdmin)
        );
        // The rule counts admins only: a user's demotion is kept, and with a second admin the
        // first may go.
        assert!(
            users
                .apply(update(bob.id, set_role(Role::User)))
                .await
                .unwrap()
                .kept()
        );
        assert!(
            users
                .apply(update(bob.id, set_role(Role::Admin)))
                .await
                .unwrap()
                .kept()
        );
        assert_eq!(users.apply(deletion).await.unwrap(), Applied::Deleted);
        assert!(users.find_user_by_id(alice.id).await.unwrap().is_none());
    })
    .await;
}

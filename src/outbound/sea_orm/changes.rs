//! [`AccountChange`]s applied in one transaction: lock the account's row, check each condition,
//! make each edit, record the events, queue the mail, read the account back; a condition that
//! fails rolls everything back. The conditions a statement decides by itself (an unspent token,
//! a free address, a new credential id) are decided by that statement, never by a read before
//! a write, so instances racing on one account each see the other's committed state.
//!
//! The last-admin rule needs more than the account's row: a change that may remove an admin
//! first takes a transaction-level advisory lock on PostgreSQL (SQLite runs one writer), and
//! checks after its own writes that an active admin is left.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, DatabaseTransaction, DbErr, EntityTrait, QueryFilter, SqlErr};

use super::entities::{passkeys, totp_factors, users};
use super::rows::to_user;
use super::store::{SeaOrmStore, end_sessions, next_version};
use super::{admin, factors, mail};
use crate::domain::{AccountChange, Applied, BackendError, Condition, Edit, Refusal, Role, UserId};

/// A change that stops at its first refusal; the caller rolls back.
type Step<T = ()> = Result<Result<T, Refusal>, DbErr>;

impl SeaOrmStore {
    /// [`crate::domain::ports::UserRepository::apply`].
    pub(super) async fn apply_change(
        &self,
        change: AccountChange,
    ) -> Result<Applied, BackendError> {
        self.bounded(async {
            let txn = self.write_transaction().await?;
            match apply(&txn, change).await? {
                Ok(applied) => {
                    txn.commit().await?;
                    Ok(applied)
                }
                Err(refusal) => {
                    txn.rollback().await?;
                    Ok(Applied::Refused(refusal))
                }
            }
        })
        .await
    }
}

async fn apply(txn: &DatabaseTransaction, change: AccountChange) -> Step<Applied> {
    let id = change.user;
    let guarded = change.conditions.contains(&Condition::LeavesAnActiveAdmin);
    if guarded {
        admin::lock_admins(txn).await?;
    }
    // Locks the row first: a change racing this one commits before it or waits for it.
    let locked = users::Entity::update_many()
        .col_expr(
            users::Column::CredentialVersion,
            Expr::col(users::Column::CredentialVersion),
        )
        .filter(users::Column::Id.eq(id.0))
        .exec(txn)
        .await?;
    let before = match users::Entity::find_by_id(id.0).one(txn).await? {
        Some(before) if locked.rows_affected == 1 => before,
        _ => return Ok(Err(Refusal::UnknownUser)),
    };
    for condition in &change.conditions {
        if let Err(refusal) = holds(txn, id, &before, condition, change.at).await? {
            return Ok(Err(refusal));
        }
    }
    if let Err(refusal) = edit_user(txn, id, &change).await? {
        return Ok(Err(refusal));
    }
    for edit in change.edits {
        if let Err(refusal) = edit_around(txn, id, edit, change.at).await? {
            return Ok(Err(refusal));
        }
    }
    let was_admin = before.is_active && before.role == Role::Admin.as_str();
    if guarded && was_admin && !admin::any_admin_left(txn).await? {
        return Ok(Err(Refusal::LastAdmin));
    }
    for event in change.audit {
        admin::record(txn, event).await?;
    }
    for job in change.mail {
        mail::enqueue(txn, job, change.at).await?;
    }
    Ok(Ok(match users::Entity::find_by_id(id.0).one(txn).await? {
        Some(after) => Applied::Done(to_user(after).map_err(|err| DbErr::Custom(err.to_string()))?),
        None => Applied::Deleted,
    }))
}

async fn holds(
    txn: &DatabaseTransaction,
    id: UserId,
    before: &users::Model,
    condition: &Condition,
    at: chrono::DateTime<chrono::Utc>,
) -> Step {
    let (holds, refusal) = match condition {
        Condition::Current { credential_version } => (
            before.is_active && before.credential_version == *credential_version,
            Refusal::NotCurrent,
        ),
        Condition::SpendsToken(token) => (
            mail::spend(txn, &token.0, id, at).await?,
            Refusal::TokenSpent,
        ),
        Condition::AddressIs(address) => (before.email == *address, Refusal::AddressChanged),
        Condition::UnverifiedFactorsAre(removal) => (
            factors::added_unverified(txn, id).await?.same_as(removal),
            Refusal::FactorsChanged,
        ),
        Condition::PasswordHashIs(hash) => (
            before.password_hash == hash.as_str(),
            Refusal::PasswordChanged,
        ),
        Condition::PendingTotpIs(sealed) => {
            let pending = totp_factors::Entity::find_by_id(id.0)
                .filter(totp_factors::Column::ConfirmedAt.is_null())
                .filter(totp_factors::Column::SealedSecret.eq(sealed.clone()))
                .one(txn)
                .await?;
            (pending.is_some(), Refusal::TotpChanged)
        }
        Condition::HoldsPasskey(passkey) => {
            let held = passkeys::Entity::find_by_id(*passkey)
                .filter(passkeys::Column::UserId.eq(id.0))
                .one(txn)
                .await?;
            (held.is_some(), Refusal::NoSuchPasskey)
        }
        Condition::HasFactors { passkeys } => (
            factors::has_any(txn, id, *passkeys).await?,
            Refusal::NothingToRemove,
        ),
        // Checked after the writes, by `apply`.
        Condition::LeavesAnActiveAdmin => (true, Refusal::LastAdmin),
    };
    Ok(if holds { Ok(()) } else { Err(refusal) })
}

/// The edits of the account's own row, as one statement.
async fn edit_user(txn: &DatabaseTransaction, id: UserId, change: &AccountChange) -> Step {
    let mut update = users::Entity::update_many().filter(users::Column::Id.eq(id.0));
    let mut any = false;
    for edit in &change.edits {
        let (column, value) = match edit {
            Edit::SetPasswordHash(hash) => {
                (users::Column::PasswordHash, Expr::value(hash.as_str()))
            }
            Edit::BumpCredentialVersion => (users::Column::CredentialVersion, next_version()),
            Edit::SetEmailVerified(verified) => {
                (users::Column::EmailVerified, Expr::value(*verified))
            }
            Edit::SetEmail(email) => {
                update = update
                    .col_expr(
                        users::Column::EmailNormalized,
                        Expr::value(email.normalized()),
                    )
                    .col_expr(users::Column::EmailKey, Expr::value(email.key()));
                (users::Column::Email, Expr::value(email.as_str()))
            }
            Edit::SetRole(role) => (users::Column::Role, Expr::value(role.as_str())),
            Edit::SetActive(active) => (users::Column::IsActive, Expr::value(*active)),
            Edit::SetFullName(name) => (
                users::Column::FullName,
                Expr::value(name.as_ref().map(|n| n.as_str().to_owned())),
            ),
            Edit::Touch => (users::Column::UpdatedAt, Expr::value(change.at)),
            _ => continue,
        };
        update = update.col_expr(column, value);
        any = true;
    }
    if !any {
        return Ok(Ok(()));
    }
    match update.exec(txn).await {
        Ok(_) => Ok(Ok(())),
        // The unique index on the look-alike key decides whether a new address is free.
        Err(err) if matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            Ok(Err(Refusal::AddressTaken))
        }
        Err(err) => Err(err),
    }
}

/// An edit of what hangs off the account: its sessions, tokens and factors, or the account
/// whole.
async fn edit_around(
    txn: &DatabaseTransaction,
    id: UserId,
    edit: Edit,
    at: chrono::DateTime<chrono::Utc>,
) -> Step {
    match edit {
        Edit::EndSessions { keep } => end_sessions(txn, id, keep, at).await?,
        Edit::SpendTokens(kinds) => mail::spend_all(txn, id, &kinds, at).await?,
        Edit::RemoveFactors(removal) => factors::remove(txn, id, &removal).await?,
        Edit::RemoveAllPasskeys => {
            passkeys::Entity::delete_many()
                .filter(passkeys::Column::UserId.eq(id.0))
                .exec(txn)
                .await?;
        }
        Edit::ConfirmTotp {
            step,
            recovery,
            added_unverified,
        } => {
            totp_factors::Entity::update_many()
                .col_expr(totp_factors::Column::ConfirmedAt, Expr::value(at))
                .col_expr(totp_factors::Column::LastStep, Expr::value(step))
                .col_expr(
                    totp_factors::Column::AddedUnverified,
                    Expr::value(added_unverified),
                )
                .filter(totp_factors::Column::UserId.eq(id.0))
                .exec(txn)
                .await?;
            factors::replace_recovery_codes(txn, id, recovery).await?;
        }
        Edit::AddPasskey(passkey) => {
            // The unique index decides: of two registrations of one credential, one inserts.
            let inserted = passkeys::Entity::insert(factors::passkey_row(passkey))
                .on_conflict(
                    OnConflict::column(passkeys::Column::CredentialId)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(txn)
                .await?;
            if inserted != 1 {
                return Ok(Err(Refusal::CredentialTaken));
            }
        }
        // Sessions, refresh and link tokens, second factors, pending challenges and
        // ceremonies go with the user (ON DELETE CASCADE); audit events stay.
        Edit::Delete => {
            users::Entity::delete_by_id(id.0).exec(txn).await?;
        }
        // The account's own row: `edit_user`.
        Edit::SetPasswordHash(_)
        | Edit::BumpCredentialVersion
        | Edit::SetEmailVerified(_)
        | Edit::SetEmail(_)
        | Edit::SetRole(_)
        | Edit::SetActive(_)
        | Edit::SetFullName(_)
        | Edit::Touch => {}
    }
    Ok(Ok(()))
}

//! [`FactorRepository`] on SeaORM, beside the users it belongs to.
//!
//! Whatever may be used once (a TOTP step, a recovery code, a challenge, a ceremony, a
//! credential id) is decided by the database in one statement: a conditional update or delete
//! and its rows affected, or a unique index; never by a read followed by a write, which two
//! instances could interleave.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Asterisk, Expr, ExprTrait as _, OnConflict, Query, SelectStatement};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait,
    FromQueryResult, QueryFilter, QueryOrder,
};
use uuid::Uuid;

use super::entities::{
    mfa_challenges, passkeys, recovery_codes, totp_factors, webauthn_ceremonies,
};
use super::store::SeaOrmStore;
use crate::domain::mfa::{
    Ceremony, CeremonyKind, FactorRemoval, Factors, MfaChallenge, MfaTokenHash, NewMfaChallenge,
    Passkey, RecoveryCodeHash, TotpFactor,
};
use crate::domain::ports::ChallengeRepository;
use crate::domain::ports::FactorRepository;
use crate::domain::{BackendError, UserId};

/// `SELECT COUNT(*) FROM table WHERE filter`, as a value of an outer query.
fn count_where<T>(table: T, filter: Expr) -> Expr
where
    T: sea_orm::sea_query::IntoTableRef,
{
    Expr::from(
        Query::select()
            .expr(Expr::col(Asterisk).count())
            .from(table)
            .and_where(filter)
            .to_owned(),
    )
}

/// User `id`'s confirmed TOTP factors and passkeys, counted in one round trip.
fn factors_statement(id: UserId) -> SelectStatement {
    Query::select()
        .expr_as(
            count_where(
                totp_factors::Entity,
                totp_factors::Column::UserId
                    .eq(id.0)
                    .and(totp_factors::Column::ConfirmedAt.is_not_null()),
            ),
            "totp",
        )
        .expr_as(
            count_where(passkeys::Entity, passkeys::Column::UserId.eq(id.0)),
            "passkeys",
        )
        .to_owned()
}

fn to_totp(row: totp_factors::Model) -> TotpFactor {
    TotpFactor {
        user_id: UserId(row.user_id),
        sealed_secret: row.sealed_secret,
        confirmed_at: row.confirmed_at,
        last_step: row.last_step,
        added_unverified: row.added_unverified,
    }
}

/// What a reset of user `id` removes now: the factors added while the address was unverified,
/// and an enrolment never confirmed. Read in the reset's transaction, with the user's row
/// locked.
pub(super) async fn added_unverified(
    txn: &impl ConnectionTrait,
    id: UserId,
) -> Result<FactorRemoval, DbErr> {
    let totp = totp_factors::Entity::find_by_id(id.0)
        .filter(
            totp_factors::Column::ConfirmedAt
                .is_null()
                .or(totp_factors::Column::AddedUnverified.eq(true)),
        )
        .one(txn)
        .await?
        .is_some();
    let passkeys = passkeys::Entity::find()
        .filter(passkeys::Column::UserId.eq(id.0))
        .filter(passkeys::Column::AddedUnverified.eq(true))
        .all(txn)
        .await?
        .into_iter()
        .map(|row| row.id)
        .collect();
    Ok(FactorRemoval { totp, passkeys })
}

/// Removes what `removal` names of user `id`'s factors.
pub(super) async fn remove(
    txn: &impl ConnectionTrait,
    id: UserId,
    removal: &FactorRemoval,
) -> Result<(), DbErr> {
    if removal.totp {
        totp_factors::Entity::delete_many()
            .filter(totp_factors::Column::UserId.eq(id.0))
            .exec(txn)
            .await?;
        recovery_codes::Entity::delete_many()
            .filter(recovery_codes::Column::UserId.eq(id.0))
            .exec(txn)
            .await?;
    }
    if !removal.passkeys.is_empty() {
        passkeys::Entity::delete_many()
            .filter(passkeys::Column::UserId.eq(id.0))
            .filter(passkeys::Column::Id.is_in(removal.passkeys.iter().copied()))
            .exec(txn)
            .await?;
    }
    Ok(())
}

/// The row of a new passkey.
pub(super) fn passkey_row(passkey: Passkey) -> passkeys::ActiveModel {
    passkeys::ActiveModel {
        id: Set(passkey.id),
        user_id: Set(passkey.user_id.0),
        name: Set(passkey.name),
        credential_id: Set(passkey.credential_id),
        credential: Set(passkey.credential),
        user_handle: Set(passkey.user_handle),
        created_at: Set(passkey.created_at),
        last_used_at: Set(passkey.last_used_at),
        added_unverified: Set(passkey.added_unverified),
    }
}

/// Whether user `id` has a TOTP factor (confirmed or pending) or recovery codes, or, with
/// `passkeys`, a passkey.
pub(super) async fn has_any(
    txn: &impl ConnectionTrait,
    id: UserId,
    passkeys: bool,
) -> Result<bool, DbErr> {
    let totp = totp_factors::Entity::find_by_id(id.0).one(txn).await?;
    let codes = recovery_codes::Entity::find()
        .filter(recovery_codes::Column::UserId.eq(id.0))
        .one(txn)
        .await?;
    let passkey = if passkeys {
        passkeys::Entity::find()
            .filter(passkeys::Column::UserId.eq(id.0))
            .one(txn)
            .await?
    } else {
        None
    };
    Ok(totp.is_some() || codes.is_some() || passkey.is_some())
}

fn to_challenge(row: mfa_challenges::Model) -> Result<MfaChallenge, BackendError> {
    Ok(MfaChallenge {
        user_id: UserId(row.user_id),
        credential_version: row.credential_version,
        expires_at: row.expires_at,
        failures: u32::try_from(row.failures).map_err(BackendError::unexpected)?,
        spent_at: row.spent_at,
    })
}

fn to_passkey(row: passkeys::Model) -> Passkey {
    Passkey {
        id: row.id,
        user_id: UserId(row.user_id),
        name: row.name,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        credential_id: row.credential_id,
        credential: row.credential,
        user_handle: row.user_handle,
        added_unverified: row.added_unverified,
    }
}

fn to_ceremony(row: webauthn_ceremonies::Model) -> Result<Ceremony, BackendError> {
    let kind = [CeremonyKind::Registration, CeremonyKind::Authentication]
        .into_iter()
        .find(|kind| kind.as_str() == row.kind)
        .ok_or_else(|| BackendError::unexpected(format!("unknown ceremony {:?}", row.kind)))?;
    Ok(Ceremony {
        challenge: row.challenge,
        kind,
        user_id: row.user_id.map(UserId),
        state: row.state,
        expires_at: row.expires_at,
    })
}

/// Deletes user `id`'s recovery codes and stores `hashes` as the new ones.
pub(super) async fn replace_recovery_codes(
    conn: &impl ConnectionTrait,
    id: UserId,
    hashes: Vec<RecoveryCodeHash>,
) -> Result<(), DbErr> {
    recovery_codes::Entity::delete_many()
        .filter(recovery_codes::Column::UserId.eq(id.0))
        .exec(conn)
        .await?;
    let rows = hashes.into_iter().map(|hash| recovery_codes::ActiveModel {
        user_id: Set(id.0),
        code_hash: Set(hash.0),
        used_at: Set(None),
        ..Default::default()
    });
    recovery_codes::Entity::insert_many(rows)
        .exec_without_returning(conn)
        .await?;
    Ok(())
}

#[async_trait]
impl FactorRepository for SeaOrmStore {
    async fn factors(&self, id: UserId) -> Result<Factors, BackendError> {
        #[derive(FromQueryResult)]
        struct Counts {
            totp: i64,
            passkeys: i64,
        }
        let db = self.db();
        let statement = db.get_database_backend().build(&factors_statement(id));
        let counts = self
            .bounded(Counts::find_by_statement(statement).one(db))
            .await?
            .ok_or_else(|| BackendError::unexpected("a SELECT without FROM returned no row"))?;
        Ok(Factors {
            totp: counts.totp > 0,
            passkeys: u32::try_from(counts.passkeys).map_err(BackendError::unexpected)?,
        })
    }

    async fn find_totp(&self, id: UserId) -> Result<Option<TotpFactor>, BackendError> {
        let found = self
            .bounded(totp_factors::Entity::find_by_id(id.0).one(self.db()))
            .await?;
        Ok(found.map(to_totp))
    }

    async fn store_pending_totp(
        &self,
        id: UserId,
        sealed_secret: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let row = totp_factors::ActiveModel {
            user_id: Set(id.0),
            sealed_secret: Set(sealed_secret),
            created_at: Set(now),
            confirmed_at: Set(None),
            last_step: Set(None),
            added_unverified: Set(false),
        };
        // The upsert's WHERE makes "replace unless confirmed" one statement: a confirmation
        // committed in between leaves it nothing to update.
        let upsert = totp_factors::Entity::insert(row)
            .on_conflict(
                OnConflict::column(totp_factors::Column::UserId)
                    .update_columns([
                        totp_factors::Column::SealedSecret,
                        totp_factors::Column::CreatedAt,
                        totp_factors::Column::LastStep,
                    ])
                    .action_and_where(
                        Expr::col((totp_factors::Entity, totp_factors::Column::ConfirmedAt))
                            .is_null(),
                    )
                    .to_owned(),
            )
            .exec_without_returning(self.db());
        Ok(self.bounded(upsert).await? == 1)
    }

    async fn use_totp_step(&self, id: UserId, step: i64) -> Result<bool, BackendError> {
        let update = totp_factors::Entity::update_many()
            .col_expr(totp_factors::Column::LastStep, Expr::value(step))
            .filter(totp_factors::Column::UserId.eq(id.0))
            .filter(totp_factors::Column::ConfirmedAt.is_not_null())
            .filter(
                totp_factors::Column::LastStep
                    .is_null()
                    .or(totp_factors::Column::LastStep.lt(step)),
            )
            .exec(self.db());
        Ok(self.bounded(update).await?.rows_affected == 1)
    }

    async fn spend_recovery_code(
        &self,
        id: UserId,
        hash: &RecoveryCodeHash,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let update = recovery_codes::Entity::update_many()
            .col_expr(recovery_codes::Column::UsedAt, Expr::value(now))
            .filter(recovery_codes::Column::UserId.eq(id.0))
            .filter(recovery_codes::Column::CodeHash.eq(hash.0.as_str()))
            .filter(recovery_codes::Column::UsedAt.is_null())
            .exec(self.db());
        Ok(self.bounded(update).await?.rows_affected == 1)
    }

    async fn list_passkeys(&self, id: UserId) -> Result<Vec<Passkey>, BackendError> {
        let found = self
            .bounded(
                passkeys::Entity::find()
                    .filter(passkeys::Column::UserId.eq(id.0))
                    .order_by_asc(passkeys::Column::CreatedAt)
                    .order_by_asc(passkeys::Column::Id)
                    .all(self.db()),
            )
            .await?;
        Ok(found.into_iter().map(to_passkey).collect())
    }

    async fn find_passkey(&self, credential_id: &[u8]) -> Result<Option<Passkey>, BackendError> {
        let found = self
            .bounded(
                passkeys::Entity::find()
                    .filter(passkeys::Column::CredentialId.eq(credential_id.to_vec()))
                    .one(self.db()),
            )
            .await?;
        Ok(found.map(to_passkey))
    }

    async fn touch_passkey(
        &self,
        id: Uuid,
        credential: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let mut update = passkeys::Entity::update_many()
            .col_expr(passkeys::Column::LastUsedAt, Expr::value(now))
            .filter(passkeys::Column::Id.eq(id));
        if let Some(credential) = credential {
            update = update.col_expr(passkeys::Column::Credential, Expr::value(credential));
        }
        self.bounded(update.exec(self.db())).await?;
        Ok(())
    }

    async fn rename_passkey(
        &self,
        user_id: UserId,
        id: Uuid,
        name: &str,
    ) -> Result<bool, BackendError> {
        let update = passkeys::Entity::update_many()
            .col_expr(passkeys::Column::Name, Expr::value(name))
            .filter(passkeys::Column::Id.eq(id))
            .filter(passkeys::Column::UserId.eq(user_id.0))
            .exec(self.db());
        Ok(self.bounded(update).await?.rows_affected == 1)
    }
}

#[async_trait]
impl ChallengeRepository for SeaOrmStore {
    async fn store_mfa_challenge(&self, challenge: NewMfaChallenge) -> Result<(), BackendError> {
        let row = mfa_challenges::ActiveModel {
            token_hash: Set(challenge.hash.0),
            user_id: Set(challenge.user_id.0),
            credential_version: Set(challenge.credential_version),
            created_at: Set(challenge.created_at),
            expires_at: Set(challenge.expires_at),
            failures: Set(0),
            spent_at: Set(None),
        };
        self.bounded(mfa_challenges::Entity::insert(row).exec_without_returning(self.db()))
            .await?;
        Ok(())
    }

    async fn find_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
    ) -> Result<Option<MfaChallenge>, BackendError> {
        let found = self
            .bounded(mfa_challenges::Entity::find_by_id(hash.0.clone()).one(self.db()))
            .await?;
        found.map(to_challenge).transpose()
    }

    async fn fail_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
        max_failures: u32,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        // Both engines evaluate SET against the row as it was before this statement, and
        // PostgreSQL against the latest committed version when another failure got in first:
        // concurrent failures all count, and the one that makes the maximum spends.
        let reached = Expr::col(mfa_challenges::Column::Failures)
            .add(1)
            .gte(i64::from(max_failures));
        let update = mfa_challenges::Entity::update_many()
            .col_expr(
                mfa_challenges::Column::Failures,
                Expr::col(mfa_challenges::Column::Failures).add(1),
            )
            .col_expr(
                mfa_challenges::Column::SpentAt,
                Expr::case(reached, Expr::value(now))
                    .finally(Expr::value(None::<DateTime<Utc>>))
                    .into(),
            )
            .filter(mfa_challenges::Column::TokenHash.eq(hash.0.as_str()))
            .filter(mfa_challenges::Column::SpentAt.is_null())
            .exec(self.db());
        self.bounded(update).await?;
        Ok(())
    }

    async fn spend_mfa_challenge(
        &self,
        hash: &MfaTokenHash,
        now: DateTime<Utc>,
    ) -> Result<bool, BackendError> {
        let update = mfa_challenges::Entity::update_many()
            .col_expr(mfa_challenges::Column::SpentAt, Expr::value(now))
            .filter(mfa_challenges::Column::TokenHash.eq(hash.0.as_str()))
            .filter(mfa_challenges::Column::SpentAt.is_null())
            .exec(self.db());
        Ok(self.bounded(update).await?.rows_affected == 1)
    }

    async fn store_ceremony(
        &self,
        ceremony: Ceremony,
        now: DateTime<Utc>,
    ) -> Result<(), BackendError> {
        let row = webauthn_ceremonies::ActiveModel {
            challenge: Set(ceremony.challenge),
            kind: Set(ceremony.kind.as_str().to_owned()),
            user_id: Set(ceremony.user_id.map(|id| id.0)),
            state: Set(ceremony.state),
            expires_at: Set(ceremony.expires_at),
        };
        self.bounded(async {
            webauthn_ceremonies::Entity::delete_many()
                .filter(webauthn_ceremonies::Column::ExpiresAt.lte(now))
                .exec(self.db())
                .await?;
            row.insert(self.db()).await
        })
        .await?;
        Ok(())
    }

    async fn take_ceremony(
        &self,
        challenge: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Ceremony>, BackendError> {
        // DELETE ... RETURNING: of two takers of one challenge, only one gets the row.
        let taken = self
            .bounded(
                webauthn_ceremonies::Entity::delete_by_id(challenge.to_owned())
                    .exec_with_returning(self.db()),
            )
            .await?;
        taken
            .filter(|row| now < row.expires_at)
            .map(to_ceremony)
            .transpose()
    }
}

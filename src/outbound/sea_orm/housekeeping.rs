//! [`Housekeeping`] for the SeaORM store: what has expired, deleted.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};

use super::entities::{
    mfa_challenges, oauth_codes, oauth_revoked_tokens, refresh_tokens, sessions,
    webauthn_ceremonies,
};
use super::store::SeaOrmStore;
use super::{admin, invalidations, mail};
use crate::domain::BackendError;
use crate::domain::ports::Housekeeping;

#[async_trait]
impl Housekeeping for SeaOrmStore {
    async fn purge_expired(
        &self,
        now: DateTime<Utc>,
        audit_before: DateTime<Utc>,
    ) -> Result<u64, BackendError> {
        self.bounded(async {
            admin::purge_audit(&self.db, audit_before).await?;
            refresh_tokens::Entity::delete_many()
                .filter(refresh_tokens::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            mfa_challenges::Entity::delete_many()
                .filter(mfa_challenges::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            webauthn_ceremonies::Entity::delete_many()
                .filter(webauthn_ceremonies::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            oauth_codes::Entity::delete_many()
                .filter(oauth_codes::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            oauth_revoked_tokens::Entity::delete_many()
                .filter(oauth_revoked_tokens::Column::ExpiresAt.lte(now))
                .exec(&self.db)
                .await?;
            // Refresh tokens of these sessions go with them (ON DELETE CASCADE).
            mail::purge(&self.db, now).await?;
            invalidations::purge(&self.db, now).await?;
            let deleted = sessions::Entity::delete_many()
                .filter(
                    Condition::any()
                        .add(sessions::Column::EndedAt.is_not_null())
                        .add(sessions::Column::ExpiresAt.lte(now))
                        .add(sessions::Column::IdleExpiresAt.lte(now)),
                )
                .exec(&self.db)
                .await?;
            Ok(deleted.rows_affected)
        })
        .await
    }
}

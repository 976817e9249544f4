//! `users.email_key`: the look-alike key that makes an address unique (NFKC, case folding and
//! the Unicode TR39 confusable skeleton), computed for every existing user.
//!
//! Existing data may already hold two users whose addresses read the same (`kelly@` and a
//! Cyrillic `kеlly@`). Merging them would hand one person's account to the other, so the
//! migration looks for such groups first and, finding any, stops before changing anything and
//! names them; the operator decides which address to change.

use std::collections::BTreeMap;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;
use unicode_normalization::UnicodeNormalization as _;

use crate::m20261127_000001_create_users::Users;

/// Rows updated per statement.
const BATCH: usize = 500;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// A frozen copy of the core's `lookalike_key` as of this migration: a migration must compute
/// what it computed when it was written, whatever the core does later. A test checks that the
/// two still agree.
pub fn lookalike_key(address: &str) -> String {
    let folded = address.nfkc().collect::<String>().to_lowercase();
    unicode_security::skeleton(&folded)
        .collect::<String>()
        .to_lowercase()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let rows = db
            .query_all_raw(
                backend.build(
                    Query::select()
                        .columns([Users::Id, Users::Email])
                        .from(Users::Table)
                        .order_by(Users::Id, Order::Asc),
                ),
            )
            .await?;
        let mut groups: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
        for row in rows {
            let id: i64 = row.try_get("", "id")?;
            let email: String = row.try_get("", "email")?;
            groups
                .entry(lookalike_key(&email))
                .or_default()
                .push((id, email));
        }
        let clashes: Vec<String> = groups
            .values()
            .filter(|users| users.len() > 1)
            .map(|users| {
                let names: Vec<String> = users
                    .iter()
                    .map(|(id, email)| format!("{id} <{}>", email.escape_default()))
                    .collect();
                names.join(" and ")
            })
            .collect();
        if !clashes.is_empty() {
            return Err(DbErr::Migration(format!(
                "users whose email addresses read the same (look-alike characters) must be \
                 told apart before this upgrade; nothing was changed. Give all but one of each \
                 group another address or delete the impostor, then start again: {}",
                clashes.join("; ")
            )));
        }

        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(ColumnDef::new(EmailKey::EmailKey).text().null())
                    .to_owned(),
            )
            .await?;
        let keyed: Vec<(i64, String)> = groups
            .into_iter()
            .flat_map(|(key, users)| users.into_iter().map(move |(id, _)| (id, key.clone())))
            .collect();
        for batch in keyed.chunks(BATCH) {
            let mut case = CaseStatement::new();
            for (id, key) in batch {
                case = case.case(Expr::col(Users::Id).eq(*id), Expr::val(key.as_str()));
            }
            let ids: Vec<i64> = batch.iter().map(|(id, _)| *id).collect();
            db.execute(
                Query::update()
                    .table(Users::Table)
                    .value(EmailKey::EmailKey, case)
                    .and_where(Expr::col(Users::Id).is_in(ids)),
            )
            .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ux_users_email_key")
                    .table(Users::Table)
                    .col(EmailKey::EmailKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ux_users_email_key")
                    .table(Users::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .drop_column(EmailKey::EmailKey)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum EmailKey {
    EmailKey,
}

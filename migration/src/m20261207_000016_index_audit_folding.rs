//! An index for folding failures into the audit trail: a failed login looks up the last event
//! of its kind from its client address within the fold window (`record_folded`), which without
//! it would scan every recent event of the kind, under a flood from many addresses most of all.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const INDEX: &str = "ix_audit_events_ip_kind_at";

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    Ip,
    Kind,
    At,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(AuditEvents::Table)
                    .col(AuditEvents::Ip)
                    .col(AuditEvents::Kind)
                    .col(AuditEvents::At)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(AuditEvents::Table)
                    .to_owned(),
            )
            .await
    }
}

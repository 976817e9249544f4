//! `portcullis backup --to FILE`: a consistent copy of a SQLite database while the service runs.
//! PostgreSQL and `memory://` are refused with the way that applies to them instead.

use std::path::Path;

use super::{Refused, report};
use crate::config::Settings;
use crate::outbound::sea_orm::BackupError;
use crate::startup::Storage;

/// What to do on PostgreSQL, where this command does not apply.
const POSTGRES_PATH: &str = "`portcullis backup` copies SQLite databases. On PostgreSQL, use its \
     own tools while the service runs: `pg_dump -Fc -d \"$DATABASE_URL\" -f portcullis.dump` for \
     a consistent dump, `pg_restore -d NEW_DATABASE_URL portcullis.dump` to bring it back, and \
     for point-in-time recovery WAL archiving (archive_mode, archive_command) with \
     pg_basebackup, restore_command and recovery_target_time. See \"Backups and restores\" in \
     docs/operations.md.";

pub(super) async fn run(
    to: &Path,
    force: bool,
    json: bool,
    settings: &Settings,
) -> anyhow::Result<()> {
    let storage = Storage::open(settings).await?;
    let backup = storage.backup(to, force).await.map_err(refusal)?;
    print!("{}", report::backup(&backup, json));
    Ok(())
}

/// The operator's message: a [`Refused`] for what another invocation would fix, a failure
/// otherwise.
fn refusal(err: BackupError) -> anyhow::Error {
    match err {
        BackupError::PostgreSql => Refused(POSTGRES_PATH.to_owned()).into(),
        BackupError::InMemory => Refused(
            "the database is in memory (memory:// or an in-memory SQLite database): nothing is \
             stored, so there is nothing to back up"
                .to_owned(),
        )
        .into(),
        BackupError::Exists(path) => Refused(format!(
            "{} exists: choose another file, or pass --force to replace it",
            path.display()
        ))
        .into(),
        BackupError::SameFile(path) => Refused(format!(
            "{} is the live database or one of its journal files: back up to another file",
            path.display()
        ))
        .into(),
        other => anyhow::Error::new(other).context("backup failed; no backup file was written"),
    }
}

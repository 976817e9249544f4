//! Moving from pyauth: the plan is pure (`domain::import`); this runs it between the two ports.

use chrono::{DateTime, Utc};

use crate::domain::import::{ImportError, ImportPlan, OnConflict, PYAUTH, plan};
use crate::domain::ports::{ImportSource, ImportTarget};
use crate::domain::{AuditKind, ClientInfo, NewAuditEvent};

/// Plans the import of `source` into `target` and, unless `dry_run` or the plan is refused,
/// writes it. Returns the plan.
///
/// # Errors
/// [`ImportError`] from either side.
pub async fn import_users(
    source: &dyn ImportSource,
    target: &dyn ImportTarget,
    on_conflict: OnConflict,
    dry_run: bool,
    now: DateTime<Utc>,
    progress: &(dyn Fn(usize) + Send + Sync),
) -> Result<ImportPlan, ImportError> {
    let rows = source.pyauth_users().await?;
    let existing = target.import_snapshot().await?;
    let plan = plan(&rows, &existing, on_conflict);
    if !dry_run && plan.writes() {
        let audit = NewAuditEvent::new(AuditKind::UsersImported, None, &ClientInfo::default(), now)
            .with("source", PYAUTH)
            .with("imported", plan.inserts.len())
            .with("updated", plan.updates.len())
            .with("unchanged", plan.unchanged)
            .with("conflicts", plan.conflicts.len())
            .with("skipped", plan.skipped.len());
        target.apply_import(&plan, audit, progress).await?;
    }
    Ok(plan)
}
